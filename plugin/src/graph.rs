//! `kubectl ordo graph`: the learned flow of an API as a graph. Operations are the nodes (the
//! discovered endpoints and the operations of the learned sequences and declared rules);
//! learned transitions are edges weighted by how often they were taken and labelled with the
//! precedence score of the sequences they belong to; the important sequences (precedence at
//! or above `--highlight`) are highlighted; declared SequenceRules are drawn on top (requires,
//! forbids, minimum intervals as dashed edges, maximum repeats as loops).
//!
//! The SVG is laid out here (a layered layout: cycles broken by a depth-first search, layers
//! by longest path over the learned transitions, a virtual node in every row a long edge
//! passes, rows ordered by the barycenter heuristic), so no Graphviz is needed at run time;
//! `-o dot` gives the same graph to Graphviz for those who prefer its layout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kube::ResourceExt as _;
use ordo_operator::crd::{ApiProtection, SequenceRule};

use crate::cli::{GraphArgs, GraphOutput};
use crate::cluster::Session;
use crate::text::{escape, thousands};

/// An operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub operation: String,
    /// Requests seen, when the status lists the operation among its endpoints.
    pub requests: Option<i64>,
    /// Part of an important learned sequence.
    pub important: bool,
    /// `maxRepeat` rules on the operation: rule name and count.
    pub max_repeat: Vec<(String, i32)>,
    /// Its authentication and data posture, when the status lists it there: `no credentials`
    /// and the classes of sensitive values its answers carry (`status.posture`).
    pub posture: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    Learned,
    Requires,
    Forbids,
    MinInterval,
}

impl EdgeKind {
    fn class(self) -> &'static str {
        match self {
            EdgeKind::Learned => "learned",
            EdgeKind::Requires => "requires",
            EdgeKind::Forbids => "forbids",
            EdgeKind::MinInterval => "min-interval",
        }
    }

    fn color(self, important: bool) -> &'static str {
        match self {
            EdgeKind::Learned if important => IMPORTANT,
            EdgeKind::Learned => LEARNED,
            EdgeKind::Requires => "#16a34a",
            EdgeKind::Forbids => "#dc2626",
            EdgeKind::MinInterval => "#7c3aed",
        }
    }

    /// Horizontal offset so that a rule edge and a learned edge between the same operations
    /// do not overlap.
    fn offset(self) -> f64 {
        match self {
            EdgeKind::Learned => 0.0,
            EdgeKind::Requires => -12.0,
            EdgeKind::Forbids => 12.0,
            EdgeKind::MinInterval => 24.0,
        }
    }
}

/// A transition (learned) or a declared rule between two operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
    /// Times taken (learned edges): the largest count of the sequences it belongs to.
    pub count: i64,
    /// Highest precedence score of the sequences it belongs to (learned edges).
    pub precedence: f64,
    pub important: bool,
    /// The declaring SequenceRule (rule edges).
    pub rule: Option<String>,
    /// Short label: `120 · 0.98`, `requires`, `forbids`, `≥ 2s`.
    pub label: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

const LEARNED: &str = "#64748b";
const IMPORTANT: &str = "#ea580c";
/// Node fills, also what the screenshot test looks for.
pub const NODE_FILL: &str = "#dbeafe";
pub const IMPORTANT_FILL: &str = "#fed7aa";

