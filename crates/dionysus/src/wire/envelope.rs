//! The message format on Kafka, shared with dionysus-rb (W-2, W-3, W-7, W-8).
//!
//! A value is compact JSON `{"message":[{"event":…,"model_name":…,"data":[…]}]}` with keys in
//! that order; a tombstone is the 4-byte JSON text `null` (or, per topic, a real Kafka null).
//! JSON is written the way ActiveSupport writes it: `<`, `>`, `&`, U+2028 and U+2029 are
//! escaped, times are ISO-8601 with milliseconds (`2022-08-12T13:24:24.000Z`).
//!
//! This module owns encoding and decoding of values. Keys and event names are `naming`'s;
//! what goes into `data` is the serializer's.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::kind;

/// The JSON text dionysus-rb sends as a tombstone.
pub const JSON_NULL_TOMBSTONE: &[u8] = b"null";

/// One entry of a message's `"message"` array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event name, e.g. `rental_updated`.
    pub event: String,
    /// Model name as on the producer (`Rental`, `Bookings::Fee`).
    pub model_name: String,
    /// Serialized records: normally an array (W-3).
    pub data: Value,
}

/// A whole message value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The events, usually exactly one (W-15).
    pub message: Vec<Event>,
}

impl Envelope {
    /// A message with one event.
    pub fn single(event: impl Into<String>, model_name: impl Into<String>, data: Value) -> Envelope {
        Envelope { message: vec![Event { event: event.into(), model_name: model_name.into(), data }] }
    }

    /// The compact JSON bytes, escaped as ActiveSupport does.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_json(self)
    }
}

/// Encoding or decoding a value failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not JSON.
    #[error("malformed JSON")]
    Json(#[source] serde_json::Error),
    /// The JSON does not have the envelope's shape.
    #[error("unexpected message shape: {0}")]
    Shape(String),
}

/// Serializes to compact JSON with ActiveSupport's escaping.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let text = serde_json::to_string(value)?;
    Ok(escape_like_active_support(&text).into_bytes())
}

/// `<`, `>`, `&` become `\u003c`, `\u003e`, `\u0026`; U+2028/U+2029 become `\u2028`/`\u2029`.
/// These characters can only occur inside JSON strings, so replacing them in the encoded
/// text never changes the structure.
pub fn escape_like_active_support(json: &str) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            other => out.push(other),
        }
    }
    out
}

/// A decoded message value; its records are [`RawRecord`]s, or what a [`ReadRecords`] made
/// of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<R = RawRecord> {
    /// A tombstone: the JSON text `null` or a Kafka null value (C-4).
    Tombstone,
    /// A JSON object without a `"message"` key; it carries no events (C-4).
    NoMessage,
    /// The events, each with `data` normalised to a list (a `null` becomes `[]`, an object
    /// becomes `[object]`, C-5).
    Events(Vec<DecodedEvent<R>>),
}

/// One event of a decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent<R = RawRecord> {
    /// Event name.
    pub event: String,
    /// Model name.
    pub model_name: String,
    /// Records.
    pub data: Vec<R>,
}

/// One entry of an event's `data` as sent. An object stays a list of its members in their
/// order: the consumer builds its own map from it once, in its canonical key order, instead
/// of a map first and then another.
#[derive(Debug, Clone, PartialEq)]
pub enum RawRecord {
    /// A JSON object's members, in order (a repeated key appears twice).
    Object(Vec<(String, Value)>),
    /// Anything else (not a valid record, but kept to be reported).
    Other(Value),
}

impl RawRecord {
    /// A member's value; for a repeated key the last one, as a JSON map keeps it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            RawRecord::Object(members) => members.iter().rev().find(|(name, _)| name == key).map(|(_, value)| value),
            RawRecord::Other(_) => None,
        }
    }

    /// The record as a JSON value.
    pub fn into_value(self) -> Value {
        match self {
            RawRecord::Object(members) => Value::Object(members.into_iter().collect()),
            RawRecord::Other(value) => value,
        }
    }
}

