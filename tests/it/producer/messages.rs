//! From outbox rows to Kafka messages through the testing kit's `published_with` — the
//! relay's own reading and planning of pending rows — on real PostgreSQL but without a
//! broker: topic(s), key, partition key and the exact value bytes (vectors w01, w02, w15,
//! p20, p22, p23, p24, p26, p29, p30, w27).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dionysus::__internals::producer::plan::{tombstone_messages, OutgoingMessage, PlanError};
use dionysus::__internals::producer::NewOutboxRow;
use dionysus::__internals::schema::dionysus_outbox;
use dionysus::config::{Config, ProducerConfig};
use dionysus::outbox::{Changeset, Outbox, OutboxRow};
use dionysus::registry::Registry;
use dionysus::registry::OBSERVER_TOPIC;
use dionysus::testing::{published_with, Published, PublishedError, SkipReason};
use dionysus::Dionysus;
use serde_json::{json, Value};

use super::spec_b::{
    self, config, registry, ExamplePublishableCancelableResource, ExamplePublishableResource, ExampleResource,
};
use super::{database, example_publishable_cancelable_resources as epcr, example_publishable_resources as epr};
use super::{example_resources as er, outbox_rows};

/// A handle over a spec's declarations and producer settings.
fn handle(registry: &Registry, producer: &ProducerConfig) -> Dionysus {
    Dionysus::with_registry(Config::default(), registry.clone()).configure(|config| config.producer = producer.clone())
}

/// An outbox row as the gem's specs write it by hand.
fn row(class: &str, id: i64, event: &str, topic: &str, partition_key: Option<&str>) -> NewOutboxRow {
    NewOutboxRow {
        resource_class: class.to_owned(),
        resource_id: id.to_string(),
        event_name: event.to_owned(),
        topic: topic.to_owned(),
        partition_key: partition_key.map(str::to_owned),
        changeset: json!({}),
        message: None,
        message_key: None,
        encryption_key_id: None,
    }
}

/// What the relay would send for the pending rows after writing `rows` into the outbox.
async fn publish(
    conn: &mut AsyncPgConnection,
    registry: &Registry,
    config: &ProducerConfig,
    rows: &[NewOutboxRow],
) -> Result<Published, PublishedError> {
    if !rows.is_empty() {
        diesel::insert_into(dionysus_outbox::table).values(rows).execute(conn).await.unwrap();
    }
    published_with(&handle(registry, config), conn).await
}

/// Forgets every outbox row (between two declarations tried on one database).
async fn clear_outbox(conn: &mut AsyncPgConnection) {
    diesel::delete(dionysus_outbox::table).execute(conn).await.unwrap();
}

/// `(topic, key, partition key, value)` of each message (of the outbox row `outbox_id`, when
/// given), in order.
fn sent(published: &Published, outbox_id: Option<i64>) -> Vec<(String, String, Option<String>, String)> {
    published
        .iter()
        .filter(|message| outbox_id.is_none_or(|id| message.outbox_id == id))
        .map(|message| {
            let value = message.payload.as_deref().map(|bytes| String::from_utf8(bytes.to_vec()).unwrap());
            (message.topic.clone(), message.key.clone(), message.partition_key.clone(), value.unwrap_or_default())
        })
        .collect()
}

fn message(
    topic: &str,
    key: &str,
    partition_key: Option<&str>,
    value: &str,
) -> (String, String, Option<String>, String) {
    (topic.to_owned(), key.to_owned(), partition_key.map(str::to_owned), value.to_owned())
}

