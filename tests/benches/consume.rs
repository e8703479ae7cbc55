//! Consumer throughput: 100k messages of ~20 columns each, consumed from the broker into a
//! replica table by `dionysus::consumer`, next to a raw baseline in the same run — one
//! server-side `INSERT … SELECT … ON CONFLICT … DO UPDATE … WHERE` writing the same rows.
//!
//! Run with: `scripts/bench consume` (starts the broker; needs PostgreSQL).
//! `DIONYSUS_BENCH_MESSAGES` changes the message count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::Consumer;
use dionysus_tests::{create_topic, kafka_config, TestDb};
use futures_util::future::join_all;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tokio_util::sync::CancellationToken;

diesel::table! {
    bench_rentals (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
        headline -> Nullable<Text>,
        city -> Nullable<Text>,
        country_code -> Nullable<Text>,
        currency -> Nullable<Text>,
        sleeps -> Nullable<Integer>,
        bedrooms -> Nullable<Integer>,
        bathrooms -> Nullable<Integer>,
        surface -> Nullable<Integer>,
        account_id -> Nullable<BigInt>,
        daily_price -> Nullable<Double>,
        latitude -> Nullable<Double>,
        longitude -> Nullable<Double>,
        published -> Nullable<Bool>,
        instant_booking -> Nullable<Bool>,
        checkin_at -> Nullable<Timestamptz>,
        checkout_at -> Nullable<Timestamptz>,
    }
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = bench_rentals)]
#[consume(topic = "bench_rentals", model = "Rental")]
struct BenchRental {
    synced_id: i64,
    synced_created_at: Option<DateTime<Utc>>,
    synced_updated_at: Option<DateTime<Utc>>,
    name: Option<String>,
    headline: Option<String>,
    city: Option<String>,
    country_code: Option<String>,
    currency: Option<String>,
    sleeps: Option<i32>,
    bedrooms: Option<i32>,
    bathrooms: Option<i32>,
    surface: Option<i32>,
    account_id: Option<i64>,
    daily_price: Option<f64>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    published: Option<bool>,
    instant_booking: Option<bool>,
    checkin_at: Option<DateTime<Utc>>,
    checkout_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "synced_id bigint NOT NULL UNIQUE, synced_created_at timestamptz, synced_updated_at timestamptz,
    name text, headline text, city text, country_code text, currency text, sleeps integer, bedrooms integer,
    bathrooms integer, surface integer, account_id bigint, daily_price double precision, latitude double precision,
    longitude double precision, published boolean, instant_booking boolean, checkin_at timestamptz, checkout_at timestamptz";

/// The record of message `i`, as a producer would serialize it.
fn record(i: i64) -> serde_json::Value {
    let at = format!("2024-01-01T00:00:{:02}.{:03}Z", i % 60, i % 1000);
    json!({
        "links": {"account": i % 97}, "id": i, "created_at": at, "updated_at": at,
        "name": format!("Villa {i}"), "headline": "Sea view, quiet street", "city": "Chania",
        "country_code": "GR", "currency": "EUR", "sleeps": 4 + i % 6, "bedrooms": 2 + i % 3,
        "bathrooms": 1 + i % 2, "surface": 80 + i % 50, "account_id": i % 97,
        "daily_price": 120.5 + (i % 40) as f64, "latitude": 35.5, "longitude": 24.0,
        "published": i % 2 == 0, "instant_booking": i % 3 == 0,
        "checkin_at": "2024-06-01T15:00:00.000Z", "checkout_at": "2024-06-08T10:00:00.000Z"
    })
}

/// The same rows, generated server-side for the raw baseline.
const RAW_SELECT: &str = "SELECT i, ts, ts, 'Villa ' || i, 'Sea view, quiet street', 'Chania', 'GR', 'EUR',
    (4 + i % 6)::int, (2 + i % 3)::int, (1 + i % 2)::int, (80 + i % 50)::int, i % 97, 120.5 + (i % 40),
    35.5, 24.0, i % 2 = 0, i % 3 = 0, timestamptz '2024-06-01T15:00:00Z', timestamptz '2024-06-08T10:00:00Z'
    FROM (SELECT i, timestamptz '2024-01-01T00:00:00Z' + (i % 60) * interval '1 s' + (i % 1000) * interval '1 ms' AS ts
          FROM generate_series(1, $N) AS i) AS g";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).await.unwrap().n
}

/// One record as the raw consumer reads it: a typed struct, no envelope rules.
#[derive(serde::Deserialize, Clone)]
struct RawRecord {
    id: i64,
    created_at: String,
    updated_at: String,
    name: String,
    headline: String,
    city: String,
    country_code: String,
    currency: String,
    sleeps: i64,
    bedrooms: i64,
    bathrooms: i64,
    surface: i64,
    account_id: i64,
    daily_price: f64,
    latitude: f64,
    longitude: f64,
    published: bool,
    instant_booking: bool,
    checkin_at: String,
    checkout_at: String,
}

