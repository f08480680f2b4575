/*
 * mm-mirror-sync.c - mirror one user's mailboxes into PostgreSQL (see
 * mm-mirror-sync.h and doc/mailbox-mirror.md)
 *
 * Folders are identified by their mailbox GUID, messages by (folder, UID).
 * Each folder is read through one mailbox view: its status, the messages
 * searched and the expunges are all as of the same mailbox_sync(), so the
 * state recorded with mail.mirror_folder_done() is exactly what was sent.
 * Changes committed after that view are not lost: the change marked the
 * user dirty again after the watcher claimed the mark, so another sync
 * follows.  A message expunged while we read it leaves its folder's
 * recorded state untouched, so the next sync looks at the folder again.
 *
 * CONDSTORE is enabled on every folder so Dovecot keeps modseqs; with a
 * recorded HIGHESTMODSEQ only messages with a higher modseq are sent, plus
 * the UIDs Dovecot's expunge log knows were expunged since.  When that log
 * no longer reaches back (or UIDVALIDITY changed) the folder is sent in
 * full with "reset": true.  When mirror_folder_done() reports that the
 * mirror's count still differs, the folder is sent again in full.
 */
#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "strnum.h"
#include "guid.h"
#include "seq-range-array.h"
#include "mail-namespace.h"
#include "mail-storage.h"
#include "mail-search-build.h"
#include "mailbox-list-iter.h"
#include "settings-parser.h"
#include "mail-user.h"

#include <jansson.h>

#include "mm-extract.h"
#include "mm-mirror-db.h"
#include "mm-mirror-id.h"
#include "mm-mirror-json.h"
#include "mm-mirror-message.h"
#include "mm-mirror-sync.h"

/* at most this many messages per mail.mirror_messages() call */
#define MM_MIRROR_BATCH_SIZE 1000
/* Folders kept open from the listing to their sync.  A Maildir's
   mailbox_sync() reads new/ (and cur/ when it changed) under the uidlist's
   lock; a delivery that finds it taken leaves its message unindexed for
   the next sync: one per changed folder and sync, not two.  Bounded for
   users with very many folders. */
#define MM_MIRROR_KEEP_OPEN 64
/* Records built from the mailbox go to mail.record_mailbox_messages() in
   arrays of at most this many (or this many bytes of JSON, plus one
   record): one call's fixed cost is several records' worth.  It holds
   advisory locks per message id until commit, so each call is committed.
   Safe midway: an interrupted folder has no recorded state (after a reset)
   or an older one, so the next sync sends it again, and every upsert is
   absolute state. */
#define MM_MIRROR_RECORDS_PER_CALL 100
#define MM_MIRROR_RECORDS_MAX_BYTES (4 * 1024 * 1024)
/* A message the milter stamped (valid X-Mailmeta-ID) always gets the
   milter's record, though maybe late: from its journal, after a database
   outage.  So such a message gets no record built from the mailbox until
   it has been there this long (mailmeta_stamped_grace; its folder
   meanwhile keeps its old recorded state, so the drift check looks at it
   again): building one would be wasted work.  Should the milter's record
   come even later, it completes the one built here
   (mail.adopt_milter_records). */
#define MM_MIRROR_STAMPED_GRACE "1 hour"

struct mm_folder {
	const char *vname;
	struct mail_namespace *ns;
	const char *guid;
	/* open since the listing (at most MM_MIRROR_KEEP_OPEN folders), so
	   that syncing it costs no second mailbox_sync(); else NULL */
	struct mailbox *box;

	/* Dovecot's state when listed */
	uint32_t uidvalidity, uidnext, messages;
	uint64_t highest_modseq;

	/* the state recorded by the last sync (mirror_folders) */
	bool recorded, recorded_modseq;
	uint32_t r_uidvalidity, r_uidnext, r_messages;
	uint64_t r_highest_modseq;
};
ARRAY_DEFINE_TYPE(mm_folder, struct mm_folder *);

struct mm_sync {
	struct mm_mirror_db *db;
	struct mail_user *user;
	const char *address;
	pool_t pool;
	struct mm_mirror_sync_stats *stats;
	unsigned int stamped_grace_secs;
	string_t *records;		/* "[rec,rec" on their way */
	unsigned int records_pending;

	enum mm_mirror_result result;
	const char *error;		/* in pool */
};

/* An upsert whose mailmeta_id batch_fill_ids() asks the mirror for. */
struct mm_id_wanted {
	uint32_t uid;
	size_t index;		/* in the batch's upsert array */
};

/* The record of a new message the milter did not stamp, built when its id
   was read (one read of the message for both), in case the database
   lacks it: it usually does, for such a message is mostly an APPEND or an
   import. */
struct mm_prebuilt {
	uint32_t uid;
	char *json;		/* malloc()ed */
};

