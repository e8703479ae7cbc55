//! One batch of one partition, from raw messages to committed replica rows: decode, check
//! every record against its replica model (bad messages are set aside for the dead-letter
//! topic, whole), remove duplicates (C-18), then apply everything inside the caller's
//! transaction with set-based statements, level by level (aggregate roots, then their
//! sideloads). A row touched by several messages is written once per message, in order; a
//! row touched several times by one message is read once and its changes are folded in
//! order in memory. Either way each change sees the ones before it, and the work per message
//! is linear in its size; its records are capped ([`Rules::max_records`]).
//!
//! Memory per message is a small multiple of its size, because each record exists in one
//! full form only: the event-bus record subscribers receive ([`Record`]). Records are read
//! into that form while the message is decoded (never raw and final at once), checked
//! whole without copying anything, and written from the events themselves, borrowed, at
//! most [`ROWS_PER_STATEMENT`] rows per statement: a row's values (and `synced_data`, as
//! JSON text made from the record) exist only while their statement is built and runs.
//! What remains is bookkeeping of a few dozen bytes per record. The event-bus form is the
//! floor: a `serde_json` map per record, about ten times the JSON of a small record. The
//! consumer's resident memory rises by at most 16 times a message of many records
//! (`tests/it/hostile.rs` holds it to that); records made mostly of sideloads cost up to
//! about 25 times, each sideload being a record of its own. Local changes (C-15), when
//! someone listens, add their own old and new values.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value};

use super::dedup::{group_key, keep_latest, record_key};
use super::events::{ConsumedEvent, LocalChange, MessageFilter};
use crate::consumer::replica::deserialize::{deserialize_record, DeserializeError};
use crate::consumer::replica::plan::RowPlan;
use crate::consumer::replica::plan::{
    check, guard_from_prepared, normalize_row, plan, prepare, prepare_columns, take_intent, ChangeSet, Intent,
    Prepared, RecordError,
};
use crate::consumer::replica::sql::{self, id_key, ColumnTypes, UpsertRow};
use crate::consumer::replica::{ColumnKind, Record, ReplicaDescriptor, Replicas};
use crate::telemetry::Report;
use crate::wire::envelope::{decode_with, Decoded, EnvelopeError, RawRecord, ReadRecords};
use crate::wire::naming::{event_prefix, EventKind};

/// A message as read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, e.g. `Rental:1`.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a Kafka null (a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// A message that cannot be processed and goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original message.
    pub message: InboundMessage,
    /// Why, in a word: `oversized`, `malformed_json`, `invalid_envelope`, `invalid_record`,
    /// `too_many_records`, `unknown_model`, `missing_id`, `invalid_id`, `wrong_type`,
    /// `timestamp_in_future`, `database_rejected`, `undecodable_avro` (an Avro topic's message
    /// that does not decode with its schemas), and for a handler running inside the batch's
    /// transaction `handler_input_invalid` or `handler_failed`.
    pub reason: &'static str,
    /// The error in full.
    pub error: String,
}

/// What to do with a message whose model has no replica here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownModel {
    /// Skip the unknown model's records and apply the message's other events, as
    /// dionysus-rb does (C-17, the default); the event is still reported on the event bus,
    /// with no local changes, and logged at debug level.
    Skip,
    /// Send the whole message to the dead-letter topic (reason `unknown_model`), so none of
    /// its events is applied: for topics where a model nobody replicates means a missing
    /// declaration. The unknown event is still reported on the event bus.
    DeadLetter,
}

/// The batch rules a consumer applies (built by `ConsumerBuilder`).
#[derive(Clone)]
pub(crate) struct Rules {
    pub(crate) replicas: Replicas,
    pub(crate) import_topics: HashSet<String>,
    pub(crate) filters: Vec<Arc<dyn MessageFilter>>,
    pub(crate) remove_duplicates: bool,
    pub(crate) max_message_bytes: usize,
    /// Records per message at most, sideloads included (`too_many_records` beyond).
    pub(crate) max_records: usize,
    pub(crate) unknown_model: UnknownModel,
    pub(crate) processing_mutex: bool,
    /// How far in the future an event time may be before its message is dead-lettered.
    pub(crate) max_future_skew: std::time::Duration,
    /// Whether local changes (C-15) are computed: only when an event-bus subscriber or a
    /// handler of a consumed topic can see them. Computing them reads every row before it
    /// is written; without them, rows are written blind and PostgreSQL applies the guard.
    pub(crate) track_changes: bool,
    /// Column types of the replica tables, read once.
    pub(crate) column_types: ColumnTypes,
    /// Whether no one reads what a batch did: no local changes, filters, event-bus
    /// subscribers, handlers of the consumed topics or cascades. The Kafka loop then writes
    /// its usual batches straight from the messages ([`super::direct`]).
    pub(crate) records_unread: bool,
}

/// One event ready to apply.
struct EventWork {
    /// Offset of the message it came from.
    message: i64,
    bus: ConsumedEvent,
    /// Where and how its records are written; `None` only reports the event (an unknown
    /// event type, or a model without replica).
    target: Option<Target>,
}

/// The replica an event's records go to and how they are written.
#[derive(Clone, Copy)]
struct Target {
    replica: &'static ReplicaDescriptor,
    kind: EventKind,
    /// Import mode (C-8): `_created` and `_destroyed` events of an import topic.
    import: bool,
}

enum Checked {
    Good(Vec<EventWork>),
    Bad(DeadLetter, Vec<ConsumedEvent>),
}

/// A batch checked and ready to apply.
pub(crate) struct PreparedBatch {
    /// Messages to send to the dead-letter topic before the batch is committed.
    pub(crate) dead_letters: Vec<DeadLetter>,
    /// In processing order: events to apply (and report) and events only to report.
    work: Vec<Work>,
    /// Processing-mutex names of every message (C-3), when the mutex is on.
    pub(crate) locks: Vec<String>,
    /// Whether anyone listens for local changes (C-15); see [`Rules::track_changes`].
    track_changes: bool,
    /// The consumer's cache of column types.
    column_types: ColumnTypes,
    /// The replica models, to find the sideloads' tables.
    replicas: Replicas,
}

enum Work {
    Apply(EventWork),
    Report(ConsumedEvent),
}

