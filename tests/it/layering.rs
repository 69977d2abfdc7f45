//! The module tree's dependency rules, checked on the source:
//!
//! - no file imports from a file that imports it back (directly or round a longer circle);
//!   imports of a parent `mod.rs` (its facade) are allowed and not counted;
//! - no top-level module imports from one that imports it back, facades included: an import of
//!   `crate::upload::X` is an edge to `upload` whichever file X comes from;
//! - each top-level module imports only modules below it in [`LAYERS`] (the pipeline order
//!   and the assembly above it), so no stage imports `config` or `app/`;
//! - nothing outside a stage names its worker's file (`crate::encode::worker::...`): workers
//!   are used through what their stage's `mod.rs` re-exports;
//! - the pure modules (`guac`, `render`, `events`) use nothing that does I/O.
//!
//! It reads `src/` as text: every `crate::a::b` / `super::a` path outside comments and unit-test
//! modules is an edge to the deepest module file it names. The checks run on that graph; the
//! tests at the bottom feed them small made-up sources to show each rule catches what it names.

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

/// The source without comments and without the unit-test module at the bottom.
fn code_of(text: &str) -> String {
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

/// Module graph: each module to the modules it uses (deepest existing module named).
type Graph = BTreeMap<Module, BTreeSet<Module>>;

/// Every module of `src/` with its source text.
fn sources() -> Vec<(Module, String)> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files
        .iter()
        .map(|f| {
            (
                module_of(f),
                std::fs::read_to_string(f).expect("read source"),
            )
        })
        .collect()
}

