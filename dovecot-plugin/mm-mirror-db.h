/*
 * mm-mirror-db.h - the doveadm plugin's PostgreSQL connection
 *
 * One blocking libpq connection (role mailmeta_mirror) for the mirror
 * functions of doc/mailbox-mirror.md.  Blocking is fine here: this code runs
 * only in doveadm, never in an imap, pop3 or lmtp process.  Every query is
 * parameterised.  A lost connection is reopened at the next begin().
 */
#ifndef MM_MIRROR_DB_H
#define MM_MIRROR_DB_H

#include <libpq-fe.h>

struct mm_mirror_db;

/* Why the last call failed. */
enum mm_mirror_db_error {
	MM_MIRROR_DB_OK = 0,
	/* cannot reach PostgreSQL, or the connection broke: retry later */
	MM_MIRROR_DB_UNAVAILABLE,
	/* the user is unknown to mail.users (SQLSTATE P0002) */
	MM_MIRROR_DB_NO_USER,
	/* any other error (a bug, or a malformed argument: 22023) */
	MM_MIRROR_DB_FAILED,
};

/* dsn: a libpq connection string (mailmeta_dsn). */
struct mm_mirror_db *mm_mirror_db_new(const char *dsn);
void mm_mirror_db_free(struct mm_mirror_db **db);

/* Connects when needed, then BEGIN.  0 or -1. */
int mm_mirror_db_begin(struct mm_mirror_db *db);
int mm_mirror_db_commit(struct mm_mirror_db *db);
/* Rolls back the open transaction, if any; never fails. */
void mm_mirror_db_rollback(struct mm_mirror_db *db);

/* Runs one parameterised statement (text parameters; NULL is SQL NULL).
   Returns its result, which the caller PQclear()s, or NULL on error. */
PGresult *mm_mirror_db_query(struct mm_mirror_db *db, const char *sql,
			     int nparams, const char *const *params);

/* The last failure: its kind, and a one-line message (valid until the
   next call on db). */
enum mm_mirror_db_error mm_mirror_db_last_error(const struct mm_mirror_db *db);
const char *mm_mirror_db_last_message(const struct mm_mirror_db *db);

#endif
