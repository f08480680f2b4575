/*
 * mm-writer.c - batched, pooled PostgreSQL writes of metadata documents.
 *
 * One mutex guards the queue and every job's state.  A job lives on the
 * heap: when its submitter gives up while a writer holds it, the writer
 * frees it after the round trip.  A writer whose connection failed waits a
 * second before reconnecting and fails jobs at once meanwhile, so that a
 * database outage costs each message the journal's fsync, not a connect
 * timeout.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mm-log.h"
#include "mm-writer.h"

enum job_state { JOB_QUEUED, JOB_IN_FLIGHT, JOB_DONE };

struct job {
	struct job *next;
	char *doc;		/* owned: a submitter may give up mid-flight */
	enum job_state state;
	enum mm_write_result result;
	bool abandoned;
	pthread_cond_t done;	/* its own: a finished batch wakes only its waiters */
};

struct mm_writer {
	pthread_mutex_t lock;
	pthread_cond_t work;		/* a job was queued, or stopping */
	struct job *head, *tail;
	char *conninfo;
	unsigned conninfo_generation;
	unsigned batch_size;
	unsigned pool_size;
	bool stopping;
	pthread_t *threads;
};

struct worker {
	struct mm_writer *w;
	PGconn *conn;
	unsigned generation;
	time_t retry_at;
};

/* libpq messages span lines; a log line must not.  Copies TEXT into BUF. */
static const char *
one_line(const char *text, char *buf, size_t size)
{
	char *p;

	snprintf(buf, size, "%s", text);
	for (p = buf; *p; p++)
		if (*p == '\n' || *p == '\t')
			*p = ' ';
	while (p > buf && p[-1] == ' ')
		*--p = '\0';
	return buf;
}

static void
job_free(struct job *j)
{
	pthread_cond_destroy(&j->done);
	free(j->doc);
	free(j);
}

/* in one statement: a record built from a mailbox before ours arrived
   completed with our envelope (mail.adopt_milter_records), the decisions
   (mail.record_verdicts) and the records */
#define RECORD_SQL "SELECT mail.record_messages(mail.record_verdicts(" \
	"mail.adopt_milter_records($1::jsonb)))"

static void
deadline_after(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* libpq's notices (e.g. the server's FATAL on shutdown) go to the log. */
static void
log_notice(void *arg, const char *message)
{
	(void)arg;
	mm_warn("database: %.*s", (int)strcspn(message, "\n"), message);
}

/* Connects when needed; false while the database is unreachable. */
static bool
worker_connect(struct worker *wk)
{
	struct mm_writer *w = wk->w;
	char *conninfo;
	unsigned generation;

	pthread_mutex_lock(&w->lock);
	conninfo = strdup(w->conninfo);
	generation = w->conninfo_generation;
	pthread_mutex_unlock(&w->lock);

	if (wk->conn && (PQstatus(wk->conn) != CONNECTION_OK ||
			 wk->generation != generation)) {
		PQfinish(wk->conn);
		wk->conn = NULL;
	}
	if (wk->conn == NULL && time(NULL) >= wk->retry_at) {
		wk->conn = PQconnectdb(conninfo);
		wk->generation = generation;
		if (PQstatus(wk->conn) != CONNECTION_OK) {
			char msg[512];

			mm_warn("database connection failed: %s",
				one_line(PQerrorMessage(wk->conn), msg, sizeof(msg)));
			PQfinish(wk->conn);
			wk->conn = NULL;
			wk->retry_at = time(NULL) + 1;
		} else {
			PQsetNoticeProcessor(wk->conn, log_notice, NULL);
		}
	}
	free(conninfo);
	return wk->conn != NULL;
}

/* "[doc1,doc2,...]" */
static char *
batch_json(struct job **jobs, unsigned n)
{
	size_t len = 3;
	char *buf, *p;

	for (unsigned i = 0; i < n; i++)
		len += strlen(jobs[i]->doc) + 1;
	p = buf = malloc(len);
	*p++ = '[';
	for (unsigned i = 0; i < n; i++) {
		size_t l = strlen(jobs[i]->doc);

		if (i > 0)
			*p++ = ',';
		memcpy(p, jobs[i]->doc, l);
		p += l;
	}
	*p++ = ']';
	*p = '\0';
	return buf;
}

/* A data error (class 22 or 23) means the documents, not the database. */
static bool
is_data_error(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0);
}

static enum mm_write_result
record_batch(struct worker *wk, struct job **jobs, unsigned n)
{
	char *json = batch_json(jobs, n);
	const char *params[1] = { json };
	PGresult *res;
	enum mm_write_result result = MM_WRITE_COMMITTED;

	res = PQexecParams(wk->conn, RECORD_SQL, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		result = is_data_error(res) ? MM_WRITE_REJECTED : MM_WRITE_UNAVAILABLE;
		char msg[512];

		mm_warn("recording %u message(s) failed: %s", n,
			one_line(PQresultErrorMessage(res), msg, sizeof(msg)));
	}
	PQclear(res);
	free(json);
	return result;
}

