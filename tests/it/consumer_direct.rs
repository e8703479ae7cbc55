//! The lean path of a batch no one watches (`Consumer::process_batch_unobserved`, as the
//! Kafka loop runs batches) against the general path (`Consumer::process_batch`), both with
//! rows written blind (PostgreSQL deciding the timestamp guard) and with every row read and
//! planned first (local changes on): the same messages give the same rows, dead letters and
//! offsets, whichever path takes them.

use chrono::{DateTime, Utc};
use diesel_async::SimpleAsyncConnection;
use dionysus::__internals::consumer::BatchOutcome;
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::replica::{Replica, ReplicaDescriptor, Replicas};
use dionysus::consumer::Consumer;
use dionysus_tests::TestDb;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::consumer_models::{rows, t};

diesel::table! {
    gadgets_general (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_canceled_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
        amount -> Nullable<Integer>,
        price -> Nullable<Double>,
        active -> Nullable<Bool>,
        synced_owner_id -> Nullable<BigInt>,
        seen_at -> Nullable<Timestamptz>,
        label -> Nullable<Text>,
    }
}

diesel::table! {
    widgets_general (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        name -> Nullable<Text>,
        synced_owner_id -> Nullable<BigInt>,
    }
}

#[dionysus::topic(name = "direct_gadgets")]
pub struct DirectGadgets;

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = gadgets_general)]
#[consume(topic = "direct_gadgets", model = "Gadget", soft_delete = "synced_canceled_at")]
pub struct Gadget {
    pub synced_id: i64,
    pub synced_created_at: Option<DateTime<Utc>>,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_canceled_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub amount: Option<i32>,
    pub price: Option<f64>,
    pub active: Option<bool>,
    pub synced_owner_id: Option<i64>,
    pub seen_at: Option<DateTime<Utc>>,
    #[consume(from = "kind")]
    pub label: Option<String>,
}

/// A model keeping every attribute in `synced_data`.
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = widgets_general)]
#[consume(topic = "direct_gadgets", model = "Sprocket")]
pub struct Sprocket {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_data: Option<Value>,
    pub name: Option<String>,
    pub synced_owner_id: Option<i64>,
}

const WIDGET_COLUMNS: &str = "synced_id bigint NOT NULL UNIQUE, synced_updated_at timestamptz, synced_data jsonb,
    name text, synced_owner_id bigint";

const COLUMNS: &str = "synced_id bigint NOT NULL UNIQUE, synced_created_at timestamptz, synced_updated_at timestamptz,
    synced_canceled_at timestamptz, name text, amount integer, price double precision, active boolean,
    synced_owner_id bigint, seen_at timestamptz, label text";

const TOPIC: &str = "direct_gadgets";

/// The general consumer (into `gadgets_general`), the lean one (into `gadgets_direct`) and
/// one computing local changes, which reads and plans every row before writing it (into
/// `gadgets_exact`), each its own group.
struct Pair {
    db: TestDb,
    general: Consumer,
    lean: Consumer,
    exact: Consumer,
}

async fn pair(
    remove_duplicates: bool,
    configure: impl Fn(dionysus::consumer::ConsumerBuilder) -> dionysus::consumer::ConsumerBuilder,
) -> Pair {
    let db = TestDb::migrated().await;
    db.connection()
        .await
        .batch_execute(&format!(
            "CREATE TABLE gadgets_general ({COLUMNS}); CREATE TABLE gadgets_direct ({COLUMNS});
             CREATE TABLE gadgets_exact ({COLUMNS}); CREATE TABLE widgets_general ({WIDGET_COLUMNS});
             CREATE TABLE widgets_direct ({WIDGET_COLUMNS}); CREATE TABLE widgets_exact ({WIDGET_COLUMNS});"
        ))
        .await
        .unwrap();
    // The models' replicas, written into the tables of the given suffix.
    let into = |suffix: &str| -> [&'static ReplicaDescriptor; 2] {
        let table = |name: &str| &*Box::leak(format!("{name}_{suffix}").into_boxed_str());
        [
            Box::leak(Box::new(ReplicaDescriptor { table: table("gadgets"), ..*Gadget::DESCRIPTOR })),
            Box::leak(Box::new(ReplicaDescriptor { table: table("widgets"), ..*Sprocket::DESCRIPTOR })),
        ]
    };
    let build = |group: &str, replicas: [&'static ReplicaDescriptor; 2], local_changes: bool| {
        let mut config = dionysus::Config::default();
        config.database_url = db.url.clone();
        config.kafka.group_id = Some(group.to_owned());
        config.consumer.remove_duplicates = remove_duplicates;
        let builder = Consumer::builder(config).pool(db.pool(2)).replicas(Replicas::new(replicas)).handlers(false);
        let builder = if local_changes { builder.local_changes(true) } else { builder };
        configure(builder).build().unwrap()
    };
    let general = build("direct_general", [Gadget::DESCRIPTOR, Sprocket::DESCRIPTOR], false);
    let lean = build("direct_lean", into("direct"), false);
    let exact = build("direct_exact", into("exact"), true);
    Pair { db, general, lean, exact }
}

