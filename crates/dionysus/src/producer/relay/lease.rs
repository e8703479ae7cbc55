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
//!
//! **Buckets follow the load.** A fair share by count is not a fair share of the rows: the
//! keys of a backlog may fall into few buckets, most of them one worker's, and that worker
//! then drains alone while the others wait. So a worker that has been caught up for
//! [`IDLE_AFTER`] says so in its heartbeat (`idle`), and checks every [`HANDOVER_EVERY`]
//! whether it was handed buckets. A worker whose last read came back full at its largest
//! batch (a backlog) looks as often for an idle worker and, if there is one, hands it about
//! half its rows: the buckets of its next batch split in two halves of about equal rows
//! ([`split_load`]). It does so where it would give buckets back on a share change: between
//! batches, with nothing in flight, so the new owner (which reads them from the bottom) cannot
//! overtake a message of the old one. Only a receiver that beat within the last 2 s is
//! handed anything, so buckets rarely wait for a dead one's expiry. The receiver, now over
//! its share, gives back buckets it held before — empty, since it was idle — and the giver
//! takes those up as its share.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Bool, Double, SmallInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Number of ordering buckets (fixed by the migration's `% 64`).
pub(crate) const BUCKETS: i64 = 64;

/// Every ordering bucket, for one reader holding them all (drains, previews, simulations).
pub(crate) fn all_buckets() -> Vec<i16> {
    (0..i16::try_from(BUCKETS).unwrap_or(i16::MAX)).collect()
}

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

#[derive(diesel::QueryableByName)]
struct Handed {
    #[diesel(sql_type = SmallInt)]
    bucket: i16,
    #[diesel(sql_type = Text)]
    receiver: String,
}

/// Buckets handed to an idle worker (see the module docs).
#[derive(Debug)]
pub(crate) struct Handover {
    /// The worker that took them.
    pub(crate) receiver: String,
    /// The buckets.
    pub(crate) buckets: Vec<i16>,
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
    /// Whether the worker has been caught up for [`IDLE_AFTER`] (as [`Leases::set_idle`]
    /// last told).
    idle: bool,
    /// Whether its heartbeat says it is idle.
    said_idle: bool,
    /// When it last looked for buckets handed to it, or for an idle worker to hand some to.
    looked_at: Option<Instant>,
}

/// Longest time between two maintenances, whatever the expiry.
const MAINTAIN_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
/// How soon a worker short of its share tries to acquire buckets again.
const HUNGRY_RETRY: Duration = Duration::from_millis(100);
/// How long a worker finds nothing to do before it offers to take busy buckets.
pub(crate) const IDLE_AFTER: Duration = Duration::from_millis(100);
/// How often an idle worker looks for buckets handed to it, and a worker with a backlog for
/// an idle worker.
pub(crate) const HANDOVER_EVERY: Duration = Duration::from_millis(100);

impl Leases {
    pub(crate) fn new(worker_id: String, expiry: Duration, local_workers: usize) -> Leases {
        let local_workers = i64::try_from(local_workers.max(1)).unwrap_or(1);
        Leases {
            worker_id,
            expiry,
            local_workers,
            share: BUCKETS,
            buckets: Vec::new(),
            renewed_at: None,
            idle: false,
            said_idle: false,
            looked_at: None,
        }
    }

