-- 13_rate_limits.sql — rate limits: every key and metric through
-- mail.policy_check, per-value budgets (match NULL), exactness at the
-- boundary (the max-th unit passes, the next message is refused and
-- consumes nothing), all or nothing across rules, which refusal wins,
-- exemptions by address, domain and network, windows that expire,
-- usage and reset, changing and removing rules; bad rules refused by the
-- admin API and by the tables' constraints; bad check documents; who may
-- call what. (Concurrency: tests/sql/rate-limit-race.sh.)
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(272);
\ir policy_helpers.psql

CREATE ROLE mailmeta_test_nobody NOLOGIN;
GRANT USAGE ON SCHEMA mail TO mailmeta_test_nobody;

-- The answer to a refused message.
CREATE FUNCTION pg_temp.refusal(p_action text, p_text text, p_rule text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_build_object('action', p_action,
                              'code', CASE p_action WHEN 'tempfail' THEN '451' WHEN 'reject' THEN '550' END,
                              'status', CASE p_action WHEN 'tempfail' THEN '4.7.1' WHEN 'reject' THEN '5.7.1' END,
                              'text', p_text, 'rule', p_rule)
$$;
-- Removes every rule (between sections), as the admin.
CREATE FUNCTION pg_temp.remove_all() RETURNS void
    LANGUAGE sql VOLATILE
AS $$
    SELECT mail.remove_rate_limit(r.rule_id) FROM mail.list_rate_limits() r;
    DELETE FROM pg_temp.rules;
$$;

SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
END
$$;
RESET ROLE;

-- ------------------------------------------------------------ structure
SELECT has_table('mail', t, 'has table mail.' || t)
  FROM unnest(ARRAY['rate_limits', 'rate_limit_counters', 'rate_limit_exemptions']) AS t;
SELECT col_is_pk('mail', 'rate_limit_counters', ARRAY['rule_id', 'value']::name[],
                 'counters keyed (rule_id, value)');
SELECT has_index('mail', 'rate_limits', 'rate_limits_key_match_idx',
                 ARRAY['key', 'COALESCE(match, ''''::text)', 'metric', 'per', 'action'],
                 'rules indexed by (key, match), unique with metric, interval and action');
SELECT has_index('mail', 'rate_limits', 'rate_limits_match_net_idx', 'match_net',
                 'rules indexed by network (GiST) for client addresses');
SELECT has_index('mail', 'rate_limit_counters', 'rate_limit_counters_expires_at_idx', 'expires_at',
                 'counters indexed by expiry');
SELECT function_returns('mail', 'policy_check', ARRAY['jsonb'], 'jsonb');
SELECT function_returns('mail', 'expire_rate_counters', ARRAY[]::text[], 'bigint');
SELECT function_returns('mail', 'add_rate_limit', ARRAY['text', 'text', 'text', 'bigint', 'interval', 'text'], 'bigint');
SELECT function_returns('mail', 'list_rate_limits', ARRAY[]::text[], 'setof record');
SELECT function_returns('mail', 'change_rate_limit', ARRAY['bigint', 'bigint', 'interval', 'text'], 'void');
SELECT function_returns('mail', 'remove_rate_limit', ARRAY['bigint'], 'void');
SELECT function_returns('mail', 'rate_limit_usage', ARRAY['text', 'text'], 'setof record');
SELECT function_returns('mail', 'reset_rate_limit_usage', ARRAY['bigint', 'text'], 'bigint');
SELECT function_returns('mail', 'add_rate_limit_exemption', ARRAY['text', 'text'], 'bigint');
SELECT function_returns('mail', 'remove_rate_limit_exemption', ARRAY['text'], 'void');
SELECT function_returns('mail', 'list_rate_limit_exemptions', ARRAY[]::text[], 'setof record');
SELECT is((SELECT pg_get_function_arguments('mail.add_rate_limit(text,text,text,bigint,interval,text)'::regprocedure)),
          'key text, match text, metric text, max bigint, per interval, action text',
          'add_rate_limit(key, match, metric, max, per, action)');
SELECT is((SELECT pg_get_function_arguments('mail.change_rate_limit(bigint,bigint,interval,text)'::regprocedure)),
          'rule_id bigint, max bigint DEFAULT NULL::bigint, per interval DEFAULT NULL::interval, action text DEFAULT NULL::text',
          'change_rate_limit(rule_id [, max [, per [, action]]])');

-- ------------------------------------------------------------ adding rules, normal forms
SET LOCAL ROLE mailmeta_admin;
SELECT ok(pg_temp.add('n1', 'sasl_user', ' Alice@Example.TEST ', 'messages', 1, '1 hour', 'tempfail') > 0,
          'add_rate_limit returns the rule id');
SELECT ok(pg_temp.add('n2', 'client_net', '192.0.2.77', 'messages', 1, '1 hour', 'tempfail') > 0, 'a client_net rule for an address');
SELECT ok(pg_temp.add('n3', 'client_ip', '198.51.100.7/24', 'messages', 1, '1 hour', 'tempfail') > 0, 'a client_ip rule for a network with host bits');
SELECT ok(pg_temp.add('n4', 'client_ip', '192.0.2.5/32', 'messages', 1, '1 hour', 'tempfail') > 0, 'a client_ip rule for a /32');
SELECT ok(pg_temp.add('n5', 'client_net', '2001:DB8:1:2::99', 'messages', 1, '1 hour', 'tempfail') > 0, 'a client_net rule for an IPv6 address');
SELECT ok(pg_temp.add('n6', 'recipient_domain', 'GMAIL.example', 'bytes', 1, '1 second', 'hold') > 0, 'a recipient_domain rule');
SELECT ok(pg_temp.add('n7', 'sender', NULL, 'recipients', 1, '366 days', 'reject') > 0, 'a per-value rule (match NULL)');
SELECT results_eq($$SELECT key, match, metric, max, per, action FROM mail.list_rate_limits()$$,
                  $$VALUES ('sasl_user', 'alice@example.test', 'messages', 1::bigint, '1 hour'::interval, 'tempfail'),
                           ('client_net', '192.0.2.0/24', 'messages', 1, '1 hour', 'tempfail'),
                           ('client_ip', '198.51.100.0/24', 'messages', 1, '1 hour', 'tempfail'),
                           ('client_ip', '192.0.2.5', 'messages', 1, '1 hour', 'tempfail'),
                           ('client_net', '2001:db8:1:2::/64', 'messages', 1, '1 hour', 'tempfail'),
                           ('recipient_domain', 'gmail.example', 'bytes', 1, '1 second', 'hold'),
                           ('sender', NULL, 'recipients', 1, '366 days', 'reject')$$,
                  'list_rate_limits shows the matches in normal form: lowercased, networks without host bits, /24 and /64 for client_net, a /32 as an address');
SELECT lives_ok($$SELECT mail.add_rate_limit('client_ip', NULL, 'messages', 5, '1 minute', 'tempfail')$$, 'a per-value client_ip rule');
SELECT is(mail.policy_snapshot()->'rate_limits',
          '{"sasl_user": {"any": false, "values": ["alice@example.test"]},
            "client_net": {"any": false, "values": ["192.0.2.0/24", "2001:db8:1:2::/64"]},
            "client_ip": {"any": true, "values": ["192.0.2.5", "198.51.100.0/24"]},
            "recipient_domain": {"any": false, "values": ["gmail.example"]},
            "sender": {"any": true, "values": []}}'::jsonb,
          'the snapshot lists the keys with rules: whether one counts every value, and the values rules name');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ sasl_user, messages, a budget per value
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('A', 'sasl_user', NULL, 'messages', 3, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.pc('alice@example.test', 'alice@example.test', '192.0.2.1', '{x@outside.example}'),
          '{"action": "accept"}'::jsonb, 'sasl_user: the first message is accepted');
SELECT is(pg_temp.act('Alice@Example.test', 'alice@example.test', '192.0.2.1', '{x@outside.example}'), 'accept',
          'the second (sasl_user in any case)');
SELECT is(pg_temp.act('alice@example.test', 'alice@example.test', '192.0.2.1', '{x@outside.example}'), 'accept',
          'the third: the max-th message passes');
SELECT is(pg_temp.pc('alice@example.test', 'alice@example.test', '192.0.2.1', '{x@outside.example}'),
          pg_temp.refusal('tempfail', 'Rate limit exceeded for alice@example.test, try again later',
                          format('rate_limit %s (sasl_user alice@example.test: 3 messages per 01:00:00)', pg_temp.rid('A'))),
          'the fourth is refused: 451 4.7.1, naming the rule');
SELECT is(pg_temp.used(pg_temp.rid('A'), 'alice@example.test'), 3::bigint, 'the refused message consumed nothing');
SELECT is(pg_temp.act('ALICE@EXAMPLE.TEST', NULL, NULL, '{}'), 'tempfail', 'refused again, in any case');
SELECT is(pg_temp.act('bob@example.test', 'bob@example.test', '192.0.2.1', '{x@outside.example}'), 'accept',
          'another user has a budget of his own');
SELECT is(pg_temp.used(pg_temp.rid('A'), 'bob@example.test'), 1::bigint, '... counted apart');
SELECT is(pg_temp.act(NULL, 'alice@example.test', '192.0.2.1', '{x@outside.example}'), 'accept',
          'an unauthenticated message is not counted for sasl_user');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.rate_limit_counters), 2, 'two counters: one per user');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.rate_limit_counters), 0, 'remove_rate_limit deletes the rule''s counters');

-- ------------------------------------------------------------ sender, recipients, one value
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('B', 'sender', 'Carol@Outside.example', 'recipients', 5, '10 minutes', 'reject');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act(NULL, 'carol@outside.example', '192.0.2.1', '{a@example.test,b@example.test,c@example.test}'), 'accept',
          'sender: 3 recipients');
SELECT is(pg_temp.act(NULL, '<CAROL@outside.example>', '192.0.2.1', '{d@example.test,D@Example.test,e@example.test}'), 'accept',
          '2 more (a recipient given twice counts once; sender in any case, with angle brackets): the budget of 5 is used up exactly');
SELECT is(pg_temp.used(pg_temp.rid('B'), 'carol@outside.example'), 5::bigint, 'used 5 of 5');
SELECT is(pg_temp.pc(NULL, 'carol@outside.example', '192.0.2.1', '{f@example.test}'),
          pg_temp.refusal('reject', 'Rate limit exceeded for carol@outside.example',
                          format('rate_limit %s (sender carol@outside.example: 5 recipients per 00:10:00)', pg_temp.rid('B'))),
          'one recipient more is refused: 550 5.7.1');
SELECT is(pg_temp.used(pg_temp.rid('B'), 'carol@outside.example'), 5::bigint, 'nothing consumed');
SELECT is(pg_temp.act(NULL, 'carol@outside.example', '192.0.2.1', '{}'), 'accept',
          'a message without recipients adds nothing and passes');
SELECT is(pg_temp.act(NULL, 'dave@outside.example', '192.0.2.1', '{a@example.test,b@example.test,c@example.test,d@example.test,e@example.test,f@example.test}'),
          'accept', 'another sender is not counted by a rule naming carol');
SELECT is(pg_temp.used(pg_temp.rid('B'), 'dave@outside.example'), NULL, '... and has no counter');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ sender_domain, bytes, hold
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('C', 'sender_domain', NULL, 'bytes', 10000, '1 day', 'hold');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act(NULL, 'a@big.example', NULL, '{x@example.test}', 6000), 'accept', 'sender_domain: 6000 bytes');
SELECT is(pg_temp.act(NULL, 'b@BIG.example', NULL, '{x@example.test}', 4000), 'accept', '4000 more: exactly 10000');
SELECT is(pg_temp.pc(NULL, 'c@big.example', NULL, '{x@example.test}', 1),
          pg_temp.refusal('hold', 'Held: rate limit exceeded for big.example',
                          format('rate_limit %s (sender_domain big.example: 10000 bytes per 1 day)', pg_temp.rid('C'))),
          'one byte more is held (no SMTP code: Postfix''s hold queue)');
SELECT is(pg_temp.used(pg_temp.rid('C'), 'big.example'), 10000::bigint, 'a held message consumes nothing');
SELECT is(pg_temp.act(NULL, '', NULL, '{x@example.test}', 50000), 'accept', 'a bounce (sender "") has no sender domain');
SELECT is(pg_temp.act(NULL, 'a@small.example', NULL, '{x@example.test}', 10001), 'hold',
          'a message larger than the budget is refused on its own');
SELECT is(pg_temp.used(pg_temp.rid('C'), 'small.example'), NULL, '... and leaves no counter behind');
RESET ROLE;
SELECT is((SELECT string_agg(value, ',' ORDER BY value) FROM mail.rate_limit_counters), 'big.example',
          'only big.example has a counter');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ client_ip
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('D', 'client_ip', NULL, 'messages', 2, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('F', 'client_ip', '198.51.100.0/24', 'messages', 2, '1 hour', 'reject');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act(NULL, 's@outside.example', '192.0.2.5', '{x@example.test}'), 'accept', 'client_ip: first from 192.0.2.5');
SELECT is(pg_temp.act(NULL, 's@outside.example', '192.0.2.5', '{x@example.test}'), 'accept', 'second');
SELECT is(pg_temp.act(NULL, 's@outside.example', '192.0.2.5', '{x@example.test}'), 'tempfail', 'third refused');
SELECT is(pg_temp.act(NULL, 's@outside.example', '192.0.2.6', '{x@example.test}'), 'accept', 'another address has its own budget');
SELECT is(pg_temp.act(NULL, 's@outside.example', '2001:DB8::1', '{x@example.test}'), 'accept', 'IPv6');
SELECT is(pg_temp.used(pg_temp.rid('D'), '2001:db8::1'), 1::bigint, '... counted under its canonical text');
SELECT is(pg_temp.act(NULL, 's@outside.example', 'not-an-ip', '{x@example.test}'), 'accept',
          'an unparseable client address is not counted');
SELECT is(pg_temp.act(NULL, 's@outside.example', '198.51.100.1', '{x@example.test}'), 'accept',
          'a rule for a network: 198.51.100.1');
SELECT is(pg_temp.act(NULL, 's@outside.example', '198.51.100.2', '{x@example.test}'), 'accept', '198.51.100.2');
SELECT is(pg_temp.pc(NULL, 's@outside.example', '198.51.100.3', '{x@example.test}'),
          pg_temp.refusal('reject', 'Rate limit exceeded for 198.51.100.0/24',
                          format('rate_limit %s (client_ip 198.51.100.0/24: 2 messages per 01:00:00)', pg_temp.rid('F'))),
          '198.51.100.3 is refused: the network shares one budget');
SELECT is(pg_temp.used(pg_temp.rid('D'), '198.51.100.3'), NULL,
          'all or nothing: the per-address rule did not count the refused message');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ client_net
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('E', 'client_net', NULL, 'messages', 2, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act(NULL, NULL, '203.0.113.1', '{x@example.test}'), 'accept', 'client_net: 203.0.113.1');
SELECT is(pg_temp.act(NULL, NULL, '203.0.113.200', '{x@example.test}'), 'accept', '203.0.113.200, same /24');
SELECT is(pg_temp.act(NULL, NULL, '::ffff:203.0.113.9', '{x@example.test}'), 'tempfail',
          'a third address of the /24 is refused (written as an IPv4-mapped IPv6 address)');
SELECT is(pg_temp.used(pg_temp.rid('E'), '203.0.113.0/24'), 2::bigint, 'counted under the /24');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:1:2::1', '{x@example.test}'), 'accept', 'IPv6: 2001:db8:1:2::1');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:1:2:ffff::9', '{x@example.test}'), 'accept', '2001:db8:1:2:ffff::9, same /64');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:1:2::77', '{x@example.test}'), 'tempfail', 'a third of the /64 is refused');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:1:3::1', '{x@example.test}'), 'accept', 'the next /64 has its own budget');
SELECT is(pg_temp.used(pg_temp.rid('E'), '2001:db8:1:2::/64'), 2::bigint, 'counted under the /64');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ recipient_domain, every metric
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('G', 'recipient_domain', NULL, 'recipients', 3, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('H', 'recipient_domain', 'hotmail.example', 'messages', 1, '1 hour', 'reject');
SELECT FROM pg_temp.add('I', 'recipient_domain', NULL, 'bytes', 1000000, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act(NULL, 's@example.test', NULL, '{a@gmail.example,B@Gmail.example,c@yahoo.example}', 300), 'accept',
          'recipient_domain: 2 recipients at gmail.example, 1 at yahoo.example');
SELECT is(pg_temp.used(pg_temp.rid('G'), 'gmail.example'), 2::bigint, 'recipients are counted per domain: gmail 2');
SELECT is(pg_temp.used(pg_temp.rid('G'), 'yahoo.example'), 1::bigint, 'yahoo 1');
SELECT is(pg_temp.used(pg_temp.rid('I'), 'gmail.example'), 300::bigint, 'bytes: the size once per domain (gmail)');
SELECT is(pg_temp.used(pg_temp.rid('I'), 'yahoo.example'), 300::bigint, '... and yahoo');
SELECT is(pg_temp.act(NULL, 's@example.test', NULL, '{d@gmail.example,e@gmail.example,f@yahoo.example}', 300), 'tempfail',
          '2 more for gmail would make 4 of 3: refused');
SELECT is(pg_temp.used(pg_temp.rid('G'), 'yahoo.example'), 1::bigint, 'the refused message counted nothing for yahoo');
SELECT is(pg_temp.used(pg_temp.rid('I'), 'gmail.example'), 300::bigint, '... nor bytes');
SELECT is(pg_temp.act(NULL, 's@example.test', NULL, '{d@gmail.example}', 300), 'accept', 'one more for gmail: 3 of 3');
SELECT is(pg_temp.act(NULL, 's@example.test', NULL, '{x@hotmail.example,y@hotmail.example}'), 'accept',
          'messages: one message to hotmail.example (two recipients)');
SELECT is(pg_temp.used(pg_temp.rid('H'), 'hotmail.example'), 1::bigint, '... counts one message');
SELECT is(pg_temp.act(NULL, 's@example.test', NULL, '{z@hotmail.example}'), 'reject', 'a second message to hotmail.example is refused');
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ all or nothing; which refusal wins
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('J', 'sasl_user', NULL, 'messages', 10, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('K', 'sender_domain', 'example.test', 'messages', 2, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', 'alice@example.test', NULL, '{x@outside.example}'), 'accept', 'two rules: first message');
SELECT is(pg_temp.act('alice@example.test', 'alice@example.test', NULL, '{x@outside.example}'), 'accept', 'second');
SELECT is(pg_temp.act('alice@example.test', 'alice@example.test', NULL, '{x@outside.example}'), 'tempfail',
          'the third goes over the domain''s budget');
SELECT is(pg_temp.used(pg_temp.rid('J'), 'alice@example.test'), 2::bigint, 'the user''s rule, which had room, counted nothing');
SELECT is(pg_temp.act('bob@example.test', 'bob@example.test', NULL, '{x@outside.example}'), 'tempfail',
          'bob shares the domain''s budget');
SELECT is(pg_temp.used(pg_temp.rid('J'), 'bob@example.test'), NULL, '... and got no counter of his own');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
SELECT FROM pg_temp.add('L', 'client_ip', NULL, 'messages', 1, '1 hour', 'hold');
SELECT FROM pg_temp.add('M', 'client_net', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('N', 'sasl_user', NULL, 'messages', 1, '1 hour', 'reject');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, '192.0.2.1', '{}'), 'accept', 'three rules of one message each');
SELECT is(pg_temp.pc('alice@example.test', NULL, '192.0.2.1', '{}')->>'rule',
          format('rate_limit %s (sasl_user alice@example.test: 1 messages per 01:00:00)', pg_temp.rid('N')),
          'when several refuse, reject wins over tempfail and hold');
SELECT is(pg_temp.pc('bob@example.test', NULL, '192.0.2.1', '{}')->>'rule',
          format('rate_limit %s (client_net 192.0.2.0/24: 1 messages per 01:00:00)', pg_temp.rid('M')),
          'tempfail wins over hold');
SELECT is(pg_temp.pc(NULL, NULL, '192.0.2.1', '{}')->>'action', 'tempfail', '...');
SELECT is(pg_temp.pc(NULL, NULL, '192.0.2.9', '{}')->>'action', 'tempfail', 'the /24 is used up');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ exemptions
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('Xu', 'sasl_user', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('Xs', 'sender', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('Xd', 'sender_domain', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('Xi', 'client_ip', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('Xn', 'client_net', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('Xr', 'recipient_domain', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT ok(mail.add_rate_limit_exemption(' Alice@Example.TEST ', 'the boss') > 0, 'exempt an address');
SELECT ok(mail.add_rate_limit_exemption('Partner.example') > 0, 'exempt a domain');
SELECT ok(mail.add_rate_limit_exemption('192.0.2.0/28', 'office') > 0, 'exempt a network');
SELECT ok(mail.add_rate_limit_exemption('198.51.100.9') > 0, 'exempt an IP address');
SELECT ok(mail.add_rate_limit_exemption('2001:DB8:AA::/48') > 0, 'exempt an IPv6 network');
SELECT results_eq($$SELECT kind, value, note FROM mail.list_rate_limit_exemptions()$$,
                  $$VALUES ('address', 'alice@example.test', 'the boss'), ('domain', 'partner.example', NULL),
                           ('network', '192.0.2.0/28', 'office'), ('network', '198.51.100.9', NULL),
                           ('network', '2001:db8:aa::/48', NULL)$$,
                  'list_rate_limit_exemptions: normal forms, by kind');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', 'an exempt sasl_user: first');
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', '... second: not counted');
SELECT is(pg_temp.act('bob@example.test', NULL, NULL, '{}'), 'accept', 'bob: first');
SELECT is(pg_temp.act('bob@example.test', NULL, NULL, '{}'), 'tempfail', 'bob: second refused');
SELECT is(pg_temp.act(NULL, 'someone@partner.example', NULL, '{}'), 'accept', 'a sender of an exempt domain: first');
SELECT is(pg_temp.act(NULL, 'someone@partner.example', NULL, '{}'), 'accept',
          '... second: the domain exempts its addresses (sender) and itself (sender_domain)');
SELECT is(pg_temp.act(NULL, 'alice@example.test', NULL, '{}'), 'accept', 'an exempt address as sender: first');
SELECT is(pg_temp.act(NULL, 'alice@example.test', NULL, '{}'), 'tempfail',
          '... second refused: exempting an address does not exempt its domain');
SELECT is(pg_temp.pc(NULL, 'alice@example.test', NULL, '{}')->>'rule',
          format('rate_limit %s (sender_domain example.test: 1 messages per 01:00:00)', pg_temp.rid('Xd')), '... by the domain''s rule');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.3', '{}'), 'accept', 'a client inside an exempt network: first');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.3', '{}'), 'accept', '... second (client_ip and client_net exempt)');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.100', '{}'), 'accept', 'outside the /28, in the same /24: first');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.100', '{}'), 'tempfail', '... second refused');
SELECT is(pg_temp.act(NULL, NULL, '198.51.100.9', '{}'), 'accept', 'an exempt IP address: first');
SELECT is(pg_temp.act(NULL, NULL, '198.51.100.9', '{}'), 'accept', '... second');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:aa:1::5', '{}'), 'accept', 'an exempt IPv6 network: first');
SELECT is(pg_temp.act(NULL, NULL, '2001:db8:aa:1::5', '{}'), 'accept', '... second');
SELECT is(pg_temp.act(NULL, NULL, NULL, '{a@partner.example}'), 'accept', 'mail to an exempt domain: first');
SELECT is(pg_temp.act(NULL, NULL, NULL, '{b@partner.example}'), 'accept', '... second (recipient_domain exempt)');
SELECT is(pg_temp.act(NULL, NULL, NULL, '{a@gmail.example}'), 'accept', 'mail to another domain: first');
SELECT is(pg_temp.act(NULL, NULL, NULL, '{b@gmail.example,c@partner.example}'), 'tempfail', '... second refused');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('Xa', 'sasl_user', 'alice@example.test', 'messages', 1, '1 hour', 'reject');
SELECT FROM pg_temp.add('Xb', 'client_ip', '192.0.2.0/24', 'messages', 1, '1 hour', 'reject');
SELECT FROM pg_temp.add('Xc', 'client_ip', '203.0.113.0/24', 'messages', 1, '1 hour', 'reject');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept',
          'a rule naming an exempt address does not count it either: first');
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', '... second');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.7', '{}'), 'accept',
          'nor does a rule for a network around an exempt client address: first');
SELECT is(pg_temp.act(NULL, NULL, '192.0.2.7', '{}'), 'accept', '... second');
SELECT is(pg_temp.act('alice@example.test', NULL, '203.0.113.200', '{}'), 'accept',
          'an exempt user''s message from a client that is not exempt: counted for the client only, first');
SELECT is(pg_temp.pc('alice@example.test', NULL, '203.0.113.201', '{}')->>'rule',
          format('rate_limit %s (client_ip 203.0.113.0/24: 1 messages per 01:00:00)', pg_temp.rid('Xc')),
          '... second refused by the network''s rule');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.remove_rate_limit_exemption('ALICE@example.test')$$, 'remove_rate_limit_exemption (any case)');
SELECT lives_ok($$SELECT mail.remove_rate_limit_exemption('198.51.100.9/32')$$, '... an address given as /32');
SELECT is((SELECT count(*)::int FROM mail.list_rate_limit_exemptions()), 3, 'three exemptions left');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.remove_rate_limit_exemption('alice@example.test')$$,
    'P0002', '''alice@example.test'' is not exempt from rate limits', 'removing an exemption twice is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption('partner.EXAMPLE')$$,
    '23505', '''partner.example'' is already exempt from rate limits', 'a duplicate exemption is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption('')$$,
    '22023', 'invalid exemption '''': expected an address, a domain, an IP address or a network', 'an empty exemption is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption(NULL)$$,
    '22023', 'invalid exemption NULL: expected an address, a domain, an IP address or a network', 'a NULL exemption is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption('a b@example.test')$$,
    '22023', 'invalid address ''a b@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'a malformed address is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption('192.0.2.0/33')$$,
    '22023', 'invalid exemption ''192.0.2.0/33'': not an IP address or network', 'a malformed network is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit_exemption('bad_domain')$$,
    '22023', 'invalid domain ''bad_domain'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'a malformed domain is refused');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ windows expire
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('W', 'sasl_user', NULL, 'messages', 1, '1 minute', 'tempfail');
SELECT FROM pg_temp.add('V', 'sasl_user', NULL, 'bytes', 100, '1 minute', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}', 10), 'accept', 'a window of a minute: first message');
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}', 10), 'tempfail', 'second refused');
RESET ROLE;
-- Move the window into the past (tests run in one transaction: now() does not move).
UPDATE mail.rate_limit_counters
   SET window_start = window_start - interval '61 seconds', expires_at = expires_at - interval '61 seconds';
SET LOCAL ROLE mailmeta_admin;
SELECT is_empty($$SELECT * FROM mail.rate_limit_usage()$$, 'an expired counter is not shown as usage');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}', 10), 'accept', 'after the window: accepted again');
RESET ROLE;
SELECT results_eq($$SELECT used, window_start, expires_at FROM mail.rate_limit_counters WHERE rule_id = pg_temp.rid('W')$$,
                  $$VALUES (1::bigint, now(), now() + interval '1 minute')$$,
                  'the touched counter started a new window with this message');
