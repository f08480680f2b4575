/*
 * test-clamd.c - the clamd client against scripted fake clamds: the
 * INSTREAM framing byte for byte (any write sizes, the max_bytes cut),
 * every kind of answer, and every way a clamd can misbehave - refusing,
 * hanging before reading, hanging after the stream, closing early,
 * answering garbage or too much - each ending in MM_CLAMD_FAILED within the
 * timeout, never a hang or a SIGPIPE.  The real clamd is tested by
 * tests/integration/test_engines.py.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm-clamd.h"
#include "test-common.h"
#include "test-peer.h"

enum mode {
	ANSWER,			/* read the stream, then answer */
	HANG_BEFORE_READING,	/* accept, never read */
	HANG_AFTER_STREAM,	/* read the stream, never answer */
	CLOSE_AFTER_STREAM,	/* read the stream, close without a word */
	CLOSE_AFTER_COMMAND,	/* read the command, close */
};

struct script {
	enum mode mode;
	const char *answer;	/* ANSWER: sent after the stream ... */
	size_t answer_len;	/* ... this many bytes of it (0: strlen + NUL) */
	long delay_ms;		/* before answering */
	long split_ms;		/* > 0: the answer in two halves this far apart */
	long expect_bytes;	/* >= 0: the stream must be exactly this long */
};

static unsigned char
pattern(size_t i)
{
	return (unsigned char)(i * 7 + i / 251);
}

/* Reads "zINSTREAM\0" and the chunks; the data must be pattern(). */
static long
read_stream(int fd)
{
	char command[10];
	unsigned char buf[65536];
	size_t total = 0;

	if (peer_read_exact(fd, command, sizeof(command)) < 0 ||
	    memcmp(command, "zINSTREAM", 10) != 0)
		return -1;
	for (;;) {
		uint32_t head;
		size_t len;

		if (peer_read_exact(fd, &head, 4) < 0)
			return -1;
		if ((len = ntohl(head)) == 0)
			return (long)total;
		while (len > 0) {
			size_t n = len < sizeof(buf) ? len : sizeof(buf);

			if (peer_read_exact(fd, buf, n) < 0)
				return -1;
			for (size_t i = 0; i < n; i++)
				if (buf[i] != pattern(total + i))
					return -1;
			total += n;
			len -= n;
		}
	}
}

static int
fake_clamd(int fd, const void *arg)
{
	const struct script *sc = arg;
	long got;
	size_t len;
	char command[10];

	switch (sc->mode) {
	case HANG_BEFORE_READING:
		peer_sleep_ms(30000);
		return 0;
	case CLOSE_AFTER_COMMAND:
		peer_read_exact(fd, command, sizeof(command));
		close(fd);
		return 0;
	default:
		break;
	}
	got = read_stream(fd);
	if (got < 0)
		return 1;
	if (sc->expect_bytes >= 0 && got != sc->expect_bytes)
		return 2;
	if (sc->mode == HANG_AFTER_STREAM)
		peer_sleep_ms(30000);
	if (sc->mode == CLOSE_AFTER_STREAM)
		return 0;
	peer_sleep_ms(sc->delay_ms);
	len = sc->answer_len ? sc->answer_len : strlen(sc->answer) + 1;
	if (sc->split_ms > 0) {
		peer_write_all(fd, sc->answer, len / 2);
		peer_sleep_ms(sc->split_ms);
		peer_write_all(fd, sc->answer + len / 2, len - len / 2);
	} else {
		peer_write_all(fd, sc->answer, len);
	}
	shutdown(fd, SHUT_WR);		/* clamd closes after its answer */
	peer_drain(fd);
	return 0;
}

struct result {
	struct mm_clamd_verdict v;
	double ms;
	int write_failed;
	int peer;		/* the fake's exit status; -1 when killed */
};

/* Streams TOTAL bytes of pattern() in writes of the sizes in CHUNKS
   (cycled; NULL: 65535) through a fresh fake clamd acting out SC. */
static struct result
scan(const struct script *sc, int inet, unsigned timeout_ms, size_t max_bytes,
     size_t total, const size_t *chunks)
{
	struct peer peer;
	struct mm_engine_config cfg = { .timeout_ms = timeout_ms, .max_bytes = max_bytes };
	struct result r = { .peer = 0 };
	unsigned char *data = malloc(total + 1);
	struct mm_clamd *s;
	size_t off = 0, k = 0;
	double t0;

	for (size_t i = 0; i < total; i++)
		data[i] = pattern(i);
	peer_start(&peer, inet, fake_clamd, sc);
	cfg.address = peer.address;
	t0 = test_now_ms();
	s = mm_clamd_open(&cfg);
	while (off < total) {
		size_t n = chunks ? chunks[k++] : 65535;

		if (chunks && chunks[k] == 0)
			k = 0;
		if (n > total - off)
			n = total - off;
		if (mm_clamd_write(s, data + off, n) < 0)
			r.write_failed = 1;
		off += n;
	}
	mm_clamd_finish(s, &r.v);
	r.ms = test_now_ms() - t0;
	mm_clamd_free(&s);
	CHECK(s == NULL);
	r.peer = peer_stop(&peer, sc->mode == ANSWER || sc->mode == CLOSE_AFTER_STREAM ||
			   sc->mode == CLOSE_AFTER_COMMAND);
	free(data);
	return r;
}

