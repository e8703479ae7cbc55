//! Configuration: one typed struct whose [`Default`] mirrors dionysus-rb's producer and
//! consumer defaults, overridable from environment variables. It is read once, when the
//! application builds its handle ([`Dionysus::from_env`](crate::Dionysus::from_env); code
//! overrides go through [`Dionysus::configure`](crate::Dionysus::configure)), and every part
//! built from the handle reads the same values.
//!
//! | variable | field | form | default |
//! |---|---|---|---|
//! | `DATABASE_URL` | [`Config::database_url`] | `postgres://user@host:port/db` | `postgres://postgres@127.0.0.1:5432/postgres` |
//! | `DIONYSUS_SEED_BROKER` | [`KafkaConfig::brokers`] | `host:port`, several separated by `;` or `,` | `127.0.0.1:9092` |
//! | `DIONYSUS_CLIENT_ID` | [`KafkaConfig::client_id`] | text | `dionysus` |
//! | `DIONYSUS_CONSUMER_GROUP_PREFIX` | [`KafkaConfig::consumer_group_prefix`] | text | `dionysus_consumer_group_for` |
//! | `DIONYSUS_CONSUMER_GROUP_ID` | [`KafkaConfig::group_id`] | text | `<client_id>_<prefix>_<client_id>` |
//! | `DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS` | [`KafkaConfig::session_timeout`] | milliseconds, or a duration (`6s`) | `6000` |
//! | `DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS` | [`KafkaConfig::heartbeat_interval`] | milliseconds, or a duration, below the session timeout | `200` |
//! | `DIONYSUS_CONSUMER_GROUP_INSTANCE_ID` | [`KafkaConfig::group_instance_id`] | text, stable per process (e.g. the pod name) | none |
//! | `DIONYSUS_SOFT_DELETE_COLUMN` | [`ProducerConfig::soft_delete_column`] | column name | `canceled_at` |
//! | `DIONYSUS_DEFAULT_PARTITION_KEY` | [`ProducerConfig::default_partition_key`] | attribute name | `account_id` |
//! | `DIONYSUS_OUTBOX_BATCH_SIZE` | [`ProducerConfig::batch_size`] (largest batch; batches adapt from 100 up to it) | integer ≥ 1 | `1000` |
//! | `DIONYSUS_LOCK_EXPIRY_MS` | [`ProducerConfig::lock_expiry`] | milliseconds, or a duration (`10s`) | `10000` |
//! | `DIONYSUS_OUTBOX_WORKER_SLEEP_SECONDS` | [`ProducerConfig::idle_sleep`] (longest idle pause; pauses adapt from 2 ms up to it) | seconds (`0.05`), or a duration | `0.05` |
//! | `DIONYSUS_OUTBOX_PUBLISHING_DELAY_SECONDS` | [`ProducerConfig::publishing_delay`] | seconds, or a duration | `0` |
//! | `DIONYSUS_TRANSACTIONAL_OUTBOX_ENABLED` | [`ProducerConfig::transactional_outbox_enabled`] | boolean | `true` |
//! | `DIONYSUS_PUBLISH_AFTER_COMMIT` | [`ProducerConfig::publish_after_commit`] | boolean | `false` |
//! | `DIONYSUS_REMOVE_CONSECUTIVE_DUPLICATES` | [`ProducerConfig::remove_consecutive_duplicates`] | boolean | `false` |
//! | `DIONYSUS_OBSERVERS_INLINE_MAXIMUM_SIZE` | [`ProducerConfig::observers_inline_maximum_size`] | integer | `1000` |
//! | `DIONYSUS_RELAY_WORKERS` (or `DIONYSUS_RB_THREADS_NUMBER`) | [`ProducerConfig::relay_workers`] | integer ≥ 1 | `2` |
//! | `DIONYSUS_RETRY_BACKOFF_BASE_SECONDS` | [`ProducerConfig::retry_backoff_base`] | seconds, or a duration | `5` |
//! | `DIONYSUS_RETRY_BACKOFF_CAP_SECONDS` | [`ProducerConfig::retry_backoff_cap`] | seconds, or a duration | `600` |
//! | `DIONYSUS_MAX_ATTEMPTS` | [`ProducerConfig::max_attempts`] | integer ≥ 1 | `12` |
//! | `DIONYSUS_STRICT_ORDERING` | [`ProducerConfig::strict_ordering`] | boolean | `false` |
//! | `DIONYSUS_OUTBOX_RETENTION_SECONDS` | [`ProducerConfig::retention`] | seconds, a duration, `off` (keep), or `0` (delete on publishing) | `3d` |
//! | `DIONYSUS_GENESIS_CONSISTENCY_SAFETY_DELAY_SECONDS` | [`ProducerConfig::genesis_consistency_safety_delay`] | seconds, or a duration | `60` |
//! | `DIONYSUS_PUBLISHER_SERVICE_NAME` | [`ProducerConfig::publisher_service_name`] | text | `dionysus` |
//! | `DIONYSUS_OUTBOX_ENCRYPTION_KEYS` | [`ProducerConfig::outbox_encryption_keys`] | `id:base64,…` of 32-byte keys, the first is current | none (not encrypted) |
//! | `DIONYSUS_DEAD_LETTER_TOPIC` | [`ConsumerConfig::dead_letter_topic`] | topic name | `dionysus_dead_letters` |
//! | `DIONYSUS_CONSUMER_BATCH_SIZE` | [`ConsumerConfig::batch_size`] | integer ≥ 1 | `500` |
//! | `DIONYSUS_CONSUMER_MAX_MESSAGE_BYTES` | [`ConsumerConfig::max_message_bytes`] | integer ≥ 1 | `10485760` |
//! | `DIONYSUS_CONSUMER_MAX_RECORDS_PER_MESSAGE` | [`ConsumerConfig::max_records_per_message`] | integer ≥ 1 | `100000` |
//! | `DIONYSUS_REMOVE_DUPLICATES` | [`ConsumerConfig::remove_duplicates`] | boolean | `true` |
//! | `DIONYSUS_CONSUMER_RETRY_ATTEMPTS` | [`ConsumerConfig::retry_attempts`] | integer ≥ 1 | `5` |
//! | `DIONYSUS_CONSUMER_STALL_TIMEOUT_SECONDS` | [`ConsumerConfig::stall_timeout`] | seconds, or a duration | `60` |
//! | `DIONYSUS_CONSUMER_MAX_FUTURE_SKEW_SECONDS` | [`ConsumerConfig::max_future_skew`] | seconds, or a duration | `1d` |
//! | `DIONYSUS_SYNCED_ID_ATTRIBUTE` | [`ConsumerConfig::synced_id_attribute`] | column name | `synced_id` |
//! | `DIONYSUS_SYNCED_CREATED_AT_ATTRIBUTE` | [`ConsumerConfig::synced_created_at_attribute`] | column name | `synced_created_at` |
//! | `DIONYSUS_SYNCED_UPDATED_AT_ATTRIBUTE` | [`ConsumerConfig::synced_updated_at_attribute`] | column name | `synced_updated_at` |
//! | `DIONYSUS_SOFT_DELETED_AT_ATTRIBUTE` | [`ConsumerConfig::soft_deleted_at_attribute`] | column name | `synced_canceled_at` |
//! | `DIONYSUS_SYNCED_DATA_ATTRIBUTE` | [`ConsumerConfig::synced_data_attribute`] | column name | `synced_data` |
//! | `DIONYSUS_CHECKPOINT_ON_FAILURE` | [`ConsumerConfig::checkpoint_on_failure`] | `record`, `dead_letter` or `block` | `record` |
//! | `DIONYSUS_CHECKPOINT_ATTEMPTS` | [`ConsumerConfig::checkpoint_attempts`] | integer ≥ 1 | `3` |
//! | `DIONYSUS_SCHEMA_BACKEND` | [`SchemaConfig::backend`] (Avro topics, feature `avro`) | `registry`, `local` or `validation` | `registry` |
//! | `DIONYSUS_SCHEMA_REGISTRY_URL` | [`SchemaConfig::registry_url`] | `http://host:port` of a Confluent-compatible schema registry | `http://127.0.0.1:8081` |
//! | `DIONYSUS_KAFKA_<PROPERTY>` | [`KafkaConfig::properties`] | any librdkafka property, `_` for `.` | none |
//! | `DIONYSUS_API_TOKEN` | not in `Config`: read by `dionysus serve` (the events API and console, `http::Api::with_token`) | text, the bearer token every route but `/ping` and `/health` then needs | none: no token, loopback addresses only |
//!
//! A consumer that dies without leaving its group (a crash, kill -9, a lost host) holds its
//! partitions until the broker has missed its heartbeats for the session timeout; then the
//! group rebalances and the other members take them over. The defaults (6 s, the lowest a
//! Kafka broker accepts unless `group.min.session.timeout.ms` is lowered, and a heartbeat
//! every 200 ms) keep that pause under 10 s; with librdkafka's 45 s default it is nearly a
//! minute. The heartbeat is short because a survivor hears of the rebalance only in a
//! heartbeat's answer, and a broker that checks sessions only when a member calls (the test
//! broker does) notices the dead one only at a survivor's heartbeat: up to one interval is
//! added to the session timeout either way. With
//! `DIONYSUS_KAFKA_PARTITION_ASSIGNMENT_STRATEGY=cooperative-sticky` a rebalance moves only
//! the partitions that change owner; the members keep working on the others meanwhile (every
//! member of the group needs it: eager and cooperative members cannot share a group). A
//! consumer stopped with SIGTERM leaves its group at once. With `DIONYSUS_CONSUMER_GROUP_INSTANCE_ID` set to a name that stays the same
//! across restarts of one process (static membership, e.g. a StatefulSet's pod name), a broker
//! that supports it (Kafka 2.3 and later) hands a restarted member its partitions back without
//! a rebalance; a name that changes with every start only leaves a stale member behind until
//! its session times out.
//!
//! Kafka clients are set for latency (each overridable with `DIONYSUS_KAFKA_<PROPERTY>`):
//!
//! | librdkafka property | clients | dionysus | librdkafka's default | why |
//! |---|---|---|---|---|
//! | `socket.nagle.disable` | all | `true` | `false` | a request is sent at once, not held for the broker's delayed ACK |
//! | `linger.ms` | relay | `1` | `5` | the relay awaits each batch's delivery, so waiting to fill requests costs more than it saves |
//! | `fetch.wait.max.ms` | consumers | `100` | `500` | an idle partition costs ten fetches a second; a broker that holds fetches for the whole wait delays messages by at most this |
//! | `auto.commit.interval.ms` | consumers | `1000` | `5000` | each batch stores its next offset with librdkafka (the authoritative one is in the database, with the replica rows), which commits the latest to the broker this often and on revocation: no commit request per batch, and lag tooling is at most a second behind |
//!
//! Booleans accept `true/false`, `1/0`, `yes/no`, `on/off`. Durations accept a bare number
//! in the unit the variable names, or a number with a unit: `ms`, `s`, `m`, `h`, `d`
//! (`1.5s`, `90m`, `0.5d`). A bad value is an error naming the variable, the value and the
//! expected form. This module owns reading and checking settings; it does not open
//! connections.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;

