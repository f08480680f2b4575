-- 04_lookup_views.sql — what Postfix and Dovecot see: the lookup views,
-- queried exactly as their configurations do, by the roles they use.
-- Covers normalised keys, disabled users (receive but cannot log in), the
-- catch-all versus user self-mapping, sender logins through aliases, the
-- passdb hash format and userdb quota rules.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(28);
SET LOCAL ROLE mailmeta_admin;

DO $$
BEGIN
    PERFORM mail.add_domain('Example.TEST');
    PERFORM mail.add_domain('empty.test');
    PERFORM mail.add_user('Alice@Example.test', 'alice pw', 1000);
    PERFORM mail.add_user('bob@example.test', 'bob pw');
    PERFORM mail.add_user('zed@example.test', 'zed pw', 0);
    PERFORM mail.add_user('Dis@example.test', 'dis pw', 2000);
    PERFORM mail.set_user_enabled('dis@example.test', false);
    PERFORM mail.add_alias('team@example.test', ARRAY['alice@example.test', 'bob@example.test', 'friend@elsewhere.org']);
    PERFORM mail.add_alias('all@example.test', ARRAY['team@example.test']);
    PERFORM mail.add_alias('@example.test', ARRAY['alice@example.test']);
END
$$;

-- ------------------------------------------------------------ Postfix
SET LOCAL ROLE mailmeta_postfix;

SELECT results_eq($$SELECT domain FROM mail.postfix_domains WHERE domain = 'example.test'$$,
                  $$VALUES ('example.test')$$, 'virtual_mailbox_domains finds a domain (stored lowercase)');
SELECT results_eq($$SELECT domain FROM mail.postfix_domains WHERE domain = 'empty.test'$$,
                  $$VALUES ('empty.test')$$, 'a domain without users is still a mail domain');
SELECT is_empty($$SELECT domain FROM mail.postfix_domains WHERE domain = 'elsewhere.org'$$,
                'an external domain is not a mail domain');

SELECT results_eq($$SELECT address FROM mail.postfix_mailboxes WHERE address = 'alice@example.test'$$,
                  $$VALUES ('alice@example.test')$$, 'virtual_mailbox_maps finds a user entered in mixed case');
SELECT results_eq($$SELECT address FROM mail.postfix_mailboxes WHERE address = 'dis@example.test'$$,
                  $$VALUES ('dis@example.test')$$, 'a disabled user still receives mail');
SELECT is_empty($$SELECT address FROM mail.postfix_mailboxes WHERE address = 'team@example.test'$$,
                'an alias is not a mailbox');

SELECT set_eq($$SELECT destination FROM mail.postfix_aliases WHERE address = 'team@example.test'$$,
              ARRAY['alice@example.test', 'bob@example.test', 'friend@elsewhere.org'],
              'virtual_alias_maps: one row per destination, external forwarding included');
SELECT set_eq($$SELECT destination FROM mail.postfix_aliases WHERE address = 'all@example.test'$$,
              ARRAY['team@example.test'], 'an alias of an alias maps to the alias (Postfix recurses)');
SELECT set_eq($$SELECT destination FROM mail.postfix_aliases WHERE address = '@example.test'$$,
              ARRAY['alice@example.test'], 'the catch-all maps @domain');
SELECT set_eq($$SELECT destination FROM mail.postfix_aliases WHERE address = 'bob@example.test'$$,
              ARRAY['bob@example.test'], 'a user maps to itself, so the catch-all does not take its mail');
SELECT set_eq($$SELECT destination FROM mail.postfix_aliases WHERE address = 'dis@example.test'$$,
              ARRAY['dis@example.test'], 'a disabled user maps to itself too');
SELECT is_empty($$SELECT destination FROM mail.postfix_aliases WHERE address = 'nobody@example.test'$$,
                'an unknown address has no exact entry (Postfix then tries @domain)');

SELECT set_eq($$SELECT login FROM mail.postfix_sender_logins WHERE address = 'alice@example.test'$$,
              ARRAY['alice@example.test'], 'a user may send as itself');
SELECT set_eq($$SELECT login FROM mail.postfix_sender_logins WHERE address = 'team@example.test'$$,
              ARRAY['alice@example.test', 'bob@example.test'],
              'the local users an alias delivers to may send as the alias (external ones not)');
SELECT is_empty($$SELECT login FROM mail.postfix_sender_logins WHERE address = '@example.test'$$,
                'a catch-all grants no sender rights');
SELECT is_empty($$SELECT login FROM mail.postfix_sender_logins WHERE address = 'all@example.test'$$,
                'sender rights follow direct destinations only');

-- ------------------------------------------------------------ Dovecot
RESET ROLE;
SET LOCAL ROLE mailmeta_dovecot;

SELECT results_eq($$SELECT username FROM mail.dovecot_passdb WHERE username = 'alice@example.test'$$,
                  $$VALUES ('alice@example.test')$$, 'passdb finds an enabled user by its lowercase name');
SELECT matches((SELECT password FROM mail.dovecot_passdb WHERE username = 'alice@example.test'),
               '^\{BLF-CRYPT\}\$2[aby]?\$10\$.{53}$', 'passdb returns a {BLF-CRYPT} bcrypt hash');
SELECT is((SELECT public.crypt('alice pw', substr(password, 12)) = substr(password, 12)
             FROM mail.dovecot_passdb WHERE username = 'alice@example.test'), true,
          'the passdb hash verifies the password');
SELECT is_empty($$SELECT username FROM mail.dovecot_passdb WHERE username = 'dis@example.test'$$,
                'a disabled user is not in passdb (cannot log in)');
SELECT is_empty($$SELECT username FROM mail.dovecot_passdb WHERE username = 'team@example.test'$$,
                'an alias cannot log in');
SELECT results_eq($$SELECT quota_rule FROM mail.dovecot_userdb WHERE username = 'alice@example.test'$$,
                  $$VALUES ('*:bytes=1000')$$, 'userdb quota_rule for a quota');
SELECT results_eq($$SELECT quota_rule FROM mail.dovecot_userdb WHERE username = 'bob@example.test'$$,
                  $$VALUES (NULL::text)$$, 'userdb quota_rule is NULL without quota');
SELECT results_eq($$SELECT quota_rule FROM mail.dovecot_userdb WHERE username = 'zed@example.test'$$,
                  $$VALUES (NULL::text)$$, 'userdb quota_rule is NULL for quota 0 (unlimited)');
SELECT results_eq($$SELECT quota_rule FROM mail.dovecot_userdb WHERE username = 'dis@example.test'$$,
                  $$VALUES ('*:bytes=2000')$$, 'a disabled user is in userdb (LMTP delivers to it)');

-- set_* changes show through the views at once
RESET ROLE;
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.set_user_enabled('DIS@example.test', true), mail.set_quota('alice@example.test', NULL)$$,
                're-enable a user, drop a quota');
SELECT results_eq($$SELECT username FROM mail.dovecot_passdb WHERE username = 'dis@example.test'$$,
                  $$VALUES ('dis@example.test')$$, 're-enabled user is back in passdb');
SELECT results_eq($$SELECT quota_rule FROM mail.dovecot_userdb WHERE username = 'alice@example.test'$$,
                  $$VALUES (NULL::text)$$, 'dropped quota shows as no quota_rule');

SELECT * FROM finish();
ROLLBACK;
