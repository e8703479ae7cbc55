//! Names of attributes and of their keys, one constant each, so a key is spelt once.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// An attribute key such as `partition_key`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Symbol(pub(crate) &'static str);

// #[dionysus::topic(...)]
pub(crate) const NAMESPACE: Symbol = Symbol("namespace");
pub(crate) const NAME: Symbol = Symbol("name");
pub(crate) const PARTITION_KEY: Symbol = Symbol("partition_key");
pub(crate) const PARTITIONS: Symbol = Symbol("partitions");
pub(crate) const REPLICATION_FACTOR: Symbol = Symbol("replication_factor");
pub(crate) const GENESIS_REPLICA: Symbol = Symbol("genesis_replica");
pub(crate) const TOMBSTONE: Symbol = Symbol("tombstone");
pub(crate) const FORMAT: Symbol = Symbol("format");
pub(crate) const SCHEMA: Symbol = Symbol("schema");
pub(crate) const SCHEMA_DIR: Symbol = Symbol("schema_dir");
pub(crate) const KEY: Symbol = Symbol("key");
// key(...) of an Avro topic
pub(crate) const KEY_NONE: Symbol = Symbol("none");
pub(crate) const KEY_PLAIN: Symbol = Symbol("plain");
pub(crate) const KEY_FIELD: Symbol = Symbol("field");

// #[derive(Publishable)]: #[publish(...)], #[publishable(...)]
pub(crate) const PUBLISH: Symbol = Symbol("publish");
pub(crate) const PUBLISHABLE: Symbol = Symbol("publishable");
pub(crate) const TOPIC: Symbol = Symbol("topic");
pub(crate) const PARTITION_KEY_WITH: Symbol = Symbol("partition_key_with");
pub(crate) const PARTITION_KEY_TO_I: Symbol = Symbol("partition_key_to_i");
pub(crate) const WITH: Symbol = Symbol("with");
pub(crate) const OBSERVE: Symbol = Symbol("observe");
pub(crate) const COLUMNS: Symbol = Symbol("columns");
pub(crate) const VIA: Symbol = Symbol("via");
pub(crate) const SERIALIZER: Symbol = Symbol("serializer");
pub(crate) const MODEL_NAME: Symbol = Symbol("model_name");
pub(crate) const SOFT_DELETE: Symbol = Symbol("soft_delete");
pub(crate) const PUBLISH_UPDATES_AFTER_SOFT_DELETE: Symbol = Symbol("publish_updates_after_soft_delete");
// #[derive(Consume)]: #[consume(...)]; #[dionysus::consume(...)]
pub(crate) const CONSUME: Symbol = Symbol("consume");
pub(crate) const MODEL: Symbol = Symbol("model");
pub(crate) const STRATEGY: Symbol = Symbol("strategy");
pub(crate) const SYNCED_DATA: Symbol = Symbol("synced_data");
pub(crate) const SYNCED_ID: Symbol = Symbol("synced_id");
pub(crate) const SYNCED_CREATED_AT: Symbol = Symbol("synced_created_at");
pub(crate) const SYNCED_UPDATED_AT: Symbol = Symbol("synced_updated_at");
pub(crate) const CANCEL: Symbol = Symbol("cancel");
pub(crate) const FROM: Symbol = Symbol("from");
pub(crate) const SKIP: Symbol = Symbol("skip");
pub(crate) const EVENT: Symbol = Symbol("event");
pub(crate) const IN_TRANSACTION: Symbol = Symbol("in_transaction");
pub(crate) const CHECKPOINT: Symbol = Symbol("checkpoint");
pub(crate) const ON_FAILURE: Symbol = Symbol("on_failure");
pub(crate) const ERROR_EVENTS: Symbol = Symbol("error_events");
pub(crate) const CASCADE: Symbol = Symbol("cascade");
// #[diesel(...)], read by every derive
pub(crate) const DIESEL: Symbol = Symbol("diesel");
pub(crate) const TABLE_NAME: Symbol = Symbol("table_name");
pub(crate) const PRIMARY_KEY: Symbol = Symbol("primary_key");
pub(crate) const COLUMN_NAME: Symbol = Symbol("column_name");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}
