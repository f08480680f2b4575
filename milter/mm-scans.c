/*
 * mm-scans.c - clamd and spamd for one message (see mm-scans.h).
 *
 * Spam thresholds come from the policy snapshot: the sender's domain for
 * authenticated mail, else the strictest of the recipients' domains, so
 * that no domain receives what its own threshold refuses.  What spamd is
 * told about the client: a Received: line made up from the SMTP session,
 * since Postfix does not show its own to milters and SpamAssassin's
 * relay-based rules need one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mm-clamd.h"
#include "mm-log.h"
#include "mm-scans.h"

struct mm_scans {
	struct mm_scan_settings set;
	struct mm_clamd *clamd;		/* opened at the first byte */
	bool clamd_opened;
};

static void
copy_engine(struct mm_engine_config *dst, const struct mm_engine_config *src)
{
	*dst = *src;
	dst->address = src->address ? strdup(src->address) : NULL;
}

struct mm_scans *
mm_scans_new(const struct mm_config *cfg)
{
	struct mm_scans *sc;

	if (cfg->clamd.address == NULL && cfg->spamd.address == NULL)
		return NULL;
	if ((sc = calloc(1, sizeof(*sc))) == NULL)
		return NULL;
	copy_engine(&sc->set.clamd, &cfg->clamd);
	copy_engine(&sc->set.spamd, &cfg->spamd);
	sc->set.on_infected = cfg->clamd_on_infected;
	return sc;
}

void
mm_scans_free(struct mm_scans **scp)
{
	struct mm_scans *sc = *scp;

	if (sc == NULL)
		return;
	mm_clamd_free(&sc->clamd);
	free(sc->set.clamd.address);
	free(sc->set.spamd.address);
	free(sc);
	*scp = NULL;
}

void
mm_scans_tap(void *arg, const void *data, size_t len)
{
	struct mm_scans *sc = arg;

	if (sc == NULL || sc->set.clamd.address == NULL)
		return;
	if (!sc->clamd_opened) {
		sc->clamd = mm_clamd_open(&sc->set.clamd);
		sc->clamd_opened = true;
	}
	if (sc->clamd && mm_clamd_failed(sc->clamd) == NULL)
		mm_clamd_write(sc->clamd, data, len);
}

static void
engine_failed(struct mm_verdict *v, const struct mm_engine_config *cfg,
	      const char *engine, const char *why)
{
	if (cfg->on_failure == MM_ENGINE_ACCEPT) {
		mm_warn("%s failed (%s): message accepted unscanned", engine, why);
		return;
	}
	mm_verdict_refuse(v, MM_TEMPFAIL, "451", "4.7.1", engine,
			  "%s unavailable, try again later",
			  strcmp(engine, "clamd") == 0 ? "Virus scanner" : "Spam filter");
}

static void
virus_verdict(struct mm_scans *sc, struct mm_verdict *v)
{
	struct mm_clamd_verdict cv;

	if (sc->set.clamd.address == NULL)
		return;
	if (!sc->clamd_opened)		/* an empty message */
		mm_scans_tap(sc, "", 0);
	if (sc->clamd == NULL) {
		engine_failed(v, &sc->set.clamd, "clamd", "out of memory");
		return;
	}
	mm_clamd_finish(sc->clamd, &cv);
	mm_clamd_free(&sc->clamd);
	if (cv.status == MM_CLAMD_FAILED) {
		engine_failed(v, &sc->set.clamd, "clamd", cv.reason);
	} else if (cv.status == MM_CLAMD_INFECTED) {
		json_object_set_new(v->policy, "virus",
				    json_pack("{s:o}", "name", mm_json_str(cv.signature)));
		if (sc->set.on_infected == MM_ON_INFECTED_HOLD)
			mm_verdict_refuse(v, MM_HOLD, "250", "2.0.0", "clamd",
					  "Held: virus %s found", cv.signature);
		else
			mm_verdict_refuse(v, MM_REJECT, "554", "5.7.1", "clamd",
					  "Virus found: %s", cv.signature);
	}
}

/* The thresholds for M: the sender's domain's for authenticated mail, else
   the strictest among its recipients' domains (each its own, or the global
   pair). */
static void
thresholds_for(struct mm_policy *p, struct mm_message *m,
	       struct mm_spam_thresholds *out)
{
	const char *sasl = mm_message_sasl_user(m);
	const char *at;
	size_t i;
	json_t *r;

