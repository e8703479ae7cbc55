//! Replica models and helpers shared by the consumer tests: the vectors' local models
//! (`Rental` with soft delete by `synced_canceled_at`, sideloaded `Booking`, `Tax`,
//! `Account`, and a hard-destroying `Client`), their tables, and a consumer over them.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::{Consumer, Notification};
use dionysus_tests::TestDb;
use serde_json::{json, Value};

diesel::table! {
    rentals (id) {
        id -> BigInt,
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_canceled_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        name -> Nullable<Text>,
        rental_type -> Nullable<Text>,
        synced_account_id -> Nullable<BigInt>,
        synced_tax_id -> Nullable<BigInt>,
        synced_booking_ids -> Nullable<Array<BigInt>>,
    }
}

diesel::table! {
    bookings (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        start_at -> Nullable<BigInt>,
        synced_rental_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    taxes (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        name -> Nullable<Text>,
    }
}

diesel::table! {
    accounts (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        name -> Nullable<Text>,
    }
}

diesel::table! {
    clients (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

/// The vectors' topic (a consumer checks that the topics it reads are declared).
#[dionysus::topic(name = "v8_rentals")]
pub struct VectorRentals;

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v8_rentals", model = "Rental", soft_delete = "synced_canceled_at")]
pub struct Rental {
    #[consume(skip)]
    pub id: i64,
    pub synced_id: i64,
    pub synced_created_at: Option<DateTime<Utc>>,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_canceled_at: Option<DateTime<Utc>>,
    pub synced_data: Option<Value>,
    pub name: Option<String>,
    #[consume(from = "type")]
    pub rental_type: Option<String>,
    pub synced_account_id: Option<i64>,
    pub synced_tax_id: Option<i64>,
    pub synced_booking_ids: Option<Vec<i64>>,
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = bookings)]
#[consume(topic = "v8_rentals", model = "Booking")]
pub struct Booking {
    pub synced_id: i64,
    pub synced_created_at: Option<DateTime<Utc>>,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_data: Option<Value>,
    pub start_at: Option<i64>,
    pub synced_rental_id: Option<i64>,
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = taxes)]
#[consume(topic = "v8_rentals", model = "Tax")]
pub struct Tax {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_data: Option<Value>,
    pub name: Option<String>,
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = accounts)]
#[consume(topic = "v8_rentals", model = "Account")]
pub struct Account {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_data: Option<Value>,
    pub name: Option<String>,
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = clients)]
#[consume(topic = "v8_rentals", model = "Client")]
pub struct Client {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

pub const SCHEMA: &str = "
    CREATE TABLE rentals (
        id bigserial PRIMARY KEY,
        synced_id bigint NOT NULL UNIQUE,
        synced_created_at timestamptz,
        synced_updated_at timestamptz,
        synced_canceled_at timestamptz,
        synced_data jsonb,
        name text,
        rental_type text,
        synced_account_id bigint,
        synced_tax_id bigint,
        synced_booking_ids bigint[]
    );
    CREATE TABLE bookings (
        synced_id bigint PRIMARY KEY,
        synced_created_at timestamptz,
        synced_updated_at timestamptz,
        synced_data jsonb,
        start_at bigint,
        synced_rental_id bigint
    );
    CREATE TABLE taxes (synced_id bigint PRIMARY KEY, synced_updated_at timestamptz, synced_data jsonb, name text);
    CREATE TABLE accounts (synced_id bigint PRIMARY KEY, synced_updated_at timestamptz, synced_data jsonb, name text);
    CREATE TABLE clients (synced_id bigint PRIMARY KEY, synced_updated_at timestamptz, name text);
";

pub const TOPIC: &str = "v8_rentals";

/// The vectors' models.
pub fn replicas() -> Replicas {
    Replicas::new([Rental::DESCRIPTOR, Booking::DESCRIPTOR, Tax::DESCRIPTOR, Account::DESCRIPTOR, Client::DESCRIPTOR])
}

/// `2024-01-01T00:00:00Z + n s`, the vectors' `T(n)`.
pub fn t(n: i64) -> String {
    let base: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
    (base + chrono::Duration::seconds(n)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A test database with the framework migrations and the replica tables.
pub async fn replica_db() -> TestDb {
    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(SCHEMA).await.unwrap();
    db
}

/// What subscribers saw: `("batch", [events])` and `("event", event)` in order.
pub type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A consumer over the vectors' models with an event-bus recorder.
pub fn consumer(
    db: &TestDb,
    configure: impl FnOnce(dionysus::consumer::ConsumerBuilder) -> dionysus::consumer::ConsumerBuilder,
) -> (Consumer, Seen) {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka.client_id = "dionysus_test".to_owned();
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let builder = Consumer::builder(config).pool(db.pool(4)).replicas(replicas()).handlers(false).subscribe(
        move |notification| {
            let entry = match notification {
                Notification::Batch(events) => {
                    ("batch".to_owned(), Value::Array(events.iter().map(|e| e.to_json()).collect()))
                }
                Notification::Event(event) => ("event".to_owned(), event.to_json()),
            };
            recorder.lock().unwrap().push(entry);
        },
    );
    (configure(builder).build().unwrap(), seen)
}

/// A message of partition 0 of the vectors' topic.
pub fn message(offset: i64, key: Option<&str>, payload: Option<&[u8]>) -> InboundMessage {
    InboundMessage {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset,
        key: key.map(|k| k.as_bytes().to_vec()),
        payload: payload.map(<[u8]>::to_vec),
    }
}

/// A message carrying one event.
pub fn event(offset: i64, event: &str, model: &str, data: Value) -> InboundMessage {
    let payload = json!({"message": [{"event": event, "model_name": model, "data": data}]});
    message(offset, None, Some(payload.to_string().as_bytes()))
}

/// Every row of a table as JSON (timestamps as PostgreSQL writes them), by synced_id.
pub async fn rows(conn: &mut AsyncPgConnection, table: &str) -> Vec<Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        row: Value,
    }
    let sql = format!("SELECT to_jsonb(t) AS row FROM {table} t ORDER BY synced_id");
    diesel::sql_query(sql).load::<Row>(conn).await.unwrap().into_iter().map(|r| r.row).collect()
}

/// The single row of a table with this synced_id.
pub async fn row(conn: &mut AsyncPgConnection, table: &str, synced_id: i64) -> Option<Value> {
    rows(conn, table).await.into_iter().find(|row| row["synced_id"] == synced_id)
}

/// A timestamp column as an instant (`None` for NULL).
pub fn instant(value: &Value) -> Option<DateTime<Utc>> {
    dionysus::__internals::wire::envelope::parse_timestamp(value)
}

/// `T(n)` as an instant.
pub fn at(n: i64) -> Option<DateTime<Utc>> {
    instant(&Value::String(t(n)))
}

/// Inserts a local row (the vectors' `local_state`).
pub async fn seed(conn: &mut AsyncPgConnection, table: &str, row: Value) {
    let sql = format!(
        "INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1 || jsonb_build_object('id', nextval(pg_get_serial_sequence('{table}', 'id'))))"
    );
    let sql = if table == "rentals" {
        sql
    } else {
        format!("INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1)")
    };
    diesel::sql_query(sql).bind::<diesel::sql_types::Jsonb, _>(row).execute(conn).await.unwrap();
}

static HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[dionysus::consume(topic = "v8_rentals", event = "rental_recreated")]
async fn count_recreated(event: &dionysus::consumer::ConsumedEvent) -> dionysus::Result<()> {
    HANDLED.fetch_add(event.transformed_data.len(), std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// `#[dionysus::consume]` handlers run after the commit, for their topic and event only;
/// `rental_recreated` counts as a creation (C-7: classified by suffix).
#[tokio::test(flavor = "multi_thread")]
async fn handlers_run_after_commit_for_their_event() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.handlers(true));
    consumer
        .process_batch(&[
            event(0, "rental_recreated", "Rental", json!([{"id": 1, "name": "again"}, {"id": 2}])),
            event(1, "rental_updated", "Rental", json!([{"id": 3}])),
        ])
        .await
        .unwrap();
    assert_eq!(std::sync::atomic::AtomicUsize::load(&HANDLED, std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(row(&mut db.connection().await, "rentals", 1).await.unwrap()["name"], "again");
}

/// Without listeners for local changes, rows are written blind (typed arrays per column, or
/// `jsonb` for a group with an array column) and PostgreSQL applies the rules the planned
/// path applies in Rust: the timestamp guard, a repeated cancel keeping the first cancel
/// time, a guarded destroy, and a sideload under an applied root.
#[tokio::test(flavor = "multi_thread")]
async fn blind_writes_follow_the_same_rules() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.local_changes(false));
    let rental = |offset, name: &str, at: i64, links: Value| {
        event(offset, "rental_updated", "Rental", json!([{"links": links, "id": 1, "name": name, "updated_at": t(at)}]))
    };
    // An array link puts the row in a `jsonb` group; plain rows go as typed arrays.
    consumer.process_batch(&[rental(0, "first", 10, json!({"bookings": [7, 8]}))]).await.unwrap();
    consumer.process_batch(&[rental(1, "typed", 11, json!({}))]).await.unwrap();
    consumer.process_batch(&[rental(2, "stale", 9, json!({"bookings": [9]}))]).await.unwrap();
    let mut conn = db.connection().await;
    let rental_row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!((&rental_row["name"], &rental_row["synced_booking_ids"]), (&json!("typed"), &json!([7, 8])));

    // Cancel twice: the first cancel time stays.
    let cancel = |offset, at: i64| event(offset, "rental_destroyed", "Rental", json!([{"id": 1, "updated_at": t(at)}]));
    consumer.process_batch(&[cancel(3, 12)]).await.unwrap();
    consumer.process_batch(&[cancel(4, 13)]).await.unwrap();
    let canceled = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(instant(&canceled["synced_canceled_at"]), at(12));

    // Hard destroy is guarded: an older destroy leaves the row, a newer one removes it.
    consumer
        .process_batch(&[event(5, "client_updated", "Client", json!([{"id": 5, "name": "Rich", "updated_at": t(20)}]))])
        .await
        .unwrap();
    let destroy =
        |offset, at: i64| event(offset, "client_destroyed", "Client", json!([{"id": 5, "updated_at": t(at)}]));
    consumer.process_batch(&[destroy(6, 19)]).await.unwrap();
    assert_eq!(rows(&mut conn, "clients").await.len(), 1, "older destroy ignored");
    consumer.process_batch(&[destroy(7, 21)]).await.unwrap();
    assert!(rows(&mut conn, "clients").await.is_empty());
}
