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
--   mail.attachment_blobs    attachment contents by SHA-256, stored once
--                            (how many parts refer to one is counted from
--                            attachment_parts when needed, never kept as a
--                            counter that every message would update)
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
-- same time always end in one thread. Recorders of unrelated messages share
-- no lock and no row: a new conversation costs one index probe on
-- thread_links and one insert per id.
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
COMMENT ON COLUMN mail.messages.direction IS 'inbound (unauthenticated SMTP), outbound (authenticated or local submission with an outside recipient), local (authenticated or local submission, every recipient local: by Postfix transport, or by domain when the writer could not tell).';
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
CREATE INDEX user_messages_mailmeta_id_idx ON mail.user_messages (mailmeta_id);
-- Indexes cost every recorded message: user_messages has its key (a user's
-- messages), received_at (a mailbox listed by date) and mailmeta_id (the
-- message's rows: deletes cascading from mail.messages, thread merges,
-- which find the messages by mail.messages.thread_id).
COMMENT ON TABLE mail.user_messages IS
    'One row per local user a message reaches, directly, through aliases or through a catch-all. Leads with user_id: per-user queries never cross users.';

CREATE TABLE mail.attachment_blobs (
    sha256       bytea       PRIMARY KEY CHECK (length(sha256) = 32),
    size_bytes   bigint      CHECK (size_bytes >= 0),
    content_type text,
    first_seen   timestamptz NOT NULL DEFAULT now()
);
-- No reference counter: one on a popular attachment (a logo in every
-- signature) would make every recorder update, and row-lock, the same row.
-- Recorders insert a blob only when it is new (ON CONFLICT DO NOTHING); its
-- references are the attachment_parts rows with its sha256 (indexed), and a
-- garbage collection that removes unreferenced blobs counts them there.
COMMENT ON TABLE mail.attachment_blobs IS
    'Attachment contents seen so far, once per SHA-256 of the decoded content (the content itself is not stored). Never updated by recording: the references to a blob are the mail.attachment_parts rows with its sha256 (count them there).';
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
-- Finds the references to a blob (its reference count, garbage collection).
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
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT CASE WHEN jsonb_typeof(value) = 'number'
                 AND (value #>> '{}')::numeric BETWEEN 0 AND 9223372036854775807
                THEN trunc((value #>> '{}')::numeric)::bigint END
$$;
COMMENT ON FUNCTION mail.json_bigint(jsonb) IS
    'Internal: a non-negative JSON number as bigint; NULL for anything else.';

-- A message id as stored: without angle brackets and surrounding blanks, at
-- most 512 characters (it is an index key), NULL when empty.
CREATE FUNCTION mail.clean_message_id(value text) RETURNS text
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT nullif(left(btrim(value, E' \t\r\n<>'), 512), '')
$$;
COMMENT ON FUNCTION mail.clean_message_id(text) IS
    'Internal: a message id without angle brackets and blanks, cut to 512 characters; NULL when empty.';

-- The ids of a JSON array of message ids: cleaned, duplicates removed, in
-- order, keeping the first id and the last (max_ids - 1).
CREATE FUNCTION mail.message_id_list_all(ids jsonb, max_ids integer) RETURNS text[]
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT coalesce(array_agg(n.id ORDER BY n.first_ord), '{}')
      FROM (SELECT d.id, d.first_ord,
                   row_number() OVER (ORDER BY d.first_ord) AS rn, count(*) OVER () AS cnt
              FROM (SELECT mail.clean_message_id(x.value) AS id, min(x.ord) AS first_ord
                      FROM jsonb_array_elements_text(ids) WITH ORDINALITY AS x (value, ord)
                     GROUP BY 1) d
             WHERE d.id IS NOT NULL) n
     WHERE n.rn = 1 OR n.rn > n.cnt - (max_ids - 1)
$$;
COMMENT ON FUNCTION mail.message_id_list_all(jsonb, integer) IS
    'Internal: message_id_list of an array of any length.';

CREATE FUNCTION mail.message_id_list(ids jsonb, max_ids integer) RETURNS text[]
    LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT CASE
        WHEN jsonb_typeof(ids) IS DISTINCT FROM 'array' OR jsonb_array_length(ids) = 0 THEN '{}'::text[]
        WHEN jsonb_array_length(ids) = 1 THEN
            CASE WHEN mail.clean_message_id(ids->>0) IS NULL THEN '{}'::text[]
                 ELSE ARRAY[mail.clean_message_id(ids->>0)] END
        ELSE mail.message_id_list_all(ids, max_ids)
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
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    WITH RECURSIVE walk (rcpt, addr, depth) AS (
        SELECT r, lower(btrim(r, E' \t\r\n')), 0
          FROM unnest(addresses) AS r
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
      JOIN mail.users u ON u.address = w.addr
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

-- ---------------------------------------------------------------- recording

-- mail.record_messages stores a whole batch with one statement per table
-- (not one per document):
--
--   1. one pass validates every document (the checks of metadata_problem as one expression; metadata_problem
--      only explains the first bad one) and lists the documents to store --
--      the first occurrence of each mailmeta_id not recorded yet -- and the
--      message ids each mentions;
--   2. the advisory locks of all those message ids, in one sorted order,
--      then the advisory locks of the threads they already belong to (one
--      index probe per id on thread_links; none in the common case of a new
--      conversation), re-read until a concurrent merge moved nothing more;
--   3. threads computed for the whole batch at once: documents sharing an
--      id, or ids of one known thread, form a conversation, whose thread is
--      the smallest of the known threads and of the mailmeta_ids of the
--      documents that started it (mentioning only ids unknown so far) --
--      what recording the documents one by one in order gives; known
--      threads that lose are merged;
--   4. one INSERT each into thread_links, messages, message_recipients with
--      user_messages (the batch's recipients resolved by one
--      local_recipients call), attachment_blobs (ON CONFLICT DO NOTHING:
--      a popular attachment is never updated nor row-locked) and
--      attachment_parts.
CREATE FUNCTION mail.record_messages(docs jsonb) RETURNS SETOF uuid
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
            AND x.e->>'direction' IN ('inbound', 'outbound', 'local')
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

    RETURN QUERY SELECT (x.e->>'mailmeta_id')::uuid
                   FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) ORDER BY x.ord;
END
$$;
COMMENT ON FUNCTION mail.record_messages(jsonb) IS
    'Records a JSON array of metadata documents (doc/metadata-record.md) in one transaction and returns their mailmeta_ids in order. Idempotent: a document whose mailmeta_id is already recorded (or repeated in the batch) adds nothing. Raises 22023 naming the first bad document, and then stores none of them; 25000 outside READ COMMITTED. Concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

CREATE FUNCTION mail.record_message(doc jsonb) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    v_problem := mail.metadata_problem(record_message.doc);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid metadata document%: %',
                coalesce(' ' || left(record_message.doc->>'mailmeta_id', 80), ''), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN (SELECT x FROM mail.record_messages(jsonb_build_array(record_message.doc)) AS x LIMIT 1);
END
$$;
COMMENT ON FUNCTION mail.record_message(jsonb) IS
    'Records one message metadata document (doc/metadata-record.md) and returns its mailmeta_id, as record_messages does for a batch of one. Idempotent: a document whose mailmeta_id is already recorded adds nothing. Raises 22023 when the document breaks the contract (nothing is stored), 25000 outside READ COMMITTED. Concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

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
    mail.message_id_list_all(jsonb, integer),
    mail.metadata_problem(jsonb), mail.local_recipients(text[]),
    mail.lock_message_ids(text[]),
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
