-- The checkpoint log as checkpointed handlers write it: where each event came from (key,
-- partition, offset) and which handler ("listener") acknowledged it; failures with their
-- attempts, first and last failure time and the chain of error sources.
ALTER TABLE dionysus_events
    ADD COLUMN listener    TEXT NOT NULL DEFAULT '',
    ADD COLUMN key         TEXT,
    ADD COLUMN "partition" INTEGER,
    ADD COLUMN "offset"    BIGINT;
-- One row per consumer group, handler and checksum: two handlers of one group may both
-- acknowledge the same event.
DROP INDEX IF EXISTS dionysus_events_checksum_idx;
CREATE UNIQUE INDEX dionysus_events_checksum_idx ON dionysus_events (group_id, listener, checksum);
CREATE INDEX dionysus_events_entity_id_idx ON dionysus_events (entity_id);
CREATE INDEX dionysus_events_group_id_idx ON dionysus_events (group_id);

ALTER TABLE dionysus_event_failures
    ADD COLUMN listener        TEXT        NOT NULL DEFAULT '',
    ADD COLUMN key             TEXT,
    ADD COLUMN "partition"     INTEGER,
    ADD COLUMN "offset"        BIGINT,
    ADD COLUMN attempts        INTEGER     NOT NULL DEFAULT 1,
    ADD COLUMN first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN last_failed_at  TIMESTAMPTZ NOT NULL DEFAULT now();
-- The same failing message again updates its row rather than adding one.
CREATE UNIQUE INDEX dionysus_event_failures_identity_idx
    ON dionysus_event_failures (group_id, listener, checksum);
CREATE INDEX dionysus_event_failures_entity_id_idx ON dionysus_event_failures (entity_id);
CREATE INDEX dionysus_event_failures_event_type_idx ON dionysus_event_failures (event_type);
CREATE INDEX dionysus_event_failures_group_id_idx ON dionysus_event_failures (group_id);
