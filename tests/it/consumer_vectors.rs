//! The consumer vectors (`shared/spec/vectors/c*.json`) against real PostgreSQL, through
//! `Consumer::process_batch` (one batch = one transaction with its offset). Their
//! ActiveRecord flags translate as: `saved` → the row was written; `cancel_called` → the
//! soft-delete column was set by the cancel strategy; `destroyed` → the row was deleted.
//! The Kafka side is in `consumer_kafka`.

use serde_json::{json, Value};

use crate::consumer_models::*;

/// Whether this copy of the vectors tracks local changes. The file runs twice: as
/// `consumer_vectors`, with an event-bus subscriber, so rows are read and planned before they
/// are written; and as `consumer_vectors_blind`, with local changes off, so rows are written
/// blind and PostgreSQL applies the timestamp guard. Both must give the same rows.
fn tracked() -> bool {
    !module_path!().ends_with("_blind")
}

/// The vectors' consumer in this copy's mode.
fn vector_consumer(
    db: &dionysus_tests::TestDb,
    configure: impl FnOnce(dionysus::consumer::ConsumerBuilder) -> dionysus::consumer::ConsumerBuilder,
) -> (dionysus::consumer::Consumer, Seen) {
    crate::consumer_models::consumer(db, |builder| configure(builder.local_changes(tracked())))
}

/// c01: a new record: id → synced_id, timestamps → synced_*, synced_data = attributes.
#[tokio::test(flavor = "multi_thread")]
async fn c01_create_new_record() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(101), "created_at": t(111)}]);
    consumer.process_batch(&[event(0, "rental_created", "Rental", data)]).await.unwrap();
    let row = row(&mut db.connection().await, "rentals", 1).await.unwrap();
    assert_eq!(row["name"], "Villa Saganaki");
    assert_eq!(instant(&row["synced_updated_at"]), at(101));
    assert_eq!(instant(&row["synced_created_at"]), at(111));
    assert_eq!(row["synced_canceled_at"], Value::Null);
    assert_eq!(
        row["synced_data"],
        json!({"synced_id": 1, "synced_created_at": t(111), "synced_updated_at": t(101), "name": "Villa Saganaki"})
    );
}

async fn seeded_rental(
    updated: Option<i64>,
    created: Option<i64>,
) -> (dionysus_tests::TestDb, diesel_async::AsyncPgConnection) {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(
        &mut conn,
        "rentals",
        json!({"synced_id": 1, "name": "old name", "synced_updated_at": updated.map(t), "synced_created_at": created.map(t), "synced_canceled_at": null}),
    )
    .await;
    (db, conn)
}

/// c02: a newer update applies.
#[tokio::test(flavor = "multi_thread")]
async fn c02_update_newer_applies() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(11), "created_at": t(101)}]);
    consumer.process_batch(&[event(0, "rental_updated", "Rental", data)]).await.unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(row["name"], "Villa Saganaki");
    assert_eq!((instant(&row["synced_updated_at"]), instant(&row["synced_created_at"])), (at(11), at(101)));
}

/// c03: an older update is ignored entirely, and reports no local changes.
#[tokio::test(flavor = "multi_thread")]
async fn c03_stale_update_is_ignored() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(9), "created_at": t(101)}]);
    let outcome = consumer.process_batch(&[event(0, "rental_updated", "Rental", data)]).await.unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(row["name"], "old name");
    assert_eq!((instant(&row["synced_updated_at"]), instant(&row["synced_created_at"])), (at(10), at(10)));
    assert_eq!(row["synced_data"], Value::Null, "never assigned");
    assert!(outcome.events[0].local_changes.is_empty());
}

/// Equal timestamps apply (deviation table: ties apply, as in the gem).
#[tokio::test(flavor = "multi_thread")]
async fn equal_timestamps_apply() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"id": 1, "name": "same instant", "updated_at": "2024-01-01T01:00:10+01:00"}]);
    consumer.process_batch(&[event(0, "rental_updated", "Rental", data)]).await.unwrap();
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "same instant");
}

/// c05: the event time is updated_at, else created_at.
#[tokio::test(flavor = "multi_thread")]
async fn c05_created_at_fallback() {
    for (created, applies) in [(9, false), (10, true)] {
        let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
        let (consumer, _) = vector_consumer(&db, |b| b);
        let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "created_at": t(created)}]);
        consumer.process_batch(&[event(0, "rental_created", "Rental", data)]).await.unwrap();
        let row = row(&mut conn, "rentals", 1).await.unwrap();
        assert_eq!(row["name"], if applies { "Villa Saganaki" } else { "old name" }, "created_at {created}");
        assert_eq!((instant(&row["synced_updated_at"]), instant(&row["synced_created_at"])), (at(10), at(10)));
    }
}

