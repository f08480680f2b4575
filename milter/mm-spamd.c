/*
 * mm-spamd.c - the SPAMC/1.5 protocol's SYMBOLS request, and
 * SpamAssassin's header formats.
 *
 * Request (spamd(1p), spamc's libspamc.c):
 *	SYMBOLS SPAMC/1.5\r\n
 *	Content-length: N\r\n
 *	\r\n
 *	N bytes of message
 * Answer:
 *	SPAMD/1.1 0 EX_OK\r\n
 *	Content-length: 26\r\n
 *	Spam: True ; 1000.0 / 5.0\r\n
 *	\r\n
 *	GTUBE,NO_RECEIVED,NO_RELAYS
 * A non-zero code ("SPAMD/1.0 76 Bad header line: ...") is spamd refusing.
 * The answer is read into a fixed buffer and parsed strictly: a peer that
 * says anything else is a failure, and nothing it says reaches a header
 * unless it is a number or a rule name.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mm-spamd.h"

#define IO_SIZE		(32u * 1024u)	/* message pieces sent; answer kept */
#define STATUS_WIDTH	79		/* SpamAssassin's folding column */

const char *
mm_spamd_status_name(enum mm_spamd_status status)
{
	switch (status) {
	case MM_SPAMD_SCORED: return "scored";
	case MM_SPAMD_SKIPPED: return "skipped";
	case MM_SPAMD_FAILED: return "failed";
	}
	return "unknown";
}

/* ------------------------------------------------------------- sending */

/* A send failed: spamd may have said why before closing. */
static void
send_failed(int fd, int err, unsigned timeout_ms, char why[MM_ENGINE_TEXT_SIZE])
{
	char answer[512], said[MM_ENGINE_TEXT_SIZE];
	ssize_t n = recv(fd, answer, sizeof(answer) - 1, MSG_DONTWAIT);

	if (n > 0) {
		answer[n] = '\0';
		mm_engine_quote(said, answer, strcspn(answer, "\r\n"));
		mm_engine_why(why, "spamd stopped the request: %s", said);
	} else if (err == ETIMEDOUT) {
		mm_engine_why(why, "sending to spamd timed out (timeout %u ms)", timeout_ms);
	} else {
		mm_engine_why(why, "sending to spamd: %s", strerror(err));
	}
}

