-- 0003_admin_api.sql — the admin API: manage domains, users and aliases in SQL.
--
-- These functions are the only writers of the directory tables. Each one runs
-- as mailmeta_owner (SECURITY DEFINER, fixed search_path), validates and
-- normalises its input, and on bad input raises with a message naming the
-- offending value and a specific SQLSTATE, changing nothing:
--
--   22023 invalid_parameter_value   malformed address/domain, empty or too long
--                                   password, negative quota, no destinations
--   23503 foreign_key_violation     unknown domain; unknown local destination
--   23505 unique_violation          address already a domain/user/alias
--   P0002 no_data_found             unknown domain/user/alias to change or delete
--   2BP01 dependent_objects_still_exist  users/aliases still depend on it
--   42P19 invalid_recursion         an alias would loop
--
-- Writers serialise on one transaction-level advisory lock, so checks that
-- span tables (an address is a user or an alias, never both; aliases never
-- loop) cannot race. EXECUTE is granted to mailmeta_admin only.

SET LOCAL ROLE mailmeta_owner;

-- ---------------------------------------------------------------- helpers

-- Why a domain (trimmed, not yet lowercased) is unacceptable, or NULL.
CREATE FUNCTION mail.domain_problem(domain text) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT CASE
        WHEN $1 IS NULL OR $1 = '' THEN 'the domain is empty'
        WHEN $1 ~ '[^\x01-\x7e]' THEN
            'internationalised domain names must be given in IDNA form (xn--...)'
        WHEN length($1) > 253 THEN 'the domain is longer than 253 characters'
        WHEN NOT mail.is_valid_domain(lower($1)) THEN
            'each domain label must be 1-63 characters of a-z, 0-9 and "-", not starting or ending with "-"'
    END
$$;
COMMENT ON FUNCTION mail.domain_problem(text) IS
    'Internal: why a trimmed domain is not acceptable, or NULL when it is.';

-- Why a local part (not yet lowercased) is unacceptable, or NULL.
CREATE FUNCTION mail.local_part_problem(local_part text) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT CASE
        WHEN $1 IS NULL OR $1 = '' THEN 'the local part is empty'
        WHEN length($1) > 64 THEN 'the local part is longer than 64 characters'
        WHEN NOT mail.is_valid_local_part(lower($1)) THEN
            'the local part must be a dot-atom: letters, digits and !#$%&''*+/=?^_`{|}~.- without a leading, trailing or doubled dot'
    END
$$;
COMMENT ON FUNCTION mail.local_part_problem(text) IS
    'Internal: why a local part is not acceptable, or NULL when it is.';

