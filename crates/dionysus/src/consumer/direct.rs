//! The lean path of a batch no one watches ([`Rules::records_unread`]): each message is read
//! in one pass straight into the typed column arrays of the set-based upsert, with no
//! records, maps, events or per-record allocations besides the values themselves (a model
//! with `synced_data`, which keeps every attribute, has each record made into its canonical
//! map first), and the arrays are written one statement per table and column set.
//!
//! It takes the usual batch only: `_created` and `_updated` events of replica models, records
//! without sideloads whose values fit their columns and
//! whose timestamp guard PostgreSQL decides from the written columns, and no row written
//! twice by one message. At the first thing it does not take (a bad message among them) it
//! gives up, and the batch goes the general way (`batch`), which decides and reports
//! everything else, dead letters included. What it writes is what the general path writes
//! for the same messages: the same rows, in the same rounds (a row touched by several
//! messages is written once per message, in order), after the same duplicate removal.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use futures_util::future::{BoxFuture, FutureExt};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::batch::{
    is_canonical_integer_id, lock_name, InboundMessage, RowKey, Rules, UnknownModel, ROWS_PER_STATEMENT,
};
use super::dedup::{group_key, keep_latest, record_key};
use crate::consumer::replica::deserialize::deserialize_record;
use crate::consumer::replica::plan::{guard_decidable, normalized};
use crate::consumer::replica::sql::{self, ColumnArray, ColumnTypes};
use crate::consumer::replica::{Column, ColumnKind, ReplicaDescriptor};
use crate::wire::envelope::{parse_timestamp, RawRecord};
use crate::wire::naming::{singularize, EventKind};

/// A batch read into column arrays, ready to write.
#[derive(Debug)]
pub(crate) struct DirectBatch {
    /// The statements, in the order they run (rounds first).
    groups: Vec<Group>,
    /// Processing-mutex names of every message (C-3), when the mutex is on.
    pub(crate) locks: Vec<String>,
}

/// The rows of one statement: one table, one round, one set of written columns.
#[derive(Debug)]
struct Group {
    replica: &'static ReplicaDescriptor,
    round: u32,
    /// The written columns, in table order.
    columns: Vec<&'static Column>,
    /// Their values, one array per column.
    arrays: Vec<ColumnArray>,
    /// Which of them is `synced_data`, whose cells are JSON text already.
    data: Option<usize>,
}

impl DirectBatch {
    /// The tables the batch writes, each once.
    pub(crate) fn tables(&self) -> Vec<&'static str> {
        let mut tables: Vec<&'static str> = Vec::new();
        for group in &self.groups {
            if !tables.contains(&group.replica.table) {
                tables.push(group.replica.table);
            }
        }
        tables
    }

    /// The batch's writes, in the order they must run, each a future that sends its
    /// statement the first time it is polled (see [`super::apply`]'s pipeline), in the
    /// caller's transaction.
    pub(crate) fn writes<'a>(
        self,
        conn: &'a AsyncPgConnection,
        types: &'a ColumnTypes,
    ) -> impl Iterator<Item = BoxFuture<'a, Result<(), diesel::result::Error>>> {
        self.groups
            .into_iter()
            .map(move |group| sql::upsert_arrays(conn, group.replica, types, group.columns, group.arrays).boxed())
    }

    /// The statements as `(table, round, column names, arrays)`, in order (for tests).
    #[cfg(test)]
    fn statements(&self) -> Vec<(&'static str, u32, Vec<&'static str>, &[ColumnArray])> {
        self.groups
            .iter()
            .map(|group| {
                let names = group.columns.iter().map(|column| column.name).collect();
                (group.replica.table, group.round, names, &group.arrays[..])
            })
            .collect()
    }
}

