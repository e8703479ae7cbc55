#![doc = include_str!("../../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod db;
pub mod envelope;
pub mod error;
pub mod genesis;
pub mod migrate;
pub mod naming;
pub mod outbox;
pub mod publishable;
pub mod registry;
pub mod relay;
pub mod schema;
mod sender;
pub mod serialize;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use migrate::{copy_migrations, migrate};
pub use outbox::Changeset;
pub use publishable::Publishable;
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
/// | `partition_key` | field name (string or identifier) | attribute whose value picks the partition, for publishers that do not name their own |
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
/// | `partition_key` | a field name | the partition key attribute (checked at compile time) |
/// | `partition_key_with` | `path::to::fn` | `fn(&Model) -> Option<String>` computing the partition key |
/// | `with(A, B)` | publishable models related through `belongs_to` | sideloaded dependencies; their changes republish this model |
/// | `observe(M, columns(a, b), via = "col")` | a publishable model, its fields, optionally this model's key column | republish related records when those columns of `M` change |
/// | `serializer` | a type implementing [`serialize::Serializer`] | replaces the default serializer |
/// | `model_name` | `"Bookings::Fee"` | name on the wire (default: the struct's name) |
///
/// `#[publishable(...)]`, at most once: `model_name`, `soft_delete = "column"` (or `false`;
/// default: soft-deletable when the model has the configured `soft_delete_column`), and the
/// flag `publish_updates_after_soft_delete`. A model that is only a dependency or observed
/// derives `Publishable` without any `#[publish]`.
#[doc(inline)]
pub use dionysus_macros::Publishable;

/// The names most applications need, in one import.
pub mod prelude {
    pub use crate::config::Config;
    pub use crate::outbox::Changeset;
    pub use crate::publishable::Publishable;
    pub use crate::registry::{Registry, Topic};
    pub use crate::topic;
}

/// Items the macros' generated code refers to. Not a public API: it may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    pub use diesel;
    pub use diesel_async;
    pub use inventory;
    pub use serde_json;

    pub use crate::publishable::{
        attribute_value, load_erased, model_entry, publications_of, relation, BoxFuture, ColumnIn, Dependency, IdKind,
        ModelEntry, NotRelated, Observer, OtherBelongsToOwner, OwnerBelongsToOther, PartitionKeySource, PrimaryKeyType,
        Publication, Publishable, Record, RecordFilter, Relation, RelationProbe, SoftDelete,
    };
    pub use crate::registry::{
        ModelRegistration, Tombstone, Topic, TopicDeclaration, TopicEntry, TopicReference, TopicReferenceEntry,
    };
    pub use crate::serialize::{serialize_erased, DefaultSerializer};
}
