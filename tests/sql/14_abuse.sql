-- 14_abuse.sql — every decision traceable, and outbound abuse protection:
-- mail.record_verdicts called the way the milter calls it (in the statement
-- of mail.record_messages), its rows in mail.message_log (also for a
-- session refused before DATA), idempotent replays; abuse events from
-- refused outgoing mail (spam, virus, rate limits) up to a suspension, which
-- the snapshot lists and policy_check enforces, until lift_suspension; the
-- admin's suspend_sender, list_suspensions, set_abuse_policy and their
-- bad-input errors; who may call what.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(104);
\ir 06_helpers.psql
\ir policy_helpers.psql

CREATE ROLE mailmeta_test_nobody NOLOGIN;
GRANT USAGE ON SCHEMA mail TO mailmeta_test_nobody;

-- Records a batch the way mailmeta-milter does; returns how many ids came back.
CREATE FUNCTION pg_temp.rec(p_docs jsonb) RETURNS integer
    LANGUAGE sql VOLATILE
AS $$
    SELECT count(*)::int FROM mail.record_messages(mail.record_verdicts(p_docs)) m
$$;
-- An outgoing message of p_user the milter refused (p_action) with this
-- policy object, received p_ago before now.
CREATE FUNCTION pg_temp.out(p_id integer, p_user text, p_action text, p_policy jsonb,
                            p_ago interval DEFAULT '0', p_direction text DEFAULT 'outbound')
    RETURNS jsonb
    LANGUAGE sql STABLE
AS $$
    SELECT pg_temp.doc(p_id, jsonb_build_object(
        'direction', p_direction, 'sasl_user', p_user, 'env_from', p_user, 'action', p_action,
        'client', jsonb_build_object('ip', '192.0.2.44', 'name', NULL, 'helo', 'laptop'),
        'recipients', '[{"address": "someone@outside.example"}]'::jsonb,
        'received_at', to_char((now() - p_ago) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'policy', p_policy))
$$;
CREATE FUNCTION pg_temp.events(p_user text) RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT count(*)::int FROM mail.abuse_events a JOIN mail.users u USING (user_id) WHERE u.address = p_user
$$;

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

-- ------------------------------------------------------------ structure
SELECT has_table('mail', t, 'has table mail.' || t)
  FROM unnest(ARRAY['message_verdicts', 'abuse_events', 'sender_suspensions']) AS t;
SELECT col_is_pk('mail', 'message_verdicts', 'mailmeta_id', 'message_verdicts keyed by mailmeta_id');
SELECT fk_ok('mail', 'message_verdicts', 'mailmeta_id', 'mail', 'messages', 'mailmeta_id');
SELECT is((SELECT condeferrable AND condeferred FROM pg_constraint
            WHERE conrelid = 'mail.message_verdicts'::regclass AND contype = 'f'), true,
          'the verdict''s foreign key is checked at commit (record_verdicts may run before record_messages)');
SELECT col_is_pk('mail', 'abuse_events', ARRAY['user_id', 'mailmeta_id']::name[],
                 'abuse_events keyed (user_id, mailmeta_id): per user, one per message');
SELECT col_is_pk('mail', 'sender_suspensions', 'user_id', 'sender_suspensions keyed by user_id');
SELECT function_returns('mail', 'record_verdicts', ARRAY['jsonb'], 'jsonb');
SELECT function_returns('mail', 'set_abuse_policy', ARRAY['integer', 'interval'], 'void');
SELECT function_returns('mail', 'suspend_sender', ARRAY['text', 'text'], 'void');
SELECT function_returns('mail', 'lift_suspension', ARRAY['text'], 'void');
SELECT function_returns('mail', 'list_suspensions', ARRAY[]::text[], 'setof record');

-- ------------------------------------------------------------ verdicts in message_log
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.doc(1, '{"policy": {"stage": "eom", "rule": null, "spam": {"score": 2.1, "required": 5.0, "rules": ["HTML_MESSAGE", "DKIM_VALID"]}, "virus": null}}'),
            pg_temp.doc(2, '{"queue_id": null, "action": "reject", "reason": "too many recipients", "recipients": [], "size_bytes": null,
                             "policy": {"stage": "rcpt", "rule": "max_recipients (global: 100)", "spam": null, "virus": null}}')
                || '{"headers": {}}',
            pg_temp.doc(3, '{"action": "reject", "reason": "virus found", "policy": {"stage": "eom", "virus": {"name": "Eicar-Test-Signature"}}}'),
            pg_temp.doc(4))),
          4, 'the milter records a batch with its verdicts in one statement');
