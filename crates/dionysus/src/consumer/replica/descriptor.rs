//! What a replica is: the description `#[derive(Consume)]` registers for a table (its columns,
//! source model, attribute roles and destroy strategy) and the set of them a consumer works
//! with ([`Replicas`]). How a record becomes a row change is [`super::plan`]'s; the SQL is
//! [`super::sql`]'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use super::column_type::ColumnKind;

/// One column of a replica table.
#[derive(Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name in the table.
    pub name: &'static str,
    /// Key of the deserialized attributes this column takes its value from: the column's own
    /// name unless `#[consume(from = "…")]` maps it (C-11).
    pub source: &'static str,
    /// The kind of values it accepts.
    pub kind: ColumnKind,
    /// Whether it accepts `NULL` (an `Option<…>` field).
    pub nullable: bool,
    /// Its PostgreSQL type, from the field's type (`bigint`, `text[]`, …; see
    /// [`ColumnType::SQL_TYPE`](super::ColumnType::SQL_TYPE)).
    pub sql_type: &'static str,
}

impl Column {
    /// A column that takes its value from the attribute of its own name, with its kind's
    /// PostgreSQL type.
    pub const fn named(name: &'static str, kind: ColumnKind, nullable: bool) -> Column {
        Column { name, source: name, kind, nullable, sql_type: kind.default_sql_type() }
    }
}

/// What a `_destroyed` event does to the aggregate root's row (C-13).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DestroyStrategy {
    /// dionysus-rb's default `cancel`: when the payload carries no `canceled_at`, the
    /// soft-delete column is set to the event's time (its `updated_at`, else `created_at`,
    /// else now). Needs a soft-delete column.
    Cancel,
    /// Delete the row, unless the payload's `canceled_at` soft-deletes it through the
    /// soft-delete column.
    Destroy,
    /// A cancel strategy of the model's own (`#[consume(cancel = set(column = "status",
    /// value = "cancelled"))]`): the row is kept and `column` set to `value`. Applied
    /// whenever the gem would call the strategy method: always without a soft-delete
    /// column, and with one when the payload has no `canceled_at`.
    Set {
        /// The column the strategy sets.
        column: &'static str,
        /// The value it sets.
        value: CancelValue,
    },
}

/// The value a [`DestroyStrategy::Set`] writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CancelValue {
    /// A text.
    Text(&'static str),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Bool(bool),
}

impl CancelValue {
    /// The value as JSON, as rows are built.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            CancelValue::Text(text) => serde_json::Value::from(text),
            CancelValue::Integer(number) => serde_json::Value::from(number),
            CancelValue::Bool(flag) => serde_json::Value::from(flag),
        }
    }
}

/// The attribute roles a replica declaration names itself (C-11): `#[consume(synced_id =
/// "…")]`, a field's `#[consume(synced_updated_at)]`, `soft_delete = "…"`, …. A role it does
/// not name takes the column of the configured name
/// ([`ConsumerConfig`](crate::config::ConsumerConfig)`::*_attribute`) when the consumer is
/// built, if the table has one.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedRoles {
    /// `synced_id`.
    pub synced_id: bool,
    /// `synced_created_at`.
    pub synced_created_at: bool,
    /// `synced_updated_at`.
    pub synced_updated_at: bool,
    /// `soft_delete` (the configured `soft_deleted_at_attribute`).
    pub soft_delete: bool,
    /// `synced_data`.
    pub synced_data: bool,
    /// `strategy` or `cancel`; otherwise `cancel` with a soft-delete column, else `destroy`.
    pub strategy: bool,
}

impl NamedRoles {
    /// No role named: every one follows the configuration.
    pub const NONE: NamedRoles = NamedRoles {
        synced_id: false,
        synced_created_at: false,
        synced_updated_at: false,
        soft_delete: false,
        synced_data: false,
        strategy: false,
    };
}

/// Everything the runtime needs to know about a replica model; built at compile time by
/// `#[derive(Consume)]` with the default attribute names, and resolved against the
/// configured names when a consumer is built ([`ReplicaDescriptor::configured`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDescriptor {
    /// The source model's name on the wire (`model_name`), e.g. `Rental`.
    pub model: &'static str,
    /// The topic the records come from, e.g. `v3_rentals` (checked by
    /// [`crate::Registry::validate`]).
    pub topic: &'static str,
    /// Table name.
    pub table: &'static str,
    /// The columns the consumer writes, in declaration order.
    pub columns: &'static [Column],
    /// Column holding the source's id (unique index required).
    pub synced_id: &'static str,
    /// Column holding the source's `updated_at`, when the model has one; the timestamp guard
    /// compares with it, else with [`ReplicaDescriptor::synced_created_at`] (C-10).
    pub synced_updated_at: Option<&'static str>,
    /// Column holding the source's `created_at`, when the model has one.
    pub synced_created_at: Option<&'static str>,
    /// Column whose non-null value marks the row soft-deleted, when the model has one.
    pub soft_delete: Option<&'static str>,
    /// What a `_destroyed` event does.
    pub strategy: DestroyStrategy,
    /// Column keeping the whole deserialized payload (jsonb), when the model has one.
    pub synced_data: Option<&'static str>,
    /// The roles named by the declaration; the others follow the configuration.
    pub named: NamedRoles,
    /// Path of the struct, e.g. `my_app::ReplicatedRental`.
    pub declared_by: &'static str,
    /// `file:line` of the declaration.
    pub location: &'static str,
}

