//! How a relay worker paces itself: how many rows it asks for, where in the pending index it
//! starts reading, and how long it pauses when there is nothing to do. Pure bookkeeping, no
//! I/O, so the rules are tested on their own.
//!
//! * **Batch size adapts to the backlog.** A worker starts at [`MIN_BATCH`] rows; each full
//!   batch doubles the next one up to `batch_size`, each batch less than half full halves it.
//!   Small batches keep the first row's latency low when rows trickle in; large ones amortise
//!   the round trips under a backlog.
//! * **Reading resumes where it stopped.** Published rows stay in the pending index as dead
//!   entries until vacuum; a read from the bottom walks all of them. Under a backlog (the last
//!   batch was full) the next read starts right after the last id read. When caught up, it
//!   starts after the highest id read at least [`TRAIL`] ago: a writer's transaction can take
//!   its id before another's and commit after it, so a row may become visible below ids
//!   already read; the trail catches such rows of transactions shorter than [`TRAIL`] at once.
//!   Every [`RESCAN`], after a batch that left rows unfinished (failed, held back), and when
//!   the worker takes buckets over, the next read starts from the bottom again: that catches
//!   rows of longer transactions and of buckets taken over. (A row that failed before pulls
//!   every read below it in the query itself, so retries keep their key's order.)
//! * **Idle polls back off.** After a batch that did something, the worker reads again at
//!   once. After one that found nothing it pauses [`MIN_PAUSE`], doubling with each empty
//!   poll up to `idle_sleep`; those polls are a cheap look into the pending index.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The first batch size (or `batch_size`, if smaller).
pub(crate) const MIN_BATCH: usize = 100;
/// How far back a caught-up read starts: the highest id read at least this long ago.
pub(crate) const TRAIL: Duration = Duration::from_secs(1);
/// How often a worker reads from the bottom of the pending index.
pub(crate) const RESCAN: Duration = Duration::from_secs(2);
/// The first pause after an empty poll.
pub(crate) const MIN_PAUSE: Duration = Duration::from_millis(2);

/// A worker's pace (see the module docs).
#[derive(Debug)]
pub(crate) struct Pace {
    max_batch: usize,
    max_pause: Duration,
    limit: usize,
    /// Whether the last batch came back full.
    backlog: bool,
    /// The last id the last batch read.
    last_id: i64,
    /// The highest id read at least [`TRAIL`] ago.
    trailing: i64,
    /// Highest ids read, with when, younger than [`TRAIL`] (oldest first).
    recent: VecDeque<(Instant, i64)>,
    rescan_at: Instant,
    empty_polls: u32,
    /// When the polls started finding nothing.
    idle_since: Option<Instant>,
}

impl Pace {
    pub(crate) fn new(max_batch: usize, max_pause: Duration, now: Instant) -> Pace {
        let max_batch = max_batch.max(1);
        Pace {
            max_batch,
            max_pause,
            limit: MIN_BATCH.min(max_batch),
            backlog: false,
            last_id: 0,
            trailing: 0,
            recent: VecDeque::new(),
            rescan_at: now,
            empty_polls: 0,
            idle_since: None,
        }
    }

    /// Rows to ask for next.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the last batch came back full (more rows are likely waiting).
    #[cfg(test)]
    pub(crate) fn backlog(&self) -> bool {
        self.backlog
    }

    /// Whether to read the next batch while this one's deliveries are awaited: under a
    /// backlog, unless a read from the bottom is due.
    pub(crate) fn read_ahead(&self, now: Instant) -> bool {
        self.backlog && now < self.rescan_at
    }

    /// Where the next read starts (ids above it; 0 is the bottom).
    pub(crate) fn after(&mut self, now: Instant) -> i64 {
        while let Some(&(at, id)) = self.recent.front() {
            if now.duration_since(at) < TRAIL {
                break;
            }
            self.trailing = self.trailing.max(id);
            self.recent.pop_front();
        }
        if now >= self.rescan_at {
            return 0;
        }
        if self.backlog {
            self.last_id
        } else {
            self.trailing
        }
    }

    /// Records a batch read from `after` (as [`Pace::after`] gave it): `read` rows, the last
    /// with id `last_id`.
    pub(crate) fn read(&mut self, now: Instant, after: i64, read: usize, last_id: i64) {
        if after == 0 && now >= self.rescan_at {
            self.rescan_at = now + RESCAN;
        }
        self.backlog = read >= self.limit;
        if self.backlog {
            self.limit = (self.limit * 2).min(self.max_batch);
        } else if read < self.limit / 2 {
            self.limit = (self.limit / 2).max(MIN_BATCH.min(self.max_batch));
        }
        if read > 0 {
            self.last_id = last_id;
            self.recent.push_back((now, last_id));
        }
    }

