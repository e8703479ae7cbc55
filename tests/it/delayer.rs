//! Delayed copies against real PostgreSQL and the broker: the relay sends the copy with the
//! immediate message, the delayer re-sends it when due (not before, and soon after), along a
//! chain of delays, across a `kill -9` of the `dionysus delayer` process (no loss, order per
//! key kept; a copy may arrive twice), and dead-letters what is not a delayed copy while the
//! partition moves on.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use dionysus::config::{Config, KafkaConfig, ProducerConfig};
use dionysus::consumer::DeadLetterHeaders;
use dionysus::delayer::{Delay, DelayHeaders};
use dionysus::registry::Registry;
use dionysus::Dionysus;
use dionysus_tests::{consumer_config, kafka_config, registry_with_delays, unique_name, TestDb};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use crate::relay::Item;

/// A message read from a topic.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    partition: i32,
    payload: Vec<u8>,
    timestamp: i64,
    headers: BTreeMap<String, String>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads `topic` from its start until `count` messages arrived (or `limit` passed: the
/// messages so far).
async fn read(kafka: &KafkaConfig, topic: &str, count: usize, limit: Duration) -> Vec<Received> {
    let consumer: StreamConsumer = consumer_config(kafka, &unique_name("reader")).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    while received.len() < count {
        let Ok(message) = tokio::time::timeout_at(deadline, consumer.recv()).await else { break };
        let message = message.unwrap();
        if message.key() == Some(PROBE.as_bytes()) {
            continue;
        }
        let mut headers = BTreeMap::new();
        if let Some(found) = message.headers() {
            for header in found.iter() {
                headers.insert(header.key.to_owned(), String::from_utf8_lossy(header.value.unwrap_or_default()).into());
            }
        }
        received.push(Received {
            key: String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap(),
            partition: message.partition(),
            payload: message.payload().unwrap_or_default().to_vec(),
            timestamp: message.timestamp().to_millis().unwrap(),
            headers,
        });
    }
    received
}

struct Setup {
    db: TestDb,
    registry: &'static Registry,
    topic: String,
    kafka: KafkaConfig,
}

/// A database with one item, a registry publishing items on a new topic (two partitions)
/// with the `delays` chain, and every topic it names created.
async fn setup(delays: &[&str]) -> Setup {
    let kafka = kafka_config();
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "CREATE TABLE relay_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL);
         INSERT INTO relay_items (account_id, name) VALUES (7, 'item 1');",
    )
    .await
    .unwrap();
    let topic = unique_name("delayed");
    let delays: Vec<Delay> = delays.iter().map(|text| Delay::parse(text).unwrap()).collect();
    let registry = registry_with_delays::<Item>(
        &topic,
        2,
        "account_id",
        dionysus::serialize::serialize_erased::<Item, dionysus::serialize::DefaultSerializer>,
        &delays,
    );
    dionysus::kafka::create_topics(&kafka, &dionysus::kafka::TopicSpec::for_registry(registry)).await.unwrap();
    Setup { db, registry, topic, kafka }
}

impl Setup {
    fn config(&self) -> Config {
        let mut producer = ProducerConfig::default();
        producer.idle_sleep = Duration::from_millis(20);
        producer.retention = None;
        let mut config = Config::default();
        config.database_url = self.db.url.clone();
        config.kafka = self.kafka.clone();
        config.producer = producer;
        config
    }

    /// Runs the delayer until `shutdown`, and once its group has its partitions, writes one
    /// `item_updated` row for item 1 and runs the relay.
    async fn publish_and_delay(&self, shutdown: &CancellationToken) {
        let handle = Dionysus::with_registry(self.config(), self.registry);
        let group = unique_name("delayer");
        let delayer = handle.delayer().group(&group).build().unwrap();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { delayer.run(shutdown).await.unwrap() }
        });
        wait_for_delayer(&self.kafka, &self.registry.delay_topics()[0].name, &self.topic).await;
        let mut conn = self.db.connection().await;
        conn.batch_execute(&format!(
            "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
             VALUES ('Item', '1', 'item_updated', '{}', '7')",
            self.topic
        ))
        .await
        .unwrap();
        let relay = handle.relay().worker_prefix(unique_name("w")).build().unwrap();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await.unwrap() }
        });
    }
}

