//! The [`Publishable`] trait `#[derive(Publishable)]` implements (identity, reflective
//! attribute access, the parts of the query that loads current records), the generic
//! functions its generated registry entries point at (the loader among them: one query
//! builder and one future for every model, only the row decoding being the model's own),
//! the probes that find how two models are related through diesel's `belongs_to`
//! associations ([`relation`]), and the rule that picks a record's partition key.
//!
//! The entries themselves are declarations (`registry::model`); writing outbox rows is
//! `outbox`'s and building messages `plan`'s.

use std::any::Any;

use diesel::associations::BelongsTo;
use diesel::deserialize::FromSqlRow;
use diesel::expression::{Expression, Selectable};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::{BigInt, Untyped};
use diesel::Column;
use diesel_async::{AsyncConnectionCore, AsyncPgConnection};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde_json::Value;

use crate::config::ProducerConfig;
use crate::registry::model::{
    BoxFuture, IdKind, LoadPart, LoadSource, Model, ModelEntry, Publication, Record, RecordFilter, Relation,
};
use crate::registry::Registry;
use crate::wire::time::normalize_timestamps;

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

    /// The parts of the query that loads the model's records: its selected columns, its
    /// table and its primary-key column. The query itself is built and run by [`load_erased`],
    /// compiled once for every model.
    fn load_source() -> LoadSource;
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
        // `to_value(self)` would add `to_value::<&T>` and `<&T as Serialize>` per model.
        match Serialize::serialize(self, serde_json::value::Serializer) {
            Ok(value) => Ok(normalize_timestamps(value)),
            Err(error) => Err(error),
        }
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

impl<T: Publishable> Model for T {
    fn entry() -> &'static ModelEntry {
        model_entry::<T>()
    }
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

/// `SELECT <selection> FROM <table> WHERE <filter> ORDER BY <key> [LIMIT n]`.
struct LoadStatement {
    source: LoadSource,
    filter: RecordFilter,
    limit: Option<i64>,
}

impl QueryFragment<Pg> for LoadStatement {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        self.source.walk(LoadPart::Select, out.reborrow())?;
        out.push_sql(" FROM ");
        self.source.walk(LoadPart::From, out.reborrow())?;
        out.push_sql(" WHERE ");
        self.filter.walk_ast(out.reborrow())?;
        out.push_sql(" ORDER BY ");
        self.source.walk(LoadPart::Order, out.reborrow())?;
        if let Some(limit) = &self.limit {
            out.push_sql(" LIMIT ");
            out.push_bind_param::<BigInt, i64>(limit)?;
        }
        Ok(())
    }
}

impl QueryId for LoadStatement {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for LoadStatement {
    type SqlType = Untyped;
}

/// A row as the connection returns it.
type LoadedRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// Builds one erased record from a row.
type BuildRecord = fn(&LoadedRow) -> diesel::deserialize::Result<Box<dyn Record>>;

/// The SQL type of `T`'s selection.
type SelectionType<T> = <<T as Selectable<Pg>>::SelectExpression as Expression>::SqlType;

/// One `T` from a row of its selection, erased. (A `match` rather than `?` or `map`: each of
/// those is one more function instantiated for every model.)
fn build_record<T>(row: &LoadedRow) -> diesel::deserialize::Result<Box<dyn Record>>
where
    T: Publishable + Selectable<Pg> + FromSqlRow<SelectionType<T>, Pg>,
{
    match <T as FromSqlRow<SelectionType<T>, Pg>>::build_from_row(row) {
        Ok(record) => Ok(Box::new(record)),
        Err(error) => Err(error),
    }
}

/// Runs a load statement and builds each row: the one future every model's loader shares.
fn load_records(
    conn: &mut AsyncPgConnection,
    statement: LoadStatement,
    build: BuildRecord,
) -> BoxFuture<'_, QueryResult<Vec<Box<dyn Record>>>> {
    Box::pin(async move {
        let rows = AsyncConnectionCore::load(conn, statement).await?;
        rows.map(|row| row.and_then(|row| build(&row).map_err(diesel::result::Error::DeserializationError)))
            .try_collect()
            .await
    })
}

/// The erased loader of `T`, stored in its [`ModelEntry`]: `T`'s records matching `filter`,
/// ordered by primary key, at most `limit`. Only the row decoding is `T`'s own code.
pub fn load_erased<T>(
    conn: &mut AsyncPgConnection,
    filter: RecordFilter,
    limit: Option<i64>,
) -> BoxFuture<'_, QueryResult<Vec<Box<dyn Record>>>>
where
    T: Publishable + Selectable<Pg> + FromSqlRow<SelectionType<T>, Pg>,
{
    load_records(conn, LoadStatement { source: T::load_source(), filter, limit }, build_record::<T>)
}

/// `T::PUBLICATIONS`, as a function pointer for [`ModelEntry::publications`].
pub fn publications_of<T: Publishable>() -> &'static [Publication] {
    T::PUBLICATIONS
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

/// The partition key of a record for a publication (P-26), with the configured default
/// attribute: [`Registry::partition_key`].
pub fn partition_key(
    publication: &Publication,
    record: &dyn Record,
    registry: &Registry,
    config: &ProducerConfig,
) -> Option<String> {
    registry.partition_key(publication, record, &config.default_partition_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::ColumnIn;

    mod schema {
        diesel::table! {
            app.rentals (uid) {
                uid -> Text,
                #[sql_name = "type"]
                kind -> Text,
            }
        }
    }
    use schema::rentals;

    #[test]
    fn the_load_statement_puts_each_part_of_its_source_in_its_place() {
        let source = LoadSource::new((rentals::uid, rentals::kind), rentals::table, rentals::uid);
        let filter = ColumnIn::parse("uid", IdKind::Text, &["k7".into()]).unwrap().into();
        let statement = LoadStatement { source, filter, limit: Some(5) };
        let sql = diesel::debug_query::<Pg, _>(&statement).to_string();
        let (select, rest) = sql.split_once(" FROM ").unwrap();
        assert_eq!(select, r#"SELECT "app"."rentals"."uid", "app"."rentals"."type""#, "{sql}");
        let (from, rest) = rest.split_once(" WHERE ").unwrap();
        assert_eq!(from, r#""app"."rentals""#, "{sql}");
        let (_, order) = rest.split_once(" ORDER BY ").unwrap();
        assert!(order.starts_with(r#""app"."rentals"."uid" LIMIT $"#), "{sql}");
        assert!(sql.ends_with(r#"5]"#), "{sql}");
    }
}