/// Reads `messages` (one partition's, ascending offsets) into column arrays; `None` when the
/// batch is not one this path takes, and then nothing of it is kept.
pub(crate) fn prepare(rules: &Rules, messages: &[InboundMessage]) -> Option<DirectBatch> {
    let topic = messages.first().map_or("", |message| message.topic.as_str());
    let mut decoder = Decoder {
        rules,
        topic,
        import: rules.import_topics.contains(topic),
        latest: Utc::now() + chrono::TimeDelta::from_std(rules.max_future_skew).unwrap_or(chrono::TimeDelta::MAX),
        layouts: vec![Layout::bare()],
        scratch: Scratch::default(),
        cells: Vec::new(),
        rows: Vec::new(),
        message: Tally::default(),
    };
    // Per message: its staged rows (a range of `decoder.rows`) and its C-18 key.
    let mut ranges = Vec::with_capacity(messages.len());
    let mut keys: Option<Vec<RecordKey>> = rules.remove_duplicates.then(|| Vec::with_capacity(messages.len()));
    for message in messages {
        let start = decoder.rows.len();
        let key = decoder.read(message)?;
        ranges.push(start..decoder.rows.len());
        if let Some(all) = &mut keys {
            match key {
                Some(key) => all.push(key),
                // A message of no event, or of several events or records: C-18 leaves the
                // batch alone.
                None => keys = None,
            }
        }
    }
    let order: Vec<usize> = match keys {
        Some(keys) => keep_latest(&keys),
        None => (0..messages.len()).collect(),
    };
    let Decoder { layouts, mut cells, rows, .. } = decoder;

    // Rounds: a row's round counts the earlier messages that wrote it (as `batch` does).
    // Keyed by ids from the messages: std's hasher.
    let mut seen: HashMap<(&'static str, RowKey<'static>), (usize, u32)> = HashMap::with_capacity(rows.len());
    // (round, table, columns) → the group taking rows; keys of our own: a fast hasher.
    let mut open: foldhash::HashMap<(u32, usize, u64), usize> = foldhash::HashMap::default();
    let mut groups: Vec<Group> = Vec::new();
    let mut staged: Vec<Option<Staged>> = rows.into_iter().map(Some).collect();
    for position in order {
        for row in ranges[position].clone() {
            let Some(Staged { layout, columns, start, key }) = staged[row].take() else { continue };
            let replica = layouts[layout].replica?;
            let round = match seen.entry((replica.table, key)) {
                Entry::Occupied(mut slot) => {
                    let (message, round) = *slot.get();
                    // A row written twice by one message is folded in memory: not here.
                    if message == position {
                        return None;
                    }
                    slot.insert((position, round + 1));
                    round + 1
                }
                Entry::Vacant(slot) => {
                    slot.insert((position, 0));
                    0
                }
            };
            let index = *open.entry((round, layout, columns)).or_insert_with(|| {
                let written: Vec<&'static Column> = replica
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(position, _)| columns & (1 << position) != 0)
                    .map(|(_, column)| column)
                    .collect();
                let capacity = ranges.len().min(ROWS_PER_STATEMENT);
                let arrays = written.iter().map(|column| ColumnArray::with_capacity(column.kind, capacity)).collect();
                let data = replica.synced_data.and_then(|name| written.iter().position(|column| column.name == name));
                groups.push(Group { replica, round, columns: written, arrays, data });
                groups.len() - 1
            });
            let group = &mut groups[index];
            for (offset, (column, array)) in group.columns.iter().zip(&mut group.arrays).enumerate() {
                match std::mem::take(&mut cells[start + offset]) {
                    Value::String(text) if group.data == Some(offset) => array.push_text(text),
                    value => array.push(column.kind, value),
                }
            }
            if group.arrays.first().is_some_and(|array| array.len() >= ROWS_PER_STATEMENT) {
                open.remove(&(round, layout, columns));
            }
        }
    }
    groups.sort_by_key(|group| group.round);
    let locks = if rules.processing_mutex {
        messages.iter().map(|message| lock_name(message.key.as_deref())).collect()
    } else {
        Vec::new()
    };
    Some(DirectBatch { groups, locks })
}

/// The synced id and the three times (C-6): attributes every record is read for.
const SPECIAL: [&str; 4] = ["synced_id", "synced_created_at", "synced_updated_at", "synced_canceled_at"];
const SYNCED_ID: usize = 0;
const CREATED: usize = 1;
const UPDATED: usize = 2;
const CANCELED: usize = 3;

/// How the records of one replica model are read: the attributes (C-6) its columns take,
/// numbered, [`SPECIAL`] first.
#[derive(Debug)]
struct Layout {
    /// `None` for records only checked, not written (unknown events and models).
    replica: Option<&'static ReplicaDescriptor>,
    attributes: Vec<&'static str>,
    /// Attribute name → its number. Our own names: a fast hasher.
    index: foldhash::HashMap<&'static str, usize>,
    /// Per column, in table order.
    columns: Vec<ColumnRead>,
    /// Positions of the soft-delete, synced id and `synced_data` columns.
    soft_delete: Option<usize>,
    synced_id: Option<usize>,
    synced_data: Option<usize>,
    /// Whether the synced id column holds integers.
    integer_id: bool,
}

