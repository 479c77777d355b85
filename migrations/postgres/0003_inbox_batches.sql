-- The inbox, reworked for fewer writes per event.
--
-- A stored transaction's new events are kept as one JSON array per batch (a transaction is cut
-- into batches of bounded size) instead of one row per event: one row written per batch at
-- intake, and the row deleted once every event in it is handled.
CREATE TABLE mx_inbox_batch (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txn_id TEXT NOT NULL,
    events TEXT NOT NULL,
    n_events INTEGER NOT NULL,
    received_at BIGINT NOT NULL
);

-- Every event ID stored, for deduplication across transactions (a homeserver's retry after its
-- own restart carries the same events without the ephemeral data). Pruned by age.
CREATE TABLE mx_event_seen (
    event_id TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);

-- How far each room's events are handled: the position (batch, index in the batch) of the last
-- handled event. Events of a room are handled in order, so this one row replaces a done mark per
-- event.
CREATE TABLE mx_room_progress (
    room_id TEXT PRIMARY KEY,
    batch_seq BIGINT NOT NULL,
    idx INTEGER NOT NULL
);

-- Failed attempts of events still being retried.
CREATE TABLE mx_event_attempts (
    event_id TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL,
    last_error TEXT
);

-- Events whose handler failed for good, kept with their JSON. `requeued` puts one back in line.
CREATE TABLE mx_parked (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    event_json TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    parked_at BIGINT NOT NULL,
    requeued BOOLEAN NOT NULL DEFAULT FALSE
);

-- Carry over what the per-event inbox held: pending events (one batch each, in order), parked
-- events, and every event ID as a dedup record.
INSERT INTO mx_inbox_batch (txn_id, events, n_events, received_at)
    SELECT txn_id, '[' || event_json || ']', 1, received_at FROM mx_inbox
    WHERE status = 0 AND event_json IS NOT NULL ORDER BY seq;
INSERT INTO mx_parked (event_id, room_id, event_json, attempts, last_error, parked_at)
    SELECT event_id, room_id, COALESCE(event_json, '{}'), attempts, last_error,
           COALESCE(done_at, received_at)
    FROM mx_inbox WHERE status = 2 ORDER BY seq;
INSERT INTO mx_event_attempts (event_id, attempts, last_error)
    SELECT event_id, attempts, last_error FROM mx_inbox WHERE status = 0 AND attempts > 0;
INSERT INTO mx_event_seen (event_id, seen_at)
    SELECT event_id, received_at FROM mx_inbox;
DROP TABLE mx_inbox;
