/*
 * mm-writer.h - the database writer: a bounded pool of PostgreSQL
 * connections that records metadata documents in batches.
 *
 * Milter threads hand over a document and wait, at most a given time, for
 * its commit; writer threads collect whatever documents are waiting (up to
 * a batch) and record them with one mail.record_messages() round trip.  So
 * the number of database connections is fixed by the pool size, not by the
 * number of SMTP sessions, and a busy server writes bigger batches instead
 * of more transactions.
 */
#ifndef MM_WRITER_H
#define MM_WRITER_H

enum mm_write_result {
	MM_WRITE_COMMITTED = 0,
	MM_WRITE_UNAVAILABLE = -1,	/* database down, slow or failing: retry later */
	MM_WRITE_REJECTED = -2,		/* the database refused the document itself */
};

struct mm_writer;

struct mm_writer *mm_writer_start(const char *conninfo, unsigned pool_size,
				  unsigned batch_size);
/* Records DOC (a JSON object) or gives up after TIMEOUT_MS. */
enum mm_write_result mm_writer_record(struct mm_writer *w, const char *doc,
				      unsigned timeout_ms);
/* Replaces the connection string; connections reopen with it. */
void mm_writer_set_conninfo(struct mm_writer *w, const char *conninfo);
/* Finishes queued work (bounded by the callers' own timeouts), stops. */
void mm_writer_stop(struct mm_writer **w);

#endif
