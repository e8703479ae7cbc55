//! The one handle an application builds: [`Dionysus`], from one [`Config`] (the
//! environment, then code overrides) and one [`Registry`] (the declarations linked into the
//! binary, or one built by hand). Every part — the outbox writer, the relay, the consumer,
//! genesis and the command line — is derived from it, so a setting means the same thing
//! everywhere.
//!
//! The free functions ([`outbox::created`](crate::outbox::created), `cli::run`, …) use the
//! *global* handle: the one given to [`Dionysus::install`], or else one read once from the
//! environment.
//!
//! This module owns building and sharing the handle, and sits below the parts: each part adds
//! the method that builds it (`outbox()`, `relay()`, `genesis()` in `producer`, `consumer()`
//! in `consumer`, `cli()` in `cli`), so every import points from a part to the handle.

use std::sync::{Arc, OnceLock};

use crate::config::{Config, ConfigError};
use crate::registry::Registry;

/// The configuration and declarations every part of dionysus is built from. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let dionysus = dionysus::Dionysus::from_env()?;
/// let relay = dionysus.relay().build()?;
/// relay.run(tokio_util::sync::CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Dionysus {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Dionysus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dionysus").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// [`Dionysus::install`] was called after the global handle was already set (or already read
/// from the environment by a free function).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the global dionysus handle is already set; install it once, at start-up, before any outbox write")]
pub struct AlreadyInstalled;

static GLOBAL: OnceLock<Result<Dionysus, ConfigError>> = OnceLock::new();

impl Dionysus {
    /// The defaults overridden by the process environment (`DATABASE_URL`, `DIONYSUS_*`,
    /// `DIONYSUS_KAFKA_<PROPERTY>`; see [`config`](crate::config)), with the binary's
    /// registry.
    pub fn from_env() -> Result<Dionysus, ConfigError> {
        Ok(Dionysus::new(Config::from_env()?.with_env_kafka_properties()))
    }

    /// A handle over `config` and the binary's registry.
    pub fn new(config: Config) -> Dionysus {
        Dionysus::with_registry(config, Registry::global().clone())
    }

    /// A handle over `config` and a registry built by hand (tests, tools).
    pub fn with_registry(config: Config, registry: impl Into<Arc<Registry>>) -> Dionysus {
        Dionysus { inner: Arc::new(Inner { config, registry: registry.into() }) }
    }

    /// The same declarations with `change` applied to a copy of the configuration: code
    /// overrides on top of the environment.
    #[must_use]
    pub fn configure(&self, change: impl FnOnce(&mut Config)) -> Dionysus {
        let mut config = self.inner.config.clone();
        change(&mut config);
        Dionysus { inner: Arc::new(Inner { config, registry: self.inner.registry.clone() }) }
    }

    /// Makes this the global handle the free functions use. Call it once at start-up, before
    /// any of them runs.
    pub fn install(&self) -> Result<(), AlreadyInstalled> {
        GLOBAL.set(Ok(self.clone())).map_err(|_| AlreadyInstalled)
    }

    /// The global handle: the installed one, else one read from the environment the first
    /// time it is needed (a bad setting is reported every time, naming the variable).
    pub fn global() -> Result<&'static Dionysus, ConfigError> {
        GLOBAL.get_or_init(Dionysus::from_env).as_ref().map_err(Clone::clone)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The declarations.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The declarations, shared.
    pub fn registry_arc(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }
}
