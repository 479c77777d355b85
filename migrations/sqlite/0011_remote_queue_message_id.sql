-- A queued remote message's ID in a column of its own, so that whether the message has a
-- mapping already is known from the row without reading its JSON. NULL for other events (and
-- for a row whose event is not JSON); the pipeline then looks the mapping up when it handles it.
ALTER TABLE mx_remote_queue ADD COLUMN message_id TEXT;
UPDATE mx_remote_queue SET message_id = json_extract(event, '$.message.id') WHERE json_valid(event);

-- The queue is read in seq order from a position (its primary key) and parked rows are few:
-- an index of (parked, seq) only cost every queued and bridged event two more writes.
DROP INDEX mx_remote_queue_pending;