#[derive(serde::Deserialize)]
struct RawEvent {
    data: Vec<RawRecord>,
}

#[derive(serde::Deserialize)]
struct RawEnvelope {
    message: Vec<RawEvent>,
}

/// The least a hand-written consumer does for the same messages: read all partitions
/// (assigned, no group), parse each payload into a typed struct, and write batches of 1000
/// with one `INSERT … SELECT FROM unnest(typed arrays) ON CONFLICT … WHERE` and a commit.
/// No offsets table, dead letters, duplicate removal or checks. Returns the time from the
/// first message to the last commit.
async fn raw_consumer(
    conn: &mut AsyncPgConnection,
    kafka: &dionysus::config::KafkaConfig,
    topic: &str,
    partitions: i32,
    total: i64,
) -> Duration {
    use futures_util::StreamExt as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let consumer: StreamConsumer =
        dionysus_tests::consumer_config(kafka, &dionysus_tests::unique_name("raw")).create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut stream = consumer.stream();
    let mut started = None;
    let mut seen = 0_i64;
    while seen < total {
        let mut records = Vec::with_capacity(1000);
        while records.len() < 1000 && seen < total {
            let message = stream.next().await.unwrap().unwrap();
            started.get_or_insert_with(Instant::now);
            seen += 1;
            let envelope: RawEnvelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
            records.extend(envelope.message.into_iter().flat_map(|event| event.data));
        }
        write_rows(conn, "bench_raw_client", &records).await;
    }
    started.map_or(Duration::ZERO, |started| started.elapsed())
}

/// One transaction writing `records` into `table` with a single
/// `INSERT … SELECT FROM unnest(typed arrays) ON CONFLICT … WHERE`.
async fn write_rows(conn: &mut AsyncPgConnection, table: &str, records: &[RawRecord]) {
    use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Text};
    let sql = format!(
        "INSERT INTO {table} SELECT * FROM unnest($1::bigint[], $2::text[]::timestamptz[], \
         $3::text[]::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int[], \
         $10::int[], $11::int[], $12::int[], $13::bigint[], $14::float8[], $15::float8[], $16::float8[], \
         $17::bool[], $18::bool[], $19::text[]::timestamptz[], $20::text[]::timestamptz[]) \
         ON CONFLICT (synced_id) DO UPDATE SET name = EXCLUDED.name, synced_updated_at = EXCLUDED.synced_updated_at \
         WHERE {table}.synced_updated_at IS NULL OR EXCLUDED.synced_updated_at >= {table}.synced_updated_at"
    );
    macro_rules! column {
        ($field:ident) => {
            records.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
        ($field:ident as $ty:ty) => {
            records.iter().map(|r| r.$field as $ty).collect::<Vec<_>>()
        };
    }
    conn.batch_execute("BEGIN").await.unwrap();
    diesel::sql_query(sql)
        .bind::<Array<BigInt>, _>(column!(id))
        .bind::<Array<Text>, _>(column!(created_at))
        .bind::<Array<Text>, _>(column!(updated_at))
        .bind::<Array<Text>, _>(column!(name))
        .bind::<Array<Text>, _>(column!(headline))
        .bind::<Array<Text>, _>(column!(city))
        .bind::<Array<Text>, _>(column!(country_code))
        .bind::<Array<Text>, _>(column!(currency))
        .bind::<Array<Integer>, _>(column!(sleeps as i32))
        .bind::<Array<Integer>, _>(column!(bedrooms as i32))
        .bind::<Array<Integer>, _>(column!(bathrooms as i32))
        .bind::<Array<Integer>, _>(column!(surface as i32))
        .bind::<Array<BigInt>, _>(column!(account_id))
        .bind::<Array<Double>, _>(column!(daily_price))
        .bind::<Array<Double>, _>(column!(latitude))
        .bind::<Array<Double>, _>(column!(longitude))
        .bind::<Array<Bool>, _>(column!(published))
        .bind::<Array<Bool>, _>(column!(instant_booking))
        .bind::<Array<Text>, _>(column!(checkin_at))
        .bind::<Array<Text>, _>(column!(checkout_at))
        .execute(conn)
        .await
        .unwrap();
    conn.batch_execute("COMMIT").await.unwrap();
}

