//! One configuration for every part: settings given only through the environment change what
//! the documented write path (`dionysus::outbox::created/updated_from/...`, no handle built by
//! the application) does. Each case runs the write path in a child process of this test binary
//! (`env_child`), because the global handle is read from the environment once per process.

use std::process::Command;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus_tests::TestDb;
use futures_util::StreamExt;
use serde::Serialize;

diesel::table! {
    env_accounts (id) {
        id -> BigInt,
        name -> Text,
    }
}

diesel::table! {
    env_things (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        env_account_id -> BigInt,
        deleted_at -> Nullable<Timestamptz>,
        name -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(env_accounts, env_things);

const SCHEMA: &str = "
CREATE TABLE env_accounts (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE env_things (id BIGSERIAL PRIMARY KEY, tenant_id BIGINT NOT NULL, env_account_id BIGINT NOT NULL,
                         deleted_at TIMESTAMPTZ, name TEXT NOT NULL);
INSERT INTO env_accounts (id, name) VALUES (1, 'first');
INSERT INTO env_things (tenant_id, env_account_id, name) VALUES (7, 1, 'a'), (7, 1, 'b');
";

#[dionysus::topic(name = "env_things")]
pub struct EnvThings;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = env_accounts)]
pub struct EnvAccount {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = env_things, belongs_to(EnvAccount))]
#[publish(topic = "env_things", observe(EnvAccount, columns(name)))]
pub struct EnvThing {
    pub id: i64,
    pub tenant_id: i64,
    pub env_account_id: i64,
    pub deleted_at: Option<DateTime<Utc>>,
    pub name: String,
}

const SCENARIO: &str = "DIONYSUS_TEST_ENV_SCENARIO";

/// The write path of one scenario, in a child process whose environment holds the setting.
#[test]
#[ignore = "runs in a child process started by the tests of this module"]
fn env_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let url = std::env::var("DATABASE_URL").unwrap();
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        conn.transaction::<_, anyhow::Error, _>(async move |tx| {
            match scenario.as_str() {
                "create" => {
                    let thing: EnvThing =
                        env_things::table.find(1).select(EnvThing::as_select()).get_result(tx).await?;
                    dionysus::outbox::created(tx, &thing).await?;
                }
                "soft_delete" => {
                    let before: EnvThing =
                        env_things::table.find(1).select(EnvThing::as_select()).get_result(tx).await?;
                    let after: EnvThing = diesel::update(env_things::table.find(1))
                        .set(env_things::deleted_at.eq(Some(Utc::now())))
                        .returning(EnvThing::as_returning())
                        .get_result(tx)
                        .await?;
                    dionysus::outbox::updated_from(tx, &before, &after).await?;
                }
                "observe" => {
                    let before: EnvAccount =
                        env_accounts::table.find(1).select(EnvAccount::as_select()).get_result(tx).await?;
                    let after: EnvAccount = diesel::update(env_accounts::table.find(1))
                        .set(env_accounts::name.eq("renamed"))
                        .returning(EnvAccount::as_returning())
                        .get_result(tx)
                        .await?;
                    dionysus::outbox::updated_from(tx, &before, &after).await?;
                }
                other => panic!("unknown scenario {other}"),
            }
            Ok(())
        })
        .await
        .unwrap();
    });
}

/// Runs `scenario` in a child process with `DATABASE_URL` and `vars`; the child must succeed.
fn run_child(scenario: &str, database_url: &str, vars: &[(&str, &str)]) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "config_env::env_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .env("DATABASE_URL", database_url);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DIONYSUS_") && name != SCENARIO) {
        command.env_remove(name);
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "child {scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn database() -> (TestDb, AsyncPgConnection) {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(SCHEMA).await.unwrap();
    (db, conn)
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    event_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    topic: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    partition_key: Option<String>,
}

async fn rows(conn: &mut AsyncPgConnection) -> Vec<Row> {
    diesel::sql_query("SELECT event_name, topic, partition_key FROM dionysus_outbox ORDER BY id")
        .load(conn)
        .await
        .unwrap()
}

fn row(event_name: &str, topic: &str, partition_key: Option<&str>) -> Row {
    Row { event_name: event_name.to_owned(), topic: topic.to_owned(), partition_key: partition_key.map(str::to_owned) }
}

#[tokio::test(flavor = "multi_thread")]
async fn default_partition_key_from_the_environment_is_used_by_the_writer() {
    let (db, mut conn) = database().await;
    run_child("create", &db.url, &[]);
    // The default attribute, `account_id`, is not a field: no partition key.
    assert_eq!(rows(&mut conn).await, [row("env_thing_created", "env_things", None)]);
    conn.batch_execute("DELETE FROM dionysus_outbox").await.unwrap();
    run_child("create", &db.url, &[("DIONYSUS_DEFAULT_PARTITION_KEY", "tenant_id")]);
    assert_eq!(rows(&mut conn).await, [row("env_thing_created", "env_things", Some("7"))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_delete_column_from_the_environment_is_used_by_the_writer() {
    let (db, mut conn) = database().await;
    run_child("soft_delete", &db.url, &[]);
    assert_eq!(rows(&mut conn).await, [row("env_thing_updated", "env_things", None)]);
    conn.batch_execute("DELETE FROM dionysus_outbox; UPDATE env_things SET deleted_at = NULL").await.unwrap();
    run_child("soft_delete", &db.url, &[("DIONYSUS_SOFT_DELETE_COLUMN", "deleted_at")]);
    assert_eq!(rows(&mut conn).await, [row("env_thing_destroyed", "env_things", None)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactional_outbox_can_be_disabled_from_the_environment() {
    let (db, mut conn) = database().await;
    run_child("create", &db.url, &[("DIONYSUS_TRANSACTIONAL_OUTBOX_ENABLED", "false")]);
    assert_eq!(rows(&mut conn).await, []);
    run_child("create", &db.url, &[("DIONYSUS_TRANSACTIONAL_OUTBOX_ENABLED", "true")]);
    assert_eq!(rows(&mut conn).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn observers_inline_maximum_from_the_environment_is_used_by_the_writer() {
    let (db, mut conn) = database().await;
    run_child("observe", &db.url, &[]);
    let inline = rows(&mut conn).await;
    assert_eq!(inline, [row("env_thing_updated", "env_things", None), row("env_thing_updated", "env_things", None)]);
    conn.batch_execute("DELETE FROM dionysus_outbox; UPDATE env_accounts SET name = 'first'").await.unwrap();
    run_child("observe", &db.url, &[("DIONYSUS_OBSERVERS_INLINE_MAXIMUM_SIZE", "1")]);
    assert_eq!(rows(&mut conn).await, [row("env_account_updated", dionysus::registry::OBSERVER_TOPIC, None)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_after_commit_from_the_environment_notifies_the_relay() {
    let (db, _conn) = database().await;
    let mut listener = db.connection().await;
    diesel::sql_query("LISTEN dionysus_outbox").execute(&mut listener).await.unwrap();
    let mut notifications = std::pin::pin!(listener.notifications_stream());

    run_child("create", &db.url, &[]);
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(500), notifications.next()).await;
    assert!(quiet.is_err(), "no notification without the setting: {quiet:?}");

    run_child("create", &db.url, &[("DIONYSUS_PUBLISH_AFTER_COMMIT", "true")]);
    let notified = tokio::time::timeout(std::time::Duration::from_secs(5), notifications.next()).await;
    assert!(matches!(notified, Ok(Some(Ok(_)))), "the committed write notified the relay: {notified:?}");
}