static int
send_request(int fd, const struct mm_spamd_request *req, size_t prefix_len,
	     char *buf, int64_t deadline, unsigned timeout_ms,
	     char why[MM_ENGINE_TEXT_SIZE])
{
	char head[128];
	int head_len = snprintf(head, sizeof(head),
				"SYMBOLS SPAMC/1.5\r\nContent-length: %zu\r\n\r\n",
				prefix_len + req->size);
	struct iovec iov[2] = {
		{ head, (size_t)head_len },
		{ (void *)req->prefix, prefix_len },
	};
	size_t offset = 0;

	if (mm_engine_send(fd, iov, prefix_len > 0 ? 2 : 1, deadline) < 0)
		goto failed;
	while (offset < req->size) {
		size_t want = req->size - offset < IO_SIZE ? req->size - offset : IO_SIZE;
		ssize_t n = req->read(req->ctx, offset, buf, want);
		struct iovec piece;

		if (n < 0 || (size_t)n > want) {
			mm_engine_why(why, "reading the message at offset %zu failed", offset);
			return -1;
		}
		if (n == 0) {
			mm_engine_why(why, "the message ended after %zu of %zu bytes",
				      offset, req->size);
			return -1;
		}
		piece.iov_base = buf;
		piece.iov_len = (size_t)n;
		if (mm_engine_send(fd, &piece, 1, deadline) < 0)
			goto failed;
		offset += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	return 0;
failed:
	send_failed(fd, errno, timeout_ms, why);
	return -1;
}

/* ----------------------------------------------------------- the answer */

/* A decimal number as SpamAssassin prints it: -?digits(.digits)?
   (locale-independent, unlike strtod). */
static const char *
parse_decimal(const char *s, double *out)
{
	double v = 0, scale = 1;
	int neg = 0, digits = 0;

	while (*s == ' ')
		s++;
	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	for (; *s >= '0' && *s <= '9' && digits < 12; s++, digits++)
		v = v * 10 + (*s - '0');
	if (digits == 0 || (*s >= '0' && *s <= '9'))
		return NULL;
	if (*s == '.') {
		s++;
		for (int d = 0; *s >= '0' && *s <= '9'; s++, d++)
			if (d < 6) {
				scale /= 10;
				v += (*s - '0') * scale;
			}
	}
	*out = neg ? -v : v;
	return s;
}

/* "True ; 1000.0 / 5.0" */
static int
parse_spam_header(const char *v, struct mm_spamd_result *r)
{
	if (strncasecmp(v, "True", 4) == 0 || strncasecmp(v, "Yes", 3) == 0)
		r->spam = true;
	else if (strncasecmp(v, "False", 5) != 0 && strncasecmp(v, "No", 2) != 0)
		return -1;
	if ((v = strchr(v, ';')) == NULL || (v = parse_decimal(v + 1, &r->score)) == NULL)
		return -1;
	while (*v == ' ')
		v++;
	if (*v != '/' || (v = parse_decimal(v + 1, &r->required)) == NULL)
		return -1;
	while (*v == ' ')
		v++;
	return *v == '\0' ? 0 : -1;
}

static bool
rule_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/* The body: "NAME,NAME,...", maybe with a line end. */
static int
parse_rules(const char *body, size_t len, struct mm_spamd_result *r)
{
	size_t out = 0;

	while (len > 0 && (body[len - 1] == '\n' || body[len - 1] == '\r' ||
			   body[len - 1] == ' '))
		len--;
	for (size_t i = 0; i < len;) {
		size_t n = 0;

		while (i + n < len && body[i + n] != ',') {
			if (!rule_char(body[i + n]))
				return -1;
			n++;
		}
		if (n == 0)
			return -1;
		if (out + (out > 0) + n < sizeof(r->rules) && !r->rules_truncated) {
			if (out > 0)
				r->rules[out++] = ',';
			memcpy(r->rules + out, body + i, n);
			out += n;
		} else {
			r->rules_truncated = true;
		}
		i += n + 1;
		if (i == len)		/* a trailing comma */
			return -1;
	}
	r->rules[out] = '\0';
	return 0;
}

/* Splits off one "\r\n"-terminated line at *P (within END). */
static char *
next_line(char **p, char *end)
{
	char *line = *p, *eol;

	for (eol = line; eol + 1 < end; eol++)
		if (eol[0] == '\r' && eol[1] == '\n')
			break;
	if (eol + 1 >= end)
		return NULL;
	*eol = '\0';
	*p = eol + 2;
	return line;
}

static int
parse_answer(char *buf, size_t len, struct mm_spamd_result *r,
	     char why[MM_ENGINE_TEXT_SIZE])
{
	char *p = buf, *end = buf + len, *line, said[MM_ENGINE_TEXT_SIZE];
	long code;
	char *after;
	bool have_spam = false;
	size_t body_len = (size_t)-1;

	line = next_line(&p, end);
	if (line == NULL) {
		mm_engine_quote(said, buf, strnlen(buf, len));
		mm_engine_why(why, "unexpected answer from spamd: %s", said);
		return -1;
	}
	mm_engine_quote(said, line, strlen(line));
	if (strncmp(line, "SPAMD/1.", 8) != 0 || line[8] < '0' || line[8] > '9' ||
	    strchr(line, ' ') == NULL) {
		mm_engine_why(why, "unexpected answer from spamd: %s", said);
		return -1;
	}
	code = strtol(strchr(line, ' ') + 1, &after, 10);
	if (after == strchr(line, ' ') + 1 || (*after != ' ' && *after != '\0')) {
		mm_engine_why(why, "unexpected answer from spamd: %s", said);
		return -1;
	}
	if (code != 0) {
		mm_engine_why(why, "spamd refused: %s", said);
		return -1;
	}
	while ((line = next_line(&p, end)) != NULL && *line != '\0') {
		char *colon = strchr(line, ':'), *value;

		mm_engine_quote(said, line, strlen(line));
		if (colon == NULL) {
			mm_engine_why(why, "unexpected header from spamd: %s", said);
			return -1;
		}
		*colon = '\0';
		value = colon + 1 + strspn(colon + 1, " \t");
		if (strcasecmp(line, "Spam") == 0) {
			if (parse_spam_header(value, r) < 0) {
				mm_engine_why(why, "unexpected Spam header from spamd: %s", said);
				return -1;
			}
			have_spam = true;
		} else if (strcasecmp(line, "Content-length") == 0) {
			unsigned long long n = strtoull(value, &after, 10);

			if (after == value || *after != '\0' || value[0] == '-' ||
			    n > IO_SIZE) {
				mm_engine_why(why, "unexpected header from spamd: %s", said);
				return -1;
			}
			body_len = (size_t)n;
		}
	}
	if (line == NULL) {
		mm_engine_why(why, "spamd's answer ended inside its headers");
		return -1;
	}
	if (!have_spam) {
		mm_engine_why(why, "spamd's answer has no Spam header");
		return -1;
	}
	if (body_len == (size_t)-1)
		body_len = (size_t)(end - p);
	if ((size_t)(end - p) != body_len) {
		mm_engine_why(why, "spamd's answer has %zu bytes after its headers, "
			      "announced %zu", (size_t)(end - p), body_len);
		return -1;
	}
	if (parse_rules(p, body_len, r) < 0) {
		mm_engine_quote(said, p, body_len);
		mm_engine_why(why, "unexpected rule names from spamd: %s", said);
		return -1;
	}
	return 0;
}

/* Whether BUF holds a complete answer: its headers, then Content-length
   bytes (an answer without Content-length ends when spamd closes). */
static bool
answer_complete(const char *buf, size_t len)
{
	const char *hend = memmem(buf, len, "\r\n\r\n", 4), *cl;
	size_t hlen;

	if (hend == NULL)
		return false;
	hlen = (size_t)(hend - buf) + 4;
	/* each header line starts after a line end, up to the empty line */
	for (cl = memchr(buf, '\n', hlen); cl != NULL && cl + 1 <= hend;
	     cl = memchr(cl + 1, '\n', (size_t)(hend - cl))) {
		if (strncasecmp(cl + 1, "Content-length:", 15) == 0)
			return len - hlen >= strtoull(cl + 16, NULL, 10);
	}
	return false;
}

static int
read_answer(int fd, char *buf, size_t size, size_t *len, int64_t deadline,
	    unsigned timeout_ms, char why[MM_ENGINE_TEXT_SIZE])
{
	*len = 0;
	while (*len < size - 1) {
		ssize_t n = mm_engine_recv(fd, buf + *len, size - 1 - *len, deadline);

		if (n < 0 && errno == ETIMEDOUT) {
			mm_engine_why(why, "no answer from spamd within %u ms", timeout_ms);
			return -1;
		}
		if (n < 0) {
			mm_engine_why(why, "reading spamd's answer: %s", strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		*len += (size_t)n;
		buf[*len] = '\0';
		if (answer_complete(buf, *len))
			break;
	}
	buf[*len] = '\0';
	if (*len == 0) {
		mm_engine_why(why, "spamd closed the connection without an answer");
		return -1;
	}
	if (*len == size - 1) {
		mm_engine_why(why, "spamd's answer is longer than %zu bytes", size - 1);
		return -1;
	}
	return 0;
}

void
mm_spamd_check(const struct mm_engine_config *cfg,
	       const struct mm_spamd_request *req, struct mm_spamd_result *r)
{
	int64_t start = mm_engine_now_ms(), deadline = start + cfg->timeout_ms;
	size_t prefix_len = req->prefix ? strlen(req->prefix) : 0, len;
	char *buf = NULL;
	int fd = -1;

	memset(r, 0, sizeof(*r));
	r->status = MM_SPAMD_FAILED;
	if (cfg->address == NULL) {
		r->status = MM_SPAMD_SKIPPED;
		mm_engine_why(r->reason, "spamd is not configured");
		return;
	}
	if (req->size > cfg->max_bytes || prefix_len > cfg->max_bytes - req->size) {
		r->status = MM_SPAMD_SKIPPED;
		mm_engine_why(r->reason, "%zu bytes, more than max_bytes %zu",
			      prefix_len + req->size, cfg->max_bytes);
		return;
	}
	if (req->read == NULL && req->size > 0) {
		mm_engine_why(r->reason, "no reader for the message");
		return;
	}
	if ((buf = malloc(IO_SIZE + 1)) == NULL) {
		mm_engine_why(r->reason, "out of memory");
		return;
	}
	fd = mm_engine_connect(cfg->address, deadline, r->reason);
	if (fd >= 0 &&
	    send_request(fd, req, prefix_len, buf, deadline, cfg->timeout_ms,
			 r->reason) == 0 &&
	    read_answer(fd, buf, IO_SIZE + 1, &len, deadline, cfg->timeout_ms,
			r->reason) == 0 &&
	    parse_answer(buf, len, r, r->reason) == 0)
		r->status = MM_SPAMD_SCORED;
	if (fd < 0) {
		char why[MM_ENGINE_TEXT_SIZE];

		memcpy(why, r->reason, sizeof(why));
		snprintf(r->reason, sizeof(r->reason), "spamd: %.240s", why);
	}
	if (r->status != MM_SPAMD_SCORED) {
		r->score = r->required = 0;
		r->spam = false;
		r->rules[0] = '\0';
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	r->elapsed_ms = (unsigned)(mm_engine_now_ms() - start);
}

/* ------------------------------------------------------------- headers */

/* SpamAssassin's _SCORE_: "%2.1f", but a message that is not spam never
   shows a score that rounds up to the required one (Util.pm,
   get_tag_value_for_score). */
static void
format_score(double score, double required, bool is_spam, char *out, size_t size)
{
	char s[32], rs[32];

	snprintf(s, sizeof(s), "%2.1f", score);
	snprintf(rs, sizeof(rs), "%2.1f", required);
	if (is_spam || strtod(s, NULL) < strtod(rs, NULL))
		snprintf(out, size, "%s", s);
	else
		snprintf(out, size, "%.15g", strtod(rs, NULL) - 0.1);
}

struct folder {
	char *out;
	size_t size, len;	/* the output so far */
	char line[MM_SPAMD_RULES_SIZE + 256];
	size_t line_len;
};

static size_t
width(const char *s, size_t len)
{
	size_t w = len;

	for (size_t i = 0; i < len; i++)
		if (s[i] == '\t')
			w += 7;
	return w;
}

/* Ends the current line: trailing white space off, blank lines dropped. */
static void
fold_emit(struct folder *f)
{
	size_t n = f->line_len;

	while (n > 0 && (f->line[n - 1] == ' ' || f->line[n - 1] == '\t'))
		n--;
	if (n > 0 && f->len + n + 2 < f->size) {
		if (f->len > 0)
			f->out[f->len++] = '\n';
		memcpy(f->out + f->len, f->line, n);
		f->len += n;
		f->out[f->len] = '\0';
	}
	f->line_len = 0;
}

/*
 * Mail::SpamAssassin::Util::wrap(header, "\t", "", 79, 0, '(?<=[\s,])'),
 * step for step: the text is split after every space and comma (Perl's
 * split with a capturing zero-width pattern puts an empty element between
 * the pieces); a line takes the next element while it stays within 79
 * columns (a tab counting 8), and its first element unconditionally.
 */
static void
fold(struct folder *f, const char *text)
{
	size_t len = strlen(text), i = 0;
	bool first = true, pos_mod = false;

	f->line_len = 0;
	while (i < len) {
		size_t n = 0;

		/* one piece: up to and including the next space or comma */
		while (i + n < len && text[i + n] != ' ' && text[i + n] != ',')
			n++;
		if (i + n < len)
			n++;
		for (int empty = first ? 1 : 0; empty < 2; empty++) {
			/* element: the empty separator, then the piece */
			const char *e = empty ? text + i : "";
			size_t elen = empty ? n : 0;

			if (first) {
				memcpy(f->line, e, elen);
				f->line_len = elen;
				first = false;
				continue;
			}
			for (;;) {
				size_t w = width(f->line, f->line_len) +
					   (pos_mod ? width(e, elen) : 0);

				if (w <= STATUS_WIDTH) {
					if (f->line_len + elen < sizeof(f->line)) {
						memcpy(f->line + f->line_len, e, elen);
						f->line_len += elen;
					}
					pos_mod = true;
					break;
				}
				fold_emit(f);
				f->line[0] = '\t';
				f->line_len = 1;
				pos_mod = false;
			}
		}
		i += n;
	}
	fold_emit(f);
}

void
mm_spamd_headers(const struct mm_spamd_result *r, double required,
		 struct mm_spam_headers *h)
{
	static const char name[] = "X-Spam-Status!!";
	bool is_spam = r->score >= required;
	char reqd[32], *text;
	size_t text_size = sizeof(r->rules) + 128;
	struct folder *f;
	int stars = r->score >= 50 ? 50 : r->score >= 1 ? (int)r->score : 0;

	memset(h, 0, sizeof(*h));
	snprintf(h->flag, sizeof(h->flag), "%s", is_spam ? "YES" : "NO");
	format_score(r->score, required, is_spam, h->score, sizeof(h->score));
	memset(h->level, '*', (size_t)stars);
	h->level[stars] = '\0';
	snprintf(reqd, sizeof(reqd), "%2.1f", required);

	text = malloc(text_size);
	f = calloc(1, sizeof(*f));
	if (text == NULL || f == NULL) {
		snprintf(h->status, sizeof(h->status), "%s, score=%s required=%s",
			 is_spam ? "Yes" : "No", h->score, reqd);
		free(text);
		free(f);
		return;
	}
	snprintf(text, text_size, "%s%s, score=%s required=%s tests=%s", name,
		 is_spam ? "Yes" : "No", h->score, reqd,
		 r->rules[0] ? r->rules : "none");
	f->out = h->status;
	f->size = sizeof(h->status);
	fold(f, text);
	/* the header name only measured the first line */
	memmove(h->status, h->status + strlen(name),
		strlen(h->status + strlen(name)) + 1);
	free(text);
	free(f);
}
