//! Reading `#[dionysus::topic(...)]`: the arguments (known keys, value forms, the required
//! `name`, characters Kafka allows), every mistake recorded, and the item, which must be a
//! unit struct without generic parameters.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Fields, Item, ItemStruct, LitStr};

use super::{AvroTopic, KeyConfig, Topic};
use crate::attr::{self, Attr, Name};
use crate::avro::SchemaRef;
use crate::ctxt::Ctxt;
use crate::symbol::*;

const KEYS: &[Symbol] = &[
    NAMESPACE,
    NAME,
    PARTITION_KEY,
    PARTITION_KEY_WITH,
    PARTITIONS,
    REPLICATION_FACTOR,
    GENESIS_REPLICA,
    TOMBSTONE,
    FORMAT,
    SCHEMA,
    SCHEMA_DIR,
    KEY,
];
const KEY_KEYS: &[Symbol] = &[KEY_NONE, KEY_PLAIN, KEY_FIELD, SCHEMA];
const KEY_EXAMPLE: &str = r#"key(field = id)"#;

/// Kafka's limit on topic name length.
pub(super) const MAX_TOPIC_NAME: usize = 249;

/// The arguments, before they meet the struct.
pub(super) struct Args {
    namespace: Option<String>,
    name: String,
    name_span: Span,
    partition_key: Option<Name>,
    partition_key_with: Option<syn::Path>,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    genesis_replica: bool,
    kafka_null_tombstone: bool,
    avro: Option<AvroTopic>,
}

impl Args {
    pub(super) fn into_topic(self, item: ItemStruct) -> Topic {
        Topic {
            item,
            namespace: self.namespace,
            name: self.name,
            name_span: self.name_span,
            partition_key: self.partition_key,
            partition_key_with: self.partition_key_with,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            genesis_replica: self.genesis_replica,
            kafka_null_tombstone: self.kafka_null_tombstone,
            avro: self.avro,
        }
    }
}

pub(super) fn item(cx: &Ctxt, item: TokenStream) -> Option<ItemStruct> {
    match syn::parse2::<Item>(item) {
        Ok(Item::Struct(item)) => {
            if !matches!(item.fields, Fields::Unit) {
                cx.error_spanned_by(
                    &item.fields,
                    "`#[dionysus::topic]` goes on a unit struct, e.g. `pub struct Rentals;`",
                );
            }
            if !item.generics.params.is_empty() {
                cx.error_spanned_by(&item.generics, "a topic struct cannot have generic parameters");
            }
            Some(item)
        }
        Ok(other) => {
            cx.error_spanned_by(other, "`#[dionysus::topic]` goes on a unit struct, e.g. `pub struct Rentals;`");
            None
        }
        Err(error) => {
            cx.syn_error(error);
            None
        }
    }
}

