-- 09_mailbox_mirror.sql — the mailbox mirror's write API
-- (doc/mailbox-mirror.md), called as mailmeta_mirror: folder lists with
-- renames, swaps and deletions; batches of absolute state with the folder's
-- total and unread counters checked after upserts, flag changes, expunges,
-- resets, UIDVALIDITY changes and folder deletion; unchanged rows not
-- rewritten; synced state and drift; metadata recorded from a mailbox
-- (direction "mailbox", idempotent, the user's row); forgetting a mirror;
-- deleting a user; every refused argument with its SQLSTATE and message,
-- nothing changed; the ids of the messages the mirror holds; and that
-- mailmeta_mirror reaches its seven functions and nothing else.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(192);
\ir 06_helpers.psql
\ir mirror_helpers.psql

-- ------------------------------------------------------------ structure
SELECT has_table('mail', 'folders', 'has table mail.folders');
SELECT has_table('mail', 'mailbox_messages', 'has table mail.mailbox_messages');
SELECT columns_are('mail', 'folders', ARRAY['folder_id', 'user_id', 'guid', 'name', 'special_use',
    'subscribed', 'uidvalidity', 'uidnext', 'highest_modseq', 'message_count', 'total', 'unread',
    'synced_at', 'created_at']);
SELECT col_is_pk('mail', 'folders', 'folder_id', 'folders keyed by a surrogate folder_id');
SELECT col_is_unique('mail', 'folders', ARRAY['user_id', 'guid'], 'folders unique by (user_id, guid)');
SELECT col_is_unique('mail', 'folders', ARRAY['user_id', 'name'], 'folders unique by (user_id, name)');
SELECT fk_ok('mail', 'folders', 'user_id', 'mail', 'users', 'user_id');
SELECT columns_are('mail', 'mailbox_messages', ARRAY['user_id', 'folder_id', 'uid', 'mailmeta_id',
    'internal_date', 'size_bytes', 'modseq', 'seen', 'answered', 'flagged', 'deleted', 'draft',
    'keywords']);
SELECT col_is_pk('mail', 'mailbox_messages', ARRAY['user_id', 'folder_id', 'uid'],
                 'mailbox_messages keyed by (user_id, folder_id, uid)');
SELECT fk_ok('mail', 'mailbox_messages', ARRAY['user_id', 'folder_id'], 'mail', 'folders', ARRAY['user_id', 'folder_id']);
SELECT col_type_is('mail', 'mailbox_messages', 'keywords', 'text[]', 'keywords are text[]');
SELECT col_type_is('mail', 'mailbox_messages', 'seen', 'boolean', 'system flags are booleans');
SELECT has_index('mail', 'mailbox_messages', 'mailbox_messages_date_idx',
                 ARRAY['user_id', 'folder_id', 'internal_date', 'uid'], 'a folder lists by (user_id, folder_id, internal_date, uid)');
SELECT is(pg_get_indexdef('mail.mailbox_messages_unread_idx'::regclass),
          'CREATE INDEX mailbox_messages_unread_idx ON mail.mailbox_messages USING btree (user_id, folder_id, internal_date DESC, uid DESC) WHERE (NOT seen)',
          'unread messages have a partial index');
SELECT has_index('mail', 'mailbox_messages', 'mailbox_messages_mailmeta_id_idx',
                 ARRAY['user_id', 'mailmeta_id'], 'a user''s copies of a message by (user_id, mailmeta_id)');
SELECT is((SELECT array_agg(c.confdeltype::text ORDER BY c.conname) FROM pg_constraint c
            WHERE c.conrelid IN ('mail.folders'::regclass, 'mail.mailbox_messages'::regclass)
              AND c.contype = 'f'),
          ARRAY['c', 'c'], 'folders go with their user, messages with their folder');
SELECT function_returns('mail', 'mirror_folders', ARRAY['text', 'jsonb'], 'setof record');
SELECT function_returns('mail', 'mirror_messages', ARRAY['text', 'text', 'jsonb'], 'setof record');
SELECT function_returns('mail', 'mirror_folder_done', ARRAY['text', 'text', 'bigint', 'bigint', 'bigint', 'integer'], 'boolean');
SELECT function_returns('mail', 'mirror_forget', ARRAY['text'], 'void');
SELECT function_returns('mail', 'record_mailbox_message', ARRAY['text', 'jsonb'], 'void');
SELECT function_returns('mail', 'record_mailbox_messages', ARRAY['text', 'jsonb'], 'void');
SELECT is(pg_get_function_result('mail.mirror_folders(text,jsonb)'::regprocedure),
          'TABLE(guid text, uidvalidity bigint, uidnext bigint, highest_modseq bigint, message_count integer)',
          'mirror_folders returns the recorded state of each folder');
SELECT is(pg_get_function_result('mail.mirror_messages(text,text,jsonb)'::regprocedure),
          'TABLE(uid bigint, mailmeta_id uuid)', 'mirror_messages returns (uid, mailmeta_id)');

-- ------------------------------------------------------------ users
SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
END
$$;
RESET ROLE;

-- ------------------------------------------------------------ folders
SET LOCAL ROLE mailmeta_mirror;
SELECT results_eq($$
    SELECT guid, uidvalidity, uidnext, highest_modseq, message_count
      FROM mail.mirror_folders('Alice@Example.TEST', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(3), 'name', 'Archive', 'special_use', NULL, 'subscribed', false),
          jsonb_build_object('guid', upper(pg_temp.guid(1)), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent', 'special_use', '\Sent', 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(4), 'name', 'Trash', 'special_use', '\Trash')))$$,
    $$VALUES (pg_temp.guid(3), NULL::bigint, NULL::bigint, NULL::bigint, NULL::integer),
             (pg_temp.guid(1), NULL, NULL, NULL, NULL), (pg_temp.guid(2), NULL, NULL, NULL, NULL),
             (pg_temp.guid(4), NULL, NULL, NULL, NULL)$$,
    'a first folder list: every folder in list order, never synced, guids lowercased');
SELECT is(mail.mirror_folders('bob@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(11), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true)))::text,
          '(' || pg_temp.guid(11) || ',,,,)', 'bob has his own INBOX');
RESET ROLE;
SELECT results_eq($$SELECT f.name, f.special_use, f.subscribed, f.total, f.unread
                     FROM mail.folders f JOIN mail.users u USING (user_id)
                    WHERE u.address = 'alice@example.test' ORDER BY f.guid$$,
    $$VALUES ('INBOX', NULL::text, true, 0, 0), ('Sent', '\Sent', true, 0, 0),
             ('Archive', NULL, false, 0, 0), ('Trash', '\Trash', false, 0, 0)$$,
    'folders are stored with name, special use, subscription and empty counters');
CREATE TEMP TABLE ids AS SELECT f.guid, f.folder_id FROM mail.folders f;
GRANT SELECT ON ids TO PUBLIC;

SET LOCAL ROLE mailmeta_mirror;
SELECT is((SELECT count(*)::int FROM mail.mirror_folders('alice@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(1), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent', 'special_use', '\Sent', 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(3), 'name', 'Trash', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(4), 'name', 'Archive', 'special_use', '\Trash', 'subscribed', false)))),
          4, 'two folders swap their names in one list');
RESET ROLE;
SELECT results_eq($$SELECT f.guid, f.name, f.folder_id FROM mail.folders f
                     WHERE f.guid IN (pg_temp.guid(3), pg_temp.guid(4)) ORDER BY f.guid$$,
    $$SELECT guid, v.name, folder_id FROM ids JOIN (VALUES (pg_temp.guid(3), 'Trash'), (pg_temp.guid(4), 'Archive')) v (g, name)
        ON v.g = ids.guid ORDER BY guid$$,
    'a rename keeps the folder (same folder_id, new name)');

-- ------------------------------------------------------------ messages
SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(7, jsonb_build_array(
          pg_temp.msg(1, 1, ARRAY['\Seen'], '2026-11-01T10:00:00Z'),
          pg_temp.msg(2, 2, '{}', '2026-11-02T10:00:00Z', '{$label1}'),
          pg_temp.msg(3, 3, ARRAY['\Flagged', '\Answered', '$Forwarded'], '2026-11-03T10:00:00+02:00'),
          pg_temp.msg(4, 4, ARRAY['\seen', '\DRAFT', '\Deleted', '\Recent'], '2026-11-04T10:00:00Z')), '{}', true)),
          ARRAY[1, 2, 3, 4]::bigint[], 'a first batch returns every message without metadata');
