//! Readable identifiers in paths: which literal branches of a saturated path position are
//! folded into the position's parameter (see `OperationResolver::fold`).
//!
//! The resolver turns a position into a parameter once it has seen more distinct names than
//! `maxValuesPerPosition`; before this module the names seen until then stayed literal
//! endpoints forever, so an honest user returning to an object learned early (a book title, a
//! user name) hit an operation of its own with a handful of requests. Now the literals are
//! folded into the parameter retroactively, their statistics included (`LearnedModel::renamed`),
//! except the siblings that are genuinely different endpoints:
//!
//! - **used by many sessions**: a literal whose session windows (its operations' volume
//!   windows) reach both `KEEP_MIN_SUPPORT` and `KEEP_FACTOR` times the median of the
//!   position's literals (`/users/v1/me` is used by every session, one user's name by few);
//! - **a different shape**: a literal whose own operations carry a method or query/body
//!   parameter that fewer than two other names at the position (or the parameter branch)
//!   have, once it has `minEndpointRequests` learned requests (`/users/v1/_debug?verbose=1`).
//!   Sub-resources below a name (`/users/v1/alice/password`) are that object's operations and
//!   fold along with it. Response bodies are not compared: the model does not learn their
//!   shape.
//!
//! A fold needs evidence that the position's names keep growing with honest traffic: at least
//! half of `maxValuesPerPosition` of its literals must have learned (successful, unflagged)
//! requests, so that a prober's junk names cannot turn a position of real endpoints into a
//! parameter.

use std::collections::{BTreeSet, HashMap};

use crate::config::LearningConfig;
use crate::model::LearnedModel;
use crate::operation::SaturatedPosition;

/// Session windows a literal needs to stay literal on popularity alone.
pub const KEEP_MIN_SUPPORT: u64 = 20;
/// How many times the median literal's session windows a popular literal has.
pub const KEEP_FACTOR: u64 = 10;

/// What the operations of a literal name itself (or of the parameter) look like: their methods
/// and query/body parameter names (`GET`, `GET ?query.verbose`).
fn signature(
    model: &LearnedModel,
    templates: &[std::sync::Arc<str>],
    depth: usize,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in templates {
        let (method, path) = t.split_once(' ').unwrap_or(("", t));
        let suffix: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .skip(depth + 1)
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect();
        // Sub-resources below a name (`/users/v1/alice/password`) are that object's
        // operations and fold along with it; only the operations of the name itself tell a
        // different endpoint.
        if !suffix.is_empty() {
            continue;
        }
        let op = method.to_owned();
        if let Some(stats) = model.op_index(t).and_then(|i| model.operation(i)) {
            for name in stats.shape.params.keys() {
                if name.starts_with("query.") || name.starts_with("body.") {
                    out.insert(format!("{op} ?{name}"));
                }
            }
        }
        out.insert(op);
    }
    out
}

/// (learned requests, session windows) of a set of templates.
fn support(model: &LearnedModel, templates: &[std::sync::Arc<str>]) -> (u64, u64) {
    templates
        .iter()
        .filter_map(|t| model.op_index(t).and_then(|i| model.operation(i)))
        .fold((0, 0), |(r, w), s| (r + s.requests, w + s.volume.windows()))
}

