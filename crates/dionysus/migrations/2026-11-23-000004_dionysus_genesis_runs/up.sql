-- Genesis runs: re-publishing every record of a model, resumable from its cursor.
CREATE TABLE dionysus_genesis_runs (
    id              BIGSERIAL PRIMARY KEY,
    model           TEXT             NOT NULL,
    topic           TEXT             NOT NULL,
    window_from     TIMESTAMPTZ,
    window_to       TIMESTAMPTZ,
    spread_seconds  DOUBLE PRECISION NOT NULL DEFAULT 0,
    batch_size      INTEGER          NOT NULL DEFAULT 1000,
    cursor          TEXT,
    total_count     BIGINT,
    published_count BIGINT           NOT NULL DEFAULT 0,
    status          TEXT             NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'canceled')),
    error_message   TEXT,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CHECK (window_from IS NULL OR window_to IS NULL OR window_from <= window_to)
);
CREATE INDEX dionysus_genesis_runs_status_idx ON dionysus_genesis_runs (status, model, topic);
