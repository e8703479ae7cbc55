//! Which columns of a replica play the attribute roles of dionysus-rb (C-11): the source's
//! id, `created_at`, `updated_at`, `canceled_at` and the whole payload. A declaration may
//! name a role's column itself; the roles it leaves open take the column of the configured
//! name ([`ConsumerConfig`]`::*_attribute`) when the table has one. This module resolves a
//! descriptor against the configuration and checks the result; applying the roles to records
//! is `plan`'s job.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::column_type::ColumnKind;
use super::descriptor::{DestroyStrategy, ReplicaDescriptor, Replicas};
use super::plan::normalize;
use crate::config::ConsumerConfig;

/// A replica declaration that cannot work with the configured attribute names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica model `{model}` ({declared_by}, {location}): {problem}")]
#[non_exhaustive]
pub struct ReplicaError {
    /// The source model.
    pub model: String,
    /// The struct declaring it.
    pub declared_by: String,
    /// Where.
    pub location: String,
    /// What is wrong, and what would be right.
    pub problem: String,
}

/// The configured names a descriptor was resolved with (the cache key besides the
/// descriptor itself).
type Names = [String; 5];

impl ReplicaDescriptor {
    /// This replica with the roles its declaration leaves open given the columns of the
    /// configured names (C-11), checked: the synced id has a column, `cancel` has a
    /// soft-delete column, the payload column is JSON, a `cancel = set(...)` value fits its
    /// column. Unchanged descriptors are returned as they are; a changed one is built once
    /// per configuration and kept for the life of the process.
    pub fn configured(&'static self, config: &ConsumerConfig) -> Result<&'static ReplicaDescriptor, ReplicaError> {
        let named = self.named;
        let pick = |named: bool, declared: Option<&'static str>, configured: &str| {
            if named {
                declared
            } else {
                self.column(configured).map(|column| column.name)
            }
        };
        let fail = |problem: String| ReplicaError {
            model: self.model.to_owned(),
            declared_by: self.declared_by.to_owned(),
            location: self.location.to_owned(),
            problem,
        };
        let Some(synced_id) = pick(named.synced_id, Some(self.synced_id), &config.synced_id_attribute)
            .filter(|name| self.column(name).is_some())
        else {
            return Err(fail(format!(
                "no column `{}` holds the source id (the configured synced_id_attribute); add that field, or \
                 name the column with `#[consume(synced_id = \"…\")]`",
                config.synced_id_attribute
            )));
        };
        let synced_updated_at =
            pick(named.synced_updated_at, self.synced_updated_at, &config.synced_updated_at_attribute);
        let synced_created_at =
            pick(named.synced_created_at, self.synced_created_at, &config.synced_created_at_attribute);
        let soft_delete = pick(named.soft_delete, self.soft_delete, &config.soft_deleted_at_attribute);
        let synced_data = pick(named.synced_data, self.synced_data, &config.synced_data_attribute);
        let strategy = match (named.strategy, soft_delete) {
            (true, _) => self.strategy,
            (false, Some(_)) => DestroyStrategy::Cancel,
            (false, None) => DestroyStrategy::Destroy,
        };
        if strategy == DestroyStrategy::Cancel && soft_delete.is_none() {
            return Err(fail(format!(
                "strategy \"cancel\" sets the soft-delete column, and there is no column `{}` (the configured \
                 soft_deleted_at_attribute); name one with `soft_delete = \"…\"`, or choose `cancel = set(...)`",
                config.soft_deleted_at_attribute
            )));
        }
        if let Some(column) = synced_data.and_then(|name| self.column(name)) {
            if column.kind != ColumnKind::Json {
                return Err(fail(format!(
                    "the payload column `{}` must hold JSON (a `serde_json::Value` field)",
                    column.name
                )));
            }
        }
        if let DestroyStrategy::Set { column, value } = strategy {
            let Some(target) = self.column(column) else {
                return Err(fail(format!("the cancel strategy sets `{column}`, which is not a column of the replica")));
            };
            if let Err(expected) = normalize(target.kind, &value.to_json()) {
                return Err(fail(format!(
                    "the cancel strategy sets `{column}` to {}, which does not fit the column ({expected})",
                    value.to_json()
                )));
            }
        }
        if (synced_id, synced_updated_at, synced_created_at, soft_delete, synced_data, strategy)
            == (
                self.synced_id,
                self.synced_updated_at,
                self.synced_created_at,
                self.soft_delete,
                self.synced_data,
                self.strategy,
            )
        {
            return Ok(self);
        }
        static RESOLVED: OnceLock<Mutex<HashMap<(usize, Names), &'static ReplicaDescriptor>>> = OnceLock::new();
        let key = (
            std::ptr::from_ref(self) as usize,
            [
                config.synced_id_attribute.clone(),
                config.synced_created_at_attribute.clone(),
                config.synced_updated_at_attribute.clone(),
                config.soft_deleted_at_attribute.clone(),
                config.synced_data_attribute.clone(),
            ],
        );
        let mut resolved = RESOLVED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
        Ok(*resolved.entry(key).or_insert_with(|| {
            Box::leak(Box::new(ReplicaDescriptor {
                synced_id,
                synced_updated_at,
                synced_created_at,
                soft_delete,
                synced_data,
                strategy,
                ..*self
            }))
        }))
    }
}

