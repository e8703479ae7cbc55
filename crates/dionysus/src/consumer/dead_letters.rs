//! Reading the dead-letter topic the consumer writes (see [`DeadLetterHeaders`]) and
//! re-publishing its messages to their source topics once the cause is fixed: what
//! `dionysus dlq list|replay` and the events API's `/v1/dead-letters` routes share.
//!
//! This module owns how dead letters are read, filtered and re-sent; what makes a message a
//! dead letter, and its headers, belong to the consumer's runtime.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::Logs;

use super::DeadLetterHeaders;

/// Why reading or replaying the dead-letter topic failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeadLetterError {
    /// The topic does not exist.
    #[error(
        "the dead-letter topic `{topic}` does not exist: nothing was dead-lettered there (or set \
         --dead-letter-topic / DIONYSUS_DEAD_LETTER_TOPIC)"
    )]
    NoTopic {
        /// The topic asked for.
        topic: String,
    },
    /// A broker request failed.
    #[error("{step} {topic}")]
    Kafka {
        /// What was being done, e.g. `reading the metadata of`.
        step: &'static str,
        /// The dead-letter topic.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// A dead letter could not be re-published.
    #[error(
        "re-publishing dead letter {partition}@{offset} to {destination}; {sent} sent, the dead-letter position is \
         not committed (a new replay sends them again)"
    )]
    Republish {
        /// Partition of the dead letter.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its source topic.
        destination: String,
        /// Dead letters sent before this one.
        sent: usize,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// No client could be created.
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
    /// The blocking read task stopped.
    #[error("reading the dead-letter topic")]
    Task(#[from] tokio::task::JoinError),
}

impl DeadLetterError {
    fn kafka<'a>(step: &'static str, topic: &'a str) -> impl FnOnce(KafkaError) -> DeadLetterError + 'a {
        move |source| DeadLetterError::Kafka { step, topic: topic.to_owned(), source }
    }
}

/// Which dead letters a read applies to.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadLetterFilter {
    /// Only messages dead-lettered for this reason (e.g. `database_rejected`).
    pub(crate) reason: Option<String>,
    /// Only messages from this source topic.
    pub(crate) topic: Option<String>,
    /// Only messages at or after this offset of their source partition.
    pub(crate) from_offset: Option<i64>,
    /// Only messages at or before this offset of their source partition.
    pub(crate) to_offset: Option<i64>,
}

/// A message read from the dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct StoredDeadLetter {
    /// Partition of the dead-letter topic.
    pub(crate) partition: i32,
    /// Offset there.
    pub(crate) offset: i64,
    /// The original key.
    pub(crate) key: Option<Vec<u8>>,
    /// The original payload.
    pub(crate) payload: Option<Vec<u8>>,
    /// The original headers and the dead-letter ones.
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl StoredDeadLetter {
    /// The value of header `name`, as text.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// The offset of the message in its source partition.
    pub(crate) fn source_offset(&self) -> Option<i64> {
        self.header(DeadLetterHeaders::OFFSET).and_then(|offset| offset.parse().ok())
    }

    fn matches(&self, filter: &DeadLetterFilter) -> bool {
        let offset = self.source_offset();
        filter.reason.as_ref().is_none_or(|reason| self.header(DeadLetterHeaders::REASON).as_ref() == Some(reason))
            && filter.topic.as_ref().is_none_or(|topic| self.header(DeadLetterHeaders::TOPIC).as_ref() == Some(topic))
            && filter.from_offset.is_none_or(|from| offset.is_some_and(|offset| offset >= from))
            && filter.to_offset.is_none_or(|to| offset.is_some_and(|offset| offset <= to))
    }
}

/// What one read of the dead-letter topic found.
#[derive(Debug)]
pub(crate) struct Read {
    /// The matching messages, in partition and offset order.
    pub(crate) matching: Vec<StoredDeadLetter>,
    /// Messages read in all (matching or not).
    pub(crate) read: usize,
    /// Per partition, the offset after the last message read.
    next: BTreeMap<i32, i64>,
}

/// What a replay did.
#[derive(Debug)]
pub(crate) struct Replayed {
    /// Dead letters re-published.
    pub(crate) sent: usize,
    /// Dead letters read (matching the filter or not).
    pub(crate) read: usize,
    /// Read dead letters the filter left out.
    pub(crate) left_out: usize,
    /// Matching dead letters without a source topic header (`partition@offset`), not sent.
    pub(crate) skipped: Vec<(i32, i64)>,
}