fn message(partition: i32, offset: i64, payload: Option<Vec<u8>>) -> InboundMessage {
    InboundMessage {
        topic: TOPIC.to_owned(),
        partition,
        offset,
        key: Some(format!("Gadget:{offset}").into_bytes()),
        payload,
    }
}

fn envelope(events: Value) -> Option<Vec<u8>> {
    Some(json!({"message": events}).to_string().into_bytes())
}

fn created(id: i64, name: &str, updated: i64) -> Value {
    json!({"links": {"owner": id % 3}, "id": id, "name": name, "amount": id, "price": 2.5, "active": true,
           "kind": "box", "seen_at": t(5), "created_at": t(0), "updated_at": t(updated)})
}

/// `record` as a model without timestamps sends it: no `created_at`, no `updated_at`.
fn without_times(mut record: Value) -> Value {
    if let Value::Object(fields) = &mut record {
        fields.remove("created_at");
        fields.remove("updated_at");
    }
    record
}

/// Dead letters (offset, reason, error), stored offset, messages already applied.
type Summary = (Vec<(i64, &'static str, String)>, Option<i64>, usize);

/// What the outcome says besides the events: dead letters (offset, reason, error), stored
/// offset, already applied.
fn summary(outcome: &BatchOutcome) -> Summary {
    let dead = outcome.dead_letters.iter().map(|dead| (dead.message.offset, dead.reason, dead.error.clone())).collect();
    (dead, outcome.next_offset, outcome.already_applied)
}

impl Pair {
    /// Applies `batch` through both paths and checks that they agree; whether the lean
    /// consumer took its own path (it reports no events then).
    async fn apply(&self, batch: &[InboundMessage]) -> bool {
        let general = self.general.process_batch(batch).await.unwrap();
        let lean = self.lean.process_batch_unobserved(batch).await.unwrap();
        let exact = self.exact.process_batch(batch).await.unwrap();
        assert_eq!(summary(&general), summary(&lean));
        assert_eq!(summary(&exact), summary(&lean), "as when every row is read first");
        let mut conn = self.db.connection().await;
        for table in ["gadgets", "widgets"] {
            let exact = apply_times_hidden(rows(&mut conn, &format!("{table}_exact")).await);
            assert_eq!(apply_times_hidden(rows(&mut conn, &format!("{table}_general")).await), exact);
            assert_eq!(apply_times_hidden(rows(&mut conn, &format!("{table}_direct")).await), exact);
        }
        lean.events.is_empty() && !general.events.is_empty()
    }
}

/// `rows` with the times the consumer took from its own clock (a destroy without a time
/// cancels the row at the time it is applied) in place of a placeholder: the two paths apply
/// a batch one after the other, milliseconds apart. The messages' own times are in 2024.
fn apply_times_hidden(rows: Vec<Value>) -> Vec<Value> {
    let hide = |value: &mut Value| {
        let applied = value
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .is_some_and(|time| chrono::Datelike::year(&time) > 2024);
        if applied {
            *value = Value::String("(the time the batch was applied)".to_owned());
        }
    };
    rows.into_iter()
        .map(|mut row| {
            if let Value::Object(columns) = &mut row {
                columns.values_mut().for_each(hide);
            }
            row
        })
        .collect()
}

/// A clean batch goes the lean way and writes what the general path writes, guard included,
/// `synced_data` too.
#[tokio::test(flavor = "multi_thread")]
async fn a_usual_batch_is_written_straight_from_its_messages() {
    let pair = pair(true, |builder| builder).await;
    let first: Vec<InboundMessage> = (0..5)
        .map(|i| {
            message(
                0,
                i,
                envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [created(i, "a", 10)]}])),
            )
        })
        .collect();
    assert!(pair.apply(&first).await, "the lean path took the batch");
    let widget = json!({"id": 1, "name": "w", "updated_at": t(3), "links": {"owner": 2}, "extra": {"a": [1, "<&>"]}});
    let widgets =
        [message(0, 5, envelope(json!([{"event": "sprocket_created", "model_name": "Sprocket", "data": [widget]}])))];
    assert!(pair.apply(&widgets).await, "the lean path took the batch");
    let stored = rows(&mut pair.db.connection().await, "widgets_direct").await;
    assert_eq!(stored[0]["synced_data"]["extra"], json!({"a": [1, "<&>"]}));
    // Older updates leave rows alone, newer ones apply; a row twice in the batch is written
    // in two rounds, the later message last.
    let second = vec![
        message(
            0,
            6,
            envelope(json!([{"event": "gadget_updated", "model_name": "Gadget", "data": [created(1, "older", 9)]}])),
        ),
        message(
            0,
            7,
            envelope(json!([{"event": "gadget_updated", "model_name": "Gadget", "data": [created(2, "newer", 11)]}])),
        ),
        message(
            0,
            8,
            envelope(json!([{"event": "gadget_updated", "model_name": "Gadget", "data": [created(3, "x", 12)]}])),
        ),
        message(
            0,
            9,
            envelope(json!([{"event": "gadget_renamed", "model_name": "Gadget", "data": [created(3, "y", 13)]}])),
        ),
        message(
            0,
            10,
            envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [created(3, "z", 12)]}])),
        ),
        message(0, 11, None),
    ];
    assert!(pair.apply(&second).await, "the lean path took the batch");
    let rows = rows(&mut pair.db.connection().await, "gadgets_direct").await;
    let names: Vec<&Value> = rows.iter().map(|row| &row["name"]).collect();
    assert_eq!(names, [&json!("a"), &json!("a"), &json!("newer"), &json!("z"), &json!("a")]);
    assert_eq!(rows[3]["synced_owner_id"], 0);
    assert_eq!(rows[3]["label"], "box");
}

