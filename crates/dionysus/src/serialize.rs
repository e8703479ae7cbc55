//! From outbox rows to Kafka messages: loading the current records (one query per model per
//! batch), sideloading `with(...)` dependencies (one query per dependency per batch),
//! serializing through each publication's [`Serializer`], and wrapping the result in the
//! dionysus-rb envelope with its key, partition key and topic(s).
//!
//! [`plan_rows`] is what the relay calls; it needs a database connection but no broker, so
//! every rule of the wire format can be tested without one. It does not send anything and
//! does not touch the outbox table.

use std::collections::{BTreeMap, HashMap};

use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value};

use crate::config::ProducerConfig;
use crate::envelope::{Envelope, JSON_NULL_TOMBSTONE};
use crate::naming::{self, EventKind};
use crate::publishable::{
    partition_key_from_value, ColumnIn, Dependency, PartitionKeySource, Publication, Publishable, Record, Relation,
};
use crate::registry::{Registry, Tombstone, TopicRole};

/// Turns one record and its sideloads into the JSON object placed in a message's `data`.
///
/// Implement it on a unit struct and name it with `#[publish(serializer = MySerializer)]`.
pub trait Serializer<T>: Default + Send + Sync + 'static {
    /// The record's JSON object.
    fn serialize(&self, record: &T, sideloads: &Sideloads) -> Result<Value, SerializeError>;
}

/// The default serializer: the record's serde fields in declaration order, then `"links"`,
/// then each sideload, the shape of dionysus-rb's ModelSerializer (W-9). Timestamps are
/// written with milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultSerializer;

impl<T: Publishable> Serializer<T> for DefaultSerializer {
    fn serialize(&self, record: &T, sideloads: &Sideloads) -> Result<Value, SerializeError> {
        default_serialize(record, sideloads)
    }
}

/// [`DefaultSerializer`] for any record: its serde fields, `"links"`, then the sideloads.
/// Also how sideloaded records are nested (with no sideloads of their own).
pub fn default_serialize(record: &dyn Record, sideloads: &Sideloads) -> Result<Value, SerializeError> {
    let model = record.model().model_name;
    let json = record.to_json().map_err(|source| SerializeError::Serde { model, id: record.id(), source })?;
    match json {
        Value::Object(object) => Ok(Value::Object(sideloads.attach(object))),
        other => Err(SerializeError::NotAnObject { model, found: kind(&other) }),
    }
}

/// Used by generated code: the erased serializer of a publication.
#[doc(hidden)]
pub fn serialize_erased<T: Publishable, S: Serializer<T>>(
    record: &dyn Record,
    sideloads: &Sideloads,
) -> Result<Value, SerializeError> {
    match record.as_any().downcast_ref::<T>() {
        Some(record) => S::default().serialize(record, sideloads),
        None => Err(SerializeError::WrongModel { expected: T::MODEL.model_name, found: record.model().model_name }),
    }
}

/// Serializing a record failed; the outbox row is retried later.
#[derive(Debug, thiserror::Error)]
pub enum SerializeError {
    /// serde failed.
    #[error("serializing {model} {id}: {source}")]
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
    /// A custom serializer's own error.
    #[error("{0}")]
    Custom(String),
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

/// A message ready for the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Topic name.
    pub topic: String,
    /// Message key, `"<ModelName>:<id>"`.
    pub key: String,
    /// The key the partition is chosen from; `None` lets the producer use the message key.
    pub partition_key: Option<String>,
    /// Value bytes; `None` is a Kafka null (a tombstone on topics with
    /// `tombstone = "kafka_null"`).
    pub payload: Option<Vec<u8>>,
}

/// The columns of an outbox row that decide what is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    /// Outbox id.
    pub id: i64,
    /// Model name.
    pub resource_class: String,
    /// Record id as text.
    pub resource_id: String,
    /// Event name.
    pub event_name: String,
    /// Topic (primary or genesis name), or the observer pseudo-topic.
    pub topic: String,
    /// Partition key stored when the row was written.
    pub partition_key: Option<String>,
}

/// What to do with one outbox row.
#[derive(Debug)]
pub enum RowPlan {
    /// Send these messages, in order, then mark the row published.
    Publish(Vec<OutgoingMessage>),
    /// Nothing to send (e.g. the record of a `_created` row is gone); mark the row published
    /// and report the reason.
    Skip(String),
    /// An observer row deferred because too many records were related: the relay hands it to
    /// genesis.
    DeferredObservers,
    /// The row cannot be published now; record the error and retry later.
    Fail(PlanError),
}

