//! One relay batch: read the due rows of the worker's buckets in id order — leaving out every
//! row whose key has an earlier row waiting for a retry, decided in the same statement with one
//! clock — build the messages, produce them, settle the outcomes so that no row is marked
//! published behind a failed row of its key, and record them in two statements (published
//! rows; failed rows with their backoff).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rdkafka::producer::{Producer, PurgeConfig};
use serde_json::Value;

use super::backoff;
use super::monitor::{Monitor, RelayEvent};
use crate::config::ProducerConfig;
use crate::producer::outbox::open_changeset;
use crate::producer::outbox::{owner_updated_row, related_owners_filter, Changeset, NewOutboxRow};
use crate::producer::plan::{self, Composed, PlanError, RowPlan, RowRef};
use crate::producer::sender::{self, Failure, Sender, REGISTRY_UNAVAILABLE};
use crate::producer::serialize::SideloadError;
use crate::registry::model::{Condition, IdValue, Record, Relation};
use crate::registry::Registry;
use crate::telemetry::Report;

/// A pending row as the relay reads it.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub(crate) struct PendingRow {
    #[diesel(sql_type = BigInt)]
    pub(crate) id: i64,
    #[diesel(sql_type = Text)]
    pub(crate) resource_class: String,
    #[diesel(sql_type = Text)]
    pub(crate) resource_id: String,
    #[diesel(sql_type = Text)]
    pub(crate) event_name: String,
    #[diesel(sql_type = Text)]
    pub(crate) topic: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) partition_key: Option<String>,
    #[diesel(sql_type = Jsonb)]
    pub(crate) changeset: Value,
    #[diesel(sql_type = Integer)]
    pub(crate) attempts: i32,
    #[diesel(sql_type = Text)]
    pub(crate) ordering_key: String,
    #[diesel(sql_type = SmallInt)]
    pub(crate) ordering_bucket: i16,
    #[diesel(sql_type = Timestamptz)]
    pub(crate) created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) message: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) message_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) encryption_key_id: Option<String>,
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows read.
    pub read: usize,
    /// Rows published (acknowledged by the broker for every destination).
    pub published: usize,
    /// Rows marked published with nothing to send (gone records, removed duplicates,
    /// expanded observer rows).
    pub skipped: usize,
    /// Rows that failed and will be retried (or were parked).
    pub failed: usize,
    /// Rows left for a later batch because an earlier row of their key must go first.
    pub held_back: usize,
    /// The producer hit a fatal error (e.g. fenced after timed-out deliveries) and must be
    /// replaced before the next batch.
    pub producer_failed: bool,
}

pub(crate) struct Batch<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) config: &'a ProducerConfig,
    pub(crate) sender: Sender<'a>,
    pub(crate) monitor: &'a Monitor,
    pub(crate) delivery_timeout: Duration,
    /// Encodes the rows of Avro topics.
    #[cfg(feature = "avro")]
    pub(crate) avro: &'a crate::producer::avro::Encoder,
}

/// Where a batch reads: the worker's buckets, at most `limit` rows, ids above `after` (0:
/// from the bottom of the pending index).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'b> {
    pub(crate) buckets: &'b [i16],
    pub(crate) limit: usize,
    pub(crate) after: i64,
}

/// A batch read and planned, nothing sent yet.
pub(crate) struct Prepared {
    started: Instant,
    report: BatchReport,
    /// The highest id read (0 when nothing was read).
    pub(crate) last_id: i64,
    /// Keys of rows held back by the publishing delay.
    held_keys: HashSet<String>,
    eligible: Vec<PendingRow>,
    duplicates: Vec<PendingRow>,
    plans: Result<Vec<RowPlan>, PlanError>,
}

impl Prepared {
    /// Rows read from the outbox.
    pub(crate) fn read(&self) -> usize {
        self.report.read
    }

    /// Whether nothing is left to send or mark.
    pub(crate) fn is_empty(&self) -> bool {
        self.eligible.is_empty() && self.duplicates.is_empty()
    }

    /// Leaves out the rows of every bucket but `buckets` (the others were given up since the
    /// batch was read: their new owner reads them). Returns how many were left out.
    pub(crate) fn keep_buckets(&mut self, buckets: &[i16]) -> usize {
        self.drop_rows(|row| !buckets.contains(&row.ordering_bucket))
    }

    /// How many of the rows to send or mark each bucket holds, by bucket.
    pub(crate) fn rows_per_bucket(&self) -> Vec<(i16, usize)> {
        let mut rows: std::collections::BTreeMap<i16, usize> = std::collections::BTreeMap::new();
        for row in self.eligible.iter().chain(&self.duplicates) {
            *rows.entry(row.ordering_bucket).or_default() += 1;
        }
        rows.into_iter().collect()
    }

    /// Ids of the rows to send or mark.
    pub(crate) fn ids(&self) -> HashSet<i64> {
        self.eligible.iter().chain(&self.duplicates).map(|row| row.id).collect()
    }

    /// Leaves out the rows of `keys` (an earlier batch did not finish them: they go again, in
    /// order, once the cursor comes back to them). Returns how many were left out.
    pub(crate) fn drop_keys(&mut self, keys: &HashSet<String>) -> usize {
        if keys.is_empty() {
            return 0;
        }
        let dropped = self.drop_rows(|row| keys.contains(&row.ordering_key));
        self.report.held_back += dropped;
        dropped
    }

    /// Leaves out the rows with these ids (an earlier batch has them in hand already).
    pub(crate) fn drop_ids(&mut self, ids: &HashSet<i64>) -> usize {
        self.drop_rows(|row| ids.contains(&row.id))
    }

    fn drop_rows(&mut self, drop: impl Fn(&PendingRow) -> bool) -> usize {
        // Most calls drop nothing (a batch read ahead rarely holds a row in hand): the rows
        // and their plans are rebuilt only when some go.
        if !self.eligible.iter().chain(&self.duplicates).any(&drop) {
            return 0;
        }
        let before = self.eligible.len() + self.duplicates.len();
        self.duplicates.retain(|row| !drop(row));
        let eligible = std::mem::take(&mut self.eligible);
        match &mut self.plans {
            Ok(plans) => {
                let kept: (Vec<PendingRow>, Vec<RowPlan>) =
                    eligible.into_iter().zip(std::mem::take(plans)).filter(|(row, _)| !drop(row)).unzip();
                self.eligible = kept.0;
                *plans = kept.1;
            }
            Err(_) => self.eligible = eligible.into_iter().filter(|row| !drop(row)).collect(),
        }
        before - self.eligible.len() - self.duplicates.len()
    }
}

