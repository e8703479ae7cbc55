//! One scenario: a fresh broker, source and replica databases, the relay and consumer
//! processes, the writer, the faults at their times, then convergence and the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Nullable, SmallInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::config::KafkaConfig;
use dionysus::kafka::TopicSpec;
use dionysus_tests::PrivateBroker;

use crate::check::{self, Analysis, Model, Seen, Written};
use crate::cluster::Cluster;
use crate::procs::{App, Launcher, Role};
use crate::topic;

const TOPIC: &str = "faults_wallets";
/// As declared by `Wallets` in `app.rs`.
const PARTITIONS: i32 = 6;
const DEAD_LETTERS: &str = "faults_dead_letters";
const GROUP: &str = "faults";
/// Wallets, i.e. partition keys.
pub const KEYS: i64 = 200;
/// Writer transactions a second (each writes two outbox rows).
pub const RATE: u32 = 100;
/// Longest wait for the replicas to match once the writer is done.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// Longest wait for the consumer group to form before the load starts.
const GROUP_WITHIN: Duration = Duration::from_secs(30);
/// How often the runner checks processes and databases.
const POLL: Duration = Duration::from_millis(100);
/// How often, while a killed consumer's partitions are watched.
const WATCH_POLL: Duration = Duration::from_millis(20);
/// A killed relay is started again this much later, as a supervisor would.
const RESTART_AFTER: f64 = 1.0;

/// A fault, at a time of the load window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// kill -9 of relay n (started again a second later).
    KillRelay(usize),
    /// SIGTERM of relay n (started again two seconds later).
    StopRelay(usize),
    /// kill -9 of consumer n, started again this many seconds later.
    KillConsumer(usize, f64),
    /// The broker is stopped (SIGSTOP) for this many seconds, then continued.
    PauseBroker(f64),
    /// PostgreSQL crashes and restarts (`pg_ctl restart -m immediate`).
    RestartPostgres,
    /// Poison messages straight onto the topic, on every partition.
    Poison,
    // Follow-ups the runner schedules itself.
    StartRelay(usize),
    StartConsumer(usize),
    ResumeBroker,
}

/// What a scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: &'static str,
    pub relays: usize,
    pub consumers: usize,
    pub load_seconds: f64,
    /// Seconds after the writer started, and what happens then.
    pub faults: Vec<(f64, Fault)>,
    /// Whether a killed consumer's recovery is held to the 10 s bound here (single faults).
    pub measure: bool,
}

/// How long something took to work again after a fault.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub what: &'static str,
    /// `None`: not within the scenario.
    pub took: Option<Duration>,
}

/// Everything measured in one scenario.
#[derive(Debug, Default)]
pub struct Outcome {
    pub name: &'static str,
    /// Events written (wallets created and updated, ledger entries created).
    pub written: u64,
    pub analysis: Analysis,
    pub checksums_equal: bool,
    pub converged: Option<Duration>,
    pub relay_rss_kib: u64,
    pub consumer_rss_kib: u64,
    pub recoveries: Vec<Recovery>,
    pub poison: usize,
    pub poison_not_dead_lettered: usize,
    /// Ledger entries in the replica without their reply in the replica's outbox.
    pub replies_missing: i64,
    /// Replies written more than once for one consumed message.
    pub replies_duplicated: i64,
    /// Anything else that went wrong (unexpected exits, a writer that failed, …).
    pub problems: Vec<String>,
    pub took: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.analysis.lost == 0
            && self.analysis.violations == 0
            && self.checksums_equal
            && self.converged.is_some()
            && self.poison_not_dead_lettered == 0
            && self.replies_missing == 0
            && self.replies_duplicated == 0
    }
}

/// A relay or consumer slot: the process now in it, and how many times it was started.
struct Slot {
    letter: char,
    app: Option<App>,
    starts: usize,
}

