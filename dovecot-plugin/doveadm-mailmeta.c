/*
 * doveadm-mailmeta.c - the doveadm plugin "mailmeta": commands that mirror
 * mailbox state into PostgreSQL (doc/mailbox-mirror.md)
 *
 *	doveadm mailmeta sync   [-u USER | -A]  sync now (only what changed)
 *	doveadm mailmeta resync [-u USER | -A]  forget the user's mirror and
 *	                                        rebuild it in full
 *	doveadm mailmeta watch                  the long-running syncer: dirty
 *	                                        marks, retries, drift checks
 *	                                        (-w i/n: worker i of n, as the
 *	                                        watcher starts its workers)
 *
 * Settings (plugin section):
 *	mailmeta_dsn             libpq connection string, role mailmeta_mirror
 *	mailmeta_spool_dir       where the mail plugin leaves dirty marks
 *	mailmeta_check_interval  drift check period of `watch` (default 10 min,
 *	                         0 disables it)
 *	mailmeta_sync_delay      how long a user's changes must pause before
 *	                         `watch` syncs them (default 250 ms)
 *	mailmeta_sync_max_delay  how long a change waits at most while its
 *	                         user keeps changing (default 2 s)
 *	mailmeta_watch_workers   processes of `watch` that sync users in
 *	                         parallel (default: one per two CPUs, 1 to 4)
 *	mailmeta_stamped_grace   how long a message the milter stamped waits
 *	                         for the milter's record before one is built
 *	                         from the mailbox (default 1 hour)
 *
 * This plugin holds everything heavy (libpq, libmailmeta with GMime and
 * jansson, OpenSSL), so the mail plugin loaded by imap, pop3 and lmtp stays
 * tiny and never touches the database.  It installs into Dovecot's
 * doveadm module directory.
 */
#include "lib.h"
#include "strnum.h"
#include "module-dir.h"
#include "settings-parser.h"
#include "mail-user.h"
#include "doveadm-mail.h"
#include "doveadm-print.h"

#include <sysexits.h>
#include <unistd.h>

#include "mm-mirror-db.h"
#include "mm-mirror-sync.h"
#include "mm-mirror-watch.h"

#define MAILMETA_DEFAULT_CHECK_INTERVAL "10 min"
#define MAILMETA_DEFAULT_SYNC_DELAY "250 ms"
#define MAILMETA_DEFAULT_SYNC_MAX_DELAY "2 s"
#define MAILMETA_DEFAULT_LOCK_TIMEOUT "10 s"
/* the mirror may lag by this much: more is a typo, not a choice */
#define MAILMETA_MAX_SYNC_DELAY_MSECS 60000
/* mailmeta_watch_workers: each holds a PostgreSQL connection */
#define MAILMETA_MAX_WATCH_WORKERS 64
#define MAILMETA_DEFAULT_WATCH_WORKERS_MAX 4

struct mailmeta_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	struct mm_mirror_db *db;
	bool forget;
};

const char *doveadm_mailmeta_plugin_version = DOVECOT_ABI_VERSION;

void doveadm_mailmeta_plugin_init(struct module *module);
void doveadm_mailmeta_plugin_deinit(void);

static int
cmd_mailmeta_sync_run(struct doveadm_mail_cmd_context *_ctx,
		      struct mail_user *user)
{
	struct mailmeta_cmd_context *ctx =
		container_of(_ctx, struct mailmeta_cmd_context, ctx);
	struct mm_mirror_sync_stats stats;
	enum mm_mirror_result result;
	const char *dsn, *error;

	if (ctx->db == NULL) {
		dsn = mail_user_plugin_getenv(user, "mailmeta_dsn");
		if (dsn == NULL || dsn[0] == '\0') {
			i_error("mailmeta: mailmeta_dsn is not set");
			doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTPOSSIBLE);
			return -1;
		}
		ctx->db = mm_mirror_db_new(dsn);
	}

	result = mm_mirror_sync_user(ctx->db, user, ctx->forget, &stats, &error);
	switch (result) {
	case MM_MIRROR_OK:
		doveadm_print_num(stats.folders);
		doveadm_print_num(stats.folders_synced);
		doveadm_print_num(stats.full_sends);
		doveadm_print_num(stats.messages);
		doveadm_print_num(stats.expunges);
		doveadm_print_num(stats.records);
		doveadm_print_num(stats.deferred);
		return 0;
	case MM_MIRROR_NO_USER:
		i_error("mailmeta: not in mail.users: %s", error);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTFOUND);
		return -1;
	case MM_MIRROR_DB_DOWN:
	case MM_MIRROR_FAILED:
		break;
	}
	i_error("mailmeta: sync failed: %s", error);
	doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
	return -1;
}

