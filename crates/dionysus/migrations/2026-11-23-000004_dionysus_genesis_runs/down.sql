DROP TABLE IF EXISTS dionysus_genesis_runs;
