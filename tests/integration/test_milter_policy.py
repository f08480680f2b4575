"""mailmeta-milter's policy through the real Postfix: size and recipient
limits, rate limits (every key, metric and action, exact, expiring),
suspended senders, and every decision in mail.message_log."""

import smtplib
import subprocess
import time
import uuid

import pytest

from mmtest import new_message, write_milter_config

REFRESH = 1.0 + 1.5     # the stack's policy refresh_interval, plus slack


def log_of(stack, where, *params):
    cols = ("action", "reason", "policy_stage", "policy_rule", "rcpt", "env_from")
    rows = stack.sql(f"SELECT {', '.join(cols)} FROM mail.message_log WHERE {where}"
                     " ORDER BY received_at", *params)
    return [dict(zip(cols, r)) for r in rows]


def wait_log(stack, where, *params, count=1, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = log_of(stack, where, *params)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def send(stack, sender, rcpts, msg=None, session=None):
    """Sends one message; returns (code, status-and-text) of the refusal or
    (250, '') when every recipient was accepted."""
    msg = msg or new_message(sender, rcpts)
    own = session is None
    s = session or stack.smtp()
    try:
        if own:
            s.ehlo("client.outside.example")
        try:
            refused = s.send_message(msg, from_addr=sender, to_addrs=rcpts)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return code, text.decode()
        except smtplib.SMTPSenderRefused as e:
            return e.smtp_code, e.smtp_error.decode()
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
        if refused:
            code, text = next(iter(refused.values()))
            return code, text.decode()
        return 250, ""
    finally:
        if own:
            s.quit()


@pytest.fixture
def rules(stack):
    """Rate-limit rules made by a test, removed after it."""
    made = []

    def add(key, match, metric, maximum, per, action):
        rid = stack.sql("SELECT mail.add_rate_limit(%s, %s, %s, %s, %s::interval, %s)",
                        key, match, metric, maximum, per, action)[0][0]
        made.append(rid)
        # the milter asks PostgreSQL only about messages some rule of its
        # snapshot may count: a new rule applies from the next snapshot
        time.sleep(REFRESH)
        return rid
    yield add
    for rid in made:
        stack.sql("SELECT mail.remove_rate_limit(%s)", rid)


def outsider():
    return f"s{uuid.uuid4().hex[:10]}@outside.example"


# ------------------------------------------------------------ limits

def test_size_limit_of_the_recipient_domain(stack, directory):
    d = directory
    stack.sql("SELECT mail.set_limits(%s, %s, NULL)", d.domain, 20000)
    try:
        time.sleep(REFRESH)
        small = new_message(outsider(), [d.alice], body="small\n")
        assert send(stack, small["From"], [d.alice], small)[0] == 250
        big = new_message(outsider(), [d.alice], body="x" * 60 + "\n" * 1 + ("y" * 70 + "\n") * 400)
        # SIZE= is declared by smtplib: refused at RCPT
        code, text = send(stack, big["From"], [d.alice], big)
        assert code == 552 and "5.3.4" in text
        # without SIZE=: refused at the end of the message
        with stack.smtp() as s:
            s.ehlo("client.outside.example")
            s.esmtp_features.pop("size", None)
            code, text = send(stack, big["From"], [d.alice], big, session=s)
        assert code == 552 and "5.3.4" in text
        rows = wait_log(stack, "env_from = %s AND action = 'reject'", big["From"], count=2)
        assert {r["policy_stage"] for r in rows} == {"rcpt", "eom"}
        assert all(r["policy_rule"] == "message_size_limit" for r in rows)
    finally:
        stack.sql("SELECT mail.clear_limits(%s)", d.domain)


def test_recipient_limit_per_user_over_domain(stack, directory):
    d = directory
    carol = d.add_user("carol")
    stack.sql("SELECT mail.set_limits(%s, NULL, %s)", d.domain, 1)
    stack.sql("SELECT mail.set_limits(%s, NULL, %s)", carol, 3)
    try:
        time.sleep(REFRESH)
        sender = outsider()
        # the domain allows one recipient per message: the second is refused
        code, text = send(stack, sender, [d.alice, d.bob])
        assert code == 550 and "5.5.3" in text
        # carol's own limit is larger
        assert send(stack, sender, [carol])[0] == 250
    finally:
        stack.sql("SELECT mail.clear_limits(%s)", carol)
        stack.sql("SELECT mail.clear_limits(%s)", d.domain)


def test_authenticated_sender_size_limit(stack, directory):
    d = directory
    stack.sql("SELECT mail.set_limits(%s, %s, NULL)", d.alice, 5000)
    try:
        time.sleep(REFRESH)
        msg = new_message(d.alice, [d.alice], body="z" * 8000)
        with stack.submission(d.alice, d.passwords[d.alice]) as s:
            code, text = send(stack, d.alice, [d.alice], msg, session=s)
        assert code == 552 and "5.3.4" in text
        rows = wait_log(stack, "env_from = %s AND action = 'reject'", d.alice)
        assert rows and rows[0]["policy_stage"] == "mail"
    finally:
        stack.sql("SELECT mail.clear_limits(%s)", d.alice)


# ------------------------------------------------------------ rate limits

def test_rate_limit_sender_messages_exact(stack, directory, rules):
    d = directory
    sender = outsider()
    rid = rules("sender", sender, "messages", 3, "1 hour", "reject")
    results = [send(stack, sender, [d.alice])[0] for _ in range(5)]
    assert results == [250, 250, 250, 550, 550]
    rows = wait_log(stack, "env_from = %s", sender, count=5)
    assert [r["action"] for r in rows] == ["accept"] * 3 + ["reject"] * 2
    assert all(str(rid) in (r["policy_rule"] or "") for r in rows[3:])


def test_rate_limit_per_value_budgets(stack, directory, rules):
    d = directory
    domain = f"r{uuid.uuid4().hex[:8]}.example"
    rules("sender_domain", None, "messages", 1, "1 hour", "tempfail")
    a, b = f"a@{domain}", f"b@other-{domain}"
    assert send(stack, a, [d.alice])[0] == 250
    code, text = send(stack, a, [d.alice])
    assert code == 451 and "4.7." in text
    assert send(stack, b, [d.alice])[0] == 250     # its own budget


def test_rate_limit_recipients_metric_and_recipient_domain(stack, directory, rules):
    d = directory
    sender = outsider()
    rules("recipient_domain", d.domain, "recipients", 3, "1 hour", "reject")
    assert send(stack, sender, [d.alice, d.bob])[0] == 250
    code, _ = send(stack, sender, [d.alice, d.bob])      # 4 > 3
    assert code == 550
    assert send(stack, sender, [d.alice])[0] == 250      # exactly 3


def test_rate_limit_bytes_of_sasl_user(stack, directory, rules):
    d = directory
    dave = d.add_user("dave")
    rules("sasl_user", dave, "bytes", 6000, "1 hour", "reject")
    msg = lambda: new_message(dave, [d.alice], body="b" * 2500)
    with stack.submission(dave, d.passwords[dave]) as s:
        assert send(stack, dave, [d.alice], msg(), session=s)[0] == 250
        assert send(stack, dave, [d.alice], msg(), session=s)[0] == 250
        code, text = send(stack, dave, [d.alice], msg(), session=s)
    assert code == 550 and "5.7." in text


def test_rate_limit_client_ip_and_net_hold(stack, directory, rules):
    d = directory
    rules("client_net", "127.0.0.0/24", "messages", 1, "1 hour", "hold")
    sender = outsider()
    assert send(stack, sender, [d.alice])[0] == 250
    held = new_message(sender, [d.alice])
    assert send(stack, sender, [d.alice], held)[0] == 250    # accepted, held
    rows = wait_log(stack, "env_from = %s", sender, count=2)
    assert [r["action"] for r in rows] == ["accept", "hold"]
    queue = subprocess.run(["postqueue", "-c", stack.env["POSTFIX_CONFIG_DIR"], "-j"],
                           capture_output=True, text=True).stdout
    assert '"queue_name": "hold"' in queue and sender in queue
    # release it again: admins do this with postsuper -H
    subprocess.run(["postsuper", "-c", stack.env["POSTFIX_CONFIG_DIR"], "-H", "ALL"],
                   check=True, capture_output=True)


def test_rate_limit_client_ip_exemption(stack, directory, rules):
    d = directory
    rules("client_ip", "127.0.0.1", "messages", 1, "1 hour", "reject")
    sender = outsider()
    stack.sql("SELECT mail.add_rate_limit_exemption(%s)", "127.0.0.0/8")
    try:
        for _ in range(3):
            assert send(stack, sender, [d.alice])[0] == 250
    finally:
        stack.sql("SELECT mail.remove_rate_limit_exemption(%s)", "127.0.0.0/8")
    assert send(stack, sender, [d.alice])[0] == 250     # the first counted
    assert send(stack, sender, [d.alice])[0] == 550


def test_rate_limit_expires(stack, directory, rules):
    d = directory
    sender = outsider()
    rules("sender", sender, "messages", 1, "2 seconds", "tempfail")
    assert send(stack, sender, [d.alice])[0] == 250
    assert send(stack, sender, [d.alice])[0] == 451
    time.sleep(2.5)
    assert send(stack, sender, [d.alice])[0] == 250


def test_rate_limit_usage_and_reset(stack, directory, rules):
    d = directory
    sender = outsider()
    rid = rules("sender", None, "messages", 2, "1 hour", "reject")
    send(stack, sender, [d.alice])
    used = stack.sql("SELECT used FROM mail.rate_limit_usage('sender', %s) WHERE rule_id = %s",
                     sender, rid)
    assert used == [["1"]]
    stack.sql("SELECT mail.reset_rate_limit_usage(%s, %s)", rid, sender)
    for _ in range(2):
        assert send(stack, sender, [d.alice])[0] == 250


# ------------------------------------------------------------ suspension

def test_suspended_sender_refused_at_mail_from_until_lifted(stack, directory):
    d = directory
    eve = d.add_user("eve")
    stack.sql("SELECT mail.suspend_sender(%s, %s)", eve, "test suspension")
    try:
        time.sleep(REFRESH)
        with stack.submission(eve, d.passwords[eve]) as s:
            code, text = send(stack, eve, [d.alice], session=s)
        assert code == 550 and "5.7.1" in text
        rows = wait_log(stack, "env_from = %s AND action = 'reject'", eve)
        assert rows[0]["policy_stage"] == "mail"
    finally:
        stack.sql("SELECT mail.lift_suspension(%s)", eve)
    time.sleep(REFRESH)
    with stack.submission(eve, d.passwords[eve]) as s:
        assert send(stack, eve, [d.alice], session=s)[0] == 250


def test_repeated_rate_limit_refusals_suspend_the_sender(stack, directory, rules):
    d = directory
    frank = d.add_user("frank")
    stack.sql("SELECT mail.set_abuse_policy(%s, %s::interval)", 2, "1 hour")
    rules("sasl_user", frank, "messages", 1, "1 hour", "reject")
    try:
        with stack.submission(frank, d.passwords[frank]) as s:
            results = [send(stack, frank, [d.alice], session=s)[0]
                       for _ in range(3)]
        assert results == [250, 550, 550]
        deadline = time.monotonic() + 10
        while not stack.sql("SELECT 1 FROM mail.list_suspensions() WHERE address = %s", frank):
            assert time.monotonic() < deadline, "not suspended"
            time.sleep(0.3)
        time.sleep(REFRESH)
        with stack.submission(frank, d.passwords[frank]) as s:
            code, text = send(stack, frank, [d.alice], session=s)
        assert code == 550 and "suspended" in text.lower()
    finally:
        stack.sql("SELECT mail.lift_suspension(address) FROM mail.list_suspensions()"
                  " WHERE address = %s", frank)
        stack.sql("SELECT mail.set_abuse_policy(%s, %s::interval)", 5, "1 hour")


# ------------------------------------------------------------ two milters

@pytest.fixture
def second_milter(stack):
    """A second mailmeta-milter process serving the submission port of the
    same Postfix, while the first serves the MX port."""
    env = stack.env
    sd = env["STACK_DIR"]
    conf = f"{sd}/etc/mailmeta/mailmeta-milter-2.conf"
    sock = f"{sd}/run/milter/milter-2.sock"
    write_milter_config(stack, conf, sock, f"{sd}/run/milter/mailmeta-milter-2.pid",
                        f"{sd}/milter/journal-2")
    log = open(f"{sd}/log/milter-2.log", "ab")
    proc = subprocess.Popen([f"{env['MAILMETA_PREFIX']}/sbin/mailmeta-milter", "-f", "-c", conf],
                            stdout=log, stderr=log, start_new_session=True)
    service = f"127.0.0.1:{env['SUBMISSION_PORT']}/inet/smtpd_milters"
    cfg = env["POSTFIX_CONFIG_DIR"]
    try:
        deadline = time.monotonic() + 10
        while not subprocess.run(["test", "-S", sock]).returncode == 0:
            assert time.monotonic() < deadline, "second milter did not start"
            time.sleep(0.1)
        subprocess.run(["postconf", "-c", cfg, "-P", f"{service}=unix:{sock}"], check=True)
        subprocess.run(["postfix", "-c", cfg, "reload"], check=True, capture_output=True)
        time.sleep(1.5)
        yield proc
    finally:
        subprocess.run(["postconf", "-c", cfg, "-PX", service], check=True)
        subprocess.run(["postfix", "-c", cfg, "reload"], check=True, capture_output=True)
        proc.terminate()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_rate_limit_exact_across_two_milters(stack, directory, rules, second_milter):
    import concurrent.futures
    d = directory
    budget, each = 7, 10
    rules("recipient_domain", d.domain, "messages", budget, "1 hour", "reject")
    sender = outsider()

    def via_mx(_):
        return send(stack, sender, [d.alice])[0]

    def via_submission(_):
        with stack.submission(d.bob, d.passwords[d.bob]) as s:
            return send(stack, d.bob, [d.alice], session=s)[0]

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(via_mx, i) for i in range(each)]
            futures += [pool.submit(via_submission, i) for i in range(each)]
            codes = [f.result() for f in futures]
    finally:
        # bob's refused messages are abuse events: enough of them suspend
        # him, and the directory's users outlive this test
        stack.sql("SELECT mail.lift_suspension(address) FROM mail.list_suspensions()"
                  " WHERE address = %s", d.bob)
    assert codes.count(250) == budget, codes
    assert codes.count(550) == 2 * each - budget, codes
    # both milters took part
    with open(f"{stack.env['STACK_DIR']}/log/milter-2.log") as f:
        assert "metadata recorded" in f.read()


def test_rules_that_cannot_be_reloaded_keep_the_last_good_set(stack, directory):
    """While the snapshot cannot be read, the milter keeps enforcing the last
    rules it loaded (and says so in its log)."""
    from test_milter_durability import milter_log
    d = directory
    stack.sql("SELECT mail.set_limits(%s, NULL, %s)", d.domain, 1)
    time.sleep(REFRESH)
    start = len(milter_log(stack))
    stack.sql("REVOKE EXECUTE ON FUNCTION mail.policy_snapshot() FROM mailmeta_milter",
              user="postgres")
    try:
        deadline = time.monotonic() + 10
        while "keeping the last good set" not in milter_log(stack)[start:]:
            assert time.monotonic() < deadline, "no failed reload logged"
            time.sleep(0.2)
        code, text = send(stack, outsider(), [d.alice, d.bob])
        assert code == 550 and "5.5.3" in text
    finally:
        stack.sql("GRANT EXECUTE ON FUNCTION mail.policy_snapshot() TO mailmeta_milter",
                  user="postgres")
        stack.sql("SELECT mail.clear_limits(%s)", d.domain)
        time.sleep(REFRESH)