RESET ROLE;
SELECT results_eq($$SELECT uid, mailmeta_id, internal_date, size_bytes, modseq, seen, answered, flagged, deleted, draft, keywords
                     FROM mail.mailbox_messages m JOIN ids USING (folder_id)
                    WHERE ids.guid = pg_temp.guid(1) ORDER BY uid$$,
    $$VALUES (1::bigint, pg_temp.mid(1), '2026-11-01T10:00:00Z'::timestamptz, 1001::bigint, 1::bigint, true, false, false, false, false, '{}'::text[]),
             (2, pg_temp.mid(2), '2026-11-02T10:00:00Z', 1002, 2, false, false, false, false, false, '{$label1}'),
             (3, pg_temp.mid(3), '2026-11-03T08:00:00Z', 1003, 3, false, true, true, false, false, '{$Forwarded}'),
             (4, pg_temp.mid(4), '2026-11-04T10:00:00Z', 1004, 4, true, false, false, true, true, '{}')$$,
    'messages stored with system flags as booleans (any case, \Recent dropped), keywords, internal date, size and modseq');
SELECT results_eq($$SELECT total, unread, uidvalidity FROM mail.folders WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (4, 2, 7::bigint)$$, 'counters after the first batch: 4 messages, 2 unread');

SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(7, jsonb_build_array(
          pg_temp.msg(5, 5, '{}', '2026-11-05T10:00:00Z'), pg_temp.msg(6, 6, '{}', '2026-11-06T10:00:00Z')))),
          ARRAY[5, 6]::bigint[], 'a second batch adds to the folder');
RESET ROLE;
SELECT results_eq($$SELECT total, unread FROM mail.folders WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (6, 4)$$, 'counters after the second batch: 6 messages, 4 unread');
CREATE TEMP TABLE before_rows AS
    SELECT uid, m.ctid::text AS row_version FROM mail.mailbox_messages m JOIN ids USING (folder_id) WHERE ids.guid = pg_temp.guid(1);

SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(7, jsonb_build_array(
          pg_temp.msg(2, 2, ARRAY['\Seen'], '2026-11-02T10:00:00Z', '{$label1}'),
          pg_temp.msg(1, 1, '{}', '2026-11-01T10:00:00Z'),
          pg_temp.msg(3, 3, ARRAY['\Flagged', '\Answered', '$Forwarded'], '2026-11-03T10:00:00+02:00')))),
          ARRAY[1, 2, 3]::bigint[], 'flag changes: every upserted message still lacking metadata is returned');
RESET ROLE;
SELECT results_eq($$SELECT uid, seen FROM mail.mailbox_messages m JOIN ids USING (folder_id)
                    WHERE ids.guid = pg_temp.guid(1) AND uid IN (1, 2) ORDER BY uid$$,
    $$VALUES (1::bigint, false), (2, true)$$, 'an upsert replaces the flags (absolute state)');
