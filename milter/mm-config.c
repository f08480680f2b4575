/*
 * mm-config.c - load mailmeta-milter.conf(5) with GLib's GKeyFile.
 *
 * Every key has a default documented in the man page; unknown groups or keys
 * are errors, so a typo is reported instead of quietly ignored.
 */
#include <errno.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "mm-config.h"
#include "mm-log.h"

static const char *const known_keys[] = {
	"milter.socket", "milter.user", "milter.group", "milter.pidfile",
	"milter.syslog_facility", "milter.timeout", "milter.local_transports",
	"database.conninfo", "database.pool_size", "database.batch_size",
	"database.commit_timeout_ms", "database.on_failure",
	"journal.directory", "journal.replay_interval",
	"message.memory_bytes", "message.max_message_bytes", "message.max_depth",
	"message.max_parts", "message.tmpdir",
	"policy.enabled", "policy.refresh_interval", "policy.timeout_ms",
	"policy.on_failure",
	"clamd.socket", "clamd.timeout_ms", "clamd.max_bytes",
	"clamd.on_infected", "clamd.on_failure",
	"spamd.address", "spamd.timeout_ms", "spamd.max_bytes", "spamd.on_failure",
	NULL,
};

struct loader {
	GKeyFile *kf;
	GString *err;
};

