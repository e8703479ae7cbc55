-- Marking a row published rewrites it (its published_at is in the partial indexes'
-- predicates, so the update cannot be HOT), and every index on all rows takes a new entry.
-- Two such indexes served no query of the framework:
--   * (resource_class, resource_id), a lookup of one record's history by hand;
--   * (published_at), the retention order; retention now deletes in id order instead.
-- Dropping them makes marking rows published (the relay's largest cost) and writing outbox
-- rows cheaper. Re-create the first in your own migration if you query history by record.
DROP INDEX IF EXISTS dionysus_outbox_resource_idx;
DROP INDEX IF EXISTS dionysus_outbox_published_at_idx;