RESET ROLE;
SELECT results_eq($$SELECT mailmeta_id, queue_id, rcpt, action, policy_stage, policy_rule, spam_score, spam_rules, virus
                      FROM mail.message_log ORDER BY mailmeta_id$$,
                  $$VALUES (pg_temp.mid(1), 'Q1', 'alice@example.test', 'accept', 'eom', NULL, 2.1, '{HTML_MESSAGE,DKIM_VALID}'::text[], NULL),
                           (pg_temp.mid(2), NULL, NULL, 'reject', 'rcpt', 'max_recipients (global: 100)', NULL, NULL, NULL),
                           (pg_temp.mid(3), 'Q3', 'alice@example.test', 'reject', 'eom', NULL, NULL, NULL, 'Eicar-Test-Signature'),
                           (pg_temp.mid(4), 'Q4', 'alice@example.test', 'accept', NULL, NULL, NULL, NULL, NULL)$$,
                  'message_log shows each decision''s stage, rule, spam score and rules and virus; a session refused at RCPT has its row too');
SELECT results_eq($$SELECT spam_required FROM mail.message_verdicts WHERE mailmeta_id = pg_temp.mid(1)$$,
                  $$VALUES (5.0)$$, 'the spam threshold the engine used is kept');
SELECT is((SELECT count(*)::int FROM mail.trace_queue_id('Q3') WHERE virus IS NOT NULL), 1,
          'the trace functions return the new columns');
SELECT lives_ok($$SELECT * FROM mail.trace_time(now() - interval '100 years')$$, 'trace_time still works');

CREATE TEMP TABLE before AS SELECT pg_temp.policy_state() AS state, pg_temp.meta_state() AS meta;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.doc(3, '{"action": "reject", "policy": {"stage": "eom", "virus": {"name": "Another-Name"}}}'),
            pg_temp.doc(1, '{"policy": {"stage": "eom", "spam": {"score": 2.1, "required": 5.0, "rules": ["HTML_MESSAGE"]}}}'))),
          2, 'a replayed batch');
RESET ROLE;
SELECT is(pg_temp.policy_state(), (SELECT state FROM before), '... changes no verdict (the first record wins)');
SELECT is(pg_temp.meta_state(), (SELECT meta FROM before), '... nor any metadata');

SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.doc(5, '{"policy": {"stage": "weird", "rule": 7, "spam": {"score": "high", "required": 5, "rules": "X"}, "virus": "Some-Virus"}}'),
            pg_temp.doc(6, '{"policy": "not an object"}'))),
          2, 'a batch with odd policy values is recorded');
RESET ROLE;
SELECT results_eq($$SELECT stage, rule, spam_score, spam_required, spam_rules, virus FROM mail.message_verdicts WHERE mailmeta_id = pg_temp.mid(5)$$,
                  $$VALUES (NULL::text, NULL::text, NULL::numeric, 5::numeric, NULL::text[], 'Some-Virus')$$,
                  '... values of the wrong type are stored as NULL; a virus may be given as a string');
SELECT is((SELECT count(*)::int FROM mail.message_verdicts WHERE mailmeta_id = pg_temp.mid(6)), 0,
          'a policy that is not an object is no verdict');

SET LOCAL ROLE mailmeta_milter;
SELECT throws_ok($$SELECT mail.record_verdicts('{}')$$, '22023',
                 'record_verdicts wants a JSON array of metadata documents, not object', 'record_verdicts refuses an object');
SELECT throws_ok($$SELECT mail.record_verdicts(NULL)$$, '22023',
                 'record_verdicts wants a JSON array of metadata documents, not NULL', 'record_verdicts refuses NULL');
SELECT throws_ok($$SELECT pg_temp.rec(jsonb_build_array(pg_temp.doc(7, '{"mailmeta_id": "nope", "policy": {"stage": "eom"}}')))$$,
                 '22023', 'invalid metadata document 1 of 1 (nope): mailmeta_id ''nope'' is not a UUID',
                 'a malformed document in the milter''s statement is refused by record_messages, naming it');
