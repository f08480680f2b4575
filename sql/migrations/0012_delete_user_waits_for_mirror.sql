-- 0012_delete_user_waits_for_mirror.sql — deleting a user waits for a
-- sync of that user's mirror instead of deadlocking with it.
--
-- mail.delete_user deletes the user's row, and with it (ON DELETE CASCADE)
-- the user's folders, mirror rows, contacts and message links.  A sync of
-- the same user (doveadm mailmeta watch) holds its transaction's locks on
-- those folders and mirror rows, and its inserts check the user's row: each
-- of the two could wait for the other, and PostgreSQL then aborted one of
-- them (40P01, seen when a user was deleted while the watcher synced it).
-- Every writer of a user's mirror takes mail.lock_mirror first; now
-- delete_user takes it too, before deleting anything, so it waits for the
-- sync's COMMIT, and the sync's next call finds no such user (P0002: the
-- watcher drops the user's mark).  Lock order: the directory lock, then the
-- mirror lock; no mirror writer takes the directory lock.

CREATE OR REPLACE FUNCTION mail.delete_user(address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(delete_user.address);
    v_user_id bigint;
    v_aliases text;
BEGIN
    PERFORM mail.lock_directory();
    SELECT u.user_id INTO v_user_id FROM mail.users u WHERE u.address = v_address;
    IF NOT FOUND THEN
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
    PERFORM mail.lock_mirror(v_user_id);
    DELETE FROM mail.users u WHERE u.user_id = v_user_id;
END
$$;
COMMENT ON FUNCTION mail.delete_user(text) IS
    'Deletes a user (the mailbox on disk is left to the operator), after any sync of its mailbox mirror in progress. Raises 22023 (malformed address), P0002 (unknown user), 2BP01 (an alias still delivers to it; the message names the aliases).';
