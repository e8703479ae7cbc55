//! Kafka through rdkafka: client settings derived from [`KafkaConfig`], topic creation and
//! inspection through the admin API, and the partition choice dionysus-rb's producer makes.
//!
//! This module owns how we talk to the broker; what is sent (envelopes, keys) belongs to
//! `wire`, and when (ordering, retries) to the relay and the consumer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::registry::{Registry, TopicDeclaration};
pub use crate::wire::partition::partition_for;

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// rdkafka reported an error.
    #[error("{} {brokers}", operation.phrase())]
    Kafka {
        /// What was being done.
        operation: KafkaOperation,
        /// The brokers it was done with (`bootstrap.servers`).
        brokers: String,
        /// rdkafka's error (secrets taken out).
        #[source]
        source: Box<KafkaError>,
    },
    /// The broker refused to create a topic.
    #[error("creating topic `{topic}` on {brokers}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The brokers (`bootstrap.servers`).
        brokers: String,
        /// The broker's answer.
        #[source]
        source: Box<KafkaError>,
    },
    /// The task that waited for the broker stopped before it answered.
    #[error("{} {brokers}", operation.phrase())]
    Task {
        /// What was being done.
        operation: KafkaOperation,
        /// The brokers (`bootstrap.servers`).
        brokers: String,
        /// Why the task stopped.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What dionysus was doing with the broker when it failed (in [`TransportError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KafkaOperation {
    /// Creating a producer.
    CreateProducer,
    /// Creating a consumer.
    CreateConsumer,
    /// Creating an admin client.
    CreateAdminClient,
    /// Creating a client to read topic metadata.
    CreateMetadataClient,
    /// Reading topic metadata.
    FetchMetadata,
    /// Creating topics.
    CreateTopics,
}

impl KafkaOperation {
    /// The operation as the start of a sentence that ends with the broker list.
    fn phrase(self) -> &'static str {
        match self {
            KafkaOperation::CreateProducer => "creating a Kafka producer for",
            KafkaOperation::CreateConsumer => "creating a Kafka consumer for",
            KafkaOperation::CreateAdminClient => "creating a Kafka admin client for",
            KafkaOperation::CreateMetadataClient => "creating a Kafka client for",
            KafkaOperation::FetchMetadata => "fetching topic metadata from",
            KafkaOperation::CreateTopics => "creating topics on",
        }
    }
}

/// The error of `operation` on the brokers of `kafka`, with secrets taken out of rdkafka's.
pub(crate) fn kafka_error(operation: KafkaOperation, kafka: &KafkaConfig) -> impl FnOnce(KafkaError) -> TransportError {
    let brokers = kafka.bootstrap_servers();
    move |source| TransportError::Kafka { operation, brokers, source: Box::new(redact_error(source)) }
}

/// `error` with no secret in its text: librdkafka's configuration errors repeat the
/// property's value, which is hidden when the name is a secret's
/// ([`crate::config::is_secret_name`]) or unknown to librdkafka (a misspelt `sasl.pasword`
/// may well hold a password); other texts go through [`crate::config::redact`].
pub(crate) fn redact_error(error: KafkaError) -> KafkaError {
    use crate::config::{is_secret_name, redact, REDACTED};
    use rdkafka::types::RDKafkaConfRes;
    match error {
        KafkaError::ClientConfig(result, description, name, value) => {
            let value = if is_secret_name(&name) || result == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN {
                REDACTED.to_owned()
            } else {
                redact(&value)
            };
            let description = redact(&description);
            KafkaError::ClientConfig(result, description, name, value)
        }
        KafkaError::ClientCreation(text) => KafkaError::ClientCreation(redact(&text)),
        other => other,
    }
}

/// A producer whose librdkafka logs and errors go to `tracing` once each (see [`Logs`]).
pub type Producer = FutureProducer<Logs>;

/// The client context of dionysus' Kafka clients: librdkafka's log lines become `tracing`
/// events (target `librdkafka`, with the facility as a field), and its error callbacks are
/// reported once: a broker connection failure or "all brokers down" is already the subject
/// of a log line and goes to `debug`; any other error is logged once, even when rdkafka
/// hands it over twice in a row.
#[derive(Debug, Default)]
pub struct Logs {
    last_error: Mutex<Option<(String, Instant)>>,
}

