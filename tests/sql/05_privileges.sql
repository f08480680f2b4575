-- 05_privileges.sql — least privilege per component role, checked by
-- acting as each role: Postfix reads only its views and never a password
-- hash; Dovecot only its views; the milter nothing yet; the admin uses the
-- API and reads everything but cannot write tables directly; a role with
-- only schema usage (what PUBLIC would get) can execute no function.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(53);

-- A stand-in for PUBLIC: a fresh role, with schema usage so that the
-- function and table privileges themselves are what is tested.
CREATE ROLE mailmeta_test_nobody NOLOGIN;
GRANT USAGE ON SCHEMA mail TO mailmeta_test_nobody;
CREATE ROLE mailmeta_test_nousage NOLOGIN;

SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
END
$$;
RESET ROLE;

SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace
       AND (p.proacl IS NULL
            OR EXISTS (SELECT FROM aclexplode(p.proacl) x
                        WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE')) $$,
    'PUBLIC may execute no function in schema mail');
SELECT is_empty($$
    SELECT c.relname::text FROM pg_class c
     WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind IN ('r', 'v')
       AND EXISTS (SELECT FROM aclexplode(c.relacl) x WHERE x.grantee = 0) $$,
    'PUBLIC has no privilege on any table or view in schema mail');
SELECT ok(NOT has_schema_privilege('public', 'mail', 'USAGE'), 'PUBLIC has no usage on schema mail');

-- ------------------------------------------------------------ mailmeta_postfix
SET LOCAL ROLE mailmeta_postfix;
SELECT lives_ok('SELECT * FROM mail.postfix_domains', 'postfix reads postfix_domains');
SELECT lives_ok('SELECT * FROM mail.postfix_mailboxes', 'postfix reads postfix_mailboxes');
SELECT lives_ok('SELECT * FROM mail.postfix_aliases', 'postfix reads postfix_aliases');
SELECT lives_ok('SELECT * FROM mail.postfix_sender_logins', 'postfix reads postfix_sender_logins');
SELECT throws_ok('SELECT * FROM mail.users', '42501', NULL, 'postfix cannot read mail.users');
SELECT throws_ok('SELECT password_hash FROM mail.users', '42501', NULL, 'postfix cannot read password hashes');
SELECT throws_ok('SELECT * FROM mail.dovecot_passdb', '42501', NULL, 'postfix cannot read dovecot_passdb');
SELECT throws_ok('SELECT * FROM mail.dovecot_userdb', '42501', NULL, 'postfix cannot read dovecot_userdb');
SELECT throws_ok('SELECT * FROM mail.domains', '42501', NULL, 'postfix cannot read the tables');
SELECT throws_ok('SELECT * FROM mail.list_users()', '42501', NULL, 'postfix cannot list users');
SELECT throws_ok($$SELECT mail.add_domain('evil.test')$$, '42501', NULL, 'postfix cannot call the admin API');
SELECT throws_ok($$DELETE FROM mail.postfix_domains$$, '42501', NULL, 'postfix cannot write through a view');
RESET ROLE;

-- ------------------------------------------------------------ mailmeta_dovecot
SET LOCAL ROLE mailmeta_dovecot;
SELECT lives_ok('SELECT * FROM mail.dovecot_passdb', 'dovecot reads dovecot_passdb (with hashes)');
SELECT lives_ok('SELECT * FROM mail.dovecot_userdb', 'dovecot reads dovecot_userdb');
SELECT throws_ok('SELECT * FROM mail.users', '42501', NULL, 'dovecot cannot read mail.users');
SELECT throws_ok('SELECT * FROM mail.postfix_aliases', '42501', NULL, 'dovecot cannot read the postfix views');
SELECT throws_ok($$SELECT mail.set_password('alice@example.test', 'x')$$, '42501', NULL,
                 'dovecot cannot call the admin API');
SELECT throws_ok($$UPDATE mail.dovecot_passdb SET password = 'x'$$, '42501', NULL,
                 'dovecot cannot write through its view');
RESET ROLE;

-- ------------------------------------------------------------ mailmeta_milter
SET LOCAL ROLE mailmeta_milter;
SELECT throws_ok('SELECT * FROM mail.users', '42501', NULL, 'milter cannot read mail.users');
SELECT throws_ok('SELECT * FROM mail.dovecot_passdb', '42501', NULL, 'milter cannot read password hashes');
SELECT throws_ok('SELECT * FROM mail.postfix_mailboxes', '42501', NULL, 'milter cannot read the postfix views');
SELECT throws_ok('SELECT * FROM mail.aliases', '42501', NULL, 'milter cannot read mail.aliases');
SELECT throws_ok($$SELECT mail.add_user('m@example.test', 'pw')$$, '42501', NULL, 'milter cannot call the admin API');
SELECT throws_ok($$SELECT mail.normalise_address('a@example.test')$$, '42501', NULL,
                 'milter cannot call the helpers');
RESET ROLE;

-- ------------------------------------------------------------ mailmeta_admin
SET LOCAL ROLE mailmeta_admin;
SELECT lives_ok($$SELECT mail.add_domain('admin.test')$$, 'admin calls add_domain');
SELECT lives_ok($$SELECT mail.add_user('u@admin.test', 'pw')$$, 'admin calls add_user');
SELECT lives_ok($$SELECT mail.add_alias('a@admin.test', ARRAY['u@admin.test'])$$, 'admin calls add_alias');
SELECT lives_ok($$SELECT mail.normalise_address('X@Admin.test')$$, 'admin calls the normalisation helpers');
SELECT lives_ok('SELECT password_hash FROM mail.users', 'admin reads mail.users, hashes included');
SELECT lives_ok('SELECT * FROM mail.alias_destinations', 'admin reads mail.alias_destinations');
SELECT lives_ok('SELECT * FROM mail.dovecot_passdb', 'admin reads the lookup views');
SELECT throws_ok($$INSERT INTO mail.users (domain_id, local_part, address, password_hash)
                   SELECT domain_id, 'x', 'x@admin.test', '{BLF-CRYPT}x' FROM mail.domains LIMIT 1$$,
                 '42501', NULL, 'admin cannot INSERT into mail.users directly');
SELECT throws_ok($$UPDATE mail.users SET enabled = false$$, '42501', NULL, 'admin cannot UPDATE mail.users directly');
SELECT throws_ok($$DELETE FROM mail.users$$, '42501', NULL, 'admin cannot DELETE from mail.users directly');
SELECT throws_ok($$INSERT INTO mail.domains (domain) VALUES ('x.test')$$, '42501', NULL,
                 'admin cannot INSERT into mail.domains directly');
SELECT throws_ok($$DELETE FROM mail.aliases$$, '42501', NULL, 'admin cannot DELETE from mail.aliases directly');
SELECT throws_ok($$INSERT INTO mail.alias_destinations VALUES (1, 'x@admin.test')$$, '42501', NULL,
                 'admin cannot INSERT into mail.alias_destinations directly');
SELECT throws_ok($$SELECT mail.hash_password('x')$$, '42501', NULL, 'admin cannot call internal helpers');
SELECT throws_ok($$SELECT mail.lock_directory()$$, '42501', NULL, 'admin cannot take the directory lock directly');
SELECT throws_ok($$CREATE TABLE mail.evil (x int)$$, '42501', NULL, 'admin cannot create objects in schema mail');
SELECT throws_ok($$ALTER ROLE mailmeta_admin SUPERUSER$$, '42501', NULL, 'admin cannot raise its own privileges');
RESET ROLE;

-- ------------------------------------------------------------ PUBLIC stand-ins
SET LOCAL ROLE mailmeta_test_nobody;
SELECT throws_ok($$SELECT mail.add_domain('x.test')$$, '42501', NULL, 'a role without grants cannot execute add_domain');
SELECT throws_ok($$SELECT mail.add_user('x@example.test', 'pw')$$, '42501', NULL, 'nor add_user');
SELECT throws_ok($$SELECT mail.set_password('alice@example.test', 'pw')$$, '42501', NULL, 'nor set_password');
SELECT throws_ok($$SELECT mail.delete_user('alice@example.test')$$, '42501', NULL, 'nor delete_user');
SELECT throws_ok($$SELECT mail.normalise_domain('x.test')$$, '42501', NULL, 'nor the helpers');
SELECT throws_ok($$SELECT * FROM mail.users$$, '42501', NULL, 'nor read mail.users');
SELECT throws_ok($$SELECT * FROM mail.postfix_aliases$$, '42501', NULL, 'nor read the lookup views');
RESET ROLE;
SET LOCAL ROLE mailmeta_test_nousage;
SELECT throws_ok($$SELECT * FROM mail.postfix_domains$$, '42501', NULL, 'a role without schema usage reads nothing');
SELECT throws_ok($$SELECT mail.add_domain('x.test')$$, '42501', NULL, 'a role without schema usage calls nothing');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
