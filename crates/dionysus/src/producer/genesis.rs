//! Genesis: re-publishing every record of a model (optionally only those updated in a
//! window) to a topic — and to its `_genesis` replica, or to the replica only — spread
//! evenly over a duration, resumable.
//!
//! A run is a row of `dionysus_genesis_runs`. It pages through the model by primary key
//! (keyset paging, one query per batch; the page is serialized as loaded, only its
//! `with(...)` sideloads are queried), publishes each record as `<model>_updated`, or
//! `<model>_destroyed` when it is soft-deleted (G-6; genesis never emits `_created`),
//! through the same envelope, key and partition rules as the relay, awaits the broker's
//! acknowledgements, and only then moves the run's cursor. Killed and started again, it
//! continues after the cursor: nothing is published twice beyond the batch that was in
//! flight. Batches are scheduled evenly over the requested duration (`--over 2d`; any
//! duration, where dionysus-rb truncates to whole days), and the end emits a "genesis
//! performed" event (W-17). Genesis writes no outbox rows.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, RetryableWithContext};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::handle::Dionysus;
use crate::producer::plan::{self, RowPlan, RowRef};
use crate::producer::sender::{self, Sender, TopicCache};
use crate::registry::model::{Condition, IdValue, ModelEntry, Record, RecordFilter};
use crate::registry::{Registry, TopicRole};
use crate::schema::dionysus_genesis_runs as runs;
use crate::telemetry::Report;
use crate::wire::naming::{self, EventKind};

/// What to re-publish.
#[derive(Debug, Clone, PartialEq)]
pub struct GenesisRequest {
    /// Model name (`Rental`).
    pub model: String,
    /// Topic: the primary name publishes to the topic and its replica (if any); the
    /// `_genesis` name publishes to the replica only.
    pub topic: String,
    /// Only records whose `updated_at` lies in this window (inclusive).
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Spread the batches evenly over this duration (zero: as fast as possible).
    pub over: Duration,
    /// Records per batch.
    pub batch_size: usize,
    /// Skip soft-deleted records (they are published as `_destroyed` otherwise).
    pub visible_only: bool,
    /// Only records whose column equals the value, for every `(column, value)` (dionysus-rb's
    /// `query_conditions`, G-4). Columns must be fields of the model; values are bound as
    /// parameters and compared with the column's text form (`account_id = "7"` matches the
    /// integer 7, a boolean column matches `"true"`/`"false"`).
    pub conditions: Vec<(String, String)>,
}

impl GenesisRequest {
    /// A request for every record of `model` on `topic`, as fast as possible, 1000 per batch.
    pub fn new(model: impl Into<String>, topic: impl Into<String>) -> GenesisRequest {
        GenesisRequest {
            model: model.into(),
            topic: topic.into(),
            window: None,
            over: Duration::ZERO,
            batch_size: 1000,
            visible_only: false,
            conditions: Vec::new(),
        }
    }

    /// Adds an equality filter (`--where column=value`).
    #[must_use]
    pub fn filter_eq(mut self, column: impl Into<String>, value: impl Into<String>) -> GenesisRequest {
        self.conditions.push((column.into(), value.into()));
        self
    }
}

/// A genesis run as stored.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = runs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct GenesisRun {
    /// Run id.
    pub id: i64,
    /// Model name.
    pub model: String,
    /// Topic.
    pub topic: String,
    /// Window start.
    pub window_from: Option<DateTime<Utc>>,
    /// Window end.
    pub window_to: Option<DateTime<Utc>>,
    /// Duration to spread over, in seconds.
    pub spread_seconds: f64,
    /// Records per batch.
    pub batch_size: i32,
    /// Last primary key published.
    pub cursor: Option<String>,
    /// Records to publish (counted when the run was created).
    pub total_count: Option<i64>,
    /// Records published so far.
    pub published_count: i64,
    /// pending, running, completed, failed or canceled.
    pub status: String,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Changed at.
    pub updated_at: DateTime<Utc>,
    /// Skip soft-deleted records.
    pub visible_only: bool,
    /// Equality filters, `[["column", "value"], …]` (see [`GenesisRequest::conditions`]).
    pub conditions: serde_json::Value,
}