/// The literal names of `position` to fold into its parameter.
pub fn names_to_fold(
    model: &LearnedModel,
    position: &SaturatedPosition,
    learning: &LearningConfig,
    max_values_per_position: usize,
) -> Vec<Box<str>> {
    let literals: Vec<(&str, u64, u64, BTreeSet<String>)> = position
        .literals
        .iter()
        .map(|(name, templates)| {
            let (requests, windows) = support(model, templates);
            (
                &**name,
                requests,
                windows,
                signature(model, templates, position.depth),
            )
        })
        .collect();
    let learned = literals.iter().filter(|l| l.1 > 0).count();
    if learned * 2 < max_values_per_position {
        return Vec::new();
    }
    let mut windows: Vec<u64> = literals.iter().map(|l| l.2).collect();
    windows.sort_unstable();
    let median = windows.get(windows.len() / 2).copied().unwrap_or(0);
    let popular = KEEP_MIN_SUPPORT.max(median.saturating_mul(KEEP_FACTOR));
    // How many names at the position have each signature element (the parameter branch
    // counts as two: it stands for many names).
    let mut common: HashMap<&str, usize> = HashMap::new();
    for l in &literals {
        for e in &l.3 {
            *common.entry(e.as_str()).or_default() += 1;
        }
    }
    let param = signature(model, &position.param_templates, position.depth);
    for e in &param {
        *common.entry(e.as_str()).or_default() += 2;
    }
    literals
        .iter()
        .filter(|(_, requests, windows, sig)| {
            let is_popular = *windows >= popular;
            let different = *requests >= learning.min_endpoint_requests
                && sig
                    .iter()
                    .any(|e| common.get(e.as_str()).copied().unwrap_or(0) < 3);
            !is_popular && !different
        })
        .map(|(name, ..)| Box::from(*name))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn learn(model: &mut LearnedModel, template: &str, requests: u64, windows: u32) {
        let i = model.op_index_or_insert(template, 1).unwrap();
        let stats = model.operation_mut(i).unwrap();
        stats.requests += requests;
        for _ in 0..windows {
            stats.volume.record_reached(1);
        }
    }

    fn position(names: &[&str], param: &[&str]) -> SaturatedPosition {
        SaturatedPosition {
            node: 7,
            depth: 2,
            literals: names
                .iter()
                .map(|n| {
                    (
                        Box::from(*n),
                        vec![Arc::from(format!("GET /users/v1/{n}").as_str())],
                    )
                })
                .collect(),
            param_templates: param.iter().map(|t| Arc::from(*t)).collect(),
        }
    }

    #[test]
    fn names_fold_popular_and_different_siblings_stay() {
        let mut model = LearnedModel::default();
        let mut names: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
        for n in &names {
            learn(&mut model, &format!("GET /users/v1/{n}"), 3, 2);
        }
        learn(&mut model, "GET /users/v1/me", 400, 300);
        learn(&mut model, "GET /users/v1/_debug", 5, 5);
        let debug = model.op_index("GET /users/v1/_debug").unwrap();
        model.operation_mut(debug).unwrap().shape.params.insert(
            "query.verbose".into(),
            crate::model::ParamProfile::default(),
        );
        learn(&mut model, "GET /users/v1/{var1}", 90, 60);
        names.push("me".into());
        names.push("_debug".into());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = position(&refs, &["GET /users/v1/{var1}"]);
        let learning = LearningConfig::default();
        let folded = names_to_fold(&model, &p, &learning, 32);
        assert_eq!(folded.len(), 20, "{folded:?}");
        assert!(!folded.iter().any(|n| &**n == "me" || &**n == "_debug"));
        // Too few learned names (junk a prober sent): nothing folds.
        let junk = position(&["aa", "bb", "cc"], &[]);
        assert!(names_to_fold(&model, &junk, &learning, 32).is_empty());
    }
}

#[cfg(test)]
mod renamed_tests {
    use crate::model::LearnedModel;

    /// Folding is a renaming of counts: the folded model is the same whether the renaming is
    /// applied before or after merging two replicas' models.
    #[test]
    fn renaming_merges_statistics_and_commutes_with_merge() {
        let mut a = LearnedModel::default();
        let mut b = LearnedModel::default();
        for (in_b, t, n) in [
            (false, "GET /books/v1/dune", 3u64),
            (false, "GET /books/v1/{var1}", 5),
            (false, "GET /books/v1", 8),
            (true, "GET /books/v1/dune", 2),
            (true, "GET /books/v1/emma", 1),
        ] {
            let m = if in_b { &mut b } else { &mut a };
            let i = m.op_index_or_insert(t, 1).unwrap();
            m.operation_mut(i).unwrap().requests = n;
        }
        let list = a.op_index("GET /books/v1").unwrap();
        let dune = a.op_index("GET /books/v1/dune").unwrap();
        a.sequences.learn(&[list], dune, 2);
        let rename = |t: &str| {
            (t == "GET /books/v1/dune" || t == "GET /books/v1/emma")
                .then(|| "GET /books/v1/{var1}".to_owned())
        };
        let mut merged_then_renamed = a.clone();
        merged_then_renamed.merge(&b);
        let merged_then_renamed = merged_then_renamed.renamed(&rename);
        let mut renamed_then_merged = a.renamed(&rename);
        renamed_then_merged.merge(&b.renamed(&rename));
        assert_eq!(merged_then_renamed, renamed_then_merged);
        let m = &merged_then_renamed;
        let param = m.op_index("GET /books/v1/{var1}").unwrap();
        assert_eq!(m.operation(param).unwrap().requests, 11);
        assert!(m.op_index("GET /books/v1/dune").is_none());
        let list = m.op_index("GET /books/v1").unwrap();
        assert_eq!(
            m.sequences.get(&[list]).and_then(|n| n.count_of(param)),
            Some(1)
        );
    }
}
