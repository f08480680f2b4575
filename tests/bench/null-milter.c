/*
 * null-milter.c - the cheapest milter that does what mailmeta-milter's
 * protocol needs, as a benchmark reference: it negotiates the same steps
 * and no-reply flags, receives every header and the body, adds one header
 * at end of message and accepts.  The difference between Postfix without
 * milters and Postfix with this one is what the milter protocol itself
 * costs; what mailmeta-milter costs beyond it is its own work.
 *
 * usage: null-milter SOCKET   (unix:/path or inet:port@127.0.0.1)
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NO_REPLY_STEPS (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_HDR | \
			SMFIP_NR_EOH | SMFIP_NR_BODY)

static sfsistat
on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
	     unsigned long f2, unsigned long f3, unsigned long *pf0,
	     unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	(void)ctx, (void)f2, (void)f3;
	*pf0 = f0 & SMFIF_ADDHDRS;
	*pf1 = f1 & (SMFIP_HDR_LEADSPC | SMFIP_NODATA | SMFIP_NOUNKNOWN |
		     NO_REPLY_STEPS);
	*pf2 = *pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat
no_reply(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_NOREPLY;
}

static sfsistat
on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	(void)host, (void)addr;
	return no_reply(ctx);
}

static sfsistat
on_helo(SMFICTX *ctx, char *helo)
{
	(void)helo;
	return no_reply(ctx);
}

static sfsistat
on_envelope(SMFICTX *ctx, char **argv)
{
	(void)ctx, (void)argv;
	return SMFIS_CONTINUE;	/* MAIL and RCPT keep their replies */
}

static sfsistat
on_header(SMFICTX *ctx, char *name, char *value)
{
	(void)name, (void)value;
	return no_reply(ctx);
}

static sfsistat
on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	(void)chunk, (void)len;
	return no_reply(ctx);
}

static sfsistat
on_eom(SMFICTX *ctx)
{
	char *queue_id = smfi_getsymval(ctx, "i");
	char value[64];

	snprintf(value, sizeof(value), "null-%s", queue_id ? queue_id : "unknown");
	smfi_addheader(ctx, "X-Null-Milter", value);
	return SMFIS_ACCEPT;
}

int
main(int argc, char **argv)
{
	struct smfiDesc desc = {
		.xxfi_name = "null-milter",
		.xxfi_version = SMFI_VERSION,
		.xxfi_flags = SMFIF_ADDHDRS,
		.xxfi_connect = on_connect,
		.xxfi_helo = on_helo,
		.xxfi_envfrom = on_envelope,
		.xxfi_envrcpt = on_envelope,
		.xxfi_header = on_header,
		.xxfi_eoh = no_reply,
		.xxfi_body = on_body,
		.xxfi_eom = on_eom,
		.xxfi_negotiate = on_negotiate,
	};

	if (argc != 2) {
		fprintf(stderr, "usage: null-milter SOCKET\n");
		return 2;
	}
	if (strncmp(argv[1], "unix:", 5) == 0)
		unlink(argv[1] + 5);
	if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
		fprintf(stderr, "null-milter: cannot use %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
