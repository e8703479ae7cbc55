//! Offset gaps within a partition's stream, checked before they are believed.
//!
//! A partition's offsets may legitimately skip: compaction removes records, and a
//! transactional producer leaves control records (and aborted messages) that the consumer
//! never sees. A broker may also, for a moment, serve a fetch from a later record than the one
//! asked for while earlier ones are still being written (two producers appending to one
//! partition at once); taking that skip as final would lose the records in between for good,
//! since the stored offset moves past them.
//!
//! So the reader does not hand a message past a gap to its worker at once: it reads the
//! partition again from the first missing offset. When the missing offsets come back, they
//! are applied in order as if nothing happened (and the broker's behaviour is reported);
//! when the same skip comes back, it is a real one. A partition whose skips turned out real
//! (a compacted or transactional topic) trusts its skips for a while afterwards, so a topic
//! full of control records costs one re-read per partition per [`TRUST_CONFIRMED_GAPS`],
//! not one per transaction.

use std::time::{Duration, Instant};

/// How long a partition whose last checked skip was real takes further skips as they come.
pub(crate) const TRUST_CONFIRMED_GAPS: Duration = Duration::from_secs(60);

/// Waits before the second, third, … re-read of a skip that came back: a broker that serves
/// later records first makes the earlier ones readable within tens of milliseconds, so a skip
/// still there after all of them (about 0.8 s) is taken as real.
const REREAD_DELAYS: [Duration; 4] =
    [Duration::from_millis(25), Duration::from_millis(75), Duration::from_millis(200), Duration::from_millis(500)];

/// What the reader does with a message, given the partition's offsets so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next offset (or one no gap precedes): hand it to the worker.
    InOrder,
    /// Offsets `from..offset` were skipped: read the partition again from `from` now and
    /// drop this message (it comes again, after the missing ones if they exist).
    Reread {
        /// First missing offset.
        from: i64,
    },
    /// The skip came back from a re-read: drop this message and read the partition again
    /// from the first missing offset at `until` ([`OffsetGaps::due`]).
    Hold {
        /// When to read again.
        until: Instant,
    },
    /// A re-read brought back the missing offsets: hand this message (the first of them) to
    /// the worker; `skipped_to` is the offset the broker had served in their place.
    Refilled {
        /// The later offset that had arrived first.
        skipped_to: i64,
    },
    /// The skip was real (or the partition's skips are trusted): hand the message over.
    Gap {
        /// First offset skipped.
        from: i64,
        /// Whether the skip was read again and came back every time (otherwise it was
        /// trusted without a re-read).
        checked: bool,
    },
    /// A message read before the re-read that is under way, or while one is awaited: drop it.
    Drop,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Offsets come in order.
    Reading,
    /// A re-read from `from` was started; `attempt` re-reads so far.
    Rereading { from: i64, seen: i64, attempt: usize },
    /// The skip came back; the next re-read starts at `until`.
    Holding { from: i64, seen: i64, attempt: usize, until: Instant },
}

/// The offset bookkeeping of one partition as its reader hands messages to its worker.
#[derive(Debug)]
pub(crate) struct OffsetGaps {
    /// The offset expected next (`None` before the first message).
    next: Option<i64>,
    state: State,
    /// Until when skips are taken without a re-read.
    trusted_until: Option<Instant>,
    /// Skips re-read and found real so far.
    confirmed: u64,
}

impl Default for OffsetGaps {
    fn default() -> OffsetGaps {
        OffsetGaps { next: None, state: State::Reading, trusted_until: None, confirmed: 0 }
    }
}

impl OffsetGaps {
    /// A partition whose fetching starts at `start` (its stored offset), when known: a
    /// first message past it is a skip too.
    pub(crate) fn starting_at(start: Option<i64>) -> OffsetGaps {
        OffsetGaps { next: start, ..OffsetGaps::default() }
    }

