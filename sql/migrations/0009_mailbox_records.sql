-- 0009_mailbox_records.sql — the mirror records the metadata of many
-- mailbox messages in one call.
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

SET LOCAL ROLE mailmeta_owner;

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
    v_new     uuid[];
    v_locked  uuid[] := '{}';
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
        v_problem := coalesce(mail.metadata_problem(v_doc),
            CASE WHEN v_doc->>'direction' <> 'mailbox'
                 THEN format('direction %s is not mailbox', quote_literal(left(v_doc->>'direction', 80)))
                 ELSE 'recipients must be empty: a message found in a mailbox has no envelope' END);
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

    -- The user's rows, under the locks of the messages' threads: a merge
    -- of a thread (record_messages) moves the rows it can see under the
    -- same lock, and a merge that committed meanwhile moved the thread, so
    -- re-read until every thread is locked.
    LOOP
        SELECT array_agg(DISTINCT m.thread_id ORDER BY m.thread_id) INTO v_new
          FROM mail.messages m
         WHERE m.mailmeta_id = ANY (v_mids) AND m.thread_id <> ALL (v_locked);
        EXIT WHEN v_new IS NULL;
        -- 1953002084 = 'thrd' in ASCII, the key record_messages uses.
        PERFORM pg_advisory_xact_lock(1953002084, k)
           FROM (SELECT DISTINCT hashtext(x::text) AS k FROM unnest(v_new) AS x ORDER BY 1) s;
        v_locked := v_locked || v_new;
    END LOOP;
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

CREATE OR REPLACE FUNCTION mail.record_mailbox_message(address text, doc jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    -- an unknown user (P0002) is refused before the document is looked at
    v_user_id bigint := mail.user_id_of(record_mailbox_message.address);
    v_problem text := mail.metadata_problem(record_mailbox_message.doc);
BEGIN
    IF v_problem IS NULL AND doc->>'direction' <> 'mailbox' THEN
        v_problem := format('direction %s is not mailbox', quote_literal(left(doc->>'direction', 80)));
    ELSIF v_problem IS NULL AND jsonb_array_length(doc->'recipients') > 0 THEN
        v_problem := 'recipients must be empty: a message found in a mailbox has no envelope';
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid metadata document%: %',
                coalesce(' ' || left(doc->>'mailmeta_id', 80), ''), v_problem
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mail.record_mailbox_messages(address, jsonb_build_array(doc));
END
$$;

GRANT EXECUTE ON FUNCTION mail.record_mailbox_messages(text, jsonb) TO mailmeta_mirror;
