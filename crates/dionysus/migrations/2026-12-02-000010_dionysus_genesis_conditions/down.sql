ALTER TABLE dionysus_genesis_runs DROP COLUMN IF EXISTS conditions;
