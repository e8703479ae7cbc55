//! A Kafka cluster inside the test process: librdkafka's mock cluster
//! (`rdkafka::mocking::MockCluster`), listening on loopback ports, with the declared topics
//! created — so a test runs the real relay and the real consumer end to end with PostgreSQL as
//! the only service.
//!
//! The cluster lives on a thread of its own (librdkafka's handle may not move between
//! threads); [`EmbeddedKafka`] talks to that thread and can be shared freely. Dropping it
//! stops the cluster: stop the relay and consumers first. What the mock cluster cannot do is
//! documented on [`EmbeddedKafka`].

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;

use crate::config::{Config, KafkaConfig};
use crate::handle::Dionysus;
use crate::kafka::TopicSpec;
use crate::registry::Registry;

/// The embedded cluster could not start or create a topic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedKafkaError {
    /// librdkafka could not create the mock cluster.
    #[error("starting librdkafka's mock cluster")]
    Start(#[source] KafkaError),
    /// A topic could not be created on it.
    #[error("creating topic `{topic}` on the embedded cluster")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The cluster's thread could not be started.
    #[error("starting the embedded cluster's thread")]
    Thread(#[source] std::io::Error),
    /// The cluster refused a round-trip delay.
    #[error("setting the embedded cluster's round-trip time")]
    RoundTrip(#[source] KafkaError),
    /// The cluster's thread is gone (it panicked).
    #[error("the embedded cluster's thread stopped")]
    Stopped,
}

/// What the cluster's thread is asked to do.
#[derive(Debug)]
enum Command {
    CreateTopic { name: String, partitions: i32, replication_factor: i32, reply: mpsc::Sender<Result<(), KafkaError>> },
    RoundTrip { delay: std::time::Duration, reply: mpsc::Sender<Result<(), KafkaError>> },
}

/// The limits of the mock cluster, as logged when it starts.
const LIMITS: &str = "no admin API (topics are created by EmbeddedKafka, not by `dionysus topics create` or \
                      auto_create_topics; partition counts cannot change), messages in memory only and without size \
                      limit, no TLS or SASL, a consumer group's first join waits 3 s";

/// Builds an [`EmbeddedKafka`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct EmbeddedKafkaBuilder {
    brokers: i32,
    registry: Option<Arc<Registry>>,
    topics: Vec<TopicSpec>,
}

impl EmbeddedKafkaBuilder {
    /// Brokers in the cluster (default 1; replication factors above it are lowered to it).
    pub fn brokers(mut self, brokers: i32) -> Self {
        self.brokers = brokers.max(1);
        self
    }

    /// Creates the topics `registry` declares (with their genesis replicas) instead of those
    /// of [`Registry::global`].
    pub fn registry(mut self, registry: impl Into<Arc<Registry>>) -> Self {
        self.registry = Some(registry.into());
        self
    }

    /// Creates this topic too (e.g. a dead-letter topic, or one known only at run time).
    pub fn topic(mut self, name: impl Into<String>, partitions: i32) -> Self {
        self.topics.push(TopicSpec { name: name.into(), partitions: partitions.max(1), replication_factor: 1 });
        self
    }

    /// The topics `handle` declares and its consumers' dead-letter topic.
    pub fn handle(self, handle: &Dionysus) -> Self {
        let dead_letters = handle.config().consumer.dead_letter_topic.clone();
        self.registry(handle.registry_arc()).topic(dead_letters, 1)
    }

    /// Starts the cluster and creates the topics.
    pub fn start(self) -> Result<EmbeddedKafka, EmbeddedKafkaError> {
        let (commands, receiver) = mpsc::channel::<Command>();
        let (started, ready) = mpsc::channel::<Result<String, KafkaError>>();
        let brokers = self.brokers;
        let thread = std::thread::Builder::new()
            .name("dionysus-embedded-kafka".to_owned())
            .spawn(move || serve(brokers, &started, &receiver))
            .map_err(EmbeddedKafkaError::Thread)?;
        let bootstrap = match ready.recv() {
            Ok(Ok(bootstrap)) => bootstrap,
            Ok(Err(error)) => return Err(EmbeddedKafkaError::Start(error)),
            Err(_) => return Err(EmbeddedKafkaError::Stopped),
        };
        let kafka = EmbeddedKafka {
            bootstrap,
            brokers,
            commands: Some(commands),
            thread: Some(thread),
            topics: Mutex::new(BTreeMap::new()),
        };
        let registry = self.registry.unwrap_or_else(|| Arc::new(Registry::global().clone()));
        let declared = TopicSpec::for_registry(&registry);
        for spec in declared.iter().chain(&self.topics) {
            kafka.create(spec)?;
        }
        let topics = kafka.topic_list();
        tracing::info!(
            bootstrap = %kafka.bootstrap,
            brokers,
            topics = %topics,
            "embedded Kafka started (librdkafka's mock cluster); limits: {LIMITS}"
        );
        Ok(kafka)
    }
}

/// The cluster's thread: creates it, reports its address, then creates topics on request
/// until the [`EmbeddedKafka`] is dropped.
fn serve(brokers: i32, started: &mpsc::Sender<Result<String, KafkaError>>, commands: &mpsc::Receiver<Command>) {
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    if started.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    while let Ok(command) = commands.recv() {
        match command {
            Command::CreateTopic { name, partitions, replication_factor, reply } => {
                let _ = reply.send(cluster.create_topic(&name, partitions, replication_factor));
            }
            Command::RoundTrip { delay, reply } => {
                let _ = reply.send((1..=brokers).try_for_each(|broker| cluster.broker_round_trip_time(broker, delay)));
            }
        }
    }
}

/// A Kafka cluster in this process (librdkafka's mock cluster) with the declared topics, so
/// a test runs the real relay and the real consumer with PostgreSQL as the only service. It
/// runs on a thread of its own; dropping it stops it (stop the relay and consumers first).
///
/// # What it cannot do
///
/// It speaks enough of the protocol for producers (idempotent ones included), consumer
/// groups and offset commits, which is all the relay and the consumer need. It has **no
/// admin API**: topics are created by this type ([`EmbeddedKafkaBuilder::topic`],
/// [`EmbeddedKafka::create_topic`]), not by `dionysus topics create` or the relay's
/// `auto_create_topics`, and a topic's partition count cannot change. It keeps messages **in
/// memory only**, for as long as this value lives, and enforces no size limit on them (the
/// dead-letter topic's cut of oversized messages is never needed). It has no TLS or SASL:
/// [`EmbeddedKafka::configure`] drops such settings, with a warning. A consumer group's first
/// join waits 3 s (the cluster's initial rebalance delay). Transactions, which dionysus does
/// not use, are supported. It logs these limits when it starts, and warns
/// about what a configuration asks that it cannot do.
///
/// ```no_run
/// # fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use dionysus::testing::EmbeddedKafka;
///
/// let handle = dionysus::Dionysus::new(dionysus::Config::default());
/// let kafka = EmbeddedKafka::builder().handle(&handle).start()?;
/// let handle = handle.configure(|config| kafka.configure(config));
/// // handle.relay().build()?, handle.consumer().build()? now talk to it.
/// # let _ = handle;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct EmbeddedKafka {
    bootstrap: String,
    brokers: i32,
    /// Closed (taken) when dropped, which stops the cluster's thread.
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Topics created, with their partition counts.
    topics: Mutex<BTreeMap<String, i32>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with the topics of [`Registry::global`] and the default
    /// dead-letter topic.
    pub fn start() -> Result<EmbeddedKafka, EmbeddedKafkaError> {
        let dead_letters = crate::config::ConsumerConfig::default().dead_letter_topic;
        EmbeddedKafka::builder().topic(dead_letters, 1).start()
    }

    /// A builder: brokers, registry, extra topics.
    pub fn builder() -> EmbeddedKafkaBuilder {
        EmbeddedKafkaBuilder { brokers: 1, registry: None, topics: Vec::new() }
    }

    /// The cluster's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Kafka settings that reach the cluster (the defaults otherwise).
    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig { brokers: self.bootstrap.split(',').map(str::to_owned).collect(), ..KafkaConfig::default() }
    }

    /// Points a configuration at the cluster: its brokers, and none of the TLS or SASL
    /// settings the cluster cannot speak (each dropped one is warned about).
    pub fn configure(&self, config: &mut Config) {
        config.kafka.brokers = self.bootstrap.split(',').map(str::to_owned).collect();
        let unsupported: Vec<String> = config
            .kafka
            .properties
            .keys()
            .filter(|name| ["security.", "sasl.", "ssl."].iter().any(|prefix| name.starts_with(prefix)))
            .cloned()
            .collect();
        for name in unsupported {
            config.kafka.properties.remove(&name);
            tracing::warn!(property = %name, "the embedded Kafka cluster speaks plaintext only; dropped `{name}`");
        }
    }

    /// Creates a topic (a name known only at run time, e.g. from
    /// [`unique_name`](super::unique_name)); an existing one is left as it is.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), EmbeddedKafkaError> {
        self.create(&TopicSpec { name: name.to_owned(), partitions: partitions.max(1), replication_factor: 1 })
    }

    /// The topics created so far, with their partition counts.
    pub fn topics(&self) -> BTreeMap<String, i32> {
        self.topics.lock().map(|topics| topics.clone()).unwrap_or_default()
    }

    /// Delays every broker's answers by `delay` (zero: none), as a distant or slow broker
    /// would, to see what latency does to a relay or a consumer.
    pub fn round_trip_time(&self, delay: std::time::Duration) -> Result<(), EmbeddedKafkaError> {
        let (reply, answer) = mpsc::channel();
        let sent = self.commands.as_ref().map(|commands| commands.send(Command::RoundTrip { delay, reply }));
        if !matches!(sent, Some(Ok(()))) {
            return Err(EmbeddedKafkaError::Stopped);
        }
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(EmbeddedKafkaError::RoundTrip(source)),
            Err(_) => Err(EmbeddedKafkaError::Stopped),
        }
    }

    fn create(&self, spec: &TopicSpec) -> Result<(), EmbeddedKafkaError> {
        if self.topics().contains_key(&spec.name) {
            return Ok(());
        }
        let replication_factor = spec.replication_factor.clamp(1, self.brokers);
        if replication_factor < spec.replication_factor {
            tracing::warn!(
                topic = %spec.name,
                declared = spec.replication_factor,
                brokers = self.brokers,
                "the embedded Kafka cluster has {} broker(s); topic `{}` is created with replication factor {}",
                self.brokers, spec.name, replication_factor
            );
        }
        let (reply, answer) = mpsc::channel();
        let sent = self.commands.as_ref().map(|commands| {
            commands.send(Command::CreateTopic {
                name: spec.name.clone(),
                partitions: spec.partitions.max(1),
                replication_factor,
                reply,
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            return Err(EmbeddedKafkaError::Stopped);
        }
        match answer.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(EmbeddedKafkaError::CreateTopic { topic: spec.name.clone(), source }),
            Err(_) => return Err(EmbeddedKafkaError::Stopped),
        }
        if let Ok(mut topics) = self.topics.lock() {
            topics.insert(spec.name.clone(), spec.partitions.max(1));
        }
        Ok(())
    }

    fn topic_list(&self) -> String {
        self.topics().iter().map(|(name, partitions)| format!("{name} ({partitions})")).collect::<Vec<_>>().join(", ")
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops (stops) the cluster.
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
