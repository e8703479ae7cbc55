//! The relay's (and genesis') side of Avro topics: a planned [`AvroRow`] encoded into the
//! messages of its destinations under the configured schema backend — the value (or a null
//! for a tombstone), the key per the topic's key config, the auto-added fields of one
//! message filled once for all its destinations.
//!
//! A registry that cannot be reached fails the row as `SchemaRegistryUnavailable`, which the
//! outbox retries with backoff and never parks (it is not the row's fault); a record that
//! does not fit its schema fails it as `AvroEncodeError`, retried and parked like any
//! failure of a row. The bytes themselves are `crate::avro::format`'s business.

use crate::avro::format::{auto_fields, AvroError, AvroFormat};
use crate::config::SchemaConfig;
use crate::producer::plan::AvroRow;
use crate::producer::sender::{Failure, RawMessage, REGISTRY_UNAVAILABLE};
use crate::telemetry::Report;

/// The `error_class` of a row whose record could not be encoded with its schema.
pub(crate) const ENCODE_ERROR: &str = "AvroEncodeError";

/// The configured format, or why it could not be set up (reported on each Avro row).
pub(crate) struct Encoder(Result<AvroFormat, String>);

impl Encoder {
    /// The encoder of `config`.
    pub(crate) fn new(config: &SchemaConfig) -> Encoder {
        Encoder(AvroFormat::new(config).map_err(|error| Report(&error).to_string()))
    }

    /// The messages of `row`, one per destination topic.
    pub(crate) async fn messages(&self, row: &AvroRow) -> Result<Vec<RawMessage>, Failure> {
        let format = self.0.as_ref().map_err(|reason| Failure {
            class: ENCODE_ERROR,
            message: format!("the Avro schemas cannot be used: {reason}"),
        })?;
        encode(format, row).await.map_err(|error| Failure {
            class: if error.is_unreachable() { REGISTRY_UNAVAILABLE } else { ENCODE_ERROR },
            message: format!(
                "encoding {} {} for Avro topic `{}`: {}",
                row.schema,
                row.id,
                row.topics.join("`, `"),
                Report(&error)
            ),
        })
    }
}

async fn encode(format: &AvroFormat, row: &AvroRow) -> Result<Vec<RawMessage>, AvroError> {
    let auto = auto_fields();
    let mut messages = Vec::with_capacity(row.topics.len());
    for topic in &row.topics {
        let key = format.encode_key(topic, row.schema, row.key, &row.id, &row.attributes).await?;
        let payload = match row.tombstone {
            true => None,
            false => Some(format.encode_value(topic, row.schema, &row.attributes, &auto).await?),
        };
        messages.push(RawMessage { topic: topic.clone(), key, partition_key: row.partition_key.clone(), payload });
    }
    Ok(messages)
}
