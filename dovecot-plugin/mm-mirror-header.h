/*
 * mm-mirror-header.h - the X-Mailmeta-ID the milter stamped, read from a
 * message's header with Dovecot's header parser
 */
#ifndef MM_MIRROR_HEADER_H
#define MM_MIRROR_HEADER_H

#include "mm-id.h"

struct istream;

#define MM_MIRROR_ID_HEADER "X-Mailmeta-ID"

/* Reads the header of input, from where it stands, up to the first
   X-Mailmeta-ID field.  Returns TRUE with its id (lowercase) in id_r
   when that field is a valid UUID; FALSE when it is not, when the header
   has none, or when reading failed (input's stream_errno tells). */
bool mm_mirror_header_id(struct istream *input, char id_r[MM_UUID_TEXT_SIZE]);

#endif
