//! Request-shape deviation: a parameter the operation never had (mass assignment), a value of
//! a type the parameter never had (type confusion), a value outside the learned profile
//! (injection constructs, character classes never seen, oversized values, magnitudes far
//! beyond the learned range, negatives where none were seen, a value outside a small enum),
//! and a field that is almost always present but missing.

use serde_json::json;

use crate::config::{DetectorConfig, Sensitivity};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::format::ValueFormat;
use crate::model::histogram::LogHistogram;
use crate::model::sequence::upper_bound_reaches;
use crate::model::value::{
    CHAR_CLASS_NAMES, MARKER_NAMES, RISKY_CHAR_CLASSES, TypeFamily, ValueKind, bit_names,
};
use crate::model::{Location, ParamObservation, ParamProfile, ShapeProfile};

use super::context::{Judged, finding, percent};
use super::kindred;

/// One way a request departs from the learned shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    pub param: String,
    pub kind: &'static str,
    pub detail: String,
    pub severity: Severity,
}

/// Learned values without a construct before a construct in a parameter is a deviation.
pub const MIN_MARKER_SAMPLES: u64 = 10;

/// Samples a parameter needs before its value profile is trusted, per sensitivity.
pub fn min_samples(sensitivity: Sensitivity) -> u64 {
    match sensitivity {
        Sensitivity::Low => 100,
        Sensitivity::Medium => 30,
        Sensitivity::High => 20,
    }
}

pub fn describe_location(obs: &ParamObservation) -> &'static str {
    match obs.location {
        Location::Path => "path parameter",
        Location::Query => "query parameter",
        Location::Body => "body field",
        Location::Header => "header",
        Location::Cookie => "cookie",
    }
}

