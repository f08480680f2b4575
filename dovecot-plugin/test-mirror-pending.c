/*
 * test-mirror-pending.c - the watcher's timing rules (mm-mirror-pending.h):
 * a user is synced after its changes paused for the quiet time, or when
 * its oldest change has waited the longest delay, whichever comes first;
 * a mark found without an event waits the quiet time; a synced user starts
 * over; a user whose sync failed waits a back-off of its own.
 */
#include "lib.h"
#include "array.h"
#include "test-common.h"

#include <stdio.h>

#include "mm-mirror-pending.h"

#define QUIET 250
#define LONGEST 2000

static void
test_quiet_time(void)
{
	test_begin("quiet time");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);

	test_assert(!mm_pending_is_due(p, "alice", 0));
	mm_pending_touch(p, "alice", 1000);
	test_assert(!mm_pending_is_due(p, "alice", 1000));
	test_assert(!mm_pending_is_due(p, "alice", 1000 + QUIET - 1));
	test_assert(mm_pending_is_due(p, "alice", 1000 + QUIET));
	/* another change restarts the quiet time */
	mm_pending_touch(p, "alice", 1200);
	test_assert(!mm_pending_is_due(p, "alice", 1000 + QUIET));
	test_assert(mm_pending_is_due(p, "alice", 1200 + QUIET));
	mm_pending_deinit(&p);
	test_assert(p == NULL);
	test_end();
}

static void
test_steady_stream(void)
{
	test_begin("steady stream");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);
	uint64_t t;

	/* a change every 10 ms never lets the quiet time pass: the longest
	   delay ends the wait */
	for (t = 5000; t < 5000 + LONGEST; t += 10) {
		mm_pending_touch(p, "bob", t);
		test_assert(!mm_pending_is_due(p, "bob", t));
	}
	mm_pending_touch(p, "bob", t);
	test_assert(mm_pending_is_due(p, "bob", 5000 + LONGEST));
	test_assert(mm_pending_next_due(p, 5000 + LONGEST) == 0);

	/* synced: the changes after it wait on their own */
	mm_pending_forget(p, "bob");
	test_assert(mm_pending_count(p) == 0);
	test_assert(!mm_pending_is_due(p, "bob", 5000 + LONGEST));
	mm_pending_touch(p, "bob", 7010);
	test_assert(!mm_pending_is_due(p, "bob", 7010 + QUIET - 1));
	test_assert(mm_pending_is_due(p, "bob", 7010 + QUIET));
	mm_pending_deinit(&p);
	test_end();
}

static void
test_found_without_event(void)
{
	test_begin("found without event");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);

	/* a mark found with no event seen: pending from then on */
	mm_pending_found(p, "carol", 100);
	test_assert(!mm_pending_is_due(p, "carol", 100 + QUIET - 1));
	test_assert(mm_pending_is_due(p, "carol", 100 + QUIET));

	/* finding the mark again does not restart a wait */
	mm_pending_touch(p, "dave", 0);
	mm_pending_found(p, "dave", 200);
	test_assert(mm_pending_is_due(p, "dave", QUIET));
	mm_pending_deinit(&p);
	test_end();
}

static void
test_next_due(void)
{
	test_begin("next due");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);

	test_assert(mm_pending_next_due(p, 0) == UINT_MAX);
	mm_pending_touch(p, "erin", 1000);
	mm_pending_touch(p, "frank", 1100);
	test_assert(mm_pending_next_due(p, 1100) == QUIET - 100);
	test_assert(mm_pending_next_due(p, 1000 + QUIET) == 0);
	test_assert(mm_pending_next_due(p, 0) == 1000 + QUIET);

	ARRAY_TYPE(const_string) due;
	const char *name;

	T_BEGIN {
		t_array_init(&due, 4);
		mm_pending_get_due(p, 1000 + QUIET, &due);
		test_assert(array_count(&due) == 1);
		name = array_idx_elem(&due, 0);
		test_assert_strcmp(name, "erin");
		array_clear(&due);
		mm_pending_get_due(p, 1100 + QUIET, &due);
		test_assert(array_count(&due) == 2);
	} T_END;
	mm_pending_deinit(&p);

	/* a clock reading from well before a change does not make a wait
	   longer than the longest back-off (30 s) */
	p = mm_pending_init(QUIET, LONGEST);
	mm_pending_touch(p, "gina", 90000);
	test_assert(mm_pending_next_due(p, 0) == 30000);
	mm_pending_deinit(&p);
	test_end();
}

