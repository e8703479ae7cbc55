//! Replica models and helpers shared by the consumer tests: the vectors' local models
//! (`Rental` with soft delete by `synced_canceled_at`, sideloaded `Booking`, `Tax`,
//! `Account`, and a hard-destroying `Client`), their tables, and a consumer over them.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::consumer::{Consumer, InboundMessage, Notification, UnknownModel};
use dionysus::replica::{Replica, Replicas};
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
    let mut config = dionysus::Config { database_url: db.url.clone(), ..dionysus::Config::default() };
    config.kafka.client_id = "dionysus_test".to_owned();
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let builder = Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(replicas())
        .unknown_model(UnknownModel::DeadLetter)
        .handlers(false)
        .subscribe(move |notification| {
            let entry = match notification {
                Notification::Batch(events) => {
                    ("batch".to_owned(), Value::Array(events.iter().map(|e| e.to_json()).collect()))
                }
                Notification::Event(event) => ("event".to_owned(), event.to_json()),
            };
            recorder.lock().unwrap().push(entry);
        });
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
    dionysus::envelope::parse_timestamp(value)
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
