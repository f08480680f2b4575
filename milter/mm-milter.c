/*
 * mm-milter.c - libmilter callbacks of mailmeta-milter.
 *
 * Thin on purpose: each callback copies what Postfix says into the
 * connection's mm_session / mm_message, runs the policy step of its stage
 * (mm-checks.c) and returns.  The work happens at end-of-message: the
 * checks decide, the document with that decision is committed to
 * PostgreSQL (or, when that does not succeed in time, appended to the
 * journal) before Postfix gets its answer, and only then is the message
 * stamped with X-Mailmeta-ID.  A transaction refused before its content
 * arrived (MAIL, every RCPT) is recorded too, without content.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <libmilter/mfapi.h>

#include "mm-checks.h"
#include "mm-log.h"
#include "mm-message.h"
#include "mm-milter.h"
#include "mm-scans.h"

#define MAILMETA_ID_HEADER "X-Mailmeta-ID"

/* SpamAssassin's headers: ours replace any that arrive with the message. */
static const char *const spam_header_names[] = {
	"X-Spam-Flag", "X-Spam-Score", "X-Spam-Level", "X-Spam-Status",
};
#define SPAM_HEADERS (sizeof(spam_header_names) / sizeof(spam_header_names[0]))

struct conn {
	unsigned long no_reply;		/* SMFIP_NR_* steps Postfix agreed to */
	struct mm_session session;
	struct mm_message *msg;
	unsigned forged_id_headers;	/* X-Mailmeta-ID headers that came in */
	long long declared_size;	/* MAIL FROM's SIZE=, or -1 */
	unsigned accepted_rcpts;
	json_t *refused_rcpts;		/* {"address", "reason"} of refused RCPTs */
	struct mm_verdict refusal;	/* the last RCPT refusal */
	struct mm_scans *scans;		/* virus and spam engines, or NULL */
	unsigned spam_headers_in[SPAM_HEADERS];	/* of each, that came in */
};

static struct mm_writer *writer;
static struct mm_journal *journal;
static struct mm_policy *policy;
static struct mm_config *config;
static pthread_rwlock_t config_lock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_mutex_t storing_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned storing_messages;
static bool stopping;		/* under storing_lock */

void
mm_milter_set_config(struct mm_config *cfg)
{
	pthread_rwlock_wrlock(&config_lock);
	mm_config_free(&config);
	config = cfg;
	pthread_rwlock_unlock(&config_lock);
}

unsigned
mm_milter_storing_messages(void)
{
	unsigned n;

	pthread_mutex_lock(&storing_lock);
	n = storing_messages;
	pthread_mutex_unlock(&storing_lock);
	return n;
}

void
mm_milter_stop_storing(void)
{
	pthread_mutex_lock(&storing_lock);
	stopping = true;
	pthread_mutex_unlock(&storing_lock);
}

/* Counts a message into the store stage; false once stopping. */
static bool
begin_storing(void)
{
	bool ok;

	pthread_mutex_lock(&storing_lock);
	ok = !stopping;
	if (ok)
		storing_messages++;
	pthread_mutex_unlock(&storing_lock);
	return ok;
}

static void
end_storing(void)
{
	pthread_mutex_lock(&storing_lock);
	storing_messages--;
	pthread_mutex_unlock(&storing_lock);
}

static const char *
macro(SMFICTX *ctx, const char *name)
{
	const char *v = smfi_getsymval(ctx, (char *)name);

	return v && *v ? v : NULL;
}

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static bool store_document(const char *queue_id, const char *doc, const char **how);

/* Records the transaction of C as refused before its content: V says why. */
static void
record_refusal(SMFICTX *ctx, struct conn *c, const struct mm_verdict *v)
{
	const char *queue_id = macro(ctx, "i"), *how = NULL;
	char *doc;

	if (queue_id == NULL)
		queue_id = "NOQUEUE";
	doc = mm_message_refusal_document(c->msg, &c->session, queue_id, v);
	if (doc && store_document(queue_id, doc, &how))
		mm_info("%s: mailmeta_id=%s, %s before DATA: %s %s %s, metadata %s",
			queue_id, mm_message_id(c->msg), mm_action_name(v->action),
			v->code, v->status, v->text ? v->text : "", how);
	else
		mm_warn("%s: the refusal of mailmeta_id=%s could not be recorded",
			queue_id, mm_message_id(c->msg));
	free(doc);
}

