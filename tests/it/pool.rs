//! The framework's connection pool (`dionysus::db::pool`).

use std::time::Duration;

use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dionysus_tests::TestDb;

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(diesel::QueryableByName)]
struct Activity {
    #[diesel(sql_type = Text)]
    query: String,
}

async fn backend_pid(conn: &mut AsyncPgConnection) -> i32 {
    diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(conn).await.unwrap().pid
}

/// Taking a connection from the pool costs no round trip (the relay takes one per batch, the
/// consumer one per partition batch): the server saw no test query between two checkouts.
/// A connection the server closed is not handed out again.
#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_is_handed_out_without_a_test_query() {
    let db = TestDb::create().await;
    let pool = db.pool(1);
    let pid = backend_pid(&mut pool.get().await.unwrap()).await;
    drop(pool.get().await.unwrap());
    let mut observer = db.connection().await;
    let last = diesel::sql_query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind::<Integer, _>(pid)
        .get_result::<Activity>(&mut observer)
        .await
        .unwrap()
        .query;
    assert_eq!(last, "SELECT pg_backend_pid() AS pid", "the last statement of the pooled connection");

    diesel::sql_query("SELECT pg_terminate_backend($1)").bind::<Integer, _>(pid).execute(&mut observer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = pool.get().await.unwrap();
    let new_pid = backend_pid(&mut conn).await;
    assert_ne!(new_pid, pid, "a new connection replaced the closed one");
}
