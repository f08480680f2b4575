-- 02_domains_users.sql — admin API for domains and users: each function's
-- happy path, normalisation, the stored password hash, and every refused
-- input with its exact SQLSTATE and message, checking nothing changed.
-- Runs as mailmeta_admin, the role the API is meant for.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(149);
\ir helpers.psql
SET LOCAL ROLE mailmeta_admin;

-- ------------------------------------------------------------ add_domain
SELECT ok(mail.add_domain('  Example.TEST ') > 0, 'add_domain returns a domain_id');
SELECT is((SELECT count(*)::int FROM mail.domains WHERE domain = 'example.test'), 1,
          'add_domain stores the name trimmed and lowercased');
SELECT lives_ok($$SELECT mail.add_domain('xn--bcher-kva.test')$$, 'add_domain accepts an IDNA (xn--) name');
SELECT lives_ok($$SELECT mail.add_domain('a-1.b2.other.test')$$, 'add_domain accepts digits and inner hyphens');
SELECT lives_ok($$SELECT mail.add_domain(repeat('a', 63) || '.test')$$, 'add_domain accepts a 63-character label');

SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('example.TEST')$$,
    '23505', 'domain ''example.test'' already exists', 'add_domain refuses a duplicate (any case)');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('')$$,
    '22023', 'invalid domain '''': the domain is empty', 'add_domain refuses an empty name');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain(NULL)$$,
    '22023', 'invalid domain NULL: the domain is empty', 'add_domain refuses NULL');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('bücher.test')$$,
    '22023', 'invalid domain ''bücher.test'': internationalised domain names must be given in IDNA form (xn--...)',
    'add_domain refuses a non-ASCII name and asks for IDNA');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('-bad.test')$$,
    '22023', 'invalid domain ''-bad.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_domain refuses a label starting with a hyphen');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('bad-.test')$$,
    '22023', 'invalid domain ''bad-.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_domain refuses a label ending with a hyphen');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('a..test')$$,
    '22023', 'invalid domain ''a..test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_domain refuses an empty label');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('exa mple.test')$$,
    '22023', 'invalid domain ''exa mple.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_domain refuses inner whitespace');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_domain('under_score.test')$$,
    '22023', 'invalid domain ''under_score.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_domain refuses an underscore');
SELECT * FROM pg_temp.refuses(format($$SELECT mail.add_domain('%s.test')$$, repeat('a', 64)),
    '22023', format('invalid domain ''%s.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"', repeat('a', 64)),
    'add_domain refuses a 64-character label');
SELECT * FROM pg_temp.refuses(format($$SELECT mail.add_domain('%s')$$, repeat('abcdefghi.', 25) || 'test'),
    '22023', format('invalid domain ''%s'': the domain is longer than 253 characters', repeat('abcdefghi.', 25) || 'test'),
    'add_domain refuses a name longer than 253 characters');

-- ------------------------------------------------------------ add_user
SELECT ok(mail.add_user(' Alice.Smith@EXAMPLE.test ', 'correct horse', 1000) > 0,
          'add_user returns a user_id');
SELECT results_eq(
    $$SELECT address, local_part, quota_bytes, enabled FROM mail.users
       WHERE address = 'alice.smith@example.test'$$,
    $$VALUES ('alice.smith@example.test', 'alice.smith', 1000::bigint, true)$$,
    'add_user stores the address trimmed and lowercased, its local part, quota, enabled');
SELECT is((SELECT d.domain FROM mail.users u JOIN mail.domains d USING (domain_id)
            WHERE u.address = 'alice.smith@example.test'), 'example.test',
          'add_user links the user to its domain');
SELECT matches((SELECT password_hash FROM mail.users WHERE address = 'alice.smith@example.test'),
               '^\{BLF-CRYPT\}\$2[aby]?\$10\$', 'the hash is {BLF-CRYPT} bcrypt with cost 10');
SELECT is((SELECT public.crypt('correct horse', substr(password_hash, 12)) = substr(password_hash, 12)
             FROM mail.users WHERE address = 'alice.smith@example.test'), true,
          'the hash verifies the password');
SELECT is((SELECT public.crypt('wrong horse', substr(password_hash, 12)) = substr(password_hash, 12)
             FROM mail.users WHERE address = 'alice.smith@example.test'), false,
          'the hash rejects another password');
SELECT lives_ok($$SELECT mail.add_user('bob@example.test', 'pw')$$, 'add_user without quota');
SELECT is((SELECT quota_bytes FROM mail.users WHERE address = 'bob@example.test'), NULL::bigint,
          'quota defaults to NULL (unlimited)');
SELECT lives_ok($$SELECT mail.add_user('zero@example.test', 'pw', 0)$$, 'add_user accepts quota 0 (unlimited)');
SELECT lives_ok($$SELECT mail.add_user('max@example.test', repeat('x', 72))$$,
                'add_user accepts a 72-byte password');
SELECT lives_ok($$SELECT mail.add_user('utf@example.test', repeat('é', 36))$$,
                'add_user accepts 36 two-byte characters (72 bytes)');
SELECT lives_ok($$SELECT mail.add_user($a$o'brien+tag!#$%&*/=?^_`{|}~-x@example.test$a$, 'pw')$$,
                'add_user accepts every dot-atom character');
SELECT lives_ok(format($$SELECT mail.add_user('%s@example.test', 'pw')$$, repeat('l', 64)),
                'add_user accepts a 64-character local part');
SELECT lives_ok($$SELECT mail.add_user('Team@example.test', 'pw')$$, 'add_user for an address later used as an alias test');
SELECT lives_ok($$SELECT mail.delete_user('team@example.test')$$, 'delete_user removes it again');
SELECT lives_ok($$SELECT mail.add_alias('team@example.test', ARRAY['bob@example.test'])$$,
                'an alias to test collisions against');

SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('ALICE.smith@example.test', 'pw')$$,
    '23505', 'address ''alice.smith@example.test'' is already a user', 'add_user refuses an existing user (any case)');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('Team@Example.test', 'pw')$$,
    '23505', 'address ''team@example.test'' is already an alias', 'add_user refuses an alias''s address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@nowhere.test', 'pw')$$,
    '23503', 'cannot add user ''carol@nowhere.test'': domain ''nowhere.test'' does not exist',
    'add_user refuses an unknown domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol', 'pw')$$,
    '22023', 'invalid address ''carol'': expected exactly one "@", as in local-part@domain', 'add_user refuses an address without @');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('a@b@example.test', 'pw')$$,
    '22023', 'invalid address ''a@b@example.test'': expected exactly one "@", as in local-part@domain', 'add_user refuses two @');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('', 'pw')$$,
    '22023', 'invalid address '''': the address is empty', 'add_user refuses an empty address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user(NULL, 'pw')$$,
    '22023', 'invalid address NULL: the address is empty', 'add_user refuses a NULL address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('@example.test', 'pw')$$,
    '22023', 'invalid address ''@example.test'': the local part is empty', 'add_user refuses an empty local part');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@', 'pw')$$,
    '22023', 'invalid address ''carol@'': the domain is empty', 'add_user refuses an empty domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('.carol@example.test', 'pw')$$,
    '22023', 'invalid address ''.carol@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a leading dot');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol.@example.test', 'pw')$$,
    '22023', 'invalid address ''carol.@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a trailing dot');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('ca..rol@example.test', 'pw')$$,
    '22023', 'invalid address ''ca..rol@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a double dot');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('ca rol@example.test', 'pw')$$,
    '22023', 'invalid address ''ca rol@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a space in the local part');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('"carol"@example.test', 'pw')$$,
    '22023', 'invalid address ''"carol"@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a quoted local part');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('jörg@example.test', 'pw')$$,
    '22023', 'invalid address ''jörg@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_user refuses a non-ASCII local part');
