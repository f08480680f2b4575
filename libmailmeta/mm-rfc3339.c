/*
 * mm-rfc3339.c - UTC timestamps with microseconds, as the record writes them
 *
 * received_at is "YYYY-MM-DDTHH:MM:SS.ffffffZ": RFC 3339, always UTC, always
 * six fractional digits, so the text sorts like the time and PostgreSQL's
 * timestamptz reads it without loss.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <time.h>

#include "mm-id.h"

void
mm_rfc3339_utc(const struct timespec *ts, char out[MM_RFC3339_SIZE])
{
	struct timespec now;
	struct tm tm;
	size_t n;

	if (ts == NULL) {
		clock_gettime(CLOCK_REALTIME, &now);
		ts = &now;
	}
	if (gmtime_r(&ts->tv_sec, &tm) == NULL ||
	    (n = strftime(out, MM_RFC3339_SIZE, "%Y-%m-%dT%H:%M:%S", &tm)) == 0 ||
	    n > MM_RFC3339_SIZE - 9)
		n = (size_t)snprintf(out, MM_RFC3339_SIZE, "1970-01-01T00:00:00");
	snprintf(out + n, MM_RFC3339_SIZE - n, ".%06uZ",
		 (unsigned)(ts->tv_nsec / 1000) % 1000000u);
}
