//! Draining a large backlog: 1M outbox rows (`DIONYSUS_BENCH_ROWS` changes the count) over
//! 50 partition keys (`DIONYSUS_BENCH_KEYS` changes that),
//! published by the relay with its default settings, then consumed into a replica table by
//! the consumer with its defaults.
//!
//! Run with: `scripts/bench backlog`. `DIONYSUS_*` variables change the settings of both sides
//! (e.g. `DIONYSUS_CONSUMER_BATCH_SIZE=1000`), as they do an application's.
//!
//! Each side runs in a process of its own (this binary started again with
//! `DIONYSUS_BENCH_PHASE=relay|consume`), so the resident memory sampled from
//! `/proc/<pid>/status` every 100 ms is that side's alone. The relay's rate is reported per
//! tenth of the backlog (from its own `Published` events, so nothing polls the outbox
//! meanwhile), the consumer's per tenth of the messages (from its stored offsets). Goals:
//! the last tenth drains at ≥ 0.9× the first; relay RSS < 100 MiB, consumer < 150 MiB.
//! Each side also prints the write-ahead log written per tenth: a tenth that writes far more
//! than the others for the same rows ran after a checkpoint began, when PostgreSQL logs each
//! page's first change whole, and is slower for the database's sake, not the drain's.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs, reason = "a benchmark binary")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::SimpleAsyncConnection;
use dionysus::config::Config;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::Consumer;
use dionysus::relay::{Relay, RelayEvent, RelayObserver};
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{count, create_topic, kafka_config, registry_for, TestDb};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

diesel::table! {
    backlog_items (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        daily_price -> BigInt,
    }
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = backlog_items)]
#[publishable(model_name = "Item", soft_delete = false)]
struct Item {
    id: i64,
    account_id: i64,
    name: String,
    daily_price: i64,
}

diesel::table! {
    backlog_replica (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        account_id -> Nullable<BigInt>,
        name -> Nullable<Text>,
        daily_price -> Nullable<BigInt>,
    }
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = backlog_replica)]
#[consume(topic = "bench_backlog", model = "Item")]
struct ItemReplica {
    synced_id: i64,
    synced_created_at: Option<DateTime<Utc>>,
    synced_updated_at: Option<DateTime<Utc>>,
    account_id: Option<i64>,
    name: Option<String>,
    daily_price: Option<i64>,
}

const ITEMS: i64 = 10_000;
const PARTITIONS: i32 = 12;

fn rows() -> u64 {
    dionysus_tests::bench_number("DIONYSUS_BENCH_ROWS", 1_000_000)
}

/// The defaults, or what `DIONYSUS_*` variables set (to compare settings), on the test broker.
fn config(url: &str) -> Config {
    let mut config = Config::from_env().expect("DIONYSUS_* variables are valid");
    config.database_url = url.to_owned();
    let kafka = kafka_config();
    config.kafka.brokers = kafka.brokers;
    config.kafka.client_id = kafka.client_id;
    config.producer.retention = None;
    config
}

/// Counts published rows and notes when each tenth of the backlog was done.
struct Tenths {
    published: AtomicU64,
    total: u64,
    started: Instant,
    marks: std::sync::Mutex<Vec<Duration>>,
    /// Buckets handed from a busy worker to an idle one: when, how many.
    handovers: std::sync::Mutex<Vec<(Duration, usize)>>,
}

#[derive(Clone)]
struct Counting(Arc<Tenths>);

impl RelayObserver for Counting {
    fn on_event(&self, event: &RelayEvent<'_>) {
        let tenths = &self.0;
        match event {
            RelayEvent::Published { .. } => {
                let done = tenths.published.fetch_add(1, Ordering::Relaxed) + 1;
                if done * 10 / tenths.total != (done - 1) * 10 / tenths.total {
                    tenths.marks.lock().unwrap().push(tenths.started.elapsed());
                }
            }
            RelayEvent::BucketsHandedOver { buckets, .. } => {
                tenths.handovers.lock().unwrap().push((tenths.started.elapsed(), buckets.len()));
            }
            _ => {}
        }
    }
}

