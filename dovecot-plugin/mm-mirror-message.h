/*
 * mm-mirror-message.h - one message of a mailbox: its mailmeta_id, and the
 * metadata record for a message that never passed the milter
 *
 * The mailmeta_id is the X-Mailmeta-ID header when that is a valid UUID (the
 * milter stamped it), else a name-based UUID (version 8) made of the first
 * 16 bytes of the SHA-256 of the message as IMAP's BODY[] returns it (CRLF
 * line ends), so an appended, imported or copied message gets the same id
 * on every resync and a client can recompute it.  The record is built by
 * libmailmeta from the same bytes, like the milter's, with
 * "direction": "mailbox" and no SMTP envelope (doc/mailbox-mirror.md).
 */
#ifndef MM_MIRROR_MESSAGE_H
#define MM_MIRROR_MESSAGE_H

#include "mm-id.h"

struct mail;

enum mm_mirror_read {
	MM_MIRROR_READ_OK = 1,
	/* the message was expunged meanwhile: nothing to describe */
	MM_MIRROR_READ_EXPUNGED = 0,
	MM_MIRROR_READ_FAILED = -1,
};

/* Writes the message's mailmeta_id (lowercase canonical text) to id_r. */
enum mm_mirror_read
mm_mirror_message_id(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
		     const char **error_r);

/* Whether the milter stamped the message: TRUE with the X-Mailmeta-ID in
   id_r; FALSE when it did not, or when the header could not be read (the
   caller's next read of the message reports that). */
bool mm_mirror_message_stamped(struct mail *mail,
			       char id_r[MM_UUID_TEXT_SIZE]);

/* The message's metadata record as compact JSON (i_free() it). */
enum mm_mirror_read
mm_mirror_message_record(struct mail *mail, const char *mailmeta_id,
			 char **json_r, const char **error_r);

/* mm_mirror_message_id(), and for a message the milter did not stamp also
   its record (else *json_r = NULL), from one read of the message: for a
   new message that most likely needs one.  i_free() *json_r. */
enum mm_mirror_read
mm_mirror_message_id_record(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
			    char **json_r, const char **error_r);

#endif
