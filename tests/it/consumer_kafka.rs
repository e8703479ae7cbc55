//! The consumer against the broker: end to end with dead letters, a crash between the
//! database commit and the Kafka commit, and two members of one group rebalancing
//! mid-stream.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::AfterCommit;
use dionysus::consumer::{Consumer, DeadLetterHeaders, Notification, UnknownModel};
use dionysus::kafka::Producer;
use dionysus_tests::{create_topic, eventually, kafka_config, TestDb};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::consumer_models::*;

const WRITES_LOG: &str = "
    CREATE TABLE rental_writes (n bigserial PRIMARY KEY, synced_id bigint, name text);
    CREATE FUNCTION log_rental_write() RETURNS trigger AS $$
    BEGIN INSERT INTO rental_writes (synced_id, name) VALUES (NEW.synced_id, NEW.name); RETURN NEW; END
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER rental_writes AFTER INSERT OR UPDATE ON rentals FOR EACH ROW EXECUTE FUNCTION log_rental_write();
";

/// The test database and broker, with batches of `batch_size`.
fn config(db: &TestDb, kafka: &dionysus::config::KafkaConfig, batch_size: usize) -> dionysus::Config {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.consumer.batch_size = batch_size;
    config
}

fn builder(
    db: &TestDb,
    kafka: &dionysus::config::KafkaConfig,
    topic: &str,
    dead_letters: &str,
) -> dionysus::consumer::ConsumerBuilder {
    let mut config = config(db, kafka, 50);
    config.consumer.dead_letter_topic = dead_letters.to_owned();
    Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(replicas())
        .topic(topic)
        .handlers(false)
        .unknown_model(UnknownModel::DeadLetter)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
}

async fn send(producer: &Producer, topic: &str, partition: i32, key: Option<&str>, value: Option<&[u8]>) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).partition(partition);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
}

/// Sends `values` to one partition, 500 in flight at a time.
async fn send_many(producer: &Producer, topic: &str, partition: i32, values: &[Vec<u8>]) {
    for chunk in values.chunks(500) {
        let sends = chunk.iter().map(|value| {
            producer
                .send(FutureRecord::<str, [u8]>::to(topic).partition(partition).payload(value), Duration::from_secs(30))
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(error, _)| error).unwrap();
        }
    }
}

/// Sends `per_partition` `rental_created` messages to each of the first `partitions`
/// partitions; partition `p` gets the rentals `p * 100_000 + 1` onwards.
async fn create_rentals(kafka: &dionysus::config::KafkaConfig, topic: &str, partitions: i32, per_partition: i64) {
    let producer = dionysus::kafka::producer(kafka).unwrap();
    for partition in 0..partitions {
        let values: Vec<Vec<u8>> = (1..=per_partition)
            .map(|n| rental("rental_created", i64::from(partition) * 100_000 + n, "created", 1))
            .collect();
        send_many(&producer, topic, partition, &values).await;
    }
}

/// Makes every write to `rentals` take `seconds` longer (a trigger sleeps).
async fn slow_writes(conn: &mut AsyncPgConnection, seconds: f64) {
    conn.batch_execute(&format!(
        "CREATE FUNCTION slow_write() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER slow_write BEFORE INSERT OR UPDATE ON rentals FOR EACH ROW EXECUTE FUNCTION slow_write();"
    ))
    .await
    .unwrap();
}

fn rental(event_name: &str, id: i64, name: &str, at: i64) -> Vec<u8> {
    json!({"message": [{"event": event_name, "model_name": "Rental", "data": [{"id": id, "name": name, "updated_at": t(at)}]}]})
        .to_string()
        .into_bytes()
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).await.unwrap().n
}

/// Waits until the sum of stored next offsets satisfies `done`.
async fn wait_for_stored(conn: &mut AsyncPgConnection, done: impl Fn(i64) -> bool, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let stored = stored_total(conn).await;
        if done(stored) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "stored offsets at {stored} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_total(conn: &mut AsyncPgConnection) -> i64 {
    count(
        conn,
        "SELECT COALESCE(sum(next_offset), 0)::bigint AS n FROM dionysus_consumer_offsets WHERE next_offset >= 0",
    )
    .await
}

