//! One batch of one partition, from raw messages to committed replica rows: decode, check
//! every record against its replica model (bad messages are set aside for the dead-letter
//! topic, whole), remove duplicates (C-18), then apply everything inside the caller's
//! transaction with set-based statements, level by level (aggregate roots, then their
//! sideloads). A row touched by several messages is written once per message, in order; a
//! row touched several times by one message is read once and its changes are folded in
//! order in memory. Either way each change sees the ones before it, and the work per message
//! is linear in its size; its records are capped ([`Rules::max_records`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value};

use super::dedup::remove_duplicates;
use super::events::{ConsumedEvent, LocalChange, MessageFilter};
use crate::consumer::replica::deserialize::deserialize_owned;
use crate::consumer::replica::plan::RowPlan;
use crate::consumer::replica::plan::{
    guard_from_prepared, normalize_row, plan, prepare, take_intent, Intent, Prepared, RecordError,
};
use crate::consumer::replica::sql::{self, id_key, ColumnTypes, UpsertRow};
use crate::consumer::replica::{ColumnKind, Record, ReplicaDescriptor, Replicas};
use crate::telemetry::Report;
use crate::wire::envelope::{decode, Decoded, EnvelopeError};
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
    /// `timestamp_in_future`, `database_rejected`, and for a handler running inside the batch's
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
}

