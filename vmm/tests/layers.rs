//! The modules of `vmm/src` form layers: no module imports, directly or
//! through others, a module that imports it.
//!
//! Every `.rs` file under `vmm/src` belongs to the top-level module its
//! path starts with (`vcpu/gate.rs` to `vcpu`, `vm.rs` to `vm`); the crate
//! roots (`lib.rs`, `main.rs`) are no module. A file's `crate::<module>`
//! paths, outside comments, are its module's edges (`crate::{a, b::c}`
//! counts `a` and `b`). The graph must have no cycle; if it has one, the
//! test prints it with the files that make each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module -> the modules it imports, with the file of each import.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `source` without `//` comments (doc comments included: an intra-doc
/// link is not an import). String literals are left alone; none in this
/// crate holds `//` before a `crate::` path.
fn strip_comments(source: &str) -> String {
    source
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every `crate::` path in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `crate` itself, not the tail of an identifier (`my_crate::`).
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[i + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}}`: the first segment of each item at
            // depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        item_start = false;
                        let id = ident_at(&group[j..]);
                        if !id.is_empty() {
                            found.insert(id.to_string());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                found.insert(id.to_string());
            }
        }
    }
    found
}

/// The import graph of the crate at `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        match first {
            "lib.rs" | "main.rs" => None,
            f => Some(f.strip_suffix(".rs").unwrap_or(f).to_string()),
        }
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in &files {
        let Some(from) = module_of(file) else {
            continue;
        };
        let source =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(src).unwrap_or(file).display().to_string();
        for to in crate_paths(&strip_comments(&source)) {
            // Items of the crate root (`crate::error_chain`) are no module.
            if to != from && modules.contains(&to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel.clone());
            }
        }
    }
    graph
}

/// One cycle of `graph` (its modules in import order, the first repeated
/// at the end), or None.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'g>(
        node: &'g str,
        graph: &'g Graph,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|n| n.to_string()).collect();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// `a -> b (files)` for each edge of `cycle`.
fn describe(graph: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files: Vec<&str> = graph[&w[0]][&w[1]].iter().map(String::as_str).collect();
            format!("  {} -> {} ({})", w[0], w[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn vmm_modules_import_in_layers_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The graph is what the crate has: a test that found nothing would
    // pass for the wrong reason.
    for (from, to) in [("vm", "vcpu"), ("vcpu", "event"), ("control", "api")] {
        assert!(
            graph[from].contains_key(to),
            "{from} -> {to} not found: {graph:#?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("vmm/src has an import cycle:\n{}", describe(&graph, &cycle));
    }
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (from, to) in edges {
        g.entry(to.to_string()).or_default();
        g.entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default()
            .insert(format!("{from}.rs"));
    }
    g
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_names_its_files() {
    // vm -> vcpu -> gate -> vcpu, beside a layered part.
    let g = graph_of(&[
        ("vm", "vcpu"),
        ("vm", "event"),
        ("vcpu", "event"),
        ("vcpu", "gate"),
        ("gate", "vcpu"),
    ]);
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle, ["gate", "vcpu", "gate"]);
    assert_eq!(
        describe(&g, &cycle),
        "  gate -> vcpu (gate.rs)\n  vcpu -> gate (vcpu.rs)"
    );
    // A longer one, found from any start.
    let g = graph_of(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")]);
    assert_eq!(find_cycle(&g).expect("a cycle"), ["b", "c", "d", "b"]);
    // Layers (a diamond) are no cycle.
    let g = graph_of(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]);
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn crate_paths_are_read_from_uses_groups_and_expressions() {
    let code = strip_comments(
        "use crate::bus::{Bus, BusError};\n\
         use crate::{event::VmEvent, platform::{self, cmos}, layout};\n\
         let x = crate::error_chain(&e); // crate::vm in a comment\n\
         /// [`crate::control`] in a doc link\n\
         Api(#[source] crate :: api::ApiError),\n\
         use my_crate::irq;",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(
        found,
        ["bus", "error_chain", "event", "layout", "platform"],
        "{code}"
    );
}
