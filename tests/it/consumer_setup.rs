//! Setup checks that protect data: a replica table that does not fit its model is reported
//! with its fix by `check`, stops `consume` and `Consumer::run` at start-up, and, when it
//! breaks while the consumer runs, stops only its partition (nothing dead-lettered, no
//! offset stored, `/health` naming the partition and the fix) until it is fixed; the
//! partition then resumes by itself. A message the database rejects for its own content is
//! still dead-lettered. Also: the declarations a consumer and `check` validate (topics read
//! but not declared, a topic's `partition_key` no model has, a handler event typo).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::SimpleAsyncConnection;
use dionysus::consumer::replica::{Replica, Replicas};
use dionysus::consumer::{ConsumedEvent, Consumer, ConsumerError, InboundMessage};
use dionysus::registry::model::{PartitionKeySource, Publication};
use dionysus::registry::{Registry, Tombstone, TopicDeclaration, TopicReference};
use dionysus::serialize::{serialize_erased, DefaultSerializer};
use dionysus::{Config, Dionysus, Topic};
use dionysus_tests::{create_topic, kafka_config, unique_name, TestDb};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::consumer_models::{row, t};
use crate::hostile::{big_producer, http_get, read_dead_letters, send, stored};

#[dionysus::topic(name = "setup_widgets")]
pub struct SetupWidgets;

diesel::table! {
    setup_widgets (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = setup_widgets)]
#[consume(topic = "setup_widgets", model = "Widget")]
pub struct Widget {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

/// Misspelt on purpose: `check` and `Consumer::build` warn about it.
#[dionysus::consume(topic = "setup_widgets", event = "widget_craeted")]
async fn widget_created_typo(_event: &ConsumedEvent) -> dionysus::Result<()> {
    Ok(())
}

/// The widgets' table as the model wants it, with a rule the data can break.
const WIDGETS: &str = "CREATE TABLE setup_widgets (synced_id bigint PRIMARY KEY, synced_updated_at timestamptz,
     name text CONSTRAINT no_bad_names CHECK (name IS DISTINCT FROM 'Bad'))";

fn widget(id: i64, name: &str) -> Vec<u8> {
    json!({"message": [{"event": "widget_updated", "model_name": "Widget",
        "data": [{"id": id, "name": name, "updated_at": t(id)}]}]})
    .to_string()
    .into_bytes()
}

async fn cli(args: &[&str], registry: &'static Registry) -> (ExitCode, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("dionysus").chain(args.iter().copied()).map(str::to_owned);
    let code = dionysus::cli::run_until(argv, registry, &mut out, &mut err, CancellationToken::new()).await;
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn widgets_registry() -> &'static Registry {
    Box::leak(Box::new(Registry::new([SetupWidgets::DECLARATION], [])))
}

fn config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.kafka = kafka_config();
    config
}

