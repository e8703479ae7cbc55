//! What the runtime knows of each publishable model and each `#[publish(...)]`: the `const`
//! entries `#[derive(Publishable)]` generates ([`ModelEntry`], [`Publication`] with its
//! `with(...)` [`Dependency`]s and `observe(...)` [`Observer`]s), the type-erased [`Record`]
//! the relay and genesis handle, and the [`RecordFilter`] records are loaded with.
//!
//! This module is vocabulary only: it does not load, serialize or publish anything (that is
//! `producer`'s), and the typed [`Publishable`](crate::Publishable) trait lives with the
//! producer.

use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::result::QueryResult;
use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel_async::AsyncPgConnection;
use serde_json::Value;

use crate::wire::record::{SerializeError, Sideloads};

/// A boxed future, as the loaders return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A type with a model entry: every [`Publishable`](crate::Publishable) model.
pub trait Model: 'static {
    /// Its entry.
    fn entry() -> &'static ModelEntry;
}

/// A type-erased publishable record, for code that handles any model (relay, genesis).
pub trait Record: Any + Send + Sync {
    /// The model.
    fn model(&self) -> &'static ModelEntry;
    /// Primary key as text.
    fn id(&self) -> String;
    /// See [`Publishable::attribute`](crate::Publishable::attribute).
    fn attribute(&self, name: &str) -> Option<Value>;
    /// The record as serde serializes it (a JSON object for structs).
    fn to_json(&self) -> Result<Value, serde_json::Error>;
    /// For downcasting to the concrete model.
    fn as_any(&self) -> &dyn Any;
}

/// How a model's primary key is typed, which decides how ids are bound in queries and
/// written in JSON.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// `smallint`, `integer` or `bigint`: bound as `bigint[]`, written as JSON numbers.
    Integer,
    /// `text`/`varchar`: bound as `text[]`, written as JSON strings.
    Text,
}

/// Loads the records matching a filter, at most `limit`, as erased records.
pub type ErasedLoader = for<'a> fn(
    &'a mut AsyncPgConnection,
    RecordFilter,
    Option<i64>,
) -> BoxFuture<'a, QueryResult<Vec<Box<dyn Record>>>>;

/// One of the three parts of a [`LoadSource`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum LoadPart {
    /// The selection.
    Select,
    /// The table.
    From,
    /// The primary-key column.
    Order,
}

/// The parts of a [`LoadSource`] behind one pointer, walked through one method: a model's
/// `dyn` table then holds a single function (and its drop), where a boxed `QueryFragment`
/// per part would instantiate every provided method of diesel's trait (`to_sql`,
/// `collect_binds`, `is_safe_to_cache_prepared`, `is_noop`) for each part, its columns
/// included, in every model's crate.
trait LoadParts: Send + Sync {
    /// Writes one part into the query.
    fn walk<'b>(&'b self, part: LoadPart, out: AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

/// The selection, the table and the primary-key column, as the model's types.
struct Parts<S, F, O> {
    select: S,
    from: F,
    order: O,
}

impl<S, F, O> LoadParts for Parts<S, F, O>
where
    S: QueryFragment<Pg> + Send + Sync,
    F: QueryFragment<Pg> + Send + Sync,
    O: QueryFragment<Pg> + Send + Sync,
{
    fn walk<'b>(&'b self, part: LoadPart, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        match part {
            LoadPart::Select => self.select.walk_ast(out),
            LoadPart::From => self.from.walk_ast(out),
            LoadPart::Order => self.order.walk_ast(out),
        }
    }
}

/// The parts of the query that loads one model's records, as diesel writes them (so the
/// table's schema, the columns' SQL names and the model's `Selectable` expression are
/// honoured): the selection, the table and the primary-key column. `#[derive(Publishable)]`
/// builds it; the query around it and the future that runs it are not generated per model.
pub struct LoadSource {
    parts: Box<dyn LoadParts>,
}

impl LoadSource {
    /// Writes one part into the query.
    pub(crate) fn walk<'b>(&'b self, part: LoadPart, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.parts.walk(part, out)
    }

    /// The selection, the table and the primary-key column.
    pub fn new<S, F, O>(select: S, from: F, order: O) -> LoadSource
    where
        S: QueryFragment<Pg> + Send + Sync + 'static,
        F: QueryFragment<Pg> + Send + Sync + 'static,
        O: QueryFragment<Pg> + Send + Sync + 'static,
    {
        LoadSource { parts: Box::new(Parts { select, from, order }) }
    }
}