/// A record checked against its replica, with its checked sideloads.
#[derive(Debug)]
struct Node {
    replica: &'static ReplicaDescriptor,
    prepared: Prepared,
    /// Name under which local changes are reported.
    change_name: String,
    /// `(replica of the children, children)`; children of unknown models are left out.
    has_many: Vec<(&'static ReplicaDescriptor, Vec<Node>)>,
    has_one: Vec<Node>,
}

/// One event ready to apply.
struct EventWork {
    /// Offset of the message it came from.
    message: i64,
    bus: ConsumedEvent,
    kind: Option<EventKind>,
    import: bool,
    nodes: Vec<Node>,
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
        let mut pending: Vec<&Node> = self
            .work
            .iter()
            .filter_map(|work| match work {
                Work::Apply(event) => Some(event.nodes.iter()),
                Work::Report(_) => None,
            })
            .flatten()
            .collect();
        while let Some(node) = pending.pop() {
            add(node.replica);
            for (replica, children) in &node.has_many {
                add(replica);
                pending.extend(children);
            }
            pending.extend(&node.has_one);
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
fn is_canonical_integer_id(id: &Value) -> bool {
    match id {
        Value::Number(number) => number.is_i64() || (number.is_u64() && number.as_i64().is_some()),
        Value::String(text) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && !(text.starts_with('-') && digits == "0")
                && text.parse::<i64>().is_ok()
        }
        _ => false,
    }
}

/// A random (version 4) UUID, hyphenated.
fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().hyphenated().to_string()
}

impl Rules {
    /// Decodes and checks every message; nothing touches the database.
    pub(crate) fn prepare(&self, messages: &[InboundMessage]) -> PreparedBatch {
        let mut checked: Vec<(usize, Checked)> = Vec::with_capacity(messages.len());
        let mut decoded_good: Vec<(usize, Decoded)> = Vec::new();
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
        let order: Vec<usize> = if self.remove_duplicates {
            let refs: Vec<&Decoded> = decoded_good.iter().map(|(_, decoded)| decoded).collect();
            remove_duplicates(&refs).unwrap_or_else(|| (0..decoded_good.len()).collect())
        } else {
            (0..decoded_good.len()).collect()
        };
        let mut slots: Vec<Option<(usize, Decoded)>> = decoded_good.into_iter().map(Some).collect();
        let mut positioned: Vec<(usize, Checked)> = Vec::new();
        for position in order {
            if let Some((index, decoded)) = slots.get_mut(position).and_then(Option::take) {
                positioned.push((index, self.check(&messages[index], decoded, latest)));
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
        }
    }

    fn decode(&self, message: &InboundMessage) -> Result<Decoded, (&'static str, String)> {
        let dead = |reason, error: String| (reason, error);
        if let Some(payload) = &message.payload {
            if payload.len() > self.max_message_bytes {
                return Err(dead(
                    "oversized",
                    format!("payload of {} bytes exceeds the limit of {} bytes", payload.len(), self.max_message_bytes),
                ));
            }
        }
        decode(message.payload.as_deref()).map_err(|error| match error {
            EnvelopeError::Json(_) => dead("malformed_json", Report(&error).to_string()),
            EnvelopeError::Shape(_) => dead("invalid_envelope", Report(&error).to_string()),
        })
    }

    fn check(&self, message: &InboundMessage, decoded: Decoded, latest: DateTime<Utc>) -> Checked {
        let Decoded::Events(events) = decoded else { return Checked::Good(Vec::new()) };
        let topic = &message.topic;
        // The whole "message" array is only needed by filters (C-20).
        let whole = if self.filters.is_empty() { Value::Null } else { message_array(message) };
        let import = self.import_topics.contains(topic.as_str());
        let mut work = Vec::with_capacity(events.len());
        let mut failure: Option<(&'static str, String)> = None;
        // Records of the message so far, sideloads included; counted before any is checked.
        let mut records_seen = 0usize;
        for event in events {
            let records = match deserialize_owned(event.data) {
                Ok(records) => records,
                Err(error) => {
                    failure.get_or_insert(("invalid_record", format!("{} {}: {error}", event.model_name, event.event)));
                    continue;
                }
            };
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
            if kind.is_none() {
                tracing::debug!(topic = %topic, event = %bus.event_name, "unknown event type; not persisted");
                work.push(EventWork { message: message.offset, bus, kind, import, nodes: Vec::new() });
                continue;
            }
            let Some(replica) = self.replicas.find(&bus.model_name) else {
                if self.unknown_model == UnknownModel::DeadLetter {
                    failure.get_or_insert((
                        "unknown_model",
                        format!("no replica model for `{}` (event {} on {topic})", bus.model_name, bus.event_name),
                    ));
                } else {
                    tracing::debug!(topic = %topic, model = %bus.model_name, "unknown model; not persisted");
                }
                work.push(EventWork { message: message.offset, bus, kind, import, nodes: Vec::new() });
                continue;
            };
            let nodes: Result<Vec<Node>, Rejection> =
                bus.transformed_data.iter().map(|record| self.node(replica, record, &bus.model_name, latest)).collect();
            match nodes {
                Ok(nodes) => work.push(EventWork { message: message.offset, bus, kind, import, nodes }),
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
    fn node(
        &self,
        replica: &'static ReplicaDescriptor,
        record: &Record,
        change_name: &str,
        latest: DateTime<Utc>,
    ) -> Result<Node, Rejection> {
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
        let prepared = prepare(replica, record)?;
        if let Some(time) = prepared.event_time.filter(|time| *time > latest) {
            return Err(Rejection {
                reason: "timestamp_in_future",
                error: format!(
                    "{} {}: event time {} is more than {} s in the future; stored, it would make every \
                     later update of the record look stale",
                    replica.model,
                    prepared.synced_id,
                    time.to_rfc3339(),
                    self.max_future_skew.as_secs()
                ),
            });
        }
        let mut has_many = Vec::new();
        for (name, children) in &record.has_many {
            // Links without sideloaded records (the usual case) need no model lookup.
            let Some(children) = children else { continue };
            let Some(child) = self.replicas.find(name) else { continue };
            let nodes = children.iter().map(|c| self.node(child, c, name, latest)).collect::<Result<Vec<_>, _>>()?;
            has_many.push((child, nodes));
        }
        let mut has_one = Vec::new();
        for (name, child_record) in &record.has_one {
            let Some(child_record) = child_record else { continue };
            let Some(child) = self.replicas.find(name) else { continue };
            has_one.push(self.node(child, child_record, name, latest)?);
        }
        Ok(Node { replica, prepared, change_name: change_name.to_owned(), has_many, has_one })
    }
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

/// One record to apply at some level (its node moves from level to level).
struct Unit {
    node: Node,
    kind: EventKind,
    aggregate_root: bool,
    import: bool,
    event: usize,
    /// Offset of the message it came from.
    message: i64,
}

/// A child replica and the `(parent id, child ids)` links to resolve on it.
type Resolve = (&'static ReplicaDescriptor, Vec<(Value, Vec<Value>)>);

/// Applies a prepared batch in the caller's transaction and returns the events to report.
/// Takes the batch's work (its events move into the result); the dead letters stay.
pub(crate) async fn apply(
    conn: &mut AsyncPgConnection,
    batch: &mut PreparedBatch,
    now: DateTime<Utc>,
) -> Result<Vec<ConsumedEvent>, diesel::result::Error> {
    let work = std::mem::take(&mut batch.work);
    let mut events: Vec<ConsumedEvent> = Vec::with_capacity(work.len());
    // (event index, message, kind, import, nodes): the records to apply, kept apart from the
    // events.
    let mut roots: Vec<(usize, i64, EventKind, bool, Vec<Node>)> = Vec::new();
    for item in work {
        match item {
            Work::Report(event) => events.push(event),
            Work::Apply(EventWork { message, bus, kind, import, nodes }) => {
                let index = events.len();
                events.push(bus);
                let Some(kind) = kind else { continue };
                roots.push((index, message, kind, import && kind != EventKind::Updated, nodes));
            }
        }
    }
    let mut level: Vec<Unit> = roots
        .into_iter()
        .flat_map(|(event, message, kind, import, nodes)| {
            nodes.into_iter().map(move |node| Unit { node, kind, aggregate_root: true, import, event, message })
        })
        .collect();
    // (child table, foreign key) → [(parent id, child ids)] in order.
    let mut resolves: BTreeMap<(&'static str, String), Resolve> = BTreeMap::new();
    while !level.is_empty() {
        let applied = apply_level(conn, &mut level, &mut events, now, batch.track_changes, &batch.column_types).await?;
        let mut next = Vec::new();
        for (unit, applied) in level.into_iter().zip(applied) {
            if !applied || unit.import {
                continue;
            }
            let Unit { node: parent, kind, event, message, .. } = unit;
            let child = |node| Unit { node, kind, aggregate_root: false, import: false, event, message };
            for (child_replica, children) in parent.has_many {
                let foreign_key = format!("synced_{}_id", event_prefix(parent.replica.model));
                if child_replica.column(&foreign_key).is_some() {
                    let ids = children.iter().map(|node| node.prepared.synced_id.clone()).collect();
                    resolves
                        .entry((child_replica.table, foreign_key))
                        .or_insert_with(|| (child_replica, Vec::new()))
                        .1
                        .push((parent.prepared.synced_id.clone(), ids));
                }
                next.extend(children.into_iter().map(child));
            }
            next.extend(parent.has_one.into_iter().map(child));
        }
        level = next;
    }
    for ((_, foreign_key), (child, links)) in resolves {
        sql::resolve_to_many(conn, child, &foreign_key, final_links(links)).await?;
    }
    Ok(events)
}

/// The links that hold after applying `links` in order: a parent's later list replaces its
/// earlier one, and a child listed by a later parent leaves the earlier parent's list.
///
/// Linear: a parent's last list is the one that holds, and a child stays in it only when no
/// later list (of any parent) names it.
fn final_links(links: Vec<(Value, Vec<Value>)>) -> Vec<(Value, Vec<Value>)> {
    let mut last_list: HashMap<String, usize> = HashMap::new();
    let mut last_naming: HashMap<String, usize> = HashMap::new();
    for (position, (parent, ids)) in links.iter().enumerate() {
        last_list.insert(link_key(parent), position);
        for id in ids {
            last_naming.insert(link_key(id), position);
        }
    }
    links
        .into_iter()
        .enumerate()
        .filter(|(position, (parent, _))| last_list.get(&link_key(parent)) == Some(position))
        .map(|(position, (parent, ids))| {
            let ids = ids.into_iter().filter(|id| last_naming.get(&link_key(id)) == Some(&position)).collect();
            (parent, ids)
        })
        .collect()
}

/// A key equal for equal JSON values: their text (ids are scalars).
fn link_key(value: &Value) -> String {
    value.to_string()
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
async fn apply_level(
    conn: &mut AsyncPgConnection,
    units: &mut [Unit],
    events: &mut [ConsumedEvent],
    now: DateTime<Utc>,
    track_changes: bool,
    column_types: &ColumnTypes,
) -> Result<Vec<bool>, diesel::result::Error> {
    // Round → tables → unit indices in order. A unit's round counts the earlier messages
    // that touched its row; units of one message share a round.
    type Tables = Vec<(&'static ReplicaDescriptor, Vec<usize>)>;
    let mut rounds: Vec<(Tables, HashMap<&'static str, usize>)> = Vec::new();
    let mut last: HashMap<(&'static str, String), (i64, usize)> = HashMap::new();
    // (round, table, row) → how many units of the round touch the row.
    let mut touches: HashMap<(usize, &'static str, String), usize> = HashMap::new();
    for (index, unit) in units.iter().enumerate() {
        let replica = unit.node.replica;
        let key = id_key(&unit.node.prepared.synced_id);
        let round = match last.get(&(replica.table, key.clone())) {
            Some(&(message, round)) if message == unit.message => round,
            Some(&(_, round)) => round + 1,
            None => 0,
        };
        last.insert((replica.table, key.clone()), (unit.message, round));
        *touches.entry((round, replica.table, key)).or_insert(0) += 1;
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
    drop(last);
    let mut applied = vec![false; units.len()];
    for (round, (tables, _)) in rounds.iter().enumerate() {
        for &(replica, ref all_members) in tables {
            let (repeated, members): (Vec<usize>, Vec<usize>) = all_members.iter().partition(|&&index| {
                let key = id_key(&units[index].node.prepared.synced_id);
                touches.get(&(round, replica.table, key)).is_some_and(|n| *n > 1)
            });
            fold_repeats(conn, replica, units, &repeated, events, &mut applied, now, track_changes).await?;
            apply_once(conn, replica, units, members, events, &mut applied, now, track_changes, column_types).await?;
        }
    }
    Ok(applied)
}

/// Applies the units of `replica` whose rows no other unit of the round touches.
#[allow(clippy::too_many_arguments)]
async fn apply_once(
    conn: &mut AsyncPgConnection,
    replica: &'static ReplicaDescriptor,
    units: &mut [Unit],
    members: Vec<usize>,
    events: &mut [ConsumedEvent],
    applied: &mut [bool],
    now: DateTime<Utc>,
    track_changes: bool,
    column_types: &ColumnTypes,
) -> Result<(), diesel::result::Error> {
    if members.is_empty() {
        return Ok(());
    }
    // Without listeners for local changes, a record whose guard PostgreSQL can decide
    // from the written columns is written blind; the rest read their rows first.
    let mut upserts: Vec<(usize, UpsertRow)> = Vec::new();
    let mut removals: Vec<usize> = Vec::new();
    let mut exact: Vec<usize> = Vec::new();
    for &index in &members {
        let unit = &mut units[index];
        if unit.import || track_changes || !guard_from_prepared(replica, &unit.node.prepared) {
            exact.push(index);
            continue;
        }
        // Written once from here: the values move into the statement.
        match take_intent(replica, unit.kind, unit.aggregate_root, &mut unit.node.prepared, now) {
            Intent::Remove => removals.push(index),
            Intent::Write { assigned, keep } => upserts.push((index, UpsertRow { values: assigned, keep })),
        }
    }
    // Which rows passed the guard only matters for records with sideloads.
    let with_children: Vec<bool> = upserts
        .iter()
        .map(|(index, _)| {
            let node = &units[*index].node;
            !node.has_many.is_empty() || !node.has_one.is_empty()
        })
        .collect();
    let returning = with_children.iter().any(|children| *children);
    let keys: Vec<Option<String>> = upserts
        .iter()
        .zip(&with_children)
        .map(|((index, _), children)| children.then(|| sql::row_key(replica, &units[*index].node.prepared.synced_id)))
        .collect();
    let (indices, rows): (Vec<usize>, Vec<UpsertRow>) = upserts.into_iter().unzip();
    let written = sql::upsert_rows(conn, replica, column_types, rows, returning).await?;
    for (index, key) in indices.into_iter().zip(keys) {
        applied[index] = key.is_none_or(|key| written.contains(&key));
    }
    let deletes: Vec<(Value, Option<DateTime<Utc>>)> = removals
        .iter()
        .map(|&index| (units[index].node.prepared.synced_id.clone(), units[index].node.prepared.event_time))
        .collect();
    let stale = sql::delete_guarded(conn, replica, deletes).await?;
    for index in removals {
        applied[index] = !stale.contains(&sql::row_key(replica, &units[index].node.prepared.synced_id));
    }
    let members = exact;
    if members.is_empty() {
        return Ok(());
    }
    let ids: Vec<Value> = members
        .iter()
        .filter(|&&index| !units[index].import)
        .map(|&index| units[index].node.prepared.synced_id.clone())
        .collect();
    let mut rows = sql::load_rows(conn, replica, &ids).await?;
    for row in rows.values_mut() {
        normalize_row(replica, row);
    }
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    let mut imports = Vec::new();
    let mut deletes = Vec::new();
    for index in members {
        let unit = &units[index];
        let prepared = &unit.node.prepared;
        if unit.import {
            applied[index] = true;
            if unit.kind == EventKind::Destroyed {
                deletes.push(prepared.synced_id.clone());
            } else {
                imports.push(import_row(replica, prepared));
            }
            continue;
        }
        let old = rows.get(&id_key(&prepared.synced_id));
        let row_plan = plan(replica, unit.kind, unit.aggregate_root, prepared, old, now);
        let changes = match row_plan {
            RowPlan::Stale => {
                tracing::debug!(table = replica.table, id = %prepared.synced_id, "stale record ignored");
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
                deletes.push(prepared.synced_id.clone());
                changes
            }
        };
        applied[index] = true;
        if track_changes {
            report_change(events, unit, changes);
        }
    }
    sql::delete_rows(conn, replica, &deletes).await?;
    sql::update_rows(conn, replica, updates, true).await?;
    sql::insert_rows(conn, replica, inserts, true).await?;
    sql::insert_rows(conn, replica, imports, false).await?;
    Ok(())
}

/// Applies the units of `replica` whose rows several units of one message touch
/// (`repeated`, in order):
/// each row is read once (locked), every unit is planned against the row the previous ones
/// left, in memory, and only the outcome is written: the final row, or its deletion (and a
/// re-insert when it was deleted and written again).
#[allow(clippy::too_many_arguments)]
async fn fold_repeats(
    conn: &mut AsyncPgConnection,
    replica: &'static ReplicaDescriptor,
    units: &[Unit],
    repeated: &[usize],
    events: &mut [ConsumedEvent],
    applied: &mut [bool],
    now: DateTime<Utc>,
    track_changes: bool,
) -> Result<(), diesel::result::Error> {
    if repeated.is_empty() {
        return Ok(());
    }
    // Row key → the units touching it, rows in order of first appearance.
    let mut chains: Vec<(String, Vec<usize>)> = Vec::new();
    let mut slots: HashMap<String, usize> = HashMap::new();
    for &index in repeated {
        let key = id_key(&units[index].node.prepared.synced_id);
        match slots.get(&key) {
            Some(&slot) => chains[slot].1.push(index),
            None => {
                slots.insert(key.clone(), chains.len());
                chains.push((key, vec![index]));
            }
        }
    }
    drop(slots);
    let ids: Vec<Value> = chains.iter().map(|(_, chain)| units[chain[0]].node.prepared.synced_id.clone()).collect();
    let mut rows = sql::load_rows(conn, replica, &ids).await?;
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    let mut imports = Vec::new();
    let mut deletes = Vec::new();
    for ((key, chain), id) in chains.into_iter().zip(ids) {
        let original = rows.remove(&key).map(|mut row| {
            normalize_row(replica, &mut row);
            row
        });
        let existed = original.is_some();
        let mut state = original;
        // Whether the stored row was deleted on the way (a later write then re-inserts).
        let mut deleted = false;
        let mut imported_last = false;
        for index in chain {
            let unit = &units[index];
            let prepared = &unit.node.prepared;
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
            let changes = match plan(replica, unit.kind, unit.aggregate_root, prepared, state.as_ref(), now) {
                RowPlan::Stale => {
                    tracing::debug!(table = replica.table, id = %prepared.synced_id, "stale record ignored");
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
            if track_changes {
                report_change(events, unit, changes);
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
    sql::delete_rows(conn, replica, &deletes).await?;
    sql::update_rows(conn, replica, updates, false).await?;
    sql::insert_rows(conn, replica, inserts, true).await?;
    sql::insert_rows(conn, replica, imports, false).await?;
    Ok(())
}

/// The row import mode writes (C-8): the assigned columns, without `synced_data`.
/// Adds what applying `unit` changed to its event's local changes (C-15).
fn report_change(events: &mut [ConsumedEvent], unit: &Unit, changes: crate::consumer::replica::ChangeSet) {
    if let Some(event) = events.get_mut(unit.event) {
        event.add_change(LocalChange {
            model: unit.node.change_name.clone(),
            synced_id: unit.node.prepared.synced_id.clone(),
            changes,
        });
    }
}

fn import_row(replica: &ReplicaDescriptor, prepared: &Prepared) -> Map<String, Value> {
    let mut row = Map::new();
    for (column, value) in &prepared.assignments {
        if Some(column.name) != replica.synced_data {
            row.insert(column.name.to_owned(), value.clone());
        }
    }
    row.insert(replica.synced_id.to_owned(), prepared.synced_id.clone());
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
        let rules = Rules {
            replicas: Replicas::new([&RENTALS, &BOOKINGS, &TAXES]),
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
        };
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

    proptest::proptest! {
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
