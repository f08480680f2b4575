/*
 * mm-clamd.h - scan a message with clamd as it arrives (INSTREAM).
 *
 * Usage, one stream per message, from one thread:
 *	s = mm_clamd_open(&cfg->clamd);          connects, sends zINSTREAM
 *	mm_clamd_write(s, data, len) ...         header and body bytes as
 *	                                         they arrive, any chunking
 *	mm_clamd_finish(s, &verdict);            terminator, clamd's answer
 *	mm_clamd_free(&s);                       also to abandon a scan
 *
 * Failures are sticky, not immediate: open() returns a stream even when
 * clamd cannot be reached (NULL only when memory is exhausted), writes
 * after a failure do nothing, and finish() reports MM_CLAMD_FAILED with the
 * first reason, so the caller applies its on_failure in one place.
 * mm_clamd_failed() lets it stop feeding early.
 *
 * Bounds: at most cfg->max_bytes are streamed (set it to clamd's
 * StreamMaxLength or less; beyond it clamd refuses the whole stream): the
 * rest is counted, not sent, so only that prefix of a longer message is
 * scanned (verdict.truncated).  All waiting on clamd for one message -
 * connecting, sending, and the scan after the terminator - shares one
 * budget of cfg->timeout_ms; time spent waiting for the SMTP client between
 * writes does not count.  Small writes are gathered in a 16 KiB buffer, so
 * memory per stream is fixed.
 */
#ifndef MM_CLAMD_H
#define MM_CLAMD_H

#include <stdbool.h>
#include <stddef.h>

#include "mm-engine.h"

enum mm_clamd_status {
	MM_CLAMD_CLEAN,
	MM_CLAMD_INFECTED,
	MM_CLAMD_FAILED,
};

struct mm_clamd_verdict {
	enum mm_clamd_status status;
	char signature[MM_ENGINE_TEXT_SIZE];	/* INFECTED: the name clamd gave */
	char reason[MM_ENGINE_TEXT_SIZE];	/* FAILED: what went wrong */
	size_t bytes;			/* message bytes written by the caller */
	size_t scanned;			/* of them, streamed to clamd */
	bool truncated;			/* bytes > max_bytes: a prefix was scanned */
	unsigned elapsed_ms;		/* spent waiting on clamd */
};

struct mm_clamd;

struct mm_clamd *mm_clamd_open(const struct mm_engine_config *cfg);

/* 0, or -1 once the scan has failed (finish() tells why). */
int mm_clamd_write(struct mm_clamd *s, const void *data, size_t len);

/* The first failure's reason, or NULL while the scan is healthy. */
const char *mm_clamd_failed(const struct mm_clamd *s);

/* Ends the stream and fills V; call once.  Closes the connection. */
void mm_clamd_finish(struct mm_clamd *s, struct mm_clamd_verdict *v);

/* Frees S (closing an unfinished scan) and sets *S to NULL.  NULL-safe. */
void mm_clamd_free(struct mm_clamd **s);

const char *mm_clamd_status_name(enum mm_clamd_status status);

#endif