UPDATE mail.rate_limit_counters
   SET window_start = window_start - interval '61 seconds', expires_at = expires_at - interval '61 seconds';
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}', 500), 'tempfail',
          'a message refused right after the window (500 bytes of 100)');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.rate_limit_counters WHERE expires_at > now()), 0,
          '... started no new window');
SELECT is((SELECT count(*)::int FROM mail.rate_limit_counters), 0, '... and its expired counters are gone');
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}', 10), 'accept', 'a message of 10 bytes');
SELECT is(pg_temp.act('bob@example.test', NULL, NULL, '{}', 10), 'accept', 'and one of bob');
RESET ROLE;
UPDATE mail.rate_limit_counters
   SET window_start = window_start - interval '61 seconds', expires_at = expires_at - interval '61 seconds'
 WHERE value = 'alice@example.test';
SET LOCAL ROLE mailmeta_milter;
SELECT is(mail.expire_rate_counters(), 2::bigint, 'expire_rate_counters deletes the expired counters (alice''s two)');
RESET ROLE;
SELECT is((SELECT string_agg(value, ',') FROM mail.rate_limit_counters), 'bob@example.test,bob@example.test',
          'the live ones stay');
SET LOCAL ROLE mailmeta_admin;
SELECT is(mail.expire_rate_counters(), 0::bigint, 'the admin may run it too; nothing left to expire');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ usage and reset
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('T', 'sasl_user', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('U', 'client_net', NULL, 'recipients', 10, '1 hour', 'tempfail');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, '203.0.113.7', '{a@x.example,b@x.example}'), 'accept', 'alice sends');
SELECT is(pg_temp.act('bob@example.test', NULL, '203.0.113.8', '{a@x.example}'), 'accept', 'bob sends');
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'tempfail', 'alice is at her limit');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT results_eq($$SELECT rule_id, rule_key, rule_match, counter_value, metric, used, max, per, action,
                           window_end - window_start
                      FROM mail.rate_limit_usage()$$,
                  $$VALUES (pg_temp.rid('T'), 'sasl_user', NULL, 'alice@example.test', 'messages', 1::bigint, 1::bigint,
                            '1 hour'::interval, 'tempfail', '1 hour'::interval),
                           (pg_temp.rid('T'), 'sasl_user', NULL, 'bob@example.test', 'messages', 1, 1, '1 hour', 'tempfail', '1 hour'),
                           (pg_temp.rid('U'), 'client_net', NULL, '203.0.113.0/24', 'recipients', 3, 10, '1 hour', 'tempfail', '1 hour')$$,
                  'rate_limit_usage lists the live counters');
