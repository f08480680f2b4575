/*
 * mm-extract-dump.c - print the content record of a message file
 *
 * usage: mm-extract-dump [--crlf] [--chunk N] FILE
 * Feeds FILE to the extractor (with --crlf, bare LF line ends become CRLF
 * first, as a message looks after SMTP) in chunks of N bytes (default
 * 65536) and prints the JSON on one line.  The corpus test and anyone
 * debugging an odd message use it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm-extract.h"

/* Feeds buf with LF -> CRLF; *cr tells whether the last byte was CR. */
static int
mm_feed_crlf(struct mm_extract *x, const char *buf, size_t len, int *cr)
{
	size_t i, start = 0;

	for (i = 0; i < len; i++) {
		int prev_cr = i > 0 ? buf[i - 1] == '\r' : *cr;

		if (buf[i] == '\n' && !prev_cr) {
			if (mm_extract_feed(x, buf + start, i - start) < 0 ||
			    mm_extract_feed(x, "\r\n", 2) < 0)
				return -1;
			start = i + 1;
		}
	}
	if (len > 0)
		*cr = buf[len - 1] == '\r';
	return mm_extract_feed(x, buf + start, len - start);
}

static int
mm_dump(FILE *in, size_t chunk, int crlf)
{
	struct mm_extract *x = mm_extract_new(NULL);
	char *buf = malloc(chunk);
	size_t n;
	int cr = 0, r = 0;
	json_t *doc;

	if (x == NULL || buf == NULL)
		return 1;
	while ((n = fread(buf, 1, chunk, in)) > 0)
		r |= crlf ? mm_feed_crlf(x, buf, n, &cr) : mm_extract_feed(x, buf, n);
	free(buf);
	doc = mm_extract_finish(x);
	mm_extract_free(&x);
	if (doc == NULL || json_dumpf(doc, stdout, JSON_COMPACT) < 0)
		r = 1;
	putchar('\n');
	json_decref(doc);
	return r != 0;
}

int
main(int argc, char **argv)
{
	size_t chunk = 65536;
	int crlf = 0, i;
	FILE *in;

	for (i = 1; i < argc - 1; i++) {
		if (strcmp(argv[i], "--crlf") == 0)
			crlf = 1;
		else if (strcmp(argv[i], "--chunk") == 0 && i + 2 < argc)
			chunk = strtoul(argv[++i], NULL, 10);
	}
	if (i != argc - 1 || chunk == 0) {
		fprintf(stderr, "usage: mm-extract-dump [--crlf] [--chunk N] FILE\n");
		return 2;
	}
	in = fopen(argv[i], "rb");
	if (in == NULL) {
		perror(argv[i]);
		return 1;
	}
	mm_extract_library_init();
	i = mm_dump(in, chunk, crlf);
	fclose(in);
	return i;
}