SELECT results_eq($$SELECT total, unread FROM mail.folders WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (6, 4)$$, 'counters after one message read and one unread: unchanged');
SELECT is((SELECT m.ctid::text FROM mail.mailbox_messages m JOIN ids USING (folder_id)
            WHERE ids.guid = pg_temp.guid(1) AND m.uid = 3),
          (SELECT row_version FROM before_rows WHERE uid = 3),
          'an unchanged message is not rewritten');
SELECT isnt((SELECT m.ctid::text FROM mail.mailbox_messages m JOIN ids USING (folder_id)
              WHERE ids.guid = pg_temp.guid(1) AND m.uid = 2),
            (SELECT row_version FROM before_rows WHERE uid = 2),
            'a changed message is rewritten');

SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(7, jsonb_build_array(
          pg_temp.msg(7, 7, '{}', '2026-11-07T10:00:00Z'), pg_temp.msg(6, 6, '{}', '2026-11-06T10:00:00Z')),
          '{1,6,99}')),
          ARRAY[7]::bigint[], 'expunges: a UID both upserted and expunged is expunged, an unknown UID ignored');
RESET ROLE;
SELECT results_eq($$SELECT array_agg(uid ORDER BY uid) FROM mail.mailbox_messages m JOIN ids USING (folder_id)
                    WHERE ids.guid = pg_temp.guid(1)$$,
    $$VALUES (ARRAY[2, 3, 4, 5, 7]::bigint[])$$, 'expunged messages are deleted');
SELECT results_eq($$SELECT total, unread FROM mail.folders WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (5, 3)$$, 'counters after expunging an unread and an unread-then-upserted message and adding one');
SELECT is_empty('SELECT * FROM pg_temp.bad_counters()', 'every folder''s counters match its messages');

-- ------------------------------------------------------------ known ids
SET LOCAL ROLE mailmeta_mirror;
SELECT results_eq($$SELECT uid FROM mail.mirror_message_ids('alice@example.test', pg_temp.guid(1), 7, '{7,2,6,99}')$$,
    $$VALUES (2::bigint), (7::bigint)$$,
    'mirror_message_ids: the UIDs the mirror holds, by UID; an expunged or unknown UID is not');
SELECT is((SELECT mailmeta_id FROM mail.mirror_message_ids('alice@example.test', pg_temp.guid(1), 7, '{7}')),
          pg_temp.mid(7), '... with their ids');
SELECT is_empty($$SELECT * FROM mail.mirror_message_ids('alice@example.test', pg_temp.guid(1), 8, '{2,7}')$$,
    'nothing under another UIDVALIDITY');
SELECT is_empty($$SELECT * FROM mail.mirror_message_ids('alice@example.test', pg_temp.guid(99), 7, '{2}')$$,
    'nothing for a folder the mirror does not know');
SELECT is_empty($$SELECT * FROM mail.mirror_message_ids('alice@example.test', pg_temp.guid(1), 7, NULL)$$,
    'nothing for no UIDs');
SELECT throws_ok($$SELECT * FROM mail.mirror_message_ids('alice@example.test', 'INBOX', 7, '{2}')$$,
    '22023', 'invalid folder for ''alice@example.test'': guid ''INBOX'' is not 32 hex digits',
    'mirror_message_ids refuses a malformed guid');
SELECT throws_ok($$SELECT * FROM mail.mirror_message_ids('nobody@example.test', pg_temp.guid(1), 7, '{2}')$$,
    'P0002', NULL, 'mirror_message_ids refuses an unknown user');
RESET ROLE;

-- ------------------------------------------------------------ synced state
SET LOCAL ROLE mailmeta_mirror;
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 7, 8, 17, 5), true,
          'mirror_folder_done with the mirror''s count: true');
SELECT results_eq($$SELECT guid, uidvalidity, uidnext, highest_modseq, message_count
                     FROM mail.mirror_folders('alice@example.test', jsonb_build_array(
                         jsonb_build_object('guid', pg_temp.guid(1), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
                         jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent', 'special_use', '\Sent', 'subscribed', true),
                         jsonb_build_object('guid', pg_temp.guid(3), 'name', 'Trash', 'special_use', NULL, 'subscribed', true),
                         jsonb_build_object('guid', pg_temp.guid(4), 'name', 'Archive', 'special_use', '\Trash', 'subscribed', false)))
                    WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (pg_temp.guid(1), 7::bigint, 8::bigint, 17::bigint, 5)$$,
    'mirror_folders returns the recorded state');
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 7, 9, 18, 6), false,
          'mirror_folder_done with another count: false (drift)');
RESET ROLE;
SELECT results_eq($$SELECT uidvalidity, uidnext, highest_modseq, message_count FROM mail.folders WHERE guid = pg_temp.guid(1)$$,
    $$VALUES (7::bigint, NULL::bigint, NULL::bigint, NULL::integer)$$,
    'after drift no state is recorded: the next sync sends the folder in full');
SET LOCAL ROLE mailmeta_mirror;
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 8, 9, 18, 5), false,
          'mirror_folder_done with the count but another UIDVALIDITY: false');
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(4), 3, 1, NULL, 0), true,
          'an empty folder takes any UIDVALIDITY, and HIGHESTMODSEQ may be unknown');
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 7, 8, 17, 5), true,
          'the folder in step again');
RESET ROLE;

