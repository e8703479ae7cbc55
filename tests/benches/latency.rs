//! End-to-end latency: from a writer's commit to the replica row in the consuming service's
//! database, at 1 000 and 3 000 events per second, with the relay and the consumer on their
//! default settings — next to the broker alone (rdkafka produce → broker → rdkafka consume,
//! no database) at the same rates, measured the same way in the same run.
//!
//! Run with: `scripts/bench latency`. `DIONYSUS_BENCH_SECONDS` changes how long each rate
//! runs (20 s), `DIONYSUS_BENCH_RATES` which rates run (`1000,3000`);
//! `DIONYSUS_KAFKA_<PROPERTY>` variables change the Kafka client settings of both sides (e.g.
//! `DIONYSUS_KAFKA_FETCH_WAIT_MAX_MS=500`), as they do an application's.
//!
//! * dionysus: 24 writer connections (enough that the writers keep the schedule at 3 000/s,
//!   so the offered rate is the rate asked for; connected and warmed before the schedule
//!   starts, as an application's pooled connections are) each commit `INSERT` + `dionysus::outbox::created` as
//!   events fall due (event *i* at start + *i* / rate) and note the wall clock after `COMMIT`
//!   returns (the records carry `created_at` and `updated_at`, as an application's do); the replica table stamps `clock_timestamp()` on each row the consumer writes
//!   (a trigger). Latency = stamp − commit (one host, one clock; the consumer's commit follows
//!   its write within its batch). The line below splits it at the relay's published mark
//!   (`published_at`, set when the broker acknowledged the batch): commit → published shows
//!   the relay's share, published → replica the consumer's (it may be negative: the consumer
//!   can write a row before the relay has marked it).
//! * broker alone: messages produced as they fall due, each carrying its send time, with the
//!   producer and consumer settings dionysus uses; latency = receive − send. Measured before
//!   dionysus (the goal's baseline) and again after it, so a broker that changed during the
//!   run shows: the test broker keeps every message in memory, and at 60 s per rate its own
//!   p99 at 3 000/s passed 1 s.
//! * Under each: the p99 of each fifth of the run (under dionysus also split at the published
//!   mark), so a tail that grows as the run goes reads apart from a steady one. The test
//!   broker's own does, per topic: in 60 s runs at 1 000/s its p99 rose from about 65 ms in
//!   the first fifth to 150–180 ms in the last, and dionysus' rose with it.
//! * Under dionysus: when the slowest 1 % of events were committed, grouped in bursts (events
//!   within 100 ms of each other), so a tail made by one stall reads apart from a steady one.
//! * Under each: how busy the machine was while that part ran (from `/proc`), with the shares
//!   of this process and of the broker, and the time the host gave to other guests. The
//!   broker alone shares the machine with the broker only; dionysus also with PostgreSQL
//!   (the rest of the busy time) and the writers (in this process).
//!
//! Goals: p99 at 1 000/s ≤ the broker's p99 + 50 ms; at 3 000/s no backlog growth (every
//! event arrives shortly after the writes stop).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs, reason = "a benchmark binary")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::Config;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::Consumer;
use dionysus::outbox::Outbox;
use dionysus::relay::Relay;
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{consumer_config, count, create_topic, kafka_config, registry_for, unique_name, TestDb};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

diesel::table! {
    latency_items (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = latency_items)]
#[publishable(model_name = "Item", soft_delete = false)]
struct Item {
    id: i64,
    account_id: i64,
    name: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = latency_items)]
struct NewItem {
    account_id: i64,
    name: String,
}

diesel::table! {
    latency_replica (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        account_id -> Nullable<BigInt>,
        name -> Nullable<Text>,
    }
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = latency_replica)]
#[consume(topic = "bench_latency", model = "Item")]
struct ItemReplica {
    synced_id: i64,
    synced_created_at: Option<DateTime<Utc>>,
    synced_updated_at: Option<DateTime<Utc>>,
    account_id: Option<i64>,
    name: Option<String>,
}

const PARTITIONS: i32 = 12;
const WRITERS: usize = 24;

