//! Events a consumer publishes because of what it consumed: *replies* a handler returns
//! ([`Reply`], kaufmann_ex's `{:reply, [...]}`) and *error events* (`event.error.<event>`)
//! written when a handler fails. Both are outbox rows carrying a ready-made message, written
//! on the batch's connection: a reply of an `in_transaction` handler commits (or rolls back)
//! with the replica rows and the stored offset that consumed its cause, so it is published
//! exactly when its cause was consumed. The consuming service's relay publishes them like
//! any composed message, in order per key.
//!
//! The wire shape is the dionysus envelope with one more top-level key, `meta`, which
//! dionysus-rb and our own consumer ignore:
//!
//! ```json
//! {"message":[{"event":"rental.priced","model_name":"Rental","data":[{"price":42}]}],
//!  "meta":{"cause":{"topic":"v3_rentals","partition":0,"offset":12,"event":"rental_updated","key":"Rental:1"},
//!          "cause_meta":{"message_id":"…"}}}
//! ```
//!
//! `meta.cause` says which message caused the event; `meta.cause_meta` is the cause's own
//! top-level `meta` (kaufmann_ex's callback and message ids), when it had one.
//!
//! When a handler runs and what a failure does to its batch is `apply`'s; this module builds
//! and writes the rows.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::{Map, Value};

use super::batch::InboundMessage;
use super::events::ConsumedEvent;
use crate::config::ProducerConfig;
use crate::registry::Registry;
use crate::schema::dionysus_outbox;
use crate::seal::{self, SealError};
use crate::wire::envelope::{self, Event};

/// The prefix of error events' names: `event.error.rental_updated` (kaufmann_ex's).
pub const ERROR_EVENT_PREFIX: &str = "event.error.";

/// The model name of error events. Not the cause's model, so that a consumer of the topic
/// never applies an error event to a replica (its name ends like the cause's).
pub const ERROR_EVENT_MODEL: &str = "DionysusErrorEvent";

/// An event a handler publishes in reply to the one it handled, e.g.
/// `Reply::event("rental.priced", &Priced { id: 1, price: 42 }).on("pricing_events")`.
///
/// Return it from a handler (`Result<Reply, E>` or `Result<Vec<Reply>, E>`) or push it with
/// [`Context::reply`](super::Context::reply). It becomes the message
/// `{"message":[{"event":<name>,"model_name":<model>,"data":[<payload>]}],"meta":{…}}` with
/// the cause's coordinates in `meta` (see the module documentation of `consumer`'s replies
/// in the README).
///
/// Defaults: the topic, the model name and the key are the cause's; no partition key (the
/// partition is chosen from the key). The topic must be declared (`#[dionysus::topic]`) in
/// the consuming binary: an undeclared one is the setup's fault, not the message's, so the
/// partition waits ([`ConsumerError::Reply`](super::ConsumerError::Reply)) and nothing is
/// dead-lettered.
#[derive(Debug)]
#[must_use = "a reply is published only when the handler returns it or passes it to `Context::reply`"]
pub struct Reply {
    event: String,
    payload: Result<Value, serde_json::Error>,
    topic: Option<String>,
    key: Option<String>,
    partition_key: Option<String>,
    model_name: Option<String>,
}

impl Reply {
    /// A reply named `event` carrying `payload` (any serde type) as its one record. A
    /// payload serde cannot turn into JSON fails the batch when the reply is written
    /// ([`ReplyError::Payload`]).
    pub fn event(event: impl Into<String>, payload: &impl Serialize) -> Reply {
        Reply {
            event: event.into(),
            payload: serde_json::to_value(payload),
            topic: None,
            key: None,
            partition_key: None,
            model_name: None,
        }
    }

    /// Publishes it on `topic` (a declared topic; default: the cause's topic).
    pub fn on(mut self, topic: impl Into<String>) -> Reply {
        self.topic = Some(topic.into());
        self
    }

    /// Its Kafka key (default: the cause's key).
    pub fn key(mut self, key: impl Into<String>) -> Reply {
        self.key = Some(key.into());
        self
    }

    /// Its partition key, verbatim (default: none, the partition is chosen from the key).
    pub fn partition_key(mut self, partition_key: impl Into<String>) -> Reply {
        self.partition_key = Some(partition_key.into());
        self
    }

    /// Its `model_name` (default: the cause's).
    pub fn model(mut self, model_name: impl Into<String>) -> Reply {
        self.model_name = Some(model_name.into());
        self
    }

    /// The event name.
    pub fn event_name(&self) -> &str {
        &self.event
    }

    /// The payload as JSON (`None` when it could not be serialized).
    pub fn payload(&self) -> Option<&Value> {
        self.payload.as_ref().ok()
    }
}

