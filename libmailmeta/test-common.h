/*
 * test-common.h - the smallest assertion helper, shared by the C unit tests
 * of libmailmeta and the milter: a failed CHECK prints where and what, and
 * test_result() makes the test exit non-zero.
 */
#ifndef TEST_COMMON_H
#define TEST_COMMON_H

#include <stdio.h>

static int test_failures;

#define CHECK(expr) do {						\
		if (!(expr)) {						\
			fprintf(stderr, "%s:%d: check failed: %s\n",	\
				__FILE__, __LINE__, #expr);		\
			test_failures++;				\
		}							\
	} while (0)

static inline int
test_result(void)
{
	if (test_failures)
		fprintf(stderr, "%d check(s) failed\n", test_failures);
	return test_failures ? 1 : 0;
}

#endif
