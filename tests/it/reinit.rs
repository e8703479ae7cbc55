//! Reinit against the broker: a topic of 10,000 events replayed into an emptied replica with
//! replies suppressed, interrupted twice (the library call cancelled, then a plain consumer
//! stopped) and resumed, then handed over to normal consuming; the command line's argument
//! errors.
//!
//! The handler here replies to events of [`TOPIC`], which only this module sends.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::consumer::{AfterReinit, Consumer, ReinitError, ReinitProgress, Until};
use dionysus::{Context, Registry, Reply};
use dionysus_tests::{kafka_config, unique_name, TestDb};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::consumer_models::{replica_db, replicas, t};

const TOPIC: &str = "v8_reinit";
const REPLIES: &str = "v8_reinit_replies";

#[dionysus::topic(name = "v8_reinit", partitions = 2)]
pub struct Reinitialized;

#[dionysus::topic(name = "v8_reinit_replies")]
pub struct ReinitReplies;

#[derive(Debug, Deserialize)]
struct RentalIn {
    synced_id: i64,
}

/// Replies to every event, and says in the reply whether it was replayed (it never should
/// be written then).
#[dionysus::consume(topic = "v8_reinit", event = "rental_reinit_updated", in_transaction)]
async fn confirm(ctx: &mut Context<'_>, rental: RentalIn) -> dionysus::Result<Reply> {
    Ok(Reply::event("rental.confirmed", &json!({"id": rental.synced_id, "replaying": ctx.replaying()})).on(REPLIES))
}

fn rental(id: i64, name: &str, at: i64) -> Vec<u8> {
    json!({"message": [{"event": "rental_reinit_updated", "model_name": "Rental", "data": [{"id": id, "name": name, "updated_at": t(at)}]}]})
        .to_string()
        .into_bytes()
}

fn partition_of(id: i64) -> i32 {
    i32::from(id % 2 == 1)
}

