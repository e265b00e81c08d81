//! Request-shape deviation: a parameter the operation never had (mass assignment), a value of
//! a type the parameter never had (type confusion), a value outside the learned profile
//! (injection constructs, character classes never seen, oversized values, magnitudes far
//! beyond the learned range, negatives where none were seen, a value outside a small enum),
//! and a field that is almost always present but missing.

use serde_json::json;

use crate::config::{DetectorConfig, Sensitivity};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::histogram::LogHistogram;
use crate::model::value::{
    CHAR_CLASS_NAMES, MARKER_NAMES, RISKY_CHAR_CLASSES, TypeFamily, ValueKind, bit_names,
};
use crate::model::{Location, ParamObservation, ParamProfile, ShapeProfile};

use super::context::{Judged, finding, percent};

/// One way a request departs from the learned shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    pub param: String,
    pub kind: &'static str,
    pub detail: String,
    pub severity: Severity,
}

/// Samples a parameter needs before its value profile is trusted, per sensitivity.
fn min_samples(sensitivity: Sensitivity) -> u64 {
    match sensitivity {
        Sensitivity::Low => 100,
        Sensitivity::Medium => 30,
        Sensitivity::High => 20,
    }
}

fn describe_location(obs: &ParamObservation) -> &'static str {
    match obs.location {
        Location::Path => "path parameter",
        Location::Query => "query parameter",
        Location::Body => "body field",
        Location::Header => "header",
        Location::Cookie => "cookie",
    }
}

fn short_name(obs: &ParamObservation) -> &str {
    obs.name
        .split_once('.')
        .map_or(obs.name.as_str(), |(_, rest)| rest)
}

fn family_name(kind: ValueKind) -> &'static str {
    match kind.family() {
        TypeFamily::Null => "null",
        TypeFamily::Boolean => "a boolean",
        TypeFamily::Number => "a number",
        TypeFamily::String => "a string",
        TypeFamily::Object => "an object",
        TypeFamily::Array => "an array",
    }
}

