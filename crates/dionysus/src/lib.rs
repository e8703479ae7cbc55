// The README is the crate's front page. Its code blocks are compiled by the test suite as a
// reader would copy them (`tests/it/readme.rs`), not as doc tests.
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
//!
//! ## The crate, module by module
//!
//! Imports point one way: `wire` and `config` at the bottom, then the declarations and the
//! plumbing, then the two halves, which never import each other, then the command line.
//!
//! | module | owns | leaves to others |
//! |---|---|---|
//! | `wire` (internal) | the format shared with dionysus-rb: envelopes, keys, event names, partition key rules, times | what is sent, and when |
//! | [`config`] | [`Config`]: every setting, its default and its environment variable | who reads which setting |
//! | `seal` (internal) | encryption at rest of what outbox rows carry (both halves write such rows) | which rows are sealed |
//! | [`Dionysus`] | the handle: one configuration and one registry, from which every part is built | the parts themselves |
//! | [`registry`] | the declarations the macros collect, and their consistency ([`Registry::validate`]) | the broker and the database |
//! | [`outbox`], [`relay`], [`genesis`], [`respond`], [`serialize`] | the producing half: [`Publishable`], the outbox writer, message planning, the relay, genesis | consuming |
//! | [`consumer`] | the consuming half: the runtime, batches, offsets, dead letters, [`consumer::replica`] tables, handlers ([`Context`]) | producing |
//! | [`checkpoint`] | the checkpoint log of checkpointed handlers: events and failures, listed, retried, deleted ([`checkpoint::Checkpoints`]) | when handlers run |
//! | [`kafka`] | how we talk to the broker: client settings, topic creation and inspection | what is sent |
//! | [`migrate`](mod@migrate) | the framework's own tables | the application's tables |
//! | [`telemetry`] | the `/metrics` + `/health` endpoint, the liveness file, error reports | what "healthy" means for each part |
//! | [`error`] | [`Error`], into which every module's error converts | the errors themselves |
//! | `http` (feature `http`) | the events API and the operations console: routes, authentication, HTML | the data behind them |
//! | `avro` (feature `avro`) | Avro records: schemas, codec, registry framing, registry client | which topics are Avro (the declarations) |
//! | `cli` (feature `cli`) | the `dionysus` command line an application embeds | the work each subcommand starts |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "avro")]
pub mod avro;
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
mod handle;
#[cfg(feature = "http")]
pub mod http;
pub mod kafka;
pub mod migrate;
mod producer;
pub mod registry;
mod schema;
mod seal;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

pub use config::Config;
pub use consumer::{Context, Reply};
pub use error::{Error, Result};
pub use handle::{AlreadyInstalled, Dionysus};
pub use migrate::{copy_migrations, migrate};
#[doc(no_inline)]
pub use outbox::Changeset;
pub use producer::partition_key::IntegerPartitionKey;
pub use producer::publishable::Publishable;
pub use producer::{genesis, outbox, relay, respond, serialize};
pub use registry::{Registry, Topic};

/// Declares a Kafka topic on a unit struct and registers it.
///
/// ```
/// #[dionysus::topic(namespace = "v3", name = "rentals", partition_key = "account_id", partitions = 12)]
/// pub struct Rentals;
///
/// use dionysus::Topic;
/// assert_eq!(Rentals::NAME, "v3_rentals");
/// assert!(dionysus::Registry::global().topic("v3_rentals").is_some());
/// ```
///
/// | key | value | meaning |
/// |---|---|---|
/// | `name` | string, required | name within the namespace |
/// | `namespace` | string | the full name is `<namespace>_<name>` (dionysus-rb's naming) |
/// | `partition_key` | field name (string or identifier) | attribute whose value picks the partition, for publishers that do not name their own; an integer field of each model published with `topic = ThisType` (checked at compile time, see [`Publishable`](derive@Publishable)) |
/// | `partition_key_with` | `path::to::fn` | `fn(&dyn Record) -> Option<String>` computing the partition key of records published on the topic without their own (dionysus-rb's callable partition key); not with `partition_key` |
/// | `partitions` | integer ≥ 1 | expected partition count (checked by `dionysus check`, used when creating the topic) |
/// | `replication_factor` | integer ≥ 1 | used when creating the topic |
/// | `genesis_replica` | `true`/`false`, or the bare flag | also publish everything to `<full name>_genesis` |
/// | `tombstone` | `"json_null"` (default) or `"kafka_null"` | how tombstones are encoded |
///
/// Mistakes (a missing `name`, an unknown key, a value of the wrong type, a character Kafka
/// does not allow) are compile errors pointing at the offending token. What cannot be seen
/// at compile time (the same topic declared twice in different crates) is reported by
/// [`Registry::validate`].
#[doc(inline)]
pub use dionysus_macros::topic;

