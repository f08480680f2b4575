#!/usr/bin/env bash
# policy-bench.sh - A/B cost of mailmeta-milter's policy checks on the real
# delivery path, in one run on the running stack.
#
# A: the milter records metadata, its policy disabled ([policy] enabled =
# no).  B: the same plus size limits and 1,000 rate-limit rules with
# 100,000 live counters (virus and spam engines off in both).  The rules
# are a mix of every key; the three without a match (sender, client_ip,
# recipient_domain, each with a budget far above the benchmark's traffic)
# apply to every message, so each check updates three counters, and the
# 100,000 counters belong to rules of the same keys.  Postfix's smtp-source
# drives the MX port with a realistic corpus message, A and B alternating
# ROUNDS times.  Prints messages/s of each, their ratio, and the milter's
# checks stage (p50/p99) in B.  Not a test: nothing passes or fails on a
# number.  The rules and counters are removed at the end.
#
# usage: tests/bench/policy-bench.sh [MESSAGES [SESSIONS [ROUNDS]]]
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR=${MAILMETA_STACK_DIR:-$SRC_DIR/.stack}
MESSAGES=${1:-1000}
SESSIONS=${2:-20}
ROUNDS=${3:-2}
CORPORA=${MAILMETA_CORPORA:-$SRC_DIR/../shared/corpora}
DOMAIN=bench.test
# shellcheck disable=SC1091
. "$STACK_DIR/env"
# shellcheck source=tests/bench/bench-lib.sh
. "$SRC_DIR/tests/bench/bench-lib.sh"

TAG=policy-bench

add_rules() {
	psql -XqAt -v ON_ERROR_STOP=1 >/dev/null <<-EOF
	SELECT mail.add_domain('$DOMAIN') WHERE NOT EXISTS
	    (SELECT FROM mail.domains WHERE domain = '$DOMAIN');
	SELECT mail.add_user('bench@$DOMAIN', 'bench-password') WHERE NOT EXISTS
	    (SELECT FROM mail.users WHERE address = 'bench@$DOMAIN');
	SELECT mail.set_limits('$DOMAIN', 64 * 1024 * 1024, 100);
	-- 997 rules that match other traffic ...
	SELECT mail.add_rate_limit(k, m, 'messages', 1000, interval '1 hour', 'tempfail')
	  FROM (SELECT 'sender' AS k, 'user' || n || '@$TAG.example' AS m FROM generate_series(1, 400) n
	        UNION ALL
	        SELECT 'sender_domain', 'd' || n || '.$TAG.example' FROM generate_series(1, 250) n
	        UNION ALL
	        SELECT 'client_net', '10.' || (n / 256) || '.' || (n % 256) || '.0/24' FROM generate_series(1, 150) n
	        UNION ALL
	        SELECT 'sasl_user', 'u' || n || '@$TAG.example' FROM generate_series(1, 100) n
	        UNION ALL
	        SELECT 'recipient_domain', 'r' || n || '.$TAG.example' FROM generate_series(1, 97) n) r (k, m);
	-- ... and three that every benchmark message spends (far from their budget)
	SELECT mail.add_rate_limit('sender', NULL, 'messages', 100000000, interval '1 hour', 'tempfail');
	SELECT mail.add_rate_limit('client_ip', NULL, 'messages', 100000000, interval '1 hour', 'tempfail');
	SELECT mail.add_rate_limit('recipient_domain', NULL, 'recipients', 100000000, interval '1 hour', 'tempfail');
	EOF
	# 100,000 live counters of those three rules, as other senders, clients
	# and domains would leave them.
	PGUSER=postgres psql -XqAt -v ON_ERROR_STOP=1 >/dev/null <<-EOF
	INSERT INTO mail.rate_limit_counters (rule_id, value, window_start, expires_at, used)
	SELECT r.rule_id, v.value, now(), now() + interval '1 hour', 1
	  FROM mail.rate_limits r,
	       LATERAL (SELECT CASE r.key
	                    WHEN 'sender' THEN 'someone' || n || '@elsewhere-' || (n % 977) || '.example'
	                    WHEN 'client_ip' THEN '198.18.' || (n / 256 % 256) || '.' || (n % 256)
	                    ELSE 'other-' || n || '.example' END AS value
	                  FROM generate_series(1, 33334) n) v
	 WHERE r.match IS NULL AND r.max = 100000000
	ON CONFLICT DO NOTHING;
	ANALYZE mail.rate_limit_counters;
	EOF
}

remove_rules() {
	psql -XqAt >/dev/null 2>&1 <<-EOF || true
	SELECT mail.remove_rate_limit(rule_id) FROM mail.list_rate_limits()
	 WHERE match LIKE '%$TAG%' OR max = 100000000;
	SELECT mail.clear_limits('$DOMAIN');
	EOF
}

command -v bc >/dev/null || { echo "bench needs bc (apt-get install bc)" >&2; exit 1; }
MESSAGE=$(without_message_id "$(pick_message)")
save_milter_config
trap 'remove_rules; restore_milter_config' EXIT
remove_rules
add_rules
echo "message: $(pick_message | sed "s|^$CORPORA/||") without Message-ID ($(wc -c < "$MESSAGE") bytes), $MESSAGES messages, $SESSIONS sessions"
echo "rules: $(psql -XqAt -c 'SELECT count(*) FROM mail.list_rate_limits()'), live counters: $(PGUSER=postgres psql -XqAt -c 'SELECT count(*) FROM mail.rate_limit_counters')"

offs=() ons=() checks=
for _ in $(seq 1 "$ROUNDS"); do
	milter_config no
	offs+=("$(run 1)")
	milter_config yes
	log_start=$(wc -l < "$STACK_DIR/log/milter.log")
	ons+=("$(run 1)")
	checks+=$(tail -n +"$((log_start + 1))" "$STACK_DIR/log/milter.log" |
		sed -n 's/.*delays=\([0-9.]*\)\/[0-9.]*\/[0-9.]* ms.*/\1/p')$'\n'
done
off=$(printf '%s\n' "${offs[@]}" | mean)
on=$(printf '%s\n' "${ons[@]}" | mean)
read -r ck50 ck99 <<<"$(grep . <<<"$checks" | percentiles)"
printf 'metadata only %s msg/s (%s), metadata + limits + rate limits %s msg/s (%s), ratio %s\n' \
	"$off" "${offs[*]}" "$on" "${ons[*]}" "$(echo "scale=3; $on / $off" | bc)"
printf '  checks stage (ms): p50 %s p99 %s\n' "$ck50" "$ck99"
echo "  rejected or deferred during the runs: $(grep -c 'tempfail\|reject' <<<"$(tail -n 4000 "$STACK_DIR/log/milter.log")" || true)"