/// How a column takes its value.
#[derive(Debug)]
struct ColumnRead {
    attribute: usize,
    /// A missing attribute assigns `NULL` (a renamed, nullable time column, C-11).
    missing_is_null: bool,
    /// The last column to read the attribute: it takes the value.
    last: bool,
}

impl Layout {
    /// The layout of records only checked.
    fn bare() -> Layout {
        Layout {
            replica: None,
            attributes: SPECIAL.to_vec(),
            index: SPECIAL.iter().enumerate().map(|(number, name)| (*name, number)).collect(),
            columns: Vec::new(),
            soft_delete: None,
            synced_id: None,
            synced_data: None,
            integer_id: false,
        }
    }

    /// The layout of `replica`'s records; `None` for a model with more columns than a
    /// column set holds.
    fn new(replica: &'static ReplicaDescriptor) -> Option<Layout> {
        if replica.columns.len() > 64 {
            return None;
        }
        let mut layout = Layout { replica: Some(replica), ..Layout::bare() };
        for column in replica.columns {
            // As `plan` reads it: a time column takes its role's attribute.
            let role = if column.source == column.name { replica.timestamp_role(column.name) } else { None };
            let name = role.unwrap_or(column.source);
            let attribute = match layout.index.get(name) {
                Some(&number) => number,
                None => {
                    layout.attributes.push(name);
                    layout.index.insert(name, layout.attributes.len() - 1);
                    layout.attributes.len() - 1
                }
            };
            let missing_is_null = column.nullable && role.is_some_and(|role| role != column.name);
            layout.columns.push(ColumnRead { attribute, missing_is_null, last: false });
        }
        for attribute in 0..layout.attributes.len() {
            if let Some(last) = layout.columns.iter_mut().rev().find(|read| read.attribute == attribute) {
                last.last = true;
            }
        }
        let position = |name: &str| replica.columns.iter().position(|column| column.name == name);
        layout.soft_delete = replica.soft_delete.and_then(position);
        layout.synced_id = position(replica.synced_id);
        layout.synced_data = replica.synced_data.and_then(position);
        layout.integer_id = replica.column(replica.synced_id).is_some_and(|column| column.kind == ColumnKind::Integer);
        Some(layout)
    }
}

/// A record read into cells, waiting for its round.
#[derive(Debug)]
struct Staged {
    layout: usize,
    /// The written columns, by position.
    columns: u64,
    /// Its first cell in the batch's cells (one per written column, in table order).
    start: usize,
    key: RowKey<'static>,
}

/// What one record leaves while it is read; reused from record to record.
#[derive(Debug, Default)]
struct Scratch<'m> {
    /// Per attribute number, the last value of a plain key of that name.
    plain: Vec<Option<Value>>,
    /// The last `id`, `created_at`, `updated_at`, `canceled_at`.
    id: Option<Value>,
    created: Option<Value>,
    updated: Option<Value>,
    canceled: Option<Value>,
    links: Option<Map<String, Value>>,
    links_seen: bool,
    /// Keys not read that had a value: sideloads, should `links` name them.
    others: Vec<Cow<'m, str>>,
    /// The attributes' values, then the row's cells, by column position.
    values: Vec<Option<Value>>,
    cells: Vec<Option<Value>>,
}

impl Scratch<'_> {
    fn start(&mut self, attributes: usize) {
        self.plain.clear();
        self.plain.resize(attributes, None);
        self.id = None;
        self.created = None;
        self.updated = None;
        self.canceled = None;
        self.links = None;
        self.links_seen = false;
        self.others.clear();
    }
}

/// What C-18 reads of a record: its `id` as text and its `updated_at` (`dedup::record_key`).
type RecordKey = (String, Option<DateTime<Utc>>);

/// What the current message held so far.
#[derive(Debug, Default)]
struct Tally {
    events: usize,
    records: usize,
    /// The records of its first event.
    first_records: usize,
    /// Its first event's name and the C-18 parts of that event's first record.
    first: Option<(String, RecordKey)>,
}

