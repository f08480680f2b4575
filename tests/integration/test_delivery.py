"""Mail sent to the MX port reaches users and aliases, read back over IMAP
and POP3 from the real Dovecot, with users read live from PostgreSQL."""

from mmtest import new_message


def send_mx(stack, msg, recipients, sender="someone@outside.example"):
    with stack.smtp() as s:
        refused = s.send_message(msg, from_addr=sender, to_addrs=recipients)
    assert refused == {}


def test_user_receives_over_imap_and_pop3(stack, directory):
    d = directory
    msg = new_message("someone@outside.example", [d.alice])
    send_mx(stack, msg, [d.alice])
    raw = stack.wait_for_imap(d.alice, d.passwords[d.alice], msg["Subject"])
    assert b"hello from the mailmeta tests" in raw

    pop = stack.pop3(d.alice, d.passwords[d.alice])
    try:
        count, _ = pop.stat()
        subjects = []
        for i in range(1, count + 1):
            lines = pop.top(i, 0)[1]
            subjects += [l.decode() for l in lines if l.startswith(b"Subject:")]
        assert f"Subject: {msg['Subject']}" in subjects
    finally:
        pop.quit()


def test_alias_delivers_to_every_destination(stack, directory):
    d = directory
    msg = new_message("someone@outside.example", [d.team])
    send_mx(stack, msg, [d.team])
    for user in (d.alice, d.bob):
        stack.wait_for_imap(user, d.passwords[user], msg["Subject"])


def test_addresses_are_case_insensitive(stack, directory):
    d = directory
    shouted = d.alice.upper()
    msg = new_message("someone@outside.example", [shouted])
    send_mx(stack, msg, [shouted])
    stack.wait_for_imap(d.alice.title(), d.passwords[d.alice], msg["Subject"])


def test_catch_all_takes_unknown_addresses_but_not_users_mail(stack, directory):
    d = directory
    catch_all = f"@{d.domain}"
    stack.sql("SELECT mail.add_alias(%s, %s)", catch_all, [d.bob])
    try:
        stray = f"nobody-{d.domain.split('.')[0]}@{d.domain}"
        msg = new_message("someone@outside.example", [stray])
        send_mx(stack, msg, [stray])
        stack.wait_for_imap(d.bob, d.passwords[d.bob], msg["Subject"])

        own = new_message("someone@outside.example", [d.alice])
        send_mx(stack, own, [d.alice])
        stack.wait_for_imap(d.alice, d.passwords[d.alice], own["Subject"])
    finally:
        stack.sql("SELECT mail.delete_alias(%s)", catch_all)


def test_quota_from_sql_reaches_dovecot(stack, directory):
    d = directory
    user = d.add_user("quota", quota=5 * 1024 * 1024)
    m = stack.imap(user, d.passwords[user])
    try:
        typ, data = m.getquotaroot("INBOX")
        assert typ == "OK"
        # [[b'"INBOX" "User quota"'], [b'"User quota" (STORAGE 0 5120)']]
        assert b"STORAGE 0 5120" in data[1][0]
    finally:
        m.logout()
