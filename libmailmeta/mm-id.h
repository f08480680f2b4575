/*
 * mm-id.h - message ids and timestamps for the metadata record
 *
 * mm_uuid7() makes the record's mailmeta_id (also the X-Mailmeta-ID
 * header): a UUIDv7 (RFC 9562) in lowercase canonical text.  Ids from one
 * process are strictly increasing, also from several threads and when the
 * clock repeats or steps back a millisecond.  mm_rfc3339_utc() formats
 * received_at: UTC, RFC 3339 with microseconds, e.g.
 * "2026-11-22T19:40:00.123456Z".
 */
#ifndef MM_ID_H
#define MM_ID_H

#include <time.h>

#define MM_UUID_TEXT_SIZE 37    /* 36 characters and NUL */
#define MM_RFC3339_SIZE   32

/* 0 on success, -1 when no random bytes could be had (out is then "") */
int mm_uuid7(char out[MM_UUID_TEXT_SIZE]);

/* ts NULL: now.  Always NUL-terminates out. */
void mm_rfc3339_utc(const struct timespec *ts, char out[MM_RFC3339_SIZE]);

#endif
