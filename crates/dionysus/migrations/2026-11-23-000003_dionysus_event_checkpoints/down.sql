DROP TABLE IF EXISTS dionysus_event_failures;
DROP TABLE IF EXISTS dionysus_events;
