"""No accepted message loses its record: the milter's journal takes what
PostgreSQL cannot commit in time and replays it exactly once; a killed
milter process is restarted and Postfix defers what it was handling."""

import glob
import os
import signal
import smtplib
import subprocess
import threading
import time
import uuid

import pytest

from mmtest import milter_role_refused, new_message


def journal_dir(stack):
    return os.path.join(stack.env["STACK_DIR"], "milter", "journal")


def journal_lines(stack):
    n = 0
    for path in glob.glob(os.path.join(journal_dir(stack), "*.jsonl")):
        if os.path.basename(path) == "rejected.jsonl":
            continue
        with open(path, "rb") as f:
            n += f.read().count(b"\n")
    return n


def rows_per_subject(stack, tag):
    rows = stack.sql("SELECT subject, count(*) FROM mail.messages"
                     " WHERE subject LIKE %s GROUP BY subject", f"%{tag}%")
    return {subject: int(n) for subject, n in rows}


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


class Flood:
    """WORKERS threads sending messages until stopped; remembers which
    ones Postfix accepted (250 after DATA)."""

    def __init__(self, stack, rcpt, tag, workers=4):
        self.stack, self.rcpt, self.tag = stack, rcpt, tag
        self.accepted, self.refused = [], 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(workers)]

    def run(self):
        while not self.stop.is_set():
            msg = new_message("flood@outside.example", [self.rcpt])
            del msg["Subject"]
            msg["Subject"] = f"{self.tag} {uuid.uuid4().hex}"
            try:
                with self.stack.smtp() as s:
                    s.send_message(msg, to_addrs=[self.rcpt])
                with self.lock:
                    self.accepted.append(msg["Subject"])
            except (smtplib.SMTPException, OSError):
                with self.lock:
                    self.refused += 1
                time.sleep(0.05)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def assert_exactly_once(stack, flood):
    assert flood.accepted, "the flood got nothing accepted"
    wait_until(lambda: journal_lines(stack) == 0, 60, "the journal to drain")
    wait_until(lambda: len(rows_per_subject(stack, flood.tag)) >= len(flood.accepted),
               60, "every accepted message to be recorded")
    counts = rows_per_subject(stack, flood.tag)
    missing = [s for s in flood.accepted if s not in counts]
    doubled = {s: n for s, n in counts.items() if n != 1}
    assert not missing, f"{len(missing)} accepted message(s) have no row"
    assert not doubled, f"rows recorded more than once: {doubled}"


def test_database_refusing_the_milter_journals_then_replays(stack, directory):
    tag = f"journal-{uuid.uuid4().hex[:8]}"
    with milter_role_refused(stack):
        with Flood(stack, directory.alice, tag, workers=2) as flood:
            time.sleep(3)
        assert journal_lines(stack) > 0, "nothing went to the journal"
        assert not rows_per_subject(stack, tag)
    assert_exactly_once(stack, flood)


def test_slow_database_journals_within_the_bound(stack, directory):
    tag = f"slow-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **stack.env)
    env["PGUSER"] = "postgres"
    locker = subprocess.Popen(
        ["psql", "-X", "-q", "-c",
         "BEGIN; LOCK TABLE mail.messages IN ACCESS EXCLUSIVE MODE;"
         " SELECT pg_sleep(6); COMMIT;"], env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        with Flood(stack, directory.alice, tag, workers=2) as flood:
            time.sleep(4)
        # each message waited at most the commit bound (2 s) before the
        # journal took it, so several got through while the table was locked
        assert len(flood.accepted) >= 2, flood.accepted
        assert time.monotonic() - started < 15
    finally:
        locker.wait(30)
    assert_exactly_once(stack, flood)


def pg_ctl(stack, *args):
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl",
                    "-D", stack.env["PGDATA"], *args], check=True,
                   stdout=subprocess.DEVNULL)


def test_postgres_restart_during_flood_loses_nothing(stack, directory):
    tag = f"pgrestart-{uuid.uuid4().hex[:8]}"
    with Flood(stack, directory.alice, tag) as flood:
        time.sleep(2)
        pg_ctl(stack, "-m", "fast", "-w", "stop")
        time.sleep(2)
        pg_ctl(stack, "-w", "-l", os.path.join(stack.env["STACK_DIR"], "log",
                                               "postgresql.log"), "start")
        # Postfix's pgsql clients mark the server dead for a minute; new
        # smtpd processes start afresh.
        subprocess.run(["postfix", "-c", stack.env["POSTFIX_CONFIG_DIR"], "reload"],
                       check=True, stderr=subprocess.DEVNULL)
        time.sleep(3)
    assert_exactly_once(stack, flood)


def supervisor_pid(stack):
    pidfile = os.path.join(stack.env["STACK_DIR"], "run", "milter",
                           "mailmeta-milter.pid")
    with open(pidfile) as f:
        return int(f.read().strip())


def filter_pid(stack):
    supervisor = str(supervisor_pid(stack))
    out = subprocess.run(["pgrep", "-P", supervisor], capture_output=True,
                         text=True).stdout.split()
    assert len(out) == 1, f"expected one filter process, got {out}"
    return int(out[0])


def test_milter_killed_during_flood_loses_nothing(stack, directory):
    tag = f"sigkill-{uuid.uuid4().hex[:8]}"
    before = filter_pid(stack)
    with Flood(stack, directory.alice, tag) as flood:
        time.sleep(2)
        os.kill(before, signal.SIGKILL)
        time.sleep(4)
    after = filter_pid(stack)
    assert after != before
    assert_exactly_once(stack, flood)


def milter_log(stack):
    path = os.environ.get("MAILMETA_MILTER_LOG") or os.path.join(
        stack.env["STACK_DIR"], "log", "milter.log")
    with open(path, errors="replace") as f:
        return f.read()


def test_sigterm_drains_and_nothing_is_lost(stack, directory):
    tag = f"sigterm-{uuid.uuid4().hex[:8]}"
    pid = supervisor_pid(stack)
    log_before = len(milter_log(stack))
    with Flood(stack, directory.alice, tag) as flood:
        time.sleep(2)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 40,
                   "mailmeta-milter to exit after SIGTERM")
        # Postfix defers mail while the milter is away (milter_default_action)
        subprocess.run([os.path.join(os.path.dirname(__file__), "..", "..",
                                     "scripts", "stack"), "up"],
                       check=True, stdout=subprocess.DEVNULL)
        time.sleep(2)
    tail = milter_log(stack)[log_before:]
    assert "stopping: finishing the messages being stored" in tail
    assert "stopped" in tail
    assert_exactly_once(stack, flood)
