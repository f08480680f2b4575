-- 10_mailbox_queries.sql — the per-user mailbox queries: folders with their
-- counts; pages of a folder newest first with metadata joined (or NULL while
-- it is missing), walked with the cursor across messages sharing one
-- internal date, the last page marked; unread pages; a conversation across
-- folders; one message with its copies and attachments; users never see
-- each other's mail; bad arguments refused with their SQLSTATE; the reader
-- role reaches the queries and nothing else; and, over a few thousand
-- messages of two users and two thousand folders, the plan of each query's
-- inner query: index scans on the per-user indexes, no sequential scan of
-- the big tables.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(86);
\ir 06_helpers.psql
\ir mirror_helpers.psql

-- ------------------------------------------------------------ structure
SELECT function_returns('mail', 'list_folders', ARRAY['text'], 'setof record');
SELECT function_returns('mail', 'list_messages', ARRAY['text', 'text', 'text', 'integer'], 'setof record');
SELECT function_returns('mail', 'list_unread', ARRAY['text', 'text', 'text', 'integer'], 'setof record');
SELECT function_returns('mail', 'get_thread', ARRAY['text', 'uuid'], 'setof record');
SELECT function_returns('mail', 'get_message', ARRAY['text', 'uuid'], 'setof record');
SELECT is(pg_get_function_result('mail.list_folders(text)'::regprocedure),
          'TABLE(guid text, name text, special_use text, subscribed boolean, total integer, unread integer)',
          'list_folders columns');
SELECT is(pg_get_function_arguments('mail.list_messages(text,text,text,integer)'::regprocedure),
          'address text, folder text, cursor text DEFAULT NULL::text, page_size integer DEFAULT 50',
          'list_messages parameters: cursor and page_size optional');
SELECT is(pg_get_function_result('mail.list_messages(text,text,text,integer)'::regprocedure),
          'TABLE(uid bigint, mailmeta_id uuid, from_name text, from_address text, subject text, sent_at timestamp with time zone, internal_date timestamp with time zone, seen boolean, answered boolean, flagged boolean, deleted boolean, draft boolean, keywords text[], size_bytes bigint, attachment_count integer, thread_id uuid, next_cursor text)',
          'list_messages columns');
SELECT is(pg_get_function_result('mail.list_unread(text,text,text,integer)'::regprocedure),
          pg_get_function_result('mail.list_messages(text,text,text,integer)'::regprocedure),
          'list_unread has the columns of list_messages');
SELECT is(pg_get_function_result('mail.get_thread(text,uuid)'::regprocedure),
          'TABLE(folder text, uid bigint, mailmeta_id uuid, from_name text, from_address text, subject text, sent_at timestamp with time zone, internal_date timestamp with time zone, seen boolean, answered boolean, flagged boolean, deleted boolean, draft boolean, keywords text[], size_bytes bigint, attachment_count integer, thread_id uuid)',
          'get_thread columns');
SELECT is(pg_get_function_result('mail.get_message(text,uuid)'::regprocedure),
          'TABLE(mailmeta_id uuid, thread_id uuid, received_at timestamp with time zone, direction text, subject text, from_name text, from_address text, addresses jsonb, sent_at timestamp with time zone, message_id text, in_reply_to text[], reference_ids text[], list_id text, size_bytes bigint, attachment_count integer, malformed boolean, copies jsonb, attachments jsonb)',
          'get_message columns');

-- ------------------------------------------------------------ mail
SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
    PERFORM mail.add_user('carol@example.test', 'pw');
END
$$;
RESET ROLE;

