//! The consumer's side of Avro topics: before a batch is applied, each message of an Avro
//! topic is read with the configured schema backend (the writer's schema fetched by its id
//! and resolved against the local reader schema) and restated as the dionysus envelope of
//! one event, so the replicas, the handlers, the checkpoint log and the event bus treat it
//! as any other message: a record is `<model>_updated` (an upsert by its key, guarded by its
//! `updated_at`), a tombstone is `<model>_destroyed` of the record its key names.
//!
//! A message that does not decode is dead-lettered (`undecodable_avro`) as it was read,
//! never as restated: [`Translated::original`] gives every dead letter its original bytes
//! back. A registry that cannot be reached fails the whole translation, and the partition
//! waits and retries: nothing is dead-lettered for our fault.
//!
//! Which model a topic's records are: the model of the replicas declared on it, else the
//! schema's record name (`com.example.Rental` → `Rental`).

use std::collections::HashMap;

use serde_json::Value;

use super::batch::{rejected_payload, DeadLetter, InboundMessage};
use crate::avro::format::{AvroError, AvroFormat};
use crate::config::SchemaConfig;
use crate::registry::{KeyConfig, Registry, TopicFormat};
use crate::telemetry::Report;
use crate::wire::envelope::Envelope;
use crate::wire::naming::{event_name, EventKind};

/// The consumed Avro topics and how to read them.
pub(crate) struct AvroTopics {
    format: AvroFormat,
    topics: HashMap<String, AvroTopic>,
}

struct AvroTopic {
    schema: &'static str,
    key: KeyConfig,
    model: String,
}

/// A batch as the consumer applies it, and the messages it restated.
pub(crate) struct Translated {
    /// The messages, those of Avro topics as envelopes.
    pub(crate) messages: Vec<InboundMessage>,
    /// The original of each restated message, by offset.
    originals: HashMap<i64, InboundMessage>,
}

impl Translated {
    /// `dead` with its original message.
    pub(crate) fn original(&self, dead: &DeadLetter) -> DeadLetter {
        match self.originals.get(&dead.message.offset) {
            Some(original) => DeadLetter { message: original.clone(), ..dead.clone() },
            None => dead.clone(),
        }
    }
}

impl AvroTopics {
    /// The Avro topics among `topics`, `None` when there are none.
    pub(crate) fn new(
        config: &SchemaConfig,
        registry: &Registry,
        replica_models: &[(&str, &'static str)],
        topics: &[String],
    ) -> Result<Option<AvroTopics>, AvroError> {
        let mut avro = HashMap::new();
        for topic in topics {
            let Some(TopicFormat::Avro { schema, key }) = registry.topic(topic).map(|declaration| declaration.format)
            else {
                continue;
            };
            let model = replica_models.iter().find(|(replica_topic, _)| replica_topic == topic).map_or_else(
                || schema.rsplit('.').next().unwrap_or(schema).to_owned(),
                |(_, model)| (*model).to_owned(),
            );
            avro.insert(topic.clone(), AvroTopic { schema, key, model });
        }
        if avro.is_empty() {
            return Ok(None);
        }
        Ok(Some(AvroTopics { format: AvroFormat::new(config)?, topics: avro }))
    }

    /// The batch with its Avro messages restated; an error only when the registry cannot be
    /// reached (the batch waits).
    pub(crate) async fn translate(&self, messages: &[InboundMessage]) -> Result<Translated, AvroError> {
        let mut translated = Vec::with_capacity(messages.len());
        let mut originals = HashMap::new();
        for message in messages {
            let Some(topic) = self.topics.get(&message.topic) else {
                translated.push(message.clone());
                continue;
            };
            let payload = match self.envelope(topic, message).await {
                Ok(payload) => payload,
                Err(error) if error.is_unreachable() => return Err(error),
                Err(error) => rejected_payload(&Report(&error).to_string()),
            };
            translated.push(InboundMessage { payload: Some(payload), ..message.clone() });
            originals.insert(message.offset, message.clone());
        }
        Ok(Translated { messages: translated, originals })
    }

    async fn envelope(&self, topic: &AvroTopic, message: &InboundMessage) -> Result<Vec<u8>, AvroError> {
        let (kind, record) = match &message.payload {
            Some(payload) => (EventKind::Updated, self.format.decode_value(topic.schema, payload).await?),
            None => {
                let key = self.format.decode_key(topic.schema, topic.key, "id", message.key.as_deref()).await?;
                (EventKind::Destroyed, key)
            }
        };
        let envelope =
            Envelope::single(event_name(&topic.model, kind), topic.model.clone(), Value::Array(vec![record]));
        envelope.encode().map_err(|error| AvroError::NotJson { reason: error.to_string() })
    }
}