/// The key of the copy [`wait_for_delayer`] sends through; [`read`] passes over it.
const PROBE: &str = "Probe:0";

/// Waits until the delayer re-sends a copy due at once from `delay_topic` to `target`: its
/// group has its partitions.
async fn wait_for_delayer(kafka: &KafkaConfig, delay_topic: &str, target: &str) {
    let producer = dionysus::kafka::producer(kafka).unwrap();
    let reader: StreamConsumer = consumer_config(kafka, &unique_name("probe")).create().unwrap();
    reader.subscribe(&[target]).unwrap();
    for partition in 0..2 {
        let due = chrono::Utc::now().timestamp_millis().to_string();
        let headers = [(DelayHeaders::TARGET, target), (DelayHeaders::DUE, due.as_str())];
        produce_copy(&producer, delay_topic, partition, PROBE, "probe", &headers).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let message =
            tokio::time::timeout_at(deadline, reader.recv()).await.expect("the delayer did not start").unwrap();
        if message.key() == Some(PROBE.as_bytes()) {
            return;
        }
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Child(std::process::Child);

impl Child {
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The relay sends the copy to `<topic>_delay_2s` with the immediate message; the delayer
/// re-sends it to the topic no earlier than 2 s after the immediate message and within
/// 2 s + 2 s, with the same key, partition and value, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_copy_arrives_after_its_delay_and_not_much_later() {
    let setup = setup(&["2s"]).await;
    let shutdown = CancellationToken::new();
    setup.publish_and_delay(&shutdown).await;
    let received = read(&setup.kafka, &setup.topic, 2, Duration::from_secs(60)).await;
    shutdown.cancel();
    assert_eq!(received.len(), 2, "{received:?}");
    let (immediate, copy) = (&received[0], &received[1]);
    assert_eq!(immediate.header(DelayHeaders::DELAYED), None);
    assert_eq!(copy.header(DelayHeaders::DELAYED), Some("2s"));
    assert_eq!(copy.payload, immediate.payload, "the copy is the same event, byte for byte");
    assert_eq!((copy.key.as_str(), copy.partition), (immediate.key.as_str(), immediate.partition));
    let waited = copy.timestamp - immediate.timestamp;
    assert!((2_000..=4_000).contains(&waited), "the copy came {waited} ms after the message");

    let on_delay_topic = read(&setup.kafka, &format!("{}_delay_2s", setup.topic), 1, Duration::from_secs(30)).await;
    assert_eq!(on_delay_topic[0].header(DelayHeaders::TARGET), Some(setup.topic.as_str()));
    assert_eq!(on_delay_topic[0].header(DelayHeaders::DUE), Some((immediate.timestamp + 2_000).to_string().as_str()));
    assert_eq!(on_delay_topic[0].header(DelayHeaders::PARTITION_KEY), Some("7"));
    assert_eq!(on_delay_topic[0].payload, immediate.payload);
}

/// A chain `1s → 2s`: one copy a second after the message, the next two seconds after that
/// (three in all), each re-sent to the topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_delays_sends_a_copy_at_each_stage() {
    let setup = setup(&["1s", "2s"]).await;
    let shutdown = CancellationToken::new();
    setup.publish_and_delay(&shutdown).await;
    let received = read(&setup.kafka, &setup.topic, 3, Duration::from_secs(60)).await;
    shutdown.cancel();
    assert_eq!(received.len(), 3, "{received:?}");
    let stages: Vec<Option<&str>> = received.iter().map(|message| message.header(DelayHeaders::DELAYED)).collect();
    assert_eq!(stages, [None, Some("1s"), Some("2s")]);
    let start = received[0].timestamp;
    let first = received[1].timestamp - start;
    let second = received[2].timestamp - start;
    assert!((1_000..=3_000).contains(&first), "the first copy came {first} ms after the message");
    assert!((3_000..=5_000).contains(&second), "the second copy came {second} ms after the message");
    assert!(received.iter().all(|message| message.payload == received[0].payload));
}

/// Produces a delayed copy to `topic` (partition `partition`) for `target`, due at `due`.
async fn produce_copy(
    producer: &dionysus::kafka::Producer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
    headers: &[(&str, &str)],
) {
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |all, (name, value)| all.insert(Header { key: name, value: Some(*value) }));
    let record = FutureRecord::to(topic).partition(partition).key(key).payload(value).headers(headers);
    producer.send(record, Duration::from_secs(10)).await.unwrap();
}