impl PreparedBatch {
    /// The replicas whose tables the batch writes (its records', their sideloads' and the
    /// children its links resolve), each once.
    pub(crate) fn replicas(&self) -> Vec<&'static ReplicaDescriptor> {
        let mut found: Vec<&'static ReplicaDescriptor> = Vec::new();
        let mut add = |replica: &'static ReplicaDescriptor| {
            if !found.iter().any(|known| std::ptr::eq(*known, replica)) {
                found.push(replica);
            }
        };
        let mut pending: Vec<(&'static ReplicaDescriptor, &Record)> = self
            .work
            .iter()
            .filter_map(|work| match work {
                Work::Apply(EventWork { bus, target: Some(target), .. }) => {
                    Some(bus.transformed_data.iter().map(|record| (target.replica, record)))
                }
                Work::Apply(_) | Work::Report(_) => None,
            })
            .flatten()
            .collect();
        while let Some((replica, record)) = pending.pop() {
            add(replica);
            for child in children(record, replica, &self.replicas) {
                match child {
                    Child::Many { replica, records, .. } => {
                        add(replica);
                        pending.extend(records.iter().map(|record| (replica, record)));
                    }
                    Child::One { replica, record, .. } => pending.push((replica, record)),
                }
            }
        }
        found
    }
}

/// `Dionysus-<key>`, the processing-mutex name of a message (C-3); a missing key gets a
/// random UUID, which (as in dionysus-rb) excludes nothing. A key PostgreSQL text cannot
/// carry (a NUL byte, invalid UTF-8) is named by its digest, `Dionysus-sha256:<hex>`, so any
/// key bytes give a usable lock that only that key takes.
pub fn lock_name(key: Option<&[u8]>) -> String {
    match key {
        Some(key) => match std::str::from_utf8(key) {
            Ok(text) if !text.contains('\0') => format!("Dionysus-{text}"),
            _ => format!("Dionysus-sha256:{}", sha256_hex(key)),
        },
        None => format!("Dionysus-{}", random_uuid()),
    }
}

/// SHA-256 in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Why a record is set aside: the dead letter's reason and error.
#[derive(Debug)]
struct Rejection {
    reason: &'static str,
    error: String,
}

impl From<RecordError> for Rejection {
    fn from(error: RecordError) -> Rejection {
        Rejection { reason: error.reason(), error: error.to_string() }
    }
}

/// Whether `id` is an integer id as written in its one canonical form: a JSON integer that
/// fits a BIGINT, or a string of decimal digits without sign, padding or leading zeros
/// (`-0`, `80.0`, `8e1`, `" 80"`, `"080"` are not), so that the id checked is the id written.
pub(super) fn is_canonical_integer_id(id: &Value) -> bool {
    match id {
        Value::Number(number) => number.is_i64() || (number.is_u64() && number.as_i64().is_some()),
        Value::String(text) => canonical_integer(text).is_some(),
        _ => false,
    }
}

/// The integer `text` writes in its one canonical form (as `i64` prints it: decimal digits,
/// a `-` only before a non-zero number, no `+`, padding or leading zeros).
fn canonical_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && !(text.starts_with('-') && digits == "0");
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

/// The reason of a dead letter whose Avro message does not decode.
#[cfg(feature = "avro")]
const UNDECODABLE_AVRO: &str = "undecodable_avro";

/// What stands in a batch for an Avro message that did not decode (the consumer's Avro
/// step restates messages before the batch is prepared); [`rejection`] reads it back.
#[cfg(feature = "avro")]
const REJECTED: &[u8] = b"\0dionysus:undecodable_avro\0";

/// The stand-in for an Avro message that did not decode, for `error`.
#[cfg(feature = "avro")]
pub(crate) fn rejected_payload(error: &str) -> Vec<u8> {
    let mut payload = REJECTED.to_vec();
    payload.extend_from_slice(error.as_bytes());
    payload
}

/// The error a stand-in of [`rejected_payload`] carries.
#[cfg(feature = "avro")]
pub(super) fn rejection(payload: &[u8]) -> Option<String> {
    payload.strip_prefix(REJECTED).map(|error| String::from_utf8_lossy(error).into_owned())
}

/// A random (version 4) UUID, hyphenated.
fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().hyphenated().to_string()
}

/// A message as decoded: its records in their canonical form (C-6), read as they were
/// decoded, so a large message is never held twice.
struct Read {
    decoded: Decoded<Record>,
    /// Per event whose records do not all deserialize, its first failure, in event order.
    failed: Vec<(usize, DeserializeError)>,
    /// What C-18 reads of the message's first record, when duplicates are removed.
    key: Option<(String, Option<DateTime<Utc>>)>,
}

impl Read {
    /// The message's C-18 group when it holds one event of one record; `None` otherwise
    /// (the strategy then leaves the batch alone).
    fn group_key(&mut self) -> Option<(String, Option<DateTime<Utc>>)> {
        let Decoded::Events(events) = &self.decoded else { return None };
        let [event] = events.as_slice() else { return None };
        if event.data.len() != 1 {
            return None;
        }
        Some(group_key(&event.event, self.key.take()?))
    }
}

/// Turns each record into its canonical form while the message is decoded.
#[derive(Default)]
struct RecordReader {
    /// Whether C-18 will look at the message ([`Read::key`]).
    keys: bool,
    failed: Vec<(usize, DeserializeError)>,
    first: Option<(String, Option<DateTime<Utc>>)>,
}

impl ReadRecords for RecordReader {
    type Record = Record;

    fn start(&mut self) {
        self.failed.clear();
        self.first = None;
    }

    fn read(&mut self, event: usize, index: usize, record: RawRecord) -> Record {
        if self.keys && event == 0 && index == 0 {
            self.first = Some(record_key(&record));
        }
        // An event with a bad record is not applied: its other records are not needed.
        if self.failed.last().is_some_and(|(failed, _)| *failed == event) {
            return Record::default();
        }
        deserialize_record(index, record).unwrap_or_else(|error| {
            self.failed.push((event, error));
            Record::default()
        })
    }
}

