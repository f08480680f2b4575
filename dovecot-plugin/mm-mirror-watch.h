/*
 * mm-mirror-watch.h - `doveadm mailmeta watch`: the long-running syncer
 *
 * Waits for dirty-user marks in the spool (inotify, or a one-second poll
 * where inotify is unavailable), claims each mark by renaming it into
 * <spool>/.claimed/, syncs the user (mm-mirror-sync.h) and removes the
 * claim only after the sync committed.  When the sync fails the claim goes
 * back into the spool and the watcher backs off (1, 2, 4 ... up to 30 s)
 * before the next round, so a PostgreSQL outage costs nothing but time:
 * the marks wait on disk, bounded to one per user, and survive restarts
 * (claims left by a crash are put back at start).  Every check interval it
 * also syncs every user the userdb lists; a user whose folders agree with
 * the mirror costs one mail.mirror_folders() call, so this is the cheap
 * drift check that repairs lost marks and changes made behind Dovecot's
 * back.  A round of syncs starts sync_delay after the first mark that woke
 * the watcher: a user busy with many small changes (a client flagging one
 * message after another, a burst of deliveries) is then synced once for
 * all of them rather than once for each, which is what makes the mirror
 * cheap under load; the mirror lags by about that delay.  SIGTERM (or
 * SIGINT) ends it after the user being synced.
 */
#ifndef MM_MIRROR_WATCH_H
#define MM_MIRROR_WATCH_H

struct mm_mirror_watch_settings {
	const char *spool_dir;
	const char *dsn;
	unsigned int check_interval_secs;	/* 0: no periodic drift check */
	unsigned int sync_delay_msecs;		/* marks collected before a round */
};

/* Runs until SIGTERM/SIGINT.  Returns 0, or -1 when it cannot start
   (the reason logged). */
int mm_mirror_watch_run(const struct mm_mirror_watch_settings *set);

#endif