SELECT results_eq($$SELECT counter_value, used FROM mail.rate_limit_usage('sasl_user', 'Alice@Example.test')$$,
                  $$VALUES ('alice@example.test', 1::bigint)$$, '... of one key and value (any case)');
SELECT results_eq($$SELECT counter_value, used FROM mail.rate_limit_usage(NULL, '203.0.113.200')$$,
                  $$VALUES ('203.0.113.0/24', 3::bigint)$$, '... of an address, finding its network''s counter');
SELECT results_eq($$SELECT counter_value FROM mail.rate_limit_usage('client_net')$$,
                  $$VALUES ('203.0.113.0/24')$$, '... of one key');
SELECT is_empty($$SELECT * FROM mail.rate_limit_usage('sender')$$, '... nothing for a key without counters');
SELECT * FROM pg_temp.refuses_policy($$SELECT * FROM mail.rate_limit_usage('user')$$,
    '22023', 'invalid rate-limit key ''user'': expected sasl_user, sender, sender_domain, client_ip, client_net or recipient_domain',
    'rate_limit_usage refuses an unknown key');
SELECT * FROM pg_temp.refuses_policy($$SELECT * FROM mail.rate_limit_usage('client_ip', 'alice@example.test')$$,
    '22023', 'invalid value ''alice@example.test'' for key client_ip: expected an IP address or a network',
    'rate_limit_usage refuses a non-address for an IP key');