/// Judges one value against its profile; pushes deviations.
fn check_value(
    obs: &ParamObservation,
    profile: &ParamProfile,
    sensitivity: Sensitivity,
    out: &mut Vec<Deviation>,
) {
    let facts = &obs.facts;
    let samples = profile.present;
    let what = describe_location(obs);
    let name = short_name(obs);
    // Constructs: trusted after a few samples, at any sensitivity.
    if samples >= 10 {
        let new_markers = facts.markers & !profile.marker_mask(1);
        if new_markers != 0 {
            let names = bit_names(u32::from(new_markers), &MARKER_NAMES).join(", ");
            out.push(Deviation {
                param: obs.name.clone(),
                kind: "injection",
                detail: format!(
                    "{what} {name} carries a {names}, never seen in {samples} learned values"
                ),
                severity: Severity::High,
            });
        }
    }
    if samples < min_samples(sensitivity) {
        return;
    }
    let structured = matches!(
        obs.location,
        Location::Body | Location::Query | Location::Path
    );
    // Type confusion (JSON bodies carry real types; query and path values are always strings).
    if obs.location == Location::Body {
        let family = facts.kind.family();
        let seen_family: u64 = profile
            .kinds
            .iter()
            .filter(|(k, _)| k.family() == family)
            .map(|(_, c)| *c)
            .sum();
        if seen_family == 0 {
            let usual = profile
                .dominant_kind()
                .map_or("something else", family_name);
            out.push(Deviation {
                param: obs.name.clone(),
                kind: "typeConfusion",
                detail: format!(
                    "{what} {name} is {}, where all {samples} learned values were {usual}",
                    family_name(facts.kind)
                ),
                severity: Severity::Medium,
            });
            return;
        }
    }
    if sensitivity == Sensitivity::Low {
        return;
    }
    // Character classes never seen in this parameter.
    let new_chars = facts.chars & !profile.char_mask(1);
    let identifier_like = profile
        .dominant_kind()
        .is_some_and(ValueKind::is_identifier_like);
    let flagged_chars = match sensitivity {
        Sensitivity::High => new_chars,
        _ if identifier_like && structured => new_chars,
        _ => new_chars & RISKY_CHAR_CLASSES,
    };
    if flagged_chars != 0 {
        let names = bit_names(flagged_chars, &CHAR_CLASS_NAMES).join(", ");
        out.push(Deviation {
            param: obs.name.clone(),
            kind: "characters",
            detail: format!(
                "{what} {name} contains {names}, never seen in {samples} learned values"
            ),
            severity: if flagged_chars & RISKY_CHAR_CLASSES != 0 {
                Severity::High
            } else {
                Severity::Medium
            },
        });
    }
    // Oversized values.
    if !matches!(facts.kind, ValueKind::Object | ValueKind::Array)
        && let Some(max_bucket) = profile.lengths.max_bucket()
    {
        let longest = LogHistogram::length_bucket_upper(max_bucket);
        let limit = (longest.saturating_mul(2)).max(16);
        if facts.length > limit {
            out.push(Deviation {
                param: obs.name.clone(),
                kind: "oversized",
                detail: format!(
                    "{what} {name} is {} characters long; learned values are at most {longest}",
                    facts.length
                ),
                severity: Severity::Medium,
            });
        }
    }
    // Numbers: magnitude and sign.
    if let Some(number) = facts.number {
        if let Some(max_bucket) = profile.magnitudes.max_bucket() {
            let bucket = LogHistogram::magnitude_bucket(number);
            if bucket >= max_bucket + 2 {
                out.push(Deviation {
                    param: obs.name.clone(),
                    kind: "outOfRange",
                    detail: format!("{what} {name} is {number}, at least 100 times larger than any of {samples} learned values"),
                    severity: Severity::High,
                });
            }
        }
        if number < 0.0 && profile.negatives == 0 {
            out.push(Deviation {
                param: obs.name.clone(),
                kind: "outOfRange",
                detail: format!(
                    "{what} {name} is negative ({number}); none of {samples} learned values was"
                ),
                severity: Severity::High,
            });
        }
    }
    // Small enums (query and body only).
    if matches!(obs.location, Location::Body | Location::Query)
        && !obs.secret
        && !profile.values_overflow
        && !profile.values.is_empty()
        && profile.values.len() <= 3
        && samples >= 100
        && !matches!(facts.kind, ValueKind::Object | ValueKind::Array)
        && !profile.has_value(&obs.value)
    {
        out.push(Deviation {
            param: obs.name.clone(),
            kind: "enum",
            detail: enum_detail(obs, profile, what, name, samples),
            severity: Severity::Medium,
        });
    }
}

/// "body field currency is "GBP"; all 120 learned values were one of ["EUR", "USD"]", naming
/// only values that may be shown (see `model::disclosure`).
fn enum_detail(
    obs: &ParamObservation,
    profile: &ParamProfile,
    what: &str,
    name: &str,
    samples: u64,
) -> String {
    let value = if obs.may_show() {
        format!("{:?}", obs.value)
    } else {
        "a value".to_owned()
    };
    let known = profile.values.len();
    if profile.shown_values.len() == known {
        let allowed: Vec<&str> = profile.shown_values.iter().map(String::as_str).collect();
        format!("{what} {name} is {value}; all {samples} learned values were one of {allowed:?}")
    } else {
        format!("{what} {name} is {value}; all {samples} learned values were one of {known} others")
    }
}

