//! The relay against real PostgreSQL and the broker: per-key order with several workers,
//! rows committed out of id order, a paused broker, an aborted worker, poison rows, missing
//! topics, health and retention.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::{Config, KafkaConfig, ProducerConfig};
use dionysus::registry::Registry;
use dionysus::relay::Relay;
use dionysus::serialize::{DefaultSerializer, SerializeError, Serializer, Sideloads};
use dionysus_tests::{
    consumer_config, create_topic, eventually, kafka_config, registry_for, unique_name, PrivateBroker, TestDb,
};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

diesel::table! {
    relay_items (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
    }
}

#[derive(Debug, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = relay_items)]
#[publishable(model_name = "Item", soft_delete = false)]
pub struct Item {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
}

/// The default serializer, except that a record named "poison" cannot be serialized.
#[derive(Default)]
struct PoisonAware;

impl Serializer<Item> for PoisonAware {
    fn serialize(&self, record: &Item, sideloads: &Sideloads) -> Result<serde_json::Value, SerializeError> {
        if record.name == "poison" {
            return Err(SerializeError::custom(format!("Item {} is poisoned", record.id)));
        }
        DefaultSerializer.serialize(record, sideloads)
    }
}

const ACCOUNTS: i64 = 50;

pub(crate) struct Setup {
    db: TestDb,
    conn: AsyncPgConnection,
    registry: &'static Registry,
    topic: String,
    kafka: KafkaConfig,
}

/// A database with `items` records (account = id % 50) and a registry publishing them on a
/// topic of their own; the topic is created with `partitions` unless that is 0.
async fn setup(kafka: KafkaConfig, partitions: i32, items: i64) -> Setup {
    let topic = if partitions > 0 { create_topic(&kafka, "relay", partitions).await } else { unique_name("missing") };
    setup_on(kafka, topic, partitions, items).await
}

/// [`setup`] with a topic created already.
async fn setup_on(kafka: KafkaConfig, topic: String, partitions: i32, items: i64) -> Setup {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(&format!(
        "CREATE TABLE relay_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL);
         INSERT INTO relay_items (account_id, name) SELECT i % {ACCOUNTS}, 'item ' || i FROM generate_series(1, {items}) i;"
    ))
    .await
    .unwrap();
    let registry = registry_for::<Item>(
        &topic,
        partitions,
        "account_id",
        dionysus::serialize::serialize_erased::<Item, PoisonAware>,
    );
    Setup { db, conn, registry, topic, kafka }
}

impl Setup {
    fn config(&self, tweak: impl FnOnce(&mut ProducerConfig)) -> Config {
        let mut producer = ProducerConfig::default();
        producer.idle_sleep = Duration::from_millis(20);
        producer.lock_expiry = Duration::from_secs(2);
        producer.retry_backoff_base = Duration::from_millis(20);
        producer.retry_backoff_cap = Duration::from_millis(100);
        producer.retention = None;
        tweak(&mut producer);
        let mut config = Config::default();
        config.database_url = self.db.url.clone();
        config.kafka = self.kafka.clone();
        config.producer = producer;
        config
    }

    fn relay(&self, config: Config) -> Relay {
        Relay::builder(config).registry(self.registry).worker_prefix(unique_name("w")).build().unwrap()
    }

    /// Outbox rows `first..=last`: item `(i % items) + 1`, event `seq_<i>_updated`, partition
    /// key = the item's account.
    async fn insert_rows(&mut self, first: i64, last: i64, items: i64) {
        self.conn
            .batch_execute(&format!(
                "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
                 SELECT 'Item', ((i % {items}) + 1)::text, 'seq_' || i || '_updated', '{topic}', (((i % {items}) + 1) % {ACCOUNTS})::text
                 FROM generate_series({first}, {last}) i",
                topic = self.topic
            ))
            .await
            .unwrap();
    }

    /// Waits until every row is published.
    async fn wait_published(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count("published_at IS NULL").await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "rows not published within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn count(&mut self, condition: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            count: i64,
        }
        let count: Count =
            diesel::sql_query(format!("SELECT count(*) AS count FROM dionysus_outbox WHERE {condition}"))
                .get_result(&mut self.conn)
                .await
                .unwrap();
        count.count
    }
}

/// Messages of `topic` until `expected` distinct ones arrived (at-least-once delivery may
/// repeat some): `(message key, event name)` in arrival order, repeats included.
async fn consume(kafka: &KafkaConfig, topic: &str, expected: usize) -> Vec<(String, String)> {
    let consumer: StreamConsumer = consumer_config(kafka, &unique_name("group")).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut stream = consumer.stream();
    let mut received = Vec::with_capacity(expected);
    let mut distinct = std::collections::HashSet::new();
    while distinct.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages arrived", received.len()))
            .unwrap()
            .unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let entry = (key, value["message"][0]["event"].as_str().unwrap().to_owned());
        distinct.insert(entry.clone());
        received.push(entry);
    }
    received
}

