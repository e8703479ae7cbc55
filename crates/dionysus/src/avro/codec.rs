//! Records between the JSON the serializers produce and Avro: [`to_avro`] walks a record
//! schema and converts (and coerces, as deimos does) each attribute; [`to_json`] turns a
//! decoded record back into the JSON attributes the replica writer and the handlers read.
//! [`encode`] and [`decode`] add the binary encoding, the latter resolving the writer's
//! schema against the reader's (schema evolution).
//!
//! This module knows schemas and values only; where a schema comes from (files, a registry)
//! and how a message is framed are `schemas`' and `framing`'s.

use std::collections::{BTreeMap, HashMap};

use apache_avro::schema::{Name, RecordSchema, Schema};
use apache_avro::types::Value as Avro;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike as _, Utc};
use serde_json::{Map, Number, Value as Json};

use super::AUTO_FIELDS;

/// A value did not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A record field without a default has no value.
    #[error("field `{field}` has no value and no default in the schema")]
    MissingField {
        /// The dotted path of the field.
        field: String,
    },
    /// A value of the wrong kind.
    #[error("`{field}`: {value} does not fit the schema's {expected}")]
    Mismatch {
        /// The dotted path of the field.
        field: String,
        /// The value, as JSON.
        value: String,
        /// The schema's type.
        expected: String,
    },
    /// The bytes are not a datum of the writer's schema, or it cannot be read with the
    /// reader's.
    #[error("the bytes do not decode with the writer's schema: {reason}")]
    Undecodable {
        /// What the Avro decoder reported.
        reason: String,
    },
}

/// Named types of a schema by full name, for `Ref`s.
struct Names<'s>(HashMap<String, &'s Schema>);

