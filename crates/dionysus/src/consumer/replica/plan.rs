//! From a deserialized record to a row change, as dionysus-rb's persistor decides it, but as
//! pure functions over JSON so the rules are tested without a database:
//!
//! * [`prepare`] checks the record against the replica's columns (C-9: an id is required;
//!   values must fit the column types) and computes what would be assigned (C-11: the whole
//!   attributes into `synced_data`, `from` mappings, only the model's columns);
//! * [`plan`] applies the timestamp guard (C-10, parsed instants, ties apply), restore
//!   (C-12) and remove (C-13, C-14) given the current row, and yields the new row and the
//!   local changes (C-15).

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
use serde_json::{Map, Number, Value};

use super::column_type::ColumnKind;
use super::descriptor::{Column, DestroyStrategy, ReplicaDescriptor};
use super::deserialize::Record;
use crate::wire::envelope::parse_timestamp;
use crate::wire::naming::EventKind;

/// Changed columns of one row: column → `[old, new]` (dionysus-rb's `local_changes` entry).
pub type ChangeSet = Map<String, Value>;

/// A record that cannot be stored in its replica table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// The record has no `id` (C-9).
    #[error("[Dionysus] synced_id nil for {model} record, that should never happen!")]
    MissingId {
        /// Source model.
        model: String,
    },
    /// A value does not fit its column.
    #[error("{model} {id}: `{key}` = {value} does not fit column `{column}` ({expected})")]
    WrongType {
        /// Source model.
        model: &'static str,
        /// The record's id, as text.
        id: String,
        /// The payload attribute.
        key: &'static str,
        /// The replica column.
        column: &'static str,
        /// The value as JSON, cut to 80 characters.
        value: String,
        /// What the column accepts, e.g. "a timestamp".
        expected: &'static str,
    },
}

impl RecordError {
    /// A short machine-readable reason, used in dead-letter headers.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RecordError::MissingId { .. } => "missing_id",
            RecordError::WrongType { .. } => "wrong_type",
        }
    }
}

/// A record checked against its replica model, ready to be planned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    /// The source id, as it goes into the `synced_id` column.
    pub synced_id: Value,
    /// `updated_at`, else `created_at`, of the payload (C-10); `None` when neither is set.
    pub event_time: Option<DateTime<Utc>>,
    /// Whether the payload had a `canceled_at` key (even `null`).
    pub has_canceled_at: bool,
    /// Column → value, in column order, normalised for the column kind.
    pub assignments: Vec<(&'static Column, Value)>,
}

/// What to do with one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowPlan {
    /// The record is older than the row (C-10): nothing is touched.
    Stale,
    /// Insert (when `exists` is false) or update the row to `row`.
    Write {
        /// The complete row after the change (for an insert: only the assigned columns).
        row: Map<String, Value>,
        /// Whether the row exists already.
        exists: bool,
        /// The changed columns.
        changes: ChangeSet,
    },
    /// Delete the existing row (C-13 destroy).
    Delete {
        /// Every column of the row → `[old, null]`.
        changes: ChangeSet,
    },
    /// Nothing to do: a destroy for a row that does not exist (C-14).
    Nothing,
}

/// Checks `record` against `replica` and computes the assignments (C-9, C-11).
pub(crate) fn prepare(replica: &ReplicaDescriptor, record: &Record) -> Result<Prepared, RecordError> {
    prepare_with(replica, record, true)
}

/// [`prepare`] without the `synced_data` column, for a caller that writes it from the
/// record's attributes itself (as JSON text, without copying them).
pub(crate) fn prepare_columns(replica: &ReplicaDescriptor, record: &Record) -> Result<Prepared, RecordError> {
    prepare_with(replica, record, false)
}

fn prepare_with(replica: &ReplicaDescriptor, record: &Record, data: bool) -> Result<Prepared, RecordError> {
    let mut assignments = Vec::with_capacity(replica.columns.len());
    let checked = walk(replica, record, |column, value| match value {
        Assigned::Attributes if data => assignments.push((column, Value::Object(record.attributes.clone()))),
        Assigned::Attributes => {}
        Assigned::Value(value) => assignments.push((column, value.into_owned())),
    })?;
    Ok(Prepared {
        synced_id: checked.synced_id.clone(),
        event_time: checked.event_time,
        has_canceled_at: record.attributes.contains_key("synced_canceled_at"),
        assignments,
    })
}

/// [`prepare`]'s checks alone, keeping nothing: whether `record` fits `replica`, and its
/// event time. Copies no value that fits its column as sent (`synced_data` included), so a
/// whole message can be checked before anything is written without holding a second copy.
pub(crate) fn check(replica: &ReplicaDescriptor, record: &Record) -> Result<Option<DateTime<Utc>>, RecordError> {
    walk(replica, record, |_, _| {}).map(|checked| checked.event_time)
}

/// What a column is assigned, as [`walk`] yields it.
enum Assigned<'r> {
    /// The record's whole attributes (the `synced_data` column).
    Attributes,
    /// A value normalised for its column, borrowed when it fits as sent.
    Value(Cow<'r, Value>),
}

/// The synced id and event time of a record that [`walk`] found fit.
struct Checked<'r> {
    synced_id: &'r Value,
    event_time: Option<DateTime<Utc>>,
}