pub(super) fn args(cx: &Ctxt, args: TokenStream) -> Option<Args> {
    let mut namespace = Attr::none(cx, NAMESPACE);
    let mut name = Attr::none(cx, NAME);
    let mut partition_key = Attr::none(cx, PARTITION_KEY);
    let mut partition_key_with = Attr::none(cx, PARTITION_KEY_WITH);
    let mut partitions = Attr::none(cx, PARTITIONS);
    let mut replication_factor = Attr::none(cx, REPLICATION_FACTOR);
    let mut genesis_replica = Attr::none(cx, GENESIS_REPLICA);
    let mut tombstone = Attr::none(cx, TOMBSTONE);
    let mut format = Attr::none(cx, FORMAT);
    let mut schema = Attr::none(cx, SCHEMA);
    let mut schema_dir = Attr::none(cx, SCHEMA_DIR);
    let mut key = Attr::none(cx, KEY);
    let mut name_given = false;

    let complete = attr::each_in_args(cx, args, |meta| {
        if meta.path == NAMESPACE {
            let value = attr::string(cx, NAMESPACE, &meta, r#"namespace = "v3""#)?;
            namespace.set_opt(&meta.path, value.and_then(|lit| topic_part(cx, NAMESPACE, &lit)));
        } else if meta.path == NAME {
            name_given = true;
            let value = attr::string(cx, NAME, &meta, r#"name = "rentals""#)?;
            name.set_opt(&meta.path, value.and_then(|lit| Some((topic_part(cx, NAME, &lit)?, lit.span()))));
        } else if meta.path == PARTITION_KEY {
            let value = attr::name(cx, PARTITION_KEY, &meta, r#"partition_key = "account_id""#)?;
            partition_key.set_opt(&meta.path, value.and_then(|name| field_name(cx, name)));
        } else if meta.path == PARTITION_KEY_WITH {
            let what = "a function `fn(&dyn Record) -> Option<String>`";
            let path = attr::path(cx, PARTITION_KEY_WITH, &meta, what, "partition_key_with = keys::of_record")?;
            partition_key_with.set_opt(&meta.path, path.map(|path| (meta.path.span(), path)));
        } else if meta.path == PARTITIONS {
            partitions.set_opt(&meta.path, attr::positive_int::<i32>(cx, PARTITIONS, &meta, "partitions = 12")?);
        } else if meta.path == REPLICATION_FACTOR {
            let example = "replication_factor = 3";
            let value = attr::positive_int::<i16>(cx, REPLICATION_FACTOR, &meta, example)?;
            replication_factor.set_opt(&meta.path, value);
        } else if meta.path == GENESIS_REPLICA {
            genesis_replica.set_opt(&meta.path, attr::flag(cx, GENESIS_REPLICA, &meta)?);
        } else if meta.path == TOMBSTONE {
            let value = attr::string(cx, TOMBSTONE, &meta, r#"tombstone = "kafka_null""#)?;
            tombstone.set_opt(&meta.path, value.and_then(|lit| read_tombstone(cx, &lit)));
        } else if meta.path == FORMAT {
            let value = attr::string(cx, FORMAT, &meta, r#"format = "avro""#)?;
            format.set_opt(&meta.path, value.and_then(|lit| read_format(cx, lit)));
        } else if meta.path == SCHEMA {
            schema.set_opt(&meta.path, attr::string(cx, SCHEMA, &meta, r#"schema = "com.example.Rental""#)?);
        } else if meta.path == SCHEMA_DIR {
            schema_dir.set_opt(&meta.path, attr::string(cx, SCHEMA_DIR, &meta, r#"schema_dir = "avro""#)?);
        } else if meta.path == KEY {
            key.set_opt(&meta.path, read_key(cx, &meta)?);
        } else {
            attr::unknown(cx, &meta, "`#[dionysus::topic(...)]`", KEYS)?;
        }
        Ok(())
    });

    let Some((name, name_span)) = name.get() else {
        if !name_given && complete {
            cx.syn_error(syn::Error::new(
                Span::call_site(),
                "missing `name` in `#[dionysus::topic(...)]`\n\
                 help: the correct format looks like `#[dionysus::topic(namespace = \"v3\", name = \"rentals\")]`",
            ));
        }
        // Otherwise the value, or the arguments' syntax, was wrong, and that is recorded.
        return None;
    };
    let partition_key = partition_key.get();
    let partition_key_with = match (partition_key_with.get(), &partition_key) {
        (Some((span, _)), Some(_)) => {
            cx.syn_error(syn::Error::new(
                span,
                "give either `partition_key` (a field) or `partition_key_with` (a function), not both",
            ));
            None
        }
        (given, _) => given.map(|(_, path)| path),
    };
    let avro = avro_topic(cx, format.get(), schema.get(), schema_dir.get(), key.get());
    Some(Args {
        avro,
        namespace: namespace.get(),
        name,
        name_span,
        partition_key,
        partition_key_with,
        partitions: partitions.get(),
        replication_factor: replication_factor.get(),
        genesis_replica: genesis_replica.get().unwrap_or(false),
        kafka_null_tombstone: tombstone.get().unwrap_or(false),
    })
}

/// `"json"` (false) or `"avro"` (true), with the literal.
fn read_format(cx: &Ctxt, lit: LitStr) -> Option<(bool, LitStr)> {
    match lit.value().as_str() {
        "json" => Some((false, lit)),
        "avro" => Some((true, lit)),
        other => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "unknown format `{other}`; expected \"json\" (the dionysus-rb envelope; the default) or \"avro\" \
                     (one Avro record per message, with `schema = \"…\"`)"
                ),
            );
            None
        }
    }
}

/// `key(none)`, `key(plain)`, `key(field = id)` or `key(schema = "com.example.RentalKey")`,
/// with the span of `key`.
fn read_key(cx: &Ctxt, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Option<(KeyConfig, Span)>> {
    let span = meta.path.span();
    if !meta.input.peek(syn::token::Paren) {
        cx.error_spanned_by(
            &meta.path,
            format!(
                "expected `key(none)`, `key(plain)`, `key(field = id)` or `key(schema = \"com.example.RentalKey\")`, \
                 e.g. `{KEY_EXAMPLE}`"
            ),
        );
        attr::skip_value(meta.input)?;
        return Ok(None);
    }
    let mut config = Attr::none(cx, KEY);
    meta.parse_nested_meta(|inner| {
        if inner.path == KEY_NONE {
            config.set(&inner.path, KeyConfig::None);
        } else if inner.path == KEY_PLAIN {
            config.set(&inner.path, KeyConfig::Plain);
        } else if inner.path == KEY_FIELD {
            let name = attr::name(cx, KEY_FIELD, &inner, "field = id")?;
            config.set_opt(&inner.path, name.map(KeyConfig::Field));
        } else if inner.path == SCHEMA {
            let name = attr::string(cx, SCHEMA, &inner, r#"schema = "com.example.RentalKey""#)?;
            config.set_opt(&inner.path, name.map(|name| KeyConfig::Schema(SchemaRef { name, dir: None })));
        } else {
            attr::unknown(cx, &inner, "`key(...)`", KEY_KEYS)?;
        }
        Ok(())
    })?;
    Ok(config.get().map(|config| (config, span)))
}

/// The Avro settings, when the topic has them; settings that need `format = "avro"` on a
/// JSON topic are recorded.
fn avro_topic(
    cx: &Ctxt,
    format: Option<(bool, LitStr)>,
    schema: Option<LitStr>,
    schema_dir: Option<LitStr>,
    key: Option<(KeyConfig, Span)>,
) -> Option<AvroTopic> {
    let avro = match &format {
        Some((avro, _)) => *avro,
        None => schema.is_some(),
    };
    if !avro {
        let json = "on a JSON topic; it belongs to `format = \"avro\"`";
        if let Some(schema) = &schema {
            cx.error_spanned_by(schema, format!("`schema` {json}"));
        }
        if let Some(dir) = &schema_dir {
            cx.error_spanned_by(dir, format!("`schema_dir` {json}"));
        }
        if let Some((_, span)) = &key {
            cx.syn_error(syn::Error::new(*span, format!("`key(...)` {json}")));
        }
        return None;
    }
    let Some(name) = schema else {
        if let Some((_, lit)) = &format {
            cx.error_spanned_by(
                lit,
                "an Avro topic names its record schema\nhelp: add `schema = \"com.example.Rental\"` (read from \
                 `schemas/com/example/Rental.avsc`)",
            );
        }
        return None;
    };
    let key = match key {
        Some((KeyConfig::Schema(key), _)) => KeyConfig::Schema(SchemaRef { dir: schema_dir.clone(), ..key }),
        Some((key, _)) => key,
        None => KeyConfig::Plain,
    };
    Some(AvroTopic { schema: SchemaRef { name, dir: schema_dir }, key })
}

/// `"json_null"` (false) or `"kafka_null"` (true).
fn read_tombstone(cx: &Ctxt, lit: &LitStr) -> Option<bool> {
    match lit.value().as_str() {
        "json_null" => Some(false),
        "kafka_null" => Some(true),
        other => {
            cx.error_spanned_by(
                lit,
                format!(
                    "unknown tombstone encoding `{other}`; expected \"json_null\" (the text `null`, as dionysus-rb \
                     sends; the default) or \"kafka_null\" (a real Kafka null value)"
                ),
            );
            None
        }
    }
}

/// A namespace or name: non-empty, only the characters Kafka allows in topic names.
fn topic_part(cx: &Ctxt, key: Symbol, lit: &LitStr) -> Option<String> {
    let value = lit.value();
    if value.is_empty() {
        cx.error_spanned_by(lit, format!("`{key}` cannot be empty"));
        return None;
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        cx.error_spanned_by(
            lit,
            format!("`{key}` contains `{bad}`; Kafka topic names may only use ASCII letters, digits, `.`, `_` and `-`"),
        );
        return None;
    }
    if value.len() > MAX_TOPIC_NAME {
        cx.error_spanned_by(lit, format!("`{key}` is longer than Kafka's {MAX_TOPIC_NAME} characters"));
        return None;
    }
    Some(value)
}

/// A field name: a Rust identifier.
fn field_name(cx: &Ctxt, name: Name) -> Option<Name> {
    let mut chars = name.value.chars();
    let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if valid_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some(name)
    } else {
        cx.syn_error(syn::Error::new(
            name.span,
            format!("`{}` is not a field name; expected e.g. `partition_key = \"account_id\"`", name.value),
        ));
        None
    }
}
