-- 08_message_trace.sql — the admin's trace functions over mail.message_log
-- (by queue id, Message-ID with or without angle brackets, envelope sender
-- and recipient in any case within a time window, time window), and who may
-- record and read message metadata: the milter records but reads nothing,
-- the admin reads and traces but cannot record or write, Postfix, Dovecot
-- and PUBLIC reach none of it.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(41);
\ir 06_helpers.psql

CREATE ROLE mailmeta_test_nobody NOLOGIN;
GRANT USAGE ON SCHEMA mail TO mailmeta_test_nobody;

SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
END
$$;
RESET ROLE;

SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$
    SELECT mail.record_messages(jsonb_build_array(
        pg_temp.doc(1, jsonb_build_object('received_at', '2026-11-01T10:00:00Z', 'env_from', 'Carol@Outside.example',
                                          'recipients', '[{"address": "alice@example.test"}, {"address": "Bob@Example.test"}]'::jsonb),
                       '{"message_id": "one@outside.example"}'),
        pg_temp.doc(2, jsonb_build_object('received_at', '2026-11-05T10:00:00Z', 'env_from', 'carol@outside.example',
                                          'recipients', '[{"address": "bob@example.test"}]'::jsonb),
                       '{"message_id": "two@outside.example"}'),
        pg_temp.doc(3, jsonb_build_object('received_at', '2026-11-09T10:00:00Z', 'env_from', '',
                                          'queue_id', 'BOUNCE1'),
                       '{"message_id": "three@example.test"}')))$$,
    'the milter records a batch');
RESET ROLE;

SET LOCAL ROLE mailmeta_admin;
SELECT results_eq($$SELECT mailmeta_id, rcpt FROM mail.trace_queue_id('Q2')$$,
                  $$VALUES (pg_temp.mid(2), 'bob@example.test')$$, 'trace_queue_id finds a message by queue id');
SELECT is_empty($$SELECT * FROM mail.trace_queue_id('q2')$$, 'queue ids are case-sensitive');
SELECT results_eq($$SELECT mailmeta_id, rcpt FROM mail.trace_message_id('<one@outside.example>')$$,
                  $$VALUES (pg_temp.mid(1), 'Bob@Example.test'), (pg_temp.mid(1), 'alice@example.test')$$,
                  'trace_message_id finds every recipient row of a Message-ID given with angle brackets');
SELECT results_eq($$SELECT mailmeta_id FROM mail.trace_message_id('three@example.test')$$,
                  $$VALUES (pg_temp.mid(3))$$, '... and without them');
SELECT results_eq($$SELECT mailmeta_id, rcpt FROM mail.trace_sender('CAROL@outside.example', '2026-11-01', '2026-12-01')$$,
                  $$VALUES (pg_temp.mid(1), 'Bob@Example.test'), (pg_temp.mid(1), 'alice@example.test'),
                           (pg_temp.mid(2), 'bob@example.test')$$,
                  'trace_sender matches the envelope sender in any case, oldest first');
SELECT results_eq($$SELECT mailmeta_id FROM mail.trace_sender('carol@outside.example', '2026-11-02', '2026-11-05T10:00:00Z')$$,
                  $$VALUES (pg_temp.mid(2))$$, 'trace_sender keeps to the window, both ends included');
SELECT results_eq($$SELECT mailmeta_id FROM mail.trace_sender('<>', '2026-11-01', '2026-12-01')$$,
                  $$VALUES (pg_temp.mid(3))$$, 'trace_sender finds bounces by <>');
SELECT results_eq($$SELECT mailmeta_id FROM mail.trace_sender('', '2026-11-01', '2026-12-01')$$,
                  $$VALUES (pg_temp.mid(3))$$, '... or by the empty string');
SELECT is_empty($$SELECT * FROM mail.trace_sender('carol@outside.example')$$,
                'trace_sender looks at the last 7 days by default');
SELECT results_eq($$SELECT mailmeta_id, rcpt FROM mail.trace_recipient('bob@EXAMPLE.test', '2026-11-01', '2026-12-01')$$,
                  $$VALUES (pg_temp.mid(1), 'Bob@Example.test'), (pg_temp.mid(2), 'bob@example.test')$$,
                  'trace_recipient matches in any case and returns only that recipient''s rows');
SELECT results_eq($$SELECT mailmeta_id FROM mail.trace_recipient('bob@example.test', '2026-11-04', '2026-11-06')$$,
                  $$VALUES (pg_temp.mid(2))$$, 'trace_recipient keeps to the window');
