//! Bounded work per message: repeats of one id in a batch are folded in one pass with the
//! same outcome as applying them one by one, and a message with more records than the cap
//! goes to the dead-letter topic while its partition moves on; a message of more rows than
//! one statement writes ends as smaller messages would. (Time and memory per message are
//! measured by the `hostile` benchmark and bounded in the hostile suite.)

use dionysus::consumer::{Consumer, UnknownModel};
use dionysus_tests::TestDb;
use serde_json::{json, Value};

use crate::consumer_models::{consumer, event, message, replica_db, replicas, rows, t};

/// A small deterministic generator (xorshift), so every run checks the same streams.
struct Stream(u64);

impl Stream {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// `(event, model, record)`: rentals (soft delete) and clients (hard destroy) over three
    /// ids each, times out of order, missing or null, destroys and re-creations, sideloaded
    /// bookings. Every destroy carries its time (a destroy without one cancels at the batch's
    /// "now", which differs between one batch and many).
    fn events(&mut self, base: i64, count: usize) -> Vec<(String, String, Value)> {
        (0..count)
            .map(|index| {
                let id = base + i64::try_from(self.below(3)).unwrap_or(0);
                let at = i64::try_from(self.below(20)).unwrap_or(0);
                let mut record = json!({"id": id, "name": format!("n{index}")});
                match self.below(6) {
                    0 => {}
                    1 => record["updated_at"] = Value::Null,
                    _ => record["updated_at"] = json!(t(at)),
                }
                let client = self.below(3) == 0;
                let (event, model) = match (client, self.below(4)) {
                    (true, 0) => ("client_destroyed", "Client"),
                    (true, _) => ("client_updated", "Client"),
                    (false, 0) => ("rental_destroyed", "Rental"),
                    (false, 1) => ("rental_created", "Rental"),
                    (false, _) => ("rental_updated", "Rental"),
                };
                if event.ends_with("destroyed") {
                    record["updated_at"] = json!(t(at));
                }
                if !client && self.below(3) == 0 {
                    let booking = base + i64::try_from(self.below(3)).unwrap_or(0);
                    record["links"] = json!({"bookings": [booking]});
                    record["bookings"] = json!([{"id": booking, "start_at": index, "updated_at": t(at)}]);
                }
                if !client && self.below(5) == 0 {
                    record["canceled_at"] = json!(t(at));
                }
                (event.to_owned(), model.to_owned(), record)
            })
            .collect()
    }
}

/// Every row of the replica tables, without the local serial key.
async fn state(db: &TestDb) -> Vec<Value> {
    let mut conn = db.connection().await;
    let mut all = Vec::new();
    for table in ["rentals", "clients", "bookings"] {
        for mut row in rows(&mut conn, table).await {
            if let Some(object) = row.as_object_mut() {
                object.remove("id");
            }
            all.push(json!({"table": table, "row": row}));
        }
    }
    all
}

/// Many events on a few ids in one message (no deduplication: several events) end exactly
/// as the same events applied one batch each, with and without local changes.
#[tokio::test(flavor = "multi_thread")]
async fn repeats_in_one_message_end_as_if_applied_one_by_one() {
    for local_changes in [true, false] {
        let folded = replica_db().await;
        let stepwise = replica_db().await;
        let (together, _) = consumer(&folded, |b| b.local_changes(local_changes));
        let (one_by_one, _) = consumer(&stepwise, |b| b.local_changes(local_changes));
        let mut offset = 0;
        for seed in 1..=8u64 {
            let base = i64::try_from(seed).unwrap_or(0) * 10;
            let events = Stream(seed * 0x9e37_79b9).events(base, 40);
            let payload = json!({"message": events
                .iter()
                .map(|(event, model, record)| json!({"event": event, "model_name": model, "data": [record]}))
                .collect::<Vec<_>>()});
            let outcome =
                together.process_batch(&[message(offset, None, Some(payload.to_string().as_bytes()))]).await.unwrap();
            assert!(outcome.dead_letters.is_empty(), "{:?}", outcome.dead_letters);
            for (event_name, model, record) in events {
                let outcome = one_by_one.process_batch(&[event(offset, &event_name, &model, json!([record]))]).await;
                assert!(outcome.unwrap().dead_letters.is_empty());
                offset += 1;
            }
        }
        assert_eq!(state(&folded).await, state(&stepwise).await, "local changes: {local_changes}");
    }
}

