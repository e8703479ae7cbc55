//! Avro schemas at compile time: finding a schema file by its full name (deimos layout,
//! `schemas/com/example/Rental.avsc` under the crate), reading it with `serde_json` into the
//! small [`AvroType`] model, and checking a struct's fields against it. Every macro that
//! names a schema (`#[dionysus::topic]`, `#[publish]`, `#[consume]`) goes through here.
//!
//! This module decides what is *compatible*; it does not encode anything (the runtime does,
//! with the full Avro implementation). Rust types it does not know (the user's own) are
//! accepted: only types whose Avro counterpart is certain are compared.

use std::path::PathBuf;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use serde_json::Value;
use syn::{GenericArgument, LitStr, PathArguments, Type};

use crate::ctxt::Ctxt;

/// Where schema files are looked for when neither `schema_dir = "…"` nor the environment
/// says otherwise, relative to the crate's manifest directory.
const DEFAULT_DIR: &str = "schemas";
/// Overrides the default directory for a whole build (e.g. from `.cargo/config.toml`'s
/// `[env]`); relative paths are taken from the crate's manifest directory.
const DIR_ENV: &str = "DIONYSUS_SCHEMA_DIR";
/// Fields the producer fills itself when a schema has them (deimos' auto-added fields).
pub(crate) const AUTO_FIELDS: [&str; 2] = ["message_id", "timestamp"];

/// `schema = "com.example.Rental"` with an optional `schema_dir = "…"`.
#[derive(Clone)]
pub(crate) struct SchemaRef {
    pub(crate) name: LitStr,
    pub(crate) dir: Option<LitStr>,
}

impl SchemaRef {
    /// `schema = "…"` with its optional `schema_dir = "…"`, which means nothing alone.
    pub(crate) fn from_keys(cx: &Ctxt, schema: Option<LitStr>, dir: Option<LitStr>) -> Option<SchemaRef> {
        match (schema, dir) {
            (Some(name), dir) => Some(SchemaRef { name, dir }),
            (None, Some(dir)) => {
                cx.error_spanned_by(&dir, "`schema_dir` says where `schema = \"…\"` is read from; name the schema too");
                None
            }
            (None, None) => None,
        }
    }

    /// The file the schema is read from.
    pub(crate) fn path(&self) -> PathBuf {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default();
        let dir = match (&self.dir, std::env::var_os(DIR_ENV)) {
            (Some(dir), _) => PathBuf::from(dir.value()),
            (None, Some(dir)) => PathBuf::from(dir),
            (None, None) => PathBuf::from(DEFAULT_DIR),
        };
        let mut path = manifest.join(dir);
        let name = self.name.value();
        let mut parts = name.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_some() {
                path.push(part);
            } else {
                path.push(format!("{part}.avsc"));
            }
        }
        path
    }

    /// The schema's registry entry, its text embedded with `include_str!` (so the crate is
    /// also rebuilt when the file changes). Emitted inside a block that has `__d` in scope.
    pub(crate) fn embed(&self) -> TokenStream {
        let path = self.path().to_string_lossy().into_owned();
        let name = self.name.value();
        quote! {
            __d::inventory::submit! {
                __d::SchemaEntry { name: #name, definition: ::core::include_str!(#path) }
            }
        }
    }

    /// Reads and parses the schema; a missing, unreadable or invalid file is recorded on the
    /// `schema = …` literal.
    pub(crate) fn load(&self, cx: &Ctxt) -> Option<RecordSchema> {
        let path = self.path();
        let name = self.name.value();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                cx.error_spanned_by(
                    &self.name,
                    format!(
                        "cannot read the Avro schema `{name}` from `{}`: {error}\n\
                         help: schema files live under the crate's `{DEFAULT_DIR}/` directory (or `schema_dir = \
                         \"…\"`, or ${DIR_ENV}), one `.avsc` file per full name",
                        path.display()
                    ),
                );
                return None;
            }
        };
        match RecordSchema::parse(&text) {
            Ok(schema) => Some(schema),
            Err(problem) => {
                cx.error_spanned_by(&self.name, format!("the Avro schema `{name}` ({}) {problem}", path.display()));
                None
            }
        }
    }
}

/// A record schema: its fields in order.
pub(crate) struct RecordSchema {
    pub(crate) fields: Vec<SchemaField>,
}

/// One field of a record schema.
pub(crate) struct SchemaField {
    pub(crate) name: String,
    pub(crate) ty: AvroType,
    pub(crate) has_default: bool,
}