/// The rules of [`prepare`] and [`check`]: yields every column's assignment in column order
/// to `assign`, or the first value that does not fit.
fn walk<'r>(
    replica: &ReplicaDescriptor,
    record: &'r Record,
    mut assign: impl FnMut(&'static Column, Assigned<'r>),
) -> Result<Checked<'r>, RecordError> {
    let Some(synced_id) = record.synced_id() else {
        return Err(RecordError::MissingId { model: replica.model.to_owned() });
    };
    let attributes = &record.attributes;
    let wrong = |key: &'static str, column: &'static str, value: &Value, expected: &'static str| {
        let id_text = match synced_id {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let mut shown = value.to_string();
        if shown.len() > 80 {
            let mut end = 77;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        RecordError::WrongType { model: replica.model, id: id_text.clone(), key, column, value: shown, expected }
    };
    let mut event_time = None;
    for key in ["synced_updated_at", "synced_created_at"] {
        match attributes.get(key) {
            None | Some(Value::Null) => continue,
            Some(value) => {
                let time = parse_timestamp(value).ok_or_else(|| wrong(key, key, value, "a timestamp"))?;
                event_time = Some(time);
                break;
            }
        }
    }
    for column in replica.columns {
        if Some(column.name) == replica.synced_data {
            assign(column, Assigned::Attributes);
            continue;
        }
        // A timestamp column takes its role's attribute (C-11); with a name other than the
        // attribute's, it is assigned NULL when the payload lacks the key.
        let role = if column.source == column.name { replica.timestamp_role(column.name) } else { None };
        let value = match attributes.get(role.unwrap_or(column.source)) {
            Some(value) => value,
            None if column.nullable && role.is_some_and(|role| role != column.name) => &Value::Null,
            None => continue,
        };
        let value =
            normalized(column.kind, value).map_err(|expected| wrong(column.source, column.name, value, expected))?;
        if value.is_null() && !column.nullable {
            return Err(wrong(column.source, column.name, &Value::Null, "a value: the column is not nullable"));
        }
        assign(column, Assigned::Value(value));
    }
    Ok(Checked { synced_id, event_time })
}

/// The canonical text of a time in replica rows and local changes.
pub(crate) fn canonical_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Whether `text`, which parses to `time`, is already [`canonical_time`] of it, checked
/// without writing the canonical text out: `YYYY-MM-DDTHH:MM:SS`, then `.` and 3, 6 or 9
/// digits (the fewest that hold the nanoseconds, none when they are 0), then `Z`.
fn is_canonical_time(text: &str, time: &DateTime<Utc>) -> bool {
    let nanos = time.timestamp_subsec_nanos();
    let digits = match nanos {
        0 => 0,
        _ if nanos.is_multiple_of(1_000_000) => 3,
        _ if nanos.is_multiple_of(1_000) => 6,
        _ if nanos < 1_000_000_000 => 9,
        // A leap second: left to the formatter.
        _ => return false,
    };
    let bytes = text.as_bytes();
    let length = if digits == 0 { 20 } else { 21 + digits };
    if bytes.len() != length || bytes[length - 1] != b'Z' || !(0..=9999).contains(&time.year()) {
        return false;
    }
    let fraction = match digits {
        0 => 0,
        3 => nanos / 1_000_000,
        6 => nanos / 1_000,
        _ => nanos,
    };
    let fields: [(usize, usize, u32); 7] = [
        (0, 4, time.year().unsigned_abs()),
        (5, 2, time.month()),
        (8, 2, time.day()),
        (11, 2, time.hour()),
        (14, 2, time.minute()),
        (17, 2, time.second()),
        (20, digits, fraction),
    ];
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    separators.iter().all(|&(at, byte)| bytes[at] == byte)
        && (digits == 0 || bytes[19] == b'.')
        && fields.iter().all(|&(start, width, value)| digits_equal(&bytes[start..start + width], value))
}

/// Whether `digits` are exactly the decimal digits of `value`, zero-padded to their width.
fn digits_equal(digits: &[u8], mut value: u32) -> bool {
    for &digit in digits.iter().rev() {
        if !digit.is_ascii_digit() || u32::from(digit - b'0') != value % 10 {
            return false;
        }
        value /= 10;
    }
    value == 0
}

/// Normalises `value` for a column of `kind`; `Err` names what the column accepts.
pub(crate) fn normalize(kind: ColumnKind, value: &Value) -> Result<Value, &'static str> {
    normalized(kind, value).map(Cow::into_owned)
}