/// The same record many times in one message: one row, the last applicable version.
#[tokio::test(flavor = "multi_thread")]
async fn many_copies_of_one_id_leave_the_last_applicable_version() {
    let db = replica_db().await;
    let (consumer, _) = consumer(&db, |b| b.local_changes(false));
    let mut data: Vec<Value> =
        (0..5_000).map(|n| json!({"id": 1, "name": format!("copy {n}"), "updated_at": t(n % 100)})).collect();
    data.push(json!({"id": 1, "name": "stale", "updated_at": t(50)}));
    let outcome = consumer.process_batch(&[event(0, "rental_updated", "Rental", Value::Array(data))]).await.unwrap();
    assert!(outcome.dead_letters.is_empty());
    let rentals = rows(&mut db.connection().await, "rentals").await;
    assert_eq!(rentals.len(), 1);
    assert_eq!(
        rentals[0]["name"], "copy 4999",
        "the last copy at the latest time wins; the older one after it is stale"
    );
}

fn bounded(db: &TestDb, max_records: usize) -> Consumer {
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    config.consumer.max_records_per_message = max_records;
    Consumer::builder(config)
        .pool(db.pool(2))
        .replicas(replicas())
        .unknown_model(UnknownModel::DeadLetter)
        .handlers(false)
        .build()
        .unwrap()
}

/// Sideloaded records count: a message over the cap is dead-lettered as `too_many_records`
/// and nothing of it is written; one at the cap and the next message are applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_record_cap_is_dead_lettered_and_the_partition_moves_on() {
    let db = replica_db().await;
    let consumer = bounded(&db, 5);
    let rental = |id: i64, bookings: &[i64]| {
        let sideloads: Vec<Value> = bookings.iter().map(|b| json!({"id": b, "start_at": 1})).collect();
        json!({"id": id, "links": {"bookings": bookings}, "bookings": sideloads})
    };
    let over = event(0, "rental_updated", "Rental", json!([rental(1, &[11, 12, 13]), rental(2, &[]), rental(3, &[])]));
    let at_cap = event(1, "rental_updated", "Rental", json!([rental(4, &[41, 42, 43]), rental(5, &[])]));
    let outcome = consumer.process_batch(&[over, at_cap]).await.unwrap();
    assert_eq!(outcome.dead_letters.len(), 1);
    let dead = &outcome.dead_letters[0];
    assert_eq!((dead.message.offset, dead.reason), (0, "too_many_records"), "{}", dead.error);
    assert!(dead.error.contains("more than 5 records"), "{}", dead.error);
    assert_eq!(outcome.next_offset, Some(2));
    let mut conn = db.connection().await;
    let ids = |rows: Vec<Value>| rows.iter().map(|row| row["synced_id"].as_i64().unwrap_or(0)).collect::<Vec<_>>();
    assert_eq!(ids(rows(&mut conn, "rentals").await), [4, 5]);
    assert_eq!(ids(rows(&mut conn, "bookings").await), [41, 42, 43]);
}

/// A message of more rows than one statement writes (2,500 rentals, a third with a
/// sideloaded booking, some without a time so their rows are read first) ends exactly as
/// the same records sent a hundred per message, with and without local changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_larger_than_one_statement_ends_as_smaller_messages() {
    let records: Vec<Value> = (0..2_500)
        .map(|n| {
            let mut record = json!({"id": n, "name": format!("r{n}"), "updated_at": t(n % 50)});
            if n % 3 == 0 {
                record["links"] = json!({"bookings": [100_000 + n]});
                record["bookings"] = json!([{"id": 100_000 + n, "start_at": n}]);
            }
            if n % 7 == 0 {
                record.as_object_mut().map(|object| object.remove("updated_at"));
            }
            record
        })
        .collect();
    for local_changes in [false, true] {
        let whole = replica_db().await;
        let parts = replica_db().await;
        let (at_once, _) = consumer(&whole, |b| b.local_changes(local_changes));
        let (in_parts, _) = consumer(&parts, |b| b.local_changes(local_changes));
        let outcome = at_once
            .process_batch(&[event(0, "rental_updated", "Rental", Value::Array(records.clone()))])
            .await
            .unwrap();
        assert!(outcome.dead_letters.is_empty(), "{:?}", outcome.dead_letters);
        let reported = outcome.events[0].local_changes.len();
        assert_eq!(reported, if local_changes { 2_500 + 834 } else { 0 }, "one entry per row written");
        for (offset, part) in (1..).zip(records.chunks(100)) {
            let outcome =
                in_parts.process_batch(&[event(offset, "rental_updated", "Rental", Value::Array(part.to_vec()))]).await;
            assert!(outcome.unwrap().dead_letters.is_empty());
        }
        let written = state(&whole).await;
        assert_eq!(written.len(), 2_500 + 834);
        let linked =
            written.iter().filter(|row| row["table"] == "bookings" && !row["row"]["synced_rental_id"].is_null());
        assert_eq!(linked.count(), 834, "every sideloaded booking is linked to its rental");
        assert_eq!(written, state(&parts).await, "local changes: {local_changes}");
    }
}
