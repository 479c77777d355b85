-- A queued remote message's ID in a column of its own, so that whether the message has a
-- mapping already is known from the row without reading its JSON. NULL for other events; rows
-- queued before this column stay NULL, and the pipeline looks their mapping up when it
-- handles them.
ALTER TABLE mx_remote_queue ADD COLUMN message_id TEXT;

-- The queue is read in seq order from a position (its primary key) and parked rows are few:
-- an index of (parked, seq) only cost every queued and bridged event two more writes.
DROP INDEX mx_remote_queue_pending;
