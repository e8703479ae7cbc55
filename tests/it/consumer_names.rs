//! Replica declarations beyond the default names, against real PostgreSQL through
//! `Consumer::process_batch`: a model without `synced_updated_at` guarded by
//! `synced_created_at` (C-10), attribute names from the configuration and per replica
//! (C-11), and a cancel strategy of the model's own without a soft-delete column (C-13).
//! Each runs with local changes on (rows planned in Rust) and off (written blind).

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::replica::{Replica, ReplicaDescriptor, Replicas};
use dionysus::consumer::{Consumer, ConsumerBuilder, ConsumerError};
use dionysus::Config;
use dionysus_tests::TestDb;
use serde_json::{json, Value};

use crate::consumer_models::{at, instant, t};

diesel::table! {
    names_guests (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

#[dionysus::topic(name = "names_guests")]
pub struct Guests;
#[dionysus::topic(name = "names_units")]
pub struct Units;
#[dionysus::topic(name = "names_rooms")]
pub struct Rooms;
#[dionysus::topic(name = "names_orders")]
pub struct Orders;

/// No `synced_updated_at`: the guard compares with `synced_created_at` (C-10).
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = names_guests)]
#[consume(topic = "names_guests", model = "Guest")]
pub struct Guest {
    pub synced_id: i64,
    pub synced_created_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

diesel::table! {
    names_units (remote_id) {
        remote_id -> BigInt,
        remote_created_at -> Nullable<Timestamptz>,
        remote_updated_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        payload -> Nullable<Jsonb>,
        name -> Nullable<Text>,
    }
}

/// Names only the configuration gives meaning to (C-11, global names).
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = names_units)]
#[consume(topic = "names_units", model = "Unit")]
pub struct Unit {
    pub remote_id: i64,
    pub remote_created_at: Option<DateTime<Utc>>,
    pub remote_updated_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub payload: Option<Value>,
    pub name: Option<String>,
}

diesel::table! {
    names_rooms (remote_id) {
        remote_id -> BigInt,
        remote_updated_at -> Nullable<Timestamptz>,
        payload -> Nullable<Jsonb>,
        name -> Nullable<Text>,
    }
}

/// The same names given by the declaration itself (C-11, per replica): a struct key and
/// field flags.
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = names_rooms)]
#[consume(topic = "names_rooms", model = "Room", synced_updated_at = "remote_updated_at")]
pub struct Room {
    #[consume(synced_id)]
    pub remote_id: i64,
    pub remote_updated_at: Option<DateTime<Utc>>,
    #[consume(synced_data)]
    pub payload: Option<Value>,
    pub name: Option<String>,
}

diesel::table! {
    names_orders (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        status -> Text,
        name -> Nullable<Text>,
    }
}

/// A cancel strategy of the model's own, without a soft-delete column (C-13).
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = names_orders)]
#[consume(topic = "names_orders", model = "Order", cancel = set(column = "status", value = "cancelled"))]
pub struct Order {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub status: String,
    pub name: Option<String>,
}

const SCHEMA: &str = "
    CREATE TABLE names_guests (synced_id bigint PRIMARY KEY, synced_created_at timestamptz, name text);
    CREATE TABLE names_units (
        remote_id bigint PRIMARY KEY,
        remote_created_at timestamptz,
        remote_updated_at timestamptz,
        deleted_at timestamptz,
        payload jsonb,
        name text
    );
    CREATE TABLE names_rooms (remote_id bigint PRIMARY KEY, remote_updated_at timestamptz, payload jsonb, name text);
    CREATE TABLE names_orders (
        synced_id bigint PRIMARY KEY,
        synced_updated_at timestamptz,
        status text NOT NULL DEFAULT 'open',
        name text
    );
";

async fn names_db() -> TestDb {
    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(SCHEMA).await.unwrap();
    db
}

fn config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.kafka.client_id = "dionysus_test".to_owned();
    config
}

/// The configuration naming the `names_units` columns (C-11's global names).
fn remote_names(db: &TestDb) -> Config {
    let mut config = config(db);
    config.consumer.synced_id_attribute = "remote_id".to_owned();
    config.consumer.synced_created_at_attribute = "remote_created_at".to_owned();
    config.consumer.synced_updated_at_attribute = "remote_updated_at".to_owned();
    config.consumer.soft_deleted_at_attribute = "deleted_at".to_owned();
    config.consumer.synced_data_attribute = "payload".to_owned();
    config
}

fn builder(db: &TestDb, config: Config, replica: &'static ReplicaDescriptor, tracked: bool) -> ConsumerBuilder {
    Consumer::builder(config).pool(db.pool(2)).replicas(Replicas::new([replica])).handlers(false).local_changes(tracked)
}