/// Everything dionysus can be configured with. Its `Debug` hides secrets ([`redact`]).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// PostgreSQL URL of the application database (outbox, offsets, replicas).
    pub database_url: String,
    /// Kafka connection settings.
    pub kafka: KafkaConfig,
    /// Producer side: outbox writing and the relay.
    pub producer: ProducerConfig,
    /// Consumer side: replicas and handlers.
    pub consumer: ConsumerConfig,
    /// Where the schemas of Avro topics come from (feature `avro`), for the relay and the
    /// consumer alike.
    pub schemas: SchemaConfig,
}

/// How the messages of Avro topics are written and read (feature `avro`; deimos' schema
/// backends).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaConfig {
    /// The backend.
    pub backend: SchemaBackend,
    /// The schema registry's URL (`http://host:port`), used by [`SchemaBackend::Registry`].
    pub registry_url: String,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig { backend: SchemaBackend::Registry, registry_url: "http://127.0.0.1:8081".to_owned() }
    }
}

/// The schema backend of Avro topics (`DIONYSUS_SCHEMA_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SchemaBackend {
    /// `registry` (the default, deimos' `avro_schema_registry`): records are encoded with
    /// their schema and framed with its registry id (magic byte 0, 4-byte id); readers fetch
    /// the writer's schema by id and resolve it against their own.
    #[default]
    Registry,
    /// `local` (deimos' `avro_local`): no registry; records are the bare Avro datum of the
    /// local schema, and readers read them with the same local schema.
    Local,
    /// `validation` (deimos' `avro_validation`): records are JSON objects, checked against
    /// the schema before they are published and when they are read.
    Validation,
}

impl SchemaBackend {
    /// The backend's name: `registry`, `local` or `validation`.
    pub fn name(self) -> &'static str {
        match self {
            SchemaBackend::Registry => "registry",
            SchemaBackend::Local => "local",
            SchemaBackend::Validation => "validation",
        }
    }
}

/// Kafka connection settings. Its `Debug` hides the values of secret properties (those whose
/// name contains `password`, `passwd`, `secret`, `key` or `token`).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Seed brokers, `host:port` each (dionysus-rb's `DIONYSUS_SEED_BROKER`).
    pub brokers: Vec<String>,
    /// `client.id` of every Kafka client; also part of the consumer group name.
    pub client_id: String,
    /// Prefix of the consumer group name (dionysus-rb's `consumer_group_prefix`).
    pub consumer_group_prefix: String,
    /// Explicit consumer `group.id`; when `None`, [`KafkaConfig::group_id`] derives the name
    /// dionysus-rb deployments use.
    pub group_id: Option<String>,
    /// How long the group waits for a consumer's heartbeat before it gives the consumer's
    /// partitions to the other members (`session.timeout.ms`, 6 s).
    pub session_timeout: Duration,
    /// How often a consumer heartbeats to its group (`heartbeat.interval.ms`, 200 ms);
    /// shorter than the session timeout. A member learns of a rebalance in a heartbeat's
    /// answer, so this is added to the time a dead member's partitions wait.
    pub heartbeat_interval: Duration,
    /// Static group membership (`group.instance.id`): a name for this consumer process that
    /// stays the same when it restarts (none: dynamic membership).
    pub group_instance_id: Option<String>,
    /// Extra librdkafka properties applied to every client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

