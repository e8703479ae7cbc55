//! The checkpoint log: events that checkpointed handlers acknowledged, and the events whose
//! handling failed, read, retried and deleted through [`Checkpoints`] (what the `dionysus
//! events …` and `dionysus failures …` commands and the events API use).
//!
//! A handler opts in with `#[dionysus::consume(topic = …, event = …, checkpoint)]`. It then
//! runs inside the batch's transaction and ends with [`Context::ack`](crate::Context::ack)
//! (or returns an [`Ack`]): the event is saved in `dionysus_events` in that same
//! transaction, with the handler's own writes. Each event is identified per consumer group
//! and handler by its [`checksum`]: an event already saved is skipped without calling the
//! handler (`event_already_consumed`); a handler that returns without acknowledging saves
//! nothing (`event_skipped`).
//!
//! A failing checkpointed handler is tried again within its batch
//! ([`ConsumerConfig::checkpoint_attempts`](crate::config::ConsumerConfig::checkpoint_attempts),
//! its writes rolled back each time), then its [`FailurePolicy`] decides (the handler's
//! `on_failure`, else
//! [`ConsumerConfig::checkpoint_on_failure`](crate::config::ConsumerConfig::checkpoint_on_failure)):
//! `record` (the default) writes the event, its metadata and the error with its chain of sources to
//! `dionysus_event_failures` and the partition moves on; `dead_letter` sends the message to
//! the dead-letter topic; `block` keeps the partition waiting. The same event failing
//! again updates its failure row (attempts, last failure time). A database error of the
//! handler's that is worth retrying (a broken connection, a serialization failure) is the
//! consumer's own fault: the batch is retried and nothing is recorded.
//!
//! [`Checkpoints::retry_failure`] runs the handler again on the stored message, in one
//! transaction with the checkpoint writes: on success the failure row is deleted and the
//! event saved (when acknowledged); on failure the row's attempts and error are updated.
//!
//! Notifications (tracing events with target `dionysus::checkpoint`, and counters
//! `dionysus_checkpoint_event_acknowledged_total`, `…_event_skipped_total`,
//! `…_event_already_consumed_total`, `…_event_failed_total`) carry the listener (the
//! handler's path), group, topic, key, partition, offset, retry count and checksum.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, TransactionManager};
use serde::{Serialize, Serializer};
use serde_json::Value;

pub use crate::consumer::checkpoint::checksum;
use crate::consumer::checkpoint::{self as store, ErrorParts, Origin};
use crate::consumer::handler::{handlers, Context, HandlerDeclaration};
pub use crate::consumer::handler::{Ack, FailurePolicy, UnknownFailurePolicy};
use crate::consumer::InboundMessage;
use crate::db::{DbError, Pool};
use crate::schema::{dionysus_event_failures as failures, dionysus_events as events};
use crate::telemetry::Report;

/// The transaction manager of the store's connections.
type Transactions = <AsyncPgConnection as AsyncConnection>::TransactionManager;

/// The default page size of a listing.
pub const DEFAULT_LIMIT: u32 = 20;
/// The largest page size a listing accepts.
pub const MAX_LIMIT: u32 = 1000;

/// The checkpoint log in the database: events and failures, listed, shown, retried and
/// deleted. Cheap to clone.
#[derive(Clone)]
pub struct Checkpoints {
    pool: Pool,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").finish_non_exhaustive()
    }
}

/// Which rows a listing returns: a page (`limit`, `offset`) of the newest first, narrowed
/// by equality filters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Rows per page: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub limit: u32,
    /// Rows skipped (default 0).
    pub offset: u64,
    /// Only this entity id.
    pub entity_id: Option<String>,
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this consumer group.
    pub group_id: Option<String>,
    /// Only this event type (`rental_updated`).
    pub event_type: Option<String>,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter { limit: DEFAULT_LIMIT, offset: 0, entity_id: None, topic: None, group_id: None, event_type: None }
    }
}

