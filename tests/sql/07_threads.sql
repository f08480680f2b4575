-- 07_threads.sql — conversation threading by Message-ID, In-Reply-To and
-- References: a reply joins its parent's thread; a reply recorded before its
-- parent starts the thread the parent then joins; a message linking two
-- threads merges them into the smaller thread id (messages, per-user rows
-- and links alike); a message that mentions no id is a thread of its own.
-- Documents recorded together in one batch get the threads recording them
-- one by one in batch order would give.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(21);
\ir 06_helpers.psql

SET LOCAL ROLE mailmeta_admin;
DO $$
BEGIN
    PERFORM mail.add_domain('example.test');
    PERFORM mail.add_user('alice@example.test', 'pw');
END
$$;
RESET ROLE;

CREATE FUNCTION pg_temp.rec(p_id integer, p_msgid text, p_irt text[] DEFAULT '{}', p_refs text[] DEFAULT '{}')
    RETURNS uuid
    LANGUAGE sql
AS $$
    SELECT mail.record_message(pg_temp.doc(p_id, '{}',
        jsonb_build_object('message_id', p_msgid, 'in_reply_to', to_jsonb(p_irt), 'references', to_jsonb(p_refs))))
$$;
CREATE FUNCTION pg_temp.thread(p_id integer) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT thread_id FROM mail.messages WHERE mailmeta_id = pg_temp.mid(p_id)
$$;

SET LOCAL ROLE mailmeta_milter;
SELECT pg_temp.rec(1, '<a@x>');
SELECT is(pg_temp.thread(1), pg_temp.mid(1), 'a first message starts a thread named by its mailmeta_id');
SELECT pg_temp.rec(2, 'b@x', ARRAY['<a@x>'], ARRAY['a@x']);
SELECT is(pg_temp.thread(2), pg_temp.mid(1), 'a reply joins its parent''s thread');

SELECT pg_temp.rec(4, 'd@x', ARRAY['c@x'], ARRAY['c@x']);
SELECT is(pg_temp.thread(4), pg_temp.mid(4), 'a reply whose parent is unknown starts a thread');
SELECT pg_temp.rec(3, 'c@x');
SELECT is(pg_temp.thread(3), pg_temp.mid(4), 'the parent recorded after its reply joins the reply''s thread');
SELECT pg_temp.rec(5, 'e@x', '{}', ARRAY['c@x', 'd@x']);
SELECT is(pg_temp.thread(5), pg_temp.mid(4), 'a message linked through References alone joins the thread');

SELECT pg_temp.rec(6, 'f@x', ARRAY['d@x'], ARRAY['a@x', 'd@x']);
SELECT is(pg_temp.thread(6), pg_temp.mid(1), 'a message linking two threads joins the smaller thread id');
RESET ROLE;
SELECT is((SELECT count(DISTINCT thread_id)::int FROM mail.messages
            WHERE mailmeta_id IN (SELECT pg_temp.mid(i) FROM generate_series(1, 6) i)), 1,
          'the two threads merged: all six messages share one thread');
SELECT is((SELECT count(*)::int FROM mail.user_messages
            WHERE mailmeta_id IN (SELECT pg_temp.mid(i) FROM generate_series(1, 6) i)
              AND thread_id = pg_temp.mid(1)), 6,
          'the per-user rows follow the merge');
SELECT is((SELECT array_agg(DISTINCT thread_id) FROM mail.thread_links), ARRAY[pg_temp.mid(1)],
          'every registered id points to the merged thread');

SET LOCAL ROLE mailmeta_milter;
SELECT pg_temp.rec(7, NULL);
SELECT is(pg_temp.thread(7), pg_temp.mid(7), 'a message without Message-ID or references is a thread of its own');
SELECT pg_temp.rec(8, NULL, ARRAY['b@x']);
SELECT is(pg_temp.thread(8), pg_temp.mid(1), 'a reply without its own Message-ID still joins its parent''s thread');
SELECT pg_temp.rec(9, 'h@x');
SELECT is(pg_temp.thread(9), pg_temp.mid(9), 'an unrelated message starts its own thread');
SELECT pg_temp.rec(10, 'a@x');
SELECT is(pg_temp.thread(10), pg_temp.mid(1), 'a second message with a known Message-ID joins that thread');

SELECT pg_temp.rec(13, 'k@x');
SELECT pg_temp.rec(12, 'l@x');
SELECT pg_temp.rec(14, 'm@x', '{}', ARRAY['k@x', 'l@x']);
SELECT is(ARRAY[pg_temp.thread(12), pg_temp.thread(13), pg_temp.thread(14)],
          ARRAY[pg_temp.mid(12), pg_temp.mid(12), pg_temp.mid(12)],
          'merging keeps the smaller thread id, whichever thread the older message was in');
SELECT pg_temp.rec(15, 'n@x', '{}', ARRAY['k@x']);
SELECT is(pg_temp.thread(15), pg_temp.mid(12), 'a later reply to a merged-away thread lands in the merged thread');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mail.thread_links WHERE message_id IN ('a@x', 'k@x', 'n@x')), 3,
          'ids are registered without angle brackets, once each');

-- ------------------------------------------------------------ in one batch
SET LOCAL ROLE mailmeta_milter;
SELECT mail.record_messages(jsonb_build_array(
    pg_temp.doc(21, '{}', '{"message_id": "p@y"}'),
    pg_temp.doc(22, '{}', '{"message_id": "q@y", "in_reply_to": ["p@y"]}')));
SELECT is(ARRAY[pg_temp.thread(21), pg_temp.thread(22)], ARRAY[pg_temp.mid(21), pg_temp.mid(21)],
          'in one batch, a reply joins its parent that comes before it');
SELECT mail.record_messages(jsonb_build_array(
    pg_temp.doc(24, '{}', '{"message_id": "s@y", "in_reply_to": ["r@y"]}'),
    pg_temp.doc(23, '{}', '{"message_id": "r@y"}')));
SELECT is(ARRAY[pg_temp.thread(23), pg_temp.thread(24)], ARRAY[pg_temp.mid(24), pg_temp.mid(24)],
          'in one batch, a parent that comes after its reply joins the reply''s thread');
SELECT mail.record_messages(jsonb_build_array(
    pg_temp.doc(26, '{}', '{"message_id": "u@y", "in_reply_to": ["t@y"]}'),
    pg_temp.doc(25, '{}', '{"message_id": "t@y", "references": ["s@y", "q@y"]}')));
SELECT is(ARRAY(SELECT pg_temp.thread(i) FROM generate_series(21, 26) i),
          array_fill(pg_temp.mid(21), ARRAY[6]),
          'in one batch, a message linking two known threads and a reply to it: all merge into the smallest thread');
RESET ROLE;
SELECT is((SELECT array_agg(DISTINCT thread_id) FROM mail.user_messages
            WHERE mailmeta_id IN (SELECT pg_temp.mid(i) FROM generate_series(21, 26) i)), ARRAY[pg_temp.mid(21)],
          '... per-user rows included');
SELECT is((SELECT array_agg(DISTINCT thread_id) FROM mail.thread_links
            WHERE message_id IN ('p@y', 'q@y', 'r@y', 's@y', 't@y', 'u@y')), ARRAY[pg_temp.mid(21)],
          '... and every id of the conversation');

SELECT * FROM finish();
ROLLBACK;
