-- 06_messages.sql — per-message metadata: the tables, views and functions
-- of the message store; a realistic document recorded by the milter and read
-- back column by column through mail.message_log and
-- mail.message_attachments; idempotent replay; the local users each kind of
-- recipient reaches; attachment deduplication; hostile values stored
-- leniently; and every refused document with its exact SQLSTATE and
-- message, checking that nothing was written.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(163);
\ir 06_helpers.psql

-- ------------------------------------------------------------ structure
SELECT has_table('mail', t, 'has table mail.' || t)
  FROM unnest(ARRAY['messages', 'message_recipients', 'user_messages', 'attachment_blobs',
                    'attachment_parts', 'thread_links']) AS t;
SELECT columns_are('mail', 'messages', ARRAY['mailmeta_id', 'queue_id', 'received_at', 'direction',
    'client_ip', 'client_name', 'helo', 'tls_version', 'tls_cipher', 'sasl_user', 'env_from',
    'size_bytes', 'subject', 'header_from', 'addresses', 'sent_at', 'date_raw', 'message_id',
    'in_reply_to', 'reference_ids', 'list_id', 'auto_submitted', 'malformed', 'malformed_reasons',
    'action', 'reason', 'thread_id', 'parts', 'attachment_count', 'recorded_at']);
SELECT col_is_pk('mail', 'messages', 'mailmeta_id', 'messages keyed by mailmeta_id');
SELECT col_type_is('mail', 'messages', 'mailmeta_id', 'uuid', 'messages.mailmeta_id is uuid');
SELECT col_type_is('mail', 'messages', 'client_ip', 'inet', 'messages.client_ip is inet');
SELECT col_type_is('mail', 'messages', 'sent_at', 'timestamp with time zone', 'messages.sent_at is timestamptz');
SELECT col_type_is('mail', 'messages', 'in_reply_to', 'text[]', 'messages.in_reply_to is text[]');
SELECT col_type_is('mail', 'messages', 'reference_ids', 'text[]', 'messages.reference_ids is text[]');
SELECT col_type_is('mail', 'messages', 'parts', 'jsonb', 'messages.parts is jsonb');
SELECT col_type_is('mail', 'messages', 'thread_id', 'uuid', 'messages.thread_id is uuid');
SELECT col_not_null('mail', 'messages', 'thread_id', 'every message has a thread');
SELECT columns_are('mail', 'message_recipients', ARRAY['mailmeta_id', 'rcpt', 'received_at', 'user_id']);
SELECT col_is_pk('mail', 'message_recipients', ARRAY['mailmeta_id', 'rcpt']::name[],
                 'message_recipients keyed by (mailmeta_id, rcpt)');
SELECT fk_ok('mail', 'message_recipients', 'mailmeta_id', 'mail', 'messages', 'mailmeta_id');
SELECT columns_are('mail', 'user_messages', ARRAY['user_id', 'mailmeta_id', 'received_at', 'thread_id']);
SELECT col_is_pk('mail', 'user_messages', ARRAY['user_id', 'mailmeta_id']::name[],
                 'user_messages keyed by (user_id, mailmeta_id): per-user rows lead with user_id');
SELECT fk_ok('mail', 'user_messages', 'user_id', 'mail', 'users', 'user_id');
SELECT has_index('mail', 'user_messages', 'user_messages_received_at_idx',
                 ARRAY['user_id', 'received_at'], 'a mailbox lists by (user_id, received_at)');
SELECT columns_are('mail', 'attachment_blobs', ARRAY['sha256', 'size_bytes', 'content_type', 'first_seen']);
SELECT col_is_pk('mail', 'attachment_blobs', 'sha256', 'attachment_blobs keyed by sha256');
SELECT col_type_is('mail', 'attachment_blobs', 'sha256', 'bytea', 'attachment_blobs.sha256 is bytea');
SELECT columns_are('mail', 'attachment_parts', ARRAY['mailmeta_id', 'attachment_no', 'part', 'filename',
    'content_type', 'disposition', 'size_bytes', 'sha256']);
SELECT fk_ok('mail', 'attachment_parts', 'sha256', 'mail', 'attachment_blobs', 'sha256');
SELECT has_index('mail', 'attachment_parts', 'attachment_parts_sha256_idx', 'sha256',
                 'a blob''s references are counted from attachment_parts by sha256');