impl Replicas {
    /// These replica models resolved against the configured attribute names
    /// ([`ReplicaDescriptor::configured`]). A model of one of `topics` that cannot work is the
    /// error; one of another topic is left out (logged), since nothing reads its topic and it
    /// could not be written as a sideload either.
    pub fn configured(&self, config: &ConsumerConfig, topics: &[String]) -> Result<Replicas, ReplicaError> {
        let mut resolved = Vec::new();
        for descriptor in self.iter() {
            match descriptor.configured(config) {
                Ok(descriptor) => resolved.push(descriptor),
                Err(error) if topics.iter().any(|topic| topic == descriptor.topic) => return Err(error),
                Err(error) => tracing::warn!(topic = descriptor.topic, "{error}; left out"),
            }
        }
        let replicas = Replicas::new(resolved);
        for (first, second) in replicas.conflicts() {
            let error = ReplicaError {
                model: first.model.to_owned(),
                declared_by: first.declared_by.to_owned(),
                location: first.location.to_owned(),
                problem: format!(
                    "`{}` ({}) replicates `{}` from `{}` too, so its records could go to either table; declare one \
                     replica per model and topic, or give the consumer the replicas it writes \
                     (`Consumer::builder(..).replicas(Replicas::new([..]))`)",
                    second.declared_by, second.location, second.model, first.topic
                ),
            };
            if topics.iter().any(|topic| topic == first.topic) {
                return Err(error);
            }
            tracing::warn!(topic = first.topic, "{error}; neither is written as a sideload");
        }
        Ok(replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::replica::Column;

    static ID: [Column; 1] = [Column::named("synced_id", ColumnKind::Integer, false)];

    const fn replica(topic: &'static str, table: &'static str) -> ReplicaDescriptor {
        ReplicaDescriptor {
            model: "Rental",
            topic,
            table,
            columns: &ID,
            declared_by: table,
            location: "src/lib.rs:1",
            ..ReplicaDescriptor::INVALID
        }
    }

    static FIRST: ReplicaDescriptor = replica("v3_rentals", "rentals");
    static SECOND: ReplicaDescriptor = replica("v3_rentals", "rental_copies");
    static PARTNER: ReplicaDescriptor = replica("partner", "partner_rentals");

    #[test]
    fn two_replicas_of_a_model_on_a_consumed_topic_refuse_the_consumer() {
        let replicas = Replicas::new([&FIRST, &SECOND, &PARTNER]);
        let config = ConsumerConfig::default();
        let error = replicas.configured(&config, &["v3_rentals".to_owned()]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("`rentals` (src/lib.rs:1) replicates `Rental` from `v3_rentals` too"), "{text}");
        assert!(text.contains("declare one replica per model and topic"), "{text}");
        // Not read by this consumer: left to warn, and the others still work.
        let kept = replicas.configured(&config, &["partner".to_owned()]).unwrap();
        assert_eq!(kept.find_on("partner", "Rental").map(|replica| replica.table), Some("partner_rentals"));
        assert_eq!(kept.find_on("v3_rentals", "Rental"), None);
    }
}
