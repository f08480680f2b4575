"""What Postfix refuses at RCPT: relaying for strangers, unknown local
recipients, and submission without authentication or with a forged sender."""

import smtplib

import pytest

from mmtest import new_message


def rcpt_reply(stack, rcpt, port_name="SMTP_PORT"):
    with stack.smtp(port_name) as s:
        s.ehlo("client.outside.example")
        code, _ = s.mail("someone@outside.example")
        assert code == 250
        return s.rcpt(rcpt)


def test_no_open_relay(stack, directory):
    code, text = rcpt_reply(stack, "victim@elsewhere.example")
    assert code == 554 and b"Relay access denied" in text


def test_unknown_local_recipient_refused_at_rcpt(stack, directory):
    code, text = rcpt_reply(stack, f"no-such-user@{directory.domain}")
    assert code == 550 and b"5.1.1" in text


def test_unknown_domain_is_not_ours(stack, directory):
    code, _ = rcpt_reply(stack, "someone@not-hosted-here.test")
    assert code == 554


def test_submission_requires_tls_before_auth(stack, directory):
    with stack.smtp("SUBMISSION_PORT") as s:
        s.ehlo("client.example")
        assert not s.has_extn("auth")
        code, text = s.mail(directory.alice)
        assert code == 530


def test_submission_without_auth_cannot_send(stack, directory):
    d = directory
    with stack.submission() as s:
        assert s.mail(d.alice)[0] == 250
        code, text = s.rcpt(d.bob)
        assert code == 554 and b"5.7.1" in text
        code, _ = s.rcpt("victim@elsewhere.example")
        assert code == 554


def test_authenticated_user_sends(stack, directory):
    d = directory
    msg = new_message(d.alice, [d.bob])
    with stack.submission(d.alice, d.passwords[d.alice]) as s:
        assert s.send_message(msg) == {}
    stack.wait_for_imap(d.bob, d.passwords[d.bob], msg["Subject"])


def test_authenticated_user_may_send_as_own_alias(stack, directory):
    d = directory
    msg = new_message(d.team, [d.bob])
    with stack.submission(d.alice, d.passwords[d.alice]) as s:
        assert s.send_message(msg) == {}
    stack.wait_for_imap(d.bob, d.passwords[d.bob], msg["Subject"])


def test_authenticated_user_cannot_forge_sender(stack, directory):
    d = directory
    with stack.submission(d.alice, d.passwords[d.alice]) as s:
        assert s.mail(d.bob)[0] == 250
        code, text = s.rcpt(d.alice)
        assert code == 553 and b"not owned by user" in text
