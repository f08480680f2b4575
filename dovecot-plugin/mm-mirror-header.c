/*
 * mm-mirror-header.c - the X-Mailmeta-ID of a message's header (see
 * mm-mirror-header.h)
 *
 * The watcher reads the header itself rather than through
 * mail_get_first_header(): that one runs every field of the header through
 * the index's cache logic, and a field asked for often enough is added to
 * Dovecot's cache decisions, so that every later delivery and APPEND
 * caches it too.  The lookup was 14-18 % of the watcher's CPU in the IMAP
 * bench; parsing the header here costs a fraction of that, and nothing in
 * the processes that store mail.
 */
#include "lib.h"
#include "istream.h"
#include "message-header-parser.h"

#include "mm-mirror-id.h"
#include "mm-mirror-header.h"

bool
mm_mirror_header_id(struct istream *input, char id_r[MM_UUID_TEXT_SIZE])
{
	struct message_header_parser_ctx *parser;
	struct message_header_line *hdr;
	const char *value = NULL;

	parser = message_parse_header_init(input, NULL,
		MESSAGE_HEADER_PARSER_FLAG_SKIP_INITIAL_LWSP |
		MESSAGE_HEADER_PARSER_FLAG_CLEAN_ONELINE);
	while (value == NULL && message_parse_header_next(parser, &hdr) > 0) {
		if (hdr->eoh)
			break;
		if (strcasecmp(hdr->name, MM_MIRROR_ID_HEADER) != 0)
			continue;
		if (hdr->continues) {
			hdr->use_full_value = TRUE;
			continue;
		}
		value = t_strndup(hdr->full_value, hdr->full_value_len);
	}
	message_parse_header_deinit(&parser);
	return value != NULL && mm_mirror_parse_uuid(value, id_r);
}