impl RecordSchema {
    /// Parses the text of an `.avsc` file holding a record.
    pub(crate) fn parse(text: &str) -> Result<RecordSchema, String> {
        let value: Value = serde_json::from_str(text).map_err(|error| format!("is not valid JSON: {error}"))?;
        if value.get("type").and_then(Value::as_str) != Some("record") {
            return Err("is not a record schema (`\"type\": \"record\"`)".to_owned());
        }
        let fields = value.get("fields").and_then(Value::as_array).ok_or("has no `fields` array")?;
        let fields = fields
            .iter()
            .map(|field| {
                let name = field.get("name").and_then(Value::as_str).ok_or("has a field without a `name`")?;
                let ty = field.get("type").ok_or_else(|| format!("has no `type` for field `{name}`"))?;
                let ty = AvroType::parse(ty).map_err(|problem| format!("field `{name}`: {problem}"))?;
                Ok(SchemaField { name: name.to_owned(), ty, has_default: field.get("default").is_some() })
            })
            .collect::<Result<_, String>>()?;
        Ok(RecordSchema { fields })
    }

    pub(crate) fn field(&self, name: &str) -> Option<&SchemaField> {
        self.fields.iter().find(|field| field.name == name)
    }

    fn names(&self) -> String {
        self.fields.iter().map(|field| field.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// The Avro types the checks tell apart (logical types included).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AvroType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Date,
    Time,
    Timestamp,
    Decimal,
    Uuid,
    Enum,
    Array(Box<AvroType>),
    Map(Box<AvroType>),
    /// A record, a fixed or a reference to a named type.
    Named,
    Union(Vec<AvroType>),
}

impl AvroType {
    fn parse(value: &Value) -> Result<AvroType, String> {
        match value {
            Value::String(name) => Ok(Self::primitive(name).unwrap_or(AvroType::Named)),
            Value::Array(members) => Ok(AvroType::Union(members.iter().map(Self::parse).collect::<Result<_, _>>()?)),
            Value::Object(object) => {
                let ty = object.get("type").ok_or("a type object has no `type`")?;
                if let Some(logical) = object.get("logicalType").and_then(Value::as_str) {
                    let known = match logical {
                        "date" => Some(AvroType::Date),
                        "time-millis" | "time-micros" => Some(AvroType::Time),
                        "timestamp-millis"
                        | "timestamp-micros"
                        | "local-timestamp-millis"
                        | "local-timestamp-micros" => Some(AvroType::Timestamp),
                        "decimal" => Some(AvroType::Decimal),
                        "uuid" => Some(AvroType::Uuid),
                        _ => None,
                    };
                    if let Some(known) = known {
                        return Ok(known);
                    }
                }
                match ty.as_str() {
                    Some("array") => Ok(AvroType::Array(Box::new(Self::parse(
                        object.get("items").ok_or("an array type has no `items`")?,
                    )?))),
                    Some("map") => Ok(AvroType::Map(Box::new(Self::parse(
                        object.get("values").ok_or("a map type has no `values`")?,
                    )?))),
                    Some("enum") => Ok(AvroType::Enum),
                    Some("record" | "fixed") => Ok(AvroType::Named),
                    _ => Self::parse(ty),
                }
            }
            other => Err(format!("`{other}` is not an Avro type")),
        }
    }

    fn primitive(name: &str) -> Option<AvroType> {
        Some(match name {
            "null" => AvroType::Null,
            "boolean" => AvroType::Boolean,
            "int" => AvroType::Int,
            "long" => AvroType::Long,
            "float" => AvroType::Float,
            "double" => AvroType::Double,
            "bytes" => AvroType::Bytes,
            "string" => AvroType::String,
            _ => return None,
        })
    }

    /// Whether `null` is one of the values: a union with `"null"`.
    fn nullable(&self) -> bool {
        matches!(self, AvroType::Union(members) if members.contains(&AvroType::Null))
    }

    /// The type without its `null` branch (a union of one other type is that type).
    fn non_null(&self) -> AvroType {
        match self {
            AvroType::Union(members) => {
                let rest: Vec<AvroType> = members.iter().filter(|member| **member != AvroType::Null).cloned().collect();
                match <[AvroType; 1]>::try_from(rest) {
                    Ok([single]) => single,
                    Err(rest) => AvroType::Union(rest),
                }
            }
            other => other.clone(),
        }
    }

    /// The type as a schema would spell it, for messages.
    fn describe(&self) -> String {
        match self {
            AvroType::Null => "null".to_owned(),
            AvroType::Boolean => "boolean".to_owned(),
            AvroType::Int => "int".to_owned(),
            AvroType::Long => "long".to_owned(),
            AvroType::Float => "float".to_owned(),
            AvroType::Double => "double".to_owned(),
            AvroType::Bytes => "bytes".to_owned(),
            AvroType::String => "string".to_owned(),
            AvroType::Date => "int (date)".to_owned(),
            AvroType::Time => "time".to_owned(),
            AvroType::Timestamp => "long (timestamp)".to_owned(),
            AvroType::Decimal => "bytes (decimal)".to_owned(),
            AvroType::Uuid => "string (uuid)".to_owned(),
            AvroType::Enum => "enum".to_owned(),
            AvroType::Array(items) => format!("array of {}", items.describe()),
            AvroType::Map(values) => format!("map of {}", values.describe()),
            AvroType::Named => "a named type".to_owned(),
            AvroType::Union(members) => {
                format!("[{}]", members.iter().map(AvroType::describe).collect::<Vec<_>>().join(", "))
            }
        }
    }

    /// The Rust types that hold this type's values, for messages.
    fn rust_hint(&self) -> &'static str {
        match self {
            AvroType::Boolean => "bool",
            AvroType::Int => "i32",
            AvroType::Long => "i64",
            AvroType::Float => "f32",
            AvroType::Double => "f64",
            AvroType::Bytes => "Vec<u8>",
            AvroType::String | AvroType::Enum => "String",
            AvroType::Date => "chrono::NaiveDate",
            AvroType::Time => "chrono::NaiveTime",
            AvroType::Timestamp => "chrono::DateTime<Utc> or chrono::NaiveDateTime",
            AvroType::Decimal => "bigdecimal::BigDecimal",
            AvroType::Uuid => "uuid::Uuid or String",
            AvroType::Array(_) => "Vec<_>",
            AvroType::Map(_) => "a map keyed by String",
            AvroType::Null | AvroType::Named | AvroType::Union(_) => "serde_json::Value or your own type",
        }
    }
}

/// What a Rust field type is, as far as the checks care.
#[derive(Debug, PartialEq)]
enum RustType {
    Option(Box<RustType>),
    Bool,
    SmallInt,
    I32,
    I64,
    Unsigned,
    F32,
    F64,
    String,
    Bytes,
    DateTime,
    NaiveDate,
    NaiveTime,
    Decimal,
    Uuid,
    Json,
    Vec(Box<RustType>),
    Map(Box<RustType>),
    /// Not known here: the user's own type, an alias, a wrapper.
    Other,
}

impl RustType {
    fn of(ty: &Type) -> RustType {
        let path = match ty {
            Type::Path(path) if path.qself.is_none() => &path.path,
            Type::Group(group) => return Self::of(&group.elem),
            Type::Paren(paren) => return Self::of(&paren.elem),
            _ => return RustType::Other,
        };
        let Some(last) = path.segments.last() else { return RustType::Other };
        let args: Vec<&Type> = match &last.arguments {
            PathArguments::AngleBracketed(args) => args
                .args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        match (last.ident.to_string().as_str(), args.as_slice()) {
            ("Option", [inner]) => RustType::Option(Box::new(Self::of(inner))),
            ("bool", []) => RustType::Bool,
            ("i8" | "i16", []) => RustType::SmallInt,
            ("i32", []) => RustType::I32,
            ("i64", []) => RustType::I64,
            ("u8" | "u16" | "u32" | "u64" | "u128" | "i128" | "usize" | "isize", []) => RustType::Unsigned,
            ("f32", []) => RustType::F32,
            ("f64", []) => RustType::F64,
            ("String", []) => RustType::String,
            ("Vec", [inner]) if Self::of(inner) == RustType::Unsigned && is_u8(inner) => RustType::Bytes,
            ("Vec", [inner]) => RustType::Vec(Box::new(Self::of(inner))),
            ("HashMap" | "BTreeMap", [_, value]) => RustType::Map(Box::new(Self::of(value))),
            ("DateTime" | "NaiveDateTime", _) => RustType::DateTime,
            ("NaiveDate", []) => RustType::NaiveDate,
            ("NaiveTime", []) => RustType::NaiveTime,
            ("BigDecimal", []) => RustType::Decimal,
            ("Uuid", []) => RustType::Uuid,
            ("Value", []) => RustType::Json,
            _ => RustType::Other,
        }
    }

    /// Whether values of `avro` (not nullable) fit this type.
    fn holds(&self, avro: &AvroType) -> bool {
        use AvroType as A;
        match (self, avro) {
            (RustType::Other | RustType::Json, _) => true,
            (RustType::Option(inner), _) => inner.holds(avro),
            (RustType::Bool, A::Boolean) => true,
            (RustType::SmallInt | RustType::I32, A::Int) => true,
            (RustType::I32 | RustType::I64, A::Long) => true,
            (RustType::F32, A::Float) | (RustType::F32 | RustType::F64, A::Double) => true,
            (RustType::String, A::String | A::Enum | A::Uuid) => true,
            (RustType::Uuid, A::Uuid | A::String) => true,
            (RustType::Bytes, A::Bytes) => true,
            (RustType::DateTime, A::Timestamp) => true,
            (RustType::NaiveDate, A::Date) => true,
            (RustType::NaiveTime, A::Time) => true,
            (RustType::Decimal, A::Decimal) => true,
            (RustType::Vec(items), A::Array(avro_items)) => items.holds(&avro_items.non_null()),
            (RustType::Map(values), A::Map(avro_values)) => values.holds(&avro_values.non_null()),
            // A union of several types other than null needs a type of the user's.
            _ => false,
        }
    }
}

fn is_u8(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.path.is_ident("u8"))
}

/// Which way values flow between the struct and the schema.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The struct is written with the schema (`#[publish]`): every schema field without a
    /// default needs a field, and an `Option` needs a nullable schema field.
    Write,
    /// Records of the schema are read into the struct (`#[consume]`): a nullable schema
    /// field needs an `Option`.
    Read,
}

