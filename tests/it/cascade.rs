//! Cascades: from a consumed batch, the service republishes its own records related to the
//! ids the batch carries — through the outbox, in the batch's transaction, each record once
//! per batch — and its relay publishes them like any change.
//!
//! The service consumes rentals from [`RENTALS`] into `replicated_cascade_rentals`, and owns
//! `CascadeRental` and `CascadeBooking` (which `belongs_to` it), the bookings published on
//! [`BOOKINGS`] with the rental as partition key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::{Consumer, ConsumerBuilder};
use dionysus::relay::Relay;
use dionysus::{Context, Registry, Topic};
use dionysus_tests::{kafka_config, unique_name, TestDb};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::Message;
use serde::Serialize;
use serde_json::{json, Value};

const RENTALS: &str = "v8_cascade_rentals";
const BOOKINGS: &str = "v8_cascade_bookings";

#[dionysus::topic(name = "v8_cascade_rentals")]
pub struct CascadeRentals;

#[dionysus::topic(name = "v8_cascade_bookings")]
pub struct CascadeBookings;

diesel::table! {
    cascade_rentals (id) {
        id -> BigInt,
        name -> Text,
    }
}

diesel::table! {
    cascade_bookings (id) {
        id -> BigInt,
        cascade_rental_id -> BigInt,
        note -> Text,
    }
}

diesel::table! {
    replicated_cascade_rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

diesel::joinable!(cascade_bookings -> cascade_rentals (cascade_rental_id));
diesel::allow_tables_to_appear_in_same_query!(cascade_rentals, cascade_bookings);

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = cascade_rentals)]
pub struct CascadeRental {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = cascade_bookings, belongs_to(CascadeRental))]
#[publish(topic = CascadeBookings, partition_key = "cascade_rental_id")]
pub struct CascadeBooking {
    pub id: i64,
    pub cascade_rental_id: i64,
    pub note: String,
}

/// The consumed rentals; each batch of them republishes the bookings of its rentals.
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = replicated_cascade_rentals)]
#[consume(topic = "v8_cascade_rentals", model = "CascadeRental", cascade(CascadeRental -> CascadeBooking))]
pub struct ReplicatedCascadeRental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

/// Payments name their rental in `rental_id`: their batches republish its bookings too.
#[dionysus::consume(
    topic = "v8_cascade_rentals",
    event = "payment_made",
    cascade(CascadeRental -> CascadeBooking, from = "rental_id")
)]
async fn payment_made(_ctx: &mut Context<'_>) -> dionysus::Result<()> {
    Ok(())
}

