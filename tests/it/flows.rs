//! Event flows out of a consumer: handlers' replies and error events, written to the outbox
//! in the consumer's transaction, and published by the consuming service's relay.
//!
//! Handlers are registered for the whole binary; the ones here handle events of [`TOPIC`],
//! which no other test consumes with handlers on, each test with its own event names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use dionysus::__internals::consumer::InboundMessage;
use dionysus::relay::Relay;
use dionysus::{Context, Registry, Reply, Topic};
use dionysus_tests::{kafka_config, unique_name};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::consumer_models::{consumer, replica_db, t};

const TOPIC: &str = "v8_flows";
const REPLIES: &str = "v8_flow_replies";

#[dionysus::topic(name = "v8_flows")]
pub struct Flows;

#[dionysus::topic(name = "v8_flow_replies")]
pub struct FlowReplies;

/// A message of partition 1 of [`TOPIC`] carrying one `Rental` event, with kaufmann-style
/// `meta`.
fn rental_event(offset: i64, event: &str, id: i64, name: &str) -> InboundMessage {
    let payload = json!({
        "message": [{"event": event, "model_name": "Rental", "data": [{"id": id, "name": name, "updated_at": t(1)}]}],
        "meta": {"message_id": format!("m-{offset}")},
    });
    InboundMessage {
        topic: TOPIC.to_owned(),
        partition: 1,
        offset,
        key: Some(format!("Rental:{id}").into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
    }
}

#[derive(Debug, Deserialize)]
struct RentalIn {
    synced_id: i64,
    name: String,
}

/// The outbox rows as (event name, topic, key, value).
async fn outbox(conn: &mut AsyncPgConnection) -> Vec<(String, String, String, Value)> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        event_name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        topic: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        message_key: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        message: String,
    }
    diesel::sql_query("SELECT event_name, topic, message_key, message FROM dionysus_outbox ORDER BY id")
        .load::<Row>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.event_name, row.topic, row.message_key, serde_json::from_str(&row.message).unwrap()))
        .collect()
}

#[dionysus::consume(topic = "v8_flows", event = "rental_priced_updated", in_transaction)]
async fn price(_ctx: &mut Context<'_>, rental: RentalIn) -> dionysus::Result<Reply> {
    if rental.name == "refuse" {
        return Err(dionysus::Error::app("no price for a refused rental"));
    }
    Ok(Reply::event("rental.priced", &json!({"id": rental.synced_id, "price": 42})).on(REPLIES))
}

/// A reply of an `in_transaction` handler is written with its batch: once for a message that
/// commits, not at all for one whose batch rolls back (the refused message, dead-lettered),
/// and not again when the batch is delivered again. It carries its cause.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_commits_with_its_batch_and_rolls_back_with_it() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let batch =
        [rental_event(0, "rental_priced_updated", 1, "fine"), rental_event(1, "rental_priced_updated", 2, "refuse"), {
            rental_event(2, "rental_priced_updated", 3, "fine")
        }];
    let outcome = consumer.process_batch(&batch).await.unwrap();
    let dead: Vec<(i64, &str)> = outcome.dead_letters.iter().map(|dead| (dead.message.offset, dead.reason)).collect();
    assert_eq!(dead, [(1, "handler_failed")]);

    let mut conn = db.connection().await;
    let rows = outbox(&mut conn).await;
    let summary: Vec<(&str, &str, &str)> =
        rows.iter().map(|(event, topic, key, _)| (event.as_str(), topic.as_str(), key.as_str())).collect();
    assert_eq!(summary, [("rental.priced", REPLIES, "Rental:1"), ("rental.priced", REPLIES, "Rental:3")]);
    let value = &rows[0].3;
    assert_eq!(
        value["message"][0],
        json!({"event": "rental.priced", "model_name": "Rental", "data": [{"id": 1, "price": 42}]})
    );
    assert_eq!(
        value["meta"],
        json!({"cause": {"topic": TOPIC, "partition": 1, "offset": 0, "event": "rental_priced_updated", "key": "Rental:1"},
               "cause_meta": {"message_id": "m-0"}})
    );

    let again = consumer.process_batch(&batch).await.unwrap();
    assert_eq!(again.already_applied, 3);
    assert_eq!(outbox(&mut conn).await.len(), 2, "a batch delivered again replies nothing again");
}

static SLOW_STARTED: AtomicBool = AtomicBool::new(false);
static SLOW_WAITS: AtomicBool = AtomicBool::new(true);

#[dionysus::consume(topic = "v8_flows", event = "rental_slow_updated", in_transaction)]
async fn slow(ctx: &mut Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    ctx.reply(Reply::event("rental.slow", &json!({"id": rental.synced_id})).on(REPLIES).key("slow"));
    SLOW_STARTED.store(true, Ordering::SeqCst);
    if SLOW_WAITS.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    Ok(())
}

