"""Virus and spam engines through the real Postfix, clamd and spamd: the
test virus refused or held, GTUBE refused or marked with SpamAssassin's
headers, outbound mail scanned, an engine that is down leads to 4xx (and
the message is accepted once it is back), spam from an authenticated user
counts toward suspending the sender."""

import email
import email.policy
import os
import signal
import smtplib
import subprocess
import time
import uuid
from email.message import EmailMessage

import pytest

from mmtest import new_message
from test_milter_policy import REFRESH, send, wait_log
from test_milter_reload import edited_config

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR"
         + "-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*").encode()
GTUBE = ("XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD"
         + "-ANTI-UBE-TEST-EMAIL*C.34X")


def with_virus(sender, rcpts):
    msg = new_message(sender, rcpts, body="the tool you asked for\n")
    msg.add_attachment(EICAR, maintype="application", subtype="octet-stream",
                       filename="tool.com")
    return msg


def outsider():
    return f"v{uuid.uuid4().hex[:10]}@outside.example"


def verdicts(stack, env_from):
    cols = ("action", "reason", "virus", "spam_score", "policy_rule")
    rows = stack.sql(f"SELECT {', '.join(cols)} FROM mail.message_log WHERE env_from = %s"
                     " ORDER BY received_at", env_from)
    return [dict(zip(cols, r)) for r in rows]