/// A batch whose messages are with the producer.
pub(crate) struct InFlight {
    prepared: Prepared,
    outcomes: Vec<Outcome>,
    deliveries: Vec<(usize, Vec<rdkafka::producer::DeliveryFuture>)>,
    /// When its messages went to the producer: their delivery deadline counts from here.
    sent_at: tokio::time::Instant,
}

impl InFlight {
    /// Keys a batch sent while this one is in flight must leave out: those of rows held by
    /// the publishing delay, and those of rows that failed before anything was sent (and the
    /// rows behind them, not sent). Rows of its other keys may follow theirs at once: the
    /// producer keeps a partition's messages in order.
    pub(crate) fn unsendable_keys(&self) -> HashSet<String> {
        let mut keys = self.prepared.held_keys.clone();
        for (row, outcome) in self.prepared.eligible.iter().zip(&self.outcomes) {
            if matches!(outcome, Outcome::Failed(_)) {
                keys.insert(row.ordering_key.clone());
            }
        }
        keys
    }

    /// Every key of the batch.
    pub(crate) fn keys(&self) -> HashSet<String> {
        let prepared = &self.prepared;
        let rows = prepared.eligible.iter().chain(&prepared.duplicates);
        rows.map(|row| row.ordering_key.clone()).chain(prepared.held_keys.iter().cloned()).collect()
    }
}

/// A batch whose deliveries are settled, to be recorded.
pub(crate) struct Delivered {
    prepared: Prepared,
    outcomes: Vec<Outcome>,
    producer_failed: bool,
}

/// What recording a batch left: its report, and the keys it did not finish (a row failed,
/// was left pending behind a failure, or was held back by the publishing delay). A batch read
/// ahead of this one must not send rows of those keys.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) report: BatchReport,
    pub(crate) unfinished: HashSet<String>,
}

impl Recorded {
    /// The keys whose rows the batch sent while this one was in flight must leave pending
    /// when it is settled, so they are published again behind this one's unfinished rows:
    /// the keys this one left unfinished (`recorded`), or every key of it (`keys`) if it
    /// could not be recorded — and in both cases the keys it was itself told to leave
    /// (`blocked`), which pass down the line of batches sent ahead whether or not this one
    /// carried a row of them. (The batch read leaves out the later rows of a key whose row
    /// waits for a retry; this rule does not depend on it.)
    pub(crate) fn left_behind(
        recorded: Option<&Recorded>,
        keys: HashSet<String>,
        blocked: &HashSet<String>,
    ) -> HashSet<String> {
        let mut left = match recorded {
            Some(recorded) => recorded.unfinished.clone(),
            None => keys,
        };
        left.extend(blocked.iter().cloned());
        left
    }
}

