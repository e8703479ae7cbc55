//! The delayer: it consumes the `<topic>_delay_<delay>` topics the relay sends delayed
//! copies to (`#[publish(..., delayed = "5m")]`), waits until each copy is due and re-sends
//! it, value and key unchanged, to its topic — and, when its chain goes on, to the next
//! delay topic. Consumers get the copy like any event; their timestamp guard makes a copy of
//! an event they applied harmless, and one they missed heals the replica.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let dionysus = dionysus::Dionysus::from_env()?;
//! let delayer = dionysus.delayer().build()?;
//! delayer.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Why it is correct:
//! * **Waiting.** Every copy on one delay topic waits the same delay, so within a partition
//!   copies fall due in offset order (up to the clocks of the relay processes that sent them):
//!   a partition whose head copy is not due is *paused* (librdkafka stops fetching it) and
//!   the copies already fetched are held in order; the delayer sleeps until the earliest held
//!   copy is due, while the other partitions keep moving. No polling loop runs while waiting.
//! * **At least once.** A copy's offset is stored for commit only after the broker
//!   acknowledged every message re-sent for it; until then a crash (even `kill -9`) makes the
//!   group read it again. Re-sends are therefore at least once: a copy may arrive twice,
//!   never not at all.
//! * **Order per key.** One partition is handled by one loop, one copy after the other, and
//!   a copy's messages go to the partition its partition key chooses, as the immediate
//!   message did: copies of one key arrive in the order they were sent.
//! * **Faults.** A broker error on re-send is retried with backoff, never skipped. A message
//!   that is not a delayed copy (no or unreadable headers) is not ours to fix: it goes to the
//!   dead-letter topic with the reason, and the partition moves on.
//!
//! This module owns waiting and re-sending. The names, headers and due times are the wire's
//! (`wire::delay`); sending the first copy is the relay's (`producer::plan`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::DeadLetterHeaders;
use crate::handle::Dionysus;
use crate::kafka::Logs;
use crate::producer::plan::OutgoingMessage;
use crate::producer::sender::{await_deliveries, Failure, Sender, TopicCache};
use crate::registry::Registry;
use crate::wire::delay::{chain_text, parse_chain};
pub use crate::wire::delay::{Delay, DelayError, DelayHeaders, MAX_DELAY_SECONDS};

/// The dead-letter reason of a message on a delay topic that is not a delayed copy.
pub const MALFORMED_REASON: &str = "malformed_delay";
/// How long the broker may take to acknowledge a re-sent copy before the send is retried.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The first pause after a failed re-send; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two tries of a re-send.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the delayer could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DelayerError {
    /// No delay topic to consume: no publication declares `delayed = …` and none was given.
    #[error(
        "no delay topic to consume: no #[publish(..., delayed = \"5m\")] in this binary's registry; declare one or \
         name the topics (--topic <topic>_delay_<delay>)"
    )]
    NoTopics,
    /// A topic given to consume is not named like a delay topic.
    #[error(
        "`{topic}` is not a delay topic: its name must end in `_delay_<delay>`, e.g. `v3_rentals_delay_5m` (delay \
         topics known here: {known})"
    )]
    NotADelayTopic {
        /// The topic given.
        topic: String,
        /// The delay topics of the registry, comma-separated.
        known: String,
    },
    /// A Kafka client could not be created, or the consumer could not subscribe.
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
    /// Subscribing to the delay topics failed.
    #[error("subscribing to {topics}")]
    Subscribe {
        /// The delay topics.
        topics: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
}

/// Builds a [`Delayer`]; from [`Dionysus::delayer`].
#[derive(Debug)]
#[must_use]
pub struct DelayerBuilder {
    config: Config,
    registry: Arc<Registry>,
    topics: Vec<String>,
    group: Option<String>,
}

impl Dionysus {
    /// A builder of the delayer over this handle's configuration and declarations.
    pub fn delayer(&self) -> DelayerBuilder {
        DelayerBuilder { config: self.config().clone(), registry: self.registry_arc(), topics: Vec::new(), group: None }
    }
}

