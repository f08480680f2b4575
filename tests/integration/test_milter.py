"""mailmeta-milter through the real Postfix: every accepted message is
stamped with X-Mailmeta-ID and recorded in PostgreSQL with its session,
envelope, headers and attachments."""

import email
import email.policy
import re
import time
import uuid
from email.message import EmailMessage

import pytest

from mmtest import new_message

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def log_rows(stack, where, *params):
    cols = ("mailmeta_id, queue_id, direction, client_ip, helo, sasl_user, env_from,"
            " rcpt, header_from, subject, message_id, size_bytes, thread_id,"
            " attachment_count, action")
    rows = stack.sql(f"SELECT {cols} FROM mail.message_log WHERE {where}"
                     " ORDER BY rcpt", *params)
    names = [c.strip() for c in cols.split(",")]
    return [dict(zip(names, r)) for r in rows]


def wait_rows(stack, where, *params, count=1, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = log_rows(stack, where, *params)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def delivered_id(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    ids = msg.get_all("X-Mailmeta-ID") or []
    assert len(ids) == 1, f"expected one X-Mailmeta-ID, got {ids}"
    return str(ids[0]).strip()


def test_inbound_message_is_stamped_and_recorded(stack, directory):
    d = directory
    msg = new_message("Sender Name <sender@outside.example>", [d.alice])
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@outside.example>"
    with stack.smtp() as s:
        s.ehlo("client.outside.example")
        assert s.send_message(msg, from_addr="bounce@outside.example",
                              to_addrs=[d.alice]) == {}
    raw = stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])
    mid = delivered_id(raw)
    assert UUID7.match(mid)

    rows = wait_rows(stack, "mailmeta_id = %s::uuid", mid)
    assert len(rows) == 1
    row = rows[0]
    assert row["direction"] == "inbound"
    assert row["client_ip"] == "127.0.0.1"
    assert row["helo"] == "client.outside.example"
    assert row["sasl_user"] == ""
    assert row["env_from"] == "bounce@outside.example"
    assert row["rcpt"] == d.alice
    assert row["header_from"] == "sender@outside.example"
    assert row["subject"] == msg["Subject"]
    assert row["message_id"] == msg["Message-ID"].strip("<>")
    assert row["action"] == "accept"
    assert int(row["size_bytes"]) > 100
    # Postfix's queue id of the message is the one recorded.
    assert re.match(r"^[0-9A-Za-z]{6,}$", row["queue_id"])


def test_forged_mailmeta_id_is_replaced(stack, directory):
    d = directory
    msg = new_message("sender@outside.example", [d.bob])
    msg["X-Mailmeta-ID"] = "00000000-0000-7000-8000-000000000000"
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[d.bob]) == {}
    raw = stack.wait_for_imap(d.bob, d.passwords[d.bob], msg["Subject"])
    mid = delivered_id(raw)
    assert mid != "00000000-0000-7000-8000-000000000000"
    assert wait_rows(stack, "mailmeta_id = %s::uuid", mid)


def test_submission_records_login_tls_and_direction(stack, directory):
    d = directory
    msg = new_message(d.alice, [d.bob])
    with stack.submission(d.alice, d.passwords[d.alice]) as s:
        assert s.send_message(msg) == {}
    raw = stack.wait_for_imap(d.bob, d.passwords[d.bob], msg["Subject"])
    mid = delivered_id(raw)
    row = wait_rows(stack, "mailmeta_id = %s::uuid", mid)[0]
    assert row["sasl_user"] == d.alice
    assert row["direction"] == "local"
    tls = stack.sql("SELECT tls_version, tls_cipher FROM mail.messages"
                    " WHERE mailmeta_id = %s::uuid", mid)[0]
    assert tls[0].startswith("TLSv1.")
    assert tls[1]


def test_alias_recipient_reaches_each_users_rows(stack, directory):
    d = directory
    msg = new_message("sender@outside.example", [d.team])
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[d.team]) == {}
    raw = stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])
    mid = delivered_id(raw)
    wait_rows(stack, "mailmeta_id = %s::uuid", mid)
    users = stack.sql(
        "SELECT u.address FROM mail.user_messages um JOIN mail.users u"
        " USING (user_id) WHERE um.mailmeta_id = %s::uuid ORDER BY 1", mid)
    assert [u[0] for u in users] == sorted([d.alice, d.bob])


