//! Reinit: a consumer group replays its topics from the earliest offsets into its replica
//! tables (kaufmann_ex's `reinit_service`), to recover a service from a catastrophic failure
//! or rebuild its replicas after a substantial change.
//!
//! * **Targets.** At the start, the end of every partition the consumer reads is taken (its
//!   high watermark, [`Until::Now`]) or given ([`Until::Offsets`]); with where the partition
//!   starts (its low watermark) it is saved in `dionysus_reinit`. Then the group is reset to
//!   the earliest offsets, in `dionysus_consumer_offsets` and in Kafka, in that order (the
//!   stored offsets are what the consumer seeks to; the Kafka commit is for the tools).
//! * **Replay.** The consumer runs as usual ([`Consumer::run`]). A message below its
//!   partition's target is *replayed*: replica rows and handlers work as always (handlers see
//!   [`Context::replaying`](super::Context::replaying) and may skip side effects), but no
//!   reply, error event or cascade is written. Messages at or past the target are consumed
//!   normally, so handing over to normal consuming is seamless.
//! * **Interruptions.** The targets stay in the table. [`Consumer::run`] loads the targets of
//!   partitions not yet past them, so a consumer started after an interrupted reinit keeps
//!   suppressing replies up to the targets; a second [`Consumer::reinit`] resumes the
//!   unfinished one (no reset, the saved targets) instead of starting again.
//! * **Exclusion.** A reinit refuses to start while the group has members on the broker
//!   (another consumer of the group would keep its own position and publish replies).
//!
//! This module owns the targets (planning, storing, reading) and the reinit's driver; the
//! batch transaction that honours them is `apply`'s, reading Kafka is `runtime`'s.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, TransactionManager};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::apply::{Consumer, ConsumerError};
use crate::kafka::Logs;
use crate::telemetry::Report;

/// How long one request to the broker may take during a reinit's start.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the reinit reads the stored offsets to tell its progress.
const POLL: Duration = Duration::from_millis(500);
/// How often the progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a reinit stops replaying: `now` (the end of every partition when the reinit
/// starts) or explicit offsets, written `TOPIC:PARTITION:OFFSET,…` (the offset is the first
/// one consumed normally again, like a high watermark).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Until {
    /// The end offsets (high watermarks) of the partitions when the reinit starts.
    #[default]
    Now,
    /// These offsets by topic and partition; partitions not named replay up to their end
    /// offsets at the start.
    Offsets(BTreeMap<(String, i32), i64>),
}

/// A text that is not an [`Until`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not where a reinit stops: {problem}; use `now` or TOPIC:PARTITION:OFFSET[,TOPIC:PARTITION:OFFSET…], \
     e.g. v3_rentals:0:1200,v3_rentals:1:980"
)]
pub struct UntilError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FromStr for Until {
    type Err = UntilError;

    fn from_str(text: &str) -> Result<Until, UntilError> {
        let fail = |problem: String| UntilError { text: text.to_owned(), problem };
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("now") {
            return Ok(Until::Now);
        }
        if trimmed.is_empty() {
            return Err(fail("it is empty".to_owned()));
        }
        let mut offsets = BTreeMap::new();
        for item in trimmed.split(',').map(str::trim) {
            let mut parts = item.rsplitn(3, ':');
            let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(fail(format!("`{item}` is not TOPIC:PARTITION:OFFSET")));
            };
            if topic.is_empty() {
                return Err(fail(format!("`{item}` names no topic")));
            }
            let partition: i32 = partition
                .parse()
                .ok()
                .filter(|partition| *partition >= 0)
                .ok_or_else(|| fail(format!("the partition `{partition}` in `{item}` is not a number ≥ 0")))?;
            let offset: i64 = offset
                .parse()
                .ok()
                .filter(|offset| *offset >= 0)
                .ok_or_else(|| fail(format!("the offset `{offset}` in `{item}` is not a number ≥ 0")))?;
            if offsets.insert((topic.to_owned(), partition), offset).is_some() {
                return Err(fail(format!("{topic}:{partition} is named twice")));
            }
        }
        Ok(Until::Offsets(offsets))
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Until::Now => f.write_str("now"),
            Until::Offsets(offsets) => {
                for (index, ((topic, partition), offset)) in offsets.iter().enumerate() {
                    if index > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{topic}:{partition}:{offset}")?;
                }
                Ok(())
            }
        }
    }
}

