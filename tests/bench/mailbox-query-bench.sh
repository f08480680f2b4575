#!/usr/bin/env bash
# mailbox-query-bench.sh - latency of the per-user mailbox queries
# (mail.list_folders, list_messages, list_unread, get_thread, get_message,
# list_contacts, suggest_contacts) on a large mailbox.
#
# Creates a scratch database, migrates it with sql/mailmeta-migrate.in and
# loads, with generate_series: a user with 500,000 messages in 20 folders
# (30% in INBOX, 10% unread, two years of internal dates, threads of four,
# every tenth message with an attachment) and 300 contacts, and a second
# user with 50,000 messages in 5 folders; every message has its metadata
# row (mail.messages), its per-user row and its mirror row, and the folder
# counters are set as mirror_messages keeps them. VACUUM ANALYZE, then each
# query runs RUNS times (default 200) in one session, each call timed on
# the server with clock_timestamp() around it (the rows are fetched and
# counted; the client round trip is not included), varying its arguments:
# the first page of INBOX and of a smaller folder, a deep page of INBOX
# (a cursor at a random position), the same for the unread messages, the
# thread and the message of a random one of the user's messages.
#
# Prints per query: calls, p50, p95 and max in ms, and the table sizes.
# Not a test: nothing passes or fails on a number. The goal it is measured
# against: a page of 50 and the folder list with counts within 5 ms p95.
#
# Needs the libpq environment (PGHOST, PGPORT, PGUSER, ...) of a superuser
# connection; creates and drops its own database (about 1 GB while it
# runs). Takes about a minute, most of it loading.
#
# usage: tests/bench/mailbox-query-bench.sh [RUNS]
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUNS=${1:-200}
DB="mailmeta_query_bench_$$"
case $RUNS in ''|*[!0-9]*) echo "usage: $0 [RUNS]" >&2; exit 2 ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/mailmeta-query-bench.XXXXXX")
cleanup() {
	dropdb --if-exists "$DB" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

q() { psql -XqAt -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

createdb "$DB"
PGDATABASE=$DB sh "$SRC_DIR/sql/mailmeta-migrate.in" --dir "$SRC_DIR/sql/migrations" >"$work/migrate.log" 2>&1 || {
	cat "$work/migrate.log" >&2
	exit 1
}

start=$(date +%s)
echo "loading: 500,000 messages in 20 folders, 50,000 in 5 folders ..."
q >/dev/null <<-'EOF'
	SET ROLE mailmeta_admin;
	SELECT mail.add_domain('bench.test');
	SELECT mail.add_user('big@bench.test', 'bench-password');
	SELECT mail.add_user('small@bench.test', 'bench-password');
	RESET ROLE;
	SELECT setseed(0.42);
	SET maintenance_work_mem = '256MB';
	SET synchronous_commit = off;

	-- Secondary indexes are built after the load (same definitions), which
	-- is much faster than maintaining them row by row.
	CREATE UNLOGGED TABLE bench_indexes AS
	SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
	  FROM pg_index i
	 WHERE i.indrelid IN ('mail.messages'::regclass, 'mail.mailbox_messages'::regclass,
	                      'mail.user_messages'::regclass, 'mail.attachment_parts'::regclass)
	   AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
	DO $$
	DECLARE r record;
	BEGIN
	    FOR r IN SELECT * FROM bench_indexes LOOP EXECUTE 'DROP INDEX ' || r.name; END LOOP;
	END
	$$;

	-- Folders: INBOX, Sent (\Sent), Folder 3 .. Folder 20 for big; five for small.
	INSERT INTO mail.folders (user_id, guid, name, special_use, subscribed, uidvalidity)
	SELECT u.user_id, md5(u.address || f), CASE f WHEN 1 THEN 'INBOX' WHEN 2 THEN 'Sent' ELSE 'Folder ' || f END,
	       CASE f WHEN 2 THEN '\Sent' END, true, 1
	  FROM mail.users u
	  CROSS JOIN LATERAL generate_series(1, CASE u.address WHEN 'big@bench.test' THEN 20 ELSE 5 END) f;

	-- The messages: n per user; 30% in INBOX, the rest spread over the other
	-- folders; internal dates over two years, newest last.
	CREATE UNLOGGED TABLE bench_msgs AS
	SELECT u.user_id, i,
	       CASE WHEN i % 10 < 3 THEN 1 ELSE 2 + i % (nf - 1) END AS folder_no,
	       ('0193f7a2-' || lpad(to_hex(u.user_id::integer), 4, '0') || '-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS mid,
	       timestamptz '2025-01-01' + (i * (730 * 86400 / n)) * interval '1 second' AS at,
	       ('0193f7a2-' || lpad(to_hex(u.user_id::integer), 4, '0') || '-7000-8000-'
	        || lpad(to_hex(i - (i - 1) % 4), 12, '0'))::uuid AS thread,
	       random() < 0.9 AS seen
	  FROM (SELECT user_id, address, CASE address WHEN 'big@bench.test' THEN 500000 ELSE 50000 END AS n,
	               CASE address WHEN 'big@bench.test' THEN 20 ELSE 5 END AS nf
	          FROM mail.users) u
	  CROSS JOIN LATERAL generate_series(1, u.n) i;

	INSERT INTO mail.messages (mailmeta_id, queue_id, received_at, direction, env_from, size_bytes,
	                           subject, header_from, addresses, sent_at, message_id, in_reply_to,
	                           action, thread_id, attachment_count)
	SELECT b.mid, upper(substr(md5(b.mid::text), 1, 11)), b.at, 'inbound', 'sender' || (b.i % 3000) || '@outside.example',
	       4000 + (b.i * 37) % 20000,
	       CASE WHEN b.i % 4 <> 1 THEN 'Re: ' ELSE '' END || 'Quarterly report ' || (b.i - (b.i - 1) % 4),
	       'sender' || (b.i % 3000) || '@outside.example',
	       jsonb_build_object('from', jsonb_build_array(jsonb_build_object('name', 'Sender ' || (b.i % 3000),
	                                                                       'address', 'sender' || (b.i % 3000) || '@outside.example')),
	                          'to', jsonb_build_array(jsonb_build_object('name', NULL, 'address', 'user@bench.test')),
	                          'sender', '[]'::jsonb, 'reply_to', '[]'::jsonb, 'cc', '[]'::jsonb),
	       b.at - interval '1 minute', b.mid || '@outside.example',
	       CASE WHEN b.i % 4 <> 1 THEN ARRAY[b.mid || '@outside.example'] ELSE '{}' END,
	       'accept', b.thread,
	       CASE WHEN b.i % 10 = 0 THEN 1 ELSE 0 END
	  FROM bench_msgs b;
	INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
	SELECT b.user_id, b.mid, b.at, b.thread FROM bench_msgs b;
	INSERT INTO mail.attachment_blobs (sha256, size_bytes, content_type)
	SELECT sha256(('blob' || k)::bytea), 10000 + k, 'application/pdf' FROM generate_series(1, 1000) k;
	INSERT INTO mail.attachment_parts (mailmeta_id, attachment_no, part, filename, content_type,
	                                   disposition, size_bytes, sha256)
	SELECT b.mid, 1, '2', 'report ' || b.i || '.pdf', 'application/pdf', 'attachment', 10000 + b.i % 1000,
	       sha256(('blob' || (b.i % 1000 + 1))::bytea)
	  FROM bench_msgs b WHERE b.i % 10 = 0;

	-- The mirror, with UIDs in internal-date order within each folder.
	INSERT INTO mail.mailbox_messages (user_id, folder_id, uid, mailmeta_id, internal_date, size_bytes,
	                                   modseq, seen, answered, flagged, keywords)
	SELECT b.user_id, f.folder_id, row_number() OVER (PARTITION BY b.user_id, b.folder_no ORDER BY b.i),
	       b.mid, b.at, 4000 + (b.i * 37) % 20000, b.i, b.seen, b.i % 7 = 0, b.i % 50 = 0,
	       CASE WHEN b.i % 20 = 0 THEN '{$label1}'::text[] ELSE '{}' END
	  FROM bench_msgs b
	  JOIN mail.folders f ON f.user_id = b.user_id
	   AND f.name = CASE b.folder_no WHEN 1 THEN 'INBOX' WHEN 2 THEN 'Sent' ELSE 'Folder ' || b.folder_no END;
	UPDATE mail.folders f
	   SET total = c.total, unread = c.unread, message_count = c.total,
	       uidnext = c.total + 1, highest_modseq = c.modseq, synced_at = now()
	  FROM (SELECT m.folder_id, count(*)::integer AS total, (count(*) FILTER (WHERE NOT m.seen))::integer AS unread,
	               max(m.modseq) AS modseq
	          FROM mail.mailbox_messages m GROUP BY m.folder_id) c
	 WHERE c.folder_id = f.folder_id;

	-- An address book of 300 entries for big.
	INSERT INTO mail.contacts (user_id, address, display_name, use_count, last_used, source)
	SELECT u.user_id, 'contact' || k || '@example' || (k % 7) || '.org', 'Contact ' || k, k % 40,
	       timestamptz '2026-01-01' + k * interval '1 day', 'auto'
	  FROM mail.users u, generate_series(1, 300) k WHERE u.address = 'big@bench.test';

	DO $$
	DECLARE r record;
	BEGIN
	    FOR r IN SELECT * FROM bench_indexes LOOP EXECUTE r.def; END LOOP;
	END
	$$;
	DROP TABLE bench_indexes;
	EOF

# Per run, a random message of big's and random deep positions in INBOX
# (all messages) and in its unread messages, as cursors.
q -v runs="$RUNS" <<-'EOF'
	SELECT setseed(0.7);
	CREATE TEMP TABLE inbox AS
	SELECT m.internal_date, m.uid, m.seen,
	       row_number() OVER (ORDER BY m.internal_date DESC, m.uid DESC) AS pos,
	       row_number() OVER (PARTITION BY m.seen ORDER BY m.internal_date DESC, m.uid DESC) AS pos_seen
	  FROM mail.mailbox_messages m
	  JOIN mail.folders f USING (user_id, folder_id)
	  JOIN mail.users u USING (user_id)
	 WHERE u.address = 'big@bench.test' AND f.name = 'INBOX';
	CREATE INDEX ON inbox (pos);
	CREATE INDEX ON inbox (seen, pos_seen);
	CREATE UNLOGGED TABLE bench_args AS
	WITH r AS (SELECT r, floor(random() * 500000)::integer + 1 AS i,
	                  floor(random() * 140000)::integer + 5000 AS deep, floor(random() * 12000)::integer + 1000 AS deep_unread
	             FROM generate_series(1, :runs) r)
	SELECT r.r AS run,
	       (SELECT b.mid FROM bench_msgs b JOIN mail.users u USING (user_id)
	         WHERE u.address = 'big@bench.test' AND b.i = r.i) AS mid,
	       (SELECT mail.encode_cursor(x.internal_date, x.uid) FROM inbox x WHERE x.pos = r.deep) AS deep_cursor,
	       (SELECT mail.encode_cursor(x.internal_date, x.uid) FROM inbox x
	         WHERE NOT x.seen AND x.pos_seen = r.deep_unread) AS deep_unread_cursor
	  FROM r;
	DROP TABLE bench_msgs;
	EOF
q -c "VACUUM ANALYZE"
echo "loaded in $(( $(date +%s) - start )) s"

q -F '|' <<-'EOF' | awk -F '|' '{ printf "  %-20s %8s rows %10s\n", $1, $2, $3 }'
	SELECT c.relname, c.reltuples::bigint, pg_size_pretty(pg_total_relation_size(c.oid))
	  FROM pg_class c
	 WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind = 'r'
	   AND c.relname IN ('messages', 'mailbox_messages', 'user_messages', 'attachment_parts', 'folders', 'contacts')
	 ORDER BY pg_total_relation_size(c.oid) DESC;
	EOF

echo "each query $RUNS times, server-side ms per call (rows fetched):"
q -v runs="$RUNS" <<-'EOF'
	CREATE TEMP TABLE timings (query text, ms double precision);
	DO $bench$
	DECLARE
	    a   record;
	    t0  timestamptz;
	    n   bigint;
	    q   record;
	BEGIN
	    FOR q IN SELECT * FROM (VALUES
	            (1, 'list_folders',                 'SELECT count(*) FROM mail.list_folders(''big@bench.test'')'),
	            (2, 'list_messages INBOX p1',       'SELECT count(*) FROM mail.list_messages(''big@bench.test'', ''INBOX'', NULL, 50)'),
	            (3, 'list_messages INBOX deep',     'SELECT count(*) FROM mail.list_messages(''big@bench.test'', ''INBOX'', $1, 50)'),
	            (4, 'list_messages Folder 7 p1',    'SELECT count(*) FROM mail.list_messages(''big@bench.test'', ''Folder 7'', NULL, 50)'),
	            (5, 'list_unread INBOX p1',         'SELECT count(*) FROM mail.list_unread(''big@bench.test'', ''INBOX'', NULL, 50)'),
	            (6, 'list_unread INBOX deep',       'SELECT count(*) FROM mail.list_unread(''big@bench.test'', ''INBOX'', $2, 50)'),
	            (7, 'get_thread',                   'SELECT count(*) FROM mail.get_thread(''big@bench.test'', $3)'),
	            (8, 'get_message',                  'SELECT count(*) FROM mail.get_message(''big@bench.test'', $3)'),
	            (9, 'list_contacts (300)',          'SELECT count(*) FROM mail.list_contacts(''big@bench.test'')'),
	            (10, 'suggest_contacts',            'SELECT count(*) FROM mail.suggest_contacts(''big@bench.test'', ''contact1'')'),
	            (11, 'list_folders (small user)',   'SELECT count(*) FROM mail.list_folders(''small@bench.test'')'),
	            (12, 'list_messages (small) p1',    'SELECT count(*) FROM mail.list_messages(''small@bench.test'', ''INBOX'', NULL, 50)'))
	        AS v (ord, name, sql) ORDER BY ord LOOP
	        -- one untimed call first: the session's plan caches and catalog lookups
	        SELECT * INTO a FROM bench_args ORDER BY run LIMIT 1;
	        EXECUTE q.sql INTO n USING a.deep_cursor, a.deep_unread_cursor, a.mid;
	        FOR a IN SELECT * FROM bench_args ORDER BY run LOOP
	            t0 := clock_timestamp();
	            EXECUTE q.sql INTO n USING a.deep_cursor, a.deep_unread_cursor, a.mid;
	            INSERT INTO timings VALUES (lpad(q.ord::text, 2, '0') || ' ' || q.name,
	                                        1000 * extract(epoch FROM clock_timestamp() - t0));
	        END LOOP;
	    END LOOP;
	END
	$bench$;
	SELECT format('  %-28s %5s calls   p50 %7s ms   p95 %7s ms   max %7s ms',
	              substr(query, 4), count(*),
	              to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 'FM990.000'),
	              to_char(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms), 'FM990.000'),
	              to_char(max(ms), 'FM990.000'))
	  FROM timings GROUP BY query ORDER BY query;
	EOF
echo "done in $(( $(date +%s) - start )) s"