impl std::fmt::Debug for LoadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadSource").finish_non_exhaustive()
    }
}

/// Everything the runtime needs to know about one publishable model.
#[derive(Debug)]
pub struct ModelEntry {
    /// Name on the wire (`"Rental"`, `"Bookings::Fee"`), also the outbox's `resource_class`.
    pub model_name: &'static str,
    /// Diesel table name.
    pub table: &'static str,
    /// Primary-key column.
    pub primary_key: &'static str,
    /// How the primary key is typed.
    pub id_kind: IdKind,
    /// The struct's fields (= columns), in declaration order.
    pub attributes: &'static [&'static str],
    /// Soft-delete behaviour.
    pub soft_delete: SoftDelete,
    /// Whether updates of a soft-deleted record are still published as `_updated`
    /// (dionysus-rb's `dionysus_publish_updates_after_soft_delete?`).
    pub publish_updates_after_soft_delete: bool,
    /// The Rust type.
    pub type_id: fn() -> TypeId,
    /// The model's publications (`T::PUBLICATIONS`).
    pub publications: fn() -> &'static [Publication],
    /// Loads records matching a filter as erased records.
    pub load: ErasedLoader,
    /// Rust path of the model, for messages.
    pub rust_name: &'static str,
}

impl ModelEntry {
    /// Placeholder used by the derive's error fallback; never registered.
    #[doc(hidden)]
    pub const INVALID: ModelEntry = ModelEntry {
        model_name: "",
        table: "",
        primary_key: "",
        id_kind: IdKind::Integer,
        attributes: &[],
        soft_delete: SoftDelete::Disabled,
        publish_updates_after_soft_delete: false,
        type_id: TypeId::of::<ModelEntry>,
        publications: || &[],
        load: |_, _, _| Box::pin(async { Ok(Vec::new()) }),
        rust_name: "",
    };

    /// The soft-delete column, if the model is soft-deletable given the configured default
    /// column name.
    pub fn soft_delete_column<'a>(&'a self, configured: &'a str) -> Option<&'a str> {
        match self.soft_delete {
            SoftDelete::Disabled => None,
            SoftDelete::Column(column) => Some(column),
            SoftDelete::Configured => self.attributes.iter().copied().find(|a| *a == configured),
        }
    }

    /// Loads the records with these primary keys (text form), in one query.
    pub fn load_by_ids<'a>(
        &'static self,
        conn: &'a mut AsyncPgConnection,
        ids: &[String],
    ) -> BoxFuture<'a, QueryResult<Vec<Box<dyn Record>>>> {
        match ColumnIn::parse(self.primary_key, self.id_kind, ids) {
            Ok(filter) => (self.load)(conn, filter.into(), None),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }

    /// The JSON form of a primary key given as text: a number for integer keys.
    pub fn id_json(&self, id: &str) -> Value {
        match self.id_kind {
            IdKind::Integer => id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(id.to_owned())),
            IdKind::Text => Value::String(id.to_owned()),
        }
    }
}

/// A model's soft-delete setting.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SoftDelete {
    /// Soft-deletable when the model has a field named like the configured
    /// `soft_delete_column` (`canceled_at` by default), as in dionysus-rb.
    Configured,
    /// Soft-deletable through this column.
    Column(&'static str),
    /// Never soft-deletable.
    Disabled,
}

/// `column IN (values)`, with values bound with the column's type so indexes are used.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnIn {
    /// Column name (from a diesel column or a checked field name; never user input).
    pub column: &'static str,
    /// The values.
    pub values: IdValues,
}

/// Typed id values.
#[derive(Debug, Clone, PartialEq)]
pub enum IdValues {
    /// Integer ids.
    Integer(Vec<i64>),
    /// Text ids.
    Text(Vec<String>),
}

