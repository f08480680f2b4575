/*
 * mm-milter.c - libmilter callbacks of mailmeta-milter.
 *
 * Thin on purpose: each callback copies what Postfix says into the
 * connection's mm_session / mm_message and returns.  The work happens at
 * end-of-message: the document is committed to PostgreSQL (or, when that
 * does not succeed in time, appended to the journal) before Postfix gets
 * its answer, and only then is the message stamped with X-Mailmeta-ID.
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

#include "mm-log.h"
#include "mm-message.h"
#include "mm-milter.h"

#define MAILMETA_ID_HEADER "X-Mailmeta-ID"

struct conn {
	unsigned long no_reply;		/* SMFIP_NR_* steps Postfix agreed to */
	struct mm_session session;
	struct mm_message *msg;
	unsigned forged_id_headers;	/* X-Mailmeta-ID headers that came in */
};

static struct mm_writer *writer;
static struct mm_journal *journal;
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

static void
drop_message(struct conn *c)
{
	mm_message_free(&c->msg);
	c->forged_id_headers = 0;
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
	*pf0 = f0 & (SMFIF_ADDHDRS | SMFIF_CHGHDRS);
	/* header values exactly as sent; no DATA or unknown-command events */
	*pf1 = f1 & (SMFIP_HDR_LEADSPC | SMFIP_NODATA | SMFIP_NOUNKNOWN |
		     MM_NO_REPLY_STEPS);
	*pf2 = *pf3 = 0;
	c->no_reply = *pf1 & MM_NO_REPLY_STEPS;
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
	char tmpdir[PATH_MAX];

	drop_message(c);
	copy_limits(&lim, tmpdir);
	if ((c->msg = mm_message_new(&lim)) == NULL)
		return SMFIS_TEMPFAIL;
	mm_message_set_sender(c->msg, argv[0], macro(ctx, "{auth_authen}"));
	mm_message_set_tls(c->msg, macro(ctx, "{tls_version}"), macro(ctx, "{cipher}"));
	mm_debug("MAIL FROM %s: daemon_name=%s daemon_addr=%s client_addr=%s"
		 " client_name=%s auth=%s j=%s _=%s", argv[0],
		 macro(ctx, "{daemon_name}"), macro(ctx, "{daemon_addr}"),
		 macro(ctx, "{client_addr}"), macro(ctx, "{client_name}"),
		 macro(ctx, "{auth_authen}"), macro(ctx, "j"), macro(ctx, "_"));
	c->session.local_submission = is_local_submission(c, argv[0]);
	return SMFIS_CONTINUE;
}

static sfsistat
on_envrcpt(SMFICTX *ctx, char **argv)
{
	struct conn *c = smfi_getpriv(ctx);
	const char *mailer = macro(ctx, "{rcpt_mailer}");
	bool local;

	if (c->msg == NULL)
		return SMFIS_TEMPFAIL;
	pthread_rwlock_rdlock(&config_lock);
	local = mm_config_is_local_transport(config, mailer);
	pthread_rwlock_unlock(&config_lock);
	mm_message_add_recipient(c->msg, argv[0], local);
	return SMFIS_CONTINUE;
}

static sfsistat
on_header(SMFICTX *ctx, char *name, char *value)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c->msg == NULL)	/* end-of-message answers for it */
		return step_done(c, SMFIP_NR_HDR);
	/* Ours alone: one that arrives with the message is removed at the end. */
	if (strcasecmp(name, MAILMETA_ID_HEADER) == 0)
		c->forged_id_headers++;
	else
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

static double
elapsed_ms(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) * 1e3 +
	       (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

/*
 * The log line's "delays=a/b" are, like Postfix's own delays=, the time
 * spent in each stage: building the document (the end of MIME parsing,
 * hashing, JSON) and storing it (waiting for the commit or the journal).
 */
static sfsistat
on_eom(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);
	const char *queue_id = macro(ctx, "i");
	const char *how = NULL;
	char *doc;
	sfsistat verdict = SMFIS_CONTINUE;

	struct timespec t0, t1, t2;

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
	doc = mm_message_document(c->msg, &c->session, queue_id, "accept", NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (doc && store_document(queue_id, doc, &how)) {
		clock_gettime(CLOCK_MONOTONIC, &t2);
		stamp_message(ctx, c);
		mm_info("%s: mailmeta_id=%s, metadata %s, delays=%.2f/%.2f ms",
			queue_id, mm_message_id(c->msg), how,
			elapsed_ms(&t0, &t1), elapsed_ms(&t1, &t2));
	} else {
		mm_warn("%s: metadata could not be stored; asking the client to retry",
			queue_id);
		smfi_setreply(ctx, "451", "4.3.0",
			      "Temporary failure recording the message, try again later");
		verdict = SMFIS_TEMPFAIL;
	}
	free(doc);
	drop_message(c);
	end_storing();
	return verdict;
}

static sfsistat
on_abort(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c)
		drop_message(c);
	return SMFIS_CONTINUE;
}

static sfsistat
on_close(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);

	if (c == NULL)
		return SMFIS_CONTINUE;
	drop_message(c);
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
	.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS,
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
mm_milter_register(struct mm_writer *w, struct mm_journal *j)
{
	writer = w;
	journal = j;
	return smfi_register(milter_desc) == MI_SUCCESS ? 0 : -1;
}
