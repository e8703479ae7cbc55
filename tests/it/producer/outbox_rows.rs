//! Outbox rows per change, on the declaration of dionysus-rb's outbox specs (vectors p04 …
//! p13). Each test runs the change and `dionysus::outbox` in one transaction and compares the
//! rows written.
//!
//! Where ours differs from the gem by design: observers are resolved when the change is
//! written, so instead of the gem's `__outbox_observer__` row (resolved later by the worker)
//! the related records' `_updated` rows appear directly; the `__outbox_observer__` row, with
//! the changeset the vectors expect, is written when more records are related than
//! `observers_inline_maximum_size` (checked with a maximum of 0).

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::config::ProducerConfig;
use dionysus::outbox::{Changeset, Outbox};
use dionysus::registry::OBSERVER_TOPIC;
use serde_json::json;

use super::spec_a::{
    config, registry, ExamplePublishAfterSoftDeletionResource, ExamplePublishableCancelableResource,
    ExamplePublishableResource, ExampleResource,
};
use super::{
    database, example_publish_after_soft_deletion_resources as soft_after,
    example_publishable_cancelable_resources as epcr, example_publishable_resources as epr, example_resources as er,
    outbox_rows, row, summary,
};

fn ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

async fn example_resource(
    conn: &mut AsyncPgConnection,
    account_id: Option<i64>,
    epcr_id: Option<i64>,
) -> ExampleResource {
    diesel::insert_into(er::table)
        .values((er::account_id.eq(account_id), er::example_publishable_cancelable_resource_id.eq(epcr_id)))
        .returning(ExampleResource::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

async fn cancelable(
    conn: &mut AsyncPgConnection,
    canceled_at: Option<DateTime<Utc>>,
) -> ExamplePublishableCancelableResource {
    diesel::insert_into(epcr::table)
        .values((epcr::account_id.eq(None::<i64>), epcr::canceled_at.eq(canceled_at)))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(conn)
        .await
        .unwrap()
}

fn no_inline_observers() -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.observers_inline_maximum_size = 0;
    config
}

/// p04: a create writes one `_created` row per topic of the model, in declaration order,
/// with the partition key computed from the record; observers of a changed column follow.
#[tokio::test(flavor = "multi_thread")]
async fn create_writes_a_row_per_topic_then_observer_rows() {
    let (_db, mut conn) = database().await;
    let owner = example_resource(&mut conn, Some(42), None).await;
    let outbox = Outbox::new(registry(), config());
    let created = conn
        .transaction::<_, anyhow::Error, _>(async move |tx| {
            let record = diesel::insert_into(epr::table)
                .values((epr::account_id.eq(Some(1_i64)), epr::example_resource_id.eq(Some(owner.id))))
                .returning(ExamplePublishableResource::as_returning())
                .get_result(tx)
                .await?;
            outbox.created(tx, &record).await?;
            Ok(record)
        })
        .await
        .unwrap();
    let id = created.id.to_string();
    let owner_id = owner.id.to_string();
    assert_eq!(
        summary(&outbox_rows(&mut conn).await),
        [
            row("ExamplePublishableResource", &id, "example_publishable_resource_created", "v102_rentals", Some("1")),
            row("ExamplePublishableResource", &id, "example_publishable_resource_created", "v102_other", Some("1")),
            row("ExampleResource", &owner_id, "example_resource_updated", "v102_observer_to_one", Some("42")),
        ]
    );
}

/// p04 with observers deferred: the `__outbox_observer__` row carries the create changeset
/// (every column as `[null, value]`, timestamps with milliseconds).
#[tokio::test(flavor = "multi_thread")]
async fn create_beyond_the_inline_maximum_writes_one_observer_row_with_the_changeset() {
    let (_db, mut conn) = database().await;
    let owner = example_resource(&mut conn, Some(42), None).await;
    let config = no_inline_observers();
    let outbox = Outbox::new(registry(), &config);
    let record = diesel::insert_into(epr::table)
        .values((epr::account_id.eq(Some(1_i64)), epr::example_resource_id.eq(Some(owner.id))))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(outbox.created(&mut conn, &record).await.unwrap(), 3);
    let rows = outbox_rows(&mut conn).await;
    let observer = &rows[2];
    assert_eq!(
        (
            observer.resource_class.as_str(),
            observer.event_name.as_str(),
            observer.topic.as_str(),
            &observer.partition_key
        ),
        ("ExamplePublishableResource", "example_publishable_resource_created", OBSERVER_TOPIC, &None)
    );
    assert_eq!(
        observer.changeset,
        json!({
            "id": [null, record.id],
            "account_id": [null, 1],
            "example_resource_id": [null, owner.id],
            "created_at": [null, "2022-08-12T13:24:24.000Z"],
            "updated_at": [null, "2022-08-12T13:24:24.000Z"],
        })
    );
    assert_eq!(rows[0].changeset, json!({}), "only observer rows carry a changeset");
}

/// p06: an update of a model that is not soft-deletable writes `_updated` rows for every
/// topic; a null `account_id` gives the partition key "0".
#[tokio::test(flavor = "multi_thread")]
async fn update_writes_updated_rows_with_partition_key_zero_for_null() {
    let (_db, mut conn) = database().await;
    let before = diesel::insert_into(epr::table)
        .values(epr::account_id.eq(None::<i64>))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let after = diesel::update(epr::table.find(before.id))
        .set(epr::updated_at.eq(ts("2022-08-12T13:25:00Z")))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let outbox = Outbox::new(registry(), config());
    outbox.updated(&mut conn, &after, &Changeset::between(&before, &after)).await.unwrap();
    let id = after.id.to_string();
    assert_eq!(
        summary(&outbox_rows(&mut conn).await),
        [
            row("ExamplePublishableResource", &id, "example_publishable_resource_updated", "v102_rentals", Some("0")),
            row("ExamplePublishableResource", &id, "example_publishable_resource_updated", "v102_other", Some("0")),
        ]
    );
}

/// An update that changes nothing writes nothing (a plain `touch` in the gem).
#[tokio::test(flavor = "multi_thread")]
async fn empty_update_writes_nothing() {
    let (_db, mut conn) = database().await;
    let record = diesel::insert_into(epr::table)
        .values(epr::account_id.eq(Some(3_i64)))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let written = Outbox::new(registry(), config())
        .updated(&mut conn, &record, &Changeset::between(&record, &record))
        .await
        .unwrap();
    assert_eq!(written, 0);
    assert!(outbox_rows(&mut conn).await.is_empty());
}

async fn cancel_update(
    conn: &mut AsyncPgConnection,
    before: &ExamplePublishableCancelableResource,
    canceled_at: Option<DateTime<Utc>>,
    config: &ProducerConfig,
) -> ExamplePublishableCancelableResource {
    let after = diesel::update(epcr::table.find(before.id))
        .set(epcr::canceled_at.eq(canceled_at))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(conn)
        .await
        .unwrap();
    Outbox::new(registry(), config).updated(conn, &after, &Changeset::between(before, &after)).await.unwrap();
    after
}

/// p08: setting the soft-delete column publishes `_destroyed`; the observers of
/// `canceled_at` republish the related records (the owners holding the key).
#[tokio::test(flavor = "multi_thread")]
async fn soft_delete_is_published_as_destroyed_and_notifies_observers() {
    let (_db, mut conn) = database().await;
    let before = cancelable(&mut conn, None).await;
    let owners = [
        example_resource(&mut conn, Some(5), Some(before.id)).await,
        example_resource(&mut conn, Some(6), Some(before.id)).await,
    ];
    cancel_update(&mut conn, &before, Some(ts("2022-08-22T08:01:47Z")), config()).await;
    let id = before.id.to_string();
    assert_eq!(
        summary(&outbox_rows(&mut conn).await),
        [
            row(
                "ExamplePublishableCancelableResource",
                &id,
                "example_publishable_cancelable_resource_destroyed",
                "v102_rentals",
                Some("0")
            ),
            row(
                "ExampleResource",
                &owners[0].id.to_string(),
                "example_resource_updated",
                "v102_observer_to_one_canceled",
                Some("5")
            ),
            row(
                "ExampleResource",
                &owners[1].id.to_string(),
                "example_resource_updated",
                "v102_observer_to_one_canceled",
                Some("6")
            ),
        ]
    );
}

/// p08 deferred: the observer row's changeset is exactly the soft-delete change.
#[tokio::test(flavor = "multi_thread")]
async fn soft_delete_observer_row_carries_the_changeset() {
    let (_db, mut conn) = database().await;
    let before = cancelable(&mut conn, None).await;
    example_resource(&mut conn, None, Some(before.id)).await;
    cancel_update(&mut conn, &before, Some(ts("2022-08-22T08:01:47Z")), &no_inline_observers()).await;
    let rows = outbox_rows(&mut conn).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].topic, OBSERVER_TOPIC);
    assert_eq!(rows[1].event_name, "example_publishable_cancelable_resource_destroyed");
    assert_eq!(rows[1].changeset, json!({"canceled_at": [null, "2022-08-22T08:01:47.000Z"]}));
}