/// A delayer of `topic` in `group`, in this process, until the token is cancelled.
fn run_delayer(
    config: Config,
    topic: &str,
    group: &str,
) -> (CancellationToken, tokio::task::JoinHandle<Result<(), dionysus::delayer::DelayerError>>) {
    let delayer =
        Dionysus::with_registry(config, Registry::default()).delayer().topic(topic).group(group).build().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { delayer.run(shutdown).await }
    });
    (shutdown, running)
}

/// The log file of run `run` of the `dionysus delayer` process in `group`.
fn delayer_log(group: &str, run: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{group}-{run}.log"))
}

/// The `dionysus delayer` process on `topic`, logging at debug level (each re-sent copy with
/// its partition and offset, each held partition, each rebalance) to [`delayer_log`], so a
/// failure can be traced to the copy and the process that lost it.
fn spawn_delayer(kafka: &KafkaConfig, topic: &str, group: &str, dead_letters: &str, run: usize) -> Child {
    let log = std::fs::File::create(delayer_log(group, run)).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dionysus-cli"))
        .args(["--brokers", &kafka.brokers.join(","), "delayer", "--topic", topic, "--group", group])
        .args(["--dead-letter-topic", dead_letters])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,dionysus=debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Child(child)
}

/// 300 copies over 10 keys, due over six seconds; the delayer process is killed with
/// SIGKILL midway and started again: every copy arrives, and per key in the order sent
/// (copies re-sent before the kill but not yet committed may arrive twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_delayer_loses_nothing_and_keeps_each_keys_order() {
    let kafka = kafka_config();
    let target = unique_name("delayed_kill");
    let delay_topic = format!("{target}_delay_2s");
    let dead_letters = unique_name("delayer_dead_letters");
    let specs: Vec<_> = [(&target, 2), (&delay_topic, 2), (&dead_letters, 1)]
        .into_iter()
        .map(|(name, partitions)| dionysus::kafka::TopicSpec { name: name.clone(), partitions, replication_factor: 1 })
        .collect();
    dionysus::kafka::create_topics(&kafka, &specs).await.unwrap();
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    const COPIES: usize = 300;
    let start = chrono::Utc::now().timestamp_millis() + 5_000;
    for seq in 0..COPIES {
        let key = seq % 10;
        let due = (start + 20 * seq as i64).to_string();
        let partition_key = key.to_string();
        let headers = [
            (DelayHeaders::TARGET, target.as_str()),
            (DelayHeaders::DUE, due.as_str()),
            (DelayHeaders::PARTITION_KEY, partition_key.as_str()),
        ];
        let value = format!(r#"{{"seq":{seq}}}"#);
        produce_copy(&producer, &delay_topic, (key % 2) as i32, &format!("Item:{key}"), &value, &headers).await;
    }

    let group = unique_name("delayer_kill");
    let mut first = spawn_delayer(&kafka, &delay_topic, &group, &dead_letters, 1);
    // Kill it once a fifth of the copies arrived.
    let reader: StreamConsumer = consumer_config(&kafka, &unique_name("reader")).create().unwrap();
    reader.subscribe(&[target.as_str()]).unwrap();
    let mut received: Vec<(String, usize)> = Vec::new();
    let mut distinct = HashSet::new();
    let mut restarted = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while distinct.len() < COPIES {
        let Ok(message) = tokio::time::timeout_at(deadline, reader.recv()).await else {
            let missing: Vec<usize> = (0..COPIES).filter(|seq| !distinct.contains(seq)).collect();
            let found = reread_copies(&kafka, &target, &missing).await;
            panic!(
                "only {} of {COPIES} copies arrived; missing seq {missing:?}; on {target} when read again from its \
                 start by a new group: {found:?} (logs: {}, {})",
                distinct.len(),
                delayer_log(&group, 1).display(),
                delayer_log(&group, 2).display(),
            );
        };
        let message = message.unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let seq = usize::try_from(value["seq"].as_u64().unwrap()).unwrap();
        assert!(chrono::Utc::now().timestamp_millis() >= start + 20 * seq as i64, "copy {seq} came before it was due");
        distinct.insert(seq);
        received.push((key, seq));
        if restarted.is_none() && distinct.len() >= COPIES / 5 {
            first.kill(); // SIGKILL
            restarted = Some(spawn_delayer(&kafka, &delay_topic, &group, &dead_letters, 2));
        }
    }
    drop(restarted.expect("the delayer was restarted"));
    assert!(distinct.len() == COPIES, "every copy arrived");

    // Per key, the first arrival of each copy is in the order sent.
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (key, seq) in &received {
        if seen.insert(*seq) {
            by_key.entry(key.clone()).or_default().push(*seq);
        }
    }
    for (key, seqs) in &by_key {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{key} out of order: {seqs:?}");
    }
    eprintln!("{} copies arrived, {} of them twice", received.len(), received.len() - COPIES);
}

