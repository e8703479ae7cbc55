//! The runtime crate's layout keeps its promises: imports point one way. Read from the source
//! (`crates/dionysus/src`), every `crate::…`/`super::…` path in code (not comments) is an edge
//! from the file's module to the module it names; the graph of top-level modules must follow
//! the layers below and have no cycle, and within a folder no file may import a file that
//! imports it back.
//!
//! Layers, bottom up: `wire` and `config` (nothing of the crate), `seal` (config only), then
//! `schema`, `db`, `telemetry`, `registry`, `handle`, `migrate`, `kafka`, `avro` (records and
//! the schema registry, under the configured backend), then `producer` and `consumer` (never
//! each other), then `checkpoint` (over the consumer) and `delayer` (over both: it consumes
//! delay topics and sends), then `error`, then `http` (the events API and console), then `cli` and
//! `testing`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("config", &[]),
    ("seal", &["config"]),
    ("schema", &[]),
    ("telemetry", &[]),
    ("db", &["config"]),
    ("registry", &["wire"]),
    ("handle", &["config", "registry"]),
    ("migrate", &["config", "db"]),
    ("kafka", &["wire", "config", "registry"]),
    ("avro", &["wire", "config", "registry"]),
    ("producer", &["wire", "config", "seal", "schema", "db", "telemetry", "registry", "handle", "kafka", "avro"]),
    ("consumer", &["wire", "config", "seal", "schema", "db", "telemetry", "registry", "handle", "kafka", "avro"]),
    ("checkpoint", &["wire", "config", "seal", "schema", "db", "telemetry", "registry", "consumer"]),
    ("delayer", &["wire", "config", "telemetry", "registry", "handle", "kafka", "producer", "consumer"]),
    (
        "error",
        &[
            "wire",
            "config",
            "db",
            "telemetry",
            "registry",
            "migrate",
            "kafka",
            "producer",
            "consumer",
            "checkpoint",
            "delayer",
        ],
    ),
    (
        "http",
        &[
            "wire",
            "config",
            "schema",
            "db",
            "telemetry",
            "registry",
            "handle",
            "migrate",
            "kafka",
            "producer",
            "consumer",
            "error",
            "checkpoint",
        ],
    ),
    (
        "cli",
        &[
            "http",
            "wire",
            "config",
            "schema",
            "db",
            "telemetry",
            "registry",
            "handle",
            "migrate",
            "kafka",
            "producer",
            "consumer",
            "checkpoint",
            "error",
            "avro",
            "delayer",
        ],
    ),
    (
        "testing",
        &[
            "wire",
            "config",
            "schema",
            "db",
            "telemetry",
            "registry",
            "handle",
            "migrate",
            "kafka",
            "producer",
            "consumer",
            "checkpoint",
            "error",
            "avro",
        ],
    ),
];

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/dionysus/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `producer/relay/batch.rs` → `["producer", "relay", "batch"]`; `mod.rs` is its folder;
/// `lib.rs` is the root (`[]`).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of a file without comments, string contents and `#[cfg(test)]` modules (tests
/// may reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(index) => &text[..index],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut kept = String::new();
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_string = false;
                    kept.push('"');
                }
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_string = true;
            }
            kept.push(c);
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Every path starting with `crate::` or `super::` in `code`, with one level of `{…}`
/// groups expanded: `use crate::a::{b, c::d}` → `crate::a::b`, `crate::a::c::d`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::"].iter().find(|prefix| {
            let prefix: Vec<char> = prefix.chars().collect();
            bytes[i..].starts_with(&prefix)
                && (i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':'))
        });
        let Some(_) = starts else {
            i += 1;
            continue;
        };
        let mut j = i;
        let mut segments = Vec::new();
        let mut current = String::new();
        while j < bytes.len() {
            let c = bytes[j];
            if c.is_alphanumeric() || c == '_' {
                current.push(c);
                j += 1;
            } else if c == ':' && bytes.get(j + 1) == Some(&':') {
                segments.push(std::mem::take(&mut current));
                j += 2;
            } else {
                break;
            }
        }
        if !current.is_empty() {
            segments.push(current);
        }
        if bytes.get(j) == Some(&'{') {
            let end = bytes[j..].iter().position(|c| *c == '}').map_or(bytes.len(), |p| j + p);
            let group: String = bytes[j + 1..end].iter().collect();
            for member in group.split(',') {
                let member: Vec<String> = member
                    .trim()
                    .split("::")
                    .map(|s| s.trim().trim_start_matches('{').to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                let mut path = segments.clone();
                path.extend(member);
                found.push(path);
            }
            i = end;
        } else {
            found.push(segments);
            i = j.max(i + 1);
        }
    }
    found
}

/// Paths in `code` that start with a child module the file declares (`mod batch;` then
/// `batch::Batch`), without the `mod` declarations themselves.
fn child_paths(code: &str) -> Vec<Vec<String>> {
    let children: Vec<String> = code
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(|name| name.trim().to_owned())
        })
        .collect();
    let mut found = Vec::new();
    for child in children {
        let marker = format!("{child}::");
        for (index, _) in code.match_indices(&marker) {
            let before = code[..index].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            found.extend(paths(&format!("crate::{}", &code[index..])).into_iter().take(1).map(|mut path| {
                path.remove(0);
                path
            }));
        }
    }
    found
}