fn seq(event: &str) -> i64 {
    event.trim_start_matches("seq_").trim_end_matches("_updated").parse().unwrap()
}

fn account_of(key: &str) -> i64 {
    key.trim_start_matches("Item:").parse::<i64>().unwrap() % ACCOUNTS
}

/// Per partition key, the sequence numbers in the order they arrived.
fn by_account(messages: &[(String, String)]) -> BTreeMap<i64, Vec<i64>> {
    let mut by_account: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (key, event) in messages {
        by_account.entry(account_of(key)).or_default().push(seq(event));
    }
    by_account
}

async fn run_until(relay: &Relay, setup: &mut Setup, done: &str, timeout: Duration) {
    let (token, running) = spawn_relay(relay);
    let deadline = tokio::time::Instant::now() + timeout;
    while setup.count(done).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "relay did not finish: {} rows left", setup.count(done).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();
}

/// 4 workers, 10 000 events over 50 partition keys: every event arrives, and per key in
/// outbox order.
#[tokio::test(flavor = "multi_thread")]
async fn four_workers_keep_per_key_order() {
    let mut setup = setup(kafka_config(), 8, 500).await;
    setup.insert_rows(1, 10_000, 500).await;
    let relay = setup.relay(setup.config(|p| p.relay_workers = 4));
    run_until(&relay, &mut setup, "published_at IS NULL", Duration::from_secs(120)).await;

    let messages = consume(&setup.kafka, &setup.topic, 10_000).await;
    assert_eq!(messages.len(), 10_000, "no repeats in a run without failures");
    let by_account = by_account(&messages);
    assert_eq!(by_account.len(), ACCOUNTS as usize);
    for (account, seqs) in &by_account {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "account {account} out of order: {seqs:?}");
    }
    let mut all: Vec<i64> = by_account.into_values().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=10_000).collect::<Vec<_>>(), "every event exactly once");
    assert_eq!(setup.count("attempts > 0").await, 0);
}

/// A row whose transaction commits after a row with a higher id is still published.
#[tokio::test(flavor = "multi_thread")]
async fn rows_committed_out_of_id_order_are_published() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    let relay = setup.relay(setup.config(|_| {}));
    let mut late = setup.db.connection().await;
    late.batch_execute(&format!(
        "BEGIN; INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key) \
         VALUES ('Item', '1', 'seq_1_updated', '{}', '1')",
        setup.topic
    ))
    .await
    .unwrap();
    setup.insert_rows(2, 2, 10).await;
    let first = relay.drain().await.unwrap();
    assert_eq!(first.published, 1, "the committed row with the higher id goes first");
    late.batch_execute("COMMIT").await.unwrap();
    let second = relay.drain().await.unwrap();
    assert_eq!(second.published, 1, "the late row is not skipped");
    assert_eq!(setup.count("published_at IS NULL").await, 0);
    let events: Vec<String> = consume(&setup.kafka, &setup.topic, 2).await.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events, ["seq_2_updated", "seq_1_updated"]);
}

