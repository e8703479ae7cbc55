//! Cascades (kafka_tools' Cascader): from a consumed batch, republish the records of this
//! service related to the ids the batch carries. `cascade(Rental -> Booking)` on a replica
//! (`#[consume(...)]`) or a handler (`#[dionysus::consume(...)]`), or a [`Cascade`] given to
//! [`ConsumerBuilder::cascade`](super::ConsumerBuilder::cascade), reads the ids of `Rental`
//! from the batch's records (their own id, or the attribute named by `from`), finds the
//! `Booking` records related to them (the same diesel association `with(...)` uses: the
//! foreign key `Booking` holds through `belongs_to(Rental)`, or the one `Rental` holds), and
//! writes one `booking_updated` outbox row per record and topic `Booking` is published on,
//! with its partition key, so the relay publishes it like any change.
//!
//! The rows are written on the batch's connection, inside its transaction, once per related
//! record per batch however often its parent appears: they commit with the replica rows and
//! the stored offset, and roll back with them.
//!
//! This module owns the declarations and the rows; when they are written (and the switch
//! that suppresses them) is `apply`'s, and writing outbox rows is `reply`'s.

use std::collections::{BTreeSet, HashSet};

use diesel::associations::BelongsTo;
use diesel::Column;
use diesel_async::AsyncPgConnection;

use super::events::ConsumedEvent;
use super::reply::ComposedRow;
use crate::registry::model::{ColumnIn, IdKind, Model, ModelEntry, Relation};
use crate::registry::Registry;
use crate::wire::naming::{self, EventKind};
use crate::wire::record::id_text;

/// A cascade declared by `cascade(Parent -> Related)` in `#[consume(...)]` or
/// `#[dionysus::consume(...)]`, as generated code registers it.
#[derive(Debug)]
pub struct CascadeDeclaration {
    /// The consumed topic whose batches carry the parents' ids.
    pub topic: &'static str,
    /// Only records of events with this model name (a replica's `model`).
    pub model: Option<&'static str>,
    /// Only records of events with this name (a handler's `event`; `*` for any).
    pub event: Option<&'static str>,
    /// The attribute of a consumed record holding the parent's id (`from = "rental_id"`);
    /// `None`: the record's own id.
    pub from: Option<&'static str>,
    /// The parent model (`Rental`).
    pub parent: fn() -> &'static ModelEntry,
    /// The related model, whose records are republished (`Booking`).
    pub related: fn() -> &'static ModelEntry,
    /// How the two are related (seen from the parent).
    pub relation: fn() -> Relation,
    /// Whether a replica declared it (else a handler).
    pub by_replica: bool,
    /// Path of the replica struct or handler function that declared it.
    pub declared_by: &'static str,
    /// `file:line`.
    pub location: &'static str,
}

#[doc(hidden)]
pub struct CascadeEntry(pub &'static CascadeDeclaration);
inventory::collect!(CascadeEntry);

/// Every cascade declared in this binary.
pub(crate) fn declarations() -> impl Iterator<Item = &'static CascadeDeclaration> {
    inventory::iter::<CascadeEntry>.into_iter().map(|entry| entry.0)
}