-- A conversation: Doug writes to Alice and Bob (1, with an attachment),
-- Alice replies (2, in her Sent folder), Doug answers (3).
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_messages(jsonb_build_array(
    pg_temp.doc(1, jsonb_build_object('env_from', 'doug@example.com',
            'recipients', jsonb_build_array(jsonb_build_object('address', 'alice@example.test'),
                                            jsonb_build_object('address', 'bob@example.test')),
            'attachments', jsonb_build_array(jsonb_build_object('part', '2', 'filename', 'Bericht März.pdf',
                'content_type', 'application/pdf', 'disposition', 'attachment', 'size_bytes', 48213,
                'sha256', repeat('9f', 32)))),
        jsonb_build_object('subject', 'Quarterly report', 'message_id', 'a@example.com',
            'date', '2026-11-01T09:59:00Z',
            'from', jsonb_build_array(jsonb_build_object('name', 'Doug Sauder', 'address', 'doug@example.com')))),
    pg_temp.doc(2, jsonb_build_object('direction', 'outbound', 'sasl_user', 'alice@example.test',
            'env_from', 'alice@example.test', 'client', NULL,
            'recipients', jsonb_build_array(jsonb_build_object('address', 'doug@example.com'))),
        jsonb_build_object('subject', 'Re: Quarterly report', 'message_id', 'b@example.test',
            'in_reply_to', jsonb_build_array('a@example.com'),
            'from', jsonb_build_array(jsonb_build_object('name', 'Alice', 'address', 'alice@example.test')))),
    pg_temp.doc(3, jsonb_build_object('env_from', 'doug@example.com'),
        jsonb_build_object('subject', 'Re: Re: Quarterly report', 'message_id', 'c@example.com',
            'in_reply_to', jsonb_build_array('b@example.test'), 'date', '2026-11-03T09:00:00Z',
            'from', jsonb_build_array(jsonb_build_object('name', 'Doug Sauder', 'address', 'doug@example.com'))))));
RESET ROLE;

-- Alice's INBOX: uids 1-10 on ten days, uids 11-30 all at one instant; every
-- third message seen. Only uids 1 and 3 have metadata (messages 1 and 3).
SET LOCAL ROLE mailmeta_mirror;
SELECT is((SELECT count(*)::int FROM mail.mirror_folders('alice@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(1), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent', 'special_use', '\Sent', 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(3), 'name', 'Archive', 'special_use', '\Archive', 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(4), 'name', 'Ünïcode/Sub', 'special_use', NULL, 'subscribed', false)))),
          4, 'alice''s folders');
SELECT is(cardinality(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(1,
          (SELECT jsonb_agg(pg_temp.msg(u, CASE WHEN u IN (1, 3) THEN u ELSE 100 + u END::integer,
                                        CASE WHEN u % 3 = 0 THEN ARRAY['\Seen'] ELSE '{}'::text[] END,
                                        CASE WHEN u <= 10 THEN format('2026-11-%sT10:00:00Z', lpad(u::text, 2, '0'))
                                             ELSE '2026-11-15T12:00:00Z' END))
             FROM generate_series(1, 30) u), '{}', true))), 28, 'alice''s INBOX: 30 messages, 28 without metadata');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(2), pg_temp.batch(1, jsonb_build_array(
          pg_temp.msg(1, 2, ARRAY['\Seen'], '2026-11-02T12:00:00Z')), '{}', true)),
          '{}'::bigint[], 'alice''s Sent: her reply');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(3), pg_temp.batch(1, jsonb_build_array(
          pg_temp.msg(1, 1, ARRAY['\Seen', '\Flagged'], '2026-11-01T10:00:00Z', ARRAY['$work'])), '{}', true)),
          '{}'::bigint[], 'alice''s Archive: a copy of message 1');
