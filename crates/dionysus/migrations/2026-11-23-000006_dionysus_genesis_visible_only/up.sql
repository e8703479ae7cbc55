ALTER TABLE dionysus_genesis_runs ADD COLUMN visible_only BOOLEAN NOT NULL DEFAULT false;