/// c06: no payload times apply; a NULL local synced_updated_at applies even when the local
/// synced_created_at is newer.
#[tokio::test(flavor = "multi_thread")]
async fn c06_guard_nil_cases() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    consumer
        .process_batch(&[event(
            0,
            "rental_updated",
            "Rental",
            json!([{"links": {}, "id": 1, "name": "Villa Saganaki"}]),
        )])
        .await
        .unwrap();
    let row1 = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!((row1["name"].clone(), instant(&row1["synced_updated_at"])), (json!("Villa Saganaki"), at(10)));

    let (db, mut conn) = seeded_rental(None, Some(500)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(1)}]);
    consumer.process_batch(&[event(0, "rental_updated", "Rental", data)]).await.unwrap();
    let row2 = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(row2["name"], "Villa Saganaki");
    assert_eq!((instant(&row2["synced_updated_at"]), instant(&row2["synced_created_at"])), (at(1), at(500)));
}

/// c08: a destroy carrying canceled_at soft-deletes through the column (no cancel, no delete).
#[tokio::test(flavor = "multi_thread")]
async fn c08_destroyed_soft_delete_by_attribute() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(11), "created_at": t(101), "canceled_at": t(123)}]);
    consumer.process_batch(&[event(0, "rental_destroyed", "Rental", data)]).await.unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(row["name"], "Villa Saganaki");
    assert_eq!(instant(&row["synced_canceled_at"]), at(123));
    assert_eq!((instant(&row["synced_updated_at"]), instant(&row["synced_created_at"])), (at(11), at(101)));
}

/// c09: without canceled_at the cancel strategy runs: the row is kept (saved) and
/// soft-deleted. (The gem's spec stubs `cancel`; our cancel sets the column to the event
/// time, here "now" as the payload has none.)
#[tokio::test(flavor = "multi_thread")]
async fn c09_destroyed_cancel_strategy() {
    let (db, mut conn) = seeded_rental(Some(10), None).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let before = chrono::Utc::now();
    consumer
        .process_batch(&[event(
            0,
            "rental_destroyed",
            "Rental",
            json!([{"links": {}, "id": 1, "name": "Villa Saganaki"}]),
        )])
        .await
        .unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(row["name"], "Villa Saganaki", "saved");
    let canceled = instant(&row["synced_canceled_at"]).expect("cancel called");
    assert!(canceled >= before - chrono::Duration::seconds(1));
}

/// c11: a stale destroy neither updates nor cancels.
#[tokio::test(flavor = "multi_thread")]
async fn c11_destroyed_stale_ignored() {
    let (db, mut conn) = seeded_rental(Some(10), Some(10)).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {}, "id": 1, "name": "Villa Saganaki", "updated_at": t(9), "created_at": t(101), "canceled_at": t(123)}]);
    consumer.process_batch(&[event(0, "rental_destroyed", "Rental", data)]).await.unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!((row["name"].clone(), row["synced_canceled_at"].clone()), (json!("old name"), Value::Null));
}

/// c13: a destroy of several ids cancels each.
#[tokio::test(flavor = "multi_thread")]
async fn c13_destroyed_ids_only_multi_record() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(&mut conn, "rentals", json!({"synced_id": 1})).await;
    seed(&mut conn, "rentals", json!({"synced_id": 2})).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    consumer.process_batch(&[event(0, "rental_destroyed", "Rental", json!([{"id": 1}, {"id": 2}]))]).await.unwrap();
    for row in rows(&mut conn, "rentals").await {
        assert!(instant(&row["synced_canceled_at"]).is_some(), "{row}");
    }
}