impl Batch<'_> {
    /// Runs one batch over `buckets` from the bottom of the pending index, each stage after the
    /// other.
    pub(crate) async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        buckets: &[i16],
    ) -> Result<BatchReport, diesel::result::Error> {
        let prepared = self.prepare(conn, Window { buckets, limit: self.config.batch_size, after: 0 }).await?;
        if prepared.read() == 0 {
            return Ok(prepared.report);
        }
        let in_flight = self.send(conn, prepared).await;
        let delivered = self.deliver(in_flight).await;
        Ok(self.record(conn, delivered, &HashSet::new()).await?.report)
    }

    /// Reads the due rows of `window` and plans them (loads the records, builds the messages).
    pub(crate) async fn prepare(
        &self,
        conn: &mut AsyncPgConnection,
        window: Window<'_>,
    ) -> Result<Prepared, diesel::result::Error> {
        let started = Instant::now();
        let rows = fetch(conn, window, self.config.strict_ordering, Clock::Database).await?;
        let report = BatchReport { read: rows.len(), ..BatchReport::default() };
        let last_id = rows.last().map_or(0, |row| row.id);
        if rows.is_empty() {
            return Ok(Prepared {
                started,
                report,
                last_id,
                held_keys: HashSet::new(),
                eligible: Vec::new(),
                duplicates: Vec::new(),
                plans: Ok(Vec::new()),
            });
        }
        let (eligible, held) = hold_young_rows(rows, self.config.publishing_delay, Utc::now());
        let held_keys: HashSet<String> = held.into_iter().map(|row| row.ordering_key).collect();
        let Planned { eligible, duplicates, plans } = plan_batch(conn, self.registry, self.config, eligible).await;
        let mut prepared = Prepared { started, report, last_id, held_keys, eligible, duplicates, plans };
        prepared.report.held_back = prepared.report.read - prepared.eligible.len() - prepared.duplicates.len();
        Ok(prepared)
    }

    /// Hands the planned messages to the producer in id order (a row of a key that failed in
    /// this batch is not sent), expanding deferred observer rows on `conn`.
    pub(crate) async fn send(&self, conn: &mut AsyncPgConnection, mut prepared: Prepared) -> InFlight {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(prepared.eligible.len());
        let mut deliveries: Vec<(usize, Vec<rdkafka::producer::DeliveryFuture>)> = Vec::new();
        let load_failure = match &prepared.plans {
            Ok(_) => None,
            // Loading failed for the whole batch: every row fails alike and is retried.
            Err(error) => Some(Failure { class: "LoadError", message: Report(error).to_string() }),
        };
        if let Some(failure) = load_failure {
            for _ in &prepared.eligible {
                outcomes.push(Outcome::Failed(Failure { class: failure.class, message: failure.message.clone() }));
            }
            return InFlight { prepared, outcomes, deliveries, sent_at: tokio::time::Instant::now() };
        }
        let plans = std::mem::replace(&mut prepared.plans, Ok(Vec::new())).unwrap_or_default();
        let mut blocked_now: HashSet<String> = HashSet::new();
        for (index, (row, plan)) in prepared.eligible.iter().zip(plans).enumerate() {
            if blocked_now.contains(row.ordering_key.as_str()) {
                outcomes.push(Outcome::NotSent);
                continue;
            }
            let outcome = match plan {
                RowPlan::Publish(messages) => match self.sender.send(&messages).await {
                    Ok(sent) => {
                        deliveries.push((index, sent));
                        Outcome::NotSent // replaced once its deliveries are settled
                    }
                    Err(error) => Outcome::Failed(error.into()),
                },
                RowPlan::Avro(avro_row) => match self.send_avro(&avro_row).await {
                    Ok(sent) => {
                        deliveries.push((index, sent));
                        Outcome::NotSent // replaced once its deliveries are settled
                    }
                    Err(failure) => Outcome::Failed(failure),
                },
                RowPlan::Skip(reason) => {
                    // Normal (a record destroyed before its update was published): said at
                    // debug level and counted, not warned about.
                    tracing::debug!(outbox_id = row.id, model = %row.resource_class, id = %row.resource_id, "{reason}");
                    metrics::counter!("dionysus_outbox_skipped_total", "reason" => "record_gone").increment(1);
                    Outcome::NothingToSend
                }
                RowPlan::DeferredObservers => match open_changeset(
                    &self.config.outbox_encryption_keys,
                    row.encryption_key_id.as_deref(),
                    &row.changeset,
                ) {
                    Err(error) => Outcome::Failed(Failure { class: SEAL_ERROR, message: Report(&error).to_string() }),
                    Ok(changeset) => {
                        match expand_deferred_observers(conn, self.registry, self.config, row, &changeset).await {
                            Ok(written) => {
                                tracing::info!(
                                    outbox_id = row.id,
                                    rows = written,
                                    "expanded a deferred observer row into outbox rows"
                                );
                                Outcome::NothingToSend
                            }
                            Err(error) => {
                                Outcome::Failed(Failure { class: "ObserverError", message: Report(&error).to_string() })
                            }
                        }
                    }
                },
                RowPlan::Fail(error) => {
                    Outcome::Failed(Failure { class: plan_error_class(&error), message: Report(&error).to_string() })
                }
            };
            if matches!(outcome, Outcome::Failed(_)) {
                blocked_now.insert(row.ordering_key.clone());
            }
            outcomes.push(outcome);
        }
        InFlight { prepared, outcomes, deliveries, sent_at: tokio::time::Instant::now() }
    }

    /// Encodes a row of an Avro topic and hands its messages to the producer.
    async fn send_avro(&self, row: &plan::AvroRow) -> Result<Vec<rdkafka::producer::DeliveryFuture>, Failure> {
        #[cfg(feature = "avro")]
        {
            let messages = self.avro.messages(row).await?;
            Ok(self.sender.send_raw(&messages).await?)
        }
        #[cfg(not(feature = "avro"))]
        {
            let error = PlanError::AvroTopic(row.topics.join(", "));
            Err(Failure { class: plan_error_class(&error), message: Report(&error).to_string() })
        }
    }

    /// Awaits the delivery reports of a batch (no database work: the next batch may be read
    /// meanwhile).
    ///
    /// The producer never times a message out on its own: dropping a queued message that timed
    /// out and delivering the next one would reorder a key. At the deadline (well before the
    /// leases expire, counted from when the batch was sent) every message still queued or in
    /// flight is purged at once, so what reached the broker is a prefix of each partition's
    /// messages, and the producer is replaced. Rows after the purge count as failed, even if a
    /// report was on its way.
    pub(crate) async fn deliver(&self, in_flight: InFlight) -> Delivered {
        let InFlight { prepared, mut outcomes, deliveries, sent_at } = in_flight;
        let deadline = sent_at + self.delivery_timeout;
        let mut purged = false;
        let mut producer_failed = false;
        for (index, row_deliveries) in deliveries {
            let outcome = sender::await_deliveries(row_deliveries, deadline).await;
            if let Err(failure) = &outcome {
                if failure.timed_out && !purged {
                    purged = true;
                    producer_failed = true;
                    self.sender.producer.purge(PurgeConfig::default().queue().inflight());
                    tracing::warn!(
                        timeout = ?self.delivery_timeout,
                        "no delivery reports before the deadline (broker unreachable?); purged the producer's \
                         queue, the rows will be retried"
                    );
                }
            }
            outcomes[index] = match outcome {
                Ok(()) => Outcome::Delivered,
                Err(failure) => {
                    producer_failed |= failure.fatal;
                    Outcome::Failed(failure.into())
                }
            };
        }
        if self.sender.producer.client().fatal_error().is_some() {
            producer_failed = true;
        }
        Delivered { prepared, outcomes, producer_failed }
    }

    /// Settles the outcomes so that no row is marked published behind a failed row of its
    /// key, marks the published rows and records the failed ones. `blocked` are the keys an
    /// earlier batch left unfinished while this one was already sent: its rows of those keys
    /// are settled as if they came behind a failure in this batch.
    pub(crate) async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        delivered: Delivered,
        blocked: &HashSet<String>,
    ) -> Result<Recorded, diesel::result::Error> {
        let Delivered { prepared, outcomes, producer_failed } = delivered;
        let Prepared { started, mut report, held_keys, eligible, duplicates, .. } = prepared;
        report.producer_failed = producer_failed;
        report.skipped += duplicates.len();
        let settled = settle_behind(&eligible, outcomes, blocked);
        if settled.redelivered > 0 {
            tracing::warn!(
                rows = settled.redelivered,
                "rows were delivered after an earlier row of their key failed; they stay pending and go again after it"
            );
            metrics::counter!("dionysus_relay_redelivered_behind_failure_total").increment(settled.redelivered as u64);
        }
        for row in &settled.delivered {
            let latency = (Utc::now() - row.created_at).to_std().unwrap_or_default();
            metrics::histogram!("dionysus_outbox_commit_to_ack_seconds").record(latency.as_secs_f64());
            self.monitor.emit(&RelayEvent::Published { outbox_id: row.id, topic: &row.topic });
        }
        report.published = settled.delivered.len();
        report.skipped += settled.nothing_to_send.len();
        report.held_back += settled.left_pending;
        let published: Vec<i64> = duplicates
            .iter()
            .chain(settled.delivered.iter().copied())
            .chain(settled.nothing_to_send.iter().copied())
            .map(|row| row.id)
            .collect();
        mark_published(conn, &published, PublishedRows::of(self.config)).await?;
        report.failed = settled.failures.len();
        let mut unfinished = held_keys;
        unfinished.extend(settled.failures.iter().map(|(row, _)| row.ordering_key.clone()));
        unfinished.extend(
            eligible.iter().filter(|row| blocked.contains(&row.ordering_key)).map(|row| row.ordering_key.clone()),
        );
        self.record_failures(conn, settled.failures, Clock::Database).await?;
        metrics::counter!("dionysus_outbox_published_total").increment(report.published as u64);
        metrics::histogram!("dionysus_relay_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(Recorded { report, unfinished })
    }

    async fn record_failures(
        &self,
        conn: &mut AsyncPgConnection,
        failures: Vec<(&PendingRow, Failure)>,
        clock: Clock,
    ) -> Result<(), diesel::result::Error> {
        if failures.is_empty() {
            return Ok(());
        }
        let fatal = self.sender.producer.client().fatal_error();
        let mut parked_rows = 0;
        for (row, failure) in &failures {
            let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
            let parked = attempts >= self.config.max_attempts;
            parked_rows += usize::from(parked);
            tracing::debug!(
                outbox_id = row.id, model = %row.resource_class, id = %row.resource_id, topic = %row.topic,
                attempts, parked, error_class = failure.class, "publishing failed: {}", failure.message
            );
            metrics::counter!("dionysus_outbox_failures_total", "error_class" => failure.class).increment(1);
            if parked {
                metrics::counter!("dionysus_outbox_parked_total").increment(1);
            }
            self.monitor.emit(&RelayEvent::PublishingFailed {
                outbox_id: row.id,
                error_class: failure.class,
                error_message: &failure.message,
                parked,
            });
        }
        log_failures(&failures, fatal.as_ref().map(|(_, reason)| reason.as_str()), parked_rows);
        record_failures(conn, self.config, &failures, clock, rand::random::<f64>).await
    }
}

