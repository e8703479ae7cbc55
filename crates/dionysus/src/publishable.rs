//! What `#[derive(Publishable)]` produces and the relay, genesis and the outbox writer
//! consume: the [`Publishable`] trait (identity, reflective attribute access, loaders that
//! fetch current records by ids in one query), and the `const` registry entries that describe
//! each model ([`ModelEntry`]) and each `#[publish(...)]` ([`Publication`]) with its `with(...)`
//! dependencies and `observe(...)` observers.
//!
//! Generated code is a trait impl plus these entries; everything they point at is an ordinary
//! generic function of this module. Relations between models are found through diesel's
//! `belongs_to` associations ([`relation`]), in either direction.
//!
//! This module does not write outbox rows (`outbox`) nor build messages (`serialize`).

use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;

use diesel::associations::BelongsTo;
use diesel::pg::Pg;
use diesel::result::QueryResult;
use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel::Column;
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use serde_json::Value;

/// A boxed future, as the loaders return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A diesel model whose changes are published. Implemented by `#[derive(Publishable)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not publishable",
    label = "not a `#[derive(dionysus::Publishable)]` model",
    note = "add `#[derive(dionysus::Publishable)]` to `{Self}` (a model that is only a `with(...)` dependency or observed needs no `#[publish(...)]`)"
)]
pub trait Publishable: Serialize + Send + Sync + Sized + 'static {
    /// The model's description.
    const MODEL: ModelEntry;
    /// One entry per `#[publish(...)]`, in declaration order.
    const PUBLICATIONS: &'static [Publication];

    /// The primary key as text (how the outbox stores it).
    fn primary_key(&self) -> String;

    /// The JSON value of a field (`None` when the model has no such field), as a serializer
    /// would write it (timestamps with milliseconds, see [`attribute_value`]).
    fn attribute(&self, name: &str) -> Option<Value>;

    /// Current records of the model's table matching `filter`, ordered by primary key, at
    /// most `limit`.
    fn load_filtered<'a>(
        conn: &'a mut AsyncPgConnection,
        filter: RecordFilter,
        limit: Option<i64>,
    ) -> BoxFuture<'a, QueryResult<Vec<Self>>>;
}

/// A type-erased publishable record, for code that handles any model (relay, genesis).
pub trait Record: Any + Send + Sync {
    /// The model.
    fn model(&self) -> &'static ModelEntry;
    /// Primary key as text.
    fn id(&self) -> String;
    /// See [`Publishable::attribute`].
    fn attribute(&self, name: &str) -> Option<Value>;
    /// The record as serde serializes it (a JSON object for structs).
    fn to_json(&self) -> Result<Value, serde_json::Error>;
    /// For downcasting to the concrete model.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Publishable> Record for T {
    fn model(&self) -> &'static ModelEntry {
        model_entry::<T>()
    }

    fn id(&self) -> String {
        self.primary_key()
    }

    fn attribute(&self, name: &str) -> Option<Value> {
        Publishable::attribute(self, name)
    }

    fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self).map(normalize_timestamps)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The `'static` model entry of `T` (promoted from the associated constant).
pub fn model_entry<T: Publishable>() -> &'static ModelEntry {
    struct Holder<T>(T);
    impl<T: Publishable> Holder<T> {
        const ENTRY: &'static ModelEntry = &T::MODEL;
    }
    Holder::<T>::ENTRY
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

/// Implemented for the primary-key types dionysus supports.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported primary-key type for a publishable model",
    note = "dionysus supports integer (i16, i32, i64) and text (String) primary keys"
)]
pub trait PrimaryKeyType {
    /// Its kind.
    const KIND: IdKind;
}

macro_rules! primary_key_types {
    ($($ty:ty => $kind:ident),*) => {$(impl PrimaryKeyType for $ty { const KIND: IdKind = IdKind::$kind; })*};
}
primary_key_types!(i16 => Integer, i32 => Integer, i64 => Integer, String => Text);

/// Loads the records matching a filter, at most `limit`, as erased records.
pub type ErasedLoader = for<'a> fn(
    &'a mut AsyncPgConnection,
    RecordFilter,
    Option<i64>,
) -> BoxFuture<'a, QueryResult<Vec<Box<dyn Record>>>>;

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
            }
        }
        Ok(())
    }
}