/// `check` names each problem of a replica table with the SQL that fixes it, and the fixes
/// as printed make the table fit; a handler waiting for a misspelt event is a warning with
/// the event it meant.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_replica_table_problems_and_a_handler_event_typo_with_their_fixes() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    let registry = widgets_registry();
    let check = ["--database-url", db.url.as_str(), "check", "--offline"];
    let fixes_in = |err: String| {
        err.lines().filter_map(|line| line.split_once("; fix: ").map(|(_, fix)| fix.to_owned())).collect::<Vec<_>>()
    };

    let (code, out, err) = cli(&check, registry).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}{err}");
    assert!(out.contains("warning: handler ") && out.contains("widget_created_typo"), "{out}");
    assert!(out.contains("waits for event `widget_craeted` on topic `setup_widgets`"), "{out}");
    assert!(out.contains("did you mean `widget_created`?"), "{out}");
    assert!(err.contains("replica table `setup_widgets` of "), "{err}");
    assert!(err.contains("the table does not exist; fix: CREATE TABLE setup_widgets ("), "{err}");
    let fixes = fixes_in(err);
    assert_eq!(fixes.len(), 1, "{fixes:?}");
    conn.batch_execute(&fixes[0]).await.unwrap();
    let (code, out, err) = cli(&check, registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");
    assert!(out.contains("replica tables: 1 checked"), "{out}");
    assert!(out.ends_with("ok\n"), "{out}");

    // A column gone, no unique index left, a required column the model does not write.
    conn.batch_execute(
        "ALTER TABLE setup_widgets DROP COLUMN name;
         ALTER TABLE setup_widgets DROP CONSTRAINT setup_widgets_pkey;
         ALTER TABLE setup_widgets ADD COLUMN owner text NOT NULL",
    )
    .await
    .unwrap();
    let (code, _, err) = cli(&check, registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains(
            "column `name` (text) does not exist; fix: ALTER TABLE \"setup_widgets\" ADD COLUMN \"name\" text;"
        ),
        "{err}"
    );
    assert!(err.contains("no unique index on `synced_id`"), "{err}");
    assert!(err.contains("column `owner` is NOT NULL without a default"), "{err}");
    for fix in fixes_in(err) {
        conn.batch_execute(&fix).await.unwrap();
    }
    let (code, out, err) = cli(&check, registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");

    // A role that may only read the table: the fix grants what the consumer needs.
    let role = unique_name("setup_reader");
    conn.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN; GRANT SELECT ON setup_widgets, __diesel_schema_migrations TO \"{role}\""
    ))
    .await
    .unwrap();
    let (_, rest) = db.url.split_once("://").unwrap();
    let as_role = format!("postgres://{role}@{}", rest.split_once('@').map_or(rest, |(_, host)| host));
    let check_as_role = ["--database-url", as_role.as_str(), "check", "--offline"];
    let (code, out, err) = cli(&check_as_role, registry).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}{err}");
    assert!(err.contains(&format!("role `{role}` lacks INSERT, UPDATE, DELETE on it")), "{err}");
    for fix in fixes_in(err) {
        conn.batch_execute(&fix).await.unwrap();
    }
    let (code, out, err) = cli(&check_as_role, registry).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");
    conn.batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\"")).await.unwrap();
}

/// A topic's `partition_key` that no model published on it has is a problem `check`
/// reports, with the field it probably meant.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_topic_partition_key_no_model_has() {
    let topic: &'static TopicDeclaration = Box::leak(Box::new(TopicDeclaration {
        namespace: None,
        name: "setup_keyed",
        full_name: "setup_keyed",
        partition_key: Some("acount_id"),
        partition_key_with: None,
        partitions: None,
        replication_factor: None,
        genesis_replica: false,
        tombstone: Tombstone::JsonNull,
        format: dionysus::registry::TopicFormat::Json,
        declared_by: "consumer_setup::Keyed",
        location: file!(),
    }));
    let publication: &'static Publication = Box::leak(Box::new(Publication {
        model: dionysus::__private::model_entry::<crate::relay::Item>(),
        topic: "setup_keyed",
        partition_key: PartitionKeySource::Inherit,
        with: &[],
        observe: &[],
        serialize: serialize_erased::<crate::relay::Item, DefaultSerializer>,
        schema: None,
        delayed: &[],
        location: file!(),
    }));
    let registry: &'static Registry = Box::leak(Box::new(Registry::new([topic], []).with_publications([publication])));
    let db = TestDb::migrated().await;
    let (code, _, err) = cli(&["--database-url", &db.url, "check", "--offline"], registry).await;
    assert_eq!(code, ExitCode::FAILURE);
    assert!(err.contains("topic `setup_keyed` (consumer_setup::Keyed"), "{err}");
    assert!(err.contains("its partition key names the field `acount_id`, which none of its models has"), "{err}");
    assert!(err.contains("did you mean `account_id`?"), "{err}");
}

/// A consumer reading a topic that a replica or handler names but nothing declares is not
/// built, whether the declarations come from the builder or the handle.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_is_not_built_over_a_topic_nothing_declares() {
    static GADGETS: TopicReference =
        TopicReference { topic: "setup_gadgets", by: "replica app::Gadget", location: "src/gadget.rs:1" };
    let registry = Registry::new([], [&GADGETS]);
    let built = Consumer::builder(Config::default()).registry(registry.clone()).topic("setup_gadgets").build();
    let error = built.err().expect("not built");
    assert!(matches!(error, ConsumerError::Declarations(_)), "{error:?}");
    assert!(error.to_string().contains("refers to topic `setup_gadgets`, which no #[dionysus::topic] declares"));
    let handle = Dionysus::with_registry(Config::default(), registry);
    assert!(matches!(handle.consumer().topic("setup_gadgets").build(), Err(ConsumerError::Declarations(_))));
    // Another topic's problems are not this consumer's.
    assert!(handle.consumer().topic("setup_other").build().is_ok());
}