/// A consumer stopped between its handler and its commit leaves no reply behind; the batch
/// applied again replies once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_is_not_written_when_the_consumer_stops_before_the_commit() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let batch = [rental_event(0, "rental_slow_updated", 7, "slow")];
    let task = tokio::spawn({
        let (consumer, batch) = (consumer.clone(), batch.clone());
        async move { consumer.process_batch(&batch).await }
    });
    dionysus_tests::eventually(Duration::from_secs(10), || async { SLOW_STARTED.load(Ordering::SeqCst).then_some(()) })
        .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let mut conn = db.connection().await;
    assert!(outbox(&mut conn).await.is_empty(), "the reply rolled back with its batch");

    SLOW_WAITS.store(false, Ordering::SeqCst);
    let outcome = consumer.process_batch(&batch).await.unwrap();
    assert_eq!(outcome.next_offset, Some(1));
    let rows = outbox(&mut conn).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].2.as_str()), ("rental.slow", "slow"));
}

#[dionysus::consume(topic = "v8_flows", event = "rental_faulty_updated", in_transaction, error_events)]
async fn faulty(ctx: &mut Context<'_>, rental: RentalIn) -> dionysus::Result<()> {
    ctx.reply(Reply::event("rental.faulty", &json!({})).on(REPLIES));
    if rental.name == "refuse" {
        return Err(dionysus::Error::app(format!("cannot take rental {}", rental.synced_id)));
    }
    Ok(())
}

/// A handler declared with `error_events` that fails inside the transaction: its message
/// goes to the dead-letter topic, and an `event.error.<event>` error event with the error,
/// the original value and its meta is written with the offset past it (on the cause's
/// topic); the failed handler's reply is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_transaction_failure_writes_an_error_event_with_its_cause() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let cause = rental_event(4, "rental_faulty_updated", 9, "refuse");
    let outcome = consumer.process_batch(std::slice::from_ref(&cause)).await.unwrap();
    assert_eq!(outcome.dead_letters.len(), 1);
    assert_eq!(outcome.next_offset, Some(5));

    let mut conn = db.connection().await;
    let rows = outbox(&mut conn).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (event, topic, key, value) = &rows[0];
    assert_eq!(
        (event.as_str(), topic.as_str(), key.as_str()),
        ("event.error.rental_faulty_updated", TOPIC, "Rental:9")
    );
    let record = &value["message"][0]["data"][0];
    assert_eq!(value["message"][0]["model_name"], dionysus::consumer::ERROR_EVENT_MODEL);
    assert_eq!(record["error"]["reason"], "handler_failed");
    assert!(record["error"]["message"].as_str().unwrap().contains("cannot take rental 9"), "{record}");
    assert!(record["error"]["handler"].as_str().unwrap().ends_with("flows::faulty"), "{record}");
    let original: Value = serde_json::from_slice(cause.payload.as_deref().unwrap()).unwrap();
    assert_eq!(record["payload"], original);
    assert_eq!(record["meta"], json!({"message_id": "m-4"}));
    assert_eq!(value["meta"]["cause"]["offset"], 4);

    // Delivered again: the offset is stored past it, nothing more is written.
    consumer.process_batch(std::slice::from_ref(&cause)).await.unwrap();
    assert_eq!(outbox(&mut conn).await.len(), 1);
}

#[dionysus::consume(topic = "v8_flows", event = "rental_late_updated")]
async fn late(_ctx: &mut Context<'_>, rental: RentalIn) -> Result<Vec<Reply>, String> {
    if rental.name == "refuse" {
        return Err(format!("rental {} refused after the commit", rental.synced_id));
    }
    Ok(vec![
        Reply::event("rental.late", &json!({"n": 1})).on(REPLIES),
        Reply::event("rental.late", &json!({"n": 2})).on(REPLIES).model("Late"),
    ])
}

/// Handlers run after the commit write their replies right after they return, and, with
/// the consumer's `error_events`, an error event when they fail — on the configured topic.
#[tokio::test(flavor = "multi_thread")]
async fn after_commit_handlers_reply_and_report_failures() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true).error_events(true).error_events_topic(REPLIES));
    consumer
        .process_batch(&[
            rental_event(0, "rental_late_updated", 1, "fine"),
            rental_event(1, "rental_late_updated", 2, "refuse"),
        ])
        .await
        .unwrap();
    let mut conn = db.connection().await;
    let rows = outbox(&mut conn).await;
    let summary: Vec<(&str, &str, &Value)> = rows
        .iter()
        .map(|(event, topic, _, value)| (event.as_str(), topic.as_str(), &value["message"][0]["model_name"]))
        .collect();
    assert_eq!(
        summary,
        [
            ("rental.late", REPLIES, &json!("Rental")),
            ("rental.late", REPLIES, &json!("Late")),
            ("event.error.rental_late_updated", REPLIES, &json!(dionysus::consumer::ERROR_EVENT_MODEL)),
        ]
    );
    let error = &rows[2].3["message"][0]["data"][0]["error"];
    assert!(error["message"].as_str().unwrap().contains("rental 2 refused after the commit"), "{error}");
}

