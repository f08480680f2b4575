-- 0005_message_metadata.sql — per-message metadata, written by the milter.
--
-- The milter sends one JSON document per message (doc/metadata-record.md) to
-- mail.record_message(doc) — one statement, one round trip — or a JSON array
-- of them to mail.record_messages(docs). The function validates the document,
-- then stores set-based projections of it; no message body ever reaches SQL:
--
--   mail.messages            one row per message, keyed by its mailmeta_id
--   mail.message_recipients  every envelope recipient as given
--   mail.user_messages       one row per local user the message reaches,
--                            keyed (user_id, mailmeta_id): mailbox queries
--                            never cross users and the table can be
--                            hash-partitioned by user_id
--   mail.attachment_blobs    attachment contents by SHA-256, stored once,
--                            with the number of references to them
--   mail.attachment_parts    each message's attachments
--   mail.thread_links        Message-ID -> thread, for conversation threading
--
-- Recording is idempotent by mailmeta_id: a document recorded again (the
-- milter's journal replayed after a crash) adds nothing and returns the id.
--
-- Local users reached by a recipient (user_messages) follow Postfix's virtual
-- alias expansion: the normalised (trimmed, lowercased) address that is a
-- user reaches that user; one that is an alias reaches whatever its
-- destinations reach, recursively (at most 10 levels); any other address in a
-- domain with a catch-all (@domain) reaches what the catch-all reaches; the
-- rest (outside addresses, unknown local ones) reach nobody.
--
-- Threading: every message id a message mentions (its own Message-ID, its
-- In-Reply-To and References) is registered in mail.thread_links. A message
-- joins the thread of the ids it mentions; when they belong to several
-- threads, those threads merge into the smallest thread id; when none is
-- known yet, the message starts a thread whose id is its mailmeta_id (so a
-- reply that arrives before its parent starts the thread the parent then
-- joins). A message that mentions no id is a thread of its own.
-- Concurrent recorders serialise on advisory locks on the message ids, then
-- on the thread ids involved, so messages of one conversation arriving at the
-- same time always end in one thread.
--
-- Hostile content is stored, not refused: an unparseable client address or
-- Date becomes NULL, values used as index keys (queue id, addresses, message
-- ids, attachment part paths) are cut to 512 characters, In-Reply-To keeps
-- its first 10 ids and References its first id and last 19 ids, an
-- attachment hash that is not 64 hex digits is stored as NULL. Only a
-- document that breaks the contract itself (wrong version, missing or
-- mistyped required keys) is refused, with SQLSTATE 22023 and nothing stored.
--
-- Privileges: mailmeta_milter may execute record_message(s) and nothing else
-- (the functions are SECURITY DEFINER; the milter cannot read these tables).
-- mailmeta_admin reads the tables and the reporting views mail.message_log
-- and mail.message_attachments, and executes the mail.trace_* functions.

SET LOCAL ROLE mailmeta_owner;

-- ---------------------------------------------------------------- tables

CREATE TABLE mail.messages (
    mailmeta_id       uuid        PRIMARY KEY,
    queue_id          text,
    received_at       timestamptz NOT NULL,
    direction         text        NOT NULL CHECK (direction IN ('inbound', 'outbound', 'local')),
    client_ip         inet,
    client_name       text,
    helo              text,
    tls_version       text,
    tls_cipher        text,
    sasl_user         text,
    env_from          text,
    size_bytes        bigint      CHECK (size_bytes >= 0),
    subject           text,
    header_from       text,
    addresses         jsonb       NOT NULL DEFAULT '{}',
    sent_at           timestamptz,
    date_raw          text,
    message_id        text,
    in_reply_to       text[]      NOT NULL DEFAULT '{}',
    reference_ids     text[]      NOT NULL DEFAULT '{}',
    list_id           text,
    auto_submitted    text,
    malformed         boolean     NOT NULL DEFAULT false,
    malformed_reasons text[]      NOT NULL DEFAULT '{}',
    action            text        NOT NULL
                                  CHECK (action IN ('accept', 'tempfail', 'reject', 'discard', 'hold')),
    reason            text,
    thread_id         uuid        NOT NULL,
    parts             jsonb       NOT NULL DEFAULT '[]',
    attachment_count  integer     NOT NULL DEFAULT 0 CHECK (attachment_count >= 0),
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_queue_id_idx ON mail.messages (queue_id);
CREATE INDEX messages_message_id_idx ON mail.messages (message_id);
CREATE INDEX messages_env_from_idx ON mail.messages (lower(env_from), received_at);
CREATE INDEX messages_received_at_idx ON mail.messages (received_at);
CREATE INDEX messages_thread_id_idx ON mail.messages (thread_id);
COMMENT ON TABLE mail.messages IS
    'One row per message the milter handled, keyed by its mailmeta_id (the X-Mailmeta-ID header). Envelope, session and selected header fields; never the body. Written only by mail.record_message.';
COMMENT ON COLUMN mail.messages.queue_id IS 'Postfix queue id.';
COMMENT ON COLUMN mail.messages.received_at IS 'When the milter saw the end of the message.';
COMMENT ON COLUMN mail.messages.direction IS 'inbound (unauthenticated SMTP), outbound (authenticated or local submission with an outside recipient), local (authenticated or local submission, every recipient local).';
COMMENT ON COLUMN mail.messages.client_ip IS 'SMTP client address; NULL for local submission or when the value was not an IP address.';
COMMENT ON COLUMN mail.messages.env_from IS 'Envelope sender without angle brackets; empty for the null sender <>.';
COMMENT ON COLUMN mail.messages.size_bytes IS 'Raw message size as received (headers and body, CRLF line ends).';
COMMENT ON COLUMN mail.messages.subject IS 'Subject, RFC 2047 decoded and unfolded.';
COMMENT ON COLUMN mail.messages.header_from IS 'The first address of the From header.';
COMMENT ON COLUMN mail.messages.addresses IS 'Address lists of the header: {"from": [...], "sender": [...], "reply_to": [...], "to": [...], "cc": [...]}, each [{"name": ..., "address": ...}].';
COMMENT ON COLUMN mail.messages.sent_at IS 'The Date header; NULL when absent or unparseable (date_raw keeps its text).';
COMMENT ON COLUMN mail.messages.message_id IS 'Message-ID without angle brackets.';
COMMENT ON COLUMN mail.messages.in_reply_to IS 'In-Reply-To ids without angle brackets, in header order (at most the first 10).';
COMMENT ON COLUMN mail.messages.reference_ids IS 'References ids without angle brackets, in header order (at most the first and the last 19).';
COMMENT ON COLUMN mail.messages.list_id IS 'The id inside the angle brackets of List-Id.';
COMMENT ON COLUMN mail.messages.malformed_reasons IS 'Why the message was not well formed, when malformed is true.';
COMMENT ON COLUMN mail.messages.action IS 'What the milter answered: accept, tempfail, reject, discard or hold.';
COMMENT ON COLUMN mail.messages.reason IS 'Why the milter answered so; NULL for plain acceptance.';
COMMENT ON COLUMN mail.messages.thread_id IS 'The conversation this message belongs to (see mail.thread_links).';
COMMENT ON COLUMN mail.messages.parts IS 'The MIME tree, depth first: [{"part": "1.2", "content_type": ..., "charset": ..., "disposition": ..., "filename": ..., "cte": ..., "size_bytes": ..., "sha256": ...}].';

CREATE TABLE mail.message_recipients (
    mailmeta_id uuid        NOT NULL REFERENCES mail.messages (mailmeta_id) ON DELETE CASCADE,
    rcpt        text        NOT NULL,
    received_at timestamptz NOT NULL,
    user_id     bigint      REFERENCES mail.users (user_id) ON DELETE SET NULL,
    PRIMARY KEY (mailmeta_id, rcpt)
);
CREATE INDEX message_recipients_rcpt_idx ON mail.message_recipients (lower(rcpt), received_at);
CREATE INDEX message_recipients_user_id_idx ON mail.message_recipients (user_id);
COMMENT ON TABLE mail.message_recipients IS
    'Every envelope recipient of a message, as the client gave it (before alias expansion).';
COMMENT ON COLUMN mail.message_recipients.received_at IS 'Copy of messages.received_at, so that recipient traces are answered from one index.';
COMMENT ON COLUMN mail.message_recipients.user_id IS 'The user whose address the recipient is (trimmed, lowercased); NULL for aliases, catch-all matches and outside addresses.';

CREATE TABLE mail.user_messages (
    user_id     bigint      NOT NULL REFERENCES mail.users (user_id) ON DELETE CASCADE,
    mailmeta_id uuid        NOT NULL REFERENCES mail.messages (mailmeta_id) ON DELETE CASCADE,
    received_at timestamptz NOT NULL,
    thread_id   uuid        NOT NULL,
    PRIMARY KEY (user_id, mailmeta_id)
);
CREATE INDEX user_messages_received_at_idx ON mail.user_messages (user_id, received_at DESC);
CREATE INDEX user_messages_thread_id_idx ON mail.user_messages (thread_id);
CREATE INDEX user_messages_mailmeta_id_idx ON mail.user_messages (mailmeta_id);
COMMENT ON TABLE mail.user_messages IS
    'One row per local user a message reaches, directly, through aliases or through a catch-all. Leads with user_id: per-user queries never cross users.';

CREATE TABLE mail.attachment_blobs (
    sha256       bytea       PRIMARY KEY CHECK (length(sha256) = 32),
    size_bytes   bigint      CHECK (size_bytes >= 0),
    content_type text,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    ref_count    bigint      NOT NULL CHECK (ref_count >= 0)
);
COMMENT ON TABLE mail.attachment_blobs IS
    'Attachment contents seen so far, once per SHA-256 of the decoded content (the content itself is not stored). ref_count counts the attachment_parts rows referring to it.';
COMMENT ON COLUMN mail.attachment_blobs.content_type IS 'The content type it had the first time it was seen.';

CREATE TABLE mail.attachment_parts (
    mailmeta_id   uuid    NOT NULL REFERENCES mail.messages (mailmeta_id) ON DELETE CASCADE,
    attachment_no integer NOT NULL CHECK (attachment_no > 0),
    part          text,
    filename      text,
    content_type  text,
    disposition   text,
    size_bytes    bigint  CHECK (size_bytes >= 0),
    sha256        bytea   REFERENCES mail.attachment_blobs (sha256),
    PRIMARY KEY (mailmeta_id, attachment_no)
);
CREATE INDEX attachment_parts_sha256_idx ON mail.attachment_parts (sha256);
COMMENT ON TABLE mail.attachment_parts IS
    'The attachments of each message, numbered in document order; sha256 refers to the deduplicated content (NULL when the document gave no valid hash).';
COMMENT ON COLUMN mail.attachment_parts.part IS 'IMAP section path of the part, e.g. 1.2.';

CREATE TABLE mail.thread_links (
    message_id text PRIMARY KEY,
    thread_id  uuid NOT NULL
);
CREATE INDEX thread_links_thread_id_idx ON mail.thread_links (thread_id);
COMMENT ON TABLE mail.thread_links IS
    'Every message id (without angle brackets) that a recorded message carries or refers to, and the thread it belongs to.';

REVOKE ALL ON mail.messages, mail.message_recipients, mail.user_messages,
              mail.attachment_blobs, mail.attachment_parts, mail.thread_links
    FROM PUBLIC;
GRANT SELECT ON mail.messages, mail.message_recipients, mail.user_messages,
                mail.attachment_blobs, mail.attachment_parts, mail.thread_links
    TO mailmeta_admin;

-- ---------------------------------------------------------------- helpers

-- Lenient conversions: hostile values become NULL instead of failing the
-- whole record.
CREATE FUNCTION mail.parse_timestamptz(value text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    -- Only RFC 3339 with an explicit offset: never PostgreSQL's 'now',
    -- 'epoch' or 'infinity', never a value read in the session's time zone.
    IF parse_timestamptz.value IS NULL
       OR parse_timestamptz.value !~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?([Zz]|[+-]\d\d(:?\d\d)?)$' THEN
        RETURN NULL;
    END IF;
    RETURN parse_timestamptz.value::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION mail.parse_timestamptz(text) IS
    'Internal: an RFC 3339 date-time with offset (Z or +hh:mm) as timestamptz; NULL for anything else, impossible dates included.';

CREATE FUNCTION mail.parse_inet(value text) RETURNS inet
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF parse_inet.value IS NULL OR parse_inet.value !~ '^[0-9A-Fa-f:.]{2,45}$' THEN
        RETURN NULL;
    END IF;
    RETURN parse_inet.value::inet;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION mail.parse_inet(text) IS
    'Internal: an IPv4 or IPv6 address as inet; NULL for anything else.';

CREATE FUNCTION mail.json_bigint(value jsonb) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    RETURN CASE WHEN jsonb_typeof(json_bigint.value) = 'number'
                 AND (json_bigint.value #>> '{}')::numeric BETWEEN 0 AND 9223372036854775807
                THEN trunc((json_bigint.value #>> '{}')::numeric)::bigint END;
END
$$;
COMMENT ON FUNCTION mail.json_bigint(jsonb) IS
    'Internal: a non-negative JSON number as bigint; NULL for anything else.';

-- A message id as stored: without angle brackets and surrounding blanks, at
-- most 512 characters (it is an index key), NULL when empty.
CREATE FUNCTION mail.clean_message_id(value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    RETURN nullif(left(btrim(clean_message_id.value, E' \t\r\n<>'), 512), '');
END
$$;
COMMENT ON FUNCTION mail.clean_message_id(text) IS
    'Internal: a message id without angle brackets and blanks, cut to 512 characters; NULL when empty.';

-- The ids of a JSON array of message ids: cleaned, duplicates removed, in
-- order, keeping the first id and the last (max_ids - 1).
CREATE FUNCTION mail.message_id_list(ids jsonb, max_ids integer) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(message_id_list.ids) IS DISTINCT FROM 'array'
       OR jsonb_array_length(message_id_list.ids) = 0 THEN
        RETURN '{}';
    END IF;
    RETURN (
        WITH e AS (
            SELECT mail.clean_message_id(x.value) AS id, x.ord
              FROM jsonb_array_elements_text(message_id_list.ids) WITH ORDINALITY AS x (value, ord)
        ), d AS (
            SELECT e.id, min(e.ord) AS first_ord FROM e WHERE e.id IS NOT NULL GROUP BY e.id
        ), n AS (
            SELECT d.id, d.first_ord,
                   row_number() OVER (ORDER BY d.first_ord) AS rn, count(*) OVER () AS cnt
              FROM d
        )
        SELECT coalesce(array_agg(n.id ORDER BY n.first_ord), '{}')
          FROM n
         WHERE n.rn = 1 OR n.rn > n.cnt - (message_id_list.max_ids - 1));
END
$$;
COMMENT ON FUNCTION mail.message_id_list(jsonb, integer) IS
    'Internal: the message ids of a JSON array, cleaned (see clean_message_id), duplicates removed, in order; only the first one and those among the last max_ids - 1 positions are kept.';

-- Why a metadata document cannot be recorded, or NULL when it can.
CREATE FUNCTION mail.metadata_problem(doc jsonb) RETURNS text
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
    IF doc->>'direction' NOT IN ('inbound', 'outbound', 'local') THEN
        RETURN format('direction %s is not one of inbound, outbound, local',
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
    'Internal: why a metadata document breaks the contract (doc/metadata-record.md: version 1, required keys and their types, mailmeta_id a UUID, received_at RFC 3339, known direction and action, recipients with addresses), or NULL when it can be recorded.';

-- The local users each recipient reaches, following Postfix's virtual alias
-- expansion: user -> itself; alias -> its destinations, recursively; other
-- address of a domain with a catch-all -> the catch-all's destinations.
CREATE FUNCTION mail.local_recipients(addresses text[])
    RETURNS TABLE (rcpt text, user_id bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE walk (rcpt, addr, depth) AS (
        SELECT r, lower(btrim(r, E' \t\r\n')), 0
          FROM unnest(local_recipients.addresses) AS r
        UNION
        SELECT w.rcpt, ad.destination, w.depth + 1
          FROM walk w
          CROSS JOIN LATERAL (
              SELECT a.alias_id
                FROM mail.aliases a
               WHERE a.address IN (w.addr, '@' || split_part(w.addr, '@', 2))
               ORDER BY a.address LIKE '@%'   -- the exact alias before the catch-all
               LIMIT 1) a
          JOIN mail.alias_destinations ad ON ad.alias_id = a.alias_id
         WHERE w.depth < 10
           AND NOT EXISTS (SELECT FROM mail.users u WHERE u.address = w.addr)
    )
    SELECT DISTINCT w.rcpt, u.user_id
      FROM walk w
      JOIN mail.users u ON u.address = w.addr;
END
$$;
COMMENT ON FUNCTION mail.local_recipients(text[]) IS
    'The local users each envelope recipient reaches: an address that is a user (trimmed, lowercased) reaches that user; an alias reaches what its destinations reach, recursively, at most 10 levels deep; any other address of a domain with a catch-all reaches what the catch-all reaches; outside and unknown addresses reach nobody. Disabled users are reached (they still receive mail).';

CREATE FUNCTION mail.lock_message_ids(message_ids text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    -- 1835623539 = 'mids' in ASCII. Keys are taken in sorted order, so
    -- recorders never deadlock on these locks.
    PERFORM pg_advisory_xact_lock(1835623539, k)
       FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest(lock_message_ids.message_ids) AS x
              ORDER BY 1) s;
END
$$;
COMMENT ON FUNCTION mail.lock_message_ids(text[]) IS
    'Internal: takes the transaction-level advisory locks of these message ids, in a fixed order.';

-- The thread a message joins (see the header of this file). Must run in READ
-- COMMITTED: every statement re-reads what concurrent recorders committed
-- while this one waited for their locks.
CREATE FUNCTION mail.assign_thread(mailmeta_id uuid, message_ids text[]) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_threads uuid[];
    v_locked  uuid[] := '{}';
    v_new     uuid[];
    v_thread  uuid;
BEGIN
    IF coalesce(cardinality(assign_thread.message_ids), 0) = 0 THEN
        RETURN assign_thread.mailmeta_id;
    END IF;
    -- Nobody else registers or reads these ids until we commit.
    PERFORM mail.lock_message_ids(assign_thread.message_ids);
    -- Lock the threads they belong to; a merge that committed while we
    -- waited may have moved them, so re-read until every thread is locked.
    -- A thread's members change only under its lock.
    LOOP
        SELECT array_agg(DISTINCT t.thread_id ORDER BY t.thread_id) INTO v_threads
          FROM mail.thread_links t
         WHERE t.message_id = ANY (assign_thread.message_ids);
        SELECT array_agg(x ORDER BY x) INTO v_new
          FROM unnest(v_threads) AS x
         WHERE x <> ALL (v_locked);
        EXIT WHEN v_new IS NULL;
        -- 1953002084 = 'thrd' in ASCII.
        PERFORM pg_advisory_xact_lock(1953002084, k)
           FROM (SELECT DISTINCT hashtext(x::text) AS k FROM unnest(v_new) AS x ORDER BY 1) s;
        v_locked := v_locked || v_new;
    END LOOP;

    IF v_threads IS NULL THEN
        v_thread := assign_thread.mailmeta_id;
    ELSE
        v_thread := v_threads[1];
        IF cardinality(v_threads) > 1 THEN
            UPDATE mail.thread_links t SET thread_id = v_thread
             WHERE t.thread_id = ANY (v_threads[2:]);
            UPDATE mail.messages m SET thread_id = v_thread
             WHERE m.thread_id = ANY (v_threads[2:]);
            UPDATE mail.user_messages um SET thread_id = v_thread
             WHERE um.thread_id = ANY (v_threads[2:]);
        END IF;
    END IF;
    INSERT INTO mail.thread_links (message_id, thread_id)
    SELECT DISTINCT x, v_thread FROM unnest(assign_thread.message_ids) AS x
    ON CONFLICT (message_id) DO NOTHING;
    RETURN v_thread;
END
$$;
COMMENT ON FUNCTION mail.assign_thread(uuid, text[]) IS
    'Internal: registers the message ids a message mentions and returns its thread: the one those ids belong to; the smallest, after merging the others into it, when they belong to several; the message''s own mailmeta_id when none is known yet or it mentions none.';

-- ---------------------------------------------------------------- recording

CREATE FUNCTION mail.record_message(doc jsonb) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_problem  text := mail.metadata_problem(record_message.doc);
    v_id       uuid;
    v_h        jsonb;
    v_received timestamptz;
    v_msgid    text;
    v_irt      text[];
    v_refs     text[];
    v_rcpts    text[];
    v_thread   uuid;
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid metadata document%: %',
                coalesce(' ' || left(record_message.doc->>'mailmeta_id', 80), ''), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'mail.record_message must run at isolation level READ COMMITTED, not %',
                upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    v_id := (record_message.doc->>'mailmeta_id')::uuid;
    IF EXISTS (SELECT FROM mail.messages m WHERE m.mailmeta_id = v_id) THEN
        RETURN v_id;                                 -- replayed: already recorded
    END IF;

    v_h := record_message.doc->'headers';
    v_received := mail.parse_timestamptz(record_message.doc->>'received_at');
    v_msgid := mail.clean_message_id(v_h->>'message_id');
    v_irt := mail.message_id_list(v_h->'in_reply_to', 10);
    v_refs := mail.message_id_list(v_h->'references', 20);
    v_thread := mail.assign_thread(v_id,
        ARRAY(SELECT DISTINCT x FROM unnest(v_msgid || v_irt || v_refs) AS x WHERE x IS NOT NULL));

    INSERT INTO mail.messages (
        mailmeta_id, queue_id, received_at, direction,
        client_ip, client_name, helo, tls_version, tls_cipher, sasl_user, env_from, size_bytes,
        subject, header_from, addresses, sent_at, date_raw, message_id, in_reply_to,
        reference_ids, list_id, auto_submitted, malformed, malformed_reasons,
        action, reason, thread_id, parts, attachment_count)
    SELECT v_id, left(d->>'queue_id', 512), v_received, d->>'direction',
           mail.parse_inet(d #>> '{client,ip}'), d #>> '{client,name}', d #>> '{client,helo}',
           d #>> '{tls,version}', d #>> '{tls,cipher}', d->>'sasl_user',
           left(d->>'env_from', 512), mail.json_bigint(d->'size_bytes'),
           v_h->>'subject',
           CASE WHEN jsonb_typeof(v_h->'from') = 'array' THEN v_h->'from'->0->>'address' END,
           jsonb_build_object('from', coalesce(v_h->'from', '[]'),
                              'sender', coalesce(v_h->'sender', '[]'),
                              'reply_to', coalesce(v_h->'reply_to', '[]'),
                              'to', coalesce(v_h->'to', '[]'),
                              'cc', coalesce(v_h->'cc', '[]')),
           mail.parse_timestamptz(v_h->>'date'), v_h->>'date_raw', v_msgid, v_irt, v_refs,
           v_h->>'list_id', v_h->>'auto_submitted',
           coalesce((d->'malformed') = 'true'::jsonb, false),
           ARRAY(SELECT jsonb_array_elements_text(
                     CASE WHEN jsonb_typeof(d->'malformed_reasons') = 'array'
                          THEN d->'malformed_reasons' ELSE '[]' END)),
           d->>'action', d->>'reason', v_thread, d->'parts', jsonb_array_length(d->'attachments')
      FROM (SELECT record_message.doc AS d) s
    ON CONFLICT (mailmeta_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN v_id;                                 -- a concurrent replay won
    END IF;

    v_rcpts := ARRAY(SELECT DISTINCT left(r->>'address', 512)
                       FROM jsonb_array_elements(record_message.doc->'recipients') AS r);
    INSERT INTO mail.message_recipients (mailmeta_id, rcpt, received_at, user_id)
    SELECT v_id, r, v_received, u.user_id
      FROM unnest(v_rcpts) AS r
      LEFT JOIN mail.users u ON u.address = lower(btrim(r, E' \t\r\n'));

    INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
    SELECT DISTINCT l.user_id, v_id, v_received, v_thread
      FROM mail.local_recipients(v_rcpts) AS l
     ORDER BY 1;

    IF jsonb_array_length(record_message.doc->'attachments') > 0 THEN
        INSERT INTO mail.attachment_blobs AS b (sha256, size_bytes, content_type, ref_count)
        SELECT t.sha256, min(t.size_bytes), min(t.content_type), count(*)
          FROM (SELECT decode(a->>'sha256', 'hex') AS sha256,
                       mail.json_bigint(a->'size_bytes') AS size_bytes,
                       lower(a->>'content_type') AS content_type
                  FROM jsonb_array_elements(record_message.doc->'attachments') AS a
                 WHERE a->>'sha256' ~* '^[0-9a-f]{64}$') t
         GROUP BY t.sha256
         ORDER BY t.sha256
        ON CONFLICT (sha256) DO UPDATE SET ref_count = b.ref_count + excluded.ref_count;
        INSERT INTO mail.attachment_parts (mailmeta_id, attachment_no, part, filename,
                                           content_type, disposition, size_bytes, sha256)
        SELECT v_id, a.ord, left(a.e->>'part', 512), a.e->>'filename', lower(a.e->>'content_type'),
               lower(a.e->>'disposition'), mail.json_bigint(a.e->'size_bytes'),
               CASE WHEN a.e->>'sha256' ~* '^[0-9a-f]{64}$' THEN decode(a.e->>'sha256', 'hex') END
          FROM jsonb_array_elements(record_message.doc->'attachments') WITH ORDINALITY AS a (e, ord);
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION mail.record_message(jsonb) IS
    'Records one message metadata document (doc/metadata-record.md) and returns its mailmeta_id. Idempotent: a document whose mailmeta_id is already recorded adds nothing. Raises 22023 when the document breaks the contract (nothing is stored), 25000 outside READ COMMITTED. Concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

CREATE FUNCTION mail.record_messages(docs jsonb) RETURNS SETOF uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_doc     jsonb;
    v_no      bigint;
    v_problem text;
BEGIN
    IF docs IS NULL OR jsonb_typeof(docs) <> 'array' THEN
        RAISE EXCEPTION 'record_messages wants a JSON array of metadata documents, not %',
                coalesce(jsonb_typeof(docs), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Refuse the whole batch before storing anything.
    FOR v_doc, v_no IN SELECT e, ord FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) LOOP
        v_problem := mail.metadata_problem(v_doc);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION 'invalid metadata document % of %: %', v_no,
                    jsonb_array_length(docs) || coalesce(' (' || left(v_doc->>'mailmeta_id', 80) || ')', ''),
                    v_problem
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    -- Take every message id lock of the batch up front, in one order, so
    -- that concurrent batches cannot deadlock on them.
    PERFORM mail.lock_message_ids(ARRAY(
        SELECT mail.clean_message_id(x) FROM jsonb_array_elements(docs) AS e,
               LATERAL (SELECT e->'headers'->>'message_id'
                        UNION ALL SELECT unnest(mail.message_id_list(e->'headers'->'in_reply_to', 10))
                        UNION ALL SELECT unnest(mail.message_id_list(e->'headers'->'references', 20))) AS i (x)
         WHERE mail.clean_message_id(x) IS NOT NULL));
    FOR v_doc IN SELECT e FROM jsonb_array_elements(docs) AS e LOOP
        RETURN NEXT mail.record_message(v_doc);
    END LOOP;
END
$$;
COMMENT ON FUNCTION mail.record_messages(jsonb) IS
    'Records a JSON array of metadata documents in one transaction, as record_message does each, and returns their mailmeta_ids in order. Raises 22023 naming the first bad document, and then stores none of them.';

-- ---------------------------------------------------------------- reporting

CREATE VIEW mail.message_log AS
    SELECT m.mailmeta_id, m.queue_id, m.received_at, m.direction,
           m.client_ip, m.client_name, m.helo, m.tls_version, m.tls_cipher,
           m.sasl_user, m.env_from, r.rcpt,
           m.header_from, m.subject, m.message_id, m.sent_at, m.size_bytes,
           m.thread_id, m.attachment_count, m.malformed, m.action, m.reason
      FROM mail.messages m
      LEFT JOIN mail.message_recipients r ON r.mailmeta_id = m.mailmeta_id;
COMMENT ON VIEW mail.message_log IS
    'Message tracking: one row per message and envelope recipient (a message without recipients has one row with rcpt NULL). Columns: mailmeta_id (X-Mailmeta-ID), queue_id (Postfix queue id), received_at (end of message at the milter), direction (inbound/outbound/local), client_ip, client_name, helo, tls_version, tls_cipher (NULL without TLS), sasl_user (authenticated submitter), env_from (envelope sender, empty for <>), rcpt (envelope recipient as given), header_from (first From address), subject (decoded), message_id (without <>), sent_at (Date header, NULL when unparseable), size_bytes (raw size), thread_id (conversation), attachment_count, malformed, action (accept/tempfail/reject/discard/hold), reason.';

CREATE VIEW mail.message_attachments AS
    SELECT p.mailmeta_id, p.part, p.filename, p.content_type, p.disposition, p.size_bytes,
           encode(p.sha256, 'hex') AS sha256
      FROM mail.attachment_parts p;
COMMENT ON VIEW mail.message_attachments IS
    'Attachments of each message: mailmeta_id, part (IMAP section path), filename (decoded), content_type and disposition (lowercase), size_bytes and sha256 (lowercase hex) of the decoded content.';

REVOKE ALL ON mail.message_log, mail.message_attachments FROM PUBLIC;
GRANT SELECT ON mail.message_log, mail.message_attachments TO mailmeta_admin;

CREATE FUNCTION mail.trace_queue_id(queue_id text) RETURNS SETOF mail.message_log
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT l.* FROM mail.message_log l
     WHERE l.queue_id = btrim($1)
     ORDER BY l.received_at, l.mailmeta_id, l.rcpt
$$;
COMMENT ON FUNCTION mail.trace_queue_id(text) IS
    'message_log rows of the messages with this Postfix queue id.';

CREATE FUNCTION mail.trace_message_id(message_id text) RETURNS SETOF mail.message_log
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT l.* FROM mail.message_log l
     WHERE l.message_id = mail.clean_message_id($1)
     ORDER BY l.received_at, l.mailmeta_id, l.rcpt
$$;
COMMENT ON FUNCTION mail.trace_message_id(text) IS
    'message_log rows of the messages with this Message-ID, given with or without angle brackets.';

CREATE FUNCTION mail.trace_sender(address text,
                                  since timestamptz DEFAULT now() - interval '7 days',
                                  until timestamptz DEFAULT now())
    RETURNS SETOF mail.message_log
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT l.* FROM mail.message_log l
     WHERE lower(l.env_from) = lower(btrim($1, E' \t\r\n<>'))
       AND l.received_at BETWEEN $2 AND $3
     ORDER BY l.received_at, l.mailmeta_id, l.rcpt
$$;
COMMENT ON FUNCTION mail.trace_sender(text, timestamptz, timestamptz) IS
    'message_log rows of the messages whose envelope sender is this address (any case; '''' or ''<>'' for the null sender), received between since and until (inclusive; default the last 7 days).';

CREATE FUNCTION mail.trace_recipient(address text,
                                     since timestamptz DEFAULT now() - interval '7 days',
                                     until timestamptz DEFAULT now())
    RETURNS SETOF mail.message_log
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT l.* FROM mail.message_log l
     WHERE l.mailmeta_id IN (SELECT r.mailmeta_id FROM mail.message_recipients r
                              WHERE lower(r.rcpt) = lower(btrim($1, E' \t\r\n<>'))
                                AND r.received_at BETWEEN $2 AND $3)
       AND lower(l.rcpt) = lower(btrim($1, E' \t\r\n<>'))
     ORDER BY l.received_at, l.mailmeta_id, l.rcpt
$$;
COMMENT ON FUNCTION mail.trace_recipient(text, timestamptz, timestamptz) IS
    'message_log rows for this envelope recipient (any case, as given: an alias is traced by the alias address), received between since and until (inclusive; default the last 7 days).';

CREATE FUNCTION mail.trace_time(since timestamptz, until timestamptz DEFAULT now())
    RETURNS SETOF mail.message_log
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT l.* FROM mail.message_log l
     WHERE l.received_at BETWEEN $1 AND $2
     ORDER BY l.received_at, l.mailmeta_id, l.rcpt
$$;
COMMENT ON FUNCTION mail.trace_time(timestamptz, timestamptz) IS
    'message_log rows of the messages received between since and until (inclusive; until defaults to now).';

-- ---------------------------------------------------------------- privileges

REVOKE ALL ON FUNCTION
    mail.parse_timestamptz(text), mail.parse_inet(text), mail.json_bigint(jsonb),
    mail.clean_message_id(text), mail.message_id_list(jsonb, integer),
    mail.metadata_problem(jsonb), mail.local_recipients(text[]),
    mail.lock_message_ids(text[]), mail.assign_thread(uuid, text[]),
    mail.record_message(jsonb), mail.record_messages(jsonb),
    mail.trace_queue_id(text), mail.trace_message_id(text),
    mail.trace_sender(text, timestamptz, timestamptz),
    mail.trace_recipient(text, timestamptz, timestamptz),
    mail.trace_time(timestamptz, timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mail.record_message(jsonb), mail.record_messages(jsonb)
    TO mailmeta_milter;
GRANT EXECUTE ON FUNCTION
    mail.trace_queue_id(text), mail.trace_message_id(text),
    mail.trace_sender(text, timestamptz, timestamptz),
    mail.trace_recipient(text, timestamptz, timestamptz),
    mail.trace_time(timestamptz, timestamptz),
    mail.local_recipients(text[])
    TO mailmeta_admin;