async fn example_resource(
    conn: &mut AsyncPgConnection,
    id: i64,
    account_id: Option<i64>,
    epcr_id: Option<i64>,
) -> ExampleResource {
    diesel::insert_into(er::table)
        .values((
            er::id.eq(id),
            er::account_id.eq(account_id),
            er::example_publishable_cancelable_resource_id.eq(epcr_id),
        ))
        .returning(ExampleResource::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

fn envelope(event: &str, id: i64) -> String {
    format!(r#"{{"message":[{{"event":"{event}","model_name":"ExampleResource","data":[{{"id":{id}}}]}}]}}"#)
}

/// w01: one message with the standard envelope, key `Model:id`, partition key from the
/// topic's `account_id`.
#[tokio::test(flavor = "multi_thread")]
async fn created_row_becomes_one_message_with_the_standard_envelope() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 1, Some(2), None).await;
    let rows = [row("ExampleResource", 1, "example_resource_created", "v102_rentals", None)];
    let published = publish(&mut conn, spec_b::w01::registry(), &ProducerConfig::default(), &rows).await.unwrap();
    assert_eq!(
        sent(&published, None),
        [message(
            "v102_rentals",
            "ExampleResource:1",
            Some("2"),
            r#"{"message":[{"event":"example_resource_created","model_name":"ExampleResource","data":[{"id":1}]}]}"#
        )]
    );
}

/// w02: a topic with a genesis replica gets the message twice, primary first; the partition
/// key stored in the row wins over the computed one; other topics of the model are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn genesis_replica_gets_every_message_and_the_stored_partition_key_wins() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), None).await;
    let rows = [row("ExampleResource", 5, "example_resource_created", "v102_rentals", Some("123123"))];
    let published = publish(&mut conn, registry(), config(), &rows).await.unwrap();
    let value = envelope("example_resource_created", 5);
    assert_eq!(
        sent(&published, None),
        [
            message("v102_rentals", "ExampleResource:5", Some("123123"), &value),
            message("v102_rentals_genesis", "ExampleResource:5", Some("123123"), &value),
        ]
    );
}

/// p20: creating a `with(...)` dependency writes `<parent>_updated` rows with the parent's
/// key and partition key, published to the parent's topic and its replica.
#[tokio::test(flavor = "multi_thread")]
async fn dependency_change_publishes_its_parent() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), None).await;
    let child = diesel::insert_into(epr::table)
        .values((epr::id.eq(11_i64), epr::example_resource_id.eq(Some(5_i64))))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    Outbox::new(registry(), config()).created(&mut conn, &child).await.unwrap();
    let rows = outbox_rows(&mut conn).await;
    let on_rentals: Vec<&OutboxRow> = rows.iter().filter(|row| row.topic == "v102_rentals").collect();
    assert_eq!(on_rentals.len(), 1);
    assert_eq!(
        (on_rentals[0].resource_class.as_str(), on_rentals[0].resource_id.as_str(), on_rentals[0].event_name.as_str()),
        ("ExampleResource", "5", "example_resource_updated")
    );
    assert!(rows.iter().any(|row| row.topic == "v102_other_rentals"), "every parent topic gets a row");
    let published = publish(&mut conn, registry(), config(), &[]).await.unwrap();
    let value = envelope("example_resource_updated", 5);
    assert_eq!(
        sent(&published, Some(on_rentals[0].id)),
        [
            message("v102_rentals", "ExampleResource:5", Some("2"), &value),
            message("v102_rentals_genesis", "ExampleResource:5", Some("2"), &value),
        ]
    );
}

/// p22: a dependency whose key is null has no parent: nothing is written or published.
#[tokio::test(flavor = "multi_thread")]
async fn dependency_without_a_parent_publishes_nothing() {
    let (_db, mut conn) = database().await;
    let child = diesel::insert_into(epr::table)
        .values(epr::example_resource_id.eq(None::<i64>))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(Outbox::new(registry(), config()).created(&mut conn, &child).await.unwrap(), 0);
}

/// p23: a dependency with many parents (they hold its key) republishes each of them with its
/// own key and partition key (the gem reuses the first parent's for all).
#[tokio::test(flavor = "multi_thread")]
async fn dependency_with_many_parents_republishes_each_with_its_own_keys() {
    let (_db, mut conn) = database().await;
    let child = diesel::insert_into(epcr::table)
        .values(epcr::id.eq(3_i64))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    example_resource(&mut conn, 5, Some(2), Some(3)).await;
    example_resource(&mut conn, 6, Some(7), Some(3)).await;
    let after = diesel::update(epcr::table.find(3_i64))
        .set(epcr::account_id.eq(Some(1_i64)))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    Outbox::new(registry(), config()).updated(&mut conn, &after, &Changeset::between(&child, &after)).await.unwrap();
    let published = publish(&mut conn, registry(), config(), &[]).await.unwrap();
    let firsts: Vec<(String, Option<String>)> = published
        .on_topic("v102_rentals")
        .iter()
        .map(|message| (message.key.clone(), message.partition_key.clone()))
        .collect();
    assert_eq!(
        firsts,
        [
            ("ExampleResource:5".to_owned(), Some("2".to_owned())),
            ("ExampleResource:6".to_owned(), Some("7".to_owned()))
        ]
    );
}