impl Graph {
    fn node(&mut self, index: &mut BTreeMap<String, usize>, operation: &str) -> usize {
        if let Some(i) = index.get(operation) {
            return *i;
        }
        self.nodes.push(Node {
            operation: operation.to_owned(),
            requests: None,
            important: false,
            max_repeat: Vec::new(),
            posture: None,
        });
        index.insert(operation.to_owned(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn rule_chain(
        &mut self,
        index: &mut BTreeMap<String, usize>,
        operations: &[String],
        kind: EdgeKind,
        rule: &str,
        label: &str,
    ) {
        for pair in operations.windows(2) {
            let from = self.node(index, &pair[0]);
            let to = self.node(index, &pair[1]);
            self.edges.push(Edge {
                from,
                to,
                kind,
                count: 0,
                precedence: 0.0,
                important: false,
                rule: Some(rule.to_owned()),
                label: label.to_owned(),
            });
        }
    }
}

/// The graph of `protection`'s status and its declared `rules`.
pub fn build(protection: &ApiProtection, rules: &[SequenceRule], highlight: f64) -> Graph {
    let mut graph = Graph {
        title: format!(
            "{}/{}",
            protection.namespace().unwrap_or_default(),
            protection.name_any()
        ),
        ..Graph::default()
    };
    let mut index = BTreeMap::new();
    let status = protection.status.clone().unwrap_or_default();
    for endpoint in &status.endpoints {
        let i = graph.node(&mut index, &endpoint.operation);
        graph.nodes[i].requests = Some(endpoint.requests);
    }
    let mut learned: BTreeMap<(usize, usize), (i64, f64, bool)> = BTreeMap::new();
    for sequence in &status.top_sequences {
        let important = sequence.precedence >= highlight;
        let ids: Vec<usize> = sequence
            .operations
            .iter()
            .map(|op| graph.node(&mut index, op))
            .collect();
        for pair in ids.windows(2) {
            let entry = learned.entry((pair[0], pair[1])).or_insert((0, 0.0, false));
            entry.0 = entry.0.max(sequence.count);
            entry.1 = entry.1.max(sequence.precedence);
            entry.2 |= important;
        }
        if important {
            for i in ids {
                graph.nodes[i].important = true;
            }
        }
    }
    for ((from, to), (count, precedence, important)) in learned {
        graph.edges.push(Edge {
            from,
            to,
            kind: EdgeKind::Learned,
            count,
            precedence,
            important,
            rule: None,
            label: format!("{} · {precedence:.2}", thousands(count)),
        });
    }
    for rule in rules {
        let name = rule.name_any();
        let spec = &rule.spec;
        if let Some(requires) = &spec.requires {
            let mut chain = requires.after.clone();
            chain.push(requires.operation.clone());
            graph.rule_chain(&mut index, &chain, EdgeKind::Requires, &name, "requires");
        }
        if let Some(forbids) = &spec.forbids {
            graph.rule_chain(
                &mut index,
                &forbids.sequence,
                EdgeKind::Forbids,
                &name,
                "forbids",
            );
        }
        if let Some(interval) = &spec.min_interval {
            let chain = [interval.from.clone(), interval.to.clone()];
            let label = format!("≥ {}", interval.duration);
            graph.rule_chain(&mut index, &chain, EdgeKind::MinInterval, &name, &label);
        }
        if let Some(repeat) = &spec.max_repeat {
            let i = graph.node(&mut index, &repeat.operation);
            graph.nodes[i].max_repeat.push((name.clone(), repeat.count));
        }
    }
    // Posture marks the operations drawn (an operation listed only there adds no node: the
    // graph is the flow).
    for p in &status.posture {
        if let Some(&i) = index.get(&p.operation) {
            let mut marks = Vec::new();
            if p.unauthenticated_answers > 0 {
                marks.push("no credentials".to_owned());
            }
            if !p.sensitive_classes.is_empty() {
                marks.push(p.sensitive_classes.join(", "));
            }
            graph.nodes[i].posture = Some(marks.join(" · ")).filter(|m| !m.is_empty());
        }
    }
    graph
}

pub async fn run(session: &Session, args: &GraphArgs) -> anyhow::Result<String> {
    let protection = session.protection(&args.name).await?;
    let rules = session.rules_or_warn(&protection).await;
    let graph = build(&protection, &rules, args.highlight);
    if graph.nodes.is_empty() {
        eprintln!(
            "note: apiprotections.ordo.dev \"{}\" has learned no operations yet; the graph is empty",
            args.name
        );
    }
    Ok(match args.output {
        GraphOutput::Dot => dot(&graph),
        GraphOutput::Svg => {
            let mut svg = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
            svg.push_str(&self::svg(&graph));
            svg
        }
    })
}

fn dot_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Graphviz DOT.
pub fn dot(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(&graph.title));
    let _ = writeln!(
        out,
        "  label={}; labelloc=t; rankdir=TB;",
        dot_quote(&format!("Learned flow of {}", graph.title))
    );
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fillcolor=\"{NODE_FILL}\"];"
    );
    let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=10];");
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut label = node.operation.clone();
        if let Some(requests) = node.requests {
            label.push_str(&format!("\n{} requests", thousands(requests)));
        }
        if let Some(posture) = &node.posture {
            label.push_str(&format!("\n{posture}"));
        }
        for (rule, count) in &node.max_repeat {
            label.push_str(&format!("\nmax {count} in a row ({rule})"));
        }
        let fill = if node.important {
            IMPORTANT_FILL
        } else {
            NODE_FILL
        };
        let _ = writeln!(
            out,
            "  n{i} [label={}, fillcolor=\"{fill}\"];",
            dot_quote(&label)
        );
    }
    let max_count = graph
        .edges
        .iter()
        .map(|e| e.count)
        .max()
        .unwrap_or(1)
        .max(1);
    for edge in &graph.edges {
        let color = edge.kind.color(edge.important);
        let attributes = match edge.kind {
            EdgeKind::Learned => format!(
                "label={}, penwidth={:.2}, color=\"{color}\", fontcolor=\"{color}\"",
                dot_quote(&edge.label),
                stroke_width(edge.count, max_count)
            ),
            _ => format!(
                "label={}, style=dashed, color=\"{color}\", fontcolor=\"{color}\", constraint=false",
                dot_quote(&format!(
                    "{} ({})",
                    edge.label,
                    edge.rule.as_deref().unwrap_or("")
                ))
            ),
        };
        let _ = writeln!(out, "  n{} -> n{} [{attributes}];", edge.from, edge.to);
    }
    out.push_str("}\n");
    out
}

