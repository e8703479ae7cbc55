//! The framework's own tables (outbox, consumer offsets, event checkpoint log, genesis runs),
//! shipped as diesel migrations embedded in the binary.
//!
//! [`migrate`] applies the pending ones, [`revert_all`] removes them again, and
//! [`copy_migrations`] writes them into an application's own `migrations/` folder for teams
//! that run every migration with their own tooling (`diesel migration run`). The version
//! names are the same either way, so both routes can be mixed safely.
//!
//! This module owns the schema of the framework tables; it does not touch application
//! tables.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use diesel::backend::Backend;
use diesel::connection::BoxableConnection;
use diesel::migration::{self, Migration, MigrationMetadata, MigrationName, MigrationSource, MigrationVersion};
use diesel::pg::Pg;
use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::MigrationHarness;

/// One embedded migration: its directory name (`<version>_<name>`) and SQL.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedMigration {
    /// Directory name, e.g. `2026-11-23-000001_dionysus_outbox`; the version is the part
    /// before the first `_`.
    pub name: &'static str,
    /// SQL that creates the tables.
    pub up: &'static str,
    /// SQL that drops them.
    pub down: &'static str,
}

macro_rules! embedded {
    ($($dir:literal),* $(,)?) => {
        &[$(EmbeddedMigration {
            name: $dir,
            up: include_str!(concat!("../migrations/", $dir, "/up.sql")),
            down: include_str!(concat!("../migrations/", $dir, "/down.sql")),
        }),*]
    };
}

/// Every framework migration, oldest first.
pub const MIGRATIONS: &[EmbeddedMigration] = embedded![
    "2026-11-23-000001_dionysus_outbox",
    "2026-11-23-000002_dionysus_consumer_offsets",
    "2026-11-23-000003_dionysus_event_checkpoints",
    "2026-11-23-000004_dionysus_genesis_runs",
    "2026-11-23-000005_dionysus_relay",
    "2026-11-23-000006_dionysus_genesis_visible_only",
    "2026-11-23-000007_dionysus_outbox_lean_indexes",
    "2026-12-02-000010_dionysus_genesis_conditions",
    "2026-12-02-000011_dionysus_outbox_messages",
    "2026-12-02-000012_dionysus_outbox_encryption",
    "2026-12-03-000020_dionysus_checkpoint_log",
    "2026-12-03-000050_dionysus_outbox_autovacuum",
    "2026-12-03-000070_dionysus_reinit",
    "2026-12-05-000080_dionysus_relay_handover",
];

/// Failure to apply, revert or copy the framework migrations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL at {url} to run the dionysus migrations")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: diesel::ConnectionError,
    },
    /// A migration failed; nothing of that migration was kept (each runs in a transaction).
    #[error("a dionysus migration failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The blocking migration task could not run.
    #[error("the migration task was cancelled or panicked")]
    Task(#[source] tokio::task::JoinError),
    /// Writing migration files failed.
    #[error("cannot write migration files to {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Applies every pending framework migration; returns the versions it applied (empty when
/// the database was up to date).
pub async fn migrate(database_url: &str) -> Result<Vec<String>, MigrationError> {
    with_harness(database_url, |harness| {
        harness
            .run_pending_migrations(FrameworkMigrations)
            .map(|versions| versions.into_iter().map(|v| v.to_string()).collect())
    })
    .await
}

/// Reverts every applied framework migration, newest first; returns the reverted versions.
/// Other migrations recorded in the same database are left alone.
pub async fn revert_all(database_url: &str) -> Result<Vec<String>, MigrationError> {
    with_harness(database_url, |harness| {
        let applied: Vec<String> =
            harness.applied_migrations()?.into_iter().map(|version| version.to_string()).collect();
        let mut reverted = Vec::new();
        for migration in MIGRATIONS.iter().rev() {
            if applied.iter().any(|version| version == version_of(migration.name)) {
                let version = harness.revert_migration(migration)?;
                reverted.push(version.to_string());
            }
        }
        Ok(reverted)
    })
    .await
}

/// Names of the framework migrations not yet applied to the database. It only reads: a role
/// that may not create tables (a consumer's, which `check` and `consume` run as) can ask,
/// where diesel's own `pending_migrations` would first create its bookkeeping table.
pub async fn pending(database_url: &str) -> Result<Vec<String>, MigrationError> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    with_harness(database_url, |harness| {
        use diesel::RunQueryDsl;
        let found: Vec<Found> =
            diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS found").load(harness)?;
        let applied: Vec<Applied> = if found.first().is_some_and(|row| row.found) {
            diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations").load(harness)?
        } else {
            Vec::new()
        };
        Ok(MIGRATIONS
            .iter()
            .filter(|migration| !applied.iter().any(|row| row.version == version_of(migration.name)))
            .map(|migration| migration.name.to_owned())
            .collect())
    })
    .await
}