static void
test_clean_any_chunking(void)
{
	static const size_t odd[] = { 1, 7, 100, 16383, 16384, 16385, 65535, 3, 200000, 0 };
	struct script sc = { ANSWER, "stream: OK", 0, 0, 0, 300001 };

	for (int inet = 0; inet <= 1; inet++) {
		struct result r = scan(&sc, inet, 5000, 25u << 20, 300001, odd);

		CHECK(r.v.status == MM_CLAMD_CLEAN);
		CHECK(r.peer == 0);
		CHECK(!r.write_failed);
		CHECK(r.v.bytes == 300001 && r.v.scanned == 300001 && !r.v.truncated);
	}
	/* nothing at all is a stream too */
	sc.expect_bytes = 0;
	struct result r = scan(&sc, 0, 5000, 1024, 0, NULL);
	CHECK(r.v.status == MM_CLAMD_CLEAN && r.peer == 0);
}

static void
test_found(void)
{
	struct script sc = { ANSWER, "stream: Eicar-Test-Signature FOUND", 0, 0, 0, 5000 };
	struct result r = scan(&sc, 0, 5000, 25u << 20, 5000, NULL);

	CHECK(r.v.status == MM_CLAMD_INFECTED);
	CHECK(strcmp(r.v.signature, "Eicar-Test-Signature") == 0);
	/* the answer may come in pieces, and with ExtendedDetectionInfo */
	sc.answer = "stream: Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68) FOUND";
	sc.split_ms = 50;
	r = scan(&sc, 0, 5000, 25u << 20, 5000, NULL);
	CHECK(r.v.status == MM_CLAMD_INFECTED);
	CHECK(strcmp(r.v.signature,
		     "Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68)") == 0);
}

/* Only max_bytes are sent; the verdict says the rest was not scanned. */
static void
test_max_bytes(void)
{
	static const size_t sizes[] = { 999, 1, 5000, 0 };
	struct script sc = { ANSWER, "stream: OK", 0, 0, 0, 1000 };
	struct result r = scan(&sc, 0, 5000, 1000, 70000, sizes);

	CHECK(r.peer == 0);
	CHECK(r.v.status == MM_CLAMD_CLEAN);
	CHECK(r.v.bytes == 70000 && r.v.scanned == 1000 && r.v.truncated);
}

static void
test_answers(void)
{
	static const struct {
		const char *answer;
		size_t len;
		const char *reason;
	} cases[] = {
		{ "INSTREAM size limit exceeded. ERROR", 0,
		  "clamd: INSTREAM size limit exceeded. ERROR" },
		{ "stream: Can't allocate memory ERROR", 0, "clamd: stream: Can't allocate" },
		{ "HELLO WORLD", 0, "unexpected answer from clamd: HELLO WORLD" },
		{ "stream: FOUND", 0, "unexpected answer" },
		{ "stream: two words FOUND", 0, "unexpected answer" },
		{ "Eicar FOUND", 0, "unexpected answer" },	/* no "stream: " */
		{ "stream: Bad\001Name FOUND", 0, "unexpected answer from clamd: stream: Bad?Name" },
		{ "stream: OK\n", 12, NULL },			/* newline form: fine */
		{ "stream: OK", 10, NULL },			/* no NUL, then close */
		{ "", 1, "unexpected answer" },			/* a lone NUL */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct script sc = { ANSWER, cases[i].answer, cases[i].len, 0, 0, 100 };
		struct result r = scan(&sc, 0, 2000, 1u << 20, 100, NULL);

		if (cases[i].reason == NULL) {
			CHECK(r.v.status == MM_CLAMD_CLEAN);
			continue;
		}
		CHECK(r.v.status == MM_CLAMD_FAILED);
		CHECK(test_has(r.v.reason, cases[i].reason));
		CHECK(r.v.signature[0] == '\0');
	}
}

/* A flood without a NUL is cut off at 1 KiB, at once. */
static void
test_babble(void)
{
	static char flood[100000];
	struct script sc = { ANSWER, flood, sizeof(flood), 0, 0, 100 };
	struct result r;

	memset(flood, 'A', sizeof(flood));
	r = scan(&sc, 0, 3000, 1u << 20, 100, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED);
	CHECK(test_has(r.v.reason, "answer is too long"));
	CHECK(r.ms < 1000);
}