/// Create, update, stale update, malformed JSON, unknown model, soft delete, both tombstone
/// encodings and a later create, through the broker: the replica ends right, the two bad
/// messages are in the dead-letter topic with their reason and origin, and the partition
/// kept moving.
#[tokio::test(flavor = "multi_thread")]
async fn consumes_end_to_end_and_dead_letters_bad_input() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_e2e", 1).await;
    let dead_letters = create_topic(&kafka, "dead_letters", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let key = Some("Rental:1");
    send(&producer, &topic, 0, key, Some(&rental("rental_created", 1, "first", 1))).await;
    send(&producer, &topic, 0, key, Some(&rental("rental_updated", 1, "newest", 3))).await;
    send(&producer, &topic, 0, key, Some(&rental("rental_updated", 1, "stale", 2))).await;
    send(&producer, &topic, 0, Some("Bad:1"), Some(b"{oops")).await;
    let unknown =
        json!({"message": [{"event": "ghost_created", "model_name": "Ghost", "data": [{"id": 1}]}]}).to_string();
    send(&producer, &topic, 0, Some("Ghost:1"), Some(unknown.as_bytes())).await;
    send(&producer, &topic, 0, Some("Rental:2"), Some(&rental("rental_created", 2, "second", 1))).await;
    let destroyed = json!({"message": [{"event": "rental_destroyed", "model_name": "Rental", "data": [{"id": 2, "canceled_at": t(5)}]}]});
    send(&producer, &topic, 0, Some("Rental:2"), Some(destroyed.to_string().as_bytes())).await;
    send(&producer, &topic, 0, Some("Rental:2"), Some(b"null")).await;
    send(&producer, &topic, 0, Some("Rental:2"), None).await;
    send(&producer, &topic, 0, Some("Rental:3"), Some(&rental("rental_created", 3, "after the bad ones", 1))).await;

    let prometheus = dionysus::telemetry::prometheus().expect("no other recorder in the tests");
    let consumer = builder(&db, &kafka, &topic, &dead_letters).build().unwrap();
    let health = consumer.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let mut conn = db.connection().await;
    wait_for_stored(&mut conn, |stored| stored == 10, Duration::from_secs(60)).await;
    assert!(health.is_alive(Duration::from_secs(5)));
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "newest");
    let second = row(&mut conn, "rentals", 2).await.unwrap();
    assert_eq!(instant(&second["synced_canceled_at"]), at(5), "soft-deleted; tombstones change nothing");
    assert_eq!(row(&mut conn, "rentals", 3).await.unwrap()["name"], "after the bad ones");
    let metrics = prometheus.render();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(name) && line.contains(&format!("topic=\"{topic}\"")))
            .map(str::to_owned)
    };
    assert!(line("dionysus_consumer_messages_total{").is_some_and(|l| l.ends_with(" 10")), "{metrics}");
    assert!(line("dionysus_consumer_dead_letters_total{").is_some_and(|l| l.ends_with(" 2")), "{metrics}");
    assert!(line("dionysus_consumer_batch_seconds").is_some(), "{metrics}");

    let reader: StreamConsumer =
        dionysus_tests::consumer_config(&kafka, &dionysus_tests::unique_name("dlq_reader")).create().unwrap();
    reader.subscribe(&[&dead_letters]).unwrap();
    let mut stream = reader.stream();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default()
        };
        assert_eq!(header(DeadLetterHeaders::TOPIC), topic);
        assert_eq!(header(DeadLetterHeaders::PARTITION), "0");
        seen.push((
            header(DeadLetterHeaders::REASON),
            header(DeadLetterHeaders::OFFSET),
            message.payload().map(<[u8]>::to_vec),
        ));
    }
    assert_eq!(seen[0], ("malformed_json".to_owned(), "3".to_owned(), Some(b"{oops".to_vec())));
    assert_eq!(seen[1], ("unknown_model".to_owned(), "4".to_owned(), Some(unknown.into_bytes())));
}

