//! `#[dionysus::consume]` handlers: typed inputs (one record, every record), the context,
//! handlers inside the batch's transaction (their writes commit and roll back with the
//! replica rows), and failures on both sides of the commit.
//!
//! Handlers are registered for the whole binary; each test here uses its own event names on
//! the topic [`TOPIC`], which no other test consumes with handlers on.

use std::sync::Mutex;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::{Consumer, DeadLetterHeaders};
use dionysus_tests::{count, create_topic, kafka_config, TestDb};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::consumer_models::{consumer, replica_db, replicas, row, t};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "v8_handled";

const AUDIT: &str = "CREATE TABLE handler_audit (synced_id bigint NOT NULL, note text NOT NULL)";

/// A message of partition 3 of [`TOPIC`] carrying one `Rental` event.
fn rental_event(offset: i64, event: &str, data: Value) -> InboundMessage {
    let payload = json!({"message": [{"event": event, "model_name": "Rental", "data": data}]});
    InboundMessage {
        topic: TOPIC.to_owned(),
        partition: 3,
        offset,
        key: Some(format!("Rental:{offset}").into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
    }
}

async fn audit_db() -> TestDb {
    let db = replica_db().await;
    db.connection().await.batch_execute(AUDIT).await.unwrap();
    db
}

async fn audited(conn: &mut AsyncPgConnection) -> Vec<(i64, String)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        synced_id: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        note: String,
    }
    diesel::sql_query("SELECT synced_id, note FROM handler_audit ORDER BY synced_id, note")
        .load::<Row>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.synced_id, row.note))
        .collect()
}

async fn audit(conn: &mut AsyncPgConnection, synced_id: i64, note: &str) -> Result<(), diesel::result::Error> {
    diesel::sql_query("INSERT INTO handler_audit (synced_id, note) VALUES ($1, $2)")
        .bind::<diesel::sql_types::BigInt, _>(synced_id)
        .bind::<diesel::sql_types::Text, _>(note)
        .execute(conn)
        .await
        .map(|_| ())
}

/// A handler's view of a rental: any serde type, read from the record's attributes.
#[derive(Debug, Deserialize)]
struct RentalIn {
    synced_id: i64,
    name: Option<String>,
}

/// Where the typed handler saw what: (topic, partition, offset, key, synced_id, name).
type Sighting = (String, i32, i64, Option<String>, i64, Option<String>);
static TYPED: Mutex<Vec<Sighting>> = Mutex::new(Vec::new());

#[dionysus::topic(name = "v8_handled")]
pub struct Handled;

#[dionysus::consume(topic = "v8_handled", event = "rental_typed_updated")]
async fn typed(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> Result<(), std::io::Error> {
    let key = ctx.key().map(|key| String::from_utf8_lossy(key).into_owned());
    TYPED.lock().unwrap().push((
        ctx.topic().to_owned(),
        ctx.partition(),
        ctx.offset(),
        key,
        rental.synced_id,
        rental.name,
    ));
    Ok(())
}

/// A typed handler is called once per record, with the record deserialized into its type
/// and the message's coordinates in the context.
#[tokio::test(flavor = "multi_thread")]
async fn typed_handler_receives_each_record() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let data = json!([{"id": 1, "name": "one", "updated_at": t(1)}, {"id": 2, "updated_at": t(1)}]);
    consumer.process_batch(&[rental_event(7, "rental_typed_updated", data)]).await.unwrap();
    let seen = TYPED.lock().unwrap().clone();
    let at = |synced_id, name: Option<&str>| {
        (TOPIC.to_owned(), 3, 7, Some("Rental:7".to_owned()), synced_id, name.map(str::to_owned))
    };
    assert_eq!(seen, [at(1, Some("one")), at(2, None)]);
}

static LISTED: Mutex<Vec<(Vec<i64>, i64)>> = Mutex::new(Vec::new());

#[dionysus::consume(topic = "v8_handled", event = "rental_listed_updated")]
async fn listed(ctx: &mut dionysus::Context<'_>, rentals: Vec<RentalIn>) -> dionysus::Result<()> {
    // After the commit: the pooled connection sees the batch's rows.
    let stored = count(ctx.conn(), "SELECT count(*) AS n FROM rentals").await;
    LISTED.lock().unwrap().push((rentals.iter().map(|rental| rental.synced_id).collect(), stored));
    Ok(())
}

/// A handler taking `Vec<T>` is called once with every record of the event; an after-commit
/// handler's connection sees the committed batch.
#[tokio::test(flavor = "multi_thread")]
async fn vec_handler_receives_every_record_after_the_commit() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let data = json!([{"id": 1, "updated_at": t(1)}, {"id": 2, "updated_at": t(1)}, {"id": 3, "updated_at": t(1)}]);
    consumer.process_batch(&[rental_event(0, "rental_listed_updated", data)]).await.unwrap();
    assert_eq!(LISTED.lock().unwrap().clone(), [(vec![1, 2, 3], 3)]);
}

