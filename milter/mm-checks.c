/*
 * mm-checks.c - size and recipient limits, suspensions and rate limits.
 *
 * Which limit applies: for mail from an authenticated sender, the
 * sender's (user, else domain, else global); for other mail, each
 * recipient's own, so that a domain with a larger limit than the global
 * default receives what it allows.  Declared sizes (SIZE=) are refused as
 * early as they can be: at MAIL for a sender's limit, at RCPT for a
 * recipient's.  Rate limits are decided by PostgreSQL, exactly, once the
 * message's size and recipients are known.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mm-checks.h"
#include "mm-log.h"

long long
mm_declared_size(char **esmtp_args)
{
	for (char **a = esmtp_args; a && *a; a++) {
		char *end;
		long long n;

		if (strncasecmp(*a, "SIZE=", 5) != 0)
			continue;
		errno = 0;
		n = strtoll(*a + 5, &end, 10);
		if (errno == 0 && end != *a + 5 && *end == '\0' && n >= 0)
			return n;
	}
	return -1;
}

static bool
authenticated(const char *sasl_user)
{
	return sasl_user && *sasl_user;
}

static void
refuse_size(struct mm_verdict *v, long long limit)
{
	mm_verdict_refuse(v, MM_REJECT, "552", "5.3.4", "message_size_limit",
			  "Message size exceeds fixed limit (%lld bytes)", limit);
}

static void
refuse_recipients(struct mm_verdict *v, long long limit)
{
	mm_verdict_refuse(v, MM_REJECT, "550", "5.5.3", "recipient_limit",
			  "Too many recipients (at most %lld per message)", limit);
}

void
mm_check_mail(struct mm_policy *p, const char *sasl_user, char **esmtp_args,
	      struct mm_verdict *v)
{
	struct mm_limits lim;
	long long size = mm_declared_size(esmtp_args);
	char *reason = NULL;

	if (p == NULL || !authenticated(sasl_user))
		return;
	if (mm_policy_suspended(p, sasl_user, &reason))
		mm_verdict_refuse(v, MM_REJECT, "550", "5.7.1", "suspended",
				  "Sender suspended: %s", reason ? reason : "abuse");
	free(reason);
	mm_policy_limits(p, sasl_user, &lim);
	if (size >= 0 && lim.max_message_bytes && size > lim.max_message_bytes)
		refuse_size(v, lim.max_message_bytes);
}

void
mm_check_rcpt(struct mm_policy *p, const char *sasl_user, const char *rcpt,
	      unsigned n, long long declared_size, struct mm_verdict *v)
{
	struct mm_limits lim;

	if (p == NULL)
		return;
	mm_policy_limits(p, authenticated(sasl_user) ? sasl_user : rcpt, &lim);
	if (lim.max_recipients && (long long)n > lim.max_recipients)
		refuse_recipients(v, lim.max_recipients);
	if (!authenticated(sasl_user) && declared_size >= 0 &&
	    lim.max_message_bytes && declared_size > lim.max_message_bytes)
		refuse_size(v, lim.max_message_bytes);
}

/* The smallest size limit among the recipients', or 0. */
static long long
recipients_size_limit(struct mm_policy *p, const json_t *rcpts)
{
	long long smallest = 0;
	size_t i;
	json_t *r;

	json_array_foreach(rcpts, i, r) {
		const char *addr = json_string_value(json_object_get(r, "address"));
		struct mm_limits lim;

		mm_policy_limits(p, addr, &lim);
		if (lim.max_message_bytes &&
		    (smallest == 0 || lim.max_message_bytes < smallest))
			smallest = lim.max_message_bytes;
	}
	return smallest;
}

static json_t *
check_request(struct mm_message *m, const struct mm_session *s)
{
	json_t *rcpts = json_array();
	size_t i;
	json_t *r;

	json_array_foreach(mm_message_recipients(m), i, r)
		json_array_append(rcpts, json_object_get(r, "address"));
	return json_pack("{s:s,s:o,s:o,s:o,s:o,s:I}",
			 "mailmeta_id", mm_message_id(m),
			 "sasl_user", mm_json_str(mm_message_sasl_user(m)),
			 "sender", mm_json_str(mm_message_sender(m)),
			 "client_ip", mm_json_str(s->local_submission ? NULL : s->client_ip),
			 "recipients", rcpts,
			 "size_bytes", (json_int_t)mm_message_size(m));
}

static enum mm_action
action_of(const char *name)
{
	if (name == NULL)
		return MM_TEMPFAIL;
	if (strcmp(name, "accept") == 0)
		return MM_ACCEPT;
	if (strcmp(name, "hold") == 0)
		return MM_HOLD;
	if (strcmp(name, "reject") == 0)
		return MM_REJECT;
	return MM_TEMPFAIL;
}

/* A reply code and status the database may choose, within what fits. */
static const char *
valid_or(const char *value, const char *fallback, char first)
{
	if (value == NULL || value[0] != first || strlen(value) > 9)
		return fallback;
	for (const char *c = value; *c; c++)
		if (!isdigit((unsigned char)*c) && *c != '.')
			return fallback;
	return value;
}

static void
apply_answer(json_t *answer, struct mm_verdict *v)
{
	enum mm_action action = action_of(json_string_value(json_object_get(answer, "action")));
	const char *text = json_string_value(json_object_get(answer, "text"));
	const char *rule = json_string_value(json_object_get(answer, "rule"));
	const char *code, *status;

	if (action == MM_ACCEPT)
		return;
	if (action == MM_REJECT) {
		code = valid_or(json_string_value(json_object_get(answer, "code")), "550", '5');
		status = valid_or(json_string_value(json_object_get(answer, "status")), "5.7.1", '5');
	} else {
		code = valid_or(json_string_value(json_object_get(answer, "code")), "451", '4');
		status = valid_or(json_string_value(json_object_get(answer, "status")), "4.7.1", '4');
	}
	if (action == MM_HOLD)
		code = "250", status = "2.0.0";
	mm_verdict_refuse(v, action, code, status, rule ? rule : "rate_limit",
			  "%s", text ? text : "Rate limit exceeded");
}

void
mm_check_eom(struct mm_policy *p, struct mm_message *m,
	     const struct mm_session *s, const struct mm_check_settings *cs,
	     struct mm_verdict *v)
{
	const char *sasl_user = mm_message_sasl_user(m);
	long long size = (long long)mm_message_size(m), limit;
	struct mm_limits lim;
	json_t *request, *answer = NULL;

	if (p == NULL)
		return;
	if (authenticated(sasl_user)) {
		mm_policy_limits(p, sasl_user, &lim);
		limit = lim.max_message_bytes;
	} else {
		limit = recipients_size_limit(p, mm_message_recipients(m));
	}
	if (limit && size > limit)
		refuse_size(v, limit);
	if (v->action == MM_REJECT)
		return;		/* budgets are not spent on refused mail */

	request = check_request(m, s);
	/* a message no rule counts needs no round trip */
	if (mm_policy_may_limit(p, request)) {
		if (mm_policy_check(p, request, cs->timeout_ms, &answer) == MM_POLICY_ANSWERED)
			apply_answer(answer, v);
		else if (cs->tempfail_on_failure)
			mm_verdict_refuse(v, MM_TEMPFAIL, "451", "4.3.0", "policy_unavailable",
					  "Temporary failure checking rate limits, try again later");
	}
	json_decref(answer);
	json_decref(request);
}
