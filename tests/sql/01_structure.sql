-- 01_structure.sql — the schema's shape: tables, columns, keys, indexes,
-- views, functions, ownership and comments, as the migrations define them.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(82);

SELECT has_schema('mail');
SELECT schema_owner_is('mail', 'mailmeta_owner');

-- tables
SELECT tables_are('mail',
    ARRAY['domains', 'users', 'aliases', 'alias_destinations', 'schema_migrations',
          'messages', 'message_recipients', 'user_messages', 'attachment_blobs',
          'attachment_parts', 'thread_links',
          'folders', 'mailbox_messages', 'contacts', 'contact_messages',
          'policy_settings', 'domain_limits', 'user_limits', 'domain_spam_thresholds',
          'rate_limits', 'rate_limit_counters', 'rate_limit_exemptions',
          'sender_suspensions', 'abuse_events', 'message_verdicts']);

SELECT columns_are('mail', 'domains', ARRAY['domain_id', 'domain', 'created_at']);
SELECT col_is_pk('mail', 'domains', 'domain_id', 'domains keyed by domain_id');
SELECT col_type_is('mail', 'domains', 'domain_id', 'bigint', 'col_type_is: domains.domain_id bigint');
SELECT col_type_is('mail', 'domains', 'domain', 'text', 'col_type_is: domains.domain text');
SELECT col_not_null('mail', 'domains', 'domain', 'col_not_null: domains.domain');
SELECT col_is_unique('mail', 'domains', 'domain', 'col_is_unique: domains.domain');
SELECT col_type_is('mail', 'domains', 'created_at', 'timestamp with time zone', 'col_type_is: domains.created_at timestamp with time zone');

SELECT columns_are('mail', 'users', ARRAY['user_id', 'domain_id', 'local_part', 'address',
    'password_hash', 'quota_bytes', 'enabled', 'created_at', 'updated_at']);
SELECT col_is_pk('mail', 'users', 'user_id', 'users keyed by user_id');
SELECT col_type_is('mail', 'users', 'user_id', 'bigint', 'col_type_is: users.user_id bigint');
SELECT col_is_fk('mail', 'users', 'domain_id', 'col_is_fk: users.domain_id');
SELECT fk_ok('mail', 'users', 'domain_id', 'mail', 'domains', 'domain_id');
SELECT col_type_is('mail', 'users', 'address', 'text', 'col_type_is: users.address text');
SELECT col_not_null('mail', 'users', 'address', 'col_not_null: users.address');
SELECT col_is_unique('mail', 'users', 'address', 'col_is_unique: users.address');
SELECT col_type_is('mail', 'users', 'password_hash', 'text', 'col_type_is: users.password_hash text');
SELECT col_not_null('mail', 'users', 'password_hash', 'col_not_null: users.password_hash');
SELECT col_type_is('mail', 'users', 'quota_bytes', 'bigint', 'col_type_is: users.quota_bytes bigint');
SELECT col_is_null('mail', 'users', 'quota_bytes', 'col_is_null: users.quota_bytes');
SELECT col_type_is('mail', 'users', 'enabled', 'boolean', 'col_type_is: users.enabled boolean');
SELECT col_not_null('mail', 'users', 'enabled', 'col_not_null: users.enabled');
SELECT col_default_is('mail', 'users', 'enabled', 'true', 'col_default_is: users.enabled true');
SELECT col_type_is('mail', 'users', 'updated_at', 'timestamp with time zone', 'col_type_is: users.updated_at timestamp with time zone');
SELECT has_index('mail', 'users', 'users_domain_id_idx', 'domain_id', 'has_index: users.users_domain_id_idx domain_id');

SELECT columns_are('mail', 'aliases', ARRAY['alias_id', 'domain_id', 'address', 'created_at']);
SELECT col_is_pk('mail', 'aliases', 'alias_id', 'aliases keyed by alias_id');
SELECT fk_ok('mail', 'aliases', 'domain_id', 'mail', 'domains', 'domain_id');
SELECT col_is_unique('mail', 'aliases', 'address', 'col_is_unique: aliases.address');
SELECT col_not_null('mail', 'aliases', 'address', 'col_not_null: aliases.address');

