/*
 * mm-clamd.c - clamd's INSTREAM protocol.
 *
 * After "zINSTREAM\0" the client sends chunks, each a 4-byte big-endian
 * length and that many bytes, and ends with a zero length; clamd scans and
 * answers one NUL-terminated line: "stream: OK", "stream: NAME FOUND" or
 * "... ERROR" (clamd's documentation, clamd(8)).  clamd closes the
 * connection when the stream exceeds its StreamMaxLength, which is why
 * max_bytes stops sending early.  Anything else - a silent, closing or
 * babbling peer - is a failure with a reason.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mm-clamd.h"

#define BUFFER_SIZE	(16u * 1024u)	/* small writes are gathered */
#define CHUNK_MAX	(1024u * 1024u)	/* largest chunk sent */
#define ANSWER_MAX	1024u		/* longest answer read */

struct mm_clamd {
	int fd;
	unsigned timeout_ms;
	size_t max_bytes;
	int64_t spent_ms;	/* waiting on clamd so far */
	size_t bytes;		/* written by the caller */
	size_t sent;		/* streamed to clamd */
	size_t buffered;	/* in buf, not yet sent */
	int failed, finished;
	char reason[MM_ENGINE_TEXT_SIZE];
	unsigned char buf[BUFFER_SIZE];
};

const char *
mm_clamd_status_name(enum mm_clamd_status status)
{
	switch (status) {
	case MM_CLAMD_CLEAN: return "clean";
	case MM_CLAMD_INFECTED: return "infected";
	case MM_CLAMD_FAILED: return "failed";
	}
	return "unknown";
}

static void
fail(struct mm_clamd *s, const char *why)
{
	if (s->failed)
		return;
	s->failed = 1;
	snprintf(s->reason, sizeof(s->reason), "%s", why);
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
}

/* The deadline of the next wait: what is left of the budget. */
static int64_t
deadline(const struct mm_clamd *s, int64_t start)
{
	return start + (int64_t)s->timeout_ms - s->spent_ms;
}

/* A send failed: clamd may have said why before closing (size limit). */
static void
fail_send(struct mm_clamd *s, int err)
{
	char why[MM_ENGINE_TEXT_SIZE], said[MM_ENGINE_TEXT_SIZE];
	char answer[ANSWER_MAX];
	ssize_t n = recv(s->fd, answer, sizeof(answer), MSG_DONTWAIT);

	if (n > 0) {
		mm_engine_quote(said, answer, strnlen(answer, (size_t)n));
		mm_engine_why(why, "clamd stopped the stream: %s", said);
	} else if (err == ETIMEDOUT) {
		mm_engine_why(why, "sending to clamd timed out (timeout %u ms)",
			      s->timeout_ms);
	} else {
		mm_engine_why(why, "sending to clamd: %s", strerror(err));
	}
	fail(s, why);
}

static int
send_iov(struct mm_clamd *s, struct iovec *iov, int n)
{
	int64_t start = mm_engine_now_ms();
	int r = mm_engine_send(s->fd, iov, n, deadline(s, start));
	int err = errno;

	s->spent_ms += mm_engine_now_ms() - start;
	if (r < 0)
		fail_send(s, err);
	return r;
}

/* One chunk: its length, then its bytes. */
static int
send_chunk(struct mm_clamd *s, const void *data, size_t len)
{
	uint32_t head = htonl((uint32_t)len);
	struct iovec iov[2] = {
		{ &head, sizeof(head) },
		{ (void *)data, len },
	};

	return send_iov(s, iov, len > 0 ? 2 : 1);
}

static int
flush(struct mm_clamd *s)
{
	size_t n = s->buffered;

	if (n == 0)
		return 0;
	s->buffered = 0;
	if (send_chunk(s, s->buf, n) < 0)
		return -1;
	s->sent += n;
	return 0;
}

struct mm_clamd *
mm_clamd_open(const struct mm_engine_config *cfg)
{
	static const char command[] = "zINSTREAM";	/* with its NUL */
	struct mm_clamd *s = calloc(1, sizeof(*s));
	char why[MM_ENGINE_TEXT_SIZE];
	struct iovec iov = { (void *)command, sizeof(command) };
	int64_t start = mm_engine_now_ms();

	if (s == NULL)
		return NULL;
	s->fd = -1;
	s->timeout_ms = cfg->timeout_ms;
	s->max_bytes = cfg->max_bytes;
	if (cfg->address == NULL) {
		fail(s, "clamd is not configured");
		return s;
	}
	s->fd = mm_engine_connect(cfg->address, start + cfg->timeout_ms, why);
	s->spent_ms = mm_engine_now_ms() - start;
	if (s->fd < 0) {
		char msg[MM_ENGINE_TEXT_SIZE];

		snprintf(msg, sizeof(msg), "clamd: %.240s", why);
		fail(s, msg);
		return s;
	}
	send_iov(s, &iov, 1);
	return s;
}