-- ------------------------------------------------------------ resets
SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(7, jsonb_build_array(
          pg_temp.msg(3, 3, '{}', '2026-11-03T10:00:00Z'), pg_temp.msg(8, 8, ARRAY['\Seen'], '2026-11-08T10:00:00Z')),
          '{}', true)),
          ARRAY[3, 8]::bigint[], 'a reset batch');
RESET ROLE;
SELECT results_eq($$SELECT array_agg(uid ORDER BY uid), min(f.total), min(f.unread), min(f.uidnext), min(f.message_count)
                     FROM mail.mailbox_messages m JOIN mail.folders f USING (user_id, folder_id)
                    WHERE f.guid = pg_temp.guid(1)$$,
    $$VALUES (ARRAY[3, 8]::bigint[], 2, 1, NULL::bigint, NULL::integer)$$,
    'a reset empties the folder first, recounts and forgets the synced state');
SET LOCAL ROLE mailmeta_mirror;
SELECT is(mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 7, 9, 20, 2), true, 'synced after the reset');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(9, jsonb_build_array(
          pg_temp.msg(1, 9, '{}', '2026-11-09T10:00:00Z')))),
          ARRAY[1]::bigint[], 'a batch with a new UIDVALIDITY (reset false)');
RESET ROLE;
SELECT results_eq($$SELECT array_agg(m.mailmeta_id ORDER BY uid), min(f.total), min(f.unread), min(f.uidvalidity), min(f.highest_modseq)
                     FROM mail.mailbox_messages m JOIN mail.folders f USING (user_id, folder_id)
                    WHERE f.guid = pg_temp.guid(1)$$,
    $$VALUES (ARRAY[pg_temp.mid(9)], 1, 1, 9::bigint, NULL::bigint)$$,
    'a new UIDVALIDITY empties the folder like a reset');

-- A full folder in batches of 1000, then a thousand flag changes.
SET LOCAL ROLE mailmeta_mirror;
SELECT is(cardinality(pg_temp.sync('alice@example.test', pg_temp.guid(3), pg_temp.batch(1,
          (SELECT jsonb_agg(pg_temp.msg(i, 1000 + i, CASE WHEN i % 4 = 0 THEN ARRAY['\Seen'] ELSE '{}'::text[] END,
                                        '2026-10-01T00:00:00Z')) FROM generate_series(1, 1000) i),
          '{}', true))), 1000, 'a batch of 1000 messages');
SELECT is(cardinality(pg_temp.sync('alice@example.test', pg_temp.guid(3), pg_temp.batch(1,
          (SELECT jsonb_agg(pg_temp.msg(i, 1000 + i, CASE WHEN i % 2 = 0 THEN ARRAY['\Seen'] ELSE '{}'::text[] END,
                                        '2026-10-01T00:00:00Z')) FROM generate_series(501, 1500) i),
          (SELECT array_agg(i) FROM generate_series(1, 100) i)))), 1000, 'a batch of 500 changes, 500 new, 100 expunges');
RESET ROLE;
SELECT results_eq($$SELECT total, unread FROM mail.folders WHERE guid = pg_temp.guid(3)$$,
    $$VALUES (1400, 800)$$, 'counters after large batches');
SELECT is_empty('SELECT * FROM pg_temp.bad_counters()', 'every folder''s counters still match its messages');

-- A folder no longer listed goes, with its messages; the others keep theirs.
SET LOCAL ROLE mailmeta_mirror;
SELECT is((SELECT count(*)::int FROM mail.mirror_folders('alice@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(1), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent', 'special_use', '\Sent', 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(4), 'name', 'Archive', 'special_use', '\Trash', 'subscribed', false)))),
          3, 'a folder list without Trash');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.mailbox_messages m JOIN ids USING (folder_id) WHERE ids.guid = pg_temp.guid(3)),
          0, 'the deleted folder''s messages are gone');
SELECT results_eq($$SELECT name, total, unread FROM mail.folders f JOIN mail.users u USING (user_id)
                    WHERE u.address = 'alice@example.test' ORDER BY name$$,
    $$VALUES ('Archive', 0, 0), ('INBOX', 1, 1), ('Sent', 0, 0)$$,
    'the other folders keep their messages and counters');
SELECT is_empty('SELECT * FROM pg_temp.bad_counters()', 'counters match after the folder deletion');

-- ------------------------------------------------------------ metadata from a mailbox
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.doc(9, '{"recipients": [{"address": "bob@example.test"}]}',
                                       '{"message_id": "<nine@example.net>"}'));
RESET ROLE;
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(9,
    '{"direction": "mailbox", "recipients": [], "queue_id": null, "client": null, "env_from": null}'))$$,
    'recording a message the milter recorded already');
RESET ROLE;
SELECT results_eq($$SELECT direction, queue_id, env_from FROM mail.messages WHERE mailmeta_id = pg_temp.mid(9)$$,
    $$VALUES ('inbound', 'Q9', 'sender@example.net')$$, 'the milter''s metadata is kept as it is');
SELECT results_eq($$SELECT u.address, um.thread_id FROM mail.user_messages um JOIN mail.users u USING (user_id)
                    WHERE um.mailmeta_id = pg_temp.mid(9) ORDER BY 1$$,
    $$VALUES ('alice@example.test', pg_temp.mid(9)), ('bob@example.test', pg_temp.mid(9))$$,
    'the mailbox user gets a per-user row next to the recipient''s');

SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(2), pg_temp.batch(2, jsonb_build_array(
          pg_temp.msg(1, 20, ARRAY['\Seen'], '2026-11-20T10:00:00Z'), pg_temp.msg(2, 9, '{}', '2026-11-20T11:00:00Z')), '{}', true)),
          ARRAY[1]::bigint[], 'only the message without metadata is returned');
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(20,
    '{"direction": "mailbox", "recipients": [], "queue_id": "Q", "client": {"ip": "192.0.2.1"}, "tls": {"version": "TLSv1.3"},
      "sasl_user": "x", "env_from": "x@example.net", "received_at": "2026-11-20T10:00:00Z"}',
    '{"message_id": "<twenty@example.test>", "in_reply_to": ["nine@example.net"]}'))$$,
    'recording a message found in a mailbox');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(2), pg_temp.batch(2, jsonb_build_array(
          pg_temp.msg(1, 20, ARRAY['\Seen'], '2026-11-20T10:00:00Z')))),
          '{}'::bigint[], 'once recorded, its metadata is no longer reported missing');
RESET ROLE;
SELECT results_eq($$SELECT direction, queue_id, client_ip, tls_version, sasl_user, env_from, received_at, thread_id, message_id
                     FROM mail.messages WHERE mailmeta_id = pg_temp.mid(20)$$,
    $$VALUES ('mailbox', NULL::text, NULL::inet, NULL::text, NULL::text, NULL::text,
              '2026-11-20T10:00:00Z'::timestamptz, pg_temp.mid(9), 'twenty@example.test')$$,
    'stored with direction mailbox, the envelope ignored, threaded with its parent');
SELECT is((SELECT count(*)::int FROM mail.message_recipients WHERE mailmeta_id = pg_temp.mid(20)), 0,
          'a mailbox record has no recipients');
SELECT results_eq($$SELECT u.address FROM mail.user_messages um JOIN mail.users u USING (user_id)
                    WHERE um.mailmeta_id = pg_temp.mid(20)$$,
    $$VALUES ('alice@example.test')$$, 'and one per-user row, the mailbox user''s');
SET LOCAL ROLE mailmeta_mirror;
CREATE TEMP TABLE st AS SELECT pg_temp.state() AS s;
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(20,
    '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-20T10:00:00Z"}',
    '{"message_id": "<twenty@example.test>", "in_reply_to": ["nine@example.net"]}'))$$,
    'recording it again');
SELECT is(pg_temp.state(), (SELECT s FROM st), 'recording again changes nothing (idempotent by mailmeta_id)');
RESET ROLE;

-- many at once: one call, the same result as one call each
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(40, '{"direction": "mailbox", "recipients": [], "queue_id": "Q", "received_at": "2026-11-20T12:00:00Z"}',
                '{"message_id": "<forty@example.test>"}'),
    pg_temp.doc(41, '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-20T12:01:00Z"}',
                '{"message_id": "<forty-one@example.test>", "in_reply_to": ["forty@example.test"]}'),
    pg_temp.doc(20, '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-20T10:00:00Z"}',
                '{"message_id": "<twenty@example.test>"}'),
    pg_temp.doc(40, '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-20T12:00:00Z"}',
                '{"message_id": "<forty@example.test>"}')))$$,
    'record_mailbox_messages: new, recorded and repeated documents in one array');
RESET ROLE;
SELECT results_eq($$SELECT mailmeta_id, direction, queue_id, thread_id FROM mail.messages
                     WHERE mailmeta_id IN (pg_temp.mid(40), pg_temp.mid(41)) ORDER BY 1$$,
    $$VALUES (pg_temp.mid(40), 'mailbox', NULL::text, pg_temp.mid(40)), (pg_temp.mid(41), 'mailbox', NULL, pg_temp.mid(40))$$,
    'record_mailbox_messages: each new one stored once, envelope ignored, threaded within the array');
SELECT results_eq($$SELECT um.mailmeta_id, um.thread_id FROM mail.user_messages um
                     WHERE um.user_id = mail.user_id_of('alice@example.test')
                       AND um.mailmeta_id IN (pg_temp.mid(40), pg_temp.mid(41)) ORDER BY 1$$,
    $$VALUES (pg_temp.mid(40), pg_temp.mid(40)), (pg_temp.mid(41), pg_temp.mid(40))$$,
    'record_mailbox_messages: the user''s rows, in the right thread');
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_messages('alice@example.test', '[]')$$,
    'record_mailbox_messages: an empty array is nothing to do');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('alice@example.test', '{}')$$,
    '22023', 'record_mailbox_messages wants a JSON array of metadata documents, not object',
    'record_mailbox_messages: not an array');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('nobody@example.test', '[]')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'record_mailbox_messages: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(42, '{"direction": "mailbox", "recipients": []}'), pg_temp.doc(43, '{"recipients": []}')))$$,
    '22023', 'invalid metadata document 2 of 2 (0193f7a2-0000-7000-8000-000000000043): direction ''inbound'' is not mailbox',
    'record_mailbox_messages: one document of another direction refuses them all');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(42, '{"direction": "mailbox"}')))$$,
    '22023', 'invalid metadata document 1 of 1 (0193f7a2-0000-7000-8000-000000000042): recipients must be empty: a message found in a mailbox has no envelope',
    'record_mailbox_messages: recipients');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(42, '{"direction": "mailbox", "recipients": []}'), '"text"'::jsonb))$$,
    '22023', 'invalid metadata document 2 of 2: the document must be a JSON object, not string',
    'record_mailbox_messages: not an object');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(42, '{"direction": "mailbox", "recipients": []}'),
    pg_temp.doc(43, '{"direction": "mailbox", "recipients": [], "version": 2}')))$$,
    '22023', 'invalid metadata document 2 of 2 (0193f7a2-0000-7000-8000-000000000043): unsupported version 2 (expected 1)',
    'record_mailbox_messages: what record_messages refuses');
RESET ROLE;