SELECT columns_are('mail', 'thread_links', ARRAY['message_id', 'thread_id']);
SELECT col_is_pk('mail', 'thread_links', 'message_id', 'thread_links keyed by message_id');
SELECT has_index('mail', 'messages', 'messages_queue_id_idx', 'queue_id', 'messages indexed by queue_id');
SELECT has_index('mail', 'messages', 'messages_message_id_idx', 'message_id', 'messages indexed by message_id');
SELECT has_index('mail', 'messages', 'messages_received_at_idx', 'received_at', 'messages indexed by received_at');
SELECT has_index('mail', 'messages', 'messages_env_from_idx', ARRAY['lower(env_from)', 'received_at'],
                 'messages indexed by (lower(env_from), received_at)');
SELECT has_index('mail', 'message_recipients', 'message_recipients_rcpt_idx', ARRAY['lower(rcpt)', 'received_at'],
                 'recipients indexed by (lower(rcpt), received_at)');
SELECT has_view('mail', 'message_log', 'has view mail.message_log');
SELECT has_view('mail', 'message_attachments', 'has view mail.message_attachments');
SELECT columns_are('mail', 'message_log', ARRAY['mailmeta_id', 'queue_id', 'received_at', 'direction',
    'client_ip', 'client_name', 'helo', 'tls_version', 'tls_cipher', 'sasl_user', 'env_from', 'rcpt',
    'header_from', 'subject', 'message_id', 'sent_at', 'size_bytes', 'thread_id', 'attachment_count',
    'malformed', 'action', 'reason', 'policy_stage', 'policy_rule', 'spam_score', 'spam_rules', 'virus']);
SELECT columns_are('mail', 'message_attachments', ARRAY['mailmeta_id', 'part', 'filename', 'content_type',
    'disposition', 'size_bytes', 'sha256']);
SELECT function_returns('mail', 'record_message', ARRAY['jsonb'], 'uuid');
SELECT function_returns('mail', 'record_messages', ARRAY['jsonb'], 'setof uuid');
SELECT is_definer('mail', 'record_message', ARRAY['jsonb']);
SELECT function_returns('mail', 'trace_queue_id', ARRAY['text'], 'setof mail.message_log');
SELECT function_returns('mail', 'trace_message_id', ARRAY['text'], 'setof mail.message_log');
SELECT function_returns('mail', 'trace_sender', ARRAY['text', 'timestamp with time zone', 'timestamp with time zone'], 'setof mail.message_log');
SELECT function_returns('mail', 'trace_recipient', ARRAY['text', 'timestamp with time zone', 'timestamp with time zone'], 'setof mail.message_log');
SELECT function_returns('mail', 'trace_time', ARRAY['timestamp with time zone', 'timestamp with time zone'], 'setof mail.message_log');
SELECT is(obj_description('mail.message_log'::regclass, 'pg_class') LIKE '%rcpt (envelope recipient%', true,
          'message_log documents its columns');

