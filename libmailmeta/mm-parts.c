/*
 * mm-parts.c - the record's "parts" and "attachments" from the MIME tree
 *
 * Parts are listed depth-first with IMAP section numbers (RFC 3501 6.4.5):
 * the children of the top-level multipart are "1", "2", ...; a message that
 * is not multipart has one part, "1"; a message/rfc822 part numbered N is
 * listed itself and its message's body continues the path (N.1, N.2, ...
 * for a multipart body, which has no number of its own, else N.1).
 * Leaf parts are hashed as decoded content, streamed through GMime's
 * decoders into a SHA-256 stream; a message/rfc822 part is hashed as the
 * message it holds, written out by GMime (which keeps the original octets
 * of headers and parts).  An attachment is a leaf part with disposition
 * "attachment" or a file name, or a message/rfc822 part; the attachments
 * inside attached messages count too.  Depth and part limits stop the walk
 * and are reported as malformed.
 */
#include <string.h>

#include "mm-extract-private.h"

struct mm_walk {
	struct mm_extract *x;
	json_t *parts, *atts;
};

static json_t *
mm_lower_json(const char *s)
{
	char *v, *low;
	json_t *j;

	if (s == NULL)
		return json_null();
	v = g_strstrip(g_utf8_make_valid(s, -1));
	low = g_utf8_strdown(v, -1);
	j = *low != '\0' ? json_string(low) : json_null();
	g_free(low);
	g_free(v);
	return j;
}

/* GMime makes a Content-Type without a subtype application/octet-stream;
   RFC 2045 5.2 recommends text/plain for an invalid one. */
static json_t *
mm_content_type_json(GMimeObject *obj)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	const char *raw = g_mime_object_get_header(obj, "Content-Type");
	char *type = ct != NULL ? g_mime_content_type_get_mime_type(ct) : NULL;
	json_t *j;

	if (raw != NULL && strchr(raw, '/') == NULL) {
		g_free(type);
		type = g_strdup("text/plain");
	}
	j = mm_lower_json(type != NULL ? type : "text/plain");

	g_free(type);
	return j;
}

static const char *
mm_filename(GMimeObject *obj)
{
	const char *name;

	if (GMIME_IS_PART(obj))
		return g_mime_part_get_filename(GMIME_PART(obj));
	name = g_mime_object_get_content_disposition_parameter(obj, "filename");
	if (name == NULL)
		name = g_mime_object_get_content_type_parameter(obj, "name");
	return name;
}

/* Decoded size and SHA-256 of a leaf or message/rfc822 part, else nulls. */
static void
mm_digest(struct mm_extract *x, GMimeObject *obj, json_t **size, json_t **sha)
{
	GMimeStream *hs;
	char hex[65];
	gint64 n;

	*size = json_null();
	*sha = json_null();
	if (!GMIME_IS_PART(obj) && !GMIME_IS_MESSAGE_PART(obj))
		return;     /* json_null() needs no json_decref() */
	hs = mm_hash_stream_new();
	if (GMIME_IS_PART(obj)) {
		GMimeDataWrapper *content = g_mime_part_get_content(GMIME_PART(obj));

		if (content != NULL)
			g_mime_data_wrapper_write_to_stream(content, hs);
	} else {
		GMimeMessage *m = g_mime_message_part_get_message(
			GMIME_MESSAGE_PART(obj));

		GMimeFormatOptions *f = mm_format_options(x);

		if (m != NULL)
			g_mime_object_write_to_stream(GMIME_OBJECT(m), f, hs);
		g_mime_format_options_free(f);
	}
	mm_hash_stream_result(hs, hex, &n);
	g_object_unref(hs);
	*size = json_integer(n);
	*sha = hex[0] != '\0' ? json_string(hex) : json_null();
}

/* message/rfc822 and message/global: kept as leaf parts by the parser
   (see mm_extract_library_init) and parsed here on their own. */
static int
mm_is_attached_message(GMimeObject *obj)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);

	return GMIME_IS_PART(obj) && ct != NULL &&
	       (g_mime_content_type_is_type(ct, "message", "rfc822") ||
		g_mime_content_type_is_type(ct, "message", "global"));
}

static int
mm_is_attachment(GMimeObject *obj, const char *disposition, const char *name)
{
	if (GMIME_IS_MESSAGE_PART(obj) || mm_is_attached_message(obj))
		return 1;
	if (!GMIME_IS_PART(obj))
		return 0;
	return (disposition != NULL &&
		g_ascii_strcasecmp(disposition, "attachment") == 0) ||
	       (name != NULL && *name != '\0');
}

