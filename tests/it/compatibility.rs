//! The rule-by-rule compatibility table (`docs/compatibility.md`) against dionysus-rb's rule
//! ids: every id of the specification has exactly one row, every row names the tests that check
//! it or the deviation that replaces it, and the tests it names exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// The rule ids of the specification, in its order: lines `**CFG-1 Title**`.
fn spec_ids(spec: &str) -> Vec<String> {
    spec.lines()
        .filter_map(|line| {
            let id = line.strip_prefix("**")?.split_whitespace().next()?.trim_end_matches("**");
            is_rule_id(id).then(|| id.to_owned())
        })
        .collect()
}

fn is_rule_id(text: &str) -> bool {
    let Some((prefix, number)) = text.split_once('-') else { return false };
    matches!(prefix, "CFG" | "W" | "P" | "G" | "C") && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

/// `(rule id, status, what checks it)` of each table row.
fn table_rows(doc: &str) -> Vec<(String, String, String)> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix('|')?.strip_suffix('|')?.split('|').map(str::trim).collect();
            match cells.as_slice() {
                [id, status, checks] if is_rule_id(id) => {
                    Some(((*id).to_owned(), (*status).to_owned(), (*checks).to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The `path::test` and `tests/ui/...rs` references of a cell.
fn references(cell: &str) -> Vec<(String, Option<String>)> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|code| (code.starts_with("tests/") || code.starts_with("crates/")) && code.contains(".rs"))
        .map(|code| match code.split_once("::") {
            Some((path, test)) => (path.to_owned(), Some(test.to_owned())),
            None => (code.to_owned(), None),
        })
        .collect()
}

#[test]
fn every_rule_of_the_spec_has_a_row_naming_its_tests_or_its_deviation() {
    let root = root();
    let ids_file = std::fs::read_to_string(root.join("docs/spec-rule-ids.txt")).unwrap();
    let ids: Vec<String> = ids_file.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect();
    assert!(ids.iter().all(|id| is_rule_id(id)), "docs/spec-rule-ids.txt holds one rule id per line");

    // The specification beside the repository, when it is there (not in a clean checkout).
    let spec_path = root.join("../shared/spec/dionysus-rb.md");
    if let Ok(spec) = std::fs::read_to_string(&spec_path) {
        assert_eq!(
            ids,
            spec_ids(&spec),
            "docs/spec-rule-ids.txt is out of date with {}; copy the ids of its `**ID Title**` lines",
            spec_path.display()
        );
    }

    let doc = std::fs::read_to_string(root.join("docs/compatibility.md")).unwrap();
    let rows = table_rows(&doc);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (id, status, checks) in &rows {
        if !seen.insert(id.clone()) {
            problems.push(format!("{id} has more than one row"));
        }
        if !ids.contains(id) {
            problems.push(format!("{id} is not a rule of the specification"));
        }
        let refs = references(checks);
        match status.as_str() {
            "Same" if refs.is_empty() => problems.push(format!("{id} is marked Same but names no test")),
            "Same" | "Deviation" | "Not ported" | "Gap" => {}
            other => problems.push(format!("{id} has the unknown status `{other}`")),
        }
        if status == "Deviation" && refs.is_empty() && checks.len() < 40 {
            problems.push(format!("{id} is a deviation without a word of why"));
        }
        for (path, test) in refs {
            let file = root.join(&path);
            // A suite another change adds is checked once it is in the tree.
            let Ok(source) = std::fs::read_to_string(&file) else {
                if !path.starts_with("tests/it/consumer_parity.rs") {
                    problems.push(format!("{id} names {path}, which does not exist"));
                }
                continue;
            };
            if let Some(test) = test {
                if !source.contains(&format!("fn {test}(")) && !source.contains(&format!("fn {test}<")) {
                    problems.push(format!("{id} names {path}::{test}, which is not a function there"));
                }
            }
        }
    }
    for id in &ids {
        if !seen.contains(id) {
            problems.push(format!("{id} has no row in docs/compatibility.md"));
        }
    }
    assert!(problems.is_empty(), "docs/compatibility.md:\n{}", problems.join("\n"));
}

#[test]
fn the_table_parser_sees_ids_rows_and_references() {
    assert_eq!(spec_ids("**CFG-1 Bootstrap** (`lib`)\n**W-12 `serialize: false`**\n**Not-1 x**"), ["CFG-1", "W-12"]);
    let rows = table_rows("| rule | status | x |\n|---|---|---|\n| P-1 | Same | `tests/it/a.rs::b`, `x` |\n");
    assert_eq!(rows, [("P-1".to_owned(), "Same".to_owned(), "`tests/it/a.rs::b`, `x`".to_owned())]);
    assert_eq!(
        references(&rows[0].2),
        [("tests/it/a.rs".to_owned(), Some("b".to_owned()))],
        "only paths to Rust files count"
    );
}
