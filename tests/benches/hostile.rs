//! Work per hostile message: time and peak memory of `process_batch` for one message of each
//! adversarial shape, next to a plain message of the same size in the same run.
//!
//! * `plain`: distinct records (`{"id": i, "name": …, "updated_at": …}`), the baseline;
//! * `repeats`: the same record id in every record;
//! * `link names`: one record with a to-one link per name, each with its sideloaded record;
//! * `many parents`: records each linking and sideloading a child (to-many resolution);
//! * `distinct 10 MB`: the plain shape at the message size limit.
//!
//! Peak memory is the process's resident high-water mark during the call, above what was
//! resident before (Linux: `/proc/self/clear_refs` resets the mark). The record cap is raised
//! to 1,000,000 so the work itself is measured; with the default cap (100,000) the larger
//! shapes are dead-lettered as `too_many_records` before any work.
//!
//! Run with: `scripts/bench hostile` (needs PostgreSQL). `DIONYSUS_BENCH_SCALE` (default 1)
//! scales every message size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::SimpleAsyncConnection;
use dionysus::__internals::consumer::InboundMessage;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::{Consumer, UnknownModel};
use dionysus_tests::TestDb;
use serde_json::Value;

diesel::table! {
    hostile_rentals (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        name -> Nullable<Text>,
    }
}

diesel::table! {
    hostile_bookings (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_data -> Nullable<Jsonb>,
        start_at -> Nullable<BigInt>,
        synced_rental_id -> Nullable<BigInt>,
    }
}

#[dionysus::topic(name = "bench_hostile")]
pub struct BenchHostile;

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = hostile_rentals)]
#[consume(topic = "bench_hostile", model = "Rental")]
struct HostileRental {
    synced_id: i64,
    synced_created_at: Option<DateTime<Utc>>,
    synced_updated_at: Option<DateTime<Utc>>,
    synced_data: Option<Value>,
    name: Option<String>,
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = hostile_bookings)]
#[consume(topic = "bench_hostile", model = "Booking")]
struct HostileBooking {
    synced_id: i64,
    synced_updated_at: Option<DateTime<Utc>>,
    synced_data: Option<Value>,
    start_at: Option<i64>,
    synced_rental_id: Option<i64>,
}

const SCHEMA: &str = "
    CREATE TABLE hostile_rentals (synced_id bigint NOT NULL UNIQUE, synced_created_at timestamptz,
        synced_updated_at timestamptz, synced_data jsonb, name text);
    CREATE TABLE hostile_bookings (synced_id bigint NOT NULL UNIQUE, synced_updated_at timestamptz,
        synced_data jsonb, start_at bigint, synced_rental_id bigint);";

fn at(i: usize) -> String {
    format!("2024-01-01T00:{:02}:{:02}.{:03}Z", i / 60 % 60, i % 60, i % 1000)
}

/// An envelope whose records `record(i)` (JSON text) fill `bytes`; written as text so that
/// building it leaves nothing behind in the heap.
fn envelope(bytes: usize, record: impl Fn(usize) -> String) -> Vec<u8> {
    let mut text = String::with_capacity(bytes + 256);
    text.push_str(r#"{"message":[{"event":"rental_updated","model_name":"Rental","data":["#);
    let mut i = 0;
    while i == 0 || text.len() < bytes {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&record(i));
        i += 1;
    }
    text.push_str("]}]}");
    text.into_bytes()
}