SELECT * FROM pg_temp.refuses(format($$SELECT mail.add_user('%s@example.test', 'pw')$$, repeat('l', 65)),
    '22023', format('invalid address ''%s@example.test'': the local part is longer than 64 characters', repeat('l', 65)),
    'add_user refuses a 65-character local part');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@bücher.test', 'pw')$$,
    '22023', 'invalid address ''carol@bücher.test'': internationalised domain names must be given in IDNA form (xn--...)',
    'add_user refuses a non-ASCII domain and asks for IDNA');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@-x.test', 'pw')$$,
    '22023', 'invalid address ''carol@-x.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_user refuses a malformed domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@example.test', '')$$,
    '22023', 'password must not be empty', 'add_user refuses an empty password');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@example.test', NULL)$$,
    '22023', 'password must not be empty', 'add_user refuses a NULL password');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@example.test', repeat('x', 73))$$,
    '22023', 'password is 73 bytes long; at most 72 bytes are allowed (bcrypt ignores the rest)',
    'add_user refuses a 73-byte password');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@example.test', repeat('é', 37))$$,
    '22023', 'password is 74 bytes long; at most 72 bytes are allowed (bcrypt ignores the rest)',
    'add_user counts password length in bytes, not characters');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_user('carol@example.test', 'pw', -1)$$,
    '22023', 'invalid quota_bytes -1 for ''carol@example.test'': must be 0 or more (NULL or 0 is unlimited)',
    'add_user refuses a negative quota');

