//! The kinds of replica columns ([`ColumnKind`]) and which Rust types a replica field may
//! have, decided by the compiler: `#[derive(Consume)]` reads each column's kind,
//! nullability and PostgreSQL type from the field type's [`ColumnType`] impl, so type aliases
//! work and a type that cannot hold payload values (a `Vec` of anything, a type that merely
//! ends in `Value`) is a compile error on the field's type. [`PayloadColumn`] does the same
//! for the column keeping the whole payload.
//!
//! This module only classifies; what a kind accepts at run time is the replica planner's
//! business (`plan::normalize`), and the table a declaration expects is `ddl`'s.

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

impl ColumnKind {
    /// The PostgreSQL type a column of this kind has unless its field type says otherwise
    /// ([`ColumnType::SQL_TYPE`]): `bigint`, `double precision`, `numeric`, `boolean`,
    /// `text`, `timestamp with time zone`, `date`, `jsonb`, `uuid`; `text[]` for an array.
    pub const fn default_sql_type(self) -> &'static str {
        match self {
            ColumnKind::Integer => "bigint",
            ColumnKind::Float => "double precision",
            ColumnKind::Decimal => "numeric",
            ColumnKind::Bool => "boolean",
            ColumnKind::Text => "text",
            ColumnKind::Timestamp => "timestamp with time zone",
            ColumnKind::Date => "date",
            ColumnKind::Json => "jsonb",
            ColumnKind::Uuid => "uuid",
            ColumnKind::Array => "text[]",
        }
    }
}

/// A field type of a replica struct: the [`ColumnKind`] of its values, whether it accepts
/// `NULL` (an `Option`) and the PostgreSQL type of its column.
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
    /// The column's PostgreSQL type, as `dionysus replica-ddl` writes it: the type diesel
    /// maps the field type to (`i32` → `integer`, `NaiveDateTime` → `timestamp`,
    /// `Vec<i64>` → `bigint[]`). Defaults to the kind's ([`ColumnKind::default_sql_type`]).
    const SQL_TYPE: &'static str = Self::KIND.default_sql_type();
}

macro_rules! column_types {
    ($($ty:ty => $kind:ident, $sql:literal),* $(,)?) => {$(
        column_types!(@one $ty, $kind, false, $sql);
        column_types!(@one Option<$ty>, $kind, true, $sql);
        column_types!(@one Vec<$ty>, Array, false, concat!($sql, "[]"));
        column_types!(@one Vec<Option<$ty>>, Array, false, concat!($sql, "[]"));
        column_types!(@one Option<Vec<$ty>>, Array, true, concat!($sql, "[]"));
        column_types!(@one Option<Vec<Option<$ty>>>, Array, true, concat!($sql, "[]"));
    )*};
    (@one $ty:ty, $kind:ident, $nullable:literal, $sql:expr) => {
        #[diagnostic::do_not_recommend]
        impl ColumnType for $ty {
            const KIND: ColumnKind = ColumnKind::$kind;
            const NULLABLE: bool = $nullable;
            const SQL_TYPE: &'static str = $sql;
        }
    };
}

column_types! {
    i16 => Integer, "smallint",
    i32 => Integer, "integer",
    i64 => Integer, "bigint",
    f32 => Float, "real",
    f64 => Float, "double precision",
    bool => Bool, "boolean",
    String => Text, "text",
    chrono::DateTime<chrono::Utc> => Timestamp, "timestamp with time zone",
    chrono::NaiveDateTime => Timestamp, "timestamp without time zone",
    chrono::NaiveDate => Date, "date",
    serde_json::Value => Json, "jsonb",
}

#[cfg(feature = "bigdecimal")]
column_types! { bigdecimal::BigDecimal => Decimal, "numeric" }

column_types! { uuid::Uuid => Uuid, "uuid" }

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
    fn sql_types_are_the_ones_diesel_maps_the_field_type_to() {
        type Price = Option<f64>;
        assert_eq!(<i16 as ColumnType>::SQL_TYPE, "smallint");
        assert_eq!(<Option<i32> as ColumnType>::SQL_TYPE, "integer");
        assert_eq!(<Price as ColumnType>::SQL_TYPE, "double precision");
        assert_eq!(<chrono::NaiveDateTime as ColumnType>::SQL_TYPE, "timestamp without time zone");
        assert_eq!(<Option<chrono::DateTime<chrono::Utc>> as ColumnType>::SQL_TYPE, "timestamp with time zone");
        assert_eq!(<Vec<Option<i64>> as ColumnType>::SQL_TYPE, "bigint[]");
        assert_eq!(<Option<Vec<String>> as ColumnType>::SQL_TYPE, "text[]");
        assert_eq!(<serde_json::Value as ColumnType>::SQL_TYPE, "jsonb");
    }

    #[test]
    fn a_type_of_ones_own_takes_its_kinds_sql_type() {
        struct Cents;
        impl ColumnType for Cents {
            const KIND: ColumnKind = ColumnKind::Integer;
            const NULLABLE: bool = false;
        }
        assert_eq!(<Cents as ColumnType>::SQL_TYPE, "bigint");
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