/// Producer-side settings. Defaults are dionysus-rb's, except where this crate deliberately
/// does better (backoff cap, attempt limit), as documented per field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// Column whose non-null value marks a record as soft-deleted (`canceled_at`).
    pub soft_delete_column: String,
    /// Attribute used as partition key when neither the publisher nor the topic name one
    /// (`account_id`). A function in its place (dionysus-rb's callable default) is code, so it
    /// is given to the registry: `Registry::with_default_partition_key`.
    pub default_partition_key: String,
    /// The largest batch of outbox rows a relay worker reads (1000; dionysus-rb: 100). Batches
    /// adapt to the backlog: a worker starts at 100 rows (or this, if smaller), doubles after
    /// each full batch up to this, and halves after each batch less than half full.
    pub batch_size: usize,
    /// How long a relay worker's lease on its buckets lasts (10 s). A worker that dies has its
    /// buckets taken over about this long after it died (within a second either way); one
    /// stopped gracefully releases them at once. A batch waits at most 0.8 × this for the
    /// broker before its undelivered messages are purged and retried, so a shorter expiry
    /// hands a dead worker's keys over sooner but gives up on a slow broker sooner too.
    pub lock_expiry: Duration,
    /// The longest pause of an idle relay worker (50 ms; dionysus-rb: 0.2 s). After a batch
    /// that did something a worker reads again at once; after an empty poll it pauses 2 ms,
    /// doubling with each empty poll up to this. An idle poll is one cheap look into the
    /// pending index, so commit → published stays in the tens of milliseconds without
    /// [`publish_after_commit`](Self::publish_after_commit).
    pub idle_sleep: Duration,
    /// A row becomes publishable this long after it was written (0). Unlike dionysus-rb,
    /// which compares with `now + delay`, the delay really delays.
    pub publishing_delay: Duration,
    /// Whether writes produce outbox rows at all (true).
    pub transactional_outbox_enabled: bool,
    /// Whether rows are also published right after their transaction commits (false).
    pub publish_after_commit: bool,
    /// Whether runs of identical consecutive rows in a batch collapse to the last one before
    /// publishing (false, as in dionysus-rb).
    pub remove_consecutive_duplicates: bool,
    /// Observed records published inline at most; beyond it they are handed to genesis
    /// (1000).
    pub observers_inline_maximum_size: usize,
    /// Concurrent relay workers (2). Each reads its next batch while the current one's
    /// deliveries are awaited, so one worker keeps the broker and the database busy at once;
    /// a second one shares the buckets and overlaps the round trips further.
    pub relay_workers: usize,
    /// Base of the retry backoff: a row's n-th failure waits `base × 2^n`, with jitter (5 s).
    pub retry_backoff_base: Duration,
    /// Upper bound of the retry backoff (10 min; dionysus-rb has none).
    pub retry_backoff_cap: Duration,
    /// Attempts after which a failing row is parked with `failed_at` and its partition key
    /// moves on (12; dionysus-rb retries forever).
    pub max_attempts: u32,
    /// When true, a parked row keeps blocking its partition key instead of being skipped.
    pub strict_ordering: bool,
    /// How long published rows are kept (3 days): older ones are pruned every minute.
    /// `None` keeps them for ever; zero deletes each row as it is published, which keeps no
    /// history and is the relay's cheapest setting (a delete costs the database about a
    /// quarter of a mark, and nothing is left to prune).
    pub retention: Option<Duration>,
    /// Extra margin added to the end of a genesis window in the "performed" event (60 s).
    pub genesis_consistency_safety_delay: Duration,
    /// Name of this service in genesis events (`dionysus`).
    pub publisher_service_name: String,
    /// Keys sealing the outbox's changesets and composed messages at rest (dionysus-rb's
    /// encrypted changesets, P-12); none by default. The first key seals new rows; every key
    /// opens the rows sealed with it, so a key is rotated by putting a new one first and
    /// dropping the old one once no pending row uses it.
    pub outbox_encryption_keys: EncryptionKeys,
}

/// Length of an outbox encryption key in bytes (XChaCha20-Poly1305's key).
pub const ENCRYPTION_KEY_BYTES: usize = 32;

/// One outbox encryption key: an id stored with every row it seals, and 32 secret bytes.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncryptionKey {
    /// Stored with each row, so the row is opened with the key that sealed it.
    pub id: String,
    /// The secret.
    pub secret: [u8; ENCRYPTION_KEY_BYTES],
}

impl EncryptionKey {
    /// A key with this id and secret (32 random bytes).
    pub fn new(id: impl Into<String>, secret: [u8; ENCRYPTION_KEY_BYTES]) -> EncryptionKey {
        EncryptionKey { id: id.into(), secret }
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// The outbox encryption keys, current first; empty: rows are stored in the clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionKeys(pub Vec<EncryptionKey>);

impl EncryptionKeys {
    /// Parses `id:base64,id:base64` (standard base64 of 32 bytes each; ids unique, without
    /// `:` or `,`). Errors name the variable and the key id, never the secret.
    pub fn parse(var: &str, text: &str) -> Result<EncryptionKeys, ConfigError> {
        use base64::Engine as _;
        let invalid = |value: String, expected: &str| ConfigError::Invalid {
            var: var.to_owned(),
            value,
            expected: expected.to_owned(),
        };
        let mut keys: Vec<EncryptionKey> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let Some((id, encoded)) = part.split_once(':') else {
                return Err(invalid("<redacted>".to_owned(), "`id:base64` pairs separated by `,`"));
            };
            let id = id.trim();
            if id.is_empty() || keys.iter().any(|key| key.id == id) {
                return Err(invalid(format!("key id `{id}`"), "a non-empty key id, each id once"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| invalid(format!("key `{id}`"), "standard base64 of 32 random bytes"))?;
            let secret: [u8; ENCRYPTION_KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                invalid(format!("key `{id}` of {} bytes", bytes.len()), "standard base64 of exactly 32 bytes")
            })?;
            keys.push(EncryptionKey { id: id.to_owned(), secret });
        }
        Ok(EncryptionKeys(keys))
    }

    /// The key new rows are sealed with (the first), if encryption is on.
    pub fn current(&self) -> Option<&EncryptionKey> {
        self.0.first()
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&EncryptionKey> {
        self.0.iter().find(|key| key.id == id)
    }

    /// Whether no key is configured (rows are stored in the clear).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a failing handler's event becomes once its tries are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// The batch fails and its partition waits, retrying, until the handler succeeds (or
    /// the application is fixed); `/health` names the partition. Nothing is skipped.
    Block,
    /// The message goes to the dead-letter topic (`handler_failed`) and the partition moves
    /// on: the behaviour of `in_transaction` handlers without `checkpoint`.
    DeadLetter,
    /// The failure is written to `dionysus_event_failures` (payload, metadata, error, chain,
    /// attempts, first and last failure time) in the batch's transaction, the handler's
    /// writes are rolled back, and the partition moves on. Retry it with
    /// `checkpoint::Checkpoints::retry_failure` or `dionysus failures retry`. The default
    /// for checkpointed handlers.
    #[default]
    Record,
}

impl FailurePolicy {
    /// The policy's name: `block`, `dead_letter` or `record`.
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::Block => "block",
            FailurePolicy::DeadLetter => "dead_letter",
            FailurePolicy::Record => "record",
        }
    }
}

impl std::str::FromStr for FailurePolicy {
    type Err = UnknownFailurePolicy;

