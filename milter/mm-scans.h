/*
 * mm-scans.h - the virus and spam engines of one message.
 *
 * clamd sees the message as it arrives (a tap on mm_message: the headers
 * as Postfix passes them, then the body chunks), so end-of-message only
 * waits for its verdict.  spamd needs the whole message and is asked at
 * end-of-message, unless the message is refused already.  An engine that
 * is not configured is skipped; one that fails leads to its on_failure.
 */
#ifndef MM_SCANS_H
#define MM_SCANS_H

#include <stdbool.h>

#include "mm-config.h"
#include "mm-message.h"
#include "mm-policy.h"
#include "mm-spamd.h"
#include "mm-verdict.h"

/* The engine settings of one message, copied from the configuration. */
struct mm_scan_settings {
	struct mm_engine_config clamd;
	enum mm_on_infected on_infected;
	struct mm_engine_config spamd;
};

struct mm_scans;

/* NULL when no engine is configured (or out of memory: then unscanned). */
struct mm_scans *mm_scans_new(const struct mm_config *cfg);
void mm_scans_free(struct mm_scans **sc);

/* An mm_message_tap_fn: streams the message to clamd. */
void mm_scans_tap(void *sc, const void *data, size_t len);

/* End of message: the engines' verdicts added to V (P gives the spam
   thresholds; NULL: the defaults).  *HEADERS is filled and true returned
   when spamd scored the message and its X-Spam-* headers are to be added. */
bool mm_scans_eom(struct mm_scans *sc, struct mm_message *m,
		  const struct mm_session *s, struct mm_policy *p,
		  struct mm_verdict *v, struct mm_spam_headers *headers);

#endif
