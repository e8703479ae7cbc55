//! The fault suite: the application (`faults-app`, built from `tests/faults/app.rs`) runs as
//! separate OS processes — relays, consumers in one group, a writer — against a private
//! PostgreSQL cluster and a private broker, while faults are injected mid-flow. Afterwards
//! the topic is read back from the beginning with a consumer of our own and the replicas are
//! compared with the source.
//!
//! Load: [`scenario::KEYS`] wallets (partition keys), [`scenario::RATE`] transactions a
//! second, each updating a wallet (`seq` + 1) and creating a ledger entry with that `seq`
//! (an insert-only record). The load, and with it the clock of the faults, starts once the
//! consumers hold every partition between them, so a fault meets a formed group.
//!
//! | scenario | processes | fault |
//! |---|---|---|
//! | relay kill -9 | 2 relays, 2 consumers | SIGTERM of one relay (restarted), later kill -9 of the other (restarted) |
//! | consumer kill -9 | 2 relays, 2 consumers | kill -9 of one consumer (restarted a second later) |
//! | broker pause | **1 relay (1 worker)**, 2 consumers | broker SIGSTOP for 12 s, then SIGCONT |
//! | postgres restart | 2 relays, 2 consumers | `pg_ctl restart -m immediate` |
//! | poison | 2 relays, 2 consumers | 6 malformed messages on every partition |
//! | combined | 2 relays, 2 consumers | all of the above in one run |
//!
//! The replicating service also runs a handler that replies once per ledger entry, in the
//! batch transaction (`faults_acks`, written to the replica database's outbox): every
//! scenario checks that each replicated entry has a reply and that no consumed message was
//! replied to twice, however the consumers were killed.
//!
//! Checks, printed as one table: events written, distinct events published, lost (ledger
//! entries never published, wallets whose final state never was), duplicates, per-key order
//! violations (first occurrences, see `check`), replica checksum equal to the source, time
//! from the end of the load until everything is published and the replicas match, peak RSS
//! of the relay and consumer processes. Under the table: how long a killed consumer's
//! partitions and a killed (or stopped) relay's buckets took to be worked on again.
//!
//! The test fails on any loss, order violation, checksum difference, poison message that was
//! not dead-lettered, a process that exited on its own, or a killed consumer's partitions
//! idle for more than [`CONSUMER_RECOVERY_BOUND`]; it prints the first violations.
//!
//! Run alone with `scripts/faults` (optionally `FAULTS_SCENARIOS=broker_pause,poison`); the
//! logs of every process are kept under `target/faults/` when a scenario fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod cluster;
mod procs;
mod scenario;
mod topic;

use std::io::Write as _;
use std::time::Duration;

use scenario::{Fault, Outcome, Plan};