/* A transaction whose every RCPT was refused ends without DATA. */
static void
record_refused_recipients(SMFICTX *ctx, struct conn *c)
{
	size_t i;
	json_t *r;

	if (c->msg == NULL || json_array_size(c->refused_rcpts) == 0 ||
	    c->accepted_rcpts > 0)
		return;
	json_array_foreach(c->refused_rcpts, i, r)
		mm_message_add_recipient(c->msg, json_string_value(json_object_get(r, "address")), true);
	record_refusal(ctx, c, &c->refusal);
}

/* Ends the transaction of C; RECORD: first record RCPT refusals. */
static void
end_transaction(SMFICTX *ctx, struct conn *c, bool record)
{
	if (record)
		record_refused_recipients(ctx, c);
	mm_message_free(&c->msg);
	mm_scans_free(&c->scans);
	memset(c->spam_headers_in, 0, sizeof(c->spam_headers_in));
	json_decref(c->refused_rcpts);
	c->refused_rcpts = NULL;
	mm_verdict_clear(&c->refusal);
	c->forged_id_headers = 0;
	c->accepted_rcpts = 0;
	c->declared_size = -1;
}

static void
drop_message(struct conn *c)
{
	end_transaction(NULL, c, false);
}

/* The answer of a refusal in V. */
static sfsistat
refuse(SMFICTX *ctx, const struct mm_verdict *v)
{
	smfi_setreply(ctx, (char *)v->code, (char *)v->status,
		      (char *)(v->text ? v->text : "Refused"));
	return v->action == MM_TEMPFAIL ? SMFIS_TEMPFAIL : SMFIS_REJECT;
}

/*
 * Only end-of-message needs an answer today: every other step is sent
 * without waiting for one (SMFIP_NR_*), which spares Postfix's cleanup and
 * the milter a round trip per header.  MAIL and RCPT keep their replies
 * for the policy checks that answer there.  Steps the milter has no use
 * for are not sent at all.
 */
#define MM_NO_REPLY_STEPS (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_HDR | \
			   SMFIP_NR_EOH | SMFIP_NR_BODY)

static sfsistat
on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
	     unsigned long f2, unsigned long f3, unsigned long *pf0,
	     unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	struct conn *c = calloc(1, sizeof(*c));

	(void)f2, (void)f3;
	if (c == NULL)
		return SMFIS_REJECT;	/* the MTA then applies its default action */
	*pf0 = f0 & (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE);
	/* header values exactly as sent; no DATA or unknown-command events */
	*pf1 = f1 & (SMFIP_HDR_LEADSPC | SMFIP_NODATA | SMFIP_NOUNKNOWN |
		     MM_NO_REPLY_STEPS);
	*pf2 = *pf3 = 0;
	c->no_reply = *pf1 & MM_NO_REPLY_STEPS;
	c->declared_size = -1;
	smfi_setpriv(ctx, c);
	return SMFIS_CONTINUE;
}

/* What a step without a verdict answers: nothing, when so agreed. */
static sfsistat
step_done(const struct conn *c, unsigned long step)
{
	return c && (c->no_reply & step) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static char *
address_text(const struct sockaddr *sa)
{
	char buf[INET6_ADDRSTRLEN];

	if (sa == NULL)
		return NULL;
	if (sa->sa_family == AF_INET &&
	    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, sizeof(buf)))
		return strdup(buf);
	if (sa->sa_family == AF_INET6 &&
	    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, sizeof(buf)))
		return strdup(buf);
	return NULL;
}

static sfsistat
on_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *addr)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c == NULL) {	/* an MTA that did not negotiate */
		if ((c = calloc(1, sizeof(*c))) == NULL)
			return SMFIS_TEMPFAIL;
		c->declared_size = -1;
		smfi_setpriv(ctx, c);
	}
	c->session.client_ip = address_text(addr);
	c->session.client_name = dup_or_null(hostname);
	return step_done(c, SMFIP_NR_CONN);
}

static sfsistat
on_helo(SMFICTX *ctx, char *helo)
{
	struct conn *c = smfi_getpriv(ctx);

	free(c->session.helo);
	c->session.helo = dup_or_null(helo);
	return step_done(c, SMFIP_NR_HELO);
}

/* The policy to apply to a new step, or NULL while it is disabled. */
static struct mm_policy *
active_policy(void)
{
	bool enabled;

	pthread_rwlock_rdlock(&config_lock);
	enabled = config->policy_enabled;
	pthread_rwlock_unlock(&config_lock);
	return enabled ? policy : NULL;
}

