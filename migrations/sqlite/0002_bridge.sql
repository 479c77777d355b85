-- The bridge's own mappings. Remote IDs are opaque strings chosen by the bridge.

-- A portal: one remote chat and the Matrix room that mirrors it.
CREATE TABLE mx_portal (
    remote_id TEXT PRIMARY KEY,
    room_id TEXT UNIQUE,
    name TEXT,
    topic TEXT,
    avatar_url TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL
);

-- A ghost: one remote user and the Matrix user that speaks for them, with the profile last set.
CREATE TABLE mx_ghost (
    remote_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE,
    displayname TEXT,
    avatar_url TEXT,
    metadata TEXT
);

-- A message: one part of a remote message and the Matrix event that carries it.
CREATE TABLE mx_message (
    portal_id TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    part TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    timestamp BIGINT NOT NULL,
    PRIMARY KEY (portal_id, remote_id, part)
);

-- Small bridge-owned records (settings, hooks, tokens), as JSON under a namespace and key.
CREATE TABLE mx_kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, key)
);
