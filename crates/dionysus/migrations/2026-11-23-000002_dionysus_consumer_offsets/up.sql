-- Consumer offsets stored in the same transaction as the replica writes they cover, so a
-- crash between the database commit and the Kafka commit applies nothing twice.
CREATE TABLE dionysus_consumer_offsets (
    group_id    TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
