/*
 * mm-mirror-watch.h - `doveadm mailmeta watch`: the long-running syncer
 *
 * Waits for dirty-user marks in the spool (inotify, or a one-second poll
 * where inotify is unavailable), claims each mark by renaming it into
 * <spool>/.claimed/, syncs the user (mm-mirror-sync.h) and removes the
 * claim only after the sync committed.  When the sync fails the claim goes
 * back into the spool.  When PostgreSQL is unreachable the watcher backs
 * off (1, 2, 4 ... up to 30 s) before the next round; when the failure is
 * the user's own (a mailbox Dovecot cannot read, a record the database
 * refuses) only that user waits such a back-off, so one broken mailbox does
 * not hold up everybody's mirror.  A PostgreSQL outage costs nothing but
 * time: the marks wait on disk, bounded to one per user, and survive
 * restarts (claims left by a crash are put back at start).  Every check
 * interval it also syncs every user the userdb lists; a user whose folders
 * agree with the mirror costs one mail.mirror_folders() call, so this is
 * the cheap drift check that repairs lost marks and changes made behind
 * Dovecot's back.  A user is synced once its changes have paused for
 * sync_delay, or once its oldest unsynced change is sync_max_delay old
 * (mm-mirror-pending.h): a user busy with many small changes (a client
 * flagging one message after another, a flood of deliveries) is then synced
 * once for all of them rather than once for each, which is what makes the
 * mirror cheap under load; the mirror lags by sync_delay after a change, by
 * at most sync_max_delay (plus one sync) under a steady stream.  The mail
 * plugin opens a user's mark at every change, so inotify's open events tell
 * the watcher when a user is still busy.  Each worker syncs one user at a
 * time, so it waits at most lock_timeout for a lock of a user's mailbox: a
 * lock held by a hung process, or left behind, delays that user's sync, not
 * everyone's mirror.  With several workers (each a process of its own,
 * started by a supervisor) the users are split between them by a hash of
 * their name, so a host with many users syncs as many of them at once as
 * there are workers.  SIGTERM (or SIGINT) ends it after the user being
 * synced.
 */
#ifndef MM_MIRROR_WATCH_H
#define MM_MIRROR_WATCH_H

struct mm_mirror_watch_settings {
	const char *spool_dir;
	const char *dsn;
	unsigned int check_interval_secs;	/* 0: no periodic drift check */
	unsigned int sync_delay_msecs;		/* quiet time before a sync */
	unsigned int sync_max_delay_msecs;	/* longest wait of a change */
	/* longest wait for a lock of a user's mailbox (Dovecot's
	   mail_max_lock_timeout for the users it syncs); 0: Dovecot's own */
	unsigned int lock_timeout_secs;
	/* processes that sync users in parallel (1: no supervisor) */
	unsigned int workers;
	/* this process is a worker the supervisor started, a fresh
	   `doveadm mailmeta watch -w i/n` (worker i from 0 of n = workers),
	   not the supervisor */
	bool worker_given;
	unsigned int worker;
};

/* Runs until SIGTERM/SIGINT.  Returns 0, or -1 when it cannot start
   (the reason logged). */
int mm_mirror_watch_run(const struct mm_mirror_watch_settings *set);

#endif