/// Derives [`Publishable`] for a diesel model (a struct with named fields, `Serialize`,
/// `Selectable`, a single-column integer or text primary key) and registers it.
///
/// `#[publish(...)]`, once per topic:
///
/// | key | value | meaning |
/// |---|---|---|
/// | `topic` | `"v3_rentals"` or a `#[topic]` type | the topic (strings are checked by [`Registry::validate`], types by the compiler) |
/// | `partition_key` | a field name | the partition key attribute: an integer field (checked at compile time) |
/// | `partition_key_with` | `path::to::fn` | `fn(&Model) -> Option<String>` computing the partition key |
/// | `partition_key_to_i` | flag | accept any field type and send Ruby's `to_i` of it, as dionysus-rb does |
/// | `with(A, B)` | publishable models related through `belongs_to` | sideloaded dependencies; their changes republish this model |
/// | `observe(M, columns(a, b), via = "col")` | a publishable model, its fields, optionally this model's key column | republish related records when those columns of `M` change |
/// | `serializer` | a type implementing [`serialize::Serializer`] | replaces the default serializer |
/// | `model_name` | `"Bookings::Fee"` | name on the wire (default: the struct's name) |
///
/// `#[publishable(...)]`, at most once: `model_name`, `soft_delete = "column"` (or `false`;
/// default: soft-deletable when the model has the configured `soft_delete_column`), and the
/// flag `publish_updates_after_soft_delete`. A model that is only a dependency or observed
/// derives `Publishable` without any `#[publish]`.
///
/// **Partition keys, a deliberate deviation from dionysus-rb.** The gem sends an attribute
/// partition key as Ruby's `value.to_i.to_s`: integers unchanged, but a text key such as
/// `"k007"` becomes `"0"`, so every row lands on one partition (and one relay bucket). A field
/// named by `partition_key`, or by the `partition_key` of a topic given as a type, must
/// therefore implement [`IntegerPartitionKey`] (integers, their
/// `Option`s and aliases); anything else is a compile error on the key. Use
/// `partition_key_with` to send the text as is, or `partition_key_to_i` to keep the gem's
/// rule byte for byte, e.g. when a Ruby producer writes the same topic.
///
/// ```
/// use diesel::prelude::*;
///
/// diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, code -> Text } }
///
/// #[derive(Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
/// #[diesel(table_name = rentals)]
/// #[publish(topic = "v3_rentals", partition_key = account_id)]
/// #[publish(topic = "v3_rentals_by_code", partition_key_with = code_key)]
/// #[publish(topic = "v3_rentals_ruby", partition_key = code, partition_key_to_i)]
/// pub struct Rental {
///     pub id: i64,
///     pub account_id: i64,
///     pub code: String,
/// }
///
/// fn code_key(rental: &Rental) -> Option<String> {
///     Some(rental.code.clone())
/// }
/// ```
///
/// A mistake in these attributes is one compile error on the offending token; the derive
/// then still emits a placeholder impl, so uses of the model add no errors of their own.
#[doc(inline)]
pub use dionysus_macros::Publishable;