/// The broker freezes mid-run: nothing is marked published without an acknowledgement, and
/// once it is back everything is published.
#[tokio::test(flavor = "multi_thread")]
async fn paused_broker_holds_rows_until_it_is_back() {
    let broker = PrivateBroker::start().await;
    let mut setup = setup(broker.kafka_config(), 3, 20).await;
    let relay = setup.relay(setup.config(|p| p.lock_expiry = Duration::from_secs(2)));
    let (token, running) = spawn_relay(&relay);
    setup.insert_rows(1, 100, 20).await;
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while setup.count("published_at IS NULL").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "first rows not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    broker.pause();
    setup.insert_rows(101, 200, 20).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(setup.count("id > 100 AND published_at IS NOT NULL").await, 0, "nothing published without an ack");
    assert!(setup.count("id > 100 AND attempts > 0").await > 0, "failed deliveries were recorded");

    broker.resume();
    deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while setup.count("published_at IS NULL").await > 0 {
        if tokio::time::Instant::now() >= deadline {
            #[derive(QueryableByName)]
            struct Error {
                #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
                error_message: Option<String>,
            }
            let errors: Vec<Error> = diesel::sql_query(
                "SELECT DISTINCT error_message FROM dionysus_outbox WHERE published_at IS NULL LIMIT 5",
            )
            .load(&mut setup.conn)
            .await
            .unwrap();
            let messages: Vec<Option<String>> = errors.into_iter().map(|e| e.error_message).collect();
            panic!("rows not published after the broker came back: {messages:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();
    let messages = consume(&setup.kafka, &setup.topic, 200).await;
    let mut seqs: Vec<i64> = messages.iter().map(|(_, e)| seq(e)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    // Repeats are allowed (at least once); the first arrival of each event keeps key order.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<(String, String)> = messages.into_iter().filter(|m| seen.insert(m.clone())).collect();
    for (account, seqs) in by_account(&firsts) {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "account {account} out of order: {seqs:?}");
    }
}

/// A caught-up relay sends a row that arrives while a batch's acknowledgement is awaited at
/// once, behind that batch, rather than after the acknowledgement: with a broker 600 ms away,
/// two rows of one key committed 150 ms apart are published about 150 ms apart, not a round
/// trip apart, and in order on the wire.
#[tokio::test(flavor = "multi_thread")]
async fn rows_arriving_during_an_acknowledgement_go_at_once() {
    let kafka = dionysus::testing::EmbeddedKafka::start().unwrap();
    let topic = unique_name("ahead");
    kafka.create_topic(&topic, 3).unwrap();
    let mut setup = setup_on(kafka.kafka_config(), topic, 3, 20).await;
    let relay = setup.relay(setup.config(|p| p.lock_expiry = Duration::from_secs(10)));
    let (token, running) = spawn_relay(&relay);
    // Warm up (metadata, producer id) before the broker slows down.
    setup.insert_rows(1, 1, 20).await;
    setup.wait_published(Duration::from_secs(30)).await;
    kafka.round_trip_time(Duration::from_millis(600)).unwrap();
    // Rows 2 and 3 are of one item (one key), 150 ms apart.
    for id in [2, 3] {
        setup
            .conn
            .batch_execute(&format!(
                "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
                 VALUES ('Item', '1', 'seq_{id}_updated', '{topic}', '1')",
                topic = setup.topic
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    setup.wait_published(Duration::from_secs(30)).await;
    #[derive(QueryableByName)]
    struct Gap {
        #[diesel(sql_type = diesel::sql_types::Double)]
        seconds: f64,
    }
    let gaps: Vec<Gap> = diesel::sql_query(
        "SELECT extract(epoch FROM published_at - lag(published_at) OVER (ORDER BY id))::float8 AS seconds \
         FROM dionysus_outbox WHERE id > 1 ORDER BY id OFFSET 1",
    )
    .load(&mut setup.conn)
    .await
    .unwrap();
    let gaps: Vec<f64> = gaps.into_iter().map(|gap| gap.seconds).collect();
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] < 0.45,
        "rows 150 ms apart were published {gaps:?} s apart: the second waited for the first's acknowledgement"
    );
    kafka.round_trip_time(Duration::ZERO).unwrap();
    token.cancel();
    running.await.unwrap().unwrap();
    let messages = consume(&setup.kafka, &setup.topic, 3).await;
    let seqs: Vec<i64> = messages.iter().filter(|(key, _)| key == "Item:1").map(|(_, event)| seq(event)).collect();
    assert_eq!(seqs, [2, 3], "one key's rows in order on the wire");
}

/// A worker aborted mid-run keeps its buckets until the leases expire; then another relay
/// takes them over and publishes everything (at least once).
#[tokio::test(flavor = "multi_thread")]
async fn aborted_worker_loses_nothing() {
    let mut setup = setup(kafka_config(), 4, 200).await;
    setup.insert_rows(1, 3000, 200).await;
    let first = setup.relay(setup.config(|p| {
        p.batch_size = 20;
        p.lock_expiry = Duration::from_secs(2);
    }));
    let (_token, running) = spawn_relay(&first);
    eventually(Duration::from_secs(60), || {
        let url = setup.db.url.clone();
        async move {
            let mut conn = <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            let published: Vec<i64> = dionysus::__internals::schema::dionysus_outbox::table
                .select(dionysus::__internals::schema::dionysus_outbox::id)
                .filter(dionysus::__internals::schema::dionysus_outbox::published_at.is_not_null())
                .limit(1)
                .load(&mut conn)
                .await
                .ok()?;
            (!published.is_empty()).then_some(())
        }
    })
    .await;
    running.abort();
    let _ = running.await;
    assert!(setup.count("published_at IS NULL").await > 0, "aborted before the end");

    let second = setup.relay(setup.config(|p| p.lock_expiry = Duration::from_secs(2)));
    run_until(&second, &mut setup, "published_at IS NULL", Duration::from_secs(120)).await;
    let messages = consume(&setup.kafka, &setup.topic, 3000).await;
    let mut seqs: Vec<i64> = messages.iter().map(|(_, e)| seq(e)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 3000, "every row published");
}

/// A row that cannot be serialized is retried, then parked with its error; the rest flows,
/// including the later rows of its key once it is parked.
#[tokio::test(flavor = "multi_thread")]
async fn poison_row_is_parked_and_the_rest_flows() {
    let mut setup = setup(kafka_config(), 2, 100).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'poison' WHERE id = 7").await.unwrap();
    setup.insert_rows(1, 300, 100).await;
    let relay = setup.relay(setup.config(|p| p.max_attempts = 3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while setup.count("published_at IS NULL AND failed_at IS NULL").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "rows still pending");
        relay.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    #[derive(QueryableByName, Debug)]
    struct Parked {
        #[diesel(sql_type = diesel::sql_types::Text)]
        resource_id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_class: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_message: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
    }
    let parked: Vec<Parked> = diesel::sql_query(
        "SELECT resource_id, error_class, error_message, attempts FROM dionysus_outbox WHERE failed_at IS NOT NULL",
    )
    .load(&mut setup.conn)
    .await
    .unwrap();
    assert_eq!(parked.len(), 3, "item 7 has three rows: {parked:?}");
    for row in &parked {
        assert_eq!((row.resource_id.as_str(), row.error_class.as_str(), row.attempts), ("7", "SerializeError", 3));
        assert!(row.error_message.contains("Item 7 is poisoned"), "{}", row.error_message);
    }
    assert_eq!(setup.count("published_at IS NOT NULL").await, 297);
}

/// A key waiting for a retry with a long backlog behind it does not fill every batch: the
/// other keys of its buckets keep flowing.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_waiting_for_a_retry_does_not_starve_the_others() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'poison' WHERE id = 7").await.unwrap();
    setup
        .conn
        .batch_execute(&format!(
            "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
             SELECT 'Item', '7', 'seq_' || i || '_updated', '{topic}', '7' FROM generate_series(1, 250) i;
             INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
             SELECT 'Item', '8', 'seq_' || i || '_updated', '{topic}', '8' FROM generate_series(251, 270) i;",
            topic = setup.topic
        ))
        .await
        .unwrap();
    let relay = setup.relay(setup.config(|p| {
        p.batch_size = 100;
        p.retry_backoff_base = Duration::from_secs(30);
        p.retry_backoff_cap = Duration::from_secs(60);
    }));
    for _ in 0..3 {
        relay.drain().await.unwrap();
    }
    assert_eq!(setup.count("partition_key = '8' AND published_at IS NULL").await, 0, "key 8 was starved");
    assert_eq!(setup.count("partition_key = '7' AND published_at IS NOT NULL").await, 0);
    assert_eq!(setup.count("partition_key = '7' AND attempts > 0").await, 1, "only the poison row was tried");
}

/// In strict mode a parked row keeps holding back the later rows of its key.
#[tokio::test(flavor = "multi_thread")]
async fn strict_ordering_keeps_the_key_blocked() {
    let mut setup = setup(kafka_config(), 1, 100).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'poison' WHERE id = 7").await.unwrap();
    setup.insert_rows(1, 300, 100).await;
    let relay = setup.relay(setup.config(|p| {
        p.max_attempts = 1;
        p.strict_ordering = true;
    }));
    for _ in 0..5 {
        relay.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Item 7's account is 7; items 7, 57 (and their repeats) share it.
    assert_eq!(setup.count("failed_at IS NOT NULL").await, 1, "only the first poison row was tried");
    let blocked = setup.count("published_at IS NULL AND failed_at IS NULL").await;
    assert_eq!(blocked, setup.count("partition_key = '7' AND published_at IS NULL AND failed_at IS NULL").await);
    assert!(blocked > 0);
    assert_eq!(setup.count("partition_key <> '7' AND published_at IS NULL").await, 0);
}

/// A topic missing on the broker is a clear error and the rows stay unpublished; with
/// auto-creation they are published.
#[tokio::test(flavor = "multi_thread")]
async fn missing_topic_is_a_clear_error_unless_auto_created() {
    let mut setup = setup(kafka_config(), 0, 10).await;
    setup.insert_rows(1, 5, 10).await;
    let relay = setup.relay(setup.config(|_| {}));
    let report = relay.drain().await.unwrap();
    assert_eq!((report.published, report.failed), (0, 5), "every row fails (each is the first of its key)");
    #[derive(QueryableByName)]
    struct Error {
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_class: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_message: String,
    }
    let error: Error = diesel::sql_query(
        "SELECT error_class, error_message FROM dionysus_outbox WHERE error_class IS NOT NULL LIMIT 1",
    )
    .get_result(&mut setup.conn)
    .await
    .unwrap();
    assert_eq!(error.error_class, "MissingTopic");
    assert!(
        error.error_message.contains(&format!("topic `{}` does not exist on the broker", setup.topic)),
        "{}",
        error.error_message
    );
    assert_eq!(setup.count("published_at IS NOT NULL").await, 0);

    tokio::time::sleep(Duration::from_millis(150)).await;
    let relay = Relay::builder(setup.config(|_| {})).registry(setup.registry).auto_create_topics(true).build().unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(report.published, 5);
}

/// `/health` answers 200 (as `check_health` does) and the liveness file exists while the
/// relay runs; the file is removed when it stops.
#[tokio::test(flavor = "multi_thread")]
async fn health_endpoint_and_file_follow_the_loop() {
    let setup = setup(kafka_config(), 1, 1).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let file = std::env::temp_dir().join(unique_name("relay-health"));
    let relay = Relay::builder(setup.config(|_| {}))
        .registry(setup.registry)
        .serve(address)
        .health_file(&file)
        .build()
        .unwrap();
    let (token, running) = spawn_relay(&relay);
    let response = eventually(Duration::from_secs(10), || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    })
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(relay.check_health(), Ok(()));
    eventually(Duration::from_secs(10), || {
        let file = file.clone();
        async move { file.exists().then_some(()) }
    })
    .await;
    token.cancel();
    running.await.unwrap().unwrap();
    assert!(!file.exists(), "the liveness file is removed on shutdown");
}

/// Retention deletes published rows older than the age, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_only_old_published_rows() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    setup.insert_rows(1, 30, 10).await;
    setup
        .conn
        .batch_execute(
            "UPDATE dionysus_outbox SET published_at = now() - interval '10 days' WHERE id <= 10;
             UPDATE dionysus_outbox SET published_at = now() WHERE id BETWEEN 11 AND 20;",
        )
        .await
        .unwrap();
    let relay = setup.relay(setup.config(|_| {}));
    assert_eq!(relay.prune(Duration::from_secs(3 * 86_400)).await.unwrap(), 10);
    assert_eq!(setup.count("TRUE").await, 20);
}

/// Tuples of the outbox read so far by scans (sequential and through indexes), as the
/// statistics collector counts them once every backend has reported.
async fn outbox_tuples_read(conn: &mut AsyncPgConnection) -> i64 {
    dionysus_tests::count(
        conn,
        "SELECT (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::bigint AS n \
         FROM pg_stat_user_tables WHERE relname = 'dionysus_outbox'",
    )
    .await
}

/// Pruning reads about the rows it deletes, not every row of the outbox: here 500 old
/// published rows (and a parked one) below 20,000 published within the retention. It is
/// done every minute, and an outbox keeps days of rows.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_reads_about_the_rows_it_deletes_not_the_whole_outbox() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    setup
        .conn
        .batch_execute(
            "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, created_at, published_at)
             SELECT 'Item', i::text, 'item_updated', 't', now() - interval '10 days', now() - interval '9 days'
             FROM generate_series(1, 500) i;
             INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, created_at, failed_at, attempts)
             VALUES ('Item', '1', 'item_updated', 't', now() - interval '10 days', now() - interval '9 days', 5);
             INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, published_at)
             SELECT 'Item', i::text, 'item_updated', 't', now() FROM generate_series(1, 20000) i;
             ANALYZE dionysus_outbox;",
        )
        .await
        .unwrap();
    let relay = setup.relay(setup.config(|_| {}));
    // Every statement so far has reported its statistics before the count starts: this
    // connection's at once, the others' within about a second of going idle.
    setup.conn.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = outbox_tuples_read(&mut setup.conn).await;
    assert_eq!(relay.prune(Duration::from_secs(3 * 86_400)).await.unwrap(), 500);
    let mut read = 0;
    for _ in 0..300 {
        read = outbox_tuples_read(&mut setup.conn).await - before;
        if read > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(read > 0, "the pruning connection reported no statistics within 15 s");
    assert!(read <= 3_000, "pruning 500 rows read {read} outbox rows of 20,501");
    assert_eq!(setup.count("TRUE").await, 20_001, "the parked row and the young ones are kept");
}

/// A retention of zero deletes each row as it is published: the messages arrive in order per
/// key, nothing published stays behind, and a parked row (never published) is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_retention_of_zero_deletes_rows_as_they_are_published() {
    // 50 items: item 7 is alone on its partition key, so its failures hold back no other row.
    let mut setup = setup(kafka_config(), 4, 50).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'poison' WHERE id = 7").await.unwrap();
    setup.insert_rows(1, 2_000, 50).await;
    let relay = setup.relay(setup.config(|p| {
        (p.relay_workers, p.max_attempts) = (2, 3);
        p.retention = Some(Duration::ZERO);
    }));
    run_until(&relay, &mut setup, "published_at IS NULL AND failed_at IS NULL", Duration::from_secs(120)).await;
    assert_eq!(setup.count("TRUE").await, 40, "only item 7's 40 parked rows are left");
    assert_eq!(setup.count("failed_at IS NOT NULL AND resource_id = '7'").await, 40);
    let messages = consume(&setup.kafka, &setup.topic, 1_960).await;
    assert_eq!(messages.len(), 1_960, "no repeats in a run without delivery failures");
    for (account, seqs) in by_account(&messages) {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "account {account} out of order: {seqs:?}");
    }
}

