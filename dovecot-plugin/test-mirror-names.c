/*
 * test-mirror-names.c - the names the two Dovecot plugins agree on: spool
 * marks round-trip every user name and never collide with the watcher's
 * dot names; mailmeta_ids parse X-Mailmeta-ID headers and the UUIDv8 of a
 * message has the bits doc/mailbox-mirror.md asks for.
 */
#include <stdio.h>
#include <string.h>

#include "mailmeta-spool.h"
#include "mm-mirror-id.h"
#include "test-common.h"

static void
test_spool_round_trip(void)
{
	static const struct {
		const char *user, *name;
	} cases[] = {
		{ "alice@example.test", "alice@example.test" },
		{ "Bob.Smith+tag@example.test", "Bob.Smith+tag@example.test" },
		{ ".hidden@example.test", "%2Ehidden@example.test" },
		{ "a/b@example.test", "a%2Fb@example.test" },
		{ "100%@x", "100%25@x" },
		{ "j\xc3\xbcrgen@x", "j%C3%BCrgen@x" },
		{ "with space", "with%20space" },
	};
	char name[MAILMETA_SPOOL_NAME_SIZE], user[MAILMETA_SPOOL_NAME_SIZE];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK(mailmeta_spool_encode(cases[i].user, name, sizeof(name)));
		CHECK(strcmp(name, cases[i].name) == 0);
		CHECK(name[0] != '.' && strchr(name, '/') == NULL);
		CHECK(mailmeta_spool_decode(name, user, sizeof(user)));
		CHECK(strcmp(user, cases[i].user) == 0);
	}
}

static void
test_spool_refuses(void)
{
	char name[MAILMETA_SPOOL_NAME_SIZE], user[MAILMETA_SPOOL_NAME_SIZE];
	char long_user[300];

	CHECK(!mailmeta_spool_encode("", name, sizeof(name)));
	memset(long_user, '/', 100);	/* 300 bytes encoded */
	long_user[100] = '\0';
	CHECK(!mailmeta_spool_encode(long_user, name, sizeof(name)));
	memset(long_user, 'a', 255);
	long_user[255] = '\0';
	CHECK(mailmeta_spool_encode(long_user, name, sizeof(name)));
	long_user[255] = 'a';
	long_user[256] = '\0';
	CHECK(!mailmeta_spool_encode(long_user, name, sizeof(name)));
	CHECK(!mailmeta_spool_encode("a", name, 1));

	CHECK(!mailmeta_spool_decode(MAILMETA_SPOOL_CLAIM_DIR, user, sizeof(user)));
	CHECK(!mailmeta_spool_decode(".x", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("a%2", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("a%zz", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("a%00", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("a b", user, sizeof(user)));
	/* only the canonical spelling: one user, one mark */
	CHECK(!mailmeta_spool_decode("%61lice", user, sizeof(user)));
	CHECK(!mailmeta_spool_decode("a%2fb", user, sizeof(user)));
}

static void
test_parse_uuid(void)
{
	char id[MM_UUID_TEXT_SIZE];

	CHECK(mm_mirror_parse_uuid("01a204cd-7cd7-7562-b6a4-53cf67ae9176", id));
	CHECK(strcmp(id, "01a204cd-7cd7-7562-b6a4-53cf67ae9176") == 0);
	CHECK(mm_mirror_parse_uuid(" 01A204CD-7CD7-7562-B6A4-53CF67AE9176\r\n", id));
	CHECK(strcmp(id, "01a204cd-7cd7-7562-b6a4-53cf67ae9176") == 0);
	CHECK(!mm_mirror_parse_uuid("01a204cd7cd77562b6a453cf67ae9176", id));
	CHECK(!mm_mirror_parse_uuid("01a204cd-7cd7-7562-b6a4-53cf67ae917", id));
	CHECK(!mm_mirror_parse_uuid("01a204cd-7cd7-7562-b6a4-53cf67ae9176x", id));
	CHECK(!mm_mirror_parse_uuid("g1a204cd-7cd7-7562-b6a4-53cf67ae9176", id));
	CHECK(!mm_mirror_parse_uuid("", id));
}

static void
test_uuid8(void)
{
	unsigned char digest[32];
	char id[MM_UUID_TEXT_SIZE];

	memset(digest, 0xff, sizeof(digest));
	mm_mirror_uuid8_from_sha256(digest, id);
	CHECK(strcmp(id, "ffffffff-ffff-8fff-bfff-ffffffffffff") == 0);
	memset(digest, 0x00, sizeof(digest));
	mm_mirror_uuid8_from_sha256(digest, id);
	CHECK(strcmp(id, "00000000-0000-8000-8000-000000000000") == 0);
	for (size_t i = 0; i < sizeof(digest); i++)
		digest[i] = (unsigned char)i;
	mm_mirror_uuid8_from_sha256(digest, id);
	CHECK(strcmp(id, "00010203-0405-8607-8809-0a0b0c0d0e0f") == 0);
}

int
main(void)
{
	test_spool_round_trip();
	test_spool_refuses();
	test_parse_uuid();
	test_uuid8();
	return test_result();
}
