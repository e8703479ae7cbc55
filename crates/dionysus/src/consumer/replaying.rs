//! Which messages a reinit replays: per partition, the offset below which messages are
//! replayed (their replies, error events and cascades suppressed), shared by a consumer's
//! workers. Setting and reading the targets is all it does; where they come from is
//! `reinit`'s, honouring them is `apply`'s.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Targets by topic, then partition (looked up without allocating a key).
type Targets = HashMap<String, HashMap<i32, i64>>;

/// The partitions a consumer replays, with their targets: a message below its partition's
/// target is replayed. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Replaying(Arc<RwLock<Arc<Targets>>>);

impl Replaying {
    /// Replays up to these `(topic, partition, target)` from now on (replacing earlier ones).
    pub(crate) fn set(&self, targets: impl IntoIterator<Item = (String, i32, i64)>) {
        let mut map = Targets::new();
        for (topic, partition, target) in targets {
            map.entry(topic).or_default().insert(partition, target);
        }
        if let Ok(mut current) = self.0.write() {
            *current = Arc::new(map);
        }
    }

    /// Whether the message at `offset` of `topic`/`partition` is replayed.
    pub(crate) fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let Ok(current) = self.0.read() else { return false };
        current.get(topic).and_then(|partitions| partitions.get(&partition)).is_some_and(|target| offset < *target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_covers_offsets_below_the_target_only() {
        let replaying = Replaying::default();
        assert!(!replaying.covers("a", 0, 0));
        replaying.set([("a".to_owned(), 0, 3)]);
        assert!(replaying.covers("a", 0, 2));
        assert!(!replaying.covers("a", 0, 3));
        assert!(!replaying.covers("a", 1, 0));
        replaying.set([]);
        assert!(!replaying.covers("a", 0, 2));
    }
}