impl EventFilter {
    /// `items` as the page this filter asked for.
    fn page<T>(&self, items: Vec<T>) -> Page<T> {
        Page { items, limit: self.limit, offset: self.offset }
    }

    /// The first page of everything.
    pub fn new() -> EventFilter {
        EventFilter::default()
    }

    /// The same filter with another page size.
    #[must_use]
    pub fn limit(mut self, limit: u32) -> EventFilter {
        self.limit = limit;
        self
    }

    /// The same filter skipping `offset` rows.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> EventFilter {
        self.offset = offset;
        self
    }

    /// The same filter narrowed to one entity id.
    #[must_use]
    pub fn entity_id(mut self, entity_id: impl Into<String>) -> EventFilter {
        self.entity_id = Some(entity_id.into());
        self
    }

    /// The same filter narrowed to one topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> EventFilter {
        self.topic = Some(topic.into());
        self
    }

    /// The same filter narrowed to one consumer group.
    #[must_use]
    pub fn group_id(mut self, group_id: impl Into<String>) -> EventFilter {
        self.group_id = Some(group_id.into());
        self
    }

    /// The same filter narrowed to one event type.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> EventFilter {
        self.event_type = Some(event_type.into());
        self
    }

    /// A filter from query parameters (`limit`, `offset`, `entity_id`, `topic`, `group_id`,
    /// `event_type`), validated. Empty values leave a filter out; other parameters are
    /// ignored. The error names the parameter.
    pub fn parse<'a>(parameters: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<EventFilter, CheckpointError> {
        let mut filter = EventFilter::default();
        for (name, value) in parameters {
            let text = || (!value.is_empty()).then(|| value.to_owned());
            match name {
                "limit" => {
                    filter.limit = value.parse().map_err(|_| CheckpointError::InvalidFilter {
                        parameter: "limit",
                        given: value.to_owned(),
                        expected: LIMIT_RANGE,
                    })?;
                }
                "offset" => {
                    filter.offset = value.parse().map_err(|_| CheckpointError::InvalidFilter {
                        parameter: "offset",
                        given: value.to_owned(),
                        expected: "an integer ≥ 0",
                    })?;
                }
                "entity_id" => filter.entity_id = text(),
                "topic" => filter.topic = text(),
                "group_id" => filter.group_id = text(),
                "event_type" => filter.event_type = text(),
                _ => {}
            }
        }
        filter.validate()?;
        Ok(filter)
    }

    /// Checks the bounds: `limit` from 1 to [`MAX_LIMIT`], `offset` at most `i64::MAX`.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err(CheckpointError::InvalidFilter {
                parameter: "limit",
                given: self.limit.to_string(),
                expected: LIMIT_RANGE,
            });
        }
        if i64::try_from(self.offset).is_err() {
            return Err(CheckpointError::InvalidFilter {
                parameter: "offset",
                given: self.offset.to_string(),
                expected: "an integer from 0 to 9223372036854775807",
            });
        }
        Ok(())
    }
}

const LIMIT_RANGE: &str = "an integer from 1 to 1000";

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Page<T> {
    /// The rows, newest first.
    pub items: Vec<T>,
    /// The page size asked for.
    pub limit: u32,
    /// The rows skipped.
    pub offset: u64,
}

/// An event in the checkpoint log. Serialized as the events API shows it (dionysus-rb's
/// checkpoint gem's shape: `payload` as JSON text), with `listener`, `key`, `partition` and
/// `offset` added.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventRecord {
    /// Row id.
    pub id: i64,
    /// Topic of the message.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Path of the handler that acknowledged it.
    pub listener: String,
    /// The acknowledged entity id.
    pub entity_id: Option<String>,
    /// The acknowledged event time.
    pub event_time: Option<DateTime<Utc>>,
    /// Event name.
    pub event_type: Option<String>,
    /// Event version, when the handler gave one.
    pub event_version: Option<String>,
    /// The event's [`checksum`].
    pub checksum: String,
    /// The message's envelope (`null` for a tombstone).
    #[serde(serialize_with = "as_json_text")]
    pub payload: Value,
    /// The message's key.
    pub key: Option<String>,
    /// The message's partition.
    pub partition: Option<i32>,
    /// The message's offset.
    pub offset: Option<i64>,
    /// Saved at.
    pub created_at: DateTime<Utc>,
}

