//! The outbox writer: called inside the application's own diesel-async transaction, right
//! after a change, it writes the outbox rows dionysus-rb would write for that change, so the
//! change and its events commit or roll back together.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
//!
//! diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }
//!
//! #[derive(Queryable, Selectable, Identifiable, serde::Serialize, dionysus::Publishable)]
//! #[diesel(table_name = rentals)]
//! #[publish(topic = "v3_rentals")]
//! struct Rental { id: i64, account_id: i64 }
//!
//! async fn create(conn: &mut AsyncPgConnection, account_id: i64) -> dionysus::Result<()> {
//!     conn.transaction::<_, dionysus::Error, _>(async move |tx| {
//!         let rental: Rental = diesel::insert_into(rentals::table)
//!             .values(rentals::account_id.eq(account_id))
//!             .returning(Rental::as_returning())
//!             .get_result(tx)
//!             .await?;
//!         dionysus::outbox::created(tx, &rental).await?;
//!         Ok(())
//!     })
//!     .await
//! }
//! ```
//!
//! Rows per change (P-5 … P-11), in this order:
//! * one row per topic the model is published on: `<model>_created`, `_updated` or
//!   `_destroyed` — an update of the soft-delete column turns into `_destroyed` (deleted)
//!   or `_created` (restored); updates of a soft-deleted record write nothing unless the
//!   model publishes updates after soft delete;
//! * one `<parent>_updated` row per parent that lists the model in `with(...)`, with the
//!   parent's key and partition key — also when the dependency is destroyed (dionysus-rb
//!   loses those);
//! * for each `observe(...)` whose columns changed: one `<owner>_updated` row per related
//!   record, resolved now, or — beyond `observers_inline_maximum_size` records — a single
//!   deferred row on `__outbox_observer__` carrying the changeset, which the relay turns into
//!   a throttled genesis of the related records.
//!
//! Resolving dependencies and observers when the change is written (dionysus-rb resolves them
//! when publishing) gives every row its own partition key, so the relay keeps their order per
//! key, and a destroyed dependency still knows its parent.
//!
//! Inside a [`Suppress::scope`] (data migrations, seeds) the writer writes no rows for the
//! suppressed models.

use std::collections::HashSet;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};

use diesel::result::QueryResult;

use super::publishable::{partition_key, Publishable};
use super::suppress;
pub use super::suppress::Suppress;
use crate::config::{EncryptionKey, EncryptionKeys, ProducerConfig};
use crate::handle::Dionysus;
use crate::registry::model::{ColumnIn, ModelEntry, Publication, Record, RecordFilter, Relation};
use crate::registry::{Registry, OBSERVER_TOPIC};
use crate::schema::dionysus_outbox;
use crate::seal;
pub use crate::seal::SealError;
use crate::wire::naming::{self, EventKind};
use crate::wire::record::id_text;

/// An outbox row to insert.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, diesel::Insertable)]
#[diesel(table_name = dionysus_outbox)]
// `None` is written as NULL, not as DEFAULT, so the statement's SQL never varies and stays
// prepared.
#[diesel(treat_none_as_default_value = false)]
pub struct NewOutboxRow {
    /// Model name.
    pub resource_class: String,
    /// Record id as text.
    pub resource_id: String,
    /// Event name.
    pub event_name: String,
    /// Topic.
    pub topic: String,
    /// Partition key.
    pub partition_key: Option<String>,
    /// Changeset (observer rows only; `{}` otherwise).
    pub changeset: Value,
    /// The value of a composed message, as JSON text (see [`Outbox::respond`]).
    pub message: Option<String>,
    /// The Kafka key of a composed message.
    pub message_key: Option<String>,
    /// The key that sealed `changeset` and `message` (set when the row is written).
    pub encryption_key_id: Option<String>,
}

