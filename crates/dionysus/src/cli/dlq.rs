//! `dlq list` and `dlq replay`: reading the dead-letter topic the consumer writes (see
//! `DeadLetterHeaders`) and re-publishing its messages to their source topics once the cause
//! is fixed.
//!
//! This module owns how dead letters are read, filtered and re-sent; what makes a message a
//! dead letter, and its headers, belong to the consumer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::consumer::DeadLetterHeaders;
use crate::kafka::Logs;

/// A `dlq` command that failed, with what to do about it.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl Failure {
    fn from_message(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure(error.to_string())
    }
}

impl From<crate::kafka::TransportError> for Failure {
    fn from(error: crate::kafka::TransportError) -> Failure {
        Failure(crate::telemetry::Report(&error).to_string())
    }
}

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Filter {
    /// Only messages dead-lettered for this reason (e.g. database_rejected, unknown_model).
    #[arg(long)]
    reason: Option<String>,
    /// Only messages from this source topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only messages at or after this offset of their source partition.
    #[arg(long, value_name = "OFFSET")]
    from_offset: Option<i64>,
    /// Only messages at or before this offset of their source partition.
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
}

/// A message read from the dead-letter topic.
#[derive(Debug, Clone)]
struct DeadLetter {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    fn source_offset(&self) -> Option<i64> {
        self.header(DeadLetterHeaders::OFFSET).and_then(|offset| offset.parse().ok())
    }

    fn matches(&self, filter: &Filter) -> bool {
        let offset = self.source_offset();
        filter.reason.as_ref().is_none_or(|reason| self.header(DeadLetterHeaders::REASON).as_ref() == Some(reason))
            && filter.topic.as_ref().is_none_or(|topic| self.header(DeadLetterHeaders::TOPIC).as_ref() == Some(topic))
            && filter.from_offset.is_none_or(|from| offset.is_some_and(|offset| offset >= from))
            && filter.to_offset.is_none_or(|to| offset.is_some_and(|offset| offset <= to))
    }
}

/// What one read of the dead-letter topic found.
struct Read {
    /// The matching messages, in partition and offset order.
    matching: Vec<DeadLetter>,
    /// Messages read in all (matching or not).
    read: usize,
    /// Per partition, the offset after the last message read.
    next: BTreeMap<i32, i64>,
}