/// One event on `topic`, at `offset` of partition 0.
fn event(topic: &str, offset: i64, event: &str, model: &str, data: Value) -> InboundMessage {
    let payload = json!({"message": [{"event": event, "model_name": model, "data": data}]});
    InboundMessage {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: None,
        payload: Some(payload.to_string().into_bytes()),
    }
}

/// The row of `table` whose `id_column` is `id`, as JSON.
async fn row(conn: &mut AsyncPgConnection, table: &str, id_column: &str, id: i64) -> Option<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        row: Value,
    }
    let sql = format!("SELECT to_jsonb(t) AS row FROM {table} t WHERE {id_column} = $1");
    let rows: Vec<Row> = diesel::sql_query(sql).bind::<diesel::sql_types::BigInt, _>(id).load(conn).await.unwrap();
    rows.into_iter().next().map(|row| row.row)
}

/// C-10: a model without `synced_updated_at` can be declared, and the guard then compares
/// the event time (`updated_at`, else `created_at`) with the local `synced_created_at`.
#[tokio::test(flavor = "multi_thread")]
async fn guard_uses_synced_created_at_without_synced_updated_at() {
    for tracked in [true, false] {
        let db = names_db().await;
        let mut conn = db.connection().await;
        let consumer = builder(&db, config(&db), Guest::DESCRIPTOR, tracked).build().unwrap();
        let guest = |offset, name: &str, data: Value| {
            let mut data = data;
            data["id"] = json!(1);
            data["name"] = json!(name);
            event("names_guests", offset, "guest_updated", "Guest", json!([data]))
        };
        consumer.process_batch(&[guest(0, "first", json!({"created_at": t(10)}))]).await.unwrap();
        // Older than the stored created_at: ignored, also when only updated_at says so.
        consumer.process_batch(&[guest(1, "older", json!({"updated_at": t(5), "created_at": t(20)}))]).await.unwrap();
        consumer.process_batch(&[guest(2, "older", json!({"created_at": t(9)}))]).await.unwrap();
        let stored = row(&mut conn, "names_guests", "synced_id", 1).await.unwrap();
        assert_eq!((stored["name"].clone(), instant(&stored["synced_created_at"])), (json!("first"), at(10)));
        // Not older (ties apply): applied.
        consumer.process_batch(&[guest(3, "tie", json!({"updated_at": t(10), "created_at": t(10)}))]).await.unwrap();
        assert_eq!(row(&mut conn, "names_guests", "synced_id", 1).await.unwrap()["name"], "tie", "tracked {tracked}");
        consumer.process_batch(&[guest(4, "newer", json!({"updated_at": t(30), "created_at": t(10)}))]).await.unwrap();
        assert_eq!(row(&mut conn, "names_guests", "synced_id", 1).await.unwrap()["name"], "newer", "tracked {tracked}");
    }
}

/// C-11 through the configuration: with every `*_attribute` renamed, a replica that uses
/// those names has its id, timestamps, payload and soft delete there; a timestamp of a
/// configured name is set to NULL when the payload lacks its key; the guard compares with
/// the configured `synced_updated_at` column.
#[tokio::test(flavor = "multi_thread")]
async fn configured_attribute_names_are_used() {
    for tracked in [true, false] {
        let db = names_db().await;
        let mut conn = db.connection().await;
        let consumer = builder(&db, remote_names(&db), Unit::DESCRIPTOR, tracked).build().unwrap();
        let unit =
            |offset, event_name: &str, data: Value| event("names_units", offset, event_name, "Unit", json!([data]));
        let created = json!({"id": 1, "name": "first", "created_at": t(1), "updated_at": t(10)});
        consumer.process_batch(&[unit(0, "unit_created", created)]).await.unwrap();
        let stored = row(&mut conn, "names_units", "remote_id", 1).await.unwrap();
        assert_eq!(stored["name"], "first");
        assert_eq!((instant(&stored["remote_created_at"]), instant(&stored["remote_updated_at"])), (at(1), at(10)));
        assert_eq!(
            stored["payload"],
            json!({"synced_id": 1, "synced_created_at": t(1), "synced_updated_at": t(10), "name": "first"})
        );

        let stale = json!({"id": 1, "name": "stale", "updated_at": t(9)});
        consumer.process_batch(&[unit(1, "unit_updated", stale)]).await.unwrap();
        assert_eq!(row(&mut conn, "names_units", "remote_id", 1).await.unwrap()["name"], "first", "tracked {tracked}");

        // No created_at key: the configured created_at column becomes NULL (C-11).
        let update = json!({"id": 1, "name": "second", "updated_at": t(11)});
        consumer.process_batch(&[unit(2, "unit_updated", update)]).await.unwrap();
        let stored = row(&mut conn, "names_units", "remote_id", 1).await.unwrap();
        assert_eq!(stored["name"], "second");
        assert_eq!(stored["remote_created_at"], Value::Null, "tracked {tracked}");

        // The configured soft-delete column takes the default cancel strategy.
        consumer.process_batch(&[unit(3, "unit_destroyed", json!({"id": 1, "updated_at": t(12)}))]).await.unwrap();
        let stored = row(&mut conn, "names_units", "remote_id", 1).await.unwrap();
        assert_eq!(instant(&stored["deleted_at"]), at(12), "tracked {tracked}");
    }
}

