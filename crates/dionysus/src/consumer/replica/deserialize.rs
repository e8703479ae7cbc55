//! The canonical form of an incoming record (dionysus-rb's `Deserializer`, C-6): link-derived
//! keys first (`synced_<name>_id`, `synced_<singular>_ids`, `synced_<name>_type`), then
//! `synced_id` and the `synced_*` timestamps, then every plain attribute as sent; sideloaded
//! relationships are split off into `has_many` / `has_one`, recursively.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::wire::envelope::RawRecord;
use crate::wire::naming::singularize;

/// One deserialized record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// Attributes in dionysus-rb's order; the keys present are exactly the ones the payload
    /// had (a timestamp key is present even when its value is `null`).
    pub attributes: Map<String, Value>,
    /// To-many relationships in link order: the link name and the sideloaded records, or
    /// `None` when the link was sent without the records.
    pub has_many: Vec<(String, Option<Vec<Record>>)>,
    /// To-one relationships in link order: the link name (or the polymorphic type) and the
    /// sideloaded record, when sent.
    pub has_one: Vec<(String, Option<Record>)>,
}

impl Record {
    /// The source id (`synced_id`), `None` when missing or `null`.
    pub fn synced_id(&self) -> Option<&Value> {
        self.attributes.get("synced_id").filter(|value| !value.is_null())
    }

    /// The record as dionysus-rb's event bus shows it: `{attributes, has_many, has_one}`.
    pub fn to_json(&self) -> Value {
        let has_many = self
            .has_many
            .iter()
            .map(|(name, records)| {
                let records =
                    records.as_ref().map_or(Value::Null, |records| records.iter().map(Record::to_json).collect());
                Value::Array(vec![Value::String(name.clone()), records])
            })
            .collect();
        let has_one = self
            .has_one
            .iter()
            .map(|(name, record)| {
                Value::Array(vec![Value::String(name.clone()), record.as_ref().map_or(Value::Null, Record::to_json)])
            })
            .collect();
        let mut object = Map::new();
        object.insert("attributes".to_owned(), Value::Object(self.attributes.clone()));
        object.insert("has_many".to_owned(), Value::Array(has_many));
        object.insert("has_one".to_owned(), Value::Array(has_one));
        Value::Object(object)
    }
}

/// A record that cannot be deserialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeserializeError {
    /// A record is not a JSON object.
    #[error("record {path} must be a JSON object, got {found}")]
    NotAnObject {
        /// Where, e.g. `data[0].bookings[1]`.
        path: String,
        /// What was found.
        found: String,
    },
    /// `links` is not an object.
    #[error("`links` of record {path} must be an object, got {found}")]
    LinksNotAnObject {
        /// Where.
        path: String,
        /// What was found.
        found: String,
    },
}

/// Deserializes an event's `data` list.
#[cfg(test)]
pub(crate) fn deserialize(data: &[Value]) -> Result<Vec<Record>, DeserializeError> {
    data.iter().cloned().enumerate().map(|(index, item)| deserialize_record(index, RawRecord::from(item))).collect()
}

/// Deserializes the record at position `index` of an event's `data`, moving its values.
pub(crate) fn deserialize_record(index: usize, item: RawRecord) -> Result<Record, DeserializeError> {
    deserialize_at(item, &|| format!("data[{index}]"))
}