    fn from_str(text: &str) -> Result<FailurePolicy, UnknownFailurePolicy> {
        match text {
            "block" => Ok(FailurePolicy::Block),
            "dead_letter" => Ok(FailurePolicy::DeadLetter),
            "record" => Ok(FailurePolicy::Record),
            _ => Err(UnknownFailurePolicy { given: text.to_owned() }),
        }
    }
}

/// A failure policy name that is none of `block`, `dead_letter`, `record`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure policy `{given}`: expected `block`, `dead_letter` or `record`")]
pub struct UnknownFailurePolicy {
    /// The name given.
    pub given: String,
}

/// Consumer-side settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Topic that receives messages that cannot be processed (`dionysus_dead_letters`).
    pub dead_letter_topic: String,
    /// Messages of one partition handled in one database transaction at most (500).
    pub batch_size: usize,
    /// Larger payloads go to the dead-letter topic unprocessed (10 MiB).
    pub max_message_bytes: usize,
    /// Records in one message at most, sideloaded ones included (100,000); a message with
    /// more goes to the dead-letter topic as `too_many_records`, before any of its records
    /// is checked or written. Bounds the work and memory one message can cost.
    pub max_records_per_message: usize,
    /// Whether batches are deduplicated before persisting, as dionysus-rb's
    /// RemoveDuplicatesStrategy does (true).
    pub remove_duplicates: bool,
    /// Attempts at a batch that fails for a reason that is not its messages' (the database
    /// or the dead-letter topic unreachable, a deadlock…) before its partition is reported
    /// unhealthy (5). The partition then waits: the batch is retried every 30 s, nothing is
    /// dead-lettered and nothing committed until it goes through.
    pub retry_attempts: u32,
    /// How long a partition may go without committing while messages of it are waiting
    /// before `/health` and the liveness file report it (60 s).
    pub stall_timeout: Duration,
    /// How far in the future an event's `updated_at` (else `created_at`) may be (1 day);
    /// beyond it the message is dead-lettered as `timestamp_in_future`, since a stored
    /// future time would make every genuine later update of its record look stale.
    pub max_future_skew: Duration,
    /// Replica column holding the source's `id` (`synced_id`). This and the other
    /// `*_attribute` names apply to every replica whose declaration does not name the role's
    /// column itself (C-11); a timestamp column of a name other than the attribute's is set
    /// to `NULL` when the payload lacks the key.
    pub synced_id_attribute: String,
    /// Replica column holding the source's `created_at` (`synced_created_at`); the timestamp
    /// guard compares with it when the replica has no `synced_updated_at` column (C-10).
    pub synced_created_at_attribute: String,
    /// Replica column holding the source's `updated_at` (`synced_updated_at`); the timestamp
    /// guard compares with it.
    pub synced_updated_at_attribute: String,
    /// Replica column holding the source's `canceled_at` (`synced_canceled_at`): a replica
    /// with it soft-deletes (strategy `cancel` unless it declares another).
    pub soft_deleted_at_attribute: String,
    /// Replica column holding the whole payload (`synced_data`).
    pub synced_data_attribute: String,
    /// What a checkpointed handler's event becomes when the handler still fails after
    /// [`ConsumerConfig::checkpoint_attempts`] tries ([`FailurePolicy::Record`]); a handler's
    /// own `on_failure = "…"` takes precedence.
    pub checkpoint_on_failure: FailurePolicy,
    /// Tries of a failing checkpointed handler on one event within its batch (3), its
    /// writes rolled back after each, before [`ConsumerConfig::checkpoint_on_failure`]
    /// applies.
    pub checkpoint_attempts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            kafka: KafkaConfig::default(),
            producer: ProducerConfig::default(),
            consumer: ConsumerConfig::default(),
            schemas: SchemaConfig::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".to_owned()],
            client_id: "dionysus".to_owned(),
            consumer_group_prefix: "dionysus_consumer_group_for".to_owned(),
            group_id: None,
            session_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_millis(200),
            group_instance_id: None,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            soft_delete_column: "canceled_at".to_owned(),
            default_partition_key: "account_id".to_owned(),
            batch_size: 1000,
            lock_expiry: Duration::from_millis(10_000),
            idle_sleep: Duration::from_millis(50),
            publishing_delay: Duration::ZERO,
            transactional_outbox_enabled: true,
            publish_after_commit: false,
            remove_consecutive_duplicates: false,
            observers_inline_maximum_size: 1000,
            relay_workers: 2,
            retry_backoff_base: Duration::from_secs(5),
            retry_backoff_cap: Duration::from_secs(600),
            max_attempts: 12,
            strict_ordering: false,
            retention: Some(Duration::from_secs(3 * 86_400)),
            genesis_consistency_safety_delay: Duration::from_secs(60),
            publisher_service_name: "dionysus".to_owned(),
            outbox_encryption_keys: EncryptionKeys::default(),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            dead_letter_topic: "dionysus_dead_letters".to_owned(),
            batch_size: 500,
            max_message_bytes: 10 * 1024 * 1024,
            max_records_per_message: 100_000,
            remove_duplicates: true,
            retry_attempts: 5,
            stall_timeout: Duration::from_secs(60),
            max_future_skew: Duration::from_secs(86_400),
            synced_id_attribute: "synced_id".to_owned(),
            synced_created_at_attribute: "synced_created_at".to_owned(),
            synced_updated_at_attribute: "synced_updated_at".to_owned(),
            soft_deleted_at_attribute: "synced_canceled_at".to_owned(),
            synced_data_attribute: "synced_data".to_owned(),
            checkpoint_on_failure: FailurePolicy::Record,
            checkpoint_attempts: 3,
        }
    }
}

impl KafkaConfig {
    /// The consumer `group.id`: the explicit one, or `<client_id>_<prefix>_<client_id>`, the
    /// name dionysus-rb deployments (Karafka before 2.4) use, so a port joins the same group.
    pub fn group_id(&self) -> String {
        match &self.group_id {
            Some(group_id) => group_id.clone(),
            None => format!("{id}_{}_{id}", self.consumer_group_prefix, id = self.client_id),
        }
    }

    /// `bootstrap.servers`: the brokers joined with `,`.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }
}

/// A setting that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable is set to a value of the wrong form.
    #[error("{var}={shown:?} is not valid: expected {expected}", shown = redact(.value))]
    Invalid {
        /// The environment variable.
        var: String,
        /// Its value.
        value: String,
        /// What would be valid, e.g. "an integer ≥ 1".
        expected: String,
    },
}