-- ------------------------------------------------------------ set_password
SELECT pg_temp.dir_state() AS before_pw \gset
SELECT lives_ok($$SELECT mail.set_password('BOB@example.test', 'new secret')$$, 'set_password');
SELECT is((SELECT public.crypt('new secret', substr(password_hash, 12)) = substr(password_hash, 12)
             FROM mail.users WHERE address = 'bob@example.test'), true,
          'set_password stores a hash of the new password');
SELECT matches((SELECT password_hash FROM mail.users WHERE address = 'bob@example.test'),
               '^\{BLF-CRYPT\}\$2', 'set_password keeps the {BLF-CRYPT} format');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('ghost@example.test', 'pw')$$,
    'P0002', 'user ''ghost@example.test'' does not exist', 'set_password refuses an unknown user');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('team@example.test', 'pw')$$,
    'P0002', 'user ''team@example.test'' does not exist', 'set_password refuses an alias');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('bob@example.test', '')$$,
    '22023', 'password must not be empty', 'set_password refuses an empty password');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('bob@example.test', NULL)$$,
    '22023', 'password must not be empty', 'set_password refuses a NULL password');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('bob@example.test', repeat('x', 73))$$,
    '22023', 'password is 73 bytes long; at most 72 bytes are allowed (bcrypt ignores the rest)',
    'set_password refuses a 73-byte password');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_password('bob', 'pw')$$,
    '22023', 'invalid address ''bob'': expected exactly one "@", as in local-part@domain',
    'set_password refuses a malformed address');

-- ------------------------------------------------------------ set_user_enabled
SELECT lives_ok($$SELECT mail.set_user_enabled('Bob@Example.test', false)$$, 'set_user_enabled false');
SELECT is((SELECT enabled FROM mail.users WHERE address = 'bob@example.test'), false, 'user disabled');
SELECT lives_ok($$SELECT mail.set_user_enabled('bob@example.test', true)$$, 'set_user_enabled true');
SELECT is((SELECT enabled FROM mail.users WHERE address = 'bob@example.test'), true, 'user enabled again');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_user_enabled('bob@example.test', NULL)$$,
    '22023', 'enabled must be true or false for ''bob@example.test'', not NULL',
    'set_user_enabled refuses NULL');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_user_enabled('ghost@example.test', false)$$,
    'P0002', 'user ''ghost@example.test'' does not exist', 'set_user_enabled refuses an unknown user');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_user_enabled('bob@@example.test', false)$$,
    '22023', 'invalid address ''bob@@example.test'': expected exactly one "@", as in local-part@domain',
    'set_user_enabled refuses a malformed address');