static void
complain(struct loader *ld, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
complain(struct loader *ld, const char *fmt, ...)
{
	va_list ap;

	if (ld->err->len > 0)
		g_string_append(ld->err, "; ");
	va_start(ap, fmt);
	g_string_append_vprintf(ld->err, fmt, ap);
	va_end(ap);
}

static bool
key_is_known(const char *group, const char *key)
{
	char *full = g_strdup_printf("%s.%s", group, key);
	bool known = g_strv_contains(known_keys, full);

	g_free(full);
	return known;
}

static void
check_unknown_keys(struct loader *ld)
{
	gchar **groups = g_key_file_get_groups(ld->kf, NULL);

	for (gchar **g = groups; *g; g++) {
		gchar **keys = g_key_file_get_keys(ld->kf, *g, NULL, NULL);

		for (gchar **k = keys; keys && *k; k++)
			if (!key_is_known(*g, *k))
				complain(ld, "unknown setting [%s] %s", *g, *k);
		g_strfreev(keys);
	}
	g_strfreev(groups);
}

static char *
get_string(struct loader *ld, const char *group, const char *key, const char *def)
{
	gchar *v = g_key_file_get_string(ld->kf, group, key, NULL);

	if (v == NULL)
		return def ? strdup(def) : NULL;
	g_strstrip(v);
	char *copy = strdup(v);
	g_free(v);
	return copy;
}

/* An unsigned number with an optional k/m/g suffix (powers of 1024). */
static unsigned long long
get_number(struct loader *ld, const char *group, const char *key,
	   unsigned long long def, unsigned long long min, unsigned long long max)
{
	char *text = get_string(ld, group, key, NULL);
	unsigned long long v = def, mult = 1;
	char *end;

	if (text == NULL)
		return def;
	errno = 0;
	v = strtoull(text, &end, 10);
	switch (*end) {
	case 'k': case 'K': mult = 1024ULL; end++; break;
	case 'm': case 'M': mult = 1024ULL * 1024; end++; break;
	case 'g': case 'G': mult = 1024ULL * 1024 * 1024; end++; break;
	}
	if (errno != 0 || end == text || *end != '\0' || text[0] == '-' ||
	    v > max / mult || v * mult < min || v * mult > max) {
		complain(ld, "[%s] %s = %s: expected a number from %llu to %llu",
			 group, key, text, min, max);
		v = def, mult = 1;
	}
	free(text);
	return v * mult;
}

static void
load_milter(struct loader *ld, struct mm_config *c)
{
	char *transports;

	c->socket = get_string(ld, "milter", "socket",
			       "unix:/run/mailmeta/milter.sock");
	c->user = get_string(ld, "milter", "user", "mailmeta");
	c->group = get_string(ld, "milter", "group", NULL);
	c->pidfile = get_string(ld, "milter", "pidfile", NULL);
	c->syslog_facility = get_string(ld, "milter", "syslog_facility", "mail");
	if (mm_log_facility(c->syslog_facility) < 0)
		complain(ld, "[milter] syslog_facility = %s: not a syslog facility",
			 c->syslog_facility);
	c->milter_timeout = get_number(ld, "milter", "timeout", 300, 1, 3600);
	transports = get_string(ld, "milter", "local_transports",
				"lmtp virtual local");
	c->local_transports = g_strsplit_set(transports, " ,\t", -1);
	free(transports);
	if (strncmp(c->socket, "unix:", 5) != 0 &&
	    strncmp(c->socket, "local:", 6) != 0 &&
	    strncmp(c->socket, "inet:", 5) != 0 &&
	    strncmp(c->socket, "inet6:", 6) != 0)
		complain(ld, "[milter] socket = %s: expected unix:/path or inet:port@host",
			 c->socket);
}

static void
load_database(struct loader *ld, struct mm_config *c)
{
	char *on_failure;

	c->conninfo = get_string(ld, "database", "conninfo", "dbname=mailmeta");
	c->pool_size = get_number(ld, "database", "pool_size", 4, 1, 64);
	c->batch_size = get_number(ld, "database", "batch_size", 50, 1, 1000);
	c->commit_timeout_ms = get_number(ld, "database", "commit_timeout_ms",
					  3000, 10, 600000);
	on_failure = get_string(ld, "database", "on_failure", "journal");
	if (strcmp(on_failure, "journal") == 0)
		c->on_failure = MM_ON_FAILURE_JOURNAL;
	else if (strcmp(on_failure, "tempfail") == 0)
		c->on_failure = MM_ON_FAILURE_TEMPFAIL;
	else
		complain(ld, "[database] on_failure = %s: expected journal or tempfail",
			 on_failure);
	free(on_failure);
}

static void
load_policy(struct loader *ld, struct mm_config *c)
{
	char *enabled = get_string(ld, "policy", "enabled", "yes");
	char *on_failure = get_string(ld, "policy", "on_failure", "accept");

	if (strcmp(enabled, "yes") == 0 || strcmp(enabled, "no") == 0)
		c->policy_enabled = strcmp(enabled, "yes") == 0;
	else
		complain(ld, "[policy] enabled = %s: expected yes or no", enabled);
	c->policy_refresh = get_number(ld, "policy", "refresh_interval", 5, 1, 3600);
	c->policy_timeout_ms = get_number(ld, "policy", "timeout_ms", 2000, 10, 600000);
	if (strcmp(on_failure, "accept") == 0 || strcmp(on_failure, "tempfail") == 0)
		c->policy_tempfail = strcmp(on_failure, "tempfail") == 0;
	else
		complain(ld, "[policy] on_failure = %s: expected accept or tempfail",
			 on_failure);
	free(enabled);
	free(on_failure);
}

static void
load_rest(struct loader *ld, struct mm_config *c)
{
	c->journal_dir = get_string(ld, "journal", "directory",
				    "/var/spool/mailmeta-milter");
	c->replay_interval = get_number(ld, "journal", "replay_interval", 5, 1, 3600);
	c->memory_bytes = get_number(ld, "message", "memory_bytes",
				     1024 * 1024, 4096, 1ULL << 32);
	c->max_message_bytes = get_number(ld, "message", "max_message_bytes",
					  128ULL << 20, 4096, 1ULL << 40);
	c->max_depth = get_number(ld, "message", "max_depth", 32, 1, 1000);
	c->max_parts = get_number(ld, "message", "max_parts", 1000, 1, 100000);
	c->tmpdir = get_string(ld, "message", "tmpdir", "/var/tmp");
	if (c->journal_dir[0] != '/')
		complain(ld, "[journal] directory = %s: must be an absolute path",
			 c->journal_dir);
	if (c->tmpdir[0] != '/')
		complain(ld, "[message] tmpdir = %s: must be an absolute path", c->tmpdir);
}

/* One of NAMES (NULL-terminated), as the matching VALUES entry. */
static int
get_choice(struct loader *ld, const char *group, const char *key,
	   const char *def, const char *const *names, const int *values)
{
	char *text = get_string(ld, group, key, def);
	int v = values[0];
	size_t i;

	for (i = 0; names[i] != NULL && strcmp(text, names[i]) != 0; i++)
		;
	if (names[i] != NULL) {
		v = values[i];
	} else {
		GString *list = g_string_new(NULL);

		for (i = 0; names[i] != NULL; i++)
			g_string_append_printf(list, "%s%s", i == 0 ? "" :
					       names[i + 1] ? ", " : " or ", names[i]);
		complain(ld, "[%s] %s = %s: expected %s", group, key, text, list->str);
		g_string_free(list, TRUE);
	}
	free(text);
	return v;
}

/* What [clamd] and [spamd] share; without ADDRESS_KEY the engine is off. */
static void
load_engine(struct loader *ld, const char *group, const char *address_key,
	    size_t max_bytes, struct mm_engine_config *e)
{
	static const char *const on_failure_names[] = { "tempfail", "accept", NULL };
	static const int on_failure_values[] = { MM_ENGINE_TEMPFAIL, MM_ENGINE_ACCEPT };
	const char *bad;

	e->address = get_string(ld, group, address_key, NULL);
	if (e->address != NULL && e->address[0] == '\0') {
		free(e->address);
		e->address = NULL;
	}
	if (e->address != NULL && (bad = mm_engine_address_error(e->address)) != NULL)
		complain(ld, "[%s] %s = %s: %s", group, address_key, e->address, bad);
	e->timeout_ms = get_number(ld, group, "timeout_ms", 30000, 100, 600000);
	e->max_bytes = get_number(ld, group, "max_bytes", max_bytes, 1024, 4ULL << 30);
	e->on_failure = get_choice(ld, group, "on_failure", "tempfail",
				   on_failure_names, on_failure_values);
}

static void
load_engines(struct loader *ld, struct mm_config *c)
{
	static const char *const on_infected_names[] = { "reject", "hold", NULL };
	static const int on_infected_values[] = {
		MM_ON_INFECTED_REJECT, MM_ON_INFECTED_HOLD,
	};

	/* as StreamMaxLength in Debian's clamd.conf: more is refused there */
	load_engine(ld, "clamd", "socket", 25ULL << 20, &c->clamd);
	c->clamd_on_infected = get_choice(ld, "clamd", "on_infected", "reject",
					  on_infected_names, on_infected_values);
	/* spamc's --max-size */
	load_engine(ld, "spamd", "address", 500ULL << 10, &c->spamd);
}

struct mm_config *
mm_config_load(const char *path, char **err)
{
	struct loader ld = { g_key_file_new(), g_string_new(NULL) };
	struct mm_config *c = calloc(1, sizeof(*c));
	GError *gerr = NULL;

	if (!g_key_file_load_from_file(ld.kf, path, G_KEY_FILE_NONE, &gerr)) {
		complain(&ld, "%s: %s", path, gerr->message);
		g_error_free(gerr);
	} else {
		check_unknown_keys(&ld);
		load_milter(&ld, c);
		load_database(&ld, c);
		load_policy(&ld, c);
		load_rest(&ld, c);
		load_engines(&ld, c);
	}
	g_key_file_free(ld.kf);
	if (ld.err->len > 0) {
		*err = strdup(ld.err->str);
		g_string_free(ld.err, TRUE);
		mm_config_free(&c);
		return NULL;
	}
	g_string_free(ld.err, TRUE);
	return c;
}

void
mm_config_free(struct mm_config **cfgp)
{
	struct mm_config *c = *cfgp;

	if (c == NULL)
		return;
	free(c->socket);
	free(c->user);
	free(c->group);
	free(c->pidfile);
	free(c->syslog_facility);
	g_strfreev(c->local_transports);
	free(c->conninfo);
	free(c->journal_dir);
	free(c->tmpdir);
	free(c->clamd.address);
	free(c->spamd.address);
	free(c);
	*cfgp = NULL;
}

bool
mm_config_is_local_transport(const struct mm_config *cfg, const char *mailer)
{
	if (mailer == NULL)
		return false;
	for (char **t = cfg->local_transports; *t; t++)
		if (**t && strcmp(*t, mailer) == 0)
			return true;
	return false;
}
