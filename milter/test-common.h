/*
 * test-common.h - the smallest assertion helper for the milter's unit tests:
 * a failed CHECK prints where and what, and the test exits non-zero.
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