SELECT columns_are('mail', 'alias_destinations', ARRAY['alias_id', 'destination']);
SELECT col_is_pk('mail', 'alias_destinations', ARRAY['alias_id', 'destination']::name[], 'alias_destinations keyed by (alias_id, destination)');
SELECT fk_ok('mail', 'alias_destinations', 'alias_id', 'mail', 'aliases', 'alias_id');
SELECT has_index('mail', 'alias_destinations', 'alias_destinations_destination_idx', 'destination', 'has_index: alias_destinations.alias_destinations_destination_idx destination');
SELECT is((SELECT confdeltype FROM pg_constraint
            WHERE conrelid = 'mail.alias_destinations'::regclass AND contype = 'f'),
          'c'::"char", 'alias destinations are deleted with their alias');

SELECT columns_are('mail', 'schema_migrations', ARRAY['version', 'name', 'sha256', 'applied_at']);
SELECT col_is_pk('mail', 'schema_migrations', 'version', 'schema_migrations keyed by version');

-- views
SELECT views_are('mail', ARRAY['postfix_domains', 'postfix_mailboxes', 'postfix_aliases',
    'postfix_sender_logins', 'dovecot_passdb', 'dovecot_userdb',
    'message_log', 'message_attachments']);
SELECT columns_are('mail', 'postfix_domains', ARRAY['domain']);
SELECT columns_are('mail', 'postfix_mailboxes', ARRAY['address']);
SELECT columns_are('mail', 'postfix_aliases', ARRAY['address', 'destination']);
SELECT columns_are('mail', 'postfix_sender_logins', ARRAY['address', 'login']);
SELECT columns_are('mail', 'dovecot_passdb', ARRAY['username', 'password']);
SELECT columns_are('mail', 'dovecot_userdb', ARRAY['username', 'quota_rule']);

-- admin API signatures
SELECT function_returns('mail', 'add_domain', ARRAY['text'], 'bigint');
SELECT function_returns('mail', 'delete_domain', ARRAY['text'], 'void');
SELECT function_returns('mail', 'add_user', ARRAY['text', 'text', 'bigint'], 'bigint');
SELECT function_returns('mail', 'set_password', ARRAY['text', 'text'], 'void');
SELECT function_returns('mail', 'set_user_enabled', ARRAY['text', 'boolean'], 'void');
SELECT function_returns('mail', 'set_quota', ARRAY['text', 'bigint'], 'void');
SELECT function_returns('mail', 'delete_user', ARRAY['text'], 'void');
SELECT function_returns('mail', 'add_alias', ARRAY['text', 'text[]'], 'bigint');
SELECT function_returns('mail', 'delete_alias', ARRAY['text'], 'void');
SELECT function_returns('mail', 'list_users', ARRAY['text'], 'setof record');
SELECT function_returns('mail', 'list_aliases', ARRAY['text'], 'setof record');
SELECT function_returns('mail', 'normalise_address', ARRAY['text'], 'text');
SELECT function_returns('mail', 'normalise_domain', ARRAY['text'], 'text');
SELECT is_definer('mail', 'add_domain', ARRAY['text']);
SELECT is_definer('mail', 'add_user', ARRAY['text', 'text', 'bigint']);
SELECT is_definer('mail', 'add_alias', ARRAY['text', 'text[]']);
SELECT is((SELECT pg_get_function_arguments('mail.add_user(text,text,bigint)'::regprocedure)),
          'address text, password text, quota_bytes bigint DEFAULT NULL::bigint',
          'add_user parameters are named and quota_bytes is optional');
SELECT lives_ok($$SELECT 'mail.add_alias(text,text[])'::regprocedure$$, 'add_alias(text, text[]) exists');