static void
mm_describe(struct mm_walk *w, GMimeObject *obj, const char *number)
{
	const char *disp = g_mime_object_get_disposition(obj);
	const char *name = mm_filename(obj);
	json_t *size, *sha, *part;

	mm_digest(w->x, obj, &size, &sha);
	part = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
		"part", number,
		"content_type", mm_content_type_json(obj),
		"charset", mm_lower_json(
			g_mime_object_get_content_type_parameter(obj, "charset")),
		"disposition", mm_lower_json(disp),
		"filename", mm_json_str(name),
		"cte", mm_lower_json(g_mime_object_get_header(obj,
					"Content-Transfer-Encoding")),
		"size_bytes", size, "sha256", sha);
	if (mm_is_attachment(obj, disp, name))
		json_array_append_new(w->atts, json_pack("{s:O, s:O, s:O, s:O,"
			" s:O, s:O}", "part", json_object_get(part, "part"),
			"filename", json_object_get(part, "filename"),
			"content_type", json_object_get(part, "content_type"),
			"disposition", json_object_get(part, "disposition"),
			"size_bytes", size, "sha256", sha));
	json_array_append_new(w->parts, part);
}

static void mm_walk(struct mm_walk *w, GMimeObject *obj, const char *number,
		    unsigned depth);

/* Walks the children of a multipart; their numbers extend prefix. */
static void
mm_walk_children(struct mm_walk *w, GMimeMultipart *mp, const char *prefix,
		 unsigned depth)
{
	int i, n = g_mime_multipart_get_count(mp);

	for (i = 0; i < n; i++) {
		char *num;

		if (w->x->nparts >= w->x->lim.max_parts) {
			mm_reason(w->x, "more MIME parts than the limit: the rest "
				  "not listed");
			break;
		}
		num = *prefix != '\0' ? g_strdup_printf("%s.%d", prefix, i + 1)
				       : g_strdup_printf("%d", i + 1);

		mm_walk(w, g_mime_multipart_get_part(mp, i), num, depth);
		g_free(num);
	}
}

/* The body of a message (top level: prefix ""), numbered as IMAP does. */
static void
mm_walk_body(struct mm_walk *w, GMimeObject *body, const char *prefix,
	     unsigned depth)
{
	char *num;

	if (body == NULL)
		return;
	if (GMIME_IS_MULTIPART(body)) {
		if (depth > w->x->lim.max_depth)
			mm_reason(w->x, "MIME nesting deeper than the limit: "
				  "deeper parts not listed");
		else
			mm_walk_children(w, GMIME_MULTIPART(body), prefix, depth + 1);
		return;
	}
	num = *prefix != '\0' ? g_strconcat(prefix, ".1", NULL) : g_strdup("1");
	mm_walk(w, body, num, depth);
	g_free(num);
}

/* An attached message's octets are parsed as a message of their own. RFC
   2046 5.2.1 allows no encoding but 7bit, 8bit and binary for them. */
static void
mm_walk_attached(struct mm_walk *w, GMimePart *part, const char *number,
		 unsigned depth)
{
	GMimeDataWrapper *content = g_mime_part_get_content(part);
	GMimeStream *stream;
	GMimeMessage *m;

	if (content == NULL)
		return;
	switch (g_mime_data_wrapper_get_encoding(content)) {
	case GMIME_CONTENT_ENCODING_DEFAULT:
	case GMIME_CONTENT_ENCODING_7BIT:
	case GMIME_CONTENT_ENCODING_8BIT:
	case GMIME_CONTENT_ENCODING_BINARY:
		break;
	default:
		mm_reason(w->x, "encoded message/rfc822 part: its parts are "
			  "not listed");
		return;
	}
	stream = g_mime_data_wrapper_get_stream(content);
	if (stream == NULL || g_mime_stream_reset(stream) < 0)
		return;
	m = mm_parse(w->x, stream);
	if (m == NULL)
		return;
	mm_walk_body(w, g_mime_message_get_mime_part(m), number, depth);
	g_object_unref(m);
}

static void
mm_walk(struct mm_walk *w, GMimeObject *obj, const char *number, unsigned depth)
{
	if (depth > w->x->lim.max_depth) {
		mm_reason(w->x, "MIME nesting deeper than the limit: "
			  "deeper parts not listed");
		return;
	}
	if (w->x->nparts >= w->x->lim.max_parts) {
		mm_reason(w->x, "more MIME parts than the limit: the rest "
			  "not listed");
		return;
	}
	w->x->nparts++;
	mm_describe(w, obj, number);
	if (GMIME_IS_MULTIPART(obj))
		mm_walk_children(w, GMIME_MULTIPART(obj), number, depth + 1);
	else if (mm_is_attached_message(obj))
		mm_walk_attached(w, GMIME_PART(obj), number, depth + 1);
	else if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *m =
			g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));

		if (m != NULL)
			mm_walk_body(w, g_mime_message_get_mime_part(m), number,
				     depth + 1);
	}
}

void
mm_parts_collect(struct mm_extract *x, GMimeMessage *msg, json_t *parts,
		 json_t *attachments)
{
	struct mm_walk w = { x, parts, attachments };

	mm_walk_body(&w, g_mime_message_get_mime_part(msg), "", 0);
}
