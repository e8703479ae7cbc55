//! Genesis against real PostgreSQL and the broker: throttled over the requested duration,
//! resumable after an abort without re-publishing finished batches, consumed into a replica
//! that ends equal to the source, and the request checks.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::{Config, ProducerConfig};
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::stored_offsets;
use dionysus::consumer::Consumer;
use dionysus::genesis::{Genesis, GenesisError, GenesisRequest, GenesisRun};
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{count, create_topic, kafka_config, registry_for, unique_name, TestDb};
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
    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka;
    config.producer = ProducerConfig::default();
    let genesis = Genesis::new(config, registry, db.pool(2)).unwrap();
    (db, conn, genesis, topic)
}

async fn run_row(conn: &mut AsyncPgConnection, id: i64) -> GenesisRun {
    dionysus::__internals::schema::dionysus_genesis_runs::table
        .find(id)
        .select(GenesisRun::as_select())
        .get_result(conn)
        .await
        .unwrap()
}

diesel::table! {
    genesis_item_replicas (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_canceled_at -> Nullable<Timestamptz>,
        account_id -> Nullable<BigInt>,
    }
}

#[dionysus::topic(name = "it_genesis_items")]
pub struct GenesisItems;

/// The consumer's side of `GenesisItem`.
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = genesis_item_replicas)]
#[consume(topic = "it_genesis_items", model = "GenesisItem", soft_delete = "synced_canceled_at")]
pub struct GenesisItemReplica {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_canceled_at: Option<DateTime<Utc>>,
    pub account_id: Option<i64>,
}

#[derive(QueryableByName)]
struct Checksum {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    md5: String,
}

/// Row count and md5 of `id|account_id|canceled_at` (milliseconds, the wire's precision),
/// ordered by id, of the rows `query` selects under those names.
async fn checksum(conn: &mut AsyncPgConnection, query: &str) -> (i64, String) {
    let sql = format!(
        "SELECT count(*) AS rows, md5(coalesce(string_agg(concat_ws('|', id, account_id, \
         date_trunc('milliseconds', canceled_at)), ',' ORDER BY id), '')) AS md5 FROM ({query}) r"
    );
    let sum: Checksum = diesel::sql_query(sql).get_result(conn).await.unwrap();
    (sum.rows, sum.md5)
}

const SOURCE: &str = "SELECT id, account_id, canceled_at FROM genesis_items";
const REPLICA: &str =
    "SELECT synced_id AS id, account_id, synced_canceled_at AS canceled_at FROM genesis_item_replicas";