/// Deserializes one record.
#[cfg(test)]
pub(crate) fn deserialize_one(item: &Value) -> Result<Record, DeserializeError> {
    deserialize_at(RawRecord::from(item.clone()), &|| "data[0]".to_owned())
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(_) => "a number".to_owned(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `path` names the record in errors (only called on error).
fn deserialize_at(item: RawRecord, path: &dyn Fn() -> String) -> Result<Record, DeserializeError> {
    let payload = match item {
        RawRecord::Object(payload) => payload,
        RawRecord::Other(other) => return Err(DeserializeError::NotAnObject { path: path(), found: kind(&other) }),
    };
    // One pass over the payload, in its order, moving every value.
    let mut links = Map::new();
    let mut id = Value::Null;
    let mut times: [Option<Value>; 3] = [None, None, None];
    let mut rest: Vec<(String, Value)> = Vec::with_capacity(payload.len());
    for (key, value) in payload {
        match key.as_str() {
            "links" => match value {
                Value::Null => {}
                Value::Object(object) => links = object,
                other => return Err(DeserializeError::LinksNotAnObject { path: path(), found: kind(&other) }),
            },
            "id" => id = value,
            "created_at" => times[0] = Some(value),
            "updated_at" => times[1] = Some(value),
            "canceled_at" => times[2] = Some(value),
            _ => rest.push((key, value)),
        }
    }

    // Sideloads indexed once by link name (keys of one object are unique), so each link
    // finds its records in constant time however many links a record has.
    let mut sideloads: HashMap<String, Value> = HashMap::new();
    let plain: Vec<(String, Value)> = if links.is_empty() {
        rest
    } else {
        let mut plain = Vec::with_capacity(rest.len());
        for (key, value) in rest {
            if links.contains_key(&key) {
                sideloads.insert(key, value);
            } else {
                plain.push((key, value));
            }
        }
        plain
    };
    // As many attributes and relationships as there will be: a message may hold many small
    // records.
    let derived: usize = links.values().map(|link| if link.is_object() { 2 } else { 1 }).sum();
    let timed = times.iter().flatten().count();
    let mut record = Record { attributes: Map::with_capacity(derived + 1 + timed + plain.len()), ..Record::default() };
    let many = links.values().filter(|link| link.is_array()).count();
    record.has_many.reserve_exact(many);
    record.has_one.reserve_exact(links.len() - many);
    let attributes = &mut record.attributes;
    // The links move into the attributes, each freed as soon as it is read; what the
    // relationships need of them is kept: (name, to-many, model name of a to-one link).
    let mut relationships: Vec<(String, bool, Option<String>)> = Vec::with_capacity(links.len());
    for (name, value) in links {
        match value {
            Value::Object(mut link) => {
                let id = link.swap_remove("id").unwrap_or(Value::Null);
                let kind = link.swap_remove("type").unwrap_or(Value::Null);
                let model = kind.as_str().map(str::to_owned);
                attributes.insert(format!("synced_{name}_id"), id);
                attributes.insert(format!("synced_{name}_type"), kind);
                relationships.push((name, false, model));
            }
            Value::Array(ids) => {
                attributes.insert(format!("synced_{}_ids", singularize(&name)), Value::Array(ids));
                relationships.push((name, true, None));
            }
            other => {
                attributes.insert(format!("synced_{name}_id"), other);
                relationships.push((name, false, None));
            }
        }
    }
    attributes.insert("synced_id".to_owned(), id);
    for (target, value) in ["synced_created_at", "synced_updated_at", "synced_canceled_at"].into_iter().zip(times) {
        if let Some(value) = value {
            attributes.insert(target.to_owned(), value);
        }
    }
    for (key, value) in plain {
        attributes.insert(key, value);
    }

    for (name, to_many, model) in relationships {
        let sideloaded = sideloads.remove(&name).filter(|value| !value.is_null());
        if to_many {
            let records = match sideloaded {
                None => None,
                Some(Value::Array(items)) => Some(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(index, item)| {
                            deserialize_at(RawRecord::from(item), &|| format!("{}.{name}[{index}]", path()))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(item) => Some(vec![deserialize_at(RawRecord::from(item), &|| format!("{}.{name}[0]", path()))?]),
            };
            record.has_many.push((name, records));
        } else {
            let sideloaded = sideloaded
                .map(|item| deserialize_at(RawRecord::from(item), &|| format!("{}.{name}", path())))
                .transpose()?;
            record.has_one.push((model.unwrap_or(name), sideloaded));
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vector(name: &str) -> Value {
        let path = format!("{}/../../../shared/spec/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
        serde_json::from_str(&text).unwrap()
    }

    /// Vector c20: the full canonical format, key order included.
    #[test]
    fn canonical_format_matches_the_gem() {
        let vector = vector("c20_deserializer_canonical_format.json");
        let data = vector["input"]["data"].as_array().unwrap();
        let records = deserialize(data).unwrap();
        let actual: Vec<Value> = records.iter().map(Record::to_json).collect();
        assert_eq!(Value::Array(actual.clone()), vector["expected"]["deserialized"]);
        let keys: Vec<&String> = records[0].attributes.keys().collect();
        let expected: Vec<&String> =
            vector["expected"]["deserialized"][0]["attributes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, expected, "links-derived first, then synced_id and timestamps, then plain attributes");
        assert!(deserialize(&[]).unwrap().is_empty(), "data null deserializes to nothing");
    }

    #[test]
    fn timestamps_are_copied_only_when_present_and_raw() {
        let record = deserialize_one(&json!({"id": 1, "updated_at": null, "created_at": "x"})).unwrap();
        assert_eq!(record.attributes.get("synced_updated_at"), Some(&Value::Null));
        assert_eq!(record.attributes.get("synced_created_at"), Some(&json!("x")));
        assert!(!record.attributes.contains_key("synced_canceled_at"));
        let record = deserialize_one(&json!({})).unwrap();
        assert_eq!(record.attributes.get("synced_id"), Some(&Value::Null));
        assert_eq!(record.synced_id(), None);
    }

    #[test]
    fn bad_shapes_are_described() {
        assert_eq!(
            deserialize(&[json!(1)]).unwrap_err().to_string(),
            "record data[0] must be a JSON object, got a number"
        );
        let error = deserialize(&[json!({"id": 1, "links": {"bookings": [1]}, "bookings": [2]})]).unwrap_err();
        assert_eq!(error.to_string(), "record data[0].bookings[0] must be a JSON object, got a number");
        assert!(deserialize(&[json!({"links": []})]).is_err());
    }
}
