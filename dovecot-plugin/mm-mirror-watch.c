/*
 * mm-mirror-watch.c - `doveadm mailmeta watch` (see mm-mirror-watch.h)
 *
 * Users are opened through Dovecot's mail-storage-service with temporary
 * privilege drops, as `doveadm -A` does, so one root process can serve
 * every user.  After each user the watcher takes root back: Dovecot's auth
 * lists users only to root (or the socket's owner), and the spool is
 * handled as root.  The spool's .claimed/ directory still gets the spool's
 * own owner, so a watcher not started as root works with its own spool.
 */
#include "lib.h"
#include "array.h"
#include "lib-signals.h"
#include "master-service.h"
#include "auth-master.h"
#include "mail-storage-service.h"
#include "mail-user.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mailmeta-spool.h"
#include "mm-mirror-db.h"
#include "mm-mirror-pending.h"
#include "mm-mirror-sync.h"
#include "mm-mirror-watch.h"

#define MM_WATCH_MAX_BACKOFF_SECS 30
#define MM_WATCH_POLL_MSECS 1000
/* A busy host opens marks hundreds of times a second, each an inotify
   event.  Once one has come, the watcher lets more queue up this long
   before it reads them: a burst of changes costs one wakeup, not one per
   change.  Well below mailmeta_sync_delay, which it may lengthen by that
   much at most. */
#define MM_WATCH_COALESCE_MSECS 50
/* looked up to connect the listing's connection (watch_list_connect()):
   not a name any userdb holds */
#define MM_WATCH_PROBE_USER "mailmeta-watch connect"

struct mm_watch {
	const struct mm_mirror_watch_settings *set;
	char *claim_dir;
	struct mm_mirror_db *db;
	struct mail_storage_service_ctx *storage;
	struct mm_pending *pending;
	int inotify_fd;
	/* the event queue overflowed: names were lost, look at the spool */
	bool rescan;
	unsigned int term_counter;
	unsigned int backoff_secs;
	uint64_t next_check;	/* monotonic msecs */
	uint64_t last_spool_pass;	/* monotonic msecs */
};

static bool
watch_stopping(const struct mm_watch *w)
{
	return signal_term_counter != w->term_counter;
}

static uint64_t
monotonic_msecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Looks a user up and opens it, with the watcher's lock timeout: 1 done,
   0 no such user, -1 failed. */
static int
watch_open_user(struct mm_watch *w, const char *username,
		struct mail_storage_service_user **service_user_r,
		struct mail_user **user_r, const char **error_r)
{
	struct mail_storage_service_input input;
	const char *value;
	int ret;