    /// Tells whether the worker has been caught up for [`IDLE_AFTER`]. Becoming idle makes
    /// the leases due, so the others learn it at once; becoming busy waits for the next
    /// maintenance (being handed buckets while busy does no harm).
    pub(crate) fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
    }

    /// The worker's id.
    pub(crate) fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The buckets held now.
    pub(crate) fn buckets(&self) -> &[i16] {
        &self.buckets
    }

    /// Whether the leases are due for renewal (a third of the expiry has passed, at most a
    /// second), for another try at a full share, or to say the worker is idle.
    pub(crate) fn due(&self) -> bool {
        let hungry = i64::try_from(self.buckets.len()).unwrap_or(i64::MAX) < self.share;
        self.renewed_at.is_none_or(|at| {
            let elapsed = at.elapsed();
            elapsed >= (self.expiry / 3).min(MAINTAIN_AT_LEAST_EVERY)
                || (hungry && elapsed >= HUNGRY_RETRY)
                || (self.idle && !self.said_idle)
        })
    }

    /// Whether it is time to look for buckets handed over: to this worker while its heartbeat
    /// says it is idle, or by it (`backlog`) to an idle worker.
    pub(crate) fn look_due(&self, backlog: bool) -> bool {
        (backlog || self.said_idle)
            && self.renewed_at.is_some()
            && self.looked_at.is_none_or(|at| at.elapsed() >= HANDOVER_EVERY)
    }

    /// Whether another worker handed buckets to this one since its last maintenance (then
    /// [`Leases::maintain`] takes them up).
    pub(crate) async fn handed_to_me(&mut self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
        self.looked_at = Some(Instant::now());
        let owned: Count = diesel::sql_query(
            "SELECT count(*) AS count FROM dionysus_relay_leases WHERE owner = $1 AND NOT (bucket = ANY($2))",
        )
        .bind::<Text, _>(&self.worker_id)
        .bind::<Array<SmallInt>, _>(&self.buckets)
        .get_result(conn)
        .await?;
        Ok(owned.count > 0)
    }

    /// Hands `give` (buckets this worker holds) to an idle worker, if there is one, in one
    /// statement that also marks it busy, so no other worker hands it buckets before it has
    /// taken these up. Call only with nothing in flight.
    pub(crate) async fn hand_over(
        &mut self,
        conn: &mut AsyncPgConnection,
        give: &[i16],
    ) -> diesel::QueryResult<Option<Handover>> {
        self.looked_at = Some(Instant::now());
        if give.is_empty() {
            return Ok(None);
        }
        let handed: Vec<Handed> = diesel::sql_query(
            "WITH receiver AS ( \
                 UPDATE dionysus_relay_workers SET idle = false \
                 WHERE worker_id = (SELECT worker_id FROM dionysus_relay_workers \
                                    WHERE idle AND worker_id <> $1 \
                                      AND heartbeat_at > now() - make_interval(secs => $4) \
                                    ORDER BY heartbeat_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                   AND EXISTS (SELECT 1 FROM dionysus_relay_leases WHERE owner = $1 AND bucket = ANY($3)) \
                 RETURNING worker_id) \
             UPDATE dionysus_relay_leases l \
             SET owner = receiver.worker_id, lease_until = now() + make_interval(secs => $2) \
             FROM receiver WHERE l.owner = $1 AND l.bucket = ANY($3) \
             RETURNING l.bucket, receiver.worker_id AS receiver",
        )
        .bind::<Text, _>(&self.worker_id)
        .bind::<Double, _>(self.expiry.as_secs_f64())
        .bind::<Array<SmallInt>, _>(give)
        // Only a worker that beat lately: a live one beats at least every second, and buckets
        // handed to a dead one wait for their expiry.
        .bind::<Double, _>((MAINTAIN_AT_LEAST_EVERY * 2).min(self.expiry).as_secs_f64())
        .load(conn)
        .await?;
        let mut handed = handed.into_iter();
        let Some(Handed { bucket, receiver }) = handed.next() else {
            return Ok(None);
        };
        let mut buckets: Vec<i16> = std::iter::once(bucket).chain(handed.map(|h| h.bucket)).collect();
        buckets.sort_unstable();
        self.buckets.retain(|bucket| !buckets.contains(bucket));
        Ok(Some(Handover { receiver, buckets }))
    }

    /// Whether the leases are still certainly valid (renewed less than an expiry ago, with a
    /// margin), so a batch may start.
    pub(crate) fn valid(&self) -> bool {
        self.renewed_at.is_some_and(|at| at.elapsed() < self.expiry.mul_f64(0.8))
    }

    /// Renews the held leases (taking up buckets handed to this worker), heartbeats (saying
    /// whether it is idle) and rebalances to a fair share.
    pub(crate) async fn maintain(&mut self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        let expiry = self.expiry.as_secs_f64();
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
        // Handed over by a busy worker since the last maintenance.
        let received: HashSet<i16> = if self.renewed_at.is_some() {
            buckets.iter().copied().filter(|bucket| !self.buckets.contains(bucket)).collect()
        } else {
            HashSet::new()
        };
        // Idle only while nothing was handed over meanwhile (here or since the renewal).
        let idle = self.idle && received.is_empty();
        diesel::sql_query(
            "INSERT INTO dionysus_relay_workers (worker_id, heartbeat_at, idle) VALUES ($1, now(), $2) \
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), \
                 idle = $2 AND NOT EXISTS (SELECT 1 FROM dionysus_relay_leases \
                                           WHERE owner = $1 AND NOT (bucket = ANY($3)))",
        )
        .bind::<Text, _>(&self.worker_id)
        .bind::<Bool, _>(idle)
        .bind::<Array<SmallInt>, _>(&buckets)
        .execute(conn)
        .await?;
        self.said_idle = idle;
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

        let held = i64::try_from(buckets.len()).unwrap_or(i64::MAX);
        if held > share {
            // Buckets held before go back first: those handed over hold the rows.
            let excess = usize::try_from(held - share).unwrap_or(0);
            let mut release: Vec<i16> = buckets.iter().copied().filter(|b| !received.contains(b)).rev().collect();
            release.extend(buckets.iter().copied().filter(|b| received.contains(b)).rev());
            release.truncate(excess);
            buckets.retain(|bucket| !release.contains(bucket));
            diesel::sql_query(
                "UPDATE dionysus_relay_leases SET owner = NULL, lease_until = 'epoch' \
                 WHERE owner = $1 AND bucket = ANY($2)",
            )
            .bind::<Text, _>(&self.worker_id)
            .bind::<Array<SmallInt>, _>(&release)
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
        self.said_idle = false;
        Ok(())
    }

    /// Forgets the leases without touching the database (after an error: they may be gone).
    pub(crate) fn invalidate(&mut self) {
        self.buckets.clear();
        self.renewed_at = None;
        self.said_idle = false;
    }
}

