//! Writing without publishing, for a scope: data migrations, seeds and backfills that change
//! rows which other services must not hear about (deimos' `disable_producers`).
//!
//! Inside [`Suppress::scope`] the outbox writer writes **no outbox rows** for the suppressed
//! models — not marked rows, none at all — so nothing of those writes can ever be published,
//! not even by a relay started later; the records themselves are written as usual. Rows of
//! other models (a suppressed model's `with(...)` parents, its observers, composed messages)
//! are suppressed when *their* model is. The scope is the future passed in, on the task that
//! polls it: a task spawned inside it is not suppressed. To stop writing outbox rows for the
//! whole process, set `DIONYSUS_TRANSACTIONAL_OUTBOX_ENABLED=false` instead.
//!
//! This module owns the scope and the question "is this model suppressed here?"; the outbox
//! writer asks it for every row it writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use super::publishable::{model_entry, Publishable};

tokio::task_local! {
    static SUPPRESSED: Arc<Suppress>;
}

/// Which models write no outbox rows inside a [`Suppress::scope`].
///
/// ```no_run
/// # use diesel_async::AsyncPgConnection;
/// # async fn seed(conn: &mut AsyncPgConnection) -> dionysus::Result<()> { Ok(()) }
/// # async fn example(conn: &mut AsyncPgConnection) -> dionysus::Result<()> {
/// use dionysus::outbox::Suppress;
///
/// // Every model: the seed writes its records and no outbox row.
/// Suppress::all().scope(seed(conn)).await?;
/// # Ok(())
/// # }
/// ```
///
/// `Suppress::model::<Rental>().and::<Account>()` suppresses only those models.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a suppression does nothing until `scope` runs a future with it"]
pub struct Suppress {
    /// `None`: every model; else the model names (as on the wire) that are suppressed.
    models: Option<BTreeSet<&'static str>>,
}

impl Suppress {
    /// Suppresses every model.
    pub fn all() -> Suppress {
        Suppress { models: None }
    }

    /// Suppresses model `T` only (add more with [`Suppress::and`]).
    pub fn model<T: Publishable>() -> Suppress {
        Suppress { models: Some(BTreeSet::from([model_entry::<T>().model_name])) }
    }

    /// Suppresses model `T` too.
    pub fn and<T: Publishable>(mut self) -> Suppress {
        if let Some(models) = &mut self.models {
            models.insert(model_entry::<T>().model_name);
        }
        self
    }

    /// Runs `future` with these models suppressed (nested scopes add up: a model suppressed
    /// by an outer scope stays suppressed inside an inner one).
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        let combined = match SUPPRESSED.try_with(|outer| outer.as_ref().clone()) {
            Ok(outer) => self.union(outer),
            Err(_) => self,
        };
        SUPPRESSED.scope(Arc::new(combined), future).await
    }

    fn union(self, other: Suppress) -> Suppress {
        match (self.models, other.models) {
            (Some(mut mine), Some(theirs)) => {
                mine.extend(theirs);
                Suppress { models: Some(mine) }
            }
            _ => Suppress::all(),
        }
    }

    fn covers(&self, model_name: &str) -> bool {
        self.models.as_ref().is_none_or(|models| models.contains(model_name))
    }
}

/// Whether the current task is inside a scope that suppresses `model_name`.
pub(crate) fn is_suppressed(model_name: &str) -> bool {
    SUPPRESSED.try_with(|suppress| suppress.covers(model_name)).unwrap_or(false)
}

/// Whether the current task is inside a scope that suppresses every model.
pub(crate) fn everything_suppressed() -> bool {
    SUPPRESSED.try_with(|suppress| suppress.models.is_none()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_suppressed_outside_a_scope() {
        assert!(!is_suppressed("Rental"));
        assert!(!everything_suppressed());
    }

    #[tokio::test]
    async fn a_scope_covers_its_models_and_nested_scopes_add_up() {
        let rental = Suppress { models: Some(BTreeSet::from(["Rental"])) };
        let account = Suppress { models: Some(BTreeSet::from(["Account"])) };
        rental
            .scope(async {
                assert!(is_suppressed("Rental"));
                assert!(!is_suppressed("Account"));
                account
                    .scope(async {
                        assert!(is_suppressed("Rental") && is_suppressed("Account"));
                        assert!(!everything_suppressed());
                    })
                    .await;
                assert!(!is_suppressed("Account"), "the inner scope ended");
            })
            .await;
        assert!(!is_suppressed("Rental"));
        Suppress::all().scope(async { assert!(everything_suppressed() && is_suppressed("Anything")) }).await;
    }

    #[tokio::test]
    async fn a_task_spawned_inside_a_scope_is_not_suppressed() {
        let spawned = Suppress::all().scope(async { tokio::spawn(async { is_suppressed("Rental") }).await }).await;
        assert!(!spawned.unwrap());
    }
}