const SCHEMA: &str = "
    CREATE TABLE cascade_rentals (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE cascade_bookings (
        id bigint PRIMARY KEY,
        cascade_rental_id bigint NOT NULL REFERENCES cascade_rentals (id),
        note text NOT NULL
    );
    CREATE TABLE replicated_cascade_rentals (
        synced_id bigint PRIMARY KEY,
        synced_updated_at timestamptz,
        name text
    );
";

/// A database with the framework's tables, the service's own rentals `base + 1 …
/// base + 3` and their bookings: rental 1 has bookings `base + 11` and `base + 12`, rental 2
/// has `base + 21`, rental 3 none.
async fn service_db(base: i64) -> TestDb {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(SCHEMA).await.unwrap();
    let rentals: Vec<_> =
        (1..=3).map(|n| (cascade_rentals::id.eq(base + n), cascade_rentals::name.eq(format!("rental {n}")))).collect();
    diesel::insert_into(cascade_rentals::table).values(&rentals).execute(&mut conn).await.unwrap();
    let bookings: Vec<_> = [(11, 1), (12, 1), (21, 2)]
        .into_iter()
        .map(|(booking, rental)| {
            (
                cascade_bookings::id.eq(base + booking),
                cascade_bookings::cascade_rental_id.eq(base + rental),
                cascade_bookings::note.eq(format!("booking {booking}")),
            )
        })
        .collect();
    diesel::insert_into(cascade_bookings::table).values(&bookings).execute(&mut conn).await.unwrap();
    db
}

fn consumer(db: &TestDb, configure: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder) -> Consumer {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    let builder = Consumer::builder(config)
        .pool(db.pool(2))
        .replicas(Replicas::new([ReplicatedCascadeRental::DESCRIPTOR]))
        .handlers(false);
    configure(builder).build().unwrap()
}

/// A message of [`RENTALS`] with one event of `model` carrying `records`.
fn message(offset: i64, event: &str, model: &str, records: Value) -> InboundMessage {
    let payload = json!({"message": [{"event": event, "model_name": model, "data": records}]});
    InboundMessage {
        topic: RENTALS.to_owned(),
        partition: 0,
        offset,
        key: Some(format!("{model}:{offset}").into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
    }
}

fn rental(offset: i64, id: i64, name: &str) -> InboundMessage {
    let updated_at = format!("2024-01-01T00:00:{:02}.000Z", offset % 60);
    message(
        offset,
        "cascade_rental_updated",
        "CascadeRental",
        json!([{"id": id, "name": name, "updated_at": updated_at}]),
    )
}

/// The outbox rows as (event name, topic, resource id, partition key).
async fn outbox(conn: &mut AsyncPgConnection) -> Vec<(String, String, String, Option<String>)> {
    use dionysus::__internals::schema::dionysus_outbox::dsl as o;
    o::dionysus_outbox
        .select((o::event_name, o::topic, o::resource_id, o::partition_key))
        .order(o::id)
        .load(conn)
        .await
        .unwrap()
}

fn booking_row(base: i64, booking: i64, rental: i64) -> (String, String, String, Option<String>) {
    (
        "cascade_booking_updated".to_owned(),
        BOOKINGS.to_owned(),
        (base + booking).to_string(),
        Some((base + rental).to_string()),
    )
}

fn base() -> i64 {
    chrono::Utc::now().timestamp_micros() * 100
}

/// A batch naming rental 1 three times and rentals 2 and 3 once writes one row per booking
/// of rentals 1 and 2 — each once — with the booking's partition key; the batch delivered
/// again writes nothing more, and a later batch naming rental 2 republishes its booking again.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_republishes_each_related_record_once() {
    let base = base();
    let db = service_db(base).await;
    let consumer = consumer(&db, |builder| builder);
    let batch = [
        rental(0, base + 1, "a"),
        rental(1, base + 1, "b"),
        rental(2, base + 2, "c"),
        rental(3, base + 1, "d"),
        rental(4, base + 3, "e"),
    ];
    let outcome = consumer.process_batch(&batch).await.unwrap();
    assert_eq!(outcome.next_offset, Some(5));

    let mut conn = db.connection().await;
    let expected = vec![booking_row(base, 11, 1), booking_row(base, 12, 1), booking_row(base, 21, 2)];
    assert_eq!(outbox(&mut conn).await, expected);

    let again = consumer.process_batch(&batch).await.unwrap();
    assert_eq!(again.already_applied, 5);
    assert_eq!(outbox(&mut conn).await.len(), 3, "a batch delivered again cascades nothing again");

    consumer.process_batch(&[rental(5, base + 2, "f")]).await.unwrap();
    let mut expected = expected;
    expected.push(booking_row(base, 21, 2));
    assert_eq!(outbox(&mut conn).await, expected, "each batch republishes its related records");
}

/// The cascade's rows are written in the batch's transaction: a batch that fails after
/// them (here storing its offset) leaves neither replica rows nor outbox rows; once it
/// goes through, the rows are there once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cascade_rolls_back_with_its_batch() {
    let base = base();
    let db = service_db(base).await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "CREATE FUNCTION refuse_offsets() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'offsets refused for the test'; END $$;
         CREATE TRIGGER refuse_offsets BEFORE UPDATE ON dionysus_consumer_offsets
             FOR EACH ROW WHEN (NEW.next_offset IS DISTINCT FROM OLD.next_offset)
             EXECUTE FUNCTION refuse_offsets();",
    )
    .await
    .unwrap();
    let consumer = consumer(&db, |builder| builder);
    let batch = [rental(0, base + 1, "a"), rental(1, base + 1, "b")];
    let error = consumer.process_batch(&batch).await.unwrap_err();
    assert!(format!("{error}").contains("storing the offset"), "{error}");
    assert!(outbox(&mut conn).await.is_empty(), "the cascade rolled back with its batch");
    let replicated: i64 = replicated_cascade_rentals::table.count().get_result(&mut conn).await.unwrap();
    assert_eq!(replicated, 0);

    conn.batch_execute("DROP TRIGGER refuse_offsets ON dionysus_consumer_offsets").await.unwrap();
    consumer.process_batch(&batch).await.unwrap();
    assert_eq!(outbox(&mut conn).await, [booking_row(base, 11, 1), booking_row(base, 12, 1)]);
}

