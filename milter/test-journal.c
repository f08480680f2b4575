/*
 * test-journal.c - the journal gives back what was appended, oldest first,
 * exactly once; keeps what could not be recorded; sets aside what the
 * database rejects; skips a torn last line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm-journal.h"
#include "mm-log.h"
#include "test-common.h"

struct recorder {
	char seen[16][64];
	int count;
	int fail_at;		/* answer UNAVAILABLE for this call (1-based), 0: never */
	int reject_at;		/* answer REJECTED for this call */
	int calls;
};

static enum mm_write_result
record(const char *doc, void *ctx)
{
	struct recorder *r = ctx;

	r->calls++;
	if (r->calls == r->fail_at)
		return MM_WRITE_UNAVAILABLE;
	if (r->calls == r->reject_at)
		return MM_WRITE_REJECTED;
	snprintf(r->seen[r->count++], sizeof(r->seen[0]), "%s", doc);
	return MM_WRITE_COMMITTED;
}

static char *
make_dir(void)
{
	char tmpl[] = "/tmp/test-journal-XXXXXX";
	char *dir = mkdtemp(tmpl);

	return dir ? strdup(dir) : NULL;
}

static void
test_replays_in_order_once(const char *dir)
{
	char *err = NULL;
	struct mm_journal *j = mm_journal_open(dir, &err);
	struct recorder r = { 0 };

	CHECK(j != NULL);
	CHECK(mm_journal_append(j, "{\"n\":1}") == 0);
	CHECK(mm_journal_append(j, "{\"n\":2}") == 0);
	CHECK(mm_journal_replay(j, record, &r) == 0);
	CHECK(mm_journal_append(j, "{\"n\":3}") == 0);
	CHECK(mm_journal_replay(j, record, &r) == 0);
	CHECK(r.count == 3);
	CHECK(strcmp(r.seen[0], "{\"n\":1}") == 0);
	CHECK(strcmp(r.seen[1], "{\"n\":2}") == 0);
	CHECK(strcmp(r.seen[2], "{\"n\":3}") == 0);
	CHECK(mm_journal_replay(j, record, &r) == 0 && r.count == 3);
	mm_journal_close(&j);
}

static void
test_keeps_what_could_not_be_recorded(const char *dir)
{
	char *err = NULL;
	struct mm_journal *j = mm_journal_open(dir, &err);
	struct recorder r = { .fail_at = 2 };

	CHECK(mm_journal_append(j, "{\"n\":1}") == 0);
	CHECK(mm_journal_append(j, "{\"n\":2}") == 0);
	CHECK(mm_journal_replay(j, record, &r) == 2);	/* the segment stays */
	mm_journal_close(&j);

	/* after a restart, the whole segment again: idempotent recording
	 * makes the repeat of n=1 harmless */
	j = mm_journal_open(dir, &err);
	CHECK(mm_journal_replay(j, record, &r) == 0);
	CHECK(r.count == 3);
	CHECK(strcmp(r.seen[1], "{\"n\":1}") == 0);
	CHECK(strcmp(r.seen[2], "{\"n\":2}") == 0);
	mm_journal_close(&j);
}

static void
test_sets_rejected_aside_and_skips_torn_lines(const char *dir)
{
	char *err = NULL, path[512];
	struct mm_journal *j = mm_journal_open(dir, &err);
	struct recorder r = { .reject_at = 1 };
	FILE *f;

	CHECK(mm_journal_append(j, "{\"bad\":1}") == 0);
	CHECK(mm_journal_append(j, "{\"n\":5}") == 0);
	snprintf(path, sizeof(path), "%s/current.jsonl", dir);
	f = fopen(path, "a");
	fputs("{\"torn", f);	/* a crash in the middle of an append */
	fclose(f);
	CHECK(mm_journal_replay(j, record, &r) == 0);
	CHECK(r.count == 1 && strcmp(r.seen[0], "{\"n\":5}") == 0);
	snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
	f = fopen(path, "r");
	CHECK(f != NULL);
	if (f) {
		char line[64] = "";

		CHECK(fgets(line, sizeof(line), f) && strcmp(line, "{\"bad\":1}\n") == 0);
		fclose(f);
	}
	mm_journal_close(&j);
}

static void
test_unwritable_directory_is_an_error(void)
{
	char *err = NULL;
	struct mm_journal *j = mm_journal_open("/proc/no-journal-here", &err);

	CHECK(j == NULL && err != NULL && strstr(err, "/proc/no-journal-here"));
	free(err);
}

int
main(void)
{
	char *dir;

	mm_log_open("test-journal", NULL, true);
	dir = make_dir();
	test_replays_in_order_once(dir);
	test_keeps_what_could_not_be_recorded(dir);
	test_sets_rejected_aside_and_skips_torn_lines(dir);
	test_unwritable_directory_is_an_error();
	if (dir) {
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
		free(dir);
	}
	return test_result();
}
