//! The publishable contract (dionysus-rb's "Transactional Outbox Publishable" shared
//! behaviour): a model's own ways of creating, updating, soft-deleting, restoring and
//! destroying a record ([`PublishableFixture`]) each write the outbox rows the model's
//! declarations promise, and the relay can publish every one of them.
//!
//! [`publishable_contract`] runs the steps in one transaction that it rolls back, so the test
//! database is left as it was. After each step it reads what the relay would send for the
//! rows the step wrote ([`published_with`]): one message of the step's event (`_created`,
//! `_updated`, `_destroyed` for a soft delete and a destroy, `_created` for a restore) for
//! the record, on each topic the model is published on. Rows the step writes for other models
//! (`with(...)` parents, observers) are allowed and reported.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use diesel_async::{AsyncConnection, AsyncPgConnection, TransactionManager};

use super::published::{published_with, Expected, Published, PublishedError};
use crate::config::ConfigError;
use crate::handle::Dionysus;
use crate::producer::publishable::{model_entry, Publishable};
use crate::registry::RegistryError;
use crate::wire::naming::{event_name, EventKind};

/// The error a fixture's step returns.
pub type FixtureError = Box<dyn std::error::Error + Send + Sync + 'static>;

type Transactions = <AsyncPgConnection as AsyncConnection>::TransactionManager;

/// The application's own ways of changing a record of the model, each writing its outbox
/// rows as the application does (its functions, not the outbox writer called directly), for
/// [`publishable_contract`]. `soft_delete` and `restore` are needed when the model is
/// soft-deletable.
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// use dionysus::testing::{FixtureError, PublishableFixture};
///
/// diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, name -> Text } }
///
/// #[derive(Queryable, Selectable, serde::Serialize, dionysus::Publishable)]
/// #[diesel(table_name = rentals)]
/// #[publish(topic = "v3_rentals", partition_key = account_id)]
/// pub struct Rental { id: i64, account_id: i64, name: String }
///
/// impl PublishableFixture for Rental {
///     async fn create(conn: &mut AsyncPgConnection) -> Result<Self, FixtureError> {
///         let rental: Rental = diesel::insert_into(rentals::table)
///             .values((rentals::account_id.eq(1), rentals::name.eq("Loft")))
///             .returning(Rental::as_returning())
///             .get_result(conn)
///             .await?;
///         dionysus::outbox::created(conn, &rental).await?;
///         Ok(rental)
///     }
///
///     async fn update(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
///         let after: Rental = diesel::update(rentals::table.find(rental.id))
///             .set(rentals::name.eq("Loft with a view"))
///             .returning(Rental::as_returning())
///             .get_result(conn)
///             .await?;
///         dionysus::outbox::updated_from(conn, rental, &after).await?;
///         Ok(after)
///     }
///
///     async fn destroy(conn: &mut AsyncPgConnection, rental: Self) -> Result<(), FixtureError> {
///         diesel::delete(rentals::table.find(rental.id)).execute(conn).await?;
///         dionysus::outbox::destroyed(conn, &rental).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait PublishableFixture: Publishable {
    /// Creates a record.
    fn create(conn: &mut AsyncPgConnection) -> impl Future<Output = Result<Self, FixtureError>> + Send;

    /// Changes an attribute of `record` that is published; returns the record as it is now.
    fn update(conn: &mut AsyncPgConnection, record: &Self) -> impl Future<Output = Result<Self, FixtureError>> + Send;

    /// Soft-deletes `record` (sets its soft-delete column); returns it as it is now.
    fn soft_delete(
        _conn: &mut AsyncPgConnection,
        _record: &Self,
    ) -> impl Future<Output = Result<Self, FixtureError>> + Send {
        async { Err(FixtureError::from(StepNotProvided)) }
    }

    /// Restores a soft-deleted `record` (clears its soft-delete column); returns it as it is
    /// now.
    fn restore(
        _conn: &mut AsyncPgConnection,
        _record: &Self,
    ) -> impl Future<Output = Result<Self, FixtureError>> + Send {
        async { Err(FixtureError::from(StepNotProvided)) }
    }

    /// Destroys `record`.
    fn destroy(conn: &mut AsyncPgConnection, record: Self) -> impl Future<Output = Result<(), FixtureError>> + Send;
}

