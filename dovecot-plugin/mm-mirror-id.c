/*
 * mm-mirror-id.c - UUID text parsing and the UUIDv8 of a message (see
 * mm-mirror-id.h)
 */
#include <string.h>

#include "mm-mirror-id.h"

static bool
space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

bool
mm_mirror_parse_uuid(const char *text, char out[MM_UUID_TEXT_SIZE])
{
	size_t len;

	while (space(*text))
		text++;
	len = strlen(text);
	while (len > 0 && space(text[len - 1]))
		len--;
	if (len != MM_UUID_TEXT_SIZE - 1)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = text[i];

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
			out[i] = c;
		} else if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
			out[i] = c;
		} else if (c >= 'A' && c <= 'F') {
			out[i] = (char)(c - 'A' + 'a');
		} else {
			return false;
		}
	}
	out[len] = '\0';
	return true;
}

void
mm_mirror_uuid8_from_sha256(const unsigned char digest[32],
			    char out[MM_UUID_TEXT_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[16];
	size_t o = 0;

	memcpy(b, digest, sizeof(b));
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x80);	/* version 8 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);	/* RFC 9562 variant */
	for (size_t i = 0; i < sizeof(b); i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[b[i] >> 4];
		out[o++] = hex[b[i] & 0x0f];
	}
	out[o] = '\0';
}
