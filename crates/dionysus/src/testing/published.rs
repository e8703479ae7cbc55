//! What the relay would send for the outbox rows written so far, without a broker: the
//! pending rows read and planned by the relay's own batch code (`relay::preview`) on the
//! test's connection — so inside a test transaction its uncommitted rows count — and the
//! matchers that assert on the result ([`assert_published!`](crate::testing::assert_published),
//! [`assert_not_published!`](crate::testing::assert_not_published), [`Expected`]).
//!
//! Reading changes nothing: no row is marked published and deferred observer rows are not
//! expanded. The publishing delay is not applied (every pending row counts).

use std::fmt;

use diesel_async::AsyncPgConnection;
use serde_json::Value;

use super::consume::TestMessage;
use crate::config::ConfigError;
use crate::handle::Dionysus;
use crate::producer::plan::{PlanError, RowPlan};
use crate::producer::publishable::{model_entry, Publishable};
use crate::producer::relay::{preview, PendingRow, PreviewError, RowPreview};
use crate::wire::envelope::Envelope;
use crate::wire::partition::partition_for;

/// The pending outbox rows could not be turned into messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishedError {
    /// The global handle's configuration could not be read.
    #[error("reading the dionysus configuration of the global handle")]
    Config(#[source] ConfigError),
    /// The pending rows could not be read.
    #[error("reading the pending outbox rows")]
    Read(#[source] diesel::result::Error),
    /// Loading the records of the pending rows failed.
    #[error("loading the records of the pending outbox rows")]
    Load(#[source] PlanError),
    /// The relay could not publish a row: it would retry it, and park it in the end.
    #[error("outbox row {outbox_id} ({model} {id}, `{event_name}` on `{topic}`) cannot be published")]
    Unpublishable {
        /// Outbox id.
        outbox_id: i64,
        /// Model name.
        model: String,
        /// Record id.
        id: String,
        /// Event name.
        event_name: String,
        /// Topic of the row.
        topic: String,
        /// Why.
        #[source]
        source: PlanError,
    },
}

/// The messages of the pending outbox rows, as the relay of the [global
/// handle](crate::Dionysus::global) would send them now: the rows read and planned by the
/// relay's own batch code on `conn`, so inside a test's transaction its uncommitted rows
/// count. Nothing is changed: no row is marked published, deferred observer rows are not
/// expanded (they are listed in [`Published::skipped`]), and the publishing delay is not
/// applied. A row the relay could not publish (an undeclared topic, a serializer's error) is
/// an error.
pub async fn published(conn: &mut AsyncPgConnection) -> Result<Published, PublishedError> {
    let handle = Dionysus::global().map_err(PublishedError::Config)?;
    published_with(handle, conn).await
}

/// [`published`] with the declarations and settings of `handle`.
pub async fn published_with(handle: &Dionysus, conn: &mut AsyncPgConnection) -> Result<Published, PublishedError> {
    let previews = preview(conn, handle.registry(), &handle.config().producer).await.map_err(|error| match error {
        PreviewError::Read(source) => PublishedError::Read(source),
        PreviewError::Plan(source) => PublishedError::Load(source),
    })?;
    let mut published = Published::default();
    for (row, preview) in previews {
        match preview {
            RowPreview::Planned(RowPlan::Publish(messages)) => {
                published.messages.extend(messages.into_iter().map(|message| PublishedMessage {
                    outbox_id: row.id,
                    model_name: row.resource_class.clone(),
                    id: row.resource_id.clone(),
                    event_name: row.event_name.clone(),
                    topic: message.topic,
                    key: message.key,
                    partition_key: message.partition_key,
                    payload: message.payload,
                }));
            }
            // An Avro row before encoding: its record's attributes as JSON (null for a tombstone).
            RowPreview::Planned(RowPlan::Avro(avro)) => {
                let payload = (!avro.tombstone).then(|| avro.attributes.to_string().into_bytes());
                published.messages.extend(avro.topics.into_iter().map(|topic| PublishedMessage {
                    outbox_id: row.id,
                    model_name: row.resource_class.clone(),
                    id: row.resource_id.clone(),
                    event_name: row.event_name.clone(),
                    topic,
                    key: avro.id.clone(),
                    partition_key: avro.partition_key.clone(),
                    payload: payload.clone(),
                }));
            }
            RowPreview::Planned(RowPlan::Skip(_)) => published.skipped.push(skipped(&row, SkipReason::RecordGone)),
            RowPreview::Planned(RowPlan::DeferredObservers) => {
                published.skipped.push(skipped(&row, SkipReason::DeferredObservers));
            }
            RowPreview::Duplicate => published.skipped.push(skipped(&row, SkipReason::ConsecutiveDuplicate)),
            RowPreview::Planned(RowPlan::Fail(source)) => {
                return Err(PublishedError::Unpublishable {
                    outbox_id: row.id,
                    model: row.resource_class,
                    id: row.resource_id,
                    event_name: row.event_name,
                    topic: row.topic,
                    source,
                });
            }
        }
    }
    Ok(published)
}

fn skipped(row: &PendingRow, reason: SkipReason) -> SkippedRow {
    SkippedRow {
        outbox_id: row.id,
        model_name: row.resource_class.clone(),
        id: row.resource_id.clone(),
        event_name: row.event_name.clone(),
        topic: row.topic.clone(),
        reason,
    }
}

/// One message the relay would send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The outbox row it comes from.
    pub outbox_id: i64,
    /// The row's model name (`Rental`).
    pub model_name: String,
    /// The row's record id, as text.
    pub id: String,
    /// The row's event name (`rental_updated`).
    pub event_name: String,
    /// Destination topic.
    pub topic: String,
    /// Message key (`Rental:1`).
    pub key: String,
    /// Partition key; `None` partitions by the key.
    pub partition_key: Option<String>,
    /// The value's exact bytes; `None` is a Kafka null (a tombstone on `kafka_null` topics).
    pub payload: Option<Vec<u8>>,
}

impl PublishedMessage {
    /// The value as JSON (`Value::Null` for a tombstone), `None` for a Kafka null or bytes
    /// that are not JSON.
    pub fn value(&self) -> Option<Value> {
        self.payload.as_deref().and_then(|payload| serde_json::from_slice(payload).ok())
    }

    /// The value as the dionysus envelope, when it is one.
    pub fn envelope(&self) -> Option<Envelope> {
        self.payload.as_deref().and_then(|payload| serde_json::from_slice(payload).ok())
    }

    /// The serialized records of every event of the message, in order.
    pub fn records(&self) -> Vec<Value> {
        self.envelope()
            .map(|envelope| {
                envelope
                    .message
                    .into_iter()
                    .flat_map(|event| match event.data {
                        Value::Array(records) => records,
                        other => vec![other],
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether it is a tombstone (the JSON text `null`, or a Kafka null).
    pub fn is_tombstone(&self) -> bool {
        self.payload.as_deref().is_none_or(|payload| payload == crate::wire::envelope::JSON_NULL_TOMBSTONE)
    }

    /// The partition it lands on in a topic of `partitions` partitions (from the partition
    /// key, else the key, as the relay's producer chooses).
    pub fn partition(&self, partitions: i32) -> i32 {
        partition_for(self.partition_key.as_deref().unwrap_or(&self.key).as_bytes(), partitions)
    }

    /// The message as a consumer would receive it, for [`consume`](super::consume).
    pub fn to_message(&self) -> TestMessage {
        let message = match &self.payload {
            Some(payload) => TestMessage::raw(payload.clone()),
            None => TestMessage::kafka_null(),
        };
        message.topic(&self.topic).key(self.key.clone())
    }
}

impl fmt::Display for PublishedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} `{}` of {} {} on {} key {}",
            self.outbox_id, self.event_name, self.model_name, self.id, self.topic, self.key
        )?;
        if let Some(partition_key) = &self.partition_key {
            write!(f, " partition key {partition_key}")?;
        }
        match &self.payload {
            None => write!(f, ": Kafka null"),
            Some(payload) => {
                let text = String::from_utf8_lossy(payload);
                let shown: String = text.chars().take(240).collect();
                let more = if text.chars().count() > 240 { "…" } else { "" };
                write!(f, ": {shown}{more}")
            }
        }
    }
}

/// Why a pending row sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// The record of a `_created` or `_updated` row is gone: the relay marks it published.
    RecordGone,
    /// A deferred observer row (too many related records): the relay expands it into
    /// `_updated` rows of the related records, published in a later batch.
    DeferredObservers,
    /// A consecutive duplicate removed before publishing (`remove_consecutive_duplicates`).
    ConsecutiveDuplicate,
}

/// A pending row that sends nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedRow {
    /// Outbox id.
    pub outbox_id: i64,
    /// Model name.
    pub model_name: String,
    /// Record id.
    pub id: String,
    /// Event name.
    pub event_name: String,
    /// Topic of the row.
    pub topic: String,
    /// Why nothing is sent.
    pub reason: SkipReason,
}