/// `cascades(false)` (a replay) applies the batch and republishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cascades_can_be_suppressed() {
    let base = base();
    let db = service_db(base).await;
    let consumer = consumer(&db, |builder| builder.cascades(false));
    let outcome = consumer.process_batch(&[rental(0, base + 1, "a"), rental(1, base + 2, "b")]).await.unwrap();
    assert_eq!(outcome.next_offset, Some(2));
    let mut conn = db.connection().await;
    assert!(outbox(&mut conn).await.is_empty());
    let replicated: i64 = replicated_cascade_rentals::table.count().get_result(&mut conn).await.unwrap();
    assert_eq!(replicated, 2, "the batch itself is applied");
}

/// A handler's cascade reads its ids from the attribute `from` names, in the events it
/// handles; it runs only with handlers on.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_cascade_reads_the_named_attribute() {
    let base = base();
    let db = service_db(base).await;
    let payment = |offset: i64, rental: i64| {
        message(offset, "payment_made", "Payment", json!([{"id": offset + 900, "rental_id": base + rental}]))
    };
    let without = consumer(&db, |builder| builder);
    without.process_batch(&[payment(0, 2)]).await.unwrap();
    let mut conn = db.connection().await;
    assert!(outbox(&mut conn).await.is_empty(), "handlers off: no handler cascades");

    let with = consumer(&db, |builder| builder.handlers(true));
    with.process_batch(&[payment(1, 2), payment(2, 2)]).await.unwrap();
    assert_eq!(outbox(&mut conn).await, [booking_row(base, 21, 2)]);
}

/// A cascade given to the builder republishes from the records of the events it names.
#[tokio::test(flavor = "multi_thread")]
async fn a_builder_cascade_republishes_from_the_named_events() {
    let base = base();
    let db = service_db(base).await;
    let cascade = dionysus::consumer::Cascade::new::<CascadeRental, CascadeBooking>(RENTALS)
        .model("Payment")
        .event("payment_refunded")
        .from("rental_id");
    let consumer = consumer(&db, |builder| builder.cascades(true).cascade(cascade));
    let refund = message(0, "payment_refunded", "Payment", json!([{"id": 5, "rental_id": base + 1}]));
    let other = message(1, "payment_voided", "Payment", json!([{"id": 6, "rental_id": base + 2}]));
    consumer.process_batch(&[refund, other]).await.unwrap();
    let mut conn = db.connection().await;
    assert_eq!(outbox(&mut conn).await, [booking_row(base, 11, 1), booking_row(base, 12, 1)]);
}

/// Through the service's relay, each republished booking reaches the broker once per
/// batch, keyed and serialized like any change of it.
#[tokio::test(flavor = "multi_thread")]
async fn republished_records_reach_the_broker_once() {
    let base = base();
    let db = service_db(base).await;
    let kafka = kafka_config();
    let spec = dionysus::kafka::TopicSpec { name: BOOKINGS.to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    let consumer = consumer(&db, |builder| builder);
    consumer
        .process_batch(&[rental(0, base + 1, "a"), rental(1, base + 1, "b"), rental(2, base + 1, "c")])
        .await
        .unwrap();

    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    let registry = Registry::new([<CascadeBookings as Topic>::DECLARATION], []).with_model::<CascadeBooking>();
    let relay = Relay::builder(config).registry(registry).worker_prefix(unique_name("w")).build().unwrap();
    assert_eq!(relay.drain().await.unwrap().published, 2);
    relay.drain().await.unwrap();

    let reader: StreamConsumer =
        dionysus_tests::consumer_config(&kafka, &unique_name("cascade_reader")).create().unwrap();
    reader.subscribe(&[BOOKINGS]).unwrap();
    let keys = [format!("CascadeBooking:{}", base + 11), format!("CascadeBooking:{}", base + 12)];
    let mut stream = reader.stream();
    let mut seen = Vec::new();
    // Earlier runs' bookings are on the topic too; this run's carry its ids.
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        let message = message.unwrap();
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if keys.contains(&key) {
            seen.push((key, serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap()));
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 2, "{seen:?}");
    let event = &seen[0].1["message"][0];
    assert_eq!(event["event"], "cascade_booking_updated");
    assert_eq!(event["model_name"], "CascadeBooking");
    assert_eq!(event["data"][0]["id"], base + 11);
    assert_eq!(event["data"][0]["cascade_rental_id"], base + 1);
}