impl Logs {
    /// Reports a librdkafka log line (the body of [`ClientContext::log`]).
    pub(crate) fn line(level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Reports a librdkafka error callback (the body of [`ClientContext::error`]).
    pub(crate) fn report(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)) {
            tracing::debug!(target: "librdkafka", %error, "{reason}");
            return;
        }
        let text = format!("{error}: {reason}");
        let now = Instant::now();
        if let Ok(mut last) = self.last_error.lock() {
            if last
                .as_ref()
                .is_some_and(|(previous, at)| *previous == text && now.duration_since(*at) < Duration::from_secs(1))
            {
                return;
            }
            *last = Some((text, now));
        }
        tracing::error!(target: "librdkafka", %error, "{reason}");
    }
}

impl ClientContext for Logs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        Logs::line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Logs {}

impl ProducerContext for Logs {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The librdkafka log level matching what the current `tracing` subscriber lets through for
/// the `librdkafka` target, so librdkafka does not format lines nobody prints.
fn log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

/// Settings shared by every client: brokers, client id, requests sent at once (Nagle's
/// algorithm off: a small request behind one not yet acknowledged would otherwise wait for
/// the broker's delayed ACK, tens of milliseconds on every hop) and extra properties.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set_log_level(log_level());
    config
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("client.id", &kafka.client_id)
        .set("socket.nagle.disable", "true");
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Settings of the relay's producer: idempotent, `acks=all`, so a retried send never
/// duplicates or reorders a partition's messages.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        // The relay awaits every batch's delivery reports, so waiting to fill larger
        // requests costs more than it saves.
        .set("linger.ms", "1")
        .set("message.timeout.ms", "300000");
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Settings of a consumer in `group_id`: offsets are committed by dionysus (never
/// automatically), a new group starts from the earliest message, the group notices a
/// dead member within [`KafkaConfig::session_timeout`] (static membership with
/// [`KafkaConfig::group_instance_id`]), and a fetch waits at most [`FETCH_WAIT_MAX_MS`] for
/// new messages. Extra properties override all of these.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", group_id)
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", kafka.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", kafka.heartbeat_interval.as_millis().to_string());
    if let Some(instance) = &kafka.group_instance_id {
        config.set("group.instance.id", instance);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// How long a consumer's fetch may wait at the broker for new messages, in milliseconds
/// (`fetch.wait.max.ms`; librdkafka's default is 500). A broker answers a fetch as soon as
/// messages arrive, so this bounds what an idle partition costs (ten requests a second) —
/// and, with a broker that holds every fetch for the whole wait, how long a message may sit
/// there before the consumer sees it.
pub const FETCH_WAIT_MAX_MS: u32 = 100;

/// A producer with [`producer_config`].
pub fn producer(kafka: &KafkaConfig) -> Result<Producer, TransportError> {
    producer_config(kafka)
        .create_with_context(Logs::default())
        .map_err(kafka_error(KafkaOperation::CreateProducer, kafka))
}

/// A topic to create on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
}

impl TopicSpec {
    /// The topics a declaration needs: itself and, when replicated, its genesis topic.
    /// Unset partitions and replication factor default to 1.
    pub fn for_declaration(topic: &TopicDeclaration) -> Vec<TopicSpec> {
        let spec = |name: String| TopicSpec {
            name,
            partitions: topic.partitions.unwrap_or(1),
            replication_factor: i32::from(topic.replication_factor.unwrap_or(1)),
        };
        let mut specs = vec![spec(topic.full_name.to_owned())];
        specs.extend(topic.genesis_name().map(spec));
        specs
    }

