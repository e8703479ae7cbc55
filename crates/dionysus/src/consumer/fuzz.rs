//! Property tests of everything the consumer reads from a message before the database sees
//! it: the fast envelope reader against the fallback, record checks, keys (processing-mutex
//! names). Random bytes, random JSON shapes, deep nesting, invalid UTF-8, very large values
//! and wrong types in every field must never panic or overflow the stack: each message is
//! either good or a dead letter with a known reason. The database side is tested elsewhere.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::batch::{lock_name, InboundMessage, Rules, UnknownModel};
use crate::consumer::replica::sql::ColumnTypes;
use crate::consumer::replica::{Column, ColumnKind, DestroyStrategy, NamedRoles, ReplicaDescriptor, Replicas};
use crate::wire::envelope::{decode, decode_value};

/// Reasons a message checked before the database can be dead-lettered for.
const REASONS: [&str; 10] = [
    "oversized",
    "malformed_json",
    "invalid_envelope",
    "invalid_record",
    "unknown_model",
    "missing_id",
    "invalid_id",
    "wrong_type",
    "timestamp_in_future",
    "too_many_records",
];

const fn column(name: &'static str, kind: ColumnKind, nullable: bool) -> Column {
    Column::named(name, kind, nullable)
}

static COLUMNS: [Column; 9] = [
    column("synced_id", ColumnKind::Integer, false),
    column("synced_created_at", ColumnKind::Timestamp, true),
    column("synced_updated_at", ColumnKind::Timestamp, true),
    column("synced_canceled_at", ColumnKind::Timestamp, true),
    column("synced_data", ColumnKind::Json, true),
    column("name", ColumnKind::Text, true),
    column("price", ColumnKind::Decimal, true),
    column("active", ColumnKind::Bool, true),
    column("fee_ids", ColumnKind::Array, true),
];

static RENTAL: ReplicaDescriptor = ReplicaDescriptor {
    model: "Rental",
    topic: "fuzz_rentals",
    table: "rentals",
    columns: &COLUMNS,
    synced_id: "synced_id",
    synced_updated_at: Some("synced_updated_at"),
    synced_created_at: Some("synced_created_at"),
    soft_delete: Some("synced_canceled_at"),
    strategy: DestroyStrategy::Cancel,
    synced_data: Some("synced_data"),
    named: NamedRoles { soft_delete: true, ..NamedRoles::NONE },
    declared_by: "fuzz::Rental",
    location: "fuzz.rs",
};

fn rules(max_message_bytes: usize) -> Rules {
    Rules {
        replicas: Replicas::new([&RENTAL]),
        import_topics: HashSet::new(),
        filters: Vec::new(),
        remove_duplicates: true,
        max_message_bytes,
        max_records: 100_000,
        unknown_model: UnknownModel::DeadLetter,
        processing_mutex: true,
        max_future_skew: Duration::from_secs(86_400),
        track_changes: false,
        column_types: ColumnTypes::default(),
        records_unread: true,
    }
}

fn message(offset: i64, key: Option<Vec<u8>>, payload: Option<Vec<u8>>) -> InboundMessage {
    InboundMessage { topic: "fuzz_rentals".to_owned(), partition: 0, offset, key, payload }
}

fn envelope(event: &str, model: Value, data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"message": [{"event": event, "model_name": model, "data": data}]})).unwrap_or_default()
}

fn good_record() -> serde_json::Map<String, Value> {
    let record = json!({
        "id": 1,
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-01-02T00:00:00.000Z",
        "name": "Villa",
        "price": "12.50",
        "active": true,
        "fee_ids": [1, 2],
    });
    match record {
        Value::Object(record) => record,
        _ => serde_json::Map::new(),
    }
}

/// Checks `messages` and returns the reason of each dead letter by offset; panics (failing
/// the property) on an unknown reason or a lock name PostgreSQL text cannot carry.
fn check(rules: &Rules, messages: &[InboundMessage]) -> Vec<(i64, &'static str)> {
    let batch = rules.prepare(messages);
    for name in &batch.locks {
        assert!(!name.contains('\0'), "lock name with NUL: {name:?}");
    }
    batch
        .dead_letters
        .iter()
        .map(|dead| {
            assert!(REASONS.contains(&dead.reason), "unknown reason {} ({})", dead.reason, dead.error);
            (dead.message.offset, dead.reason)
        })
        .collect()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(json!("2024-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_and_keys_never_panic(payload in prop::collection::vec(any::<u8>(), 0..512),
                                         key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64))) {
        check(&rules(1 << 20), &[message(0, key, Some(payload))]);
    }

    #[test]
    fn the_fast_reader_and_the_fallback_agree(value in json_value()) {
        for bytes in [
            serde_json::to_vec(&value).unwrap_or_default(),
            serde_json::to_vec(&json!({"message": value.clone()})).unwrap_or_default(),
            serde_json::to_vec(&json!({"message": [value.clone()]})).unwrap_or_default(),
            envelope("rental_created", json!("Rental"), value.clone()),
        ] {
            let fast = decode(Some(&bytes));
            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let slow = decode_value(parsed);
            prop_assert_eq!(fast.is_ok(), slow.is_ok(), "{}", String::from_utf8_lossy(&bytes));
            if let (Ok(fast), Ok(slow)) = (fast, slow) {
                prop_assert_eq!(fast, slow);
            }
            check(&rules(1 << 20), &[message(0, None, Some(bytes))]);
        }
    }

    #[test]
    fn wrong_types_in_every_field_are_dead_letters_or_good(field in 0usize..8, value in json_value(),
                                                          model in json_value(), event in ".{0,20}") {
        let mut record = good_record();
        let names: Vec<String> = record.keys().cloned().collect();
        match names.get(field) {
            Some(name) => { record.insert(name.clone(), value.clone()); }
            None => { record.insert("extra".to_owned(), value.clone()); }
        }
        let rules = rules(1 << 20);
        let messages = [
            message(0, Some(b"Rental:1".to_vec()), Some(envelope("rental_updated", json!("Rental"), Value::Object(record)))),
            message(1, None, Some(envelope("rental_updated", model.clone(), json!([good_record()])))),
            message(2, None, Some(envelope(&event, json!("Rental"), json!([good_record()])))),
        ];
        check(&rules, &messages);
    }
}