/// The test broker, with the `DIONYSUS_KAFKA_<PROPERTY>` settings of the environment.
fn bench_kafka() -> dionysus::config::KafkaConfig {
    let mut kafka = kafka_config();
    kafka.properties.extend(Config::from_env().expect("DIONYSUS_* variables are valid").kafka.properties);
    kafka
}

fn seconds() -> u64 {
    dionysus_tests::bench_number("DIONYSUS_BENCH_SECONDS", 20)
}

/// The rates to run, events per second (`DIONYSUS_BENCH_RATES`, comma-separated; 1000,3000).
fn rates() -> Vec<u64> {
    let Ok(rates) = std::env::var("DIONYSUS_BENCH_RATES") else { return vec![1000, 3000] };
    rates
        .split(',')
        .map(|rate| rate.trim().parse().expect("DIONYSUS_BENCH_RATES is a comma-separated list of events per second"))
        .collect()
}

fn micros_since_epoch(at: SystemTime) -> i64 {
    i64::try_from(at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// The value at quantile `q` of sorted latencies in µs, in ms.
fn quantile(sorted: &[i64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(0) as f64 / 1000.0
}

/// CPU time so far, in clock ticks (Linux `/proc`; `None` elsewhere): the machine's, this
/// process's (the writers, the relay and the consumer, or the baseline's clients) and the
/// broker's (`DIONYSUS_BROKER_PID`, set by `scripts/bench`).
#[derive(Clone, Copy)]
struct CpuTicks {
    busy: u64,
    steal: u64,
    total: u64,
    own: u64,
    broker: Option<u64>,
}

fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // cpu user nice system idle iowait irq softirq steal (guest time is counted in user).
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else { return None };
    let broker = std::env::var("DIONYSUS_BROKER_PID").ok().and_then(|pid| process_ticks(&pid));
    Some(CpuTicks {
        busy: user + nice + system + irq + softirq,
        steal,
        total: fields.iter().sum::<u64>().max(1),
        own: process_ticks("self")?,
        broker,
    })
}

/// User + system time of a process (`/proc/PID/stat`, fields 14 and 15).
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start with the state (field 3).
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Where the machine's CPU went between two samples: the baseline and ours share it with the
/// broker, and ours also with PostgreSQL and the writers, so a busy machine is part of what a
/// latency says. Shares are of all cores; time the host gave to other guests is shown apart.
fn cpu_line(from: Option<CpuTicks>, to: Option<CpuTicks>) {
    let (Some(from), Some(to)) = (from, to) else { return };
    let total = to.total.saturating_sub(from.total).max(1) as f64;
    let share = |ticks: u64| 100.0 * ticks as f64 / total;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let broker = match (from.broker, to.broker) {
        (Some(from), Some(to)) => format!(", the broker {:.0}%", share(to.saturating_sub(from))),
        _ => String::new(),
    };
    println!(
        "    machine CPU while it ran ({cores} cores): {:.0}% busy — this process {:.0}%{broker}; {:.0}% taken by the host",
        share(to.busy.saturating_sub(from.busy)),
        share(to.own.saturating_sub(from.own)),
        share(to.steal.saturating_sub(from.steal))
    );
}

/// The latencies of `(at, latency)` pairs, sorted.
fn sorted_latencies(samples: &[(i64, i64)]) -> Vec<i64> {
    let mut latencies: Vec<i64> = samples.iter().map(|&(_, latency)| latency).collect();
    latencies.sort_unstable();
    latencies
}

/// p99 of each fifth of a run, from `(at, latency)` pairs in µs (`at` orders them in time):
/// a tail that grows as the run goes reads apart from a steady one.
fn fifths(mut samples: Vec<(i64, i64)>) -> String {
    samples.sort_unstable_by_key(|&(at, _)| at);
    let size = samples.len().div_ceil(5).max(1);
    samples
        .chunks(size)
        .map(|chunk| format!("{:.0}", quantile(&sorted_latencies(chunk), 0.99)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// p50, p95, p99 and max of latencies in µs, printed in ms.
fn summary(label: &str, mut micros: Vec<i64>, expected: u64, elapsed: Duration) -> f64 {
    micros.sort_unstable();
    let at = |q: f64| quantile(&micros, q);
    println!(
        "  {label:<34} {:>6} events ({:>5.0}/s offered) p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        micros.len(),
        expected as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    );
    if (micros.len() as u64) < expected {
        println!("    {} of {expected} events did not arrive", expected - micros.len() as u64);
    }
    at(0.99)
}

/// Broker alone: produce `rate`/s for the duration, each message carrying its send time; a
/// consumer with dionysus' settings notes when each arrives.
async fn broker_alone(rate: u64, label: &str) -> f64 {
    let kafka = bench_kafka();
    let topic = create_topic(&kafka, "bench_latency_broker", PARTITIONS).await;
    let consumer: StreamConsumer = consumer_config(&kafka, &unique_name("latency")).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let total = rate * seconds();
    let receiving = tokio::spawn(async move {
        let mut stream = consumer.stream();
        let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap());
        while (latencies.len() as u64) < total {
            let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await else {
                break;
            };
            let received = micros_since_epoch(SystemTime::now());
            let sent: i64 = std::str::from_utf8(message.payload().unwrap()).unwrap().parse().unwrap();
            if sent >= 0 {
                latencies.push((sent, received - sent));
            }
        }
        latencies
    });
    // Warm up: wait until the consumer has its partitions (a marker message arrives).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_from = cpu_ticks();
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let key = format!("Item:{}", i % 10_000);
        let payload = micros_since_epoch(SystemTime::now()).to_string();
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    let elapsed = started.elapsed();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let latencies = receiving.await.unwrap();
    let cpu_to = cpu_ticks();
    let p99 = summary(label, sorted_latencies(&latencies), total, elapsed);
    println!("    p99 by fifth of the run: {} ms", fifths(latencies));
    cpu_line(cpu_from, cpu_to);
    p99
}

struct Pipeline {
    url: String,
    topic: String,
    registry: &'static dionysus::Registry,
    config: Config,
}

/// dionysus: writers commit at `rate`/s for the duration; latency = replica stamp − commit.
async fn end_to_end(pipeline: &Pipeline, rate: u64, conn: &mut AsyncPgConnection) -> f64 {
    let total = rate * seconds();
    let mut connections = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        connections.push(writer_connection(pipeline).await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let cpu_from = cpu_ticks();
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for mut conn in connections {
        let (next, registry, producer_config) = (next.clone(), pipeline.registry, pipeline.config.producer.clone());
        writers.spawn(async move {
            let outbox = Outbox::new(registry, &producer_config);
            let mut committed: Vec<(i64, i64)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return committed;
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let id = conn
                    .transaction::<_, anyhow::Error, _>(async |tx| {
                        let item: Item = diesel::insert_into(latency_items::table)
                            .values(NewItem { account_id: i64::try_from(i % 50).unwrap(), name: format!("Villa {i}") })
                            .returning(Item::as_returning())
                            .get_result(tx)
                            .await?;
                        outbox.created(tx, &item).await?;
                        Ok(item.id)
                    })
                    .await
                    .unwrap();
                committed.push((id, micros_since_epoch(SystemTime::now())));
            }
        });
    }
    let mut committed = Vec::with_capacity(usize::try_from(total).unwrap());
    while let Some(part) = writers.join_next().await {
        committed.extend(part.unwrap());
    }
    let elapsed = started.elapsed();
    let cpu_to = cpu_ticks();
    let first = committed.iter().map(|(id, _)| *id).min().unwrap_or(0);
    let last = committed.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let range = format!("synced_id BETWEEN {first} AND {last}");
    let behind = total
        - u64::try_from(count(conn, &format!("SELECT count(*) AS n FROM latency_replica WHERE {range}")).await)
            .unwrap();
    let caught_up = Instant::now();
    while count(conn, &format!("SELECT count(*) AS n FROM latency_replica WHERE {range}")).await
        < i64::try_from(total).unwrap()
    {
        if caught_up.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = caught_up.elapsed();

    #[derive(QueryableByName)]
    struct Stamp {
        #[diesel(sql_type = BigInt)]
        synced_id: i64,
        #[diesel(sql_type = Timestamptz)]
        applied_at: DateTime<Utc>,
        #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
        published_at: Option<DateTime<Utc>>,
    }
    let stamps: Vec<Stamp> = diesel::sql_query(format!(
        "SELECT r.synced_id, r.applied_at, o.published_at FROM latency_replica r \
         LEFT JOIN dionysus_outbox o ON o.resource_class = 'Item' AND o.resource_id = r.synced_id::text \
         WHERE r.{range}"
    ))
    .load(conn)
    .await
    .unwrap();
    let stamps: std::collections::HashMap<i64, (i64, Option<i64>)> = stamps
        .into_iter()
        .map(|stamp| {
            (stamp.synced_id, (stamp.applied_at.timestamp_micros(), stamp.published_at.map(|at| at.timestamp_micros())))
        })
        .collect();
    let timeline: Vec<Event> = committed
        .iter()
        .filter_map(|(id, at)| {
            let &(applied, published) = stamps.get(id)?;
            Some(Event { committed: *at, latency: applied - at, relayed: published.map(|published| published - at) })
        })
        .collect();
    // (commit, latency) pairs: commit → replica row, and split at the published mark.
    let timed: Vec<(i64, i64)> = timeline.iter().map(|event| (event.committed, event.latency)).collect();
    let relayed_timed: Vec<(i64, i64)> =
        timeline.iter().filter_map(|event| Some((event.committed, event.relayed?))).collect();
    let consumed_timed: Vec<(i64, i64)> =
        timeline.iter().filter_map(|event| Some((event.committed, event.latency - event.relayed?))).collect();
    let (relayed, consumed) = (sorted_latencies(&relayed_timed), sorted_latencies(&consumed_timed));
    let p99 = summary("dionysus (commit → replica row)", sorted_latencies(&timed), total, elapsed);
    println!(
        "    writes took {:.1} s for {:.1} s of schedule; {behind} events not yet in the replica when the writes stopped, all in {:.2} s after",
        elapsed.as_secs_f64(),
        total as f64 / rate as f64,
        caught_up.as_secs_f64()
    );
    println!(
        "    commit → published mark p50 {:.1} ms p99 {:.1} ms; published mark → replica row p50 {:.1} ms p99 {:.1} ms",
        quantile(&relayed, 0.5),
        quantile(&relayed, 0.99),
        quantile(&consumed, 0.5),
        quantile(&consumed, 0.99)
    );
    println!(
        "    p99 by fifth of the run: {} ms; commit → published mark {} ms; published mark → replica row {} ms",
        fifths(timed),
        fifths(relayed_timed),
        fifths(consumed_timed)
    );
    cpu_line(cpu_from, cpu_to);
    slowest_line(timeline);
    p99
}

/// A writer's connection, warm as an application's pooled one is: connected, and the writer's
/// statements run once in a transaction rolled back (a new server process's first statements
/// load its caches; 24 of them at once would stall the machine at the start of the schedule).
async fn writer_connection(pipeline: &Pipeline) -> AsyncPgConnection {
    let outbox = Outbox::new(pipeline.registry, &pipeline.config.producer);
    let mut conn = AsyncPgConnection::establish(&pipeline.url).await.unwrap();
    let warmed = conn
        .transaction::<(), anyhow::Error, _>(async |tx| {
            let item: Item = diesel::insert_into(latency_items::table)
                .values(NewItem { account_id: 0, name: "warm-up".to_owned() })
                .returning(Item::as_returning())
                .get_result(tx)
                .await?;
            outbox.created(tx, &item).await?;
            Err(anyhow::anyhow!("rolled back"))
        })
        .await;
    assert!(warmed.is_err_and(|error| error.to_string() == "rolled back"), "the warm-up rolls back");
    conn
}

/// One event of the end-to-end run: when it was committed (µs since the epoch), its latency
/// and the relay's share of it (commit → published mark), in µs.
struct Event {
    committed: i64,
    latency: i64,
    relayed: Option<i64>,
}

/// Where the slowest 1 % of events were committed: spread over the run (a steady tail) or in
/// a few bursts (stalls), each with when it started, how long the events in it took at most
/// and how much of that the relay's part was.
fn slowest_line(mut events: Vec<Event>) {
    let Some(start) = events.iter().map(|event| event.committed).min() else { return };
    events.sort_unstable_by_key(|event| std::cmp::Reverse(event.latency));
    events.truncate(events.len().div_ceil(100));
    events.sort_unstable_by_key(|event| event.committed);
    // Events committed within 100 ms of the previous slow one belong to its burst (each
    // burst's events stay in commit order).
    let mut bursts: Vec<Vec<&Event>> = Vec::new();
    let mut previous = None;
    for event in &events {
        match bursts.last_mut() {
            Some(burst) if previous.is_some_and(|at| event.committed - at <= 100_000) => burst.push(event),
            _ => bursts.push(vec![event]),
        }
        previous = Some(event.committed);
    }
    bursts.sort_unstable_by_key(|burst| std::cmp::Reverse(burst.len()));
    let described: Vec<String> = bursts
        .iter()
        .take(4)
        .map(|burst| {
            let worst = burst.iter().max_by_key(|event| event.latency).expect("a burst has an event");
            let (first, last) = (burst[0].committed, burst[burst.len() - 1].committed);
            let relay =
                worst.relayed.map_or_else(|| "?".to_owned(), |relayed| format!("{:.0}", relayed as f64 / 1000.0));
            format!(
                "{} at {:.1} s over {:.0} ms (worst {:.0} ms, relay {relay} ms of it)",
                burst.len(),
                (first - start) as f64 / 1e6,
                (last - first) as f64 / 1000.0,
                worst.latency as f64 / 1000.0
            )
        })
        .collect();
    println!("    slowest 1% ({} events) in {} bursts; largest: {}", events.len(), bursts.len(), described.join("; "));
}

#[tokio::main]
async fn main() {
    dionysus_tests::print_machine_speed().await;
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "CREATE TABLE latency_items (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE TABLE latency_replica (synced_id BIGINT NOT NULL UNIQUE, synced_created_at TIMESTAMPTZ,
             synced_updated_at TIMESTAMPTZ, account_id BIGINT, name TEXT, applied_at TIMESTAMPTZ);
         CREATE FUNCTION latency_stamp() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER latency_stamp BEFORE INSERT OR UPDATE ON latency_replica
             FOR EACH ROW EXECUTE FUNCTION latency_stamp();",
    )
    .await
    .unwrap();
    let kafka = bench_kafka();
    let topic = create_topic(&kafka, "bench_latency", PARTITIONS).await;
    let registry = registry_for::<Item>(&topic, PARTITIONS, "account_id", serialize_erased::<Item, DefaultSerializer>);
    // Defaults, or what DIONYSUS_* variables set (to compare settings).
    let mut config = Config::from_env().expect("DIONYSUS_* variables are valid");
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.kafka.group_id = Some(unique_name("latency"));
    config.producer.retention = None;
    let pipeline = Pipeline { url: db.url.clone(), topic: topic.clone(), registry, config: config.clone() };

    let token = CancellationToken::new();
    let relay = Relay::builder(config.clone()).registry(registry).build().unwrap();
    // The consumer's own pool (its default size), as an application gets it.
    let consumer = Consumer::builder(config)
        .replicas(Replicas::new([ItemReplica::DESCRIPTOR]))
        .topic(&pipeline.topic)
        .handlers(false)
        .build()
        .unwrap();
    let relay_task = tokio::spawn({
        let token = token.clone();
        async move { relay.run(token).await }
    });
    let consumer_task = tokio::spawn({
        let token = token.clone();
        async move { consumer.run(token).await }
    });
    // Let the consumer join its group and the relay take its buckets.
    tokio::time::sleep(Duration::from_secs(5)).await;

    println!(
        "end-to-end latency, relay and consumer on default settings, {} s per rate, {WRITERS} writer connections:",
        seconds()
    );
    if !kafka.properties.is_empty() {
        println!(" Kafka client settings from the environment: {:?}", kafka.properties);
    }
    for rate in rates() {
        println!(" {rate} events/s:");
        let broker = broker_alone(rate, "broker alone (produce → consume)").await;
        let ours = end_to_end(&pipeline, rate, &mut conn).await;
        let after = broker_alone(rate, "broker alone again, after dionysus").await;
        println!(
            "    p99: dionysus {ours:.1} ms vs broker alone {broker:.1} ms (+{:.1} ms); broker alone after it {after:.1} ms",
            ours - broker
        );
    }
    token.cancel();
    relay_task.await.unwrap().unwrap();
    consumer_task.await.unwrap().unwrap();
}
