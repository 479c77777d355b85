-- A portal is named by its remote chat and, for chats seen through one login only (DMs), the
-- receiving login ('' for chats shared by everyone). Messages name their portal the same way,
-- and one Matrix event may map to several remote messages (a long text cut into lines).
-- Matrix events whose remote ID is not known yet (the network's echo brings it) wait in
-- mx_pending_message.

ALTER TABLE mx_portal RENAME COLUMN remote_id TO chat;
ALTER TABLE mx_portal ADD COLUMN receiver TEXT NOT NULL DEFAULT '';
ALTER TABLE mx_portal DROP CONSTRAINT mx_portal_pkey;
ALTER TABLE mx_portal ADD PRIMARY KEY (chat, receiver);

ALTER TABLE mx_message RENAME COLUMN portal_id TO chat;
ALTER TABLE mx_message ADD COLUMN receiver TEXT NOT NULL DEFAULT '';
ALTER TABLE mx_message DROP CONSTRAINT mx_message_pkey;
ALTER TABLE mx_message ADD PRIMARY KEY (chat, receiver, remote_id, part);
ALTER TABLE mx_message DROP CONSTRAINT mx_message_event_id_key;
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