impl Rules {
    /// Rules of an unwatched consumer of `replicas` with the usual limits, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(replicas: Replicas) -> Rules {
        Rules {
            replicas,
            import_topics: HashSet::new(),
            filters: Vec::new(),
            remove_duplicates: false,
            max_message_bytes: 1 << 20,
            max_records: 100,
            unknown_model: UnknownModel::Skip,
            processing_mutex: false,
            max_future_skew: std::time::Duration::from_secs(60),
            track_changes: false,
            column_types: ColumnTypes::default(),
            records_unread: true,
        }
    }

    /// Decodes and checks every message; nothing touches the database.
    pub(crate) fn prepare(&self, messages: &[InboundMessage]) -> PreparedBatch {
        let mut checked: Vec<(usize, Checked)> = Vec::with_capacity(messages.len());
        let mut decoded_good: Vec<(usize, Read)> = Vec::new();
        let latest = Utc::now() + chrono::TimeDelta::from_std(self.max_future_skew).unwrap_or(chrono::TimeDelta::MAX);
        for (index, message) in messages.iter().enumerate() {
            match self.decode(message) {
                Ok(decoded) => decoded_good.push((index, decoded)),
                Err((reason, error)) => {
                    let dead = DeadLetter { message: message.clone(), reason, error };
                    checked.push((index, Checked::Bad(dead, Vec::new())));
                }
            }
        }
        // C-18 over the messages that decoded.
        let keys: Option<Vec<_>> = if self.remove_duplicates {
            decoded_good.iter_mut().map(|(_, read)| read.group_key()).collect()
        } else {
            None
        };
        let order: Vec<usize> = match keys {
            Some(keys) => keep_latest(&keys),
            None => (0..decoded_good.len()).collect(),
        };
        let mut slots: Vec<Option<(usize, Read)>> = decoded_good.into_iter().map(Some).collect();
        let mut positioned: Vec<(usize, Checked)> = Vec::new();
        for position in order {
            if let Some((index, read)) = slots.get_mut(position).and_then(Option::take) {
                positioned.push((index, self.check(&messages[index], read, latest)));
            }
        }
        // Dead letters first by offset; kept work in dedup order.
        let mut dead_letters = Vec::new();
        let mut work = Vec::new();
        for (_, item) in checked.into_iter().chain(positioned) {
            match item {
                Checked::Good(events) => work.extend(events.into_iter().map(Work::Apply)),
                Checked::Bad(dead, report) => {
                    dead_letters.push(dead);
                    work.extend(report.into_iter().map(Work::Report));
                }
            }
        }
        dead_letters.sort_by_key(|dead: &DeadLetter| dead.message.offset);
        let locks = if self.processing_mutex {
            messages.iter().map(|message| lock_name(message.key.as_deref())).collect()
        } else {
            Vec::new()
        };
        PreparedBatch {
            dead_letters,
            work,
            locks,
            track_changes: self.track_changes,
            column_types: self.column_types.clone(),
            replicas: self.replicas.clone(),
        }
    }

    fn decode(&self, message: &InboundMessage) -> Result<Read, (&'static str, String)> {
        let dead = |reason, error: String| (reason, error);
        if let Some(payload) = &message.payload {
            if payload.len() > self.max_message_bytes {
                return Err(dead(
                    "oversized",
                    format!("payload of {} bytes exceeds the limit of {} bytes", payload.len(), self.max_message_bytes),
                ));
            }
        }
        #[cfg(feature = "avro")]
        if let Some(reason) = message.payload.as_deref().and_then(rejection) {
            return Err(dead(UNDECODABLE_AVRO, reason));
        }
        let mut reader = RecordReader { keys: self.remove_duplicates, ..RecordReader::default() };
        match decode_with(message.payload.as_deref(), &mut reader) {
            Ok(decoded) => Ok(Read { decoded, failed: reader.failed, key: reader.first }),
            Err(error @ EnvelopeError::Json(_)) => Err(dead("malformed_json", Report(&error).to_string())),
            Err(error @ EnvelopeError::Shape(_)) => Err(dead("invalid_envelope", Report(&error).to_string())),
        }
    }

    fn check(&self, message: &InboundMessage, read: Read, latest: DateTime<Utc>) -> Checked {
        let Read { decoded, mut failed, .. } = read;
        let Decoded::Events(events) = decoded else { return Checked::Good(Vec::new()) };
        let topic = &message.topic;
        // The whole "message" array is only needed by filters (C-20).
        let whole = if self.filters.is_empty() { Value::Null } else { message_array(message) };
        let import = self.import_topics.contains(topic.as_str());
        let mut work = Vec::with_capacity(events.len());
        let mut failure: Option<(&'static str, String)> = None;
        // Records of the message so far, sideloads included; counted before any is checked.
        let mut records_seen = 0usize;
        // Failures in event order, first first.
        failed.reverse();
        for (position, event) in events.into_iter().enumerate() {
            if failed.last().is_some_and(|(failed, _)| *failed == position) {
                if let Some((_, error)) = failed.pop() {
                    failure.get_or_insert(("invalid_record", format!("{} {}: {error}", event.model_name, event.event)));
                }
                continue;
            }
            let records = event.data;
            records_seen = records_seen.saturating_add(records.iter().map(count_records).sum::<usize>());
            if records_seen > self.max_records {
                let error = format!(
                    "more than {} records in one message (sideloaded ones included); the limit is \
                     DIONYSUS_CONSUMER_MAX_RECORDS_PER_MESSAGE",
                    self.max_records
                );
                let dead = DeadLetter { message: message.clone(), reason: "too_many_records", error };
                return Checked::Bad(dead, Vec::new());
            }
            if let Some(filter) = self.filters.iter().find(|f| f.ignore_message(topic, &whole, &records)) {
                filter.notify_about_ignored_message(topic, &whole);
                continue;
            }
            let kind = EventKind::classify(&event.event);
            let bus = ConsumedEvent {
                topic: topic.clone(),
                partition: message.partition,
                offset: message.offset,
                event_name: event.event,
                model_name: event.model_name,
                transformed_data: records,
                local_changes: Vec::new(),
            };
            let Some(kind) = kind else {
                tracing::debug!(topic = %topic, event = %bus.event_name, "unknown event type; not persisted");
                work.push(EventWork { message: message.offset, bus, target: None });
                continue;
            };
            let Some(replica) = self.replicas.find_on(topic, &bus.model_name) else {
                if self.unknown_model == UnknownModel::DeadLetter {
                    failure.get_or_insert((
                        "unknown_model",
                        format!("no replica model for `{}` (event {} on {topic})", bus.model_name, bus.event_name),
                    ));
                } else {
                    tracing::debug!(topic = %topic, model = %bus.model_name, "unknown model; not persisted");
                }
                work.push(EventWork { message: message.offset, bus, target: None });
                continue;
            };
            // Checked here, whole, so that a bad record sends its message to the dead-letter
            // topic before anything is written; the rows are computed again when written,
            // a few at a time, so no second copy of the message is held meanwhile.
            let checked = bus.transformed_data.iter().try_for_each(|record| self.check_record(replica, record, latest));
            match checked {
                Ok(()) => {
                    let import = import && kind != EventKind::Updated;
                    work.push(EventWork {
                        message: message.offset,
                        bus,
                        target: Some(Target { replica, kind, import }),
                    });
                }
                Err(Rejection { reason, error }) => {
                    tracing::error!(topic = %topic, offset = message.offset, reason, "{error}");
                    failure.get_or_insert((reason, error));
                }
            }
        }
        match failure {
            None => Checked::Good(work),
            Some((reason, error)) => {
                // Unknown models are still reported (C-17), with no local changes.
                let report =
                    if reason == "unknown_model" { work.into_iter().map(|w| w.bus).collect() } else { Vec::new() };
                Checked::Bad(DeadLetter { message: message.clone(), reason, error }, report)
            }
        }
    }

    /// Checks `record` (and its sideloads) against `replica`; event times after `latest` are
    /// refused.
    fn check_record(
        &self,
        replica: &'static ReplicaDescriptor,
        record: &Record,
        latest: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        if let Some(id) = record.synced_id() {
            let integer = replica.column(replica.synced_id).is_some_and(|c| c.kind == ColumnKind::Integer);
            if integer && !is_canonical_integer_id(id) {
                let mut shown = id.to_string();
                if shown.len() > 80 {
                    shown = format!("{}...", &shown[..shown.floor_char_boundary(77)]);
                }
                return Err(Rejection {
                    reason: "invalid_id",
                    error: format!(
                        "{} id {shown} is not an integer id in canonical form (a JSON integer, or decimal digits \
                         without sign, fraction, exponent or leading zeros)",
                        replica.model
                    ),
                });
            }
        }
        let event_time = check(replica, record)?;
        if let Some(time) = event_time.filter(|time| *time > latest) {
            return Err(Rejection {
                reason: "timestamp_in_future",
                error: format!(
                    "{} {}: event time {} is more than {} s in the future; stored, it would make every \
                     later update of the record look stale",
                    replica.model,
                    record.synced_id().unwrap_or(&Value::Null),
                    time.to_rfc3339(),
                    self.max_future_skew.as_secs()
                ),
            });
        }
        for child in children(record, replica, &self.replicas) {
            match child {
                Child::Many { replica, records, .. } => {
                    records.iter().try_for_each(|record| self.check_record(replica, record, latest))?;
                }
                Child::One { replica, record, .. } => self.check_record(replica, record, latest)?,
            }
        }
        Ok(())
    }
}

