/*
 * mm-mirror-pending.c - when the watcher syncs a dirty user (see
 * mm-mirror-pending.h)
 *
 * One entry per spool name that has a change not yet synced (when the
 * first and the last change were seen) or whose last sync failed (how many
 * times in a row, and when the next may start).  The entries live in the
 * system pool and go when neither is true any more, so the table holds no
 * more than the marks in the spool, the names of events whose mark was
 * already taken and the users in back-off.
 */
#include "lib.h"
#include "array.h"
#include "hash.h"

#include "mm-mirror-pending.h"

#define MM_PENDING_RETRY_FIRST_MSECS 1000
#define MM_PENDING_RETRY_MAX_MSECS 30000

struct mm_pending_user {
	/* a change not yet synced: when the first and the last were seen */
	bool changed;
	uint64_t first_seen;
	uint64_t last_seen;
	/* syncs failed in a row, and when the next may start */
	unsigned int failures;
	uint64_t retry_at;
};

struct mm_pending {
	unsigned int quiet_msecs;
	unsigned int max_msecs;
	HASH_TABLE(char *, struct mm_pending_user *) users;
};

struct mm_pending *
mm_pending_init(unsigned int quiet_msecs, unsigned int max_msecs)
{
	struct mm_pending *pending = i_new(struct mm_pending, 1);

	pending->quiet_msecs = quiet_msecs;
	/* a longest delay shorter than the quiet time would make the quiet
	   time meaningless; the quiet time wins */
	pending->max_msecs = I_MAX(max_msecs, quiet_msecs);
	hash_table_create(&pending->users, default_pool, 0, str_hash, strcmp);
	return pending;
}

void
mm_pending_deinit(struct mm_pending **_pending)
{
	struct mm_pending *pending = *_pending;
	struct hash_iterate_context *iter;
	char *name;
	struct mm_pending_user *user;

	*_pending = NULL;
	iter = hash_table_iterate_init(pending->users);
	while (hash_table_iterate(iter, pending->users, &name, &user)) {
		i_free(name);
		i_free(user);
	}
	hash_table_iterate_deinit(&iter);
	hash_table_destroy(&pending->users);
	i_free(pending);
}

/* The entry of name, made (empty) when missing. */
static struct mm_pending_user *
pending_user_get(struct mm_pending *pending, const char *name)
{
	struct mm_pending_user *user = hash_table_lookup(pending->users, name);

	if (user == NULL) {
		user = i_new(struct mm_pending_user, 1);
		hash_table_insert(pending->users, i_strdup(name), user);
	}
	return user;
}

/* Drops name's entry once it has neither a change nor a failure. */
static void
pending_user_drop_if_idle(struct mm_pending *pending, const char *name)
{
	char *key;
	struct mm_pending_user *user;

	if (!hash_table_lookup_full(pending->users, name, &key, &user) ||
	    user->changed || user->failures > 0)
		return;
	hash_table_remove(pending->users, name);
	i_free(key);
	i_free(user);
}

/* name has a change from now on, unless it had one already. */
static struct mm_pending_user *
pending_user_change(struct mm_pending *pending, const char *name,
		    uint64_t now)
{
	struct mm_pending_user *user = pending_user_get(pending, name);

	if (!user->changed) {
		user->changed = TRUE;
		user->first_seen = now;
		user->last_seen = now;
	}
	return user;
}

void
mm_pending_found(struct mm_pending *pending, const char *name, uint64_t now)
{
	(void)pending_user_change(pending, name, now);
}

void
mm_pending_touch(struct mm_pending *pending, const char *name, uint64_t now)
{
	struct mm_pending_user *user = pending_user_change(pending, name, now);

	/* times only move forward, even if a caller's clock reading was
	   taken before another's */
	if (now > user->last_seen)
		user->last_seen = now;
}

