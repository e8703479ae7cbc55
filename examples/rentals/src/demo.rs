//! The scripted demo: both services in one process, talking only through the broker.
//!
//! 1. Recreates the producer's and the consumer's databases (`dionysus_rentals_producer`,
//!    `dionysus_rentals_consumer`, or another prefix with `--database-prefix`; kept afterwards
//!    to look around), applies the framework migrations and each service's tables, and writes
//!    "legacy" records with plain SQL.
//! 2. Recreates the demo topics — on the broker, or with `--embedded` on an embedded Kafka
//!    cluster in this process (librdkafka's mock cluster, from `dionysus::testing`; no broker
//!    process) — and starts the relay (producer database) and the consumer (consumer
//!    database) as tasks; `demo_bookings` is an Avro topic, so a schema registry is served
//!    too (the test registry of `dionysus::testing`, unless `DIONYSUS_SCHEMA_REGISTRY_URL`
//!    names one).
//! 3. Makes the scripted changes through the outbox — create, update, soft delete, a
//!    dependency change, an observed-column change, destroy — and after each waits until the
//!    relay has published everything and the consumer has applied everything.
//! 4. Runs a genesis of every published model, which brings the legacy records over.
//! 5. Reports what was published and replicated, and compares checksums of both sides.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use chrono::NaiveDate;
use diesel::sql_types::{BigInt, Nullable, Text};
// Not `RunQueryDsl`: its `load` would shadow `AtomicU64::load` here.
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use dionysus::config::{redact, Config};
use dionysus::consumer::{Consumer, Notification};
use dionysus::genesis::{Genesis, GenesisRequest};
use dionysus::kafka::TopicSpec;
use dionysus::relay::Relay;
use dionysus::testing::{EmbeddedKafka, TestRegistry};
use dionysus::{Registry, Topic};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::compare::{self, COMPARED};
use crate::consumer::RENTAL_UPDATES;
use crate::producer::{self, Accounts, Bookings, Rentals};
use crate::setup;

const DEAD_LETTERS: &str = "demo_dead_letters";
const GROUP: &str = "dionysus_rentals_demo";
const IN_SYNC_WITHIN: Duration = Duration::from_secs(60);

/// What the replica holds, in one line.
const REPLICA_COUNTS: &str =
    "SELECT format('%s accounts, %s rentals (%s canceled), %s fees (%s detached), %s bookings',
    (SELECT count(*) FROM accounts), (SELECT count(*) FROM rentals),
    (SELECT count(*) FROM rentals WHERE synced_canceled_at IS NOT NULL), (SELECT count(*) FROM bookings_fees),
    (SELECT count(*) FROM bookings_fees WHERE synced_rental_id IS NULL), (SELECT count(*) FROM bookings)) AS fact";

/// How the demo runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// On an embedded Kafka cluster in this process instead of the broker of
    /// `DIONYSUS_SEED_BROKER`.
    pub embedded: bool,
    /// The databases are `<prefix>_producer` and `<prefix>_consumer`.
    pub database_prefix: String,
}

impl Default for Options {
    fn default() -> Options {
        Options { embedded: false, database_prefix: "dionysus_rentals".to_owned() }
    }
}

impl Options {
    /// Reads `[demo] [--embedded] [--database-prefix NAME]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options::default();
        let mut args = args.iter().map(String::as_str).peekable();
        if args.peek() == Some(&"demo") {
            args.next();
        }
        while let Some(arg) = args.next() {
            match arg {
                "--embedded" => options.embedded = true,
                "--database-prefix" => match args.next() {
                    Some(prefix) if !prefix.is_empty() && !prefix.contains('"') => {
                        options.database_prefix = prefix.to_owned()
                    }
                    _ => return Err("--database-prefix needs a name".to_owned()),
                },
                other => return Err(format!("unknown demo argument `{other}`")),
            }
        }
        Ok(options)
    }

    fn producer_db(&self) -> String {
        format!("{}_producer", self.database_prefix)
    }

    fn consumer_db(&self) -> String {
        format!("{}_consumer", self.database_prefix)
    }
}