/* Records JOBS; on a data error each alone, so one bad document does not
 * send a whole batch to the journal. */
static void
write_jobs(struct worker *wk, struct job **jobs, unsigned n)
{
	enum mm_write_result r = MM_WRITE_UNAVAILABLE;

	if (worker_connect(wk))
		r = record_batch(wk, jobs, n);
	/* A connection the server closed (restart, idle timeout) is reopened
	 * and the batch tried once more before anything is journaled. */
	if (r == MM_WRITE_UNAVAILABLE && wk->conn &&
	    PQstatus(wk->conn) == CONNECTION_BAD) {
		PQfinish(wk->conn);
		wk->conn = NULL;
		if (worker_connect(wk))
			r = record_batch(wk, jobs, n);
	}
	if (r == MM_WRITE_REJECTED && n > 1) {
		for (unsigned i = 0; i < n; i++)
			jobs[i]->result = record_batch(wk, &jobs[i], 1);
		return;
	}
	for (unsigned i = 0; i < n; i++)
		jobs[i]->result = r;
}

static unsigned
take_batch(struct mm_writer *w, struct job **jobs)
{
	unsigned n = 0;

	while (w->head && n < w->batch_size) {
		struct job *j = w->head;

		w->head = j->next;
		if (w->head == NULL)
			w->tail = NULL;
		j->state = JOB_IN_FLIGHT;
		jobs[n++] = j;
	}
	return n;
}

static void *
worker_main(void *arg)
{
	struct worker wk = { .w = arg };
	struct mm_writer *w = wk.w;
	struct job **jobs = calloc(w->batch_size, sizeof(*jobs));

	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (w->head == NULL && !w->stopping)
			pthread_cond_wait(&w->work, &w->lock);
		if (w->head == NULL)
			break;
		unsigned n = take_batch(w, jobs);

		pthread_mutex_unlock(&w->lock);
		write_jobs(&wk, jobs, n);
		pthread_mutex_lock(&w->lock);
		for (unsigned i = 0; i < n; i++) {
			jobs[i]->state = JOB_DONE;
			if (jobs[i]->abandoned)
				job_free(jobs[i]);
			else
				pthread_cond_signal(&jobs[i]->done);
		}
	}
	pthread_mutex_unlock(&w->lock);
	if (wk.conn)
		PQfinish(wk.conn);
	free(jobs);
	return NULL;
}

struct mm_writer *
mm_writer_start(const char *conninfo, unsigned pool_size, unsigned batch_size)
{
	struct mm_writer *w = calloc(1, sizeof(*w));

	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->work, NULL);
	w->conninfo = strdup(conninfo);
	w->batch_size = batch_size;
	w->pool_size = pool_size;
	w->threads = calloc(pool_size, sizeof(*w->threads));
	for (unsigned i = 0; i < pool_size; i++) {
		int err = pthread_create(&w->threads[i], NULL, worker_main, w);

		if (err != 0)
			mm_fatal("cannot start database writer thread: %s", strerror(err));
	}
	return w;
}

static void
unlink_job(struct mm_writer *w, struct job *j)
{
	struct job **pp = &w->head, *prev = NULL;

	while (*pp && *pp != j) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp == NULL)
		return;
	*pp = j->next;
	if (w->tail == j)
		w->tail = prev;
}

enum mm_write_result
mm_writer_record(struct mm_writer *w, const char *doc, unsigned timeout_ms)
{
	struct job *j = calloc(1, sizeof(*j));
	struct timespec deadline;
	enum mm_write_result result;

	j->doc = strdup(doc);
	pthread_cond_init(&j->done, NULL);
	deadline_after(&deadline, timeout_ms);
	pthread_mutex_lock(&w->lock);
	if (w->tail)
		w->tail->next = j;
	else
		w->head = j;
	w->tail = j;
	pthread_cond_signal(&w->work);
	while (j->state != JOB_DONE) {
		if (pthread_cond_timedwait(&j->done, &w->lock, &deadline) == ETIMEDOUT &&
		    j->state != JOB_DONE)
			break;
	}
	result = j->state == JOB_DONE ? j->result : MM_WRITE_UNAVAILABLE;
	if (j->state == JOB_QUEUED) {
		unlink_job(w, j);
		job_free(j);
	} else if (j->state == JOB_IN_FLIGHT) {
		j->abandoned = true;	/* the writer frees it after the round trip */
	} else {
		job_free(j);
	}
	pthread_mutex_unlock(&w->lock);
	return result;
}

void
mm_writer_set_conninfo(struct mm_writer *w, const char *conninfo)
{
	pthread_mutex_lock(&w->lock);
	free(w->conninfo);
	w->conninfo = strdup(conninfo);
	w->conninfo_generation++;
	pthread_mutex_unlock(&w->lock);
}

void
mm_writer_stop(struct mm_writer **wp)
{
	struct mm_writer *w = *wp;

	if (w == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->work);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->pool_size; i++)
		pthread_join(w->threads[i], NULL);
	free(w->threads);
	free(w->conninfo);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->work);
	free(w);
	*wp = NULL;
}