/// An outbox row as stored.
#[derive(Debug, Clone, PartialEq, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = dionysus_outbox)]
#[diesel(check_for_backend(diesel::pg::Pg))]
#[doc(hidden)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Model name.
    pub resource_class: String,
    /// Record id as text.
    pub resource_id: String,
    /// Event name.
    pub event_name: String,
    /// Topic.
    pub topic: String,
    /// Partition key.
    pub partition_key: Option<String>,
    /// Changeset.
    pub changeset: Value,
    /// Published at.
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Parked at.
    pub failed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Retry not before.
    pub retry_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Last error kind.
    pub error_class: Option<String>,
    /// Last error message.
    pub error_message: Option<String>,
    /// Failed attempts.
    pub attempts: i32,
    /// Written at.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Changed at.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The value of a composed message, as JSON text (sealed when `encryption_key_id` is set).
    pub message: Option<String>,
    /// The Kafka key of a composed message.
    pub message_key: Option<String>,
    /// The key that sealed `changeset` and `message`; `None` when they are in the clear.
    pub encryption_key_id: Option<String>,
}

impl OutboxRow {
    /// The row's changeset, opened with `keys` when it was sealed.
    pub fn changeset(&self, keys: &EncryptionKeys) -> Result<Changeset, SealError> {
        open_changeset(keys, self.encryption_key_id.as_deref(), &self.changeset)
    }
}

/// A stored changeset, opened with `keys` when `key_id` says it was sealed.
pub(crate) fn open_changeset(
    keys: &EncryptionKeys,
    key_id: Option<&str>,
    stored: &Value,
) -> Result<Changeset, SealError> {
    match (key_id, stored) {
        (Some(key_id), Value::String(sealed)) => {
            let plain = seal::open(keys, key_id, sealed)?;
            let value: Value =
                serde_json::from_slice(&plain).map_err(|_| SealError::Rejected { key_id: key_id.to_owned() })?;
            Ok(Changeset::from_json(&value))
        }
        (_, stored) => Ok(Changeset::from_json(stored)),
    }
}