/* One folder's messages on their way to mail.mirror_messages(). */
struct mm_batch {
	struct mm_sync *sync;
	struct mm_folder *folder;
	struct mailbox_transaction_context *t;
	struct mail *record_mail;	/* reads messages lacking a record */
	uint32_t uidvalidity;
	bool reset;			/* the next batch starts with a reset */
	bool sent_any;
	/* UIDs below this were in the mirror at its last sync: their ids
	   come from the mirror (0: none) */
	uint32_t known_below;
	json_t *upsert, *expunge;
	ARRAY(struct mm_id_wanted) ids_wanted;
	unsigned int count;
	/* build records of new unstamped messages while reading their ids
	   (an incremental sync: a full one rereads messages that mostly have
	   their record already) */
	bool prebuild;
	ARRAY(struct mm_prebuilt) prebuilt;	/* by UID */
	size_t prebuilt_bytes;
};

static void ATTR_FORMAT(3, 4)
sync_fail(struct mm_sync *sync, enum mm_mirror_result result,
	  const char *fmt, ...)
{
	va_list args;

	if (sync->result != MM_MIRROR_OK)
		return;		/* keep the first error */
	va_start(args, fmt);
	sync->result = result;
	sync->error = p_strdup_vprintf(sync->pool, fmt, args);
	va_end(args);
}

/* P0002 (no_data_found) means an unknown user only from the calls that
   name nothing but the user (mirror_folders, mirror_forget); from the
   per-folder calls it is a folder some concurrent sync removed: retry. */
static void
sync_fail_db_as(struct mm_sync *sync, const char *what, bool user_level)
{
	enum mm_mirror_result result;

	switch (mm_mirror_db_last_error(sync->db)) {
	case MM_MIRROR_DB_UNAVAILABLE:
		result = MM_MIRROR_DB_DOWN;
		break;
	case MM_MIRROR_DB_NO_USER:
		result = user_level ? MM_MIRROR_NO_USER : MM_MIRROR_FAILED;
		break;
	default:
		result = MM_MIRROR_FAILED;
		break;
	}
	sync_fail(sync, result, "%s: %s", what,
		  mm_mirror_db_last_message(sync->db));
}

static void
sync_fail_db(struct mm_sync *sync, const char *what)
{
	sync_fail_db_as(sync, what, FALSE);
}

static void
sync_fail_box(struct mm_sync *sync, struct mailbox *box, const char *what)
{
	sync_fail(sync, MM_MIRROR_FAILED, "%s %s: %s", what,
		  mailbox_get_vname(box),
		  mailbox_get_last_internal_error(box, NULL));
}

/* The folder name with '/' as hierarchy separator, as the mirror wants. */
static const char *
mirror_folder_name(const struct mailbox_info *info)
{
	char sep = mail_namespace_get_sep(info->ns);
	char *name;

	if (sep == '/')
		return info->vname;
	name = t_strdup_noconst(info->vname);
	for (char *p = name; *p != '\0'; p++) {
		if (*p == sep)
			*p = '/';
	}
	return name;
}

/* Opens box, keeps modseqs, and brings its view up to date. */
static int
open_folder(struct mailbox *box)
{
	if (mailbox_enable(box, MAILBOX_FEATURE_CONDSTORE) < 0)
		return -1;
	return mailbox_sync(box, 0);
}

static bool
box_not_found(struct mailbox *box)
{
	enum mail_error error;

	(void)mailbox_get_last_error(box, &error);
	return error == MAIL_ERROR_NOTFOUND;
}

static int
folder_state(struct mailbox *box, struct mailbox_status *status_r,
	     const char **guid_r)
{
	struct mailbox_metadata metadata;

	if (mailbox_get_metadata(box, MAILBOX_METADATA_GUID, &metadata) < 0 ||
	    mailbox_get_status(box, STATUS_UIDVALIDITY | STATUS_UIDNEXT |
			       STATUS_MESSAGES | STATUS_HIGHESTMODSEQ,
			       status_r) < 0)
		return -1;
	*guid_r = guid_128_to_string(metadata.guid);
	return 0;
}

/* Lists the user's folders with their current state; folders_json gets the
   list for mail.mirror_folders(). */