/// A struct field as the schema sees it: the name on the wire and the Rust type.
pub(crate) struct Member<'a> {
    pub(crate) name: &'a str,
    pub(crate) ty: &'a Type,
}

/// Checks `members` of `owner` against the schema; every mismatch is recorded on the field's
/// type, a missing field on the `schema = …` literal.
pub(crate) fn check(cx: &Ctxt, schema_ref: &SchemaRef, owner: &str, members: &[Member<'_>], direction: Direction) {
    let Some(schema) = schema_ref.load(cx) else { return };
    let schema_name = schema_ref.name.value();
    if direction == Direction::Write {
        let missing: Vec<&SchemaField> = schema
            .fields
            .iter()
            .filter(|field| !field.has_default && !AUTO_FIELDS.contains(&field.name.as_str()))
            .filter(|field| !members.iter().any(|member| member.name == field.name))
            .collect();
        for field in missing {
            cx.error_spanned_by(
                &schema_ref.name,
                format!(
                    "the Avro schema `{schema_name}` has a field `{}` ({}) without a default, and `{owner}` has no \
                     field for it\nhelp: add `{}: {}` to `{owner}`, or a `\"default\"` to the schema's field",
                    field.name,
                    field.ty.describe(),
                    field.name,
                    field.ty.rust_hint()
                ),
            );
        }
    }
    for member in members {
        let Some(field) = schema.field(member.name) else { continue };
        if let Some(problem) = mismatch(&field.ty, member.ty, direction) {
            cx.error_spanned_by(
                member.ty,
                format!("field `{}` does not fit the Avro schema `{schema_name}`: {problem}", member.name),
            );
        }
    }
}

/// Why a Rust type does not fit a schema field's type, if it does not.
fn mismatch(avro: &AvroType, ty: &Type, direction: Direction) -> Option<String> {
    let rust = RustType::of(ty);
    let non_null = avro.non_null();
    match (&rust, avro.nullable(), direction) {
        (RustType::Option(_) | RustType::Other | RustType::Json, _, _) => {}
        (_, true, Direction::Read) => {
            return Some(format!(
                "the schema's field is nullable ({}), so a record may hold `null` here\nhelp: make the field an \
                 `Option<_>`",
                avro.describe()
            ))
        }
        _ => {}
    }
    if let (RustType::Option(_), false, Direction::Write) = (&rust, avro.nullable(), direction) {
        if *avro != AvroType::Null {
            return Some(format!(
                "it is an `Option`, but the schema's field ({}) is not nullable\nhelp: make the schema's type a union \
                 with null, `[\"null\", …]`, or the field not an `Option`",
                avro.describe()
            ));
        }
    }
    if rust.holds(&non_null) {
        None
    } else {
        Some(format!("the schema says {}; use {}", avro.describe(), non_null.rust_hint()))
    }
}

/// Checks that a record schema has a field named `name` (a key field); recorded at `span`.
pub(crate) fn check_has_field(cx: &Ctxt, schema_ref: &SchemaRef, name: &str, span: Span) {
    let Some(schema) = schema_ref.load(cx) else { return };
    if schema.field(name).is_none() {
        cx.syn_error(syn::Error::new(
            span,
            format!(
                "the Avro schema `{}` has no field `{name}`; its fields: {}",
                schema_ref.name.value(),
                schema.names()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> Type {
        syn::parse_str(text).unwrap()
    }

    fn avro(text: &str) -> AvroType {
        AvroType::parse(&serde_json::from_str(text).unwrap()).unwrap()
    }

    #[test]
    fn integers_widen_into_long_but_not_back_into_int() {
        assert_eq!(mismatch(&avro(r#""long""#), &ty("i32"), Direction::Write), None);
        assert_eq!(mismatch(&avro(r#""long""#), &ty("i64"), Direction::Read), None);
        assert!(mismatch(&avro(r#""int""#), &ty("i64"), Direction::Read).is_some());
    }

    #[test]
    fn nullable_union_needs_an_option_when_read() {
        let nullable = avro(r#"["null", "string"]"#);
        assert!(mismatch(&nullable, &ty("String"), Direction::Read).is_some());
        assert_eq!(mismatch(&nullable, &ty("Option<String>"), Direction::Read), None);
        assert_eq!(mismatch(&nullable, &ty("String"), Direction::Write), None);
    }

    #[test]
    fn option_needs_a_nullable_field_when_written() {
        assert!(mismatch(&avro(r#""string""#), &ty("Option<String>"), Direction::Write).is_some());
        assert_eq!(mismatch(&avro(r#""string""#), &ty("Option<String>"), Direction::Read), None);
    }

    #[test]
    fn logical_types_match_their_rust_types() {
        let timestamp = avro(r#"{"type": "long", "logicalType": "timestamp-micros"}"#);
        assert_eq!(mismatch(&timestamp, &ty("DateTime<Utc>"), Direction::Write), None);
        assert!(mismatch(&timestamp, &ty("String"), Direction::Write).is_some());
        let decimal = avro(r#"{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}"#);
        assert_eq!(mismatch(&decimal, &ty("bigdecimal::BigDecimal"), Direction::Read), None);
        assert_eq!(
            mismatch(&avro(r#"{"type": "int", "logicalType": "date"}"#), &ty("NaiveDate"), Direction::Read),
            None
        );
    }

    #[test]
    fn enums_arrays_and_unknown_types() {
        let status = avro(r#"{"type": "enum", "name": "Status", "symbols": ["open", "closed"]}"#);
        assert_eq!(mismatch(&status, &ty("String"), Direction::Read), None);
        assert!(mismatch(&status, &ty("i32"), Direction::Read).is_some());
        let tags = avro(r#"{"type": "array", "items": "string"}"#);
        assert_eq!(mismatch(&tags, &ty("Vec<String>"), Direction::Read), None);
        assert!(mismatch(&tags, &ty("Vec<i64>"), Direction::Read).is_some());
        assert_eq!(mismatch(&avro(r#""string""#), &ty("MyWrapper"), Direction::Write), None);
    }

    #[test]
    fn a_record_schema_is_read_with_defaults() {
        let schema = RecordSchema::parse(
            r#"{"type": "record", "name": "Rental", "fields": [
                {"name": "id", "type": "long"},
                {"name": "name", "type": ["null", "string"], "default": null}
            ]}"#,
        )
        .unwrap();
        assert_eq!(schema.names(), "id, name");
        assert!(!schema.fields[0].has_default);
        assert!(schema.fields[1].has_default);
        assert!(RecordSchema::parse(r#"{"type": "enum"}"#).is_err());
        assert!(RecordSchema::parse("{").is_err());
    }

    #[test]
    fn the_file_follows_the_full_name() {
        let schema = SchemaRef { name: syn::parse_quote!("com.example.Rental"), dir: Some(syn::parse_quote!("avro")) };
        assert!(schema.path().ends_with("avro/com/example/Rental.avsc"));
    }
}