SELECT is(mail.reset_rate_limit_usage(pg_temp.rid('T'), 'ALICE@example.test'), 1::bigint,
          'reset_rate_limit_usage of one value deletes its counter');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', 'alice may send again');
SELECT is(pg_temp.act('bob@example.test', NULL, NULL, '{}'), 'tempfail', 'bob is still at his limit');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT is(mail.reset_rate_limit_usage(pg_temp.rid('T')), 2::bigint, 'reset_rate_limit_usage of a rule deletes all its counters');
SELECT is(mail.reset_rate_limit_usage(pg_temp.rid('U'), '203.0.113.99'), 1::bigint, '... an address finds its network''s counter');
SELECT is(mail.reset_rate_limit_usage(pg_temp.rid('T'), 'nobody@example.test'), 0::bigint, '0 when there is nothing to reset');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.reset_rate_limit_usage(-1)$$,
    'P0002', 'rate limit -1 does not exist', 'reset_rate_limit_usage refuses an unknown rule');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.reset_rate_limit_usage(%s, 'x')$$, pg_temp.rid('U')),
    '22023', 'invalid value ''x'' for key client_net: expected an IP address or a network',
    'reset_rate_limit_usage refuses a non-address for an IP key');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ change and remove
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('C1', 'sasl_user', NULL, 'messages', 1, '1 hour', 'tempfail');
SELECT FROM pg_temp.add('C2', 'sasl_user', NULL, 'messages', 1, '1 hour', 'reject');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', 'one message');
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'reject', 'the second is refused');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok(format($$SELECT mail.change_rate_limit(%s, 2), mail.change_rate_limit(%s, max => 2)$$,
                       pg_temp.rid('C1'), pg_temp.rid('C2')), 'change_rate_limit raises both budgets');
