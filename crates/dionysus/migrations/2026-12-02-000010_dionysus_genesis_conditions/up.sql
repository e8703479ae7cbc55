-- Equality filters of a genesis run (dionysus-rb's `query_conditions`, G-4), kept with the
-- run so a resumed run selects the same records: `[["column", "value"], …]`.
ALTER TABLE dionysus_genesis_runs ADD COLUMN conditions JSONB NOT NULL DEFAULT '[]'::jsonb;
