/*
 * mm-extract.h - raw message bytes -> the content part of the metadata record
 *
 * The milter and the Dovecot plugin both describe a message with this code,
 * so their answers cannot drift (see doc/metadata-record.md).  The result is
 * a jansson object with the keys size_bytes, malformed, malformed_reasons,
 * headers, parts and attachments, exactly as the record defines them; the
 * caller adds the envelope keys and serialises it.
 *
 * Usage:
 *	mm_extract_library_init();              once, any thread, before use
 *	x = mm_extract_new(NULL);               NULL: the default limits
 *	mm_extract_feed(x, buf, len) ...        raw bytes, any chunking, CRLF or LF
 *	mm_extract_read(x, off, buf, len) ...   optional: the bytes back
 *	doc = mm_extract_finish(x);             never NULL; json_decref() it
 *	mm_extract_free(&x);
 *
 * Memory stays bounded: up to limits.memory_bytes of the message are kept in
 * memory, beyond that it is spooled to an unlinked file in limits.tmpdir and
 * GMime parses it from there without copying part contents.  Nothing in the
 * input makes finish() fail: what could not be parsed is flagged in
 * malformed/malformed_reasons and everything else is still described.
 * One struct mm_extract belongs to one thread; different ones may be used
 * in parallel.  This file never includes libmilter or Dovecot headers.
 */
#ifndef MM_EXTRACT_H
#define MM_EXTRACT_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>
#include <jansson.h>

/* A field left 0 (or NULL) takes the default given beside it. */
struct mm_extract_limits {
	size_t memory_bytes;      /* kept in memory before spooling: 1 MiB */
	size_t max_message_bytes; /* bytes beyond are counted, not parsed: 128 MiB */
	size_t max_header_bytes;  /* top-level header section: 1 MiB */
	unsigned max_depth;       /* MIME nesting described: 32 */
	unsigned max_parts;       /* parts described: 1000 */
	const char *tmpdir;       /* spool directory: $TMPDIR, else /tmp */
};

struct mm_extract;

/* Calls g_mime_init() exactly once per process; safe from any thread. */
void mm_extract_library_init(void);

/* NULL only when memory is exhausted. */
struct mm_extract *mm_extract_new(const struct mm_extract_limits *limits);

/* 0 on success; -1 when the spool file cannot be created or written
   (errno set).  After an error, feed() keeps counting bytes and finish()
   still returns a record, flagged malformed. */
int mm_extract_feed(struct mm_extract *x, const void *data, size_t len);

/* The content part of the record as a new reference; call once.  NULL only
   when memory is exhausted. */
json_t *mm_extract_finish(struct mm_extract *x);

/* Frees x and its spool file, and sets *x to NULL.  NULL-safe. */
void mm_extract_free(struct mm_extract **x);

/* A JSON string of s made valid UTF-8 (bad bytes -> U+FFFD); null for
   NULL.  For whatever else a writer puts into the record (SMTP envelope,
   HELO), so that no peer's bytes can make the document invalid JSON. */
json_t *mm_json_str(const char *s);

/* Bytes kept for parsing: what was fed, less what the limits cut (the rest
   of a header section over max_header_bytes, anything beyond
   max_message_bytes). */
size_t mm_extract_stored(const struct mm_extract *x);

/* Reads the kept bytes back, e.g. to hand the message on to a scanner:
   copies up to LEN bytes from OFFSET into BUF and returns how many, 0 at
   or past the end, or -1 (errno set) when the spool file cannot be read,
   after a spool error (EIO: part of the message is missing) or after
   finish() (EINVAL).  Between feed()s, before mm_extract_finish(). */
ssize_t mm_extract_read(struct mm_extract *x, size_t offset, void *buf, size_t len);

/* Whether the message was spooled to a file (for tests and logging). */
int mm_extract_spooled(const struct mm_extract *x);

#endif
