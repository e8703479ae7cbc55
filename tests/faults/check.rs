//! What the topic shows, compared with what was written: the pure part of the checks.
//!
//! Every message of wallet `k` (the wallet's own and its ledger entries') has partition key
//! `k`, so all of them are in one partition, in the order the relay published them. Per key
//! and model, the *first occurrence* of each `seq` must come after the first occurrences of
//! every smaller one: a ledger entry is created once with its `seq`, and a wallet message
//! carries the wallet's state when it was published, which only moves forward. A later
//! repeat of an already seen `seq` is a duplicate (at least once), not an order violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The two published models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Model {
    Wallet,
    LedgerEntry,
}

/// One record seen in a message on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub model: Model,
    pub id: i64,
    /// The partition key: the wallet.
    pub key: i64,
    pub seq: i64,
}

/// What the source database holds after the run.
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// Every wallet with its final `seq`.
    pub wallets: BTreeMap<i64, i64>,
    /// Every ledger entry: id → (wallet, seq).
    pub ledger: BTreeMap<i64, (i64, i64)>,
}

impl Written {
    /// Events written: a `wallet_created` per wallet, then per transaction a
    /// `wallet_updated` and a `ledger_entry_created`.
    pub fn events(&self) -> u64 {
        let updates: i64 = self.wallets.values().sum();
        self.wallets.len() as u64 + updates.max(0) as u64 + self.ledger.len() as u64
    }
}

/// A first occurrence that came after a larger `seq` of the same key and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub model: Model,
    pub key: i64,
    pub seq: i64,
    /// The largest `seq` first seen before it.
    pub after: i64,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} key {} seq {} first appeared after seq {} (partition {}, offset {})",
            self.model, self.key, self.seq, self.after, self.partition, self.offset
        )
    }
}

/// The verdict on one run.
#[derive(Debug, Default, Clone)]
pub struct Analysis {
    pub messages: u64,
    /// Ledger entries written (each one event, published as one message of its own).
    pub ledger_written: u64,
    /// Distinct ledger entries seen.
    pub unique: u64,
    /// Ledger entry messages seen more than once.
    pub duplicates: u64,
    /// Ledger entries never seen, and wallets whose final state was never seen.
    pub lost: u64,
    pub lost_examples: Vec<String>,
    pub violations: u64,
    pub first_violations: Vec<Violation>,
}

/// How many violations and lost records are kept as examples.
const EXAMPLES: usize = 5;

/// Compares what the topic shows (`seen`, each partition in offset order) with `written`.
pub fn analyse(seen: &[Seen], written: &Written) -> Analysis {
    let mut analysis = Analysis { messages: seen.len() as u64, ..Analysis::default() };
    let mut distinct: HashSet<(Model, i64, i64)> = HashSet::new();
    let mut highest: HashMap<(Model, i64), i64> = HashMap::new();
    for record in seen {
        if !distinct.insert((record.model, record.id, record.seq)) {
            // Two updates of a wallet published in one batch carry the same state: only a
            // ledger entry seen twice is a duplicate for sure.
            if record.model == Model::LedgerEntry {
                analysis.duplicates += 1;
            }
            continue;
        }
        let highest = highest.entry((record.model, record.key)).or_insert(i64::MIN);
        if record.seq < *highest {
            analysis.violations += 1;
            if analysis.first_violations.len() < EXAMPLES {
                analysis.first_violations.push(Violation {
                    model: record.model,
                    key: record.key,
                    seq: record.seq,
                    after: *highest,
                    partition: record.partition,
                    offset: record.offset,
                });
            }
        } else {
            *highest = record.seq;
        }
    }
    analysis.unique = distinct.iter().filter(|(model, _, _)| *model == Model::LedgerEntry).count() as u64;
    analysis.ledger_written = written.ledger.len() as u64;
    let mut lost = |what: String| {
        analysis.lost += 1;
        if analysis.lost_examples.len() < EXAMPLES {
            analysis.lost_examples.push(what);
        }
    };
    for (id, (wallet, seq)) in &written.ledger {
        if !distinct.contains(&(Model::LedgerEntry, *id, *seq)) {
            lost(format!("ledger entry {id} (wallet {wallet}, seq {seq})"));
        }
    }
    for (id, seq) in &written.wallets {
        if !distinct.contains(&(Model::Wallet, *id, *seq)) {
            lost(format!("wallet {id}: its final state (seq {seq}) was never published"));
        }
    }
    analysis
}

