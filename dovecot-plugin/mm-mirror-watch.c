/*
 * mm-mirror-watch.c - `doveadm mailmeta watch` (see mm-mirror-watch.h)
 *
 * Users are opened through Dovecot's mail-storage-service with temporary
 * privilege drops, as `doveadm -A` does, so one root process can serve
 * every user.  After each user the watcher takes root back: Dovecot's auth
 * lists users only to root (or the socket's owner), and the spool is
 * handled as root.  The spool's .claimed/ directory still gets the spool's
 * own owner, so a watcher not started as root works with its own spool.
 *
 * With more than one worker the command becomes a supervisor that starts
 * each worker as the same command again, in a process of its own (see
 * watch_spawn()): each worker has its own inotify watch, PostgreSQL
 * connection and auth connection, and owns the users whose mark name
 * hashes (CRC-32) to its number, so no user is ever synced by two workers
 * at once.  The supervisor restarts a worker that ends on its own (with a
 * back-off) and passes SIGTERM on; a worker ends when its supervisor does.
 */
#include "lib.h"
#include "array.h"
#include "crc32.h"
#include "hostpid.h"
#include "lib-signals.h"
#include "master-service.h"
#include "auth-master.h"
#include "mail-storage-service.h"
#include "mail-user.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sysexits.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#ifdef __linux__
#  include <sys/prctl.h>
#endif
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
/* how often the supervisor looks for ended workers */
#define MM_WATCH_SUPERVISE_MSECS 500
/* a worker that ran this long before it ended is restarted at once */
#define MM_WATCH_WORKER_STABLE_SECS 60

struct mm_watch {
	const struct mm_mirror_watch_settings *set;
	/* this process syncs the users whose mark names hash to worker
	   (modulo set->workers) */
	unsigned int worker;
	char *claim_dir;
	struct mm_mirror_db *db;
	struct mail_storage_service_ctx *storage;
	struct mm_pending *pending;
	int inotify_fd;
	/* the event queue overflowed: names were lost, look at the spool */
	bool rescan;
	unsigned int term_counter;
	/* a worker's supervisor (its parent), 0 when running alone */
	pid_t supervisor;
	unsigned int backoff_secs;
	uint64_t next_check;	/* monotonic msecs */
	uint64_t last_spool_pass;	/* monotonic msecs */
};

static bool
watch_stopping(const struct mm_watch *w)
{
	return signal_term_counter != w->term_counter ||
		(w->supervisor != 0 && getppid() != w->supervisor);
}

/* Whether this worker syncs the user whose mark name is name. */
static bool
watch_owns(const struct mm_watch *w, const char *name)
{
	return w->set->workers <= 1 ||
		crc32_str(name) % w->set->workers == w->worker;
}

/* The same for a user name, as the userdb lists it.  A name too long for a
   mark is never marked: the first worker checks it for drift. */
static bool
watch_owns_user(const struct mm_watch *w, const char *user)
{
	char name[MAILMETA_SPOOL_NAME_SIZE];

	if (!mailmeta_spool_encode(user, name, sizeof(name)))
		return w->worker == 0;
	return watch_owns(w, name);
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
		if (!watch_owns(w, name))
			continue;
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
			    ev->name[0] != '.' && watch_owns(w, ev->name))
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
		if (!watch_owns_user(w, user))
			continue;
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

		/* a worker looks at its supervisor this often */
		if (w->supervisor != 0 && timeout > MM_WATCH_POLL_MSECS)
			timeout = MM_WATCH_POLL_MSECS;

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
	array_foreach_elem(&names, name) {
		if (watch_owns(w, name))
			put_back(w, name);
	}

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

