//! The consumer's side of the checkpoint log: the checksum that identifies an event, and the
//! rows a checkpointed handler's run writes (`dionysus_events` on an acknowledgement,
//! `dionysus_event_failures` on a failure), always on the connection and in the
//! transaction it is given. Reading, retrying and deleting them is `checkpoint`'s; when a
//! handler runs is `apply`'s.

use std::error::Error as StdError;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};

use super::batch::{sha256_hex, InboundMessage};
use super::events::ConsumedEvent;
use super::handler::{Ack, HandlerError};
use crate::consumer::replica::deserialize::deserialize_record;
use crate::schema::{dionysus_event_failures as failures, dionysus_events as events};
use crate::wire::envelope::{decode_with, Decoded, RawRecord, ReadRecords};

/// The checksum identifying an event of a message: the lowercase hex SHA-256 of the
/// message's raw payload (the bytes as read from Kafka) for the first event of its name in
/// the message; for the `n`-th (`n` ≥ 1) event of the same name in one message, of the
/// payload followed by `#n`. A tombstone's payload is the empty byte string.
pub fn checksum(payload: Option<&[u8]>, ordinal: usize) -> String {
    let payload = payload.unwrap_or_default();
    if ordinal == 0 {
        sha256_hex(payload)
    } else {
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(format!("#{ordinal}").as_bytes());
        sha256_hex(&bytes)
    }
}

/// Where an event came from, for the rows written about it.
pub(crate) struct Origin<'a> {
    pub(crate) group: &'a str,
    pub(crate) listener: &'a str,
    pub(crate) message: &'a InboundMessage,
    pub(crate) event: &'a ConsumedEvent,
    pub(crate) ordinal: usize,
    pub(crate) checksum: &'a str,
}

impl Origin<'_> {
    fn key(&self) -> Option<String> {
        self.message.key.as_deref().map(|key| String::from_utf8_lossy(key).into_owned())
    }

    /// The message's envelope as JSON: parsed when it is JSON, else as text.
    fn payload(&self) -> Option<Value> {
        self.message.payload.as_deref().map(|bytes| {
            serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        })
    }

    fn metadata(&self) -> Value {
        json!({
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "key": self.key(),
            "group_id": self.group,
            "listener": self.listener,
            "event_index": self.ordinal,
        })
    }
}

/// Whether this group's handler already saved the event with `checksum`.
pub(crate) async fn already_saved(
    conn: &mut AsyncPgConnection,
    group: &str,
    listener: &str,
    checksum: &str,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        events::table
            .filter(events::group_id.eq(group))
            .filter(events::listener.eq(listener))
            .filter(events::checksum.eq(checksum)),
    ))
    .get_result(conn)
    .await
}

/// Saves an acknowledged event; `None` when it was saved already (same group, handler and
/// checksum). Any failure row of the same event is removed: it is handled now.
pub(crate) async fn save_event(
    conn: &mut AsyncPgConnection,
    origin: &Origin<'_>,
    ack: &Ack,
) -> QueryResult<Option<i64>> {
    let id = diesel::insert_into(events::table)
        .values((
            events::topic.eq(&origin.message.topic),
            events::group_id.eq(origin.group),
            events::listener.eq(origin.listener),
            events::entity_id.eq(&ack.entity_id),
            events::event_time.eq(ack.event_time),
            events::event_type.eq(&origin.event.event_name),
            events::event_version.eq(&ack.event_version),
            events::checksum.eq(origin.checksum),
            events::payload.eq(origin.payload()),
            events::key.eq(origin.key()),
            events::partition.eq(origin.message.partition),
            events::offset.eq(origin.message.offset),
        ))
        .on_conflict_do_nothing()
        .returning(events::id)
        .get_result::<i64>(conn)
        .await
        .optional()?;
    clear_failure(conn, origin.group, origin.listener, origin.checksum).await?;
    Ok(id)
}

/// Removes the failure row of an event, if any.
pub(crate) async fn clear_failure(
    conn: &mut AsyncPgConnection,
    group: &str,
    listener: &str,
    checksum: &str,
) -> QueryResult<usize> {
    diesel::delete(
        failures::table
            .filter(failures::group_id.eq(group))
            .filter(failures::listener.eq(listener))
            .filter(failures::checksum.eq(checksum)),
    )
    .execute(conn)
    .await
}

/// What is kept of a handler's error: its class (the error type's name), its message and
/// the chain of its sources (the message first, then each source's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorParts {
    pub(crate) class: String,
    pub(crate) message: String,
    pub(crate) chain: Vec<String>,
}

impl ErrorParts {
    /// The parts of `error`; `class` is the type name the handler's output gave, if any.
    pub(crate) fn of(error: &HandlerError, class: Option<&'static str>) -> ErrorParts {
        let root: &(dyn StdError + 'static) = match error {
            HandlerError::Failed(source) => source.as_ref(),
            other => other,
        };
        let class = match (error, class) {
            (HandlerError::Failed(_), Some(class)) => class.to_owned(),
            (HandlerError::InvalidInput { .. }, _) => "dionysus::consumer::HandlerError::InvalidInput".to_owned(),
            _ => "dionysus::consumer::HandlerError".to_owned(),
        };
        let mut chain = Vec::new();
        let mut cause = Some(root);
        while let Some(current) = cause {
            let text = current.to_string();
            if chain.last() != Some(&text) {
                chain.push(text);
            }
            cause = current.source();
        }
        ErrorParts { class, message: root.to_string(), chain }
    }
}