/// How long a read of the dead-letter topic may take before it stops with what it has.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// Reads `topic` from the `group`'s committed offsets (or from the beginning without a
/// group) up to the end it had when the read started, keeping up to `limit` messages that
/// match `filter`.
fn read(
    consumer: &BaseConsumer<Logs>,
    topic: &str,
    filter: &DeadLetterFilter,
    limit: usize,
    use_committed: bool,
) -> Result<Read, DeadLetterError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(DeadLetterError::kafka("reading the metadata of", topic))?;
    let partitions = crate::kafka::partition_ids(&metadata, topic);
    if partitions.is_empty() {
        return Err(DeadLetterError::NoTopic { topic: topic.to_owned() });
    }
    let mut committed = BTreeMap::new();
    if use_committed {
        let mut wanted = TopicPartitionList::new();
        for partition in &partitions {
            wanted.add_partition(topic, *partition);
        }
        let found = consumer
            .committed_offsets(wanted, timeout)
            .map_err(DeadLetterError::kafka("reading the committed offsets of", topic))?;
        for element in found.elements() {
            if let Offset::Offset(offset) = element.offset() {
                committed.insert(element.partition(), offset);
            }
        }
    }
    let mut start = TopicPartitionList::new();
    let mut next = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(DeadLetterError::kafka("reading the offsets of", topic))?;
        let from = committed.get(&partition).copied().unwrap_or(low).max(low);
        next.insert(partition, from);
        if from < high {
            ends.insert(partition, high);
            start
                .add_partition_offset(topic, partition, Offset::Offset(from))
                .map_err(DeadLetterError::kafka("positioning on", topic))?;
        }
    }
    let mut outcome = Read { matching: Vec::new(), read: 0, next };
    if ends.is_empty() {
        return Ok(outcome);
    }
    consumer.assign(&start).map_err(DeadLetterError::kafka("reading", topic))?;
    let deadline = Instant::now() + READ_LIMIT;
    while !ends.is_empty() && outcome.matching.len() < limit {
        if Instant::now() > deadline {
            tracing::warn!(%topic, "stopped reading the dead-letter topic after {} s", READ_LIMIT.as_secs());
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.map_err(DeadLetterError::kafka("reading", topic))?;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = ends.get(&partition) else { continue };
        if offset >= end {
            ends.remove(&partition);
            continue;
        }
        let headers = message
            .headers()
            .map(|headers| headers.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        let letter = StoredDeadLetter {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        };
        outcome.read += 1;
        outcome.next.insert(partition, offset + 1);
        if offset + 1 >= end {
            ends.remove(&partition);
        }
        if letter.matches(filter) {
            outcome.matching.push(letter);
        }
    }
    Ok(outcome)
}

fn consumer(config: &Config, group: &str) -> Result<BaseConsumer<Logs>, DeadLetterError> {
    Ok(crate::kafka::consumer_config(&config.kafka, group)
        .create_with_context(Logs::default())
        .map_err(crate::kafka::kafka_error(crate::kafka::KafkaOperation::CreateConsumer, &config.kafka))?)
}

/// Up to `limit` dead letters of `topic` matching `filter`, oldest first per partition,
/// read from the beginning (no group position is used or moved).
pub(crate) async fn list(
    config: &Config,
    topic: String,
    filter: DeadLetterFilter,
    limit: usize,
) -> Result<Read, DeadLetterError> {
    let settings = config.clone();
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&settings, "dionysus-dlq-list")?;
        read(&consumer, &topic, &filter, limit, false)
    })
    .await?
}

/// Re-publishes the matching dead letters to their source topics (original key, payload and
/// headers, the dead-letter headers removed), waits for every acknowledgement, then commits
/// the position of `group` on the dead-letter topic, so a replay that fails midway sends
/// again and one that succeeded does not.
pub(crate) async fn replay(
    config: &Config,
    topic: String,
    group: String,
    filter: DeadLetterFilter,
    limit: usize,
) -> Result<Replayed, DeadLetterError> {
    let settings = config.clone();
    let dead_letter_topic = topic.clone();
    let (consumer, found) = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&settings, &group)?;
        let found = read(&consumer, &dead_letter_topic, &filter, limit, true)?;
        Ok::<_, DeadLetterError>((consumer, found))
    })
    .await??;
    let producer = crate::kafka::producer(&config.kafka)?;
    let mut sent = 0_usize;
    let mut skipped = Vec::new();
    for letter in &found.matching {
        let Some(source) = letter.header(DeadLetterHeaders::TOPIC) else {
            skipped.push((letter.partition, letter.offset));
            continue;
        };
        let mut headers = OwnedHeaders::new();
        for (key, value) in letter.headers.iter().filter(|(key, _)| !is_dead_letter_header(key)) {
            headers = headers.insert(Header { key: key.as_str(), value: value.as_deref() });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&source).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(source_error, _)| {
            DeadLetterError::Republish {
                partition: letter.partition,
                offset: letter.offset,
                destination: source.clone(),
                sent,
                source: source_error,
            }
        })?;
        sent += 1;
    }
    let mut position = TopicPartitionList::new();
    for (partition, offset) in &found.next {
        position
            .add_partition_offset(&topic, *partition, Offset::Offset(*offset))
            .map_err(DeadLetterError::kafka("positioning on", &topic))?;
    }
    let committed = tokio::task::spawn_blocking(move || consumer.commit(&position, CommitMode::Sync)).await?;
    committed.map_err(DeadLetterError::kafka("committing the dead-letter position of", &topic))?;
    Ok(Replayed { sent, read: found.read, left_out: found.read - found.matching.len(), skipped })
}

/// Whether `key` is one of the headers the consumer adds when it dead-letters a message.
fn is_dead_letter_header(key: &str) -> bool {
    [
        DeadLetterHeaders::REASON,
        DeadLetterHeaders::ERROR,
        DeadLetterHeaders::TOPIC,
        DeadLetterHeaders::PARTITION,
        DeadLetterHeaders::OFFSET,
        DeadLetterHeaders::GROUP,
    ]
    .contains(&key)
}