/// c14: a missing canceled_at restores; a present one (even null) is taken as sent.
#[tokio::test(flavor = "multi_thread")]
async fn c14_soft_delete_then_restore() {
    let cases = [
        ("rental_updated", json!({"id": 1, "name": "Villa Saganaki"}), None, "Villa Saganaki"),
        (
            "rental_updated",
            json!({"id": 1, "name": "Villa Saganaki", "canceled_at": t(121)}),
            at(121),
            "Villa Saganaki",
        ),
        (
            "rental_created",
            json!({"id": 1, "name": "Villa Saganaki updated", "canceled_at": null}),
            None,
            "Villa Saganaki updated",
        ),
        ("rental_created", json!({"id": 1, "name": "Villa Saganaki updated"}), None, "Villa Saganaki updated"),
    ];
    for (name, data, canceled, expected_name) in cases {
        let db = replica_db().await;
        let mut conn = db.connection().await;
        seed(&mut conn, "rentals", json!({"synced_id": 1, "name": "old name", "synced_canceled_at": t(101)})).await;
        let (consumer, _) = vector_consumer(&db, |b| b);
        consumer.process_batch(&[event(0, name, "Rental", json!([data]))]).await.unwrap();
        let row = row(&mut conn, "rentals", 1).await.unwrap();
        assert_eq!(instant(&row["synced_canceled_at"]), canceled, "{data}");
        assert_eq!(row["name"], expected_name);
    }
}

fn sideloaded(event_name: &str) -> dionysus::__internals::consumer::InboundMessage {
    event(
        0,
        event_name,
        "Rental",
        json!([{"links": {"tax": 201, "bookings": [101, 102], "account": 300}, "id": 1, "name": "Villa Saganaki",
                "non_relationship": [{"id": 1}],
                "bookings": [{"id": 101, "start_at": 1}, {"id": 102, "start_at": 22}],
                "tax": {"id": 201, "name": "VAT"}, "account": {"id": 300, "name": "#WhateverItTakes"}}]),
    )
}

async fn seed_sideload_state(conn: &mut diesel_async::AsyncPgConnection) {
    seed(conn, "rentals", json!({"synced_id": 1, "name": "old name"})).await;
    seed(conn, "bookings", json!({"synced_id": 102, "start_at": 2})).await;
    seed(conn, "bookings", json!({"synced_id": 103, "start_at": 3, "synced_rental_id": 1})).await;
    seed(conn, "accounts", json!({"synced_id": 300, "name": "Discipline Equals Freedom"})).await;
}

/// c15: sideloaded bookings, tax and account are upserted as their own records; the to-many
/// relationship is resolved: listed bookings are attached, others detached.
#[tokio::test(flavor = "multi_thread")]
async fn c15_sideloaded_relationships_persisted_and_detached() {
    for event_name in ["rental_updated", "rental_created"] {
        let db = replica_db().await;
        let mut conn = db.connection().await;
        seed_sideload_state(&mut conn).await;
        let (consumer, _) = vector_consumer(&db, |b| b);
        let outcome = consumer.process_batch(&[sideloaded(event_name)]).await.unwrap();
        let rental = row(&mut conn, "rentals", 1).await.unwrap();
        assert_eq!(rental["name"], "Villa Saganaki");
        assert_eq!(
            rental["synced_data"],
            json!({"synced_tax_id": 201, "synced_booking_ids": [101, 102], "synced_account_id": 300, "synced_id": 1,
                   "name": "Villa Saganaki", "non_relationship": [{"id": 1}]})
        );
        assert_eq!((rental["synced_tax_id"].clone(), rental["synced_account_id"].clone()), (json!(201), json!(300)));
        assert_eq!(rental["synced_booking_ids"], json!([101, 102]));
        let bookings = rows(&mut conn, "bookings").await;
        let summary: Vec<(Value, Value, Value)> = bookings
            .iter()
            .map(|b| (b["synced_id"].clone(), b["start_at"].clone(), b["synced_rental_id"].clone()))
            .collect();
        assert_eq!(
            summary,
            [(json!(101), json!(1), json!(1)), (json!(102), json!(22), json!(1)), (json!(103), json!(3), Value::Null)],
            "sideloads upserted and attached; 103 detached"
        );
        assert_eq!(bookings[0]["synced_data"], json!({"synced_id": 101, "start_at": 1}));
        assert_eq!(
            row(&mut conn, "taxes", 201).await.unwrap()["synced_data"],
            json!({"synced_id": 201, "name": "VAT"})
        );
        assert_eq!(row(&mut conn, "accounts", 300).await.unwrap()["name"], "#WhateverItTakes");
        let keys: Vec<(String, Value)> =
            outcome.events[0].local_changes.iter().map(|c| (c.model.clone(), c.synced_id.clone())).collect();
        let expected: Vec<(String, Value)> = if tracked() {
            vec![
                ("Rental".to_owned(), json!(1)),
                ("bookings".to_owned(), json!(101)),
                ("bookings".to_owned(), json!(102)),
                ("tax".to_owned(), json!(201)),
                ("account".to_owned(), json!(300)),
            ]
        } else {
            Vec::new()
        };
        assert_eq!(keys, expected);
    }
}