/* The limits in force; TMPDIR (PATH_MAX bytes) receives the spool directory. */
static void
copy_limits(struct mm_extract_limits *lim, char *tmpdir)
{
	pthread_rwlock_rdlock(&config_lock);
	snprintf(tmpdir, PATH_MAX, "%s", config->tmpdir);
	*lim = (struct mm_extract_limits) {
		.memory_bytes = config->memory_bytes,
		.max_message_bytes = config->max_message_bytes,
		.max_depth = config->max_depth,
		.max_parts = config->max_parts,
		.tmpdir = tmpdir,
	};
	pthread_rwlock_unlock(&config_lock);
}

/*
 * Mail from sendmail(1)/pickup reaches non_smtpd_milters as a session that
 * Postfix makes up: client "localhost" at 127.0.0.1, HELO "localhost", and
 * a sender without the angle brackets smtpd always passes on.  Only a
 * process on this host could imitate all three, and it could as well use
 * sendmail(1).
 */
static bool
is_local_submission(const struct conn *c, const char *sender)
{
	const struct mm_session *s = &c->session;

	return sender[0] != '<' &&
	       s->client_ip && strcmp(s->client_ip, "127.0.0.1") == 0 &&
	       s->client_name && strcmp(s->client_name, "localhost") == 0 &&
	       s->helo && strcmp(s->helo, "localhost") == 0;
}

static sfsistat
on_envfrom(SMFICTX *ctx, char **argv)
{
	struct conn *c = smfi_getpriv(ctx);
	struct mm_extract_limits lim;
	struct mm_verdict v;
	char tmpdir[PATH_MAX];
	sfsistat answer = SMFIS_CONTINUE;

	end_transaction(ctx, c, true);
	copy_limits(&lim, tmpdir);
	if ((c->msg = mm_message_new(&lim)) == NULL)
		return SMFIS_TEMPFAIL;
	mm_message_set_sender(c->msg, argv[0], macro(ctx, "{auth_authen}"));
	c->declared_size = mm_declared_size(argv + 1);
	mm_message_set_tls(c->msg, macro(ctx, "{tls_version}"), macro(ctx, "{cipher}"));
	mm_debug("MAIL FROM %s: daemon_name=%s daemon_addr=%s client_addr=%s"
		 " client_name=%s auth=%s j=%s _=%s", argv[0],
		 macro(ctx, "{daemon_name}"), macro(ctx, "{daemon_addr}"),
		 macro(ctx, "{client_addr}"), macro(ctx, "{client_name}"),
		 macro(ctx, "{auth_authen}"), macro(ctx, "j"), macro(ctx, "_"));
	c->session.local_submission = is_local_submission(c, argv[0]);

	mm_verdict_init(&v, "mail");
	mm_check_mail(active_policy(), mm_message_sasl_user(c->msg), argv + 1, &v);
	if (v.action >= MM_TEMPFAIL) {
		record_refusal(ctx, c, &v);
		answer = refuse(ctx, &v);
		drop_message(c);
	} else {
		pthread_rwlock_rdlock(&config_lock);
		c->scans = mm_scans_new(config);
		pthread_rwlock_unlock(&config_lock);
		if (c->scans)
			mm_message_set_tap(c->msg, mm_scans_tap, c->scans);
	}
	mm_verdict_clear(&v);
	return answer;
}

static sfsistat
on_envrcpt(SMFICTX *ctx, char **argv)
{
	struct conn *c = smfi_getpriv(ctx);
	const char *mailer = macro(ctx, "{rcpt_mailer}");
	bool local;

	struct mm_verdict v;
	char *rcpt;
	sfsistat answer;

	if (c->msg == NULL)
		return SMFIS_TEMPFAIL;
	mm_verdict_init(&v, "rcpt");
	rcpt = mm_strip_angles(argv[0]);
	mm_check_rcpt(active_policy(), mm_message_sasl_user(c->msg), rcpt,
		      c->accepted_rcpts + 1, c->declared_size, &v);
	if (v.action >= MM_TEMPFAIL) {
		if (c->refused_rcpts == NULL)
			c->refused_rcpts = json_array();
		json_array_append_new(c->refused_rcpts,
				      json_pack("{s:o,s:o}", "address", mm_json_str(rcpt),
						"reason", mm_json_str(v.text)));
		answer = refuse(ctx, &v);
		mm_verdict_clear(&c->refusal);
		c->refusal = v;		/* moved */
		free(rcpt);
		return answer;
	}
	mm_verdict_clear(&v);
	free(rcpt);
	pthread_rwlock_rdlock(&config_lock);
	local = mm_config_is_local_transport(config, mailer);
	pthread_rwlock_unlock(&config_lock);
	mm_message_add_recipient(c->msg, argv[0], local);
	c->accepted_rcpts++;
	return SMFIS_CONTINUE;
}