/// p24: a change to an observed column publishes the related record on the observing topic
/// and its replica, as `<model>_updated`.
#[tokio::test(flavor = "multi_thread")]
async fn observed_column_change_publishes_the_related_record() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), None).await;
    let before = diesel::insert_into(epr::table)
        .values((epr::id.eq(11_i64), epr::example_resource_id.eq(Some(5_i64))))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let after = diesel::update(epr::table.find(11_i64))
        .set(epr::created_at.eq(chrono::Utc::now()))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    Outbox::new(registry(), config()).updated(&mut conn, &after, &Changeset::between(&before, &after)).await.unwrap();
    let rows: Vec<OutboxRow> =
        outbox_rows(&mut conn).await.into_iter().filter(|row| row.topic == "v102_observer_to_one").collect();
    assert_eq!(rows.len(), 1);
    let published = publish(&mut conn, registry(), config(), &[]).await.unwrap();
    let value = envelope("example_resource_updated", 5);
    // The topic has no partition key and the specs' default is `id`.
    assert_eq!(
        sent(&published, Some(rows[0].id)),
        [
            message("v102_observer_to_one", "ExampleResource:5", Some("5"), &value),
            message("v102_observer_to_one_genesis", "ExampleResource:5", Some("5"), &value),
        ]
    );
}

/// p26: beyond the inline maximum, one deferred observer row is written; the relay hands it
/// to genesis instead of publishing inline.
#[tokio::test(flavor = "multi_thread")]
async fn observer_overflow_is_deferred() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), Some(3)).await;
    let record = diesel::insert_into(epcr::table)
        .values(epcr::id.eq(3_i64))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let mut config = config().clone();
    config.observers_inline_maximum_size = 0;
    Outbox::new(registry(), &config).created(&mut conn, &record).await.unwrap();
    let rows = outbox_rows(&mut conn).await;
    let deferred: Vec<&OutboxRow> = rows.iter().filter(|row| row.topic == OBSERVER_TOPIC).collect();
    assert_eq!(deferred.len(), 1, "one deferred row however many observers matched");
    let published = publish(&mut conn, registry(), &config, &[]).await.unwrap();
    let skipped: Vec<(i64, SkipReason)> = published.skipped().iter().map(|row| (row.outbox_id, row.reason)).collect();
    assert_eq!(skipped, [(deferred[0].id, SkipReason::DeferredObservers)]);
    assert!(published.iter().all(|message| message.outbox_id != deferred[0].id), "nothing sent for it");
}

