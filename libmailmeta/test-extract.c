/*
 * test-extract.c - the extractor on hostile and ordinary input
 *
 * Each case builds its message in code, feeds it and checks the record:
 * field extraction on a well-formed message, then the inputs a mail server
 * meets from careless or malicious senders (NUL and 8-bit header bytes,
 * a 100 KB header line, unknown charsets, 200-deep nesting, truncated
 * base64, empty input, headers only) and a 20 MB attachment fed in 64 KB
 * chunks, which must go to the spool file and leave memory use flat.
 * Every record must also serialise (valid UTF-8 throughout).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <glib.h>
#include <openssl/evp.h>

#include "mm-extract.h"
#include "test-common.h"


/* Feeds msg in chunks of the given size (0: at once) and finishes. */
static json_t *
extract(const char *msg, size_t len, size_t chunk)
{
	struct mm_extract *x = mm_extract_new(NULL);
	json_t *doc;
	char *text;
	size_t off;

	if (chunk == 0)
		chunk = len > 0 ? len : 1;
	for (off = 0; off < len; off += chunk)
		mm_extract_feed(x, msg + off, len - off < chunk ? len - off : chunk);
	doc = mm_extract_finish(x);
	mm_extract_free(&x);
	CHECK(x == NULL);
	CHECK(doc != NULL);
	text = json_dumps(doc, JSON_COMPACT);   /* NULL on invalid UTF-8 */
	CHECK(text != NULL);
	free(text);
	return doc;
}

static json_t *
extract_str(const char *msg)
{
	return extract(msg, strlen(msg), 0);
}

/* The string at a dotted path ("parts.0.part"), or "" when there is none. */
static const char *
str_at(json_t *doc, const char *path)
{
	char *copy = strdup(path), *key, *save = NULL;
	json_t *v = doc;

	for (key = strtok_r(copy, ".", &save); key && v;
	     key = strtok_r(NULL, ".", &save))
		v = json_is_array(v) ? json_array_get(v, strtoul(key, NULL, 10))
				     : json_object_get(v, key);
	free(copy);
	return json_is_string(v) ? json_string_value(v) : "";
}

static int
has_reason(json_t *doc, const char *prefix)
{
	size_t i;
	json_t *r;

	json_array_foreach(json_object_get(doc, "malformed_reasons"), i, r) {
		if (strncmp(json_string_value(r), prefix, strlen(prefix)) == 0)
			return 1;
	}
	return 0;
}

static int
is_malformed(json_t *doc)
{
	return json_is_true(json_object_get(doc, "malformed"));
}

/* ------------------------------------------------------------ cases */

static const char good[] =
	"From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= <Alice@Example.ORG>\r\n"
	"To: Team: bob@example.net, \"Carol C.\" <carol@EXAMPLE.net>;,\r\n"
	"  dave@example.com\r\n"
	"Subject: =?iso-8859-1?q?Gr=FC=DFe?= aus\r\n"
	" Berlin\r\n"
	"Date: Wed, 17 May 2000 19:30:20 -0400\r\n"
	"Message-ID: <abc@example.org>\r\n"
	"In-Reply-To: <p@example.org>\r\n"
	"References: <r@example.org> <p@example.org>\r\n"
	"  <p@example.org> <q@example.org>\r\n"
	"List-Id: Friends <friends.example.org>\r\n"
	"Auto-Submitted: auto-replied\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
	"\r\n"
	"--b1\r\n"
	"Content-Type: text/plain; charset=UTF-8\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"Hallo =C3=A4\r\n"
	"--b1\r\n"
	"Content-Type: application/pdf\r\n"
	"Content-Disposition: attachment; filename*=utf-8''Bericht%20M%C3%A4rz.pdf\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"aGVsbG8=\r\n"
	"--b1\r\n"
	"Content-Type: message/rfc822\r\n"
	"\r\n"
	"Subject: inner\r\n"
	"Content-Type: multipart/mixed; boundary=b2\r\n"
	"\r\n"
	"--b2\r\n"
	"\r\n"
	"inner text\r\n"
	"--b2\r\n"
	"Content-Type: image/png; name=x.png\r\n"
	"\r\n"
	"png\r\n"
	"--b2--\r\n"
	"--b1--\r\n";

