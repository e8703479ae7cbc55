-- The transactional outbox: one row per event to publish, written in the same transaction
-- as the change it describes. Columns of dionysus-rb's outbox, plus a bigserial id.
CREATE TABLE dionysus_outbox (
    id             BIGSERIAL PRIMARY KEY,
    resource_class TEXT        NOT NULL,
    resource_id    TEXT        NOT NULL,
    event_name     TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition_key  TEXT,
    changeset      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    published_at   TIMESTAMPTZ,
    failed_at      TIMESTAMPTZ,
    retry_at       TIMESTAMPTZ,
    error_class    TEXT,
    error_message  TEXT,
    attempts       INTEGER     NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The relay's "next unpublished rows" scan: only pending rows are indexed, so the index
-- stays small however large the table grows.
CREATE INDEX dionysus_outbox_pending_idx
    ON dionysus_outbox (id) WHERE published_at IS NULL AND failed_at IS NULL;
-- dionysus-rb's publishing index (topic, created_at) over unpublished rows.
CREATE INDEX dionysus_outbox_pending_topic_idx
    ON dionysus_outbox (topic, created_at) WHERE published_at IS NULL;
-- Parked (failed) rows, for `outbox stats` and `outbox retry`.
CREATE INDEX dionysus_outbox_failed_idx
    ON dionysus_outbox (failed_at) WHERE failed_at IS NOT NULL AND published_at IS NULL;
-- Retention: prune published rows oldest first.
CREATE INDEX dionysus_outbox_published_at_idx
    ON dionysus_outbox (published_at) WHERE published_at IS NOT NULL;
-- Looking up the history of one record.
CREATE INDEX dionysus_outbox_resource_idx
    ON dionysus_outbox (resource_class, resource_id);