/// Describes a diesel struct as a *replica* of another service's model, kept in sync by
/// [`consumer::Consumer`].
///
/// ```
/// use chrono::{DateTime, Utc};
///
/// diesel::table! {
///     replicated_rentals (synced_id) {
///         synced_id -> BigInt,
///         synced_created_at -> Nullable<Timestamptz>,
///         synced_updated_at -> Nullable<Timestamptz>,
///         synced_canceled_at -> Nullable<Timestamptz>,
///         name -> Nullable<Text>,
///         price -> Nullable<Double>,
///         synced_data -> Nullable<Jsonb>,
///         local_note -> Nullable<Text>,
///     }
/// }
///
/// #[derive(dionysus::Consume)]
/// #[diesel(table_name = replicated_rentals)]
/// #[consume(topic = "v3_rentals", model = "Rental", soft_delete = "synced_canceled_at")]
/// pub struct ReplicatedRental {
///     pub synced_id: i64,
///     pub synced_created_at: Option<DateTime<Utc>>,
///     pub synced_updated_at: Option<DateTime<Utc>>,
///     pub synced_canceled_at: Option<DateTime<Utc>>,
///     pub name: Option<String>,
///     #[consume(from = "daily_price")]
///     pub price: Option<f64>,
///     pub synced_data: Option<serde_json::Value>,
///     #[consume(skip)]
///     pub local_note: Option<String>,
/// }
///
/// use dionysus::consumer::replica::Replica;
/// assert_eq!(ReplicatedRental::DESCRIPTOR.table, "replicated_rentals");
/// assert!(dionysus::consumer::replica::Replicas::global().find("rentals").is_some());
/// ```
///
/// On the struct, `#[consume(...)]` takes:
///
/// | key | value | meaning |
/// |---|---|---|
/// | `topic` | string, required | the topic the records come from (checked by [`Registry::validate`]) |
/// | `model` | string, required | the source model name on the wire (`model_name`), also matched against relationship names (`bookings` → `Booking`) |
/// | `soft_delete` | field name | column set by `_destroyed` events instead of deleting the row; payloads without `canceled_at` clear it (restore). Default: the column of the configured `soft_deleted_at_attribute` (`synced_canceled_at`), if any |
/// | `strategy` | `"cancel"` (default with a soft-delete column) or `"destroy"` | what a `_destroyed` event without `canceled_at` does: set the soft-delete column, or delete the row |
/// | `cancel` | `set(column = "status", value = "cancelled")` | a cancel strategy of the model's own (C-13): a `_destroyed` event keeps the row and sets the column to the value (a string, an integer or a boolean); no soft-delete column needed |
/// | `synced_id`, `synced_created_at`, `synced_updated_at` | field name | the column holding the source's id / `created_at` / `updated_at` (C-11) |
/// | `synced_data` | field name | jsonb column keeping the whole deserialized payload |
///
/// On fields: `#[consume(from = "daily_price")]` takes the column's value from another
/// payload attribute; `#[consume(skip)]` leaves a column to the application;
/// `#[consume(synced_id)]`, `#[consume(synced_updated_at)]` (and `synced_created_at`,
/// `soft_delete`, `synced_data`) name the field's column for that role. The table is the
/// struct's `#[diesel(table_name = ...)]`, which must have a unique index on the synced id.
///
/// Roles the declaration does not name take the column of the configured name
/// ([`config::ConsumerConfig`]`::synced_id_attribute` and the others, defaults `synced_id`,
/// `synced_created_at`, `synced_updated_at`, `synced_canceled_at`, `synced_data`) when the
/// table has one; building a consumer fails when no column holds the synced id. As in
/// dionysus-rb, a timestamp column whose name is not the attribute's own is set to `NULL`
/// when the payload lacks the key. The timestamp guard compares with the `synced_updated_at`
/// column, or with `synced_created_at` when the model has none (C-10).
///
/// A column's kind (what payload values it accepts) and nullability come from its field's
/// type through [`consumer::replica::ColumnType`]: integers, floats, `bool`, `String`,
/// `DateTime<Utc>`, `NaiveDateTime`, `NaiveDate`, `serde_json::Value`, `Uuid` (and
/// `BigDecimal` with the `bigdecimal` feature), a `Vec` of these, an `Option` of any; type
/// aliases work.
///
/// Mistakes are compile errors on the offending token: a missing required key, an unknown key
/// (with a suggestion), a field type that cannot hold payload values, a role or `cancel =
/// set(column = ...)` naming no field, a role named twice, a field whose column the diesel
/// table lacks.
#[doc(inline)]
pub use dionysus_macros::Consume;