/// c17: links without sideloads set synced_<rel>_id(s) but resolve nothing.
#[tokio::test(flavor = "multi_thread")]
async fn c17_relationship_not_sideloaded() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(&mut conn, "rentals", json!({"synced_id": 1, "name": "old name"})).await;
    seed(&mut conn, "bookings", json!({"synced_id": 7, "synced_rental_id": 1})).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    consumer
        .process_batch(&[
            event(
                0,
                "rental_created",
                "Rental",
                json!([{"links": {"account": 123}, "id": 1, "name": "Villa Saganaki"}]),
            ),
            event(
                1,
                "rental_created",
                "Rental",
                json!([{"links": {"bookings": [123]}, "id": 1, "name": "Villa Saganaki"}]),
            ),
        ])
        .await
        .unwrap();
    let rental = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(rental["synced_data"], json!({"synced_booking_ids": [123], "synced_id": 1, "name": "Villa Saganaki"}));
    assert_eq!(rental["synced_booking_ids"], json!([123]));
    assert_eq!(row(&mut conn, "bookings", 7).await.unwrap()["synced_rental_id"], 1, "no resolve: nothing detached");
    assert_eq!(rows(&mut conn, "bookings").await.len(), 1);
}

/// c19: only the aggregate root is canceled; sideloads are upserted, not removed.
#[tokio::test(flavor = "multi_thread")]
async fn c19_destroyed_parent_sideloads_not_removed() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed_sideload_state(&mut conn).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    consumer.process_batch(&[sideloaded("rental_destroyed")]).await.unwrap();
    let rental = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(rental["name"], "Villa Saganaki");
    assert!(instant(&rental["synced_canceled_at"]).is_some(), "cancel called");
    let bookings: Vec<(Value, Value)> =
        rows(&mut conn, "bookings").await.iter().map(|b| (b["synced_id"].clone(), b["start_at"].clone())).collect();
    assert_eq!(&bookings[..2], [(json!(101), json!(1)), (json!(102), json!(22))]);
    assert_eq!(row(&mut conn, "taxes", 201).await.unwrap()["name"], "VAT");
    assert_eq!(row(&mut conn, "accounts", 300).await.unwrap()["name"], "#WhateverItTakes");
}

/// Hard destroy: a model without soft delete loses the row; a destroy of an unknown row
/// writes nothing (C-14).
#[tokio::test(flavor = "multi_thread")]
async fn destroy_removes_the_row() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(&mut conn, "clients", json!({"synced_id": 5, "name": "Rich"})).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let outcome =
        consumer.process_batch(&[event(0, "client_destroyed", "Client", json!([{"id": 5}, {"id": 6}]))]).await.unwrap();
    assert!(rows(&mut conn, "clients").await.is_empty());
    if tracked() {
        assert_eq!(outcome.events[0].local_changes[0].changes["name"], json!(["Rich", null]));
    }
}

/// c21 through the database: only the latest message per event+id is applied.
#[tokio::test(flavor = "multi_thread")]
async fn c21_duplicates_are_removed_before_persisting() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    let (consumer, seen) = vector_consumer(&db, |b| b);
    let booking = |offset, event_name: &str, data: Value| event(offset, event_name, "Booking", json!([data]));
    let outcome = consumer
        .process_batch(&[
            booking(0, "booking_created", json!({"id": 16, "start_at": 1, "updated_at": "2023-07-13T16:01:41.0Z"})),
            booking(1, "booking_updated", json!({"id": 16, "start_at": 2, "updated_at": "2023-07-13T16:01:41.5Z"})),
            booking(2, "booking_updated", json!({"id": 17, "start_at": 3, "updated_at": "2023-07-13T16:01:41.6Z"})),
            booking(3, "booking_updated", json!({"id": 16, "start_at": 4, "updated_at": "2023-07-13T16:01:41.7Z"})),
            booking(4, "booking_canceled", json!({"id": 16})),
            booking(5, "booking_updated", json!({"id": 16, "start_at": 6, "updated_at": "2023-07-13T16:01:41.2Z"})),
        ])
        .await
        .unwrap();
    let names: Vec<&str> = outcome.events.iter().map(|e| e.event_name.as_str()).collect();
    assert_eq!(names, ["booking_created", "booking_updated", "booking_updated", "booking_canceled"]);
    assert_eq!(outcome.events[1].transformed_data[0].attributes["start_at"], 4, "m4 at m2's position");
    assert_eq!(row(&mut conn, "bookings", 16).await.unwrap()["start_at"], 4);
    assert_eq!(row(&mut conn, "bookings", 17).await.unwrap()["start_at"], 3);
    assert_eq!(outcome.next_offset, Some(6), "dropped duplicates are still covered by the offset");
    assert_eq!(seen.lock().unwrap()[0].0, "batch");
}

