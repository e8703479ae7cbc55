-- Encryption at rest of the changeset and the composed message (dionysus-rb's encrypted
-- changesets): the id of the key that sealed them, NULL when the row is in the clear. A sealed
-- changeset is stored as a JSON string holding the sealed bytes.
ALTER TABLE dionysus_outbox ADD COLUMN encryption_key_id TEXT;
