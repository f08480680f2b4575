-- 0009_mailbox_records.sql — metadata records built from mailboxes: many
-- in one call, and replaced by the milter's own when that comes later.
--
-- Messages that never passed the milter (IMAP APPEND into Sent or Drafts,
-- imports, mail delivered straight to LMTP) get their metadata record from
-- the mirror's syncer.  It called mail.record_mailbox_message once per
-- message, and each call paid the fixed cost of mail.record_messages —
-- about 2.5 ms of backend CPU, most of it starting the executor for its
-- statements — against about 0.7 ms per document in batches of tens.  A
-- client appending messages one after another made the mirror cost more
-- CPU than the IMAP server itself.
--
-- mail.record_mailbox_messages(address, docs) takes an array: one
-- record_messages call for all of them, then the user's rows and the
-- contacts of those in Sent folders, set-based.  record_mailbox_message
-- keeps its signature and its errors, and now checks its one document and
-- hands it over, so both share one implementation.
--
-- The milter's record of a message can come after the mirror built one
-- from the mailbox: the milter journals while PostgreSQL is away and
-- replays when it is back, and the syncer waits for that only an hour
-- after delivery.  The first record of an id was kept, so a long outage
-- lost the envelope (sender, recipients, client, TLS, SASL, queue id) of
-- the mail it delivered.  mail.adopt_milter_records(docs), run by the
-- milter before record_messages in the same statement, now completes such
-- a record with the milter's envelope, recipients and decision: the
-- milter saw the message arrive, the mailbox only saw it stored.

SET LOCAL ROLE mailmeta_owner;