-- ------------------------------------------------------------ the milter's record arrives late
-- (journaled while PostgreSQL was away): it completes the mailbox record
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_messages('alice@example.test', jsonb_build_array(
    pg_temp.doc(50, '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-22T20:00:00Z"}',
                '{"message_id": "<fifty@example.net>"}')))$$,
    'a delivered message recorded from the mailbox first');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT count(*) FROM mail.record_messages(mail.record_verdicts(mail.adopt_milter_records(
    jsonb_build_array(pg_temp.doc(50, '{"recipients": [{"address": "alice@example.test"}, {"address": "bob@example.test"},
                                                       {"address": "friend@example.org"}]}',
                                  '{"message_id": "<fifty@example.net>"}')))))$$,
    'then the milter''s record of it, from its journal');
RESET ROLE;
SELECT results_eq($$SELECT direction, queue_id, env_from, client_ip, received_at, message_id FROM mail.messages
                     WHERE mailmeta_id = pg_temp.mid(50)$$,
    $$VALUES ('inbound', 'Q50', 'sender@example.net', '192.0.2.10'::inet, '2026-11-22T19:40:00Z'::timestamptz, 'fifty@example.net')$$,
    'the record now has the milter''s envelope, session and time');
SELECT results_eq($$SELECT rcpt, user_id IS NOT NULL FROM mail.message_recipients WHERE mailmeta_id = pg_temp.mid(50) ORDER BY 1$$,
    $$VALUES ('alice@example.test', true), ('bob@example.test', true), ('friend@example.org', false)$$,
    'and its recipients');
SELECT results_eq($$SELECT u.address, um.received_at FROM mail.user_messages um JOIN mail.users u USING (user_id)
                     WHERE um.mailmeta_id = pg_temp.mid(50) ORDER BY 1$$,
    $$VALUES ('alice@example.test', '2026-11-22T19:40:00Z'::timestamptz), ('bob@example.test', '2026-11-22T19:40:00Z')$$,
    'every local recipient has a per-user row, dated as the milter dated the message');
SET LOCAL ROLE mailmeta_milter;
CREATE TEMP TABLE st50 AS SELECT pg_temp.state() AS s;
SELECT lives_ok($$SELECT count(*) FROM mail.record_messages(mail.record_verdicts(mail.adopt_milter_records(
    jsonb_build_array(pg_temp.doc(50, '{"queue_id": "OTHER", "recipients": [{"address": "alice@example.test"}]}',
                                  '{"message_id": "<fifty@example.net>"}')))))$$,
    'the milter''s record replayed once more');
SELECT is(pg_temp.state(), (SELECT s FROM st50), 'changes nothing: only a mailbox record is completed, once');
SELECT is(mail.adopt_milter_records('"not an array"'::jsonb), '"not an array"'::jsonb,
          'adopt_milter_records passes anything else on for record_messages to judge');
RESET ROLE;

-- ------------------------------------------------------------ refused arguments
SET LOCAL ROLE mailmeta_mirror;
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('nobody@example.test', '[]')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'mirror_folders: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('not an address', '[]')$$,
    '22023', 'invalid address ''not an address'': expected exactly one "@", as in local-part@domain',
    'mirror_folders: malformed address');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test', '{}')$$,
    '22023', 'invalid folder list for ''alice@example.test'': folders must be a JSON array, not object',
    'mirror_folders: not an array');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test',
    '[{"guid": "00000000000000000000000000000001", "name": "INBOX"}, {"guid": "xyz", "name": "Sent"}]')$$,
    '22023', 'invalid folder list for ''alice@example.test'': folder 2 of 2: guid "xyz" is not 32 hex digits',
    'mirror_folders: a bad guid');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test',
    '[{"guid": "00000000000000000000000000000001", "name": ""}]')$$,
    '22023', 'invalid folder list for ''alice@example.test'': folder 1 of 1: name must be a non-empty string',
    'mirror_folders: an empty name');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test',
    '[{"guid": "00000000000000000000000000000001", "name": "INBOX", "subscribed": "yes"}]')$$,
    '22023', 'invalid folder list for ''alice@example.test'': folder 1 of 1: subscribed must be true or false',
    'mirror_folders: subscribed not a boolean');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test',
    '[{"guid": "00000000000000000000000000000001", "name": "INBOX"}, {"guid": "00000000000000000000000000000001", "name": "Sent"}]')$$,
    '22023', 'invalid folder list for ''alice@example.test'': guid 00000000000000000000000000000001 is listed twice',
    'mirror_folders: a guid twice');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_folders('alice@example.test',
    '[{"guid": "00000000000000000000000000000001", "name": "INBOX"}, {"guid": "00000000000000000000000000000002", "name": "INBOX"}]')$$,
    '22023', 'invalid folder list for ''alice@example.test'': name ''INBOX'' is listed twice',
    'mirror_folders: a name twice');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('nobody@example.test', '00000000000000000000000000000001', '{}')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'mirror_messages: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', '00000000000000000000000000000099',
    pg_temp.batch(7))$$,
    'P0002', 'folder 00000000000000000000000000000099 of user ''alice@example.test'' does not exist',
    'mirror_messages: unknown folder');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', 'INBOX', pg_temp.batch(7))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': guid ''INBOX'' is not 32 hex digits',
    'mirror_messages: a bad guid');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1), '[]')$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': the batch must be a JSON object, not array',
    'mirror_messages: not an object');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1), pg_temp.batch(0))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': uidvalidity 0 is not an integer from 1 to 4294967295',
    'mirror_messages: uidvalidity 0');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5), pg_temp.msg(4294967296, 6))))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 2 of 2: uid 4294967296 is not an integer from 1 to 4294967295',
    'mirror_messages: a UID out of range');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5) || '{"mailmeta_id": "nope"}')))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 1 of 1: mailmeta_id "nope" is not a UUID',
    'mirror_messages: a bad mailmeta_id');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5, '{}', 'yesterday'))))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 1 of 1: internal_date "yesterday" is not an RFC 3339 date-time with offset',
    'mirror_messages: a bad internal date');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5) || '{"flags": "\\Seen"}')))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 1 of 1: flags must be an array of strings',
    'mirror_messages: flags not an array');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5) || '{"size": -1}')))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 1 of 1: size must be a non-negative integer or null',
    'mirror_messages: a negative size');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5), pg_temp.msg(5, 6))))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': uid 5 is upserted twice',
    'mirror_messages: a UID twice');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, '[]', '{1}') || '{"expunge": [1, "2"]}')$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': expunge 2 of 2: "2" is not an integer from 1 to 4294967295',
    'mirror_messages: a bad expunged UID');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5) || '{"uid": 5.0}')))$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': upsert 1 of 1: uid 5.0 is not an integer from 1 to 4294967295',
    'mirror_messages: a UID written as a fraction');
