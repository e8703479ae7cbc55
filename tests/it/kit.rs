//! The testing kit (`dionysus::testing`) on real PostgreSQL: what the relay would publish
//! inside a test transaction, the publishable contract, feeding envelopes to a consumer,
//! per-test databases from a template, scoped suppression of publishing, and the relay and
//! the consumer end to end on the embedded Kafka cluster (librdkafka's mock cluster, no broker
//! process).
//!
//! The models here are published on `kit_rentals`, which no other test consumes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::config::Config;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::Consumer;
use dionysus::outbox::Suppress;
use dionysus::registry::Registry;
use dionysus::testing::{
    self, assert_not_published, assert_published, consume, consume_invalid, envelope, publishable_contract,
    ConsumeError, ContractError, EmbeddedKafka, FixtureError, PublishableFixture, Step, TestDatabase, TestMessage,
};
use dionysus::{Dionysus, Topic};
use dionysus_tests::{count, eventually};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The source table and its replica (one database may hold both).
const SCHEMA: &str = "
CREATE TABLE kit_rentals (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    canceled_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT '2026-01-01T00:00:00Z'
);
CREATE TABLE kit_replicated_rentals (
    synced_id BIGINT PRIMARY KEY,
    synced_updated_at TIMESTAMPTZ,
    synced_canceled_at TIMESTAMPTZ,
    name TEXT,
    synced_data JSONB
);
CREATE TABLE kit_notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
";

diesel::table! {
    kit_rentals (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        canceled_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    kit_replicated_rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_canceled_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
        synced_data -> Nullable<Jsonb>,
    }
}

diesel::table! { kit_notes (id) { id -> BigInt, body -> Text } }

#[dionysus::topic(name = "kit_rentals", partition_key = "account_id", partitions = 2)]
pub struct KitRentals;

/// Soft-deletable through `canceled_at` (the configured column).
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = kit_rentals)]
#[publish(topic = KitRentals)]
pub struct KitRental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub canceled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A model on the same table whose update forgets its outbox rows.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = kit_rentals)]
#[publishable(model_name = "KitForgetful", soft_delete = false)]
#[publish(topic = KitRentals)]
pub struct KitForgetful {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub canceled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A soft-deletable model whose fixture cannot soft-delete.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = kit_rentals)]
#[publishable(model_name = "KitHalfDone")]
#[publish(topic = KitRentals)]
pub struct KitHalfDone {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub canceled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A model published nowhere, to suppress something else than [`KitRental`].
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = kit_notes)]
pub struct KitNote {
    pub id: i64,
    pub body: String,
}

#[allow(dead_code, reason = "the consumer writes the table; the fields describe it")]
#[derive(dionysus::Consume)]
#[diesel(table_name = kit_replicated_rentals)]
#[consume(topic = "kit_rentals", model = "KitRental")]
pub struct KitReplicatedRental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_canceled_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub synced_data: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
struct RentalIn {
    name: Option<String>,
}

/// Refuses renames to `refused`, to show a failed handler call.
#[dionysus::consume(topic = "kit_rentals", event = "kit_rental_updated")]
async fn kit_rental_renamed(_ctx: &mut dionysus::Context<'_>, rental: RentalIn) -> Result<(), std::io::Error> {
    match rental.name.as_deref() {
        Some("refused") => Err(std::io::Error::other("renaming to `refused` is refused")),
        _ => Ok(()),
    }
}

/// The declarations of this module only.
fn registry() -> Registry {
    Registry::new([KitRentals::DECLARATION], []).with_model::<KitRental>()
}

/// A handle over this module's declarations and `db`.
fn handle(db: &TestDatabase) -> Dionysus {
    Dionysus::with_registry(Config::default(), registry()).configure(|config| db.configure(config))
}

async fn database() -> (TestDatabase, AsyncPgConnection) {
    let db = TestDatabase::builder().sql(SCHEMA).create().await.unwrap();
    let conn = db.connection().await.unwrap();
    (db, conn)
}