    /// The next read starts from the bottom (a batch left rows unfinished, or a read failed).
    pub(crate) fn rescan(&mut self, now: Instant) {
        self.rescan_at = now;
        self.backlog = false;
    }

    /// A batch did something: poll again at once.
    pub(crate) fn busy(&mut self) {
        self.empty_polls = 0;
        self.idle_since = None;
    }

    /// How long the polls have found nothing (zero after a batch that did something).
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        self.idle_since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether the last poll found nothing (the next may be a probe).
    pub(crate) fn idle(&self) -> bool {
        self.empty_polls > 0
    }

    /// A poll found nothing: how long to pause before the next.
    pub(crate) fn pause(&mut self, now: Instant) -> Duration {
        let pause = MIN_PAUSE.saturating_mul(1 << self.empty_polls.min(16)).min(self.max_pause);
        self.empty_polls = self.empty_polls.saturating_add(1);
        self.idle_since.get_or_insert(now);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_grows_under_backlog_and_shrinks_when_caught_up() {
        let now = Instant::now();
        let mut pace = Pace::new(1000, Duration::from_millis(50), now);
        assert_eq!(pace.limit(), 100);
        let mut sizes = Vec::new();
        for id in 1..=6 {
            let limit = pace.limit();
            pace.read(now, 1, limit, id * 1000);
            sizes.push(pace.limit());
        }
        assert_eq!(sizes, [200, 400, 800, 1000, 1000, 1000]);
        assert!(pace.backlog());
        pace.read(now, 1, 10, 7000);
        assert_eq!((pace.limit(), pace.backlog()), (500, false));
        for _ in 0..5 {
            pace.read(now, 1, 0, 0);
        }
        assert_eq!(pace.limit(), 100);
        assert_eq!(Pace::new(20, Duration::ZERO, now).limit(), 20, "never above batch_size");
    }

    #[test]
    fn reads_resume_after_the_last_id_under_backlog_and_trail_when_caught_up() {
        let start = Instant::now();
        let mut pace = Pace::new(100, Duration::from_millis(50), start);
        assert_eq!(pace.after(start), 0, "the first read starts at the bottom");
        pace.read(start, 0, 100, 500);
        assert_eq!(pace.after(start), 500, "under backlog: right after the last id");
        assert!(pace.read_ahead(start));
        assert!(!pace.read_ahead(start + RESCAN), "not when a read from the bottom is due");
        pace.read(start, 500, 100, 900);
        assert_eq!(pace.after(start), 900);
        // Caught up: the trail, not the last id — a row below 900 may still commit.
        pace.read(start, 900, 3, 950);
        assert_eq!(pace.after(start), 0, "nothing read a trail ago yet: from the bottom");
        let later = start + TRAIL + Duration::from_millis(1);
        pace.read(later, 0, 2, 990);
        assert_eq!(pace.after(later), 950, "the highest id read at least a trail ago");
        // The periodic rescan goes back to the bottom, then resumes.
        let rescan = start + RESCAN;
        assert_eq!(pace.after(rescan), 0);
        pace.read(rescan, 0, 1, 995);
        assert_eq!(pace.after(rescan), 950, "the trail again");
    }

    #[test]
    fn unfinished_rows_send_the_next_read_to_the_bottom() {
        let start = Instant::now();
        let mut pace = Pace::new(100, Duration::from_millis(50), start);
        pace.read(start, 0, 100, 500);
        let now = start + Duration::from_millis(10);
        pace.rescan(now);
        assert_eq!(pace.after(now), 0);
        pace.read(now, 0, 100, 600);
        assert_eq!(pace.after(now), 600, "and resumes after the rescan");
    }

    #[test]
    fn idle_pauses_double_up_to_the_idle_sleep_and_reset_on_work() {
        let start = Instant::now();
        let mut pace = Pace::new(100, Duration::from_millis(50), start);
        assert!(!pace.idle());
        let pauses: Vec<u128> =
            (0..7_u32).map(|i| pace.pause(start + Duration::from_millis(10) * i).as_millis()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 50, 50]);
        assert!(pace.idle());
        let later = start + Duration::from_millis(300);
        assert_eq!(pace.idle_for(later), Duration::from_millis(300), "idle since the first empty poll");
        pace.busy();
        assert!(!pace.idle());
        assert_eq!(pace.idle_for(later), Duration::ZERO);
        assert_eq!(pace.pause(later), MIN_PAUSE);
        assert_eq!(pace.idle_for(later + Duration::from_millis(5)), Duration::from_millis(5));
    }
}
