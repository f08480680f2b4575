/*
 * mailmeta-milter.c - the daemon: a small supervisor and one filter process.
 *
 * libmilter owns SIGHUP, SIGTERM and SIGINT inside the process that runs
 * smfi_main() (SIGHUP would stop it), so the signals an administrator sends
 * go to a supervisor instead, which stays root, writes the pid file and
 * does nothing else:
 *   SIGHUP   the new configuration is checked here; only a valid one is
 *            passed on (over a pipe) and the filter swaps it in;
 *   SIGTERM  passed on (over the pipe): the filter defers new messages,
 *            finishes storing those at their end, stops its writers and
 *            exits; one that does not within 40 s is killed;
 *   filter crash  logged and the filter restarted after a second; one
 *            that keeps dying soon after its start (a socket it cannot
 *            bind, a database role it cannot use) is restarted after 2, 4
 *            ... up to 60 s, as Postfix's master throttles a failing
 *            service, instead of filling the log every second.
 * The filter process drops to the configured user before it opens the
 * milter socket, the journal or the database.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#include "mm-config.h"
#include "mm-extract.h"
#include "mm-journal.h"
#include "mm-log.h"
#include "mm-milter.h"
#include "mm-policy.h"
#include "mm-writer.h"

#ifndef MM_DEFAULT_CONFIG
#define MM_DEFAULT_CONFIG "/etc/mailmeta/mailmeta-milter.conf"
#endif

#define DRAIN_SECONDS 30
/* restarts of a filter process that died: the delay doubles up to the
   maximum while it keeps dying within STABLE seconds of its start */
#define RESTART_DELAY_MAX 60
#define RESTART_STABLE_SECONDS 60

static const char *config_path = MM_DEFAULT_CONFIG;
static struct mm_journal *journal;
static struct mm_writer *writer;
static struct mm_policy *policy;

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: mailmeta-milter [-c FILE] [-f] [-t] [-v]\n"
		"  -c FILE  configuration (default %s)\n"
		"  -f       stay in the foreground and log to standard error\n"
		"  -t       check the configuration and exit\n"
		"  -v       verbose logging\n", MM_DEFAULT_CONFIG);
}

static struct mm_config *
load_config_or_die(void)
{
	char *err = NULL;
	struct mm_config *cfg = mm_config_load(config_path, &err);

	if (cfg == NULL)
		mm_fatal("%s", err);
	return cfg;
}

/* ------------------------------------------------------------ filter */

static int
lookup_ids(const char *user, const char *group, uid_t *uid, gid_t *gid)
{
	struct passwd *pw = getpwnam(user);
	char *end;

	if (pw) {
		*uid = pw->pw_uid;
		*gid = pw->pw_gid;
	} else {
		*uid = (uid_t)strtoul(user, &end, 10);
		if (*user == '\0' || *end != '\0')
			return -1;
		*gid = (gid_t)*uid;
	}
	if (group) {
		struct group *gr = getgrnam(group);

		if (gr)
			*gid = gr->gr_gid;
		else {
			*gid = (gid_t)strtoul(group, &end, 10);
			if (*group == '\0' || *end != '\0')
				return -1;
		}
	}
	return 0;
}

static void
drop_privileges(const struct mm_config *cfg)
{
	uid_t uid;
	gid_t gid;

	if (geteuid() != 0)
		return;
	if (lookup_ids(cfg->user, cfg->group, &uid, &gid) != 0)
		mm_fatal("unknown user or group: %s%s%s", cfg->user,
			 cfg->group ? ":" : "", cfg->group ? cfg->group : "");
	if (uid == 0)
		mm_fatal("refusing to run as root: set [milter] user");
	if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
		mm_fatal("cannot drop privileges to %s: %s", cfg->user, strerror(errno));
}

static enum mm_write_result
replay_one(const char *doc, void *ctx)
{
	(void)ctx;
	return mm_writer_record(writer, doc, 30000);
}

static void *
replay_loop(void *arg)
{
	unsigned interval = *(unsigned *)arg;

	for (;;) {
		mm_journal_replay(journal, replay_one, NULL);
		sleep(interval);
	}
	return NULL;
}

