/*
 * mm-extract.c - collect a message's bytes and turn them into the record
 *
 * The milter gets a message in chunks of whatever size Postfix sends, and
 * a message may be far larger than we want to hold in memory.  feed() keeps
 * the first memory_bytes in memory and spools the rest to an unlinked
 * temporary file; finish() hands a seekable stream over both to GMime with
 * a persistent stream, so parts stay where they are and are only read when
 * hashed.  While feeding, the top-level header section is scanned for NUL
 * and raw 8-bit bytes (which GMime silently repairs) and cut at
 * max_header_bytes.  Every problem found on the way becomes a
 * malformed_reasons entry; nothing here makes finish() fail.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm-extract-private.h"

#define MM_DEFAULT_MEMORY     (1024u * 1024u)
#define MM_DEFAULT_MAX_SIZE   ((size_t)128 * 1024u * 1024u)
#define MM_DEFAULT_MAX_HEADER (1024u * 1024u)
#define MM_DEFAULT_MAX_DEPTH  32u
#define MM_DEFAULT_MAX_PARTS  1000u

void
mm_extract_library_init(void)
{
	static gsize done;

	if (g_once_init_enter(&done)) {
		g_mime_init();
		/* Keep attached messages as parts with their original octets
		   (hashed as they are); mm-parts.c parses them itself. */
		g_mime_object_register_type("message", "rfc822", GMIME_TYPE_PART);
		g_mime_object_register_type("message", "global", GMIME_TYPE_PART);
		g_once_init_leave(&done, 1);
	}
}

static void
mm_limits_default(struct mm_extract_limits *l)
{
	if (l->memory_bytes == 0)
		l->memory_bytes = MM_DEFAULT_MEMORY;
	if (l->max_message_bytes == 0)
		l->max_message_bytes = MM_DEFAULT_MAX_SIZE;
	if (l->max_header_bytes == 0)
		l->max_header_bytes = MM_DEFAULT_MAX_HEADER;
	if (l->max_depth == 0)
		l->max_depth = MM_DEFAULT_MAX_DEPTH;
	if (l->max_parts == 0)
		l->max_parts = MM_DEFAULT_MAX_PARTS;
	if (l->tmpdir == NULL || *l->tmpdir == '\0')
		l->tmpdir = getenv("TMPDIR");
	if (l->tmpdir == NULL || *l->tmpdir == '\0')
		l->tmpdir = "/tmp";
}

struct mm_extract *
mm_extract_new(const struct mm_extract_limits *limits)
{
	struct mm_extract *x = calloc(1, sizeof(*x));

	if (x == NULL)
		return NULL;
	if (limits != NULL)
		x->lim = *limits;
	mm_limits_default(&x->lim);
	x->fd = -1;
	x->mem = g_byte_array_new();
	x->reasons = json_array();
	if (x->reasons == NULL) {
		mm_extract_free(&x);
		return NULL;
	}
	return x;
}

void
mm_extract_free(struct mm_extract **xp)
{
	struct mm_extract *x = *xp;

	if (x == NULL)
		return;
	if (x->mem != NULL)
		g_byte_array_unref(x->mem);
	if (x->fd >= 0)
		close(x->fd);
	json_decref(x->reasons);
	free(x);
	*xp = NULL;
}

int
mm_extract_spooled(const struct mm_extract *x)
{
	return x->mem == NULL || x->fd >= 0;
}

void
mm_reason(struct mm_extract *x, const char *reason)
{
	size_t i;
	json_t *v;

	json_array_foreach(x->reasons, i, v) {
		if (strcmp(json_string_value(v), reason) == 0)
			return;
	}
	json_array_append_new(x->reasons, mm_json_str(reason));
}

json_t *
mm_json_str(const char *s)
{
	json_t *j;
	char *valid;

	if (s == NULL)
		return json_null();
	if (g_utf8_validate(s, -1, NULL))
		return json_string(s);
	valid = g_utf8_make_valid(s, -1);
	j = json_string(valid);
	g_free(valid);
	return j;
}

/* ----------------------------------------------------------- storage */

static int
mm_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Moves what is in memory to a new unlinked file in tmpdir. */
static int
mm_spool_open(struct mm_extract *x)
{
	char *path = g_build_filename(x->lim.tmpdir, "mailmeta-XXXXXX", NULL);
	int fd = mkstemp(path);

	if (fd < 0) {
		g_free(path);
		return -1;
	}
	unlink(path);
	g_free(path);
	if (mm_write_all(fd, x->mem->data, x->mem->len) < 0) {
		close(fd);
		return -1;
	}
	g_byte_array_unref(x->mem);
	x->mem = NULL;
	x->fd = fd;
	return 0;
}

