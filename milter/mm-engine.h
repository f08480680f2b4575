/*
 * mm-engine.h - what the clients of the scanning engines (clamd, spamd)
 * share: their settings, where an engine listens, and talking to it with
 * poll() under a deadline.
 *
 * An engine's address is "unix:/absolute/path" or "inet:HOST:PORT" (HOST
 * may be "[IPv6]"; Postfix's spelling); libmilter's "inet:PORT@HOST" is
 * accepted too.  A HOST that is not a numeric address is resolved with
 * getaddrinfo() at every connection, which the timeout does not bound:
 * give a numeric address or a name in /etc/hosts.
 *
 * Nothing here blocks beyond the deadline it is given, and nothing raises
 * SIGPIPE (every send uses MSG_NOSIGNAL): a peer that hangs, closes or
 * answers garbage becomes an error with a reason, never a stuck thread.
 */
#ifndef MM_ENGINE_H
#define MM_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* What the milter does with a message an engine could not judge. */
enum mm_engine_on_failure {
	MM_ENGINE_TEMPFAIL,	/* 451: the client retries later */
	MM_ENGINE_ACCEPT,	/* accept it unscanned */
};

/* The settings of one engine ([clamd] or [spamd] in mailmeta-milter.conf). */
struct mm_engine_config {
	char *address;		/* NULL: the engine is not configured (skipped) */
	unsigned timeout_ms;	/* all waiting on the engine for one message */
	size_t max_bytes;	/* clamd: bytes streamed; spamd: larger skipped */
	enum mm_engine_on_failure on_failure;
};

/* Room for a reason, a signature name or a peer's words in a result. */
#define MM_ENGINE_TEXT_SIZE 256

/* NULL when ADDRESS is a valid engine address, else why it is not. */
const char *mm_engine_address_error(const char *address);

/* ------------------------------------------------ for mm-clamd, mm-spamd */

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t mm_engine_now_ms(void);

/* A non-blocking, close-on-exec socket connected to ADDRESS by DEADLINE,
   or -1 with the reason in WHY. */
int mm_engine_connect(const char *address, int64_t deadline,
		      char why[MM_ENGINE_TEXT_SIZE]);

/* Sends all of IOV (modified as it goes) by DEADLINE.  0, or -1 with errno
   (ETIMEDOUT when the deadline passed, EPIPE/ECONNRESET when the peer left). */
int mm_engine_send(int fd, struct iovec *iov, int iovcnt, int64_t deadline);

/* Waits until FD is readable or DEADLINE, then reads once: the byte count,
   0 at end of stream, or -1 with errno (ETIMEDOUT at the deadline). */
ssize_t mm_engine_recv(int fd, void *buf, size_t len, int64_t deadline);

/* Copies the peer's LEN bytes into DST as printable ASCII (others become
   '?'), cut at MM_ENGINE_TEXT_SIZE with "...": for reasons and logs. */
void mm_engine_quote(char dst[MM_ENGINE_TEXT_SIZE], const char *src, size_t len);

/* snprintf into a reason buffer. */
void mm_engine_why(char why[MM_ENGINE_TEXT_SIZE], const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