    /// Every topic the registry declares, genesis replicas included, then the delay topics
    /// of its publications (partitioned as their target topics).
    pub fn for_registry(registry: &Registry) -> Vec<TopicSpec> {
        let mut specs: Vec<TopicSpec> = registry.topics().flat_map(TopicSpec::for_declaration).collect();
        for delay_topic in registry.delay_topics() {
            let target = registry.topic(delay_topic.target);
            specs.push(TopicSpec {
                name: delay_topic.name,
                partitions: target.and_then(|topic| topic.partitions).unwrap_or(1),
                replication_factor: i32::from(target.and_then(|topic| topic.replication_factor).unwrap_or(1)),
            });
        }
        specs
    }
}

/// What happened to one topic in [`create_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCreation {
    /// The topic was created.
    Created(String),
    /// The topic already existed and was left as it is.
    AlreadyExists(String),
}

fn admin(kafka: &KafkaConfig) -> Result<AdminClient<Logs>, TransportError> {
    client_config(kafka)
        .create_with_context(Logs::default())
        .map_err(kafka_error(KafkaOperation::CreateAdminClient, kafka))
}

/// Creates the topics that do not exist yet; existing ones are left untouched.
pub async fn create_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> Result<Vec<TopicCreation>, TransportError> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin = admin(kafka)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin.create_topics(&new_topics, &options).await.map_err(kafka_error(KafkaOperation::CreateTopics, kafka))?;
    let mut outcome = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(name) => outcome.push(TopicCreation::Created(name)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => outcome.push(TopicCreation::AlreadyExists(name)),
            Err((name, code)) => {
                return Err(TransportError::CreateTopic {
                    topic: name,
                    brokers: kafka.bootstrap_servers(),
                    source: Box::new(KafkaError::AdminOp(code)),
                })
            }
        }
    }
    Ok(outcome)
}

