-- 11_contacts.sql — the per-user address book: collected from the mail a
-- user sends (authenticated submission, local submission) with use counts
-- and last use, display names from To and Cc, Bcc recipients included, the
-- sender and malformed addresses left out; collected again from the Sent
-- folder through the mirror, each message counted once whichever path sees
-- it; blocked entries frozen and never suggested; manual entries keep their
-- names; add, edit, remove and block with every refusal and its SQLSTATE,
-- nothing changed; users never see each other's contacts; privileges.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(99);
\ir 06_helpers.psql
\ir mirror_helpers.psql

-- ------------------------------------------------------------ structure
SELECT has_table('mail', 'contacts', 'has table mail.contacts');
SELECT has_table('mail', 'contact_messages', 'has table mail.contact_messages');
SELECT columns_are('mail', 'contacts', ARRAY['user_id', 'address', 'display_name', 'use_count', 'last_used',
    'blocked', 'source', 'created_at']);
SELECT col_is_pk('mail', 'contacts', ARRAY['user_id', 'address'], 'contacts keyed by (user_id, address)');
SELECT fk_ok('mail', 'contacts', 'user_id', 'mail', 'users', 'user_id');
SELECT columns_are('mail', 'contact_messages', ARRAY['user_id', 'message_key', 'counted_at']);
SELECT col_is_pk('mail', 'contact_messages', ARRAY['user_id', 'message_key'], 'contact_messages keyed by (user_id, message_key)');
SELECT fk_ok('mail', 'contact_messages', 'user_id', 'mail', 'users', 'user_id');
SELECT is(pg_get_function_result('mail.list_contacts(text)'::regprocedure),
          'TABLE(contact_address text, display_name text, use_count integer, last_used timestamp with time zone, blocked boolean, source text, created_at timestamp with time zone)',
          'list_contacts columns');
SELECT is(pg_get_function_arguments('mail.add_contact(text,text,text)'::regprocedure),
          'address text, contact_address text, display_name text DEFAULT NULL::text', 'add_contact parameters');
SELECT is(pg_get_function_arguments('mail.edit_contact(text,text,text)'::regprocedure),
          'address text, contact_address text, display_name text', 'edit_contact parameters');
SELECT is(pg_get_function_arguments('mail.remove_contact(text,text)'::regprocedure),
          'address text, contact_address text', 'remove_contact parameters');
SELECT is(pg_get_function_arguments('mail.block_contact(text,text,boolean)'::regprocedure),
          'address text, contact_address text, blocked boolean DEFAULT true', 'block_contact parameters');
SELECT is(pg_get_function_arguments('mail.suggest_contacts(text,text,integer)'::regprocedure),
          'address text, prefix text, max_rows integer DEFAULT 10', 'suggest_contacts parameters');

-- ------------------------------------------------------------ users
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

-- A message alice sends: document p_id sent as p_sasl (NULL: local
-- submission from p_env_from) to the envelope recipients p_rcpts, with the
-- given To and Cc headers and Message-ID, at p_at.
CREATE FUNCTION pg_temp.sent(p_id integer, p_rcpts text[], p_to jsonb DEFAULT '[]', p_cc jsonb DEFAULT '[]',
                             p_msgid text DEFAULT NULL, p_at text DEFAULT '2026-11-22T19:40:00Z',
                             p_sasl text DEFAULT 'alice@example.test', p_env_from text DEFAULT 'alice@example.test',
                             p_direction text DEFAULT 'outbound')
    RETURNS jsonb
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT pg_temp.doc(p_id,
        jsonb_build_object('direction', p_direction, 'sasl_user', p_sasl, 'env_from', p_env_from,
                           'received_at', p_at,
                           'client', CASE WHEN p_sasl IS NULL THEN NULL
                                          ELSE '{"ip": "192.0.2.7", "name": "client.example.net", "helo": "c"}'::jsonb END,
                           'recipients', (SELECT coalesce(jsonb_agg(jsonb_build_object('address', r)), '[]')
                                            FROM unnest(p_rcpts) AS r)),
        jsonb_build_object('to', p_to, 'cc', p_cc, 'message_id', p_msgid,
                           'from', jsonb_build_array(jsonb_build_object('name', 'Alice', 'address', 'alice@example.test'))))