	i_zero(&input);
	input.service = "doveadm";
	input.username = username;
	ret = mail_storage_service_lookup(w->storage, &input, service_user_r,
					  error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : 0;
	if (w->set->lock_timeout_secs > 0) {
		value = t_strdup_printf("%us", w->set->lock_timeout_secs);
		ret = mail_storage_service_user_set_setting(*service_user_r,
				"mail_max_lock_timeout", value, error_r);
		if (ret <= 0) {
			*error_r = t_strdup_printf("mail_max_lock_timeout=%s: %s",
				value, ret < 0 ? *error_r : "unknown setting");
			mail_storage_service_user_unref(service_user_r);
			return -1;
		}
	}
	if (mail_storage_service_next(w->storage, *service_user_r, user_r,
				      error_r) < 0) {
		mail_storage_service_user_unref(service_user_r);
		return -1;
	}
	return 1;
}

/* Opens one user and syncs it. */
static enum mm_mirror_result
watch_sync_user(struct mm_watch *w, const char *username)
{
	struct mail_storage_service_user *service_user;
	struct mail_user *user;
	struct mm_mirror_sync_stats stats;
	enum mm_mirror_result result;
	const char *error;
	int ret;

	ret = watch_open_user(w, username, &service_user, &user, &error);
	if (ret < 0) {
		/* The auth process ended (a reload restarts it): the first
		   lookup fails on the old connection ("Broken pipe"), and
		   the next one connects again. */
		ret = watch_open_user(w, username, &service_user, &user,
				      &error);
	}
	if (ret < 0) {
		i_error("mailmeta: %s: %s", username, error);
		return MM_MIRROR_FAILED;
	}
	if (ret == 0)
		return MM_MIRROR_NO_USER;

	result = mm_mirror_sync_user(w->db, user, FALSE, &stats, &error);
	switch (result) {
	case MM_MIRROR_OK:
		if (stats.folders_synced > 0) {
			i_info("mailmeta: %s: synced %u of %u folders "
			       "(%u in full): %u messages, %u expunged, "
			       "%u records built (%u read once with their "
			       "id)%s", username,
			       stats.folders_synced, stats.folders,
			       stats.full_sends, stats.messages,
			       stats.expunges, stats.records,
			       stats.records_one_read,
			       stats.deferred == 0 ? "" : t_strdup_printf(
				", %u waiting for the milter's record",
				stats.deferred));
		}
		break;
	case MM_MIRROR_NO_USER:
		i_warning("mailmeta: %s: not in mail.users, not mirrored: %s",
			  username, error);
		break;
	case MM_MIRROR_DB_DOWN:
	case MM_MIRROR_FAILED:
		i_error("mailmeta: %s: sync failed, will retry: %s",
			username, error);
		break;
	}
	mail_user_deinit(&user);
	mail_storage_service_user_unref(&service_user);
	if (getuid() == 0 && geteuid() != 0 && seteuid(0) < 0)
		i_fatal("mailmeta: seteuid(0) failed: %m");
	return result;
}

static void
claim_path(struct mm_watch *w, const char *name, const char **spool_r,
	   const char **claim_r)
{
	*spool_r = t_strconcat(w->set->spool_dir, "/", name, NULL);
	*claim_r = t_strconcat(w->claim_dir, "/", name, NULL);
}

/* Puts a claim back into the spool: a mark made meanwhile means the same. */
static void
put_back(struct mm_watch *w, const char *name)
{
	const char *spool, *claim;

	claim_path(w, name, &spool, &claim);
	if (rename(claim, spool) < 0)
		i_error("mailmeta: rename(%s, %s) failed: %m", claim, spool);
}

static int
read_names(const char *dir, ARRAY_TYPE(const_string) *names)
{
	DIR *dirp;
	struct dirent *d;

	dirp = opendir(dir);
	if (dirp == NULL) {
		i_error("mailmeta: opendir(%s) failed: %m", dir);
		return -1;
	}
	errno = 0;
	while ((d = readdir(dirp)) != NULL) {
		if (d->d_name[0] == '.')
			continue;
		const char *name = t_strdup(d->d_name);
		array_push_back(names, &name);
		errno = 0;
	}
	if (errno != 0)
		i_error("mailmeta: readdir(%s) failed: %m", dir);
	(void)closedir(dirp);
	return 0;
}

/* Events for names that have no mark (it was claimed already) would keep
   the watcher waking up for nothing: a due name without a mark is
   dropped.  A mark made since the spool was read stays due. */
static void
forget_unmarked(struct mm_watch *w)
{
	ARRAY_TYPE(const_string) due;
	const char *name;
	struct stat st;

	t_array_init(&due, 8);
	mm_pending_get_due(w->pending, monotonic_msecs(), &due);
	array_foreach_elem(&due, name) {
		const char *spool = t_strconcat(w->set->spool_dir, "/", name,
						NULL);
		if (lstat(spool, &st) < 0 && errno == ENOENT)
			mm_pending_forget(w->pending, name);
	}
}

/* One pass over the marks: syncs the users that are due
   (mm-mirror-pending.h).  Returns -1 when PostgreSQL is unreachable or the
   spool unusable, which every user's sync would suffer from. */
static int
process_spool(struct mm_watch *w)
{
	ARRAY_TYPE(const_string) names;
	const char *name, *spool, *claim;
	char user[MAILMETA_SPOOL_NAME_SIZE];
	int ret = 0;

	w->rescan = FALSE;
	w->last_spool_pass = monotonic_msecs();
	t_array_init(&names, 32);
	if (read_names(w->set->spool_dir, &names) < 0)
		return -1;
	array_foreach_elem(&names, name) {
		if (watch_stopping(w))
			break;
		claim_path(w, name, &spool, &claim);
		if (!mailmeta_spool_decode(name, user, sizeof(user))) {
			i_warning("mailmeta: %s is not a user mark; removed",
				  spool);
			if (unlink(spool) < 0 && errno != ENOENT)
				i_error("mailmeta: unlink(%s) failed: %m", spool);
			mm_pending_forget(w->pending, name);
			continue;
		}
		/* a sync takes a while: the clock is read for each mark */
		uint64_t now = monotonic_msecs();
		mm_pending_found(w->pending, name, now);
		if (!mm_pending_is_due(w->pending, name, now))
			continue;
		/* changes seen from here on belong to the next sync */
		mm_pending_forget(w->pending, name);
		if (rename(spool, claim) < 0) {
			if (errno != ENOENT) {
				i_error("mailmeta: rename(%s, %s) failed: %m",
					spool, claim);
				ret = -1;
			}
			continue;
		}
		enum mm_mirror_result result;
		T_BEGIN {
			result = watch_sync_user(w, user);
		} T_END;
		if (result == MM_MIRROR_OK || result == MM_MIRROR_NO_USER) {
			mm_pending_succeeded(w->pending, name);
			if (unlink(claim) < 0)
				i_error("mailmeta: unlink(%s) failed: %m", claim);
			continue;
		}
		put_back(w, name);
		if (result == MM_MIRROR_DB_DOWN) {
			/* the others would fail the same way: all back off */
			ret = -1;
			break;
		}
		/* this user's own problem: only this user backs off */
		mm_pending_failed(w->pending, name, monotonic_msecs());
	}
	forget_unmarked(w);
	return ret;
}

/* Reads the queued inotify events: each names a mark that was created,
   put back or opened by the mail plugin, i.e. a change of that user.  An
   overflowed queue lost names: a pass over the spool finds their marks. */
static void
watch_read_events(struct mm_watch *w)
{
	_Alignas(struct inotify_event) char buf[4096];
	ssize_t len;

	while ((len = read(w->inotify_fd, buf, sizeof(buf))) > 0) {
		uint64_t now = monotonic_msecs();

		for (ssize_t pos = 0; pos < len; ) {
			const struct inotify_event *ev =
				(const struct inotify_event *)(buf + pos);

			pos += (ssize_t)(sizeof(*ev) + ev->len);
			if ((ev->mask & IN_Q_OVERFLOW) != 0)
				w->rescan = TRUE;
			/* len 0: the spool itself; dot names: the
			   watcher's own */
			if (ev->len > 0 && ev->name[0] != '\0' &&
			    ev->name[0] != '.')
				mm_pending_touch(w->pending, ev->name, now);
		}
	}
}

/* Whether a user's mark is due while the drift check runs: a check of
   many users takes long, and the changes clients wait for come first, as
   in the main loop.  Without inotify the spool is looked at every poll
   interval. */
static bool
marks_due(struct mm_watch *w)
{
	uint64_t now = monotonic_msecs();

	if (w->inotify_fd == -1)
		return now >= w->last_spool_pass + MM_WATCH_POLL_MSECS;
	watch_read_events(w);
	return w->rescan || mm_pending_next_due(w->pending, now) == 0;
}

/* A connection to Dovecot's auth userdb socket for listing users, or
   NULL when it cannot be had.  Dovecot 2.3's listing (and so
   mail_storage_service_all_init()) panics when its connection fails to
   connect: auth_master_user_list_deinit() then trips an assertion in
   auth_master_unset_io().  That happens whenever the socket is away, as
   during a restart of Dovecot.  So the watcher lists over a connection
   that a user lookup has connected first; a lookup that cannot connect
   just fails. */
static struct auth_master_connection *
watch_list_connect(struct mm_watch *w)
{
	struct auth_master_connection *conn;
	struct auth_user_info info;
	const char *username, *const *fields;
	pool_t pool;
	int ret;

	mail_storage_service_init_settings(w->storage, NULL);
	conn = auth_master_init(auth_master_get_socket_path(
			mail_storage_service_get_auth_conn(w->storage)), 0);
	i_zero(&info);
	info.service = "doveadm";
	pool = pool_alloconly_create("mailmeta list connect", 512);
	ret = auth_master_user_lookup(conn, MM_WATCH_PROBE_USER, &info, pool,
				      &username, &fields);
	pool_unref(&pool);
	if (ret < 0)
		auth_master_deinit(&conn);
	return conn;
}

/* Syncs every user the userdb lists, counting them in *count, and between
   them the users whose marks are due: 0 done (or stopping), 1 PostgreSQL
   is unreachable (or the spool unusable), -1 the listing failed. */
static int
check_listed_users(struct mm_watch *w, unsigned int *count)
{
	struct auth_master_connection *conn;
	struct auth_master_user_list_ctx *list;
	const char *user;
	int ret = 0;

	if ((conn = watch_list_connect(w)) == NULL)
		return -1;
	list = auth_master_user_list_init(conn, "", NULL);
	while ((user = auth_master_user_list_next(list)) != NULL) {
		enum mm_mirror_result result;

		if (watch_stopping(w))
			break;
		(*count)++;
		T_BEGIN {
			result = watch_sync_user(w, t_strdup(user));
		} T_END;
		if (result == MM_MIRROR_DB_DOWN) {
			ret = 1;
			break;
		}
		if (marks_due(w)) {
			int failed;

			T_BEGIN {
				failed = process_spool(w);
			} T_END;
			if (failed < 0) {
				ret = 1;
				break;
			}
		}
	}
	if (auth_master_user_list_deinit(&list) < 0 && ret == 0 &&
	    !watch_stopping(w))
		ret = -1;
	auth_master_deinit(&conn);
	return ret;
}

/* The drift check: every user the userdb lists.  -1 when PostgreSQL is
   unreachable or the users cannot be listed; a user whose sync fails is
   looked at again by the next check (or sooner, by a mark). */
static int
check_all_users(struct mm_watch *w)
{
	unsigned int count = 0;
	int ret;

	ret = check_listed_users(w, &count);
	if (ret < 0 && count == 0) {
		/* the connection to an auth process that has ended (see
		   watch_sync_user()): the next listing connects again */
		ret = check_listed_users(w, &count);
	}
	if (ret < 0) {
		i_error("mailmeta: drift check: listing users failed");
		return -1;
	}
	if (ret > 0)
		return -1;	/* PostgreSQL is down */
	i_debug("mailmeta: drift check of %u users done", count);
	return 0;
}

/* Sleeps until a user is due to be synced, the drift check is due, or a
   signal ends us; while backing off, marks do not wake us early. */
static void
watch_wait(struct mm_watch *w)
{
	uint64_t now = monotonic_msecs(), deadline;
	struct pollfd pfd;

	deadline = w->set->check_interval_secs == 0 ? now + 3600 * 1000 :
		w->next_check;
	/* after a failed sync, wait the back-off out even when the drift
	   check is overdue (it is skipped while syncs fail): else a sync that
	   keeps failing would be retried in a busy loop */
	if (w->backoff_secs > 0)
		deadline = now + w->backoff_secs * 1000;
	while (!watch_stopping(w) && (now = monotonic_msecs()) < deadline) {
		uint64_t wake = deadline;

		if (w->backoff_secs == 0) {
			unsigned int next = mm_pending_next_due(w->pending, now);

			if (next == 0 || w->rescan)
				return;
			if (next != UINT_MAX)
				wake = I_MIN(wake, now + next);
		}
		int timeout = (int)I_MIN(wake - now, (uint64_t)INT_MAX);

		if (w->inotify_fd == -1) {
			/* no events: look at the spool every poll interval */
			if (w->backoff_secs == 0 && timeout > MM_WATCH_POLL_MSECS)
				timeout = MM_WATCH_POLL_MSECS;
			(void)poll(NULL, 0, timeout);
			if (w->backoff_secs == 0)
				return;
			continue;
		}
		pfd.fd = w->inotify_fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, timeout) > 0) {
			(void)poll(NULL, 0,
				   I_MIN(timeout, MM_WATCH_COALESCE_MSECS));
			watch_read_events(w);
		}
		/* else a timeout or a signal: look again */
	}
}

