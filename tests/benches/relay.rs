//! Draining 100 000 outbox rows to the broker: the relay side by side with a raw baseline in
//! the same run, on the same database and broker.
//!
//! Run with: `scripts/bench relay`. The rows go over 50 partition keys
//! (`DIONYSUS_BENCH_KEYS` changes that).
//!
//! * raw: one loop of plain SQL — claim the next 1000 pending rows by id, produce the same
//!   envelope for each with rdkafka (pre-built payloads, partition from the partition key),
//!   await the delivery reports, mark the rows published in one `UPDATE`;
//! * relay: `dionysus::relay::Relay` with its workers, loading each batch's records from the
//!   database and serializing them, until the outbox is empty: with the default settings,
//!   tuned (4 workers, batches up to 2000), tuned with a retention of zero (each row deleted
//!   as it is published instead of marked), with dionysus-rb's (1 worker, batch 100), and
//!   with the defaults for a publication that sideloads a dependency (`with(Fee)`: each
//!   message carries its item's fee, loaded in one query per batch).
//!
//! Goal: the relay with its defaults drains at ≥ 2× the raw loop of the same run.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs, reason = "a benchmark binary")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::Config;
use dionysus::registry::model::{Dependency, Model, Relation};
use dionysus::relay::{Relay, RelayEvent, RelayObserver};
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{count, create_topic, kafka_config, registry_for, registry_with_sideloads, TestDb};
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

diesel::table! {
    bench_items (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        daily_price -> BigInt,
    }
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = bench_items)]
#[publishable(model_name = "Item", soft_delete = false)]
struct Item {
    id: i64,
    account_id: i64,
    name: String,
    daily_price: i64,
}

diesel::table! {
    bench_fees (id) {
        id -> BigInt,
        item_id -> BigInt,
        amount -> BigInt,
    }
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = bench_fees)]
#[publishable(model_name = "Fee", soft_delete = false)]
struct Fee {
    id: i64,
    item_id: i64,
    amount: i64,
}

/// `with(Fee)` on the item's publication: a fee holds its item's id.
static WITH_FEES: [Dependency; 1] =
    [Dependency { model: <Fee as Model>::entry, relation: || Relation::OtherHoldsKey("item_id") }];

const ROWS: i64 = 100_000;
const ITEMS: i64 = 10_000;
const PARTITIONS: i32 = 12;

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    resource_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    partition_key: Option<String>,
}

async fn fill(conn: &mut AsyncPgConnection, topic: &str) {
    let keys = dionysus_tests::bench_keys();
    conn.batch_execute(&format!(
        "TRUNCATE dionysus_outbox;
         INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
         SELECT 'Item', ((i % {ITEMS}) + 1)::text, 'item_updated', '{topic}', (((i % {ITEMS}) + 1) % {keys})::text
         FROM generate_series(1, {ROWS}) i;"
    ))
    .await
    .unwrap();
    conn.batch_execute("VACUUM ANALYZE dionysus_outbox").await.unwrap();
}

async fn raw(conn: &mut AsyncPgConnection, producer: &dionysus::kafka::Producer, topic: &str, payloads: &[Vec<u8>]) {
    loop {
        let rows: Vec<Claimed> = diesel::sql_query(
            "SELECT id, resource_id, partition_key FROM dionysus_outbox WHERE published_at IS NULL ORDER BY id LIMIT 1000",
        )
        .load(conn)
        .await
        .unwrap();
        if rows.is_empty() {
            return;
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let index = usize::try_from(row.resource_id.parse::<i64>().unwrap() - 1).unwrap();
            let key = format!("Item:{}", row.resource_id);
            let partition_key = row.partition_key.as_deref().unwrap_or_default();
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payloads[index])
                .partition(dionysus::kafka::partition_for(partition_key.as_bytes(), PARTITIONS));
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        diesel::sql_query("UPDATE dionysus_outbox SET published_at = now() WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(ids)
            .execute(conn)
            .await
            .unwrap();
    }
}

/// Counts the rows the relay published and wakes the drain's watcher when all are.
#[derive(Default)]
struct Published {
    count: AtomicU64,
    all: Notify,
}

struct Watch(Arc<Published>);

impl RelayObserver for Watch {
    fn on_event(&self, event: &RelayEvent<'_>) {
        if matches!(event, RelayEvent::Published { .. })
            && self.0.count.fetch_add(1, Ordering::Relaxed) + 1 == u64::try_from(ROWS).unwrap()
        {
            self.0.all.notify_one();
        }
    }
}

/// Rows not yet published.
async fn pending(conn: &mut AsyncPgConnection) -> i64 {
    count(conn, "SELECT count(*) AS n FROM dionysus_outbox WHERE published_at IS NULL").await
}

async fn relay_drain(
    db: &TestDb,
    producer: &dionysus::kafka::Producer,
    topic: &str,
    settings: Option<(usize, usize)>,
    retention: Option<Duration>,
    sideloads: bool,
) -> Duration {
    let kafka = kafka_config();
    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka;
    if let Some((workers, batch_size)) = settings {
        config.producer.relay_workers = workers;
        config.producer.batch_size = batch_size;
    }
    config.producer.retention = retention;
    let serialize = serialize_erased::<Item, DefaultSerializer>;
    let registry = if sideloads {
        registry_with_sideloads::<Item>(topic, PARTITIONS, "account_id", serialize, &WITH_FEES)
    } else {
        registry_for::<Item>(topic, PARTITIONS, "account_id", serialize)
    };
    // The producer the baselines use, already connected: all sides start warm. The drain is
    // watched through the relay's observer, not by counting the pending rows in a loop: such
    // a count takes a share of the database the relay needs (the raw loop bears none), and it
    // slowed the relay's drains by up to a fifth here.
    let published = Arc::new(Published::default());
    let relay = Relay::builder(config)
        .producer(producer.clone())
        .registry(registry)
        .observer(Watch(Arc::clone(&published)))
        .build()
        .unwrap();
    let mut conn = db.connection().await;
    let started = Instant::now();
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, token) = (relay.clone(), token.clone());
        async move { relay.run(token).await }
    });
    // Every row acknowledged (should the relay mark a row without sending it, a look at the
    // outbox every 250 ms ends the wait too), then the last marks: done when none is pending.
    let all = u64::try_from(ROWS).unwrap();
    while AtomicU64::load(&published.count, Ordering::Relaxed) < all {
        let _ = tokio::time::timeout(Duration::from_millis(250), published.all.notified()).await;
        if pending(&mut conn).await == 0 {
            break;
        }
    }
    while pending(&mut conn).await > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    running.await.unwrap().unwrap();
    elapsed
}

