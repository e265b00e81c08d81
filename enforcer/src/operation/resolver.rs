//! Resolving a request's method and path to an [`Operation`].
//!
//! Declared templates (from rules, rate limits and the OpenAPI document) are matched
//! first. Other paths go through a learned prefix tree: at each position a value that
//! looks like an id (see [`looks_variable`]) goes to the position's parameter branch, and
//! a position that has seen more than `maxValuesPerPosition` distinct names sends every
//! further new name there too. Nodes and templates are capped; beyond the caps a request
//! resolves to its method's overflow operation, so a path fuzzer cannot grow memory. The tree
//! is bounded in bytes too: no literal is longer than `MAX_LITERAL_SEGMENT_BYTES` (a longer
//! segment is a value), and the literals, keys and display forms it holds together stay under
//! [`OperationResolver::max_tree_bytes`] (beyond it, new shapes go to the overflow operation).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::openapi::OperationSchema;
use super::pattern::{OperationPattern, PatternSegment, split_path};
use super::shape::looks_variable;
use super::{Operation, OperationOrigin};

/// Operation templating from traffic: the `operations` section of the enforcer config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperationsConfig {
    /// Learn templates for paths not declared (otherwise they resolve to one unknown operation per method).
    pub learn: bool,
    /// Cap on learned templates; beyond it requests go to one overflow operation per method.
    pub max_templates: usize,
    /// Distinct literal values tracked at one path position before it becomes a parameter.
    pub max_values_per_position: usize,
    /// Paths deeper than this many segments go to the overflow operation.
    pub max_segments: usize,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            learn: true,
            max_templates: 1000,
            max_values_per_position: 32,
            max_segments: 16,
        }
    }
}

/// A resolved template: the operation and where its parameters are in the path.
#[derive(Debug)]
pub struct Template {
    pub op: Operation,
    /// (segment position, parameter name).
    pub params: Box<[(u8, Box<str>)]>,
    /// Declared schema (OpenAPI), when there is one.
    pub schema: Option<Arc<OperationSchema>>,
}

impl Template {
    /// Pairs each parameter name with its raw value from `segments`.
    pub fn path_params<'a>(&'a self, segments: &[&'a str]) -> Vec<(&'a str, &'a str)> {
        self.params
            .iter()
            .filter_map(|(pos, name)| segments.get(usize::from(*pos)).map(|v| (&**name, *v)))
            .collect()
    }
}

/// Declared templates of one (method, depth), most specific first.
type ShapeIndex = HashMap<(http::Method, usize), Vec<(Vec<PatternSegment>, Arc<Template>)>>;

/// A declared template set, rebuilt on every config load.
#[derive(Debug, Default)]
pub struct DeclaredSet {
    /// By (method, depth); each list sorted most specific first.
    by_shape: ShapeIndex,
    by_key: HashMap<String, Arc<Template>>,
}

impl DeclaredSet {
    /// The declared template with this normalized key.
    pub fn get(&self, normalized_key: &str) -> Option<&Arc<Template>> {
        self.by_key.get(normalized_key)
    }

    pub fn templates(&self) -> impl Iterator<Item = &Arc<Template>> {
        self.by_key.values()
    }

    fn lookup(
        &self,
        method: &http::Method,
        segments: &[&str],
        fold_case: bool,
    ) -> Option<&Arc<Template>> {
        let candidates = self.by_shape.get(&(method.clone(), segments.len()))?;
        candidates
            .iter()
            .find(|(pattern, _)| {
                pattern.iter().zip(segments).all(|(p, s)| match p {
                    PatternSegment::Literal(l) if fold_case => l.eq_ignore_ascii_case(s),
                    PatternSegment::Literal(l) => l == s,
                    PatternSegment::Param(_) => true,
                })
            })
            .map(|(_, t)| t)
    }
}

/// Stable ids per normalized key for the life of the process.
#[derive(Debug, Default)]
struct Registry {
    ids: HashMap<String, u32>,
    learned: usize,
}

impl Registry {
    fn id_for(&mut self, key: &str) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(key.to_owned(), id);
        id
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    /// Too many distinct names seen: new names go to the parameter branch.
    saturated: bool,
    /// Templates ending here, by method.
    ends: Vec<(http::Method, Arc<Template>)>,
}