/// Why a row could not be turned into messages.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No publishable model has this name in the registry.
    #[error("no publishable model is named `{0}` in this binary's registry")]
    UnknownModel(String),
    /// The model is not published on the row's topic.
    #[error("model `{model}` is not published on topic `{topic}`")]
    NotPublishedOnTopic {
        /// Model name.
        model: String,
        /// Topic.
        topic: String,
    },
    /// Serialization failed.
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    /// Building the value failed.
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
    /// Loading records failed (the whole batch is retried).
    #[error("loading {what}: {source}")]
    Load {
        /// What was loaded.
        what: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
}

/// The partition key of a record for a publication: the publication's own source, else the
/// topic's `partition_key`, else the configured default (P-26). An attribute the model does
/// not have gives `None` (no partition key).
pub fn partition_key(
    publication: &Publication,
    record: &dyn Record,
    registry: &Registry,
    config: &ProducerConfig,
) -> Option<String> {
    let attribute = match publication.partition_key {
        PartitionKeySource::Resolver(resolve) => return resolve(record),
        PartitionKeySource::Attribute(name) => name,
        PartitionKeySource::Inherit => registry
            .topic(publication.topic)
            .and_then(|topic| topic.partition_key)
            .filter(|key| !key.is_empty())
            .unwrap_or(&config.default_partition_key),
    };
    record.attribute(attribute).map(|value| partition_key_from_value(&value))
}

/// Plans every row of a batch: loads the records of each model in one query, the sideloads
/// of each dependency in one query, and builds the messages of each row in order.
pub async fn plan_rows(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    rows: &[RowRef],
) -> Result<Vec<RowPlan>, PlanError> {
    let mut ids_by_model: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.topic != crate::outbox::OBSERVER_TOPIC) {
        if registry.model(&row.resource_class).is_some() {
            ids_by_model.entry(row.resource_class.as_str()).or_default().push(row.resource_id.clone());
        }
    }
    let mut loaded: Vec<Box<dyn Record>> = Vec::new();
    for (model_name, mut ids) in ids_by_model {
        let Some(model) = registry.model(model_name) else { continue };
        ids.sort_unstable();
        ids.dedup();
        loaded.extend(
            model
                .load_by_ids(conn, &ids)
                .await
                .map_err(|source| PlanError::Load { what: format!("{model_name} records {ids:?}"), source })?,
        );
    }
    plan_loaded_rows(conn, registry, config, rows, &loaded).await
}

