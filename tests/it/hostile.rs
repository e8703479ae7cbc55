//! Hostile input through the real consumer on the broker: every case of [`cases`] is followed
//! by a good message on the same partition, and the good ones must be applied, the stored
//! offset must move past both, each bad one must be dead-lettered exactly once with its
//! reason. Also: a batch failing for our own reason (the database refuses every write) keeps
//! its partition waiting, unhealthy and with nothing dead-lettered or committed; the
//! consumer process stops on SIGTERM within 10 s while it retries; `/health` names a
//! partition that stopped advancing.
//!
//! To add a case, add a [`Case`] to [`cases`].

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use dionysus::consumer::{Consumer, DeadLetterHeaders, UnknownModel};
use dionysus_tests::{create_topic, kafka_config, unique_name, TestDb};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::consumer_models::{replica_db, replicas, row, t};

/// One hostile message and what must become of it.
struct Case {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// The dead letter's reason, or `None` when the message is valid and applied.
    dead_letter: Option<&'static str>,
    /// For a valid message: the rental it writes.
    writes: Option<i64>,
}

fn rental_value(record: Value) -> Vec<u8> {
    json!({"message": [{"event": "rental_updated", "model_name": "Rental", "data": [record]}]}).to_string().into_bytes()
}

/// A rental update whose `id` is written as `id` (raw JSON text).
fn with_raw_id(id: &str) -> Vec<u8> {
    format!(
        r#"{{"message":[{{"event":"rental_updated","model_name":"Rental","data":[{{"id":{id},"name":"x","updated_at":"{}"}}]}}]}}"#,
        t(1)
    )
    .into_bytes()
}

fn valid(name: &'static str, value: Vec<u8>, writes: i64) -> Case {
    Case { name, key: Some(name.as_bytes().to_vec()), value: Some(value), dead_letter: None, writes: Some(writes) }
}

/// One `rental_updated` event with these records.
fn rentals(records: impl Iterator<Item = Value>) -> Vec<u8> {
    let data: Vec<Value> = records.collect();
    json!({"message": [{"event": "rental_updated", "model_name": "Rental", "data": data}]}).to_string().into_bytes()
}

/// Rental `id` with `count` to-one links, each with its sideloaded booking.
fn link_names(id: i64, count: usize) -> Vec<u8> {
    let mut record = serde_json::Map::new();
    let mut links = serde_json::Map::new();
    record.insert("id".to_owned(), json!(id));
    record.insert("updated_at".to_owned(), json!(t(1)));
    for n in 0..count {
        links.insert(format!("l{n}"), json!({"id": 50_000 + n, "type": "Booking"}));
        record.insert(format!("l{n}"), json!({"id": 50_000 + n, "start_at": n}));
    }
    record.insert("links".to_owned(), Value::Object(links));
    rentals(std::iter::once(Value::Object(record)))
}

fn bad(name: &'static str, value: Vec<u8>, reason: &'static str) -> Case {
    Case { name, key: Some(name.as_bytes().to_vec()), value: Some(value), dead_letter: Some(reason), writes: None }
}

