# bench-lib.sh - what the A/B benchmarks through the running stack share:
# the message they send, one timed smtp-source run, and statistics.
# Sourced; the caller has set SRC_DIR, STACK_DIR, CORPORA, DOMAIN,
# MESSAGES and SESSIONS and sourced the stack's env.

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


queue_empty() {
	[ -z "$(postqueue -c "$POSTFIX_CONFIG_DIR" -j 2>/dev/null | head -c 1)" ]
}


# Mail left in Postfix's queue by earlier work (deferred while a milter or
# the database was away) would count in a run's time: flush it first.
drain_queue() {
	local waited=0
	queue_empty && return 0
	postqueue -c "$POSTFIX_CONFIG_DIR" -f 2>/dev/null || true
	until queue_empty; do
		sleep 1
		waited=$((waited + 1))
		if [ "$waited" -ge 120 ]; then
			echo "Postfix's queue still holds mail after a flush and 120 s; a run would wait for it" >&2
			return 1
		fi
	done
}

# run RECIPIENTS: prints messages/s, counted until Postfix's queue is empty
# (every copy handed to Dovecot, which answers LMTP only after storing it).
run() {
	local rcpts=$1 start end
	drain_queue || return 1
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

# The running milter's configuration, changed for a run and put back.
MILTER_CONF=$STACK_DIR/etc/mailmeta/mailmeta-milter.conf
MILTER_PIDFILE=$STACK_DIR/run/milter/mailmeta-milter.pid

save_milter_config() { cp -p "$MILTER_CONF" "$MILTER_CONF.orig"; }

restore_milter_config() {
	[ -f "$MILTER_CONF.orig" ] || return 0
	cat "$MILTER_CONF.orig" > "$MILTER_CONF" && rm -f "$MILTER_CONF.orig"
	kill -HUP "$(cat "$MILTER_PIDFILE")"
}

# milter_config yes|no: the saved configuration with [policy] enabled or
# not and the virus and spam engines off (an empty clamd socket and spamd
# address), and the milter reloaded.
milter_config() {
	awk -v v="$1" '
		/^\[/ { in_policy = ($0 == "[policy]") }
		in_policy && /^enabled *=/ { next }
		/^(socket|address) *= *(unix|inet):/ && engine { print $1 " ="; next }
		/^\[/ { engine = ($0 == "[clamd]" || $0 == "[spamd]") }
		{ print }
		$0 == "[policy]" { print "enabled = " v }' "$MILTER_CONF.orig" > "$MILTER_CONF.new"
	cat "$MILTER_CONF.new" > "$MILTER_CONF" && rm -f "$MILTER_CONF.new"
	kill -HUP "$(cat "$MILTER_PIDFILE")"
	sleep 2
}

# The mailbox mirror's syncer pauses while a milter bench runs, and
# catches up afterwards: it would otherwise build a metadata record for
# every message the baseline delivers (they carry no X-Mailmeta-ID) but
# not for the milter's, and so charge its work to the baseline only.
pause_mirror() {
	MIRROR_PIDS=$(pgrep -f -- 'doveadm.* mailmeta watch' || true)
	[ -z "$MIRROR_PIDS" ] || kill -STOP $MIRROR_PIDS
}

resume_mirror() {
	[ -z "${MIRROR_PIDS:-}" ] || kill -CONT $MIRROR_PIDS 2>/dev/null || true
}

# A reference milter (null-milter.c) that does the protocol work
# mailmeta-milter asks of Postfix and nothing else, built and started on
# 127.0.0.1:$NULL_MILTER_PORT as nobody.  Postfix without milters against
# Postfix with it is what any milter costs on this machine.
NULL_MILTER_PORT=${NULL_MILTER_PORT:-10799}
NULL_MILTER="inet:127.0.0.1:$NULL_MILTER_PORT"

start_null_milter() {
	local bin=$STACK_DIR/bench/null-milter
	mkdir -p "$STACK_DIR/bench"
	cc -std=c11 -O2 -Wall -Wextra -D_DEFAULT_SOURCE -o "$bin" \
		"$SRC_DIR/tests/bench/null-milter.c" -lmilter -lpthread || return 1
	setpriv --reuid=nobody --regid=nogroup --clear-groups \
		"$bin" "inet:$NULL_MILTER_PORT@127.0.0.1" &
	NULL_MILTER_PID=$!
	sleep 0.5
	kill -0 "$NULL_MILTER_PID" 2>/dev/null
}

stop_null_milter() {
	[ -z "${NULL_MILTER_PID:-}" ] || kill "$NULL_MILTER_PID" 2>/dev/null || true
}
