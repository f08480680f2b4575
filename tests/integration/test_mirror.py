"""The mailbox mirror (doc/mailbox-mirror.md): whatever changes a mailbox —
LMTP delivery, Sieve fileinto, IMAP APPEND/STORE/COPY/MOVE/EXPUNGE and
folder commands, POP3 DELE, doveadm — the SQL mirror (mail.folders,
mail.mailbox_messages) soon equals what IMAP reports, through the mail
plugin's dirty marks and `doveadm mailmeta watch`; messages that never
passed the milter get a metadata row built from the message; a PostgreSQL
outage neither blocks IMAP nor loses changes; a forgotten mirror is rebuilt
exactly by `doveadm mailmeta resync`, and drift behind the plugin's back is
repaired by the watcher's periodic check."""

import base64
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
import zlib

import pytest

from mmtest import milter_role_refused, new_message
from test_sieve import ManageSieve

MIRROR_TIMEOUT = 20.0
WATCH_WORKERS = 2       # mailmeta_watch_workers in scripts/stack.d/dovecot.conf
SPECIAL_USE = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk",
               "\\Sent", "\\Trash"}


# ------------------------------------------------------------ helpers
def mutf7_encode(name):
    """IMAP's modified UTF-7 (RFC 3501 5.1.3)."""
    out, run = [], []

    def flush():
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode()
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            run.clear()
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name):
    out, i = [], 0
    while i < len(name):
        if name[i] != "&":
            out.append(name[i])
            i += 1
            continue
        j = name.index("-", i)
        if j == i + 1:
            out.append("&")
        else:
            b64 = name[i + 1:j].replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = j + 1
    return "".join(out)


def quoted(name):
    return '"' + mutf7_encode(name).replace("\\", "\\\\").replace('"', '\\"') + '"'


LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.*)$')


def parse_list(lines):
    """LIST/LSUB lines -> {name: set of attributes}."""
    result = {}
    for line in lines:
        if line is None:
            continue
        if isinstance(line, tuple):        # a literal name
            m = LIST_LINE.match(line[0].rstrip(b"{0123456789}").strip() + b' ""')
            name = line[1].decode()
        else:
            m = LIST_LINE.match(line)
            name = m.group("name").decode()
            if name.startswith('"'):
                name = re.sub(r'\\(.)', r'\1', name[1:-1])
        flags = set(m.group("flags").decode().split())
        result[mutf7_decode(name)] = flags
    return result


def imap_state(stack, user, password):
    """What IMAP reports: {folder: {uidvalidity, special_use, subscribed,
    messages: {uid: (flags, keywords)}}}, selectable folders only."""
    m = stack.imap(user, password)
    try:
        typ, lines = m.list()
        assert typ == "OK"
        folders = parse_list(lines)
        typ, lines = m.lsub()
        assert typ == "OK"
        subscribed = set(parse_list(lines))
        state = {}
        for name, attrs in folders.items():
            if attrs & {"\\Noselect", "\\NonExistent"}:
                continue
            typ, _ = m.select(quoted(name), readonly=True)
            assert typ == "OK", name
            uidvalidity = int(m.response("UIDVALIDITY")[1][0])
            typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", name
            messages = {}
            for item in data:
                if not item:
                    continue
                text = item.decode() if isinstance(item, bytes) else item[0].decode()
                uid = re.search(r"UID (\d+)", text)
                flags = re.search(r"FLAGS \(([^)]*)\)", text)
                if not uid or not flags:
                    continue
                words = set(flags.group(1).split()) - {"\\Recent"}
                messages[int(uid.group(1))] = (
                    frozenset(w for w in words if w.startswith("\\")),
                    frozenset(w for w in words if not w.startswith("\\")))
            state[name] = {
                "uidvalidity": uidvalidity,
                "special_use": frozenset(attrs & SPECIAL_USE),
                "subscribed": name in subscribed,
                "messages": messages,
            }
        return state
    finally:
        m.logout()


def mirror_state(stack, user):
    """The same structure, read from the SQL mirror as the admin."""
    state = {}
    for name, special_use, subscribed, uidvalidity in stack.sql(
            "SELECT f.name, f.special_use, f.subscribed, f.uidvalidity"
            " FROM mail.folders f JOIN mail.users u USING (user_id)"
            " WHERE u.address = %s", user):
        state[name] = {
            "uidvalidity": int(uidvalidity) if uidvalidity else None,
            "special_use": frozenset((special_use or "").split()),
            "subscribed": subscribed == "t",
            "messages": {},
        }
    names = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
    for row in stack.sql(
            "SELECT f.name, m.uid, m.seen, m.answered, m.flagged, m.deleted,"
            " m.draft, array_to_string(m.keywords, ' ')"
            " FROM mail.mailbox_messages m"
            " JOIN mail.folders f USING (user_id, folder_id)"
            " JOIN mail.users u USING (user_id) WHERE u.address = %s", user):
        flags = frozenset(n for n, v in zip(names, row[2:7]) if v == "t")
        # two statements, two snapshots: a sync that committed in between
        # shows messages of a folder the first did not see (never equal to
        # IMAP's state, so wait_mirror looks again)
        folder = state.setdefault(row[0], {"uidvalidity": None, "special_use": None,
                                           "subscribed": None, "messages": {}})
        folder["messages"][int(row[1])] = (flags, frozenset(row[7].split()))
    return state


def describe_difference(want, got):
    lines = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            lines.append(f"{name!r}: missing from the mirror")
        elif name not in want:
            lines.append(f"{name!r}: in the mirror only")
        elif want[name] != got[name]:
            for key in want[name]:
                if want[name][key] != got[name][key]:
                    lines.append(f"{name!r} {key}: IMAP {want[name][key]!r}"
                                 f" mirror {got[name][key]!r}")
    return "; ".join(lines)


def wait_mirror(stack, user, password, timeout=MIRROR_TIMEOUT):
    """Poll until the mirror equals what IMAP reports; return that state."""
    deadline = time.monotonic() + timeout
    while True:
        want = imap_state(stack, user, password)
        got = mirror_state(stack, user)
        if want == got:
            return want
        if time.monotonic() > deadline:
            raise AssertionError(f"mirror of {user} differs after {timeout}s: "
                                 + describe_difference(want, got))
        time.sleep(0.25)


def uuid8(data):
    """The mailmeta_id of a message that carries no X-Mailmeta-ID."""
    b = bytearray(hashlib.sha256(data).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def raw_message(subject, sender="me@example.org", to="you@example.org",
                extra=""):
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n{extra}\r\n"
            f"body of {subject}\r\n").encode()


