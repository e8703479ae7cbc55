//! The testing kit (feature `testing`): what an application's own tests need to check that
//! its models publish what they should and its replicas take in what they are sent — with
//! PostgreSQL as the only service.
//!
//! * **A model publishes**: inside the test's transaction, after the application's write,
//!   [`published`] returns what the relay would send for the outbox rows written so far —
//!   topic, key, partition key, event and the exact value, built by the relay's own code — and
//!   [`assert_published!`], [`assert_not_published!`] and [`Published::on_topic`] check it.
//! * **The publishable contract**: [`publishable_contract`] creates, updates, soft-deletes,
//!   restores and destroys a record through the application's own functions
//!   ([`PublishableFixture`]) and checks the outbox rows each step writes.
//! * **A replica takes in an envelope**: [`envelope`] builds the message a producer sends
//!   (from JSON, or [`envelope_of`] a record); [`consume`] runs messages through the
//!   consumer's batch path and returns the events with their local changes, the dead letters
//!   with their reasons and the handler calls; [`consume_invalid`] returns why a message is
//!   rejected.
//! * **End to end without a broker**: [`EmbeddedKafka`] starts librdkafka's mock cluster in
//!   the process with the declared topics, for the real relay and the real consumer (see its
//!   module for what the mock cluster cannot do).
//! * **A schema registry** (with feature `avro`): [`TestRegistry`] serves the part of the
//!   Confluent REST API dionysus uses on 127.0.0.1; no real registry is needed.
//!
//! Isolation: [`TestDatabase`] gives each test a database of its own, copied from a template
//! with the framework migrations (and the application's schema), dropped at the end;
//! [`unique_name`] names topics and groups on a shared broker. To write without publishing
//! (seeds, data migrations), see [`outbox::Suppress`](crate::outbox::Suppress), which is not
//! part of this feature.
//!
//! ```no_run
//! use dionysus::testing::{self, assert_published, EmbeddedKafka, TestDatabase};
//! # diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }
//! # #[derive(diesel::Queryable, diesel::Selectable, serde::Serialize, dionysus::Publishable)]
//! # #[diesel(table_name = rentals)]
//! # #[publish(topic = "v3_rentals", partition_key = account_id)]
//! # struct Rental { id: i64, account_id: i64 }
//! # async fn create_rental(conn: &mut diesel_async::AsyncPgConnection) -> dionysus::Result<Rental> { todo!() }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = TestDatabase::builder().sql("CREATE TABLE rentals (id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL)").create().await?;
//! let mut conn = db.connection().await?;
//! let rental = create_rental(&mut conn).await?;
//! let sent = testing::published(&mut conn).await?;
//! assert_published!(sent, Rental, "rental_created", topic = "v3_rentals", id = rental.id);
//!
//! let kafka = EmbeddedKafka::start()?;
//! let handle = dionysus::Dionysus::new(dionysus::Config::default()).configure(|config| {
//!     db.configure(config);
//!     kafka.configure(config);
//! });
//! let relay = handle.relay().build()?;
//! # let _ = relay;
//! # Ok(())
//! # }
//! ```
//!
//! This module owns the helpers; what they run — the relay's planning, the consumer's
//! batches, the migrations — stays the framework's own code.

mod consume;
mod contract;
mod database;
mod embedded;
mod published;
#[cfg(feature = "avro")]
mod registry;

pub use consume::{consume, consume_invalid, envelope, envelope_of, ConsumeError, Consumed, TestMessage};
pub use contract::{
    publishable_contract, Contract, ContractError, ContractReport, FixtureError, PublishableFixture, Step,
    StepNotProvided,
};
pub use database::{unique_name, TestDatabase, TestDatabaseBuilder, TestDatabaseError};
pub use embedded::{EmbeddedKafka, EmbeddedKafkaBuilder, EmbeddedKafkaError};
pub use published::{
    published, published_with, Expected, Published, PublishedError, PublishedMessage, SkipReason, SkippedRow,
};
#[cfg(feature = "avro")]
pub use registry::TestRegistry;

#[doc(inline)]
pub use crate::__dionysus_assert_not_published as assert_not_published;
#[doc(inline)]
pub use crate::__dionysus_assert_published as assert_published;
pub use crate::consumer::calls::{HandlerCall, HandlerFailure};
