#![doc = include_str!("../../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod consumer;
pub mod db;
pub mod envelope;
pub mod error;
pub mod migrate;
pub mod naming;
pub mod registry;
pub mod replica;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use migrate::{copy_migrations, migrate};
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

/// The names most applications need, in one import.
pub mod prelude {
    pub use crate::config::Config;
    pub use crate::registry::{Registry, Topic};
    pub use crate::topic;
}

/// Items the macros' generated code refers to. Not a public API: it may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    pub use crate::registry::{Tombstone, Topic, TopicDeclaration, TopicEntry, TopicReference, TopicReferenceEntry};

    pub use crate::consumer::{ConsumedEvent, HandlerDeclaration, HandlerEntry, HandlerFuture};
    pub use crate::replica::{Column, ColumnKind, DestroyStrategy, Replica, ReplicaDescriptor, ReplicaEntry};

    /// Boxes a handler's future (used by `#[dionysus::consume]` on functions).
    pub fn box_handler<'a, F>(future: F) -> HandlerFuture<'a>
    where
        F: ::core::future::Future<Output = crate::Result<()>> + Send + 'a,
    {
        ::std::boxed::Box::pin(future)
    }
}
