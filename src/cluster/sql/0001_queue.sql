-- Nodes and the queue: messages, their recipients' states and their content.

CREATE TABLE nodes (
    name text PRIMARY KEY,
    -- The process now running as `name`: leases name it.
    instance text NOT NULL,
    version text NOT NULL,
    config_hash text NOT NULL,
    started timestamptz NOT NULL,
    heartbeat timestamptz NOT NULL,
    -- Set at a graceful stop; a node is live while this is null and its heartbeat recent.
    stopped timestamptz,
    -- `tern cluster drain`: claims no new work.
    draining boolean NOT NULL DEFAULT false,
    -- Load as of the last heartbeat.
    in_flight integer NOT NULL DEFAULT 0,
    -- Acceptance commits, for commits per message.
    stored_messages bigint NOT NULL DEFAULT 0,
    store_commits bigint NOT NULL DEFAULT 0
);

CREATE TABLE messages (
    id text PRIMARY KEY,
    -- The envelope as accepted (JSON); recipients' states live in `recipients`.
    envelope text NOT NULL,
    size bigint NOT NULL,
    accepted_by text NOT NULL,
    accepted timestamptz NOT NULL DEFAULT now(),
    -- Unix seconds when the next recipient is due; null: nothing left to try.
    due bigint,
    held boolean NOT NULL DEFAULT false,
    -- The node and process attempting it, until `lease_until` (database clock).
    owner text,
    instance text,
    lease_until timestamptz
);
CREATE INDEX messages_due ON messages (due);
CREATE INDEX messages_instance ON messages (instance);

CREATE TABLE recipients (
    message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    -- The recipient's state (JSON), the last one recorded.
    state text NOT NULL,
    -- Unix seconds of the next try; 0 for a new recipient; null once final.
    next_attempt bigint,
    PRIMARY KEY (message_id, idx)
);

CREATE TABLE contents (
    message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);
