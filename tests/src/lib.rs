//! Test support shared by the integration tests and benchmarks: a fresh PostgreSQL database
//! per test (the testing kit's, created from a template, migrated on request, dropped
//! afterwards), the broker started by `scripts/test`, and unique topic names, so tests run in
//! parallel and leave nothing behind.
//!
//! Without the services, helpers panic with a message saying how to start them; tests never
//! skip silently.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::config::KafkaConfig;
use dionysus::telemetry::Report;
use dionysus::testing::TestDatabase;
use rdkafka::config::ClientConfig;

/// A name unique across test binaries running at the same time (the testing kit's).
pub use dionysus::testing::unique_name;

/// The server URL tests use (`DATABASE_URL`, default: local server, user postgres).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test (the testing kit's [`TestDatabase`], copied from a
/// template), dropped with every connection to it when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    _database: TestDatabase,
}

impl TestDb {
    /// A new, empty database.
    pub async fn create() -> TestDb {
        TestDb::build(TestDatabase::builder().server_url(server_url()).migrations(false)).await
    }

    /// A new database with the framework migrations applied.
    pub async fn migrated() -> TestDb {
        TestDb::build(TestDatabase::builder().server_url(server_url())).await
    }

    async fn build(builder: dionysus::testing::TestDatabaseBuilder) -> TestDb {
        let database = builder.create().await.unwrap_or_else(|error| {
            panic!("{}\nRun the tests with scripts/test, which checks PostgreSQL first.", Report(&error))
        });
        TestDb { name: database.name().to_owned(), url: database.url().to_owned(), _database: database }
    }

    pub async fn connection(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url).await.unwrap()
    }

    pub fn pool(&self, size: usize) -> dionysus::db::Pool {
        dionysus::db::pool(&self.url, size).unwrap()
    }
}

/// The broker `scripts/test` started (`DIONYSUS_SEED_BROKER`).
pub fn brokers() -> String {
    std::env::var("DIONYSUS_SEED_BROKER").unwrap_or_else(|_| {
        panic!(
            "DIONYSUS_SEED_BROKER is not set: run the tests with scripts/test, which installs and starts \
             a Kafka-protocol broker, or point DIONYSUS_SEED_BROKER at one (host:port)."
        )
    })
}

/// Kafka settings for tests: the test broker and a unique client id.
pub fn kafka_config() -> KafkaConfig {
    let mut kafka = KafkaConfig::default();
    kafka.brokers = vec![brokers()];
    kafka.client_id = unique_name("dionysus_it");
    kafka
}

/// Consumer settings for tests: fast group joins (the defaults take ~20 s with this broker).
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = dionysus::kafka::consumer_config(kafka, group_id);
    config.set("session.timeout.ms", "6000").set("heartbeat.interval.ms", "500");
    config
}

/// A new topic with a unique name derived from `prefix`.
pub async fn create_topic(kafka: &KafkaConfig, prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    let spec = dionysus::kafka::TopicSpec { name: name.clone(), partitions, replication_factor: 1 };
    dionysus::kafka::create_topics(kafka, &[spec]).await.unwrap();
    name
}

/// The `n` a query selects, e.g. `SELECT count(*) AS n FROM t`.
pub async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql).get_result::<Count>(conn).await.unwrap().n
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broker of its own, for tests that pause or stop it (the shared one must keep running
/// for the tests beside them). Started from the binary `scripts/test` installed
/// (`DIONYSUS_BROKER_BIN`); killed when dropped.
pub struct PrivateBroker {
    child: std::process::Child,
    pub address: String,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let binary = std::env::var("DIONYSUS_BROKER_BIN").unwrap_or_else(|_| {
            panic!("DIONYSUS_BROKER_BIN is not set: run the tests with scripts/test, which installs the broker")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the broker binary starts");
        let address = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(10), || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(&address).await.ok().map(|_| ()) }
        })
        .await;
        PrivateBroker { child, address }
    }

    pub fn kafka_config(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig::default();
        kafka.brokers = vec![self.address.clone()];
        kafka.client_id = unique_name("dionysus_it");
        kafka
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the broker: clients see it unreachable, nothing is lost.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publication's serializer, as [`registry_for`] and its variants take it.
pub type SerializeFn = fn(
    &dyn dionysus::registry::model::Record,
    &dionysus::serialize::Sideloads,
) -> Result<serde_json::Value, dionysus::serialize::SerializeError>;

/// A registry publishing model `T` on `topic` (a name known only at run time, e.g. from
/// [`create_topic`]), partition key from the attribute `partition_key`. Leaked: tests and
/// benchmarks keep it for the process.
pub fn registry_for<T: dionysus::Publishable>(
    topic: &str,
    partitions: i32,
    partition_key: &'static str,
    serialize: SerializeFn,
) -> &'static dionysus::Registry {
    registry_with_delays::<T>(topic, partitions, partition_key, serialize, &[])
}

