/*
 * mm-policy.c - policy rules from PostgreSQL: a refreshed snapshot for the
 * cheap questions, one bounded round trip per message for rate limits.
 *
 * The snapshot thread keeps the last snapshot that loaded: when the
 * database is down or answers garbage, the milter goes on with the last
 * good rules (and says so in the log once per outage).  Every query runs
 * with a deadline (libpq's asynchronous API and poll), so neither a slow
 * database nor a stop request can hang a milter thread.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mm-log.h"
#include "mm-policy.h"

#define SNAPSHOT_SQL "SELECT mail.policy_snapshot()::text"
#define CHECK_SQL "SELECT mail.policy_check($1::jsonb)::text"
#define EXPIRE_SQL "SELECT mail.expire_rate_counters()"
#define SNAPSHOT_TIMEOUT_MS 10000
#define EXPIRE_EVERY_S 60
#define DEFAULT_SPAM_MARK 5.0
#define DEFAULT_SPAM_REJECT 15.0

struct pooled {
	PGconn *conn;
	unsigned generation;
	bool busy;
	time_t retry_at;
};

struct mm_policy {
	pthread_mutex_t lock;		/* everything below */
	pthread_cond_t wake;		/* stop, or a new conninfo */
	pthread_cond_t conn_free;
	char *conninfo;
	unsigned generation;
	unsigned refresh_s;
	json_t *snapshot;		/* NULL until one loaded */
	bool stopping;
	bool snapshot_failing;
	struct pooled *pool;
	unsigned pool_size;
	pthread_t thread;
};

static long long
monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *
first_line(const char *text, char *buf, size_t size)
{
	snprintf(buf, size, "%.*s", (int)strcspn(text, "\n"), text);
	return buf;
}

/*
 * Runs SQL (with at most one text parameter) and returns its single text
 * value, or NULL with *ERROR set.  On a timeout the query is cancelled and
 * the connection closed, as its state is then unknown.
 */
static char *
query_value(PGconn **connp, const char *sql, const char *param,
	    long long deadline_ms, char *error, size_t error_size)
{
	PGconn *conn = *connp;
	PGresult *res, *last = NULL;
	char *value = NULL;

	if (!PQsendQueryParams(conn, sql, param ? 1 : 0, NULL,
			       param ? &param : NULL, NULL, NULL, 0)) {
		first_line(PQerrorMessage(conn), error, error_size);
		return NULL;
	}
	for (;;) {
		while (PQisBusy(conn)) {
			struct pollfd pfd = { .fd = PQsocket(conn), .events = POLLIN };
			long long left = deadline_ms - monotonic_ms();
			int n;

			if (left <= 0) {
				PGcancel *cancel = PQgetCancel(conn);
				char buf[128];

				if (cancel) {
					PQcancel(cancel, buf, sizeof(buf));
					PQfreeCancel(cancel);
				}
				PQfinish(conn);
				*connp = NULL;
				PQclear(last);
				snprintf(error, error_size, "no answer in time");
				return NULL;
			}
			n = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
			if ((n < 0 && errno != EINTR) ||
			    (n > 0 && !PQconsumeInput(conn))) {
				first_line(PQerrorMessage(conn), error, error_size);
				PQclear(last);
				return NULL;
			}
		}
		if ((res = PQgetResult(conn)) == NULL)
			break;
		PQclear(last);
		last = res;
	}
	if (last && PQresultStatus(last) == PGRES_TUPLES_OK &&
	    PQntuples(last) == 1 && !PQgetisnull(last, 0, 0))
		value = strdup(PQgetvalue(last, 0, 0));
	else if (last && PQresultStatus(last) == PGRES_TUPLES_OK)
		value = strdup("");
	else
		first_line(last ? PQresultErrorMessage(last) : PQerrorMessage(conn),
			   error, error_size);
	PQclear(last);
	return value;
}