static int
list_folders(struct mm_sync *sync, ARRAY_TYPE(mm_folder) *folders,
	     json_t *folders_json)
{
	static const char *const patterns[] = { "*", NULL };
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	HASH_TABLE(const char *, struct mm_folder *) seen;
	unsigned int kept_open = 0;
	int ret = 0;

	hash_table_create(&seen, sync->pool, 0, str_hash, strcmp);
	iter = mailbox_list_iter_init_namespaces(sync->user->namespaces,
		patterns, MAIL_NAMESPACE_TYPE_PRIVATE,
		MAILBOX_LIST_ITER_RETURN_SUBSCRIBED |
		MAILBOX_LIST_ITER_RETURN_SPECIALUSE |
		MAILBOX_LIST_ITER_SKIP_ALIASES);
	while (ret == 0 && (info = mailbox_list_iter_next(iter)) != NULL) T_BEGIN {
		struct mailbox *box;
		struct mailbox_status status;
		const char *guid;

		if ((info->flags & (MAILBOX_NOSELECT | MAILBOX_NONEXISTENT)) != 0) {
			/* not a folder that holds messages */
		} else {
			box = mailbox_alloc(info->ns->list, info->vname, 0);
			if (open_folder(box) < 0 ||
			    folder_state(box, &status, &guid) < 0) {
				if (!box_not_found(box)) {
					sync_fail_box(sync, box, "opening");
					ret = -1;
				}
				/* else deleted meanwhile, which marked the
				   user dirty again */
			} else if (hash_table_lookup(seen, guid) != NULL) {
				i_warning("mailmeta: %s has the same mailbox "
					  "GUID %s as another folder; not "
					  "mirrored", info->vname, guid);
			} else {
				struct mm_folder *f =
					p_new(sync->pool, struct mm_folder, 1);

				f->vname = p_strdup(sync->pool, info->vname);
				f->ns = info->ns;
				f->guid = p_strdup(sync->pool, guid);
				f->uidvalidity = status.uidvalidity;
				f->uidnext = status.uidnext;
				f->messages = status.messages;
				f->highest_modseq = status.highest_modseq;
				hash_table_insert(seen, f->guid, f);
				array_push_back(folders, &f);
				if (kept_open < MM_MIRROR_KEEP_OPEN) {
					kept_open++;
					f->box = box;
					box = NULL;
				}
				json_array_append_new(folders_json, json_pack(
					"{s:s, s:o, s:o, s:b}",
					"guid", f->guid,
					"name", mm_json_str(mirror_folder_name(info)),
					"special_use", mm_json_str(info->special_use),
					"subscribed",
					(info->flags & MAILBOX_SUBSCRIBED) != 0));
			}
			if (box != NULL)
				mailbox_free(&box);
		}
	} T_END;
	if (mailbox_list_iter_deinit(&iter) < 0 && ret == 0) {
		sync_fail(sync, MM_MIRROR_FAILED, "listing folders failed: %s",
			  mailbox_list_get_last_internal_error(
				sync->user->namespaces->list, NULL));
		ret = -1;
	}
	hash_table_destroy(&seen);
	sync->stats->folders = array_count(folders);
	return ret;
}

static bool
column_uint32(PGresult *res, int row, int col, uint32_t *value_r)
{
	return !PQgetisnull(res, row, col) &&
		str_to_uint32(PQgetvalue(res, row, col), value_r) == 0;
}

static bool
column_uint64(PGresult *res, int row, int col, uint64_t *value_r)
{
	return !PQgetisnull(res, row, col) &&
		str_to_uint64(PQgetvalue(res, row, col), value_r) == 0;
}

/* mail.mirror_folders(): sends the list, reads back what was recorded. */
static int
mirror_folders(struct mm_sync *sync, ARRAY_TYPE(mm_folder) *folders,
	       json_t *folders_json)
{
	HASH_TABLE(const char *, struct mm_folder *) by_guid;
	struct mm_folder *f;
	const char *params[2];
	PGresult *res;
	int rows;

	params[0] = sync->address;
	params[1] = mm_mirror_json_text(folders_json);
	res = mm_mirror_db_query(sync->db,
		"SELECT guid, uidvalidity, uidnext, highest_modseq, message_count"
		" FROM mail.mirror_folders($1, $2::jsonb)", 2, params);
	if (res == NULL) {
		sync_fail_db_as(sync, "mail.mirror_folders", TRUE);
		return -1;
	}
	hash_table_create(&by_guid, sync->pool, 0, str_hash, strcmp);
	array_foreach_elem(folders, f)
		hash_table_insert(by_guid, f->guid, f);
	rows = PQntuples(res);
	for (int i = 0; i < rows; i++) {
		f = hash_table_lookup(by_guid,
				      (const char *)PQgetvalue(res, i, 0));
		if (f == NULL)
			continue;
		f->recorded = column_uint32(res, i, 1, &f->r_uidvalidity) &&
			column_uint32(res, i, 2, &f->r_uidnext) &&
			column_uint32(res, i, 4, &f->r_messages);
		f->recorded_modseq = f->recorded &&
			column_uint64(res, i, 3, &f->r_highest_modseq);
	}
	hash_table_destroy(&by_guid);
	PQclear(res);
	return 0;
}

static bool
folder_unchanged(const struct mm_folder *f)
{
	return f->recorded && f->recorded_modseq &&
		f->r_uidvalidity == f->uidvalidity &&
		f->r_uidnext == f->uidnext &&
		f->r_messages == f->messages &&
		f->r_highest_modseq == f->highest_modseq;
}

