//! The layers of `src/` (see `src/lib.rs` and `docs/architecture.md`): every path a module
//! names into another top-level module (`crate::x::…`, and `super::…` out of a folder's
//! `mod.rs`, inline paths as much as `use` lines) must lead to a lower layer. That also means
//! no import circle between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first; modules on one line are one layer and may not import each other.
const LAYERS: &[&[&str]] = &[
    &["core"],
    &["config"],
    &["metrics", "store", "proc"],
    &["jobs"],
    &["git", "github"],
    &["links"],
    &["engine"],
    &["agent"],
    &["bot"],
    &["run"],
    &["maintenance"],
    &["web"],
    &["app"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifiers that follow each `prefix` in `text` (`crate::store::x` gives `store`).
fn named_after<'a>(text: &'a str, prefix: &str) -> impl Iterator<Item = &'a str> {
    text.match_indices(prefix).filter_map(move |(at, _)| {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        let rest = &text[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Top-level module → the other top-level modules it names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let top = parts[0].clone();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let mut named: BTreeSet<String> =
            named_after(&text, "crate::").map(str::to_owned).collect();
        // Out of a folder's `mod.rs`, `super::` is the crate root.
        if parts.len() == 2 && parts[1] == "mod" {
            named.extend(
                named_after(&text, "super::")
                    .filter(|n| *n != "super")
                    .map(str::to_owned),
            );
        }
        named.remove(&top);
        graph.entry(top).or_default().extend(named);
    }
    graph
}

#[test]
fn every_module_imports_only_lower_layers() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (module, named) in &graph {
        let Some(mine) = rank(module) else {
            wrong.push(format!(
                "`{module}` is in no layer: add it to LAYERS and src/lib.rs"
            ));
            continue;
        };
        for other in named {
            match rank(other) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!(
                    "`{module}` imports `{other}`, which is not below it"
                )),
                None => wrong.push(format!(
                    "`{module}` imports `{other}`, which is in no layer"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The check sees what it should: the engine stands on the store, and dispatch on the engine.
    assert!(graph["engine"].contains("store"), "{graph:?}");
    assert!(graph["app"].contains("engine"), "{graph:?}");
}

#[test]
fn an_import_upwards_is_caught() {
    // The scanner on a line like those the layers forbid: inline paths count, not only `use`.
    let text = "fn f() { crate::engine::Engine::record(); let x = other::crate::no; }";
    let named: Vec<&str> = named_after(text, "crate::").collect();
    assert_eq!(named, ["engine"]);
    assert_eq!(rank("store"), rank("proc"));
    assert!(rank("engine") < rank("bot"));
}

#[test]
fn every_sql_statement_is_in_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("store")))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            ["sqlx::query", "query_as", "query_scalar"]
                .iter()
                .any(|q| text.contains(q))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "SQL outside src/store/: {outside:?}");
}