struct Run<'a> {
    plan: &'a Plan,
    cluster: &'a Cluster,
    launcher: Launcher,
    src: String,
    dst: String,
    kafka: KafkaConfig,
    relays: Vec<Slot>,
    consumers: Vec<Slot>,
    finished: Vec<App>,
    started: Instant,
    monitor: Monitor,
    poison: BTreeSet<(i32, i64)>,
    outcome: Outcome,
}

pub async fn run(plan: &Plan, cluster: &Cluster, index: usize, dir: &Path) -> Outcome {
    let begun = Instant::now();
    let broker = PrivateBroker::start().await;
    let kafka = broker.kafka_config();
    dionysus::kafka::create_topics(
        &kafka,
        &[
            TopicSpec { name: TOPIC.to_owned(), partitions: PARTITIONS, replication_factor: 1 },
            TopicSpec { name: DEAD_LETTERS.to_owned(), partitions: 1, replication_factor: 1 },
            TopicSpec { name: "faults_acks".to_owned(), partitions: 1, replication_factor: 1 },
        ],
    )
    .await
    .expect("creating the topics");
    let src = cluster.create_database(&format!("faults_source_{index}")).await;
    let dst = cluster.create_database(&format!("faults_replica_{index}")).await;
    let dir = dir.join(plan.name.replace(' ', "_"));
    std::fs::create_dir_all(&dir).expect("a log directory");
    let launcher = Launcher {
        dir,
        env: vec![
            ("DIONYSUS_SEED_BROKER".to_owned(), broker.address.clone()),
            ("DIONYSUS_CONSUMER_GROUP_ID".to_owned(), GROUP.to_owned()),
            ("DIONYSUS_DEAD_LETTER_TOPIC".to_owned(), DEAD_LETTERS.to_owned()),
        ],
    };
    let mut run = Run {
        plan,
        cluster,
        monitor: Monitor::new(&src, &dst),
        launcher,
        src,
        dst,
        kafka,
        relays: (0..plan.relays).map(|n| Slot { letter: letter(n), app: None, starts: 0 }).collect(),
        consumers: (0..plan.consumers).map(|n| Slot { letter: letter(n), app: None, starts: 0 }).collect(),
        finished: Vec::new(),
        started: Instant::now(),
        poison: BTreeSet::new(),
        outcome: Outcome { name: plan.name, ..Outcome::default() },
    };
    run.prepare().await;
    if run.outcome.problems.is_empty() {
        run.load_and_faults(&broker).await;
        run.converge().await;
        run.check().await;
    }
    run.stop_all();
    run.outcome.took = begun.elapsed();
    run.outcome
}

fn letter(n: usize) -> char {
    char::from(b'a' + u8::try_from(n % 26).unwrap_or(0))
}

