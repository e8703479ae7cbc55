//! The consumer itself: its builder, its settings and how one batch is applied — prepared,
//! written in one transaction with its stored offset, retried or split when the database
//! refuses it, and announced after the commit. Reading Kafka and keeping partitions moving is
//! `runtime`'s; turning records into row changes is `replica`'s.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection, TransactionManager};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures_util::future::{BoxFuture, FutureExt, TryFutureExt};
use tokio_util::sync::CancellationToken;

/// The transaction manager of the consumer's connections.
type Transactions = <AsyncPgConnection as AsyncConnection>::TransactionManager;

use super::batch::{DeadLetter, InboundMessage, PreparedBatch, Rules, UnknownModel};
use super::cascade::{self, Cascade, CascadeError};
use super::events::{ConsumedEvent, MessageFilter, Notification};
use super::handler::{handlers, Context, FailurePolicy, HandlerDeclaration, HandlerError};
use super::reply::{self, Cause, ComposedRow, Failure, ReplyError};
use super::{batch, checkpoint, declarations, handler, progress, replica};

use crate::config::Config;
use crate::consumer::replica::{sql, Replicas};
use crate::db::{DbError, Pool};
use crate::handle::Dionysus;
use crate::registry::Registry;
use crate::telemetry::{Report, Unhealthy};

/// A consumer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// A database operation on a batch failed.
    #[error("{step} (group {group}, {topic}/{partition}, offsets {first_offset}..={last_offset})")]
    Database {
        /// What was being done.
        step: BatchStep,
        /// The consumer group.
        group: String,
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: i32,
        /// The batch's first offset.
        first_offset: i64,
        /// The batch's last offset.
        last_offset: i64,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The broker client could not be set up.
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
    /// No database connection could be had.
    #[error(transparent)]
    Pool(#[from] DbError),
    /// Subscribing to the topics failed.
    #[error("subscribing to {topics:?}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// rdkafka's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A message could not be sent to the dead-letter topic; its partition waits.
    #[error("sending {topic}/{partition}@{offset} to the dead-letter topic {dead_letter_topic} ({attempts} attempts)")]
    DeadLetter {
        /// Topic of the message.
        topic: String,
        /// Partition of the message.
        partition: i32,
        /// Offset of the message.
        offset: i64,
        /// The dead-letter topic.
        dead_letter_topic: String,
        /// Attempts made.
        attempts: u32,
        /// rdkafka's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A handler running inside the batch's transaction failed on a message; the batch was
    /// rolled back.
    #[error("handler {handler} failed on {topic}/{partition}@{offset}")]
    Handler {
        /// Path of the handler function.
        handler: &'static str,
        /// Topic of the message.
        topic: String,
        /// Partition of the message.
        partition: i32,
        /// Offset of the message.
        offset: i64,
        /// The event's name.
        event: String,
        /// What went wrong.
        #[source]
        source: HandlerError,
    },
    /// A checkpointed handler with the `block` failure policy failed on a message after its
    /// tries; the batch was rolled back and its partition waits, retrying.
    #[error("checkpointed handler {handler} failed on {topic}/{partition}@{offset}; its partition waits (on_failure = block)")]
    HandlerBlocked {
        /// Path of the handler function.
        handler: &'static str,
        /// Topic of the message.
        topic: String,
        /// Partition of the message.
        partition: i32,
        /// Offset of the message.
        offset: i64,
        /// What went wrong.
        #[source]
        source: HandlerError,
    },
    /// The replies or error events of a batch could not be written (an undeclared reply
    /// topic, the database): the batch was rolled back and waits; nothing is dead-lettered.
    #[error("writing the replies or error events of {topic}/{partition}@{offset}")]
    Reply {
        /// Topic of the message.
        topic: String,
        /// Partition of the message.
        partition: i32,
        /// Offset of the message.
        offset: i64,
        /// What went wrong.
        #[source]
        source: ReplyError,
    },
    /// The cascades of a batch could not be written (their related records could not be
    /// loaded, or the outbox rows not inserted): the batch was rolled back and waits;
    /// nothing is dead-lettered.
    #[error("cascading from {topic}/{partition}, offsets {first_offset}..={last_offset}")]
    Cascade {
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: i32,
        /// The batch's first offset.
        first_offset: i64,
        /// The batch's last offset.
        last_offset: i64,
        /// What went wrong.
        #[source]
        source: Box<CascadeFailure>,
    },
    /// A cascade republishes a model that is published on no topic.
    #[error(
        "{declared_by} republishes `{related}`, which no `#[publish(...)]` publishes; \
         add one to `{related}` or remove the cascade"
    )]
    CascadeNotPublished {
        /// Who declared the cascade.
        declared_by: String,
        /// The related model.
        related: &'static str,
    },
    /// The topic given to [`ConsumerBuilder::error_events_topic`] is not declared.
    #[error("error events go to `{topic}`, which is not a declared topic; declared: {known}")]
    ErrorEventsTopic {
        /// The topic given.
        topic: String,
        /// The declared topics.
        known: String,
    },
    /// The targets of the group's reinit could not be read when the consumer started.
    #[error(
        "reading the reinit targets of group {group} (table dionysus_reinit; run `dionysus migrate` if it is missing)"
    )]
    ReinitTargets {
        /// The consumer group.
        group: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The consumer was built without topics to read.
    #[error("no topics to consume: declare a replica model with #[derive(Consume)] or add topics to the builder")]
    NoTopics,
    /// The declarations of the topics the consumer reads have problems (a topic declared
    /// twice, a replica or handler naming a topic no `#[dionysus::topic]` declares).
    #[error(transparent)]
    Declarations(#[from] crate::registry::RegistryError),
    /// A replica table does not fit its model (found at start-up): each problem says its fix.
    #[error(transparent)]
    Setup(#[from] replica::SetupError),
    /// A batch failed, and a replica table it writes does not fit its model: the setup's
    /// fault, not the messages'. Nothing was dead-lettered or committed; the partition waits
    /// and retries until the table is fixed.
    #[error(
        "{step} failed (group {group}, {topic}/{partition}, offsets {first_offset}..={last_offset}: {failure}); \
         the partition waits until the replica tables are fixed"
    )]
    SetupFault {
        /// What was being done.
        step: BatchStep,
        /// The consumer group.
        group: String,
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: i32,
        /// The batch's first offset.
        first_offset: i64,
        /// The batch's last offset.
        last_offset: i64,
        /// The database's error on the batch.
        failure: Box<diesel::result::Error>,
        /// What is wrong with the tables.
        #[source]
        source: replica::SetupError,
    },
    /// The replica tables could not be checked against their models.
    #[error("checking the replica tables against their models")]
    TableCheck(#[source] diesel::result::Error),
    /// A replica model cannot work with the configured attribute names (C-11).
    #[error(transparent)]
    Replica(#[from] replica::names::ReplicaError),
    /// The Avro topics' schemas cannot be used (a local schema does not parse, the
    /// registry URL is not `http://host:port`).
    #[cfg(feature = "avro")]
    #[error("setting up the Avro topics' schemas")]
    AvroSetup(#[source] crate::avro::format::AvroError),
    /// The schema registry could not be reached while a batch of an Avro topic was read;
    /// nothing was dead-lettered or stored, and the partition waits and retries.
    #[cfg(feature = "avro")]
    #[error("reading {topic}/{partition} from offset {first_offset}: the schema registry cannot be reached; the partition waits")]
    SchemaRegistry {
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: i32,
        /// The batch's first offset.
        first_offset: i64,
        /// What failed.
        #[source]
        source: crate::avro::format::AvroError,
    },
    /// The consumer was asked to stop while a batch waited to be retried.
    #[error("stopping: the batch was left to be read again from the stored offset")]
    Stopped,
    /// The metrics/health listener could not start.
    #[error("cannot serve /metrics and /health on {address}")]
    Serve {
        /// The address.
        address: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a batch's cascades could not be written (in [`ConsumerError::Cascade`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CascadeFailure {
    /// The related records could not be loaded.
    #[error(transparent)]
    Load(#[from] CascadeError),
    /// The outbox rows could not be written.
    #[error(transparent)]
    Write(#[from] ReplyError),
}

impl CascadeFailure {
    /// The database error, if the database failed.
    fn database(&self) -> Option<&diesel::result::Error> {
        match self {
            CascadeFailure::Load(error) => Some(&error.source),
            CascadeFailure::Write(error) => error.database(),
        }
    }
}

/// A step of a batch's transaction (in [`ConsumerError::Database`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchStep {
    /// Beginning the transaction.
    Begin,
    /// Locking the partition's offset row.
    LockOffset,
    /// Taking the processing locks (`processing_mutex`).
    ProcessingLocks,
    /// Writing the replica rows.
    WriteRows,
    /// Storing the partition's next offset.
    StoreOffset,
    /// Committing.
    Commit,
    /// Storing the offset past a message that was dead-lettered alone.
    SkipRejected,
    /// Reading or writing the checkpoint log for a checkpointed handler.
    Checkpoint,
}

impl std::fmt::Display for BatchStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BatchStep::Begin => "beginning the batch transaction",
            BatchStep::LockOffset => "locking the partition's offset",
            BatchStep::ProcessingLocks => "taking processing locks",
            BatchStep::WriteRows => "writing replica rows",
            BatchStep::StoreOffset => "storing the offset",
            BatchStep::Commit => "committing the batch",
            BatchStep::SkipRejected => "storing the offset past a rejected message",
            BatchStep::Checkpoint => "writing the checkpoint log",
        })
    }
}

/// Event-bus subscriber: called after each committed batch (C-19).
pub type Subscriber = Arc<dyn Fn(Notification<'_>) + Send + Sync>;

/// Called after a batch's database commit, before the Kafka commit: `(topic, partition,
/// next offset)`. Returning [`AfterCommit::Halt`] stops the whole member there, without
/// Kafka commit or notifications, as if the process died (for crash tests).
#[doc(hidden)]
pub type AfterCommitHook = Arc<dyn Fn(&str, i32, i64) -> AfterCommit + Send + Sync>;

/// What a worker does after a batch's database commit.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    /// Commit to Kafka and go on.
    Continue,
    /// Stop without committing to Kafka.
    Halt,
}

/// Liveness of a running consumer: the time of its last poll of the broker.
#[derive(Debug, Clone)]
pub struct Health {
    started: Instant,
    last_poll_ms: Arc<AtomicI64>,
}

impl Health {
    fn new() -> Health {
        Health { started: Instant::now(), last_poll_ms: Arc::new(AtomicI64::new(-1)) }
    }

    pub(crate) fn beat(&self) {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last_poll_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Time since the consumer last polled the broker; `None` before the first poll.
    pub fn since_last_poll(&self) -> Option<Duration> {
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        let last = u64::try_from(last).ok()?;
        Some(self.started.elapsed().saturating_sub(Duration::from_millis(last)))
    }

    /// Whether the consumer polled within `max_silence` (a liveness probe).
    pub fn is_alive(&self, max_silence: Duration) -> bool {
        self.since_last_poll().is_some_and(|since| since <= max_silence)
    }
}

/// What applying one batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// The events processed, in order, with their local changes (what the event bus gets).
    pub events: Vec<ConsumedEvent>,
    /// Messages set aside for the dead-letter topic.
    pub dead_letters: Vec<DeadLetter>,
    /// Messages skipped because the stored offset shows they were applied already.
    pub already_applied: usize,
    /// The partition's next offset as stored.
    pub next_offset: Option<i64>,
}

/// Builds a [`Consumer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConsumerBuilder {
    config: Config,
    pool: Option<Pool>,
    replicas: Option<Replicas>,
    topics: Vec<String>,
    import_topics: HashSet<String>,
    filters: Vec<Arc<dyn MessageFilter>>,
    subscribers: Vec<Subscriber>,
    unknown_model: UnknownModel,
    processing_mutex: bool,
    kafka_properties: Vec<(String, String)>,
    after_commit: Option<AfterCommitHook>,
    handlers: bool,
    local_changes: Option<bool>,
    #[cfg(feature = "metrics")]
    serve: Option<std::net::SocketAddr>,
    health_file: Option<std::path::PathBuf>,
    registry: Option<Arc<Registry>>,
    error_events: bool,
    error_events_topic: Option<String>,
    replies: bool,
    cascades: Vec<Cascade>,
    cascades_on: bool,
}