/// One partition of a reinit: where its replay started and the first offset consumed
/// normally again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinitTarget {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The earliest offset when the reinit started (where the replay began).
    pub from: i64,
    /// The offset the replay runs to (exclusive).
    pub target: i64,
}

impl ReinitTarget {
    /// Messages of the partition the reinit replays.
    pub fn messages(&self) -> u64 {
        u64::try_from(self.target - self.from).unwrap_or(0)
    }

    /// Messages replayed when the partition's stored next offset is `stored` (`None`:
    /// nothing stored).
    fn done(&self, stored: Option<i64>) -> u64 {
        let position = stored.unwrap_or(self.from).clamp(self.from, self.target.max(self.from));
        u64::try_from(position - self.from).unwrap_or(0)
    }
}

/// What to do once every partition reached its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterReinit {
    /// Stop consuming and return (the default, as a release task does).
    #[default]
    Exit,
    /// Keep consuming normally until the shutdown token is cancelled.
    Consume,
}

/// Told how a reinit advances (the command line draws a progress bar from it).
pub trait ReinitProgress: Send + Sync {
    /// The replay starts (or resumes) with `total` messages to replay, `done` of them
    /// replayed already.
    fn started(&self, total: u64, done: u64) {
        let _ = (total, done);
    }

    /// `done` messages of the total are replayed now.
    fn advanced(&self, done: u64) {
        let _ = done;
    }

    /// Every partition reached its target.
    fn finished(&self) {}
}

/// No progress to tell.
impl ReinitProgress for () {}

/// What a reinit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinitReport {
    /// Whether it resumed an unfinished reinit instead of starting one.
    pub resumed: bool,
    /// Whether every partition reached its target (else it was stopped before).
    pub completed: bool,
    /// Messages the reinit replays in all (its targets).
    pub total: u64,
    /// Messages replayed by this call.
    pub replayed: u64,
    /// The partitions and their targets.
    pub targets: Vec<ReinitTarget>,
}

/// What a reinit was doing when it failed (in [`ReinitError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReinitStep {
    /// Reading the saved targets and the stored offsets.
    ReadTargets,
    /// Saving the targets and resetting the stored offsets.
    Reset,
    /// Reading the partitions and their earliest and end offsets.
    ReadOffsets,
    /// Committing the earliest offsets to Kafka.
    CommitOffsets,
}

impl fmt::Display for ReinitStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReinitStep::ReadTargets => "reading the reinit targets and stored offsets",
            ReinitStep::Reset => "saving the reinit targets and resetting the stored offsets",
            ReinitStep::ReadOffsets => "reading the partitions' earliest and end offsets",
            ReinitStep::CommitOffsets => "committing the earliest offsets to Kafka",
        })
    }
}

