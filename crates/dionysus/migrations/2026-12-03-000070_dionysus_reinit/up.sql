-- The targets of a consumer group's reinit (replay from the earliest offsets): per partition,
-- where the replay started and the offset it runs to. While a partition's stored offset
-- (dionysus_consumer_offsets) is below its target, its messages are replayed: replies, error
-- events and cascades are suppressed. A reinit that was interrupted resumes from these rows.
CREATE TABLE dionysus_reinit (
    group_id      TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    from_offset   BIGINT      NOT NULL,
    target_offset BIGINT      NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