static void
test_fields(void)
{
	json_t *doc = extract_str(good), *h = json_object_get(doc, "headers");
	json_t *parts = json_object_get(doc, "parts");
	json_t *atts = json_object_get(doc, "attachments");

	CHECK(!is_malformed(doc));
	CHECK(json_integer_value(json_object_get(doc, "size_bytes")) ==
	      (json_int_t)strlen(good));
	CHECK(strcmp(str_at(h, "subject"), "Grüße aus Berlin") == 0);
	CHECK(strcmp(str_at(h, "from.0.name"), "Grüße") == 0);
	CHECK(strcmp(str_at(h, "from.0.address"), "Alice@example.org") == 0);
	CHECK(json_array_size(json_object_get(h, "to")) == 3);
	CHECK(strcmp(str_at(h, "to.1.address"), "carol@example.net") == 0);
	CHECK(json_is_null(json_object_get(json_array_get(
		json_object_get(h, "to"), 0), "name")));
	CHECK(strcmp(str_at(h, "date"), "2000-05-17T23:30:20Z") == 0);
	CHECK(strcmp(str_at(h, "date_raw"), "Wed, 17 May 2000 19:30:20 -0400") == 0);
	CHECK(strcmp(str_at(h, "message_id"), "abc@example.org") == 0);
	CHECK(strcmp(str_at(h, "in_reply_to.0"), "p@example.org") == 0);
	CHECK(json_array_size(json_object_get(h, "references")) == 3);
	CHECK(strcmp(str_at(h, "references.2"), "q@example.org") == 0);
	CHECK(strcmp(str_at(h, "list_id"), "friends.example.org") == 0);
	CHECK(strcmp(str_at(h, "auto_submitted"), "auto-replied") == 0);
	CHECK(json_array_size(parts) == 5);
	CHECK(strcmp(str_at(parts, "0.part"), "1") == 0);
	CHECK(strcmp(str_at(parts, "0.charset"), "utf-8") == 0);
	CHECK(strcmp(str_at(parts, "0.cte"), "quoted-printable") == 0);
	CHECK(json_integer_value(json_object_get(json_array_get(parts, 0),
						 "size_bytes")) == 8);
	CHECK(strcmp(str_at(parts, "1.filename"), "Bericht März.pdf") == 0);
	CHECK(strcmp(str_at(parts, "1.sha256"),
		"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824") == 0);
	CHECK(strcmp(str_at(parts, "2.content_type"), "message/rfc822") == 0);
	CHECK(strcmp(str_at(parts, "3.part"), "3.1") == 0);
	CHECK(strcmp(str_at(parts, "4.part"), "3.2") == 0);
	CHECK(json_array_size(atts) == 3);
	CHECK(strcmp(str_at(atts, "0.part"), "2") == 0);
	CHECK(strcmp(str_at(atts, "1.part"), "3") == 0);
	CHECK(strcmp(str_at(atts, "2.filename"), "x.png") == 0);
	json_decref(doc);
}

static void
test_chunking(void)
{
	json_t *whole = extract_str(good), *bytes = extract(good, strlen(good), 1);
	json_t *odd = extract(good, strlen(good), 7);

	CHECK(json_equal(whole, bytes));
	CHECK(json_equal(whole, odd));
	json_decref(whole);
	json_decref(bytes);
	json_decref(odd);
}

static void
test_empty_and_headers_only(void)
{
	json_t *doc = extract("", 0, 0);

	CHECK(is_malformed(doc));
	CHECK(has_reason(doc, "empty message"));
	CHECK(json_array_size(json_object_get(doc, "parts")) == 0);
	CHECK(json_is_null(json_object_get(json_object_get(doc, "headers"),
					   "subject")));
	json_decref(doc);
	doc = extract_str("Subject: only\r\nFrom: a@B.Example");
	CHECK(strcmp(str_at(doc, "headers.subject"), "only") == 0);
	CHECK(strcmp(str_at(doc, "headers.from.0.address"), "a@b.example") == 0);
	CHECK(has_reason(doc, "no empty line"));
	json_decref(doc);
}