SELECT is((SELECT count(*)::int FROM mail.mirror_folders('bob@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(11), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true)))),
          1, 'bob''s folders');
SELECT is(pg_temp.sync('bob@example.test', pg_temp.guid(11), pg_temp.batch(1, jsonb_build_array(
          pg_temp.msg(1, 1, '{}', '2026-11-01T10:00:01Z')), '{}', true)),
          '{}'::bigint[], 'bob''s INBOX: message 1');
RESET ROLE;

-- Walks every page of a listing; returns the UIDs in order, the number of
-- pages, and whether next_cursor appeared only on the last row of a page
-- that had a successor.
CREATE FUNCTION pg_temp.walk(p_fn text, p_address text, p_folder text, p_size integer)
    RETURNS TABLE (uids bigint[], pages integer, cursors_ok boolean)
    LANGUAGE plpgsql
AS $$
DECLARE
    v_cursor text;
    v_uids   bigint[];
    v_curs   text[];
BEGIN
    uids := '{}'; pages := 0; cursors_ok := true;
    LOOP
        EXECUTE format('SELECT array_agg(r.uid ORDER BY r.o), array_agg(r.next_cursor ORDER BY r.o)
                          FROM (SELECT f.uid, f.next_cursor, row_number() OVER () AS o
                                  FROM mail.%I($1, $2, $3, $4) f) r', p_fn)
           INTO v_uids, v_curs USING p_address, p_folder, v_cursor, p_size;
        pages := pages + 1;
        uids := uids || coalesce(v_uids, '{}');
        IF EXISTS (SELECT FROM unnest(v_curs[1:cardinality(v_curs) - 1]) AS c WHERE c IS NOT NULL) THEN
            cursors_ok := false;
        END IF;
        v_cursor := v_curs[cardinality(v_curs)];
        EXIT WHEN v_cursor IS NULL OR pages > 100;
        IF cardinality(v_uids) <> p_size THEN
            cursors_ok := false;
        END IF;
    END LOOP;
    RETURN NEXT;
END
$$;

-- ------------------------------------------------------------ list_folders
SET LOCAL ROLE mailmeta_reader;
SELECT results_eq($$SELECT guid, name, special_use, subscribed, total, unread FROM mail.list_folders('ALICE@example.test')$$,
    $$VALUES (pg_temp.guid(1), 'INBOX', NULL::text, true, 30, 20), (pg_temp.guid(3), 'Archive', '\Archive', true, 1, 0),
             (pg_temp.guid(2), 'Sent', '\Sent', true, 1, 0), (pg_temp.guid(4), 'Ünïcode/Sub', NULL, false, 0, 0)$$,
    'list_folders: INBOX first, then by name, with total and unread');
SELECT results_eq($$SELECT name, total, unread FROM mail.list_folders('bob@example.test')$$,
    $$VALUES ('INBOX', 1, 1)$$, 'bob sees only his own folders');
SELECT is_empty($$SELECT * FROM mail.list_folders('carol@example.test')$$, 'a user without a mirror has no folders');

-- ------------------------------------------------------------ list_messages
SELECT results_eq($$SELECT uid, mailmeta_id, from_name, from_address, subject, sent_at, internal_date, seen,
                           answered, flagged, deleted, draft, keywords, size_bytes, attachment_count, thread_id,
                           next_cursor IS NOT NULL
                      FROM mail.list_messages('alice@example.test', 'Archive')$$,
    $$VALUES (1::bigint, pg_temp.mid(1), 'Doug Sauder', 'doug@example.com', 'Quarterly report',
              '2026-11-01T09:59:00Z'::timestamptz, '2026-11-01T10:00:00Z'::timestamptz, true, false, true,
              false, false, ARRAY['$work'], 1001::bigint, 1, pg_temp.mid(1), false)$$,
    'a row: flags and keywords from the mirror, from, subject, date, attachments and thread from the metadata');
SELECT results_eq($$SELECT uid, next_cursor IS NOT NULL FROM mail.list_messages('alice@example.test', 'inbox', NULL, 4)$$,
    $$VALUES (30::bigint, false), (29, false), (28, false), (27, true)$$,
    'the first page: newest first, ties by UID, the cursor on its last row (INBOX in any case)');
SELECT results_eq($$SELECT uid, mailmeta_id, from_address, subject, attachment_count
                      FROM mail.list_messages('alice@example.test', 'INBOX', NULL, 30) WHERE uid IN (3, 5)$$,
    $$VALUES (5::bigint, pg_temp.mid(105), NULL, NULL, NULL),
             (3, pg_temp.mid(3), 'doug@example.com', 'Re: Re: Quarterly report', 0)$$,
    'a message whose metadata is missing is listed, its metadata columns NULL');
SELECT results_eq($$SELECT * FROM pg_temp.walk('list_messages', 'alice@example.test', 'INBOX', 7)$$,
    $$SELECT ARRAY(SELECT u FROM generate_series(30, 1, -1) u)::bigint[], 5, true$$,
    'walking pages of 7 through 20 messages of one instant and 10 older ones: each message once, in order');
SELECT results_eq($$SELECT * FROM pg_temp.walk('list_messages', 'alice@example.test', 'INBOX', 5)$$,
    $$SELECT ARRAY(SELECT u FROM generate_series(30, 1, -1) u)::bigint[], 6, true$$,
    'pages that divide the folder exactly: the last full page has no cursor');
SELECT results_eq($$SELECT * FROM pg_temp.walk('list_messages', 'alice@example.test', 'INBOX', 1000)$$,
    $$SELECT ARRAY(SELECT u FROM generate_series(30, 1, -1) u)::bigint[], 1, true$$,
    'one page of up to 1000');
SELECT is((SELECT count(*)::int FROM mail.list_messages('alice@example.test', 'INBOX')), 30,
          'page_size defaults to 50');
SELECT is((SELECT count(*)::int FROM mail.list_messages('alice@example.test', 'INBOX', NULL, NULL)), 30,
          'page_size NULL is the default');
SELECT is((SELECT count(*)::int FROM mail.list_messages('alice@example.test', 'INBOX', '')), 30,
          'an empty cursor is the first page');
SELECT results_eq($$SELECT uid FROM mail.list_messages('alice@example.test', 'INBOX',
                     (SELECT next_cursor FROM mail.list_messages('alice@example.test', 'INBOX', NULL, 25) WHERE next_cursor IS NOT NULL), 3)$$,
    $$VALUES (5::bigint), (4), (3)$$, 'a deep page after the ties');
SELECT is_empty($$SELECT * FROM mail.list_messages('alice@example.test', 'Ünïcode/Sub')$$, 'an empty folder has no page');
SELECT results_eq($$SELECT uid, mailmeta_id FROM mail.list_messages('bob@example.test', 'INBOX')$$,
    $$VALUES (1::bigint, pg_temp.mid(1))$$, 'bob lists his own INBOX only');

-- ------------------------------------------------------------ list_unread
SELECT results_eq($$SELECT * FROM pg_temp.walk('list_unread', 'alice@example.test', 'INBOX', 3)$$,
    $$SELECT ARRAY(SELECT u FROM generate_series(30, 1, -1) u WHERE u % 3 <> 0)::bigint[], 7, true$$,
    'walking the unread pages: the unseen messages only, each once, newest first');
SELECT is((SELECT bool_and(NOT seen) FROM mail.list_unread('alice@example.test', 'INBOX', NULL, 1000)), true,
          'list_unread returns no seen message');
SELECT is_empty($$SELECT * FROM mail.list_unread('alice@example.test', 'Archive')$$, 'a folder without unread mail');

-- ------------------------------------------------------------ get_thread
SELECT results_eq($$SELECT folder, uid, mailmeta_id, subject, from_name, seen, thread_id
                      FROM mail.get_thread('alice@example.test', pg_temp.mid(3))$$,
    $$VALUES ('Archive', 1::bigint, pg_temp.mid(1), 'Quarterly report', 'Doug Sauder', true, pg_temp.mid(1)),
             ('INBOX', 1, pg_temp.mid(1), 'Quarterly report', 'Doug Sauder', false, pg_temp.mid(1)),
             ('Sent', 1, pg_temp.mid(2), 'Re: Quarterly report', 'Alice', true, pg_temp.mid(1)),
             ('INBOX', 3, pg_temp.mid(3), 'Re: Re: Quarterly report', 'Doug Sauder', true, pg_temp.mid(1))$$,
    'get_thread: the user''s copies of the conversation in every folder, oldest first');
SELECT results_eq($$SELECT folder, uid, mailmeta_id FROM mail.get_thread('bob@example.test', pg_temp.mid(1))$$,
    $$VALUES ('INBOX', 1::bigint, pg_temp.mid(1))$$, 'bob''s view of the same conversation: his copy only');
SELECT is_empty($$SELECT * FROM mail.get_thread('bob@example.test', pg_temp.mid(3))$$,
    'no thread of a message the user does not have');
SELECT is_empty($$SELECT * FROM mail.get_thread('carol@example.test', pg_temp.mid(1))$$,
    'nothing for a user without the conversation');
SELECT results_eq($$SELECT folder, uid, mailmeta_id, thread_id FROM mail.get_thread('alice@example.test', pg_temp.mid(105))$$,
    $$VALUES ('INBOX', 5::bigint, pg_temp.mid(105), NULL::uuid)$$,
    'a message without metadata is a thread of its own');

-- ------------------------------------------------------------ get_message
SELECT results_eq($$SELECT mailmeta_id, thread_id, direction, subject, from_name, from_address, sent_at,
                           message_id, size_bytes, attachment_count, addresses->'from'->0->>'name'
                      FROM mail.get_message('alice@example.test', pg_temp.mid(1))$$,
    $$VALUES (pg_temp.mid(1), pg_temp.mid(1), 'inbound', 'Quarterly report', 'Doug Sauder', 'doug@example.com',
              '2026-11-01T09:59:00Z'::timestamptz, 'a@example.com', 1000::bigint, 1, 'Doug Sauder')$$,
    'get_message: the metadata');
SELECT is((SELECT jsonb_agg(jsonb_build_object('folder', c->'folder', 'uid', c->'uid', 'flags', c->'flags', 'keywords', c->'keywords', 'size_bytes', c->'size_bytes'))
             FROM mail.get_message('alice@example.test', pg_temp.mid(1)) g, jsonb_array_elements(g.copies) c),
          '[{"uid": 1, "flags": ["\\Seen", "\\Flagged"], "folder": "Archive", "keywords": ["$work"], "size_bytes": 1001},
            {"uid": 1, "flags": [], "folder": "INBOX", "keywords": [], "size_bytes": 1001}]'::jsonb,
          'get_message: the user''s copies with their folders, UIDs and flags');
SELECT is((SELECT attachments FROM mail.get_message('alice@example.test', pg_temp.mid(1))),
          jsonb_build_array(jsonb_build_object('part', '2', 'filename', 'Bericht März.pdf', 'content_type', 'application/pdf',
                                               'disposition', 'attachment', 'size_bytes', 48213, 'sha256', repeat('9f', 32))),
          'get_message: the attachments');
SELECT results_eq($$SELECT mailmeta_id, subject, jsonb_array_length(copies), attachments
                      FROM mail.get_message('alice@example.test', pg_temp.mid(105))$$,
    $$VALUES (pg_temp.mid(105), NULL::text, 1, '[]'::jsonb)$$,
    'a message without metadata: one row, its copies, no metadata');
SELECT results_eq($$SELECT mailmeta_id, jsonb_array_length(copies) FROM mail.get_message('bob@example.test', pg_temp.mid(1))$$,
    $$VALUES (pg_temp.mid(1), 1)$$, 'bob sees his one copy');
SELECT is_empty($$SELECT * FROM mail.get_message('carol@example.test', pg_temp.mid(1))$$,
    'no row for a message the user does not have');
SELECT is_empty($$SELECT * FROM mail.get_message('alice@example.test', '00000000-0000-0000-0000-000000000000')$$,
    'no row for an unknown message');
RESET ROLE;
-- A message delivered to a user but no longer in any folder is still the user's.
SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('bob@example.test', pg_temp.guid(11), pg_temp.batch(1, '[]', '{1}')),
          '{}'::bigint[], 'bob expunges message 1');
RESET ROLE;
SET LOCAL ROLE mailmeta_reader;
SELECT results_eq($$SELECT subject, copies FROM mail.get_message('bob@example.test', pg_temp.mid(1))$$,
    $$VALUES ('Quarterly report', '[]'::jsonb)$$, 'a message delivered to the user and expunged: metadata, no copies');
SELECT is_empty($$SELECT * FROM mail.get_thread('bob@example.test', pg_temp.mid(1))$$,
    'and no copies in its thread');

-- ------------------------------------------------------------ refused arguments
SELECT throws_ok($$SELECT * FROM mail.list_folders('nobody@example.test')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'list_folders: unknown user');
SELECT throws_ok($$SELECT * FROM mail.list_folders('nobody')$$,
    '22023', 'invalid address ''nobody'': expected exactly one "@", as in local-part@domain', 'list_folders: malformed address');
SELECT throws_ok($$SELECT * FROM mail.list_messages('nobody@example.test', 'INBOX')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'list_messages: unknown user');
SELECT throws_ok($$SELECT * FROM mail.list_messages('alice@example.test', 'Nope')$$,
    'P0002', 'folder ''Nope'' of user ''alice@example.test'' does not exist', 'list_messages: unknown folder');
SELECT throws_ok($$SELECT * FROM mail.list_messages('bob@example.test', 'Sent')$$,
    'P0002', 'folder ''Sent'' of user ''bob@example.test'' does not exist', 'list_messages: another user''s folder');
SELECT throws_ok($$SELECT * FROM mail.list_messages('alice@example.test', NULL)$$,
    '22023', 'folder name must not be empty', 'list_messages: no folder');
SELECT throws_ok($$SELECT * FROM mail.list_messages('alice@example.test', 'INBOX', 'abc')$$,
    '22023', 'invalid cursor ''abc'': pass the next_cursor of the previous page, or NULL for the first page',
    'list_messages: a malformed cursor');
SELECT throws_ok($$SELECT * FROM mail.list_messages('alice@example.test', 'INBOX', repeat('f', 32))$$,
    '22023', 'invalid cursor ''ffffffffffffffffffffffffffffffff'': pass the next_cursor of the previous page, or NULL for the first page',
    'list_messages: a cursor that decodes to nothing valid');
SELECT throws_ok($$SELECT * FROM mail.list_messages('alice@example.test', 'INBOX', NULL, 0)$$,
    '22023', 'page_size 0 is not from 1 to 1000', 'list_messages: page_size 0');
SELECT throws_ok($$SELECT * FROM mail.list_unread('alice@example.test', 'INBOX', NULL, 1001)$$,
    '22023', 'page_size 1001 is not from 1 to 1000', 'list_unread: page_size 1001');
SELECT throws_ok($$SELECT * FROM mail.list_unread('alice@example.test', 'Nope')$$,
    'P0002', 'folder ''Nope'' of user ''alice@example.test'' does not exist', 'list_unread: unknown folder');
SELECT throws_ok($$SELECT * FROM mail.get_thread('nobody@example.test', pg_temp.mid(1))$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'get_thread: unknown user');
SELECT throws_ok($$SELECT * FROM mail.get_thread('alice@example.test', NULL)$$,
    '22023', 'message (a mailmeta_id) must not be NULL', 'get_thread: no message');
SELECT throws_ok($$SELECT * FROM mail.get_message('nobody@example.test', pg_temp.mid(1))$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'get_message: unknown user');
SELECT throws_ok($$SELECT * FROM mail.get_message('alice@example.test', NULL)$$,
    '22023', 'message (a mailmeta_id) must not be NULL', 'get_message: no message');

-- ------------------------------------------------------------ mailmeta_reader's reach
SELECT throws_ok('SELECT * FROM mail.mailbox_messages', '42501', NULL, 'the reader role cannot read mail.mailbox_messages');
SELECT throws_ok('SELECT * FROM mail.messages', '42501', NULL, 'nor mail.messages');
SELECT throws_ok('SELECT * FROM mail.contacts', '42501', NULL, 'nor mail.contacts');
SELECT throws_ok($$SELECT mail.add_contact('alice@example.test', 'x@example.org')$$, '42501', NULL, 'nor change contacts');
SELECT throws_ok($$SELECT * FROM mail.mirror_folders('alice@example.test', '[]')$$, '42501', NULL, 'nor write the mirror');
SELECT throws_ok($$SELECT mail.mailbox_query('list_folders')$$, '42501', NULL, 'nor the internal helpers');
RESET ROLE;
SELECT set_eq($$SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'mail'::regnamespace
                   AND has_function_privilege('mailmeta_reader', p.oid, 'EXECUTE')$$,
    ARRAY['mail.list_folders(text)', 'mail.list_messages(text,text,text,integer)',
          'mail.list_unread(text,text,text,integer)', 'mail.get_thread(text,uuid)', 'mail.get_message(text,uuid)',
          'mail.list_contacts(text)', 'mail.suggest_contacts(text,text,integer)'],
    'mailmeta_reader may execute exactly the query functions');
SELECT is_empty($$SELECT c.relname::text FROM pg_class c
                   WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind IN ('r', 'v')
                     AND has_table_privilege('mailmeta_reader', c.oid, 'SELECT,INSERT,UPDATE,DELETE')$$,
    'mailmeta_reader has no privilege on any table or view');
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT * FROM mail.list_messages('alice@example.test', 'INBOX')$$, 'the admin runs the queries too');
RESET ROLE;