static int
mm_store(struct mm_extract *x, const void *data, size_t len)
{
	if (x->io_error)
		return -1;
	if (len > x->lim.max_message_bytes - x->stored) {
		len = x->lim.max_message_bytes - x->stored;
		mm_reason(x, "message larger than the size limit: only its "
			  "beginning was parsed");
	}
	if (x->fd < 0 && x->mem->len + len > x->lim.memory_bytes &&
	    mm_spool_open(x) < 0) {
		x->io_error = 1;
		return -1;
	}
	if (x->fd >= 0 && mm_write_all(x->fd, data, len) < 0) {
		x->io_error = 1;
		return -1;
	}
	if (x->fd < 0)
		g_byte_array_append(x->mem, data, (guint)len);
	if (len > 0)
		x->last = ((const unsigned char *)data)[len - 1];
	x->stored += len;
	return 0;
}

size_t
mm_extract_stored(const struct mm_extract *x)
{
	return x->stored;
}

ssize_t
mm_extract_read(struct mm_extract *x, size_t offset, void *buf, size_t len)
{
	ssize_t n;

	if (x->finished) {
		errno = EINVAL;
		return -1;
	}
	if (x->io_error) {
		errno = EIO;
		return -1;
	}
	if (offset >= x->stored || len == 0)
		return 0;
	if (len > x->stored - offset)
		len = x->stored - offset;
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	if (x->fd < 0) {
		memcpy(buf, x->mem->data + offset, len);
		return (ssize_t)len;
	}
	do
		n = pread(x->fd, buf, len, (off_t)offset);
	while (n < 0 && errno == EINTR);
	if (n == 0) {		/* the file is shorter than what was stored */
		errno = EIO;
		return -1;
	}
	return n;
}

/* ------------------------------------------- top-level header scanner */

/* Over max_header_bytes: end the section here (a line end and the empty
   line; at worst the body gains an empty first line) and drop the rest of
   it. */
static int
mm_header_cut(struct mm_extract *x)
{
	x->hdr_skipping = 1;
	mm_reason(x, "header section larger than the limit: the rest of it "
		  "was ignored");
	return mm_store(x, "\n\n", 2);
}

/* Returns how many bytes of p belong to the header section. */
static size_t
mm_header_scan(struct mm_extract *x, const unsigned char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len && !x->hdr_done; i++) {
		if (p[i] == '\n') {
			if (!x->eol_seen)
				x->crlf = x->prev == '\r';
			x->eol_seen = 1;
			x->hdr_done = x->line_len == 0;
			x->line_len = 0;
		} else if (p[i] != '\r') {
			x->line_len++;
			x->hdr_nul |= p[i] == 0;
			x->hdr_8bit |= p[i] >= 0x80;
		}
		x->prev = p[i];
	}
	return i;
}

static int
mm_feed_header(struct mm_extract *x, const unsigned char *p, size_t n)
{
	size_t room = x->lim.max_header_bytes - x->hdr_bytes;
	int was_skipping = x->hdr_skipping;

	x->hdr_bytes += n;
	if (was_skipping)
		return 0;
	if (n <= room)
		return mm_store(x, p, n);
	if (mm_store(x, p, room) < 0)
		return -1;
	return mm_header_cut(x);
}

int
mm_extract_feed(struct mm_extract *x, const void *data, size_t len)
{
	const unsigned char *p = data;
	int r = 0;

	x->size += len;
	if (!x->hdr_done) {
		size_t n = mm_header_scan(x, p, len);

		r = mm_feed_header(x, p, n);
		p += n;
		len -= n;
	}
	if (len > 0 && x->stored < x->lim.max_message_bytes)
		r |= mm_store(x, p, len);
	return r < 0 ? -1 : 0;
}

/* ------------------------------------------------------------ finish */

GMimeFormatOptions *
mm_format_options(struct mm_extract *x)
{
	GMimeFormatOptions *f = g_mime_format_options_new();

	g_mime_format_options_set_newline_format(f, x->crlf ?
		GMIME_NEWLINE_FORMAT_DOS : GMIME_NEWLINE_FORMAT_UNIX);
	return f;
}

