//! The Kafka side of the consumer: the group subscription, seeking to the stored offsets on
//! assignment, one worker per partition (in order within it, concurrent across them), the
//! Kafka commit after the database commit, and the dead-letter producer (whose messages
//! always fit: a value too large for the dead-letter topic is replaced by a prefix, its
//! length and its SHA-256).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::apply::{AfterCommit, BatchOutcome, Consumer, ConsumerError, SinkFuture};
use super::batch::sha256_hex;
use super::batch::{DeadLetter, InboundMessage};
use super::gaps::{OffsetGaps, Verdict};
use super::progress::Progress;
use crate::consumer::replica::sql;
use crate::telemetry::Report;

/// Header names of a dead-lettered message; the value is the original bytes and the key the
/// original key.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterHeaders;

impl DeadLetterHeaders {
    /// Why, in a word (`malformed_json`, `unknown_model`, …).
    pub const REASON: &'static str = "dionysus-reason";
    /// The full error.
    pub const ERROR: &'static str = "dionysus-error";
    /// Source topic.
    pub const TOPIC: &'static str = "dionysus-source-topic";
    /// Source partition (decimal).
    pub const PARTITION: &'static str = "dionysus-source-partition";
    /// Source offset (decimal).
    pub const OFFSET: &'static str = "dionysus-source-offset";
    /// Consumer group that gave up on it.
    pub const GROUP: &'static str = "dionysus-consumer-group";
    /// Set when the dead letter carries only the first bytes of the original value (the
    /// whole did not fit the dead-letter topic): the original length in bytes (decimal).
    pub const ORIGINAL_LENGTH: &'static str = "dionysus-original-length";
    /// With [`DeadLetterHeaders::ORIGINAL_LENGTH`]: the SHA-256 of the original value (hex).
    pub const ORIGINAL_SHA256: &'static str = "dionysus-original-sha256";
    /// With [`DeadLetterHeaders::ORIGINAL_LENGTH`], when the key was cut too: its length.
    pub const ORIGINAL_KEY_LENGTH: &'static str = "dionysus-original-key-length";
}

/// Bytes of the original value a dead letter keeps when the whole does not fit.
const DEAD_LETTER_PREFIX_BYTES: usize = 64 * 1024;
/// Bytes of the original key a cut dead letter keeps.
const DEAD_LETTER_KEY_BYTES: usize = 4 * 1024;
/// Bytes of the error text in a dead letter's header.
const DEAD_LETTER_ERROR_BYTES: usize = 4 * 1024;
/// Room for the key and headers above the largest value a dead letter carries.
const DEAD_LETTER_MARGIN_BYTES: usize = 1 << 20;
/// How long the broker may take to acknowledge one dead letter.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight batches may take to finish once the consumer is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);
/// How often the consumer commits its latest stored offsets to the broker (librdkafka's
/// `auto.commit.interval.ms`; `DIONYSUS_KAFKA_AUTO_COMMIT_INTERVAL_MS` overrides it).
const KAFKA_COMMIT_INTERVAL_MS: u32 = 1000;

/// The partitions this member owns.
type Assignments = Arc<Mutex<HashMap<(String, i32), Assigned>>>;

/// One partition this member owns.
#[derive(Clone)]
struct Assigned {
    /// Set when the assignment ends (revoked, or replaced by a newer one).
    revoked: Arc<AtomicBool>,
    /// The stored offset its fetching starts at, when there is one.
    start: Option<i64>,
}

/// Partitions this member paused in librdkafka because their workers had enough buffered.
/// librdkafka keeps a partition paused across a revocation, so a new assignment resumes it.
type Paused = Arc<Mutex<HashSet<(String, i32)>>>;