/* Opens *CONNP when it is closed; false (error set) when that fails. */
static bool
ensure_connected(PGconn **connp, const char *conninfo, char *error,
		 size_t error_size)
{
	if (*connp && PQstatus(*connp) == CONNECTION_OK)
		return true;
	PQfinish(*connp);
	*connp = PQconnectdb(conninfo);
	if (PQstatus(*connp) == CONNECTION_OK)
		return true;
	first_line(PQerrorMessage(*connp), error, error_size);
	PQfinish(*connp);
	*connp = NULL;
	return false;
}

/* ------------------------------------------------------------ snapshot */

static void
snapshot_failed(struct mm_policy *p, const char *why)
{
	pthread_mutex_lock(&p->lock);
	if (!p->snapshot_failing)
		mm_warn("policy: cannot load the rules (%s); %s", why,
			p->snapshot ? "keeping the last good set" :
				      "no limits apply until they load");
	p->snapshot_failing = true;
	pthread_mutex_unlock(&p->lock);
}

static void
snapshot_loaded(struct mm_policy *p, json_t *snapshot)
{
	json_t *old;

	pthread_mutex_lock(&p->lock);
	old = p->snapshot;
	p->snapshot = snapshot;
	if (p->snapshot_failing)
		mm_info("policy: rules loaded again");
	p->snapshot_failing = false;
	pthread_mutex_unlock(&p->lock);
	json_decref(old);
}

static void
load_snapshot(struct mm_policy *p, PGconn **connp, const char *conninfo)
{
	char error[256];
	char *text;
	json_t *snapshot;
	json_error_t jerr;

	if (!ensure_connected(connp, conninfo, error, sizeof(error))) {
		snapshot_failed(p, error);
		return;
	}
	text = query_value(connp, SNAPSHOT_SQL, NULL,
			   monotonic_ms() + SNAPSHOT_TIMEOUT_MS, error, sizeof(error));
	if (text == NULL) {
		snapshot_failed(p, error);
		return;
	}
	snapshot = json_loads(text, 0, &jerr);
	free(text);
	if (!json_is_object(snapshot)) {
		json_decref(snapshot);
		snapshot_failed(p, "mail.policy_snapshot() answered no JSON object");
		return;
	}
	snapshot_loaded(p, snapshot);
}

static void
expire_counters(PGconn **connp)
{
	char error[256];
	char *v;

	if (*connp == NULL)
		return;
	v = query_value(connp, EXPIRE_SQL, NULL,
			monotonic_ms() + SNAPSHOT_TIMEOUT_MS, error, sizeof(error));
	if (v == NULL)
		mm_warn("policy: expiring rate counters failed: %s", error);
	free(v);
}

