-- A portal is named by its remote chat and, for chats seen through one login only (DMs), the
-- receiving login ('' for chats shared by everyone). Messages name their portal the same way,
-- and one Matrix event may map to several remote messages (a long text cut into lines).
-- Matrix events whose remote ID is not known yet (the network's echo brings it) wait in
-- mx_pending_message.

CREATE TABLE mx_portal_new (
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    room_id TEXT UNIQUE,
    name TEXT,
    topic TEXT,
    avatar_url TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (chat, receiver)
);
INSERT INTO mx_portal_new (chat, receiver, room_id, name, topic, avatar_url, metadata, created_at)
    SELECT remote_id, '', room_id, name, topic, avatar_url, metadata, created_at FROM mx_portal;
DROP TABLE mx_portal;
ALTER TABLE mx_portal_new RENAME TO mx_portal;

CREATE TABLE mx_message_new (
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    remote_id TEXT NOT NULL,
    part TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    timestamp BIGINT NOT NULL,
    PRIMARY KEY (chat, receiver, remote_id, part)
);
INSERT INTO mx_message_new (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp)
    SELECT portal_id, '', remote_id, part, event_id, room_id, sender, timestamp FROM mx_message;
DROP TABLE mx_message;
ALTER TABLE mx_message_new RENAME TO mx_message;
CREATE INDEX mx_message_event ON mx_message (event_id);

CREATE TABLE mx_pending_message (
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (chat, receiver, txn_id)
);