#[derive(Debug)]
struct LearnedTree {
    nodes: Vec<Node>,
    /// Bytes of the literals, template keys and display forms learned (see `learned_bytes`).
    bytes: usize,
}

/// Bytes one learned shape adds: its new literals, and the key and display form of its
/// template (each kept about twice: in the tree or registry, and in the operation).
fn learned_bytes(new_literals: usize, key: &str, display: &str) -> usize {
    new_literals + 2 * (key.len() + display.len())
}

/// A path position that saturated (more distinct names than `maxValuesPerPosition`) while it
/// still holds literal branches learned before it did: candidates for a retroactive fold into
/// the position's parameter (see [`OperationResolver::fold`]).
#[derive(Debug, Clone)]
pub struct SaturatedPosition {
    /// The position's node (an opaque handle for `fold`).
    pub node: u32,
    /// Segments before the position.
    pub depth: usize,
    /// Each literal branch with the templates below it (the literal's own included).
    pub literals: Vec<(Box<str>, Vec<Arc<str>>)>,
    /// Templates below the position's parameter branch.
    pub param_templates: Vec<Arc<str>>,
}

/// Counters exposed by `/v1/model` and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverStats {
    pub learned_templates: usize,
    pub tree_nodes: usize,
    pub max_templates: usize,
    pub max_nodes: usize,
    /// Bytes of text the learned templates hold, and the cap.
    pub tree_bytes: usize,
    pub max_tree_bytes: usize,
}

/// Thread-safe resolver shared by all connections. Reads take a read lock only; the write
/// lock is taken when traffic shows a new path shape.
#[derive(Debug)]
pub struct OperationResolver {
    config: OperationsConfig,
    max_nodes: usize,
    max_tree_bytes: usize,
    registry: Mutex<Registry>,
    declared: ArcSwap<DeclaredSet>,
    tree: RwLock<LearnedTree>,
    specials: RwLock<HashMap<(http::Method, OperationOrigin), Arc<Template>>>,
    /// Declared literals match without regard to ASCII case (`paths.caseSensitive: false`;
    /// the caller then resolves lower-cased paths).
    fold_case: AtomicBool,
}

/// The result of resolving a request.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub template: Arc<Template>,
}

impl OperationResolver {
    pub fn new(config: &OperationsConfig) -> Self {
        let max_nodes = config.max_templates.saturating_mul(4).max(64);
        Self {
            config: config.clone(),
            max_nodes,
            max_tree_bytes: Self::max_tree_bytes(config),
            registry: Mutex::new(Registry::default()),
            declared: ArcSwap::from_pointee(DeclaredSet::default()),
            tree: RwLock::new(LearnedTree {
                nodes: vec![Node::default()],
                bytes: 0,
            }),
            specials: RwLock::new(HashMap::new()),
            fold_case: AtomicBool::new(false),
        }
    }

    /// Whether declared literals match case-sensitively (the default).
    pub fn set_case_sensitive(&self, sensitive: bool) {
        self.fold_case.store(!sensitive, Ordering::Relaxed);
    }

    /// The byte budget of the learned tree: 512 bytes per allowed template (1,000 templates:
    /// 512 KB), at least 64 KiB. Typical templates take a tenth of that.
    pub fn max_tree_bytes(config: &OperationsConfig) -> usize {
        config.max_templates.saturating_mul(512).max(64 * 1024)
    }