fn line(label: &str, elapsed: Duration, baseline: Duration) {
    let rate = ROWS as f64 / elapsed.as_secs_f64();
    let ratio = baseline.as_secs_f64() / elapsed.as_secs_f64();
    println!("  {label:<44} {:>7.2} s {:>9.0} events/s {:>6.0}% of raw", elapsed.as_secs_f64(), rate, ratio * 100.0);
}

#[tokio::main]
async fn main() {
    dionysus_tests::print_machine_speed().await;
    let keys = dionysus_tests::bench_keys();
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(&format!(
        "CREATE TABLE bench_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL, daily_price BIGINT NOT NULL);
         INSERT INTO bench_items (account_id, name, daily_price) SELECT i % 50, 'Villa ' || i, 100 + i % 300 FROM generate_series(1, {ITEMS}) i;
         CREATE TABLE bench_fees (id BIGSERIAL PRIMARY KEY, item_id BIGINT NOT NULL, amount BIGINT NOT NULL);
         INSERT INTO bench_fees (item_id, amount) SELECT i, 10 + i % 90 FROM generate_series(1, {ITEMS}) i;
         CREATE INDEX ON bench_fees (item_id);"
    ))
    .await
    .unwrap();
    let items: Vec<Item> =
        bench_items::table.order(bench_items::id).select(Item::as_select()).load(&mut conn).await.unwrap();
    let payloads: Vec<Vec<u8>> = items
        .iter()
        .map(|item| {
            let data = serde_json::json!([{"id": item.id, "account_id": item.account_id, "name": item.name, "daily_price": item.daily_price, "links": {}}]);
            dionysus::__internals::wire::envelope::Envelope::single("item_updated", "Item", data).encode().unwrap()
        })
        .collect();
    let kafka = kafka_config();
    let producer = dionysus::kafka::producer(&kafka).unwrap();

    // The broker's own ceiling: the same payloads produced with no database at all.
    let produce_topic = create_topic(&kafka, "bench_produce", PARTITIONS).await;
    let started = Instant::now();
    for chunk in 0..(ROWS / 1000) {
        let mut deliveries = Vec::with_capacity(1000);
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let item = (i % ITEMS) + 1;
            let key = format!("Item:{item}");
            let partition_key = (item % keys).to_string();
            let record = FutureRecord::to(&produce_topic)
                .key(&key)
                .payload(&payloads[usize::try_from(item - 1).unwrap()])
                .partition(dionysus::kafka::partition_for(partition_key.as_bytes(), PARTITIONS));
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    let produce_elapsed = started.elapsed();

    let raw_topic = create_topic(&kafka, "bench_raw", PARTITIONS).await;
    fill(&mut conn, &raw_topic).await;
    let started = Instant::now();
    raw(&mut conn, &producer, &raw_topic, &payloads).await;
    let raw_elapsed = started.elapsed();

    println!("relay drain of {ROWS} outbox rows ({ITEMS} records, {keys} partition keys, {PARTITIONS} partitions):");
    line("rdkafka produce only, no database (ceiling)", produce_elapsed, raw_elapsed);
    line("raw SQL claim + rdkafka produce (baseline)", raw_elapsed, raw_elapsed);
    let defaults = dionysus::config::ProducerConfig::default();
    // Published rows are kept (and pruned later, as by default) except in the third run, where
    // a retention of zero deletes each row as it is published.
    let runs = [
        (None, None, false),
        (Some((4, 2000)), None, false),
        (Some((4, 2000)), Some(Duration::ZERO), false),
        (Some((1, 100)), None, false),
        (None, None, true),
    ];
    for (settings, retention, sideloads) in runs {
        let topic = create_topic(&kafka, "bench_relay", PARTITIONS).await;
        fill(&mut conn, &topic).await;
        let elapsed = relay_drain(&db, &producer, &topic, settings, retention, sideloads).await;
        let label = match (settings, retention) {
            (None, _) if sideloads => "relay, defaults, with(Fee) sideloaded".to_owned(),
            (None, _) => {
                format!("relay, defaults ({} workers, batch ≤ {})", defaults.relay_workers, defaults.batch_size)
            }
            (Some((4, 2000)), Some(_)) => "relay, tuned, rows deleted when published".to_owned(),
            (Some((4, 2000)), None) => "relay, tuned (4 workers, batch ≤ 2000)".to_owned(),
            (Some((workers, batch)), _) => format!("relay, {workers} worker(s), batch ≤ {batch} (dionysus-rb's)"),
        };
        line(&label, elapsed, raw_elapsed);
    }
}