/// A model without timestamps (payloads with neither `created_at` nor `updated_at`) is
/// written straight from its messages too: such a record applies over a stored row of any
/// time, which keeps its time, on every path.
#[tokio::test(flavor = "multi_thread")]
async fn records_without_times_are_written_straight_from_their_messages() {
    let pair = pair(false, |builder| builder).await;
    let gadget = |offset: i64, name: &str, updated: Option<i64>| {
        let record = match updated {
            Some(updated) => created(1, name, updated),
            None => without_times(created(1, name, 0)),
        };
        message(0, offset, envelope(json!([{"event": "gadget_updated", "model_name": "Gadget", "data": [record]}])))
    };
    assert!(pair.apply(&[gadget(0, "timed", Some(20))]).await, "the lean path took the batch");
    assert!(pair.apply(&[gadget(1, "timeless", None), gadget(2, "again", None)]).await, "the lean path took the batch");
    let stored = rows(&mut pair.db.connection().await, "gadgets_direct").await;
    assert_eq!(stored[0]["name"], "again");
    assert!(!stored[0]["synced_updated_at"].is_null(), "the stored time is kept: {stored:?}");
}

/// A batch with a message the lean path does not take goes the general way whole: a bad
/// record is dead-lettered as it always is.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusual_batch_goes_the_general_way() {
    let pair = pair(true, |builder| builder).await;
    let good = message(
        0,
        0,
        envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [created(1, "a", 10)]}])),
    );
    let mut bad_record = created(2, "b", 10);
    bad_record["amount"] = json!("many");
    let bad =
        message(0, 1, envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [bad_record]}])));
    assert!(!pair.apply(&[good, bad]).await, "the general path took the batch");
    let outcome = pair.lean.process_batch_unobserved(&[]).await.unwrap();
    assert_eq!(outcome, BatchOutcome::default());
}

/// A batch that starts before the stored offset (a replay) writes only the messages after
/// it, on the lean path too: the rows of the replayed messages are not written again.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_batch_is_applied_from_the_stored_offset() {
    let pair = pair(true, |builder| builder).await;
    let gadget = |offset: i64, name: &str, updated: i64| {
        message(
            0,
            offset,
            envelope(json!([{"event": "gadget_updated", "model_name": "Gadget", "data": [created(1, name, updated)]}])),
        )
    };
    assert!(pair.apply(&[gadget(0, "first", 10), gadget(1, "second", 11)]).await);
    // The stored row is changed behind the consumer's back: a replay that wrote the
    // replayed messages again would put "second" back.
    let mut conn = pair.db.connection().await;
    conn.batch_execute("UPDATE gadgets_general SET name = 'local'; UPDATE gadgets_direct SET name = 'local'")
        .await
        .unwrap();
    let replay = [gadget(0, "first", 10), gadget(1, "second", 11), gadget(2, "third", 9)];
    let outcome = pair.lean.process_batch_unobserved(&replay).await.unwrap();
    assert_eq!((outcome.already_applied, outcome.next_offset), (2, Some(3)));
    let names: Vec<Value> =
        rows(&mut conn, "gadgets_direct").await.into_iter().map(|row| row["name"].clone()).collect();
    assert_eq!(names, [json!("local")], "the older third message is refused by the guard, the replayed two not run");
}