/// A sideloaded relationship of a record whose model has a replica here (the others, and
/// links sent without their records, are left out).
enum Child<'a> {
    /// A to-many link and its records (possibly none: the parent then has no children).
    Many { replica: &'static ReplicaDescriptor, name: &'a str, records: &'a [Record] },
    /// A to-one link (or polymorphic type) and its record.
    One { replica: &'static ReplicaDescriptor, name: &'a str, record: &'a Record },
}

/// The sideloads of `record` (written to `parent`) to check and write, to-many ones first,
/// each in link order. A sideloaded model goes to its replica on the parent's topic.
fn children<'a: 'r, 'r>(
    record: &'a Record,
    parent: &'static ReplicaDescriptor,
    replicas: &'r Replicas,
) -> impl Iterator<Item = Child<'a>> + 'r {
    let topic = parent.topic;
    let many = record.has_many.iter().filter_map(move |(name, records)| {
        // Links without sideloaded records (the usual case) need no model lookup.
        let records = records.as_deref()?;
        Some(Child::Many { replica: replicas.find_on(topic, name)?, name, records })
    });
    let one = record.has_one.iter().filter_map(move |(name, child)| {
        let record = child.as_ref()?;
        Some(Child::One { replica: replicas.find_on(topic, name)?, name, record })
    });
    many.chain(one)
}

/// A record and its sideloaded records, recursively.
fn count_records(record: &Record) -> usize {
    let many: usize = record.has_many.iter().flat_map(|(_, records)| records.iter().flatten()).map(count_records).sum();
    let one: usize = record.has_one.iter().filter_map(|(_, record)| record.as_ref()).map(count_records).sum();
    1 + many + one
}

fn message_array(message: &InboundMessage) -> Value {
    message
        .payload
        .as_deref()
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .and_then(|value| value.get("message").cloned())
        .unwrap_or(Value::Null)
}

/// One record to write at some level, borrowed from its event.
struct Unit<'a> {
    record: &'a Record,
    /// Its synced id (checked present).
    id: &'a Value,
    replica: &'static ReplicaDescriptor,
    /// Name under which local changes are reported.
    change_name: &'a str,
    kind: EventKind,
    aggregate_root: bool,
    import: bool,
    /// Index of its event.
    event: usize,
    /// Offset of the message it came from.
    message: i64,
}

impl<'a> Unit<'a> {
    /// A sideloaded record of this one's, of `replica`, under the link `name`.
    fn child(&self, record: &'a Record, replica: &'static ReplicaDescriptor, name: &'a str) -> Unit<'a> {
        Unit {
            record,
            id: synced_id(record),
            replica,
            change_name: name,
            kind: self.kind,
            aggregate_root: false,
            import: false,
            event: self.event,
            message: self.message,
        }
    }

    /// The row values of the record, computed anew (the record was checked before).
    fn prepare(&self) -> Result<Prepared, diesel::result::Error> {
        prepare(self.replica, self.record).map_err(unexpected)
    }
}

/// A record that was checked but fails when written: reported as the database would
/// report a value it cannot take.
fn unexpected(error: impl std::error::Error + Send + Sync + 'static) -> diesel::result::Error {
    diesel::result::Error::SerializationError(Box::new(error))
}

/// A record's synced id; `null` when missing (a checked record has one).
fn synced_id(record: &Record) -> &Value {
    static NULL: Value = Value::Null;
    record.synced_id().unwrap_or(&NULL)
}

/// What every write of a batch needs.
struct Scope<'s> {
    replicas: &'s Replicas,
    now: DateTime<Utc>,
    /// See [`Rules::track_changes`].
    track_changes: bool,
    column_types: &'s ColumnTypes,
}

/// The local changes of a batch's events (C-15), gathered while the events are borrowed.
struct Changes<'a> {
    /// Per event, in the order the changes were made.
    lists: Vec<Vec<LocalChange>>,
    /// (event, model, synced id) → position of its entry in the event's list.
    index: HashMap<(usize, &'a str, Exact<'a>), usize>,
}

impl<'a> Changes<'a> {
    /// Adds what applying `unit` changed to its event's local changes, replacing the event's
    /// earlier entry for the same model and id (C-15); an empty change is not reported.
    fn add(&mut self, unit: &Unit<'a>, changes: ChangeSet) {
        if changes.is_empty() {
            return;
        }
        let Some(list) = self.lists.get_mut(unit.event) else { return };
        let change = LocalChange { model: unit.change_name.to_owned(), synced_id: unit.id.clone(), changes };
        match self.index.entry((unit.event, unit.change_name, Exact(unit.id))) {
            Entry::Occupied(slot) => list[*slot.get()] = change,
            Entry::Vacant(slot) => {
                slot.insert(list.len());
                list.push(change);
            }
        }
    }
}

/// A JSON value as a hash key, equal exactly when the values are (`Value`'s own equality).
#[derive(Clone, Copy)]
struct Exact<'a>(&'a Value);

impl PartialEq for Exact<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

// JSON has no NaN: `Value`'s equality is an equivalence.
impl Eq for Exact<'_> {}

