-- What the relay needs to publish in order with several workers.
--
-- Every row belongs to an ordering key (its partition key, or "<model>:<id>" when it has
-- none) and to one of 64 buckets derived from it. A bucket is leased to one relay worker at
-- a time, so all rows of one key are published by one worker, in id order.
ALTER TABLE dionysus_outbox
    ADD COLUMN ordering_key TEXT
        GENERATED ALWAYS AS (COALESCE(partition_key, resource_class || ':' || resource_id)) STORED,
    ADD COLUMN ordering_bucket SMALLINT
        GENERATED ALWAYS AS (((hashtext(COALESCE(partition_key, resource_class || ':' || resource_id)) & 2147483647) % 64)::smallint) STORED;

-- The relay's batch scan: pending rows of the worker's buckets, in id order.
CREATE INDEX dionysus_outbox_relay_idx
    ON dionysus_outbox (ordering_bucket, id) WHERE published_at IS NULL AND failed_at IS NULL;
-- Keys held back by a row waiting for its retry.
CREATE INDEX dionysus_outbox_retry_idx
    ON dionysus_outbox (retry_at) WHERE published_at IS NULL AND failed_at IS NULL AND retry_at IS NOT NULL;
-- The gem's (topic, created_at) index is not used by this relay.
DROP INDEX IF EXISTS dionysus_outbox_pending_topic_idx;

-- Bucket leases: a worker owns a bucket until `lease_until`; a dead worker's buckets are
-- taken over once its lease expires.
CREATE TABLE dionysus_relay_leases (
    bucket      SMALLINT PRIMARY KEY,
    owner       TEXT,
    lease_until TIMESTAMPTZ NOT NULL DEFAULT 'epoch'
);
INSERT INTO dionysus_relay_leases (bucket) SELECT generate_series(0, 63);

-- Live workers (by heartbeat), so each takes a fair share of the buckets.
CREATE TABLE dionysus_relay_workers (
    worker_id    TEXT PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