/// Rows of a batch ready to send: the eligible rows left after consecutive duplicates were
/// removed (when configured), those duplicates (marked published unsent), and the plan of
/// each eligible row, or the error that failed the whole batch's loading.
pub(crate) struct Planned {
    pub(crate) eligible: Vec<PendingRow>,
    pub(crate) duplicates: Vec<PendingRow>,
    pub(crate) plans: Result<Vec<RowPlan>, PlanError>,
}

/// What a batch does with its eligible rows before sending anything: removes consecutive
/// duplicates when configured, loads the records and plans every row.
pub(crate) async fn plan_batch(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    eligible: Vec<PendingRow>,
) -> Planned {
    let (eligible, duplicates) = if config.remove_consecutive_duplicates {
        remove_consecutive_duplicates(eligible)
    } else {
        (eligible, Vec::new())
    };
    let references: Vec<RowRef> = eligible.iter().map(row_ref).collect();
    let plans = plan::plan_rows(conn, registry, config, &references).await;
    Planned { eligible, duplicates, plans }
}

/// One pending row as a batch would treat it now.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub(crate) enum RowPreview {
    /// Planned (messages to send, nothing to send, deferred observers, or a failure).
    Planned(RowPlan),
    /// A consecutive duplicate: marked published without being sent.
    Duplicate,
}

/// Reading or planning the pending rows failed.
#[cfg(feature = "testing")]
#[derive(Debug, thiserror::Error)]
pub(crate) enum PreviewError {
    /// The pending rows could not be read.
    #[error("reading the pending outbox rows")]
    Read(#[source] diesel::result::Error),
    /// Loading the records of the rows failed.
    #[error(transparent)]
    Plan(PlanError),
}

/// Every pending, due row of `buckets` in id order, each with what a batch would do with it
/// now: the same reading and planning as [`Batch::run`] (on the caller's connection, so a
/// transaction sees its own uncommitted rows), without the publishing delay, without sending
/// and without marking or writing anything.
#[cfg(feature = "testing")]
pub(crate) async fn preview(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    buckets: &[i16],
) -> Result<Vec<(PendingRow, RowPreview)>, PreviewError> {
    let window = Window { buckets, limit: usize::MAX, after: 0 };
    let rows = fetch(conn, window, config.strict_ordering, Clock::Database).await.map_err(PreviewError::Read)?;
    let Planned { eligible, duplicates, plans } = plan_batch(conn, registry, config, rows).await;
    let plans = plans.map_err(PreviewError::Plan)?;
    let mut previews: Vec<(PendingRow, RowPreview)> = eligible
        .into_iter()
        .zip(plans)
        .map(|(row, plan)| (row, RowPreview::Planned(plan)))
        .chain(duplicates.into_iter().map(|row| (row, RowPreview::Duplicate)))
        .collect();
    previews.sort_by_key(|(row, _)| row.id);
    Ok(previews)
}

/// One warning per kind of failure in a batch (not one per row: a broker outage fails every
/// row of every batch alike). A producer that failed fatally — librdkafka's idempotent
/// producer gives up after delivery timeouts, and its errors then name transactional fencing
/// although no transactions are used — is explained in one line.
fn log_failures(failures: &[(&PendingRow, Failure)], fatal: Option<&str>, parked: usize) {
    if let Some(reason) = fatal {
        tracing::warn!(
            rows = failures.len(),
            parked,
            "idempotent producer reset after delivery timeouts ({reason}); {} rows will be retried",
            failures.len() - parked
        );
        return;
    }
    let mut kinds: Vec<(&str, &str, usize, i64)> = Vec::new();
    for (row, failure) in failures {
        match kinds.iter_mut().find(|(class, message, _, _)| *class == failure.class && *message == failure.message) {
            Some(kind) => kind.2 += 1,
            None => kinds.push((failure.class, failure.message.as_str(), 1, row.id)),
        }
    }
    for (class, message, rows, first_id) in kinds {
        tracing::warn!(
            error_class = class,
            rows,
            first_outbox_id = first_id,
            parked,
            "publishing failed for {rows} row(s), retried with backoff: {message}"
        );
    }
}

/// The time a batch decides by: the database's `now()` (production), or a given instant
/// (simulations of retry schedules). Either way one batch reads a single clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `now()` of the statement's transaction.
    Database,
    /// A fixed instant.
    At(DateTime<Utc>),
}

impl Clock {
    fn instant(self) -> Option<DateTime<Utc>> {
        match self {
            Clock::Database => None,
            Clock::At(at) => Some(at),
        }
    }
}

/// What happened to one eligible row of a batch, before settling.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every message of the row was acknowledged by the broker.
    Delivered,
    /// The row sends nothing (record gone, deferred observers expanded): marked published.
    NothingToSend,
    /// Planning, sending or delivery failed.
    Failed(Failure),
    /// Not sent: an earlier row of its key failed in this batch.
    NotSent,
}

