"""A user's own Sieve script, uploaded over ManageSieve, files mail at
delivery (Dovecot LMTP + Pigeonhole)."""

import base64
import socket

from mmtest import new_message


class ManageSieve:
    """Just enough of RFC 5804 to log in, upload and activate a script."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.response()

    def response(self):
        lines = []
        while True:
            line = self.file.readline()
            assert line, "ManageSieve server closed the connection"
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                return line, lines

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.response()[0]

    def login(self, user, password):
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f'AUTHENTICATE "PLAIN" "{token}"')

    def put_script(self, name, script):
        data = script.encode()
        self.sock.sendall(f'PUTSCRIPT "{name}" {{{len(data)}+}}\r\n'.encode()
                          + data + b"\r\n")
        return self.response()[0]

    def close(self):
        self.command("LOGOUT")
        self.sock.close()


def test_user_script_files_mail_at_delivery(stack, directory):
    d = directory
    user = d.add_user("sieve")
    ms = ManageSieve(stack.port("SIEVE_PORT"))
    try:
        assert ms.login(user, d.passwords[user]).startswith(b"OK")
        script = ('require "fileinto";\n'
                  'if header :contains "subject" "mailmeta test" '
                  '{ fileinto "Archive"; }\n')
        assert ms.put_script("tests", script).startswith(b"OK")
        assert ms.command('SETACTIVE "tests"').startswith(b"OK")
    finally:
        ms.close()

    msg = new_message("someone@outside.example", [user])
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[user]) == {}
    stack.wait_for_imap(user, d.passwords[user], msg["Subject"],
                        mailbox="Archive")


def test_wrong_password_refused_over_managesieve(stack, directory):
    ms = ManageSieve(stack.port("SIEVE_PORT"))
    try:
        assert ms.login(directory.alice, "wrong").startswith(b"NO")
    finally:
        ms.close()