/// Start-up fails at once, saying the fix, when a replica table of the topics read does not
/// fit: through `Consumer::run` and through the `consume` command.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_does_not_start_on_a_replica_table_that_does_not_fit() {
    let db = TestDb::migrated().await;
    db.connection().await.batch_execute(WIDGETS).await.unwrap();
    db.connection().await.batch_execute("ALTER TABLE setup_widgets DROP COLUMN name").await.unwrap();
    let fix = "fix: ALTER TABLE \"setup_widgets\" ADD COLUMN \"name\" text;";

    let consumer = Consumer::builder(config(&db))
        .pool(db.pool(2))
        .replicas(Replicas::new([Widget::DESCRIPTOR]))
        .handlers(false)
        .build()
        .unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), consumer.run(CancellationToken::new()))
        .await
        .expect("fails at once")
        .unwrap_err();
    eprintln!("Consumer::run failed after {:?}", started.elapsed());
    assert!(matches!(error, ConsumerError::Setup(_)), "{error:?}");
    assert!(error.to_string().contains(fix), "{error}");

    let kafka = kafka_config();
    let spec = dionysus::kafka::TopicSpec { name: "setup_widgets".to_owned(), partitions: 1, replication_factor: 1 };
    dionysus::kafka::create_topics(&kafka, &[spec]).await.unwrap();
    let brokers = kafka.bootstrap_servers();
    let dead_letters = unique_name("setup_dead_letters");
    let args = [
        "--database-url",
        &db.url,
        "--brokers",
        &brokers,
        "consume",
        "--topic",
        "setup_widgets",
        "--dead-letter-topic",
        &dead_letters,
    ];
    let empty: &'static Registry = Box::leak(Box::new(Registry::new([], [])));
    let started = Instant::now();
    let (code, out, err) = tokio::time::timeout(Duration::from_secs(30), cli(&args, empty)).await.expect("exits");
    eprintln!("consume exited after {:?}", started.elapsed());
    assert_eq!(code, ExitCode::FAILURE, "{out}{err}");
    assert!(err.contains(fix), "{err}");
    assert!(!out.contains("consuming"), "{out}");
}

/// Without the broker: a batch writing a column the table lacks, or into a table with a
/// required column the model does not write, fails as a setup fault — nothing
/// dead-lettered, no offset stored — and applies once the table is fixed.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_on_a_table_missing_a_column_is_a_setup_fault_not_a_dead_letter() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(WIDGETS).await.unwrap();
    let consumer = Consumer::builder(config(&db))
        .pool(db.pool(2))
        .replicas(Replicas::new([Widget::DESCRIPTOR]))
        .handlers(false)
        .build()
        .unwrap();
    conn.batch_execute("ALTER TABLE setup_widgets DROP COLUMN name").await.unwrap();
    let topic = unique_name("setup_batch");
    let messages: Vec<InboundMessage> = [(0, widget(1, "one")), (1, widget(2, "two"))]
        .into_iter()
        .map(|(offset, payload)| InboundMessage {
            topic: topic.clone(),
            partition: 0,
            offset,
            key: None,
            payload: Some(payload),
        })
        .collect();
    let error = consumer.process_batch(&messages).await.unwrap_err();
    let text = dionysus::error::Report(&error).to_string();
    assert!(matches!(error, ConsumerError::SetupFault { .. }), "{text}");
    assert!(text.contains("the partition waits until the replica tables are fixed"), "{text}");
    assert!(text.contains("fix: ALTER TABLE \"setup_widgets\" ADD COLUMN \"name\" text;"), "{text}");
    assert_eq!(stored(&mut conn, &topic).await, -1, "no offset stored");

    conn.batch_execute("ALTER TABLE setup_widgets ADD COLUMN name text").await.unwrap();
    // A required column the model does not write: every insert breaks it, whatever it says.
    conn.batch_execute("ALTER TABLE setup_widgets ADD COLUMN owner text NOT NULL").await.unwrap();
    let error = consumer.process_batch(&messages).await.unwrap_err();
    let text = dionysus::error::Report(&error).to_string();
    assert!(matches!(error, ConsumerError::SetupFault { .. }), "{text}");
    assert!(text.contains("column `owner` is NOT NULL without a default"), "{text}");
    assert_eq!(stored(&mut conn, &topic).await, -1, "no offset stored");

    conn.batch_execute("ALTER TABLE setup_widgets ALTER COLUMN owner DROP NOT NULL").await.unwrap();
    let outcome = consumer.process_batch(&messages).await.unwrap();
    assert_eq!(outcome.dead_letters, []);
    assert_eq!(outcome.next_offset, Some(2));
    assert_eq!(row(&mut conn, "setup_widgets", 2).await.unwrap()["name"], "two");
}

