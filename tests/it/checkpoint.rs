//! The checkpoint log: checkpointed handlers (acknowledged events saved in the batch's
//! transaction, duplicates skipped by checksum, no ack no row), failures recorded and
//! retried through the store, and the `events` / `failures` commands.
//!
//! The handlers here handle events of the topic [`TOPIC`] only, which no other test reads;
//! each test uses its own event names.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::checkpoint::{checksum, Checkpoints, EventFilter, RetryOutcome};
use dionysus::consumer::ConsumerError;
use dionysus::registry::Registry;
use dionysus_tests::{count, TestDb};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::consumer_models::{consumer, replica_db, t};

const TOPIC: &str = "v8_checkpointed";

const AUDIT: &str = "CREATE TABLE checkpoint_audit (synced_id bigint NOT NULL, note text NOT NULL)";

#[dionysus::topic(name = "v8_checkpointed")]
pub struct Checkpointed;

#[dionysus::topic(name = "v8_checkpointed_e2e")]
pub struct CheckpointedEndToEnd;

/// A message of partition 2 of [`TOPIC`] carrying one `Rental` event of one record.
fn message(offset: i64, event: &str, id: i64, name: &str) -> InboundMessage {
    let payload = json!({"message": [{"event": event, "model_name": "Rental", "data": [{"id": id, "name": name, "updated_at": t(1)}]}]});
    InboundMessage {
        topic: TOPIC.to_owned(),
        partition: 2,
        offset,
        key: Some(format!("Rental:{id}").into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
    }
}

/// The same message at another offset (a duplicate delivery).
fn at(message: &InboundMessage, offset: i64) -> InboundMessage {
    InboundMessage { offset, ..message.clone() }
}

async fn audit_db() -> TestDb {
    let db = replica_db().await;
    db.connection().await.batch_execute(AUDIT).await.unwrap();
    db
}

async fn audit(conn: &mut AsyncPgConnection, synced_id: i64, note: &str) -> Result<(), diesel::result::Error> {
    diesel::sql_query("INSERT INTO checkpoint_audit (synced_id, note) VALUES ($1, $2)")
        .bind::<diesel::sql_types::BigInt, _>(synced_id)
        .bind::<diesel::sql_types::Text, _>(note)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn audited(conn: &mut AsyncPgConnection) -> i64 {
    count(conn, "SELECT count(*) AS n FROM checkpoint_audit").await
}

async fn saved(conn: &mut AsyncPgConnection) -> i64 {
    count(conn, "SELECT count(*) AS n FROM dionysus_events").await
}

async fn failed(conn: &mut AsyncPgConnection) -> i64 {
    count(conn, "SELECT count(*) AS n FROM dionysus_event_failures").await
}

#[derive(Debug, Deserialize)]
struct RentalIn {
    synced_id: i64,
    name: Option<String>,
}

fn time() -> DateTime<Utc> {
    "2024-01-01T00:00:01Z".parse().unwrap()
}

static ACKED_CALLS: AtomicUsize = AtomicUsize::new(0);

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_acked_updated", checkpoint)]
async fn acked(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    ACKED_CALLS.fetch_add(1, Ordering::SeqCst);
    assert!(ctx.in_transaction());
    audit(ctx.conn(), rental.synced_id, "acked").await?;
    ctx.ack(rental.synced_id.to_string(), time());
    Ok(())
}

/// An acknowledged event is saved with its coordinates and checksum, in the batch's
/// transaction with the handler's write; the same message delivered again is skipped by
/// its checksum without calling the handler.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_event_is_saved_and_a_duplicate_is_skipped_by_checksum() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let first = message(0, "rental_acked_updated", 7, "seven");
    consumer.process_batch(std::slice::from_ref(&first)).await.unwrap();
    let mut conn = db.connection().await;
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await), (1, 1));
    assert_eq!(AtomicUsize::load(&ACKED_CALLS, Ordering::SeqCst), 1);

    let store = Checkpoints::new(db.pool(2));
    let page = store.events(&EventFilter::new().topic(TOPIC)).await.unwrap();
    let [event] = page.items.as_slice() else { panic!("one event: {page:?}") };
    assert_eq!(event.group_id, consumer.group());
    assert_eq!(event.entity_id.as_deref(), Some("7"));
    assert_eq!(event.event_time, Some(time()));
    assert_eq!(event.event_type.as_deref(), Some("rental_acked_updated"));
    assert_eq!(event.checksum, checksum(first.payload.as_deref(), 0));
    assert_eq!(event.key.as_deref(), Some("Rental:7"));
    assert_eq!((event.partition, event.offset), (Some(2), Some(0)));
    assert!(event.listener.ends_with("checkpoint::acked"), "{}", event.listener);
    assert_eq!(event.payload["message"][0]["data"][0]["name"], "seven");
    let json = serde_json::to_value(event).unwrap();
    assert!(json["payload"].is_string(), "the payload is JSON text, as in the events API: {json}");
    assert_eq!(store.event(event.id).await.unwrap().as_ref(), Some(event));

    // The same message again, at a later offset: skipped.
    let outcome = consumer.process_batch(&[at(&first, 1)]).await.unwrap();
    assert_eq!(outcome.next_offset, Some(2));
    assert_eq!(AtomicUsize::load(&ACKED_CALLS, Ordering::SeqCst), 1, "the handler was not called again");
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await), (1, 1));

    // Filters narrow the listing.
    for filter in [
        EventFilter::new().entity_id("7"),
        EventFilter::new().group_id(consumer.group()),
        EventFilter::new().event_type("rental_acked_updated"),
    ] {
        assert_eq!(store.events(&filter).await.unwrap().items.len(), 1, "{filter:?}");
    }
    for filter in [EventFilter::new().entity_id("8"), EventFilter::new().topic("other"), EventFilter::new().offset(1)] {
        assert!(store.events(&filter).await.unwrap().items.is_empty(), "{filter:?}");
    }
    assert!(matches!(
        store.events(&EventFilter::new().limit(1001)).await,
        Err(dionysus::checkpoint::CheckpointError::InvalidFilter { parameter: "limit", .. })
    ));
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_kept_updated", checkpoint)]
async fn kept(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    audit(ctx.conn(), rental.synced_id, "kept").await?;
    ctx.ack(rental.synced_id.to_string(), time());
    Ok(())
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_unacked_updated", checkpoint)]
async fn unacked(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    audit(ctx.conn(), rental.synced_id, "not acked").await?;
    Ok(())
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_returned_updated", checkpoint)]
async fn returns_ack(
    _ctx: &mut dionysus::Context<'_>,
    rental: RentalIn,
) -> dionysus::Result<dionysus::checkpoint::Ack> {
    Ok(dionysus::checkpoint::Ack::new(rental.synced_id.to_string(), time()).version("v2"))
}

/// A checkpointed handler that returns without acknowledging saves nothing (its own writes
/// commit); one that returns an `Ack` is saved as if it had called `ctx.ack`.
#[tokio::test(flavor = "multi_thread")]
async fn non_ack_is_not_saved_and_a_returned_ack_is() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    consumer.process_batch(&[message(0, "rental_unacked_updated", 1, "one")]).await.unwrap();
    let mut conn = db.connection().await;
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await), (1, 0));

    consumer.process_batch(&[message(1, "rental_returned_updated", 2, "two")]).await.unwrap();
    let store = Checkpoints::new(db.pool(2));
    let page = store.events(&EventFilter::new()).await.unwrap();
    let versions: Vec<(Option<&str>, Option<&str>)> =
        page.items.iter().map(|event| (event.entity_id.as_deref(), event.event_version.as_deref())).collect();
    assert_eq!(versions, [(Some("2"), Some("v2"))]);
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_doomed_updated", checkpoint, on_failure = "dead_letter")]
async fn doomed(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    audit(ctx.conn(), rental.synced_id, "written before failing").await?;
    ctx.ack(rental.synced_id.to_string(), time());
    Err(dionysus::Error::App("doomed".into()))
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_blocking_updated", checkpoint, on_failure = "block")]
async fn blocking(_ctx: &mut dionysus::Context<'_>, _rental: RentalIn) -> dionysus::Result<()> {
    Err(dionysus::Error::App("blocks its partition".into()))
}

/// The handler's write and the checkpoint row roll back together: when the handler fails
/// after writing and acknowledging (nothing saved, the message dead-lettered under
/// `on_failure = "dead_letter"`), and when a later message makes the whole batch fail
/// (`on_failure = "block"`: nothing of the batch stays, the offset does not move).
#[tokio::test(flavor = "multi_thread")]
async fn handler_write_and_checkpoint_roll_back_together() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let outcome = consumer.process_batch(&[message(0, "rental_doomed_updated", 1, "one")]).await.unwrap();
    let dead: Vec<&str> = outcome.dead_letters.iter().map(|dead| dead.reason).collect();
    assert_eq!(dead, ["handler_failed"]);
    let mut conn = db.connection().await;
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await, failed(&mut conn).await), (0, 0, 0));

    let error = consumer
        .process_batch(&[message(1, "rental_kept_updated", 40, "kept"), message(2, "rental_blocking_updated", 41, "x")])
        .await
        .unwrap_err();
    assert!(matches!(error, ConsumerError::HandlerBlocked { offset: 2, .. }), "{error:?}");
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await, failed(&mut conn).await), (0, 0, 0));
    assert_eq!(count(&mut conn, "SELECT next_offset AS n FROM dionysus_consumer_offsets").await, 1);
}