SET CONSTRAINTS mail.message_verdicts_mailmeta_id_fkey IMMEDIATE;
SELECT throws_ok($$SELECT mail.record_verdicts(jsonb_build_array(pg_temp.doc(99, '{"policy": {"stage": "eom"}}')))$$,
                 '23503', NULL, 'a verdict for a message that is not recorded fails its foreign key');
SET CONSTRAINTS mail.message_verdicts_mailmeta_id_fkey DEFERRED;
RESET ROLE;

-- ------------------------------------------------------------ what is an abuse event
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_abuse_policy(3, '1 hour')$$, 'set_abuse_policy: 3 events within an hour');
RESET ROLE;
SELECT results_eq($$SELECT abuse_max_events, abuse_window FROM mail.policy_settings$$,
                  $$VALUES (3, '1 hour'::interval)$$, 'the abuse policy is stored');
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(10, 'alice@example.test', 'accept', '{"stage": "eom", "spam": {"score": 30, "required": 15}}'),
            pg_temp.out(11, 'alice@example.test', 'reject', '{"stage": "eom", "rule": "max_message_bytes (global: 1000)"}'),
            pg_temp.out(12, 'alice@example.test', 'reject', '{"stage": "mail", "rule": "suspended alice@example.test (x)"}'),
            pg_temp.out(13, 'alice@example.test', 'reject', '{"stage": "eom", "spam": {"score": 3, "required": 5}}'),
            pg_temp.out(14, 'ghost@example.test', 'reject', '{"stage": "eom", "virus": {"name": "Eicar-Test-Signature"}}'),
            pg_temp.doc(15, '{"action": "reject", "policy": {"stage": "eom", "virus": {"name": "Eicar-Test-Signature"}}}'),
            pg_temp.out(16, 'alice@example.test', 'reject', NULL),
            pg_temp.out(17, 'alice@example.test', 'tempfail', '{"stage": "eom", "rule": "clamd", "spam": {"score": 7.5, "required": 5.0, "reject": 15.0}}'))),
          8, 'messages that are no abuse events');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.abuse_events), 0,
          'none counted: accepted spam, other rules, a suspension, a score under the threshold, an unknown user, inbound mail, no policy, a deferral for another reason of mail scored under the reject threshold');

SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(20, 'Alice@Example.test', 'reject', '{"stage": "eom", "rule": "spamd", "spam": {"score": 1000.0, "required": 5.0, "reject": 15.0, "rules": ["GTUBE"]}}'))),
          1, 'alice''s outgoing spam is refused (score at least the reject threshold)');
SELECT is(pg_temp.events('alice@example.test'), 1, 'one abuse event (sasl_user in any case)');
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(20, 'alice@example.test', 'reject', '{"stage": "eom", "spam": {"score": 1000.0, "required": 15.0}}'))),
          1, 'the record is replayed');
SELECT is(pg_temp.events('alice@example.test'), 1, 'still one event');
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(21, 'alice@example.test', 'hold', '{"stage": "eom", "virus": {"name": "Eicar-Test-Signature"}}'))),
          1, 'a virus in alice''s mail is held');
SELECT is(pg_temp.events('alice@example.test'), 2, 'two events');
SELECT is(mail.policy_snapshot()->'suspended', '{}'::jsonb, 'nobody suspended yet');
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(22, 'alice@example.test', 'tempfail', '{"stage": "eom", "rule": "rate_limit 7 (sasl_user alice@example.test: 100 messages per 01:00:00)"}',
                        '0', 'local'))),
          1, 'alice exceeds a rate limit (local mail counts too)');
SELECT is(pg_temp.events('alice@example.test'), 3, 'three events');
SELECT is(mail.policy_snapshot()->'suspended',
          '{"alice@example.test": "automatic: 3 outgoing messages refused within 01:00:00 (rate_limit 1, spam 1, virus 1)"}'::jsonb,
          'the third event suspends alice: the snapshot lists her with the reason');
SELECT is(pg_temp.pc('alice@example.test', 'alice@example.test', '192.0.2.44', '{someone@outside.example}'),
          '{"action": "reject", "code": "550", "status": "5.7.1",
            "text": "Sending from this account is suspended; contact the administrator",
            "rule": "suspended alice@example.test (automatic: 3 outgoing messages refused within 01:00:00 (rate_limit 1, spam 1, virus 1))"}'::jsonb,
          'policy_check refuses her with 5.7.1');
