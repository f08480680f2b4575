"""Model-based test of the mailbox mirror (doc/mailbox-mirror.md) through
the real servers: long seeded random sequences of IMAP operations from two
concurrent clients, interleaved with deliveries (Postfix's MX, and LMTP
straight into Dovecot) and POP3 DELE, after which the SQL mirror must equal
exactly what IMAP reports — folder names, special use, subscriptions,
UIDVALIDITY, UIDNEXT, UID sets, flags and keywords, sizes, internal dates,
each message's mailmeta_id, the folders' counters — and every mirrored
message must have its metadata row.  Then the same with PostgreSQL stopped
and restarted mid-run (IMAP keeps working, the mirror converges with no
manual step), and contacts collected from sent mail counted once although
both the milter and the mirror see the message.

The random workload is reproducible in what each client asks for (not in
how the two interleave): the seed is printed, and MAILMETA_MODEL_SEED and
MAILMETA_MODEL_STEPS (operations per client) override it and the length.

A racing client may legitimately get NO (a folder the other one deleted,
a UID it expunged) or be disconnected (its selected folder deleted or
renamed under it: "IMAP session state is inconsistent", which Dovecot's
log tells when the BYE is lost during an APPEND); those are counted.
A NO [SERVERBUG] is Dovecot's own Maildir index racing two clients that
create and delete one folder at once: counted, not failed.  BAD, an
unexpected disconnect or any exception on our side fails the test, and so do a panic
of a process serving the user, an error of the mail plugin and a sync that
failed for another reason than the database being away or a folder
vanishing under it (those are printed).  The stack is shared: deliveries
the MX keeps deferring for reasons of its own (virus scanner stopped by
another test, rate limits) are dropped and counted, not failed.  When the
mirror does not converge, the user's Maildir and both states are kept in
/tmp/mailmeta-model-<user>/.
"""

import email
import email.utils
import imaplib
import json
import os
import poplib
import random
import re
import shutil
import smtplib
import subprocess
import threading
import time
import uuid
from collections import Counter
from email.message import EmailMessage

import pytest

from test_mirror import (SPECIAL_USE, doveadm, log_offset, log_since, parse_list,
                         pg_ctl, quoted, snapshot, spool_marks, uuid8, wait_for_login)

STEPS = int(os.environ.get("MAILMETA_MODEL_STEPS") or 400)
CONVERGE_TIMEOUT = 60.0
OUTAGE_MIN_SECS = 8.0     # long enough for the watcher to back off a few times
OUTAGE_MAX_SECS = 30.0

# Folders the clients create, rename and delete (and race on): nested
# ones, one with "&" (modified UTF-7 "&-"), UTF-8 ones, and one Dovecot
# refuses (Maildir++ forbids ".").
POOL = ["Projects", "Projects/2026", "Projects/2026/Q3", "Lists",
        "Lists/dev-announce", "Reports/Grüße & more", "Ünïcödé/日本語",
        "Old", "Old/Stuff", "A & B", "v1.2"]
DEFAULTS = ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"]
SYSTEM_FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
KEYWORDS = ["$label1", "$Forwarded", "$MDNSent", "Work", "todo", "$Junk",
            "NonJunk", "$Important"]
# NOs a racing or careless client legitimately gets
LEGIT_NO = re.compile(
    r"TRYCREATE|NONEXISTENT|ALREADYEXISTS|CANNOT|EXPUNGEISSUED|"
    r"doesn't exist|already exists|has children|not allowed|"
    r"isn't supported|Mailbox was deleted|No messages|own child|"
    r"Can't rename|Can't delete|added to mailbox during deletion", re.I)
SERVER_TROUBLE = re.compile(r"SERVERBUG|Internal error|UNAVAILABLE", re.I)
RELOGIN = re.compile(r"inconsistent|was deleted|renamed|shutting down", re.I)
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
QUEUED_AS = re.compile(rb"queued as ([0-9A-Za-z]+)")
PASSWORDS = {}      # user -> password, for the post-mortem


class Changing(Exception):
    """IMAP changed while it was being read: look again."""


class Broken(Exception):
    """Something the servers must never do."""


class SessionLost(Exception):
    """Disconnected (legitimately) while PostgreSQL is down: no new login."""


def wire(msg):
    """A message's bytes as they travel: CRLF line ends."""
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# ------------------------------------------------------------- snapshots
FETCH_LINE = re.compile(
    r"UID (?P<uid>\d+)|FLAGS \((?P<flags>[^)]*)\)|RFC822\.SIZE (?P<size>\d+)|"
    r'INTERNALDATE "(?P<date>[^"]+)"|MODSEQ \((?P<modseq>\d+)\)')


def parse_fetch(text):
    out = {}
    for m in FETCH_LINE.finditer(text):
        for k, v in m.groupdict().items():
            if v is not None:
                out[k] = v
    return out


def mailmeta_id_of(raw):
    """The mailmeta_id the mirror must give a message with these bytes
    (doc/mailbox-mirror.md, Identities)."""
    msg = email.message_from_bytes(raw)
    value = msg.get("X-Mailmeta-ID")
    if value is not None and UUID_RE.match(str(value).strip()):
        return str(value).strip().lower()
    return uuid8(raw)