/// Where an event's records go.
#[derive(Clone, Copy)]
enum Target {
    /// Written to the replica of this layout.
    Write(usize),
    /// Checked only: an unknown event type, or a model without replica (C-17).
    Check,
}

/// The message does not take this path (never an error of the message: the general path
/// decides).
struct Refused;

struct Decoder<'r, 'm> {
    rules: &'r Rules,
    /// The batch's topic, which picks the replica of a model name.
    topic: &'m str,
    /// Whether the topic is in import mode (C-8).
    import: bool,
    /// Event times after this are refused (`timestamp_in_future`).
    latest: DateTime<Utc>,
    /// Layouts met so far; the first is [`Layout::bare`].
    layouts: Vec<Layout>,
    scratch: Scratch<'m>,
    /// Every staged row's cells, row after row.
    cells: Vec<Value>,
    rows: Vec<Staged>,
    message: Tally,
}

impl<'m> Decoder<'_, 'm> {
    /// Reads one message; its C-18 key when it holds one event of one record.
    fn read(&mut self, message: &'m InboundMessage) -> Option<Option<RecordKey>> {
        self.message = Tally::default();
        let Some(payload) = message.payload.as_deref() else { return Some(None) };
        if payload.len() > self.rules.max_message_bytes {
            return None;
        }
        #[cfg(feature = "avro")]
        if super::batch::rejection(payload).is_some() {
            return None;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let read = Envelope(&mut *self).deserialize(&mut deserializer).and_then(|()| deserializer.end());
        read.ok()?;
        let tally = std::mem::take(&mut self.message);
        if tally.records > self.rules.max_records {
            return None;
        }
        Some(match tally.first {
            Some((event, parts)) if tally.events == 1 && tally.first_records == 1 => Some(group_key(&event, parts)),
            _ => None,
        })
    }

    /// Where the records of an event go.
    fn target(&mut self, event: &str, model_name: &str) -> Result<Target, Refused> {
        let Some(kind) = EventKind::classify(event) else {
            tracing::debug!(event, "unknown event type; not persisted");
            return Ok(Target::Check);
        };
        let Some(replica) = self.rules.replicas.find_on(self.topic, model_name) else {
            if self.rules.unknown_model == UnknownModel::DeadLetter {
                return Err(Refused);
            }
            tracing::debug!(model = model_name, "unknown model; not persisted");
            return Ok(Target::Check);
        };
        // Destroys plan strategies and deletes; imports write unguarded: the general path.
        if kind == EventKind::Destroyed || (self.import && kind != EventKind::Updated) {
            return Err(Refused);
        }
        if let Some(index) =
            self.layouts.iter().position(|layout| layout.replica.is_some_and(|r| std::ptr::eq(r, replica)))
        {
            return Ok(Target::Write(index));
        }
        self.layouts.push(Layout::new(replica).ok_or(Refused)?);
        Ok(Target::Write(self.layouts.len() - 1))
    }

    /// Ends the record just read into the scratch: checks it and, for a written one, stages
    /// its cells.
    fn record(&mut self, target: Target) -> Result<(), Refused> {
        let layout = match target {
            Target::Write(index) => &self.layouts[index],
            Target::Check => &self.layouts[0],
        };
        let scratch = &mut self.scratch;
        // Keys that `links` names are sideloads (C-6), not attributes: this path takes
        // none; a sideload of `null` is no sideload.
        if let Some(links) = &scratch.links {
            for name in links.keys() {
                if scratch.others.iter().any(|other| other.as_ref() == name.as_str()) {
                    return Err(Refused);
                }
                if let Some(&number) = layout.index.get(name.as_str()) {
                    match &scratch.plain[number] {
                        Some(Value::Null) => scratch.plain[number] = None,
                        Some(_) => return Err(Refused),
                        None => {}
                    }
                }
            }
        }
        let (Target::Write(index), Some(replica)) = (target, layout.replica) else { return Ok(()) };
        // The attributes as the canonical form has them: a plain key wins over the id and
        // times, which win over what the links give.
        let values = &mut scratch.values;
        values.clear();
        for number in 0..layout.attributes.len() {
            let value = match scratch.plain[number].take() {
                Some(value) => Some(value),
                None => match number {
                    SYNCED_ID => Some(scratch.id.take().unwrap_or(Value::Null)),
                    CREATED => scratch.created.take(),
                    UPDATED => scratch.updated.take(),
                    CANCELED => scratch.canceled.take(),
                    _ => scratch.links.as_ref().and_then(|links| from_links(links, layout.attributes[number])),
                },
            };
            values.push(value);
        }
        self.stage(index, replica, None)
    }

    /// Ends a record of a model with `synced_data`, read whole (`raw`): made into its
    /// canonical form (C-6) as the general path makes it, its attributes as JSON text for
    /// `synced_data`.
    fn mapped(&mut self, index: usize, raw: RawRecord) -> Result<(), Refused> {
        let layout = &self.layouts[index];
        let replica = layout.replica.ok_or(Refused)?;
        let record = deserialize_record(0, raw).map_err(|_| Refused)?;
        let sideloaded = record.has_many.iter().any(|(_, records)| records.is_some())
            || record.has_one.iter().any(|(_, record)| record.is_some());
        if sideloaded {
            return Err(Refused);
        }
        let text = serde_json::to_string(&record.attributes).map_err(|_| Refused)?;
        let mut attributes = record.attributes;
        let values = &mut self.scratch.values;
        values.clear();
        values.extend(layout.attributes.iter().map(|name| attributes.swap_remove(*name)));
        self.stage(index, replica, Some(text))
    }

    /// Checks the attributes of a record (in the scratch's `values`), and stages its cells:
    /// [`crate::consumer::replica::plan`]'s rules for a record written blind.
    fn stage(
        &mut self,
        index: usize,
        replica: &'static ReplicaDescriptor,
        data: Option<String>,
    ) -> Result<(), Refused> {
        let layout = &self.layouts[index];
        let scratch = &mut self.scratch;
        let values = &mut scratch.values;
        let Some(id) = values[SYNCED_ID].clone().filter(|id| !id.is_null()) else { return Err(Refused) };
        if layout.integer_id && !is_canonical_integer_id(&id) {
            return Err(Refused);
        }
        let mut event_time = None;
        for number in [UPDATED, CREATED] {
            match &values[number] {
                None | Some(Value::Null) => continue,
                Some(value) => {
                    event_time = Some(parse_timestamp(value).ok_or(Refused)?);
                    break;
                }
            }
        }
        if event_time.is_some_and(|time| time > self.latest) {
            return Err(Refused);
        }
        let has_canceled_at = values[CANCELED].is_some();
        let cells = &mut scratch.cells;
        cells.clear();
        cells.resize(replica.columns.len(), None);
        for (position, (column, read)) in replica.columns.iter().zip(&layout.columns).enumerate() {
            if Some(position) == layout.synced_data {
                continue;
            }
            let value = if read.last { values[read.attribute].take() } else { values[read.attribute].clone() };
            let value = match value {
                Some(value) => value,
                None if read.missing_is_null => Value::Null,
                None => continue,
            };
            let normal = match normalized(column.kind, &value) {
                Ok(Cow::Owned(normal)) => Some(normal),
                Ok(Cow::Borrowed(_)) => None,
                Err(_) => return Err(Refused),
            };
            let value = normal.unwrap_or(value);
            if value.is_null() && !column.nullable {
                return Err(Refused);
            }
            cells[position] = Some(value);
        }
        let written = |name: &str| {
            replica.columns.iter().position(|column| column.name == name).and_then(|position| cells[position].as_ref())
        };
        if !guard_decidable(replica, event_time, written) {
            return Err(Refused);
        }
        // What a `_created` or `_updated` event writes besides (`plan::take_intent`).
        if let Some(position) = layout.soft_delete {
            if !has_canceled_at {
                cells[position] = Some(Value::Null);
            }
        }
        let key = RowKey::of(&id).into_owned();
        if let Some(position) = layout.synced_id {
            cells[position] = Some(id);
        }
        // `synced_data` goes as the JSON text it is (see `Group::data`).
        if let (Some(position), Some(text)) = (layout.synced_data, data) {
            if replica.columns[position].kind != ColumnKind::Json {
                return Err(Refused);
            }
            cells[position] = Some(Value::String(text));
        }
        let mut columns = 0u64;
        for (position, (column, cell)) in replica.columns.iter().zip(cells.iter()).enumerate() {
            if let Some(value) = cell {
                if !ColumnArray::holds(column.kind, value) {
                    return Err(Refused);
                }
                columns |= 1 << position;
            }
        }
        if columns == 0 {
            return Err(Refused);
        }
        let start = self.cells.len();
        self.cells.extend(cells.iter_mut().filter_map(Option::take));
        self.rows.push(Staged { layout: index, columns, start, key });
        Ok(())
    }
}

