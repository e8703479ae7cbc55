DROP TABLE IF EXISTS dionysus_relay_workers;
DROP TABLE IF EXISTS dionysus_relay_leases;
DROP INDEX IF EXISTS dionysus_outbox_retry_idx;
DROP INDEX IF EXISTS dionysus_outbox_relay_idx;
CREATE INDEX IF NOT EXISTS dionysus_outbox_pending_topic_idx
    ON dionysus_outbox (topic, created_at) WHERE published_at IS NULL;
ALTER TABLE dionysus_outbox DROP COLUMN IF EXISTS ordering_bucket, DROP COLUMN IF EXISTS ordering_key;
