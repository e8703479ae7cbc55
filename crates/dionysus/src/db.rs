//! PostgreSQL connections: a diesel-async connection pool for the framework's own work
//! (relay, consumers, genesis). Application code may share it or bring its own.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::pooled_connection::deadpool::{BuildError, Pool as DeadPool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;

/// A pool of async PostgreSQL connections.
pub type Pool = DeadPool<AsyncPgConnection>;

/// A connection borrowed from a [`Pool`].
pub type PooledConnection = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

/// The pool could not be set up or a connection could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// Building the pool failed.
    #[error("cannot build a PostgreSQL pool for {url}")]
    Build {
        /// URL with the password masked.
        url: String,
        /// The pool's error.
        #[source]
        source: BuildError,
    },
    /// No connection could be had from the pool.
    #[error("cannot get a PostgreSQL connection from the pool")]
    Checkout(#[source] diesel_async::pooled_connection::deadpool::PoolError),
}

/// A pool of at most `max_size` connections to `database_url`. Connections are opened
/// lazily, so this does not fail when the database is down; taking a connection does.
///
/// A connection is handed out without a test query (the relay takes one per batch, a
/// consumer one per partition batch, so a `SELECT 1` each time would be a round trip per
/// batch): one whose server went away is known closed and replaced, and a statement on one
/// that broke unnoticed fails like any other database error, which every caller retries.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, DbError> {
    let mut config = diesel_async::pooled_connection::ManagerConfig::default();
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    DeadPool::builder(manager)
        .max_size(max_size.max(1))
        .build()
        .map_err(|source| DbError::Build { url: crate::config::redact(database_url), source })
}

/// A connection from the pool, with a readable error when the database cannot be reached.
pub(crate) async fn checkout(pool: &Pool) -> Result<PooledConnection, DbError> {
    pool.get().await.map_err(|error| DbError::Checkout(redact_pool_error(error)))
}

/// `error` with secrets taken out of its text ([`crate::config::redact`]): PostgreSQL's
/// client library may repeat parts of a connection string it cannot parse.
pub(crate) fn redact_connection_error(error: diesel::ConnectionError) -> diesel::ConnectionError {
    use diesel::ConnectionError;
    match error {
        ConnectionError::BadConnection(text) => ConnectionError::BadConnection(crate::config::redact(&text)),
        ConnectionError::InvalidConnectionUrl(text) => {
            ConnectionError::InvalidConnectionUrl(crate::config::redact(&text))
        }
        other => other,
    }
}

/// A pool error whose connection error is redacted ([`redact_connection_error`]).
fn redact_pool_error(
    error: diesel_async::pooled_connection::deadpool::PoolError,
) -> diesel_async::pooled_connection::deadpool::PoolError {
    use diesel_async::pooled_connection::deadpool::PoolError as Deadpool;
    use diesel_async::pooled_connection::PoolError;
    match error {
        Deadpool::Backend(PoolError::ConnectionError(error)) => {
            Deadpool::Backend(PoolError::ConnectionError(redact_connection_error(error)))
        }
        other => other,
    }
}

/// A raw SQL statement (`diesel::sql_query`) that each connection prepares once and then
/// reuses, keyed by its text and bind types, as diesel does for its own query builder.
///
/// diesel cannot know that the text of a `sql_query` never changes, so it prepares one anew
/// on every run: a round trip to the server, and a parse, before the statement itself goes.
/// A consumer's statements for a batch (its offset, its locks, its upserts) have fixed text,
/// or one per table and column set, so they are worth keeping.
///
/// Only for statements whose plan has nothing to choose (an insert, an upsert, an update by
/// a key of a small table): PostgreSQL may plan a kept statement once for any values, with
/// the statistics of that moment, and keep that plan while a table grows. A statement that
/// chooses between an index and a scan (the relay's reads and marks, a read of replica rows)
/// is prepared on each run. Nor one whose text varies per call (values spelled out in it):
/// each text would stay in the connection's cache; texts built per table and column set go
/// through [`keep_text`], which bounds their number.
#[derive(Debug, Clone)]
pub(crate) struct Reused<Q> {
    query: Q,
    keep: bool,
}

/// Marks a statement as reusable ([`Reused`]).
pub(crate) trait Reuse: Sized {
    /// This statement of fixed text, prepared once per connection.
    fn reused(self) -> Reused<Self> {
        Reused { query: self, keep: true }
    }

    /// This statement, prepared once per connection when `keep` ([`keep_text`]), else on
    /// each run.
    fn reused_if(self, keep: bool) -> Reused<Self> {
        Reused { query: self, keep }
    }
}

impl<Q: QueryFragment<Pg>> Reuse for Q {}

/// How many texts of statements built per table and column set the process keeps prepared,
/// at most. Their number follows the shapes of the records producers send, which is small
/// for any real producer but not bounded by anything the framework controls.
const KEPT_TEXTS: usize = 512;

/// Whether the statement of text `sql` (one of many, built per table and column set) is kept
/// prepared: yes while fewer than [`KEPT_TEXTS`] texts are, and for each of those texts.
pub(crate) fn keep_text(sql: &str) -> bool {
    static KEPT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(mut kept) = KEPT.lock() else { return false };
    if kept.contains(sql) {
        return true;
    }
    kept.len() < KEPT_TEXTS && kept.insert(sql.to_owned())
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Reused<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.query.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, backend: &Pg) -> QueryResult<bool> {
        if self.keep {
            Ok(true)
        } else {
            self.query.is_safe_to_cache_prepared(backend)
        }
    }
}

/// No static id: the cache keys the statement by its text and bind types.
impl<Q> QueryId for Reused<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Reused<Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts built per table and column set are kept up to a bound; past it a new text is
    /// prepared on each run, and the ones kept stay kept.
    #[test]
    fn kept_texts_are_bounded() {
        let text = |n: usize| format!("SELECT {n} AS kept_text_test");
        assert!(keep_text(&text(0)));
        let mut kept = 1;
        while keep_text(&text(kept)) {
            kept += 1;
            assert!(kept <= KEPT_TEXTS, "more than {KEPT_TEXTS} texts kept");
        }
        assert!(!keep_text(&text(kept + 1)), "a new text past the bound is not kept");
        assert!(keep_text(&text(0)), "a text kept before stays kept");
    }
}
