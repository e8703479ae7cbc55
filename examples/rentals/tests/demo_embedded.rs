//! `scripts/demo --embedded` runs the whole rentals demo with PostgreSQL as the only service:
//! the Kafka cluster is librdkafka's mock cluster inside the demo's process. The script runs
//! this package's binary (`DIONYSUS_DEMO_BIN`, so nothing is rebuilt) with a broker address
//! nothing listens on and a broker installation that cannot exist: starting or using a broker
//! would fail the run.
//!
//! Run with: `cargo test -p dionysus-example-rentals --test demo_embedded` (PostgreSQL at
//! `DATABASE_URL`).

use std::path::Path;
use std::process::Command;

use diesel_async::SimpleAsyncConnection;
use dionysus_example_rentals::setup;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_on_an_embedded_cluster_without_a_broker_process() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let prefix = dionysus::testing::unique_name("dionysus_demo");
    let output = Command::new(root.join("scripts/demo"))
        .args(["--embedded", "--database-prefix", &prefix])
        .env("DIONYSUS_DEMO_BIN", env!("CARGO_BIN_EXE_dionysus-example-rentals"))
        // Nothing listens there: a client of a real broker would fail.
        .env("DIONYSUS_SEED_BROKER", "127.0.0.1:9")
        // Under a file: installing or starting the test broker would fail.
        .env("DIONYSUS_BROKER_VENV", "/dev/null/broker-venv")
        .output()
        .expect("scripts/demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let server =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = setup::connect(&server).await.unwrap();
    for side in ["producer", "consumer"] {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{prefix}_{side}\" WITH (FORCE)")).await.unwrap();
    }

    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("embedded Kafka cluster at 127.0.0.1:"), "{stdout}");
    assert!(!stderr.contains("starting the broker"), "{stderr}");
    assert_eq!(stdout.lines().rev().find(|line| !line.trim().is_empty()), Some("replica matches source"), "{stdout}");
}