/// Where PostgreSQL's write-ahead log is, in bytes.
async fn wal_position(conn: &mut diesel_async::AsyncPgConnection) -> i64 {
    count(conn, "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS n").await
}

/// Prints the write-ahead log written per tenth (`wal`: the position at the start and at
/// each tenth's end). A tenth that writes much more than the others for the same rows ran
/// just after a checkpoint began (every page's first change after it is logged whole): a
/// slow tenth with a large figure is the database's checkpoint, not the drain.
fn print_wal(what: &str, wal: &[i64]) {
    let shown: Vec<String> =
        wal.windows(2).map(|pair| format!("{:.0}", (pair[1] - pair[0]) as f64 / (1024.0 * 1024.0))).collect();
    println!("  {what} write-ahead log per tenth (MiB): {}", shown.join(" "));
}

fn print_tenths(what: &str, total: u64, marks: &[Duration]) {
    let tenth = total as f64 / 10.0;
    let mut rates = Vec::new();
    let mut previous = Duration::ZERO;
    for mark in marks {
        rates.push(tenth / (*mark - previous).as_secs_f64().max(1e-6));
        previous = *mark;
    }
    let shown: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    println!("  {what} rate per tenth (events/s): {}", shown.join(" "));
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!(
            "  {what}: {total} in {:.1} s = {:.0} events/s; last tenth / first tenth = {:.2}",
            previous.as_secs_f64(),
            total as f64 / previous.as_secs_f64(),
            last / first
        );
    }
}

/// The relay side: publish until every row is published, print the tenths.
async fn relay_phase(url: &str, topic: &str) {
    let total = rows();
    let tenths = Arc::new(Tenths {
        published: AtomicU64::new(0),
        total,
        started: Instant::now(),
        marks: std::sync::Mutex::new(Vec::new()),
        handovers: std::sync::Mutex::new(Vec::new()),
    });
    let relay = Relay::builder(config(url))
        .registry(registry_for::<Item>(topic, PARTITIONS, "account_id", serialize_erased::<Item, DefaultSerializer>))
        .observer(Counting(tenths.clone()))
        .build()
        .unwrap();
    let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url).await.unwrap();
    let mut wal = vec![wal_position(&mut conn).await];
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, token) = (relay.clone(), token.clone());
        async move { relay.run(token).await }
    });
    loop {
        let marked = tenths.marks.lock().unwrap().len();
        if marked >= wal.len() {
            let position = wal_position(&mut conn).await;
            wal.resize(marked + 1, position);
        }
        if tenths.published.load(Ordering::Relaxed) >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();
    print_tenths("relay", total, &tenths.marks.lock().unwrap());
    print_wal("relay", &wal);
    let handovers: Vec<String> = tenths
        .handovers
        .lock()
        .unwrap()
        .iter()
        .map(|(at, buckets)| format!("{buckets} at {:.1} s", at.as_secs_f64()))
        .collect();
    if !handovers.is_empty() {
        println!("  relay: busy buckets handed to an idle worker: {}", handovers.join(", "));
    }
}

/// The consumer side: consume until every message is applied (offsets stored).
async fn consume_phase(url: &str, topic: &str) {
    let total = i64::try_from(rows()).unwrap();
    let db_pool = dionysus::db::pool(url, 4).unwrap();
    let consumer = Consumer::builder(config(url))
        .pool(db_pool)
        .replicas(Replicas::new([ItemReplica::DESCRIPTOR]))
        .topic(topic)
        .handlers(false)
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let token = token.clone();
        async move { consumer.run(token).await }
    });
    let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url).await.unwrap();
    let stored =
        "SELECT COALESCE(sum(next_offset), 0)::bigint AS n FROM dionysus_consumer_offsets WHERE next_offset >= 0";
    let mut started: Option<Instant> = None;
    let mut marks = Vec::new();
    let mut wal = Vec::new();
    loop {
        let done = count(&mut conn, stored).await;
        if done > 0 && started.is_none() {
            started = Some(Instant::now());
            wal.push(wal_position(&mut conn).await);
        }
        if let Some(started) = started {
            let marked = marks.len();
            while (marks.len() as i64 + 1) * total / 10 <= done && marks.len() < 10 {
                marks.push(started.elapsed());
            }
            if marks.len() > marked {
                let position = wal_position(&mut conn).await;
                wal.resize(marks.len() + 1, position);
            }
        }
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    running.await.unwrap().unwrap();
    print_tenths("consumer (from its first stored offset)", rows(), &marks);
    print_wal("consumer", &wal);
}