impl ConsumerBuilder {
    /// Replaces the configuration given to [`Consumer::builder`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Uses this pool instead of one built from [`Config::database_url`].
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Replicates these models instead of every `#[derive(Consume)]` model of the binary.
    pub fn replicas(mut self, replicas: Replicas) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// Reads this topic; without any, the consumer reads the topics of its replica models.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Batch import mode for a topic (C-8): `_created` events are bulk-inserted (upserted
    /// without timestamp guard, `synced_data` or relationships) and `_destroyed` events
    /// bulk-deleted; `_updated` events take the normal path.
    pub fn import(mut self, topic: impl Into<String>) -> Self {
        self.import_topics.insert(topic.into());
        self
    }

    /// Adds a message filter (C-20).
    pub fn filter(mut self, filter: impl MessageFilter + 'static) -> Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// Adds an event-bus subscriber (C-19).
    pub fn subscribe(mut self, subscriber: impl Fn(Notification<'_>) + Send + Sync + 'static) -> Self {
        self.subscribers.push(Arc::new(subscriber));
        self
    }

    /// What to do with events of models that have no replica (default: [`UnknownModel::Skip`],
    /// as dionysus-rb: skip them and apply the message's other events).
    pub fn unknown_model(mut self, policy: UnknownModel) -> Self {
        self.unknown_model = policy;
        self
    }

    /// Takes a PostgreSQL advisory lock named `Dionysus-<message key>` per message for the
    /// batch's transaction (C-3's processing mutex), so other processes taking the same locks
    /// exclude each other per record.
    pub fn processing_mutex(mut self, on: bool) -> Self {
        self.processing_mutex = on;
        self
    }

    /// Sets a librdkafka property of the consumer (after the configured ones).
    pub fn kafka_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka_properties.push((key.into(), value.into()));
        self
    }

    /// Whether `#[dionysus::consume]` handlers run (default: true).
    pub fn handlers(mut self, on: bool) -> Self {
        self.handlers = on;
        self
    }

    /// Whether events carry their local changes (C-15). By default they do exactly when
    /// someone can see them: an event-bus subscriber, or a handler of a consumed topic.
    ///
    /// Local changes need every row read before it is written. Without them a batch is
    /// written blind, in one statement per table, and PostgreSQL applies the timestamp guard
    /// (several times faster). Turn them off when your subscribers do not look at
    /// `local_changes`; events then report none.
    pub fn local_changes(mut self, on: bool) -> Self {
        self.local_changes = Some(on);
        self
    }

    /// Serves `/metrics` (Prometheus, through [`crate::telemetry::prometheus`]) and `/health`
    /// on this address while the consumer runs. `/health` answers 200 while
    /// [`Consumer::check_health`] does, else 503 with its reason. With the `metrics` feature.
    #[cfg(feature = "metrics")]
    pub fn serve(mut self, address: std::net::SocketAddr) -> Self {
        self.serve = Some(address);
        self
    }

    /// Keeps a liveness file at this path while the consumer is healthy (see
    /// [`Consumer::check_health`]); it is removed when the consumer stalls or stops.
    pub fn health_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.health_file = Some(path.into());
        self
    }

    /// Checks these declarations instead of the binary's ([`Registry::global`]) when the
    /// consumer is built (see [`ConsumerBuilder::build`]).
    pub fn registry(mut self, registry: impl Into<Arc<Registry>>) -> Self {
        self.registry = Some(registry.into());
        self
    }

    /// Whether a handler's failure publishes an error event, `event.error.<event name>`, for
    /// every handler (default: false; a handler can opt in alone with `error_events`). The
    /// error event carries the error, the cause's value and `meta`, and goes through the
    /// outbox: for an `in_transaction` handler in the transaction that stores the offset
    /// past the message (which also goes to the dead-letter topic), for the others right
    /// after the handler fails. See [`Reply`](super::Reply) for the wire shape.
    pub fn error_events(mut self, on: bool) -> Self {
        self.error_events = on;
        self
    }

    /// The topic error events go to (a declared topic; default: the cause's topic).
    pub fn error_events_topic(mut self, topic: impl Into<String>) -> Self {
        self.error_events_topic = Some(topic.into());
        self
    }

    /// Whether handlers' replies and error events are written (default: true). Off, they
    /// are dropped (a replay that must not publish again).
    pub fn replies(mut self, on: bool) -> Self {
        self.replies = on;
        self
    }

    /// Runs this cascade besides the ones declared with `cascade(...)` in the `#[consume]`
    /// declarations of the binary (see [`Cascade`]).
    pub fn cascade(mut self, cascade: Cascade) -> Self {
        self.cascades.push(cascade);
        self
    }

    /// Whether cascades run (default: true). Off, a batch republishes no related records
    /// (a replay that must not publish again).
    pub fn cascades(mut self, on: bool) -> Self {
        self.cascades_on = on;
        self
    }

    #[doc(hidden)]
    pub fn after_db_commit(mut self, hook: impl Fn(&str, i32, i64) -> AfterCommit + Send + Sync + 'static) -> Self {
        self.after_commit = Some(Arc::new(hook));
        self
    }