-- Locks the threads of these messages (the advisory locks record_messages
-- takes), re-reading until none moved: a merge that committed meanwhile
-- may have moved a message to another thread.  A thread's members change
-- only under its lock, so per-user rows added afterwards, in this
-- transaction, get the thread the message stays in.
CREATE FUNCTION mail.lock_threads_of(mailmeta_ids uuid[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_new    uuid[];
    v_locked uuid[] := '{}';
BEGIN
    LOOP
        SELECT array_agg(DISTINCT m.thread_id ORDER BY m.thread_id) INTO v_new
          FROM mail.messages m
         WHERE m.mailmeta_id = ANY (mailmeta_ids) AND m.thread_id <> ALL (v_locked);
        EXIT WHEN v_new IS NULL;
        -- 1953002084 = 'thrd' in ASCII, the key record_messages uses.
        PERFORM pg_advisory_xact_lock(1953002084, k)
           FROM (SELECT DISTINCT hashtext(x::text) AS k FROM unnest(v_new) AS x ORDER BY 1) s;
        v_locked := v_locked || v_new;
    END LOOP;
END
$$;
COMMENT ON FUNCTION mail.lock_threads_of(uuid[]) IS
    'Internal: takes the thread locks of these messages until none moved, for adding per-user rows.';

-- Why a document is not one record_mailbox_message(s) takes, or NULL.
CREATE FUNCTION mail.mailbox_document_problem(doc jsonb) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT coalesce(mail.metadata_problem($1),
        CASE WHEN $1->>'direction' <> 'mailbox'
             THEN format('direction %s is not mailbox', quote_literal(left($1->>'direction', 80)))
             WHEN jsonb_array_length($1->'recipients') > 0
             THEN 'recipients must be empty: a message found in a mailbox has no envelope' END)
$$;
COMMENT ON FUNCTION mail.mailbox_document_problem(jsonb) IS
    'Internal: why a document is not a mailbox record (metadata_problem, then direction mailbox and no recipients), or NULL.';

CREATE FUNCTION mail.record_mailbox_messages(address text, docs jsonb) RETURNS void
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

    PERFORM mail.record_messages(jsonb_agg(x.e || '{"queue_id": null, "client": null, "tls": null,
                                                      "sasl_user": null, "env_from": null}'
                                           ORDER BY x.ord))
       FROM jsonb_array_elements(docs) WITH ORDINALITY AS x (e, ord);
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

CREATE FUNCTION mail.adopt_milter_records(docs jsonb) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_mids uuid[];
    v_docs jsonb;
BEGIN
    -- Usually nothing: one index probe per document.  Only well-formed
    -- documents are adopted (checked after the probe: the CTE keeps the
    -- check from running for every document); record_messages, next in
    -- the same statement, refuses the batch for a bad one.
    WITH c AS MATERIALIZED (
        SELECT DISTINCT ON (m.mailmeta_id) m.mailmeta_id AS mid, x.e AS doc
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(docs) = 'array' THEN docs ELSE '[]' END)
                   WITH ORDINALITY AS x (e, ord)
          JOIN mail.messages m
            ON m.mailmeta_id = CASE WHEN jsonb_typeof(x.e) = 'object'
                                     AND x.e->>'mailmeta_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                                    THEN (x.e->>'mailmeta_id')::uuid END
         WHERE m.direction = 'mailbox'
         ORDER BY m.mailmeta_id, x.ord
    )
    SELECT array_agg(c.mid ORDER BY c.mid), jsonb_agg(c.doc ORDER BY c.mid) INTO v_mids, v_docs
      FROM c
     WHERE c.doc->>'direction' IN ('inbound', 'outbound', 'local')
       AND mail.metadata_problem(c.doc) IS NULL;
    IF v_mids IS NULL THEN
        RETURN docs;
    END IF;

    -- What the milter saw; the headers and parts (the same bytes, but for
    -- the X-Mailmeta-ID the milter added) stay as recorded.
    UPDATE mail.messages m
       SET queue_id = left(a.doc->>'queue_id', 512),
           received_at = mail.parse_timestamptz(a.doc->>'received_at'),
           direction = CASE WHEN a.doc->>'direction' = 'outbound'
                             AND jsonb_array_length(a.doc->'recipients') > 0
                             AND NOT EXISTS (
                                 SELECT 1 FROM jsonb_array_elements(a.doc->'recipients') r
                                  WHERE NOT EXISTS (
                                      SELECT 1 FROM mail.domains dm
                                       WHERE dm.domain = lower(split_part(r->>'address', '@', 2))))
                            THEN 'local' ELSE a.doc->>'direction' END,
           client_ip = mail.parse_inet(a.doc #>> '{client,ip}'),
           client_name = a.doc #>> '{client,name}',
           helo = a.doc #>> '{client,helo}',
           tls_version = a.doc #>> '{tls,version}',
           tls_cipher = a.doc #>> '{tls,cipher}',
           sasl_user = a.doc->>'sasl_user',
           env_from = left(a.doc->>'env_from', 512),
           action = a.doc->>'action',
           reason = a.doc->>'reason'
      FROM unnest(v_mids) WITH ORDINALITY AS a0 (mid, i),
           LATERAL (SELECT a0.mid, v_docs->(a0.i::integer - 1) AS doc) a
     WHERE m.mailmeta_id = a.mid;

    INSERT INTO mail.message_recipients (mailmeta_id, rcpt, received_at, user_id)
    SELECT DISTINCT m.mailmeta_id, left(r->>'address', 512), m.received_at, u.user_id
      FROM unnest(v_mids) WITH ORDINALITY AS a (mid, i)
      JOIN mail.messages m ON m.mailmeta_id = a.mid
     CROSS JOIN LATERAL jsonb_array_elements(v_docs->(a.i::integer - 1)->'recipients') AS r
      LEFT JOIN mail.users u ON u.address = lower(btrim(r->>'address', E' \t\r\n'))
    ON CONFLICT DO NOTHING;

    -- Every local recipient's row (aliases expanded), and the rows the
    -- mirror made now dated as the milter dated the message.
    PERFORM mail.lock_threads_of(v_mids);
    INSERT INTO mail.user_messages (user_id, mailmeta_id, received_at, thread_id)
    SELECT DISTINCT lr.user_id, mr.mailmeta_id, m.received_at, m.thread_id
      FROM mail.message_recipients mr
      JOIN mail.messages m ON m.mailmeta_id = mr.mailmeta_id
      JOIN mail.local_recipients(ARRAY(SELECT DISTINCT x.rcpt FROM mail.message_recipients x
                                        WHERE x.mailmeta_id = ANY (v_mids))) lr
        ON lr.rcpt = mr.rcpt
     WHERE mr.mailmeta_id = ANY (v_mids)
    ON CONFLICT (user_id, mailmeta_id) DO NOTHING;
    UPDATE mail.user_messages um
       SET received_at = m.received_at
      FROM mail.messages m
     WHERE m.mailmeta_id = ANY (v_mids) AND um.mailmeta_id = m.mailmeta_id
       AND um.received_at <> m.received_at;
    RETURN docs;
END
$$;
COMMENT ON FUNCTION mail.adopt_milter_records(jsonb) IS
    'Milter: for each well-formed document whose message was recorded only from a mailbox (direction mailbox, mail.record_mailbox_messages), completes that record with the document''s envelope, session, direction and decision, adds its recipients and their per-user rows; the headers, parts and thread stay. Returns docs unchanged, for mail.record_messages(mail.record_verdicts(mail.adopt_milter_records(docs))), which then keeps the completed record. Raises nothing for a malformed document (record_messages judges it).';

CREATE OR REPLACE FUNCTION mail.record_mailbox_message(address text, doc jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    -- an unknown user (P0002) is refused before the document is looked at
    v_user_id bigint := mail.user_id_of(record_mailbox_message.address);
    v_problem text := mail.mailbox_document_problem(record_mailbox_message.doc);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid metadata document%: %',
                coalesce(' ' || left(doc->>'mailmeta_id', 80), ''), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mail.record_mailbox_messages(address, jsonb_build_array(doc));
END
$$;

GRANT EXECUTE ON FUNCTION mail.record_mailbox_messages(text, jsonb) TO mailmeta_mirror;
GRANT EXECUTE ON FUNCTION mail.adopt_milter_records(jsonb) TO mailmeta_milter;