def login(stack, user, pw, timeout=60):
    """An IMAP session; retried while logins fail for a moment (PostgreSQL
    restarted, Dovecot reloaded by someone else on this shared stack)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return stack.imap(user, pw)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def imap_snapshot(stack, user, pw, bodies):
    """What IMAP reports, in the mirror's terms; BODIES caches each
    message's (mailmeta_id, Message-ID) by (folder, uidvalidity, uid, size,
    internal date).  Raises Changing when IMAP changed while being read."""
    m = login(stack, user, pw)
    try:
        typ, data = m._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK", data
        typ, lines = m.list('""', "*")
        assert typ == "OK", lines
        folders = parse_list(lines)
        typ, lines = m.lsub('""', "*")
        assert typ == "OK", lines
        subscribed = set(parse_list(lines))
        state = {}
        for name, attrs in folders.items():
            if attrs & {"\\Noselect", "\\NonExistent"}:
                continue
            typ, data = m.select(quoted(name), readonly=True)
            if typ != "OK" and b"doesn't exist" in data[0]:
                # Dovecot lists a subscribed parent it deleted, whose
                # children remain, without \Noselect or \NonExistent;
                # SELECT knows better (and the syncer skips it too)
                continue
            if typ != "OK":
                raise Changing(f"cannot select {name!r}: {data!r}")
            uidvalidity = int(m.response("UIDVALIDITY")[1][0])
            uidnext = int(m.response("UIDNEXT")[1][0])
            highest_modseq = int(m.response("HIGHESTMODSEQ")[1][0])
            exists = int(data[0])
            messages = {}
            if exists:
                typ, data = m.uid("FETCH", "1:*",
                                  "(UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ)")
                assert typ == "OK", data
                for item in data:
                    if not item:
                        continue
                    text = item.decode() if isinstance(item, bytes) else item[0].decode()
                    f = parse_fetch(text)
                    if "uid" not in f:
                        continue
                    words = set(f["flags"].split()) - {"\\Recent"}
                    messages[int(f["uid"])] = {
                        "flags": frozenset(w for w in words if w.startswith("\\")),
                        "keywords": frozenset(w for w in words if not w.startswith("\\")),
                        "size": int(f["size"]),
                        "date": int(email.utils.mktime_tz(
                            email.utils.parsedate_tz(f["date"]))),
                        "modseq": int(f["modseq"]),
                    }
                # keyed by what identifies a message even where Dovecot
                # gave two folders the same UIDVALIDITY (a race seen here)
                def key(u):
                    return (name, uidvalidity, u, messages[u]["size"], messages[u]["date"])
                missing = [u for u in messages if key(u) not in bodies]
                if missing:
                    typ, data = m.uid("FETCH", ",".join(map(str, missing)),
                                      "(UID BODY.PEEK[])")
                    assert typ == "OK", data
                    for item in data:
                        if isinstance(item, tuple):
                            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                            mid = email.message_from_bytes(item[1]).get("Message-ID")
                            if uid in messages:
                                bodies[key(uid)] = (mailmeta_id_of(item[1]),
                                                    (mid or "").strip().strip("<>"))
                for uid, info in messages.items():
                    if key(uid) not in bodies:
                        raise Changing(f"no BODY[] of {key(uid)!r}")
                    info["mailmeta_id"] = bodies[key(uid)][0]
            state[name] = {
                "special_use": frozenset(attrs & SPECIAL_USE),
                "subscribed": name in subscribed,
                "uidvalidity": uidvalidity,
                "uidnext": uidnext,
                "highest_modseq": highest_modseq,
                "count": exists,
                "total": len(messages),
                "unread": sum(1 for i in messages.values()
                              if "\\Seen" not in i["flags"]),
                "messages": messages,
            }
        return state
    finally:
        try:
            m.logout()
        except Exception:
            pass


def mirror_snapshot(stack, user):
    rows = stack.sql(
        "SELECT json_build_object("
        " 'folders', (SELECT coalesce(json_agg(json_build_object("
        "   'name', f.name, 'special_use', f.special_use, 'subscribed', f.subscribed,"
        "   'uidvalidity', f.uidvalidity, 'uidnext', f.uidnext,"
        "   'highest_modseq', f.highest_modseq,"
        "   'count', f.message_count, 'total', f.total, 'unread', f.unread)), '[]')"
        "   FROM mail.folders f WHERE f.user_id = u.user_id),"
        " 'messages', (SELECT coalesce(json_agg(json_build_object("
        "   'folder', f.name, 'uid', m.uid, 'seen', m.seen, 'answered', m.answered,"
        "   'flagged', m.flagged, 'deleted', m.deleted, 'draft', m.draft,"
        "   'keywords', m.keywords, 'size', m.size_bytes,"
        "   'date', extract(epoch FROM m.internal_date)::bigint, 'modseq', m.modseq,"
        "   'mailmeta_id', m.mailmeta_id)), '[]')"
        "   FROM mail.mailbox_messages m JOIN mail.folders f USING (user_id, folder_id)"
        "   WHERE m.user_id = u.user_id))"
        " FROM mail.users u WHERE u.address = %s", user)
    doc = json.loads(rows[0][0])
    state = {}
    for f in doc["folders"]:
        state[f["name"]] = {
            "special_use": frozenset((f["special_use"] or "").split()),
            "subscribed": f["subscribed"],
            "uidvalidity": f["uidvalidity"],
            "uidnext": f["uidnext"],
            "highest_modseq": f["highest_modseq"],
            "count": f["count"],
            "total": f["total"],
            "unread": f["unread"],
            "messages": {},
        }
    for r in doc["messages"]:
        flags = frozenset(n for n in SYSTEM_FLAGS if r[n[1:].lower()])
        state[r["folder"]]["messages"][r["uid"]] = {
            "flags": flags,
            "keywords": frozenset(r["keywords"]),
            "size": r["size"],
            "date": r["date"],
            "modseq": r["modseq"],
            "mailmeta_id": r["mailmeta_id"],
        }
    return state


def describe(want, got, limit=25):
    lines = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            lines.append(f"{name!r}: missing from the mirror")
        elif name not in want:
            lines.append(f"{name!r}: in the mirror only")
        else:
            w, g = want[name], got[name]
            for key in w:
                if key != "messages" and w[key] != g[key]:
                    lines.append(f"{name!r} {key}: IMAP {w[key]!r} mirror {g[key]!r}")
            wm, gm = w["messages"], g["messages"]
            for uid in sorted(set(wm) | set(gm)):
                if uid not in gm:
                    lines.append(f"{name!r} UID {uid}: missing from the mirror")
                elif uid not in wm:
                    lines.append(f"{name!r} UID {uid}: in the mirror only")
                elif wm[uid] != gm[uid]:
                    diff = {k: (wm[uid][k], gm[uid][k]) for k in wm[uid]
                            if wm[uid][k] != gm[uid][k]}
                    lines.append(f"{name!r} UID {uid}: (IMAP, mirror) {diff!r}")
    more = f" ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def maildir_of(stack, user):
    local, domain = user.split("@")
    return os.path.join(stack.env["STACK_DIR"], "mail", domain, local, "Maildir")


def folder_guids(stack, user):
    """{maildir folder: (uidvalidity, guid)} from each dovecot-uidlist."""
    out = {}
    root = maildir_of(stack, user)
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        path = os.path.join(root, entry, "dovecot-uidlist") if entry != "." else None
        if entry in ("cur", "new", "tmp") or not path or not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            header = f.readline().split()
        fields = {w[0]: w[1:] for w in header[1:] if w}
        out[entry] = (fields.get("V"), fields.get("G"))
    return out


def post_mortem(stack, user, want, got):
    """Keeps what a failure needs to be understood: a copy of the Maildir,
    both states, and every message whose mailmeta_id differs examined
    again.  Returns a text for the assertion."""
    keep = f"/tmp/mailmeta-model-{user}"
    shutil.rmtree(keep, ignore_errors=True)
    try:
        shutil.copytree(maildir_of(stack, user), os.path.join(keep, "Maildir"), symlinks=True)
    except OSError:
        pass
    with open(os.path.join(keep, "states.txt"), "w") as f:
        f.write(f"IMAP:\n{want!r}\n\nmirror:\n{got!r}\n")
    lines = [f"Maildir and both states kept in {keep}"]
    guids = folder_guids(stack, user)
    shared = Counter(g for _, g in guids.values())
    for folder, (v, g) in guids.items():
        if shared[g] > 1:
            lines.append(f"{folder}: UIDVALIDITY {v} GUID {g} shared with another folder")
    if want and got:
        m = login(stack, user, PASSWORDS[user])
        try:
            for name in set(want) & set(got):
                for uid in set(want[name]["messages"]) & set(got[name]["messages"]):
                    w, g = want[name]["messages"][uid], got[name]["messages"][uid]
                    if w["mailmeta_id"] == g["mailmeta_id"]:
                        continue
                    m.select(quoted(name), readonly=True)
                    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
                    raw = next((d[1] for d in data if isinstance(d, tuple)), b"")
                    stamp = email.message_from_bytes(raw).get_all("X-Mailmeta-ID")
                    lines.append(f"{name!r} UID {uid}: X-Mailmeta-ID {stamp}, uuid8 of BODY[]"
                                 f" {uuid8(raw)}, mirror {g['mailmeta_id']}, size {len(raw)}")
        finally:
            m.logout()
    return "\n".join(lines)


def wait_converged(stack, user, pw, bodies, timeout=CONVERGE_TIMEOUT, why=""):
    """Poll until the mirror equals what IMAP reports; returns the state
    and how long it took."""
    started = time.monotonic()
    deadline = started + timeout
    want = got = None
    while True:
        try:
            want = imap_snapshot(stack, user, pw, bodies)
            got = mirror_snapshot(stack, user)
            if want == got and not spool_marks(stack, user):
                # nothing pending: this is the settled state
                return want, time.monotonic() - started
            difference = describe(want, got)
        except Changing as e:
            difference = f"IMAP kept changing: {e}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{why}mirror of {user} differs from IMAP after {timeout:.0f} s"
                f" (marks pending: {spool_marks(stack, user)}): {difference}\n"
                + post_mortem(stack, user, want, got))
        time.sleep(0.5)


def check_metadata(stack, user, state, bodies, expected_subjects, why=""):
    """Every mirrored message has its metadata row and the user's per-user
    row, and the metadata built from a message describes that message."""
    lacking = stack.sql(
        "SELECT f.name, m.uid, m.mailmeta_id,"
        " NOT EXISTS (SELECT 1 FROM mail.messages x WHERE x.mailmeta_id = m.mailmeta_id),"
        " NOT EXISTS (SELECT 1 FROM mail.user_messages x"
        "             WHERE x.user_id = m.user_id AND x.mailmeta_id = m.mailmeta_id)"
        " FROM mail.mailbox_messages m JOIN mail.folders f USING (user_id, folder_id)"
        " JOIN mail.users u USING (user_id) WHERE u.address = %s", user)
    bad = [r for r in lacking if r[3] == "t" or r[4] == "t"]
    assert not bad, (f"{why}mirrored messages without metadata row / per-user row"
                     f" (folder, uid, id, no row, no per-user row): {bad[:10]}")
    ids = {}
    for (name, uidvalidity, uid, *_), (mid, msgid) in bodies.items():
        folder = state.get(name)
        if folder and folder["uidvalidity"] == uidvalidity and uid in folder["messages"]:
            ids[mid] = msgid
    if not ids:
        return
    rows = stack.sql("SELECT mailmeta_id, subject FROM mail.messages"
                     " WHERE mailmeta_id = ANY (%s::uuid[])", list(ids))
    wrong = [(mid, subject, expected_subjects[ids[mid]]) for mid, subject in rows
             if ids[mid] in expected_subjects and subject != expected_subjects[ids[mid]]]
    assert not wrong, f"{why}metadata subjects (id, recorded, sent): {wrong[:10]}"


# --------------------------------------------------------------- workload
class Run:
    """What the clients of one test share."""

    def __init__(self, stack, user, pw, seed, steps):
        self.stack, self.user, self.pw = stack, user, pw
        self.seed, self.steps = seed, steps
        self.lock = threading.Lock()
        self.errors = []
        self.counts = Counter()
        self.subjects = {}          # Message-ID -> Subject of every message we made
        self.queue_ids = []         # Postfix queue ids of accepted deliveries
        self.relogins = []          # (monotonic, operation, why)
        self.imap_done = []         # (end, seconds, start, command, args) of IMAP commands
        self.ops_done = 0
        self.skipped = 0            # steps not run: session lost during the outage
        self.outage = threading.Event()
        self.stop = threading.Event()
        self.mx_trouble = False     # the MX kept deferring deliveries
        self.restarted_at = None    # monotonic time PostgreSQL came back
        # a sender of its own: other tests' rate limits on theirs stay theirs
        self.sender = f"model-{uuid.uuid4().hex[:8]}@outside.example"

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def fail(self, text):
        with self.lock:
            self.errors.append(text)
        self.stop.set()


# operations that need Dovecot's auth, hence PostgreSQL, at once
NEED_AUTH = {"deliver_lmtp", "pop3_dele"}


class Client(threading.Thread):
    def __init__(self, run, index, barrier=None, pause_at=()):
        super().__init__(daemon=True, name=f"client{index}")
        self.r = run
        self.index = index
        self.rng = random.Random(f"{run.seed}/{index}")
        self.barrier = barrier
        self.pause_at = set(pause_at)
        self.m = None
        self.selected = None
        self.folders = list(DEFAULTS)
        self.log = []
        self.current = None     # (operation, monotonic start)
        self.done = 0           # steps completed

    # ----------------------------------------------------------- plumbing
    def connect(self):
        if self.r.outage.is_set():
            # a login needs PostgreSQL: a client that lost its session
            # while the test holds it down ends its run there, so that the
            # run ends during the outage
            raise SessionLost()
        if self.current:
            self.current = ("login", time.monotonic())
        deadline = time.monotonic() + 120
        while True:
            try:
                self.m = self.r.stack.imap(self.r.user, self.r.pw)
                self.selected = None
                return
            except Exception as e:
                # logins need PostgreSQL (passdb): retried while it is away,
                # or restarted by someone else on this shared stack
                self.r.count("login retried")
                if time.monotonic() > deadline or self.r.stop.is_set():
                    raise Broken(f"cannot log in: {e!r}")
                time.sleep(0.5)

    def hung_up_inconsistent(self, log_at):
        """Whether Dovecot hung up on this user's session because its
        selected folder was deleted or renamed, per Dovecot's log since
        log_at.  The BYE saying so is lost when Dovecot hangs up while an
        APPEND's literal is on its way: the client then sees only EOF."""
        deadline = time.monotonic() + 2     # the log process may lag
        while True:
            if any(f"imap({self.r.user})" in line
                   and "IMAP session state is inconsistent" in line
                   for line in log_since(self.r.stack, "dovecot.log", log_at)):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def imap(self, what, *args):
        """One IMAP command: OK, or a legitimate NO; anything else fails."""
        started = time.monotonic()
        typ, data = getattr(self.m, what)(*args)
        ended = time.monotonic()
        with self.r.lock:
            self.r.imap_done.append((ended, ended - started, started, what, args[:2]))
        text = " ".join(d.decode(errors="replace") if isinstance(d, bytes) else str(d)
                        for d in data if d is not None)
        if typ == "OK":
            return data
        if typ == "NO" and not SERVER_TROUBLE.search(text) and LEGIT_NO.search(text):
            self.r.count(f"NO {what}")
            return None
        if typ == "NO" and "SERVERBUG" in text:
            # Dovecot's Maildir index when two clients create and delete
            # one folder at once ("duplicate transaction log sequence",
            # "Filename keeps changing"): its own race, logged, healed by
            # Dovecot; the mail plugin's errors are checked in the log
            self.r.count(f"NO [SERVERBUG] {what}")
            return None
        raise Broken(f"{what}{args!r} -> {typ} {text}")

    def message(self, to_user=False):
        n = self.rng.randrange(10**9)
        me = self.r.user
        msgid = f"{uuid.uuid4().hex}@model.test"
        subject = self.rng.choice([f"model {n}", f"Re: model {n}",
                                   f"Grüße aus Köln {n}", f"日本語の件名 {n}"])
        msg = EmailMessage()
        msg["From"] = (f"Outside Person <{self.r.sender}>" if to_user
                       else f"Me Myself <{me}>")
        msg["To"] = (me if to_user else self.rng.choice(
            ["Carol Example <carol@example.org>", "dave@example.net",
             '"Ünïcode, Name" <uni@example.com>']))
        if self.rng.random() < 0.3:
            msg["Cc"] = "Erin <erin@example.org>"
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{msgid}>"
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg.set_content(f"body {n}\n" + "lorem ipsum dolor\n" * self.rng.randrange(1, 40))
        if self.rng.random() < 0.15:
            msg.add_attachment(os.urandom(self.rng.randrange(100, 20000)),
                               maintype="application", subtype="octet-stream",
                               filename=f"data-{n}.bin")
        with self.r.lock:
            self.r.subjects[msgid] = subject
        return msg

    def folder(self, existing=True):
        if existing and self.folders and self.rng.random() < 0.85:
            return self.rng.choice(self.folders)
        return self.rng.choice(POOL + DEFAULTS)

    def flags(self, system=True):
        words = []
        if system:
            words += self.rng.sample(SYSTEM_FLAGS, self.rng.randrange(0, 3))
        words += self.rng.sample(KEYWORDS, self.rng.randrange(0, 3))
        return "(" + " ".join(words) + ")"

    def refresh_folders(self):
        data = self.imap("list", '""', "*")
        if data is not None:
            self.folders = [n for n, a in parse_list(data).items()
                            if not a & {"\\Noselect", "\\NonExistent"}]

    def select(self, name=None):
        name = name or self.folder()
        if self.imap("select", quoted(name)) is not None:
            self.selected = name
            return True
        self.selected = None
        return False

    def uids(self):
        if self.selected is None and not self.select():
            return []
        data = self.imap("uid", "SEARCH", "ALL")
        return [int(u) for u in data[0].split()] if data else []

    def uid_set(self):
        uids = self.uids()
        if not uids:
            return None
        pick = self.rng.random()
        if pick < 0.1:
            return "1:*"
        if pick < 0.25:
            a, b = sorted(self.rng.sample(uids, 2)) if len(uids) > 1 else (uids[0], uids[0])
            return f"{a}:{b}"
        if pick < 0.3:
            return str(max(uids) + self.rng.randrange(1, 5))     # gone or never there
        return ",".join(map(str, self.rng.sample(uids, min(len(uids), self.rng.randrange(1, 4)))))

    # ---------------------------------------------------------- operations
    def op_append(self):
        msg = self.message()
        flags = self.flags()
        date = None
        if self.rng.random() < 0.3:     # an old message, imported
            date = imaplib.Time2Internaldate(time.time() - self.rng.randrange(86400 * 2000))
        self.imap("append", quoted(self.folder()), flags if flags != "()" else None,
                  date, wire(msg))

    def op_recopy(self):
        """A client-side copy: FETCH a message, APPEND its bytes elsewhere
        (same mailmeta_id, a stamped one keeps the milter's)."""
        uids = self.uids()
        if not uids:
            return
        data = self.imap("uid", "FETCH", str(self.rng.choice(uids)), "(BODY.PEEK[])")
        raw = next((d[1] for d in data or () if isinstance(d, tuple)), None)
        if raw:
            self.imap("append", quoted(self.folder()), self.flags(), None, raw)

    def op_store(self):
        s = self.uid_set()
        if s:
            mode = self.rng.choice(["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT",
                                    "-FLAGS.SILENT"])
            self.imap("uid", "STORE", s, mode, self.flags())

    def op_copy(self):
        s = self.uid_set()
        if s:
            self.imap("uid", "COPY", s, quoted(self.folder()))

    def op_move(self):
        s = self.uid_set()
        if s:
            self.imap("uid", "MOVE", s, quoted(self.folder()))

    def op_expunge(self):
        s = self.uid_set()
        if s:
            self.imap("uid", "STORE", s, "+FLAGS.SILENT", "(\\Deleted)")
            self.imap("expunge")

    def op_uid_expunge(self):
        s = self.uid_set()
        if s:
            self.imap("uid", "STORE", s, "+FLAGS.SILENT", "(\\Deleted)")
            self.imap("uid", "EXPUNGE", s)

    def op_close(self):
        if self.selected is not None:
            self.imap("close")
            self.selected = None

    def op_select(self):
        self.select()

    def op_create(self):
        self.imap("create", quoted(self.rng.choice(POOL)))
        self.refresh_folders()

    def op_rename(self):
        src = self.rng.choice(POOL)
        dst = self.rng.choice(POOL + [f"Old/{src}", f"Renamed {self.rng.randrange(100)}"])
        self.imap("rename", quoted(src), quoted(dst))
        self.refresh_folders()

    def op_delete(self):
        name = self.rng.choice(POOL)
        self.imap("delete", quoted(name))
        if name == self.selected:
            self.selected = None
        self.refresh_folders()

    def op_subscribe(self):
        self.imap("subscribe", quoted(self.folder(existing=False)))

    def op_unsubscribe(self):
        self.imap("unsubscribe", quoted(self.folder(existing=False)))

    def temporary(self, what, attempt):
        """Runs ATTEMPT (returns an error text, or None when done) until it
        succeeds.  Deliveries and logins need PostgreSQL: while the test
        holds it down one failure is counted and the operation dropped.
        Otherwise a temporary failure is retried for a while, then the
        operation is dropped and counted: on this shared stack others stop
        the virus scanner, restart PostgreSQL or add rate limits, and a
        delivery deferred by the MX is not what this test is about."""
        deadline = time.monotonic() + 15
        while True:
            err = attempt()
            if err is None:
                return True
            if self.r.outage.is_set():
                self.r.count(f"{what} failed during outage")
                return False
            if time.monotonic() > deadline or self.r.stop.is_set():
                self.r.count(f"{what} given up (temporary failure: {err[:60]})")
                return False
            self.r.count(f"{what} retried")
            time.sleep(1)

    def op_deliver_smtp(self):
        """Through Postfix's MX and the milter (stamped, recorded)."""
        if self.r.mx_trouble:
            # the MX kept deferring (see temporary): LMTP instead
            self.r.count("smtp replaced by lmtp")
            return self.op_deliver_lmtp()
        msg = self.message(to_user=True)

        def attempt():
            try:
                with self.r.stack.smtp() as s:
                    s.ehlo()
                    code, resp = s.mail(self.r.sender)
                    if code == 250:
                        code, resp = s.rcpt(self.r.user)
                    if code == 250:
                        code, resp = s.data(wire(msg))
            except (smtplib.SMTPException, OSError) as e:
                return repr(e)
            if code == 250:
                qid = QUEUED_AS.search(resp)
                with self.r.lock:
                    self.r.queue_ids.append(qid.group(1).decode() if qid else None)
                self.r.count("delivered smtp")
                return None
            if not 400 <= code < 500:
                raise Broken(f"SMTP delivery refused: {code} {resp!r}")
            return f"{code} {resp!r}"
        if not self.temporary("smtp", attempt) and not self.r.outage.is_set():
            self.r.mx_trouble = True

    def op_deliver_lmtp(self):
        """Straight into Dovecot's LMTP: no milter, no stamp."""
        msg = self.message(to_user=True)
        path = os.path.join(self.r.stack.env["STACK_DIR"], "run", "dovecot", "lmtp")

        def attempt():
            try:
                with smtplib.LMTP(path) as s:
                    refused = s.sendmail(self.r.sender, [self.r.user], wire(msg))
            except smtplib.SMTPRecipientsRefused as e:
                refused = e.recipients
            except (smtplib.SMTPException, OSError) as e:
                return repr(e)
            if not refused:
                self.r.count("delivered lmtp")
                return None
            code, text = next(iter(refused.values()))
            if (code == 550 and b"doesn't exist" in text and self.r.restarted_at
                    and time.monotonic() - self.r.restarted_at < 15):
                # Dovecot 2.3's auth (sql) answers "user doesn't exist" for a
                # moment after PostgreSQL comes back ("Could not escape
                # string: Not connected to database"): a permanent LMTP
                # failure Postfix would bounce.  Not the mirror's doing;
                # reported by the test, not failed
                self.r.count("lmtp 550 user unknown just after the restart (Dovecot auth-sql)")
                return None
            if not 400 <= code < 500:
                raise Broken(f"LMTP delivery refused: {refused!r}")
            return repr(refused)
        self.temporary("lmtp", attempt)

    def op_pop3_dele(self):
        session = []

        def attempt():
            try:
                session.append(self.r.stack.pop3(self.r.user, self.r.pw))
            except (poplib.error_proto, OSError) as e:
                return repr(e)
        if not self.temporary("pop3 login", attempt):
            return
        p = session[0]
        try:
            count = p.stat()[0]
            for n in self.rng.sample(range(1, count + 1), min(count, self.rng.randrange(1, 3))):
                try:
                    p.dele(n)
                    self.r.count("pop3 dele")
                except poplib.error_proto as e:
                    self.r.count("pop3 dele -ERR")
                    if SERVER_TROUBLE.search(str(e)):
                        raise Broken(f"POP3 DELE: {e}")
        finally:
            try:
                p.quit()
            except poplib.error_proto as e:
                # "-ERR Some messages couldn't be deleted": expunged by IMAP meanwhile
                self.r.count("pop3 quit -ERR")
                if SERVER_TROUBLE.search(str(e)):
                    raise Broken(f"POP3 QUIT: {e}")

    OPS = {"append": 14, "recopy": 3, "store": 16, "copy": 6, "move": 6,
           "expunge": 4, "uid_expunge": 4, "close": 2, "select": 8, "create": 5,
           "rename": 3, "delete": 3, "subscribe": 3, "unsubscribe": 3,
           "deliver_smtp": 6, "deliver_lmtp": 3, "pop3_dele": 3}

    def run(self):
        names, weights = zip(*self.OPS.items())
        try:
            self.connect()
            self.refresh_folders()
            for step in range(self.r.steps):
                if self.r.stop.is_set():
                    return
                if step in self.pause_at:
                    self.barrier.wait(timeout=300)      # main checks the mirror
                    self.barrier.wait(timeout=300)
                op = self.rng.choices(names, weights)[0]
                while op in NEED_AUTH and self.r.outage.is_set():
                    # Dovecot's auth waits for PostgreSQL (LMTP's userdb
                    # lookup, POP3's login): not what this is about
                    self.r.count(f"{op} skipped during outage")
                    op = self.rng.choices(names, weights)[0]
                self.log.append((step, op, self.selected))
                self.current = (op, time.monotonic())
                for attempt in range(3):
                    log_at = log_offset(self.r.stack, "dovecot.log")
                    try:
                        getattr(self, "op_" + op)()
                        break
                    except imaplib.IMAP4.abort as e:
                        # selected folder deleted or renamed by the other
                        # client: Dovecot says BYE, the client logs in again
                        if not RELOGIN.search(str(e)) \
                                and not self.hung_up_inconsistent(log_at):
                            raise Broken(f"{op}: disconnected: {e}")
                        self.r.count("relogin")
                        with self.r.lock:
                            self.r.relogins.append((time.monotonic(), op, str(e)))
                        self.connect()
                        self.refresh_folders()
                self.r.count(op)
                self.done += 1
                with self.r.lock:
                    self.r.ops_done += 1
            try:
                self.m.logout()
            except Exception:
                pass
        except threading.BrokenBarrierError:
            pass
        except SessionLost:
            with self.r.lock:
                self.r.skipped += self.r.steps - self.done
        except Exception as e:
            self.r.fail(f"{self.name} step {len(self.log) - 1} {self.log[-5:]}: {e!r}")
            if self.barrier is not None:
                self.barrier.abort()


