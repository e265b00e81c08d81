//! Unknown endpoint (shadow API probing). An operation that no declaration names and that the
//! model has seen succeed fewer than `minEndpointRequests` times is not refused for its rarity
//! alone: every real API has a long tail of honest operations (a password change, a yearly
//! statement, an endpoint a new release added) that learning saw too rarely. It is refused only
//! with evidence that it is not a real part of the API for honest clients:
//!
//! - its path does not fit the learned resource structure: no learned operation shares its
//!   parent path (an unknown prefix such as `/actuator/env` or `/api/v1/admin/users`, a new
//!   top-level name), nor is it another method of a learned path;
//! - the session already probed: an earlier request of it to an operation outside the
//!   inventory was answered 404/405 by the application (`SessionState::probed`);
//! - the session was already flagged by any detector (it is not "otherwise normal");
//! - it is the session's first request: nothing shows a normal client yet (honest clients
//!   reach a rare operation through the app, after other requests; a one-request scanner
//!   session does not) — unless it is one more member of a learned template family
//!   ([`templated_sibling`]: a name of the family's format at a position where a parameter or
//!   several names were learned), which a client that changed session key (logged in under its
//!   address, then used its token) or followed a link asks for first.
//!
//! Otherwise (a templated sibling, a new name under a learned collection, a rarely used method
//! of a known resource, from a clean session) the request goes through and is judged by its
//! answer, because the decision to block is made before the application answers: a 404/405
//! marks the session as probing and taints it (its later unknown operations are refused, it
//! teaches nothing); a success from an untainted session is learned like any other traffic, so
//! the operation is *discovered*: it enters the inventory with its first-seen time and counts
//! (`OperationStats::discovered_ms`, `GET /v1/model`). Overflow and unknown operations (the
//! template caps reached, or template learning off) carry no structure and stay refused.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::LearnedModel;
use crate::model::format::{FormatSet, formats_of};
use crate::model::value::text_facts;
use crate::operation::OperationOrigin;

use super::context::{Judged, finding};
use super::session_state::SessionState;

/// Whether an operation of this origin with `learned` successful requests is outside the
/// learned inventory (a shadow-endpoint candidate).
pub fn outside_inventory(
    origin: OperationOrigin,
    learned: u64,
    min_endpoint_requests: u64,
) -> bool {
    origin != OperationOrigin::Declared && learned < min_endpoint_requests
}

pub fn check(j: &Judged<'_>, config: &DetectorConfig, state: &SessionState) -> Option<Finding> {
    let learned = j.op_stats().map_or(0, |s| s.requests);
    let min = j.learning.min_endpoint_requests;
    if !outside_inventory(j.ctx.operation.origin, learned, min) {
        return None;
    }
    let fits = j.ctx.operation.origin == OperationOrigin::Learned
        && fits_structure(j.model, j.template(), min);
    let reason = if !fits {
        match j.ctx.operation.origin {
            OperationOrigin::Overflow => "the path is beyond the learned template caps",
            OperationOrigin::Unknown => "template learning is off and no declaration names it",
            _ => {
                "its path does not fit the learned resource structure (no learned operation under its parent path)"
            }
        }
    } else if state.probed() {
        "the session already requested paths the application answered as not existing (404/405)"
    } else if state.tainted() {
        "the session was already flagged"
    } else if state.seen() == 0 && !templated_sibling(j.model, j.template(), min) {
        "it is the session's first request (nothing shows a normal client)"
    } else {
        // Fits the learned structure, clean session: judged by the application's answer.
        return None;
    };
    let known = j
        .model
        .operations
        .iter()
        .filter(|o| o.requests >= min)
        .count();
    let origin = match j.ctx.operation.origin {
        OperationOrigin::Overflow => "overflow",
        OperationOrigin::Unknown => "unknown",
        _ => "learned",
    };
    let explanation = format!(
        "requested {} {}, an endpoint outside the learned inventory of {} operations (learned from {} requests{}); refused because {reason}",
        j.ctx.method,
        path_of(j.template()),
        known,
        j.model.requests,
        if learned > 0 {
            format!("; it succeeded only {learned} times")
        } else {
            String::new()
        }
    );
    let evidence = json!({
        "operation": j.template(),
        "origin": origin,
        "learnedRequests": learned,
        "knownOperations": known,
        "fitsStructure": fits,
        "sessionProbed": state.probed(),
        "sessionFlagged": state.tainted(),
    });
    Some(finding(
        FindingKind::ShadowEndpoint,
        Severity::Medium,
        config,
        explanation,
        evidence,
    ))
}