/// The lean path's statements are prepared once per connection and kept (not prepared
/// again for every batch, a round trip each).
#[tokio::test(flavor = "multi_thread")]
async fn the_lean_path_keeps_its_statements_prepared() {
    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(&format!("CREATE TABLE gadgets_general ({COLUMNS})")).await.unwrap();
    let pool = db.pool(1);
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka.group_id = Some("kept".to_owned());
    let consumer = Consumer::builder(config)
        .pool(pool.clone())
        .replicas(Replicas::new([Gadget::DESCRIPTOR]))
        .handlers(false)
        .processing_mutex(true)
        .build()
        .unwrap();
    for offset in 0..3 {
        let batch = [message(
            0,
            offset,
            envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [created(offset, "a", 10)]}])),
        )];
        let outcome = consumer.process_batch_unobserved(&batch).await.unwrap();
        assert!(outcome.events.is_empty(), "the lean path took the batch");
    }
    #[derive(diesel::QueryableByName)]
    struct Kept {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let mut conn = pool.get().await.unwrap();
    let kept: Vec<Kept> =
        diesel_async::RunQueryDsl::load(diesel::sql_query("SELECT statement FROM pg_prepared_statements"), &mut *conn)
            .await
            .unwrap();
    let kept: Vec<String> = kept.into_iter().map(|kept| kept.statement).collect();
    for statement in [
        "INSERT INTO dionysus_consumer_offsets",
        "UPDATE dionysus_consumer_offsets",
        "pg_advisory_xact_lock",
        "INSERT INTO \"gadgets_general\"",
    ] {
        assert_eq!(
            kept.iter().filter(|kept| kept.contains(statement)).count(),
            1,
            "{statement} is prepared once and kept: {kept:#?}"
        );
    }
}

/// With someone watching (here an event-bus subscriber), events are reported as always.
#[tokio::test(flavor = "multi_thread")]
async fn a_watched_consumer_reports_its_events() {
    let pair = pair(true, |builder| builder.subscribe(|_| {})).await;
    let batch = [message(
        0,
        0,
        envelope(json!([{"event": "gadget_created", "model_name": "Gadget", "data": [created(1, "a", 10)]}])),
    )];
    let outcome = pair.lean.process_batch_unobserved(&batch).await.unwrap();
    assert_eq!(outcome.events.len(), 1);
}

fn time() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => (0i64..6).prop_map(|n| Some(json!(t(n)))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => (0i64..6).prop_map(|n| Some(json!(1_704_067_200 + n))),
        1 => (0i64..6).prop_map(|n| Some(json!(t(n).replace('T', " ").replace(".000Z", "")))),
        1 => Just(Some(json!("soon"))),
        1 => Just(Some(json!("2999-01-01T00:00:00Z"))),
    ]
}

fn value(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![6 => proptest::sample::select(values).prop_map(Some), 1 => Just(None), 1 => Just(Some(Value::Null))]
}

fn id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        12 => (1i64..6).prop_map(|n| Some(json!(n))),
        1 => (1i64..6).prop_map(|n| Some(json!(n.to_string()))),
        1 => Just(None),
        1 => Just(Some(json!("08"))),
        1 => Just(Some(json!(2.0))),
    ]
}

fn links() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        3 => (0i64..3).prop_map(|n| Some(json!({"owner": n}))),
        1 => (0i64..3).prop_map(|n| Some(json!({"owner": {"id": n, "type": "Owner"}}))),
        1 => Just(Some(json!({"owner": null}))),
        1 => Just(Some(json!({}))),
        1 => Just(Some(json!([1]))),
    ]
}