struct control {
	int fd;
};

static _Noreturn void stop_filter(void);

/* Reads the supervisor's requests: 'r' reload, 't' stop. */
static void *
control_loop(void *arg)
{
	struct control *ctl = arg;
	char cmd;

	while (read(ctl->fd, &cmd, 1) == 1) {
		char *err = NULL;
		struct mm_config *cfg;

		if (cmd == 't')
			stop_filter();
		if ((cfg = mm_config_load(config_path, &err)) == NULL) {
			mm_error("reload: %s; keeping the old configuration", err);
			free(err);
			continue;
		}
		mm_writer_set_conninfo(writer, cfg->conninfo);
		if (policy)
			mm_policy_set_conninfo(policy, cfg->conninfo, cfg->policy_refresh);
		mm_milter_set_config(cfg);
		mm_info("configuration reloaded from %s", config_path);
	}
	/* The supervisor is gone: so are we. */
	stop_filter();
}

static void
start_thread(void *(*fn)(void *), void *arg)
{
	pthread_t t;
	int err = pthread_create(&t, NULL, fn, arg);

	if (err != 0)
		mm_fatal("cannot start a thread: %s", strerror(err));
	pthread_detach(t);
}

/*
 * Stopping does not go through libmilter's own shutdown, which can hang
 * with sessions in flight: messages reaching their end from now on are
 * deferred, those being stored are finished (at most DRAIN_SECONDS), the
 * writers stop, and the process exits.  Postfix defers whatever else was
 * in progress (milter_default_action), so nothing is lost.
 */
static _Noreturn void
stop_filter(void)
{
	mm_info("stopping: finishing the messages being stored");
	mm_milter_stop_storing();
	for (int i = 0; i < DRAIN_SECONDS * 10 && mm_milter_storing_messages() > 0; i++)
		usleep(100000);
	if (mm_milter_storing_messages() > 0)
		mm_warn("stopping with %u message(s) still being stored",
			mm_milter_storing_messages());
	else
		mm_writer_stop(&writer);
	mm_info("stopped");
	_exit(0);
}

static _Noreturn void
run_filter(struct mm_config *cfg, int control_fd)
{
	static struct control ctl;
	static unsigned replay_interval;
	char *err = NULL;

	umask(0007);
	drop_privileges(cfg);
	if ((journal = mm_journal_open(cfg->journal_dir, &err)) == NULL)
		mm_fatal("%s", err);
	mm_extract_library_init();
	writer = mm_writer_start(cfg->conninfo, cfg->pool_size, cfg->batch_size);
	if ((policy = mm_policy_start(cfg->conninfo, cfg->policy_refresh,
				      cfg->pool_size)) == NULL)
		mm_fatal("cannot start the policy checks");
	replay_interval = cfg->replay_interval;
	if (smfi_setconn(cfg->socket) != MI_SUCCESS ||
	    smfi_settimeout((int)cfg->milter_timeout) != MI_SUCCESS ||
	    mm_milter_register(writer, journal, policy) != 0 ||
	    smfi_opensocket(true) != MI_SUCCESS)
		mm_fatal("cannot listen on %s", cfg->socket);
	mm_info("listening on %s", cfg->socket);
	mm_milter_set_config(cfg);
	ctl.fd = control_fd;
	start_thread(control_loop, &ctl);
	start_thread(replay_loop, &replay_interval);

	smfi_main();
	stop_filter();	/* libmilter stopped on its own (a signal sent to us) */
}

/* -------------------------------------------------------- supervisor */

static pid_t
spawn_filter(int *control_fd)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) != 0)
		mm_fatal("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		mm_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		sigset_t lib;

		/* HUP, TERM and INT stay blocked in every thread of the filter:
		 * libmilter's own thread takes them with sigwait(). */
		sigemptyset(&lib);
		sigaddset(&lib, SIGHUP);
		sigaddset(&lib, SIGTERM);
		sigaddset(&lib, SIGINT);
		sigprocmask(SIG_SETMASK, &lib, NULL);
		close(fds[1]);
		run_filter(load_config_or_die(), fds[0]);
	}
	close(fds[0]);
	*control_fd = fds[1];
	return pid;
}

