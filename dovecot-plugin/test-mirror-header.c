/*
 * test-mirror-header.c - the watcher finds the milter's X-Mailmeta-ID in a
 * message's header (mm-mirror-header.h): in any case of the name, folded
 * or not, the first one only, never in the body, and not when its value
 * is no UUID.
 */
#include "lib.h"
#include "istream.h"
#include "test-common.h"

#include "mm-mirror-header.h"

#define ID "0193f7a2-0000-7000-8000-000000000001"

static const struct {
	const char *message;
	const char *id;		/* NULL: none found */
} cases[] = {
	{ "From: a@b\r\nX-Mailmeta-ID: " ID "\r\n\r\nbody\r\n", ID },
	{ "x-mailmeta-id:" ID "\n\nbody\n", ID },
	{ "X-MAILMETA-ID: 0193F7A2-0000-7000-8000-000000000001 \r\n\r\n", ID },
	{ "X-Mailmeta-ID:\r\n " ID "\r\n\r\n", ID },
	{ "X-Mailmeta-ID: " ID "\r\nX-Mailmeta-ID: "
	  "0193f7a2-0000-7000-8000-000000000002\r\n\r\n", ID },
	{ "Subject: x\r\nX-Mailmeta-ID: " ID "\r\n", ID },
	{ "Subject: x\r\n\r\nX-Mailmeta-ID: " ID "\r\n", NULL },
	{ "X-Mailmeta-ID: not-a-uuid\r\n\r\n", NULL },
	{ "X-Mailmeta-ID: " ID " trailing\r\n\r\n", NULL },
	{ "X-Mailmeta-IDs: " ID "\r\n\r\n", NULL },
	{ "X-Mailmeta-ID: not-a-uuid\r\nX-Mailmeta-ID: " ID "\r\n\r\n", NULL },
	{ "", NULL },
	{ "\r\n" "X-Mailmeta-ID: " ID "\r\n", NULL },
};

static void
test_header_id(void)
{
	char id[MM_UUID_TEXT_SIZE];

	test_begin("X-Mailmeta-ID in the header");
	for (unsigned int i = 0; i < N_ELEMENTS(cases); i++) {
		struct istream *input = test_istream_create(cases[i].message);
		bool found = mm_mirror_header_id(input, id);

		test_assert_idx(input->stream_errno == 0, i);
		test_assert_idx(found == (cases[i].id != NULL), i);
		if (found && cases[i].id != NULL)
			test_assert_idx(strcmp(id, cases[i].id) == 0, i);
		i_stream_unref(&input);
	}
	test_end();
}

int
main(void)
{
	static void (*const tests[])(void) = {
		test_header_id,
		NULL
	};
	return test_run(tests);
}