class Observer(threading.Thread):
    """A third IMAP session for the outage test, logged in before it, on
    INBOX (which no client can delete or rename, so the session is never
    lost): SEARCH and STORE on and on, each command timed."""

    def __init__(self, run):
        super().__init__(daemon=True, name="observer")
        self.r = run
        self.rng = random.Random(f"{run.seed}/observer")
        self.stop = threading.Event()
        self.m = login(run.stack, run.user, run.pw)
        typ, data = self.m.select("INBOX")
        assert typ == "OK", data

    def command(self, *args):
        started = time.monotonic()
        typ, data = self.m.uid(*args)
        ended = time.monotonic()
        with self.r.lock:
            self.r.imap_done.append((ended, ended - started, started, "observer uid", args[:2]))
        if typ != "OK":
            raise Broken(f"observer: UID {args!r} -> {typ} {data!r}")
        return data

    def run(self):
        try:
            while not self.stop.wait(0.02):
                uids = self.command("SEARCH", "ALL")[0].split()
                if uids:
                    self.command("STORE", self.rng.choice(uids).decode(),
                                 self.rng.choice(["+FLAGS", "-FLAGS"]), "($observed)")
                self.r.count("observer commands")
            self.m.logout()
        except Exception as e:
            self.r.fail(f"observer: {e!r}")