    /// The verdict on the message at `offset` that just arrived; `now` is asked for only
    /// off the usual path (a message in order costs no clock read).
    pub(crate) fn check(&mut self, offset: i64, now: impl FnOnce() -> Instant) -> Verdict {
        match self.state {
            State::Reading => {}
            State::Rereading { from, .. } | State::Holding { from, .. } if offset < from => return Verdict::Drop,
            State::Rereading { from, seen, .. } | State::Holding { from, seen, .. } if offset == from => {
                self.state = State::Reading;
                self.next = Some(offset + 1);
                return Verdict::Refilled { skipped_to: seen };
            }
            State::Holding { .. } => return Verdict::Drop,
            State::Rereading { from, attempt, .. } => {
                let Some(delay) = REREAD_DELAYS.get(attempt.saturating_sub(1)) else {
                    self.state = State::Reading;
                    self.next = Some(offset + 1);
                    self.trusted_until = Some(now() + TRUST_CONFIRMED_GAPS);
                    self.confirmed += 1;
                    return Verdict::Gap { from, checked: true };
                };
                let until = now() + *delay;
                self.state = State::Holding { from, seen: offset, attempt, until };
                return Verdict::Hold { until };
            }
        }
        let Some(next) = self.next.filter(|next| offset > *next) else {
            // The first message, the next one, or one below it (the stored offset in the
            // database sorts that out).
            self.next = Some(offset + 1);
            return Verdict::InOrder;
        };
        if self.trusted_until.is_some_and(|until| now() < until) {
            self.next = Some(offset + 1);
            return Verdict::Gap { from: next, checked: false };
        }
        self.state = State::Rereading { from: next, seen: offset, attempt: 1 };
        Verdict::Reread { from: next }
    }