	if (p == NULL) {
		*out = (struct mm_spam_thresholds) { 5.0, 15.0 };
		return;
	}
	if (sasl && *sasl) {
		at = strrchr(sasl, '@');
		mm_policy_spam_thresholds(p, at ? at + 1 : NULL, out);
		return;
	}
	mm_policy_spam_thresholds(p, NULL, out);	/* without recipients */
	json_array_foreach(mm_message_recipients(m), i, r) {
		const char *addr = json_string_value(json_object_get(r, "address"));
		struct mm_spam_thresholds t;

		at = addr ? strrchr(addr, '@') : NULL;
		mm_policy_spam_thresholds(p, at ? at + 1 : NULL, &t);
		if (i == 0 || t.mark < out->mark)
			out->mark = t.mark;
		if (i == 0 || t.reject < out->reject)
			out->reject = t.reject;
	}
}

static ssize_t
read_message(void *x, size_t offset, void *buf, size_t len)
{
	return mm_extract_read(x, offset, buf, len);
}

/* The Received: line spamd is shown first (caller frees). */
static char *
received_line(const struct mm_session *s)
{
	char date[64], *line = NULL;
	time_t now = time(NULL);
	struct tm tm;

	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", gmtime_r(&now, &tm));
	if (s->local_submission || s->client_ip == NULL) {
		if (asprintf(&line, "Received: by localhost (mailmeta-milter);\r\n\t%s\r\n", date) < 0)
			return NULL;
	} else if (asprintf(&line, "Received: from %s (%s [%s])\r\n\tby localhost (mailmeta-milter);\r\n\t%s\r\n",
			    s->helo ? s->helo : "unknown", s->client_name ? s->client_name : "unknown",
			    s->client_ip, date) < 0) {
		return NULL;
	}
	for (char *c = line; *c; c++)	/* the peer's words must not break the line */
		if ((unsigned char)*c < 0x20 && *c != '\r' && *c != '\n' && *c != '\t')
			*c = '?';
	return line;
}

static json_t *
rule_list(const char *rules)
{
	json_t *list = json_array();
	const char *p = rules;

	while (p && *p) {
		size_t n = strcspn(p, ",");

		if (n > 0)
			json_array_append_new(list, json_stringn(p, n));
		p += n + (p[n] == ',');
	}
	return list;
}

static bool
spam_verdict(struct mm_scans *sc, struct mm_message *m,
	     const struct mm_session *s, struct mm_policy *p,
	     struct mm_verdict *v, struct mm_spam_headers *headers)
{
	struct mm_extract *x = mm_message_extract(m);
	struct mm_spamd_result *r;
	struct mm_spam_thresholds t;
	char *prefix;
	bool scored = false;

	if (sc->set.spamd.address == NULL || v->action == MM_REJECT)
		return false;
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		engine_failed(v, &sc->set.spamd, "spamd", "out of memory");
		return false;
	}
	prefix = received_line(s);
	mm_spamd_check(&sc->set.spamd, &(struct mm_spamd_request) {
		.size = mm_extract_stored(x), .read = read_message, .ctx = x,
		.prefix = prefix }, r);
	free(prefix);
	if (r->status == MM_SPAMD_FAILED) {
		engine_failed(v, &sc->set.spamd, "spamd", r->reason);
	} else if (r->status == MM_SPAMD_SCORED) {
		thresholds_for(p, m, &t);
		json_object_set_new(v->policy, "spam",
				    json_pack("{s:f,s:f,s:f,s:o}", "score", r->score,
					      "required", t.mark, "reject", t.reject,
					      "rules", rule_list(r->rules)));
		if (r->score >= t.reject)
			mm_verdict_refuse(v, MM_REJECT, "550", "5.7.1", "spamd",
					  "Message refused as spam (score %.1f)", r->score);
		mm_spamd_headers(r, t.mark, headers);
		scored = true;
	}
	free(r);
	return scored;
}

bool
mm_scans_eom(struct mm_scans *sc, struct mm_message *m,
	     const struct mm_session *s, struct mm_policy *p,
	     struct mm_verdict *v, struct mm_spam_headers *headers)
{
	if (sc == NULL)
		return false;
	virus_verdict(sc, v);
	return spam_verdict(sc, m, s, p, v, headers);
}