static sfsistat
on_header(SMFICTX *ctx, char *name, char *value)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c->msg == NULL)	/* end-of-message answers for it */
		return step_done(c, SMFIP_NR_HDR);
	/* Ours alone: one that arrives with the message is removed at the end. */
	if (strcasecmp(name, MAILMETA_ID_HEADER) == 0) {
		c->forged_id_headers++;
		return step_done(c, SMFIP_NR_HDR);
	}
	for (size_t i = 0; i < SPAM_HEADERS; i++)
		if (strcasecmp(name, spam_header_names[i]) == 0)
			c->spam_headers_in[i]++;
	mm_message_add_header(c->msg, name, value);
	return step_done(c, SMFIP_NR_HDR);
}

static sfsistat
on_eoh(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c->msg)
		mm_message_end_headers(c->msg);
	return step_done(c, SMFIP_NR_EOH);
}

static sfsistat
on_body(SMFICTX *ctx, unsigned char *data, size_t len)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c->msg)
		mm_message_add_body(c->msg, data, len);
	return step_done(c, SMFIP_NR_BODY);
}

/* Commits DOC, or journals it; false when neither worked in time. */
static bool
store_document(const char *queue_id, const char *doc, const char **how)
{
	unsigned timeout;
	enum mm_on_failure on_failure;
	enum mm_write_result r;

	pthread_rwlock_rdlock(&config_lock);
	timeout = config->commit_timeout_ms;
	on_failure = config->on_failure;
	pthread_rwlock_unlock(&config_lock);

	r = mm_writer_record(writer, doc, timeout);
	if (r == MM_WRITE_COMMITTED) {
		*how = "recorded";
		return true;
	}
	if (r == MM_WRITE_REJECTED)
		mm_error("%s: the database rejected the metadata document", queue_id);
	if (on_failure == MM_ON_FAILURE_JOURNAL && mm_journal_append(journal, doc) == 0) {
		*how = "journaled";
		return true;
	}
	return false;
}

static void
stamp_message(SMFICTX *ctx, struct conn *c)
{
	for (unsigned i = c->forged_id_headers; i >= 1; i--)
		smfi_chgheader(ctx, MAILMETA_ID_HEADER, (int)i, NULL);
	smfi_insheader(ctx, 0, MAILMETA_ID_HEADER, (char *)mm_message_id(c->msg));
}

/* Replaces whatever X-Spam-* headers came in with spamd's verdict. */
static void
add_spam_headers(SMFICTX *ctx, struct conn *c, const struct mm_spam_headers *h)
{
	const char *values[SPAM_HEADERS] = { h->flag, h->score, h->level, h->status };

	for (size_t i = 0; i < SPAM_HEADERS; i++) {
		for (unsigned n = c->spam_headers_in[i]; n >= 1; n--)
			smfi_chgheader(ctx, (char *)spam_header_names[i], (int)n, NULL);
		smfi_addheader(ctx, (char *)spam_header_names[i], (char *)values[i]);
	}
}

/*
 * Postfix cannot refuse mail from sendmail(1) (non_smtpd_milters): a
 * rejection leaves it stuck in the queue.  Such mail is held instead, for
 * the administrator to release or delete.
 */
static void
hold_instead_of_reject(struct mm_verdict *v)
{
	char *text = NULL;

	if (asprintf(&text, "Held (local submission): %s", v->text ? v->text : "refused") < 0)
		text = NULL;
	free(v->text);
	v->text = text;
	v->action = MM_HOLD;
	snprintf(v->code, sizeof(v->code), "250");
	snprintf(v->status, sizeof(v->status), "2.0.0");
}

/* The answer to end-of-message once the decision V is recorded; SPAM:
   spamd's headers, or NULL. */
static sfsistat
answer_eom(SMFICTX *ctx, struct conn *c, const struct mm_verdict *v,
	   const struct mm_spam_headers *spam)
{
	if (v->action >= MM_TEMPFAIL)
		return refuse(ctx, v);
	stamp_message(ctx, c);
	if (spam)
		add_spam_headers(ctx, c, spam);
	if (v->action == MM_HOLD)
		smfi_quarantine(ctx, (char *)(v->text ? v->text : "held by mailmeta-milter"));
	return SMFIS_CONTINUE;
}

static void
copy_check_settings(struct mm_check_settings *cs)
{
	pthread_rwlock_rdlock(&config_lock);
	cs->timeout_ms = config->policy_timeout_ms;
	cs->tempfail_on_failure = config->policy_tempfail;
	pthread_rwlock_unlock(&config_lock);
}

