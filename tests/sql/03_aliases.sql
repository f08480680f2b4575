-- 03_aliases.sql — admin API for aliases: add_alias / delete_alias happy
-- paths, normalisation and de-duplication of destinations, catch-alls,
-- forwarding, loop detection (self, two-step, longer chains) and every
-- refused input with its exact SQLSTATE and message, checking nothing changed.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(70);
\ir helpers.psql
SET LOCAL ROLE mailmeta_admin;

DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_domain('one.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
    PERFORM mail.add_user('bob@example.test', 'pw');
END
$$;

-- ------------------------------------------------------------ add_alias
SELECT ok(mail.add_alias(' Team@Example.TEST ',
                         ARRAY['Alice@example.test', ' bob@EXAMPLE.test ', 'alice@example.test', 'Friend@Elsewhere.ORG']) > 0,
          'add_alias returns an alias_id');
SELECT is((SELECT count(*)::int FROM mail.aliases WHERE address = 'team@example.test'), 1,
          'the alias address is stored trimmed and lowercased');
SELECT results_eq(
    $$SELECT ad.destination FROM mail.alias_destinations ad JOIN mail.aliases a USING (alias_id)
       WHERE a.address = 'team@example.test' ORDER BY 1$$,
    $$VALUES ('alice@example.test'), ('bob@example.test'), ('friend@elsewhere.org')$$,
    'destinations are normalised and duplicates collapsed');
SELECT lives_ok($$SELECT mail.add_alias('@Example.test', ARRAY['alice@example.test'])$$,
                'add_alias accepts a catch-all (@domain)');
SELECT is((SELECT count(*)::int FROM mail.aliases WHERE address = '@example.test'), 1, 'catch-all stored lowercased');
SELECT lives_ok($$SELECT mail.add_alias('all@example.test', ARRAY['team@example.test', 'bob@example.test'])$$,
                'add_alias accepts an alias as a destination');
SELECT lives_ok($$SELECT mail.add_alias('fwd@example.test', ARRAY['someone@elsewhere.org'])$$,
                'add_alias accepts only external destinations (forwarding)');
SELECT lives_ok($$SELECT mail.add_alias('diamond@example.test', ARRAY['all@example.test', 'team@example.test'])$$,
                'two paths to the same alias are not a loop');
SELECT is((SELECT domain_id FROM mail.aliases WHERE address = 'team@example.test'),
          (SELECT domain_id FROM mail.domains WHERE domain = 'example.test'),
          'the alias is linked to its domain');

SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', NULL)$$,
    '22023', 'alias ''x@example.test'' needs at least one destination', 'add_alias refuses NULL destinations');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', '{}')$$,
    '22023', 'alias ''x@example.test'' needs at least one destination', 'add_alias refuses empty destinations');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', ARRAY['alice@example.test', NULL])$$,
    '22023', 'destinations of alias ''x@example.test'' must not contain NULL', 'add_alias refuses a NULL destination');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', ARRAY['alice@example.test', 'not-an-address'])$$,
    '22023', 'invalid address ''not-an-address'': expected exactly one "@", as in local-part@domain',
    'add_alias refuses a malformed destination');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', ARRAY['@example.test'])$$,
    '22023', 'invalid address ''@example.test'': the local part is empty', 'add_alias refuses a catch-all as destination');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', ARRAY['y@bücher.test'])$$,
    '22023', 'invalid address ''y@bücher.test'': internationalised domain names must be given in IDNA form (xn--...)',
    'add_alias refuses a non-ASCII destination domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x..y@example.test', ARRAY['alice@example.test'])$$,
    '22023', 'invalid address ''x..y@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'add_alias refuses a malformed alias address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('@', ARRAY['alice@example.test'])$$,
    '22023', 'invalid address ''@'': the domain is empty', 'add_alias refuses a catch-all without domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias(NULL, ARRAY['alice@example.test'])$$,
    '22023', 'invalid address NULL: the address is empty', 'add_alias refuses a NULL address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('@-bad.test', ARRAY['alice@example.test'])$$,
    '22023', 'invalid address ''@-bad.test'': each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"',
    'add_alias refuses a catch-all of a malformed domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@nowhere.test', ARRAY['alice@example.test'])$$,
    '23503', 'cannot add alias ''x@nowhere.test'': domain ''nowhere.test'' does not exist',
    'add_alias refuses an unknown domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('@nowhere.test', ARRAY['alice@example.test'])$$,
    '23503', 'cannot add alias ''@nowhere.test'': domain ''nowhere.test'' does not exist',
    'add_alias refuses a catch-all of an unknown domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('x@example.test', ARRAY['ghost@example.test'])$$,
    '23503', 'destination ''ghost@example.test'' of alias ''x@example.test'' is neither a user nor an alias of local domain ''example.test''',
    'add_alias refuses an unknown destination in a local domain');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('ALICE@example.test', ARRAY['bob@example.test'])$$,
    '23505', 'address ''alice@example.test'' is already a user', 'add_alias refuses a user''s address');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('team@EXAMPLE.test', ARRAY['bob@example.test'])$$,
    '23505', 'alias ''team@example.test'' already exists', 'add_alias refuses a duplicate alias (any case)');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('@example.test', ARRAY['bob@example.test'])$$,
    '23505', 'alias ''@example.test'' already exists', 'add_alias refuses a second catch-all');