static FLAKY_FAILS: AtomicBool = AtomicBool::new(true);

#[derive(Debug)]
struct Refused(i64, std::io::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the rental service refused rental {}", self.0)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_flaky_updated", checkpoint)]
async fn flaky(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> Result<(), Refused> {
    audit(ctx.conn(), rental.synced_id, "flaky").await.map_err(|error| Refused(0, std::io::Error::other(error)))?;
    if AtomicBool::load(&FLAKY_FAILS, Ordering::SeqCst) {
        return Err(Refused(rental.synced_id, std::io::Error::other("connection reset by peer")));
    }
    ctx.ack(rental.synced_id.to_string(), time());
    Ok(())
}

/// A failing checkpointed handler (default policy `record`) records a failure row after its
/// tries and the partition moves on; the same message failing again updates that row. A
/// retry through the store that fails counts one more attempt; one that succeeds deletes
/// the failure and saves the event, with the handler's write, in one transaction.
#[tokio::test(flavor = "multi_thread")]
async fn failure_is_recorded_then_retried_successfully_through_the_store() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| {
        let mut config = dionysus::Config::default();
        config.database_url = db.url.clone();
        config.kafka.client_id = "dionysus_test".to_owned();
        config.consumer.checkpoint_attempts = 2;
        b.config(config).handlers(true)
    });
    let first = message(0, "rental_flaky_updated", 9, "nine");
    let outcome = consumer.process_batch(std::slice::from_ref(&first)).await.unwrap();
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.next_offset, Some(1), "the partition moved on");
    let mut conn = db.connection().await;
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await, failed(&mut conn).await), (0, 0, 1));

    let store = Checkpoints::new(db.pool(2));
    let page = store.failures(&EventFilter::new().topic(TOPIC).entity_id("9")).await.unwrap();
    let [failure] = page.items.as_slice() else { panic!("one failure: {page:?}") };
    assert_eq!(failure.attempts, 2);
    assert!(failure.error_class.ends_with("checkpoint::Refused"), "{}", failure.error_class);
    assert_eq!(failure.error_message, "the rental service refused rental 9");
    assert_eq!(failure.error_chain, ["the rental service refused rental 9", "connection reset by peer"]);
    assert_eq!(failure.checksum, checksum(first.payload.as_deref(), 0));
    assert_eq!(failure.event_type.as_deref(), Some("rental_flaky_updated"));
    assert_eq!((failure.partition, failure.offset, failure.key.as_deref()), (Some(2), Some(0), Some("Rental:9")));
    assert_eq!(failure.metadata["group_id"], consumer.group());
    assert!(failure.metadata["listener"].as_str().unwrap().ends_with("checkpoint::flaky"));
    assert_eq!(failure.metadata["offset"], 0);
    assert!(failure.first_failed_at <= failure.last_failed_at);

    // The same message again: the same row, more attempts.
    consumer.process_batch(&[at(&first, 1)]).await.unwrap();
    let again = store.failure(failure.id).await.unwrap().unwrap();
    assert_eq!((again.attempts, again.offset), (4, Some(1)));
    assert_eq!(again.first_failed_at, failure.first_failed_at);
    assert!(again.last_failed_at > failure.last_failed_at);
    assert_eq!(failed(&mut conn).await, 1);

    // Retried while the cause persists: one more attempt, nothing written.
    let outcome = store.retry_failure(failure.id).await.unwrap();
    let RetryOutcome::Failed { error } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("connection reset by peer"), "{error}");
    assert_eq!(store.failure(failure.id).await.unwrap().unwrap().attempts, 5);
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await), (0, 0));

    // Fixed: the retry succeeds, the failure is gone and the event saved.
    FLAKY_FAILS.store(false, Ordering::SeqCst);
    let outcome = store.retry_failure(failure.id).await.unwrap();
    let RetryOutcome::Succeeded { event_id: Some(event_id) } = outcome else { panic!("{outcome:?}") };
    assert!(store.failure(failure.id).await.unwrap().is_none());
    let event = store.event(event_id).await.unwrap().unwrap();
    assert_eq!((event.entity_id.as_deref(), event.checksum.as_str()), (Some("9"), failure.checksum.as_str()));
    assert_eq!(event.group_id, consumer.group());
    assert_eq!((audited(&mut conn).await, saved(&mut conn).await, failed(&mut conn).await), (1, 1, 0));
    assert_eq!(store.retry_failure(failure.id).await.unwrap(), RetryOutcome::NotFound);

    // The saved event is a duplicate now; retrying it runs the handler again.
    consumer.process_batch(&[at(&first, 2)]).await.unwrap();
    assert_eq!(audited(&mut conn).await, 1);
    assert_eq!(store.retry_event(event_id).await.unwrap(), RetryOutcome::Succeeded { event_id: Some(event_id) });
    assert_eq!(audited(&mut conn).await, 2);
    assert_eq!(store.retry_event(event_id + 1000).await.unwrap(), RetryOutcome::NotFound);
}