$$;
CREATE FUNCTION pg_temp.book(p_address text)
    RETURNS TABLE (address text, display_name text, use_count integer, last_used timestamptz, blocked boolean, source text)
    LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT c.address, c.display_name, c.use_count, c.last_used, c.blocked, c.source
      FROM mail.contacts c JOIN mail.users u USING (user_id)
     WHERE u.address = p_address ORDER BY c.address
$$;

-- ------------------------------------------------------------ collected from sent mail
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(1,
    ARRAY['Doug@Example.com', 'bob@example.test', 'secret@example.org', 'alice@example.test'],
    '[{"name": "Doug Sauder", "address": "doug@example.com"}, {"name": "Me", "address": "alice@example.test"}]',
    '[{"name": "Bob", "address": "Bob@Example.TEST"}]', '<one@example.test>', '2026-11-01T10:00:00Z',
    'Alice@Example.TEST'));
RESET ROLE;
SELECT results_eq($$SELECT * FROM pg_temp.book('alice@example.test')$$,
    $$VALUES ('bob@example.test', 'Bob', 1, '2026-11-01T10:00:00Z'::timestamptz, false, 'auto'),
             ('doug@example.com', 'Doug Sauder', 1, '2026-11-01T10:00:00Z', false, 'auto'),
             ('secret@example.org', NULL, 1, '2026-11-01T10:00:00Z', false, 'auto')$$,
    'an authenticated sender''s envelope recipients, named from To and Cc, Bcc without a name, never the sender');
CREATE TEMP TABLE st AS SELECT pg_temp.state() AS s;
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(1,
    ARRAY['Doug@Example.com', 'bob@example.test', 'secret@example.org', 'alice@example.test'],
    '[{"name": "Doug Sauder", "address": "doug@example.com"}, {"name": "Me", "address": "alice@example.test"}]',
    '[{"name": "Bob", "address": "Bob@Example.TEST"}]', '<one@example.test>', '2026-11-01T10:00:00Z',
    'Alice@Example.TEST'));
RESET ROLE;
SELECT is(pg_temp.state(), (SELECT s FROM st), 'a replayed document counts nothing');

CREATE TEMP TABLE book_before AS SELECT * FROM pg_temp.book('alice@example.test');
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(90, ARRAY['spam-victim@example.net'], '[]', '[]',
                                        '<refused@example.test>', '2026-11-02T10:00:00Z')
                           || '{"action": "reject", "reason": "Message refused as spam"}');
RESET ROLE;
SELECT results_eq($$SELECT * FROM pg_temp.book('alice@example.test')$$,
                  $$SELECT * FROM book_before$$,
                  'a sent message the milter refused adds no contact');

SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_messages(jsonb_build_array(
    pg_temp.sent(2, ARRAY['doug@example.com'], '[{"name": "Douglas", "address": "doug@example.com"}]', '[]',
                 '<two@example.test>', '2026-11-05T10:00:00Z'),
    pg_temp.sent(3, ARRAY['doug@example.com'], '[{"name": null, "address": "doug@example.com"}]', '[]',
                 '<three@example.test>', '2026-10-01T10:00:00Z'),
    pg_temp.sent(4, ARRAY['doug@example.com'], '[]', '[]', '<three@example.test>', '2026-10-01T11:00:00Z')));
RESET ROLE;
SELECT results_eq($$SELECT * FROM pg_temp.book('alice@example.test') WHERE address = 'doug@example.com'$$,
    $$VALUES ('doug@example.com', 'Douglas', 3, '2026-11-05T10:00:00Z'::timestamptz, false, 'auto')$$,
    'more messages: counted once each (two with one Message-ID once), the latest use, the latest name');

SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(5, ARRAY['carol@example.test'], '[{"name": "Carol", "address": "carol@example.test"}]',
                                        '[]', NULL, '2026-11-06T10:00:00Z', NULL, 'alice@example.test'));
SELECT mail.record_message(pg_temp.sent(6, ARRAY['inbound@example.org'], '[{"name": null, "address": "inbound@example.org"}]', '[]', '<six@example.org>',
                                        '2026-11-06T10:00:00Z', NULL, 'alice@example.test', 'inbound'));
SELECT mail.record_message(pg_temp.sent(7, ARRAY['stranger@example.org'], '[]', '[]', '<seven@example.org>',
                                        '2026-11-06T10:00:00Z', 'nobody@example.test'));