#[dionysus::consume(topic = "v8_handled", event = "rental_audited_updated", in_transaction)]
async fn audited_in_transaction(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    assert!(ctx.in_transaction());
    // Inside the batch's transaction: the replica row is there already, uncommitted.
    let name: Option<String> =
        row(ctx.conn(), "rentals", rental.synced_id).await.and_then(|row| row["name"].as_str().map(str::to_owned));
    audit(ctx.conn(), rental.synced_id, &format!("saw {}", name.unwrap_or_default())).await?;
    Ok(())
}

/// An `in_transaction` handler runs on the batch's connection: it sees the batch's replica
/// rows and its write commits with them.
#[tokio::test(flavor = "multi_thread")]
async fn in_transaction_handler_writes_commit_with_the_replica_rows() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let outcome = consumer
        .process_batch(&[rental_event(
            0,
            "rental_audited_updated",
            json!([{"id": 5, "name": "five", "updated_at": t(1)}]),
        )])
        .await
        .unwrap();
    assert!(outcome.dead_letters.is_empty());
    let mut conn = db.connection().await;
    assert_eq!(audited(&mut conn).await, [(5, "saw five".to_owned())]);
    assert_eq!(row(&mut conn, "rentals", 5).await.unwrap()["name"], "five");
}

#[dionysus::consume(topic = "v8_handled", event = "rental_refused_updated", in_transaction)]
async fn refuses(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    audit(ctx.conn(), rental.synced_id, "written before failing").await?;
    if rental.name.as_deref() == Some("refuse") {
        return Err(dionysus::Error::App("this rental is refused".into()));
    }
    Ok(())
}

/// An `in_transaction` handler that fails rolls back its own write and the replica rows of
/// its batch; the batch is then applied message by message, so only the message it failed
/// on goes to the dead-letter topic (`handler_failed`) and the others are applied.
#[tokio::test(flavor = "multi_thread")]
async fn in_transaction_handler_failure_rolls_back_its_write_and_the_batch() {
    let db = audit_db().await;
    let (consumer, seen) = consumer(&db, |b| b.handlers(true));
    let refused = |offset, id, name: &str| {
        rental_event(offset, "rental_refused_updated", json!([{"id": id, "name": name, "updated_at": t(1)}]))
    };

    // Alone in its batch: nothing of it stays.
    let outcome = consumer.process_batch(&[refused(0, 1, "refuse")]).await.unwrap();
    let mut conn = db.connection().await;
    assert_eq!(outcome.dead_letters.len(), 1);
    assert_eq!(outcome.dead_letters[0].reason, "handler_failed");
    assert!(outcome.dead_letters[0].error.contains("this rental is refused"), "{}", outcome.dead_letters[0].error);
    assert_eq!(outcome.next_offset, Some(1));
    assert!(audited(&mut conn).await.is_empty(), "the handler's write rolled back");
    assert!(row(&mut conn, "rentals", 1).await.is_none(), "the replica row rolled back");

    // Among others: only the failing message is set aside.
    let outcome =
        consumer.process_batch(&[refused(1, 2, "fine"), refused(2, 3, "refuse"), refused(3, 4, "fine")]).await.unwrap();
    let dead: Vec<(i64, &str)> = outcome.dead_letters.iter().map(|dead| (dead.message.offset, dead.reason)).collect();
    assert_eq!(dead, [(2, "handler_failed")]);
    assert_eq!(outcome.next_offset, Some(4));
    let written = "written before failing".to_owned();
    assert_eq!(audited(&mut conn).await, [(2, written.clone()), (4, written)]);
    assert!(row(&mut conn, "rentals", 2).await.is_some());
    assert!(row(&mut conn, "rentals", 3).await.is_none());
    assert!(row(&mut conn, "rentals", 4).await.is_some());
    assert_eq!(count(&mut conn, "SELECT next_offset AS n FROM dionysus_consumer_offsets").await, 4);
    // Subscribers hear of the committed events only.
    let events: Vec<Value> =
        seen.lock().unwrap().iter().filter(|(kind, _)| kind == "event").map(|(_, e)| e.clone()).collect();
    let ids: Vec<&Value> =
        events.iter().map(|event| &event["transformed_data"][0]["attributes"]["synced_id"]).collect();
    assert_eq!(ids, [&json!(2), &json!(4)]);
}

/// A record the handler's type cannot hold.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Strict {
    synced_id: i64,
    name: String,
}

#[dionysus::consume(topic = "v8_handled", event = "rental_strict_updated", in_transaction)]
async fn strict(_ctx: &mut dionysus::Context<'_>, _rental: Strict) -> dionysus::Result<()> {
    Ok(())
}

