-- 12_policy_limits.sql — size and recipient limits (global, per domain, per
-- user) and spam thresholds (global, per domain): the tables, the admin
-- functions and their bad-input errors (nothing changed), what
-- mail.policy_snapshot() hands the milter, and who may call what: the
-- milter reads the snapshot and nothing else, the admin manages the policy
-- but cannot write the tables.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(95);
\ir policy_helpers.psql

CREATE ROLE mailmeta_test_nobody NOLOGIN;
GRANT USAGE ON SCHEMA mail TO mailmeta_test_nobody;

SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_domain('other.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
END
$$;
RESET ROLE;

-- ------------------------------------------------------------ structure
SELECT has_table('mail', t, 'has table mail.' || t)
  FROM unnest(ARRAY['policy_settings', 'domain_limits', 'user_limits', 'domain_spam_thresholds']) AS t;
SELECT col_is_pk('mail', 'domain_limits', 'domain_id', 'domain_limits keyed by domain_id');
SELECT col_is_pk('mail', 'user_limits', 'user_id', 'user_limits keyed by user_id (per-user rows lead with user_id)');
SELECT fk_ok('mail', 'user_limits', 'user_id', 'mail', 'users', 'user_id');
SELECT fk_ok('mail', 'domain_limits', 'domain_id', 'mail', 'domains', 'domain_id');
SELECT fk_ok('mail', 'domain_spam_thresholds', 'domain_id', 'mail', 'domains', 'domain_id');
SELECT is((SELECT count(*)::int FROM mail.policy_settings), 1, 'policy_settings has exactly one row');
SELECT function_returns('mail', 'policy_snapshot', ARRAY[]::text[], 'jsonb');
SELECT function_returns('mail', 'set_limits', ARRAY['text', 'bigint', 'integer'], 'void');
SELECT function_returns('mail', 'clear_limits', ARRAY['text'], 'void');
SELECT function_returns('mail', 'list_limits', ARRAY[]::text[], 'setof record');
SELECT function_returns('mail', 'set_spam_thresholds', ARRAY['text', 'numeric', 'numeric'], 'void');
SELECT function_returns('mail', 'clear_spam_thresholds', ARRAY['text'], 'void');
SELECT function_returns('mail', 'list_spam_thresholds', ARRAY[]::text[], 'setof record');
SELECT is((SELECT pg_get_function_arguments('mail.set_limits(text,bigint,integer)'::regprocedure)),
          'target text, max_message_bytes bigint, max_recipients integer',
          'set_limits parameters are named');

-- ------------------------------------------------------------ defaults
SELECT is(mail.policy_snapshot(),
          '{"limits": {"global": {"max_message_bytes": null, "max_recipients": null}, "domains": {}, "users": {}},
            "spam": {"global": {"mark": 5.0, "reject": 15.0}, "domains": {}},
            "suspended": {}, "rate_limits": {}}'::jsonb,
          'a fresh snapshot: no limits, spam mark 5.0 and reject 15.0, nobody suspended, no rate limits');

-- ------------------------------------------------------------ limits
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_limits(NULL, 10485760, 100)$$, 'set_limits(NULL, ...) sets the global limits');
SELECT lives_ok($$SELECT mail.set_limits('Example.TEST', 20971520, NULL)$$, 'set_limits for a domain (any case)');
SELECT lives_ok($$SELECT mail.set_limits(' Bob@Example.test ', 1048576, 5)$$, 'set_limits for a user (trimmed, any case)');
SELECT results_eq($$SELECT scope, target, max_message_bytes, max_recipients FROM mail.list_limits()$$,
                  $$VALUES ('global', NULL, 10485760::bigint, 100),
                           ('domain', 'example.test', 20971520::bigint, NULL::integer),
                           ('user', 'bob@example.test', 1048576::bigint, 5)$$,
                  'list_limits lists the global row first, then domains, then users');
SELECT is(mail.policy_snapshot()->'limits',
          '{"global": {"max_message_bytes": 10485760, "max_recipients": 100},
            "domains": {"example.test": {"max_message_bytes": 20971520, "max_recipients": null}},
            "users": {"bob@example.test": {"max_message_bytes": 1048576, "max_recipients": 5}}}'::jsonb,
          'the snapshot carries every limits row; null means not set at that level');
SELECT lives_ok($$SELECT mail.set_limits('bob@example.test', NULL, 50)$$, 'set_limits replaces a row');
SELECT is(mail.policy_snapshot()->'limits'->'users'->'bob@example.test',
          '{"max_message_bytes": null, "max_recipients": 50}'::jsonb, '... as a whole');