/// Writing outbox rows failed; the caller's transaction should roll back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Sealing a row with the configured encryption key failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The global configuration could not be read from the environment.
    #[error("reading the dionysus configuration")]
    Config(#[source] crate::config::ConfigError),
    /// Inserting the rows failed.
    #[error("inserting {rows} outbox row(s)")]
    Insert {
        /// Rows of the statement.
        rows: usize,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// Announcing the new rows to the relay (`publish_after_commit`) failed.
    #[error("notifying the relay of new outbox rows")]
    Notify(#[source] diesel::result::Error),
    /// Finding the records a change republishes (`with(...)` parents, observers) failed.
    #[error("finding {owner} records related to {model} {id}")]
    Related {
        /// The model of the records looked for.
        owner: &'static str,
        /// The changed record's model.
        model: &'static str,
        /// The changed record's id.
        id: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
}

/// Which columns of a record changed: `{"column": [old, new]}`, as Rails' saved changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changeset(Map<String, Value>);

impl Changeset {
    /// An empty changeset.
    pub fn new() -> Changeset {
        Changeset::default()
    }

    /// The columns whose values differ between `before` and `after`.
    pub fn between<T: Publishable>(before: &T, after: &T) -> Changeset {
        let mut changes = Map::new();
        for name in T::MODEL.attributes {
            let old = before.attribute(name).unwrap_or(Value::Null);
            let new = after.attribute(name).unwrap_or(Value::Null);
            if old != new {
                changes.insert((*name).to_owned(), Value::Array(vec![old, new]));
            }
        }
        Changeset(changes)
    }

    /// Records that `column` changed from `old` to `new`.
    #[must_use]
    pub fn with(mut self, column: impl Into<String>, old: Value, new: Value) -> Changeset {
        self.0.insert(column.into(), Value::Array(vec![old, new]));
        self
    }

    /// Every column of a new record, as `[null, value]` (P-11).
    pub fn for_create(record: &dyn Record) -> Changeset {
        let changes = record
            .model()
            .attributes
            .iter()
            .map(|name| {
                ((*name).to_owned(), Value::Array(vec![Value::Null, record.attribute(name).unwrap_or(Value::Null)]))
            })
            .collect();
        Changeset(changes)
    }

    /// `{"<pk>": [id, null], "created_at": [created_at, null]}` (P-11).
    pub fn for_destroy(record: &dyn Record) -> Changeset {
        let model = record.model();
        let mut changes = Map::new();
        let id = record.attribute(model.primary_key).unwrap_or_else(|| model.id_json(&record.id()));
        changes.insert(model.primary_key.to_owned(), Value::Array(vec![id, Value::Null]));
        if let Some(created_at) = record.attribute("created_at") {
            changes.insert("created_at".to_owned(), Value::Array(vec![created_at, Value::Null]));
        }
        Changeset(changes)
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `column` changed.
    pub fn contains(&self, column: &str) -> bool {
        self.0.contains_key(column)
    }

    /// `(old, new)` of a column.
    pub fn get(&self, column: &str) -> Option<(&Value, &Value)> {
        match self.0.get(column) {
            Some(Value::Array(pair)) if pair.len() == 2 => Some((&pair[0], &pair[1])),
            _ => None,
        }
    }

    /// The changed columns.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The changeset as stored in the outbox.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Reads a stored changeset (anything but an object reads as empty).
    pub fn from_json(value: &Value) -> Changeset {
        match value {
            Value::Object(map) => Changeset(map.clone()),
            _ => Changeset::default(),
        }
    }
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Created,
    Updated,
    Destroyed,
}

/// Writes outbox rows with a registry and a configuration.
#[derive(Debug, Clone, Copy)]
pub struct Outbox<'a> {
    pub(super) registry: &'a Registry,
    pub(super) config: &'a ProducerConfig,
}

impl Outbox<'static> {
    /// The writer of the global handle ([`Dionysus::global`](crate::Dionysus::global)): the
    /// installed one, or the environment's settings with the binary's declarations.
    pub fn global() -> Result<Outbox<'static>, OutboxError> {
        Dionysus::global().map(|handle| handle.outbox()).map_err(OutboxError::Config)
    }
}

impl<'a> Outbox<'a> {
    /// An outbox writer over an explicit registry and configuration.
    pub fn new(registry: &'a Registry, config: &'a ProducerConfig) -> Outbox<'a> {
        Outbox { registry, config }
    }

    /// Writes the rows for a created record; returns how many.
    pub async fn created<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        record: &T,
    ) -> Result<usize, OutboxError> {
        self.created_all(conn, std::slice::from_ref(record)).await
    }

    /// Writes the rows for an updated record, given what changed.
    pub async fn updated<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        record: &T,
        changeset: &Changeset,
    ) -> Result<usize, OutboxError> {
        self.write(conn, vec![(record as &dyn Record, Change::Updated, changeset.clone())]).await
    }

    /// Writes the rows for a destroyed record (pass the record as it was).
    pub async fn destroyed<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        record: &T,
    ) -> Result<usize, OutboxError> {
        self.destroyed_all(conn, std::slice::from_ref(record)).await
    }

    /// [`Outbox::created`] for many records, in one insert.
    pub async fn created_all<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        records: &[T],
    ) -> Result<usize, OutboxError> {
        let changes = records.iter().map(|r| (r as &dyn Record, Change::Created, Changeset::for_create(r)));
        self.write(conn, changes.collect()).await
    }

    /// [`Outbox::updated`] for many records, in one insert.
    pub async fn updated_all<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        changes: &[(&T, Changeset)],
    ) -> Result<usize, OutboxError> {
        let changes = changes.iter().map(|(r, changeset)| (*r as &dyn Record, Change::Updated, changeset.clone()));
        self.write(conn, changes.collect()).await
    }

    /// [`Outbox::destroyed`] for many records, in one insert.
    pub async fn destroyed_all<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        records: &[T],
    ) -> Result<usize, OutboxError> {
        let changes = records.iter().map(|r| (r as &dyn Record, Change::Destroyed, Changeset::for_destroy(r)));
        self.write(conn, changes.collect()).await
    }

    /// Plans the rows of every change, then inserts them in one statement.
    async fn write(
        &self,
        conn: &mut AsyncPgConnection,
        changes: Vec<(&dyn Record, Change, Changeset)>,
    ) -> Result<usize, OutboxError> {
        let mut rows = Vec::new();
        for (record, change, changeset) in changes {
            rows.extend(self.plan_record(conn, record, change, &changeset).await?);
        }
        self.insert(conn, rows).await
    }

    pub(super) async fn insert(
        &self,
        conn: &mut AsyncPgConnection,
        rows: Vec<NewOutboxRow>,
    ) -> Result<usize, OutboxError> {
        let rows = dedupe(rows.into_iter().filter(|row| !suppress::is_suppressed(&row.resource_class)).collect());
        let rows = match self.config.outbox_encryption_keys.current() {
            Some(key) => rows.into_iter().map(|row| seal_row(key, row)).collect::<Result<Vec<_>, _>>()?,
            None => rows,
        };
        let result = match rows.as_slice() {
            [] => return Ok(0),
            // One row (the common case) is a statement of fixed shape, prepared once per
            // connection; a multi-row insert's SQL depends on the row count.
            [row] => diesel::insert_into(dionysus_outbox::table).values(row).execute(conn).await,
            _ => diesel::insert_into(dionysus_outbox::table).values(&rows).execute(conn).await,
        };
        let written = result.map_err(|source| OutboxError::Insert { rows: rows.len(), source })?;
        if self.config.publish_after_commit {
            // Delivered when (and only if) the transaction commits; wakes the relay at once.
            diesel::sql_query("SELECT pg_notify('dionysus_outbox', '')")
                .execute(conn)
                .await
                .map_err(OutboxError::Notify)?;
        }
        Ok(written)
    }

    /// The rows a change writes, without writing them (P-5 … P-11).
    async fn plan_record(
        &self,
        conn: &mut AsyncPgConnection,
        record: &dyn Record,
        change: Change,
        changeset: &Changeset,
    ) -> Result<Vec<NewOutboxRow>, OutboxError> {
        if !self.config.transactional_outbox_enabled || suppress::everything_suppressed() {
            return Ok(Vec::new());
        }
        let model = record.model();
        let Some(kind) = self.event_kind(model, record, change, changeset) else { return Ok(Vec::new()) };
        let event_name = naming::event_name(model.model_name, kind);
        let mut rows = Vec::new();

        // Topics that publish the model itself, in declaration order.
        for publication in self.registry.publications_of(model.model_name) {
            rows.push(NewOutboxRow {
                resource_class: model.model_name.to_owned(),
                resource_id: record.id(),
                event_name: event_name.clone(),
                topic: publication.topic.to_owned(),
                partition_key: partition_key(publication, record, self.registry, self.config),
                changeset: Value::Object(Map::new()),
                message: None,
                message_key: None,
                encryption_key_id: None,
            });
        }

        // Parents listing the model in `with(...)`.
        for (publication, dependency) in self.registry.dependents_of(model) {
            let owners = self.related_owners(conn, record, publication.model, (dependency.relation)(), None).await?;
            for owner in owners {
                rows.push(owner_updated_row(publication, owner.as_ref(), self.registry, self.config));
            }
        }

        // Owners observing the model's changed columns.
        let mut deferred = false;
        for (publication, observer) in self.registry.observers_of(model) {
            let matches = match change {
                Change::Destroyed => {
                    observer.columns.iter().any(|column| record.attribute(column).is_some_and(|v| !v.is_null()))
                }
                Change::Created | Change::Updated => observer.columns.iter().any(|column| changeset.contains(column)),
            };
            if !matches {
                continue;
            }
            let limit = self.config.observers_inline_maximum_size;
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1);
            let owners =
                self.related_owners(conn, record, publication.model, (observer.relation)(), Some(fetch)).await?;
            if owners.len() > limit {
                if !deferred {
                    deferred = true;
                    rows.push(NewOutboxRow {
                        resource_class: model.model_name.to_owned(),
                        resource_id: record.id(),
                        event_name: event_name.clone(),
                        topic: OBSERVER_TOPIC.to_owned(),
                        partition_key: None,
                        changeset: changeset.to_json(),
                        message: None,
                        message_key: None,
                        encryption_key_id: None,
                    });
                }
                continue;
            }
            for owner in owners {
                rows.push(owner_updated_row(publication, owner.as_ref(), self.registry, self.config));
            }
        }
        Ok(rows)
    }

    /// The event of a change for the model's own topics, or `None` when nothing is written
    /// (an empty update, or an update of a soft-deleted record) — P-6.
    fn event_kind(
        &self,
        model: &ModelEntry,
        record: &dyn Record,
        change: Change,
        changeset: &Changeset,
    ) -> Option<EventKind> {
        match change {
            Change::Created => Some(EventKind::Created),
            Change::Destroyed => Some(EventKind::Destroyed),
            Change::Updated if changeset.is_empty() => None,
            Change::Updated => {
                let Some(column) = model.soft_delete_column(&self.config.soft_delete_column) else {
                    return Some(EventKind::Updated);
                };
                let deleted_now = record.attribute(column).is_some_and(|value| !is_blank(&value));
                match changeset.get(column) {
                    Some((old, _)) if !is_blank(old) && !deleted_now => Some(EventKind::Created),
                    Some(_) if deleted_now => Some(EventKind::Destroyed),
                    Some(_) => Some(EventKind::Updated),
                    None if !deleted_now || model.publish_updates_after_soft_delete => Some(EventKind::Updated),
                    None => None,
                }
            }
        }
    }

    /// Records of `owner_model` related to `record` (of another model) through `relation`
    /// (seen from the owner), at most `limit`.
    async fn related_owners(
        &self,
        conn: &mut AsyncPgConnection,
        record: &dyn Record,
        owner_model: &'static ModelEntry,
        relation: Relation,
        limit: Option<i64>,
    ) -> Result<Vec<Box<dyn Record>>, OutboxError> {
        let model = record.model();
        let key = match relation {
            Relation::OtherHoldsKey(column) => record.attribute(column),
            Relation::OwnerHoldsKey(_) => None,
        };
        let query_error = |source| OutboxError::Related {
            owner: owner_model.model_name,
            model: model.model_name,
            id: record.id(),
            source,
        };
        let Some(filter) =
            related_owners_filter(owner_model, model, &record.id(), relation, key.as_ref()).map_err(query_error)?
        else {
            return Ok(Vec::new());
        };
        (owner_model.load)(conn, filter, limit).await.map_err(query_error)
    }
}

