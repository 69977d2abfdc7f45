//! The module tree's dependency rules, checked on the source: no file imports from a file that
//! imports it back (directly or round a longer circle), no pipeline stage reaches up into
//! `app/` (the wiring), and the pure modules (`guac`, `render`) use nothing that does I/O.
//!
//! It reads `src/` as text: every `crate::a::b` / `super::a` path outside comments and unit-test
//! modules is an edge to the deepest module file it names. Imports of a parent `mod.rs` (its
//! facade: re-exported types, the stage's context) are allowed and not counted as circles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["serve", "ctx"]`; the crate root is empty.
type Module = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(file: &Path) -> Module {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

fn module_exists(m: &[String]) -> bool {
    let base = src_dir().join(m.join("/"));
    base.with_extension("rs").is_file() || base.join("mod.rs").is_file()
}

/// The source without comments and without the unit-test module at the bottom.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read source");
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::` or `super::`, with `{a, b::c}` groups expanded one
/// level (enough for this codebase's imports).
fn paths_in(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let start = from + i;
            from = start + root.len();
            let preceded_by_ident =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if preceded_by_ident {
                continue;
            }
            let rest = &code[start + root.len()..];
            let stem_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let stem: Vec<String> = rest[..stem_len]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let is_crate = root == "crate::";
            let stem_is_prefix = stem_len == 0 || rest[..stem_len].ends_with("::");
            if rest[stem_len..].starts_with('{') && stem_is_prefix {
                let group = &rest[stem_len + 1..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.split_whitespace().next().unwrap_or("");
                    let mut p = stem.clone();
                    p.extend(
                        item.split("::")
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                    );
                    out.push((is_crate, p));
                }
            } else {
                out.push((is_crate, stem));
            }
        }
    }
    out
}

/// Edges from each module to the modules it uses (deepest existing module file named).
fn edges() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in files {
        let me = module_of(&file);
        let code = code_of(&file);
        for (is_crate, path) in paths_in(&code) {
            let full: Module = if is_crate {
                path
            } else {
                let mut base = me.clone();
                base.pop();
                base.extend(path);
                base
            };
            let target = (1..=full.len())
                .map(|k| full[..k].to_vec())
                .rfind(|m| module_exists(m))
                .unwrap_or_default();
            if !target.is_empty() && target != me {
                graph.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

/// True when `to` is `from`'s parent (or an ancestor): a child using its stage's facade.
fn is_ancestor(from: &Module, to: &Module) -> bool {
    to.len() < from.len() && from.starts_with(to)
}

fn reaches(graph: &BTreeMap<Module, BTreeSet<Module>>, from: &Module, to: &Module) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.clone()];
    while let Some(m) = stack.pop() {
        if &m == to {
            return true;
        }
        if !seen.insert(m.clone()) {
            continue;
        }
        for next in graph.get(&m).into_iter().flatten() {
            if !is_ancestor(&m, next) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = edges();
    assert!(
        graph.len() > 20,
        "the scan found too few modules ({}): the parser of this test is broken",
        graph.len()
    );
    let mut circles = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if !is_ancestor(from, to) && reaches(&graph, to, from) {
                circles.push(format!("{} <-> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(circles.is_empty(), "modules in a circle: {circles:#?}");
}

#[test]
fn no_stage_reaches_up_into_app() {
    let graph = edges();
    let up: Vec<String> = graph
        .iter()
        .filter(|(from, _)| from.first().is_none_or(|top| top != "app"))
        .filter(|(from, _)| !from.is_empty())
        .flat_map(|(from, tos)| {
            tos.iter()
                .filter(|to| to.first().is_some_and(|top| top == "app"))
                .map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
        })
        .collect();
    assert!(up.is_empty(), "imports from the wiring layer: {up:#?}");
}

#[test]
fn the_pure_modules_use_no_io_modules() {
    let graph = edges();
    let allowed = ["guac", "render", "error", "limits"];
    let mut bad = Vec::new();
    for (from, tos) in &graph {
        let Some(top) = from.first() else { continue };
        if top != "guac" && top != "render" {
            continue;
        }
        for to in tos {
            if !allowed.contains(&to[0].as_str()) {
                bad.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(bad.is_empty(), "pure modules importing I/O: {bad:#?}");
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports() {
    let code = "use super::{a, b::C};\nuse crate::queue::store::{put_clip};\nx(crate::y::z);";
    let found = paths_in(code);
    assert!(found.contains(&(false, vec!["a".into()])));
    assert!(found.contains(&(false, vec!["b".into(), "C".into()])));
    assert!(found.contains(&(
        true,
        vec!["queue".into(), "store".into(), "put_clip".into()]
    )));
    assert!(found.contains(&(true, vec!["y".into(), "z".into()])));
}

/// The pipeline's order between top-level modules: each entry names a module and the modules
/// it must not import (code before its unit tests), because they come after it on the path
/// tap -> queue -> encode -> upload -> manifest -> fleet index -> serve. A later stage gets
/// what it needs from an earlier one through the queue, never by being called.
const RULES: &[(&str, &[&str])] = &[
    ("queue", &["encode", "upload", "manifest", "fleet", "serve"]),
    ("encode", &["upload", "manifest", "fleet", "serve"]),
    ("upload", &["manifest", "fleet", "serve"]),
    ("manifest", &["fleet", "serve"]),
];

#[test]
fn no_stage_imports_a_later_stage() {
    let graph = edges();
    let mut bad = Vec::new();
    for (from, tos) in &graph {
        let Some(top) = from.first() else { continue };
        let Some((_, banned)) = RULES.iter().find(|(m, _)| m == top) else {
            continue;
        };
        for to in tos {
            if banned.contains(&to[0].as_str()) {
                bad.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the pipeline order: {bad:#?}"
    );
}