CREATE FUNCTION mail.normalise_domain(domain text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain  text := btrim(normalise_domain.domain, E' \t\r\n');
    v_problem text := mail.domain_problem(v_domain);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid domain %: %', quote_nullable(normalise_domain.domain), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN lower(v_domain);
END
$$;
COMMENT ON FUNCTION mail.normalise_domain(text) IS
    'Returns the domain trimmed and lowercased; raises 22023 naming the value when it is not an ASCII hostname (IDNA xn-- form is required for internationalised names).';

CREATE FUNCTION mail.normalise_address(address text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := btrim(normalise_address.address, E' \t\r\n');
    v_problem text;
BEGIN
    IF v_address IS NULL OR v_address = '' THEN
        v_problem := 'the address is empty';
    ELSIF v_address !~ '^[^@]*@[^@]*$' THEN
        v_problem := 'expected exactly one "@", as in local-part@domain';
    ELSE
        v_problem := coalesce(mail.local_part_problem(split_part(v_address, '@', 1)),
                              mail.domain_problem(split_part(v_address, '@', 2)));
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid address %: %', quote_nullable(normalise_address.address), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN lower(v_address);
END
$$;
COMMENT ON FUNCTION mail.normalise_address(text) IS
    'Returns local-part@domain trimmed and lowercased; raises 22023 naming the value when the local part is not a dot-atom of at most 64 characters or the domain is not an ASCII hostname.';

CREATE FUNCTION mail.normalise_alias_address(address text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := btrim(normalise_alias_address.address, E' \t\r\n');
    v_problem text;
BEGIN
    IF v_address LIKE '@%' THEN
        v_problem := mail.domain_problem(substr(v_address, 2));
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION 'invalid address %: %', quote_nullable(normalise_alias_address.address), v_problem
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN lower(v_address);
    END IF;
    RETURN mail.normalise_address(v_address);
END
$$;
COMMENT ON FUNCTION mail.normalise_alias_address(text) IS
    'Like normalise_address, but also accepts "@domain", the catch-all alias of a domain.';

CREATE FUNCTION mail.check_password(password text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_password.password IS NULL OR check_password.password = '' THEN
        RAISE EXCEPTION 'password must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(check_password.password) > 72 THEN
        RAISE EXCEPTION 'password is % bytes long; at most 72 bytes are allowed (bcrypt ignores the rest)',
                octet_length(check_password.password)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_password(text) IS
    'Internal: raises 22023 for an empty password or one longer than the 72 bytes bcrypt uses.';

CREATE FUNCTION mail.hash_password(password text) RETURNS text
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT '{BLF-CRYPT}' || public.crypt($1, public.gen_salt('bf', 10))
$$;
COMMENT ON FUNCTION mail.hash_password(text) IS
    'Internal: bcrypt (cost 10) hash with Dovecot''s {BLF-CRYPT} scheme prefix.';

CREATE FUNCTION mail.check_quota(address text, quota_bytes bigint) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_quota.quota_bytes < 0 THEN
        RAISE EXCEPTION 'invalid quota_bytes % for %: must be 0 or more (NULL or 0 is unlimited)',
                check_quota.quota_bytes, quote_literal(check_quota.address)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_quota(text, bigint) IS
    'Internal: raises 22023 for a negative quota.';

CREATE FUNCTION mail.lock_directory() RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    -- 1835100524 = 'mail' in ASCII; the two-key form keeps it apart from the
    -- single-key lock mailmeta-migrate takes.
    SELECT pg_advisory_xact_lock(1835100524, 1)
$$;
COMMENT ON FUNCTION mail.lock_directory() IS
    'Internal: serialises directory writers until the end of the transaction.';

-- Raises 23503 unless the domain of an address exists; returns its domain_id.
CREATE FUNCTION mail.domain_id_for(what text, address text) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain    text := split_part(domain_id_for.address, '@', 2);
    v_domain_id bigint;
BEGIN
    SELECT d.domain_id INTO v_domain_id FROM mail.domains d WHERE d.domain = v_domain;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'cannot add % %: domain % does not exist',
                what, quote_literal(domain_id_for.address), quote_literal(v_domain)
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Add it first with mail.add_domain().';
    END IF;
    RETURN v_domain_id;
END
$$;
COMMENT ON FUNCTION mail.domain_id_for(text, text) IS
    'Internal: domain_id of the domain of a normalised address; raises 23503 when the domain does not exist.';

-- Raises 23505 when a normalised address is already a user or an alias.
CREATE FUNCTION mail.check_address_free(address text) RETURNS void
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM mail.users u WHERE u.address = check_address_free.address) THEN
        RAISE EXCEPTION 'address % is already a user', quote_literal(check_address_free.address)
            USING ERRCODE = 'unique_violation';
    END IF;
    IF EXISTS (SELECT FROM mail.aliases a WHERE a.address = check_address_free.address) THEN
        RAISE EXCEPTION 'address % is already an alias', quote_literal(check_address_free.address)
            USING ERRCODE = 'unique_violation';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_address_free(text) IS
    'Internal: raises 23505 when the address is already a user or an alias.';

-- The aliases that deliver to an address ("alias 'a@x'" or
-- "aliases 'a@x', 'b@x'"), or NULL when there are none.
CREATE FUNCTION mail.aliases_pointing_at(address text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT CASE count(*) WHEN 0 THEN NULL WHEN 1 THEN 'alias ' ELSE 'aliases ' END
           || string_agg(quote_literal(a.address), ', ' ORDER BY a.address)
      FROM mail.alias_destinations ad
      JOIN mail.aliases a ON a.alias_id = ad.alias_id
     WHERE ad.destination = $1
$$;
COMMENT ON FUNCTION mail.aliases_pointing_at(text) IS
    'Internal: the aliases delivering to an address, as "alias ''a@x''" or "aliases ''a@x'', ''b@x''", or NULL when none do.';

-- ---------------------------------------------------------------- domains

CREATE FUNCTION mail.add_domain(domain text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain    text := mail.normalise_domain(add_domain.domain);
    v_domain_id bigint;
BEGIN
    PERFORM mail.lock_directory();
    IF EXISTS (SELECT FROM mail.domains d WHERE d.domain = v_domain) THEN
        RAISE EXCEPTION 'domain % already exists', quote_literal(v_domain)
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO mail.domains (domain) VALUES (v_domain) RETURNING domain_id INTO v_domain_id;
    RETURN v_domain_id;
END
$$;
COMMENT ON FUNCTION mail.add_domain(text) IS
    'Adds a domain to receive mail for and returns its domain_id. The name is trimmed and lowercased; internationalised names must be given in IDNA (xn--) form. Raises 22023 (malformed), 23505 (exists).';

CREATE FUNCTION mail.delete_domain(domain text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain    text := mail.normalise_domain(delete_domain.domain);
    v_domain_id bigint;
    v_users     bigint;
    v_aliases   bigint;
BEGIN
    PERFORM mail.lock_directory();
    SELECT d.domain_id INTO v_domain_id FROM mail.domains d WHERE d.domain = v_domain;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'domain % does not exist', quote_literal(v_domain)
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT count(*) INTO v_users FROM mail.users u WHERE u.domain_id = v_domain_id;
    SELECT count(*) INTO v_aliases FROM mail.aliases a WHERE a.domain_id = v_domain_id;
    IF v_users > 0 OR v_aliases > 0 THEN
        RAISE EXCEPTION 'cannot delete domain %: it still has % user(s) and % alias(es)',
                quote_literal(v_domain), v_users, v_aliases
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Delete its users and aliases first.';
    END IF;
    DELETE FROM mail.domains d WHERE d.domain_id = v_domain_id;
END
$$;
COMMENT ON FUNCTION mail.delete_domain(text) IS
    'Deletes a domain that has no users and no aliases left. Raises 22023 (malformed), P0002 (unknown), 2BP01 (users or aliases remain).';

-- ---------------------------------------------------------------- users

CREATE FUNCTION mail.add_user(address text, password text, quota_bytes bigint DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address   text := mail.normalise_address(add_user.address);
    v_domain_id bigint;
    v_user_id   bigint;
BEGIN
    PERFORM mail.check_password(add_user.password);
    PERFORM mail.check_quota(v_address, add_user.quota_bytes);
    PERFORM mail.lock_directory();
    v_domain_id := mail.domain_id_for('user', v_address);
    PERFORM mail.check_address_free(v_address);
    INSERT INTO mail.users (domain_id, local_part, address, password_hash, quota_bytes)
    VALUES (v_domain_id, split_part(v_address, '@', 1), v_address,
            mail.hash_password(add_user.password), add_user.quota_bytes)
    RETURNING user_id INTO v_user_id;
    RETURN v_user_id;
END
$$;
COMMENT ON FUNCTION mail.add_user(text, text, bigint) IS
    'Adds a mailbox and returns its user_id. The address is trimmed and lowercased; the password is stored as a {BLF-CRYPT} bcrypt hash (1-72 bytes); quota_bytes NULL or 0 is unlimited. Raises 22023 (malformed address, empty or too long password, negative quota), 23503 (unknown domain), 23505 (address is already a user or an alias).';

CREATE FUNCTION mail.set_password(address text, password text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(set_password.address);
BEGIN
    PERFORM mail.check_password(set_password.password);
    UPDATE mail.users u
       SET password_hash = mail.hash_password(set_password.password), updated_at = now()
     WHERE u.address = v_address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.set_password(text, text) IS
    'Replaces a user''s password (stored as a {BLF-CRYPT} bcrypt hash). Raises 22023 (malformed address, empty or too long password), P0002 (unknown user).';

CREATE FUNCTION mail.set_user_enabled(address text, enabled boolean) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(set_user_enabled.address);
BEGIN
    IF set_user_enabled.enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must be true or false for %, not NULL', quote_literal(v_address)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE mail.users u
       SET enabled = set_user_enabled.enabled, updated_at = now()
     WHERE u.address = v_address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.set_user_enabled(text, boolean) IS
    'Enables or disables a user. A disabled user keeps receiving mail but can neither log in nor send. Raises 22023 (malformed address, NULL flag), P0002 (unknown user).';

CREATE FUNCTION mail.set_quota(address text, quota_bytes bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(set_quota.address);
BEGIN
    PERFORM mail.check_quota(v_address, set_quota.quota_bytes);
    UPDATE mail.users u
       SET quota_bytes = set_quota.quota_bytes, updated_at = now()
     WHERE u.address = v_address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.set_quota(text, bigint) IS
    'Sets a user''s quota in bytes; NULL or 0 is unlimited. Raises 22023 (malformed address, negative quota), P0002 (unknown user).';

CREATE FUNCTION mail.delete_user(address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(delete_user.address);
    v_aliases text;
BEGIN
    PERFORM mail.lock_directory();
    IF NOT EXISTS (SELECT FROM mail.users u WHERE u.address = v_address) THEN
        RAISE EXCEPTION 'user % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
    v_aliases := mail.aliases_pointing_at(v_address);
    IF v_aliases IS NOT NULL THEN
        RAISE EXCEPTION 'cannot delete user %: it is a destination of %',
                quote_literal(v_address), v_aliases
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Change or delete those aliases first.';
    END IF;
    DELETE FROM mail.users u WHERE u.address = v_address;
END
$$;
COMMENT ON FUNCTION mail.delete_user(text) IS
    'Deletes a user (the mailbox on disk is left to the operator). Raises 22023 (malformed address), P0002 (unknown user), 2BP01 (an alias still delivers to it; the message names the aliases).';

-- ---------------------------------------------------------------- aliases

CREATE FUNCTION mail.add_alias(address text, destinations text[]) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address   text := mail.normalise_alias_address(add_alias.address);
    v_dests     text[];
    v_domain_id bigint;
    v_alias_id  bigint;
    v_missing   text;
    v_loop      text[];
BEGIN
    IF add_alias.destinations IS NULL OR cardinality(add_alias.destinations) = 0 THEN
        RAISE EXCEPTION 'alias % needs at least one destination', quote_literal(v_address)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(add_alias.destinations, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'destinations of alias % must not contain NULL', quote_literal(v_address)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Normalise (raising on the first malformed one) and collapse duplicates.
    v_dests := ARRAY(SELECT DISTINCT mail.normalise_address(x)
                       FROM unnest(add_alias.destinations) AS x ORDER BY 1);

    PERFORM mail.lock_directory();
    v_domain_id := mail.domain_id_for('alias', v_address);
    IF EXISTS (SELECT FROM mail.users u WHERE u.address = v_address) THEN
        RAISE EXCEPTION 'address % is already a user', quote_literal(v_address)
            USING ERRCODE = 'unique_violation';
    END IF;
    IF EXISTS (SELECT FROM mail.aliases a WHERE a.address = v_address) THEN
        RAISE EXCEPTION 'alias % already exists', quote_literal(v_address)
            USING ERRCODE = 'unique_violation',
                  HINT = 'Delete it first to change its destinations.';
    END IF;
    IF v_address = ANY (v_dests) THEN
        RAISE EXCEPTION 'alias % would loop: % -> %', quote_literal(v_address), v_address, v_address
            USING ERRCODE = 'invalid_recursion';
    END IF;

    -- A destination in a local domain must exist, or Postfix would bounce it.
    SELECT x INTO v_missing
      FROM unnest(v_dests) AS x
      JOIN mail.domains d ON d.domain = split_part(x, '@', 2)
     WHERE NOT EXISTS (SELECT FROM mail.users u WHERE u.address = x)
       AND NOT EXISTS (SELECT FROM mail.aliases a WHERE a.address = x)
     ORDER BY x LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'destination % of alias % is neither a user nor an alias of local domain %',
                quote_literal(v_missing), quote_literal(v_address),
                quote_literal(split_part(v_missing, '@', 2))
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- Follow the destinations through existing aliases; reaching the new
    -- alias again means a loop. Existing aliases never loop, but the path
    -- guard keeps the walk finite regardless.
    WITH RECURSIVE walk (addr, path) AS (
        SELECT x, ARRAY[v_address, x] FROM unnest(v_dests) AS x
        UNION ALL
        SELECT ad.destination, w.path || ad.destination
          FROM walk w
          JOIN mail.aliases a ON a.address = w.addr
          JOIN mail.alias_destinations ad ON ad.alias_id = a.alias_id
         WHERE w.addr <> v_address
           AND (ad.destination = v_address OR ad.destination <> ALL (w.path))
    )
    SELECT w.path INTO v_loop FROM walk w WHERE w.addr = v_address LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'alias % would loop: %', quote_literal(v_address),
                array_to_string(v_loop, ' -> ')
            USING ERRCODE = 'invalid_recursion';
    END IF;

    INSERT INTO mail.aliases (domain_id, address) VALUES (v_domain_id, v_address)
    RETURNING alias_id INTO v_alias_id;
    INSERT INTO mail.alias_destinations (alias_id, destination)
    SELECT v_alias_id, x FROM unnest(v_dests) AS x;
    RETURN v_alias_id;
END
$$;
COMMENT ON FUNCTION mail.add_alias(text, text[]) IS
    'Adds an alias (local@domain, or @domain as the catch-all) delivering to the given destinations, and returns its alias_id. Destinations are normalised and de-duplicated; one in a local domain must be an existing user or alias, others are forwarded. Raises 22023 (malformed address or destination, empty destinations), 23503 (unknown domain, unknown local destination), 23505 (address is already a user or an alias), 42P19 (the alias would loop).';

CREATE FUNCTION mail.delete_alias(address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_alias_address(delete_alias.address);
    v_aliases text;
BEGIN
    PERFORM mail.lock_directory();
    IF NOT EXISTS (SELECT FROM mail.aliases a WHERE a.address = v_address) THEN
        RAISE EXCEPTION 'alias % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
    v_aliases := mail.aliases_pointing_at(v_address);
    IF v_aliases IS NOT NULL THEN
        RAISE EXCEPTION 'cannot delete alias %: it is a destination of %',
                quote_literal(v_address), v_aliases
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Change or delete those aliases first.';
    END IF;
    DELETE FROM mail.aliases a WHERE a.address = v_address;
END
$$;
COMMENT ON FUNCTION mail.delete_alias(text) IS
    'Deletes an alias and its destinations. Raises 22023 (malformed address), P0002 (unknown alias), 2BP01 (another alias still delivers to it; the message names it).';

-- ---------------------------------------------------------------- listings

CREATE FUNCTION mail.list_users(domain text DEFAULT NULL)
    RETURNS TABLE (address text, quota_bytes bigint, enabled boolean,
                   created_at timestamptz, updated_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain text := CASE WHEN list_users.domain IS NOT NULL
                          THEN mail.normalise_domain(list_users.domain) END;
BEGIN
    RETURN QUERY
        SELECT u.address, u.quota_bytes, u.enabled, u.created_at, u.updated_at
          FROM mail.users u
          JOIN mail.domains d ON d.domain_id = u.domain_id
         WHERE v_domain IS NULL OR d.domain = v_domain
         ORDER BY d.domain, u.address;
END
$$;
COMMENT ON FUNCTION mail.list_users(text) IS
    'Lists users (without password hashes), of one domain or of all when domain is NULL.';

CREATE FUNCTION mail.list_aliases(domain text DEFAULT NULL)
    RETURNS TABLE (address text, destinations text[], created_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain text := CASE WHEN list_aliases.domain IS NOT NULL
                          THEN mail.normalise_domain(list_aliases.domain) END;
BEGIN
    RETURN QUERY
        SELECT a.address,
               ARRAY(SELECT ad.destination FROM mail.alias_destinations ad
                      WHERE ad.alias_id = a.alias_id ORDER BY ad.destination),
               a.created_at
          FROM mail.aliases a
          JOIN mail.domains d ON d.domain_id = a.domain_id
         WHERE v_domain IS NULL OR d.domain = v_domain
         ORDER BY d.domain, a.address;
END
$$;
COMMENT ON FUNCTION mail.list_aliases(text) IS
    'Lists aliases with their destinations, of one domain or of all when domain is NULL.';

-- ---------------------------------------------------------------- privileges

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mail FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    mail.normalise_domain(text),
    mail.normalise_address(text),
    mail.normalise_alias_address(text),
    mail.add_domain(text),
    mail.delete_domain(text),
    mail.add_user(text, text, bigint),
    mail.set_password(text, text),
    mail.set_user_enabled(text, boolean),
    mail.set_quota(text, bigint),
    mail.delete_user(text),
    mail.add_alias(text, text[]),
    mail.delete_alias(text),
    mail.list_users(text),
    mail.list_aliases(text)
    TO mailmeta_admin;
