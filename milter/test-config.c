/*
 * test-config.c - mailmeta-milter.conf(5): defaults, sizes with suffixes,
 * and every kind of bad value refused with the key named.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm-config.h"
#include "mm-log.h"
#include "test-common.h"

static char path[] = "/tmp/test-config-XXXXXX";

static struct mm_config *
load(const char *text, char **err)
{
	FILE *f = fopen(path, "w");

	fputs(text, f);
	fclose(f);
	*err = NULL;
	return mm_config_load(path, err);
}

static void
test_defaults(void)
{
	char *err;
	struct mm_config *c = load("[milter]\n", &err);

	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK(strcmp(c->socket, "unix:/run/mailmeta/milter.sock") == 0);
	CHECK(c->pool_size == 4 && c->batch_size == 50);
	CHECK(c->on_failure == MM_ON_FAILURE_JOURNAL);
	CHECK(c->memory_bytes == 1024 * 1024);
	CHECK(mm_config_is_local_transport(c, "lmtp"));
	CHECK(!mm_config_is_local_transport(c, "smtp"));
	CHECK(!mm_config_is_local_transport(c, NULL));
	/* no engine unless it is given an address */
	CHECK(c->clamd.address == NULL && c->spamd.address == NULL);
	CHECK(c->clamd.timeout_ms == 30000 && c->clamd.max_bytes == 25u << 20);
	CHECK(c->clamd.on_failure == MM_ENGINE_TEMPFAIL);
	CHECK(c->clamd_on_infected == MM_ON_INFECTED_REJECT);
	CHECK(c->spamd.timeout_ms == 30000 && c->spamd.max_bytes == 500u << 10);
	CHECK(c->spamd.on_failure == MM_ENGINE_TEMPFAIL);
	mm_config_free(&c);
	CHECK(c == NULL);
}

static void
test_engines(void)
{
	char *err;
	struct mm_config *c = load(
		"[clamd]\nsocket = unix:/run/clamav/clamd.ctl\ntimeout_ms = 500\n"
		"max_bytes = 64m\non_infected = hold\non_failure = accept\n"
		"[spamd]\naddress = inet:127.0.0.1:783\nmax_bytes = 1m\n", &err);

	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK(strcmp(c->clamd.address, "unix:/run/clamav/clamd.ctl") == 0);
	CHECK(c->clamd.timeout_ms == 500 && c->clamd.max_bytes == 64u << 20);
	CHECK(c->clamd_on_infected == MM_ON_INFECTED_HOLD);
	CHECK(c->clamd.on_failure == MM_ENGINE_ACCEPT);
	CHECK(strcmp(c->spamd.address, "inet:127.0.0.1:783") == 0);
	CHECK(c->spamd.max_bytes == 1u << 20 && c->spamd.on_failure == MM_ENGINE_TEMPFAIL);
	mm_config_free(&c);

	/* an empty address is no address */
	c = load("[clamd]\nsocket =\n[spamd]\naddress = inet:[::1]:783\n", &err);
	CHECK(c != NULL && c->clamd.address == NULL && c->spamd.address != NULL);
	mm_config_free(&c);
}

static void
test_values(void)
{
	char *err;
	struct mm_config *c = load(
		"[milter]\nsocket = inet:10029@127.0.0.1\nlocal_transports = dovecot, lmtp\n"
		"[database]\non_failure = tempfail\ncommit_timeout_ms = 250\n"
		"[message]\nmemory_bytes = 2m\nmax_message_bytes = 1g\n", &err);

	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK(c->on_failure == MM_ON_FAILURE_TEMPFAIL);
	CHECK(c->commit_timeout_ms == 250);
	CHECK(c->memory_bytes == 2u * 1024 * 1024);
	CHECK(c->max_message_bytes == 1024ull * 1024 * 1024);
	CHECK(mm_config_is_local_transport(c, "dovecot"));
	mm_config_free(&c);
}

static const struct {
	const char *text;
	const char *error;	/* must appear in the message */
} bad_cases[] = {
	{ "[milter]\nsokcet = unix:/x\n", "unknown setting [milter] sokcet" },
	{ "[database]\npool_size = 0\n", "[database] pool_size = 0" },
	{ "[database]\npool_size = -3\n", "[database] pool_size = -3" },
	{ "[database]\npool_size = 4x\n", "[database] pool_size = 4x" },
	{ "[database]\non_failure = sometimes\n", "expected journal or tempfail" },
	{ "[milter]\nsocket = /run/x.sock\n", "expected unix:/path or inet:port@host" },
	{ "[milter]\nsyslog_facility = nosuch\n", "not a syslog facility" },
	{ "[journal]\ndirectory = relative/dir\n", "must be an absolute path" },
	{ "[message]\nmemory_bytes = 99999999999999999999\n", "[message] memory_bytes" },
	{ "[clamd]\nsocket = /run/clamd.ctl\n",
	  "[clamd] socket = /run/clamd.ctl: expected unix:/path or inet:host:port" },
	{ "[clamd]\nsocket = unix:clamd.ctl\n", "expected unix:/absolute/path" },
	{ "[spamd]\naddress = inet:127.0.0.1\n",
	  "[spamd] address = inet:127.0.0.1: expected inet:host:port" },
	{ "[spamd]\naddress = inet:127.0.0.1:99999\n", "expected a port number" },
	{ "[clamd]\non_infected = quarantine\n",
	  "[clamd] on_infected = quarantine: expected reject or hold" },
	{ "[spamd]\non_failure = journal\n",
	  "[spamd] on_failure = journal: expected tempfail or accept" },
	{ "[spamd]\ntimeout_ms = 5\n", "[spamd] timeout_ms = 5" },
	{ "[clamd]\nmax_bytes = 5g\n", "[clamd] max_bytes = 5g" },
	{ "[clamd]\naddress = unix:/x\n", "unknown setting [clamd] address" },
	{ "[spamd]\nsocket = unix:/x\n", "unknown setting [spamd] socket" },
	{ "this is not a key file\n", "test-config-" },
};

static void
test_bad_values(void)
{
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		char *err;
		struct mm_config *c = load(bad_cases[i].text, &err);

		CHECK(c == NULL);
		CHECK(err != NULL && strstr(err, bad_cases[i].error) != NULL);
		if (err == NULL || strstr(err, bad_cases[i].error) == NULL)
			fprintf(stderr, "  case %zu: got %s\n", i, err ? err : "(no error)");
		free(err);
		mm_config_free(&c);
	}
}

static void
test_missing_file(void)
{
	char *err = NULL;
	struct mm_config *c = mm_config_load("/nonexistent/mailmeta-milter.conf", &err);

	CHECK(c == NULL && err && strstr(err, "/nonexistent/mailmeta-milter.conf"));
	free(err);
}

int
main(void)
{
	int fd = mkstemp(path);

	mm_log_open("test-config", NULL, true);
	if (fd < 0)
		return 1;
	close(fd);
	test_defaults();
	test_values();
	test_engines();
	test_bad_values();
	test_missing_file();
	unlink(path);
	return test_result();
}