/// What the default `soft_delete` and `restore` of a [`PublishableFixture`] return.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this step of the fixture is not implemented")]
pub struct StepNotProvided;

/// A step of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// [`PublishableFixture::create`]: `_created`.
    Create,
    /// [`PublishableFixture::update`]: `_updated`.
    Update,
    /// [`PublishableFixture::soft_delete`]: `_destroyed`.
    SoftDelete,
    /// [`PublishableFixture::restore`]: `_created`.
    Restore,
    /// [`PublishableFixture::destroy`]: `_destroyed`.
    Destroy,
}

impl Step {
    fn event(self) -> EventKind {
        match self {
            Step::Create | Step::Restore => EventKind::Created,
            Step::Update => EventKind::Updated,
            Step::SoftDelete | Step::Destroy => EventKind::Destroyed,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Create => "create",
            Step::Update => "update",
            Step::SoftDelete => "soft_delete",
            Step::Restore => "restore",
            Step::Destroy => "destroy",
        })
    }
}

/// The contract does not hold (or could not be checked).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The global handle's configuration could not be read.
    #[error("reading the dionysus configuration of the global handle")]
    Config(#[source] ConfigError),
    /// The declarations are inconsistent.
    #[error("the declarations do not validate")]
    Registry(#[source] RegistryError),
    /// The model has no `#[publish(...)]`.
    #[error("{model} is not published on any topic: add `#[publish(topic = ...)]` to it")]
    NotPublished {
        /// Model name.
        model: &'static str,
    },
    /// The contract's transaction could not be begun or rolled back.
    #[error("{0} the contract's transaction")]
    Transaction(&'static str, #[source] diesel::result::Error),
    /// A step of the fixture failed.
    #[error("the fixture's `{step}` of {model} failed")]
    Fixture {
        /// Model name.
        model: &'static str,
        /// The step.
        step: Step,
        /// The fixture's error.
        #[source]
        source: FixtureError,
    },
    /// The model is soft-deletable but its fixture cannot soft-delete or restore.
    #[error(
        "{model} is soft-deletable (column `{column}`): implement `soft_delete` and `restore` of its \
         PublishableFixture"
    )]
    StepMissing {
        /// Model name.
        model: &'static str,
        /// The soft-delete column.
        column: String,
    },
    /// What the relay would send could not be read after a step.
    #[error("after the `{step}` step")]
    Published {
        /// The step.
        step: Step,
        /// Why.
        #[source]
        source: PublishedError,
    },
    /// A step did not write the rows the declarations promise.
    #[error("`{step}` of {model} must publish {expected}; the relay would send for its rows:\n{found}")]
    Rows {
        /// Model name.
        model: &'static str,
        /// The step.
        step: Step,
        /// What was expected, in words.
        expected: String,
        /// The messages of the step's rows.
        found: Published,
    },
}

/// The messages each step's rows make.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContractReport {
    /// Per step, in order, what the relay would send for the rows it wrote.
    pub steps: Vec<(Step, Published)>,
}

impl fmt::Display for ContractReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (step, published)) in self.steps.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{step}:\n{published}")?;
        }
        Ok(())
    }
}

/// The publishable contract of model `T` (dionysus-rb's "Transactional Outbox Publishable"
/// shared behaviour); check it with [`Contract::check`].
///
/// The check creates, updates, soft-deletes and restores (when the model is soft-deletable)
/// and destroys a record through `T`'s [`PublishableFixture`], in one transaction that it
/// rolls back. After each step it reads what the relay would send for the rows the step wrote
/// ([`published_with`]) and expects exactly one message of the step's event for the record on
/// each topic the model is published on: `_created`, `_updated`, `_destroyed` for the soft
/// delete, `_created` for the restore, `_destroyed` for the destroy. Rows the step writes for
/// other models (`with(...)` parents, observers) are allowed and reported.
pub fn publishable_contract<T: PublishableFixture>() -> Contract<T> {
    Contract { handle: None, model: PhantomData }
}

/// The publishable contract of one model, from [`publishable_contract`].
#[derive(Debug)]
#[must_use = "a contract checks nothing until `check` is awaited"]
pub struct Contract<T> {
    handle: Option<Dionysus>,
    model: PhantomData<fn() -> T>,
}

impl<T: PublishableFixture> Contract<T> {
    /// Checks with the declarations and settings of `handle` (default: the global handle).
    pub fn handle(mut self, handle: &Dionysus) -> Self {
        self.handle = Some(handle.clone());
        self
    }

