//! The report-derived part of an ApiProtection's status, computed from the merged model and
//! the aggregated report state: bounded lists a human can read in `kubectl get -o yaml`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ordo_enforcer::model::{LearnedModel, SESSION_START};
use ordo_enforcer::report::IncidentReport;

use super::incidents::merge_across_replicas;
use crate::crd::limits::MAX_STATUS_POSTURE;
use crate::crd::{
    Confidence, EndpointStatus, IncidentStatus, ModelSummary, PostureStatus, SequenceStatus,
    Severity, SuggestedRule, Totals,
};
use crate::reports::state::{PersistedState, truncate};

/// Endpoints listed in status (highest volume first).
pub const STATUS_ENDPOINTS: usize = 50;
/// Sequences listed in status.
pub const STATUS_SEQUENCES: usize = 10;
/// Suggested rules listed in status.
pub const STATUS_SUGGESTED_RULES: usize = 5;
/// Incidents listed in status: the most recent, then the most severe of the rest.
pub const STATUS_RECENT_INCIDENTS: usize = 10;
pub const STATUS_SEVERE_INCIDENTS: usize = 10;
/// An incident with no new finding for this long is closed (the enforcer's default
/// inactivity window).
pub const INCIDENT_OPEN_MS: u64 = 15 * 60 * 1000;
/// Sequences need this many occurrences to be listed.
const MIN_SEQUENCE_COUNT: u64 = 5;
/// Credibility of the intervals used to rank sequences.
const CREDIBILITY: f64 = 0.95;

/// Everything in status that comes from reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportPart {
    pub model: Option<ModelSummary>,
    pub endpoints: Vec<EndpointStatus>,
    pub posture: Vec<PostureStatus>,
    pub top_sequences: Vec<SequenceStatus>,
    pub suggested_rules: Vec<SuggestedRule>,
    pub incidents: Vec<IncidentStatus>,
    pub totals: Option<Totals>,
    /// Enforcer instances that reported recently.
    pub reporting: i32,
    /// Whether the model passed the maturity thresholds.
    pub mature: bool,
}

/// Maturity thresholds from `spec.learning`.
#[derive(Debug, Clone, Copy)]
pub struct Maturity {
    pub min_requests: u64,
    pub min_sessions: u64,
}

fn time_ms(ms: u64) -> Time {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Suggested per-session limit per 10-minute window from the volume percentiles: 1.5 × p99,
/// and at least p99 + 3 (so that small APIs do not get a limit at their own p99).
pub fn suggested_limit(p99: u32) -> u32 {
    (p99.saturating_mul(3) / 2).max(p99.saturating_add(3))
}

fn confidence(windows: u64) -> Confidence {
    match windows {
        0..30 => Confidence::Low,
        30..300 => Confidence::Medium,
        _ => Confidence::High,
    }
}

fn op_name(model: &LearnedModel, op: u16) -> Option<String> {
    (op != SESSION_START).then(|| model.template_of(op).to_owned())
}

/// The ApiProtection a status is built for: suggested rules name it, so they apply as they are.
pub struct ProtectionRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Builds the report part of the status.
pub fn report_part(
    protection: &ProtectionRef<'_>,
    model: &LearnedModel,
    state: &PersistedState,
    maturity: Maturity,
    now_ms: u64,
    reporting_window: std::time::Duration,
) -> ReportPart {
    let mature = model.requests >= maturity.min_requests && model.sessions >= maturity.min_sessions;
    let model_summary = ModelSummary {
        requests: saturating_i64(model.requests),
        sessions: saturating_i64(model.sessions),
        endpoints: i32::try_from(model.operations.len()).unwrap_or(i32::MAX),
        last_update: (state.model_updated_ms > 0).then(|| time_ms(state.model_updated_ms)),
        mature,
    };
    let mut ops: Vec<_> = model
        .operations
        .iter()
        .filter(|op| op.requests > 0)
        .collect();
    ops.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.template.cmp(&b.template))
    });
    let endpoints = ops
        .into_iter()
        .take(STATUS_ENDPOINTS)
        .map(|op| {
            let p99 = op.volume.quantile(0.99);
            let windows = op.volume.windows();
            EndpointStatus {
                operation: truncate(&op.template, 500),
                requests: saturating_i64(op.requests),
                p50: i64::from(op.volume.quantile(0.5)),
                p90: i64::from(op.volume.quantile(0.9)),
                p99: i64::from(p99),
                suggested_limit: (windows > 0).then(|| i64::from(suggested_limit(p99))),
                confidence: confidence(windows),
            }
        })
        .collect();
    let important =
        model
            .sequences
            .important_sequences(MIN_SEQUENCE_COUNT, CREDIBILITY, STATUS_SEQUENCES * 3);
    let mut top_sequences = Vec::new();
    for seq in &important {
        let operations: Vec<String> = seq
            .ops
            .iter()
            .filter_map(|op| op_name(model, *op))
            .collect();
        if operations.len() < 2 {
            continue;
        }
        if top_sequences.len() < STATUS_SEQUENCES {
            top_sequences.push(SequenceStatus {
                operations: operations.iter().map(|o| truncate(o, 500)).collect(),
                precedence: (seq.precedence * 1000.0).round() / 1000.0,
                count: saturating_i64(seq.count),
            });
        }
    }
    let suggested_rules = suggested_rules(protection, model);
    // One session's incidents from several replicas are one incident to a reader.
    let merged = merge_across_replicas(&state.incidents.values().collect::<Vec<_>>());
    let incidents = status_incidents(&merged.iter().collect::<Vec<_>>(), now_ms);
    let counters = state.totals();
    let open = merged
        .iter()
        .filter(|i| now_ms.saturating_sub(i.last_seen_ms) <= INCIDENT_OPEN_MS)
        .count();
    let totals = Totals {
        requests: saturating_i64(counters.requests),
        flagged: saturating_i64(counters.flagged),
        blocked: saturating_i64(counters.blocked),
        incidents: saturating_i64(state.incidents_seen),
        open_incidents: saturating_i64(open as u64),
    };
    let posture = ordo_enforcer::model::exposure::posture(model, MAX_STATUS_POSTURE as usize)
        .into_iter()
        .map(|p| PostureStatus {
            operation: truncate(&p.operation, 500),
            answers: saturating_i64(p.answers),
            unauthenticated_answers: saturating_i64(p.anonymous_answers),
            sensitive_classes: p.sensitive_classes.into_keys().collect(),
        })
        .collect();
    ReportPart {
        model: Some(model_summary),
        endpoints,
        posture,
        top_sequences,
        suggested_rules,
        incidents,
        totals: Some(totals),
        reporting: i32::try_from(state.reporting(now_ms, reporting_window)).unwrap_or(i32::MAX),
        mature,
    }
}