/// Records (or updates) the failure row of an event: a second failure of the same event
/// (same group, handler and checksum) adds its `attempts` and moves `last_failed_at`.
pub(crate) async fn record_failure(
    conn: &mut AsyncPgConnection,
    origin: &Origin<'_>,
    error: &ErrorParts,
    attempts: i32,
    first_failed_at: DateTime<Utc>,
) -> QueryResult<i64> {
    let now = Utc::now();
    diesel::insert_into(failures::table)
        .values((
            failures::topic.eq(&origin.message.topic),
            failures::group_id.eq(origin.group),
            failures::listener.eq(origin.listener),
            failures::event_type.eq(&origin.event.event_name),
            failures::entity_id.eq(entity_id_of(origin.event)),
            failures::checksum.eq(origin.checksum),
            failures::payload.eq(origin.payload()),
            failures::metadata.eq(origin.metadata()),
            failures::error_class.eq(&error.class),
            failures::error_message.eq(&error.message),
            failures::error_backtrace.eq(json!(error.chain)),
            failures::key.eq(origin.key()),
            failures::partition.eq(origin.message.partition),
            failures::offset.eq(origin.message.offset),
            failures::attempts.eq(attempts),
            failures::first_failed_at.eq(first_failed_at),
            failures::last_failed_at.eq(now),
        ))
        .on_conflict((failures::group_id, failures::listener, failures::checksum))
        .do_update()
        .set((
            failures::attempts.eq(failures::attempts + excluded(failures::attempts)),
            failures::last_failed_at.eq(excluded(failures::last_failed_at)),
            failures::error_class.eq(excluded(failures::error_class)),
            failures::error_message.eq(excluded(failures::error_message)),
            failures::error_backtrace.eq(excluded(failures::error_backtrace)),
            failures::metadata.eq(excluded(failures::metadata)),
            failures::partition.eq(excluded(failures::partition)),
            failures::offset.eq(excluded(failures::offset)),
        ))
        .returning(failures::id)
        .get_result(conn)
        .await
}

/// The synced id of the event's only record, as text: what a failure row shows as its
/// entity before any handler acknowledged it.
fn entity_id_of(event: &ConsumedEvent) -> Option<String> {
    let [record] = event.transformed_data.as_slice() else { return None };
    match record.synced_id()? {
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads records as the consumer does, keeping the first failure.
#[derive(Default)]
struct Records {
    failed: Option<String>,
}

impl ReadRecords for Records {
    type Record = crate::consumer::replica::Record;

    fn start(&mut self) {
        self.failed = None;
    }

    fn read(&mut self, _event: usize, index: usize, record: RawRecord) -> Self::Record {
        deserialize_record(index, record).unwrap_or_else(|error| {
            self.failed.get_or_insert_with(|| error.to_string());
            Self::Record::default()
        })
    }
}

/// The `ordinal`-th event named `event_name` of a stored message, as handlers see it (no
/// local changes). `Err` says why it cannot be had.
pub(crate) fn event_of(message: &InboundMessage, event_name: &str, ordinal: usize) -> Result<ConsumedEvent, String> {
    let mut reader = Records::default();
    let decoded = decode_with(message.payload.as_deref(), &mut reader)
        .map_err(|error| format!("undecodable payload: {error}"))?;
    if let Some(failed) = reader.failed {
        return Err(format!("a record does not deserialize: {failed}"));
    }
    let Decoded::Events(found) = decoded else { return Err("the payload holds no events".to_owned()) };
    let event = found
        .into_iter()
        .filter(|event| event.event == event_name)
        .nth(ordinal)
        .ok_or_else(|| format!("the payload holds no event `{event_name}` at position {ordinal}"))?;
    Ok(ConsumedEvent {
        topic: message.topic.clone(),
        partition: message.partition,
        offset: message.offset,
        event_name: event.event,
        model_name: event.model_name,
        transformed_data: event.data,
        local_changes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_the_payloads_sha256_then_salted_by_position() {
        assert_eq!(checksum(Some(b"abc"), 0), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(checksum(Some(b"abc"), 1), sha256_hex(b"abc#1"));
        assert_ne!(checksum(Some(b"abc"), 1), checksum(Some(b"abc"), 2));
        assert_eq!(checksum(None, 0), sha256_hex(b""));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_parts_keep_the_class_message_and_chain() {
        let error = HandlerError::Failed(Box::new(Outer(std::io::Error::other("inner"))));
        let parts = ErrorParts::of(&error, Some("my::Outer"));
        assert_eq!(parts.class, "my::Outer");
        assert_eq!(parts.message, "outer");
        assert_eq!(parts.chain, ["outer", "inner"]);
    }

    #[test]
    fn a_stored_message_gives_back_its_event() {
        let payload = br#"{"message":[{"event":"rental_updated","model_name":"Rental","data":[{"id":1}]},{"event":"rental_updated","model_name":"Rental","data":[{"id":2}]}]}"#;
        let message =
            InboundMessage { topic: "t".into(), partition: 1, offset: 5, key: None, payload: Some(payload.to_vec()) };
        let second = event_of(&message, "rental_updated", 1).unwrap();
        assert_eq!(second.transformed_data[0].synced_id(), Some(&json!(2)));
        assert!(event_of(&message, "rental_updated", 2).is_err());
        assert!(event_of(&message, "rental_created", 0).is_err());
    }
}