impl<'s> Names<'s> {
    fn of(schema: &'s Schema) -> Names<'s> {
        let mut names = Names(HashMap::new());
        names.collect(schema, None);
        names
    }

    fn collect(&mut self, schema: &'s Schema, namespace: Option<&str>) {
        let mut own = |name: &Name| {
            let full = name.fullname(namespace.map(str::to_owned));
            self.0.insert(full, schema);
        };
        match schema {
            Schema::Record(record) => {
                own(&record.name);
                let inner = record.name.namespace.clone().or(namespace.map(str::to_owned));
                for field in &record.fields {
                    self.collect(&field.schema, inner.as_deref());
                }
            }
            Schema::Enum(named) => own(&named.name),
            Schema::Fixed(named) => own(&named.name),
            Schema::Array(array) => self.collect(&array.items, namespace),
            Schema::Map(map) => self.collect(&map.types, namespace),
            Schema::Union(union) => {
                for variant in union.variants() {
                    self.collect(variant, namespace);
                }
            }
            _ => {}
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.0.get(&name.fullname(None)).copied().unwrap_or(schema),
            other => other,
        }
    }
}

/// The JSON attributes of a record as an Avro record of `schema`. Fields the attributes lack
/// take the schema's default; the auto-added `message_id` and `timestamp` take `auto`'s
/// values when the schema has them.
pub fn to_avro(schema: &Schema, attributes: &Json, auto: &AutoFields) -> Result<Avro, CodecError> {
    let names = Names::of(schema);
    Converter { names: &names, auto: Some(auto) }.value(schema, attributes, "")
}

/// The values of the auto-added fields of one message.
#[derive(Debug, Clone, Default)]
pub struct AutoFields {
    /// A unique id of the message.
    pub message_id: String,
    /// When the message was produced.
    pub timestamp: DateTime<Utc>,
}

struct Converter<'n, 's> {
    names: &'n Names<'s>,
    auto: Option<&'n AutoFields>,
}

impl Converter<'_, '_> {
    fn value(&self, schema: &Schema, json: &Json, path: &str) -> Result<Avro, CodecError> {
        let mismatch = || CodecError::Mismatch {
            field: path.to_owned(),
            value: truncate(json.to_string()),
            expected: describe(schema),
        };
        let schema = self.names.resolve(schema);
        Ok(match (schema, json) {
            (Schema::Null, Json::Null) => Avro::Null,
            (Schema::Boolean, Json::Bool(flag)) => Avro::Boolean(*flag),
            (Schema::Boolean, Json::String(text)) => Avro::Boolean(text.parse().map_err(|_| mismatch())?),
            (Schema::Int, _) => Avro::Int(integer(json).and_then(|n| i32::try_from(n).ok()).ok_or_else(mismatch)?),
            (Schema::Long, _) => Avro::Long(integer(json).ok_or_else(mismatch)?),
            #[allow(clippy::cast_possible_truncation, reason = "a float field holds what the JSON number rounds to")]
            (Schema::Float, _) => Avro::Float(float(json).ok_or_else(mismatch)? as f32),
            (Schema::Double, _) => Avro::Double(float(json).ok_or_else(mismatch)?),
            (Schema::String, Json::String(text)) => Avro::String(text.clone()),
            // deimos coerces numbers and booleans into string fields.
            (Schema::String, Json::Number(_) | Json::Bool(_)) => Avro::String(json.to_string()),
            (Schema::Bytes, Json::String(text)) => Avro::Bytes(text.clone().into_bytes()),
            (Schema::Fixed(fixed), Json::String(text)) if text.len() == fixed.size => {
                Avro::Fixed(fixed.size, text.clone().into_bytes())
            }
            (Schema::Enum(named), Json::String(text)) => {
                let index = named.symbols.iter().position(|symbol| symbol == text).ok_or_else(mismatch)?;
                Avro::Enum(u32::try_from(index).map_err(|_| mismatch())?, text.clone())
            }
            (Schema::Array(array), Json::Array(items)) => Avro::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| self.value(&array.items, item, &format!("{path}[{index}]")))
                    .collect::<Result<_, _>>()?,
            ),
            (Schema::Map(map), Json::Object(entries)) => Avro::Map(
                entries
                    .iter()
                    .map(|(key, item)| Ok((key.clone(), self.value(&map.types, item, &format!("{path}.{key}"))?)))
                    .collect::<Result<_, CodecError>>()?,
            ),
            (Schema::Union(union), _) => {
                let mut last = None;
                for (index, variant) in union.variants().iter().enumerate() {
                    if matches!(variant, Schema::Null) != json.is_null() {
                        continue;
                    }
                    match self.value(variant, json, path) {
                        Ok(value) => {
                            let index = u32::try_from(index).map_err(|_| mismatch())?;
                            return Ok(Avro::Union(index, Box::new(value)));
                        }
                        Err(error) => last = Some(error),
                    }
                }
                return Err(last.unwrap_or_else(mismatch));
            }
            (Schema::Record(record), Json::Object(attributes)) => self.record(record, attributes, path)?,
            (Schema::Decimal(decimal), Json::String(_) | Json::Number(_)) => {
                let text = match json {
                    Json::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let unscaled = unscaled(&text, decimal.scale).ok_or_else(mismatch)?;
                Avro::Decimal(apache_avro::Decimal::from(sign_extended(twos_complement(unscaled), decimal.precision)))
            }
            (Schema::Uuid, Json::String(text)) => Avro::Uuid(uuid::Uuid::parse_str(text).map_err(|_| mismatch())?),
            (Schema::Date, Json::String(text)) => {
                let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| mismatch())?;
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(mismatch)?;
                Avro::Date(i32::try_from((date - epoch).num_days()).map_err(|_| mismatch())?)
            }
            (Schema::Date, Json::Number(_)) => {
                Avro::Date(integer(json).and_then(|n| i32::try_from(n).ok()).ok_or_else(mismatch)?)
            }
            (Schema::TimeMillis | Schema::TimeMicros, Json::String(text)) => {
                let time = NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
                    .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
                    .map_err(|_| mismatch())?;
                let micros =
                    i64::from(time.num_seconds_from_midnight()) * 1_000_000 + i64::from(time.nanosecond() / 1000);
                match schema {
                    Schema::TimeMillis => Avro::TimeMillis(i32::try_from(micros / 1000).map_err(|_| mismatch())?),
                    _ => Avro::TimeMicros(micros),
                }
            }
            (
                Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::TimestampNanos
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::LocalTimestampNanos,
                _,
            ) => timestamp(schema, json).ok_or_else(mismatch)?,
            _ => return Err(mismatch()),
        })
    }

    fn record(&self, record: &RecordSchema, attributes: &Map<String, Json>, path: &str) -> Result<Avro, CodecError> {
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let field_path = if path.is_empty() { field.name.clone() } else { format!("{path}.{}", field.name) };
            let auto = self.auto.and_then(|auto| match field.name.as_str() {
                "message_id" if path.is_empty() => Some(Json::String(auto.message_id.clone())),
                "timestamp" if path.is_empty() => Some(Json::String(auto.timestamp.to_rfc3339())),
                _ => None,
            });
            let value = match (attributes.get(&field.name), &field.default, auto) {
                (Some(value), _, _) => self.value(&field.schema, value, &field_path)?,
                (None, _, Some(auto)) if AUTO_FIELDS.contains(&field.name.as_str()) => {
                    self.value(&field.schema, &auto, &field_path)?
                }
                (None, Some(default), _) => self.default(&field.schema, default, &field_path)?,
                (None, None, _) => return Err(CodecError::MissingField { field: field_path }),
            };
            fields.push((field.name.clone(), value));
        }
        Ok(Avro::Record(fields))
    }

    /// A field's default: by the Avro rules, a union's default is of its first branch.
    fn default(&self, schema: &Schema, default: &Json, path: &str) -> Result<Avro, CodecError> {
        match self.names.resolve(schema) {
            Schema::Union(union) => {
                let first =
                    union.variants().first().ok_or_else(|| CodecError::MissingField { field: path.to_owned() })?;
                Ok(Avro::Union(0, Box::new(self.value(first, default, path)?)))
            }
            other => self.value(other, default, path),
        }
    }
}