def mirror_row(stack, user, folder, uid):
    rows = stack.sql(
        "SELECT m.mailmeta_id, m.size_bytes FROM mail.mailbox_messages m"
        " JOIN mail.folders f USING (user_id, folder_id)"
        " JOIN mail.users u USING (user_id)"
        " WHERE u.address = %s AND f.name = %s AND m.uid = %s",
        user, folder, uid)
    assert len(rows) == 1, rows
    return rows[0]


def appenduid(response):
    m = re.search(rb"APPENDUID \d+ (\d+)", response[1][0])
    assert m, response
    return int(m.group(1))


def append(stack, user, pw, subject, folder="INBOX"):
    """APPENDs a new message in a session of its own; returns its UID."""
    m = stack.imap(user, pw)
    try:
        return appenduid(m.append(folder, None, None, raw_message(subject)))
    finally:
        m.logout()


def doveadm(stack, *args, plain=False, options=()):
    """The stack's doveadm; plain: without mailmeta's doveadm plugin."""
    if plain:
        cmd = ["doveadm", "-c", stack.env["DOVECOT_CONFIG"], *options, *args]
    else:
        cmd = [stack.env["DOVEADM"], *options, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def deliver(stack, user):
    msg = new_message("someone@outside.example", [user])
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[user]) == {}
    return msg


@pytest.fixture
def mailbox(stack, directory):
    """A fresh user: (address, password)."""
    user = directory.add_user("mirror" + uuid.uuid4().hex[:6])
    return user, directory.passwords[user]


# -------------------------------------------------------------- tests
def test_delivery_is_mirrored_and_linked_to_the_milter_row(stack, mailbox):
    user, pw = mailbox
    msg = deliver(stack, user)
    raw = stack.wait_for_imap(user, pw, msg["Subject"])
    state = wait_mirror(stack, user, pw)
    assert len(state["INBOX"]["messages"]) == 1
    assert {"Drafts", "Sent", "Junk", "Trash", "Archive"} <= set(state)
    assert state["Sent"]["special_use"] == {"\\Sent"}
    stamped = re.search(rb"(?im)^X-Mailmeta-ID:\s*([0-9a-f-]{36})", raw).group(1).decode()
    uid = next(iter(state["INBOX"]["messages"]))
    assert mirror_row(stack, user, "INBOX", uid)[0] == stamped
    # the milter's row, not one built from the mailbox
    assert stack.sql("SELECT direction FROM mail.messages WHERE mailmeta_id = %s",
                     stamped) == [["inbound"]]


def test_append_to_sent_and_drafts_builds_metadata(stack, mailbox):
    user, pw = mailbox
    m = stack.imap(user, pw)
    try:
        sent = raw_message("sent by a client", sender=user,
                           to="Friend <friend@example.org>")
        draft = raw_message("a draft", sender=user)
        uid_sent = appenduid(m.append("Sent", "(\\Seen)", None, sent))
        uid_draft = appenduid(m.append("Drafts", "(\\Draft $Unfinished)", None, draft))
        m.select("Sent", readonly=True)
        typ, data = m.uid("FETCH", str(uid_sent), "(BODY.PEEK[])")
        body = data[0][1]
    finally:
        m.logout()
    state = wait_mirror(stack, user, pw)
    assert state["Drafts"]["messages"][uid_draft] == (
        frozenset({"\\Draft"}), frozenset({"$Unfinished"}))

    want_id = uuid8(body)
    assert body == sent
    mid, size = mirror_row(stack, user, "Sent", uid_sent)
    assert mid == want_id
    assert int(size) == len(sent)
    assert mirror_row(stack, user, "Drafts", uid_draft)[0] == uuid8(draft)
    rows = stack.sql("SELECT direction, subject, size_bytes, header_from, queue_id,"
                     " env_from FROM mail.messages WHERE mailmeta_id = %s", mid)
    assert rows == [["mailbox", "sent by a client", str(len(sent)), user, "", ""]]
    assert stack.sql("SELECT count(*) FROM mail.user_messages um JOIN mail.users u"
                     " USING (user_id) WHERE u.address = %s AND um.mailmeta_id = %s",
                     user, mid) == [["1"]]

    # the same bytes elsewhere get the same id: one metadata row
    m = stack.imap(user, pw)
    try:
        uid_copy = appenduid(m.append("Archive", None, None, sent))
    finally:
        m.logout()
    wait_mirror(stack, user, pw)
    assert mirror_row(stack, user, "Archive", uid_copy)[0] == want_id
    assert stack.sql("SELECT count(*) FROM mail.messages WHERE mailmeta_id = %s",
                     mid) == [["1"]]