/// The messages the relay would send, in outbox order, and the rows that send nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    messages: Vec<PublishedMessage>,
    skipped: Vec<SkippedRow>,
}

impl Published {
    /// The messages, in the order the relay sends them.
    pub fn messages(&self) -> &[PublishedMessage] {
        &self.messages
    }

    /// The pending rows that send nothing.
    pub fn skipped(&self) -> &[SkippedRow] {
        &self.skipped
    }

    /// The messages to `topic` only.
    pub fn on_topic(&self, topic: &str) -> Published {
        self.filter(|message| message.topic == topic)
    }

    /// The messages of model `T` only.
    pub fn of<T: Publishable>(&self) -> Published {
        let model = model_entry::<T>().model_name;
        self.filter(|message| message.model_name == model)
    }

    /// The messages `expected` describes.
    pub fn matching(&self, expected: &Expected) -> Published {
        self.filter(|message| expected.matches(message))
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there is no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, PublishedMessage> {
        self.messages.iter()
    }

    /// The messages and skipped rows of outbox rows after `outbox_id`.
    pub(crate) fn since(&self, outbox_id: i64) -> Published {
        Published {
            messages: self.messages.iter().filter(|m| m.outbox_id > outbox_id).cloned().collect(),
            skipped: self.skipped.iter().filter(|row| row.outbox_id > outbox_id).cloned().collect(),
        }
    }

    /// The highest outbox id of a message or skipped row.
    pub(crate) fn last_outbox_id(&self) -> Option<i64> {
        self.messages.iter().map(|m| m.outbox_id).chain(self.skipped.iter().map(|row| row.outbox_id)).max()
    }

    fn filter(&self, keep: impl Fn(&PublishedMessage) -> bool) -> Published {
        Published {
            messages: self.messages.iter().filter(|m| keep(m)).cloned().collect(),
            skipped: self.skipped.clone(),
        }
    }
}

impl<'a> IntoIterator for &'a Published {
    type Item = &'a PublishedMessage;
    type IntoIter = std::slice::Iter<'a, PublishedMessage>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.messages.is_empty() {
            write!(f, "  (no message)")?;
        }
        for (index, message) in self.messages.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "  {message}")?;
        }
        Ok(())
    }
}

