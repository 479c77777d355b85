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