def test_attachment_recorded_with_sha256(stack, directory):
    import hashlib
    d = directory
    payload = ("mailmeta attachment " + uuid.uuid4().hex).encode() * 100
    msg = new_message("sender@outside.example", [d.alice])
    msg.add_attachment(payload, maintype="application", subtype="octet-stream",
                       filename="Bericht März.bin")
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[d.alice]) == {}
    raw = stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])
    mid = delivered_id(raw)
    wait_rows(stack, "mailmeta_id = %s::uuid", mid)
    atts = stack.sql("SELECT filename, content_type, size_bytes, sha256"
                     " FROM mail.message_attachments WHERE mailmeta_id = %s::uuid", mid)
    assert atts == [["Bericht März.bin", "application/octet-stream",
                     str(len(payload)), hashlib.sha256(payload).hexdigest()]]


def send_with_ids(stack, rcpt, message_id, in_reply_to=None, references=()):
    msg = new_message("sender@outside.example", [rcpt])
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[rcpt]) == {}
    return msg


def thread_of(stack, message_id):
    rows = wait_rows(stack, "message_id = %s", message_id)
    assert rows, f"{message_id} not recorded"
    return rows[0]["thread_id"]


def test_reply_before_parent_shares_the_thread(stack, directory):
    d = directory
    tag = uuid.uuid4().hex
    root, reply, reply2 = f"root-{tag}@x.example", f"re1-{tag}@x.example", f"re2-{tag}@y.example"
    # The second reply arrives first, then the first reply, then the root.
    send_with_ids(stack, d.alice, reply2, in_reply_to=reply, references=[root, reply])
    t_reply2 = thread_of(stack, reply2)
    send_with_ids(stack, d.alice, reply, in_reply_to=root, references=[root])
    send_with_ids(stack, d.bob, root)
    assert thread_of(stack, reply) == t_reply2
    assert thread_of(stack, root) == t_reply2
    # An unrelated message has a thread of its own.
    other = f"other-{tag}@x.example"
    send_with_ids(stack, d.alice, other)
    assert thread_of(stack, other) != t_reply2


def test_same_attachment_in_two_messages_is_stored_once(stack, directory):
    import hashlib
    d = directory
    payload = b"%PDF-1.4 shared report " + uuid.uuid4().hex.encode() * 50
    digest = hashlib.sha256(payload).hexdigest()
    ids = []
    for rcpt, name in ((d.alice, "report.pdf"), (d.bob, "copy of report.pdf")):
        msg = new_message("sender@outside.example", [rcpt])
        msg.add_attachment(payload, maintype="application", subtype="pdf", filename=name)
        with stack.smtp() as s:
            assert s.send_message(msg, to_addrs=[rcpt]) == {}
        ids.append(delivered_id(stack.wait_for_imap(rcpt, d.passwords[rcpt], msg["Subject"])))
    for mid in ids:
        wait_rows(stack, "mailmeta_id = %s::uuid", mid)
    names = stack.sql("SELECT filename FROM mail.message_attachments WHERE sha256 = %s"
                      " ORDER BY filename", digest)
    assert [n[0] for n in names] == ["copy of report.pdf", "report.pdf"]
    blobs = stack.sql("SELECT count(*) FROM mail.attachment_blobs"
                      " WHERE sha256 = decode(%s, 'hex')", digest)
    assert blobs == [["1"]]


def test_local_submission_is_recorded_without_a_client(stack, directory):
    import subprocess
    d = directory
    subject = f"sendmail {uuid.uuid4().hex}"
    raw = f"From: {d.alice}\nTo: {d.bob}\nSubject: {subject}\n\nfrom sendmail(1)\n"
    subprocess.run(["sendmail", "-C", stack.env["POSTFIX_CONFIG_DIR"], "-f", d.alice, d.bob],
                   input=raw.encode(), check=True, timeout=30)
    raw_delivered = stack.wait_for_imap(d.bob, d.passwords[d.bob], subject)
    mid = delivered_id(raw_delivered)
    row = wait_rows(stack, "mailmeta_id = %s::uuid", mid)[0]
    assert row["direction"] == "local"
    assert row["client_ip"] == "" and row["helo"] == ""
    assert row["env_from"] == d.alice
