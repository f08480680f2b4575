/*
 * mm-mirror-id.h - the mailmeta_id of a stored message, as text
 *
 * Plain C (no Dovecot headers) so the unit tests can check it alone.  See
 * doc/mailbox-mirror.md "Identities": the X-Mailmeta-ID header when it is a
 * valid UUID, else a name-based UUID (version 8) from the first 16 bytes of
 * the SHA-256 of the message, version and variant bits set.
 */
#ifndef MM_MIRROR_ID_H
#define MM_MIRROR_ID_H

#include <stdbool.h>

#include "mm-id.h"

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in any case, surrounding white
   space ignored; the lowercase form goes to out. */
bool mm_mirror_parse_uuid(const char *text, char out[MM_UUID_TEXT_SIZE]);

/* The UUIDv8 of a message from the SHA-256 digest of its bytes. */
void mm_mirror_uuid8_from_sha256(const unsigned char digest[32],
				 char out[MM_UUID_TEXT_SIZE]);

#endif
