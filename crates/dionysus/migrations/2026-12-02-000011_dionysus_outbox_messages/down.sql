ALTER TABLE dionysus_outbox DROP COLUMN IF EXISTS message, DROP COLUMN IF EXISTS message_key;
