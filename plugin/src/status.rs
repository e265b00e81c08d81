//! `kubectl ordo status`: what an ApiProtection is doing, on one screen.
//!
//! Everything comes from the resource's status as the operator writes it. Two figures are
//! derived here and are approximations, said so in the output and in docs/operations.md:
//! the open incidents by severity count the incidents the status lists (the 20 most recent
//! and most severe; `totals.openIncidents` is the exact total), and "blocked in the last
//! hour" adds the blocked requests of the listed incidents whose last request is less than
//! an hour old (the status keeps no time series).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use ordo_operator::crd::{ApiProtection, IncidentStatus, SequenceRule, Severity};
use serde::Serialize;

use crate::cli::{Output, StatusArgs};
use crate::cluster::Session;
use crate::text::{age, table, thousands};

/// The summary, also the document of `-o json|yaml`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub name: String,
    pub namespace: String,
    pub target: String,
    pub mode: String,
    pub phase: String,
    pub ready: Option<ConditionSummary>,
    pub model: ModelView,
    pub enforcers: EnforcersView,
    pub incidents: IncidentsView,
    pub blocked: BlockedView,
    pub rules: RulesView,
    /// Authentication and data posture (`status.posture`): operations that answer 2xx without
    /// credentials or return sensitive classes of values.
    pub posture: Vec<PostureView>,
    pub conditions: Vec<ConditionSummary>,
}

/// One operation of `status.posture`.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostureView {
    pub operation: String,
    /// 2xx answers learned.
    pub answers: i64,
    /// Of those, answers to requests without credentials.
    pub unauthenticated_answers: i64,
    /// Classes of sensitive values its answers carried.
    pub sensitive_classes: Vec<String>,
}

impl PostureView {
    pub fn unauthenticated(&self) -> bool {
        self.unauthenticated_answers > 0
    }

    /// `120 of 120` answers without credentials, or `–`.
    pub fn without_credentials(&self) -> String {
        if self.unauthenticated() {
            format!(
                "{} of {}",
                thousands(self.unauthenticated_answers),
                thousands(self.answers)
            )
        } else {
            "–".to_owned()
        }
    }

    /// The classes as a list, or `–`.
    pub fn classes(&self) -> String {
        if self.sensitive_classes.is_empty() {
            "–".to_owned()
        } else {
            self.sensitive_classes.join(", ")
        }
    }
}

