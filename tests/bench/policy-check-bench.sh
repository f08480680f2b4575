#!/usr/bin/env bash
# policy-check-bench.sh - cost of mail.policy_check(), the milter's one
# database round trip per message for rate limits, with many rules and many
# live counters, against a baseline of the same clients calling a trivial
# function with the same document, in one run.
#
# It creates a scratch database, migrates it with sql/mailmeta-migrate.in
# (the working tree's migrations), adds 1,000 users and RULES rate-limit
# rules through the admin API (a mix of every key and metric: a dozen
# per-value rules with a NULL match, the rest naming one user, sender,
# domain, address or network), fills mail.rate_limit_counters with COUNTERS
# live counters (per-value counters of the NULL-match rules for users,
# senders, domains, addresses and networks that are not in the checked
# traffic, plus one per named rule), and generates CHECKS policy_check
# documents: one of 1,000 users (one in five has a rule of its own), its
# address as sender, a client address of which some fall under an address
# or network rule, 1-5 recipients over 60 domains (some with rules), 2-60
# KB. Budgets are large: every check is accepted, so every check adds to
# every counter it touches (the common path).
#
# CLIENTS connections (autocommit, READ COMMITTED, role mailmeta_milter)
# send the checks, one "SELECT mail.policy_check('...'::jsonb)" each, once
# against "SELECT bench_noop('...'::jsonb)" (a SECURITY DEFINER PL/pgSQL
# function returning the accept answer: statement, JSON input and call
# overhead only) and once against policy_check. Prints for each: checks/s
# (wall clock), backend CPU ms per check (user + system time of the client
# backends, from /proc/<pid>/stat), the time inside the function per check
# (pg_stat_user_functions; it includes waiting for counters other checks
# hold); then the ratio, how many counters each check added to, the
# counters at the end, and what one expire_rate_counters() costs when
# half of the per-value counters set up have expired. Not a test: nothing passes or
# fails on a number.
#
# Needs the libpq environment (PGHOST, PGPORT, PGUSER, ...) of a superuser
# connection to a server on this machine (it reads its backends' /proc);
# creates and drops its own database.
#
# usage: tests/bench/policy-check-bench.sh [CHECKS [CLIENTS]]
#        (BENCH_RULES, default 1000; BENCH_COUNTERS, default 100000;
#        MAILMETA_MIGRATIONS: another migrations directory)
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHECKS=${1:-20000}
CLIENTS=${2:-4}
RULES=${BENCH_RULES:-1000}
COUNTERS=${BENCH_COUNTERS:-100000}
DB="mailmeta_policy_bench_$$"