/// Sends one message alone to each partition, of a model no replica or handler takes.
///
/// The test broker's end of a partition (its high watermark) leaves out most messages of the
/// partition's last record batch; a sentinel sent alone is a batch of its own, so the end
/// it reports covers every message sent before it.
async fn send_sentinels(producer: &dionysus::kafka::Producer) {
    let value = json!({"message": [{"event": "sentinel_updated", "model_name": "Sentinel", "data": [{"id": 1, "updated_at": t(1)}]}]}).to_string();
    for partition in 0..2 {
        producer
            .send(
                FutureRecord::<str, str>::to(TOPIC).partition(partition).key("Sentinel:1").payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// The end offset of each partition of [`TOPIC`].
async fn high_watermarks(kafka: &dionysus::config::KafkaConfig) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let client: BaseConsumer = dionysus_tests::consumer_config(kafka, &unique_name("reinit_ends")).create().unwrap();
    tokio::task::spawn_blocking(move || {
        (0..2)
            .map(|partition| (partition, client.fetch_watermarks(TOPIC, partition, Duration::from_secs(10)).unwrap().1))
            .collect()
    })
    .await
    .unwrap()
}

/// Sends `(id, name, at)` events keyed `Rental:<id>`, to partition `id % 2`, 500 in flight.
async fn send(producer: &dionysus::kafka::Producer, events: &[(i64, String, i64)]) {
    for chunk in events.chunks(500) {
        let values: Vec<(String, Vec<u8>, i32)> = chunk
            .iter()
            .map(|(id, name, at)| (format!("Rental:{id}"), rental(*id, name, *at), partition_of(*id)))
            .collect();
        let sends = values.iter().map(|(key, value, partition)| {
            producer.send(
                FutureRecord::<str, [u8]>::to(TOPIC).partition(*partition).key(key.as_str()).payload(value),
                Duration::from_secs(30),
            )
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(error, _)| error).unwrap();
        }
    }
}

fn consumer(db: &TestDb, group: &str) -> Consumer {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka_config();
    config.kafka.group_id = Some(group.to_owned());
    config.consumer.batch_size = 100;
    let registry = Registry::new(
        [<Reinitialized as dionysus::Topic>::DECLARATION, <ReinitReplies as dionysus::Topic>::DECLARATION],
        [],
    );
    Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(replicas())
        .registry(registry)
        .topic(TOPIC)
        .handlers(true)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap()
}

/// The replica's rows of the ids `ids` as `id → name`.
async fn replica(conn: &mut AsyncPgConnection, ids: std::ops::RangeInclusive<i64>) -> BTreeMap<i64, String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        synced_id: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query(format!(
        "SELECT synced_id, name FROM rentals WHERE synced_id BETWEEN {} AND {}",
        ids.start(),
        ids.end()
    ))
    .load::<Row>(conn)
    .await
    .unwrap()
    .into_iter()
    .map(|row| (row.synced_id, row.name))
    .collect()
}

/// Where `replica` differs from `source`, in a few words (an empty text when they are equal).
fn differences(replica: &BTreeMap<i64, String>, source: &BTreeMap<i64, String>) -> String {
    let wrong: Vec<String> = source
        .iter()
        .filter(|(id, name)| replica.get(id) != Some(name))
        .map(|(id, name)| format!("{id}: {:?} instead of {name}", replica.get(id)))
        .collect();
    let extra = replica.keys().filter(|id| !source.contains_key(id)).count();
    if wrong.is_empty() && extra == 0 {
        return String::new();
    }
    format!("{} rows differ (first: {:?}), {extra} rows too many", wrong.len(), &wrong[..wrong.len().min(3)])
}

/// The replies in the outbox as (id, replaying, cause offset).
async fn replies(conn: &mut AsyncPgConnection) -> Vec<(i64, bool, i64)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        message: String,
    }
    diesel::sql_query("SELECT message FROM dionysus_outbox WHERE event_name = 'rental.confirmed' ORDER BY id")
        .load::<Row>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let value: serde_json::Value = serde_json::from_str(&row.message).unwrap();
            let data = &value["message"][0]["data"][0];
            (
                data["id"].as_i64().unwrap(),
                data["replaying"].as_bool().unwrap(),
                value["meta"]["cause"]["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The group's stored next offsets by partition.
async fn stored(conn: &mut AsyncPgConnection, group: &str) -> BTreeMap<i32, i64> {
    dionysus::consumer::stored_offsets(conn, group)
        .await
        .unwrap()
        .into_iter()
        .filter(|((topic, _), _)| topic == TOPIC)
        .map(|((_, partition), offset)| (partition, offset))
        .collect()
}

/// Runs `consumer` until the stored offsets of its group sum to at least `until`, then
/// stops it.
async fn consume_until(consumer: &Consumer, conn: &mut AsyncPgConnection, until: i64) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let position: i64 = stored(conn, consumer.group()).await.values().sum();
        if position >= until {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stored offsets at {position}, waiting for {until}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Cancels a reinit once it replayed a share of its messages.
struct StopAt {
    share: f64,
    total: std::sync::atomic::AtomicU64,
    stop: CancellationToken,
}

impl ReinitProgress for StopAt {
    fn started(&self, total: u64, _done: u64) {
        self.total.store(total, std::sync::atomic::Ordering::SeqCst);
    }

    fn advanced(&self, done: u64) {
        let total = std::sync::atomic::AtomicU64::load(&self.total, std::sync::atomic::Ordering::SeqCst) as f64;
        if done as f64 >= total * self.share {
            self.stop.cancel();
        }
    }
}

/// Runs a reinit until the group is stopped at `share` of its messages.
async fn reinit_stopped_at(consumer: &Consumer, share: f64) -> dionysus::consumer::ReinitReport {
    let stop = CancellationToken::new();
    let progress = StopAt { share, total: Default::default(), stop: stop.clone() };
    consumer.reinit(&Until::Now, AfterReinit::Exit, &progress, stop).await.unwrap()
}

/// Makes every write to `rentals` take a millisecond longer, so a replay takes seconds.
async fn slow_writes(conn: &mut AsyncPgConnection) {
    conn.batch_execute(
        "CREATE FUNCTION slow_write() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER slow_write BEFORE INSERT OR UPDATE ON rentals FOR EACH ROW EXECUTE FUNCTION slow_write();",
    )
    .await
    .unwrap();
}

/// 10,000 events (8,000 rentals, 2,000 of them updated) consumed with replies, the replica
/// and the replies emptied; a reinit stopped at a third, a plain consumer stopped at two
/// thirds, and a second reinit: it resumes (no reset), the replica equals the source, no
/// reply was written for the replayed range, and the stored offsets end at the targets.
/// Events sent afterwards are consumed normally, with replies.
#[tokio::test(flavor = "multi_thread")]
async fn reinit_replays_an_emptied_replica_without_replies_and_resumes_after_interruptions() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let specs = dionysus::kafka::TopicSpec::for_declaration(<Reinitialized as dionysus::Topic>::DECLARATION);
    dionysus::kafka::create_topics(&kafka, &specs).await.unwrap();
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    // Ids of this run (the broker may hold events of earlier runs on the topic).
    let base = chrono::Utc::now().timestamp_micros() / 1000 * 100_000;
    let ids = base + 1..=base + 8_000;
    let mut events: Vec<(i64, String, i64)> = ids.clone().map(|id| (id, format!("n{id}"), 1)).collect();
    events.extend((base + 1..=base + 2_000).map(|id| (id, format!("u{id}"), 2)));
    send(&producer, &events).await;
    let mut source: BTreeMap<i64, String> = BTreeMap::new();
    for (id, name, _) in &events {
        source.insert(*id, name.clone());
    }

    let group = unique_name("reinit");
    let consumer = consumer(&db, &group);
    let mut conn = db.connection().await;
    send_sentinels(&producer).await;
    let all = high_watermarks(&kafka).await;
    consume_until(&consumer, &mut conn, all.values().sum()).await;
    assert_eq!(differences(&replica(&mut conn, ids.clone()).await, &source), "");
    let ours = |replies: &[(i64, bool, i64)]| replies.iter().filter(|(id, _, _)| ids.contains(id)).count();
    assert_eq!(ours(&replies(&mut conn).await), 10_000, "consumed normally, every event replies");

    conn.batch_execute("TRUNCATE rentals; TRUNCATE dionysus_outbox").await.unwrap();
    slow_writes(&mut conn).await;

    // A reinit stopped a third of the way.
    let first = reinit_stopped_at(&consumer, 1.0 / 3.0).await;
    assert!(!first.resumed && !first.completed, "{first:?}");
    let targets: BTreeMap<i32, i64> = first.targets.iter().map(|t| (t.partition, t.target)).collect();
    assert_eq!(targets, all);
    let total = first.total;
    assert!(replies(&mut conn).await.is_empty(), "no reply while replaying");

    // A plain consumer goes on, still replaying: stopped at two thirds.
    let position: i64 = stored(&mut conn, &group).await.values().sum();
    assert!(position < all.values().sum::<i64>(), "stopped before the targets: {position}");
    let two_thirds = first.targets.iter().map(|t| t.from).sum::<i64>() + (total as i64) * 2 / 3;
    consume_until(&consumer, &mut conn, two_thirds.max(position + 1)).await;
    assert!(replies(&mut conn).await.is_empty(), "a consumer after an interrupted reinit does not reply either");

    // The second reinit resumes to the same targets.
    let second = consumer.reinit(&Until::Now, AfterReinit::Exit, &(), CancellationToken::new()).await.unwrap();
    assert!(second.resumed && second.completed, "{second:?}");
    assert_eq!(second.targets, first.targets);
    assert!(second.replayed < total / 2, "resumed, not restarted: {second:?}");
    assert_eq!(differences(&replica(&mut conn, ids.clone()).await, &source), "", "the replica equals the source");
    let written = replies(&mut conn).await;
    assert!(
        written.is_empty(),
        "no reply for the replayed range: {} {:?}",
        written.len(),
        &written[..written.len().min(5)]
    );
    let ends = stored(&mut conn, &group).await;
    // At the targets, or one past when the broker's end left out the sentinel itself.
    assert!(
        ends.iter().all(|(partition, end)| (all[partition]..=all[partition] + 1).contains(end)),
        "offsets end at the targets: {ends:?}, targets {all:?}"
    );

    // After the reinit, new events are consumed normally.
    let fresh: Vec<(i64, String, i64)> = (base + 9_001..=base + 9_010).map(|id| (id, format!("f{id}"), 3)).collect();
    send(&producer, &fresh).await;
    send_sentinels(&producer).await;
    consume_until(&consumer, &mut conn, all.values().sum::<i64>() + 12).await;
    let written = replies(&mut conn).await;
    let mut replied: Vec<i64> = written.iter().map(|(id, _, _)| *id).collect();
    replied.sort_unstable();
    assert_eq!(replied, (base + 9_001..=base + 9_010).collect::<Vec<_>>());
    assert!(
        written.iter().all(|(id, replaying, offset)| !replaying && *offset >= all[&partition_of(*id)]),
        "{written:?}"
    );
    assert_eq!(replica(&mut conn, base + 9_001..=base + 9_010).await.len(), 10);
}

/// A reinit refuses to start while a consumer of the group runs.
#[tokio::test(flavor = "multi_thread")]
async fn reinit_refuses_while_a_consumer_of_the_group_runs() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let specs = dionysus::kafka::TopicSpec::for_declaration(<Reinitialized as dionysus::Topic>::DECLARATION);
    dionysus::kafka::create_topics(&kafka, &specs).await.unwrap();
    let group = unique_name("reinit_busy");
    let consumer = consumer(&db, &group);
    // The test broker lists only groups that committed offsets to it, as a group that ran
    // before has: a commit first, without joining.
    use rdkafka::consumer::Consumer as _;
    let watcher: rdkafka::consumer::BaseConsumer = dionysus_tests::consumer_config(&kafka, &group).create().unwrap();
    let mut committed = rdkafka::TopicPartitionList::new();
    committed.add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(0)).unwrap();
    watcher.commit(&committed, rdkafka::consumer::CommitMode::Sync).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    // Only once the broker lists the consumer as a member: a reinit called before would
    // find the group idle and start replaying, rightly.
    dionysus_tests::eventually(Duration::from_secs(30), || {
        let members = watcher
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .map(|list| list.groups().iter().filter(|g| g.name() == group).map(|g| g.members().len()).sum::<usize>())
            .unwrap_or(0);
        async move { (members > 0).then_some(()) }
    })
    .await;
    let error = consumer.reinit(&Until::Now, AfterReinit::Exit, &(), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, ReinitError::GroupActive { .. }), "{error:?}");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let text = error.to_string();
    assert!(text.contains(&format!("a consumer of group `{group}` is running")), "{text}");
    assert!(text.contains("stop every consumer of the group"), "{text}");
}

/// `reinit` argument mistakes exit with 2 and say what is wrong, before any I/O.
#[tokio::test]
async fn reinit_argument_errors_exit_with_2() {
    let registry: &'static Registry = Box::leak(Box::new(Registry::new([], [])));
    let run = |args: Vec<&'static str>| async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut argv = vec!["dionysus"];
        argv.extend(args);
        let code = dionysus::cli::run_until(argv, registry, &mut out, &mut err, CancellationToken::new()).await;
        (code, String::from_utf8(err).unwrap())
    };
    let (code, err) = run(vec!["reinit", "--group", "g", "--until", "v3_rentals:zero:5"]).await;
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.contains("the partition `zero` in `v3_rentals:zero:5` is not a number"), "{err}");
    assert!(err.contains("use `now` or TOPIC:PARTITION:OFFSET"), "{err}");
    let (code, err) = run(vec!["reinit", "--until", "now"]).await;
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.contains("--group"), "{err}");
}