    /// The offset to read the partition again from, when a held re-read is due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Option<i64> {
        match self.state {
            State::Holding { from, seen, attempt, until } if now >= until => {
                self.state = State::Rereading { from, seen, attempt: attempt + 1 };
                Some(from)
            }
            _ => None,
        }
    }

    /// How many skips were re-read and found real (the first is worth telling operators
    /// about; on a transactional topic the next ones are routine).
    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The re-read asked for could not be started: the skip is believed. `handed` is the
    /// offset handed to the worker instead, if any (otherwise the next message is taken as
    /// it comes).
    pub(crate) fn abandon(&mut self, handed: Option<i64>) {
        self.state = State::Reading;
        self.next = handed.map(|offset| offset + 1);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn offsets_in_a_row_pass() {
        let mut gaps = OffsetGaps::default();
        let now = Instant::now();
        for offset in 40..50 {
            assert_eq!(gaps.check(offset, || now), Verdict::InOrder);
        }
    }

    #[test]
    fn a_skip_is_read_again_and_the_missing_offsets_are_kept_when_they_come() {
        let mut gaps = OffsetGaps::default();
        let now = Instant::now();
        gaps.check(550, || now);
        assert_eq!(gaps.check(553, || now), Verdict::Reread { from: 551 });
        assert_eq!(gaps.check(551, || now), Verdict::Refilled { skipped_to: 553 });
        assert_eq!(gaps.check(552, || now), Verdict::InOrder);
        assert_eq!(gaps.check(553, || now), Verdict::InOrder);
        // Nothing was confirmed, so the next skip is read again too.
        assert_eq!(gaps.check(560, || now), Verdict::Reread { from: 554 });
    }

    #[test]
    fn a_skip_that_comes_back_is_read_again_later_and_its_offsets_kept_when_they_appear() {
        let mut gaps = OffsetGaps::default();
        let now = Instant::now();
        gaps.check(550, || now);
        assert_eq!(gaps.check(553, || now), Verdict::Reread { from: 551 });
        let Verdict::Hold { until } = gaps.check(553, || now) else { panic!("not held") };
        assert_eq!(until, now + REREAD_DELAYS[0]);
        // Messages fetched meanwhile are dropped, and nothing is due before its time.
        assert_eq!(gaps.check(554, || now), Verdict::Drop);
        assert_eq!(gaps.due(now), None);
        assert_eq!(gaps.due(until), Some(551));
        assert_eq!(gaps.due(until), None);
        assert_eq!(gaps.check(551, || until), Verdict::Refilled { skipped_to: 553 });
        assert_eq!(gaps.check(552, || until), Verdict::InOrder);
    }

    #[test]
    fn a_skip_that_keeps_coming_back_is_real_and_later_skips_are_trusted_for_a_while() {
        let mut gaps = OffsetGaps::default();
        let mut now = Instant::now();
        gaps.check(10, || now);
        assert_eq!(gaps.check(12, || now), Verdict::Reread { from: 11 });
        for delay in REREAD_DELAYS {
            assert_eq!(gaps.check(12, || now), Verdict::Hold { until: now + delay });
            now += delay;
            assert_eq!(gaps.due(now), Some(11));
        }
        assert_eq!(gaps.check(12, || now), Verdict::Gap { from: 11, checked: true });
        assert_eq!(gaps.confirmed(), 1);
        assert_eq!(gaps.check(13, || now), Verdict::InOrder);
        assert_eq!(gaps.check(15, || now), Verdict::Gap { from: 14, checked: false });
        let later = now + TRUST_CONFIRMED_GAPS;
        assert_eq!(gaps.check(17, || later), Verdict::Reread { from: 16 });
    }

    #[test]
    fn a_skip_after_the_stored_offset_is_read_again() {
        let now = Instant::now();
        let mut gaps = OffsetGaps::starting_at(Some(551));
        assert_eq!(gaps.check(553, || now), Verdict::Reread { from: 551 });
        let mut gaps = OffsetGaps::starting_at(Some(551));
        assert_eq!(gaps.check(551, || now), Verdict::InOrder);
        let mut gaps = OffsetGaps::starting_at(None);
        assert_eq!(gaps.check(553, || now), Verdict::InOrder);
    }

    #[test]
    fn messages_from_before_the_reread_are_dropped() {
        let mut gaps = OffsetGaps::default();
        let now = Instant::now();
        gaps.check(5, || now);
        assert_eq!(gaps.check(9, || now), Verdict::Reread { from: 6 });
        assert_eq!(gaps.check(3, || now), Verdict::Drop);
        assert_eq!(gaps.check(6, || now), Verdict::Refilled { skipped_to: 9 });
    }

    #[test]
    fn an_abandoned_reread_takes_the_skip() {
        let mut gaps = OffsetGaps::default();
        let now = Instant::now();
        gaps.check(5, || now);
        assert_eq!(gaps.check(9, || now), Verdict::Reread { from: 6 });
        gaps.abandon(Some(9));
        assert_eq!(gaps.check(10, || now), Verdict::InOrder);
        assert_eq!(gaps.check(12, || now), Verdict::Reread { from: 11 });
        gaps.abandon(None);
        assert_eq!(gaps.check(14, || now), Verdict::InOrder);
    }

    /// A log of `log_len` offsets read by a reader that follows the verdicts, from a broker
    /// that serves some fetches from a later offset than asked for while the earlier ones
    /// are still being written: `skips` are (offset, how far ahead, how many fetches from
    /// that offset skip it). The offsets handed to the worker.
    fn replay(log_len: i64, skips: &[(i64, i64, usize)]) -> Vec<i64> {
        let mut now = Instant::now();
        let mut gaps = OffsetGaps::default();
        let mut handed = Vec::new();
        let mut position = 0;
        let mut skips: Vec<(i64, i64, usize)> = skips.to_vec();
        let mut steps = 0;
        while position < log_len {
            steps += 1;
            assert!(steps < 100_000, "no progress");
            let served = match skips.iter_mut().find(|(at, _, times)| *at == position && *times > 0) {
                Some((_, by, times)) => {
                    *times -= 1;
                    (position + *by).min(log_len - 1)
                }
                None => position,
            };
            match gaps.check(served, || now) {
                Verdict::InOrder | Verdict::Refilled { .. } | Verdict::Gap { .. } => {
                    handed.push(served);
                    position = served + 1;
                }
                Verdict::Reread { from } => position = from,
                Verdict::Hold { until } => {
                    now = until;
                    position = gaps.due(now).expect("due when held");
                }
                Verdict::Drop => position = served + 1,
            }
        }
        handed
    }

    proptest! {
        /// However often a skip is served, as long as the skipped offsets appear before the
        /// re-reads give up on them, the worker gets every offset once, in order.
        #[test]
        fn transient_skips_lose_nothing(
            log_len in 1i64..300,
            skips in proptest::collection::vec((1i64..300, 1i64..20, 1usize..=REREAD_DELAYS.len() + 1), 0..20),
        ) {
            let mut seen = std::collections::HashSet::new();
            let skips: Vec<_> = skips.into_iter().filter(|(at, _, _)| seen.insert(*at)).collect();
            let handed = replay(log_len, &skips);
            prop_assert_eq!(handed, (0..log_len).collect::<Vec<_>>());
        }
    }
}