struct Tree {
    /// Module path → file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// Names `lib.rs` re-exports at the root → the module they come from.
    root_items: BTreeMap<String, Vec<String>>,
}

impl Tree {
    fn read() -> Tree {
        let root = source_root();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let modules = files.iter().map(|file| (module_of(&root, file), file.clone())).collect();
        let mut root_items = BTreeMap::new();
        let lib = code(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
        for statement in lib.split(';') {
            let Some(used) = statement.trim().strip_prefix("pub use ") else { continue };
            // `pub use crate::a::B` in lib.rs's inline modules names the same module as `a::B`.
            let used = used.trim().trim_start_matches("crate::");
            let (base, names): (&str, Vec<&str>) = match used.split_once("::{") {
                Some((base, group)) => (base, group.trim_end_matches('}').split(',').map(str::trim).collect()),
                None => match used.rsplit_once("::") {
                    Some((base, name)) => (base, vec![name]),
                    None => continue,
                },
            };
            let base: Vec<String> = base.split("::").map(str::to_owned).collect();
            for name in names.into_iter().filter(|name| !name.is_empty()) {
                let name = name.split(" as ").last().unwrap().trim().to_owned();
                root_items.insert(name, base.clone());
            }
        }
        Tree { modules, root_items }
    }

    /// The module a path (already made absolute) refers to: its longest prefix that is a
    /// module, after resolving names re-exported by `lib.rs`.
    fn target(&self, absolute: &[String]) -> Option<Vec<String>> {
        let first = absolute.first()?;
        let absolute: Vec<String> = match self.root_items.get(first) {
            Some(base) if !self.modules.contains_key(&vec![first.clone()]) => {
                base.iter().cloned().chain(absolute[1..].iter().cloned()).collect()
            }
            _ => absolute.to_vec(),
        };
        (1..=absolute.len()).rev().map(|n| absolute[..n].to_vec()).find(|prefix| self.modules.contains_key(prefix))
    }

    /// Module → the modules its code names.
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, file) in &self.modules {
            let text = code(&std::fs::read_to_string(file).unwrap());
            let mut named = paths(&text);
            // A folder (not the crate root, a facade) naming its own child modules imports
            // them too: `batch::Batch` in `relay/mod.rs`.
            if !module.is_empty() {
                named.extend(
                    child_paths(&text)
                        .into_iter()
                        .map(|path| std::iter::once("self".to_owned()).chain(path).collect::<Vec<String>>()),
                );
            }
            for path in named {
                let absolute: Vec<String> = match path[0].as_str() {
                    "crate" => path[1..].to_vec(),
                    "self" => module.iter().chain(&path[1..]).cloned().collect(),
                    _ => {
                        // Each leading `super` is one module up from this file's module.
                        let mut base = module.clone();
                        let mut rest = &path[..];
                        while rest.first().is_some_and(|s| s == "super") {
                            base.pop();
                            rest = &rest[1..];
                        }
                        base.into_iter().chain(rest.iter().cloned()).collect()
                    }
                };
                if let Some(target) = self.target(&absolute) {
                    if &target != module {
                        edges.entry(module.clone()).or_default().insert(target);
                    }
                }
            }
        }
        edges
    }
}

fn top(module: &[String]) -> String {
    module.first().cloned().unwrap_or_else(|| "lib".to_owned())
}

#[test]
fn top_level_modules_follow_the_layers() {
    let tree = Tree::read();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut violations = Vec::new();
    for (from, targets) in tree.edges() {
        let from_top = top(&from);
        for target in targets {
            let to_top = top(&target);
            if from_top == to_top || from_top == "lib" {
                continue;
            }
            let ok = allowed.get(from_top.as_str()).is_some_and(|list| list.contains(&to_top.as_str()));
            if !ok {
                violations.push(format!("{} imports {}", from.join("::"), target.join("::")));
            }
        }
    }
    let unknown: Vec<String> = tree
        .modules
        .keys()
        .map(|module| top(module))
        .filter(|name| name != "lib" && !allowed.contains_key(name.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(unknown.is_empty(), "top-level modules missing from the layer table: {unknown:?}");
    assert!(violations.is_empty(), "imports against the layers:\n{}", violations.join("\n"));
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let tree = Tree::read();
    let edges = tree.edges();
    // Tarjan would do; the graph is small, so look for a path back from each edge's target.
    let mut cycles = BTreeSet::new();
    for (from, targets) in &edges {
        for target in targets {
            let mut stack = vec![vec![target.clone()]];
            let mut seen = BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap().clone();
                if &last == from {
                    let mut names: Vec<String> =
                        std::iter::once(from.join("::")).chain(path.iter().map(|module| module.join("::"))).collect();
                    names.dedup();
                    cycles.insert(names.join(" -> "));
                    break;
                }
                if !seen.insert(last.clone()) {
                    continue;
                }
                for next in edges.get(&last).into_iter().flatten() {
                    let mut extended = path.clone();
                    extended.push(next.clone());
                    stack.push(extended);
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.into_iter().collect::<Vec<_>>().join("\n"));
}
