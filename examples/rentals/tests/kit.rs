//! How an application tests itself with the testing kit (`dionysus::testing`, feature
//! `testing`), on the rentals example. PostgreSQL is the only service these tests need; each
//! test has a database of its own, copied from a template with the framework migrations and
//! the service's tables.
//!
//! 1. A model publishes what it should: [`published`] and [`assert_published!`].
//! 2. A replica takes in what it is sent: [`envelope`] and [`consume`].
//! 3. The relay and the consumer end to end, on an [`EmbeddedKafka`] cluster.
//! 4. The publishable contract of a model: [`publishable_contract`].
//!
//! Run with: `cargo test -p dionysus-example-rentals --test kit` (PostgreSQL at
//! `DATABASE_URL`, default: the local server with user `postgres`).

use std::time::Duration;

use diesel_async::{AsyncConnection, RunQueryDsl};
use dionysus::testing::{
    self, assert_not_published, assert_published, consume, consume_invalid, envelope, publishable_contract,
    EmbeddedKafka, TestDatabase,
};
use dionysus::{Dionysus, Topic};
use dionysus_example_rentals::consumer::{self, RENTAL_UPDATES};
use dionysus_example_rentals::producer::{self, Account, Booking, Rental, Rentals};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// 1. Creating a rental publishes `rental_created` on the rentals topic, partitioned by its
/// account, with the record as the relay serializes it — checked inside a transaction that is
/// never committed, without a broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_rental_is_published_partitioned_by_its_account() -> TestResult {
    let db = TestDatabase::builder().sql(producer::SCHEMA).create().await?;
    let mut conn = db.connection().await?;
    conn.begin_test_transaction().await?;

    let account = producer::create_account(&mut conn, "Seaside Stays", "15:00").await?;
    let rental = producer::create_rental(&mut conn, &account, "Loft", 12_000).await?;

    let sent = testing::published(&mut conn).await?;
    assert_published!(
        sent,
        Rental,
        "rental_created",
        topic = Rentals::NAME,
        key = format!("Rental:{}", rental.id),
        partition_key = account.id,
        data = json!({"name": "Loft", "daily_price_cents": 12_000, "links": {"bookings_fees": []}}),
    );
    assert_published!(sent, Account, "account_created", id = account.id);
    assert_not_published!(sent, Booking);
    Ok(())
}

/// 2. A rental message from the producer lands in the replica tables — the rental and its
/// sideloaded fee — and a message without an id is rejected.
#[tokio::test(flavor = "multi_thread")]
async fn a_rental_envelope_lands_in_the_replica() -> TestResult {
    let db = TestDatabase::builder().sql(consumer::SCHEMA).create().await?;
    let handle = Dionysus::from_env()?.configure(|config| db.configure(config));
    let consumer = handle.consumer().build()?;
    let fee = json!({"id": 70, "rental_id": 7, "name": "Cleaning", "amount_cents": 5_000,
                     "updated_at": "2026-05-01T10:00:00.000Z"});
    let rental = json!({"id": 7, "account_id": 1, "name": "Loft", "daily_price_cents": 12_000, "canceled_at": null,
                        "updated_at": "2026-05-01T10:00:00.000Z", "links": {"bookings_fees": [70]},
                        "bookings_fees": [fee]});

    let created = consume(&consumer, [envelope("Rental", "rental_created", rental.clone())]).await?;
    assert_eq!(created.rows_written(), 2, "the rental and its fee: {:?}", created.events);

    let mut conn = db.connection().await?;
    let stored: Vec<(i64, Option<String>, Option<i64>)> = diesel::sql_query(
        "SELECT synced_id, name, daily_price AS number FROM rentals \
         UNION ALL SELECT synced_id, name, synced_rental_id FROM bookings_fees ORDER BY 1",
    )
    .load::<Row>(&mut conn)
    .await?
    .into_iter()
    .map(|row| (row.synced_id, row.name, row.number))
    .collect();
    assert_eq!(stored, [(7, Some("Loft".to_owned()), Some(12_000)), (70, Some("Cleaning".to_owned()), Some(7))]);

    let before = rental_updates();
    let mut renamed = rental;
    renamed["name"] = json!("Loft with a view");
    renamed["updated_at"] = json!("2026-05-02T10:00:00.000Z");
    let updated = consume(&consumer, [envelope("Rental", "rental_updated", renamed)]).await?;
    assert_eq!(updated.handler_calls.len(), 1, "the service's rental_updated handler ran");
    assert!(updated.handler_calls[0].succeeded());
    assert!(rental_updates() > before);

    let rejected = consume_invalid(&consumer, envelope("Rental", "rental_created", json!({"name": "no id"}))).await?;
    assert_eq!(rejected.reason, "missing_id");
    Ok(())
}

/// How many `rental_updated` events the service's handler has seen in this process.
fn rental_updates() -> u64 {
    std::sync::atomic::AtomicU64::load(&RENTAL_UPDATES, std::sync::atomic::Ordering::Relaxed)
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    synced_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    name: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    number: Option<i64>,
}

/// 3. The real relay and the real consumer, on an embedded Kafka cluster in the test
/// process: a rental created in the producer's database reaches the consumer's replica.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_and_the_consumer_sync_a_rental_on_an_embedded_cluster() -> TestResult {
    let source = TestDatabase::builder().sql(producer::SCHEMA).create().await?;
    let replica = TestDatabase::builder().sql(consumer::SCHEMA).create().await?;
    let base = Dionysus::from_env()?;
    let kafka = EmbeddedKafka::builder().handle(&base).start()?;
    let producing = base.configure(|config| {
        source.configure(config);
        kafka.configure(config);
    });
    let consuming = base.configure(|config| {
        replica.configure(config);
        kafka.configure(config);
    });
    let relay = producing.relay().build()?;
    let consumer = consuming.consumer().build()?;
    let shutdown = CancellationToken::new();
    let tasks = [
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await.map_err(|error| error.to_string()) }
        }),
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { consumer.run(shutdown).await.map_err(|error| error.to_string()) }
        }),
    ];

    let mut conn = source.connection().await?;
    let account = producer::create_account(&mut conn, "Mountain Lodges", "16:00").await?;
    let rental = producer::create_rental(&mut conn, &account, "Alpine Chalet", 15_000).await?;

    let mut replica_conn = replica.connection().await?;
    let query = format!("SELECT synced_id, name, daily_price AS number FROM rentals WHERE synced_id = {}", rental.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let synced = loop {
        let rows: Vec<Row> = diesel::sql_query(&query).load(&mut replica_conn).await?;
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rental did not reach the replica within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((synced.name.as_deref(), synced.number), (Some("Alpine Chalet"), Some(15_000)));

    shutdown.cancel();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// 4. Creating, updating, soft-deleting, restoring and destroying a rental through the
/// service's own functions (its fixture, in `fixtures.rs`) writes the rows the declarations
/// promise, and the relay can publish each of them.
#[tokio::test(flavor = "multi_thread")]
async fn rentals_keep_the_publishable_contract() -> TestResult {
    let db = TestDatabase::builder().sql(producer::SCHEMA).create().await?;
    let mut conn = db.connection().await?;
    let report = publishable_contract::<Rental>().check(&mut conn).await?;
    assert_eq!(report.steps.len(), 5, "{report}");
    Ok(())
}