impl DelayerBuilder {
    /// Consume this delay topic (repeatable; default: every delay topic of the registry). Its
    /// name must end in `_delay_<delay>`; it need not be in the registry (each copy names
    /// its own target in its headers).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// The consumer group (default: `<consumer group>_delayer`, the consumer group being
    /// [`KafkaConfig::group_id`](crate::config::KafkaConfig::group_id)).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The delayer, checking its topics.
    pub fn build(self) -> Result<Delayer, DelayerError> {
        let known = self.registry.delay_topics();
        let names: Vec<String> =
            if self.topics.is_empty() { known.iter().map(|topic| topic.name.clone()).collect() } else { self.topics };
        if names.is_empty() {
            return Err(DelayerError::NoTopics);
        }
        let mut topics = BTreeMap::new();
        for name in names {
            let Some(delay) = delay_of_topic(&name) else {
                let known = known.iter().map(|topic| topic.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(DelayerError::NotADelayTopic {
                    topic: name,
                    known: if known.is_empty() { "none".to_owned() } else { known },
                });
            };
            topics.insert(name, delay);
        }
        let group = self.group.unwrap_or_else(|| format!("{}_delayer", self.config.kafka.group_id()));
        Ok(Delayer { config: self.config, registry: self.registry, topics, group })
    }
}

/// The delay a topic named `<topic>_delay_<delay>` holds copies for.
pub fn delay_of_topic(name: &str) -> Option<Delay> {
    let (target, delay) = name.rsplit_once("_delay_")?;
    if target.is_empty() {
        return None;
    }
    Delay::parse(delay).ok().filter(|delay| delay.name() == delay_text(name))
}

fn delay_text(name: &str) -> &str {
    name.rsplit_once("_delay_").map_or("", |(_, delay)| delay)
}

/// Consumes delay topics and re-sends each copy when due; see the [module](self).
#[derive(Debug)]
pub struct Delayer {
    config: Config,
    registry: Arc<Registry>,
    topics: BTreeMap<String, Delay>,
    group: String,
}

impl Delayer {
    /// The delay topics it consumes.
    pub fn topics(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// Its consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Runs until `shutdown` is cancelled: held copies are left for the next run (their
    /// offsets are not committed), offsets of re-sent ones are committed before it returns.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), DelayerError> {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let context = DelayerContext { logs: Logs::default(), changes: changes.clone() };
        let mut client = crate::kafka::consumer_config(&self.config.kafka, &self.group);
        // Offsets are stored once a copy's re-sends are acknowledged, and committed by
        // librdkafka in the background (and on shutdown).
        client.set("enable.auto.commit", "true").set("auto.commit.interval.ms", "1000");
        for (key, value) in &self.config.kafka.properties {
            client.set(key, value);
        }
        let consumer: StreamConsumer<DelayerContext> = client
            .create_with_context(context)
            .map_err(crate::kafka::kafka_error(crate::kafka::KafkaOperation::CreateConsumer, &self.config.kafka))?;
        let topics: Vec<&str> = self.topics.keys().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| DelayerError::Subscribe { topics: topics.join(", "), source })?;
        let producer = crate::kafka::producer(&self.config.kafka)?;
        let cache = TopicCache::default();
        let sender = Sender {
            producer: &producer,
            topics: &cache,
            kafka: &self.config.kafka,
            registry: &self.registry,
            auto_create_topics: false,
        };
        let mut run = Run {
            consumer: &consumer,
            sender,
            group: &self.group,
            dead_letter_topic: &self.config.consumer.dead_letter_topic,
            held: HashMap::new(),
            shutdown: &shutdown,
        };
        tracing::info!(topics = %topics.join(", "), group = %self.group, "delayer started");
        let mut read_backoff = FIRST_BACKOFF;
        loop {
            run.rebalanced(&changes);
            let next_due = run.next_due();
            let wait = async {
                match next_due {
                    Some(due) => tokio::time::sleep(until(due)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wait => run.release_due().await,
                received = consumer.recv() => match received {
                    Ok(message) => {
                        read_backoff = FIRST_BACKOFF;
                        let entry = Entry::read(&message, &self.topics);
                        drop(message);
                        // The rebalances this read served came before its message.
                        run.rebalanced(&changes);
                        run.arrived(entry).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?read_backoff, "reading the delay topics; trying again");
                        tokio::time::sleep(read_backoff).await;
                        read_backoff = (read_backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
            metrics::gauge!("dionysus_delayer_held").set(run.held.values().map(VecDeque::len).sum::<usize>() as f64);
        }
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is not an error worth a warning.
            if !matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::NoOffset)) {
                tracing::warn!(%error, "committing the delayer's offsets on shutdown; copies since the last commit are re-sent on the next run");
            }
        }
        tracing::info!(group = %self.group, "delayer stopped");
        Ok(())
    }
}

/// How long from now until `due_ms` (milliseconds since the Unix epoch); zero when past.
fn until(due_ms: i64) -> Duration {
    let now = chrono::Utc::now().timestamp_millis();
    Duration::from_millis(u64::try_from(due_ms.saturating_sub(now)).unwrap_or(0))
}

/// A change of the partitions this member owns, seen in a rebalance callback.
#[derive(Debug)]
enum Change {
    /// These partitions were taken away: what is held of them is dropped (their next owner
    /// reads them again from the committed offset).
    Revoked(Vec<(String, i32)>),
    /// These partitions were given: they are resumed (librdkafka keeps a pause across a
    /// revocation).
    Assigned(Vec<(String, i32)>),
}

/// The consumer's context: librdkafka's logs, and the rebalances, kept in order for the
/// loop, which applies them before it handles the next message.
struct DelayerContext {
    logs: Logs,
    changes: Arc<Mutex<Vec<Change>>>,
}

fn partitions(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements().iter().map(|element| (element.topic().to_owned(), element.partition())).collect()
}

impl ClientContext for DelayerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        Logs::line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.report(&error, reason);
    }
}

