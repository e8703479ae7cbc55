//! From outbox rows to Kafka messages: loading the current records (one query per model per
//! batch), sideloading `with(...)` dependencies (one query per dependency per batch),
//! serializing through each publication's serializer, and wrapping the result in the
//! dionysus-rb envelope with its key, partition key and topic(s). A row of an Avro topic is
//! planned up to its record's attributes ([`AvroRow`]): encoding it needs the schema
//! registry, which is the relay's step (`producer::avro`), not the planner's.
//!
//! [`plan_rows`] is what the relay calls; it needs a database connection but no broker, so
//! every rule of the wire format can be tested without one. It does not send anything and
//! does not touch the outbox table.

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value};

use super::publishable::partition_key;
use super::serialize::{default_serialize, SideloadError};
use crate::config::ProducerConfig;
use crate::registry::model::{ColumnIn, Dependency, ModelEntry, Publication, Record, Relation};
use crate::registry::{Registry, Tombstone, TopicFormat, TopicRole, OBSERVER_TOPIC};
use crate::wire::delay::{chain_text, DelayHeaders};
use crate::wire::envelope::{Envelope, JSON_NULL_TOMBSTONE};
use crate::wire::naming::{self, EventKind};
use crate::wire::record::{id_text, SerializeError, Sideload, Sideloads};

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
    /// Headers (name, value); only delayed copies carry any ([`DelayHeaders`]).
    pub headers: Vec<(&'static str, String)>,
    /// The message's timestamp in milliseconds since the Unix epoch (`None`: the producer's
    /// clock when sent). A message with a delayed copy and the copy carry the time the copy's
    /// due time counts from.
    pub timestamp: Option<i64>,
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
    /// The message the application composed, when the row carries one (published as is).
    pub composed: Option<Composed>,
}

/// A message composed by the application and stored in its outbox row
/// ([`Outbox::respond`](crate::outbox::Outbox::respond)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The Kafka key.
    pub key: String,
    /// The value as JSON text (`null` for a tombstone), or sealed when `encryption_key_id` is
    /// set.
    pub value: String,
    /// The key that sealed `value`.
    pub encryption_key_id: Option<String>,
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
    /// A row of an Avro topic: its record still has to be encoded with its schema (and the
    /// schema registered), which the relay does before sending.
    Avro(AvroRow),
}