/// c23 (C-17, C-5): by default an unknown model's records are skipped, the message's other
/// events are applied, and the unknown event is still reported on the bus with empty local
/// changes; nothing goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread")]
async fn c23_unknown_model_is_skipped_and_the_other_events_apply() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    let (consumer, seen) = vector_consumer(&db, |b| b);
    let payload = json!({"message": [
        {"event": "unknown_created", "model_name": "Unknown", "data": [{"id": 1, "name": "x"}]},
        {"event": "rental_created", "model_name": "Rental", "data": [{"id": 7, "name": "Villa", "updated_at": t(5)}]},
    ]});
    let bytes = serde_json::to_vec(&payload).unwrap();
    let outcome = consumer.process_batch(&[message(0, Some("Rental:7"), Some(&bytes))]).await.unwrap();
    assert!(outcome.dead_letters.is_empty(), "{:?}", outcome.dead_letters);
    assert_eq!(row(&mut conn, "rentals", 7).await.unwrap()["name"], "Villa", "the other event applies");
    let unknown = json!({"topic_name": "v8_rentals", "event_name": "unknown_created", "model_name": "Unknown",
        "transformed_data": [{"attributes": {"synced_id": 1, "name": "x"}, "has_many": [], "has_one": []}],
        "local_changes": []});
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1], ("event".to_owned(), unknown));
    assert_eq!(seen[2].1["model_name"], "Rental");
    assert_eq!(outcome.events.len(), 2);
}

/// c23 with [`UnknownModel::DeadLetter`] chosen: the message goes whole to the dead-letter
/// topic (reason `unknown_model`), so its other events are not applied; the unknown event is
/// still reported on the bus with empty local changes.
#[tokio::test(flavor = "multi_thread")]
async fn c23_unknown_model_dead_letter_when_chosen() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    let (consumer, seen) = vector_consumer(&db, |b| b.unknown_model(dionysus::consumer::UnknownModel::DeadLetter));
    let payload = json!({"message": [
        {"event": "unknown_created", "model_name": "Unknown", "data": [{"id": 1, "name": "x"}]},
        {"event": "rental_created", "model_name": "Rental", "data": [{"id": 7, "name": "Villa"}]},
    ]});
    let bytes = serde_json::to_vec(&payload).unwrap();
    let outcome = consumer.process_batch(&[message(0, Some("Rental:7"), Some(&bytes))]).await.unwrap();
    assert_eq!(outcome.dead_letters.len(), 1);
    assert_eq!(outcome.dead_letters[0].reason, "unknown_model");
    assert!(row(&mut conn, "rentals", 7).await.is_none());
    let expected = json!({"topic_name": "v8_rentals", "event_name": "unknown_created", "model_name": "Unknown",
        "transformed_data": [{"attributes": {"synced_id": 1, "name": "x"}, "has_many": [], "has_one": []}],
        "local_changes": []});
    assert_eq!(seen.lock().unwrap()[1], ("event".to_owned(), expected));
}

/// c25: an unknown event type is not persisted and is no error.
#[tokio::test(flavor = "multi_thread")]
async fn c25_unknown_event_type() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let outcome = consumer.process_batch(&[event(0, "rental_completed", "Rental", json!([{"id": 2}]))]).await.unwrap();
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.events.len(), 1, "still reported");
    assert!(rows(&mut db.connection().await, "rentals").await.is_empty());
}

