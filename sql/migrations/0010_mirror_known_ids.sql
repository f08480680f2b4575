-- 0010_mirror_known_ids.sql — the mirror tells the syncer the ids of the
-- messages it already holds.
--
-- Every message the syncer sends carries its mailmeta_id: the milter's
-- X-Mailmeta-ID, or for mail that never passed the milter an id derived
-- from a SHA-256 of the whole message.  A flag change (\Seen, \Flagged, a
-- keyword) sends the message again, and the syncer read its header, or the
-- whole message, once more to find an id the mirror already held: marking
-- a folder of 10,000 imported messages read read 10,000 files in full.
--
-- A message under a UID is immutable for as long as its folder keeps its
-- UIDVALIDITY, so the mirror's row of (folder, UID) of that UIDVALIDITY
-- names its id for good.  mail.mirror_message_ids(address, guid,
-- uidvalidity, uids) returns those rows; the syncer reads only the
-- messages it gets no id for.

SET LOCAL ROLE mailmeta_owner;

CREATE FUNCTION mail.mirror_message_ids(address text, guid text, uidvalidity bigint, uids bigint[])
    RETURNS TABLE (uid bigint, mailmeta_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_user_id bigint := mail.user_id_of(mirror_message_ids.address);
    v_guid    text := lower(btrim(mirror_message_ids.guid));
BEGIN
    IF v_guid IS NULL OR v_guid !~ '^[0-9a-f]{32}$' THEN
        RAISE EXCEPTION 'invalid folder for %: guid % is not 32 hex digits',
                quote_literal(mail.normalise_address(mirror_message_ids.address)),
                quote_nullable(left(mirror_message_ids.guid, 80))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Only rows of the UIDVALIDITY asked for: under another one a UID
    -- names another message.
    RETURN QUERY
        SELECT m.uid, m.mailmeta_id
          FROM mail.folders f
          JOIN mail.mailbox_messages m ON m.user_id = f.user_id AND m.folder_id = f.folder_id
         WHERE f.user_id = v_user_id AND f.guid = v_guid
           AND f.uidvalidity = mirror_message_ids.uidvalidity
           AND m.uid = ANY (mirror_message_ids.uids)
         ORDER BY m.uid;
END
$$;
COMMENT ON FUNCTION mail.mirror_message_ids(text, text, bigint, bigint[]) IS
    'Mirror: the mailmeta_id of each of the UIDs the mirror holds in the folder (by guid) as of that UIDVALIDITY, by UID; nothing for a folder it does not know or holds under another UIDVALIDITY. Raises 22023 (malformed address or guid), P0002 (unknown user).';

REVOKE ALL ON FUNCTION mail.mirror_message_ids(text, text, bigint, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mail.mirror_message_ids(text, text, bigint, bigint[]) TO mailmeta_mirror;