RESET ROLE;
SET LOCAL ROLE mailmeta_milter;
SELECT is(pg_temp.act('alice@example.test', NULL, NULL, '{}'), 'accept', 'the second is accepted now');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok(format($$SELECT mail.change_rate_limit(%s, per => '2 hours', action => 'hold')$$, pg_temp.rid('C1')),
                'change_rate_limit changes the interval and the action');
SELECT results_eq(format($$SELECT max, per, action FROM mail.list_rate_limits() WHERE rule_id = %s$$, pg_temp.rid('C1')),
                  $$VALUES (2::bigint, '2 hours'::interval, 'hold')$$, '... keeping what was not given');
SELECT results_eq(format($$SELECT window_end - window_start, used FROM mail.rate_limit_usage() WHERE rule_id = %s$$, pg_temp.rid('C1')),
                  $$VALUES ('2 hours'::interval, 2::bigint)$$, 'a running window keeps its count and gets the new length');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.change_rate_limit(%s, action => 'hold', per => '2 hours')$$, pg_temp.rid('C2')),
    '23505', NULL, 'change_rate_limit refuses to make a rule equal to another');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.change_rate_limit(%s, 0)$$, pg_temp.rid('C1')),
    '22023', 'invalid rate-limit max 0: must be at least 1', 'change_rate_limit refuses max 0');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.change_rate_limit(%s, per => '0 seconds')$$, pg_temp.rid('C1')),
    '22023', 'invalid rate-limit interval ''00:00:00'': must be between 1 second and 366 days', 'change_rate_limit refuses a zero interval');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.change_rate_limit(%s, action => 'drop')$$, pg_temp.rid('C1')),
    '22023', 'invalid rate-limit action ''drop'': expected tempfail, reject or hold', 'change_rate_limit refuses an unknown action');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.change_rate_limit(-5, 10)$$,
    'P0002', 'rate limit -5 does not exist', 'change_rate_limit refuses an unknown rule');
