/*
 * mm-verdict.h - what the milter decided about one message, and why.
 *
 * Every check (limits, rate limits, virus and spam engines) may refuse a
 * message; the most severe refusal wins, and the first one of that
 * severity names the rule.  The verdict is both the SMTP answer and what
 * the metadata record says about the decision (action, reason and the
 * "policy" object of doc/metadata-record.md).
 */
#ifndef MM_VERDICT_H
#define MM_VERDICT_H

#include <jansson.h>

/* In increasing severity. */
enum mm_action {
	MM_ACCEPT,
	MM_HOLD,		/* accepted into Postfix's hold queue */
	MM_TEMPFAIL,
	MM_REJECT,
};

struct mm_verdict {
	enum mm_action action;
	char code[4];		/* SMTP reply code of a refusal, e.g. "550" */
	char status[10];	/* enhanced status code, e.g. "5.7.1" */
	char *text;		/* reply text, also the recorded reason */
	json_t *policy;		/* {"stage", "rule", "spam", "virus"} */
};

void mm_verdict_init(struct mm_verdict *v, const char *stage);
void mm_verdict_clear(struct mm_verdict *v);

/* Refuses (or holds) with ACTION unless an equally or more severe refusal
   was made already; RULE (may be NULL) names what decided it. */
void mm_verdict_refuse(struct mm_verdict *v, enum mm_action action,
		       const char *code, const char *status, const char *rule,
		       const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));

const char *mm_action_name(enum mm_action action);

#endif