impl Hash for Exact<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.0 {
            Value::String(text) => text.hash(state),
            // Equal numbers have equal `f64` values (and `0.0` equals `-0.0`).
            Value::Number(number) => {
                number.as_f64().map_or(0, |float| if float == 0.0 { 0 } else { float.to_bits() }).hash(state)
            }
            Value::Bool(boolean) => boolean.hash(state),
            Value::Null | Value::Array(_) | Value::Object(_) => {}
        }
    }
}

/// A row's synced id as a hash key, equal exactly when the ids' [`id_key`]s are, without
/// making text of integer ids.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) enum RowKey<'a> {
    Integer(i64),
    Text(&'a str),
    Owned(Box<str>),
}

impl<'a> RowKey<'a> {
    pub(super) fn of(id: &'a Value) -> RowKey<'a> {
        match id {
            Value::String(text) => canonical_integer(text).map_or(RowKey::Text(text), RowKey::Integer),
            Value::Number(number) => match number.as_i64() {
                Some(integer) => RowKey::Integer(integer),
                None => RowKey::Owned(number.to_string().into()),
            },
            other => {
                let text = other.to_string();
                canonical_integer(&text).map_or_else(|| RowKey::Owned(text.into()), RowKey::Integer)
            }
        }
    }

    /// The same key, holding its text.
    pub(super) fn into_owned(self) -> RowKey<'static> {
        match self {
            RowKey::Integer(integer) => RowKey::Integer(integer),
            RowKey::Text(text) => RowKey::Owned(text.into()),
            RowKey::Owned(text) => RowKey::Owned(text),
        }
    }
}

/// A child replica and the `(parent id, child ids)` links to resolve on it.
type Resolve<'a> = (&'static ReplicaDescriptor, Vec<(&'a Value, Vec<&'a Value>)>);

/// Rows written by one statement at most. The values of a row are computed from its record
/// when its statement is built and dropped once it ran, so this bounds what a write holds
/// beyond the events themselves, whatever the size of the message.
pub(super) const ROWS_PER_STATEMENT: usize = 1_000;

/// Applies a prepared batch in the caller's transaction and returns the events to report.
/// Takes the batch's work (its events move into the result); the dead letters stay.
///
/// The rows are written from the events' records themselves, which are borrowed meanwhile:
/// no other copy of a record is held longer than the statement that writes it.
pub(crate) async fn apply(
    conn: &mut AsyncPgConnection,
    batch: &mut PreparedBatch,
    now: DateTime<Utc>,
) -> Result<Vec<ConsumedEvent>, diesel::result::Error> {
    let work = std::mem::take(&mut batch.work);
    let mut events: Vec<ConsumedEvent> = Vec::with_capacity(work.len());
    // (event index, message, target): the events whose records are written.
    let mut roots: Vec<(usize, i64, Target)> = Vec::new();
    for item in work {
        match item {
            Work::Report(event) => events.push(event),
            Work::Apply(EventWork { message, bus, target }) => {
                if let Some(target) = target {
                    roots.push((events.len(), message, target));
                }
                events.push(bus);
            }
        }
    }
    let scope =
        Scope { replicas: &batch.replicas, now, track_changes: batch.track_changes, column_types: &batch.column_types };
    let changes = write(conn, &events, &roots, &scope).await?;
    for (event, changes) in events.iter_mut().zip(changes) {
        event.local_changes = changes;
    }
    Ok(events)
}

