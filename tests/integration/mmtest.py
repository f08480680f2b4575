"""Helpers for the integration tests: the stack's settings, SQL through psql
as the admin, and mail clients (Python's own smtplib, imaplib, poplib) that
talk to the real servers on 127.0.0.1.
"""

import contextlib
import imaplib
import os
import poplib
import re
import shlex
import smtplib
import ssl
import subprocess
import time
import uuid
from email.message import EmailMessage


class SqlError(Exception):
    def __init__(self, sqlstate, message):
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


def _array_literal(values):
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
              for v in values)
    return "{" + ",".join(quoted) + "}"


class Stack:
    def __init__(self, env):
        self.env = env

    @classmethod
    def from_env_file(cls, path):
        out = subprocess.run(
            ["bash", "-c", f"set -a; . {shlex.quote(path)}; env -0"],
            check=True, capture_output=True).stdout
        env = dict(item.split("=", 1) for item in
                   out.decode().split("\0") if "=" in item)
        return cls(env)

    def port(self, name):
        return int(self.env[name])

    # ------------------------------------------------------------------ SQL
    def sql(self, query, *params, user=None):
        """Run one statement as the admin (or USER) with psql's own quoting
        of PARAMS (%s placeholders; a list becomes a text[])."""
        args = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f",
                "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"]
        pieces = query.split("%s")
        assert len(pieces) == len(params) + 1, "placeholder count"
        text = pieces[0]
        for i, (param, rest) in enumerate(zip(params, pieces[1:])):
            if isinstance(param, (list, tuple)):
                args += ["-v", f"p{i}={_array_literal(param)}"]
                text += f":'p{i}'::text[]" + rest
            elif param is None:
                text += "NULL" + rest
            else:
                args += ["-v", f"p{i}={param}"]
                text += f":'p{i}'" + rest
        env = dict(os.environ, **self.env)
        if user:
            env["PGUSER"] = user
        proc = subprocess.run(args, input=text + ";\n", env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            m = re.search(r"ERROR:\s+([0-9A-Z]{5}):\s+(.*)", proc.stderr)
            if m:
                raise SqlError(m.group(1), m.group(2))
            raise RuntimeError(proc.stderr)
        return [line.split("\x1f") for line in proc.stdout.splitlines()
                if line]

    # ----------------------------------------------------------------- mail
    def smtp(self, port_name="SMTP_PORT"):
        return smtplib.SMTP("127.0.0.1", self.port(port_name), timeout=30)

    def submission(self, user=None, password=None):
        """A submission session after STARTTLS, logged in when USER is given."""
        s = self.smtp("SUBMISSION_PORT")
        s.starttls(context=self.tls_context())
        if user:
            s.login(user, password)
        return s

    def tls_context(self):
        ctx = ssl.create_default_context(cafile=self.env["STACK_CA_CERT"])
        ctx.check_hostname = False
        return ctx

    def imap(self, user, password):
        m = imaplib.IMAP4("127.0.0.1", self.port("IMAP_PORT"), timeout=30)
        m.starttls(ssl_context=self.tls_context())
        m.login(user, password)
        return m

    def pop3(self, user, password):
        p = poplib.POP3("127.0.0.1", self.port("POP3_PORT"), timeout=30)
        p.stls(context=self.tls_context())
        p.user(user)
        p.pass_(password)
        return p

    def wait_for_imap(self, user, password, subject, mailbox="INBOX",
                      timeout=30.0):
        """Poll MAILBOX until a message with SUBJECT is there; return its bytes."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.imap(user, password)
            try:
                typ, _ = m.select(f'"{mailbox}"', readonly=True)
                assert typ == "OK", f"cannot select {mailbox}"
                typ, data = m.search(None, "SUBJECT", f'"{subject}"')
                nums = data[0].split()
                if nums:
                    typ, msg = m.fetch(nums[-1], "(BODY.PEEK[])")
                    return msg[0][1]
            finally:
                m.logout()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{subject!r} not in {user}'s {mailbox} after {timeout}s")
            time.sleep(0.2)


def new_message(sender, recipients, body="hello from the mailmeta tests\n"):
    """A message with a unique subject, so each test finds its own."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"mailmeta test {uuid.uuid4().hex}"
    msg.set_content(body)
    return msg


def write_milter_config(stack, path, socket, pidfile, journal):
    """The stack's mailmeta-milter.conf with another socket, pid file and
    journal (created for the milter's user), written to PATH: for a second
    milter process beside the stack's."""
    sd = stack.env["STACK_DIR"]
    subprocess.run(["install", "-d", "-o", "mailmeta", "-m", "0750", journal], check=True)
    with open(f"{sd}/etc/mailmeta/mailmeta-milter.conf") as f:
        text = f.read()
    for old, new in ((f"unix:{sd}/run/milter/milter.sock", f"unix:{socket}"),
                     (f"{sd}/run/milter/mailmeta-milter.pid", pidfile),
                     (f"{sd}/milter/journal", journal)):
        assert old in text, f"{old} not in the stack's milter configuration"
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def milter_role_refused(stack):
    """PostgreSQL refuses the milter's role (and ends its sessions): the
    milter journals what it accepts until the role may log in again."""
    stack.sql("ALTER ROLE mailmeta_milter NOLOGIN", user="postgres")
    try:
        stack.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                  " WHERE usename = 'mailmeta_milter'", user="postgres")
        yield
    finally:
        stack.sql("ALTER ROLE mailmeta_milter LOGIN", user="postgres")
