/*
 * mm-mirror-db.c - the doveadm plugin's PostgreSQL connection (see
 * mm-mirror-db.h)
 *
 * The connection string comes from the administrator (mailmeta_dsn); we put
 * defaults in front of it so that an unreachable server costs at most
 * connect_timeout and a stuck statement at most statement_timeout, which
 * keeps `doveadm mailmeta watch` retrying instead of hanging.  Whatever the
 * DSN says itself wins over these defaults.
 */
#include "lib.h"
#include "str.h"

#include "mm-mirror-db.h"

#define MM_MIRROR_DB_CONNECT_TIMEOUT "10"
#define MM_MIRROR_DB_OPTIONS "-c statement_timeout=300000"

struct mm_mirror_db {
	char *dsn;
	PGconn *conn;
	bool in_transaction;
	enum mm_mirror_db_error last_error;
	char *last_message;
};

struct mm_mirror_db *
mm_mirror_db_new(const char *dsn)
{
	struct mm_mirror_db *db = i_new(struct mm_mirror_db, 1);

	db->dsn = i_strdup(dsn);
	return db;
}

void
mm_mirror_db_free(struct mm_mirror_db **_db)
{
	struct mm_mirror_db *db = *_db;

	if (db == NULL)
		return;
	*_db = NULL;
	if (db->conn != NULL)
		PQfinish(db->conn);
	i_free(db->dsn);
	i_free(db->last_message);
	i_free(db);
}

/* libpq's messages span lines; keep the first one. */
static void
set_error(struct mm_mirror_db *db, enum mm_mirror_db_error kind,
	  const char *message)
{
	size_t len = strcspn(message, "\n");

	while (len > 0 && (message[len - 1] == ' ' || message[len - 1] == '\r'))
		len--;
	i_free(db->last_message);
	db->last_message = i_strndup(message, len);
	db->last_error = kind;
}

static void
ignore_notice(void *context ATTR_UNUSED, const char *message ATTR_UNUSED)
{
}

static int
db_connect(struct mm_mirror_db *db)
{
	/* later entries override earlier ones: the DSN (expanded from
	   "dbname") comes last */
	const char *const keywords[] = {
		"connect_timeout", "application_name", "options",
		"keepalives_idle", "dbname", NULL
	};
	const char *const values[] = {
		MM_MIRROR_DB_CONNECT_TIMEOUT, "doveadm-mailmeta",
		MM_MIRROR_DB_OPTIONS, "60", db->dsn, NULL
	};

	if (db->conn != NULL && PQstatus(db->conn) == CONNECTION_OK)
		return 0;
	if (db->conn != NULL) {
		PQfinish(db->conn);
		db->conn = NULL;
	}
	db->conn = PQconnectdbParams(keywords, values, 1);
	if (db->conn == NULL) {
		set_error(db, MM_MIRROR_DB_UNAVAILABLE, "out of memory");
		return -1;
	}
	if (PQstatus(db->conn) != CONNECTION_OK) {
		set_error(db, MM_MIRROR_DB_UNAVAILABLE,
			  t_strconcat("connecting to PostgreSQL failed: ",
				      PQerrorMessage(db->conn), NULL));
		PQfinish(db->conn);
		db->conn = NULL;
		return -1;
	}
	PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
	return 0;
}

static void
set_result_error(struct mm_mirror_db *db, const PGresult *res)
{
	const char *state = res == NULL ? NULL :
		PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *message = res != NULL ? PQresultErrorMessage(res) :
		PQerrorMessage(db->conn);
	enum mm_mirror_db_error kind = MM_MIRROR_DB_FAILED;

	if (PQstatus(db->conn) != CONNECTION_OK ||
	    (state != NULL && (strncmp(state, "08", 2) == 0 ||
			       strncmp(state, "57", 2) == 0 ||
			       strcmp(state, "40001") == 0 ||
			       strcmp(state, "40P01") == 0 ||
			       strcmp(state, "53300") == 0)))
		kind = MM_MIRROR_DB_UNAVAILABLE;
	else if (state != NULL && strcmp(state, "P0002") == 0)
		kind = MM_MIRROR_DB_NO_USER;
	set_error(db, kind, state == NULL ? message :
		  t_strdup_printf("%s (SQLSTATE %s)", message, state));
}

PGresult *
mm_mirror_db_query(struct mm_mirror_db *db, const char *sql, int nparams,
		   const char *const *params)
{
	PGresult *res;
	ExecStatusType status;

	if (db->conn == NULL) {
		set_error(db, MM_MIRROR_DB_UNAVAILABLE, "not connected");
		return NULL;
	}
	res = PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	status = res == NULL ? PGRES_FATAL_ERROR : PQresultStatus(res);
	if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
		set_result_error(db, res);
		PQclear(res);
		return NULL;
	}
	db->last_error = MM_MIRROR_DB_OK;
	return res;
}

static int
simple_command(struct mm_mirror_db *db, const char *sql)
{
	PGresult *res = mm_mirror_db_query(db, sql, 0, NULL);

	if (res == NULL)
		return -1;
	PQclear(res);
	return 0;
}

int
mm_mirror_db_begin(struct mm_mirror_db *db)
{
	i_assert(!db->in_transaction);
	if (db_connect(db) < 0)
		return -1;
	if (simple_command(db, "BEGIN") < 0) {
		/* a connection that went stale while idle (the server
		   restarted) only shows now: reconnect once */
		if (PQstatus(db->conn) == CONNECTION_OK)
			return -1;
		if (db_connect(db) < 0 || simple_command(db, "BEGIN") < 0)
			return -1;
	}
	db->in_transaction = TRUE;
	return 0;
}

int
mm_mirror_db_commit(struct mm_mirror_db *db)
{
	i_assert(db->in_transaction);
	db->in_transaction = FALSE;
	return simple_command(db, "COMMIT");
}

void
mm_mirror_db_rollback(struct mm_mirror_db *db)
{
	enum mm_mirror_db_error kind = db->last_error;
	char *message = i_strdup(db->last_message);

	if (db->in_transaction) {
		db->in_transaction = FALSE;
		if (db->conn != NULL && PQstatus(db->conn) == CONNECTION_OK)
			(void)simple_command(db, "ROLLBACK");
	}
	/* keep the error that made the caller roll back */
	i_free(db->last_message);
	db->last_message = message;
	db->last_error = kind;
}

enum mm_mirror_db_error
mm_mirror_db_last_error(const struct mm_mirror_db *db)
{
	return db->last_error;
}

const char *
mm_mirror_db_last_message(const struct mm_mirror_db *db)
{
	return db->last_message == NULL ? "" : db->last_message;
}