impl Run<'_> {
    async fn prepare(&mut self) {
        let keys = KEYS.to_string();
        for (name, url, args) in [
            ("prepare-source", self.src.clone(), vec!["prepare-source", "--keys", keys.as_str()]),
            ("prepare-replica", self.dst.clone(), vec!["prepare-replica"]),
        ] {
            let mut app = self.launcher.spawn(name, Role::Writer, &args, &[("DATABASE_URL", url)]);
            app.reap(Duration::from_secs(60));
            if !app.poll().is_some_and(|status| status.success()) {
                self.outcome.problems.push(format!("{name} failed:\n{}", app.tail(20)));
            }
        }
    }

    fn start_relay(&mut self, n: usize) {
        let slot = &mut self.relays[n];
        slot.starts += 1;
        let name = if slot.starts == 1 {
            format!("relay-{}", slot.letter)
        } else {
            format!("relay-{}#{}", slot.letter, slot.starts)
        };
        let env = [("DATABASE_URL", self.src.clone()), ("HOSTNAME", format!("relay-{}", slot.letter))];
        slot.app = Some(self.launcher.spawn(&name, Role::Relay, &["relay"], &env));
    }

    fn start_consumer(&mut self, n: usize) {
        let slot = &mut self.consumers[n];
        slot.starts += 1;
        let name = if slot.starts == 1 {
            format!("consumer-{}", slot.letter)
        } else {
            format!("consumer-{}#{}", slot.letter, slot.starts)
        };
        slot.app = Some(self.launcher.spawn(
            &name,
            Role::Consumer,
            &["consume", "--dead-letter-unknown-models"],
            &[("DATABASE_URL", self.dst.clone())],
        ));
    }

    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    async fn load_and_faults(&mut self, broker: &PrivateBroker) {
        for n in 0..self.plan.relays {
            self.start_relay(n);
        }
        for n in 0..self.plan.consumers {
            self.start_consumer(n);
        }
        // The faults' times count from a formed group: a consumer killed while the group is
        // still forming (the test broker holds every join for half the session timeout) would time
        // the forming too, not the takeover.
        self.await_group().await;
        let (keys, rate, seconds) = (KEYS.to_string(), RATE.to_string(), self.plan.load_seconds.to_string());
        let mut writer = self.launcher.spawn(
            "writer",
            Role::Writer,
            &["load", "--keys", &keys, "--rate", &rate, "--seconds", &seconds],
            &[("DATABASE_URL", self.src.clone())],
        );
        self.started = Instant::now();
        let mut timeline: Vec<(f64, Fault)> = self.plan.faults.clone();
        loop {
            timeline.sort_by(|a, b| b.0.total_cmp(&a.0));
            while timeline.last().is_some_and(|(at, _)| *at <= self.at()) {
                if let Some((_, fault)) = timeline.pop() {
                    let follow_up = self.inject(fault, broker).await;
                    timeline.extend(follow_up.map(|(delay, fault)| (self.at() + delay, fault)));
                }
            }
            self.tick().await;
            if let Some(status) = writer.poll() {
                if timeline.is_empty() {
                    if !status.success() {
                        self.outcome.problems.push(format!("the writer failed ({status}):\n{}", writer.tail(20)));
                    }
                    break;
                }
            }
            // While a killed consumer's partitions are watched, the stored offsets are read
            // often, so the measured takeover is not longer than the real one by a poll period.
            tokio::time::sleep(if self.monitor.watching_partitions() { WATCH_POLL } else { POLL }).await;
        }
        if let Some(line) = std::fs::read_to_string(&writer.log)
            .ok()
            .and_then(|log| log.lines().rev().find(|line| line.starts_with("load done")).map(str::to_owned))
        {
            crate::progress(&format!("  {}: {line}", self.plan.name));
        }
        self.finished.push(writer);
    }

    /// Waits until the consumers hold every partition between them: each one's last
    /// rebalance event in its log is an assignment, and the assignments add up to
    /// [`PARTITIONS`]. After [`GROUP_WITHIN`] without that (or with consumer logs below
    /// `info`), the scenario goes on, saying so.
    async fn await_group(&mut self) {
        if self.consumers.is_empty() {
            return;
        }
        let deadline = Instant::now() + GROUP_WITHIN;
        loop {
            let held: Option<i32> = self
                .consumers
                .iter()
                .filter_map(|slot| slot.app.as_ref())
                .map(|app| assigned_partitions(&std::fs::read_to_string(&app.log).unwrap_or_default()))
                .sum();
            if held == Some(PARTITIONS) {
                return;
            }
            if Instant::now() >= deadline {
                crate::progress(&format!(
                    "  {}: the consumers' logs do not show all {PARTITIONS} partitions held {GROUP_WITHIN:?} after \
                     their start; the load starts anyway",
                    self.plan.name
                ));
                return;
            }
            self.tick().await;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Injects a fault; returns the follow-up to schedule (seconds from now).
    async fn inject(&mut self, fault: Fault, broker: &PrivateBroker) -> Option<(f64, Fault)> {
        crate::progress(&format!("  {:>5.1} s  {}: {fault:?}", self.at(), self.plan.name));
        match fault {
            Fault::KillRelay(n) | Fault::StopRelay(n) => {
                let mut app = self.relays[n].app.take()?;
                self.monitor.poll_leases().await;
                let dead = format!("relay-{}-{}-", self.relays[n].letter, app.pid());
                let buckets = self.monitor.buckets_of(&dead);
                let graceful = matches!(fault, Fault::StopRelay(_));
                let since = Instant::now();
                if graceful {
                    app.signal_terminate();
                } else {
                    app.kill();
                }
                self.monitor.watches.push(Watch::Buckets {
                    what: if graceful {
                        "stopped relay's buckets taken over"
                    } else {
                        "killed relay's buckets taken over"
                    },
                    since,
                    dead,
                    buckets,
                    done: None,
                });
                self.finished.push(app);
                Some(if graceful { (2.0, Fault::StartRelay(n)) } else { (RESTART_AFTER, Fault::StartRelay(n)) })
            }
            Fault::KillConsumer(n, restart_after) => {
                let mut app = self.consumers[n].app.take()?;
                app.kill();
                let since = Instant::now();
                // What it committed before it died is the baseline; any move after is the others'.
                self.monitor.poll_offsets().await;
                self.monitor.moved.clear();
                self.monitor.watches.push(Watch::Partitions { since, done: None });
                self.finished.push(app);
                Some((restart_after, Fault::StartConsumer(n)))
            }
            Fault::StartRelay(n) => {
                self.start_relay(n);
                None
            }
            Fault::StartConsumer(n) => {
                self.start_consumer(n);
                None
            }
            Fault::PauseBroker(seconds) => {
                broker.pause();
                Some((seconds, Fault::ResumeBroker))
            }
            Fault::ResumeBroker => {
                broker.resume();
                None
            }
            Fault::RestartPostgres => {
                let cluster = self.cluster;
                // pg_ctl returns once the server is back; the processes keep running meanwhile.
                tokio::task::block_in_place(|| cluster.restart_immediately());
                self.monitor.reconnect();
                None
            }
            Fault::Poison => {
                let landed = topic::produce_poison(&self.kafka, TOPIC, PARTITIONS).await;
                self.poison.extend(landed);
                None
            }
        }
    }

    /// One monitoring step: memory, unexpected exits, offsets and leases.
    async fn tick(&mut self) {
        for slot in self.relays.iter_mut().chain(self.consumers.iter_mut()) {
            if let Some(app) = slot.app.as_mut() {
                if let Some(status) = app.poll() {
                    self.outcome.problems.push(format!("{} exited on its own ({status}):\n{}", app.name, app.tail(30)));
                    if let Some(app) = slot.app.take() {
                        self.finished.push(app);
                    }
                }
            }
        }
        self.monitor.tick().await;
    }

    async fn converge(&mut self) {
        let writer_done = Instant::now();
        let deadline = writer_done + CONVERGE_WITHIN;
        loop {
            self.tick().await;
            if self.monitor.watches_done() && self.monitor.in_sync().await.unwrap_or(false) {
                self.outcome.converged = Some(writer_done.elapsed());
                return;
            }
            if Instant::now() >= deadline {
                let state = self.monitor.describe().await;
                self.outcome
                    .problems
                    .push(format!("not in sync {CONVERGE_WITHIN:?} after the writer finished: {state}"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&mut self) {
        let written = match self.monitor.written().await {
            Ok(written) => written,
            Err(error) => {
                self.outcome.problems.push(format!("reading what was written: {error}"));
                return;
            }
        };
        self.outcome.written = written.events();
        self.outcome.checksums_equal = self.monitor.in_sync().await.unwrap_or(false);
        match self.monitor.replies().await {
            Ok((missing, duplicated)) => {
                self.outcome.replies_missing = missing;
                self.outcome.replies_duplicated = duplicated;
            }
            Err(error) => self.outcome.problems.push(format!("counting the replies: {error}")),
        }
        let kafka = self.kafka.clone();
        let (messages, dead_letters) = tokio::task::spawn_blocking(move || {
            (topic::read_all(&kafka, TOPIC), topic::read_all(&kafka, DEAD_LETTERS))
        })
        .await
        .expect("reading the topics back");
        let dump: String = messages
            .values()
            .flatten()
            .map(|read| {
                let value = read.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                format!("{}\t{}\t{value}\n", read.partition, read.offset)
            })
            .collect();
        let _ = std::fs::write(self.launcher.dir.join("topic.tsv"), dump);
        let mut seen = Vec::new();
        for read in messages.values().flatten() {
            if self.poison.contains(&(read.partition, read.offset)) {
                continue;
            }
            match read.value.as_deref().map(check::records) {
                Some(Ok(records)) => seen.extend(records.into_iter().map(|(model, id, key, seq)| Seen {
                    partition: read.partition,
                    offset: read.offset,
                    model,
                    id,
                    key,
                    seq,
                })),
                Some(Err(error)) => self.outcome.problems.push(format!(
                    "partition {} offset {}: a message the relay did not write? {error}",
                    read.partition, read.offset
                )),
                None => self
                    .outcome
                    .problems
                    .push(format!("partition {} offset {}: a null value", read.partition, read.offset)),
            }
        }
        self.outcome.analysis = check::analyse(&seen, &written);
        let dead: BTreeSet<(i32, i64)> = dead_letters.values().flatten().filter_map(|read| read.source).collect();
        self.outcome.poison = self.poison.len();
        self.outcome.poison_not_dead_lettered = self.poison.difference(&dead).count();
        let wallets_seen = seen.iter().filter(|s| s.model == Model::Wallet).count();
        if wallets_seen == 0 {
            self.outcome.problems.push("no wallet message on the topic".to_owned());
        }
    }

    fn stop_all(&mut self) {
        let mut running: Vec<App> = Vec::new();
        for slot in self.relays.iter_mut().chain(self.consumers.iter_mut()) {
            if let Some(mut app) = slot.app.take() {
                app.signal_terminate();
                running.push(app);
            }
        }
        for app in &mut running {
            app.reap(Duration::from_secs(20));
        }
        self.finished.extend(running);
        for app in &self.finished {
            match app.role {
                Role::Relay => self.outcome.relay_rss_kib = self.outcome.relay_rss_kib.max(app.peak_rss_kib),
                Role::Consumer => self.outcome.consumer_rss_kib = self.outcome.consumer_rss_kib.max(app.peak_rss_kib),
                Role::Writer => {}
            }
        }
        self.outcome.recoveries = self.monitor.recoveries();
        if !self.outcome.problems.is_empty() {
            for app in self.finished.iter().filter(|app| app.role != Role::Writer) {
                let tail = app.tail(8);
                if !tail.is_empty() {
                    self.outcome.problems.push(format!("last lines of {} ({}):\n{tail}", app.name, app.log.display()));
                }
            }
        }
    }
}

/// How many partitions a consumer holds by its log: the count of its last `partitions
/// assigned` line, or `None` when it has none or a revocation came after it.
fn assigned_partitions(log: &str) -> Option<i32> {
    let last =
        log.lines().rev().find(|line| line.contains("partitions assigned") || line.contains("partitions revoked"))?;
    if !last.contains("partitions assigned") {
        return None;
    }
    let (_, count) = last.split_once("partitions=")?;
    count.split_whitespace().next()?.parse().ok()
}

/// Something the monitor waits for after a fault.
enum Watch {
    /// Every bucket `dead` held is owned by another worker.
    Buckets { what: &'static str, since: Instant, dead: String, buckets: Vec<i16>, done: Option<Duration> },
    /// Every partition's stored offset moved again.
    Partitions { since: Instant, done: Option<Duration> },
}

/// Reads the databases while the scenario runs: stored offsets, leases, sync state.
struct Monitor {
    src_url: String,
    dst_url: String,
    src: Option<AsyncPgConnection>,
    dst: Option<AsyncPgConnection>,
    offsets: BTreeMap<i32, i64>,
    /// Partitions whose stored offset moved after a watched kill.
    moved: BTreeSet<i32>,
    leases: BTreeMap<i16, Option<String>>,
    watches: Vec<Watch>,
}

#[derive(diesel::QueryableByName)]
struct Offset {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

#[derive(diesel::QueryableByName)]
struct Lease {
    #[diesel(sql_type = SmallInt)]
    bucket: i16,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct Sum {
    #[diesel(sql_type = Text)]
    sum: String,
}

#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    parked: i64,
}

#[derive(diesel::QueryableByName)]
struct Pair {
    #[diesel(sql_type = BigInt)]
    a: i64,
    #[diesel(sql_type = BigInt)]
    b: i64,
    #[diesel(sql_type = BigInt)]
    c: i64,
}

/// md5 of every compared column, the same text on both sides. Times travel with millisecond
/// precision (as dionysus-rb writes them), so they are compared in milliseconds.
const SOURCE_SUM: &str = "SELECT
    (SELECT md5(coalesce(string_agg(format('%s:%s:%s:%s', id, seq, balance, (extract(epoch FROM date_trunc('milliseconds', updated_at)) * 1000)::bigint), ',' ORDER BY id), '')) FROM wallets)
    || '/' || (SELECT md5(coalesce(string_agg(format('%s:%s:%s:%s', id, wallet_id, seq, amount), ',' ORDER BY id), '')) FROM ledger_entries) AS sum";
const REPLICA_SUM: &str = "SELECT
    (SELECT md5(coalesce(string_agg(format('%s:%s:%s:%s', synced_id, seq, balance, (extract(epoch FROM date_trunc('milliseconds', synced_updated_at)) * 1000)::bigint), ',' ORDER BY synced_id), '')) FROM replica_wallets)
    || '/' || (SELECT md5(coalesce(string_agg(format('%s:%s:%s:%s', synced_id, wallet_id, seq, amount), ',' ORDER BY synced_id), '')) FROM replica_ledger_entries) AS sum";

impl Monitor {
    fn new(src: &str, dst: &str) -> Monitor {
        Monitor {
            src_url: src.to_owned(),
            dst_url: dst.to_owned(),
            src: None,
            dst: None,
            offsets: BTreeMap::new(),
            moved: BTreeSet::new(),
            leases: BTreeMap::new(),
            watches: Vec::new(),
        }
    }

    fn reconnect(&mut self) {
        self.src = None;
        self.dst = None;
    }

    async fn connection<'a>(slot: &'a mut Option<AsyncPgConnection>, url: &str) -> Option<&'a mut AsyncPgConnection> {
        if slot.is_none() {
            *slot = AsyncPgConnection::establish(url).await.ok();
        }
        slot.as_mut()
    }

    async fn src(&mut self) -> Option<&mut AsyncPgConnection> {
        Self::connection(&mut self.src, &self.src_url).await
    }

    async fn dst(&mut self) -> Option<&mut AsyncPgConnection> {
        Self::connection(&mut self.dst, &self.dst_url).await
    }

    async fn tick(&mut self) {
        if self.watches.iter().any(|w| matches!(w, Watch::Buckets { done: None, .. })) {
            self.poll_leases().await;
        }
        if self.watches.iter().any(|w| matches!(w, Watch::Partitions { done: None, .. })) {
            self.poll_offsets().await;
        }
    }

    async fn poll_leases(&mut self) {
        let Some(conn) = self.src().await else { return };
        match diesel::sql_query("SELECT bucket, owner FROM dionysus_relay_leases").load::<Lease>(conn).await {
            Ok(leases) => self.leases = leases.into_iter().map(|l| (l.bucket, l.owner)).collect(),
            Err(_) => {
                self.src = None;
                return;
            }
        }
        for watch in &mut self.watches {
            if let Watch::Buckets { since, dead, buckets, done: done @ None, .. } = watch {
                let moved = buckets.iter().all(|bucket| {
                    self.leases
                        .get(bucket)
                        .and_then(Option::as_deref)
                        .is_some_and(|owner| !owner.starts_with(dead.as_str()))
                });
                if moved {
                    *done = Some(since.elapsed());
                }
            }
        }
    }

    fn buckets_of(&self, prefix: &str) -> Vec<i16> {
        self.leases
            .iter()
            .filter(|(_, owner)| owner.as_deref().is_some_and(|owner| owner.starts_with(prefix)))
            .map(|(bucket, _)| *bucket)
            .collect()
    }

    async fn poll_offsets(&mut self) {
        let Some(conn) = self.dst().await else { return };
        let query = format!(
            "SELECT partition, next_offset FROM dionysus_consumer_offsets WHERE group_id = '{GROUP}' AND topic = '{TOPIC}'"
        );
        let offsets: Vec<Offset> = match diesel::sql_query(query).load(conn).await {
            Ok(offsets) => offsets,
            Err(_) => {
                self.dst = None;
                return;
            }
        };
        let watching = self.watching_partitions();
        for offset in offsets {
            let previous = self.offsets.insert(offset.partition, offset.next_offset);
            if watching && previous.is_some_and(|previous| previous != offset.next_offset) {
                self.moved.insert(offset.partition);
            }
        }
        for watch in &mut self.watches {
            if let Watch::Partitions { since, done: done @ None } = watch {
                if (0..PARTITIONS).all(|partition| self.moved.contains(&partition)) {
                    *done = Some(since.elapsed());
                }
            }
        }
    }

    /// Whether a killed consumer's partitions are still awaited.
    fn watching_partitions(&self) -> bool {
        self.watches.iter().any(|watch| matches!(watch, Watch::Partitions { done: None, .. }))
    }

    fn watches_done(&self) -> bool {
        self.watches.iter().all(|watch| match watch {
            Watch::Buckets { done, .. } | Watch::Partitions { done, .. } => done.is_some(),
        })
    }

    fn recoveries(&self) -> Vec<super::scenario::Recovery> {
        self.watches
            .iter()
            .map(|watch| match watch {
                Watch::Buckets { what, done, .. } => Recovery { what, took: *done },
                Watch::Partitions { done, .. } => {
                    Recovery { what: "killed consumer's partitions consumed again", took: *done }
                }
            })
            .collect()
    }

    /// Whether everything is published and the replicas equal the source.
    async fn in_sync(&mut self) -> Result<bool, diesel::result::Error> {
        let Some(src) = self.src().await else { return Ok(false) };
        let backlog: Backlog = match diesel::sql_query(
            "SELECT count(*) FILTER (WHERE failed_at IS NULL) AS pending, count(*) FILTER (WHERE failed_at IS NOT NULL) AS parked \
             FROM dionysus_outbox WHERE published_at IS NULL",
        )
        .get_result(src)
        .await
        {
            Ok(backlog) => backlog,
            Err(error) => {
                self.src = None;
                return Err(error);
            }
        };
        if backlog.pending > 0 {
            return Ok(false);
        }
        let source: Sum = diesel::sql_query(SOURCE_SUM).get_result(src).await?;
        let Some(dst) = self.dst().await else { return Ok(false) };
        let replica: Sum = match diesel::sql_query(REPLICA_SUM).get_result(dst).await {
            Ok(sum) => sum,
            Err(error) => {
                self.dst = None;
                return Err(error);
            }
        };
        Ok(backlog.parked == 0 && source.sum == replica.sum)
    }

    /// The backlog and row counts, for a report that it did not converge.
    async fn describe(&mut self) -> String {
        let mut parts = Vec::new();
        if let Some(src) = self.src().await {
            let query = "SELECT count(*) FILTER (WHERE published_at IS NULL AND failed_at IS NULL) AS a, \
                         count(*) FILTER (WHERE published_at IS NULL AND failed_at IS NOT NULL) AS b, \
                         count(*) FILTER (WHERE published_at IS NULL AND attempts > 0) AS c FROM dionysus_outbox";
            if let Ok(pair) = diesel::sql_query(query).get_result::<Pair>(src).await {
                parts.push(format!("outbox: {} pending, {} parked, {} retried", pair.a, pair.b, pair.c));
            }
        }
        if let Some(dst) = self.dst().await {
            let query = "SELECT (SELECT count(*) FROM replica_wallets) AS a, (SELECT count(*) FROM replica_ledger_entries) AS b, 0::bigint AS c";
            if let Ok(pair) = diesel::sql_query(query).get_result::<Pair>(dst).await {
                parts.push(format!("replica: {} wallets, {} ledger entries", pair.a, pair.b));
            }
        }
        let pending: Vec<String> = self
            .watches
            .iter()
            .filter_map(|watch| match watch {
                Watch::Buckets { what, done: None, .. } => Some((*what).to_owned()),
                Watch::Partitions { done: None, .. } => Some("killed consumer's partitions".to_owned()),
                _ => None,
            })
            .collect();
        if !pending.is_empty() {
            parts.push(format!("still waiting for: {}", pending.join(", ")));
        }
        parts.join("; ")
    }

    /// Replies in the replica's outbox: (ledger entries without one, replies written more than
    /// once for one consumed message). A ledger entry the relay published twice is consumed
    /// twice and replied to twice — at-least-once publishing — so duplicates are counted per
    /// cause (partition and offset, from the reply's correlation), not per entry.
    async fn replies(&mut self) -> Result<(i64, i64), String> {
        let dst = self.dst().await.ok_or("no connection to the replica")?;
        let query = "WITH replies AS (SELECT message_key, message::jsonb -> 'meta' -> 'cause' AS cause \
                                      FROM dionysus_outbox WHERE topic = 'faults_acks') \
             SELECT \
               (SELECT count(*) FROM replica_ledger_entries e WHERE NOT EXISTS \
                  (SELECT 1 FROM replies r WHERE r.message_key = 'LedgerEntry:' || e.synced_id)) AS a, \
               (SELECT count(*) - count(DISTINCT (cause ->> 'partition', cause ->> 'offset')) FROM replies) AS b, \
               (SELECT count(*) FROM replies WHERE cause ->> 'offset' IS NULL) AS c";
        let pair: Pair = diesel::sql_query(query).get_result(dst).await.map_err(|e| e.to_string())?;
        if pair.c > 0 {
            return Err(format!("{} repl(ies) without their cause's offset", pair.c));
        }
        Ok((pair.a, pair.b))
    }

    /// What the source holds.
    async fn written(&mut self) -> Result<Written, String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = BigInt)]
            key: i64,
            #[diesel(sql_type = BigInt)]
            seq: i64,
        }
        let conn = self.src().await.ok_or("no connection to the source")?;
        let wallets: Vec<Row> =
            diesel::sql_query("SELECT id, id AS key, seq FROM wallets").load(conn).await.map_err(|e| e.to_string())?;
        let ledger: Vec<Row> = diesel::sql_query("SELECT id, wallet_id AS key, seq FROM ledger_entries")
            .load(conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Written {
            wallets: wallets.into_iter().map(|row| (row.id, row.seq)).collect(),
            ledger: ledger.into_iter().map(|row| (row.id, (row.key, row.seq))).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    #[test]
    fn a_consumer_holds_what_its_last_assignment_says() {
        let log = "2026-12-03T12:43:28.3Z  INFO dionysus::consumer::runtime: partitions assigned partitions=6\n\
                   2026-12-03T12:43:29.1Z  INFO dionysus::consumer::runtime: partitions revoked partitions=6\n\
                   2026-12-03T12:43:32.2Z  INFO dionysus::consumer::runtime: partitions assigned partitions=3\n\
                   2026-12-03T12:43:32.4Z  INFO dionysus.consume.batch{partition=1}: batch committed applied=4\n";
        assert_eq!(assigned_partitions(log), Some(3));
    }

    #[test]
    fn a_consumer_revoked_last_or_not_yet_assigned_holds_nothing_known() {
        let revoked = "INFO dionysus::consumer::runtime: partitions assigned partitions=3\n\
                       INFO dionysus::consumer::runtime: partitions revoked partitions=3\n";
        assert_eq!(assigned_partitions(revoked), None);
        assert_eq!(assigned_partitions("consuming faults_wallets as group faults\n"), None);
    }
}