fn check_params(
    params: &[ParamObservation],
    shape: &ShapeProfile,
    mature: bool,
    sensitivity: Sensitivity,
    requests: u64,
    out: &mut Vec<Deviation>,
) {
    for obs in params {
        match shape.params.get(obs.name.as_str()) {
            Some(profile) => check_value(obs, profile, sensitivity, out),
            None if !mature => {}
            None => {
                let what = describe_location(obs);
                let name = short_name(obs);
                match obs.location {
                    Location::Body => out.push(Deviation {
                        param: obs.name.clone(),
                        kind: "unknownField",
                        detail: format!("{what} {name} was never sent in {requests} learned requests (possible mass assignment)"),
                        severity: Severity::High,
                    }),
                    Location::Query => out.push(Deviation {
                        param: obs.name.clone(),
                        kind: "unknownField",
                        detail: format!("{what} {name} was never sent in {requests} learned requests"),
                        severity: Severity::Medium,
                    }),
                    // Clients differ in headers and cookies; a new one is suspicious only when
                    // it carries an attack construct.
                    Location::Header | Location::Cookie | Location::Path => {}
                }
                if obs.facts.markers != 0 {
                    let names = bit_names(u32::from(obs.facts.markers), &MARKER_NAMES).join(", ");
                    out.push(Deviation {
                        param: obs.name.clone(),
                        kind: "injection",
                        detail: format!("{what} {name} carries a {names}"),
                        severity: Severity::High,
                    });
                }
            }
        }
    }
}

/// Top-level body fields present in nearly every learned request but missing here.
fn check_missing(j: &Judged<'_>, requests: u64, shape: &ShapeProfile, out: &mut Vec<Deviation>) {
    let Some(serde_json::Value::Object(fields)) = j.ctx.body else {
        return;
    };
    for (name, profile) in &shape.params {
        let Some(field) = name.strip_prefix("body.") else {
            continue;
        };
        if field.contains('.') || field.contains('[') {
            continue;
        }
        // Present in at least 99.5% of the learned requests.
        if profile.present.saturating_mul(1000) < requests.saturating_mul(995) {
            continue;
        }
        if !fields.contains_key(field) {
            out.push(Deviation {
                param: name.clone(),
                kind: "missingField",
                detail: format!(
                    "body field {field} is missing; it was present in {} of {requests} learned requests",
                    percent(profile.present as f64 / requests as f64)
                ),
                severity: Severity::Low,
            });
        }
    }
}

pub fn check(j: &Judged<'_>, config: &DetectorConfig) -> Option<Finding> {
    let sensitivity = config.sensitivity;
    let min = j.learning.min_operation_requests;
    let mut deviations = Vec::new();
    if let Some(stats) = j.op_stats() {
        let mature = stats.requests >= min;
        check_params(
            &j.params.params,
            &stats.shape,
            mature,
            sensitivity,
            stats.requests,
            &mut deviations,
        );
        if mature && sensitivity != Sensitivity::Low {
            check_missing(j, stats.requests, &stats.shape, &mut deviations);
        }
    }
    let headers_mature = j.model.requests >= min;
    check_params(
        &j.params.headers,
        &j.model.headers,
        headers_mature,
        sensitivity,
        j.model.requests,
        &mut deviations,
    );
    if deviations.is_empty() {
        return None;
    }
    // Most severe first, then by parameter name: deterministic.
    deviations.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.param.cmp(&b.param))
            .then_with(|| a.kind.cmp(b.kind))
    });
    deviations.dedup_by(|a, b| a.param == b.param && a.kind == b.kind);
    let severity = deviations[0].severity;
    let mut explanation = format!("sent {} whose {}", j.template(), deviations[0].detail);
    if deviations.len() > 1 {
        explanation.push_str(&format!(
            " (and {} more deviation{})",
            deviations.len() - 1,
            if deviations.len() > 2 { "s" } else { "" }
        ));
    }
    let evidence = json!({
        "operation": j.template(),
        "deviations": deviations.iter().take(16).map(|d| json!({
            "parameter": d.param, "kind": d.kind, "detail": d.detail,
        })).collect::<Vec<_>>(),
    });
    Some(finding(
        FindingKind::ShapeDeviation,
        severity,
        config,
        explanation,
        evidence,
    ))
}
