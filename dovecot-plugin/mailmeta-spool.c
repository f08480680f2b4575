/*
 * mailmeta-spool.c - user name <-> marker file name (see mailmeta-spool.h)
 */
#include <string.h>

#include "mailmeta-spool.h"

static bool
keep_as_is(unsigned char c, bool first)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	if (c == '.')
		return !first;
	return c == '@' || c == '_' || c == '+' || c == '-';
}

bool
mailmeta_spool_encode(const char *user, char *out, size_t out_size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t len = strlen(user), o = 0;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)user[i];
		bool keep = keep_as_is(c, i == 0);
		size_t need = keep ? 1 : 3;

		if (o + need > MAILMETA_SPOOL_NAME_MAX || o + need >= out_size)
			return false;
		if (keep) {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 0x0f];
		}
	}
	out[o] = '\0';
	return true;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool
mailmeta_spool_decode(const char *name, char *out, size_t out_size)
{
	size_t len = strlen(name), o = 0;

	if (len == 0 || name[0] == '.' || out_size < len + 1)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (name[i] != '%') {
			if (!keep_as_is((unsigned char)name[i], i == 0))
				return false;
			out[o++] = name[i];
			continue;
		}
		if (i + 2 >= len)
			return false;
		int hi = hex_value(name[i + 1]), lo = hex_value(name[i + 2]);
		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
			return false;
		out[o++] = (char)(hi << 4 | lo);
		i += 2;
	}
	out[o] = '\0';
	/* only the canonical spelling, so one user has one marker */
	char again[MAILMETA_SPOOL_NAME_SIZE];
	return mailmeta_spool_encode(out, again, sizeof(again)) &&
		strcmp(again, name) == 0;
}