/// Partition counts of the named topics as the broker reports them; `None` for a topic the
/// broker does not have.
pub async fn partition_counts(
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, Option<i32>>, TransportError> {
    let existing = broker_topics(kafka).await?;
    Ok(topics.iter().map(|name| (name.clone(), existing.get(name).copied())).collect())
}

/// The partition ids of `topic` in `metadata` (none when the broker reported the topic with
/// an error or not at all).
pub(crate) fn partition_ids(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// Every topic the broker has, with its partition count.
pub async fn broker_topics(kafka: &KafkaConfig) -> Result<BTreeMap<String, i32>, TransportError> {
    let config = client_config(kafka);
    let (create_error, fetch_error) =
        (kafka_error(KafkaOperation::CreateMetadataClient, kafka), kafka_error(KafkaOperation::FetchMetadata, kafka));
    metadata_task(kafka, move || {
        // A producer's client, because its background thread serves librdkafka's log lines
        // while the metadata request waits: a broker that cannot be reached is reported as
        // it happens, not only when the wait ends.
        let producer: rdkafka::producer::ThreadedProducer<Logs> =
            config.create_with_context(Logs::default()).map_err(create_error)?;
        client_topics(rdkafka::producer::Producer::client(&producer), fetch_error)
    })
    .await
}

/// [`broker_topics`] asked through a producer the process already has: its connection is
/// open, so the answer takes a round trip, where a client of its own takes a connection and
/// about 100 ms to shut down (what a relay's first message of a topic waited for).
pub(crate) async fn producer_topics(
    producer: &Producer,
    kafka: &KafkaConfig,
) -> Result<BTreeMap<String, i32>, TransportError> {
    let producer = producer.clone();
    let fetch_error = kafka_error(KafkaOperation::FetchMetadata, kafka);
    metadata_task(kafka, move || client_topics(rdkafka::producer::Producer::client(&producer), fetch_error)).await
}

/// Runs a blocking metadata request off the async threads.
async fn metadata_task(
    kafka: &KafkaConfig,
    request: impl FnOnce() -> Result<BTreeMap<String, i32>, TransportError> + Send + 'static,
) -> Result<BTreeMap<String, i32>, TransportError> {
    tokio::task::spawn_blocking(request).await.unwrap_or_else(|source| {
        Err(TransportError::Task {
            operation: KafkaOperation::FetchMetadata,
            brokers: kafka.bootstrap_servers(),
            source,
        })
    })
}

/// Every topic the broker tells `client` of without an error, with its partition count
/// (topics without partitions are left out). Blocks for up to 10 s.
fn client_topics<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    fetch_error: impl FnOnce(KafkaError) -> TransportError,
) -> Result<BTreeMap<String, i32>, TransportError> {
    let metadata = client.fetch_metadata(None, Duration::from_secs(10)).map_err(fetch_error)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .filter_map(|topic| {
            let count = i32::try_from(topic.partitions().len()).ok().filter(|count| *count > 0)?;
            Some((topic.name().to_owned(), count))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka repeats a rejected property's value in its error; a misspelt secret's name
    /// (`sasl.pasword`) gives no hint, so an unknown property's value is never shown.
    #[test]
    fn client_errors_never_show_a_secret() {
        for (name, value) in
            [("sasl.pasword", "hunter2"), ("sasl.password", "hunter2"), ("ssl.key.password", "hunter2")]
        {
            let mut kafka = KafkaConfig::default();
            kafka.properties.insert(name.to_owned(), value.to_owned());
            let error = match producer(&kafka) {
                Ok(_) if name != "sasl.pasword" => continue,
                Ok(_) => panic!("librdkafka accepted {name}"),
                Err(error) => error,
            };
            let text = format!("{error} / {error:?}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let raw = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property: \"sasl.pasword\"".to_owned(),
            "sasl.pasword".to_owned(),
            "hunter2".to_owned(),
        );
        assert!(raw.to_string().contains("hunter2"), "the unredacted error shows it: {raw}");
        let redacted = redact_error(raw);
        assert!(
            !redacted.to_string().contains("hunter2") && redacted.to_string().contains("sasl.pasword"),
            "{redacted}"
        );
        let invalid = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value for configuration property \"linger.ms\"".to_owned(),
            "linger.ms".to_owned(),
            "soon".to_owned(),
        );
        assert!(redact_error(invalid).to_string().contains("soon"), "a plain setting's value helps and stays");
    }

    #[test]
    fn consumers_notice_a_dead_member_within_the_session_timeout() {
        let mut kafka = KafkaConfig::default();
        let config = consumer_config(&kafka, "group");
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("200"));
        assert_eq!(config.get("group.instance.id"), None);

        kafka.session_timeout = Duration::from_secs(10);
        kafka.group_instance_id = Some("replicas-0".to_owned());
        kafka.properties.insert("heartbeat.interval.ms".to_owned(), "3000".to_owned());
        let config = consumer_config(&kafka, "group");
        assert_eq!(config.get("session.timeout.ms"), Some("10000"));
        assert_eq!(config.get("group.instance.id"), Some("replicas-0"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("3000"), "an explicit property wins");
    }

    #[test]
    fn clients_favour_latency() {
        let kafka = KafkaConfig::default();
        for config in [client_config(&kafka), producer_config(&kafka), consumer_config(&kafka, "group")] {
            assert_eq!(config.get("socket.nagle.disable"), Some("true"));
        }
        assert_eq!(producer_config(&kafka).get("linger.ms"), Some("1"));
        assert_eq!(consumer_config(&kafka, "group").get("fetch.wait.max.ms"), Some("100"));

        let mut kafka = KafkaConfig::default();
        kafka.properties.insert("fetch.wait.max.ms".to_owned(), "500".to_owned());
        kafka.properties.insert("socket.nagle.disable".to_owned(), "false".to_owned());
        let config = consumer_config(&kafka, "group");
        assert_eq!(config.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(config.get("socket.nagle.disable"), Some("false"));
    }

    #[test]
    fn genesis_replica_adds_a_topic_spec() {
        let mut declaration = crate::registry::TopicDeclaration::INVALID;
        declaration.full_name = "v3_accounts";
        declaration.genesis_replica = true;
        declaration.partitions = Some(3);
        let names: Vec<_> =
            TopicSpec::for_declaration(&declaration).into_iter().map(|s| (s.name, s.partitions)).collect();
        assert_eq!(names, [("v3_accounts".to_owned(), 3), ("v3_accounts_genesis".to_owned(), 3)]);
    }
}
