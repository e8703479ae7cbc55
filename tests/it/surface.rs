//! The public surface of `dionysus` does not grow by accident: every path a user can name
//! (items, modules and re-exports, with every feature on), read from the crate's source, is
//! pinned in a snapshot. A change to the surface shows up as a snapshot diff to review
//! (`cargo insta review`, or accept the `.snap.new` file when the change is intended).
//!
//! Read with `syn` rather than from `cargo doc` output, so the test needs no documentation
//! build and sees the source it is compiled with. What users cannot name is left out: items
//! that are not `pub`, `#[doc(hidden)]` items and modules (`__private` for the macros,
//! `__internals` for the project's own tests), `#[cfg(test)]` code. Methods, fields and
//! variants belong to their type and are not listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::{Attribute, Item, UseTree, Visibility};

/// A module of the crate: its items and the folder its `mod x;` children live in.
struct Module {
    items: Vec<Item>,
    dir: PathBuf,
}

/// Every module of the crate by its path (`["consumer", "replica"]`), public or not.
struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/dionysus/src")
}

fn has_attr(attrs: &[Attribute], name: &str, arg: &str) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident(name)
            && attr.meta.require_list().is_ok_and(|list| list.tokens.to_string().split(',').any(|t| t.trim() == arg))
    })
}

/// Hidden from users: `#[doc(hidden)]`, or compiled for the crate's own tests only.
fn hidden(attrs: &[Attribute]) -> bool {
    has_attr(attrs, "doc", "hidden") || has_attr(attrs, "cfg", "test")
}

fn attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        _ => &[],
    }
}

fn visibility(item: &Item) -> Option<&Visibility> {
    match item {
        Item::Const(i) => Some(&i.vis),
        Item::Enum(i) => Some(&i.vis),
        Item::Fn(i) => Some(&i.vis),
        Item::Mod(i) => Some(&i.vis),
        Item::Static(i) => Some(&i.vis),
        Item::Struct(i) => Some(&i.vis),
        Item::Trait(i) => Some(&i.vis),
        Item::Type(i) => Some(&i.vis),
        Item::Union(i) => Some(&i.vis),
        Item::Use(i) => Some(&i.vis),
        _ => None,
    }
}

/// The kind and name an item declares (not for `use` and macros).
fn declared(item: &Item) -> Option<(&'static str, String)> {
    let (kind, ident) = match item {
        Item::Const(i) => ("const", &i.ident),
        Item::Enum(i) => ("enum", &i.ident),
        Item::Fn(i) => ("fn", &i.sig.ident),
        Item::Mod(i) => ("mod", &i.ident),
        Item::Static(i) => ("static", &i.ident),
        Item::Struct(i) => ("struct", &i.ident),
        Item::Trait(i) => ("trait", &i.ident),
        Item::Type(i) => ("type", &i.ident),
        Item::Union(i) => ("union", &i.ident),
        _ => return None,
    };
    Some((kind, ident.to_string()))
}

/// The leaves of a `use` tree: (path, name it is known by). A glob is refused: the surface
/// would then depend on another module's contents without saying so.
fn use_leaves(tree: &UseTree, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        UseTree::Path(path) => {
            let mut next = prefix.to_vec();
            next.push(path.ident.to_string());
            use_leaves(&path.tree, &next, out);
        }
        UseTree::Name(name) if name.ident == "self" => {
            out.push((prefix.to_vec(), prefix.last().cloned().unwrap_or_default()));
        }
        UseTree::Name(name) => {
            let mut path = prefix.to_vec();
            path.push(name.ident.to_string());
            out.push((path, name.ident.to_string()));
        }
        UseTree::Rename(rename) => {
            let mut path = prefix.to_vec();
            path.push(rename.ident.to_string());
            out.push((path, rename.rename.to_string()));
        }
        UseTree::Group(group) => group.items.iter().for_each(|tree| use_leaves(tree, prefix, out)),
        UseTree::Glob(_) => panic!("a public glob re-export under `{}`: name the items", prefix.join("::")),
    }
}

impl Crate {
    fn read() -> Crate {
        let root = source_root();
        let mut modules = BTreeMap::new();
        Crate::load(&root.join("lib.rs"), root.clone(), Vec::new(), &mut modules);
        Crate { modules }
    }

