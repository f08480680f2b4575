"""SIGHUP makes mailmeta-milter re-read its configuration: a valid one is
taken without restarting the filter, an invalid one is reported and the
old settings stay.  Mail keeps flowing either way."""

import contextlib
import os
import re
import signal
import time

from mmtest import new_message
from test_milter_durability import filter_pid, milter_log, supervisor_pid, wait_until


def config_path(stack):
    return os.path.join(stack.env["STACK_DIR"], "etc", "mailmeta",
                        "mailmeta-milter.conf")


def send_and_wait(stack, d):
    msg = new_message("sender@outside.example", [d.alice])
    with stack.smtp() as s:
        assert s.send_message(msg, to_addrs=[d.alice]) == {}
    stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])


def hup_and_wait_for(stack, text):
    start = len(milter_log(stack))
    os.kill(supervisor_pid(stack), signal.SIGHUP)
    wait_until(lambda: text in milter_log(stack)[start:], 10, repr(text))


@contextlib.contextmanager
def edited_config(stack, pattern, replacement, expect):
    """The milter's configuration with PATTERN replaced, signalled with
    SIGHUP until EXPECT is logged; the original is put back (and reloaded)
    afterwards."""
    path = config_path(stack)
    with open(path) as f:
        original = f.read()
    edited = re.sub(pattern, replacement, original, flags=re.M)
    assert edited != original
    try:
        with open(path, "w") as f:
            f.write(edited)
        hup_and_wait_for(stack, expect)
        yield
    finally:
        with open(path, "w") as f:
            f.write(original)
        hup_and_wait_for(stack, "configuration reloaded")


def test_sighup_takes_a_valid_configuration(stack, directory):
    before = filter_pid(stack)
    with edited_config(stack, r"^commit_timeout_ms = .*$", "commit_timeout_ms = 2500",
                       "configuration reloaded"):
        assert filter_pid(stack) == before
        send_and_wait(stack, directory)


def test_sighup_keeps_the_old_configuration_when_the_new_is_invalid(stack, directory):
    before = filter_pid(stack)
    with edited_config(stack, r"^on_failure = .*$", "on_failure = sometimes",
                       "keeping the old configuration"):
        assert "on_failure = sometimes: expected journal or tempfail" in milter_log(stack)
        assert filter_pid(stack) == before
        send_and_wait(stack, directory)


def test_on_failure_tempfail_refuses_instead_of_journaling(stack, directory):
    import smtplib
    tag = f"tempfail-{os.getpid()}-{time.time_ns()}"
    with edited_config(stack, r"^on_failure = .*$", "on_failure = tempfail",
                       "configuration reloaded"):
        stack.sql("ALTER ROLE mailmeta_milter NOLOGIN", user="postgres")
        try:
            stack.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                      " WHERE usename = 'mailmeta_milter'", user="postgres")
            msg = new_message("sender@outside.example", [directory.alice])
            msg.replace_header("Subject", tag)
            with stack.smtp() as s:
                try:
                    s.send_message(msg, to_addrs=[directory.alice])
                    raise AssertionError("accepted although nothing could be recorded")
                except smtplib.SMTPDataError as e:
                    assert e.smtp_code == 451 and b"4.3.0" in e.smtp_error
        finally:
            stack.sql("ALTER ROLE mailmeta_milter LOGIN", user="postgres")
    assert stack.sql("SELECT count(*) FROM mail.messages WHERE subject = %s", tag) == [["0"]]