-- ------------------------------------------------------------ directory
SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_domain('other.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
    PERFORM mail.add_user('carol@example.test', 'pw');
    PERFORM mail.add_user('dave@other.test', 'pw');
    PERFORM mail.add_alias('team@example.test', ARRAY['alice@example.test', 'bob@example.test', 'friend@elsewhere.org']);
    PERFORM mail.add_alias('all@example.test', ARRAY['team@example.test', 'carol@example.test']);
    PERFORM mail.add_alias('@example.test', ARRAY['carol@example.test']);
END
$$;
RESET ROLE;

-- ------------------------------------------------------------ a realistic document
SET LOCAL ROLE mailmeta_milter;
SELECT is(mail.record_message(jsonb_build_object(
    'version', 1,
    'mailmeta_id', '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f',
    'queue_id', '4XyZ1234abc',
    'received_at', '2026-11-22T19:40:00.123456Z',
    'direction', 'inbound',
    'client', jsonb_build_object('ip', '2001:db8::25', 'name', 'mx.example.net', 'helo', 'mx.example.net'),
    'tls', jsonb_build_object('version', 'TLSv1.3', 'cipher', 'TLS_AES_256_GCM_SHA384'),
    'sasl_user', NULL,
    'env_from', 'Sender@Example.NET',
    'recipients', jsonb_build_array(jsonb_build_object('address', 'Alice@Example.TEST'),
                                    jsonb_build_object('address', 'partner@elsewhere.org')),
    'size_bytes', 52345,
    'action', 'accept',
    'reason', NULL,
    'malformed', true,
    'malformed_reasons', jsonb_build_array('8-bit bytes in header Subject'),
    'future_key', 'ignored',
    'headers', jsonb_build_object(
        'subject', 'Grüße aus Köln',
        'from', jsonb_build_array(jsonb_build_object('name', 'Doug Sauder', 'address', 'doug@example.com'),
                                  jsonb_build_object('name', NULL, 'address', 'second@example.com')),
        'sender', jsonb_build_array(),
        'reply_to', jsonb_build_array(jsonb_build_object('name', NULL, 'address', 'reply@example.com')),
        'to', jsonb_build_array(jsonb_build_object('name', NULL, 'address', 'alice@example.test')),
        'cc', jsonb_build_array(),
        'date', '2000-05-17T23:30:20Z',
        'date_raw', 'Wed, 17 May 2000 19:30:20 -0400',
        'message_id', 'NDBBIAKOPKHFGPLCODIGCEKECHAA.doug@example.com',
        'in_reply_to', jsonb_build_array('parent@example.com'),
        'references', jsonb_build_array('root@example.com', 'parent@example.com'),
        'list_id', 'list.example.org',
        'auto_submitted', NULL),
    'parts', jsonb_build_array(
        jsonb_build_object('part', '1', 'content_type', 'multipart/mixed', 'charset', NULL, 'disposition', NULL,
                           'filename', NULL, 'cte', NULL, 'size_bytes', NULL, 'sha256', NULL),
        jsonb_build_object('part', '1.1', 'content_type', 'text/plain', 'charset', 'utf-8', 'disposition', NULL,
                           'filename', NULL, 'cte', 'quoted-printable', 'size_bytes', 120,
                           'sha256', repeat('ab', 32)),
        jsonb_build_object('part', '1.2', 'content_type', 'application/pdf', 'charset', NULL,
                           'disposition', 'attachment', 'filename', 'Bericht März.pdf', 'cte', 'base64',
                           'size_bytes', 48213, 'sha256', repeat('9f', 32)),
        jsonb_build_object('part', '1.3', 'content_type', 'image/PNG', 'charset', NULL,
                           'disposition', 'inline', 'filename', 'logo.png', 'cte', 'base64',
                           'size_bytes', 2048, 'sha256', upper(repeat('c0', 32)))),
    'attachments', jsonb_build_array(
        jsonb_build_object('part', '1.2', 'filename', 'Bericht März.pdf', 'content_type', 'application/pdf',
                           'disposition', 'attachment', 'size_bytes', 48213, 'sha256', repeat('9f', 32)),
        jsonb_build_object('part', '1.3', 'filename', 'logo.png', 'content_type', 'image/PNG',
                           'disposition', 'inline', 'size_bytes', 2048, 'sha256', upper(repeat('c0', 32)))))),
    '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f'::uuid, 'the milter records a document and gets its mailmeta_id back');
RESET ROLE;

SELECT results_eq($$
    SELECT mailmeta_id::text, queue_id, received_at, direction, host(client_ip), client_name, helo,
           tls_version, tls_cipher, sasl_user, env_from, rcpt, header_from, subject, message_id,
           sent_at, size_bytes, thread_id::text, attachment_count, malformed, action, reason
      FROM mail.message_log ORDER BY rcpt $$,
    $$VALUES
      ('0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f', '4XyZ1234abc', '2026-11-22 19:40:00.123456+00'::timestamptz,
       'inbound', '2001:db8::25', 'mx.example.net', 'mx.example.net', 'TLSv1.3', 'TLS_AES_256_GCM_SHA384',
       NULL::text, 'Sender@Example.NET', 'Alice@Example.TEST', 'doug@example.com', 'Grüße aus Köln',
       'NDBBIAKOPKHFGPLCODIGCEKECHAA.doug@example.com', '2000-05-17 23:30:20+00'::timestamptz, 52345::bigint,
       '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f', 2, true, 'accept', NULL::text),
      ('0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f', '4XyZ1234abc', '2026-11-22 19:40:00.123456+00'::timestamptz,
       'inbound', '2001:db8::25', 'mx.example.net', 'mx.example.net', 'TLSv1.3', 'TLS_AES_256_GCM_SHA384',
       NULL::text, 'Sender@Example.NET', 'partner@elsewhere.org', 'doug@example.com', 'Grüße aus Köln',
       'NDBBIAKOPKHFGPLCODIGCEKECHAA.doug@example.com', '2000-05-17 23:30:20+00'::timestamptz, 52345::bigint,
       '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f', 2, true, 'accept', NULL::text) $$,
    'message_log has one row per recipient with every column as recorded');
SELECT results_eq($$
    SELECT part, filename, content_type, disposition, size_bytes, sha256
      FROM mail.message_attachments
     WHERE mailmeta_id = '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f' ORDER BY part $$,
    $$VALUES ('1.2', 'Bericht März.pdf', 'application/pdf', 'attachment', 48213::bigint, repeat('9f', 32)),
             ('1.3', 'logo.png', 'image/png', 'inline', 2048::bigint, repeat('c0', 32)) $$,
    'message_attachments lists the attachments, content types lowercased, sha256 as lowercase hex');
SELECT results_eq($$
    SELECT date_raw, in_reply_to, reference_ids, list_id, auto_submitted, malformed_reasons,
           addresses->'from'->1->>'address', addresses->'reply_to'->0->>'address',
           addresses->'to'->0->>'address', jsonb_array_length(addresses->'cc'),
           jsonb_array_length(parts), parts->2->>'filename'
      FROM mail.messages WHERE mailmeta_id = '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f' $$,
    $$VALUES ('Wed, 17 May 2000 19:30:20 -0400', ARRAY['parent@example.com'],
              ARRAY['root@example.com', 'parent@example.com'], 'list.example.org', NULL::text,
              ARRAY['8-bit bytes in header Subject'], 'second@example.com', 'reply@example.com',
              'alice@example.test', 0, 4, 'Bericht März.pdf') $$,
    'messages keeps date_raw, id lists, list id, malformed reasons, address lists and the MIME tree');
SELECT results_eq($$
    SELECT r.rcpt, u.address FROM mail.message_recipients r LEFT JOIN mail.users u USING (user_id)
     WHERE r.mailmeta_id = '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f' ORDER BY 1 $$,
    $$VALUES ('Alice@Example.TEST', 'alice@example.test'), ('partner@elsewhere.org', NULL) $$,
    'recipients are kept as given; a user''s address (any case) is linked to the user');
SELECT results_eq($$
    SELECT u.address, um.received_at, um.thread_id::text FROM mail.user_messages um JOIN mail.users u USING (user_id)
     WHERE um.mailmeta_id = '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f' $$,
    $$VALUES ('alice@example.test', '2026-11-22 19:40:00.123456+00'::timestamptz,
              '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f') $$,
    'one per-user row, for the local user only');
SELECT results_eq($$
    SELECT encode(b.sha256, 'hex'), b.size_bytes, b.content_type,
           (SELECT count(*) FROM mail.attachment_parts p WHERE p.sha256 = b.sha256)
      FROM mail.attachment_blobs b ORDER BY 1 $$,
    $$VALUES (repeat('9f', 32), 48213::bigint, 'application/pdf', 1::bigint),
             (repeat('c0', 32), 2048::bigint, 'image/png', 1::bigint) $$,
    'each attachment content is a blob with one reference');
SELECT results_eq($$SELECT message_id, thread_id::text FROM mail.thread_links ORDER BY 1$$,
    $$VALUES ('NDBBIAKOPKHFGPLCODIGCEKECHAA.doug@example.com', '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f'),
             ('parent@example.com', '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f'),
             ('root@example.com', '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f') $$,
    'the message''s own id and the ids it refers to are registered in its thread');

-- ------------------------------------------------------------ idempotence
CREATE TEMP TABLE first_state AS SELECT pg_temp.meta_state() AS s;
SET LOCAL ROLE mailmeta_milter;
SELECT is(mail.record_message(doc), '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f'::uuid,
          'recording the same document again returns its mailmeta_id')
  FROM (SELECT jsonb_build_object('version', 1, 'mailmeta_id', '0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f',
               'received_at', '2030-01-01T00:00:00Z', 'direction', 'local',
               'recipients', jsonb_build_array(jsonb_build_object('address', 'bob@example.test')),
               'action', 'reject', 'headers', '{}'::jsonb, 'parts', '[]'::jsonb,
               'attachments', jsonb_build_array(jsonb_build_object('sha256', repeat('9f', 32))))
               AS doc) d;
SELECT results_eq($$SELECT * FROM mail.record_messages(jsonb_build_array(
                      pg_temp.doc(0) || '{"mailmeta_id": "0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f"}'))$$,
                  $$VALUES ('0193f7a2-5c1e-7d3a-9b2f-4e8a1c2d3e4f'::uuid)$$,
                  'record_messages replays it too');
RESET ROLE;
SELECT is(pg_temp.meta_state(), (SELECT s FROM first_state), 'a replayed document adds and changes nothing');
SELECT is((SELECT count(*)::int FROM mail.messages), 1, 'still one message row');
SELECT is((SELECT count(*)::int FROM mail.attachment_parts WHERE sha256 IS NOT NULL), 2,
          'blob references are not counted twice');

-- ------------------------------------------------------------ local users reached
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(1, jsonb_build_object('recipients', jsonb_build_array(
        jsonb_build_object('address', ' ALICE@example.test '),
        jsonb_build_object('address', 'team@Example.test'),
        jsonb_build_object('address', 'nobody@example.test'),
        jsonb_build_object('address', 'out@elsewhere.org'),
        jsonb_build_object('address', 'dave@other.test')))))$$,
    'records a message to a user, an alias, a catch-all address, an outside and a second-domain user');
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(2, jsonb_build_object('recipients', jsonb_build_array(
        jsonb_build_object('address', 'out@elsewhere.org'), jsonb_build_object('address', 'x@other.test')))))$$,
    'records a message to outside addresses and an unknown address of a domain without catch-all');
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(3, jsonb_build_object('recipients', jsonb_build_array(
        jsonb_build_object('address', 'all@example.test'), jsonb_build_object('address', 'bob@example.test')))))$$,
    'records a message to a nested alias and one of its users');
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(4, jsonb_build_object('recipients', '[]'::jsonb)))$$,
    'records a message without recipients');
