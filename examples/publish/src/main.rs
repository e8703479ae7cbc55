//! Publishes one model: a note is written with its outbox row in one transaction, then the
//! relay publishes it to `example_notes` (`examples/replicate` keeps a replica of it).
//!
//! Run with (PostgreSQL and a broker running, the database created): `DATABASE_URL=…
//! DIONYSUS_SEED_BROKER=127.0.0.1:9092 cargo run -p dionysus-example-publish`

#![allow(clippy::print_stdout, reason = "an example reports to its user on stdout")]

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::Dionysus;

mod schema {
    diesel::table! { notes (id) { id -> BigInt, account_id -> BigInt, body -> Text } }
}
use schema::notes;

/// The topic `example_notes`, keyed by account.
#[dionysus::topic(namespace = "example", name = "notes", partition_key = "account_id")]
pub struct Notes;

/// A note, published on [`Notes`].
#[derive(Queryable, Selectable, Identifiable, serde::Serialize, dionysus::Publishable)]
#[diesel(table_name = notes)]
#[publish(topic = Notes)]
pub struct Note {
    id: i64,
    account_id: i64,
    body: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dionysus = Dionysus::from_env()?;
    let url = &dionysus.config().database_url;
    dionysus::migrate(url).await?; // the outbox and the other framework tables
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, account_id bigint NOT NULL, body text NOT NULL)",
    )
    .await?;

    let outbox = dionysus.outbox();
    let note = conn
        .transaction::<_, dionysus::Error, _>(async |tx| {
            let note: Note = diesel::insert_into(notes::table)
                .values((notes::account_id.eq(7), notes::body.eq("hello")))
                .returning(Note::as_returning())
                .get_result(tx)
                .await?;
            outbox.created(tx, &note).await?; // `note_created`, committed with the note
            Ok(note)
        })
        .await?;
    println!("note {} written with its outbox row", note.id);

    // A service runs the relay until SIGTERM (`.run(shutdown)`); this one drains and stops.
    let report = dionysus.relay().auto_create_topics(true).build()?.drain().await?;
    println!("published {} message(s)", report.published);
    Ok(())
}