/// A cascade a consumer runs: the records of `Related` whose association points at the ids
/// of `Parent` a batch of `topic` carries are republished with the batch.
///
/// ```no_run
/// # use diesel::prelude::*;
/// # diesel::table! { rentals (id) { id -> BigInt } }
/// # diesel::table! { bookings (id) { id -> BigInt, rental_id -> BigInt } }
/// # diesel::joinable!(bookings -> rentals (rental_id));
/// # diesel::allow_tables_to_appear_in_same_query!(rentals, bookings);
/// # #[derive(Queryable, Selectable, Identifiable, serde::Serialize, dionysus::Publishable)]
/// # #[diesel(table_name = rentals)]
/// # #[publish(topic = "v3_rentals")]
/// # struct Rental { id: i64 }
/// # #[derive(Queryable, Selectable, Identifiable, Associations, serde::Serialize, dionysus::Publishable)]
/// # #[diesel(table_name = bookings, belongs_to(Rental))]
/// # #[publish(topic = "v3_bookings")]
/// # struct Booking { id: i64, rental_id: i64 }
/// use dionysus::consumer::{Cascade, Consumer};
///
/// # fn build(config: dionysus::Config) -> Result<Consumer, dionysus::consumer::ConsumerError> {
/// // The ids of the `Payment` records consumed from `v3_payments`, in their `rental_id`.
/// let cascade = Cascade::new::<Rental, Booking>("v3_payments").model("Payment").from("rental_id");
/// Consumer::builder(config).topic("v3_payments").cascade(cascade).build()
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a cascade does nothing until it is given to `ConsumerBuilder::cascade`"]
pub struct Cascade {
    topic: String,
    model: Option<String>,
    event: Option<String>,
    from: Option<String>,
    parent: &'static ModelEntry,
    related: &'static ModelEntry,
    relation: Relation,
    declared_by: String,
}

impl Cascade {
    /// The records of `Related` (a publishable model declaring `belongs_to(Parent)`) whose
    /// foreign key holds an id of `Parent` carried by a batch of `topic`. By default the ids
    /// are those of the records of events whose model name is `Parent`'s.
    pub fn new<Parent, Related>(topic: impl Into<String>) -> Cascade
    where
        Parent: Model,
        Related: Model + BelongsTo<Parent>,
    {
        let parent = Parent::entry();
        let related = Related::entry();
        Cascade {
            topic: topic.into(),
            model: Some(parent.model_name.to_owned()),
            event: None,
            from: None,
            parent,
            related,
            relation: Relation::OtherHoldsKey(<Related::ForeignKeyColumn as Column>::NAME),
            declared_by: format!("cascade({} -> {})", parent.model_name, related.model_name),
        }
    }

    /// Reads the ids from records of events with this model name (default: the parent's).
    pub fn model(mut self, model_name: impl Into<String>) -> Cascade {
        self.model = Some(model_name.into());
        self
    }

    /// Reads the ids only from records of events with this name.
    pub fn event(mut self, event_name: impl Into<String>) -> Cascade {
        self.event = Some(event_name.into());
        self
    }

    /// Reads each id from this attribute of the consumed records (as sent, e.g.
    /// `rental_id`) instead of the record's own id.
    pub fn from(mut self, attribute: impl Into<String>) -> Cascade {
        self.from = Some(attribute.into());
        self
    }

    /// The cascade of a declaration.
    pub(crate) fn declared(declaration: &'static CascadeDeclaration) -> Cascade {
        Cascade {
            topic: declaration.topic.to_owned(),
            model: declaration.model.map(str::to_owned),
            event: declaration.event.filter(|event| *event != "*").map(str::to_owned),
            from: declaration.from.map(str::to_owned),
            parent: (declaration.parent)(),
            related: (declaration.related)(),
            relation: (declaration.relation)(),
            declared_by: declaration.declared_by.to_owned(),
        }
    }