/// A description of published messages: the model and, optionally, the event, topic, key,
/// partition key, record id, attributes of a record, and how many. Built by
/// [`assert_published!`](crate::testing::assert_published) and
/// [`assert_not_published!`](crate::testing::assert_not_published), whose `name = value`
/// arguments are its methods.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "an expectation checks nothing until asserted"]
pub struct Expected {
    model: String,
    event: Option<String>,
    topic: Option<String>,
    key: Option<String>,
    partition_key: Option<String>,
    id: Option<String>,
    data: Option<Value>,
    count: Option<usize>,
}

impl Expected {
    /// Messages of the model named `model` on the wire.
    pub fn model(model: impl Into<String>) -> Expected {
        Expected {
            model: model.into(),
            event: None,
            topic: None,
            key: None,
            partition_key: None,
            id: None,
            data: None,
            count: None,
        }
    }

    /// Messages of model `T`.
    pub fn of<T: Publishable>() -> Expected {
        Expected::model(model_entry::<T>().model_name)
    }

    /// With this event name (`rental_updated`).
    pub fn event(mut self, event: impl Into<String>) -> Expected {
        self.event = Some(event.into());
        self
    }

    /// On this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Expected {
        self.topic = Some(topic.into());
        self
    }

    /// With this message key (`Rental:1`).
    pub fn key(mut self, key: impl Into<String>) -> Expected {
        self.key = Some(key.into());
        self
    }

    /// With this partition key (`2`, `"2"`).
    pub fn partition_key(mut self, partition_key: impl fmt::Display) -> Expected {
        self.partition_key = Some(partition_key.to_string());
        self
    }

    /// Of the record with this id.
    pub fn id(mut self, id: impl fmt::Display) -> Expected {
        self.id = Some(id.to_string());
        self
    }

    /// With a record having at least these attributes (`json!({"name": "Loft"})`).
    pub fn data(mut self, attributes: Value) -> Expected {
        self.data = Some(attributes);
        self
    }

    /// Exactly this many matching messages (default: at least one).
    pub fn count(mut self, count: usize) -> Expected {
        self.count = Some(count);
        self
    }

    /// Whether `message` fits the description (the count aside).
    pub fn matches(&self, message: &PublishedMessage) -> bool {
        let equal = |wanted: &Option<String>, actual: &str| wanted.as_deref().is_none_or(|wanted| wanted == actual);
        message.model_name == self.model
            && equal(&self.event, &message.event_name)
            && equal(&self.topic, &message.topic)
            && equal(&self.key, &message.key)
            && equal(&self.id, &message.id)
            && self.partition_key.as_deref().is_none_or(|wanted| message.partition_key.as_deref() == Some(wanted))
            && self.data.as_ref().is_none_or(|wanted| message.records().iter().any(|record| contains(record, wanted)))
    }

    /// Panics unless `published` has a matching message (exactly `count` of them when
    /// given); returns the matching messages.
    #[track_caller]
    pub fn assert_published(&self, published: &Published) -> Vec<PublishedMessage> {
        let found = published.matching(self).messages;
        let fits = match self.count {
            Some(count) => found.len() == count,
            None => !found.is_empty(),
        };
        if !fits {
            let wanted = match self.count {
                Some(count) => format!("{count} message(s)"),
                None => "a message".to_owned(),
            };
            panic!("expected {wanted} {self}, found {}; published:\n{published}", found.len());
        }
        found
    }

    /// Panics when `published` has a matching message.
    #[track_caller]
    pub fn assert_not_published(&self, published: &Published) {
        let found = published.matching(self);
        if !found.is_empty() {
            panic!("expected no message {self}; found:\n{found}");
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "of {}", self.model)?;
        if let Some(event) = &self.event {
            write!(f, " `{event}`")?;
        }
        if let Some(id) = &self.id {
            write!(f, " id {id}")?;
        }
        if let Some(topic) = &self.topic {
            write!(f, " on {topic}")?;
        }
        if let Some(key) = &self.key {
            write!(f, " key {key}")?;
        }
        if let Some(partition_key) = &self.partition_key {
            write!(f, " partition key {partition_key}")?;
        }
        if let Some(data) = &self.data {
            write!(f, " with a record containing {data}")?;
        }
        Ok(())
    }
}

