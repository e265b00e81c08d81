//! Unknown endpoint (shadow API probing): once the inventory is mature, an operation that the
//! model never saw succeed (and that no declaration names) is flagged.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::operation::OperationOrigin;

use super::context::{Judged, finding};

pub fn check(j: &Judged<'_>, config: &DetectorConfig) -> Option<Finding> {
    if j.ctx.operation.origin == OperationOrigin::Declared {
        return None;
    }
    let learned = j.op_stats().map_or(0, |s| s.requests);
    if learned >= j.learning.min_endpoint_requests {
        return None;
    }
    let known = j
        .model
        .operations
        .iter()
        .filter(|o| o.requests >= j.learning.min_endpoint_requests)
        .count();
    let origin = match j.ctx.operation.origin {
        OperationOrigin::Overflow => "overflow",
        OperationOrigin::Unknown => "unknown",
        _ => "learned",
    };
    let explanation = format!(
        "requested {} {}, an endpoint outside the learned inventory of {} operations (learned from {} requests{})",
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
    });
    Some(finding(
        FindingKind::ShadowEndpoint,
        Severity::Medium,
        config,
        explanation,
        evidence,
    ))
}

/// The path part of a template (`GET /x` → `/x`).
fn path_of(template: &str) -> &str {
    template.split_once(' ').map_or(template, |(_, path)| path)
}
