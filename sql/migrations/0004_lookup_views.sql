-- 0004_lookup_views.sql — the read-only views Postfix and Dovecot query.
--
-- Postfix and Dovecot never see the tables: each reads a view shaped for one
-- lookup, through its own role, so Postfix cannot read password hashes and
-- neither can change anything. Keys are the stored normalised (lowercase)
-- addresses, matching Postfix's %s and Dovecot's %Lu; every lookup by key is
-- answered from a unique index (domains.domain, users.address,
-- aliases.address) and the alias_destinations primary key.
--
-- Example queries:
--   virtual_mailbox_domains: SELECT domain FROM mail.postfix_domains WHERE domain = '%s'
--   virtual_mailbox_maps:    SELECT address FROM mail.postfix_mailboxes WHERE address = '%s'
--   virtual_alias_maps:      SELECT destination FROM mail.postfix_aliases WHERE address = '%s'
--   smtpd_sender_login_maps: SELECT login FROM mail.postfix_sender_logins WHERE address = '%s'
--   passdb: SELECT username AS user, password FROM mail.dovecot_passdb WHERE username = '%Lu'
--   userdb: SELECT quota_rule FROM mail.dovecot_userdb WHERE username = '%Lu'

SET LOCAL ROLE mailmeta_owner;

CREATE VIEW mail.postfix_domains AS
    SELECT d.domain
      FROM mail.domains d;
COMMENT ON VIEW mail.postfix_domains IS
    'Postfix virtual_mailbox_domains: every domain this service receives mail for.';

CREATE VIEW mail.postfix_mailboxes AS
    SELECT u.address
      FROM mail.users u;
COMMENT ON VIEW mail.postfix_mailboxes IS
    'Postfix virtual_mailbox_maps: every user, disabled ones included (they still receive mail).';

CREATE VIEW mail.postfix_aliases AS
    SELECT a.address, ad.destination
      FROM mail.aliases a
      JOIN mail.alias_destinations ad ON ad.alias_id = a.alias_id
    UNION ALL
    SELECT u.address, u.address
      FROM mail.users u;
COMMENT ON VIEW mail.postfix_aliases IS
    'Postfix virtual_alias_maps, one row per destination: alias destinations, plus every user mapped to itself so that a catch-all (@domain) does not capture mail for real users.';

CREATE VIEW mail.postfix_sender_logins AS
    SELECT u.address, u.address AS login
      FROM mail.users u
    UNION ALL
    SELECT a.address, u.address
      FROM mail.aliases a
      JOIN mail.alias_destinations ad ON ad.alias_id = a.alias_id
      JOIN mail.users u ON u.address = ad.destination
     WHERE a.address NOT LIKE '@%';
COMMENT ON VIEW mail.postfix_sender_logins IS
    'Postfix smtpd_sender_login_maps: the logins allowed to send as an address — a user as itself, and an alias as each local user it delivers to directly. Catch-all aliases grant no sender rights.';

CREATE VIEW mail.dovecot_passdb AS
    SELECT u.address AS username, u.password_hash AS password
      FROM mail.users u
     WHERE u.enabled;
COMMENT ON VIEW mail.dovecot_passdb IS
    'Dovecot passdb: enabled users and their {BLF-CRYPT} password hashes.';

CREATE VIEW mail.dovecot_userdb AS
    SELECT u.address AS username,
           CASE WHEN u.quota_bytes > 0 THEN '*:bytes=' || u.quota_bytes END AS quota_rule
      FROM mail.users u;
COMMENT ON VIEW mail.dovecot_userdb IS
    'Dovecot userdb: every user (LMTP delivers to disabled users too); quota_rule is "*:bytes=N", or NULL for unlimited.';

REVOKE ALL ON mail.postfix_domains, mail.postfix_mailboxes, mail.postfix_aliases,
              mail.postfix_sender_logins, mail.dovecot_passdb, mail.dovecot_userdb
    FROM PUBLIC;
GRANT SELECT ON mail.postfix_domains, mail.postfix_mailboxes, mail.postfix_aliases,
                mail.postfix_sender_logins
    TO mailmeta_postfix;
GRANT SELECT ON mail.dovecot_passdb, mail.dovecot_userdb TO mailmeta_dovecot;
GRANT SELECT ON mail.postfix_domains, mail.postfix_mailboxes, mail.postfix_aliases,
                mail.postfix_sender_logins, mail.dovecot_passdb, mail.dovecot_userdb
    TO mailmeta_admin;
