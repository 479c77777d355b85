PRAGMA journal_mode=WAL;
CREATE TABLE mx_event_seen (event_id TEXT PRIMARY KEY, seen_at BIGINT NOT NULL) WITHOUT ROWID;
CREATE TABLE mx_inbox_batch (seq INTEGER PRIMARY KEY AUTOINCREMENT, txn_id TEXT NOT NULL, events TEXT NOT NULL, n_events INTEGER NOT NULL, received_at BIGINT NOT NULL, event_ids TEXT NOT NULL DEFAULT '[]');
WITH RECURSIVE b(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM b WHERE i < 512)
INSERT INTO mx_inbox_batch (txn_id, events, n_events, received_at, event_ids)
SELECT 't'||i, '[]', 100, 0, (WITH RECURSIVE e(j) AS (SELECT 1 UNION ALL SELECT j+1 FROM e WHERE j<100) SELECT json_group_array('$'||substr(lower(hex(randomblob(32))),1,43)) FROM e) FROM b;