#[dionysus::consume(topic = "v8_checkpointed", event = "rental_cli_updated", checkpoint)]
async fn for_cli(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    if rental.name.as_deref() == Some("fail") {
        return Err(dionysus::Error::App(format!("rental {} cannot be handled", rental.synced_id).into()));
    }
    ctx.ack(rental.synced_id.to_string(), time());
    Ok(())
}

async fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let registry: &'static Registry = Box::leak(Box::new(Registry::new([], [])));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["dionysus".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let code = dionysus::cli::run_with(argv, registry, &mut out, &mut err).await;
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

/// `events list|show|retry` and `failures list|show|retry|delete`: tables, JSON, filters,
/// and the mistakes (a bad limit, an unknown id).
#[tokio::test(flavor = "multi_thread")]
async fn events_and_failures_commands() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| {
        let mut config = dionysus::Config::default();
        config.database_url = db.url.clone();
        config.kafka.client_id = "dionysus_test".to_owned();
        config.consumer.checkpoint_attempts = 1;
        b.config(config).handlers(true)
    });
    consumer
        .process_batch(&[
            message(0, "rental_cli_updated", 1, "one"),
            message(1, "rental_cli_updated", 2, "fail"),
            message(2, "rental_cli_updated", 3, "fail"),
        ])
        .await
        .unwrap();
    let url = db.url.as_str();

    let (code, out, _) = cli(&["--database-url", url, "events", "list"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("EVENT TYPE"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("rental_cli_updated") && lines[1].contains("2@0"), "{out}");
    let event_id = lines[1].split_whitespace().next().unwrap().to_owned();

    let (code, out, _) = cli(&["--database-url", url, "events", "show", &event_id, "--json"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((shown["entity_id"].as_str(), shown["topic"].as_str()), (Some("1"), Some(TOPIC)));
    let (_, out, _) = cli(&["--database-url", url, "events", "show", &event_id]).await;
    assert!(out.lines().any(|line| line.starts_with("checksum") && line.contains(shown["checksum"].as_str().unwrap())));

    let (code, out, _) = cli(&["--database-url", url, "failures", "list", "--json", "--entity-id", "2"]).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((page["limit"].as_u64(), page["items"].as_array().map(Vec::len)), (Some(20), Some(1)));
    let failure_id = page["items"][0]["id"].as_i64().unwrap().to_string();
    assert_eq!(page["items"][0]["error_message"], "rental 2 cannot be handled");

    let (_, out, _) = cli(&["--database-url", url, "failures", "list", "--limit", "1"]).await;
    assert!(out.contains("more with --offset 1"), "{out}");
    let (_, out, _) = cli(&["--database-url", url, "failures", "show", &failure_id]).await;
    assert!(out.contains("rental 2 cannot be handled") && out.contains("attempts"), "{out}");

    let (code, _, err) = cli(&["--database-url", url, "failures", "retry", &failure_id]).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("the handler failed again") && err.contains("rental 2 cannot be handled"), "{err}");

    // Fix the stored message (as an operator might), then retry it.
    let mut conn = db.connection().await;
    conn.batch_execute(&format!(
        "UPDATE dionysus_event_failures SET payload = jsonb_set(payload, '{{message,0,data,0,name}}', '\"fixed\"') WHERE id = {failure_id}"
    ))
    .await
    .unwrap();
    let (code, out, err) = cli(&["--database-url", url, "failures", "retry", &failure_id]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.starts_with(&format!("failure {failure_id} retried: the handler succeeded; saved as event")), "{out}");
    let (_, out, _) = cli(&["--database-url", url, "events", "list", "--entity-id", "2", "--json"]).await;
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["items"].as_array().map(Vec::len), Some(1));

    let (code, out, _) = cli(&["--database-url", url, "events", "retry", &event_id]).await;
    assert_eq!(
        (code, out.trim()),
        (ExitCode::SUCCESS, format!("event {event_id} retried: the handler succeeded").as_str())
    );

    // The other failure is deleted.
    let (_, out, _) = cli(&["--database-url", url, "failures", "list", "--json"]).await;
    let other = serde_json::from_str::<Value>(&out).unwrap()["items"][0]["id"].as_i64().unwrap().to_string();
    let (code, out, _) = cli(&["--database-url", url, "failures", "delete", &other]).await;
    assert_eq!((code, out.trim()), (ExitCode::SUCCESS, format!("failure {other} deleted").as_str()));
    let (code, _, err) = cli(&["--database-url", url, "failures", "delete", &other]).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains(&format!("no failure with id {other}")), "{err}");
    let (_, out, _) = cli(&["--database-url", url, "failures", "list"]).await;
    assert_eq!(out, "ID  TOPIC  GROUP  ENTITY  EVENT TYPE  ATTEMPTS  LAST FAILED AT  ERROR\nno failures\n");

    // Mistakes: a limit out of bounds is a usage error naming the flag's parameter.
    let (code, _, err) = cli(&["--database-url", url, "events", "list", "--limit", "5000"]).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("invalid `limit`") && err.contains("1 to 1000"), "{err}");
    let (code, _, err) = cli(&["--database-url", url, "events", "show", "999999"]).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("no event with id 999999"), "{err}");
}

