#!/bin/bash
# rate-limit-race.sh — mail.policy_check under concurrency: several clients
# (as several mailmeta-milter processes, or several Postfix nodes, sharing
# one database) check messages at the same moment.
#
#   A. one budget of M messages, N clients sending M * 3 messages of one
#      user between them: exactly M are accepted, the rest refused, and the
#      counter says M;
#   B. messages that each need several counters (a budget per recipient
#      domain, recipients in random order, plus rules that never bind), while
#      another session expires counters and an administrator changes a
#      rule's interval: no deadlock or other error, no counter over its
#      budget, and every counter equals exactly what the accepted messages
#      counted (the refused ones consumed nothing).
#
# Each check is one autocommit statement that also stores the answer
# (INSERT ... SELECT mail.policy_check(...)), so the answers and the
# counters can be compared afterwards.
#
# Needs the libpq environment (PGHOST, PGPORT, PGUSER, ...) of a superuser
# connection; creates and drops its own scratch database. Output is TAP:
#   prove tests/sql/rate-limit-race.sh
# MAILMETA_MIGRATE may name the installed runner, MAILMETA_MIGRATIONS the
# migrations directory (default: the source tree's). RACE_CLIENTS (8) and
# RACE_BUDGET (300) size the run.

set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
migrations=${MAILMETA_MIGRATIONS:-$top/sql/migrations}
runner=${MAILMETA_MIGRATE:-$top/sql/mailmeta-migrate.in}
clients=${RACE_CLIENTS:-8}
budget=${RACE_BUDGET:-300}

work=$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-rate-race.XXXXXX")
db="mailmeta_rate_race_$$"
n=0
failed=0