/// p10: changing the timestamp of an already soft-deleted record is `_destroyed` again;
/// clearing it is a restoration, published as `_created`.
#[tokio::test(flavor = "multi_thread")]
async fn soft_delete_state_machine() {
    let (_db, mut conn) = database().await;
    let first = ts("2022-08-22T08:01:47Z");
    let record = cancelable(&mut conn, Some(first)).await;
    let moved = cancel_update(&mut conn, &record, Some(ts("2022-08-23T08:01:47Z")), config()).await;
    cancel_update(&mut conn, &moved, None, config()).await;
    let events: Vec<String> = outbox_rows(&mut conn).await.into_iter().map(|row| row.event_name).collect();
    assert_eq!(
        events,
        ["example_publishable_cancelable_resource_destroyed", "example_publishable_cancelable_resource_created"]
    );
}

/// p12: an update of a soft-deleted record writes nothing, unless the model publishes
/// updates after soft delete.
#[tokio::test(flavor = "multi_thread")]
async fn update_while_soft_deleted_is_silent_unless_the_model_opts_in() {
    let (_db, mut conn) = database().await;
    let canceled = Some(ts("2022-08-22T08:01:47Z"));
    let before = cancelable(&mut conn, canceled).await;
    let after = diesel::update(epcr::table.find(before.id))
        .set(epcr::account_id.eq(Some(9_i64)))
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let outbox = Outbox::new(registry(), config());
    assert_eq!(outbox.updated(&mut conn, &after, &Changeset::between(&before, &after)).await.unwrap(), 0);

    let before = diesel::insert_into(soft_after::table)
        .values(soft_after::canceled_at.eq(canceled))
        .returning(ExamplePublishAfterSoftDeletionResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    let after = diesel::update(soft_after::table.find(before.id))
        .set(soft_after::account_id.eq(Some(9_i64)))
        .returning(ExamplePublishAfterSoftDeletionResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    outbox.updated(&mut conn, &after, &Changeset::between(&before, &after)).await.unwrap();
    assert_eq!(
        summary(&outbox_rows(&mut conn).await),
        [row(
            "ExamplePublishAfterSoftDeletionResource",
            &after.id.to_string(),
            "example_publish_after_soft_deletion_resource_updated",
            "v102_rentals",
            Some("9")
        )]
    );
}

/// p13: a destroy writes `_destroyed` rows; its observer changeset is `{pk: [id, null],
/// created_at: [created_at, null]}`. Unlike the gem, observers of a destroyed record are
/// resolved from the record as it was, so its related records are republished.
#[tokio::test(flavor = "multi_thread")]
async fn destroy_writes_destroyed_rows_and_republishes_observers() {
    let (_db, mut conn) = database().await;
    let owner = example_resource(&mut conn, Some(8), None).await;
    let record = diesel::insert_into(epr::table)
        .values((epr::account_id.eq(Some(1_i64)), epr::example_resource_id.eq(Some(owner.id))))
        .returning(ExamplePublishableResource::as_returning())
        .get_result(&mut conn)
        .await
        .unwrap();
    diesel::delete(epr::table.find(record.id)).execute(&mut conn).await.unwrap();
    Outbox::new(registry(), config()).destroyed(&mut conn, &record).await.unwrap();
    let id = record.id.to_string();
    assert_eq!(
        summary(&outbox_rows(&mut conn).await),
        [
            row("ExamplePublishableResource", &id, "example_publishable_resource_destroyed", "v102_rentals", Some("1")),
            row("ExamplePublishableResource", &id, "example_publishable_resource_destroyed", "v102_other", Some("1")),
            row(
                "ExampleResource",
                &owner.id.to_string(),
                "example_resource_updated",
                "v102_observer_to_one",
                Some("8")
            ),
        ]
    );

    diesel::delete(dionysus::__internals::schema::dionysus_outbox::table).execute(&mut conn).await.unwrap();
    Outbox::new(registry(), &no_inline_observers()).destroyed(&mut conn, &record).await.unwrap();
    let rows = outbox_rows(&mut conn).await;
    assert_eq!(rows[2].topic, OBSERVER_TOPIC);
    assert_eq!(rows[2].changeset, json!({"id": [record.id, null], "created_at": ["2022-08-12T13:24:24.000Z", null]}));
}

/// P-10: with the outbox switched off nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_outbox_writes_nothing() {
    let (_db, mut conn) = database().await;
    let record = cancelable(&mut conn, None).await;
    let mut config = ProducerConfig::default();
    config.transactional_outbox_enabled = false;
    assert_eq!(Outbox::new(registry(), &config).created(&mut conn, &record).await.unwrap(), 0);
    assert!(outbox_rows(&mut conn).await.is_empty());
}

/// Batch variants write the rows of every record in one statement.
#[tokio::test(flavor = "multi_thread")]
async fn batch_create_writes_every_records_rows() {
    let (_db, mut conn) = database().await;
    let records: Vec<ExamplePublishableCancelableResource> = diesel::insert_into(epcr::table)
        .values(&vec![
            epcr::account_id.eq(Some(1_i64)),
            epcr::account_id.eq(Some(2_i64)),
            epcr::account_id.eq(Some(3_i64)),
        ])
        .returning(ExamplePublishableCancelableResource::as_returning())
        .get_results(&mut conn)
        .await
        .unwrap();
    assert_eq!(Outbox::new(registry(), config()).created_all(&mut conn, &records).await.unwrap(), 3);
    let keys: Vec<Option<String>> = outbox_rows(&mut conn).await.into_iter().map(|row| row.partition_key).collect();
    assert_eq!(keys, [Some("1".to_owned()), Some("2".to_owned()), Some("3".to_owned())]);
    let _ = Utc.timestamp_opt(0, 0);
}