/// The `<owner>_updated` row that republishes `owner` on `publication`'s topic (a `with(...)`
/// parent or an observing record), with the owner's own key and partition key.
pub(crate) fn owner_updated_row(
    publication: &Publication,
    owner: &dyn Record,
    registry: &Registry,
    config: &ProducerConfig,
) -> NewOutboxRow {
    NewOutboxRow {
        resource_class: publication.model.model_name.to_owned(),
        resource_id: owner.id(),
        event_name: naming::event_name(publication.model.model_name, EventKind::Updated),
        topic: publication.topic.to_owned(),
        partition_key: partition_key(publication, owner, registry, config),
        changeset: Value::Object(Map::new()),
        message: None,
        message_key: None,
        encryption_key_id: None,
    }
}

/// The filter selecting the `owner` records related to one record (`other_id`) of `other`
/// through `relation` (seen from the owner). When the other record holds the key, `key` is its
/// value (from the record, or from a changeset when the record is gone); `None` when no owner
/// can match (a null key).
pub(crate) fn related_owners_filter(
    owner: &ModelEntry,
    other: &ModelEntry,
    other_id: &str,
    relation: Relation,
    key: Option<&Value>,
) -> QueryResult<Option<RecordFilter>> {
    match relation {
        Relation::OtherHoldsKey(_) => match key.filter(|value| !value.is_null()) {
            Some(key) => Ok(Some(ColumnIn::parse(owner.primary_key, owner.id_kind, &[id_text(key)])?.into())),
            None => Ok(None),
        },
        Relation::OwnerHoldsKey(column) => {
            Ok(Some(ColumnIn::parse(column, other.id_kind, &[other_id.to_owned()])?.into()))
        }
    }
}

