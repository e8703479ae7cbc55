ALTER TABLE dionysus_relay_workers DROP COLUMN IF EXISTS idle;