static json_t *
flags_json(enum mail_flags flags)
{
	static const struct {
		enum mail_flags flag;
		const char *name;
	} names[] = {
		{ MAIL_SEEN, "\\Seen" },
		{ MAIL_ANSWERED, "\\Answered" },
		{ MAIL_FLAGGED, "\\Flagged" },
		{ MAIL_DELETED, "\\Deleted" },
		{ MAIL_DRAFT, "\\Draft" },
	};
	json_t *array = json_array();

	for (size_t i = 0; i < N_ELEMENTS(names); i++) {
		if ((flags & names[i].flag) != 0)
			json_array_append_new(array, json_string(names[i].name));
	}
	return array;
}

static json_t *
keywords_json(const char *const *keywords)
{
	json_t *array = json_array();

	for (; keywords != NULL && *keywords != NULL; keywords++)
		json_array_append_new(array, mm_json_str(*keywords));
	return array;
}

static const char *
utc_timestamp(time_t t)
{
	struct tm tm;
	char buf[32];

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		return "1970-01-01T00:00:00Z";
	return t_strdup(buf);
}

static void
batch_reset_lists(struct mm_batch *b)
{
	json_decref(b->upsert);
	json_decref(b->expunge);
	b->upsert = json_array();
	b->expunge = json_array();
	array_clear(&b->ids_wanted);
	b->count = 0;
}

static void
batch_free_prebuilt(struct mm_batch *b)
{
	struct mm_prebuilt *pre;

	array_foreach_modifiable(&b->prebuilt, pre)
		i_free(pre->json);
	array_clear(&b->prebuilt);
	b->prebuilt_bytes = 0;
}

static int
prebuilt_cmp(const uint32_t *uid, const struct mm_prebuilt *pre)
{
	return *uid < pre->uid ? -1 : *uid > pre->uid ? 1 : 0;
}

/* Takes the record built for UID when its id was read, or NULL. */
static char *
batch_take_prebuilt(struct mm_batch *b, uint32_t uid)
{
	struct mm_prebuilt *pre;
	char *json;

	pre = array_bsearch(&b->prebuilt, &uid, prebuilt_cmp);
	if (pre == NULL)
		return NULL;
	json = pre->json;
	pre->json = NULL;
	return json;
}

/* Whether the milter's record of this message may still be on its way:
   it carries the milter's stamp and arrived recently. */
static bool
milter_record_pending(struct mm_sync *sync, struct mail *mail,
		      const char *mailmeta_id)
{
	char stamped[MM_UUID_TEXT_SIZE];
	time_t received;

	return mm_mirror_message_stamped(mail, stamped) &&
		strcmp(stamped, mailmeta_id) == 0 &&
		mail_get_received_date(mail, &received) == 0 &&
		received > time(NULL) - (time_t)sync->stamped_grace_secs;
}

/* Stores the records built so far, and commits. */
static int
records_flush(struct mm_sync *sync)
{
	const char *params[2];
	PGresult *res;

	if (sync->records_pending == 0)
		return 0;
	str_append_c(sync->records, ']');
	params[0] = sync->address;
	params[1] = str_c(sync->records);
	res = mm_mirror_db_query(sync->db,
		"SELECT mail.record_mailbox_messages($1, $2::jsonb)", 2, params);
	str_truncate(sync->records, 1);
	sync->records_pending = 0;
	if (res == NULL) {
		sync_fail_db(sync, "mail.record_mailbox_messages");
		return -1;
	}
	PQclear(res);
	if (mm_mirror_db_commit(sync->db) < 0) {
		sync_fail_db(sync, "COMMIT");
		return -1;
	}
	if (mm_mirror_db_begin(sync->db) < 0) {
		sync_fail_db(sync, "BEGIN");
		return -1;
	}
	return 0;
}

/* Builds the metadata record of UID, which the database lacks, and queues
   it for records_flush().  Returns 1 done, 0 the message is gone, 2
   deferred (see MM_MIRROR_STAMPED_GRACE), -1 failed. */