/// An error events topic that is not declared fails the build, with the declared ones.
#[test]
fn an_undeclared_error_events_topic_fails_the_build() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(replica_db());
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    let error = dionysus::consumer::Consumer::builder(config)
        .pool(db.pool(1))
        .replicas(crate::consumer_models::replicas())
        .error_events_topic("v8_nowhere")
        .build()
        .err()
        .unwrap();
    let text = error.to_string();
    assert!(text.contains("`v8_nowhere`, which is not a declared topic"), "{text}");
}

#[dionysus::consume(topic = "v8_flows", event = "rental_echoed_updated", in_transaction)]
async fn echo(ctx: &mut Context<'_>, rental: RentalIn) -> dionysus::Result<Reply> {
    Ok(Reply::event("rental.echoed", &json!({"id": rental.synced_id, "offset": ctx.offset()})).on(REPLIES))
}

/// Through the relay of the consuming service, a reply reaches the broker once, with its
/// key and its cause in `meta`.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_reaches_the_broker_once() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let spec = dionysus::kafka::TopicSpec { name: REPLIES.to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    let id = chrono::Utc::now().timestamp_micros();
    let batch = [rental_event(0, "rental_echoed_updated", id, "echo")];
    consumer.process_batch(&batch).await.unwrap();
    consumer.process_batch(&batch).await.unwrap();

    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    // The relay of a service that declares the reply topic.
    let registry = Registry::new([<FlowReplies as Topic>::DECLARATION, <Flows as Topic>::DECLARATION], []);
    let relay = Relay::builder(config).registry(registry).worker_prefix(unique_name("w")).build().unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(report.published, 1, "{report:?}");
    relay.drain().await.unwrap();

    let reader: StreamConsumer =
        dionysus_tests::consumer_config(&kafka, &unique_name("reply_reader")).create().unwrap();
    reader.subscribe(&[REPLIES]).unwrap();
    let key = format!("Rental:{id}");
    let mut stream = reader.stream();
    let mut seen = Vec::new();
    // Earlier runs' replies are on the topic too; this run's carry its key.
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        let message = message.unwrap();
        if message.key() == Some(key.as_bytes()) {
            seen.push(serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap());
        }
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["message"][0]["data"][0], json!({"id": id, "offset": 0}));
    assert_eq!(seen[0]["meta"]["cause"]["key"], key);
}

/// Each stage of a message has its span: `dionysus.decode` and `dionysus.handle` (naming the
/// handler) in the consumer, `dionysus.encode` and `dionysus.publish` in the relay.
///
/// Tracing caches per callsite whether anyone listens, and other tests of this binary hit the
/// same callsites concurrently with no subscriber on their thread; so the assertions run in a
/// child process of this binary where this test runs alone.
#[test]
fn the_stages_of_a_message_have_spans() {
    const CHILD: &str = "DIONYSUS_TEST_FLOW_SPANS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        runtime.block_on(stage_spans());
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["flows::the_stages_of_a_message_have_spans", "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn stage_spans() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Each new span: its name and its fields as text.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(String, String)>>>);
    struct Fields<'a>(&'a mut String);
    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_new_span(
            &self,
            attributes: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = String::new();
            attributes.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push((attributes.metadata().name().to_owned(), fields));
        }
    }
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone())).unwrap();

    let db = replica_db().await;
    let kafka = kafka_config();
    let spec = dionysus::kafka::TopicSpec { name: REPLIES.to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    consumer.process_batch(&[rental_event(0, "rental_echoed_updated", 5, "echo")]).await.unwrap();
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka;
    let registry = Registry::new([<FlowReplies as Topic>::DECLARATION, <Flows as Topic>::DECLARATION], []);
    let relay = Relay::builder(config).registry(registry).worker_prefix(unique_name("w")).build().unwrap();
    assert_eq!(relay.drain().await.unwrap().published, 1);

    let spans = capture.0.lock().unwrap().clone();
    let named = |name: &str| {
        spans.iter().filter(|(span, _)| span == name).map(|(_, fields)| fields.clone()).collect::<Vec<_>>()
    };
    let decode = named("dionysus.decode");
    assert!(decode.iter().any(|fields| fields.contains("messages=1")), "{spans:?}");
    let handle = named("dionysus.handle");
    assert!(handle.iter().any(|fields| fields.contains("flows::echo") && fields.contains("offset=0")), "{spans:?}");
    let encode = named("dionysus.encode");
    assert!(encode.iter().any(|fields| fields.contains("rows=1")), "{spans:?}");
    let publish = named("dionysus.publish");
    assert!(publish.iter().any(|fields| fields.contains(REPLIES)), "{spans:?}");
}