/// Registers an async function as a handler of one event of a topic. It runs after the batch
/// holding the event is committed, or, with `in_transaction`, inside the batch's transaction.
/// Write it `#[dionysus::consume(...)]`, or `#[consume(...)]` with the prelude imported: on a
/// function it is this attribute, on a `#[derive(Consume)]` struct the derive's helper, so
/// both live in one module.
///
/// ```
/// use dionysus::Context;
///
/// #[derive(serde::Deserialize)]
/// struct Rental {
///     synced_id: i64,
/// }
///
/// #[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
/// async fn one(ctx: &mut Context<'_>, rental: Rental) -> dionysus::Result<()> {
///     let _ = (ctx.topic(), ctx.partition(), ctx.offset(), rental.synced_id);
///     Ok(())
/// }
///
/// #[dionysus::consume(topic = "v3_rentals", event = "rental_destroyed", in_transaction)]
/// async fn all(ctx: &mut Context<'_>, rentals: Vec<Rental>) -> dionysus::Result<()> {
///     let _ = (ctx.conn(), rentals.len());
///     Ok(())
/// }
///
/// #[dionysus::consume(topic = "v3_rentals", event = "*")]
/// async fn untyped(event: &dionysus::consumer::ConsumedEvent) -> dionysus::Result<()> {
///     for change in &event.local_changes {
///         let _ = (&change.model, &change.synced_id, &change.changes);
///     }
///     Ok(())
/// }
///
/// assert!(dionysus::consumer::handlers().any(|h| h.matches("v3_rentals", "rental_updated")));
/// ```
///
/// | key | value | meaning |
/// |---|---|---|
/// | `topic` | string, required | the topic of the events |
/// | `event` | string, required | the event name, or `"*"` for every event of the topic |
/// | `in_transaction` | flag | run inside the batch's transaction: the handler's writes through [`Context::conn`] commit with the replica rows and the stored offset; its error rolls the batch back, and the message it fails on is dead-lettered (`handler_failed`, or `handler_input_invalid` when a record does not deserialize into its input) |
/// | `checkpoint` | flag | keep the [`checkpoint`] log: runs inside the batch's transaction (implies `in_transaction`); an event acknowledged with [`Context::ack`] (or a returned [`checkpoint::Ack`]) is saved with the handler's writes, an event already saved by this group is skipped; a failure follows `on_failure` |
/// | `on_failure` | `"record"` (default), `"dead_letter"` or `"block"` | with `checkpoint`: what the event becomes when the handler fails every try ([`checkpoint::FailurePolicy`]; default: the consumer's `checkpoint_on_failure`) |
///
/// The function takes `ctx: &mut Context<'_>` and optionally a record (`rental: T`, called
/// once per record) or every record (`rentals: Vec<T>`) of the event, `T: serde::Deserialize`
/// read from each record's attributes (`synced_id`, `synced_updated_at`, …, the other
/// attributes as sent); or, untyped, `event: &consumer::ConsumedEvent`. It returns
/// `Result<(), E>` for any error type `E` (`dionysus::Error`, a std error, `anyhow::Error`),
/// or, to acknowledge a checkpointed event, `Result<checkpoint::Ack, E>`.
/// After the commit, a failure or a record that does not fit is logged and counted in
/// `dionysus_consumer_handler_errors_total`; the batch stays committed.
#[doc(inline)]
pub use dionysus_macros::consume;

/// The names most applications need, in one import.
///
/// `use dionysus::prelude::*;` brings the derives (`#[derive(Publishable, Consume)]`, with the
/// `Publishable` trait; their `#[publish(...)]`, `#[publishable(...)]` and `#[consume(...)]`
/// helpers come with them), the attributes `#[topic(...)]` and `#[consume(...)]` (on handler
/// functions), the handle and the types most code names.
pub mod prelude {
    #[doc(no_inline)]
    pub use crate::config::Config;
    #[doc(no_inline)]
    pub use crate::consumer::{ConsumedEvent, Consumer, Context, Reply};
    #[doc(no_inline)]
    pub use crate::registry::{Registry, Topic};
    #[doc(no_inline)]
    pub use crate::{consume, topic, Changeset, Consume, Dionysus, Publishable};
}

