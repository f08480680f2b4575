/*
 * mm-mirror-sync.h - mirror one user's mailboxes into PostgreSQL
 *
 * State-based, not event replay (doc/mailbox-mirror.md): in one database
 * transaction, send the complete folder list to mail.mirror_folders(), then
 * for every folder whose UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ or message
 * count differs from what the mirror recorded, send the messages changed
 * since the recorded HIGHESTMODSEQ and the UIDs expunged since (or the whole
 * folder when that cannot be known), build the metadata records the
 * database lacks, and record the folder's new state.  Whatever happened in
 * between, the mirror ends equal to the mailbox as of the sync.
 */
#ifndef MM_MIRROR_SYNC_H
#define MM_MIRROR_SYNC_H

struct mail_user;
struct mm_mirror_db;

enum mm_mirror_result {
	MM_MIRROR_OK = 0,
	/* PostgreSQL is unreachable or the connection broke: retry later */
	MM_MIRROR_DB_DOWN,
	/* the user is unknown to mail.users: nothing to mirror */
	MM_MIRROR_NO_USER,
	/* anything else (storage error, SQL error): retry later, logged */
	MM_MIRROR_FAILED,
};

struct mm_mirror_sync_stats {
	unsigned int folders;		/* listed */
	unsigned int folders_synced;	/* whose messages were sent */
	unsigned int full_sends;	/* of those, sent in full */
	unsigned int messages;		/* upserts sent */
	unsigned int expunges;		/* expunged UIDs sent */
	unsigned int records;		/* metadata records built */
	unsigned int records_one_read;	/* of those, read with their id */
	unsigned int deferred;		/* waiting for the milter's record */
};

/* Syncs user's mirror; forget: drop the user's mirror first and rebuild it
   in full (resync).  On failure error_r says why (data stack). */
enum mm_mirror_result
mm_mirror_sync_user(struct mm_mirror_db *db, struct mail_user *user,
		    bool forget, struct mm_mirror_sync_stats *stats_r,
		    const char **error_r);

#endif