fn integer(json: &Json) -> Option<i64> {
    match json {
        Json::Number(number) => number.as_i64(),
        // deimos coerces numeric strings into number fields.
        Json::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(number) => number.as_f64(),
        Json::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn timestamp(schema: &Schema, json: &Json) -> Option<Avro> {
    if let Json::Number(number) = json {
        let raw = number.as_i64()?;
        return Some(match schema {
            Schema::TimestampMillis => Avro::TimestampMillis(raw),
            Schema::TimestampMicros => Avro::TimestampMicros(raw),
            Schema::TimestampNanos => Avro::TimestampNanos(raw),
            Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(raw),
            Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(raw),
            _ => Avro::LocalTimestampNanos(raw),
        });
    }
    let text = json.as_str()?;
    let utc = match DateTime::parse_from_rfc3339(text) {
        Ok(time) => time.with_timezone(&Utc),
        Err(_) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?.and_utc(),
    };
    Some(match schema {
        Schema::TimestampMillis => Avro::TimestampMillis(utc.timestamp_millis()),
        Schema::TimestampMicros => Avro::TimestampMicros(utc.timestamp_micros()),
        Schema::TimestampNanos => Avro::TimestampNanos(utc.timestamp_nanos_opt()?),
        Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(utc.timestamp_millis()),
        Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(utc.timestamp_micros()),
        _ => Avro::LocalTimestampNanos(utc.timestamp_nanos_opt()?),
    })
}

/// `"12.5"` with scale 2 as 1250; `None` when it has more decimals than the scale or does
/// not fit 128 bits.
fn unscaled(text: &str, scale: usize) -> Option<i128> {
    let (negative, digits) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale || whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut value: i128 = 0;
    for digit in whole.chars().chain(fraction.chars()).chain(std::iter::repeat_n('0', scale - fraction.len())) {
        value = value.checked_mul(10)?.checked_add(i128::from(digit.to_digit(10)?))?;
    }
    Some(if negative { -value } else { value })
}

/// The shortest big-endian two's complement bytes of `value`, as Avro decimals are written.
fn twos_complement(value: i128) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let sign = if value < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    while start < bytes.len() - 1 && bytes[start] == sign && (bytes[start + 1] & 0x80 == sign & 0x80) {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// `bytes` sign-extended to the length that holds every value of `precision` digits: the
/// Avro implementation refuses shorter decimals when it resolves them.
fn sign_extended(bytes: Vec<u8>, precision: usize) -> Vec<u8> {
    let mut len = 1;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "digits of at most 2^(8·len) fit usize")]
    let digits = |len: i32| (2.0_f64.powi(8 * len - 1) - 1.0).log10().floor() as usize;
    while digits(len) < precision && len < 64 {
        len += 1;
    }
    let len = usize::try_from(len).unwrap_or(1);
    if bytes.len() >= len {
        return bytes;
    }
    let fill = if bytes.first().is_some_and(|first| first & 0x80 != 0) { 0xff } else { 0x00 };
    let mut extended = vec![fill; len - bytes.len()];
    extended.extend(bytes);
    extended
}

/// A decoded Avro value as the JSON a dionysus-rb payload would carry: timestamps as
/// RFC 3339 text with milliseconds, dates and times as text, decimals as text with the
/// schema's scale, enums as their symbol.
pub fn to_json(schema: &Schema, value: &Avro) -> Json {
    let names = Names::of(schema);
    json_of(&names, schema, value)
}

fn json_of(names: &Names<'_>, schema: &Schema, value: &Avro) -> Json {
    let schema = names.resolve(schema);
    match (schema, value) {
        (_, Avro::Null) => Json::Null,
        (_, Avro::Boolean(flag)) => Json::Bool(*flag),
        (_, Avro::Int(number)) => Json::from(*number),
        (_, Avro::Long(number)) => Json::from(*number),
        (_, Avro::Float(number)) => Number::from_f64(f64::from(*number)).map_or(Json::Null, Json::Number),
        (_, Avro::Double(number)) => Number::from_f64(*number).map_or(Json::Null, Json::Number),
        (_, Avro::String(text) | Avro::Enum(_, text)) => Json::String(text.clone()),
        (_, Avro::Bytes(bytes) | Avro::Fixed(_, bytes)) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
        (Schema::Union(union), Avro::Union(index, inner)) => {
            let variant = usize::try_from(*index).ok().and_then(|index| union.variants().get(index));
            match variant {
                Some(variant) => json_of(names, variant, inner),
                None => json_of(names, &Schema::Null, inner),
            }
        }
        (_, Avro::Union(_, inner)) => json_of(names, schema, inner),
        (Schema::Array(array), Avro::Array(items)) => {
            Json::Array(items.iter().map(|item| json_of(names, &array.items, item)).collect())
        }
        (Schema::Map(map), Avro::Map(entries)) => {
            let sorted: BTreeMap<&String, &Avro> = entries.iter().collect();
            Json::Object(
                sorted.into_iter().map(|(key, item)| (key.clone(), json_of(names, &map.types, item))).collect(),
            )
        }
        (Schema::Record(record), Avro::Record(fields)) => Json::Object(
            fields
                .iter()
                .map(|(name, item)| {
                    let field_schema =
                        record.fields.iter().find(|field| &field.name == name).map(|field| &field.schema);
                    (name.clone(), json_of(names, field_schema.unwrap_or(&Schema::Null), item))
                })
                .collect(),
        ),
        (Schema::Decimal(decimal), Avro::Decimal(bytes)) => match Vec::<u8>::try_from(bytes) {
            Ok(bytes) => Json::String(decimal_text(&bytes, decimal.scale)),
            Err(_) => Json::Null,
        },
        (_, Avro::Date(days)) => NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(i64::from(*days))))
            .map_or(Json::Null, |date| Json::String(date.format("%Y-%m-%d").to_string())),
        (_, Avro::TimeMillis(millis)) => time_text(i64::from(*millis) * 1000),
        (_, Avro::TimeMicros(micros)) => time_text(*micros),
        (_, Avro::TimestampMillis(n) | Avro::LocalTimestampMillis(n)) => {
            timestamp_text(DateTime::from_timestamp_millis(*n))
        }
        (_, Avro::TimestampMicros(n) | Avro::LocalTimestampMicros(n)) => {
            timestamp_text(DateTime::from_timestamp_micros(*n))
        }
        (_, Avro::TimestampNanos(n) | Avro::LocalTimestampNanos(n)) => {
            timestamp_text(Some(DateTime::from_timestamp_nanos(*n)))
        }
        (_, Avro::Uuid(uuid)) => Json::String(uuid.to_string()),
        (_, Avro::Array(items)) => Json::Array(items.iter().map(|item| json_of(names, &Schema::Null, item)).collect()),
        (_, Avro::Record(fields)) => Json::Object(
            fields.iter().map(|(name, item)| (name.clone(), json_of(names, &Schema::Null, item))).collect(),
        ),
        _ => Json::Null,
    }
}

