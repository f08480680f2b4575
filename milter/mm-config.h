/*
 * mm-config.h - mailmeta-milter.conf(5): reading and validating settings.
 *
 * The file is an INI-style key file (GLib's GKeyFile, already linked through
 * GMime).  A bad value is an error that names the key, never a silent
 * default: at start-up it stops the daemon, on reload the old settings stay.
 */
#ifndef MM_CONFIG_H
#define MM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "mm-engine.h"

enum mm_on_failure {
	MM_ON_FAILURE_JOURNAL,	/* accept, keep the record in the journal */
	MM_ON_FAILURE_TEMPFAIL,	/* answer 451: the client retries later */
};

enum mm_on_infected {
	MM_ON_INFECTED_REJECT,	/* 554 5.7.1 */
	MM_ON_INFECTED_HOLD,	/* accept into Postfix's hold queue */
};

struct mm_config {
	/* [milter] */
	char *socket;			/* libmilter spec: unix:/path or inet:port@host */
	char *user;			/* run as; name or uid */
	char *group;			/* optional; name or gid */
	char *pidfile;
	char *syslog_facility;
	unsigned milter_timeout;	/* seconds Postfix may be silent */
	char **local_transports;	/* {rcpt_mailer} values meaning "local" */

	/* [database] */
	char *conninfo;
	unsigned pool_size;		/* connections, each with a writer thread */
	unsigned batch_size;		/* records per round trip */
	unsigned commit_timeout_ms;	/* then journal (or tempfail) */
	enum mm_on_failure on_failure;

	/* [policy] */
	bool policy_enabled;		/* rules from mail.policy_snapshot() */
	unsigned policy_refresh;	/* seconds between snapshots */
	unsigned policy_timeout_ms;	/* for the rate-limit check */
	bool policy_tempfail;		/* on a failed check; else accept */

	/* [journal] */
	char *journal_dir;
	unsigned replay_interval;	/* seconds between attempts */

	/* [message] */
	size_t memory_bytes;		/* per message, then spool to tmpdir */
	size_t max_message_bytes;	/* parse no further (0: no limit) */
	unsigned max_depth;
	unsigned max_parts;
	char *tmpdir;

	/* [clamd]: address NULL when no socket is set (no virus scanning) */
	struct mm_engine_config clamd;
	enum mm_on_infected clamd_on_infected;

	/* [spamd]: address NULL when none is set (no spam scoring) */
	struct mm_engine_config spamd;
};

/* Returns NULL and fills ERR (caller frees) when PATH is unreadable or a
 * value is invalid. */
struct mm_config *mm_config_load(const char *path, char **err);
void mm_config_free(struct mm_config **cfg);
bool mm_config_is_local_transport(const struct mm_config *cfg, const char *mailer);

#endif