static void
test_bad_header_bytes(void)
{
	static const char msg[] = "Subject: a\0b \xff\xfe caf\xc3\xa9\r\n"
		"From: \x80\x81 <x@\xc0.example>\r\n\r\nbody\r\n";
	json_t *doc = extract(msg, sizeof(msg) - 1, 3);

	CHECK(is_malformed(doc));
	CHECK(has_reason(doc, "NUL bytes"));
	CHECK(has_reason(doc, "8-bit bytes"));
	CHECK(json_is_string(json_object_get(json_object_get(doc, "headers"),
					     "subject")));
	json_decref(doc);
}

static void
test_long_header_line(void)
{
	size_t n = 100 * 1024;
	GString *m = g_string_new("Subject: ");
	json_t *doc;

	while (m->len < n)
		g_string_append(m, "word ");
	g_string_append(m, "\r\nX-Long: ");
	g_string_append(m, m->str + 9);
	g_string_append(m, "\r\n\r\nbody\r\n");
	doc = extract(m->str, m->len, 4096);
	CHECK(strlen(str_at(doc, "headers.subject")) >= n - 10);
	json_decref(doc);
	g_string_free(m, TRUE);
}

static void
test_unknown_charset(void)
{
	json_t *doc = extract_str(
		"Subject: =?x-no-such-charset?q?caf=E9?= =?utf-8?b?//79?=\r\n"
		"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
		"caf\xe9\r\n");

	CHECK(*str_at(doc, "headers.subject") != '\0');
	CHECK(strcmp(str_at(doc, "parts.0.charset"), "x-no-such-charset") == 0);
	json_decref(doc);
}