/// The erased loader of `T`, stored in its [`ModelEntry`].
pub fn load_erased<T: Publishable>(
    conn: &mut AsyncPgConnection,
    filter: RecordFilter,
    limit: Option<i64>,
) -> BoxFuture<'_, QueryResult<Vec<Box<dyn Record>>>> {
    Box::pin(async move {
        let records = T::load_filtered(conn, filter, limit).await?;
        Ok(records.into_iter().map(|record| Box::new(record) as Box<dyn Record>).collect())
    })
}

/// `T::PUBLICATIONS`, as a function pointer for [`ModelEntry::publications`].
pub fn publications_of<T: Publishable>() -> &'static [Publication] {
    T::PUBLICATIONS
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
    pub serialize: fn(&dyn Record, &crate::serialize::Sideloads) -> Result<Value, crate::serialize::SerializeError>,
    /// `file:line` of the declaration.
    pub location: &'static str,
}

/// Where a publication's partition key comes from.
#[derive(Copy, Clone, Debug)]
pub enum PartitionKeySource {
    /// Not given: the topic's `partition_key`, else the configured default.
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

/// Probe used by generated code to find a [`Relation`] through diesel's `BelongsTo` impls,
/// trying `Other: BelongsTo<Owner>` first, then `Owner: BelongsTo<Other>` (autoref
/// specialisation: `(&&&RelationProbe::<Other, Owner>::NEW).relation()`).
#[doc(hidden)]
pub struct RelationProbe<Other, Owner>(std::marker::PhantomData<fn() -> (Other, Owner)>);

impl<Other, Owner> RelationProbe<Other, Owner> {
    #[doc(hidden)]
    pub const NEW: Self = RelationProbe(std::marker::PhantomData);
}

#[doc(hidden)]
pub trait OtherBelongsToOwner {
    fn relation(&self) -> Relation;
}

impl<Other, Owner> OtherBelongsToOwner for &&RelationProbe<Other, Owner>
where
    Other: BelongsTo<Owner>,
{
    fn relation(&self) -> Relation {
        Relation::OtherHoldsKey(<<Other as BelongsTo<Owner>>::ForeignKeyColumn as Column>::NAME)
    }
}

#[doc(hidden)]
pub trait OwnerBelongsToOther {
    fn relation(&self) -> Relation;
}

impl<Other, Owner> OwnerBelongsToOther for &RelationProbe<Other, Owner>
where
    Owner: BelongsTo<Other>,
{
    fn relation(&self) -> Relation {
        Relation::OwnerHoldsKey(<<Owner as BelongsTo<Other>>::ForeignKeyColumn as Column>::NAME)
    }
}

/// Returned by the probe when neither model belongs to the other.
#[doc(hidden)]
pub struct Unrelated;

#[doc(hidden)]
pub trait NotRelated {
    fn relation(&self) -> Unrelated;
}

impl<Other, Owner> NotRelated for RelationProbe<Other, Owner> {
    fn relation(&self) -> Unrelated {
        Unrelated
    }
}

/// Accepts only a found [`Relation`]; the probe's `Unrelated` fails here with a message
/// naming both models.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Other}` and `{Owner}` are not related through a diesel association",
    label = "no `belongs_to` between `{Other}` and `{Owner}`",
    note = "derive diesel's `Associations` with `#[diesel(belongs_to({Owner}))]` on `{Other}` (or `belongs_to({Other})` on `{Owner}`), or name the key column with `via = \"column\"`"
)]
pub trait FoundRelation<Other, Owner> {
    fn into_relation(self) -> Relation;
}

impl<Other, Owner> FoundRelation<Other, Owner> for Relation {
    fn into_relation(self) -> Relation {
        self
    }
}

/// Used by generated code: the relation found by the probe, or a compile error.
#[doc(hidden)]
pub fn relation<Other, Owner, R: FoundRelation<Other, Owner>>(found: R) -> Relation {
    found.into_relation()
}

/// JSON value of a field, with timestamps written as ActiveSupport writes them.
pub fn attribute_value<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).map(normalize_timestamps).unwrap_or(Value::Null)
}