static DELIVERED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

#[dionysus::consume(topic = "v8_checkpointed_e2e", event = "rental_delivered_updated", checkpoint)]
async fn delivered(ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    DELIVERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(rental.synced_id);
    ctx.ack(rental.synced_id.to_string(), time());
    Ok(())
}

/// Through the broker: the same message delivered twice is handled and saved once; the
/// consumer's stored offset moves past both.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_sent_twice_through_the_broker_is_handled_once() {
    let db = audit_db().await;
    let kafka = dionysus_tests::kafka_config();
    let topic = "v8_checkpointed_e2e";
    let spec = dionysus::kafka::TopicSpec { name: topic.to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    // Earlier runs left their messages on the topic: this run's records have ids of their own.
    let id = i64::from(rand::random::<u32>()) + 1;
    let marker = id + 1;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let value = |id: i64| message(0, "rental_delivered_updated", id, "delivered").payload.unwrap();
    for (id, value) in [(id, value(id)), (id, value(id)), (marker, value(marker))] {
        let key = format!("Rental:{id}");
        let record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic).partition(0).key(&key).payload(&value);
        producer.send(record, std::time::Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
    }

    let prometheus = dionysus::telemetry::prometheus().expect("no other recorder in the tests");
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka;
    // Without the batch's own duplicate removal (C-18), which would drop the second
    // delivery before any handler: here the checksum is what skips it.
    config.consumer.remove_duplicates = false;
    let consumer = dionysus::consumer::Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(crate::consumer_models::replicas())
        .topic(topic)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let mut conn = db.connection().await;
    let store = Checkpoints::new(db.pool(2));
    dionysus_tests::eventually(std::time::Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let page = store.events(&EventFilter::new().entity_id(marker.to_string())).await.unwrap();
            (!page.items.is_empty()).then_some(())
        }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let calls = DELIVERED.lock().unwrap().iter().filter(|seen| **seen == id).count();
    assert_eq!(calls, 1, "the duplicate was skipped without calling the handler");
    let saved = store.events(&EventFilter::new().entity_id(id.to_string())).await.unwrap();
    assert_eq!(saved.items.len(), 1);
    assert_eq!(saved.items[0].group_id, consumer.group());
    let stored =
        count(&mut conn, &format!("SELECT next_offset AS n FROM dionysus_consumer_offsets WHERE topic = '{topic}'"))
            .await;
    assert!(stored >= 3, "the stored offset is past both deliveries: {stored}");

    // Counted per listener and topic (earlier runs' messages on the topic count too).
    let metrics = prometheus.render();
    let counted = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(name) && line.contains(&format!("topic=\"{topic}\"")))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_default()
    };
    assert!(counted("dionysus_checkpoint_event_acknowledged_total{") >= 2.0, "{metrics}");
    assert!(counted("dionysus_checkpoint_event_already_consumed_total{") >= 1.0, "{metrics}");
}