/// Items the macros' generated code refers to (`::dionysus::__private::…`), and the crates
/// it needs, so users add no dependency for an expansion. Not a public API: it may change in
/// any release.
#[doc(hidden)]
pub mod __private {
    pub use diesel;
    pub use diesel_async;
    pub use inventory;
    pub use serde_json;

    pub use crate::consumer::cascade::{CascadeDeclaration, CascadeEntry};
    pub use crate::consumer::handler::{
        records_as, Context, FailurePolicy, HandlerDeclaration, HandlerEntry, HandlerError, HandlerFuture,
        HandlerOutput,
    };
    pub use crate::consumer::replica::column_type::{payload_column, ColumnKind, ColumnType, PayloadColumn};
    pub use crate::consumer::replica::descriptor::{
        CancelValue, Column, DestroyStrategy, NamedRoles, Replica, ReplicaDescriptor, ReplicaEntry,
    };
    pub use crate::consumer::ConsumedEvent;
    pub use crate::producer::partition_key::{
        integer_partition_key, topic_partition_key, FieldFound, FieldMissing, FieldName, FieldOf, FieldProbe, NoField,
    };
    pub use crate::producer::publishable::{
        attribute_value, load_erased, model_entry, publications_of, relation, NotRelated, OtherBelongsToOwner,
        OwnerBelongsToOther, PrimaryKeyType, Publishable, RelationProbe,
    };
    pub use crate::producer::serialize::{serialize_erased, DefaultSerializer};
    pub use crate::registry::model::{
        BoxFuture, ColumnIn, Dependency, IdKind, LoadSource, ModelEntry, Observer, PartitionKeySource, Publication,
        Record, RecordFilter, Relation, SoftDelete,
    };
    pub use crate::registry::{
        KeyConfig, ModelRegistration, PartitionKeyWith, SchemaEntry, Tombstone, Topic, TopicDeclaration, TopicEntry,
        TopicFormat, TopicReference, TopicReferenceEntry,
    };
    /// What `assert_published!` and `assert_not_published!` build.
    #[cfg(feature = "testing")]
    pub use crate::testing::Expected;

    /// Boxes a handler's future (used by `#[dionysus::consume]` on functions).
    pub fn box_handler<'a, F>(future: F) -> HandlerFuture<'a>
    where
        F: ::core::future::Future<Output = ::core::result::Result<(), HandlerError>> + Send + 'a,
    {
        ::std::boxed::Box::pin(future)
    }
}

/// What the project's own integration tests, benchmarks, fault suite and tools reach beneath
/// the public API: the wire rules, the planners, the SQL of the replica writer, the framework
/// schema, the batch entry points of the consumer. Not a public API: it may change in any
/// release.
///
/// A hidden module rather than a `test-support` feature: the test package, its benchmarks and
/// its fault-injection binaries all need it, and items reached only through a feature would
/// be unreachable (and warned about) in every build without it. Applications testing their
/// own code use the public API.
#[doc(hidden)]
pub mod __internals {
    /// The wire format shared with dionysus-rb.
    pub mod wire {
        pub use crate::wire::{envelope, naming, partition, record, time};
    }

    /// The framework's tables as diesel sees them.
    pub mod schema {
        pub use crate::schema::*;
    }

    /// The producing side's internals.
    pub mod producer {
        pub use crate::producer::outbox::NewOutboxRow;
        pub use crate::producer::publishable::partition_key;

        /// Outbox rows to messages.
        pub mod plan {
            pub use crate::producer::plan::*;
        }
        /// The relay's batch steps with a given clock and outcomes.
        pub mod simulation {
            pub use crate::producer::relay::simulation::*;
        }
    }

    /// The consumer's batch entry point.
    pub mod consumer {
        pub use crate::consumer::apply::{AfterCommit, AfterCommitHook, BatchOutcome};
        pub use crate::consumer::batch::{lock_name, DeadLetter, InboundMessage};
    }
}