static void
test_refused(void)
{
	struct mm_engine_config cfg = {
		.address = "unix:/nonexistent/clamd.sock", .timeout_ms = 2000,
		.max_bytes = 1000,
	};
	struct mm_clamd *s = mm_clamd_open(&cfg);
	struct mm_clamd_verdict v;
	double t0 = test_now_ms();

	CHECK(mm_clamd_failed(s) != NULL);
	CHECK(mm_clamd_write(s, "x", 1) == -1);
	mm_clamd_finish(s, &v);
	mm_clamd_free(&s);
	CHECK(v.status == MM_CLAMD_FAILED);
	CHECK(test_has(v.reason, "clamd: connect to /nonexistent/clamd.sock"));
	CHECK(test_now_ms() - t0 < 100);

	/* nothing listens on the port any more */
	struct peer peer;

	peer_start(&peer, 1, NULL, NULL);
	peer_stop(&peer, 1);
	cfg.address = peer.address;
	s = mm_clamd_open(&cfg);
	mm_clamd_finish(s, &v);
	mm_clamd_free(&s);
	CHECK(v.status == MM_CLAMD_FAILED);
	CHECK(test_has(v.reason, "Connection refused"));

	cfg.address = NULL;
	s = mm_clamd_open(&cfg);
	mm_clamd_finish(s, &v);
	mm_clamd_free(&s);
	CHECK(v.status == MM_CLAMD_FAILED && test_has(v.reason, "not configured"));
}

/* Each misbehaviour ends in FAILED, after the timeout and not much later. */
static void
test_timeouts(void)
{
	struct script hang_after = { HANG_AFTER_STREAM, NULL, 0, 0, 0, -1 };
	struct script hang_before = { HANG_BEFORE_READING, NULL, 0, 0, 0, -1 };
	struct script slow = { ANSWER, "stream: OK", 0, 700, 0, -1 };
	struct result r;

	r = scan(&hang_after, 0, 300, 1u << 20, 5000, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED);
	CHECK(test_has(r.v.reason, "no answer from clamd within 300 ms"));
	CHECK(r.ms >= 290 && r.ms < 1500);
	CHECK(r.v.elapsed_ms >= 290 && r.v.elapsed_ms < 1500);

	/* never read: the socket buffers fill, the writes wait, the budget ends */
	r = scan(&hang_before, 0, 300, 64u << 20, 16u << 20, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED);
	CHECK(r.write_failed);
	CHECK(test_has(r.v.reason, "sending to clamd timed out"));
	CHECK(r.ms >= 290 && r.ms < 1500);
	r = scan(&hang_before, 1, 300, 64u << 20, 16u << 20, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED && r.ms < 1500);

	/* slow but within the budget; then the same beyond it */
	r = scan(&slow, 0, 3000, 1u << 20, 100, NULL);
	CHECK(r.v.status == MM_CLAMD_CLEAN);
	CHECK(r.ms >= 690);
	r = scan(&slow, 0, 300, 1u << 20, 100, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED && r.ms < 690);
}

static void
test_closed(void)
{
	struct script after_stream = { CLOSE_AFTER_STREAM, NULL, 0, 0, 0, -1 };
	struct script after_command = { CLOSE_AFTER_COMMAND, NULL, 0, 0, 0, -1 };
	struct result r;

	r = scan(&after_stream, 0, 2000, 1u << 20, 5000, NULL);
	CHECK(r.v.status == MM_CLAMD_FAILED);
	CHECK(test_has(r.v.reason, "closed the connection without an answer"));

	/* writing into a closed connection: EPIPE, not SIGPIPE */
	for (int inet = 0; inet <= 1; inet++) {
		r = scan(&after_command, inet, 2000, 64u << 20, 8u << 20, NULL);
		CHECK(r.v.status == MM_CLAMD_FAILED);
		CHECK(r.write_failed);
		CHECK(r.ms < 1500);
	}
}

static void
test_addresses(void)
{
	static const struct {
		const char *address;
		int ok;
	} cases[] = {
		{ "unix:/run/clamav/clamd.ctl", 1 },
		{ "inet:127.0.0.1:3310", 1 },
		{ "inet:localhost:783", 1 },
		{ "inet:[::1]:783", 1 },
		{ "inet6:[::1]:783", 1 },
		{ "inet:783@127.0.0.1", 1 },
		{ "unix:relative.sock", 0 },
		{ "/run/clamd.sock", 0 },
		{ "inet:127.0.0.1", 0 },
		{ "inet:127.0.0.1:0", 0 },
		{ "inet:127.0.0.1:65536", 0 },
		{ "inet:127.0.0.1:78x", 0 },
		{ "inet::783", 0 },
		{ "inet:::1:783", 0 },
		{ "inet:[::1]783", 0 },
		{ "inet:bad host:783", 0 },
		{ "tcp:127.0.0.1:783", 0 },
		{ "", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why = mm_engine_address_error(cases[i].address);

		CHECK((why == NULL) == cases[i].ok);
		if ((why == NULL) != cases[i].ok)
			fprintf(stderr, "  address %s: %s\n", cases[i].address,
				why ? why : "accepted");
	}
}

int
main(void)
{
	test_addresses();
	test_clean_any_chunking();
	test_found();
	test_max_bytes();
	test_answers();
	test_babble();
	test_refused();
	test_timeouts();
	test_closed();
	return test_result();
}