impl ConsumerContext for DelayerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if let Ok(mut changes) = self.changes.lock() {
                changes.push(Change::Revoked(partitions(list)));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            if let Ok(mut changes) = self.changes.lock() {
                changes.push(Change::Assigned(partitions(list)));
            }
        }
    }
}

/// One message read from a delay topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// The copy, or why the message is not one.
    copy: Result<Copy, String>,
}

/// A delayed copy as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copy {
    /// The delay topic's delay (what the re-sent copy is marked with).
    stage: Delay,
    target: String,
    due_ms: i64,
    chain: Vec<Delay>,
    partition_key: Option<String>,
    key: String,
}

impl Entry {
    fn read(message: &BorrowedMessage<'_>, topics: &BTreeMap<String, Delay>) -> Entry {
        let mut headers = Vec::new();
        if let Some(found) = message.headers() {
            for header in found.iter() {
                headers.push((header.key.to_owned(), header.value.map(<[u8]>::to_vec)));
            }
        }
        let stage = topics.get(message.topic()).copied().or_else(|| delay_of_topic(message.topic()));
        Entry {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            copy: read_copy(stage, message.key(), &headers),
        }
    }

    /// When it is due: a copy at its due time, anything else at once.
    fn due_ms(&self) -> i64 {
        self.copy.as_ref().map_or(i64::MIN, |copy| copy.due_ms)
    }
}

/// Reads a delayed copy's headers, or says what is wrong with them.
fn read_copy(stage: Option<Delay>, key: Option<&[u8]>, headers: &[(String, Option<Vec<u8>>)]) -> Result<Copy, String> {
    let header = |name: &str| -> Result<Option<&str>, String> {
        match headers.iter().rev().find(|(key, _)| key == name) {
            None | Some((_, None)) => Ok(None),
            Some((_, Some(value))) => {
                std::str::from_utf8(value).map(Some).map_err(|_| format!("header `{name}` is not UTF-8 text"))
            }
        }
    };
    let stage = stage.ok_or("the topic's name does not end in `_delay_<delay>`")?;
    let target = header(DelayHeaders::TARGET)?
        .filter(|target| !target.is_empty())
        .ok_or_else(|| format!("header `{}` (the topic to re-send to) is missing", DelayHeaders::TARGET))?;
    let due = header(DelayHeaders::DUE)?
        .ok_or_else(|| format!("header `{}` (when the copy is due) is missing", DelayHeaders::DUE))?;
    let due_ms: i64 = due.trim().parse().map_err(|_| {
        format!("header `{}` is `{due}`, not a time in milliseconds since the Unix epoch", DelayHeaders::DUE)
    })?;
    let chain = parse_chain(header(DelayHeaders::CHAIN)?.unwrap_or(""))
        .map_err(|error| format!("header `{}`: {error}", DelayHeaders::CHAIN))?;
    let partition_key = header(DelayHeaders::PARTITION_KEY)?.map(str::to_owned);
    let key = match key {
        Some(key) => std::str::from_utf8(key).map_err(|_| "the message key is not UTF-8 text".to_owned())?,
        None => return Err("the message has no key".to_owned()),
    };
    Ok(Copy { stage, target: target.to_owned(), due_ms, chain, partition_key, key: key.to_owned() })
}