    /// The consumed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The related model, whose records are republished.
    pub fn related(&self) -> &'static ModelEntry {
        self.related
    }

    /// Who declared it (a replica struct, a handler function, or `cascade(A -> B)`).
    pub(crate) fn declared_by(&self) -> &str {
        &self.declared_by
    }

    /// Whether the records of `event` carry this cascade's ids.
    fn reads(&self, event: &ConsumedEvent) -> bool {
        event.topic == self.topic
            && self.model.as_deref().is_none_or(|model| model == event.model_name)
            && self.event.as_deref().is_none_or(|name| name == event.event_name)
    }

    /// The parents' ids the events carry, each once, in order; ids that cannot be the
    /// parent's (text for an integer key) are left out with a warning.
    fn ids<'e>(&self, events: impl IntoIterator<Item = &'e ConsumedEvent>) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for event in events.into_iter().filter(|event| self.reads(event)) {
            for record in &event.transformed_data {
                let value = match &self.from {
                    Some(attribute) => record.attributes.get(attribute),
                    None => record.synced_id(),
                };
                let Some(value) = value.filter(|value| !value.is_null()) else { continue };
                let id = id_text(value);
                if self.parent.id_kind == IdKind::Integer && id.trim().parse::<i64>().is_err() {
                    tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, cascade = %self.declared_by, id = %id, "an id that is not an integer cannot be a {} id; no cascade for it", self.parent.model_name);
                    continue;
                }
                ids.insert(id);
            }
        }
        ids
    }

    /// The related records of `ids`, ordered by primary key.
    async fn related_records(
        &self,
        conn: &mut AsyncPgConnection,
        ids: &[String],
    ) -> diesel::QueryResult<Vec<Box<dyn crate::registry::model::Record>>> {
        match self.relation {
            Relation::OtherHoldsKey(column) => {
                let filter = ColumnIn::parse(column, self.parent.id_kind, ids)?;
                (self.related.load)(conn, filter.into(), None).await
            }
            Relation::OwnerHoldsKey(column) => {
                let parents = self.parent.load_by_ids(conn, ids).await?;
                let keys: BTreeSet<String> = parents
                    .iter()
                    .filter_map(|parent| parent.attribute(column))
                    .filter(|key| !key.is_null())
                    .map(|key| id_text(&key))
                    .collect();
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<String> = keys.into_iter().collect();
                self.related.load_by_ids(conn, &keys).await
            }
        }
    }
}

/// Finding a cascade's related records failed; the batch is rolled back and retried (it is
/// never the messages' fault).
#[derive(Debug, thiserror::Error)]
#[error("loading the {related} records related to {ids} {parent} id(s) ({declared_by})")]
pub struct CascadeError {
    /// The parent model.
    pub parent: &'static str,
    /// The related model.
    pub related: &'static str,
    /// How many parent ids the batch carried.
    pub ids: usize,
    /// Who declared the cascade.
    pub declared_by: String,
    /// diesel's error.
    #[source]
    pub source: diesel::result::Error,
}