static int
record_message(struct mm_batch *b, uint32_t uid, const char *mailmeta_id)
{
	struct mm_sync *sync = b->sync;
	const char *error = NULL;
	char *json = batch_take_prebuilt(b, uid);
	enum mm_mirror_read read;
	int ret = 1;

	/* a prebuilt record is of an unstamped message: its id is the hash
	   of the message, no milter record is on its way */
	if (json != NULL)
		sync->stats->records_one_read++;
	else {
		if (!mail_set_uid(b->record_mail, uid))
			return 0;
		if (milter_record_pending(sync, b->record_mail, mailmeta_id)) {
			sync->stats->deferred++;
			return 2;
		}
		T_BEGIN {
			read = mm_mirror_message_record(b->record_mail,
				mailmeta_id, &json, &error);
			if (read == MM_MIRROR_READ_FAILED) {
				sync_fail(sync, MM_MIRROR_FAILED, "%s: %s",
					  b->folder->vname, error);
				ret = -1;
			} else if (read == MM_MIRROR_READ_EXPUNGED) {
				ret = 0;
			}
		} T_END;
	}
	if (ret > 0) {
		if (sync->records_pending > 0)
			str_append_c(sync->records, ',');
		str_append(sync->records, json);
		sync->records_pending++;
		sync->stats->records++;
	}
	i_free(json);
	if (ret > 0 && (sync->records_pending >= MM_MIRROR_RECORDS_PER_CALL ||
			str_len(sync->records) >= MM_MIRROR_RECORDS_MAX_BYTES) &&
	    records_flush(sync) < 0)
		return -1;
	return ret;
}

/* Reads the mailmeta_id of mail from the message into id: 1, 0 the
   message is gone, -1 failed.  With prebuild, a message the milter did
   not stamp also gets its record built, from the same read, kept for
   record_message() (within MM_MIRROR_RECORDS_MAX_BYTES per batch). */
static int
batch_read_id(struct mm_batch *b, struct mail *mail, bool prebuild,
	      char id[MM_UUID_TEXT_SIZE])
{
	const char *error = NULL;
	enum mm_mirror_read read;
	char *json = NULL;

	prebuild = prebuild && b->prebuild &&
		b->prebuilt_bytes < MM_MIRROR_RECORDS_MAX_BYTES;
	if (!prebuild)
		read = mm_mirror_message_id(mail, id, &error);
	else
		read = mm_mirror_message_id_record(mail, id, &json, &error);
	if (json != NULL) {
		struct mm_prebuilt *pre = array_append_space(&b->prebuilt);

		/* UIDs come in ascending order: the array stays sorted */
		pre->uid = mail->uid;
		pre->json = json;
		b->prebuilt_bytes += strlen(json);
	}
	switch (read) {
	case MM_MIRROR_READ_OK:
		return 1;
	case MM_MIRROR_READ_EXPUNGED:
		return 0;
	case MM_MIRROR_READ_FAILED:
		break;
	}
	sync_fail(b->sync, MM_MIRROR_FAILED, "%s: %s", b->folder->vname, error);
	return -1;
}

/* Gives the upserts batch_add_mail() left without a mailmeta_id the id
   the mirror holds for their UID (a message under a UID never changes
   while UIDVALIDITY stays), reading the others' from the message.
   Returns 0, or -1 on failure; *stale set when a message vanished. */
static int
batch_fill_ids(struct mm_batch *b, bool *stale)
{
	const struct mm_id_wanted *want;
	const char *params[4];
	string_t *uids;
	PGresult *res;
	ARRAY(size_t) gone;
	int row = 0, rows, ret = 0;

	if (array_count(&b->ids_wanted) == 0)
		return 0;
	uids = t_str_new(256);
	str_append_c(uids, '{');
	array_foreach(&b->ids_wanted, want)
		str_printfa(uids, "%s%u", str_len(uids) > 1 ? "," : "", want->uid);
	str_append_c(uids, '}');
	params[0] = b->sync->address;
	params[1] = b->folder->guid;
	params[2] = t_strdup_printf("%u", b->uidvalidity);
	params[3] = str_c(uids);
	res = mm_mirror_db_query(b->sync->db,
		"SELECT uid, mailmeta_id FROM mail.mirror_message_ids($1, $2, $3, $4::bigint[])",
		4, params);
	if (res == NULL) {
		sync_fail_db(b->sync, "mail.mirror_message_ids");
		return -1;
	}
	/* both in UID order */
	rows = PQntuples(res);
	t_array_init(&gone, 4);
	array_foreach(&b->ids_wanted, want) {
		json_t *entry = json_array_get(b->upsert, want->index);
		char id[MM_UUID_TEXT_SIZE];
		uint32_t uid = 0;
		int r;

		while (row < rows && column_uint32(res, row, 0, &uid) &&
		       uid < want->uid)
			row++;
		if (row < rows && uid == want->uid &&
		    mm_mirror_parse_uuid(PQgetvalue(res, row, 1), id))
			r = 1;
		else if (!mail_set_uid(b->record_mail, want->uid))
			r = 0;
		else
			r = batch_read_id(b, b->record_mail, FALSE, id);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0)
			array_push_back(&gone, &want->index);
		else
			json_object_set_new(entry, "mailmeta_id", json_string(id));
	}
	PQclear(res);
	/* from the last, so that the others' indexes stay */
	for (unsigned int i = array_count(&gone); ret == 0 && i > 0; i--) {
		json_array_remove(b->upsert, *array_idx(&gone, i - 1));
		*stale = TRUE;
	}
	return ret;
}

