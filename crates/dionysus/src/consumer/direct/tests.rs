use std::collections::HashSet;

use serde_json::json;

use super::*;
use crate::consumer::replica::{Column, DestroyStrategy};

static COLUMNS: [Column; 7] = [
    Column::named("synced_id", ColumnKind::Integer, false),
    Column::named("synced_updated_at", ColumnKind::Timestamp, true),
    Column::named("synced_canceled_at", ColumnKind::Timestamp, true),
    Column::named("name", ColumnKind::Text, true),
    Column::named("sleeps", ColumnKind::Integer, true),
    Column::named("synced_account_id", ColumnKind::Integer, true),
    Column::named("tags", ColumnKind::Json, true),
];

static RENTALS: ReplicaDescriptor = ReplicaDescriptor {
    model: "Rental",
    topic: "rentals",
    table: "rentals",
    columns: &COLUMNS,
    synced_updated_at: Some("synced_updated_at"),
    soft_delete: Some("synced_canceled_at"),
    strategy: DestroyStrategy::Cancel,
    ..ReplicaDescriptor::INVALID
};

static WITH_DATA: ReplicaDescriptor =
    ReplicaDescriptor { model: "Booking", table: "bookings", synced_data: Some("tags"), ..RENTALS };

fn rules() -> Rules {
    Rules { max_records: 10, ..Rules::for_tests(Replicas::new([&RENTALS, &WITH_DATA])) }
}

use crate::consumer::replica::Replicas;

fn message(offset: i64, payload: &Value) -> InboundMessage {
    InboundMessage {
        topic: "rentals".to_owned(),
        partition: 0,
        offset,
        key: None,
        payload: Some(payload.to_string().into_bytes()),
    }
}

fn event(offset: i64, name: &str, model: &str, data: Value) -> InboundMessage {
    message(offset, &json!({"message": [{"event": name, "model_name": model, "data": data}]}))
}

fn rental(id: i64, name: &str) -> Value {
    json!({"id": id, "name": name, "updated_at": "2024-01-01T00:00:01.000Z", "sleeps": 4, "links": {"account": 7}})
}

#[test]
fn a_usual_message_becomes_typed_columns() {
    let batch = prepare(&rules(), &[event(0, "rental_created", "Rental", json!([rental(1, "Villa")]))]).unwrap();
    let statements = batch.statements();
    assert_eq!(statements.len(), 1);
    let (table, round, columns, arrays) = &statements[0];
    assert_eq!((*table, *round), ("rentals", 0));
    assert_eq!(
        columns,
        &["synced_id", "synced_updated_at", "synced_canceled_at", "name", "sleeps", "synced_account_id"]
    );
    assert_eq!(
        arrays,
        &[
            ColumnArray::Integer(vec![Some(1)]),
            // In the canonical form of replica rows.
            ColumnArray::Text(vec![Some("2024-01-01T00:00:01Z".to_owned())]),
            // No `canceled_at`: an update restores the row (C-12).
            ColumnArray::Text(vec![None]),
            ColumnArray::Text(vec![Some("Villa".to_owned())]),
            ColumnArray::Integer(vec![Some(4)]),
            ColumnArray::Integer(vec![Some(7)]),
        ]
    );
}

