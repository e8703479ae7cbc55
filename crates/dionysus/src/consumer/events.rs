//! What the consumer tells the application after a batch is committed (C-19): every processed
//! event with its deserialized records and the local changes it made, first as one batch
//! notification (`dionysus.consume_batch`), then one per event (`dionysus.consume`); plus the
//! message filters (C-20). Handlers declared with `#[dionysus::consume]` are `handler`'s.

use serde_json::{Map, Value};

use crate::consumer::replica::{ChangeSet, Record};

/// The changes made to one local row: `[model name, synced id]` and column → `[old, new]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalChange {
    /// The message's `model_name` for the aggregate root; the link name (or polymorphic type)
    /// for sideloaded records.
    pub model: String,
    /// The record's source id.
    pub synced_id: Value,
    /// Changed columns.
    pub changes: ChangeSet,
}

/// One processed event, as subscribers and handlers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedEvent {
    /// Topic the message came from.
    pub topic: String,
    /// Partition of the message.
    pub partition: i32,
    /// Offset of the message (several events of one message share it).
    pub offset: i64,
    /// Event name, e.g. `rental_updated`.
    pub event_name: String,
    /// Model name as sent, e.g. `Rental`.
    pub model_name: String,
    /// The deserialized records.
    pub transformed_data: Vec<Record>,
    /// Changes made to local rows, in the order they were made; a later change of the same
    /// row replaces the earlier entry.
    pub local_changes: Vec<LocalChange>,
}

impl ConsumedEvent {
    /// The event in dionysus-rb's event-bus shape: `{topic_name, event_name, model_name,
    /// transformed_data, local_changes}` with `local_changes` as a list of
    /// `{"key": [model, id], "changes": {...}}`.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("topic_name".to_owned(), Value::String(self.topic.clone()));
        object.insert("event_name".to_owned(), Value::String(self.event_name.clone()));
        object.insert("model_name".to_owned(), Value::String(self.model_name.clone()));
        object.insert(
            "transformed_data".to_owned(),
            Value::Array(self.transformed_data.iter().map(Record::to_json).collect()),
        );
        let changes = self
            .local_changes
            .iter()
            .map(|change| {
                let mut entry = Map::new();
                entry.insert(
                    "key".to_owned(),
                    Value::Array(vec![Value::String(change.model.clone()), change.synced_id.clone()]),
                );
                entry.insert("changes".to_owned(), Value::Object(change.changes.clone()));
                Value::Object(entry)
            })
            .collect();
        object.insert("local_changes".to_owned(), Value::Array(changes));
        Value::Object(object)
    }
}

/// A notification to event-bus subscribers.
#[derive(Debug, Clone, Copy)]
pub enum Notification<'a> {
    /// `dionysus.consume_batch`: every event of a committed batch (possibly none).
    Batch(&'a [ConsumedEvent]),
    /// `dionysus.consume`: one event, in processing order, after the batch notification.
    Event(&'a ConsumedEvent),
}

/// Decides whether an event is skipped (C-20): called with the topic, the message's whole
/// `"message"` array, and the event's deserialized records.
pub trait MessageFilter: Send + Sync {
    /// `true` skips the event.
    fn ignore_message(&self, topic: &str, message: &Value, transformed_data: &[Record]) -> bool;

    /// Called for an ignored event; the default logs a warning, as dionysus-rb's default
    /// notifies its error handler.
    fn notify_about_ignored_message(&self, topic: &str, message: &Value) {
        tracing::warn!(topic, %message, "Ignoring Kafka message. Make sure it's processed later");
    }
}

impl<F> MessageFilter for F
where
    F: Fn(&str, &Value, &[Record]) -> bool + Send + Sync,
{
    fn ignore_message(&self, topic: &str, message: &Value, transformed_data: &[Record]) -> bool {
        self(topic, message, transformed_data)
    }
}