/// A record that does not deserialize into an `in_transaction` handler's input sends its
/// message to the dead-letter topic as `handler_input_invalid`, with serde's error.
#[tokio::test(flavor = "multi_thread")]
async fn in_transaction_handler_input_that_does_not_fit_is_dead_lettered() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let outcome = consumer
        .process_batch(&[
            rental_event(0, "rental_strict_updated", json!([{"id": 1, "name": "fits", "updated_at": t(1)}])),
            rental_event(1, "rental_strict_updated", json!([{"id": 2, "updated_at": t(1)}])),
        ])
        .await
        .unwrap();
    let dead: Vec<(i64, &str)> = outcome.dead_letters.iter().map(|dead| (dead.message.offset, dead.reason)).collect();
    assert_eq!(dead, [(1, "handler_input_invalid")]);
    assert!(outcome.dead_letters[0].error.contains("missing field `name`"), "{}", outcome.dead_letters[0].error);
    let mut conn = db.connection().await;
    assert!(row(&mut conn, "rentals", 1).await.is_some());
    assert!(row(&mut conn, "rentals", 2).await.is_none());
}

static FAILED_AFTER_COMMIT: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[dionysus::consume(topic = "v8_handled", event = "rental_failing_updated")]
async fn fails_after_commit(ctx: &mut dionysus::Context<'_>, rental: Strict) -> Result<(), String> {
    FAILED_AFTER_COMMIT.lock().unwrap().push(ctx.offset());
    Err(format!("cannot handle rental {}", rental.synced_id))
}

/// An after-commit handler's failure, or a record that does not fit its input, is logged and
/// counted; the batch stays committed and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn after_commit_handler_failure_leaves_the_batch_alone() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let outcome = consumer
        .process_batch(&[
            rental_event(0, "rental_failing_updated", json!([{"id": 1, "name": "fits", "updated_at": t(1)}])),
            rental_event(1, "rental_failing_updated", json!([{"id": 2, "updated_at": t(1)}])),
        ])
        .await
        .unwrap();
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.next_offset, Some(2));
    assert_eq!(FAILED_AFTER_COMMIT.lock().unwrap().clone(), [0], "called for the record that fits only");
    let mut conn = db.connection().await;
    assert!(row(&mut conn, "rentals", 1).await.is_some());
    assert!(row(&mut conn, "rentals", 2).await.is_some());
}

/// A topic of its own for the test through the broker; it outlives test runs, so that test
/// uses ids unique to its run.
const BROKER_TOPIC: &str = "v8_handled_through_broker";

#[dionysus::topic(name = "v8_handled_through_broker")]
pub struct HandledThroughTheBroker;

#[dionysus::consume(topic = "v8_handled_through_broker", event = "rental_updated", in_transaction)]
async fn audited_through_the_broker(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    let note = format!("offset {}", ctx.offset());
    audit(ctx.conn(), rental.synced_id, &note).await?;
    if rental.name.as_deref() == Some("refuse") {
        return Err(dionysus::Error::app("refused through the broker"));
    }
    Ok(())
}

/// Through the broker, an `in_transaction` handler's write commits with the replica row of a
/// good message, and the message it fails on goes to the dead-letter topic as
/// `handler_failed` with nothing of it kept; the partition moves on.
#[tokio::test(flavor = "multi_thread")]
async fn in_transaction_handler_through_the_broker() {
    let db = audit_db().await;
    let kafka = kafka_config();
    let spec = dionysus::kafka::TopicSpec { name: BROKER_TOPIC.to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    let dead_letters = create_topic(&kafka, "handler_dead_letters", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let refused = chrono::Utc::now().timestamp_micros();
    let good = refused + 1;
    for (id, name) in [(refused, "refuse"), (good, "good")] {
        let payload = json!({"message": [{"event": "rental_updated", "model_name": "Rental",
            "data": [{"id": id, "name": name, "updated_at": t(1)}]}]})
        .to_string();
        let key = format!("Rental:{id}");
        let record: FutureRecord<'_, str, str> =
            FutureRecord::to(BROKER_TOPIC).partition(0).key(key.as_str()).payload(payload.as_str());
        producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
    }

    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.consumer.dead_letter_topic = dead_letters.clone();
    let consumer = Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(replicas())
        .topic(BROKER_TOPIC)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let mut conn = db.connection().await;
    // The good message comes after the refused one on the partition: once it is applied, the
    // refused one is settled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while row(&mut conn, "rentals", good).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the good message was not applied within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let audit: Vec<i64> = audited(&mut conn).await.into_iter().map(|(id, _)| id).filter(|id| *id >= refused).collect();
    assert_eq!(audit, [good], "the refused message's audit row rolled back");
    assert!(row(&mut conn, "rentals", refused).await.is_none(), "the refused message's replica row rolled back");

    let reader: StreamConsumer =
        dionysus_tests::consumer_config(&kafka, &dionysus_tests::unique_name("handler_dlq_reader")).create().unwrap();
    reader.subscribe(&[&dead_letters]).unwrap();
    // Earlier runs' refused messages are dead-lettered here too, before this run's.
    let mut stream = reader.stream();
    let key = format!("Rental:{refused}");
    let (reason, error) = loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
        };
        break (header(DeadLetterHeaders::REASON), header(DeadLetterHeaders::ERROR));
    };
    assert_eq!(reason.as_deref(), Some("handler_failed"));
    assert!(error.is_some_and(|error| error.contains("refused through the broker")));
}
