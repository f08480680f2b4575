/*
 * mm-checks.h - the policy steps of the per-message flow: limits and
 * suspensions at MAIL and RCPT, size and rate limits at end-of-message.
 * Each step only adds to a verdict; mm-milter.c turns it into an answer.
 */
#ifndef MM_CHECKS_H
#define MM_CHECKS_H

#include <stdbool.h>

#include "mm-message.h"
#include "mm-policy.h"
#include "mm-verdict.h"

struct mm_check_settings {
	unsigned timeout_ms;		/* for the rate-limit round trip */
	bool tempfail_on_failure;	/* else accept when it fails */
};

/* MAIL FROM: a suspended sender; a SIZE= over the sender's limit. */
void mm_check_mail(struct mm_policy *p, const char *sasl_user,
		   char **esmtp_args, struct mm_verdict *v);

/* RCPT TO: the Nth recipient (N counts this one) over the sender's or this
   recipient's limit; a declared SIZE= over this recipient's limit. */
void mm_check_rcpt(struct mm_policy *p, const char *sasl_user,
		   const char *rcpt, unsigned n, long long declared_size,
		   struct mm_verdict *v);

/* End of message: its size against every limit that applies, then the
   rate limits (one database round trip). */
void mm_check_eom(struct mm_policy *p, struct mm_message *m,
		  const struct mm_session *s,
		  const struct mm_check_settings *cs, struct mm_verdict *v);

/* SIZE=N among ESMTP arguments, or -1. */
long long mm_declared_size(char **esmtp_args);

#endif