/// The message of one outbox row of an Avro topic, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroRow {
    /// The topics it goes to (the topic and, or only, its genesis replica).
    pub topics: Vec<String>,
    /// The topic's record schema (full name).
    pub schema: &'static str,
    /// The topic's key config.
    pub key: crate::registry::KeyConfig,
    /// The record's primary key as text.
    pub id: String,
    /// The record's attributes as its serializer writes them (only `{<pk>: id}` for a record
    /// that is gone).
    pub attributes: Value,
    /// Whether the message is a tombstone (a `_destroyed` event): a null value with the key.
    pub tombstone: bool,
    /// The key the partition is chosen from.
    pub partition_key: Option<String>,
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
    /// Encoding the message failed.
    #[error("encoding the message")]
    Encode(#[source] serde_json::Error),
    /// The topic of a composed message is not declared (or has no genesis replica).
    #[error("`{0}` is not a declared topic nor the genesis replica of one")]
    UnknownTopic(String),
    /// `genesis_only` on a topic without a genesis replica (P-28).
    #[error("cannot execute genesis-only as there is no genesis topic for `{0}`")]
    NoGenesisReplica(String),
    /// A sealed row could not be opened (a missing or wrong key): it is not published.
    #[error(transparent)]
    Sealed(#[from] crate::seal::SealError),
    /// Loading the rows' records failed (the whole batch is retried).
    #[error("loading {model} records {ids:?}")]
    LoadRecords {
        /// Model.
        model: &'static str,
        /// Primary keys.
        ids: Vec<String>,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// Loading the records' `with(...)` sideloads failed (the whole batch is retried).
    #[error(transparent)]
    Sideloads(#[from] SideloadError),
    /// The topic is declared `format = "avro"`, but this binary is built without the
    /// `avro` feature: the row is kept (and retried) rather than published in the wrong format.
    #[error(
        "topic `{0}` is an Avro topic, but this binary is built without dionysus's `avro` feature; the row is kept \
         until a relay built with it publishes it"
    )]
    AvroTopic(String),
}

/// Plans every row of a batch: loads the records of each model in one query, the sideloads
/// of each dependency in one query, and builds the messages of each row in order. Runs in a
/// `dionysus.encode` span, timed in `dionysus_relay_encode_seconds`.
pub async fn plan_rows(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    rows: &[RowRef],
) -> Result<Vec<RowPlan>, PlanError> {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let plans = plan_rows_untimed(conn, registry, config, rows)
        .instrument(tracing::debug_span!("dionysus.encode", rows = rows.len()))
        .await;
    metrics::histogram!("dionysus_relay_encode_seconds").record(started.elapsed().as_secs_f64());
    plans
}

/// [`plan_rows`] without its span and timing.
async fn plan_rows_untimed(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    rows: &[RowRef],
) -> Result<Vec<RowPlan>, PlanError> {
    let mut ids_by_model: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.topic != OBSERVER_TOPIC && row.composed.is_none()) {
        if registry.model(&row.resource_class).is_some() {
            ids_by_model.entry(row.resource_class.as_str()).or_default().push(row.resource_id.clone());
        }
    }
    let mut loaded: Vec<Box<dyn Record>> = Vec::new();
    for (model_name, mut ids) in ids_by_model {
        let Some(model) = registry.model(model_name) else { continue };
        ids.sort_unstable();
        ids.dedup();
        loaded.extend(model.load_by_ids(conn, &ids).await.map_err(|source| PlanError::LoadRecords {
            model: model.model_name,
            ids: ids.clone(),
            source,
        })?);
    }
    let mut plans = plan_loaded_rows(conn, registry, config, rows, &loaded).await?;
    add_delayed_copies(registry, rows, &mut plans, chrono::Utc::now().timestamp_millis());
    Ok(plans)
}

/// Adds to each planned row of a publication with `delayed = …` the first delayed copy: its
/// immediate message's key, partition key and value, byte for byte, to
/// `<topic>_delay_<first delay>`, with headers naming the topic, the due time (`now_ms` plus
/// the delay) and the rest of the chain. Rows written to a genesis replica, and composed
/// messages, get none.
pub(crate) fn add_delayed_copies(registry: &Registry, rows: &[RowRef], plans: &mut [RowPlan], now_ms: i64) {
    for (row, plan) in rows.iter().zip(plans.iter_mut()) {
        let RowPlan::Publish(messages) = plan else { continue };
        if row.composed.is_some() || !matches!(registry.resolve(&row.topic), Some((_, TopicRole::Primary))) {
            continue;
        }
        let Some(publication) = registry.publications_on(&row.resource_class, &row.topic).into_iter().next() else {
            continue;
        };
        let Some((&first, rest)) = publication.delayed.split_first() else { continue };
        let Some(immediate) = messages.iter_mut().find(|message| message.topic == publication.topic) else {
            continue;
        };
        immediate.timestamp = Some(now_ms);
        let mut headers = vec![
            (DelayHeaders::TARGET, publication.topic.to_owned()),
            (DelayHeaders::DUE, first.due_after(now_ms).to_string()),
            (DelayHeaders::CHAIN, chain_text(rest)),
        ];
        if let Some(key) = &immediate.partition_key {
            headers.push((DelayHeaders::PARTITION_KEY, key.clone()));
        }
        let copy = OutgoingMessage { topic: first.topic(publication.topic), headers, ..immediate.clone() };
        messages.push(copy);
    }
}