SELECT is(pg_temp.pc('bob@example.test', 'bob@example.test', '192.0.2.44', '{someone@outside.example}'),
          '{"action": "accept"}'::jsonb, 'bob may send');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT results_eq($$SELECT address, events, suspended_by, suspended_at = now() FROM mail.list_suspensions()$$,
                  $$VALUES ('alice@example.test', 3, 'abuse', true)$$, 'list_suspensions: who, how many events, by whom, when');
RESET ROLE;

-- events outside the window
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(30, 'bob@example.test', 'reject', '{"spam": {"score": 20, "required": 5}}', '3 hours'),
            pg_temp.out(31, 'bob@example.test', 'reject', '{"spam": {"score": 20, "required": 5}}', '2 hours'),
            pg_temp.out(32, 'bob@example.test', 'reject', '{"spam": {"score": 20, "required": 5}}', '61 minutes'))),
          3, 'three old refusals of bob (a journal replayed late)');
SELECT is(pg_temp.events('bob@example.test'), 3, 'are three events');
SELECT is(mail.policy_snapshot()->'suspended' ? 'bob@example.test', false, '... older than the window: bob is not suspended');
SELECT ok(mail.expire_rate_counters() >= 0, 'expire_rate_counters');
SELECT is(pg_temp.events('bob@example.test'), 0, '... deletes events older than the window');
SELECT is(pg_temp.events('alice@example.test'), 3, '... and keeps recent ones');
RESET ROLE;

-- lifting
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.lift_suspension(' ALICE@example.test')$$, 'lift_suspension');
SELECT is_empty($$SELECT * FROM mail.list_suspensions()$$, 'nobody is suspended');
RESET ROLE;
SELECT is(pg_temp.events('alice@example.test'), 0, 'lifting forgets the user''s events');
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', 'alice@example.test', NULL, '{x@outside.example}'), 'accept', 'alice may send again');
SELECT is(mail.policy_snapshot()->'suspended', '{}'::jsonb, 'the snapshot lists nobody');
RESET ROLE;

-- ------------------------------------------------------------ rate-limit refusals in policy_check
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_abuse_policy(2, '10 minutes')$$, 'abuse policy: 2 events within 10 minutes');
SELECT FROM pg_temp.add('R', 'sasl_user', NULL, 'messages', 1, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.pc('carol@example.test', 'carol@example.test', NULL, '{x@outside.example}', 100, pg_temp.mid(40))->>'action',
          'accept', 'carol''s first message');
SELECT is(pg_temp.pc('carol@example.test', 'carol@example.test', NULL, '{x@outside.example}', 100)->>'action',
          'tempfail', 'the second goes over the limit (no mailmeta_id given)');
SELECT is(pg_temp.events('carol@example.test'), 0, '... no event without a mailmeta_id');
SELECT is(pg_temp.pc('carol@example.test', 'carol@example.test', NULL, '{x@outside.example}', 100, pg_temp.mid(41))->>'action',
          'tempfail', 'refused again, with its mailmeta_id');
SELECT is(pg_temp.events('carol@example.test'), 1, '... which policy_check counts at once');
SELECT is(pg_temp.rec(jsonb_build_array(
            pg_temp.out(41, 'carol@example.test', 'tempfail',
                        jsonb_build_object('stage', 'eom',
                                           'rule', format('rate_limit %s (sasl_user carol@example.test: 1 messages per 01:00:00)', pg_temp.rid('R')))))),
          1, 'the milter records that refused message');
SELECT is(pg_temp.events('carol@example.test'), 1, '... counted once');
SELECT is(pg_temp.pc('carol@example.test', 'carol@example.test', NULL, '{x@outside.example}', 100, pg_temp.mid(42))->>'action',
          'tempfail', 'a third attempt');
SELECT is(mail.policy_snapshot()->'suspended'->>'carol@example.test',
          'automatic: 2 outgoing messages refused within 00:10:00 (rate_limit 2)', '... suspends carol');
SELECT is(pg_temp.pc('carol@example.test', 'carol@example.test', NULL, '{x@outside.example}', 100, pg_temp.mid(43))->>'rule',
          'suspended carol@example.test (automatic: 2 outgoing messages refused within 00:10:00 (rate_limit 2))',
          'then she is refused as suspended');
