DROP TABLE IF EXISTS dionysus_outbox;
