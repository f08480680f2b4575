-- 0011_record_path_speed.sql — the mirror's write path costs less
-- database CPU.
--
-- Measured with tests/bench/mirror-bench.sh and pg_stat_user_functions
-- (track_functions = all), the database spent most of the mirror's share
-- storing the records of messages that never passed the milter, and two
-- parts of that were pure overhead:
--
--   * mail.parse_timestamptz, PL/pgSQL, runs about five times per stored
--     message (checking and storing its record, and its mirror row), at
--     about 5.7 µs a call against 0.5 µs for the cast itself.  It becomes
--     an SQL function that the planner inlines, which saves the PL/pgSQL
--     call and the subtransaction of its exception block (4.1 µs a call;
--     most of what remains is PostgreSQL's regular expression engine): a
--     value of the usual shape, whose cast cannot fail (a day up to 28, an
--     hour up to 23, an offset up to 14 hours), is cast directly; any
--     other value goes to mail.parse_timestamptz_strict, the function as
--     it was.  Same results for every input;
--   * mail.record_mailbox_messages rebuilt every document to null its
--     envelope keys (queue_id, client, tls, sasl_user, env_from), which
--     the syncer always sends as null: about 30 µs per document.  It now
--     rebuilds only a batch in which one of them is not null;
--   * mail.record_messages ran its statements for recipients and for the
--     sender's contacts on every batch: for the records built from
--     mailboxes, which have neither, about 18 µs per document of work that
--     found nothing to do.  It now skips them when no new document has
--     recipients or was sent.  The milter's records are stored as before;
--   * checking an attachment's SHA-256 with a case-insensitive regular
--     expression cost 13 µs, three times as much as checking its length
--     and its characters (about 30 µs per message with three attachments).

SET LOCAL ROLE mailmeta_owner;

CREATE FUNCTION mail.parse_timestamptz_strict(value text) RETURNS timestamptz
    LANGUAGE plpgsql STABLE
AS $$
BEGIN
    -- Only RFC 3339 with an explicit offset: never PostgreSQL's 'now',
    -- 'epoch' or 'infinity', never a value read in the session's time zone.
    IF parse_timestamptz_strict.value IS NULL
       OR parse_timestamptz_strict.value !~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?([Zz]|[+-]\d\d(:?\d\d)?)$' THEN
        RETURN NULL;
    END IF;
    RETURN parse_timestamptz_strict.value::timestamptz;
EXCEPTION WHEN data_exception THEN
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION mail.parse_timestamptz_strict(text) IS
    'Internal: mail.parse_timestamptz for values outside its fast path: an RFC 3339 date-time with offset (Z or +hh:mm) as timestamptz; NULL for anything else, impossible dates included.';
REVOKE ALL ON FUNCTION mail.parse_timestamptz_strict(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION mail.parse_timestamptz(value text) RETURNS timestamptz
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN $1 ~ '^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])[Tt ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?([Zz]|[+-](0\d|1[0-4])(:?[0-5]\d)?)$'
                THEN $1::timestamptz
                ELSE mail.parse_timestamptz_strict($1) END
$$;
COMMENT ON FUNCTION mail.parse_timestamptz(text) IS
    'Internal: an RFC 3339 date-time with offset (Z or +hh:mm) as timestamptz; NULL for anything else, impossible dates included.';

REVOKE ALL ON FUNCTION mail.parse_timestamptz(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION mail.record_mailbox_messages(address text, docs jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_user_id bigint := mail.user_id_of(record_mailbox_messages.address);
    v_doc     jsonb;
    v_no      bigint;
    v_problem text;
    v_mids    uuid[];
BEGIN
    IF docs IS NULL OR jsonb_typeof(docs) <> 'array' THEN
        RAISE EXCEPTION 'record_mailbox_messages wants a JSON array of metadata documents, not %',
                coalesce(jsonb_typeof(docs), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- What only a mailbox record must be; record_messages checks the rest
    -- and refuses the whole batch before storing anything.
    FOR v_doc, v_no IN SELECT x.e, x.ord FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord)
         WHERE NOT coalesce(jsonb_typeof(x.e) = 'object'
                            AND x.e->>'direction' = 'mailbox'
                            AND x.e->'recipients' = '[]'::jsonb, false)
         ORDER BY x.ord LIMIT 1 LOOP
        v_problem := mail.mailbox_document_problem(v_doc);
        RAISE EXCEPTION 'invalid metadata document % of %: %', v_no,
                jsonb_array_length(docs) || coalesce(' (' || left(v_doc->>'mailmeta_id', 80) || ')', ''),
                v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END LOOP;
    IF jsonb_array_length(docs) = 0 THEN
        RETURN;
    END IF;

    -- A mailbox record has no envelope.  The syncer sends these keys as
    -- null already; rebuilding every document to null them again cost as
    -- much as parsing the whole array, so only a batch that has one is
    -- rebuilt.
    IF EXISTS (SELECT FROM jsonb_array_elements(docs) AS x (e)
                WHERE x.e->>'queue_id' IS NOT NULL OR x.e->>'client' IS NOT NULL
                   OR x.e->>'tls' IS NOT NULL OR x.e->>'sasl_user' IS NOT NULL
                   OR x.e->>'env_from' IS NOT NULL) THEN
        docs := (SELECT jsonb_agg(x.e || '{"queue_id": null, "client": null, "tls": null,
                                           "sasl_user": null, "env_from": null}' ORDER BY x.ord)
                   FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord));
    END IF;
    PERFORM mail.record_messages(docs);
    SELECT array_agg(DISTINCT (x.e->>'mailmeta_id')::uuid) INTO v_mids
      FROM jsonb_array_elements(docs) AS x (e);

    -- The user's rows, under the locks of the messages' threads.
    PERFORM mail.lock_threads_of(v_mids);
    INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
    SELECT v_user_id, m.mailmeta_id, m.received_at, m.thread_id
      FROM mail.messages m WHERE m.mailmeta_id = ANY (v_mids)
    ON CONFLICT (user_id, mailmeta_id) DO NOTHING;

    PERFORM mail.collect_sent_contacts(v_user_id, array_agg(DISTINCT mm.mailmeta_id))
       FROM mail.mailbox_messages mm
       JOIN mail.folders f ON f.folder_id = mm.folder_id
      WHERE mm.user_id = v_user_id AND mm.mailmeta_id = ANY (v_mids)
        AND mail.is_sent_folder(f.special_use)
     HAVING count(*) > 0;
END
$$;
COMMENT ON FUNCTION mail.record_mailbox_messages(text, jsonb) IS
    'Mirror: record_mailbox_message for a JSON array of documents at once (each as that function wants it). The whole array is refused before anything is stored: 22023 names the first bad document ("invalid metadata document N of M (id): why"); P0002 unknown user; 25000 outside READ COMMITTED; concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';

CREATE OR REPLACE FUNCTION mail.record_messages(docs jsonb) RETURNS SETOF uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET plan_cache_mode = force_generic_plan
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
    v_envelopes    boolean;    -- whether a document to store has recipients
    v_sent         boolean;    -- ... or was sent (outbound, local)
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

    -- A record built from a mailbox has no envelope: no recipients and
    -- no contacts to count.
    SELECT coalesce(bool_or(jsonb_array_length(d->'recipients') > 0), false),
           coalesce(bool_or(d->>'direction' IN ('outbound', 'local')), false)
      INTO v_envelopes, v_sent
      FROM unnest(v_ords) AS o (ord), LATERAL (SELECT docs->(o.ord::integer - 1) AS d) x;

    IF v_envelopes THEN
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
    END IF;

    WITH a AS (
        SELECT o.mid, a.e, a.no,
               -- 64 hex digits, either case: ~* '^[0-9a-f]{64}$' cost
               -- three times as much
               CASE WHEN length(a.e->>'sha256') = 64
                         AND ltrim(lower(a.e->>'sha256'), '0123456789abcdef') = ''
                    THEN decode(a.e->>'sha256', 'hex') END AS sha256
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
    IF v_sent THEN
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
    END IF;

    RETURN QUERY SELECT (x.e->>'mailmeta_id')::uuid
                   FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord) ORDER BY x.ord;
END
$$;
COMMENT ON FUNCTION mail.record_messages(jsonb) IS
    'Records a JSON array of metadata documents (doc/metadata-record.md) in one transaction and returns their mailmeta_ids in order. Idempotent: a document whose mailmeta_id is already recorded (or repeated in the batch) adds nothing. A new message a local user sent (outbound or local) and the milter accepted counts its envelope recipients in that user''s contacts. Raises 22023 naming the first bad document, and then stores none of them; 25000 outside READ COMMITTED. Concurrent recorders of one conversation may rarely meet a deadlock (40P01): retry.';
