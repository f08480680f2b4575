/*
 * test-spamd.c - the spamd client against scripted fake spamds: the
 * SPAMC/1.5 request byte for byte (the message streamed from the reader
 * in bounded pieces, a prefix before it, nothing sent above max_bytes),
 * the answers spamd gives and the ones it must not, and every way a spamd
 * can misbehave - refusing, hanging, closing mid-answer, babbling - each
 * ending in MM_SPAMD_FAILED within the timeout.  Then the X-Spam-* header
 * values, compared with what SpamAssassin 4.0.1's own code
 * (Mail::SpamAssassin::Util::wrap and get_tag_value_for_score) produces for
 * the same results.  The real spamd is tested by
 * tests/integration/test_engines.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm-spamd.h"
#include "test-common.h"
#include "test-peer.h"

enum mode {
	ANSWER,			/* read the request, then answer */
	HANG_BEFORE_READING,	/* accept, never read */
	HANG_AFTER_REQUEST,	/* read the request, never answer */
};

struct script {
	enum mode mode;
	const char *answer;	/* ANSWER: sent after the request ... */
	size_t answer_len;	/* ... this many bytes of it (0: strlen) */
	long delay_ms;		/* before answering */
	long split_ms;		/* > 0: the answer in two halves this far apart */
	long expect_len;	/* >= 0: the message must be exactly this long */
	const char *prefix;	/* expected before the message */
};

static const char GTUBE_ANSWER[] =
	"SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\n"
	"Spam: True ; 1000.0 / 5.0\r\n\r\n"
	"GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO";

static unsigned char
pattern(size_t i)
{
	return (unsigned char)('A' + (i * 7 + i / 251) % 26);
}

