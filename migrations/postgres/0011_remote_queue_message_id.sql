-- A queued remote message's ID in a column of its own, so that whether the message has a
-- mapping already is known from the row without reading its JSON. NULL for other events; rows
-- queued before this column stay NULL, and the pipeline looks their mapping up when it
-- handles them.
ALTER TABLE mx_remote_queue ADD COLUMN message_id TEXT;