RESET ROLE;
SELECT results_eq($$
    SELECT u.address FROM mail.user_messages um JOIN mail.users u USING (user_id)
     WHERE um.mailmeta_id = pg_temp.mid(1) ORDER BY 1 $$,
    $$VALUES ('alice@example.test'), ('bob@example.test'), ('carol@example.test'), ('dave@other.test') $$,
    'user (trimmed, any case), alias members, catch-all destination and other-domain user each get one row');
SELECT results_eq($$
    SELECT r.rcpt, u.address FROM mail.message_recipients r LEFT JOIN mail.users u USING (user_id)
     WHERE r.mailmeta_id = pg_temp.mid(1) ORDER BY 1 $$,
    $$VALUES (' ALICE@example.test ', 'alice@example.test'), ('dave@other.test', 'dave@other.test'),
             ('nobody@example.test', NULL), ('out@elsewhere.org', NULL), ('team@Example.test', NULL) $$,
    'every envelope recipient is kept as given, linked to a user only when it is one');
SELECT is((SELECT count(*)::int FROM mail.user_messages WHERE mailmeta_id = pg_temp.mid(2)), 0,
          'outside and unknown recipients reach no user');
SELECT is((SELECT count(*)::int FROM mail.message_recipients WHERE mailmeta_id = pg_temp.mid(2)), 2,
          '... but are recorded as recipients');
