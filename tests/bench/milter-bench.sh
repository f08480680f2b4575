#!/usr/bin/env bash
# milter-bench.sh - A/B throughput of the real delivery path with and
# without mailmeta-milter, in one run on the running stack.
#
# Postfix's smtp-source drives the stack's MX port (SMTP -> Postfix ->
# LMTP -> Dovecot Maildir) with a realistic message from the corpora, first
# with smtpd_milters empty (baseline), then with the milter recording
# metadata, for 1 and for 5 recipients per message.  A run counts from the
# first connection until every copy is in a Maildir.  Prints messages/s of
# each, their ratio, and the milter's own per-stage delays (p50/p99) from
# its log.  Not a test: nothing here passes or fails on a number.
#
# Baseline and milter runs alternate ROUNDS times (noise on a shared
# machine is large) and the means are reported; the bench mailboxes are
# emptied before every run so that all runs see the same state.
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

pick_message() {
	# A multipart message from a real mail client, 4-20 KB: text, HTML and
	# an attachment, as most mail is.
	local path
	if [ -f "$CORPORA/INDEX.tsv" ]; then
		path=$(awk -F'\t' '$4 == "mua-sample" && $5 >= 4000 && $5 <= 20000 &&
			$7 ~ /attach/ { print $1; exit }' "$CORPORA/INDEX.tsv")
		if [ -n "$path" ]; then
			echo "$CORPORA/$path"
			return
		fi
	fi
	local file=$STACK_DIR/bench-generated.eml
	{
		printf 'From: Bench <bench@outside.example>\nSubject: benchmark\n'
		printf 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n'
		printf -- '--b\nContent-Type: text/plain\n\n'
		for _ in $(seq 1 40); do echo "The quick brown fox jumps over the lazy dog."; done
		printf -- '--b\nContent-Type: application/octet-stream\n'
		printf 'Content-Disposition: attachment; filename="data.bin"\nContent-Transfer-Encoding: base64\n\n'
		head -c 6000 /dev/urandom | base64
		printf -- '--b--\n'
	} > "$file"
	echo "$file"
}

setup_users() {
	psql -XqAt -v ON_ERROR_STOP=0 >/dev/null 2>&1 <<-EOF || true
	SELECT mail.add_domain('$DOMAIN');
	SELECT mail.add_user('bench@$DOMAIN', 'bench-password');
	SELECT mail.add_user(n || 'bench@$DOMAIN', 'bench-password') FROM generate_series(1, 5) n;
	EOF
}

queue_empty() {
	[ -z "$(postqueue -c "$POSTFIX_CONFIG_DIR" -j 2>/dev/null | head -c 1)" ]
}

set_milter() {
	local value=$1
	postconf -c "$POSTFIX_CONFIG_DIR" -e "smtpd_milters = $value" "non_smtpd_milters = $value"
	postfix -c "$POSTFIX_CONFIG_DIR" reload 2>/dev/null
	sleep 2
}

# run RECIPIENTS: prints messages/s, counted until Postfix's queue is empty
# (every copy handed to Dovecot, which answers LMTP only after storing it).
run() {
	local rcpts=$1 start end
	rm -rf "${STACK_DIR:?}/mail/$DOMAIN"
	start=$(date +%s.%N)
	smtp-source -s "$SESSIONS" -m "$MESSAGES" -r "$rcpts" -f bench@outside.example \
		-t "bench@$DOMAIN" -F "$MESSAGE" "127.0.0.1:$SMTP_PORT"
	until queue_empty; do
		sleep 0.1
		if [ "$(echo "$(date +%s.%N) - $start > 600" | bc)" = 1 ]; then
			echo "timeout waiting for delivery" >&2
			return 1
		fi
	done
	end=$(date +%s.%N)
	echo "scale=1; $MESSAGES / ($end - $start)" | bc
}

mean() { awk '{ s += $1 } END { printf "%.1f\n", s / NR }'; }

percentiles() {	# stdin: numbers; prints "p50 p99"
	sort -n | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "- -"; exit }
		i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
		i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
		printf "%s %s\n", v[i50], v[i99] }'
}

# smtp-source sends the same file every time: without its Message-ID the
# messages are unrelated, as real traffic is, instead of 2000 copies of one
# message that all join (and serialise on) a single thread.
without_message_id() {
	local out=$STACK_DIR/bench-message.eml
	awk 'BEGIN { inhdr = 1 }
	     inhdr && /^[\r]*$/ { inhdr = 0 }
	     inhdr && tolower($0) ~ /^message-id:/ { skip = 1; next }
	     inhdr && skip && /^[ \t]/ { next }
	     { skip = 0; print }' "$1" > "$out"
	echo "$out"
}

command -v bc >/dev/null || { echo "bench needs bc (apt-get install bc)" >&2; exit 1; }
MESSAGE=$(without_message_id "$(pick_message)")
MILTERS=$(postconf -c "$POSTFIX_CONFIG_DIR" -h smtpd_milters)
[ -n "$MILTERS" ] || { echo "the stack's Postfix has no milter configured" >&2; exit 1; }
trap 'set_milter "$MILTERS"' EXIT
setup_users
echo "message: $(pick_message | sed "s|^$CORPORA/||") without Message-ID ($(wc -c < "$MESSAGE") bytes), $MESSAGES messages, $SESSIONS sessions"

for rcpts in 1 5; do
	bases=() withs=() delays=
	for _ in $(seq 1 "$ROUNDS"); do
		set_milter ""
		bases+=("$(run "$rcpts")")
		set_milter "$MILTERS"
		log_start=$(wc -l < "$STACK_DIR/log/milter.log")
		withs+=("$(run "$rcpts")")
		delays+=$(tail -n +"$((log_start + 1))" "$STACK_DIR/log/milter.log" |
			sed -n 's/.*delays=\([0-9.]*\)\/\([0-9.]*\) ms.*/\1 \2/p')$'\n'
	done
	base=$(printf '%s\n' "${bases[@]}" | mean)
	with=$(printf '%s\n' "${withs[@]}" | mean)
	read -r doc50 doc99 <<<"$(grep . <<<"$delays" | cut -d' ' -f1 | percentiles)"
	read -r st50 st99 <<<"$(grep . <<<"$delays" | cut -d' ' -f2 | percentiles)"
	printf '%d recipient(s): baseline %s msg/s (%s), with milter %s msg/s (%s), ratio %s\n' \
		"$rcpts" "$base" "${bases[*]}" "$with" "${withs[*]}" \
		"$(echo "scale=3; $with / $base" | bc)"
	printf '  milter delays (ms): document p50 %s p99 %s; store p50 %s p99 %s\n' \
		"$doc50" "$doc99" "$st50" "$st99"
done
