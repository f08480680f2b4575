-- 0006_mailbox_mirror.sql — the mailbox mirror, per-user mailbox queries and
-- contacts.
--
-- Dovecot owns mailbox content and state; this migration adds its mirror in
-- PostgreSQL (doc/mailbox-mirror.md is the contract with the Dovecot-side
-- syncer), the per-user queries a mail client needs, answered from the
-- mirror alone, and a per-user address book.
--
--   mail.folders           one row per folder of a user, keyed by a
--                          surrogate folder_id, unique by (user_id, guid)
--                          and (user_id, name); the state of its last sync
--                          (uidvalidity, uidnext, highest_modseq,
--                          message_count) and counters of the messages the
--                          mirror holds (total, unread)
--   mail.mailbox_messages  one row per message in a folder: UID, system
--                          flags as booleans, keywords as text[], internal
--                          date, size, modseq and the mailmeta_id that links
--                          it to its metadata row in mail.messages (no
--                          foreign key: the metadata may arrive a moment
--                          later). Expunged messages are deleted.
--   mail.contacts          the address book: (user_id, address) with display
--                          name, use count, last use, blocked flag, source
--   mail.contact_messages  the sent messages already counted in a user's
--                          contacts, so one message is counted once
--
-- Every per-user table leads with user_id and every query filters by it
-- first. Deleting a user (mail.delete_user) cascades to its folders, their
-- messages, its contacts and contact_messages; metadata rows stay.
--
-- Writing the mirror (role mailmeta_mirror, which may execute these five
-- functions and nothing else; see doc/mailbox-mirror.md):
--   mirror_folders, mirror_messages, mirror_folder_done, mirror_forget and
--   record_mailbox_message. Each takes the address of a local user; a sync
--   of one user serialises on a transaction-level advisory lock of that user
--   (mirror_* functions), so the per-folder counters can be kept by deltas:
--   mirror_messages reads the old rows of its batch, upserts and deletes in
--   one statement, and adds the differences to total and unread. Upserts
--   are absolute state; an unchanged row is not rewritten. "reset" (or a
--   UIDVALIDITY other than the folder's) empties the folder first and
--   forgets its synced state, so a sync that never reaches
--   mirror_folder_done leads to a full send the next time. mirror_folder_done
--   compares the mirror's count with Dovecot's: on a difference it records
--   no state (again: a full send next time) and returns false.
--
-- record_mailbox_message(address, doc) stores a metadata document built from
-- a message in the user's mailbox (doc/metadata-record.md, direction
-- "mailbox"): the same validation and storage as the milter's
-- record_messages (0005), which is why this migration replaces
-- mail.metadata_problem and mail.record_messages (same signatures) and
-- widens the CHECK constraint on mail.messages.direction, rather than
-- editing 0005, which is applied in the field. The new constraint is added
-- NOT VALID: every existing row satisfied the narrower one it replaces, and
-- validating would only hold the table's lock through a full scan. The
-- document's envelope keys are ignored (stored NULL), its recipients must
-- be empty; it is idempotent by mailmeta_id (metadata the milter recorded
-- first is kept as it is). Then it adds the user's mail.user_messages row
-- (under the advisory lock of the message's thread, the lock a thread
-- merge takes, so a merge can't miss the row). Recording takes advisory
-- locks per message id until commit, like the milter's: a sync commits
-- after at most 100 recorded documents (doc/mailbox-mirror.md). It takes no
-- lock of the user's mirror.
--
-- Queries (SECURITY DEFINER; executable by mailmeta_admin and by the new
-- login role mailmeta_reader, meant for a webmail or API backend that
-- authenticates users itself; mailmeta_reader executes the query functions
-- and nothing else, and reads no table):
--   list_folders(address)                      folders with total and unread
--   list_messages(address, folder, cursor, page_size)   newest first
--   list_unread(address, folder, cursor, page_size)     newest first, unseen
--   get_thread(address, message)               the user's copies, oldest first
--   get_message(address, message)              metadata, copies, attachments
--   list_contacts(address), suggest_contacts(address, prefix, max_rows)
-- Pages are keyset-paginated on (internal_date, uid), newest first, served
-- by (user_id, folder_id, internal_date DESC, uid DESC) and by its partial
-- twin WHERE NOT seen; page_size is 1..1000 (default 50). The cursor is
-- opaque: 32 hex digits encoding the internal date (microseconds since the
-- epoch) and the UID of the last row of a page; the last row of a page
-- carries it in next_cursor when another page follows (NULL otherwise).
-- The inner query of each mailbox query is kept in one place,
-- mail.mailbox_query(name), and run with EXECUTE ... USING, so every call
-- is planned with its own values and the tests EXPLAIN exactly the text
-- that runs. The metadata of a row is joined by mailmeta_id (LEFT JOIN:
-- it may be missing for a moment).
--
-- Contacts are collected automatically
--   (a) by record_messages, for every new accepted message whose direction
--       is outbound or local and whose sasl_user (or, without SASL, i.e. local
--       submission, env_from) is a local user: each envelope recipient,
--       with the display name of the To/Cc entry of that address;
--   (b) for a message in a folder whose special_use includes \Sent, when
--       its metadata is recorded by record_mailbox_message or when
--       mirror_messages upserts it and its metadata exists: its To and Cc
--       addresses.
-- A counted message adds 1 to use_count and moves last_used to its
-- received_at (for mailbox documents the syncer sets the internal date).
-- Each message counts once per user, whichever path sees it first: its key
-- (the Message-ID, else the mailmeta_id) is recorded in
-- mail.contact_messages. The user's own address is never collected.
-- Addresses are stored trimmed and lowercased; entries that do not look
-- like an address (one "@", no blanks, controls or <>,;:"()[]\, at most
-- 254 characters) are skipped. A blocked entry is kept and frozen:
-- collection changes neither its count nor its name, and
-- suggest_contacts never returns it; list_contacts returns every entry with
-- its blocked flag. source is "auto" for an entry collected from mail and
-- "manual" for one added or edited by the user; collection never changes a
-- manual entry's display name. A removed entry comes back when the user
-- mails that address again; blocking is how to keep it out.
--
-- Internal helpers evaluated once per row or per batch element
-- (contact_address_problem, json_integer, is_uuid, is_sent_folder,
-- header_recipients, mirror_batch_rows, encode_cursor) are plain SQL
-- functions that run as their caller without a SET clause, so that the
-- planner inlines them into the SECURITY DEFINER functions calling them,
-- whose search_path is pinned; only mailmeta_owner may execute them. As
-- SECURITY DEFINER functions with a SET clause they cost a function call
-- each: validating and parsing a batch of 1000 messages took about 110 ms
-- instead of 15.
--
-- Errors follow the admin API (0003): 22023 malformed argument, P0002
-- unknown user, folder or contact, 23505 contact already exists; every
-- function checks all its arguments before it changes anything.

-- ---------------------------------------------------------------- roles

-- Roles are cluster-wide and created only if missing, as in 0001, by the
-- superuser the migration runner connects as.
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['mailmeta_mirror', 'mailmeta_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END
$roles$;

SET LOCAL ROLE mailmeta_owner;

GRANT USAGE ON SCHEMA mail TO mailmeta_mirror, mailmeta_reader;

-- ---------------------------------------------------------------- metadata: direction "mailbox"

ALTER TABLE mail.messages DROP CONSTRAINT messages_direction_check;
ALTER TABLE mail.messages ADD CONSTRAINT messages_direction_check
    CHECK (direction IN ('inbound', 'outbound', 'local', 'mailbox')) NOT VALID;
COMMENT ON COLUMN mail.messages.direction IS 'inbound (unauthenticated SMTP), outbound (authenticated or local submission with an outside recipient), local (authenticated or local submission, every recipient local: by Postfix transport, or by domain when the writer could not tell), mailbox (recorded from a message found in a mailbox, by mail.record_mailbox_message: no envelope).';

-- ---------------------------------------------------------------- tables

CREATE TABLE mail.folders (
    folder_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        bigint      NOT NULL REFERENCES mail.users (user_id) ON DELETE CASCADE,
    guid           text        NOT NULL CHECK (guid ~ '^[0-9a-f]{32}$'),
    name           text        NOT NULL CHECK (name <> '' AND length(name) <= 1000),
    special_use    text        CHECK (length(special_use) <= 200),
    subscribed     boolean     NOT NULL DEFAULT false,
    uidvalidity    bigint      CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext        bigint      CHECK (uidnext BETWEEN 1 AND 4294967296),
    highest_modseq bigint      CHECK (highest_modseq >= 0),
    message_count  integer     CHECK (message_count >= 0),
    total          integer     NOT NULL DEFAULT 0,
    unread         integer     NOT NULL DEFAULT 0,
    synced_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (total >= 0 AND unread BETWEEN 0 AND total),
    UNIQUE (user_id, guid),
    -- The target of mailbox_messages' foreign key, which thereby also keeps
    -- a message's user_id equal to its folder's.
    UNIQUE (user_id, folder_id),
    -- Checked at the end of each statement, so one statement can swap the
    -- names of two folders.
    CONSTRAINT folders_user_id_name_key UNIQUE (user_id, name) DEFERRABLE INITIALLY IMMEDIATE
);
COMMENT ON TABLE mail.folders IS
    'The mirror of each user''s folders (Dovecot mailboxes), written only by mail.mirror_folders, mirror_messages, mirror_folder_done and mirror_forget. Keyed by folder_id; unique by (user_id, guid) and (user_id, name).';
COMMENT ON COLUMN mail.folders.guid IS 'Dovecot''s mailbox GUID, 32 lowercase hex digits: survives a rename; a folder deleted and created again gets a new one.';
COMMENT ON COLUMN mail.folders.name IS 'Full name in Dovecot''s UTF-8 form, hierarchy separator "/".';
COMMENT ON COLUMN mail.folders.special_use IS 'RFC 6154 special-use flags, e.g. \Sent (several separated by blanks); NULL for none.';
COMMENT ON COLUMN mail.folders.uidvalidity IS 'UIDVALIDITY of the messages the mirror holds (set by mirror_messages and mirror_folder_done).';
COMMENT ON COLUMN mail.folders.uidnext IS 'UIDNEXT at the last successful mirror_folder_done; NULL when the folder must be sent in full.';
COMMENT ON COLUMN mail.folders.highest_modseq IS 'HIGHESTMODSEQ at the last successful mirror_folder_done; NULL when the folder must be sent in full.';
COMMENT ON COLUMN mail.folders.message_count IS 'Dovecot''s message count at the last successful mirror_folder_done; NULL when the folder must be sent in full.';
COMMENT ON COLUMN mail.folders.total IS 'Messages the mirror holds for the folder (kept by mirror_messages).';
COMMENT ON COLUMN mail.folders.unread IS 'Of those, the ones without \Seen.';
COMMENT ON COLUMN mail.folders.synced_at IS 'When mirror_folder_done last ran for the folder.';

CREATE TABLE mail.mailbox_messages (
    user_id       bigint      NOT NULL,
    folder_id     bigint      NOT NULL,
    uid           bigint      NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
    mailmeta_id   uuid        NOT NULL,
    internal_date timestamptz NOT NULL,
    size_bytes    bigint      CHECK (size_bytes >= 0),
    modseq        bigint      CHECK (modseq >= 0),
    seen          boolean     NOT NULL DEFAULT false,
    answered      boolean     NOT NULL DEFAULT false,
    flagged       boolean     NOT NULL DEFAULT false,
    deleted       boolean     NOT NULL DEFAULT false,
    draft         boolean     NOT NULL DEFAULT false,
    keywords      text[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (user_id, folder_id, uid),
    FOREIGN KEY (user_id, folder_id) REFERENCES mail.folders (user_id, folder_id) ON DELETE CASCADE
);
-- A folder's messages newest first (list_messages), the unseen ones
-- (list_unread: a partial index stays as small as the unread mail), and a
-- user's copies of one message (get_message, get_thread, contacts of \Sent).
CREATE INDEX mailbox_messages_date_idx
    ON mail.mailbox_messages (user_id, folder_id, internal_date DESC, uid DESC);
CREATE INDEX mailbox_messages_unread_idx
    ON mail.mailbox_messages (user_id, folder_id, internal_date DESC, uid DESC) WHERE NOT seen;
CREATE INDEX mailbox_messages_mailmeta_id_idx
    ON mail.mailbox_messages (user_id, mailmeta_id);
COMMENT ON TABLE mail.mailbox_messages IS
    'The mirror of every message in every folder: one row per (user_id, folder_id, uid) under the folder''s UIDVALIDITY; expunged messages are deleted. Written only by mail.mirror_messages (and cascading deletes). mailmeta_id links to mail.messages, whose row may arrive a moment later.';
COMMENT ON COLUMN mail.mailbox_messages.mailmeta_id IS 'The X-Mailmeta-ID header when it is a valid UUID, else a name-based UUID of the message''s bytes (doc/mailbox-mirror.md).';
COMMENT ON COLUMN mail.mailbox_messages.internal_date IS 'IMAP INTERNALDATE: when the message arrived in the mailbox.';
COMMENT ON COLUMN mail.mailbox_messages.size_bytes IS 'The message''s size as Dovecot reports it (RFC822.SIZE); NULL when unknown.';
COMMENT ON COLUMN mail.mailbox_messages.modseq IS 'The message''s MODSEQ (RFC 7162); NULL when unknown.';
COMMENT ON COLUMN mail.mailbox_messages.keywords IS 'IMAP keywords ($label1, $Forwarded, ...), sorted, without duplicates.';

CREATE FUNCTION mail.contact_address_problem(address text) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT CASE
        WHEN $1 IS NULL OR $1 = '' THEN 'the address is empty'
        WHEN length($1) > 254 THEN 'the address is longer than 254 characters'
        WHEN $1 !~ '^[^@[:space:][:cntrl:]<>,;:"()\[\]\\]+@[^@[:space:][:cntrl:]<>,;:"()\[\]\\]+$' THEN
            'expected local-part@domain: one "@", no blanks, control characters or <>,;:"()[]\'
    END
$$;
COMMENT ON FUNCTION mail.contact_address_problem(text) IS
    'Internal: why a (trimmed, lowercased) contact address is not acceptable, or NULL when it is: one "@" with something on both sides, no blanks, control characters or <>,;:"()[]\, at most 254 characters.';

CREATE TABLE mail.contacts (
    user_id      bigint      NOT NULL REFERENCES mail.users (user_id) ON DELETE CASCADE,
    address      text        NOT NULL
                             CHECK (address = lower(address)
                                    AND mail.contact_address_problem(address) IS NULL),
    display_name text        CHECK (display_name <> '' AND length(display_name) <= 256),
    use_count    integer     NOT NULL DEFAULT 0 CHECK (use_count >= 0),
    last_used    timestamptz,
    blocked      boolean     NOT NULL DEFAULT false,
    source       text        NOT NULL CHECK (source IN ('auto', 'manual')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, address)
);
COMMENT ON TABLE mail.contacts IS
    'Each user''s address book: collected from the mail the user sends (source auto) or added and edited with the contact functions (source manual). A blocked entry is kept, never suggested, and not changed by collection.';
COMMENT ON COLUMN mail.contacts.address IS 'The contact''s address, trimmed and lowercased.';
COMMENT ON COLUMN mail.contacts.use_count IS 'How many sent messages went to this address (each message once).';
COMMENT ON COLUMN mail.contacts.last_used IS 'received_at of the latest of those messages.';
COMMENT ON COLUMN mail.contacts.source IS 'auto: collected from sent mail; manual: added or edited by the user (collection then never changes its display name).';

CREATE TABLE mail.contact_messages (
    user_id     bigint      NOT NULL REFERENCES mail.users (user_id) ON DELETE CASCADE,
    message_key text        NOT NULL,
    counted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_key)
);
COMMENT ON TABLE mail.contact_messages IS
    'The sent messages already counted in a user''s contacts, by Message-ID (else mailmeta_id), so a message seen by the milter and again in the user''s Sent folder counts once.';

REVOKE ALL ON mail.folders, mail.mailbox_messages, mail.contacts, mail.contact_messages FROM PUBLIC;
GRANT SELECT ON mail.folders, mail.mailbox_messages, mail.contacts, mail.contact_messages
    TO mailmeta_admin;

-- ---------------------------------------------------------------- helpers

-- The user_id of a local user; raises 22023 for a malformed address and
-- P0002 for one that is not a user.
CREATE FUNCTION mail.user_id_of(address text) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(user_id_of.address);
    v_user_id bigint;
BEGIN
    SELECT u.user_id INTO v_user_id FROM mail.users u WHERE u.address = v_address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN v_user_id;
END
$$;
COMMENT ON FUNCTION mail.user_id_of(text) IS
    'Internal: user_id of a user''s address (trimmed, lowercased); raises 22023 (malformed) or P0002 (not a user).';

CREATE FUNCTION mail.lock_mirror(user_id bigint) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    -- 1835627122 = 'mirr' in ASCII.
    SELECT pg_advisory_xact_lock(1835627122, hashint8($1))
$$;
COMMENT ON FUNCTION mail.lock_mirror(bigint) IS
    'Internal: serialises writers of one user''s mirror until the end of the transaction.';

-- A JSON integer in [min, max], or NULL for anything else (a string, a
-- fraction, a number out of range).
CREATE FUNCTION mail.json_integer(value jsonb, min bigint, max bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT CASE WHEN jsonb_typeof($1) = 'number' THEN
               CASE WHEN $1::numeric BETWEEN $2 AND $3 AND $1::numeric = trunc($1::numeric)
                    THEN $1::numeric::bigint END
           END
$$;
COMMENT ON FUNCTION mail.json_integer(jsonb, bigint, bigint) IS
    'Internal: a JSON integer between min and max (inclusive) as bigint; NULL for anything else.';

-- String operations rather than a regular expression: this runs for every
-- message of a mirror batch.
CREATE FUNCTION mail.is_uuid(value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT coalesce(length($1) = 36
                    AND translate(lower($1), '0123456789abcdef', '') = '----'
                    AND substr($1, 9, 1) = '-' AND substr($1, 14, 1) = '-'
                    AND substr($1, 19, 1) = '-' AND substr($1, 24, 1) = '-', false)
$$;
COMMENT ON FUNCTION mail.is_uuid(text) IS
    'Internal: true when the value is a UUID in canonical (8-4-4-4-12 hex) form.';

CREATE FUNCTION mail.is_sent_folder(special_use text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT coalesce(E'\\sent' = ANY (regexp_split_to_array(lower(btrim($1)), '\s+')), false)
$$;
COMMENT ON FUNCTION mail.is_sent_folder(text) IS
    'Internal: true when a folder''s special_use includes \Sent (any case).';

-- The To and Cc entries of mail.messages.addresses, normalised as contacts
-- are stored. Hostile values (not arrays, not objects) yield nothing.
CREATE FUNCTION mail.header_recipients(addresses jsonb)
    RETURNS TABLE (address text, name text)
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT lower(btrim(e->>'address', E' \t\r\n<>')),
           nullif(left(btrim(e->>'name', E' \t\r\n"'), 256), '')
      FROM jsonb_array_elements(
               CASE WHEN jsonb_typeof($1->'to') = 'array' THEN $1->'to' ELSE '[]' END
               || CASE WHEN jsonb_typeof($1->'cc') = 'array' THEN $1->'cc' ELSE '[]' END) AS e
     WHERE jsonb_typeof(e) = 'object' AND jsonb_typeof(e->'address') = 'string'
$$;
COMMENT ON FUNCTION mail.header_recipients(jsonb) IS
    'Internal: the To and Cc entries of a mail.messages.addresses value as (address trimmed and lowercased, display name or NULL).';

-- ---------------------------------------------------------------- contact collection

-- Counts sent messages in their users' contacts (PL/pgSQL, so that its
-- plan is cached: it runs for every message a user sends). One row per (user,
-- message, recipient): the parallel arrays give the user, the message's key
-- (Message-ID, else mailmeta_id), the recipient's address (trimmed,
-- lowercased), its display name (or NULL) and when the message was sent.
-- A message already in contact_messages for that user counts no more.
CREATE FUNCTION mail.count_contacts(user_ids bigint[], message_keys text[], addresses text[],
                                    names text[], used_at timestamptz[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    WITH r AS MATERIALIZED (
        SELECT r.user_id, r.message_key, r.address, r.name, r.used_at
          FROM unnest($1, $2, $3, $4, $5) AS r (user_id, message_key, address, name, used_at)
          JOIN mail.users u ON u.user_id = r.user_id
         WHERE r.address <> u.address
           AND mail.contact_address_problem(r.address) IS NULL
    ), fresh AS (
        INSERT INTO mail.contact_messages (user_id, message_key)
        SELECT DISTINCT r.user_id, r.message_key FROM r ORDER BY 1, 2
        ON CONFLICT (user_id, message_key) DO NOTHING
        RETURNING user_id, message_key
    ), used AS (
        SELECT r.user_id, r.address, count(DISTINCT r.message_key)::integer AS uses,
               max(r.used_at) AS last_used,
               (array_agg(r.name ORDER BY r.used_at DESC) FILTER (WHERE r.name IS NOT NULL))[1] AS name
          FROM r JOIN fresh f ON f.user_id = r.user_id AND f.message_key = r.message_key
         GROUP BY r.user_id, r.address
    )
    -- Sorted, so concurrent writers lock a user's contacts in one order.
    INSERT INTO mail.contacts AS c (user_id, address, display_name, use_count, last_used, source)
    SELECT used.user_id, used.address, used.name, used.uses, used.last_used, 'auto'
      FROM used
     ORDER BY used.user_id, used.address
    ON CONFLICT (user_id, address) DO UPDATE
       SET use_count = c.use_count + excluded.use_count,
           last_used = greatest(c.last_used, excluded.last_used),
           display_name = CASE WHEN c.source = 'auto'
                               THEN coalesce(excluded.display_name, c.display_name)
                               ELSE c.display_name END
     WHERE NOT c.blocked;
END
$$;
COMMENT ON FUNCTION mail.count_contacts(bigint[], text[], text[], text[], timestamptz[]) IS
    'Internal: counts sent messages, given as parallel arrays (user, message key, recipient address, display name, time), in the users'' contacts: each message once per user (mail.contact_messages), never the user''s own address nor a malformed one; blocked entries are left alone, manual entries keep their display name.';

-- Contacts from the To and Cc of messages found in a user's \Sent folder.
CREATE FUNCTION mail.collect_sent_contacts(user_id bigint, mailmeta_ids uuid[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    PERFORM mail.count_contacts(array_agg($1), array_agg(k.message_key), array_agg(h.address),
                                array_agg(h.name), array_agg(m.received_at))
       FROM mail.messages m
            CROSS JOIN LATERAL (SELECT coalesce(m.message_id, m.mailmeta_id::text) AS message_key) k
            CROSS JOIN LATERAL mail.header_recipients(m.addresses) h
      WHERE m.mailmeta_id = ANY ($2)
     HAVING count(*) > 0;
END
$$;
COMMENT ON FUNCTION mail.collect_sent_contacts(bigint, uuid[]) IS
    'Internal: counts the To and Cc addresses of these messages (those with metadata) in the user''s contacts, each message once.';

-- ---------------------------------------------------------------- recording: metadata_problem and record_messages

-- Replaced (same signatures) to accept direction "mailbox", and so that
-- record_messages collects contacts from the messages users send. The rest
-- is 0005's text unchanged.

CREATE OR REPLACE FUNCTION mail.metadata_problem(doc jsonb) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_key  text;
    v_type text;
BEGIN
    IF doc IS NULL OR jsonb_typeof(doc) = 'null' THEN
        RETURN 'the document is NULL';
    END IF;
    IF jsonb_typeof(doc) <> 'object' THEN
        RETURN format('the document must be a JSON object, not %s', jsonb_typeof(doc));
    END IF;
    IF NOT doc ? 'version' THEN
        RETURN 'key "version" is missing';
    END IF;
    IF doc->'version' <> '1'::jsonb THEN
        RETURN format('unsupported version %s (expected 1)', left((doc->'version')::text, 40));
    END IF;
    -- Required keys, then the type each key must (or may) have.
    FOREACH v_key IN ARRAY ARRAY['mailmeta_id', 'received_at', 'direction', 'recipients',
                                 'action', 'headers', 'parts', 'attachments'] LOOP
        IF NOT doc ? v_key THEN
            RETURN format('key "%s" is missing', v_key);
        END IF;
    END LOOP;
    FOR v_key, v_type IN SELECT * FROM (VALUES
            ('mailmeta_id', 'string'), ('received_at', 'string'), ('direction', 'string'),
            ('action', 'string'), ('recipients', 'array'), ('headers', 'object'),
            ('parts', 'array'), ('attachments', 'array'),
            ('queue_id', 'string|null'), ('env_from', 'string|null'),
            ('sasl_user', 'string|null'), ('reason', 'string|null'),
            ('client', 'object|null'), ('tls', 'object|null'),
            ('size_bytes', 'number|null'), ('malformed', 'boolean|null'),
            ('malformed_reasons', 'array|null')) AS t (key, type) LOOP
        IF doc ? v_key AND jsonb_typeof(doc->v_key) <> ALL (string_to_array(v_type, '|')) THEN
            RETURN format('"%s" must be %s, not %s', v_key,
                          replace(v_type, '|', ' or '), jsonb_typeof(doc->v_key));
        END IF;
    END LOOP;
    IF doc->>'mailmeta_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN format('mailmeta_id %s is not a UUID', quote_literal(left(doc->>'mailmeta_id', 80)));
    END IF;
    IF mail.parse_timestamptz(doc->>'received_at') IS NULL THEN
        RETURN format('received_at %s is not an RFC 3339 date-time with offset',
                      quote_literal(left(doc->>'received_at', 80)));
    END IF;
    IF doc->>'direction' NOT IN ('inbound', 'outbound', 'local', 'mailbox') THEN
        RETURN format('direction %s is not one of inbound, outbound, local, mailbox',
                      quote_literal(left(doc->>'direction', 80)));
    END IF;
    IF doc->>'action' NOT IN ('accept', 'tempfail', 'reject', 'discard', 'hold') THEN
        RETURN format('action %s is not one of accept, tempfail, reject, discard, hold',
                      quote_literal(left(doc->>'action', 80)));
    END IF;
    IF EXISTS (SELECT FROM jsonb_array_elements(doc->'recipients') r
                WHERE jsonb_typeof(r) <> 'object'
                   OR jsonb_typeof(r->'address') IS DISTINCT FROM 'string'
                   OR btrim(r->>'address') = '') THEN
        RETURN 'every recipient must be an object with a non-empty "address" string';
    END IF;
    IF EXISTS (SELECT FROM jsonb_array_elements(doc->'attachments') a
                WHERE jsonb_typeof(a) <> 'object') THEN
        RETURN 'every attachment must be an object';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION mail.metadata_problem(jsonb) IS
    'Internal: why a metadata document breaks the contract (doc/metadata-record.md: version 1, required keys and their types, mailmeta_id a UUID, received_at RFC 3339, known direction (inbound, outbound, local, mailbox) and action, recipients with addresses), or NULL when it can be recorded.';

CREATE OR REPLACE FUNCTION mail.record_messages(docs jsonb) RETURNS SETOF uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_doc          jsonb;
    v_no           bigint;
    v_problem      text;
    v_ords         bigint[];   -- positions in docs of the documents to store
    v_mids         uuid[];     -- their mailmeta_ids
    v_link_doc     integer[];  -- (index into v_mids, message id) it mentions
    v_link_id      text[];
    v_known_id     text[];     -- the ids among them already in thread_links
    v_known_thread uuid[];     -- ... and their threads
    v_locked       uuid[] := '{}';
    v_new          uuid[];
    v_threads      uuid[];     -- the thread of each document to store
    v_stored       uuid[];     -- the documents actually inserted
    v_losers       uuid[];     -- known threads merged into ...
    v_winners      uuid[];     -- ... these
BEGIN
    IF docs IS NULL OR jsonb_typeof(docs) <> 'array' THEN
        RAISE EXCEPTION 'record_messages wants a JSON array of metadata documents, not %',
                coalesce(jsonb_typeof(docs), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Refuse the whole batch before storing anything. One pass evaluates,
    -- per document, the conjunction of every check of metadata_problem;
    -- metadata_problem then tells why the first document failing it is bad.
    FOR v_doc, v_no IN SELECT x.e, x.ord FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord)
         WHERE NOT coalesce(
            jsonb_typeof(x.e) = 'object'
            AND x.e->'version' = '1'::jsonb
            AND jsonb_typeof(x.e->'mailmeta_id') = 'string'
            AND jsonb_typeof(x.e->'received_at') = 'string'
            AND jsonb_typeof(x.e->'direction') = 'string'
            AND jsonb_typeof(x.e->'action') = 'string'
            AND jsonb_typeof(x.e->'recipients') = 'array'
            AND jsonb_typeof(x.e->'headers') = 'object'
            AND jsonb_typeof(x.e->'parts') = 'array'
            AND jsonb_typeof(x.e->'attachments') = 'array'
            AND coalesce(jsonb_typeof(x.e->'queue_id'), 'null') IN ('string', 'null')
            AND coalesce(jsonb_typeof(x.e->'env_from'), 'null') IN ('string', 'null')
            AND coalesce(jsonb_typeof(x.e->'sasl_user'), 'null') IN ('string', 'null')
            AND coalesce(jsonb_typeof(x.e->'reason'), 'null') IN ('string', 'null')
            AND coalesce(jsonb_typeof(x.e->'client'), 'null') IN ('object', 'null')
            AND coalesce(jsonb_typeof(x.e->'tls'), 'null') IN ('object', 'null')
            AND coalesce(jsonb_typeof(x.e->'size_bytes'), 'null') IN ('number', 'null')
            AND coalesce(jsonb_typeof(x.e->'malformed'), 'null') IN ('boolean', 'null')
            AND coalesce(jsonb_typeof(x.e->'malformed_reasons'), 'null') IN ('array', 'null')
            AND x.e->>'mailmeta_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            AND x.e->>'direction' IN ('inbound', 'outbound', 'local', 'mailbox')
            AND x.e->>'action' IN ('accept', 'tempfail', 'reject', 'discard', 'hold')
            AND NOT jsonb_path_exists(x.e, 'strict $.recipients[*] ? (@.type() != "object")', '{}', true)
            AND NOT jsonb_path_exists(x.e, 'lax $.recipients[*] ? (!(@.address.type() == "string")
                                                                   || @.address like_regex "^ *$")', '{}', true)
            AND NOT jsonb_path_exists(x.e, 'strict $.attachments[*] ? (@.type() != "object")', '{}', true)
            AND mail.parse_timestamptz(x.e->>'received_at') IS NOT NULL,
            false)
         ORDER BY x.ord LOOP
        v_problem := mail.metadata_problem(v_doc);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION 'invalid metadata document % of %: %', v_no,
                    jsonb_array_length(docs) || coalesce(' (' || left(v_doc->>'mailmeta_id', 80) || ')', ''),
                    v_problem
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'mail.record_messages must run at isolation level READ COMMITTED, not %',
                upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state';
    END IF;

    -- 1. The documents to store (a replayed one is already recorded) and
    --    the message ids they mention.
    SELECT array_agg(d.ord ORDER BY d.ord), array_agg(d.mid ORDER BY d.ord)
      INTO v_ords, v_mids
      FROM (SELECT DISTINCT ON (mid) x.ord, (x.e->>'mailmeta_id')::uuid AS mid
              FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord)
             ORDER BY mid, x.ord) d
     WHERE NOT EXISTS (SELECT FROM mail.messages m WHERE m.mailmeta_id = d.mid);
    IF v_mids IS NULL THEN
        RETURN QUERY SELECT (x.e->>'mailmeta_id')::uuid
                       FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) ORDER BY x.ord;
        RETURN;
    END IF;
    SELECT array_agg(d.i ORDER BY d.i, l.id), array_agg(l.id ORDER BY d.i, l.id)
      INTO v_link_doc, v_link_id
      FROM unnest(v_ords) WITH ORDINALITY AS d (ord, i),
           LATERAL (SELECT docs->(d.ord::integer - 1)->'headers' AS h) h,
           LATERAL (SELECT DISTINCT x AS id
                      FROM unnest(nullif(left(btrim(h.h->>'message_id', E' \t\r\n<>'), 512), '')
                                  || CASE WHEN jsonb_typeof(h.h->'in_reply_to') IS DISTINCT FROM 'array' OR jsonb_array_length(h.h->'in_reply_to') = 0 THEN '{}'::text[]
                                          WHEN jsonb_array_length(h.h->'in_reply_to') = 1 AND nullif(left(btrim(h.h->'in_reply_to'->>0, E' \t\r\n<>'), 512), '') IS NOT NULL
                                          THEN ARRAY[nullif(left(btrim(h.h->'in_reply_to'->>0, E' \t\r\n<>'), 512), '')]
                                          ELSE mail.message_id_list(h.h->'in_reply_to', 10) END
                                  || CASE WHEN jsonb_typeof(h.h->'references') IS DISTINCT FROM 'array' OR jsonb_array_length(h.h->'references') = 0 THEN '{}'::text[]
                                          WHEN jsonb_array_length(h.h->'references') = 1 AND nullif(left(btrim(h.h->'references'->>0, E' \t\r\n<>'), 512), '') IS NOT NULL
                                          THEN ARRAY[nullif(left(btrim(h.h->'references'->>0, E' \t\r\n<>'), 512), '')]
                                          ELSE mail.message_id_list(h.h->'references', 20) END) AS x
                     WHERE x IS NOT NULL) l;

    -- 2. Nobody else registers or reads these ids until we commit. Then lock
    --    the threads they belong to; a merge that committed while we waited
    --    may have moved them, so re-read until every thread is locked. A
    --    thread's members change only under its lock.
    IF v_link_id IS NOT NULL THEN
        PERFORM mail.lock_message_ids(v_link_id);
        LOOP
            SELECT array_agg(t.message_id), array_agg(t.thread_id)
              INTO v_known_id, v_known_thread
              FROM mail.thread_links t
             WHERE t.message_id = ANY (v_link_id);
            SELECT array_agg(DISTINCT x ORDER BY x) INTO v_new
              FROM unnest(v_known_thread) AS x
             WHERE x <> ALL (v_locked);
            EXIT WHEN v_new IS NULL;
            -- 1953002084 = 'thrd' in ASCII.
            PERFORM pg_advisory_xact_lock(1953002084, k)
               FROM (SELECT DISTINCT hashtext(x::text) AS k FROM unnest(v_new) AS x ORDER BY 1) s;
            v_locked := v_locked || v_new;
        END LOOP;
    END IF;

    -- 3. The thread of each document, and the known threads to merge.
    IF v_known_id IS NULL AND (SELECT count(DISTINCT x) FROM unnest(v_link_id) AS x)
                              = coalesce(cardinality(v_link_id), 0) THEN
        -- Common case: every document starts its own conversation.
        v_threads := v_mids;
    ELSE
        WITH RECURSIVE
        l AS (SELECT l.d, l.id, k.t, coalesce(k.t::text, l.id) AS key
                FROM unnest(v_link_doc, v_link_id) AS l (d, id)
                LEFT JOIN unnest(v_known_id, v_known_thread) AS k (id, t) ON k.id = l.id),
        reach (d, c) AS (                            -- documents of one conversation
            SELECT i, i FROM generate_subscripts(v_mids, 1) AS i
            UNION
            SELECT l2.d, r.c
              FROM reach r
              JOIN l l1 ON l1.d = r.d
              JOIN l l2 ON l2.key = l1.key AND l2.d <> l1.d),
        conv AS (SELECT r.d, min(r.c) AS c FROM reach r GROUP BY r.d),
        cand AS (                                    -- the threads each conversation has
            SELECT v.c, v_mids[v.d] AS t             -- started by a document ...
              FROM conv v
             WHERE NOT EXISTS (SELECT FROM l
                                WHERE l.d = v.d
                                  AND (l.t IS NOT NULL
                                       OR EXISTS (SELECT FROM l l2 WHERE l2.key = l.key AND l2.d < l.d)))
            UNION
            SELECT v.c, l.t FROM conv v JOIN l ON l.d = v.d WHERE l.t IS NOT NULL),   -- ... or known
        win AS (SELECT cand.c, (array_agg(cand.t ORDER BY cand.t))[1] AS t FROM cand GROUP BY cand.c),
        doc AS (SELECT v.d, w.t FROM conv v JOIN win w ON w.c = v.c),
        merge AS (SELECT DISTINCT l.t AS loser, w.t AS winner
                    FROM l JOIN conv v ON v.d = l.d JOIN win w ON w.c = v.c
                   WHERE l.t IS NOT NULL AND l.t <> w.t)
        SELECT (SELECT array_agg(doc.t ORDER BY doc.d) FROM doc),
               (SELECT array_agg(merge.loser ORDER BY merge.loser) FROM merge),
               (SELECT array_agg(merge.winner ORDER BY merge.loser) FROM merge)
          INTO v_threads, v_losers, v_winners;
        IF v_losers IS NOT NULL THEN
            UPDATE mail.thread_links t SET thread_id = m.winner
              FROM unnest(v_losers, v_winners) AS m (loser, winner)
             WHERE t.thread_id = m.loser;
            UPDATE mail.user_messages um SET thread_id = m.winner
              FROM unnest(v_losers, v_winners) AS m (loser, winner), mail.messages msg
             WHERE msg.thread_id = m.loser AND um.mailmeta_id = msg.mailmeta_id;
            UPDATE mail.messages msg SET thread_id = m.winner
              FROM unnest(v_losers, v_winners) AS m (loser, winner)
             WHERE msg.thread_id = m.loser;
        END IF;
    END IF;

    -- 4. Store.
    IF v_link_id IS NOT NULL THEN
        INSERT INTO mail.thread_links (message_id, thread_id)
        SELECT DISTINCT ON (l.id) l.id, v_threads[l.d]
          FROM unnest(v_link_doc, v_link_id) AS l (d, id)
         WHERE l.id <> ALL (coalesce(v_known_id, '{}'))
         ORDER BY l.id
        ON CONFLICT (message_id) DO NOTHING;
    END IF;

    WITH s AS (
        SELECT docs->(s.ord::integer - 1) AS doc, s.mid, s.thread
          FROM unnest(v_ords, v_mids, v_threads) AS s (ord, mid, thread)
    ), ins AS (
        INSERT INTO mail.messages (
            mailmeta_id, queue_id, received_at, direction,
            client_ip, client_name, helo, tls_version, tls_cipher, sasl_user, env_from, size_bytes,
            subject, header_from, addresses, sent_at, date_raw, message_id, in_reply_to,
            reference_ids, list_id, auto_submitted, malformed, malformed_reasons,
            action, reason, thread_id, parts, attachment_count)
        SELECT s.mid, left(d->>'queue_id', 512), mail.parse_timestamptz(d->>'received_at'),
               -- "outbound" from a writer that could not tell where every
               -- recipient goes (sendmail(1) mail has no Postfix transport
               -- per recipient) becomes "local" when every recipient's
               -- domain is one of ours.
               CASE WHEN d->>'direction' = 'outbound'
                     AND jsonb_array_length(d->'recipients') > 0
                     AND NOT EXISTS (
                         SELECT 1 FROM jsonb_array_elements(d->'recipients') r
                          WHERE NOT EXISTS (
                              SELECT 1 FROM mail.domains dm
                               WHERE dm.domain = lower(split_part(r->>'address', '@', 2))))
                    THEN 'local' ELSE d->>'direction' END,
               mail.parse_inet(d #>> '{client,ip}'), d #>> '{client,name}', d #>> '{client,helo}',
               d #>> '{tls,version}', d #>> '{tls,cipher}', d->>'sasl_user',
               left(d->>'env_from', 512), CASE WHEN jsonb_typeof(d->'size_bytes') = 'number' AND (d->'size_bytes' #>> '{}')::numeric BETWEEN 0 AND 9223372036854775807 THEN trunc((d->'size_bytes' #>> '{}')::numeric)::bigint END,
               h->>'subject',
               CASE WHEN jsonb_typeof(h->'from') = 'array' THEN h->'from'->0->>'address' END,
               jsonb_build_object('from', coalesce(h->'from', '[]'),
                                  'sender', coalesce(h->'sender', '[]'),
                                  'reply_to', coalesce(h->'reply_to', '[]'),
                                  'to', coalesce(h->'to', '[]'),
                                  'cc', coalesce(h->'cc', '[]')),
               mail.parse_timestamptz(h->>'date'), h->>'date_raw',
               nullif(left(btrim(h->>'message_id', E' \t\r\n<>'), 512), ''),
               CASE WHEN jsonb_typeof(h->'in_reply_to') IS DISTINCT FROM 'array' OR jsonb_array_length(h->'in_reply_to') = 0 THEN '{}'::text[]
                    WHEN jsonb_array_length(h->'in_reply_to') = 1 AND nullif(left(btrim(h->'in_reply_to'->>0, E' \t\r\n<>'), 512), '') IS NOT NULL
                    THEN ARRAY[nullif(left(btrim(h->'in_reply_to'->>0, E' \t\r\n<>'), 512), '')]
                    ELSE mail.message_id_list(h->'in_reply_to', 10) END,
               CASE WHEN jsonb_typeof(h->'references') IS DISTINCT FROM 'array' OR jsonb_array_length(h->'references') = 0 THEN '{}'::text[]
                    WHEN jsonb_array_length(h->'references') = 1 AND nullif(left(btrim(h->'references'->>0, E' \t\r\n<>'), 512), '') IS NOT NULL
                    THEN ARRAY[nullif(left(btrim(h->'references'->>0, E' \t\r\n<>'), 512), '')]
                    ELSE mail.message_id_list(h->'references', 20) END,
               h->>'list_id', h->>'auto_submitted',
               coalesce((d->'malformed') = 'true'::jsonb, false),
               CASE WHEN jsonb_typeof(d->'malformed_reasons') = 'array'
                         AND jsonb_array_length(d->'malformed_reasons') > 0
                    THEN ARRAY(SELECT jsonb_array_elements_text(d->'malformed_reasons'))
                    ELSE '{}' END,
               d->>'action', d->>'reason', s.thread, d->'parts', jsonb_array_length(d->'attachments')
          FROM s, LATERAL (SELECT s.doc AS d, s.doc->'headers' AS h) x
        ON CONFLICT (mailmeta_id) DO NOTHING        -- a concurrent replay won
        RETURNING mailmeta_id, received_at, thread_id
    )
    SELECT array_agg(ins.mailmeta_id) INTO v_stored FROM ins;
    IF v_stored IS NULL THEN
        RETURN QUERY SELECT (x.e->>'mailmeta_id')::uuid
                       FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) ORDER BY x.ord;
        RETURN;
    END IF;

    WITH s AS MATERIALIZED (
        SELECT x.d, s.mid, s.thread, mail.parse_timestamptz(x.d->>'received_at') AS received_at
          FROM unnest(v_ords, v_mids, v_threads) AS s (ord, mid, thread),
               LATERAL (SELECT docs->(s.ord::integer - 1) AS d) x
         WHERE s.mid = ANY (v_stored)
    ), r AS (
        SELECT DISTINCT s.mid, s.received_at, s.thread, left(a->>'address', 512) AS rcpt
          FROM s, jsonb_array_elements(s.d->'recipients') AS a
    ), lr AS (
        SELECT * FROM mail.local_recipients(ARRAY(SELECT DISTINCT r.rcpt FROM r))
    ), ins AS (
        INSERT INTO mail.message_recipients (mailmeta_id, rcpt, received_at, user_id)
        SELECT r.mid, r.rcpt, r.received_at, u.user_id
          FROM r LEFT JOIN mail.users u ON u.address = lower(btrim(r.rcpt, E' \t\r\n'))
    )
    INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
    SELECT DISTINCT lr.user_id, r.mid, r.received_at, r.thread
      FROM r JOIN lr ON lr.rcpt = r.rcpt;

    WITH a AS (
        SELECT o.mid, a.e, a.no,
               CASE WHEN a.e->>'sha256' ~* '^[0-9a-f]{64}$' THEN decode(a.e->>'sha256', 'hex') END AS sha256
          FROM unnest(v_ords, v_mids) AS o (ord, mid),
               jsonb_array_elements(docs->(o.ord::integer - 1)->'attachments') WITH ORDINALITY AS a (e, no)
         WHERE o.mid = ANY (v_stored)
    ), b AS (
        INSERT INTO mail.attachment_blobs (sha256, size_bytes, content_type)
        SELECT a.sha256, min(CASE WHEN jsonb_typeof(a.e->'size_bytes') = 'number' AND (a.e->'size_bytes' #>> '{}')::numeric BETWEEN 0 AND 9223372036854775807 THEN trunc((a.e->'size_bytes' #>> '{}')::numeric)::bigint END), min(lower(a.e->>'content_type'))
          FROM a WHERE a.sha256 IS NOT NULL
         GROUP BY a.sha256
         ORDER BY a.sha256
        ON CONFLICT (sha256) DO NOTHING
    )
    INSERT INTO mail.attachment_parts (mailmeta_id, attachment_no, part, filename,
                                       content_type, disposition, size_bytes, sha256)
    SELECT a.mid, a.no, left(a.e->>'part', 512), a.e->>'filename', lower(a.e->>'content_type'),
           lower(a.e->>'disposition'), CASE WHEN jsonb_typeof(a.e->'size_bytes') = 'number' AND (a.e->'size_bytes' #>> '{}')::numeric BETWEEN 0 AND 9223372036854775807 THEN trunc((a.e->'size_bytes' #>> '{}')::numeric)::bigint END, a.sha256
      FROM a;

    -- 5. Contacts: the envelope recipients of the new messages a local user
    --    sent (SASL login, or for local submission the envelope sender) and
    --    the milter accepted (refused spam adds no contact), named as in To
    --    or Cc.
    PERFORM mail.count_contacts(array_agg(u.user_id),
                                array_agg(coalesce(m.message_id, m.mailmeta_id::text)),
                                array_agg(r.address), array_agg(n.name), array_agg(m.received_at))
       FROM mail.messages m
       JOIN mail.users u ON u.address = lower(btrim(coalesce(m.sasl_user, m.env_from), E' \t\r\n<>'))
       CROSS JOIN LATERAL (SELECT DISTINCT lower(btrim(mr.rcpt, E' \t\r\n<>')) AS address
                             FROM mail.message_recipients mr
                            WHERE mr.mailmeta_id = m.mailmeta_id) r
       LEFT JOIN LATERAL (SELECT h.name FROM mail.header_recipients(m.addresses) h
                           WHERE h.address = r.address AND h.name IS NOT NULL
                           LIMIT 1) n ON true
      WHERE m.mailmeta_id = ANY (v_stored)
        AND m.direction IN ('outbound', 'local')
        AND m.action = 'accept'
     HAVING count(*) > 0;

    RETURN QUERY SELECT (x.e->>'mailmeta_id')::uuid
                   FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) ORDER BY x.ord;
END
$$;
COMMENT ON FUNCTION mail.record_messages(jsonb) IS
    'Records a JSON array of metadata documents (doc/metadata-record.md) in one transaction and returns their mailmeta_ids in order. Idempotent: a document whose mailmeta_id is already recorded (or repeated in the batch) adds nothing. A new message a local user sent (outbound or local) and the milter accepted counts its envelope recipients in that user''s contacts. Raises 22023 naming the first bad document, and then stores none of them; 25000 outside READ COMMITTED. Concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

-- ---------------------------------------------------------------- mirror: writing

-- Why a folder list for mirror_folders is unacceptable, or NULL.
CREATE FUNCTION mail.mirror_folders_problem(folders jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    IF folders IS NULL OR jsonb_typeof(folders) <> 'array' THEN
        RETURN format('folders must be a JSON array, not %s', coalesce(jsonb_typeof(folders), 'NULL'));
    END IF;
    SELECT format('folder %s of %s: %s', x.ord, jsonb_array_length(folders), x.reason) INTO v_problem
      FROM (SELECT f.ord, CASE
                WHEN jsonb_typeof(f.e) <> 'object' THEN
                    format('must be an object, not %s', jsonb_typeof(f.e))
                WHEN jsonb_typeof(f.e->'guid') IS DISTINCT FROM 'string'
                     OR f.e->>'guid' !~ '^[0-9a-fA-F]{32}$' THEN
                    format('guid %s is not 32 hex digits', left(coalesce((f.e->'guid')::text, 'NULL'), 80))
                WHEN jsonb_typeof(f.e->'name') IS DISTINCT FROM 'string' OR f.e->>'name' = '' THEN
                    'name must be a non-empty string'
                WHEN length(f.e->>'name') > 1000 THEN
                    'name is longer than 1000 characters'
                WHEN coalesce(jsonb_typeof(f.e->'special_use'), 'null') NOT IN ('string', 'null') THEN
                    'special_use must be a string or null'
                WHEN length(f.e->>'special_use') > 200 THEN
                    'special_use is longer than 200 characters'
                WHEN coalesce(jsonb_typeof(f.e->'subscribed'), 'null') NOT IN ('boolean', 'null') THEN
                    'subscribed must be true or false'
            END AS reason
              FROM jsonb_array_elements(folders) WITH ORDINALITY AS f (e, ord)) x
     WHERE x.reason IS NOT NULL
     ORDER BY x.ord
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    END IF;
    SELECT format('guid %s is listed twice', lower(f.e->>'guid')) INTO v_problem
      FROM jsonb_array_elements(folders) AS f (e)
     GROUP BY lower(f.e->>'guid') HAVING count(*) > 1
     ORDER BY lower(f.e->>'guid') LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    END IF;
    SELECT format('name %s is listed twice', quote_literal(left(f.e->>'name', 200))) INTO v_problem
      FROM jsonb_array_elements(folders) AS f (e)
     GROUP BY f.e->>'name' HAVING count(*) > 1
     ORDER BY f.e->>'name' LIMIT 1;
    RETURN v_problem;
END
$$;
COMMENT ON FUNCTION mail.mirror_folders_problem(jsonb) IS
    'Internal: why a folder list (doc/mailbox-mirror.md) is malformed, naming the first bad entry, or NULL.';

-- Why a mirror_messages batch is unacceptable, or NULL.
CREATE FUNCTION mail.mirror_batch_problem(batch jsonb) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    IF batch IS NULL OR jsonb_typeof(batch) <> 'object' THEN
        RETURN format('the batch must be a JSON object, not %s', coalesce(jsonb_typeof(batch), 'NULL'));
    END IF;
    IF mail.json_integer(batch->'uidvalidity', 1, 4294967295) IS NULL THEN
        RETURN format('uidvalidity %s is not an integer from 1 to 4294967295',
                      left(coalesce((batch->'uidvalidity')::text, 'NULL'), 80));
    END IF;
    IF coalesce(jsonb_typeof(batch->'reset'), 'null') NOT IN ('boolean', 'null') THEN
        RETURN 'reset must be true or false';
    END IF;
    IF coalesce(jsonb_typeof(batch->'upsert'), 'null') NOT IN ('array', 'null') THEN
        RETURN 'upsert must be an array';
    END IF;
    IF coalesce(jsonb_typeof(batch->'expunge'), 'null') NOT IN ('array', 'null') THEN
        RETURN 'expunge must be an array';
    END IF;
    SELECT format('upsert %s of %s: %s', x.ord, jsonb_array_length(batch->'upsert'), x.reason) INTO v_problem
      FROM (SELECT u.ord, CASE
                WHEN jsonb_typeof(u.e) <> 'object' THEN
                    format('must be an object, not %s', jsonb_typeof(u.e))
                WHEN mail.json_integer(u.e->'uid', 1, 4294967295) IS NULL THEN
                    format('uid %s is not an integer from 1 to 4294967295',
                           left(coalesce((u.e->'uid')::text, 'NULL'), 80))
                WHEN NOT mail.is_uuid(u.e->>'mailmeta_id') OR jsonb_typeof(u.e->'mailmeta_id') <> 'string' THEN
                    format('mailmeta_id %s is not a UUID', left(coalesce((u.e->'mailmeta_id')::text, 'NULL'), 80))
                WHEN jsonb_typeof(u.e->'internal_date') IS DISTINCT FROM 'string'
                     OR mail.parse_timestamptz(u.e->>'internal_date') IS NULL THEN
                    format('internal_date %s is not an RFC 3339 date-time with offset',
                           left(coalesce((u.e->'internal_date')::text, 'NULL'), 80))
                WHEN coalesce(jsonb_typeof(u.e->'flags'), 'null') NOT IN ('array', 'null')
                     OR jsonb_path_exists(u.e, 'strict $.flags[*] ? (@.type() != "string")', '{}', true) THEN
                    'flags must be an array of strings'
                WHEN coalesce(jsonb_typeof(u.e->'keywords'), 'null') NOT IN ('array', 'null')
                     OR jsonb_path_exists(u.e, 'strict $.keywords[*] ? (@.type() != "string")', '{}', true) THEN
                    'keywords must be an array of strings'
                WHEN coalesce(jsonb_typeof(u.e->'size'), 'null') <> 'null'
                     AND mail.json_integer(u.e->'size', 0, 9223372036854775807) IS NULL THEN
                    'size must be a non-negative integer or null'
                WHEN coalesce(jsonb_typeof(u.e->'modseq'), 'null') <> 'null'
                     AND mail.json_integer(u.e->'modseq', 0, 9223372036854775807) IS NULL THEN
                    'modseq must be a non-negative integer or null'
            END AS reason
              FROM jsonb_array_elements(coalesce(nullif(batch->'upsert', 'null'), '[]'))
                   WITH ORDINALITY AS u (e, ord)) x
     WHERE x.reason IS NOT NULL
     ORDER BY x.ord
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    END IF;
    SELECT format('expunge %s of %s: %s is not an integer from 1 to 4294967295',
                  x.ord, jsonb_array_length(batch->'expunge'), left(x.e::text, 80)) INTO v_problem
      FROM jsonb_array_elements(coalesce(nullif(batch->'expunge', 'null'), '[]')) WITH ORDINALITY AS x (e, ord)
     WHERE mail.json_integer(x.e, 1, 4294967295) IS NULL
     ORDER BY x.ord
     LIMIT 1;
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    END IF;
    SELECT format('uid %s is upserted twice', u.e->>'uid') INTO v_problem
      FROM jsonb_array_elements(coalesce(nullif(batch->'upsert', 'null'), '[]')) AS u (e)
     GROUP BY u.e->>'uid' HAVING count(*) > 1
     ORDER BY min((u.e->>'uid')::bigint) LIMIT 1;
    RETURN v_problem;
END
$$;
COMMENT ON FUNCTION mail.mirror_batch_problem(jsonb) IS
    'Internal: why a mirror_messages batch (doc/mailbox-mirror.md) is malformed, naming the first bad entry, or NULL.';

-- The upserts of a batch that mirror_batch_problem accepted, as rows. The
-- entries of "flags" and "keywords" are taken together: system flags become
-- booleans (\Recent and unknown system flags are dropped), the others are
-- the keywords.
CREATE FUNCTION mail.mirror_batch_rows(upsert jsonb)
    RETURNS TABLE (uid bigint, mailmeta_id uuid, internal_date timestamptz, size_bytes bigint,
                   modseq bigint, seen boolean, answered boolean, flagged boolean,
                   deleted boolean, draft boolean, keywords text[])
    LANGUAGE sql STABLE SECURITY INVOKER
AS $$
    SELECT (u.e->>'uid')::bigint, (u.e->>'mailmeta_id')::uuid,
           -- an RFC 3339 date-time with offset: mirror_batch_problem checked it
           (u.e->>'internal_date')::timestamptz,
           mail.json_integer(u.e->'size', 0, 9223372036854775807),
           mail.json_integer(u.e->'modseq', 0, 9223372036854775807),
           coalesce(f.seen, false), coalesce(f.answered, false), coalesce(f.flagged, false),
           coalesce(f.deleted, false), coalesce(f.draft, false), coalesce(f.keywords, '{}')
      FROM jsonb_array_elements(coalesce(nullif($1, 'null'), '[]')) AS u (e)
           CROSS JOIN LATERAL (
               SELECT bool_or(lower(x.x) = E'\\seen') AS seen,
                      bool_or(lower(x.x) = E'\\answered') AS answered,
                      bool_or(lower(x.x) = E'\\flagged') AS flagged,
                      bool_or(lower(x.x) = E'\\deleted') AS deleted,
                      bool_or(lower(x.x) = E'\\draft') AS draft,
                      array_agg(DISTINCT x.x ORDER BY x.x) FILTER (WHERE left(x.x, 1) <> E'\\' AND x.x <> '') AS keywords
                 FROM (SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(u.e->'flags') = 'array'
                                                             THEN u.e->'flags' ELSE '[]' END)
                       UNION ALL
                       SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(u.e->'keywords') = 'array'
                                                             THEN u.e->'keywords' ELSE '[]' END)) AS x (x)) f
$$;
COMMENT ON FUNCTION mail.mirror_batch_rows(jsonb) IS
    'Internal: the "upsert" entries of a mirror_messages batch that mirror_batch_problem accepted, as rows: system flags (of "flags" and "keywords") as booleans, the other entries as keywords, sorted and distinct.';

CREATE FUNCTION mail.mirror_folders(address text, folders jsonb)
    RETURNS TABLE (guid text, uidvalidity bigint, uidnext bigint, highest_modseq bigint,
                   message_count integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_user_id bigint := mail.user_id_of(mirror_folders.address);
    v_folders jsonb := mirror_folders.folders;
    v_problem text := mail.mirror_folders_problem(v_folders);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid folder list for %: %', quote_literal(mail.normalise_address(mirror_folders.address)), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mail.lock_mirror(v_user_id);

    DELETE FROM mail.folders f
     WHERE f.user_id = v_user_id
       AND f.guid NOT IN (SELECT lower(x.e->>'guid') FROM jsonb_array_elements(v_folders) AS x (e));

    INSERT INTO mail.folders AS f (user_id, guid, name, special_use, subscribed)
    SELECT v_user_id, lower(x.e->>'guid'), x.e->>'name', nullif(btrim(x.e->>'special_use'), ''),
           coalesce((x.e->'subscribed') = 'true', false)
      FROM jsonb_array_elements(v_folders) AS x (e)
     ORDER BY 2
    ON CONFLICT ON CONSTRAINT folders_user_id_guid_key DO UPDATE
       SET name = excluded.name, special_use = excluded.special_use, subscribed = excluded.subscribed
     WHERE (f.name, f.special_use, f.subscribed)
           IS DISTINCT FROM (excluded.name, excluded.special_use, excluded.subscribed);

    RETURN QUERY
        SELECT f.guid, f.uidvalidity, f.uidnext, f.highest_modseq, f.message_count
          FROM jsonb_array_elements(v_folders) WITH ORDINALITY AS x (e, ord)
          JOIN mail.folders f ON f.user_id = v_user_id AND f.guid = lower(x.e->>'guid')
         ORDER BY x.ord;
END
$$;
COMMENT ON FUNCTION mail.mirror_folders(text, jsonb) IS
    'Mirror: sets the user''s complete folder list ([{"guid", "name", "special_use", "subscribed"}, ...]): upserts by guid, deletes the folders (and their messages) not listed, and returns each listed folder with the state of its last successful mirror_folder_done (NULLs: send it in full). Raises 22023 (malformed address or list), P0002 (unknown user).';

CREATE FUNCTION mail.mirror_messages(address text, guid text, batch jsonb)
    RETURNS TABLE (uid bigint, mailmeta_id uuid)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_user_id     bigint := mail.user_id_of(mirror_messages.address);
    v_guid        text := lower(btrim(mirror_messages.guid));
    v_batch       jsonb := mirror_messages.batch;
    v_problem     text;
    v_uidvalidity bigint;
    v_expunge     bigint[];
    v_folder      mail.folders;
    v_dtotal      bigint;
    v_dunread     bigint;
    v_missing     bigint[];
    v_missing_ids uuid[];
    v_ids         uuid[];
BEGIN
    IF v_guid IS NULL OR v_guid !~ '^[0-9a-f]{32}$' THEN
        v_problem := format('guid %s is not 32 hex digits', quote_nullable(left(mirror_messages.guid, 80)));
    ELSE
        v_problem := mail.mirror_batch_problem(v_batch);
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid mirror batch for %: %', quote_literal(mail.normalise_address(mirror_messages.address)), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mail.lock_mirror(v_user_id);
    SELECT * INTO v_folder FROM mail.folders f WHERE f.user_id = v_user_id AND f.guid = v_guid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'folder % of user % does not exist', v_guid,
                quote_literal(mail.normalise_address(mirror_messages.address))
            USING ERRCODE = 'no_data_found',
                  HINT = 'List it with mail.mirror_folders first.';
    END IF;
    v_uidvalidity := mail.json_integer(v_batch->'uidvalidity', 1, 4294967295);
    v_expunge := ARRAY(SELECT (x #>> '{}')::bigint
                         FROM jsonb_array_elements(coalesce(nullif(v_batch->'expunge', 'null'), '[]')) AS x);

    -- A reset, or messages of another UIDVALIDITY: start from an empty
    -- folder, and forget the synced state until mirror_folder_done.
    IF coalesce((v_batch->'reset') = 'true', false)
       OR v_folder.uidvalidity IS DISTINCT FROM v_uidvalidity THEN
        DELETE FROM mail.mailbox_messages m
         WHERE m.user_id = v_user_id AND m.folder_id = v_folder.folder_id;
        UPDATE mail.folders f
           SET uidvalidity = v_uidvalidity, uidnext = NULL, highest_modseq = NULL,
               message_count = NULL, total = 0, unread = 0
         WHERE f.folder_id = v_folder.folder_id;
    END IF;

    -- One statement: the old rows of the batch, the upserts (an expunged
    -- UID is not upserted), the expunges; then what they changed.
    WITH b AS MATERIALIZED (
        SELECT r.* FROM mail.mirror_batch_rows(v_batch->'upsert') r
         WHERE r.uid <> ALL (v_expunge)
    ), old AS MATERIALIZED (
        SELECT m.uid, m.seen
          FROM b JOIN mail.mailbox_messages m
            ON m.user_id = v_user_id AND m.folder_id = v_folder.folder_id AND m.uid = b.uid
    ), up AS (
        INSERT INTO mail.mailbox_messages AS m
               (user_id, folder_id, uid, mailmeta_id, internal_date, size_bytes, modseq,
                seen, answered, flagged, deleted, draft, keywords)
        SELECT v_user_id, v_folder.folder_id, b.uid, b.mailmeta_id, b.internal_date, b.size_bytes,
               b.modseq, b.seen, b.answered, b.flagged, b.deleted, b.draft, b.keywords
          FROM b
         ORDER BY b.uid
        ON CONFLICT ON CONSTRAINT mailbox_messages_pkey DO UPDATE
           SET mailmeta_id = excluded.mailmeta_id, internal_date = excluded.internal_date,
               size_bytes = excluded.size_bytes, modseq = excluded.modseq,
               seen = excluded.seen, answered = excluded.answered, flagged = excluded.flagged,
               deleted = excluded.deleted, draft = excluded.draft, keywords = excluded.keywords
         WHERE (m.mailmeta_id, m.internal_date, m.size_bytes, m.modseq, m.seen, m.answered,
                m.flagged, m.deleted, m.draft, m.keywords)
               IS DISTINCT FROM
               (excluded.mailmeta_id, excluded.internal_date, excluded.size_bytes, excluded.modseq,
                excluded.seen, excluded.answered, excluded.flagged, excluded.deleted,
                excluded.draft, excluded.keywords)
        RETURNING m.uid, m.seen
    ), del AS (
        DELETE FROM mail.mailbox_messages m
         WHERE m.user_id = v_user_id AND m.folder_id = v_folder.folder_id
           AND m.uid = ANY (v_expunge)
        RETURNING m.uid, m.seen
    )
    SELECT (SELECT count(*) FROM up LEFT JOIN old ON old.uid = up.uid WHERE old.uid IS NULL)
           - (SELECT count(*) FROM del),
           (SELECT coalesce(sum((NOT up.seen)::integer - coalesce((NOT old.seen)::integer, 0)), 0)
              FROM up LEFT JOIN old ON old.uid = up.uid)
           - (SELECT count(*) FROM del WHERE NOT del.seen),
           (SELECT array_agg(b.uid ORDER BY b.uid) FROM b
             WHERE NOT EXISTS (SELECT FROM mail.messages mm WHERE mm.mailmeta_id = b.mailmeta_id)),
           (SELECT array_agg(b.mailmeta_id ORDER BY b.uid) FROM b
             WHERE NOT EXISTS (SELECT FROM mail.messages mm WHERE mm.mailmeta_id = b.mailmeta_id)),
           (SELECT array_agg(DISTINCT b.mailmeta_id) FROM b)
      INTO v_dtotal, v_dunread, v_missing, v_missing_ids, v_ids;

    IF v_dtotal <> 0 OR v_dunread <> 0 THEN
        UPDATE mail.folders f
           SET total = f.total + v_dtotal, unread = f.unread + v_dunread
         WHERE f.folder_id = v_folder.folder_id;
    END IF;

    IF mail.is_sent_folder(v_folder.special_use) AND v_ids IS NOT NULL THEN
        PERFORM mail.collect_sent_contacts(v_user_id, v_ids);
    END IF;

    RETURN QUERY SELECT x.uid, x.mailmeta_id
                   FROM unnest(v_missing, v_missing_ids) AS x (uid, mailmeta_id)
                  ORDER BY x.uid;
END
$$;
COMMENT ON FUNCTION mail.mirror_messages(text, text, jsonb) IS
    'Mirror: applies a batch of one folder ({"uidvalidity", "reset", "upsert": [{"uid", "mailmeta_id", "flags", "keywords", "internal_date", "size", "modseq"}], "expunge": [uid, ...]}): with reset true, or a uidvalidity other than the folder''s, empties the folder first (and forgets its synced state); upserts are absolute state; keeps the folder''s total and unread counters. Returns the upserted messages whose mailmeta_id has no row in mail.messages. Raises 22023 (malformed address, guid or batch), P0002 (unknown user or folder).';

CREATE FUNCTION mail.mirror_folder_done(address text, guid text, uidvalidity bigint, uidnext bigint,
                                        highest_modseq bigint, message_count integer)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(mirror_folder_done.address);
    v_guid    text := lower(btrim(mirror_folder_done.guid));
    v_problem text;
    v_folder  mail.folders;
    v_ok      boolean;
BEGIN
    v_problem := CASE
        WHEN v_guid IS NULL OR v_guid !~ '^[0-9a-f]{32}$' THEN
            format('guid %s is not 32 hex digits', quote_nullable(left(mirror_folder_done.guid, 80)))
        WHEN mirror_folder_done.uidvalidity IS NULL
             OR mirror_folder_done.uidvalidity NOT BETWEEN 1 AND 4294967295 THEN
            format('uidvalidity %s is not from 1 to 4294967295', coalesce(mirror_folder_done.uidvalidity::text, 'NULL'))
        WHEN mirror_folder_done.uidnext IS NULL
             OR mirror_folder_done.uidnext NOT BETWEEN 1 AND 4294967296 THEN
            format('uidnext %s is not from 1 to 4294967296', coalesce(mirror_folder_done.uidnext::text, 'NULL'))
        WHEN mirror_folder_done.highest_modseq < 0 THEN
            format('highest_modseq %s is negative', mirror_folder_done.highest_modseq)
        WHEN mirror_folder_done.message_count IS NULL OR mirror_folder_done.message_count < 0 THEN
            format('message_count %s is not 0 or more', coalesce(mirror_folder_done.message_count::text, 'NULL'))
    END;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid folder state for %: %', quote_literal(mail.normalise_address(mirror_folder_done.address)), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mail.lock_mirror(v_user_id);
    SELECT * INTO v_folder FROM mail.folders f WHERE f.user_id = v_user_id AND f.guid = v_guid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'folder % of user % does not exist', v_guid,
                quote_literal(mail.normalise_address(mirror_folder_done.address))
            USING ERRCODE = 'no_data_found';
    END IF;
    -- In step: the mirror holds as many messages as Dovecot, of this
    -- UIDVALIDITY (an empty folder may take any).
    v_ok := v_folder.total = mirror_folder_done.message_count
            AND (v_folder.total = 0 OR v_folder.uidvalidity = mirror_folder_done.uidvalidity);
    UPDATE mail.folders f
       SET uidvalidity = CASE WHEN v_ok THEN mirror_folder_done.uidvalidity ELSE f.uidvalidity END,
           uidnext = CASE WHEN v_ok THEN mirror_folder_done.uidnext END,
           highest_modseq = CASE WHEN v_ok THEN mirror_folder_done.highest_modseq END,
           message_count = CASE WHEN v_ok THEN mirror_folder_done.message_count END,
           synced_at = now()
     WHERE f.folder_id = v_folder.folder_id;
    RETURN v_ok;
END
$$;
COMMENT ON FUNCTION mail.mirror_folder_done(text, text, bigint, bigint, bigint, integer) IS
    'Mirror: records a folder''s synced state (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, message count) and returns true; returns false, recording no state (so the next sync sends the folder in full), when the mirror holds a different number of messages or messages of another UIDVALIDITY (drift). Raises 22023 (malformed argument), P0002 (unknown user or folder).';

CREATE FUNCTION mail.mirror_forget(address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(mirror_forget.address);
BEGIN
    PERFORM mail.lock_mirror(v_user_id);
    DELETE FROM mail.folders f WHERE f.user_id = v_user_id;
END
$$;
COMMENT ON FUNCTION mail.mirror_forget(text) IS
    'Mirror: deletes the user''s mirror (folders and their messages) before a rebuild; metadata rows, per-user rows and contacts stay. Raises 22023 (malformed address), P0002 (unknown user).';

CREATE FUNCTION mail.record_mailbox_message(address text, doc jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(record_mailbox_message.address);
    v_doc     jsonb := record_mailbox_message.doc;
    v_problem text;
    v_mid     uuid;
    v_thread  uuid;
    v_locked  uuid;
BEGIN
    v_problem := mail.metadata_problem(v_doc);
    IF v_problem IS NULL AND v_doc->>'direction' <> 'mailbox' THEN
        v_problem := format('direction %s is not mailbox', quote_literal(left(v_doc->>'direction', 80)));
    ELSIF v_problem IS NULL AND jsonb_array_length(v_doc->'recipients') > 0 THEN
        v_problem := 'recipients must be empty: a message found in a mailbox has no envelope';
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid metadata document%: %',
                coalesce(' ' || left(v_doc->>'mailmeta_id', 80), ''), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_mid := (v_doc->>'mailmeta_id')::uuid;

    PERFORM mail.record_messages(jsonb_build_array(
        v_doc || '{"queue_id": null, "client": null, "tls": null, "sasl_user": null, "env_from": null}'));

    -- The user's row, under the lock of the message's thread: a merge of
    -- that thread (record_messages) moves the rows it can see under the
    -- same lock, and a merge that committed meanwhile moved the thread.
    LOOP
        SELECT m.thread_id INTO v_thread FROM mail.messages m WHERE m.mailmeta_id = v_mid;
        EXIT WHEN v_thread IS NULL OR v_thread = v_locked;
        -- 1953002084 = 'thrd' in ASCII, the key record_messages uses.
        PERFORM pg_advisory_xact_lock(1953002084, hashtext(v_thread::text));
        v_locked := v_thread;
    END LOOP;
    INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
    SELECT v_user_id, m.mailmeta_id, m.received_at, m.thread_id
      FROM mail.messages m WHERE m.mailmeta_id = v_mid
    ON CONFLICT (user_id, mailmeta_id) DO NOTHING;

    IF EXISTS (SELECT FROM mail.mailbox_messages mm
                 JOIN mail.folders f ON f.folder_id = mm.folder_id
                WHERE mm.user_id = v_user_id AND mm.mailmeta_id = v_mid
                  AND mail.is_sent_folder(f.special_use)) THEN
        PERFORM mail.collect_sent_contacts(v_user_id, ARRAY[v_mid]);
    END IF;
END
$$;
COMMENT ON FUNCTION mail.record_mailbox_message(text, jsonb) IS
    'Mirror: records the metadata document (doc/metadata-record.md, direction "mailbox", no recipients; envelope keys are ignored) of a message found in the user''s mailbox, as record_messages does, and adds the user''s mail.user_messages row; a message in a \Sent folder has its To and Cc counted in the user''s contacts. Idempotent by mailmeta_id (metadata recorded earlier, by the milter or by this function, is kept). Raises 22023 (malformed address or document), P0002 (unknown user), 25000 outside READ COMMITTED; concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

-- ---------------------------------------------------------------- mailbox queries

-- A page position: the internal date (microseconds since the epoch) and
-- UID of the last row of a page, as 32 hex digits.
CREATE FUNCTION mail.encode_cursor(internal_date timestamptz, uid bigint) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY INVOKER
AS $$
    SELECT encode(int8send((extract(epoch FROM $1) * 1000000)::bigint) || int8send($2), 'hex')
$$;
COMMENT ON FUNCTION mail.encode_cursor(timestamptz, bigint) IS
    'Internal: the opaque page cursor (32 hex digits) of a position (internal_date, uid).';

CREATE FUNCTION mail.decode_cursor(cursor text, OUT internal_date timestamptz, OUT uid bigint)
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_us bigint;
BEGIN
    IF decode_cursor.cursor IS NULL OR decode_cursor.cursor = '' THEN
        -- The first page: before every position.
        internal_date := 'infinity';
        uid := 9223372036854775807;
        RETURN;
    END IF;
    IF decode_cursor.cursor ~ '^[0-9a-f]{32}$' THEN
        v_us := ('x' || substr(decode_cursor.cursor, 1, 16))::bit(64)::bigint;
        uid := ('x' || substr(decode_cursor.cursor, 17, 16))::bit(64)::bigint;
    END IF;
    IF uid IS NULL OR uid NOT BETWEEN 1 AND 4294967295
       -- years 1 to 9999, what mirror_messages accepts
       OR v_us NOT BETWEEN -62135596800000000 AND 253402300799999999 THEN
        RAISE EXCEPTION 'invalid cursor %: pass the next_cursor of the previous page, or NULL for the first page',
                quote_literal(left(decode_cursor.cursor, 80))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Whole seconds and microseconds apart: interval arithmetic with a
    -- factor of this size is exact.
    internal_date := 'epoch'::timestamptz + (v_us / 1000000) * interval '1 second'
                                          + (v_us % 1000000) * interval '1 microsecond';
END
$$;
COMMENT ON FUNCTION mail.decode_cursor(text) IS
    'Internal: the position (internal_date, uid) of a page cursor; for NULL or '''' the position before the newest message; raises 22023 for anything that is not a cursor.';

CREATE FUNCTION mail.check_page_size(page_size integer) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_page_size.page_size IS NULL THEN
        RETURN 50;
    END IF;
    IF check_page_size.page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size % is not from 1 to 1000', check_page_size.page_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN check_page_size.page_size;
END
$$;
COMMENT ON FUNCTION mail.check_page_size(integer) IS
    'Internal: the page size, 50 for NULL; raises 22023 outside 1..1000.';

-- The folder_id of a user's folder by name ("INBOX" in any case).
CREATE FUNCTION mail.folder_id_of(user_id bigint, address text, folder text) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_folder_id bigint;
BEGIN
    IF folder_id_of.folder IS NULL OR folder_id_of.folder = '' THEN
        RAISE EXCEPTION 'folder name must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT f.folder_id INTO v_folder_id
      FROM mail.folders f
     WHERE f.user_id = folder_id_of.user_id
       AND f.name = CASE WHEN upper(folder_id_of.folder) = 'INBOX' THEN 'INBOX'
                         ELSE folder_id_of.folder END;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'folder % of user % does not exist', quote_literal(left(folder_id_of.folder, 200)),
                quote_literal(folder_id_of.address)
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN v_folder_id;
END
$$;
COMMENT ON FUNCTION mail.folder_id_of(bigint, text, text) IS
    'Internal: folder_id of a user''s folder by name (INBOX in any case); raises 22023 (empty name), P0002 (no such folder).';

-- The inner query of each mailbox query function, with its parameters as
-- $1, $2, ...: the functions run it with EXECUTE ... USING, and the tests
-- EXPLAIN this same text.
CREATE FUNCTION mail.mailbox_query(name text) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $fn$
    SELECT CASE $1
    -- $1 user_id
    WHEN 'list_folders' THEN $q$
        SELECT f.guid, f.name, f.special_use, f.subscribed, f.total, f.unread
          FROM mail.folders f
         WHERE f.user_id = $1
         ORDER BY f.name <> 'INBOX', f.name
    $q$
    -- $1 user_id, $2 folder_id, $3 internal_date and $4 uid of the cursor,
    -- $5 page size. One row more than the page tells whether another
    -- page follows.
    WHEN 'list_messages' THEN $q$
        SELECT p.uid, p.mailmeta_id, m.addresses->'from'->0->>'name', m.header_from,
               m.subject, m.sent_at, p.internal_date, p.seen, p.answered, p.flagged,
               p.deleted, p.draft, p.keywords, p.size_bytes, m.attachment_count, m.thread_id,
               CASE WHEN p.rn = $5 AND p.more THEN mail.encode_cursor(p.internal_date, p.uid) END
          FROM (SELECT mm.*,
                       row_number() OVER (ORDER BY mm.internal_date DESC, mm.uid DESC) AS rn,
                       count(*) OVER () > $5 AS more
                  FROM (SELECT mm.uid, mm.mailmeta_id, mm.internal_date, mm.seen, mm.answered,
                               mm.flagged, mm.deleted, mm.draft, mm.keywords, mm.size_bytes
                          FROM mail.mailbox_messages mm
                         WHERE mm.user_id = $1 AND mm.folder_id = $2
                           AND (mm.internal_date, mm.uid) < ($3, $4)
                         ORDER BY mm.internal_date DESC, mm.uid DESC
                         LIMIT $5 + 1) mm) p
          LEFT JOIN mail.messages m ON m.mailmeta_id = p.mailmeta_id
         WHERE p.rn <= $5
         ORDER BY p.rn
    $q$
    -- The same, of the messages without \Seen (the partial index).
    WHEN 'list_unread' THEN $q$
        SELECT p.uid, p.mailmeta_id, m.addresses->'from'->0->>'name', m.header_from,
               m.subject, m.sent_at, p.internal_date, p.seen, p.answered, p.flagged,
               p.deleted, p.draft, p.keywords, p.size_bytes, m.attachment_count, m.thread_id,
               CASE WHEN p.rn = $5 AND p.more THEN mail.encode_cursor(p.internal_date, p.uid) END
          FROM (SELECT mm.*,
                       row_number() OVER (ORDER BY mm.internal_date DESC, mm.uid DESC) AS rn,
                       count(*) OVER () > $5 AS more
                  FROM (SELECT mm.uid, mm.mailmeta_id, mm.internal_date, mm.seen, mm.answered,
                               mm.flagged, mm.deleted, mm.draft, mm.keywords, mm.size_bytes
                          FROM mail.mailbox_messages mm
                         WHERE mm.user_id = $1 AND mm.folder_id = $2 AND NOT mm.seen
                           AND (mm.internal_date, mm.uid) < ($3, $4)
                         ORDER BY mm.internal_date DESC, mm.uid DESC
                         LIMIT $5 + 1) mm) p
          LEFT JOIN mail.messages m ON m.mailmeta_id = p.mailmeta_id
         WHERE p.rn <= $5
         ORDER BY p.rn
    $q$
    -- $1 user_id, $2 mailmeta_id: the user's copies of the messages of its
    -- thread (of itself when its metadata is missing), when the user has it.
    WHEN 'get_thread' THEN $q$
        SELECT f.name, mm.uid, mm.mailmeta_id, m.addresses->'from'->0->>'name', m.header_from,
               m.subject, m.sent_at, mm.internal_date, mm.seen, mm.answered, mm.flagged,
               mm.deleted, mm.draft, mm.keywords, mm.size_bytes, m.attachment_count, m.thread_id
          FROM (SELECT t.mailmeta_id
                  FROM mail.messages a
                  JOIN mail.messages t ON t.thread_id = a.thread_id
                 WHERE a.mailmeta_id = $2
                UNION
                SELECT $2) ids
          JOIN mail.mailbox_messages mm ON mm.user_id = $1 AND mm.mailmeta_id = ids.mailmeta_id
          JOIN mail.folders f ON f.user_id = $1 AND f.folder_id = mm.folder_id
          LEFT JOIN mail.messages m ON m.mailmeta_id = mm.mailmeta_id
         WHERE EXISTS (SELECT FROM mail.mailbox_messages x WHERE x.user_id = $1 AND x.mailmeta_id = $2)
            OR EXISTS (SELECT FROM mail.user_messages u WHERE u.user_id = $1 AND u.mailmeta_id = $2)
         ORDER BY mm.internal_date, mm.uid, f.name
    $q$
    -- $1 user_id, $2 mailmeta_id: one row when the user has the message.
    WHEN 'get_message' THEN $q$
        SELECT $2::uuid, m.thread_id, m.received_at, m.direction, m.subject,
               m.addresses->'from'->0->>'name', m.header_from, m.addresses, m.sent_at,
               m.message_id, m.in_reply_to, m.reference_ids, m.list_id, m.size_bytes,
               m.attachment_count, m.malformed,
               coalesce((SELECT jsonb_agg(jsonb_build_object(
                                    'folder', f.name, 'guid', f.guid, 'uid', mm.uid,
                                    'flags', to_jsonb(array_remove(ARRAY[
                                        CASE WHEN mm.seen THEN E'\\Seen' END,
                                        CASE WHEN mm.answered THEN E'\\Answered' END,
                                        CASE WHEN mm.flagged THEN E'\\Flagged' END,
                                        CASE WHEN mm.deleted THEN E'\\Deleted' END,
                                        CASE WHEN mm.draft THEN E'\\Draft' END], NULL)),
                                    'keywords', to_jsonb(mm.keywords),
                                    'internal_date', mm.internal_date,
                                    'size_bytes', mm.size_bytes) ORDER BY f.name, mm.uid)
                           FROM mail.mailbox_messages mm
                           JOIN mail.folders f ON f.user_id = $1 AND f.folder_id = mm.folder_id
                          WHERE mm.user_id = $1 AND mm.mailmeta_id = $2), '[]'),
               coalesce((SELECT jsonb_agg(jsonb_build_object(
                                    'part', p.part, 'filename', p.filename,
                                    'content_type', p.content_type, 'disposition', p.disposition,
                                    'size_bytes', p.size_bytes, 'sha256', encode(p.sha256, 'hex'))
                                    ORDER BY p.attachment_no)
                           FROM mail.attachment_parts p
                          WHERE p.mailmeta_id = $2), '[]')
          FROM (SELECT) one
          LEFT JOIN mail.messages m ON m.mailmeta_id = $2
         WHERE EXISTS (SELECT FROM mail.mailbox_messages x WHERE x.user_id = $1 AND x.mailmeta_id = $2)
            OR EXISTS (SELECT FROM mail.user_messages u WHERE u.user_id = $1 AND u.mailmeta_id = $2)
    $q$
    END
$fn$;
COMMENT ON FUNCTION mail.mailbox_query(text) IS
    'Internal: the text of the inner query of a mailbox query function (list_folders, list_messages, list_unread, get_thread, get_message), parameters as $1, $2, ...; run with EXECUTE ... USING, and EXPLAINed by the tests.';

CREATE FUNCTION mail.list_folders(address text)
    RETURNS TABLE (guid text, name text, special_use text, subscribed boolean,
                   total integer, unread integer)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE mail.mailbox_query('list_folders') USING mail.user_id_of(list_folders.address);
END
$$;
COMMENT ON FUNCTION mail.list_folders(text) IS
    'The user''s folders, INBOX first then by name: guid, name, special_use, subscribed, total (messages) and unread (without \Seen), from the mirror''s counters. Raises 22023 (malformed address), P0002 (unknown user).';

CREATE FUNCTION mail.list_messages(address text, folder text, cursor text DEFAULT NULL,
                                   page_size integer DEFAULT 50)
    RETURNS TABLE (uid bigint, mailmeta_id uuid, from_name text, from_address text, subject text,
                   sent_at timestamptz, internal_date timestamptz, seen boolean, answered boolean,
                   flagged boolean, deleted boolean, draft boolean, keywords text[],
                   size_bytes bigint, attachment_count integer, thread_id uuid, next_cursor text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id   bigint := mail.user_id_of(list_messages.address);
    v_page_size integer := mail.check_page_size(list_messages.page_size);
    v_pos       record := mail.decode_cursor(list_messages.cursor);
    v_folder_id bigint := mail.folder_id_of(v_user_id, mail.normalise_address(list_messages.address),
                                            list_messages.folder);
BEGIN
    RETURN QUERY EXECUTE mail.mailbox_query('list_messages')
        USING v_user_id, v_folder_id, v_pos.internal_date, v_pos.uid, v_page_size;
END
$$;
COMMENT ON FUNCTION mail.list_messages(text, text, text, integer) IS
    'A page of a user''s folder (by name; INBOX in any case), newest first (internal_date, then uid): uid, mailmeta_id, from_name, from_address, subject, sent_at (Date header), internal_date, the flags seen, answered, flagged, deleted, draft, keywords, size_bytes, attachment_count, thread_id (metadata columns NULL while the metadata is missing), and next_cursor: on the last row when another page follows, the cursor to pass for it. cursor NULL is the first page; page_size 1..1000, NULL or default 50. Raises 22023 (malformed address, empty folder name, bad cursor or page size), P0002 (unknown user or folder).';

CREATE FUNCTION mail.list_unread(address text, folder text, cursor text DEFAULT NULL,
                                 page_size integer DEFAULT 50)
    RETURNS TABLE (uid bigint, mailmeta_id uuid, from_name text, from_address text, subject text,
                   sent_at timestamptz, internal_date timestamptz, seen boolean, answered boolean,
                   flagged boolean, deleted boolean, draft boolean, keywords text[],
                   size_bytes bigint, attachment_count integer, thread_id uuid, next_cursor text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id   bigint := mail.user_id_of(list_unread.address);
    v_page_size integer := mail.check_page_size(list_unread.page_size);
    v_pos       record := mail.decode_cursor(list_unread.cursor);
    v_folder_id bigint := mail.folder_id_of(v_user_id, mail.normalise_address(list_unread.address),
                                            list_unread.folder);
BEGIN
    RETURN QUERY EXECUTE mail.mailbox_query('list_unread')
        USING v_user_id, v_folder_id, v_pos.internal_date, v_pos.uid, v_page_size;
END
$$;
COMMENT ON FUNCTION mail.list_unread(text, text, text, integer) IS
    'As list_messages, of the messages without \Seen only. Raises 22023 (malformed address, empty folder name, bad cursor or page size), P0002 (unknown user or folder).';

CREATE FUNCTION mail.get_thread(address text, message uuid)
    RETURNS TABLE (folder text, uid bigint, mailmeta_id uuid, from_name text, from_address text,
                   subject text, sent_at timestamptz, internal_date timestamptz, seen boolean,
                   answered boolean, flagged boolean, deleted boolean, draft boolean,
                   keywords text[], size_bytes bigint, attachment_count integer, thread_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(get_thread.address);
BEGIN
    IF get_thread.message IS NULL THEN
        RAISE EXCEPTION 'message (a mailmeta_id) must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY EXECUTE mail.mailbox_query('get_thread') USING v_user_id, get_thread.message;
END
$$;
COMMENT ON FUNCTION mail.get_thread(text, uuid) IS
    'The conversation of a message (by mailmeta_id) the user has (in a folder, or delivered to them): the user''s copies, in any folder, of the messages of its thread, oldest first (internal_date), one row per copy: folder, uid, mailmeta_id and the columns of list_messages. No rows when the user does not have the message. Raises 22023 (malformed address, NULL id), P0002 (unknown user).';

CREATE FUNCTION mail.get_message(address text, message uuid)
    RETURNS TABLE (mailmeta_id uuid, thread_id uuid, received_at timestamptz, direction text,
                   subject text, from_name text, from_address text, addresses jsonb,
                   sent_at timestamptz, message_id text, in_reply_to text[], reference_ids text[],
                   list_id text, size_bytes bigint, attachment_count integer, malformed boolean,
                   copies jsonb, attachments jsonb)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(get_message.address);
BEGIN
    IF get_message.message IS NULL THEN
        RAISE EXCEPTION 'message (a mailmeta_id) must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY EXECUTE mail.mailbox_query('get_message') USING v_user_id, get_message.message;
END
$$;
COMMENT ON FUNCTION mail.get_message(text, uuid) IS
    'One message (by mailmeta_id) the user has (in a folder, or delivered to them), as one row: its metadata (NULL while missing), copies (the user''s copies: [{"folder", "guid", "uid", "flags", "keywords", "internal_date", "size_bytes"}]) and attachments ([{"part", "filename", "content_type", "disposition", "size_bytes", "sha256"}]). No row when the user does not have it. Raises 22023 (malformed address, NULL id), P0002 (unknown user).';

-- ---------------------------------------------------------------- contacts

CREATE FUNCTION mail.normalise_contact_address(address text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := lower(btrim(normalise_contact_address.address, E' \t\r\n<>'));
    v_problem text := mail.contact_address_problem(v_address);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid contact address %: %', quote_nullable(normalise_contact_address.address), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_address;
END
$$;
COMMENT ON FUNCTION mail.normalise_contact_address(text) IS
    'Internal: a contact address trimmed (of blanks and <>) and lowercased; raises 22023 when it does not look like local-part@domain.';

CREATE FUNCTION mail.normalise_display_name(display_name text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_name text := nullif(btrim(normalise_display_name.display_name, E' \t\r\n'), '');
BEGIN
    IF length(v_name) > 256 THEN
        RAISE EXCEPTION 'display name is % characters long; at most 256 are allowed', length(v_name)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'display name % contains control characters', quote_literal(left(v_name, 80))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_name;
END
$$;
COMMENT ON FUNCTION mail.normalise_display_name(text) IS
    'Internal: a display name trimmed, NULL when empty; raises 22023 when longer than 256 characters or holding control characters.';

CREATE FUNCTION mail.list_contacts(address text)
    RETURNS TABLE (contact_address text, display_name text, use_count integer, last_used timestamptz,
                   blocked boolean, source text, created_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(list_contacts.address);
BEGIN
    RETURN QUERY
        SELECT c.address, c.display_name, c.use_count, c.last_used, c.blocked, c.source, c.created_at
          FROM mail.contacts c
         WHERE c.user_id = v_user_id
         ORDER BY c.address;
END
$$;
COMMENT ON FUNCTION mail.list_contacts(text) IS
    'The user''s address book, blocked entries included, by address: contact_address, display_name, use_count (sent messages to it), last_used, blocked, source (auto or manual), created_at. Raises 22023 (malformed address), P0002 (unknown user).';

CREATE FUNCTION mail.suggest_contacts(address text, prefix text, max_rows integer DEFAULT 10)
    RETURNS TABLE (contact_address text, display_name text, use_count integer, last_used timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(suggest_contacts.address);
    v_prefix  text := lower(btrim(coalesce(suggest_contacts.prefix, ''), E' \t\r\n<>"'));
BEGIN
    IF suggest_contacts.max_rows IS NULL OR suggest_contacts.max_rows NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'max_rows % is not from 1 to 100', coalesce(suggest_contacts.max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT c.address, c.display_name, c.use_count, c.last_used
          FROM mail.contacts c
         WHERE c.user_id = v_user_id
           AND NOT c.blocked
           AND (starts_with(c.address, v_prefix)
                OR starts_with(lower(c.display_name), v_prefix)
                OR EXISTS (SELECT FROM regexp_split_to_table(lower(c.display_name), '\s+') AS w
                            WHERE starts_with(w, v_prefix)))
         ORDER BY c.use_count DESC, c.last_used DESC NULLS LAST, c.address
         LIMIT suggest_contacts.max_rows;
END
$$;
COMMENT ON FUNCTION mail.suggest_contacts(text, text, integer) IS
    'Auto-completion: the user''s contacts, never blocked ones, whose address, display name or a word of it starts with prefix (any case; '''' or NULL: all), most used first: contact_address, display_name, use_count, last_used. max_rows 1..100 (default 10). Raises 22023 (malformed address, max_rows), P0002 (unknown user).';

CREATE FUNCTION mail.add_contact(address text, contact_address text, display_name text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(add_contact.address);
    v_contact text := mail.normalise_contact_address(add_contact.contact_address);
    v_name    text := mail.normalise_display_name(add_contact.display_name);
BEGIN
    INSERT INTO mail.contacts (user_id, address, display_name, source)
    VALUES (v_user_id, v_contact, v_name, 'manual')
    ON CONFLICT ON CONSTRAINT contacts_pkey DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % of user % already exists', quote_literal(v_contact),
                quote_literal(mail.normalise_address(add_contact.address))
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change it with mail.edit_contact.';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.add_contact(text, text, text) IS
    'Adds an entry (source manual, use_count 0) to the user''s address book; the contact address is trimmed and lowercased, the display name trimmed (NULL or '''' for none). Raises 22023 (malformed address, contact address or display name), P0002 (unknown user), 23505 (the entry exists).';

CREATE FUNCTION mail.edit_contact(address text, contact_address text, display_name text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(edit_contact.address);
    v_contact text := mail.normalise_contact_address(edit_contact.contact_address);
    v_name    text := mail.normalise_display_name(edit_contact.display_name);
BEGIN
    UPDATE mail.contacts c
       SET display_name = v_name, source = 'manual'
     WHERE c.user_id = v_user_id AND c.address = v_contact;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % of user % does not exist', quote_literal(v_contact),
                quote_literal(mail.normalise_address(edit_contact.address))
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.edit_contact(text, text, text) IS
    'Sets the display name of an entry (NULL or '''' removes it); the entry becomes manual, so collection no longer renames it. Raises 22023 (malformed address, contact address or display name), P0002 (unknown user or contact).';

CREATE FUNCTION mail.remove_contact(address text, contact_address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(remove_contact.address);
    v_contact text := mail.normalise_contact_address(remove_contact.contact_address);
BEGIN
    DELETE FROM mail.contacts c WHERE c.user_id = v_user_id AND c.address = v_contact;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % of user % does not exist', quote_literal(v_contact),
                quote_literal(mail.normalise_address(remove_contact.address))
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.remove_contact(text, text) IS
    'Removes an entry from the user''s address book; mail the user sends to that address later collects it again (block it to keep it out). Raises 22023 (malformed address or contact address), P0002 (unknown user or contact).';

CREATE FUNCTION mail.block_contact(address text, contact_address text, blocked boolean DEFAULT true)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(block_contact.address);
    v_contact text := mail.normalise_contact_address(block_contact.contact_address);
BEGIN
    IF block_contact.blocked IS NULL THEN
        RAISE EXCEPTION 'blocked must be true or false for contact %, not NULL', quote_literal(v_contact)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF block_contact.blocked THEN
        INSERT INTO mail.contacts AS c (user_id, address, blocked, source)
        VALUES (v_user_id, v_contact, true, 'manual')
        ON CONFLICT ON CONSTRAINT contacts_pkey DO UPDATE SET blocked = true;
    ELSE
        UPDATE mail.contacts c SET blocked = false
         WHERE c.user_id = v_user_id AND c.address = v_contact;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'contact % of user % does not exist', quote_literal(v_contact),
                    quote_literal(mail.normalise_address(block_contact.address))
                USING ERRCODE = 'no_data_found';
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION mail.block_contact(text, text, boolean) IS
    'Blocks (or with false unblocks) an entry: a blocked entry stays in list_contacts, is never suggested and is not changed by collection. Blocking an address not in the book adds it (manual, blocked). Raises 22023 (malformed address or contact address, NULL flag), P0002 (unknown user; unblocking an unknown contact).';

-- ---------------------------------------------------------------- privileges

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mail FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    mail.mirror_folders(text, jsonb),
    mail.mirror_messages(text, text, jsonb),
    mail.mirror_folder_done(text, text, bigint, bigint, bigint, integer),
    mail.mirror_forget(text),
    mail.record_mailbox_message(text, jsonb)
    TO mailmeta_mirror;
GRANT EXECUTE ON FUNCTION
    mail.list_folders(text),
    mail.list_messages(text, text, text, integer),
    mail.list_unread(text, text, text, integer),
    mail.get_thread(text, uuid),
    mail.get_message(text, uuid),
    mail.list_contacts(text),
    mail.suggest_contacts(text, text, integer)
    TO mailmeta_admin, mailmeta_reader;
GRANT EXECUTE ON FUNCTION
    mail.add_contact(text, text, text),
    mail.edit_contact(text, text, text),
    mail.remove_contact(text, text),
    mail.block_contact(text, text, boolean)
    TO mailmeta_admin;
