/*
 * mm-spamd.h - score a message with SpamAssassin's spamd, and the
 * SpamAssassin-style headers that tell the result.
 *
 * Usage, at end-of-message, from any thread:
 *	static ssize_t read_fn(void *x, size_t off, void *buf, size_t len)
 *	{ return mm_extract_read(x, off, buf, len); }
 *
 *	struct mm_spamd_request req = {
 *		.size = mm_extract_stored(x), .read = read_fn, .ctx = x,
 *		.prefix = NULL,		(or a Received: line, see below)
 *	};
 *	mm_spamd_check(&cfg->spamd, &req, &result);	  before mm_extract_finish()
 *	if (result.status == MM_SPAMD_SCORED)
 *		mm_spamd_headers(&result, mark_score, &headers);
 *
 * The message is streamed from the caller's reader in 32 KiB pieces (a
 * second copy is never held); a message larger than cfg->max_bytes is not
 * sent at all (MM_SPAMD_SKIPPED, like spamc's --max-size).  The protocol is
 * SPAMC/1.5 SYMBOLS: spamd answers the score, its required score and the
 * names of the rules that hit.  Everything - connecting, sending, and
 * SpamAssassin's work - must end within cfg->timeout_ms; a spamd that
 * hangs, closes early or answers anything else than that protocol gives
 * MM_SPAMD_FAILED with a reason.
 *
 * Postfix hides its own Received: header from milters, so without help
 * SpamAssassin sees no relay (NO_RELAYS) and cannot judge the client's
 * address: PREFIX, when not NULL, is sent before the message, e.g. the
 * Received: line Postfix is about to add ("Received: from helo (name
 * [ip])\r\n\tby host (Postfix) with ESMTP id QID\r\n\tfor <rcpt>; date\r\n").
 */
#ifndef MM_SPAMD_H
#define MM_SPAMD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "mm-engine.h"

/* Copies up to LEN bytes of the message from OFFSET into BUF: the number
   copied (0 only past the end), or -1 on an error. */
typedef ssize_t mm_spamd_read_fn(void *ctx, size_t offset, void *buf, size_t len);

struct mm_spamd_request {
	size_t size;		/* bytes the reader provides */
	mm_spamd_read_fn *read;
	void *ctx;
	const char *prefix;	/* sent first; NULL for none */
};

enum mm_spamd_status {
	MM_SPAMD_SCORED,
	MM_SPAMD_SKIPPED,	/* larger than max_bytes: not scanned */
	MM_SPAMD_FAILED,
};

#define MM_SPAMD_RULES_SIZE 4096

struct mm_spamd_result {
	enum mm_spamd_status status;
	double score;			/* SCORED: SpamAssassin's score */
	double required;		/* spamd's own required_score */
	bool spam;			/* spamd's verdict by its required_score */
	/* SCORED: names of the rules that hit, comma-separated in spamd's
	   (sorted) order; "" when none.  Names are [A-Za-z0-9_.-]. */
	char rules[MM_SPAMD_RULES_SIZE];
	bool rules_truncated;		/* more names than fit: the last dropped */
	char reason[MM_ENGINE_TEXT_SIZE];	/* SKIPPED, FAILED: why */
	unsigned elapsed_ms;
};

void mm_spamd_check(const struct mm_engine_config *cfg,
		    const struct mm_spamd_request *req, struct mm_spamd_result *r);

const char *mm_spamd_status_name(enum mm_spamd_status status);

/*
 * SpamAssassin-compatible header values for a SCORED result, judged by
 * REQUIRED (the milter's own mark score, not spamd's), formatted exactly as
 * SpamAssassin's default templates and _SCORE_ tag do, so that Sieve rules
 * written for SpamAssassin keep working:
 *	X-Spam-Flag:   "YES" / "NO"
 *	X-Spam-Score:  "15.2"
 *	X-Spam-Level:  one '*' per whole point, at most 50 ("" below 1)
 *	X-Spam-Status: "Yes, score=15.2 required=5.0 tests=GTUBE,NO_RECEIVED"
 *	               folded as SpamAssassin folds it (lines of at most 79
 *	               columns, continuation lines start with "\n\t", the
 *	               form smfi_addheader() takes)
 * SpamAssassin's own X-Spam-Status also ends with autolearn= and version=;
 * spamd's SYMBOLS answer tells neither, so they are left out rather than
 * made up.
 */
struct mm_spam_headers {
	char flag[4];
	char score[32];
	char level[51];
	char status[MM_SPAMD_RULES_SIZE * 2];
};

void mm_spamd_headers(const struct mm_spamd_result *r, double required,
		      struct mm_spam_headers *h);

#endif