    /// Runs every step in a transaction on `conn` (rolled back at the end) and checks what
    /// each wrote.
    pub async fn check(self, conn: &mut AsyncPgConnection) -> Result<ContractReport, ContractError> {
        let handle = match self.handle {
            Some(handle) => handle,
            None => Dionysus::global().map_err(ContractError::Config)?.clone(),
        };
        handle.registry().validate().map_err(ContractError::Registry)?;
        let model = model_entry::<T>();
        let mut topics: Vec<&'static str> =
            handle.registry().publications_of(model.model_name).map(|publication| publication.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        if topics.is_empty() {
            return Err(ContractError::NotPublished { model: model.model_name });
        }
        let soft_delete = model.soft_delete_column(&handle.config().producer.soft_delete_column).map(str::to_owned);
        Transactions::begin_transaction(conn).await.map_err(|e| ContractError::Transaction("beginning", e))?;
        let mut run = Run {
            handle: &handle,
            model: model.model_name,
            topics: &topics,
            seen: 0,
            report: ContractReport::default(),
        };
        let result = run.steps::<T>(conn, soft_delete).await;
        let rolled_back = Transactions::rollback_transaction(conn).await;
        result?;
        rolled_back.map_err(|e| ContractError::Transaction("rolling back", e))?;
        Ok(run.report)
    }
}

struct Run<'a> {
    handle: &'a Dionysus,
    model: &'static str,
    topics: &'a [&'static str],
    /// The highest outbox id a step has been checked for.
    seen: i64,
    report: ContractReport,
}

impl Run<'_> {
    async fn steps<T: PublishableFixture>(
        &mut self,
        conn: &mut AsyncPgConnection,
        soft_delete: Option<String>,
    ) -> Result<(), ContractError> {
        let model = self.model;
        let fixture = |step| move |source: FixtureError| ContractError::Fixture { model, step, source };
        let record = T::create(conn).await.map_err(fixture(Step::Create))?;
        self.expect(conn, Step::Create, &record.primary_key()).await?;
        let record = T::update(conn, &record).await.map_err(fixture(Step::Update))?;
        self.expect(conn, Step::Update, &record.primary_key()).await?;
        let record = match soft_delete {
            Some(column) => {
                let missing = |step| {
                    let column = column.clone();
                    move |source: FixtureError| {
                        if source.downcast_ref::<StepNotProvided>().is_some() {
                            ContractError::StepMissing { model, column }
                        } else {
                            ContractError::Fixture { model, step, source }
                        }
                    }
                };
                let record = T::soft_delete(conn, &record).await.map_err(missing(Step::SoftDelete))?;
                self.expect(conn, Step::SoftDelete, &record.primary_key()).await?;
                let record = T::restore(conn, &record).await.map_err(missing(Step::Restore))?;
                self.expect(conn, Step::Restore, &record.primary_key()).await?;
                record
            }
            None => record,
        };
        let id = record.primary_key();
        T::destroy(conn, record).await.map_err(fixture(Step::Destroy))?;
        self.expect(conn, Step::Destroy, &id).await
    }

    /// Checks the rows written since the last step: one message of the step's event for
    /// record `id` on each of the model's topics, and no other message of the record there.
    async fn expect(&mut self, conn: &mut AsyncPgConnection, step: Step, id: &str) -> Result<(), ContractError> {
        let all =
            published_with(self.handle, conn).await.map_err(|source| ContractError::Published { step, source })?;
        let found = all.since(self.seen);
        self.seen = all.last_outbox_id().unwrap_or(self.seen).max(self.seen);
        let event = event_name(self.model, step.event());
        let own = Expected::model(self.model).id(id);
        let fits = self.topics.iter().all(|topic| {
            let on_topic = found.on_topic(topic).matching(&own);
            on_topic.len() == 1 && on_topic.iter().all(|message| message.event_name == event)
        });
        if fits {
            self.report.steps.push((step, found));
            return Ok(());
        }
        let topics = self.topics.iter().map(|topic| format!("`{topic}`")).collect::<Vec<_>>().join(", ");
        Err(ContractError::Rows {
            model: self.model,
            step,
            expected: format!("exactly one `{event}` message of {} {id} on each of {topics}", self.model),
            found,
        })
    }
}