    /// The consumer, once its declarations are checked: a problem of the registry that
    /// concerns a topic it reads fails the build ([`ConsumerError::Declarations`]); a handler
    /// waiting for an event that no model declared on its topic emits is logged as a warning
    /// (another service may send it). Its replica tables are checked when it runs
    /// ([`Consumer::check_tables`]).
    pub fn build(self) -> Result<Consumer, ConsumerError> {
        let pool = match self.pool {
            Some(pool) => pool,
            None => crate::db::pool(&self.config.database_url, 8)?,
        };
        let declared = self.replicas.as_ref().unwrap_or_else(|| Replicas::global());
        let mut topics = self.topics;
        if topics.is_empty() {
            for replica in declared.iter() {
                if !topics.iter().any(|topic| topic == replica.topic) {
                    topics.push(replica.topic.to_owned());
                }
            }
        }
        let replicas = declared.configured(&self.config.consumer, &topics)?;
        let registry: &Registry = self.registry.as_deref().unwrap_or_else(|| Registry::global());
        declarations::registry_problems(registry, &topics)?;
        if let Some(topic) = self.error_events_topic.as_deref().filter(|topic| registry.resolve(topic).is_none()) {
            return Err(ConsumerError::ErrorEventsTopic {
                topic: topic.to_owned(),
                known: registry.topic_names().join(", "),
            });
        }
        #[cfg(feature = "avro")]
        let avro = {
            let models: Vec<(&str, &'static str)> =
                declared.iter().map(|replica| (replica.topic, replica.model)).collect();
            crate::consumer::avro::AvroTopics::new(&self.config.schemas, registry, &models, &topics)
                .map_err(ConsumerError::AvroSetup)?
                .map(Arc::new)
        };
        let consumed_handlers = handlers().filter(|handler| self.handlers && topics.iter().any(|t| t == handler.topic));
        let declared_replicas: Vec<_> = declared.iter().collect();
        for warning in declarations::handler_warnings(registry, &declared_replicas, consumed_handlers) {
            tracing::warn!(handler = warning.handler, topic = warning.topic, event = warning.event, "{warning}");
        }
        let mut rules = Rules {
            replicas,
            import_topics: self.import_topics,
            filters: self.filters,
            remove_duplicates: self.config.consumer.remove_duplicates,
            max_message_bytes: self.config.consumer.max_message_bytes,
            max_records: self.config.consumer.max_records_per_message,
            unknown_model: self.unknown_model,
            processing_mutex: self.processing_mutex,
            max_future_skew: self.config.consumer.max_future_skew,
            column_types: sql::ColumnTypes::default(),
            track_changes: self.local_changes.unwrap_or_else(|| {
                !self.subscribers.is_empty()
                    || (self.handlers && handlers().any(|handler| topics.iter().any(|topic| *topic == handler.topic)))
            }),
            records_unread: false,
        };
        let (in_transaction, after_commit): (Vec<_>, Vec<_>) =
            handlers().filter(|_| self.handlers).partition(|handler| handler.in_transaction);
        // Declared cascades of the replicas this consumer writes and, with handlers on, of
        // its handlers; then the builder's.
        let mut cascades: Vec<Cascade> = cascade::declarations()
            .filter(|declaration| topics.iter().any(|topic| topic == declaration.topic))
            .filter(|declaration| {
                if declaration.by_replica {
                    declared.iter().any(|replica| replica.declared_by == declaration.declared_by)
                } else {
                    self.handlers
                }
            })
            .map(Cascade::declared)
            .collect();
        cascades.extend(self.cascades);
        if let Some(unpublished) =
            cascades.iter().find(|cascade| registry.publications_of(cascade.related().model_name).next().is_none())
        {
            return Err(ConsumerError::CascadeNotPublished {
                declared_by: unpublished.declared_by().to_owned(),
                related: unpublished.related().model_name,
            });
        }
        let cascades = if self.cascades_on { cascades } else { Vec::new() };
        let reads_topic = |handler: &&HandlerDeclaration| topics.iter().any(|topic| *topic == handler.topic);
        rules.records_unread = !rules.track_changes
            && rules.filters.is_empty()
            && self.subscribers.is_empty()
            && !in_transaction.iter().chain(&after_commit).any(reads_topic)
            && cascades.is_empty();
        let progress = Arc::new(progress::Progress::new(self.config.consumer.stall_timeout));
        Ok(Consumer {
            inner: Arc::new(Inner {
                progress,
                group: self.config.kafka.group_id(),
                config: self.config,
                pool,
                rules,
                topics,
                subscribers: self.subscribers,
                kafka_properties: self.kafka_properties,
                after_commit: self.after_commit,
                in_transaction,
                after_commit_handlers: after_commit,
                health: Health::new(),
                #[cfg(feature = "metrics")]
                serve: self.serve,
                health_file: self.health_file,
                registry: self.registry,
                error_events: self.error_events,
                error_events_topic: self.error_events_topic,
                replies: self.replies,
                #[cfg(feature = "avro")]
                avro,
                cascades,
                replaying: super::replaying::Replaying::default(),
            }),
        })
    }
}

#[derive(Clone)]
pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) group: String,
    pub(super) pool: Pool,
    pub(super) rules: Rules,
    pub(super) topics: Vec<String>,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) kafka_properties: Vec<(String, String)>,
    pub(super) after_commit: Option<AfterCommitHook>,
    /// Handlers of the consumed topics that run inside a batch's transaction.
    pub(super) in_transaction: Vec<&'static HandlerDeclaration>,
    /// Handlers of the consumed topics that run after a batch's commit.
    pub(super) after_commit_handlers: Vec<&'static HandlerDeclaration>,
    pub(super) health: Health,
    pub(super) progress: Arc<progress::Progress>,
    #[cfg(feature = "metrics")]
    pub(super) serve: Option<std::net::SocketAddr>,
    pub(super) health_file: Option<std::path::PathBuf>,
    /// The declarations replies are checked against (`None`: the binary's).
    pub(super) registry: Option<Arc<Registry>>,
    /// Error events for every handler's failures.
    pub(super) error_events: bool,
    /// Where error events go (`None`: the cause's topic).
    pub(super) error_events_topic: Option<String>,
    /// Whether replies and error events are written.
    pub(super) replies: bool,
    /// The consumed Avro topics, when there are any.
    #[cfg(feature = "avro")]
    pub(super) avro: Option<Arc<crate::consumer::avro::AvroTopics>>,
    /// The cascades a batch runs (none when they are suppressed).
    pub(super) cascades: Vec<Cascade>,
    /// The partitions a reinit replays, with their targets (loaded by `run`).
    pub(super) replaying: super::replaying::Replaying,
}

/// A consumer of replica topics. Cheap to clone.
#[derive(Clone)]
pub struct Consumer {
    pub(super) inner: Arc<Inner>,
}

/// What a failed database operation says about the batch, by the error's kind (the driver
/// derives it from the SQLSTATE), never by its text: PostgreSQL repeats the offending input
/// in its messages, so a message could otherwise choose its own verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not the messages' fault and worth retrying as is: no SQLSTATE at all (the connection
    /// broke), a closed connection, a serialization failure (40001), a read-only transaction
    /// (25006, a standby after a failover), a confused transaction state.
    Transient,
    /// The data is rejected: an integrity violation (23xxx) or a value that cannot be encoded.
    Rejected,
    /// A SQLSTATE the driver does not expose: a data exception (22xxx) as well as a deadlock
    /// (40P01), an unavailable lock (55P03), exhausted resources (53xxx) or an administrator's
    /// shutdown (57Pxx). Decided by isolating the message (see [`Consumer::apply_with_retry`]).
    Undetermined,
}

fn verdict(error: &diesel::result::Error) -> Verdict {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match error {
        Error::DatabaseError(kind, _) => match kind {
            Kind::SerializationFailure
            | Kind::ReadOnlyTransaction
            | Kind::ClosedConnection
            | Kind::UnableToSendCommand => Verdict::Transient,
            Kind::UniqueViolation
            | Kind::ForeignKeyViolation
            | Kind::NotNullViolation
            | Kind::CheckViolation
            | Kind::RestrictViolation
            | Kind::ExclusionViolation => Verdict::Rejected,
            _ => Verdict::Undetermined,
        },
        Error::SerializationError(_) => Verdict::Rejected,
        Error::BrokenTransactionManager | Error::AlreadyInTransaction | Error::NotInTransaction => Verdict::Transient,
        _ => Verdict::Undetermined,
    }
}

/// How often a message alone must fail with an [`Verdict::Undetermined`] error, the database
/// answering otherwise, before it is dead-lettered as `database_rejected`.
const REJECTION_CONFIRMATIONS: u32 = 3;

/// Whether a database error in `step` may be a message's fault: only writing the records and
/// committing them depend on what the messages say. The other steps (the transaction, the
/// partition's offset row, the processing locks) are the consumer's own statements, whose
/// failures are never dead-lettered.
fn messages_may_be_at_fault(step: BatchStep) -> bool {
    matches!(step, BatchStep::WriteRows | BatchStep::Commit)
}