static double
elapsed_ms(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) * 1e3 +
	       (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

/*
 * The log line's "delays=a/b/c" are, like Postfix's own delays=, the time
 * spent in each stage: the end-of-message checks (size, rate limits,
 * virus and spam engines), building the document (the end of MIME
 * parsing, hashing, JSON) and storing it (waiting for the commit or the
 * journal).
 */
static sfsistat
on_eom(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);
	const char *queue_id = macro(ctx, "i");
	const char *how = NULL;
	char *doc;
	sfsistat verdict = SMFIS_CONTINUE;
	struct mm_verdict v;
	struct mm_check_settings cs;
	struct mm_spam_headers *spam;
	bool scored = false;
	struct timespec t0, tc, t1, t2;

	if (c->msg == NULL)
		return SMFIS_TEMPFAIL;
	if (queue_id == NULL)
		queue_id = "NOQUEUE";
	if (!begin_storing()) {
		smfi_setreply(ctx, "451", "4.3.2",
			      "Mail filter restarting, try again later");
		drop_message(c);
		return SMFIS_TEMPFAIL;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	copy_check_settings(&cs);
	mm_verdict_init(&v, "eom");
	if (c->refused_rcpts)
		json_object_set(v.policy, "refused_recipients", c->refused_rcpts);
	mm_check_eom(active_policy(), c->msg, &c->session, &cs, &v);
	if ((spam = calloc(1, sizeof(*spam))) != NULL)
		scored = mm_scans_eom(c->scans, c->msg, &c->session, active_policy(),
				      &v, spam);
	else if (c->scans)
		mm_verdict_refuse(&v, MM_TEMPFAIL, "451", "4.3.0", NULL,
				  "Out of memory, try again later");
	if (c->session.local_submission && v.action == MM_REJECT)
		hold_instead_of_reject(&v);
	clock_gettime(CLOCK_MONOTONIC, &tc);
	doc = mm_message_document(c->msg, &c->session, queue_id, &v);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (doc && store_document(queue_id, doc, &how)) {
		clock_gettime(CLOCK_MONOTONIC, &t2);
		verdict = answer_eom(ctx, c, &v, scored ? spam : NULL);
		mm_info("%s: mailmeta_id=%s, %s%s%s, metadata %s, delays=%.2f/%.2f/%.2f ms",
			queue_id, mm_message_id(c->msg), mm_action_name(v.action),
			v.text ? ": " : "", v.text ? v.text : "", how,
			elapsed_ms(&t0, &tc), elapsed_ms(&tc, &t1), elapsed_ms(&t1, &t2));
	} else if (v.action >= MM_TEMPFAIL) {
		mm_warn("%s: the %s of mailmeta_id=%s could not be recorded",
			queue_id, mm_action_name(v.action), mm_message_id(c->msg));
		verdict = refuse(ctx, &v);
	} else {
		mm_warn("%s: metadata could not be stored; asking the client to retry",
			queue_id);
		smfi_setreply(ctx, "451", "4.3.0",
			      "Temporary failure recording the message, try again later");
		verdict = SMFIS_TEMPFAIL;
	}
	free(doc);
	free(spam);
	mm_verdict_clear(&v);
	drop_message(c);
	end_storing();
	return verdict;
}

static sfsistat
on_abort(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c)
		end_transaction(ctx, c, true);
	return SMFIS_CONTINUE;
}

static sfsistat
on_close(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c == NULL)
		return SMFIS_CONTINUE;
	end_transaction(ctx, c, true);
	free(c->session.client_ip);
	free(c->session.client_name);
	free(c->session.helo);
	free(c);
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static struct smfiDesc milter_desc = {
	.xxfi_name = "mailmeta-milter",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE,
	.xxfi_connect = on_connect,
	.xxfi_helo = on_helo,
	.xxfi_envfrom = on_envfrom,
	.xxfi_envrcpt = on_envrcpt,
	.xxfi_header = on_header,
	.xxfi_eoh = on_eoh,
	.xxfi_body = on_body,
	.xxfi_eom = on_eom,
	.xxfi_abort = on_abort,
	.xxfi_close = on_close,
	.xxfi_negotiate = on_negotiate,
};

int
mm_milter_register(struct mm_writer *w, struct mm_journal *j, struct mm_policy *p)
{
	writer = w;
	journal = j;
	policy = p;
	return smfi_register(milter_desc) == MI_SUCCESS ? 0 : -1;
}
