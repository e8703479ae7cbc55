-- Buckets follow the load. A relay worker that has been caught up for a moment says so here;
-- a worker with a backlog hands it some of its busy buckets (between batches, with nothing
-- in flight), so a drain is shared by every worker to its end, however the rows fall into
-- buckets.
ALTER TABLE dionysus_relay_workers ADD COLUMN idle BOOLEAN NOT NULL DEFAULT false;