static void
cmd_mailmeta_sync_init(struct doveadm_mail_cmd_context *_ctx ATTR_UNUSED,
		       const char *const args[] ATTR_UNUSED)
{
	doveadm_print_header_simple("folders");
	doveadm_print_header_simple("synced");
	doveadm_print_header_simple("full");
	doveadm_print_header_simple("messages");
	doveadm_print_header_simple("expunged");
	doveadm_print_header_simple("records");
	doveadm_print_header_simple("deferred");
}

static void
cmd_mailmeta_sync_deinit(struct doveadm_mail_cmd_context *_ctx)
{
	struct mailmeta_cmd_context *ctx =
		container_of(_ctx, struct mailmeta_cmd_context, ctx);

	mm_mirror_db_free(&ctx->db);
}

static struct doveadm_mail_cmd_context *
cmd_mailmeta_alloc(bool forget)
{
	struct mailmeta_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct mailmeta_cmd_context);
	ctx->forget = forget;
	ctx->ctx.v.init = cmd_mailmeta_sync_init;
	ctx->ctx.v.run = cmd_mailmeta_sync_run;
	ctx->ctx.v.deinit = cmd_mailmeta_sync_deinit;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &ctx->ctx;
}

static struct doveadm_mail_cmd_context *
cmd_mailmeta_sync_alloc(void)
{
	return cmd_mailmeta_alloc(FALSE);
}

static struct doveadm_mail_cmd_context *
cmd_mailmeta_resync_alloc(void)
{
	return cmd_mailmeta_alloc(TRUE);
}

/* A delay setting (msecs): 0 to a minute (mailmeta_lock_timeout too).
   -1 logged when invalid. */
static int
watch_delay_setting(const char *name, const char *default_value,
		    unsigned int *msecs_r)
{
	const char *value = doveadm_plugin_getenv(name), *error;

	if (value == NULL || value[0] == '\0')
		value = default_value;
	if (settings_get_time_msecs(value, msecs_r, &error) < 0) {
		i_error("mailmeta: invalid %s '%s': %s", name, value, error);
		return -1;
	}
	if (*msecs_r > MAILMETA_MAX_SYNC_DELAY_MSECS) {
		i_error("mailmeta: %s '%s' is over a minute", name, value);
		return -1;
	}
	return 0;
}

/* mailmeta_watch_workers: 1 to 64; unset, one per two online CPUs, at
   least 1 and at most 4.  Each worker with its PostgreSQL backend keeps
   about one CPU busy while it catches up; more workers shorten the catch-up
   but cost more CPU in all (more, smaller syncs; backends contending for
   the same indexes: +30 % measured with two workers on two saturated
   CPUs), so by default the mirror takes at most half of a host.  -1 logged
   when invalid. */
static int
watch_workers_setting(unsigned int *workers_r)
{
	const char *value = doveadm_plugin_getenv("mailmeta_watch_workers");
	long cpus;

	if (value == NULL || value[0] == '\0') {
		cpus = sysconf(_SC_NPROCESSORS_ONLN) / 2;
		*workers_r = cpus < 1 ? 1 :
			I_MIN((unsigned int)cpus,
			      MAILMETA_DEFAULT_WATCH_WORKERS_MAX);
		return 0;
	}
	if (str_to_uint(value, workers_r) < 0 || *workers_r == 0 ||
	    *workers_r > MAILMETA_MAX_WATCH_WORKERS) {
		i_error("mailmeta: invalid mailmeta_watch_workers '%s': "
			"a number from 1 to %u", value,
			MAILMETA_MAX_WATCH_WORKERS);
		return -1;
	}
	return 0;
}

/* A worker started by the watcher's supervisor is told on its command line
   (-w i/n, mm-mirror-watch.h) which one it is, and of how many: the
   supervisor's count, whatever the configuration says now.  -1 logged
   when that is malformed. */
