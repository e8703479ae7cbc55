//! The relay: publishes outbox rows to Kafka — in order per partition key, with any number
//! of concurrent workers, at least once.
//!
//! # Design, and why it keeps order
//!
//! Every outbox row has an *ordering key* (its partition key, or `"<model>:<id>"` when it has
//! none) and an *ordering bucket*, a hash of that key into 64 buckets (generated columns of
//! the outbox table). Each bucket is **leased to at most one worker** at a time
//! (`dionysus_relay_leases`); workers heartbeat, count the live ones and hold a fair share.
//! A worker repeatedly:
//!
//! 1. reads the due, pending rows of its buckets **in id order**, leaving out every row whose
//!    key has an earlier row waiting for a retry (or, in strict mode, parked) — in **one
//!    statement, with one clock**, so a retry falling due while the batch looks cannot leave a
//!    row neither read nor holding back its key (a partial index on `(ordering_bucket, id)`
//!    keeps this an index range scan however large the table);
//! 2. holds back rows younger than the publishing delay, and every later row of their key;
//! 3. loads the records, one query per model, and builds the messages (`serialize`);
//! 4. produces them with an idempotent producer (`acks=all`), choosing the partition from the
//!    partition key as librdkafka's default partitioner does, and awaits every delivery
//!    report;
//! 5. settles the outcomes in id order: once a row of a key failed, a later row of that key
//!    is not marked published even if it was delivered (the idempotent producer drops a
//!    message that timed out in its queue and may deliver the next one); it stays pending and
//!    goes again after the failed row. Then it marks the published rows in one statement and
//!    records the failed ones (attempts, error, `retry_at` with backoff and jitter,
//!    `failed_at` once parked) in another.
//!
//! Why this is correct:
//!
//! * **One writer per key.** All rows of a key share a bucket, and a bucket has one owner, so
//!   no two workers ever publish rows of one key concurrently (`FOR UPDATE SKIP LOCKED` on
//!   rows would let a second worker take row *n + 1* while the first still holds row *n*).
//! * **Order within a worker.** Rows go to the producer in id order; one key maps to one
//!   partition; the idempotent producer keeps a partition's messages in order, also across
//!   its internal retries. The next batch is *read* while the current one's deliveries are
//!   awaited. Under a backlog (ids above the current batch's) it is sent only after the
//!   current one is recorded, and without the rows of any key the current one left
//!   unfinished (failed, behind a failure, held by the publishing delay): those are read
//!   again, in id order, from the bottom. A caught-up worker sends rows that arrive meanwhile
//!   at once, as one more batch behind the one in flight (at most one), so a row waits for
//!   one acknowledgement, not two: it leaves out the rows of keys the batch in flight held
//!   back or failed before sending, and is settled as if both were one batch — a row of a key
//!   the first one left unfinished is not marked published, however its own delivery went.
//! * **Order across retries.** A row is marked published only when every earlier row of its
//!   key is: a failed row holds its key back from the next batches until it goes through (or
//!   is parked), and within a batch nothing behind it is marked. A property test drives these
//!   rules through random retry schedules and batch boundaries (`tests/it/relay_order.rs`).
//! * **Id order is commit order for a key where it matters.** Two changes of one record are
//!   serialised by the record's row lock and each writes its outbox row after its change, so
//!   the later commit has the larger id. Concurrent transactions on *different* records of one
//!   key have no defined order; the relay publishes them in id order.
//! * **No lost rows.** A worker resumes reading after the last id it read while a backlog
//!   lasts, and after the highest id it read a second ago once caught up (module `pace`), so
//!   it does not step over the dead index entries of published rows again and again. A row
//!   whose transaction committed after a row with a higher id was read can be below that
//!   point: every 2 s, after any batch that left rows unfinished, and whenever it takes
//!   buckets over, a worker reads from the bottom of the pending index again, so such
//!   a row goes at most that much later. A row that failed before (waiting for its retry, or
//!   due) pulls every read below it, so its key's later rows never overtake it.
//! * **Handover.** A worker gives buckets back only between batches (rebalancing, shutdown,
//!   or handing busy buckets to an idle worker: buckets follow the load, see `lease`).
//!   A worker that dies keeps its leases until they expire (`lock_expiry`); then another
//!   takes them over and publishes whatever was not marked published — at least once. A
//!   worker starts a batch only while its leases are fresh, and purges what is still
//!   undelivered at a deadline (0.8 × `lock_expiry`) before its leases expire, so a stalled
//!   worker's messages cannot be sent after its successor's.
//!
//! Failures: a row that fails (serialization, missing topic, delivery) is retried after
//! `base × 2^attempts` (±20 % jitter, capped); after `max_attempts` it is parked
//! (`failed_at`), reported, and its key moves on — or, with `strict_ordering`, keeps waiting.
//! A record gone at publish time follows dionysus-rb: `_created`/`_updated` rows are marked
//! published with nothing sent (and counted), `_destroyed` rows publish
//! `{"links":{},"id":…}`.
//!
//! Pace: batch sizes adapt to the backlog (100 rows doubling up to `batch_size`); after a
//! batch that did something a worker reads again at once, and when idle it probes the pending
//! index after a pause growing from 2 ms to `idle_sleep` — as it does, while a batch's
//! acknowledgements are awaited, for rows to send ahead of them.
//!
//! Options (see [`ProducerConfig`](crate::config::ProducerConfig)): workers, largest batch,
//! longest idle pause, lock expiry, publishing delay, consecutive-duplicate removal, retention. Metrics
//! (`dionysus_outbox_published_total`, `dionysus_outbox_backlog`,
//! `dionysus_outbox_oldest_unpublished_seconds`, `dionysus_outbox_commit_to_ack_seconds`,
//! `dionysus_outbox_failures_total`, `dionysus_outbox_parked_total`, …) go through the
//! `metrics` crate; [`RelayBuilder::serve`] exposes them for Prometheus next to a `/health`
//! endpoint, and [`RelayBuilder::health_file`] keeps a liveness file.

