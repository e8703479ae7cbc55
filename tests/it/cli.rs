//! The command line: each subcommand's happy path and its most likely mistake.

use std::process::ExitCode;

use diesel_async::SimpleAsyncConnection;
use dionysus::registry::Registry;
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{create_topic, kafka_config, registry_for, unique_name, TestDb};

use crate::relay::Item;

async fn cli(args: &[&str], registry: &'static Registry) -> (ExitCode, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["dionysus".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let code = dionysus::cli::run_with(argv, registry, &mut out, &mut err).await;
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn empty() -> &'static Registry {
    Box::leak(Box::new(Registry::new([], [])))
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_and_names_a_bad_url() {
    let db = TestDb::create().await;
    let (code, out, _) = cli(&["--database-url", &db.url, "migrate"], empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.starts_with("applied 6 migration(s)"), "{out}");
    let (_, out, _) = cli(&["--database-url", &db.url, "migrate"], empty()).await;
    assert_eq!(out, "the database is up to date\n");

    let (code, _, err) =
        cli(&["--database-url", "postgres://postgres:secret@127.0.0.1:1/none", "migrate"], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.starts_with("error: cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:1/none"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_migrations_writes_files() {
    let dir = std::env::temp_dir().join(unique_name("cli-migrations"));
    let (code, out, _) = cli(&["copy-migrations", dir.to_str().unwrap()], empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(out.lines().filter(|l| l.starts_with("created")).count(), 6);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_missing_topics_and_pending_migrations() {
    let db = TestDb::create().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "cli", 2).await;
    let registry = registry_for::<Item>(&topic, 2, "account_id", serialize_erased::<Item, DefaultSerializer>);
    let brokers = kafka.bootstrap_servers();
    let (code, _, err) = cli(&["--database-url", &db.url, "--brokers", &brokers, "check"], registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("migration(s) pending"), "{err}");
    assert!(err.contains("run `dionysus migrate`"), "{err}");

    dionysus::migrate(&db.url).await.unwrap();
    let (code, out, err) = cli(&["--database-url", &db.url, "--brokers", &brokers, "check"], registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.ends_with("ok\n"), "{out}");

    let missing =
        registry_for::<Item>(&unique_name("absent"), 2, "account_id", serialize_erased::<Item, DefaultSerializer>);
    let (code, _, err) = cli(&["--database-url", &db.url, "--brokers", &brokers, "check"], missing).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("does not exist on the broker"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_stats_retry_and_prune() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(
        "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, failed_at, error_class)
         VALUES ('Item', '1', 'item_updated', 't', now(), 'SerializeError'), ('Item', '2', 'item_updated', 't', NULL, NULL);
         INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic, published_at)
         VALUES ('Item', '3', 'item_updated', 't', now() - interval '5 days');",
    )
    .await
    .unwrap();
    let url = db.url.as_str();
    let (code, out, _) = cli(&["--database-url", url, "outbox", "stats"], empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("backlog: 1 row(s)"), "{out}");
    assert!(out.contains("parked (failed): 1 row(s)") && out.contains("SerializeError"), "{out}");

    let (_, out, _) =
        cli(&["--database-url", url, "outbox", "retry", "--error-class", "SerializeError"], empty()).await;
    assert_eq!(out, "1 parked row(s) will be retried\n");
    let (_, out, _) = cli(&["--database-url", url, "outbox", "prune", "--older-than", "3d"], empty()).await;
    assert_eq!(out, "pruned 1 published row(s) older than 3d\n");

    let (code, _, err) = cli(&["--database-url", url, "outbox", "prune", "--older-than", "three days"], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("--older-than \"three days\" is not a duration; use e.g. 90s"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn genesis_names_an_unknown_model_and_usage_mistakes_exit_2() {
    let db = TestDb::migrated().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "cli_genesis", 1).await;
    let registry = registry_for::<Item>(&topic, 1, "account_id", serialize_erased::<Item, DefaultSerializer>);
    let brokers = kafka.bootstrap_servers();
    let (code, _, err) = cli(
        &["--database-url", &db.url, "--brokers", &brokers, "genesis", "--model", "Rental", "--topic", &topic],
        registry,
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("no publishable model is named `Rental`; known models: Item"), "{err}");

    let (code, _, err) = cli(&["genesis", "--model", "Item"], registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("genesis needs --model and --topic"), "{err}");

    let (code, _, err) = cli(&["publish-everything"], registry).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("unrecognized subcommand"), "{err}");

    let (code, _, err) = cli(&["--brokers", "kafka://k1:9092", "outbox", "stats"], registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("--brokers \"kafka://k1:9092\" is not valid: expected host:port without a protocol"), "{err}");
}
