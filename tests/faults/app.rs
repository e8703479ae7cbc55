//! The application the fault suite (`tests/faults/main.rs`) runs as separate OS processes: a
//! wallet service publishing through the outbox, and a service keeping replicas of it. It
//! embeds the `dionysus` command line (`relay`, `consume`, …) as an application would, and
//! adds three commands of its own:
//!
//! * `prepare-source --keys N`: migrates the source database, creates `wallets` and
//!   `ledger_entries`, and creates wallets `1..=N` (with their `wallet_created` outbox rows);
//! * `prepare-replica`: migrates the replica database and creates the replica tables;
//! * `load --keys N --rate R --seconds S`: writes R transactions a second for S seconds, each
//!   updating one wallet (its `seq` goes up by one) and creating one ledger entry carrying
//!   the same `seq`, with both outbox rows; prints what it committed.
//!
//! Every message of wallet `k` has partition key `k`: the wallet's own (`partition_key =
//! "id"`) and those of its ledger entries (`partition_key = "wallet_id"`). Ledger entries are
//! only ever created, so the order in which their messages appear is exactly the order in
//! which the relay published them; a wallet's messages carry its state at publish time.
//!
//! Run by hand: `cargo run -p dionysus-tests --bin faults-app -- --help`.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool reports on its output")]

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde::Serialize;
use serde_json::json;

use self::source::{ledger_entries, wallets};

/// `faults_wallets`: wallets and their ledger entries, partitioned by wallet.
#[dionysus::topic(namespace = "faults", name = "wallets", partitions = 6)]
pub struct Wallets;

/// `faults_acks`: the replicating service's replies, one per ledger entry it applied (see
/// [`acknowledge`]). Written to the replica database's outbox in the batch transaction; no
/// relay publishes them here — the suite counts them there.
#[dionysus::topic(namespace = "faults", name = "acks")]
pub struct Acks;

/// The source tables.
mod source {
    diesel::table! {
        wallets (id) {
            id -> BigInt,
            seq -> BigInt,
            balance -> BigInt,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        ledger_entries (id) {
            id -> BigInt,
            wallet_id -> BigInt,
            seq -> BigInt,
            amount -> BigInt,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }
}

/// The replica tables (in another database).
mod replica {
    diesel::table! {
        replica_wallets (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            seq -> Nullable<BigInt>,
            balance -> Nullable<BigInt>,
        }
    }

    diesel::table! {
        replica_ledger_entries (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            wallet_id -> Nullable<BigInt>,
            seq -> Nullable<BigInt>,
            amount -> Nullable<BigInt>,
        }
    }
}

use self::replica::{replica_ledger_entries, replica_wallets};

const SOURCE_SCHEMA: &str = "
    CREATE TABLE wallets (
        id BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL DEFAULT 0,
        balance BIGINT NOT NULL DEFAULT 0,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE ledger_entries (
        id BIGSERIAL PRIMARY KEY,
        wallet_id BIGINT NOT NULL REFERENCES wallets,
        seq BIGINT NOT NULL,
        amount BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        UNIQUE (wallet_id, seq)
    );
";

const REPLICA_SCHEMA: &str = "
    CREATE TABLE replica_wallets (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        seq BIGINT,
        balance BIGINT
    );
    CREATE TABLE replica_ledger_entries (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        wallet_id BIGINT,
        seq BIGINT,
        amount BIGINT
    );
";

/// A wallet: updated by every transaction of the load.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = wallets)]
#[publish(topic = Wallets, partition_key = "id")]
pub struct Wallet {
    /// Id, also the partition key.
    pub id: i64,
    /// How many times it was updated.
    pub seq: i64,
    /// Sum of its ledger entries.
    pub balance: i64,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at (`clock_timestamp()` of the update, so later updates are later).
    pub updated_at: DateTime<Utc>,
}

/// A ledger entry: only ever created.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = ledger_entries)]
#[publish(topic = Wallets, partition_key = "wallet_id")]
pub struct LedgerEntry {
    /// Id.
    pub id: i64,
    /// Its wallet, the partition key.
    pub wallet_id: i64,
    /// The wallet's `seq` after the update written with it.
    pub seq: i64,
    /// Amount.
    pub amount: i64,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// Replica of [`Wallet`].
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = replica_wallets)]
#[consume(topic = "faults_wallets", model = "Wallet")]
pub struct ReplicatedWallet {
    /// The source's id.
    pub synced_id: i64,
    /// The source's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The source's `updated_at`: older states are ignored.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// Seq.
    pub seq: Option<i64>,
    /// Balance.
    pub balance: Option<i64>,
}

/// Replica of [`LedgerEntry`].
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = replica_ledger_entries)]
#[consume(topic = "faults_wallets", model = "LedgerEntry")]
pub struct ReplicatedLedgerEntry {
    /// The source's id.
    pub synced_id: i64,
    /// The source's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The source's `updated_at`.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// Wallet.
    pub wallet_id: Option<i64>,
    /// Seq.
    pub seq: Option<i64>,
    /// Amount.
    pub amount: Option<i64>,
}

