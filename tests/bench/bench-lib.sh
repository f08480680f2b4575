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