static int
watch_init_spool(struct mm_watch *w)
{
	ARRAY_TYPE(const_string) names;
	const char *name;
	struct stat st;

	if (stat(w->set->spool_dir, &st) < 0) {
		i_error("mailmeta: stat(%s) failed: %m (mailmeta_spool_dir)",
			w->set->spool_dir);
		return -1;
	}
	w->claim_dir = i_strconcat(w->set->spool_dir, "/",
				   MAILMETA_SPOOL_CLAIM_DIR, NULL);
	if (mkdir(w->claim_dir, 0770) == 0) {
		/* the spool's owner, so renames work after a privilege drop */
		if (chown(w->claim_dir, st.st_uid, st.st_gid) < 0)
			i_error("mailmeta: chown(%s) failed: %m", w->claim_dir);
	} else if (errno != EEXIST) {
		i_error("mailmeta: mkdir(%s) failed: %m", w->claim_dir);
		return -1;
	}
	/* claims a crash left behind */
	t_array_init(&names, 8);
	if (read_names(w->claim_dir, &names) < 0)
		return -1;
	array_foreach_elem(&names, name)
		put_back(w, name);

	w->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->inotify_fd == -1) {
		i_warning("mailmeta: inotify_init1() failed: %m; "
			  "polling the spool every second");
	} else if (inotify_add_watch(w->inotify_fd, w->set->spool_dir,
				     IN_CREATE | IN_MOVED_TO | IN_ATTRIB |
				     IN_OPEN) < 0) {
		i_warning("mailmeta: inotify_add_watch(%s) failed: %m; "
			  "polling the spool every second", w->set->spool_dir);
		i_close_fd(&w->inotify_fd);
	}
	return 0;
}