fn timestamp_text(time: Option<DateTime<Utc>>) -> Json {
    time.map_or(Json::Null, |time| Json::String(crate::wire::envelope::format_timestamp(&time)))
}

fn time_text(micros: i64) -> Json {
    let seconds = u32::try_from(micros.div_euclid(1_000_000)).ok();
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).ok();
    match seconds.zip(nanos).and_then(|(seconds, nanos)| NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos))
    {
        Some(time) => Json::String(time.format("%H:%M:%S%.f").to_string()),
        None => Json::Null,
    }
}

/// Two's complement big-endian bytes with `scale` decimals as text.
fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|first| first & 0x80 != 0);
    let mut value: i128 = if negative { -1 } else { 0 };
    for byte in bytes {
        value = (value << 8) | i128::from(*byte);
    }
    let digits = value.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// The schema's type as the schema would name it, for errors.
fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(record) => format!("record `{}`", record.name.fullname(None)),
        Schema::Enum(named) => format!("enum `{}` ({})", named.name.fullname(None), named.symbols.join(", ")),
        Schema::Union(union) => {
            format!("union [{}]", union.variants().iter().map(describe).collect::<Vec<_>>().join(", "))
        }
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > 80 {
        let mut end = 77;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The binary encoding of a record's attributes.
pub fn encode(schema: &Schema, attributes: &Json, auto: &AutoFields) -> Result<Vec<u8>, CodecError> {
    let value = to_avro(schema, attributes, auto)?;
    apache_avro::to_avro_datum(schema, value).map_err(|error| CodecError::Mismatch {
        field: String::new(),
        value: truncate(attributes.to_string()),
        expected: format!("{} ({error})", describe(schema)),
    })
}

/// A datum written with `writer` read as `reader` (the writer's schema resolved against the
/// reader's: added fields take their defaults, removed ones are dropped), as JSON.
pub fn decode(writer: &Schema, reader: &Schema, mut bytes: &[u8]) -> Result<Json, CodecError> {
    let value = apache_avro::from_avro_datum(writer, &mut bytes, Some(reader))
        .map_err(|error| CodecError::Undecodable { reason: error.to_string() })?;
    Ok(to_json(reader, &value))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    const RENTAL_V1: &str = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}], "default": null},
        {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["open", "closed"]}, "default": "open"},
        {"name": "message_id", "type": ["null", "string"], "default": null}
    ]}"#;

    const RENTAL_V2: &str = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "price", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}], "default": null},
        {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["open", "closed"]}, "default": "open"},
        {"name": "message_id", "type": ["null", "string"], "default": null},
        {"name": "floors", "type": "int", "default": 1}
    ]}"#;

    fn auto() -> AutoFields {
        AutoFields { message_id: "m-1".to_owned(), timestamp: DateTime::from_timestamp(1_700_000_000, 0).unwrap() }
    }

    #[test]
    fn a_record_round_trips_with_coercions_defaults_and_auto_fields() {
        let schema = schema(RENTAL_V1);
        let attributes = json!({"id": "7", "name": 12, "price": "19.9", "updated_at": "2024-05-01T10:00:00.123Z"});
        let bytes = encode(&schema, &attributes, &auto()).unwrap();
        let back = decode(&schema, &schema, &bytes).unwrap();
        assert_eq!(
            back,
            json!({"id": 7, "name": "12", "price": "19.90", "updated_at": "2024-05-01T10:00:00.123Z", "status": "open",
                   "message_id": "m-1"})
        );
    }

    #[test]
    fn a_missing_field_without_default_is_named() {
        let error = encode(&schema(RENTAL_V1), &json!({"id": 1, "updated_at": 0}), &auto()).unwrap_err();
        assert_eq!(error, CodecError::MissingField { field: "name".to_owned() });
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_a_mismatch_at_its_field() {
        let attributes = json!({"id": 1, "name": "a", "updated_at": 0, "status": "gone"});
        let error = encode(&schema(RENTAL_V1), &attributes, &auto()).unwrap_err();
        assert!(matches!(error, CodecError::Mismatch { ref field, .. } if field == "status"), "{error}");
    }

    #[test]
    fn a_newer_writer_with_an_added_defaulted_field_is_read_by_an_older_reader() {
        let attributes = json!({"id": 3, "name": "a", "updated_at": 0, "floors": 4});
        let bytes = encode(&schema(RENTAL_V2), &attributes, &auto()).unwrap();
        let read = decode(&schema(RENTAL_V2), &schema(RENTAL_V1), &bytes).unwrap();
        assert_eq!(read["id"], json!(3));
        assert!(read.get("floors").is_none());
        // And the other way: the newer reader fills the field's default.
        let bytes = encode(&schema(RENTAL_V1), &attributes, &auto()).unwrap();
        assert_eq!(decode(&schema(RENTAL_V1), &schema(RENTAL_V2), &bytes).unwrap()["floors"], json!(1));
    }

    #[test]
    fn garbage_is_undecodable() {
        let error = decode(&schema(RENTAL_V1), &schema(RENTAL_V1), &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(error, CodecError::Undecodable { .. }));
    }

    #[test]
    fn decimals_are_twos_complement_with_the_schemas_scale() {
        assert_eq!(unscaled("19.9", 2), Some(1990));
        assert_eq!(unscaled("-0.05", 2), Some(-5));
        assert_eq!(unscaled("1.234", 2), None);
        assert_eq!(twos_complement(1990), vec![0x07, 0xc6]);
        assert_eq!(twos_complement(-5), vec![0xfb]);
        assert_eq!(twos_complement(128), vec![0x00, 0x80]);
        assert_eq!(decimal_text(&[0xfb], 2), "-0.05");
        assert_eq!(sign_extended(vec![0xfb], 4), vec![0xff, 0xfb]);
        assert_eq!(decimal_text(&sign_extended(vec![0x07, 0xc6], 10), 2), "19.90");
    }

    proptest! {
        #[test]
        fn decimals_round_trip(value in -10_i128.pow(20)..10_i128.pow(20), scale in 0_usize..6) {
            let text = decimal_text(&twos_complement(value), scale);
            prop_assert_eq!(unscaled(&text, scale), Some(value));
        }

        #[test]
        fn records_round_trip(id in any::<i64>(), name in ".{0,20}", micros in 0_i64..4_000_000_000_000_000) {
            let schema = schema(RENTAL_V1);
            let time = DateTime::from_timestamp_micros(micros - micros % 1000).unwrap();
            let updated_at = crate::wire::envelope::format_timestamp(&time);
            let attributes = json!({"id": id, "name": name, "updated_at": updated_at, "status": "closed", "message_id": null});
            let bytes = encode(&schema, &attributes, &AutoFields::default()).unwrap();
            let back = decode(&schema, &schema, &bytes).unwrap();
            prop_assert_eq!(back["id"].clone(), json!(id));
            prop_assert_eq!(back["name"].clone(), json!(name));
            prop_assert_eq!(back["updated_at"].clone(), json!(updated_at));
        }
    }
}