def postqueue(stack):
    out = subprocess.run(["postqueue", "-c", stack.env["POSTFIX_CONFIG_DIR"], "-j"],
                         capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_deliveries(stack, run, timeout=120):
    """Until Postfix has handed every accepted delivery to Dovecot; deferred
    ones (LMTP refused while PostgreSQL was down) are flushed at once."""
    wanted = {q for q in run.queue_ids if q}
    deadline = time.monotonic() + timeout
    last_flush = 0
    while True:
        # (a file whose recipients are all done is delivered: Postfix, reloaded
        # by someone meanwhile, may leave it in incoming for a while)
        queued = {e["queue_id"]: e for e in postqueue(stack)
                  if e["queue_id"] in wanted and e.get("recipients")}
        if not queued:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still queued after {timeout} s: {queued}")
        if time.monotonic() - last_flush > 5:
            for qid, e in queued.items():
                if e.get("queue_name") == "deferred":
                    subprocess.run(["postqueue", "-c", stack.env["POSTFIX_CONFIG_DIR"],
                                    "-i", qid], capture_output=True)
            last_flush = time.monotonic()
        time.sleep(0.3)


DB_AWAY = re.compile(r"connect|server closed|terminating|shutting down|starting up|"
                     r"Connection refused|no connection|connection to server|"
                     r"Auth USER lookup failed|userdb|Temporary|listing users", re.I)


# A sync that fails because the user deleted or renamed a folder while it
# read it: retried (and converging), but logged as an error, rolled back
# in full and putting the whole watcher into back-off — reported, not failed.
FOLDER_RACE = re.compile(r"deleted under us|No such file or directory|doesn't exist", re.I)


def check_logs(stack, user, offsets):
    """Problems logged while the test ran: a panic or crash of a process
    serving USER, an error of the mail plugin, a sync of USER that failed
    for another reason than the database being away, or the syncer's complaints about a folder it could
    not bring into step.  Other errors Dovecot logged for USER (its own
    races, e.g. a save into a folder the other client just deleted) are
    printed, not failed."""
    bad, notes, races, guid_warnings = [], [], [], []
    # (lines about the database being away are expected when the test
    # stops it, and possible when someone else restarts it: printed)
    for line in log_since(stack, "dovecot.log", offsets["dovecot.log"]):
        if user in line or "mailmeta:" in line:
            if re.search(r"Panic|Fatal|killed with signal|core dumped", line):
                bad.append(line)
            elif "Error" in line:
                (bad if "mailmeta:" in line and not DB_AWAY.search(line)
                 else notes).append(line)
    previous = ""
    for line in log_since(stack, "mirror.log", offsets["mirror.log"]):
        # (the userdb lookup fails while PostgreSQL is away, or when
        # Dovecot's auth restarts in a reload: the watcher retries)
        after_lookup, previous = "auth-master" in previous, line
        if "still differs" in line:
            bad.append(line)
        elif "same mailbox GUID" in line:
            # Dovecot showed two folders with one GUID for a moment (see
            # GuidWatch); the syncer skips the second: reported, and the
            # mirror must converge all the same
            guid_warnings.append(line)
        elif user in line and re.search(r"Error|Warning|Panic|Fatal", line):
            if DB_AWAY.search(line) or (after_lookup and "Internal error" in line):
                notes.append(line)
            elif FOLDER_RACE.search(line):
                races.append(line)
            else:
                bad.append(line)
    if notes:
        print(f"{len(notes)} other error line(s) logged for the user, e.g.:\n  "
              + "\n  ".join(notes[:5]))
    if races:
        print(f"{len(races)} sync(s) of the user failed (and were retried) because"
              f" a folder was deleted or renamed while they read it, e.g.:\n  "
              + "\n  ".join(races[:5]))
    if guid_warnings:
        print(f"the syncer met {len(guid_warnings)} folder(s) sharing a mailbox GUID, e.g.:\n  "
              + "\n  ".join(guid_warnings[:5]))
    return bad


class GuidWatch(threading.Thread):
    """Samples the user's Maildir folders' GUIDs (dovecot-uidlist headers)
    while the clients run, and remembers any moment two folders share
    one on disk."""

    def __init__(self, stack, user):
        super().__init__(daemon=True)
        self.stack, self.user = stack, user
        self.seen = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            try:
                guids = folder_guids(self.stack, self.user)
            except OSError:
                continue
            by_guid = {}
            for folder, (_, g) in guids.items():
                by_guid.setdefault(g, []).append(folder)
            for g, folders in by_guid.items():
                if g and len(folders) > 1 and (g, folders) not in [x[1:] for x in self.seen]:
                    self.seen.append((time.strftime("%H:%M:%S"), g, folders))

    def report(self):
        self.stop.set()
        self.join()
        if self.seen:
            print(f"on disk, Dovecot gave two folders one GUID {len(self.seen)} time(s):"
                  f" {self.seen[:5]}")


def summary(run, state, took, extra=""):
    folders = len(state)
    messages = sum(len(f["messages"]) for f in state.values())
    counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))
    print(f"\nseed {run.seed} (MAILMETA_MODEL_SEED={run.seed}"
          f" MAILMETA_MODEL_STEPS={run.steps}): {folders} folders, {messages} messages"
          f" at the end; mirror settled {took:.1f} s after the last change{extra}\n"
          f"operations: {counts}")


