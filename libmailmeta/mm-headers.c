/*
 * mm-headers.c - the record's "headers" object from a parsed message
 *
 * Every value comes from GMime's parsers (RFC 2047 words, address lists,
 * dates, message ids), so this file only chooses and shapes: address groups
 * are flattened and domains lower-cased, dates turned into UTC, message ids
 * gathered from every occurrence of their header and de-duplicated.  All
 * strings pass mm_json_str(), so bytes that are not UTF-8 become U+FFFD
 * instead of making jansson refuse the value.
 */
#include <string.h>

#include "mm-extract-private.h"

#define MM_GROUP_DEPTH 8        /* groups cannot nest; be lenient a little */

/* The mailbox address with its domain lower-cased. */
static json_t *
mm_addr_json(const char *addr)
{
	char *valid = g_utf8_make_valid(addr != NULL ? addr : "", -1);
	char *at = strrchr(valid, '@'), *domain;
	json_t *j;

	if (at == NULL) {
		j = json_string(valid);
	} else {
		*at = '\0';
		domain = g_utf8_strdown(at + 1, -1);
		char *full = g_strconcat(valid, "@", domain, NULL);
		j = json_string(full);
		g_free(full);
		g_free(domain);
	}
	g_free(valid);
	return j;
}

static void
mm_mailbox_append(json_t *out, InternetAddress *ia)
{
	const char *addr =
		internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
	const char *name = internet_address_get_name(ia);

	if ((addr == NULL || *addr == '\0') && (name == NULL || *name == '\0'))
		return;
	json_array_append_new(out, json_pack("{s:o, s:o}",
		"name", mm_json_str(name != NULL && *name != '\0' ? name : NULL),
		"address", mm_addr_json(addr)));
}

static void
mm_addresses_append(json_t *out, InternetAddressList *list, int depth)
{
	int i, n = list != NULL ? internet_address_list_length(list) : 0;

	for (i = 0; i < n; i++) {
		InternetAddress *ia = internet_address_list_get_address(list, i);

		if (INTERNET_ADDRESS_IS_GROUP(ia) && depth < MM_GROUP_DEPTH)
			mm_addresses_append(out,
				internet_address_group_get_members(
					INTERNET_ADDRESS_GROUP(ia)), depth + 1);
		else if (INTERNET_ADDRESS_IS_MAILBOX(ia))
			mm_mailbox_append(out, ia);
	}
}

static json_t *
mm_addresses_json(GMimeMessage *msg, GMimeAddressType type)
{
	json_t *out = json_array();

	if (msg != NULL)
		mm_addresses_append(out, g_mime_message_get_addresses(msg, type), 0);
	return out;
}

/* The value of the first header called name, or NULL. */
static const char *
mm_header(GMimeMessage *msg, const char *name)
{
	return msg != NULL ? g_mime_object_get_header(GMIME_OBJECT(msg), name)
			   : NULL;
}

static void
mm_ids_append(json_t *out, const char *value)
{
	GMimeReferences *refs = g_mime_references_parse(NULL, value);
	int i, n = refs != NULL ? g_mime_references_length(refs) : 0;

	for (i = 0; i < n; i++) {
		json_t *id = mm_json_str(g_mime_references_get_message_id(refs, i));
		size_t k;
		json_t *v;
		int dup = 0;

		json_array_foreach(out, k, v)
			dup |= json_equal(v, id);
		if (dup || json_string_length(id) == 0)
			json_decref(id);
		else
			json_array_append_new(out, id);
	}
	if (refs != NULL)
		g_mime_references_free(refs);
}

/* The message ids of every header called name, in order, each once. */
static json_t *
mm_ids_json(GMimeMessage *msg, const char *name)
{
	json_t *out = json_array();
	GMimeHeaderList *hl;
	int i, n;

	if (msg == NULL)
		return out;
	hl = g_mime_object_get_header_list(GMIME_OBJECT(msg));
	n = g_mime_header_list_get_count(hl);
	for (i = 0; i < n; i++) {
		GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
		const char *value = g_mime_header_get_value(h);

		if (g_ascii_strcasecmp(g_mime_header_get_name(h), name) == 0 &&
		    value != NULL)
			mm_ids_append(out, value);
	}
	return out;
}

static json_t *
mm_date_json(struct mm_extract *x, GMimeMessage *msg)
{
	GDateTime *date = msg != NULL ? g_mime_message_get_date(msg) : NULL;
	GDateTime *utc;
	char *text;
	json_t *j;

	if (date == NULL) {
		if (mm_header(msg, "Date") != NULL)
			mm_reason(x, "unparseable Date header");
		return json_null();
	}
	utc = g_date_time_to_utc(date);
	text = utc != NULL ? g_date_time_format(utc, "%Y-%m-%dT%H:%M:%SZ") : NULL;
	j = mm_json_str(text);
	g_free(text);
	if (utc != NULL)
		g_date_time_unref(utc);
	return j;
}

/* The text inside <...>, or the whole value trimmed when there are none. */
static json_t *
mm_list_id_json(const char *value)
{
	const char *lt, *gt;
	char *id;
	json_t *j;

	if (value == NULL)
		return json_null();
	lt = strchr(value, '<');
	gt = lt != NULL ? strchr(lt, '>') : NULL;
	id = lt != NULL && gt != NULL ? g_strndup(lt + 1, (gsize)(gt - lt - 1))
				      : g_strdup(value);
	g_strstrip(id);
	j = *id != '\0' ? mm_json_str(id) : json_null();
	g_free(id);
	return j;
}

static json_t *
mm_trimmed_json(const char *value)
{
	char *v;
	json_t *j;

	if (value == NULL)
		return json_null();
	v = g_strstrip(g_strdup(value));
	j = mm_json_str(v);
	g_free(v);
	return j;
}

static json_t *
mm_message_id_json(GMimeMessage *msg)
{
	const char *id = msg != NULL ? g_mime_message_get_message_id(msg) : NULL;

	return id != NULL && *id != '\0' ? mm_json_str(id) : json_null();
}

json_t *
mm_headers_json(struct mm_extract *x, GMimeMessage *msg)
{
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
			 " s:o, s:o, s:o, s:o}",
		"subject", mm_trimmed_json(msg != NULL ?
					   g_mime_message_get_subject(msg) : NULL),
		"from", mm_addresses_json(msg, GMIME_ADDRESS_TYPE_FROM),
		"sender", mm_addresses_json(msg, GMIME_ADDRESS_TYPE_SENDER),
		"reply_to", mm_addresses_json(msg, GMIME_ADDRESS_TYPE_REPLY_TO),
		"to", mm_addresses_json(msg, GMIME_ADDRESS_TYPE_TO),
		"cc", mm_addresses_json(msg, GMIME_ADDRESS_TYPE_CC),
		"date", mm_date_json(x, msg),
		"date_raw", mm_trimmed_json(mm_header(msg, "Date")),
		"message_id", mm_message_id_json(msg),
		"in_reply_to", mm_ids_json(msg, "In-Reply-To"),
		"references", mm_ids_json(msg, "References"),
		"list_id", mm_list_id_json(mm_header(msg, "List-Id")),
		"auto_submitted", mm_trimmed_json(mm_header(msg, "Auto-Submitted")));
}