#[test]
fn values_are_normalised_and_plain_keys_win() {
    let record = json!({"id": 1, "synced_id": 2, "name": 5, "sleeps": "6", "tags": ["a"], "canceled_at": null,
                        "links": {"account": {"id": 3, "type": "Account"}}, "updated_at": "2024-01-01 00:00:01"});
    let batch = prepare(&rules(), &[event(0, "rental_updated", "Rental", json!([record]))]).unwrap();
    let (_, _, columns, arrays) = &batch.statements()[0];
    assert_eq!(
        columns,
        &["synced_id", "synced_updated_at", "synced_canceled_at", "name", "sleeps", "synced_account_id", "tags"]
    );
    assert_eq!(
        arrays,
        &[
            ColumnArray::Integer(vec![Some(2)]),
            ColumnArray::Text(vec![Some("2024-01-01T00:00:01Z".to_owned())]),
            ColumnArray::Text(vec![None]),
            ColumnArray::Text(vec![Some("5".to_owned())]),
            ColumnArray::Integer(vec![Some(6)]),
            ColumnArray::Integer(vec![Some(3)]),
            ColumnArray::Text(vec![Some(r#"["a"]"#.to_owned())]),
        ]
    );
}

#[test]
fn synced_data_is_the_canonical_attributes_as_text() {
    let record =
        json!({"name": "Villa", "id": 1, "updated_at": "2024-01-01T00:00:01.000Z", "links": {"account": 7}, "x": [1]});
    let batch = prepare(&rules(), &[event(0, "booking_created", "Booking", json!([record]))]).unwrap();
    let (table, _, columns, arrays) = &batch.statements()[0];
    assert_eq!(*table, "bookings");
    assert_eq!(columns, &["synced_id", "synced_updated_at", "synced_canceled_at", "name", "synced_account_id", "tags"]);
    let text = r#"{"synced_account_id":7,"synced_id":1,"synced_updated_at":"2024-01-01T00:00:01.000Z","name":"Villa","x":[1]}"#;
    assert_eq!(arrays[5], ColumnArray::Text(vec![Some(text.to_owned())]));
    let sideloaded =
        json!({"id": 1, "updated_at": "2024-01-01T00:00:01Z", "links": {"account": 7}, "account": {"id": 7}});
    assert!(prepare(&rules(), &[event(0, "booking_created", "Booking", json!([sideloaded]))]).is_none());
}

#[test]
fn a_row_of_several_messages_is_written_in_rounds() {
    let messages = [
        event(0, "rental_created", "Rental", json!([rental(1, "a"), rental(2, "b")])),
        event(1, "rental_updated", "Rental", json!([rental(1, "c")])),
        message(2, &Value::Null),
        event(3, "rental_updated", "Rental", json!([rental(1, "d")])),
    ];
    let batch = prepare(&rules(), &messages).unwrap();
    let rounds: Vec<(u32, usize)> =
        batch.statements().iter().map(|(_, round, _, arrays)| (*round, arrays[0].len())).collect();
    assert_eq!(rounds, [(0, 2), (1, 1), (2, 1)]);
}

#[test]
fn duplicates_are_removed_first() {
    let rules = Rules { remove_duplicates: true, ..rules() };
    let older = rental(1, "old");
    let mut newer = rental(1, "new");
    newer["updated_at"] = json!("2024-01-01T00:00:02.000Z");
    let messages = [
        event(0, "rental_updated", "Rental", json!([newer])),
        event(1, "rental_updated", "Rental", json!([older])),
        event(2, "rental_updated", "Rental", json!([rental(2, "b")])),
    ];
    let batch = prepare(&rules, &messages).unwrap();
    let statements = batch.statements();
    assert_eq!(statements.len(), 1);
    assert_eq!(statements[0].3[3], ColumnArray::Text(vec![Some("new".to_owned()), Some("b".to_owned())]));
}

#[test]
fn unknown_events_and_models_are_only_checked() {
    let messages = [
        event(0, "rental_archived", "Rental", json!([rental(1, "a")])),
        event(1, "ghost_created", "Ghost", json!([{"id": 1}])),
    ];
    assert!(prepare(&rules(), &messages).unwrap().statements().is_empty());
    let dead_letter = Rules { unknown_model: UnknownModel::DeadLetter, ..rules() };
    assert!(prepare(&dead_letter, &messages[1..]).is_none());
    assert!(prepare(&rules(), &[event(0, "ghost_created", "Ghost", json!([1]))]).is_none(), "not a record");
}

/// Everything the general path decides otherwise, or reports, is left to it.
#[test]
fn the_unusual_is_left_to_the_general_path() {
    let refused = |data: Value| prepare(&rules(), &[event(0, "rental_updated", "Rental", data)]).is_none();
    assert!(!refused(json!([rental(1, "a")])));
    assert!(refused(json!([{"name": "no id"}])), "missing id");
    assert!(refused(json!([{"id": "1"}])), "an id the column array does not hold as is");
    assert!(refused(json!([{"id": "01"}])), "an id not in canonical form");
    assert!(refused(json!([{"id": 1, "sleeps": "many"}])), "wrong type");
    assert!(refused(json!([{"id": 1, "updated_at": "soon"}])), "bad time");
    assert!(refused(json!([{"id": 1, "updated_at": "2999-01-01T00:00:00Z"}])), "time in the future");
    assert!(refused(json!([{"id": 1, "created_at": "2024-01-01T00:00:00Z"}])), "a guard PostgreSQL cannot decide");
    assert!(!refused(json!([{"id": 1, "name": "no time at all"}])), "a record without times applies, as in SQL");
    assert!(refused(json!([{"id": 1, "links": {"account": 2}, "account": {"id": 2}}])), "a sideload");
    assert!(refused(json!([{"id": 1, "account": {"id": 2}, "links": {"account": 2}}])), "a sideload before its link");
    let at = "2024-01-01T00:00:01Z";
    assert!(
        !refused(json!([{"id": 1, "account": null, "links": {"account": 2}, "updated_at": at}])),
        "a null sideload"
    );
    assert!(refused(json!([{"id": 1, "links": [1]}])), "links not an object");
    assert!(refused(json!([rental(1, "a"), rental(1, "b")])), "a row twice in one message");
    assert!(refused(json!([1])), "not a record");
    assert!(refused(json!((0..11).map(|id| rental(id, "a")).collect::<Vec<_>>())), "too many records");
    let one = |name: &str, model: &str| prepare(&rules(), &[event(0, name, model, json!([rental(1, "a")]))]);
    assert!(one("rental_destroyed", "Rental").is_none(), "destroys");
    let import = Rules { import_topics: HashSet::from(["rentals".to_owned()]), ..rules() };
    assert!(prepare(&import, &[event(0, "rental_created", "Rental", json!([rental(1, "a")]))]).is_none(), "import");
    let bytes = |payload: &[u8]| {
        let mut message = event(0, "rental_created", "Rental", json!([]));
        message.payload = Some(payload.to_vec());
        prepare(&rules(), &[message])
    };
    assert!(bytes(b"{\"message\":[").is_none(), "malformed");
    assert!(bytes(b"[]").is_none(), "not an envelope");
    assert!(bytes(br#"{"other":1,"message":null}"#).is_some(), "no events");
    assert!(
        bytes(br#"{"message":[{"data":[],"event":"rental_created","model_name":"Rental"}]}"#).is_none(),
        "data first"
    );
    assert!(bytes(br#"{"message":[],"message":[]}"#).is_none(), "a repeated key");
    let small = Rules { max_message_bytes: 10, ..rules() };
    assert!(prepare(&small, &[event(0, "rental_created", "Rental", json!([]))]).is_none(), "oversized");
}

#[test]
fn a_model_replicated_from_two_topics_goes_to_the_replica_of_the_batchs_topic() {
    static PARTNER: ReplicaDescriptor = ReplicaDescriptor { topic: "partner", table: "partner_rentals", ..RENTALS };
    let rules = Rules { replicas: Replicas::new([&RENTALS, &PARTNER]), ..rules() };
    let tables = |topic: &str| {
        let mut message = event(0, "rental_created", "Rental", json!([rental(1, "Villa")]));
        message.topic = topic.to_owned();
        let batch = prepare(&rules, &[message]).unwrap();
        batch.statements().iter().map(|(table, ..)| *table).collect::<Vec<_>>()
    };
    assert_eq!(tables("partner"), ["partner_rentals"]);
    assert_eq!(tables("rentals"), ["rentals"]);
}