static void
test_longest_below_quiet(void)
{
	test_begin("longest below quiet");
	/* the quiet time wins over a shorter longest delay */
	struct mm_pending *p = mm_pending_init(500, 100);

	mm_pending_touch(p, "grace", 0);
	test_assert(!mm_pending_is_due(p, "grace", 499));
	test_assert(mm_pending_is_due(p, "grace", 500));
	mm_pending_deinit(&p);
	test_end();
}

static void
test_many_users(void)
{
	test_begin("many users");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);
	char name[32];

	for (unsigned int i = 0; i < 5000; i++) {
		snprintf(name, sizeof(name), "user%u@example.test", i);
		mm_pending_touch(p, name, i);
	}
	test_assert(mm_pending_count(p) == 5000);
	test_assert(mm_pending_next_due(p, 0) == QUIET);
	for (unsigned int i = 0; i < 5000; i += 2) {
		snprintf(name, sizeof(name), "user%u@example.test", i);
		mm_pending_forget(p, name);
	}
	test_assert(mm_pending_count(p) == 2500);
	/* forgetting what is not there is harmless */
	mm_pending_forget(p, "nobody@example.test");
	test_assert(mm_pending_is_due(p, "user1@example.test", 1 + QUIET));
	test_assert(!mm_pending_is_due(p, "user0@example.test", 1 + QUIET));
	mm_pending_deinit(&p);
	test_end();
}

static void
test_failed_user_backs_off_alone(void)
{
	test_begin("failed user backs off alone");
	struct mm_pending *p = mm_pending_init(QUIET, LONGEST);
	uint64_t t = 10000;

	/* 1 s, 2 s, 4 s ... after each failure in a row, up to 30 s */
	static const unsigned int waits[] = {
		1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000
	};
	for (unsigned int i = 0; i < N_ELEMENTS(waits); i++) {
		mm_pending_touch(p, "broken", t);
		mm_pending_touch(p, "fine", t);
		test_assert_idx(mm_pending_is_due(p, "fine", t + QUIET), i);
		mm_pending_forget(p, "fine");
		test_assert_idx(mm_pending_is_due(p, "broken", t + QUIET), i);
		mm_pending_forget(p, "broken");
		mm_pending_failed(p, "broken", t + QUIET);
		/* its mark is put back: a change, but the back-off rules */
		mm_pending_touch(p, "broken", t + QUIET);
		test_assert_idx(!mm_pending_is_due(p, "broken",
						   t + QUIET + waits[i] - 1), i);
		test_assert_idx(mm_pending_is_due(p, "broken",
						  t + QUIET + waits[i]), i);
		test_assert_idx(mm_pending_next_due(p, t + QUIET) == waits[i], i);
		mm_pending_forget(p, "broken");
		t += QUIET + waits[i];
	}
	test_assert(mm_pending_failing_count(p) == 1);

	/* a success ends the back-off */
	mm_pending_succeeded(p, "broken");
	test_assert(mm_pending_failing_count(p) == 0);
	mm_pending_touch(p, "broken", t);
	test_assert(mm_pending_is_due(p, "broken", t + QUIET));
	mm_pending_failed(p, "broken", t + QUIET);
	mm_pending_touch(p, "broken", t + QUIET);
	test_assert(!mm_pending_is_due(p, "broken", t + QUIET + 999));
	test_assert(mm_pending_is_due(p, "broken", t + QUIET + 1000));
	/* succeeding for a user never failed is harmless */
	mm_pending_succeeded(p, "fine");
	mm_pending_deinit(&p);
	test_end();
}

int
main(void)
{
	static void (*const tests[])(void) = {
		test_quiet_time,
		test_steady_stream,
		test_found_without_event,
		test_next_due,
		test_longest_below_quiet,
		test_many_users,
		test_failed_user_backs_off_alone,
		NULL
	};
	return test_run(tests);
}