impl Config {
    /// Defaults overridden by the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Defaults overridden by `lookup` (a variable name to its value), so the rules can be
    /// used with any source of settings (and tested without touching the process
    /// environment). Extra librdkafka properties are only read by [`Config::from_env`] and
    /// [`Config::from_vars`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.apply(&lookup)?;
        Ok(config)
    }

    /// Defaults overridden by an explicit list of variables (including
    /// `DIONYSUS_KAFKA_<PROPERTY>` ones).
    pub fn from_vars<K: AsRef<str>, V: AsRef<str>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config, ConfigError> {
        let vars: BTreeMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())).collect();
        let mut config = Config::from_lookup(|name| vars.get(name).cloned())?;
        config.kafka.properties.extend(kafka_properties(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        Ok(config)
    }

    fn apply(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env = Env(lookup);
        env.string("DATABASE_URL", &mut self.database_url)?;
        if let Some(value) = lookup("DIONYSUS_SEED_BROKER") {
            self.kafka.brokers = parse_brokers("DIONYSUS_SEED_BROKER", &value)?;
        }
        env.string("DIONYSUS_CLIENT_ID", &mut self.kafka.client_id)?;
        env.string("DIONYSUS_CONSUMER_GROUP_PREFIX", &mut self.kafka.consumer_group_prefix)?;
        if let Some(value) = lookup("DIONYSUS_CONSUMER_GROUP_ID") {
            self.kafka.group_id = Some(non_empty("DIONYSUS_CONSUMER_GROUP_ID", value)?);
        }
        env.duration("DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS", Unit::Millis, &mut self.kafka.session_timeout)?;
        env.duration("DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS", Unit::Millis, &mut self.kafka.heartbeat_interval)?;
        if let Some(value) = lookup("DIONYSUS_CONSUMER_GROUP_INSTANCE_ID") {
            self.kafka.group_instance_id = Some(non_empty("DIONYSUS_CONSUMER_GROUP_INSTANCE_ID", value)?);
        }
        if self.kafka.session_timeout < Duration::from_millis(1) {
            return Err(ConfigError::Invalid {
                var: "DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS".to_owned(),
                value: format!("{}ms", self.kafka.session_timeout.as_millis()),
                expected: "at least 1 ms (Kafka brokers accept 6000 ms and more by default)".to_owned(),
            });
        }
        if self.kafka.heartbeat_interval.is_zero() || self.kafka.heartbeat_interval >= self.kafka.session_timeout {
            return Err(ConfigError::Invalid {
                var: "DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS".to_owned(),
                value: format!("{}ms", self.kafka.heartbeat_interval.as_millis()),
                expected: format!(
                    "at least 1 ms and shorter than the session timeout ({} ms), e.g. a third of it",
                    self.kafka.session_timeout.as_millis()
                ),
            });
        }

        let producer = &mut self.producer;
        env.string("DIONYSUS_SOFT_DELETE_COLUMN", &mut producer.soft_delete_column)?;
        env.string("DIONYSUS_DEFAULT_PARTITION_KEY", &mut producer.default_partition_key)?;
        env.count("DIONYSUS_OUTBOX_BATCH_SIZE", &mut producer.batch_size, 1)?;
        env.duration("DIONYSUS_LOCK_EXPIRY_MS", Unit::Millis, &mut producer.lock_expiry)?;
        env.duration("DIONYSUS_OUTBOX_WORKER_SLEEP_SECONDS", Unit::Seconds, &mut producer.idle_sleep)?;
        env.duration("DIONYSUS_OUTBOX_PUBLISHING_DELAY_SECONDS", Unit::Seconds, &mut producer.publishing_delay)?;
        env.boolean("DIONYSUS_TRANSACTIONAL_OUTBOX_ENABLED", &mut producer.transactional_outbox_enabled)?;
        env.boolean("DIONYSUS_PUBLISH_AFTER_COMMIT", &mut producer.publish_after_commit)?;
        env.boolean("DIONYSUS_REMOVE_CONSECUTIVE_DUPLICATES", &mut producer.remove_consecutive_duplicates)?;
        env.count("DIONYSUS_OBSERVERS_INLINE_MAXIMUM_SIZE", &mut producer.observers_inline_maximum_size, 0)?;
        env.count("DIONYSUS_RB_THREADS_NUMBER", &mut producer.relay_workers, 1)?;
        env.count("DIONYSUS_RELAY_WORKERS", &mut producer.relay_workers, 1)?;
        env.duration("DIONYSUS_RETRY_BACKOFF_BASE_SECONDS", Unit::Seconds, &mut producer.retry_backoff_base)?;
        env.duration("DIONYSUS_RETRY_BACKOFF_CAP_SECONDS", Unit::Seconds, &mut producer.retry_backoff_cap)?;
        let mut max_attempts = producer.max_attempts as usize;
        env.count("DIONYSUS_MAX_ATTEMPTS", &mut max_attempts, 1)?;
        producer.max_attempts = u32::try_from(max_attempts).map_err(|_| ConfigError::Invalid {
            var: "DIONYSUS_MAX_ATTEMPTS".to_owned(),
            value: max_attempts.to_string(),
            expected: format!("an integer between 1 and {}", u32::MAX),
        })?;
        env.boolean("DIONYSUS_STRICT_ORDERING", &mut producer.strict_ordering)?;
        if let Some(value) = lookup("DIONYSUS_OUTBOX_RETENTION_SECONDS") {
            producer.retention = match value.trim().to_ascii_lowercase().as_str() {
                "off" | "none" | "never" => None,
                _ => Some(parse_duration("DIONYSUS_OUTBOX_RETENTION_SECONDS", &value, Unit::Seconds)?),
            };
        }
        env.duration(
            "DIONYSUS_GENESIS_CONSISTENCY_SAFETY_DELAY_SECONDS",
            Unit::Seconds,
            &mut producer.genesis_consistency_safety_delay,
        )?;
        env.string("DIONYSUS_PUBLISHER_SERVICE_NAME", &mut producer.publisher_service_name)?;
        if let Some(value) = lookup("DIONYSUS_OUTBOX_ENCRYPTION_KEYS") {
            producer.outbox_encryption_keys = EncryptionKeys::parse("DIONYSUS_OUTBOX_ENCRYPTION_KEYS", &value)?;
        }
        if producer.retry_backoff_cap < producer.retry_backoff_base {
            return Err(ConfigError::Invalid {
                var: "DIONYSUS_RETRY_BACKOFF_CAP_SECONDS".to_owned(),
                value: format!("{}s", producer.retry_backoff_cap.as_secs_f64()),
                expected: format!(
                    "a cap at least as long as the backoff base ({}s)",
                    producer.retry_backoff_base.as_secs_f64()
                ),
            });
        }

        let consumer = &mut self.consumer;
        env.string("DIONYSUS_DEAD_LETTER_TOPIC", &mut consumer.dead_letter_topic)?;
        env.count("DIONYSUS_CONSUMER_BATCH_SIZE", &mut consumer.batch_size, 1)?;
        env.count("DIONYSUS_CONSUMER_MAX_MESSAGE_BYTES", &mut consumer.max_message_bytes, 1)?;
        env.count("DIONYSUS_CONSUMER_MAX_RECORDS_PER_MESSAGE", &mut consumer.max_records_per_message, 1)?;
        env.boolean("DIONYSUS_REMOVE_DUPLICATES", &mut consumer.remove_duplicates)?;
        env.string("DIONYSUS_SYNCED_ID_ATTRIBUTE", &mut consumer.synced_id_attribute)?;
        env.string("DIONYSUS_SYNCED_CREATED_AT_ATTRIBUTE", &mut consumer.synced_created_at_attribute)?;
        env.string("DIONYSUS_SYNCED_UPDATED_AT_ATTRIBUTE", &mut consumer.synced_updated_at_attribute)?;
        env.string("DIONYSUS_SOFT_DELETED_AT_ATTRIBUTE", &mut consumer.soft_deleted_at_attribute)?;
        env.string("DIONYSUS_SYNCED_DATA_ATTRIBUTE", &mut consumer.synced_data_attribute)?;
        let mut retry_attempts = consumer.retry_attempts as usize;
        env.count("DIONYSUS_CONSUMER_RETRY_ATTEMPTS", &mut retry_attempts, 1)?;
        consumer.retry_attempts = u32::try_from(retry_attempts).map_err(|_| ConfigError::Invalid {
            var: "DIONYSUS_CONSUMER_RETRY_ATTEMPTS".to_owned(),
            value: retry_attempts.to_string(),
            expected: format!("an integer between 1 and {}", u32::MAX),
        })?;
        env.duration("DIONYSUS_CONSUMER_STALL_TIMEOUT_SECONDS", Unit::Seconds, &mut consumer.stall_timeout)?;
        env.duration("DIONYSUS_CONSUMER_MAX_FUTURE_SKEW_SECONDS", Unit::Seconds, &mut consumer.max_future_skew)?;
        if let Some(value) = (env.0)("DIONYSUS_CHECKPOINT_ON_FAILURE") {
            consumer.checkpoint_on_failure = value.trim().parse().map_err(|_| ConfigError::Invalid {
                var: "DIONYSUS_CHECKPOINT_ON_FAILURE".to_owned(),
                value,
                expected: "one of record, dead_letter, block".to_owned(),
            })?;
        }
        if let Some(value) = lookup("DIONYSUS_SCHEMA_BACKEND") {
            self.schemas.backend = match value.trim().to_ascii_lowercase().as_str() {
                "registry" | "avro_schema_registry" => SchemaBackend::Registry,
                "local" | "avro_local" => SchemaBackend::Local,
                "validation" | "avro_validation" => SchemaBackend::Validation,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: "DIONYSUS_SCHEMA_BACKEND".to_owned(),
                        value,
                        expected: "one of registry, local, validation".to_owned(),
                    })
                }
            };
        }
        if let Some(value) = lookup("DIONYSUS_SCHEMA_REGISTRY_URL") {
            self.schemas.registry_url = non_empty("DIONYSUS_SCHEMA_REGISTRY_URL", value)?;
        }
        let consumer = &mut self.consumer;
        let mut checkpoint_attempts = consumer.checkpoint_attempts as usize;
        env.count("DIONYSUS_CHECKPOINT_ATTEMPTS", &mut checkpoint_attempts, 1)?;
        consumer.checkpoint_attempts = u32::try_from(checkpoint_attempts).map_err(|_| ConfigError::Invalid {
            var: "DIONYSUS_CHECKPOINT_ATTEMPTS".to_owned(),
            value: checkpoint_attempts.to_string(),
            expected: format!("an integer between 1 and {}", u32::MAX),
        })?;
        Ok(())
    }
}

