//! The command line: each subcommand's happy path and its most likely mistake.

use std::process::ExitCode;

use diesel_async::SimpleAsyncConnection;
use dionysus::registry::Registry;
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus_tests::{create_topic, kafka_config, registry_for, unique_name, TestDb};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::consumer_models::{message, replica_db, row, t};
use crate::relay::Item;

async fn cli(args: &[&str], registry: &'static Registry) -> (ExitCode, String, String) {
    cli_until(args, registry, CancellationToken::new()).await
}

/// Runs the command line until it ends or `shutdown` is cancelled.
async fn cli_until(
    args: &[&str],
    registry: &'static Registry,
    shutdown: CancellationToken,
) -> (ExitCode, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["dionysus".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let code = dionysus::cli::run_until(argv, registry, &mut out, &mut err, shutdown).await;
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
    let applied = format!("applied {} migration(s)", dionysus::migrate::MIGRATIONS.len());
    assert!(out.starts_with(&applied), "{out}");
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

/// No form of a password in `--database-url` or a Kafka property reaches the output of
/// `migrate`, `check` or `consume`.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_check_and_consume_never_print_a_password() {
    let urls = [
        "postgres://postgres:hunter2@127.0.0.1:1/none",
        "postgres://postgres@127.0.0.1:1/none?password=hunter2&sslmode=disable",
        "host=127.0.0.1 port=1 user=postgres password=hunter2 dbname=none",
        "host=127.0.0.1 port=1 user=postgres password='hunter2 with spaces' dbname=none",
        "host=127.0.0.1 port=1 user=postgres sslpassword=hunter2 dbname=none",
    ];
    for url in urls {
        for command in [&["migrate"][..], &["check", "--offline"][..]] {
            let mut args = vec!["--database-url", url];
            args.extend_from_slice(command);
            let (code, out, err) = cli(&args, empty()).await;
            assert_eq!(code, ExitCode::FAILURE, "{command:?} with {url}: {out}{err}");
            assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{command:?} with {url}: {out}{err}");
            assert!(err.contains("127.0.0.1"), "the message still says where: {err}");
        }
    }
    let db = TestDb::migrated().await;
    let kafka = kafka_config();
    let brokers = kafka.bootstrap_servers();
    // A misspelt property is rejected by librdkafka, which repeats its value.
    for property in ["sasl.pasword=hunter2", "sasl.oauthbearer.client.secrte=hunter2"] {
        let args = [
            "--database-url",
            &db.url,
            "--brokers",
            &brokers,
            "--kafka-property",
            property,
            "consume",
            "--topic",
            "cli_secret_never_consumed",
        ];
        let (code, out, err) = cli_until(&args, empty(), CancellationToken::new()).await;
        assert_eq!(code, ExitCode::FAILURE, "{property}: {out}{err}");
        assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{property}: {out}{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_migrations_writes_files() {
    let dir = std::env::temp_dir().join(unique_name("cli-migrations"));
    let (code, out, _) = cli(&["copy-migrations", dir.to_str().unwrap()], empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(out.lines().filter(|l| l.starts_with("created")).count(), dionysus::migrate::MIGRATIONS.len());
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
    let (code, out, _) = cli(&["--database-url", url, "outbox", "stats", "--json"], empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["backlog"], 1, "{out}");
    assert_eq!(stats["retrying"], 0, "{out}");
    assert!(stats["oldest_unpublished_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{out}");
    assert_eq!(stats["parked"], json!({"total": 1, "by_error_class": {"SerializeError": 1}}), "{out}");

    let (_, out, _) =
        cli(&["--database-url", url, "outbox", "retry", "--error-class", "SerializeError"], empty()).await;
    assert_eq!(out, "1 parked row(s) will be retried\n");
    let (_, out, _) = cli(&["--database-url", url, "outbox", "prune", "--older-than", "3d"], empty()).await;
    assert_eq!(out, "pruned 1 published row(s) older than 3d\n");

    let (code, _, err) = cli(&["--database-url", url, "outbox", "prune", "--older-than", "three days"], empty()).await;
    assert_eq!(code, ExitCode::from(2));
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

    let (code, _, err) = cli(
        &[
            "--database-url",
            &db.url,
            "--brokers",
            &brokers,
            "genesis",
            "--model",
            "Item",
            "--topic",
            &topic,
            "--where",
            "account_id=1",
            "--where",
            "nmae=x",
        ],
        registry,
    )
    .await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.contains("model `Item` has no column `nmae` to filter genesis by; its columns: id, account_id, name"),
        "{err}"
    );
    let (code, _, err) =
        cli(&["genesis", "--model", "Item", "--topic", &topic, "--where", "account_id"], registry).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("expected COLUMN=VALUE, e.g. account_id=7, got `account_id`"), "{err}");

    let (code, _, err) =
        cli(&["--database-url", "postgres://postgres@127.0.0.1:1/none", "genesis", "--model", "Item"], registry).await;
    assert_eq!(code, ExitCode::from(2), "a usage mistake is reported before any I/O");
    assert!(err.contains("genesis needs --model and --topic"), "{err}");

    let (code, _, err) = cli(&["publish-everything"], registry).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("unrecognized subcommand"), "{err}");

    let (code, _, err) = cli(&["--brokers", "kafka://k1:9092", "outbox", "stats"], registry).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("--brokers \"kafka://k1:9092\" is not valid: expected host:port without a protocol"), "{err}");
}

/// `consume` reads the named topic into the binary's replica tables (here the test models'
/// `rentals`), creates the missing dead-letter topic, and stops cleanly on shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn consume_fills_the_replica_and_stops_on_shutdown() {
    let db = replica_db().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "cli_consume", 2).await;
    let dead_letters = unique_name("cli_dead_letters");
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    for (event, id, name, at) in
        [("rental_created", 1, "Loft", 1), ("rental_created", 2, "Chalet", 1), ("rental_updated", 1, "Loft 2", 2)]
    {
        let data = json!([{"id": id, "name": name, "updated_at": t(at)}]);
        let payload = json!({"message": [{"event": event, "model_name": "Rental", "data": data}]}).to_string();
        let key = format!("Rental:{id}");
        let record = FutureRecord::to(&topic).key(&key).partition(0).payload(&payload);
        producer.send(record, std::time::Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    let brokers = kafka.bootstrap_servers();
    let group = unique_name("cli_group");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let health_file = std::env::temp_dir().join(unique_name("consumer-health"));
    let health_path = health_file.to_str().unwrap().to_owned();
    let args = [
        "--database-url",
        &db.url,
        "--brokers",
        &brokers,
        "--kafka-property",
        "session.timeout.ms=6000",
        "--kafka-property",
        "heartbeat.interval.ms=500",
        "consume",
        "--topic",
        &topic,
        "--group",
        &group,
        "--batch-size",
        "2",
        "--dead-letter-topic",
        &dead_letters,
        "--serve",
        &address,
        "--health-file",
        &health_path,
    ]
    .map(str::to_owned);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli_until(&args, empty(), shutdown).await
        }
    });
    let mut conn = db.connection().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let names = (row(&mut conn, "rentals", 1).await, row(&mut conn, "rentals", 2).await);
        if let (Some(first), Some(second)) = names {
            if first["name"] == "Loft 2" && second["name"] == "Chalet" {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica did not fill within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let get = |path: &'static str| {
        let address = address.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        }
    };
    let health = get("/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let metrics = get("/metrics").await;
    assert!(metrics.contains("dionysus_consumer_messages_total"), "{metrics}");
    assert!(health_file.exists(), "the liveness file is kept while the consumer runs");
    shutdown.cancel();
    let (code, out, err) = running.await.unwrap();
    dionysus_tests::eventually(std::time::Duration::from_secs(5), || {
        let health_file = health_file.clone();
        async move { (!health_file.exists()).then_some(()) }
    })
    .await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(
        out,
        format!(
            "created the dead-letter topic {dead_letters}\n\
             consuming {topic} as group {group}; stop with Ctrl-C or SIGTERM\n\
             consumer stopped\n"
        )
    );
}