/* Sends the batch to mail.mirror_messages() and records what the database
   lacks.  Returns 0, or -1 on failure; *stale set when a message vanished
   meanwhile or its record was deferred: the folder is then not recorded
   as synced. */
static int
batch_flush(struct mm_batch *b, bool *stale)
{
	struct mm_sync *sync = b->sync;
	const char *params[3];
	PGresult *res;
	json_t *batch;
	int ret = 0, rows;

	if (batch_fill_ids(b, stale) < 0)
		return -1;
	batch = json_pack("{s:I, s:b, s:O, s:O}",
			  "uidvalidity", (json_int_t)b->uidvalidity,
			  "reset", b->reset,
			  "upsert", b->upsert,
			  "expunge", b->expunge);
	params[0] = sync->address;
	params[1] = b->folder->guid;
	params[2] = mm_mirror_json_text(batch);
	json_decref(batch);
	sync->stats->messages += json_array_size(b->upsert);
	sync->stats->expunges += json_array_size(b->expunge);
	b->reset = FALSE;
	b->sent_any = TRUE;
	batch_reset_lists(b);

	res = mm_mirror_db_query(sync->db,
		"SELECT uid, mailmeta_id FROM mail.mirror_messages($1, $2, $3::jsonb)",
		3, params);
	if (res == NULL) {
		sync_fail_db(sync, "mail.mirror_messages");
		return -1;
	}
	rows = PQntuples(res);
	for (int i = 0; i < rows && ret == 0; i++) {
		uint32_t uid;
		char id[MM_UUID_TEXT_SIZE];
		int r;

		if (!column_uint32(res, i, 0, &uid) ||
		    !mm_mirror_parse_uuid(PQgetvalue(res, i, 1), id)) {
			sync_fail(sync, MM_MIRROR_FAILED, "mail.mirror_messages "
				  "returned an invalid row");
			ret = -1;
			break;
		}
		r = record_message(b, uid, id);
		if (r < 0)
			ret = -1;
		else if (r == 0 || r == 2)
			*stale = TRUE;
	}
	PQclear(res);
	/* those the database had after all (copies of recorded messages) */
	batch_free_prebuilt(b);
	if (ret == 0 && records_flush(sync) < 0)
		ret = -1;
	return ret;
}

/* Adds one message's absolute state to the batch.  Returns 1 added, 0 the
   message is gone, -1 failed. */
static int
batch_add_mail(struct mm_batch *b, struct mail *mail)
{
	char id[MM_UUID_TEXT_SIZE];
	time_t received;
	uoff_t size;
	json_t *entry;
	bool id_from_mirror = mail->uid < b->known_below;
	int ret;

	/* what the mirror had at its last sync (a flag change, mostly) is
	   not read again for its id: batch_fill_ids() */
	if (!id_from_mirror && (ret = batch_read_id(b, mail, TRUE, id)) <= 0)
		return ret;
	if (mail_get_received_date(mail, &received) < 0 ||
	    mail_get_virtual_size(mail, &size) < 0) {
		if (mail->expunged ||
		    mailbox_get_last_mail_error(mail->box) == MAIL_ERROR_EXPUNGED)
			return 0;
		sync_fail(b->sync, MM_MIRROR_FAILED, "%s: reading UID %u: %s",
			  b->folder->vname, mail->uid,
			  mailbox_get_last_internal_error(mail->box, NULL));
		return -1;
	}
	entry = json_pack("{s:I, s:o, s:o, s:s, s:I, s:I}",
		"uid", (json_int_t)mail->uid,
		"flags", flags_json(mail_get_flags(mail)),
		"keywords", keywords_json(mail_get_keywords(mail)),
		"internal_date", utc_timestamp(received),
		"size", (json_int_t)size,
		"modseq", (json_int_t)mail_get_modseq(mail));
	if (id_from_mirror) {
		struct mm_id_wanted *want = array_append_space(&b->ids_wanted);

		want->uid = mail->uid;
		want->index = json_array_size(b->upsert);
	} else {
		json_object_set_new(entry, "mailmeta_id", json_string(id));
	}
	json_array_append_new(b->upsert, entry);
	b->count++;
	return 1;
}

/* Sends the folder's messages (all of them when full, else those changed
   since the recorded modseq plus the expunged UIDs).  Returns 0, or -1 on
   failure; *stale set when a message vanished while being read. */