impl From<Value> for RawRecord {
    fn from(value: Value) -> RawRecord {
        match value {
            Value::Object(object) => RawRecord::Object(object.into_iter().collect()),
            other => RawRecord::Other(other),
        }
    }
}

/// Turns each record of a message into what the caller keeps, as the record is read: a
/// large message is then never held as raw records and their final form at once.
pub trait ReadRecords {
    /// What a record becomes.
    type Record;

    /// Called before the records of a message are read; again when the one-pass reader gave
    /// up and the message is read anew (forget what was read since the last call).
    fn start(&mut self) {}

    /// Record `index` of event `event` (positions in the message), in message order.
    fn read(&mut self, event: usize, index: usize, record: RawRecord) -> Self::Record;
}

/// Keeps records as they were sent.
struct Raw;

impl ReadRecords for Raw {
    type Record = RawRecord;

    fn read(&mut self, _: usize, _: usize, record: RawRecord) -> RawRecord {
        record
    }
}

/// Decodes a message value; `None` is a Kafka null.
///
/// The usual message is read in one pass straight into events and records. Anything the
/// fast reader does not accept (bad JSON, an unexpected shape, a repeated envelope key) is
/// read again as a plain JSON value, which decides and describes it.
pub fn decode(value: Option<&[u8]>) -> Result<Decoded, EnvelopeError> {
    decode_with(value, &mut Raw)
}

/// [`decode`], handing each record to `reader` as it is read.
pub fn decode_with<R: ReadRecords>(value: Option<&[u8]>, reader: &mut R) -> Result<Decoded<R::Record>, EnvelopeError> {
    let Some(bytes) = value else { return Ok(Decoded::Tombstone) };
    reader.start();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let fast = serde::de::DeserializeSeed::deserialize(wire::Message(&mut *reader), &mut deserializer)
        .and_then(|decoded| deserializer.end().map(|()| decoded));
    if let Ok(decoded) = fast {
        return Ok(decoded);
    }
    reader.start();
    let json: Value = serde_json::from_slice(bytes).map_err(EnvelopeError::Json)?;
    decode_value_with(json, reader)
}

/// The one-pass reader behind [`decode`]. It accepts exactly what [`decode_value`] accepts
/// without error and yields the same result; everything else is an error here. Each level
/// is a seed carrying the caller's [`ReadRecords`].
mod wire {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;
    use serde_json::Value;

    use super::{Decoded, DecodedEvent, RawRecord, ReadRecords};

    /// The visitor methods for booleans, numbers and strings, each giving
    /// `RawRecord::Other(value)` passed through `$wrap`.
    macro_rules! scalars {
        ($output:ty, $wrap:expr) => {
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<$output, E> {
                Ok($wrap(self, RawRecord::Other(Value::Bool(value))))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<$output, E> {
                Ok($wrap(self, RawRecord::Other(Value::from(value))))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<$output, E> {
                Ok($wrap(self, RawRecord::Other(Value::from(value))))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<$output, E> {
                Ok($wrap(self, RawRecord::Other(Value::from(value))))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<$output, E> {
                Ok($wrap(self, RawRecord::Other(Value::String(value.to_owned()))))
            }
        };
    }

    /// A whole message value.
    pub(super) struct Message<'r, R>(pub(super) &'r mut R);

    impl<'de, R: ReadRecords> DeserializeSeed<'de> for Message<'_, R> {
        type Value = Decoded<R::Record>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de, R: ReadRecords> Visitor<'de> for Message<'_, R> {
        type Value = Decoded<R::Record>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a message object or null")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Decoded::Tombstone)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut events: Option<Option<Vec<DecodedEvent<R::Record>>>> = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key != "message" {
                    map.next_value::<IgnoredAny>()?;
                } else if events.is_some() {
                    return Err(de::Error::duplicate_field("message"));
                } else {
                    events = Some(map.next_value_seed(OptionalEvents(&mut *self.0))?);
                }
            }
            Ok(match events.flatten() {
                Some(events) => Decoded::Events(events),
                None => Decoded::NoMessage,
            })
        }
    }