const NOTICES_CHILD: &str = "DIONYSUS_TEST_CHECKPOINT_NOTICES";

/// Acknowledged, already consumed, skipped and failed events, with the tracing events of
/// target `dionysus::checkpoint` printed to stdout (run by the test below).
#[test]
#[ignore = "runs in a child process started by checkpoint_notifications_carry_the_message_coordinates"]
fn checkpoint_notices_child() {
    let Ok(url) = std::env::var(NOTICES_CHILD) else { return };
    tracing_subscriber::fmt()
        .with_env_filter("dionysus::checkpoint=info")
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let mut config = dionysus::Config::default();
        config.database_url = url.clone();
        config.kafka.client_id = "dionysus_test".to_owned();
        config.consumer.checkpoint_attempts = 2;
        let consumer = dionysus::consumer::Consumer::builder(config)
            .pool(dionysus::db::pool(&url, 2).unwrap())
            .replicas(crate::consumer_models::replicas())
            .build()
            .unwrap();
        let acked = message(0, "rental_kept_updated", 5, "five");
        consumer.process_batch(std::slice::from_ref(&acked)).await.unwrap();
        consumer.process_batch(&[at(&acked, 1)]).await.unwrap();
        consumer.process_batch(&[message(2, "rental_unacked_updated", 6, "six")]).await.unwrap();
        consumer.process_batch(&[message(3, "rental_cli_updated", 7, "fail")]).await.unwrap();
    });
}