/// [`normalize`], borrowing `value` when it fits the column as it is.
pub(crate) fn normalized(kind: ColumnKind, value: &Value) -> Result<Cow<'_, Value>, &'static str> {
    let same = Cow::Borrowed(value);
    if value.is_null() {
        return Ok(same);
    }
    let owned = |value: Value| Cow::Owned(value);
    match kind {
        ColumnKind::Json => Ok(same),
        ColumnKind::Integer => match value {
            Value::Number(number) if number.is_i64() || number.is_u64() => Ok(same),
            Value::Number(number) => match number.as_f64() {
                Some(float) if float.fract() == 0.0 && float.abs() < 9.0e15 => Ok(owned(Value::from(float as i64))),
                _ => Err("an integer"),
            },
            Value::String(text) => text.trim().parse::<i64>().map(|n| owned(Value::from(n))).map_err(|_| "an integer"),
            _ => Err("an integer"),
        },
        ColumnKind::Float => match value {
            Value::Number(_) => Ok(same),
            Value::String(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(|number| owned(Value::Number(number)))
                .ok_or("a number"),
            _ => Err("a number"),
        },
        ColumnKind::Decimal => match value {
            Value::Number(_) => Ok(same),
            Value::String(text) if text.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
                Ok(if text.trim().len() == text.len() { same } else { owned(Value::String(text.trim().to_owned())) })
            }
            _ => Err("a decimal number"),
        },
        ColumnKind::Bool => match value {
            Value::Bool(_) => Ok(same),
            Value::String(text) if text == "true" || text == "false" => Ok(owned(Value::Bool(text == "true"))),
            _ => Err("a boolean"),
        },
        ColumnKind::Text => match value {
            Value::String(_) => Ok(same),
            Value::Number(number) => Ok(owned(Value::String(number.to_string()))),
            Value::Bool(boolean) => Ok(owned(Value::String(boolean.to_string()))),
            _ => Err("a string"),
        },
        ColumnKind::Timestamp => match (parse_timestamp(value), value) {
            // Most producers already write the canonical form: kept as it is, not rewritten.
            (Some(time), Value::String(text)) if is_canonical_time(text, &time) => Ok(same),
            (Some(time), _) => Ok(owned(Value::String(canonical_time(&time)))),
            (None, _) => Err("a timestamp"),
        },
        ColumnKind::Date => {
            if let Value::String(text) = value {
                if let Ok(date) = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
                    return Ok(owned(Value::String(date.to_string())));
                }
            }
            parse_timestamp(value).map(|time| owned(Value::String(time.date_naive().to_string()))).ok_or("a date")
        }
        ColumnKind::Uuid => match value {
            Value::String(text) if is_uuid(text) => Ok(same),
            _ => Err("a UUID string"),
        },
        ColumnKind::Array => match value {
            Value::Array(_) => Ok(same),
            _ => Err("an array"),
        },
    }
}