/// What the links give `attribute` (C-6): `synced_<name>_id` and `synced_<name>_type` of a
/// to-one link, `synced_<singular>_ids` of a to-many one.
fn from_links(links: &Map<String, Value>, attribute: &str) -> Option<Value> {
    let rest = attribute.strip_prefix("synced_")?;
    let mut found = None;
    for (name, link) in links {
        let named = |suffix: &str| rest.strip_suffix(suffix) == Some(name.as_str());
        match link {
            Value::Object(link) if named("_id") => found = Some(link.get("id").cloned().unwrap_or(Value::Null)),
            Value::Object(link) if named("_type") => found = Some(link.get("type").cloned().unwrap_or(Value::Null)),
            Value::Object(_) => {}
            Value::Array(_) if rest.strip_suffix("_ids").is_some_and(|singular| singular == singularize(name)) => {
                found = Some(link.clone());
            }
            Value::Array(_) => {}
            other if named("_id") => found = Some(other.clone()),
            _ => {}
        }
    }
    found
}

fn refused<E: de::Error>() -> E {
    E::custom("left to the general path")
}

/// A key, borrowed from the message when it has no escapes.
struct Key;

impl<'m> DeserializeSeed<'m> for Key {
    type Value = Cow<'m, str>;

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'m> Visitor<'m> for Key {
    type Value = Cow<'m, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'m str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text))
    }
}