static void
write_pidfile(const char *path)
{
	FILE *f;

	if (path == NULL)
		return;
	if ((f = fopen(path, "we")) == NULL)
		mm_fatal("cannot write pid file %s: %s", path, strerror(errno));
	fprintf(f, "%ld\n", (long)getpid());
	fclose(f);
}

static void
reload(int control_fd)
{
	char *err = NULL;
	struct mm_config *cfg = mm_config_load(config_path, &err);

	if (cfg == NULL) {
		mm_error("SIGHUP: %s; keeping the old configuration", err);
		free(err);
		return;
	}
	mm_config_free(&cfg);
	if (write(control_fd, "r", 1) != 1)
		mm_error("SIGHUP: cannot reach the filter process: %s", strerror(errno));
}

static const char *
exit_text(int status)
{
	static char buf[64];

	if (WIFSIGNALED(status))
		snprintf(buf, sizeof(buf), "killed by signal %d", WTERMSIG(status));
	else
		snprintf(buf, sizeof(buf), "exit status %d", WEXITSTATUS(status));
	return buf;
}

static int
supervise(const char *pidfile)
{
	sigset_t set;
	int sig, control_fd, status;
	pid_t child;
	bool stopping = false;
	struct timespec tick = { .tv_sec = 1 };
	time_t kill_at = 0, started, restart_at = 0;
	unsigned restart_delay = 1;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	write_pidfile(pidfile);
	child = spawn_filter(&control_fd);
	started = time(NULL);

	for (;;) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (child == 0) {	/* waiting to restart a filter that died */
			if (sig == SIGTERM || sig == SIGINT)
				break;
			if (time(NULL) >= restart_at) {
				child = spawn_filter(&control_fd);
				started = time(NULL);
			}
			continue;	/* a new filter reads the configuration anyway */
		}
		if (stopping && kill_at && time(NULL) >= kill_at) {
			mm_warn("filter process %ld did not stop; killing it", (long)child);
			kill(child, SIGKILL);
			kill_at = 0;
		}
		if (sig == SIGHUP && !stopping) {
			reload(control_fd);
		} else if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
			stopping = true;
			kill_at = time(NULL) + DRAIN_SECONDS + 10;
			if (write(control_fd, "t", 1) != 1)
				kill(child, SIGTERM);
		} else if (sig == SIGCHLD) {
			if (waitpid(child, &status, WNOHANG) != child)
				continue;
			close(control_fd);
			if (stopping)
				break;
			if (time(NULL) - started >= RESTART_STABLE_SECONDS)
				restart_delay = 1;
			mm_error("filter process %ld ended unexpectedly (%s); "
				 "restarting in %u s", (long)child, exit_text(status),
				 restart_delay);
			restart_at = time(NULL) + restart_delay;
			restart_delay = restart_delay * 2 > RESTART_DELAY_MAX ?
				RESTART_DELAY_MAX : restart_delay * 2;
			child = 0;
		}
	}
	if (pidfile)
		unlink(pidfile);
	mm_info("supervisor stopped");
	return 0;
}

int
main(int argc, char **argv)
{
	bool foreground = false, test_only = false, verbose = false;
	struct mm_config *cfg;
	int opt;

	while ((opt = getopt(argc, argv, "c:fhtv")) != -1) {
		switch (opt) {
		case 'c': config_path = optarg; break;
		case 'f': foreground = true; break;
		case 't': test_only = true; break;
		case 'v': verbose = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	mm_log_open("mailmeta-milter", "mail", foreground || test_only);
	mm_log_set_verbose(verbose);
	cfg = load_config_or_die();
	if (test_only) {
		printf("%s: configuration is valid\n", config_path);
		mm_config_free(&cfg);
		return 0;
	}
	if (!foreground) {
		mm_log_open("mailmeta-milter", cfg->syslog_facility, false);
		if (daemon(0, 0) != 0)
			mm_fatal("cannot become a daemon: %s", strerror(errno));
	}
	char *pidfile = cfg->pidfile ? strdup(cfg->pidfile) : NULL;

	mm_config_free(&cfg);
	return supervise(pidfile);
}