/// Starts this binary again for `phase` and samples its resident memory until it exits.
fn run_phase(phase: &str, url: &str, topic: &str) -> (u64, u64) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("DIONYSUS_BENCH_PHASE", phase)
        .env("DIONYSUS_BENCH_URL", url)
        .env("DIONYSUS_BENCH_TOPIC", topic)
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let (mut peak, mut samples, mut sum) = (0_u64, 0_u64, 0_u64);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "the {phase} phase failed: {exit}");
            break;
        }
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kib) = text
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
            {
                peak = peak.max(kib);
                samples += 1;
                sum += kib;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (peak, sum / samples.max(1))
}

#[tokio::main]
async fn main() {
    if let Ok(phase) = std::env::var("DIONYSUS_BENCH_PHASE") {
        let url = std::env::var("DIONYSUS_BENCH_URL").unwrap();
        let topic = std::env::var("DIONYSUS_BENCH_TOPIC").unwrap();
        match phase.as_str() {
            "relay" => relay_phase(&url, &topic).await,
            "consume" => consume_phase(&url, &topic).await,
            other => panic!("unknown phase {other}"),
        }
        return;
    }
    let total = rows();
    let keys = dionysus_tests::bench_keys();
    dionysus_tests::print_machine_speed().await;
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "bench_backlog", PARTITIONS).await;
    let filling = Instant::now();
    conn.batch_execute(&format!(
        "CREATE TABLE backlog_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL, daily_price BIGINT NOT NULL);
         INSERT INTO backlog_items (account_id, name, daily_price) SELECT i % 50, 'Villa ' || i, 100 + i % 300 FROM generate_series(1, {ITEMS}) i;
         CREATE TABLE backlog_replica (synced_id BIGINT NOT NULL UNIQUE, synced_created_at TIMESTAMPTZ, synced_updated_at TIMESTAMPTZ,
             account_id BIGINT, name TEXT, daily_price BIGINT);
         INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
         SELECT 'Item', ((i % {ITEMS}) + 1)::text, 'item_updated', '{topic}', (((i % {ITEMS}) + 1) % {keys})::text
         FROM generate_series(1, {total}) i;"
    ))
    .await
    .unwrap();
    conn.batch_execute("VACUUM ANALYZE dionysus_outbox").await.unwrap();
    println!(
        "backlog of {total} outbox rows ({ITEMS} records, {keys} partition keys, {PARTITIONS} partitions), written in {:.1} s; \
         relay and consumer with default settings, each in its own process",
        filling.elapsed().as_secs_f64()
    );
    let (peak, mean) = run_phase("relay", &db.url, &topic);
    println!(
        "  relay RSS: peak {:.1} MiB, mean {:.1} MiB (goal < 100 MiB)",
        peak as f64 / 1024.0,
        mean as f64 / 1024.0
    );
    let left = count(&mut conn, "SELECT count(*) AS n FROM dionysus_outbox WHERE published_at IS NULL").await;
    assert_eq!(left, 0, "rows left unpublished");
    let (peak, mean) = run_phase("consume", &db.url, &topic);
    println!(
        "  consumer RSS: peak {:.1} MiB, mean {:.1} MiB (goal < 150 MiB)",
        peak as f64 / 1024.0,
        mean as f64 / 1024.0
    );
}
