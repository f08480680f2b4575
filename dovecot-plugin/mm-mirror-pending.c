/*
 * mm-mirror-pending.c - when the watcher syncs a dirty user (see
 * mm-mirror-pending.h)
 *
 * One entry per spool name with a change not yet synced: when the first
 * and the last change were seen.  The entries live in the system pool and
 * go when their user is synced, so the table holds no more than the marks
 * in the spool plus the names of events whose mark was already taken.  A
 * second table holds the users whose last sync failed, until one succeeds.
 */
#include "lib.h"
#include "array.h"
#include "hash.h"

#include "mm-mirror-pending.h"

#define MM_PENDING_RETRY_FIRST_MSECS 1000
#define MM_PENDING_RETRY_MAX_MSECS 30000

struct mm_pending_user {
	uint64_t first_seen;
	uint64_t last_seen;
};

struct mm_pending_retry {
	unsigned int failures;	/* in a row */
	uint64_t retry_at;
};

struct mm_pending {
	unsigned int quiet_msecs;
	unsigned int max_msecs;
	HASH_TABLE(char *, struct mm_pending_user *) users;
	HASH_TABLE(char *, struct mm_pending_retry *) retries;
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
	hash_table_create(&pending->retries, default_pool, 0, str_hash, strcmp);
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

	struct mm_pending_retry *retry;

	iter = hash_table_iterate_init(pending->retries);
	while (hash_table_iterate(iter, pending->retries, &name, &retry)) {
		i_free(name);
		i_free(retry);
	}
	hash_table_iterate_deinit(&iter);
	hash_table_destroy(&pending->retries);
	i_free(pending);
}

/* The entry of name, made when missing (first and last seen at now). */
static struct mm_pending_user *
pending_user_get(struct mm_pending *pending, const char *name, uint64_t now,
		 bool *created_r)
{
	struct mm_pending_user *user;

	user = hash_table_lookup(pending->users, name);
	*created_r = user == NULL;
	if (user == NULL) {
		user = i_new(struct mm_pending_user, 1);
		user->first_seen = now;
		user->last_seen = now;
		hash_table_insert(pending->users, i_strdup(name), user);
	}
	return user;
}

void
mm_pending_touch(struct mm_pending *pending, const char *name, uint64_t now)
{
	bool created;
	struct mm_pending_user *user =
		pending_user_get(pending, name, now, &created);

	/* times only move forward, even if a caller's clock reading was
	   taken before another's */
	if (now > user->last_seen)
		user->last_seen = now;
}

void
mm_pending_found(struct mm_pending *pending, const char *name, uint64_t now)
{
	bool created;

	(void)pending_user_get(pending, name, now, &created);
}

static uint64_t
pending_user_due_at(const struct mm_pending *pending, const char *name,
		    const struct mm_pending_user *user)
{
	uint64_t quiet = user->last_seen + pending->quiet_msecs;
	uint64_t longest = user->first_seen + pending->max_msecs;
	uint64_t due = I_MIN(quiet, longest);
	const struct mm_pending_retry *retry =
		hash_table_lookup(pending->retries, name);

	return retry == NULL ? due : I_MAX(due, retry->retry_at);
}

bool
mm_pending_is_due(const struct mm_pending *pending, const char *name,
		  uint64_t now)
{
	const struct mm_pending_user *user =
		hash_table_lookup(pending->users, name);

	return user != NULL && pending_user_due_at(pending, name, user) <= now;
}

void
mm_pending_forget(struct mm_pending *pending, const char *name)
{
	char *key;
	struct mm_pending_user *user;

	if (!hash_table_lookup_full(pending->users, name, &key, &user))
		return;
	hash_table_remove(pending->users, name);
	i_free(key);
	i_free(user);
}

void
mm_pending_failed(struct mm_pending *pending, const char *name, uint64_t now)
{
	struct mm_pending_retry *retry = hash_table_lookup(pending->retries, name);
	unsigned int wait = MM_PENDING_RETRY_FIRST_MSECS;

	if (retry == NULL) {
		retry = i_new(struct mm_pending_retry, 1);
		hash_table_insert(pending->retries, i_strdup(name), retry);
	}
	retry->failures++;
	for (unsigned int i = 1; i < retry->failures &&
		     wait < MM_PENDING_RETRY_MAX_MSECS; i++)
		wait *= 2;
	retry->retry_at = now + I_MIN(wait, MM_PENDING_RETRY_MAX_MSECS);
}

void
mm_pending_succeeded(struct mm_pending *pending, const char *name)
{
	char *key;
	struct mm_pending_retry *retry;

	if (!hash_table_lookup_full(pending->retries, name, &key, &retry))
		return;
	hash_table_remove(pending->retries, name);
	i_free(key);
	i_free(retry);
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
		if (pending_user_due_at(pending, name, user) <= now) {
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
	while (hash_table_iterate(iter, pending->users, &name, &user))
		next = I_MIN(next, pending_user_due_at(pending, name, user));
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

unsigned int
mm_pending_count(const struct mm_pending *pending)
{
	return hash_table_count(pending->users);
}

unsigned int
mm_pending_failing_count(const struct mm_pending *pending)
{
	return hash_table_count(pending->retries);
}
