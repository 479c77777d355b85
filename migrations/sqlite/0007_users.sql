-- The bridge's users and their logins to the remote network. Permission levels are not
-- stored: they come from the config's `permissions:` each time they are needed.

-- A Matrix user of the bridge: their management room (the DM with the bot) and, later, a
-- token for double puppeting.
CREATE TABLE mx_user (
    user_id TEXT PRIMARY KEY,
    management_room TEXT,
    double_puppet_token TEXT,
    created_at BIGINT NOT NULL
);

-- A login: one account of one Matrix user on the remote network (the account's ID is unique
-- on the network). `metadata` is the bridge's JSON.
CREATE TABLE mx_user_login (
    login_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES mx_user (user_id) ON DELETE CASCADE,
    remote_name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    state_reason TEXT,
    metadata TEXT NOT NULL DEFAULT 'null',
    created_at BIGINT NOT NULL
);
CREATE INDEX mx_user_login_user ON mx_user_login (user_id);

-- Which logins are in which portal (the remote chat's members among our logins).
CREATE TABLE mx_user_portal (
    login_id TEXT NOT NULL REFERENCES mx_user_login (login_id) ON DELETE CASCADE,
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (login_id, chat, receiver)
);
CREATE INDEX mx_user_portal_portal ON mx_user_portal (chat, receiver);

-- A portal's relay: the login that sends for room members who have none of their own.
CREATE TABLE mx_portal_relay (
    chat TEXT NOT NULL,
    receiver TEXT NOT NULL DEFAULT '',
    login_id TEXT NOT NULL REFERENCES mx_user_login (login_id) ON DELETE CASCADE,
    PRIMARY KEY (chat, receiver)
);
CREATE INDEX mx_portal_relay_login ON mx_portal_relay (login_id);