static uint64_t
pending_user_due_at(const struct mm_pending *pending,
		    const struct mm_pending_user *user)
{
	uint64_t quiet = user->last_seen + pending->quiet_msecs;
	uint64_t longest = user->first_seen + pending->max_msecs;
	uint64_t due = I_MIN(quiet, longest);

	return user->failures == 0 ? due : I_MAX(due, user->retry_at);
}

bool
mm_pending_is_due(const struct mm_pending *pending, const char *name,
		  uint64_t now)
{
	const struct mm_pending_user *user =
		hash_table_lookup(pending->users, name);

	return user != NULL && user->changed &&
		pending_user_due_at(pending, user) <= now;
}

void
mm_pending_forget(struct mm_pending *pending, const char *name)
{
	struct mm_pending_user *user = hash_table_lookup(pending->users, name);

	if (user == NULL)
		return;
	user->changed = FALSE;
	pending_user_drop_if_idle(pending, name);
}

void
mm_pending_failed(struct mm_pending *pending, const char *name, uint64_t now)
{
	struct mm_pending_user *user = pending_user_get(pending, name);
	unsigned int wait = MM_PENDING_RETRY_FIRST_MSECS;

	user->failures++;
	for (unsigned int i = 1; i < user->failures &&
		     wait < MM_PENDING_RETRY_MAX_MSECS; i++)
		wait *= 2;
	user->retry_at = now + I_MIN(wait, MM_PENDING_RETRY_MAX_MSECS);
}

void
mm_pending_succeeded(struct mm_pending *pending, const char *name)
{
	struct mm_pending_user *user = hash_table_lookup(pending->users, name);

	if (user == NULL)
		return;
	user->failures = 0;
	pending_user_drop_if_idle(pending, name);
}

void
mm_pending_get_due(const struct mm_pending *pending, uint64_t now,
		   ARRAY_TYPE(const_string) *names)
{
	struct hash_iterate_context *iter;
	char *name;
	struct mm_pending_user *user;

	iter = hash_table_iterate_init(pending->users);
	while (hash_table_iterate(iter, pending->users, &name, &user)) {
		if (user->changed && pending_user_due_at(pending, user) <= now) {
			const char *copy = t_strdup(name);
			array_push_back(names, &copy);
		}
	}
	hash_table_iterate_deinit(&iter);
}

unsigned int
mm_pending_next_due(const struct mm_pending *pending, uint64_t now)
{
	struct hash_iterate_context *iter;
	char *name;
	struct mm_pending_user *user;
	uint64_t next = UINT64_MAX;

	iter = hash_table_iterate_init(pending->users);
	while (hash_table_iterate(iter, pending->users, &name, &user)) {
		if (user->changed)
			next = I_MIN(next, pending_user_due_at(pending, user));
	}
	hash_table_iterate_deinit(&iter);

	if (next == UINT64_MAX)
		return UINT_MAX;
	if (next <= now)
		return 0;
	/* never further than the longest delay or back-off, whatever the
	   callers' clock readings were */
	return (unsigned int)I_MIN(next - now,
		(uint64_t)I_MAX(pending->max_msecs, MM_PENDING_RETRY_MAX_MSECS));
}

/* How many entries have a change (changed) or a failure (!changed). */
static unsigned int
pending_count_where(const struct mm_pending *pending, bool changed)
{
	struct hash_iterate_context *iter;
	char *name;
	struct mm_pending_user *user;
	unsigned int count = 0;

	iter = hash_table_iterate_init(pending->users);
	while (hash_table_iterate(iter, pending->users, &name, &user)) {
		if (changed ? user->changed : user->failures > 0)
			count++;
	}
	hash_table_iterate_deinit(&iter);
	return count;
}

unsigned int
mm_pending_count(const struct mm_pending *pending)
{
	return pending_count_where(pending, TRUE);
}

unsigned int
mm_pending_failing_count(const struct mm_pending *pending)
{
	return pending_count_where(pending, FALSE);
}
