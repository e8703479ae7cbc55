//! Feeding a consumer by hand: [`envelope`] and [`envelope_of`] build the wire message a
//! producer would send (from JSON, or from a publishable record), [`consume`] runs messages
//! through the consumer's own batch path ([`Consumer::process_batch`]: one transaction per
//! topic-partition, with the stored offset, the timestamp guard, the dead-letter rules and the
//! handlers) and reports what changed; [`consume_invalid`] checks that a message is rejected
//! and says why.
//!
//! Offsets continue from the consumer group's stored offset, so a test may call [`consume`]
//! again and again. Dead letters are returned, not sent anywhere.

use serde_json::Value;

use crate::consumer::calls::{recording, HandlerCall};
use crate::consumer::replica::sql::stored_offsets;
use crate::consumer::{ConsumedEvent, Consumer, ConsumerError, DeadLetter, InboundMessage, LocalChange};
use crate::producer::publishable::{model_entry, Publishable};
use crate::producer::serialize::{default_serialize, SerializeError, Sideloads};
use crate::wire::envelope::{Envelope, JSON_NULL_TOMBSTONE};
use crate::wire::naming::message_key;
use crate::wire::record::id_text;

/// A message as a consumer reads it from Kafka, for [`consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct TestMessage {
    topic: Option<String>,
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// The model of an envelope built here, to find its topic.
    model_name: Option<String>,
}

/// The message a producer sends for `event` (`rental_updated`) of model `model_name`
/// (`Rental`) with `data`: one record (a JSON object) or several (an array). Its key is
/// `<model_name>:<id>` of the first record. The topic is the one the consumer replicates the
/// model from, unless set with [`TestMessage::topic`].
///
/// ```
/// let message = dionysus::testing::envelope(
///     "Rental",
///     "rental_updated",
///     serde_json::json!({"id": 1, "name": "Loft", "updated_at": "2026-01-02T03:04:05.000Z"}),
/// );
/// assert_eq!(message.key_text().as_deref(), Some("Rental:1"));
/// ```
pub fn envelope(model_name: &str, event: &str, data: Value) -> TestMessage {
    let records = match data {
        Value::Array(records) => records,
        record => vec![record],
    };
    let key = records
        .first()
        .and_then(|record| record.get("id"))
        .filter(|id| !id.is_null())
        .map(|id| message_key(model_name, id_text(id)).into_bytes());
    let payload = encode(&Envelope::single(event, model_name, Value::Array(records)));
    TestMessage { topic: None, partition: 0, key, payload: Some(payload), model_name: Some(model_name.to_owned()) }
}

/// The message a producer of `record`'s model sends for `event`: serialized by the model's
/// first publication (its serializer, on its topic) — without `with(...)` sideloads, which
/// need the producer's database; for the exact message with sideloads, take it from
/// [`published`](super::published) with [`PublishedMessage::to_message`](super::PublishedMessage::to_message).
pub fn envelope_of<T: Publishable>(record: &T, event: &str) -> Result<TestMessage, SerializeError> {
    let model = model_entry::<T>();
    let publication = T::PUBLICATIONS.first();
    let sideloads = Sideloads::default();
    let data = match publication {
        Some(publication) => (publication.serialize)(record, &sideloads)?,
        None => default_serialize(record, &sideloads)?,
    };
    let payload = encode(&Envelope::single(event, model.model_name, Value::Array(vec![data])));
    Ok(TestMessage {
        topic: publication.map(|publication| publication.topic.to_owned()),
        partition: 0,
        key: Some(message_key(model.model_name, record.primary_key()).into_bytes()),
        payload: Some(payload),
        model_name: Some(model.model_name.to_owned()),
    })
}

/// The envelope's bytes (encoding JSON values cannot fail).
fn encode(envelope: &Envelope) -> Vec<u8> {
    envelope.encode().unwrap_or_else(|_| JSON_NULL_TOMBSTONE.to_vec())
}