/// The outcomes of a batch, settled so that no row is marked published behind a failed row of
/// its key.
#[derive(Debug)]
pub(crate) struct Settled<'r> {
    /// Rows to mark published, delivered.
    pub(crate) delivered: Vec<&'r PendingRow>,
    /// Rows to mark published that sent nothing.
    pub(crate) nothing_to_send: Vec<&'r PendingRow>,
    /// Rows to record as failed (retried later, or parked).
    pub(crate) failures: Vec<(&'r PendingRow, Failure)>,
    /// Rows left pending as they were (behind a failed row of their key).
    pub(crate) left_pending: usize,
    /// Of those, rows that had been delivered: they go again once the failed row is through.
    pub(crate) redelivered: usize,
}

/// Settles a batch's outcomes (`outcomes[i]` belongs to `rows[i]`, rows in id order). Once a
/// row of a key failed, a later row of that key that was nevertheless delivered (the producer
/// may drop a timed-out message and deliver the next one) is left pending rather than marked
/// published: it is sent again after the failed row, so the last message of the key on the
/// wire is the latest one and no later row is marked done ahead of an earlier one.
pub(crate) fn settle(rows: &[PendingRow], outcomes: Vec<Outcome>) -> Settled<'_> {
    settle_behind(rows, outcomes, &HashSet::new())
}

/// [`settle`] for a batch sent while an earlier one was in flight: `blocked` are the keys that
/// one left unfinished, as if they had failed at the start of this batch — so settling the two
/// one after the other marks what settling them as one batch would.
pub(crate) fn settle_behind<'r>(
    rows: &'r [PendingRow],
    outcomes: Vec<Outcome>,
    blocked: &HashSet<String>,
) -> Settled<'r> {
    let mut settled = Settled {
        delivered: Vec::new(),
        nothing_to_send: Vec::new(),
        failures: Vec::new(),
        left_pending: 0,
        redelivered: 0,
    };
    let mut failed_keys: HashSet<&str> = blocked.iter().map(String::as_str).collect();
    for (row, outcome) in rows.iter().zip(outcomes) {
        let behind_failure = failed_keys.contains(row.ordering_key.as_str());
        match outcome {
            Outcome::Delivered if behind_failure => {
                settled.left_pending += 1;
                settled.redelivered += 1;
            }
            Outcome::Delivered => settled.delivered.push(row),
            Outcome::NothingToSend => settled.nothing_to_send.push(row),
            Outcome::Failed(failure) => {
                failed_keys.insert(&row.ordering_key);
                settled.failures.push((row, failure));
            }
            Outcome::NotSent => settled.left_pending += 1,
        }
    }
    settled
}

/// Records failed rows in one statement: attempts + 1, the error, `retry_at` after the
/// backoff (from `clock`), `failed_at` once parked. `jitter` draws a number in `[0, 1)` per row.
pub(crate) async fn record_failures(
    conn: &mut AsyncPgConnection,
    config: &ProducerConfig,
    failures: &[(&PendingRow, Failure)],
    clock: Clock,
    mut jitter: impl FnMut() -> f64,
) -> Result<(), diesel::result::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(failures.len());
    let mut classes = Vec::with_capacity(failures.len());
    let mut messages = Vec::with_capacity(failures.len());
    let mut delays = Vec::with_capacity(failures.len());
    let mut parks = Vec::with_capacity(failures.len());
    for (row, failure) in failures {
        let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        let decision = backoff::decide(config, attempts, jitter());
        ids.push(row.id);
        classes.push(failure.class.to_owned());
        messages.push(failure.message.clone());
        delays.push(decision.delay.as_secs_f64());
        // A row that does not open lacks a key of ours, not a fault of its own: it waits,
        // retried with backoff, however long the key is missing (never parked).
        // Nor is a schema registry that cannot be reached.
        parks.push(decision.park && failure.class != SEAL_ERROR && failure.class != REGISTRY_UNAVAILABLE);
    }
    diesel::sql_query(
        "UPDATE dionysus_outbox AS o SET attempts = o.attempts + 1, error_class = f.class, \
         error_message = f.message, retry_at = COALESCE($6, now()) + make_interval(secs => f.delay), \
         failed_at = CASE WHEN f.park THEN COALESCE($6, now()) ELSE NULL END, updated_at = now() \
         FROM unnest($1, $2, $3, $4, $5) AS f(id, class, message, delay, park) WHERE o.id = f.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Text>, _>(classes)
    .bind::<Array<Text>, _>(messages)
    .bind::<Array<Double>, _>(delays)
    .bind::<Array<Bool>, _>(parks)
    .bind::<Nullable<Timestamptz>, _>(clock.instant())
    .execute(conn)
    .await?;
    Ok(())
}

/// The error class of a row that could not be opened with the configured keys.
const SEAL_ERROR: &str = "SealError";

fn plan_error_class(error: &PlanError) -> &'static str {
    match error {
        PlanError::UnknownModel(_) => "UnknownModel",
        PlanError::NotPublishedOnTopic { .. } => "NotPublishedOnTopic",
        PlanError::Serialize(_) => "SerializeError",
        PlanError::Encode(_) => "EnvelopeError",
        PlanError::LoadRecords { .. } | PlanError::Sideloads(SideloadError::Load { .. }) => "LoadError",
        PlanError::Sideloads(SideloadError::Serialize(_)) => "SerializeError",
        PlanError::UnknownTopic(_) => "UnknownTopic",
        PlanError::NoGenesisReplica(_) => "NoGenesisReplica",
        PlanError::Sealed(_) => SEAL_ERROR,
        PlanError::AvroTopic(_) => "AvroTopic",
    }
}

fn row_ref(row: &PendingRow) -> RowRef {
    RowRef {
        id: row.id,
        resource_class: row.resource_class.clone(),
        resource_id: row.resource_id.clone(),
        event_name: row.event_name.clone(),
        topic: row.topic.clone(),
        partition_key: row.partition_key.clone(),
        composed: row.message.as_ref().map(|value| Composed {
            key: row.message_key.clone().unwrap_or_else(|| format!("{}:{}", row.resource_class, row.resource_id)),
            value: value.clone(),
            encryption_key_id: row.encryption_key_id.clone(),
        }),
    }
}

