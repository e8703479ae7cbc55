//! A PostgreSQL database of its own for each test: copied from a template that has the
//! framework migrations (and the application's own schema) applied, dropped when the test
//! ends, so tests run in parallel and leave nothing behind. Plus unique names for the other
//! things tests share a server for (topics, consumer groups).
//!
//! The template is built once per schema — its name carries a hash of the migrations and of
//! the SQL given to [`TestDatabaseBuilder::sql`] — under an advisory lock, so concurrent test
//! processes build it once; later databases are copies (`CREATE DATABASE … TEMPLATE`), which
//! is faster than migrating each one. Templates stay on the server for the next run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use sha2::{Digest, Sha256};

use crate::config::{redact, Config, ConfigError};
use crate::db::{DbError, Pool};
use crate::migrate::{MigrationError, MIGRATIONS};

/// A test database could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDatabaseError {
    /// The server URL could not be read from the environment.
    #[error("reading DATABASE_URL")]
    Config(#[source] ConfigError),
    /// The server could not be reached.
    #[error(
        "cannot connect to PostgreSQL at {url}: start it (pg_ctlcluster --skip-systemctl-redirect \
         $(ls /etc/postgresql) main start) or set DATABASE_URL to a server where you may create databases"
    )]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// diesel's error.
        #[source]
        source: diesel::ConnectionError,
    },
    /// A statement on the server failed.
    #[error("{step} (database {database})")]
    Query {
        /// What was being done.
        step: &'static str,
        /// The database it was done for.
        database: String,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The framework migrations failed on the template.
    #[error("applying the dionysus migrations to the template {template}")]
    Migrate {
        /// The template database.
        template: String,
        /// The migration error.
        #[source]
        source: MigrationError,
    },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test running on the same server uses: `<prefix>_<pid>_<n>_<random>`,
/// lower case, short enough for a PostgreSQL identifier (a long prefix is cut). Use it for
/// databases, topics and consumer groups.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::random();
    let prefix: String = prefix.chars().take(32).collect::<String>().to_lowercase();
    format!("{prefix}_{}_{n}_{random:08x}", std::process::id())
}

/// Builds a [`TestDatabase`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct TestDatabaseBuilder {
    server_url: Option<String>,
    migrations: bool,
    sql: Vec<String>,
    prefix: String,
}

impl TestDatabaseBuilder {
    /// The server to create the database on, as the URL of any database on it (default:
    /// `DATABASE_URL`, else the local server with user `postgres`).
    pub fn server_url(mut self, url: impl Into<String>) -> Self {
        self.server_url = Some(url.into());
        self
    }

    /// Whether the framework migrations are applied (default: yes).
    pub fn migrations(mut self, on: bool) -> Self {
        self.migrations = on;
        self
    }

    /// SQL run on the template after the migrations, e.g. the application's tables; every
    /// database of the same SQL is a copy of the same template.
    pub fn sql(mut self, sql: impl Into<String>) -> Self {
        self.sql.push(sql.into());
        self
    }

    /// Prefix of the database's name (default `dionysus_test`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Creates the database (and, the first time, its template).
    pub async fn create(self) -> Result<TestDatabase, TestDatabaseError> {
        let server_url = match self.server_url {
            Some(url) => url,
            None => Config::from_env().map_err(TestDatabaseError::Config)?.database_url,
        };
        let name = unique_name(&self.prefix);
        let mut admin = connect(&server_url).await?;
        let template = if self.migrations || !self.sql.is_empty() {
            Some(ensure_template(&mut admin, &server_url, self.migrations, &self.sql).await?)
        } else {
            None
        };
        let statement = match &template {
            Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        // A copy fails while anyone is connected to the template (its builder may still be
        // disconnecting): retry for a while.
        retry(&mut admin, &statement, Duration::from_secs(10)).await.map_err(|source| TestDatabaseError::Query {
            step: "creating the test database",
            database: name.clone(),
            source,
        })?;
        Ok(TestDatabase { url: with_database(&server_url, &name), server_url, name, keep: false })
    }
}

/// A database of its own for one test; dropped (with every connection to it) when the value
/// is dropped.
///
/// It is a copy of a template built once per schema — the framework migrations and the SQL
/// given to [`TestDatabaseBuilder::sql`], named after their hash, built under an advisory
/// lock so that concurrent test processes build it once — which is faster than migrating
/// each database. Templates (`dionysus_tpl_…`) stay on the server for the next run.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use dionysus::testing::TestDatabase;
///
/// let db = TestDatabase::builder().sql("CREATE TABLE rentals (id BIGSERIAL PRIMARY KEY)").create().await?;
/// let mut conn = db.connection().await?;
/// let handle = dionysus::Dionysus::new(dionysus::Config::default()).configure(|config| db.configure(config));
/// # let _ = (&mut conn, handle);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server_url: String,
    keep: bool,
}

impl TestDatabase {
    /// A new database with the framework migrations applied, on the server of
    /// `DATABASE_URL`.
    pub async fn create() -> Result<TestDatabase, TestDatabaseError> {
        TestDatabase::builder().create().await
    }