async fn insert(conn: &mut AsyncPgConnection, account_id: i64, name: &str) -> KitRental {
    diesel::insert_into(kit_rentals::table)
        .values((kit_rentals::account_id.eq(account_id), kit_rentals::name.eq(name)))
        .returning(KitRental::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

fn t(second: u32) -> String {
    format!("2026-03-01T10:00:{second:02}.000Z")
}

/// Inside a transaction that is never committed, `published` shows what the relay would
/// send for the rows written so far, built by the relay's own code, and the matchers check
/// it; the global handle's variant sees the same.
#[tokio::test(flavor = "multi_thread")]
async fn published_shows_what_the_relay_would_send_for_uncommitted_rows() {
    let (db, mut conn) = database().await;
    let handle = handle(&db);
    conn.begin_test_transaction().await.unwrap();
    let rental = insert(&mut conn, 7, "Loft").await;
    assert_eq!(handle.outbox().created(&mut conn, &rental).await.unwrap(), 1);

    let sent = testing::published_with(&handle, &mut conn).await.unwrap();
    let key = format!("KitRental:{}", rental.id);
    let found = assert_published!(
        sent,
        KitRental,
        "kit_rental_created",
        topic = "kit_rentals",
        key = key.as_str(),
        partition_key = 7,
        id = rental.id,
        data = json!({"name": "Loft", "account_id": 7}),
        count = 1,
    );
    assert_eq!(found[0].records()[0]["updated_at"], json!("2026-01-01T00:00:00.000Z"));
    assert_published!(sent, "KitRental", "kit_rental_created");
    assert_not_published!(sent, KitRental, "kit_rental_destroyed");
    assert_not_published!(sent, "KitNote");
    assert!(sent.on_topic("kit_rentals_genesis").is_empty());
    assert_eq!(found[0].partition(2), dionysus::kafka::partition_for(b"7", 2));

    let global = testing::published(&mut conn).await.unwrap();
    assert_eq!(global.messages(), sent.messages(), "the global handle declares the same");

    let missing = std::panic::catch_unwind(|| {
        assert_published!(sent, KitRental, "kit_rental_updated");
    })
    .unwrap_err();
    let text = missing.downcast_ref::<String>().unwrap();
    assert!(text.contains("expected a message of KitRental `kit_rental_updated`"), "{text}");
    assert!(text.contains(&format!("`kit_rental_created` of KitRental {} on kit_rentals", rental.id)), "{text}");

    let mut other = db.connection().await.unwrap();
    assert!(testing::published_with(&handle, &mut other).await.unwrap().is_empty(), "nothing was committed");
}

/// Inside a suppression scope the outbox writer writes no rows for the suppressed models;
/// other models, and writes after the scope, write theirs.
#[tokio::test(flavor = "multi_thread")]
async fn suppressed_writes_leave_no_outbox_rows() {
    let (db, mut conn) = database().await;
    let handle = handle(&db);
    let outbox = handle.outbox();
    let rental = insert(&mut conn, 1, "Seeded").await;
    let written = Suppress::all().scope(outbox.created(&mut conn, &rental)).await.unwrap();
    assert_eq!(written, 0);
    let written = Suppress::model::<KitRental>().and::<KitNote>().scope(outbox.created(&mut conn, &rental)).await;
    assert_eq!(written.unwrap(), 0);
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM dionysus_outbox").await, 0);
    let written = Suppress::model::<KitNote>().scope(outbox.created(&mut conn, &rental)).await.unwrap();
    assert_eq!(written, 1, "another model's suppression does not touch this one");
    assert_eq!(outbox.created(&mut conn, &rental).await.unwrap(), 1, "the scope is over");
}

fn consumer(db: &TestDatabase) -> Consumer {
    let mut config = Config::default();
    db.configure(&mut config);
    config.kafka.group_id = Some(testing::unique_name("kit_group"));
    Consumer::builder(config)
        .pool(db.pool(2).unwrap())
        .replicas(Replicas::new([KitReplicatedRental::DESCRIPTOR]))
        .build()
        .unwrap()
}

async fn replica_name(conn: &mut AsyncPgConnection, id: i64) -> Option<Option<String>> {
    kit_replicated_rentals::table.find(id).select(kit_replicated_rentals::name).first(conn).await.optional().unwrap()
}

/// An envelope goes through the consumer's batch path: the replica row is written, the
/// result names the local changes, the handler calls and their outcomes; a stale update
/// writes nothing; offsets continue from the stored one.
#[tokio::test(flavor = "multi_thread")]
async fn consume_applies_envelopes_and_reports_what_changed() {
    let (db, mut conn) = database().await;
    let consumer = consumer(&db);

    let created = consume(
        &consumer,
        [envelope("KitRental", "kit_rental_created", json!({"id": 1, "name": "Loft", "updated_at": t(1)}))],
    )
    .await
    .unwrap();
    assert_eq!(created.rows_written(), 1);
    let change = created.change_of("KitRental", &json!(1)).unwrap();
    assert_eq!(change.changes.get("name"), Some(&json!([null, "Loft"])));
    assert!(created.handler_calls.is_empty() && created.dead_letters.is_empty());
    assert_eq!(replica_name(&mut conn, 1).await, Some(Some("Loft".to_owned())));

    let updated = consume(
        &consumer,
        [
            envelope("KitRental", "kit_rental_updated", json!({"id": 1, "name": "Loft 2", "updated_at": t(2)})),
            envelope("KitRental", "kit_rental_updated", json!({"id": 2, "name": "refused", "updated_at": t(3)})),
        ],
    )
    .await
    .unwrap();
    assert_eq!(updated.already_applied, 0, "the second call continues after the stored offset");
    let calls: Vec<(i64, bool, Option<&str>)> = updated
        .handler_calls
        .iter()
        .map(|call| (call.offset, call.in_transaction, call.failure.as_ref().map(|failure| failure.reason)))
        .collect();
    assert_eq!(calls, [(1, false, None), (2, false, Some("handler_failed"))]);
    assert!(updated.handler_calls[0].handler.ends_with("kit_rental_renamed"), "{:?}", updated.handler_calls[0]);
    let failure = updated.handler_calls[1].failure.as_ref().unwrap();
    assert!(failure.report.contains("renaming to `refused` is refused"), "{}", failure.report);
    assert_eq!(
        replica_name(&mut conn, 2).await,
        Some(Some("refused".to_owned())),
        "an after-commit handler fails alone"
    );
    assert_eq!(updated.rows_written(), 2);

    let stale = consume(
        &consumer,
        [envelope("KitRental", "kit_rental_updated", json!({"id": 1, "name": "Old", "updated_at": t(0)}))],
    )
    .await
    .unwrap();
    assert_eq!(stale.rows_written(), 0);
    assert_eq!(replica_name(&mut conn, 1).await, Some(Some("Loft 2".to_owned())));
}

/// What the relay would send for a record's row, handed to the consumer as it is, lands in
/// the replica; a record's own envelope (without the database) does the same.
#[tokio::test(flavor = "multi_thread")]
async fn published_messages_and_record_envelopes_feed_the_consumer_as_sent() {
    let (db, mut conn) = database().await;
    let handle = handle(&db);
    let rental = insert(&mut conn, 9, "Round trip").await;
    handle.outbox().created(&mut conn, &rental).await.unwrap();
    let sent = testing::published_with(&handle, &mut conn).await.unwrap();
    let consumer = consumer(&db);
    let consumed = consume(&consumer, sent.iter().map(|message| message.to_message())).await.unwrap();
    assert_eq!(consumed.events[0].topic, "kit_rentals");
    assert_eq!(replica_name(&mut conn, rental.id).await, Some(Some("Round trip".to_owned())));

    let renamed = KitRental { name: "From the record".to_owned(), updated_at: Utc::now(), ..rental };
    let message = testing::envelope_of(&renamed, "kit_rental_updated").unwrap();
    assert_eq!(message.key_text(), Some(format!("KitRental:{}", renamed.id)));
    let consumed = consume(&consumer, [message]).await.unwrap();
    assert_eq!(consumed.rows_written(), 1);
    assert_eq!(replica_name(&mut conn, renamed.id).await, Some(Some("From the record".to_owned())));
}

/// With `remove_consecutive_duplicates`, the relay sends only the last of a run of equal
/// rows; `published` shows the others as skipped.
#[tokio::test(flavor = "multi_thread")]
async fn published_follows_the_relays_duplicate_removal() {
    let (db, mut conn) = database().await;
    let handle = handle(&db).configure(|config| config.producer.remove_consecutive_duplicates = true);
    let rental = insert(&mut conn, 9, "Twice").await;
    let changed = dionysus::Changeset::new().with("name", json!("Once"), json!("Twice"));
    for _ in 0..2 {
        handle.outbox().updated(&mut conn, &rental, &changed).await.unwrap();
    }
    let sent = testing::published_with(&handle, &mut conn).await.unwrap();
    assert_eq!(sent.len(), 1);
    let skipped: Vec<(i64, testing::SkipReason)> =
        sent.skipped().iter().map(|row| (row.outbox_id, row.reason)).collect();
    assert_eq!(skipped, [(sent.messages()[0].outbox_id - 1, testing::SkipReason::ConsecutiveDuplicate)]);
}

/// `consume_invalid` says why a message is rejected, and fails when it is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn consume_invalid_names_the_reason() {
    let (db, mut conn) = database().await;
    let consumer = consumer(&db);
    let malformed = consume_invalid(&consumer, TestMessage::raw("{\"message\": [")).await.unwrap();
    assert_eq!(malformed.reason, "malformed_json");
    let both =
        consume(&consumer, [TestMessage::raw("[1"), TestMessage::kafka_null().key("KitRental:9")]).await.unwrap();
    assert_eq!(both.dead_letter_reasons(), ["malformed_json"], "a Kafka null is a tombstone, not a bad message");
    let no_id =
        consume_invalid(&consumer, envelope("KitRental", "kit_rental_created", json!({"name": "x"}))).await.unwrap();
    assert_eq!(no_id.reason, "missing_id");
    let fine = envelope("KitRental", "kit_rental_created", json!({"id": 4, "name": "fine", "updated_at": t(1)}));
    let accepted = consume_invalid(&consumer, fine).await.unwrap_err();
    assert!(matches!(accepted, ConsumeError::Accepted { events: 1 }), "{accepted:?}");
    assert_eq!(replica_name(&mut conn, 4).await, Some(Some("fine".to_owned())));
    let elsewhere = consume(&consumer, [TestMessage::raw("{}").topic("kit_elsewhere")]).await;
    assert!(elsewhere.is_ok(), "an explicit topic is used as given");
}

impl PublishableFixture for KitRental {
    async fn create(conn: &mut AsyncPgConnection) -> Result<Self, FixtureError> {
        let rental = insert(conn, 3, "Contract").await;
        dionysus::outbox::created(conn, &rental).await?;
        Ok(rental)
    }

    async fn update(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        let after = rename(conn, rental.id, "Contract 2").await?;
        dionysus::outbox::updated_from(conn, rental, &after).await?;
        Ok(after)
    }

    async fn soft_delete(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        let after = cancel(conn, rental.id, Some(Utc::now())).await?;
        dionysus::outbox::updated_from(conn, rental, &after).await?;
        Ok(after)
    }

    async fn restore(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        let after = cancel(conn, rental.id, None).await?;
        dionysus::outbox::updated_from(conn, rental, &after).await?;
        Ok(after)
    }

    async fn destroy(conn: &mut AsyncPgConnection, rental: Self) -> Result<(), FixtureError> {
        diesel::delete(kit_rentals::table.find(rental.id)).execute(conn).await?;
        dionysus::outbox::destroyed(conn, &rental).await?;
        Ok(())
    }
}

async fn rename(conn: &mut AsyncPgConnection, id: i64, name: &str) -> QueryResult<KitRental> {
    diesel::update(kit_rentals::table.find(id))
        .set(kit_rentals::name.eq(name))
        .returning(KitRental::as_returning())
        .get_result(conn)
        .await
}

async fn cancel(conn: &mut AsyncPgConnection, id: i64, at: Option<DateTime<Utc>>) -> QueryResult<KitRental> {
    diesel::update(kit_rentals::table.find(id))
        .set(kit_rentals::canceled_at.eq(at))
        .returning(KitRental::as_returning())
        .get_result(conn)
        .await
}

impl PublishableFixture for KitForgetful {
    async fn create(conn: &mut AsyncPgConnection) -> Result<Self, FixtureError> {
        let record: KitForgetful = diesel::insert_into(kit_rentals::table)
            .values((kit_rentals::account_id.eq(3), kit_rentals::name.eq("Forgetful")))
            .returning(KitForgetful::as_returning())
            .get_result(conn)
            .await?;
        dionysus::outbox::created(conn, &record).await?;
        Ok(record)
    }

    async fn update(conn: &mut AsyncPgConnection, record: &Self) -> Result<Self, FixtureError> {
        // The write the application forgot to announce.
        Ok(diesel::update(kit_rentals::table.find(record.id))
            .set(kit_rentals::name.eq("Forgotten"))
            .returning(KitForgetful::as_returning())
            .get_result(conn)
            .await?)
    }

    async fn destroy(conn: &mut AsyncPgConnection, record: Self) -> Result<(), FixtureError> {
        diesel::delete(kit_rentals::table.find(record.id)).execute(conn).await?;
        dionysus::outbox::destroyed(conn, &record).await?;
        Ok(())
    }
}

impl PublishableFixture for KitHalfDone {
    async fn create(conn: &mut AsyncPgConnection) -> Result<Self, FixtureError> {
        let record: KitHalfDone = diesel::insert_into(kit_rentals::table)
            .values((kit_rentals::account_id.eq(3), kit_rentals::name.eq("Half")))
            .returning(KitHalfDone::as_returning())
            .get_result(conn)
            .await?;
        dionysus::outbox::created(conn, &record).await?;
        Ok(record)
    }

    async fn update(conn: &mut AsyncPgConnection, record: &Self) -> Result<Self, FixtureError> {
        let after: KitHalfDone = diesel::update(kit_rentals::table.find(record.id))
            .set(kit_rentals::name.eq("Half 2"))
            .returning(KitHalfDone::as_returning())
            .get_result(conn)
            .await?;
        dionysus::outbox::updated_from(conn, record, &after).await?;
        Ok(after)
    }

    async fn destroy(conn: &mut AsyncPgConnection, record: Self) -> Result<(), FixtureError> {
        diesel::delete(kit_rentals::table.find(record.id)).execute(conn).await?;
        dionysus::outbox::destroyed(conn, &record).await?;
        Ok(())
    }
}

/// The contract holds for a model whose functions write their rows — create, update, soft
/// delete, restore, destroy — and leaves the database as it was.
#[tokio::test(flavor = "multi_thread")]
async fn publishable_contract_holds_for_a_model_that_announces_every_change() {
    let (db, mut conn) = database().await;
    let registry = registry().with_model::<KitForgetful>().with_model::<KitHalfDone>();
    let handle = Dionysus::with_registry(handle(&db).config().clone(), registry);
    let report = publishable_contract::<KitRental>().handle(&handle).check(&mut conn).await.unwrap();
    let steps: Vec<(Step, Vec<String>)> = report
        .steps
        .iter()
        .map(|(step, sent)| (*step, sent.iter().map(|message| message.event_name.clone()).collect()))
        .collect();
    assert_eq!(
        steps,
        [
            (Step::Create, vec!["kit_rental_created".to_owned()]),
            (Step::Update, vec!["kit_rental_updated".to_owned()]),
            (Step::SoftDelete, vec!["kit_rental_destroyed".to_owned()]),
            (Step::Restore, vec!["kit_rental_created".to_owned()]),
            (Step::Destroy, vec!["kit_rental_destroyed".to_owned()]),
        ]
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM dionysus_outbox").await, 0, "rolled back");
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM kit_rentals").await, 0);

    let forgot = publishable_contract::<KitForgetful>().handle(&handle).check(&mut conn).await.unwrap_err();
    assert!(matches!(forgot, ContractError::Rows { step: Step::Update, .. }), "{forgot:?}");
    let text = forgot.to_string();
    assert!(
        text.starts_with("`update` of KitForgetful must publish exactly one `kit_forgetful_updated` message"),
        "{text}"
    );
    let half = publishable_contract::<KitHalfDone>().handle(&handle).check(&mut conn).await.unwrap_err();
    assert!(matches!(&half, ContractError::StepMissing { column, .. } if column == "canceled_at"), "{half:?}");
}

/// The real relay and the real consumer, end to end on the embedded cluster: a change in the
/// source database reaches the replica through the outbox, the relay and the topic.
#[tokio::test(flavor = "multi_thread")]
async fn relay_and_consumer_run_end_to_end_on_the_embedded_cluster() {
    let (source, mut source_conn) = database().await;
    let (replica, _replica_conn) = database().await;
    let base = Dionysus::with_registry(Config::default(), registry());
    let kafka = EmbeddedKafka::builder().handle(&base).start().unwrap();
    assert_eq!(kafka.topics().get("kit_rentals"), Some(&2));
    let producing = base.configure(|config| {
        source.configure(config);
        kafka.configure(config);
        config.producer.idle_sleep = Duration::from_millis(50);
    });
    let consuming = base.configure(|config| {
        replica.configure(config);
        kafka.configure(config);
        config.kafka.group_id = Some(testing::unique_name("kit_e2e"));
    });
    let relay = producing.relay().build().unwrap();
    let consumer = consuming.consumer().replicas(Replicas::new([KitReplicatedRental::DESCRIPTOR])).build().unwrap();
    assert_eq!(consumer.topics(), ["kit_rentals"]);
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let consumer_task = tokio::spawn({
        let (shutdown, consumer) = (shutdown.clone(), consumer.clone());
        async move { consumer.run(shutdown).await }
    });

    let rental = insert(&mut source_conn, 5, "Embedded").await;
    producing.outbox().created(&mut source_conn, &rental).await.unwrap();
    let id = rental.id;
    let pool = replica.pool(1).unwrap();
    eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            replica_name(&mut conn, id).await.flatten().filter(|name| name == "Embedded")
        }
    })
    .await;

    shutdown.cancel();
    relay_task.await.unwrap().unwrap();
    consumer_task.await.unwrap().unwrap();
    assert_eq!(
        count(&mut source_conn, "SELECT count(*) AS n FROM dionysus_outbox WHERE published_at IS NULL").await,
        0
    );
    drop(kafka);
}

