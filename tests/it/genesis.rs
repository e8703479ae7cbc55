//! Genesis against real PostgreSQL and the broker: throttled over the requested duration,
//! resumable after an abort without re-publishing finished batches, and the request checks.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::{Config, ProducerConfig};
use dionysus::genesis::{Genesis, GenesisError, GenesisRequest, GenesisRun};
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{consumer_config, create_topic, kafka_config, registry_for, unique_name, TestDb};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

diesel::table! {
    genesis_items (id) {
        id -> BigInt,
        account_id -> BigInt,
        canceled_at -> Nullable<Timestamptz>,
    }
}

#[derive(Debug, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = genesis_items)]
#[publishable(model_name = "GenesisItem")]
pub struct GenesisItem {
    pub id: i64,
    pub account_id: i64,
    pub canceled_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn setup(items: i64) -> (TestDb, AsyncPgConnection, Genesis, String) {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(&format!(
        "CREATE TABLE genesis_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, canceled_at TIMESTAMPTZ);
         INSERT INTO genesis_items (account_id, canceled_at)
         SELECT i % 50, CASE WHEN i % 10 = 0 THEN now() END FROM generate_series(1, {items}) i;"
    ))
    .await
    .unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "genesis", 4).await;
    let registry =
        registry_for::<GenesisItem>(&topic, 4, "account_id", serialize_erased::<GenesisItem, DefaultSerializer>);
    let config =
        Config { database_url: db.url.clone(), kafka, producer: ProducerConfig::default(), ..Config::default() };
    let genesis = Genesis::new(config, registry, db.pool(2)).unwrap();
    (db, conn, genesis, topic)
}

async fn run_row(conn: &mut AsyncPgConnection, id: i64) -> GenesisRun {
    dionysus::schema::dionysus_genesis_runs::table
        .find(id)
        .select(GenesisRun::as_select())
        .get_result(conn)
        .await
        .unwrap()
}

/// 100 000 records spread over 12 s: batches follow the schedule (at 3 s at most a quarter
/// plus slack is out, where a burst would have sent far more); aborted there and resumed, it continues after its cursor, so at most the in-flight batch repeats;
/// soft-deleted records are published as `_destroyed`.
#[tokio::test(flavor = "multi_thread")]
async fn genesis_is_throttled_and_resumes_after_an_abort() {
    const ITEMS: i64 = 100_000;
    let (_db, mut conn, genesis, topic) = setup(ITEMS).await;
    let request = GenesisRequest { over: Duration::from_secs(12), ..GenesisRequest::new("GenesisItem", &topic) };
    let run = genesis.start(&request).await.unwrap();
    assert_eq!(run.total_count, Some(ITEMS));

    let genesis = std::sync::Arc::new(genesis);
    let started = Instant::now();
    let first = tokio::spawn({
        let genesis = genesis.clone();
        async move { genesis.run(run.id, &ProgressBar::hidden(), &CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let midway = run_row(&mut conn, run.id).await.published_count;
    assert!(midway > 0 && midway <= 35_000, "3 s into 12 s: {midway} of {ITEMS} published — throttled, not a burst");
    first.abort();
    let _ = first.await;
    let stopped_at = run_row(&mut conn, run.id).await;
    assert_eq!(stopped_at.status, "running", "an aborted run is left to be resumed");

    let report = genesis.run(run.id, &ProgressBar::hidden(), &CancellationToken::new()).await.unwrap();
    let elapsed = started.elapsed();
    assert!(report.completed);
    assert!(elapsed >= Duration::from_secs(11), "spread over ~12 s, took {elapsed:?}");
    let finished = run_row(&mut conn, run.id).await;
    assert_eq!((finished.status.as_str(), finished.published_count), ("completed", ITEMS));
    let performed = report.performed.unwrap();
    assert_eq!(performed.end_at - performed.start_at, chrono::Duration::seconds(12 + 60));

    // Read everything back: every record once, plus at most the batch in flight at the abort.
    let consumer: StreamConsumer = consumer_config(&kafka_config(), &unique_name("group")).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut stream = consumer.stream();
    let mut seen = HashSet::new();
    let mut total = 0_usize;
    let mut destroyed = 0_usize;
    while seen.len() < ITEMS as usize {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap().unwrap();
        total += 1;
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if seen.insert(message.key().unwrap().to_vec()) && value["message"][0]["event"] == "genesis_item_destroyed" {
            destroyed += 1;
        }
    }
    assert!(total - seen.len() <= 1000, "{} repeats, more than one batch", total - seen.len());
    assert_eq!(destroyed, (ITEMS / 10) as usize, "soft-deleted records are published as destroyed");
}

/// Requests are checked before anything is published.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_explained() {
    let (_db, _conn, genesis, topic) = setup(3).await;
    let error = genesis.start(&GenesisRequest::new("Rental", &topic)).await.unwrap_err();
    assert!(matches!(error, GenesisError::UnknownModel { .. }), "{error}");
    assert!(error.to_string().contains("known models: GenesisItem"), "{error}");
    let error = genesis.start(&GenesisRequest::new("GenesisItem", "nope")).await.unwrap_err();
    assert!(error.to_string().starts_with("`nope` is not a declared topic"), "{error}");
    let error = genesis.start(&GenesisRequest::new("GenesisItem", format!("{topic}_genesis"))).await.unwrap_err();
    assert!(matches!(error, GenesisError::UnknownTopic { .. }), "no replica declared: {error}");
    let window = Some((chrono::Utc::now(), chrono::Utc::now()));
    let error =
        genesis.start(&GenesisRequest { window, ..GenesisRequest::new("GenesisItem", &topic) }).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "model `GenesisItem` has no `updated_at` column, so it cannot be filtered by a time window"
    );

    let visible = GenesisRequest { visible_only: true, ..GenesisRequest::new("GenesisItem", &topic) };
    let run = genesis.start(&visible).await.unwrap();
    assert_eq!(run.total_count, Some(3), "none of the 3 is soft-deleted");
    let report = genesis.run(run.id, &ProgressBar::hidden(), &CancellationToken::new()).await.unwrap();
    assert_eq!(report.published, 3);
}
