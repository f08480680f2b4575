/*
 * mm-mirror-pending.h - when the watcher syncs a dirty user: once the
 * user's changes have paused for the quiet time (mailmeta_sync_delay), or
 * once the oldest change not yet synced has waited the longest delay
 * (mailmeta_sync_max_delay), whichever comes first.
 *
 * Why: a sync opens the user's folders and, on a Maildir, scans new/ under
 * dovecot-uidlist's lock, while deliveries and IMAP sessions go on using
 * the same files.  A user under a steady stream of changes (a flood of
 * deliveries, a client flagging message after message) synced every quiet
 * time would be synced several times a second, and each sync makes the
 * concurrent Dovecot processes work harder too.  Bounded by the longest
 * delay instead, such a user costs one sync per that delay, covering every
 * change meanwhile; a user who stops is synced one quiet time after the
 * last change, so the mirror still follows a quiet mailbox closely.
 *
 * A user whose sync failed (its mailbox unreadable, a record the database
 * refuses) waits a back-off of its own, doubling with each failure in a
 * row from 1 s up to 30 s, however busy it is: one broken mailbox must
 * not hold up the mirror of everybody else.
 *
 * Names are spool names (mailmeta-spool.h); times are monotonic
 * milliseconds, passed in so that the rules can be tested.
 */
#ifndef MM_MIRROR_PENDING_H
#define MM_MIRROR_PENDING_H

#include "array.h"

struct mm_pending;

struct mm_pending *mm_pending_init(unsigned int quiet_msecs,
				   unsigned int max_msecs);
void mm_pending_deinit(struct mm_pending **_pending);

/* A change of name was seen (an inotify event) at now. */
void mm_pending_touch(struct mm_pending *pending, const char *name,
		      uint64_t now);
/* name's mark was found in the spool at now: pending from now on, unless
   a change was seen before (marks found without an event: at start, after
   an event queue overflow, without inotify). */
void mm_pending_found(struct mm_pending *pending, const char *name,
		      uint64_t now);
/* Whether name is to be synced at now. */
bool mm_pending_is_due(const struct mm_pending *pending, const char *name,
		       uint64_t now);
/* name is being synced: changes seen from now on are the next sync's. */
void mm_pending_forget(struct mm_pending *pending, const char *name);
/* name's sync failed at now: its next one waits the back-off. */
void mm_pending_failed(struct mm_pending *pending, const char *name,
		       uint64_t now);
/* name's sync succeeded: no back-off any more. */
void mm_pending_succeeded(struct mm_pending *pending, const char *name);
/* The names due at now, allocated from the data stack. */
void mm_pending_get_due(const struct mm_pending *pending, uint64_t now,
			ARRAY_TYPE(const_string) *names);
/* Milliseconds from now until the next name falls due: 0 when one is due,
   UINT_MAX when nothing is pending. */
unsigned int mm_pending_next_due(const struct mm_pending *pending,
				 uint64_t now);
/* Users with changes not yet synced; users in back-off. */
unsigned int mm_pending_count(const struct mm_pending *pending);
unsigned int mm_pending_failing_count(const struct mm_pending *pending);

#endif
