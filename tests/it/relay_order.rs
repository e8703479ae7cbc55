//! The relay's ordering rules under arbitrary retry schedules and batch boundaries, driven
//! through the real batch statements against a real outbox table with a simulated clock
//! (`relay::simulation`): a property test over interleavings that no timing-based test can
//! enumerate.
//!
//! The invariant: a row is marked published only once every earlier row of its key is, and
//! (with a producer that fails the later messages of a partition after a failed one, as the
//! idempotent producer does) the first delivery of each key's rows on the wire is in id order.
//! With a producer that can drop a timed-out message and deliver the next one, later rows are
//! sent again after the failed one, so the last delivery of each row is still in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use dionysus::__internals::producer::simulation::SimBatch;
use dionysus::config::ProducerConfig;
use dionysus_tests::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

#[derive(Debug, Clone)]
struct Case {
    /// The ordering key of each row, in id order.
    keys: Vec<u8>,
    /// How many times each row fails before it is delivered.
    failures: Vec<u8>,
    /// Rows per batch.
    batch_size: usize,
    /// Clock advances between batches, in milliseconds (cycled); 0 means two batches at the
    /// same instant.
    steps: Vec<u16>,
    /// Jitter draws for the backoff (cycled).
    jitter: Vec<f64>,
    /// Whether the producer may deliver a message after an earlier one of its partition failed
    /// (a timed-out message dropped by the idempotent producer).
    gaps: bool,
}

fn cases() -> impl Strategy<Value = Case> {
    (2_usize..14)
        .prop_flat_map(|rows| {
            (
                proptest::collection::vec(0_u8..3, rows),
                proptest::collection::vec(prop_oneof![3 => Just(0_u8), 2 => 1_u8..4], rows),
                1_usize..6,
                proptest::collection::vec(0_u16..70, 1..24),
                proptest::collection::vec(0.0_f64..1.0, 1..8),
                any::<bool>(),
            )
        })
        .prop_map(|(keys, failures, batch_size, steps, jitter, gaps)| Case {
            keys,
            failures,
            batch_size,
            steps,
            jitter,
            gaps,
        })
}

fn millis(ms: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(ms)
}

async fn run_case(conn: &mut AsyncPgConnection, case: &Case) -> Result<(), TestCaseError> {
    conn.batch_execute("TRUNCATE dionysus_outbox RESTART IDENTITY").await.unwrap();
    let values: Vec<String> =
        case.keys.iter().enumerate().map(|(i, key)| format!("('R', '{i}', 'r_updated', 't', 'k{key}')")).collect();
    conn.batch_execute(&format!(
        "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key) VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    let mut config = ProducerConfig::default();
    config.batch_size = case.batch_size;
    config.retry_backoff_base = Duration::from_millis(20);
    config.retry_backoff_cap = Duration::from_millis(100);
    config.max_attempts = 1000;
    // Outbox ids are 1-based, in the order of `case.keys`.
    let key_of = |id: i64| case.keys[usize::try_from(id - 1).unwrap()];
    let mut remaining: HashMap<i64, u8> = (1..).zip(case.failures.iter().copied()).collect();
    let mut marked: HashSet<i64> = HashSet::new();
    let mut wire: Vec<i64> = Vec::new();
    let mut draws = case.jitter.iter().copied().cycle();
    let mut clock: DateTime<Utc> = Utc.timestamp_opt(1_700_000_000, 0).single().unwrap();

    for step in 0..2000 {
        let batch = SimBatch::fetch(conn, &config, clock).await.unwrap();
        let rows = batch.rows();
        let mut failed_keys: HashSet<u8> = HashSet::new();
        let mut delivered = Vec::with_capacity(rows.len());
        for (id, _) in &rows {
            let key = key_of(*id);
            let left = remaining.entry(*id).or_default();
            let ok = if *left > 0 {
                *left -= 1;
                false
            } else {
                // An in-order producer fails every later message of the partition too.
                case.gaps || !failed_keys.contains(&key)
            };
            if ok {
                wire.push(*id);
            } else {
                failed_keys.insert(key);
            }
            delivered.push(ok);
        }
        let published = batch.settle(conn, &config, &delivered, || draws.next().unwrap_or(0.5)).await.unwrap();
        for id in published {
            let key = key_of(id);
            let earlier_unpublished: Vec<i64> =
                (1..id).filter(|earlier| key_of(*earlier) == key && !marked.contains(earlier)).collect();
            prop_assert!(
                earlier_unpublished.is_empty(),
                "batch {step}: row {id} of key k{key} marked published while earlier rows {earlier_unpublished:?} \
                 of its key are not (rows read: {rows:?})"
            );
            marked.insert(id);
        }
        if marked.len() == case.keys.len() {
            break;
        }
        // An idle relay sleeps until a retry falls due; a busy one goes on at once or later.
        let step_ms = if rows.is_empty() { 100 } else { i64::from(case.steps[step % case.steps.len()]) };
        clock += millis(step_ms);
    }
    prop_assert_eq!(marked.len(), case.keys.len(), "every row is published in the end");

    // Per key, the first and the last delivery of each row on the wire.
    let mut firsts: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
    let mut lasts: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for id in &wire {
        if seen.insert(*id) {
            firsts.entry(key_of(*id)).or_default().push(*id);
        }
    }
    seen.clear();
    for id in wire.iter().rev() {
        if seen.insert(*id) {
            lasts.entry(key_of(*id)).or_default().insert(0, *id);
        }
    }
    for (key, ids) in &lasts {
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "k{key}: last deliveries out of order: {ids:?}");
    }
    if !case.gaps {
        for (key, ids) in &firsts {
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "k{key}: first deliveries out of order: {ids:?}");
        }
    }
    Ok(())
}