/// [`plan_rows`] for rows whose current records the caller has loaded already (genesis
/// pages through them): only the sideloads are queried. A row whose record is not in
/// `loaded` is planned as a record that is gone.
pub async fn plan_loaded_rows(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    rows: &[RowRef],
    loaded: &[Box<dyn Record>],
) -> Result<Vec<RowPlan>, PlanError> {
    let records: HashMap<(&str, String), &dyn Record> =
        loaded.iter().map(|record| ((record.model().model_name, record.id()), record.as_ref())).collect();

    // Sideloads, one query per (publication, dependency) over every record it publishes.
    let mut sideloads: HashMap<(usize, String), Sideloads> = HashMap::new();
    let mut wanted: BTreeMap<usize, (&'static Publication, Vec<&dyn Record>)> = BTreeMap::new();
    for row in rows {
        let Some(&record) = records.get(&(row.resource_class.as_str(), row.resource_id.clone())) else {
            continue;
        };
        for publication in registry.publications_on(&row.resource_class, &row.topic) {
            if publication.with.is_empty() {
                continue;
            }
            let entry = wanted.entry(publication as *const Publication as usize).or_insert((publication, Vec::new()));
            if !entry.1.iter().any(|r| r.id() == record.id()) {
                entry.1.push(record);
            }
        }
    }
    for (address, (publication, owners)) in wanted {
        let loaded = load_sideloads(conn, publication, &owners).await?;
        for (owner_id, owner_sideloads) in loaded {
            sideloads.insert((address, owner_id), owner_sideloads);
        }
    }

    // Messages per row.
    let empty = Sideloads::default();
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        if row.topic == crate::outbox::OBSERVER_TOPIC {
            plans.push(RowPlan::DeferredObservers);
            continue;
        }
        let Some(model) = registry.model(&row.resource_class) else {
            plans.push(RowPlan::Fail(PlanError::UnknownModel(row.resource_class.clone())));
            continue;
        };
        let publications = registry.publications_on(model.model_name, &row.topic);
        let Some(first) = publications.first() else {
            plans.push(RowPlan::Fail(PlanError::NotPublishedOnTopic {
                model: row.resource_class.clone(),
                topic: row.topic.clone(),
            }));
            continue;
        };
        let genesis_only = matches!(registry.resolve(&row.topic), Some((_, TopicRole::Genesis)));
        let record = records.get(&(model.model_name, row.resource_id.clone())).copied();
        let data = match record {
            Some(record) => {
                let address = *first as *const Publication as usize;
                let record_sideloads = sideloads.get(&(address, record.id())).unwrap_or(&empty);
                match (first.serialize)(record, record_sideloads) {
                    Ok(json) => json,
                    Err(error) => {
                        plans.push(RowPlan::Fail(error.into()));
                        continue;
                    }
                }
            }
            None => match EventKind::classify(&row.event_name) {
                Some(EventKind::Destroyed) => deleted_record(model, &row.resource_id),
                _ => {
                    plans.push(RowPlan::Skip(format!(
                        "{} {} of a `{}` row no longer exists; nothing to publish",
                        row.resource_class, row.resource_id, row.event_name
                    )));
                    continue;
                }
            },
        };
        let stored_key = row.partition_key.clone().filter(|key| !key.is_empty());
        let partition_key = stored_key.or_else(|| record.and_then(|r| partition_key(first, r, registry, config)));
        let payload =
            match Envelope::single(row.event_name.clone(), model.model_name, Value::Array(vec![data])).encode() {
                Ok(payload) => payload,
                Err(error) => {
                    plans.push(RowPlan::Fail(error.into()));
                    continue;
                }
            };
        let key = naming::message_key(model.model_name, &row.resource_id);
        let messages = destinations(registry, first.topic, genesis_only)
            .into_iter()
            .map(|topic| OutgoingMessage {
                topic,
                key: key.clone(),
                partition_key: partition_key.clone(),
                payload: Some(payload.clone()),
            })
            .collect();
        plans.push(RowPlan::Publish(messages));
    }
    Ok(plans)
}

/// The topics a message for `topic` goes to: the topic itself (unless genesis-only) and its
/// genesis replica when it has one (P-28, G-8).
fn destinations(registry: &Registry, topic: &str, genesis_only: bool) -> Vec<String> {
    let declaration = registry.topic(topic);
    let mut topics = Vec::with_capacity(2);
    if !genesis_only {
        topics.push(topic.to_owned());
    }
    if let Some(genesis) = declaration.and_then(|declaration| declaration.genesis_name()) {
        topics.push(genesis);
    }
    topics
}

/// The record of a `_destroyed` row whose row is gone: `{"links":{},"<pk>":<id>}` (W-11).
fn deleted_record(model: &crate::publishable::ModelEntry, id: &str) -> Value {
    let mut object = Map::new();
    object.insert("links".to_owned(), Value::Object(Map::new()));
    object.insert(model.primary_key.to_owned(), model.id_json(id));
    Value::Object(object)
}

/// Loads the sideloads of `owners` (records of `publication`'s model) for every dependency.
async fn load_sideloads(
    conn: &mut AsyncPgConnection,
    publication: &Publication,
    owners: &[&dyn Record],
) -> Result<HashMap<String, Sideloads>, PlanError> {
    let mut result: HashMap<String, Sideloads> =
        owners.iter().map(|owner| (owner.id(), Sideloads::default())).collect();
    for dependency in publication.with {
        let loaded = load_dependency(conn, publication, dependency, owners).await?;
        for (owner_id, name, sideload) in loaded {
            if let Some(sideloads) = result.get_mut(&owner_id) {
                sideloads.push(name, sideload);
            }
        }
    }
    Ok(result)
}