/// Writing a reply or an error event failed; the batch is retried (it is never the message's
/// fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply's topic is not declared in this binary.
    #[error("reply `{event}` goes to `{topic}`, which is not a declared topic; declared: {known}")]
    UnknownTopic {
        /// The reply's event name.
        event: String,
        /// The topic asked for.
        topic: String,
        /// The declared topics.
        known: String,
    },
    /// The reply's topic is declared `format = "avro"`: replies are dionysus envelopes, which
    /// that topic's readers would not decode.
    #[error(
        "reply `{event}` goes to `{topic}`, an Avro topic; replies are JSON envelopes, so send them to a JSON topic \
         (publish the record through its #[publish] model to reach an Avro topic)"
    )]
    AvroTopic {
        /// The reply's event name.
        event: String,
        /// The topic asked for.
        topic: String,
    },
    /// The reply's payload could not be turned into JSON.
    #[error("serializing the payload of reply `{event}`")]
    Payload {
        /// The reply's event name.
        event: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The message could not be encoded.
    #[error("encoding `{event}` for `{topic}`")]
    Encode {
        /// The event name.
        event: String,
        /// The topic.
        topic: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Sealing the message with the configured encryption key failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Inserting the outbox rows failed.
    #[error("inserting {rows} reply outbox row(s)")]
    Insert {
        /// Rows of the statement.
        rows: usize,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
}

impl ReplyError {
    /// The database error, if writing failed in the database.
    pub(crate) fn database(&self) -> Option<&diesel::result::Error> {
        match self {
            ReplyError::Insert { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The message that caused replies or an error event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cause<'a> {
    pub(crate) message: &'a InboundMessage,
    pub(crate) event: &'a str,
    pub(crate) model_name: &'a str,
}

impl<'a> Cause<'a> {
    pub(crate) fn of(event: &'a ConsumedEvent, message: &'a InboundMessage) -> Cause<'a> {
        Cause { message, event: &event.event_name, model_name: &event.model_name }
    }

    /// The cause's key as text, or its coordinates when it has none.
    fn key(&self) -> String {
        match &self.message.key {
            Some(key) => String::from_utf8_lossy(key).into_owned(),
            None => format!("{}/{}@{}", self.message.topic, self.message.partition, self.message.offset),
        }
    }

    /// The cause's value as JSON (`null` when it is not JSON or a Kafka null).
    fn payload(&self) -> Value {
        self.message.payload.as_deref().and_then(|bytes| serde_json::from_slice(bytes).ok()).unwrap_or(Value::Null)
    }

    /// `{"cause": {…}, "cause_meta": …}`.
    fn meta(&self, payload: &Value) -> Value {
        let mut cause = Map::new();
        cause.insert("topic".into(), self.message.topic.clone().into());
        cause.insert("partition".into(), self.message.partition.into());
        cause.insert("offset".into(), self.message.offset.into());
        cause.insert("event".into(), self.event.into());
        cause.insert("key".into(), self.message.key.as_ref().map_or(Value::Null, |_| self.key().into()));
        let mut meta = Map::new();
        meta.insert("cause".into(), Value::Object(cause));
        if let Some(cause_meta) = payload.get("meta").filter(|meta| !meta.is_null()) {
            meta.insert("cause_meta".into(), cause_meta.clone());
        }
        Value::Object(meta)
    }
}

/// The model name of the first event named `event` in `message`'s value (empty when it has
/// none).
pub(crate) fn model_of(message: &InboundMessage, event: &str) -> String {
    let value: Option<Value> = message.payload.as_deref().and_then(|bytes| serde_json::from_slice(bytes).ok());
    value
        .as_ref()
        .and_then(|value| value.get("message"))
        .and_then(Value::as_array)
        .and_then(|events| events.iter().find(|entry| entry.get("event").and_then(Value::as_str) == Some(event)))
        .and_then(|entry| entry.get("model_name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A message value with the envelope's `message` and our `meta`.
#[derive(Serialize)]
struct ComposedValue<'a> {
    message: [Event; 1],
    meta: &'a Value,
}

/// An outbox row carrying a composed message.
#[derive(Debug, Clone, PartialEq, Eq, diesel::Insertable)]
#[diesel(table_name = dionysus_outbox)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct ComposedRow {
    resource_class: String,
    resource_id: String,
    event_name: String,
    topic: String,
    partition_key: Option<String>,
    changeset: Value,
    message: Option<String>,
    message_key: Option<String>,
    encryption_key_id: Option<String>,
}

impl ComposedRow {
    /// The row of a record change whose message the relay builds (loading the record, with
    /// its serializer and `with(...)` sideloads), as the outbox writer writes for any change:
    /// a cascade's republished record.
    pub(crate) fn change(
        resource_class: &str,
        resource_id: String,
        event_name: String,
        topic: &str,
        partition_key: Option<String>,
    ) -> ComposedRow {
        ComposedRow {
            resource_class: resource_class.to_owned(),
            resource_id,
            event_name,
            topic: topic.to_owned(),
            partition_key,
            changeset: Value::Object(Map::new()),
            message: None,
            message_key: None,
            encryption_key_id: None,
        }
    }

    /// The model, id, event and topic: what makes two rows of one write the same.
    pub(crate) fn identity(&self) -> (&str, &str, &str, &str) {
        (&self.resource_class, &self.resource_id, &self.event_name, &self.topic)
    }
}

/// The row of a reply to `cause`.
pub(crate) fn reply_row(registry: &Registry, cause: Cause<'_>, reply: Reply) -> Result<ComposedRow, ReplyError> {
    let topic = reply.topic.unwrap_or_else(|| cause.message.topic.clone());
    match registry.resolve(&topic) {
        None => {
            return Err(ReplyError::UnknownTopic {
                event: reply.event,
                topic,
                known: registry.topic_names().join(", "),
            })
        }
        Some((declaration, _)) if declaration.format != crate::registry::TopicFormat::Json => {
            return Err(ReplyError::AvroTopic { event: reply.event, topic });
        }
        Some(_) => {}
    }
    let data = match reply.payload {
        Ok(data) => data,
        Err(source) => return Err(ReplyError::Payload { event: reply.event, source }),
    };
    let payload = cause.payload();
    let model_name = reply.model_name.unwrap_or_else(|| cause.model_name.to_owned());
    let key = reply.key.unwrap_or_else(|| cause.key());
    composed_row(cause, &payload, topic, reply.event, model_name, data, key, reply.partition_key)
}

/// How a handler failed, for its error event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    /// Path of the handler function.
    pub(crate) handler: &'a str,
    /// `handler_failed` or `handler_input_invalid`.
    pub(crate) reason: &'a str,
    /// The error, with its causes.
    pub(crate) error: &'a str,
}

/// The error event of a handler's failure on `cause`, on `topic` (default: the cause's):
/// `event.error.<event>` with `data: [{"error": {…}, "payload": <the cause's value>, "meta":
/// <its meta>}]`; `None` for the failure of an error event's own handler (no error events
/// of error events).
pub(crate) fn error_event_row(
    cause: Cause<'_>,
    topic: Option<&str>,
    failure: Failure<'_>,
) -> Option<Result<ComposedRow, ReplyError>> {
    if cause.event.starts_with(ERROR_EVENT_PREFIX) {
        return None;
    }
    let payload = cause.payload();
    let mut error = Map::new();
    error.insert("handler".into(), failure.handler.into());
    error.insert("reason".into(), failure.reason.into());
    error.insert("message".into(), failure.error.into());
    error.insert("model_name".into(), cause.model_name.into());
    let mut record = Map::new();
    record.insert("error".into(), Value::Object(error));
    record.insert("meta".into(), payload.get("meta").cloned().unwrap_or(Value::Null));
    record.insert("payload".into(), payload.clone());
    let topic = topic.map_or_else(|| cause.message.topic.clone(), str::to_owned);
    let event = format!("{ERROR_EVENT_PREFIX}{}", cause.event);
    Some(composed_row(
        cause,
        &payload,
        topic,
        event,
        ERROR_EVENT_MODEL.to_owned(),
        Value::Object(record),
        cause.key(),
        None,
    ))
}

#[allow(clippy::too_many_arguments, reason = "the columns of one composed row, named at the two call sites")]
fn composed_row(
    cause: Cause<'_>,
    cause_payload: &Value,
    topic: String,
    event: String,
    model_name: String,
    data: Value,
    key: String,
    partition_key: Option<String>,
) -> Result<ComposedRow, ReplyError> {
    let meta = cause.meta(cause_payload);
    let value = ComposedValue {
        message: [Event { event: event.clone(), model_name: model_name.clone(), data: Value::Array(vec![data]) }],
        meta: &meta,
    };
    let value = envelope::to_json(&value).map_err(|source| ReplyError::Encode {
        event: event.clone(),
        topic: topic.clone(),
        source,
    })?;
    Ok(ComposedRow {
        resource_class: model_name,
        resource_id: key.clone(),
        event_name: event,
        topic,
        partition_key,
        changeset: Value::Object(Map::new()),
        message: Some(String::from_utf8_lossy(&value).into_owned()),
        message_key: Some(key),
        encryption_key_id: None,
    })
}

/// Inserts the rows on `conn` (in the caller's transaction), sealed with the configured key,
/// and wakes the relay when it listens (`publish_after_commit`). Writes nothing when the
/// transactional outbox is off.
pub(crate) async fn write(
    conn: &mut AsyncPgConnection,
    config: &ProducerConfig,
    rows: Vec<ComposedRow>,
) -> Result<usize, ReplyError> {
    if rows.is_empty() || !config.transactional_outbox_enabled {
        return Ok(0);
    }
    let rows = match config.outbox_encryption_keys.current() {
        Some(key) => rows
            .into_iter()
            .map(|mut row| {
                if let Some(message) = &row.message {
                    row.message = Some(seal::seal(key, message.as_bytes())?);
                    row.encryption_key_id = Some(key.id.clone());
                }
                Ok(row)
            })
            .collect::<Result<Vec<_>, SealError>>()?,
        None => rows,
    };
    let count = rows.len();
    let written = diesel::insert_into(dionysus_outbox::table)
        .values(&rows)
        .execute(conn)
        .await
        .map_err(|source| ReplyError::Insert { rows: count, source })?;
    if config.publish_after_commit {
        diesel::sql_query("SELECT pg_notify('dionysus_outbox', '')")
            .execute(conn)
            .await
            .map_err(|source| ReplyError::Insert { rows: count, source })?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: Value) -> InboundMessage {
        InboundMessage {
            topic: "v3_rentals".into(),
            partition: 2,
            offset: 7,
            key: Some(b"Rental:1".to_vec()),
            payload: Some(payload.to_string().into_bytes()),
        }
    }

    fn value(row: &ComposedRow) -> Value {
        serde_json::from_str(row.message.as_deref().unwrap_or("null")).unwrap_or(Value::Null)
    }

    #[test]
    fn an_error_event_carries_the_error_the_payload_and_the_cause() {
        let cause_value = serde_json::json!({"message": [], "meta": {"message_id": "m-1"}});
        let message = message(cause_value.clone());
        let cause = Cause { message: &message, event: "rental_updated", model_name: "Rental" };
        let failure = Failure { handler: "app::price", reason: "handler_failed", error: "no price" };
        let row = error_event_row(cause, None, failure).unwrap().unwrap();
        assert_eq!(row.topic, "v3_rentals");
        assert_eq!(row.event_name, "event.error.rental_updated");
        assert_eq!(row.message_key.as_deref(), Some("Rental:1"));
        let value = value(&row);
        let event = &value["message"][0];
        assert_eq!(event["event"], "event.error.rental_updated");
        assert_eq!(event["model_name"], ERROR_EVENT_MODEL);
        assert_eq!(event["data"][0]["error"]["message"], "no price");
        assert_eq!(event["data"][0]["error"]["model_name"], "Rental");
        assert_eq!(event["data"][0]["payload"], cause_value);
        assert_eq!(event["data"][0]["meta"]["message_id"], "m-1");
        assert_eq!(value["meta"]["cause"]["offset"], 7);
        assert_eq!(value["meta"]["cause_meta"]["message_id"], "m-1");
    }

    #[test]
    fn an_error_event_s_failure_emits_no_error_event() {
        let message = message(serde_json::json!({}));
        let cause = Cause { message: &message, event: "event.error.rental_updated", model_name: ERROR_EVENT_MODEL };
        let failure = Failure { handler: "h", reason: "handler_failed", error: "e" };
        assert!(error_event_row(cause, None, failure).is_none());
    }

    #[test]
    fn a_reply_to_an_undeclared_topic_is_refused() {
        let message = message(serde_json::json!({}));
        let cause = Cause { message: &message, event: "rental_updated", model_name: "Rental" };
        let registry = Registry::new([], []);
        let error = reply_row(&registry, cause, Reply::event("x", &Value::Null).on("nowhere")).unwrap_err();
        assert!(matches!(error, ReplyError::UnknownTopic { .. }), "{error}");
    }

    #[test]
    fn a_reply_to_an_avro_topic_is_refused() {
        use crate::registry::{KeyConfig, TopicDeclaration, TopicFormat};
        static AVRO: TopicDeclaration = TopicDeclaration {
            name: "avro_rentals",
            full_name: "avro_rentals",
            format: TopicFormat::Avro { schema: "com.example.Rental", key: KeyConfig::Plain },
            ..TopicDeclaration::INVALID
        };
        let message = message(serde_json::json!({}));
        let cause = Cause { message: &message, event: "rental_updated", model_name: "Rental" };
        let registry = Registry::new([&AVRO], []);
        let error = reply_row(&registry, cause, Reply::event("x", &Value::Null).on("avro_rentals")).unwrap_err();
        assert!(matches!(error, ReplyError::AvroTopic { .. }), "{error}");
    }

    #[test]
    fn the_value_is_escaped_like_the_gem_s() {
        let message = message(serde_json::json!({}));
        let cause = Cause { message: &message, event: "rental_updated", model_name: "Rental" };
        let failure = Failure { handler: "h", reason: "handler_failed", error: "<b>" };
        let row = error_event_row(cause, None, failure).unwrap().unwrap();
        assert!(row.message.as_deref().unwrap_or_default().contains("\\u003cb\\u003e"));
    }
}