/// A reinit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReinitError {
    /// The group has members on the broker: a consumer of it is running.
    #[error(
        "a consumer of group `{group}` is running ({members} member(s) on the broker); stop every consumer of the \
         group before a reinit, or it would keep its own position and publish replies"
    )]
    GroupActive {
        /// The group.
        group: String,
        /// Its members.
        members: usize,
    },
    /// [`Until::Offsets`] names a partition the consumer does not read.
    #[error("the reinit's end names {topic}:{partition}, which the consumer does not read; it reads {known}")]
    UnknownPartition {
        /// The topic named.
        topic: String,
        /// The partition named.
        partition: i32,
        /// The partitions it reads, `topic:partition` separated by commas.
        known: String,
    },
    /// [`Until::Offsets`] names an offset outside what the partition holds.
    #[error("the reinit's end for {topic}:{partition} is {target}, outside the partition's offsets {low}..={high}")]
    OutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset given.
        target: i64,
        /// The partition's earliest offset.
        low: i64,
        /// The partition's end offset.
        high: i64,
    },
    /// A database statement failed.
    #[error("{step} (group {group})")]
    Database {
        /// What was being done.
        step: ReinitStep,
        /// The group.
        group: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The broker failed a request.
    #[error("{step} (group {group})")]
    Kafka {
        /// What was being done.
        step: ReinitStep,
        /// The group.
        group: String,
        /// rdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The consumer failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// The targets of a new reinit: for each partition `(topic, partition, low, high)`, the
/// given end or the end offset. Every partition `until` names must be one of them, its
/// offset within `low..=high`.
fn plan(partitions: &[(String, i32, i64, i64)], until: &Until) -> Result<Vec<ReinitTarget>, ReinitError> {
    let given = match until {
        Until::Now => None,
        Until::Offsets(offsets) => Some(offsets),
    };
    if let Some(offsets) = given {
        for (topic, partition) in offsets.keys() {
            if !partitions.iter().any(|(t, p, _, _)| t == topic && p == partition) {
                let known: Vec<String> = partitions.iter().map(|(t, p, _, _)| format!("{t}:{p}")).collect();
                return Err(ReinitError::UnknownPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    known: known.join(", "),
                });
            }
        }
    }
    partitions
        .iter()
        .map(|(topic, partition, low, high)| {
            let target = given.and_then(|offsets| offsets.get(&(topic.clone(), *partition)).copied()).unwrap_or(*high);
            if target < *low || target > *high {
                return Err(ReinitError::OutOfRange {
                    topic: topic.clone(),
                    partition: *partition,
                    target,
                    low: *low,
                    high: *high,
                });
            }
            Ok(ReinitTarget { topic: topic.clone(), partition: *partition, from: *low, target })
        })
        .collect()
}

#[derive(diesel::QueryableByName)]
struct TargetRow {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    from_offset: i64,
    #[diesel(sql_type = BigInt)]
    target_offset: i64,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

/// The saved targets of `group`'s last reinit, each with its partition's stored next
/// offset (`None`: nothing stored).
pub(crate) async fn saved_targets(
    conn: &mut AsyncPgConnection,
    group: &str,
) -> Result<Vec<(ReinitTarget, Option<i64>)>, diesel::result::Error> {
    let rows: Vec<TargetRow> = diesel::sql_query(
        "SELECT r.topic, r.partition, r.from_offset, r.target_offset, COALESCE(o.next_offset, -1) AS next_offset \
         FROM dionysus_reinit r LEFT JOIN dionysus_consumer_offsets o \
           ON o.group_id = r.group_id AND o.topic = r.topic AND o.partition = r.partition \
         WHERE r.group_id = $1 ORDER BY r.topic, r.partition",
    )
    .bind::<Text, _>(group)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let target = ReinitTarget {
                topic: row.topic,
                partition: row.partition,
                from: row.from_offset,
                target: row.target_offset,
            };
            (target, (row.next_offset >= 0).then_some(row.next_offset))
        })
        .collect())
}

/// The saved targets of `group` whose partition is not past them yet.
pub(crate) async fn unfinished_targets(
    conn: &mut AsyncPgConnection,
    group: &str,
) -> Result<Vec<ReinitTarget>, diesel::result::Error> {
    Ok(saved_targets(conn, group)
        .await?
        .into_iter()
        .filter(|(target, stored)| target.done(*stored) < target.messages())
        .map(|(target, _)| target)
        .collect())
}

