//! Messages the application composes, written with `Outbox::respond` / `Outbox::tombstone` in
//! its own transaction and turned into Kafka messages by `plan_rows` (vectors p29, p32, p30,
//! w27; rules P-28, P-30, W-12).

use std::sync::{Arc, Mutex};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::__internals::producer::plan::{
    plan_rows, tombstone_messages, Composed, OutgoingMessage, PlanError, RowPlan, RowRef,
};
use dionysus::outbox::{Outbox, OutboxRow};
use dionysus::respond::{Respond, RespondError, TombstoneOptions};
use serde_json::{json, Value};

use super::spec_b::{self, config, registry, ExamplePublishableCancelableResource, ExampleResource};
use super::{database, example_publishable_cancelable_resources as epcr, example_resources as er, outbox_rows};

async fn resource(conn: &mut AsyncPgConnection, id: i64, account_id: i64) -> ExampleResource {
    diesel::insert_into(er::table)
        .values((er::id.eq(id), er::account_id.eq(account_id)))
        .returning(ExampleResource::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

fn reference(row: &OutboxRow) -> RowRef {
    RowRef {
        id: row.id,
        resource_class: row.resource_class.clone(),
        resource_id: row.resource_id.clone(),
        event_name: row.event_name.clone(),
        topic: row.topic.clone(),
        partition_key: row.partition_key.clone(),
        composed: row.message.as_ref().map(|value| Composed {
            key: row.message_key.clone().unwrap(),
            value: value.clone(),
            encryption_key_id: row.encryption_key_id.clone(),
        }),
    }
}

/// The messages the relay would send for every outbox row.
async fn planned(conn: &mut AsyncPgConnection, registry: &dionysus::Registry) -> Vec<Vec<OutgoingMessage>> {
    let rows: Vec<RowRef> = outbox_rows(conn).await.iter().map(reference).collect();
    let plans = plan_rows(conn, registry, config(), &rows).await.unwrap();
    plans
        .into_iter()
        .map(|plan| match plan {
            RowPlan::Publish(messages) => messages,
            other => panic!("expected messages, got {other:?}"),
        })
        .collect()
}

fn topics(messages: &[OutgoingMessage]) -> Vec<&str> {
    messages.iter().map(|message| message.topic.as_str()).collect()
}

fn value(message: &OutgoingMessage) -> Value {
    serde_json::from_slice(message.payload.as_deref().unwrap()).unwrap()
}

/// P-28: several `[event, records]` entries make one message, written in the caller's
/// transaction (rolled back with it), serialized as the topic publishes each model (the
/// topic's serializer for a model published there, the default one otherwise), with the
/// given key and partition key, to the topic and its genesis replica.
#[tokio::test(flavor = "multi_thread")]
async fn composed_message_with_several_entries_goes_out_as_written() {
    let (_db, mut conn) = database().await;
    let first = resource(&mut conn, 1, 7).await;
    let second = resource(&mut conn, 2, 7).await;
    let tax: ExamplePublishableCancelableResource = diesel::insert_into(epcr::table)
        .values(epcr::id.eq(3))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let outbox = Outbox::new(registry(), config());
    let records = [first, second];
    let taxes = [tax];
    let message = || {
        Respond::new()
            .entry("example_resource_created", &records)
            .entry("tax_created", &taxes)
            .key("#WhateverItTakes")
            .partition_key(Some("Smily".to_owned()))
    };

    // Rolled back with the caller's transaction.
    let rolled_back = conn
        .transaction::<(), dionysus::Error, _>(async |tx| {
            outbox.respond(tx, "v102_rentals", message()).await?;
            Err(diesel::result::Error::RollbackTransaction.into())
        })
        .await;
    assert!(rolled_back.is_err());
    assert!(outbox_rows(&mut conn).await.is_empty());

    assert_eq!(outbox.respond(&mut conn, "v102_rentals", message()).await.unwrap(), 1);
    let rows = outbox_rows(&mut conn).await;
    assert_eq!(rows[0].topic, "v102_rentals");
    assert_eq!(rows[0].partition_key.as_deref(), Some("Smily"));
    let messages = planned(&mut conn, registry()).await;
    assert_eq!(topics(&messages[0]), ["v102_rentals", "v102_rentals_genesis"]);
    for message in &messages[0] {
        assert_eq!(message.key, "#WhateverItTakes");
        assert_eq!(message.partition_key.as_deref(), Some("Smily"));
    }
    let sent = value(&messages[0][0]);
    assert_eq!(
        sent["message"][0],
        json!({"event": "example_resource_created", "model_name": "ExampleResource", "data": [{"id": 1}, {"id": 2}]})
    );
    assert_eq!(sent["message"][1]["event"], "tax_created");
    assert_eq!(sent["message"][1]["model_name"], "ExamplePublishableCancelableResource");
    let tax = sent["message"][1]["data"][0].as_object().unwrap();
    assert_eq!(
        tax.keys().collect::<Vec<_>>(),
        ["id", "account_id", "canceled_at", "created_at", "updated_at", "links"]
    );
    assert_eq!(tax["created_at"], "2022-08-12T13:24:24.000Z");
}

/// W-12 (`serialize: false`): records as their own JSON, no links, no dependencies; default
/// key and partition key from the first record (P-26); P-28: an entry without records makes
/// the whole call write nothing; genesis-only goes to the replica only, and on a topic without
/// one it is an error before anything is written (vector p29); an unknown topic is refused.
#[tokio::test(flavor = "multi_thread")]
async fn raw_records_genesis_only_and_empty_entries_follow_p28() {
    let (_db, mut conn) = database().await;
    let records = [resource(&mut conn, 1, 7).await, resource(&mut conn, 2, 8).await];
    let none: [ExampleResource; 0] = [];
    let outbox = Outbox::new(registry(), config());

    let empty = Respond::new().entry("example_resource_updated", &records).entry("example_resource_updated", &none);
    assert_eq!(outbox.respond(&mut conn, "v102_rentals", empty).await.unwrap(), 0);
    assert!(outbox_rows(&mut conn).await.is_empty(), "p32: nothing at all is written");

    let plain = Outbox::new(spec_b::w01::registry(), config());
    let w01_records = [spec_b::w01::ExampleResource {
        id: 1,
        account_id: Some(7),
        example_publishable_cancelable_resource_id: None,
        created_at: records[0].created_at,
        updated_at: records[0].updated_at,
    }];
    let genesis_only = Respond::new().entry("example_resource_created", &w01_records).genesis_only();
    let error = plain.respond(&mut conn, "v102_rentals", genesis_only).await.unwrap_err();
    assert_eq!(error.to_string(), "cannot execute genesis-only as there is no genesis topic for `v102_rentals`");
    let gone = ExampleResource { ..records[0].clone() };
    let error = plain
        .tombstone(
            &mut conn,
            "v102_rentals",
            &w01_records[0],
            TombstoneOptions { genesis_only: true, ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RespondError::NoGenesisReplica { .. }), "{error}");
    assert!(outbox_rows(&mut conn).await.is_empty(), "p29: nothing is written, tombstones included");
    let error = outbox.respond(&mut conn, "v102_nope", Respond::new().entry("e", &[gone])).await.unwrap_err();
    assert!(error.to_string().starts_with("`v102_nope` is not a declared topic"), "{error}");

    let raw = Respond::new().entry("example_resource_updated", &records).raw().genesis_only();
    assert_eq!(outbox.respond(&mut conn, "v102_rentals", raw).await.unwrap(), 1);
    let messages = planned(&mut conn, registry()).await;
    assert_eq!(topics(&messages[0]), ["v102_rentals_genesis"]);
    assert_eq!(messages[0][0].key, "ExampleResource:1");
    assert_eq!(messages[0][0].partition_key.as_deref(), Some("7"), "the first record's, by the topic's rule");
    let ts = "2022-08-12T13:24:24.000Z";
    let own = |id: i64, account: i64| json!({"id": id, "account_id": account, "example_publishable_cancelable_resource_id": null, "created_at": ts, "updated_at": ts});
    assert_eq!(value(&messages[0][0])["message"][0]["data"], json!([own(1, 7), own(2, 8)]));
}

/// P-30 / w27 through the outbox: a tombstone is the JSON text `null` on the topic and its
/// replica, with the record's key and computed partition key unless given (an explicit `None`
/// partition key sends none); genesis-only goes to the replica only — `tombstone_messages`
/// too.
#[tokio::test(flavor = "multi_thread")]
async fn tombstones_through_the_outbox_follow_p30() {
    let (_db, mut conn) = database().await;
    let record = resource(&mut conn, 20, 10).await;
    let outbox = Outbox::new(registry(), config());
    outbox.tombstone(&mut conn, "v102_rentals", &record, TombstoneOptions::default()).await.unwrap();
    let explicit =
        TombstoneOptions { key: Some("#WhateverItTakes".into()), partition_key: Some(None), genesis_only: false };
    outbox.tombstone(&mut conn, "v102_rentals", &record, explicit).await.unwrap();
    let genesis = TombstoneOptions { genesis_only: true, ..TombstoneOptions::default() };
    outbox.tombstone(&mut conn, "v102_rentals", &record, genesis).await.unwrap();
    let messages = planned(&mut conn, registry()).await;
    let null = Some(b"null".to_vec());
    let tombstone = |topic: &str, key: &str, partition_key: Option<&str>| OutgoingMessage {
        topic: topic.into(),
        key: key.into(),
        partition_key: partition_key.map(str::to_owned),
        payload: null.clone(),
        headers: Vec::new(),
        timestamp: None,
    };
    assert_eq!(
        messages[0],
        [
            tombstone("v102_rentals", "ExampleResource:20", Some("10")),
            tombstone("v102_rentals_genesis", "ExampleResource:20", Some("10"))
        ]
    );
    assert_eq!(
        messages[1],
        [
            tombstone("v102_rentals", "#WhateverItTakes", None),
            tombstone("v102_rentals_genesis", "#WhateverItTakes", None)
        ]
    );
    assert_eq!(messages[2], [tombstone("v102_rentals_genesis", "ExampleResource:20", Some("10"))]);

    let publication = registry().publications_on("ExampleResource", "v102_rentals")[0];
    let direct = tombstone_messages(registry(), config(), publication, &record, None, None, true).unwrap();
    assert_eq!(direct, [tombstone("v102_rentals_genesis", "ExampleResource:20", Some("10"))]);
    let plain = spec_b::w01::registry();
    let publication = plain.publications_on("ExampleResource", "v102_rentals")[0];
    let error = tombstone_messages(plain, config(), publication, &record, None, None, true).unwrap_err();
    assert!(matches!(error, PlanError::NoGenesisReplica(_)), "{error}");
}

/// The `dionysus.respond` notification (the gem's event bus): one tracing event per
/// destination topic, with the topic, key, partition key and message as `payload`.
///
/// Tracing caches per callsite whether anyone listens, and other tests of this binary hit the
/// same callsite concurrently with no subscriber on their thread; so the assertions run in a
/// child process of this binary where this test runs alone.
#[test]
fn respond_is_announced_per_topic() {
    const CHILD: &str = "DIONYSUS_TEST_RESPOND_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(respond_announcements());
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["producer::respond::respond_is_announced_per_topic", "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn respond_announcements() {
    use tracing_subscriber::layer::SubscriberExt;

    /// An event's fields, `(name, value)`.
    type EventFields = Vec<(String, String)>;
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<EventFields>>>);
    struct Fields<'a>(&'a mut EventFields);
    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if event.metadata().target() == "dionysus::respond" {
                let mut fields = Vec::new();
                event.record(&mut Fields(&mut fields));
                self.0.lock().unwrap().push(fields);
            }
        }
    }

    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let (_db, mut conn) = database().await;
    let records = [resource(&mut conn, 1, 7).await];
    let outbox = Outbox::new(registry(), config());
    outbox
        .respond(&mut conn, "v102_rentals", Respond::new().entry("example_resource_updated", &records))
        .await
        .unwrap();
    let events = capture.0.lock().unwrap().clone();
    let field =
        |event: &EventFields, name: &str| event.iter().find(|(field, _)| field == name).map(|(_, value)| value.clone());
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(field(&events[0], "topic_name").as_deref(), Some("v102_rentals"));
    assert_eq!(field(&events[1], "topic_name").as_deref(), Some("v102_rentals_genesis"));
    assert_eq!(field(&events[0], "key").as_deref(), Some("ExampleResource:1"));
    assert_eq!(field(&events[0], "partition_key").as_deref(), Some("7"));
    assert_eq!(
        field(&events[0], "payload").as_deref(),
        Some(r#"{"message":[{"event":"example_resource_updated","model_name":"ExampleResource","data":[{"id":1}]}]}"#)
    );
    assert_eq!(field(&events[0], "payload").as_deref(), field(&events[1], "payload").as_deref());
}