impl Copy {
    /// The messages re-sent for this copy at `now_ms`: to its target, marked with its delay,
    /// and to the next delay topic of its chain, if any.
    fn messages(&self, payload: Option<&[u8]>, now_ms: i64) -> Vec<OutgoingMessage> {
        let mut messages = vec![OutgoingMessage {
            topic: self.target.clone(),
            key: self.key.clone(),
            partition_key: self.partition_key.clone(),
            payload: payload.map(<[u8]>::to_vec),
            headers: vec![(DelayHeaders::DELAYED, self.stage.name())],
            timestamp: Some(now_ms),
        }];
        if let Some((&next, rest)) = self.chain.split_first() {
            let mut headers = vec![
                (DelayHeaders::TARGET, self.target.clone()),
                (DelayHeaders::DUE, next.due_after(now_ms).to_string()),
                (DelayHeaders::CHAIN, chain_text(rest)),
            ];
            if let Some(key) = &self.partition_key {
                headers.push((DelayHeaders::PARTITION_KEY, key.clone()));
            }
            messages.push(OutgoingMessage {
                topic: next.topic(&self.target),
                key: self.key.clone(),
                partition_key: self.partition_key.clone(),
                payload: payload.map(<[u8]>::to_vec),
                headers,
                timestamp: Some(now_ms),
            });
        }
        messages
    }
}

/// The dead letter of a message that is not a delayed copy: its key and value unchanged,
/// with the consumer's dead-letter headers.
fn dead_letter(entry: &Entry, reason: &str, group: &str, topic: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.to_owned(),
        key: entry.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned(),
        partition_key: None,
        payload: entry.payload.clone(),
        headers: vec![
            (DeadLetterHeaders::REASON, MALFORMED_REASON.to_owned()),
            (DeadLetterHeaders::ERROR, reason.to_owned()),
            (DeadLetterHeaders::TOPIC, entry.topic.clone()),
            (DeadLetterHeaders::PARTITION, entry.partition.to_string()),
            (DeadLetterHeaders::OFFSET, entry.offset.to_string()),
            (DeadLetterHeaders::GROUP, group.to_owned()),
        ],
        timestamp: None,
    }
}

/// The state of one run: the copies held per paused partition.
struct Run<'a> {
    consumer: &'a StreamConsumer<DelayerContext>,
    sender: Sender<'a>,
    group: &'a str,
    dead_letter_topic: &'a str,
    /// Per paused partition, the copies fetched and not yet due, in offset order.
    held: HashMap<(String, i32), VecDeque<Entry>>,
    shutdown: &'a CancellationToken,
}

