"""SIGHUP makes mailmeta-milter re-read its configuration: a valid one is
taken without restarting the filter, an invalid one is reported and the
old settings stay.  Mail keeps flowing either way."""

import os
import re
import shutil
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


def edit_config(path, pattern, replacement):
    with open(path) as f:
        text = f.read()
    new = re.sub(pattern, replacement, text, flags=re.M)
    assert new != text
    with open(path, "w") as f:
        f.write(new)


def test_sighup_takes_a_valid_configuration(stack, directory):
    path = config_path(stack)
    backup = path + ".orig"
    shutil.copy2(path, backup)
    before = filter_pid(stack)
    try:
        edit_config(path, r"^commit_timeout_ms = .*$", "commit_timeout_ms = 2500")
        hup_and_wait_for(stack, "configuration reloaded")
        assert filter_pid(stack) == before
        send_and_wait(stack, directory)
    finally:
        shutil.copy2(backup, path)
        os.unlink(backup)
        hup_and_wait_for(stack, "configuration reloaded")


def test_sighup_keeps_the_old_configuration_when_the_new_is_invalid(stack, directory):
    path = config_path(stack)
    backup = path + ".orig"
    shutil.copy2(path, backup)
    before = filter_pid(stack)
    try:
        edit_config(path, r"^on_failure = .*$", "on_failure = sometimes")
        hup_and_wait_for(stack, "keeping the old configuration")
        assert "on_failure = sometimes: expected journal or tempfail" in milter_log(stack)
        assert filter_pid(stack) == before
        send_and_wait(stack, directory)
    finally:
        shutil.copy2(backup, path)
        os.unlink(backup)
        hup_and_wait_for(stack, "configuration reloaded")


def test_on_failure_tempfail_refuses_instead_of_journaling(stack, directory):
    import smtplib
    path = config_path(stack)
    backup = path + ".orig"
    shutil.copy2(path, backup)
    tag = f"tempfail-{os.getpid()}-{time.time_ns()}"
    try:
        edit_config(path, r"^on_failure = .*$", "on_failure = tempfail")
        hup_and_wait_for(stack, "configuration reloaded")
        stack.sql("ALTER ROLE mailmeta_milter NOLOGIN", user="postgres")
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
        shutil.copy2(backup, path)
        os.unlink(backup)
        hup_and_wait_for(stack, "configuration reloaded")
    assert stack.sql("SELECT count(*) FROM mail.messages WHERE subject = %s", tag) == [["0"]]