/// The suggested `requires` rules of the status: the enforcer's own suggestions (the same
/// algorithm as its `GET /v1/model`) on the merged model, naming this ApiProtection and its
/// namespace so that the YAML applies as it is.
fn suggested_rules(protection: &ProtectionRef<'_>, model: &LearnedModel) -> Vec<SuggestedRule> {
    ordo_enforcer::detect::suggested_rules_in(
        model,
        Some(protection.name),
        Some(protection.namespace),
    )
    .into_iter()
    .take(STATUS_SUGGESTED_RULES)
    .map(|rule| SuggestedRule {
        name: truncate(&rule.name, 200),
        reason: truncate(
            &format!(
                "{} came right after {} in {:.1}% of {} observed cases",
                rule.operation,
                rule.after.join(" then "),
                rule.precedence * 100.0,
                rule.count
            ),
            1000,
        ),
        yaml: truncate(&rule.yaml, 4000),
    })
    .collect()
}

fn severity(text: &str) -> Severity {
    match ordo_enforcer::report::protocol::severity_rank(text) {
        4 => Severity::Critical,
        3 => Severity::High,
        2 => Severity::Medium,
        _ => Severity::Low,
    }
}

/// The most recent incidents, then the most severe of the rest, newest first.
fn status_incidents(all: &[&IncidentReport], now_ms: u64) -> Vec<IncidentStatus> {
    let mut by_recent: Vec<&IncidentReport> = all.to_vec();
    by_recent.sort_by(|a, b| {
        b.last_seen_ms
            .cmp(&a.last_seen_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut chosen: Vec<&IncidentReport> = by_recent
        .iter()
        .take(STATUS_RECENT_INCIDENTS)
        .copied()
        .collect();
    let mut by_severity: Vec<&IncidentReport> = by_recent
        .iter()
        .skip(STATUS_RECENT_INCIDENTS)
        .copied()
        .collect();
    by_severity.sort_by(|a, b| {
        b.severity_rank()
            .cmp(&a.severity_rank())
            .then_with(|| b.last_seen_ms.cmp(&a.last_seen_ms))
    });
    chosen.extend(by_severity.into_iter().take(STATUS_SEVERE_INCIDENTS));
    chosen.sort_by(|a, b| {
        b.last_seen_ms
            .cmp(&a.last_seen_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    chosen
        .into_iter()
        .map(|i| IncidentStatus {
            id: truncate(&i.id, 120),
            severity: severity(&i.severity),
            open: now_ms.saturating_sub(i.last_seen_ms) <= INCIDENT_OPEN_MS,
            session: truncate(&i.session, 250),
            client: truncate(&i.client, 60),
            kinds: i.kinds.iter().take(9).map(|k| truncate(k, 60)).collect(),
            operations: i
                .operations
                .iter()
                .take(10)
                .map(|o| truncate(o, 500))
                .collect(),
            requests: saturating_i64(i.requests),
            flagged: saturating_i64(i.flagged),
            blocked: saturating_i64(i.blocked),
            first_seen: time_ms(i.first_seen_ms),
            last_seen: time_ms(i.last_seen_ms),
            summary: truncate(&i.summary, 4000),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_limit_accounts_for_small_values() {
        assert_eq!(suggested_limit(0), 3);
        assert_eq!(suggested_limit(4), 7);
        assert_eq!(suggested_limit(40), 60);
    }

    #[test]
    fn incidents_keep_recent_and_severe() {
        let make = |i: u64, sev: &str| IncidentReport {
            id: format!("inc-{i:03}"),
            severity: sev.into(),
            last_seen_ms: i,
            ..IncidentReport::default()
        };
        let mut all: Vec<IncidentReport> = (0..30).map(|i| make(i, "low")).collect();
        all.push(make(1000, "medium"));
        all[0].severity = "critical".into();
        let refs: Vec<&IncidentReport> = all.iter().collect();
        let shown = status_incidents(&refs, 2000);
        assert_eq!(
            shown.len(),
            STATUS_RECENT_INCIDENTS + STATUS_SEVERE_INCIDENTS
        );
        assert_eq!(shown[0].id, "inc-1000");
        assert!(
            shown
                .iter()
                .any(|i| i.id == "inc-000" && i.severity == Severity::Critical)
        );
        assert!(shown.windows(2).all(|w| w[0].last_seen >= w[1].last_seen));
    }

    #[test]
    fn a_burst_of_low_findings_never_pushes_severe_incidents_out() {
        let make = |i: u64, sev: &str| IncidentReport {
            id: format!("inc-{i:03}"),
            severity: sev.into(),
            last_seen_ms: i,
            ..IncidentReport::default()
        };
        // 12 old rule incidents (2 critical, 10 high), then 50 newer low-severity findings.
        let mut all: Vec<IncidentReport> = (0..12)
            .map(|i| make(i, if i < 2 { "critical" } else { "high" }))
            .collect();
        all.extend((100..150).map(|i| make(i, "low")));
        let refs: Vec<&IncidentReport> = all.iter().collect();
        let shown: Vec<String> = status_incidents(&refs, 1000)
            .into_iter()
            .map(|i| i.id)
            .collect();
        // Newest first: the 10 most recent, then the most severe of the rest (both critical
        // and the 8 newest high ones).
        let recent = (140..150).rev().map(|i| format!("inc-{i:03}"));
        let severe = (4..12).rev().chain([1, 0]).map(|i| format!("inc-{i:03}"));
        let expected: Vec<String> = recent.chain(severe).collect();
        assert_eq!(shown, expected);
    }

    #[test]
    fn suggested_rules_are_the_enforcers_with_protection_and_namespace() {
        use ordo_enforcer::model::ModelCaps;
        let mut model = LearnedModel::new(ModelCaps::default());
        let balance = model
            .op_index_or_insert("GET /api/v1/accounts/{var1}/balance", 1)
            .unwrap();
        let transfer = model
            .op_index_or_insert("POST /api/v1/transferFunds", 1)
            .unwrap();
        for _ in 0..120 {
            model.sequences.learn(&[SESSION_START], balance, 8);
            model
                .sequences
                .learn(&[SESSION_START, balance], transfer, 8);
        }
        let protection = ProtectionRef {
            namespace: "bank",
            name: "bank-api",
        };
        let rules = suggested_rules(&protection, &model);
        let enforcer =
            ordo_enforcer::detect::suggested_rules_in(&model, Some("bank-api"), Some("bank"));
        assert_eq!(rules.len(), enforcer.len());
        let rule = &rules[0];
        assert_eq!(rule.name, enforcer[0].name);
        assert_eq!(rule.yaml, enforcer[0].yaml);
        assert!(
            rule.yaml.contains("operation: POST /api/v1/transferFunds"),
            "{}",
            rule.yaml
        );
        assert!(rule.reason.contains("100.0% of 120"), "{}", rule.reason);
        assert!(
            rule.yaml.contains("  namespace: bank\n")
                && rule.yaml.contains("protectionRef:\n    name: bank-api\n"),
            "{}",
            rule.yaml
        );
    }
}
