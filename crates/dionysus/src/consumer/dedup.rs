//! dionysus-rb's default batch transformation, `RemoveDuplicatesStrategy` (C-18), exactly as
//! the gem behaves:
//!
//! * it applies only when **every** message carries exactly one event with exactly one
//!   record (a tombstone in the batch disables it);
//! * messages are grouped by event name + record id (`"booking_updated" + "16"`), for all
//!   event kinds;
//! * each group keeps the message with the greatest `updated_at`; a missing (or non-string)
//!   `updated_at` counts as "now" and so beats any past time; on an exact tie the first
//!   message wins;
//! * the output lists groups in order of first appearance, each winner at its group's first
//!   position.
//!
//! Where the gem reads "now" anew for each message, we use one instant per batch and let the
//! later of two "now" messages win, which is what the gem's ever-increasing clock yields.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

#[cfg(test)]
use crate::wire::envelope::Decoded;
use crate::wire::envelope::{parse_timestamp, RawRecord};

#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Rank {
    At(DateTime<Utc>),
    Now(usize),
}

/// The indices of the messages to keep, in output order, or `None` when the strategy does
/// not apply (the batch is then processed unchanged). The consumer takes the same keys
/// while it decodes ([`record_key`], [`group_key`], [`keep_latest`]).
#[cfg(test)]
pub(crate) fn remove_duplicates(batch: &[&Decoded]) -> Option<Vec<usize>> {
    let mut keys = Vec::with_capacity(batch.len());
    for decoded in batch {
        let Decoded::Events(events) = decoded else { return None };
        let [event] = events.as_slice() else { return None };
        let [record] = event.data.as_slice() else { return None };
        keys.push(group_key(&event.event, record_key(record)));
    }
    Some(keep_latest(&keys))
}

/// What the strategy reads of a message's one record: its `id` as text and its
/// `updated_at`, when that is a string holding a time.
pub(crate) fn record_key(record: &RawRecord) -> (String, Option<DateTime<Utc>>) {
    let id = match record.get("id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let time = match record.get("updated_at") {
        Some(value @ Value::String(_)) => parse_timestamp(value),
        _ => None,
    };
    (id, time)
}

/// The group of a one-record message: event name and record id (`"booking_updated" + "16"`),
/// with the record's time.
pub(crate) fn group_key(event: &str, (id, time): (String, Option<DateTime<Utc>>)) -> (String, Option<DateTime<Utc>>) {
    (format!("{event}{id}"), time)
}

