-- The end-to-bridge encryption store (the `encryption` feature): what matrix-sdk-crypto's
-- machine keeps for the bridge device. Values are the library's own serialized forms (JSON),
-- keyed by what the machine looks them up by. Created whether or not the feature is built, so
-- the schema's version means the same in every build.

-- Single values: the Olm account, the cross-signing identity, backup keys, the next batch
-- token, and the machine's custom values (each under a name of its own).
CREATE TABLE mx_crypto_value (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Olm sessions, by the other device's Curve25519 key.
CREATE TABLE mx_crypto_olm_session (
    sender_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (sender_key, session_id)
);

-- Hashes of Olm messages already decrypted (replay protection).
CREATE TABLE mx_crypto_olm_hash (
    sender_key TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (sender_key, hash)
);

-- Megolm sessions received (room keys). `sender_key` and `sender_data_type` are the columns
-- the machine searches by; `backed_up_to` the key backup version that holds the session.
CREATE TABLE mx_crypto_inbound_session (
    room_id TEXT NOT NULL,
    -- Compared bytewise, as on SQLite: the machine pages through sessions in this order.
    session_id TEXT COLLATE "C" NOT NULL,
    sender_key TEXT NOT NULL,
    sender_data_type BIGINT NOT NULL,
    backed_up_to TEXT,
    value BYTEA NOT NULL,
    PRIMARY KEY (room_id, session_id)
);
CREATE INDEX mx_crypto_inbound_session_sender
    ON mx_crypto_inbound_session (sender_key, sender_data_type, session_id);

-- Our Megolm session for sending in a room.
CREATE TABLE mx_crypto_outbound_session (
    room_id TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Other users' devices and cross-signing identities, and whose device lists we track.
CREATE TABLE mx_crypto_device (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE mx_crypto_identity (
    user_id TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE mx_crypto_tracked_user (
    user_id TEXT PRIMARY KEY,
    dirty BIGINT NOT NULL
);

-- Outgoing key and secret requests, one per requested thing (`info`).
CREATE TABLE mx_crypto_secret_request (
    request_id TEXT PRIMARY KEY,
    info TEXT NOT NULL UNIQUE,
    sent_out BIGINT NOT NULL,
    value BYTEA NOT NULL
);

-- Secrets received and not yet taken out, in arrival order.
CREATE TABLE mx_crypto_secret_inbox (
    id BIGSERIAL PRIMARY KEY,
    secret_name TEXT NOT NULL,
    value BYTEA NOT NULL
);
CREATE INDEX mx_crypto_secret_inbox_name ON mx_crypto_secret_inbox (secret_name);

-- Room keys withheld from us, per room and session.
CREATE TABLE mx_crypto_withheld (
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (room_id, session_id)
);

-- Per-room encryption settings.
CREATE TABLE mx_crypto_room_settings (
    room_id TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Room key history bundles received, rooms whose keys were all downloaded from the backup,
-- and rooms waiting for a bundle after an accepted invite.
CREATE TABLE mx_crypto_key_bundle (
    room_id TEXT NOT NULL,
    sender_user TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (room_id, sender_user)
);
CREATE TABLE mx_crypto_keys_downloaded (
    room_id TEXT PRIMARY KEY
);
CREATE TABLE mx_crypto_pending_bundle (
    room_id TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Leases of the machine's cross-process locks.
CREATE TABLE mx_crypto_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    generation BIGINT NOT NULL
);