/// Whether `record` has every attribute of `wanted` (an object) with an equal value; a
/// wanted value that is itself an object matches by containment too.
fn contains(record: &Value, wanted: &Value) -> bool {
    match (record, wanted) {
        (Value::Object(record), Value::Object(wanted)) => {
            wanted.iter().all(|(name, value)| record.get(name).is_some_and(|actual| contains(actual, value)))
        }
        (record, wanted) => record == wanted,
    }
}

/// Asserts that the relay would send a message of a model with an event; further
/// `name = value` arguments narrow it down: `topic`, `key`, `partition_key`, `id`, `data`
/// (attributes a record has, as JSON), `count` (exactly this many). Returns the matching
/// messages. The model is a type deriving `Publishable`, or its name on the wire as a
/// string.
///
/// ```no_run
/// # use dionysus::testing::{assert_published, Published};
/// # #[derive(serde::Serialize, dionysus::Publishable, diesel::Queryable, diesel::Selectable)]
/// # #[diesel(table_name = rentals)]
/// # #[publish(topic = "v3_rentals", partition_key = account_id)]
/// # struct Rental { id: i64, account_id: i64 }
/// # diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }
/// # fn check(sent: Published) {
/// assert_published!(sent, Rental, "rental_created", topic = "v3_rentals", key = "Rental:1", partition_key = 2);
/// assert_published!(sent, "Rental", "rental_created", data = serde_json::json!({"account_id": 2}));
/// # }
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __dionysus_assert_published {
    ($published:expr, $model:literal, $event:expr $(, $field:ident = $value:expr)* $(,)?) => {
        $crate::__private::Expected::model($model).event($event)$(.$field($value))*.assert_published(&$published)
    };
    ($published:expr, $model:ty, $event:expr $(, $field:ident = $value:expr)* $(,)?) => {
        $crate::__private::Expected::of::<$model>().event($event)$(.$field($value))*.assert_published(&$published)
    };
}

