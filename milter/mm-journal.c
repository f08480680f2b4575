/*
 * mm-journal.c - append-only JSON-lines journal with sealed segments.
 *
 * Appends go to DIR/current.jsonl under a mutex, each followed by
 * fdatasync().  Replay first seals the current file by renaming it to
 * DIR/segment-NNNNNNNNNNNNNNNNNNNN.jsonl (a counter that only grows) so that
 * new appends never mix with what is being replayed, then replays segments
 * in name order.  A line that is not a complete JSON object (a crash in the
 * middle of an append, before the message was accepted) is skipped with a
 * warning.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mm-journal.h"
#include "mm-log.h"

struct mm_journal {
	pthread_mutex_t lock;		/* appends and sealing */
	pthread_mutex_t replay_lock;	/* one replay at a time */
	char *dir;
	int fd;				/* current.jsonl, -1 until first append */
	uint64_t next_segment;
};

#define SEGMENT_PREFIX "segment-"

static char *
path_in(const struct mm_journal *j, const char *name)
{
	size_t len = strlen(j->dir) + strlen(name) + 2;
	char *p = malloc(len);

	snprintf(p, len, "%s/%s", j->dir, name);
	return p;
}

static int
sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

static int
segment_number(const char *name, uint64_t *n)
{
	char tail[16];

	return sscanf(name, SEGMENT_PREFIX "%20" SCNu64 "%15s", n, tail) == 2 &&
		strcmp(tail, ".jsonl") == 0 ? 0 : -1;
}

static int
compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the sealed segments; *count set. */
static char **
list_segments(const struct mm_journal *j, size_t *count, uint64_t *max)
{
	DIR *d = opendir(j->dir);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0, cap = 0;
	uint64_t num;

	*max = 0;
	while (d && (e = readdir(d)) != NULL) {
		if (segment_number(e->d_name, &num) != 0)
			continue;
		if (num > *max)
			*max = num;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			names = realloc(names, cap * sizeof(*names));
		}
		names[n++] = strdup(e->d_name);
	}
	if (d)
		closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), compare_names);
	*count = n;
	return names;
}

static void
free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

struct mm_journal *
mm_journal_open(const char *dir, char **err)
{
	struct mm_journal *j = calloc(1, sizeof(*j));
	size_t n;
	uint64_t max;
	char **names;
	char buf[512];

	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		snprintf(buf, sizeof(buf), "cannot create journal directory %s: %s",
			 dir, strerror(errno));
		*err = strdup(buf);
		free(j);
		return NULL;
	}
	if (access(dir, W_OK | X_OK) != 0) {
		snprintf(buf, sizeof(buf), "journal directory %s is not writable: %s",
			 dir, strerror(errno));
		*err = strdup(buf);
		free(j);
		return NULL;
	}
	pthread_mutex_init(&j->lock, NULL);
	pthread_mutex_init(&j->replay_lock, NULL);
	j->dir = strdup(dir);
	j->fd = -1;
	names = list_segments(j, &n, &max);
	free_names(names, n);
	j->next_segment = max + 1;
	return j;
}

static int
open_current(struct mm_journal *j)
{
	char *p = path_in(j, "current.jsonl");

	j->fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	free(p);
	if (j->fd < 0)
		return -1;
	return sync_dir(j->dir);
}

static int
write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

int
mm_journal_append(struct mm_journal *j, const char *doc)
{
	int rc = -1;

	pthread_mutex_lock(&j->lock);
	if (j->fd >= 0 || open_current(j) == 0) {
		if (write_all(j->fd, doc, strlen(doc)) == 0 &&
		    write_all(j->fd, "\n", 1) == 0 && fdatasync(j->fd) == 0)
			rc = 0;
	}
	if (rc != 0)
		mm_error("journal %s/current.jsonl: append failed: %s",
			 j->dir, strerror(errno));
	pthread_mutex_unlock(&j->lock);
	return rc;
}

/* Renames a non-empty current.jsonl to the next segment name. */
static void
seal_current(struct mm_journal *j)
{
	char *cur = path_in(j, "current.jsonl");
	char name[64];
	struct stat st;

	pthread_mutex_lock(&j->lock);
	if (stat(cur, &st) == 0 && st.st_size > 0) {
		snprintf(name, sizeof(name), SEGMENT_PREFIX "%020" PRIu64 ".jsonl",
			 j->next_segment++);
		char *seg = path_in(j, name);

		if (rename(cur, seg) == 0) {
			if (j->fd >= 0)
				close(j->fd);
			j->fd = -1;
			sync_dir(j->dir);
		} else {
			mm_error("journal: cannot seal %s: %s", cur, strerror(errno));
		}
		free(seg);
	}
	pthread_mutex_unlock(&j->lock);
	free(cur);
}

static void
keep_rejected(struct mm_journal *j, const char *doc)
{
	char *p = path_in(j, "rejected.jsonl");
	int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

	if (fd < 0 || write_all(fd, doc, strlen(doc)) != 0 ||
	    write_all(fd, "\n", 1) != 0 || fdatasync(fd) != 0)
		mm_error("journal: cannot keep a rejected document in %s: %s",
			 p, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(p);
}

/* Replays one segment; 0 when all of it is recorded (or rejected). */
static int
replay_segment(struct mm_journal *j, const char *name,
	       mm_journal_record_fn record, void *ctx, unsigned long *done)
{
	char *p = path_in(j, name);
	FILE *f = fopen(p, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int rc = 0;

	while (f && (len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] != '\n' || line[0] != '{') {
			mm_warn("journal %s: skipping an incomplete line", name);
			continue;
		}
		line[len - 1] = '\0';
		enum mm_write_result r = record(line, ctx);

		if (r == MM_WRITE_UNAVAILABLE) {
			rc = -1;
			break;
		}
		if (r == MM_WRITE_REJECTED) {
			mm_error("journal %s: the database rejected a document; kept in rejected.jsonl", name);
			keep_rejected(j, line);
		}
		(*done)++;
	}
	if (f)
		fclose(f);
	if (rc == 0 && unlink(p) != 0)
		rc = -1;
	free(line);
	free(p);
	return rc;
}

static unsigned long
count_lines(struct mm_journal *j, char **names, size_t n)
{
	unsigned long lines = 0;

	for (size_t i = 0; i < n; i++) {
		char *p = path_in(j, names[i]);
		FILE *f = fopen(p, "re");
		int c;

		while (f && (c = getc(f)) != EOF)
			lines += c == '\n';
		if (f)
			fclose(f);
		free(p);
	}
	return lines;
}

unsigned long
mm_journal_replay(struct mm_journal *j, mm_journal_record_fn record, void *ctx)
{
	size_t n, i;
	uint64_t max;
	char **names;
	unsigned long done = 0, left;

	pthread_mutex_lock(&j->replay_lock);
	seal_current(j);
	names = list_segments(j, &n, &max);
	for (i = 0; i < n; i++)
		if (replay_segment(j, names[i], record, ctx, &done) != 0)
			break;
	if (done > 0) {
		sync_dir(j->dir);
		mm_info("journal: recorded %lu document(s) from the journal", done);
	}
	left = i < n ? count_lines(j, names + i, n - i) : 0;
	free_names(names, n);
	pthread_mutex_unlock(&j->replay_lock);
	return left;
}

void
mm_journal_close(struct mm_journal **jp)
{
	struct mm_journal *j = *jp;

	if (j == NULL)
		return;
	if (j->fd >= 0)
		close(j->fd);
	pthread_mutex_destroy(&j->lock);
	pthread_mutex_destroy(&j->replay_lock);
	free(j->dir);
	free(j);
	*jp = NULL;
}