/// The outbox rows of every cascade for a batch's `events`: one `<related>_updated` row per
/// related record and topic it is published on (with its partition key), each once however
/// many cascades or parent ids lead to it. `skip` tells the events whose ids do not cascade
/// (of messages set aside for the dead-letter topic, or replayed by a reinit).
pub(crate) async fn rows(
    conn: &mut AsyncPgConnection,
    cascades: &[Cascade],
    events: &[ConsumedEvent],
    skip: impl Fn(&ConsumedEvent) -> bool,
    registry: &Registry,
    default_partition_key: &str,
) -> Result<Vec<ComposedRow>, CascadeError> {
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for cascade in cascades {
        let ids: Vec<String> = cascade.ids(events.iter().filter(|event| !skip(event))).into_iter().collect();
        if ids.is_empty() {
            continue;
        }
        let related = cascade.related;
        let span = tracing::debug_span!(
            "dionysus.cascade",
            cascade = %cascade.declared_by,
            topic = %cascade.topic,
            parent = cascade.parent.model_name,
            related = related.model_name,
            ids = ids.len(),
        );
        let records = {
            use tracing::Instrument as _;
            cascade.related_records(conn, &ids).instrument(span.clone()).await
        }
        .map_err(|source| CascadeError {
            parent: cascade.parent.model_name,
            related: related.model_name,
            ids: ids.len(),
            declared_by: cascade.declared_by.clone(),
            source,
        })?;
        let event_name = naming::event_name(related.model_name, EventKind::Updated);
        let before = rows.len();
        for record in &records {
            for publication in registry.publications_of(related.model_name) {
                let row = ComposedRow::change(
                    related.model_name,
                    record.id(),
                    event_name.clone(),
                    publication.topic,
                    registry.partition_key(publication, record.as_ref(), default_partition_key),
                );
                let identity = row.identity();
                let identity = (identity.0.to_owned(), identity.1.to_owned(), identity.3.to_owned());
                if seen.insert(identity) {
                    rows.push(row);
                }
            }
        }
        span.in_scope(|| {
            tracing::debug!(
                records = records.len(),
                rows = rows.len() - before,
                "cascade: related records republished"
            );
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::consumer::replica::Record;

    static RENTAL: ModelEntry = ModelEntry { model_name: "Rental", primary_key: "id", ..ModelEntry::INVALID };
    static BOOKING: ModelEntry = ModelEntry { model_name: "Booking", primary_key: "id", ..ModelEntry::INVALID };

    fn cascade() -> Cascade {
        Cascade {
            topic: "v3_rentals".into(),
            model: Some("Rental".into()),
            event: None,
            from: None,
            parent: &RENTAL,
            related: &BOOKING,
            relation: Relation::OtherHoldsKey("rental_id"),
            declared_by: "test".into(),
        }
    }

    fn event(model: &str, name: &str, records: &[Value]) -> ConsumedEvent {
        ConsumedEvent {
            topic: "v3_rentals".into(),
            partition: 0,
            offset: 0,
            event_name: name.into(),
            model_name: model.into(),
            transformed_data: records
                .iter()
                .map(|attributes| Record {
                    attributes: attributes.as_object().cloned().unwrap_or_else(Map::new),
                    has_many: Vec::new(),
                    has_one: Vec::new(),
                })
                .collect(),
            local_changes: Vec::new(),
        }
    }

    #[test]
    fn each_parent_id_is_read_once_per_batch() {
        let events = [
            event("Rental", "rental_updated", &[json!({"synced_id": 2}), json!({"synced_id": 1})]),
            event("Rental", "rental_updated", &[json!({"synced_id": 2}), json!({"synced_id": null})]),
            event("Account", "account_updated", &[json!({"synced_id": 3})]),
        ];
        let ids: Vec<String> = cascade().ids(&events).into_iter().collect();
        assert_eq!(ids, ["1", "2"]);
    }

    #[test]
    fn ids_come_from_the_named_attribute_and_the_named_event() {
        let events = [
            event("Payment", "payment_made", &[json!({"synced_id": 9, "rental_id": 4})]),
            event("Payment", "payment_voided", &[json!({"synced_id": 8, "rental_id": 5})]),
        ];
        let cascade = cascade().model("Payment").event("payment_made").from("rental_id");
        let ids: Vec<String> = cascade.ids(&events).into_iter().collect();
        assert_eq!(ids, ["4"]);
    }

    proptest::proptest! {
        /// However often and in whichever events ids repeat, each is read once, and only the
        /// ones of the cascade's model.
        #[test]
        fn ids_are_the_distinct_ids_of_the_cascade_s_model(
            batch in proptest::collection::vec((proptest::bool::ANY, proptest::collection::vec(0i64..20, 0..6)), 0..8)
        ) {
            let events: Vec<ConsumedEvent> = batch
                .iter()
                .map(|(ours, ids)| {
                    let records: Vec<Value> = ids.iter().map(|id| json!({"synced_id": id})).collect();
                    event(if *ours { "Rental" } else { "Account" }, "x_updated", &records)
                })
                .collect();
            let expected: BTreeSet<String> =
                batch.iter().filter(|(ours, _)| *ours).flat_map(|(_, ids)| ids.iter().map(i64::to_string)).collect();
            proptest::prop_assert_eq!(cascade().ids(&events), expected);
        }
    }

    #[test]
    fn text_is_no_integer_parent_id() {
        let events = [event("Rental", "rental_updated", &[json!({"synced_id": "x"}), json!({"synced_id": "7"})])];
        let ids: Vec<String> = cascade().ids(&events).into_iter().collect();
        assert_eq!(ids, ["7"]);
    }
}