/// Publish-after-commit: a committed outbox write wakes the idle relay at once (its idle
/// sleep here is a minute); a rolled-back one publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn publish_after_commit_wakes_the_relay() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    let config = setup.config(|p| {
        p.idle_sleep = Duration::from_secs(60);
        p.publish_after_commit = true;
    });
    let relay = setup.relay(config.clone());
    let (token, running) = spawn_relay(&relay);
    // Let the worker take its buckets and fall asleep.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let item: Item =
        relay_items::table.find(3_i64).select(Item::as_select()).get_result(&mut setup.conn).await.unwrap();
    let outbox = dionysus::outbox::Outbox::new(setup.registry, &config.producer);
    let written = std::time::Instant::now();
    use diesel_async::AsyncConnection;
    setup
        .conn
        .transaction::<_, anyhow::Error, _>(async |tx| {
            outbox.created(tx, &item).await?;
            Ok(())
        })
        .await
        .unwrap();
    let mut waited = Duration::ZERO;
    while setup.count("published_at IS NULL").await > 0 {
        waited = written.elapsed();
        assert!(waited < Duration::from_secs(10), "not woken by the commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waited < Duration::from_secs(10));
    token.cancel();
    running.await.unwrap().unwrap();
}

/// Workers started together split the buckets at once, and a second relay joining later gets
/// its share within a couple of seconds (not only after the lease expiry).
#[tokio::test(flavor = "multi_thread")]
async fn workers_split_the_buckets_promptly() {
    #[derive(diesel::QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        held: i64,
    }
    async fn shares(conn: &mut AsyncPgConnection) -> Vec<i64> {
        diesel::sql_query(
            "SELECT count(*) AS held FROM dionysus_relay_leases \
             WHERE owner IS NOT NULL AND lease_until > now() GROUP BY owner ORDER BY 1",
        )
        .load::<Held>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.held)
        .collect()
    }
    let mut setup = setup(kafka_config(), 1, 1).await;
    // A long expiry: only prompt rebalancing can pass this test.
    let config = setup.config(|producer| (producer.relay_workers, producer.lock_expiry) = (2, Duration::from_secs(60)));
    let first = setup.relay(config.clone());
    let (token, running) = spawn_relay(&first);
    let started = std::time::Instant::now();
    while shares(&mut setup.conn).await != [32, 32] {
        assert!(started.elapsed() < Duration::from_secs(3), "two workers: {:?}", shares(&mut setup.conn).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = setup.relay(config.clone());
    let joined = tokio::spawn({
        let (relay, token) = (second.clone(), token.clone());
        async move { relay.run(token).await }
    });
    let started = std::time::Instant::now();
    while shares(&mut setup.conn).await != [16, 16, 16, 16] {
        assert!(started.elapsed() < Duration::from_secs(5), "four workers: {:?}", shares(&mut setup.conn).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();
    joined.await.unwrap().unwrap();
}

/// Buckets follow the load: every pending row sits in the buckets of one worker, the other
/// has nothing to do. The busy worker hands the idle one about half of its busy buckets
/// (between batches), the idle one takes them up and keeps them, and order per key holds
/// across the handover, with no row sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_worker_hands_busy_buckets_to_an_idle_one() {
    #[derive(diesel::QueryableByName)]
    struct Lease {
        #[diesel(sql_type = diesel::sql_types::SmallInt)]
        bucket: i16,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        owner: Option<String>,
    }
    /// (giver, receiver, buckets) of each handover.
    type Handover = (String, String, Vec<i16>);
    #[derive(Clone, Default)]
    struct Handovers(std::sync::Arc<std::sync::Mutex<Vec<Handover>>>);
    impl dionysus::relay::RelayObserver for Handovers {
        fn on_event(&self, event: &dionysus::relay::RelayEvent<'_>) {
            if let dionysus::relay::RelayEvent::BucketsHandedOver { worker, receiver, buckets } = event {
                self.0.lock().unwrap().push(((*worker).to_owned(), (*receiver).to_owned(), buckets.to_vec()));
            }
        }
    }

    let mut setup = setup(kafka_config(), 4, 500).await;
    let prefix = unique_name("w");
    let (busy, idle) = (format!("{prefix}-0"), format!("{prefix}-1"));
    // The first worker holds every bucket: at start it keeps 0..31 and gives back 32..63,
    // which the second takes. The rows are all in 0..31.
    diesel::sql_query("UPDATE dionysus_relay_leases SET owner = $1, lease_until = now() + interval '1 hour'")
        .bind::<diesel::sql_types::Text, _>(&busy)
        .execute(&mut setup.conn)
        .await
        .unwrap();
    setup.insert_rows(1, 60_000, 500).await;
    setup.conn.batch_execute("DELETE FROM dionysus_outbox WHERE ordering_bucket >= 32").await.unwrap();
    let rows = setup.count("true").await;
    let loaded: std::collections::BTreeSet<i16> =
        diesel::sql_query("SELECT DISTINCT ordering_bucket AS bucket, NULL::text AS owner FROM dionysus_outbox")
            .load::<Lease>(&mut setup.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|lease| lease.bucket)
            .collect();
    assert!(loaded.len() >= 2, "the rows fall into several buckets: {loaded:?}");

    let handovers = Handovers::default();
    // A long expiry: only a handover moves a bucket that holds rows.
    let config = setup.config(|p| (p.relay_workers, p.batch_size, p.lock_expiry) = (2, 100, Duration::from_secs(60)));
    let relay = Relay::builder(config)
        .registry(setup.registry)
        .worker_prefix(&prefix)
        .observer(handovers.clone())
        .build()
        .unwrap();
    let (token, running) = spawn_relay(&relay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut taken_up = std::collections::BTreeSet::new();
    while setup.count("published_at IS NULL").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "relay did not finish");
        let leases: Vec<Lease> =
            diesel::sql_query("SELECT bucket, owner FROM dionysus_relay_leases").load(&mut setup.conn).await.unwrap();
        taken_up.extend(
            leases
                .into_iter()
                .filter(|lease| lease.owner.as_deref() == Some(idle.as_str()) && loaded.contains(&lease.bucket))
                .map(|lease| lease.bucket),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();

    let handovers = handovers.0.lock().unwrap().clone();
    let (giver, receiver, buckets) =
        handovers.as_slice().first().cloned().expect("the busy worker handed buckets over");
    assert_eq!((giver.as_str(), receiver.as_str()), (busy.as_str(), idle.as_str()), "{handovers:?}");
    assert!(buckets.iter().all(|bucket| loaded.contains(bucket)), "only busy buckets are handed: {buckets:?}");
    assert!(buckets.len() < loaded.len(), "the giver keeps some: {buckets:?} of {loaded:?}");
    assert!(
        buckets.iter().any(|bucket| taken_up.contains(bucket)),
        "the idle worker took up {buckets:?}: {taken_up:?}"
    );

    let expected = usize::try_from(rows).unwrap();
    let messages = consume(&setup.kafka, &setup.topic, expected).await;
    assert_eq!(messages.len(), expected, "no repeats: the giver had nothing in flight");
    for (account, seqs) in by_account(&messages) {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "account {account} out of order: {seqs:?}");
    }
}

/// P-12: with `DIONYSUS_OUTBOX_ENCRYPTION_KEYS` set, a composed message is stored sealed (its
/// text is not in the row) with the id of the key that sealed it. A relay without that key,
/// or with another secret under its id, publishes nothing and loses nothing: the row fails
/// with a clear error, is retried, and is never parked (a missing key is our fault, not the
/// row's). After a key rotation (new key first, the old one still listed) the relay opens the
/// row and publishes the original message.
#[tokio::test(flavor = "multi_thread")]
async fn sealed_rows_are_unreadable_and_wait_for_their_key() {
    use dionysus::config::EncryptionKeys;
    use dionysus::outbox::Outbox;
    use dionysus::respond::Respond;

    const OLD: &str = "old:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const OTHER_SECRET_SAME_ID: &str = "old:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const NEW: &str = "new:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
    let keys = |text: &str| EncryptionKeys::parse("DIONYSUS_OUTBOX_ENCRYPTION_KEYS", text).unwrap();

    let mut setup = setup(kafka_config(), 1, 3).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'jane@example.com' WHERE id = 2").await.unwrap();
    let item: Item = relay_items::table.find(2).select(Item::as_select()).first(&mut setup.conn).await.unwrap();
    let writer = setup.config(|p| p.outbox_encryption_keys = keys(OLD));
    let items = [item];
    Outbox::new(setup.registry, &writer.producer)
        .respond(&mut setup.conn, &setup.topic, Respond::new().entry("item_updated", &items))
        .await
        .unwrap();

    #[derive(QueryableByName, Debug)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        message: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        encryption_key_id: String,
    }
    let stored: Stored = diesel::sql_query("SELECT message, encryption_key_id FROM dionysus_outbox")
        .get_result(&mut setup.conn)
        .await
        .unwrap();
    assert_eq!(stored.encryption_key_id, "old");
    assert!(!stored.message.contains("jane") && !stored.message.contains("item_updated"), "{}", stored.message);

    #[derive(QueryableByName, Debug)]
    struct Failed {
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_class: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        error_message: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        parked: bool,
    }
    async fn failed(conn: &mut AsyncPgConnection) -> Failed {
        diesel::sql_query(
            "SELECT error_class, error_message, attempts, failed_at IS NOT NULL AS parked FROM dionysus_outbox \
             WHERE published_at IS NULL",
        )
        .get_result::<Failed>(conn)
        .await
        .unwrap()
    }
    for (relay_keys, expected) in [
        ("", "sealed with key `old`, which is not configured (configured: none)"),
        (NEW, "sealed with key `old`, which is not configured (configured: new)"),
        (OTHER_SECRET_SAME_ID, "sealed with key `old` does not open: wrong key for that id, or altered data"),
    ] {
        let relay = setup.relay(setup.config(|p| {
            p.outbox_encryption_keys = keys(relay_keys);
            p.max_attempts = 1;
            p.retry_backoff_base = Duration::from_millis(1);
            p.retry_backoff_cap = Duration::from_millis(1);
        }));
        relay.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        relay.drain().await.unwrap();
        let row = failed(&mut setup.conn).await;
        assert_eq!(row.error_class, "SealError");
        assert!(row.error_message.contains(expected), "{}", row.error_message);
        assert!(row.attempts >= 1 && !row.parked, "retried, never parked past max_attempts: {row:?}");
    }

    let rotated = format!("{NEW},{OLD}");
    let relay = setup.relay(setup.config(|p| p.outbox_encryption_keys = keys(&rotated)));
    run_until(&relay, &mut setup, "published_at IS NULL", Duration::from_secs(30)).await;
    let consumer: StreamConsumer = consumer_config(&setup.kafka, &unique_name("group")).create().unwrap();
    consumer.subscribe(&[setup.topic.as_str()]).unwrap();
    let message =
        tokio::time::timeout(Duration::from_secs(30), consumer.stream().next()).await.unwrap().unwrap().unwrap();
    assert_eq!(message.key(), Some(&b"Item:2"[..]));
    let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"message": [{"event": "item_updated", "model_name": "Item",
            "data": [{"id": 2, "account_id": 2, "name": "jane@example.com", "links": {}}]}]})
    );
}