/// The likely mistakes of `consume`, each named with its fix: a misspelt topic (with the
/// closest existing one), a database that is down or not migrated, an unreachable broker, an
/// `--import` of a topic that is not consumed.
#[tokio::test(flavor = "multi_thread")]
async fn consume_names_an_unknown_topic_and_bad_urls() {
    let db = TestDb::migrated().await;
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "cli_consume_typo", 1).await;
    let brokers = kafka.bootstrap_servers();
    let misspelt = topic.replacen("typo", "tpyo", 1);
    let (code, _, err) =
        cli(&["--database-url", &db.url, "--brokers", &brokers, "consume", "--topic", &misspelt], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        err,
        format!("error: topic `{misspelt}` does not exist on the broker at {brokers}; did you mean `{topic}`?\n")
    );

    let down = "postgres://postgres@127.0.0.1:1/none";
    let (code, _, err) =
        cli(&["--database-url", down, "--brokers", &brokers, "consume", "--topic", &topic], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.starts_with(&format!("error: cannot connect to PostgreSQL at {down}: ")), "{err}");
    assert!(err.ends_with("; is PostgreSQL running there? set --database-url or DATABASE_URL\n"), "{err}");

    let unmigrated = TestDb::create().await;
    let (code, _, err) =
        cli(&["--database-url", &unmigrated.url, "--brokers", &brokers, "consume", "--topic", &topic], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.contains(&format!(
            "is not migrated: {} dionysus migration(s) pending",
            dionysus::migrate::MIGRATIONS.len()
        )),
        "{err}"
    );
    assert!(err.ends_with("; run `dionysus migrate`\n"), "{err}");

    let (code, _, err) =
        cli(&["--database-url", &db.url, "--brokers", "127.0.0.1:1", "consume", "--topic", &topic], empty()).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.starts_with("error: fetching topic metadata from 127.0.0.1:1"), "{err}");
    assert!(err.ends_with("is a broker running at 127.0.0.1:1? set --brokers or DIONYSUS_SEED_BROKER\n"), "{err}");

    let (code, _, err) =
        cli(&["--database-url", &db.url, "consume", "--topic", &topic, "--import", "other"], empty()).await;
    assert_eq!(code, ExitCode::from(2));
    assert_eq!(err, format!("error: --import other: not a consumed topic; consumed: {topic} (add it with --topic)\n"));
}

