//! Publishing a message the application composes, through the outbox and in the application's
//! transaction: dionysus-rb's responder call (P-28) with its batch options (`genesis_only`,
//! `serialize: false`, W-12) and its TombstonePublisher (P-30).
//!
//! ```no_run
//! # use diesel::prelude::*;
//! # diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }
//! # #[derive(Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
//! # #[diesel(table_name = rentals)]
//! # #[publish(topic = "v3_rentals")]
//! # struct Rental { id: i64, account_id: i64 }
//! use dionysus::respond::{Respond, TombstoneOptions};
//!
//! async fn publish(
//!     tx: &mut diesel_async::AsyncPgConnection,
//!     rentals: &[Rental],
//!     gone: &Rental,
//! ) -> dionysus::Result<()> {
//!     let outbox = dionysus::outbox::Outbox::global()?;
//!     // One message with two events; a second one with the records' own JSON.
//!     let both = Respond::new().entry("rental_updated", rentals).entry("rental_reviewed", &rentals[..1]);
//!     outbox.respond(tx, "v3_rentals", both).await?;
//!     outbox.respond(tx, "v3_rentals", Respond::new().entry("rental_updated", rentals).raw()).await?;
//!     // A tombstone with the record's key and computed partition key.
//!     outbox.tombstone(tx, "v3_rentals", gone, TombstoneOptions::default()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The message is built when it is written — records serialized (with their `with(...)`
//! sideloads, loaded in the caller's transaction) or taken as their own JSON — and stored in
//! the row, so the relay publishes exactly it, in order with the other rows of its partition
//! key. The gem's rules hold: an entry without records makes the whole call publish nothing;
//! `genesis_only` on a topic without a genesis replica is an error before anything is
//! written; a message goes to the topic (unless genesis-only) and to its genesis replica.
//! Every composed message is announced as a `dionysus.respond` tracing event (target
//! `dionysus::respond`; fields `topic_name`, `key`, `partition_key`, `payload`) per
//! destination topic, when it is written, as the gem's event bus announces it.
//!
//! This module composes and stores; it does not send (the relay does).

use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value};

use super::outbox::{NewOutboxRow, Outbox, OutboxError};
use super::plan;
use super::publishable::{partition_key, Publishable};
use super::serialize::default_serialize;
use crate::registry::model::Record;
use crate::registry::TopicRole;
use crate::wire::envelope::{Envelope, Event};
use crate::wire::naming;
use crate::wire::record::Sideloads;

/// A message to compose: `[event, records]` entries and the responder options.
#[derive(Default)]
#[must_use = "a message does nothing until it is written with `respond`"]
pub struct Respond<'r> {
    entries: Vec<(String, Vec<&'r dyn Record>)>,
    genesis_only: bool,
    raw: bool,
    key: Option<String>,
    partition_key: Option<Option<String>>,
}

impl std::fmt::Debug for Respond<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<(&str, Vec<String>)> = self
            .entries
            .iter()
            .map(|(event, records)| (event.as_str(), records.iter().map(|record| record.id()).collect()))
            .collect();
        f.debug_struct("Respond")
            .field("entries", &entries)
            .field("genesis_only", &self.genesis_only)
            .field("raw", &self.raw)
            .field("key", &self.key)
            .field("partition_key", &self.partition_key)
            .finish()
    }
}

impl<'r> Respond<'r> {
    /// An empty message (which publishes nothing until it has an entry).
    pub fn new() -> Respond<'r> {
        Respond::default()
    }

    /// Adds an `[event, records]` entry: one element of the message's `"message"` array,
    /// with the records' model name and the records in `data`.
    pub fn entry<T: Publishable>(mut self, event: impl Into<String>, records: &'r [T]) -> Respond<'r> {
        self.entries.push((event.into(), records.iter().map(|record| record as &dyn Record).collect()));
        self
    }

    /// Publishes to the topic's genesis replica only (`genesis_only: true`); the topic must
    /// have one.
    pub fn genesis_only(mut self) -> Respond<'r> {
        self.genesis_only = true;
        self
    }

    /// Puts each record's own JSON in `data`, without a serializer and without dependencies
    /// (`serialize: false`, W-12).
    pub fn raw(mut self) -> Respond<'r> {
        self.raw = true;
        self
    }

    /// The Kafka key (default: `"<ModelName>:<id>"` of the first record).
    pub fn key(mut self, key: impl Into<String>) -> Respond<'r> {
        self.key = Some(key.into());
        self
    }

    /// The partition key, verbatim; `None` sends none (default: the first record's partition
    /// key on the topic, P-26).
    pub fn partition_key(mut self, partition_key: Option<String>) -> Respond<'r> {
        self.partition_key = Some(partition_key);
        self
    }
}

