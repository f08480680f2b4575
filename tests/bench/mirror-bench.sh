#!/usr/bin/env bash
# mirror-bench.sh - A/B cost of the mailbox mirror (doc/mailbox-mirror.md)
# in one run on the running stack: Dovecot without the mail plugin
# `mailmeta` (and `notify`) against Dovecot as the stack has it, with
# `doveadm mailmeta watch` syncing into PostgreSQL — the sync is part of
# the measured work: a "with" run stops its clock only when the watcher has
# drained the user's marks and the mirror holds what the mailboxes hold.
#
#  (a) LMTP delivery: MESSAGES copies of a realistic message (the corpus
#      message bench-lib.sh picks, without its Message-ID) delivered by
#      smtp-source -L straight into Dovecot's LMTP socket, LMTP_SESSIONS
#      sessions, to a fresh user per run: messages/s, twice —
#      "stamped": the message carries the X-Mailmeta-ID of a recorded
#      message, as all mail that came through Postfix and the milter does,
#      so the watcher only mirrors it;
#      "unstamped": mail that never passed the milter (imports, LMTP from
#      elsewhere), for which the watcher also builds a metadata record
#      (record_mailbox_messages): the dearest case for the mirror.
#  (b) IMAP: IMAP_SESSIONS clients in parallel (processes, one fresh user
#      each), IMAP_OPS operations each, a mix of APPEND (35 %, new messages
#      of 2-6 KB), FETCH (30 %, BODY.PEEK[] and FLAGS), STORE (25 %) and
#      EXPUNGE (10 %, STORE \Deleted + UID EXPUNGE): operations/s.
#      IMAP_MIX=A:F:S:E sets other percentages (summing to 100), e.g.
#      5:70:20:5 for a reading client's day; the default is the mix
#      the goal is stated for.
#
# "Without" renders the stack's dovecot.conf with mail_plugins lacking
# notify and mailmeta (one line after the !include of mailmeta-mirror.conf)
# and `doveadm reload`s; the watcher is paused (SIGSTOP) during its runs,
# so that its periodic drift check does not sync the baseline's users.
# "With" is the stack's dovecot.conf as it is.  Both
# add an LMTP listener of their own (see below).  Every switch is verified
# on the LMTP process that takes a probe delivery (the plugin mapped or
# not).  The stack's configuration is restored at exit.  A reload ends
# some IMAP/POP3 sessions of other clients of the stack ("Server shutting
# down"), and `scripts/stack up` (or scripts/test) re-rendering Dovecot's
# configuration meanwhile spoils a run (the bench then stops): do not run
# it beside the integration tests.
#
# The mirror lags the mailboxes by the sync delay plus one sync after the
# last change (0.2-0.6 s here; the last sync covers up to
# mailmeta_sync_max_delay of changes, so up to 1.5 s for IMAP), which a
# "with" run's clock includes: the defaults make runs of several seconds,
# so that this latency does not pass for throughput.
#
# Without and with alternate ROUNDS times (noise on a shared machine is
# large); both means, every run's figure and the ratio with/without are
# printed, for "with" also the rate of the clients alone (clock stopped
# when the last client finished), how long the mirror took to catch up
# after that, and the CPU time the watcher and its PostgreSQL backend spent
# per message / operation (less noisy than rates on a shared machine).
# Not a test: nothing passes or fails on a number.
#
# usage: tests/bench/mirror-bench.sh [MESSAGES [ROUNDS [IMAP_SESSIONS [IMAP_OPS]]]]
#        (defaults 4000, 3, 8, 2000; IMAP_SESSIONS or IMAP_OPS 0 skips the
#        IMAP runs; in the environment LMTP_SESSIONS=10,
#        LMTP_KINDS="stamped unstamped", MAIL_FS=tmpfs|disk,
#        MAILBOX_MESSAGES=0, LMTP_READER=idle|none, WATCH_WORKERS=,
#        CHECK_INTERVAL=, IMAP_MIX=35:30:25:10)
#
# WATCH_WORKERS: the watcher's workers (mailmeta_watch_workers) for the
# bench.  Empty (the default) measures what a host gets without setting
# it: one worker per two CPUs, 1 to 4.  The stack itself runs two on any
# machine, so that the tests see users split between workers; on a
# 2-core host that costs more sync CPU in all than the default's one
# (doc/mailbox-mirror.md).  CHECK_INTERVAL likewise: the watcher's drift
# check period (mailmeta_check_interval), empty for the default, 10 min.
# The stack checks every 30 s, so that the tests see drift repaired soon;
# in the bench that check, overdue when a "without" run resumes the
# watcher, synced the baseline's users in full, records and all, while
# the bench deleted them: work of the baseline charged to the next run.
# The bench restarts the stack's watcher with `doveadm -o
# plugin/mailmeta_watch_workers=... -o plugin/mailmeta_check_interval=...`
# for its runs and restarts it as the stack configures it at exit.
#
# MAILBOX_MESSAGES old messages are put in every run's INBOX before its
# clock starts (indexed by Dovecot and, for "with", mirrored): delivering
# into a Maildir costs more the more messages its dovecot-uidlist lists,
# so the baseline of a fresh, empty mailbox is the cheapest there is.
# More so as nothing reads that mailbox meanwhile: a delivery that finds
# the uidlist locked by another (10 sessions to one user) leaves its
# message unlisted for the next reader, and without one about 70 % of the
# messages stay so until the run ends (591 of 2000 listed, measured).  The
# mirror lists them as it goes, as an IMAP client's IDLE would, and every
# later delivery reads the longer list.
#
# LMTP_READER=idle (the default) keeps an IMAP client of the run's user
# connected during an LMTP run, in both arms: logged in, INBOX selected,
# in IDLE, as a user's mail client usually is.  Dovecot then lists each
# delivery in the Maildir as it comes (the IDLE session syncs on every
# change), as it does on a real host.  With LMTP_READER=none nobody reads
# the mailbox during the run: the cheapest baseline there is (see above),
# and then the watcher is that mailbox's only reader, so the "with" arm
# pays for Dovecot's listing of the deliveries on top of the mirror
# (measured: 3.4-3.6 ms of machine CPU per stamped delivery with the
# watcher paused, 4.0-4.6 ms with it running; with an IDLE client both
# 3.7-4.1 ms).
#
# MAIL_FS=tmpfs (the default) keeps the bench users' mail on a tmpfs (the
# domain's directory is a symbolic link into /dev/shm while the bench
# runs): on the stack's disk, the cost of creating a file depends on how
# many were deleted before (ext4's inode allocator), and one delivery's CPU
# varied from 4.7 to 8.8 ms between runs of one configuration.  Without
# disk I/O the baseline is cheaper, so the ratio is, if anything, lower
# than on a disk.  MAIL_FS=disk measures on the stack's disk.
#
# The PostgreSQL side writes into the stack's database as it is, and costs
# more the more the `mail` schema holds: records built from the mailbox
# have hashes for ids, so their index entries land on random pages (storing
# 100 such records took 25-30 ms in a fresh database and 45-80 ms in one
# holding 500,000 messages, with the default shared_buffers).  Compare runs
# made on the same database.
set -euo pipefail
shopt -s inherit_errexit	# the runs are called in $(...)

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR=${MAILMETA_STACK_DIR:-$SRC_DIR/.stack}
MESSAGES=${1:-4000}
ROUNDS=${2:-3}
IMAP_SESSIONS=${3:-8}
IMAP_OPS=${4:-2000}
LMTP_SESSIONS=${LMTP_SESSIONS:-10}
LMTP_KINDS=${LMTP_KINDS:-stamped unstamped}
MAILBOX_MESSAGES=${MAILBOX_MESSAGES:-0}
MAIL_FS=${MAIL_FS:-tmpfs}
LMTP_READER=${LMTP_READER:-idle}
WATCH_WORKERS=${WATCH_WORKERS:-}
CHECK_INTERVAL=${CHECK_INTERVAL:-}
IMAP_MIX=${IMAP_MIX:-35:30:25:10}
PYTHON=${PYTHON:-/usr/bin/python3}
CORPORA=${MAILMETA_CORPORA:-$SRC_DIR/../shared/corpora}
DOMAIN=mirrorbench.test
PASSWORD=bench-password
# shellcheck disable=SC1091
. "$STACK_DIR/env"
# shellcheck source=tests/bench/bench-lib.sh
. "$SRC_DIR/tests/bench/bench-lib.sh"

