//! The declaration of dionysus-rb's publisher specs (vectors w02, p20 … p26), namespace
//! `v102`, serializer "id only" (`data = [{"id": id}]`), default partition key `id`:
//!
//! * `rentals` (genesis replica, partition key `account_id`): ExampleResource with
//!   ExamplePublishableResource and ExamplePublishableCancelableResource;
//! * `other_rentals`: the same;
//! * `observer_to_one` (genesis replica): ExampleResource observing ExamplePublishableResource's
//!   `created_at` and ExamplePublishableCancelableResource's `id`;
//! * `observer_to_many` (genesis replica): ExampleResource observing
//!   ExamplePublishableCancelableResource's `updated_at` and ExamplePublishableResource's `id`.
//!
//! Also the smaller declarations of w01 (no genesis replica) and w15 (default serializer).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use dionysus::config::ProducerConfig;
use dionysus::registry::Registry;
use dionysus::serialize::{SerializeError, Serializer, Sideloads};
use dionysus::{Publishable, Topic};
use serde::Serialize;
use serde_json::{json, Value};

use super::{example_publishable_cancelable_resources, example_publishable_resources, example_resources};

#[dionysus::topic(namespace = "v102", name = "rentals", partition_key = "account_id", genesis_replica)]
pub struct Rentals;
#[dionysus::topic(namespace = "v102", name = "other_rentals", partition_key = "account_id", genesis_replica)]
pub struct OtherRentals;
#[dionysus::topic(namespace = "v102", name = "observer_to_one", genesis_replica)]
pub struct ObserverToOne;
#[dionysus::topic(namespace = "v102", name = "observer_to_many", genesis_replica)]
pub struct ObserverToMany;

/// The specs' serializer: `{"id": <id>}`.
#[derive(Default)]
pub struct IdOnly;

impl<T: Publishable> Serializer<T> for IdOnly {
    fn serialize(&self, record: &T, _sideloads: &Sideloads) -> Result<Value, SerializeError> {
        Ok(json!({"id": record.attribute("id")}))
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_resources)]
#[diesel(belongs_to(ExamplePublishableCancelableResource))]
#[publishable(model_name = "ExampleResource")]
#[publish(topic = "v102_rentals", serializer = IdOnly, with(ExamplePublishableResource, ExamplePublishableCancelableResource))]
#[publish(topic = "v102_other_rentals", serializer = IdOnly, with(ExamplePublishableResource, ExamplePublishableCancelableResource))]
#[publish(
    topic = "v102_observer_to_one",
    serializer = IdOnly,
    observe(ExamplePublishableResource, columns(created_at)),
    observe(ExamplePublishableCancelableResource, columns(id))
)]
#[publish(
    topic = "v102_observer_to_many",
    serializer = IdOnly,
    observe(ExamplePublishableCancelableResource, columns(updated_at)),
    observe(ExamplePublishableResource, columns(id))
)]
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
#[publishable(model_name = "ExamplePublishableResource")]
pub struct ExamplePublishableResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub example_resource_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = example_publishable_cancelable_resources)]
#[publishable(model_name = "ExamplePublishableCancelableResource")]
pub struct ExamplePublishableCancelableResource {
    pub id: i64,
    pub account_id: Option<i64>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new(
            [Rentals::DECLARATION, OtherRentals::DECLARATION, ObserverToOne::DECLARATION, ObserverToMany::DECLARATION],
            [],
        )
        .with_model::<ExampleResource>()
        .with_model::<ExamplePublishableResource>()
        .with_model::<ExamplePublishableCancelableResource>()
    })
}

/// The specs' configuration: default partition key `id`.
pub fn config() -> &'static ProducerConfig {
    static CONFIG: std::sync::OnceLock<ProducerConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut config = ProducerConfig::default();
        config.default_partition_key = "id".to_owned();
        config
    })
}

/// w01's declaration: `v102_rentals` without a genesis replica.
pub mod w01 {
    use super::*;

    #[dionysus::topic(namespace = "v102", name = "rentals", partition_key = "account_id")]
    pub struct PlainRentals;

    #[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
    #[diesel(table_name = example_resources)]
    #[publishable(model_name = "ExampleResource")]
    #[publish(topic = PlainRentals, serializer = IdOnly)]
    pub struct ExampleResource {
        pub id: i64,
        pub account_id: Option<i64>,
        pub example_publishable_cancelable_resource_id: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub fn registry() -> &'static Registry {
        static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        REGISTRY.get_or_init(|| Registry::new([PlainRentals::DECLARATION], []).with_model::<ExampleResource>())
    }
}

/// w15's shape with the default serializer: attributes, `links`, then the sideloads.
pub mod w15 {
    use super::*;

    #[dionysus::topic(namespace = "v15", name = "rentals", partition_key = "account_id")]
    pub struct SideloadedRentals;

    #[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
    #[diesel(table_name = example_resources)]
    #[diesel(belongs_to(super::ExamplePublishableCancelableResource))]
    #[publishable(model_name = "ExampleResource")]
    #[publish(topic = SideloadedRentals, with(ExamplePublishableResource, super::ExamplePublishableCancelableResource))]
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
    #[publishable(model_name = "ExamplePublishableResource")]
    pub struct ExamplePublishableResource {
        pub id: i64,
        pub account_id: Option<i64>,
        pub example_resource_id: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub fn registry() -> &'static Registry {
        static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        REGISTRY.get_or_init(|| {
            Registry::new([SideloadedRentals::DECLARATION], [])
                .with_model::<ExampleResource>()
                .with_model::<ExamplePublishableResource>()
                .with_model::<super::ExamplePublishableCancelableResource>()
        })
    }
}

#[test]
fn the_declarations_are_consistent() {
    registry().validate().unwrap();
    w01::registry().validate().unwrap();
    w15::registry().validate().unwrap();
}