/// The database side alone, as fast as a client can feed it: the rows already parsed into
/// typed arrays (no Kafka, no JSON), written in transactions of 1000 from `partitions`
/// connections at once. No consumer can be faster than this on the same machine.
async fn write_ceiling(db: &TestDb, total: i64, partitions: usize) -> Duration {
    let rows: Vec<RawRecord> = (1..=total).map(|i| serde_json::from_value(record(i)).unwrap()).collect();
    let quarter = rows.len().div_ceil(partitions).max(1);
    let mut connections = Vec::new();
    for _ in 0..partitions {
        connections.push(db.connection().await);
    }
    let parts: Vec<Vec<RawRecord>> = rows.chunks(quarter).map(<[RawRecord]>::to_vec).collect();
    let started = Instant::now();
    let tasks: Vec<_> = parts
        .into_iter()
        .zip(connections)
        .map(|(part, mut conn)| {
            tokio::spawn(async move {
                for chunk in part.chunks(1000) {
                    write_rows(&mut conn, "bench_ceiling", chunk).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let total: i64 = dionysus_tests::bench_number("DIONYSUS_BENCH_MESSAGES", 100_000);
    let partitions = 4;
    dionysus_tests::print_machine_speed().await;
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(&format!(
        "CREATE TABLE bench_rentals ({COLUMNS}); CREATE TABLE bench_raw ({COLUMNS}); CREATE TABLE bench_raw_client ({COLUMNS}); \
         CREATE TABLE bench_ceiling ({COLUMNS});"
    ))
        .await
        .unwrap();

    // Produce (not measured).
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "bench_rentals", partitions).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let started = Instant::now();
    let payloads: Vec<(String, Vec<u8>)> = (1..=total)
        .map(|i| {
            let value = json!({"message": [{"event": "rental_created", "model_name": "Rental", "data": [record(i)]}]});
            (format!("Rental:{i}"), dionysus::__internals::wire::envelope::to_json(&value).unwrap())
        })
        .collect();
    for chunk in payloads.chunks(5_000) {
        let sends = chunk.iter().map(|(key, value)| {
            producer.send(FutureRecord::to(&topic).key(key).payload(value), Duration::from_secs(60))
        });
        for result in join_all(sends).await {
            result.map_err(|(error, _)| error).unwrap();
        }
    }
    let bytes: usize = payloads.iter().map(|(_, v)| v.len()).sum();
    println!(
        "produced {total} messages ({} bytes each on average) to {partitions} partitions in {:.1} s",
        bytes / payloads.len().max(1),
        started.elapsed().as_secs_f64()
    );
    drop(payloads);

    // dionysus consumer.
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.consumer.batch_size = 1000;
    let consumer = Consumer::builder(config)
        .pool(db.pool(8))
        .replicas(Replicas::new([BenchRental::DESCRIPTOR]))
        .topic(&topic)
        .handlers(false)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .kafka_property("fetch.message.max.bytes", "4194304")
        .kafka_property("queued.max.messages.kbytes", "262144")
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { consumer.run(shutdown).await }
    });
    let stored =
        "SELECT COALESCE(sum(next_offset), 0)::bigint AS n FROM dionysus_consumer_offsets WHERE next_offset >= 0";
    let mut first_commit: Option<(Instant, i64)> = None;
    loop {
        let done = count(&mut conn, stored).await;
        if done > 0 && first_commit.is_none() {
            first_commit = Some((Instant::now(), done));
        }
        if done >= total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "consumer stalled at {done} of {total}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let (first_at, first_count) = first_commit.unwrap();
    let steady_rate =
        (total - first_count) as f64 / (wall.as_secs_f64() - (first_at - started).as_secs_f64()).max(1e-9);
    let rows = count(&mut conn, "SELECT count(*) AS n FROM bench_rentals").await;
    assert_eq!(rows, total, "every message became a row");

    // The same messages through `process_batch` without the broker (database path only).
    conn.batch_execute(&format!("CREATE TABLE bench_direct ({COLUMNS})")).await.unwrap();
    let direct_table = Box::leak(Box::new(dionysus::consumer::replica::ReplicaDescriptor {
        table: "bench_direct",
        ..dionysus::consumer::replica::ReplicaDescriptor { ..*BenchRental::DESCRIPTOR }
    }));
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka.clone();
    config.kafka.group_id = Some("bench_direct".to_owned());
    let direct = Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(Replicas::new([&*direct_table]))
        .topic("direct")
        .handlers(false)
        .build()
        .unwrap();
    let messages: Vec<dionysus::__internals::consumer::InboundMessage> = (1..=total)
        .map(|i| {
            let value = json!({"message": [{"event": "rental_created", "model_name": "Rental", "data": [record(i)]}]});
            dionysus::__internals::consumer::InboundMessage {
                topic: "direct".to_owned(),
                partition: 0,
                offset: i,
                key: Some(format!("Rental:{i}").into_bytes()),
                payload: Some(dionysus::__internals::wire::envelope::to_json(&value).unwrap()),
            }
        })
        .collect();
    let started = Instant::now();
    for chunk in messages.chunks(1000) {
        direct.process_batch(chunk).await.unwrap();
    }
    let direct_wall = started.elapsed();
    println!(
        "dionysus process_batch without the broker (1 partition, batches of 1000): {:.0} msg/s",
        total as f64 / direct_wall.as_secs_f64()
    );
    // The same, four partitions at once (as the consumer runs them), into a fresh table.
    conn.batch_execute("TRUNCATE bench_direct; DELETE FROM dionysus_consumer_offsets WHERE group_id = 'bench_direct'")
        .await
        .unwrap();
    let quarter = messages.len().div_ceil(partitions as usize);
    let started = Instant::now();
    let tasks: Vec<_> = messages
        .chunks(quarter.max(1))
        .enumerate()
        .map(|(partition, part)| {
            let part: Vec<dionysus::__internals::consumer::InboundMessage> = part
                .iter()
                .cloned()
                .map(|message| dionysus::__internals::consumer::InboundMessage {
                    partition: partition as i32,
                    ..message
                })
                .collect();
            let direct = direct.clone();
            tokio::spawn(async move {
                for chunk in part.chunks(1000) {
                    direct.process_batch(chunk).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "dionysus process_batch without the broker ({partitions} partitions at once, batches of 1000): {:.0} msg/s",
        total as f64 / started.elapsed().as_secs_f64()
    );

    // Raw baseline: the same rows, one server-side statement.
    let updates: Vec<String> = [
        "synced_created_at",
        "synced_updated_at",
        "name",
        "headline",
        "city",
        "country_code",
        "currency",
        "sleeps",
        "bedrooms",
        "bathrooms",
        "surface",
        "account_id",
        "daily_price",
        "latitude",
        "longitude",
        "published",
        "instant_booking",
        "checkin_at",
        "checkout_at",
    ]
    .iter()
    .map(|c| format!("{c} = EXCLUDED.{c}"))
    .collect();
    let raw = format!(
        "INSERT INTO bench_raw {} ON CONFLICT (synced_id) DO UPDATE SET {} \
         WHERE bench_raw.synced_updated_at IS NULL OR EXCLUDED.synced_updated_at >= bench_raw.synced_updated_at",
        RAW_SELECT.replace("$N", &total.to_string()),
        updates.join(", ")
    );
    let started = Instant::now();
    conn.batch_execute(&raw).await.unwrap();
    let raw_wall = started.elapsed();
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM bench_raw").await, total);
    let same = count(
        &mut conn,
        "SELECT count(*) AS n FROM bench_rentals r JOIN bench_raw b USING (synced_id)
         WHERE (r.name, r.synced_updated_at, r.daily_price, r.published, r.checkout_at)
             = (b.name, b.synced_updated_at, b.daily_price, b.published, b.checkout_at)",
    )
    .await;
    assert_eq!(same, total, "the consumer wrote the same rows as the baseline");

    let client_wall = raw_consumer(&mut conn, &kafka, &topic, partitions, total).await;
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM bench_raw_client").await, total);
    let ceiling_wall = write_ceiling(&db, total, partitions as usize).await;
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM bench_ceiling").await, total);

    let rate = total as f64 / wall.as_secs_f64();
    let raw_rate = total as f64 / raw_wall.as_secs_f64();
    let client_rate = total as f64 / client_wall.as_secs_f64();
    let ceiling_rate = total as f64 / ceiling_wall.as_secs_f64();
    println!(
        "dionysus consumer: {total} messages in {:.2} s = {rate:.0} msg/s (wall, group join included)",
        wall.as_secs_f64()
    );
    println!("dionysus consumer: {steady_rate:.0} msg/s after the first committed batch");
    println!(
        "raw INSERT … SELECT … ON CONFLICT … WHERE: {total} rows in {:.2} s = {raw_rate:.0} rows/s",
        raw_wall.as_secs_f64()
    );
    println!(
        "raw client-side consumer (typed parse, typed-array upsert, no group): {total} messages in {:.2} s = {client_rate:.0} msg/s",
        client_wall.as_secs_f64()
    );
    println!(
        "client write ceiling (rows pre-parsed into typed arrays, {partitions} connections, no Kafka or JSON): {total} rows in {:.2} s = {ceiling_rate:.0} rows/s = {:.0}% of the server-side statement",
        ceiling_wall.as_secs_f64(),
        100.0 * ceiling_rate / raw_rate
    );
    println!(
        "ratio to the server-side statement: {:.0}% (wall), {:.0}% (after first batch)",
        100.0 * rate / raw_rate,
        100.0 * steady_rate / raw_rate
    );
    println!(
        "ratio to the raw client-side consumer: {:.0}% (wall), {:.0}% (after first batch)",
        100.0 * rate / client_rate,
        100.0 * steady_rate / client_rate
    );
    println!("ratio to the client write ceiling: {:.0}% (after first batch)", 100.0 * steady_rate / ceiling_rate);
}
