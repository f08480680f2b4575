/*
 * mm-log.h - logging for mailmeta-milter, in Postfix's style.
 *
 * Every line about a message starts with its Postfix queue id ("4XyZ12: ..."),
 * so `grep QUEUEID maillog` shows what Postfix and mailmeta did with it.
 * Logs go to syslog (facility mail by default) or, in the foreground, to
 * standard error with a timestamp.
 */
#ifndef MM_LOG_H
#define MM_LOG_H

#include <stdbool.h>

void mm_log_open(const char *ident, const char *facility, bool to_stderr);
void mm_log_set_verbose(bool verbose);

void mm_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mm_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mm_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Unrecoverable: logs and exits with status 1. */
_Noreturn void mm_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Returns the syslog facility for NAME ("mail", "local0", ...) or -1. */
int mm_log_facility(const char *name);

#endif