/// The posture as the status lists it (the operator puts operations that do both first).
pub fn posture_of(protection: &ApiProtection) -> Vec<PostureView> {
    protection
        .status
        .as_ref()
        .map(|s| {
            s.posture
                .iter()
                .map(|p| PostureView {
                    operation: p.operation.clone(),
                    answers: p.answers,
                    unauthenticated_answers: p.unauthenticated_answers,
                    sensitive_classes: p.sensitive_classes.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `1 no-auth, 3 sensitive` for the list view, or `–`.
pub fn posture_brief(posture: &[PostureView]) -> String {
    if posture.is_empty() {
        return "–".to_owned();
    }
    let open = posture.iter().filter(|p| p.unauthenticated()).count();
    let sensitive = posture
        .iter()
        .filter(|p| !p.sensitive_classes.is_empty())
        .count();
    format!("{open} no-auth, {sensitive} sensitive")
}

/// `2 operations answer without credentials, 3 return sensitive values`.
pub fn posture_headline(posture: &[PostureView]) -> String {
    if posture.is_empty() {
        return "no operation learned to answer without credentials or with sensitive values"
            .to_owned();
    }
    let open = posture.iter().filter(|p| p.unauthenticated()).count();
    let sensitive = posture
        .iter()
        .filter(|p| !p.sensitive_classes.is_empty())
        .count();
    let both = posture
        .iter()
        .filter(|p| p.unauthenticated() && !p.sensitive_classes.is_empty())
        .count();
    let (operations, answer) = if open == 1 {
        ("operation", "answers")
    } else {
        ("operations", "answer")
    };
    let return_ = if sensitive == 1 { "returns" } else { "return" };
    let mut out = format!(
        "{open} {operations} {answer} without credentials, {sensitive} {return_} sensitive values"
    );
    if both > 0 {
        out.push_str(&format!(" ({both} both)"));
    }
    out
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub mature: bool,
    /// What the model still waits for (the `ModelMature` condition's message).
    pub maturity: String,
    pub requests: i64,
    pub sessions: i64,
    pub operations: i64,
    pub last_update: Option<String>,
    /// `last_update` as an age, for the table.
    #[serde(skip)]
    pub last_update_age: Option<String>,
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnforcersView {
    pub desired: i32,
    pub ready: i32,
    pub reporting: i32,
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct IncidentsView {
    /// Open incidents (exact, from `status.totals`).
    pub open: i64,
    /// Incidents opened since creation (exact).
    pub total: i64,
    /// Open incidents by severity among those the status lists.
    pub open_by_severity: BTreeMap<String, i64>,
    /// How many incidents the status lists (it keeps at most 20).
    pub listed: usize,
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlockedView {
    /// Blocked requests of the listed incidents last seen within the hour (approximate).
    pub last_hour: i64,
    pub total: i64,
    pub flagged: i64,
    pub requests: i64,
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct RulesView {
    pub declared: usize,
    pub accepted: usize,
    pub suggested: usize,
    pub important_sequences: usize,
    /// Set when the SequenceRules could not be read (RBAC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

pub async fn run(session: &Session, args: &StatusArgs, now: Timestamp) -> anyhow::Result<String> {
    let (protections, single) = match &args.name {
        Some(name) => (vec![session.protection(name).await?], true),
        None => (session.protections(args.all_namespaces).await?, false),
    };
    let mut summaries = Vec::with_capacity(protections.len());
    for protection in &protections {
        let (rules, unreadable) = match session.rules_for(protection).await {
            Ok(rules) => (rules, None),
            Err(error) => (Vec::new(), Some(format!("{error:#}"))),
        };
        summaries.push(summarize(protection, &rules, unreadable, now));
    }
    if !single && summaries.is_empty() && args.output == Output::Table {
        let where_ = if args.all_namespaces {
            "any namespace".to_owned()
        } else {
            format!("namespace \"{}\"", session.namespace)
        };
        eprintln!("No ApiProtections found in {where_}.");
        return Ok(String::new());
    }
    Ok(match (args.output, single) {
        (Output::Table, true) => render(&summaries[0]),
        (Output::Table, false) => render_list(&summaries, args.all_namespaces),
        (Output::Json, true) => serde_json::to_string_pretty(&summaries[0])? + "\n",
        (Output::Json, false) => serde_json::to_string_pretty(&summaries)? + "\n",
        (Output::Yaml, true) => serde_yaml_ng::to_string(&summaries[0])?,
        (Output::Yaml, false) => serde_yaml_ng::to_string(&summaries)?,
    })
}

/// Whether an incident counts as "within the last hour" of `now`.
pub fn within(incident: &IncidentStatus, now: Timestamp, seconds: i64) -> bool {
    now.as_second() - incident.last_seen.0.as_second() <= seconds
}

pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "Low",
        Severity::Medium => "Medium",
        Severity::High => "High",
        Severity::Critical => "Critical",
    }
}

pub fn summarize(
    protection: &ApiProtection,
    rules: &[SequenceRule],
    unreadable: Option<String>,
    now: Timestamp,
) -> Summary {
    let status = protection.status.clone().unwrap_or_default();
    let conditions: Vec<ConditionSummary> = status
        .conditions
        .iter()
        .map(|c| ConditionSummary {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_).cloned();
    let model = status.model.clone().unwrap_or_default();
    let maturity = match condition("ModelMature") {
        Some(c) if !c.message.is_empty() => c.message,
        _ if model.mature => "mature".to_owned(),
        _ => "learning".to_owned(),
    };
    let mut open_by_severity = BTreeMap::new();
    for incident in status.incidents.iter().filter(|i| i.open) {
        *open_by_severity
            .entry(severity_name(incident.severity).to_owned())
            .or_insert(0) += 1;
    }
    let totals = status.totals.unwrap_or_default();
    let last_hour = status
        .incidents
        .iter()
        .filter(|i| within(i, now, 3600))
        .map(|i| i.blocked)
        .sum();
    let accepted = rules
        .iter()
        .filter(|rule| {
            rule.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
        })
        .count();
    let enforcers = status.enforcers.unwrap_or_default();
    Summary {
        name: protection.name_any(),
        namespace: protection.namespace().unwrap_or_default(),
        target: format!(
            "Service {} port {}",
            protection.spec.target.service,
            match &protection.spec.target.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
            }
        ),
        mode: format!("{:?}", protection.spec.mode),
        phase: status
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Unknown".to_owned()),
        ready: condition("Ready"),
        model: ModelView {
            mature: model.mature,
            maturity,
            requests: model.requests,
            sessions: model.sessions,
            operations: i64::from(model.endpoints),
            last_update: model.last_update.as_ref().map(|t| t.0.to_string()),
            last_update_age: model.last_update.map(|t| age(Some(t.0), now)),
        },
        enforcers: EnforcersView {
            desired: enforcers.desired,
            ready: enforcers.ready,
            reporting: enforcers.reporting,
        },
        incidents: IncidentsView {
            open: totals.open_incidents,
            total: totals.incidents,
            open_by_severity,
            listed: status.incidents.len(),
        },
        blocked: BlockedView {
            last_hour,
            total: totals.blocked,
            flagged: totals.flagged,
            requests: totals.requests,
        },
        rules: RulesView {
            declared: rules.len(),
            accepted,
            suggested: crate::suggest::suggestions(protection, rules).0.len(),
            important_sequences: status.top_sequences.len(),
            unreadable,
        },
        posture: posture_of(protection),
        conditions,
    }
}

/// `Critical 1, High 2` (most severe first), or `none`.
pub fn by_severity(counts: &BTreeMap<String, i64>) -> String {
    let order = ["Critical", "High", "Medium", "Low"];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            counts
                .get(*s)
                .filter(|n| **n > 0)
                .map(|n| format!("{s} {n}"))
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The one-screen summary of one ApiProtection.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<12} {value}\n"));
    };
    line("Name:", format!("{} (namespace {})", s.name, s.namespace));
    line("Target:", s.target.clone());
    line("Mode:", s.mode.clone());
    let ready = match &s.ready {
        Some(c) if c.status == "True" => "Ready".to_owned(),
        Some(c) => format!("not ready: {} {}", c.reason, c.message),
        None => "no Ready condition yet".to_owned(),
    };
    line("Phase:", format!("{} ({ready})", s.phase));
    line(
        "Model:",
        format!(
            "{} — {} requests, {} sessions, {} operations{}",
            if s.model.mature { "mature" } else { "learning" },
            thousands(s.model.requests),
            thousands(s.model.sessions),
            s.model.operations,
            s.model
                .last_update_age
                .as_ref()
                .map(|t| format!(", updated {t} ago"))
                .unwrap_or_default()
        ),
    );
    // What the model still waits for (the ModelMature condition); once mature it only
    // repeats the figures above.
    if !s.model.mature && s.model.maturity != "learning" {
        line("", format!("({})", s.model.maturity));
    }
    line(
        "Enforcers:",
        format!(
            "{}/{} ready, {} reporting",
            s.enforcers.ready, s.enforcers.desired, s.enforcers.reporting
        ),
    );
    let listed_note = if s.incidents.open > s.incidents.listed as i64 {
        format!(
            " (by severity among the {} the status lists)",
            s.incidents.listed
        )
    } else {
        String::new()
    };
    line(
        "Incidents:",
        format!(
            "{} open: {}{listed_note}; {} since creation",
            s.incidents.open,
            by_severity(&s.incidents.open_by_severity),
            s.incidents.total
        ),
    );
    line(
        "Blocked:",
        format!(
            "~{} in the last hour (from the listed incidents); {} of {} requests since creation, {} flagged",
            thousands(s.blocked.last_hour),
            thousands(s.blocked.total),
            thousands(s.blocked.requests),
            thousands(s.blocked.flagged)
        ),
    );
    let rules = match &s.rules.unreadable {
        Some(error) => format!("declared rules not readable: {error}"),
        None => format!(
            "{} declared ({} accepted), {} suggested (kubectl ordo suggest {})",
            s.rules.declared, s.rules.accepted, s.rules.suggested, s.name
        ),
    };
    line("Rules:", rules);
    line(
        "Sequences:",
        format!(
            "{} important learned sequences (kubectl ordo graph {})",
            s.rules.important_sequences, s.name
        ),
    );
    line("Posture:", posture_headline(&s.posture));
    if !s.posture.is_empty() {
        let rows: Vec<Vec<String>> = s
            .posture
            .iter()
            .map(|p| vec![p.operation.clone(), p.without_credentials(), p.classes()])
            .collect();
        let listed = table(
            &["OPERATION", "WITHOUT CREDENTIALS", "SENSITIVE VALUES"],
            &rows,
        );
        for row in listed.lines() {
            out.push_str(&format!("  {row}\n"));
        }
    }
    if !s.conditions.is_empty() {
        out.push_str("Conditions:\n");
        for c in &s.conditions {
            let detail = if c.message.is_empty() {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            };
            out.push_str(&format!("  {:<18} {:<6} {}\n", c.type_, c.status, detail));
        }
    }
    out
}

/// One line per ApiProtection.
pub fn render_list(summaries: &[Summary], all_namespaces: bool) -> String {
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME",
        "MODE",
        "PHASE",
        "MODEL",
        "ENFORCERS",
        "OPEN INCIDENTS",
        "BLOCKED (1H)",
        "POSTURE",
    ]);
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let mut row = vec![];
            if all_namespaces {
                row.push(s.namespace.clone());
            }
            row.extend([
                s.name.clone(),
                s.mode.clone(),
                s.phase.clone(),
                if s.model.mature { "mature" } else { "learning" }.to_owned(),
                format!("{}/{}", s.enforcers.ready, s.enforcers.desired),
                format!(
                    "{} ({})",
                    s.incidents.open,
                    by_severity(&s.incidents.open_by_severity)
                ),
                format!("~{}", s.blocked.last_hour),
                posture_brief(&s.posture),
            ]);
            row
        })
        .collect();
    table(&header, &rows)
}

/// Sort key of incidents: most severe first, then most recent.
pub fn incident_order(a: &IncidentStatus, b: &IncidentStatus) -> std::cmp::Ordering {
    b.severity
        .cmp(&a.severity)
        .then_with(|| b.last_seen.0.cmp(&a.last_seen.0))
        .then_with(|| a.id.cmp(&b.id))
}

/// Uses `age` so the list view and the report agree on how times read.
pub fn last_seen_age(incident: &IncidentStatus, now: Timestamp) -> String {
    age(Some(incident.last_seen.0), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_operator::crd::ApiProtectionSpec;

    fn protection(status: serde_json::Value) -> ApiProtection {
        let spec: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": { "service": "api", "port": "http" }
        }))
        .unwrap();
        let mut p = ApiProtection::new("api", spec);
        p.metadata.namespace = Some("team".into());
        p.status = Some(serde_json::from_value(status).unwrap());
        p
    }

    fn at(now: Timestamp, ago: i64) -> String {
        Timestamp::from_second(now.as_second() - ago)
            .unwrap()
            .to_string()
    }

    fn incident(
        now: Timestamp,
        id: &str,
        severity: &str,
        open: bool,
        ago: i64,
        blocked: i64,
    ) -> serde_json::Value {
        serde_json::json!({
            "id": id, "severity": severity, "open": open, "session": "s", "client": "c",
            "kinds": ["Volume"], "operations": ["GET /a"], "requests": blocked, "blocked": blocked,
            "firstSeen": at(now, ago + 60), "lastSeen": at(now, ago), "summary": "x",
        })
    }

    #[test]
    fn learning_model_says_what_it_waits_for_and_hour_counts_recent_incidents() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let p = protection(serde_json::json!({
            "phase": "Learning",
            "conditions": [{ "type": "ModelMature", "status": "False", "reason": "Learning",
                "message": "waiting for 300 more sessions", "lastTransitionTime": at(now, 10) }],
            "model": { "requests": 10, "sessions": 2, "endpoints": 1, "mature": false },
            "incidents": [
                incident(now, "a", "High", true, 600, 7),
                incident(now, "b", "High", true, 3500, 5),
                incident(now, "c", "Low", false, 3700, 100),
                incident(now, "d", "Critical", true, 7200, 1),
            ],
            "totals": { "requests": 10, "flagged": 1, "blocked": 113, "incidents": 30, "openIncidents": 25 },
        }));
        let s = summarize(&p, &[], None, now);
        assert_eq!(s.blocked.last_hour, 12, "a and b only");
        assert_eq!(
            by_severity(&s.incidents.open_by_severity),
            "Critical 1, High 2"
        );
        assert_eq!(s.target, "Service api port http");
        let text = render(&s);
        assert!(text.contains("learning — 10 requests"), "{text}");
        assert!(text.contains("(waiting for 300 more sessions)"), "{text}");
        assert!(
            text.contains("25 open: Critical 1, High 2 (by severity among the 4 the status lists)"),
            "{text}"
        );
        let list = render_list(&[s], false);
        assert!(list.starts_with("NAME"), "{list}");
        assert!(list.contains("25 (Critical 1, High 2)"), "{list}");
    }

    #[test]
    fn the_posture_lists_operations_open_without_credentials_and_sensitive_ones() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let p = protection(serde_json::json!({
            "posture": [
                { "operation": "GET /users/_debug", "answers": 40, "unauthenticatedAnswers": 40,
                  "sensitiveClasses": ["password", "email"] },
                { "operation": "POST /login", "answers": 1200, "unauthenticatedAnswers": 1200,
                  "sensitiveClasses": ["token"] },
                { "operation": "GET /catalog", "answers": 5000, "unauthenticatedAnswers": 4100 },
                { "operation": "GET /profile", "answers": 900, "unauthenticatedAnswers": 0,
                  "sensitiveClasses": ["email", "phone"] },
            ],
        }));
        let s = summarize(&p, &[], None, now);
        assert_eq!(s.posture.len(), 4);
        let text = render(&s);
        assert!(
            text.contains(
                "Posture:     3 operations answer without credentials, 3 return sensitive values (2 both)"
            ),
            "{text}"
        );
        let row = |op: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(op))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            row("GET /users/_debug"),
            "GET /users/_debug 40 of 40 password, email"
        );
        assert_eq!(row("POST /login"), "POST /login 1,200 of 1,200 token");
        assert_eq!(row("GET /catalog"), "GET /catalog 4,100 of 5,000 –");
        assert_eq!(row("GET /profile"), "GET /profile – email, phone");
        // In the status's order (the operator puts what does both first).
        let debug = text.find("GET /users/_debug").unwrap_or(usize::MAX);
        let profile = text.find("GET /profile").unwrap_or(0);
        assert!(debug < profile, "{text}");
        let list = render_list(std::slice::from_ref(&s), false);
        assert!(list.contains("3 no-auth, 3 sensitive"), "{list}");
        // The JSON document carries the figures.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["posture"][1]["unauthenticatedAnswers"], 1200);
        assert_eq!(json["posture"][3]["sensitiveClasses"][1], "phone");
    }

    #[test]
    fn a_status_not_yet_written_reads_as_unknown() {
        let spec: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": { "service": "api", "port": 80 }
        }))
        .unwrap();
        let p = ApiProtection::new("api", spec);
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let s = summarize(&p, &[], None, now);
        assert_eq!(s.phase, "Unknown");
        let text = render(&s);
        assert!(text.contains("no Ready condition yet"), "{text}");
        assert!(text.contains("0 open: none"), "{text}");
        assert!(
            text.contains("Posture:     no operation learned to answer without credentials"),
            "{text}"
        );
    }
}