fn stroke_width(count: i64, max_count: i64) -> f64 {
    let ratio =
        ((1 + count.max(0)) as f64).ln() / ((1 + max_count) as f64).ln().max(f64::MIN_POSITIVE);
    1.0 + 5.0 * ratio.clamp(0.0, 1.0)
}

// Layout constants (pixels).
const CHAR_WIDTH: f64 = 7.3;
const NODE_HEIGHT: f64 = 42.0;
const ROW_GAP: f64 = 84.0;
const NODE_GAP: f64 = 48.0;
const MARGIN: f64 = 24.0;
const TOP: f64 = 56.0;
/// Width of the room a long edge takes in a row it passes through.
const VIRTUAL_WIDTH: f64 = 16.0;
/// Labels longer than this are shortened in the picture (the full text is in the tooltip).
const LABEL_CHARS: usize = 56;
/// Isolated operations (in no sequence nor rule) are set out in rows of this many.
const ISOLATED_PER_ROW: usize = 5;

fn shorten(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Row of every node: longest-path layers of the graph without the edges that close cycles;
/// operations without any edge go to rows of their own below.
fn layout(graph: &Graph) -> Layout {
    let n = graph.nodes.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_edge = vec![false; n];
    let mut learned = vec![false; n];
    for edge in graph.edges.iter().filter(|e| e.kind == EdgeKind::Learned) {
        learned[edge.from] = true;
        learned[edge.to] = true;
    }
    // The learned flow decides the rows; a declared rule only places an operation that no
    // learned transition places (a rule against the flow, such as a forbidden return to
    // the login, would otherwise pull the login below everything else).
    for edge in &graph.edges {
        let constrains = edge.kind == EdgeKind::Learned || !learned[edge.from] || !learned[edge.to];
        if constrains && edge.from != edge.to && !out_edges[edge.from].contains(&edge.to) {
            out_edges[edge.from].push(edge.to);
        }
        has_edge[edge.from] = true;
        has_edge[edge.to] = true;
    }
    // Depth-first search from the sources (then from any node left), marking the edges that
    // point back to a node on the stack: without them the graph is acyclic.
    let mut in_degree = vec![0usize; n];
    for targets in &out_edges {
        for t in targets {
            in_degree[*t] += 1;
        }
    }
    let mut roots: Vec<usize> = (0..n).filter(|v| in_degree[*v] == 0).collect();
    roots.extend((0..n).filter(|v| in_degree[*v] != 0));
    let mut state = vec![0u8; n]; // 0 new, 1 on the stack, 2 done
    let mut dag: Vec<Vec<usize>> = vec![Vec::new(); n];
    for root in roots {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((v, next)) = stack.last().copied() {
            if let Some(&w) = out_edges[v].get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match state[w] {
                    0 => {
                        dag[v].push(w);
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    2 => dag[v].push(w),
                    _ => {} // back edge: closes a cycle
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    // Longest path from a source, in topological order (Kahn).
    let mut indegree = vec![0usize; n];
    for targets in &dag {
        for t in targets {
            indegree[*t] += 1;
        }
    }
    let mut queue: std::collections::VecDeque<usize> =
        (0..n).filter(|v| indegree[*v] == 0).collect();
    let mut layer = vec![0usize; n];
    while let Some(v) = queue.pop_front() {
        for &w in &dag[v] {
            layer[w] = layer[w].max(layer[v] + 1);
            indegree[w] -= 1;
            if indegree[w] == 0 {
                queue.push_back(w);
            }
        }
    }
    let connected: Vec<usize> = (0..n).filter(|v| has_edge[*v]).collect();
    let layers = connected.iter().map(|v| layer[*v] + 1).max().unwrap_or(0);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for v in connected {
        rows[layer[v]].push(v);
    }
    // An edge down more than one row passes through a virtual node in every row between,
    // so that it is routed between the operations of those rows rather than across them.
    let mut chains = Vec::with_capacity(graph.edges.len());
    let mut next_virtual = n;
    for edge in &graph.edges {
        let (from, to) = (edge.from, edge.to);
        let mut chain = vec![from];
        if from != to && layer[to] > layer[from] + 1 {
            for row in rows.iter_mut().take(layer[to]).skip(layer[from] + 1) {
                row.push(next_virtual);
                chain.push(next_virtual);
                next_virtual += 1;
            }
        }
        chain.push(to);
        chains.push(chain);
    }
    order_rows(&mut rows, &chains, next_virtual);
    let isolated: Vec<usize> = (0..n).filter(|v| !has_edge[*v]).collect();
    for chunk in isolated.chunks(ISOLATED_PER_ROW) {
        rows.push(chunk.to_vec());
    }
    Layout {
        rows,
        chains,
        total: next_virtual,
    }
}

/// Rows of node ids, top to bottom: ids below the number of operations are operations, the
/// others virtual nodes of long edges; `chains[e]` is the ids edge `e` passes through.
struct Layout {
    rows: Vec<Vec<usize>>,
    chains: Vec<Vec<usize>>,
    total: usize,
}

/// Orders each row by the mean position of its neighbours in the row above (then below),
/// a few sweeps: fewer crossings than the input order.
fn order_rows(rows: &mut [Vec<usize>], chains: &[Vec<usize>], n: usize) {
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); n];
    for chain in chains {
        for pair in chain.windows(2) {
            if pair[0] != pair[1] {
                neighbours[pair[0]].push(pair[1]);
                neighbours[pair[1]].push(pair[0]);
            }
        }
    }
    let mut position = vec![0f64; n];
    let set_positions = |rows: &[Vec<usize>], position: &mut Vec<f64>| {
        for row in rows {
            for (i, v) in row.iter().enumerate() {
                position[*v] = i as f64;
            }
        }
    };
    set_positions(rows, &mut position);
    let mut row_of = vec![usize::MAX; n];
    for (r, row) in rows.iter().enumerate() {
        for v in row {
            row_of[*v] = r;
        }
    }
    for sweep in 0..6 {
        let order: Vec<usize> = if sweep % 2 == 0 {
            (1..rows.len()).collect()
        } else {
            (0..rows.len().saturating_sub(1)).rev().collect()
        };
        for r in order {
            let reference = if sweep % 2 == 0 { r - 1 } else { r + 1 };
            let mut keyed: Vec<(f64, usize)> = rows[r]
                .iter()
                .map(|v| {
                    let near: Vec<f64> = neighbours[*v]
                        .iter()
                        .filter(|w| row_of[**w] == reference)
                        .map(|w| position[*w])
                        .collect();
                    let key = if near.is_empty() {
                        position[*v]
                    } else {
                        near.iter().sum::<f64>() / near.len() as f64
                    };
                    (key, *v)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            rows[r] = keyed.into_iter().map(|(_, v)| v).collect();
            for (i, v) in rows[r].iter().enumerate() {
                position[*v] = i as f64;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Place {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    row: usize,
}

/// Height of a node: its operation, its request count, one line per `maxRepeat` rule.
fn node_height(node: &Node) -> f64 {
    NODE_HEIGHT + 13.0 * node.max_repeat.len() as f64
}

fn node_lines(node: &Node) -> (String, Option<String>) {
    let label = shorten(&node.operation, LABEL_CHARS);
    let requests = node.requests.map(|r| format!("{} requests", thousands(r)));
    let posture = node.posture.as_deref().map(|p| shorten(p, LABEL_CHARS));
    let second = match (requests, posture) {
        (Some(r), Some(p)) => Some(format!("{r} · {p}")),
        (r, p) => r.or(p),
    };
    (label, second)
}

/// `max 5 in a row (rule)`, one per `maxRepeat` rule of the node.
fn repeat_lines(node: &Node) -> Vec<String> {
    node.max_repeat
        .iter()
        .map(|(rule, count)| format!("max {count} in a row ({})", shorten(rule, 32)))
        .collect()
}

/// A standalone SVG document (without the XML declaration, so that it can be inlined in HTML).
pub fn svg(graph: &Graph) -> String {
    let layout = layout(graph);
    let rows = &layout.rows;
    let mut places = vec![Place::default(); layout.total];
    // Rows are as tall as their tallest node.
    let mut row_y = Vec::with_capacity(rows.len() + 1);
    let mut row_height = Vec::with_capacity(rows.len());
    let mut y = TOP;
    for row in rows {
        row_y.push(y);
        let tallest = row
            .iter()
            .filter_map(|v| graph.nodes.get(*v))
            .map(node_height)
            .fold(NODE_HEIGHT, f64::max);
        row_height.push(tallest);
        y += tallest + ROW_GAP;
    }
    row_y.push(y);
    let mut row_widths = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let mut x = 0.0;
        for v in row {
            let Some(node) = graph.nodes.get(*v) else {
                // A virtual node: room for an edge passing through the row.
                places[*v] = Place {
                    x,
                    y: row_y[r],
                    width: VIRTUAL_WIDTH,
                    height: row_height[r],
                    row: r,
                };
                x += VIRTUAL_WIDTH + NODE_GAP / 2.0;
                continue;
            };
            let (label, second) = node_lines(node);
            let repeat_chars = repeat_lines(node)
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            let chars = label
                .chars()
                .count()
                .max(second.map(|s| s.chars().count()).unwrap_or(0))
                .max(repeat_chars * 6 / 7);
            let width = chars as f64 * CHAR_WIDTH + 24.0;
            places[*v] = Place {
                x,
                y: row_y[r],
                width,
                height: node_height(node),
                row: r,
            };
            x += width + NODE_GAP;
        }
        row_widths.push((x - NODE_GAP).max(0.0));
    }
    let content_width = row_widths.iter().copied().fold(360.0, f64::max);
    // Room on the right for the edges that go back up or along a row, and their labels.
    let longest_label = graph
        .edges
        .iter()
        .map(|e| {
            e.label.chars().count() + e.rule.as_ref().map_or(0, |r| r.chars().count().min(32) + 3)
        })
        .max()
        .unwrap_or(0);
    let right = 140.0 + longest_label as f64 * 6.2;
    let width = MARGIN * 2.0 + content_width + right;
    for (r, row) in rows.iter().enumerate() {
        let shift = MARGIN + (content_width - row_widths[r]) / 2.0;
        for v in row {
            places[*v].x += shift;
        }
    }
    let legend_y = row_y[rows.len()] + 8.0;
    let height = legend_y + 60.0;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"ordo-flow\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<title>Learned flow of {}</title>",
        escape(&graph.title)
    );
    out.push_str("<defs>\n");
    for (id, color) in [
        ("learned", LEARNED),
        ("important", IMPORTANT),
        ("requires", EdgeKind::Requires.color(false)),
        ("forbids", EdgeKind::Forbids.color(false)),
        ("min-interval", EdgeKind::MinInterval.color(false)),
    ] {
        let _ = writeln!(
            out,
            "<marker id=\"arrow-{id}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" markerUnits=\"userSpaceOnUse\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{color}\"/></marker>"
        );
    }
    out.push_str("</defs>\n");
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{MARGIN}\" y=\"28\" font-size=\"16\" font-weight=\"bold\" fill=\"#0f172a\">Learned flow of {}</text>",
        escape(&graph.title)
    );
    if graph.nodes.is_empty() {
        let _ = writeln!(
            out,
            "<text class=\"empty\" x=\"{MARGIN}\" y=\"{:.0}\" fill=\"#475569\">No operations learned yet.</text>",
            TOP + 20.0
        );
    }

    // Edges first, so that nodes are drawn over their ends.
    let max_count = graph
        .edges
        .iter()
        .map(|e| e.count)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut labels = String::new();
    for (e, edge) in graph.edges.iter().enumerate() {
        let a = places[edge.from];
        let b = places[edge.to];
        let color = edge.kind.color(edge.important);
        let marker = match edge.kind {
            EdgeKind::Learned if edge.important => "important",
            kind => kind.class(),
        };
        let offset = edge.kind.offset();
        let (path, mx, my) = if edge.from == edge.to {
            // A learned self-transition: a loop on the node's right side.
            let (x, y) = (a.x + a.width, a.y + a.height / 2.0);
            (
                format!(
                    "M{x:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {x:.1},{:.1}",
                    y - 8.0,
                    x + 46.0,
                    y - 34.0,
                    x + 46.0,
                    y + 34.0,
                    y + 8.0
                ),
                x + 40.0,
                y,
            )
        } else if b.row > a.row {
            // Down: a curve from the bottom of `from` to the top of `to`, straight through
            // the virtual nodes of the rows between.
            let (mut x, mut y) = (a.x + a.width / 2.0 + offset, a.y + a.height);
            let mut path = format!("M{x:.1},{y:.1}");
            let curve = |path: &mut String, (x0, y0): (f64, f64), (x1, y1): (f64, f64)| {
                let dy = (y1 - y0) / 2.0;
                let _ = write!(
                    path,
                    " C{x0:.1},{:.1} {x1:.1},{:.1} {x1:.1},{y1:.1}",
                    y0 + dy,
                    y1 - dy
                );
            };
            let through = &layout.chains[e][1..layout.chains[e].len() - 1];
            for v in through {
                let p = places[*v];
                let top = (p.x + p.width / 2.0 + offset, p.y);
                curve(&mut path, (x, y), top);
                let _ = write!(path, " L{:.1},{:.1}", top.0, p.y + p.height);
                (x, y) = (top.0, p.y + p.height);
            }
            let (ex, ey) = (b.x + b.width / 2.0 + offset, b.y);
            curve(&mut path, (x, y), (ex, ey));
            let (mx, my) = match through.get(through.len() / 2) {
                Some(v) => (
                    places[*v].x + places[*v].width / 2.0 + offset,
                    places[*v].y + places[*v].height / 2.0,
                ),
                None => ((x + ex) / 2.0, (y + ey) / 2.0),
            };
            (path, mx, my)
        } else {
            // Back up to an earlier row, or along the same row: around the right side.
            let (sx, sy) = (a.x + a.width, a.y + a.height / 2.0 + offset / 2.0);
            let (ex, ey) = (b.x + b.width, b.y + b.height / 2.0 + offset / 2.0);
            let reach = 50.0 + 24.0 * (a.row.abs_diff(b.row) as f64) + offset.abs();
            let cx = sx.max(ex) + reach;
            (
                format!("M{sx:.1},{sy:.1} C{cx:.1},{sy:.1} {cx:.1},{ey:.1} {ex:.1},{ey:.1}"),
                sx.max(ex) + reach * 0.75,
                (sy + ey) / 2.0,
            )
        };
        let (stroke, dash) = match edge.kind {
            EdgeKind::Learned => (stroke_width(edge.count, max_count), ""),
            EdgeKind::MinInterval => (1.8, " stroke-dasharray=\"2 4\""),
            _ => (1.8, " stroke-dasharray=\"7 4\""),
        };
        let tooltip = match &edge.rule {
            Some(rule) => format!(
                "SequenceRule {rule}: {} {} → {}",
                edge.label, graph.nodes[edge.from].operation, graph.nodes[edge.to].operation
            ),
            None => format!(
                "{} → {}: taken {} times, precedence {:.3}{}",
                graph.nodes[edge.from].operation,
                graph.nodes[edge.to].operation,
                thousands(edge.count),
                edge.precedence,
                if edge.important {
                    " (important sequence)"
                } else {
                    ""
                }
            ),
        };
        let _ = writeln!(
            out,
            "<g class=\"edge {}{}\" data-from=\"{}\" data-to=\"{}\"><title>{}</title><path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{stroke:.2}\"{dash} marker-end=\"url(#arrow-{marker})\"/></g>",
            edge.kind.class(),
            if edge.important { " important" } else { "" },
            escape(&graph.nodes[edge.from].operation),
            escape(&graph.nodes[edge.to].operation),
            escape(&tooltip),
        );
        let text = match &edge.rule {
            Some(rule) => format!("{} ({})", edge.label, shorten(rule, 32)),
            None => edge.label.clone(),
        };
        // Learned labels to the left of their edge, rule labels to the right (one line
        // lower), so that a rule drawn along a learned transition keeps both readable.
        let (lx, ly, anchor) = match edge.kind {
            EdgeKind::Learned => (mx - 7.0, my + 3.0, "end"),
            _ => (mx + 7.0, my + 15.0, "start"),
        };
        let _ = writeln!(
            labels,
            "<text class=\"edge-label\" x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\" font-size=\"10\" fill=\"{color}\" stroke=\"#ffffff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
            escape(&text)
        );
    }

    for (i, node) in graph.nodes.iter().enumerate() {
        let p = places[i];
        let (label, second) = node_lines(node);
        let (fill, stroke) = if node.important {
            (IMPORTANT_FILL, IMPORTANT)
        } else {
            (NODE_FILL, "#3b82f6")
        };
        let mut tooltip = node.operation.clone();
        if let Some(requests) = node.requests {
            tooltip.push_str(&format!(": {} requests", thousands(requests)));
        }
        if let Some(posture) = &node.posture {
            tooltip.push_str(&format!(" ({posture})"));
        }
        let _ = write!(
            out,
            "<g class=\"node{}\" data-operation=\"{}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"8\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>",
            if node.important { " important" } else { "" },
            escape(&node.operation),
            escape(&tooltip),
            p.x,
            p.y,
            p.width,
            p.height
        );
        let cx = p.x + p.width / 2.0;
        let (first_y, second_y) = if second.is_some() {
            (p.y + 18.0, p.y + 33.0)
        } else {
            (p.y + 25.0, 0.0)
        };
        let _ = write!(
            out,
            "<text class=\"operation\" x=\"{cx:.1}\" y=\"{first_y:.1}\" text-anchor=\"middle\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" fill=\"#0f172a\">{}</text>",
            escape(&label)
        );
        if let Some(second) = second {
            let _ = write!(
                out,
                "<text class=\"requests\" x=\"{cx:.1}\" y=\"{second_y:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#475569\">{}</text>",
                escape(&second)
            );
        }
        for (k, line) in repeat_lines(node).iter().enumerate() {
            let _ = write!(
                out,
                "<text class=\"max-repeat\" x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#b45309\">{}</text>",
                p.y + NODE_HEIGHT + 13.0 * k as f64 + 5.0,
                escape(line)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str(&labels);

    // Legend.
    let items = [
        (
            "learned transition (width: times taken; label: count · precedence)",
            LEARNED,
            "",
        ),
        ("important sequence", IMPORTANT, ""),
        ("requires rule", EdgeKind::Requires.color(false), "7 4"),
        ("forbids rule", EdgeKind::Forbids.color(false), "7 4"),
        (
            "minInterval rule",
            EdgeKind::MinInterval.color(false),
            "2 4",
        ),
    ];
    let mut x = MARGIN;
    let mut y = legend_y;
    for (text, color, dash) in items {
        let item_width = 40.0 + text.chars().count() as f64 * 6.2 + 24.0;
        if x + item_width > width - MARGIN && x > MARGIN {
            x = MARGIN;
            y += 20.0;
        }
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let _ = writeln!(
            out,
            "<g class=\"legend\"><line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#334155\">{}</text></g>",
            x + 32.0,
            x + 40.0,
            y + 4.0,
            escape(text)
        );
        x += item_width;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_operator::crd::{
        ApiProtectionSpec, ApiProtectionStatus, ProtectionRef, RequiresRule, SequenceRuleSpec,
        SequenceStatus,
    };

    fn protection(sequences: &[(&[&str], f64, i64)]) -> ApiProtection {
        let spec: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": { "service": "bank", "port": 8080 }
        }))
        .unwrap();
        let mut p = ApiProtection::new("bank", spec);
        p.metadata.namespace = Some("shop".into());
        p.status = Some(ApiProtectionStatus {
            top_sequences: sequences
                .iter()
                .map(|(ops, precedence, count)| SequenceStatus {
                    operations: ops.iter().map(|s| s.to_string()).collect(),
                    precedence: *precedence,
                    count: *count,
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn transitions_keep_the_largest_count_and_highlight_important_sequences() {
        let p = protection(&[
            (&["GET /a", "GET /b"], 0.99, 500),
            (&["GET /a", "GET /b", "POST /c"], 0.5, 100),
        ]);
        let g = build(&p, &[], 0.9);
        assert_eq!(g.nodes.len(), 3);
        let ab = g.edges.iter().find(|e| e.from == 0 && e.to == 1).unwrap();
        assert_eq!((ab.count, ab.important), (500, true));
        let bc = g.edges.iter().find(|e| e.from == 1 && e.to == 2).unwrap();
        assert_eq!((bc.count, bc.important), (100, false));
        assert!(g.nodes[0].important && !g.nodes[2].important);
    }

    /// The stroke width of the learned edge `from -> to` in the DOT and in the SVG output.
    fn widths(g: &Graph, from: usize, to: usize) -> (f64, f64) {
        let dot = dot(g);
        let line = dot
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("n{from} -> n{to} ")))
            .unwrap();
        let in_dot = line.split("penwidth=").nth(1).unwrap();
        let in_dot: f64 = in_dot[..in_dot.find(',').unwrap()].parse().unwrap();
        let svg = svg(g);
        let (from_op, to_op) = (&g.nodes[from].operation, &g.nodes[to].operation);
        let tag = format!("data-from=\"{from_op}\" data-to=\"{to_op}\"");
        let edge = &svg[svg.find(&tag).unwrap()..];
        let in_svg = edge.split("stroke-width=\"").nth(1).unwrap();
        let in_svg: f64 = in_svg[..in_svg.find('"').unwrap()].parse().unwrap();
        (in_dot, in_svg)
    }

    #[test]
    fn edges_are_as_wide_as_their_counts_say_in_dot_and_svg() {
        let p = protection(&[
            (&["GET /a", "GET /b"], 0.99, 5000),
            (&["GET /b", "POST /c"], 0.5, 50),
            (&["POST /c", "GET /d"], 0.5, 1),
        ]);
        let g = build(&p, &[], 0.9);
        let node = |op: &str| g.nodes.iter().position(|n| n.operation == op).unwrap();
        let (a, b, c, d) = (
            node("GET /a"),
            node("GET /b"),
            node("POST /c"),
            node("GET /d"),
        );
        let (heavy, middle, light) = (widths(&g, a, b), widths(&g, b, c), widths(&g, c, d));
        // The most taken transition is the widest (6), the others in order, none below 1.
        assert_eq!(heavy, (6.0, 6.0));
        assert!(
            heavy.0 > middle.0 && middle.0 > light.0 && light.0 >= 1.0,
            "{heavy:?} {middle:?} {light:?}"
        );
        assert!(
            heavy.1 > middle.1 && middle.1 > light.1 && light.1 >= 1.0,
            "{heavy:?} {middle:?} {light:?}"
        );
        assert_eq!(middle.0, middle.1, "DOT and SVG agree");
    }

    #[test]
    fn declared_rules_are_drawn_and_cycles_still_get_layers() {
        let p = protection(&[(&["GET /a", "GET /b", "GET /a"], 0.95, 10)]);
        let spec = SequenceRuleSpec {
            protection_ref: ProtectionRef {
                name: "bank".into(),
            },
            priority: 0,
            action: Default::default(),
            dry_run: false,
            description: None,
            requires: Some(RequiresRule {
                operation: "POST /pay".into(),
                after: vec!["GET /b".into()],
                within: Default::default(),
            }),
            forbids: None,
            max_repeat: None,
            min_interval: None,
        };
        let rule = SequenceRule::new("pay-after-b", spec);
        let g = build(&p, &[rule], 0.9);
        assert!(
            g.edges
                .iter()
                .any(|e| e.kind == EdgeKind::Requires && e.rule.as_deref() == Some("pay-after-b"))
        );
        let rows = layout(&g).rows;
        let row_of = |op: &str| {
            let i = g.nodes.iter().position(|n| n.operation == op).unwrap();
            rows.iter().position(|r| r.contains(&i)).unwrap()
        };
        assert!(row_of("GET /a") < row_of("GET /b"));
        assert!(row_of("GET /b") < row_of("POST /pay"));
        let svg = svg(&g);
        assert!(svg.contains("data-operation=\"POST /pay\""));
        assert!(svg.contains("requires (pay-after-b)"));
        let dot = dot(&g);
        assert!(dot.contains("style=dashed"));
        assert!(dot.starts_with("digraph \"shop/bank\""));
    }

    #[test]
    fn nodes_carry_their_posture() {
        let mut p = protection(&[(&["POST /login", "GET /profile", "GET /orders"], 0.95, 40)]);
        if let Some(status) = p.status.as_mut() {
            status.posture = serde_json::from_value(serde_json::json!([
                { "operation": "POST /login", "answers": 50, "unauthenticatedAnswers": 50,
                  "sensitiveClasses": ["token"] },
                { "operation": "GET /profile", "answers": 40, "unauthenticatedAnswers": 0,
                  "sensitiveClasses": ["email", "phone"] },
                { "operation": "GET /not-in-the-flow", "answers": 3, "unauthenticatedAnswers": 3 },
            ]))
            .unwrap();
        }
        let g = build(&p, &[], 0.9);
        let posture = |op: &str| {
            g.nodes
                .iter()
                .find(|n| n.operation == op)
                .and_then(|n| n.posture.clone())
        };
        assert_eq!(
            posture("POST /login").as_deref(),
            Some("no credentials · token")
        );
        assert_eq!(posture("GET /profile").as_deref(), Some("email, phone"));
        assert_eq!(posture("GET /orders"), None);
        assert_eq!(g.nodes.len(), 3, "posture adds no node");
        let svg = svg(&g);
        assert!(svg.contains(">no credentials · token</text>"), "{svg}");
        assert!(
            svg.contains("<title>GET /profile (email, phone)</title>"),
            "{svg}"
        );
        assert!(dot(&g).contains("POST /login\\nno credentials · token"));
    }

    #[test]
    fn labels_are_escaped() {
        let p = protection(&[(&["GET /<x>&", "GET /\"y\""], 0.5, 3)]);
        let svg = svg(&build(&p, &[], 0.9));
        assert!(svg.contains("GET /&lt;x&gt;&amp;"));
        assert!(!svg.contains("GET /<x>"));
    }
}