fn is_uuid(text: &str) -> bool {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Normalises a row read from the database (`to_jsonb(row)`) so it compares equal to
/// normalised payload values.
pub(crate) fn normalize_row(replica: &ReplicaDescriptor, row: &mut Map<String, Value>) {
    for column in replica.columns {
        if let Some(value) = row.get_mut(column.name) {
            let changed = match normalized(column.kind, value) {
                Ok(Cow::Owned(normalized)) => Some(normalized),
                _ => None,
            };
            if let Some(normalized) = changed {
                *value = normalized;
            }
        }
    }
}

/// What a record does to its row, decided without looking at the row: the part of
/// dionysus-rb's persistence rules (C-12, C-13) that only depends on the event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Intent {
    /// Delete the row (C-13 destroy); a missing row is left alone (C-14).
    Remove,
    /// Write these columns (the synced id included).
    Write {
        /// Column → value.
        assigned: Vec<(&'static str, Value)>,
        /// A column whose stored non-null value wins over the assigned one: a repeated
        /// cancel keeps the first cancel time.
        keep: Option<&'static str>,
    },
}

/// Decides what `kind` does to the row of `prepared`, before the stored row is known,
/// moving the prepared values into the result (`prepared.assignments` is left empty).
///
/// `aggregate_root` is false for sideloaded records (which are never removed), `now` is the
/// cancel time when the event has no time of its own.
pub(crate) fn take_intent(
    replica: &ReplicaDescriptor,
    kind: EventKind,
    aggregate_root: bool,
    prepared: &mut Prepared,
    now: DateTime<Utc>,
) -> Intent {
    let assignments = std::mem::take(&mut prepared.assignments);
    let assigned = assignments.into_iter().map(|(column, value)| (column.name, value)).collect();
    intent_with(replica, kind, aggregate_root, prepared, assigned, now)
}

fn intent_with(
    replica: &ReplicaDescriptor,
    kind: EventKind,
    aggregate_root: bool,
    prepared: &Prepared,
    mut assigned: Vec<(&'static str, Value)>,
    now: DateTime<Utc>,
) -> Intent {
    let mut keep = None;
    let has_canceled_at = prepared.has_canceled_at;
    if kind == EventKind::Destroyed && aggregate_root {
        // C-13: the strategy runs unless the payload's canceled_at soft-deletes the row
        // through the soft-delete column; without a strategy the row is deleted.
        match (replica.strategy, replica.soft_delete) {
            (DestroyStrategy::Set { column, value }, soft_delete) if !(has_canceled_at && soft_delete.is_some()) => {
                let value = value.to_json();
                let value =
                    replica.column(column).and_then(|target| normalize(target.kind, &value).ok()).unwrap_or(value);
                assign(&mut assigned, column, value);
            }
            (DestroyStrategy::Cancel, Some(column)) if !has_canceled_at => {
                let canceled_at = Value::String(canonical_time(&prepared.event_time.unwrap_or(now)));
                assign(&mut assigned, column, canceled_at);
                keep = Some(column);
            }
            (_, Some(_)) if has_canceled_at => {}
            _ => return Intent::Remove,
        }
    } else if let Some(column) = replica.soft_delete {
        if !has_canceled_at {
            assign(&mut assigned, column, Value::Null);
        }
    }
    assign(&mut assigned, replica.synced_id, prepared.synced_id.clone());
    Intent::Write { assigned, keep }
}

fn assign(assigned: &mut Vec<(&'static str, Value)>, name: &'static str, value: Value) {
    match assigned.iter_mut().find(|(column, _)| *column == name) {
        Some(slot) => slot.1 = value,
        None => assigned.push((name, value)),
    }
}

/// Whether the set-based write ([`crate::consumer::replica::sql::upsert_rows`]) decides the
/// timestamp guard exactly as [`plan`] does. PostgreSQL sees the event time only through the
/// written time columns: the written `synced_updated_at`, else the written
/// `synced_created_at` (the guard column of a model without `synced_updated_at`), and none
/// when neither is written. That must be the event's time: it is whenever the payload
/// carries `updated_at`, as producers send it, and for a record with no time at all, which
/// both apply unconditionally.
///
/// Decided from the prepared values, before [`take_intent`]: the intent writes only the
/// soft-delete column and the synced id besides them, so the time columns it writes are
/// these (a soft-delete column that is also a time column is left to the exact path).
pub(crate) fn guard_from_prepared(replica: &ReplicaDescriptor, prepared: &Prepared) -> bool {
    guard_decidable(replica, prepared.event_time, |name| {
        prepared.assignments.iter().find(|(column, _)| column.name == name).map(|(_, value)| value)
    })
}

/// [`guard_from_prepared`] for a record whose event time is `event_time` and whose
/// assignments `written` gives by column name (`None`: not assigned).
pub(crate) fn guard_decidable<'v>(
    replica: &ReplicaDescriptor,
    event_time: Option<DateTime<Utc>>,
    written: impl Fn(&str) -> Option<&'v Value>,
) -> bool {
    let time_columns = [replica.synced_updated_at, replica.synced_created_at];
    let strategy_column = match replica.strategy {
        DestroyStrategy::Set { column, .. } => Some(column),
        _ => None,
    };
    if [replica.soft_delete, strategy_column].into_iter().flatten().any(|name| time_columns.contains(&Some(name)))
        || time_columns
            .into_iter()
            .flatten()
            .any(|name| replica.column(name).is_none_or(|c| c.kind != ColumnKind::Timestamp))
    {
        return false;
    }
    // No guard column: PostgreSQL applies every record, as `plan` does.
    if replica.guard_column().is_none() {
        return true;
    }
    // Per time column: `None` when not written, else the time written (`None` for NULL).
    let written = |name: Option<&str>| name.and_then(&written).map(parse_timestamp);
    // What `sql::upsert_parts` compares: COALESCE over the written time columns.
    let column_time = match (written(replica.synced_updated_at), written(replica.synced_created_at)) {
        (Some(updated), Some(created)) => updated.or(created),
        (Some(time), None) | (None, Some(time)) => time,
        (None, None) => None,
    };
    column_time == event_time
}

/// Whether the stored row's time makes the record stale (C-10): both times known and the
/// event's older. The stored time is the [`ReplicaDescriptor::guard_column`]'s. Ties apply.
pub(crate) fn is_stale(replica: &ReplicaDescriptor, prepared: &Prepared, old: &Map<String, Value>) -> bool {
    let local_time = replica.guard_column().and_then(|column| old.get(column)).and_then(parse_timestamp);
    matches!((prepared.event_time, local_time), (Some(event_time), Some(local_time)) if event_time < local_time)
}

/// Decides what happens to the row of one prepared record (C-10, C-12, C-13, C-14), given
/// the current row `old` (normalised); see [`take_intent`] for the other arguments. The
/// prepared values move into the new row; the changes are only computed when `changes` is
/// true (else they are empty).
pub(crate) fn plan(
    replica: &ReplicaDescriptor,
    kind: EventKind,
    aggregate_root: bool,
    mut prepared: Prepared,
    old: Option<&Map<String, Value>>,
    now: DateTime<Utc>,
    changes: bool,
) -> RowPlan {
    if old.is_some_and(|old| is_stale(replica, &prepared, old)) {
        return RowPlan::Stale;
    }
    let (mut assigned, keep) = match take_intent(replica, kind, aggregate_root, &mut prepared, now) {
        Intent::Write { assigned, keep } => (assigned, keep),
        Intent::Remove => {
            return match old {
                Some(old) if changes => RowPlan::Delete {
                    changes: old
                        .iter()
                        .filter(|(_, value)| !value.is_null())
                        .map(|(name, value)| (name.clone(), Value::Array(vec![value.clone(), Value::Null])))
                        .collect(),
                },
                Some(_) => RowPlan::Delete { changes: ChangeSet::new() },
                None => RowPlan::Nothing,
            }
        }
    };
    if let Some(column) = keep {
        if let Some(stored) = old.and_then(|old| old.get(column)).filter(|value| !value.is_null()) {
            assign(&mut assigned, column, stored.clone());
        }
    }
    let mut row = old.cloned().unwrap_or_default();
    let mut change_set = ChangeSet::new();
    for (name, value) in assigned {
        if changes {
            let before = old.and_then(|old| old.get(name)).cloned().unwrap_or(Value::Null);
            if before != value {
                change_set.insert(name.to_owned(), Value::Array(vec![before, value.clone()]));
            }
        }
        row.insert(name.to_owned(), value);
    }
    RowPlan::Write { row, exists: old.is_some(), changes: change_set }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Texts of `time` as producers write it: canonical, padded, with an offset, with a space.
    fn spellings(time: &DateTime<Utc>) -> Vec<String> {
        vec![
            canonical_time(time),
            time.to_rfc3339_opts(SecondsFormat::Nanos, true),
            time.to_rfc3339_opts(SecondsFormat::Millis, true),
            time.to_rfc3339_opts(SecondsFormat::Secs, true),
            time.to_rfc3339_opts(SecondsFormat::AutoSi, false),
            time.format("%Y-%m-%d %H:%M:%S%.fZ").to_string(),
            canonical_time(time).to_lowercase(),
        ]
    }

    proptest! {
        /// The shortcut agrees with writing the canonical text and comparing, for every
        /// spelling of any instant.
        #[test]
        fn canonical_times_are_recognised_exactly(
            seconds in -62_000_000_000_i64..253_402_300_799,
            nanos in prop_oneof![Just(0_u32), (0_u32..1000).prop_map(|n| n * 1_000_000),
                                 (0_u32..1_000_000).prop_map(|n| n * 1_000), 0_u32..1_000_000_000],
        ) {
            let time = DateTime::from_timestamp(seconds, nanos).unwrap();
            for text in spellings(&time) {
                if let Some(parsed) = parse_timestamp(&Value::String(text.clone())) {
                    prop_assert_eq!(is_canonical_time(&text, &parsed), text == canonical_time(&parsed), "{}", text);
                }
            }
        }
    }

    #[test]
    fn timestamps_already_canonical_are_kept_and_others_rewritten() {
        let kept = Value::String("2024-01-01T00:00:05.005Z".to_owned());
        assert!(matches!(normalized(ColumnKind::Timestamp, &kept), Ok(Cow::Borrowed(_))));
        for (text, canonical) in [
            ("2024-01-01T00:00:05.000Z", "2024-01-01T00:00:05Z"),
            ("2024-01-01T02:00:05.005+02:00", "2024-01-01T00:00:05.005Z"),
        ] {
            let value = Value::String(text.to_owned());
            let normalized = normalized(ColumnKind::Timestamp, &value).unwrap();
            assert_eq!(normalized.as_ref(), &Value::String(canonical.to_owned()), "{text}");
        }
    }
    use crate::consumer::replica::deserialize::deserialize_one;

    const fn column(name: &'static str, kind: ColumnKind, nullable: bool) -> Column {
        Column::named(name, kind, nullable)
    }

    static COLUMNS: [Column; 7] = [
        column("synced_id", ColumnKind::Integer, false),
        column("synced_created_at", ColumnKind::Timestamp, true),
        column("synced_updated_at", ColumnKind::Timestamp, true),
        column("synced_canceled_at", ColumnKind::Timestamp, true),
        column("synced_data", ColumnKind::Json, true),
        column("name", ColumnKind::Text, true),
        Column { name: "rental_type", source: "type", kind: ColumnKind::Text, nullable: true, sql_type: "text" },
    ];

    static RENTAL: ReplicaDescriptor = ReplicaDescriptor {
        model: "Rental",
        topic: "v8_rentals",
        table: "rentals",
        columns: &COLUMNS,
        synced_id: "synced_id",
        synced_updated_at: Some("synced_updated_at"),
        synced_created_at: Some("synced_created_at"),
        soft_delete: Some("synced_canceled_at"),
        strategy: DestroyStrategy::Cancel,
        synced_data: Some("synced_data"),
        named: crate::consumer::replica::NamedRoles { soft_delete: true, ..crate::consumer::replica::NamedRoles::NONE },
        declared_by: "tests::Rental",
        location: "plan.rs",
    };

    static DESTROYING: ReplicaDescriptor =
        ReplicaDescriptor { soft_delete: None, strategy: DestroyStrategy::Destroy, ..RENTAL };

    fn t(seconds: i64) -> String {
        canonical_time(
            &(DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap().to_utc()
                + chrono::Duration::seconds(seconds)),
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().to_utc()
    }

    fn row(value: Value) -> Map<String, Value> {
        let mut row = value.as_object().unwrap().clone();
        normalize_row(&RENTAL, &mut row);
        row
    }

    fn run(replica: &ReplicaDescriptor, kind: EventKind, payload: Value, old: Option<Value>) -> RowPlan {
        let record = deserialize_one(&payload).unwrap();
        let prepared = prepare(replica, &record).unwrap();
        let old = old.map(row);
        plan(replica, kind, true, prepared, old.as_ref(), now(), true)
    }

    fn written(plan: &RowPlan) -> &Map<String, Value> {
        match plan {
            RowPlan::Write { row, .. } => row,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn existing(updated: Option<i64>, created: Option<i64>) -> Value {
        json!({"synced_id": 1, "name": "old name", "synced_updated_at": updated.map(t), "synced_created_at": created.map(t), "synced_canceled_at": null})
    }

    /// c01: id → synced_id, timestamps → synced_*, synced_data holds the attributes.
    #[test]
    fn create_new_record() {
        let payload = json!({"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": "2024-01-01T00:01:41.000Z", "created_at": "2024-01-01T00:01:51.000Z"});
        let plan = run(&RENTAL, EventKind::Created, payload, None);
        let row = written(&plan);
        assert_eq!(row["synced_id"], 1);
        assert_eq!(row["synced_updated_at"], t(101));
        assert_eq!(row["synced_created_at"], t(111));
        assert_eq!(row["synced_canceled_at"], Value::Null);
        assert_eq!(
            row["synced_data"],
            json!({"synced_id": 1, "synced_created_at": "2024-01-01T00:01:51.000Z", "synced_updated_at": "2024-01-01T00:01:41.000Z", "name": "Villa Saganaki"})
        );
        assert!(matches!(plan, RowPlan::Write { exists: false, .. }));
    }

    /// c02 / c03: newer applies, older is ignored.
    #[test]
    fn guard_applies_newer_and_ignores_older() {
        let payload = |at: i64| json!({"id": 1, "name": "Villa Saganaki", "updated_at": t(at), "created_at": t(101)});
        let plan = run(&RENTAL, EventKind::Updated, payload(11), Some(existing(Some(10), Some(10))));
        assert_eq!(written(&plan)["name"], "Villa Saganaki");
        assert_eq!(written(&plan)["synced_updated_at"], t(11));
        assert_eq!(run(&RENTAL, EventKind::Updated, payload(9), Some(existing(Some(10), Some(10)))), RowPlan::Stale);
        // Ties apply (deviation table: equal timestamps are applied, as in the gem).
        assert!(matches!(
            run(&RENTAL, EventKind::Updated, payload(10), Some(existing(Some(10), Some(10)))),
            RowPlan::Write { .. }
        ));
    }

    /// c05: the event time is updated_at, else created_at.
    #[test]
    fn created_at_is_the_fallback_event_time() {
        let payload = |at: i64| json!({"id": 1, "name": "Villa Saganaki", "created_at": t(at)});
        assert_eq!(run(&RENTAL, EventKind::Created, payload(9), Some(existing(Some(10), Some(10)))), RowPlan::Stale);
        let plan = run(&RENTAL, EventKind::Created, payload(10), Some(existing(Some(10), Some(10))));
        let row = written(&plan);
        assert_eq!(
            (&row["name"], &row["synced_updated_at"], &row["synced_created_at"]),
            (&json!("Villa Saganaki"), &json!(t(10)), &json!(t(10)))
        );
    }

    /// c06: no payload time applies; a NULL local synced_updated_at applies even when the
    /// local synced_created_at is newer.
    #[test]
    fn guard_nil_cases_apply() {
        let plan = run(
            &RENTAL,
            EventKind::Updated,
            json!({"id": 1, "name": "Villa Saganaki"}),
            Some(existing(Some(10), Some(10))),
        );
        assert_eq!(written(&plan)["synced_updated_at"], t(10));
        let plan = run(
            &RENTAL,
            EventKind::Updated,
            json!({"id": 1, "name": "Villa Saganaki", "updated_at": t(1)}),
            Some(existing(None, Some(500))),
        );
        assert_eq!(
            (&written(&plan)["name"], &written(&plan)["synced_updated_at"]),
            (&json!("Villa Saganaki"), &json!(t(1)))
        );
    }

    /// c08: canceled_at in the payload soft-deletes through the column.
    #[test]
    fn destroyed_with_canceled_at_soft_deletes_by_attribute() {
        let payload = json!({"id": 1, "name": "Villa Saganaki", "updated_at": t(11), "created_at": t(101), "canceled_at": t(123)});
        let plan = run(&RENTAL, EventKind::Destroyed, payload, Some(existing(Some(10), Some(10))));
        assert_eq!(written(&plan)["synced_canceled_at"], t(123));
        assert_eq!(written(&plan)["name"], "Villa Saganaki");
    }

    /// c09 / c13: without canceled_at the cancel strategy soft-deletes at the event time.
    #[test]
    fn destroyed_without_canceled_at_cancels() {
        let plan = run(
            &RENTAL,
            EventKind::Destroyed,
            json!({"id": 1, "name": "Villa Saganaki"}),
            Some(existing(Some(10), None)),
        );
        assert_eq!(written(&plan)["synced_canceled_at"], canonical_time(&now()));
        assert_eq!(written(&plan)["name"], "Villa Saganaki");
        let plan = run(&RENTAL, EventKind::Destroyed, json!({"id": 2}), None);
        assert_eq!(written(&plan)["synced_canceled_at"], canonical_time(&now()), "C-14: created already canceled");
    }

    /// c11: a stale destroy neither updates nor cancels.
    #[test]
    fn stale_destroy_is_ignored() {
        let payload = json!({"id": 1, "updated_at": t(9), "created_at": t(101), "canceled_at": t(123)});
        assert_eq!(run(&RENTAL, EventKind::Destroyed, payload, Some(existing(Some(10), Some(10)))), RowPlan::Stale);
    }

    /// Hard-destroy models delete existing rows and write nothing for unknown ones (C-14).
    #[test]
    fn destroy_strategy_deletes() {
        let plan = run(&DESTROYING, EventKind::Destroyed, json!({"id": 1}), Some(existing(Some(10), Some(10))));
        assert!(matches!(plan, RowPlan::Delete { .. }));
        assert_eq!(run(&DESTROYING, EventKind::Destroyed, json!({"id": 1}), None), RowPlan::Nothing);
    }

    /// c14: a missing canceled_at restores; a present one (even null) is taken as sent.
    #[test]
    fn restore_semantics() {
        let canceled = json!({"synced_id": 1, "name": "old name", "synced_canceled_at": t(101)});
        let cases = [
            (EventKind::Updated, json!({"id": 1, "name": "Villa Saganaki"}), Value::Null),
            (EventKind::Updated, json!({"id": 1, "name": "Villa Saganaki", "canceled_at": t(121)}), json!(t(121))),
            (EventKind::Created, json!({"id": 1, "name": "Villa Saganaki updated", "canceled_at": null}), Value::Null),
            (EventKind::Created, json!({"id": 1, "name": "Villa Saganaki updated"}), Value::Null),
        ];
        for (kind, payload, expected) in cases {
            let plan = run(&RENTAL, kind, payload.clone(), Some(canceled.clone()));
            assert_eq!(written(&plan)["synced_canceled_at"], expected, "{payload}");
        }
    }

    /// c29: `from` maps a remote key onto a local column; synced_data keeps the remote name.
    #[test]
    fn attribute_mapping() {
        let payload = json!({"links": {"bookings": [123]}, "id": 1, "name": "Villa Saganaki", "type": "villa"});
        let plan = run(
            &RENTAL,
            EventKind::Created,
            payload,
            Some(json!({"synced_id": 1, "name": "old name", "rental_type": null})),
        );
        let row = written(&plan);
        assert_eq!(row["rental_type"], "villa");
        assert_eq!(
            row["synced_data"],
            json!({"synced_booking_ids": [123], "synced_id": 1, "name": "Villa Saganaki", "type": "villa"})
        );
    }

    /// c26 and bad input: a missing id and values of the wrong type are rejected.
    #[test]
    fn missing_id_and_wrong_types_are_rejected() {
        let error = prepare(&RENTAL, &deserialize_one(&json!({})).unwrap()).unwrap_err();
        assert!(error.to_string().contains("synced_id nil"), "{error}");
        let error = prepare(&RENTAL, &deserialize_one(&json!({"id": "x"})).unwrap()).unwrap_err();
        assert_eq!(error.reason(), "wrong_type");
        let error = prepare(&RENTAL, &deserialize_one(&json!({"id": 1, "updated_at": "soon"})).unwrap()).unwrap_err();
        assert_eq!(error.reason(), "wrong_type");
        let error = prepare(&RENTAL, &deserialize_one(&json!({"id": 1, "name": {"a": 1}})).unwrap()).unwrap_err();
        assert!(error.to_string().contains("does not fit column `name` (a string)"), "{error}");
    }

    /// C-15: local changes list old → new for changed columns only.
    #[test]
    fn local_changes_list_old_and_new_values() {
        let plan = run(
            &RENTAL,
            EventKind::Updated,
            json!({"id": 1, "name": "new", "updated_at": t(11)}),
            Some(existing(Some(10), Some(10))),
        );
        let RowPlan::Write { changes, .. } = plan else { panic!() };
        assert_eq!(changes["name"], json!(["old name", "new"]));
        assert_eq!(changes["synced_updated_at"], json!([t(10), t(11)]));
        assert!(!changes.contains_key("synced_id"));
        assert!(!changes.contains_key("synced_canceled_at"), "null stays null");
    }

    static NO_UPDATED_AT: ReplicaDescriptor = ReplicaDescriptor { synced_updated_at: None, ..RENTAL };

    /// C-10: without a `synced_updated_at` column the guard compares with the local
    /// `synced_created_at`; the event time is still `updated_at`, else `created_at`.
    #[test]
    fn guard_falls_back_to_synced_created_at() {
        let old = || Some(existing(Some(50), Some(10)));
        let payload = |updated: Option<i64>, created: i64| json!({"id": 1, "name": "new", "updated_at": updated.map(t), "created_at": t(created)});
        assert_eq!(run(&NO_UPDATED_AT, EventKind::Updated, payload(Some(9), 20), old()), RowPlan::Stale);
        assert_eq!(run(&NO_UPDATED_AT, EventKind::Updated, payload(None, 9), old()), RowPlan::Stale);
        assert!(matches!(run(&NO_UPDATED_AT, EventKind::Updated, payload(Some(10), 1), old()), RowPlan::Write { .. }));
        // With the column, its (newer) value decides.
        assert_eq!(run(&RENTAL, EventKind::Updated, payload(Some(20), 20), old()), RowPlan::Stale);
        let prepared = prepare(&NO_UPDATED_AT, &deserialize_one(&payload(None, 20)).unwrap()).unwrap();
        assert!(guard_from_prepared(&NO_UPDATED_AT, &prepared), "the written created_at is the event time");
        let prepared = prepare(&NO_UPDATED_AT, &deserialize_one(&payload(Some(30), 20)).unwrap()).unwrap();
        assert!(!guard_from_prepared(&NO_UPDATED_AT, &prepared), "PostgreSQL would compare created_at");
    }

    /// C-10: a record with no time applies over any stored time, in `plan` as in the SQL
    /// guard (no written time column compares NULL), so it may be written blind; a time the
    /// written columns do not carry may not.
    #[test]
    fn a_record_without_times_may_be_written_blind() {
        let decidable = |replica: &ReplicaDescriptor, payload: Value| {
            let prepared = prepare(replica, &deserialize_one(&payload).unwrap()).unwrap();
            guard_from_prepared(replica, &prepared)
        };
        let newer = || Some(existing(Some(50), Some(10)));
        let no_times = json!({"id": 1, "name": "new"});
        assert!(matches!(run(&RENTAL, EventKind::Updated, no_times.clone(), newer()), RowPlan::Write { .. }));
        assert!(decidable(&RENTAL, no_times.clone()));
        assert!(decidable(&NO_UPDATED_AT, no_times));
        assert!(decidable(&RENTAL, json!({"id": 1, "updated_at": null, "created_at": null})), "null times");
        // The written created_at is what PostgreSQL compares when updated_at is not written.
        assert!(decidable(&RENTAL, json!({"id": 1, "created_at": t(20)})));
        // A time only a column of another name would carry: PostgreSQL would see none.
        assert!(!decidable(&NO_GUARD_WRITTEN, json!({"id": 1, "updated_at": t(20)})));
        assert!(decidable(&NO_GUARD_WRITTEN, json!({"id": 1, "name": "new"})));
    }

    static NO_GUARD_WRITTEN_COLUMNS: [Column; 3] = [
        column("synced_id", ColumnKind::Integer, false),
        Column {
            name: "synced_updated_at",
            source: "changed_at",
            kind: ColumnKind::Timestamp,
            nullable: true,
            sql_type: "timestamptz",
        },
        column("name", ColumnKind::Text, true),
    ];

    /// `synced_updated_at` read from another attribute than `updated_at`.
    static NO_GUARD_WRITTEN: ReplicaDescriptor = ReplicaDescriptor {
        columns: &NO_GUARD_WRITTEN_COLUMNS,
        synced_created_at: None,
        soft_delete: None,
        strategy: DestroyStrategy::Destroy,
        synced_data: None,
        ..RENTAL
    };

    static REMOTE_COLUMNS: [Column; 4] = [
        column("synced_id", ColumnKind::Integer, false),
        column("remote_created_at", ColumnKind::Timestamp, true),
        column("remote_updated_at", ColumnKind::Timestamp, true),
        column("deleted_at", ColumnKind::Timestamp, true),
    ];

    static REMOTE: ReplicaDescriptor = ReplicaDescriptor {
        columns: &REMOTE_COLUMNS,
        synced_updated_at: Some("remote_updated_at"),
        synced_created_at: Some("remote_created_at"),
        soft_delete: Some("deleted_at"),
        synced_data: None,
        ..RENTAL
    };

    /// C-11: timestamp columns of other names take their attribute, and NULL when the
    /// payload lacks it; with the attribute's own name, an absent key is not assigned.
    #[test]
    fn renamed_timestamp_columns_take_their_attribute_or_null() {
        let prepared = prepare(&REMOTE, &deserialize_one(&json!({"id": 1, "updated_at": t(5)})).unwrap()).unwrap();
        let assigned: Vec<(&str, Value)> =
            prepared.assignments.iter().map(|(column, value)| (column.name, value.clone())).collect();
        assert_eq!(
            assigned,
            [
                ("synced_id", json!(1)),
                ("remote_created_at", Value::Null),
                ("remote_updated_at", json!(t(5))),
                ("deleted_at", Value::Null)
            ]
        );
        let prepared = prepare(&RENTAL, &deserialize_one(&json!({"id": 1, "updated_at": t(5)})).unwrap()).unwrap();
        assert!(prepared.assignments.iter().all(|(column, _)| column.name != "synced_created_at"));
    }

    static SETTING: ReplicaDescriptor = ReplicaDescriptor {
        soft_delete: None,
        strategy: DestroyStrategy::Set { column: "name", value: super::super::CancelValue::Text("cancelled") },
        ..RENTAL
    };

    /// C-13: a strategy without a soft-delete column keeps the row and applies; with
    /// `canceled_at` and a soft-delete column the attribute soft-deletes instead.
    #[test]
    fn cancel_strategy_sets_its_column() {
        let plan = run(&SETTING, EventKind::Destroyed, json!({"id": 1, "name": "x"}), Some(existing(Some(10), None)));
        assert_eq!(written(&plan)["name"], "cancelled");
        let plan = run(&SETTING, EventKind::Destroyed, json!({"id": 2, "canceled_at": t(3)}), None);
        assert_eq!(written(&plan)["name"], "cancelled", "no soft-delete column: the strategy runs");
        let with_column = ReplicaDescriptor { soft_delete: Some("synced_canceled_at"), ..SETTING };
        let plan = run(&with_column, EventKind::Destroyed, json!({"id": 1, "name": "x", "canceled_at": t(3)}), None);
        assert_eq!((&written(&plan)["name"], &written(&plan)["synced_canceled_at"]), (&json!("x"), &json!(t(3))));
        let plan = run(&SETTING, EventKind::Updated, json!({"id": 1, "name": "back"}), Some(existing(Some(10), None)));
        assert_eq!(written(&plan)["name"], "back", "other events take the payload");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Applying the same record twice changes nothing the second time, and a record
            /// never overwrites a row with a newer synced_updated_at.
            #[test]
            fn guard_is_idempotent_and_monotonic(local in 0i64..1000, event in 0i64..1000, name in "[a-z]{0,8}") {
                let payload = json!({"id": 1, "name": name, "updated_at": t(event)});
                let old = existing(Some(local), Some(0));
                let plan = run(&RENTAL, EventKind::Updated, payload.clone(), Some(old));
                if event < local {
                    prop_assert_eq!(plan, RowPlan::Stale);
                } else {
                    let row = written(&plan).clone();
                    let again = run(&RENTAL, EventKind::Updated, payload, Some(Value::Object(row)));
                    let RowPlan::Write { changes, .. } = again else { panic!() };
                    prop_assert!(changes.is_empty(), "{:?}", changes);
                }
            }
        }
    }
}