/// [`remove_duplicates`] over the messages' [`group_key`]s.
pub(crate) fn keep_latest(keys: &[(String, Option<DateTime<Utc>>)]) -> Vec<usize> {
    // group key → (position in output, winner index, winner rank)
    let mut groups: HashMap<&str, usize> = HashMap::new();
    let mut winners: Vec<(usize, Rank)> = Vec::new();
    for (index, (key, time)) in keys.iter().enumerate() {
        let rank = time.map_or(Rank::Now(index), Rank::At);
        match groups.get(key.as_str()) {
            Some(&slot) => {
                if rank > winners[slot].1 {
                    winners[slot] = (index, rank);
                }
            }
            None => {
                groups.insert(key, winners.len());
                winners.push((index, rank));
            }
        }
    }
    winners.into_iter().map(|(index, _)| index).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::wire::envelope::decode_value;

    fn message(event: &str, record: Value) -> Decoded {
        decode_value(json!({"message": [{"event": event, "model_name": "Booking", "data": [record]}]})).unwrap()
    }

    /// Vector c21.
    #[test]
    fn typical_batch_keeps_the_latest_per_event_and_id() {
        let batch = [
            message(
                "booking_created",
                json!({"id": 16, "client_name": "Rich", "updated_at": "2023-07-13T16:01:41.0Z"}),
            ),
            message(
                "booking_updated",
                json!({"id": 16, "client_name": "Rich", "updated_at": "2023-07-13T16:01:41.5Z"}),
            ),
            message(
                "booking_updated",
                json!({"id": 17, "client_name": "Rich", "updated_at": "2023-07-13T16:01:41.6Z"}),
            ),
            message(
                "booking_updated",
                json!({"id": 16, "client_name": "Updated", "updated_at": "2023-07-13T16:01:41.7Z"}),
            ),
            message("booking_canceled", json!({"id": 16})),
            message(
                "booking_updated",
                json!({"id": 16, "client_name": "Updated", "updated_at": "2023-07-13T16:01:41.2Z"}),
            ),
        ];
        let refs: Vec<&Decoded> = batch.iter().collect();
        let kept: Vec<usize> = remove_duplicates(&refs).unwrap().into_iter().map(|i| i + 1).collect();
        assert_eq!(kept, [1, 4, 3, 5]);
    }

    #[test]
    fn not_applicable_with_tombstones_or_several_records() {
        let one = message("a_updated", json!({"id": 1}));
        assert_eq!(remove_duplicates(&[&one, &Decoded::Tombstone]), None);
        let two = decode_value(
            json!({"message": [{"event": "a_updated", "model_name": "A", "data": [{"id": 1}, {"id": 2}]}]}),
        )
        .unwrap();
        assert_eq!(remove_duplicates(&[&one, &two]), None);
        assert_eq!(remove_duplicates(&[]), Some(vec![]));
    }

    #[test]
    fn ties_keep_the_first_and_missing_times_win() {
        let a = message("a_updated", json!({"id": 1, "updated_at": "2023-01-01T00:00:00Z"}));
        let b = message("a_updated", json!({"id": 1, "updated_at": "2023-01-01T00:00:00Z"}));
        assert_eq!(remove_duplicates(&[&a, &b]), Some(vec![0]));
        let c = message("a_updated", json!({"id": 1}));
        let d = message("a_updated", json!({"id": 1, "updated_at": 1_700_000_000}));
        assert_eq!(remove_duplicates(&[&a, &c, &b]), Some(vec![1]));
        assert_eq!(remove_duplicates(&[&c, &d]), Some(vec![1]), "a non-string time counts as now; the later now wins");
    }

    fn arbitrary_batch() -> impl Strategy<Value = Vec<(u8, u8, Option<u16>)>> {
        proptest::collection::vec((0u8..3, 0u8..4, proptest::option::of(0u16..50)), 0..30)
    }

    fn build(batch: &[(u8, u8, Option<u16>)]) -> Vec<Decoded> {
        batch
            .iter()
            .map(|(event, id, at)| {
                let mut record = json!({"id": id});
                if let Some(at) = at {
                    record["updated_at"] = json!(format!("2023-01-01T00:00:{:02}.{:03}Z", at / 1000 % 60, at % 1000));
                }
                message(["a_created", "a_updated", "a_destroyed"][usize::from(*event)], record)
            })
            .collect()
    }

    proptest! {
        /// One message per group survives, groups keep their first-appearance order, and
        /// deduplicating the output again changes nothing (idempotence).
        #[test]
        fn dedup_keeps_one_per_group_in_order_and_is_idempotent(batch in arbitrary_batch()) {
            let decoded = build(&batch);
            let refs: Vec<&Decoded> = decoded.iter().collect();
            let kept = remove_duplicates(&refs).unwrap();
            let key = |i: usize| (batch[i].0, batch[i].1);
            let mut first_seen = Vec::new();
            for i in 0..batch.len() {
                if !first_seen.contains(&key(i)) {
                    first_seen.push(key(i));
                }
            }
            let kept_keys: Vec<_> = kept.iter().map(|&i| key(i)).collect();
            prop_assert_eq!(&kept_keys, &first_seen);
            for &i in &kept {
                for j in 0..batch.len() {
                    if key(j) == key(i) {
                        match (batch[i].2, batch[j].2) {
                            (Some(winner), Some(other)) => prop_assert!(winner >= other),
                            (Some(_), None) => prop_assert!(false, "a missing time must win"),
                            _ => {}
                        }
                    }
                }
            }
            let again_input: Vec<&Decoded> = kept.iter().map(|&i| &decoded[i]).collect();
            let again = remove_duplicates(&again_input).unwrap();
            prop_assert_eq!(again, (0..kept.len()).collect::<Vec<_>>());
        }
    }
}