/// Seeks newly assigned partitions to the offsets stored in PostgreSQL and tracks which
/// partitions this member owns.
struct GroupContext {
    database_url: String,
    group: String,
    assignments: Assignments,
    paused: Paused,
    progress: Arc<Progress>,
    logs: crate::kafka::Logs,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::Logs::line(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.report(&error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`, 5 s by default here): the lag
    /// of every assigned partition as `dionysus_consumer_lag`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, stats) in stats.partitions {
                if partition >= 0 && stats.consumer_lag >= 0 {
                    let labels = [("topic", topic.clone()), ("partition", partition.to_string())];
                    metrics::gauge!("dionysus_consumer_lag", &labels).set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, base_consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = match stored_offsets_blocking(&self.database_url, &self.group) {
                    Ok(stored) => {
                        for element in tpl.elements() {
                            let key = (element.topic().to_owned(), element.partition());
                            if let Some(offset) = stored.get(&key) {
                                tracing::debug!(topic = %key.0, partition = key.1, offset, "seeking to the stored offset");
                            }
                        }
                        let seeks: Vec<((String, i32), i64)> = tpl
                            .elements()
                            .iter()
                            .filter_map(|e| {
                                let key = (e.topic().to_owned(), e.partition());
                                stored.get(&key).map(|offset| (key, *offset))
                            })
                            .collect();
                        for ((topic, partition), offset) in seeks {
                            if let Err(error) = tpl.set_partition_offset(&topic, partition, Offset::Offset(offset)) {
                                tracing::warn!(%topic, partition, %error, "cannot seek to the stored offset");
                            }
                        }
                        stored
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stored offsets; starting from the committed ones (stored offsets still filter)");
                        HashMap::new()
                    }
                };
                self.resume_paused(base_consumer, tpl);
                if let Ok(mut assignments) = self.assignments.lock() {
                    for element in tpl.elements() {
                        let key = (element.topic().to_owned(), element.partition());
                        let start = stored.get(&key).copied();
                        let assigned = Assigned { revoked: Arc::new(AtomicBool::new(false)), start };
                        if let Some(old) = assignments.insert(key, assigned) {
                            old.revoked.store(true, Ordering::SeqCst);
                        }
                    }
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                change_assignment(base_consumer, tpl, true);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Ok(mut assignments) = self.assignments.lock() {
                    for element in tpl.elements() {
                        if let Some(old) = assignments.remove(&(element.topic().to_owned(), element.partition())) {
                            old.revoked.store(true, Ordering::SeqCst);
                        }
                        self.progress.forget(element.topic(), element.partition());
                    }
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                change_assignment(base_consumer, tpl, false);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                change_assignment(base_consumer, tpl, false);
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

impl GroupContext {
    /// Resumes the newly assigned partitions this member had paused, before they are
    /// assigned (their fetch then starts at the assigned offset).
    fn resume_paused(&self, base_consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let Ok(mut paused) = self.paused.lock() else { return };
        let mut resume = TopicPartitionList::new();
        for element in tpl.elements() {
            if paused.remove(&(element.topic().to_owned(), element.partition())) {
                resume.add_partition(element.topic(), element.partition());
            }
        }
        if resume.count() > 0 {
            if let Err(error) = base_consumer.resume(&resume) {
                tracing::error!(%error, "resuming reassigned partitions failed");
            }
        }
    }
}

/// Adds `tpl` to this member's assignment, or takes it away. A cooperative group
/// (`partition.assignment.strategy=cooperative-sticky`) names only the partitions that move,
/// and librdkafka takes only incremental calls then: the other partitions keep being worked
/// on. An eager group hands over (or takes away) the whole assignment, with whole calls.
fn change_assignment(base_consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList, add: bool) {
    let cooperative = matches!(base_consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
    let changed = match (cooperative, add) {
        (true, true) => base_consumer.incremental_assign(tpl),
        (true, false) => base_consumer.incremental_unassign(tpl),
        (false, true) => base_consumer.assign(tpl),
        (false, false) => base_consumer.unassign(),
    };
    if let Err(error) = changed {
        let step = if add { "assigning" } else { "unassigning" };
        tracing::error!(%error, "{step} partitions failed");
    }
}

/// Reads the stored offsets from a helper thread with its own runtime, because librdkafka
/// calls the rebalance callback synchronously.
fn stored_offsets_blocking(database_url: &str, group: &str) -> Result<HashMap<(String, i32), i64>, String> {
    let (url, group) = (database_url.to_owned(), group.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut conn = AsyncPgConnection::establish(&url)
                .await
                .map_err(|e| crate::db::redact_connection_error(e).to_string())?;
            sql::stored_offsets(&mut conn, &group).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "offset reader thread panicked".to_owned())?
}

struct Worker {
    sender: mpsc::Sender<InboundMessage>,
    /// Messages read for this partition that its channel had no room for yet, in order.
    /// Buffering them here instead of waiting keeps one busy partition from holding up the
    /// others (librdkafka hands out long runs of one partition's messages). When it or the
    /// member holds too much ([`Limits`]), the partition is paused in librdkafka until it
    /// drains.
    pending: VecDeque<InboundMessage>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    /// Whether this member paused the partition's fetching.
    paused: bool,
    /// The offsets handed over so far, for skips to be read again before they are believed.
    gaps: OffsetGaps,
    revoked: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

/// How much a partition may have buffered before it is paused, and how little before it
/// is resumed: counted in messages and in payload bytes.
#[derive(Debug, Clone, Copy)]
struct Backlog {
    messages: usize,
    bytes: usize,
}

impl Backlog {
    /// Pause at 32 batches or 64 MiB, resume at 16 batches and 32 MiB.
    ///
    /// Pausing makes librdkafka drop what it had fetched ahead for the partition, and the
    /// resumed fetch starts over from the broker; until it arrives, the worker lives on what
    /// is buffered here. Half the pause point leaves it many batches of work for that (at 3
    /// batches, a worker writing 1,000-message batches ran dry for about 15 ms in every 65),
    /// and pausing rarely keeps the dropped read-ahead rare.
    fn pause(batch_size: usize) -> Backlog {
        Backlog { messages: batch_size.saturating_mul(32), bytes: 64 << 20 }
    }

    fn resume(batch_size: usize) -> Backlog {
        Backlog { messages: batch_size.saturating_mul(16), bytes: 32 << 20 }
    }
}

/// What is held read ahead, in messages and payload bytes: by one partition's worker, or by
/// all of a member's together.
#[derive(Debug, Default, Clone, Copy)]
struct Buffered {
    messages: usize,
    bytes: usize,
}

impl Buffered {
    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    fn remove(&mut self, gone: Buffered) {
        self.messages = self.messages.saturating_sub(gone.messages);
        self.bytes = self.bytes.saturating_sub(gone.bytes);
    }

    fn reaches(&self, backlog: Backlog) -> bool {
        self.messages >= backlog.messages || self.bytes >= backlog.bytes
    }

    fn within(&self, backlog: Backlog) -> bool {
        self.messages <= backlog.messages && self.bytes <= backlog.bytes
    }
}

/// When the reader pauses a partition and resumes it: each partition on its own past
/// [`Backlog::pause`], and the member as a whole past 192 batches or 64 MiB, so memory is
/// bounded however many partitions are assigned, each far behind.
///
/// Over the member's budget a partition is paused once it holds 4 batches (or 8 MiB), and
/// it is resumed when the member is down to 96 batches (and 32 MiB) — or, while others hold
/// more, when it is down to 2 batches (and 4 MiB), so a partition with little buffered is
/// never left waiting for the others to drain. Draining a 1M-message backlog over 12
/// partitions, the budget cut the consumer's peak resident memory from 134–164 MiB to
/// 112–126 MiB at the same rate. Pausing each partition at 16 batches instead cut it as far
/// but slowed a member with 4 partitions by a quarter (a pause drops what librdkafka fetched
/// ahead): the member's budget bounds the many, the partition's own point leaves the few
/// their read-ahead.
#[derive(Debug, Clone, Copy)]
struct Limits {
    pause: Backlog,
    resume: Backlog,
    member_pause: Backlog,
    member_resume: Backlog,
    share: Backlog,
    share_resume: Backlog,
}

impl Limits {
    fn new(batch_size: usize) -> Limits {
        let batches = |n: usize| batch_size.saturating_mul(n);
        Limits {
            pause: Backlog::pause(batch_size),
            resume: Backlog::resume(batch_size),
            member_pause: Backlog { messages: batches(192), bytes: 64 << 20 },
            member_resume: Backlog { messages: batches(96), bytes: 32 << 20 },
            share: Backlog { messages: batches(4), bytes: 8 << 20 },
            share_resume: Backlog { messages: batches(2), bytes: 4 << 20 },
        }
    }

    /// Whether to pause a partition whose worker holds what it does, the member `member`.
    fn pause(&self, worker: &Worker, member: Buffered) -> bool {
        worker.reaches(self.pause) || (member.reaches(self.member_pause) && worker.reaches(self.share))
    }

    /// Whether to resume a paused partition.
    fn resume(&self, worker: &Worker, member: Buffered) -> bool {
        worker.within(self.resume) && (member.within(self.member_resume) || worker.within(self.share_resume))
    }
}

impl Worker {
    fn new(
        sender: mpsc::Sender<InboundMessage>,
        revoked: Arc<AtomicBool>,
        handle: tokio::task::JoinHandle<()>,
    ) -> Worker {
        Worker {
            sender,
            pending: VecDeque::new(),
            pending_bytes: 0,
            paused: false,
            gaps: OffsetGaps::default(),
            revoked,
            handle,
        }
    }

    /// Buffers a message (counted in the member's `buffered` too) and flushes.
    fn push(&mut self, message: InboundMessage, buffered: &mut Buffered) {
        let bytes = message.payload.as_ref().map_or(0, Vec::len);
        self.pending_bytes += bytes;
        buffered.add(bytes);
        self.pending.push_back(message);
        self.flush(buffered);
    }

    /// What `pending` holds.
    fn buffered(&self) -> Buffered {
        Buffered { messages: self.pending.len(), bytes: self.pending_bytes }
    }

    fn reaches(&self, backlog: Backlog) -> bool {
        self.buffered().reaches(backlog)
    }

    fn within(&self, backlog: Backlog) -> bool {
        self.buffered().within(backlog)
    }

    /// Moves pending messages into the channel while it has room.
    fn flush(&mut self, buffered: &mut Buffered) {
        while let Some(message) = self.pending.pop_front() {
            let bytes = message.payload.as_ref().map_or(0, Vec::len);
            match self.sender.try_send(message) {
                Ok(()) => {
                    self.pending_bytes -= bytes;
                    buffered.remove(Buffered { messages: 1, bytes });
                }
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.pending.push_front(message);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(dropped = self.pending.len() + 1, "partition worker stopped; messages dropped");
                    buffered.remove(Buffered { messages: self.pending.len() + 1, bytes: self.pending_bytes });
                    self.pending.clear();
                    self.pending_bytes = 0;
                    return;
                }
            }
        }
    }
}

/// What every partition worker shares with the reader.
#[derive(Clone)]
struct WorkerLinks {
    /// For the Kafka commit after the database commit.
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// For dead letters.
    dead_letters: DeadLetters,
    /// Notified when the worker took messages from its channel.
    drained: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    /// Cancelled when an after-commit hook halts the member.
    halt: CancellationToken,
}

/// The reader's workers by topic, then partition (looked up without allocating a key).
/// Dropping it (the consumer's task aborted or its future dropped) aborts the workers, as a
/// crash would stop them; a graceful stop awaits them through [`Workers::into_handles`].
#[derive(Default)]
struct Workers(HashMap<String, HashMap<i32, Worker>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in self.0.values().flat_map(HashMap::values) {
            worker.handle.abort();
        }
    }
}

/// Worker tasks being awaited; the ones still running when this is dropped are aborted.
struct Handles(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Handles {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

impl Workers {
    fn get(&self, topic: &str, partition: i32) -> Option<&Worker> {
        self.0.get(topic).and_then(|partitions| partitions.get(&partition))
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Worker> {
        self.0.get_mut(topic).and_then(|partitions| partitions.get_mut(&partition))
    }

    fn insert(&mut self, topic: &str, partition: i32, worker: Worker) -> Option<Worker> {
        self.0.entry(topic.to_owned()).or_default().insert(partition, worker)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, i32, &mut Worker)> {
        self.0.iter_mut().flat_map(|(topic, partitions)| {
            partitions.iter_mut().map(move |(partition, worker)| (topic.as_str(), *partition, worker))
        })
    }

    fn into_handles(mut self) -> Handles {
        let workers = std::mem::take(&mut self.0);
        Handles(workers.into_values().flat_map(HashMap::into_values).map(|worker| worker.handle).collect())
    }
}

/// Pauses or resumes one partition in librdkafka (pausing drops what librdkafka prefetched
/// for it; resuming fetches again from the message after the last one handed out).
fn pause_resume(
    consumer: &StreamConsumer<GroupContext>,
    paused: &Paused,
    topic: &str,
    partition: i32,
    pause: bool,
) -> bool {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if pause { consumer.pause(&list) } else { consumer.resume(&list) };
    if let Err(error) = result {
        tracing::warn!(%error, topic, partition, pause, "pausing or resuming a partition failed");
        return false;
    }
    if let Ok(mut paused) = paused.lock() {
        if pause {
            paused.insert((topic.to_owned(), partition));
        } else {
            paused.remove(&(topic.to_owned(), partition));
        }
    }
    true
}

/// How long the reader waits for librdkafka to take a seek (a local step: the fetch that
/// follows is not awaited).
const SEEK_TIMEOUT: Duration = Duration::from_secs(1);

/// Re-reads the reader has put off: when, and of which partition.
type Held = Vec<(Instant, String, i32)>;

/// Whether the message at `offset` goes to the partition's worker, after checking that no
/// offsets were skipped before it ([`gaps`](super::gaps)). A skip is read again from its
/// first missing offset (and the message dropped: it comes again) before it is believed;
/// re-reads put off for later are added to `held`.
fn hand_over(
    consumer: &StreamConsumer<GroupContext>,
    worker: &mut Worker,
    held: &mut Held,
    (topic, partition, offset): (&str, i32, i64),
) -> bool {
    match worker.gaps.check(offset, Instant::now) {
        Verdict::InOrder => true,
        Verdict::Drop => false,
        Verdict::Reread { from } => {
            tracing::debug!(
                topic,
                partition,
                from,
                served = offset,
                "offsets skipped; reading the partition again from the first missing one"
            );
            !reread(consumer, worker, (topic, partition, from), Some(offset))
        }
        Verdict::Hold { until } => {
            held.push((until, topic.to_owned(), partition));
            false
        }
        Verdict::Refilled { skipped_to } => {
            tracing::warn!(
                topic,
                partition,
                offset,
                skipped_to,
                "the broker served offset {skipped_to} before {offset}; read again, nothing skipped"
            );
            gap_metric(topic, partition, "refilled");
            true
        }
        Verdict::Gap { from, checked: true } => {
            if worker.gaps.confirmed() == 1 {
                tracing::info!(topic, partition, from, to = offset, "offsets {from}..{offset} are not in the partition (compaction, transaction markers or retention); its skips are taken as they come for the next minute, then checked again");
            } else {
                tracing::debug!(topic, partition, from, to = offset, "offsets skipped, checked: not in the partition");
            }
            gap_metric(topic, partition, "confirmed");
            true
        }
        Verdict::Gap { from, checked: false } => {
            tracing::debug!(topic, partition, from, to = offset, "offsets skipped (the partition's skips are trusted)");
            gap_metric(topic, partition, "trusted");
            true
        }
    }
}

/// Reads the partition again from `from`; whether that started. When it did not, the skip
/// is believed (`served` is the message handed over instead, if any).
fn reread(
    consumer: &StreamConsumer<GroupContext>,
    worker: &mut Worker,
    (topic, partition, from): (&str, i32, i64),
    served: Option<i64>,
) -> bool {
    match consumer.seek(topic, partition, Offset::Offset(from), SEEK_TIMEOUT) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(topic, partition, from, %error, "offsets skipped and the partition could not be read again; moving on");
            gap_metric(topic, partition, "unchecked");
            worker.gaps.abandon(served);
            false
        }
    }
}

/// Counts a skip in a partition's offsets by how it ended.
fn gap_metric(topic: &str, partition: i32, outcome: &'static str) {
    let labels = [("topic", topic.to_owned()), ("partition", partition.to_string()), ("outcome", outcome.to_owned())];
    metrics::counter!("dionysus_consumer_offset_gaps_total", &labels).increment(1);
}

/// Counts a committed batch: messages consumed, dead letters, batch duration.
fn record_batch_metrics(topic: &str, partition: i32, messages: usize, outcome: &BatchOutcome, duration: Duration) {
    let labels = [("topic", topic.to_owned()), ("partition", partition.to_string())];
    metrics::counter!("dionysus_consumer_messages_total", &labels).increment(messages as u64);
    metrics::counter!("dionysus_consumer_dead_letters_total", &labels).increment(outcome.dead_letters.len() as u64);
    metrics::histogram!("dionysus_consumer_batch_seconds", &labels).record(duration.as_secs_f64());
}

impl Consumer {
    /// Consumes until `shutdown` is cancelled; in-flight batches are finished first. It
    /// starts by checking the replica tables of its topics ([`Consumer::check_tables`]) and
    /// fails at once, saying the fixes, when they do not fit their models.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let inner = &self.inner;
        if inner.topics.is_empty() {
            return Err(ConsumerError::NoTopics);
        }
        self.check_tables().await?;
        self.load_replaying().await?;
        // Health endpoint and liveness file, until this function returns.
        let telemetry = shutdown.child_token();
        let _stop_telemetry = telemetry.clone().drop_guard();
        let consumer = self.clone();
        let healthy: crate::telemetry::Health = Arc::new(move || consumer.check_health());
        #[cfg(feature = "metrics")]
        if let Some(address) = inner.serve {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| ConsumerError::Serve { address, source })?;
            let metrics = crate::telemetry::prometheus();
            let unhealthy = "[Dionysus Consumer] healthcheck failed";
            tokio::spawn(crate::telemetry::serve(listener, metrics, healthy.clone(), unhealthy, telemetry.clone()));
        }
        if let Some(path) = inner.health_file.clone() {
            tokio::spawn(crate::telemetry::health_file(path, healthy, Duration::from_secs(1), telemetry.clone()));
        }
        let kafka = &inner.config.kafka;
        let assignments: Assignments = Arc::default();
        let paused: Paused = Arc::default();
        let context = GroupContext {
            database_url: inner.config.database_url.clone(),
            group: inner.group.clone(),
            assignments: assignments.clone(),
            paused: paused.clone(),
            logs: crate::kafka::Logs::default(),
            progress: inner.progress.clone(),
        };
        let mut client = crate::kafka::consumer_config(kafka, &inner.group);
        client.set("statistics.interval.ms", "5000");
        // The offsets on the broker are for lag tooling (this consumer resumes from the ones
        // stored with the replica rows): each batch stores its next offset, and librdkafka
        // commits the latest stored ones every second and when partitions are revoked —
        // not one request per batch, which on a busy partition set costs the broker more
        // than the fetches do.
        client.set("enable.auto.commit", "true").set("auto.commit.interval.ms", KAFKA_COMMIT_INTERVAL_MS.to_string());
        // The application's own settings (environment, then builder) still win over these.
        for (key, value) in &kafka.properties {
            client.set(key, value);
        }
        for (key, value) in &inner.kafka_properties {
            client.set(key, value);
        }
        use crate::kafka::{kafka_error, KafkaOperation};
        let consumer: Arc<StreamConsumer<GroupContext>> =
            Arc::new(client.create_with_context(context).map_err(kafka_error(KafkaOperation::CreateConsumer, kafka))?);
        let topics: Vec<&str> = inner.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| ConsumerError::Subscribe {
            topics: inner.topics.clone(),
            source: Box::new(crate::kafka::redact_error(source)),
        })?;
        // The largest dead letter is a whole message of the largest size consumed plus its
        // key and headers; librdkafka's default (1,000,000 bytes) would refuse most of them.
        let largest = inner.config.consumer.max_message_bytes.saturating_add(DEAD_LETTER_MARGIN_BYTES);
        let producer: crate::kafka::Producer = crate::kafka::producer_config(kafka)
            .set("message.max.bytes", largest.min(1_000_000_000).to_string())
            .set("message.timeout.ms", DEAD_LETTER_TIMEOUT.as_millis().to_string())
            .create_with_context(crate::kafka::Logs::default())
            .map_err(kafka_error(KafkaOperation::CreateProducer, kafka))?;
        let dead_letters = DeadLetters {
            producer,
            topic: inner.config.consumer.dead_letter_topic.clone(),
            group: inner.group.clone(),
            attempts: inner.config.consumer.retry_attempts.max(1),
        };
        tracing::info!(group = %inner.group, topics = ?inner.topics, "consumer started");

        let mut workers = Workers::default();
        let mut stream = consumer.stream();
        // Cancelled by a worker whose after-commit hook halts: the whole member stops at
        // once, as a crashed process would.
        let halt = CancellationToken::new();
        // Workers signal here when they took messages from their channel.
        let drained = Arc::new(tokio::sync::Notify::new());
        let links = WorkerLinks {
            consumer: consumer.clone(),
            dead_letters,
            drained: drained.clone(),
            shutdown: shutdown.clone(),
            halt: halt.clone(),
        };
        let batch_size = inner.config.consumer.batch_size.max(1);
        // A partition is paused when it, or the member as a whole, holds too much (see
        // `Limits`); the others keep being read meanwhile.
        let limits = Limits::new(batch_size);
        let mut buffered = Buffered::default();
        let mut held = Held::new();
        loop {
            let wake = held.iter().map(|(until, _, _)| *until).min();
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                () = async {
                    match wake {
                        Some(until) => tokio::time::sleep_until(until.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    held.retain(|(until, topic, partition)| {
                        if *until > now {
                            return true;
                        }
                        if let Some(worker) = workers.get_mut(topic, *partition) {
                            if let Some(from) = worker.gaps.due(now) {
                                reread(&consumer, worker, (topic, *partition, from), None);
                            }
                        }
                        false
                    });
                    continue;
                }
                () = drained.notified() => {
                    for (_, _, worker) in workers.iter_mut() {
                        worker.flush(&mut buffered);
                    }
                    for (topic, partition, worker) in workers.iter_mut() {
                        if worker.paused
                            && limits.resume(worker, buffered)
                            && !worker.revoked.load(Ordering::SeqCst)
                            && pause_resume(&consumer, &paused, topic, partition, false)
                        {
                            worker.paused = false;
                        }
                    }
                    inner.health.beat();
                    continue;
                }
                // Dropping the workers aborts them.
                _ = halt.cancelled() => return Ok(()),
                next = tokio::time::timeout(Duration::from_millis(500), stream.next()) => next,
            };
            inner.health.beat();
            let message = match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    continue;
                }
                Ok(Some(Ok(message))) => message,
            };
            let (topic, partition) = (message.topic(), message.partition());
            // A worker whose assignment was not revoked is the current one (a new assignment
            // of its partition revokes the old flag), so the usual message needs no lock.
            let live = workers
                .get(topic, partition)
                .is_some_and(|w| !w.revoked.load(Ordering::SeqCst) && !w.sender.is_closed());
            if !live {
                let key = (topic.to_owned(), partition);
                let current = assignments.lock().ok().and_then(|a| a.get(&key).cloned());
                let Some(current) = current else {
                    tracing::debug!(topic, partition, "message of a partition no longer assigned; dropped");
                    continue;
                };
                let reusable = workers
                    .get(topic, partition)
                    .is_some_and(|w| Arc::ptr_eq(&w.revoked, &current.revoked) && !w.sender.is_closed());
                if !reusable {
                    let (sender, receiver) = mpsc::channel(batch_size * 2);
                    let handle =
                        tokio::spawn(self.clone().partition_worker(receiver, current.revoked.clone(), links.clone()));
                    let mut worker = Worker::new(sender, current.revoked, handle);
                    // Skips between the stored offset and the first message are checked too.
                    worker.gaps = OffsetGaps::starting_at(current.start);
                    if let Some(old) = workers.insert(topic, partition, worker) {
                        buffered.remove(old.buffered());
                        drop(old.sender);
                    }
                    // A partition its previous worker paused (and no new assignment resumed)
                    // would never be fetched again for the new one.
                    if paused.lock().is_ok_and(|paused| paused.contains(&key)) {
                        pause_resume(&consumer, &paused, topic, partition, false);
                    }
                }
            }
            let offset = message.offset();
            let Some(worker) = workers.get_mut(topic, partition) else { continue };
            if !hand_over(&consumer, worker, &mut held, (topic, partition, offset)) {
                continue;
            }
            inner.progress.received(topic, partition, offset);
            let inbound = InboundMessage {
                topic: topic.to_owned(),
                partition,
                offset,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            };
            drop(message);
            if !worker.paused && limits.pause(worker, buffered) {
                worker.paused = pause_resume(&consumer, &paused, &inbound.topic, partition, true);
            }
            worker.push(inbound, &mut buffered);
        }
        // In-flight work finishes on shutdown; what is still buffered is read again from the
        // stored offsets by whoever consumes the partition next.
        // A batch stuck on a database that does not answer is abandoned after the grace
        // period (its transaction is never committed; the connection is discarded).
        let mut handles = workers.into_handles();
        let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for handle in &mut handles.0 {
                if let Err(error) = handle.await {
                    tracing::warn!(%error, "partition worker ended abnormally");
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight batches did not finish in time; abandoned (read again from the stored offsets)");
        }
        drop(handles);
        tracing::info!(group = %inner.group, "consumer stopped");
        Ok(())
    }

    async fn partition_worker(
        self,
        mut receiver: mpsc::Receiver<InboundMessage>,
        revoked: Arc<AtomicBool>,
        links: WorkerLinks,
    ) {
        let WorkerLinks { consumer, dead_letters, drained, shutdown, halt } = links;
        let batch_size = self.inner.config.consumer.batch_size.max(1);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = receiver.recv() => first,
            };
            let Some(first) = first else { return };
            let mut messages = vec![first];
            while messages.len() < batch_size {
                match receiver.try_recv() {
                    Ok(message) => messages.push(message),
                    Err(_) => break,
                }
            }
            // The reader refills the channel from what it buffered for this partition.
            drained.notify_one();
            if revoked.load(Ordering::SeqCst) {
                return;
            }
            let (topic, partition) = (messages[0].topic.clone(), messages[0].partition);
            let span = tracing::info_span!(
                "dionysus.consume.batch",
                topic = %topic,
                partition,
                first_offset = messages[0].offset,
                last_offset = messages.last().map_or(0, |m| m.offset),
                count = messages.len(),
            );
            let started = Instant::now();
            let mut attempt = 0u32;
            let mut delays = super::apply::retry_delays();
            // Avro messages restated as envelopes; while the schema registry cannot be
            // reached the partition waits (nothing is dead-lettered for it).
            #[cfg(feature = "avro")]
            let translated = loop {
                match self.translate(&messages).await {
                    Ok(translated) => break translated,
                    Err(error) => {
                        attempt = attempt.saturating_add(1);
                        self.inner.progress.fault(
                            &topic,
                            partition,
                            format!("{} (attempt {attempt}; retrying)", Report(&error)),
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(super::apply::next_delay(&mut delays)) => {}
                        }
                        if revoked.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            };
            #[cfg(feature = "avro")]
            let translated = translated.map(Arc::new);
            #[cfg(feature = "avro")]
            let batch: &[InboundMessage] = translated.as_ref().map_or(&messages[..], |translated| &translated.messages);
            #[cfg(not(feature = "avro"))]
            let batch: &[InboundMessage] = &messages;
            // Offsets of this batch already dead-lettered: a retry of the batch, or its split
            // after a database rejection, does not send them again.
            let sent: Arc<Mutex<HashSet<i64>>> = Arc::default();
            let outcome = loop {
                let mut sink = |dead: &DeadLetter| -> SinkFuture<'_> {
                    #[cfg(feature = "avro")]
                    let dead = match &translated {
                        Some(translated) => translated.original(dead),
                        None => dead.clone(),
                    };
                    #[cfg(not(feature = "avro"))]
                    let dead = dead.clone();
                    let (dead_letters, sent, shutdown) = (dead_letters.clone(), sent.clone(), shutdown.clone());
                    Box::pin(async move {
                        let offset = dead.message.offset;
                        if sent.lock().is_ok_and(|sent| sent.contains(&offset)) {
                            return Ok(());
                        }
                        dead_letters.send(&dead, &shutdown).await?;
                        if let Ok(mut sent) = sent.lock() {
                            sent.insert(offset);
                        }
                        Ok(())
                    })
                };
                match self.apply_with_retry(batch, &mut sink, &shutdown, false).instrument(span.clone()).await {
                    Ok(outcome) => break outcome,
                    Err(error) => {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        attempt = attempt.saturating_add(1);
                        let offset = messages[0].offset;
                        self.inner.progress.fault(
                            &topic,
                            partition,
                            format!(
                                "batch from offset {offset} keeps failing (attempt {attempt}; retrying): {}",
                                Report(&error)
                            ),
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(super::apply::next_delay(&mut delays)) => {}
                        }
                        if revoked.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            };
            tracing::info!(
                parent: &span,
                // Messages, not events: a batch written straight from its messages
                // (`direct`) reports no events.
                applied = messages.len().saturating_sub(outcome.already_applied + outcome.dead_letters.len()),
                dead_letters = outcome.dead_letters.len(),
                already_applied = outcome.already_applied,
                duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "batch committed"
            );
            record_batch_metrics(&topic, partition, messages.len(), &outcome, started.elapsed());
            if let Some(next_offset) = outcome.next_offset {
                self.inner.progress.committed(&topic, partition, next_offset);
                if let Some(hook) = &self.inner.after_commit {
                    if hook(&topic, partition, next_offset) == AfterCommit::Halt {
                        halt.cancel();
                        return;
                    }
                }
                let mut offsets = TopicPartitionList::new();
                if offsets.add_partition_offset(&topic, partition, Offset::Offset(next_offset)).is_ok() {
                    // `store_offsets` takes the next offset as given (unlike `store_offset`).
                    if let Err(error) = consumer.store_offsets(&offsets) {
                        tracing::debug!(%error, %topic, partition, "storing the offset for the Kafka commit failed (the database's stored offset still holds)");
                    }
                }
            }
            self.notify(batch, &outcome.events).await;
        }
    }
}

/// The dead-letter producer and where its messages go.
#[derive(Clone)]
struct DeadLetters {
    producer: crate::kafka::Producer,
    topic: String,
    group: String,
    /// Sends of one dead letter before its partition is reported stalled.
    attempts: u32,
}

impl DeadLetters {
    /// Sends `dead`, whole when it fits the dead-letter topic and cut to a prefix with its
    /// length and digest when it does not; retried up to `attempts` times.
    async fn send(&self, dead: &DeadLetter, shutdown: &CancellationToken) -> Result<(), ConsumerError> {
        use backon::Retryable as _;
        let message = &dead.message;
        let cut = AtomicBool::new(false);
        let attempt = || async {
            loop {
                let cut_now = cut.load(Ordering::SeqCst);
                let record = dead_letter_record(&self.group, dead, cut_now);
                match self.producer.send(record.to_future_record(&self.topic), DEAD_LETTER_TIMEOUT).await {
                    Ok(_) => {
                        if cut_now {
                            tracing::warn!(topic = %message.topic, partition = message.partition, offset = message.offset, bytes = message.payload.as_ref().map_or(0, Vec::len), "dead letter too large for the dead-letter topic; sent its first bytes, length and SHA-256");
                        }
                        return Ok(());
                    }
                    // Too large as a whole: sent again at once, cut.
                    Err((source, _)) if !cut_now && is_too_large(&source) => cut.store(true, Ordering::SeqCst),
                    Err((source, _)) => {
                        let labels = [("topic", message.topic.clone()), ("partition", message.partition.to_string())];
                        metrics::counter!("dionysus_consumer_dead_letter_failures_total", &labels).increment(1);
                        return Err(source);
                    }
                }
            }
        };
        let retries = usize::try_from(self.attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        let sending = attempt.retry(super::apply::retry_schedule().with_max_times(retries)).notify(|source, wait| {
            tracing::warn!(error = %source, ?wait, topic = %message.topic, partition = message.partition, offset = message.offset, "sending a dead letter failed; retrying");
        });
        tokio::select! {
            () = shutdown.cancelled() => Err(ConsumerError::Stopped),
            sent = sending => sent.map_err(|source| ConsumerError::DeadLetter {
                topic: message.topic.clone(),
                partition: message.partition,
                offset: message.offset,
                dead_letter_topic: self.topic.clone(),
                attempts: self.attempts,
                source: Box::new(source),
            }),
        }
    }
}

fn is_too_large(error: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode;
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord))
}

/// A dead letter as produced: owned key, value and header values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeadLetterRecord {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
}

impl DeadLetterRecord {
    fn to_future_record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let headers = self.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header { key, value: Some(value.as_str()) })
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        record
    }
}

/// The dead letter of `dead`: the original key and value with headers saying why, or, when
/// `cut`, the first [`DEAD_LETTER_PREFIX_BYTES`] of the value (and at most
/// [`DEAD_LETTER_KEY_BYTES`] of the key) with the original length and SHA-256.
fn dead_letter_record(group: &str, dead: &DeadLetter, cut: bool) -> DeadLetterRecord {
    let message = &dead.message;
    let mut headers = vec![
        (DeadLetterHeaders::REASON, dead.reason.to_owned()),
        (DeadLetterHeaders::ERROR, prefix_str(&dead.error, DEAD_LETTER_ERROR_BYTES).to_owned()),
        (DeadLetterHeaders::TOPIC, message.topic.clone()),
        (DeadLetterHeaders::PARTITION, message.partition.to_string()),
        (DeadLetterHeaders::OFFSET, message.offset.to_string()),
        (DeadLetterHeaders::GROUP, group.to_owned()),
    ];
    if !cut {
        return DeadLetterRecord { key: message.key.clone(), payload: message.payload.clone(), headers };
    }
    let payload = message.payload.as_deref().map(|payload| {
        headers.push((DeadLetterHeaders::ORIGINAL_LENGTH, payload.len().to_string()));
        headers.push((DeadLetterHeaders::ORIGINAL_SHA256, sha256_hex(payload)));
        payload[..payload.len().min(DEAD_LETTER_PREFIX_BYTES)].to_vec()
    });
    let key = message.key.as_deref().map(|key| {
        if key.len() > DEAD_LETTER_KEY_BYTES {
            headers.push((DeadLetterHeaders::ORIGINAL_KEY_LENGTH, key.len().to_string()));
        }
        key[..key.len().min(DEAD_LETTER_KEY_BYTES)].to_vec()
    });
    DeadLetterRecord { key, payload, headers }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix_str(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(payload: Vec<u8>, key: Vec<u8>) -> DeadLetter {
        DeadLetter {
            message: InboundMessage {
                topic: "t".to_owned(),
                partition: 2,
                offset: 7,
                key: Some(key),
                payload: Some(payload),
            },
            reason: "oversized",
            error: "é".repeat(5000),
        }
    }

    fn header<'a>(record: &'a DeadLetterRecord, name: &str) -> Option<&'a str> {
        record.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }

    /// A partition is paused only when far ahead, and resumed while its worker still has many
    /// batches to write: the fetch after a resume starts over at the broker, and a worker
    /// that runs dry meanwhile waits (3 batches of slack left 1,000-message batches waiting
    /// about 15 ms in every 65).
    #[tokio::test]
    async fn a_resumed_partition_leaves_its_worker_many_batches_of_slack() {
        let batch_size = 500;
        let (sender, mut receiver) = mpsc::channel(batch_size * 2);
        let mut worker = Worker::new(sender, Arc::default(), tokio::spawn(async {}));
        let message = |offset| InboundMessage {
            topic: "t".to_owned(),
            partition: 0,
            offset,
            key: None,
            payload: Some(vec![b'x'; 500]),
        };
        let mut buffered = Buffered::default();
        let mut offset = 0;
        while !worker.reaches(Backlog::pause(batch_size)) {
            worker.push(message(offset), &mut buffered);
            offset += 1;
        }
        assert!(offset >= 32 * 500, "paused after {offset} messages");
        // The worker takes batches until the partition is resumed.
        let mut taken = 0;
        while !worker.within(Backlog::resume(batch_size)) {
            for _ in 0..batch_size {
                receiver.try_recv().unwrap();
                taken += 1;
            }
            worker.flush(&mut buffered);
        }
        let slack = offset - taken;
        assert!(slack >= 16 * 500, "resumed with {slack} messages left");
        // Large messages are bounded by bytes instead: 64 MiB to pause, 32 MiB to resume.
        let (sender, _receiver) = mpsc::channel(1);
        let mut large = Worker::new(sender, Arc::default(), tokio::spawn(async {}));
        for offset in 0..66 {
            large.push(InboundMessage { payload: Some(vec![b'x'; 1 << 20]), ..message(offset) }, &mut buffered);
        }
        assert!(large.reaches(Backlog::pause(batch_size)));
        assert!(!large.within(Backlog::resume(batch_size)));
    }

    /// A member with many partitions far behind holds at most its budget in all (192 batches),
    /// not 32 batches for each; a partition with little buffered is neither paused for the
    /// others nor left paused until they drain.
    #[tokio::test]
    async fn a_member_holds_at_most_its_budget_however_many_partitions_it_reads() {
        let batch_size = 500;
        let limits = Limits::new(batch_size);
        let mut buffered = Buffered::default();
        let message = |partition, offset| InboundMessage {
            topic: "t".to_owned(),
            partition,
            offset,
            key: None,
            payload: Some(vec![b'x'; 400]),
        };
        // 24 partitions, their workers busy (channels full), messages arriving in turn as
        // librdkafka hands them out; the reader pauses each as `limits` says.
        let mut workers: Vec<(Worker, mpsc::Receiver<InboundMessage>)> = (0..24)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(1);
                (Worker::new(sender, Arc::default(), tokio::spawn(async {})), receiver)
            })
            .collect();
        let mut most = 0;
        for offset in 0..20_000 {
            for (partition, (worker, _)) in (0..).zip(workers.iter_mut()) {
                if worker.paused {
                    continue;
                }
                if limits.pause(worker, buffered) {
                    worker.paused = true;
                    continue;
                }
                worker.push(message(partition, offset), &mut buffered);
                most = most.max(buffered.messages);
            }
        }
        assert!(workers.iter().all(|(worker, _)| worker.paused), "every partition is paused");
        // Past the budget each partition adds at most one message before it is paused.
        assert!(most <= 192 * batch_size + 24, "the member held {most} messages");
        assert!(most >= 192 * batch_size, "the budget is used before pausing: {most}");
        let total: usize = workers.iter().map(|(worker, _)| worker.pending.len()).sum();
        assert_eq!(total, buffered.messages, "the member's count is the sum of its partitions'");

        // One partition drains while the others still hold more than half the budget: it is
        // resumed once down to 2 batches, not before.
        let (worker, receiver) = &mut workers[0];
        let mut resumed_at = None;
        while !worker.pending.is_empty() {
            receiver.try_recv().unwrap();
            worker.flush(&mut buffered);
            if resumed_at.is_none() && limits.resume(worker, buffered) {
                resumed_at = Some(worker.pending.len());
            }
        }
        assert!(buffered.messages > 96 * batch_size, "the others still hold {}", buffered.messages);
        assert_eq!(resumed_at, Some(2 * batch_size), "resumed with {resumed_at:?} buffered");

        // Once the member is down to half its budget, every partition within its own
        // resume point is resumed.
        for (worker, receiver) in workers.iter_mut().skip(1) {
            while worker.pending.len() > 3 * batch_size {
                receiver.try_recv().unwrap();
                worker.flush(&mut buffered);
            }
        }
        assert!(buffered.within(limits.member_resume));
        assert!(workers.iter().all(|(worker, _)| limits.resume(worker, buffered)));
    }

    /// A few partitions far behind keep their own read-ahead (32 batches each): the member's
    /// budget does not pause them.
    #[tokio::test]
    async fn a_few_partitions_keep_their_own_read_ahead() {
        let batch_size = 1000;
        let limits = Limits::new(batch_size);
        let mut buffered = Buffered::default();
        let mut workers: Vec<(Worker, mpsc::Receiver<InboundMessage>)> = (0..4)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(1);
                (Worker::new(sender, Arc::default(), tokio::spawn(async {})), receiver)
            })
            .collect();
        for offset in 0..25_000 {
            for (partition, (worker, _)) in (0..).zip(workers.iter_mut()) {
                assert!(!limits.pause(worker, buffered), "partition {partition} paused at {offset}");
                let message = InboundMessage {
                    topic: "t".to_owned(),
                    partition,
                    offset,
                    key: None,
                    payload: Some(vec![b'x'; 500]),
                };
                worker.push(message, &mut buffered);
            }
        }
    }

    #[test]
    fn a_dead_letter_is_whole_unless_cut() {
        let record = dead_letter_record("g", &dead(b"abc".to_vec(), b"k".to_vec()), false);
        assert_eq!(record.payload.as_deref(), Some(&b"abc"[..]));
        assert_eq!(header(&record, DeadLetterHeaders::REASON), Some("oversized"));
        assert_eq!(header(&record, DeadLetterHeaders::ORIGINAL_LENGTH), None);
        // The error text is bounded, on a character boundary.
        let error = header(&record, DeadLetterHeaders::ERROR).unwrap();
        assert!(error.len() <= DEAD_LETTER_ERROR_BYTES && error.len() > DEAD_LETTER_ERROR_BYTES - 2, "{}", error.len());
    }

    #[test]
    fn a_cut_dead_letter_keeps_a_prefix_its_length_and_digest() {
        let payload = vec![b'x'; 3 << 20];
        let key = vec![b'k'; 10_000];
        let record = dead_letter_record("g", &dead(payload.clone(), key), true);
        assert_eq!(record.payload.as_ref().map(Vec::len), Some(DEAD_LETTER_PREFIX_BYTES));
        assert_eq!(record.key.as_ref().map(Vec::len), Some(DEAD_LETTER_KEY_BYTES));
        assert_eq!(header(&record, DeadLetterHeaders::ORIGINAL_LENGTH), Some("3145728"));
        assert_eq!(header(&record, DeadLetterHeaders::ORIGINAL_KEY_LENGTH), Some("10000"));
        assert_eq!(header(&record, DeadLetterHeaders::ORIGINAL_SHA256), Some(sha256_hex(&payload).as_str()));
        assert_eq!(header(&record, DeadLetterHeaders::REASON), Some("oversized"));
    }
}