impl TestMessage {
    /// A message with these value bytes as they are (e.g. malformed JSON, for
    /// [`consume_invalid`]); set its topic.
    pub fn raw(payload: impl Into<Vec<u8>>) -> TestMessage {
        TestMessage { topic: None, partition: 0, key: None, payload: Some(payload.into()), model_name: None }
    }

    /// A message whose value is a Kafka null; set its topic.
    pub fn kafka_null() -> TestMessage {
        TestMessage { topic: None, partition: 0, key: None, payload: None, model_name: None }
    }

    /// On this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> TestMessage {
        self.topic = Some(topic.into());
        self
    }

    /// On this partition (default 0).
    pub fn partition(mut self, partition: i32) -> TestMessage {
        self.partition = partition;
        self
    }

    /// With this key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> TestMessage {
        self.key = Some(key.into());
        self
    }

    /// The key as text, when it is UTF-8.
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().and_then(|key| std::str::from_utf8(key).ok()).map(str::to_owned)
    }

    /// The value bytes; `None` is a Kafka null.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}

/// The messages could not be consumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// No topic could be chosen for a message.
    #[error(
        "no topic for message {index}: the consumer reads {topics:?} and none replicates its model; set one with \
         `TestMessage::topic`"
    )]
    NoTopic {
        /// Position of the message in the list.
        index: usize,
        /// The consumer's topics.
        topics: Vec<String>,
    },
    /// The consumer's stored offsets could not be read.
    #[error("reading the stored offsets of consumer group {group}")]
    Offsets {
        /// The group.
        group: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The database could not be used.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The consumer failed on the batch (for a reason that is not its messages').
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// [`consume_invalid`]: the message was applied, not rejected.
    #[error("the message was accepted, not rejected: {events} event(s) applied")]
    Accepted {
        /// The events it applied.
        events: usize,
    },
}

/// What consuming messages did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Consumed {
    /// The events processed, in order, each with the local changes it made (what handlers
    /// and event-bus subscribers get).
    pub events: Vec<ConsumedEvent>,
    /// The messages set aside for the dead-letter topic, with the reasons.
    pub dead_letters: Vec<DeadLetter>,
    /// The `#[dionysus::consume]` handlers called, in order, with their outcomes.
    pub handler_calls: Vec<HandlerCall>,
    /// Messages skipped because the group's stored offset was past them.
    pub already_applied: usize,
}

impl Consumed {
    /// Every local change, in order: one per replica row written (inserted, updated,
    /// soft-deleted, restored or deleted) per event.
    pub fn local_changes(&self) -> impl Iterator<Item = &LocalChange> {
        self.events.iter().flat_map(|event| event.local_changes.iter())
    }

    /// How many replica rows were written (rows a stale event left alone do not count).
    pub fn rows_written(&self) -> usize {
        let mut rows: Vec<(&str, &Value)> =
            self.local_changes().map(|change| (change.model.as_str(), &change.synced_id)).collect();
        rows.sort_by(|a, b| (a.0, a.1.to_string()).cmp(&(b.0, b.1.to_string())));
        rows.dedup();
        rows.len()
    }

    /// The last local change of the row of `model` (as reported: the message's model name,
    /// or the link name of a sideload) with `synced_id`.
    pub fn change_of(&self, model: &str, synced_id: &Value) -> Option<&LocalChange> {
        self.local_changes().filter(|change| change.model == model && &change.synced_id == synced_id).last()
    }

    /// The reason of every dead letter, in order (`malformed_json`, `missing_id`, …).
    pub fn dead_letter_reasons(&self) -> Vec<&'static str> {
        self.dead_letters.iter().map(|dead| dead.reason).collect()
    }
}

