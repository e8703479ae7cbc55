//! Cost of writing an outbox row inside the caller's transaction, side by side with the same
//! transaction without it (the raw baseline), in one run on a fresh database.
//!
//! Run with: `scripts/bench outbox_write` (or `cargo bench -p dionysus-tests --bench outbox_write`
//! with PostgreSQL reachable at `DATABASE_URL`).
//!
//! Each transaction inserts one rental (`BEGIN; INSERT … RETURNING; COMMIT`); the outbox
//! variant also calls `dionysus::outbox::created` for it (one publication, partition key from
//! `account_id`). Rounds alternate between the two so drift affects both alike.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs, reason = "a benchmark binary")]

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::config::ProducerConfig;
use dionysus::outbox::Outbox;
use dionysus::registry::Registry;
use dionysus::Topic;
use dionysus_tests::TestDb;
use serde::Serialize;

diesel::table! {
    bench_rentals (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        daily_price -> Integer,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

#[dionysus::topic(namespace = "bench", name = "rentals", partition_key = "account_id")]
struct Rentals;

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = bench_rentals)]
#[publish(topic = Rentals)]
struct Rental {
    id: i64,
    account_id: i64,
    name: String,
    daily_price: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

const ROUNDS: usize = 10;
const PER_ROUND: usize = 300;

async fn insert(conn: &mut AsyncPgConnection, n: i64) -> Rental {
    diesel::insert_into(bench_rentals::table)
        .values((
            bench_rentals::account_id.eq(n % 50),
            bench_rentals::name.eq("Villa Saganaki"),
            bench_rentals::daily_price.eq(120),
        ))
        .returning(Rental::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

async fn round(conn: &mut AsyncPgConnection, outbox: Option<Outbox<'_>>, start: i64) -> Duration {
    let began = Instant::now();
    for n in start..start + PER_ROUND as i64 {
        conn.transaction::<_, anyhow::Error, _>(async |tx| {
            let rental = insert(tx, n).await;
            if let Some(outbox) = outbox {
                outbox.created(tx, &rental).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    began.elapsed()
}

fn per_tx(total: Duration) -> f64 {
    total.as_secs_f64() * 1e6 / (ROUNDS * PER_ROUND) as f64
}

#[tokio::main]
async fn main() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "CREATE TABLE bench_rentals (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL, name TEXT NOT NULL, \
         daily_price INTEGER NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .unwrap();
    let registry = Registry::new([Rentals::DECLARATION], []).with_model::<Rental>();
    let config = ProducerConfig::default();
    let outbox = Outbox::new(&registry, &config);

    // Warm-up: connection, prepared statements, table and index pages.
    round(&mut conn, None, 0).await;
    round(&mut conn, Some(outbox), 0).await;

    let (mut raw, mut with_outbox) = (Duration::ZERO, Duration::ZERO);
    for r in 0..ROUNDS {
        let start = ((r + 1) * PER_ROUND) as i64;
        if r % 2 == 0 {
            raw += round(&mut conn, None, start).await;
            with_outbox += round(&mut conn, Some(outbox), start).await;
        } else {
            with_outbox += round(&mut conn, Some(outbox), start).await;
            raw += round(&mut conn, None, start).await;
        }
    }
    let (raw_us, outbox_us) = (per_tx(raw), per_tx(with_outbox));
    println!("outbox write, {} single-row insert transactions each:", ROUNDS * PER_ROUND);
    println!("  {:<34} {:>9.1} µs/tx {:>9.0} tx/s", "raw insert (baseline)", raw_us, 1e6 / raw_us);
    println!("  {:<34} {:>9.1} µs/tx {:>9.0} tx/s", "insert + dionysus::outbox::created", outbox_us, 1e6 / outbox_us);
    println!("  ratio (outbox / raw): {:.2}x   goal: <= 1.50x", outbox_us / raw_us);
}