/// Whatever the retry schedules and batch boundaries, no later row of a key overtakes an
/// earlier one that waits for a retry — also when a retry falls due between the moments a
/// batch looks at its rows.
#[test]
fn retries_never_let_a_later_row_of_a_key_overtake() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::migrated());
    let conn = std::cell::RefCell::new(runtime.block_on(db.connection()));
    let cases_wanted = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96);
    let mut runner = TestRunner::new(RunnerConfig { cases: cases_wanted, ..RunnerConfig::default() });
    let result = runner.run(&cases(), |case| runtime.block_on(run_case(&mut conn.borrow_mut(), &case)));
    drop(conn);
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// Rows of the outbox a plan node and the nodes under it walked (returned or filtered out),
/// over every loop.
fn outbox_rows_walked(node: &serde_json::Value) -> f64 {
    let own = if node["Relation Name"] == "dionysus_outbox" {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let rows = node["Actual Rows"].as_f64().unwrap_or(0.0) + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
        rows * loops
    } else {
        0.0
    };
    let children = node["Plans"].as_array().map_or(0.0, |plans| plans.iter().map(outbox_rows_walked).sum());
    own + children
}

/// With the statistics a production outbox has during a backlog (many pending rows of many
/// keys, analyzed), a batch read walks about the rows it returns, in id order down the
/// pending index: it does not read every pending row of its buckets and sort them.
#[tokio::test]
async fn a_batch_read_walks_only_the_rows_it_returns_under_a_large_analyzed_backlog() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, partition_key)
         SELECT 'R', i::text, 'r_updated', 't', 'k' || (i % 2000) FROM generate_series(1, 20000) i;
         UPDATE dionysus_outbox SET attempts = 1, retry_at = now() + interval '1 hour' WHERE id IN (5, 77, 1234);
         ANALYZE dionysus_outbox",
    )
    .await
    .unwrap();
    let config = ProducerConfig::default();
    let explained = SimBatch::explain(&mut conn, &config, Utc::now()).await.unwrap();
    let plan = &explained[0]["Plan"];
    assert_eq!(plan["Actual Rows"].as_f64(), Some(config.batch_size as f64), "a full batch is read: {explained:#}");
    let walked = outbox_rows_walked(plan);
    assert!(
        walked <= 1.5 * config.batch_size as f64,
        "the batch read walked {walked} outbox rows for a batch of {}: {explained:#}",
        config.batch_size
    );
}