-- ------------------------------------------------------------ plans
-- Two users with a few thousand messages each in a folder "Big", with
-- metadata (threads of five) and attachments; two hundred more users with
-- ten folders each. Loaded directly, as the migration's owner would.
INSERT INTO mail.users (domain_id, local_part, address, password_hash)
SELECT d.domain_id, 'u' || i, 'u' || i || '@example.test', '{BLF-CRYPT}x'
  FROM mail.domains d, generate_series(1, 200) i WHERE d.domain = 'example.test';
INSERT INTO mail.folders (user_id, guid, name)
SELECT u.user_id, md5(u.address || f), 'Folder ' || f
  FROM mail.users u, generate_series(1, 10) f WHERE u.address LIKE 'u%';
INSERT INTO mail.folders (user_id, guid, name)
SELECT u.user_id, md5(u.address || 'big'), 'Big'
  FROM mail.users u WHERE u.address IN ('alice@example.test', 'bob@example.test');
CREATE TEMP TABLE big AS
SELECT u.user_id, f.folder_id, i AS uid,
       ('0193f7a3-' || lpad(to_hex(u.user_id::integer), 4, '0') || '-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS mid,
       timestamptz '2026-01-01' + (i / 3) * interval '1 minute' AS at
  FROM mail.users u
  JOIN mail.folders f ON f.user_id = u.user_id AND f.name = 'Big'
  CROSS JOIN LATERAL generate_series(1, CASE WHEN u.address = 'alice@example.test' THEN 4000 ELSE 2000 END) i;
INSERT INTO mail.messages (mailmeta_id, received_at, direction, subject, header_from, addresses,
                           message_id, action, thread_id, attachment_count)
SELECT b.mid, b.at, 'inbound', 'message ' || b.uid, 'sender@example.net',
       '{"from": [{"name": "Sender", "address": "sender@example.net"}]}',
       b.mid || '@example.net', 'accept',
       ('0193f7a3-' || lpad(to_hex(b.user_id::integer), 4, '0') || '-7000-8000-' || lpad(to_hex(b.uid - (b.uid - 1) % 5), 12, '0'))::uuid,
       b.uid % 2
  FROM big b;
INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
SELECT b.user_id, b.mid, b.at, m.thread_id FROM big b JOIN mail.messages m ON m.mailmeta_id = b.mid;
INSERT INTO mail.attachment_parts (mailmeta_id, attachment_no, part, filename, content_type, size_bytes)
SELECT b.mid, 1, '2', 'file.pdf', 'application/pdf', 1000 FROM big b WHERE b.uid % 2 = 1;
INSERT INTO mail.mailbox_messages (user_id, folder_id, uid, mailmeta_id, internal_date, size_bytes, seen)
SELECT b.user_id, b.folder_id, b.uid, b.mid, b.at, 2000, b.uid % 5 <> 0 FROM big b;
ANALYZE mail.users, mail.folders, mail.mailbox_messages, mail.messages, mail.user_messages, mail.attachment_parts;

-- The plan of a query function's inner query (mail.mailbox_query) for these
-- values, as its nodes: (node type, relation, index).
CREATE FUNCTION pg_temp.nodes(p_name text, p_user bigint, p_folder bigint DEFAULT NULL,
                              p_date timestamptz DEFAULT NULL, p_uid bigint DEFAULT NULL,
                              p_size integer DEFAULT NULL, p_message uuid DEFAULT NULL)
    RETURNS TABLE (node text, relation text, index text)
    LANGUAGE plpgsql
AS $$
DECLARE
    v_plan jsonb;
BEGIN
    IF p_name IN ('list_messages', 'list_unread') THEN
        EXECUTE 'EXPLAIN (FORMAT JSON) ' || mail.mailbox_query(p_name)
           INTO v_plan USING p_user, p_folder, p_date, p_uid, p_size;
    ELSIF p_name IN ('get_thread', 'get_message') THEN
        EXECUTE 'EXPLAIN (FORMAT JSON) ' || mail.mailbox_query(p_name) INTO v_plan USING p_user, p_message;
    ELSE
        EXECUTE 'EXPLAIN (FORMAT JSON) ' || mail.mailbox_query(p_name) INTO v_plan USING p_user;
    END IF;
    RETURN QUERY
        SELECT n->>'Node Type', n->>'Relation Name', n->>'Index Name'
          FROM jsonb_path_query(v_plan, 'strict $.** ? (exists (@."Node Type"))') AS n;
END
$$;
CREATE TEMP TABLE plans AS
SELECT 'list_folders' AS q, n.* FROM pg_temp.nodes('list_folders', (SELECT user_id FROM mail.users WHERE address = 'alice@example.test')) n
UNION ALL
SELECT 'list_messages', n.* FROM big b, pg_temp.nodes('list_messages', b.user_id, b.folder_id, 'infinity', 9223372036854775807, 50) n
 WHERE b.uid = 1 AND b.user_id = (SELECT user_id FROM mail.users WHERE address = 'alice@example.test')
UNION ALL
SELECT 'list_messages deep', n.* FROM big b, pg_temp.nodes('list_messages', b.user_id, b.folder_id, b.at, b.uid, 50) n
 WHERE b.uid = 2000 AND b.user_id = (SELECT user_id FROM mail.users WHERE address = 'alice@example.test')
UNION ALL
SELECT 'list_unread', n.* FROM big b, pg_temp.nodes('list_unread', b.user_id, b.folder_id, 'infinity', 9223372036854775807, 50) n
 WHERE b.uid = 1 AND b.user_id = (SELECT user_id FROM mail.users WHERE address = 'alice@example.test')
UNION ALL
SELECT 'get_thread', n.* FROM big b, pg_temp.nodes('get_thread', b.user_id, p_message => b.mid) n
 WHERE b.uid = 1003 AND b.user_id = (SELECT user_id FROM mail.users WHERE address = 'alice@example.test')
UNION ALL
SELECT 'get_message', n.* FROM big b, pg_temp.nodes('get_message', b.user_id, p_message => b.mid) n
 WHERE b.uid = 1003 AND b.user_id = (SELECT user_id FROM mail.users WHERE address = 'alice@example.test');

SELECT is_empty($$SELECT q, relation FROM plans
                   WHERE node = 'Seq Scan'
                     AND relation IN ('mailbox_messages', 'messages', 'folders', 'user_messages', 'attachment_parts', 'users')$$,
    'no query plan scans a big table sequentially');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'list_folders' AND node IN ('Index Scan', 'Index Only Scan', 'Bitmap Index Scan')
                                      AND index LIKE 'folders\_user\_id\_%'),
          'list_folders: an index of folders leading with user_id');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'list_messages' AND node = 'Index Scan' AND index = 'mailbox_messages_date_idx'),
          'list_messages: an index scan on (user_id, folder_id, internal_date DESC, uid DESC)');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'list_messages' AND node IN ('Index Scan', 'Index Only Scan') AND index = 'messages_pkey'),
          'list_messages: metadata by primary key');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'list_messages deep' AND node = 'Index Scan' AND index = 'mailbox_messages_date_idx'),
          'list_messages, a deep page: the same index scan');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'list_unread' AND node = 'Index Scan' AND index = 'mailbox_messages_unread_idx'),
          'list_unread: an index scan on the partial index of unseen messages');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'get_thread' AND node IN ('Index Scan', 'Index Only Scan', 'Bitmap Index Scan')
                                      AND index = 'mailbox_messages_mailmeta_id_idx'),
          'get_thread: the user''s copies by (user_id, mailmeta_id)');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'get_thread' AND node IN ('Index Scan', 'Index Only Scan', 'Bitmap Index Scan')
                                      AND index = 'messages_thread_id_idx'),
          'get_thread: the thread''s messages by thread_id');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'get_message' AND node IN ('Index Scan', 'Index Only Scan', 'Bitmap Index Scan')
                                      AND index = 'mailbox_messages_mailmeta_id_idx'),
          'get_message: the user''s copies by (user_id, mailmeta_id)');
SELECT ok(EXISTS (SELECT FROM plans WHERE q = 'get_message' AND node IN ('Index Scan', 'Index Only Scan', 'Bitmap Index Scan')
                                      AND index = 'attachment_parts_pkey'),
          'get_message: the attachments by primary key');
-- And the functions answer from those plans what the data holds.
SELECT results_eq($$SELECT uid FROM mail.list_messages('alice@example.test', 'Big', NULL, 3)$$,
    $$VALUES (4000::bigint), (3999), (3998)$$, 'list_messages over the loaded folder');
SELECT is((SELECT count(*)::int FROM mail.get_thread('alice@example.test',
             ('0193f7a3-' || lpad(to_hex((SELECT user_id FROM mail.users WHERE address = 'alice@example.test')::integer), 4, '0')
              || '-7000-8000-' || lpad(to_hex(1003), 12, '0'))::uuid)),
          5, 'get_thread over the loaded folder: a thread of five');

SELECT * FROM finish();
ROLLBACK;