/// `topics create` creates the declared topics with their partitions and is idempotent;
/// `topics list` shows declared next to existing counts and flags a mismatch; the relay
/// refuses to start while a declared topic is missing and says how to create it.
#[tokio::test(flavor = "multi_thread")]
async fn topics_create_is_idempotent_and_list_flags_mismatches() {
    let db = TestDb::migrated().await;
    let kafka = kafka_config();
    let brokers = kafka.bootstrap_servers();
    let topic = unique_name("cli_topics");
    let registry = registry_for::<Item>(&topic, 3, "account_id", serialize_erased::<Item, DefaultSerializer>);
    let args = |command: &'static [&'static str]| {
        let mut args = vec!["--database-url", db.url.as_str(), "--brokers", brokers.as_str()];
        args.extend_from_slice(command);
        args
    };

    let (code, _, err) = cli(&args(&["relay"]), registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        err,
        format!(
            "error: topic `{topic}` does not exist on the broker at {brokers}; run `dionysus topics create` or pass \
             --auto-create-topics\n"
        )
    );
    let (code, out, _) = cli(&args(&["topics", "list"]), registry).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.lines().any(|l| l.starts_with(&topic) && l.ends_with("missing  <- run `topics create`")), "{out}");

    let (code, out, err) = cli(&args(&["topics", "create"]), registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(out, format!("created {topic} (3 partition(s), replication factor 1)\n"));
    let counts = dionysus::kafka::partition_counts(&kafka, std::slice::from_ref(&topic)).await.unwrap();
    assert_eq!(counts[&topic], Some(3));

    let (code, out, err) = cli(&args(&["topics", "create"]), registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(out, format!("exists  {topic}\n"));
    let (_, out, _) = cli(&args(&["topics", "list"]), registry).await;
    let line = out.lines().find(|l| l.starts_with(&topic)).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), [topic.as_str(), "3", "3"], "{out}");

    let five = registry_for::<Item>(&topic, 5, "account_id", serialize_erased::<Item, DefaultSerializer>);
    let (_, out, _) = cli(&args(&["topics", "list"]), five).await;
    assert!(out.contains("<- partition count differs from the declaration"), "{out}");
    let (code, out, _) = cli(&args(&["topics", "create"]), five).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(out, format!("exists  {topic} (3 partition(s), 5 declared: not changed)\n"));
}