/// A crash after the database commit and before the Kafka commit: the next member starts
/// from the offsets stored with the rows, and every change is written exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn crash_between_db_commit_and_kafka_commit_applies_each_change_once() {
    let db = replica_db().await;
    db.connection().await.batch_execute(WRITES_LOG).await.unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_crash", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    for id in 1..=10 {
        send(&producer, &topic, 0, None, Some(&rental("rental_created", id, "created", 1))).await;
    }
    for id in 1..=10 {
        send(&producer, &topic, 0, None, Some(&rental("rental_updated", id, "updated", 2))).await;
    }
    let events = Arc::new(AtomicUsize::new(0));
    let halted = Arc::new(AtomicBool::new(false));
    let first = {
        let (halted, events) = (halted.clone(), events.clone());
        builder(&db, &kafka, &topic, "unused_dead_letters")
            .config(config(&db, &kafka, 4))
            .subscribe(move |n| {
                if let Notification::Event(_) = n {
                    events.fetch_add(1, Ordering::SeqCst);
                }
            })
            .after_db_commit(move |_, _, _| {
                halted.store(true, Ordering::SeqCst);
                AfterCommit::Halt
            })
            .build()
            .unwrap()
    };
    let task = tokio::spawn(async move { first.run(CancellationToken::new()).await });
    eventually(Duration::from_secs(60), || {
        let halted = halted.clone();
        async move { AtomicBool::load(&halted, Ordering::SeqCst).then_some(()) }
    })
    .await;
    task.abort();
    let _ = task.await;
    let mut conn = db.connection().await;
    let stored = stored_total(&mut conn).await;
    assert!(stored > 0, "the first batch was committed to the database");

    let events_after = Arc::new(AtomicUsize::new(0));
    let second = {
        let events_after = events_after.clone();
        builder(&db, &kafka, &topic, "unused_dead_letters")
            .config(config(&db, &kafka, 4))
            .subscribe(move |n| {
                if let Notification::Event(_) = n {
                    events_after.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { second.run(shutdown).await }
    });
    wait_for_stored(&mut conn, |stored| stored == 20, Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM rental_writes").await, 20, "each change written once");
    assert_eq!(AtomicUsize::load(&events, Ordering::SeqCst), 0, "the crashed member told nobody");
    assert_eq!(
        AtomicUsize::load(&events_after, Ordering::SeqCst) as i64,
        20 - stored,
        "the restarted member processed exactly what was not committed"
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM rentals WHERE name = 'updated'").await, 10);
}

/// Two members of one group, the second joining mid-stream: the replica converges to the
/// source (checksums equal) and no change is written twice.
#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_rebalancing_converge_to_the_source() {
    rebalancing_converges("replica_rebalance", None).await;
}

/// The same with cooperative rebalancing (`partition.assignment.strategy=cooperative-sticky`),
/// where a rebalance names only the partitions that move and the member keeps the others:
/// librdkafka refuses a whole assignment then, so a member that made one never consumed.
#[tokio::test(flavor = "multi_thread")]
async fn two_cooperative_consumers_rebalancing_converge_to_the_source() {
    rebalancing_converges("replica_rebalance_cooperative", Some("cooperative-sticky")).await;
}

/// Two members on a topic of four partitions named after `topic`, the second joining
/// mid-stream, with the partition assignment `strategy` (librdkafka's default when `None`).
async fn rebalancing_converges(topic: &str, strategy: Option<&str>) {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    conn.batch_execute(WRITES_LOG).await.unwrap();
    conn.batch_execute(
        "CREATE TABLE source_rentals (synced_id bigint PRIMARY KEY, name text, synced_updated_at timestamptz)",
    )
    .await
    .unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, topic, 4).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let (ids, versions) = (60i64, 4i64);
    let produce = |from: i64, to: i64| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            for version in from..to {
                for id in 1..=ids {
                    let event_name = if version == 0 { "rental_created" } else { "rental_updated" };
                    let value = rental(event_name, id, &format!("v{version}-{id}"), version * 10 + 1);
                    let partition = i32::try_from(id % 4).unwrap();
                    send(&producer, &topic, partition, Some(&format!("Rental:{id}")), Some(&value)).await;
                }
            }
        }
    };
    produce(0, 2).await;
    for id in 1..=ids {
        let sql = format!(
            "INSERT INTO source_rentals VALUES ({id}, 'v{}-{id}', '{}')",
            versions - 1,
            t((versions - 1) * 10 + 1)
        );
        conn.batch_execute(&sql).await.unwrap();
    }
    let member = |name: &str| {
        let mut config = config(&db, &kafka, 20);
        // Every message is a change, so the write log can prove exactly-once.
        config.consumer.remove_duplicates = false;
        let mut builder = builder(&db, &kafka, &topic, "unused_dead_letters")
            .config(config)
            .kafka_property("client.id", name.to_owned());
        if let Some(strategy) = strategy {
            builder = builder.kafka_property("partition.assignment.strategy", strategy);
        }
        let consumer = builder.build().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { consumer.run(shutdown).await }
        });
        (handle, shutdown)
    };
    let (first, stop_first) = member("member_a");
    wait_for_stored(&mut conn, |stored| stored > 0, Duration::from_secs(60)).await;
    let (second, stop_second) = member("member_b");
    produce(2, versions).await;
    let total = ids * versions;
    wait_for_stored(&mut conn, |stored| stored == total, Duration::from_secs(90)).await;
    stop_first.cancel();
    stop_second.cancel();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();

    let checksum = |table: &str| {
        format!(
            "SELECT ('x' || substr(md5(string_agg(synced_id || ':' || name || ':' || extract(epoch FROM synced_updated_at), ',' ORDER BY synced_id)), 1, 15))::bit(60)::bigint AS n FROM {table}"
        )
    };
    let source = count(&mut conn, &checksum("source_rentals")).await;
    let replica = count(&mut conn, &checksum("rentals")).await;
    assert_eq!(source, replica, "replica checksum equals the source's");
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM rental_writes").await, total, "each change written once");
}