-- ------------------------------------------------------------ set_quota
SELECT lives_ok($$SELECT mail.set_quota('bob@example.test', 5000)$$, 'set_quota');
SELECT is((SELECT quota_bytes FROM mail.users WHERE address = 'bob@example.test'), 5000::bigint, 'quota set');
SELECT lives_ok($$SELECT mail.set_quota('bob@example.test', NULL)$$, 'set_quota NULL');
SELECT is((SELECT quota_bytes FROM mail.users WHERE address = 'bob@example.test'), NULL::bigint, 'quota unlimited');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_quota('bob@example.test', -5)$$,
    '22023', 'invalid quota_bytes -5 for ''bob@example.test'': must be 0 or more (NULL or 0 is unlimited)',
    'set_quota refuses a negative quota');
SELECT * FROM pg_temp.refuses($$SELECT mail.set_quota('ghost@example.test', 1)$$,
    'P0002', 'user ''ghost@example.test'' does not exist', 'set_quota refuses an unknown user');

-- ------------------------------------------------------------ delete_user
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_user('bob@example.test')$$,
    '2BP01', 'cannot delete user ''bob@example.test'': it is a destination of alias ''team@example.test''',
    'delete_user refuses while an alias delivers to the user');
SELECT lives_ok($$SELECT mail.add_alias('crew@example.test', ARRAY['bob@example.test'])$$, 'a second alias to bob');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_user('bob@example.test')$$,
    '2BP01', 'cannot delete user ''bob@example.test'': it is a destination of aliases ''crew@example.test'', ''team@example.test''',
    'delete_user names every alias delivering to the user');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_user('ghost@example.test')$$,
    'P0002', 'user ''ghost@example.test'' does not exist', 'delete_user refuses an unknown user');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_user('team@example.test')$$,
    'P0002', 'user ''team@example.test'' does not exist', 'delete_user refuses an alias');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_user('')$$,
    '22023', 'invalid address '''': the address is empty', 'delete_user refuses an empty address');
SELECT lives_ok($$SELECT mail.delete_user(' ZERO@example.test ')$$, 'delete_user (any case)');
SELECT is((SELECT count(*)::int FROM mail.users WHERE address = 'zero@example.test'), 0, 'user deleted');

-- ------------------------------------------------------------ delete_domain
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_domain('example.test')$$,
    '2BP01', 'cannot delete domain ''example.test'': it still has 6 user(s) and 2 alias(es)',
    'delete_domain refuses while users or aliases remain');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_domain('nowhere.test')$$,
    'P0002', 'domain ''nowhere.test'' does not exist', 'delete_domain refuses an unknown domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_domain('no thing')$$,
    '22023', 'invalid domain ''no thing'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'delete_domain refuses a malformed name');
SELECT lives_ok($$SELECT mail.add_alias('@a-1.b2.other.test', ARRAY['bob@example.test'])$$, 'catch-all in another domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_domain('a-1.b2.other.test')$$,
    '2BP01', 'cannot delete domain ''a-1.b2.other.test'': it still has 0 user(s) and 1 alias(es)',
    'delete_domain refuses while an alias remains');
SELECT lives_ok($$SELECT mail.delete_domain('XN--bcher-kva.test')$$, 'delete_domain of an empty domain (any case)');
SELECT is((SELECT count(*)::int FROM mail.domains WHERE domain = 'xn--bcher-kva.test'), 0, 'domain deleted');

-- ------------------------------------------------------------ list_users
SELECT results_eq(
    $$SELECT address, quota_bytes, enabled FROM mail.list_users('EXAMPLE.test') WHERE address LIKE '%smith%' OR address = 'bob@example.test'$$,
    $$VALUES ('alice.smith@example.test', 1000::bigint, true), ('bob@example.test', NULL, true)$$,
    'list_users lists users of a domain, ordered, without hashes');
SELECT is((SELECT count(*)::int FROM mail.list_users()), (SELECT count(*)::int FROM mail.users),
          'list_users() lists every user');
SELECT is((SELECT count(*)::int FROM mail.list_users('other.test')), 0, 'list_users of a domain without users');

SELECT * FROM finish();
ROLLBACK;