/// `DIONYSUS_KAFKA_SECURITY_PROTOCOL=ssl` → `security.protocol = ssl`.
fn kafka_properties<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    vars.filter_map(|(name, value)| {
        let property = name.strip_prefix("DIONYSUS_KAFKA_")?;
        Some((property.to_ascii_lowercase().replace('_', "."), value.to_owned()))
    })
    .collect()
}

impl Config {
    /// Adds the `DIONYSUS_KAFKA_<PROPERTY>` variables of the process environment.
    pub fn with_env_kafka_properties(mut self) -> Config {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        self.kafka.properties.extend(kafka_properties(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        self
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

#[derive(Copy, Clone)]
pub(crate) enum Unit {
    Millis,
    Seconds,
}

impl Env<'_> {
    fn string(&self, var: &str, field: &mut String) -> Result<(), ConfigError> {
        if let Some(value) = (self.0)(var) {
            *field = non_empty(var, value)?;
        }
        Ok(())
    }

    fn count(&self, var: &str, field: &mut usize, minimum: usize) -> Result<(), ConfigError> {
        if let Some(value) = (self.0)(var) {
            *field = value.trim().parse::<usize>().ok().filter(|n| *n >= minimum).ok_or_else(|| {
                ConfigError::Invalid { var: var.to_owned(), value, expected: format!("an integer ≥ {minimum}") }
            })?;
        }
        Ok(())
    }

    fn boolean(&self, var: &str, field: &mut bool) -> Result<(), ConfigError> {
        if let Some(value) = (self.0)(var) {
            *field = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        var: var.to_owned(),
                        value,
                        expected: "a boolean: true/false, 1/0, yes/no or on/off".to_owned(),
                    })
                }
            };
        }
        Ok(())
    }

    fn duration(&self, var: &str, unit: Unit, field: &mut Duration) -> Result<(), ConfigError> {
        if let Some(value) = (self.0)(var) {
            *field = parse_duration(var, &value, unit)?;
        }
        Ok(())
    }
}

fn non_empty(var: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(ConfigError::Invalid { var: var.to_owned(), value, expected: "a non-empty value".to_owned() })
    } else {
        Ok(value)
    }
}

pub(crate) fn parse_brokers(var: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let brokers: Vec<String> =
        value.split([';', ',']).map(str::trim).filter(|b| !b.is_empty()).map(str::to_owned).collect();
    let invalid = |expected: &str| ConfigError::Invalid {
        var: var.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    };
    if brokers.is_empty() {
        return Err(invalid("at least one broker as host:port (several separated by `;` or `,`)"));
    }
    for broker in &brokers {
        if broker.contains("://") {
            return Err(invalid("host:port without a protocol, e.g. 127.0.0.1:9092"));
        }
        let port_ok =
            broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid("host:port pairs, e.g. kafka-1:9092;kafka-2:9092"));
        }
    }
    Ok(brokers)
}

/// Parses `1.5`, `500ms`, `10s`, `90m`, `2h`, `0.5d`; a bare number is in `default_unit`.
pub(crate) fn parse_duration(var: &str, value: &str, default_unit: Unit) -> Result<Duration, ConfigError> {
    let text = value.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match (unit.trim(), default_unit) {
        ("", Unit::Millis) | ("ms", _) => 0.001,
        ("", Unit::Seconds) | ("s", _) => 1.0,
        ("m" | "min", _) => 60.0,
        ("h", _) => 3600.0,
        ("d", _) => 86_400.0,
        _ => f64::NAN,
    };
    let bare_unit = match default_unit {
        Unit::Millis => "milliseconds",
        Unit::Seconds => "seconds",
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * seconds_per_unit)
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| ConfigError::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            expected: format!(
                "a number of {bare_unit} or a duration with a unit (ms, s, m, h, d), e.g. 500ms, 10s, 1.5m"
            ),
        })
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact(&self.database_url))
            .field("kafka", &self.kafka)
            .field("producer", &self.producer)
            .field("consumer", &self.consumer)
            .field("schemas", &self.schemas)
            .finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, String> =
            self.properties.iter().map(|(name, value)| (name.as_str(), shown_value(name, value))).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("consumer_group_prefix", &self.consumer_group_prefix)
            .field("group_id", &self.group_id)
            .field("session_timeout", &self.session_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("group_instance_id", &self.group_instance_id)
            .field("properties", &properties)
            .finish()
    }
}

/// What a redacted secret is shown as.
pub(crate) const REDACTED: &str = "***";

/// Whether a setting named `name` (a librdkafka property, a connection keyword, an
/// environment variable) holds a secret: its name contains `password`, `passwd`, `secret`,
/// `key` or `token`, in any case. `passfile` (a path) is not a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "key", "token"].iter().any(|word| name.contains(word))
}