impl ColumnIn {
    /// Parses text ids for a column of the given kind.
    pub fn parse(column: &'static str, kind: IdKind, ids: &[String]) -> QueryResult<ColumnIn> {
        let values = match kind {
            IdKind::Integer => IdValues::Integer(
                ids.iter()
                    .map(|id| {
                        id.trim().parse::<i64>().map_err(|_| {
                            diesel::result::Error::SerializationError(
                                format!("`{id}` is not an integer id for column `{column}`").into(),
                            )
                        })
                    })
                    .collect::<QueryResult<_>>()?,
            ),
            IdKind::Text => IdValues::Text(ids.to_vec()),
        };
        Ok(ColumnIn { column, values })
    }
}

/// One condition of a [`RecordFilter`].
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `"column" = ANY($1)`.
    In(ColumnIn),
    /// `"column" > $1`: keyset paging by primary key.
    After {
        /// Column (from a model entry; never user input).
        column: &'static str,
        /// The last value seen.
        value: IdValue,
    },
    /// `"column" BETWEEN $1 AND $2` (inclusive), e.g. a genesis window on `updated_at`.
    Between {
        /// Column.
        column: &'static str,
        /// Lower bound.
        from: chrono::DateTime<chrono::Utc>,
        /// Upper bound.
        to: chrono::DateTime<chrono::Utc>,
    },
    /// `"column" IS NULL`, e.g. only records that are not soft-deleted.
    IsNull(&'static str),
    /// `"column"::text = $1`: an equality filter given as text (genesis `--where`), so it
    /// works whatever the column's type.
    TextEquals {
        /// Column (a field of the model, checked before the filter is built).
        column: &'static str,
        /// The value, bound as a parameter.
        value: String,
    },
}

/// One typed id value.
#[derive(Debug, Clone, PartialEq)]
pub enum IdValue {
    /// An integer id.
    Integer(i64),
    /// A text id.
    Text(String),
}

impl IdValue {
    /// Parses a text id for a key of the given kind.
    pub fn parse(column: &'static str, kind: IdKind, id: &str) -> QueryResult<IdValue> {
        match ColumnIn::parse(column, kind, &[id.to_owned()])?.values {
            IdValues::Integer(mut values) => Ok(IdValue::Integer(values.pop().unwrap_or_default())),
            IdValues::Text(mut values) => Ok(IdValue::Text(values.pop().unwrap_or_default())),
        }
    }
}

/// The conditions records are loaded with, joined by `AND` (none: every record). It is its
/// own SQL expression, so generated code can filter any table with it and the query stays
/// `Send`; values are bound with the column's type so indexes are used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordFilter {
    /// The conditions.
    pub conditions: Vec<Condition>,
}

impl RecordFilter {
    /// Adds a condition.
    pub fn and(mut self, condition: Condition) -> RecordFilter {
        self.conditions.push(condition);
        self
    }
}

impl From<ColumnIn> for RecordFilter {
    fn from(column_in: ColumnIn) -> Self {
        RecordFilter { conditions: vec![Condition::In(column_in)] }
    }
}

impl diesel::expression::Expression for RecordFilter {
    type SqlType = Bool;
}

impl<QS> diesel::expression::AppearsOnTable<QS> for RecordFilter {}

impl<QS> diesel::expression::SelectableExpression<QS> for RecordFilter {}

