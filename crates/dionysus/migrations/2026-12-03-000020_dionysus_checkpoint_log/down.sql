DROP INDEX IF EXISTS dionysus_event_failures_group_id_idx;
DROP INDEX IF EXISTS dionysus_event_failures_event_type_idx;
DROP INDEX IF EXISTS dionysus_event_failures_entity_id_idx;
DROP INDEX IF EXISTS dionysus_event_failures_identity_idx;
ALTER TABLE dionysus_event_failures
    DROP COLUMN last_failed_at,
    DROP COLUMN first_failed_at,
    DROP COLUMN attempts,
    DROP COLUMN "offset",
    DROP COLUMN "partition",
    DROP COLUMN key,
    DROP COLUMN listener;

DROP INDEX IF EXISTS dionysus_events_group_id_idx;
DROP INDEX IF EXISTS dionysus_events_entity_id_idx;
DROP INDEX IF EXISTS dionysus_events_checksum_idx;
ALTER TABLE dionysus_events
    DROP COLUMN "offset",
    DROP COLUMN "partition",
    DROP COLUMN key,
    DROP COLUMN listener;
CREATE UNIQUE INDEX dionysus_events_checksum_idx ON dionysus_events (group_id, checksum);
