-- The remote → Matrix pipeline: every remote event the bridge queued, kept until its portal's
-- worker has bridged it (then deleted), retried, or parked after too many failures.
CREATE TABLE mx_remote_queue (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    parked BOOLEAN NOT NULL DEFAULT FALSE,
    queued_at BIGINT NOT NULL
);
CREATE INDEX mx_remote_queue_pending ON mx_remote_queue (parked, seq);

-- A remote reaction and the Matrix event that shows it, so its removal finds what to redact.
CREATE TABLE mx_reaction (
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    reaction_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (chat, receiver, message_id, sender, reaction_key)
);