int
mm_mirror_watch_run(const struct mm_mirror_watch_settings *set)
{
	struct mm_watch w;
	int ret;

	i_zero(&w);
	w.set = set;
	w.inotify_fd = -1;
	w.term_counter = signal_term_counter;
	ret = 0;
	T_BEGIN {
		ret = watch_init_spool(&w);
	} T_END;
	if (ret < 0) {
		i_free(w.claim_dir);
		return -1;
	}
	w.pending = mm_pending_init(set->sync_delay_msecs,
				    set->sync_max_delay_msecs);
	w.db = mm_mirror_db_new(set->dsn);
	w.storage = mail_storage_service_init(master_service, NULL,
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT);
	i_info("mailmeta: watching %s (sync delay %u ms, at most %u ms, "
	       "drift check every %u s)", set->spool_dir,
	       set->sync_delay_msecs,
	       I_MAX(set->sync_max_delay_msecs, set->sync_delay_msecs),
	       set->check_interval_secs);

	w.next_check = monotonic_msecs();
	while (!watch_stopping(&w)) {
		int failed;

		/* marks first: they are what clients wait for */
		T_BEGIN {
			failed = process_spool(&w);
		} T_END;
		if (failed == 0 && set->check_interval_secs > 0 &&
		    !watch_stopping(&w) && monotonic_msecs() >= w.next_check) {
			w.next_check = monotonic_msecs() +
				(uint64_t)set->check_interval_secs * 1000;
			T_BEGIN {
				failed = check_all_users(&w);
			} T_END;
		}

		if (failed == 0)
			w.backoff_secs = 0;
		else if (w.backoff_secs == 0)
			w.backoff_secs = 1;
		else if (w.backoff_secs < MM_WATCH_MAX_BACKOFF_SECS)
			w.backoff_secs = I_MIN(w.backoff_secs * 2,
					       MM_WATCH_MAX_BACKOFF_SECS);
		watch_wait(&w);
	}

	i_info("mailmeta: stopping");
	mail_storage_service_deinit(&w.storage);
	mm_mirror_db_free(&w.db);
	mm_pending_deinit(&w.pending);
	i_close_fd(&w.inotify_fd);
	i_free(w.claim_dir);
	return 0;
}
