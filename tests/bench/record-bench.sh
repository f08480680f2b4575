#!/usr/bin/env bash
# record-bench.sh - A/B cost of mail.record_messages(), the milter's write
# path, in one run: the schema as committed in git (HEAD's migration 0005,
# "before") against the working tree's migrations ("after").
#
# For each schema and each batch size (10 and 50 documents) it creates a
# scratch database, migrates it with sql/mailmeta-migrate.in, adds a domain,
# five users and an alias through the admin API, generates N realistic
# metadata documents (doc/metadata-record.md) and records them the way
# mailmeta-milter does: 4 concurrent connections, one
# "SELECT mail.record_messages($1::jsonb)" per batch, autocommit, READ
# COMMITTED, as the role mailmeta_milter.  The documents: unique UUIDv7
# mailmeta_ids and Message-IDs; 1 or 5 envelope recipients (alternately;
# users, the alias, outside addresses); a text and an HTML part plus two
# attachments, one with the same SHA-256 in every document (a logo in
# every signature) and one unique; 30% reply (In-Reply-To, References) to
# a random earlier message.
#
# Prints, per run: documents/s (wall clock, from the first batch until all
# four connections are done), wall ms per document, the server backends' CPU
# ms per document (user + system time of the four backends, from
# /proc/<pid>/stat), the time spent inside record_messages per document
# (pg_stat_user_functions), failed batches and the rows stored; then the
# before/after ratios.  Not a test: nothing passes or fails on a number.
#
# Needs the libpq environment (PGHOST, PGPORT, PGUSER, ...) of a superuser
# connection to a server on this machine (it reads its backends' /proc);
# creates and drops its own databases.  Keep fsync on for realistic figures.
#
# usage: tests/bench/record-bench.sh [DOCUMENTS [CLIENTS]]
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DOCS=${1:-5000}
CLIENTS=${2:-4}
BATCH_SIZES=${BENCH_BATCH_SIZES:-"10 50"}
PREFIX="mailmeta_record_bench_$$"
# BENCH_PROFILE=1: also time SQL functions (track_functions = all, which
# costs a little itself) and print where the time inside went.
PROFILE=${BENCH_PROFILE:-0}
TRACK=pl
if [ "$PROFILE" = 1 ]; then TRACK=all; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-record-bench.XXXXXX")
cleanup() {
	psql -XAt -d postgres -c \
		"SELECT datname FROM pg_database WHERE datname LIKE '${PREFIX}\\_%'" 2>/dev/null |
	while read -r db; do dropdb --if-exists "$db" >/dev/null 2>&1 || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# The two migration directories: HEAD's 0005 and the working tree's.
mkdir -p "$work/before" "$work/after"
cp "$SRC_DIR"/sql/migrations/*.sql "$work/after/"
cp "$SRC_DIR"/sql/migrations/*.sql "$work/before/"
if ! git -C "$SRC_DIR" show HEAD:sql/migrations/0005_message_metadata.sql \
		>"$work/before/0005_message_metadata.sql" 2>/dev/null; then
	echo "record-bench: cannot read HEAD's migration 0005 from git" >&2
	exit 1
fi

setup_db() {  # setup_db DB MIGRATIONS-DIR
	local db=$1 dir=$2
	createdb "$db"
	PGDATABASE=$db sh "$SRC_DIR/sql/mailmeta-migrate.in" --dir "$dir" >"$work/migrate.log" 2>&1 || {
		cat "$work/migrate.log" >&2
		exit 1
	}
	psql -XqAt -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<-'EOF'
	SET ROLE mailmeta_admin;
	SELECT mail.add_domain('bench.test');
	SELECT mail.add_user('user' || n || '@bench.test', 'bench-password') FROM generate_series(1, 5) n;
	SELECT mail.add_alias('team@bench.test', ARRAY['user1@bench.test', 'user2@bench.test',
	                                               'user3@bench.test', 'partner@outside.example']);
	RESET ROLE;
	EOF
	psql -XqAt -d "$db" -c "ALTER DATABASE $db SET track_functions = '$TRACK'" >/dev/null
}

# generate DB BATCH: writes $work/client-K.sql (K = 0 .. CLIENTS-1), batch
# b going to client b mod CLIENTS, one record_messages statement per batch.
generate() {
	local db=$1 batch=$2 k
	psql -XqAt -v ON_ERROR_STOP=1 -d "$db" -v docs="$DOCS" -v batch="$batch" >"$work/batches.sql" <<-'EOF'
	SELECT setseed(0.42);
	CREATE TEMP TABLE d AS
	SELECT i, random() < 0.3 AND i > 1 AS is_reply, floor(random() * greatest(i - 1, 1))::int + 1 AS parent,
	       lpad(to_hex(1780000000000 + i * 7), 12, '0') AS ts, md5('bench' || i) AS r
	  FROM generate_series(1, :docs) i;
	SELECT 'SELECT count(*) FROM mail.record_messages($j$' || jsonb_agg(doc ORDER BY i)::text || '$j$::jsonb);'
	  FROM (
	    SELECT i, (i - 1) / :batch AS b, jsonb_build_object(
	        'version', 1,
	        'mailmeta_id', format('%s-%s-7%s-8%s-%s', substr(ts, 1, 8), substr(ts, 9, 4),
	                              substr(r, 1, 3), substr(r, 4, 3), substr(r, 7, 12)),
	        'queue_id', upper(substr(r, 13, 11)),
	        'received_at', to_char((timestamptz '2026-11-22 19:40:00+00' + i * interval '7 ms')
	                               AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
	        'direction', 'inbound',
	        'client', jsonb_build_object('ip', '192.0.2.' || (i % 250 + 1),
	                                     'name', 'mx' || (i % 50) || '.outside.example',
	                                     'helo', 'mx' || (i % 50) || '.outside.example'),
	        'tls', jsonb_build_object('version', 'TLSv1.3', 'cipher', 'TLS_AES_256_GCM_SHA384'),
	        'sasl_user', NULL,
	        'env_from', 'sender' || (i % 300) || '@outside.example',
	        'recipients', CASE WHEN i % 2 = 1
	            THEN jsonb_build_array(jsonb_build_object('address', 'user' || (i % 5 + 1) || '@bench.test'))
	            ELSE jsonb_build_array(
	                     jsonb_build_object('address', 'user' || (i % 5 + 1) || '@bench.test'),
	                     jsonb_build_object('address', 'User' || ((i + 1) % 5 + 1) || '@Bench.test'),
	                     jsonb_build_object('address', 'team@bench.test'),
	                     jsonb_build_object('address', 'someone' || (i % 97) || '@outside.example'),
	                     jsonb_build_object('address', 'other' || (i % 89) || '@elsewhere.example'))
	            END,
	        'size_bytes', 4000 + (i * 37) % 20000,
	        'action', 'accept',
	        'reason', NULL,
	        'malformed', false,
	        'malformed_reasons', '[]'::jsonb,
	        'headers', jsonb_build_object(
	            'subject', CASE WHEN is_reply THEN 'Re: ' ELSE '' END || 'Quarterly report ' || i || ' – Grüße',
	            'from', jsonb_build_array(jsonb_build_object('name', 'Sender ' || (i % 300),
	                                                         'address', 'sender' || (i % 300) || '@outside.example')),
	            'sender', '[]'::jsonb,
	            'reply_to', '[]'::jsonb,
	            'to', jsonb_build_array(jsonb_build_object('name', NULL,
	                                                       'address', 'user' || (i % 5 + 1) || '@bench.test')),
	            'cc', '[]'::jsonb,
	            'date', to_char((timestamptz '2026-11-22 19:39:00+00' + i * interval '7 ms')
	                            AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
	            'date_raw', 'Sun, 22 Nov 2026 19:39:00 +0000',
	            'message_id', 'msg' || i || '.' || substr(r, 1, 8) || '@outside.example',
	            'in_reply_to', CASE WHEN is_reply
	                THEN jsonb_build_array('msg' || parent || '.' || substr(md5('bench' || parent), 1, 8) || '@outside.example')
	                ELSE '[]'::jsonb END,
	            'references', CASE WHEN is_reply
	                THEN jsonb_build_array('msg' || parent || '.' || substr(md5('bench' || parent), 1, 8) || '@outside.example')
	                ELSE '[]'::jsonb END,
	            'list_id', NULL,
	            'auto_submitted', NULL),
	        'parts', jsonb_build_array(
	            jsonb_build_object('part', '1', 'content_type', 'multipart/alternative', 'charset', NULL,
	                               'disposition', NULL, 'filename', NULL, 'cte', NULL, 'size_bytes', NULL, 'sha256', NULL),
	            jsonb_build_object('part', '1.1', 'content_type', 'text/plain', 'charset', 'utf-8',
	                               'disposition', NULL, 'filename', NULL, 'cte', 'quoted-printable',
	                               'size_bytes', 900, 'sha256', encode(sha256(('text' || i)::bytea), 'hex')),
	            jsonb_build_object('part', '1.2', 'content_type', 'text/html', 'charset', 'utf-8',
	                               'disposition', NULL, 'filename', NULL, 'cte', 'quoted-printable',
	                               'size_bytes', 2100, 'sha256', encode(sha256(('html' || i)::bytea), 'hex')),
	            jsonb_build_object('part', '2', 'content_type', 'image/png', 'charset', NULL,
	                               'disposition', 'inline', 'filename', 'logo.png', 'cte', 'base64',
	                               'size_bytes', 2048, 'sha256', encode(sha256('the company logo'::bytea), 'hex')),
	            jsonb_build_object('part', '3', 'content_type', 'application/pdf', 'charset', NULL,
	                               'disposition', 'attachment', 'filename', 'Bericht ' || i || '.pdf', 'cte', 'base64',
	                               'size_bytes', 48213 + i, 'sha256', encode(sha256(('report' || i)::bytea), 'hex'))),
	        'attachments', jsonb_build_array(
	            jsonb_build_object('part', '2', 'filename', 'logo.png', 'content_type', 'image/png',
	                               'disposition', 'inline', 'size_bytes', 2048,
	                               'sha256', encode(sha256('the company logo'::bytea), 'hex')),
	            jsonb_build_object('part', '3', 'filename', 'Bericht ' || i || '.pdf', 'content_type', 'application/pdf',
	                               'disposition', 'attachment', 'size_bytes', 48213 + i,
	                               'sha256', encode(sha256(('report' || i)::bytea), 'hex')))) AS doc
	      FROM d) docs
	 GROUP BY b ORDER BY b;
	EOF
	for ((k = 0; k < CLIENTS; k++)); do
		{
			# CPU of this backend (utime + stime, clock ticks) before and after.
			echo "SELECT 'cpu_start ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint"
			echo "     + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);"
			echo "SET ROLE mailmeta_milter;"
			awk -v k="$k" -v n="$CLIENTS" '(NR - 1) % n == k' "$work/batches.sql"
			echo "RESET ROLE;"
			echo "SELECT 'cpu_end ' || (split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 12)::bigint"
			echo "     + split_part(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ', 13)::bigint);"
		} >"$work/client-$k.sql"
	done
}

# run LABEL MIGRATIONS-DIR BATCH: prints one result line, sets RESULT_DPS
# (documents/s) and RESULT_CPU (backend CPU ms per document).
run() {
	local label=$1 dir=$2 batch=$3 db="${PREFIX}_$1_$3" k start end pids=()
	setup_db "$db" "$dir"
	generate "$db" "$batch"
	psql -XqAt -d "$db" -c "SELECT pg_stat_reset(); CHECKPOINT" >/dev/null
	start=$(date +%s.%N)
	for ((k = 0; k < CLIENTS; k++)); do
		psql -XqAt -d "$db" -f "$work/client-$k.sql" >"$work/out-$k" 2>"$work/err-$k" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || true; done
	end=$(date +%s.%N)
	local ticks=0 failed=0 hz
	hz=$(getconf CLK_TCK)
	for ((k = 0; k < CLIENTS; k++)); do
		ticks=$((ticks + $(awk '/^cpu_end/ { e = $2 } /^cpu_start/ { s = $2 } END { print e - s }' "$work/out-$k")))
		failed=$((failed + $(grep -c '^psql:.*ERROR' "$work/err-$k" || true)))
	done
	sleep 0.6   # the statistics collector flushes at most every 500 ms
	local stored fn_ms
	stored=$(psql -XAt -d "$db" -c "SELECT (SELECT count(*) FROM mail.messages) || ' messages, '
	            || (SELECT count(*) FROM mail.user_messages) || ' user rows, '
	            || (SELECT count(DISTINCT thread_id) FROM mail.messages) || ' threads'")
	fn_ms=$(psql -XAt -d "$db" -c "SELECT coalesce(round((sum(total_time) / $DOCS)::numeric, 3), 0)
	            FROM pg_stat_user_functions WHERE schemaname = 'mail' AND funcname = 'record_messages'")
	read -r RESULT_DPS RESULT_WALL RESULT_CPU < <(awk -v s="$start" -v e="$end" -v n="$DOCS" -v t="$ticks" -v hz="$hz" \
		'BEGIN { w = e - s; printf "%.0f %.3f %.3f\n", n / w, w * 1000 / n, t * 1000 / hz / n }')
	printf '%-7s batch %-3s %7s docs/s  wall %7s ms/doc  backend CPU %7s ms/doc  in record_messages %7s ms/doc  failed batches %s  (%s)\n' \
		"$label" "$batch" "$RESULT_DPS" "$RESULT_WALL" "$RESULT_CPU" "$fn_ms" "$failed" "$stored"
	if [ "$PROFILE" = 1 ]; then
		psql -XAt -F ' ' -d "$db" -c "SELECT '    ' || rpad(funcname, 20), lpad(calls::text, 8) || ' calls',
		            'self ' || round((self_time / $DOCS)::numeric, 3) || ' ms/doc',
		            'total ' || round((total_time / $DOCS)::numeric, 3) || ' ms/doc'
		       FROM pg_stat_user_functions WHERE schemaname = 'mail' ORDER BY self_time DESC LIMIT 12"
	fi
	if [ "$failed" -gt 0 ]; then sed 's/^/    /' "$work"/err-* | sort | uniq -c | sort -rn | head -5; fi
	dropdb "$db"
}

echo "record_messages: $DOCS documents, $CLIENTS concurrent connections, $(nproc) CPUs"
declare -A dps cpu
for batch in $BATCH_SIZES; do
	for label in before after; do
		run "$label" "$work/$label" "$batch"
		dps[$label.$batch]=$RESULT_DPS
		cpu[$label.$batch]=$RESULT_CPU
	done
done
for batch in $BATCH_SIZES; do
	awk -v b="$batch" -v d0="${dps[before.$batch]}" -v d1="${dps[after.$batch]}" \
		-v c0="${cpu[before.$batch]}" -v c1="${cpu[after.$batch]}" 'BEGIN {
		printf "batch %-3s after/before: throughput x%.2f, backend CPU per document x%.2f (%s -> %s ms)\n",
			b, d1 / d0, (c0 > 0 ? c1 / c0 : 0), c0, c1 }'
done