static int
send_messages(struct mm_sync *sync, struct mm_folder *f, struct mailbox *box,
	      const struct mailbox_status *status, bool full,
	      const ARRAY_TYPE(seq_range) *expunged, bool *stale)
{
	struct mail_search_args *args;
	struct mail_search_context *search;
	struct mail_search_arg *arg;
	struct mm_batch b;
	struct mail *mail;
	int ret = 0;

	i_zero(&b);
	b.sync = sync;
	b.folder = f;
	b.uidvalidity = status->uidvalidity;
	b.reset = full;
	b.known_below = full ? 0 : f->r_uidnext;
	b.prebuild = !full;
	i_array_init(&b.ids_wanted, 64);
	i_array_init(&b.prebuilt, 16);
	batch_reset_lists(&b);
	if (expunged != NULL) {
		const struct seq_range *range;

		array_foreach(expunged, range) {
			for (uint32_t uid = range->seq1; ; uid++) {
				json_array_append_new(b.expunge,
					json_integer(uid));
				if (uid == range->seq2)
					break;
			}
		}
	}

	args = mail_search_build_init();
	if (full) {
		mail_search_build_add_all(args);
	} else {
		arg = mail_search_build_add(args, SEARCH_MODSEQ);
		arg->value.modseq = p_new(args->pool, struct mail_search_modseq, 1);
		arg->value.modseq->modseq = f->r_highest_modseq + 1;
	}

	/* What Dovecot caches per folder follows what the user's clients
	   fetch; the mirror's reading every message must not make it cache
	   X-Mailmeta-ID and the received date of every future delivery. */
	b.t = mailbox_transaction_begin(box, MAILBOX_TRANSACTION_FLAG_NO_CACHE_DEC,
					"mailmeta mirror");
	b.record_mail = mail_alloc(b.t, 0, NULL);
	/* no wanted headers: Dovecot would open every message found to
	   prefetch them, though most ids come from the mirror */
	search = mailbox_search_init(b.t, args, NULL, MAIL_FETCH_FLAGS |
				     MAIL_FETCH_RECEIVED_DATE |
				     MAIL_FETCH_VIRTUAL_SIZE, NULL);
	mail_search_args_unref(&args);

	while (ret == 0 && mailbox_search_next(search, &mail)) {
		int r;

		if (!full && mail_get_modseq(mail) <= f->r_highest_modseq)
			continue;
		T_BEGIN {
			r = batch_add_mail(&b, mail);
		} T_END;
		if (r < 0)
			ret = -1;
		else if (r == 0)
			*stale = TRUE;
		else if (b.count >= MM_MIRROR_BATCH_SIZE) T_BEGIN {
			ret = batch_flush(&b, stale);
		} T_END;
	}
	if (mailbox_search_deinit(&search) < 0 && ret == 0) {
		sync_fail_box(sync, box, "searching");
		ret = -1;
	}
	/* the last batch; one is always sent when the folder must be reset
	   or has expunges, even without upserts */
	if (ret == 0 && (b.count > 0 || json_array_size(b.expunge) > 0 ||
			 b.reset || !b.sent_any)) T_BEGIN {
		ret = batch_flush(&b, stale);
	} T_END;

	mail_free(&b.record_mail);
	(void)mailbox_transaction_commit(&b.t);
	json_decref(b.upsert);
	json_decref(b.expunge);
	array_free(&b.ids_wanted);
	batch_free_prebuilt(&b);
	array_free(&b.prebuilt);
	return ret;
}

/* mail.mirror_folder_done(): 1 the mirror agrees, 0 its count differs,
   -1 failed. */
static int
folder_done(struct mm_sync *sync, struct mm_folder *f,
	    const struct mailbox_status *status)
{
	const char *params[6];
	PGresult *res;
	int ret;

	params[0] = sync->address;
	params[1] = f->guid;
	params[2] = t_strdup_printf("%u", status->uidvalidity);
	params[3] = t_strdup_printf("%u", status->uidnext);
	params[4] = t_strdup_printf("%"PRIu64, status->highest_modseq);
	params[5] = t_strdup_printf("%u", status->messages);
	res = mm_mirror_db_query(sync->db,
		"SELECT mail.mirror_folder_done($1, $2, $3, $4, $5, $6)",
		6, params);
	if (res == NULL) {
		sync_fail_db(sync, "mail.mirror_folder_done");
		return -1;
	}
	ret = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0 ?
		1 : 0;
	PQclear(res);
	return ret;
}