SELECT results_eq($$
    SELECT u.address FROM mail.user_messages um JOIN mail.users u USING (user_id)
     WHERE um.mailmeta_id = pg_temp.mid(3) ORDER BY 1 $$,
    $$VALUES ('alice@example.test'), ('bob@example.test'), ('carol@example.test') $$,
    'an alias of aliases reaches every user once, also when one is a recipient too');
SELECT results_eq($$SELECT rcpt, mailmeta_id FROM mail.message_log WHERE mailmeta_id = pg_temp.mid(4)$$,
                  $$VALUES (NULL::text, pg_temp.mid(4))$$,
                  'a message without recipients has one message_log row, rcpt NULL');
SELECT results_eq($$SELECT l.rcpt, u.address
                      FROM mail.local_recipients(ARRAY['team@example.test', 'nobody@example.test',
                                                       'alice@example.test', 'x@elsewhere.org']) l
                      JOIN mail.users u USING (user_id) ORDER BY 1, 2$$,
    $$VALUES ('alice@example.test', 'alice@example.test'), ('nobody@example.test', 'carol@example.test'),
             ('team@example.test', 'alice@example.test'), ('team@example.test', 'bob@example.test')$$,
    'local_recipients tells which users each recipient reaches');

-- ------------------------------------------------------------ attachment dedup
CREATE TEMP TABLE blob_before AS
    SELECT sha256, xmin::text AS row_xmin, ctid::text AS row_ctid FROM mail.attachment_blobs;
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(5, jsonb_build_object('attachments', jsonb_build_array(
        jsonb_build_object('part', '2', 'filename', 'a.pdf', 'content_type', 'application/pdf',
                           'disposition', 'attachment', 'size_bytes', 10, 'sha256', repeat('11', 32))))))$$,
    'records a message with an attachment');
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(6, jsonb_build_object('attachments', jsonb_build_array(
        jsonb_build_object('part', '3', 'filename', 'same content.bin', 'content_type', 'application/octet-stream',
                           'disposition', 'attachment', 'size_bytes', 10, 'sha256', repeat('11', 32)),
        jsonb_build_object('part', '4', 'filename', 'again.pdf', 'content_type', 'application/pdf',
                           'disposition', 'attachment', 'size_bytes', 10, 'sha256', repeat('11', 32))))))$$,
    'records a second message carrying the same content twice');
