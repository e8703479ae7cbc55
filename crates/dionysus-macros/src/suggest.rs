//! "Did you mean" hints for misspelt keys and names, and the one message every macro gives
//! for an unknown key. The distance is `strsim`'s optimal string alignment, so a swap of two
//! neighbouring letters (`nmae` → `name`) counts as one edit.

/// The candidate closest to `word`, when it is close enough to be a likely typo: at most one
/// edit per three characters (at least one).
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (strsim::osa_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `; did you mean `hint`?` when a candidate is close to `word`, else nothing.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(word, candidates) {
        Some(hint) => format!("; did you mean `{hint}`?"),
        None => String::new(),
    }
}

/// A sentence naming an unknown key of `what`, a hint when one is close, and the accepted
/// keys.
pub(crate) fn unknown_key_message(what: &str, word: &str, keys: &[&str]) -> String {
    format!(
        "unknown key `{word}` in {what}{}\naccepted keys: {}",
        did_you_mean(word, keys.iter().copied()),
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["partition_key", "partitions", "name"];
        assert_eq!(closest("partiton_key", keys), Some("partition_key"));
        assert_eq!(closest("nmae", keys), Some("name"));
        assert_eq!(closest("partitons", keys), Some("partitions"));
        assert_eq!(closest("color", keys), None);
        assert_eq!(closest("", keys), None);
    }

    #[test]
    fn unknown_key_message_lists_the_accepted_keys() {
        assert_eq!(
            unknown_key_message("`#[publish(...)]`", "topik", &["topic", "with"]),
            "unknown key `topik` in `#[publish(...)]`; did you mean `topic`?\naccepted keys: topic, with"
        );
        assert_eq!(
            unknown_key_message("`#[publish(...)]`", "color", &["topic"]),
            "unknown key `color` in `#[publish(...)]`\naccepted keys: topic"
        );
    }
}