/// Through the broker: a replica column dropped while the consumer runs stops that
/// partition — nothing dead-lettered, the stored offset unchanged, `/health` 503 naming the
/// partition and the fix — until `ALTER TABLE ADD COLUMN`, after which it resumes by itself
/// and the replica converges. A message breaking a rule of the table is still
/// dead-lettered, and the partition moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_column_stops_the_partition_until_it_is_added_and_a_bad_message_is_still_dead_lettered() {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(WIDGETS).await.unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "setup_stop", 1).await;
    let dead_letters = create_topic(&kafka, "setup_stop_dead_letters", 1).await;
    let producer = big_producer(&kafka);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = config(&db);
    config.consumer.dead_letter_topic = dead_letters.clone();
    let consumer = Consumer::builder(config)
        .pool(db.pool(4))
        .replicas(Replicas::new([Widget::DESCRIPTOR]))
        .topic(&topic)
        .handlers(false)
        .serve(address)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let named = |id: i64| {
        let url = db.url.clone();
        async move {
            let mut conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url).await.ok()?;
            row(&mut conn, "setup_widgets", id).await.and_then(|row| row["name"].as_str().map(str::to_owned))
        }
    };
    send(&producer, &topic, Some(b"Widget:1"), Some(&widget(1, "one"))).await;
    dionysus_tests::eventually(Duration::from_secs(60), || named(1)).await;
    assert_eq!(stored(&mut conn, &topic).await, 1);

    conn.batch_execute("ALTER TABLE setup_widgets DROP COLUMN name").await.unwrap();
    send(&producer, &topic, Some(b"Widget:2"), Some(&widget(2, "two"))).await;
    send(&producer, &topic, Some(b"Widget:3"), Some(&widget(3, "three"))).await;
    let health = dionysus_tests::eventually(Duration::from_secs(60), || async move {
        let response = http_get(address, "/health").await?;
        (response.starts_with("HTTP/1.1 503") && response.contains("stalled")).then_some(response)
    })
    .await;
    assert!(health.contains(&format!("partition {topic}/0 stalled")), "{health}");
    assert!(health.contains("fix: ALTER TABLE \"setup_widgets\" ADD COLUMN \"name\" text;"), "{health}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored(&mut conn, &topic).await, 1, "the offset stays before the messages not applied");
    assert_eq!(dionysus_tests::count(&mut conn, "SELECT count(*) AS n FROM setup_widgets").await, 1);

    let fixed = Instant::now();
    conn.batch_execute(
        "ALTER TABLE setup_widgets ADD COLUMN name text CONSTRAINT no_bad_names CHECK (name IS DISTINCT FROM 'Bad')",
    )
    .await
    .unwrap();
    dionysus_tests::eventually(Duration::from_secs(60), || named(3)).await;
    eprintln!("resumed {:?} after the column was added", fixed.elapsed());
    assert_eq!(named(2).await.as_deref(), Some("two"));
    dionysus_tests::eventually(Duration::from_secs(10), || async move {
        let response = http_get(address, "/health").await?;
        response.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;

    // The message's own fault: dead-lettered, and the next message applies.
    send(&producer, &topic, Some(b"Widget:4"), Some(&widget(4, "Bad"))).await;
    send(&producer, &topic, Some(b"Widget:5"), Some(&widget(5, "five"))).await;
    dionysus_tests::eventually(Duration::from_secs(60), || named(5)).await;
    assert_eq!(named(4).await, None);
    assert_eq!(stored(&mut conn, &topic).await, 5);
    let dead = read_dead_letters(&kafka, &dead_letters, 1, Duration::from_secs(30)).await;
    let reasons: Vec<(i64, &str)> = dead.iter().map(|dead| (dead.offset, dead.reason.as_str())).collect();
    assert_eq!(reasons, [(3, "database_rejected")], "only the bad message, once");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stopped within 10 s").unwrap().unwrap();
}
