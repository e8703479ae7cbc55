//! The declaration of dionysus-rb's outbox specs (vectors p04 … p13), namespace `v102`:
//!
//! * `rentals`: ExamplePublishableResource, ExamplePublishableCancelableResource,
//!   ExamplePublishAfterSoftDeletionResource;
//! * `other`: ExamplePublishableResource;
//! * `observer_to_one`: ExampleResource, observing ExamplePublishableResource's `account_id`;
//! * `observer_to_one_canceled`: ExampleResource, observing
//!   ExamplePublishableCancelableResource's `canceled_at`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use dionysus::config::ProducerConfig;
use dionysus::registry::Registry;
use dionysus::Topic;
use serde::Serialize;

use super::{
    example_publish_after_soft_deletion_resources, example_publishable_cancelable_resources,
    example_publishable_resources, example_resources,
};

#[dionysus::topic(namespace = "v102", name = "rentals")]
pub struct Rentals;
#[dionysus::topic(namespace = "v102", name = "other")]
pub struct Other;
#[dionysus::topic(namespace = "v102", name = "observer_to_one")]
pub struct ObserverToOne;
#[dionysus::topic(namespace = "v102", name = "observer_to_one_canceled")]
pub struct ObserverToOneCanceled;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_resources)]
#[diesel(belongs_to(ExamplePublishableCancelableResource))]
#[publishable(model_name = "ExampleResource")]
#[publish(topic = ObserverToOne, observe(ExamplePublishableResource, columns(account_id)))]
#[publish(topic = ObserverToOneCanceled, observe(ExamplePublishableCancelableResource, columns(canceled_at)))]
pub struct ExampleResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub example_publishable_cancelable_resource_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_publishable_resources)]
#[diesel(belongs_to(ExampleResource))]
#[publish(topic = Rentals)]
#[publish(topic = Other)]
pub struct ExamplePublishableResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub example_resource_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_publishable_cancelable_resources)]
#[publish(topic = Rentals)]
pub struct ExamplePublishableCancelableResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_publish_after_soft_deletion_resources)]
#[publishable(publish_updates_after_soft_delete)]
#[publish(topic = Rentals)]
pub struct ExamplePublishAfterSoftDeletionResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// This declaration's registry, apart from the other declarations linked into the tests.
pub fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new(
            [Rentals::DECLARATION, Other::DECLARATION, ObserverToOne::DECLARATION, ObserverToOneCanceled::DECLARATION],
            [],
        )
        .with_model::<ExampleResource>()
        .with_model::<ExamplePublishableResource>()
        .with_model::<ExamplePublishableCancelableResource>()
        .with_model::<ExamplePublishAfterSoftDeletionResource>()
    })
}

/// The specs' configuration: defaults (soft-delete column `canceled_at`, default partition
/// key `account_id`).
pub fn config() -> &'static ProducerConfig {
    static CONFIG: std::sync::OnceLock<ProducerConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(ProducerConfig::default)
}

#[test]
fn the_declaration_is_consistent() {
    registry().validate().unwrap();
}