/// `error`, a failed batch, as the fault of the tables described by `unfit`.
fn setup_fault(error: ConsumerError, unfit: replica::SetupError) -> ConsumerError {
    match error {
        ConsumerError::Database { step, group, topic, partition, first_offset, last_offset, source } => {
            ConsumerError::SetupFault {
                step,
                group,
                topic,
                partition,
                first_offset,
                last_offset,
                failure: Box::new(source),
                source: unfit,
            }
        }
        other => other,
    }
}

impl Consumer {
    /// How long a running consumer may go without polling the broker before `/health` and
    /// the liveness file call it unhealthy (it polls at least twice a second when idle).
    pub const HEALTH_SILENCE: Duration = Duration::from_secs(30);

    /// A builder for a consumer with `config` (group name, batch size, dead-letter topic…).
    pub fn builder(config: Config) -> ConsumerBuilder {
        ConsumerBuilder {
            config,
            pool: None,
            replicas: None,
            topics: Vec::new(),
            import_topics: HashSet::new(),
            filters: Vec::new(),
            subscribers: Vec::new(),
            unknown_model: UnknownModel::Skip,
            processing_mutex: false,
            kafka_properties: Vec::new(),
            after_commit: None,
            handlers: true,
            local_changes: None,
            #[cfg(feature = "metrics")]
            serve: None,
            health_file: None,
            registry: None,
            error_events: false,
            error_events_topic: None,
            replies: true,
            cascades: Vec::new(),
            cascades_on: true,
        }
    }

    /// The consumer group (`KafkaConfig::group_id`, CFG-2).
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// The topics it reads.
    pub fn topics(&self) -> &[String] {
        &self.inner.topics
    }

    /// Its liveness.
    pub fn health(&self) -> Health {
        self.inner.health.clone()
    }

    /// Whether the running consumer is healthy, as `/health` and the liveness file see it: it
    /// polled the broker within [`Consumer::HEALTH_SILENCE`] and every partition moves. Else
    /// the reason: no poll (or not running), a partition waiting on a batch that keeps
    /// failing for a reason that is not its messages' or on a dead letter that cannot be
    /// sent, or a partition that has not committed for
    /// [`ConsumerConfig::stall_timeout`](crate::config::ConsumerConfig::stall_timeout) while
    /// messages of it wait.
    pub fn check_health(&self) -> Result<(), Unhealthy> {
        if !self.inner.health.is_alive(Consumer::HEALTH_SILENCE) {
            return Err(Unhealthy::new(format!("no broker poll for {} s", Consumer::HEALTH_SILENCE.as_secs())));
        }
        self.inner.progress.check().map_err(Unhealthy::new)
    }

    /// Applies a batch of one partition's messages (ascending offsets) in one transaction,
    /// storing the partition's next offset with it, and then notifies subscribers and
    /// handlers. Dead letters are returned, not sent. This is what the Kafka loop does per
    /// batch; it is public for embedding and tests. A batch failing for a reason that is not
    /// its messages' is tried
    /// [`ConsumerConfig::retry_attempts`](crate::config::ConsumerConfig::retry_attempts) times,
    /// then the error is returned (the Kafka loop then lets the partition wait); one failing
    /// because a table it writes does not fit its model returns
    /// [`ConsumerError::SetupFault`] at once, with nothing dead-lettered or stored.
    #[doc(hidden)]
    pub async fn process_batch(&self, messages: &[InboundMessage]) -> Result<BatchOutcome, ConsumerError> {
        self.process(messages, true).await
    }

    /// [`Consumer::process_batch`] for a caller that does not look at the events, as the
    /// Kafka loop runs batches: when no one else reads them either (no local changes,
    /// filters, subscribers, handlers of the consumed topics or cascades), the usual batch
    /// is written straight from its messages, and the outcome's `events` is empty. The
    /// rows, offsets and dead letters are the same.
    #[doc(hidden)]
    pub async fn process_batch_unobserved(&self, messages: &[InboundMessage]) -> Result<BatchOutcome, ConsumerError> {
        self.process(messages, false).await
    }

    async fn process(&self, messages: &[InboundMessage], observed: bool) -> Result<BatchOutcome, ConsumerError> {
        let never = CancellationToken::new();
        #[cfg(feature = "avro")]
        let translated = self.translate(messages).await?;
        #[cfg(feature = "avro")]
        let messages = translated.as_ref().map_or(messages, |translated| &translated.messages[..]);
        #[allow(unused_mut, reason = "changed only with the avro feature")]
        let mut outcome =
            self.apply_with_retry(messages, &mut |_| Box::pin(async { Ok(()) }), &never, observed).await?;
        #[cfg(feature = "avro")]
        if let Some(translated) = &translated {
            outcome.dead_letters = outcome.dead_letters.iter().map(|dead| translated.original(dead)).collect();
        }
        self.notify(messages, &outcome.events).await;
        Ok(outcome)
    }

    /// The batch with the messages of Avro topics restated as envelopes (`None` when the
    /// consumer reads no Avro topic); an error when the schema registry cannot be reached.
    #[cfg(feature = "avro")]
    pub(super) async fn translate(
        &self,
        messages: &[InboundMessage],
    ) -> Result<Option<crate::consumer::avro::Translated>, ConsumerError> {
        let Some(avro) = &self.inner.avro else { return Ok(None) };
        let Some(first) = messages.first() else { return Ok(None) };
        match avro.translate(messages).await {
            Ok(translated) => Ok(Some(translated)),
            Err(source) => Err(ConsumerError::SchemaRegistry {
                topic: first.topic.clone(),
                partition: first.partition,
                first_offset: first.offset,
                source,
            }),
        }
    }