/// Options of [`Outbox::tombstone`]: an explicitly given key or partition key is used as
/// given (even `None` for the partition key); missing ones are computed (P-30).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TombstoneOptions {
    /// The Kafka key (default: `"<ModelName>:<id>"`).
    pub key: Option<String>,
    /// The partition key, verbatim (default: computed from the record, P-26).
    pub partition_key: Option<Option<String>>,
    /// Publish to the genesis replica only.
    pub genesis_only: bool,
}

/// Why a composed message could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The topic is not declared.
    #[error("`{topic}` is not a declared topic; declared: {known}")]
    UnknownTopic {
        /// The name given.
        topic: String,
        /// The declared topics.
        known: String,
    },
    /// `genesis_only` on a topic without a genesis replica (P-28).
    #[error("cannot execute genesis-only as there is no genesis topic for `{topic}`")]
    NoGenesisReplica {
        /// The topic.
        topic: String,
    },
    /// A record could not be serialized.
    #[error(transparent)]
    Serialize(#[from] crate::wire::record::SerializeError),
    /// A record's own JSON could not be built.
    #[error("building the JSON of {model} {id}")]
    Json {
        /// Model.
        model: &'static str,
        /// Record id.
        id: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The message could not be encoded.
    #[error("encoding the message for `{topic}`")]
    Encode {
        /// The topic.
        topic: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Loading the records' `with(...)` sideloads failed.
    #[error(transparent)]
    Sideloads(#[from] crate::producer::serialize::SideloadError),
    /// Writing the row failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl Outbox<'_> {
    /// Writes one composed message to the outbox of `topic` (a declared topic's name), in the
    /// caller's transaction; returns the rows written (1, or 0 when an entry has no records).
    pub async fn respond(
        &self,
        conn: &mut AsyncPgConnection,
        topic: &str,
        message: Respond<'_>,
    ) -> Result<usize, RespondError> {
        let primary = self.destination(topic, message.genesis_only)?;
        if message.entries.is_empty() || message.entries.iter().any(|(_, records)| records.is_empty()) {
            return Ok(0);
        }
        if !self.config.transactional_outbox_enabled {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(message.entries.len());
        for (event, records) in &message.entries {
            let data = if message.raw {
                raw_records(records)?
            } else {
                self.serialized_records(conn, primary, records).await?
            };
            events.push(Event { event: event.clone(), model_name: records[0].model().model_name.to_owned(), data });
        }
        let value = Envelope { message: events }
            .encode()
            .map_err(|source| RespondError::Encode { topic: topic.to_owned(), source })?;
        let value = String::from_utf8_lossy(&value).into_owned();
        let (first_event, first_records) = &message.entries[0];
        let first = first_records[0];
        let key = message.key.unwrap_or_else(|| naming::message_key(first.model().model_name, first.id()));
        let partition_key = match message.partition_key {
            Some(given) => given,
            None => self.computed_partition_key(primary, first),
        };
        self.write_composed(conn, topic, primary, message.genesis_only, first, first_event, key, partition_key, value)
            .await
    }

    /// Writes a tombstone for `record` to the outbox of `topic` (P-30): the JSON text `null`
    /// (or a Kafka null, per the topic's `tombstone` setting), with the record's key and
    /// partition key unless given.
    pub async fn tombstone<T: Publishable>(
        &self,
        conn: &mut AsyncPgConnection,
        topic: &str,
        record: &T,
        options: TombstoneOptions,
    ) -> Result<usize, RespondError> {
        let primary = self.destination(topic, options.genesis_only)?;
        if !self.config.transactional_outbox_enabled {
            return Ok(0);
        }
        let record: &dyn Record = record;
        let key = options.key.unwrap_or_else(|| naming::message_key(record.model().model_name, record.id()));
        let partition_key = match options.partition_key {
            Some(given) => given,
            None => self.computed_partition_key(primary, record),
        };
        let event = naming::event_name(record.model().model_name, naming::EventKind::Destroyed);
        self.write_composed(
            conn,
            topic,
            primary,
            options.genesis_only,
            record,
            &event,
            key,
            partition_key,
            "null".into(),
        )
        .await
    }

    /// The declared (primary) topic a composed message is for, checked before anything is
    /// built (P-28: genesis-only needs a genesis replica).
    fn destination(&self, topic: &str, genesis_only: bool) -> Result<&'static str, RespondError> {
        let Some((declaration, role)) = self.registry.resolve(topic) else {
            return Err(RespondError::UnknownTopic {
                topic: topic.to_owned(),
                known: self.registry.topic_names().join(", "),
            });
        };
        if (genesis_only || role == TopicRole::Genesis) && !declaration.genesis_replica {
            return Err(RespondError::NoGenesisReplica { topic: declaration.full_name.to_owned() });
        }
        Ok(declaration.full_name)
    }

    /// The records serialized as the topic publishes their model (its serializer and
    /// `with(...)` sideloads), or with the default serializer and no dependencies when the
    /// model is not published there (P-28).
    async fn serialized_records(
        &self,
        conn: &mut AsyncPgConnection,
        topic: &str,
        records: &[&dyn Record],
    ) -> Result<Value, RespondError> {
        let publication = self.registry.publications_on(records[0].model().model_name, topic).first().copied();
        let Some(publication) = publication else {
            let empty = Sideloads::default();
            let data = records.iter().map(|record| default_serialize(*record, &empty)).collect::<Result<_, _>>()?;
            return Ok(Value::Array(data));
        };
        let mut sideloads = plan::load_sideloads(conn, publication, records).await?;
        let mut data = Vec::with_capacity(records.len());
        for record in records {
            let own = sideloads.remove(&record.id()).unwrap_or_default();
            data.push((publication.serialize)(*record, &own)?);
        }
        Ok(Value::Array(data))
    }

    fn computed_partition_key(&self, topic: &str, record: &dyn Record) -> Option<String> {
        let publication = self.registry.publications_on(record.model().model_name, topic).first().copied()?;
        partition_key(publication, record, self.registry, self.config)
    }

    #[allow(clippy::too_many_arguments, reason = "the columns of one composed row, named at the two call sites")]
    async fn write_composed(
        &self,
        conn: &mut AsyncPgConnection,
        topic: &str,
        primary: &str,
        genesis_only: bool,
        first: &dyn Record,
        event: &str,
        key: String,
        partition_key: Option<String>,
        value: String,
    ) -> Result<usize, RespondError> {
        let stored_topic = if genesis_only { crate::registry::genesis_topic_name(primary) } else { topic.to_owned() };
        let mut destinations = Vec::with_capacity(2);
        if !genesis_only && self.registry.resolve(topic).is_some_and(|(_, role)| role == TopicRole::Primary) {
            destinations.push(primary.to_owned());
        }
        if let Some(genesis) = self.registry.topic(primary).and_then(|declaration| declaration.genesis_name()) {
            destinations.push(genesis);
        }
        for destination in &destinations {
            tracing::info!(
                target: "dionysus::respond",
                topic_name = %destination,
                key = %key,
                partition_key = partition_key.as_deref(),
                payload = %value,
                "dionysus.respond"
            );
        }
        let row = NewOutboxRow {
            resource_class: first.model().model_name.to_owned(),
            resource_id: first.id(),
            event_name: event.to_owned(),
            topic: stored_topic,
            partition_key,
            changeset: Value::Object(Map::new()),
            message: Some(value),
            message_key: Some(key),
            encryption_key_id: None,
        };
        Ok(self.insert(conn, vec![row]).await?)
    }
}

/// Each record's own JSON (W-12).
fn raw_records(records: &[&dyn Record]) -> Result<Value, RespondError> {
    records
        .iter()
        .map(|record| {
            record.to_json().map_err(|source| RespondError::Json {
                model: record.model().model_name,
                id: record.id(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
