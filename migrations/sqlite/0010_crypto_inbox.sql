-- What transactions pushed for the bridge device (to-device messages, device-list changes, key
-- counts), committed before the transaction is answered and handed to the crypto machine in
-- order; a row is deleted once the machine took it. `txn_id` keeps a transaction the homeserver
-- sends again from being stored twice.
CREATE TABLE mx_crypto_inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL UNIQUE,
    input TEXT NOT NULL
);

-- An encrypted event set aside until its room key arrives names the key's session here; the
-- key's arrival puts it back in line.
ALTER TABLE mx_parked ADD COLUMN awaiting_key TEXT;
CREATE INDEX mx_parked_awaiting_key ON mx_parked (room_id, awaiting_key)
    WHERE awaiting_key IS NOT NULL;

-- When each received room key was first stored, for `encryption.delete_room_keys_after_days`.
-- Keys stored before this column count as received now.
ALTER TABLE mx_crypto_inbound_session ADD COLUMN received_at BIGINT NOT NULL DEFAULT 0;
UPDATE mx_crypto_inbound_session SET received_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