def test_a_new_message_is_read_once_for_its_id_and_record(stack, mailbox):
    """A message appended to a folder the mirror already holds is read once:
    the read that hashes it for its id also builds its record, which is
    the extractor's (parts, attachment hashes) all the same."""
    user, pw = mailbox
    attachment = os.urandom(3000)
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    msg = (f"From: {user}\r\nTo: Friend <friend@example.org>\r\n"
           f"Subject: read once\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
           "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           "--b1\r\nContent-Type: application/octet-stream\r\n"
           "Content-Disposition: attachment; filename=report.bin\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded + b"--b1--\r\n"
    append(stack, user, pw, "before")
    wait_mirror(stack, user, pw)
    wait_no_marks(stack, user)
    offset = log_offset(stack, "mirror.log")
    m = stack.imap(user, pw)
    try:
        uid = appenduid(m.append("INBOX", None, None, msg))
    finally:
        m.logout()
    wait_mirror(stack, user, pw)
    wait_no_marks(stack, user)
    mid, size = mirror_row(stack, user, "INBOX", uid)
    assert mid == uuid8(msg) and int(size) == len(msg)
    assert stack.sql("SELECT direction, subject, size_bytes, attachment_count"
                     " FROM mail.messages WHERE mailmeta_id = %s", mid) == [
        ["mailbox", "read once", str(len(msg)), "1"]]
    assert stack.sql("SELECT part, filename, content_type, size_bytes, encode(sha256, 'hex')"
                     " FROM mail.attachment_parts WHERE mailmeta_id = %s", mid) == [
        ["2", "report.bin", "application/octet-stream", str(len(attachment)),
         hashlib.sha256(attachment).hexdigest()]]
    syncs = mirror_log_since(stack, offset, f"mailmeta: {user}: synced ")
    assert any("1 records built (1 read once with their id)" in line for line in syncs), syncs


def test_store_copy_move_expunge(stack, mailbox):
    user, pw = mailbox
    for msg in [deliver(stack, user) for _ in range(3)]:
        stack.wait_for_imap(user, pw, msg["Subject"])  # in any order
    wait_mirror(stack, user, pw)
    m = stack.imap(user, pw)
    try:
        m.select("INBOX")
        typ, data = m.uid("SEARCH", "ALL")
        uids = [int(u) for u in data[0].split()]
        assert len(uids) == 3, uids

        m.uid("STORE", str(uids[0]), "+FLAGS", "(\\Seen \\Flagged $label1 Work)")
        state = wait_mirror(stack, user, pw)
        assert state["INBOX"]["messages"][uids[0]] == (
            frozenset({"\\Seen", "\\Flagged"}), frozenset({"$label1", "Work"}))

        m.uid("STORE", str(uids[0]), "-FLAGS", "(\\Flagged Work)")
        m.uid("STORE", str(uids[1]), "FLAGS", "(\\Answered)")
        state = wait_mirror(stack, user, pw)
        assert state["INBOX"]["messages"][uids[0]] == (
            frozenset({"\\Seen"}), frozenset({"$label1"}))

        assert m.uid("COPY", str(uids[0]), "Archive")[0] == "OK"
        wait_mirror(stack, user, pw)
        assert m.uid("MOVE", str(uids[1]), "Trash")[0] == "OK"
        state = wait_mirror(stack, user, pw)
        assert uids[1] not in state["INBOX"]["messages"]
        assert len(state["Trash"]["messages"]) == 1
        assert len(state["Archive"]["messages"]) == 1

        m.uid("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)")
        wait_mirror(stack, user, pw)
        m.expunge()
        state = wait_mirror(stack, user, pw)
        assert list(state["INBOX"]["messages"]) == [uids[0]]
    finally:
        m.logout()
    # the copy and the moved message keep their milter rows' ids
    ids = {r[0] for r in stack.sql(
        "SELECT m.mailmeta_id FROM mail.mailbox_messages m JOIN mail.users u"
        " USING (user_id) WHERE u.address = %s", user)}
    assert len(ids) == 2
    assert stack.sql("SELECT count(*) FROM mail.messages WHERE mailmeta_id ="
                     " ANY (%s::uuid[])", list(ids)) == [["2"]]


def test_a_flag_change_takes_the_id_from_the_mirror(stack, mailbox):
    """A message the mirror already holds is not read again for its id when
    only its flags change: the id comes from the mirror's row.  A row the
    mirror lost (here: deleted behind its back) is read from the message."""
    user, pw = mailbox
    m = stack.imap(user, pw)
    try:
        uids = [appenduid(m.append("INBOX", None, None, raw_message(f"flagged {n}")))
                for n in range(2)]
        wait_mirror(stack, user, pw)
        ids = {uid: mirror_row(stack, user, "INBOX", uid)[0] for uid in uids}
        stack.sql("DELETE FROM mail.mailbox_messages m USING mail.users u"
                  " WHERE m.user_id = u.user_id AND u.address = %s AND m.uid = %s",
                  user, uids[0], user="postgres")
        m.select("INBOX")
        m.uid("STORE", f"{uids[0]},{uids[1]}", "+FLAGS", "(\\Flagged)")
        state = wait_mirror(stack, user, pw)
    finally:
        m.logout()
    assert all("\\Flagged" in flags for flags, _ in state["INBOX"]["messages"].values())
    assert {uid: mirror_row(stack, user, "INBOX", uid)[0] for uid in uids} == ids


def test_folder_create_rename_delete_subscribe(stack, mailbox):
    user, pw = mailbox
    m = stack.imap(user, pw)
    try:
        assert m.create(quoted("Projects"))[0] == "OK"
        assert m.create(quoted("Projects/2026"))[0] == "OK"
        assert m.create(quoted("Reports/Grüße & more"))[0] == "OK"
        m.append(quoted("Projects/2026"), None, None, raw_message("plan"))
        state = wait_mirror(stack, user, pw)
        assert "Reports/Grüße & more" in state
        assert not state["Projects"]["subscribed"]
        guid = stack.sql("SELECT f.guid FROM mail.folders f JOIN mail.users u"
                         " USING (user_id) WHERE u.address = %s AND f.name = %s",
                         user, "Projects/2026")[0][0]

        assert m.subscribe(quoted("Projects"))[0] == "OK"
        state = wait_mirror(stack, user, pw)
        assert state["Projects"]["subscribed"]

        assert m.rename(quoted("Projects"), quoted("Work"))[0] == "OK"
        state = wait_mirror(stack, user, pw)
        assert "Projects/2026" not in state
        assert len(state["Work/2026"]["messages"]) == 1
        # a folder keeps its identity across a rename
        assert stack.sql("SELECT f.name FROM mail.folders f JOIN mail.users u"
                         " USING (user_id) WHERE u.address = %s AND f.guid = %s",
                         user, guid) == [["Work/2026"]]

        assert m.subscribe(quoted("Work"))[0] == "OK"
        state = wait_mirror(stack, user, pw)
        assert state["Work"]["subscribed"]
        assert m.unsubscribe(quoted("Work"))[0] == "OK"
        assert m.delete(quoted("Work/2026"))[0] == "OK"
        assert m.delete(quoted("Reports/Grüße & more"))[0] == "OK"
        state = wait_mirror(stack, user, pw)
        assert "Work/2026" not in state
        assert "Reports/Grüße & more" not in state
        assert not state["Work"]["subscribed"]
    finally:
        m.logout()


def test_more_folders_than_a_sync_keeps_open(stack, mailbox):
    """A sync reads up to 64 changed folders through the views their
    listing opened and opens the others again: both kinds are mirrored."""
    user, pw = mailbox
    names = [f"Box{i:02}" for i in range(70)]
    m = stack.imap(user, pw)
    try:
        for name in names:
            assert m.create(quoted(name))[0] == "OK"
        for name in (names[0], names[-1]):
            m.append(quoted(name), None, None, raw_message(f"in {name}"))
        state = wait_mirror(stack, user, pw)
        assert len(state) == 6 + len(names)
        assert len(state[names[-1]]["messages"]) == 1

        # every folder changed at once (the listing's order is the
        # directory's: which ones are beyond the bound is not known)
        assert m.select(quoted(names[-1]))[0] == "OK"
        assert m.uid("STORE", "1:*", "+FLAGS", "(\\Flagged)")[0] == "OK"
        for name in names:
            m.append(quoted(name), "(\\Seen)", None, raw_message(f"second in {name}"))
        state = wait_mirror(stack, user, pw)
        assert len(state[names[-1]]["messages"]) == 2
        assert all(len(state[name]["messages"]) >= 1 for name in names)
    finally:
        m.logout()


def log_offset(stack, name):
    try:
        return os.path.getsize(os.path.join(stack.env["STACK_DIR"], "log", name))
    except OSError:
        return 0


def log_since(stack, name, offset):
    with open(os.path.join(stack.env["STACK_DIR"], "log", name), "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def mirror_log_since(stack, offset, text):
    """The watcher's log lines since offset that contain text."""
    return [line for line in log_since(stack, "mirror.log", offset) if text in line]


def test_a_steady_stream_of_changes_is_synced_in_batches(stack, mailbox):
    """A client changing flags every few milliseconds never lets the user's
    changes pause for mailmeta_sync_delay (250 ms): the watcher syncs the
    user once per mailmeta_sync_max_delay (2 s) for all of them, not several
    times a second, and once more when the changes stop."""
    user, pw = mailbox
    m = stack.imap(user, pw)
    try:
        uid = appenduid(m.append("INBOX", None, None, raw_message("flag me")))
        wait_mirror(stack, user, pw)
        wait_no_marks(stack, user)
        offset = log_offset(stack, "mirror.log")
        m.select("INBOX")
        stores, started = 0, time.monotonic()
        while time.monotonic() - started < 3.0:
            op = "+FLAGS" if stores % 2 == 0 else "-FLAGS"
            typ, _ = m.uid("STORE", str(uid), op, "(\\Flagged)")
            assert typ == "OK"
            stores += 1
            time.sleep(0.02)
        typ, _ = m.uid("STORE", str(uid), "+FLAGS", "(\\Seen \\Answered)")
        assert typ == "OK"
    finally:
        m.logout()
    state = wait_mirror(stack, user, pw)
    assert "\\Answered" in state["INBOX"]["messages"][uid][0]
    wait_no_marks(stack, user)
    syncs = mirror_log_since(stack, offset, f"mailmeta: {user}: synced ")
    # 3 s of changes: at most one sync per 2 s, the last one after the
    # stream ended, and one of the stack's 30 s drift checks
    assert stores >= 50
    assert 1 <= len(syncs) <= 5, (stores, syncs)


def worker_of(stack, user):
    """The watcher's worker (from 0) that syncs USER: the CRC-32 of its
    mark's name, modulo the number of workers."""
    name = os.path.basename(mark_path(stack, user))
    return zlib.crc32(name.encode()) % WATCH_WORKERS


def locals_of_worker(stack, directory, worker, count):
    """COUNT fresh local parts whose users the given worker syncs."""
    found = []
    while len(found) < count:
        local = "mirror" + uuid.uuid4().hex[:6]
        if worker_of(stack, f"{local}@{directory.domain}") == worker:
            found.append(local)
    return found


def two_mirrored_users(stack, directory):
    """Two fresh users of one worker, each with a message that is mirrored:
    one user holding up the other would hold it up within that worker."""
    users = [directory.add_user(local)
             for local in locals_of_worker(stack, directory, 0, 2)]
    for user in users:
        append(stack, user, directory.passwords[user], "before")
        wait_mirror(stack, user, directory.passwords[user])
    return users


def maildir_of(stack, user):
    local, domain = user.split("@")
    return os.path.join(stack.env["STACK_DIR"], "mail", domain, local, "Maildir")


def append_mirrored_within(stack, directory, user, seconds, why):
    """A change of USER is mirrored within SECONDS (else fails with WHY)."""
    pw = directory.passwords[user]
    append(stack, user, pw, "meanwhile")
    started = time.monotonic()
    wait_no_marks(stack, user, timeout=max(10, 2 * seconds))
    assert time.monotonic() - started < seconds, why
    assert mirror_state(stack, user) == imap_state(stack, user, pw)


def test_a_broken_mailbox_does_not_hold_up_the_others(stack, directory):
    """A user whose sync keeps failing (here: a mail directory Dovecot may
    not read) waits a back-off of its own, 1 s doubling up to 30 s; every
    other user is mirrored as promptly as ever meanwhile, and the broken
    one catches up once it is repaired."""
    broken, other = two_mirrored_users(stack, directory)
    maildir = maildir_of(stack, broken)
    assert os.path.isdir(maildir)
    offset = log_offset(stack, "mirror.log")
    mode = os.stat(maildir).st_mode
    os.chmod(maildir, 0)
    try:
        # a mark, as the mail plugin would leave it for a change
        open(mark_path(stack, broken), "a").close()
        deadline = time.monotonic() + 20
        failures = []
        while len(failures) < 4:
            assert time.monotonic() < deadline, "the broken user's sync never failed"
            time.sleep(0.2)
            failures = mirror_log_since(stack, offset, f"{broken}: sync failed, will retry")
        # four failures in a row: the broken user now waits 8 s, and a
        # back-off of the whole watcher would be as long
        append_mirrored_within(stack, directory, other, 4,
                               "the other user waited for the broken one")
    finally:
        os.chmod(maildir, mode)
    wait_no_marks(stack, broken, timeout=45)
    pw = directory.passwords[broken]
    assert mirror_state(stack, broken) == imap_state(stack, broken, pw)


def test_a_held_lock_does_not_hold_up_the_others(stack, directory):
    """The watcher syncs one user at a time: a lock of one user's mailbox
    that is never released (a hung process, a lock file left behind) may
    stall that user's sync for mailmeta_lock_timeout (10 s), not every
    user's mirror until Dovecot finds the lock stale (2 min after its last
    change; never while its holder keeps it fresh)."""
    stuck, other = two_mirrored_users(stack, directory)
    maildir = maildir_of(stack, stuck)
    owner = os.stat(maildir)
    lock = os.path.join(maildir, "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write("1:elsewhere.example\n")     # a holder Dovecot cannot check
    os.chown(lock, owner.st_uid, owner.st_gid)
    held = threading.Event()
    held.set()

    def keep_fresh():
        while held.is_set():
            os.utime(lock)
            time.sleep(0.5)

    toucher = threading.Thread(target=keep_fresh)
    toucher.start()
    try:
        # a message Dovecot has not seen yet: syncing it needs the lock
        dropped = os.path.join(maildir, "new", f"{int(time.time())}.M1P1.elsewhere")
        with open(dropped, "wb") as f:
            f.write(raw_message("dropped in"))
        os.chown(dropped, owner.st_uid, owner.st_gid)
        open(mark_path(stack, stuck), "a").close()
        time.sleep(1)       # the watcher waits for the lock now
        append_mirrored_within(stack, directory, other, 30,
                               "the other user waited for the lock")
    finally:
        held.clear()
        toucher.join()
        os.unlink(lock)
    # the user's next sync finds the message (the one that timed out
    # looked at nothing)
    open(mark_path(stack, stuck), "a").close()
    wait_mirror(stack, stuck, directory.passwords[stuck])


def test_refused_records_fail_the_sync_until_they_are_accepted(stack, mailbox):
    """When PostgreSQL refuses the records built from the mailbox, the sync
    fails with that error, named, the user retries after a back-off, and
    once the records are accepted again the mirror and the metadata are
    complete."""
    user, pw = mailbox
    append(stack, user, pw, "before")
    wait_mirror(stack, user, pw)
    offset = log_offset(stack, "mirror.log")
    stack.sql("REVOKE EXECUTE ON FUNCTION mail.record_mailbox_messages(text, jsonb)"
              " FROM mailmeta_mirror", user="postgres")
    try:
        uids = [append(stack, user, pw, f"refused {n}") for n in range(3)]
        deadline = time.monotonic() + 20
        while not mirror_log_since(stack, offset, f"{user}: sync failed, will retry"):
            assert time.monotonic() < deadline, "no failed sync logged"
            time.sleep(0.2)
    finally:
        stack.sql("GRANT EXECUTE ON FUNCTION mail.record_mailbox_messages(text, jsonb)"
                  " TO mailmeta_mirror", user="postgres")
    failed = mirror_log_since(stack, offset, f"{user}: sync failed, will retry")
    assert "mail.record_mailbox_messages" in failed[0], failed
    assert "permission denied" in failed[0], failed
    wait_mirror(stack, user, pw)
    wait_no_marks(stack, user, timeout=45)
    for uid in uids:
        mailmeta_id, _ = mirror_row(stack, user, "INBOX", uid)
        assert stack.sql("SELECT direction FROM mail.messages WHERE mailmeta_id = %s",
                         mailmeta_id) == [["mailbox"]]


def test_delete_user_waits_for_a_sync_of_its_mirror(stack, directory):
    """A user deleted while the watcher syncs it: delete_user waits for the
    sync's transaction (it takes the user's mirror lock, as every mirror
    writer does) instead of deadlocking with it over the folders and rows
    that its delete cascades to."""
    user = directory.add_user("mirror" + uuid.uuid4().hex[:6])
    append(stack, user, directory.passwords[user], "doomed")
    wait_mirror(stack, user, directory.passwords[user])
    env = {**os.environ, **stack.env, "PGUSER": "postgres"}
    # a sync in progress: the user's mirror lock, held until COMMIT
    sync = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        sync.stdin.write("BEGIN;\nSELECT mail.lock_mirror(user_id) FROM mail.users"
                         f" WHERE address = '{user}';\n\\echo held\n")
        sync.stdin.flush()
        while sync.stdout.readline().strip() != "held":
            assert sync.poll() is None, "psql ended"
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                            "-c", "SET lock_timeout = '300ms'",
                            "-c", f"SELECT mail.delete_user('{user}')"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0 and "lock timeout" in r.stderr, r.stderr
        sync.stdin.write("COMMIT;\n")
        sync.stdin.close()
        assert sync.wait(timeout=30) == 0
    finally:
        if sync.poll() is None:
            sync.kill()
    stack.sql("SELECT mail.delete_user(%s)", user)
    assert stack.sql("SELECT count(*) FROM mail.folders f JOIN mail.users u USING (user_id)"
                     " WHERE u.address = %s", user) == [["0"]]


@pytest.mark.parametrize("setting, value, error", [
    ("mailmeta_lock_timeout", "2 min", "mailmeta_lock_timeout '2 min' is over a minute"),
    ("mailmeta_sync_delay", "soon", "invalid mailmeta_sync_delay 'soon'"),
    ("mailmeta_watch_workers", "0", "invalid mailmeta_watch_workers '0'"),
    ("mailmeta_watch_workers", "65", "invalid mailmeta_watch_workers '65'"),
    ("mailmeta_watch_workers", "two", "invalid mailmeta_watch_workers 'two'"),
])
def test_the_watcher_refuses_a_bad_delay(stack, setting, value, error):
    r = doveadm(stack, "mailmeta", "watch", options=("-o", f"plugin/{setting}={value}"))
    assert r.returncode == 78, (r.returncode, r.stderr)    # EX_CONFIG
    assert error in r.stderr


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return sorted(int(p) for p in f.read().split())
    except OSError:
        return []


def watcher_workers(stack):
    """The stack's watcher (the supervisor) and its workers' pids."""
    with open(os.path.join(stack.env["STACK_DIR"], "run", "mirror", "watch.pid")) as f:
        supervisor = int(f.read().strip())
    return supervisor, children_of(supervisor)


SYNCED_LINE = re.compile(r"^doveadm\((\d+)\): Info: mailmeta: (\S+): synced ")


def syncing_pids(stack, offset):
    """{user: set of pids that logged a sync of it} since offset."""
    pids = {}
    for line in log_since(stack, "mirror.log", offset):
        m = SYNCED_LINE.match(line)
        if m:
            pids.setdefault(m.group(2), set()).add(int(m.group(1)))
    return pids


def test_users_are_split_between_the_workers(stack, directory):
    """The watcher runs mailmeta_watch_workers processes; each user is
    synced by one of them only, the one its name hashes to, so that two
    users are synced at once and one user never by two processes."""
    supervisor, workers = watcher_workers(stack)
    assert len(workers) == WATCH_WORKERS, workers
    users = {w: [directory.add_user(local)
                 for local in locals_of_worker(stack, directory, w, 3)]
             for w in range(WATCH_WORKERS)}
    offset = log_offset(stack, "mirror.log")
    for group in users.values():
        for user in group:
            append(stack, user, directory.passwords[user], "split")
    for group in users.values():
        for user in group:
            wait_mirror(stack, user, directory.passwords[user])
            wait_no_marks(stack, user)
    pids = syncing_pids(stack, offset)
    by_worker = {}
    for w, group in users.items():
        for user in group:
            assert len(pids.get(user, ())) == 1, (user, pids.get(user))
            by_worker.setdefault(w, set()).update(pids[user])
    # every worker's users were synced by one process, a worker, and no
    # two workers share a process
    assert all(len(p) == 1 for p in by_worker.values()), by_worker
    owners = [next(iter(p)) for p in by_worker.values()]
    assert sorted(owners) == workers, (owners, workers)


def test_a_worker_that_ends_is_started_again(stack, directory):
    """A worker that crashes is started again by the supervisor, and the
    users it syncs are mirrored again; the others never stopped."""
    supervisor, workers = watcher_workers(stack)
    assert len(workers) == WATCH_WORKERS
    user = directory.add_user(locals_of_worker(stack, directory, 0, 1)[0])
    pw = directory.passwords[user]
    append(stack, user, pw, "before")
    wait_mirror(stack, user, pw)
    offset = log_offset(stack, "mirror.log")
    victim = syncing_pids(stack, 0).get(user, {None}).pop()
    assert victim in workers
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not mirror_log_since(stack, offset, "killed by signal 9; restarting it"):
        assert time.monotonic() < deadline, "the supervisor did not notice"
        time.sleep(0.1)
    append(stack, user, pw, "after")
    wait_mirror(stack, user, pw)
    now_supervisor, now_workers = watcher_workers(stack)
    assert now_supervisor == supervisor
    assert len(now_workers) == WATCH_WORKERS and victim not in now_workers


@pytest.mark.parametrize("value", ["2/2", "x/2", "1", "0/65", "1/"])
def test_a_worker_refuses_a_bad_number(stack, value):
    """-w i/n is how the supervisor tells a worker which of how many it is;
    anything else is refused, not taken for a split of the users that no
    other worker shares."""
    r = doveadm(stack, "mailmeta", "watch", "-w", value)
    assert r.returncode == 64, (r.returncode, r.stderr)     # EX_USAGE
    assert f"invalid worker '{value}'" in r.stderr


@pytest.fixture
def own_watchers():
    """The watchers a test starts; whatever they fail on, they end with it."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def own_spool(stack):
    """An empty spool beside the stack's, which the mail processes' user can
    write as it can the stack's (a sync's own changes mark the user there)."""
    stack_spool = stack.env["MIRROR_SPOOL_DIR"]
    spool = os.path.join(os.path.dirname(stack_spool), "spool-" + uuid.uuid4().hex[:8])
    os.mkdir(spool, 0o770)
    owner = os.stat(stack_spool)
    os.chown(spool, owner.st_uid, owner.st_gid)
    yield spool
    shutil.rmtree(spool, ignore_errors=True)


def own_watcher(stack, spool, tmp_path, workers, watchers):
    """A watcher of its own (spool, no drift check) with WORKERS workers,
    once they all run: (process, worker pids); added to watchers (the
    own_watchers fixture)."""
    log = open(tmp_path / "watch.log", "wb")
    proc = subprocess.Popen(
        [stack.env["DOVEADM"], "-o", f"plugin/mailmeta_spool_dir={spool}",
         "-o", "plugin/mailmeta_check_interval=0",
         "-o", f"plugin/mailmeta_watch_workers={workers}",
         "mailmeta", "watch"], stdout=log, stderr=subprocess.STDOUT)
    watchers.append(proc)
    deadline = time.monotonic() + 20
    while (tmp_path / "watch.log").read_text().count("mailmeta: watching") < workers:
        assert proc.poll() is None, (tmp_path / "watch.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "watch.log").read_text()
        time.sleep(0.1)
    # the wrapper execs doveadm, whose children the workers are
    return proc, children_of(proc.pid)


def gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") and "State:\tZ" not in
              open(f"/proc/{p}/status").read() for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_sigterm_ends_the_supervisor_and_its_workers(stack, own_spool, own_watchers,
                                                     tmp_path):
    proc, workers = own_watcher(stack, own_spool, tmp_path, 3, own_watchers)
    assert len(workers) == 3, workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert gone(workers)
    text = (tmp_path / "watch.log").read_text()
    assert "stopping 3 workers" in text and "Error" not in text, text


def test_workers_end_with_their_supervisor(stack, directory, own_spool, own_watchers,
                                           tmp_path):
    """A supervisor killed outright (SIGKILL) leaves no worker behind to
    sync beside the next watcher, also once the workers have synced a user
    (which drops privileges, and that clears Linux's parent-death
    signal)."""
    user = directory.add_user("mirror" + uuid.uuid4().hex[:6])
    append(stack, user, directory.passwords[user], "for the own watcher")
    # the stack's watcher is done with the user: no two syncs of it at once
    wait_mirror(stack, user, directory.passwords[user])
    wait_no_marks(stack, user)
    proc, workers = own_watcher(stack, own_spool, tmp_path, 2, own_watchers)
    assert len(workers) == 2, workers
    name = os.path.basename(mark_path(stack, user))
    open(os.path.join(own_spool, name), "w").close()
    # the mark is gone once the sync (as the user's uid) committed
    deadline = time.monotonic() + 20
    while (os.path.exists(os.path.join(own_spool, name))
           or os.path.exists(os.path.join(own_spool, ".claimed", name))):
        assert time.monotonic() < deadline, (tmp_path / "watch.log").read_text()
        time.sleep(0.1)
    assert "Error" not in (tmp_path / "watch.log").read_text()
    proc.kill()
    proc.wait(timeout=15)
    assert gone(workers)


def stack_processes(stack, name):
    """The stack's Dovecot processes of that name (children of its master)."""
    with open(os.path.join(stack.env["STACK_DIR"], "run", "dovecot", "master.pid")) as f:
        master = f.read().strip()
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(stat[:-4] + "comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == name and fields[1] == master:
            pids.append(int(stat.split("/")[2]))
    return pids


def end_auth_process(stack):
    """Ends Dovecot's auth process, as a reload or a crash does.  Its LMTP
    processes would fail their next lookup on the broken connection (451,
    which Postfix retries only minutes later), so they end too."""
    pids = stack_processes(stack, "auth")
    assert pids
    for pid in pids + stack_processes(stack, "lmtp"):
        os.kill(pid, signal.SIGTERM)


def test_a_new_auth_process_costs_the_mirror_no_retry(stack, mailbox):
    """Dovecot's auth process ends (a reload, a crash) and the master starts
    another: the watcher's connection to the old one is broken, and its
    next user lookup must connect again at once, not fail the user's sync
    ("Broken pipe") and leave the change to a back-off."""
    user, pw = mailbox
    append(stack, user, pw, "before")
    wait_mirror(stack, user, pw)    # the watcher has looked the user up
    offset = log_offset(stack, "mirror.log")
    end_auth_process(stack)
    wait_for_login(stack, user, pw, timeout=20)   # a new auth process answers
    append(stack, user, pw, "after")
    wait_mirror(stack, user, pw)
    # Dovecot's auth client logs the broken connection itself; the sync
    # must not fail
    errors = [line for line in log_since(stack, "mirror.log", offset)
              if "Error: mailmeta:" in line]
    assert not errors


def test_a_long_drift_check_does_not_hold_up_marks(stack, mailbox):
    """The drift check goes through every user, which on a host with many
    takes long; a change made meanwhile must not wait for its end: marks
    that are due are synced between two users of the check."""
    user, pw = mailbox
    append(stack, user, pw, "before the check")
    wait_mirror(stack, user, pw)
    # users the check has not seen: their first sync creates their folders
    domain = f"drift{uuid.uuid4().hex[:8]}.test"
    many = [f"user{n:03d}@{domain}" for n in range(150)]
    stack.sql("SELECT mail.add_domain(%s)", domain)
    offset = log_offset(stack, "mirror.log")
    stack.sql("SELECT count(mail.add_user(u, 'pw-drift-check')) FROM unnest(%s) AS u", many)
    try:
        deadline = time.monotonic() + 45    # the stack checks every 30 s
        while not mirror_log_since(stack, offset, f"@{domain}: synced"):
            assert time.monotonic() < deadline, "no drift check began"
            time.sleep(0.05)
        append(stack, user, pw, "during the check")
        wait_mirror(stack, user, pw)
        deadline = time.monotonic() + 60
        while len(mirror_log_since(stack, offset, f"@{domain}: synced")) < len(many):
            assert time.monotonic() < deadline, "the drift check did not end"
            time.sleep(0.2)
        synced = [line for line in log_since(stack, "mirror.log", offset) if ": synced" in line]
        mine = [i for i, line in enumerate(synced) if f" {user}: synced" in line]
        theirs = [i for i, line in enumerate(synced) if f"@{domain}: synced" in line]
        assert mine and mine[0] < theirs[-1], "the change waited for the whole check"
    finally:
        stack.sql("SELECT count(mail.delete_user(u)) FROM unnest(%s) AS u", many)
        stack.sql("SELECT mail.delete_domain(%s)", domain)
        shutil.rmtree(os.path.join(stack.env["STACK_DIR"], "mail", domain), ignore_errors=True)


def test_pop3_dele(stack, mailbox):
    user, pw = mailbox
    for msg in (deliver(stack, user), deliver(stack, user)):
        # Postfix may deliver the two in either order
        stack.wait_for_imap(user, pw, msg["Subject"])
    state = wait_mirror(stack, user, pw)
    assert len(state["INBOX"]["messages"]) == 2
    p = stack.pop3(user, pw)
    p.dele(1)
    p.quit()
    state = wait_mirror(stack, user, pw)
    assert len(state["INBOX"]["messages"]) == 1


def test_doveadm_expunge(stack, mailbox):
    user, pw = mailbox
    msg = deliver(stack, user)
    stack.wait_for_imap(user, pw, msg["Subject"])
    wait_mirror(stack, user, pw)
    r = doveadm(stack, "expunge", "-u", user, "mailbox", "INBOX", "all")
    assert r.returncode == 0, r.stderr
    state = wait_mirror(stack, user, pw)
    assert state["INBOX"]["messages"] == {}


def test_a_late_milter_record_completes_the_mailbox_record(stack, mailbox):
    """A message the milter had to journal (its database role refused) is
    delivered; the watcher mirrors it and waits for the milter's record; a
    sync that does not wait (mailmeta_stamped_grace = 0) builds one from
    the mailbox; the journal's
    replay then completes that record with the envelope instead of being
    dropped as a duplicate."""
    user, pw = mailbox
    with milter_role_refused(stack):
        msg = deliver(stack, user)
        stack.wait_for_imap(user, pw, msg["Subject"])
        # the watcher (stamped grace 1 hour) mirrors the message and
        # leaves its record to the milter
        wait_mirror(stack, user, pw)
        assert stack.sql("SELECT count(*) FROM mail.messages WHERE subject = %s",
                         msg["Subject"]) == [["0"]]
        r = doveadm(stack, "mailmeta", "sync", "-u", user,
                    options=("-o", "plugin/mailmeta_stamped_grace=0"))
        assert r.returncode == 0, r.stderr
        assert stack.sql("SELECT direction, env_from, queue_id FROM mail.messages"
                         " WHERE subject = %s", msg["Subject"]) == [["mailbox", "", ""]]
    deadline = time.monotonic() + 30
    while True:     # the milter replays its journal every few seconds
        rows = stack.sql("SELECT direction, env_from, queue_id <> '' FROM mail.messages"
                         " WHERE subject = %s", msg["Subject"])
        if rows == [["inbound", "someone@outside.example", "t"]]:
            break
        assert time.monotonic() < deadline, f"not completed by the replay: {rows}"
        time.sleep(0.5)
    assert stack.sql("SELECT mr.rcpt FROM mail.message_recipients mr"
                     " JOIN mail.messages m USING (mailmeta_id) WHERE m.subject = %s",
                     msg["Subject"]) == [[user]]
    assert stack.sql("SELECT count(*) FROM mail.message_log WHERE subject = %s",
                     msg["Subject"]) == [["1"]]


def test_autoexpunge(stack, mailbox):
    """Dovecot expunges old mail of a folder with `autoexpunge` when a
    session ends (the stack's "Expiring": 2 s): the mirror follows."""
    user, pw = mailbox
    m = stack.imap(user, pw)
    try:
        assert m.create("Expiring")[0] == "OK"
        for n in range(2):
            assert m.append("Expiring", None, None,
                            raw_message(f"expiring {n}", sender=user))[0] == "OK"
    finally:
        m.logout()
    state = wait_mirror(stack, user, pw)
    assert len(state["Expiring"]["messages"]) == 2
    time.sleep(3)
    stack.imap(user, pw).logout()       # the session's end expunges them
    state = wait_mirror(stack, user, pw)
    assert state["Expiring"]["messages"] == {}


def test_sieve_fileinto(stack, mailbox):
    user, pw = mailbox
    ms = ManageSieve(stack.port("SIEVE_PORT"))
    try:
        assert ms.login(user, pw).startswith(b"OK")
        script = ('require ["fileinto", "imap4flags", "mailbox"];\n'
                  'if header :contains "subject" "mailmeta test" '
                  '{ addflag "$filed"; fileinto :create "Filed/Tests"; }\n')
        assert ms.put_script("mirror", script).startswith(b"OK")
        assert ms.command('SETACTIVE "mirror"').startswith(b"OK")
    finally:
        ms.close()
    msg = deliver(stack, user)
    stack.wait_for_imap(user, pw, msg["Subject"], mailbox="Filed/Tests")
    state = wait_mirror(stack, user, pw)
    assert state["INBOX"]["messages"] == {}
    assert list(state["Filed/Tests"]["messages"].values()) == [
        (frozenset(), frozenset({"$filed"}))]


def snapshot(stack, user):
    """Every mirror row of the user, as exact as SQL stores it."""
    folders = stack.sql(
        "SELECT f.guid, f.name, f.special_use, f.subscribed, f.uidvalidity,"
        " f.uidnext, f.highest_modseq, f.message_count, f.total, f.unread"
        " FROM mail.folders f JOIN mail.users u USING (user_id)"
        " WHERE u.address = %s ORDER BY f.guid", user)
    messages = stack.sql(
        "SELECT f.guid, m.uid, m.mailmeta_id, m.internal_date, m.size_bytes,"
        " m.modseq, m.seen, m.answered, m.flagged, m.deleted, m.draft, m.keywords"
        " FROM mail.mailbox_messages m JOIN mail.folders f USING (user_id, folder_id)"
        " JOIN mail.users u USING (user_id) WHERE u.address = %s"
        " ORDER BY f.guid, m.uid", user)
    return folders, messages


def populate(stack, user, pw):
    msg = deliver(stack, user)
    stack.wait_for_imap(user, pw, msg["Subject"])
    m = stack.imap(user, pw)
    try:
        m.create(quoted("Kept"))
        m.append(quoted("Kept"), "(\\Flagged $x)", None, raw_message("kept"))
        m.append("Sent", "(\\Seen)", None, raw_message("sent"))
        m.select("INBOX")
        m.store("1", "+FLAGS", "(\\Seen)")
    finally:
        m.logout()
    return wait_mirror(stack, user, pw)


def test_resync_rebuilds_a_forgotten_mirror_exactly(stack, mailbox):
    user, pw = mailbox
    populate(stack, user, pw)
    before = snapshot(stack, user)
    assert len(before[1]) == 3
    stack.sql("SELECT mail.mirror_forget(%s)", user, user="postgres")
    r = doveadm(stack, "mailmeta", "resync", "-u", user)
    assert r.returncode == 0, r.stderr
    assert snapshot(stack, user) == before


def mark_path(stack, user, claimed=False):
    """Where the mail plugin leaves the user's mark (or the watcher's claim)."""
    spool = stack.env["MIRROR_SPOOL_DIR"]
    return os.path.join(spool, *([".claimed"] if claimed else []),
                        urllib.parse.quote(user, safe="@._+-"))


def spool_marks(stack, user):
    return [p for p in (mark_path(stack, user), mark_path(stack, user, claimed=True))
            if os.path.exists(p)]


def wait_no_marks(stack, user, timeout=10.0):
    deadline = time.monotonic() + timeout
    while spool_marks(stack, user):
        assert time.monotonic() < deadline, f"{user} stays marked dirty"
        time.sleep(0.1)


def test_drift_behind_the_plugins_back_is_repaired(stack, mailbox):
    """A change the mail plugin never saw (here: doveadm without it) leaves
    no mark; the watcher's periodic check (30 s in the stack) finds the
    folder's HIGHESTMODSEQ ahead of the mirror and syncs it — though
    Dovecot's auth process, which lists the users, ended meanwhile."""
    user, pw = mailbox
    msg = deliver(stack, user)
    stack.wait_for_imap(user, pw, msg["Subject"])
    wait_mirror(stack, user, pw)
    wait_no_marks(stack, user)
    offset = log_offset(stack, "mirror.log")
    end_auth_process(stack)
    wait_for_login(stack, user, pw)
    r = doveadm(stack, "flags", "add", "-u", user, "\\Flagged", "mailbox",
                "INBOX", "all", plain=True, options=("-o", "mail_plugins=quota"))
    assert r.returncode == 0, r.stderr
    assert spool_marks(stack, user) == []
    state = imap_state(stack, user, pw)
    assert all("\\Flagged" in f for f, _ in state["INBOX"]["messages"].values())
    wait_mirror(stack, user, pw, timeout=75)
    assert not mirror_log_since(stack, offset, "listing users failed")

    # `sync -u` also finds and repairs it at once
    r = doveadm(stack, "flags", "remove", "-u", user, "\\Flagged", "mailbox",
                "INBOX", "all", plain=True, options=("-o", "mail_plugins=quota"))
    assert r.returncode == 0, r.stderr
    r = doveadm(stack, "mailmeta", "sync", "-u", user)
    assert r.returncode == 0, r.stderr
    assert mirror_state(stack, user) == imap_state(stack, user, pw)


def test_the_auth_socket_away_during_a_drift_check_costs_no_crash(stack, mailbox):
    """Dovecot restarting: its auth userdb socket is away when the drift
    check lists the users.  Dovecot 2.3's own listing panics then; the
    watcher must log the failed listing, live on, and go on mirroring."""
    user, pw = mailbox
    append(stack, user, pw, "before")
    wait_mirror(stack, user, pw)
    with open(os.path.join(stack.env["STACK_DIR"], "run", "mirror", "watch.pid")) as f:
        watcher = int(f.read().strip())
    socket = os.path.join(stack.env["STACK_DIR"], "run", "dovecot", "auth-userdb")
    offset = log_offset(stack, "mirror.log")
    os.rename(socket, socket + ".away")
    try:
        deadline = time.monotonic() + 45    # the stack checks every 30 s
        while not mirror_log_since(stack, offset, "listing users failed"):
            assert time.monotonic() < deadline, "no drift check began"
            time.sleep(0.1)
    finally:
        os.rename(socket + ".away", socket)
    time.sleep(0.5)
    os.kill(watcher, 0)     # still there
    assert not mirror_log_since(stack, offset, "Panic")
    append(stack, user, pw, "after")
    wait_mirror(stack, user, pw)


def pg_ctl(stack, *args):
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl",
                    "-D", stack.env["PGDATA"], *args], check=True,
                   stdout=subprocess.DEVNULL)


def wait_for_login(stack, user, pw, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.imap(user, pw).logout()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_postgres_outage_blocks_nothing_and_loses_nothing(stack, mailbox):
    user, pw = mailbox
    msg = deliver(stack, user)
    stack.wait_for_imap(user, pw, msg["Subject"])
    wait_mirror(stack, user, pw)
    m = stack.imap(user, pw)      # logged in while the passdb is up
    pg_ctl(stack, "-m", "fast", "-w", "stop")
    try:
        started = time.monotonic()
        m.select("INBOX")
        assert m.store("1", "+FLAGS", "(\\Seen $during_outage)")[0] == "OK"
        assert m.create(quoted("Outage"))[0] == "OK"
        assert m.append(quoted("Outage"), None, None, raw_message("outage"))[0] == "OK"
        assert m.copy("1", quoted("Outage"))[0] == "OK"
        assert time.monotonic() - started < 5, "IMAP waited for PostgreSQL"
        # the user stays marked (the syncer claims and puts the mark back)
        deadline = time.monotonic() + 5
        while not spool_marks(stack, user) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool_marks(stack, user)
        time.sleep(2)             # a failed sync or two meanwhile
    finally:
        pg_ctl(stack, "-w", "-l", os.path.join(stack.env["STACK_DIR"], "log",
                                               "postgresql.log"), "start")
        # Postfix's pgsql clients mark the server dead for a minute; new
        # smtpd processes start afresh.
        subprocess.run(["postfix", "-c", stack.env["POSTFIX_CONFIG_DIR"], "reload"],
                       check=True, stderr=subprocess.DEVNULL)
    m.logout()
    wait_for_login(stack, user, pw)
    # the syncer backs off up to 30 s between attempts
    state = wait_mirror(stack, user, pw, timeout=60)
    assert len(state["Outage"]["messages"]) == 2
    wait_no_marks(stack, user)