static void
test_deep_nesting(void)
{
	GString *m = g_string_new("Subject: deep\r\n");
	json_t *doc;
	int i;

	for (i = 0; i < 200; i++)
		g_string_append_printf(m, "Content-Type: multipart/mixed; "
				       "boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i);
	g_string_append(m, "Content-Type: text/plain\r\n\r\nleaf\r\n");
	for (i = 199; i >= 0; i--)
		g_string_append_printf(m, "--b%d--\r\n", i);
	doc = extract(m->str, m->len, 0);
	CHECK(is_malformed(doc));
	CHECK(json_array_size(json_object_get(doc, "parts")) <= 40);
	json_decref(doc);
	g_string_free(m, TRUE);
}

static void
test_many_parts(void)
{
	GString *m = g_string_new("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
	json_t *doc;
	int i;

	for (i = 0; i < 1500; i++)
		g_string_append(m, "--b\r\n\r\nx\r\n");
	g_string_append(m, "--b--\r\n");
	doc = extract(m->str, m->len, 0);
	CHECK(has_reason(doc, "more MIME parts"));
	CHECK(json_array_size(json_object_get(doc, "parts")) == 1000);
	json_decref(doc);
	g_string_free(m, TRUE);
}

static void
test_truncated_base64(void)
{
	json_t *doc = extract_str(
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
		"Content-Type: application/zip; name=a.zip\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\nUEsDBBQAAAAI=AA*");

	CHECK(is_malformed(doc));
	CHECK(json_array_size(json_object_get(doc, "attachments")) == 1);
	CHECK(strlen(str_at(doc, "attachments.0.sha256")) == 64);
	json_decref(doc);
}

/* ------------------------------------------------ 20 MB attachment */

#define BIG_LINES (15 * 1024 * 1024 / 57)

static void
big_payload_line(long i, unsigned char raw[57])
{
	int k;

	for (k = 0; k < 57; k++)
		raw[k] = (unsigned char)((i * 57 + k) * 2654435761u >> 13);
}

static long
maxrss_kb(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static void
test_big_attachment(void)
{
	static const char head[] = "Subject: big\r\nContent-Type: multipart/mixed;"
		" boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream;"
		" name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n";
	struct mm_extract *x = mm_extract_new(NULL);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char raw[57], dig[32], buf[65536];
	char hex[65];
	size_t fill = 0, total = 0;
	long i, before = maxrss_kb();
	json_t *doc;

	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	mm_extract_feed(x, head, sizeof(head) - 1);
	for (i = 0; i < BIG_LINES; i++) {
		big_payload_line(i, raw);
		EVP_DigestUpdate(md, raw, 57);
		fill += (size_t)EVP_EncodeBlock(buf + fill, raw, 57);
		memcpy(buf + fill, "\r\n", 2);
		fill += 2;
		if (fill + 80 > sizeof(buf) || i == BIG_LINES - 1) {
			CHECK(mm_extract_feed(x, buf, fill) == 0);
			total += fill;
			fill = 0;
		}
	}
	mm_extract_feed(x, "--b--\r\n", 7);
	CHECK(mm_extract_spooled(x));
	doc = mm_extract_finish(x);
	mm_extract_free(&x);
	EVP_DigestFinal_ex(md, dig, NULL);
	EVP_MD_CTX_free(md);
	for (i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", dig[i]);
	CHECK(total > 20 * 1000 * 1000);
	CHECK(json_integer_value(json_object_get(json_array_get(
		json_object_get(doc, "attachments"), 0), "size_bytes")) ==
	      (json_int_t)BIG_LINES * 57);
	CHECK(strcmp(str_at(doc, "attachments.0.sha256"), hex) == 0);
	printf("20 MB attachment: %zu bytes fed, max RSS grew by %ld KiB\n",
	       total + sizeof(head) + 6, maxrss_kb() - before);
	CHECK(maxrss_kb() - before < 8 * 1024);
	json_decref(doc);
}

/* Reads X back in pieces of PIECE bytes and compares with WANT. */
static void
check_read_back(struct mm_extract *x, const char *want, size_t len, size_t piece)
{
	char *got = malloc(len + 1), one;
	size_t off = 0;
	ssize_t n;

	CHECK(mm_extract_stored(x) == len);
	while ((n = mm_extract_read(x, off, got + off,
				    len - off < piece ? len - off : piece)) > 0)
		off += (size_t)n;
	CHECK(n == 0 && off == len);
	CHECK(memcmp(got, want, len) == 0);
	CHECK(mm_extract_read(x, len, &one, 1) == 0);
	CHECK(mm_extract_read(x, len + 100, &one, 1) == 0);
	free(got);
}

/* The bytes fed come back as they were, from memory and from the spool
   file, in any pieces; what the header limit cut is not among them; and
   after finish() there is nothing to read. */
static void
test_read_back(void)
{
	struct mm_extract_limits lim = { .memory_bytes = 4096, .max_header_bytes = 64 };
	static const char small[] = "Subject: hi\r\n\r\nbody\r\n";
	struct mm_extract *x = mm_extract_new(NULL);
	size_t big_len = 100 * 1000, off;
	char *big = malloc(big_len), one;
	json_t *doc;

	mm_extract_feed(x, small, 5);
	mm_extract_feed(x, small + 5, sizeof(small) - 1 - 5);
	CHECK(!mm_extract_spooled(x));
	check_read_back(x, small, sizeof(small) - 1, 3);
	/* reading leaves the message intact for finish() */
	doc = mm_extract_finish(x);
	CHECK(strcmp(str_at(doc, "headers.subject"), "hi") == 0);
	json_decref(doc);
	CHECK(mm_extract_read(x, 0, &one, 1) == -1 && errno == EINVAL);
	mm_extract_free(&x);

	x = mm_extract_new(&lim);
	memcpy(big, "Subject: big\r\n\r\n", 17);
	for (off = 17; off < big_len; off++)
		big[off] = off % 78 == 77 ? '\n' : (char)('a' + off % 26);
	for (off = 0; off < big_len; off += 4000)
		mm_extract_feed(x, big + off, big_len - off < 4000 ? big_len - off : 4000);
	CHECK(mm_extract_spooled(x));
	check_read_back(x, big, big_len, 65536);
	check_read_back(x, big, big_len, 999);
	mm_extract_free(&x);

	/* a header section over max_header_bytes is cut: stored < fed */
	x = mm_extract_new(&lim);
	memset(big, 'x', 200);
	memcpy(big, "X-Long: ", 8);
	memcpy(big + 200, "\r\n\r\nbody\r\n", 10);
	mm_extract_feed(x, big, 210);
	memcpy(big + 64, "\n\nbody\r\n", 8);	/* cut, ended, then the body */
	check_read_back(x, big, 72, 64);
	mm_extract_free(&x);
	free(big);
}

int
main(void)
{
	mm_extract_library_init();
	test_fields();
	test_chunking();
	test_empty_and_headers_only();
	test_bad_header_bytes();
	test_long_header_line();
	test_unknown_charset();
	test_deep_nesting();
	test_many_parts();
	test_truncated_base64();
	test_big_attachment();
	test_read_back();
	return test_result();
}