/// [`registry_for`], the publication also sending delayed copies through the chain `delayed`
/// (`#[publish(..., delayed = [...])]`).
pub fn registry_with_delays<T: dionysus::Publishable>(
    topic: &str,
    partitions: i32,
    partition_key: &'static str,
    serialize: SerializeFn,
    delayed: &[dionysus::delayer::Delay],
) -> &'static dionysus::Registry {
    registry_with::<T>(topic, partitions, partition_key, serialize, delayed, &[])
}

/// [`registry_for`], the publication sideloading `with` into each message
/// (`#[publish(..., with(...))]`).
pub fn registry_with_sideloads<T: dionysus::Publishable>(
    topic: &str,
    partitions: i32,
    partition_key: &'static str,
    serialize: SerializeFn,
    with: &'static [dionysus::registry::model::Dependency],
) -> &'static dionysus::Registry {
    registry_with::<T>(topic, partitions, partition_key, serialize, &[], with)
}

fn registry_with<T: dionysus::Publishable>(
    topic: &str,
    partitions: i32,
    partition_key: &'static str,
    serialize: SerializeFn,
    delayed: &[dionysus::delayer::Delay],
    with: &'static [dionysus::registry::model::Dependency],
) -> &'static dionysus::Registry {
    use dionysus::registry::model::{PartitionKeySource, Publication};
    use dionysus::registry::{Tombstone, TopicDeclaration};
    let name: &'static str = Box::leak(topic.to_owned().into_boxed_str());
    let declaration: &'static TopicDeclaration = Box::leak(Box::new(TopicDeclaration {
        namespace: None,
        name,
        full_name: name,
        partition_key: None,
        partition_key_with: None,
        partitions: Some(partitions.max(1)),
        replication_factor: None,
        genesis_replica: false,
        tombstone: Tombstone::JsonNull,
        format: dionysus::registry::TopicFormat::Json,
        declared_by: "dionysus_tests::registry_for",
        location: file!(),
    }));
    let publication: &'static Publication = Box::leak(Box::new(Publication {
        model: <T as dionysus::registry::model::Model>::entry(),
        topic: name,
        partition_key: PartitionKeySource::Attribute(partition_key),
        with,
        observe: &[],
        serialize,
        schema: None,
        delayed: Vec::leak(delayed.to_vec()),
        location: file!(),
    }));
    Box::leak(Box::new(dionysus::Registry::new([declaration], []).with_publications([publication])))
}

/// A number a benchmark reads from the environment variable `name`, or `default` when it is
/// unset. Stops the benchmark with a message naming the variable when its value is not a
/// number of that kind (a typo must not silently run the default).
pub fn bench_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid {}", std::any::type_name::<T>())),
    }
}

/// How many ordering keys the relay and backlog benchmarks spread their outbox rows over:
/// `DIONYSUS_BENCH_KEYS`, or 50. Many keys (thousands, as partition keys like account ids
/// give) make the statistics of a backlog look like production's.
pub fn bench_keys() -> i64 {
    let keys = bench_number("DIONYSUS_BENCH_KEYS", 50_i64);
    assert!(keys > 0, "DIONYSUS_BENCH_KEYS must be at least 1, not {keys}");
    keys
}

/// Prints how fast this machine is at the two kinds of work the benchmarks measure, so that
/// figures of runs on different days (or machines) can be compared: the database's CPU
/// (PostgreSQL sums 10 million integers) and this process's (200,000 round trips of an
/// event-sized JSON document through `serde_json` values). Neither is a goal; a machine
/// twice as slow here gives the CPU-bound runs about half the rate, while baselines that
/// wait on round trips slow down less.
#[allow(clippy::print_stdout, reason = "a line of the benchmarks' output")]
pub async fn print_machine_speed() {
    let mut conn = AsyncPgConnection::establish(&server_url()).await.unwrap();
    let started = std::time::Instant::now();
    diesel::sql_query("SELECT sum(i) FROM generate_series(1, 10000000) AS i").execute(&mut conn).await.unwrap();
    let database = started.elapsed();
    let document = serde_json::json!({
        "message": [{"event": "item_updated", "model_name": "Item", "data": [{
            "id": 4711, "account_id": 17, "name": "Villa 4711 <by the sea>", "daily_price": 350,
            "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-02T03:04:05.678Z",
            "links": {"account": 17}, "tags": ["pool", "garden", "view"], "rating": 4.5
        }]}]
    });
    let size = document.to_string().len();
    let started = std::time::Instant::now();
    for _ in 0..200_000 {
        let text = serde_json::to_string(std::hint::black_box(&document)).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        std::hint::black_box(parsed);
    }
    let process = started.elapsed();
    println!(
        "machine: PostgreSQL sums 10M integers in {:.2} s; this process round-trips 200k JSON documents \
         ({size} bytes each) in {:.2} s (for comparing runs, not goals)",
        database.as_secs_f64(),
        process.as_secs_f64()
    );
}