/// The hostile messages, in the order they are sent.
fn cases() -> Vec<Case> {
    let mut deep = Vec::with_capacity(200_000);
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    let mut invalid_utf8 =
        br#"{"message":[{"event":"rental_updated","model_name":"Rental","data":[{"id":5,"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#""}]}]}"#);
    vec![
        bad("malformed_json", b"{oops".to_vec(), "malformed_json"),
        // Its dead letter is over librdkafka's default 1,000,000 bytes.
        bad("two_megabytes_of_text", vec![b'x'; 2 << 20], "malformed_json"),
        bad("over_the_limit", vec![b'y'; (10 << 20) + 1], "oversized"),
        // Larger than the dead-letter producer takes: sent as prefix, length and digest.
        bad("far_over_the_limit", vec![b'z'; 12 << 20], "oversized"),
        // PostgreSQL repeats "connection" in its error: still the message's fault.
        bad(
            "connection_in_a_bigint_array",
            rental_value(json!({"id": 3, "links": {"bookings": ["connection"]}, "updated_at": t(1)})),
            "database_rejected",
        ),
        bad(
            "deadlock_in_a_bigint_array",
            rental_value(json!({"id": 4, "links": {"bookings": ["deadlock"]}, "updated_at": t(1)})),
            "database_rejected",
        ),
        bad("deep_nesting", deep, "malformed_json"),
        bad("invalid_utf8", invalid_utf8, "malformed_json"),
        bad("not_an_envelope", br#""just a string""#.to_vec(), "invalid_envelope"),
        bad("negative_zero_id", with_raw_id("-0"), "invalid_id"),
        bad("fractional_id", with_raw_id("80.0"), "invalid_id"),
        // Not the same number as 80.0: one batch keeps only the later of two (C-18).
        bad("exponent_id", with_raw_id("9e1"), "invalid_id"),
        bad(
            "far_future_updated_at",
            rental_value(json!({"id": 6, "name": "future", "updated_at": "9999-01-01T00:00:00Z"})),
            "timestamp_in_future",
        ),
        bad("object_for_text", rental_value(json!({"id": 7, "name": {"a": 1}, "updated_at": t(1)})), "wrong_type"),
        bad(
            "unknown_model",
            json!({"message": [{"event": "ghost_created", "model_name": "Ghost", "data": [{"id": 1}]}]})
                .to_string()
                .into_bytes(),
            "unknown_model",
        ),
        // Bounded work: 100,000 copies of one id (folded in one pass), 50,000 link names each
        // with its sideloaded record (indexed once), one record over the record cap.
        valid(
            "copies_of_one_id",
            rentals((0..100_000).map(|n| json!({"id": 9, "name": format!("copy {n}"), "updated_at": t(1)}))),
            9,
        ),
        valid("many_link_names", link_names(10, 50_000), 10),
        bad("too_many_records", rentals((0..100_001).map(|n| json!({"id": 100_000 + n}))), "too_many_records"),
        // With the processing mutex on, a key with NUL names a lock by its digest.
        Case {
            name: "nul_in_the_key",
            key: Some(b"Rental:\0:8".to_vec()),
            value: Some(rental_value(json!({"id": 8, "name": "nul key", "updated_at": t(1)}))),
            dead_letter: None,
            writes: Some(8),
        },
    ]
}

/// A good rental, `2000 + n`.
fn good(n: usize) -> Vec<u8> {
    rental_value(json!({"id": 2000 + n as i64, "name": format!("good {n}"), "updated_at": t(1)}))
}

/// A producer for messages up to 20 MB.
pub(crate) fn big_producer(kafka: &dionysus::config::KafkaConfig) -> FutureProducer {
    dionysus::kafka::producer_config(kafka).set("message.max.bytes", "20000000").create().unwrap()
}

pub(crate) async fn send(producer: &FutureProducer, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(0);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer.send(record, Duration::from_secs(30)).await.map_err(|(error, _)| error).unwrap();
}

fn config(db: &TestDb, kafka: &dionysus::config::KafkaConfig, dead_letters: &str) -> dionysus::Config {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.consumer.dead_letter_topic = dead_letters.to_owned();
    config.consumer.batch_size = 50;
    config
}

fn builder(config: dionysus::Config, db: &TestDb, topic: &str) -> dionysus::consumer::ConsumerBuilder {
    Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(replicas())
        .topic(topic)
        .handlers(false)
        .unknown_model(UnknownModel::DeadLetter)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
}

pub(crate) async fn stored(conn: &mut diesel_async::AsyncPgConnection, topic: &str) -> i64 {
    dionysus_tests::count(
        conn,
        &format!(
            "SELECT COALESCE(max(next_offset), -1)::bigint AS n FROM dionysus_consumer_offsets WHERE topic = '{topic}'"
        ),
    )
    .await
}

/// A dead letter as read back: reason, source offset, value, header map.
pub(crate) struct Read {
    pub(crate) reason: String,
    pub(crate) offset: i64,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: BTreeMap<String, String>,
}

/// Reads the dead-letter topic for `quiet` after the last message (and at most `timeout`).
pub(crate) async fn read_dead_letters(
    kafka: &dionysus::config::KafkaConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Read> {
    let reader: StreamConsumer = dionysus_tests::consumer_config(kafka, &unique_name("hostile_dlq_reader"))
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let mut stream = reader.stream();
    let mut read = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        // Once all expected arrived, wait a little longer for duplicates.
        let wait = if read.len() >= expected {
            Duration::from_secs(3)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let Ok(Some(Ok(message))) = tokio::time::timeout(wait, stream.next()).await else { break };
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        read.push(Read {
            reason: headers.get(DeadLetterHeaders::REASON).cloned().unwrap_or_default(),
            offset: headers.get(DeadLetterHeaders::OFFSET).and_then(|o| o.parse().ok()).unwrap_or(-1),
            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        });
    }
    read
}

/// Every hostile case, each followed by a good message on the same partition, through the
/// consumer on the broker (one batch holds many of them, so a database rejection splits a
/// batch that already produced dead letters).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_messages_are_dead_lettered_once_and_the_partition_moves_on() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile", 1).await;
    let dead_letters = create_topic(&kafka, "hostile_dead_letters", 1).await;
    let producer = big_producer(&kafka);
    let cases = cases();
    for (n, case) in cases.iter().enumerate() {
        send(&producer, &topic, case.key.as_deref(), case.value.as_deref()).await;
        send(&producer, &topic, Some(format!("Rental:{}", 2000 + n).as_bytes()), Some(&good(n))).await;
    }
    let consumer = builder(config(&db, &kafka, &dead_letters), &db, &topic).processing_mutex(true).build().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let mut conn = db.connection().await;
    let total = 2 * cases.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored(&mut conn, &topic).await < total {
        assert!(Instant::now() < deadline, "stored offset {} of {total} after 120 s", stored(&mut conn, &topic).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    for (n, case) in cases.iter().enumerate() {
        let good = row(&mut conn, "rentals", 2000 + n as i64).await;
        assert_eq!(good.map(|r| r["name"].clone()), Some(json!(format!("good {n}"))), "after {}", case.name);
        if let Some(id) = case.writes {
            assert!(row(&mut conn, "rentals", id).await.is_some(), "{} is applied", case.name);
        }
    }
    let expected: Vec<(i64, &str)> = cases
        .iter()
        .enumerate()
        .filter_map(|(n, case)| case.dead_letter.map(|reason| (2 * n as i64, reason)))
        .collect();
    let read = read_dead_letters(&kafka, &dead_letters, expected.len(), Duration::from_secs(60)).await;
    let mut got: Vec<(i64, &str)> = read.iter().map(|r| (r.offset, r.reason.as_str())).collect();
    got.sort();
    assert_eq!(got, expected, "each bad message dead-lettered exactly once, with its reason");
    for (dead, case) in read.iter().filter_map(|r| Some((r, cases.get(usize::try_from(r.offset / 2).ok()?)?))) {
        let original = case.value.as_deref().unwrap_or_default();
        eprintln!(
            "{}: {} bytes dead-lettered as {} bytes ({})",
            case.name,
            original.len(),
            dead.value.len(),
            dead.reason
        );
        if case.name == "far_over_the_limit" {
            assert!(dead.headers.contains_key(DeadLetterHeaders::ORIGINAL_LENGTH), "cut");
        }
        match dead.headers.get(DeadLetterHeaders::ORIGINAL_LENGTH) {
            None => assert_eq!(dead.value, original, "{} is dead-lettered whole", case.name),
            Some(length) => {
                assert_eq!(length, &original.len().to_string(), "{}", case.name);
                assert!(original.starts_with(&dead.value) && dead.value.len() <= 64 * 1024, "{}", case.name);
                assert_eq!(dead.headers.get(DeadLetterHeaders::ORIGINAL_SHA256).map(String::len), Some(64));
            }
        }
    }
}

/// Every write to `rentals` fails with a serialization failure (SQLSTATE 40001): our side's
/// fault, never the message's.
const REFUSE_WRITES: &str = "
    CREATE FUNCTION refuse_write() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'could not serialize access (test)' USING ERRCODE = '40001'; END $$ LANGUAGE plpgsql;
    CREATE TRIGGER refuse_write BEFORE INSERT OR UPDATE ON rentals FOR EACH ROW EXECUTE FUNCTION refuse_write();
";

/// A batch that keeps failing for a reason that is not its messages': after the bounded
/// attempts the partition waits, `/health` names it, nothing is dead-lettered or committed;
/// once the database accepts writes again the partition moves on; a shutdown mid-retry ends
/// the consumer at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_failing_for_our_reason_waits_unhealthy_and_dead_letters_nothing() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    conn.batch_execute(REFUSE_WRITES).await.unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile_wait", 1).await;
    let dead_letters = create_topic(&kafka, "hostile_wait_dead_letters", 1).await;
    let producer = big_producer(&kafka);
    send(&producer, &topic, Some(b"Rental:1"), Some(&good(1))).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = config(&db, &kafka, &dead_letters);
    config.consumer.retry_attempts = 2;
    let consumer = builder(config, &db, &topic).serve(address).build().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let health = dionysus_tests::eventually(Duration::from_secs(60), || async move {
        let response = http_get(address, "/health").await?;
        (response.starts_with("HTTP/1.1 503") && response.contains("stalled")).then_some(response)
    })
    .await;
    assert!(health.contains(&format!("partition {topic}/0 stalled")), "{health}");
    assert!(health.contains("keeps failing"), "{health}");
    assert_eq!(stored(&mut conn, &topic).await, -1, "nothing committed");
    // The database accepts writes again: the same message goes through, health recovers.
    conn.batch_execute("DROP TRIGGER refuse_write ON rentals").await.unwrap();
    dionysus_tests::eventually(Duration::from_secs(60), || {
        let url = db.url.clone();
        async move {
            let mut conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            row(&mut conn, "rentals", 2001).await
        }
    })
    .await;
    let healthy = dionysus_tests::eventually(Duration::from_secs(10), || async move {
        let response = http_get(address, "/health").await?;
        response.starts_with("HTTP/1.1 200").then_some(response)
    })
    .await;
    assert!(healthy.ends_with("ok\n"), "{healthy}");
    // Refused again, then asked to stop while it retries: it stops at once.
    conn.batch_execute(
        "CREATE TRIGGER refuse_write BEFORE INSERT OR UPDATE ON rentals FOR EACH ROW EXECUTE FUNCTION refuse_write()",
    )
    .await
    .unwrap();
    send(&producer, &topic, Some(b"Rental:2"), Some(&good(2))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stopped within 10 s").unwrap().unwrap();
    eprintln!("stopped {:?} after the shutdown request, mid-retry", asked.elapsed());
    assert_eq!(stored(&mut conn, &topic).await, 1, "the refused message is not committed");
    assert!(
        read_dead_letters(&kafka, &dead_letters, 0, Duration::from_secs(1)).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// `/health` (and `Consumer::check_health`) names a partition with messages waiting that has
/// not committed for the stall timeout (here: its batch holds a lock the test keeps).
#[tokio::test(flavor = "multi_thread")]
async fn health_names_a_partition_that_stopped_advancing() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile_stall", 1).await;
    let producer = big_producer(&kafka);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = config(&db, &kafka, "unused_dead_letters");
    config.consumer.stall_timeout = Duration::from_secs(2);
    let consumer = builder(config, &db, &topic).serve(address).build().unwrap();
    let idle = consumer.check_health().unwrap_err();
    assert!(idle.reason().starts_with("no broker poll"), "not running yet: {idle}");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    send(&producer, &topic, Some(b"Rental:1"), Some(&good(1))).await;
    let mut conn = db.connection().await;
    dionysus_tests::eventually(Duration::from_secs(60), || async { (row_exists(&db, 2001).await).then_some(()) }).await;
    // Hold the partition's offset row: the next batch waits on it.
    conn.batch_execute(&format!("BEGIN; SELECT * FROM dionysus_consumer_offsets WHERE topic = '{topic}' FOR UPDATE"))
        .await
        .unwrap();
    send(&producer, &topic, Some(b"Rental:2"), Some(&good(2))).await;
    let sent = Instant::now();
    let health = dionysus_tests::eventually(Duration::from_secs(30), || async move {
        let response = http_get(address, "/health").await?;
        (response.starts_with("HTTP/1.1 503") && response.contains("has not advanced")).then_some(response)
    })
    .await;
    eprintln!("stall reported {:?} after the message arrived (bound 2 s)", sent.elapsed());
    assert!(health.contains(&format!("partition {topic}/0 has not advanced")), "{health}");
    let unhealthy = consumer.check_health().unwrap_err();
    let reason = format!("partition {topic}/0 has not advanced for ");
    assert!(unhealthy.reason().starts_with(&reason), "the handle says what /health says: {unhealthy}");
    conn.batch_execute("ROLLBACK").await.unwrap();
    dionysus_tests::eventually(Duration::from_secs(30), || async move {
        let response = http_get(address, "/health").await?;
        response.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert_eq!(consumer.check_health(), Ok(()));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A dead letter that cannot be sent (a topic name no broker accepts) stalls its partition
/// loudly: `/health` names the partition and the dead-letter topic, nothing is committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_sent_stalls_the_partition_loudly() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile_unsendable", 1).await;
    let producer = big_producer(&kafka);
    send(&producer, &topic, Some(b"bad"), Some(b"{oops")).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = config(&db, &kafka, &"x".repeat(300));
    config.consumer.retry_attempts = 1;
    let consumer = builder(config, &db, &topic).serve(address).build().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let health = dionysus_tests::eventually(Duration::from_secs(60), || async move {
        let response = http_get(address, "/health").await?;
        (response.starts_with("HTTP/1.1 503") && response.contains("stalled")).then_some(response)
    })
    .await;
    assert!(health.contains(&format!("partition {topic}/0 stalled")), "{health}");
    assert!(health.contains("dead-letter topic"), "{health}");
    let mut conn = db.connection().await;
    assert_eq!(stored(&mut conn, &topic).await, -1, "nothing committed");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stopped within 10 s").unwrap().unwrap();
}

async fn row_exists(db: &TestDb, id: i64) -> bool {
    let mut conn = db.connection().await;
    row(&mut conn, "rentals", id).await.is_some()
}

pub(crate) async fn http_get(address: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await.ok()?.ok()?;
    Some(response)
}

/// The `consume` command as its own process, stuck retrying a batch the database refuses:
/// SIGTERM ends it within 10 s, with a clean exit.
#[tokio::test(flavor = "multi_thread")]
async fn consume_process_stops_on_sigterm_while_retrying() {
    let db = TestDb::migrated().await;
    // The faults app replicates wallets; every batch stores its offset, which fails with a
    // serialization failure (SQLSTATE 40001) here.
    db.connection()
        .await
        .batch_execute(
            "CREATE TABLE replica_wallets (synced_id BIGINT PRIMARY KEY, synced_created_at TIMESTAMPTZ,
                 synced_updated_at TIMESTAMPTZ, seq BIGINT, balance BIGINT);
             CREATE TABLE replica_ledger_entries (synced_id BIGINT PRIMARY KEY, synced_created_at TIMESTAMPTZ,
                 synced_updated_at TIMESTAMPTZ, wallet_id BIGINT, seq BIGINT, amount BIGINT);
             CREATE FUNCTION refuse_write() RETURNS trigger AS $$
             BEGIN RAISE EXCEPTION 'could not serialize access (test)' USING ERRCODE = '40001'; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER refuse_write BEFORE INSERT OR UPDATE ON dionysus_consumer_offsets
                 FOR EACH ROW EXECUTE FUNCTION refuse_write();",
        )
        .await
        .unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile_sigterm", 1).await;
    let producer = big_producer(&kafka);
    let wallet = json!({"message": [{"event": "wallet_updated", "model_name": "Wallet",
        "data": [{"id": 1, "seq": 1, "balance": 0, "updated_at": t(1)}]}]});
    send(&producer, &topic, Some(b"1"), Some(wallet.to_string().as_bytes())).await;
    let log = std::env::temp_dir().join(unique_name("hostile-sigterm")).with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_faults-app"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DIONYSUS_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args([
            "--database-url",
            &db.url,
            "--brokers",
            &kafka.bootstrap_servers(),
            "--kafka-property",
            "session.timeout.ms=6000",
            "--kafka-property",
            "heartbeat.interval.ms=500",
            "consume",
            "--topic",
            &topic,
            "--group",
            &unique_name("hostile_sigterm_group"),
            "--dead-letter-topic",
            &unique_name("hostile_sigterm_dead_letters"),
        ])
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .env("DIONYSUS_CONSUMER_RETRY_ATTEMPTS", "3")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Past the bounded attempts: the partition waits, retrying slowly.
        if text.contains("partition stalled") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "consume exited early:\n{text}");
        assert!(Instant::now() < deadline, "consume never retried:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 10 s after SIGTERM:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("consume exited {:?} after SIGTERM while retrying ({exit})", signalled.elapsed());
    assert!(exit.success(), "{exit}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let _ = std::fs::remove_file(&log);
}

/// The documented bound on what a message costs the consumer (README, "Bounded work per
/// message"): a process's resident high-water mark rises by at most this many times the
/// size of the message it applies. Measured on the shape that costs most per byte among
/// messages of many records (200,000 distinct small records, 9.9 MB).
const MEMORY_BOUND: f64 = 16.0;

/// A rental record of the large message, as [`a_large_message_stays_within_the_memory_bound`]
/// sends it.
fn small_rental(n: usize) -> String {
    format!(r#"{{"id":{},"name":"Villa {n}","updated_at":"{}"}}"#, 10_000 + n, t(1 + (n % 1000) as i64))
}

/// `VmHWM` of process `pid`, in bytes.
fn high_water_mark(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// One 9.9 MB message of 200,000 small records through the consumer runtime, in a process
/// of its own (this test binary, running only this test as a child): after a small message
/// has warmed it up, applying the large one raises the process's resident high-water mark
/// by at most [`MEMORY_BOUND`] times the message size — Kafka's copy and ours of the payload
/// included.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_message_stays_within_the_memory_bound() {
    const CHILD: &str = "DIONYSUS_TEST_MEMORY_CHILD";
    if let Ok(spec) = std::env::var(CHILD) {
        // The child: consume until killed.
        let [url, topic] = spec.split('\n').collect::<Vec<_>>()[..] else { panic!("bad {CHILD}: {spec}") };
        let mut config = dionysus::Config::default();
        config.database_url = url.to_owned();
        config.kafka = kafka_config();
        config.consumer.max_records_per_message = 1_000_000;
        let pool = dionysus::db::pool(url, 2).unwrap();
        let consumer = Consumer::builder(config)
            .pool(pool)
            .replicas(replicas())
            .topic(topic)
            .handlers(false)
            .kafka_property("session.timeout.ms", "6000")
            .kafka_property("heartbeat.interval.ms", "500")
            .build()
            .unwrap();
        consumer.run(CancellationToken::new()).await.unwrap();
        return;
    }
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "hostile_memory", 1).await;
    let producer = big_producer(&kafka);
    /// Kills the child however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["hostile::a_large_message_stays_within_the_memory_bound", "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, format!("{}\n{topic}", db.url))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = Child(child);
    let pid = child.0.id();
    let mut conn = db.connection().await;
    let measured = async {
        send(&producer, &topic, Some(b"Rental:1"), Some(&good(1))).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored(&mut conn, &topic).await < 1 {
            assert!(Instant::now() < deadline, "the warm-up message was not applied within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = high_water_mark(pid);
        let mut value = String::from(r#"{"message":[{"event":"rental_updated","model_name":"Rental","data":["#);
        let mut records = 0;
        while value.len() < 9_900_000 {
            if records > 0 {
                value.push(',');
            }
            value.push_str(&small_rental(records));
            records += 1;
        }
        value.push_str("]}]}");
        let size = value.len();
        send(&producer, &topic, Some(b"Rental:large"), Some(value.as_bytes())).await;
        drop(value);
        let sent = Instant::now();
        while stored(&mut conn, &topic).await < 2 {
            assert!(sent.elapsed() < Duration::from_secs(120), "the large message was not applied within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = sent.elapsed();
        let rise = high_water_mark(pid).saturating_sub(before);
        (size, records, took, rise)
    }
    .await;
    drop(child);
    let (size, records, took, rise) = measured;
    let ratio = rise as f64 / size as f64;
    eprintln!(
        "{records} records in {:.1} MB applied in {took:?}: the consumer's high-water mark rose by {:.0} MB, \
         {ratio:.1}x the message (bound {MEMORY_BOUND}x)",
        size as f64 / 1e6,
        rise as f64 / 1e6
    );
    let last = row(&mut conn, "rentals", 10_000 + records as i64 - 1).await;
    assert_eq!(last.map(|r| r["name"].clone()), Some(json!(format!("Villa {}", records - 1))), "applied");
    assert!(ratio <= MEMORY_BOUND, "peak {ratio:.1}x the message size, over the bound of {MEMORY_BOUND}x");
}