static int
watch_worker_param(const struct doveadm_cmd_context *cctx,
		   struct mm_mirror_watch_settings *set)
{
	const char *value, *end;

	if (!doveadm_cmd_param_str(cctx, "worker", &value))
		return 0;
	if (str_parse_uint(value, &set->worker, &end) < 0 || *end != '/' ||
	    str_to_uint(end + 1, &set->workers) < 0 ||
	    set->workers > MAILMETA_MAX_WATCH_WORKERS ||
	    set->worker >= set->workers) {
		i_error("mailmeta: invalid worker '%s': i/n, i < n <= %u",
			value, MAILMETA_MAX_WATCH_WORKERS);
		return -1;
	}
	set->worker_given = TRUE;
	return 0;
}

static void
cmd_mailmeta_watch(struct doveadm_cmd_context *cctx)
{
	struct mm_mirror_watch_settings set;
	const char *interval, *error;
	unsigned int lock_timeout_msecs;

	i_zero(&set);
	set.spool_dir = doveadm_plugin_getenv("mailmeta_spool_dir");
	set.dsn = doveadm_plugin_getenv("mailmeta_dsn");
	interval = doveadm_plugin_getenv("mailmeta_check_interval");
	if (interval == NULL || interval[0] == '\0')
		interval = MAILMETA_DEFAULT_CHECK_INTERVAL;

	if (set.spool_dir == NULL || set.spool_dir[0] != '/') {
		i_error("mailmeta: mailmeta_spool_dir must be set to an "
			"absolute path");
		doveadm_exit_code = EX_CONFIG;
		return;
	}
	if (set.dsn == NULL || set.dsn[0] == '\0') {
		i_error("mailmeta: mailmeta_dsn is not set");
		doveadm_exit_code = EX_CONFIG;
		return;
	}
	if (settings_get_time(interval, &set.check_interval_secs, &error) < 0) {
		i_error("mailmeta: invalid mailmeta_check_interval '%s': %s",
			interval, error);
		doveadm_exit_code = EX_CONFIG;
		return;
	}
	if (watch_delay_setting("mailmeta_sync_delay",
				MAILMETA_DEFAULT_SYNC_DELAY,
				&set.sync_delay_msecs) < 0 ||
	    watch_delay_setting("mailmeta_sync_max_delay",
				MAILMETA_DEFAULT_SYNC_MAX_DELAY,
				&set.sync_max_delay_msecs) < 0 ||
	    watch_delay_setting("mailmeta_lock_timeout",
				MAILMETA_DEFAULT_LOCK_TIMEOUT,
				&lock_timeout_msecs) < 0 ||
	    watch_workers_setting(&set.workers) < 0) {
		doveadm_exit_code = EX_CONFIG;
		return;
	}
	set.lock_timeout_secs = (lock_timeout_msecs + 999) / 1000;
	if (watch_worker_param(cctx, &set) < 0) {
		doveadm_exit_code = EX_USAGE;
		return;
	}
	if (mm_mirror_watch_run(&set) < 0)
		doveadm_exit_code = EX_TEMPFAIL;
}

static struct doveadm_cmd_ver2 mailmeta_commands[] = {
	{
		.name = "mailmeta sync",
		.mail_cmd = cmd_mailmeta_sync_alloc,
		.usage = DOVEADM_CMD_MAIL_USAGE_PREFIX,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "mailmeta resync",
		.mail_cmd = cmd_mailmeta_resync_alloc,
		.usage = DOVEADM_CMD_MAIL_USAGE_PREFIX,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "mailmeta watch",
		.cmd = cmd_mailmeta_watch,
		/* -w: how the supervisor starts its workers */
		.usage = "[-w <worker>/<workers>]",
		.flags = CMD_FLAG_NO_PRINT,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('w', "worker", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAMS_END
	},
};

void
doveadm_mailmeta_plugin_init(struct module *module ATTR_UNUSED)
{
	for (unsigned int i = 0; i < N_ELEMENTS(mailmeta_commands); i++)
		doveadm_cmd_register_ver2(&mailmeta_commands[i]);
}

void
doveadm_mailmeta_plugin_deinit(void)
{
}