/// Seals what a row carries beyond ids (a non-empty changeset, a composed message) with `key`
/// (P-12); a row with neither stays as it is.
fn seal_row(key: &EncryptionKey, mut row: NewOutboxRow) -> Result<NewOutboxRow, OutboxError> {
    let has_changeset = row.changeset.as_object().is_some_and(|changeset| !changeset.is_empty());
    if !has_changeset && row.message.is_none() {
        return Ok(row);
    }
    if has_changeset {
        row.changeset = Value::String(seal::seal(key, row.changeset.to_string().as_bytes())?);
    }
    if let Some(message) = &row.message {
        row.message = Some(seal::seal(key, message.as_bytes())?);
    }
    row.encryption_key_id = Some(key.id.clone());
    Ok(row)
}

/// `nil`, `""` and `[]` are blank (Ruby's `blank?` for the values a column holds).
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Drops repeated rows (same model, id, event and topic) within one write, keeping the first.
fn dedupe(rows: Vec<NewOutboxRow>) -> Vec<NewOutboxRow> {
    let mut seen = HashSet::new();
    rows.into_iter()
        .filter(|row| {
            seen.insert((
                row.resource_class.clone(),
                row.resource_id.clone(),
                row.event_name.clone(),
                row.topic.clone(),
            ))
        })
        .collect()
}