/// What [`acknowledge`] reads of a ledger entry.
#[derive(Debug, serde::Deserialize)]
struct EntryIn {
    synced_id: i64,
    wallet_id: i64,
}

/// Replies `ledger_entry.acknowledged` for every ledger-entry message the replicating service
/// consumes, inside the batch transaction: exactly one reply per consumed message must be in
/// the replica database's outbox at the end, however often consumers were killed.
#[dionysus::consume(topic = "faults_wallets", event = "ledger_entry_created", in_transaction)]
async fn acknowledge(_ctx: &mut dionysus::Context<'_>, entry: EntryIn) -> dionysus::Result<dionysus::Reply> {
    Ok(dionysus::Reply::event(
        "ledger_entry.acknowledged",
        &json!({"id": entry.synced_id, "wallet_id": entry.wallet_id}),
    )
    .on("faults_acks")
    .key(format!("LedgerEntry:{}", entry.synced_id)))
}

#[derive(Debug, clap::Parser)]
#[command(name = "faults-app")]
enum Own {
    /// Migrate the source database, create its tables and wallets 1..=KEYS.
    PrepareSource {
        /// Wallets (partition keys).
        #[arg(long)]
        keys: i64,
    },
    /// Migrate the replica database and create the replica tables.
    PrepareReplica,
    /// Write transactions at a bounded rate for a bounded time.
    Load {
        /// Wallets to spread the transactions over.
        #[arg(long)]
        keys: i64,
        /// Transactions a second.
        #[arg(long)]
        rate: u32,
        /// How long to write, in seconds.
        #[arg(long)]
        seconds: f64,
        /// Connections writing concurrently (each owns the wallets `id % connections`).
        #[arg(long, default_value_t = 4)]
        connections: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    exit_with_the_suite();
    let own = matches!(std::env::args().nth(1).as_deref(), Some("prepare-source" | "prepare-replica" | "load"));
    if !own {
        return dionysus::cli::run().await;
    }
    let command = <Own as clap::Parser>::parse();
    match run(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// With `FAULTS_PARENT_PID` set (by the suite), exits at once when that process is gone, so
/// a suite that is killed leaves no relay or consumer running.
fn exit_with_the_suite() {
    let Some(parent) = std::env::var("FAULTS_PARENT_PID").ok().and_then(|pid| pid.parse::<u32>().ok()) else {
        return;
    };
    std::thread::spawn(move || loop {
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(500));
    });
}

fn database_url() -> anyhow::Result<String> {
    std::env::var("DATABASE_URL").context("DATABASE_URL is not set")
}

async fn run(command: Own) -> anyhow::Result<()> {
    let url = database_url()?;
    match command {
        Own::PrepareSource { keys } => {
            dionysus::migrate(&url).await?;
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(SOURCE_SCHEMA).await.context("creating the source tables")?;
            conn.transaction::<_, anyhow::Error, _>(async move |tx| {
                let created: Vec<Wallet> = diesel::insert_into(wallets::table)
                    .values((1..=keys).map(|id| wallets::id.eq(id)).collect::<Vec<_>>())
                    .returning(Wallet::as_returning())
                    .get_results(tx)
                    .await?;
                dionysus::outbox::Outbox::global()?.created_all(tx, &created).await?;
                Ok(())
            })
            .await?;
            println!("prepared the source: {keys} wallet(s)");
        }
        Own::PrepareReplica => {
            dionysus::migrate(&url).await?;
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(REPLICA_SCHEMA).await.context("creating the replica tables")?;
            println!("prepared the replica");
        }
        Own::Load { keys, rate, seconds, connections } => load(&url, keys, rate, seconds, connections).await?,
    }
    Ok(())
}

/// Writes `rate` transactions a second for `seconds` from `connections` connections; a
/// connection that fails (e.g. PostgreSQL restarting) reconnects and writes on. Ticks that
/// find every connection busy are dropped, so the rate is bounded.
async fn load(url: &str, keys: i64, rate: u32, seconds: f64, connections: i64) -> anyhow::Result<()> {
    let committed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut writers = tokio::task::JoinSet::new();
    for lane in 0..connections.max(1) {
        let (send, mut receive) = tokio::sync::mpsc::channel::<i64>(8);
        senders.push(send);
        let (url, committed, failed) = (url.to_owned(), committed.clone(), failed.clone());
        writers.spawn(async move {
            let mut conn: Option<AsyncPgConnection> = None;
            while let Some(wallet) = receive.recv().await {
                loop {
                    let Some(connection) = conn.as_mut() else {
                        match AsyncPgConnection::establish(&url).await {
                            Ok(connection) => conn = Some(connection),
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                        continue;
                    };
                    match write(connection, wallet, lane).await {
                        Ok(()) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(wallet, "transaction failed, retrying on a new connection: {error}");
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
    }
    let lanes = i64::try_from(senders.len()).unwrap_or(1);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    while tokio::time::Instant::now() < end {
        ticks.tick().await;
        let wallet = rand::random_range(1..=keys);
        let lane = usize::try_from(wallet % lanes).unwrap_or(0);
        if senders[lane].try_send(wallet).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(senders);
    while writers.join_next().await.is_some() {}
    println!(
        "load done: {} committed, {} failed attempt(s) retried, {} tick(s) dropped while every connection was busy",
        AtomicU64::load(&committed, Ordering::Relaxed),
        AtomicU64::load(&failed, Ordering::Relaxed),
        AtomicU64::load(&dropped, Ordering::Relaxed)
    );
    Ok(())
}

/// One transaction: the wallet's next `seq` and a ledger entry carrying it, with their outbox
/// rows. `updated_at` is the clock when the row lock is held, so a later update is later.
async fn write(conn: &mut AsyncPgConnection, wallet: i64, lane: i64) -> anyhow::Result<()> {
    let amount = 1 + lane;
    conn.transaction::<_, anyhow::Error, _>(async move |tx| {
        let now = diesel::dsl::sql::<diesel::sql_types::Timestamptz>("clock_timestamp()");
        let after: Wallet = diesel::update(wallets::table.find(wallet))
            .set((
                wallets::seq.eq(wallets::seq + 1),
                wallets::balance.eq(wallets::balance + amount),
                wallets::updated_at.eq(now),
            ))
            .returning(Wallet::as_returning())
            .get_result(tx)
            .await?;
        let changeset = dionysus::Changeset::new().with("seq", json!(after.seq - 1), json!(after.seq)).with(
            "balance",
            json!(after.balance - amount),
            json!(after.balance),
        );
        dionysus::outbox::updated(tx, &after, &changeset).await?;
        let entry: LedgerEntry = diesel::insert_into(ledger_entries::table)
            .values((
                ledger_entries::wallet_id.eq(wallet),
                ledger_entries::seq.eq(after.seq),
                ledger_entries::amount.eq(amount),
            ))
            .returning(LedgerEntry::as_returning())
            .get_result(tx)
            .await?;
        dionysus::outbox::created(tx, &entry).await?;
        Ok(())
    })
    .await
}