type Harness = AsyncConnectionWrapper<AsyncPgConnection>;
type HarnessResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn with_harness<T, F>(database_url: &str, work: F) -> Result<T, MigrationError>
where
    T: Send + 'static,
    F: FnOnce(&mut Harness) -> HarnessResult<T> + Send + 'static,
{
    let url = database_url.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let mut harness = Harness::establish(&url).map_err(|source| MigrationError::Connect {
            url: crate::config::redact(&url),
            source: crate::db::redact_connection_error(source),
        })?;
        work(&mut harness).map_err(MigrationError::Failed)
    });
    task.await.map_err(MigrationError::Task)?
}

/// Outcome of [`copy_migrations`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Migration directories written.
    pub created: Vec<PathBuf>,
    /// Migration directories that already existed and were left untouched.
    pub skipped: Vec<PathBuf>,
}

/// Writes every framework migration into `dir` (e.g. an application's `migrations/`), as
/// `<version>_<name>/up.sql` and `down.sql`. Existing migration directories are left
/// untouched, so running it twice is harmless.
pub fn copy_migrations(dir: &Path) -> Result<CopyReport, MigrationError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrationError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut report = CopyReport::default();
    for migration in MIGRATIONS {
        let target = dir.join(migration.name);
        if target.exists() {
            report.skipped.push(target);
            continue;
        }
        std::fs::create_dir_all(&target).map_err(io_error(&target))?;
        for (file, sql) in [("up.sql", migration.up), ("down.sql", migration.down)] {
            let path = target.join(file);
            std::fs::write(&path, sql).map_err(io_error(&path))?;
        }
        report.created.push(target);
    }
    Ok(report)
}

fn version_of(name: &str) -> &str {
    name.split_once('_').map_or(name, |(version, _)| version)
}

/// The embedded migrations as a diesel [`MigrationSource`], for applications that run
/// migrations through their own `MigrationHarness`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameworkMigrations;

impl MigrationSource<Pg> for FrameworkMigrations {
    fn migrations(&self) -> migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        Ok(MIGRATIONS.iter().map(|m| Box::new(*m) as Box<dyn Migration<Pg>>).collect())
    }
}

impl<DB: Backend> Migration<DB> for EmbeddedMigration {
    fn run(&self, conn: &mut dyn BoxableConnection<DB>) -> migration::Result<()> {
        Ok(conn.batch_execute(self.up)?)
    }

    fn revert(&self, conn: &mut dyn BoxableConnection<DB>) -> migration::Result<()> {
        Ok(conn.batch_execute(self.down)?)
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        self
    }

    fn name(&self) -> &dyn MigrationName {
        self
    }
}

impl MigrationMetadata for EmbeddedMigration {}

impl MigrationName for EmbeddedMigration {
    fn version(&self) -> MigrationVersion<'_> {
        MigrationVersion::from(version_of(self.name))
    }
}

impl fmt::Display for EmbeddedMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_ordered() {
        let versions: Vec<&str> = MIGRATIONS.iter().map(|m| version_of(m.name)).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn copy_migrations_writes_once_and_skips_existing() {
        let dir = std::env::temp_dir().join(format!("dionysus-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = copy_migrations(&dir).unwrap();
        assert_eq!(first.created.len(), MIGRATIONS.len());
        let up = std::fs::read_to_string(dir.join(MIGRATIONS[0].name).join("up.sql")).unwrap();
        assert!(up.contains("CREATE TABLE dionysus_outbox"));
        let second = copy_migrations(&dir).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(second.skipped.len(), MIGRATIONS.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