/// A record as producers send it, with the odd value of every kind.
fn record() -> impl Strategy<Value = Value> {
    let plain = (
        value(vec![json!("a"), json!("b<&>"), json!(7), json!(true), json!({"no": 1})]),
        value(vec![json!(1), json!(2.0), json!("3"), json!(" 4 "), json!(2.5), json!("x")]),
        value(vec![json!(1.5), json!(2), json!("2.25"), json!("y")]),
        value(vec![json!(true), json!(false), json!("true"), json!("yes")]),
        value(vec![json!("box"), json!(3)]),
        time(),
        (0u8..8),
    );
    (id(), time(), time(), time(), links(), plain).prop_map(
        |(id, created, updated, canceled, links, (name, amount, price, active, kind, seen, extra))| {
            let mut record = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    record.insert(key.to_owned(), value);
                }
            };
            put("links", links);
            put("id", id);
            put("created_at", created);
            put("updated_at", updated);
            put("canceled_at", canceled.filter(|_| extra % 4 == 0));
            put("name", name);
            put("amount", amount);
            put("price", price);
            put("active", active);
            put("kind", kind);
            put("seen_at", seen);
            match extra {
                1 => put("note", Some(json!("ignored"))),
                2 => put("owner", Some(json!({"id": 9}))),
                3 => put("synced_updated_at", Some(json!(t(4)))),
                5 => put("owner", Some(Value::Null)),
                _ => {}
            }
            Value::Object(record)
        },
    )
}

/// A record as producers usually send it, now and then from a model without timestamps.
fn usual_record() -> impl Strategy<Value = Value> {
    (1i64..6, 0i64..6, proptest::sample::select(vec!["a", "b", "c"]), 0i64..4, any::<bool>(), 0u8..4).prop_map(
        |(id, updated, name, owner, linked, times)| {
            let mut record = json!({"id": id, "name": name, "amount": owner, "price": 1.5, "active": linked,
                                    "kind": "box", "seen_at": t(1), "created_at": t(0), "updated_at": t(updated)});
            if linked {
                record["links"] = json!({"owner": owner});
            }
            if times == 0 {
                record = without_times(record);
            }
            record
        },
    )
}

/// A message: mostly one event of one record, sometimes several, an odd event or model, a
/// tombstone or bad JSON.
fn payload() -> impl Strategy<Value = Option<Vec<u8>>> {
    let kinds = vec![
        ("gadget_created", "Gadget"),
        ("gadget_created", "Gadget"),
        ("gadget_updated", "Gadget"),
        ("gadget_updated", "Gadget"),
        ("gadget_updated", "Gadget"),
        ("sprocket_updated", "Sprocket"),
        ("gadget_destroyed", "Gadget"),
        ("gadget_renamed", "Gadget"),
        ("ghost_created", "Ghost"),
        ("sprocket_created", "Sprocket"),
        ("sprocket_updated", "Sprocket"),
    ];
    let records = prop_oneof![3 => usual_record(), 1 => record()];
    let event = (proptest::sample::select(kinds), proptest::collection::vec(records, 1..3))
        .prop_map(|((event, model), data)| json!({"event": event, "model_name": model, "data": data}))
        .boxed();
    prop_oneof![
        30 => event.clone().prop_map(|event| envelope(json!([event]))),
        2 => proptest::collection::vec(event, 2..3).prop_map(|events| envelope(Value::Array(events))),
        1 => Just(None),
        1 => Just(Some(b"{\"message\":[".to_vec())),
        1 => Just(Some(b"null".to_vec())),
    ]
}

/// Batches of messages, one after the other on one partition, each with how many of the
/// messages before it come again at its start (a replay, as after a rebalance).
fn batches() -> impl Strategy<Value = Vec<(Vec<Option<Vec<u8>>>, usize)>> {
    let again = prop_oneof![3 => Just(0usize), 1 => 1usize..4];
    proptest::collection::vec((proptest::collection::vec(payload(), 1..6), again), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The key property: whatever the messages, both paths leave the same rows, dead
    /// letters and offsets, batch after batch (the guard reading what earlier batches left).
    #[test]
    fn both_paths_write_the_same_rows(batches in batches(), dedup in any::<bool>()) {
        use std::sync::OnceLock;
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
        runtime.block_on(async {
            let pair = pair(dedup, |builder| builder).await;
            let mut sent: Vec<InboundMessage> = Vec::new();
            for (batch, again) in batches {
                let mut messages = sent[sent.len().saturating_sub(again)..].to_vec();
                for payload in batch {
                    let next = message(0, sent.len() as i64 + 1, payload);
                    sent.push(next.clone());
                    messages.push(next);
                }
                pair.apply(&messages).await;
            }
        });
    }
}
