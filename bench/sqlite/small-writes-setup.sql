PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
CREATE TABLE mx_membership (room_id TEXT NOT NULL, user_id TEXT NOT NULL, membership TEXT NOT NULL, displayname TEXT, avatar_url TEXT, PRIMARY KEY (room_id, user_id));
CREATE INDEX mx_membership_user ON mx_membership (user_id);
CREATE TABLE mx_room_progress (room_id TEXT PRIMARY KEY, batch_seq BIGINT NOT NULL, idx INTEGER NOT NULL);
