/*
 * mm-message.c - build the metadata document of one message.
 *
 * The content half (headers, parts, attachments) comes from the shared
 * core's extractor, fed with the message exactly as reconstructed from the
 * milter's header and body events; the envelope half is added here.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "mm-message.h"

struct mm_message {
	char id[MM_UUID_TEXT_SIZE];
	struct mm_extract *extract;
	char *tmpdir;		/* the extractor keeps a pointer to it */
	char *env_from;
	char *sasl_user;
	char *tls_version;
	char *tls_cipher;
	json_t *recipients;
	bool any_remote;
	size_t size;		/* bytes of the message so far */
	mm_message_tap_fn *tap;	/* sees every byte too (a virus scanner) */
	void *tap_context;
};

static char *
dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

char *
mm_strip_angles(const char *addr)
{
	size_t len;

	if (addr == NULL)
		return strdup("");
	len = strlen(addr);
	if (len >= 2 && addr[0] == '<' && addr[len - 1] == '>')
		return strndup(addr + 1, len - 2);
	return strdup(addr);
}

struct mm_message *
mm_message_new(const struct mm_extract_limits *limits)
{
	struct mm_message *m = calloc(1, sizeof(*m));
	struct mm_extract_limits lim = *limits;

	if (m == NULL)
		return NULL;
	mm_uuid7(m->id);
	m->tmpdir = dup_or_null(limits->tmpdir);
	lim.tmpdir = m->tmpdir;
	m->extract = mm_extract_new(&lim);
	m->recipients = json_array();
	return m;
}

void
mm_message_free(struct mm_message **mp)
{
	struct mm_message *m = *mp;

	if (m == NULL)
		return;
	mm_extract_free(&m->extract);
	free(m->tmpdir);
	free(m->env_from);
	free(m->sasl_user);
	free(m->tls_version);
	free(m->tls_cipher);
	json_decref(m->recipients);
	free(m);
	*mp = NULL;
}

const char *
mm_message_id(const struct mm_message *m)
{
	return m->id;
}

void
mm_message_set_sender(struct mm_message *m, const char *env_from,
		      const char *sasl_user)
{
	free(m->env_from);
	free(m->sasl_user);
	m->env_from = mm_strip_angles(env_from);
	m->sasl_user = dup_or_null(sasl_user);
}

void
mm_message_set_tls(struct mm_message *m, const char *version, const char *cipher)
{
	free(m->tls_version);
	free(m->tls_cipher);
	m->tls_version = dup_or_null(version);
	m->tls_cipher = dup_or_null(cipher);
}

void
mm_message_add_recipient(struct mm_message *m, const char *rcpt, bool local)
{
	char *addr = mm_strip_angles(rcpt);
	json_t *entry = json_object();

	json_object_set_new(entry, "address", mm_json_str(addr));
	json_array_append_new(m->recipients, entry);
	free(addr);
	if (!local)
		m->any_remote = true;
}

static void
feed(struct mm_message *m, const char *data, size_t len)
{
	mm_extract_feed(m->extract, data, len);
	m->size += len;
	if (m->tap)
		m->tap(m->tap_context, data, len);
}

void
mm_message_set_tap(struct mm_message *m, mm_message_tap_fn *tap, void *context)
{
	m->tap = tap;
	m->tap_context = context;
}

size_t
mm_message_size(const struct mm_message *m)
{
	return m->size;
}

const char *
mm_message_sasl_user(const struct mm_message *m)
{
	return m->sasl_user;
}

const char *
mm_message_sender(const struct mm_message *m)
{
	return m->env_from ? m->env_from : "";
}

const json_t *
mm_message_recipients(const struct mm_message *m)
{
	return m->recipients;
}

struct mm_extract *
mm_message_extract(struct mm_message *m)
{
	return m->extract;
}

void
mm_message_add_header(struct mm_message *m, const char *name, const char *value)
{
	feed(m, name, strlen(name));
	feed(m, ":", 1);
	feed(m, value, strlen(value));
	feed(m, "\r\n", 2);
}

void
mm_message_end_headers(struct mm_message *m)
{
	feed(m, "\r\n", 2);
}

void
mm_message_add_body(struct mm_message *m, const void *data, size_t len)
{
	feed(m, data, len);
}

static const char *
direction(const struct mm_message *m, const struct mm_session *s)
{
	if (m->sasl_user == NULL && !s->local_submission)
		return "inbound";
	return m->any_remote ? "outbound" : "local";
}

static json_t *
session_json(const struct mm_session *s)
{
	/* Postfix's made-up session for sendmail(1) mail describes no client. */
	if (s->local_submission)
		return json_pack("{s:n,s:n,s:n}", "ip", "name", "helo");
	return json_pack("{s:o,s:o,s:o}",
			 "ip", mm_json_str(s->client_ip),
			 "name", mm_json_str(s->client_name),
			 "helo", mm_json_str(s->helo));
}

static json_t *
tls_json(const struct mm_message *m)
{
	if (m->tls_version == NULL && m->tls_cipher == NULL)
		return json_null();
	return json_pack("{s:o,s:o}", "version", mm_json_str(m->tls_version),
			 "cipher", mm_json_str(m->tls_cipher));
}

/* The envelope half and the decision, added to DOC (the content half). */
static char *
finish_document(struct mm_message *m, const struct mm_session *s, json_t *doc,
		const char *queue_id, const struct mm_verdict *v)
{
	char now[MM_RFC3339_SIZE];
	char *text;

	mm_rfc3339_utc(NULL, now);
	json_object_set_new(doc, "version", json_integer(1));
	json_object_set_new(doc, "mailmeta_id", json_string(m->id));
	json_object_set_new(doc, "queue_id", mm_json_str(queue_id));
	json_object_set_new(doc, "received_at", json_string(now));
	json_object_set_new(doc, "direction", json_string(direction(m, s)));
	json_object_set_new(doc, "client", session_json(s));
	json_object_set_new(doc, "tls", tls_json(m));
	json_object_set_new(doc, "sasl_user", mm_json_str(m->sasl_user));
	json_object_set_new(doc, "env_from", mm_json_str(m->env_from ? m->env_from : ""));
	json_object_set(doc, "recipients", m->recipients);
	json_object_set_new(doc, "action", json_string(mm_action_name(v->action)));
	json_object_set_new(doc, "reason", mm_json_str(v->action == MM_ACCEPT ? NULL : v->text));
	if (v->policy)
		json_object_set(doc, "policy", v->policy);
	text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	return text;
}

char *
mm_message_document(struct mm_message *m, const struct mm_session *s,
		    const char *queue_id, const struct mm_verdict *v)
{
	json_t *doc = mm_extract_finish(m->extract);

	return doc ? finish_document(m, s, doc, queue_id, v) : NULL;
}

char *
mm_message_refusal_document(struct mm_message *m, const struct mm_session *s,
			    const char *queue_id, const struct mm_verdict *v)
{
	json_t *doc = json_pack("{s:{},s:[],s:[],s:n,s:b,s:[]}", "headers",
				"parts", "attachments", "size_bytes",
				"malformed", 0, "malformed_reasons");

	return doc ? finish_document(m, s, doc, queue_id, v) : NULL;
}
