CREATE INDEX dionysus_outbox_published_at_idx
    ON dionysus_outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX dionysus_outbox_resource_idx
    ON dionysus_outbox (resource_class, resource_id);