/// [`Outbox::created`] with the global handle's declarations and configuration.
pub async fn created<T: Publishable>(conn: &mut AsyncPgConnection, record: &T) -> Result<usize, OutboxError> {
    Outbox::global()?.created(conn, record).await
}

/// [`Outbox::updated`] with the global handle's declarations and configuration.
pub async fn updated<T: Publishable>(
    conn: &mut AsyncPgConnection,
    record: &T,
    changeset: &Changeset,
) -> Result<usize, OutboxError> {
    Outbox::global()?.updated(conn, record, changeset).await
}

/// [`Outbox::updated`] with the changeset computed from the record before and after.
pub async fn updated_from<T: Publishable>(
    conn: &mut AsyncPgConnection,
    before: &T,
    after: &T,
) -> Result<usize, OutboxError> {
    Outbox::global()?.updated(conn, after, &Changeset::between(before, after)).await
}

/// [`Outbox::destroyed`] with the global handle's declarations and configuration.
pub async fn destroyed<T: Publishable>(conn: &mut AsyncPgConnection, record: &T) -> Result<usize, OutboxError> {
    Outbox::global()?.destroyed(conn, record).await
}

impl Dionysus {
    /// The outbox writer, for writes inside the application's transactions.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(self.registry(), &self.config().producer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn blank_values_follow_ruby() {
        assert!(is_blank(&Value::Null));
        assert!(is_blank(&json!("  ")));
        assert!(!is_blank(&json!("2022-08-22T08:01:47.000Z")));
        assert!(!is_blank(&json!(0)));
    }

    #[test]
    fn repeated_rows_of_one_write_collapse() {
        let row = |topic: &str| NewOutboxRow {
            resource_class: "Rental".into(),
            resource_id: "1".into(),
            event_name: "rental_updated".into(),
            topic: topic.into(),
            partition_key: None,
            changeset: json!({}),
            message: None,
            message_key: None,
            encryption_key_id: None,
        };
        let rows = dedupe(vec![row("a"), row("b"), row("a")]);
        assert_eq!(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }
}