static void
mm_parser_warning(gint64 offset, GMimeParserWarning code, const gchar *item,
		  gpointer data)
{
	static const char *const what[] = {
		[GMIME_WARN_DUPLICATED_HEADER] = NULL,
		[GMIME_WARN_DUPLICATED_PARAMETER] = "duplicated header parameter",
		[GMIME_WARN_UNENCODED_8BIT_HEADER] = "8-bit bytes in a header",
		[GMIME_WARN_INVALID_CONTENT_TYPE] = "invalid Content-Type",
		[GMIME_WARN_INVALID_RFC2047_HEADER_VALUE] =
			"invalid RFC 2047 encoded header",
		[GMIME_WARN_MALFORMED_MULTIPART] = "multipart without parts",
		[GMIME_WARN_TRUNCATED_MESSAGE] = "truncated message",
		[GMIME_WARN_MALFORMED_MESSAGE] = "malformed message",
		[GMIME_CRIT_INVALID_HEADER_NAME] = "invalid header name",
		[GMIME_CRIT_CONFLICTING_HEADER] = "conflicting headers",
		[GMIME_CRIT_CONFLICTING_PARAMETER] = "conflicting header parameters",
		[GMIME_CRIT_MULTIPART_WITHOUT_BOUNDARY] = "multipart without boundary",
		[GMIME_WARN_INVALID_PARAMETER] = "invalid header parameter",
		[GMIME_WARN_INVALID_ADDRESS_LIST] = "invalid address list",
		[GMIME_CRIT_NESTING_OVERFLOW] = "MIME nesting too deep for the parser",
		[GMIME_WARN_PART_WITHOUT_CONTENT] = "MIME part without content",
		[GMIME_CRIT_PART_WITHOUT_HEADERS_OR_CONTENT] =
			"MIME part without headers or content",
	};

	(void)offset;
	(void)item;
	if ((unsigned)code < G_N_ELEMENTS(what) && what[code] != NULL)
		mm_reason(data, what[code]);
	else if ((unsigned)code >= G_N_ELEMENTS(what))
		mm_reason(data, "MIME parser warning");
}

static GMimeStream *
mm_stream_take(struct mm_extract *x)
{
	GMimeStream *s;

	if (x->fd < 0) {
		s = g_mime_stream_mem_new_with_byte_array(x->mem);
		x->mem = NULL;
		return s;
	}
	if (lseek(x->fd, 0, SEEK_SET) < 0)
		return NULL;
	s = g_mime_stream_fs_new(x->fd);
	x->fd = -1;
	return s;
}

GMimeMessage *
mm_parse(struct mm_extract *x, GMimeStream *stream)
{
	static const char *fallback[] = { "utf-8", "windows-1252", NULL };
	GMimeParserOptions *opts = g_mime_parser_options_new();
	GMimeParser *parser = g_mime_parser_new_with_stream(stream);
	GMimeMessage *msg;

	g_mime_parser_options_set_fallback_charsets(opts, fallback);
	g_mime_parser_options_set_warning_callback(opts, mm_parser_warning, x);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	g_mime_parser_set_persist_stream(parser, TRUE);
	msg = g_mime_parser_construct_message(parser, opts);
	g_object_unref(parser);
	g_mime_parser_options_free(opts);
	return msg;
}

static void
mm_feed_reasons(struct mm_extract *x)
{
	if (x->io_error)
		mm_reason(x, "spool file error: the message was parsed only in part");
	if (x->hdr_nul)
		mm_reason(x, "NUL bytes in the header section");
	if (x->hdr_8bit)
		mm_reason(x, "8-bit bytes in a header");
	if (x->size > 0 && !x->hdr_done)
		mm_reason(x, "no empty line after the header section");
}

static json_t *
mm_record(struct mm_extract *x, GMimeMessage *msg)
{
	json_t *parts = json_array(), *atts = json_array();
	json_t *headers = mm_headers_json(x, msg);

	if (msg != NULL)
		mm_parts_collect(x, msg, parts, atts);
	if (x->size == 0)
		mm_reason(x, "empty message");
	else if (msg == NULL)
		mm_reason(x, "not a message: nothing could be parsed");
	return json_pack("{s:I, s:b, s:O, s:o, s:o, s:o}",
			 "size_bytes", (json_int_t)x->size,
			 "malformed", json_array_size(x->reasons) > 0,
			 "malformed_reasons", x->reasons,
			 "headers", headers, "parts", parts,
			 "attachments", atts);
}

/* GMime keeps the CR of the line end before a closing boundary that ends
   the input without a line end of its own; give the input one. */
static void
mm_end_line(struct mm_extract *x)
{
	size_t max = x->lim.max_message_bytes;

	if (x->stored == 0 || x->last == '\n')
		return;
	x->lim.max_message_bytes = x->stored + 2;
	mm_store(x, x->crlf ? "\r\n" : "\n", x->crlf ? 2 : 1);
	x->lim.max_message_bytes = max;
}

json_t *
mm_extract_finish(struct mm_extract *x)
{
	GMimeStream *stream;
	GMimeMessage *msg = NULL;
	json_t *doc;

	g_return_val_if_fail(!x->finished, NULL);
	x->finished = 1;
	mm_feed_reasons(x);
	mm_end_line(x);
	stream = mm_stream_take(x);
	if (stream != NULL) {
		msg = x->size > 0 ? mm_parse(x, stream) : NULL;
		/* the parser's substreams keep it alive as long as msg */
		g_object_unref(stream);
	}
	doc = mm_record(x, msg);
	if (msg != NULL)
		g_object_unref(msg);
	return doc;
}