def wait_verdicts(stack, env_from, count=1, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = verdicts(stack, env_from)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_virus_is_rejected_and_recorded(stack, directory):
    d = directory
    sender = outsider()
    code, text = send(stack, sender, [d.alice], with_virus(sender, [d.alice]))
    assert code == 554 and "5.7.1" in text and "Eicar" in text
    rows = wait_verdicts(stack, sender)
    assert rows[0]["action"] == "reject"
    assert rows[0]["virus"].startswith("Eicar-Test-Signature")


def test_virus_is_held_when_so_configured(stack, directory):
    d = directory
    sender = outsider()
    with edited_config(stack, r"^on_infected = .*$", "on_infected = hold",
                       "configuration reloaded"):
        assert send(stack, sender, [d.alice], with_virus(sender, [d.alice]))[0] == 250
    rows = wait_verdicts(stack, sender)
    assert rows[0]["action"] == "hold" and rows[0]["virus"].startswith("Eicar")
    cfg = stack.env["POSTFIX_CONFIG_DIR"]
    queue = subprocess.run(["postqueue", "-c", cfg, "-j"], capture_output=True, text=True).stdout
    assert sender in queue and '"queue_name": "hold"' in queue
    subprocess.run(["postsuper", "-c", cfg, "-d", "ALL", "hold"], check=True, capture_output=True)


def test_gtube_is_rejected(stack, directory):
    d = directory
    sender = outsider()
    msg = new_message(sender, [d.alice], body=f"buy now\n{GTUBE}\n")
    code, text = send(stack, sender, [d.alice], msg)
    assert code == 550 and "5.7.1" in text and "spam" in text.lower()
    rows = wait_verdicts(stack, sender)
    assert rows[0]["action"] == "reject" and float(rows[0]["spam_score"]) >= 1000


def delivered_headers(stack, d, subject):
    raw = stack.wait_for_imap(d.alice, d.passwords[d.alice], subject)
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_spam_below_the_domain_reject_score_is_marked(stack, directory):
    d = directory
    stack.sql("SELECT mail.set_spam_thresholds(%s, %s, %s)", d.domain, 5, 5000)
    try:
        time.sleep(REFRESH)
        sender = outsider()
        msg = new_message(sender, [d.alice], body=f"buy now\n{GTUBE}\n")
        msg["X-Spam-Flag"] = "NO"      # forged by the sender: replaced
        assert send(stack, sender, [d.alice], msg)[0] == 250
        got = delivered_headers(stack, d, msg["Subject"])
        assert got.get_all("X-Spam-Flag") == ["YES"]
        assert float(got["X-Spam-Score"]) >= 1000
        status = str(got["X-Spam-Status"])
        assert status.startswith("Yes, score=") and "GTUBE" in status and "required=5.0" in status
        rows = wait_verdicts(stack, sender)
        assert rows[0]["action"] == "accept" and float(rows[0]["spam_score"]) >= 1000
    finally:
        stack.sql("SELECT mail.clear_spam_thresholds(%s)", d.domain)
        time.sleep(REFRESH)


def test_clean_mail_gets_a_no_flag(stack, directory):
    d = directory
    sender = outsider()
    msg = new_message(sender, [d.alice], body="lunch on friday?\n")
    msg["X-Spam-Flag"] = "YES"         # forged: replaced
    assert send(stack, sender, [d.alice], msg)[0] == 250
    got = delivered_headers(stack, d, msg["Subject"])
    assert got.get_all("X-Spam-Flag") == ["NO"]
    assert str(got["X-Spam-Status"]).startswith("No, score=")


def test_outbound_spam_counts_toward_suspension(stack, directory):
    d = directory
    gina = d.add_user("gina")
    stack.sql("SELECT mail.set_abuse_policy(%s, %s::interval)", 2, "1 hour")
    try:
        with stack.submission(gina, d.passwords[gina]) as s:
            for _ in range(2):
                msg = new_message(gina, [d.alice], body=f"{GTUBE}\n")
                code, _ = send(stack, gina, [d.alice], msg, session=s)
                assert code == 550
        deadline = time.monotonic() + 10
        while not stack.sql("SELECT 1 FROM mail.list_suspensions() WHERE address = %s", gina):
            assert time.monotonic() < deadline, "not suspended"
            time.sleep(0.3)
        time.sleep(REFRESH)
        with stack.submission(gina, d.passwords[gina]) as s:
            code, text = send(stack, gina, [d.alice], session=s)
        assert code == 550 and "5.7.1" in text
    finally:
        stack.sql("SELECT mail.lift_suspension(address) FROM mail.list_suspensions()"
                  " WHERE address = %s", gina)
        stack.sql("SELECT mail.set_abuse_policy(%s, %s::interval)", 5, "1 hour")


def engine_pid(stack, engine):
    path = os.path.join(stack.env["STACK_DIR"], "run",
                        "clamav" if engine == "clamd" else "spamd", f"{engine}.pid")
    with open(path) as f:
        return int(f.read().strip())


def stop_engine(stack, engine):
    pid = engine_pid(stack, engine)
    os.killpg(os.getpgid(pid), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"{engine} did not stop"
        time.sleep(0.1)


def restart_stack(stack):
    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    subprocess.run([os.path.join(top, "scripts", "stack"), "up"], check=True,
                   capture_output=True)


@pytest.mark.parametrize("engine", ["clamd", "spamd"])
def test_engine_down_defers_and_nothing_is_lost(stack, directory, engine):
    d = directory
    sender = outsider()
    msg = new_message(sender, [d.alice])
    stop_engine(stack, engine)
    try:
        code, text = send(stack, sender, [d.alice], msg)
        assert code == 451 and "4.7.1" in text
    finally:
        restart_stack(stack)
    # the client retries, as SMTP clients do, and the message gets through
    assert send(stack, sender, [d.alice], msg)[0] == 250
    stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])
    rows = wait_verdicts(stack, sender, count=2)
    assert [r["action"] for r in rows] == ["tempfail", "accept"]


def test_local_submission_spam_is_held_not_stuck(stack, directory):
    """Postfix cannot refuse sendmail(1) mail: what would be rejected is held."""
    d = directory
    subject = f"local spam {uuid.uuid4().hex}"
    raw = f"From: {d.alice}\nTo: {d.bob}\nSubject: {subject}\n\n{GTUBE}\n"
    subprocess.run(["sendmail", "-C", stack.env["POSTFIX_CONFIG_DIR"], "-f", d.alice, d.bob],
                   input=raw.encode(), check=True)
    deadline = time.monotonic() + 20
    while True:
        rows = stack.sql("SELECT action, reason FROM mail.message_log WHERE subject = %s", subject)
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows and rows[0][0] == "hold" and "spam" in rows[0][1]
    cfg = stack.env["POSTFIX_CONFIG_DIR"]
    queue = subprocess.run(["postqueue", "-c", cfg, "-j"], capture_output=True, text=True).stdout
    assert '"queue_name": "hold"' in queue
    subprocess.run(["postsuper", "-c", cfg, "-d", "ALL", "hold"], check=True, capture_output=True)
