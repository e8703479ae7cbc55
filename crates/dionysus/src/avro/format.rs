//! The bytes of an Avro topic's messages under the configured schema backend, both ways:
//! [`AvroFormat::encode_value`] / [`AvroFormat::encode_key`] for the relay,
//! [`AvroFormat::decode_value`] / [`AvroFormat::decode_key`] for the consumer.
//!
//! * `registry`: the datum of the local schema framed with the id the registry gives that
//!   schema under the topic's subject (registered once, then cached); read back with the
//!   writer's schema fetched by its id (cached) resolved against the local one;
//! * `local`: the bare datum, written and read with the local schema;
//! * `validation`: the record as a JSON object, checked against the schema both ways.
//!
//! A plain key is the record's primary key as text in every backend. What is done with an
//! error (a row retried, a message dead-lettered, a partition waiting) is the caller's:
//! [`AvroError::is_unreachable`] tells the registry's absence (our fault) from the message's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::Schema;
use serde_json::{json, Map, Value};

use super::codec::{self, AutoFields, CodecError};
use super::framing::{self, FramingError};
use super::registry::{RegistryClient, RegistryError};
use super::schemas::{LocalSchemas, SchemaError};
use super::{key_subject, value_subject};
use crate::config::{SchemaBackend, SchemaConfig};
use crate::registry::KeyConfig;
use crate::wire::record::kind;

/// Writing or reading an Avro message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AvroError {
    /// The schema registry failed or refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A local schema is missing or does not parse.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The record does not fit the schema, or the bytes do not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The message is not framed as the registry's serializers frame it.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A `validation` message is not a JSON object.
    #[error("the message is not a JSON object: {reason}")]
    NotJson {
        /// What the parser said.
        reason: String,
    },
    /// The message has no key, but a tombstone is read by its key.
    #[error("the tombstone has no key, so the record it deletes is unknown (key config `{key:?}`)")]
    NoKey {
        /// The topic's key config.
        key: KeyConfig,
    },
}

impl AvroError {
    /// Whether the schema registry could not be reached: our fault, worth waiting for,
    /// never the message's.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AvroError::Registry(error) if error.is_unreachable())
    }
}

/// The configured backend with its registry client and the local schemas.
#[derive(Debug)]
pub struct AvroFormat {
    backend: SchemaBackend,
    client: Option<RegistryClient>,
    local: &'static LocalSchemas,
    /// Parsed key schemas of `key(field = …)` topics, by value schema and field.
    field_keys: Mutex<HashMap<(String, String), Arc<KeySchema>>>,
}

/// A parsed key schema and its text.
type KeySchema = (Schema, String);

impl AvroFormat {
    /// The format of `config` over the schemas this program embedded.
    pub fn new(config: &SchemaConfig) -> Result<AvroFormat, AvroError> {
        AvroFormat::with_schemas(config, LocalSchemas::global()?)
    }

    /// The format of `config` over `local`.
    pub fn with_schemas(config: &SchemaConfig, local: &'static LocalSchemas) -> Result<AvroFormat, AvroError> {
        let client = match config.backend {
            SchemaBackend::Registry => Some(RegistryClient::new(&config.registry_url)?),
            _ => None,
        };
        Ok(AvroFormat { backend: config.backend, client, local, field_keys: Mutex::default() })
    }

    /// The same format with another registry request timeout.
    #[must_use]
    pub fn with_registry_timeout(mut self, timeout: std::time::Duration) -> AvroFormat {
        self.client = self.client.map(|client| client.with_timeout(timeout));
        self
    }

    /// The backend.
    pub fn backend(&self) -> SchemaBackend {
        self.backend
    }

    /// The value of a message of `topic`: `attributes` (a record's JSON) as a record of
    /// `schema`, the auto-added fields filled.
    pub async fn encode_value(
        &self,
        topic: &str,
        schema: &str,
        attributes: &Value,
        auto: &AutoFields,
    ) -> Result<Vec<u8>, AvroError> {
        let parsed = self.local.get(schema)?;
        match (&self.client, self.backend) {
            (_, SchemaBackend::Validation) => {
                let record = codec::to_json(parsed, &codec::to_avro(parsed, attributes, auto)?);
                Ok(record.to_string().into_bytes())
            }
            (Some(client), _) => {
                let datum = codec::encode(parsed, attributes, auto)?;
                let id = client.register(&value_subject(topic), self.local.definition(schema)?).await?;
                Ok(framing::frame(id, &datum))
            }
            (None, _) => Ok(codec::encode(parsed, attributes, auto)?),
        }
    }