    /// `"message"`: `null` or the events.
    struct OptionalEvents<'r, R>(&'r mut R);

    impl<'de, R: ReadRecords> DeserializeSeed<'de> for OptionalEvents<'_, R> {
        type Value = Option<Vec<DecodedEvent<R::Record>>>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_option(self)
        }
    }

    impl<'de, R: ReadRecords> Visitor<'de> for OptionalEvents<'_, R> {
        type Value = Option<Vec<DecodedEvent<R::Record>>>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an array of events or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(Events(self.0)).map(Some)
        }
    }

    /// The events.
    struct Events<'r, R>(&'r mut R);

    impl<'de, R: ReadRecords> Visitor<'de> for Events<'_, R> {
        type Value = Vec<DecodedEvent<R::Record>>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an array of events")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
            while let Some(event) = seq.next_element_seed(Event { reader: &mut *self.0, index: events.len() })? {
                events.push(event);
            }
            Ok(events)
        }
    }

    /// Event `index` of the message.
    struct Event<'r, R> {
        reader: &'r mut R,
        index: usize,
    }

    impl<'de, R: ReadRecords> DeserializeSeed<'de> for Event<'_, R> {
        type Value = DecodedEvent<R::Record>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de, R: ReadRecords> Visitor<'de> for Event<'_, R> {
        type Value = DecodedEvent<R::Record>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an event object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut event, mut model_name, mut data) = (None, None, None);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let slot_taken = match key.as_ref() {
                    "event" => event.replace(map.next_value::<String>()?).is_some(),
                    "model_name" => model_name.replace(map.next_value::<String>()?).is_some(),
                    "data" if data.is_some() => true,
                    "data" => {
                        data = Some(map.next_value_seed(Data { reader: &mut *self.reader, event: self.index })?);
                        false
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        false
                    }
                };
                if slot_taken {
                    return Err(de::Error::custom("repeated event key"));
                }
            }
            let event = event.ok_or_else(|| de::Error::missing_field("event"))?;
            let model_name = model_name.ok_or_else(|| de::Error::missing_field("model_name"))?;
            Ok(DecodedEvent { event, model_name, data: data.unwrap_or_default() })
        }
    }

    /// `data` of event `event`: `null` is no records, an array its records, anything else
    /// one record.
    struct Data<'r, R> {
        reader: &'r mut R,
        event: usize,
    }

    impl<'de, R: ReadRecords> DeserializeSeed<'de> for Data<'_, R> {
        type Value = Vec<R::Record>;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<R: ReadRecords> Data<'_, R> {
        fn one(self, record: RawRecord) -> Vec<R::Record> {
            vec![self.reader.read(self.event, 0, record)]
        }
    }

    impl<'de, R: ReadRecords> Visitor<'de> for Data<'_, R> {
        type Value = Vec<R::Record>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("records")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(1024));
            while let Some(record) = seq.next_element::<RawRecord>()? {
                records.push(self.reader.read(self.event, records.len(), record));
            }
            records.shrink_to_fit();
            Ok(records)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let record = RecordVisitor.visit_map(map)?;
            Ok(self.one(record))
        }

        scalars!(Vec<R::Record>, Data::one);
    }

    /// One record: an object's members in order, or any other value.
    impl<'de> Deserialize<'de> for RawRecord {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawRecord, D::Error> {
            deserializer.deserialize_any(RecordVisitor)
        }
    }

    struct RecordVisitor;

    impl<'de> Visitor<'de> for RecordVisitor {
        type Value = RawRecord;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a record")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
            // Grown as needed and fitted at the end: a message may hold many small records.
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
            while let Some(key) = map.next_key::<String>()? {
                members.push((key, map.next_value::<Value>()?));
            }
            members.shrink_to_fit();
            Ok(RawRecord::Object(members))
        }

        fn visit_unit<E: de::Error>(self) -> Result<RawRecord, E> {
            Ok(RawRecord::Other(Value::Null))
        }

        scalars!(RawRecord, |_, record| record);

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRecord, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<Value>()? {
                items.push(item);
            }
            Ok(RawRecord::Other(Value::Array(items)))
        }
    }
}