    fn load(file: &Path, dir: PathBuf, path: Vec<String>, modules: &mut BTreeMap<Vec<String>, Module>) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Crate::add(parsed.items, dir, path, modules);
    }

    fn add(items: Vec<Item>, dir: PathBuf, path: Vec<String>, modules: &mut BTreeMap<Vec<String>, Module>) {
        for item in &items {
            let Item::Mod(module) = item else { continue };
            if has_attr(&module.attrs, "cfg", "test") {
                continue;
            }
            let name = module.ident.to_string();
            let mut child = path.clone();
            child.push(name.clone());
            match &module.content {
                Some((_, inline)) => Crate::add(inline.clone(), dir.join(&name), child, modules),
                None => {
                    let flat = dir.join(format!("{name}.rs"));
                    let file = if flat.exists() { flat } else { dir.join(&name).join("mod.rs") };
                    Crate::load(&file, dir.join(&name), child, modules);
                }
            }
        }
        modules.insert(path, Module { items, dir });
    }

    /// A `use` path as a crate path: `crate::`, `self::`, `super::` and a first segment
    /// naming something of `from` are the crate's; anything else is another crate's (`None`).
    fn absolute(&self, from: &[String], path: &[String]) -> Option<Vec<String>> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" => Some(from.iter().chain(rest).cloned().collect()),
            "super" => {
                let mut base = from.to_vec();
                base.pop();
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                Some(base.into_iter().chain(rest.iter().cloned()).collect())
            }
            _ => {
                let module = &self.modules[from];
                let local = module.items.iter().any(|item| declared(item).is_some_and(|(_, name)| &name == first))
                    || module.items.iter().any(|item| match item {
                        Item::Use(used) => {
                            let mut leaves = Vec::new();
                            use_leaves(&used.tree, &[], &mut leaves);
                            leaves.iter().any(|(_, name)| name == first)
                        }
                        _ => false,
                    });
                local.then(|| from.iter().chain(path).cloned().collect())
            }
        }
    }

    /// What a crate path names: `("mod", path)` for a module, else the kind of the item it
    /// ends at (following re-exports; `"hidden"` for a `#[doc(hidden)]` one), `None` for
    /// another crate's item.
    fn resolve(&self, path: &[String]) -> Option<(&'static str, Vec<String>)> {
        if self.modules.contains_key(path) {
            return Some(("mod", path.to_vec()));
        }
        let (name, parent) = path.split_last()?;
        let module = self.modules.get(parent)?;
        for item in &module.items {
            if let Some((kind, declared)) = declared(item) {
                if &declared == name {
                    return Some((if hidden(attrs(item)) { "hidden" } else { kind }, path.to_vec()));
                }
            }
        }
        for item in &module.items {
            let Item::Use(used) = item else { continue };
            let mut leaves = Vec::new();
            use_leaves(&used.tree, &[], &mut leaves);
            for (target, known_as) in leaves {
                if &known_as == name {
                    return self.absolute(parent, &target).and_then(|target| self.resolve(&target));
                }
            }
        }
        None
    }

    /// Every public path under `module` (a crate path), named from `shown` (its public path).
    fn surface(&self, module: &[String], shown: &str, out: &mut BTreeSet<String>) {
        let Some(found) = self.modules.get(module) else { panic!("no module `{}`", module.join("::")) };
        for item in &found.items {
            if !matches!(visibility(item), Some(Visibility::Public(_))) || hidden(attrs(item)) {
                continue;
            }
            match item {
                Item::Use(used) => {
                    let mut leaves = Vec::new();
                    use_leaves(&used.tree, &[], &mut leaves);
                    for (target, known_as) in leaves {
                        let path = format!("{shown}::{known_as}");
                        match self.absolute(module, &target).and_then(|target| self.resolve(&target)) {
                            Some(("mod", target)) => {
                                out.insert(format!("mod {path}"));
                                self.surface(&target, &path, out);
                            }
                            Some(("hidden", _)) => {}
                            Some((kind, _)) => {
                                out.insert(format!("{kind} {path}"));
                            }
                            None => {
                                out.insert(format!("use {path} = {}", target.join("::")));
                            }
                        }
                    }
                }
                Item::Mod(child) => {
                    let path = format!("{shown}::{}", child.ident);
                    out.insert(format!("mod {path}"));
                    let mut inner = module.to_vec();
                    inner.push(child.ident.to_string());
                    self.surface(&inner, &path, out);
                }
                other => {
                    if let Some((kind, name)) = declared(other) {
                        out.insert(format!("{kind} {shown}::{name}"));
                    }
                }
            }
        }
    }
}

#[test]
fn the_public_surface_is_the_pinned_one() {
    let krate = Crate::read();
    let mut surface = BTreeSet::new();
    krate.surface(&[], "dionysus", &mut surface);
    assert!(surface.contains("struct dionysus::Dionysus"), "the reader found the handle: {surface:?}");
    let listed = surface.into_iter().collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!("public_paths", listed);
}

/// The reader sees through re-exports of private modules and skips hidden ones, so the
/// snapshot cannot pass by reading nothing.
#[test]
fn hidden_modules_and_private_items_are_left_out() {
    let krate = Crate::read();
    let mut surface = BTreeSet::new();
    krate.surface(&[], "dionysus", &mut surface);
    assert!(surface.iter().any(|line| line == "fn dionysus::outbox::created"), "re-exported module walked");
    assert!(surface.iter().all(|line| !line.contains("__private") && !line.contains("__internals")));
    assert!(surface.iter().all(|line| !line.contains("::wire::")), "the wire module is private");
    assert!(krate.modules.contains_key(&vec!["wire".to_owned()]), "private modules are read all the same");
    assert!(krate.modules[&Vec::new()].dir.ends_with("src"));
}