/// c26: a record without id saves nothing; the message is dead-lettered with the gem's error.
#[tokio::test(flavor = "multi_thread")]
async fn c26_missing_synced_id() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let outcome = consumer
        .process_batch(&[event(0, "rental_created", "Rental", json!([{"id": 3, "name": "fine"}, {}]))])
        .await
        .unwrap();
    assert_eq!(outcome.dead_letters[0].reason, "missing_id");
    assert!(outcome.dead_letters[0].error.contains("synced_id nil"));
    assert!(rows(&mut db.connection().await, "rentals").await.is_empty(), "nothing half-written");
}

/// c27: tombstones (JSON null, Kafka null, no "message") change nothing; the batch
/// notification still fires with no events.
#[tokio::test(flavor = "multi_thread")]
async fn c27_tombstone_message() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(&mut conn, "rentals", json!({"synced_id": 1, "name": "old name"})).await;
    let (consumer, seen) = vector_consumer(&db, |b| b.processing_mutex(true));
    let outcome = consumer
        .process_batch(&[
            message(0, Some("Rental:1"), Some(b"null")),
            message(1, Some("Rental:1"), None),
            message(2, Some("Rental:1"), Some(br#"{"other": 1}"#)),
        ])
        .await
        .unwrap();
    assert!(outcome.events.is_empty() && outcome.dead_letters.is_empty());
    assert_eq!(outcome.next_offset, Some(3));
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "old name");
    assert_eq!(*seen.lock().unwrap(), [("batch".to_owned(), json!([]))]);
}

/// c29: `#[consume(from = "type")]` maps the remote `type` onto `rental_type`; synced_data
/// keeps the remote name.
#[tokio::test(flavor = "multi_thread")]
async fn c29_attribute_mapping() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    seed(&mut conn, "rentals", json!({"synced_id": 1, "name": "old name"})).await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let data = json!([{"links": {"bookings": [123]}, "id": 1, "name": "Villa Saganaki", "type": "villa"}]);
    consumer.process_batch(&[event(0, "rental_created", "Rental", data)]).await.unwrap();
    let row = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!((row["name"].clone(), row["rental_type"].clone()), (json!("Villa Saganaki"), json!("villa")));
    assert_eq!(
        row["synced_data"],
        json!({"synced_booking_ids": [123], "synced_id": 1, "name": "Villa Saganaki", "type": "villa"})
    );
}

/// c31: import mode bulk-upserts `_created` (no guard, no synced_data, no relationships),
/// bulk-deletes `_destroyed`, and takes the normal path for `_updated`.
#[tokio::test(flavor = "multi_thread")]
async fn c31_import_mode() {
    let data = json!([{"links": {"bookings": [123]}, "id": 1, "name": "Villa Saganaki", "updated_at": t(1),
                       "bookings": [{"id": 123}]}]);
    // _created: upserted without the guard (the local row is newer) and without synced_data.
    let (db, mut conn) = seeded_rental(Some(10), None).await;
    let (consumer, _) = vector_consumer(&db, |b| b.import(TOPIC));
    let outcome = consumer.process_batch(&[event(0, "rental_created", "Rental", data.clone())]).await.unwrap();
    let rental = row(&mut conn, "rentals", 1).await.unwrap();
    assert_eq!(rental["name"], "Villa Saganaki");
    assert_eq!(rental["synced_data"], Value::Null);
    assert!(rows(&mut conn, "bookings").await.is_empty(), "no relationships");
    assert!(outcome.events[0].local_changes.is_empty());
    // _destroyed: deleted in bulk.
    consumer.process_batch(&[event(1, "rental_destroyed", "Rental", data.clone())]).await.unwrap();
    assert!(rows(&mut conn, "rentals").await.is_empty());
    // _updated: the normal path (guarded: T(1) < T(10) is stale).
    let (db, mut conn) = seeded_rental(Some(10), None).await;
    let (consumer, _) = vector_consumer(&db, |b| b.import(TOPIC));
    consumer.process_batch(&[event(0, "rental_updated", "Rental", data)]).await.unwrap();
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "old name");
    // unknown model: skipped, no error, still reported (C-8, C-17).
    let outcome = consumer.process_batch(&[event(1, "unknown_created", "Unknown", json!([{"id": 1}]))]).await.unwrap();
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.events.len(), 1);
    assert!(outcome.events[0].local_changes.is_empty());
}