cleanup() {
    dropdb --if-exists "$db" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

ok() {  # ok CONDITION-STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}

q() {  # q SQL: one value from the scratch database
    psql -X -At -v ON_ERROR_STOP=1 -d "$db" -c "$1"
}

# Runs the client scripts $work/client-*.sql (plus $work/side-*.sql, if
# any) at the same moment: they wait on an advisory lock this function
# holds, then race. Stderr of each goes to $work/*.err.
race() {
    rm -f "$work"/*.err
    psql -X -q -d "$db" -c 'SELECT pg_advisory_lock(7235)' -c 'SELECT pg_sleep(1.5)' >/dev/null 2>&1 &
    local holder=$! pids=() f
    sleep 0.5
    for f in "$work"/client-*.sql "$work"/side-*.sql; do
        [ -e "$f" ] || continue
        psql -X -q -v ON_ERROR_STOP=0 -d "$db" -f "$f" >/dev/null 2>"${f%.sql}.err" &
        pids+=($!)
    done
    wait "$holder"
    for f in "${pids[@]}"; do wait "$f"; done
}

# The first lines of every client script: wait for the start, act as the milter.
prologue() {
    echo "SELECT pg_advisory_lock_shared(7235); SELECT pg_advisory_unlock_shared(7235);"
    echo "SET ROLE mailmeta_milter;"
}

echo "1..12"
psql -X -At -d postgres -c 'SELECT 1' >/dev/null 2>&1 ||
    { echo "Bail out! cannot connect to PostgreSQL (set PGHOST, PGPORT, PGUSER)"; exit 1; }

dropdb --if-exists "$db" >/dev/null 2>&1
createdb "$db" && PGDATABASE=$db sh "$runner" --dir "$migrations" >"$work/migrate.log" 2>&1
ok $? "a scratch database is migrated"
psql -X -q -v ON_ERROR_STOP=1 -d "$db" >"$work/setup.log" 2>&1 <<'SQL'
SET ROLE mailmeta_admin;
SELECT mail.add_domain('example.test');
SELECT mail.add_user('user' || i || '@example.test', 'pw') FROM generate_series(1, 8) i;
RESET ROLE;
CREATE TABLE public.results (client int, i int, doc jsonb, answer jsonb);
GRANT INSERT ON public.results TO mailmeta_milter;
SQL
ok $? "users and a results table are set up"

# ------------------------------------------------------------ A: one budget
rule_a=$(q "SET ROLE mailmeta_admin; SELECT mail.add_rate_limit('sasl_user', NULL, 'messages', $budget, '1 hour', 'tempfail')" | tail -1)
per_client=$(( (budget * 3 + clients - 1) / clients ))
for ((c = 1; c <= clients; c++)); do
    {
        prologue
        for ((i = 1; i <= per_client; i++)); do
            d="{\"sasl_user\": \"User1@example.test\", \"sender\": \"user1@example.test\", \"client_ip\": \"192.0.2.$c\", \"recipients\": [\"r$i@outside.example\"], \"size_bytes\": 1000}"
            echo "INSERT INTO public.results SELECT $c, $i, d, mail.policy_check(d) FROM (SELECT '$d'::jsonb AS d) x;"
        done
    } >"$work/client-$c.sql"
done
race
! grep -q . "$work"/client-*.err
ok $? "A: $clients clients, $((per_client * clients)) checks against one budget of $budget: no errors"
[ $? -eq 0 ] || head -5 "$work"/client-*.err | sed 's/^/# /'
accepted=$(q "SELECT count(*) FROM results WHERE answer->>'action' = 'accept'")
[ "$accepted" -eq "$budget" ]
ok $? "A: exactly $budget accepted (got $accepted)"
refused=$(q "SELECT count(*) FROM results WHERE answer->>'action' = 'tempfail' AND answer->>'status' = '4.7.1'
                AND answer->>'rule' LIKE 'rate_limit $rule_a (sasl_user user1@example.test: %'")
[ "$refused" -eq $((per_client * clients - budget)) ]
ok $? "A: every other check refused with 451 4.7.1 naming the rule ($refused)"
used=$(q "SELECT used FROM mail.rate_limit_counters WHERE rule_id = $rule_a")
[ "$used" = "$budget" ]
ok $? "A: the counter says $budget (got $used)"
[ "$(q "SELECT count(DISTINCT client) FROM results WHERE answer->>'action' = 'accept'")" -gt 1 ]
ok $? "A: accepted messages came from more than one client (the clients did race)"

# ------------------------------------------------------------ B: many counters, side traffic
rm -f "$work"/client-*.sql
q "TRUNCATE results; SET ROLE mailmeta_admin; SELECT mail.remove_rate_limit($rule_a)" >/dev/null
rule_b=$(q "SET ROLE mailmeta_admin; SELECT mail.add_rate_limit('recipient_domain', NULL, 'recipients', $((budget / 3)), '1 hour', 'tempfail')" | tail -1)
rule_c=$(q "SET ROLE mailmeta_admin; SELECT mail.add_rate_limit('sender_domain', 'example.test', 'messages', 1000000, '1 hour', 'reject')" | tail -1)
rule_d=$(q "SET ROLE mailmeta_admin; SELECT mail.add_rate_limit('client_net', NULL, 'bytes', 1000000000, '1 hour', 'hold')" | tail -1)
rule_e=$(q "SET ROLE mailmeta_admin; SELECT mail.add_rate_limit('sasl_user', NULL, 'recipients', 1000000, '1 hour', 'tempfail')" | tail -1)
for ((c = 1; c <= clients; c++)); do
    {
        prologue
        psql -X -At -d "$db" -v c="$c" -v k="$per_client" <<'SQL'
SELECT setseed(:c / 100.0);
SELECT format('INSERT INTO public.results SELECT %s, %s, d, mail.policy_check(d) FROM (SELECT %L::jsonb AS d) x;', :c, i,
              jsonb_build_object('sasl_user', 'user' || (1 + (i % 8)) || '@example.test',
                                 'sender', 'user' || (1 + (i % 8)) || '@example.test',
                                 'client_ip', '198.51.' || (i % 3) || '.' || :c,
                                 'recipients', (SELECT jsonb_agg('r' || i || '.' || k || '@d' || (1 + floor(random() * 5)::int) || '.example'
                                                                 ORDER BY random())
                                                  FROM generate_series(1, 1 + floor(random() * 4)::int) k),
                                 'size_bytes', 500 + i))
  FROM generate_series(1, :k) i;
SQL
    } >"$work/client-$c.sql"
done
{
    echo "SELECT pg_advisory_lock_shared(7235); SELECT pg_advisory_unlock_shared(7235);"
    for ((i = 1; i <= 100; i++)); do
        echo "SELECT mail.expire_rate_counters();"
        echo "SELECT pg_sleep(0.01);"
    done
} >"$work/side-expire.sql"
{
    echo "SELECT pg_advisory_lock_shared(7235); SELECT pg_advisory_unlock_shared(7235);"
    echo "SET ROLE mailmeta_admin;"
    for ((i = 1; i <= 50; i++)); do
        echo "SELECT mail.change_rate_limit($rule_b, per => '2 hours'); SELECT mail.change_rate_limit($rule_b, per => '1 hour');"
        echo "SELECT pg_sleep(0.02);"
    done
} >"$work/side-admin.sql"
race
! grep -q . "$work"/client-*.err "$work"/side-*.err
ok $? "B: $clients clients checking messages of 1-4 recipients over 5 domains, with expiry and rule changes alongside: no deadlock, no error"
[ $? -eq 0 ] || head -5 "$work"/*.err | sed 's/^/# /'
# What the accepted messages count, per (rule, value); compared with the counters.
cat >"$work/expected.sql" <<SQL
CREATE TEMP VIEW expected AS
WITH acc AS (SELECT doc FROM results WHERE answer->>'action' = 'accept'),
rc AS (
    SELECT doc, lower(split_part(r, '@', 2)) AS d, count(*) AS n
      FROM acc, jsonb_array_elements_text(doc->'recipients') r GROUP BY 1, 2)
SELECT $rule_b::bigint AS rule_id, d AS value, sum(n)::bigint AS used FROM rc GROUP BY d
UNION ALL
SELECT $rule_c, 'example.test', count(*) FROM acc
UNION ALL
SELECT $rule_d, network(set_masklen((doc->>'client_ip')::inet, 24))::text, sum((doc->>'size_bytes')::bigint)
  FROM acc GROUP BY 2
UNION ALL
SELECT $rule_e, doc->>'sasl_user', sum(jsonb_array_length(doc->'recipients')) FROM acc GROUP BY 2;
SQL
psql -X -q -d "$db" -f "$work/expected.sql" >/dev/null 2>&1
over=$(q "SELECT count(*) FROM mail.rate_limit_counters c JOIN mail.rate_limits r USING (rule_id) WHERE c.used > r.max")
[ "$over" -eq 0 ]
ok $? "B: no counter is over its budget"
diff=$(psql -X -At -d "$db" -f "$work/expected.sql" -c "
    SELECT count(*) FROM (
        (SELECT rule_id, value::text, used FROM expected EXCEPT ALL
         SELECT rule_id, value::text, used FROM mail.rate_limit_counters)
        UNION ALL
        (SELECT rule_id, value::text, used FROM mail.rate_limit_counters EXCEPT ALL
         SELECT rule_id, value::text, used FROM expected)) x" 2>&1 | tail -1)
[ "$diff" = 0 ]
ok $? "B: every counter equals what the accepted messages counted; refused ones consumed nothing ($diff differences)"
full=$(q "SELECT count(*) FROM mail.rate_limit_counters WHERE rule_id = $rule_b AND used > $((budget / 3)) - 4")
acc=$(q "SELECT count(*) FROM results WHERE answer->>'action' = 'accept'")
ref=$(q "SELECT count(*) FROM results WHERE answer->>'action' = 'tempfail'")
[ "$full" -eq 5 ] && [ "$acc" -gt 0 ] && [ "$ref" -gt 0 ]
ok $? "B: every domain's budget was (nearly) used up; $acc accepted, $ref refused"
[ "$(q "SELECT count(*) FROM results WHERE answer->>'action' NOT IN ('accept', 'tempfail')")" -eq 0 ]
ok $? "B: only the binding rule refused"

exit $((failed > 0))