mod backoff;
mod batch;
#[cfg(feature = "http")]
pub(crate) mod inspect;
mod lease;
mod monitor;
mod pace;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use batch::BatchReport;
#[cfg(feature = "testing")]
pub(crate) use batch::{PendingRow, PreviewError, RowPreview};
pub use monitor::{RelayEvent, RelayObserver};

use crate::config::Config;
use crate::db::Pool;
use crate::handle::Dionysus;
use crate::registry::Registry;
use crate::telemetry::{Report, Unhealthy};

/// The relay could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The declarations are inconsistent.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The producer could not be created.
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
    /// The database could not be used.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// A query of the relay's own failed.
    #[error("{operation}")]
    Query {
        /// What was being done.
        operation: RelayOperation,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The metrics/health listener could not start.
    #[error("cannot serve /metrics and /health on {address}")]
    Serve {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What the relay was doing when a query failed (in [`RelayError::Query`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayOperation {
    /// Taking, renewing or releasing bucket leases.
    MaintainLeases,
    /// Publishing a batch of outbox rows.
    PublishBatch,
    /// Draining the outbox ([`Relay::drain`]).
    Drain,
    /// Deleting published rows past their retention.
    Prune,
}

impl std::fmt::Display for RelayOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RelayOperation::MaintainLeases => "maintaining relay bucket leases",
            RelayOperation::PublishBatch => "publishing an outbox batch",
            RelayOperation::Drain => "draining the outbox",
            RelayOperation::Prune => "pruning published outbox rows",
        })
    }
}

/// Builds a [`Relay`].
#[must_use]
pub struct RelayBuilder {
    config: Config,
    registry: Arc<Registry>,
    pool: Option<Pool>,
    producer: Option<crate::kafka::Producer>,
    observer: Option<Arc<dyn RelayObserver>>,
    #[cfg(feature = "metrics")]
    serve: Option<SocketAddr>,
    health_file: Option<PathBuf>,
    auto_create_topics: bool,
    worker_prefix: Option<String>,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// The registry to publish from (default: [`Registry::global`]).
    pub fn registry(mut self, registry: impl Into<Arc<Registry>>) -> Self {
        self.registry = registry.into();
        self
    }

    /// The connection pool (default: one of `workers + 2` connections to the configured
    /// database).
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The producer (default: an idempotent one from the configuration). Bring your own only
    /// with `enable.idempotence=true`, and `message.timeout.ms=0` (the relay purges undelivered
    /// messages at its own deadline; a producer timing messages out itself may drop one and
    /// deliver the next, which reorders a key).
    pub fn producer(mut self, producer: crate::kafka::Producer) -> Self {
        self.producer = Some(producer);
        self
    }

    /// The number of workers (default: `relay_workers` of the configuration).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.producer.relay_workers = workers.max(1);
        self
    }

    /// Receives every monitor event.
    pub fn observer(mut self, observer: impl RelayObserver) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Serves `/metrics` (Prometheus) and `/health` on this address; installs the Prometheus
    /// recorder for the `metrics` crate unless another recorder is installed. With the
    /// `metrics` feature.
    #[cfg(feature = "metrics")]
    pub fn serve(mut self, address: SocketAddr) -> Self {
        self.serve = Some(address);
        self
    }

    /// Keeps a liveness file at `path`: present and fresh while the relay loops, removed when
    /// it stalls or stops.
    pub fn health_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.health_file = Some(path.into());
        self
    }

    /// Creates topics that do not exist on the broker (with their declared partitions)
    /// instead of failing their rows. Off by default.
    pub fn auto_create_topics(mut self, enabled: bool) -> Self {
        self.auto_create_topics = enabled;
        self
    }

    /// Prefix of the worker ids (default: host name and process id).
    pub fn worker_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.worker_prefix = Some(prefix.into());
        self
    }

    /// Checks the declarations and builds the relay.
    pub fn build(self) -> Result<Relay, RelayError> {
        self.registry.validate()?;
        let producer_config = &self.config.producer;
        let pool = match self.pool {
            Some(pool) => pool,
            None => crate::db::pool(&self.config.database_url, producer_config.relay_workers + 2)?,
        };
        let delivery_timeout = producer_config.lock_expiry.mul_f64(0.8).max(Duration::from_millis(500));
        let (producer, producer_settings) = match self.producer {
            Some(producer) => (producer, None),
            None => {
                let mut settings = crate::kafka::producer_config(&self.config.kafka);
                // No timeout inside the producer: the batch purges at its own deadline (see
                // `batch`), so a timed-out message can never be dropped ahead of the next one.
                settings.set("message.timeout.ms", "0");
                (create_producer(&settings, &self.config.kafka)?, Some(settings))
            }
        };
        let prefix = self.worker_prefix.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned());
            format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
        });
        #[cfg(feature = "avro")]
        let avro = crate::producer::avro::Encoder::new(&self.config.schemas);
        Ok(Relay {
            inner: Arc::new(Inner {
                config: self.config,
                registry: self.registry,
                pool,
                producer: std::sync::RwLock::new(Arc::new(producer)),
                producer_settings,
                topics: crate::producer::sender::TopicCache::default(),
                monitor: monitor::Monitor::new(self.observer),
                #[cfg(feature = "metrics")]
                serve: self.serve,
                health_file: self.health_file,
                auto_create_topics: self.auto_create_topics,
                prefix,
                delivery_timeout,
                wake: tokio::sync::Notify::new(),
                #[cfg(feature = "avro")]
                avro,
            }),
        })
    }
}

