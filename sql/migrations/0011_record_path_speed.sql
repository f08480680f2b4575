-- 0011_record_path_speed.sql — the mirror's write path costs less
-- database CPU.
--
-- Measured with tests/bench/mirror-bench.sh and pg_stat_user_functions
-- (track_functions = all), the database spent most of the mirror's share
-- storing the records of messages that never passed the milter, and two
-- parts of that were pure overhead:
--
--   * mail.parse_timestamptz, PL/pgSQL, ran about six times per stored
--     message (checking and storing its record, and its mirror row): some
--     6 µs a call, nearly all of it PL/pgSQL's call overhead and the
--     subtransaction of its exception block, against 0.2 µs for the cast
--     itself.  It becomes an SQL function that the planner inlines: a
--     value of the usual shape, whose cast cannot fail (a day up to 28, an
--     hour up to 23, an offset up to 14 hours), is cast directly; any
--     other value goes to mail.parse_timestamptz_strict, the function as
--     it was.  Same results for every input;
--   * mail.record_mailbox_messages rebuilt every document to null its
--     envelope keys (queue_id, client, tls, sasl_user, env_from), which
--     the syncer always sends as null: about 30 µs per document.  It now
--     rebuilds only a batch in which one of them is not null.

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