/// How long a read of the dead-letter topic may take before it stops with what it has.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// Reads `topic` from the `group`'s committed offsets (or from the beginning without a
/// group) up to the end it had when the read started, keeping up to `limit` messages that
/// match `filter`.
fn read(
    consumer: &BaseConsumer<Logs>,
    topic: &str,
    filter: &Filter,
    limit: usize,
    use_committed: bool,
) -> Result<Read, Failure> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|error| Failure::from_message(format!("reading the metadata of {topic}: {error}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Failure::from_message(format!(
            "the dead-letter topic `{topic}` does not exist: nothing was dead-lettered there (or set \
             --dead-letter-topic / DIONYSUS_DEAD_LETTER_TOPIC)"
        )));
    }
    let mut committed = BTreeMap::new();
    if use_committed {
        let mut wanted = TopicPartitionList::new();
        for partition in &partitions {
            wanted.add_partition(topic, *partition);
        }
        let found = consumer
            .committed_offsets(wanted, timeout)
            .map_err(|error| Failure::from_message(format!("reading the committed offsets of {topic}: {error}")))?;
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
            .map_err(|error| Failure::from_message(format!("reading the offsets of {topic}/{partition}: {error}")))?;
        let from = committed.get(&partition).copied().unwrap_or(low).max(low);
        next.insert(partition, from);
        if from < high {
            ends.insert(partition, high);
            start
                .add_partition_offset(topic, partition, Offset::Offset(from))
                .map_err(|error| Failure::from_message(error.to_string()))?;
        }
    }
    let mut outcome = Read { matching: Vec::new(), read: 0, next };
    if ends.is_empty() {
        return Ok(outcome);
    }
    consumer.assign(&start).map_err(|error| Failure::from_message(format!("reading {topic}: {error}")))?;
    let deadline = Instant::now() + READ_LIMIT;
    while !ends.is_empty() && outcome.matching.len() < limit {
        if Instant::now() > deadline {
            tracing::warn!(%topic, "stopped reading the dead-letter topic after {} s", READ_LIMIT.as_secs());
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.map_err(|error| Failure::from_message(format!("reading {topic}: {error}")))?;
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
        let letter = DeadLetter {
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

fn consumer(config: &Config, group: &str) -> Result<BaseConsumer<Logs>, Failure> {
    crate::kafka::consumer_config(&config.kafka, group).create_with_context(Logs::default()).map_err(|error| {
        Failure::from_message(format!("creating a Kafka consumer for {}: {error}", config.kafka.bootstrap_servers()))
    })
}

/// `dlq list`: one line per matching dead letter, oldest first per partition.
pub(crate) async fn list(
    config: &Config,
    topic: String,
    filter: Filter,
    limit: usize,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Failure> {
    let settings = config.clone();
    let (letters, read) = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&settings, "dionysus-dlq-list")?;
        read(&consumer, &topic, &filter, limit, false).map(|found| (found.matching, found.read))
    })
    .await
    .map_err(|error| Failure::from_message(format!("reading the dead-letter topic: {error}")))??;
    for letter in &letters {
        let field = |name: &str| letter.header(name).unwrap_or_else(|| "-".to_owned());
        writeln!(
            out,
            "{}@{}  reason={}  source={}/{}@{}  key={}  error={}",
            letter.partition,
            letter.offset,
            field(DeadLetterHeaders::REASON),
            field(DeadLetterHeaders::TOPIC),
            field(DeadLetterHeaders::PARTITION),
            field(DeadLetterHeaders::OFFSET),
            letter.key.as_deref().map_or_else(|| "-".to_owned(), |key| String::from_utf8_lossy(key).into_owned()),
            field(DeadLetterHeaders::ERROR),
        )?;
    }
    writeln!(out, "{} dead letter(s) listed of {read} read", letters.len())?;
    Ok(())
}

/// `dlq replay`: re-publishes the matching dead letters to their source topics (original key,
/// payload and headers, the dead-letter headers removed), waits for every acknowledgement,
/// then commits the position of `group` on the dead-letter topic, so a replay that fails
/// midway sends again and one that succeeded does not.
pub(crate) async fn replay(
    config: &Config,
    topic: String,
    group: String,
    filter: Filter,
    limit: usize,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Failure> {
    let settings = config.clone();
    let dead_letter_topic = topic.clone();
    let (consumer, found) = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&settings, &group)?;
        let found = read(&consumer, &dead_letter_topic, &filter, limit, true)?;
        Ok::<_, Failure>((consumer, found))
    })
    .await
    .map_err(|error| Failure::from_message(format!("reading the dead-letter topic: {error}")))??;
    let producer = crate::kafka::producer(&config.kafka)?;
    let mut sent = 0_usize;
    for letter in &found.matching {
        let Some(source) = letter.header(DeadLetterHeaders::TOPIC) else {
            writeln!(out, "skipped {}@{}: no source topic header", letter.partition, letter.offset)?;
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
        producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| {
            Failure::from_message(format!(
                "re-publishing dead letter {}@{} to {source}: {error}; {sent} sent, the dead-letter position is \
                 not committed (a new replay sends them again)",
                letter.partition, letter.offset
            ))
        })?;
        sent += 1;
    }
    let mut position = TopicPartitionList::new();
    for (partition, offset) in &found.next {
        position
            .add_partition_offset(&topic, *partition, Offset::Offset(*offset))
            .map_err(|error| Failure::from_message(error.to_string()))?;
    }
    tokio::task::spawn_blocking(move || consumer.commit(&position, CommitMode::Sync))
        .await
        .map_err(|error| Failure::from_message(format!("committing the dead-letter position: {error}")))?
        .map_err(|error| Failure::from_message(format!("committing the dead-letter position of {topic}: {error}")))?;
    writeln!(
        out,
        "replayed {sent} dead letter(s) of {} read; {} left out by the filters",
        found.read,
        found.read - found.matching.len()
    )?;
    Ok(())
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