/// A template's method and path segments (`GET /a/{var1}` → `GET`, `[a, {var1}]`).
fn split(template: &str) -> (&str, Vec<&str>) {
    let (method, path) = template.split_once(' ').unwrap_or(("", template));
    (method, path.split('/').filter(|s| !s.is_empty()).collect())
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{')
}

/// A candidate segment against a learned one: a learned parameter takes any value (a new name
/// under a learned collection), a literal only itself.
fn segment_fits(candidate: &str, learned: &str) -> bool {
    is_param(learned) || candidate == learned
}

/// Whether `template` fits the learned resource structure: another method of a learned path,
/// or a path whose parent is a node of the learned tree (a prefix of a learned operation's
/// path, at least one segment long). Only operations in the inventory vouch.
pub fn fits_structure(model: &LearnedModel, template: &str, min_endpoint_requests: u64) -> bool {
    let (_, segments) = split(template);
    let parent = segments.len().saturating_sub(1);
    model
        .operations
        .iter()
        .filter(|o| o.requests >= min_endpoint_requests && o.template != template)
        .any(|o| {
            let (_, learned) = split(&o.template);
            let same_path = learned.len() == segments.len()
                && segments
                    .iter()
                    .zip(&learned)
                    .all(|(c, l)| segment_fits(c, l));
            let sibling = parent > 0
                && learned.len() >= parent
                && segments
                    .iter()
                    .zip(&learned)
                    .take(parent)
                    .all(|(c, l)| segment_fits(c, l));
            same_path || sibling
        })
}

/// Learned operations (of one method and depth, differing from a request only in one segment)
/// that make that segment a family of names rather than one endpoint.
const MIN_FAMILY: usize = 3;

/// Whether `template` is one more member of a learned template family: another name at a
/// position whose learned operations (same method, same depth, the same other segments) are a
/// parameter or at least [`MIN_FAMILY`] distinct names (`GET /books/v1/silent-harbour` next to
/// learned `GET /books/v1/golden-river`, `…/hidden-garden`, `…/quiet-letter`, a position not
/// yet folded into a parameter). Such a request asks for one more object of a learned kind,
/// which a session may do first (a client that logged in under another session key, or
/// follows a link); it is judged by the application's answer like any request that fits.
/// A name under a new prefix, or at a position that has one learned name (`/users/v1/me`),
/// is not a family member.
pub fn templated_sibling(model: &LearnedModel, template: &str, min_endpoint_requests: u64) -> bool {
    let (method, segments) = split(template);
    if segments.is_empty() {
        return false;
    }
    // Per differing position: the learned names, and the formats they all follow.
    let mut names: Vec<Vec<&str>> = vec![Vec::new(); segments.len()];
    let mut shared: Vec<Option<FormatSet>> = vec![None; segments.len()];
    for o in model
        .operations
        .iter()
        .filter(|o| o.requests >= min_endpoint_requests && o.template != template)
    {
        let (m, learned) = split(&o.template);
        if m != method || learned.len() != segments.len() {
            continue;
        }
        let mut differing = segments
            .iter()
            .zip(&learned)
            .enumerate()
            .filter(|(_, (c, l))| c != l);
        let (Some((at, (c, l))), None) = (differing.next(), differing.next()) else {
            continue;
        };
        // A name that carries an attack construct is no member of any family.
        if text_facts(c).markers != 0 {
            return false;
        }
        if is_param(l) {
            return true;
        }
        if !names[at].contains(l) {
            names[at].push(l);
            let formats = formats_of(l);
            shared[at] = Some(shared[at].map_or(formats, |s| s.intersection(formats)));
        }
    }
    // At least MIN_FAMILY names, and the new one follows every format they all follow (a
    // `{{…}}` template payload next to learned names is no name).
    names.iter().zip(&shared).zip(&segments).any(|((n, s), c)| {
        n.len() >= MIN_FAMILY && s.is_some_and(|s| formats_of(c).contains_all(s))
    })
}

/// The learned parameterised sibling of a literal operation: the operation of the same method
/// and depth whose template differs from `template` only in one segment, a parameter there
/// (`GET /books/v1/{var1}` for `GET /books/v1/secret-harbour`, a name kept literal because
/// many sessions use it). Its index in the model.
pub fn parameterised_sibling(model: &LearnedModel, template: &str) -> Option<u16> {
    let (method, segments) = split(template);
    model.operations.iter().enumerate().find_map(|(i, o)| {
        let (m, learned) = split(&o.template);
        if m != method || learned.len() != segments.len() || o.template == template {
            return None;
        }
        let mut differing = segments.iter().zip(&learned).filter(|(c, l)| c != l);
        match (differing.next(), differing.next()) {
            (Some((c, l)), None) if is_param(l) && !is_param(c) => u16::try_from(i).ok(),
            _ => None,
        }
    })
}

/// The path part of a template (`GET /x` → `/x`).
fn path_of(template: &str) -> &str {
    template.split_once(' ').map_or(template, |(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(templates: &[(&str, u64)]) -> LearnedModel {
        let mut m = LearnedModel::default();
        for (t, requests) in templates {
            let i = m.op_index_or_insert(t, 1).unwrap();
            m.operation_mut(i).unwrap().requests = *requests;
        }
        m
    }

    #[test]
    fn structure_fit_follows_the_learned_tree() {
        let m = model(&[
            ("GET /users/v1/{var1}", 500),
            ("GET /api/v1/accounts", 900),
            ("GET /api/v1/accounts/{var1}/balance", 900),
            ("GET /login", 900),
            ("PUT /users/v1/{var1}/email", 2),
        ]);
        let fits = |t: &str| fits_structure(&m, t, 3);
        // A rare method of a known resource, a sub-resource of a known one, a new name.
        assert!(fits("PUT /users/v1/{var1}/password"));
        assert!(fits("DELETE /users/v1/{var1}"));
        assert!(fits("GET /users/v1/alice"));
        assert!(fits("GET /api/v1/accounts/{var1}/statements"));
        assert!(fits("POST /api/v1/payees"));
        // Unknown prefixes and new top-level names.
        assert!(!fits("GET /api/v1/admin/users"));
        assert!(!fits("GET /actuator/env"));
        assert!(!fits("GET /admin"));
        assert!(!fits("GET /api/v2/accounts/{var1}/x"));
        // Another method of a top-level path is a known resource.
        assert!(fits("POST /login"));
        // An operation below the inventory threshold does not vouch for others.
        assert!(!fits("GET /users/v1/{var1}/email/history"));
    }

    #[test]
    fn templated_siblings_are_members_of_a_learned_family() {
        let m = model(&[
            ("GET /books/v1/golden-river", 40),
            ("GET /books/v1/hidden-garden", 30),
            ("GET /books/v1/quiet-letter", 20),
            ("GET /books/v1/rare-one", 2),
            ("GET /users/v1/{var1}", 500),
            ("GET /users/v1/me", 300),
            ("GET /shop/items/a", 50),
            ("GET /shop/items/b", 50),
        ]);
        let sibling = |t: &str| templated_sibling(&m, t, 3);
        // A new name next to three learned names, or at a learned parameter.
        assert!(sibling("GET /books/v1/silent-harbour"));
        assert!(sibling("GET /users/v1/alice"));
        // Two learned names (or one below the inventory threshold) are not yet a family.
        assert!(!sibling("GET /shop/items/c"));
        // Another method, another depth, another prefix.
        assert!(!sibling("DELETE /books/v1/silent-harbour"));
        assert!(!sibling("GET /books/v1/silent-harbour/export"));
        assert!(!sibling("GET /books/v2/golden-river"));
        assert!(!sibling("GET /admin"));
        // Not names: a template payload, a name with an attack construct.
        assert!(!sibling(
            "GET /books/v1/{{get_flashed_messages.__globals__}}"
        ));
        assert!(!sibling("GET /books/v1/x' or 1=1"));
        assert!(!sibling("GET /users/v1/x' or 1=1"));
        // The parameterised sibling of a literal kept apart.
        let family = parameterised_sibling(&m, "GET /users/v1/me").unwrap();
        assert_eq!(m.template_of(family), "GET /users/v1/{var1}");
        assert_eq!(
            parameterised_sibling(&m, "GET /books/v1/golden-river"),
            None
        );
        assert_eq!(parameterised_sibling(&m, "POST /users/v1/me"), None);
        assert_eq!(parameterised_sibling(&m, "GET /users/v1/{var1}"), None);
    }
}