SELECT is(pg_temp.used(pg_temp.rid('R'), 'carol@example.test'), 1::bigint, 'a suspended sender consumes no budget');
RESET ROLE;

-- ------------------------------------------------------------ the admin's suspensions
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.suspend_sender('Bob@Example.test', '  phished account ')$$, 'suspend_sender');
SELECT results_eq($$SELECT address, reason, events, suspended_by FROM mail.list_suspensions() ORDER BY address$$,
                  $$VALUES ('bob@example.test', 'phished account', 0, 'admin'),
                           ('carol@example.test', 'automatic: 2 outgoing messages refused within 00:10:00 (rate_limit 2)', 2, 'abuse')$$,
                  'list_suspensions shows both');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.suspend_sender('bob@example.test', 'again')$$,
    '23505', 'user ''bob@example.test'' is already suspended', 'suspending twice is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.suspend_sender('nobody@example.test', 'x')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'suspending an unknown user is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.suspend_sender('alice@example.test', ' ')$$,
    '22023', 'a reason is needed to suspend ''alice@example.test''', 'an empty reason is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.suspend_sender('alice', 'x')$$,
    '22023', 'invalid address ''alice'': expected exactly one "@", as in local-part@domain', 'a malformed address is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.lift_suspension('alice@example.test')$$,
    'P0002', 'user ''alice@example.test'' is not suspended', 'lifting a user who is not suspended is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.lift_suspension('nobody@example.test')$$,
    'P0002', 'user ''nobody@example.test'' does not exist', 'lifting an unknown user is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_abuse_policy(0, '1 hour')$$,
    '22023', 'invalid max_events 0: must be at least 1', 'set_abuse_policy refuses 0 events');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_abuse_policy(5, '0 seconds')$$,
    '22023', 'invalid window ''00:00:00'': must be between 1 second and 366 days', 'set_abuse_policy refuses an empty window');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_abuse_policy(5, NULL)$$,
    '22023', 'invalid window NULL: must be between 1 second and 366 days', 'set_abuse_policy refuses a NULL window');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.pc('bob@example.test', 'bob@example.test', NULL, '{}')->>'rule', 'suspended bob@example.test (phished account)',
          'policy_check refuses bob, naming the reason in the rule');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.delete_user('carol@example.test')$$, 'a suspended user can be deleted');
SELECT results_eq($$SELECT address FROM mail.list_suspensions()$$, $$VALUES ('bob@example.test')$$,
                  '... and her suspension and events go with her');
RESET ROLE;
SELECT is(pg_temp.events('carol@example.test'), 0, 'no events of carol remain');

-- ------------------------------------------------------------ privileges
SET LOCAL ROLE mailmeta_milter;
SELECT throws_ok($$SELECT mail.suspend_sender('alice@example.test', 'x')$$, '42501', NULL, 'the milter cannot suspend');
SELECT throws_ok($$SELECT mail.lift_suspension('bob@example.test')$$, '42501', NULL, 'nor lift a suspension');
SELECT throws_ok($$SELECT mail.set_abuse_policy(1, '1 hour')$$, '42501', NULL, 'nor change the abuse policy');
SELECT throws_ok($$SELECT * FROM mail.list_suspensions()$$, '42501', NULL, 'nor list suspensions');
SELECT throws_ok($$SELECT * FROM mail.message_verdicts$$, '42501', NULL, 'nor read verdicts');
SELECT throws_ok($$SELECT * FROM mail.abuse_events$$, '42501', NULL, 'nor abuse events');
SELECT throws_ok($$SELECT * FROM mail.sender_suspensions$$, '42501', NULL, 'nor suspensions');
SELECT throws_ok($$SELECT mail.apply_abuse_policy(ARRAY[1::bigint])$$, '42501', NULL, 'nor call internal helpers');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT throws_ok($$SELECT mail.record_verdicts('[]')$$, '42501', NULL, 'the admin cannot record verdicts');
SELECT throws_ok($$DELETE FROM mail.sender_suspensions$$, '42501', NULL, 'nor write suspensions directly');
SELECT lives_ok($$SELECT * FROM mail.message_verdicts, mail.abuse_events, mail.sender_suspensions$$, 'the admin reads them');
RESET ROLE;
SET LOCAL ROLE mailmeta_test_nobody;
SELECT throws_ok($$SELECT mail.record_verdicts('[]')$$, '42501', NULL, 'a role without grants cannot record verdicts');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
