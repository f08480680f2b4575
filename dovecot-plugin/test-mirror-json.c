/*
 * test-mirror-json.c - the watcher's JSON writer (mm-mirror-json.h) writes
 * what json_dumps(JSON_COMPACT) writes: the same text for plain values,
 * the same values once parsed whatever the escapes (control characters,
 * quotes, backslashes, NUL, non-ASCII, line and paragraph separators).
 */
#include "lib.h"
#include "str.h"
#include "test-common.h"

#include <jansson.h>

#include "mm-mirror-json.h"

static json_t *
sample_document(void)
{
	json_t *doc = json_pack("{s:i, s:s, s:n, s:b, s:b, s:[], s:{}, s:I, s:I}",
		"version", 1, "subject", "plain ascii", "reason", "malformed", 0,
		"tls", 1, "recipients", "headers", "size_bytes",
		(json_int_t)9223372036854775807LL, "negative", (json_int_t)-42);

	json_object_set_new(doc, "parts", json_pack("[{s:s, s:[i, i, {s:s}]}]",
		"part", "1.2", "numbers", 1, 2, "k", "v"));
	return doc;
}

static void
test_same_text(void)
{
	json_t *doc = sample_document();
	char *expected = json_dumps(doc, JSON_COMPACT);

	test_begin("json: same text as json_dumps");
	test_assert(strcmp(mm_mirror_json_text(doc), expected) == 0);
	test_end();
	free(expected);
	json_decref(doc);
}

static void
test_same_values(void)
{
	static const char hostile[] =
		"quote \" backslash \\ slash / tab \t nl \n cr \r bs \b ff \f "
		"\x01\x1f\x7f nul \0 after nul; \xc3\xa9\xe2\x82\xac\xf0\x9f\x93\xa7 "
		"\xe2\x80\xa8 \xe2\x80\xa9 end";
	json_t *doc = json_object(), *parsed;
	json_error_t error;

	test_begin("json: same values with every escape");
	json_object_set_new(doc, "s", json_stringn(hostile, sizeof(hostile) - 1));
	json_object_set_new(doc, "key \"with\" \\escapes\\\n",
			    json_string("\xe2\x80\xa8"));
	json_object_set_new(doc, "nested", json_pack("[[[{s:[]}]]]", "x"));
	parsed = json_loads(mm_mirror_json_text(doc), JSON_ALLOW_NUL, &error);
	test_assert(parsed != NULL);
	test_assert(parsed != NULL && json_equal(parsed, doc));
	json_decref(parsed);
	json_decref(doc);
	test_end();
}

static void
test_appends(void)
{
	string_t *dest = t_str_new(16);
	json_t *value = json_pack("[s, i]", "a", 1);

	test_begin("json: appends to what the string holds");
	str_append(dest, "[x,");
	mm_mirror_json_append(dest, value);
	test_assert(strcmp(str_c(dest), "[x,[\"a\",1]") == 0);
	json_decref(value);
	test_end();
}

int
main(void)
{
	static void (*const tests[])(void) = {
		test_same_text,
		test_same_values,
		test_appends,
		NULL
	};
	return test_run(tests);
}