/// c32: with the processing mutex on, each message takes `Dionysus-<key>` as an advisory lock
/// in the batch transaction; a second transaction holding it makes the batch wait.
#[tokio::test(flavor = "multi_thread")]
async fn c32_processing_mutex_locks_by_message_key() {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b.processing_mutex(true));
    let mut holder = diesel_async::AsyncPgConnection::establish(&db.url).await.unwrap();
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('Dionysus-Rental:1', 0));")
        .await
        .unwrap();
    let payload =
        json!({"message": [{"event": "rental_created", "model_name": "Rental", "data": [{"id": 1}]}]}).to_string();
    let batch = vec![message(0, Some("Rental:1"), Some(payload.as_bytes()))];
    let task = tokio::spawn(async move { consumer.process_batch(&batch).await.map(|o| o.next_offset) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "the batch waits for the lock");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Some(1));
    assert_eq!(dionysus::__internals::consumer::lock_name(Some(b"Rental:1")), "Dionysus-Rental:1");
}

/// c34: the group is `<client_id>_<prefix>_<client_id>` (the gem's Karafka < 2.4 form) and
/// the topics are the replica models'.
#[tokio::test(flavor = "multi_thread")]
async fn c34_consumer_group_and_topics() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    assert_eq!(consumer.group(), "dionysus_test_dionysus_consumer_group_for_dionysus_test");
    assert_eq!(consumer.topics(), ["v8_rentals"]);
}

/// Bad input goes to the dead-letter list whole, with a reason, and the rest of the batch
/// (and the offset) moves on.
#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_are_dead_lettered_and_the_batch_moves_on() {
    let db = replica_db().await;
    let mut conn = db.connection().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let big = format!(
        r#"{{"message":[{{"event":"rental_created","model_name":"Rental","data":[{{"id":9,"name":"{}"}}]}}]}}"#,
        "x".repeat(11 * 1024 * 1024)
    );
    let outcome = consumer
        .process_batch(&[
            message(0, Some("Rental:1"), Some(b"{not json")),
            event(1, "rental_created", "Rental", json!([{"id": 1, "name": {"not": "text"}}])),
            event(2, "rental_created", "Rental", json!([{"id": "one"}])),
            message(3, None, Some(br#"{"message": {"event": 1}}"#)),
            message(4, None, Some(big.as_bytes())),
            event(5, "rental_created", "Rental", json!([{"id": 2, "name": "fine"}])),
        ])
        .await
        .unwrap();
    let reasons: Vec<(i64, &str)> = outcome.dead_letters.iter().map(|d| (d.message.offset, d.reason)).collect();
    assert_eq!(
        reasons,
        [(0, "malformed_json"), (1, "wrong_type"), (2, "invalid_id"), (3, "invalid_envelope"), (4, "oversized")]
    );
    assert_eq!(outcome.next_offset, Some(6));
    let names: Vec<Value> = rows(&mut conn, "rentals").await.iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, [json!("fine")]);
}

/// A batch re-delivered after its commit is skipped by the stored offset (effectively once).
#[tokio::test(flavor = "multi_thread")]
async fn redelivered_batches_are_skipped_by_the_stored_offset() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let batch = [
        event(0, "rental_created", "Rental", json!([{"id": 1, "name": "a", "updated_at": t(1)}])),
        event(1, "rental_updated", "Rental", json!([{"id": 1, "name": "b", "updated_at": t(2)}])),
    ];
    let first = consumer.process_batch(&batch).await.unwrap();
    assert_eq!((first.events.len(), first.next_offset), (2, Some(2)));
    let again = consumer.process_batch(&batch).await.unwrap();
    assert_eq!((again.events.len(), again.already_applied), (0, 2));
    let mut conn = db.connection().await;
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "b");
}

/// Several changes of one row in one batch apply in order (rounds).
#[tokio::test(flavor = "multi_thread")]
async fn changes_to_one_row_in_one_batch_apply_in_order() {
    let db = replica_db().await;
    let (consumer, _) = vector_consumer(&db, |b| b);
    let outcome = consumer
        .process_batch(&[event(
            0,
            "rental_updated",
            "Rental",
            json!([{"id": 1, "name": "a", "updated_at": t(1)}, {"id": 1, "name": "c", "updated_at": t(3)}, {"id": 1, "name": "b", "updated_at": t(2)}]),
        )])
        .await
        .unwrap();
    let mut conn = db.connection().await;
    assert_eq!(row(&mut conn, "rentals", 1).await.unwrap()["name"], "c", "the older third record is stale");
    if tracked() {
        assert_eq!(outcome.events[0].local_changes[0].changes["name"], json!(["a", "c"]));
    }
}