SELECT lives_ok(format($$SELECT mail.remove_rate_limit(%s)$$, pg_temp.rid('C1')), 'remove_rate_limit');
SELECT * FROM pg_temp.refuses_policy(format($$SELECT mail.remove_rate_limit(%s)$$, pg_temp.rid('C1')),
    'P0002', format('rate limit %s does not exist', pg_temp.rid('C1')), 'removing a rule twice is refused');
SELECT is((SELECT count(*)::int FROM mail.rate_limit_counters WHERE rule_id = pg_temp.rid('C1')), 0,
          'the removed rule''s counters are gone');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ bad rules: the admin API
SET LOCAL ROLE mailmeta_admin;
SELECT FROM pg_temp.add('dup', 'sender_domain', 'example.test', 'messages', 100, '1 hour', 'tempfail');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('user', NULL, 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit key ''user'': expected sasl_user, sender, sender_domain, client_ip, client_net or recipient_domain',
    'an unknown key is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit(NULL, NULL, 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit key NULL: expected sasl_user, sender, sender_domain, client_ip, client_net or recipient_domain',
    'a NULL key is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'mails', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit metric ''mails'': expected messages, recipients or bytes', 'an unknown metric is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 0, '1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit max 0: must be at least 1', 'max 0 is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', NULL, '1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit max NULL: must be at least 1', 'max NULL is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '0.5 seconds', 'tempfail')$$,
    '22023', 'invalid rate-limit interval ''00:00:00.5'': must be between 1 second and 366 days', 'an interval under a second is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '367 days', 'tempfail')$$,
    '22023', 'invalid rate-limit interval ''367 days'': must be between 1 second and 366 days', 'an interval over 366 days is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '-1 hour', 'tempfail')$$,
    '22023', 'invalid rate-limit interval ''-01:00:00'': must be between 1 second and 366 days', 'a negative interval is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '1 hour', 'drop')$$,
    '22023', 'invalid rate-limit action ''drop'': expected tempfail, reject or hold', 'an unknown action is refused');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sasl_user', 'alice', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid address ''alice'': expected exactly one "@", as in local-part@domain', 'sasl_user wants an address');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender', '.a@example.test', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid address ''.a@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'sender wants a well-formed address');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender_domain', 'alice@example.test', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid domain ''alice@example.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'sender_domain wants a domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('recipient_domain', 'bad_domain', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid domain ''bad_domain'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'recipient_domain wants a well-formed domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('client_ip', 'not-an-ip', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid match ''not-an-ip'' for key client_ip: expected an IP address or a network (192.0.2.0/24, 2001:db8::/48)',
    'client_ip wants an address or network');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('client_net', '300.1.1.1', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid match ''300.1.1.1'' for key client_net: expected an IP address or a network (192.0.2.0/24, 2001:db8::/48)',
    'client_net wants a valid address');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('client_ip', '', 'messages', 1, '1 hour', 'tempfail')$$,
    '22023', 'invalid match '''' for key client_ip: expected an IP address or a network (192.0.2.0/24, 2001:db8::/48)',
    'an empty match is refused (NULL means every value)');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.add_rate_limit('sender_domain', 'EXAMPLE.test', 'messages', 5, '60 minutes', 'tempfail')$$,
    '23505', format('rate limit %s already counts messages of sender_domain example.test per 01:00:00 (action tempfail)', pg_temp.rid('dup')),
    'a rule equal to another (same key, match, metric, interval, action) is refused');
SELECT lives_ok($$SELECT mail.add_rate_limit('sender_domain', 'example.test', 'messages', 500, '1 hour', 'reject')$$,
                'the same with another action is a rule of its own');
SELECT FROM pg_temp.remove_all();
RESET ROLE;

-- ------------------------------------------------------------ bad rules: the constraints
SET LOCAL ROLE mailmeta_owner;
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('user', 'messages', 1, '1 hour', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_key_known"',
                 'a CHECK refuses an unknown key');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, match, metric, max, per, action) VALUES ('sender', 'Alice@Example.test', 'messages', 1, '1 hour', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_match_well_formed"',
                 'a CHECK refuses a match not in normal form');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, match, metric, max, per, action) VALUES ('client_ip', '192.0.2.0/24', 'messages', 1, '1 hour', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_match_net_consistent"',
                 'a CHECK refuses an IP match without its network');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('sender', 'mails', 1, '1 hour', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_metric_known"',
                 'a CHECK refuses an unknown metric');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('sender', 'messages', 0, '1 hour', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_max_positive"',
                 'a CHECK refuses max 0');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('sender', 'messages', 1, '0', 'reject')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_per_range"',
                 'a CHECK refuses a zero interval');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('sender', 'messages', 1, '1 hour', 'drop')$$,
                 '23514', 'new row for relation "rate_limits" violates check constraint "rate_limits_action_known"',
                 'a CHECK refuses an unknown action');
SELECT throws_ok($$INSERT INTO mail.rate_limit_exemptions (kind, value) VALUES ('domain', 'Example.test')$$,
                 '23514', 'new row for relation "rate_limit_exemptions" violates check constraint "rate_limit_exemptions_value_well_formed"',
                 'a CHECK refuses an exemption not in normal form');
RESET ROLE;

-- ------------------------------------------------------------ bad check documents
SET LOCAL ROLE mailmeta_milter;
SELECT throws_ok($$SELECT mail.policy_check('[]')$$, '22023', 'policy_check wants a JSON object, not array',
                 'policy_check refuses an array');
SELECT throws_ok($$SELECT mail.policy_check(NULL)$$, '22023', 'policy_check wants a JSON object, not NULL',
                 'policy_check refuses NULL');
SELECT throws_ok($$SELECT mail.policy_check('{"recipients": "a@example.test"}')$$, '22023', NULL,
                 'policy_check refuses recipients that are not an array');
SELECT throws_ok($$SELECT mail.policy_check('{"recipients": [1]}')$$, '22023', NULL,
                 'policy_check refuses a recipient that is a number');
SELECT throws_ok($$SELECT mail.policy_check('{"size_bytes": -1}')$$, '22023', NULL, 'policy_check refuses a negative size');
SELECT throws_ok($$SELECT mail.policy_check('{"sasl_user": 5}')$$, '22023', NULL, 'policy_check refuses a sasl_user that is a number');
SELECT throws_ok($$SELECT mail.policy_check('{"mailmeta_id": "nope"}')$$, '22023', NULL, 'policy_check refuses a mailmeta_id that is not a UUID');
SELECT is(mail.policy_check('{}'), '{"action": "accept"}'::jsonb, 'an empty document is accepted');
SELECT is(mail.policy_check('{"recipients": [{"address": "a@example.test"}], "unknown": 1}'), '{"action": "accept"}'::jsonb,
          'recipients may be objects with an address; unknown keys are ignored');
RESET ROLE;

-- ------------------------------------------------------------ privileges
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.expire_rate_counters()$$, 'the milter expires counters');
SELECT throws_ok($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '1 hour', 'reject')$$, '42501', NULL,
                 'the milter cannot add rules');
SELECT throws_ok($$SELECT * FROM mail.rate_limit_usage()$$, '42501', NULL, 'nor read usage');
SELECT throws_ok($$SELECT * FROM mail.rate_limits$$, '42501', NULL, 'nor read the rules');
SELECT throws_ok($$SELECT * FROM mail.rate_limit_counters$$, '42501', NULL, 'nor read the counters');
SELECT throws_ok($$DELETE FROM mail.rate_limit_counters$$, '42501', NULL, 'nor delete counters');
SELECT throws_ok($$SELECT * FROM mail.rate_limit_exemptions$$, '42501', NULL, 'nor read the exemptions');
SELECT throws_ok($$SELECT mail.lock_rate_counters(1)$$, '42501', NULL, 'nor call internal helpers');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT throws_ok($$SELECT mail.policy_check('{}')$$, '42501', NULL, 'the admin cannot consume budgets (policy_check)');
SELECT throws_ok($$UPDATE mail.rate_limit_counters SET used = 0$$, '42501', NULL, 'nor write counters directly');
SELECT throws_ok($$INSERT INTO mail.rate_limits (key, metric, max, per, action) VALUES ('sender', 'messages', 1, '1 hour', 'reject')$$,
                 '42501', NULL, 'nor rules');
SELECT lives_ok($$SELECT * FROM mail.rate_limits, mail.rate_limit_counters, mail.rate_limit_exemptions$$, 'the admin reads them');
RESET ROLE;
SET LOCAL ROLE mailmeta_test_nobody;
SELECT throws_ok($$SELECT mail.policy_check('{}')$$, '42501', NULL, 'a role without grants cannot call policy_check');
SELECT throws_ok($$SELECT mail.add_rate_limit('sender', NULL, 'messages', 1, '1 hour', 'reject')$$, '42501', NULL,
                 'nor add_rate_limit');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