async fn load_dependency(
    conn: &mut AsyncPgConnection,
    publication: &Publication,
    dependency: &Dependency,
    owners: &[&dyn Record],
) -> Result<Vec<(String, String, Sideload)>, PlanError> {
    let other = (dependency.model)();
    let owner_model = publication.model;
    let [plural, singular] = naming::include_names(other.model_name);
    let load_error = |source| PlanError::Load {
        what: format!("`with({})` dependencies of {}", other.model_name, owner_model.model_name),
        source,
    };
    let empty = Sideloads::default();
    let nested = |record: &dyn Record| -> Result<Value, PlanError> { Ok(default_serialize(record, &empty)?) };
    let mut out = Vec::with_capacity(owners.len());
    match (dependency.relation)() {
        Relation::OtherHoldsKey(column) => {
            let owner_ids: Vec<String> = owners.iter().map(|owner| owner.id()).collect();
            let filter = ColumnIn::parse(column, owner_model.id_kind, &owner_ids).map_err(load_error)?;
            let children = (other.load)(conn, filter.into(), None).await.map_err(load_error)?;
            let mut by_owner: HashMap<String, Vec<(Value, Value)>> = HashMap::new();
            for child in &children {
                let Some(key) = child.attribute(column).filter(|value| !value.is_null()) else { continue };
                let owner_id = id_text(&key);
                by_owner.entry(owner_id).or_default().push((other.id_json(&child.id()), nested(child.as_ref())?));
            }
            for owner in owners {
                let records = by_owner.remove(&owner.id()).unwrap_or_default();
                out.push((owner.id(), plural.clone(), Sideload::Many(records)));
            }
        }
        Relation::OwnerHoldsKey(column) => {
            let keys: Vec<Option<String>> = owners
                .iter()
                .map(|owner| owner.attribute(column).filter(|value| !value.is_null()).map(|value| id_text(&value)))
                .collect();
            let mut ids: Vec<String> = keys.iter().flatten().cloned().collect();
            ids.sort_unstable();
            ids.dedup();
            let loaded =
                if ids.is_empty() { Vec::new() } else { other.load_by_ids(conn, &ids).await.map_err(load_error)? };
            let mut by_id: HashMap<String, Value> = HashMap::new();
            for record in &loaded {
                by_id.insert(record.id(), nested(record.as_ref())?);
            }
            for (owner, key) in owners.iter().zip(keys) {
                let sideload = match key {
                    Some(id) => Sideload::One { link: other.id_json(&id), record: by_id.get(&id).cloned() },
                    None => Sideload::One { link: Value::Null, record: None },
                };
                out.push((owner.id(), singular.clone(), sideload));
            }
        }
    }
    Ok(out)
}

/// An id value as the text the outbox and loaders use.
pub(crate) fn id_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The messages of a tombstone for `record` on `publication`'s topic (and its genesis
/// replica): dionysus-rb's TombstonePublisher (P-30). `key` and `partition_key` default to
/// the record's key and computed partition key; passing `Some` uses the value verbatim.
pub fn tombstone_messages(
    registry: &Registry,
    config: &ProducerConfig,
    publication: &Publication,
    record: &dyn Record,
    key: Option<String>,
    partition_key_override: Option<Option<String>>,
) -> Vec<OutgoingMessage> {
    let key = key.unwrap_or_else(|| naming::message_key(record.model().model_name, record.id()));
    let partition_key =
        partition_key_override.unwrap_or_else(|| self::partition_key(publication, record, registry, config));
    let payload = match registry.topic(publication.topic).map(|topic| topic.tombstone) {
        Some(Tombstone::KafkaNull) => None,
        _ => Some(JSON_NULL_TOMBSTONE.to_vec()),
    };
    destinations(registry, publication.topic, false)
        .into_iter()
        .map(|topic| OutgoingMessage {
            topic,
            key: key.clone(),
            partition_key: partition_key.clone(),
            payload: payload.clone(),
        })
        .collect()
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

    #[test]
    fn deleted_records_put_links_first() {
        // Vector p22/W-11: `{"links":{},"id":10}` with the id cast to the key's type.
        let model = crate::publishable::ModelEntry {
            model_name: "ExampleResource",
            table: "example_resources",
            primary_key: "id",
            id_kind: crate::publishable::IdKind::Integer,
            attributes: &["id"],
            soft_delete: crate::publishable::SoftDelete::Configured,
            publish_updates_after_soft_delete: false,
            type_id: std::any::TypeId::of::<()>,
            publications: || &[],
            load: |_, _, _| Box::pin(async { Ok(Vec::new()) }),
            rust_name: "ExampleResource",
        };
        assert_eq!(serde_json::to_string(&deleted_record(&model, "10")).unwrap(), r#"{"links":{},"id":10}"#);
    }
}