    /// One transaction for the batch; dead letters are handed to `dead_letter` before commit.
    /// Unless the caller looks at the events (`observed`), a batch no one reads is written
    /// straight from its messages when it can be ([`direct`](super::direct)); its events
    /// are then not reported.
    async fn apply_once(
        &self,
        conn: &mut AsyncPgConnection,
        messages: &[InboundMessage],
        dead_letter: &mut DeadLetterSink<'_>,
        observed: bool,
    ) -> Result<BatchOutcome, ConsumerError> {
        let Some(first) = messages.first() else { return Ok(BatchOutcome::default()) };
        let (topic, partition) = (first.topic.clone(), first.partition);
        let last_offset = messages.last().map_or(first.offset, |m| m.offset);
        let db = |step: BatchStep| {
            let (group, topic) = (self.inner.group.clone(), topic.clone());
            move |source| ConsumerError::Database {
                step,
                group,
                topic,
                partition,
                first_offset: first.offset,
                last_offset,
                source,
            }
        };
        let rules = &self.inner.rules;
        // The lean path, taken at once for the usual batch: decoded before the transaction,
        // and its statements (the offset lock first) sent together. If the stored offset shows
        // that some of the messages were applied already (a replay), that is undone and the
        // batch goes the careful way below.
        if !observed && rules.records_unread {
            let decoding = Instant::now();
            let lean =
                tracing::debug_span!("dionysus.decode", %topic, partition, messages = messages.len(), direct = true)
                    .in_scope(|| super::direct::prepare(rules, messages));
            if let Some(lean) = lean {
                metrics::histogram!("dionysus_consumer_decode_seconds").record(decoding.elapsed().as_secs_f64());
                let next_offset = last_offset + 1;
                Transactions::begin_transaction(conn).await.map_err(db(BatchStep::Begin))?;
                let written = self
                    .write_lean(conn, lean, &topic, partition, true, next_offset)
                    .await
                    .map_err(|(step, source)| db(step)(source));
                match written {
                    Ok(stored) if stored.is_none_or(|stored| stored <= first.offset) => {
                        if let Some(stored) = stored.filter(|stored| *stored < first.offset) {
                            tracing::debug!(%topic, partition, stored, first = first.offset, "offsets between the stored offset and the batch are not in the partition (the reader checks skips before handing messages over)");
                        }
                        Transactions::commit_transaction(conn).await.map_err(db(BatchStep::Commit))?;
                        return Ok(BatchOutcome { next_offset: Some(next_offset), ..BatchOutcome::default() });
                    }
                    written => {
                        if let Err(rollback) = Transactions::rollback_transaction(conn).await {
                            tracing::warn!(error = %rollback, "rollback failed");
                        }
                        // A replay goes on below; the next statement reports a connection
                        // the rollback left broken.
                        written?;
                    }
                }
            }
        }
        // Begun and ended through diesel's transaction manager (not a bare `BEGIN`), so a
        // worker stopped mid-batch leaves a connection the pool discards rather than one
        // that still holds the batch's transaction and locks.
        Transactions::begin_transaction(conn).await.map_err(db(BatchStep::Begin))?;
        let result = async {
            let stored = sql::lock_offset(conn, &self.inner.group, &topic, partition)
                .await
                .map_err(db(BatchStep::LockOffset))?;
            let skip = messages.iter().take_while(|m| stored.is_some_and(|stored| m.offset < stored)).count();
            let fresh: std::borrow::Cow<'_, [InboundMessage]> =
                if messages[skip..].iter().all(|m| stored.is_none_or(|stored| m.offset >= stored)) {
                    std::borrow::Cow::Borrowed(&messages[skip..])
                } else {
                    messages.iter().filter(|m| stored.is_none_or(|stored| m.offset >= stored)).cloned().collect()
                };
            let already_applied = messages.len() - fresh.len();
            if let (Some(stored), Some(first)) = (stored, fresh.first()) {
                if first.offset > stored {
                    tracing::debug!(%topic, partition, stored, first = first.offset, "offsets between the stored offset and the batch are not in the partition (the reader checks skips before handing messages over)");
                }
            }
            let Some(last) = fresh.last() else {
                return Ok(BatchOutcome { already_applied, next_offset: stored, ..BatchOutcome::default() });
            };
            let next_offset = last.offset + 1;
            let decoding = Instant::now();
            let direct = (!observed && rules.records_unread)
                .then(|| {
                    tracing::debug_span!("dionysus.decode", %topic, partition, messages = fresh.len(), direct = true)
                        .in_scope(|| super::direct::prepare(rules, &fresh))
                })
                .flatten();
            if let Some(direct) = direct {
                metrics::histogram!("dionysus_consumer_decode_seconds").record(decoding.elapsed().as_secs_f64());
                self.write_lean(conn, direct, &topic, partition, false, next_offset)
                    .await
                    .map_err(|(step, source)| db(step)(source))?;
                return Ok(BatchOutcome { already_applied, next_offset: Some(next_offset), ..BatchOutcome::default() });
            }
            let mut prepared: PreparedBatch =
                tracing::debug_span!("dionysus.decode", %topic, partition, messages = fresh.len())
                    .in_scope(|| self.inner.rules.prepare(&fresh));
            metrics::histogram!("dionysus_consumer_decode_seconds").record(decoding.elapsed().as_secs_f64());
            for dead in &prepared.dead_letters {
                tracing::warn!(%topic, partition, offset = dead.message.offset, reason = dead.reason, error = %dead.error, "message sent to the dead-letter topic");
                dead_letter(dead).await?;
            }
            sql::advisory_locks(conn, prepared.locks.clone()).await.map_err(db(BatchStep::ProcessingLocks))?;
            let events = batch::apply(conn, &mut prepared, Utc::now()).await.map_err(db(BatchStep::WriteRows))?;
            self.run_in_transaction(conn, &fresh, &events, &prepared.dead_letters).await?;
            self.cascade(conn, &events, &prepared.dead_letters).await.map_err(|source| ConsumerError::Cascade {
                topic: topic.clone(),
                partition,
                first_offset: first.offset,
                last_offset,
                source: Box::new(source),
            })?;
            sql::store_offset(conn, &self.inner.group, &topic, partition, next_offset)
                .await
                .map_err(db(BatchStep::StoreOffset))?;
            Ok(BatchOutcome {
                events,
                dead_letters: prepared.dead_letters,
                already_applied,
                next_offset: Some(next_offset),
            })
        }
        .await;
        match result {
            Ok(outcome) => {
                Transactions::commit_transaction(conn).await.map_err(db(BatchStep::Commit))?;
                Ok(outcome)
            }
            Err(error) => {
                if let Err(rollback) = Transactions::rollback_transaction(conn).await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(error)
            }
        }
    }

    /// Writes a batch read by the lean path ([`super::direct`]) and stores `next_offset`,
    /// in the caller's transaction: the processing locks, the upserts and the offset (after
    /// the offset lock, with `lock`) go out together and run in that order
    /// ([`pipeline`]): one round trip to the server instead of one per statement. With
    /// `lock`, the offset stored before this batch (as the lock read it).
    async fn write_lean(
        &self,
        conn: &AsyncPgConnection,
        mut lean: super::direct::DirectBatch,
        topic: &str,
        partition: i32,
        lock: bool,
        next_offset: i64,
    ) -> Result<Option<i64>, (BatchStep, diesel::result::Error)> {
        let types = &self.inner.rules.column_types;
        // The catalog is read (once per table) before anything goes, so that no statement
        // waits for it and lets the ones behind it overtake.
        for table in lean.tables() {
            types.of(conn, table).await.map_err(|source| (BatchStep::WriteRows, source))?;
        }
        let group = self.inner.group.as_str();
        let step = |step: BatchStep| move |source| (step, source);
        let mut statements: Vec<LeanStatement<'_>> = Vec::new();
        if lock {
            statements
                .push(sql::lock_offset(conn, group, topic, partition).map_err(step(BatchStep::LockOffset)).boxed());
        }
        let locks = std::mem::take(&mut lean.locks);
        statements
            .push(sql::advisory_locks(conn, locks).map_ok(|()| None).map_err(step(BatchStep::ProcessingLocks)).boxed());
        for write in lean.writes(conn, types) {
            statements.push(write.map_ok(|()| None).map_err(step(BatchStep::WriteRows)).boxed());
        }
        statements.push(
            sql::store_offset(conn, group, topic, partition, next_offset)
                .map_ok(|()| None)
                .map_err(step(BatchStep::StoreOffset))
                .boxed(),
        );
        let results = pipeline(statements).await?;
        Ok(results.into_iter().next().flatten().filter(|_| lock))
    }

