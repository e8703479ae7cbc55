//! The rentals example: two services that share nothing but the broker.
//!
//! * [`producer`] — a rentals service: accounts, rentals, bookings and bookings fees in its
//!   own database, published through the transactional outbox (`with(...)` sideloads,
//!   `observe(...)`, soft delete).
//! * [`consumer`] — another service keeping replica tables of those records in a second
//!   database, with `#[derive(Consume)]` models and a `#[dionysus::consume]` handler.
//! * [`fixtures`] — the producer's fixture for the publishable contract of the testing kit,
//!   used by the example's own tests (`tests/kit.rs`), which show how an application tests
//!   itself with `dionysus::testing`.
//! * [`demo`] — the scripted demo the binary runs.
//!
//! Run with: `scripts/demo` (starts a broker the way the tests do), `scripts/demo --embedded`
//! (an embedded Kafka cluster in the process: only PostgreSQL needed), or, with a broker and
//! PostgreSQL running, `DIONYSUS_SEED_BROKER=127.0.0.1:9092 cargo run -p dionysus-example-rentals`.

#![allow(clippy::print_stdout, reason = "a demo reports to its user on stdout")]

pub mod compare;
pub mod consumer;
pub mod demo;
pub mod fixtures;
pub mod producer;
pub mod setup;
