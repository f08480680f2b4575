/*
 * mm-uuid7.c - time-ordered unique ids (UUIDv7, RFC 9562)
 *
 * The milter stamps every message with one (X-Mailmeta-ID, the record's
 * mailmeta_id); time order keeps the metadata tables' indexes append-mostly.
 * Layout: 48-bit Unix milliseconds, version 7, 12-bit rand_a, variant 10,
 * 62 random bits.  rand_a is a counter (RFC 9562 6.2 method 1): a new
 * millisecond starts it at a random value below 2048, a repeated one adds
 * one, and when it runs out the timestamp moves on a millisecond, so the ids
 * of one process always increase, also if the clock steps back.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <openssl/rand.h>

#include "mm-id.h"

static pthread_mutex_t mm_uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t mm_uuid_last_ms;
static unsigned mm_uuid_counter;

static uint64_t
mm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Picks (ms, counter) after the last ones handed out. */
static void
mm_uuid_next(uint64_t *ms, unsigned *counter, unsigned seed)
{
	uint64_t now = mm_now_ms();

	pthread_mutex_lock(&mm_uuid_lock);
	if (now > mm_uuid_last_ms) {
		mm_uuid_last_ms = now;
		mm_uuid_counter = seed & 0x7ff;
	} else if (++mm_uuid_counter > 0xfff) {
		mm_uuid_last_ms++;
		mm_uuid_counter = seed & 0x7ff;
	}
	*ms = mm_uuid_last_ms;
	*counter = mm_uuid_counter;
	pthread_mutex_unlock(&mm_uuid_lock);
}

int
mm_uuid7(char out[MM_UUID_TEXT_SIZE])
{
	unsigned char b[16];
	uint64_t ms;
	unsigned counter;
	int i;

	out[0] = '\0';
	if (RAND_bytes(b, sizeof(b)) != 1)
		return -1;
	mm_uuid_next(&ms, &counter, (unsigned)b[0] << 8 | b[1]);
	for (i = 0; i < 6; i++)
		b[i] = (unsigned char)(ms >> (40 - 8 * i));
	b[6] = (unsigned char)(0x70 | counter >> 8);
	b[7] = (unsigned char)counter;
	b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
	snprintf(out, MM_UUID_TEXT_SIZE,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
		 b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return 0;
}
