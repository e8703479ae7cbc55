//! Avro topics (feature `avro`): records encoded with their schema, one per message, in the
//! deimos style, next to the dionysus-rb JSON envelope of the other topics. The pieces:
//!
//! * [`schemas`]: the schemas the declarations embedded at compile time (the macros read
//!   them from the crate's `schemas/` directory and check the models against them);
//! * [`codec`]: a record's JSON attributes to Avro and back, with the coercions and the
//!   auto-added fields, and schema resolution between a writer's and a reader's schema;
//! * [`framing`]: the registry framing (magic byte and schema id);
//! * [`registry`]: a client of the Confluent schema registry REST API, with its id cache;
//! * [`format`](mod@format): a message's value and key bytes under the configured schema backend.
//!
//! What goes on which topic, and when, stays the relay's and the consumer's business.

pub mod codec;
pub mod format;
pub mod framing;
pub mod registry;
pub mod schemas;

/// A parsed Avro schema (the `apache-avro` crate's), as the codec takes it.
pub use apache_avro::Schema;

/// Fields the producer fills itself when a record schema has them and the record does not
/// (deimos' auto-added fields): a unique message id and the time the message was produced.
pub const AUTO_FIELDS: [&str; 2] = ["message_id", "timestamp"];

/// The subject of a topic's value schema (the registry's topic-name strategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The subject of a topic's key schema.
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// One schema a topic's messages are written with, and the registry subject it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSchema {
    /// The topic.
    pub topic: String,
    /// `<topic>-value` or `<topic>-key`.
    pub subject: String,
    /// The schema's full name (a generated key schema: `<Record>_key`).
    pub schema: String,
    /// The schema's JSON text.
    pub definition: String,
}

/// The value schema of every declared Avro topic, and its key schema when its key config
/// has one (`key(field = …)` or `key(schema = …)`), in topic order.
pub fn topic_schemas(
    registry: &crate::registry::Registry,
    local: &schemas::LocalSchemas,
) -> Result<Vec<SubjectSchema>, schemas::SchemaError> {
    use crate::registry::{KeyConfig, TopicFormat};

    let mut subjects = Vec::new();
    for topic in registry.topics() {
        let TopicFormat::Avro { schema, key } = topic.format else { continue };
        subjects.push(SubjectSchema {
            topic: topic.full_name.to_owned(),
            subject: value_subject(topic.full_name),
            schema: schema.to_owned(),
            definition: local.definition(schema)?.to_owned(),
        });
        let key = match key {
            KeyConfig::None | KeyConfig::Plain => None,
            KeyConfig::Field(field) => Some((format!("{schema}_key"), local.field_key_definition(schema, field)?)),
            KeyConfig::Schema(name) => Some((name.to_owned(), local.definition(name)?.to_owned())),
        };
        if let Some((schema, definition)) = key {
            subjects.push(SubjectSchema {
                topic: topic.full_name.to_owned(),
                subject: key_subject(topic.full_name),
                schema,
                definition,
            });
        }
    }
    Ok(subjects)
}