static void *
snapshot_thread(void *arg)
{
	struct mm_policy *p = arg;
	PGconn *conn = NULL;
	unsigned generation = 0;
	long long last_expire = 0;

	pthread_mutex_lock(&p->lock);
	while (!p->stopping) {
		char *conninfo = strdup(p->conninfo);
		struct timespec until;

		if (p->generation != generation) {
			PQfinish(conn);
			conn = NULL;
			generation = p->generation;
		}
		pthread_mutex_unlock(&p->lock);
		load_snapshot(p, &conn, conninfo);
		if (monotonic_ms() - last_expire >= EXPIRE_EVERY_S * 1000LL) {
			expire_counters(&conn);
			last_expire = monotonic_ms();
		}
		free(conninfo);
		pthread_mutex_lock(&p->lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += p->refresh_s;
		while (!p->stopping && p->generation == generation &&
		       pthread_cond_timedwait(&p->wake, &p->lock, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&p->lock);
	PQfinish(conn);
	return NULL;
}

struct mm_policy *
mm_policy_start(const char *conninfo, unsigned refresh_s, unsigned pool_size)
{
	struct mm_policy *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	pthread_cond_init(&p->conn_free, NULL);
	p->conninfo = strdup(conninfo);
	p->refresh_s = refresh_s ? refresh_s : 1;
	p->pool_size = pool_size ? pool_size : 1;
	p->pool = calloc(p->pool_size, sizeof(*p->pool));
	if (p->conninfo == NULL || p->pool == NULL ||
	    pthread_create(&p->thread, NULL, snapshot_thread, p) != 0) {
		free(p->conninfo);
		free(p->pool);
		free(p);
		return NULL;
	}
	return p;
}

void
mm_policy_set_conninfo(struct mm_policy *p, const char *conninfo,
		       unsigned refresh_s)
{
	char *copy = strdup(conninfo);

	if (copy == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	free(p->conninfo);
	p->conninfo = copy;
	p->refresh_s = refresh_s ? refresh_s : 1;
	p->generation++;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->lock);
}

void
mm_policy_stop(struct mm_policy **pp)
{
	struct mm_policy *p = *pp;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->wake);
	pthread_cond_broadcast(&p->conn_free);
	while (true) {		/* checks in flight end within their deadline */
		bool busy = false;

		for (unsigned i = 0; i < p->pool_size; i++)
			busy |= p->pool[i].busy;
		if (!busy)
			break;
		pthread_cond_wait(&p->conn_free, &p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	for (unsigned i = 0; i < p->pool_size; i++)
		PQfinish(p->pool[i].conn);
	json_decref(p->snapshot);
	free(p->pool);
	free(p->conninfo);
	pthread_cond_destroy(&p->conn_free);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->lock);
	free(p);
	*pp = NULL;
}

/* ------------------------------------------------------------ lookups */

/* A new reference to the current snapshot, or NULL. */
static json_t *
snapshot_ref(struct mm_policy *p)
{
	json_t *s;

	pthread_mutex_lock(&p->lock);
	s = json_incref(p->snapshot);
	pthread_mutex_unlock(&p->lock);
	return s;
}

bool
mm_policy_ready(struct mm_policy *p)
{
	json_t *s = snapshot_ref(p);
	bool ready = s != NULL;

	json_decref(s);
	return ready;
}

static long long
positive(json_t *v)
{
	return json_is_integer(v) && json_integer_value(v) > 0 ?
	       (long long)json_integer_value(v) : 0;
}

/* Fills the fields of OUT still unset (0) from the limits object LIMITS:
   a limit not set at one level (null) falls back to the next. */
static void
fill_limits(json_t *limits, struct mm_limits *out)
{
	if (out->max_message_bytes == 0)
		out->max_message_bytes = positive(json_object_get(limits, "max_message_bytes"));
	if (out->max_recipients == 0)
		out->max_recipients = positive(json_object_get(limits, "max_recipients"));
}

/* Lowercased copy of ADDRESS without angle brackets (caller frees). */
static char *
normalised_address(const char *address)
{
	size_t len = strlen(address);
	char *copy;

	if (len >= 2 && address[0] == '<' && address[len - 1] == '>')
		copy = strndup(address + 1, len - 2);
	else
		copy = strdup(address);
	for (char *c = copy; c && *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c - 'A' + 'a');
	return copy;
}

void
mm_policy_limits(struct mm_policy *p, const char *address, struct mm_limits *out)
{
	json_t *s = snapshot_ref(p), *limits;
	char *addr = address ? normalised_address(address) : NULL;
	const char *at = addr ? strrchr(addr, '@') : NULL;

	*out = (struct mm_limits) { 0, 0 };
	limits = json_object_get(s, "limits");
	if (addr)
		fill_limits(json_object_get(json_object_get(limits, "users"), addr), out);
	if (at)
		fill_limits(json_object_get(json_object_get(limits, "domains"), at + 1), out);
	fill_limits(json_object_get(limits, "global"), out);
	free(addr);
	json_decref(s);
}

/* Takes the thresholds T sets (a null one is not set at that level). */
static void
fill_thresholds(json_t *t, struct mm_spam_thresholds *out, bool *mark_set,
		bool *reject_set)
{
	json_t *v;

	if (!*mark_set && json_is_number(v = json_object_get(t, "mark"))) {
		out->mark = json_number_value(v);
		*mark_set = true;
	}
	if (!*reject_set && json_is_number(v = json_object_get(t, "reject"))) {
		out->reject = json_number_value(v);
		*reject_set = true;
	}
}

void
mm_policy_spam_thresholds(struct mm_policy *p, const char *domain,
			  struct mm_spam_thresholds *out)
{
	json_t *s = snapshot_ref(p), *spam;
	char *dom = domain ? normalised_address(domain) : NULL;
	bool mark_set = false, reject_set = false;

	*out = (struct mm_spam_thresholds) { DEFAULT_SPAM_MARK, DEFAULT_SPAM_REJECT };
	spam = json_object_get(s, "spam");
	if (dom)
		fill_thresholds(json_object_get(json_object_get(spam, "domains"), dom),
				out, &mark_set, &reject_set);
	fill_thresholds(json_object_get(spam, "global"), out, &mark_set, &reject_set);
	free(dom);
	json_decref(s);
}

bool
mm_policy_suspended(struct mm_policy *p, const char *sasl_user, char **reason)
{
	json_t *s, *why;
	char *user;

	*reason = NULL;
	if (sasl_user == NULL || *sasl_user == '\0')
		return false;
	s = snapshot_ref(p);
	user = normalised_address(sasl_user);
	why = json_object_get(json_object_get(s, "suspended"), user ? user : "");
	if (why)
		*reason = strdup(json_is_string(why) ? json_string_value(why) : "suspended");
	free(user);
	json_decref(s);
	return why != NULL;
}

/* Whether the rules of KEY may count VALUE (a string, or an array of
   them): a rule without a match counts every value; for addresses and
   domains the values rules name are compared, for client addresses and
   networks any rule of the key may apply (no network arithmetic here). */
static bool
key_may_count(json_t *limits, const char *key, json_t *value)
{
	json_t *k = json_object_get(limits, key), *values, *v;
	size_t i, j;

	if (!json_is_object(k) || json_is_null(value))
		return false;
	if (json_is_true(json_object_get(k, "any")))
		return true;
	values = json_object_get(k, "values");
	if (json_array_size(values) == 0)
		return false;
	if (strcmp(key, "client_ip") == 0 || strcmp(key, "client_net") == 0)
		return true;
	if (json_is_string(value))
		value = json_pack("[O]", value);
	else
		json_incref(value);
	json_array_foreach(value, i, v) {
		char *norm = json_is_string(v) ? normalised_address(json_string_value(v)) : NULL;

		json_t *named;

		json_array_foreach(values, j, named)
			if (norm && json_is_string(named) &&
			    strcmp(json_string_value(named), norm) == 0)
				break;
		free(norm);
		if (j < json_array_size(values)) {
			json_decref(value);
			return true;
		}
	}
	json_decref(value);
	return false;
}

static json_t *
domains_of(json_t *addresses)
{
	json_t *domains = json_array(), *a;
	size_t i;

	json_array_foreach(addresses, i, a) {
		const char *at = json_is_string(a) ? strrchr(json_string_value(a), '@') : NULL;

		if (at)
			json_array_append_new(domains, json_string(at + 1));
	}
	return domains;
}

bool
mm_policy_may_limit(struct mm_policy *p, json_t *request)
{
	json_t *s = snapshot_ref(p), *limits = json_object_get(s, "rate_limits");
	json_t *sender = json_object_get(request, "sender");
	json_t *rcpt_domains = domains_of(json_object_get(request, "recipients"));
	json_t *sender_domain = json_null();
	const char *at = json_is_string(sender) ? strrchr(json_string_value(sender), '@') : NULL;
	bool may;

	if (at)
		sender_domain = json_string(at + 1);
	/* without a snapshot nothing is known: ask */
	may = s == NULL || !json_is_object(limits) ||
	      key_may_count(limits, "sasl_user", json_object_get(request, "sasl_user")) ||
	      key_may_count(limits, "sender", sender) ||
	      key_may_count(limits, "sender_domain", sender_domain) ||
	      key_may_count(limits, "client_ip", json_object_get(request, "client_ip")) ||
	      key_may_count(limits, "client_net", json_object_get(request, "client_ip")) ||
	      key_may_count(limits, "recipient_domain", rcpt_domains);
	json_decref(sender_domain);
	json_decref(rcpt_domains);
	json_decref(s);
	return may;
}

/* ------------------------------------------------------------ checks */

/* A pool slot for this thread, or -1 when none frees up before DEADLINE. */
static int
borrow(struct mm_policy *p, long long deadline_ms)
{
	int slot = -1;

	pthread_mutex_lock(&p->lock);
	while (!p->stopping) {
		for (unsigned i = 0; i < p->pool_size && slot < 0; i++)
			if (!p->pool[i].busy)
				slot = (int)i;
		if (slot >= 0) {
			p->pool[slot].busy = true;
			break;
		}
		long long left = deadline_ms - monotonic_ms();
		struct timespec until;

		if (left <= 0)
			break;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += left / 1000;
		until.tv_nsec += (left % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->conn_free, &p->lock, &until);
	}
	pthread_mutex_unlock(&p->lock);
	return slot;
}

static void
give_back(struct mm_policy *p, int slot)
{
	pthread_mutex_lock(&p->lock);
	p->pool[slot].busy = false;
	pthread_cond_broadcast(&p->conn_free);
	pthread_mutex_unlock(&p->lock);
}

enum mm_policy_result
mm_policy_check(struct mm_policy *p, json_t *request, unsigned timeout_ms,
		json_t **answer)
{
	long long deadline = monotonic_ms() + timeout_ms;
	struct pooled *slot;
	char error[256] = "";
	char *conninfo, *param, *text = NULL;
	unsigned generation;
	int i;

	*answer = NULL;
	if ((i = borrow(p, deadline)) < 0) {
		mm_warn("policy: no database connection free in time");
		return MM_POLICY_UNAVAILABLE;
	}
	slot = &p->pool[i];
	pthread_mutex_lock(&p->lock);
	conninfo = strdup(p->conninfo);
	generation = p->generation;
	pthread_mutex_unlock(&p->lock);
	if (slot->conn && slot->generation != generation) {
		PQfinish(slot->conn);
		slot->conn = NULL;
	}
	slot->generation = generation;
	param = json_dumps(request, JSON_COMPACT);
	/* after a failed connect, wait a second before the next attempt, so
	   that an outage costs each message nothing but the fallback */
	if (slot->conn == NULL && time(NULL) < slot->retry_at)
		snprintf(error, sizeof(error), "database unreachable");
	else if (conninfo && param &&
		 ensure_connected(&slot->conn, conninfo, error, sizeof(error)))
		text = query_value(&slot->conn, CHECK_SQL, param, deadline,
				   error, sizeof(error));
	else if (slot->conn == NULL)
		slot->retry_at = time(NULL) + 1;
	free(param);
	free(conninfo);
	if (text) {
		*answer = json_loads(text, 0, NULL);
		free(text);
		if (!json_is_object(*answer)) {
			json_decref(*answer);
			*answer = NULL;
			snprintf(error, sizeof(error), "mail.policy_check() answered no JSON object");
		}
	}
	if (*answer == NULL && slot->conn && PQstatus(slot->conn) != CONNECTION_OK) {
		PQfinish(slot->conn);
		slot->conn = NULL;
	}
	give_back(p, i);
	if (*answer == NULL) {
		mm_warn("policy: rate limits not checked: %s", error);
		return MM_POLICY_UNAVAILABLE;
	}
	return MM_POLICY_ANSWERED;
}