/// The records of one message value (a dionysus envelope), or why it is not one.
pub fn records(value: &[u8]) -> Result<Vec<(Model, i64, i64, i64)>, String> {
    let json: serde_json::Value = serde_json::from_slice(value).map_err(|error| format!("not JSON: {error}"))?;
    let events = json.get("message").and_then(|m| m.as_array()).ok_or("no `message` array")?;
    let mut records = Vec::new();
    for event in events {
        let model = match event.get("model_name").and_then(|m| m.as_str()) {
            Some("Wallet") => Model::Wallet,
            Some("LedgerEntry") => Model::LedgerEntry,
            other => return Err(format!("unexpected model {other:?}")),
        };
        let data = event.get("data").and_then(|d| d.as_array()).ok_or("no `data` array")?;
        for record in data {
            let number = |field: &str| {
                record
                    .get(field)
                    .and_then(|v| v.as_i64())
                    .ok_or_else(|| format!("{model:?} without a numeric `{field}`"))
            };
            let id = number("id")?;
            let key = match model {
                Model::Wallet => id,
                Model::LedgerEntry => number("wallet_id")?,
            };
            records.push((model, id, key, number("seq")?));
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ledger(offset: i64, id: i64, key: i64, seq: i64) -> Seen {
        Seen { partition: 0, offset, model: Model::LedgerEntry, id, key, seq }
    }

    fn written(entries: &[(i64, i64, i64)]) -> Written {
        Written { wallets: BTreeMap::new(), ledger: entries.iter().map(|(id, key, seq)| (*id, (*key, *seq))).collect() }
    }

    #[test]
    fn a_retried_row_published_after_its_successor_is_a_violation() {
        let seen = [ledger(0, 1, 7, 1), ledger(1, 3, 7, 3), ledger(2, 2, 7, 2)];
        let analysis = analyse(&seen, &written(&[(1, 7, 1), (2, 7, 2), (3, 7, 3)]));
        assert_eq!(analysis.violations, 1);
        assert_eq!(analysis.first_violations[0].seq, 2);
        assert_eq!(analysis.first_violations[0].after, 3);
        assert_eq!(analysis.lost, 0);
    }

    #[test]
    fn a_republished_row_is_a_duplicate_not_a_violation() {
        let seen = [ledger(0, 1, 7, 1), ledger(1, 2, 7, 2), ledger(2, 1, 7, 1), ledger(3, 2, 7, 2), ledger(4, 3, 7, 3)];
        let analysis = analyse(&seen, &written(&[(1, 7, 1), (2, 7, 2), (3, 7, 3)]));
        assert_eq!((analysis.violations, analysis.duplicates, analysis.unique, analysis.lost), (0, 2, 3, 0));
    }

    #[test]
    fn a_wallet_state_published_twice_is_no_duplicate() {
        let wallet = |offset, seq| Seen { partition: 0, offset, model: Model::Wallet, id: 7, key: 7, seq };
        let analysis = analyse(&[wallet(0, 2), wallet(1, 2), wallet(2, 3)], &Written::default());
        assert_eq!((analysis.violations, analysis.duplicates, analysis.unique), (0, 0, 0));
    }

    #[test]
    fn keys_are_ordered_independently() {
        let seen = [ledger(0, 1, 7, 5), ledger(1, 2, 8, 1), ledger(2, 3, 7, 6)];
        assert_eq!(analyse(&seen, &written(&[])).violations, 0);
    }

    #[test]
    fn unseen_entries_and_unseen_final_wallet_states_are_lost() {
        let mut written = written(&[(1, 7, 1), (2, 7, 2)]);
        written.wallets.insert(7, 2);
        let seen = [ledger(0, 1, 7, 1), Seen { partition: 0, offset: 1, model: Model::Wallet, id: 7, key: 7, seq: 1 }];
        let analysis = analyse(&seen, &written);
        assert_eq!(analysis.lost, 2, "{:?}", analysis.lost_examples);
        assert_eq!(written.events(), 1 + 2 + 2);
    }

    #[test]
    fn envelopes_are_read_into_records() {
        let value = br#"{"message":[{"event":"ledger_entry_created","model_name":"LedgerEntry","data":[{"id":4,"wallet_id":9,"seq":3,"amount":1}]}]}"#;
        assert_eq!(records(value).unwrap(), [(Model::LedgerEntry, 4, 9, 3)]);
        let value = br#"{"message":[{"event":"wallet_updated","model_name":"Wallet","data":[{"id":9,"seq":3}]}]}"#;
        assert_eq!(records(value).unwrap(), [(Model::Wallet, 9, 9, 3)]);
        assert!(records(b"not json").is_err());
        assert!(records(br#"{"message":[{"model_name":"Gadget","data":[]}]}"#).is_err());
    }

    proptest! {
        /// Publishing every key's rows in order, with any interleaving of keys and any
        /// repeats of rows already published, shows no violation and loses nothing.
        #[test]
        fn in_order_publication_with_repeats_passes(
            picks in proptest::collection::vec((0..4_i64, 0..3_usize), 1..200),
        ) {
            let mut next: BTreeMap<i64, i64> = BTreeMap::new();
            let mut seen = Vec::new();
            let mut written = Written::default();
            for (offset, (key, back)) in picks.into_iter().enumerate() {
                let published = next.entry(key).or_insert(0);
                let seq = if back > 0 && *published > back as i64 { *published - back as i64 } else { *published += 1; *published };
                let id = key * 1000 + seq;
                written.ledger.insert(id, (key, seq));
                seen.push(ledger(offset as i64, id, key, seq));
            }
            let analysis = analyse(&seen, &written);
            prop_assert_eq!(analysis.violations, 0);
            prop_assert_eq!(analysis.lost, 0);
            prop_assert_eq!(analysis.unique + analysis.duplicates, analysis.messages);
            prop_assert_eq!(analysis.unique, analysis.ledger_written);
        }

        /// Swapping the first occurrences of two consecutive seqs of a key is caught.
        #[test]
        fn a_swapped_pair_is_caught(length in 2..50_i64, at in 0..49_i64) {
            let at = at % (length - 1);
            let mut order: Vec<i64> = (1..=length).collect();
            order.swap(at as usize, at as usize + 1);
            let seen: Vec<Seen> = order.iter().enumerate().map(|(offset, seq)| ledger(offset as i64, *seq, 1, *seq)).collect();
            prop_assert_eq!(analyse(&seen, &Written::default()).violations, 1);
        }
    }
}