/// The rows of the window's buckets with ids above `after` that may be published now, in id
/// order, at most `limit`: pending,
/// due (no retry, or its time has come), and not behind an earlier pending row of their key
/// that waits for a retry (or, with `strict`, is parked). A row that failed before (waiting
/// for its retry or due) pulls `after` below it: a key's later rows above the cursor must
/// never be read while its earlier failed row lies below it.
///
/// One statement, so one snapshot and one clock decide both "due" and "held back". Deciding
/// them in two statements with two `now()`s lets a row whose `retry_at` falls between the two
/// be neither read nor holding back its key, and its key's later rows overtake it. Leaving the
/// held-back rows out here (rather than reading and dropping them) also keeps one busy key
/// waiting for a retry from filling every batch and starving the other keys of its buckets.
pub(crate) async fn fetch(
    conn: &mut AsyncPgConnection,
    window: Window<'_>,
    strict: bool,
    clock: Clock,
) -> Result<Vec<PendingRow>, diesel::result::Error> {
    fetch_statement("", window, strict, clock).load(conn).await
}

/// The batch read of [`fetch`]. The clock is `COALESCE($4, now())` written out where it is
/// compared, not a joined one-row table: joining one (`FROM dionysus_outbox o, clock`) puts
/// it on the outer side of the join, which loses the id order of the pending index. Once the
/// statistics say the outbox holds many pending rows of many keys, PostgreSQL then reads
/// every pending row of the buckets and sorts them for each batch (about 100 ms per batch over
/// 100,000 pending rows of 5,000 keys, against about 1 ms for this form).
const FETCH: &str = "WITH waiting AS ( \
         SELECT ordering_key, min(id) AS first_id FROM dionysus_outbox \
         WHERE published_at IS NULL AND ordering_bucket = ANY($1) \
           AND ((failed_at IS NULL AND retry_at > COALESCE($4, now())) OR ($3 AND failed_at IS NOT NULL)) \
         GROUP BY ordering_key) \
     SELECT o.id, o.resource_class, o.resource_id, o.event_name, o.topic, o.partition_key, o.changeset, \
            o.attempts, o.ordering_key, o.ordering_bucket, o.created_at, o.message, o.message_key, o.encryption_key_id \
     FROM dionysus_outbox o \
     WHERE o.published_at IS NULL AND o.failed_at IS NULL AND o.ordering_bucket = ANY($1) \
       AND o.id > LEAST($5, (SELECT COALESCE(min(r.id), $5 + 1) - 1 FROM dionysus_outbox r \
           WHERE r.published_at IS NULL AND r.failed_at IS NULL AND r.retry_at IS NOT NULL \
             AND r.ordering_bucket = ANY($1))) \
       AND (o.retry_at IS NULL OR o.retry_at <= COALESCE($4, now())) \
       AND NOT EXISTS (SELECT 1 FROM waiting w WHERE w.ordering_key = o.ordering_key AND w.first_id < o.id) \
     ORDER BY o.id LIMIT $2";

/// [`FETCH`] after `prefix` (empty, or an `EXPLAIN`), with the window's parameters bound.
fn fetch_statement<'w>(
    prefix: &str,
    window: Window<'w>,
    strict: bool,
    clock: Clock,
) -> diesel::query_builder::BoxedSqlQuery<'w, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    diesel::sql_query(format!("{prefix}{FETCH}"))
        .into_boxed()
        .bind::<Array<SmallInt>, _>(window.buckets)
        .bind::<BigInt, _>(i64::try_from(window.limit).unwrap_or(i64::MAX))
        .bind::<Bool, _>(strict)
        .bind::<Nullable<Timestamptz>, _>(clock.instant())
        .bind::<BigInt, _>(window.after)
}

#[derive(diesel::QueryableByName)]
struct Explained {
    #[diesel(sql_type = diesel::sql_types::Json)]
    #[diesel(column_name = "QUERY PLAN")]
    plan: Value,
}

/// What PostgreSQL did for [`fetch`]'s statement (`EXPLAIN (ANALYZE, FORMAT JSON)`: it runs,
/// reading nothing into the relay), for tests of its plan under realistic statistics.
pub(crate) async fn explain_fetch(
    conn: &mut AsyncPgConnection,
    window: Window<'_>,
    strict: bool,
    clock: Clock,
) -> Result<Value, diesel::result::Error> {
    let explained: Explained =
        fetch_statement("EXPLAIN (ANALYZE, FORMAT JSON) ", window, strict, clock).get_result(conn).await?;
    Ok(explained.plan)
}

#[derive(diesel::QueryableByName)]
struct Probe {
    #[diesel(sql_type = Bool)]
    pending: bool,
}

/// Whether `window` may hold a due row: one look into the pending index, much cheaper than a
/// batch's read (no ordering-key check, nothing loaded), so an idle worker can ask often.
/// A `true` may still give an empty batch (a row behind a retry of its key).
pub(crate) async fn probe(conn: &mut AsyncPgConnection, window: Window<'_>) -> Result<bool, diesel::result::Error> {
    let probe: Probe = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM dionysus_outbox \
         WHERE published_at IS NULL AND failed_at IS NULL AND ordering_bucket = ANY($1) \
           AND (id > $2 OR retry_at IS NOT NULL) AND (retry_at IS NULL OR retry_at <= now())) AS pending",
    )
    .bind::<Array<SmallInt>, _>(window.buckets)
    .bind::<BigInt, _>(window.after)
    .get_result(conn)
    .await?;
    Ok(probe.pending)
}

/// Splits rows (in id order) into those that may go now and the number held back by the
/// publishing delay: a row younger than the delay waits, and so does every later row of its
/// key.
pub(crate) fn hold_young_rows(
    rows: Vec<PendingRow>,
    delay: Duration,
    now: DateTime<Utc>,
) -> (Vec<PendingRow>, Vec<PendingRow>) {
    if delay.is_zero() {
        return (rows, Vec::new());
    }
    let horizon = now - chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::zero());
    let mut young: HashSet<String> = HashSet::new();
    let mut held = Vec::new();
    let mut eligible = Vec::with_capacity(rows.len());
    for row in rows {
        if young.contains(&row.ordering_key) {
            held.push(row);
        } else if row.created_at > horizon {
            young.insert(row.ordering_key.clone());
            held.push(row);
        } else {
            eligible.push(row);
        }
    }
    (eligible, held)
}

