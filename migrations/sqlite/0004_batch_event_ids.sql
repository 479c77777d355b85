-- Event dedup without one random index insert per event at intake.
--
-- Each batch row now carries the IDs of its events as a JSON array. While a batch is stored, the
-- process finds its IDs through an index in memory built from this column; when a handled batch
-- is deleted, its IDs go to mx_event_seen in one sorted insert, so the random-keyed index takes
-- many IDs per commit instead of a transaction's worth.
ALTER TABLE mx_inbox_batch ADD COLUMN event_ids TEXT NOT NULL DEFAULT '[]';
UPDATE mx_inbox_batch SET event_ids = (
    SELECT json_group_array(json_extract(e.value, '$.event_id')) FROM json_each(events) e
    WHERE json_extract(e.value, '$.event_id') IS NOT NULL
);