fn create_producer(
    settings: &rdkafka::ClientConfig,
    kafka: &crate::config::KafkaConfig,
) -> Result<crate::kafka::Producer, crate::kafka::TransportError> {
    settings
        .create_with_context(crate::kafka::Logs::default())
        .map_err(crate::kafka::kafka_error(crate::kafka::KafkaOperation::CreateProducer, kafka))
}

struct Inner {
    config: Config,
    registry: Arc<Registry>,
    pool: Pool,
    /// Replaced when it fails fatally (an idempotent producer is fenced once its deliveries
    /// time out, e.g. while the broker is unreachable).
    producer: std::sync::RwLock<Arc<crate::kafka::Producer>>,
    /// How to build a new one; `None` for a producer given by the application.
    producer_settings: Option<rdkafka::ClientConfig>,
    topics: crate::producer::sender::TopicCache,
    monitor: monitor::Monitor,
    #[cfg(feature = "metrics")]
    serve: Option<SocketAddr>,
    health_file: Option<PathBuf>,
    auto_create_topics: bool,
    prefix: String,
    delivery_timeout: Duration,
    /// Wakes idle workers when the outbox announces new rows (publish-after-commit).
    wake: tokio::sync::Notify,
    /// Encodes the rows of Avro topics.
    #[cfg(feature = "avro")]
    avro: crate::producer::avro::Encoder,
}

/// What a worker keeps between iterations.
struct WorkerState {
    pace: pace::Pace,
    /// The next batch, read and planned while the last one's deliveries were awaited, with
    /// the buckets it was read for.
    read_ahead: Option<(Vec<i16>, batch::Prepared)>,
    /// The next batch, sent while the last one's deliveries were awaited.
    sent_ahead: Option<Sent>,
    /// The buckets of the last batch.
    buckets: Vec<i16>,
}

/// A batch handed to the producer, to be settled.
struct Sent {
    /// The buckets it was read for.
    buckets: Vec<i16>,
    /// The producer it went to.
    producer: Arc<crate::kafka::Producer>,
    in_flight: batch::InFlight,
    /// The highest id it read.
    last_id: i64,
    /// Ids of its rows.
    in_hand: HashSet<i64>,
    /// Keys the batch before it left unfinished (it was sent while that one was in flight).
    blocked: HashSet<String>,
    span: tracing::Span,
}

/// What the batch in flight leaves to the one sent ahead of its acknowledgement.
#[derive(Clone, Copy)]
struct Ahead<'a> {
    buckets: &'a [i16],
    producer: &'a Arc<crate::kafka::Producer>,
    last_id: i64,
    in_hand: &'a HashSet<i64>,
    unsendable: &'a HashSet<String>,
}

/// What was done about the next batch while the last one's deliveries were awaited.
enum Next {
    Nothing,
    /// Read (under a backlog), to be sent after the last one is settled.
    ReadAhead(std::time::Instant, Box<batch::Prepared>),
    /// Sent already (caught up).
    Sent(Box<Sent>),
}

/// The outbox publisher. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("prefix", &self.inner.prefix).finish_non_exhaustive()
    }
}

impl Relay {
    /// A builder from a configuration.
    pub fn builder(config: Config) -> RelayBuilder {
        RelayBuilder {
            config,
            registry: Arc::new(Registry::global().clone()),
            pool: None,
            producer: None,
            observer: None,
            #[cfg(feature = "metrics")]
            serve: None,
            health_file: None,
            auto_create_topics: false,
            worker_prefix: None,
        }
    }