/// dionysus-rb's DuplicatesFilter (P-18): of each run of consecutive rows with equal
/// `(resource_class, resource_id, event_name, topic)`, only the last is published; the others
/// are returned to be marked published.
pub(crate) fn remove_consecutive_duplicates(rows: Vec<PendingRow>) -> (Vec<PendingRow>, Vec<PendingRow>) {
    let mut kept: Vec<PendingRow> = Vec::with_capacity(rows.len());
    let mut dropped = Vec::new();
    for row in rows {
        let same = kept.last().is_some_and(|last| {
            last.resource_class == row.resource_class
                && last.resource_id == row.resource_id
                && last.event_name == row.event_name
                && last.topic == row.topic
        });
        if same {
            if let Some(previous) = kept.pop() {
                dropped.push(previous);
            }
        }
        kept.push(row);
    }
    (kept, dropped)
}

/// What becomes of published rows: marked (`published_at` set) and kept until the retention
/// prunes them, or deleted at once (a retention of zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishedRows {
    /// Marked published and kept.
    Kept,
    /// Deleted as they are published: no history, and the cheapest settlement (a delete writes
    /// no new row version and no index entry; a mark writes both, and the prune deletes later).
    Deleted,
}

impl PublishedRows {
    /// The settlement `config`'s retention asks for.
    pub(crate) fn of(config: &ProducerConfig) -> PublishedRows {
        if config.retention == Some(Duration::ZERO) {
            PublishedRows::Deleted
        } else {
            PublishedRows::Kept
        }
    }
}

/// Marks rows published (or deletes them, see [`PublishedRows`]), in one autocommitted statement.
/// Its commit does not wait for the WAL flush (`synchronous_commit` set off for this
/// statement's transaction only): a mark lost in a database crash only publishes its rows
/// once more, which at-least-once delivery allows, and the flush wait is most of the
/// statement's cost. One statement, not an explicit transaction: a worker aborted mid-call
/// cannot leave a transaction open on a pooled connection, holding these rows' locks.
pub(crate) async fn mark_published(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    published: PublishedRows,
) -> Result<(), diesel::result::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let statement = match published {
        PublishedRows::Kept => {
            "UPDATE dionysus_outbox SET published_at = now(), updated_at = now(), error_class = NULL, \
             error_message = NULL, retry_at = NULL, failed_at = NULL \
             WHERE id = ANY($1) AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"
        }
        PublishedRows::Deleted => {
            "DELETE FROM dionysus_outbox \
             WHERE id = ANY($1) AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"
        }
    };
    diesel::sql_query(statement).bind::<Array<BigInt>, _>(ids).execute(conn).await?;
    Ok(())
}

/// Why a deferred observer row could not be expanded.
#[derive(Debug, thiserror::Error)]
enum ObserverError {
    /// The row names a model this binary does not know.
    #[error("no publishable model is named `{0}`")]
    UnknownModel(String),
    /// Loading the observed record failed.
    #[error("loading {model} {id}")]
    Load {
        model: &'static str,
        id: String,
        #[source]
        source: diesel::result::Error,
    },
    /// Finding the observing records failed.
    #[error("finding {owner} records observing {model} {id}")]
    Owners {
        owner: &'static str,
        model: &'static str,
        id: String,
        #[source]
        source: diesel::result::Error,
    },
    /// Writing their `_updated` rows failed.
    #[error("writing {rows} outbox row(s) for {owner} records observing {model} {id}")]
    Write {
        rows: usize,
        owner: &'static str,
        model: &'static str,
        id: String,
        #[source]
        source: diesel::result::Error,
    },
}

