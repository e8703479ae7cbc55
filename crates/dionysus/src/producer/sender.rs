//! Sending outgoing messages with rdkafka, shared by the relay and genesis: the partition
//! chosen from the partition key as dionysus-rb's producer chooses it (partition counts from
//! the broker, cached), a full local queue waited out, missing topics reported clearly (or
//! created, when allowed), and delivery reports awaited with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Mutex;

use crate::config::KafkaConfig;
use crate::producer::plan::OutgoingMessage;
use crate::registry::Registry;

/// Why a message could not be sent; `class` is what the outbox records as `error_class`, and
/// `message` its `error_message` (the error with its causes).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) class: &'static str,
    pub(crate) message: String,
}

/// The `error_class` of a row of an Avro topic whose schema registry could not be reached:
/// retried with backoff however long it takes, never parked (not the row's fault).
pub(crate) const REGISTRY_UNAVAILABLE: &str = "SchemaRegistryUnavailable";

/// Why a row's messages could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The producer refused the message.
    #[error("producing to `{topic}`")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The topic's partition count could not be read.
    #[error("reading the partition count of `{topic}`")]
    PartitionCount {
        topic: String,
        #[source]
        source: crate::kafka::TransportError,
    },
    /// A missing topic could not be created (`auto_create_topics`).
    #[error("creating the missing topic `{topic}`")]
    CreateTopic {
        topic: String,
        #[source]
        source: crate::kafka::TransportError,
    },
    /// The topic does not exist and may not be created.
    #[error(
        "topic `{topic}` does not exist on the broker; create it (`dionysus check` lists what is missing) or \
         enable auto_create_topics"
    )]
    MissingTopic { topic: String },
}

impl SendError {
    /// The `error_class` the outbox records.
    pub(crate) fn class(&self) -> &'static str {
        match self {
            SendError::MissingTopic { .. } => "MissingTopic",
            _ => "KafkaError",
        }
    }
}

impl From<SendError> for Failure {
    fn from(error: SendError) -> Self {
        Failure { class: error.class(), message: crate::telemetry::Report(&error).to_string() }
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The broker (or the producer) reported an error.
    #[error(transparent)]
    Kafka(KafkaError),
    /// The producer was dropped with the message in its queue.
    #[error("the producer dropped the message before delivery")]
    Dropped,
    /// No report came before the deadline; the message may still be queued.
    #[error("no delivery report before the deadline")]
    NoReport,
}

/// A delivery that failed; `fatal` when the producer cannot deliver anything any more,
/// `timed_out` when no report came before the deadline (the message may still be queued).
#[derive(Debug)]
pub(crate) struct DeliveryFailure {
    pub(crate) error: DeliveryError,
    pub(crate) fatal: bool,
    pub(crate) timed_out: bool,
}

impl From<DeliveryFailure> for Failure {
    fn from(failure: DeliveryFailure) -> Self {
        Failure { class: "KafkaError", message: crate::telemetry::Report(&failure.error).to_string() }
    }
}

/// A message whose key is bytes, or absent (Avro topics' keys).
#[cfg(feature = "avro")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMessage {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) partition_key: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
}

/// A message as handed to the producer.
struct Wire<'m> {
    topic: &'m str,
    key: Option<&'m [u8]>,
    partition_key: Option<&'m str>,
    payload: Option<&'m [u8]>,
    /// Milliseconds since the Unix epoch (`None`: the producer's clock).
    timestamp: Option<i64>,
    headers: &'m [(&'static str, String)],
}

/// Partition counts per topic, shared by every sender of a process.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    partitions: Mutex<HashMap<String, i32>>,
}

pub(crate) struct Sender<'a> {
    pub(crate) producer: &'a crate::kafka::Producer,
    pub(crate) topics: &'a TopicCache,
    pub(crate) kafka: &'a KafkaConfig,
    pub(crate) registry: &'a Registry,
    pub(crate) auto_create_topics: bool,
}