/// Rewrites every string that is an RFC 3339 timestamp with the millisecond precision
/// dionysus-rb uses (`2022-08-12T13:24:24.000Z`); other values are unchanged. chrono writes
/// `2022-08-12T13:24:24Z` or nanoseconds; the instant is the same either way.
pub fn normalize_timestamps(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(normalize_timestamp_text(text)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_timestamps).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalize_timestamps(v))).collect()),
        other => other,
    }
}

fn normalize_timestamp_text(text: String) -> String {
    let bytes = text.as_bytes();
    let looks_like = bytes.len() >= 20
        && bytes.len() <= 40
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !looks_like {
        return text;
    }
    match chrono::DateTime::parse_from_rfc3339(&text) {
        Ok(time) if text.ends_with('Z') => crate::envelope::format_timestamp(&time.with_timezone(&chrono::Utc)),
        Ok(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Err(_) => text,
    }
}

/// A partition key from an attribute value, rendered as dionysus-rb renders it (Ruby's
/// `value.to_i.to_s`, P-26): integers as decimal strings, `null` as `"0"`, strings by their
/// leading integer (`"12abc"` → `"12"`, `"abc"` → `"0"`), floats truncated.
pub fn partition_key_from_value(value: &Value) -> String {
    match value {
        Value::Null => "0".to_owned(),
        Value::Bool(flag) => u8::from(*flag).to_string(),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => int.to_string(),
            (None, Some(uint), _) => uint.to_string(),
            (None, None, Some(float)) if float.is_finite() => format!("{}", float.trunc() as i128),
            _ => "0".to_owned(),
        },
        Value::String(text) => leading_integer(text),
        Value::Array(_) | Value::Object(_) => "0".to_owned(),
    }
}

/// Ruby's `String#to_i`: optional leading whitespace, an optional sign, then digits
/// (underscores between digits allowed); anything else gives 0.
fn leading_integer(text: &str) -> String {
    let trimmed = text.trim_start();
    let (negative, rest) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let mut digits = String::new();
    let mut previous_digit = false;
    for c in rest.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            previous_digit = true;
        } else if c == '_' && previous_digit {
            previous_digit = false;
        } else {
            break;
        }
    }
    let digits = digits.trim_start_matches('0');
    match (digits.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn partition_keys_render_like_ruby_to_i() {
        // Vector p16: attribute keys go through to_i.to_s.
        let cases = [
            (json!(1), "1"),
            (json!(2), "2"),
            (Value::Null, "0"),
            (json!("12abc"), "12"),
            (json!("abc"), "0"),
            (json!("  -7x"), "-7"),
            (json!("1_000"), "1000"),
            (json!("007"), "7"),
            (json!(3.9), "3"),
            (json!("550e8400-e29b-41d4-a716-446655440000"), "550"),
        ];
        for (value, expected) in cases {
            assert_eq!(partition_key_from_value(&value), expected, "{value}");
        }
    }

    #[test]
    fn timestamps_are_normalised_to_milliseconds() {
        let value = json!({"a": "2022-08-12T13:24:24Z", "b": ["2022-08-12T13:24:24.123456789Z"], "c": "2022-08-12 not a time", "d": 5});
        assert_eq!(
            normalize_timestamps(value),
            json!({"a": "2022-08-12T13:24:24.000Z", "b": ["2022-08-12T13:24:24.123Z"], "c": "2022-08-12 not a time", "d": 5})
        );
        assert_eq!(normalize_timestamps(json!("2022-08-12T15:24:24+02:00")), json!("2022-08-12T15:24:24.000+02:00"));
    }

    #[test]
    fn integer_ids_are_parsed_and_rejected_clearly() {
        let filter = ColumnIn::parse("id", IdKind::Integer, &["1".into(), " 2".into()]).unwrap();
        assert_eq!(filter.values, IdValues::Integer(vec![1, 2]));
        let error = ColumnIn::parse("id", IdKind::Integer, &["x".into()]).unwrap_err();
        assert!(error.to_string().contains("`x` is not an integer id for column `id`"), "{error}");
    }
}