/// C-11 per replica: `synced_updated_at = "…"` and field flags name the columns under the
/// default configuration.
#[tokio::test(flavor = "multi_thread")]
async fn declared_attribute_names_are_used() {
    for tracked in [true, false] {
        let db = names_db().await;
        let mut conn = db.connection().await;
        let consumer = builder(&db, config(&db), Room::DESCRIPTOR, tracked).build().unwrap();
        let room = |offset, name: &str, at: i64| {
            event("names_rooms", offset, "room_updated", "Room", json!([{"id": 4, "name": name, "updated_at": t(at)}]))
        };
        consumer.process_batch(&[room(0, "first", 10)]).await.unwrap();
        consumer.process_batch(&[room(1, "stale", 9)]).await.unwrap();
        let stored = row(&mut conn, "names_rooms", "remote_id", 4).await.unwrap();
        assert_eq!((stored["name"].clone(), instant(&stored["remote_updated_at"])), (json!("first"), at(10)));
        assert_eq!(stored["payload"], json!({"synced_id": 4, "synced_updated_at": t(10), "name": "first"}));
    }
}

/// A replica whose synced id has no column under the configured names cannot be consumed:
/// building the consumer says which model and which name.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_without_a_synced_id_column_is_refused() {
    let db = names_db().await;
    let error = builder(&db, config(&db), Unit::DESCRIPTOR, true).build().err().expect("refused");
    assert!(matches!(error, ConsumerError::Replica(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("`Unit`") && message.contains("no column `synced_id`"), "{message}");
}

/// C-13: a `_destroyed` event on a model with a cancel strategy and no soft-delete column
/// keeps the row and applies the strategy; for an unknown id the row is created already
/// cancelled (C-14).
#[tokio::test(flavor = "multi_thread")]
async fn cancel_strategy_keeps_the_row() {
    for tracked in [true, false] {
        let db = names_db().await;
        let mut conn = db.connection().await;
        let consumer = builder(&db, config(&db), Order::DESCRIPTOR, tracked).build().unwrap();
        let order =
            |offset, event_name: &str, data: Value| event("names_orders", offset, event_name, "Order", json!([data]));
        consumer
            .process_batch(&[order(0, "order_created", json!({"id": 1, "name": "a", "updated_at": t(1)}))])
            .await
            .unwrap();
        assert_eq!(row(&mut conn, "names_orders", "synced_id", 1).await.unwrap()["status"], "open");
        let destroyed = json!({"id": 1, "name": "a, last", "updated_at": t(2)});
        let outcome = consumer.process_batch(&[order(1, "order_destroyed", destroyed)]).await.unwrap();
        let stored = row(&mut conn, "names_orders", "synced_id", 1).await.unwrap();
        assert_eq!((stored["status"].clone(), stored["name"].clone()), (json!("cancelled"), json!("a, last")));
        if tracked {
            assert_eq!(outcome.events[0].local_changes[0].changes["status"], json!(["open", "cancelled"]));
        }
        consumer.process_batch(&[order(2, "order_destroyed", json!({"id": 2, "updated_at": t(2)}))]).await.unwrap();
        assert_eq!(row(&mut conn, "names_orders", "synced_id", 2).await.unwrap()["status"], "cancelled");
        // A stale destroy changes nothing.
        consumer.process_batch(&[order(3, "order_updated", json!({"id": 3, "updated_at": t(5)}))]).await.unwrap();
        consumer.process_batch(&[order(4, "order_destroyed", json!({"id": 3, "updated_at": t(4)}))]).await.unwrap();
        assert_eq!(
            row(&mut conn, "names_orders", "synced_id", 3).await.unwrap()["status"],
            "open",
            "tracked {tracked}"
        );
    }
}
