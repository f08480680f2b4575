-- 0002_directory.sql — the mail directory: domains, users, aliases.
--
-- These tables are the source of truth for who receives mail and who may log
-- in. Nobody writes them directly: the admin API (0003) is the only writer and
-- validates and normalises every value first. The CHECK constraints below
-- repeat the essential rules as a backstop, using the same predicates as the
-- API so the two cannot drift.
--
-- Addresses are stored normalised: trimmed and lowercased, so the lookup keys
-- Postfix (%s) and Dovecot (%Lu) send match with a plain equality on a
-- unique index.

SET LOCAL ROLE mailmeta_owner;

-- Predicates shared by the CHECK constraints and the admin API. They take an
-- already-normalised (lowercase, trimmed) value and never raise.
CREATE FUNCTION mail.is_valid_domain(domain text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT $1 IS NOT NULL
       AND length($1) <= 253
       AND $1 ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
$$;
COMMENT ON FUNCTION mail.is_valid_domain(text) IS
    'True when the (already lowercased) value is an ASCII hostname: labels of a-z, 0-9 and "-", 1-63 characters each, no leading or trailing "-", at most 253 characters in all.';

CREATE FUNCTION mail.is_valid_local_part(local_part text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $fn$
    SELECT $1 IS NOT NULL
       AND length($1) BETWEEN 1 AND 64
       AND $1 ~ $re$^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$$re$
$fn$;
COMMENT ON FUNCTION mail.is_valid_local_part(text) IS
    'True when the (already lowercased) value is an RFC 5322 dot-atom of at most 64 characters: no leading, trailing or doubled dot.';

REVOKE ALL ON FUNCTION mail.is_valid_domain(text), mail.is_valid_local_part(text) FROM PUBLIC;

CREATE TABLE mail.domains (
    domain_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain     text        NOT NULL UNIQUE
                           CHECK (mail.is_valid_domain(domain)),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mail.domains IS
    'Domains this service receives mail for (Postfix virtual_mailbox_domains). Domain names are lowercase ASCII (IDNA xn-- form).';

CREATE TABLE mail.users (
    user_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id     bigint      NOT NULL REFERENCES mail.domains (domain_id),
    local_part    text        NOT NULL CHECK (mail.is_valid_local_part(local_part)),
    address       text        NOT NULL UNIQUE,
    password_hash text        NOT NULL CHECK (password_hash LIKE '{BLF-CRYPT}%'),
    quota_bytes   bigint      CHECK (quota_bytes >= 0),
    enabled       boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (left(address, length(local_part) + 1) = local_part || '@'
           AND mail.is_valid_domain(substr(address, length(local_part) + 2)))
);
CREATE INDEX users_domain_id_idx ON mail.users (domain_id);
COMMENT ON TABLE mail.users IS
    'Mailboxes. A disabled user still receives mail but can neither log in nor send. quota_bytes NULL or 0 means unlimited.';
COMMENT ON COLUMN mail.users.password_hash IS
    'Dovecot scheme-prefixed bcrypt hash: {BLF-CRYPT}$2a$10$...';

CREATE TABLE mail.aliases (
    alias_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id  bigint      NOT NULL REFERENCES mail.domains (domain_id),
    address    text        NOT NULL UNIQUE
                           CHECK (address ~ '^[^@]*@[^@]+$'
                                  AND (address LIKE '@%'
                                       OR mail.is_valid_local_part(split_part(address, '@', 1)))
                                  AND mail.is_valid_domain(split_part(address, '@', 2))),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aliases_domain_id_idx ON mail.aliases (domain_id);
COMMENT ON TABLE mail.aliases IS
    'Virtual aliases (Postfix virtual_alias_maps): local@domain, or @domain as the catch-all of a domain.';

CREATE TABLE mail.alias_destinations (
    alias_id    bigint NOT NULL REFERENCES mail.aliases (alias_id) ON DELETE CASCADE,
    destination text   NOT NULL
                       CHECK (destination ~ '^[^@]+@[^@]+$'
                              AND mail.is_valid_local_part(split_part(destination, '@', 1))
                              AND mail.is_valid_domain(split_part(destination, '@', 2))),
    PRIMARY KEY (alias_id, destination)
);
-- Reverse lookups: "which aliases point at this address?" (delete_user,
-- delete_alias, loop detection).
CREATE INDEX alias_destinations_destination_idx ON mail.alias_destinations (destination);
COMMENT ON TABLE mail.alias_destinations IS
    'Where an alias delivers: local users or aliases, or external addresses (forwarding).';

REVOKE ALL ON mail.domains, mail.users, mail.aliases, mail.alias_destinations FROM PUBLIC;
GRANT SELECT ON mail.domains, mail.users, mail.aliases, mail.alias_destinations TO mailmeta_admin;
