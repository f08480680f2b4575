#!/usr/bin/env bash
# milter-bench.sh - A/B throughput of the real delivery path with and
# without mailmeta-milter, in one run on the running stack.
#
# Postfix's smtp-source drives the stack's MX port (SMTP -> Postfix ->
# LMTP -> Dovecot Maildir) with a realistic message from the corpora, for
# 1 and for 5 recipients per message, in three arms:
#   baseline  smtpd_milters empty;
#   null      a reference milter that does the protocol work mailmeta asks
#             of Postfix (every step, headers and body, one added header)
#             and nothing else (null-milter.c): what any milter costs here;
#   mailmeta  the milter recording metadata (policy and engines off: see
#             policy-bench.sh).
# A run counts from the first connection until every copy is in a Maildir.
# Prints messages/s of each, the ratios mailmeta/baseline (the issue's
# figure), null/baseline and mailmeta/null (what mailmeta's own work
# costs), and the milter's per-stage delays (p50/p99) from its log.  Not a
# test: nothing here passes or fails on a number.
#
# The arms alternate ROUNDS times (noise on a shared machine is large) and
# the means are reported; the bench mailboxes are emptied before every run
# so that all runs see the same state.  The mailbox mirror's syncer is
# paused meanwhile (bench-lib.sh: pause_mirror).
#
# usage: tests/bench/milter-bench.sh [MESSAGES [SESSIONS [ROUNDS]]]
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR=${MAILMETA_STACK_DIR:-$SRC_DIR/.stack}
MESSAGES=${1:-2000}
SESSIONS=${2:-20}
ROUNDS=${3:-2}
CORPORA=${MAILMETA_CORPORA:-$SRC_DIR/../shared/corpora}
DOMAIN=bench.test
# shellcheck disable=SC1091
. "$STACK_DIR/env"

setup_users() {
	psql -XqAt -v ON_ERROR_STOP=0 >/dev/null 2>&1 <<-EOF || true
	SELECT mail.add_domain('$DOMAIN');
	SELECT mail.add_user('bench@$DOMAIN', 'bench-password');
	SELECT mail.add_user(n || 'bench@$DOMAIN', 'bench-password') FROM generate_series(1, 5) n;
	EOF
}

set_milter() {
	local value=$1
	postconf -c "$POSTFIX_CONFIG_DIR" -e "smtpd_milters = $value" "non_smtpd_milters = $value"
	postfix -c "$POSTFIX_CONFIG_DIR" reload 2>/dev/null
	sleep 2
}

# shellcheck source=tests/bench/bench-lib.sh
. "$SRC_DIR/tests/bench/bench-lib.sh"

command -v bc >/dev/null || { echo "bench needs bc (apt-get install bc)" >&2; exit 1; }
MESSAGE=$(without_message_id "$(pick_message)")
MILTERS=$(postconf -c "$POSTFIX_CONFIG_DIR" -h smtpd_milters)
[ -n "$MILTERS" ] || { echo "the stack's Postfix has no milter configured" >&2; exit 1; }
# metadata only: the milter's policy and engines are measured by policy-bench.sh
save_milter_config
trap 'set_milter "$MILTERS"; restore_milter_config; stop_null_milter; resume_mirror' EXIT
milter_config no
start_null_milter || { echo "cannot start the reference milter" >&2; exit 1; }
pause_mirror
setup_users
echo "message: $(pick_message | sed "s|^$CORPORA/||") without Message-ID ($(wc -c < "$MESSAGE") bytes), $MESSAGES messages, $SESSIONS sessions"

ratio() { echo "scale=3; $1 / $2" | bc; }

for rcpts in 1 5; do
	bases=() nulls=() withs=() delays=
	for _ in $(seq 1 "$ROUNDS"); do
		set_milter ""
		bases+=("$(run "$rcpts")")
		set_milter "$NULL_MILTER"
		nulls+=("$(run "$rcpts")")
		set_milter "$MILTERS"
		log_start=$(wc -l < "$STACK_DIR/log/milter.log")
		withs+=("$(run "$rcpts")")
		delays+=$(tail -n +"$((log_start + 1))" "$STACK_DIR/log/milter.log" |
			sed -n 's/.*delays=\([0-9.]*\)\/\([0-9.]*\)\/\([0-9.]*\) ms.*/\1 \2 \3/p')$'\n'
	done
	base=$(printf '%s\n' "${bases[@]}" | mean)
	null=$(printf '%s\n' "${nulls[@]}" | mean)
	with=$(printf '%s\n' "${withs[@]}" | mean)
	read -r ck50 ck99 <<<"$(grep . <<<"$delays" | cut -d' ' -f1 | percentiles)"
	read -r doc50 doc99 <<<"$(grep . <<<"$delays" | cut -d' ' -f2 | percentiles)"
	read -r st50 st99 <<<"$(grep . <<<"$delays" | cut -d' ' -f3 | percentiles)"
	printf '%d recipient(s): baseline %s msg/s (%s), null milter %s msg/s (%s), mailmeta %s msg/s (%s)\n' \
		"$rcpts" "$base" "${bases[*]}" "$null" "${nulls[*]}" "$with" "${withs[*]}"
	printf '  ratio mailmeta/baseline %s; null/baseline %s; mailmeta/null %s\n' \
		"$(ratio "$with" "$base")" "$(ratio "$null" "$base")" "$(ratio "$with" "$null")"
	printf '  milter delays (ms): checks p50 %s p99 %s; document p50 %s p99 %s; store p50 %s p99 %s\n' \
		"$ck50" "$ck99" "$doc50" "$doc99" "$st50" "$st99"
done