/* One worker: syncs its users until SIGTERM/SIGINT. */
static int
watch_run_worker(const struct mm_mirror_watch_settings *set,
		 unsigned int worker)
{
	struct mm_watch w;
	int ret;

	i_zero(&w);
	w.set = set;
	w.worker = worker;
	w.inotify_fd = -1;
	/* SIGTERM before now ends us too: the supervisor may have passed it
	   on while this worker was starting (this command is all the
	   process does) */
	w.term_counter = 0;
	/* A worker notices an ended supervisor by being re-parented:
	   PR_SET_PDEATHSIG does not outlast the first privilege drop. */
	if (set->worker_given)
		w.supervisor = getppid();
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
	       "drift check every %u s)%s", set->spool_dir,
	       set->sync_delay_msecs,
	       I_MAX(set->sync_max_delay_msecs, set->sync_delay_msecs),
	       set->check_interval_secs, set->workers <= 1 ? "" :
	       t_strdup_printf(" as worker %u of %u", worker + 1,
			       set->workers));

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

struct watch_worker {
	pid_t pid;		/* 0: not running */
	uint64_t started;	/* monotonic msecs */
	unsigned int backoff_secs;
	uint64_t restart_at;	/* monotonic msecs */
};

/* The command line this process was started with, to start each worker
   as a process of its own: /proc/self/cmdline, NUL-separated, with *argc_r
   arguments and three NULLs after them.  NULL when it cannot be read
   (logged). */
static char **
watch_own_argv(unsigned int *argc_r)
{
	static const char *path = "/proc/self/cmdline";
	char buf[8192];
	ssize_t len;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		i_error("mailmeta: open(%s) failed: %m", path);
		return NULL;
	}
	len = read(fd, buf, sizeof(buf));
	i_close_fd(&fd);
	if (len <= 0 || (size_t)len == sizeof(buf) || buf[len - 1] != '\0') {
		i_error("mailmeta: %s: %s", path, len < 0 ? strerror(errno) :
			"empty or too long");
		return NULL;
	}
	ARRAY(char *) args;
	i_array_init(&args, 8);
	for (ssize_t pos = 0; pos < len; pos += strlen(buf + pos) + 1) {
		char *arg = i_strdup(buf + pos);
		array_push_back(&args, &arg);
	}
	*argc_r = array_count(&args);
	/* room for the worker's "-w i/n" and the terminating NULL */
	for (unsigned int i = 0; i < 3; i++)
		array_append_zero(&args);
	return array_free_without_data(&args);
}

static void
watch_free_argv(char ***argv)
{
	for (char **arg = *argv; *arg != NULL; arg++)
		i_free(*arg);
	i_free(*argv);
}

/* Starts worker number i: this command again, in a process of its own
   (a forked copy would share Dovecot's ioloop and connections with the
   supervisor), with "-w i/n" added to tell it which worker of how many it
   is: the command line, unlike the environment, survives doveadm's
   re-execution through doveconf, and a worker that took itself for a
   supervisor would start workers of its own.  Returns its pid, or -1. */
static pid_t
watch_spawn(char **argv, unsigned int argc, unsigned int i,
	    unsigned int workers)
{
	pid_t supervisor = getpid(), pid;

	if ((pid = fork()) < 0) {
		i_error("mailmeta: fork() failed: %m");
		return -1;
	}
	if (pid > 0)
		return pid;
#ifdef __linux__
	/* kept across execve(), until the worker first changes its euid:
	   it covers the worker's start (see watch_run_worker()) */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
		i_error("mailmeta: prctl(PR_SET_PDEATHSIG) failed: %m");
#endif
	if (getppid() != supervisor)
		_exit(0);	/* it ended before prctl() */
	/* argv has room for these two and the terminating NULL */
	argv[argc] = (char *)"-w";
	argv[argc + 1] = (char *)t_strdup_printf("%u/%u", i, workers);
	argv[argc + 2] = NULL;
	execv("/proc/self/exe", argv);
	i_error("mailmeta: execv(/proc/self/exe) failed: %m");
	_exit(EX_OSERR);
}

/* Notes a worker that has ended and when to start it again: at once after
   a long life, else after a back-off (1 s doubling to 30 s) so a worker
   that cannot start does not spin. */
