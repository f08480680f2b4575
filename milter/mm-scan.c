/*
 * mm-scan.c - drive the milter's clamd and spamd clients by hand or from
 * the integration tests (a check program; not installed).
 *
 * usage: mm-scan [-t TIMEOUT_MS] [-m MAX_BYTES] [-n REPEAT] [-r REQUIRED]
 *                clamd|spamd ADDRESS FILE
 *
 * The file goes the way a message goes through the milter: fed in 64 KiB
 * pieces (libmilter's largest body chunk) to the extractor and, for clamd,
 * streamed to clamd as it is fed; for spamd it is read back from the
 * extractor (mm_extract_read) at the end.  Prints one line of key=value
 * pairs per scan (with -r, spamd's also the X-Spam-* header values judged
 * by REQUIRED) and with -n a timing summary on standard error.  Exits 0
 * when the engine gave an answer (clean, infected, scored, skipped), 1
 * when the scan failed, 2 on a usage or file error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm-clamd.h"
#include "mm-extract.h"
#include "mm-spamd.h"

#define PIECE 65535u

static void
usage(void)
{
	fprintf(stderr, "usage: mm-scan [-t TIMEOUT_MS] [-m MAX_BYTES] [-n REPEAT]"
		" [-r REQUIRED] clamd|spamd ADDRESS FILE\n");
	exit(2);
}

static ssize_t
read_extract(void *ctx, size_t offset, void *buf, size_t len)
{
	return mm_extract_read(ctx, offset, buf, len);
}

static int
scan_clamd(const struct mm_engine_config *cfg, const char *data, size_t len)
{
	struct mm_clamd *s = mm_clamd_open(cfg);
	struct mm_extract *x = mm_extract_new(NULL);
	struct mm_clamd_verdict v;

	for (size_t off = 0; off < len; off += PIECE) {
		size_t n = len - off < PIECE ? len - off : PIECE;

		mm_extract_feed(x, data + off, n);
		mm_clamd_write(s, data + off, n);
	}
	mm_clamd_finish(s, &v);
	mm_clamd_free(&s);
	mm_extract_free(&x);
	printf("status=%s", mm_clamd_status_name(v.status));
	if (v.status == MM_CLAMD_INFECTED)
		printf(" signature=%s", v.signature);
	if (v.status == MM_CLAMD_FAILED)
		printf(" reason=\"%s\"", v.reason);
	printf(" bytes=%zu scanned=%zu truncated=%s elapsed_ms=%u\n", v.bytes,
	       v.scanned, v.truncated ? "yes" : "no", v.elapsed_ms);
	return v.status == MM_CLAMD_FAILED;
}

static int
scan_spamd(const struct mm_engine_config *cfg, const char *data, size_t len,
	   const char *required)
{
	struct mm_extract *x = mm_extract_new(NULL);
	struct mm_spamd_result r;
	struct mm_spamd_request req = { .read = read_extract, .ctx = x };

	for (size_t off = 0; off < len; off += PIECE)
		mm_extract_feed(x, data + off, len - off < PIECE ? len - off : PIECE);
	req.size = mm_extract_stored(x);
	mm_spamd_check(cfg, &req, &r);
	mm_extract_free(&x);
	printf("status=%s", mm_spamd_status_name(r.status));
	if (r.status == MM_SPAMD_SCORED)
		printf(" score=%.1f required=%.1f spam=%s rules=%s", r.score,
		       r.required, r.spam ? "yes" : "no", r.rules);
	else
		printf(" reason=\"%s\"", r.reason);
	printf(" elapsed_ms=%u\n", r.elapsed_ms);
	if (required != NULL && r.status == MM_SPAMD_SCORED) {
		struct mm_spam_headers h;

		mm_spamd_headers(&r, strtod(required, NULL), &h);
		printf("X-Spam-Flag: %s\nX-Spam-Score: %s\nX-Spam-Level: %s\n"
		       "X-Spam-Status: %s\n", h.flag, h.score, h.level, h.status);
	}
	return r.status == MM_SPAMD_FAILED;
}

static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *data = NULL;
	size_t size = 0;

	*len = 0;
	if (f == NULL)
		return NULL;
	for (;;) {
		if (*len == size) {
			char *bigger = realloc(data, size = size ? size * 2 : 65536);

			if (bigger == NULL)
				break;
			data = bigger;
		}
		size_t n = fread(data + *len, 1, size - *len, f);

		if (n == 0)
			break;
		*len += n;
	}
	if (ferror(f)) {
		free(data);
		data = NULL;
	}
	fclose(f);
	return data ? data : strdup("");
}

int
main(int argc, char **argv)
{
	struct mm_engine_config cfg = { .timeout_ms = 30000 };
	const char *required = NULL, *bad;
	unsigned long repeat = 1;
	int opt, failed = 0, clamd;
	size_t len;
	char *data;
	int64_t start;

	cfg.max_bytes = 0;
	while ((opt = getopt(argc, argv, "t:m:n:r:")) != -1) {
		switch (opt) {
		case 't': cfg.timeout_ms = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'm': cfg.max_bytes = strtoull(optarg, NULL, 10); break;
		case 'n': repeat = strtoul(optarg, NULL, 10); break;
		case 'r': required = optarg; break;
		default: usage();
		}
	}
	if (argc - optind != 3 || repeat == 0)
		usage();
	if (strcmp(argv[optind], "clamd") != 0 && strcmp(argv[optind], "spamd") != 0)
		usage();
	clamd = strcmp(argv[optind], "clamd") == 0;
	if (cfg.max_bytes == 0)
		cfg.max_bytes = clamd ? 25u << 20 : 500u << 10;
	cfg.address = argv[optind + 1];
	if ((bad = mm_engine_address_error(cfg.address)) != NULL) {
		fprintf(stderr, "mm-scan: %s: %s\n", cfg.address, bad);
		return 2;
	}
	if ((data = slurp(argv[optind + 2], &len)) == NULL) {
		fprintf(stderr, "mm-scan: %s: %s\n", argv[optind + 2], strerror(errno));
		return 2;
	}
	mm_extract_library_init();
	start = mm_engine_now_ms();
	for (unsigned long i = 0; i < repeat; i++)
		failed |= clamd ? scan_clamd(&cfg, data, len)
				: scan_spamd(&cfg, data, len, required);
	if (repeat > 1)
		fprintf(stderr, "%s: %lu scans of %zu bytes in %lld ms, %.2f ms each\n",
			argv[optind], repeat, len, (long long)(mm_engine_now_ms() - start),
			(double)(mm_engine_now_ms() - start) / (double)repeat);
	free(data);
	return failed;
}