RESET ROLE;
SELECT results_eq($$SELECT count(*)::int, min(content_type), min(size_bytes)::int
                      FROM mail.attachment_blobs WHERE sha256 = decode(repeat('11', 32), 'hex')$$,
                  $$VALUES (1, 'application/pdf', 10)$$,
                  'the same content is one blob, with the content type first seen');
SELECT is((SELECT count(*)::int FROM mail.attachment_parts WHERE sha256 = decode(repeat('11', 32), 'hex')), 3,
          '... referenced by three attachment rows');
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(30, jsonb_build_object('attachments', jsonb_build_array(
        jsonb_build_object('part', '2', 'filename', 'logo.png', 'content_type', 'image/png',
                           'disposition', 'inline', 'size_bytes', 2048, 'sha256', repeat('9f', 32))))))$$,
    'records another message carrying a known content');
RESET ROLE;
SELECT results_eq($$SELECT b.sha256, b.xmin::text, b.ctid::text FROM mail.attachment_blobs b
                     JOIN blob_before USING (sha256) ORDER BY 1$$,
                  $$SELECT sha256, row_xmin, row_ctid FROM blob_before ORDER BY 1$$,
                  'recording a message never updates a known blob');
SELECT results_eq($$SELECT mailmeta_id, part, filename FROM mail.message_attachments
                     WHERE sha256 = repeat('11', 32) ORDER BY 1, 2$$,
                  $$VALUES (pg_temp.mid(5), '2', 'a.pdf'), (pg_temp.mid(6), '3', 'same content.bin'),
                           (pg_temp.mid(6), '4', 'again.pdf')$$,
                  'each message keeps its own attachment rows');
SELECT is((SELECT attachment_count FROM mail.messages WHERE mailmeta_id = pg_temp.mid(6)), 2,
          'attachment_count counts the message''s attachments');

-- ------------------------------------------------------------ hostile content
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(7,
        jsonb_build_object(
            'client', jsonb_build_object('ip', 'unknown', 'name', repeat('n', 5000), 'helo', '[999.1.2.3]'),
            'queue_id', repeat('Q', 3000),
            'env_from', repeat('é', 3000) || '@example.net',
            'size_bytes', -5,
            'recipients', jsonb_build_array(jsonb_build_object('address', repeat('r', 4000) || '@example.test')),
            'parts', (SELECT jsonb_agg(jsonb_build_object('part', '1.' || i, 'content_type', 'text/plain'))
                        FROM generate_series(1, 3000) i),
            'attachments', jsonb_build_array(
                jsonb_build_object('part', repeat('9', 2000), 'filename', repeat('f', 10000), 'size_bytes', 'big',
                                   'sha256', 'not-a-hash'),
                jsonb_build_object('part', NULL, 'sha256', repeat('ab', 31)))),
        jsonb_build_object(
            'subject', repeat('s', 100000),
            'date', 'Mon, 32 Foo 99999 25:61:00 +9999',
            'date_raw', 'Mon, 32 Foo 99999 25:61:00 +9999',
            'message_id', '<' || repeat('m', 5000) || '@example.net>',
            'in_reply_to', (SELECT jsonb_agg('irt' || i || '@x') FROM generate_series(1, 50) i),
            'references', (SELECT jsonb_agg('ref' || i || '@x') FROM generate_series(1, 1000) i),
            'from', jsonb_build_array('not an object'))))$$,
    'a hostile document is recorded');
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(8, jsonb_build_object(
        'client', jsonb_build_object('ip', '192.0.2.300'), 'tls', NULL),
        jsonb_build_object('date', '2000-02-30T00:00:00Z', 'message_id', '<>', 'from', NULL)))$$,
    'a document with an impossible date and an empty Message-ID is recorded');