static void
watch_worker_ended(struct watch_worker *worker, unsigned int i, int status)
{
	uint64_t now = monotonic_msecs();

	if (now - worker->started >= MM_WATCH_WORKER_STABLE_SECS * 1000)
		worker->backoff_secs = 0;
	else if (worker->backoff_secs == 0)
		worker->backoff_secs = 1;
	else
		worker->backoff_secs = I_MIN(worker->backoff_secs * 2,
					     MM_WATCH_MAX_BACKOFF_SECS);
	worker->restart_at = now + worker->backoff_secs * 1000;
	if (WIFSIGNALED(status)) {
		i_error("mailmeta: worker %u (pid %ld) killed by signal %d; "
			"restarting it in %u s", i + 1, (long)worker->pid,
			WTERMSIG(status), worker->backoff_secs);
	} else {
		i_error("mailmeta: worker %u (pid %ld) ended with status %d; "
			"restarting it in %u s", i + 1, (long)worker->pid,
			WEXITSTATUS(status), worker->backoff_secs);
	}
	worker->pid = 0;
}

/* Ends the workers and waits for them (each finishes the user it is
   syncing). */
static void
watch_stop_workers(struct watch_worker *workers, unsigned int count)
{
	for (unsigned int i = 0; i < count; i++) {
		if (workers[i].pid > 0 && kill(workers[i].pid, SIGTERM) < 0 &&
		    errno != ESRCH)
			i_error("mailmeta: kill(%ld) failed: %m",
				(long)workers[i].pid);
	}
	for (unsigned int i = 0; i < count; i++) {
		while (workers[i].pid > 0 &&
		       waitpid(workers[i].pid, NULL, 0) < 0 && errno == EINTR) ;
		workers[i].pid = 0;
	}
}

/* Runs set->workers workers until SIGTERM/SIGINT. */
static int
watch_supervise(const struct mm_mirror_watch_settings *set)
{
	struct watch_worker *workers;
	unsigned int term_counter = signal_term_counter;
	char **argv;
	unsigned int argc;
	int status;

	if ((argv = watch_own_argv(&argc)) == NULL)
		return -1;
	workers = i_new(struct watch_worker, set->workers);
	while (signal_term_counter == term_counter) {
		for (unsigned int i = 0; i < set->workers; i++) {
			struct watch_worker *worker = &workers[i];
			pid_t pid;

			if (worker->pid > 0) {
				pid = waitpid(worker->pid, &status, WNOHANG);
				if (pid == 0 || (pid < 0 && errno == EINTR))
					continue;
				watch_worker_ended(worker, i,
						   pid < 0 ? 0 : status);
			}
			if (monotonic_msecs() < worker->restart_at)
				continue;
			worker->started = monotonic_msecs();
			if ((pid = watch_spawn(argv, argc, i, set->workers)) < 0) {
				worker->backoff_secs = MM_WATCH_MAX_BACKOFF_SECS;
				worker->restart_at = monotonic_msecs() +
					MM_WATCH_MAX_BACKOFF_SECS * 1000;
				continue;
			}
			worker->pid = pid;
		}
		/* a signal ends the wait early */
		(void)poll(NULL, 0, MM_WATCH_SUPERVISE_MSECS);
	}
	i_info("mailmeta: stopping %u workers", set->workers);
	watch_stop_workers(workers, set->workers);
	i_free(workers);
	watch_free_argv(&argv);
	return 0;
}

int
mm_mirror_watch_run(const struct mm_mirror_watch_settings *set)
{
	struct stat st;

	/* the supervisor's and every worker's lines name their process */
	if (set->workers > 1)
		i_set_failure_prefix("doveadm(%s): ", my_pid);
	if (set->worker_given)
		return watch_run_worker(set, set->worker);
	if (set->workers <= 1)
		return watch_run_worker(set, 0);
	/* what every worker would fail on: fail once, before starting them */
	if (stat(set->spool_dir, &st) < 0) {
		i_error("mailmeta: stat(%s) failed: %m (mailmeta_spool_dir)",
			set->spool_dir);
		return -1;
	}
	i_info("mailmeta: starting %u workers (spool %s)", set->workers,
	       set->spool_dir);
	return watch_supervise(set);
}
