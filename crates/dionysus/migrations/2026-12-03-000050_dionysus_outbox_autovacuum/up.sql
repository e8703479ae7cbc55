-- Every published row leaves a dead tuple behind, in the table and in the relay's partial
-- indexes (marking a row published takes it out of their predicate). PostgreSQL's defaults
-- vacuum a table once a fifth of it is dead, which for a busy outbox means millions of dead
-- index entries for the relay's reads to step over. Vacuum this table after 1% (or 1000 rows)
-- instead, without the cost-based pauses, and analyze it as often.
ALTER TABLE dionysus_outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