impl Sender<'_> {
    /// Enqueues every message of a row with the producer; the returned futures resolve on
    /// delivery. Runs in a `dionysus.publish` span, timed in `dionysus_relay_publish_seconds`
    /// (the broker's acknowledgement is awaited apart, see [`await_deliveries`]).
    pub(crate) async fn send(&self, messages: &[OutgoingMessage]) -> Result<Vec<DeliveryFuture>, SendError> {
        let wire: Vec<Wire<'_>> = messages
            .iter()
            .map(|message| Wire {
                topic: &message.topic,
                key: Some(message.key.as_bytes()),
                partition_key: message.partition_key.as_deref(),
                payload: message.payload.as_deref(),
                timestamp: message.timestamp,
                headers: &message.headers,
            })
            .collect();
        self.send_wire(&wire).await
    }

    /// [`Sender::send`] for messages whose keys are bytes (or absent), as Avro topics have.
    #[cfg(feature = "avro")]
    pub(crate) async fn send_raw(&self, messages: &[RawMessage]) -> Result<Vec<DeliveryFuture>, SendError> {
        let wire: Vec<Wire<'_>> = messages
            .iter()
            .map(|message| Wire {
                topic: &message.topic,
                key: message.key.as_deref(),
                partition_key: message.partition_key.as_deref(),
                payload: message.payload.as_deref(),
                timestamp: None,
                headers: &[],
            })
            .collect();
        self.send_wire(&wire).await
    }

    async fn send_wire(&self, messages: &[Wire<'_>]) -> Result<Vec<DeliveryFuture>, SendError> {
        use tracing::Instrument as _;
        let started = std::time::Instant::now();
        let topic = messages.first().map_or("", |message| message.topic);
        let span = tracing::debug_span!("dionysus.publish", topic, messages = messages.len());
        let result = self.enqueue(messages).instrument(span).await;
        metrics::histogram!("dionysus_relay_publish_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn enqueue(&self, messages: &[Wire<'_>]) -> Result<Vec<DeliveryFuture>, SendError> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let partition = match message.partition_key {
                Some(key) => Some(crate::wire::partition::partition_for(
                    key.as_bytes(),
                    self.partition_count(message.topic).await?,
                )),
                None => None,
            };
            let mut record = FutureRecord::<[u8], [u8]>::to(message.topic);
            if let Some(key) = message.key {
                record = record.key(key);
            }
            if let Some(payload) = message.payload {
                record = record.payload(payload);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            if let Some(timestamp) = message.timestamp {
                record = record.timestamp(timestamp);
            }
            if !message.headers.is_empty() {
                let headers =
                    message.headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |headers, (key, value)| {
                        headers.insert(rdkafka::message::Header { key, value: Some(value.as_bytes()) })
                    });
                record = record.headers(headers);
            }
            let mut pending = record;
            loop {
                match self.producer.send_result(pending) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), returned)) => {
                        // The local queue is full: let deliveries drain, then try again.
                        pending = returned;
                        self.producer.poll(Timeout::After(Duration::from_millis(10)));
                        tokio::task::yield_now().await;
                    }
                    Err((source, _)) => return Err(SendError::Produce { topic: message.topic.to_owned(), source }),
                }
            }
        }
        Ok(deliveries)
    }

    /// The topic's partition count, from the cache or the broker's metadata.
    async fn partition_count(&self, topic: &str) -> Result<i32, SendError> {
        if let Some(count) = self.topics.partitions.lock().await.get(topic) {
            return Ok(*count);
        }
        let counts = crate::kafka::producer_topics(self.producer, self.kafka)
            .await
            .map_err(|source| SendError::PartitionCount { topic: topic.to_owned(), source })?;
        let count = match counts.get(topic).copied() {
            Some(count) => count,
            None if self.auto_create_topics => {
                let declaration = self.registry.resolve(topic).map(|(declaration, _)| declaration);
                let spec = crate::kafka::TopicSpec {
                    name: topic.to_owned(),
                    partitions: declaration.and_then(|d| d.partitions).unwrap_or(1),
                    replication_factor: i32::from(declaration.and_then(|d| d.replication_factor).unwrap_or(1)),
                };
                crate::kafka::create_topics(self.kafka, std::slice::from_ref(&spec))
                    .await
                    .map_err(|source| SendError::CreateTopic { topic: topic.to_owned(), source })?;
                tracing::info!(topic, partitions = spec.partitions, "created a missing topic (auto_create_topics)");
                spec.partitions
            }
            None => return Err(SendError::MissingTopic { topic: topic.to_owned() }),
        };
        self.topics.partitions.lock().await.insert(topic.to_owned(), count);
        Ok(count)
    }
}

/// Awaits every delivery of one outgoing unit (a row's messages) until `deadline`.
pub(crate) async fn await_deliveries(
    deliveries: Vec<DeliveryFuture>,
    deadline: tokio::time::Instant,
) -> Result<(), DeliveryFailure> {
    let mut outcome = Ok(());
    for delivery in deliveries {
        let result = match tokio::time::timeout_at(deadline, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((error, _message)))) => {
                Err(DeliveryFailure { fatal: fatal(&error), error: DeliveryError::Kafka(error), timed_out: false })
            }
            Ok(Err(_canceled)) => {
                Err(DeliveryFailure { error: DeliveryError::Dropped, fatal: false, timed_out: false })
            }
            Err(_elapsed) => Err(DeliveryFailure { error: DeliveryError::NoReport, fatal: false, timed_out: true }),
        };
        if let (Ok(()), Err(failure)) = (&outcome, result) {
            outcome = Err(failure);
        }
    }
    outcome
}

/// Errors after which the producer cannot deliver anything any more.
fn fatal(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::ProducerFenced | Code::Fatal | Code::InvalidProducerEpoch | Code::OutOfOrderSequenceNumber)
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    /// A cache miss asks the sender's own producer, which has its connection: the settings
    /// it was given are not used to open another client (which took about 100 ms to shut
    /// down, paid by a relay's first message of each topic). Here they name a port nothing
    /// listens on, so a second client would fail.
    #[tokio::test]
    async fn partition_counts_come_through_the_senders_own_producer() {
        let cluster = MockCluster::new(1).expect("a mock cluster starts");
        cluster.create_topic("rentals", 3, 1).expect("the topic is created");
        let reachable = KafkaConfig { brokers: vec![cluster.bootstrap_servers()], ..KafkaConfig::default() };
        let producer = crate::kafka::producer(&reachable).expect("the producer is created");
        let unreachable = KafkaConfig { brokers: vec!["127.0.0.1:1".to_owned()], ..KafkaConfig::default() };
        let registry = Registry::new([], []);
        let topics = TopicCache::default();
        let sender = Sender {
            producer: &producer,
            topics: &topics,
            kafka: &unreachable,
            registry: &registry,
            auto_create_topics: false,
        };
        let counted = tokio::time::timeout(Duration::from_secs(5), sender.partition_count("rentals")).await;
        assert_eq!(counted.expect("answered without waiting for another client").expect("counted"), 3);
        let missing = sender.partition_count("payments").await;
        assert!(matches!(missing, Err(SendError::MissingTopic { .. })), "{missing:?}");
    }
}
