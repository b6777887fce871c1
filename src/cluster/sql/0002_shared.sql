-- State the nodes share besides the queue: greylisting, rates, AUTH failures and
-- bans, users, the message trace and the MTA-STS policy cache. Times are the
-- database's clock (`now()`), so that nodes with skewed clocks agree.

CREATE TABLE greylist (
    -- SHA-256 of (client network, sender, recipient).
    key bytea PRIMARY KEY,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    passed boolean NOT NULL
);
CREATE INDEX greylist_last_seen ON greylist (last_seen);

CREATE TABLE rates (
    -- `ip:<address>` or `user:<name>`.
    key text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    messages integer NOT NULL,
    recipients integer NOT NULL
);
CREATE INDEX rates_window_start ON rates (window_start);

CREATE TABLE auth_failures (
    ip text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures integer NOT NULL,
    banned_until timestamptz
);

CREATE TABLE users (
    address text PRIMARY KEY,
    -- argon2id, as a PHC string.
    hash text NOT NULL,
    changed timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Bumped by every change of `users`, so that nodes notice deletions too.
CREATE TABLE users_version (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO users_version (version) VALUES (0);

CREATE TABLE trace (
    seq bigserial PRIMARY KEY,
    message_id text NOT NULL,
    -- Unix milliseconds, by the clock of the node that wrote it.
    at bigint NOT NULL,
    node text NOT NULL,
    -- The event as JSON (the file trace's form).
    event text NOT NULL
);
CREATE INDEX trace_message ON trace (message_id, at);
CREATE INDEX trace_at ON trace (at);

CREATE TABLE mta_sts (
    domain text PRIMARY KEY,
    -- The cache entry as JSON (the file cache's form).
    entry text NOT NULL
);