-- every function: SECURITY DEFINER, owned by mailmeta_owner, fixed search_path, commented.
-- Exception: internal helpers that only mailmeta_owner may execute run as
-- their caller without a SET clause, so that the planner can inline them
-- into the SECURITY DEFINER functions calling them (migration 0007).
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace AND NOT p.prosecdef
       AND (has_function_privilege('public', p.oid, 'EXECUTE')
            OR EXISTS (SELECT FROM pg_roles r
                        WHERE r.rolname LIKE 'mailmeta\_%' AND r.rolname <> 'mailmeta_owner'
                          AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))) $$,
    'every function in schema mail that anyone but its owner may execute is SECURITY DEFINER');
SELECT set_eq($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace AND NOT p.prosecdef $$,
    ARRAY['mail.clean_message_id(text)', 'mail.json_bigint(jsonb)',
          'mail.message_id_list(jsonb,integer)', 'mail.message_id_list_all(jsonb,integer)',
          'mail.parse_timestamptz(text)', 'mail.parse_timestamptz_strict(text)', 'mail.parse_inet(text)',
          'mail.contact_address_problem(text)', 'mail.json_integer(jsonb,bigint,bigint)',
          'mail.is_uuid(text)', 'mail.is_sent_folder(text)', 'mail.header_recipients(jsonb)',
          'mail.mirror_batch_rows(jsonb)', 'mail.mirror_batch_quick_ok(jsonb)',
          'mail.encode_cursor(timestamp with time zone,bigint)'],
    'the SECURITY INVOKER helpers are exactly the inlined internal ones');
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace
       AND p.proowner <> 'mailmeta_owner'::regrole $$,
    'every function in schema mail is owned by mailmeta_owner');
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace AND p.prosecdef
       AND NOT coalesce('search_path=mail, pg_temp' = ANY (p.proconfig), false) $$,
    'every SECURITY DEFINER function in schema mail pins search_path = mail, pg_temp');
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'mail'::regnamespace
       AND obj_description(p.oid, 'pg_proc') IS NULL $$,
    'every function in schema mail has a COMMENT');

-- every table and view but the runner's own is owned by mailmeta_owner
SELECT is_empty($$
    SELECT c.relname::text FROM pg_class c
     WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind IN ('r', 'v', 'S')
       AND c.relowner <> 'mailmeta_owner'::regrole
       AND c.relname NOT IN ('schema_migrations') $$,
    'every table and view in schema mail is owned by mailmeta_owner');
SELECT is_empty($$
    SELECT c.relname::text FROM pg_class c
     WHERE c.relnamespace = 'mail'::regnamespace AND c.relkind IN ('r', 'v')
       AND obj_description(c.oid, 'pg_class') IS NULL
       AND c.relname NOT IN ('schema_migrations') $$,
    'every table and view in schema mail has a COMMENT');

-- roles
SELECT has_role('mailmeta_owner');
SELECT has_role('mailmeta_admin');
SELECT has_role('mailmeta_postfix');
SELECT has_role('mailmeta_dovecot');
SELECT has_role('mailmeta_milter');
SELECT has_role('mailmeta_mirror');
SELECT has_role('mailmeta_reader');
SELECT is((SELECT rolcanlogin FROM pg_roles WHERE rolname = 'mailmeta_owner'), false,
          'mailmeta_owner cannot log in');
SELECT is((SELECT count(*)::int FROM pg_roles
            WHERE rolname IN ('mailmeta_admin', 'mailmeta_postfix', 'mailmeta_dovecot', 'mailmeta_milter',
                              'mailmeta_mirror', 'mailmeta_reader')
              AND rolcanlogin), 6, 'the component roles can log in');
SELECT is_empty($$
    SELECT rolname::text FROM pg_roles
     WHERE rolname LIKE 'mailmeta\_%' AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls) $$,
    'no mailmeta role is privileged');
SELECT has_extension('public', 'pgcrypto', 'pgcrypto is installed in schema public');

SELECT * FROM finish();
ROLLBACK;