SELECT results_eq($$SELECT DISTINCT mailmeta_id FROM mail.trace_time('2026-11-04', '2026-11-10') ORDER BY 1$$,
                  $$VALUES (pg_temp.mid(2)), (pg_temp.mid(3))$$, 'trace_time lists the messages of a window');
SELECT is((SELECT count(*)::int FROM mail.trace_time('2026-11-01')), 4, 'trace_time runs until now by default');

-- ------------------------------------------------------------ privileges
SELECT lives_ok('SELECT * FROM mail.message_log', 'admin reads message_log');
SELECT lives_ok('SELECT * FROM mail.message_attachments', 'admin reads message_attachments');
SELECT lives_ok('SELECT * FROM mail.messages, mail.user_messages, mail.message_recipients, mail.attachment_blobs,
                               mail.attachment_parts, mail.thread_links LIMIT 1', 'admin reads the metadata tables');
SELECT throws_ok($$SELECT mail.record_message(pg_temp.doc(9))$$, '42501', NULL, 'admin cannot record messages');
SELECT throws_ok($$DELETE FROM mail.messages$$, '42501', NULL, 'admin cannot delete messages directly');
SELECT throws_ok($$UPDATE mail.user_messages SET thread_id = NULL$$, '42501', NULL, 'admin cannot update per-user rows');
SELECT throws_ok($$SELECT mail.lock_message_ids(ARRAY['x'])$$, '42501', NULL, 'admin cannot call internal helpers');
SELECT throws_ok($$SELECT mail.metadata_problem('{}')$$, '42501', NULL, '... nor the validation helpers');
RESET ROLE;

SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.record_message(pg_temp.doc(9))$$, 'milter records a message');
SELECT throws_ok('SELECT * FROM mail.messages', '42501', NULL, 'milter cannot read mail.messages');
SELECT throws_ok('SELECT * FROM mail.message_log', '42501', NULL, 'milter cannot read message_log');
SELECT throws_ok('SELECT * FROM mail.thread_links', '42501', NULL, 'milter cannot read thread_links');
SELECT throws_ok($$INSERT INTO mail.thread_links VALUES ('x', gen_random_uuid())$$, '42501', NULL,
                 'milter cannot write the tables directly');
SELECT throws_ok($$SELECT * FROM mail.trace_time('2000-01-01')$$, '42501', NULL, 'milter cannot trace');
SELECT throws_ok($$SELECT * FROM mail.local_recipients(ARRAY['alice@example.test'])$$, '42501', NULL,
                 'milter cannot probe the directory');
SELECT throws_ok($$SELECT mail.lock_message_ids(ARRAY['x'])$$, '42501', NULL, 'milter cannot take the locks directly');
RESET ROLE;

SET LOCAL ROLE mailmeta_postfix;
SELECT throws_ok($$SELECT mail.record_message(pg_temp.doc(10))$$, '42501', NULL, 'postfix cannot record messages');
SELECT throws_ok('SELECT * FROM mail.message_log', '42501', NULL, 'postfix cannot read message_log');
SELECT throws_ok('SELECT * FROM mail.user_messages', '42501', NULL, 'postfix cannot read per-user rows');
RESET ROLE;
SET LOCAL ROLE mailmeta_dovecot;
SELECT throws_ok($$SELECT mail.record_messages('[]')$$, '42501', NULL, 'dovecot cannot record messages');
SELECT throws_ok('SELECT * FROM mail.user_messages', '42501', NULL, 'dovecot cannot read per-user rows (yet)');
SELECT throws_ok('SELECT * FROM mail.message_attachments', '42501', NULL, 'dovecot cannot read message_attachments');
RESET ROLE;
SET LOCAL ROLE mailmeta_test_nobody;
SELECT throws_ok($$SELECT mail.record_message(pg_temp.doc(11))$$, '42501', NULL, 'a role without grants cannot record');
SELECT throws_ok($$SELECT * FROM mail.trace_queue_id('Q1')$$, '42501', NULL, 'nor trace');
SELECT throws_ok('SELECT * FROM mail.message_log', '42501', NULL, 'nor read message_log');
RESET ROLE;

SELECT is((SELECT count(*)::int FROM mail.messages), 4, 'only the milter''s records were stored');
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace
       AND has_function_privilege('mailmeta_milter', p.oid, 'EXECUTE')
       AND p.proname NOT IN ('record_message', 'record_messages', 'record_verdicts',
                             'adopt_milter_records',
                             'policy_snapshot', 'policy_check', 'expire_rate_counters') $$,
    'the milter may execute record_message(s), record_verdicts, adopt_milter_records and the policy functions, and no other function');

SELECT * FROM finish();
ROLLBACK;
