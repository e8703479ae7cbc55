//! The command line run as a process, as an application's binary runs it (`dionysus-cli`):
//! its logs and its start-up checks.

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dionysus_tests::{kafka_config, TestDb};

/// Runs `dionysus-cli` with `args` and no `DATABASE_URL` / `RUST_LOG` from the environment;
/// kills it after `limit`.
async fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dionysus-cli"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if tokio::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the command line did not stop within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A log line without its timestamp, to compare lines.
fn without_timestamp(line: &str) -> &str {
    line.split_once(' ').map_or(line, |(_, rest)| rest)
}

/// With the broker down, the relay prints what librdkafka says about it while it waits, each
/// thing once (librdkafka's error callback repeats its log lines, and rdkafka hands each
/// callback over twice), then exits with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_without_a_broker_logs_each_failure_once_and_exits() {
    let db = TestDb::migrated().await;
    let output = run(&["--database-url", &db.url, "--brokers", "127.0.0.1:1", "relay"], Duration::from_secs(60)).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.iter().any(|line| line.contains("ERROR librdkafka") && line.contains("Connect to")), "{err}");
    assert!(
        lines.last().is_some_and(|line| line.starts_with("error: fetching topic metadata from 127.0.0.1:1")
            && line.ends_with("is a broker running at 127.0.0.1:1? set --brokers or DIONYSUS_SEED_BROKER")),
        "{err}"
    );
    assert!(lines.len() <= 20, "{} lines in about 10 s:\n{err}", lines.len());
    let mut seen = HashSet::new();
    for line in &lines {
        assert!(seen.insert(without_timestamp(line)), "printed twice: {line}\n{err}");
    }
}

/// `--log-format json` prints one JSON object per event, its fields once.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::migrated().await;
    let args = ["--log-format", "json", "--database-url", &db.url, "--brokers", "127.0.0.1:1", "relay"];
    let output = run(&args, Duration::from_secs(60)).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter(|line| !line.starts_with("error: "))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!events.is_empty(), "{err}");
    for event in &events {
        assert_eq!(event["target"], "librdkafka", "{event}");
        assert_eq!(event["level"], "ERROR", "{event}");
        assert_eq!(event["facility"], "FAIL", "{event}");
        assert!(event["message"].as_str().is_some_and(|m| m.contains("Connect to")), "{event}");
    }

    let output = run(
        &["--log-level", "librdkafka=off", "--database-url", &db.url, "--brokers", "127.0.0.1:1", "relay"],
        Duration::from_secs(60),
    )
    .await;
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "--log-level filters: {err}");
}

/// The relay does not start on a database without the framework's tables: it says so and
/// names the command that fixes it, before it contacts the broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_on_an_unmigrated_database_says_run_migrate() {
    let db = TestDb::create().await;
    let brokers = kafka_config().bootstrap_servers();
    let output = run(&["--database-url", &db.url, "--brokers", &brokers, "relay"], Duration::from_secs(30)).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "is not migrated: {} dionysus migration(s) pending",
            dionysus::migrate::MIGRATIONS.len()
        )),
        "{err}"
    );
    assert!(err.trim_end().ends_with("run `dionysus-cli migrate`"), "{err}");
}

/// `migrate` does not guess a database: without `DATABASE_URL` or `--database-url` it says
/// what to set and exits 2.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_without_a_database_url_refuses() {
    let output = run(&["migrate"], Duration::from_secs(30)).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: migrate needs to be told which database to migrate: set DATABASE_URL"), "{err}");
    assert!(output.stdout.is_empty());
}
