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

#include "mm-extract.h"
#include "mm-id.h"

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

/* The whole document as compact JSON (caller frees). */
char *mm_message_document(struct mm_message *m, const struct mm_session *s,
			  const char *queue_id, const char *action,
			  const char *reason);

/* "<a@b>" -> "a@b", "<>" -> "" (caller frees). */
char *mm_strip_angles(const char *addr);

#endif
