-- Failed logins, so the login limits (SPEC §7, issue 6) hold across every
-- worker: a few failures per account, more per address, within a window.
-- UNLOGGED: a crash forgets them, which only lifts the limits early; they are
-- not worth a WAL write. email_key is a SHA-256 of the lowercased email, so a
-- password typed into the email field is never kept in the clear.
CREATE UNLOGGED TABLE login_failures (
    id        bigserial PRIMARY KEY,
    email_key bytea NOT NULL,
    address   text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_email ON login_failures (email_key, failed_at);
CREATE INDEX login_failures_address ON login_failures (address, failed_at);
CREATE INDEX login_failures_age ON login_failures (failed_at);
