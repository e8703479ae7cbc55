//! The framework migrations on a fresh database: applied, inspected, re-applied (no-op),
//! reverted.

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use dionysus_tests::TestDb;

#[derive(QueryableByName, Debug, PartialEq)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn table_columns(db: &TestDb) -> Vec<Column> {
    let mut conn = db.connection().await;
    diesel::sql_query(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name LIKE 'dionysus%' ORDER BY table_name, ordinal_position",
    )
    .load(&mut conn)
    .await
    .unwrap()
}

fn columns_of<'a>(columns: &'a [Column], table: &str) -> Vec<&'a str> {
    columns.iter().filter(|c| c.table_name == table).map(|c| c.column_name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_create_the_framework_tables_and_revert_cleanly() {
    let db = TestDb::create().await;

    let applied = dionysus::migrate(&db.url).await.unwrap();
    assert_eq!(applied.len(), dionysus::migrate::MIGRATIONS.len());
    assert!(dionysus::migrate::pending(&db.url).await.unwrap().is_empty());
    assert!(dionysus::migrate(&db.url).await.unwrap().is_empty(), "a second run applies nothing");

    let columns = table_columns(&db).await;
    assert_eq!(
        columns_of(&columns, "dionysus_outbox"),
        [
            "id",
            "resource_class",
            "resource_id",
            "event_name",
            "topic",
            "partition_key",
            "changeset",
            "published_at",
            "failed_at",
            "retry_at",
            "error_class",
            "error_message",
            "attempts",
            "created_at",
            "updated_at",
            "ordering_key",
            "ordering_bucket",
            "message",
            "message_key",
            "encryption_key_id",
        ]
    );
    let changeset = columns.iter().find(|c| c.table_name == "dionysus_outbox" && c.column_name == "changeset").unwrap();
    assert_eq!(changeset.data_type, "jsonb");
    assert_eq!(
        columns_of(&columns, "dionysus_consumer_offsets"),
        ["group_id", "topic", "partition", "next_offset", "updated_at"]
    );
    assert_eq!(
        columns_of(&columns, "dionysus_events"),
        [
            "id",
            "topic",
            "group_id",
            "entity_id",
            "event_time",
            "event_type",
            "event_version",
            "checksum",
            "payload",
            "created_at",
            "listener",
            "key",
            "partition",
            "offset"
        ]
    );
    for column in [
        "checksum",
        "payload",
        "metadata",
        "error_class",
        "error_message",
        "error_backtrace",
        "listener",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    ] {
        assert!(columns_of(&columns, "dionysus_event_failures").contains(&column), "failures table lacks {column}");
    }
    for column in ["model", "topic", "window_from", "window_to", "cursor", "status", "started_at", "finished_at"] {
        assert!(columns_of(&columns, "dionysus_genesis_runs").contains(&column), "genesis runs table lacks {column}");
    }

    assert_eq!(columns_of(&columns, "dionysus_relay_leases"), ["bucket", "owner", "lease_until"]);
    assert_eq!(columns_of(&columns, "dionysus_relay_workers"), ["worker_id", "heartbeat_at", "idle"]);
    let mut conn = db.connection().await;
    let buckets: Count =
        diesel::sql_query("SELECT count(*) AS count FROM dionysus_relay_leases").get_result(&mut conn).await.unwrap();
    assert_eq!(buckets.count, 64, "one lease row per ordering bucket");
    let pending_index: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_indexes WHERE tablename = 'dionysus_outbox' \
         AND indexname = 'dionysus_outbox_pending_idx' AND indexdef LIKE '%WHERE ((published_at IS NULL) AND (failed_at IS NULL))%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(pending_index.count, 1, "the relay's partial index exists");
    let vacuumed_often: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_class WHERE relname = 'dionysus_outbox' \
         AND 'autovacuum_vacuum_scale_factor=0.01' = ANY(reloptions) AND 'autovacuum_vacuum_cost_delay=0' = ANY(reloptions)",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(vacuumed_often.count, 1, "the outbox is vacuumed after 1% of dead rows, without pauses");

    // The outbox accepts a row with only the required columns and fills the defaults.
    diesel::sql_query(
        "INSERT INTO dionysus_outbox (resource_class, resource_id, event_name, topic) \
         VALUES ('Rental', '1', 'rental_created', 'v3_rentals')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // Duplicate checksums are rejected within a group and handler, accepted across groups.
    let insert_event =
        |group: &str| format!("INSERT INTO dionysus_events (topic, group_id, checksum) VALUES ('t', '{group}', 'abc')");
    diesel::sql_query(insert_event("g1")).execute(&mut conn).await.unwrap();
    diesel::sql_query(insert_event("g2")).execute(&mut conn).await.unwrap();
    assert!(diesel::sql_query(insert_event("g1")).execute(&mut conn).await.is_err());
    drop(conn);

    let reverted = dionysus::migrate::revert_all(&db.url).await.unwrap();
    assert_eq!(reverted.len(), dionysus::migrate::MIGRATIONS.len());
    assert!(table_columns(&db).await.is_empty(), "every framework table is gone");
    assert_eq!(dionysus::migrate::pending(&db.url).await.unwrap().len(), dionysus::migrate::MIGRATIONS.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_an_unreachable_database_names_the_url() {
    let error = dionysus::migrate("postgres://postgres:secret@127.0.0.1:1/nothing").await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:1/nothing"), "{text}");
    assert!(!text.contains("secret"));
}
