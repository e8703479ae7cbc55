//! Bucket leases: which ordering buckets a relay worker may publish. Each worker heartbeats,
//! counts the live workers, and holds a fair share of the 64 buckets, renewing its leases
//! well before they expire. Buckets of a worker that stopped heartbeating are taken over once
//! their lease has expired; a worker that shuts down releases its buckets at once.
//!
//! Rebalancing is prompt: leases are maintained at least every second (more often than the
//! expiry needs), a worker short of its share tries again every 100 ms, and a worker counts
//! the other workers of its own relay as live from the start, so workers started together
//! split the buckets at once instead of the first one taking them all. So a dead worker's
//! buckets move between `lock_expiry` − 1 s and `lock_expiry` + 1 s after it died (its last
//! renewal was at most a second before; the others look at least every second after), and a
//! worker that shuts down has its buckets taken within about a second. The fault suite
//! (`tests/faults`) measures both.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Double, SmallInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Number of ordering buckets (fixed by the migration's `% 64`).
pub(crate) const BUCKETS: i64 = 64;

#[derive(diesel::QueryableByName)]
struct Bucket {
    #[diesel(sql_type = SmallInt)]
    bucket: i16,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// The buckets one worker holds.
#[derive(Debug)]
pub(crate) struct Leases {
    worker_id: String,
    expiry: Duration,
    /// Workers of this relay process (all of them live, or about to be).
    local_workers: i64,
    /// The fair share computed at the last maintenance.
    share: i64,
    buckets: Vec<i16>,
    renewed_at: Option<Instant>,
}

/// Longest time between two maintenances, whatever the expiry.
const MAINTAIN_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
/// How soon a worker short of its share tries to acquire buckets again.
const HUNGRY_RETRY: Duration = Duration::from_millis(100);

impl Leases {
    pub(crate) fn new(worker_id: String, expiry: Duration, local_workers: usize) -> Leases {
        let local_workers = i64::try_from(local_workers.max(1)).unwrap_or(1);
        Leases { worker_id, expiry, local_workers, share: BUCKETS, buckets: Vec::new(), renewed_at: None }
    }

    /// The buckets held now.
    pub(crate) fn buckets(&self) -> &[i16] {
        &self.buckets
    }

    /// Whether the leases are due for renewal (a third of the expiry has passed).
    pub(crate) fn due(&self) -> bool {
        let hungry = i64::try_from(self.buckets.len()).unwrap_or(i64::MAX) < self.share;
        self.renewed_at.is_none_or(|at| {
            let elapsed = at.elapsed();
            elapsed >= (self.expiry / 3).min(MAINTAIN_AT_LEAST_EVERY) || (hungry && elapsed >= HUNGRY_RETRY)
        })
    }

    /// Whether the leases are still certainly valid (renewed less than an expiry ago, with a
    /// margin), so a batch may start.
    pub(crate) fn valid(&self) -> bool {
        self.renewed_at.is_some_and(|at| at.elapsed() < self.expiry.mul_f64(0.8))
    }

    /// Heartbeats, renews the held leases and rebalances to a fair share.
    pub(crate) async fn maintain(&mut self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        let expiry = self.expiry.as_secs_f64();
        diesel::sql_query(
            "INSERT INTO dionysus_relay_workers (worker_id, heartbeat_at) VALUES ($1, now()) \
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind::<Text, _>(&self.worker_id)
        .execute(conn)
        .await?;
        let live: Count = diesel::sql_query(
            "SELECT count(*) AS count FROM dionysus_relay_workers \
             WHERE heartbeat_at > now() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(expiry)
        .get_result(conn)
        .await?;
        let live = live.count.max(self.local_workers);
        let share = (BUCKETS + live - 1) / live;
        self.share = share;

        let renewed: Vec<Bucket> = diesel::sql_query(
            "UPDATE dionysus_relay_leases SET lease_until = now() + make_interval(secs => $2) \
             WHERE owner = $1 RETURNING bucket",
        )
        .bind::<Text, _>(&self.worker_id)
        .bind::<Double, _>(expiry)
        .load(conn)
        .await?;
        let mut buckets: Vec<i16> = renewed.into_iter().map(|b| b.bucket).collect();
        buckets.sort_unstable();

        let held = i64::try_from(buckets.len()).unwrap_or(i64::MAX);
        if held > share {
            let release: Vec<i16> = buckets.split_off(usize::try_from(share).unwrap_or(0));
            diesel::sql_query(
                "UPDATE dionysus_relay_leases SET owner = NULL, lease_until = 'epoch' \
                 WHERE owner = $1 AND bucket = ANY($2)",
            )
            .bind::<Text, _>(&self.worker_id)
            .bind::<diesel::sql_types::Array<SmallInt>, _>(&release)
            .execute(conn)
            .await?;
        } else if held < share {
            let acquired: Vec<Bucket> = diesel::sql_query(
                "UPDATE dionysus_relay_leases SET owner = $1, lease_until = now() + make_interval(secs => $2) \
                 WHERE bucket IN (SELECT bucket FROM dionysus_relay_leases \
                                  WHERE owner IS NULL OR lease_until < now() \
                                  ORDER BY random() LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING bucket",
            )
            .bind::<Text, _>(&self.worker_id)
            .bind::<Double, _>(expiry)
            .bind::<BigInt, _>(share - held)
            .load(conn)
            .await?;
            buckets.extend(acquired.into_iter().map(|b| b.bucket));
            buckets.sort_unstable();
        }
        self.buckets = buckets;
        self.renewed_at = Some(Instant::now());
        Ok(())
    }

    /// Gives every bucket back and removes the worker's heartbeat (graceful shutdown).
    pub(crate) async fn release(&mut self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        diesel::sql_query("UPDATE dionysus_relay_leases SET owner = NULL, lease_until = 'epoch' WHERE owner = $1")
            .bind::<Text, _>(&self.worker_id)
            .execute(conn)
            .await?;
        diesel::sql_query("DELETE FROM dionysus_relay_workers WHERE worker_id = $1")
            .bind::<Text, _>(&self.worker_id)
            .execute(conn)
            .await?;
        self.buckets.clear();
        self.renewed_at = None;
        Ok(())
    }

    /// Forgets the leases without touching the database (after an error: they may be gone).
    pub(crate) fn invalidate(&mut self) {
        self.buckets.clear();
        self.renewed_at = None;
    }
}
