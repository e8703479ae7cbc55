//! The crate's top-level error: every module's error converts into it, so application code
//! can use one `dionysus::Result`.

use crate::config::ConfigError;
use crate::db::DbError;
use crate::kafka::TransportError;
use crate::migrate::MigrationError;
use crate::registry::RegistryError;

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
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// Writing outbox rows failed.
    #[error("writing outbox rows: {0}")]
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
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