fn plain(bytes: usize) -> Vec<u8> {
    envelope(bytes, |i| format!(r#"{{"id":{i},"name":"Villa {i}","updated_at":"{}"}}"#, at(i)))
}

fn repeats(bytes: usize) -> Vec<u8> {
    envelope(bytes, |i| format!(r#"{{"id":1,"name":"Villa {i}","updated_at":"{}"}}"#, at(i)))
}

fn link_names(bytes: usize) -> Vec<u8> {
    let mut links = String::new();
    let mut sideloads = String::new();
    let mut i = 0;
    while links.len() + sideloads.len() < bytes {
        links.push_str(&format!(r#"{}"l{i}":{{"id":{i},"type":"Booking"}}"#, if i > 0 { "," } else { "" }));
        sideloads.push_str(&format!(r#","l{i}":{{"id":{i},"start_at":{i}}}"#));
        i += 1;
    }
    let record = format!(r#"{{"id":1,"links":{{{links}}}{sideloads}}}"#);
    envelope(1, |_| record.clone())
}

fn many_parents(bytes: usize) -> Vec<u8> {
    envelope(bytes, |i| {
        format!(
            r#"{{"id":{i},"updated_at":"{}","links":{{"bookings":[{i}]}},"bookings":[{{"id":{i},"start_at":{i}}}]}}"#,
            at(i)
        )
    })
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn run(name: &str, payload: Vec<u8>) {
    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(SCHEMA).await.unwrap();
    let mut config = dionysus::Config::from_lookup(|variable| {
        (variable == "DIONYSUS_CONSUMER_MAX_RECORDS_PER_MESSAGE").then(|| "1000000".to_owned())
    })
    .unwrap();
    config.database_url = db.url.clone();
    let consumer = Consumer::builder(config)
        .pool(db.pool(2))
        .replicas(Replicas::new([HostileRental::DESCRIPTOR, HostileBooking::DESCRIPTOR]))
        .unknown_model(UnknownModel::DeadLetter)
        .handlers(false)
        .build()
        .unwrap();
    let size = payload.len();
    let message = InboundMessage {
        topic: "bench_hostile".to_owned(),
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(payload),
    };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmRSS:");
    let started = Instant::now();
    let outcome = consumer.process_batch(std::slice::from_ref(&message)).await.unwrap();
    let took: Duration = started.elapsed();
    let peak = status_kb("VmHWM:").saturating_sub(before);
    let dead = outcome.dead_letters.first().map_or(String::new(), |dead| format!(" (dead letter: {})", dead.reason));
    println!(
        "{name:<16} {:>6.2} MB  {:>8.2} s  peak +{:>6.0} MB  ({:.1}× the message){dead}",
        size as f64 / 1e6,
        took.as_secs_f64(),
        peak as f64 / 1024.0,
        peak as f64 * 1024.0 / size as f64,
    );
}

const SHAPES: [(&str, &str, f64); 6] = [
    ("plain", "plain", 4.5),
    ("repeats", "repeats", 4.5),
    ("plain", "plain", 2.0),
    ("link names", "link_names", 2.0),
    ("many parents", "many_parents", 2.0),
    ("distinct 10 MB", "plain", 9.9),
];

/// Without arguments, runs every shape in a process of its own (so that one shape's heap
/// does not hide the next one's peak); with `INDEX MEGABYTES`, runs that one of [`SHAPES`].
#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    if let [index, megabytes] = args.as_slice() {
        let (name, shape, _) = SHAPES[index.parse::<usize>().unwrap()];
        let bytes = (megabytes.parse::<f64>().unwrap() * 1e6) as usize;
        let payload = match shape {
            "plain" => plain(bytes),
            "repeats" => repeats(bytes),
            "link_names" => link_names(bytes),
            "many_parents" => many_parents(bytes),
            other => panic!("unknown shape {other}"),
        };
        run(name, payload).await;
        return;
    }
    let scale: f64 = dionysus_tests::bench_number("DIONYSUS_BENCH_SCALE", 1.0);
    println!("one message per shape through process_batch (scale {scale}), each in a fresh process");
    let me = std::env::current_exe().unwrap();
    for (index, (name, _, megabytes)) in SHAPES.iter().enumerate() {
        let status = std::process::Command::new(&me)
            .arg(index.to_string())
            .arg((megabytes * scale).to_string())
            .status()
            .unwrap();
        assert!(status.success(), "{name}: {status}");
    }
}