/// Each database is a copy of the template of its schema (the migrations and the given
/// SQL) and is dropped with its value.
#[tokio::test(flavor = "multi_thread")]
async fn test_databases_are_copies_of_their_template_and_are_dropped() {
    let (db, mut conn) = database().await;
    let tables = "SELECT count(*) AS n FROM information_schema.tables \
                  WHERE table_name IN ('dionysus_outbox', 'dionysus_consumer_offsets', 'kit_rentals')";
    assert_eq!(count(&mut conn, tables).await, 3);
    let name = db.name().to_owned();
    drop(conn);
    drop(db);
    let plain = TestDatabase::builder().migrations(false).create().await.unwrap();
    let mut plain_conn = plain.connection().await.unwrap();
    assert_eq!(count(&mut plain_conn, tables).await, 0, "no template without migrations or SQL");
    let gone = format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'");
    assert_eq!(count(&mut plain_conn, &gone).await, 0);
}

/// The embedded cluster takes only what it can speak from a configuration, and creates
/// topics once.
#[test]
fn embedded_kafka_drops_settings_it_cannot_speak() {
    let kafka = EmbeddedKafka::builder().registry(registry()).topic("kit_extra", 3).start().unwrap();
    let mut config = Config::default();
    config.kafka.properties.insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
    config.kafka.properties.insert("sasl.password".to_owned(), "secret".to_owned());
    config.kafka.properties.insert("compression.type".to_owned(), "lz4".to_owned());
    kafka.configure(&mut config);
    assert_eq!(config.kafka.bootstrap_servers(), kafka.bootstrap_servers());
    assert_eq!(kafka.kafka_config().bootstrap_servers(), kafka.bootstrap_servers());
    assert_eq!(config.kafka.properties.keys().collect::<Vec<_>>(), ["compression.type"]);
    kafka.create_topic("kit_extra", 5).unwrap();
    assert_eq!(kafka.topics().get("kit_extra"), Some(&3), "an existing topic is left as it is");
    assert_eq!(kafka.topics().get("kit_rentals"), Some(&2));
}

