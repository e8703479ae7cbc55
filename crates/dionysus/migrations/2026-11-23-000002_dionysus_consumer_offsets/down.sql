DROP TABLE IF EXISTS dionysus_consumer_offsets;