int
mm_clamd_write(struct mm_clamd *s, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t room;

	s->bytes += len;
	if (s->failed || s->finished)
		return s->failed ? -1 : 0;
	room = s->max_bytes - (s->sent + s->buffered);
	if (len > room)
		len = room;		/* the rest is not scanned */
	if (s->buffered + len <= BUFFER_SIZE) {
		memcpy(s->buf + s->buffered, p, len);
		s->buffered += len;
		return 0;
	}
	if (flush(s) < 0)
		return -1;
	while (len >= BUFFER_SIZE) {
		size_t n = len < CHUNK_MAX ? len : CHUNK_MAX;

		if (send_chunk(s, p, n) < 0)
			return -1;
		s->sent += n;
		p += n;
		len -= n;
	}
	memcpy(s->buf, p, len);
	s->buffered = len;
	return 0;
}

const char *
mm_clamd_failed(const struct mm_clamd *s)
{
	return s->failed ? s->reason : NULL;
}

/* clamd's answer, NUL-terminated in ANSWER; -1 when it failed. */
static int
read_answer(struct mm_clamd *s, char *answer, size_t size)
{
	int64_t start = mm_engine_now_ms();
	size_t len = 0;
	char why[MM_ENGINE_TEXT_SIZE], said[MM_ENGINE_TEXT_SIZE];

	while (len < size - 1 && memchr(answer, '\0', len) == NULL) {
		ssize_t n = mm_engine_recv(s->fd, answer + len, size - 1 - len,
					   deadline(s, start));

		if (n < 0 && errno == ETIMEDOUT) {
			s->spent_ms += mm_engine_now_ms() - start;
			mm_engine_why(why, "no answer from clamd within %u ms",
				      s->timeout_ms);
			fail(s, why);
			return -1;
		}
		if (n < 0) {
			mm_engine_why(why, "reading clamd's answer: %s", strerror(errno));
			fail(s, why);
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	s->spent_ms += mm_engine_now_ms() - start;
	answer[len] = '\0';
	if (len == 0) {
		fail(s, "clamd closed the connection without an answer");
		return -1;
	}
	if (len == size - 1 && memchr(answer, '\0', len) == NULL) {
		mm_engine_quote(said, answer, len);
		mm_engine_why(why, "clamd's answer is too long: %s", said);
		fail(s, why);
		return -1;
	}
	return 0;
}

static int
ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

static void
parse_answer(struct mm_clamd *s, const char *answer, struct mm_clamd_verdict *v)
{
	size_t len = strlen(answer);
	const char *text = answer;
	char why[MM_ENGINE_TEXT_SIZE], said[MM_ENGINE_TEXT_SIZE];

	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		len--;
	mm_engine_quote(said, text, len);
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] >= 0x7f) {
			mm_engine_why(why, "unexpected answer from clamd: %s", said);
			fail(s, why);
			return;
		}
	}
	if (strncmp(text, "stream: ", 8) == 0) {
		text += 8;
		len -= 8;
	}
	if (len == 2 && memcmp(text, "OK", 2) == 0) {
		v->status = MM_CLAMD_CLEAN;
		return;
	}
	if (ends_with(text, len, " FOUND") && len > 6 && text != answer) {
		size_t n = len - 6;

		if (n >= sizeof(v->signature))
			n = sizeof(v->signature) - 1;
		memcpy(v->signature, text, n);
		v->signature[n] = '\0';
		if (strchr(v->signature, ' ') == NULL && n > 0) {
			v->status = MM_CLAMD_INFECTED;
			return;
		}
		v->signature[0] = '\0';
	} else if (ends_with(text, len, "ERROR")) {
		mm_engine_why(why, "clamd: %s", said);
		fail(s, why);
		return;
	}
	mm_engine_why(why, "unexpected answer from clamd: %s", said);
	fail(s, why);
}

void
mm_clamd_finish(struct mm_clamd *s, struct mm_clamd_verdict *v)
{
	char answer[ANSWER_MAX];

	memset(v, 0, sizeof(*v));
	v->status = MM_CLAMD_FAILED;
	if (s->finished) {
		fail(s, "mm_clamd_finish called twice");
	} else if (!s->failed && flush(s) == 0 && send_chunk(s, NULL, 0) == 0 &&
		   read_answer(s, answer, sizeof(answer)) == 0) {
		parse_answer(s, answer, v);
	}
	s->finished = 1;
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
	if (s->failed) {
		v->status = MM_CLAMD_FAILED;
		strcpy(v->reason, s->reason);
	}
	v->bytes = s->bytes;
	v->scanned = s->sent;
	v->truncated = s->bytes > s->max_bytes;
	v->elapsed_ms = s->spent_ms < 0 ? 0 : (unsigned)s->spent_ms;
}

void
mm_clamd_free(struct mm_clamd **sp)
{
	struct mm_clamd *s = *sp;

	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s);
	*sp = NULL;
}