    /// Replaces the declared templates. `patterns` carry an optional schema (OpenAPI);
    /// the first occurrence of a normalized key wins.
    pub fn set_declared(&self, patterns: Vec<(OperationPattern, Option<Arc<OperationSchema>>)>) {
        let mut set = DeclaredSet::default();
        let mut registry = self.registry.lock();
        for (pattern, schema) in patterns {
            let key = pattern.normalized_key();
            if let Some(existing) = set.by_key.get_mut(&key) {
                if existing.schema.is_none() && schema.is_some() {
                    let replaced = Arc::new(Template {
                        op: existing.op.clone(),
                        params: existing.params.clone(),
                        schema,
                    });
                    *existing = replaced;
                }
                continue;
            }
            let id = registry.id_for(&key);
            let params = pattern
                .segments
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    PatternSegment::Param(name) => Some((
                        u8::try_from(i).unwrap_or(u8::MAX),
                        name.clone().into_boxed_str(),
                    )),
                    PatternSegment::Literal(_) => None,
                })
                .collect();
            let template = Arc::new(Template {
                op: Operation {
                    id,
                    template: pattern.display().into(),
                    origin: OperationOrigin::Declared,
                },
                params,
                schema,
            });
            set.by_key.insert(key, template);
        }
        // Re-point by_shape at the final templates (schemas may have been merged).
        let mut by_shape: ShapeIndex = HashMap::new();
        for template in set.by_key.values() {
            if let Ok(pattern) = OperationPattern::parse(&template.op.template) {
                by_shape
                    .entry((pattern.method.clone(), pattern.segments.len()))
                    .or_default()
                    .push((pattern.segments, Arc::clone(template)));
            }
        }
        for list in by_shape.values_mut() {
            // Most literals first; then literals further left first: `/a/me` before `/a/{id}`.
            list.sort_by_key(|(segs, _)| {
                let literal_mask: Vec<bool> = segs
                    .iter()
                    .map(|s| matches!(s, PatternSegment::Param(_)))
                    .collect();
                (
                    segs.iter()
                        .filter(|s| matches!(s, PatternSegment::Param(_)))
                        .count(),
                    literal_mask,
                )
            });
        }
        set.by_shape = by_shape;
        drop(registry);
        self.declared.store(Arc::new(set));
    }

    /// The current declared set.
    pub fn declared(&self) -> Arc<DeclaredSet> {
        self.declared.load_full()
    }

    /// Resolves `method` + `path` (the canonical path, without the query). `segments`
    /// receives the path segments, for parameter extraction. `HEAD` resolves to the `GET`
    /// operation of its path unless `HEAD` is declared for it: upstreams answer `HEAD` with
    /// their `GET` handler, so its rules and limits apply.
    pub fn resolve<'p>(
        &self,
        method: &http::Method,
        path: &'p str,
        segments: &mut Vec<&'p str>,
    ) -> Resolved {
        segments.clear();
        segments.extend(split_path(path));
        let declared = self.declared.load();
        let fold_case = self.fold_case.load(Ordering::Relaxed);
        if let Some(t) = declared.lookup(method, segments, fold_case) {
            return Resolved {
                template: Arc::clone(t),
            };
        }
        let method = if *method == http::Method::HEAD {
            &http::Method::GET
        } else {
            method
        };
        if let Some(t) = declared.lookup(method, segments, fold_case) {
            return Resolved {
                template: Arc::clone(t),
            };
        }
        if !self.config.learn {
            return Resolved {
                template: self.special(method, OperationOrigin::Unknown),
            };
        }
        if segments.len() > self.config.max_segments {
            return Resolved {
                template: self.special(method, OperationOrigin::Overflow),
            };
        }
        if let Some(t) = self.lookup_learned(method, segments) {
            return Resolved { template: t };
        }
        let template = self
            .learn(method, segments)
            .unwrap_or_else(|| self.special(method, OperationOrigin::Overflow));
        Resolved { template }
    }

    fn lookup_learned(&self, method: &http::Method, segments: &[&str]) -> Option<Arc<Template>> {
        let tree = self.tree.read();
        let mut node = tree.nodes.first()?;
        for seg in segments {
            let next = match node.literals.get(*seg) {
                Some(idx) => Some(*idx),
                None if node.saturated || looks_variable(seg) => node.param,
                None => None,
            }?;
            node = tree.nodes.get(next as usize)?;
        }
        node.ends
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, t)| Arc::clone(t))
    }

    /// Inserts the path into the tree; `None` when a cap is reached.
    fn learn(&self, method: &http::Method, segments: &[&str]) -> Option<Arc<Template>> {
        let mut tree = self.tree.write();
        let mut idx = 0usize;
        let mut key = String::with_capacity(64);
        key.push_str(method.as_str());
        key.push(' ');
        let mut display = key.clone();
        let mut params = Vec::new();
        if tree.bytes >= self.max_tree_bytes {
            return None;
        }
        for (pos, seg) in segments.iter().enumerate() {
            let node = tree.nodes.get(idx)?;
            let literal = node.literals.get(*seg).copied();
            let as_param = literal.is_none() && (node.saturated || looks_variable(seg));
            let next = if let Some(next) = literal {
                next
            } else if as_param {
                match node.param {
                    Some(p) => p,
                    None => {
                        let new = push_node(&mut tree, self.max_nodes)?;
                        tree.nodes.get_mut(idx)?.param = Some(new);
                        new
                    }
                }
            } else {
                let max_values = self.config.max_values_per_position;
                if node.literals.len() >= max_values {
                    // Too many distinct names at this position: it is a parameter from now on.
                    let node = tree.nodes.get_mut(idx)?;
                    node.saturated = true;
                    match node.param {
                        Some(p) => p,
                        None => {
                            let new = push_node(&mut tree, self.max_nodes)?;
                            tree.nodes.get_mut(idx)?.param = Some(new);
                            new
                        }
                    }
                } else {
                    if tree.bytes + seg.len() > self.max_tree_bytes {
                        return None;
                    }
                    let new = push_node(&mut tree, self.max_nodes)?;
                    tree.nodes.get_mut(idx)?.literals.insert((*seg).into(), new);
                    tree.bytes += seg.len();
                    new
                }
            };
            let went_param = tree.nodes.get(idx)?.param == Some(next) && literal.is_none();
            key.push('/');
            display.push('/');
            if went_param {
                key.push_str("{}");
                params.push(pos);
                display.push_str(&format!("{{var{}}}", params.len()));
            } else {
                key.push_str(seg);
                display.push_str(seg);
            }
            idx = next as usize;
        }
        if segments.is_empty() {
            key.push('/');
            display.push('/');
        }
        if let Some((_, t)) = tree.nodes.get(idx)?.ends.iter().find(|(m, _)| m == method) {
            return Some(Arc::clone(t));
        }
        let added = learned_bytes(0, &key, &display);
        if tree.bytes + added > self.max_tree_bytes {
            return None;
        }
        let id = {
            let mut registry = self.registry.lock();
            if registry.learned >= self.config.max_templates {
                return None;
            }
            registry.learned += 1;
            registry.id_for(&key)
        };
        let template = Arc::new(Template {
            op: Operation {
                id,
                template: display.into(),
                origin: OperationOrigin::Learned,
            },
            params: params
                .iter()
                .enumerate()
                .map(|(i, pos)| {
                    (
                        u8::try_from(*pos).unwrap_or(u8::MAX),
                        format!("var{}", i + 1).into_boxed_str(),
                    )
                })
                .collect(),
            schema: None,
        });
        tree.nodes
            .get_mut(idx)?
            .ends
            .push((method.clone(), Arc::clone(&template)));
        tree.bytes += added;
        Some(template)
    }

    /// The overflow or unknown operation of a method (one per method, created once).
    fn special(&self, method: &http::Method, origin: OperationOrigin) -> Arc<Template> {
        // Unusual methods share one bucket so that they cannot grow the table.
        let method = if super::METHODS.contains(&method.as_str()) {
            method.clone()
        } else {
            http::Method::from_bytes(b"OTHER").unwrap_or(http::Method::GET)
        };
        if let Some(t) = self.specials.read().get(&(method.clone(), origin)) {
            return Arc::clone(t);
        }
        let suffix = if origin == OperationOrigin::Unknown {
            "{unknown}"
        } else {
            "{overflow}"
        };
        let display = format!("{} /{suffix}", method.as_str());
        let id = self.registry.lock().id_for(&display);
        let template = Arc::new(Template {
            op: Operation {
                id,
                template: display.into(),
                origin,
            },
            params: Box::new([]),
            schema: None,
        });
        Arc::clone(
            self.specials
                .write()
                .entry((method, origin))
                .or_insert(template),
        )
    }

    /// Every operation currently known: declared, learned and the overflow buckets in use.
    pub fn inventory(&self) -> Vec<Operation> {
        let mut ops: Vec<Operation> = self
            .declared
            .load()
            .by_key
            .values()
            .map(|t| t.op.clone())
            .collect();
        {
            let tree = self.tree.read();
            ops.extend(
                tree.nodes
                    .iter()
                    .flat_map(|n| n.ends.iter().map(|(_, t)| t.op.clone())),
            );
        }
        ops.extend(self.specials.read().values().map(|t| t.op.clone()));
        ops.sort_by_key(|op| op.id);
        ops.dedup_by_key(|op| op.id);
        ops
    }

    pub fn stats(&self) -> ResolverStats {
        let learned_templates = self.registry.lock().learned;
        let (tree_nodes, tree_bytes) = {
            let tree = self.tree.read();
            (tree.nodes.len(), tree.bytes)
        };
        ResolverStats {
            learned_templates,
            tree_nodes,
            max_templates: self.config.max_templates,
            max_nodes: self.max_nodes,
            tree_bytes,
            max_tree_bytes: self.max_tree_bytes,
        }
    }
}

