DROP TABLE dionysus_reinit;
