/*
 * mailmeta-plugin.c - the mail plugin "mailmeta": mark a user dirty when
 * their mailboxes change (doc/mailbox-mirror.md)
 *
 * Loaded in every protocol (imap, pop3, lmtp, doveadm) with
 *	mail_plugins = $mail_plugins notify mailmeta
 *	plugin { mailmeta_spool_dir = /var/spool/mailmeta }
 * it watches, through the notify plugin, every path that changes a mailbox:
 * saves and copies (LMTP delivery, Sieve fileinto, IMAP APPEND/COPY/MOVE,
 * doveadm), expunges (IMAP EXPUNGE and MOVE, POP3 DELE, autoexpunge,
 * doveadm expunge), flag and keyword updates, and folder create, rename,
 * delete, subscribe and update.  Its only reaction is to create the empty
 * file <mailmeta_spool_dir>/<percent-encoded user>: one open() per
 * committed transaction that changed something, never a database call, so
 * no IMAP, POP3 or LMTP command waits for PostgreSQL.  `doveadm mailmeta
 * watch` picks the file up and mirrors the user's state into PostgreSQL.
 * A failure to create the file is logged and never fails the command; the
 * watcher's periodic drift check repairs what a lost mark would miss.
 *
 * Without mailmeta_spool_dir the plugin stays inactive for the user.
 */
#include "lib.h"
#include "str.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "notify-plugin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mailmeta-spool.h"

#define MAILMETA_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mailmeta_user_module)

struct mailmeta_user {
	union mail_user_module_context module_ctx;
	const char *spool_dir;
	const char *marker_path;	/* <spool_dir>/<encoded user> */
};

/* One per mailbox transaction: whether it changed anything. */
struct mailmeta_txn {
	struct mail_user *user;
	bool changed;
};

const char *mailmeta_plugin_version = DOVECOT_ABI_VERSION;
const char *mailmeta_plugin_dependencies[] = { "notify", NULL };

void mailmeta_plugin_init(struct module *module);
void mailmeta_plugin_deinit(void);

static MODULE_CONTEXT_DEFINE_INIT(mailmeta_user_module,
				  &mail_user_module_register);
static struct notify_context *mailmeta_notify_ctx;

static void
mailmeta_mark_dirty(struct mail_user *user)
{
	struct mailmeta_user *muser = MAILMETA_USER_CONTEXT(user);
	int fd;

	if (muser == NULL)
		return;
	fd = open(muser->marker_path,
		  O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0660);
	if (fd == -1 && errno == ENOENT) {
		/* the spool directory is missing: make it, once */
		if (mkdir(muser->spool_dir, 0770) < 0 && errno != EEXIST) {
			e_error(user->event, "mailmeta: mkdir(%s) failed: %m",
				muser->spool_dir);
			return;
		}
		fd = open(muser->marker_path, O_WRONLY | O_CREAT | O_NOFOLLOW |
			  O_NONBLOCK | O_CLOEXEC, 0660);
	}
	if (fd == -1) {
		e_error(user->event, "mailmeta: open(%s) failed: %m "
			"(the mirror catches up at the next drift check)",
			muser->marker_path);
		return;
	}
	i_close_fd(&fd);
}

static void *
mailmeta_transaction_begin(struct mailbox_transaction_context *t)
{
	struct mailbox *box = mailbox_transaction_get_mailbox(t);
	struct mailmeta_txn *txn;

	if (MAILMETA_USER_CONTEXT(box->storage->user) == NULL)
		return NULL;
	txn = i_new(struct mailmeta_txn, 1);
	txn->user = box->storage->user;
	return txn;
}

static void
mailmeta_mail_changed(void *txn_ctx, struct mail *mail ATTR_UNUSED)
{
	struct mailmeta_txn *txn = txn_ctx;

	if (txn != NULL)
		txn->changed = TRUE;
}

static void
mailmeta_mail_copy(void *txn, struct mail *src ATTR_UNUSED, struct mail *dst)
{
	mailmeta_mail_changed(txn, dst);
}

static void
mailmeta_mail_update_flags(void *txn, struct mail *mail,
			   enum mail_flags old_flags ATTR_UNUSED)
{
	mailmeta_mail_changed(txn, mail);
}