/// A failed event. Serialized like [`EventRecord`], with the error's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FailureRecord {
    /// Row id.
    pub id: i64,
    /// Topic of the message.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Path of the handler that failed.
    pub listener: String,
    /// The entity id (the synced id of the event's only record), when known.
    pub entity_id: Option<String>,
    /// Event time, when known.
    pub event_time: Option<DateTime<Utc>>,
    /// Event name.
    pub event_type: Option<String>,
    /// Event version, when known.
    pub event_version: Option<String>,
    /// The event's [`checksum`].
    pub checksum: String,
    /// The message's envelope.
    #[serde(serialize_with = "as_json_text")]
    pub payload: Value,
    /// `topic`, `partition`, `offset`, `key`, `group_id`, `listener`, `event_index`.
    pub metadata: Value,
    /// The error's type name.
    pub error_class: String,
    /// The error's message.
    pub error_message: String,
    /// The error and its sources, outermost first.
    pub error_chain: Vec<String>,
    /// Failed tries so far.
    pub attempts: i32,
    /// First failure.
    pub first_failed_at: DateTime<Utc>,
    /// Latest failure.
    pub last_failed_at: DateTime<Utc>,
    /// The message's key.
    pub key: Option<String>,
    /// The message's partition.
    pub partition: Option<i32>,
    /// The message's offset.
    pub offset: Option<i64>,
    /// Recorded at.
    pub created_at: DateTime<Utc>,
}

/// How a retry ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryOutcome {
    /// The handler succeeded; its writes are committed. For a failure: the failure row is
    /// gone and `event_id` is the saved event (`None` when the handler did not acknowledge,
    /// or the event was saved already).
    Succeeded {
        /// The event row.
        event_id: Option<i64>,
    },
    /// The handler failed again; its writes are rolled back (a failure row's attempts and
    /// error are updated).
    Failed {
        /// The error with its chain of sources.
        error: String,
    },
    /// No row has this id.
    NotFound,
}

/// What went wrong reading or changing the checkpoint log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A listing parameter is out of bounds or not a number.
    #[error("invalid `{parameter}`: `{given}` is not {expected}")]
    InvalidFilter {
        /// The parameter: `limit` or `offset`.
        parameter: &'static str,
        /// The value given.
        given: String,
        /// What it should be.
        expected: &'static str,
    },
    /// No connection could be had.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A statement failed.
    #[error("checkpoint log: {operation} failed")]
    Query {
        /// What was being done.
        operation: Operation,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },
    /// No checkpointed handler linked into this binary handles the row's event.
    #[error("no checkpointed handler `{listener}` (or any of topic `{topic}`, event `{event_type}`) is linked into this binary")]
    NoHandler {
        /// The handler that wrote the row.
        listener: String,
        /// Its topic.
        topic: String,
        /// Its event type.
        event_type: String,
    },
}

/// What the checkpoint log was doing when a statement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Listing or reading events.
    ReadEvents,
    /// Listing or reading failures.
    ReadFailures,
    /// Deleting a failure.
    DeleteFailure,
    /// Running a retry's transaction.
    Retry,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::ReadEvents => "reading events",
            Operation::ReadFailures => "reading failures",
            Operation::DeleteFailure => "deleting a failure",
            Operation::Retry => "retrying",
        })
    }
}

fn query(operation: Operation) -> impl FnOnce(diesel::result::Error) -> CheckpointError {
    move |source| CheckpointError::Query { operation, source }
}

