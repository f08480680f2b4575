-- 0001_roles.sql — roles, schema ownership and the pgcrypto extension.
--
-- Every component talks to PostgreSQL with its own least-privilege role:
--   mailmeta_owner    NOLOGIN; owns schema "mail" and everything in it, and
--                     runs the SECURITY DEFINER admin API.
--   mailmeta_admin    the administrator: calls the admin API, reads the tables.
--   mailmeta_postfix  Postfix pgsql maps: reads the postfix_* views only.
--   mailmeta_dovecot  Dovecot passdb/userdb: reads the dovecot_* views only.
--   mailmeta_milter   the milter: schema usage only, until it gets its tables.
-- Roles are cluster-wide, so they are created only if missing; passwords are
-- set by the deployment (ALTER ROLE ... PASSWORD), never here.
--
-- The migration runner wraps this file in its transaction and runs it as a
-- superuser; it has already created schema "mail".

DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
            ('mailmeta_owner',   false),
            ('mailmeta_admin',   true),
            ('mailmeta_postfix', true),
            ('mailmeta_dovecot', true),
            ('mailmeta_milter',  true)) AS v(name, login)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            EXECUTE format('CREATE ROLE %I %s', r.name,
                           CASE WHEN r.login THEN 'LOGIN' ELSE 'NOLOGIN' END);
        END IF;
    END LOOP;
END
$roles$;

-- bcrypt hashing for the admin API; called schema-qualified (public.crypt).
CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA public;

CREATE SCHEMA IF NOT EXISTS mail;
ALTER SCHEMA mail OWNER TO mailmeta_owner;
COMMENT ON SCHEMA mail IS 'mailmeta: mail directory (domains, users, aliases), lookup views and admin API';

-- Nothing in schema mail is reachable by PUBLIC. Functions are executable by
-- PUBLIC by default: turn that off for everything mailmeta_owner creates, and
-- each migration still revokes explicitly.
REVOKE ALL ON SCHEMA mail FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE mailmeta_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

GRANT USAGE ON SCHEMA mail
    TO mailmeta_admin, mailmeta_postfix, mailmeta_dovecot, mailmeta_milter;
