//! The rentals example: two services that share nothing but the broker.
//!
//! * [`producer`] — a rentals service: accounts, rentals, bookings and bookings fees in its
//!   own database, published through the transactional outbox (`with(...)` sideloads,
//!   `observe(...)`, soft delete).
//! * [`consumer`] — another service keeping replica tables of those records in a second
//!   database, with `#[derive(Consume)]` models and a `#[dionysus::consume]` handler.
//!
//! Run with: `scripts/demo` (starts a broker the way the tests do), or, with a broker and
//! PostgreSQL running, `DIONYSUS_SEED_BROKER=127.0.0.1:9092 cargo run -p dionysus-example-rentals`.
//!
//! Without arguments (or with `demo`) the binary runs the scripted demo in one process: it
//! creates both databases, the topics, starts the relay and the consumer, makes a series of
//! changes, runs a genesis and checks that the replica matches the source. Any other
//! arguments go to the dionysus command line, with this binary's declarations linked in —
//! which is how an application embeds it:
//!
//! ```text
//! cargo run -p dionysus-example-rentals -- --help
//! cargo run -p dionysus-example-rentals -- --database-url postgres://postgres@127.0.0.1/dionysus_rentals_producer relay
//! cargo run -p dionysus-example-rentals -- --database-url postgres://postgres@127.0.0.1/dionysus_rentals_consumer consume
//! ```

#![allow(clippy::print_stdout, reason = "a demo reports to its user on stdout")]

pub mod compare;
pub mod consumer;
pub mod demo;
pub mod producer;
pub mod setup;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("demo") => demo::run().await,
        Some(_) => dionysus::cli::run().await,
    }
}
