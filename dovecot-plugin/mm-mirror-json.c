/*
 * mm-mirror-json.c - compact JSON text of a jansson value (see
 * mm-mirror-json.h)
 *
 * json_dumps() was 12 % of the watcher's CPU in the IMAP bench: before
 * writing an object or an array it checks for reference loops, printing
 * the value's address into a hash table key and inserting and removing
 * it, and it writes through a callback a few bytes at a time.  The
 * watcher's values are trees it built itself, so this writer walks them
 * straight into a Dovecot string, escaping with Dovecot's JSON escaper.
 */
#include "lib.h"
#include "str.h"
#include "json-parser.h"

#include "mm-mirror-json.h"

static void
append_string(string_t *dest, const char *value, size_t len)
{
	str_append_c(dest, '"');
	json_append_escaped_data(dest, (const unsigned char *)value, len);
	str_append_c(dest, '"');
}

static void
append_object(string_t *dest, const json_t *json)
{
	const char *key;
	json_t *value;
	bool first = TRUE;

	str_append_c(dest, '{');
	/* json_object_foreach() is not const: it only reads here */
	json_object_foreach((json_t *)json, key, value) {
		if (!first)
			str_append_c(dest, ',');
		first = FALSE;
		append_string(dest, key, strlen(key));
		str_append_c(dest, ':');
		mm_mirror_json_append(dest, value);
	}
	str_append_c(dest, '}');
}

static void
append_array(string_t *dest, const json_t *json)
{
	size_t i, count = json_array_size(json);

	str_append_c(dest, '[');
	for (i = 0; i < count; i++) {
		if (i > 0)
			str_append_c(dest, ',');
		mm_mirror_json_append(dest, json_array_get(json, i));
	}
	str_append_c(dest, ']');
}

void
mm_mirror_json_append(string_t *dest, const json_t *json)
{
	switch (json_typeof(json)) {
	case JSON_OBJECT:
		append_object(dest, json);
		break;
	case JSON_ARRAY:
		append_array(dest, json);
		break;
	case JSON_STRING:
		append_string(dest, json_string_value(json),
			      json_string_length(json));
		break;
	case JSON_INTEGER:
		str_printfa(dest, "%" JSON_INTEGER_FORMAT,
			    json_integer_value(json));
		break;
	case JSON_REAL:
		/* never built by the watcher; the same number, though
		   jansson would add ".0" to an integral one */
		str_printfa(dest, "%.17g", json_real_value(json));
		break;
	case JSON_TRUE:
		str_append(dest, "true");
		break;
	case JSON_FALSE:
		str_append(dest, "false");
		break;
	case JSON_NULL:
		str_append(dest, "null");
		break;
	}
}

const char *
mm_mirror_json_text(const json_t *json)
{
	string_t *dest = t_str_new(1024);

	mm_mirror_json_append(dest, json);
	return str_c(dest);
}