/// A killed consumer's partitions must be consumed again within this.
const CONSUMER_RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// Writes straight to stderr, past the test harness's capture, so the table and progress
/// show in every run.
fn progress(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn plans() -> Vec<Plan> {
    let plan = |name, relays, load_seconds, faults: Vec<(f64, Fault)>| Plan {
        name,
        relays,
        consumers: 2,
        load_seconds,
        faults,
        measure: true,
    };
    vec![
        plan("relay_kill", 2, 16.0, vec![(3.0, Fault::StopRelay(1)), (6.0, Fault::KillRelay(0))]),
        plan("consumer_kill", 2, 18.0, vec![(4.0, Fault::KillConsumer(0, 12.0))]),
        plan("broker_pause", 1, 16.0, vec![(3.0, Fault::PauseBroker(12.0))]),
        plan("postgres_restart", 2, 14.0, vec![(5.0, Fault::RestartPostgres)]),
        plan("poison", 2, 10.0, vec![(4.0, Fault::Poison)]),
        Plan {
            measure: false,
            ..plan(
                "combined",
                2,
                26.0,
                vec![
                    (3.0, Fault::Poison),
                    (4.0, Fault::KillRelay(0)),
                    (6.0, Fault::KillConsumer(1, 1.0)),
                    (9.0, Fault::RestartPostgres),
                    (12.0, Fault::PauseBroker(12.0)),
                    (25.0, Fault::Poison),
                ],
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite() {
    if std::env::var("DIONYSUS_BROKER_BIN").is_err() {
        panic!(
            "DIONYSUS_BROKER_BIN is not set: run the suite with scripts/faults or scripts/test, which install \
             the broker, or point it at a tansu binary"
        );
    }
    let selected: Option<Vec<String>> =
        std::env::var("FAULTS_SCENARIOS").ok().map(|list| list.split(',').map(|s| s.trim().to_owned()).collect());
    let plans: Vec<Plan> = plans()
        .into_iter()
        .filter(|plan| selected.as_ref().is_none_or(|names| names.iter().any(|name| name == plan.name)))
        .collect();
    assert!(!plans.is_empty(), "FAULTS_SCENARIOS names no scenario; known: relay_kill, consumer_kill, …");
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/faults")
        .join(format!("run-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    std::fs::create_dir_all(&logs).unwrap();
    let cluster = cluster::Cluster::start();
    progress(&format!("fault suite: {} scenario(s), logs in {}", plans.len(), logs.display()));
    let mut outcomes = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        progress(&format!("scenario {}: {} ({} s of load)", plan.name, plan.faults.len(), plan.load_seconds));
        let outcome = scenario::run(plan, &cluster, index, &logs).await;
        progress(&format!(
            "  {} {} in {:.0} s",
            plan.name,
            if outcome.passed() { "passed" } else { "FAILED" },
            outcome.took.as_secs_f64()
        ));
        outcomes.push((plan.clone(), outcome));
    }
    drop(cluster);

    let mut failures = Vec::new();
    for (plan, outcome) in &outcomes {
        if !outcome.passed() {
            failures.push(describe_failure(outcome));
        }
        if plan.measure {
            for recovery in outcome.recoveries.iter().filter(|r| r.what.starts_with("killed consumer")) {
                match recovery.took {
                    Some(took) if took <= CONSUMER_RECOVERY_BOUND => {}
                    took => failures.push(format!(
                        "{}: a killed consumer's partitions were idle for {} (bound {CONSUMER_RECOVERY_BOUND:?})",
                        plan.name,
                        took.map_or("the rest of the run".to_owned(), |t| format!("{:.1} s", t.as_secs_f64()))
                    )),
                }
            }
        }
    }
    progress(&table(&outcomes));
    if failures.is_empty() {
        if std::env::var("FAULTS_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&logs);
        }
    } else {
        panic!("the fault suite failed (process logs in {}):\n\n{}", logs.display(), failures.join("\n\n"));
    }
}

fn describe_failure(outcome: &Outcome) -> String {
    let mut lines = vec![format!("{}:", outcome.name)];
    let analysis = &outcome.analysis;
    if analysis.violations > 0 {
        lines.push(format!("  {} order violation(s); the first:", analysis.violations));
        lines.extend(analysis.first_violations.iter().map(|v| format!("    {v}")));
    }
    if analysis.lost > 0 {
        lines.push(format!("  {} lost; e.g.:", analysis.lost));
        lines.extend(analysis.lost_examples.iter().map(|l| format!("    {l}")));
    }
    if !outcome.checksums_equal {
        lines.push("  the replicas differ from the source".to_owned());
    }
    if outcome.poison_not_dead_lettered > 0 {
        lines.push(format!(
            "  {} of {} poison messages were not dead-lettered",
            outcome.poison_not_dead_lettered, outcome.poison
        ));
    }
    if outcome.replies_missing > 0 || outcome.replies_duplicated > 0 {
        lines.push(format!(
            "  replies in the replica's outbox: {} ledger entr(ies) without one, {} written twice",
            outcome.replies_missing, outcome.replies_duplicated
        ));
    }
    lines.extend(outcome.problems.iter().map(|p| format!("  {}", p.replace('\n', "\n    "))));
    lines.join("\n")
}

fn table(outcomes: &[(Plan, Outcome)]) -> String {
    let header = [
        "scenario",
        "events",
        "written",
        "published unique",
        "lost",
        "duplicates",
        "order violations",
        "checksum",
        "converged",
        "relay RSS",
        "consumer RSS",
        "poison → DLQ",
        "replies",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for (_, outcome) in outcomes {
        let a = &outcome.analysis;
        rows.push(vec![
            outcome.name.to_owned(),
            outcome.written.to_string(),
            a.ledger_written.to_string(),
            a.unique.to_string(),
            a.lost.to_string(),
            a.duplicates.to_string(),
            a.violations.to_string(),
            if outcome.checksums_equal { "equal" } else { "DIFFERENT" }.to_owned(),
            outcome.converged.map_or("no".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            format!("{} MiB", outcome.relay_rss_kib / 1024),
            format!("{} MiB", outcome.consumer_rss_kib / 1024),
            if outcome.poison == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", outcome.poison - outcome.poison_not_dead_lettered, outcome.poison)
            },
            if outcome.replies_missing == 0 && outcome.replies_duplicated == 0 {
                "once each".to_owned()
            } else {
                format!("{} missing, {} twice", outcome.replies_missing, outcome.replies_duplicated)
            },
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::from("\n");
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(
                |(column, (cell, width))| {
                    if column == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                },
            )
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out.push_str(
        "\nevents: outbox events written (wallets created and updated, ledger entries created). written, \
         published unique, duplicates: ledger entries, which are only created, so each message is one event. A \
         wallet message carries the wallet's state when it is published (two updates published together carry \
         the same state), so wallets count in lost (final state never published), order violations (a state \
         first seen after a later one) and the checksum. order violations: per partition key, a seq whose first \
         occurrence comes after a larger one. converged: from the end of the load until nothing is pending and \
         the replicas equal the source. replies: the replicating service's handler replies once per consumed \
         ledger-entry message, in the batch transaction; counted in its outbox by cause (a message published \
         twice is replied to twice).\n",
    );
    for (_, outcome) in outcomes {
        for recovery in &outcome.recoveries {
            out.push_str(&format!(
                "{}: {} after {}\n",
                outcome.name,
                recovery.what,
                recovery.took.map_or("— (not within the run)".to_owned(), |t| format!("{:.1} s", t.as_secs_f64()))
            ));
        }
    }
    out
}