RESET ROLE;
SELECT results_eq($$
    SELECT client_ip, length(client_name), length(queue_id), length(env_from), size_bytes,
           length(subject), sent_at, date_raw, length(message_id), left(message_id, 3),
           cardinality(in_reply_to), cardinality(reference_ids), reference_ids[1], reference_ids[2],
           reference_ids[20], header_from, jsonb_array_length(parts), attachment_count
      FROM mail.messages WHERE mailmeta_id = pg_temp.mid(7) $$,
    $$VALUES (NULL::inet, 5000, 512, 512, NULL::bigint, 100000, NULL::timestamptz,
              'Mon, 32 Foo 99999 25:61:00 +9999', 512, 'mmm', 10, 20, 'ref1@x', 'ref982@x', 'ref1000@x',
              NULL::text, 3000, 2) $$,
    'bad client address and Date become NULL, index keys are cut to 512 characters, id lists are capped, long text is kept');
SELECT results_eq($$SELECT length(part), length(filename), size_bytes, sha256
                      FROM mail.message_attachments WHERE mailmeta_id = pg_temp.mid(7) ORDER BY part NULLS LAST$$,
                  $$VALUES (512, 10000, NULL::bigint, NULL::text), (NULL, NULL, NULL, NULL)$$,
                  'attachments with malformed hash, size or part are kept without them');
SELECT is((SELECT count(*)::int FROM mail.message_recipients WHERE mailmeta_id = pg_temp.mid(7) AND length(rcpt) = 512),
          1, 'an over-long recipient is cut to 512 characters');
SELECT results_eq($$SELECT client_ip, sent_at, message_id, thread_id = mailmeta_id, header_from
                      FROM mail.messages WHERE mailmeta_id = pg_temp.mid(8)$$,
                  $$VALUES (NULL::inet, NULL::timestamptz, NULL::text, true, NULL::text)$$,
                  'an impossible date is NULL; an empty Message-ID is none, and the message is its own thread');
SELECT is(mail.parse_timestamptz(v), NULL, 'parse_timestamptz refuses ' || quote_literal(v))
  FROM unnest(ARRAY['now', 'epoch', 'infinity', 'today', '2000-01-01 00:00:00', '2000-13-01T00:00:00Z']) AS v;
SELECT is(mail.parse_timestamptz('2000-05-17T19:30:20-04:00'), '2000-05-17 23:30:20+00'::timestamptz,
          'parse_timestamptz reads an offset');
SELECT is(mail.parse_timestamptz(v), mail.parse_timestamptz_strict(v),
          'parse_timestamptz agrees with its strict form on ' || quote_literal(v))
  FROM unnest(ARRAY['2026-12-07T10:00:00Z', '2026-12-07t10:00:00z', '2026-12-07 10:00:00+01:00',
                    '2026-12-07T10:00Z', '2026-12-07T10:00:00.123456789-0530', '2026-12-07T10:00:00+05',
                    '2024-02-29T12:00:00Z', '2026-02-29T12:00:00Z', '2026-04-31T00:00:00Z',
                    '2026-12-07T24:00:00Z', '2026-12-07T23:59:60Z', '2026-12-07T10:00:00+15:00',
                    '2026-12-07T10:00:00+16:00', '0000-01-01T00:00:00Z', '0999-12-31T23:59:59Z',
                    '2026-00-10T00:00:00Z', '2026-12-00T00:00:00Z', '2026-12-07T10:60:00Z',
                    '2026-12-07T10:00:00', 'now']) AS v;
