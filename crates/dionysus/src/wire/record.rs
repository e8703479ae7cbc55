//! A record's JSON on the wire: the object placed in a message's `data`, with its `links` and
//! sideloaded dependencies in the layout of dionysus-rb's ModelSerializer (W-9, W-15), why
//! serializing one can fail, and the small JSON helpers every layer shares (the kind of a
//! value for messages, an id as text).
//!
//! Which records are loaded and sideloaded is the producer's business; this module only
//! shapes the JSON.

use serde_json::{Map, Value};

/// Serializing a record failed; the outbox row is retried later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerializeError {
    /// serde failed.
    #[error("serializing {model} {id}")]
    Serde {
        /// Model name.
        model: &'static str,
        /// Primary key.
        id: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The serializer produced something else than a JSON object.
    #[error("the serializer of {model} must produce a JSON object, got {found}")]
    NotAnObject {
        /// Model name.
        model: &'static str,
        /// What it produced.
        found: &'static str,
    },
    /// A serializer was handed a record of another model (a registry mix-up).
    #[error("serializer of {expected} was given a {found} record")]
    WrongModel {
        /// The serializer's model.
        expected: &'static str,
        /// The record's model.
        found: &'static str,
    },
    /// A custom serializer's own error ([`SerializeError::custom`]).
    #[error("the serializer failed")]
    Custom(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl SerializeError {
    /// A custom serializer's own error: anything that converts into a boxed error (any
    /// `std::error::Error + Send + Sync`, a `String`, an `anyhow::Error`).
    pub fn custom(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> SerializeError {
        SerializeError::Custom(error.into())
    }
}

/// The sideloaded `with(...)` dependencies of one record, in declaration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sideloads {
    entries: Vec<(String, Sideload)>,
}

/// One sideloaded dependency.
#[derive(Debug, Clone, PartialEq)]
pub enum Sideload {
    /// A to-one dependency (the record holds its key): the nested object, or `None` when the
    /// key is null or the record is gone. Linked by its id.
    One {
        /// The dependency's id (its link), `null` when absent.
        link: Value,
        /// The nested record.
        record: Option<Value>,
    },
    /// A to-many dependency (they hold the record's key). Linked by their ids.
    Many(Vec<(Value, Value)>),
}

impl Sideloads {
    /// Adds a sideload under `name`.
    pub fn push(&mut self, name: String, sideload: Sideload) {
        self.entries.push((name, sideload));
    }

    /// The sideloads, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Sideload)> {
        self.entries.iter().map(|(name, sideload)| (name.as_str(), sideload))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends `"links"` (merged into an existing `links` object) and the nested records to a
    /// serialized record, as dionysus-rb's ModelSerializer lays them out.
    pub fn attach(&self, mut object: Map<String, Value>) -> Map<String, Value> {
        let mut links = match object.remove("links") {
            Some(Value::Object(links)) => links,
            _ => Map::new(),
        };
        for (name, sideload) in &self.entries {
            let link = match sideload {
                Sideload::One { link, .. } => link.clone(),
                Sideload::Many(records) => Value::Array(records.iter().map(|(id, _)| id.clone()).collect()),
            };
            links.insert(name.clone(), link);
        }
        object.insert("links".to_owned(), Value::Object(links));
        for (name, sideload) in &self.entries {
            let nested = match sideload {
                Sideload::One { record, .. } => record.clone().unwrap_or(Value::Null),
                Sideload::Many(records) => Value::Array(records.iter().map(|(_, record)| record.clone()).collect()),
            };
            object.insert(name.clone(), nested);
        }
        object
    }
}

/// An id value as the text the outbox and loaders use.
pub fn id_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The kind of a JSON value, for messages: `null`, `a boolean`, `a number`, `a string`, `an
/// array`, `an object`.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sideloads_follow_the_model_serializer_layout() {
        // Vector w15, second case: links hold the ids, then the nested records follow.
        let mut sideloads = Sideloads::default();
        sideloads.push(
            "account".into(),
            Sideload::One { link: json!(2), record: Some(json!({"id": "2_from_account", "links": {}})) },
        );
        sideloads
            .push("bookings".into(), Sideload::Many(vec![(json!(3), json!({"id": "3_from_booking", "links": {}}))]));
        let record = json!({"id": 1, "name": "name"});
        let Value::Object(object) = record else { unreachable!() };
        let serialized = Value::Object(sideloads.attach(object));
        assert_eq!(
            serde_json::to_string(&serialized).unwrap(),
            r#"{"id":1,"name":"name","links":{"account":2,"bookings":[3]},"account":{"id":"2_from_account","links":{}},"bookings":[{"id":"3_from_booking","links":{}}]}"#
        );
        // First case: no dependencies, empty links.
        let Value::Object(object) = json!({"id": 1, "name": "name"}) else { unreachable!() };
        assert_eq!(
            serde_json::to_string(&Sideloads::default().attach(object)).unwrap(),
            r#"{"id":1,"name":"name","links":{}}"#
        );
    }
}
