/*
 * fuzz-extract.c - libFuzzer target for the message extractor
 *
 * The extractor reads every message a mail server accepts, so it must stay
 * up on any bytes.  The input's first byte chooses a chunk size; the rest
 * is fed in chunks of varying length (as the milter gets it from Postfix)
 * with small memory and part limits so spooling and the limits are
 * exercised too, and the record must serialise.  Built and run by
 * run-fuzz.sh.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "mm-extract.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	mm_extract_library_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mm_extract_limits lim = { .memory_bytes = 4096, .max_depth = 16,
					 .max_parts = 200 };
	struct mm_extract *x;
	size_t chunk = 1, off = 1;
	json_t *doc;
	char *text;

	if (size == 0)
		return 0;
	x = mm_extract_new(&lim);
	chunk = (size_t)data[0] * 7 + 1;
	while (off < size) {
		size_t n = size - off < chunk ? size - off : chunk;

		mm_extract_feed(x, data + off, n);
		off += n;
		chunk = chunk * 3 % 1021 + 1;
	}
	doc = mm_extract_finish(x);
	mm_extract_free(&x);
	text = json_dumps(doc, JSON_COMPACT);
	if (doc == NULL || text == NULL)
		abort();
	free(text);
	json_decref(doc);
	return 0;
}
