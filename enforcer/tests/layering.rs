//! The enforcer's top-level modules form a DAG (bottom-up order in `src/lib.rs`): a `crate::`
//! path from one top-level module into another is an edge, and no edge may close a cycle.
//! A cycle means neither module can be read, tested or split off without the other.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`lib.rs` and `main.rs` are roots).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The source without its comments (`//` to the end of the line, nested `/* */`): a doc
/// comment may mention a module above this one. String and character literals are kept
/// whole: `"http://…"` does not start a comment, and a path in a string is an import all the
/// same (`#[serde(with = "crate::…")]`).
fn without_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    // Copies `chars[from..to]` (clamped to the source) and returns where it ended.
    let copy = |out: &mut String, from: usize, to: usize| {
        let to = to.min(chars.len());
        out.extend(&chars[from..to]);
        to
    };
    while i < chars.len() {
        let at = |k: usize| chars.get(i + k).copied();
        let after_identifier = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        match (chars[i], at(1)) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                let mut depth = 0usize;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            ('"', _) => {
                let mut end = i + 1;
                while end < chars.len() && chars[end] != '"' {
                    end += if chars[end] == '\\' { 2 } else { 1 };
                }
                i = copy(&mut out, i, end + 1);
            }
            ('r', Some('"' | '#')) if !after_identifier || (i > 0 && chars[i - 1] == 'b') => {
                let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                if chars.get(i + 1 + hashes) != Some(&'"') {
                    i = copy(&mut out, i, i + 1);
                    continue;
                }
                let closing: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let mut end = i + 2 + hashes;
                while end < chars.len() && !chars[end..].starts_with(&closing) {
                    end += 1;
                }
                i = copy(&mut out, i, end + closing.len());
            }
            // A character literal ('x', '\'', '"'); otherwise a lifetime or a label.
            ('\'', Some('\\')) => {
                let mut end = i + 3;
                while end < chars.len() && chars[end] != '\'' {
                    end += 1;
                }
                i = copy(&mut out, i, end + 1);
            }
            ('\'', Some(_)) if at(2) == Some('\'') => i = copy(&mut out, i, i + 3),
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Top-level modules named after `crate::`, including each first name of a
/// `crate::{a::X, b}` group.
fn referenced_modules(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.insert(identifier(&group[i..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(identifier(rest).to_owned());
        }
    }
    found
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let Some(from) = top_module(src, file) else {
            continue;
        };
        let source = std::fs::read_to_string(file).unwrap();
        for to in referenced_modules(&without_comments(&source)) {
            if to != from && modules.contains(&to) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// One cycle of the graph, as the path of modules that closes it, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::Unvisited) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| m == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::Unvisited => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::Unvisited) == Mark::Unvisited
            && let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(from, to)| {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            format!("  {from} -> {}\n", to.join(", "))
        })
        .collect()
}

#[test]
fn top_level_modules_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 5, "found too few modules under {src:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the top-level modules of enforcer/src import each other in a cycle: {}\n\
             imports (crate:: paths):\n{}",
            cycle.join(" -> "),
            render(&graph)
        );
    }
}

#[test]
fn the_scanner_sees_grouped_imports_and_cycles() {
    let found =
        referenced_modules("use crate::{config::{A, B}, detect::X};\nlet _ = crate::model::f();");
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["config", "detect", "model"]);
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(
        find_cycle(&graph).unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
}

#[test]
fn the_scanner_cuts_comments_only_outside_literals() {
    let source = r##"let url = "http://example/"; use crate::config::A; // crate::detect
/* crate::model /* nested */ crate::policy */ let quote = '"'; let _ = crate::session::f();
let raw = r#"a "//" b"#; let s: &'static str = "\"//"; use crate::{finding::F, // crate::admin
    incident::I};
let slash = '/'; let escaped = '\''; /// crate::runtime
#[serde(with = "crate::time::serde")] let apostrophe = "it's // not a comment"; crate::util::g();"##;
    let found = referenced_modules(&without_comments(source));
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["config", "finding", "incident", "session", "time", "util"]
    );
}
