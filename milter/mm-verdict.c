/*
 * mm-verdict.c - the decision about one message (see mm-verdict.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm-extract.h"
#include "mm-verdict.h"

void
mm_verdict_init(struct mm_verdict *v, const char *stage)
{
	memset(v, 0, sizeof(*v));
	v->action = MM_ACCEPT;
	v->policy = json_pack("{s:s,s:n,s:n,s:n}", "stage", stage, "rule",
			      "spam", "virus");
}

void
mm_verdict_clear(struct mm_verdict *v)
{
	free(v->text);
	json_decref(v->policy);
	memset(v, 0, sizeof(*v));
}

void
mm_verdict_refuse(struct mm_verdict *v, enum mm_action action,
		  const char *code, const char *status, const char *rule,
		  const char *fmt, ...)
{
	va_list ap;
	char *text = NULL;

	if (action <= v->action)
		return;
	va_start(ap, fmt);
	if (vasprintf(&text, fmt, ap) < 0)
		text = NULL;
	va_end(ap);
	free(v->text);
	v->text = text;
	v->action = action;
	snprintf(v->code, sizeof(v->code), "%s", code);
	snprintf(v->status, sizeof(v->status), "%s", status);
	if (v->policy)
		json_object_set_new(v->policy, "rule", mm_json_str(rule));
}

const char *
mm_action_name(enum mm_action action)
{
	switch (action) {
	case MM_HOLD:
		return "hold";
	case MM_TEMPFAIL:
		return "tempfail";
	case MM_REJECT:
		return "reject";
	case MM_ACCEPT:
		break;
	}
	return "accept";
}
