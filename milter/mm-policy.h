/*
 * mm-policy.h - the policy rules kept in PostgreSQL, as the milter sees them.
 *
 * Two kinds of answers.  Size and recipient limits, spam thresholds and
 * suspended senders change rarely: they come from a snapshot that a
 * background thread refreshes (mail.policy_snapshot()), so MAIL and RCPT
 * cost no database round trip.  Rate limits must be exact across milters
 * and Postfix nodes: mail.policy_check() consumes the budgets of a message
 * in one round trip at end-of-message.
 */
#ifndef MM_POLICY_H
#define MM_POLICY_H

#include <stdbool.h>
#include <jansson.h>

struct mm_policy;

/* A limit of 0 means none. */
struct mm_limits {
	long long max_message_bytes;
	long long max_recipients;
};

struct mm_spam_thresholds {
	double mark;		/* add X-Spam-Flag: YES at or above */
	double reject;		/* refuse at or above */
};

enum mm_policy_result {
	MM_POLICY_ANSWERED = 0,
	MM_POLICY_UNAVAILABLE = -1,	/* database down, slow or failing */
};

/* Starts the snapshot thread; REFRESH_S seconds between snapshots. */
struct mm_policy *mm_policy_start(const char *conninfo, unsigned refresh_s,
				  unsigned pool_size);
void mm_policy_set_conninfo(struct mm_policy *p, const char *conninfo,
			    unsigned refresh_s);
void mm_policy_stop(struct mm_policy **p);

/* Whether any snapshot was ever loaded. */
bool mm_policy_ready(struct mm_policy *p);

/* The limits for mail sent by or to ADDRESS (user, else its domain, else
   the global default); ADDRESS NULL: the global default. */
void mm_policy_limits(struct mm_policy *p, const char *address,
		      struct mm_limits *out);
/* The thresholds of DOMAIN (NULL: global). */
void mm_policy_spam_thresholds(struct mm_policy *p, const char *domain,
			       struct mm_spam_thresholds *out);
/* Whether SASL_USER may not send; *REASON (caller frees) says why. */
bool mm_policy_suspended(struct mm_policy *p, const char *sasl_user,
			 char **reason);

/* Whether any rate-limit rule may count the message REQUEST describes
   (from the snapshot; true when unsure).  When not, and its sender is not
   suspended, the round trip below can be spared. */
bool mm_policy_may_limit(struct mm_policy *p, json_t *request);

/* One round trip: mail.policy_check(REQUEST).  *ANSWER gets a new
   reference to the object returned on MM_POLICY_ANSWERED. */
enum mm_policy_result mm_policy_check(struct mm_policy *p, json_t *request,
				      unsigned timeout_ms, json_t **answer);

#endif
