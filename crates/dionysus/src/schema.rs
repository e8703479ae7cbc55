//! Diesel schema of the framework tables created by the embedded migrations (`migrate`).
//! It only describes them: the migrations own the tables, and the relay and the consumer
//! own what is written to them.

diesel::table! {
    /// The transactional outbox.
    dionysus_outbox (id) {
        /// Row id; the relay publishes rows of one partition key in id order.
        id -> BigInt,
        /// Model name of the record (`Rental`).
        resource_class -> Text,
        /// Primary key of the record, as text.
        resource_id -> Text,
        /// Event name (`rental_updated`).
        event_name -> Text,
        /// Topic, or `__outbox_observer__` for deferred observers.
        topic -> Text,
        /// Partition key computed when the row was written.
        partition_key -> Nullable<Text>,
        /// `{"column": [old, new]}`; only deferred observer rows carry one.
        changeset -> Jsonb,
        /// When the row was published (acknowledged by the broker).
        published_at -> Nullable<Timestamptz>,
        /// When the row was parked after its last allowed attempt.
        failed_at -> Nullable<Timestamptz>,
        /// Not retried before this time.
        retry_at -> Nullable<Timestamptz>,
        /// Last error's kind.
        error_class -> Nullable<Text>,
        /// Last error's message.
        error_message -> Nullable<Text>,
        /// Failed attempts so far.
        attempts -> Integer,
        /// Written at.
        created_at -> Timestamptz,
        /// Last changed at.
        updated_at -> Timestamptz,
        /// The partition key, or `<model>:<id>` without one: rows of one key publish in order.
        ordering_key -> Nullable<Text>,
        /// One of 64 buckets of the ordering key; each is leased to one relay worker.
        ordering_bucket -> Nullable<SmallInt>,
        /// The value of a message the application composed, as JSON text (sealed when
        /// `encryption_key_id` is set); NULL for rows built from the current record.
        message -> Nullable<Text>,
        /// The Kafka key of a composed message.
        message_key -> Nullable<Text>,
        /// The key that sealed `changeset` and `message`; NULL when they are in the clear.
        encryption_key_id -> Nullable<Text>,
    }
}

diesel::table! {
    /// Relay bucket leases.
    dionysus_relay_leases (bucket) {
        /// Bucket, 0 … 63.
        bucket -> SmallInt,
        /// Worker holding it.
        owner -> Nullable<Text>,
        /// The lease ends at.
        lease_until -> Timestamptz,
    }
}

diesel::table! {
    /// Live relay workers.
    dionysus_relay_workers (worker_id) {
        /// Worker id.
        worker_id -> Text,
        /// Last heartbeat.
        heartbeat_at -> Timestamptz,
        /// Caught up for a moment: may be handed busy buckets.
        idle -> Bool,
    }
}

diesel::table! {
    /// Consumer offsets stored with the replica writes they cover.
    dionysus_consumer_offsets (group_id, topic, partition) {
        /// Consumer group.
        group_id -> Text,
        /// Topic.
        topic -> Text,
        /// Partition.
        partition -> Integer,
        /// The next offset to read.
        next_offset -> BigInt,
        /// Last stored at.
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Genesis runs (resumable re-publishing of a model).
    dionysus_genesis_runs (id) {
        /// Run id.
        id -> BigInt,
        /// Model name.
        model -> Text,
        /// Topic (primary or genesis name).
        topic -> Text,
        /// Only records updated at or after this time.
        window_from -> Nullable<Timestamptz>,
        /// Only records updated at or before this time.
        window_to -> Nullable<Timestamptz>,
        /// The run is spread over this many seconds.
        spread_seconds -> Double,
        /// Records per batch.
        batch_size -> Integer,
        /// Last primary key published.
        cursor -> Nullable<Text>,
        /// Records to publish.
        total_count -> Nullable<BigInt>,
        /// Records published so far.
        published_count -> BigInt,
        /// pending, running, completed, failed or canceled.
        status -> Text,
        /// Why the run failed.
        error_message -> Nullable<Text>,
        /// Started at.
        started_at -> Nullable<Timestamptz>,
        /// Finished at.
        finished_at -> Nullable<Timestamptz>,
        /// Created at.
        created_at -> Timestamptz,
        /// Last changed at.
        updated_at -> Timestamptz,
        /// Skip soft-deleted records.
        visible_only -> Bool,
        /// Equality filters, `[["column", "value"], …]`.
        conditions -> Jsonb,
    }
}

diesel::table! {
    /// The checkpoint log: events acknowledged by checkpointed handlers.
    dionysus_events (id) {
        /// Row id.
        id -> BigInt,
        /// Topic of the message.
        topic -> Text,
        /// Consumer group that handled it.
        group_id -> Text,
        /// The acknowledged entity's id.
        entity_id -> Nullable<Text>,
        /// The acknowledged event time.
        event_time -> Nullable<Timestamptz>,
        /// Event name (`rental_updated`).
        event_type -> Nullable<Text>,
        /// Version given with the acknowledgement.
        event_version -> Nullable<Text>,
        /// SHA-256 (hex) identifying the event (see `checkpoint`).
        checksum -> Text,
        /// The message's envelope.
        payload -> Nullable<Jsonb>,
        /// Saved at.
        created_at -> Timestamptz,
        /// Path of the handler that acknowledged it.
        listener -> Text,
        /// The message's key.
        key -> Nullable<Text>,
        /// The message's partition.
        partition -> Nullable<Integer>,
        /// The message's offset.
        offset -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Events whose checkpointed handler failed, kept for inspection and retry.
    dionysus_event_failures (id) {
        /// Row id.
        id -> BigInt,
        /// Topic of the message.
        topic -> Text,
        /// Consumer group.
        group_id -> Text,
        /// Entity id, when known.
        entity_id -> Nullable<Text>,
        /// Event time, when known.
        event_time -> Nullable<Timestamptz>,
        /// Event name.
        event_type -> Nullable<Text>,
        /// Event version, when known.
        event_version -> Nullable<Text>,
        /// SHA-256 (hex) identifying the event.
        checksum -> Text,
        /// The message's envelope.
        payload -> Nullable<Jsonb>,
        /// Topic, partition, offset, key, group, listener, event index.
        metadata -> Jsonb,
        /// The error's type name.
        error_class -> Text,
        /// The error's message.
        error_message -> Text,
        /// The error's chain of sources, outermost first (JSON array of strings).
        error_backtrace -> Jsonb,
        /// First recorded at.
        created_at -> Timestamptz,
        /// Path of the handler that failed.
        listener -> Text,
        /// The message's key.
        key -> Nullable<Text>,
        /// The message's partition.
        partition -> Nullable<Integer>,
        /// The message's offset.
        offset -> Nullable<BigInt>,
        /// Failed attempts so far.
        attempts -> Integer,
        /// First failure.
        first_failed_at -> Timestamptz,
        /// Latest failure.
        last_failed_at -> Timestamptz,
    }
}
