//! The crate's top-level error: every module's error converts into it, so application code
//! can use one `dionysus::Result`, and a handler's own error travels in [`Error::App`].
//!
//! This module only gathers: each error, its message and its context fields belong to the
//! module that raises it, and printing an error with its chain of causes is
//! [`Report`]'s (`telemetry`).

use crate::config::ConfigError;
use crate::db::DbError;
use crate::kafka::TransportError;
use crate::migrate::MigrationError;
use crate::registry::RegistryError;
pub use crate::telemetry::Report;

/// Any dionysus error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The declarations are inconsistent.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The framework migrations could not be applied.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The broker could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The database could not be used.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A database query failed.
    #[error("a database query failed")]
    Query(#[from] diesel::result::Error),
    /// Writing outbox rows failed.
    #[error("writing outbox rows")]
    Outbox(#[from] crate::producer::outbox::OutboxError),
    /// A composed message could not be written to the outbox.
    #[error(transparent)]
    Respond(#[from] crate::producer::respond::RespondError),
    /// The relay could not start or stopped on an error.
    #[error(transparent)]
    Relay(#[from] crate::producer::relay::RelayError),
    /// A genesis could not start or complete.
    #[error(transparent)]
    Genesis(#[from] crate::producer::genesis::GenesisError),
    /// A consumer could not start or stopped on an error.
    #[error(transparent)]
    Consumer(#[from] crate::consumer::ConsumerError),
    /// The delayer could not start.
    #[error(transparent)]
    Delayer(#[from] crate::delayer::DelayerError),
    /// Reading or changing the checkpoint log failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The application's own error, e.g. from a `#[dionysus::consume]` handler:
    /// `Err(dionysus::Error::App(error.into()))`, or [`Error::app`].
    #[error(transparent)]
    App(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps an application's own error (anything that converts into a boxed error: any
    /// `std::error::Error + Send + Sync`, a `String`, an `anyhow::Error`).
    pub fn app(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
        Error::App(error.into())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::ConsumerError;
    use crate::producer::outbox::OutboxError;

    fn database_rejection() -> diesel::result::Error {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key value violates unique constraint \"rentals_pkey\"".to_owned()),
        )
    }

    #[test]
    fn a_nested_diesel_error_prints_once_in_the_chain() {
        let outbox = Error::from(OutboxError::Insert { rows: 2, source: database_rejection() });
        assert_eq!(
            Report(&outbox).to_string(),
            "writing outbox rows: inserting 2 outbox row(s): \
             duplicate key value violates unique constraint \"rentals_pkey\""
        );
        let consumer = Error::from(ConsumerError::Database {
            step: crate::consumer::BatchStep::WriteRows,
            group: "billing".to_owned(),
            topic: "v3_rentals".to_owned(),
            partition: 2,
            first_offset: 10,
            last_offset: 19,
            source: database_rejection(),
        });
        let text = Report(&consumer).to_string();
        assert_eq!(text.matches("duplicate key value").count(), 1, "{text}");
        assert_eq!(
            text,
            "writing replica rows (group billing, v3_rentals/2, offsets 10..=19): \
             duplicate key value violates unique constraint \"rentals_pkey\""
        );
        let query = Error::from(database_rejection());
        assert_eq!(
            Report(&query).to_string(),
            "a database query failed: duplicate key value violates unique constraint \"rentals_pkey\""
        );
    }

    #[test]
    fn an_application_error_keeps_its_own_message() {
        let error = Error::app("the rental is refused");
        assert_eq!(Report(&error).to_string(), "the rental is refused");
    }
}