/* The request: the SYMBOLS line, Content-length, the body as expected. */
static int
read_request(int fd, const struct script *sc)
{
	char head[512], *cl;
	size_t len = 0, body, plen = sc->prefix ? strlen(sc->prefix) : 0;
	unsigned char buf[65536];

	while (len < sizeof(head) - 1) {
		if (peer_read_exact(fd, head + len, 1) < 0)
			return 1;
		head[++len] = '\0';
		if (len >= 4 && memcmp(head + len - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	if (strncmp(head, "SYMBOLS SPAMC/1.5\r\n", 19) != 0 ||
	    (cl = strstr(head, "\r\nContent-length: ")) == NULL)
		return 2;
	body = strtoul(cl + 18, NULL, 10);
	if (sc->expect_len >= 0 && body != plen + (size_t)sc->expect_len)
		return 3;
	if (plen > 0) {
		if (peer_read_exact(fd, buf, plen) < 0 || memcmp(buf, sc->prefix, plen) != 0)
			return 4;
		body -= plen;
	}
	for (size_t off = 0; off < body;) {
		size_t n = body - off < sizeof(buf) ? body - off : sizeof(buf);

		if (peer_read_exact(fd, buf, n) < 0)
			return 5;
		for (size_t i = 0; i < n; i++)
			if (buf[i] != pattern(off + i))
				return 6;
		off += n;
	}
	return 0;
}

static int
fake_spamd(int fd, const void *arg)
{
	const struct script *sc = arg;
	size_t len;
	int rc;

	if (sc->mode == HANG_BEFORE_READING) {
		peer_sleep_ms(30000);
		return 0;
	}
	if ((rc = read_request(fd, sc)) != 0)
		return rc;
	if (sc->mode == HANG_AFTER_REQUEST)
		peer_sleep_ms(30000);
	peer_sleep_ms(sc->delay_ms);
	len = sc->answer_len ? sc->answer_len : strlen(sc->answer);
	if (sc->split_ms > 0) {
		peer_write_all(fd, sc->answer, len / 2);
		peer_sleep_ms(sc->split_ms);
		peer_write_all(fd, sc->answer + len / 2, len - len / 2);
	} else {
		peer_write_all(fd, sc->answer, len);
	}
	close(fd);		/* spamd closes after its answer */
	return 0;
}

/* The caller's reader: the message from memory, with faults on request. */
struct source {
	const unsigned char *data;
	size_t len;
	size_t largest;		/* largest piece asked for */
	unsigned calls;
	long fail_at;		/* >= 0: error at this offset */
	long end_at;		/* >= 0: pretend the message ends here */
};

static ssize_t
read_source(void *ctx, size_t offset, void *buf, size_t len)
{
	struct source *s = ctx;

	s->calls++;
	if (len > s->largest)
		s->largest = len;
	if (s->fail_at >= 0 && offset >= (size_t)s->fail_at)
		return -1;
	if (s->end_at >= 0 && offset >= (size_t)s->end_at)
		return 0;
	if (offset >= s->len)
		return 0;
	if (len > s->len - offset)
		len = s->len - offset;
	if (len > 1000)		/* a reader may return less than asked */
		len -= 7;
	memcpy(buf, s->data + offset, len);
	return (ssize_t)len;
}

struct result {
	struct mm_spamd_result r;
	double ms;
	int peer;
	struct source src;
};

static struct result
check(const struct script *sc, int inet, unsigned timeout_ms, size_t max_bytes,
      size_t size, const char *prefix, long fail_at, long end_at)
{
	struct peer peer;
	struct mm_engine_config cfg = { .timeout_ms = timeout_ms, .max_bytes = max_bytes };
	struct result res = { .peer = 0 };
	unsigned char *data = malloc(size + 1);
	struct mm_spamd_request req = {
		.size = size, .read = read_source, .ctx = &res.src, .prefix = prefix,
	};
	double t0;

	for (size_t i = 0; i < size; i++)
		data[i] = pattern(i);
	res.src = (struct source) { data, size, 0, 0, fail_at, end_at };
	peer_start(&peer, inet, fake_spamd, sc);
	cfg.address = peer.address;
	t0 = test_now_ms();
	mm_spamd_check(&cfg, &req, &res.r);
	res.ms = test_now_ms() - t0;
	res.peer = peer_stop(&peer, sc->mode == ANSWER && sc->delay_ms < 1000 &&
			   sc->split_ms < 1000);
	free(data);
	return res;
}

static void
test_protocol(void)
{
	static const char prefix[] = "Received: from client.example (client.example"
		" [192.0.2.1])\r\n\tby mail.example (Postfix) with ESMTP id 4XyZ\r\n";
	struct script sc = { ANSWER, GTUBE_ANSWER, 0, 0, 0, 300000, prefix };

	for (int inet = 0; inet <= 1; inet++) {
		struct result res = check(&sc, inet, 5000, 500u << 10, 300000, prefix, -1, -1);

		CHECK(res.peer == 0);
		CHECK(res.r.status == MM_SPAMD_SCORED);
		CHECK(res.r.score == 1000.0 && res.r.required == 5.0 && res.r.spam);
		CHECK(strcmp(res.r.rules,
			     "GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO") == 0);
		/* streamed in bounded pieces, never the whole message at once */
		CHECK(res.src.largest <= 32768 && res.src.calls >= 9);
	}
	/* the answer in two pieces, the second after a while */
	sc.split_ms = 100;
	sc.prefix = NULL;
	sc.expect_len = 10;
	struct result res = check(&sc, 0, 5000, 500u << 10, 10, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_SCORED && res.peer == 0);
}

static void
test_answers(void)
{
	static const struct {
		const char *answer;
		const char *reason;	/* NULL: scored */
		double score;
		const char *rules;
	} cases[] = {
		{ "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -1.5 / 5.0\r\n\r\n",
		  NULL, -1.5, "" },
		/* no Content-length: the body ends where spamd closes */
		{ "SPAMD/1.1 0 EX_OK\r\nSpam: False ; 3.3 / 5.0\r\n\r\nMISSING_DATE,NO_RELAYS\r\n",
		  NULL, 3.3, "MISSING_DATE,NO_RELAYS" },
		{ "SPAMD/1.5 0 EX_OK\r\ncontent-length: 5\r\nX-Other: 1\r\n"
		  "Spam: Yes ; 12.0 / 5.0\r\n\r\nA_B.C", NULL, 12.0, "A_B.C" },
		{ "SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n",
		  "spamd refused: SPAMD/1.0 76 Bad header line", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\n\r\n", "no Spam header", 0, NULL },
		{ "HTTP/1.1 200 OK\r\nContent-length: 0\r\n\r\n",
		  "unexpected answer from spamd: HTTP/1.1 200 OK", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1.0 / 5.0\r\n\r\n",
		  "unexpected Spam header", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n",
		  "unexpected Spam header", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.0 / 5.0 extra\r\n\r\n",
		  "unexpected Spam header", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nContent-length: 12\r\nSpam: True ; 9.0 / 5.0\r\n\r\n"
		  "GTUBE,<b>x</", "unexpected rule names", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nContent-length: 6\r\nSpam: True ; 9.0 / 5.0\r\n\r\n"
		  "GTUBE,", "unexpected rule names", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nContent-length: 100\r\nSpam: True ; 9.0 / 5.0\r\n\r\n"
		  "GTUBE", "announced 100", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", "unexpected header", 0, NULL },
		{ "SPAMD/1.1 0 EX_OK\r\nContent-length: 1\r\nSpam: True ; 9",
		  "ended inside its headers", 0, NULL },
		{ "SPAMD/1.1", "unexpected answer from spamd: SPAMD/1.1", 0, NULL },
		{ "SPAMD/x.y 0 EX_OK\r\n\r\n", "unexpected answer", 0, NULL },
		{ "", "closed the connection without an answer", 0, NULL },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct script sc = { ANSWER, cases[i].answer, 0, 0, 0, 2000, NULL };
		struct result res = check(&sc, 0, 2000, 500u << 10, 2000, NULL, -1, -1);

		CHECK(res.peer == 0);
		if (cases[i].reason == NULL) {
			CHECK(res.r.status == MM_SPAMD_SCORED);
			CHECK(res.r.score == cases[i].score);
			CHECK(strcmp(res.r.rules, cases[i].rules) == 0);
			continue;
		}
		CHECK(res.r.status == MM_SPAMD_FAILED);
		CHECK(test_has(res.r.reason, cases[i].reason));
		CHECK(res.r.rules[0] == '\0' && res.r.score == 0);
		CHECK(res.ms < 1000);
	}
}

/* Rule names beyond the buffer are dropped whole, and said so. */
static void
test_many_rules(void)
{
	size_t n = 0, names = 0;
	static char answer[16384];
	char body[12000];
	struct result res;

	while (n + 12 < sizeof(body))
		n += (size_t)snprintf(body + n, sizeof(body) - n, "%sRULE_%05zu",
				      n ? "," : "", names++);
	snprintf(answer, sizeof(answer), "SPAMD/1.1 0 EX_OK\r\nContent-length: %zu\r\n"
		 "Spam: True ; 99.0 / 5.0\r\n\r\n%s", n, body);
	struct script sc = { ANSWER, answer, 0, 0, 0, 100, NULL };
	res = check(&sc, 0, 2000, 500u << 10, 100, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_SCORED);
	CHECK(res.r.rules_truncated);
	CHECK(strlen(res.r.rules) < MM_SPAMD_RULES_SIZE);
	CHECK(strncmp(res.r.rules, "RULE_00000,RULE_00001,", 22) == 0);
	CHECK(res.r.rules[strlen(res.r.rules) - 1] != ',');
}

static void
test_babble(void)
{
	static char flood[100000];
	struct script sc = { ANSWER, flood, sizeof(flood), 0, 0, 100, NULL };
	struct result res;

	memcpy(flood, "SPAMD/1.1 0 EX_OK\r\n", 19);
	memset(flood + 19, 'A', sizeof(flood) - 19);
	res = check(&sc, 0, 3000, 500u << 10, 100, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_FAILED);
	CHECK(test_has(res.r.reason, "answer is longer than"));
	CHECK(res.ms < 1000);
}

static void
test_timeouts(void)
{
	struct script hang_after = { HANG_AFTER_REQUEST, NULL, 0, 0, 0, 5000, NULL };
	struct script hang_before = { HANG_BEFORE_READING, NULL, 0, 0, 0, -1, NULL };
	struct script slow = { ANSWER, GTUBE_ANSWER, 0, 600, 0, 100, NULL };
	struct script stalls = { ANSWER, GTUBE_ANSWER, 0, 0, 5000, 100, NULL };
	struct result res;

	res = check(&hang_after, 0, 300, 500u << 10, 5000, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_FAILED);
	CHECK(test_has(res.r.reason, "no answer from spamd within 300 ms"));
	CHECK(res.ms >= 290 && res.ms < 1500);
	CHECK(res.r.elapsed_ms >= 290 && res.r.elapsed_ms < 1500);

	/* never read: the request cannot be sent, the timeout ends it */
	for (int inet = 0; inet <= 1; inet++) {
		res = check(&hang_before, inet, 300, 64u << 20, 16u << 20, NULL, -1, -1);
		CHECK(res.r.status == MM_SPAMD_FAILED);
		CHECK(test_has(res.r.reason, "sending to spamd timed out"));
		CHECK(res.ms >= 290 && res.ms < 1500);
	}

	/* half an answer, then silence */
	res = check(&stalls, 0, 300, 500u << 10, 100, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_FAILED && res.ms < 1500);
	CHECK(test_has(res.r.reason, "no answer from spamd within 300 ms"));

	res = check(&slow, 0, 3000, 500u << 10, 100, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_SCORED && res.ms >= 590);
	res = check(&slow, 0, 300, 500u << 10, 100, NULL, -1, -1);
	CHECK(res.r.status == MM_SPAMD_FAILED && res.ms < 590);
}

/* Too large, not configured, unreachable, a failing reader: no hang,
   and nothing half-sent is taken for an answer. */
static void
test_not_scanned(void)
{
	struct mm_engine_config cfg = {
		.address = "unix:/nonexistent/spamd.sock", .timeout_ms = 2000,
		.max_bytes = 1000,
	};
	struct source src = { (const unsigned char *)"x", 1, 0, 0, -1, -1 };
	struct mm_spamd_request req = { .size = 1001, .read = read_source, .ctx = &src };
	struct mm_spamd_result r;
	struct script sc = { ANSWER, GTUBE_ANSWER, 0, 0, 0, -1, NULL };
	struct result res;

	/* skipped before connecting: the address would fail */
	mm_spamd_check(&cfg, &req, &r);
	CHECK(r.status == MM_SPAMD_SKIPPED && test_has(r.reason, "1001 bytes, more than max_bytes 1000"));
	CHECK(src.calls == 0);
	req.size = 990;
	req.prefix = "Received: from x\r\n";
	mm_spamd_check(&cfg, &req, &r);
	CHECK(r.status == MM_SPAMD_SKIPPED);

	req.size = 1;
	req.prefix = NULL;
	mm_spamd_check(&cfg, &req, &r);
	CHECK(r.status == MM_SPAMD_FAILED);
	CHECK(test_has(r.reason, "spamd: connect to /nonexistent/spamd.sock"));

	cfg.address = NULL;
	mm_spamd_check(&cfg, &req, &r);
	CHECK(r.status == MM_SPAMD_SKIPPED && test_has(r.reason, "not configured"));

	res = check(&sc, 0, 2000, 500u << 10, 100000, NULL, 40000, -1);
	CHECK(res.r.status == MM_SPAMD_FAILED);
	CHECK(test_has(res.r.reason, "reading the message at offset"));
	res = check(&sc, 0, 2000, 500u << 10, 100000, NULL, -1, 50000);
	CHECK(res.r.status == MM_SPAMD_FAILED);
	CHECK(test_has(res.r.reason, "the message ended after"));
	CHECK(res.peer != 0);	/* the fake never got a whole request */
}

/* Expected values from SpamAssassin 4.0.1 itself (perl, see above). */
static void
test_headers(void)
{
	static const struct {
		double score, required;
		const char *rules, *score_text;
		size_t stars;
		const char *status;
	} cases[] = {
		{ 1000, 5, "GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO", "1000.0", 50,
		  "Yes, score=1000.0 required=5.0 tests=GTUBE,MSGID_SHORT,\n\tNO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO" },
		{ 15.2, 5, "BAYES_99,BAYES_999,DATE_IN_PAST_12_24,DCC_CHECK,DKIM_ADSP_NXDOMAIN,"
		  "FREEMAIL_FROM,FROM_HAS_MIXED_NUMS,HTML_MESSAGE,INVALID_DATE,INVALID_MSGID,"
		  "LOTS_OF_MONEY,MIME_HTML_ONLY,MISSING_HEADERS,MONEY_FRAUD_5,NO_REAL_NAME,"
		  "RCVD_IN_SBL_CSS,SPF_HELO_NONE,T_SCC_BODY_TEXT_LINE,UNDISC_RECIPS,URIBL_ABUSE_SURBL",
		  "15.2", 15,
		  "Yes, score=15.2 required=5.0 tests=BAYES_99,BAYES_999,\n\tDATE_IN_PAST_12_24,"
		  "DCC_CHECK,DKIM_ADSP_NXDOMAIN,FREEMAIL_FROM,\n\tFROM_HAS_MIXED_NUMS,HTML_MESSAGE,"
		  "INVALID_DATE,INVALID_MSGID,\n\tLOTS_OF_MONEY,MIME_HTML_ONLY,MISSING_HEADERS,"
		  "MONEY_FRAUD_5,\n\tNO_REAL_NAME,RCVD_IN_SBL_CSS,SPF_HELO_NONE,T_SCC_BODY_TEXT_LINE,"
		  "\n\tUNDISC_RECIPS,URIBL_ABUSE_SURBL" },
		{ 3.3, 5, "MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS", "3.3", 3,
		  "No, score=3.3 required=5.0 tests=MISSING_DATE,MISSING_MID,\n\tNO_RECEIVED,NO_RELAYS" },
		{ -1.5, 5, "", "-1.5", 0, "No, score=-1.5 required=5.0 tests=none" },
		{ 4.96, 5, "X", "4.9", 4, "No, score=4.9 required=5.0 tests=X" },
		{ 5, 5, "X", "5.0", 5, "Yes, score=5.0 required=5.0 tests=X" },
		{ 7.5, 6.31, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		  "AAAAAAAAAAAAAAAA,B,C", "7.5", 7,
		  "Yes, score=7.5 required=6.3\n\ttests=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,\n\tB,C" },
		{ 0.04, 5, "NO_RECEIVED", "0.0", 0, "No, score=0.0 required=5.0 tests=NO_RECEIVED" },
		{ -0.04, 5, "NO_RECEIVED", "-0.0", 0, "No, score=-0.0 required=5.0 tests=NO_RECEIVED" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mm_spamd_result r = { .status = MM_SPAMD_SCORED, .score = cases[i].score };
		struct mm_spam_headers h;
		int spam = cases[i].score >= cases[i].required;

		snprintf(r.rules, sizeof(r.rules), "%s", cases[i].rules);
		mm_spamd_headers(&r, cases[i].required, &h);
		CHECK(strcmp(h.flag, spam ? "YES" : "NO") == 0);
		CHECK(strcmp(h.score, cases[i].score_text) == 0);
		CHECK(strlen(h.level) == cases[i].stars && strspn(h.level, "*") == cases[i].stars);
		CHECK(strcmp(h.status, cases[i].status) == 0);
		if (strcmp(h.status, cases[i].status) != 0)
			fprintf(stderr, "  case %zu:\n  got  %s\n  want %s\n", i, h.status,
				cases[i].status);
	}
}

int
main(void)
{
	test_headers();
	test_protocol();
	test_answers();
	test_many_rules();
	test_babble();
	test_timeouts();
	test_not_scanned();
	return test_result();
}