    /// The key of a message of `topic` whose value schema is `schema`, for the record with
    /// primary key `id` and `attributes`: `None` for `key(none)`.
    pub async fn encode_key(
        &self,
        topic: &str,
        schema: &str,
        key: KeyConfig,
        id: &str,
        attributes: &Value,
    ) -> Result<Option<Vec<u8>>, AvroError> {
        let (key_schema, definition, record) = match key {
            KeyConfig::None => return Ok(None),
            KeyConfig::Plain => return Ok(Some(id.as_bytes().to_vec())),
            KeyConfig::Field(field) => {
                let parsed = self.field_key(schema, field)?;
                let mut record = Map::new();
                record.insert(field.to_owned(), attributes.get(field).cloned().unwrap_or(Value::Null));
                let (schema, definition) = (parsed.0.clone(), parsed.1.clone());
                (schema, definition, Value::Object(record))
            }
            KeyConfig::Schema(name) => {
                (self.local.get(name)?.clone(), self.local.definition(name)?.to_owned(), attributes.clone())
            }
        };
        let none = AutoFields::default();
        Ok(Some(match (&self.client, self.backend) {
            (_, SchemaBackend::Validation) => {
                codec::to_json(&key_schema, &codec::to_avro(&key_schema, &record, &none)?).to_string().into_bytes()
            }
            (Some(client), _) => {
                let datum = codec::encode(&key_schema, &record, &none)?;
                let id = client.register(&key_subject(topic), &definition).await?;
                framing::frame(id, &datum)
            }
            (None, _) => codec::encode(&key_schema, &record, &none)?,
        }))
    }

    /// The record of a message's value as JSON attributes, read with `schema` (the local
    /// reader's schema; a registry message is written with the schema its id names).
    pub async fn decode_value(&self, schema: &str, bytes: &[u8]) -> Result<Value, AvroError> {
        let reader = self.local.get(schema)?;
        self.decode_with(reader, bytes).await
    }

    /// The fields a message key names, as a JSON object (`{"id": …}` for a plain key).
    pub async fn decode_key(
        &self,
        schema: &str,
        key: KeyConfig,
        primary_key: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Value, AvroError> {
        let Some(bytes) = bytes else { return Err(AvroError::NoKey { key }) };
        match key {
            KeyConfig::None => Err(AvroError::NoKey { key }),
            KeyConfig::Plain => {
                let text = String::from_utf8_lossy(bytes);
                let id = match text.parse::<i64>() {
                    Ok(number) if number.to_string() == text => json!(number),
                    _ => json!(text),
                };
                Ok(json!({ primary_key: id }))
            }
            KeyConfig::Field(field) => {
                let parsed = self.field_key(schema, field)?;
                self.decode_with(&parsed.0, bytes).await
            }
            KeyConfig::Schema(name) => self.decode_with(self.local.get(name)?, bytes).await,
        }
    }

    async fn decode_with(&self, reader: &Schema, bytes: &[u8]) -> Result<Value, AvroError> {
        match (&self.client, self.backend) {
            (_, SchemaBackend::Validation) => {
                let json: Value =
                    serde_json::from_slice(bytes).map_err(|error| AvroError::NotJson { reason: error.to_string() })?;
                if !json.is_object() {
                    return Err(AvroError::NotJson { reason: format!("found {}", kind(&json)) });
                }
                Ok(codec::to_json(reader, &codec::to_avro(reader, &json, &AutoFields::default())?))
            }
            (Some(client), _) => {
                let (id, datum) = framing::unframe(bytes)?;
                let writer = client.schema_by_id(id).await?;
                Ok(codec::decode(&writer, reader, datum)?)
            }
            (None, _) => Ok(codec::decode(reader, reader, bytes)?),
        }
    }

    fn field_key(&self, schema: &str, field: &str) -> Result<Arc<KeySchema>, AvroError> {
        let cache_key = (schema.to_owned(), field.to_owned());
        if let Some(found) = self.field_keys.lock().unwrap_or_else(PoisonError::into_inner).get(&cache_key) {
            return Ok(Arc::clone(found));
        }
        let definition = self.local.field_key_definition(schema, field)?;
        let parsed = Schema::parse_str(&definition)
            .map_err(|error| SchemaError::Invalid { names: format!("{schema}_key"), reason: error.to_string() })?;
        let entry = Arc::new((parsed, definition));
        self.field_keys.lock().unwrap_or_else(PoisonError::into_inner).insert(cache_key, Arc::clone(&entry));
        Ok(entry)
    }
}

/// The message id and time of an auto-filled message.
pub fn auto_fields() -> AutoFields {
    AutoFields {
        message_id: uuid::Builder::from_random_bytes(rand::random()).into_uuid().hyphenated().to_string(),
        timestamp: chrono::Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENTAL: &str = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
        {"name": "id", "type": "long"}, {"name": "name", "type": "string"},
        {"name": "message_id", "type": ["null", "string"], "default": null}]}"#;

