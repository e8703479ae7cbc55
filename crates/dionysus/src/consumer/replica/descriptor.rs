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
/// factory) and the topic a record came from: two services may each publish a `Rental`, on
/// their own topics, into replicas of their own.
#[derive(Debug, Default, Clone)]
pub struct Replicas {
    /// Per lookup key, the replicas of that model, ordered by topic and declaring struct.
    by_key: BTreeMap<String, Vec<&'static ReplicaDescriptor>>,
    /// The same by the exact model name, so the usual lookup skips inflection.
    by_model: HashMap<&'static str, Vec<&'static ReplicaDescriptor>>,
}

impl Replicas {
    /// Every replica model linked into this binary.
    pub fn global() -> &'static Replicas {
        static GLOBAL: OnceLock<Replicas> = OnceLock::new();
        GLOBAL.get_or_init(|| Replicas::new(inventory::iter::<ReplicaEntry>.into_iter().map(|entry| entry.0)))
    }

    /// The given replica models (for tests and explicit setups). The same descriptor given
    /// twice counts once.
    pub fn new(descriptors: impl IntoIterator<Item = &'static ReplicaDescriptor>) -> Replicas {
        let mut by_key: BTreeMap<String, Vec<&'static ReplicaDescriptor>> = BTreeMap::new();
        for descriptor in descriptors {
            let same = by_key.entry(ReplicaDescriptor::lookup_key(descriptor.model)).or_default();
            if !same.iter().any(|known| std::ptr::eq(*known, descriptor)) {
                same.push(descriptor);
            }
        }
        let mut by_model: HashMap<&'static str, Vec<&'static ReplicaDescriptor>> = HashMap::new();
        for same in by_key.values_mut() {
            same.sort_by_key(|descriptor| (descriptor.topic, descriptor.declared_by, descriptor.table));
            for descriptor in same.iter() {
                by_model.entry(descriptor.model).or_default().push(descriptor);
            }
        }
        Replicas { by_key, by_model }
    }

    /// The replicas of a model name (`Rental`) or a relationship name (`bookings`, `tax`),
    /// ordered by topic.
    pub(crate) fn candidates(&self, name: &str) -> &[&'static ReplicaDescriptor] {
        if let Some(found) = self.by_model.get(name) {
            return found;
        }
        self.by_key.get(&ReplicaDescriptor::lookup_key(name)).map_or(&[], Vec::as_slice)
    }

    /// The replica of a model name (`Rental`) or a relationship name (`bookings`, `tax`),
    /// when there is exactly one; with several (for different topics) there is no answer
    /// without the topic: see [`Replicas::find_on`].
    pub fn find(&self, name: &str) -> Option<&'static ReplicaDescriptor> {
        match self.candidates(name) {
            [only] => Some(only),
            _ => None,
        }
    }

    /// The replica that records of `name` read from `topic` go to: the one declared for that
    /// topic, else the only replica of the name (a model sideloaded into a message of another
    /// topic). `None` when there is none, or several and not exactly one of them is `topic`'s.
    pub fn find_on(&self, topic: &str, name: &str) -> Option<&'static ReplicaDescriptor> {
        let candidates = self.candidates(name);
        if let [only] = candidates {
            return Some(only);
        }
        let mut on_topic = candidates.iter().copied().filter(|descriptor| descriptor.topic == topic);
        match (on_topic.next(), on_topic.next()) {
            (Some(found), None) => Some(found),
            // Two for one topic ([`Replicas::conflicts`]): neither is picked.
            _ => None,
        }
    }

    /// Pairs of replicas that claim the same model on the same topic: records of that model
    /// could go to either table, so a consumer of the topic refuses to start.
    pub fn conflicts(&self) -> Vec<(&'static ReplicaDescriptor, &'static ReplicaDescriptor)> {
        self.by_key
            .values()
            .flat_map(|same| {
                same.windows(2).filter(|pair| pair[0].topic == pair[1].topic).map(|pair| (pair[0], pair[1]))
            })
            .collect()
    }

    /// Every replica model.
    pub fn iter(&self) -> impl Iterator<Item = &'static ReplicaDescriptor> + '_ {
        self.by_key.values().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn replica(model: &'static str, topic: &'static str, table: &'static str) -> ReplicaDescriptor {
        ReplicaDescriptor { model, topic, table, declared_by: table, ..ReplicaDescriptor::INVALID }
    }

    static OURS: ReplicaDescriptor = replica("Rental", "v3_rentals", "rentals");
    static THEIRS: ReplicaDescriptor = replica("Rental", "partner_rentals", "partner_rentals");
    static BOOKINGS: ReplicaDescriptor = replica("Booking", "v3_rentals", "bookings");
    static TWIN: ReplicaDescriptor = replica("Rental", "v3_rentals", "rental_copies");

    #[test]
    fn a_model_replicated_from_two_topics_is_found_per_topic() {
        let replicas = Replicas::new([&THEIRS, &OURS, &BOOKINGS]);
        assert_eq!(replicas.find_on("v3_rentals", "Rental").map(|r| r.table), Some("rentals"));
        assert_eq!(replicas.find_on("partner_rentals", "Rental").map(|r| r.table), Some("partner_rentals"));
        assert_eq!(replicas.find_on("partner_rentals", "rentals").map(|r| r.table), Some("partner_rentals"));
        // Neither topic's: no answer rather than a guess; the name alone is ambiguous.
        assert_eq!(replicas.find_on("other", "Rental"), None);
        assert_eq!(replicas.find("Rental"), None);
        // A model with one replica is found from any topic (a sideload) and by name.
        assert_eq!(replicas.find_on("partner_rentals", "bookings").map(|r| r.table), Some("bookings"));
        assert_eq!(replicas.find("Booking").map(|r| r.table), Some("bookings"));
        assert_eq!(replicas.iter().count(), 3);
        assert!(replicas.conflicts().is_empty());
    }

    #[test]
    fn two_replicas_of_a_model_on_one_topic_are_a_conflict_and_one_given_twice_is_not() {
        let replicas = Replicas::new([&OURS, &TWIN, &OURS, &THEIRS]);
        assert_eq!(replicas.iter().count(), 3);
        let conflicts: Vec<_> = replicas.conflicts().iter().map(|(a, b)| (a.table, b.table)).collect();
        assert_eq!(conflicts, [("rental_copies", "rentals")]);
    }
}