    /// [`Consumer::apply_once`] with retries. A batch failing for a [`Verdict::Transient`]
    /// reason (or without a connection) is retried whole, with backoff, up to
    /// `retry_attempts` times; then the error is returned and the caller lets the partition
    /// wait, as it does at once for a failure of the consumer's own statements and for a
    /// batch whose tables do not fit their models ([`ConsumerError::SetupFault`], checked
    /// before any message is blamed). A batch the database rejects, or fails with an
    /// [`Verdict::Undetermined`] error, is split so that only the offending message is
    /// dead-lettered (`database_rejected`). Every wait ends early with
    /// [`ConsumerError::Stopped`] when `shutdown` is cancelled.
    pub(super) async fn apply_with_retry(
        &self,
        messages: &[InboundMessage],
        dead_letter: &mut DeadLetterSink<'_>,
        shutdown: &CancellationToken,
        observed: bool,
    ) -> Result<BatchOutcome, ConsumerError> {
        let attempts = self.inner.config.consumer.retry_attempts.max(1);
        let mut attempt: u32 = 0;
        let mut undetermined: u32 = 0;
        let (mut transient_delays, mut undetermined_delays) = (retry_delays(), retry_delays());
        loop {
            let result = match crate::db::checkout(&self.inner.pool).await {
                Ok(mut conn) => self.apply_once(&mut conn, messages, dead_letter, observed).await,
                Err(error) => Err(ConsumerError::Pool(error)),
            };
            let error = match result {
                Ok(outcome) => return Ok(outcome),
                Err(error) => error,
            };
            let transient = match &error {
                ConsumerError::Pool(_) => true,
                ConsumerError::Database { source, .. } if verdict(source) == Verdict::Transient => true,
                // The consumer's own statements: the partition waits (see `messages_may_be_at_fault`).
                ConsumerError::Database { step, .. } if !messages_may_be_at_fault(*step) => return Err(error),
                ConsumerError::Database { source, .. } => match self.unfit_tables(messages).await {
                    // The catalog cannot be read: the database is not answering.
                    Err(_) => true,
                    Ok(Some(unfit)) => return Err(setup_fault(error, unfit)),
                    Ok(None) => match verdict(source) {
                        Verdict::Transient => true,
                        Verdict::Rejected if messages.len() == 1 => {
                            return self
                                .reject(
                                    &messages[0],
                                    dead_letter,
                                    "database_rejected",
                                    Report(source).to_string(),
                                    None,
                                )
                                .await;
                        }
                        Verdict::Undetermined if messages.len() == 1 => {
                            undetermined += 1;
                            if !self.database_answers().await {
                                true
                            } else if undetermined >= REJECTION_CONFIRMATIONS {
                                return self
                                    .reject(
                                        &messages[0],
                                        dead_letter,
                                        "database_rejected",
                                        Report(source).to_string(),
                                        None,
                                    )
                                    .await;
                            } else {
                                tracing::warn!(error = %Report(&error), undetermined, "message failed alone; trying it again before dead-lettering it");
                                false
                            }
                        }
                        Verdict::Rejected | Verdict::Undetermined => {
                            tracing::warn!(error = %Report(&error), "batch rejected by the database; applying its messages one by one");
                            return self.apply_one_by_one(messages, dead_letter, shutdown, observed).await;
                        }
                    },
                },
                // A handler's own database trouble is the consumer's, not the message's.
                ConsumerError::Handler { source, .. }
                    if handler::transient_cause(source, |error| verdict(error) == Verdict::Transient) =>
                {
                    true
                }
                ConsumerError::Handler { source, handler, event, .. } if messages.len() == 1 => {
                    let message = &messages[0];
                    let text = Report(source).to_string();
                    let model_name = reply::model_of(message, event);
                    let cause = Cause { message, event, model_name: &model_name };
                    let declaration = self.inner.in_transaction.iter().copied().find(|declaration| {
                        declaration.declared_by == *handler && declaration.matches(&message.topic, event)
                    });
                    let failure = Failure { handler, reason: source.reason(), error: &text };
                    let error_event = self.error_event(declaration, cause, failure)?;
                    return self.reject(message, dead_letter, source.reason(), text, error_event).await;
                }
                ConsumerError::Reply { source, .. }
                    if source.database().is_some_and(|e| verdict(e) == Verdict::Transient) =>
                {
                    true
                }
                ConsumerError::Cascade { source, .. }
                    if source.database().is_some_and(|e| verdict(e) == Verdict::Transient) =>
                {
                    true
                }
                ConsumerError::Handler { handler, .. } => {
                    tracing::warn!(error = %Report(&error), handler, "a handler failed inside the batch's transaction; applying its messages one by one");
                    return self.apply_one_by_one(messages, dead_letter, shutdown, observed).await;
                }
                _ => return Err(error),
            };
            let delay = if transient {
                attempt = attempt.saturating_add(1);
                if attempt >= attempts {
                    return Err(error);
                }
                let delay = next_delay(&mut transient_delays);
                tracing::warn!(error = %Report(&error), attempt, ?delay, "batch failed for a reason that is not its messages'; retrying it");
                delay
            } else {
                next_delay(&mut undetermined_delays)
            };
            tokio::select! {
                () = shutdown.cancelled() => return Err(ConsumerError::Stopped),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// What is wrong with the tables `messages` write, checked against the catalog
    /// ([`Consumer::check_tables`]'s check, for these tables only): `None` when they fit
    /// their models. An error means the catalog could not be read.
    async fn unfit_tables(&self, messages: &[InboundMessage]) -> Result<Option<replica::SetupError>, ConsumerError> {
        let replicas = self.inner.rules.prepare(messages).replicas();
        if replicas.is_empty() {
            return Ok(None);
        }
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let problems = replica::check_tables(&mut conn, &replicas).await.map_err(ConsumerError::TableCheck)?;
        Ok((!problems.is_empty()).then_some(replica::SetupError { problems }))
    }

    /// Checks the replica tables of the topics this consumer reads (and of their genesis
    /// replicas) against their models: each table exists, has every column the model writes
    /// with a type that holds its values, a unique index on the synced id, no required
    /// column the model leaves out, and the privileges the consumer needs.
    /// [`Consumer::run`] does it first; a batch that fails has its own tables checked again
    /// before any of its messages is dead-lettered, and waits while they do not fit.
    ///
    /// [`ConsumerError::Setup`] lists every problem with its fix (SQL to run).
    pub async fn check_tables(&self) -> Result<(), ConsumerError> {
        let topics = &self.inner.topics;
        let replicas: Vec<&'static replica::ReplicaDescriptor> = self
            .inner
            .rules
            .replicas
            .iter()
            .filter(|replica| {
                let genesis = crate::registry::genesis_topic_name(replica.topic);
                topics.iter().any(|topic| *topic == replica.topic || *topic == genesis)
            })
            .collect();
        if replicas.is_empty() {
            return Ok(());
        }
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let problems = replica::check_tables(&mut conn, &replicas).await.map_err(ConsumerError::TableCheck)?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConsumerError::Setup(replica::SetupError { problems }))
        }
    }

    /// Whether the database runs a trivial statement: tells a message the database rejects
    /// from a database that rejects everything.
    async fn database_answers(&self) -> bool {
        match crate::db::checkout(&self.inner.pool).await {
            Ok(mut conn) => conn.batch_execute("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Dead-letters `message`, which failed alone (rejected by the database, or by an
    /// `in_transaction` handler), and stores the offset past it.
    async fn reject(
        &self,
        message: &InboundMessage,
        dead_letter: &mut DeadLetterSink<'_>,
        reason: &'static str,
        error: String,
        error_event: Option<ComposedRow>,
    ) -> Result<BatchOutcome, ConsumerError> {
        let dead = DeadLetter { message: message.clone(), reason, error };
        tracing::warn!(topic = %message.topic, partition = message.partition, offset = message.offset, reason, error = %dead.error, "message rejected alone; sent to the dead-letter topic");
        dead_letter(&dead).await?;
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let group = &self.inner.group;
        let stored = async {
            Transactions::begin_transaction(&mut *conn).await?;
            let stored = sql::lock_offset(&conn, group, &message.topic, message.partition).await?;
            if stored.is_none_or(|stored| message.offset >= stored) {
                sql::store_offset(&conn, group, &message.topic, message.partition, message.offset + 1).await?;
                // The error event commits with the offset past its cause: written once.
                if let Some(row) = error_event {
                    match reply::write(&mut conn, &self.inner.config.producer, vec![row]).await {
                        Ok(count) => metrics::counter!("dionysus_consumer_error_events_total").increment(count as u64),
                        Err(error) => {
                            let _ = Transactions::rollback_transaction(&mut *conn).await;
                            return Err(Skip::Reply(error));
                        }
                    }
                }
            }
            Transactions::commit_transaction(&mut *conn).await?;
            Ok::<_, Skip>(stored)
        }
        .await
        .map_err(|error| match error {
            Skip::Reply(source) => reply_error(message, source),
            Skip::Database(source) => ConsumerError::Database {
                step: BatchStep::SkipRejected,
                group: group.clone(),
                topic: message.topic.clone(),
                partition: message.partition,
                first_offset: message.offset,
                last_offset: message.offset,
                source,
            },
        })?;
        Ok(BatchOutcome {
            next_offset: Some(stored.map_or(message.offset + 1, |stored| stored.max(message.offset + 1))),
            dead_letters: vec![dead],
            ..BatchOutcome::default()
        })
    }

    async fn apply_one_by_one(
        &self,
        messages: &[InboundMessage],
        dead_letter: &mut DeadLetterSink<'_>,
        shutdown: &CancellationToken,
        observed: bool,
    ) -> Result<BatchOutcome, ConsumerError> {
        let mut total = BatchOutcome::default();
        for message in messages {
            let outcome =
                Box::pin(self.apply_with_retry(std::slice::from_ref(message), dead_letter, shutdown, observed)).await?;
            total.events.extend(outcome.events);
            total.dead_letters.extend(outcome.dead_letters);
            total.already_applied += outcome.already_applied;
            total.next_offset = outcome.next_offset.or(total.next_offset);
        }
        Ok(total)
    }

    /// Runs the `in_transaction` handlers of a batch's events on the batch's connection,
    /// inside its transaction; the first failure fails the batch, except a checkpointed
    /// handler's under the `record` policy ([`Consumer::run_checkpointed`]). Events of
    /// messages set aside for the dead-letter topic are not handled.
    async fn run_in_transaction(
        &self,
        conn: &mut AsyncPgConnection,
        messages: &[InboundMessage],
        events: &[ConsumedEvent],
        dead_letters: &[DeadLetter],
    ) -> Result<(), ConsumerError> {
        if self.inner.in_transaction.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        let mut last = None;
        for (index, event) in events.iter().enumerate() {
            if dead_letters.iter().any(|dead| dead.message.offset == event.offset) {
                continue;
            }
            for declaration in self.inner.in_transaction.iter().filter(|h| h.matches(&event.topic, &event.event_name)) {
                let Some(message) = message_of(messages, event) else { continue };
                if declaration.checkpoint {
                    // Events of one name in one message, told apart by their position.
                    let ordinal = events[..index]
                        .iter()
                        .filter(|earlier| earlier.offset == event.offset && earlier.event_name == event.event_name)
                        .count();
                    let replies = self.run_checkpointed(conn, declaration, message, event, ordinal).await?;
                    if !replies.is_empty() && self.sends_replies(message, replies.len()) {
                        rows.extend(self.reply_rows(Cause::of(event, message), replies)?);
                        last = Some(message);
                    }
                    continue;
                }
                let mut ctx = Context::new(event, message, conn, true).with_replaying(self.replaying_message(message));
                let result = handle(declaration, &mut ctx).await;
                #[cfg(feature = "testing")]
                super::calls::record(declaration, event, result.as_ref().map(|_| ()));
                result.map_err(|source| ConsumerError::Handler {
                    handler: declaration.declared_by,
                    topic: event.topic.clone(),
                    partition: event.partition,
                    offset: event.offset,
                    event: event.event_name.clone(),
                    source,
                })?;
                let replies = ctx.take_replies();
                if !replies.is_empty() && self.sends_replies(message, replies.len()) {
                    rows.extend(self.reply_rows(Cause::of(event, message), replies)?);
                    last = Some(message);
                }
            }
        }
        if let Some(message) = last {
            let count = rows.len();
            reply::write(conn, &self.inner.config.producer, rows)
                .await
                .map_err(|source| reply_error(message, source))?;
            metrics::counter!("dionysus_consumer_replies_total").increment(count as u64);
        }
        Ok(())
    }

    /// Runs a checkpointed handler on one event inside the batch's transaction: skips an
    /// event this group's handler saved already, tries the handler (each try in a savepoint,
    /// rolled back when it fails) up to `checkpoint_attempts` times, saves the event when
    /// acknowledged, and applies the failure policy when every try failed. Gives the replies
    /// of the try that succeeded, for the batch to write with its other replies.
    async fn run_checkpointed(
        &self,
        conn: &mut AsyncPgConnection,
        declaration: &'static HandlerDeclaration,
        message: &InboundMessage,
        event: &ConsumedEvent,
        ordinal: usize,
    ) -> Result<Vec<reply::Reply>, ConsumerError> {
        let group = self.inner.group.as_str();
        let listener = declaration.declared_by;
        let checksum = checkpoint::checksum(message.payload.as_deref(), ordinal);
        let origin = checkpoint::Origin { group, listener, message, event, ordinal, checksum: &checksum };
        let db = |source| ConsumerError::Database {
            step: BatchStep::Checkpoint,
            group: group.to_owned(),
            topic: message.topic.clone(),
            partition: message.partition,
            first_offset: message.offset,
            last_offset: message.offset,
            source,
        };
        let notice = |name: &'static str, retry_count: u32| checkpoint_notice(name, &origin, retry_count);
        if checkpoint::already_saved(conn, group, listener, &checksum).await.map_err(db)? {
            notice("event_already_consumed", 0);
            return Ok(Vec::new());
        }
        let attempts = self.inner.config.consumer.checkpoint_attempts.max(1);
        let mut first_failed_at = None;
        let mut tried: u32 = 0;
        loop {
            tried += 1;
            Transactions::begin_transaction(&mut *conn).await.map_err(db)?;
            let mut ctx = Context::new(event, message, conn, true)
                .with_retry_count(tried - 1)
                .with_replaying(self.replaying_message(message));
            let result = (declaration.handler)(&mut ctx).await;
            let (ack, class, replies) = (ctx.take_ack(), ctx.error_class(), ctx.take_replies());
            #[cfg(feature = "testing")]
            super::calls::record(declaration, event, result.as_ref().map(|_| ()));
            let error = match result {
                Ok(()) => {
                    match &ack {
                        Some(ack) => {
                            checkpoint::save_event(conn, &origin, ack).await.map_err(db)?;
                        }
                        None => {
                            checkpoint::clear_failure(conn, group, listener, &checksum).await.map_err(db)?;
                        }
                    }
                    Transactions::commit_transaction(&mut *conn).await.map_err(db)?;
                    notice(if ack.is_some() { "event_acknowledged" } else { "event_skipped" }, tried - 1);
                    return Ok(replies);
                }
                Err(error) => error,
            };
            Transactions::rollback_transaction(&mut *conn).await.map_err(db)?;
            let failed = |source| ConsumerError::Handler {
                handler: listener,
                topic: event.topic.clone(),
                partition: event.partition,
                offset: event.offset,
                event: event.event_name.clone(),
                source,
            };
            // A handler's own database trouble is the consumer's: the batch is retried.
            if handler::transient_cause(&error, |error| verdict(error) == Verdict::Transient) {
                return Err(failed(error));
            }
            let first = *first_failed_at.get_or_insert_with(Utc::now);
            if tried < attempts {
                tracing::warn!(target: "dionysus::checkpoint", listener, topic = %event.topic, partition = event.partition, offset = event.offset, retry_count = tried - 1, error = %Report(&error), "checkpointed handler failed; trying it again");
                continue;
            }
            let policy = declaration.on_failure.unwrap_or(self.inner.config.consumer.checkpoint_on_failure);
            notice("event_failed", tried - 1);
            return match policy {
                FailurePolicy::Record => {
                    let parts = checkpoint::ErrorParts::of(&error, class);
                    let attempts = i32::try_from(tried).unwrap_or(i32::MAX);
                    let id = checkpoint::record_failure(conn, &origin, &parts, attempts, first).await.map_err(db)?;
                    tracing::warn!(target: "dionysus::checkpoint", failure = id, listener, topic = %event.topic, partition = event.partition, offset = event.offset, checksum = %checksum, error = %Report(&error), "checkpointed handler failed; failure recorded, the partition moves on");
                    Ok(Vec::new())
                }
                FailurePolicy::Block => Err(ConsumerError::HandlerBlocked {
                    handler: listener,
                    topic: event.topic.clone(),
                    partition: event.partition,
                    offset: event.offset,
                    source: error,
                }),
                FailurePolicy::DeadLetter => Err(failed(error)),
            };
        }
    }

    /// Writes the outbox rows of the batch's cascades on its connection, inside its
    /// transaction (events of dead-lettered or replayed messages do not cascade); counted in
    /// `dionysus_cascade_published_total`.
    async fn cascade(
        &self,
        conn: &mut AsyncPgConnection,
        events: &[ConsumedEvent],
        dead_letters: &[DeadLetter],
    ) -> Result<(), CascadeFailure> {
        if self.inner.cascades.is_empty() {
            return Ok(());
        }
        let registry = self.inner.registry.as_deref().unwrap_or_else(|| Registry::global());
        let producer = &self.inner.config.producer;
        // Events of dead-lettered messages, and of messages a reinit replays, do not cascade.
        let skip = |event: &ConsumedEvent| {
            dead_letters.iter().any(|dead| dead.message.offset == event.offset)
                || self.replaying(&event.topic, event.partition, event.offset)
        };
        let rows =
            cascade::rows(conn, &self.inner.cascades, events, skip, registry, &producer.default_partition_key).await?;
        let written = reply::write(conn, producer, rows).await?;
        if written > 0 {
            metrics::counter!("dionysus_cascade_published_total").increment(written as u64);
            tracing::debug!(rows = written, "cascade rows written with the batch");
        }
        Ok(())
    }

    /// Whether `message` is replayed by the group's reinit (see [`Consumer::reinit`]).
    fn replaying_message(&self, message: &InboundMessage) -> bool {
        self.replaying(&message.topic, message.partition, message.offset)
    }

    /// Whether the `count` replies or error events of `message` are written: replies are
    /// on and the message is not replayed by a reinit (those are counted in
    /// `dionysus_reinit_suppressed_total`). Cascades of a replayed message are suppressed
    /// the same way.
    fn sends_replies(&self, message: &InboundMessage, count: usize) -> bool {
        if !self.inner.replies {
            return false;
        }
        if self.replaying_message(message) {
            metrics::counter!("dionysus_reinit_suppressed_total", "topic" => message.topic.clone())
                .increment(count as u64);
            return false;
        }
        true
    }

    /// The outbox rows of a handler's replies to `cause`.
    fn reply_rows(&self, cause: Cause<'_>, replies: Vec<reply::Reply>) -> Result<Vec<ComposedRow>, ConsumerError> {
        let registry = self.inner.registry.as_deref().unwrap_or_else(|| Registry::global());
        replies
            .into_iter()
            .map(|reply| reply::reply_row(registry, cause, reply).map_err(|source| reply_error(cause.message, source)))
            .collect()
    }

    /// The error event of a handler's failure on `cause`, when the consumer or the handler
    /// asks for one (and replies are on).
    fn error_event(
        &self,
        declaration: Option<&HandlerDeclaration>,
        cause: Cause<'_>,
        failure: Failure<'_>,
    ) -> Result<Option<ComposedRow>, ConsumerError> {
        let wanted = self.inner.error_events || declaration.is_some_and(|declaration| declaration.error_events);
        if !wanted || !self.sends_replies(cause.message, 1) {
            return Ok(None);
        }
        reply::error_event_row(cause, self.inner.error_events_topic.as_deref(), failure)
            .transpose()
            .map_err(|source| reply_error(cause.message, source))
    }

    /// Event bus then after-commit handlers, after a commit (C-19). A handler's failure
    /// (including a record that does not deserialize into its input) is logged and counted
    /// in `dionysus_consumer_handler_errors_total`; the batch is committed already.
    pub(super) async fn notify(&self, messages: &[InboundMessage], events: &[ConsumedEvent]) {
        for subscriber in &self.inner.subscribers {
            subscriber(Notification::Batch(events));
        }
        for event in events {
            for subscriber in &self.inner.subscribers {
                subscriber(Notification::Event(event));
            }
        }
        if self.inner.after_commit_handlers.is_empty() {
            return;
        }
        // One pooled connection for the batch's handlers, checked out when first needed.
        let mut conn: Option<crate::db::PooledConnection> = None;
        for event in events {
            for declaration in
                self.inner.after_commit_handlers.iter().filter(|h| h.matches(&event.topic, &event.event_name))
            {
                let Some(message) = message_of(messages, event) else { continue };
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => match crate::db::checkout(&self.inner.pool).await {
                        Ok(checked_out) => conn.insert(checked_out),
                        Err(error) => {
                            metrics::counter!("dionysus_consumer_handler_errors_total", "handler" => declaration.declared_by, "reason" => "no_connection").increment(1);
                            tracing::error!(handler = declaration.declared_by, topic = %event.topic, partition = event.partition, offset = event.offset, error = %Report(&error), "consume handlers of a committed batch not run: no database connection");
                            return;
                        }
                    },
                };
                let mut ctx = Context::new(event, message, conn, false).with_replaying(self.replaying_message(message));
                let result = handle(declaration, &mut ctx).await;
                let replies = ctx.take_replies();
                #[cfg(feature = "testing")]
                super::calls::record(declaration, event, result.as_ref().map(|_| ()));
                let cause = Cause::of(event, message);
                // Written in a statement of their own: the batch is committed already.
                let rows = match &result {
                    Ok(()) if replies.is_empty() || !self.sends_replies(message, replies.len()) => Ok(Vec::new()),
                    Ok(()) => self.reply_rows(cause, replies),
                    Err(error) => {
                        metrics::counter!("dionysus_consumer_handler_errors_total", "handler" => declaration.declared_by, "reason" => error.reason()).increment(1);
                        tracing::error!(handler = declaration.declared_by, topic = %event.topic, partition = event.partition, offset = event.offset, event = %event.event_name, error = %Report(error), "consume handler failed");
                        let text = Report(error).to_string();
                        let failure =
                            Failure { handler: declaration.declared_by, reason: error.reason(), error: &text };
                        self.error_event(Some(declaration), cause, failure).map(|row| row.into_iter().collect())
                    }
                };
                let written = match rows {
                    Ok(rows) => reply::write(conn, &self.inner.config.producer, rows)
                        .await
                        .map_err(|source| reply_error(message, source)),
                    Err(error) => Err(error),
                };
                match (&written, &result) {
                    (Ok(count), Ok(())) => {
                        metrics::counter!("dionysus_consumer_replies_total").increment(*count as u64)
                    }
                    (Ok(count), Err(_)) => {
                        metrics::counter!("dionysus_consumer_error_events_total").increment(*count as u64);
                    }
                    (Err(_), _) => {}
                }
                if let Err(error) = written {
                    metrics::counter!("dionysus_consumer_handler_errors_total", "handler" => declaration.declared_by, "reason" => "reply_not_written").increment(1);
                    tracing::error!(handler = declaration.declared_by, topic = %event.topic, partition = event.partition, offset = event.offset, error = %Report(&error), "replies or error event of an after-commit handler not written");
                }
            }
        }
    }
}

#[cfg(feature = "testing")]
impl Consumer {
    /// This consumer computing local changes (C-15) whatever its settings, so the testing kit
    /// can report what a batch changed.
    pub(crate) fn with_local_changes(&self) -> Consumer {
        let mut inner = (*self.inner).clone();
        inner.rules.track_changes = true;
        Consumer { inner: Arc::new(inner) }
    }

    /// The consumer's connection pool.
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The replica models it writes.
    pub(crate) fn replicas(&self) -> &Replicas {
        &self.inner.rules.replicas
    }
}

/// Tells of a checkpointed handler's outcome: a tracing event (target
/// `dionysus::checkpoint`) and the counter `dionysus_checkpoint_<name>_total`.
fn checkpoint_notice(name: &'static str, origin: &checkpoint::Origin<'_>, retry_count: u32) {
    let key = origin.message.key.as_deref().map(String::from_utf8_lossy);
    let (topic, partition, offset) = (&origin.message.topic, origin.message.partition, origin.message.offset);
    let labels = [("listener", origin.listener.to_owned()), ("topic", topic.clone())];
    let counter = match name {
        "event_acknowledged" => metrics::counter!("dionysus_checkpoint_event_acknowledged_total", &labels),
        "event_skipped" => metrics::counter!("dionysus_checkpoint_event_skipped_total", &labels),
        "event_already_consumed" => metrics::counter!("dionysus_checkpoint_event_already_consumed_total", &labels),
        _ => metrics::counter!("dionysus_checkpoint_event_failed_total", &labels),
    };
    counter.increment(1);
    tracing::info!(
        target: "dionysus::checkpoint",
        notification = name,
        listener_id = origin.listener,
        group_id = origin.group,
        topic = %topic,
        key = key.as_deref().unwrap_or_default(),
        partition,
        offset,
        retry_count,
        checksum = origin.checksum,
        "{name}"
    );
}

/// Calls a handler in a `dionysus.handle` span, timed in `dionysus_consumer_handle_seconds`.
async fn handle(declaration: &HandlerDeclaration, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "dionysus.handle",
        handler = declaration.declared_by,
        topic = %ctx.topic(),
        partition = ctx.partition(),
        offset = ctx.offset(),
        event = %ctx.event_name(),
        in_transaction = declaration.in_transaction,
    );
    let started = Instant::now();
    let result = (declaration.handler)(ctx).instrument(span).await;
    metrics::histogram!("dionysus_consumer_handle_seconds", "handler" => declaration.declared_by)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Why storing the offset past a rejected message failed.
enum Skip {
    Database(diesel::result::Error),
    Reply(ReplyError),
}

impl From<diesel::result::Error> for Skip {
    fn from(error: diesel::result::Error) -> Skip {
        Skip::Database(error)
    }
}

fn reply_error(message: &InboundMessage, source: ReplyError) -> ConsumerError {
    ConsumerError::Reply { topic: message.topic.clone(), partition: message.partition, offset: message.offset, source }
}

/// The message an event came from (a batch's messages are in ascending offsets).
fn message_of<'m>(messages: &'m [InboundMessage], event: &ConsumedEvent) -> Option<&'m InboundMessage> {
    match messages.binary_search_by_key(&event.offset, |message| message.offset) {
        Ok(index) => messages.get(index),
        Err(_) => messages.iter().find(|message| message.offset == event.offset),
    }
}

/// The waits between attempts at a batch or a dead letter: 200 ms, doubling, at most 30 s,
/// never ending (the callers count attempts themselves).
pub(super) fn retry_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    retry_schedule().without_max_times().build()
}

