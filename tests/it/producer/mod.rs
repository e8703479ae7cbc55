//! The producer side on real PostgreSQL: outbox rows written by `dionysus::outbox` for each
//! kind of change (the gem's vectors p04 … p26), and the messages `plan_rows` builds from them
//! (w01, w02, w15, p20 … p30). The vectors' models and declarations are reproduced with
//! `#[derive(Publishable)]` in [`spec_a`] (the outbox specs) and [`spec_b`] (the publisher
//! specs).

mod messages;
mod outbox_rows;
mod respond;
mod rollback;
pub(crate) mod spec_a;
pub(crate) mod spec_b;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::schema::dionysus_outbox;
use dionysus::outbox::OutboxRow;
use dionysus_tests::TestDb;

/// The tables of dionysus-rb's spec suite.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE example_resources (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT,
    example_publishable_cancelable_resource_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z'
);
CREATE TABLE example_publishable_resources (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT,
    example_resource_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z'
);
CREATE TABLE example_publishable_cancelable_resources (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT,
    canceled_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z'
);
CREATE TABLE example_publish_after_soft_deletion_resources (
    id BIGSERIAL PRIMARY KEY,
    account_id BIGINT,
    canceled_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT '2022-08-12T13:24:24Z'
);
"#;

diesel::table! {
    example_resources (id) {
        id -> BigInt,
        account_id -> Nullable<BigInt>,
        example_publishable_cancelable_resource_id -> Nullable<BigInt>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    example_publishable_resources (id) {
        id -> BigInt,
        account_id -> Nullable<BigInt>,
        example_resource_id -> Nullable<BigInt>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    example_publishable_cancelable_resources (id) {
        id -> BigInt,
        account_id -> Nullable<BigInt>,
        canceled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    example_publish_after_soft_deletion_resources (id) {
        id -> BigInt,
        account_id -> Nullable<BigInt>,
        canceled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    example_resources,
    example_publishable_resources,
    example_publishable_cancelable_resources,
    example_publish_after_soft_deletion_resources,
);

/// A migrated database with the spec tables.
pub(crate) async fn database() -> (TestDb, AsyncPgConnection) {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(SCHEMA).await.unwrap();
    (db, conn)
}

/// Every outbox row, in id order.
pub(crate) async fn outbox_rows(conn: &mut AsyncPgConnection) -> Vec<OutboxRow> {
    use diesel::{QueryDsl, SelectableHelper};
    dionysus_outbox::table.order(dionysus_outbox::id).select(OutboxRow::as_select()).load(conn).await.unwrap()
}

/// `(resource_class, resource_id, event_name, topic, partition_key)` of each row.
pub(crate) fn summary(rows: &[OutboxRow]) -> Vec<(String, String, String, String, Option<String>)> {
    rows.iter()
        .map(|row| {
            (
                row.resource_class.clone(),
                row.resource_id.clone(),
                row.event_name.clone(),
                row.topic.clone(),
                row.partition_key.clone(),
            )
        })
        .collect()
}

/// A row tuple for comparisons.
pub(crate) fn row(
    class: &str,
    id: &str,
    event: &str,
    topic: &str,
    partition_key: Option<&str>,
) -> (String, String, String, String, Option<String>) {
    (class.into(), id.into(), event.into(), topic.into(), partition_key.map(str::to_owned))
}