SELECT is((SELECT count(*)::int FROM mail.user_limits), 1, '... without adding a row');
SELECT lives_ok($$SELECT mail.clear_limits('bob@example.test')$$, 'clear_limits removes a user''s row');
SELECT lives_ok($$SELECT mail.clear_limits('example.test')$$, 'clear_limits removes a domain''s row');
SELECT is(mail.policy_snapshot()->'limits',
          '{"global": {"max_message_bytes": 10485760, "max_recipients": 100}, "domains": {}, "users": {}}'::jsonb,
          'only the global limits remain');
SELECT lives_ok($$SELECT mail.clear_limits(NULL)$$, 'clear_limits(NULL) removes the global limits');
SELECT is(mail.policy_snapshot()->'limits'->'global',
          '{"max_message_bytes": null, "max_recipients": null}'::jsonb, '... leaving no limit');

-- bad input
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits('nowhere.test', 1000, 10)$$,
    'P0002', 'domain ''nowhere.test'' does not exist', 'set_limits refuses an unknown domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits('carol@example.test', 1000, 10)$$,
    'P0002', 'user ''carol@example.test'' does not exist', 'set_limits refuses an unknown user');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits('bad_domain', 1000, 10)$$,
    '22023', 'invalid domain ''bad_domain'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'set_limits refuses a malformed domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits('a@@example.test', 1000, 10)$$,
    '22023', 'invalid address ''a@@example.test'': expected exactly one "@", as in local-part@domain',
    'set_limits refuses a malformed address');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits(NULL, 0, 10)$$,
    '22023', 'invalid max_message_bytes 0: must be at least 1 (NULL: no limit)', 'set_limits refuses a size of 0');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_limits('example.test', 1000, -1)$$,
    '22023', 'invalid max_recipients -1: must be at least 1 (NULL: no limit)', 'set_limits refuses a negative recipient limit');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.clear_limits('alice@example.test')$$,
    'P0002', 'user ''alice@example.test'' has no limits of its own', 'clear_limits refuses a user without limits');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.clear_limits('nowhere.test')$$,
    'P0002', 'domain ''nowhere.test'' does not exist', 'clear_limits refuses an unknown domain');
RESET ROLE;

-- rows go with their user or domain
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_limits('other.test', 1000, 1), mail.set_limits('bob@example.test', 1000, 1)$$,
                'limits for a domain and a user');
SELECT lives_ok($$SELECT mail.delete_user('bob@example.test')$$, 'a user with limits can be deleted');
SELECT lives_ok($$SELECT mail.delete_domain('other.test')$$, 'a domain with limits can be deleted');
SELECT is(mail.policy_snapshot()->'limits', '{"global": {"max_message_bytes": null, "max_recipients": null}, "domains": {}, "users": {}}'::jsonb,
          'their limits went with them');
SELECT lives_ok($$SELECT mail.add_user('bob@example.test', 'pw'), mail.add_domain('other.test')$$, 'added again');
RESET ROLE;

-- ------------------------------------------------------------ spam thresholds
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_spam_thresholds(NULL, 4.5, 12)$$, 'set_spam_thresholds(NULL, ...) sets the global pair');
SELECT lives_ok($$SELECT mail.set_spam_thresholds('EXAMPLE.test', 3.0, 8.5)$$, 'set_spam_thresholds for a domain');
SELECT lives_ok($$SELECT mail.set_spam_thresholds('other.test', 6, NULL)$$, 'a domain may set one threshold only (NULL: the global one)');
SELECT is(mail.policy_snapshot()->'spam',
          '{"global": {"mark": 4.5, "reject": 12}, "domains": {"example.test": {"mark": 3.0, "reject": 8.5},
                                                             "other.test": {"mark": 6, "reject": null}}}'::jsonb,
          'the snapshot carries the thresholds');
SELECT results_eq($$SELECT domain, mark_score, reject_score FROM mail.list_spam_thresholds()$$,
                  $$VALUES (NULL, 4.5, 12::numeric), ('example.test', 3.0, 8.5), ('other.test', 6, NULL)$$,
                  'list_spam_thresholds: global first, then domains');
SELECT lives_ok($$SELECT mail.set_spam_thresholds('example.test', 5, 5)$$, 'mark may equal reject');
SELECT lives_ok($$SELECT mail.set_spam_thresholds('example.test', -2, 10)$$, 'scores may be negative');
SELECT lives_ok($$SELECT mail.clear_spam_thresholds('other.test')$$, 'clear_spam_thresholds removes a domain''s pair');
SELECT lives_ok($$SELECT mail.clear_spam_thresholds(NULL)$$, 'clear_spam_thresholds(NULL) resets the global pair');
SELECT is(mail.policy_snapshot()->'spam',
          '{"global": {"mark": 5.0, "reject": 15.0}, "domains": {"example.test": {"mark": -2, "reject": 10}}}'::jsonb,
          '... to 5.0 and 15.0');

SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_spam_thresholds('example.test', 10, 5)$$,
    '22023', 'invalid spam thresholds: mark_score 10 is above reject_score 5', 'refuses mark above reject');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_spam_thresholds(NULL, 'NaN', 5)$$,
    '22023', 'invalid mark_score NaN: must be a number between -1000000 and 1000000 (or NULL)', 'refuses NaN');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_spam_thresholds(NULL, 1, 1e7)$$,
    '22023', 'invalid reject_score 10000000: must be a number between -1000000 and 1000000 (or NULL)',
    'refuses an absurd score');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_spam_thresholds('nowhere.test', 1, 2)$$,
    'P0002', 'domain ''nowhere.test'' does not exist', 'refuses an unknown domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.set_spam_thresholds('-bad-', 1, 2)$$,
    '22023', 'invalid domain ''-bad-'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'refuses a malformed domain');
SELECT * FROM pg_temp.refuses_policy($$SELECT mail.clear_spam_thresholds('other.test')$$,
    'P0002', 'domain ''other.test'' has no spam thresholds of its own', 'clear refuses a domain without thresholds');
RESET ROLE;

-- ------------------------------------------------------------ constraints (backstop)
SET LOCAL ROLE mailmeta_owner;
SELECT throws_ok($$UPDATE mail.policy_settings SET max_message_bytes = 0$$, '23514', NULL,
                 'a CHECK refuses a global size limit of 0');
SELECT throws_ok($$INSERT INTO mail.policy_settings (singleton) VALUES (false)$$, '23514', NULL,
                 'policy_settings cannot get a second row');
SELECT throws_ok($$INSERT INTO mail.user_limits (user_id, max_recipients) SELECT user_id, 0 FROM mail.users LIMIT 1$$,
                 '23514', NULL, 'a CHECK refuses a user recipient limit of 0');
SELECT throws_ok($$INSERT INTO mail.domain_spam_thresholds (domain_id, mark_score, reject_score)
                   SELECT domain_id, 9, 3 FROM mail.domains LIMIT 1$$,
                 '23514', NULL, 'a CHECK refuses mark above reject');
SELECT throws_ok($$UPDATE mail.policy_settings SET spam_mark_score = 'NaN'$$, '23514', NULL,
                 'a CHECK refuses a NaN threshold');
RESET ROLE;

-- ------------------------------------------------------------ privileges
SET LOCAL ROLE mailmeta_milter;
SELECT lives_ok($$SELECT mail.policy_snapshot()$$, 'the milter reads the snapshot');
SELECT throws_ok($$SELECT mail.set_limits(NULL, 1, 1)$$, '42501', NULL, 'the milter cannot set limits');
SELECT throws_ok($$SELECT mail.set_spam_thresholds(NULL, 1, 2)$$, '42501', NULL, 'nor spam thresholds');
SELECT throws_ok($$SELECT * FROM mail.list_limits()$$, '42501', NULL, 'nor list limits');
SELECT throws_ok($$SELECT * FROM mail.policy_settings$$, '42501', NULL, 'nor read policy_settings');
SELECT throws_ok($$SELECT * FROM mail.user_limits$$, '42501', NULL, 'nor read user_limits');
SELECT throws_ok($$SELECT * FROM mail.domain_spam_thresholds$$, '42501', NULL, 'nor read domain_spam_thresholds');
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT * FROM mail.policy_settings, mail.domain_limits, mail.user_limits, mail.domain_spam_thresholds$$,
                'the admin reads the policy tables');
SELECT lives_ok($$SELECT mail.policy_snapshot()$$, 'and the snapshot');
SELECT throws_ok($$UPDATE mail.policy_settings SET max_recipients = 1$$, '42501', NULL, 'but cannot write them directly');
SELECT throws_ok($$INSERT INTO mail.user_limits (user_id) VALUES (1)$$, '42501', NULL, '... nor insert');
SELECT throws_ok($$SELECT mail.policy_target('example.test')$$, '42501', NULL, 'nor call internal helpers');
RESET ROLE;
SET LOCAL ROLE mailmeta_postfix;
SELECT throws_ok($$SELECT mail.policy_snapshot()$$, '42501', NULL, 'Postfix cannot read the snapshot');
RESET ROLE;
SET LOCAL ROLE mailmeta_test_nobody;
SELECT throws_ok($$SELECT mail.policy_snapshot()$$, '42501', NULL, 'a role without grants cannot read the snapshot');
SELECT throws_ok($$SELECT mail.set_limits(NULL, 1, 1)$$, '42501', NULL, 'nor set limits');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