/// Where the copies numbered `missing` are on `topic` (seq → partition and offset of each
/// time it is there), read from the start by a new group: tells a copy the delayer never
/// re-sent from one the test's reader did not see.
async fn reread_copies(kafka: &KafkaConfig, topic: &str, missing: &[usize]) -> BTreeMap<usize, Vec<(i32, i64)>> {
    let consumer: StreamConsumer = consumer_config(kafka, &unique_name("rereader")).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut found: BTreeMap<usize, Vec<(i32, i64)>> = missing.iter().map(|seq| (*seq, Vec::new())).collect();
    // Reads until the topic stays quiet for a while (the group needs a few seconds to join).
    let mut quiet = Duration::from_secs(20);
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        quiet = Duration::from_secs(5);
        let Ok(message) = message else { continue };
        let seq = message
            .payload()
            .and_then(|payload| serde_json::from_slice::<serde_json::Value>(payload).ok())
            .and_then(|value| value["seq"].as_u64())
            .and_then(|seq| usize::try_from(seq).ok());
        if let Some(places) = seq.and_then(|seq| found.get_mut(&seq)) {
            places.push((message.partition(), message.offset()));
        }
    }
    found
}

/// A stopped delayer commits, on its delay topic, the offset of the first copy it did not
/// re-send (here one due in an hour), so its next run starts there: a copy past the commit
/// would never be re-sent if the process died before re-sending it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delayer_commits_up_to_the_first_copy_it_did_not_re_send() {
    let kafka = kafka_config();
    let target = unique_name("delayed_commit");
    let delay_topic = format!("{target}_delay_1s");
    let specs: Vec<_> = [&target, &delay_topic]
        .into_iter()
        .map(|name| dionysus::kafka::TopicSpec { name: name.clone(), partitions: 1, replication_factor: 1 })
        .collect();
    dionysus::kafka::create_topics(&kafka, &specs).await.unwrap();
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let (due, later) = (now.to_string(), (now + 3_600_000).to_string());
    let due = [(DelayHeaders::TARGET, target.as_str()), (DelayHeaders::DUE, due.as_str())];
    let later = [(DelayHeaders::TARGET, target.as_str()), (DelayHeaders::DUE, later.as_str())];
    produce_copy(&producer, &delay_topic, 0, "Item:1", "due", &due).await;
    produce_copy(&producer, &delay_topic, 0, "Item:2", "in an hour", &later).await;

    let mut config = Config::default();
    config.kafka = kafka.clone();
    let group = unique_name("delayer");
    let (shutdown, running) = run_delayer(config, &delay_topic, &group);
    let resent = read(&kafka, &target, 1, Duration::from_secs(60)).await;
    assert_eq!(resent.len(), 1, "the due copy was not re-sent");
    // Its offset is stored before the loop looks at the shutdown again; stopping commits it.
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let committed = tokio::task::spawn_blocking(move || {
        let reader: StreamConsumer = consumer_config(&kafka, &group).create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&delay_topic, 0);
        reader.committed_offsets(list, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    let offset = committed.elements()[0].offset();
    assert_eq!(
        offset,
        rdkafka::Offset::Offset(1),
        "the delayer re-sent the copy at offset 0 and holds the one at offset 1: its next run must start at 1"
    );
}

/// A message on a delay topic without the headers of a delayed copy goes to the dead-letter
/// topic with the reason; the copies behind it are re-sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_delay_message_is_dead_lettered_and_the_partition_moves_on() {
    let kafka = kafka_config();
    let target = unique_name("delayed_malformed");
    let delay_topic = format!("{target}_delay_1s");
    let dead_letters = unique_name("delayer_dead_letters");
    let specs: Vec<_> = [&target, &delay_topic, &dead_letters]
        .into_iter()
        .map(|name| dionysus::kafka::TopicSpec { name: name.clone(), partitions: 1, replication_factor: 1 })
        .collect();
    dionysus::kafka::create_topics(&kafka, &specs).await.unwrap();
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let due = (chrono::Utc::now().timestamp_millis() + 1_000).to_string();
    let valid = [(DelayHeaders::TARGET, target.as_str()), (DelayHeaders::DUE, due.as_str())];
    produce_copy(&producer, &delay_topic, 0, "Item:1", "no headers", &[]).await;
    produce_copy(&producer, &delay_topic, 0, "Item:2", "first", &valid).await;
    let bad_due = [(DelayHeaders::TARGET, target.as_str()), (DelayHeaders::DUE, "soon")];
    produce_copy(&producer, &delay_topic, 0, "Item:3", "bad due", &bad_due).await;
    produce_copy(&producer, &delay_topic, 0, "Item:4", "second", &valid).await;

    let mut config = Config::default();
    config.kafka = kafka.clone();
    config.consumer.dead_letter_topic = dead_letters.clone();
    let (shutdown, running) = run_delayer(config, &delay_topic, &unique_name("delayer"));
    let resent = read(&kafka, &target, 2, Duration::from_secs(60)).await;
    let dead = read(&kafka, &dead_letters, 2, Duration::from_secs(30)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let values: Vec<&[u8]> = resent.iter().map(|message| message.payload.as_slice()).collect();
    assert_eq!(values, [&b"first"[..], b"second"]);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].payload, b"no headers");
    assert_eq!(dead[0].key, "Item:1");
    assert_eq!(dead[0].header(DeadLetterHeaders::REASON), Some(dionysus::delayer::MALFORMED_REASON));
    assert!(dead[0].header(DeadLetterHeaders::ERROR).is_some_and(|error| error.contains(DelayHeaders::TARGET)));
    assert_eq!(dead[0].header(DeadLetterHeaders::TOPIC), Some(delay_topic.as_str()));
    assert_eq!(dead[0].header(DeadLetterHeaders::OFFSET), Some("0"));
    assert_eq!(dead[1].payload, b"bad due");
    assert!(dead[1].header(DeadLetterHeaders::ERROR).is_some_and(|error| error.contains("`soon`")));
}