SELECT is(mail.message_id_list(v, 10), '{}'::text[], 'message_id_list of ' || v::text || ' is empty')
  FROM unnest(ARRAY['["<>"]', '[null]', '[" <> ", null]', '[]', 'null', '{}']::jsonb[]) AS v;
SELECT is(mail.message_id_list('["<a@x>", "b@x", " <a@x> "]', 10), ARRAY['a@x', 'b@x'],
          'message_id_list cleans the ids and drops duplicates');

-- ------------------------------------------------------------ refused documents
SET LOCAL ROLE mailmeta_milter;
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(NULL)$$,
    '22023', 'invalid metadata document: the document is NULL', 'record_message refuses NULL');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message('[]')$$,
    '22023', 'invalid metadata document: the document must be a JSON object, not array', 'refuses an array');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20) - 'version')$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: key "version" is missing',
    'refuses a document without version');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"version": 2}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: unsupported version 2 (expected 1)',
    'refuses version 2');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"version": "1"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: unsupported version "1" (expected 1)',
    'refuses a version given as a string');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"mailmeta_id": "xyz"}'))$$,
    '22023', 'invalid metadata document xyz: mailmeta_id ''xyz'' is not a UUID', 'refuses a mailmeta_id that is not a UUID');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"mailmeta_id": 7}'))$$,
    '22023', 'invalid metadata document 7: "mailmeta_id" must be string, not number', 'refuses a numeric mailmeta_id');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20) - 'recipients')$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: key "recipients" is missing',
    'refuses a document without recipients');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"received_at": "yesterday"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: received_at ''yesterday'' is not an RFC 3339 date-time with offset',
    'refuses an unreadable received_at');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"direction": "sideways"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: direction ''sideways'' is not one of inbound, outbound, local, mailbox',
    'refuses an unknown direction');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"action": "bounce"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: action ''bounce'' is not one of accept, tempfail, reject, discard, hold',
    'refuses an unknown action');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"recipients": "alice@example.test"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: "recipients" must be array, not string',
    'refuses recipients that are not an array');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"recipients": [{"address": " "}]}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: every recipient must be an object with a non-empty "address" string',
    'refuses a blank recipient');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"recipients": ["alice@example.test"]}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: every recipient must be an object with a non-empty "address" string',
    'refuses a recipient that is not an object');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"headers": null}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: "headers" must be object, not null',
    'refuses null headers');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"attachments": [1]}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: every attachment must be an object',
    'refuses an attachment that is not an object');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"size_bytes": "12"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: "size_bytes" must be number or null, not string',
    'refuses a size given as a string');
SELECT * FROM pg_temp.refuses_doc($$SELECT mail.record_message(pg_temp.doc(20, '{"client": "192.0.2.1"}'))$$,
    '22023', 'invalid metadata document 0193f7a2-0000-7000-8000-000000000020: "client" must be object or null, not string',
    'refuses a client that is not an object');
SELECT * FROM pg_temp.refuses_doc($$SELECT * FROM mail.record_messages('{}')$$,
    '22023', 'record_messages wants a JSON array of metadata documents, not object', 'record_messages refuses an object');
SELECT * FROM pg_temp.refuses_doc($$SELECT * FROM mail.record_messages(jsonb_build_array(pg_temp.doc(21), pg_temp.doc(22, '{"action": "x"}'), pg_temp.doc(23)))$$,
    '22023', 'invalid metadata document 2 of 3 (0193f7a2-0000-7000-8000-000000000022): action ''x'' is not one of accept, tempfail, reject, discard, hold',
    'record_messages refuses a batch with one bad document and stores none of it');
SELECT results_eq($$SELECT * FROM mail.record_messages(jsonb_build_array(pg_temp.doc(21), pg_temp.doc(22), pg_temp.doc(21)))$$,
    $$VALUES (pg_temp.mid(21)), (pg_temp.mid(22)), (pg_temp.mid(21))$$,
    'record_messages returns the ids in document order, a repeated document once recorded');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.messages WHERE mailmeta_id IN (pg_temp.mid(21), pg_temp.mid(22))), 2,
          'the batch stored each message once');

SELECT * FROM finish();
ROLLBACK;