pub fn short_name(obs: &ParamObservation) -> &str {
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
    if samples >= MIN_MARKER_SAMPLES {
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
    // The parameter's format, once nearly every learned value followed one: a value that
    // breaks it is a deviation (judged in the request's own fields, not in headers and cookies,
    // where clients differ); inside it, what varies freely is not judged by character class.
    let format = established_format(profile, sensitivity);
    let mut free_chars = 0;
    if let Some(established) = &format
        && !facts.formats.is_empty()
    {
        if facts.formats.contains(established.format) {
            free_chars = established.format.alphabet();
        } else if structured && !obs.secret {
            // (A secret's content is arbitrary by design: a password is judged by type only.)
            out.push(Deviation {
                param: obs.name.clone(),
                kind: "format",
                detail: format!(
                    "{what} {name} is not {} (a {}-character {}), where {} of {} learned values were",
                    with_article(established.format.as_str()),
                    facts.length,
                    facts
                        .formats
                        .most_specific()
                        .map_or("value", ValueFormat::as_str),
                    established.followed,
                    established.values,
                ),
                severity: Severity::Medium,
            });
        }
    }
    if sensitivity == Sensitivity::Low {
        return;
    }
    // Character classes never seen in this parameter (those a followed format lets vary
    // freely aside).
    let new_chars = facts.chars & !profile.char_mask(1) & !free_chars;
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

/// A parameter's established format: the most specific format that nearly every learned
/// text value followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstablishedFormat {
    pub format: ValueFormat,
    /// Learned text values, and how many of them followed the format.
    pub values: u64,
    pub followed: u64,
}

/// Credibility and limit on the share of learned values that broke a format, per sensitivity:
/// a format is established when the upper credible bound of that share is below the limit
/// (a parameter whose 40 learned values all followed it, at Medium; about 330 at Low; 22 at
/// High). The same order of evidence as a character class never seen in 30 values.
pub fn format_bounds(sensitivity: Sensitivity) -> (f64, f64) {
    match sensitivity {
        Sensitivity::Low => (0.99, 0.01),
        Sensitivity::Medium => (0.95, 0.05),
        Sensitivity::High => (0.90, 0.10),
    }
}

/// The format `profile`'s learned text values establish at `sensitivity`, if any (free text
/// never counts: every value follows it).
pub fn established_format(
    profile: &ParamProfile,
    sensitivity: Sensitivity,
) -> Option<EstablishedFormat> {
    let values = profile.text_values();
    if values < min_samples(sensitivity) {
        return None;
    }
    let (credibility, limit) = format_bounds(sensitivity);
    ValueFormat::ALL
        .into_iter()
        .filter(|f| *f != ValueFormat::Text)
        .find_map(|format| {
            let followed = profile.format_count(format).min(values);
            // The bound is never below the share itself: skip the numerics when that alone is
            // over the limit (this runs for every parameter of every request).
            if (values - followed) as f64 >= limit * values as f64 {
                return None;
            }
            (!upper_bound_reaches(values - followed, values, credibility, limit)).then_some(
                EstablishedFormat {
                    format,
                    values,
                    followed,
                },
            )
        })
}

/// "an e-mail address", "a slug", "free text" (uncountable).
pub fn with_article(noun: &str) -> String {
    if noun == "free text" || noun == "words" {
        return noun.to_owned();
    }
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
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
    let stats = j.op_stats();
    if let Some(stats) = stats {
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
    // Values whose own parameter learned too little, judged with what the rest of the API
    // taught (see `detect::kindred`).
    kindred::check_params(
        &j.params.params,
        stats.map(|s| &s.shape),
        j.model,
        sensitivity,
        &mut deviations,
    );
    if stats.is_none_or(|s| s.requests < j.learning.min_endpoint_requests) {
        kindred::check_literal_segments(j.template(), j.model, &mut deviations);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ShapeCaps;
    use crate::model::value::{json_facts, text_facts};

    const CAPS: ShapeCaps = ShapeCaps {
        max_params: 64,
        max_enum_values: 16,
        max_enum_value_len: 64,
    };

    fn obs(name: &str, location: Location, value: &str) -> ParamObservation {
        ParamObservation::new(
            name.into(),
            location,
            text_facts(value),
            value.into(),
            false,
        )
    }

    fn learned(name: &str, location: Location, values: &[String]) -> ParamProfile {
        let mut p = ParamProfile::default();
        for (i, v) in values.iter().enumerate() {
            p.learn(&obs(name, location, v), &CAPS, i as u64);
        }
        p
    }

    fn deviations(
        name: &str,
        location: Location,
        profile: &ParamProfile,
        value: &str,
    ) -> Vec<&'static str> {
        let mut out = Vec::new();
        check_value(
            &obs(name, location, value),
            profile,
            Sensitivity::Medium,
            &mut out,
        );
        out.iter().map(|d| d.kind).collect()
    }

    const FIRST: [&str; 8] = [
        "maria", "jonas", "lea", "paul", "emma", "felix", "mia", "noah",
    ];
    const LAST: [&str; 6] = ["keller", "huber", "fuchs", "meier", "kaiser", "roth"];

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{}.{}", FIRST[i % 8], LAST[(i / 8) % 6]))
            .collect()
    }

    #[test]
    fn email_format_lets_digits_vary_and_flags_a_missing_at() {
        let emails: Vec<String> = names(48)
            .iter()
            .map(|n| format!("{n}@mail.example.org"))
            .collect();
        let p = learned("body.email", Location::Body, &emails);
        let established = established_format(&p, Sensitivity::Medium).unwrap();
        assert_eq!(established.format, ValueFormat::Email);
        assert_eq!((established.values, established.followed), (48, 48));
        // A digit never seen in 48 addresses is ordinary e-mail variation.
        assert!(
            deviations(
                "body.email",
                Location::Body,
                &p,
                "ada.roth7@mail.example.org"
            )
            .is_empty()
        );
        // An address without '@' breaks the format.
        assert_eq!(
            deviations(
                "body.email",
                Location::Body,
                &p,
                "ada.roth.mail.example.org"
            ),
            ["format"]
        );
        // In a header (clients differ) the format is not judged.
        let h = learned("header.x-contact", Location::Header, &emails);
        assert!(
            deviations("header.x-contact", Location::Header, &h, "ada.roth.example").is_empty()
        );
    }

    #[test]
    fn phone_and_slug_formats() {
        let phones: Vec<String> = (0..40)
            .map(|i| format!("+3161{:07}", 1_000_000 + i * 13))
            .collect();
        let p = learned("body.phone", Location::Body, &phones);
        assert_eq!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Phone)
        );
        // (Also longer than any learned number, and with classes no phone number had.)
        assert!(
            deviations(
                "body.phone",
                Location::Body,
                &p,
                "call me maybe, any time after six"
            )
            .contains(&"format")
        );
        assert!(deviations("body.phone", Location::Body, &p, "+31 6 1234 5678").is_empty());

        let p = learned("path.var1", Location::Path, &names(48));
        assert_eq!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Slug)
        );
        // A digit or an underscore inside a slug is variation; a space breaks it.
        assert!(deviations("path.var1", Location::Path, &p, "ada_roth2").is_empty());
        assert_eq!(
            deviations("path.var1", Location::Path, &p, "ada roth"),
            ["format"]
        );
    }

    #[test]
    fn dates_uuids_and_numeric_strings() {
        let dates: Vec<String> = (0..40)
            .map(|i| format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28))
            .collect();
        let p = learned("query.from", Location::Query, &dates);
        assert_eq!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Date)
        );
        assert_eq!(
            deviations("query.from", Location::Query, &p, "yesterday"),
            ["format", "characters"]
        );
        let ids: Vec<String> = (0..40u64)
            .map(|i| {
                let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    h >> 32,
                    (h >> 16) & 0xffff,
                    h & 0xffff,
                    (h >> 48) & 0xffff,
                    h & 0xffff_ffff_ffff
                )
            })
            .collect();
        let p = learned("path.var1", Location::Path, &ids);
        assert_eq!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Uuid)
        );
        assert_eq!(
            deviations("path.var1", Location::Path, &p, "deadbeef"),
            ["format"]
        );
        let numbers: Vec<String> = (0..40).map(|i| format!("{}", 500_000 + i * 7)).collect();
        let p = learned("query.order", Location::Query, &numbers);
        assert_eq!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Numeric)
        );
    }

    #[test]
    fn a_format_needs_credible_support() {
        // Too few values.
        let few: Vec<String> = names(12)
            .iter()
            .map(|n| format!("{n}@mail.example.org"))
            .collect();
        let p = learned("body.email", Location::Body, &few);
        assert_eq!(established_format(&p, Sensitivity::Medium), None);
        assert!(deviations("body.email", Location::Body, &p, "no-at-sign").is_empty());
        // A field where one value in eight is not an address (a login that takes a name or an
        // e-mail address) has no e-mail format: names are not refused.
        let mixed: Vec<String> = names(96)
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i % 8 == 0 {
                    n.clone()
                } else {
                    format!("{n}@mail.example.org")
                }
            })
            .collect();
        let p = learned("body.login", Location::Body, &mixed);
        assert_ne!(
            established_format(&p, Sensitivity::Medium).map(|e| e.format),
            Some(ValueFormat::Email)
        );
        assert!(deviations("body.login", Location::Body, &p, "ada.roth").is_empty());
        // Free text establishes nothing to break.
        let prose: Vec<String> = (0..60)
            .map(|i| format!("note {i}: it's <b>fine</b> & {{ok}}"))
            .collect();
        let p = learned("body.note", Location::Body, &prose);
        assert_eq!(established_format(&p, Sensitivity::Medium), None);
    }

    #[test]
    fn oversized_values_break_the_length_profile() {
        let p = learned("path.var1", Location::Path, &names(48));
        assert_eq!(
            deviations("path.var1", Location::Path, &p, &"a".repeat(5000)),
            ["oversized"]
        );
    }

    #[test]
    fn models_without_formats_judge_as_before() {
        let emails: Vec<String> = names(48)
            .iter()
            .map(|n| format!("{n}@mail.example.org"))
            .collect();
        let mut p = learned("body.email", Location::Body, &emails);
        p.formats.clear();
        assert_eq!(established_format(&p, Sensitivity::Medium), None);
        // Without a format the character classes decide, as they did.
        assert_eq!(
            deviations(
                "body.email",
                Location::Body,
                &p,
                "ada.roth7@mail.example.org"
            ),
            ["characters"]
        );
        // Numbers have no text format.
        assert!(json_facts(&serde_json::json!(12)).formats.is_empty());
    }
}
