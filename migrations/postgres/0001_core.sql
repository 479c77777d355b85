-- Transactions seen from the homeserver, for deduplication. The key is the txn ID and a hash of
-- what the transaction carried (event IDs and ephemeral data), because Synapse on SQLite reuses
-- txn IDs after its own restart.
CREATE TABLE mx_txn (
    txn_id TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (txn_id, body_hash)
);
CREATE INDEX mx_txn_received ON mx_txn (received_at);

-- The durable inbox: every event is committed here before the homeserver gets its 200.
-- status: 0 pending, 1 done, 2 parked (failed for good). event_json is dropped once done; the
-- row stays as the event-ID dedup record until pruned.
CREATE TABLE mx_inbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_json TEXT,
    status INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    received_at BIGINT NOT NULL,
    done_at BIGINT
);
CREATE INDEX mx_inbox_pending ON mx_inbox (seq) WHERE status = 0;
CREATE INDEX mx_inbox_done ON mx_inbox (done_at) WHERE status = 1;

-- State cache: membership per room and user, with the per-room profile.
CREATE TABLE mx_membership (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX mx_membership_user ON mx_membership (user_id);

-- State cache: one row per room with the state events a bridge consults most.
CREATE TABLE mx_room_state (
    room_id TEXT PRIMARY KEY,
    power_levels TEXT,
    create_event TEXT,
    join_rules TEXT,
    encryption TEXT,
    members_fetched BOOLEAN NOT NULL DEFAULT FALSE
);

-- Ghosts (and the bot) known to be registered on the homeserver.
CREATE TABLE mx_registered (
    user_id TEXT PRIMARY KEY,
    registered_at BIGINT NOT NULL
);