/// Runs `messages` through `consumer` as batches read from Kafka — one per topic-partition,
/// in the order of their first message — and reports what they changed. Local changes are
/// computed whatever the consumer's settings.
pub async fn consume(
    consumer: &Consumer,
    messages: impl IntoIterator<Item = TestMessage>,
) -> Result<Consumed, ConsumeError> {
    let consumer = consumer.with_local_changes();
    let mut batches: Vec<((String, i32), Vec<TestMessage>)> = Vec::new();
    for (index, message) in messages.into_iter().enumerate() {
        let topic = topic_of(&consumer, &message, index)?;
        let slot = (topic, message.partition);
        match batches.iter_mut().find(|(key, _)| *key == slot) {
            Some((_, batch)) => batch.push(message),
            None => batches.push((slot, vec![message])),
        }
    }
    let stored = {
        let mut conn = crate::db::checkout(consumer.pool()).await?;
        stored_offsets(&mut conn, consumer.group())
            .await
            .map_err(|source| ConsumeError::Offsets { group: consumer.group().to_owned(), source })?
    };
    let mut consumed = Consumed::default();
    for ((topic, partition), batch) in batches {
        let first = stored.get(&(topic.clone(), partition)).copied().unwrap_or(0);
        let inbound: Vec<InboundMessage> = (first..)
            .zip(batch)
            .map(|(offset, message)| InboundMessage {
                topic: topic.clone(),
                partition,
                offset,
                key: message.key,
                payload: message.payload,
            })
            .collect();
        let (outcome, calls) = recording(consumer.process_batch(&inbound)).await;
        let outcome = outcome?;
        consumed.events.extend(outcome.events);
        consumed.dead_letters.extend(outcome.dead_letters);
        consumed.already_applied += outcome.already_applied;
        consumed.handler_calls.extend(calls);
    }
    Ok(consumed)
}

/// Consumes `message` and returns why it was rejected (its dead letter: `reason` in a word
/// and the full `error`); an error when it was applied instead.
pub async fn consume_invalid(consumer: &Consumer, message: TestMessage) -> Result<DeadLetter, ConsumeError> {
    let mut consumed = consume(consumer, [message]).await?;
    match consumed.dead_letters.pop() {
        Some(dead) => Ok(dead),
        None => Err(ConsumeError::Accepted { events: consumed.events.len() }),
    }
}

/// The message's topic: its own, else the one the consumer replicates its model from, else
/// the consumer's only topic.
fn topic_of(consumer: &Consumer, message: &TestMessage, index: usize) -> Result<String, ConsumeError> {
    if let Some(topic) = &message.topic {
        return Ok(topic.clone());
    }
    let topics = consumer.topics();
    // The consumed topics with a replica of the model; one of them is the answer.
    let mut replicated: Vec<&str> = message
        .model_name
        .as_deref()
        .map(|model| consumer.replicas().candidates(model))
        .unwrap_or_default()
        .iter()
        .map(|replica| replica.topic)
        .filter(|topic| topics.iter().any(|consumed| consumed == topic))
        .collect();
    replicated.dedup();
    let replicated = match replicated.as_slice() {
        [only] => Some(*only),
        _ => None,
    };
    match (replicated, topics) {
        (Some(topic), _) => Ok(topic.to_owned()),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(ConsumeError::NoTopic { index, topics: topics.to_vec() }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_envelope_is_the_wire_message_with_the_records_key() {
        let message = envelope("Bookings::Fee", "bookings/fee_created", json!({"id": "f-1", "amount": 5}));
        assert_eq!(message.key_text().as_deref(), Some("Bookings::Fee:f-1"));
        assert_eq!(
            std::str::from_utf8(message.payload().unwrap()).unwrap(),
            r#"{"message":[{"event":"bookings/fee_created","model_name":"Bookings::Fee","data":[{"id":"f-1","amount":5}]}]}"#
        );
        let many = envelope("Rental", "rental_destroyed", json!([{"id": 2}, {"id": 3}]));
        assert_eq!(many.key_text().as_deref(), Some("Rental:2"));
        assert_eq!(TestMessage::raw("{").topic("t").payload(), Some(&b"{"[..]));
        assert_eq!(TestMessage::kafka_null().payload(), None);
    }
}