impl ReplicaDescriptor {
    /// Placeholder used by the derive's error fallback; never registered.
    #[doc(hidden)]
    pub const INVALID: ReplicaDescriptor = ReplicaDescriptor {
        model: "",
        topic: "",
        table: "",
        columns: &[],
        synced_id: "synced_id",
        synced_updated_at: None,
        synced_created_at: None,
        soft_delete: None,
        strategy: DestroyStrategy::Destroy,
        synced_data: None,
        named: NamedRoles::NONE,
        declared_by: "",
        location: "",
    };

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The column the timestamp guard compares with (C-10): `synced_updated_at` when the
    /// model has one (even when its value is `NULL`), else `synced_created_at`; none when the
    /// model has neither, and then every record applies.
    pub fn guard_column(&self) -> Option<&'static str> {
        self.synced_updated_at.or(self.synced_created_at)
    }

    /// The deserialized attribute (C-6) a role column takes its value from, when `column`
    /// holds one of the source's timestamps: `synced_created_at`, `synced_updated_at` or
    /// `synced_canceled_at`.
    pub fn timestamp_role(&self, column: &str) -> Option<&'static str> {
        if self.synced_updated_at == Some(column) {
            Some("synced_updated_at")
        } else if self.synced_created_at == Some(column) {
            Some("synced_created_at")
        } else if self.soft_delete == Some(column) {
            Some("synced_canceled_at")
        } else {
            None
        }
    }

    /// The key under which [`Replicas::find`] matches model names: `Rental`, `rentals` and
    /// `rental` all give `rental` (singular, underscored, as dionysus-rb's model factory does).
    pub fn lookup_key(name: &str) -> String {
        crate::wire::naming::singularize(&crate::wire::naming::event_prefix(name))
    }
}

/// Implemented by `#[derive(Consume)]`.
pub trait Replica {
    /// The description of this replica model.
    const DESCRIPTOR: &'static ReplicaDescriptor;
}

#[doc(hidden)]
pub struct ReplicaEntry(pub &'static ReplicaDescriptor);
inventory::collect!(ReplicaEntry);

/// The replica models a consumer knows, looked up by source model name (dionysus-rb's model
/// factory).
#[derive(Debug, Default, Clone)]
pub struct Replicas {
    by_key: BTreeMap<String, &'static ReplicaDescriptor>,
    /// The same by the exact model name, so the usual lookup skips inflection.
    by_model: HashMap<&'static str, &'static ReplicaDescriptor>,
}

impl Replicas {
    /// Every replica model linked into this binary.
    pub fn global() -> &'static Replicas {
        static GLOBAL: OnceLock<Replicas> = OnceLock::new();
        GLOBAL.get_or_init(|| Replicas::new(inventory::iter::<ReplicaEntry>.into_iter().map(|entry| entry.0)))
    }

    /// The given replica models (for tests and explicit setups).
    pub fn new(descriptors: impl IntoIterator<Item = &'static ReplicaDescriptor>) -> Replicas {
        let by_key: BTreeMap<String, &'static ReplicaDescriptor> = descriptors
            .into_iter()
            .map(|descriptor| (ReplicaDescriptor::lookup_key(descriptor.model), descriptor))
            .collect();
        let by_model = by_key.values().map(|descriptor| (descriptor.model, *descriptor)).collect();
        Replicas { by_key, by_model }
    }

    /// The replica of a model name (`Rental`) or a relationship name (`bookings`, `tax`).
    pub fn find(&self, name: &str) -> Option<&'static ReplicaDescriptor> {
        if let Some(descriptor) = self.by_model.get(name) {
            return Some(descriptor);
        }
        self.by_key.get(&ReplicaDescriptor::lookup_key(name)).copied()
    }

    /// Every replica model.
    pub fn iter(&self) -> impl Iterator<Item = &'static ReplicaDescriptor> + '_ {
        self.by_key.values().copied()
    }
}
