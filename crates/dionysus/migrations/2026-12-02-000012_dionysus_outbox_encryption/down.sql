ALTER TABLE dionysus_outbox DROP COLUMN IF EXISTS encryption_key_id;
