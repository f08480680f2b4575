/*
 * mm-message.h - one message as the milter sees it: session, envelope and
 * raw content, turned into the metadata document of doc/metadata-record.md.
 *
 * Knows nothing of libmilter: the callbacks hand it plain strings and bytes,
 * which keeps the document's assembly testable without a mail server.
 */
#ifndef MM_MESSAGE_H
#define MM_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "mm-extract.h"
#include "mm-id.h"
#include "mm-verdict.h"

struct mm_session {
	char *client_ip;	/* NULL for local submission */
	char *client_name;
	char *helo;
	bool local_submission;
};

struct mm_message;

struct mm_message *mm_message_new(const struct mm_extract_limits *limits);
void mm_message_free(struct mm_message **m);

const char *mm_message_id(const struct mm_message *m);	/* the UUIDv7 */
void mm_message_set_sender(struct mm_message *m, const char *env_from,
			   const char *sasl_user);
void mm_message_set_tls(struct mm_message *m, const char *version,
			const char *cipher);
void mm_message_add_recipient(struct mm_message *m, const char *rcpt,
			      bool local);
/* Raw content: header lines, the blank line, body chunks. */
void mm_message_add_header(struct mm_message *m, const char *name,
			   const char *value);
void mm_message_end_headers(struct mm_message *m);
void mm_message_add_body(struct mm_message *m, const void *data, size_t len);

/* Something that sees every byte of the message as it is added. */
typedef void mm_message_tap_fn(void *context, const void *data, size_t len);
void mm_message_set_tap(struct mm_message *m, mm_message_tap_fn *tap,
			void *context);

size_t mm_message_size(const struct mm_message *m);	/* bytes so far */
const char *mm_message_sasl_user(const struct mm_message *m);	/* or NULL */
const char *mm_message_sender(const struct mm_message *m);	/* "" for <> */
const json_t *mm_message_recipients(const struct mm_message *m);
struct mm_extract *mm_message_extract(struct mm_message *m);

/* The whole document with verdict V as compact JSON (caller frees); call
   once, at end-of-message. */
char *mm_message_document(struct mm_message *m, const struct mm_session *s,
			  const char *queue_id, const struct mm_verdict *v);
/* The record of a message refused before its content arrived: envelope and
   decision, no headers or parts. */
char *mm_message_refusal_document(struct mm_message *m,
				  const struct mm_session *s,
				  const char *queue_id,
				  const struct mm_verdict *v);

/* "<a@b>" -> "a@b", "<>" -> "" (caller frees). */
char *mm_strip_angles(const char *addr);

#endif