SELECT * FROM pg_temp.refuses_mirror($$SELECT * FROM mail.mirror_messages('alice@example.test', pg_temp.guid(1),
    pg_temp.batch(9, '[]', '{1}') || '{"expunge": [1, 2.0]}')$$,
    '22023', 'invalid mirror batch for ''alice@example.test'': expunge 2 of 2: 2.0 is not an integer from 1 to 4294967295',
    'mirror_messages: an expunged UID written as a fraction');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.mirror_folder_done('nobody@example.test', pg_temp.guid(1), 1, 1, 1, 0)$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'mirror_folder_done: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.mirror_folder_done('alice@example.test', pg_temp.guid(99), 1, 1, 1, 0)$$,
    'P0002', 'folder 00000000000000000000000000000063 of user ''alice@example.test'' does not exist',
    'mirror_folder_done: unknown folder');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 0, 1, 1, 0)$$,
    '22023', 'invalid folder state for ''alice@example.test'': uidvalidity 0 is not from 1 to 4294967295',
    'mirror_folder_done: uidvalidity 0');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.mirror_folder_done('alice@example.test', pg_temp.guid(1), 1, 1, 1, NULL)$$,
    '22023', 'invalid folder state for ''alice@example.test'': message_count NULL is not 0 or more',
    'mirror_folder_done: no message count');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.mirror_forget('nobody@example.test')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'mirror_forget: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_message('nobody@example.test', pg_temp.doc(30, '{"direction": "mailbox", "recipients": []}'))$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'record_mailbox_message: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(30, '{"recipients": []}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000030: direction ''inbound'' is not mailbox',
    'record_mailbox_message: another direction');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(30, '{"direction": "mailbox"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000030: recipients must be empty: a message found in a mailbox has no envelope',
    'record_mailbox_message: recipients');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(30, '{"direction": "mailbox", "recipients": [], "version": 2}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000030: unsupported version 2 (expected 1)',
    'record_mailbox_message: what record_message refuses');
RESET ROLE;

-- ------------------------------------------------------------ mailmeta_mirror's reach
SET LOCAL ROLE mailmeta_mirror;
SELECT throws_ok('SELECT * FROM mail.folders', '42501', NULL, 'the mirror role cannot read mail.folders');
SELECT throws_ok('SELECT * FROM mail.mailbox_messages', '42501', NULL, 'nor mail.mailbox_messages');
SELECT throws_ok('SELECT * FROM mail.messages', '42501', NULL, 'nor mail.messages');
SELECT throws_ok('SELECT * FROM mail.users', '42501', NULL, 'nor mail.users');
SELECT throws_ok('SELECT * FROM mail.contacts', '42501', NULL, 'nor mail.contacts');
SELECT throws_ok($$DELETE FROM mail.mailbox_messages$$, '42501', NULL, 'nor write the mirror directly');
SELECT throws_ok($$SELECT mail.record_message(pg_temp.doc(31))$$, '42501', NULL, 'nor call the milter''s record_message');
SELECT throws_ok($$SELECT * FROM mail.list_folders('alice@example.test')$$, '42501', NULL, 'nor the queries');
SELECT throws_ok($$SELECT mail.add_user('m@example.test', 'pw')$$, '42501', NULL, 'nor the admin API');
SELECT throws_ok($$SELECT mail.lock_mirror(1)$$, '42501', NULL, 'nor the internal helpers');
RESET ROLE;
SELECT set_eq($$SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'mail'::regnamespace
                   AND has_function_privilege('mailmeta_mirror', p.oid, 'EXECUTE')$$,
    ARRAY['mail.mirror_folders(text,jsonb)', 'mail.mirror_messages(text,text,jsonb)',
          'mail.mirror_folder_done(text,text,bigint,bigint,bigint,integer)', 'mail.mirror_forget(text)',
          'mail.record_mailbox_message(text,jsonb)', 'mail.record_mailbox_messages(text,jsonb)',
          'mail.mirror_message_ids(text,text,bigint,bigint[])'],
    'mailmeta_mirror may execute exactly its seven functions');
SELECT is_empty($$SELECT c.relname::text FROM pg_class c
                   WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind IN ('r', 'v')
                     AND has_table_privilege('mailmeta_mirror', c.oid, 'SELECT,INSERT,UPDATE,DELETE')$$,
    'mailmeta_mirror has no privilege on any table or view');