/// Edges from each module to the modules it uses (deepest module of `sources` named).
fn edges_of(sources: &[(Module, String)]) -> Graph {
    let known: BTreeSet<&Module> = sources.iter().map(|(m, _)| m).collect();
    let mut graph = Graph::new();
    for (me, text) in sources {
        for (is_crate, path) in paths_in(&code_of(text)) {
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
                .rfind(|m| known.contains(m))
                .unwrap_or_default();
            if !target.is_empty() && &target != me {
                graph.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

fn edges() -> Graph {
    edges_of(&sources())
}

/// True when `to` is `from`'s parent (or an ancestor): a child using its stage's facade.
fn is_ancestor(from: &Module, to: &Module) -> bool {
    to.len() < from.len() && from.starts_with(to)
}

fn reaches(graph: &Graph, from: &Module, to: &Module) -> bool {
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

/// File-level circles (`a <-> b`), not counting imports of a parent facade.
fn file_circles(graph: &Graph) -> Vec<String> {
    let mut circles = Vec::new();
    for (from, tos) in graph {
        for to in tos {
            if !is_ancestor(from, to) && reaches(graph, to, from) {
                circles.push(format!("{} <-> {}", from.join("::"), to.join("::")));
            }
        }
    }
    circles
}

/// The graph of top-level modules: `manifest::worker -> upload::location` is `manifest -> upload`, and
/// `crate::upload::X` (a facade re-export) is `-> upload` too.
fn top_level(graph: &Graph) -> Graph {
    let mut top = Graph::new();
    for (from, tos) in graph {
        let Some(a) = from.first() else { continue };
        for to in tos {
            if to[0] != *a {
                top.entry(vec![a.clone()])
                    .or_default()
                    .insert(vec![to[0].clone()]);
            }
        }
    }
    top
}

/// Top-level circles (`config <-> upload`), each with the file edges that make its first step.
fn top_circles(graph: &Graph) -> Vec<String> {
    let top = top_level(graph);
    let mut circles = Vec::new();
    for (from, tos) in &top {
        for to in tos {
            if from < to && reaches(&top, to, from) {
                let via: Vec<String> = graph
                    .iter()
                    .filter(|(f, _)| f.first() == from.first())
                    .flat_map(|(f, ts)| {
                        ts.iter()
                            .filter(|t| t.first() == to.first())
                            .map(move |t| format!("{} -> {}", f.join("::"), t.join("::")))
                    })
                    .collect();
                circles.push(format!("{} <-> {} ({})", from[0], to[0], via.join(", ")));
            }
        }
    }
    circles
}

/// Each top-level module's floor, lowest first: a module imports only from its own floor or
/// the floors below (modules on one floor are checked for circles like all others).
/// The pipeline is the order data takes: tap -> queue -> encode -> upload -> manifest ->
/// fleet index -> serve, with the queue under every stage (each reads and writes it) and the
/// assembly (`config` builds each stage's settings, `doctor` checks them, `app` wires
/// everything) above them all.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "error",
            "limits",
            "clock",
            "durable",
            "lifecycle",
            "disk",
            "status",
            "secret",
            "guac",
            "render",
            "events",
        ],
    ),
    ("store", &["queue"]),
    ("tap", &["ingest"]),
    ("encode", &["encode"]),
    ("ocr", &["ocr"]),
    ("upload", &["upload"]),
    ("manifest", &["manifest"]),
    ("fleet index", &["fleet"]),
    ("search index", &["search"]),
    ("serve", &["serve"]),
    ("settings", &["config", "config_edit"]),
    ("checks", &["doctor"]),
    ("wiring", &["app"]),
];

/// Imports across floors that are known, each with why: (from, to, why).
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[
    (
        "serve",
        "config",
        "the settings page (serve/admin.rs) edits the file's RawConfig and shows [http]",
    ),
    ("serve", "config_edit", "the settings page writes the file"),
];

fn floor_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// Imports of a top-level module from a floor above (or beside, outside the foundation).
fn layer_breaks(graph: &Graph) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in graph {
        let Some(a) = from.first() else { continue };
        for to in tos {
            let b = &to[0];
            if a == b || KNOWN_UPWARD.iter().any(|(x, y, _)| x == a && y == b) {
                continue;
            }
            let (fa, fb) = (floor_of(a), floor_of(b));
            let ok = match (fa, fb) {
                (Some(fa), Some(fb)) => fb <= fa,
                _ => false,
            };
            if !ok {
                bad.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    bad
}

/// Imports of another stage's worker file (`crate::encode::worker::X` from outside `encode`).
fn worker_internals(graph: &Graph) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in graph {
        for to in tos {
            let is_worker = to.len() == 2 && to[1] == "worker";
            if is_worker && from.first() != to.first() {
                bad.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    bad
}

/// Imports of `app` (the wiring) from anywhere below it.
fn app_imports(graph: &Graph) -> Vec<String> {
    graph
        .iter()
        .filter(|(from, _)| from.first().is_some_and(|top| top != "app"))
        .flat_map(|(from, tos)| {
            tos.iter()
                .filter(|to| to.first().is_some_and(|top| top == "app"))
                .map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
        })
        .collect()
}

/// Imports by the pure modules of anything that does I/O.
fn pure_breaks(graph: &Graph) -> Vec<String> {
    let allowed = ["guac", "render", "events", "error", "limits"];
    let mut bad = Vec::new();
    for (from, tos) in graph {
        let Some(top) = from.first() else { continue };
        if top != "guac" && top != "render" && top != "events" {
            continue;
        }
        for to in tos {
            if !allowed.contains(&to[0].as_str()) {
                bad.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = edges();
    assert!(
        graph.len() > 20,
        "the scan found too few modules ({}): the parser of this test is broken",
        graph.len()
    );
    let circles = file_circles(&graph);
    assert!(circles.is_empty(), "modules in a circle: {circles:#?}");
}

#[test]
fn no_top_level_modules_import_in_a_circle() {
    let circles = top_circles(&edges());
    assert!(
        circles.is_empty(),
        "top-level modules in a circle: {circles:#?}"
    );
}

#[test]
fn every_top_level_module_has_a_floor() {
    let graph = edges();
    let missing: BTreeSet<&String> = graph
        .keys()
        .filter_map(|m| m.first())
        .filter(|top| floor_of(top).is_none())
        .collect();
    assert!(missing.is_empty(), "put these in LAYERS: {missing:?}");
}

#[test]
fn every_known_exception_is_still_an_import() {
    // An exception whose import is gone would let that import come back unseen.
    let tops = top_level(&edges());
    for (a, b, why) in KNOWN_UPWARD {
        let found = tops
            .iter()
            .any(|(from, tos)| from[0] == *a && tos.iter().any(|t| t[0] == *b));
        assert!(
            found,
            "known exception {a} -> {b} ({why}) no longer imports: remove it"
        );
    }
}

#[test]
fn modules_import_only_from_floors_below() {
    let bad = layer_breaks(&edges());
    assert!(bad.is_empty(), "imports from a floor above: {bad:#?}");
}

#[test]
fn no_stage_reaches_up_into_app() {
    let up = app_imports(&edges());
    assert!(up.is_empty(), "imports from the wiring layer: {up:#?}");
}

#[test]
fn workers_are_used_through_their_stage() {
    let bad = worker_internals(&edges());
    assert!(bad.is_empty(), "imports of a worker's file: {bad:#?}");
}

#[test]
fn the_pure_modules_use_no_io_modules() {
    let bad = pure_breaks(&edges());
    assert!(bad.is_empty(), "pure modules importing I/O: {bad:#?}");
}

/// A small made-up crate: `(module path, source)`.
fn made_up(files: &[(&str, &str)]) -> Graph {
    let sources: Vec<(Module, String)> = files
        .iter()
        .map(|(m, code)| {
            let module = m.split("::").filter(|s| !s.is_empty()).map(str::to_string);
            (module.collect(), code.to_string())
        })
        .collect();
    edges_of(&sources)
}

#[test]
fn a_circle_through_a_facade_is_caught() {
    // queue::store uses encode's facade; encode::worker uses queue's: no file circle, one
    // top-level circle.
    let graph = made_up(&[
        ("queue", "pub mod store;\npub use store::Queue;"),
        ("queue::store", "use crate::encode::Clip;"),
        ("encode", "pub mod worker;\npub use worker::Clip;"),
        ("encode::worker", "use crate::queue::Queue;"),
    ]);
    assert!(file_circles(&graph).is_empty());
    let circles = top_circles(&graph);
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].starts_with("encode <-> queue"), "{circles:?}");
}

#[test]
fn an_import_of_app_from_below_is_caught() {
    let graph = made_up(&[
        ("app", "use crate::encode::Encoder;"),
        ("encode", "use crate::app::Context;"),
    ]);
    assert_eq!(app_imports(&graph), ["encode -> app"]);
    assert!(layer_breaks(&graph).contains(&"encode -> app".to_string()));
}

#[test]
fn an_import_of_a_workers_file_is_caught() {
    let graph = made_up(&[
        (
            "app",
            "use crate::encode::worker::EncodeWorker;\nuse crate::upload::Up;",
        ),
        ("encode", "pub mod worker;"),
        ("encode::worker", "use super::Settings;"),
        ("upload", ""),
    ]);
    assert_eq!(worker_internals(&graph), ["app -> encode::worker"]);
}

#[test]
fn a_stage_importing_config_is_caught() {
    let graph = made_up(&[
        ("config", "use crate::encode::Settings;"),
        (
            "encode",
            "use crate::config::Config;\nuse crate::queue::Queue;",
        ),
        ("queue", ""),
    ]);
    assert_eq!(layer_breaks(&graph), ["encode -> config"]);
    assert!(!top_circles(&graph).is_empty());
}

#[test]
fn a_manifest_module_sits_between_upload_and_fleet() {
    let graph = made_up(&[
        ("manifest", "use crate::upload::Store;"),
        ("fleet", "use crate::manifest::Manifest;"),
        ("upload", "use crate::manifest::Manifest;"),
    ]);
    assert_eq!(layer_breaks(&graph), ["upload -> manifest"]);
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