impl OperationResolver {
    pub fn max_values_per_position(&self) -> usize {
        self.config.max_values_per_position
    }

    /// Saturated positions that still hold literal branches, reachable from the root.
    pub fn saturated_positions(&self) -> Vec<SaturatedPosition> {
        let tree = self.tree.read();
        let mut out = Vec::new();
        // (node, depth), depth-first.
        let mut stack = vec![(0u32, 0usize)];
        while let Some((idx, depth)) = stack.pop() {
            let Some(node) = tree.nodes.get(idx as usize) else {
                continue;
            };
            stack.extend(node.literals.values().map(|c| (*c, depth + 1)));
            stack.extend(node.param.map(|p| (p, depth + 1)));
            if node.saturated && !node.literals.is_empty() {
                let literals = node
                    .literals
                    .iter()
                    .map(|(name, child)| (name.clone(), subtree_templates(&tree, *child)))
                    .collect();
                let param_templates = node
                    .param
                    .map(|p| subtree_templates(&tree, p))
                    .unwrap_or_default();
                out.push(SaturatedPosition {
                    node: idx,
                    depth,
                    literals,
                    param_templates,
                });
            }
        }
        out
    }

    /// Folds the literal branches `names` of a saturated position into its parameter: their
    /// paths resolve to the parameter's templates from now on (created when missing), and
    /// their templates leave the inventory. Returns each removed template with the template
    /// its paths resolve to now, so that the model can merge their statistics
    /// (`LearnedModel::renamed`). The orphaned nodes stay allocated (bounded by `max_nodes`).
    pub fn fold(&self, node: u32, names: &[Box<str>]) -> Vec<(Arc<str>, Arc<str>)> {
        let mut removed: Vec<Arc<str>> = Vec::new();
        {
            let mut tree = self.tree.write();
            for name in names {
                let Some(child) = tree
                    .nodes
                    .get_mut(node as usize)
                    .filter(|n| n.saturated)
                    .and_then(|n| n.literals.remove(name))
                else {
                    continue;
                };
                let mut stack = vec![child];
                while let Some(idx) = stack.pop() {
                    let Some(n) = tree.nodes.get_mut(idx as usize) else {
                        continue;
                    };
                    removed.extend(n.ends.drain(..).map(|(_, t)| t.op.template.clone()));
                    stack.extend(n.literals.values().copied());
                    stack.extend(n.param);
                }
            }
        }
        {
            let mut registry = self.registry.lock();
            registry.learned = registry.learned.saturating_sub(removed.len());
        }
        removed
            .into_iter()
            .filter_map(|old| {
                let (method, path) = old.split_once(' ')?;
                let method = http::Method::from_bytes(method.as_bytes()).ok()?;
                // A parameter's value: any id-like segment takes the parameter branch.
                let mut concrete: String = split_path(path)
                    .map(|seg| {
                        if seg.starts_with('{') {
                            "/0".to_owned()
                        } else {
                            format!("/{seg}")
                        }
                    })
                    .collect();
                if concrete.is_empty() {
                    concrete.push('/');
                }
                let mut segments = Vec::new();
                let new = self.resolve(&method, &concrete, &mut segments).template;
                (new.op.template != old).then(|| (old, new.op.template.clone()))
            })
            .collect()
    }
}