#[test]
fn a_good_message_is_no_dead_letter() {
    let bytes = envelope("rental_updated", json!("Rental"), json!([good_record()]));
    assert_eq!(check(&rules(1 << 20), &[message(0, None, Some(bytes))]), vec![]);
}

#[test]
fn deep_nesting_is_malformed_json_without_overflowing_the_stack() {
    let depth = 100_000;
    let mut nested = Vec::with_capacity(depth * 2 + 64);
    nested.extend_from_slice(br#"{"message":[{"event":"rental_updated","model_name":"Rental","data":[{"id":1,"x":"#);
    nested.extend(std::iter::repeat_n(b'[', depth));
    nested.extend(std::iter::repeat_n(b']', depth));
    nested.extend_from_slice(b"}]}]}");
    let mut objects = Vec::with_capacity(depth * 6 + 64);
    objects.extend_from_slice(br#"{"message":[{"event":"rental_updated","model_name":"Rental","data":"#);
    for _ in 0..depth {
        objects.extend_from_slice(br#"{"a":"#);
    }
    objects.extend_from_slice(b"1");
    objects.extend(std::iter::repeat_n(b'}', depth));
    objects.extend_from_slice(b"}]}");
    // Outside `message` nothing is read: deep nesting there is skipped without recursion.
    let mut ignored = br#"{"other":"#.to_vec();
    ignored.extend(std::iter::repeat_n(b'[', depth));
    ignored.extend(std::iter::repeat_n(b']', depth));
    ignored.extend_from_slice(b"}");
    let messages = [message(0, None, Some(nested)), message(1, None, Some(objects)), message(2, None, Some(ignored))];
    let reasons = check(&rules(10 << 20), &messages);
    assert_eq!(reasons, vec![(0, "malformed_json"), (1, "malformed_json")]);
}

#[test]
fn invalid_utf8_is_malformed_json() {
    let mut bytes = br#"{"message":[{"event":"rental_updated","model_name":"Rental","data":[{"id":1,"name":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(br#""}]}]}"#);
    assert_eq!(check(&rules(1 << 20), &[message(0, Some(vec![0xff, 0]), Some(bytes))]), vec![(0, "malformed_json")]);
}

#[test]
fn a_fifty_megabyte_value_is_checked_or_set_aside() {
    let mut record = good_record();
    record.insert("name".to_owned(), Value::String("x".repeat(50 << 20)));
    let bytes = envelope("rental_updated", json!("Rental"), json!([record]));
    let messages = [message(0, None, Some(bytes))];
    // Over the limit: oversized, unread.
    assert_eq!(check(&rules(10 << 20), &messages), vec![(0, "oversized")]);
    // Within a raised limit: read and checked like any other.
    assert_eq!(check(&rules(64 << 20), &messages), vec![]);
}

#[test]
fn ids_and_times_are_checked_as_written() {
    let rules = rules(1 << 20);
    let with = |key: &str, value: &str| {
        let mut record = good_record();
        let value: Value = serde_json::from_str(value).unwrap_or(Value::Null);
        record.insert(key.to_owned(), value);
        envelope("rental_updated", json!("Rental"), json!([record]))
    };
    // One at a time: `80.0` and `8e1` are the same number, so one batch would keep only the
    // later of the two (C-18).
    let cases = [
        (with("id", "-0"), Some("invalid_id")),
        (with("id", "80.0"), Some("invalid_id")),
        (with("id", "8e1"), Some("invalid_id")),
        (with("id", r#""080""#), Some("invalid_id")),
        (with("updated_at", r#""9999-01-01T00:00:00Z""#), Some("timestamp_in_future")),
        (with("id", "80"), None),
        (with("id", r#""80""#), None),
    ];
    for (bytes, reason) in cases {
        let expected: Vec<(i64, &str)> = reason.map(|reason| (0, reason)).into_iter().collect();
        assert_eq!(
            check(&rules, &[message(0, None, Some(bytes.clone()))]),
            expected,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn lock_names_are_text_and_tell_keys_apart(a in prop::collection::vec(any::<u8>(), 0..32),
                                               b in prop::collection::vec(any::<u8>(), 0..32)) {
        let (name_a, name_b) = (lock_name(Some(&a)), lock_name(Some(&b)));
        prop_assert!(!name_a.contains('\0'));
        prop_assert_eq!(a == b, name_a == name_b);
    }
}