    /// A builder: another server, no migrations, the application's schema.
    pub fn builder() -> TestDatabaseBuilder {
        TestDatabaseBuilder { server_url: None, migrations: true, sql: Vec::new(), prefix: "dionysus_test".to_owned() }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to it.
    pub async fn connection(&self) -> Result<AsyncPgConnection, TestDatabaseError> {
        connect(&self.url).await
    }

    /// A pool of at most `max_size` connections to it.
    pub fn pool(&self, max_size: usize) -> Result<Pool, DbError> {
        crate::db::pool(&self.url, max_size)
    }

    /// Points a configuration at this database (`database_url`), e.g. in
    /// [`Dionysus::configure`](crate::Dionysus::configure).
    pub fn configure(&self, config: &mut Config) {
        config.database_url = self.url.clone();
    }

    /// Keeps the database after the test (to look at it); returns its URL.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.url.clone()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (name, server_url) = (self.name.clone(), self.server_url.clone());
        // Drop runs inside or outside a runtime; a thread with a runtime of its own works in
        // both.
        let dropped = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut admin = connect(&server_url).await.map_err(|e| crate::telemetry::Report(&e).to_string())?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(database = %self.name, "could not drop the test database: {error}"),
            Err(_) => tracing::warn!(database = %self.name, "could not drop the test database: its thread panicked"),
        }
    }
}

async fn connect(url: &str) -> Result<AsyncPgConnection, TestDatabaseError> {
    AsyncPgConnection::establish(url).await.map_err(|source| TestDatabaseError::Connect {
        url: redact(url),
        source: crate::db::redact_connection_error(source),
    })
}

/// The name of the template for these migrations and this SQL: `dionysus_tpl_<hash>`.
fn template_name(migrations: bool, sql: &[String]) -> String {
    let mut hash = Sha256::new();
    if migrations {
        for migration in MIGRATIONS {
            hash.update(migration.name.as_bytes());
            hash.update([0]);
            hash.update(migration.up.as_bytes());
            hash.update([0]);
        }
    }
    hash.update([1]);
    for statement in sql {
        hash.update(statement.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("dionysus_tpl_{hex}")
}

/// Makes sure the template exists: builds it under a name of its own and renames it when
/// complete, holding an advisory lock so that concurrent processes build it once.
async fn ensure_template(
    admin: &mut AsyncPgConnection,
    server_url: &str,
    migrations: bool,
    sql: &[String],
) -> Result<String, TestDatabaseError> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let template = template_name(migrations, sql);
    let query = |step| {
        let database = template.clone();
        move |source| TestDatabaseError::Query { step, database, source }
    };
    // The lock key is the template's hash, read as a number.
    let key = template
        .trim_start_matches("dionysus_tpl_")
        .chars()
        .fold(0_i64, |key, c| key.wrapping_mul(16).wrapping_add(i64::from(c.to_digit(16).unwrap_or(0))));
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(key)
        .execute(admin)
        .await
        .map_err(query("waiting for the template lock"))?;
    let built = async {
        let exists = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(&template)
            .get_result::<Count>(admin)
            .await
            .map_err(query("looking for the template"))?
            .n
            > 0;
        if exists {
            return Ok(());
        }
        let building = unique_name("dionysus_tpl_build");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .map_err(query("creating the template"))?;
        let building_url = with_database(server_url, &building);
        if migrations {
            crate::migrate::migrate(&building_url)
                .await
                .map_err(|source| TestDatabaseError::Migrate { template: template.clone(), source })?;
        }
        if !sql.is_empty() {
            let mut conn = connect(&building_url).await?;
            for statement in sql {
                conn.batch_execute(statement).await.map_err(query("running the schema SQL on the template"))?;
            }
        }
        let rename = format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\"");
        retry(admin, &rename, Duration::from_secs(10)).await.map_err(query("naming the template"))
    }
    .await;
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)").bind::<BigInt, _>(key).execute(admin).await;
    built?;
    unlocked.map_err(query("releasing the template lock"))?;
    Ok(template)
}

/// Runs `statement` until it succeeds or `within` has passed (then returns its last error).
async fn retry(conn: &mut AsyncPgConnection, statement: &str, within: Duration) -> Result<(), diesel::result::Error> {
    let deadline = Instant::now() + within;
    loop {
        match conn.batch_execute(statement).await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `url` with its database replaced by `database` (the query string kept).
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |scheme| scheme + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }

    #[test]
    fn templates_are_named_after_their_schema() {
        let plain = template_name(true, &[]);
        assert_eq!(plain, template_name(true, &[]));
        assert_ne!(plain, template_name(false, &[]));
        assert_ne!(plain, template_name(true, &["CREATE TABLE t ()".to_owned()]));
        assert!(plain.len() < 63 && plain.starts_with("dionysus_tpl_"));
    }

    #[test]
    fn unique_names_differ_and_fit_an_identifier() {
        let long = "a".repeat(80);
        let (one, two) = (unique_name(&long), unique_name(&long));
        assert_ne!(one, two);
        assert!(one.len() <= 63, "{one}");
    }
}