fn as_json_text<S: Serializer>(payload: &Value, serializer: S) -> Result<S::Ok, S::Error> {
    match payload {
        Value::Null => serializer.serialize_none(),
        Value::String(text) => serializer.serialize_str(text),
        other => serializer.serialize_str(&other.to_string()),
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
struct EventRow {
    id: i64,
    topic: String,
    group_id: String,
    listener: String,
    entity_id: Option<String>,
    event_time: Option<DateTime<Utc>>,
    event_type: Option<String>,
    event_version: Option<String>,
    checksum: String,
    payload: Option<Value>,
    key: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    created_at: DateTime<Utc>,
}

impl From<EventRow> for EventRecord {
    fn from(row: EventRow) -> EventRecord {
        EventRecord {
            id: row.id,
            topic: row.topic,
            group_id: row.group_id,
            listener: row.listener,
            entity_id: row.entity_id,
            event_time: row.event_time,
            event_type: row.event_type,
            event_version: row.event_version,
            checksum: row.checksum,
            payload: row.payload.unwrap_or(Value::Null),
            key: row.key,
            partition: row.partition,
            offset: row.offset,
            created_at: row.created_at,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = failures, check_for_backend(diesel::pg::Pg))]
struct FailureRow {
    id: i64,
    topic: String,
    group_id: String,
    listener: String,
    entity_id: Option<String>,
    event_time: Option<DateTime<Utc>>,
    event_type: Option<String>,
    event_version: Option<String>,
    checksum: String,
    payload: Option<Value>,
    metadata: Value,
    error_class: String,
    error_message: String,
    error_backtrace: Value,
    attempts: i32,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
    key: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    created_at: DateTime<Utc>,
}

impl From<FailureRow> for FailureRecord {
    fn from(row: FailureRow) -> FailureRecord {
        let error_chain = match row.error_backtrace {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        FailureRecord {
            id: row.id,
            topic: row.topic,
            group_id: row.group_id,
            listener: row.listener,
            entity_id: row.entity_id,
            event_time: row.event_time,
            event_type: row.event_type,
            event_version: row.event_version,
            checksum: row.checksum,
            payload: row.payload.unwrap_or(Value::Null),
            metadata: row.metadata,
            error_class: row.error_class,
            error_message: row.error_message,
            error_chain,
            attempts: row.attempts,
            first_failed_at: row.first_failed_at,
            last_failed_at: row.last_failed_at,
            key: row.key,
            partition: row.partition,
            offset: row.offset,
            created_at: row.created_at,
        }
    }
}

/// What a retry needs of a stored row.
struct Stored {
    topic: String,
    group_id: String,
    listener: String,
    event_type: Option<String>,
    checksum: String,
    payload: Value,
    key: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    ordinal: usize,
}

impl Stored {
    /// The stored message as the consumer read it (the envelope re-encoded as JSON).
    fn message(&self) -> InboundMessage {
        let payload = match &self.payload {
            Value::Null => None,
            Value::String(text) => Some(text.clone().into_bytes()),
            other => Some(other.to_string().into_bytes()),
        };
        InboundMessage {
            topic: self.topic.clone(),
            partition: self.partition.unwrap_or_default(),
            offset: self.offset.unwrap_or_default(),
            key: self.key.clone().map(String::into_bytes),
            payload,
        }
    }

    /// The checkpointed handler that wrote the row: by its path, else the one handling the
    /// topic's event.
    fn handler(&self) -> Result<&'static HandlerDeclaration, CheckpointError> {
        let event_type = self.event_type.as_deref().unwrap_or_default();
        let checkpointed = || handlers().filter(|handler| handler.checkpoint);
        checkpointed()
            .find(|handler| handler.declared_by == self.listener)
            .or_else(|| checkpointed().find(|handler| handler.matches(&self.topic, event_type)))
            .ok_or_else(|| CheckpointError::NoHandler {
                listener: self.listener.clone(),
                topic: self.topic.clone(),
                event_type: event_type.to_owned(),
            })
    }
}

/// How one run of a handler on a stored event ended.
enum Run {
    Succeeded(Option<crate::consumer::handler::Ack>),
    Failed(ErrorParts, String),
}

/// The page of `$table` (`dionysus_events` or `dionysus_event_failures`, which share the
/// filtered columns) that an [`EventFilter`] asks for, newest first, as a boxed query.
macro_rules! filtered_page {
    ($table:ident, $row:ty, $filter:expr) => {{
        let filter: &EventFilter = $filter;
        let mut rows = $table::table.select(<$row>::as_select()).into_boxed();
        if let Some(entity_id) = &filter.entity_id {
            rows = rows.filter($table::entity_id.eq(entity_id));
        }
        if let Some(topic) = &filter.topic {
            rows = rows.filter($table::topic.eq(topic));
        }
        if let Some(group_id) = &filter.group_id {
            rows = rows.filter($table::group_id.eq(group_id));
        }
        if let Some(event_type) = &filter.event_type {
            rows = rows.filter($table::event_type.eq(event_type));
        }
        rows.order($table::id.desc())
            .limit(i64::from(filter.limit))
            .offset(i64::try_from(filter.offset).unwrap_or(i64::MAX))
    }};
}

impl Checkpoints {
    /// The checkpoint log in the database behind `pool` (the framework's migrations
    /// applied).
    pub fn new(pool: Pool) -> Checkpoints {
        Checkpoints { pool }
    }

    async fn conn(&self) -> Result<crate::db::PooledConnection, CheckpointError> {
        Ok(crate::db::checkout(&self.pool).await?)
    }

    /// A page of events, newest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Page<EventRecord>, CheckpointError> {
        filter.validate()?;
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let rows: Vec<EventRow> =
            filtered_page!(events, EventRow, filter).load(conn).await.map_err(query(Operation::ReadEvents))?;
        Ok(filter.page(rows.into_iter().map(EventRecord::from).collect()))
    }

    /// One event.
    pub async fn event(&self, id: i64) -> Result<Option<EventRecord>, CheckpointError> {
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let row: Option<EventRow> = events::table
            .find(id)
            .select(EventRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(query(Operation::ReadEvents))?;
        Ok(row.map(EventRecord::from))
    }

    /// A page of failures, newest first.
    pub async fn failures(&self, filter: &EventFilter) -> Result<Page<FailureRecord>, CheckpointError> {
        filter.validate()?;
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let rows: Vec<FailureRow> =
            filtered_page!(failures, FailureRow, filter).load(conn).await.map_err(query(Operation::ReadFailures))?;
        Ok(filter.page(rows.into_iter().map(FailureRecord::from).collect()))
    }

    /// One failure.
    pub async fn failure(&self, id: i64) -> Result<Option<FailureRecord>, CheckpointError> {
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let row: Option<FailureRow> = failures::table
            .find(id)
            .select(FailureRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(query(Operation::ReadFailures))?;
        Ok(row.map(FailureRecord::from))
    }

    /// Deletes a failure; `false` when no row has this id.
    pub async fn delete_failure(&self, id: i64) -> Result<bool, CheckpointError> {
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let deleted =
            diesel::delete(failures::table.find(id)).execute(conn).await.map_err(query(Operation::DeleteFailure))?;
        Ok(deleted > 0)
    }

    /// Runs the event's handler again on the stored message (seed 000's event retry), in a
    /// transaction: its writes commit when it succeeds, roll back when it fails. The event
    /// row stays as it is.
    pub async fn retry_event(&self, id: i64) -> Result<RetryOutcome, CheckpointError> {
        let Some(event) = self.event(id).await? else { return Ok(RetryOutcome::NotFound) };
        let stored = Stored {
            topic: event.topic,
            group_id: event.group_id,
            listener: event.listener,
            event_type: event.event_type,
            checksum: event.checksum,
            payload: event.payload,
            key: event.key,
            partition: event.partition,
            offset: event.offset,
            ordinal: 0,
        };
        let declaration = stored.handler()?;
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        Transactions::begin_transaction(&mut *conn).await.map_err(query(Operation::Retry))?;
        let run = run_stored(conn, declaration, &stored).await;
        match run {
            Run::Succeeded(_) => {
                Transactions::commit_transaction(&mut *conn).await.map_err(query(Operation::Retry))?;
                Ok(RetryOutcome::Succeeded { event_id: Some(id) })
            }
            Run::Failed(_, report) => {
                Transactions::rollback_transaction(&mut *conn).await.map_err(query(Operation::Retry))?;
                Ok(RetryOutcome::Failed { error: report })
            }
        }
    }

    /// Runs the failed event's handler again on the stored message. On success, in one
    /// transaction with the handler's writes, the failure row is deleted and the event
    /// saved (when the handler acknowledges it). On failure the handler's writes roll back
    /// and the failure row's attempts, last failure time and error are updated.
    pub async fn retry_failure(&self, id: i64) -> Result<RetryOutcome, CheckpointError> {
        let mut pooled = self.conn().await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        Transactions::begin_transaction(&mut *conn).await.map_err(query(Operation::Retry))?;
        let result = retry_failure_in(conn, id).await;
        let finish = match &result {
            Ok(RetryOutcome::Succeeded { .. } | RetryOutcome::Failed { .. }) => {
                Transactions::commit_transaction(&mut *conn).await
            }
            _ => Transactions::rollback_transaction(&mut *conn).await,
        };
        finish.map_err(query(Operation::Retry))?;
        result
    }
}

/// [`Checkpoints::retry_failure`] inside its transaction.
async fn retry_failure_in(conn: &mut AsyncPgConnection, id: i64) -> Result<RetryOutcome, CheckpointError> {
    let row: Option<FailureRow> = failures::table
        .find(id)
        .select(FailureRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
        .map_err(query(Operation::Retry))?;
    let Some(row) = row else { return Ok(RetryOutcome::NotFound) };
    let ordinal = row
        .metadata
        .get("event_index")
        .and_then(Value::as_u64)
        .and_then(|index| usize::try_from(index).ok())
        .unwrap_or_default();
    let stored = Stored {
        topic: row.topic,
        group_id: row.group_id,
        listener: row.listener,
        event_type: row.event_type,
        checksum: row.checksum,
        payload: row.payload.unwrap_or(Value::Null),
        key: row.key,
        partition: row.partition,
        offset: row.offset,
        ordinal,
    };
    let declaration = stored.handler()?;
    // The handler's writes roll back alone when it fails: the failure row's update stays.
    Transactions::begin_transaction(conn).await.map_err(query(Operation::Retry))?;
    match run_stored(conn, declaration, &stored).await {
        Run::Succeeded(ack) => {
            Transactions::commit_transaction(conn).await.map_err(query(Operation::Retry))?;
            let message = stored.message();
            let event_id =
                match (ack, store::event_of(&message, stored.event_type.as_deref().unwrap_or_default(), ordinal)) {
                    (Some(ack), Ok(event)) => {
                        let origin = Origin {
                            group: &stored.group_id,
                            listener: &stored.listener,
                            message: &message,
                            event: &event,
                            ordinal,
                            checksum: &stored.checksum,
                        };
                        store::save_event(conn, &origin, &ack).await.map_err(query(Operation::Retry))?
                    }
                    _ => None,
                };
            diesel::delete(failures::table.find(id)).execute(conn).await.map_err(query(Operation::Retry))?;
            tracing::info!(target: "dionysus::checkpoint", failure = id, event_id, listener = %stored.listener, checksum = %stored.checksum, "failed event retried successfully");
            Ok(RetryOutcome::Succeeded { event_id })
        }
        Run::Failed(parts, report) => {
            Transactions::rollback_transaction(conn).await.map_err(query(Operation::Retry))?;
            diesel::update(failures::table.find(id))
                .set((
                    failures::attempts.eq(failures::attempts + 1),
                    failures::last_failed_at.eq(Utc::now()),
                    failures::error_class.eq(&parts.class),
                    failures::error_message.eq(&parts.message),
                    failures::error_backtrace.eq(serde_json::json!(parts.chain)),
                ))
                .execute(conn)
                .await
                .map_err(query(Operation::Retry))?;
            tracing::warn!(target: "dionysus::checkpoint", failure = id, listener = %stored.listener, error = %report, "retried event failed again");
            Ok(RetryOutcome::Failed { error: report })
        }
    }
}

/// Runs `declaration` once on the stored event, on `conn` (inside the caller's transaction).
async fn run_stored(conn: &mut AsyncPgConnection, declaration: &'static HandlerDeclaration, stored: &Stored) -> Run {
    let message = stored.message();
    let event_type = stored.event_type.as_deref().unwrap_or_default();
    let event = match store::event_of(&message, event_type, stored.ordinal) {
        Ok(event) => event,
        Err(reason) => {
            let parts = ErrorParts {
                class: "dionysus::checkpoint::StoredEvent".to_owned(),
                message: reason.clone(),
                chain: vec![reason.clone()],
            };
            return Run::Failed(parts, reason);
        }
    };
    let mut ctx = Context::new(&event, &message, conn, true);
    let result = (declaration.handler)(&mut ctx).await;
    match result {
        Ok(()) => Run::Succeeded(ctx.take_ack()),
        Err(error) => {
            let parts = ErrorParts::of(&error, ctx.error_class());
            Run::Failed(parts, Report(&error).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_default_to_the_first_twenty() {
        let filter = EventFilter::parse([]).unwrap();
        assert_eq!((filter.limit, filter.offset), (20, 0));
    }

    #[test]
    fn filters_read_every_parameter() {
        let filter = EventFilter::parse([
            ("limit", "5"),
            ("offset", "10"),
            ("entity_id", "7"),
            ("topic", "v3_rentals"),
            ("group_id", "g"),
            ("event_type", "rental_updated"),
            ("unrelated", "x"),
            ("group_id", ""),
        ])
        .unwrap();
        assert_eq!(
            filter,
            EventFilter::new().limit(5).offset(10).entity_id("7").topic("v3_rentals").event_type("rental_updated")
        );
    }

    #[test]
    fn bad_limits_and_offsets_name_the_parameter() {
        for (name, value) in [("limit", "0"), ("limit", "1001"), ("limit", "-1"), ("limit", "ten"), ("offset", "-5")] {
            let error = EventFilter::parse([(name, value)]).unwrap_err();
            assert!(
                matches!(&error, CheckpointError::InvalidFilter { parameter, .. } if *parameter == name),
                "{name}={value}: {error}"
            );
            assert!(error.to_string().contains(&format!("`{name}`")), "{error}");
        }
        assert!(EventFilter::parse([("limit", "1000")]).is_ok());
        assert!(EventFilter::new().offset(u64::MAX).validate().is_err());
    }

    proptest::proptest! {
        #[test]
        fn a_limit_is_accepted_exactly_within_its_bounds(limit in proptest::prelude::any::<u32>()) {
            let accepted = EventFilter::new().limit(limit).validate().is_ok();
            proptest::prop_assert_eq!(accepted, (1..=MAX_LIMIT).contains(&limit));
        }
    }

    #[test]
    fn payloads_serialize_as_json_text() {
        let record = EventRecord {
            id: 1,
            topic: "t".into(),
            group_id: "g".into(),
            listener: "l".into(),
            entity_id: Some("1".into()),
            event_time: None,
            event_type: Some("create".into()),
            event_version: Some("v1".into()),
            checksum: "c".into(),
            payload: serde_json::json!({"a": "b"}),
            key: None,
            partition: Some(0),
            offset: Some(3),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["payload"], "{\"a\":\"b\"}");
        assert_eq!(json["entity_id"], "1");
        assert_eq!(json["event_version"], "v1");
    }
}
