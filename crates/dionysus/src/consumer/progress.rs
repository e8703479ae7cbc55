//! What the consumer's health knows about each partition it owns: the last offset read, the
//! last offset committed and since when nothing was committed while messages waited, and the
//! fault that keeps a partition waiting (its batch failing for a reason that is not its
//! messages', or a dead letter that cannot be sent).
//!
//! It owns the per-partition verdict of `/health` and the liveness file; it does not decide
//! what is a fault (the workers report them) and does not serve anything (`telemetry` does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One partition as the health sees it.
#[derive(Debug)]
struct Partition {
    /// Highest offset handed to the partition's worker (`-1`: none yet).
    received: i64,
    /// Next offset after the last committed batch (`-1`: nothing committed yet).
    committed: i64,
    /// Since when the partition has waited: its last commit, or the moment messages started
    /// waiting when it had none.
    since: Instant,
    /// Why the partition cannot move, when a worker said so.
    fault: Option<String>,
}

impl Partition {
    fn new(now: Instant) -> Partition {
        Partition { received: -1, committed: -1, since: now, fault: None }
    }

    fn lagging(&self) -> bool {
        self.received >= 0 && self.received >= self.committed
    }
}

/// Per-partition progress of one consumer, by topic then partition.
#[derive(Debug)]
pub(crate) struct Progress {
    partitions: Mutex<HashMap<String, HashMap<i32, Partition>>>,
    stall_timeout: Duration,
}

impl Progress {
    /// Reports a partition waiting with messages for longer than `stall_timeout`.
    pub(crate) fn new(stall_timeout: Duration) -> Progress {
        Progress { partitions: Mutex::new(HashMap::new()), stall_timeout }
    }

    fn with<R>(&self, topic: &str, partition: i32, f: impl FnOnce(&mut Partition) -> R) -> Option<R> {
        let mut partitions = self.partitions.lock().ok()?;
        let now = Instant::now();
        if let Some(state) = partitions.get_mut(topic).and_then(|p| p.get_mut(&partition)) {
            return Some(f(state));
        }
        let state =
            partitions.entry(topic.to_owned()).or_default().entry(partition).or_insert_with(|| Partition::new(now));
        Some(f(state))
    }

    /// The reader handed `offset` of the partition to its worker.
    pub(crate) fn received(&self, topic: &str, partition: i32, offset: i64) {
        self.with(topic, partition, |state| {
            if !state.lagging() {
                state.since = Instant::now();
            }
            state.received = state.received.max(offset);
        });
    }

    /// A batch of the partition committed; the next offset is `next_offset`.
    pub(crate) fn committed(&self, topic: &str, partition: i32, next_offset: i64) {
        self.with(topic, partition, |state| {
            state.committed = state.committed.max(next_offset);
            state.since = Instant::now();
            if state.fault.take().is_some() {
                tracing::info!(topic, partition, next_offset, "partition moves again");
                set_stalled_gauge(topic, partition, false);
            }
        });
    }

    /// The partition cannot move, for `reason` (logged, counted, and reported by `/health`).
    pub(crate) fn fault(&self, topic: &str, partition: i32, reason: String) {
        tracing::error!(topic, partition, %reason, "partition stalled");
        set_stalled_gauge(topic, partition, true);
        self.with(topic, partition, |state| state.fault = Some(reason));
    }

    /// The partition is no longer this member's.
    pub(crate) fn forget(&self, topic: &str, partition: i32) {
        if let Ok(mut partitions) = self.partitions.lock() {
            if let Some(state) = partitions.get_mut(topic).and_then(|p| p.remove(&partition)) {
                if state.fault.is_some() {
                    set_stalled_gauge(topic, partition, false);
                }
            }
        }
    }

    /// `Err` naming every partition that has a fault or has waited with messages for longer
    /// than the stall timeout.
    pub(crate) fn check(&self) -> Result<(), String> {
        let Ok(partitions) = self.partitions.lock() else { return Err("partition progress unavailable".to_owned()) };
        let mut problems: Vec<String> = Vec::new();
        for (topic, states) in partitions.iter() {
            for (partition, state) in states {
                if let Some(fault) = &state.fault {
                    problems.push(format!("partition {topic}/{partition} stalled: {fault}"));
                } else if state.lagging() && state.since.elapsed() > self.stall_timeout {
                    problems.push(format!(
                        "partition {topic}/{partition} has not advanced for {} s with messages waiting \
                         (next offset {}, offset {} read)",
                        state.since.elapsed().as_secs(),
                        state.committed,
                        state.received
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.sort();
            Err(problems.join("; "))
        }
    }
}

fn set_stalled_gauge(topic: &str, partition: i32, stalled: bool) {
    let labels = [("topic", topic.to_owned()), ("partition", partition.to_string())];
    metrics::gauge!("dionysus_consumer_partition_stalled", &labels).set(if stalled { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_waiting_with_messages_is_reported_after_the_timeout() {
        let progress = Progress::new(Duration::from_millis(50));
        progress.received("t", 0, 10);
        assert!(progress.check().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        let error = progress.check().unwrap_err();
        assert!(error.contains("t/0 has not advanced"), "{error}");
        progress.committed("t", 0, 11);
        assert!(progress.check().is_ok());
        // Caught up: no lag, no report however long it stays quiet.
        std::thread::sleep(Duration::from_millis(80));
        assert!(progress.check().is_ok());
    }

    #[test]
    fn a_fault_is_reported_until_the_partition_commits() {
        let progress = Progress::new(Duration::from_secs(60));
        progress.received("t", 3, 5);
        progress.fault("t", 3, "dead letter cannot be sent".to_owned());
        let error = progress.check().unwrap_err();
        assert!(error.contains("t/3 stalled: dead letter cannot be sent"), "{error}");
        progress.committed("t", 3, 6);
        assert!(progress.check().is_ok());
        progress.fault("t", 3, "again".to_owned());
        progress.forget("t", 3);
        assert!(progress.check().is_ok());
    }
}