    fn format(backend: SchemaBackend) -> AvroFormat {
        static LOCAL: std::sync::OnceLock<LocalSchemas> = std::sync::OnceLock::new();
        let local = LOCAL.get_or_init(|| LocalSchemas::parse([("com.example.Rental", RENTAL)]).unwrap());
        let config = SchemaConfig { backend, ..SchemaConfig::default() };
        AvroFormat::with_schemas(&config, local).unwrap()
    }

    #[tokio::test]
    async fn local_records_and_field_keys_round_trip_as_bare_datums() {
        let format = format(SchemaBackend::Local);
        let attributes = json!({"id": 7, "name": "Villa", "ignored": true});
        let value = format.encode_value("t", "com.example.Rental", &attributes, &auto_fields()).await.unwrap();
        let back = format.decode_value("com.example.Rental", &value).await.unwrap();
        assert_eq!((back["id"].clone(), back["name"].clone()), (json!(7), json!("Villa")));
        assert!(back["message_id"].is_string(), "the auto-added field is filled: {back}");
        let key = format.encode_key("t", "com.example.Rental", KeyConfig::Field("id"), "7", &attributes).await.unwrap();
        let key_back =
            format.decode_key("com.example.Rental", KeyConfig::Field("id"), "id", key.as_deref()).await.unwrap();
        assert_eq!(key_back, json!({"id": 7}));
    }

    #[tokio::test]
    async fn plain_keys_are_the_id_as_text_and_none_has_no_key() {
        let format = format(SchemaBackend::Local);
        let attributes = json!({"id": 7});
        let plain = format.encode_key("t", "com.example.Rental", KeyConfig::Plain, "7", &attributes).await.unwrap();
        assert_eq!(plain.as_deref(), Some(&b"7"[..]));
        let read = format.decode_key("com.example.Rental", KeyConfig::Plain, "id", Some(b"7")).await.unwrap();
        assert_eq!(read, json!({"id": 7}));
        assert_eq!(
            format.encode_key("t", "com.example.Rental", KeyConfig::None, "7", &attributes).await.unwrap(),
            None
        );
        let error = format.decode_key("com.example.Rental", KeyConfig::None, "id", None).await.unwrap_err();
        assert!(matches!(error, AvroError::NoKey { .. }));
    }

    #[tokio::test]
    async fn validation_writes_checked_json_and_rejects_what_does_not_fit() {
        let format = format(SchemaBackend::Validation);
        let value = format
            .encode_value("t", "com.example.Rental", &json!({"id": "7", "name": "Villa"}), &AutoFields::default())
            .await
            .unwrap();
        let written: Value = serde_json::from_slice(&value).unwrap();
        assert_eq!((written["id"].clone(), written["name"].clone()), (json!(7), json!("Villa")));
        let invalid = format
            .encode_value("t", "com.example.Rental", &json!({"id": 7}), &AutoFields::default())
            .await
            .unwrap_err();
        assert!(matches!(invalid, AvroError::Codec(CodecError::MissingField { .. })), "{invalid}");
        let unreadable = format.decode_value("com.example.Rental", b"[1]").await.unwrap_err();
        assert!(matches!(unreadable, AvroError::NotJson { .. }));
        assert!(!unreadable.is_unreachable());
    }
}