def new_seed():
    env = os.environ.get("MAILMETA_MODEL_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**31)


@pytest.fixture
def model_user(stack, directory):
    user = directory.add_user("model" + uuid.uuid4().hex[:6])
    PASSWORDS[user] = directory.passwords[user]
    return user, directory.passwords[user]


# ------------------------------------------------------------------ tests
def test_random_workload_mirror_equals_imap(stack, model_user):
    user, pw = model_user
    seed = new_seed()
    print(f"\nseed {seed} (rerun: MAILMETA_MODEL_SEED={seed})")
    run = Run(stack, user, pw, seed, STEPS)
    offsets = {n: log_offset(stack, n) for n in ("dovecot.log", "mirror.log")}
    why = f"[seed {seed}] "
    half = STEPS // 2
    barrier = threading.Barrier(3)
    clients = [Client(run, i, barrier, pause_at=[half]) for i in range(2)]
    bodies = {}
    guids = GuidWatch(stack, user)
    guids.start()
    for c in clients:
        c.start()
    # a checkpoint halfway: clients paused, deliveries done, mirror settled
    try:
        barrier.wait(timeout=300)
    except threading.BrokenBarrierError:
        pass
    if not run.errors:
        wait_deliveries(stack, run)
        state, took = wait_converged(stack, user, pw, bodies, why=why + "halfway: ")
        check_metadata(stack, user, state, bodies, run.subjects, why=why + "halfway: ")
        print(f"halfway: {len(state)} folders,"
              f" {sum(len(f['messages']) for f in state.values())} messages,"
              f" settled in {took:.1f} s")
        try:
            barrier.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass
    for c in clients:
        c.join(timeout=600)
    guids.report()
    assert not run.errors, why + "; ".join(run.errors)
    assert run.ops_done == 2 * STEPS
    wait_deliveries(stack, run)
    state, took = wait_converged(stack, user, pw, bodies, why=why)
    check_metadata(stack, user, state, bodies, run.subjects, why=why)
    summary(run, state, took)
    bad = check_logs(stack, user, offsets)
    assert not bad, why + "errors logged:\n" + "\n".join(bad[:20]) + "\n" + \
        post_mortem(stack, user, None, None)

    # what the incremental syncs built equals a rebuild from scratch, to
    # the last column (modseqs, dates, sizes, ids, counters)
    before = snapshot(stack, user)
    r = doveadm(stack, "mailmeta", "resync", "-u", user)
    assert r.returncode == 0, r.stderr
    after = snapshot(stack, user)
    assert before == after, why + "resync changed the mirror: " + repr(
        [x for x in zip(before[0] + before[1], after[0] + after[1]) if x[0] != x[1]][:5])


def test_postgres_restart_mid_run_converges_by_itself(stack, model_user):
    user, pw = model_user
    seed = new_seed()
    print(f"\nseed {seed} (rerun: MAILMETA_MODEL_SEED={seed})")
    run = Run(stack, user, pw, seed, STEPS)
    offsets = {n: log_offset(stack, n) for n in ("dovecot.log", "mirror.log")}
    why = f"[seed {seed}] "
    clients = [Client(run, i) for i in range(2)]
    observer = Observer(run)
    for c in clients:
        c.start()
    observer.start()
    bodies = {}
    stopped_at = started_at = None
    ops_before = ops_after = 0
    busy = []
    try:
        # stop it halfway through, at a moment the clients choose, while a
        # sync may be running
        while run.ops_done < STEPS and not run.stop.is_set() \
                and any(c.is_alive() for c in clients):
            time.sleep(0.05)
        run.outage.set()
        pg_ctl(stack, "-m", "fast", "-w", "stop")
        stopped_at = time.monotonic()
        ops_before = run.ops_done
        # the rest of the run happens while it is down (within bounds), so
        # that no change after the restart marks the user again: only the
        # watcher's retry of the marks it could not sync brings the mirror
        # into step
        while (any(c.is_alive() for c in clients)
               and time.monotonic() - stopped_at < OUTAGE_MAX_SECS) \
                or time.monotonic() - stopped_at < OUTAGE_MIN_SECS:
            time.sleep(0.05)
        ops_after = run.ops_done
        busy = [(c.name, c.current[0], round(time.monotonic() - c.current[1], 1))
                for c in clients if c.is_alive() and c.current]
        # the user is marked dirty and stays so while the database is away
        assert spool_marks(stack, user) or run.stop.is_set(), \
            why + "no mark for the user during the outage"
    finally:
        started_at = time.monotonic()
        pg_ctl(stack, "-w", "-l", os.path.join(stack.env["STACK_DIR"], "log",
                                               "postgresql.log"), "start")
        run.restarted_at = time.monotonic()
        # Postfix's pgsql clients mark the server dead for a minute; new
        # smtpd processes start afresh.
        subprocess.run(["postfix", "-c", stack.env["POSTFIX_CONFIG_DIR"], "reload"],
                       check=True, stderr=subprocess.DEVNULL)
        run.outage.clear()
        observer.stop.set()
    for c in clients + [observer]:
        c.join(timeout=600)
    assert not run.errors, why + "; ".join(run.errors)
    assert run.ops_done + run.skipped == 2 * STEPS, (run.ops_done, run.skipped)
    # IMAP kept working while PostgreSQL was away: commands completed, and
    # none of them waited for it
    during = [d for end, d, *_ in run.imap_done if stopped_at <= end <= started_at]
    slowest = max((x for x in run.imap_done if stopped_at <= x[0] <= started_at),
                  default=None, key=lambda x: x[1])
    if slowest:
        print(f"slowest IMAP command during the outage: {slowest[3]} {slowest[4]!r}"
              f" {slowest[1] * 1000:.0f} ms, started {slowest[2] - stopped_at:+.1f} s"
              f" after the stop")
    assert len(during) >= 10, why + (f"only {len(during)} IMAP commands during the outage;"
                                     f" at its end the clients were in (op, s): {busy};"
                                     f" {dict(run.counts)}")
    assert max(during) < 5, why + f"an IMAP command took {max(during):.1f} s during the outage"
    wait_for_login(stack, user, pw)
    wait_deliveries(stack, run)
    state, took = wait_converged(stack, user, pw, bodies, timeout=90, why=why)
    converged_at = time.monotonic()
    for at, op, text in run.relogins:
        print(f"relogin {at - stopped_at:+.1f} s after the stop, in {op}: {text}")
    check_metadata(stack, user, state, bodies, run.subjects, why=why)
    summary(run, state, took,
            f"; PostgreSQL down {started_at - stopped_at:.1f} s, {ops_after - ops_before}"
            f" operations and {len(during)} IMAP commands (max {max(during) * 1000:.0f} ms)"
            f" meanwhile, {'clients still busy at the restart: ' + repr(busy) if busy else 'the run ended in it'}"
            f" ({run.skipped} steps not run: a client lost its session during it);"
            f" mirror in step {converged_at - started_at:.1f} s after the restart")
    bad = check_logs(stack, user, offsets)
    assert not bad, why + "errors logged:\n" + "\n".join(bad[:20])


# --------------------------------------------------------------- contacts
def contacts(stack, user):
    """list_contacts: {address: {name, uses, source, blocked}}."""
    return {r[0]: {"name": r[1], "uses": int(r[2]), "source": r[5], "blocked": r[4]}
            for r in stack.sql("SELECT contact_address, display_name, use_count,"
                               " last_used, blocked, source FROM mail.list_contacts(%s)",
                               user)}


def sent_message(sender, to, cc=None, subject="sent", bcc=None):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    if bcc:
        msg["Bcc"] = bcc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@model.test>"
    msg["Date"] = email.utils.formatdate()
    msg.set_content(f"{subject}\n")
    return wire(msg)


def submission(stack, user, pw, timeout=60):
    """A logged-in submission session; retried while logins fail for a
    moment (PostgreSQL just restarted by a test, Dovecot's auth too)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return stack.submission(user, pw)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def append(stack, user, pw, folder, raw, flags="(\\Seen)"):
    m = login(stack, user, pw)
    try:
        typ, data = m.append(folder, flags, None, raw)
        assert typ == "OK", data
    finally:
        m.logout()


def wait_contacts(stack, user, addresses, timeout=30):
    deadline = time.monotonic() + timeout
    while not set(addresses) <= set(contacts(stack, user)):
        assert time.monotonic() < deadline, (
            f"{addresses} not in {user}'s contacts: {contacts(stack, user)}")
        time.sleep(0.2)
    return contacts(stack, user)


def auto(name, uses=1):
    return {"name": name, "uses": uses, "source": "auto", "blocked": "f"}


def test_contacts_from_submission_and_sent_copy_count_once(stack, directory, model_user):
    """A message sent through submission (the milter counts its envelope
    recipients, Bcc too) and APPENDed to Sent by the client (the mirror
    counts its To and Cc) is one message: use_count 1, named as in its
    headers.  (The stack's Postfix refuses outside addresses at RCPT, so
    the recipients here are the fixture's other users; outside addresses
    go through sendmail(1) in the next test.)"""
    user, pw = model_user
    login(stack, user, pw).logout()     # Dovecot's auth answers (after an outage test)
    bcc = directory.add_user("bcc" + uuid.uuid4().hex[:4])
    alice, bob = directory.alice, directory.bob
    bodies = {}
    raw = sent_message(f"Model User <{user}>", f"Alice Example <{alice.upper()}>",
                       cc=f'"Builder, Bob" <{bob}>', subject="contacts once")
    with submission(stack, user, pw) as s:
        assert s.sendmail(user, [alice, bob, bcc], raw) == {}
    # the milter counted them at once (it records before Postfix answers)
    want = {alice: auto("Alice Example"), bob: auto("Builder, Bob"), bcc: auto("")}   # no name: NULL
    assert contacts(stack, user) == want

    append(stack, user, pw, "Sent", raw)
    state, _ = wait_converged(stack, user, pw, bodies)
    assert len(state["Sent"]["messages"]) == 1
    # the Sent copy got its own record (direction mailbox), counted no more
    sent_id = next(iter(state["Sent"]["messages"].values()))["mailmeta_id"]
    assert sent_id == uuid8(raw)
    assert stack.sql("SELECT direction FROM mail.messages WHERE mailmeta_id = %s",
                     sent_id) == [["mailbox"]]
    assert contacts(stack, user) == want

    # copies of it — in Sent again, to Archive and moved back — count no
    # more; the same addresses and a new one in Drafts count nothing
    append(stack, user, pw, "Sent", raw, flags=None)
    m = login(stack, user, pw)
    try:
        m.select("Sent")
        assert m.uid("COPY", "1:*", "Archive")[0] == "OK"
        m.select("Archive")
        assert m.uid("MOVE", "1:*", "Sent")[0] == "OK"
    finally:
        m.logout()
    append(stack, user, pw, "Drafts",
           sent_message(user, f"{alice}, newbie@elsewhere.example", subject="draft"),
           flags="(\\Draft)")
    state, _ = wait_converged(stack, user, pw, bodies)
    assert len(state["Sent"]["messages"]) == 4
    assert contacts(stack, user) == want

    # a message the client saves to Sent before sending it: counted once,
    # by whichever path comes first; to the user's own address: never
    raw2 = sent_message(user, f"Alice A. <{alice}>, Me <{user}>", subject="second")
    append(stack, user, pw, "Sent", raw2)
    wait_converged(stack, user, pw, bodies)
    assert contacts(stack, user)[alice] == auto("Alice A.", 2)
    with submission(stack, user, pw) as s:
        assert s.sendmail(user, [alice, user], raw2) == {}
    got = contacts(stack, user)
    assert got == dict(want, **{alice: auto("Alice A.", 2)}), got
    assert stack.sql("SELECT count(*) FROM mail.contact_messages c JOIN mail.users u"
                     " USING (user_id) WHERE u.address = %s", user) == [["2"]]
    wait_converged(stack, user, pw, bodies)
    assert contacts(stack, user) == got


def test_contacts_from_sendmail_to_outside_addresses_count_once(stack, model_user):
    """sendmail(1) mail (the milter counts its envelope recipients: the
    envelope sender is the user) to two outside addresses with display
    names, and its copy APPENDed to Sent: each contact use_count 1.  The
    stack's Postfix bounces it; the bounce in INBOX counts nothing."""
    user, pw = model_user
    login(stack, user, pw).logout()     # Dovecot's auth answers (after an outage test)
    bodies = {}
    raw = sent_message(f"Model User <{user}>", "Carol Outside <Carol@Outside.example>",
                       cc='"Dave, Far Away" <dave@far.example>', subject="to the world")
    r = subprocess.run(["sendmail", "-C", stack.env["POSTFIX_CONFIG_DIR"], "-f", user,
                        "Carol@Outside.example", "dave@far.example"],
                       input=raw, capture_output=True)
    assert r.returncode == 0, r.stderr
    want = {"carol@outside.example": auto("Carol Outside"),
            "dave@far.example": auto("Dave, Far Away")}
    assert wait_contacts(stack, user, want) == want
    assert stack.sql("SELECT direction FROM mail.messages WHERE env_from = %s", user) \
        == [["outbound"]]

    append(stack, user, pw, "Sent", raw)
    stack.wait_for_imap(user, pw, "Undelivered Mail Returned to Sender")
    state, _ = wait_converged(stack, user, pw, bodies)
    assert len(state["Sent"]["messages"]) == 1
    assert len(state["INBOX"]["messages"]) == 1          # the bounce
    assert contacts(stack, user) == want