/// Writes the records of `roots` and their sideloads, level by level; returns each event's
/// local changes.
async fn write<'a>(
    conn: &mut AsyncPgConnection,
    events: &'a [ConsumedEvent],
    roots: &[(usize, i64, Target)],
    scope: &Scope<'_>,
) -> Result<Vec<Vec<LocalChange>>, diesel::result::Error> {
    let mut changes = Changes { lists: vec![Vec::new(); events.len()], index: HashMap::new() };
    let mut level: Vec<Unit<'a>> = roots
        .iter()
        .flat_map(|&(event, message, Target { replica, kind, import })| {
            let bus = &events[event];
            bus.transformed_data.iter().map(move |record| Unit {
                record,
                id: synced_id(record),
                replica,
                change_name: &bus.model_name,
                kind,
                aggregate_root: true,
                import,
                event,
                message,
            })
        })
        .collect();
    // (child table, foreign key) → [(parent id, child ids)] in order.
    let mut resolves: BTreeMap<(&'static str, String), Resolve<'a>> = BTreeMap::new();
    while !level.is_empty() {
        let applied = apply_level(conn, &level, &mut changes, scope).await?;
        let mut next = Vec::new();
        for (unit, applied) in level.iter().zip(applied) {
            if !applied || unit.import {
                continue;
            }
            for child in children(unit.record, unit.replica, scope.replicas) {
                match child {
                    Child::Many { replica, name, records } => {
                        let foreign_key = format!("synced_{}_id", event_prefix(unit.replica.model));
                        if replica.column(&foreign_key).is_some() {
                            resolves
                                .entry((replica.table, foreign_key))
                                .or_insert_with(|| (replica, Vec::new()))
                                .1
                                .push((unit.id, records.iter().map(synced_id).collect()));
                        }
                        next.extend(records.iter().map(|record| unit.child(record, replica, name)));
                    }
                    Child::One { replica, name, record } => next.push(unit.child(record, replica, name)),
                }
            }
        }
        level = next;
    }
    for ((_, foreign_key), (child, links)) in resolves {
        sql::resolve_to_many(conn, child, &foreign_key, final_links(links)).await?;
    }
    Ok(changes.lists)
}

/// The links that hold after applying `links` in order: a parent's later list replaces its
/// earlier one, and a child listed by a later parent leaves the earlier parent's list.
///
/// Linear: a parent's last list is the one that holds, and a child stays in it only when no
/// later list (of any parent) names it.
fn final_links<V: Borrow<Value>>(links: Vec<(V, Vec<V>)>) -> Vec<(V, Vec<V>)> {
    // Whether each list holds, and each listed child (in order, all lists together) stays.
    let (lists_kept, ids_kept): (Vec<bool>, Vec<bool>) = {
        let mut last_list: HashMap<Exact<'_>, usize> = HashMap::new();
        let mut last_naming: HashMap<Exact<'_>, usize> = HashMap::new();
        for (position, (parent, ids)) in links.iter().enumerate() {
            last_list.insert(Exact(parent.borrow()), position);
            for id in ids {
                last_naming.insert(Exact(id.borrow()), position);
            }
        }
        let lists = links
            .iter()
            .enumerate()
            .map(|(position, (parent, _))| last_list.get(&Exact(parent.borrow())) == Some(&position))
            .collect();
        let ids = links
            .iter()
            .enumerate()
            .flat_map(|(position, (_, ids))| ids.iter().map(move |id| (position, id)))
            .map(|(position, id)| last_naming.get(&Exact(id.borrow())) == Some(&position))
            .collect();
        (lists, ids)
    };
    let mut ids_kept = ids_kept.into_iter();
    links
        .into_iter()
        .zip(lists_kept)
        .filter_map(|((parent, ids), kept)| {
            // Every list's children are stepped over, kept or not.
            let ids: Vec<V> = ids.into_iter().filter(|_| ids_kept.next().unwrap_or(false)).collect();
            kept.then_some((parent, ids))
        })
        .collect()
}

/// Applies one level; returns for each unit whether it passed the timestamp guard.
///
/// A row touched by several messages of the batch is written once per message, in rounds,
/// so that each message's change sees the ones before it (and row triggers see one write per
/// message). Within a round, a row touched by one unit is written as the unit says (blind,
/// or after reading it when local changes are wanted); a row touched several times by one
/// message is read once and its changes are folded in order in memory ([`fold_repeats`]),
/// only the final row being written. Work and statements stay linear in the number of units
/// however often one message repeats an id; rounds are bounded by the messages in the batch.
async fn apply_level<'a>(
    conn: &mut AsyncPgConnection,
    units: &[Unit<'a>],
    changes: &mut Changes<'a>,
    scope: &Scope<'_>,
) -> Result<Vec<bool>, diesel::result::Error> {
    // Round → tables → unit indices in order. A unit's round counts the earlier messages
    // that touched its row; units of one message share a round.
    type Tables = Vec<(&'static ReplicaDescriptor, Vec<usize>)>;
    // Keyed by table names of our own: a fast hasher (ids from messages keep std's).
    let mut rounds: Vec<(Tables, foldhash::HashMap<&'static str, usize>)> = Vec::new();
    // Unit → its group (the units of one round touching one row); group → its size.
    let mut groups: Vec<u32> = Vec::with_capacity(units.len());
    let mut sizes: Vec<u32> = Vec::new();
    {
        // Row → (the last message touching it, that message's round, its group).
        let mut rows: HashMap<(&'static str, RowKey<'a>), (i64, u32, u32)> = HashMap::new();
        for (index, unit) in units.iter().enumerate() {
            let replica = unit.replica;
            let next_group = u32::try_from(sizes.len()).unwrap_or(u32::MAX);
            let (round, group) = match rows.entry((replica.table, RowKey::of(unit.id))) {
                Entry::Occupied(mut slot) => {
                    let (message, round, group) = *slot.get();
                    if message == unit.message {
                        (round, group)
                    } else {
                        slot.insert((unit.message, round + 1, next_group));
                        sizes.push(0);
                        (round + 1, next_group)
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert((unit.message, 0, next_group));
                    sizes.push(0);
                    (0, next_group)
                }
            };
            if let Some(size) = sizes.get_mut(group as usize) {
                *size += 1;
            }
            groups.push(group);
            let round = round as usize;
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Default::default);
            }
            let (tables, slots) = &mut rounds[round];
            let slot = *slots.entry(replica.table).or_insert_with(|| {
                tables.push((replica, Vec::new()));
                tables.len() - 1
            });
            tables[slot].1.push(index);
        }
    }
    let mut applied = vec![false; units.len()];
    for (tables, _) in &rounds {
        for &(replica, ref all_members) in tables {
            let (repeated, members): (Vec<usize>, Vec<usize>) =
                all_members.iter().partition(|&&index| sizes[groups[index] as usize] > 1);
            fold_repeats(conn, replica, units, &repeated, changes, &mut applied, scope).await?;
            for chunk in members.chunks(ROWS_PER_STATEMENT) {
                apply_once(conn, replica, units, chunk, changes, &mut applied, scope).await?;
            }
        }
    }
    Ok(applied)
}

/// Applies the units of `replica` whose rows no other unit of the round touches.
async fn apply_once<'a>(
    conn: &mut AsyncPgConnection,
    replica: &'static ReplicaDescriptor,
    units: &[Unit<'a>],
    members: &[usize],
    changes: &mut Changes<'a>,
    applied: &mut [bool],
    scope: &Scope<'_>,
) -> Result<(), diesel::result::Error> {
    if members.is_empty() {
        return Ok(());
    }
    let now = scope.now;
    // Without listeners for local changes, a record whose guard PostgreSQL can decide
    // from the written columns is written blind; the rest read their rows first.
    let mut upserts: Vec<(usize, UpsertRow)> = Vec::new();
    let mut removals: Vec<(usize, Option<DateTime<Utc>>)> = Vec::new();
    let mut exact: Vec<(usize, Prepared)> = Vec::new();
    for &index in members {
        let unit = &units[index];
        if unit.import || scope.track_changes {
            exact.push((index, unit.prepare()?));
            continue;
        }
        // `synced_data` is written as text made from the record, not from a copy of it.
        let mut prepared = prepare_columns(replica, unit.record).map_err(unexpected)?;
        if !guard_from_prepared(replica, &prepared) {
            exact.push((index, unit.prepare()?));
            continue;
        }
        // Written once from here: the values move into the statement.
        match take_intent(replica, unit.kind, unit.aggregate_root, &mut prepared, now) {
            Intent::Remove => removals.push((index, prepared.event_time)),
            Intent::Write { assigned, keep } => {
                let encoded = match replica.synced_data {
                    Some(column) => Some((column, serde_json::to_string(&unit.record.attributes).map_err(unexpected)?)),
                    None => None,
                };
                upserts.push((index, UpsertRow { values: assigned, keep, encoded }));
            }
        }
    }
    // Which rows passed the guard only matters for records with sideloads.
    let keys: Vec<Option<String>> = upserts
        .iter()
        .map(|(index, _)| {
            let unit = &units[*index];
            children(unit.record, replica, scope.replicas).next().is_some().then(|| sql::row_key(replica, unit.id))
        })
        .collect();
    let returning = keys.iter().any(Option::is_some);
    let (indices, rows): (Vec<usize>, Vec<UpsertRow>) = upserts.into_iter().unzip();
    let written = sql::upsert_rows(conn, replica, scope.column_types, rows, returning).await?;
    for (index, key) in indices.into_iter().zip(keys) {
        applied[index] = key.is_none_or(|key| written.contains(&key));
    }
    let deletes: Vec<(Value, Option<DateTime<Utc>>)> =
        removals.iter().map(|&(index, event_time)| (units[index].id.clone(), event_time)).collect();
    let stale = sql::delete_guarded(conn, replica, deletes).await?;
    for (index, _) in removals {
        applied[index] = !stale.contains(&sql::row_key(replica, units[index].id));
    }
    if exact.is_empty() {
        return Ok(());
    }
    let ids: Vec<Value> =
        exact.iter().filter(|(index, _)| !units[*index].import).map(|(index, _)| units[*index].id.clone()).collect();
    let mut rows = sql::load_rows(conn, replica, &ids).await?;
    drop(ids);
    for row in rows.values_mut() {
        normalize_row(replica, row);
    }
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    let mut imports = Vec::new();
    let mut deletes = Vec::new();
    for (index, prepared) in exact {
        let unit = &units[index];
        if unit.import {
            applied[index] = true;
            if unit.kind == EventKind::Destroyed {
                deletes.push(unit.id.clone());
            } else {
                imports.push(import_row(replica, prepared));
            }
            continue;
        }
        let old = rows.get(&id_key(unit.id));
        let change = match plan(replica, unit.kind, unit.aggregate_root, prepared, old, now, scope.track_changes) {
            RowPlan::Stale => {
                tracing::debug!(table = replica.table, id = %unit.id, "stale record ignored");
                continue;
            }
            RowPlan::Nothing => Map::new(),
            RowPlan::Write { row, exists, changes } => {
                if exists {
                    updates.push(row);
                } else {
                    inserts.push(row);
                }
                changes
            }
            RowPlan::Delete { changes } => {
                deletes.push(unit.id.clone());
                changes
            }
        };
        applied[index] = true;
        if scope.track_changes {
            changes.add(unit, change);
        }
    }
    drop(rows);
    sql::delete_rows(conn, replica, &deletes).await?;
    sql::update_rows(conn, replica, updates, true).await?;
    sql::insert_rows(conn, replica, inserts, true).await?;
    sql::insert_rows(conn, replica, imports, false).await?;
    Ok(())
}

/// Applies the units of `replica` whose rows several units of one message touch
/// (`repeated`, in order): each row is read once (locked), every unit is planned against the
/// row the previous ones left, in memory, and only the outcome is written: the final row, or
/// its deletion (and a re-insert when it was deleted and written again).
async fn fold_repeats<'a>(
    conn: &mut AsyncPgConnection,
    replica: &'static ReplicaDescriptor,
    units: &[Unit<'a>],
    repeated: &[usize],
    changes: &mut Changes<'a>,
    applied: &mut [bool],
    scope: &Scope<'_>,
) -> Result<(), diesel::result::Error> {
    // The units touching each row, rows in order of first appearance.
    let mut chains: Vec<Vec<usize>> = Vec::new();
    {
        let mut slots: HashMap<RowKey<'a>, usize> = HashMap::new();
        for &index in repeated {
            match slots.entry(RowKey::of(units[index].id)) {
                Entry::Occupied(slot) => chains[*slot.get()].push(index),
                Entry::Vacant(slot) => {
                    slot.insert(chains.len());
                    chains.push(vec![index]);
                }
            }
        }
    }
    for chunk in chains.chunks(ROWS_PER_STATEMENT) {
        fold_chains(conn, replica, units, chunk, changes, applied, scope).await?;
    }
    Ok(())
}

/// [`fold_repeats`] for some of its rows.
async fn fold_chains<'a>(
    conn: &mut AsyncPgConnection,
    replica: &'static ReplicaDescriptor,
    units: &[Unit<'a>],
    chains: &[Vec<usize>],
    changes: &mut Changes<'a>,
    applied: &mut [bool],
    scope: &Scope<'_>,
) -> Result<(), diesel::result::Error> {
    let ids: Vec<Value> = chains.iter().map(|chain| units[chain[0]].id.clone()).collect();
    let mut rows = sql::load_rows(conn, replica, &ids).await?;
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    let mut imports = Vec::new();
    let mut deletes = Vec::new();
    for (chain, id) in chains.iter().zip(ids) {
        let original = rows.remove(&id_key(&id)).map(|mut row| {
            normalize_row(replica, &mut row);
            row
        });
        let existed = original.is_some();
        let mut state = original;
        // Whether the stored row was deleted on the way (a later write then re-inserts).
        let mut deleted = false;
        let mut imported_last = false;
        for &index in chain {
            let unit = &units[index];
            let prepared = unit.prepare()?;
            if unit.import {
                applied[index] = true;
                if unit.kind == EventKind::Destroyed {
                    deleted |= state.take().is_some();
                } else {
                    // An import overwrites the columns it has, unguarded (C-8).
                    let row = state.get_or_insert_with(Map::new);
                    row.extend(import_row(replica, prepared));
                    imported_last = true;
                }
                continue;
            }
            let plan =
                plan(replica, unit.kind, unit.aggregate_root, prepared, state.as_ref(), scope.now, scope.track_changes);
            let change = match plan {
                RowPlan::Stale => {
                    tracing::debug!(table = replica.table, id = %unit.id, "stale record ignored");
                    continue;
                }
                RowPlan::Nothing => Map::new(),
                RowPlan::Write { row, changes, .. } => {
                    state = Some(row);
                    imported_last = false;
                    changes
                }
                RowPlan::Delete { changes } => {
                    deleted |= state.take().is_some();
                    changes
                }
            };
            applied[index] = true;
            if scope.track_changes {
                changes.add(unit, change);
            }
        }
        match state {
            None if existed => deletes.push(id),
            None => {}
            // The stored row, changed: every column is known, and the guard was decided here.
            Some(row) if existed && !deleted => updates.push(row),
            Some(row) => {
                if existed {
                    deletes.push(id);
                }
                if imported_last {
                    imports.push(row);
                } else {
                    inserts.push(row);
                }
            }
        }
    }
    drop(rows);
    sql::delete_rows(conn, replica, &deletes).await?;
    sql::update_rows(conn, replica, updates, false).await?;
    sql::insert_rows(conn, replica, inserts, true).await?;
    sql::insert_rows(conn, replica, imports, false).await?;
    Ok(())
}

/// The row import mode writes (C-8): the assigned columns, without `synced_data`.
fn import_row(replica: &ReplicaDescriptor, prepared: Prepared) -> Map<String, Value> {
    let mut row = Map::new();
    for (column, value) in prepared.assignments {
        if Some(column.name) != replica.synced_data {
            row.insert(column.name.to_owned(), value);
        }
    }
    row.insert(replica.synced_id.to_owned(), prepared.synced_id);
    row
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lock_names_use_the_key_or_a_uuid() {
        // Vector c32.
        assert_eq!(lock_name(Some(b"Rental:1")), "Dionysus-Rental:1");
        let name = lock_name(None);
        let uuid = name.strip_prefix("Dionysus-").unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.as_bytes()[14], b'4', "{uuid}");
        assert_ne!(lock_name(None), name);
    }

    #[test]
    fn lock_names_of_keys_text_cannot_carry_are_digests() {
        let with_nul = lock_name(Some(b"Rental:\0:1"));
        assert_eq!(with_nul, format!("Dionysus-sha256:{}", sha256_hex(b"Rental:\0:1")));
        assert_ne!(lock_name(Some(b"Rental:\0:2")), with_nul);
        let invalid = lock_name(Some(b"Rental:\xff"));
        assert!(invalid.starts_with("Dionysus-sha256:"), "{invalid}");
        assert_ne!(invalid, lock_name(Some(b"Rental:\xfe")));
    }

    #[test]
    fn integer_ids_are_checked_as_written() {
        for good in [json!(0), json!(80), json!(-3), json!(i64::MAX), json!("80"), json!("0"), json!("-12")] {
            assert!(is_canonical_integer_id(&good), "{good}");
        }
        let bad: Vec<Value> = vec![
            serde_json::from_str("-0").unwrap(),
            serde_json::from_str("80.0").unwrap(),
            serde_json::from_str("8e1").unwrap(),
            json!(u64::MAX),
            json!("-0"),
            json!("080"),
            json!(" 80"),
            json!("8e1"),
            json!("+8"),
            json!(""),
            json!("99999999999999999999"),
            json!(true),
            json!([1]),
        ];
        for bad in bad {
            assert!(!is_canonical_integer_id(&bad), "{bad}");
        }
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    static ID_ONLY: [crate::consumer::replica::Column; 1] =
        [crate::consumer::replica::Column::named("synced_id", ColumnKind::Integer, false)];

    const fn replica(model: &'static str, table: &'static str) -> ReplicaDescriptor {
        ReplicaDescriptor { model, table, columns: &ID_ONLY, ..ReplicaDescriptor::INVALID }
    }

    static RENTALS: ReplicaDescriptor = replica("Rental", "rentals");
    static BOOKINGS: ReplicaDescriptor = replica("Booking", "bookings");
    static TAXES: ReplicaDescriptor = replica("Tax", "taxes");

    #[test]
    fn a_prepared_batch_names_the_tables_it_writes_once_each() {
        let rules = Rules::for_tests(Replicas::new([&RENTALS, &BOOKINGS, &TAXES]));
        let message = |offset: i64, model: &str| InboundMessage {
            topic: "t".to_owned(),
            partition: 0,
            offset,
            key: None,
            payload: Some(
                json!({"message": [{"event": "x_updated", "model_name": model, "data": [{"id": offset}]}]})
                    .to_string()
                    .into_bytes(),
            ),
        };
        let messages = [message(1, "Booking"), message(2, "Rental"), message(3, "Ghost"), message(4, "Booking")];
        let tables: Vec<&str> = rules.prepare(&messages).replicas().iter().map(|replica| replica.table).collect();
        assert_eq!(tables.len(), 2, "{tables:?}");
        assert!(tables.contains(&"rentals") && tables.contains(&"bookings"), "{tables:?}");
    }

    static OUR_RENTALS: ReplicaDescriptor = ReplicaDescriptor { topic: "v3_rentals", ..replica("Rental", "rentals") };
    static PARTNER_RENTALS: ReplicaDescriptor =
        ReplicaDescriptor { topic: "partner", ..replica("Rental", "partner_rentals") };

    #[test]
    fn a_model_replicated_from_two_topics_goes_to_the_replica_of_the_messages_topic() {
        let rules = Rules::for_tests(Replicas::new([&OUR_RENTALS, &PARTNER_RENTALS]));
        let message = |topic: &str| InboundMessage {
            topic: topic.to_owned(),
            partition: 0,
            offset: 1,
            key: None,
            payload: Some(
                json!({"message": [{"event": "rental_updated", "model_name": "Rental", "data": [{"id": 1}]}]})
                    .to_string()
                    .into_bytes(),
            ),
        };
        let tables = |topic: &str| -> Vec<&str> {
            rules.prepare(&[message(topic)]).replicas().iter().map(|replica| replica.table).collect()
        };
        assert_eq!(tables("partner"), ["partner_rentals"]);
        assert_eq!(tables("v3_rentals"), ["rentals"]);
        // A topic with no replica of its own for the model writes neither.
        assert!(tables("elsewhere").is_empty());
    }

    #[test]
    fn later_links_win() {
        let links = vec![
            (json!(1), vec![json!(101), json!(102)]),
            (json!(2), vec![json!(101)]),
            (json!(1), vec![json!(102), json!(103)]),
        ];
        assert_eq!(final_links(links), vec![(json!(2), vec![json!(101)]), (json!(1), vec![json!(102), json!(103)])]);
    }

    /// The definition, applied step by step (quadratic): the reference for [`final_links`].
    fn final_links_stepwise(links: Vec<(Value, Vec<Value>)>) -> Vec<(Value, Vec<Value>)> {
        let mut latest: Vec<(Value, Vec<Value>)> = Vec::new();
        for (parent, ids) in links {
            latest.retain(|(existing, _)| *existing != parent);
            for (_, other_ids) in latest.iter_mut() {
                other_ids.retain(|id| !ids.contains(id));
            }
            latest.push((parent, ids));
        }
        latest
    }

    /// Ids as they come: integers, large and negative ones, floats, digit strings with
    /// signs, padding and leading zeros, other text, and the odd non-scalar.
    fn any_id() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            (-20i64..20).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            (i64::MAX as u64..=u64::MAX).prop_map(|n| json!(n)),
            (-3.0f64..3.0).prop_map(|f| json!(f)),
            "[-+ 0]{0,2}[0-9]{1,3}".prop_map(|text| json!(text)),
            "[a-c]{0,2}".prop_map(|text| json!(text)),
            Just(json!(true)),
            Just(Value::Null),
            Just(json!([1])),
        ]
    }

    proptest::proptest! {
        /// Rows are told apart exactly as the text keys of the database's rows are.
        #[test]
        fn row_keys_equal_exactly_when_id_keys_do(a in any_id(), b in any_id()) {
            proptest::prop_assert_eq!(RowKey::of(&a) == RowKey::of(&b), id_key(&a) == id_key(&b), "{} {}", a, b);
        }

        /// Local changes and links are told apart exactly as `Value`s are, and equal values
        /// hash alike.
        #[test]
        fn exact_keys_follow_value_equality(a in any_id(), b in any_id()) {
            proptest::prop_assert_eq!(Exact(&a) == Exact(&b), a == b);
            if a == b {
                use std::hash::BuildHasher;
                let hasher = std::collections::hash_map::RandomState::new();
                proptest::prop_assert_eq!(hasher.hash_one(Exact(&a)), hasher.hash_one(Exact(&b)));
            }
        }

        #[test]
        fn final_links_match_the_stepwise_definition(
            links in proptest::collection::vec((0u8..4, proptest::collection::vec(0u8..6, 0..5)), 0..12)
        ) {
            let links: Vec<(Value, Vec<Value>)> =
                links.into_iter().map(|(parent, ids)| (json!(parent), ids.into_iter().map(|id| json!(id)).collect())).collect();
            proptest::prop_assert_eq!(final_links(links.clone()), final_links_stepwise(links));
        }
    }
}