/// A message the replica rejects goes to the dead-letter topic; `dlq list` shows it with its
/// reason and source; once the table is fixed, `dlq replay` re-publishes it to its source
/// topic with its key and the running consumer applies it; a second replay sends nothing.
/// Also measures how long the consumer's first group join takes with the default session
/// settings (the first row applied bounds it).
#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_brings_a_rejected_message_back_into_the_replica() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    conn.batch_execute("ALTER TABLE rentals ADD CONSTRAINT rentals_no_bad_names CHECK (name <> 'Bad')").await.unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "cli_dlq", 1).await;
    let dead_letters = unique_name("cli_dlq_dead_letters");
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    for (id, name) in [(1, "Loft"), (7, "Bad"), (8, "Chalet")] {
        let data = json!([{"id": id, "name": name, "updated_at": t(1)}]);
        let payload =
            json!({"message": [{"event": "rental_created", "model_name": "Rental", "data": data}]}).to_string();
        let key = format!("Rental:{id}");
        let record = FutureRecord::to(&topic).key(&key).partition(0).payload(&payload);
        producer.send(record, std::time::Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let group = unique_name("cli_dlq_group");
    let base = ["--database-url", &db.url, "--brokers", &brokers].map(str::to_owned);
    let consume =
        ["consume", "--topic", &topic, "--group", &group, "--batch-size", "1", "--dead-letter-topic", &dead_letters]
            .map(str::to_owned);
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        let args: Vec<String> = base.iter().chain(&consume).cloned().collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli_until(&args, empty(), shutdown).await
        }
    });
    dionysus_tests::eventually(std::time::Duration::from_secs(60), || {
        let url = db.url.clone();
        async move {
            let mut conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            row(&mut conn, "rentals", 1).await.map(drop)
        }
    })
    .await;
    let first_row = started.elapsed();
    println!("first group join and first row applied after {:.1} s", first_row.as_secs_f64());
    assert!(first_row < std::time::Duration::from_secs(10), "first join took {first_row:?}");
    dionysus_tests::eventually(std::time::Duration::from_secs(60), || {
        let url = db.url.clone();
        async move {
            let mut conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            row(&mut conn, "rentals", 8).await.map(drop)
        }
    })
    .await;
    assert_eq!(row(&mut conn, "rentals", 7).await, None);

    let dlq = |command: &[&str]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(command);
        args.extend_from_slice(&["--dead-letter-topic", &dead_letters]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = dlq(&["dlq", "list", "--reason", "database_rejected"]);
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), empty()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("0@0  reason=database_rejected  source={topic}/0@1  key=Rental:7  error=")),
        "{out}"
    );
    assert!(lines[0].contains("rentals_no_bad_names"), "{out}");
    assert_eq!(lines[1], "1 dead letter(s) listed of 1 read");

    conn.batch_execute("ALTER TABLE rentals DROP CONSTRAINT rentals_no_bad_names").await.unwrap();
    let args = dlq(&["dlq", "replay", "--topic", &topic]);
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), empty()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(out, "replayed 1 dead letter(s) of 1 read; 0 left out by the filters\n");
    let replayed = dionysus_tests::eventually(std::time::Duration::from_secs(60), || {
        let url = db.url.clone();
        async move {
            let mut conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            row(&mut conn, "rentals", 7).await
        }
    })
    .await;
    assert_eq!(replayed["name"], "Bad");
    let (code, out, _) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), empty()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        out, "replayed 0 dead letter(s) of 0 read; 0 left out by the filters\n",
        "the first replay's position is committed"
    );

    shutdown.cancel();
    let (code, _, err) = running.await.unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
}

/// `replica-ddl` prints the table each `#[derive(Consume)]` of the binary expects: its
/// columns with the types of their fields, `NOT NULL` for the fields that are no `Option`,
/// the synced id as the key. Tables created from it take a rental with its sideloaded
/// bookings through the consumer.
#[tokio::test(flavor = "multi_thread")]
async fn replica_ddl_prints_tables_the_consumer_writes_into() {
    let mut args = vec!["replica-ddl"];
    for table in ["accounts", "bookings", "clients", "rentals", "taxes"] {
        args.extend(["--table", table]);
    }
    let (code, out, err) = cli(&args, empty()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(out.matches("CREATE TABLE").count(), 5, "{out}");
    assert!(
        out.contains(
            "): Booking from v8_rentals\n\
             CREATE TABLE bookings (\n    \
                 synced_id bigint PRIMARY KEY,\n    \
                 synced_created_at timestamp with time zone,\n    \
                 synced_updated_at timestamp with time zone,\n    \
                 synced_data jsonb,\n    \
                 start_at bigint,\n    \
                 synced_rental_id bigint\n\
             );\n"
        ),
        "{out}"
    );
    assert!(out.contains("-- it::consumer_models::Booking (tests/it/consumer_models.rs:"), "{out}");
    assert!(out.contains("    synced_booking_ids bigint[]\n);"), "{out}");

    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(&out).await.unwrap();
    let (consumer, _) = crate::consumer_models::consumer(&db, |builder| builder);
    let rental = json!({"id": 1, "name": "Villa", "updated_at": t(0), "links": {"bookings": [10]},
                        "bookings": [{"id": 10, "start_at": 5, "updated_at": t(0)}]});
    let payload = json!({"message": [{"event": "rental_created", "model_name": "Rental", "data": [rental]}]});
    let outcome =
        consumer.process_batch(&[message(0, Some("Rental:1"), Some(payload.to_string().as_bytes()))]).await.unwrap();
    assert!(outcome.dead_letters.is_empty(), "{:?}", outcome.dead_letters);
    let mut conn = db.connection().await;
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "Villa");
    assert_eq!(row(&mut conn, "bookings", 10).await.unwrap()["synced_rental_id"], 1);
}

/// A table no replica is kept in is a usage mistake, with the closest replica table.
#[tokio::test(flavor = "multi_thread")]
async fn replica_ddl_of_an_unknown_table_suggests_the_closest() {
    let (code, out, err) = cli(&["replica-ddl", "--table", "bokings"], empty()).await;
    assert_eq!(code, ExitCode::from(2), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: --table bokings: no replica is kept in that table; did you mean `bookings`?"),
        "{err}"
    );
}