/// A value skipped; whether it was `null`.
struct Skipped;

impl<'m> DeserializeSeed<'m> for Skipped {
    type Value = bool;

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'m> Visitor<'m> for Skipped {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'m>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'m>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// A whole message value.
struct Envelope<'d, 'r, 'm>(&'d mut Decoder<'r, 'm>);

impl<'m> DeserializeSeed<'m> for Envelope<'_, '_, 'm> {
    type Value = ();

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'m> Visitor<'m> for Envelope<'_, '_, 'm> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a message object or null")
    }

    /// A tombstone: no events.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'m>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key_seed(Key)? {
            if key != "message" {
                map.next_value::<IgnoredAny>()?;
            } else if std::mem::replace(&mut seen, true) {
                return Err(refused());
            } else {
                map.next_value_seed(Events(&mut *self.0))?;
            }
        }
        Ok(())
    }
}

/// `"message"`: `null` or the events.
struct Events<'d, 'r, 'm>(&'d mut Decoder<'r, 'm>);

impl<'m> DeserializeSeed<'m> for Events<'_, '_, 'm> {
    type Value = ();

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'m> Visitor<'m> for Events<'_, '_, 'm> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of events or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'m>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'m>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Event(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One event of the message.
struct Event<'d, 'r, 'm>(&'d mut Decoder<'r, 'm>);

impl<'m> DeserializeSeed<'m> for Event<'_, '_, 'm> {
    type Value = ();

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'m> Visitor<'m> for Event<'_, '_, 'm> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'m>>(self, mut map: A) -> Result<(), A::Error> {
        let decoder = self.0;
        let position = decoder.message.events;
        decoder.message.events += 1;
        let (mut event, mut model_name, mut data_seen): (Option<Cow<'m, str>>, Option<Cow<'m, str>>, bool) =
            (None, None, false);
        while let Some(key) = map.next_key_seed(Key)? {
            // A repeated key is left to the general path.
            match key.as_ref() {
                "event" if event.is_none() => event = Some(map.next_value_seed(Key)?),
                "model_name" if model_name.is_none() => model_name = Some(map.next_value_seed(Key)?),
                "event" | "model_name" => return Err(refused()),
                "data" if std::mem::replace(&mut data_seen, true) => return Err(refused()),
                "data" => {
                    // The records are read as they come: their event must be known.
                    let (Some(event), Some(model_name)) = (&event, &model_name) else { return Err(refused()) };
                    let target = decoder.target(event, model_name).map_err(|Refused| refused())?;
                    let records = map.next_value_seed(Data { decoder: &mut *decoder, target, event: position })?;
                    if position == 0 {
                        decoder.message.first_records = records;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (Some(event), Some(_)) = (event, model_name) else { return Err(refused()) };
        if position == 0 {
            if let Some((name, _)) = &mut decoder.message.first {
                *name = event.into_owned();
            }
        }
        Ok(())
    }
}

/// An event's `data`: `null` is no records, an array its records, an object one record;
/// gives how many.
struct Data<'d, 'r, 'm> {
    decoder: &'d mut Decoder<'r, 'm>,
    target: Target,
    event: usize,
}

impl<'m> DeserializeSeed<'m> for Data<'_, '_, 'm> {
    type Value = usize;

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'m> Visitor<'m> for Data<'_, '_, 'm> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("records")
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'m>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq
            .next_element_seed(Record {
                decoder: &mut *self.decoder,
                target: self.target,
                first: self.event == 0 && count == 0,
            })?
            .is_some()
        {
            count += 1;
        }
        Ok(count)
    }

    fn visit_map<A: MapAccess<'m>>(self, map: A) -> Result<usize, A::Error> {
        Record { decoder: self.decoder, target: self.target, first: self.event == 0 }.visit_map(map)?;
        Ok(1)
    }
}

