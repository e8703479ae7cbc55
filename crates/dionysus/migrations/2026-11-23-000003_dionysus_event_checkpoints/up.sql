-- The event checkpoint log: every acknowledged event, once (duplicates by checksum are
-- skipped), and the events whose handling failed, kept for inspection and retry.
CREATE TABLE dionysus_events (
    id            BIGSERIAL PRIMARY KEY,
    topic         TEXT        NOT NULL,
    group_id      TEXT        NOT NULL,
    entity_id     TEXT,
    event_time    TIMESTAMPTZ,
    event_type    TEXT,
    event_version TEXT,
    checksum      TEXT        NOT NULL,
    payload       JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One checksum per consumer group: two groups may both record the same event.
CREATE UNIQUE INDEX dionysus_events_checksum_idx ON dionysus_events (group_id, checksum);
CREATE INDEX dionysus_events_lookup_idx ON dionysus_events (topic, group_id, entity_id);
CREATE INDEX dionysus_events_event_type_idx ON dionysus_events (event_type);
CREATE INDEX dionysus_events_event_time_idx ON dionysus_events (event_time);

CREATE TABLE dionysus_event_failures (
    id              BIGSERIAL PRIMARY KEY,
    topic           TEXT        NOT NULL,
    group_id        TEXT        NOT NULL,
    entity_id       TEXT,
    event_time      TIMESTAMPTZ,
    event_type      TEXT,
    event_version   TEXT,
    checksum        TEXT        NOT NULL,
    payload         JSONB,
    metadata        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    error_class     TEXT        NOT NULL,
    error_message   TEXT        NOT NULL,
    error_backtrace JSONB       NOT NULL DEFAULT '[]'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dionysus_event_failures_checksum_idx ON dionysus_event_failures (checksum);
CREATE INDEX dionysus_event_failures_lookup_idx ON dionysus_event_failures (topic, group_id, entity_id);
CREATE INDEX dionysus_event_failures_created_at_idx ON dionysus_event_failures (created_at);