/// `text` with every secret it carries replaced by `***`, for messages and logs.
///
/// Recognised, anywhere in the text:
/// * the password of a URL's userinfo: `postgres://user:secret@host/db`;
/// * `name=value` pairs whose name is a secret's (it contains `password`, `passwd`, `secret`,
///   `key` or `token`, in any case), as URL query parameters
///   (`?password=…&sslpassword=…`), connection-string keywords (`password=…`,
///   `password = '…'` with quotes and backslash escapes) and Kafka properties
///   (`sasl.password=…`, `ssl.key.password=…`, `sasl.oauthbearer.client.secret=…`).
///
/// Everything else (hosts, users, database names, `passfile`) is kept, so the message still
/// says where it went wrong. Every error and log line that may carry a connection string or
/// Kafka settings goes through here.
pub fn redact(text: &str) -> String {
    static USERINFO: OnceLock<Option<Regex>> = OnceLock::new();
    static PAIR: OnceLock<Option<Regex>> = OnceLock::new();
    // scheme://user:password@ — a password ends at the last `@` before the path, query or
    // fragment (an unencoded `@` in it stays hidden).
    let userinfo =
        USERINFO.get_or_init(|| Regex::new(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)[^\s/?#]*@").ok());
    // name = value, the value quoted ('…' or "…", backslash escapes) or up to a separator.
    let pair = PAIR.get_or_init(|| {
        Regex::new(
            r#"(?P<name>[A-Za-z0-9_.\-]+)(?P<eq>[ \t]*=[ \t]*)(?P<value>'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;,'"]*)"#,
        )
        .ok()
    });
    // The patterns are constant; were one ever rejected, nothing of the text is shown.
    let (Some(userinfo), Some(pair)) = (userinfo, pair) else { return REDACTED.to_owned() };
    let text = userinfo.replace_all(text, |captures: &regex::Captures<'_>| format!("{}{REDACTED}@", &captures["head"]));
    pair.replace_all(&text, |captures: &regex::Captures<'_>| {
        let name = &captures["name"];
        if is_secret_name(name) && !captures["value"].is_empty() {
            format!("{name}{}{REDACTED}", &captures["eq"])
        } else {
            captures[0].to_owned()
        }
    })
    .into_owned()
}

/// A setting's value as `Debug` shows it: [`REDACTED`] for a secret's, else [`redact`]ed.
/// (Errors about a secret setting describe its value instead of repeating it.)
fn shown_value(var: &str, value: &str) -> String {
    if is_secret_name(var) {
        REDACTED.to_owned()
    } else {
        redact(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    #[test]
    fn encryption_keys_are_read_current_first_and_never_echoed() {
        const VAR: &str = "DIONYSUS_OUTBOX_ENCRYPTION_KEYS";
        assert!(Config::default().producer.outbox_encryption_keys.is_empty(), "off by default");
        let config = from(&[(
            VAR,
            "new:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=, old:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        )])
        .unwrap();
        let keys = &config.producer.outbox_encryption_keys;
        assert_eq!(keys.current().map(|key| key.id.as_str()), Some("new"));
        assert_eq!(keys.get("old").map(|key| key.secret), Some([1; 32]));
        assert!(!format!("{keys:?}").contains("AQEB"), "Debug redacts the secrets");
        let short = from(&[(VAR, "k:c2VjcmV0")]).unwrap_err().to_string();
        assert_eq!(
            short,
            "DIONYSUS_OUTBOX_ENCRYPTION_KEYS=\"key `k` of 6 bytes\" is not valid: expected standard base64 of exactly 32 bytes"
        );
        let unpaired = from(&[(VAR, "c2VjcmV0")]).unwrap_err().to_string();
        assert!(!unpaired.contains("c2VjcmV0"), "{unpaired}");
        let twice = "a:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=,a:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        assert!(from(&[(VAR, twice)]).is_err());
    }

    #[test]
    fn defaults_mirror_the_gem() {
        let config = Config::default();
        assert_eq!(config.producer.batch_size, 1000);
        assert_eq!(config.producer.lock_expiry, Duration::from_secs(10));
        assert_eq!(config.producer.soft_delete_column, "canceled_at");
        assert_eq!(config.producer.default_partition_key, "account_id");
        assert_eq!(config.producer.idle_sleep, Duration::from_millis(50));
        assert!(!config.producer.publish_after_commit);
        assert_eq!(config.producer.publishing_delay, Duration::ZERO);
        assert!(!config.producer.remove_consecutive_duplicates);
        assert_eq!(config.producer.observers_inline_maximum_size, 1000);
        assert!(config.producer.transactional_outbox_enabled);
        assert_eq!(config.producer.genesis_consistency_safety_delay, Duration::from_secs(60));
        assert_eq!(config.consumer.soft_deleted_at_attribute, "synced_canceled_at");
        assert_eq!(config.kafka.consumer_group_prefix, "dionysus_consumer_group_for");
    }

    #[test]
    fn group_id_defaults_to_the_gems_karafka_name() {
        let config = from(&[("DIONYSUS_CLIENT_ID", "dionysus_test")]).unwrap();
        assert_eq!(config.kafka.group_id(), "dionysus_test_dionysus_consumer_group_for_dionysus_test");
        let config = from(&[("DIONYSUS_CLIENT_ID", "app"), ("DIONYSUS_CONSUMER_GROUP_ID", "explicit")]).unwrap();
        assert_eq!(config.kafka.group_id(), "explicit");
    }

    #[test]
    fn environment_overrides_defaults() {
        let config = from(&[
            ("DATABASE_URL", "postgres://u@db/app"),
            ("DIONYSUS_SEED_BROKER", "k1:9092;k2:9093"),
            ("DIONYSUS_OUTBOX_BATCH_SIZE", "250"),
            ("DIONYSUS_LOCK_EXPIRY_MS", "2500"),
            ("DIONYSUS_OUTBOX_WORKER_SLEEP_SECONDS", "1.5"),
            ("DIONYSUS_OUTBOX_PUBLISHING_DELAY_SECONDS", "2m"),
            ("DIONYSUS_PUBLISH_AFTER_COMMIT", "yes"),
            ("DIONYSUS_RB_THREADS_NUMBER", "4"),
            ("DIONYSUS_OUTBOX_RETENTION_SECONDS", "off"),
            ("DIONYSUS_KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("DIONYSUS_SYNCED_UPDATED_AT_ATTRIBUTE", "remote_updated_at"),
            ("DIONYSUS_SYNCED_DATA_ATTRIBUTE", "payload"),
        ])
        .unwrap();
        assert_eq!(config.consumer.synced_updated_at_attribute, "remote_updated_at");
        assert_eq!(config.consumer.synced_data_attribute, "payload");
        assert_eq!(config.consumer.synced_id_attribute, "synced_id");
        assert_eq!(config.database_url, "postgres://u@db/app");
        assert_eq!(config.kafka.brokers, ["k1:9092", "k2:9093"]);
        assert_eq!(config.kafka.bootstrap_servers(), "k1:9092,k2:9093");
        assert_eq!(config.producer.batch_size, 250);
        assert_eq!(config.producer.lock_expiry, Duration::from_millis(2500));
        assert_eq!(config.producer.idle_sleep, Duration::from_millis(1500));
        assert_eq!(config.producer.publishing_delay, Duration::from_secs(120));
        assert!(config.producer.publish_after_commit);
        assert_eq!(config.producer.relay_workers, 4);
        assert_eq!(config.producer.retention, None);
        let zero = from(&[("DIONYSUS_OUTBOX_RETENTION_SECONDS", "0")]).unwrap();
        assert_eq!(zero.producer.retention, Some(Duration::ZERO), "zero deletes rows as they are published");
        assert_eq!(config.kafka.properties.get("security.protocol").map(String::as_str), Some("ssl"));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_expected_form() {
        let cases: &[(&str, &str, &str)] = &[
            ("DIONYSUS_OUTBOX_BATCH_SIZE", "0", "an integer ≥ 1"),
            ("DIONYSUS_OUTBOX_BATCH_SIZE", "many", "an integer ≥ 1"),
            ("DIONYSUS_LOCK_EXPIRY_MS", "soon", "a number of milliseconds"),
            ("DIONYSUS_PUBLISH_AFTER_COMMIT", "maybe", "a boolean"),
            ("DIONYSUS_SEED_BROKER", "kafka://k1:9092", "without a protocol"),
            ("DIONYSUS_SEED_BROKER", "k1", "host:port"),
            ("DIONYSUS_CLIENT_ID", " ", "a non-empty value"),
            ("DIONYSUS_OUTBOX_WORKER_SLEEP_SECONDS", "-1", "a number of seconds"),
            ("DIONYSUS_SCHEMA_BACKEND", "confluent", "one of registry, local, validation"),
            ("DIONYSUS_SCHEMA_REGISTRY_URL", " ", "a non-empty value"),
        ];
        for (var, value, expected) in cases {
            let error = from(&[(var, value)]).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with(&format!("{var}=")), "{text}");
            assert!(text.contains(expected), "{var}={value}: {text}");
        }
    }

    #[test]
    fn group_membership_defaults_bound_a_dead_consumers_pause() {
        let config = Config::default();
        assert_eq!(config.kafka.session_timeout, Duration::from_secs(6));
        assert_eq!(config.kafka.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(config.kafka.group_instance_id, None);
        let config = from(&[
            ("DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS", "10s"),
            ("DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS", "2500"),
            ("DIONYSUS_CONSUMER_GROUP_INSTANCE_ID", "replicas-0"),
        ])
        .unwrap();
        assert_eq!(config.kafka.session_timeout, Duration::from_secs(10));
        assert_eq!(config.kafka.heartbeat_interval, Duration::from_millis(2500));
        assert_eq!(config.kafka.group_instance_id.as_deref(), Some("replicas-0"));
    }

    #[test]
    fn heartbeat_must_be_shorter_than_the_session() {
        let error = from(&[
            ("DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
            ("DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS", "6s"),
        ])
        .unwrap_err();
        assert!(error.to_string().starts_with("DIONYSUS_CONSUMER_HEARTBEAT_INTERVAL_MS="), "{error}");
        assert!(error.to_string().contains("shorter than the session timeout (6000 ms)"), "{error}");
        let error = from(&[("DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(error.to_string().starts_with("DIONYSUS_CONSUMER_SESSION_TIMEOUT_MS="), "{error}");
        let error = from(&[("DIONYSUS_CONSUMER_GROUP_INSTANCE_ID", " ")]).unwrap_err();
        assert!(error.to_string().contains("a non-empty value"), "{error}");
    }

    #[test]
    fn checkpoint_settings_are_read_and_checked() {
        let config = Config::default();
        assert_eq!(config.consumer.checkpoint_on_failure, FailurePolicy::Record);
        assert_eq!(config.consumer.checkpoint_attempts, 3);
        let config =
            Config::from_vars([("DIONYSUS_CHECKPOINT_ON_FAILURE", "block"), ("DIONYSUS_CHECKPOINT_ATTEMPTS", "1")])
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.consumer.checkpoint_on_failure, FailurePolicy::Block);
        assert_eq!(config.consumer.checkpoint_attempts, 1);
        for (var, value) in [("DIONYSUS_CHECKPOINT_ON_FAILURE", "retry"), ("DIONYSUS_CHECKPOINT_ATTEMPTS", "0")] {
            let error = Config::from_vars([(var, value)]).err().unwrap_or_else(|| panic!("{var}={value} accepted"));
            assert!(error.to_string().contains(var), "{error}");
        }
        for policy in [FailurePolicy::Block, FailurePolicy::DeadLetter, FailurePolicy::Record] {
            assert_eq!(policy.name().parse::<FailurePolicy>(), Ok(policy));
        }
    }

    #[test]
    fn backoff_cap_below_base_is_rejected() {
        let error =
            from(&[("DIONYSUS_RETRY_BACKOFF_BASE_SECONDS", "60"), ("DIONYSUS_RETRY_BACKOFF_CAP_SECONDS", "10")])
                .unwrap_err();
        assert!(error.to_string().contains("at least as long as the backoff base"), "{error}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn redact_hides_a_url_userinfo_password() {
        assert_eq!(redact("postgres://u:s3cr%40t@db.internal:5432/app"), "postgres://u:***@db.internal:5432/app");
        assert_eq!(redact("cannot reach postgresql://u:p@ss@h/db now"), "cannot reach postgresql://u:***@h/db now");
        assert_eq!(redact("postgres://u@h:5432/db"), "postgres://u@h:5432/db", "no password, nothing hidden");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db", "a port is not a password");
    }

    #[test]
    fn redact_hides_password_query_parameters() {
        assert_eq!(
            redact("postgres://u@h/db?password=hunter2&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&sslpassword=k3y&passfile=/run/pgpass"),
            "postgres://u@h/db?sslmode=require&sslpassword=***&passfile=/run/pgpass",
            "passfile is a path and stays"
        );
    }

    #[test]
    fn redact_hides_key_value_connection_string_passwords() {
        assert_eq!(redact("host=h user=u password=hunter2 dbname=app"), "host=h user=u password=*** dbname=app");
        assert_eq!(redact("host=h password = hunter2"), "host=h password = ***");
        assert_eq!(redact(r"host=h password='it\'s a secret' dbname=app"), "host=h password=*** dbname=app");
        assert_eq!(redact(r#"host=h password="two words" port=5432"#), "host=h password=*** port=5432");
        assert_eq!(redact("host=h PASSWORD=x sslpassword=y"), "host=h PASSWORD=*** sslpassword=***");
        assert_eq!(redact("host=h password=''"), "host=h password=***");
    }

    #[test]
    fn redact_hides_secret_kafka_properties() {
        let text = "sasl.password=p1 sasl.username=bob ssl.key.password=p2 sasl.oauthbearer.client.secret=p3 \
                    sasl.oauthbearer.token.endpoint.url=https://idp security.protocol=SASL_SSL";
        let redacted = redact(text);
        for secret in ["p1", "p2", "p3", "https://idp"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(
            redacted.contains("sasl.username=bob") && redacted.contains("security.protocol=SASL_SSL"),
            "{redacted}"
        );
        assert_eq!(redact("DIONYSUS_KAFKA_SASL_PASSWORD=x"), "DIONYSUS_KAFKA_SASL_PASSWORD=***");
        assert!(is_secret_name("SSL_KEY_PASSWORD") && is_secret_name("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_name("passfile") && !is_secret_name("security.protocol"));
    }

    #[test]
    fn config_debug_and_errors_hide_secrets() {
        let mut config = Config { database_url: "postgres://u:hunter2@h/db".to_owned(), ..Config::default() };
        config.kafka.properties.insert("sasl.password".to_owned(), "p1".to_owned());
        config.kafka.properties.insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("p1"), "{debug}");
        assert!(debug.contains("SASL_SSL") && debug.contains("postgres://u:***@h/db"), "{debug}");
        let error = ConfigError::Invalid {
            var: "DATABASE_URL".to_owned(),
            value: "host=h password=hunter2".to_owned(),
            expected: "x".to_owned(),
        };
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