/// One record.
struct Record<'d, 'r, 'm> {
    decoder: &'d mut Decoder<'r, 'm>,
    target: Target,
    /// The first record of the message's first event (C-18 reads it).
    first: bool,
}

impl<'m> DeserializeSeed<'m> for Record<'_, '_, 'm> {
    type Value = ();

    fn deserialize<D: Deserializer<'m>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// Where a record's key goes.
enum Slot {
    Links,
    Id,
    Created,
    Updated,
    Canceled,
    Attribute(usize),
    Other,
}

impl<'m> Visitor<'m> for Record<'_, '_, 'm> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'m>>(self, mut map: A) -> Result<(), A::Error> {
        let decoder = self.decoder;
        decoder.message.records += 1;
        let layout = match self.target {
            Target::Write(index) => &decoder.layouts[index],
            Target::Check => &decoder.layouts[0],
        };
        if let (Target::Write(index), Some(_)) = (self.target, layout.synced_data) {
            // `synced_data` holds every attribute: the record is read whole.
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
            while let Some(key) = map.next_key::<String>()? {
                members.push((key, map.next_value::<Value>()?));
            }
            let raw = RawRecord::Object(members);
            if self.first && decoder.rules.remove_duplicates {
                decoder.message.first = Some((String::new(), record_key(&raw)));
            }
            return decoder.mapped(index, raw).map_err(|Refused| refused());
        }
        let scratch = &mut decoder.scratch;
        scratch.start(layout.attributes.len());
        while let Some(key) = map.next_key_seed(Key)? {
            let slot = match key.as_ref() {
                "links" => Slot::Links,
                "id" => Slot::Id,
                "created_at" => Slot::Created,
                "updated_at" => Slot::Updated,
                "canceled_at" => Slot::Canceled,
                name => layout.index.get(name).map_or(Slot::Other, |&number| Slot::Attribute(number)),
            };
            match slot {
                Slot::Links => {
                    // A repeated `links` is left to the general path.
                    if std::mem::replace(&mut scratch.links_seen, true) {
                        return Err(refused());
                    }
                    match map.next_value::<Value>()? {
                        Value::Null => {}
                        Value::Object(links) => scratch.links = Some(links),
                        _ => return Err(refused()),
                    }
                }
                Slot::Id => scratch.id = Some(map.next_value()?),
                Slot::Created => scratch.created = Some(map.next_value()?),
                Slot::Updated => scratch.updated = Some(map.next_value()?),
                Slot::Canceled => scratch.canceled = Some(map.next_value()?),
                Slot::Attribute(number) => scratch.plain[number] = Some(map.next_value()?),
                Slot::Other => {
                    if !map.next_value_seed(Skipped)? {
                        scratch.others.push(key);
                    }
                }
            }
        }
        if self.first && decoder.rules.remove_duplicates {
            // What C-18 reads of the message's first record (`dedup::record_key`).
            let id = match &scratch.id {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            };
            let time = match &scratch.updated {
                Some(value @ Value::String(_)) => parse_timestamp(value),
                _ => None,
            };
            decoder.message.first = Some((String::new(), (id, time)));
        }
        decoder.record(self.target).map_err(|Refused| refused())
    }
}

#[cfg(test)]
mod tests;
