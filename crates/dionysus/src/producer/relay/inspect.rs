//! What an operator asks of the outbox: the backlog and its oldest row, the parked rows, and
//! making parked rows publishable again. Shared by `dionysus outbox stats|retry` and the events
//! API's `/v1/outbox/*` routes; the relay's own backlog gauges are in `monitor`.

use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The outbox at a glance.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OutboxStats {
    /// Rows waiting to be published (not parked).
    pub(crate) backlog: i64,
    /// Of those, rows waiting for a retry after a failed attempt.
    pub(crate) retrying: i64,
    /// Age of the oldest row waiting, in seconds (0 without one).
    pub(crate) oldest_unpublished_seconds: f64,
    /// Rows parked after their last allowed attempt.
    pub(crate) parked: ParkedCounts,
}

/// Parked rows, in all and per error class (`-` for none), most frequent first.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ParkedCounts {
    /// Parked rows in all.
    pub(crate) total: i64,
    /// Per error class.
    pub(crate) by_error_class: serde_json::Map<String, serde_json::Value>,
}

#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    backlog: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_seconds: Option<f64>,
    #[diesel(sql_type = BigInt)]
    retrying: i64,
}

#[derive(diesel::QueryableByName)]
struct ParkedClass {
    #[diesel(sql_type = Nullable<Text>)]
    error_class: Option<String>,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Reads [`OutboxStats`].
pub(crate) async fn stats(conn: &mut AsyncPgConnection) -> Result<OutboxStats, diesel::result::Error> {
    let backlog: Backlog = diesel::sql_query(
        "SELECT count(*) AS backlog, extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds, \
                count(*) FILTER (WHERE retry_at > now()) AS retrying \
         FROM dionysus_outbox WHERE published_at IS NULL AND failed_at IS NULL",
    )
    .get_result(conn)
    .await?;
    let parked: Vec<ParkedClass> = diesel::sql_query(
        "SELECT error_class, count(*) AS count FROM dionysus_outbox \
         WHERE published_at IS NULL AND failed_at IS NOT NULL GROUP BY error_class ORDER BY count DESC, error_class",
    )
    .load(conn)
    .await?;
    let total = parked.iter().map(|row| row.count).sum();
    let by_error_class =
        parked.into_iter().map(|row| (row.error_class.unwrap_or_else(|| "-".to_owned()), row.count.into())).collect();
    Ok(OutboxStats {
        backlog: backlog.backlog,
        retrying: backlog.retrying,
        oldest_unpublished_seconds: backlog.oldest_seconds.unwrap_or(0.0),
        parked: ParkedCounts { total, by_error_class },
    })
}

/// An outbox row parked after its last allowed attempt.
#[derive(Debug, Clone, diesel::QueryableByName, serde::Serialize)]
pub(crate) struct ParkedRow {
    /// Outbox id.
    #[diesel(sql_type = BigInt)]
    pub(crate) id: i64,
    /// Topic.
    #[diesel(sql_type = Text)]
    pub(crate) topic: String,
    /// Model name.
    #[diesel(sql_type = Text)]
    pub(crate) resource_class: String,
    /// Record id.
    #[diesel(sql_type = Text)]
    pub(crate) resource_id: String,
    /// Event name.
    #[diesel(sql_type = Text)]
    pub(crate) event_name: String,
    /// Kind of the last error.
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) error_class: Option<String>,
    /// Message of the last error.
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) error_message: Option<String>,
    /// Failed attempts.
    #[diesel(sql_type = Integer)]
    pub(crate) attempts: i32,
    /// Written at.
    #[diesel(sql_type = Timestamptz)]
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    /// Parked at.
    #[diesel(sql_type = Timestamptz)]
    pub(crate) failed_at: chrono::DateTime<chrono::Utc>,
}

/// Parked rows, oldest first.
pub(crate) async fn parked(
    conn: &mut AsyncPgConnection,
    limit: i64,
    offset: i64,
) -> Result<Vec<ParkedRow>, diesel::result::Error> {
    diesel::sql_query(
        "SELECT id, topic, resource_class, resource_id, event_name, error_class, error_message, attempts, created_at, \
                failed_at \
         FROM dionysus_outbox WHERE published_at IS NULL AND failed_at IS NOT NULL ORDER BY id LIMIT $1 OFFSET $2",
    )
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(conn)
    .await
}

/// Makes parked rows publishable again (attempts reset): only row `id` and only rows of
/// `error_class` when given. Returns how many.
pub(crate) async fn retry_parked(
    conn: &mut AsyncPgConnection,
    id: Option<i64>,
    error_class: Option<String>,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(
        "UPDATE dionysus_outbox SET failed_at = NULL, retry_at = NULL, attempts = 0, updated_at = now() \
         WHERE published_at IS NULL AND failed_at IS NOT NULL \
           AND ($1::bigint IS NULL OR id = $1) AND ($2::text IS NULL OR error_class = $2)",
    )
    .bind::<Nullable<BigInt>, _>(id)
    .bind::<Nullable<Text>, _>(error_class)
    .execute(conn)
    .await
}
