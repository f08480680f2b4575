-- 0008_policy.sql — mail policy in SQL: size and recipient limits, rate
-- limits, spam thresholds, outbound abuse protection, and the verdict behind
-- every decision of mailmeta-milter.
--
-- PostgreSQL owns policy (DESIGN.md, principle 2); the milter enforces it.
-- The milter talks to this migration through four functions (role
-- mailmeta_milter may execute them, and reads no table):
--
--   policy_snapshot()      everything the milter may decide on its own, as
--                          one JSON document it caches and refreshes every
--                          few seconds: size and recipient limits (global,
--                          per domain, per user), spam thresholds (global,
--                          per domain), the suspended senders, and which
--                          keys and values have rate limits (a message
--                          none of whose values has one needs no check);
--   policy_check(doc)      one call per message at end of message, one round
--                          trip: refuses a suspended sender, and consumes the
--                          budget of every rate limit the message falls under
--                          -- all or nothing, exactly, also with several
--                          milters or Postfix nodes on one database;
--   record_verdicts(docs)  called in the same statement as record_messages,
--                          record_messages(record_verdicts(docs)), so that
--                          both run in order; stores the optional "policy"
--                          object of each
--                          metadata document (which rule or engine verdict
--                          caused the action) and counts abuse events;
--   expire_rate_counters() deletes expired rate counters (every minute or
--                          so; also for cron).
--
-- Limits (mail.policy_settings for the global row, mail.domain_limits,
-- mail.user_limits). Each limit is looked up on its own, from the most
-- specific level that sets it: the user's row, else the domain's, else the
-- global row; NULL means "not set here", and NULL in the global row means
-- no limit. The milter applies the sender's limits to authenticated mail
-- and each recipient's to other mail; it refuses a message over
-- max_message_bytes with 552 5.3.4 and a recipient past max_recipients
-- with 550 5.5.3.
--
-- Rate limits (mail.rate_limits). A rule names a key (what is counted:
-- sasl_user, sender, sender_domain, client_ip, client_net = the client's /24
-- or /64, recipient_domain), a match (one value, or NULL for a separate
-- budget per value), a metric (messages, recipients, bytes), a budget (max
-- per interval) and an action when the budget would be exceeded (tempfail
-- 451 4.7.1, reject 550 5.7.1, hold: Postfix's hold queue). A rule with a
-- match counts everything the match covers in one budget: addresses and
-- domains by case-insensitive equality; for client_ip and client_net an
-- address or a network, covering the client addresses inside it (an
-- address given to client_net stands for its /24 or /64).
--
-- Counters (mail.rate_limit_counters) are keyed (rule_id, value): value is
-- the rule's match, or for a NULL match the message's value. Windows are
-- fixed: a counter's window starts when it is first used and lasts the
-- rule's interval; a counter touched after its window ended starts a new
-- one at zero. Within a window the count is exact: with max = M the message
-- that brings the count to M passes and the first one that would take it
-- past M is refused. (Fixed windows let a sender spend up to 2 M across the
-- boundary of two windows; the limit a window enforces is exact.)
--
-- policy_check finds the rules a message falls under by index -- (key,
-- match) for addresses and domains, a GiST index on the match's network for
-- client addresses -- so its cost depends on the counters a message needs
-- far more than on how many rules or counters exist
-- (tests/bench/policy-check-bench.sh: about 1.1 ms of backend CPU for a
-- message needing 19 counters among 1,000 rules and 100,000 counters, 0.8
-- ms among 20 rules and 1,000 counters). It locks the counters with one
-- INSERT ... ON CONFLICT DO UPDATE that adds the message's amounts, in one
-- order for everybody (rule_id, then value in the C collation), so
-- concurrent checks queue on the rows they share and never deadlock. When
-- any counter went over its budget, a second statement takes the amounts
-- back (deleting counters that return to zero) and the message is refused:
-- nothing is consumed by a refused message. A check that waited reads the
-- counters as the previous holder committed them (READ COMMITTED; other
-- isolation levels are refused), which is what makes the budget exact
-- across processes and nodes. Admin functions that touch counters lock them
-- in the same order; expire_rate_counters skips locked rows instead of
-- waiting. A check's transaction commits asynchronously (synchronous_commit
-- off, when the check is the first to write in it), so a counter shared by
-- all messages (a sender domain, a submission relay's address) is held for
-- the statement, not for a WAL flush; the milter's durable record of the
-- message flushes it before Postfix hears the answer. Counters have no
-- foreign key to their rule: a foreign key check would share-lock the
-- rule's row from every check (multixacts on a hot row); counters of a
-- removed rule are deleted by remove_rate_limit.
--
-- Exemptions (mail.rate_limit_exemptions): addresses, domains, IP addresses
-- and networks. An exempt value is counted by no rule of its key: an address
-- for sasl_user and sender, a domain for sender_domain, recipient_domain and
-- the addresses of the domain, an address or network for client_ip and
-- client_net when the client's address is inside it. The message's other
-- values are still counted (exempting a sender does not exempt its client
-- address).
--
-- Spam thresholds (policy_settings for the global pair, default mark 5.0,
-- reject 15.0; mail.domain_spam_thresholds per domain): a message scoring at
-- least mark is marked, at least reject is refused. Each threshold comes
-- from the domain when it sets it, else from the global pair; a NULL global
-- threshold means the milter's default (5.0, 15.0).
--
-- Abuse protection. An outbound or local message of an authenticated user
-- (sasl_user a local user) that the milter refused, held or deferred
-- because of spam (policy.spam.score at least policy.spam.reject, or
-- policy.spam.required when no reject threshold is given), a virus
-- (policy.virus) or a rate limit (policy.rule starting with "rate_limit")
-- is an abuse
-- event (mail.abuse_events, one per mailmeta_id: record_verdicts counts
-- it, and policy_check at once when the milter passes the message's
-- mailmeta_id with a check it refuses). When a user has
-- abuse_max_events events (default 5) within abuse_window (default 1 hour)
-- the user is suspended (mail.sender_suspensions: reason, time, events):
-- policy_snapshot lists the user, the milter refuses MAIL FROM with 5.7.1,
-- policy_check refuses too, until an administrator calls lift_suspension.
-- Counting takes a transaction advisory lock per user, so concurrent
-- recorders never both miss the threshold.
--
-- Errors follow the admin API (0003): 22023 malformed argument, P0002
-- unknown domain, user, rule, exemption or suspension, 23505 duplicate
-- rule, exemption or suspension; every function checks all its arguments
-- before it changes anything. The CHECK constraints repeat each rule as a
-- backstop, with the same predicates.

SET LOCAL ROLE mailmeta_owner;

-- ---------------------------------------------------------------- predicates

-- The normal form of a rate-limit match for its key, or NULL when the value
-- is not acceptable. Never raises: also used by CHECK constraints.
CREATE FUNCTION mail.rate_limit_match_normal(key text, match text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v   text := lower(btrim(rate_limit_match_normal.match, E' \t\r\n'));
    net cidr;
BEGIN
    IF v IS NULL OR v = '' THEN
        RETURN NULL;
    END IF;
    IF rate_limit_match_normal.key IN ('sasl_user', 'sender') THEN
        IF v ~ '^[^@]+@[^@]+$'
           AND mail.local_part_problem(split_part(v, '@', 1)) IS NULL
           AND mail.domain_problem(split_part(v, '@', 2)) IS NULL THEN
            RETURN v;
        END IF;
    ELSIF rate_limit_match_normal.key IN ('sender_domain', 'recipient_domain') THEN
        IF mail.domain_problem(v) IS NULL THEN
            RETURN v;
        END IF;
    ELSIF rate_limit_match_normal.key IN ('client_ip', 'client_net') THEN
        IF v ~ '^[0-9a-f:.]{2,45}(/[0-9]{1,3})?$' THEN
            BEGIN
                IF strpos(v, '/') = 0 AND rate_limit_match_normal.key = 'client_net' THEN
                    net := network(set_masklen(v::inet, CASE family(v::inet) WHEN 4 THEN 24 ELSE 64 END));
                ELSE
                    net := network(v::inet);
                END IF;
            EXCEPTION WHEN data_exception THEN
                RETURN NULL;
            END;
            RETURN CASE WHEN masklen(net) = CASE family(net) WHEN 4 THEN 32 ELSE 128 END
                        THEN host(net) ELSE net::text END;
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION mail.rate_limit_match_normal(text, text) IS
    'Internal: the normal form of a rate-limit match for its key (trimmed, lowercased; an address for sasl_user and sender, a domain for sender_domain and recipient_domain, for client_ip an address or network, for client_net a network, an address standing for its /24 or /64; host bits under the mask are cleared; a single address is written without /32 or /128), or NULL when it is not acceptable. Never raises.';

-- ---------------------------------------------------------------- tables

CREATE TABLE mail.policy_settings (
    singleton         boolean     PRIMARY KEY DEFAULT true
                                  CONSTRAINT policy_settings_one_row CHECK (singleton),
    max_message_bytes bigint      CONSTRAINT policy_settings_max_message_bytes_positive
                                  CHECK (max_message_bytes > 0),
    max_recipients    integer     CONSTRAINT policy_settings_max_recipients_positive
                                  CHECK (max_recipients > 0),
    spam_mark_score   numeric     DEFAULT 5.0
                                  CONSTRAINT policy_settings_spam_mark_finite
                                  CHECK (spam_mark_score BETWEEN -1000000 AND 1000000),
    spam_reject_score numeric     DEFAULT 15.0
                                  CONSTRAINT policy_settings_spam_reject_finite
                                  CHECK (spam_reject_score BETWEEN -1000000 AND 1000000),
    abuse_max_events  integer     NOT NULL DEFAULT 5
                                  CONSTRAINT policy_settings_abuse_max_events_positive
                                  CHECK (abuse_max_events > 0),
    abuse_window      interval    NOT NULL DEFAULT '1 hour'
                                  CONSTRAINT policy_settings_abuse_window_range
                                  CHECK (abuse_window BETWEEN interval '1 second' AND interval '366 days'),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT policy_settings_spam_mark_not_above_reject
        CHECK (spam_mark_score <= spam_reject_score)
);
INSERT INTO mail.policy_settings DEFAULT VALUES;
COMMENT ON TABLE mail.policy_settings IS
    'The global policy, one row: default size and recipient limits (NULL: no limit), default spam thresholds (NULL: the milter''s built-in 5.0 and 15.0), and the abuse policy (abuse_max_events refused messages within abuse_window suspend a sender). Written by set_limits(NULL, ...), set_spam_thresholds(NULL, ...) and set_abuse_policy.';
COMMENT ON COLUMN mail.policy_settings.max_message_bytes IS 'Largest message accepted, in bytes as received; NULL: no limit.';
COMMENT ON COLUMN mail.policy_settings.max_recipients IS 'Most envelope recipients per message; NULL: no limit.';
COMMENT ON COLUMN mail.policy_settings.spam_mark_score IS 'Spam score from which a message is marked as spam; NULL: the milter''s default, 5.0.';
COMMENT ON COLUMN mail.policy_settings.spam_reject_score IS 'Spam score from which a message is refused; NULL: the milter''s default, 15.0.';

CREATE TABLE mail.domain_limits (
    domain_id         bigint      PRIMARY KEY REFERENCES mail.domains (domain_id) ON DELETE CASCADE,
    max_message_bytes bigint      CONSTRAINT domain_limits_max_message_bytes_positive
                                  CHECK (max_message_bytes > 0),
    max_recipients    integer     CONSTRAINT domain_limits_max_recipients_positive
                                  CHECK (max_recipients > 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mail.domain_limits IS
    'Size and recipient limits of a local domain, for its users'' mail and mail to it; a NULL limit is not set here (the global one applies).';

CREATE TABLE mail.user_limits (
    user_id           bigint      PRIMARY KEY REFERENCES mail.users (user_id) ON DELETE CASCADE,
    max_message_bytes bigint      CONSTRAINT user_limits_max_message_bytes_positive
                                  CHECK (max_message_bytes > 0),
    max_recipients    integer     CONSTRAINT user_limits_max_recipients_positive
                                  CHECK (max_recipients > 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mail.user_limits IS
    'Size and recipient limits of one user; a NULL limit is not set here (the domain''s, else the global one applies).';

CREATE TABLE mail.domain_spam_thresholds (
    domain_id    bigint      PRIMARY KEY REFERENCES mail.domains (domain_id) ON DELETE CASCADE,
    mark_score   numeric     CONSTRAINT domain_spam_thresholds_mark_finite
                             CHECK (mark_score BETWEEN -1000000 AND 1000000),
    reject_score numeric     CONSTRAINT domain_spam_thresholds_reject_finite
                             CHECK (reject_score BETWEEN -1000000 AND 1000000),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT domain_spam_thresholds_mark_not_above_reject CHECK (mark_score <= reject_score)
);
COMMENT ON TABLE mail.domain_spam_thresholds IS
    'Spam thresholds of a local domain: marked from mark_score, refused from reject_score; a NULL threshold is not set here (the global one applies).';

CREATE TABLE mail.rate_limits (
    rule_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        text        NOT NULL
                           CONSTRAINT rate_limits_key_known
                           CHECK (key IN ('sasl_user', 'sender', 'sender_domain',
                                          'client_ip', 'client_net', 'recipient_domain')),
    match      text        CONSTRAINT rate_limits_match_well_formed
                           CHECK (match = mail.rate_limit_match_normal(key, match)),
    match_net  cidr,
    metric     text        NOT NULL
                           CONSTRAINT rate_limits_metric_known
                           CHECK (metric IN ('messages', 'recipients', 'bytes')),
    max        bigint      NOT NULL CONSTRAINT rate_limits_max_positive CHECK (max > 0),
    per        interval    NOT NULL
                           CONSTRAINT rate_limits_per_range
                           CHECK (per BETWEEN interval '1 second' AND interval '366 days'),
    action     text        NOT NULL
                           CONSTRAINT rate_limits_action_known
                           CHECK (action IN ('tempfail', 'reject', 'hold')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rate_limits_match_net_consistent
        CHECK (CASE WHEN key IN ('client_ip', 'client_net') AND match IS NOT NULL
                    THEN match_net IS NOT NULL AND match_net = match::cidr
                    ELSE match_net IS NULL END)
);
-- The rules a message's values select: by (key, match) for addresses and
-- domains, '' standing for a NULL match (the per-value rules of a key) --
-- the unique index that also keeps rules from being added twice -- and by
-- network containment for client addresses.
CREATE UNIQUE INDEX rate_limits_key_match_idx
    ON mail.rate_limits (key, coalesce(match, ''), metric, per, action);
CREATE INDEX rate_limits_match_net_idx ON mail.rate_limits USING gist (match_net inet_ops)
    WHERE match_net IS NOT NULL;
COMMENT ON TABLE mail.rate_limits IS
    'Rate-limit rules: what is counted (key, and match: one value, or NULL for a separate budget per value), how (metric: messages, recipients or bytes), the budget (max per interval) and what happens to the first message over it (action: tempfail 451 4.7.1, reject 550 5.7.1, hold). Written by add_rate_limit, change_rate_limit, remove_rate_limit.';
COMMENT ON COLUMN mail.rate_limits.match IS 'The value the rule counts, in normal form (see rate_limit_match_normal), or NULL: every value of the key has its own budget.';
COMMENT ON COLUMN mail.rate_limits.match_net IS 'For client_ip and client_net rules with a match: the match as a network, for containment lookups.';

CREATE TABLE mail.rate_limit_counters (
    rule_id      bigint      NOT NULL,
    value        text        COLLATE "C" NOT NULL,
    window_start timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    used         bigint      NOT NULL CONSTRAINT rate_limit_counters_used_not_negative CHECK (used >= 0),
    PRIMARY KEY (rule_id, value)
) WITH (fillfactor = 70);   -- room for HOT updates: every check updates "used"
CREATE INDEX rate_limit_counters_expires_at_idx ON mail.rate_limit_counters (expires_at);
COMMENT ON TABLE mail.rate_limit_counters IS
    'Live rate-limit counters, one per (rule, value): what the window that started at window_start and ends at expires_at has used. No foreign key to the rule (it would share-lock the rule row from every check); remove_rate_limit deletes a rule''s counters, expire_rate_counters expired ones.';
COMMENT ON COLUMN mail.rate_limit_counters.value IS 'The rule''s match, or for a rule without one the message''s value (lowercased address or domain, client address, client network).';

CREATE TABLE mail.rate_limit_exemptions (
    exemption_id bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL
                             CONSTRAINT rate_limit_exemptions_kind_known
                             CHECK (kind IN ('address', 'domain', 'network')),
    value        text        NOT NULL UNIQUE,
    net          cidr,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rate_limit_exemptions_value_well_formed
        CHECK (value = mail.rate_limit_match_normal(
                   CASE kind WHEN 'address' THEN 'sender' WHEN 'domain' THEN 'sender_domain'
                             ELSE 'client_ip' END, value)),
    CONSTRAINT rate_limit_exemptions_net_consistent
        CHECK (CASE WHEN kind = 'network' THEN net IS NOT NULL AND net = value::cidr
                    ELSE net IS NULL END)
);
CREATE INDEX rate_limit_exemptions_net_idx ON mail.rate_limit_exemptions USING gist (net inet_ops)
    WHERE net IS NOT NULL;
COMMENT ON TABLE mail.rate_limit_exemptions IS
    'Values no rate limit counts: an address (for sasl_user and sender), a domain (sender_domain, recipient_domain, and the addresses of the domain), an IP address or network (client_ip and client_net of clients inside it).';

CREATE TABLE mail.sender_suspensions (
    user_id      bigint      PRIMARY KEY REFERENCES mail.users (user_id) ON DELETE CASCADE,
    reason       text        NOT NULL CONSTRAINT sender_suspensions_reason_not_empty CHECK (btrim(reason) <> ''),
    suspended_at timestamptz NOT NULL DEFAULT now(),
    events       integer     NOT NULL DEFAULT 0 CHECK (events >= 0),
    suspended_by text        NOT NULL CONSTRAINT sender_suspensions_by_known
                             CHECK (suspended_by IN ('abuse', 'admin'))
);
COMMENT ON TABLE mail.sender_suspensions IS
    'Users who may not send: refused at MAIL FROM (5.7.1) until lift_suspension. suspended_by is "abuse" (automatic, events = the abuse events counted) or "admin" (suspend_sender).';

CREATE TABLE mail.abuse_events (
    user_id     bigint      NOT NULL REFERENCES mail.users (user_id) ON DELETE CASCADE,
    mailmeta_id uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    cause       text        NOT NULL CONSTRAINT abuse_events_cause_known
                            CHECK (cause IN ('spam', 'virus', 'rate_limit')),
    rule        text,
    PRIMARY KEY (user_id, mailmeta_id)
);
CREATE INDEX abuse_events_occurred_at_idx ON mail.abuse_events (user_id, occurred_at);
COMMENT ON TABLE mail.abuse_events IS
    'Outgoing messages of a user refused, held or deferred because of spam, a virus or a rate limit; one per message (mailmeta_id). abuse_max_events of them within abuse_window suspend the user. Deleted by lift_suspension and, once older than the window, by expire_rate_counters.';

-- The foreign key is checked at commit: record_verdicts runs in the same
-- statement as record_messages, in whichever order the plan chooses.
CREATE TABLE mail.message_verdicts (
    mailmeta_id   uuid        PRIMARY KEY
                              REFERENCES mail.messages (mailmeta_id) ON DELETE CASCADE
                              DEFERRABLE INITIALLY DEFERRED,
    stage         text        CONSTRAINT message_verdicts_stage_known
                              CHECK (stage IN ('connect', 'helo', 'mail', 'rcpt', 'data', 'eom')),
    rule          text,
    spam_score    numeric,
    spam_required numeric,
    spam_rules    text[],
    virus         text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mail.message_verdicts IS
    'Why the milter decided what it did about a message (the "policy" object of its metadata document): the SMTP stage of the decision, the rule that caused it, the spam engine''s score, threshold and rules, the virus found. One row per message that carried a policy object; written by record_verdicts.';
COMMENT ON COLUMN mail.message_verdicts.stage IS 'Where the decision was taken: connect, helo, mail (MAIL FROM), rcpt, data or eom (end of message).';
COMMENT ON COLUMN mail.message_verdicts.rule IS 'The rule that decided, as the milter named it (e.g. "message_size_limit", "spamd", "clamd", "rate_limit 12 (...)"); NULL when nothing refused the message.';
COMMENT ON COLUMN mail.message_verdicts.spam_required IS 'The spam score from which the message was marked (policy.spam.required).';

REVOKE ALL ON mail.policy_settings, mail.domain_limits, mail.user_limits,
              mail.domain_spam_thresholds, mail.rate_limits, mail.rate_limit_counters,
              mail.rate_limit_exemptions, mail.sender_suspensions, mail.abuse_events,
              mail.message_verdicts
    FROM PUBLIC;
GRANT SELECT ON mail.policy_settings, mail.domain_limits, mail.user_limits,
                mail.domain_spam_thresholds, mail.rate_limits, mail.rate_limit_counters,
                mail.rate_limit_exemptions, mail.sender_suspensions, mail.abuse_events,
                mail.message_verdicts
    TO mailmeta_admin;

-- ---------------------------------------------------------------- message_log

CREATE OR REPLACE VIEW mail.message_log AS
    SELECT m.mailmeta_id, m.queue_id, m.received_at, m.direction,
           m.client_ip, m.client_name, m.helo, m.tls_version, m.tls_cipher,
           m.sasl_user, m.env_from, r.rcpt,
           m.header_from, m.subject, m.message_id, m.sent_at, m.size_bytes,
           m.thread_id, m.attachment_count, m.malformed, m.action, m.reason,
           v.stage AS policy_stage, v.rule AS policy_rule, v.spam_score, v.spam_rules, v.virus
      FROM mail.messages m
      LEFT JOIN mail.message_recipients r ON r.mailmeta_id = m.mailmeta_id
      LEFT JOIN mail.message_verdicts v ON v.mailmeta_id = m.mailmeta_id;
COMMENT ON VIEW mail.message_log IS
    'Message tracking: one row per message and envelope recipient (a message without recipients has one row with rcpt NULL). Columns: mailmeta_id (X-Mailmeta-ID), queue_id (Postfix queue id), received_at (end of message at the milter), direction (inbound/outbound/local), client_ip, client_name, helo, tls_version, tls_cipher (NULL without TLS), sasl_user (authenticated submitter), env_from (envelope sender, empty for <>), rcpt (envelope recipient as given), header_from (first From address), subject (decoded), message_id (without <>), sent_at (Date header, NULL when unparseable), size_bytes (raw size), thread_id (conversation), attachment_count, malformed, action (accept/tempfail/reject/discard/hold), reason, policy_stage (SMTP stage of the decision: connect, helo, mail, rcpt, data, eom), policy_rule (the rule that decided), spam_score, spam_rules, virus (NULL when the milter sent no verdict).';

-- ---------------------------------------------------------------- internal helpers

-- Counts abuse events of these users and suspends those who reached the
-- threshold. Takes each user's advisory lock, in user_id order, then counts
-- in a new statement: a concurrent recorder that inserted an event before
-- us is counted by whichever of us takes the lock last.
CREATE FUNCTION mail.apply_abuse_policy(user_ids bigint[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET intervalstyle = 'postgres'
AS $$
BEGIN
    -- 1633842547 = 'abus' in ASCII.
    PERFORM pg_advisory_xact_lock(1633842547, (u % 2147483647)::integer)
       FROM (SELECT DISTINCT u FROM unnest(apply_abuse_policy.user_ids) AS u ORDER BY 1) s;
    INSERT INTO mail.sender_suspensions (user_id, reason, events, suspended_by)
    SELECT e.user_id,
           format('automatic: %s outgoing messages refused within %s (%s)', sum(e.n), s.abuse_window,
                  string_agg(e.cause || ' ' || e.n, ', ' ORDER BY e.cause)),
           sum(e.n), 'abuse'
      FROM (SELECT a.user_id, a.cause, count(*) AS n
              FROM mail.abuse_events a, mail.policy_settings s
             WHERE a.user_id = ANY (apply_abuse_policy.user_ids)
               AND a.occurred_at > now() - s.abuse_window
             GROUP BY a.user_id, a.cause) e,
           mail.policy_settings s
     GROUP BY e.user_id, s.abuse_window, s.abuse_max_events
    HAVING sum(e.n) >= s.abuse_max_events
    ON CONFLICT (user_id) DO NOTHING;
END
$$;
COMMENT ON FUNCTION mail.apply_abuse_policy(bigint[]) IS
    'Internal: suspends those of these users who have abuse_max_events abuse events within abuse_window (serialised per user by a transaction advisory lock).';

-- target of set_limits / clear_limits: NULL (global), a domain or an address.
CREATE FUNCTION mail.policy_target(target text, OUT scope text, OUT id bigint, OUT name text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF policy_target.target IS NULL THEN
        scope := 'global';
        RETURN;
    END IF;
    IF strpos(policy_target.target, '@') > 0 THEN
        scope := 'user';
        name := mail.normalise_address(policy_target.target);
        SELECT u.user_id INTO id FROM mail.users u WHERE u.address = name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user % does not exist', quote_literal(name)
                USING ERRCODE = 'no_data_found';
        END IF;
    ELSE
        scope := 'domain';
        name := mail.normalise_domain(policy_target.target);
        SELECT d.domain_id INTO id FROM mail.domains d WHERE d.domain = name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'domain % does not exist', quote_literal(name)
                USING ERRCODE = 'no_data_found';
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION mail.policy_target(text) IS
    'Internal: resolves a policy target: NULL is global, a value with "@" a user, anything else a domain; raises 22023 (malformed), P0002 (unknown user or domain).';

CREATE FUNCTION mail.check_rate_limit_key(key text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_rate_limit_key.key IS NULL
       OR check_rate_limit_key.key NOT IN ('sasl_user', 'sender', 'sender_domain',
                                           'client_ip', 'client_net', 'recipient_domain') THEN
        RAISE EXCEPTION 'invalid rate-limit key %: expected sasl_user, sender, sender_domain, client_ip, client_net or recipient_domain',
                quote_nullable(check_rate_limit_key.key)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_rate_limit_key(text) IS
    'Internal: raises 22023 unless the value is a rate-limit key.';

-- The match in normal form, raising 22023 with the reason when malformed.
CREATE FUNCTION mail.normalise_rate_limit_match(key text, match text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_normal text;
BEGIN
    IF normalise_rate_limit_match.match IS NULL THEN
        RETURN NULL;
    END IF;
    v_normal := mail.rate_limit_match_normal(normalise_rate_limit_match.key, normalise_rate_limit_match.match);
    IF v_normal IS NULL THEN
        IF normalise_rate_limit_match.key IN ('sasl_user', 'sender') THEN
            PERFORM mail.normalise_address(normalise_rate_limit_match.match);   -- raises with the reason
        ELSIF normalise_rate_limit_match.key IN ('sender_domain', 'recipient_domain') THEN
            PERFORM mail.normalise_domain(normalise_rate_limit_match.match);
        END IF;
        RAISE EXCEPTION 'invalid match % for key %: expected %', quote_literal(normalise_rate_limit_match.match),
                normalise_rate_limit_match.key,
                CASE WHEN normalise_rate_limit_match.key IN ('client_ip', 'client_net')
                     THEN 'an IP address or a network (192.0.2.0/24, 2001:db8::/48)'
                     WHEN normalise_rate_limit_match.key IN ('sasl_user', 'sender') THEN 'an address'
                     ELSE 'a domain' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_normal;
END
$$;
COMMENT ON FUNCTION mail.normalise_rate_limit_match(text, text) IS
    'Internal: a rate-limit match in normal form (see rate_limit_match_normal); NULL stays NULL; raises 22023 naming the value when it is malformed for the key.';

CREATE FUNCTION mail.check_rate_limit_values(metric text, max bigint, per interval, action text)
    RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_rate_limit_values.metric IS NULL
       OR check_rate_limit_values.metric NOT IN ('messages', 'recipients', 'bytes') THEN
        RAISE EXCEPTION 'invalid rate-limit metric %: expected messages, recipients or bytes',
                quote_nullable(check_rate_limit_values.metric)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF check_rate_limit_values.max IS NULL OR check_rate_limit_values.max <= 0 THEN
        RAISE EXCEPTION 'invalid rate-limit max %: must be at least 1',
                coalesce(check_rate_limit_values.max::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF check_rate_limit_values.per IS NULL
       OR check_rate_limit_values.per NOT BETWEEN interval '1 second' AND interval '366 days' THEN
        RAISE EXCEPTION 'invalid rate-limit interval %: must be between 1 second and 366 days',
                coalesce(quote_literal(check_rate_limit_values.per::text), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF check_rate_limit_values.action IS NULL
       OR check_rate_limit_values.action NOT IN ('tempfail', 'reject', 'hold') THEN
        RAISE EXCEPTION 'invalid rate-limit action %: expected tempfail, reject or hold',
                quote_nullable(check_rate_limit_values.action)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_rate_limit_values(text, bigint, interval, text) IS
    'Internal: raises 22023 unless metric is messages, recipients or bytes, max at least 1, per between 1 second and 366 days, action tempfail, reject or hold.';

-- An exemption value in normal form and its kind; raises 22023.
CREATE FUNCTION mail.normalise_exemption(value text, OUT kind text, OUT normal text)
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v text := btrim(normalise_exemption.value, E' \t\r\n');
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'invalid exemption %: expected an address, a domain, an IP address or a network',
                quote_nullable(normalise_exemption.value)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF strpos(v, '@') > 0 THEN
        kind := 'address';
        normal := mail.normalise_address(v);
    ELSE
        normal := mail.rate_limit_match_normal('client_ip', v);
        IF normal IS NOT NULL THEN
            kind := 'network';
        ELSIF v ~ '^[0-9a-fA-F:.]+(/[0-9]+)?$' AND v ~ '[:/]' THEN
            RAISE EXCEPTION 'invalid exemption %: not an IP address or network', quote_literal(v)
                USING ERRCODE = 'invalid_parameter_value';
        ELSE
            kind := 'domain';
            normal := mail.normalise_domain(v);
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION mail.normalise_exemption(text) IS
    'Internal: the kind (address, domain, network) and normal form of a rate-limit exemption; raises 22023 naming the value when it is none of them.';

CREATE FUNCTION mail.check_spam_thresholds(mark_score numeric, reject_score numeric) RETURNS void
    LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    IF check_spam_thresholds.mark_score NOT BETWEEN -1000000 AND 1000000 THEN
        RAISE EXCEPTION 'invalid mark_score %: must be a number between -1000000 and 1000000 (or NULL)',
                check_spam_thresholds.mark_score
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF check_spam_thresholds.reject_score NOT BETWEEN -1000000 AND 1000000 THEN
        RAISE EXCEPTION 'invalid reject_score %: must be a number between -1000000 and 1000000 (or NULL)',
                check_spam_thresholds.reject_score
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF check_spam_thresholds.mark_score > check_spam_thresholds.reject_score THEN
        RAISE EXCEPTION 'invalid spam thresholds: mark_score % is above reject_score %',
                check_spam_thresholds.mark_score, check_spam_thresholds.reject_score
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.check_spam_thresholds(numeric, numeric) IS
    'Internal: raises 22023 unless both thresholds are NULL or finite numbers within +-1000000 and mark_score <= reject_score.';

-- ---------------------------------------------------------------- the milter's functions

CREATE FUNCTION mail.policy_snapshot() RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT jsonb_build_object(
        'limits', jsonb_build_object(
            'global', jsonb_build_object('max_message_bytes', s.max_message_bytes,
                                         'max_recipients', s.max_recipients),
            'domains', coalesce((SELECT jsonb_object_agg(d.domain, jsonb_build_object(
                                            'max_message_bytes', l.max_message_bytes,
                                            'max_recipients', l.max_recipients))
                                   FROM mail.domain_limits l JOIN mail.domains d ON d.domain_id = l.domain_id),
                                '{}'::jsonb),
            'users', coalesce((SELECT jsonb_object_agg(u.address, jsonb_build_object(
                                          'max_message_bytes', l.max_message_bytes,
                                          'max_recipients', l.max_recipients))
                                 FROM mail.user_limits l JOIN mail.users u ON u.user_id = l.user_id),
                              '{}'::jsonb)),
        'spam', jsonb_build_object(
            'global', jsonb_build_object('mark', s.spam_mark_score, 'reject', s.spam_reject_score),
            'domains', coalesce((SELECT jsonb_object_agg(d.domain, jsonb_build_object(
                                            'mark', t.mark_score, 'reject', t.reject_score))
                                   FROM mail.domain_spam_thresholds t
                                   JOIN mail.domains d ON d.domain_id = t.domain_id),
                                '{}'::jsonb)),
        'suspended', coalesce((SELECT jsonb_object_agg(u.address, ss.reason)
                                 FROM mail.sender_suspensions ss JOIN mail.users u ON u.user_id = ss.user_id),
                              '{}'::jsonb),
        -- Which keys have rate limits: "any" when a rule counts every value
        -- (match NULL), and the values rules name. A message none of whose
        -- values is covered needs no policy_check.
        'rate_limits', coalesce((SELECT jsonb_object_agg(k.key, jsonb_build_object('any', k.any, 'values', k.vals))
                                   FROM (SELECT r.key, bool_or(r.match IS NULL) AS any,
                                                coalesce(jsonb_agg(DISTINCT r.match) FILTER (WHERE r.match IS NOT NULL),
                                                         '[]'::jsonb) AS vals
                                           FROM mail.rate_limits r GROUP BY r.key) k),
                                '{}'::jsonb))
      FROM mail.policy_settings s
$$;
COMMENT ON FUNCTION mail.policy_snapshot() IS
    'The policy the milter caches: {"limits": {"global": {"max_message_bytes", "max_recipients"}, "domains": {domain: {...}}, "users": {address: {...}}}, "spam": {"global": {"mark", "reject"}, "domains": {domain: {"mark", "reject"}}}, "suspended": {address: reason}, "rate_limits": {key: {"any": bool, "values": [match, ...]}}}. Only rows that exist are listed; null means not set at that level: each limit and threshold comes from the most specific level that sets it (user, domain, global); a null global limit means no limit, a null global threshold the milter''s default. rate_limits lists the keys that have rules: "any" when a rule counts every value of the key, and the values (addresses, domains, IP addresses or networks) rules name; a message with no value covered by them needs no policy_check.';

-- How a refusal names its rule: "rate_limit 12 (sasl_user a@example.com:
-- 100 messages per 01:00:00)".
CREATE FUNCTION mail.rate_limit_description(rule_id bigint, value text) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp SET intervalstyle = 'postgres'
AS $$
    SELECT coalesce((SELECT format('rate_limit %s (%s %s: %s %s per %s)', r.rule_id, r.key, $2,
                                   r.max, r.metric, r.per)
                       FROM mail.rate_limits r WHERE r.rule_id = $1),
                    format('rate_limit %s (%s)', $1, $2))
$$;
COMMENT ON FUNCTION mail.rate_limit_description(bigint, text) IS
    'Internal: how a refusal names a rate limit and the value it counted: "rate_limit <id> (<key> <value>: <max> <metric> per <interval>)".';

CREATE FUNCTION mail.policy_check(doc jsonb) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_user     text;
    v_sender   text;
    v_ip       inet;
    v_size     bigint;
    v_mid      uuid;
    v_bad      boolean;
    v_user_id  bigint;
    v_reason   text;
    v_nrcpt    bigint;
    v_keys     text[];       -- the message's values: key,
    v_values   text[];       -- value,
    v_rcpts    bigint[];     -- recipients counted for it,
    v_exempt   boolean[];    -- whether an exemption covers it
    r_ids      bigint[];     -- the counters to add to: rule,
    r_values   text[];       -- counter value,
    r_amounts  bigint[];     -- amount,
    r_per      interval[];   -- and the rule's interval, budget, action
    r_max      bigint[];
    r_action   text[];
    v_refused  integer;
    v_rule     text;
BEGIN
    -- The document: checked cheaply; a malformed one is refused as a whole.
    IF jsonb_typeof(doc) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'policy_check wants a JSON object, not %', coalesce(jsonb_typeof(doc), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(jsonb_typeof(doc->'sasl_user'), 'null') NOT IN ('string', 'null')
       OR coalesce(jsonb_typeof(doc->'sender'), 'null') NOT IN ('string', 'null')
       OR coalesce(jsonb_typeof(doc->'client_ip'), 'null') NOT IN ('string', 'null')
       OR coalesce(jsonb_typeof(doc->'recipients'), 'null') NOT IN ('array', 'null')
       OR coalesce(jsonb_typeof(doc->'size_bytes'), 'null') NOT IN ('number', 'null')
       OR left(doc->>'size_bytes', 1) = '-'
       OR (doc->>'mailmeta_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'invalid policy_check document: sasl_user, sender, client_ip and mailmeta_id must be strings (mailmeta_id a UUID) or null, recipients an array of addresses (strings or objects with an address), size_bytes a number >= 0 or null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_user := nullif(lower(btrim(doc->>'sasl_user', E' \t\r\n')), '');
    v_sender := nullif(lower(btrim(doc->>'sender', E' \t\r\n<>')), '');
    v_ip := mail.parse_inet(btrim(doc->>'client_ip'));
    IF family(v_ip) = 6 AND v_ip << inet '::ffff:0:0/96' THEN   -- an IPv4 client on an IPv6 socket
        v_ip := mail.parse_inet(substring(host(v_ip) FROM '([0-9.]+)$'));
    END IF;
    v_size := coalesce(trunc(least((doc->>'size_bytes')::numeric, 9223372036854775807))::bigint, 0);
    v_mid := (doc->>'mailmeta_id')::uuid;

    -- 1. In one statement: the sender's suspension, and the message's
    --    values -- sasl_user, sender, sender_domain, client_ip, client_net
    --    (/24, /64) and each recipient domain -- with the recipients counted
    --    for each and whether an exemption covers it.
    WITH rc AS MATERIALIZED (
        SELECT DISTINCT lower(btrim(CASE jsonb_typeof(e) WHEN 'object' THEN e->>'address'
                                                         WHEN 'string' THEN e #>> '{}' END,
                                    E' \t\r\n<>')) AS a,
               jsonb_typeof(e) NOT IN ('object', 'string') AS bad
          FROM jsonb_array_elements(doc->'recipients') AS e
    ), rd AS MATERIALIZED (
        SELECT coalesce(substring(rc.a FROM '@([^@]+)$'), '') AS d, count(*) AS n
          FROM rc WHERE rc.a <> '' GROUP BY 1
    ), v AS (
        SELECT x.key, x.value, x.ip, (SELECT coalesce(sum(rd.n), 0) FROM rd)::bigint AS n
          FROM (VALUES ('sasl_user', v_user, NULL::inet),
                       ('sender', v_sender, NULL::inet),
                       ('sender_domain', substring(v_sender FROM '@([^@]+)$'), NULL::inet),
                       ('client_ip', host(v_ip), v_ip),
                       ('client_net', network(set_masklen(v_ip, CASE family(v_ip) WHEN 4 THEN 24 ELSE 64 END))::text,
                        v_ip)) AS x (key, value, ip)
         WHERE x.value IS NOT NULL
        UNION ALL
        SELECT 'recipient_domain', rd.d, NULL::inet, rd.n FROM rd WHERE rd.d <> ''
    )
    SELECT (SELECT u.user_id FROM mail.users u WHERE u.address = v_user),
           (SELECT s.reason FROM mail.users u JOIN mail.sender_suspensions s ON s.user_id = u.user_id
             WHERE u.address = v_user),
           (SELECT bool_or(rc.bad) FROM rc),
           (SELECT coalesce(sum(rd.n), 0) FROM rd)::bigint,
           array_agg(v.key), array_agg(v.value), array_agg(v.n),
           array_agg(CASE WHEN v.ip IS NULL
                          THEN EXISTS (SELECT FROM mail.rate_limit_exemptions x
                                        WHERE x.value IN (v.value, substring(v.value FROM '@([^@]+)$')))
                          ELSE EXISTS (SELECT FROM mail.rate_limit_exemptions x WHERE x.net >>= v.ip) END)
      INTO v_user_id, v_reason, v_bad, v_nrcpt, v_keys, v_values, v_rcpts, v_exempt
      FROM v;
    IF v_bad THEN
        RAISE EXCEPTION 'invalid policy_check document: sasl_user, sender, client_ip and mailmeta_id must be strings (mailmeta_id a UUID) or null, recipients an array of addresses (strings or objects with an address), size_bytes a number >= 0 or null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'mail.policy_check must run at isolation level READ COMMITTED, not %',
                upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state';
    END IF;

    -- 2. A suspended sender is refused before anything is counted.
    IF v_reason IS NOT NULL THEN
        RETURN jsonb_build_object(
            'action', 'reject', 'code', '550', 'status', '5.7.1',
            'text', 'Sending from this account is suspended; contact the administrator',
            'rule', format('suspended %s (%s)', v_user, v_reason));
    END IF;

    -- 3. The counters the message needs, one per (rule, counter value), for
    --    the values no exemption covers: the rules naming the value (for
    --    client addresses: an address or network around the client's) and
    --    the per-value rules (match NULL); with the amount of each rule's
    --    metric.
    SELECT array_agg(w.rule_id), array_agg(w.value), array_agg(w.amount),
           array_agg(w.per), array_agg(w.max), array_agg(w.action)
      INTO r_ids, r_values, r_amounts, r_per, r_max, r_action
      FROM (SELECT m.rule_id, m.value, sum(m.amount)::bigint AS amount,
                   min(m.per) AS per, min(m.max) AS max, min(m.action) AS action
              FROM (SELECT r.rule_id, coalesce(r.match, v.value) AS value, r.per, r.max, r.action,
                           CASE r.metric WHEN 'messages' THEN 1 WHEN 'recipients' THEN v.n ELSE v_size END AS amount
                      FROM unnest(v_keys, v_values, v_rcpts, v_exempt) AS v (key, value, n, exempt)
                      CROSS JOIN LATERAL (
                          SELECT r.rule_id, r.match, r.metric, r.per, r.max, r.action
                            FROM mail.rate_limits r
                           WHERE r.key = v.key
                             AND coalesce(r.match, '') = ANY (ARRAY[
                                     CASE WHEN v.key NOT IN ('client_ip', 'client_net') THEN v.value END, ''])
                          OFFSET 0) r
                     WHERE NOT v.exempt
                    UNION ALL
                    SELECT r.rule_id, r.match, r.per, r.max, r.action,
                           CASE r.metric WHEN 'messages' THEN 1 WHEN 'recipients' THEN v_nrcpt ELSE v_size END
                      FROM mail.rate_limits r
                     WHERE r.match_net >>= v_ip
                       AND NOT EXISTS (SELECT FROM mail.rate_limit_exemptions x WHERE x.net >>= v_ip)) m
             WHERE m.amount > 0
             GROUP BY m.rule_id, m.value) w;
    IF r_ids IS NULL THEN
        RETURN '{"action": "accept"}'::jsonb;
    END IF;

    -- 4. Consume: lock and add to every counter, in (rule_id, value) order;
    --    an expired window restarts with this message. The first counter
    --    over its budget (reject before tempfail before hold, then by rule
    --    and value) refuses the message.
    --    The transaction commits asynchronously when nothing was written in
    --    it before: the counters' row locks are then held for a shorter time
    --    (no WAL flush before they are released), and the milter's record of
    --    the message, committed synchronously before Postfix hears the
    --    answer, flushes this commit with its own.
    IF txid_current_if_assigned() IS NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    WITH c AS (
        INSERT INTO mail.rate_limit_counters AS c (rule_id, value, window_start, expires_at, used)
        SELECT w.rule_id, w.value, now(), now() + w.per, w.amount
          FROM unnest(r_ids, r_values, r_per, r_amounts) AS w (rule_id, value, per, amount)
         ORDER BY w.rule_id, w.value COLLATE "C"
        ON CONFLICT (rule_id, value) DO UPDATE
           SET used = CASE WHEN c.expires_at <= now() THEN excluded.used ELSE c.used + excluded.used END,
               window_start = CASE WHEN c.expires_at <= now() THEN excluded.window_start ELSE c.window_start END,
               expires_at = CASE WHEN c.expires_at <= now() THEN excluded.expires_at ELSE c.expires_at END
        RETURNING c.rule_id, c.value, c.used
    )
    SELECT w.i INTO v_refused
      FROM c
      JOIN unnest(r_ids, r_values, r_max, r_action) WITH ORDINALITY AS w (rule_id, value, max, action, i)
        ON w.rule_id = c.rule_id AND w.value COLLATE "C" = c.value
     WHERE c.used > w.max
     ORDER BY array_position(ARRAY['reject', 'tempfail', 'hold'], w.action), w.rule_id, w.value COLLATE "C"
     LIMIT 1;
    IF v_refused IS NULL THEN
        RETURN '{"action": "accept"}'::jsonb;
    END IF;

    -- 5. Refused: take every amount back; nothing is consumed.
    DELETE FROM mail.rate_limit_counters c
     USING unnest(r_ids, r_values, r_amounts) AS w (rule_id, value, amount)
     WHERE c.rule_id = w.rule_id AND c.value = w.value COLLATE "C" AND c.used <= w.amount;
    UPDATE mail.rate_limit_counters c SET used = c.used - w.amount
      FROM unnest(r_ids, r_values, r_amounts) AS w (rule_id, value, amount)
     WHERE c.rule_id = w.rule_id AND c.value = w.value COLLATE "C";
    v_rule := mail.rate_limit_description(r_ids[v_refused], r_values[v_refused]);

    -- An authenticated sender's refusal is an abuse event (when the milter
    -- gave the message's mailmeta_id; otherwise record_verdicts counts it).
    IF v_user_id IS NOT NULL AND v_mid IS NOT NULL THEN
        INSERT INTO mail.abuse_events (user_id, mailmeta_id, occurred_at, cause, rule)
        VALUES (v_user_id, v_mid, now(), 'rate_limit', v_rule)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            PERFORM mail.apply_abuse_policy(ARRAY[v_user_id]);
        END IF;
    END IF;

    RETURN jsonb_build_object(
        'action', r_action[v_refused],
        'code', CASE r_action[v_refused] WHEN 'tempfail' THEN '451' WHEN 'reject' THEN '550' END,
        'status', CASE r_action[v_refused] WHEN 'tempfail' THEN '4.7.1' WHEN 'reject' THEN '5.7.1' END,
        'text', CASE r_action[v_refused]
                    WHEN 'tempfail' THEN format('Rate limit exceeded for %s, try again later', r_values[v_refused])
                    WHEN 'reject' THEN format('Rate limit exceeded for %s', r_values[v_refused])
                    ELSE format('Held: rate limit exceeded for %s', r_values[v_refused]) END,
        'rule', v_rule);
END
$$;
COMMENT ON FUNCTION mail.policy_check(jsonb) IS
    'The milter''s per-message check at end of message. doc = {"sasl_user", "sender" ("" for <>), "client_ip", "recipients": [address, ...], "size_bytes", optional "mailmeta_id"}. Refuses a suspended sasl_user ({"action": "reject", "code": "550", "status": "5.7.1", ...}); otherwise adds the message to every rate-limit counter it falls under, all or nothing, exactly under concurrency, and returns {"action": "accept"} or, for the first rule over its budget (reject before tempfail before hold, then by rule id), {"action": "tempfail"|"reject"|"hold", "code": "451"|"550"|null, "status": "4.7.1"|"5.7.1"|null, "text", "rule": "rate_limit <id> (<key> <value>: <max> <metric> per <interval>)"} having consumed nothing. With a mailmeta_id, a refusal of a local sasl_user is counted as an abuse event at once. Raises 22023 for a malformed document, 25000 outside READ COMMITTED.';

CREATE FUNCTION mail.record_verdicts(docs jsonb) RETURNS jsonb
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_users bigint[];
BEGIN
    IF docs IS NULL OR jsonb_typeof(docs) <> 'array' THEN
        RAISE EXCEPTION 'record_verdicts wants a JSON array of metadata documents, not %',
                coalesce(jsonb_typeof(docs), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Documents with a policy object; what is not of the expected type is
    -- stored as NULL. Nothing here raises for a malformed document:
    -- record_messages judges the document itself (22023, naming it).
    INSERT INTO mail.message_verdicts AS mv (mailmeta_id, stage, rule, spam_score, spam_required,
                                             spam_rules, virus)
    SELECT DISTINCT ON (x.mid) x.mid,
           CASE WHEN p->>'stage' IN ('connect', 'helo', 'mail', 'rcpt', 'data', 'eom') THEN p->>'stage' END,
           CASE WHEN jsonb_typeof(p->'rule') = 'string' THEN p->>'rule' END,
           CASE WHEN jsonb_typeof(p #> '{spam,score}') = 'number' THEN (p #>> '{spam,score}')::numeric END,
           CASE WHEN jsonb_typeof(p #> '{spam,required}') = 'number' THEN (p #>> '{spam,required}')::numeric END,
           CASE WHEN jsonb_typeof(p #> '{spam,rules}') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(p #> '{spam,rules}')) END,
           CASE jsonb_typeof(p->'virus') WHEN 'object' THEN p #>> '{virus,name}'
                                        WHEN 'string' THEN p->>'virus' END
      FROM jsonb_array_elements(docs) AS e,
           LATERAL (SELECT e->'policy' AS p,
                           CASE WHEN e->>'mailmeta_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                                THEN (e->>'mailmeta_id')::uuid END AS mid) x
     WHERE jsonb_typeof(e->'policy') = 'object' AND x.mid IS NOT NULL
     ORDER BY x.mid
    ON CONFLICT (mailmeta_id) DO NOTHING;

    -- Abuse events: an authenticated local user's outgoing message refused,
    -- held or deferred because of spam, a virus or a rate limit.
    WITH d AS MATERIALIZED (   -- usually empty: no user lookup for accepted mail
        SELECT e, e->'policy' AS p
          FROM jsonb_array_elements(docs) AS e
         WHERE e->>'action' IN ('reject', 'hold', 'tempfail')
           AND e->>'direction' IN ('outbound', 'local')
           AND jsonb_typeof(e->'policy') = 'object'
           AND jsonb_typeof(e->'sasl_user') = 'string'
           AND e->>'mailmeta_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    ), c AS MATERIALIZED (
        SELECT (SELECT u.user_id FROM mail.users u
                 WHERE u.address = lower(btrim(d.e->>'sasl_user', E' \t\r\n'))) AS user_id,
               (d.e->>'mailmeta_id')::uuid AS mid,
               coalesce(mail.parse_timestamptz(d.e->>'received_at'), now()) AS occurred_at,
               CASE WHEN jsonb_typeof(d.p->'virus') IN ('object', 'string') THEN 'virus'
                    WHEN jsonb_typeof(d.p #> '{spam,score}') = 'number'
                         AND (d.p #>> '{spam,score}')::numeric
                             >= CASE WHEN jsonb_typeof(d.p #> '{spam,reject}') = 'number'
                                     THEN (d.p #>> '{spam,reject}')::numeric
                                     WHEN jsonb_typeof(d.p #> '{spam,required}') = 'number'
                                     THEN (d.p #>> '{spam,required}')::numeric END
                         THEN 'spam'
                    WHEN d.p->>'rule' LIKE 'rate\_limit%' THEN 'rate_limit' END AS cause,
               CASE WHEN jsonb_typeof(d.p->'rule') = 'string' THEN d.p->>'rule' END AS rule
          FROM d
    ), ev AS (
        SELECT DISTINCT ON (c.user_id, c.mid) c.*
          FROM c
         WHERE c.user_id IS NOT NULL AND c.cause IS NOT NULL
         ORDER BY c.user_id, c.mid
    ), ins AS (
        INSERT INTO mail.abuse_events (user_id, mailmeta_id, occurred_at, cause, rule)
        SELECT ev.user_id, ev.mid, ev.occurred_at, ev.cause, ev.rule FROM ev
        ON CONFLICT (user_id, mailmeta_id) DO NOTHING
        RETURNING user_id
    )
    SELECT array_agg(DISTINCT ins.user_id) INTO v_users FROM ins;
    IF v_users IS NOT NULL THEN
        PERFORM mail.apply_abuse_policy(v_users);
    END IF;
    RETURN docs;
END
$$;
COMMENT ON FUNCTION mail.record_verdicts(jsonb) IS
    'Stores the "policy" object of each metadata document of a batch (doc/metadata-record.md) in mail.message_verdicts and counts abuse events, suspending senders who reach the abuse policy''s threshold. Returns docs, so that one statement records verdicts and batch in order: SELECT mail.record_messages(mail.record_verdicts($1)). Idempotent by mailmeta_id. Raises 22023 when docs is not a JSON array; 23503 at commit for a verdict whose message was not recorded.';

CREATE FUNCTION mail.expire_rate_counters() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_deleted bigint;
BEGIN
    -- Never waits: a counter a check holds is left for the next run.
    WITH gone AS (
        DELETE FROM mail.rate_limit_counters c
         WHERE (c.rule_id, c.value) IN (
                   SELECT x.rule_id, x.value FROM mail.rate_limit_counters x
                    WHERE x.expires_at <= now()
                    ORDER BY x.rule_id, x.value
                      FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT count(*) INTO v_deleted FROM gone;
    DELETE FROM mail.abuse_events a
     USING mail.policy_settings s
     WHERE a.occurred_at <= now() - s.abuse_window;
    RETURN v_deleted;
END
$$;
COMMENT ON FUNCTION mail.expire_rate_counters() IS
    'Deletes the rate-limit counters whose window has ended (skipping those a check holds at this moment) and abuse events older than the abuse window; returns the number of counters deleted. The milter calls it every minute or so; cron may too.';

-- ---------------------------------------------------------------- admin: limits

CREATE FUNCTION mail.set_limits(target text, max_message_bytes bigint, max_recipients integer)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    IF set_limits.max_message_bytes <= 0 THEN
        RAISE EXCEPTION 'invalid max_message_bytes %: must be at least 1 (NULL: no limit)',
                set_limits.max_message_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF set_limits.max_recipients <= 0 THEN
        RAISE EXCEPTION 'invalid max_recipients %: must be at least 1 (NULL: no limit)',
                set_limits.max_recipients
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    t := mail.policy_target(set_limits.target);
    IF t.scope = 'global' THEN
        UPDATE mail.policy_settings s
           SET max_message_bytes = set_limits.max_message_bytes,
               max_recipients = set_limits.max_recipients, updated_at = now();
    ELSIF t.scope = 'domain' THEN
        INSERT INTO mail.domain_limits AS l (domain_id, max_message_bytes, max_recipients)
        VALUES (t.id, set_limits.max_message_bytes, set_limits.max_recipients)
        ON CONFLICT (domain_id) DO UPDATE
           SET max_message_bytes = excluded.max_message_bytes,
               max_recipients = excluded.max_recipients, updated_at = now();
    ELSE
        INSERT INTO mail.user_limits AS l (user_id, max_message_bytes, max_recipients)
        VALUES (t.id, set_limits.max_message_bytes, set_limits.max_recipients)
        ON CONFLICT (user_id) DO UPDATE
           SET max_message_bytes = excluded.max_message_bytes,
               max_recipients = excluded.max_recipients, updated_at = now();
    END IF;
END
$$;
COMMENT ON FUNCTION mail.set_limits(text, bigint, integer) IS
    'Sets the size and recipient limits of target: NULL for the global default, a domain, or a user''s address. Each limit applies from the most specific level that sets it (user, domain, global); NULL means not set at this level (globally: no limit). Raises 22023 (malformed target, a value below 1), P0002 (unknown domain or user).';

CREATE FUNCTION mail.clear_limits(target text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    t record := mail.policy_target(clear_limits.target);
BEGIN
    IF t.scope = 'global' THEN
        UPDATE mail.policy_settings s
           SET max_message_bytes = NULL, max_recipients = NULL, updated_at = now();
        RETURN;
    ELSIF t.scope = 'domain' THEN
        DELETE FROM mail.domain_limits l WHERE l.domain_id = t.id;
    ELSE
        DELETE FROM mail.user_limits l WHERE l.user_id = t.id;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % has no limits of its own', t.scope, quote_literal(t.name)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.clear_limits(text) IS
    'Removes the limits of a domain or user (the next level applies again); for NULL, removes the global limits (no limit). Raises 22023 (malformed target), P0002 (unknown domain or user, or none set).';

CREATE FUNCTION mail.list_limits()
    RETURNS TABLE (scope text, target text, max_message_bytes bigint, max_recipients integer,
                   updated_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT 'global', NULL::text, s.max_message_bytes, s.max_recipients, s.updated_at
      FROM mail.policy_settings s
    UNION ALL
    SELECT * FROM (
        SELECT 'domain', d.domain, l.max_message_bytes, l.max_recipients, l.updated_at
          FROM mail.domain_limits l JOIN mail.domains d ON d.domain_id = l.domain_id
        UNION ALL
        SELECT 'user', u.address, l.max_message_bytes, l.max_recipients, l.updated_at
          FROM mail.user_limits l JOIN mail.users u ON u.user_id = l.user_id
         ORDER BY 1, 2) x
$$;
COMMENT ON FUNCTION mail.list_limits() IS
    'Lists the size and recipient limits: the global row first (target NULL), then domains and users.';

-- ---------------------------------------------------------------- admin: spam thresholds

CREATE FUNCTION mail.set_spam_thresholds(domain text, mark_score numeric, reject_score numeric)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain    text;
    v_domain_id bigint;
BEGIN
    IF set_spam_thresholds.domain IS NOT NULL THEN
        v_domain := mail.normalise_domain(set_spam_thresholds.domain);
    END IF;
    PERFORM mail.check_spam_thresholds(set_spam_thresholds.mark_score, set_spam_thresholds.reject_score);
    IF v_domain IS NULL THEN
        UPDATE mail.policy_settings s
           SET spam_mark_score = set_spam_thresholds.mark_score,
               spam_reject_score = set_spam_thresholds.reject_score, updated_at = now();
        RETURN;
    END IF;
    SELECT d.domain_id INTO v_domain_id FROM mail.domains d WHERE d.domain = v_domain;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'domain % does not exist', quote_literal(v_domain)
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO mail.domain_spam_thresholds AS t (domain_id, mark_score, reject_score)
    VALUES (v_domain_id, set_spam_thresholds.mark_score, set_spam_thresholds.reject_score)
    ON CONFLICT (domain_id) DO UPDATE
       SET mark_score = excluded.mark_score, reject_score = excluded.reject_score, updated_at = now();
END
$$;
COMMENT ON FUNCTION mail.set_spam_thresholds(text, numeric, numeric) IS
    'Sets the spam thresholds of a local domain, or the global ones for NULL: a message scoring at least mark_score is marked, at least reject_score refused. NULL means not set at this level: a domain''s falls back to the global one, a global one to the milter''s default (5.0, 15.0). Raises 22023 (malformed domain, a value outside +-1000000, mark above reject), P0002 (unknown domain).';

CREATE FUNCTION mail.clear_spam_thresholds(domain text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_domain text;
BEGIN
    IF clear_spam_thresholds.domain IS NULL THEN
        UPDATE mail.policy_settings s
           SET spam_mark_score = 5.0, spam_reject_score = 15.0, updated_at = now();
        RETURN;
    END IF;
    v_domain := mail.normalise_domain(clear_spam_thresholds.domain);
    IF NOT EXISTS (SELECT FROM mail.domains d WHERE d.domain = v_domain) THEN
        RAISE EXCEPTION 'domain % does not exist', quote_literal(v_domain)
            USING ERRCODE = 'no_data_found';
    END IF;
    DELETE FROM mail.domain_spam_thresholds t
     USING mail.domains d
     WHERE d.domain_id = t.domain_id AND d.domain = v_domain;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'domain % has no spam thresholds of its own', quote_literal(v_domain)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.clear_spam_thresholds(text) IS
    'Removes a domain''s spam thresholds (the global ones apply again); for NULL, resets the global ones to mark 5.0, reject 15.0. Raises 22023 (malformed domain), P0002 (unknown domain, or none set).';

CREATE FUNCTION mail.list_spam_thresholds()
    RETURNS TABLE (domain text, mark_score numeric, reject_score numeric, updated_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT NULL::text, s.spam_mark_score, s.spam_reject_score, s.updated_at FROM mail.policy_settings s
    UNION ALL
    SELECT * FROM (
        SELECT d.domain, t.mark_score, t.reject_score, t.updated_at
          FROM mail.domain_spam_thresholds t JOIN mail.domains d ON d.domain_id = t.domain_id
         ORDER BY 1) x
$$;
COMMENT ON FUNCTION mail.list_spam_thresholds() IS
    'Lists the spam thresholds: the global pair first (domain NULL), then domains.';

-- ---------------------------------------------------------------- admin: rate limits

CREATE FUNCTION mail.add_rate_limit(key text, match text, metric text, max bigint, per interval,
                                    action text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET intervalstyle = 'postgres'
AS $$
DECLARE
    v_match   text;
    v_rule_id bigint;
BEGIN
    PERFORM mail.check_rate_limit_key(add_rate_limit.key);
    v_match := mail.normalise_rate_limit_match(add_rate_limit.key, add_rate_limit.match);
    PERFORM mail.check_rate_limit_values(add_rate_limit.metric, add_rate_limit.max,
                                         add_rate_limit.per, add_rate_limit.action);
    SELECT r.rule_id INTO v_rule_id
      FROM mail.rate_limits r
     WHERE r.key = add_rate_limit.key AND coalesce(r.match, '') = coalesce(v_match, '')
       AND r.metric = add_rate_limit.metric AND r.per = add_rate_limit.per
       AND r.action = add_rate_limit.action;
    IF FOUND THEN
        RAISE EXCEPTION 'rate limit % already counts % of % % per % (action %)', v_rule_id,
                add_rate_limit.metric, add_rate_limit.key, coalesce(v_match, '(each value)'),
                add_rate_limit.per, add_rate_limit.action
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change its budget with mail.change_rate_limit().';
    END IF;
    INSERT INTO mail.rate_limits (key, match, match_net, metric, max, per, action)
    VALUES (add_rate_limit.key, v_match,
            CASE WHEN add_rate_limit.key IN ('client_ip', 'client_net') THEN v_match::cidr END,
            add_rate_limit.metric, add_rate_limit.max, add_rate_limit.per, add_rate_limit.action)
    RETURNING rule_id INTO v_rule_id;
    RETURN v_rule_id;
END
$$;
COMMENT ON FUNCTION mail.add_rate_limit(text, text, text, bigint, interval, text) IS
    'Adds a rate limit and returns its rule_id. key: sasl_user, sender, sender_domain, client_ip, client_net (/24, /64) or recipient_domain; match: one value (an address, a domain, an IP address or network) or NULL for a separate budget per value; metric: messages, recipients or bytes; max >= 1 per interval (1 second to 366 days); action: tempfail (451 4.7.1), reject (550 5.7.1) or hold. Raises 22023 (any value malformed), 23505 (a rule with the same key, match, metric, interval and action exists).';

CREATE FUNCTION mail.list_rate_limits()
    RETURNS TABLE (rule_id bigint, key text, match text, metric text, max bigint, per interval,
                   action text, created_at timestamptz, updated_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT r.rule_id, r.key, r.match, r.metric, r.max, r.per, r.action, r.created_at, r.updated_at
      FROM mail.rate_limits r
     ORDER BY r.rule_id
$$;
COMMENT ON FUNCTION mail.list_rate_limits() IS
    'Lists the rate limits by rule_id (match NULL: a budget per value).';

-- Locks a rule's counters (all, or those of the given values) in the order
-- checks lock them, so admin changes and checks never deadlock.
CREATE FUNCTION mail.lock_rate_counters(rule_id bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    PERFORM FROM mail.rate_limit_counters c
      WHERE c.rule_id = lock_rate_counters.rule_id
      ORDER BY c.rule_id, c.value
        FOR UPDATE;
END
$$;
COMMENT ON FUNCTION mail.lock_rate_counters(bigint) IS
    'Internal: locks every counter of a rule in (rule_id, value) order, the order policy_check uses.';

CREATE FUNCTION mail.change_rate_limit(rule_id bigint, max bigint DEFAULT NULL,
                                       per interval DEFAULT NULL, action text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET intervalstyle = 'postgres'
AS $$
DECLARE
    r      mail.rate_limits;
    v_id   bigint;
BEGIN
    IF change_rate_limit.rule_id IS NULL THEN
        RAISE EXCEPTION 'rule_id must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM mail.rate_limits x WHERE x.rule_id = change_rate_limit.rule_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rate limit % does not exist', change_rate_limit.rule_id
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM mail.check_rate_limit_values(r.metric, coalesce(change_rate_limit.max, r.max),
                                         coalesce(change_rate_limit.per, r.per),
                                         coalesce(change_rate_limit.action, r.action));
    SELECT x.rule_id INTO v_id
      FROM mail.rate_limits x
     WHERE x.key = r.key AND coalesce(x.match, '') = coalesce(r.match, '') AND x.metric = r.metric
       AND x.per = coalesce(change_rate_limit.per, r.per)
       AND x.action = coalesce(change_rate_limit.action, r.action)
       AND x.rule_id <> r.rule_id;
    IF FOUND THEN
        RAISE EXCEPTION 'rate limit % already counts % of % % per % (action %)', v_id,
                r.metric, r.key, coalesce(r.match, '(each value)'),
                coalesce(change_rate_limit.per, r.per), coalesce(change_rate_limit.action, r.action)
            USING ERRCODE = 'unique_violation';
    END IF;
    UPDATE mail.rate_limits x
       SET max = coalesce(change_rate_limit.max, x.max), per = coalesce(change_rate_limit.per, x.per),
           action = coalesce(change_rate_limit.action, x.action), updated_at = now()
     WHERE x.rule_id = r.rule_id;
    IF change_rate_limit.per IS NOT NULL AND change_rate_limit.per <> r.per THEN
        -- Running windows keep their start and get the new length.
        PERFORM mail.lock_rate_counters(r.rule_id);
        UPDATE mail.rate_limit_counters c
           SET expires_at = c.window_start + change_rate_limit.per
         WHERE c.rule_id = r.rule_id;
    END IF;
END
$$;
COMMENT ON FUNCTION mail.change_rate_limit(bigint, bigint, interval, text) IS
    'Changes a rate limit''s budget (max, per) and action; NULL keeps a value. A running window keeps its start and count and gets the new length. Raises 22023 (malformed value), P0002 (unknown rule), 23505 (another rule would then be the same).';

CREATE FUNCTION mail.remove_rate_limit(rule_id bigint) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
BEGIN
    DELETE FROM mail.rate_limits r WHERE r.rule_id = remove_rate_limit.rule_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rate limit % does not exist', coalesce(remove_rate_limit.rule_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM mail.lock_rate_counters(remove_rate_limit.rule_id);
    DELETE FROM mail.rate_limit_counters c WHERE c.rule_id = remove_rate_limit.rule_id;
END
$$;
COMMENT ON FUNCTION mail.remove_rate_limit(bigint) IS
    'Removes a rate limit and its counters. Raises P0002 (unknown rule).';

CREATE FUNCTION mail.rate_limit_usage(key text DEFAULT NULL, value text DEFAULT NULL)
    RETURNS TABLE (rule_id bigint, rule_key text, rule_match text, counter_value text, metric text,
                   used bigint, max bigint, per interval, action text, window_start timestamptz,
                   window_end timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_value text;
    v_ip    inet;
BEGIN
    IF rate_limit_usage.key IS NOT NULL THEN
        PERFORM mail.check_rate_limit_key(rate_limit_usage.key);
    END IF;
    IF rate_limit_usage.value IS NOT NULL THEN
        v_value := lower(btrim(rate_limit_usage.value, E' \t\r\n<>'));
        v_ip := CASE WHEN mail.rate_limit_match_normal('client_ip', v_value) IS NOT NULL
                     THEN mail.rate_limit_match_normal('client_ip', v_value)::inet END;
        IF rate_limit_usage.key IN ('client_ip', 'client_net') AND v_ip IS NULL THEN
            RAISE EXCEPTION 'invalid value % for key %: expected an IP address or a network',
                    quote_literal(rate_limit_usage.value), rate_limit_usage.key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN QUERY
        SELECT c.rule_id, r.key, r.match, c.value::text, r.metric, c.used, r.max, r.per, r.action,
               c.window_start, c.expires_at
          FROM mail.rate_limit_counters c
          JOIN mail.rate_limits r ON r.rule_id = c.rule_id
         WHERE c.expires_at > now()
           AND (rate_limit_usage.key IS NULL OR r.key = rate_limit_usage.key)
           AND (v_value IS NULL
                OR CASE WHEN r.key IN ('client_ip', 'client_net')
                        THEN v_ip IS NOT NULL AND c.value::inet && v_ip
                        ELSE c.value = v_value END)
         ORDER BY c.rule_id, c.value;
END
$$;
COMMENT ON FUNCTION mail.rate_limit_usage(text, text) IS
    'The live rate-limit counters (windows not yet ended), of one key and/or one value (any case; for client_ip and client_net an address or network, matching the counters it overlaps): rule_id, rule_key, rule_match, counter_value (the match, or the value counted for a rule without one), metric, used of max per interval, action, window_start, window_end. Raises 22023 (unknown key, a value that is not an IP address for an IP key).';

CREATE FUNCTION mail.reset_rate_limit_usage(rule_id bigint, value text DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    r       mail.rate_limits;
    v_value text;
    v_ip    inet;
    v_count bigint;
BEGIN
    SELECT * INTO r FROM mail.rate_limits x WHERE x.rule_id = reset_rate_limit_usage.rule_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rate limit % does not exist', coalesce(reset_rate_limit_usage.rule_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    IF reset_rate_limit_usage.value IS NOT NULL THEN
        v_value := lower(btrim(reset_rate_limit_usage.value, E' \t\r\n<>'));
        IF r.key IN ('client_ip', 'client_net') THEN
            v_ip := mail.rate_limit_match_normal('client_ip', v_value)::inet;
            IF v_ip IS NULL THEN
                RAISE EXCEPTION 'invalid value % for key %: expected an IP address or a network',
                        quote_literal(reset_rate_limit_usage.value), r.key
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END IF;
    END IF;
    PERFORM mail.lock_rate_counters(r.rule_id);
    DELETE FROM mail.rate_limit_counters c
     WHERE c.rule_id = r.rule_id
       AND (v_value IS NULL
            OR CASE WHEN v_ip IS NOT NULL THEN c.value::inet && v_ip ELSE c.value = v_value END);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION mail.reset_rate_limit_usage(bigint, text) IS
    'Forgets what a rate limit has counted: every counter of the rule, or the one(s) of a value (for client_ip and client_net, those overlapping an address or network); returns how many counters were deleted (0 when none was live). Raises P0002 (unknown rule), 22023 (a value that is not an IP address for an IP key).';

CREATE FUNCTION mail.add_rate_limit_exemption(value text, note text DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    x    record := mail.normalise_exemption(add_rate_limit_exemption.value);
    v_id bigint;
BEGIN
    IF EXISTS (SELECT FROM mail.rate_limit_exemptions e WHERE e.value = x.normal) THEN
        RAISE EXCEPTION '% is already exempt from rate limits', quote_literal(x.normal)
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO mail.rate_limit_exemptions (kind, value, net, note)
    VALUES (x.kind, x.normal, CASE WHEN x.kind = 'network' THEN x.normal::cidr END,
            add_rate_limit_exemption.note)
    RETURNING exemption_id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION mail.add_rate_limit_exemption(text, text) IS
    'Exempts an address, a domain, an IP address or a network from every rate limit of the keys it is a value of, and returns the exemption''s id: an address for sasl_user and sender, a domain for sender_domain and recipient_domain and for the addresses in it, an address or network for client_ip and client_net of the clients inside it. Raises 22023 (malformed value), 23505 (already exempt).';

CREATE FUNCTION mail.remove_rate_limit_exemption(value text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    x record := mail.normalise_exemption(remove_rate_limit_exemption.value);
BEGIN
    DELETE FROM mail.rate_limit_exemptions e WHERE e.value = x.normal;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not exempt from rate limits', quote_literal(x.normal)
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.remove_rate_limit_exemption(text) IS
    'Removes an exemption, given as it was added (any case). Raises 22023 (malformed value), P0002 (not exempt).';

CREATE FUNCTION mail.list_rate_limit_exemptions()
    RETURNS TABLE (exemption_id bigint, kind text, value text, note text, created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT e.exemption_id, e.kind, e.value, e.note, e.created_at
      FROM mail.rate_limit_exemptions e
     ORDER BY e.kind, e.value
$$;
COMMENT ON FUNCTION mail.list_rate_limit_exemptions() IS
    'Lists the rate-limit exemptions: kind (address, domain, network), value, note.';

-- ---------------------------------------------------------------- admin: abuse and suspensions

CREATE FUNCTION mail.set_abuse_policy(max_events integer, "window" interval) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
    SET intervalstyle = 'postgres'
AS $$
BEGIN
    IF set_abuse_policy.max_events IS NULL OR set_abuse_policy.max_events < 1 THEN
        RAISE EXCEPTION 'invalid max_events %: must be at least 1',
                coalesce(set_abuse_policy.max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF set_abuse_policy."window" IS NULL
       OR set_abuse_policy."window" NOT BETWEEN interval '1 second' AND interval '366 days' THEN
        RAISE EXCEPTION 'invalid window %: must be between 1 second and 366 days',
                coalesce(quote_literal(set_abuse_policy."window"::text), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE mail.policy_settings s
       SET abuse_max_events = set_abuse_policy.max_events,
           abuse_window = set_abuse_policy."window", updated_at = now();
END
$$;
COMMENT ON FUNCTION mail.set_abuse_policy(integer, interval) IS
    'Sets the abuse policy: a user whose outgoing messages are refused max_events times (spam, virus, rate limits) within window is suspended from sending (default 5 within 1 hour). Raises 22023 (max_events below 1, window outside 1 second to 366 days).';

CREATE FUNCTION mail.suspend_sender(address text, reason text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(suspend_sender.address);
    v_user_id bigint;
BEGIN
    IF suspend_sender.reason IS NULL OR btrim(suspend_sender.reason) = '' THEN
        RAISE EXCEPTION 'a reason is needed to suspend %', quote_literal(v_address)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_user_id := mail.user_id_of(v_address);
    INSERT INTO mail.sender_suspensions (user_id, reason, suspended_by)
    VALUES (v_user_id, btrim(suspend_sender.reason), 'admin')
    ON CONFLICT (user_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is already suspended', quote_literal(v_address)
            USING ERRCODE = 'unique_violation',
                  HINT = 'Lift the suspension first to change its reason.';
    END IF;
END
$$;
COMMENT ON FUNCTION mail.suspend_sender(text, text) IS
    'Suspends a user from sending (refused at MAIL FROM with 5.7.1) until lift_suspension. Raises 22023 (malformed address, empty reason), P0002 (unknown user), 23505 (already suspended).';

CREATE FUNCTION mail.lift_suspension(address text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
DECLARE
    v_address text := mail.normalise_address(lift_suspension.address);
    v_user_id bigint;
BEGIN
    v_user_id := mail.user_id_of(v_address);
    DELETE FROM mail.sender_suspensions s WHERE s.user_id = v_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is not suspended', quote_literal(v_address)
            USING ERRCODE = 'no_data_found';
    END IF;
    -- A fresh start: the events that led here would suspend again at once.
    DELETE FROM mail.abuse_events a WHERE a.user_id = v_user_id;
END
$$;
COMMENT ON FUNCTION mail.lift_suspension(text) IS
    'Lets a suspended user send again and forgets the user''s abuse events. Raises 22023 (malformed address), P0002 (unknown user, or not suspended).';

CREATE FUNCTION mail.list_suspensions()
    RETURNS TABLE (address text, reason text, suspended_at timestamptz, events integer,
                   suspended_by text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = mail, pg_temp
AS $$
    SELECT u.address, s.reason, s.suspended_at, s.events, s.suspended_by
      FROM mail.sender_suspensions s JOIN mail.users u ON u.user_id = s.user_id
     ORDER BY s.suspended_at, u.address
$$;
COMMENT ON FUNCTION mail.list_suspensions() IS
    'Lists the users suspended from sending: address, reason, when, the abuse events counted (0 for an admin''s suspension), and by whom (abuse or admin).';

-- ---------------------------------------------------------------- privileges

REVOKE ALL ON FUNCTION
    mail.rate_limit_match_normal(text, text), mail.apply_abuse_policy(bigint[]),
    mail.policy_target(text), mail.check_rate_limit_key(text),
    mail.normalise_rate_limit_match(text, text),
    mail.check_rate_limit_values(text, bigint, interval, text),
    mail.normalise_exemption(text), mail.check_spam_thresholds(numeric, numeric),
    mail.lock_rate_counters(bigint), mail.rate_limit_description(bigint, text),
    mail.policy_snapshot(), mail.policy_check(jsonb), mail.record_verdicts(jsonb),
    mail.expire_rate_counters(),
    mail.set_limits(text, bigint, integer), mail.clear_limits(text), mail.list_limits(),
    mail.set_spam_thresholds(text, numeric, numeric), mail.clear_spam_thresholds(text),
    mail.list_spam_thresholds(),
    mail.add_rate_limit(text, text, text, bigint, interval, text), mail.list_rate_limits(),
    mail.change_rate_limit(bigint, bigint, interval, text), mail.remove_rate_limit(bigint),
    mail.rate_limit_usage(text, text), mail.reset_rate_limit_usage(bigint, text),
    mail.add_rate_limit_exemption(text, text), mail.remove_rate_limit_exemption(text),
    mail.list_rate_limit_exemptions(),
    mail.set_abuse_policy(integer, interval), mail.suspend_sender(text, text),
    mail.lift_suspension(text), mail.list_suspensions()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    mail.policy_snapshot(), mail.policy_check(jsonb), mail.record_verdicts(jsonb),
    mail.expire_rate_counters()
    TO mailmeta_milter;
GRANT EXECUTE ON FUNCTION
    mail.policy_snapshot(), mail.expire_rate_counters(),
    mail.set_limits(text, bigint, integer), mail.clear_limits(text), mail.list_limits(),
    mail.set_spam_thresholds(text, numeric, numeric), mail.clear_spam_thresholds(text),
    mail.list_spam_thresholds(),
    mail.add_rate_limit(text, text, text, bigint, interval, text), mail.list_rate_limits(),
    mail.change_rate_limit(bigint, bigint, interval, text), mail.remove_rate_limit(bigint),
    mail.rate_limit_usage(text, text), mail.reset_rate_limit_usage(bigint, text),
    mail.add_rate_limit_exemption(text, text), mail.remove_rate_limit_exemption(text),
    mail.list_rate_limit_exemptions(),
    mail.set_abuse_policy(integer, interval), mail.suspend_sender(text, text),
    mail.lift_suspension(text), mail.list_suspensions()
    TO mailmeta_admin;