/// The broker learns the offsets stored with the replica rows without a commit request per
/// batch: each batch stores its next offset with librdkafka, which commits the latest ones
/// about once a second. Small batches, so there are many more batches than seconds; the
/// group's offsets on the broker catch up with the database's while the consumer runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_learns_the_offsets_stored_with_the_replica_rows() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_broker_offsets", 2).await;
    let per_partition = 60i64;
    create_rentals(&kafka, &topic, 2, per_partition).await;
    let config = config(&db, &kafka, 3);
    let group = config.kafka.group_id();
    let consumer = builder(&db, &kafka, &topic, "unused_dead_letters").config(config).build().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    wait_for_stored(&mut conn, |stored| stored == 2 * per_partition, Duration::from_secs(60)).await;
    let reader: rdkafka::consumer::BaseConsumer = dionysus::kafka::consumer_config(&kafka, &group).create().unwrap();
    let committed = eventually(Duration::from_secs(10), || {
        let mut wanted = rdkafka::TopicPartitionList::new();
        wanted.add_partition(&topic, 0);
        wanted.add_partition(&topic, 1);
        let offsets: Vec<rdkafka::Offset> = reader
            .committed_offsets(wanted, Duration::from_secs(5))
            .map(|list| list.elements().iter().map(|element| element.offset()).collect())
            .unwrap_or_default();
        let caught_up = offsets == [rdkafka::Offset::Offset(per_partition); 2];
        async move { caught_up.then_some(offsets) }
    })
    .await;
    assert!(!task.is_finished(), "the offsets were committed while the consumer runs: {committed:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Two partitions with a long backlog each, and slow writes (a trigger sleeps 2 ms per row):
/// both partitions make progress together, instead of one partition's run of messages in
/// librdkafka's queue holding up the other until it is done. The busy partition is paused
/// and resumed many times on the way (batches of 10); nothing is lost or applied out of
/// order.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_partition_does_not_hold_up_the_others() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    slow_writes(&mut conn, 0.002).await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_backlog", 2).await;
    let per_partition = 1500i64;
    create_rentals(&kafka, &topic, 2, per_partition).await;
    let commits: Arc<std::sync::Mutex<Vec<(i32, i64)>>> = Arc::default();
    let consumer = {
        let commits = commits.clone();
        builder(&db, &kafka, &topic, "unused_dead_letters")
            .config(config(&db, &kafka, 10))
            .after_db_commit(move |_, partition, next_offset| {
                commits.lock().unwrap().push((partition, next_offset));
                AfterCommit::Continue
            })
            .build()
            .unwrap()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let stored = |partition: i32| {
        format!(
            "SELECT COALESCE(max(next_offset), 0)::bigint AS n FROM dionysus_consumer_offsets WHERE partition = {partition}"
        )
    };
    // When the first partition is halfway, the other one has come a fair way too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut checked_halfway = false;
    loop {
        let (first, second) = (count(&mut conn, &stored(0)).await, count(&mut conn, &stored(1)).await);
        if !checked_halfway && first.max(second) >= per_partition / 2 {
            assert!(
                first.min(second) >= per_partition / 10,
                "one partition at {} of {per_partition} while the other is at {}",
                first.max(second),
                first.min(second)
            );
            checked_halfway = true;
        }
        if first == per_partition && second == per_partition {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stored offsets at {first} and {second}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM rentals").await, 2 * per_partition, "no message lost");
    let commits = commits.lock().unwrap().clone();
    for partition in 0..2 {
        let offsets: Vec<i64> = commits.iter().filter(|(p, _)| *p == partition).map(|(_, offset)| *offset).collect();
        assert!(
            offsets.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition} committed in order: {offsets:?}"
        );
        assert_eq!(offsets.last(), Some(&per_partition));
    }
}

/// Aborting the task that runs the consumer (or dropping its future) stops its partition
/// workers too, as a crash would: no batch is committed afterwards. The graceful stop is the
/// shutdown token.
#[tokio::test(flavor = "multi_thread")]
async fn aborting_the_consumer_task_stops_its_workers() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    slow_writes(&mut conn, 0.01).await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_abort", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let values: Vec<Vec<u8>> = (1..=400).map(|id| rental("rental_created", id, "created", 1)).collect();
    send_many(&producer, &topic, 0, &values).await;
    let consumer = builder(&db, &kafka, &topic, "unused_dead_letters").config(config(&db, &kafka, 50)).build().unwrap();
    let task = tokio::spawn(async move { consumer.run(CancellationToken::new()).await });
    wait_for_stored(&mut conn, |stored| stored > 0, Duration::from_secs(60)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // A commit already on its way to the database may still land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = stored_total(&mut conn).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = stored_total(&mut conn).await;
    assert!(stopped_at < 400, "the consumer was stopped before the end");
    assert_eq!(later, stopped_at, "no batch committed after the consumer's task was aborted");
}

/// The value of `dionysus_consumer_offset_gaps_total` for `topic` and `outcome` (0 when the
/// counter was never touched).
fn gaps_counted(topic: &str, outcome: &str) -> u64 {
    let metrics = dionysus::telemetry::prometheus().expect("no other recorder in the tests").render();
    metrics
        .lines()
        .filter(|line| line.starts_with("dionysus_consumer_offset_gaps_total{"))
        .filter(|line| line.contains(&format!("topic=\"{topic}\"")) && line.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A transactional producer leaves a control record after every transaction, which the
/// consumer never sees, so the partition's offsets skip all the time. The first skip is read
/// again until it is clearly not in the log, later ones are taken as they come: every rental
/// is applied and the stored offset reaches the end of the partition.
#[tokio::test(flavor = "multi_thread")]
async fn skips_left_by_transactions_are_checked_once_and_then_taken() {
    use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
    // Installed before the consumer counts anything.
    dionysus::telemetry::prometheus().expect("no other recorder in the tests");
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "replica_transactions", 1).await;
    let dead_letters = create_topic(&kafka, "dead_letters", 1).await;
    let consumer = builder(&db, &kafka, &topic, &dead_letters).build().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let high_watermark = tokio::task::spawn_blocking({
        let (kafka, topic) = (kafka.clone(), topic.clone());
        move || {
            let timeout = Duration::from_secs(30);
            let producer: ThreadedProducer<_> = dionysus::kafka::producer_config(&kafka)
                .set("transactional.id", dionysus_tests::unique_name("transactions"))
                .set("message.timeout.ms", "30000")
                .create()
                .unwrap();
            producer.init_transactions(timeout).unwrap();
            for id in 1..=20 {
                producer.begin_transaction().unwrap();
                let value = rental("rental_created", id, "committed", 1);
                producer.send(BaseRecord::<str, [u8]>::to(&topic).partition(0).payload(&value)).unwrap();
                producer.commit_transaction(timeout).unwrap();
            }
            producer.client().fetch_watermarks(&topic, 0, timeout).unwrap().1
        }
    })
    .await
    .unwrap();
    assert_eq!(high_watermark, 40, "each transaction's marker takes an offset");

    let mut conn = db.connection().await;
    wait_for_stored(&mut conn, |stored| stored >= high_watermark - 1, Duration::from_secs(60)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM rentals WHERE name = 'committed'").await, 20);
    assert_eq!(gaps_counted(&topic, "confirmed"), 1, "the first skip is checked, once");
    assert!(gaps_counted(&topic, "trusted") >= 10, "later skips are taken as they come");
    assert_eq!(gaps_counted(&topic, "refilled"), 0);
}
