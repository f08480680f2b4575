"""mailmeta-milter as a daemon logs to syslog (mailmeta-milter(8)): facility
mail, ident mailmeta-milter[pid], Postfix's "warning: " style, and the
Postfix queue id first in every line about a message.

The stack runs its milter in the foreground, logging to a file.  This test
starts a second one the way a host does — a daemon, no -f — in a private
mount namespace whose /dev/log is a datagram socket the test reads (the
machine's own syslog is never involved), and points the submission service
of the stack's Postfix at it for one message.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from mmtest import new_message, write_milter_config

# The daemon's /dev: a tmpfs with the devices it uses and our /dev/log.
PRIVATE_DEV = r'''
set -e
mkdir -p "$T/realdev"
mount --rbind /dev "$T/realdev"
mount -t tmpfs -o mode=0755 mailmeta-test-dev /dev
for n in null zero full random urandom; do
    touch "/dev/$n"
    mount --bind "$T/realdev/$n" "/dev/$n"
done
touch /dev/log
mount --bind "$T/log.sock" /dev/log
exec "$MILTER" -c "$CONF"
'''

SYSLOG_LINE = re.compile(r"<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) "
                         r"mailmeta-milter\[(\d+)\]: (.*)$", re.S)


class Syslog:
    """A /dev/log of our own: collects what the daemon sends."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)       # the daemon reconnects as its own user
        self.lines = []

    def read_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while not any(predicate(line) for line in self.lines):
            left = deadline - time.monotonic()
            assert left > 0, "not logged: " + "\n".join(self.lines[-20:])
            self.sock.settimeout(left)
            try:
                self.lines.append(self.sock.recv(65536).decode(errors="replace"))
            except socket.timeout:
                pass
        return self.lines

    def close(self):
        self.sock.close()


@pytest.fixture
def daemon_milter(stack):
    env = stack.env
    sd = env["STACK_DIR"]
    work = f"{sd}/milter-syslog"
    shutil.rmtree(work, ignore_errors=True)
    # as the stack's socket directory: the filter process (mailmeta) makes
    # its socket here, and it gets the group of Postfix, its client
    subprocess.run(["install", "-d", "-o", "mailmeta", "-g", "postfix", "-m", "2750", work],
                   check=True)
    sock, pidfile, conf = f"{work}/milter.sock", f"{work}/milter.pid", f"{work}/milter.conf"
    write_milter_config(stack, conf, sock, pidfile, f"{work}/journal")
    log = Syslog(f"{work}/log.sock")
    subprocess.run(["unshare", "-m", "sh", "-c", PRIVATE_DEV],
                   env={**os.environ, "T": work, "CONF": conf,
                        "MILTER": f"{env['MAILMETA_PREFIX']}/sbin/mailmeta-milter"},
                   check=True, timeout=30)
    service = f"127.0.0.1:{env['SUBMISSION_PORT']}/inet/smtpd_milters"
    cfg = env["POSTFIX_CONFIG_DIR"]
    try:
        log.read_until(lambda line: "listening on" in line, 15)
        subprocess.run(["postconf", "-c", cfg, "-P", f"{service}=unix:{sock}"], check=True)
        subprocess.run(["postfix", "-c", cfg, "reload"], check=True, capture_output=True)
        time.sleep(1.5)
        yield log, pidfile
    finally:
        subprocess.run(["postconf", "-c", cfg, "-PX", service], check=True)
        subprocess.run(["postfix", "-c", cfg, "reload"], check=True, capture_output=True)
        try:
            with open(pidfile) as f:
                os.kill(int(f.read()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        log.close()


def test_daemon_logs_to_syslog_in_postfix_style(stack, directory, daemon_milter):
    log, pidfile = daemon_milter
    d = directory
    # a sender of its own: the directory's users may be suspended by the
    # policy tests' refusals
    sender = d.add_user(f"syslog-{uuid.uuid4().hex[:8]}")
    msg = new_message(sender, [d.alice])
    with stack.submission(sender, d.passwords[sender]) as s:
        assert not s.send_message(msg, from_addr=sender, to_addrs=[d.alice])
    lines = log.read_until(lambda line: "metadata recorded" in line, 30)

    parsed = [SYSLOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    with open(pidfile) as f:
        supervisor = f.read().strip()
    for m in parsed:
        assert int(m.group(1)) >> 3 == 2, m.group(0)       # LOG_MAIL

    queue_id, mailmeta_id = stack.sql(
        "SELECT queue_id, mailmeta_id FROM mail.message_log WHERE subject = %s",
        msg["Subject"])[0]
    recorded = [m for m in parsed if "metadata recorded" in m.group(4)]
    assert len(recorded) == 1
    text = recorded[0].group(4)
    assert int(recorded[0].group(1)) & 7 == 6                # LOG_INFO
    assert text.startswith(f"{queue_id}: mailmeta_id={mailmeta_id}, accept, "), text
    # every line about this message starts with its queue id
    for m in parsed:
        if mailmeta_id in m.group(4) or queue_id in m.group(4):
            assert m.group(4).startswith(f"{queue_id}: "), m.group(4)

    # SIGTERM: the daemon drains and says so, then its supervisor ends
    os.kill(int(supervisor), signal.SIGTERM)
    log.read_until(lambda line: "supervisor stopped" in line, 30)
    assert any(re.search(r"mailmeta-milter\[\d+\]: stopped$", line) for line in log.lines)
    assert any(line.endswith(f"mailmeta-milter[{supervisor}]: supervisor stopped")
               for line in log.lines), log.lines[-5:]