SELECT mail.record_message(pg_temp.sent(8, ARRAY['not an address', 'x@', repeat('a', 250) || '@example.org', 'ok@example.org'],
                                        '"garbage"', '[1, {"name": 2}]', '<eight@example.test>', '2026-11-06T10:00:00Z'));
RESET ROLE;
SELECT results_eq($$SELECT address, display_name, use_count, last_used FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('carol@example.test', 'ok@example.org')$$,
    $$VALUES ('carol@example.test', 'Carol', 1, '2026-11-06T10:00:00Z'::timestamptz),
             ('ok@example.org', NULL, 1, '2026-11-06T10:00:00Z')$$,
    'local submission (no SASL) counts for the envelope sender; hostile headers and addresses are skipped, not refused');
SELECT is((SELECT direction FROM mail.messages WHERE mailmeta_id = pg_temp.mid(5)), 'local',
          'the local submission was stored as local (every recipient local)');
SELECT is((SELECT count(*)::int FROM pg_temp.book('alice@example.test')), 5,
          'nothing from inbound mail, from a sender who is not a user, nor malformed addresses');
SELECT is((SELECT count(*)::int FROM mail.contact_messages c JOIN mail.users u USING (user_id)
            WHERE u.address = 'alice@example.test' AND c.message_key = pg_temp.mid(5)::text), 1,
          'a message without Message-ID is remembered by its mailmeta_id');

-- ------------------------------------------------------------ collected from the Sent folder
SET LOCAL ROLE mailmeta_mirror;
SELECT is((SELECT count(*)::int FROM mail.mirror_folders('alice@example.test', jsonb_build_array(
          jsonb_build_object('guid', pg_temp.guid(1), 'name', 'INBOX', 'special_use', NULL, 'subscribed', true),
          jsonb_build_object('guid', pg_temp.guid(2), 'name', 'Sent Items', 'special_use', '\Sent', 'subscribed', true)))),
          2, 'alice''s folders, one of them \Sent');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(2), pg_temp.batch(1, jsonb_build_array(
          pg_temp.msg(1, 1), pg_temp.msg(2, 21), pg_temp.msg(3, 22), pg_temp.msg(4, 6)), '{}', true)),
          ARRAY[2, 3]::bigint[], 'alice''s Sent folder: two messages the milter recorded, two new ones');
RESET ROLE;
SELECT results_eq($$SELECT address, use_count FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('doug@example.com', 'inbound@example.org')$$,
    $$VALUES ('doug@example.com', 3), ('inbound@example.org', 1)$$,
    'linking Sent messages with metadata: counted once (message 1 was counted already; message 6 now)');
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(21,
    '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-10T10:00:00Z"}',
    '{"message_id": "<twentyone@example.test>", "to": [{"name": "Erin E", "address": "erin@example.net"}],
      "cc": [{"name": null, "address": "bob@example.test"}, {"name": "Me", "address": "alice@example.test"}]}'))$$,
    'recording a new message of the Sent folder');
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(22,
    '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-11T10:00:00Z"}',
    '{"message_id": "<two@example.test>", "to": [{"name": "Doug", "address": "doug@example.com"}]}'))$$,
    'recording the Sent copy of a message the milter counted (same Message-ID, another mailmeta_id)');
RESET ROLE;
SELECT results_eq($$SELECT address, display_name, use_count, last_used FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('erin@example.net', 'bob@example.test', 'doug@example.com')$$,
    $$VALUES ('bob@example.test', 'Bob', 2, '2026-11-10T10:00:00Z'::timestamptz),
             ('doug@example.com', 'Douglas', 3, '2026-11-05T10:00:00Z'),
             ('erin@example.net', 'Erin E', 1, '2026-11-10T10:00:00Z')$$,
    'a Sent message''s To and Cc are counted; its copy of a counted message is not');
DELETE FROM st;
INSERT INTO st SELECT pg_temp.state();
SET LOCAL ROLE mailmeta_mirror;
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(21,
    '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-10T10:00:00Z"}',
    '{"message_id": "<twentyone@example.test>", "to": [{"name": "Erin E", "address": "erin@example.net"}]}'))$$,
    'recording it again');
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(2), pg_temp.batch(1, jsonb_build_array(
          pg_temp.msg(1, 1), pg_temp.msg(2, 21), pg_temp.msg(3, 22), pg_temp.msg(4, 6)), '{}', true)),
          '{}'::bigint[], 'sending the Sent folder again in full');