/// P-12: with encryption keys configured, the changeset of a deferred observer row is stored
/// sealed (a JSON string without the changed values) with its key id, rows without a
/// changeset stay as they are, and the changeset opens with that key only.
#[tokio::test(flavor = "multi_thread")]
async fn observer_changesets_are_sealed_at_rest() {
    use dionysus::config::EncryptionKeys;
    use dionysus::outbox::SealError;

    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), Some(3)).await;
    let record = diesel::insert_into(epcr::table)
        .values((epcr::id.eq(3_i64), epcr::account_id.eq(424_242_i64)))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let keys = |text: &str| EncryptionKeys::parse("DIONYSUS_OUTBOX_ENCRYPTION_KEYS", text).unwrap();
    let sealing = keys("k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    let mut config = config().clone();
    config.observers_inline_maximum_size = 0;
    config.outbox_encryption_keys = sealing.clone();
    Outbox::new(registry(), &config).created(&mut conn, &record).await.unwrap();
    let rows = outbox_rows(&mut conn).await;
    let deferred = rows.iter().find(|row| row.topic == OBSERVER_TOPIC).unwrap();
    assert_eq!(deferred.encryption_key_id.as_deref(), Some("k1"));
    let stored = deferred.changeset.as_str().expect("a sealed changeset is a JSON string");
    assert!(!stored.contains("424242") && !stored.contains("account_id"), "{stored}");
    let opened = deferred.changeset(&sealing).unwrap();
    assert_eq!(opened.get("account_id"), Some((&Value::Null, &json!(424_242))));
    for row in rows.iter().filter(|row| row.topic != OBSERVER_TOPIC) {
        assert_eq!((row.changeset.clone(), row.encryption_key_id.clone()), (json!({}), None), "nothing to seal");
    }
    let wrong = keys("k1:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    assert_eq!(deferred.changeset(&wrong), Err(SealError::Rejected { key_id: "k1".into() }));
    assert!(matches!(deferred.changeset(&EncryptionKeys::default()), Err(SealError::UnknownKey { .. })));
}

/// p29: a row on the genesis name of a topic without a genesis replica cannot be published.
#[tokio::test(flavor = "multi_thread")]
async fn genesis_only_without_a_replica_is_an_error() {
    let (_db, mut conn) = database().await;
    example_resource(&mut conn, 5, Some(2), None).await;
    let rows = [row("ExampleResource", 5, "example_resource_updated", "v102_rentals_genesis", None)];
    match publish(&mut conn, spec_b::w01::registry(), &ProducerConfig::default(), &rows).await {
        Err(PublishedError::Unpublishable { source: error @ PlanError::NotPublishedOnTopic { .. }, .. }) => {
            assert_eq!(error.to_string(), "model `ExampleResource` is not published on topic `v102_rentals_genesis`");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // On a replicated topic the genesis name means "the replica only".
    let published = publish(&mut conn, registry(), config(), &[]).await.unwrap();
    let topics: Vec<&str> = published.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["v102_rentals_genesis"]);
}

/// P-22 / W-11: a gone record is skipped for `_created`/`_updated` rows and published as
/// `{"links":{},"id":…}` for `_destroyed` rows.
#[tokio::test(flavor = "multi_thread")]
async fn gone_records_follow_the_missing_resource_rules() {
    let (_db, mut conn) = database().await;
    let rows = [
        row("ExampleResource", 10, "example_resource_updated", "v102_rentals", None),
        row("ExampleResource", 10, "example_resource_destroyed", "v102_rentals", Some("4")),
    ];
    let registry = spec_b::w15::registry();
    let failed = publish(&mut conn, registry, &ProducerConfig::default(), &rows).await;
    assert!(
        matches!(&failed, Err(PublishedError::Unpublishable { source: PlanError::NotPublishedOnTopic { .. }, .. })),
        "{failed:?}"
    );
    clear_outbox(&mut conn).await;
    let rows = [
        row("ExampleResource", 10, "example_resource_updated", "v15_rentals", None),
        row("ExampleResource", 10, "example_resource_destroyed", "v15_rentals", Some("4")),
    ];
    let published = publish(&mut conn, registry, &ProducerConfig::default(), &rows).await.unwrap();
    let skipped: Vec<(&str, SkipReason)> =
        published.skipped().iter().map(|row| (row.event_name.as_str(), row.reason)).collect();
    assert_eq!(skipped, [("example_resource_updated", SkipReason::RecordGone)]);
    assert_eq!(
        sent(&published, None),
        [message(
            "v15_rentals",
            "ExampleResource:10",
            Some("4"),
            r#"{"message":[{"event":"example_resource_destroyed","model_name":"ExampleResource","data":[{"links":{},"id":10}]}]}"#
        )]
    );
}

/// w15: the default serializer writes the record's fields, `links` with the sideloaded ids,
/// then the sideloaded records (to-many under the plural name, to-one under the singular),
/// loaded for the whole batch in one query per dependency (a record named by two rows of the
/// batch is loaded once, and both messages carry its sideloads).
#[tokio::test(flavor = "multi_thread")]
async fn default_serializer_sideloads_with_dependencies() {
    let (_db, mut conn) = database().await;
    diesel::insert_into(epcr::table).values(epcr::id.eq(3_i64)).execute(&mut conn).await.unwrap();
    example_resource(&mut conn, 1, Some(2), Some(3)).await;
    example_resource(&mut conn, 2, Some(2), None).await;
    diesel::insert_into(epr::table)
        .values(&vec![
            (epr::id.eq(30_i64), epr::example_resource_id.eq(Some(1_i64))),
            (epr::id.eq(31_i64), epr::example_resource_id.eq(Some(1_i64))),
        ])
        .execute(&mut conn)
        .await
        .unwrap();
    let rows = [
        row("ExampleResource", 1, "example_resource_updated", "v15_rentals", None),
        row("ExampleResource", 2, "example_resource_updated", "v15_rentals", None),
        row("ExampleResource", 1, "example_resource_updated", "v15_rentals", None),
    ];
    let published = publish(&mut conn, spec_b::w15::registry(), &ProducerConfig::default(), &rows).await.unwrap();
    assert_eq!(published.messages().len(), 3);
    let value: Value = published.messages()[0].value().unwrap();
    let ts = "2022-08-12T13:24:24.000Z";
    let nested = |id: i64| json!({"id": id, "account_id": null, "example_resource_id": 1, "created_at": ts, "updated_at": ts, "links": {}});
    assert_eq!(
        value["message"][0]["data"][0],
        json!({
            "id": 1, "account_id": 2, "example_publishable_cancelable_resource_id": 3, "created_at": ts, "updated_at": ts,
            "links": {"example_publishable_resources": [30, 31], "example_publishable_cancelable_resource": 3},
            "example_publishable_resources": [nested(30), nested(31)],
            "example_publishable_cancelable_resource": {"id": 3, "account_id": null, "canceled_at": null, "created_at": ts, "updated_at": ts, "links": {}},
        })
    );
    let keys: Vec<&String> = value["message"][0]["data"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys[5], "links", "links follow the attributes");
    let second: Value = published.messages()[1].value().unwrap();
    assert_eq!(
        second["message"][0]["data"][0]["links"],
        json!({"example_publishable_resources": [], "example_publishable_cancelable_resource": null})
    );
    assert_eq!(second["message"][0]["data"][0]["example_publishable_cancelable_resource"], Value::Null);
    let again: Value = published.messages()[2].value().unwrap();
    assert_eq!(
        again["message"][0]["data"][0], value["message"][0]["data"][0],
        "the repeated row's message is the first's"
    );
}

/// p30 / w27: a tombstone is the JSON text `null` on the topic and its replica; key and
/// partition key default to the record's and can be given verbatim.
#[tokio::test(flavor = "multi_thread")]
async fn tombstones_default_to_the_records_keys() {
    let (_db, mut conn) = database().await;
    let record = example_resource(&mut conn, 20, Some(10), None).await;
    let publication = registry().publications_on("ExampleResource", "v102_rentals")[0];
    let defaults = tombstone_messages(registry(), config(), publication, &record, None, None, false).unwrap();
    let null = Some(b"null".to_vec());
    assert_eq!(
        defaults,
        [
            OutgoingMessage {
                topic: "v102_rentals".into(),
                key: "ExampleResource:20".into(),
                partition_key: Some("10".into()),
                payload: null.clone(),
                headers: Vec::new(),
                timestamp: None
            },
            OutgoingMessage {
                topic: "v102_rentals_genesis".into(),
                key: "ExampleResource:20".into(),
                partition_key: Some("10".into()),
                payload: null.clone(),
                headers: Vec::new(),
                timestamp: None
            },
        ]
    );
    let explicit = tombstone_messages(
        registry(),
        config(),
        publication,
        &record,
        Some("#WhateverItTakes".into()),
        Some(Some("Smily".into())),
        false,
    )
    .unwrap();
    assert_eq!(explicit[0].key, "#WhateverItTakes");
    assert_eq!(explicit[1].partition_key.as_deref(), Some("Smily"));
    assert_eq!(explicit[1].payload, null);
}

/// p16: the topic's partition key beats the configured default; an attribute the model does
/// not have gives no partition key; values render as Ruby's `to_i.to_s`.
#[test]
fn partition_key_sources_follow_p16() {
    use dionysus::__internals::producer::partition_key;
    use dionysus::registry::model::{PartitionKeySource, Publication};
    use dionysus::registry::{Tombstone, TopicDeclaration};
    use dionysus::serialize::DefaultSerializer;
    use dionysus::Publishable;

    fn topic(partition_key: Option<&'static str>) -> &'static TopicDeclaration {
        Box::leak(Box::new(TopicDeclaration {
            namespace: None,
            name: "p16",
            full_name: "p16",
            partition_key,
            partition_key_with: None,
            partitions: None,
            replication_factor: None,
            genesis_replica: false,
            tombstone: Tombstone::JsonNull,
            format: dionysus::registry::TopicFormat::Json,
            declared_by: "test",
            location: "test",
        }))
    }
    static PUBLICATION: Publication = Publication {
        model: &<spec_b::w01::ExampleResource as Publishable>::MODEL,
        topic: "p16",
        partition_key: PartitionKeySource::Inherit,
        with: &[],
        observe: &[],
        serialize: dionysus::serialize::serialize_erased::<spec_b::w01::ExampleResource, DefaultSerializer>,
        schema: None,
        delayed: &[],
        location: "test",
    };
    let record = |account_id| spec_b::w01::ExampleResource {
        id: 1,
        account_id,
        example_publishable_cancelable_resource_id: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    let default = |key: &str| {
        let mut config = ProducerConfig::default();
        config.default_partition_key = key.to_owned();
        config
    };
    type Case = (Option<&'static str>, &'static str, Option<i64>, Option<&'static str>);
    let cases: [Case; 6] = [
        (Some("id"), "account_id", Some(2), Some("1")),
        (Some("booking_id"), "account_id", Some(2), None),
        (None, "account_id", Some(2), Some("2")),
        (None, "rental_id", Some(2), None),
        (None, "account_id", None, Some("0")),
        (Some("account_id"), "id", Some(7), Some("7")),
    ];
    for (topic_key, default_key, account_id, expected) in cases {
        let registry = Registry::new([topic(topic_key)], []);
        let actual = partition_key(&PUBLICATION, &record(account_id), &registry, &default(default_key));
        assert_eq!(
            actual.as_deref(),
            expected,
            "topic {topic_key:?}, default {default_key}, account_id {account_id:?}"
        );
    }
}

/// A record's id times ten, as the gem's spec lambda (`id * 10`).
fn ten_times_id(record: &dyn dionysus::registry::model::Record) -> Option<String> {
    record.attribute("id")?.as_i64().map(|id| (id * 10).to_string())
}

/// The gem's default lambda (`id * 10 + 1`); `None` for records without an id.
fn ten_times_id_plus_one(record: &dyn dionysus::registry::model::Record) -> Option<String> {
    record.attribute("id")?.as_i64().map(|id| (id * 10 + 1).to_string())
}

/// A topic whose partition key is a function.
#[dionysus::topic(name = "p26_callable", partition_key_with = ten_times_id)]
pub struct CallableKeyTopic;

/// A topic naming no partition key.
#[dionysus::topic(name = "p26_plain")]
pub struct PlainTopic;

diesel::table! { p26_items (id) { id -> BigInt, account_id -> BigInt } }

#[derive(Debug, Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = p26_items)]
#[publish(topic = CallableKeyTopic)]
#[publish(topic = PlainTopic)]
#[publish(topic = "p26_own", partition_key = account_id)]
pub struct P26Item {
    pub id: i64,
    pub account_id: i64,
}

/// P-26 callables: a topic declared with `partition_key_with` computes the key of every model
/// published on it without a key of its own (spec: lambda `id*10` → `"10"`); a registry's
/// default function does the same where the topic names none, in place of the configured
/// default attribute (spec: default lambda `id*10+1` → `"11"`); a publication's own key still
/// wins, and without a default function the configured attribute applies.
#[test]
fn callable_partition_keys_on_topics_and_as_the_default() {
    use dionysus::__internals::producer::partition_key;
    use dionysus::Topic;

    let record = P26Item { id: 1, account_id: 2 };
    let base = Registry::new([CallableKeyTopic::DECLARATION, PlainTopic::DECLARATION], []).with_model::<P26Item>();
    let with_default = base.clone().with_default_partition_key(ten_times_id_plus_one);
    let key = |registry: &Registry, topic: &str| {
        let publication = registry.publications_on("P26Item", topic)[0];
        partition_key(publication, &record, registry, &ProducerConfig::default())
    };
    assert_eq!(key(&base, "p26_callable").as_deref(), Some("10"));
    assert_eq!(key(&with_default, "p26_callable").as_deref(), Some("10"), "the topic's function beats the default");
    assert_eq!(key(&base, "p26_plain").as_deref(), Some("2"), "configured default attribute `account_id`");
    assert_eq!(key(&with_default, "p26_plain").as_deref(), Some("11"));
    assert_eq!(key(&with_default, "p26_own").as_deref(), Some("2"), "the publication's own key wins");

    // Tombstones (P-30) compute their partition key the same way.
    let publication = with_default.publications_on("P26Item", "p26_plain")[0];
    let tombstone =
        tombstone_messages(&with_default, &ProducerConfig::default(), publication, &record, None, None, false).unwrap();
    assert_eq!(tombstone[0].partition_key.as_deref(), Some("11"));
}