/* Brings one folder's mirror up to date. */
static int
sync_folder(struct mm_sync *sync, struct mm_folder *f, bool forget)
{
	struct mailbox *box;
	struct mailbox_status status;
	ARRAY_TYPE(seq_range) expunged, filter;
	const char *guid;
	bool full, stale = FALSE, opened = TRUE;
	int ret = 0, done;

	box = f->box;
	f->box = NULL;
	if (box == NULL) {
		box = mailbox_alloc(f->ns->list, f->vname, 0);
		opened = open_folder(box) == 0;
	}
	if (!opened || folder_state(box, &status, &guid) < 0) {
		if (!box_not_found(box)) {
			sync_fail_box(sync, box, "opening");
			ret = -1;
		}
		mailbox_free(&box);
		return ret;
	}
	if (strcmp(guid, f->guid) != 0) {
		/* renamed or recreated since it was listed: the change
		   marked the user dirty, the next sync sees it */
		mailbox_free(&box);
		return 0;
	}

	full = forget || !f->recorded || !f->recorded_modseq ||
		f->r_uidvalidity != status.uidvalidity ||
		f->r_highest_modseq > status.highest_modseq ||
		status.nonpermanent_modseqs || status.no_modseq_tracking;
	t_array_init(&expunged, 32);
	if (!full) {
		t_array_init(&filter, 1);
		seq_range_array_add_range(&filter, 1, (uint32_t)-1);
		if (!mailbox_get_expunged_uids(box, f->r_highest_modseq,
					       &filter, &expunged))
			full = TRUE;
	}
	for (;;) {
		sync->stats->folders_synced++;
		if (full)
			sync->stats->full_sends++;
		if (send_messages(sync, f, box, &status, full,
				  full ? NULL : &expunged, &stale) < 0) {
			ret = -1;
			break;
		}
		if (stale)
			break;	/* look again at the next sync */
		done = folder_done(sync, f, &status);
		if (done < 0) {
			ret = -1;
		} else if (done == 0 && !full) {
			/* drift: the mirror lost track; send it all */
			full = TRUE;
			continue;
		} else if (done == 0) {
			i_warning("mailmeta: %s: the mirror's message count "
				  "still differs after a full send",
				  f->vname);
		}
		break;
	}
	mailbox_free(&box);
	return ret;
}

enum mm_mirror_result
mm_mirror_sync_user(struct mm_mirror_db *db, struct mail_user *user,
		    bool forget, struct mm_mirror_sync_stats *stats_r,
		    const char **error_r)
{
	struct mm_sync sync;
	ARRAY_TYPE(mm_folder) folders;
	struct mm_folder *f;
	json_t *folders_json;
	const char *params[1], *grace, *error;
	PGresult *res;
	int ret = 0;

	i_zero(stats_r);
	i_zero(&sync);
	sync.db = db;
	sync.user = user;
	sync.address = user->username;
	sync.pool = pool_alloconly_create("mailmeta sync", 4096);
	sync.stats = stats_r;
	sync.records = str_new(default_pool, 4096);
	str_append_c(sync.records, '[');
	p_array_init(&folders, sync.pool, 16);
	grace = mail_user_plugin_getenv(user, "mailmeta_stamped_grace");
	if (grace == NULL || grace[0] == '\0')
		grace = MM_MIRROR_STAMPED_GRACE;
	if (settings_get_time(grace, &sync.stamped_grace_secs, &error) < 0) {
		sync_fail(&sync, MM_MIRROR_FAILED,
			  "invalid mailmeta_stamped_grace '%s': %s", grace, error);
		ret = -1;
	}

	/* Dovecot first: a storage problem costs no database round trip */
	folders_json = json_array();
	if (ret == 0 && list_folders(&sync, &folders, folders_json) < 0)
		ret = -1;
	if (ret == 0 && mm_mirror_db_begin(db) < 0) {
		sync_fail_db(&sync, "BEGIN");
		ret = -1;
	}
	if (ret == 0 && forget) {
		params[0] = sync.address;
		res = mm_mirror_db_query(db, "SELECT mail.mirror_forget($1)",
					 1, params);
		if (res == NULL) {
			sync_fail_db_as(&sync, "mail.mirror_forget", TRUE);
			ret = -1;
		}
		PQclear(res);
	}
	if (ret == 0) T_BEGIN {
		ret = mirror_folders(&sync, &folders, folders_json);
	} T_END;
	json_decref(folders_json);

	if (ret == 0) {
		array_foreach_elem(&folders, f) {
			if (!forget && folder_unchanged(f)) {
				if (f->box != NULL)
					mailbox_free(&f->box);
				continue;
			}
			T_BEGIN {
				ret = sync_folder(&sync, f, forget);
			} T_END;
			if (ret < 0)
				break;
		}
	}
	array_foreach_elem(&folders, f) {
		if (f->box != NULL)
			mailbox_free(&f->box);
	}
	if (ret == 0 && mm_mirror_db_commit(db) < 0) {
		sync_fail_db(&sync, "COMMIT");
		ret = -1;
	}
	if (ret < 0)
		mm_mirror_db_rollback(db);

	enum mm_mirror_result result = sync.result;
	if (ret < 0 && result == MM_MIRROR_OK)
		result = MM_MIRROR_FAILED;
	*error_r = t_strdup(sync.error == NULL ? "unknown error" : sync.error);
	str_free(&sync.records);
	pool_unref(&sync.pool);
	return ret < 0 ? result : MM_MIRROR_OK;
}