-- ------------------------------------------------------------ the quick check of a batch
-- mirror_messages asks mirror_batch_problem only about the batches
-- mirror_batch_quick_ok does not accept: the quick check must never accept
-- a batch the full check refuses, and must accept the syncer's usual one.
CREATE TEMP TABLE quick_cases (no serial, batch jsonb);
INSERT INTO quick_cases (batch)
SELECT pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5) || e), '{1}') || b
  FROM (VALUES ('{}'::jsonb, '{}'::jsonb),
               ('{"uid": 1.0}', '{}'), ('{"uid": 1.5}', '{}'), ('{"uid": 0}', '{}'), ('{"uid": "5"}', '{}'),
               ('{"uid": 4294967296}', '{}'), ('{"uid": 1e30}', '{}'), ('{"uid": null}', '{}'),
               ('{"mailmeta_id": "0193F7A2-0000-7000-8000-000000000005"}', '{}'),
               ('{"mailmeta_id": "0193f7a2000070008000000000000005"}', '{}'),
               ('{"mailmeta_id": "{0193f7a2-0000-7000-8000-000000000005}"}', '{}'),
               ('{"mailmeta_id": "0193f7a-20000-7000-8000-000000000005"}', '{}'),
               ('{"mailmeta_id": "0193f7a2-0000-7000-8000-00000000000g"}', '{}'),
               ('{"mailmeta_id": 5}', '{}'),
               ('{"internal_date": "2026-11-22T10:00:00+02:00"}', '{}'),
               ('{"internal_date": "2026-11-22t10:00:00.5z"}', '{}'),
               ('{"internal_date": "2026-02-30T10:00:00Z"}', '{}'),
               ('{"internal_date": "2026-11-22T24:00:00Z"}', '{}'),
               ('{"internal_date": "2026-11-22T10:00:60Z"}', '{}'),
               ('{"internal_date": "0000-01-01T00:00:00Z"}', '{}'),
               ('{"internal_date": "2026-11-22 10:00:00"}', '{}'),
               ('{"internal_date": "now"}', '{}'), ('{"internal_date": 5}', '{}'),
               ('{"flags": null, "keywords": null}', '{}'), ('{"flags": [1]}', '{}'),
               ('{"keywords": [{"a": 1}]}', '{}'), ('{"flags": "\\Seen"}', '{}'),
               ('{"size": null, "modseq": null}', '{}'), ('{"size": -1}', '{}'), ('{"size": 1.5}', '{}'),
               ('{"size": 9223372036854775808}', '{}'), ('{"modseq": "3"}', '{}'),
               ('{}', '{"expunge": [0]}'), ('{}', '{"expunge": [4294967296]}'), ('{}', '{"expunge": ["1"]}'),
               ('{}', '{"expunge": [1.0]}'), ('{}', '{"expunge": null}'), ('{}', '{"upsert": null}'),
               ('{}', '{"reset": null}'), ('{}', '{"reset": "true"}'), ('{}', '{"uidvalidity": "9"}'),
               ('{}', '{"uidvalidity": 9.0}'), ('{}', '{"uidvalidity": 4294967296}')) AS c (e, b);
INSERT INTO quick_cases (batch) VALUES
    (pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5), pg_temp.msg(5, 6)))),
    (pg_temp.batch(9, jsonb_build_array(pg_temp.msg(5, 5), '[]'::jsonb))),
    ('[]'), ('null'), ('{}');
SELECT is_empty($$SELECT no, batch FROM quick_cases
                   WHERE mail.mirror_batch_quick_ok(batch)
                     AND mail.mirror_batch_problem(batch) IS NOT NULL$$,
    'mirror_batch_quick_ok accepts no batch that mirror_batch_problem refuses');
SELECT ok(mail.mirror_batch_quick_ok(batch) AND mail.mirror_batch_problem(batch) IS NULL,
          'and accepts the usual batch, which mirror_batch_problem accepts too')
  FROM quick_cases WHERE no = 1;
SELECT is((SELECT count(*)::int FROM quick_cases WHERE mail.mirror_batch_problem(batch) IS NULL), 12,
          'the unusual but good batches among them (an upper-case UUID, an offset, ...) are good');

-- ------------------------------------------------------------ forgetting, deleting
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.mirror_forget('alice@example.test')$$, 'mirror_forget');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.folders f JOIN mail.users u USING (user_id) WHERE u.address = 'alice@example.test'),
          0, 'forgetting deletes the user''s folders');
SELECT is((SELECT count(*)::int FROM mail.mailbox_messages m JOIN mail.users u USING (user_id) WHERE u.address = 'alice@example.test'),
          0, '... and their messages');
SELECT is((SELECT count(*)::int FROM mail.user_messages um JOIN mail.users u USING (user_id) WHERE u.address = 'alice@example.test'),
          5, 'metadata and per-user rows stay');
SELECT is((SELECT count(*)::int FROM mail.folders f JOIN mail.users u USING (user_id) WHERE u.address = 'bob@example.test'),
          1, 'other users'' mirrors stay');

SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('bob@example.test', pg_temp.guid(11), pg_temp.batch(1, jsonb_build_array(pg_temp.msg(1, 9)), '{}', true)),
          '{}'::bigint[], 'bob mirrors a message');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.add_contact('bob@example.test', 'friend@example.org')$$, 'bob adds a contact');
SELECT lives_ok($$SELECT mail.delete_user('bob@example.test')$$, 'delete_user works with a mirror and contacts');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.folders) + (SELECT count(*)::int FROM mail.mailbox_messages)
          + (SELECT count(*)::int FROM mail.contacts), 0,
          'deleting a user deletes its mirror and contacts');
SELECT is((SELECT count(*)::int FROM mail.messages WHERE mailmeta_id = pg_temp.mid(9)), 1,
          'the metadata of its messages stays');

SELECT * FROM finish();
ROLLBACK;