/// Each outcome of a checkpointed handler is a tracing event naming it, with the listener,
/// group, topic, key, partition, offset, retry count and checksum.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_notifications_carry_the_message_coordinates() {
    let db = audit_db().await;
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "checkpoint::checkpoint_notices_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(NOTICES_CHILD, &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let notices: Vec<&str> = stdout.lines().filter(|line| line.contains("notification=")).collect();
    let names: Vec<&str> =
        notices.iter().filter_map(|line| line.split("notification=\"").nth(1)?.split('"').next()).collect();
    assert_eq!(names, ["event_acknowledged", "event_already_consumed", "event_skipped", "event_failed"], "{stdout}");
    let first = notices[0];
    let expected_checksum = checksum(message(0, "rental_kept_updated", 5, "five").payload.as_deref(), 0);
    for field in [
        "listener_id=\"it::checkpoint::kept\"".to_owned(),
        "group_id=\"dionysus_test".to_owned(),
        format!("topic={TOPIC}"),
        "key=\"Rental:5\"".to_owned(),
        "partition=2".to_owned(),
        "offset=0".to_owned(),
        "retry_count=0".to_owned(),
        format!("checksum=\"{expected_checksum}\""),
    ] {
        assert!(first.contains(&field), "{field} missing in {first}");
    }
    assert!(notices[1].contains("offset=1"), "{}", notices[1]);
    assert!(notices[3].contains("retry_count=1"), "the last of two tries: {}", notices[3]);
}

/// The consumer's failure policy (`checkpoint_on_failure`) applies to checkpointed handlers
/// that name none: here `dead_letter`, so nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn the_consumers_failure_policy_applies_to_handlers_without_their_own() {
    let db = audit_db().await;
    let (consumer, _) = consumer(&db, |b| {
        let mut config = dionysus::Config::default();
        config.database_url = db.url.clone();
        config.kafka.client_id = "dionysus_test".to_owned();
        config.consumer.checkpoint_attempts = 1;
        config.consumer.checkpoint_on_failure = dionysus::checkpoint::FailurePolicy::DeadLetter;
        b.config(config).handlers(true)
    });
    let outcome = consumer.process_batch(&[message(0, "rental_cli_updated", 1, "fail")]).await.unwrap();
    let dead: Vec<&str> = outcome.dead_letters.iter().map(|dead| dead.reason).collect();
    assert_eq!(dead, ["handler_failed"]);
    let mut conn = db.connection().await;
    assert_eq!((saved(&mut conn).await, failed(&mut conn).await), (0, 0));
}