/// Display forms of the templates ending at or below node `idx`.
fn subtree_templates(tree: &LearnedTree, idx: u32) -> Vec<Arc<str>> {
    let mut out = Vec::new();
    let mut stack = vec![idx];
    while let Some(i) = stack.pop() {
        let Some(n) = tree.nodes.get(i as usize) else {
            continue;
        };
        out.extend(n.ends.iter().map(|(_, t)| t.op.template.clone()));
        stack.extend(n.literals.values().copied());
        stack.extend(n.param);
    }
    out
}

fn push_node(tree: &mut LearnedTree, max_nodes: usize) -> Option<u32> {
    if tree.nodes.len() >= max_nodes {
        return None;
    }
    let idx = u32::try_from(tree.nodes.len()).ok()?;
    tree.nodes.push(Node::default());
    Some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &OperationResolver, method: &str, path: &str) -> Arc<Template> {
        let mut segs = Vec::new();
        r.resolve(
            &http::Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            &mut segs,
        )
        .template
    }

    #[test]
    fn ids_become_parameters_and_declared_names_win() {
        let r = OperationResolver::new(&OperationsConfig::default());
        let a = resolve(&r, "GET", "/api/v1/accounts/123/balance");
        assert_eq!(&*a.op.template, "GET /api/v1/accounts/{var1}/balance");
        let b = resolve(&r, "GET", "/api/v1/accounts/456/balance");
        assert_eq!(a.op.id, b.op.id);
        let mut segs = Vec::new();
        segs.extend(split_path("/api/v1/accounts/456/balance"));
        assert_eq!(b.path_params(&segs), vec![("var1", "456")]);
        r.set_declared(vec![(
            OperationPattern::parse("GET /api/v1/accounts/{account_id}/balance").unwrap(),
            None,
        )]);
        let c = resolve(&r, "GET", "/api/v1/accounts/789/balance");
        assert_eq!(c.op.id, a.op.id, "same normalized key keeps its id");
        assert_eq!(&*c.op.template, "GET /api/v1/accounts/{account_id}/balance");
        assert_eq!(c.op.origin, OperationOrigin::Declared);
    }

    #[test]
    fn head_takes_the_get_operation_unless_declared() {
        let r = OperationResolver::new(&OperationsConfig::default());
        r.set_declared(vec![
            (OperationPattern::parse("GET /api/v1/export").unwrap(), None),
            (
                OperationPattern::parse("HEAD /api/v1/status").unwrap(),
                None,
            ),
            (OperationPattern::parse("GET /api/v1/status").unwrap(), None),
        ]);
        let get = resolve(&r, "GET", "/api/v1/export");
        assert_eq!(resolve(&r, "HEAD", "/api/v1/export").op.id, get.op.id);
        assert_eq!(
            &*resolve(&r, "HEAD", "/api/v1/status").op.template,
            "HEAD /api/v1/status"
        );
        let learned = resolve(&r, "GET", "/other/123");
        assert_eq!(resolve(&r, "HEAD", "/other/456").op.id, learned.op.id);
    }

    #[test]
    fn case_folding_matches_declared_literals() {
        let r = OperationResolver::new(&OperationsConfig::default());
        r.set_declared(vec![(
            OperationPattern::parse("POST /api/v1/transferFunds").unwrap(),
            None,
        )]);
        let declared = |r: &OperationResolver| {
            resolve(r, "POST", "/api/v1/transferfunds").op.origin == OperationOrigin::Declared
        };
        assert!(!declared(&r));
        r.set_case_sensitive(false);
        assert!(declared(&r));
    }

    #[test]
    fn high_cardinality_position_becomes_parameter() {
        let cfg = OperationsConfig {
            max_values_per_position: 4,
            ..OperationsConfig::default()
        };
        let r = OperationResolver::new(&cfg);
        for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            resolve(&r, "GET", &format!("/users/{name}/profile"));
        }
        assert_eq!(
            &*resolve(&r, "GET", "/users/zed/profile").op.template,
            "GET /users/{var1}/profile"
        );
        assert_eq!(
            &*resolve(&r, "GET", "/users/alice/profile").op.template,
            "GET /users/alice/profile"
        );
    }

    #[test]
    fn folded_literals_resolve_to_the_parameter() {
        let cfg = OperationsConfig {
            max_values_per_position: 4,
            ..OperationsConfig::default()
        };
        let r = OperationResolver::new(&cfg);
        for name in ["alice", "bob", "carol", "dave", "erin"] {
            resolve(&r, "GET", &format!("/users/{name}/profile"));
        }
        resolve(&r, "GET", "/users/me/profile");
        let positions = r.saturated_positions();
        assert_eq!(positions.len(), 1, "{positions:?}");
        let p = &positions[0];
        assert_eq!(p.depth, 1);
        assert_eq!(p.literals.len(), 4);
        assert_eq!(&*p.param_templates[0], "GET /users/{var1}/profile");
        let alice = p
            .literals
            .iter()
            .find(|(n, _)| &**n == "alice")
            .map(|(_, t)| t.clone())
            .unwrap();
        assert_eq!(&*alice[0], "GET /users/alice/profile");
        let learned = r.stats().learned_templates;
        let names: Vec<Box<str>> = ["alice", "bob", "carol"].map(Box::from).to_vec();
        let renames = r.fold(p.node, &names);
        assert_eq!(renames.len(), 3);
        assert!(
            renames
                .iter()
                .all(|(_, new)| &**new == "GET /users/{var1}/profile")
        );
        assert_eq!(r.stats().learned_templates, learned - 3);
        assert_eq!(
            &*resolve(&r, "GET", "/users/alice/profile").op.template,
            "GET /users/{var1}/profile"
        );
        // Kept literals stay.
        assert_eq!(
            &*resolve(&r, "GET", "/users/dave/profile").op.template,
            "GET /users/dave/profile"
        );
        assert!(
            !r.inventory()
                .iter()
                .any(|o| &*o.template == "GET /users/alice/profile")
        );
    }

    #[test]
    fn long_segments_are_values_and_bytes_are_capped() {
        let r = OperationResolver::new(&OperationsConfig::default());
        for i in 0..200 {
            let long = format!("{}{i}", "x".repeat(60_000));
            let t = resolve(&r, "GET", &format!("/p{}/{long}", i % 8));
            assert!(t.op.template.len() < 64, "{}", t.op.template);
        }
        let stats = r.stats();
        assert!(stats.tree_bytes < 4096, "{stats:?}");
        assert_eq!(stats.learned_templates, 8, "{stats:?}");
        // Many distinct short literals hit the byte budget before anything else grows.
        let wide = OperationsConfig {
            max_values_per_position: 100_000,
            ..OperationsConfig::default()
        };
        let r = OperationResolver::new(&wide);
        // Letters only (digits would make them look like ids).
        let name = |i: u32| -> String {
            let tail: String = [i / 676, i / 26 % 26, i % 26]
                .iter()
                .filter_map(|d| char::from_u32(u32::from('a') + d % 26))
                .collect();
            format!("{}{tail}", "n".repeat(120))
        };
        for i in 0..2_000 {
            resolve(&r, "GET", &format!("/{}", name(i)));
        }
        let stats = r.stats();
        assert!(stats.tree_bytes <= stats.max_tree_bytes, "{stats:?}");
        assert!(stats.learned_templates < wide.max_templates, "{stats:?}");
        assert_eq!(
            resolve(&r, "GET", &format!("/{}", name(5_000))).op.origin,
            OperationOrigin::Overflow
        );
    }

    #[test]
    fn fuzzing_is_bounded_by_the_caps() {
        let cfg = OperationsConfig {
            max_templates: 200,
            ..OperationsConfig::default()
        };
        let r = OperationResolver::new(&cfg);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let depth = (x % 6) as usize + 1;
            let path: String = (0..depth)
                .map(|i| format!("/s{}", (x >> (i * 8)) % 251))
                .collect();
            resolve(&r, "GET", &path);
        }
        let stats = r.stats();
        assert!(stats.learned_templates <= 200, "{stats:?}");
        assert!(stats.tree_nodes <= stats.max_nodes, "{stats:?}");
        assert_eq!(
            resolve(&r, "GET", "/never/seen/before/path/q").op.origin,
            OperationOrigin::Overflow
        );
    }
}