    /// The connection pool the relay uses.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    fn producer(&self) -> Arc<crate::kafka::Producer> {
        match self.inner.producer.read() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces a producer that failed fatally (all workers share it; the first to notice
    /// replaces it, the others pick the new one up).
    fn replace_producer(&self, failed: &Arc<crate::kafka::Producer>) {
        let Some(settings) = &self.inner.producer_settings else {
            tracing::error!("the application's producer failed fatally and cannot be replaced; rows will keep failing");
            return;
        };
        let mut current = match self.inner.producer.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match create_producer(settings, &self.inner.config.kafka) {
            Ok(producer) => {
                tracing::info!("replaced the relay's producer after its fatal error");
                *current = Arc::new(producer);
            }
            Err(error) => tracing::error!("replacing the failed producer: {}", Report(&error)),
        }
    }

    fn batch<'a>(&'a self, producer: &'a crate::kafka::Producer) -> batch::Batch<'a> {
        batch::Batch {
            registry: &self.inner.registry,
            config: &self.inner.config.producer,
            sender: crate::producer::sender::Sender {
                producer,
                topics: &self.inner.topics,
                kafka: &self.inner.config.kafka,
                registry: &self.inner.registry,
                auto_create_topics: self.inner.auto_create_topics,
            },
            monitor: &self.inner.monitor,
            delivery_timeout: self.inner.delivery_timeout,
            #[cfg(feature = "avro")]
            avro: &self.inner.avro,
        }
    }

    /// Runs the workers (and the retention, gauges, health and metrics tasks) until
    /// `shutdown` is cancelled; then every worker finishes its batch, releases its buckets
    /// and returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let workers = self.inner.config.producer.relay_workers.max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..workers {
            let relay = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { relay.worker(index, shutdown).await });
        }
        let stall = self.stall_threshold();
        let background = shutdown.child_token();
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(monitor::gauges(self.inner.pool.clone(), Duration::from_secs(5), background.clone()));
        if let Some(retention) = self.inner.config.producer.retention {
            let relay = self.clone();
            let token = background.clone();
            helpers.spawn(async move { relay.retention_loop(retention, token).await });
        }
        if self.inner.config.producer.publish_after_commit {
            let relay = self.clone();
            let token = background.clone();
            helpers.spawn(async move { relay.listen(token).await });
        }
        let relay = self.clone();
        let healthy: crate::telemetry::Health = Arc::new(move || relay.check_health());
        if let Some(path) = self.inner.health_file.clone() {
            let every = (stall / 4).max(Duration::from_millis(100));
            helpers.spawn(crate::telemetry::health_file(path, healthy.clone(), every, background.clone()));
        }
        #[cfg(feature = "metrics")]
        if let Some(address) = self.inner.serve {
            let handle = crate::telemetry::prometheus();
            let unhealthy = "[Dionysus Producer Outbox healthcheck failed]";
            let listener = match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => listener,
                Err(source) => {
                    shutdown.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(RelayError::Serve { address, source });
                }
            };
            let served =
                tokio::spawn(crate::telemetry::serve(listener, handle, healthy, unhealthy, background.clone()));
            tokio::select! {
                result = served => {
                    if let Ok(Err(source)) = result {
                        shutdown.cancel();
                        while tasks.join_next().await.is_some() {}
                        return Err(RelayError::Serve { address, source });
                    }
                }
                () = shutdown.cancelled() => {}
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!("a relay worker panicked: {error}");
            }
        }
        background.cancel();
        while helpers.join_next().await.is_some() {}
        Ok(())
    }

    /// Publish-after-commit: the outbox writer sends `NOTIFY dionysus_outbox` in the
    /// application's transaction, which PostgreSQL delivers on commit; this wakes the idle
    /// workers at once. Unlike dionysus-rb publishing from the committing process, the rows
    /// still go through the bucket owners, so per-key order holds.
    async fn listen(&self, shutdown: CancellationToken) {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        use futures_util::StreamExt;
        while !shutdown.is_cancelled() {
            let connected = AsyncPgConnection::establish(&self.inner.config.database_url).await;
            let mut conn = match connected {
                Ok(conn) => conn,
                Err(error) => {
                    let error = crate::db::redact_connection_error(error);
                    tracing::warn!("cannot connect to listen for outbox notifications: {}", Report(&error));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(error) = diesel::sql_query("LISTEN dionysus_outbox").execute(&mut conn).await {
                tracing::warn!("LISTEN dionysus_outbox failed: {}", Report(&error));
                continue;
            }
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = notifications.next() => match next {
                        Some(Ok(_)) => self.inner.wake.notify_waiters(),
                        Some(Err(error)) => {
                            tracing::warn!("outbox notifications failed, reconnecting: {}", Report(&error));
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
    }

    /// Whether the relay is healthy, as `/health` and the liveness file see it: a worker
    /// finished a loop within the stall threshold (three lease expiries, ten idle sleeps, at
    /// least 30 s).
    pub fn check_health(&self) -> Result<(), Unhealthy> {
        let stall = self.stall_threshold();
        if self.inner.monitor.healthy(stall) {
            Ok(())
        } else {
            Err(Unhealthy::new(format!("no relay loop finished within {} ms", stall.as_millis())))
        }
    }

    /// The loop stalls when no worker completed an iteration for this long.
    fn stall_threshold(&self) -> Duration {
        let producer = &self.inner.config.producer;
        (producer.lock_expiry * 3).max(producer.idle_sleep * 10).max(Duration::from_secs(30))
    }

    async fn worker(&self, index: usize, shutdown: CancellationToken) {
        let worker_id = format!("{}-{index}", self.inner.prefix);
        let config = &self.inner.config.producer;
        let monitor = &self.inner.monitor;
        let mut leases = lease::Leases::new(worker_id.clone(), config.lock_expiry, config.relay_workers);
        let mut state = WorkerState {
            pace: pace::Pace::new(config.batch_size, config.idle_sleep, std::time::Instant::now()),
            read_ahead: None,
            sent_ahead: None,
            buckets: Vec::new(),
        };
        monitor.emit(&RelayEvent::Started { worker: &worker_id });
        while !shutdown.is_cancelled() {
            let pause = match self.iteration(&mut leases, &mut state).await {
                Ok(true) => {
                    state.pace.busy();
                    None
                }
                Ok(false) => Some(state.pace.pause(std::time::Instant::now())),
                Err(error) => {
                    leases.invalidate();
                    state.read_ahead = None;
                    state.pace.rescan(std::time::Instant::now());
                    monitor.emit(&RelayEvent::Error { worker: &worker_id, error: &error });
                    tracing::warn!(worker = %worker_id, "relay iteration failed, retrying: {}", Report(&error));
                    Some(config.idle_sleep)
                }
            };
            monitor.emit(&RelayEvent::Heartbeat { worker: &worker_id, buckets: leases.buckets().len() });
            if let Some(pause) = pause {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(pause) => {}
                    () = self.inner.wake.notified() => state.pace.busy(),
                }
            }
        }
        monitor.emit(&RelayEvent::ShuttingDown { worker: &worker_id });
        if let Some(sent) = state.sent_ahead.take() {
            // Its messages are out: settled, so the rows are not sent again by the next owner.
            if let Err(error) = self.settle(sent).await {
                tracing::warn!(worker = %worker_id, "settling the last batch failed (its rows go again): {}", Report(&error));
            }
        }
        match crate::db::checkout(&self.inner.pool).await {
            Ok(mut conn) => {
                if let Err(error) = leases.release(&mut conn).await {
                    tracing::warn!(worker = %worker_id, "releasing buckets failed (they expire on their own): {}", Report(&error));
                }
            }
            Err(error) => {
                tracing::warn!(worker = %worker_id, "releasing buckets failed (they expire on their own): {}", Report(&error))
            }
        }
        monitor.emit(&RelayEvent::Stopped { worker: &worker_id });
    }

    /// One loop iteration: lease upkeep, then a batch — sent ahead by the previous iteration,
    /// read ahead by it if there was a backlog, else read now (after a cheap probe when the
    /// last poll found nothing). While the batch's deliveries are awaited, the next batch is
    /// read and planned on the same connection: under a backlog it is sent only after this
    /// one is settled, and without the rows of keys this one left unfinished; when caught up,
    /// rows that arrive meanwhile are sent at once (see [`Relay::send_ahead`]). `Ok(true)` when
    /// the batch did something.
    async fn iteration(&self, leases: &mut lease::Leases, state: &mut WorkerState) -> Result<bool, RelayError> {
        let query = |source| RelayError::Query { operation: RelayOperation::PublishBatch, source };
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let current = match state.sent_ahead.take() {
            // Its messages are out: settled before anything else, leases included (a worker
            // gives buckets back only with nothing in flight; none is sent ahead while the
            // leases are due).
            Some(sent) => sent,
            None => match self.read_and_send(&mut conn, leases, state).await? {
                Some(sent) => sent,
                None => return Ok(false),
            },
        };
        let Sent { buckets, producer, in_flight, last_id, in_hand, blocked, span } = current;
        let batch = self.batch(&producer);
        let started = std::time::Instant::now();
        // Under a backlog the next batch is only read; otherwise it may be sent ahead, and
        // then it needs what this one holds.
        let read_ahead = state.pace.read_ahead(started);
        let (unsendable, all_keys) =
            if read_ahead { Default::default() } else { (in_flight.unsendable_keys(), in_flight.keys()) };
        let settled = tokio::sync::Notify::new();
        let deliver = async {
            let delivered = batch.deliver(in_flight).await;
            settled.notify_one();
            delivered
        };
        let read_next = async {
            if leases.buckets() != buckets.as_slice() || !leases.valid() {
                return Ok(Next::Nothing);
            }
            if read_ahead {
                let window = batch::Window { buckets: &buckets, limit: state.pace.limit(), after: last_id };
                let next = batch.prepare(&mut conn, window).await?;
                return Ok(Next::ReadAhead(started, Box::new(next)));
            }
            if leases.due() || !Arc::ptr_eq(&producer, &self.producer()) {
                return Ok(Next::Nothing);
            }
            let ahead =
                Ahead { buckets: &buckets, producer: &producer, last_id, in_hand: &in_hand, unsendable: &unsendable };
            Ok(self
                .send_ahead(&batch, &mut conn, &mut state.pace, ahead, &settled)
                .await?
                .map_or(Next::Nothing, |sent| Next::Sent(Box::new(sent))))
        };
        let (delivered, next) = tokio::join!(deliver, read_next);
        let recorded = batch.record(&mut conn, delivered, &blocked).instrument(span).await;
        let now = std::time::Instant::now();
        let mut sent_ahead = false;
        match next {
            Ok(Next::Nothing) => {}
            Ok(Next::ReadAhead(read_at, mut next)) => {
                state.pace.read(read_at, last_id, next.read(), next.last_id);
                // A row that failed before pulls a read below `last_id` (see `batch::fetch`):
                // the rows of this batch may come back; they are in hand already.
                next.drop_ids(&in_hand);
                // Rows of keys this batch left unfinished are not sent ahead of them: they are
                // read again from the bottom.
                if let Ok(recorded) = &recorded {
                    if next.drop_keys(&recorded.unfinished) > 0 {
                        state.pace.rescan(now);
                    }
                    if !next.is_empty() {
                        state.read_ahead = Some((buckets, *next));
                    } else if next.read() > 0 {
                        state.pace.rescan(now);
                    }
                }
            }
            Ok(Next::Sent(mut next)) => {
                // Its rows of keys this batch left unfinished (every key of it, if it could
                // not be recorded), or was told to leave, stay pending behind them.
                next.blocked = batch::Recorded::left_behind(recorded.as_ref().ok(), all_keys, &blocked);
                state.sent_ahead = Some(*next);
                sent_ahead = true;
            }
            Err(source) => {
                state.pace.rescan(now);
                if recorded.is_ok() {
                    return Err(query(source));
                }
            }
        }
        let recorded = recorded.map_err(query)?;
        if recorded.report.producer_failed {
            self.replace_producer(&producer);
        }
        if !recorded.unfinished.is_empty() {
            state.pace.rescan(now);
        }
        let report = &recorded.report;
        Ok(sent_ahead || report.published + report.skipped + report.failed > 0)
    }

    /// Awaits the deliveries of a batch sent ahead and records them (at shutdown).
    async fn settle(&self, sent: Sent) -> Result<(), RelayError> {
        let Sent { producer, in_flight, blocked, span, .. } = sent;
        let batch = self.batch(&producer);
        let delivered = batch.deliver(in_flight).await;
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let recorded = batch
            .record(&mut conn, delivered, &blocked)
            .instrument(span)
            .await
            .map_err(|source| RelayError::Query { operation: RelayOperation::PublishBatch, source })?;
        if recorded.report.producer_failed {
            self.replace_producer(&producer);
        }
        Ok(())
    }

    /// Reads a batch (or takes the one read ahead) and sends it; `None` when there is nothing
    /// to send.
    async fn read_and_send(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        leases: &mut lease::Leases,
        state: &mut WorkerState,
    ) -> Result<Option<Sent>, RelayError> {
        let query = |source| RelayError::Query { operation: RelayOperation::PublishBatch, source };
        let leasing = |source| RelayError::Query { operation: RelayOperation::MaintainLeases, source };
        leases.set_idle(state.pace.idle_for(std::time::Instant::now()) >= lease::IDLE_AFTER);
        if leases.due() || (leases.look_due(false) && leases.handed_to_me(conn).await.map_err(leasing)?) {
            leases.maintain(conn).await.map_err(leasing)?;
        }
        let read_ahead = state.read_ahead.take();
        if let Some((read_for, prepared)) = &read_ahead {
            // A backlog: the next batch came back full at the largest size. Half of its rows'
            // buckets go to a worker that has nothing to do, if there is one (nothing is in
            // flight here).
            let backlog = prepared.read() >= self.inner.config.producer.batch_size;
            if backlog && leases.look_due(true) && read_for.as_slice() == leases.buckets() {
                let give = lease::split_load(&prepared.rows_per_bucket());
                if let Some(handover) = leases.hand_over(conn, &give).await.map_err(leasing)? {
                    self.inner.monitor.emit(&RelayEvent::BucketsHandedOver {
                        worker: leases.worker_id(),
                        receiver: &handover.receiver,
                        buckets: &handover.buckets,
                    });
                }
            }
        }
        if leases.buckets().is_empty() || !leases.valid() {
            if read_ahead.is_some() {
                state.pace.rescan(std::time::Instant::now());
            }
            return Ok(None);
        }
        let buckets = leases.buckets().to_vec();
        if buckets.iter().any(|bucket| !state.buckets.contains(bucket)) {
            // Buckets taken over hold rows below this worker's cursor: read from the bottom.
            // (Buckets given up leave the cursor right for the rest.)
            state.pace.rescan(std::time::Instant::now());
        }
        state.buckets.clone_from(&buckets);
        let producer = self.producer();
        let batch = self.batch(&producer);
        // A batch read ahead for these buckets, or for more of them (some given up since:
        // their rows are left to the new owner), is still this worker's next batch.
        let read_ahead = read_ahead.and_then(|(read_for, mut prepared)| {
            if !buckets.iter().all(|bucket| read_for.contains(bucket)) {
                return None;
            }
            if read_for.len() > buckets.len() {
                prepared.keep_buckets(&buckets);
            }
            Some(prepared).filter(|prepared| !prepared.is_empty())
        });
        let prepared = match read_ahead {
            Some(prepared) => prepared,
            None => {
                let now = std::time::Instant::now();
                let window =
                    batch::Window { buckets: &buckets, limit: state.pace.limit(), after: state.pace.after(now) };
                if state.pace.idle() && !batch::probe(conn, window).await.map_err(query)? {
                    // Nothing due above `after` (from the bottom: nothing due at all).
                    state.pace.read(now, window.after, 0, 0);
                    return Ok(None);
                }
                let prepared = batch.prepare(conn, window).await.map_err(query)?;
                state.pace.read(now, window.after, prepared.read(), prepared.last_id);
                prepared
            }
        };
        if prepared.read() == 0 {
            return Ok(None);
        }
        Ok(Some(Self::send(&batch, conn, prepared, buckets, producer.clone()).await))
    }

    /// Hands a prepared batch to the producer.
    async fn send(
        batch: &batch::Batch<'_>,
        conn: &mut diesel_async::AsyncPgConnection,
        prepared: batch::Prepared,
        buckets: Vec<i16>,
        producer: Arc<crate::kafka::Producer>,
    ) -> Sent {
        let span = tracing::info_span!("relay_batch", buckets = buckets.len(), read = prepared.read());
        let last_id = prepared.last_id;
        let in_hand = prepared.ids();
        let in_flight = batch.send(conn, prepared).instrument(span.clone()).await;
        Sent { buckets, producer, in_flight, last_id, in_hand, blocked: HashSet::new(), span }
    }

    /// While a batch's deliveries are awaited by a caught-up worker: polls for rows that
    /// arrived since (a probe above the batch's last id, pausing 2 ms and doubling up to
    /// `idle_sleep` between empty polls) and sends the first batch it finds at once, rather
    /// than after the acknowledgement — so a row waits for the broker's round trip only once.
    /// The read starts where a caught-up read starts (the trail, so rows committed late below
    /// the batch are found), leaves out the rows in flight, and the rows of keys the batch in
    /// flight cannot be followed on (see [`batch::InFlight::unsendable_keys`]); the rows of
    /// its other keys go behind theirs on the same producer, which keeps a partition's
    /// messages in order, and are settled behind whatever that batch leaves unfinished.
    /// Stops, sending nothing, once the batch is settled. At most one batch is sent ahead.
    async fn send_ahead(
        &self,
        batch: &batch::Batch<'_>,
        conn: &mut diesel_async::AsyncPgConnection,
        pace: &mut pace::Pace,
        ahead: Ahead<'_>,
        settled: &tokio::sync::Notify,
    ) -> Result<Option<Sent>, diesel::result::Error> {
        let mut pause = pace::MIN_PAUSE;
        loop {
            tokio::select! {
                () = settled.notified() => return Ok(None),
                () = tokio::time::sleep(pause) => {}
            }
            pause = pause.saturating_mul(2).min(self.inner.config.producer.idle_sleep.max(pace::MIN_PAUSE));
            let probe = batch::Window { buckets: ahead.buckets, limit: 1, after: ahead.last_id };
            if !batch::probe(conn, probe).await? {
                continue;
            }
            let now = std::time::Instant::now();
            let window = batch::Window { buckets: ahead.buckets, limit: pace.limit(), after: pace.after(now) };
            let mut next = batch.prepare(conn, window).await?;
            pace.read(now, window.after, next.read(), next.last_id);
            next.drop_ids(ahead.in_hand);
            if next.drop_keys(ahead.unsendable) > 0 {
                pace.rescan(now);
            }
            if next.is_empty() {
                continue;
            }
            return Ok(Some(Self::send(batch, conn, next, ahead.buckets.to_vec(), ahead.producer.clone()).await));
        }
    }

    /// Publishes what is pending now with one worker holding every bucket, batch after batch,
    /// until a batch reads nothing new (rows waiting for a retry are left). For tests, tools
    /// and one-off drains; do not run it next to live workers.
    pub async fn drain(&self) -> Result<BatchReport, RelayError> {
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let all = lease::all_buckets();
        let mut total = BatchReport::default();
        loop {
            let producer = self.producer();
            let report = self
                .batch(&producer)
                .run(&mut conn, &all)
                .await
                .map_err(|source| RelayError::Query { operation: RelayOperation::Drain, source })?;
            if report.producer_failed {
                self.replace_producer(&producer);
            }
            total.read += report.read;
            total.published += report.published;
            total.skipped += report.skipped;
            total.failed += report.failed;
            total.held_back = report.held_back;
            if report.published + report.skipped == 0 {
                return Ok(total);
            }
        }
    }

    /// Deletes published rows older than `age`, in batches of 1000; returns how many.
    pub async fn prune(&self, age: Duration) -> Result<u64, RelayError> {
        prune(&self.inner.pool, age).await
    }

    async fn retention_loop(&self, age: Duration, shutdown: CancellationToken) {
        loop {
            match self.prune(age).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "pruned published outbox rows"),
                Err(error) => tracing::warn!("pruning published outbox rows failed: {}", Report(&error)),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }
}

#[doc(hidden)]
pub(crate) mod simulation {
    //! The steps of a batch with a given clock and given delivery outcomes, so property tests
    //! can drive the relay's ordering rules through arbitrary retry schedules and batch
    //! boundaries against a real outbox table. Not a public API: it may change in any release.

    use chrono::{DateTime, Utc};
    use diesel_async::AsyncPgConnection;

    use super::batch::{self, Clock, Outcome, PendingRow};
    use crate::config::ProducerConfig;
    use crate::producer::sender::Failure;

    /// The rows one batch read.
    #[derive(Debug)]
    pub struct SimBatch {
        rows: Vec<PendingRow>,
        at: DateTime<Utc>,
    }

    impl SimBatch {
        /// Reads a batch over every bucket as the relay would at `at`.
        pub async fn fetch(
            conn: &mut AsyncPgConnection,
            config: &ProducerConfig,
            at: DateTime<Utc>,
        ) -> Result<SimBatch, diesel::result::Error> {
            let all = super::lease::all_buckets();
            let window = batch::Window { buckets: &all, limit: config.batch_size, after: 0 };
            let rows = batch::fetch(conn, window, config.strict_ordering, Clock::At(at)).await?;
            Ok(SimBatch { rows, at })
        }

        /// The plan PostgreSQL ran for the batch read [`SimBatch::fetch`] makes at `at`
        /// (`EXPLAIN (ANALYZE, FORMAT JSON)`), for tests of how many rows the read walks.
        pub async fn explain(
            conn: &mut AsyncPgConnection,
            config: &ProducerConfig,
            at: DateTime<Utc>,
        ) -> Result<serde_json::Value, diesel::result::Error> {
            let all = super::lease::all_buckets();
            let window = batch::Window { buckets: &all, limit: config.batch_size, after: 0 };
            batch::explain_fetch(conn, window, config.strict_ordering, Clock::At(at)).await
        }

        /// `(outbox id, ordering key)` of the rows read, in id order.
        pub fn rows(&self) -> Vec<(i64, String)> {
            self.rows.iter().map(|row| (row.id, row.ordering_key.clone())).collect()
        }

        /// Settles and records the batch: `delivered[i]` tells whether row `i` was
        /// acknowledged. Returns the ids marked published.
        pub async fn settle(
            self,
            conn: &mut AsyncPgConnection,
            config: &ProducerConfig,
            delivered: &[bool],
            jitter: impl FnMut() -> f64,
        ) -> Result<Vec<i64>, diesel::result::Error> {
            let outcomes = delivered
                .iter()
                .map(|ok| {
                    if *ok {
                        Outcome::Delivered
                    } else {
                        Outcome::Failed(Failure { class: "KafkaError", message: "Local: Message timed out".to_owned() })
                    }
                })
                .collect();
            let settled = batch::settle(&self.rows, outcomes);
            let published: Vec<i64> = settled.delivered.iter().map(|row| row.id).collect();
            batch::mark_published(conn, &published, batch::PublishedRows::of(config)).await?;
            batch::record_failures(conn, config, &settled.failures, Clock::At(self.at), jitter).await?;
            Ok(published)
        }
    }
}

/// Every pending row of the outbox in id order, with what the relay would do with it now
/// (see `batch::preview`): read and planned on `conn` as a batch does, nothing sent or
/// marked.
#[cfg(feature = "testing")]
pub(crate) async fn preview(
    conn: &mut diesel_async::AsyncPgConnection,
    registry: &Registry,
    config: &crate::config::ProducerConfig,
) -> Result<Vec<(PendingRow, RowPreview)>, PreviewError> {
    let all = lease::all_buckets();
    batch::preview(conn, registry, config, &all).await
}

/// One page of [`prune`]'s walk.
#[derive(diesel::QueryableByName)]
struct PrunedPage {
    /// Rows deleted.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    deleted: i64,
    /// Rows the page held (at most [`PRUNE_PAGE`]).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    read: i64,
    /// The highest id of the page (where the next one starts).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    last_id: Option<i64>,
    /// Whether every row of the page was written before the cutoff (so rows above it may be
    /// old enough too).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    all_old: bool,
}

/// Rows one pruning statement looks at (and at most deletes).
const PRUNE_PAGE: i64 = 1000;

/// Deletes published rows older than `age`: walks the outbox up from its lowest id, 1000 rows
/// per statement (so no statement holds many locks), deleting those published before the
/// cutoff, and stops after the first page holding a row written after it. A row is published
/// after it is written, so the rows above that page were written too late to be old enough
/// — but for a row of a transaction that ran across the cutoff, which is pruned by a later
/// run, once its neighbours are old enough too. So each run reads about the rows it deletes
/// (and the old rows that are kept: parked or still pending), not the whole table: a search
/// for `published_at` older than the cutoff in id order would read every row of a table
/// holding none (in a table of days of rows, every minute). The page's rows are deleted by
/// their ids as an array, which PostgreSQL looks up in the primary key whatever the size of
/// the table (a join with the page may scan a small table whole).
pub(crate) async fn prune(pool: &Pool, age: Duration) -> Result<u64, RelayError> {
    use diesel_async::RunQueryDsl;
    let mut conn = crate::db::checkout(pool).await?;
    let mut total = 0_u64;
    let mut after = 0_i64;
    loop {
        let page: PrunedPage = diesel::sql_query(
            "WITH page AS (SELECT id, created_at, published_at FROM dionysus_outbox \
                           WHERE id > $2 ORDER BY id LIMIT $3), \
                  gone AS (DELETE FROM dionysus_outbox WHERE id = ANY (ARRAY( \
                               SELECT id FROM page WHERE published_at < now() - make_interval(secs => $1))) \
                           RETURNING id) \
             SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM page) AS read, \
                    (SELECT max(id) FROM page) AS last_id, \
                    COALESCE((SELECT max(created_at) FROM page) < now() - make_interval(secs => $1), false) AS all_old",
        )
        .bind::<diesel::sql_types::Double, _>(age.as_secs_f64())
        .bind::<diesel::sql_types::BigInt, _>(after)
        .bind::<diesel::sql_types::BigInt, _>(PRUNE_PAGE)
        .get_result(&mut conn)
        .await
        .map_err(|source| RelayError::Query { operation: RelayOperation::Prune, source })?;
        total += u64::try_from(page.deleted).unwrap_or(0);
        match page.last_id {
            Some(last_id) if page.read == PRUNE_PAGE && page.all_old => after = last_id,
            _ => return Ok(total),
        }
    }
}

impl Dionysus {
    /// A relay builder over this handle's configuration and declarations.
    pub fn relay(&self) -> RelayBuilder {
        Relay::builder(self.config().clone()).registry(self.registry_arc())
    }
}