RESET ROLE;
SELECT is(pg_temp.state(), (SELECT s FROM st), 'recording again and resyncing change nothing');
SELECT results_eq($$SELECT address, use_count FROM pg_temp.book('alice@example.test')$$,
    $$VALUES ('bob@example.test', 2), ('carol@example.test', 1), ('doug@example.com', 3),
             ('erin@example.net', 1), ('inbound@example.org', 1), ('ok@example.org', 1), ('secret@example.org', 1)$$,
    'the address book after both paths');
SET LOCAL ROLE mailmeta_mirror;
SELECT is(pg_temp.sync('alice@example.test', pg_temp.guid(1), pg_temp.batch(1, jsonb_build_array(pg_temp.msg(1, 23)), '{}', true)),
          ARRAY[1]::bigint[], 'a message in the INBOX');
SELECT lives_ok($$SELECT mail.record_mailbox_message('alice@example.test', pg_temp.doc(23,
    '{"direction": "mailbox", "recipients": [], "received_at": "2026-11-12T10:00:00Z"}',
    '{"message_id": "<inbox@example.org>", "to": [{"name": "Frank", "address": "frank@example.org"}]}'))$$,
    'recording it');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM pg_temp.book('alice@example.test') WHERE address = 'frank@example.org'), 0,
          'messages in other folders are not collected');

-- ------------------------------------------------------------ blocking, manual entries
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.block_contact('alice@example.test', 'DOUG@example.com')$$, 'block_contact');
SELECT lives_ok($$SELECT mail.add_contact('alice@example.test', ' <Grace@Example.org> ', ' Grace H ')$$, 'add_contact');
SELECT lives_ok($$SELECT mail.edit_contact('alice@example.test', 'bob@example.test', 'Robert')$$, 'edit_contact');
SELECT lives_ok($$SELECT mail.block_contact('alice@example.test', 'spam@example.org')$$, 'block_contact of an unknown address');
RESET ROLE;
SELECT results_eq($$SELECT * FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('doug@example.com', 'grace@example.org', 'bob@example.test', 'spam@example.org')$$,
    $$VALUES ('bob@example.test', 'Robert', 2, '2026-11-10T10:00:00Z'::timestamptz, false, 'manual'),
             ('doug@example.com', 'Douglas', 3, '2026-11-05T10:00:00Z', true, 'auto'),
             ('grace@example.org', 'Grace H', 0, NULL, false, 'manual'),
             ('spam@example.org', NULL, 0, NULL, true, 'manual')$$,
    'blocked, added (trimmed, lowercased), edited (now manual), and blocked before ever used');
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(9, ARRAY['doug@example.com', 'grace@example.org', 'bob@example.test'],
    '[{"name": "D", "address": "doug@example.com"}, {"name": "G.", "address": "grace@example.org"}, {"name": "B", "address": "bob@example.test"}]',
    '[]', '<nine@example.test>', '2026-11-20T10:00:00Z'));
RESET ROLE;
SELECT results_eq($$SELECT address, display_name, use_count, last_used, blocked FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('doug@example.com', 'grace@example.org', 'bob@example.test')$$,
    $$VALUES ('bob@example.test', 'Robert', 3, '2026-11-20T10:00:00Z'::timestamptz, false),
             ('doug@example.com', 'Douglas', 3, '2026-11-05T10:00:00Z', true),
             ('grace@example.org', 'Grace H', 1, '2026-11-20T10:00:00Z', false)$$,
    'a blocked entry is frozen; manual entries are counted and keep their names');
SET LOCAL ROLE mailmeta_reader;
SELECT results_eq($$SELECT contact_address, display_name, use_count, blocked, source FROM mail.list_contacts('alice@example.test')$$,
    $$VALUES ('bob@example.test', 'Robert', 3, false, 'manual'), ('carol@example.test', 'Carol', 1, false, 'auto'),
             ('doug@example.com', 'Douglas', 3, true, 'auto'), ('erin@example.net', 'Erin E', 1, false, 'auto'),
             ('grace@example.org', 'Grace H', 1, false, 'manual'), ('inbound@example.org', NULL, 1, false, 'auto'),
             ('ok@example.org', NULL, 1, false, 'auto'), ('secret@example.org', NULL, 1, false, 'auto'),
             ('spam@example.org', NULL, 0, true, 'manual')$$,
    'list_contacts: every entry, blocked ones included, by address');