work=$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-policy-bench.XXXXXX")
cleanup() {
	dropdb --if-exists "$DB" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

createdb "$DB"
PGDATABASE=$DB sh "$SRC_DIR/sql/mailmeta-migrate.in" --dir "${MAILMETA_MIGRATIONS:-$SRC_DIR/sql/migrations}" >"$work/migrate.log" 2>&1 || {
	cat "$work/migrate.log" >&2
	exit 1
}
psql -XqAt -d "$DB" -c "ALTER DATABASE $DB SET track_functions = 'pl'" >/dev/null

echo "policy_check: $CHECKS checks, $CLIENTS concurrent connections, $RULES rules, $COUNTERS live counters, $(nproc) CPUs"

# ---------------------------------------------------------------- setup
psql -XqAt -v ON_ERROR_STOP=1 -d "$DB" -v rules="$RULES" -v counters="$COUNTERS" >/dev/null <<'EOF'
SELECT setseed(0.42);
SET ROLE mailmeta_admin;
SELECT mail.add_domain('bench.test');
RESET ROLE;
-- 1,000 users: inserted directly (the admin API would bcrypt each password).
INSERT INTO mail.users (domain_id, local_part, address, password_hash)
SELECT d.domain_id, 'user' || i, 'user' || i || '@bench.test', '{BLF-CRYPT}bench'
  FROM mail.domains d, generate_series(1, 1000) i;

SET ROLE mailmeta_admin;
-- Per-value rules (match NULL): every key, every metric.
SELECT mail.add_rate_limit(k, NULL, m, 1000000000, p::interval, 'tempfail')
  FROM (VALUES ('sasl_user', 'messages', '1 hour'), ('sasl_user', 'recipients', '1 hour'),
               ('sasl_user', 'bytes', '1 day'), ('sender', 'messages', '1 hour'),
               ('sender_domain', 'messages', '1 hour'), ('sender_domain', 'recipients', '1 day'),
               ('client_ip', 'messages', '1 hour'), ('client_ip', 'bytes', '1 hour'),
               ('client_net', 'messages', '10 minutes'), ('recipient_domain', 'messages', '1 hour'),
               ('recipient_domain', 'recipients', '1 hour'), ('recipient_domain', 'bytes', '1 day'))
       AS v (k, m, p);
-- Rules naming one value, up to :rules in all: users (one in five), other
-- senders, sender and recipient domains, client addresses and networks.
SELECT mail.add_rate_limit(k, v, m, 1000000000, '1 hour', 'reject')
  FROM (SELECT row_number() OVER () AS n, k, v, m FROM (
          SELECT 'sasl_user' AS k, 'user' || (i * 5) || '@bench.test' AS v, 'messages' AS m FROM generate_series(1, 200) i
          UNION ALL SELECT 'sender', 'someone' || i || '@elsewhere' || (i % 50) || '.example', 'messages' FROM generate_series(1, 200) i
          UNION ALL SELECT 'sender_domain', 'sender' || i || '.example', 'bytes' FROM generate_series(1, 150) i
          UNION ALL SELECT 'recipient_domain', 'rcpt' || i || '.example', 'recipients' FROM generate_series(1, 150) i
          UNION ALL SELECT 'client_ip', '10.' || (i / 250) || '.' || (i % 250) || '.7', 'messages' FROM generate_series(1, 150) i
          UNION ALL SELECT 'client_net', '172.16.' || i || '.0/24', 'messages' FROM generate_series(1, 88) i
          UNION ALL SELECT 'client_ip', '2001:db8:' || to_hex(i) || '::/48', 'bytes' FROM generate_series(1, 62) i
          UNION ALL SELECT 'sasl_user', 'user' || (i * 5) || '@bench.test', 'recipients' FROM generate_series(201, 1000) i
        ) x) y
 WHERE n <= :rules - 12;
RESET ROLE;

-- Live counters: one per named rule, the rest per-value counters of the
-- NULL-match rules for values outside the checked traffic.
INSERT INTO mail.rate_limit_counters (rule_id, value, window_start, expires_at, used)
SELECT r.rule_id, r.match, now(), now() + r.per, 1 FROM mail.rate_limits r WHERE r.match IS NOT NULL;
INSERT INTO mail.rate_limit_counters (rule_id, value, window_start, expires_at, used)
SELECT r.rule_id,
       CASE r.key WHEN 'client_ip' THEN '100.' || (i / 65536 % 256) || '.' || (i / 256 % 256) || '.' || (i % 256)
                  WHEN 'client_net' THEN '100.' || (i / 256 % 256) || '.' || (i % 256) || '.0/24'
                  WHEN 'sender_domain' THEN 'old' || i || '.example'
                  WHEN 'recipient_domain' THEN 'old' || i || '.example'
                  ELSE 'old' || i || '@old' || (i % 100) || '.example' END,
       now() - interval '1 minute', now() - interval '1 minute' + r.per, 1 + i % 50
  FROM mail.rate_limits r,
       generate_series(1, greatest(:counters - (SELECT count(*) FROM mail.rate_limit_counters), 0)
                          / (SELECT count(*) FROM mail.rate_limits WHERE match IS NULL)) i
 WHERE r.match IS NULL;
ANALYZE;

CREATE FUNCTION public.bench_noop(doc jsonb) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$ BEGIN RETURN '{"action": "accept"}'::jsonb; END $$;
GRANT EXECUTE ON FUNCTION public.bench_noop(jsonb) TO mailmeta_milter;
GRANT USAGE ON SCHEMA public TO mailmeta_milter;
EOF

# ---------------------------------------------------------------- documents
# generate FUNCTION: $work/<FUNCTION>-K.sql for K = 0 .. CLIENTS-1.
psql -XqAt -v ON_ERROR_STOP=1 -d "$DB" -v checks="$CHECKS" >"$work/docs.txt" <<'EOF'
SELECT setseed(0.17);
SELECT jsonb_build_object(
           'sasl_user', 'user' || u || '@bench.test',
           'sender', 'user' || u || '@bench.test',
           'client_ip', CASE WHEN i % 10 = 0 THEN '10.0.' || (i % 250) || '.7'
                             WHEN i % 10 = 1 THEN '172.16.' || (1 + i % 88) || '.' || (i % 200)
                             WHEN i % 10 = 2 THEN '2001:db8:' || to_hex(1 + i % 62) || ':1::' || to_hex(i % 999)
                             ELSE '198.51.' || (i % 100) || '.' || (i % 250) END,
           'recipients', (SELECT jsonb_agg(CASE WHEN random() < 0.2 THEN 'r' || k || '@rcpt' || (1 + floor(random() * 150)::int) || '.example'
                                                ELSE 'r' || k || '@dest' || (1 + floor(random() * 60)::int) || '.example' END)
                            FROM generate_series(1, 1 + (i % 5)) k),
           'size_bytes', 2000 + floor(random() * 58000)::int)::text
  FROM (SELECT i, 1 + floor(random() * 1000)::int AS u FROM generate_series(1, :checks) i) x;
EOF
generate() {
	local fn=$1 k
	for ((k = 0; k < CLIENTS; k++)); do
		{
			echo "SELECT 'cpu_start ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint"
			echo "     + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);"
			echo "SET ROLE mailmeta_milter;"
			awk -v k="$k" -v n="$CLIENTS" -v fn="$fn" -v q="'" \
				'$0 != "" && (m++ % n) == k { print "SELECT " fn "(" q $0 q "::jsonb);" }' "$work/docs.txt"
			echo "RESET ROLE;"
			echo "SELECT 'cpu_end ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint"
			echo "     + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);"
		} >"$work/$fn-$k.sql"
	done
}

# run LABEL FUNCTION: one result line; sets RESULT_CPS, RESULT_CPU.
run() {
	local label=$1 fn=$2 k start end pids=() ticks=0 failed=0 hz fn_ms name
	generate "$fn"
	name=${fn#*.}
	psql -XqAt -d "$DB" -c "SELECT pg_stat_reset(); CHECKPOINT" >/dev/null
	start=$(date +%s.%N)
	for ((k = 0; k < CLIENTS; k++)); do
		psql -XqAt -d "$DB" -f "$work/$fn-$k.sql" >"$work/out-$k" 2>"$work/err-$k" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || true; done
	end=$(date +%s.%N)
	hz=$(getconf CLK_TCK)
	for ((k = 0; k < CLIENTS; k++)); do
		ticks=$((ticks + $(awk '/^cpu_end/ { e = $2 } /^cpu_start/ { s = $2 } END { print e - s }' "$work/out-$k")))
		failed=$((failed + $(grep -c 'ERROR' "$work/err-$k" || true)))
	done
	sleep 0.6   # the statistics collector flushes at most every 500 ms
	fn_ms=$(psql -XAt -d "$DB" -c "SELECT coalesce(round((sum(total_time) / $CHECKS)::numeric, 3), 0)
	            FROM pg_stat_user_functions WHERE funcname = '$name'")
	read -r RESULT_CPS RESULT_WALL RESULT_CPU < <(awk -v s="$start" -v e="$end" -v n="$CHECKS" -v t="$ticks" -v hz="$hz" \
		'BEGIN { w = e - s; printf "%.0f %.3f %.3f\n", n / w, w * 1000 / n, t * 1000 / hz / n }')
	local accepted
	accepted=$(grep -c '"action": "accept"' "$work"/out-* | awk -F: '{ s += $2 } END { print s }')
	printf '%-13s %7s checks/s  wall %6s ms/check  backend CPU %6s ms/check  in function %6s ms/check  accepted %s  errors %s\n' \
		"$label" "$RESULT_CPS" "$RESULT_WALL" "$RESULT_CPU" "$fn_ms" "$accepted" "$failed"
	if [ "$failed" -gt 0 ]; then sed 's/^/    /' "$work"/err-* | sort | uniq -c | sort -rn | head -5; fi
}

run baseline public.bench_noop
base_cps=$RESULT_CPS base_cpu=$RESULT_CPU
run policy_check mail.policy_check
awk -v b="$base_cps" -v p="$RESULT_CPS" -v bc="$base_cpu" -v pc="$RESULT_CPU" 'BEGIN {
	printf "policy_check/baseline: throughput x%.2f, backend CPU per check x%.2f (+%.3f ms per check)\n",
		p / b, (bc > 0 ? pc / bc : 0), pc - bc }'
# Every counter a check adds to is one insert or update (statistics reset at the start of the run).
psql -XAt -d "$DB" -c "SELECT 'counters added to per check: ' || round((n_tup_ins + n_tup_upd)::numeric / $CHECKS, 1)
                              || ' (' || n_tup_ins || ' new); live counters now: '
                              || (SELECT count(*) FROM mail.rate_limit_counters)
                              || '; rules: ' || (SELECT count(*) FROM mail.rate_limits)
                         FROM pg_stat_user_tables WHERE relid = 'mail.rate_limit_counters'::regclass"
psql -XqAt -d "$DB" >/dev/null -c "UPDATE mail.rate_limit_counters SET expires_at = now() - interval '1 second'
                                    WHERE value LIKE 'old%' AND used % 2 = 0"
psql -XAt -d "$DB" -c '\timing on' -c 'SELECT mail.expire_rate_counters()' |
	awk '/^[0-9]+$/ { n = $1 } /^Time:/ { t = $2 } END { printf "expire_rate_counters: %s expired counters deleted in %s ms\n", n, t }'