impl<GB> diesel::expression::ValidGrouping<GB> for RecordFilter {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl diesel::query_builder::QueryId for RecordFilter {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::QueryFragment<Pg> for RecordFilter {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if self.conditions.is_empty() {
            out.push_sql("TRUE");
            return Ok(());
        }
        for (index, condition) in self.conditions.iter().enumerate() {
            if index > 0 {
                out.push_sql(" AND ");
            }
            match condition {
                Condition::In(ColumnIn { column, values }) => {
                    out.push_identifier(column)?;
                    out.push_sql(" = ANY(");
                    match values {
                        IdValues::Integer(values) => out.push_bind_param::<Array<BigInt>, Vec<i64>>(values)?,
                        IdValues::Text(values) => out.push_bind_param::<Array<Text>, Vec<String>>(values)?,
                    }
                    out.push_sql(")");
                }
                Condition::After { column, value } => {
                    out.push_identifier(column)?;
                    out.push_sql(" > ");
                    match value {
                        IdValue::Integer(value) => out.push_bind_param::<BigInt, i64>(value)?,
                        IdValue::Text(value) => out.push_bind_param::<Text, String>(value)?,
                    }
                }
                Condition::Between { column, from, to } => {
                    out.push_identifier(column)?;
                    out.push_sql(" BETWEEN ");
                    out.push_bind_param::<diesel::sql_types::Timestamptz, _>(from)?;
                    out.push_sql(" AND ");
                    out.push_bind_param::<diesel::sql_types::Timestamptz, _>(to)?;
                }
                Condition::IsNull(column) => {
                    out.push_identifier(column)?;
                    out.push_sql(" IS NULL");
                }
                Condition::TextEquals { column, value } => {
                    out.push_identifier(column)?;
                    out.push_sql("::text = ");
                    out.push_bind_param::<Text, String>(value)?;
                }
            }
        }
        Ok(())
    }
}

/// One `#[publish(...)]`: a model published on a topic.
#[derive(Debug)]
pub struct Publication {
    /// The model.
    pub model: &'static ModelEntry,
    /// The topic's full name (a declared topic).
    pub topic: &'static str,
    /// How the partition key is found.
    pub partition_key: PartitionKeySource,
    /// `with(...)` dependencies, sideloaded into this model's messages.
    pub with: &'static [Dependency],
    /// `observe(...)`: models whose changes republish related records of this model.
    pub observe: &'static [Observer],
    /// Serializes one record (with its sideloads) into the JSON object put in `data`.
    pub serialize: fn(&dyn Record, &Sideloads) -> Result<Value, SerializeError>,
    /// `schema = "…"`: the Avro record schema the model was checked against at compile time;
    /// it must be the topic's.
    pub schema: Option<&'static str>,
    /// `delayed = "5m"` or `delayed = ["5m", "1h"]`: the chain of delayed copies each message
    /// also sends (empty: none). The relay sends the first stage to
    /// `<topic>_delay_<first>` with the immediate message; the delayer re-sends it when due.
    pub delayed: &'static [crate::wire::delay::Delay],
    /// `file:line` of the declaration.
    pub location: &'static str,
}

/// A function computing a record's partition key (dionysus-rb's callable partition key, P-26):
/// on a publication (`partition_key_with`), on a topic declaration, or as the default of a
/// registry ([`Registry::with_default_partition_key`](crate::Registry::with_default_partition_key)).
/// `None` means no partition key (the producer then partitions by the message key).
pub type PartitionKeyFn = fn(&dyn Record) -> Option<String>;

/// Where a publication's partition key comes from.
#[derive(Copy, Clone, Debug)]
pub enum PartitionKeySource {
    /// Not given: the topic's `partition_key` (an attribute or a function), else the
    /// registry's default function, else the configured default attribute.
    Inherit,
    /// A field of the model.
    Attribute(&'static str),
    /// A function of the record (`partition_key_with = path`).
    Resolver(fn(&dyn Record) -> Option<String>),
}

/// A `with(...)` dependency: `model` records are sideloaded into the parent's message, and
/// any change to one of them republishes its parent(s).
#[derive(Debug)]
pub struct Dependency {
    /// The dependency's model.
    pub model: fn() -> &'static ModelEntry,
    /// How parent and dependency are related.
    pub relation: fn() -> Relation,
}

/// An `observe(...)`: when one of `columns` of an `model` record changes, the related records
/// of the publication's model are republished.
#[derive(Debug)]
pub struct Observer {
    /// The observed model.
    pub model: fn() -> &'static ModelEntry,
    /// The observed columns.
    pub columns: &'static [&'static str],
    /// How the publication's model and the observed one are related.
    pub relation: fn() -> Relation,
}

/// How a publication's model (the *owner*) relates to another model (a dependency or an
/// observed model), named by the foreign-key column.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The other model holds the key: `other.<column> = owner.<primary key>` (a booking's
    /// fees: one owner, many others).
    OtherHoldsKey(&'static str),
    /// The owner holds the key: `owner.<column> = other.<primary key>` (a rental's account:
    /// many owners, one other).
    OwnerHoldsKey(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ids_are_parsed_and_rejected_clearly() {
        let filter = ColumnIn::parse("id", IdKind::Integer, &["1".into(), " 2".into()]).unwrap();
        assert_eq!(filter.values, IdValues::Integer(vec![1, 2]));
        let error = ColumnIn::parse("id", IdKind::Integer, &["x".into()]).unwrap_err();
        assert!(error.to_string().contains("`x` is not an integer id for column `id`"), "{error}");
    }
}