/// Saves `targets` as `group`'s reinit (replacing an earlier one) and resets the group's
/// stored offsets of those partitions to where the replay starts, in one transaction.
async fn reset(
    conn: &mut AsyncPgConnection,
    group: &str,
    targets: &[ReinitTarget],
) -> Result<(), diesel::result::Error> {
    type Transactions = <AsyncPgConnection as AsyncConnection>::TransactionManager;
    Transactions::begin_transaction(conn).await?;
    let written = async {
        diesel::sql_query("DELETE FROM dionysus_reinit WHERE group_id = $1").bind::<Text, _>(group).execute(conn).await?;
        for target in targets {
            diesel::sql_query(
                "INSERT INTO dionysus_reinit (group_id, topic, partition, from_offset, target_offset) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind::<Text, _>(group)
            .bind::<Text, _>(&target.topic)
            .bind::<Integer, _>(target.partition)
            .bind::<BigInt, _>(target.from)
            .bind::<BigInt, _>(target.target)
            .execute(conn)
            .await?;
            diesel::sql_query(
                "INSERT INTO dionysus_consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            )
            .bind::<Text, _>(group)
            .bind::<Text, _>(&target.topic)
            .bind::<Integer, _>(target.partition)
            .bind::<BigInt, _>(target.from)
            .execute(conn)
            .await?;
        }
        Ok::<_, diesel::result::Error>(())
    }
    .await;
    match written {
        Ok(()) => Transactions::commit_transaction(conn).await,
        Err(error) => {
            if let Err(rollback) = Transactions::rollback_transaction(conn).await {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(error)
        }
    }
}

/// The broker's side of a reinit's start, on a client of the group that never joins it.
struct Broker {
    client: BaseConsumer<Logs>,
    group: String,
}

impl Broker {
    fn kafka(&self, step: ReinitStep) -> impl FnOnce(KafkaError) -> ReinitError + '_ {
        move |source| ReinitError::Kafka {
            step,
            group: self.group.clone(),
            source: Box::new(crate::kafka::redact_error(source)),
        }
    }

    /// Fails when the group has members. A broker that cannot describe groups is taken at
    /// its word later: committing offsets for a group with members fails.
    fn ensure_idle(&self) -> Result<(), ReinitError> {
        match self.client.fetch_group_list(Some(&self.group), BROKER_TIMEOUT) {
            Ok(list) => {
                let members = list.groups().iter().filter(|g| g.name() == self.group).map(|g| g.members().len()).sum();
                if members > 0 {
                    return Err(ReinitError::GroupActive { group: self.group.clone(), members });
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "cannot tell whether a consumer of the group is running; make sure none is");
                Ok(())
            }
        }
    }

    /// Every partition of `topics` with its earliest and end offsets.
    fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32, i64, i64)>, ReinitError> {
        let mut found = Vec::new();
        for topic in topics {
            let metadata =
                self.client.fetch_metadata(Some(topic), BROKER_TIMEOUT).map_err(self.kafka(ReinitStep::ReadOffsets))?;
            for partition in crate::kafka::partition_ids(&metadata, topic) {
                let (low, high) = self
                    .client
                    .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
                    .map_err(self.kafka(ReinitStep::ReadOffsets))?;
                found.push((topic.clone(), partition, low, high));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Commits where the replay starts as the group's Kafka offsets.
    fn commit(&self, targets: &[ReinitTarget]) -> Result<(), ReinitError> {
        let mut list = TopicPartitionList::new();
        for target in targets {
            list.add_partition_offset(&target.topic, target.partition, Offset::Offset(target.from))
                .map_err(self.kafka(ReinitStep::CommitOffsets))?;
        }
        self.client.commit(&list, CommitMode::Sync).map_err(self.kafka(ReinitStep::CommitOffsets))
    }
}

/// Replayed and remaining messages of a reinit, reported in metrics and logs.
struct Tally {
    group: String,
    total: u64,
    /// Replayed when this call started.
    initial: u64,
    /// Replayed at the last reading.
    done: u64,
    started: Instant,
    logged: Instant,
}

impl Tally {
    fn record(&mut self, done: u64) {
        let labels = [("group", self.group.clone())];
        metrics::counter!("dionysus_reinit_replayed_messages_total", &labels).increment(done.saturating_sub(self.done));
        metrics::gauge!("dionysus_reinit_remaining_messages", &labels).set(self.total.saturating_sub(done) as f64);
        self.done = self.done.max(done);
        if self.logged.elapsed() >= LOG_EVERY {
            self.logged = Instant::now();
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 { (self.done - self.initial) as f64 / elapsed } else { 0.0 };
            let remaining = self.total.saturating_sub(self.done);
            let eta_seconds = if rate > 0.0 { (remaining as f64 / rate).round() as u64 } else { 0 };
            tracing::info!(group = %self.group, done = self.done, total = self.total, messages_per_second = rate.round() as u64, eta_seconds, "reinit replaying");
        }
    }
}

impl Consumer {
    /// Reinitializes the consumer group: replays every topic the consumer reads from the
    /// earliest offsets up to `until` into the replica tables, with replies, error events
    /// and cascades suppressed, then returns ([`AfterReinit::Exit`]) or goes on consuming
    /// normally until `shutdown` ([`AfterReinit::Consume`]). `progress` is told how far it
    /// is. See the module `reinit` of the consumer for the whole story.
    ///
    /// An unfinished reinit of the group (stopped through `shutdown`, or a process that
    /// died) is resumed to its saved targets, whatever `until` says. A reinit refuses to
    /// start while the group has members on the broker ([`ReinitError::GroupActive`]).
    /// Dead letters are sent as usual: a message that was dead-lettered before is sent
    /// again when replayed.
    pub async fn reinit(
        &self,
        until: &Until,
        then: AfterReinit,
        progress: &dyn ReinitProgress,
        shutdown: CancellationToken,
    ) -> Result<ReinitReport, ReinitError> {
        let group = self.group().to_owned();
        if self.topics().is_empty() {
            return Err(ConsumerError::NoTopics.into());
        }
        self.check_tables().await?;
        let db = |step: ReinitStep| {
            let group = group.clone();
            move |source| ReinitError::Database { step, group, source }
        };
        let mut conn = crate::db::checkout(&self.inner.pool).await.map_err(ConsumerError::from)?;
        let unfinished = unfinished_targets(&mut conn, &group).await.map_err(db(ReinitStep::ReadTargets))?;
        let kafka = &self.inner.config.kafka;
        let mut settings = crate::kafka::consumer_config(kafka, &group);
        for (key, value) in &self.inner.kafka_properties {
            settings.set(key, value);
        }
        let client: BaseConsumer<Logs> = settings
            .create_with_context(Logs::default())
            .map_err(crate::kafka::kafka_error(crate::kafka::KafkaOperation::CreateConsumer, kafka))
            .map_err(ConsumerError::from)?;
        let broker = Arc::new(Broker { client, group: group.clone() });
        blocking(&broker, |broker| broker.ensure_idle()).await?;
        let resumed = !unfinished.is_empty();
        let targets = if resumed {
            if *until != Until::Now {
                tracing::warn!(%group, until = %until, "an unfinished reinit of the group is resumed to its saved targets; the given end is ignored");
            }
            saved_targets(&mut conn, &group)
                .await
                .map_err(db(ReinitStep::ReadTargets))?
                .into_iter()
                .map(|(target, _)| target)
                .collect()
        } else {
            let topics = self.topics().to_vec();
            let partitions = blocking(&broker, move |broker| broker.partitions(&topics)).await?;
            let targets = plan(&partitions, until)?;
            reset(&mut conn, &group, &targets).await.map_err(db(ReinitStep::Reset))?;
            let committed = targets.clone();
            blocking(&broker, move |broker| broker.commit(&committed)).await?;
            targets
        };
        drop(broker);
        let total: u64 = targets.iter().map(ReinitTarget::messages).sum();
        let initial = replayed(&mut conn, &group, &targets).await.map_err(db(ReinitStep::ReadTargets))?;
        drop(conn);
        tracing::info!(%group, resumed, total, done = initial, partitions = targets.len(), "reinit started: replies, error events and cascades are suppressed up to the targets");
        metrics::counter!("dionysus_reinit_runs_total", "group" => group.clone()).increment(1);
        progress.started(total, initial);
        let mut tally = Tally {
            group: group.clone(),
            total,
            initial,
            done: initial,
            started: Instant::now(),
            logged: Instant::now(),
        };
        tally.record(initial);

        let stop = shutdown.child_token();
        let running = self.run(stop.clone());
        tokio::pin!(running);
        let mut completed = initial >= total;
        if completed {
            progress.finished();
            if then == AfterReinit::Exit {
                stop.cancel();
            }
        }
        loop {
            tokio::select! {
                result = &mut running => {
                    result?;
                    break;
                }
                () = tokio::time::sleep(POLL), if !completed => {
                    let done = match crate::db::checkout(&self.inner.pool).await {
                        Ok(mut conn) => replayed(&mut conn, &group, &targets).await.ok(),
                        Err(_) => None,
                    };
                    let Some(done) = done else { continue };
                    tally.record(done);
                    progress.advanced(done);
                    if done >= total {
                        completed = true;
                        progress.finished();
                        tracing::info!(%group, replayed = done - initial, total, seconds = tally.started.elapsed().as_secs(), "reinit completed; replies are written again");
                        if then == AfterReinit::Exit {
                            stop.cancel();
                        }
                    }
                }
            }
        }
        if !completed {
            // Stopped: the last batches may have committed meanwhile.
            if let Ok(mut conn) = crate::db::checkout(&self.inner.pool).await {
                if let Ok(done) = replayed(&mut conn, &group, &targets).await {
                    tally.record(done);
                    completed = done >= total;
                }
            }
            if !completed {
                tracing::info!(%group, done = tally.done, total, "reinit stopped before its targets; run it again (or start the consumer) to resume");
            }
        }
        Ok(ReinitReport { resumed, completed, total, replayed: tally.done - initial, targets })
    }

    /// Loads the targets of the group's unfinished reinit, if any, for the batches to
    /// honour ([`Consumer::run`] does it first).
    pub(super) async fn load_replaying(&self) -> Result<(), ConsumerError> {
        let mut conn = crate::db::checkout(&self.inner.pool).await?;
        let targets = unfinished_targets(&mut conn, &self.inner.group)
            .await
            .map_err(|source| ConsumerError::ReinitTargets { group: self.inner.group.clone(), source })?;
        if !targets.is_empty() {
            tracing::info!(group = %self.inner.group, partitions = targets.len(), "the group's reinit is unfinished: replies, error events and cascades stay suppressed up to its targets");
        }
        self.inner.replaying.set(targets.into_iter().map(|target| (target.topic, target.partition, target.target)));
        Ok(())
    }

    /// Whether the message at `offset` of `topic`/`partition` is replayed by a reinit (below
    /// its partition's target): its replies, error events and cascades are not written.
    /// This is the one check every writer of follow-up events asks (`apply`'s replies and
    /// error events; cascades skip the events of such messages as they skip dead-lettered
    /// ones).
    pub(super) fn replaying(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.inner.replaying.covers(topic, partition, offset)
    }
}

/// Messages of `targets` replayed so far, by the stored offsets.
async fn replayed(
    conn: &mut AsyncPgConnection,
    group: &str,
    targets: &[ReinitTarget],
) -> Result<u64, diesel::result::Error> {
    let stored = crate::consumer::replica::sql::stored_offsets(conn, group).await?;
    Ok(targets.iter().map(|target| target.done(stored.get(&(target.topic.clone(), target.partition)).copied())).sum())
}

/// Runs `work` on the broker client off the async threads (librdkafka's calls block).
async fn blocking<T: Send + 'static>(
    broker: &Arc<Broker>,
    work: impl FnOnce(&Broker) -> Result<T, ReinitError> + Send + 'static,
) -> Result<T, ReinitError> {
    let broker = broker.clone();
    let group = broker.group.clone();
    tokio::task::spawn_blocking(move || work(&broker)).await.unwrap_or_else(|error| {
        tracing::error!(%group, error = %Report(&error), "a broker request of the reinit stopped");
        Err(ReinitError::Kafka { step: ReinitStep::ReadOffsets, group, source: Box::new(KafkaError::Canceled) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts() -> Vec<(String, i32, i64, i64)> {
        vec![("a".to_owned(), 0, 0, 10), ("a".to_owned(), 1, 5, 20), ("b".to_owned(), 0, 0, 0)]
    }

    #[test]
    fn now_and_offsets_parse() {
        assert_eq!("now".parse::<Until>().unwrap(), Until::Now);
        assert_eq!(" NOW ".parse::<Until>().unwrap(), Until::Now);
        let until: Until = "v3_rentals:0:1200, v3_rentals:1:980".parse().unwrap();
        let expected = BTreeMap::from([(("v3_rentals".to_owned(), 0), 1200), (("v3_rentals".to_owned(), 1), 980)]);
        assert_eq!(until, Until::Offsets(expected));
    }

    #[test]
    fn a_bad_end_says_what_is_wrong() {
        for (text, problem) in [
            ("", "it is empty"),
            ("yesterday", "`yesterday` is not TOPIC:PARTITION:OFFSET"),
            ("t:0", "`t:0` is not TOPIC:PARTITION:OFFSET"),
            (":0:5", "names no topic"),
            ("t:x:5", "the partition `x`"),
            ("t:-1:5", "the partition `-1`"),
            ("t:0:-5", "the offset `-5`"),
            ("t:0:5,t:0:6", "t:0 is named twice"),
        ] {
            let error = text.parse::<Until>().unwrap_err();
            assert!(error.problem.contains(problem), "{text:?}: {error}");
            assert!(error.to_string().contains("TOPIC:PARTITION:OFFSET"), "{error}");
        }
    }

    #[test]
    fn now_targets_the_end_of_every_partition() {
        let targets = plan(&parts(), &Until::Now).unwrap();
        let ends: Vec<(i64, i64)> = targets.iter().map(|t| (t.from, t.target)).collect();
        assert_eq!(ends, [(0, 10), (5, 20), (0, 0)]);
        assert_eq!(targets.iter().map(ReinitTarget::messages).sum::<u64>(), 25);
    }

    #[test]
    fn given_offsets_target_their_partitions_and_the_others_their_end() {
        let until: Until = "a:1:7".parse().unwrap();
        let targets = plan(&parts(), &until).unwrap();
        assert_eq!(targets[1].target, 7);
        assert_eq!(targets[0].target, 10);
        let unknown = plan(&parts(), &"c:0:1".parse().unwrap()).unwrap_err();
        assert!(
            unknown.to_string().contains("c:0, which the consumer does not read; it reads a:0, a:1, b:0"),
            "{unknown}"
        );
        let beyond = plan(&parts(), &"a:0:11".parse().unwrap()).unwrap_err();
        assert!(beyond.to_string().contains("outside the partition's offsets 0..=10"), "{beyond}");
        assert!(plan(&parts(), &"a:1:4".parse().unwrap()).is_err());
    }

    proptest! {
        #[test]
        fn an_end_reads_back_as_written(
            offsets in proptest::collection::btree_map(("[a-z][a-z0-9._-]{0,8}", 0..64i32), 0..1_000_000i64, 1..5)
        ) {
            let until = Until::Offsets(offsets);
            prop_assert_eq!(until.to_string().parse::<Until>().unwrap(), until);
        }

        #[test]
        fn progress_stays_within_the_partition(from in 0..1000i64, len in 0..1000i64, stored in proptest::option::of(-10..3000i64)) {
            let target = ReinitTarget { topic: "t".to_owned(), partition: 0, from, target: from + len };
            let done = target.done(stored);
            prop_assert!(done <= target.messages());
            if let Some(stored) = stored {
                if stored >= from + len { prop_assert_eq!(done, target.messages()); }
            }
        }
    }
}