SELECT results_eq($$SELECT contact_address FROM mail.suggest_contacts('alice@example.test', 'D')$$,
    $$SELECT NULL::text WHERE false$$, 'suggest_contacts never returns a blocked entry');
SELECT results_eq($$SELECT contact_address, use_count FROM mail.suggest_contacts('alice@example.test', '')$$,
    $$VALUES ('bob@example.test', 3), ('grace@example.org', 1), ('erin@example.net', 1), ('carol@example.test', 1),
             ('inbound@example.org', 1), ('ok@example.org', 1), ('secret@example.org', 1)$$,
    'suggest_contacts without a prefix: most used first, then most recent');
SELECT results_eq($$SELECT contact_address FROM mail.suggest_contacts('alice@example.test', 'E', 5)$$,
    $$VALUES ('erin@example.net')$$, 'a prefix matches addresses, in any case');
SELECT results_eq($$SELECT contact_address FROM mail.suggest_contacts('alice@example.test', 'h')$$,
    $$VALUES ('grace@example.org')$$, 'and any word of a display name');
SELECT results_eq($$SELECT contact_address FROM mail.suggest_contacts('alice@example.test', 'rob')$$,
    $$VALUES ('bob@example.test')$$, 'by display name');
SELECT results_eq($$SELECT contact_address FROM mail.suggest_contacts('alice@example.test', NULL, 2)$$,
    $$VALUES ('bob@example.test'), ('grace@example.org')$$, 'max_rows limits the suggestions');
RESET ROLE;

SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.block_contact('alice@example.test', 'doug@example.com', false)$$, 'unblock');
SELECT lives_ok($$SELECT mail.remove_contact('alice@example.test', 'ERIN@example.net')$$, 'remove_contact');
SELECT lives_ok($$SELECT mail.edit_contact('alice@example.test', 'grace@example.org', NULL)$$, 'edit_contact clearing the name');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(10, ARRAY['doug@example.com', 'erin@example.net'],
    '[{"name": "Doug S.", "address": "doug@example.com"}]', '[]', '<ten@example.test>', '2026-11-21T10:00:00Z'));
RESET ROLE;
SELECT results_eq($$SELECT address, display_name, use_count, last_used, blocked, source FROM pg_temp.book('alice@example.test')
                     WHERE address IN ('doug@example.com', 'erin@example.net', 'grace@example.org')$$,
    $$VALUES ('doug@example.com', 'Doug S.', 4, '2026-11-21T10:00:00Z'::timestamptz, false, 'auto'),
             ('erin@example.net', NULL, 1, '2026-11-21T10:00:00Z', false, 'auto'),
             ('grace@example.org', NULL, 1, '2026-11-20T10:00:00Z', false, 'manual')$$,
    'unblocked: counted again; removed: collected afresh; a cleared name stays cleared');

-- ------------------------------------------------------------ other users
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_message(pg_temp.sent(11, ARRAY['doug@example.com'], '[]', '[]', '<eleven@example.test>',
                                        '2026-11-21T11:00:00Z', 'bob@example.test', 'bob@example.test'));
RESET ROLE;
SET LOCAL ROLE mailmeta_reader;
SELECT results_eq($$SELECT contact_address, use_count FROM mail.list_contacts('bob@example.test')$$,
    $$VALUES ('doug@example.com', 1)$$, 'bob has his own address book');
SELECT is((SELECT use_count FROM mail.list_contacts('alice@example.test') WHERE contact_address = 'doug@example.com'), 4,
          'bob''s mail does not count in alice''s');
SELECT is_empty($$SELECT * FROM mail.list_contacts('carol@example.test')$$, 'carol has no contacts');
RESET ROLE;