/// The buckets to hand over out of a batch's rows per bucket: two halves of about equal rows
/// (the busiest bucket first, each to the lighter half; the giver keeps the first), the second
/// one given. Nothing when fewer than two buckets hold rows.
pub(crate) fn split_load(rows_per_bucket: &[(i16, usize)]) -> Vec<i16> {
    let mut loaded: Vec<(i16, usize)> = rows_per_bucket.iter().copied().filter(|(_, rows)| *rows > 0).collect();
    if loaded.len() < 2 {
        return Vec::new();
    }
    loaded.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let (mut kept, mut given) = (0_usize, 0_usize);
    let mut give = Vec::new();
    for (bucket, rows) in loaded {
        if kept <= given {
            kept += rows;
        } else {
            given += rows;
            give.push(bucket);
        }
    }
    give.sort_unstable();
    give
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_split_in_two_halves_of_about_equal_rows() {
        let give = split_load(&[(3, 400), (7, 100), (9, 300), (12, 200), (20, 0)]);
        assert_eq!(give, [9, 12], "keeps 400 + 100 (buckets 3, 7), gives 300 + 200");
    }

    #[test]
    fn one_busy_bucket_is_not_handed_over() {
        assert!(split_load(&[(5, 1000)]).is_empty());
        assert!(split_load(&[(5, 1000), (6, 0)]).is_empty());
        assert!(split_load(&[]).is_empty());
    }

    #[test]
    fn the_giver_keeps_the_busiest_bucket() {
        assert_eq!(split_load(&[(1, 10), (2, 990)]), [1]);
        assert_eq!(split_load(&[(1, 500), (2, 500)]), [2]);
    }
}
