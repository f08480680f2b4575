/*
 * mm-extract-private.h - what the files of the extractor share
 *
 * Not installed and not for callers: mm-extract.h is the interface.
 */
#ifndef MM_EXTRACT_PRIVATE_H
#define MM_EXTRACT_PRIVATE_H

#include <gmime/gmime.h>
#include <jansson.h>

#include "mm-extract.h"

struct mm_extract {
	struct mm_extract_limits lim;
	GByteArray *mem;        /* the message while it fits lim.memory_bytes */
	int fd;                 /* else the unlinked spool file, or -1 */
	size_t size;            /* bytes fed */
	size_t stored;          /* bytes kept for parsing */
	/* scanner of the top-level header section */
	int hdr_done;           /* the empty line was seen */
	int hdr_skipping;       /* over max_header_bytes: dropping the rest */
	size_t hdr_bytes;
	size_t line_len;        /* bytes of the current line, CR/LF excluded */
	int hdr_8bit, hdr_nul, io_error, finished;
	int eol_seen, crlf;     /* the first line end was seen; it was CRLF */
	unsigned char prev;     /* the byte scanned last */
	unsigned char last;     /* the byte stored last */
	json_t *reasons;        /* malformed_reasons, each reason once */
	unsigned nparts;        /* parts described so far */
};

/* Adds a reason to malformed_reasons unless it is already there. */
void mm_reason(struct mm_extract *x, const char *reason);

/* headers: the top-level header fields of msg (msg may be NULL). */
json_t *mm_headers_json(struct mm_extract *x, GMimeMessage *msg);

/* Parses a message from a seekable stream, reporting GMime's warnings. */
GMimeMessage *mm_parse(struct mm_extract *x, GMimeStream *stream);

/* Options to write a part out with the message's own line ends. */
GMimeFormatOptions *mm_format_options(struct mm_extract *x);

/* Appends the parts and attachments entries of msg's MIME tree. */
void mm_parts_collect(struct mm_extract *x, GMimeMessage *msg,
		      json_t *parts, json_t *attachments);

/* A write-only stream that counts and SHA-256-hashes what is written. */
GMimeStream *mm_hash_stream_new(void);
/* Lowercase hex digest and byte count of what was written so far. */
void mm_hash_stream_result(GMimeStream *stream, char hex[65], gint64 *bytes);

#endif