static void
mailmeta_mail_update_keywords(void *txn, struct mail *mail,
			      const char *const *old_keywords ATTR_UNUSED)
{
	mailmeta_mail_changed(txn, mail);
}

static void
mailmeta_transaction_commit(void *txn_ctx,
			    struct mail_transaction_commit_changes *changes)
{
	struct mailmeta_txn *txn = txn_ctx;

	if (txn == NULL)
		return;
	if (txn->changed || (array_is_created(&changes->saved_uids) &&
			     array_count(&changes->saved_uids) > 0))
		mailmeta_mark_dirty(txn->user);
	i_free(txn);
}

static void
mailmeta_transaction_rollback(void *txn_ctx)
{
	struct mailmeta_txn *txn = txn_ctx;

	i_free(txn);
}

static void
mailmeta_mailbox_changed(struct mailbox *box)
{
	mailmeta_mark_dirty(box->storage->user);
}

static void
mailmeta_mailbox_delete_commit(void *txn ATTR_UNUSED, struct mailbox *box)
{
	mailmeta_mark_dirty(box->storage->user);
}

static void
mailmeta_mailbox_rename(struct mailbox *src, struct mailbox *dest ATTR_UNUSED)
{
	mailmeta_mark_dirty(src->storage->user);
}

static void
mailmeta_mailbox_set_subscribed(struct mailbox *box,
				bool subscribed ATTR_UNUSED)
{
	mailmeta_mark_dirty(box->storage->user);
}

static const struct notify_vfuncs mailmeta_notify_vfuncs = {
	.mail_transaction_begin = mailmeta_transaction_begin,
	.mail_save = mailmeta_mail_changed,
	.mail_copy = mailmeta_mail_copy,
	.mail_expunge = mailmeta_mail_changed,
	.mail_update_flags = mailmeta_mail_update_flags,
	.mail_update_keywords = mailmeta_mail_update_keywords,
	.mail_transaction_commit = mailmeta_transaction_commit,
	.mail_transaction_rollback = mailmeta_transaction_rollback,
	.mailbox_create = mailmeta_mailbox_changed,
	.mailbox_update = mailmeta_mailbox_changed,
	.mailbox_delete_commit = mailmeta_mailbox_delete_commit,
	.mailbox_rename = mailmeta_mailbox_rename,
	.mailbox_set_subscribed = mailmeta_mailbox_set_subscribed,
};

static void
mailmeta_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct mailmeta_user *muser;
	const char *dir;
	char name[MAILMETA_SPOOL_NAME_SIZE];

	dir = mail_user_plugin_getenv(user, "mailmeta_spool_dir");
	if (dir == NULL || dir[0] == '\0') {
		e_debug(user->event, "mailmeta: mailmeta_spool_dir not set, "
			"mirror marks disabled");
		return;
	}
	if (dir[0] != '/') {
		e_error(user->event, "mailmeta: mailmeta_spool_dir must be an "
			"absolute path, not '%s'; mirror marks disabled", dir);
		return;
	}
	if (!mailmeta_spool_encode(user->username, name, sizeof(name))) {
		e_error(user->event, "mailmeta: user name too long for the "
			"spool; mirror marks disabled");
		return;
	}

	muser = p_new(user->pool, struct mailmeta_user, 1);
	muser->module_ctx.super = *v;
	user->vlast = &muser->module_ctx.super;
	muser->spool_dir = p_strdup(user->pool, dir);
	muser->marker_path = p_strconcat(user->pool, dir, "/", name, NULL);
	MODULE_CONTEXT_SET(user, mailmeta_user_module, muser);
}

static struct mail_storage_hooks mailmeta_mail_storage_hooks = {
	.mail_user_created = mailmeta_mail_user_created,
};

void
mailmeta_plugin_init(struct module *module)
{
	mailmeta_notify_ctx = notify_register(&mailmeta_notify_vfuncs);
	mail_storage_hooks_add(module, &mailmeta_mail_storage_hooks);
}

void
mailmeta_plugin_deinit(void)
{
	mail_storage_hooks_remove(&mailmeta_mail_storage_hooks);
	notify_unregister(mailmeta_notify_ctx);
}