/// 100 000 records spread over 10 s: the published count never runs ahead of the schedule, a
/// tenth per second plus two batches of slack (unthrottled, a 2-core machine publishes
/// ~15 000 a second, so a burst breaks the bound within 5 s); aborted 5 s in and resumed, the
/// run continues after its cursor, so at most the batch in flight is published again; a
/// dionysus consumer reading the topic into a replica table ends with the same rows as the
/// source (soft-deleted records arrive as `_destroyed` and are soft-deleted there too).
#[tokio::test(flavor = "multi_thread")]
async fn genesis_is_throttled_resumes_after_an_abort_and_the_replica_matches() {
    const ITEMS: i64 = 100_000;
    const OVER: Duration = Duration::from_secs(10);
    let (db, mut conn, genesis, topic) = setup(ITEMS).await;
    conn.batch_execute(
        "CREATE TABLE genesis_item_replicas (synced_id BIGINT PRIMARY KEY, synced_updated_at TIMESTAMPTZ,
             synced_canceled_at TIMESTAMPTZ, account_id BIGINT)",
    )
    .await
    .unwrap();
    let request = GenesisRequest { over: OVER, ..GenesisRequest::new("GenesisItem", &topic) };
    let run = genesis.start(&request).await.unwrap();
    assert_eq!(run.total_count, Some(ITEMS));

    let genesis = std::sync::Arc::new(genesis);
    let started = Instant::now();
    let first = tokio::spawn({
        let genesis = genesis.clone();
        async move { genesis.run(run.id, &(), &CancellationToken::new()).await }
    });
    // The published count each second for 5 s.
    let mut samples = vec![0];
    for second in 1..=5 {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        samples.push(run_row(&mut conn, run.id).await.published_count);
    }
    first.abort();
    let _ = first.await;
    let per_second = ITEMS / OVER.as_secs() as i64;
    for (second, published) in samples.iter().enumerate() {
        let due = per_second * second as i64;
        assert!(*published <= due + 2_000, "{second} s into {OVER:?}: {published} published, ahead ({samples:?})");
    }
    assert!((1..ITEMS).contains(&samples[5]), "aborted mid-way: {samples:?}");
    let stopped_at = run_row(&mut conn, run.id).await;
    assert_eq!(stopped_at.status, "running", "an aborted run is left to be resumed");

    let report = genesis.run(run.id, &(), &CancellationToken::new()).await.unwrap();
    let elapsed = started.elapsed();
    assert!(report.completed);
    assert!(elapsed >= OVER - Duration::from_millis(500), "spread over ~{OVER:?}, took {elapsed:?}");
    let finished = run_row(&mut conn, run.id).await;
    assert_eq!((finished.status.as_str(), finished.published_count), ("completed", ITEMS));
    let performed = report.performed.unwrap();
    assert_eq!(performed.end_at - performed.start_at, chrono::Duration::seconds(10 + 60));

    // A consumer reads the topic into the replica table.
    let group = unique_name("genesis_replica");
    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka_config();
    config.kafka.group_id = Some(group.clone());
    let consumer = Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(Replicas::new([GenesisItemReplica::DESCRIPTOR]))
        .topic(&topic)
        .handlers(false)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let consuming = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    // Every record is in the replica once the last message of each partition is applied
    // (repeats come before the batches published after the resume); then the stored offsets
    // stop moving.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut applied = -1;
    loop {
        let (rows, _) = checksum(&mut conn, REPLICA).await;
        let stored: i64 = stored_offsets(&mut conn, &group).await.unwrap().values().sum();
        if rows == ITEMS && stored == applied {
            break;
        }
        applied = stored;
        assert!(Instant::now() < deadline, "replica at {rows} of {ITEMS} rows, {stored} messages applied, after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shutdown.cancel();
    consuming.await.unwrap().unwrap();

    assert_eq!(checksum(&mut conn, REPLICA).await, checksum(&mut conn, SOURCE).await, "the replica matches the source");
    let canceled =
        count(&mut conn, "SELECT count(*) AS n FROM genesis_item_replicas WHERE synced_canceled_at IS NOT NULL").await;
    assert_eq!(canceled, ITEMS / 10, "soft-deleted records arrive as destroyed and are soft-deleted");
    let repeats = applied - ITEMS;
    assert!((0..=1000).contains(&repeats), "{repeats} messages published twice: more than the batch in flight");
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
    let report = genesis.run(run.id, &(), &CancellationToken::new()).await.unwrap();
    assert_eq!(report.published, 3);
}

/// G-4 `query_conditions`: `--where column=value` filters keep only the matching records (every
/// filter must hold), are stored with the run so a resumed run selects the same records, and
/// a column the model lacks is refused before anything is recorded, naming the columns.
#[tokio::test(flavor = "multi_thread")]
async fn genesis_where_filters_select_only_matching_records() {
    // account_id = i % 50 for i in 1..=200: account 7 has ids 7, 57, 107, 157; of those,
    // none is a multiple of 10, so none is soft-deleted.
    let (_db, mut conn, genesis, topic) = setup(200).await;
    let request = GenesisRequest::new("GenesisItem", &topic).filter_eq("account_id", "7");
    let run = genesis.start(&request).await.unwrap();
    assert_eq!(run.total_count, Some(4));
    assert_eq!(run_row(&mut conn, run.id).await.conditions(), [("account_id".to_owned(), "7".to_owned())]);
    let report = genesis.run(run.id, &(), &CancellationToken::new()).await.unwrap();
    assert_eq!(report.published, 4);

    let both = GenesisRequest::new("GenesisItem", &topic).filter_eq("account_id", "7").filter_eq("id", "57");
    let run = genesis.start(&both).await.unwrap();
    assert_eq!(run.total_count, Some(1), "every filter must hold");
    assert_eq!(genesis.run(run.id, &(), &CancellationToken::new()).await.unwrap().published, 1);

    let injection = GenesisRequest::new("GenesisItem", &topic).filter_eq("account_id", "7' OR '1'='1");
    let run = genesis.start(&injection).await.unwrap();
    assert_eq!(run.total_count, Some(0), "values are bound, not spliced into the SQL");

    let error =
        genesis.start(&GenesisRequest::new("GenesisItem", &topic).filter_eq("acount_id", "7")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "model `GenesisItem` has no column `acount_id` to filter genesis by; its columns: id, account_id, canceled_at"
    );
}