/// Runs `relay` in the background; cancel the token and await the handle to stop it.
fn spawn_relay(relay: &Relay) -> (CancellationToken, tokio::task::JoinHandle<Result<(), dionysus::relay::RelayError>>) {
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, token) = (relay.clone(), token.clone());
        async move { relay.run(token).await }
    });
    (token, running)
}

/// How long until no row matching `condition` is pending, polled every 5 ms.
async fn time_until_published(setup: &mut Setup, condition: &str, timeout: Duration) -> Duration {
    let started = std::time::Instant::now();
    while setup.count(&format!("published_at IS NULL AND {condition}")).await > 0 {
        assert!(started.elapsed() < timeout, "rows matching {condition} not published within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A running worker resumes reading after the ids it has read, so a row whose transaction
/// took its id early and committed after a long run of later rows was published sits below
/// its cursor: the periodic read from the bottom still publishes it, within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_commit_below_the_cursor_is_published_by_a_running_worker() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    let mut late = setup.db.connection().await;
    late.batch_execute(&format!(
        "BEGIN; INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key) \
         VALUES ('Item', '1', 'seq_0_updated', '{}', '1')",
        setup.topic
    ))
    .await
    .unwrap();
    setup.insert_rows(1, 3000, 10).await;
    let relay = setup.relay(setup.config(|p| p.relay_workers = 1));
    let (token, running) = spawn_relay(&relay);
    time_until_published(&mut setup, "true", Duration::from_secs(60)).await;
    // Caught up for longer than the trail: the worker now reads above the 3000 rows only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.batch_execute("COMMIT").await.unwrap();
    let waited = time_until_published(&mut setup, "event_name = 'seq_0_updated'", Duration::from_secs(10)).await;
    assert!(waited < Duration::from_secs(5), "the late row took {waited:?}");
    token.cancel();
    running.await.unwrap().unwrap();
    let events = consume(&setup.kafka, &setup.topic, 3001).await;
    assert_eq!(events.last().map(|(_, event)| event.as_str()), Some("seq_0_updated"));
}

/// After a batch that published something a worker reads again at once, and an idle worker's
/// pause starts at a few milliseconds: with a longest pause of 10 s, rows written while the
/// relay is idle, and right after a batch, still go in well under a second.
#[tokio::test(flavor = "multi_thread")]
async fn workers_poll_again_at_once_after_work_and_back_off_when_idle() {
    let mut setup = setup(kafka_config(), 1, 10).await;
    let relay = setup.relay(setup.config(|p| {
        p.relay_workers = 1;
        p.idle_sleep = Duration::from_secs(10);
    }));
    let (token, running) = spawn_relay(&relay);
    // Idle for a moment: the pauses have grown, but not to the longest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 1..=5 {
        setup.insert_rows(round, round, 10).await;
        let waited =
            time_until_published(&mut setup, &format!("event_name = 'seq_{round}_updated'"), Duration::from_secs(15))
                .await;
        assert!(waited < Duration::from_secs(2), "row {round} waited {waited:?}");
    }
    token.cancel();
    running.await.unwrap().unwrap();
}

/// With a backlog a worker reads its next batch while the current one's deliveries are
/// awaited. A key that fails in the current batch must not have its later rows sent from the
/// batch read ahead: in strict mode, nothing of the poisoned key goes after its parked row.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_read_ahead_leaves_out_the_keys_the_current_batch_failed() {
    let mut setup = setup(kafka_config(), 2, 100).await;
    setup.conn.batch_execute("UPDATE relay_items SET name = 'poison' WHERE id = 7").await.unwrap();
    // Row 6 is item 7 (account 7), the first row of its key; items 7 and 57 recur every 100 rows.
    setup.insert_rows(6, 6000, 100).await;
    let relay = setup.relay(setup.config(|p| {
        p.relay_workers = 1;
        p.max_attempts = 1;
        p.strict_ordering = true;
    }));
    let (token, running) = spawn_relay(&relay);
    time_until_published(&mut setup, "partition_key <> '7'", Duration::from_secs(60)).await;
    token.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(setup.count("failed_at IS NOT NULL").await, 1, "the poison row was parked");
    assert_eq!(setup.count("partition_key = '7' AND published_at IS NOT NULL").await, 0, "a row overtook it");
}