/// Turns a deferred observer row into `<owner>_updated` rows for every related record, page
/// by page (P-25: too many to write inside the application's transaction).
async fn expand_deferred_observers(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    row: &PendingRow,
    changeset: &Changeset,
) -> Result<usize, ObserverError> {
    const PAGE: i64 = 1000;
    let Some(model) = registry.model(&row.resource_class) else {
        return Err(ObserverError::UnknownModel(row.resource_class.clone()));
    };
    let id = &row.resource_id;
    let record: Option<Box<dyn Record>> = model
        .load_by_ids(conn, std::slice::from_ref(id))
        .await
        .map_err(|source| ObserverError::Load { model: model.model_name, id: id.clone(), source })?
        .into_iter()
        .next();
    let mut written = 0;
    for (publication, observer) in registry.observers_of(model) {
        if !observer.columns.iter().any(|column| changeset.contains(column)) {
            continue;
        }
        let owner = publication.model;
        let relation = (observer.relation)();
        // The observed record holds the owner's key: take it from the record, or from the
        // changeset when the record is gone.
        let key = match relation {
            Relation::OtherHoldsKey(column) => record
                .as_ref()
                .and_then(|record| record.attribute(column))
                .or_else(|| changeset.get(column).map(|(old, _)| old.clone())),
            Relation::OwnerHoldsKey(_) => None,
        };
        let owners_error =
            |source| ObserverError::Owners { owner: owner.model_name, model: model.model_name, id: id.clone(), source };
        let Some(filter_base) =
            related_owners_filter(owner, model, id, relation, key.as_ref()).map_err(owners_error)?
        else {
            continue;
        };
        let mut after: Option<String> = None;
        loop {
            let mut filter = filter_base.clone();
            if let Some(last) = &after {
                let value = IdValue::parse(owner.primary_key, owner.id_kind, last).map_err(owners_error)?;
                filter = filter.and(Condition::After { column: owner.primary_key, value });
            }
            let page = (owner.load)(conn, filter, Some(PAGE)).await.map_err(owners_error)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id());
            let rows: Vec<NewOutboxRow> = page
                .iter()
                .map(|owner_record| owner_updated_row(publication, owner_record.as_ref(), registry, config))
                .collect();
            written += rows.len();
            diesel::insert_into(crate::schema::dionysus_outbox::table).values(&rows).execute(conn).await.map_err(
                |source| ObserverError::Write {
                    rows: rows.len(),
                    owner: owner.model_name,
                    model: model.model_name,
                    id: id.clone(),
                    source,
                },
            )?;
            if i64::try_from(page.len()).unwrap_or(0) < PAGE {
                break;
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn keys(names: &[&str]) -> HashSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn the_batch_sent_behind_leaves_the_keys_left_unfinished_before_even_when_recording_fails() {
        let blocked = keys(&["Item:1"]);
        let recorded = Recorded { unfinished: keys(&["Item:2"]), ..Recorded::default() };
        assert_eq!(
            Recorded::left_behind(Some(&recorded), keys(&["Item:2", "Item:3"]), &blocked),
            keys(&["Item:1", "Item:2"])
        );
        // Not recorded: every key of the batch stays behind, and the keys it was told to
        // leave pass on as they do when it is recorded.
        assert_eq!(Recorded::left_behind(None, keys(&["Item:3"]), &blocked), keys(&["Item:1", "Item:3"]));
    }

    fn row(id: i64, key: &str, class_id: (&str, &str), event: &str, created: i64) -> PendingRow {
        PendingRow {
            id,
            resource_class: class_id.0.to_owned(),
            resource_id: class_id.1.to_owned(),
            event_name: event.to_owned(),
            topic: "t".to_owned(),
            partition_key: Some(key.to_owned()),
            changeset: Value::Null,
            attempts: 0,
            ordering_key: key.to_owned(),
            ordering_bucket: 0,
            created_at: Utc.timestamp_opt(created, 0).single().unwrap(),
            message: None,
            message_key: None,
            encryption_key_id: None,
        }
    }

    #[test]
    fn publishing_delay_holds_young_rows_and_their_successors() {
        let now = Utc.timestamp_opt(100, 0).single().unwrap();
        let rows =
            vec![row(1, "a", ("R", "1"), "e", 98), row(2, "b", ("R", "2"), "e", 90), row(3, "a", ("R", "3"), "e", 50)];
        let (eligible, held) = hold_young_rows(rows, Duration::from_secs(5), now);
        assert_eq!(eligible.iter().map(|r| r.id).collect::<Vec<_>>(), [2], "row 3 is old but must follow row 1");
        assert_eq!(held.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
    }

    fn failed() -> Outcome {
        Outcome::Failed(Failure { class: "KafkaError", message: "Message timed out".to_owned() })
    }

    #[test]
    fn a_row_delivered_behind_a_failed_row_of_its_key_stays_pending() {
        let rows = vec![
            row(1, "a", ("R", "1"), "e", 0),
            row(2, "b", ("R", "2"), "e", 0),
            row(3, "a", ("R", "3"), "e", 0),
            row(4, "a", ("R", "4"), "e", 0),
            row(5, "b", ("R", "5"), "e", 0),
        ];
        let outcomes = vec![failed(), Outcome::Delivered, Outcome::Delivered, failed(), Outcome::NothingToSend];
        let settled = settle(&rows, outcomes);
        assert_eq!(settled.delivered.iter().map(|r| r.id).collect::<Vec<_>>(), [2], "row 3 is behind row 1");
        assert_eq!(settled.nothing_to_send.iter().map(|r| r.id).collect::<Vec<_>>(), [5]);
        assert_eq!(settled.failures.iter().map(|(r, _)| r.id).collect::<Vec<_>>(), [1, 4]);
        assert_eq!((settled.left_pending, settled.redelivered), (1, 1));
    }

    #[test]
    fn rows_not_sent_behind_a_failure_are_left_as_they_were() {
        let rows = vec![row(1, "a", ("R", "1"), "e", 0), row(2, "a", ("R", "2"), "e", 0)];
        let settled = settle(&rows, vec![failed(), Outcome::NotSent]);
        assert!(settled.delivered.is_empty());
        assert_eq!(settled.failures.len(), 1);
        assert_eq!((settled.left_pending, settled.redelivered), (1, 0));
    }

    fn outcome(code: u8) -> Outcome {
        match code {
            0 => Outcome::Delivered,
            1 => Outcome::NothingToSend,
            2 => failed(),
            _ => Outcome::NotSent,
        }
    }

    /// What a settlement marks: delivered, nothing to send, failed (ids), left pending,
    /// redelivered.
    fn marks(settled: &Settled<'_>) -> (Vec<i64>, Vec<i64>, Vec<i64>, usize, usize) {
        (
            settled.delivered.iter().map(|r| r.id).collect(),
            settled.nothing_to_send.iter().map(|r| r.id).collect(),
            settled.failures.iter().map(|(r, _)| r.id).collect(),
            settled.left_pending,
            settled.redelivered,
        )
    }

    proptest::proptest! {
        /// A batch sent while the one before it is in flight, settled behind the keys that one
        /// left unfinished, is marked exactly as the two would be as one batch.
        #[test]
        fn two_batches_in_flight_settle_as_one(
            cells in proptest::collection::vec((0u8..4, 0u8..4), 0..24),
            split in 0usize..24,
        ) {
            let rows: Vec<PendingRow> = cells
                .iter()
                .zip(1..)
                .map(|((key, _), id)| row(id, &format!("k{key}"), ("R", "1"), "e", 0))
                .collect();
            let codes: Vec<u8> = cells.iter().map(|(_, code)| *code).collect();
            let split = split.min(rows.len());
            let whole = settle(&rows, codes.iter().map(|code| outcome(*code)).collect());
            let first = settle(&rows[..split], codes[..split].iter().map(|code| outcome(*code)).collect());
            let unfinished: HashSet<String> = first.failures.iter().map(|(r, _)| r.ordering_key.clone()).collect();
            let second =
                settle_behind(&rows[split..], codes[split..].iter().map(|code| outcome(*code)).collect(), &unfinished);
            let (first, second) = (marks(&first), marks(&second));
            let joined = (
                [first.0, second.0].concat(),
                [first.1, second.1].concat(),
                [first.2, second.2].concat(),
                first.3 + second.3,
                first.4 + second.4,
            );
            proptest::prop_assert_eq!(joined, marks(&whole));
        }
    }

    #[test]
    fn only_consecutive_duplicates_collapse_to_the_last() {
        // Vector p33.
        let rows = vec![
            row(1, "k", ("R", "1"), "r_updated", 0),
            row(2, "k", ("R", "1"), "r_updated", 0),
            row(3, "k", ("R", "2"), "r_updated", 0),
            row(4, "k", ("R", "1"), "r_updated", 0),
            row(5, "k", ("R", "1"), "r_destroyed", 0),
        ];
        let (kept, dropped) = remove_consecutive_duplicates(rows);
        assert_eq!(kept.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert_eq!(dropped.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    }
}
