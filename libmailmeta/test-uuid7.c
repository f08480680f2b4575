/*
 * test-uuid7.c - UUIDv7 ids and RFC 3339 timestamps
 *
 * The milter's ids must be well-formed version-7 UUIDs that increase
 * strictly within a process even when many fall into one millisecond, and
 * carry the current time; timestamps must be UTC with six fractional
 * digits.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mm-id.h"
#include "test-common.h"


static int
well_formed(const char *u)
{
	int i;

	if (strlen(u) != 36)
		return 0;
	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (u[i] != '-')
				return 0;
		} else if (strchr("0123456789abcdef", u[i]) == NULL) {
			return 0;
		}
	}
	return u[14] == '7' && strchr("89ab", u[19]) != NULL;
}

static void
test_uuid7(void)
{
	char prev[MM_UUID_TEXT_SIZE] = "", cur[MM_UUID_TEXT_SIZE], hex[13];
	struct timespec ts;
	long long ms, now;
	int i, ordered = 1, formed = 1;

	for (i = 0; i < 20000; i++) {
		CHECK(mm_uuid7(cur) == 0);
		formed &= well_formed(cur);
		ordered &= strcmp(prev, cur) < 0;
		memcpy(prev, cur, sizeof(cur));
	}
	CHECK(formed);
	CHECK(ordered);
	memcpy(hex, cur, 8);
	memcpy(hex + 8, cur + 9, 4);
	hex[12] = '\0';
	ms = strtoll(hex, NULL, 16);
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	CHECK(ms <= now + 100 && ms > now - 5000);
}

static void
test_rfc3339(void)
{
	struct timespec a = { 0, 123456789 }, b = { 1700000000, 999999999 };
	char out[MM_RFC3339_SIZE];

	mm_rfc3339_utc(&a, out);
	CHECK(strcmp(out, "1970-01-01T00:00:00.123456Z") == 0);
	mm_rfc3339_utc(&b, out);
	CHECK(strcmp(out, "2023-11-14T22:13:20.999999Z") == 0);
	mm_rfc3339_utc(NULL, out);
	CHECK(strlen(out) == 27 && out[26] == 'Z');
}

int
main(void)
{
	test_uuid7();
	test_rfc3339();
	return test_result();
}