case $LMTP_READER in idle | none) ;; *) echo "LMTP_READER is idle or none" >&2; exit 1 ;; esac
if ! [[ "$IMAP_MIX" =~ ^([0-9]{1,3}):([0-9]{1,3}):([0-9]{1,3}):([0-9]{1,3})$ ]] ||
	[ $((10#${BASH_REMATCH[1]} + 10#${BASH_REMATCH[2]} + 10#${BASH_REMATCH[3]} + 10#${BASH_REMATCH[4]})) -ne 100 ]; then
	echo "IMAP_MIX is APPEND:FETCH:STORE:EXPUNGE in percent, summing to 100 (e.g. 35:30:25:10)" >&2
	exit 1
fi
IFS=: read -r MIX_APPEND MIX_FETCH MIX_STORE MIX_EXPUNGE <<<"$IMAP_MIX"
command -v bc >/dev/null || { echo "bench needs bc (apt-get install bc)" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "bench needs smtp-source (postfix)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (doveadm reload, /proc/PID/maps)" >&2; exit 1; }

CONF=$DOVECOT_CONFIG
LMTP_SOCKET=	# the current variant's listener (use_config)
WORK=$(mktemp -d /tmp/mirror-bench.XXXXXX)
RUN_ID=$$

now() { date +%s.%N; }
# a number for a run's user names, unique within this bench (the runs are
# called in subshells: a shell variable would not count)
next_seq() {
	local n
	n=$(( $(cat "$WORK/seq" 2>/dev/null || echo 0) + 1 ))
	echo "$n" > "$WORK/seq"
	echo "$n"
}
log() { printf '%s\n' "$*" >&2; }

# ------------------------------------------------------------ configuration
cp -p "$CONF" "$WORK/dovecot.conf.with"
grep -q '^!include .*mailmeta-mirror\.conf' "$WORK/dovecot.conf.with" ||
	{ echo "$CONF does not include mailmeta-mirror.conf" >&2; exit 1; }
PLUGINS=$(doveconf -c "$WORK/dovecot.conf.with" -h mail_plugins)
case " $PLUGINS " in
*" mailmeta "*) ;;
*) echo "the stack's Dovecot has no mailmeta plugin (mail_plugins =$PLUGINS)" >&2; exit 1 ;;
esac
BASE_PLUGINS=$(printf '%s\n' "$PLUGINS" | tr ' ' '\n' | grep -vx -e notify -e mailmeta -e '' |
	paste -sd' ' || true)
awk -v p="$BASE_PLUGINS" '{ print }
	/^!include .*mailmeta-mirror\.conf/ {
		print "# mirror-bench.sh: the mailbox mirror'"'"'s mail plugins off"
		print "mail_plugins = " p }' "$WORK/dovecot.conf.with" > "$WORK/dovecot.conf.without"
[ "$(doveconf -c "$WORK/dovecot.conf.without" -h mail_plugins | xargs)" = "$BASE_PLUGINS" ] ||
	{ echo "could not render a configuration without the plugin" >&2; exit 1; }
# Dovecot keeps a listening socket across a reload, and LMTP processes of
# the old configuration (process reuse: service_count 0) go on accepting
# connections on it for a while — some delivering with the old plugins,
# some answering "421 Shutting down".  So each variant gets an LMTP
# listener of its own, which only processes of that configuration accept.
for arm in with without; do
	printf '\n# mirror-bench.sh: a listener only this configuration'"'"'s processes accept\n' >> "$WORK/dovecot.conf.$arm"
	printf 'service lmtp {\n  unix_listener lmtp-mirror-bench-%s {\n    mode = 0666\n  }\n}\n' "$arm" >> "$WORK/dovecot.conf.$arm"
done
cp -p "$CONF" "$WORK/dovecot.conf.stack"

# restart_watcher [doveadm option...]: the stack's watcher, started again
# with these options, or as configured without any (scripts/stack mirror)
WATCHER_RESTARTED=
restart_watcher() {
	MAILMETA_STACK_DIR=$STACK_DIR "$SRC_DIR/scripts/stack" mirror "$@" >/dev/null
}
watch_workers() {	# the workers the running watcher has (watcher_pids)
	local pids
	read -ra pids <<<"$(watcher_pids)"
	echo $((${#pids[@]} > 1 ? ${#pids[@]} - 1 : 1))
}

CURRENT=stack
restore() {
	if ! cmp -s "$WORK/dovecot.conf.stack" "$CONF"; then
		cat "$WORK/dovecot.conf.stack" > "$CONF"
		doveadm -c "$CONF" reload 2>/dev/null || true
		log "restored $CONF (mail_plugins =$(doveconf -c "$CONF" -h mail_plugins))"
	fi
	rm -f "$STACK_DIR"/run/dovecot/lmtp-mirror-bench-*
	# a reader left by a run that failed in its subshell
	pkill -f -- "$WORK/reader.ready" 2>/dev/null || true
	resume_mirror
	cleanup_users || true
	restore_mail_dir
	if [ -n "$WATCHER_RESTARTED" ]; then
		restart_watcher || true
		log "restarted the watcher as the stack configures it ($(watch_workers) workers)"
	fi
	rm -rf "$WORK"
}
trap restore EXIT
trap 'exit 130' INT TERM
set -E
trap 'log "mirror-bench.sh: line $LINENO failed: $BASH_COMMAND"' ERR

# ------------------------------------------------------------ mail on tmpfs
DOMAIN_DIR=$STACK_DIR/mail/$DOMAIN
SHM_DIR=
# A symbolic link, not a mount: the watcher runs in a mount namespace of
# its own (the stack's doveadm), which would not see a mount made now.
mail_on_tmpfs() {
	[ "$MAIL_FS" = tmpfs ] || return 0
	SHM_DIR=$(mktemp -d /dev/shm/mirror-bench.XXXXXX)
	chown --reference="$STACK_DIR/mail" "$SHM_DIR"
	chmod 0700 "$SHM_DIR"
	if [ -e "$DOMAIN_DIR" ] || [ -L "$DOMAIN_DIR" ]; then
		mv -T "$DOMAIN_DIR" "$DOMAIN_DIR.mirror-bench-$RUN_ID"
	fi
	ln -s "$SHM_DIR" "$DOMAIN_DIR"
}
restore_mail_dir() {
	[ -n "$SHM_DIR" ] || return 0
	rm -f "$DOMAIN_DIR"
	if [ -e "$DOMAIN_DIR.mirror-bench-$RUN_ID" ]; then
		mv -T "$DOMAIN_DIR.mirror-bench-$RUN_ID" "$DOMAIN_DIR"
	fi
	rm -rf "$SHM_DIR"
}

# Whether the LMTP process that takes a probe delivery on the current
# listener has the plugin mapped: "yes" or "no" (it logs the delivery with
# its pid; a process loads mail plugins with its first delivery).
probe_plugin() {
	local msgid offset pid _i
	msgid="probe-$RUN_ID-$(date +%s%N)@$DOMAIN"
	printf 'From: probe@outside.example\nSubject: probe\nMessage-ID: <%s>\n\nprobe\n' "$msgid" \
		> "$WORK/probe.eml"
	offset=$(stat -c %s "$STACK_DIR/log/dovecot.log")
	smtp-source -L -m 1 -f probe@outside.example -t "probe@$DOMAIN" -F "$WORK/probe.eml" \
		"unix:$LMTP_SOCKET" >/dev/null
	for _i in $(seq 1 50); do
		pid=$(tail -c +"$((offset + 1))" "$STACK_DIR/log/dovecot.log" | grep -F "$msgid" |
			sed -n 's/^.* lmtp([^)]*)<\([0-9]*\)>.*/\1/p' | head -1 || true)
		[ -n "$pid" ] && break
		sleep 0.1
	done
	[ -n "$pid" ] || { echo "the probe delivery is not in dovecot.log" >&2; return 1; }
	if grep -q lib20_mailmeta_plugin "/proc/$pid/maps" 2>/dev/null; then echo yes; else echo no; fi
}

use_config() {	# with | without
	local want=$1 got expected
	[ "$CURRENT" = "$want" ] && return 0
	cat "$WORK/dovecot.conf.$want" > "$CONF"
	doveadm -c "$CONF" reload
	CURRENT=$want
	LMTP_SOCKET=$STACK_DIR/run/dovecot/lmtp-mirror-bench-$want
	for _ in $(seq 1 50); do [ -S "$LMTP_SOCKET" ] && break; sleep 0.1; done
	sleep 0.5
	got=$(probe_plugin)
	expected=no
	[ "$want" = with ] && expected=yes
	if [ "$got" != "$expected" ]; then
		echo "after switching to '$want' a new LMTP process has the plugin: $got" \
		     "(someone re-rendered the stack's configuration?)" >&2
		exit 1
	fi
}

# ------------------------------------------------------------------ users
sql() { psql -XqAt -v ON_ERROR_STOP=1 "$@"; }

setup_domain() {
	sql >/dev/null 2>&1 <<-EOF || true
	SELECT mail.add_domain('$DOMAIN');
	EOF
	sql >/dev/null 2>&1 <<-EOF || true
	SELECT mail.add_user('probe@$DOMAIN', '$PASSWORD');
	EOF
}

add_users() {	# prefix count -> user names, one a line
	local prefix=$1 count=$2 i
	for i in $(seq 1 "$count"); do echo "$prefix$i@$DOMAIN"; done > "$WORK/users"
	sql -c "SELECT mail.add_user(u, '$PASSWORD') FROM unnest(string_to_array('$(paste -sd, "$WORK/users")', ',')) u" >/dev/null
	cat "$WORK/users"
}

cleanup_users() {	# every user of this run (and the probe's mail)
	sql >/dev/null 2>&1 <<-EOF || true
	SELECT mail.delete_user(u.address) FROM mail.users u JOIN mail.domains d USING (domain_id)
	 WHERE d.domain = '$DOMAIN' AND u.address LIKE 'r$RUN_ID-%';
	EOF
	find "$STACK_DIR/mail/$DOMAIN" -mindepth 1 -maxdepth 1 -name "r$RUN_ID-*" -exec rm -rf {} + 2>/dev/null || true
	rm -rf "$STACK_DIR/mail/$DOMAIN/probe"
}

spool_name() { "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="@._+-"))' "$1"; }

# true when none of the marks named (spool_name) is there, waiting or
# claimed
drained() {
	local n
	for n in "$@"; do
		[ -e "$MIRROR_SPOOL_DIR/$n" ] || [ -e "$MIRROR_SPOOL_DIR/.claimed/$n" ] && return 1
	done
	return 0
}

# true when every "user count" line of FILE matches the user's mirror
mirror_matches() {
	local want got
	want=$(sort "$1")
	got=$(sql -F ' ' -c "SELECT u.address, count(m.uid) FROM mail.users u
	        LEFT JOIN mail.mailbox_messages m USING (user_id)
	        WHERE u.address = ANY (string_to_array('$(cut -d' ' -f1 "$1" | paste -sd,)', ','))
	        GROUP BY u.address" | sort)
	[ "$want" = "$got" ]
}

mirror_count() {	# user -> messages in the user's mirror
	sql -c "SELECT count(*) FROM mail.mailbox_messages m JOIN mail.users u USING (user_id)
	         WHERE u.address = '$1'"
}

# The watcher's processes: the one the stack started and, when it runs
# several workers, those it forked.
watcher_pids() {
	local pid
	pid=$(cat "$STACK_DIR/run/mirror/watch.pid" 2>/dev/null) || return 0
	echo "$pid" $(pgrep -P "$pid" || true)
}

# CPU seconds used so far by the watcher and by the PostgreSQL backends of
# its role (mailmeta_mirror): "pid:seconds ..." (compared by sync_cpu)
cpu_snapshot() {
	local pid pids
	pids="$(watcher_pids) $( (sql -c \
		"SELECT pid FROM pg_stat_activity WHERE usename = 'mailmeta_mirror'" 2>/dev/null || true) | xargs)"
	for pid in $pids; do
		awk -v pid="$pid" -v hz="$(getconf CLK_TCK)" \
			'{ sub(/^.*\) /, ""); printf "%s:%.2f ", pid, ($12 + $13) / hz }' \
			"/proc/$pid/stat" 2>/dev/null || true
	done
	echo
}

# CPU seconds the whole machine has been busy (user, nice, system, irq,
# softirq, steal): a run's share of it per message is steadier than its rate
machine_busy() {
	awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# CPU seconds of Dovecot's processes that have ended so far (imap, auth,
# ...: the master's reaped children).  An IMAP session's process ends at
# its logout: wait_sessions_ended waits for the run's ones (at most 5 s).
dovecot_master() { cat "$STACK_DIR/run/dovecot/master.pid"; }
dovecot_ended_cpu() {
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($14 + $15) / hz }' \
		"/proc/$(dovecot_master)/stat"
}
imap_processes() { pgrep -c -x -P "$(dovecot_master)" imap || true; }
wait_sessions_ended() {	# the count of imap processes before the run
	local i
	for i in $(seq 100); do
		[ "$(imap_processes)" -gt "$1" ] || return 0
		sleep 0.05
	done
}

# sync_cpu BEFORE AFTER -> "watcher+postgres seconds" used in between
sync_cpu() {
	awk -v before="$1" -v after="$2" -v watchers="$(watcher_pids)" 'BEGIN {
		n = split(watchers, ws, " "); for (i = 1; i <= n; i++) watcher[ws[i]] = 1
		n = split(before, b, " "); for (i = 1; i <= n; i++) { split(b[i], kv, ":"); was[kv[1]] = kv[2] }
		n = split(after, a, " ")
		for (i = 1; i <= n; i++) {
			split(a[i], kv, ":")
			d = kv[2] - ((kv[1] in was) ? was[kv[1]] : 0)
			if (kv[1] in watcher) w += d; else p += d
		}
		printf "%.2f %.2f\n", w, p }'
}

# ------------------------------------------------------------ (a) LMTP
# start_reader USER: with LMTP_READER=idle, an IMAP client of USER in IDLE
# on INBOX until stop_reader (it only reads what the server sends);
# returns once the server has confirmed the IDLE.  It logs in without TLS,
# as imap-load.py's clients do (Dovecot counts loopback as secured).
READER_PID=
start_reader() {
	[ "$LMTP_READER" = idle ] || return 0
	rm -f "$WORK/reader.ready"
	"$PYTHON" - 127.0.0.1 "$IMAP_PORT" "$1" "$PASSWORD" "$WORK/reader.ready" \
		>/dev/null 2>"$WORK/reader.err" <<-'PY' &
	import imaplib, sys
	host, port, user, password, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
	m = imaplib.IMAP4(host, port)
	m.login(user, password)
	m.select("INBOX")
	m.send(b"i1 IDLE\r\n")
	if not m.readline().startswith(b"+"):
	    raise SystemExit("IDLE refused")
	open(ready, "w").close()
	while m.readline():
	    pass
	PY
	READER_PID=$!
	for _ in $(seq 1 200); do
		[ -e "$WORK/reader.ready" ] && return 0
		kill -0 "$READER_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "the IDLE reader did not start: $(tail -c 300 "$WORK/reader.err")" >&2
	exit 1
}
stop_reader() {
	[ -n "$READER_PID" ] || return 0
	kill "$READER_PID" 2>/dev/null || true
	wait "$READER_PID" 2>/dev/null || true
	READER_PID=
}

# lmtp_run with|without -> "msg/s machine-ms/msg" (without) or
# "msg/s deliveries-msg/s catch-up-s watcher-s postgres-s machine-ms/msg"
lmtp_run() {
	local arm=$1 user mark start delivered end count cpu0 busy0 busy SEQ
	for _ in 1 2 3; do
		SEQ=$(next_seq)
		user=$(add_users "r$RUN_ID-l$SEQ-$arm-" 1)
		mark=$(spool_name "$user")
		[ "$arm" = with ] || pause_mirror
		prefill_inbox "$arm" "$user"
		start_reader "$user"
		cpu0=$(cpu_snapshot)
		busy0=$(machine_busy)
		start=$(now)
		smtp-source -L -s "$LMTP_SESSIONS" -m "$MESSAGES" -f bench@outside.example \
			-t "$user" -F "$MESSAGE" "unix:$LMTP_SOCKET" 2>"$WORK/smtp-source.err" || true
		delivered=$(now)
		count=$( (find "$STACK_DIR/mail/$DOMAIN/${user%@*}/Maildir/new" \
			"$STACK_DIR/mail/$DOMAIN/${user%@*}/Maildir/cur" -type f 2>/dev/null || true) | wc -l)
		if [ "$count" -ne $((MAILBOX_MESSAGES + MESSAGES)) ]; then
			# on this shared stack others restart PostgreSQL (LMTP's
			# userdb lookups fail meanwhile): run it again
			log "  (LMTP run stored $((count - MAILBOX_MESSAGES)) of $MESSAGES messages: $(head -c 200 "$WORK/smtp-source.err"); repeated)"
			stop_reader
			resume_mirror
			cleanup_one "$user"
			continue
		fi
		if [ "$arm" = with ]; then
			until drained "$mark" &&
			      [ "$(mirror_count "$user")" -eq $((MAILBOX_MESSAGES + MESSAGES)) ]; do
				sleep 0.05
				if [ "$(echo "$(now) - $delivered > 600" | bc)" = 1 ]; then
					echo "the mirror did not catch up in 600 s" >&2; exit 1
				fi
			done
			end=$(now)
			echo "$(echo "scale=1; $MESSAGES / ($end - $start)" | bc)" \
			     "$(echo "scale=1; $MESSAGES / ($delivered - $start)" | bc)" \
			     "$(echo "scale=2; ($end - $delivered) / 1" | bc)" \
			     "$(sync_cpu "$cpu0" "$(cpu_snapshot)")" \
			     "$(echo "scale=3; 1000 * ($(machine_busy) - $busy0) / $MESSAGES" | bc)"
			stop_reader
			cleanup_one "$user"
			return
		fi
		busy=$(echo "scale=3; 1000 * ($(machine_busy) - $busy0) / $MESSAGES" | bc)
		stop_reader
		# the watcher first: paused within a sync, it holds locks that
		# deleting a user waits for
		resume_mirror
		cleanup_one "$user"
		echo "$(echo "scale=1; $MESSAGES / ($delivered - $start)" | bc) $busy"
		return
	done
	echo "three LMTP runs in a row were disturbed" >&2; exit 1
}

# prefill_inbox with|without USER...: MAILBOX_MESSAGES old messages (the
# stamped message, \Seen) in each user's INBOX before the clock starts,
# indexed by Dovecot and, in the "with" arm, mirrored.
prefill_inbox() {
	local arm=$1 user home
	shift
	[ "$MAILBOX_MESSAGES" -gt 0 ] || return 0
	for user in "$@"; do
		home=$STACK_DIR/mail/$DOMAIN/${user%@*}
		"$PYTHON" - "$home/Maildir" "$MAILBOX_MESSAGES" "$STAMPED" <<-'PY'
		import os, sys, time
		maildir, count, text = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
		vsize = len(text) + text.count(b"\n") - text.count(b"\r\n")
		for sub in ("cur", "new", "tmp"):
		    os.makedirs(os.path.join(maildir, sub), exist_ok=True)
		first = int(time.time()) - 30 * 86400
		for n in range(count):
		    path = os.path.join(maildir, "cur", f"{first + n}.M{n}P{os.getpid()}.mirror-bench,S={len(text)},W={vsize}:2,S")
		    with open(path, "wb") as f:
		        f.write(text)
		    os.utime(path, (first + n, first + n))
		PY
		chown -R --reference="$STACK_DIR/mail" "$home"
		"$DOVEADM" mailbox status -u "$user" messages INBOX >/dev/null
		[ "$arm" = with ] || continue
		"$DOVEADM" mailmeta sync -u "$user" >/dev/null
		# indexing them marked the user: the watcher's sync of that
		# is no part of the measured work either
		until drained "$(spool_name "$user")"; do sleep 0.05; done
	done
}

cleanup_one() {
	sql -c "SELECT mail.delete_user('$1')" >/dev/null
	# a session still logging out may write into it meanwhile
	rm -rf "${STACK_DIR:?}/mail/$DOMAIN/${1%@*}" 2>/dev/null ||
		{ sleep 1; rm -rf "${STACK_DIR:?}/mail/$DOMAIN/${1%@*}"; }
}

# ------------------------------------------------------------ (b) IMAP
cat > "$WORK/imap-load.py" <<'PY'
"""IMAP load: one process per user, all started together; prints
"ops seconds_of_the_slowest_session end_time busy_seconds" (busy: the
machine's CPU time while the sessions ran) then one "user count" line per
user (its final message count)."""
import imaplib, multiprocessing as mp, os, random, re, sys, time

host, port, password, ops = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
spool, users = sys.argv[5], sys.argv[6:]
# percentages APPEND:FETCH:STORE:EXPUNGE -> cumulative thresholds
MIX = [int(x) / 100 for x in os.environ["IMAP_MIX"].split(":")]
APPEND, FETCH, STORE = MIX[0], MIX[0] + MIX[1], MIX[0] + MIX[1] + MIX[2]
BODY = "\r\n".join("Line %d of a benchmark message, some ordinary text to make it real." % i
                   for i in range(80))


def message(rng, user, n):
    size = rng.randrange(2000, 6000)
    return (f"From: Bench <bench@outside.example>\r\nTo: {user}\r\n"
            f"Subject: bench {os.getpid()} {n} {rng.random()}\r\n"
            f"Message-ID: <{os.getpid()}.{n}.{time.time()}@bench.test>\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n" + BODY[:size] + "\r\n").encode()


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def session(user, ready, start, results):
    rng = random.Random(user)
    m = imaplib.IMAP4(host, port)
    m.login(user, password)
    m.select("INBOX")
    uids = []
    for n in range(10):             # something to FETCH, STORE and EXPUNGE at once
        typ, data = m.append("INBOX", None, None, message(rng, user, n))
        uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
    ready.wait()
    start.wait()
    began = time.monotonic()
    for n in range(ops):
        r = rng.random()
        if r < APPEND or not uids:
            typ, data = m.append("INBOX", rng.choice([None, "(\\Seen)"]), None,
                                 message(rng, user, n + 10))
            uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
        elif r < FETCH:
            typ, data = m.uid("FETCH", str(rng.choice(uids)), "(FLAGS BODY.PEEK[])")
        elif r < STORE:
            typ, data = m.uid("STORE", str(rng.choice(uids)), rng.choice(["+FLAGS", "-FLAGS"]),
                              rng.choice(["(\\Seen)", "(\\Flagged)", "($label1)"]))
        else:
            uid = uids.pop(rng.randrange(len(uids)))
            typ, data = m.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
            typ, data = m.uid("EXPUNGE", str(uid))
        if typ != "OK":
            raise SystemExit(f"{user}: {typ} {data}")
    elapsed = time.monotonic() - began
    typ, data = m.select("INBOX")
    m.logout()
    results.put((user, elapsed, int(data[0]), time.time()))


if __name__ == "__main__":
    ready, start = mp.Barrier(len(users) + 1), mp.Event()
    results = mp.Queue()
    procs = [mp.Process(target=session, args=(u, ready, start, results)) for u in users]
    for p in procs:
        p.start()
    ready.wait(timeout=120)         # every session logged in and seeded
    # the seeding's marks synced (when the plugin is on) before the clock
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            os.path.exists(os.path.join(d, u)) for u in users
            for d in (spool, os.path.join(spool, ".claimed"))):
        time.sleep(0.05)
    time.sleep(0.5)
    busy0 = machine_busy()
    start.set()
    got = [results.get(timeout=900) for _ in users]
    busy = machine_busy() - busy0
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit("an IMAP session failed")
    print(ops * len(users), max(g[1] for g in got), max(g[3] for g in got), busy)
    for user, _, count, _ in got:
        print(user, count)
PY

# imap_run with|without -> "ops/s [ops/s-without-catch-up catch-up-s
# watcher-s postgres-s] busy-ms dovecot-ms" (busy: the machine's CPU per
# operation while the clients ran; dovecot: the CPU of Dovecot's processes
# that served the run, per operation)
imap_run() {
	local arm=$1 users marks out ops secs ended busy u end cpu0 cpu1 SEQ
	local sessions0 dovecot0 dovecot
	for _ in 1 2 3; do
		SEQ=$(next_seq)
		mapfile -t users < <(add_users "r$RUN_ID-i$SEQ-$arm-" "$IMAP_SESSIONS")
		marks=()
		for u in "${users[@]}"; do marks+=("$(spool_name "$u")"); done
		[ "$arm" = with ] || pause_mirror
		prefill_inbox "$arm" "${users[@]}"
		cpu0=$(cpu_snapshot)
		sessions0=$(imap_processes) dovecot0=$(dovecot_ended_cpu)
		if ! out=$(IMAP_MIX=$IMAP_MIX "$PYTHON" "$WORK/imap-load.py" 127.0.0.1 "$IMAP_PORT" "$PASSWORD" "$IMAP_OPS" \
			"$MIRROR_SPOOL_DIR" "${users[@]}" 2>"$WORK/imap-load.err"); then
			log "  (IMAP run failed: $(tail -c 300 "$WORK/imap-load.err"); repeated)"
			resume_mirror
			for u in "${users[@]}"; do cleanup_one "$u"; done
			continue
		fi
		read -r ops secs ended busy <<<"$(head -1 <<<"$out")"
		busy=$(echo "scale=3; 1000 * $busy / $ops" | bc)
		if [ "$arm" = with ]; then
			tail -n +2 <<<"$out" > "$WORK/counts"
			until drained "${marks[@]}" && mirror_matches "$WORK/counts"; do
				sleep 0.05
			done
			end=$(now) cpu1=$(cpu_snapshot)
		fi
		# after the clock: waiting for the sessions' ends must not
		# delay the catch-up's
		wait_sessions_ended "$sessions0"
		dovecot=$(echo "scale=3; 1000 * ($(dovecot_ended_cpu) - $dovecot0) / $ops" | bc)
		if [ "$arm" = with ]; then
			echo "$(echo "scale=1; $ops / ($secs + $end - $ended)" | bc)" \
			     "$(echo "scale=1; $ops / $secs" | bc)" \
			     "$(echo "scale=2; ($end - $ended) / 1" | bc)" \
			     "$(sync_cpu "$cpu0" "$cpu1")" "$busy" "$dovecot"
			for u in "${users[@]}"; do cleanup_one "$u"; done
			return
		fi
		resume_mirror	# first: see lmtp_run
		for u in "${users[@]}"; do cleanup_one "$u"; done
		echo "$(echo "scale=1; $ops / $secs" | bc) $busy $dovecot"
		return
	done
	echo "three IMAP runs in a row were disturbed" >&2; exit 1
}

# ------------------------------------------------------------------ main
MESSAGE=$(STACK_DIR=$WORK; without_message_id "$(pick_message)")
mail_on_tmpfs
setup_domain
# as mail that came through the milter: stamped with the id of a recorded
# message, so the watcher only mirrors it and builds no record
stamp=$(sql -c "SELECT mailmeta_id FROM mail.messages ORDER BY received_at DESC LIMIT 1")
[ -n "$stamp" ] || { echo "no recorded message to stamp the bench message with" >&2; exit 1; }
{ printf 'X-Mailmeta-ID: %s\n' "$stamp"; cat "$MESSAGE"; } > "$WORK/stamped.eml"
UNSTAMPED=$MESSAGE STAMPED=$WORK/stamped.eml
echo "message: $(pick_message | sed "s|^$CORPORA/||") without Message-ID ($(wc -c < "$UNSTAMPED") bytes); stamped: X-Mailmeta-ID: $stamp"
WATCHER_RESTARTED=yes
restart_watcher -o "plugin/mailmeta_watch_workers=$WATCH_WORKERS" \
	-o "plugin/mailmeta_check_interval=$CHECK_INTERVAL"
echo "mail_plugins with: $PLUGINS; without: $BASE_PLUGINS; watcher workers: $(watch_workers) (mailmeta_watch_workers = ${WATCH_WORKERS:-unset}), drift check every ${CHECK_INTERVAL:-10 min}; mail on $MAIL_FS; INBOX holds $MAILBOX_MESSAGES messages before a run; LMTP runs' reader: $LMTP_READER; $ROUNDS rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Metadata stays when the bench deletes its users, so the stack's
# mail.messages grows by every run; its indexes take random inserts, which
# cost more once they outgrow shared_buffers: say how big they are.
echo "mail.messages: $(sql -c "SELECT count(*) FROM mail.messages") rows, $(sql -c "SELECT pg_size_pretty(pg_total_relation_size('mail.messages'))") with its indexes; shared_buffers $(sql -c "SHOW shared_buffers")"

for kind in stamped unstamped; do
	eval "lmtp_${kind}_base=() lmtp_${kind}_with=() lmtp_${kind}_deliv=() lmtp_${kind}_catch=() lmtp_${kind}_cpu=()"
	eval "lmtp_${kind}_busy_base=() lmtp_${kind}_busy_with=()"
done
imap_base=() imap_with=() imap_raw=() imap_catch=() imap_cpu=() imap_busy_base=() imap_busy_with=()
imap_dovecot_base=() imap_dovecot_with=()
for round in $(seq 1 "$ROUNDS"); do
	for kind in $LMTP_KINDS; do
		if [ "$kind" = stamped ]; then MESSAGE=$STAMPED; else MESSAGE=$UNSTAMPED; fi
		# odd rounds run "without" first, even rounds "with": what
		# drifts during a bench weighs on both arms alike
		if [ $((round % 2)) -eq 1 ]; then
			use_config without
			read -r base bb <<<"$(lmtp_run without)"
			use_config with
			read -r w d c cw cp bw <<<"$(lmtp_run with)"
		else
			use_config with
			read -r w d c cw cp bw <<<"$(lmtp_run with)"
			use_config without
			read -r base bb <<<"$(lmtp_run without)"
		fi
		eval "lmtp_${kind}_base+=(\"\$base\") lmtp_${kind}_with+=(\"\$w\")"
		eval "lmtp_${kind}_deliv+=(\"\$d\") lmtp_${kind}_catch+=(\"\$c\")"
		eval "lmtp_${kind}_busy_base+=(\"\$bb\") lmtp_${kind}_busy_with+=(\"\$bw\")"
		cpu=$(echo "scale=3; 1000 * ($cw + $cp) / $MESSAGES" | bc)
		eval "lmtp_${kind}_cpu+=(\"\$cpu\")"
		log "round $round LMTP $kind: without $base msg/s, with $w msg/s (deliveries alone $d msg/s, mirror caught up $c s later; sync CPU: watcher $cw s, PostgreSQL $cp s; machine CPU per message $bb ms without, $bw ms with)"
	done
	[ "$IMAP_OPS" -gt 0 ] && [ "$IMAP_SESSIONS" -gt 0 ] || continue

	if [ $((round % 2)) -eq 1 ]; then
		use_config without
		read -r base bb db <<<"$(imap_run without)"
		use_config with
		read -r w d c cw cp bw dw <<<"$(imap_run with)"
	else
		use_config with
		read -r w d c cw cp bw dw <<<"$(imap_run with)"
		use_config without
		read -r base bb db <<<"$(imap_run without)"
	fi
	imap_base+=("$base") imap_with+=("$w") imap_raw+=("$d") imap_catch+=("$c")
	imap_busy_base+=("$bb") imap_busy_with+=("$bw")
	imap_dovecot_base+=("$db") imap_dovecot_with+=("$dw")
	imap_cpu+=("$(echo "scale=3; 1000 * ($cw + $cp) / ($IMAP_SESSIONS * $IMAP_OPS)" | bc)")
	log "round $round IMAP: without $base ops/s, with $w ops/s (clients alone $d ops/s, mirror caught up $c s later; sync CPU: watcher $cw s, PostgreSQL $cp s; machine CPU per operation while the clients ran $bb ms without, $bw ms with; Dovecot's processes $db ms without, $dw ms with)"
done

mean2() {	# "a b c" -> their mean, two decimals
	tr ' ' '\n' <<<"$1" | awk '{ s += $1 } END { printf "%.2f\n", s / NR }'
}

report() {	# name unit bases withs raws catches cpus per [machine-bases machine-withs]
	local name=$1 unit=$2 base with raw ratios
	base=$(tr ' ' '\n' <<<"$3" | mean)
	with=$(tr ' ' '\n' <<<"$4" | mean)
	raw=$(tr ' ' '\n' <<<"$5" | mean)
	printf '%s: without plugin %s %s (%s), with plugin + mirror %s %s (%s), ratio %s\n' \
		"$name" "$base" "$unit" "$3" "$with" "$unit" "$4" "$(echo "scale=3; $with / $base" | bc)"
	# each round's pair ran back to back: its ratio is the least
	# disturbed by what the machine does between rounds
	ratios=$(paste -d/ <(tr ' ' '\n' <<<"$4") <(tr ' ' '\n' <<<"$3") |
		awk -F/ '{ printf "%.3f\n", $1 / $2 }')
	printf '  ratio per round: %s, median %s\n' "$(paste -sd' ' <<<"$ratios")" \
		"$(sort -n <<<"$ratios" |
			awk '{ v[NR] = $1 } END { printf "%.3f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
	printf '  with plugin, clients alone %s %s (ratio %s); mirror caught up %s s after the last client (%s)\n' \
		"$raw" "$unit" "$(echo "scale=3; $raw / $base" | bc)" "$(mean2 "$6")" "$6"
	printf '  sync CPU (watcher + its PostgreSQL backend) %s ms per %s (%s)\n' "$(mean2 "$7")" "$8" "$7"
	[ -n "${9:-}" ] || return 0
	base=$(mean2 "$9")
	with=$(mean2 "${10}")
	printf '  machine CPU per %s: without %s ms (%s), with %s ms (%s), ratio without/with %s\n' \
		"$8" "$base" "$9" "$with" "${10}" "$(echo "scale=3; $base / $with" | bc)"
}
echo "(a) LMTP delivery, $MESSAGES messages, $LMTP_SESSIONS sessions, a fresh user per run:"
for kind in $LMTP_KINDS; do
	if [ "$kind" = stamped ]; then title="LMTP stamped (through the milter)"; else title="LMTP unstamped (records built)"; fi
	eval "report \"  \$title\" msg/s \"\${lmtp_${kind}_base[*]}\" \"\${lmtp_${kind}_with[*]}\" \
		\"\${lmtp_${kind}_deliv[*]}\" \"\${lmtp_${kind}_catch[*]}\" \"\${lmtp_${kind}_cpu[*]}\" message \
		\"\${lmtp_${kind}_busy_base[*]}\" \"\${lmtp_${kind}_busy_with[*]}\""
done
[ "$IMAP_OPS" -gt 0 ] && [ "$IMAP_SESSIONS" -gt 0 ] || exit 0
echo "(b) IMAP, $IMAP_SESSIONS sessions x $IMAP_OPS operations (APPEND $MIX_APPEND %, FETCH $MIX_FETCH %, STORE $MIX_STORE %, EXPUNGE $MIX_EXPUNGE %):"
report "  IMAP" ops/s "${imap_base[*]}" "${imap_with[*]}" "${imap_raw[*]}" "${imap_catch[*]}" \
	"${imap_cpu[*]}" operation "${imap_busy_base[*]}" "${imap_busy_with[*]}"
printf "  CPU of Dovecot's processes (imap, auth, ...; logins and seeding included) per operation: without %s ms (%s), with %s ms (%s)\n" \
	"$(mean2 "${imap_dovecot_base[*]}")" "${imap_dovecot_base[*]}" \
	"$(mean2 "${imap_dovecot_with[*]}")" "${imap_dovecot_with[*]}"
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: figures are noisy)"
