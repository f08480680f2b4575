"""Wrong passwords and disabled users are refused over IMAP, POP3 and
submission; password changes and re-enabling take effect at once."""

import imaplib
import poplib
import smtplib

import pytest

from mmtest import new_message


def imap_refused(stack, user, password):
    with pytest.raises(imaplib.IMAP4.error):
        stack.imap(user, password)


def pop3_refused(stack, user, password):
    with pytest.raises(poplib.error_proto):
        stack.pop3(user, password)


def submission_refused(stack, user, password):
    with stack.submission() as s:
        s.user, s.password = user, password
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.auth("PLAIN", s.auth_plain)


def logins_work(stack, user, password):
    stack.imap(user, password).logout()
    stack.pop3(user, password).quit()
    stack.submission(user, password).quit()


def test_right_password_logs_in_everywhere(stack, directory):
    logins_work(stack, directory.alice, directory.passwords[directory.alice])


@pytest.mark.parametrize("refused", [imap_refused, pop3_refused,
                                     submission_refused])
def test_wrong_password_is_refused(stack, directory, refused):
    refused(stack, directory.alice, "not-the-password")


def test_unknown_user_is_refused(stack, directory):
    ghost = f"ghost@{directory.domain}"
    imap_refused(stack, ghost, "whatever")
    pop3_refused(stack, ghost, "whatever")
    submission_refused(stack, ghost, "whatever")


def test_disabled_user_is_refused_but_still_receives(stack, directory):
    d = directory
    user = d.add_user("disabled")
    password = d.passwords[user]
    logins_work(stack, user, password)
    stack.sql("SELECT mail.set_user_enabled(%s, false)", user)
    try:
        imap_refused(stack, user, password)
        pop3_refused(stack, user, password)
        submission_refused(stack, user, password)
        # Suspending a login does not bounce the user's incoming mail.
        msg = new_message("someone@outside.example", [user])
        with stack.smtp() as s:
            assert s.send_message(msg, to_addrs=[user]) == {}
    finally:
        stack.sql("SELECT mail.set_user_enabled(%s, true)", user)
    logins_work(stack, user, password)
    stack.wait_for_imap(user, password, msg["Subject"])


def test_password_change_takes_effect_at_once(stack, directory):
    d = directory
    user = d.add_user("changer")
    old = d.passwords[user]
    stack.sql("SELECT mail.set_password(%s, %s)", user, "a-new-secret-1")
    imap_refused(stack, user, old)
    logins_work(stack, user, "a-new-secret-1")