/// Decodes an already parsed value.
pub fn decode_value(json: Value) -> Result<Decoded, EnvelopeError> {
    decode_value_with(json, &mut Raw)
}

/// [`decode_value`], handing each record to `reader`.
fn decode_value_with<R: ReadRecords>(json: Value, reader: &mut R) -> Result<Decoded<R::Record>, EnvelopeError> {
    let mut object = match json {
        Value::Null => return Ok(Decoded::Tombstone),
        Value::Object(object) => object,
        other => return Err(EnvelopeError::Shape(format!("expected a JSON object, got {}", kind(&other)))),
    };
    let Some(message) = object.remove("message") else { return Ok(Decoded::NoMessage) };
    let entries = match message {
        Value::Array(entries) => entries,
        Value::Null => return Ok(Decoded::NoMessage),
        other => return Err(EnvelopeError::Shape(format!("`message` must be an array, got {}", kind(&other)))),
    };
    let mut events = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut entry) = entry else {
            return Err(EnvelopeError::Shape(format!("`message[{index}]` must be an object")));
        };
        let mut text = |key: &str| match entry.remove(key) {
            Some(Value::String(text)) => Ok(text),
            Some(other) => {
                Err(EnvelopeError::Shape(format!("`message[{index}].{key}` must be a string, got {}", kind(&other))))
            }
            None => Err(EnvelopeError::Shape(format!("`message[{index}]` has no `{key}`"))),
        };
        let event = text("event")?;
        let model_name = text("model_name")?;
        let data = match entry.remove("data") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(records)) => records
                .into_iter()
                .enumerate()
                .map(|(position, record)| reader.read(index, position, RawRecord::from(record)))
                .collect(),
            Some(record) => vec![reader.read(index, 0, RawRecord::from(record))],
        };
        events.push(DecodedEvent { event, model_name, data });
    }
    Ok(Decoded::Events(events))
}

/// A time as ActiveSupport writes it in JSON: `2022-08-12T13:24:24.000Z`.
pub fn format_timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a timestamp from a payload value: ISO-8601 / RFC 3339 with any offset, the same
/// without an offset (taken as UTC, e.g. `2100-01-01 12:00:00`), or integer / fractional
/// epoch seconds. `None` for anything else (including `null`).
pub fn parse_timestamp(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => parse_timestamp_str(text),
        Value::Number(number) => {
            if let Some(seconds) = number.as_i64() {
                Utc.timestamp_opt(seconds, 0).single()
            } else {
                let seconds = number.as_f64()?;
                let whole = seconds.floor();
                let nanos = ((seconds - whole) * 1e9).round() as u32;
                Utc.timestamp_opt(whole as i64, nanos.min(999_999_999)).single()
            }
        }
        _ => None,
    }
}