-- ------------------------------------------------------------ refused arguments
SET LOCAL ROLE mailmeta_admin;
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', 'BOB@example.test')$$,
    '23505', 'contact ''bob@example.test'' of user ''alice@example.test'' already exists', 'add_contact: an existing entry');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', 'not an address')$$,
    '22023', 'invalid contact address ''not an address'': expected local-part@domain: one "@", no blanks, control characters or <>,;:"()[]\',
    'add_contact: a malformed contact address');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', '')$$,
    '22023', 'invalid contact address '''': the address is empty', 'add_contact: an empty contact address');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', repeat('a', 250) || '@example.org')$$,
    '22023', 'invalid contact address ''' || repeat('a', 250) || '@example.org'': the address is longer than 254 characters',
    'add_contact: a contact address too long');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', 'h@example.org', repeat('n', 257))$$,
    '22023', 'display name is 257 characters long; at most 256 are allowed', 'add_contact: a display name too long');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('alice@example.test', 'h@example.org', E'a\x01b')$$,
    '22023', E'display name ''a\x01b'' contains control characters', 'add_contact: control characters in the name');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('nobody@example.test', 'h@example.org')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'add_contact: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.add_contact('nobody', 'h@example.org')$$,
    '22023', 'invalid address ''nobody'': expected exactly one "@", as in local-part@domain', 'add_contact: malformed address');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.edit_contact('alice@example.test', 'h@example.org', 'H')$$,
    'P0002', 'contact ''h@example.org'' of user ''alice@example.test'' does not exist', 'edit_contact: unknown contact');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.edit_contact('nobody@example.test', 'bob@example.test', 'H')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'edit_contact: unknown user');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.remove_contact('alice@example.test', 'h@example.org')$$,
    'P0002', 'contact ''h@example.org'' of user ''alice@example.test'' does not exist', 'remove_contact: unknown contact');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.remove_contact('alice@example.test', 'h@')$$,
    '22023', 'invalid contact address ''h@'': expected local-part@domain: one "@", no blanks, control characters or <>,;:"()[]\',
    'remove_contact: a malformed contact address');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.block_contact('alice@example.test', 'h@example.org', false)$$,
    'P0002', 'contact ''h@example.org'' of user ''alice@example.test'' does not exist', 'block_contact: unblocking an unknown contact');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.block_contact('alice@example.test', 'bob@example.test', NULL)$$,
    '22023', 'blocked must be true or false for contact ''bob@example.test'', not NULL', 'block_contact: NULL');
SELECT * FROM pg_temp.refuses_mirror($$SELECT mail.block_contact('nobody@example.test', 'bob@example.test')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'block_contact: unknown user');
SELECT throws_ok($$SELECT * FROM mail.list_contacts('nobody@example.test')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'list_contacts: unknown user');
SELECT throws_ok($$SELECT * FROM mail.suggest_contacts('alice@example.test', 'a', 0)$$,
    '22023', 'max_rows 0 is not from 1 to 100', 'suggest_contacts: max_rows 0');
SELECT throws_ok($$SELECT * FROM mail.suggest_contacts('nobody@example.test', 'a')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'suggest_contacts: unknown user');
RESET ROLE;

-- ------------------------------------------------------------ privileges
SET LOCAL ROLE mailmeta_reader;
SELECT throws_ok($$SELECT mail.add_contact('alice@example.test', 'h@example.org')$$, '42501', NULL, 'the reader cannot add');
SELECT throws_ok($$SELECT mail.edit_contact('alice@example.test', 'bob@example.test', 'x')$$, '42501', NULL, 'nor edit');
SELECT throws_ok($$SELECT mail.remove_contact('alice@example.test', 'bob@example.test')$$, '42501', NULL, 'nor remove');
SELECT throws_ok($$SELECT mail.block_contact('alice@example.test', 'bob@example.test')$$, '42501', NULL, 'nor block');
RESET ROLE;
SET LOCAL ROLE mailmeta_mirror;
SELECT throws_ok($$SELECT * FROM mail.list_contacts('alice@example.test')$$, '42501', NULL, 'the mirror role cannot list contacts');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT throws_ok($$SELECT * FROM mail.list_contacts('alice@example.test')$$, '42501', NULL, 'nor the milter');
SELECT throws_ok($$SELECT mail.count_contacts('{}', '{}', '{}', '{}', '{}')$$, '42501', NULL, 'nor call the collector directly');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT * FROM mail.contacts$$, 'the admin reads mail.contacts');
SELECT throws_ok($$DELETE FROM mail.contacts$$, '42501', NULL, 'but cannot write it directly');
SELECT lives_ok($$SELECT mail.delete_user('alice@example.test')$$, 'delete_user of a user with contacts');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.contacts) + (SELECT count(*)::int FROM mail.contact_messages c
            WHERE NOT EXISTS (SELECT FROM mail.users u WHERE u.user_id = c.user_id)), 1,
          'deleting a user deletes its contacts and counted messages (bob''s one contact stays)');

SELECT * FROM finish();
ROLLBACK;