impl Run<'_> {
    /// The earliest due time of a held partition's head.
    fn next_due(&self) -> Option<i64> {
        self.held.values().filter_map(VecDeque::front).map(Entry::due_ms).min()
    }

    /// A message arrived: handled now when due and its partition holds nothing, else held
    /// (pausing the partition).
    async fn arrived(&mut self, entry: Entry) {
        let partition = (entry.topic.clone(), entry.partition);
        if let Some(queue) = self.held.get_mut(&partition) {
            queue.push_back(entry);
            return;
        }
        if entry.due_ms() <= chrono::Utc::now().timestamp_millis() {
            self.handle(&entry).await;
            return;
        }
        tracing::debug!(topic = %entry.topic, partition = entry.partition, offset = entry.offset, due = entry.due_ms(), "holding the partition until its next copy is due");
        self.pause(&partition, true);
        self.held.insert(partition, VecDeque::from([entry]));
    }

    /// Handles every held copy that is due, in order per partition; resumes partitions
    /// that hold nothing more.
    async fn release_due(&mut self) {
        let partitions: Vec<(String, i32)> = self.held.keys().cloned().collect();
        for partition in partitions {
            loop {
                if self.shutdown.is_cancelled() {
                    return;
                }
                let now = chrono::Utc::now().timestamp_millis();
                let Some(queue) = self.held.get_mut(&partition) else { break };
                let Some(head) = queue.front() else {
                    tracing::debug!(topic = %partition.0, partition = partition.1, "no copy held any more; resuming the partition");
                    self.held.remove(&partition);
                    self.pause(&partition, false);
                    break;
                };
                if head.due_ms() > now {
                    break;
                }
                let head = head.clone();
                if !self.handle(&head).await {
                    return;
                }
                if let Some(queue) = self.held.get_mut(&partition) {
                    queue.pop_front();
                }
            }
        }
    }

    /// Re-sends a copy (or dead-letters what is not one) until the broker acknowledges it,
    /// then stores its offset. `false` when shutdown interrupted it (nothing stored).
    async fn handle(&mut self, entry: &Entry) -> bool {
        let messages = match &entry.copy {
            Ok(copy) => copy.messages(entry.payload.as_deref(), chrono::Utc::now().timestamp_millis()),
            Err(reason) => {
                tracing::warn!(topic = %entry.topic, partition = entry.partition, offset = entry.offset, reason = %reason, dead_letter_topic = %self.dead_letter_topic, "not a delayed copy; dead-lettering it");
                vec![dead_letter(entry, reason, self.group, self.dead_letter_topic)]
            }
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.send(&messages).await {
                Ok(()) => break,
                Err(failure) => {
                    metrics::counter!("dionysus_delayer_send_errors_total", "topic" => entry.topic.clone())
                        .increment(1);
                    tracing::warn!(topic = %entry.topic, partition = entry.partition, offset = entry.offset, error = %failure.message, retry_in = ?backoff, "re-sending a delayed copy failed; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let labels = [("topic", entry.topic.clone())];
        match &entry.copy {
            Ok(copy) => {
                let late = (chrono::Utc::now().timestamp_millis() - copy.due_ms).max(0);
                metrics::counter!("dionysus_delayer_resent_total", &labels).increment(1);
                metrics::histogram!("dionysus_delayer_lateness_seconds", &labels).record(late as f64 / 1_000.0);
                tracing::debug!(topic = %entry.topic, partition = entry.partition, offset = entry.offset, target = %copy.target, late_ms = late, "re-sent a delayed copy");
            }
            Err(_) => metrics::counter!("dionysus_delayer_dead_letters_total", &labels).increment(1),
        }
        self.store_next(entry);
        true
    }

    /// Stores the offset after `entry` (the next copy to read) for the next commit.
    ///
    /// Not `Consumer::store_offset`: librdkafka's `rd_kafka_offset_store` behind it stores
    /// the offset it is given *plus one*, so giving it the next offset commits one copy too
    /// far — a copy not yet re-sent that a run after a crash skips. `store_offsets` stores
    /// each offset as given.
    fn store_next(&self, entry: &Entry) {
        let mut next = TopicPartitionList::new();
        let stored = next
            .add_partition_offset(&entry.topic, entry.partition, Offset::Offset(entry.offset + 1))
            .and_then(|()| self.consumer.store_offsets(&next));
        if let Err(error) = stored {
            // The partition was taken away meanwhile: its new owner re-sends the copy again.
            tracing::debug!(%error, topic = %entry.topic, partition = entry.partition, "storing the delayer's offset");
        }
    }

    async fn send(&self, messages: &[OutgoingMessage]) -> Result<(), Failure> {
        let deliveries = self.sender.send(messages).await?;
        await_deliveries(deliveries, tokio::time::Instant::now() + SEND_TIMEOUT).await?;
        Ok(())
    }

    /// Pauses (or resumes) one partition in librdkafka.
    fn pause(&self, (topic, partition): &(String, i32), pause: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, *partition);
        let result = if pause { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        if let Err(error) = result {
            tracing::warn!(%error, topic, partition, pause, "pausing or resuming a delay partition");
        }
    }

    /// Applies the rebalances seen since the last call, in order: copies held of a revoked
    /// partition are dropped (its next owner, maybe this member, reads them again from the
    /// committed offset, as nothing of them was stored), and assigned partitions that hold
    /// nothing are resumed (librdkafka keeps a pause across a revocation).
    fn rebalanced(&mut self, changes: &Mutex<Vec<Change>>) {
        let changes = match changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(_) => return,
        };
        for change in changes {
            match change {
                Change::Revoked(partitions) => {
                    tracing::debug!(?partitions, "partitions revoked");
                    for partition in &partitions {
                        if let Some(dropped) = self.held.remove(partition) {
                            tracing::debug!(topic = %partition.0, partition = partition.1, dropped = dropped.len(), "partition revoked; its held copies are read again by its next owner");
                        }
                    }
                }
                Change::Assigned(partitions) => {
                    tracing::debug!(?partitions, "partitions assigned");
                    for partition in partitions.iter().filter(|partition| !self.held.contains_key(*partition)) {
                        self.pause(partition, false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), Some(value.as_bytes().to_vec()))).collect()
    }

    fn delay(text: &str) -> Delay {
        Delay::parse(text).unwrap()
    }

    #[test]
    fn delay_topics_are_known_by_their_suffix() {
        assert_eq!(delay_of_topic("v3_rentals_delay_5m"), Some(delay("5m")));
        assert_eq!(delay_of_topic("v3_delay_rentals_delay_90s"), Some(delay("90s")));
        assert_eq!(delay_of_topic("v3_rentals"), None);
        assert_eq!(delay_of_topic("_delay_5m"), None);
        // Only the canonical spelling names a delay topic.
        assert_eq!(delay_of_topic("v3_rentals_delay_60s"), None);
        assert_eq!(delay_of_topic("v3_rentals_delay_5x"), None);
    }

    #[test]
    fn a_copy_is_read_from_its_headers() {
        let found = read_copy(
            Some(delay("5m")),
            Some(b"Rental:1"),
            &headers(&[
                (DelayHeaders::TARGET, "v3_rentals"),
                (DelayHeaders::DUE, "1000"),
                (DelayHeaders::CHAIN, "1h"),
                (DelayHeaders::PARTITION_KEY, "7"),
            ]),
        );
        assert_eq!(
            found,
            Ok(Copy {
                stage: delay("5m"),
                target: "v3_rentals".to_owned(),
                due_ms: 1000,
                chain: vec![delay("1h")],
                partition_key: Some("7".to_owned()),
                key: "Rental:1".to_owned(),
            })
        );
    }

    #[test]
    fn a_message_without_the_headers_says_which_is_missing() {
        let target = [(DelayHeaders::TARGET, "v3_rentals")];
        let no_target = read_copy(Some(delay("5m")), Some(b"k"), &headers(&[]));
        assert!(no_target.unwrap_err().contains("`dionysus-delay-target`"));
        let no_due = read_copy(Some(delay("5m")), Some(b"k"), &headers(&target));
        assert!(no_due.unwrap_err().contains("`dionysus-delay-due`"));
        let bad_due = read_copy(
            Some(delay("5m")),
            Some(b"k"),
            &headers(&[(DelayHeaders::TARGET, "t"), (DelayHeaders::DUE, "soon")]),
        );
        assert!(bad_due.unwrap_err().contains("`soon`"));
        let bad_chain = read_copy(
            Some(delay("5m")),
            Some(b"k"),
            &headers(&[(DelayHeaders::TARGET, "t"), (DelayHeaders::DUE, "1"), (DelayHeaders::CHAIN, "1w")]),
        );
        assert!(bad_chain.unwrap_err().contains("unknown unit"));
        let no_key =
            read_copy(Some(delay("5m")), None, &headers(&[(DelayHeaders::TARGET, "t"), (DelayHeaders::DUE, "1")]));
        assert!(no_key.unwrap_err().contains("no key"));
    }

    #[test]
    fn a_due_copy_goes_to_its_topic_and_the_next_stage_of_its_chain() {
        let copy = Copy {
            stage: delay("1s"),
            target: "t".to_owned(),
            due_ms: 1_000,
            chain: vec![delay("2s"), delay("1h")],
            partition_key: Some("7".to_owned()),
            key: "Item:1".to_owned(),
        };
        let messages = copy.messages(Some(b"{}"), 5_000);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].topic, "t");
        assert_eq!(messages[0].payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(messages[0].headers, vec![(DelayHeaders::DELAYED, "1s".to_owned())]);
        assert_eq!(messages[1].topic, "t_delay_2s");
        assert!(messages[1].headers.contains(&(DelayHeaders::DUE, "7000".to_owned())));
        assert!(messages[1].headers.contains(&(DelayHeaders::CHAIN, "1h".to_owned())));
        assert_eq!(messages[1].partition_key.as_deref(), Some("7"));
        let last = Copy { chain: Vec::new(), ..copy };
        assert_eq!(last.messages(None, 5_000).len(), 1);
    }
}
