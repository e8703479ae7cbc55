//! "Did you mean" hints for misspelt keys.

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// A sentence listing the accepted keys, with a hint when one is close to `word`.
pub(crate) fn unknown_key_message(what: &str, word: &str, keys: &[&str]) -> String {
    let mut message = format!("unknown key `{word}` in {what}");
    if let Some(hint) = closest(word, keys.iter().copied()) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    message.push_str(&format!("\naccepted keys: {}", keys.join(", ")));
    message
}

/// Edit distance between two words.
fn edit_distance(a: &str, b: &str) -> usize {
    // Optimal string alignment: insertions, deletions, substitutions and transpositions of
    // adjacent characters (`nmae` → `name`) each cost 1.
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["partition_key", "partitions", "name"];
        assert_eq!(closest("partiton_key", keys), Some("partition_key"));
        assert_eq!(closest("nmae", keys), Some("name"));
        assert_eq!(closest("color", keys), None);
    }
}
