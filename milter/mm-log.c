/*
 * mm-log.c - syslog or stderr logging for mailmeta-milter.
 *
 * Severity has one meaning each, as in Postfix: info for what happened to
 * mail, warning for a peer or environment fault that was handled (database
 * down, journal used), error for a fault that lost a function (not mail),
 * fatal for a broken configuration or a broken contract at start-up.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "mm-log.h"

static bool log_to_stderr;
static bool log_verbose;

static const struct {
	const char *name;
	int facility;
} facilities[] = {
	{ "mail", LOG_MAIL }, { "daemon", LOG_DAEMON }, { "user", LOG_USER },
	{ "local0", LOG_LOCAL0 }, { "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 },
	{ "local3", LOG_LOCAL3 }, { "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 },
	{ "local6", LOG_LOCAL6 }, { "local7", LOG_LOCAL7 },
};

int
mm_log_facility(const char *name)
{
	for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++)
		if (strcmp(facilities[i].name, name) == 0)
			return facilities[i].facility;
	return -1;
}

void
mm_log_open(const char *ident, const char *facility, bool to_stderr)
{
	int fac = facility ? mm_log_facility(facility) : LOG_MAIL;

	log_to_stderr = to_stderr;
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, fac < 0 ? LOG_MAIL : fac);
}

void
mm_log_set_verbose(bool verbose)
{
	log_verbose = verbose;
}

static void
vlog(int priority, const char *label, const char *fmt, va_list ap)
{
	if (log_to_stderr) {
		char stamp[32];
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%b %d %H:%M:%S", &tm);
		flockfile(stderr);
		fprintf(stderr, "%s mailmeta-milter: %s", stamp, label);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		funlockfile(stderr);
		return;
	}
	char line[2048];
	vsnprintf(line, sizeof(line), fmt, ap);
	syslog(priority, "%s%s", label, line);
}

#define MM_LOG_FUNC(name, priority, label)		\
	void name(const char *fmt, ...)			\
	{						\
		va_list ap;				\
		va_start(ap, fmt);			\
		vlog(priority, label, fmt, ap);		\
		va_end(ap);				\
	}

MM_LOG_FUNC(mm_info, LOG_INFO, "")
MM_LOG_FUNC(mm_warn, LOG_WARNING, "warning: ")
MM_LOG_FUNC(mm_error, LOG_ERR, "error: ")

void
mm_debug(const char *fmt, ...)
{
	va_list ap;

	if (!log_verbose)
		return;
	va_start(ap, fmt);
	vlog(LOG_DEBUG, "debug: ", fmt, ap);
	va_end(ap);
}

void
mm_fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_CRIT, "fatal: ", fmt, ap);
	va_end(ap);
	/* not exit(): the filter's writer and policy threads may be running,
	 * and the libraries' exit handlers would tear down what they use
	 * (seen as an abort instead of exit status 1) */
	_exit(1);
}