/// At start-up the embedded cluster logs its limits, and warns about what it cannot do as
/// asked (a replication factor above its broker count, TLS/SASL settings). Runs in a child
/// process, where no other test shares the tracing callsites.
#[test]
fn embedded_kafka_says_what_it_cannot_do() {
    const CHILD: &str = "DIONYSUS_TEST_EMBEDDED_CHILD";
    if std::env::var_os(CHILD).is_some() {
        embedded_announcements();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["kit::embedded_kafka_says_what_it_cannot_do", "--exact", "--test-threads=1", "--nocapture"])
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

#[dionysus::topic(name = "kit_replicated", replication_factor = 3)]
pub struct KitReplicated;

fn embedded_announcements() {
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(tracing::Level, String)>>>);
    struct Message<'a>(&'a mut String);
    impl tracing::field::Visit for Message<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                *self.0 = format!("{value:?}");
            }
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if event.metadata().target().starts_with("dionysus::testing") {
                let mut message = String::new();
                event.record(&mut Message(&mut message));
                self.0.lock().unwrap().push((*event.metadata().level(), message));
            }
        }
    }

    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let kafka = EmbeddedKafka::builder().registry(Registry::new([KitReplicated::DECLARATION], [])).start().unwrap();
    let mut config = Config::default();
    config.kafka.properties.insert("ssl.ca.location".to_owned(), "/etc/ca.pem".to_owned());
    kafka.configure(&mut config);
    let events = capture.0.lock().unwrap().clone();
    let find = |level, text: &str| events.iter().any(|(at, message)| *at == level && message.contains(text));
    assert!(find(tracing::Level::INFO, "no admin API"), "{events:?}");
    assert!(find(tracing::Level::WARN, "topic `kit_replicated` is created with replication factor 1"), "{events:?}");
    assert!(find(tracing::Level::WARN, "dropped `ssl.ca.location`"), "{events:?}");
}