fn parse_timestamp_str(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f %z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(time) = DateTime::parse_from_str(text, format) {
            return Some(time.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S UTC"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Some(time.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn envelope_keys_are_in_the_gems_order() {
        // Vector w01.
        let envelope = Envelope::single("example_resource_created", "ExampleResource", json!([{"id": 1}]));
        assert_eq!(
            String::from_utf8(envelope.encode().unwrap()).unwrap(),
            r#"{"message":[{"event":"example_resource_created","model_name":"ExampleResource","data":[{"id":1}]}]}"#
        );
    }

    #[test]
    fn html_characters_are_escaped_like_active_support() {
        let envelope = Envelope::single("e", "M", json!([{"name": "<b>Tom & Jerry</b>\u{2028}", "city": "Zürich"}]));
        let text = String::from_utf8(envelope.encode().unwrap()).unwrap();
        assert!(text.contains(r#""name":"\u003cb\u003eTom \u0026 Jerry\u003c/b\u003e\u2028""#), "{text}");
        assert!(text.contains("Zürich"), "other non-ASCII stays raw UTF-8: {text}");
        let decoded: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(decoded["message"][0]["data"][0]["name"], "<b>Tom & Jerry</b>\u{2028}");
    }

    #[test]
    fn tombstones_and_messageless_payloads_carry_no_events() {
        assert_eq!(decode(None).unwrap(), Decoded::Tombstone);
        assert_eq!(decode(Some(JSON_NULL_TOMBSTONE)).unwrap(), Decoded::Tombstone);
        assert_eq!(decode(Some(br#"{"other":1}"#)).unwrap(), Decoded::NoMessage);
    }

    #[test]
    fn data_is_normalised_to_a_list() {
        let decoded = decode(Some(
            br#"{"message":[{"event":"a_created","model_name":"A","data":{"id":1}},{"event":"a_updated","model_name":"A","data":null}]}"#,
        ))
        .unwrap();
        let Decoded::Events(events) = decoded else { panic!("events expected") };
        assert_eq!(events[0].data, vec![RawRecord::from(json!({"id": 1}))]);
        assert!(events[1].data.is_empty());
    }

    /// The one-pass reader gives what the plain-value reader gives, for every shape,
    /// including the odd ones it hands over to the plain reader.
    #[test]
    fn the_fast_reader_agrees_with_the_plain_one() {
        let cases: &[&[u8]] = &[
            br#"{"message":[{"event":"a_created","model_name":"A","data":[{"id":1,"links":{"b":2},"x":[1,{"y":null}]}]}]}"#,
            br#"{"message":[{"event":"a_created","model_name":"A","data":[{"id":1,"id":2,"n":"x","n":"y"}]}]}"#,
            br#"{"message":[{"model_name":"A","extra":1,"event":"a_created","data":{"id":1}}],"other":{"k":[]}}"#,
            br#"{"message":[{"event":"a","model_name":"A","data":[1,"s",true,null,[2],1.5,-3,{"id":18446744073709551615}]}]}"#,
            br#"{"message":[{"event":"a","model_name":"A","data":7}]}"#,
            br#"{"message":[{"event":"a","model_name":"A","data":"text"}]}"#,
            br#"{"message":[{"event":"a","model_name":"A"}, {"event":"b","model_name":"B","data":null}]}"#,
            br#"{"message":[{"event":"a","event":"b","model_name":"A","data":[]}]}"#,
            br#"{"message":[],"message":[{"event":"a","model_name":"A","data":[]}]}"#,
            br#"{"message":null}"#,
            br#"{"other":1}"#,
            br#"{}"#,
            b"null",
            br#"{"message":[["a_created","A",[]]]}"#,
            br#"[{"message":[]}]"#,
            br#"{"message":{}}"#,
            br#"{"message":[{"event":1,"model_name":"A"}]}"#,
            br#"{"message":[{"event":"a"}]}"#,
            br#"{"message":[{"event":"a","model_name":"A","data":[{"s":"\u003cb\u003e \u2028 caf\u00e9"}]}]}"#,
            b"{not json",
            b"",
            b"42",
        ];
        // Records compared as JSON values: a repeated key counts once, with its last value.
        let normal = |decoded: Decoded| match decoded {
            Decoded::Events(events) => Decoded::Events(
                events
                    .into_iter()
                    .map(|event| DecodedEvent {
                        data: event.data.into_iter().map(|record| RawRecord::from(record.into_value())).collect(),
                        ..event
                    })
                    .collect(),
            ),
            other => other,
        };
        for case in cases {
            let plain = serde_json::from_slice::<Value>(case).map_err(EnvelopeError::Json).and_then(decode_value);
            let fast = decode(Some(case));
            let (plain, fast) = (plain.map(normal), fast.map(normal));
            match (plain, fast) {
                (Ok(plain), Ok(fast)) => assert_eq!(plain, fast, "{}", String::from_utf8_lossy(case)),
                (Err(plain), Err(fast)) => {
                    assert_eq!(plain.to_string(), fast.to_string(), "{}", String::from_utf8_lossy(case));
                }
                (plain, fast) => panic!("{}: {plain:?} against {fast:?}", String::from_utf8_lossy(case)),
            }
        }
    }

    #[test]
    fn bad_input_is_described() {
        assert!(matches!(decode(Some(b"{not json")), Err(EnvelopeError::Json(_))));
        let shape = |bytes: &[u8]| decode(Some(bytes)).unwrap_err().to_string();
        assert_eq!(shape(b"[1]"), "unexpected message shape: expected a JSON object, got an array");
        assert_eq!(shape(br#"{"message":{}}"#), "unexpected message shape: `message` must be an array, got an object");
        assert_eq!(
            shape(br#"{"message":[{"model_name":"A"}]}"#),
            "unexpected message shape: `message[0]` has no `event`"
        );
    }

    #[test]
    fn timestamps_use_milliseconds_and_parse_every_common_form() {
        let time = Utc.with_ymd_and_hms(2022, 8, 12, 13, 24, 24).unwrap();
        assert_eq!(format_timestamp(&time), "2022-08-12T13:24:24.000Z");
        for text in
            ["2022-08-12T13:24:24.000Z", "2022-08-12T15:24:24+02:00", "2022-08-12 13:24:24", "2022-08-12T13:24:24"]
        {
            assert_eq!(parse_timestamp(&json!(text)), Some(time), "{text}");
        }
        assert_eq!(parse_timestamp(&json!(1_660_310_664)), Some(time));
        assert_eq!(parse_timestamp(&json!("yesterday")), None);
        assert_eq!(parse_timestamp(&Value::Null), None);
    }

    /// Logs what it is handed: `(event, index, id)`.
    #[derive(Default)]
    struct Log(Vec<(usize, usize, Value)>);

    impl ReadRecords for Log {
        type Record = Value;

        fn start(&mut self) {
            self.0.clear();
        }

        fn read(&mut self, event: usize, index: usize, record: RawRecord) -> Value {
            self.0.push((event, index, record.get("id").cloned().unwrap_or(Value::Null)));
            record.into_value()
        }
    }

    #[test]
    fn a_reader_gets_each_record_once_in_order_even_when_the_message_is_read_again() {
        let fast = br#"{"message":[{"event":"a","model_name":"A","data":[{"id":1},{"id":2}]},
            {"data":{"id":3},"event":"b","model_name":"B"}]}"#;
        let mut log = Log::default();
        let Decoded::Events(events) = decode_with(Some(fast), &mut log).unwrap() else { panic!() };
        assert_eq!(log.0, [(0, 0, json!(1)), (0, 1, json!(2)), (1, 0, json!(3))]);
        assert_eq!(events[1].data, [json!({"id": 3})]);
        // A repeated envelope key: the one-pass reader gives up after reading records, the
        // message is read again, and the reader starts over.
        let again = br#"{"message":[{"event":"a","model_name":"A","data":[{"id":1}]}],
            "message":[{"event":"a","model_name":"A","data":[{"id":7},{"id":8}]}]}"#;
        let Decoded::Events(events) = decode_with(Some(again), &mut log).unwrap() else { panic!() };
        assert_eq!(log.0, [(0, 0, json!(7)), (0, 1, json!(8))]);
        assert_eq!(events[0].data.len(), 2);
        assert_eq!(decode(Some(again)).unwrap(), decode_value(serde_json::from_slice(again).unwrap()).unwrap());
    }
}