/// [`retry_delays`] as a builder, for `backon`'s `retry`.
pub(super) fn retry_schedule() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
}

/// The next wait of `delays` (the cap, should the schedule ever end).
pub(super) fn next_delay(delays: &mut backon::ExponentialBackoff) -> Duration {
    delays.next().unwrap_or(Duration::from_secs(30))
}

impl Dionysus {
    /// A consumer builder over this handle's configuration and declarations.
    pub fn consumer(&self) -> ConsumerBuilder {
        Consumer::builder(self.config().clone()).registry(self.registry_arc())
    }
}

/// What a dead-letter send returns.
pub(super) type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ConsumerError>> + Send + 'a>>;

/// Where a batch's dead letters go once its outcome is final: the runtime's producer, or
/// nowhere for [`Consumer::process_batch`].
pub(crate) type DeadLetterSink<'a> = dyn FnMut(&DeadLetter) -> SinkFuture<'a> + Send + 'a;

/// One statement of [`Consumer::write_lean`]: the stored offset for the offset lock, `None`
/// for the others; a failure names its step.
type LeanStatement<'a> = BoxFuture<'a, Result<Option<i64>, (BatchStep, diesel::result::Error)>>;

/// Runs statements of one transaction pipelined. Each future sends its statement the first
/// time it is polled (diesel's pipelining over a shared connection) and they are polled in
/// order, so every statement is on its way before the first answer is awaited, and the
/// server runs them in the order given. Waits for every answer; the result is the first
/// failure in that order (the statements behind a failed one fail too: the transaction is
/// aborted), or every statement's value.
async fn pipeline<T, E>(mut statements: Vec<BoxFuture<'_, Result<T, E>>>) -> Result<Vec<T>, E> {
    let mut results: Vec<Option<Result<T, E>>> = std::iter::repeat_with(|| None).take(statements.len()).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (statement, result) in statements.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match statement.as_mut().poll(cx) {
                    Poll::Ready(done) => *result = Some(done),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let millis: Vec<u128> = retry_delays().take(12).map(|delay| delay.as_millis()).collect();
        assert_eq!(millis, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000, 30000]);
    }

    #[test]
    fn health_reports_liveness() {
        let health = Health::new();
        assert!(!health.is_alive(Duration::from_secs(1)));
        health.beat();
        assert!(health.is_alive(Duration::from_secs(1)));
    }
}