/// Asserts that the relay would send no message of a model (with the event, and the other
/// `name = value` arguments of [`assert_published!`](crate::testing::assert_published), when
/// given).
///
/// ```no_run
/// # use dionysus::testing::{assert_not_published, Published};
/// # fn check(sent: Published) {
/// assert_not_published!(sent, "Rental", "rental_destroyed");
/// assert_not_published!(sent, "Account");
/// # }
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __dionysus_assert_not_published {
    ($published:expr, $model:literal $(,)?) => {
        $crate::__private::Expected::model($model).assert_not_published(&$published)
    };
    ($published:expr, $model:literal, $event:expr $(, $field:ident = $value:expr)* $(,)?) => {
        $crate::__private::Expected::model($model).event($event)$(.$field($value))*.assert_not_published(&$published)
    };
    ($published:expr, $model:ty $(,)?) => {
        $crate::__private::Expected::of::<$model>().assert_not_published(&$published)
    };
    ($published:expr, $model:ty, $event:expr $(, $field:ident = $value:expr)* $(,)?) => {
        $crate::__private::Expected::of::<$model>().event($event)$(.$field($value))*.assert_not_published(&$published)
    };
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(event: &str, topic: &str, records: Value) -> PublishedMessage {
        PublishedMessage {
            outbox_id: 1,
            model_name: "Rental".to_owned(),
            id: "1".to_owned(),
            event_name: event.to_owned(),
            topic: topic.to_owned(),
            key: "Rental:1".to_owned(),
            partition_key: Some("2".to_owned()),
            payload: Some(Envelope::single(event, "Rental", records).encode().unwrap()),
        }
    }

    fn published() -> Published {
        Published {
            messages: vec![
                message("rental_created", "v3_rentals", json!([{"id": 1, "name": "Loft", "links": {"account": 2}}])),
                message("rental_created", "v3_rentals_genesis", json!([{"id": 1}])),
            ],
            skipped: Vec::new(),
        }
    }

    #[test]
    fn expectations_narrow_by_each_argument() {
        let sent = published();
        assert_eq!(__dionysus_assert_published!(sent, "Rental", "rental_created").len(), 2);
        __dionysus_assert_published!(sent, "Rental", "rental_created", topic = "v3_rentals", key = "Rental:1", id = 1);
        __dionysus_assert_published!(sent, "Rental", "rental_created", partition_key = 2, count = 2);
        __dionysus_assert_published!(sent, "Rental", "rental_created", data = json!({"links": {"account": 2}}));
        __dionysus_assert_not_published!(sent, "Rental", "rental_created", data = json!({"name": "Barn"}));
        __dionysus_assert_not_published!(sent, "Rental", "rental_destroyed");
        __dionysus_assert_not_published!(sent, "Account");
        assert_eq!(sent.on_topic("v3_rentals_genesis").len(), 1);
        assert_eq!(sent.messages()[0].records(), [json!({"id": 1, "name": "Loft", "links": {"account": 2}})]);
    }

    #[test]
    fn a_failed_expectation_lists_what_was_published() {
        let sent = published();
        let failure = std::panic::catch_unwind(|| {
            __dionysus_assert_published!(sent, "Rental", "rental_updated", topic = "v3_rentals");
        })
        .unwrap_err();
        let text = failure.downcast_ref::<String>().unwrap();
        assert!(
            text.starts_with("expected a message of Rental `rental_updated` on v3_rentals, found 0; published:"),
            "{text}"
        );
        assert!(
            text.contains("#1 `rental_created` of Rental 1 on v3_rentals_genesis key Rental:1 partition key 2"),
            "{text}"
        );
    }

    #[test]
    fn tombstones_and_partitions() {
        let mut tombstone = message("rental_destroyed", "v3_rentals", Value::Null);
        tombstone.payload = Some(b"null".to_vec());
        assert!(tombstone.is_tombstone());
        assert!(!message("rental_created", "t", json!([])).is_tombstone());
        assert_eq!(tombstone.partition(3), partition_for(b"2", 3));
    }
}