-- ------------------------------------------------------------ loops
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('self@example.test', ARRAY['Self@example.test'])$$,
    '42P19', 'alias ''self@example.test'' would loop: self@example.test -> self@example.test',
    'add_alias refuses a self-reference (a -> a)');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('self@example.test', ARRAY['bob@example.test', 'self@example.test'])$$,
    '42P19', 'alias ''self@example.test'' would loop: self@example.test -> self@example.test',
    'add_alias refuses a self-reference among other destinations');
-- a -> b while b's domain is not local (forwarding), then the domain becomes
-- local and b -> a would close the loop.
SELECT lives_ok($$SELECT mail.add_alias('a@one.test', ARRAY['b@two.test'])$$, 'a@one.test forwards to b@two.test');
SELECT lives_ok($$SELECT mail.add_domain('two.test')$$, 'two.test becomes local');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('b@two.test', ARRAY['a@one.test'])$$,
    '42P19', 'alias ''b@two.test'' would loop: b@two.test -> a@one.test -> b@two.test',
    'add_alias refuses a two-step loop (a -> b -> a)');
SELECT lives_ok($$SELECT mail.add_alias('c@two.test', ARRAY['a@one.test'])$$, 'c -> a');
SELECT lives_ok($$SELECT mail.add_alias('d@two.test', ARRAY['c@two.test', 'alice@example.test'])$$, 'd -> c');
SELECT * FROM pg_temp.refuses($$SELECT mail.add_alias('b@two.test', ARRAY['bob@example.test', 'd@two.test'])$$,
    '42P19', 'alias ''b@two.test'' would loop: b@two.test -> d@two.test -> c@two.test -> a@one.test -> b@two.test',
    'add_alias refuses a longer loop (b -> d -> c -> a -> b)');
SELECT lives_ok($$SELECT mail.add_alias('b@two.test', ARRAY['bob@example.test'])$$,
                'the same alias without the loop is accepted');

-- ------------------------------------------------------------ delete_alias
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_alias('team@example.test')$$,
    '2BP01', 'cannot delete alias ''team@example.test'': it is a destination of aliases ''all@example.test'', ''diamond@example.test''',
    'delete_alias refuses while other aliases deliver to it');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_alias('ghost@example.test')$$,
    'P0002', 'alias ''ghost@example.test'' does not exist', 'delete_alias refuses an unknown alias');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_alias('alice@example.test')$$,
    'P0002', 'alias ''alice@example.test'' does not exist', 'delete_alias refuses a user');
SELECT * FROM pg_temp.refuses($$SELECT mail.delete_alias('x y@example.test')$$,
    '22023', 'invalid address ''x y@example.test'': the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot',
    'delete_alias refuses a malformed address');
SELECT lives_ok($$SELECT mail.delete_alias(' Diamond@example.test')$$, 'delete_alias (any case)');
SELECT lives_ok($$SELECT mail.delete_alias('ALL@example.test')$$, 'delete_alias of an alias to an alias');
SELECT is((SELECT count(*)::int FROM mail.aliases WHERE address IN ('diamond@example.test', 'all@example.test')), 0,
          'aliases deleted');
SELECT is((SELECT count(*)::int FROM mail.alias_destinations ad
            WHERE NOT EXISTS (SELECT FROM mail.aliases a WHERE a.alias_id = ad.alias_id)), 0,
          'their destinations went with them');
SELECT lives_ok($$SELECT mail.delete_alias('@EXAMPLE.test')$$, 'delete_alias of a catch-all');
SELECT is((SELECT count(*)::int FROM mail.aliases WHERE address = '@example.test'), 0, 'catch-all deleted');

-- ------------------------------------------------------------ list_aliases
SELECT results_eq(
    $$SELECT address, destinations FROM mail.list_aliases('Example.TEST')$$,
    $$VALUES ('fwd@example.test', ARRAY['someone@elsewhere.org']),
             ('team@example.test', ARRAY['alice@example.test', 'bob@example.test', 'friend@elsewhere.org'])$$,
    'list_aliases lists a domain''s aliases with their destinations');
SELECT is((SELECT count(*)::int FROM mail.list_aliases()), (SELECT count(*)::int FROM mail.aliases),
          'list_aliases() lists every alias');

SELECT * FROM finish();
ROLLBACK;