/// Runs the demo; the exit code fails when anything went wrong or the replica differs.
pub async fn run(options: Options) -> ExitCode {
    match demo(&options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(options: &Options) -> anyhow::Result<bool> {
    let mut base = Config::from_env()?.with_env_kafka_properties();
    let registry = Registry::global();
    registry.validate()?;
    // The embedded cluster lives until the demo returns, after the relay and consumer stop.
    let embedded = if options.embedded {
        let kafka = EmbeddedKafka::builder().registry(registry.clone()).topic(DEAD_LETTERS, 1).start()?;
        kafka.configure(&mut base);
        Some(kafka)
    } else {
        None
    };
    let brokers = base.kafka.bootstrap_servers();
    let postgres = redact(&base.database_url);
    match &embedded {
        Some(_) => println!(
            "dionysus rentals demo: PostgreSQL at {postgres}, embedded Kafka cluster at {brokers} (librdkafka's mock \
             cluster in this process; no broker process)"
        ),
        None => println!("dionysus rentals demo: PostgreSQL at {postgres}, broker at {brokers}"),
    }
    let existing_topics = match &embedded {
        Some(_) => Default::default(),
        None => dionysus::kafka::broker_topics(&base.kafka).await.map_err(|error| {
            anyhow!(
                "cannot reach the broker at {brokers} ({error})\n       \
                 start a broker there, run scripts/demo with DIONYSUS_SEED_BROKER unset (it starts one the way the \
                 tests do), or run scripts/demo --embedded"
            )
        })?,
    };

    // `demo_bookings` is an Avro topic: its records are framed with their schema's id in a
    // schema registry. In production that is a Confluent-compatible registry
    // (DIONYSUS_SCHEMA_REGISTRY_URL); unless one is given, the demo serves the test registry
    // of `dionysus::testing` in this process.
    let _schema_registry = match std::env::var_os("DIONYSUS_SCHEMA_REGISTRY_URL") {
        Some(_) => {
            println!("  schemas        registry at {}", base.schemas.registry_url);
            None
        }
        None => {
            let schema_registry = TestRegistry::start().await.context("starting the test schema registry")?;
            base.schemas.registry_url = schema_registry.url();
            println!(
                "  schemas        test registry at {} (dionysus::testing; a Confluent-compatible registry in production)",
                base.schemas.registry_url
            );
            Some(schema_registry)
        }
    };

    let (producer_name, consumer_name) = (options.producer_db(), options.consumer_db());
    let producer_url = setup::recreate_database(&base.database_url, &producer_name).await?;
    let consumer_url = setup::recreate_database(&base.database_url, &consumer_name).await?;
    dionysus::migrate(&producer_url).await?;
    dionysus::migrate(&consumer_url).await?;
    let mut producer_db = setup::connect(&producer_url).await?;
    let mut replica_db = setup::connect(&consumer_url).await?;
    producer_db.batch_execute(producer::SCHEMA).await.context("creating the producer's tables")?;
    producer_db.batch_execute(&producer::legacy_sql()).await.context("writing the legacy records")?;
    replica_db.batch_execute(crate::consumer::SCHEMA).await.context("creating the replica tables")?;
    println!("  databases      {producer_name} (producer), {consumer_name} (consumer): migrated, tables created");

    let mut producer_config = base.clone();
    producer_config.database_url = producer_url.clone();
    let mut consumer_config = base.clone();
    consumer_config.database_url = consumer_url.clone();
    consumer_config.kafka.group_id = Some(GROUP.to_owned());
    consumer_config.consumer.dead_letter_topic = DEAD_LETTERS.to_owned();
    let topics = match &embedded {
        // A fresh cluster: its topics were created when it started.
        Some(kafka) => kafka
            .topics()
            .into_iter()
            .map(|(name, partitions)| TopicSpec { name, partitions, replication_factor: 1 })
            .collect(),
        None => setup::recreate_topics(&base.kafka, registry, DEAD_LETTERS, &existing_topics).await?,
    };
    let listed: Vec<String> = topics.iter().map(|t| format!("{} ({} partition(s))", t.name, t.partitions)).collect();
    println!("  topics         {}", listed.join(", "));

    let shutdown = CancellationToken::new();
    let relay = Relay::builder(producer_config.clone()).registry(registry).build()?;
    let consumed = Arc::new(AtomicU64::new(0));
    let counter = consumed.clone();
    let consumer = Consumer::builder(consumer_config)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .subscribe(move |notification| {
            if let Notification::Event(_) = notification {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()?;
    println!(
        "  services       relay (producer database), consumer of {} (group {GROUP})",
        consumer.topics().join(", ")
    );
    let tasks = vec![
        (
            "relay",
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move { relay.run(shutdown).await.map_err(anyhow::Error::from) }
            }),
        ),
        (
            "consumer",
            tokio::spawn({
                let shutdown = shutdown.clone();
                let consumer = consumer.clone();
                async move { consumer.run(shutdown).await.map_err(anyhow::Error::from) }
            }),
        ),
    ];
    let mut demo = Demo { producer: producer_db, replica: replica_db, tasks, outbox_rows: 0, genesis_published: 0 };

    let result = demo.script(&producer_config, registry).await;
    shutdown.cancel();
    for (name, task) in std::mem::take(&mut demo.tasks) {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: the {name} stopped with an error: {error:#}"),
            Err(error) => eprintln!("warning: the {name} task failed: {error}"),
        }
    }
    result?;

    println!();
    println!("explore (the databases stay until the next run):");
    println!("  cargo run -p dionysus-example-rentals -- --database-url {} outbox stats", redact(&producer_url));
    println!(
        "  psql {} -c 'SELECT synced_id, name, synced_canceled_at FROM rentals ORDER BY synced_id LIMIT 5'",
        redact(&consumer_url)
    );
    println!();
    println!("report");
    let relay_published = demo.relay_published().await?;
    println!(
        "  events published  {} ({relay_published} by the relay from outbox rows, {} by genesis)",
        relay_published + demo.genesis_published,
        demo.genesis_published
    );
    println!("  events consumed   {}", consumed.load(Ordering::Relaxed));
    println!("  replica rows      {}", demo.fact(REPLICA_COUNTS).await?);
    // The verdict is the last line.
    demo.compare().await
}

/// The running demo: both databases and the service tasks.
struct Demo {
    producer: AsyncPgConnection,
    replica: AsyncPgConnection,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    /// Outbox rows seen so far, to report what each step wrote.
    outbox_rows: i64,
    /// Records published by genesis so far.
    genesis_published: i64,
}

#[derive(diesel::QueryableByName)]
struct Fact {
    #[diesel(sql_type = Nullable<Text>)]
    fact: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Demo {
    /// The scripted changes and the genesis.
    async fn script(&mut self, producer_config: &Config, registry: &'static Registry) -> anyhow::Result<()> {
        println!();
        step(1, "create", "2 accounts, 3 rentals, 2 fees, 3 bookings");
        let p = &mut self.producer;
        let seaside = producer::create_account(p, "Seaside Stays", "15:00").await?;
        let mountain = producer::create_account(p, "Mountain Lodges", "16:00").await?;
        let loft = producer::create_rental(p, &seaside, "Seaside Loft", 12_000).await?;
        let harbour = producer::create_rental(p, &seaside, "Harbour View", 9_500).await?;
        let chalet = producer::create_rental(p, &mountain, "Alpine Chalet", 15_000).await?;
        let cleaning = producer::create_fee(p, &loft, "Cleaning", 5_000).await?;
        producer::create_fee(p, &chalet, "Cleaning", 6_000).await?;
        let loft_booking = producer::create_booking(p, &loft, date(2026, 8, 1), 3).await?;
        let harbour_booking = producer::create_booking(p, &harbour, date(2026, 8, 3), 2).await?;
        producer::create_booking(p, &chalet, date(2026, 12, 20), 7).await?;
        self.settle(REPLICA_COUNTS).await?;

        step(2, "update", &format!("rental {} renamed, booking {} now 4 nights", loft.id, loft_booking.id));
        let p = &mut self.producer;
        producer::rename_rental(p, loft.id, "Seaside Loft with Terrace").await?;
        producer::change_nights(p, loft_booking.id, 4).await?;
        self.settle(&format!(
            "SELECT format('rental %s is %L; booking %s has %s nights', r.synced_id, r.name, b.synced_id, b.nights) AS fact
             FROM rentals r, bookings b WHERE r.synced_id = {} AND b.synced_id = {}",
            loft.id, loft_booking.id
        ))
        .await?;

        step(3, "soft delete", &format!("rental {} canceled (canceled_at set)", harbour.id));
        producer::cancel_rental(&mut self.producer, harbour.id).await?;
        self.settle(&format!(
            "SELECT format('rental %s kept, synced_canceled_at = %s', synced_id, synced_canceled_at) AS fact
             FROM rentals WHERE synced_id = {}",
            harbour.id
        ))
        .await?;

        step(
            4,
            "dependency",
            &format!(
                "fee {} of rental {} 5000 -> 6500, a Linen fee added to rental {}",
                cleaning.id, loft.id, chalet.id
            ),
        );
        let p = &mut self.producer;
        producer::change_fee(p, cleaning.id, 6_500).await?;
        let linen = producer::create_fee(p, &chalet, "Linen", 1_500).await?;
        self.settle(&format!(
            "SELECT string_agg(format('rental %s has fees %s', r.synced_id, (SELECT string_agg(f.synced_id || ': ' || f.amount_cents, ', '
                 ORDER BY f.synced_id) FROM bookings_fees f WHERE f.synced_rental_id = r.synced_id)), '; ' ORDER BY r.synced_id) AS fact
             FROM rentals r WHERE r.synced_id IN ({}, {})",
            loft.id, chalet.id
        ))
        .await?;

        step(5, "observed column", &format!("account {} default_check_in_time 15:00 -> 16:30", seaside.id));
        let before = RENTAL_UPDATES.load(Ordering::Relaxed);
        producer::change_check_in(&mut self.producer, seaside.id, "16:30").await?;
        self.settle(&format!(
            "SELECT format('account %s checks in at %s', synced_id, default_check_in_time) AS fact FROM accounts WHERE synced_id = {}",
            seaside.id
        ))
        .await?;
        let republished = wait_for_count(&RENTAL_UPDATES, before + 2).await - before;
        println!("{:21}its rentals were republished: the consumer's handler saw {republished} rental_updated", "");

        step(6, "destroy", &format!("booking {} and fee {} deleted", harbour_booking.id, linen.id));
        let p = &mut self.producer;
        producer::destroy_booking(p, harbour_booking.id).await?;
        producer::destroy_fee(p, linen.id).await?;
        self.settle(&format!(
            "SELECT format('booking %s %s; fee %s detached (synced_rental_id %s)',
                {booking}, CASE WHEN EXISTS (SELECT 1 FROM bookings WHERE synced_id = {booking}) THEN 'still there' ELSE 'deleted' END,
                {fee}, coalesce((SELECT synced_rental_id::text FROM bookings_fees WHERE synced_id = {fee}), 'NULL')) AS fact",
            booking = harbour_booking.id,
            fee = linen.id
        ))
        .await?;

        step(
            7,
            "genesis",
            &format!(
                "republish everything: the {} legacy rentals (plain SQL, no outbox rows) are not replicated yet",
                producer::LEGACY_RENTALS
            ),
        );
        self.genesis(producer_config, registry).await?;
        self.settle(REPLICA_COUNTS).await
    }

    /// Genesis of every published model; the rentals spread over 3 s to show the throttle.
    async fn genesis(&mut self, config: &Config, registry: &'static Registry) -> anyhow::Result<()> {
        let pool = dionysus::db::pool(&config.database_url, 2)?;
        let genesis = Genesis::new(config.clone(), registry, pool)?;
        let style =
            ProgressStyle::with_template(&format!("{:21}{{prefix:<8}} {{bar:30}} {{pos}}/{{len}} records", ""))?;
        for (model, topic, over) in
            [("Account", Accounts::NAME, 0), ("Rental", Rentals::NAME, 3), ("Booking", Bookings::NAME, 0)]
        {
            let request =
                GenesisRequest { over: Duration::from_secs(over), batch_size: 50, ..GenesisRequest::new(model, topic) };
            let run = genesis.start(&request).await?;
            let bar = ProgressBar::new(0).with_style(style.clone()).with_prefix(model);
            let started = Instant::now();
            let report = genesis.run(run.id, &Bar(bar.clone()), &CancellationToken::new()).await?;
            bar.finish_and_clear();
            println!(
                "{:21}{model:<8} {} records to {topic} in {:.1} s{}",
                "",
                report.published,
                started.elapsed().as_secs_f64(),
                if over > 0 { format!(" (spread over {over} s in batches of 50)") } else { String::new() }
            );
            self.genesis_published += report.published;
        }
        Ok(())
    }

    /// Reports the outcome of a step: the outbox rows it wrote, the time until both services
    /// caught up, and what the replica shows (`fact`, a query on the consumer's database).
    async fn settle(&mut self, fact: &str) -> anyhow::Result<()> {
        let rows = self.count("SELECT count(*) AS n FROM dionysus_outbox").await?;
        let written = rows - std::mem::replace(&mut self.outbox_rows, rows);
        let waited = self.in_sync().await?;
        let shown = self.fact(fact).await?;
        println!("{:21}{written} outbox row(s); in sync after {:.1} s; replica: {shown}", "", waited.as_secs_f64());
        Ok(())
    }

    /// Waits until the relay published every outbox row and the consumer applied every
    /// message. The topics are new and each event of the demo is one message (no genesis
    /// replica topics), so the consumer is done when the offsets it stored add up to the
    /// events published.
    async fn in_sync(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(index) = self.tasks.iter().position(|(_, task)| task.is_finished()) {
                let (name, task) = self.tasks.remove(index);
                let outcome = task.await.map_err(anyhow::Error::from).and_then(|result| result);
                bail!(
                    "the {name} stopped: {}",
                    outcome.err().map_or("without an error".to_owned(), |e| format!("{e:#}"))
                );
            }
            let backlog = self.count("SELECT count(*) AS n FROM dionysus_outbox WHERE published_at IS NULL").await?;
            let published = self.relay_published().await? + self.genesis_published;
            let applied: i64 = dionysus::consumer::stored_offsets(&mut self.replica, GROUP).await?.values().sum();
            if backlog == 0 && applied >= published {
                return Ok(started.elapsed());
            }
            if started.elapsed() > IN_SYNC_WITHIN {
                bail!(
                    "not in sync after {IN_SYNC_WITHIN:?}: {backlog} outbox row(s) unpublished, the consumer applied {applied} of {published} message(s)"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Outbox rows the relay published.
    async fn relay_published(&mut self) -> anyhow::Result<i64> {
        self.count("SELECT count(*) AS n FROM dionysus_outbox WHERE published_at IS NOT NULL").await
    }

    /// The count a query on the producer's database selects as `n`.
    async fn count(&mut self, sql: &str) -> anyhow::Result<i64> {
        let count: Count = diesel_async::RunQueryDsl::get_result(diesel::sql_query(sql), &mut self.producer)
            .await
            .with_context(|| sql.to_owned())?;
        Ok(count.n)
    }

    /// The text a query on the replica's database selects as `fact`.
    async fn fact(&mut self, sql: &str) -> anyhow::Result<String> {
        let fact: Fact = diesel_async::RunQueryDsl::get_result(diesel::sql_query(sql), &mut self.replica)
            .await
            .with_context(|| sql.to_owned())?;
        Ok(fact.fact.unwrap_or_else(|| "-".to_owned()))
    }

    /// Compares both sides table by table; prints the checksums or the differences.
    async fn compare(&mut self) -> anyhow::Result<bool> {
        let mut equal = true;
        let mut sums = Vec::new();
        for compared in &COMPARED {
            let source = compare::checksum(&mut self.producer, compared.source).await?;
            let replica = compare::checksum(&mut self.replica, compared.replica).await?;
            if source == replica {
                sums.push(format!("{} {}", compared.table, &source.md5[..8]));
                continue;
            }
            equal = false;
            println!(
                "  {} differ: source {} rows (md5 {}), replica {} rows (md5 {})",
                compared.table, source.rows, source.md5, replica.rows, replica.md5
            );
            for difference in compare::differences(&mut self.producer, &mut self.replica, compared, 10).await? {
                println!("    {difference}");
            }
        }
        if equal {
            println!("  checksums         {} (md5 of the compared columns, ordered by id)", sums.join(", "));
            println!("replica matches source");
        } else {
            println!("replica does NOT match source");
        }
        Ok(equal)
    }
}

/// Prints a step's title and what it changes.
fn step(number: u32, title: &str, did: &str) {
    println!("{number:>2}. {title:<16} {did}");
}

/// Waits up to 2 s for a handler's counter (handlers run just after the offsets are stored).
async fn wait_for_count(counter: &AtomicU64, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let value = counter.load(Ordering::Relaxed);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap_or_default()
}

/// A genesis run drawn as a progress bar.
struct Bar(ProgressBar);

impl dionysus::genesis::Progress for Bar {
    fn started(&self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    fn advanced(&self, records: u64) {
        self.0.inc(records);
    }
}