/// The records of a batch one publication with sideloads publishes, each once.
struct Owners<'r> {
    publication: &'static Publication,
    records: Vec<&'r dyn Record>,
    /// Ids of `records`.
    ids: HashSet<&'r str>,
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
    // Each record's id is formatted once; rows find their record by borrowed keys.
    let ids: Vec<String> = loaded.iter().map(|record| record.id()).collect();
    let records: HashMap<(&str, &str), (&dyn Record, &str)> = loaded
        .iter()
        .zip(&ids)
        .map(|(record, id)| ((record.model().model_name, id.as_str()), (record.as_ref(), id.as_str())))
        .collect();

    // Sideloads, one query per (publication, dependency) over every record it publishes,
    // each record once however many rows name it.
    let mut sideloads: HashMap<usize, HashMap<String, Sideloads>> = HashMap::new();
    let mut wanted: BTreeMap<usize, Owners<'_>> = BTreeMap::new();
    for row in rows {
        let Some(&(record, id)) = records.get(&(row.resource_class.as_str(), row.resource_id.as_str())) else {
            continue;
        };
        for publication in registry.publications_on(&row.resource_class, &row.topic) {
            if publication.with.is_empty() {
                continue;
            }
            let owners = wanted.entry(publication as *const Publication as usize).or_insert_with(|| Owners {
                publication,
                records: Vec::new(),
                ids: HashSet::new(),
            });
            if owners.ids.insert(id) {
                owners.records.push(record);
            }
        }
    }
    for (address, owners) in wanted {
        sideloads.insert(address, load_sideloads(conn, owners.publication, &owners.records).await?);
    }

    // Messages per row.
    let empty = Sideloads::default();
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        if row.topic == OBSERVER_TOPIC {
            plans.push(RowPlan::DeferredObservers);
            continue;
        }
        if let Some(composed) = &row.composed {
            plans.push(match composed_messages(registry, config, row, composed) {
                Ok(messages) => RowPlan::Publish(messages),
                Err(error) => RowPlan::Fail(error),
            });
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
        let format = registry.topic(first.topic).map_or(TopicFormat::Json, |topic| topic.format);
        if cfg!(not(feature = "avro")) && format != TopicFormat::Json {
            plans.push(RowPlan::Fail(PlanError::AvroTopic(first.topic.to_owned())));
            continue;
        }
        let genesis_only = matches!(registry.resolve(&row.topic), Some((_, TopicRole::Genesis)));
        let found = records.get(&(model.model_name, row.resource_id.as_str())).copied();
        let record = found.map(|(record, _)| record);
        let data = match found {
            Some((record, id)) => {
                let address = *first as *const Publication as usize;
                let record_sideloads = sideloads.get(&address).and_then(|by_owner| by_owner.get(id)).unwrap_or(&empty);
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
        if let TopicFormat::Avro { schema, key } = format {
            plans.push(RowPlan::Avro(AvroRow {
                topics: destinations(registry, first.topic, genesis_only),
                schema,
                key,
                id: row.resource_id.clone(),
                attributes: data,
                tombstone: EventKind::classify(&row.event_name) == Some(EventKind::Destroyed),
                partition_key,
            }));
            continue;
        }
        let payload =
            match Envelope::single(row.event_name.clone(), model.model_name, Value::Array(vec![data])).encode() {
                Ok(payload) => payload,
                Err(error) => {
                    plans.push(RowPlan::Fail(PlanError::Encode(error)));
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
                headers: Vec::new(),
                timestamp: None,
            })
            .collect();
        plans.push(RowPlan::Publish(messages));
    }
    Ok(plans)
}

/// The messages of a row carrying a composed message: its value as stored (opened first when
/// sealed), to the row's topic and its genesis replica, or to the replica only when the row's
/// topic is the replica's name.
fn composed_messages(
    registry: &Registry,
    config: &ProducerConfig,
    row: &RowRef,
    composed: &Composed,
) -> Result<Vec<OutgoingMessage>, PlanError> {
    let Some((declaration, role)) = registry.resolve(&row.topic) else {
        return Err(PlanError::UnknownTopic(row.topic.clone()));
    };
    let value = match &composed.encryption_key_id {
        Some(key_id) => crate::seal::open(&config.outbox_encryption_keys, key_id, &composed.value)?,
        None => composed.value.clone().into_bytes(),
    };
    let payload = match (value.as_slice(), declaration.tombstone) {
        (JSON_NULL_TOMBSTONE, Tombstone::KafkaNull) => None,
        _ => Some(value),
    };
    Ok(destinations(registry, declaration.full_name, role == TopicRole::Genesis)
        .into_iter()
        .map(|topic| OutgoingMessage {
            topic,
            key: composed.key.clone(),
            partition_key: row.partition_key.clone(),
            payload: payload.clone(),
            headers: Vec::new(),
            timestamp: None,
        })
        .collect())
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
fn deleted_record(model: &ModelEntry, id: &str) -> Value {
    let mut object = Map::new();
    object.insert("links".to_owned(), Value::Object(Map::new()));
    object.insert(model.primary_key.to_owned(), model.id_json(id));
    Value::Object(object)
}

/// Loads the sideloads of `owners` (records of `publication`'s model) for every dependency.
pub(crate) async fn load_sideloads(
    conn: &mut AsyncPgConnection,
    publication: &Publication,
    owners: &[&dyn Record],
) -> Result<HashMap<String, Sideloads>, SideloadError> {
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
) -> Result<Vec<(String, String, Sideload)>, SideloadError> {
    let other = (dependency.model)();
    let owner_model = publication.model;
    let [plural, singular] = naming::include_names(other.model_name);
    let load_error =
        |source| SideloadError::Load { model: owner_model.model_name, dependency: other.model_name, source };
    let empty = Sideloads::default();
    let nested = |record: &dyn Record| -> Result<Value, SideloadError> { Ok(default_serialize(record, &empty)?) };
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

/// The messages of a tombstone for `record` on `publication`'s topic and its genesis replica,
/// or on the replica only when `genesis_only`: dionysus-rb's TombstonePublisher (P-30). `key`
/// and `partition_key` default to the record's key and computed partition key; passing
/// `Some` uses the value verbatim. Genesis-only on a topic without a replica is an error
/// (P-28). To publish a tombstone through the outbox, use
/// [`Outbox::tombstone`](crate::outbox::Outbox::tombstone).
pub fn tombstone_messages(
    registry: &Registry,
    config: &ProducerConfig,
    publication: &Publication,
    record: &dyn Record,
    key: Option<String>,
    partition_key_override: Option<Option<String>>,
    genesis_only: bool,
) -> Result<Vec<OutgoingMessage>, PlanError> {
    let replicated = registry.topic(publication.topic).is_some_and(|topic| topic.genesis_replica);
    if genesis_only && !replicated {
        return Err(PlanError::NoGenesisReplica(publication.topic.to_owned()));
    }
    let key = key.unwrap_or_else(|| naming::message_key(record.model().model_name, record.id()));
    let partition_key =
        partition_key_override.unwrap_or_else(|| self::partition_key(publication, record, registry, config));
    let payload = match registry.topic(publication.topic).map(|topic| topic.tombstone) {
        Some(Tombstone::KafkaNull) => None,
        _ => Some(JSON_NULL_TOMBSTONE.to_vec()),
    };
    Ok(destinations(registry, publication.topic, genesis_only)
        .into_iter()
        .map(|topic| OutgoingMessage {
            topic,
            key: key.clone(),
            partition_key: partition_key.clone(),
            payload: payload.clone(),
            headers: Vec::new(),
            timestamp: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    static ITEMS: crate::registry::TopicDeclaration = crate::registry::TopicDeclaration {
        full_name: "items",
        name: "items",
        genesis_replica: true,
        ..crate::registry::TopicDeclaration::INVALID
    };
    static ITEM: ModelEntry = ModelEntry { model_name: "Item", rust_name: "Item", ..ModelEntry::INVALID };
    static DELAYED: Publication = Publication {
        model: &ITEM,
        topic: "items",
        partition_key: crate::registry::model::PartitionKeySource::Inherit,
        with: &[],
        observe: &[],
        serialize: |_, _| Ok(Value::Null),
        schema: None,
        delayed: &[crate::wire::delay::Delay::clamped(2), crate::wire::delay::Delay::clamped(60)],
        location: "test",
    };

    fn row(topic: &str, composed: bool) -> RowRef {
        RowRef {
            id: 1,
            resource_class: "Item".to_owned(),
            resource_id: "1".to_owned(),
            event_name: "item_updated".to_owned(),
            topic: topic.to_owned(),
            partition_key: Some("7".to_owned()),
            composed: composed.then(|| Composed {
                key: "Item:1".to_owned(),
                value: "{}".to_owned(),
                encryption_key_id: None,
            }),
        }
    }

    fn message(topic: &str) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.to_owned(),
            key: "Item:1".to_owned(),
            partition_key: Some("7".to_owned()),
            payload: Some(b"{}".to_vec()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    #[test]
    fn a_delayed_publication_adds_its_first_copy_to_the_rows_messages() {
        let registry = Registry::new([&ITEMS], []).with_publications([&DELAYED]);
        let rows = [row("items", false), row("items_genesis", false), row("items", true)];
        let mut plans = vec![
            RowPlan::Publish(vec![message("items"), message("items_genesis")]),
            RowPlan::Publish(vec![message("items_genesis")]),
            RowPlan::Publish(vec![message("items"), message("items_genesis")]),
        ];
        add_delayed_copies(&registry, &rows, &mut plans, 10_000);
        let RowPlan::Publish(messages) = &plans[0] else { panic!("{:?}", plans[0]) };
        assert_eq!(messages.len(), 3);
        let copy = &messages[2];
        assert_eq!(copy.topic, "items_delay_2s");
        assert_eq!((copy.key.as_str(), copy.payload.as_deref()), ("Item:1", Some(&b"{}"[..])));
        assert_eq!(
            copy.headers,
            [
                (DelayHeaders::TARGET, "items".to_owned()),
                (DelayHeaders::DUE, "12000".to_owned()),
                (DelayHeaders::CHAIN, "1m".to_owned()),
                (DelayHeaders::PARTITION_KEY, "7".to_owned()),
            ]
        );
        assert_eq!((messages[0].timestamp, copy.timestamp), (Some(10_000), Some(10_000)));
        // A genesis-only row and a composed message get no copy.
        assert!(matches!(&plans[1], RowPlan::Publish(messages) if messages.len() == 1));
        assert!(matches!(&plans[2], RowPlan::Publish(messages) if messages.len() == 2));
    }

    #[test]
    fn deleted_records_put_links_first() {
        // Vector p22/W-11: `{"links":{},"id":10}` with the id cast to the key's type.
        let model = ModelEntry {
            model_name: "ExampleResource",
            table: "example_resources",
            primary_key: "id",
            id_kind: crate::registry::model::IdKind::Integer,
            attributes: &["id"],
            soft_delete: crate::registry::model::SoftDelete::Configured,
            publish_updates_after_soft_delete: false,
            type_id: std::any::TypeId::of::<()>,
            publications: || &[],
            load: |_, _, _| Box::pin(async { Ok(Vec::new()) }),
            rust_name: "ExampleResource",
        };
        assert_eq!(serde_json::to_string(&deleted_record(&model, "10")).unwrap(), r#"{"links":{},"id":10}"#);
    }
}
