"""Hostile and huge messages through the real Postfix: each is accepted and
recorded (flagged malformed where it is), the milter's memory stays bounded
by its buffer rather than the message size, and it keeps serving mail."""

import hashlib
import os
import time
import uuid

from test_milter import delivered_id, wait_rows
from test_milter_durability import filter_pid


def send_raw(stack, rcpt, raw, sender="hostile@outside.example"):
    with stack.smtp() as s:
        s.sendmail(sender, [rcpt], raw)


def recorded(stack, subject_tag):
    rows = []
    deadline = time.monotonic() + 60
    while not rows and time.monotonic() < deadline:
        rows = stack.sql("SELECT mailmeta_id, malformed, size_bytes FROM mail.messages"
                         " WHERE subject LIKE %s", f"%{subject_tag}%")
        time.sleep(0.2)
    assert len(rows) == 1, f"{subject_tag}: {rows}"
    return rows[0]


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fifty_megabyte_message_in_bounded_memory(stack, directory):
    d = directory
    tag = f"huge-{uuid.uuid4().hex[:8]}"
    payload = os.urandom(36 * 1024 * 1024)      # 48 MiB once base64 encoded
    encoded = b"\r\n".join(
        __import__("base64").b64encode(payload[i:i + 57]) for i in range(0, len(payload), 57))
    raw = (f"From: big@outside.example\r\nTo: {d.alice}\r\nSubject: {tag}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
           "--BB\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
           "--BB\r\nContent-Type: application/octet-stream\r\n"
           "Content-Disposition: attachment; filename=\"big.bin\"\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded + b"\r\n--BB--\r\n"
    assert len(raw) > 48 * 1024 * 1024
    pid = filter_pid(stack)
    before = vm_rss_kb(pid)
    send_raw(stack, d.alice, raw)
    mid, malformed, size = recorded(stack, tag)
    growth_mb = (vm_rss_kb(pid) - before) / 1024
    assert malformed == "f"
    assert int(size) >= len(raw)
    atts = stack.sql("SELECT filename, size_bytes, sha256 FROM mail.message_attachments"
                     " WHERE mailmeta_id = %s::uuid", mid)
    assert atts == [["big.bin", str(len(payload)), hashlib.sha256(payload).hexdigest()]]
    # memory_bytes is 1 MiB in the stack: a 50 MB message must not show up
    # in the milter's resident memory.
    assert growth_mb < 16, f"milter grew by {growth_mb:.1f} MB"


def test_hostile_headers_and_structure_are_recorded(stack, directory):
    d = directory
    cases = {}
    tag = uuid.uuid4().hex[:8]
    long_value = "x" * (100 * 1024)
    cases["longline"] = (f"Subject: longline-{tag}\r\nX-Long: {long_value}\r\n"
                         "\r\nbody\r\n").encode()
    cases["eightbit"] = (b"Subject: eightbit-" + tag.encode() + b" \xff\xfe\xc3\x28\r\n"
                         b"From: \xe9t\xe9 <ete@outside.example>\r\n\r\nbody \xff\r\n")
    cases["charset"] = (f"Subject: =?x-unknown-charset?B?aGVsbG8=?= charset-{tag}\r\n"
                        "Content-Type: text/plain; charset=x-unknown-charset\r\n\r\nhi\r\n").encode()
    nested = "".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n"
                     for i in range(200))
    cases["nested"] = (f"Subject: nested-{tag}\r\nMIME-Version: 1.0\r\n"
                       "Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + nested +
                       "--b200\r\nContent-Type: text/plain\r\n\r\ndeep\r\n").encode()
    cases["truncated"] = (f"Subject: truncated-{tag}\r\nMIME-Version: 1.0\r\n"
                          "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
                          "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                          "Content-Disposition: attachment; filename=cut.pdf\r\n\r\n"
                          "JVBERi0xLjQKJcfs\r\n").encode()
    for raw in cases.values():
        send_raw(stack, d.bob, b"From: someone@outside.example\r\n" + raw
                 if b"\r\nFrom:" not in raw else raw)
    flags = {name: recorded(stack, f"{name}-{tag}")[1] for name in cases}
    # Nesting beyond the limit and a missing closing boundary are malformed.
    assert flags["nested"] == "t"
    assert flags["truncated"] == "t"
    reasons = stack.sql("SELECT malformed_reasons FROM mail.messages WHERE subject LIKE %s",
                        f"%nested-{tag}%")
    assert "depth" in reasons[0][0] or "nest" in reasons[0][0]
    # The milter is still there and still recording.
    subj = f"after-hostile-{tag}"
    send_raw(stack, d.bob, f"Subject: {subj}\r\n\r\nfine\r\n".encode())
    recorded(stack, subj)
