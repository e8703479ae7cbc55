//! Replicates one table: keeps `replicated_notes` in sync with the notes `examples/publish`
//! publishes on `example_notes`, and prints each new note, until Ctrl-C.
//!
//! Run with (PostgreSQL and a broker running, the database created): `DATABASE_URL=…
//! DIONYSUS_SEED_BROKER=127.0.0.1:9092 cargo run -p dionysus-example-replicate`

#![allow(clippy::print_stdout, reason = "an example reports to its user on stdout")]

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use dionysus::{Context, Dionysus};
use tokio_util::sync::CancellationToken;

mod schema {
    diesel::table! { replicated_notes (synced_id) { synced_id -> BigInt, account_id -> BigInt, body -> Text } }
}
use schema::replicated_notes;

/// The replica of another service's `Note`; `synced_id` holds its id.
#[derive(dionysus::Consume, serde::Deserialize)]
#[diesel(table_name = replicated_notes)]
#[consume(topic = "example_notes", model = "Note")]
pub struct ReplicatedNote {
    synced_id: i64,
    account_id: i64,
    body: String,
}

/// Runs once per new note, after its batch is committed.
#[dionysus::consume(topic = "example_notes", event = "note_created")]
async fn show(_ctx: &mut Context<'_>, note: ReplicatedNote) -> dionysus::Result<()> {
    println!("note {} of account {}: {}", note.synced_id, note.account_id, note.body);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dionysus = Dionysus::from_env()?;
    let url = &dionysus.config().database_url;
    dionysus::migrate(url).await?; // the consumer's offsets table and the others
    let mut conn = AsyncPgConnection::establish(url).await?;
    // What `dionysus replica-ddl` prints for `ReplicatedNote`.
    conn.batch_execute("CREATE TABLE IF NOT EXISTS replicated_notes (synced_id bigint PRIMARY KEY, account_id bigint NOT NULL, body text NOT NULL)")
        .await?;

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    dionysus.consumer().build()?.run(shutdown).await?;
    Ok(())
}