impl GenesisRun {
    /// The run's equality filters as `(column, value)` pairs.
    pub fn conditions(&self) -> Vec<(String, String)> {
        let Some(pairs) = self.conditions.as_array() else { return Vec::new() };
        pairs
            .iter()
            .filter_map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([serde_json::Value::String(column), serde_json::Value::String(value)]) => {
                    Some((column.clone(), value.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// dionysus-rb's `Genesis::Performed` event: the window in which consumers receive the run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenesisPerformed {
    /// Model name.
    pub model: String,
    /// The publishing service (`publisher_service_name`).
    pub service: String,
    /// Topic.
    pub topic: String,
    /// When the run started.
    pub start_at: DateTime<Utc>,
    /// Start + the spread duration + `genesis_consistency_safety_delay`.
    pub end_at: DateTime<Utc>,
}

/// A genesis could not start or complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    /// No publishable model has this name.
    #[error("no publishable model is named `{model}`; known models: {known}")]
    UnknownModel {
        /// The name given.
        model: String,
        /// The registry's models.
        known: String,
    },
    /// The topic is neither declared nor a declared topic's genesis replica.
    #[error("`{topic}` is not a declared topic (nor the `_genesis` replica of one); declared: {known}")]
    UnknownTopic {
        /// The name given.
        topic: String,
        /// The declared topics.
        known: String,
    },
    /// The model is only a `with(...)` dependency on the topic (G-1).
    #[error("Cannot execute genesis for model {model}, {topic} because that is only a dependency. Execute it for parent instead")]
    OnlyDependency {
        /// Model.
        model: String,
        /// Topic.
        topic: String,
    },
    /// The model is not published on the topic.
    #[error("model `{model}` is not published on `{topic}`; it is published on: {published}")]
    NotPublished {
        /// Model.
        model: String,
        /// Topic.
        topic: String,
        /// Its topics.
        published: String,
    },
    /// A `--where` filter names a column the model does not have.
    #[error("model `{model}` has no column `{column}` to filter genesis by; its columns: {columns}")]
    UnknownColumn {
        /// Model.
        model: String,
        /// The column given.
        column: String,
        /// The model's columns.
        columns: String,
    },
    /// A window needs an `updated_at` column.
    #[error("model `{0}` has no `updated_at` column, so it cannot be filtered by a time window")]
    NoUpdatedAt(String),
    /// The run does not exist or is already finished.
    #[error("genesis run {0} does not exist or is already completed")]
    NoSuchRun(i64),
    /// Recording a new run failed.
    #[error("recording a genesis run of {model} on {topic}")]
    Record {
        /// Model.
        model: &'static str,
        /// Topic.
        topic: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// Listing the unfinished runs failed.
    #[error("listing unfinished genesis runs")]
    List(#[source] diesel::result::Error),
    /// Reading or updating a run failed.
    #[error("{step} genesis run {run_id}")]
    Run {
        /// What was being done.
        step: RunStep,
        /// The run.
        run_id: i64,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// Loading the next page of records failed.
    #[error("loading {model} records after {after:?}")]
    Load {
        /// Model.
        model: &'static str,
        /// The last primary key published (the page starts after it).
        after: Option<String>,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// Counting the records to publish failed.
    #[error("counting {model} records")]
    Count {
        /// Model.
        model: &'static str,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// A batch could not be published after retries; the run can be resumed from it.
    #[error("publishing the genesis batch after {after:?}")]
    Publish {
        /// The last primary key published before the batch.
        after: Option<String>,
        /// Why the last attempt failed (planning the batch's messages, or the broker).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The database or broker could not be used.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The producer could not be created.
    #[error(transparent)]
    Transport(#[from] crate::kafka::TransportError),
}

/// A step of a stored genesis run (in [`GenesisError::Run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunStep {
    /// Reading the run.
    Read,
    /// Marking it running.
    Start,
    /// Storing its cursor after a batch.
    Advance,
    /// Marking it completed.
    Complete,
    /// Storing its status.
    SetStatus,
}

impl std::fmt::Display for RunStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStep::Read => "reading",
            RunStep::Start => "starting",
            RunStep::Advance => "advancing",
            RunStep::Complete => "completing",
            RunStep::SetStatus => "updating the status of",
        })
    }
}

/// The error of a batch attempt, kept whole for [`GenesisError::Publish`].
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn run_error(step: RunStep, run_id: i64) -> impl FnOnce(diesel::result::Error) -> GenesisError {
    move |source| GenesisError::Run { step, run_id, source }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GenesisReport {
    /// The run.
    pub run_id: i64,
    /// Records published by this call.
    pub published: i64,
    /// Whether the run completed (`false` when it was stopped by the shutdown token).
    pub completed: bool,
    /// The performed event, when completed.
    pub performed: Option<GenesisPerformed>,
}

/// Told how a genesis run advances, e.g. to draw a progress bar (the command line draws one
/// with indicatif). Every method does nothing by default; `()` is the listener that listens to
/// nothing.
pub trait Progress: Send + Sync {
    /// The run starts (or resumes) with `total` records, `done` of them already published.
    fn started(&self, total: u64, done: u64) {
        let _ = (total, done);
    }
    /// `records` more were published.
    fn advanced(&self, records: u64) {
        let _ = records;
    }
    /// The run completed.
    fn finished(&self) {}
}

impl Progress for () {}

/// Runs geneses.
pub struct Genesis {
    config: Config,
    registry: Arc<Registry>,
    pool: crate::db::Pool,
    producer: crate::kafka::Producer,
    topics: TopicCache,
    #[cfg(feature = "avro")]
    avro: crate::producer::avro::Encoder,
}

impl std::fmt::Debug for Genesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Genesis").finish_non_exhaustive()
    }
}

impl Genesis {
    /// A genesis runner over `registry`, with its own idempotent producer.
    pub fn new(
        config: Config,
        registry: impl Into<Arc<Registry>>,
        pool: crate::db::Pool,
    ) -> Result<Genesis, GenesisError> {
        let registry = registry.into();
        let producer = crate::kafka::producer(&config.kafka)?;
        Ok(Genesis {
            #[cfg(feature = "avro")]
            avro: crate::producer::avro::Encoder::new(&config.schemas),
            config,
            registry,
            pool,
            producer,
            topics: TopicCache::default(),
        })
    }

    /// Checks the request (G-1, G-7) and records a pending run; returns it.
    pub async fn start(&self, request: &GenesisRequest) -> Result<GenesisRun, GenesisError> {
        let model = self.model(&request.model)?;
        self.check_topic(model, &request.topic)?;
        if request.window.is_some() && !model.attributes.contains(&"updated_at") {
            return Err(GenesisError::NoUpdatedAt(model.model_name.to_owned()));
        }
        let conditions = conditions_of(model, &request.conditions)?;
        let mut conn = crate::db::checkout(&self.pool).await?;
        let total = self.count(&mut conn, model, request, &conditions).await?;
        let stored: Vec<[&str; 2]> = request.conditions.iter().map(|(c, v)| [c.as_str(), v.as_str()]).collect();
        diesel::insert_into(runs::table)
            .values((
                runs::model.eq(model.model_name),
                runs::topic.eq(&request.topic),
                runs::window_from.eq(request.window.map(|w| w.0)),
                runs::window_to.eq(request.window.map(|w| w.1)),
                runs::spread_seconds.eq(request.over.as_secs_f64()),
                runs::batch_size.eq(i32::try_from(request.batch_size.max(1)).unwrap_or(i32::MAX)),
                runs::total_count.eq(total),
                runs::status.eq("pending"),
                runs::visible_only.eq(request.visible_only),
                runs::conditions.eq(serde_json::json!(stored)),
            ))
            .returning(GenesisRun::as_returning())
            .get_result(&mut conn)
            .await
            .map_err(|source| GenesisError::Record { model: model.model_name, topic: request.topic.clone(), source })
    }

    /// Runs that started and did not complete (to resume after a crash).
    pub async fn unfinished(&self) -> Result<Vec<GenesisRun>, GenesisError> {
        let mut conn = crate::db::checkout(&self.pool).await?;
        runs::table
            .filter(runs::status.ne_all(["completed", "canceled"]))
            .order(runs::id)
            .select(GenesisRun::as_select())
            .load(&mut conn)
            .await
            .map_err(GenesisError::List)
    }

    /// Runs (or resumes) run `run_id` until it completes or `shutdown` is cancelled,
    /// telling `progress` how it advances (`&()` for nobody).
    pub async fn run(
        &self,
        run_id: i64,
        progress: &dyn Progress,
        shutdown: &CancellationToken,
    ) -> Result<GenesisReport, GenesisError> {
        let mut conn = crate::db::checkout(&self.pool).await?;
        let run: GenesisRun = runs::table
            .find(run_id)
            .select(GenesisRun::as_select())
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(run_error(RunStep::Read, run_id))?
            .ok_or(GenesisError::NoSuchRun(run_id))?;
        let visible_only = run.visible_only;
        let model = self.model(&run.model)?;
        let conditions = conditions_of(model, &run.conditions())?;
        if run.status == "completed" {
            return Err(GenesisError::NoSuchRun(run_id));
        }
        self.check_topic(model, &run.topic)?;
        let started_at = run.started_at.unwrap_or_else(Utc::now);
        diesel::update(runs::table.find(run_id))
            .set((runs::status.eq("running"), runs::started_at.eq(started_at), runs::updated_at.eq(Utc::now())))
            .execute(&mut conn)
            .await
            .map_err(run_error(RunStep::Start, run_id))?;

        let batch_size = i64::from(run.batch_size.max(1));
        let total = run.total_count.unwrap_or(0).max(run.published_count);
        progress.started(u64::try_from(total).unwrap_or(0), u64::try_from(run.published_count).unwrap_or(0));
        let over = Duration::from_secs_f64(run.spread_seconds.max(0.0));
        let deadline = started_at + chrono::Duration::from_std(over).unwrap_or_else(|_| chrono::Duration::zero());
        let remaining_batches = ((total - run.published_count).max(0) + batch_size - 1) / batch_size;
        let remaining_time = (deadline - Utc::now()).to_std().unwrap_or_default();
        let interval = if remaining_batches > 0 {
            remaining_time / u32::try_from(remaining_batches).unwrap_or(u32::MAX)
        } else {
            Duration::ZERO
        };
        let schedule_start = tokio::time::Instant::now();

        let mut cursor = run.cursor.clone();
        let mut published = 0_i64;
        let mut batch_index = 0_u32;
        loop {
            if shutdown.is_cancelled() {
                self.set_status(&mut conn, run_id, "pending", None).await?;
                return Ok(GenesisReport { run_id, published, completed: false, performed: None });
            }
            let due = schedule_start + interval * batch_index;
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = shutdown.cancelled() => continue,
            }
            let filter = self.filter(model, &run, visible_only, &conditions, cursor.as_deref())?;
            let page = (model.load)(&mut conn, filter, Some(batch_size))
                .await
                .map_err(|source| GenesisError::Load { model: model.model_name, after: cursor.clone(), source })?;
            let Some(last) = page.last().map(|record| record.id()) else { break };
            let soft_column = model.soft_delete_column(&self.config.producer.soft_delete_column);
            let refs: Vec<RowRef> = page
                .iter()
                .map(|record| {
                    let deleted =
                        soft_column.is_some_and(|column| record.attribute(column).is_some_and(|v| !v.is_null()));
                    let kind = if deleted { EventKind::Destroyed } else { EventKind::Updated };
                    RowRef {
                        id: 0,
                        resource_class: model.model_name.to_owned(),
                        resource_id: record.id(),
                        event_name: naming::event_name(model.model_name, kind),
                        topic: run.topic.clone(),
                        partition_key: None,
                        composed: None,
                    }
                })
                .collect();
            if let Err(error) = self.publish_batch(&mut conn, &refs, &page, cursor.as_deref()).await {
                self.set_status(&mut conn, run_id, "failed", Some(&Report(&error).to_string())).await?;
                return Err(error);
            }
            let count = i64::try_from(page.len()).unwrap_or(0);
            published += count;
            diesel::update(runs::table.find(run_id))
                .set((
                    runs::cursor.eq(&last),
                    runs::published_count.eq(runs::published_count + count),
                    runs::updated_at.eq(Utc::now()),
                ))
                .execute(&mut conn)
                .await
                .map_err(run_error(RunStep::Advance, run_id))?;
            progress.advanced(u64::try_from(count).unwrap_or(0));
            cursor = Some(last);
            batch_index += 1;
            if count < batch_size {
                break;
            }
        }
        diesel::update(runs::table.find(run_id))
            .set((runs::status.eq("completed"), runs::finished_at.eq(Utc::now()), runs::updated_at.eq(Utc::now())))
            .execute(&mut conn)
            .await
            .map_err(run_error(RunStep::Complete, run_id))?;
        progress.finished();
        let safety = chrono::Duration::from_std(self.config.producer.genesis_consistency_safety_delay)
            .unwrap_or_else(|_| chrono::Duration::zero());
        let performed = GenesisPerformed {
            model: model.model_name.to_owned(),
            service: self.config.producer.publisher_service_name.clone(),
            topic: run.topic.clone(),
            start_at: started_at,
            end_at: deadline + safety,
        };
        tracing::info!(
            event = "dionysus.producer.genesis.performed",
            model = %performed.model, service = %performed.service, topic = %performed.topic,
            start_at = %performed.start_at, end_at = %performed.end_at, "genesis performed"
        );
        Ok(GenesisReport { run_id, published, completed: true, performed: Some(performed) })
    }

    /// Publishes one batch of loaded records, retrying it a few times before failing the run.
    async fn publish_batch<'c>(
        &self,
        conn: &'c mut AsyncPgConnection,
        refs: &[RowRef],
        page: &[Box<dyn Record>],
        after: Option<&str>,
    ) -> Result<(), GenesisError> {
        let sender = Sender {
            producer: &self.producer,
            topics: &self.topics,
            kafka: &self.config.kafka,
            registry: &self.registry,
            auto_create_topics: false,
        };
        // A batch that fails is tried again a few times (the broker may be restarting); its
        // run stays resumable from the last published batch if it still fails.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(400))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(4)
            .with_jitter();
        let attempt = |conn: &'c mut AsyncPgConnection| {
            let sender = &sender;
            async move {
                let outcome = self.try_publish(conn, sender, refs, page).await;
                (conn, outcome)
            }
        };
        let (_, outcome) = attempt
            .retry(backoff)
            .context(conn)
            .notify(|error: &BoxError, wait| {
                tracing::warn!(?wait, "genesis batch after {after:?} failed, trying again: {}", Report(&**error));
            })
            .await;
        outcome.map_err(|source| GenesisError::Publish { after: after.map(str::to_owned), source })
    }

    async fn try_publish(
        &self,
        conn: &mut AsyncPgConnection,
        sender: &Sender<'_>,
        refs: &[RowRef],
        page: &[Box<dyn Record>],
    ) -> Result<(), BoxError> {
        let plans = plan::plan_loaded_rows(conn, &self.registry, &self.config.producer, refs, page).await?;
        let mut in_flight = Vec::with_capacity(plans.len());
        for plan in plans {
            match plan {
                RowPlan::Publish(messages) => {
                    in_flight.push(sender.send(&messages).await?);
                }
                RowPlan::Avro(row) => in_flight.push(self.send_avro(sender, &row).await?),
                RowPlan::Skip(reason) => tracing::debug!("genesis skipped a record: {reason}"),
                RowPlan::DeferredObservers => {}
                RowPlan::Fail(error) => return Err(error.into()),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for deliveries in in_flight {
            sender::await_deliveries(deliveries, deadline).await.map_err(|failure| failure.error)?;
        }
        Ok(())
    }

    /// Encodes a row of an Avro topic and hands its messages to the producer.
    async fn send_avro(
        &self,
        sender: &Sender<'_>,
        row: &plan::AvroRow,
    ) -> Result<Vec<rdkafka::producer::DeliveryFuture>, BoxError> {
        #[cfg(feature = "avro")]
        {
            let messages = self.avro.messages(row).await.map_err(|failure| failure.message)?;
            Ok(sender.send_raw(&messages).await?)
        }
        #[cfg(not(feature = "avro"))]
        {
            let _ = sender;
            Err(plan::PlanError::AvroTopic(row.topics.join(", ")).into())
        }
    }

    fn model(&self, name: &str) -> Result<&'static ModelEntry, GenesisError> {
        self.registry.model(name).ok_or_else(|| GenesisError::UnknownModel {
            model: name.to_owned(),
            known: self.registry.models().iter().map(|m| m.model_name).collect::<Vec<_>>().join(", "),
        })
    }

    fn check_topic(&self, model: &ModelEntry, topic: &str) -> Result<(), GenesisError> {
        let Some((declaration, _role @ (TopicRole::Primary | TopicRole::Genesis))) = self.registry.resolve(topic)
        else {
            let known = self.registry.topic_names().join(", ");
            return Err(GenesisError::UnknownTopic { topic: topic.to_owned(), known });
        };
        if !self.registry.publications_on(model.model_name, topic).is_empty() {
            return Ok(());
        }
        let dependency = self
            .registry
            .dependents_of(model)
            .iter()
            .any(|(publication, _)| publication.topic == declaration.full_name);
        if dependency {
            return Err(GenesisError::OnlyDependency { model: model.model_name.to_owned(), topic: topic.to_owned() });
        }
        Err(GenesisError::NotPublished {
            model: model.model_name.to_owned(),
            topic: topic.to_owned(),
            published: self.registry.publications_of(model.model_name).map(|p| p.topic).collect::<Vec<_>>().join(", "),
        })
    }

    fn filter(
        &self,
        model: &ModelEntry,
        run: &GenesisRun,
        visible_only: bool,
        conditions: &[(&'static str, String)],
        cursor: Option<&str>,
    ) -> Result<RecordFilter, GenesisError> {
        let mut filter = RecordFilter::default();
        if let Some(after) = cursor {
            let value = IdValue::parse(model.primary_key, model.id_kind, after).map_err(|source| {
                GenesisError::Load { model: model.model_name, after: Some(after.to_owned()), source }
            })?;
            filter = filter.and(Condition::After { column: model.primary_key, value });
        }
        if let (Some(from), Some(to)) = (run.window_from, run.window_to) {
            filter = filter.and(Condition::Between { column: "updated_at", from, to });
        }
        if visible_only {
            if let Some(column) = model.soft_delete_column(&self.config.producer.soft_delete_column) {
                let column: &'static str =
                    model.attributes.iter().copied().find(|a| *a == column).unwrap_or("canceled_at");
                filter = filter.and(Condition::IsNull(column));
            }
        }
        for (column, value) in conditions {
            filter = filter.and(Condition::TextEquals { column, value: value.clone() });
        }
        Ok(filter)
    }

    async fn count(
        &self,
        conn: &mut AsyncPgConnection,
        model: &ModelEntry,
        request: &GenesisRequest,
        conditions: &[(&'static str, String)],
    ) -> Result<i64, GenesisError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let mut sql = format!("SELECT count(*) AS count FROM \"{}\" WHERE TRUE", model.table.replace('"', "\"\""));
        if request.visible_only {
            if let Some(column) = model.soft_delete_column(&self.config.producer.soft_delete_column) {
                sql.push_str(&format!(" AND \"{column}\" IS NULL"));
            }
        }
        let mut parameter = 0;
        let mut next = || {
            parameter += 1;
            parameter
        };
        if request.window.is_some() {
            sql.push_str(&format!(" AND updated_at BETWEEN ${} AND ${}", next(), next()));
        }
        for (column, _) in conditions {
            sql.push_str(&format!(" AND \"{column}\"::text = ${}", next()));
        }
        let mut statement = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
        if let Some((from, to)) = request.window {
            statement =
                statement.bind::<diesel::sql_types::Timestamptz, _>(from).bind::<diesel::sql_types::Timestamptz, _>(to);
        }
        for (_, value) in conditions {
            statement = statement.bind::<diesel::sql_types::Text, _>(value.clone());
        }
        let count: Count = statement
            .get_result(conn)
            .await
            .map_err(|source| GenesisError::Count { model: model.model_name, source })?;
        Ok(count.count)
    }

    async fn set_status(
        &self,
        conn: &mut AsyncPgConnection,
        run_id: i64,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), GenesisError> {
        diesel::update(runs::table.find(run_id))
            .set((runs::status.eq(status), runs::error_message.eq(error), runs::updated_at.eq(Utc::now())))
            .execute(conn)
            .await
            .map(drop)
            .map_err(run_error(RunStep::SetStatus, run_id))
    }
}

/// Checks `--where` columns against the model's columns (its fields), giving each as the
/// model's own `'static` column name.
fn conditions_of(
    model: &ModelEntry,
    conditions: &[(String, String)],
) -> Result<Vec<(&'static str, String)>, GenesisError> {
    conditions
        .iter()
        .map(|(column, value)| match model.attributes.iter().copied().find(|a| a == column) {
            Some(known) => Ok((known, value.clone())),
            None => Err(GenesisError::UnknownColumn {
                model: model.model_name.to_owned(),
                column: column.clone(),
                columns: model.attributes.join(", "),
            }),
        })
        .collect()
}

impl Dionysus {
    /// A genesis runner over this handle's configuration and declarations, with a pool of
    /// `connections` to the configured database.
    pub fn genesis(&self, connections: usize) -> Result<Genesis, GenesisError> {
        let pool = crate::db::pool(&self.config().database_url, connections.max(1))?;
        Genesis::new(self.config().clone(), self.registry_arc(), pool)
    }
}
