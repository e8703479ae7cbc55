//! The kinds of replica columns ([`ColumnKind`]) and which Rust types a replica field may
//! have, decided by the compiler: `#[derive(Consume)]` reads each column's kind and
//! nullability from the field type's [`ColumnType`] impl, so type aliases work and a type
//! that cannot hold payload values (a `Vec` of anything, a type that merely ends in `Value`)
//! is a compile error on the field's type. [`PayloadColumn`] does the same for the column
//! keeping the whole payload.
//!
//! This module only classifies; what a kind accepts at run time is the replica planner's
//! business (`plan::normalize`).

/// The shape of a replica column's values, derived from the field's Rust type through
/// [`ColumnType`]. Incoming values are checked against it before anything is written, so a
/// payload of the wrong type is rejected (dead-lettered) instead of failing the whole batch
/// in the database.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// `i16`, `i32`, `i64`: a JSON integer or a string holding one.
    Integer,
    /// `f32`, `f64`: a JSON number or a string holding one.
    Float,
    /// `BigDecimal`: a JSON number or a numeric string.
    Decimal,
    /// `bool`.
    Bool,
    /// `String`: a string; numbers and booleans are written as their text.
    Text,
    /// `DateTime<Utc>`, `NaiveDateTime`: anything [`crate::wire::envelope::parse_timestamp`] reads.
    Timestamp,
    /// `NaiveDate`: `YYYY-MM-DD` or a timestamp.
    Date,
    /// `serde_json::Value`: any JSON.
    Json,
    /// `Uuid`: a string.
    Uuid,
    /// `Vec<T>`: a JSON array.
    Array,
}

/// A field type of a replica struct: the [`ColumnKind`] of its values and whether it
/// accepts `NULL` (an `Option`).
///
/// Implemented for `i16`, `i32`, `i64`, `f32`, `f64`, `bool`, `String`, `DateTime<Utc>`,
/// `NaiveDateTime`, `NaiveDate`, `serde_json::Value`, `uuid::Uuid` and
/// `bigdecimal::BigDecimal` (feature `bigdecimal`), for a `Vec` of one of these or of its
/// `Option`, and for an `Option` of any of them. Implement it for your own type when its
/// column holds one of these kinds.
#[diagnostic::on_unimplemented(
    message = "the field type `{Self}` cannot hold a replica column's values",
    label = "not a replica column type",
    note = "replica fields are i16, i32, i64, f32, f64, bool, String, DateTime<Utc>, NaiveDateTime, NaiveDate, serde_json::Value, Uuid, BigDecimal (feature `bigdecimal`), a Vec of one of these, or an Option of any of them",
    note = "mark the field `#[consume(skip)]` to leave its column to the application"
)]
pub trait ColumnType {
    /// The kind of the column's values.
    const KIND: ColumnKind;
    /// Whether the column accepts `NULL`.
    const NULLABLE: bool;
}

macro_rules! column_types {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        column_types!(@one $ty, $kind, false);
        column_types!(@one Option<$ty>, $kind, true);
        column_types!(@one Vec<$ty>, Array, false);
        column_types!(@one Vec<Option<$ty>>, Array, false);
        column_types!(@one Option<Vec<$ty>>, Array, true);
        column_types!(@one Option<Vec<Option<$ty>>>, Array, true);
    )*};
    (@one $ty:ty, $kind:ident, $nullable:literal) => {
        #[diagnostic::do_not_recommend]
        impl ColumnType for $ty {
            const KIND: ColumnKind = ColumnKind::$kind;
            const NULLABLE: bool = $nullable;
        }
    };
}

column_types! {
    i16 => Integer,
    i32 => Integer,
    i64 => Integer,
    f32 => Float,
    f64 => Float,
    bool => Bool,
    String => Text,
    chrono::DateTime<chrono::Utc> => Timestamp,
    chrono::NaiveDateTime => Timestamp,
    chrono::NaiveDate => Date,
    serde_json::Value => Json,
}

#[cfg(feature = "bigdecimal")]
column_types! { bigdecimal::BigDecimal => Decimal }

column_types! { uuid::Uuid => Uuid }

/// A field type that can keep the whole deserialized payload (`synced_data`):
/// `serde_json::Value` or an `Option` of it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep the whole payload: the `synced_data` column is a `serde_json::Value`",
    label = "not a `serde_json::Value`",
    note = "make the field `serde_json::Value` or `Option<serde_json::Value>` (a `jsonb` column), or name another field with `#[consume(synced_data = \"...\")]`"
)]
pub trait PayloadColumn {}

#[diagnostic::do_not_recommend]
impl PayloadColumn for serde_json::Value {}

#[diagnostic::do_not_recommend]
impl PayloadColumn for Option<serde_json::Value> {}

/// Used by generated code: compiles only for a [`PayloadColumn`].
#[doc(hidden)]
pub const fn payload_column<T: PayloadColumn + ?Sized>() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape<T: ColumnType>() -> (ColumnKind, bool) {
        (T::KIND, T::NULLABLE)
    }

    #[test]
    fn kinds_and_nullability_follow_the_type_and_its_aliases() {
        type Price = Option<f64>;
        assert_eq!(shape::<i32>(), (ColumnKind::Integer, false));
        assert_eq!(shape::<Price>(), (ColumnKind::Float, true));
        assert_eq!(shape::<Option<chrono::DateTime<chrono::Utc>>>(), (ColumnKind::Timestamp, true));
        assert_eq!(shape::<Vec<Option<String>>>(), (ColumnKind::Array, false));
        assert_eq!(shape::<Option<Vec<i64>>>(), (ColumnKind::Array, true));
        assert_eq!(shape::<serde_json::Value>(), (ColumnKind::Json, false));
    }

    #[cfg(feature = "bigdecimal")]
    #[test]
    fn big_decimals_are_decimal_columns() {
        assert_eq!(shape::<Option<bigdecimal::BigDecimal>>(), (ColumnKind::Decimal, true));
    }

    #[test]
    fn uuids_are_uuid_columns() {
        assert_eq!(shape::<uuid::Uuid>(), (ColumnKind::Uuid, false));
    }
}
