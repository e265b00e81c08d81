//! Wire types of the report channel between an enforcer replica and the operator.
//!
//! An enforcer POSTs a [`Report`] as JSON to `/v1/reports/{namespace}/{name}` with its
//! projected ServiceAccount token (audience [`REPORT_AUDIENCE`]) and receives a
//! [`ReportAnswer`] carrying the merged model of every replica.
//!
//! Exactness under retries: the model delta is numbered per replica instance
//! (`instance` + `sequence`). The enforcer resends the *same* delta under the same number
//! until the operator acknowledges it, and the operator applies each number once, so a lost
//! answer never counts a delta twice. Counters are cumulative per instance (the operator
//! keeps the latest value of each instance), and incidents are upserts keyed by id, so both
//! are idempotent as well.

use serde::{Deserialize, Serialize};

/// Audience the enforcer's projected token is issued for and the operator's TokenReview asks for.
pub const REPORT_AUDIENCE: &str = "ordo-report";

/// Path prefix of the report endpoint; the full path is `{REPORT_PATH_PREFIX}/{namespace}/{name}`.
pub const REPORT_PATH_PREFIX: &str = "/v1/reports";

/// Upper bound on incidents carried by one report; the rest waits for the next one.
pub const MAX_INCIDENTS_PER_REPORT: usize = 200;

/// Upper bound on rule counter entries carried by one report.
pub const MAX_RULES_PER_REPORT: usize = 512;

/// Upper bound on the size of a report body the operator accepts (bytes).
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// One periodic report of one enforcer replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Name of the replica (the pod name in a cluster), for display and per-replica counters.
    pub replica: String,
    /// Random id of this process start: a restarted pod is a new instance whose counters and
    /// sequence numbers start again from zero.
    pub instance: String,
    /// Number of the model delta carried here, 1-based and increasing per instance; a retry
    /// carries the same number and the same delta.
    pub sequence: u64,
    /// Unix milliseconds when the report was built.
    pub sent_at_ms: u64,
    /// `LearnedModel::to_bytes()` of what this replica learned since its previous
    /// acknowledged delta; empty when nothing was learned.
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub model_delta: Vec<u8>,
    /// Incidents that are new or changed since the last acknowledged report (full records).
    #[serde(default)]
    pub incidents: Vec<IncidentReport>,
    /// Cumulative traffic counters of this instance.
    #[serde(default)]
    pub counters: TrafficCounters,
    /// Cumulative counters of each declared sequence rule in this instance.
    #[serde(default)]
    pub rules: Vec<RuleCounters>,
    /// The config this instance runs (absent when its config has no revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunningConfig>,
}

/// Which rendered config an instance runs, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningConfig {
    /// The config's `revision`, as the operator rendered it.
    pub revision: String,
    /// Unix milliseconds when the instance started running it.
    pub since_ms: u64,
}

/// The operator's answer to an accepted report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAnswer {
    /// Whether this report's `sequence` was merged now (false: it had been merged before and
    /// this was a retry).
    pub applied: bool,
    /// `LearnedModel::to_bytes()` of the merged model of all replicas; empty when the
    /// operator has no model yet.
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub model: Vec<u8>,
}

/// Cumulative request counters of one enforcer instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficCounters {
    /// Requests the enforcer decided on.
    pub requests: u64,
    /// Requests with at least one finding (logged or blocked).
    pub flagged: u64,
    /// Requests answered by the enforcer with a block status instead of being forwarded.
    pub blocked: u64,
}

/// Cumulative counters of one declared sequence rule in one enforcer instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounters {
    /// Rule name (the SequenceRule's name).
    pub name: String,
    /// Requests the rule matched (violations, including dry-run and Log).
    pub matches: u64,
    /// Requests the rule blocked.
    pub blocked: u64,
    /// Unix milliseconds of the latest match, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_match_ms: Option<u64>,
}

/// An incident as the enforcer's admin API shows it, carried in reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentReport {
    /// Stable incident id (`inc-…`).
    pub id: String,
    /// Session key the incident belongs to.
    pub session: String,
    /// Client address.
    pub client: String,
    /// Highest severity of its findings (`low`, `medium`, `high`, `critical`).
    pub severity: String,
    /// Finding kinds involved.
    pub kinds: Vec<String>,
    /// Operations involved.
    pub operations: Vec<String>,
    /// Requests of the session while the incident was open.
    pub requests: u64,
    /// Of those, requests with findings.
    #[serde(default)]
    pub flagged: u64,
    /// Of those, requests that were blocked.
    pub blocked: u64,
    /// Unix milliseconds of the first finding.
    pub first_seen_ms: u64,
    /// Unix milliseconds of the latest finding.
    pub last_seen_ms: u64,
    /// Deterministic plain-language summary.
    pub summary: String,
}

impl IncidentReport {
    /// Numeric rank of the severity for ordering (unknown strings rank lowest).
    pub fn severity_rank(&self) -> u8 {
        severity_rank(&self.severity)
    }
}

/// Numeric rank of a severity string, case-insensitive: critical 4, high 3, medium 2, low 1, else 0.
pub fn severity_rank(severity: &str) -> u8 {
    match severity.to_ascii_lowercase().as_str() {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

/// Base64 (standard alphabet, padded) encoding of byte fields in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_with_base64_model() {
        let report = Report {
            replica: "bank-enforcer-0".into(),
            instance: "a1b2".into(),
            sequence: 7,
            sent_at_ms: 1_700_000_000_000,
            model_delta: vec![0, 1, 2, 254, 255],
            incidents: vec![IncidentReport {
                id: "inc-1".into(),
                severity: "high".into(),
                ..IncidentReport::default()
            }],
            counters: TrafficCounters {
                requests: 10,
                flagged: 2,
                blocked: 1,
            },
            rules: vec![RuleCounters {
                name: "r".into(),
                matches: 3,
                blocked: 1,
                last_match_ms: Some(5),
            }],
            config: Some(RunningConfig {
                revision: "0123456789abcdef".into(),
                since_ms: 1_700_000_000_500,
            }),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["modelDelta"], "AAEC/v8=");
        assert_eq!(json["counters"]["flagged"], 2);
        assert_eq!(json["incidents"][0]["firstSeenMs"], 0);
        assert_eq!(json["config"]["sinceMs"], 1_700_000_000_500u64);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn empty_model_is_omitted_and_defaults_back() {
        let answer = ReportAnswer {
            applied: false,
            model: Vec::new(),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(json, r#"{"applied":false}"#);
        let back: ReportAnswer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, answer);
    }

    #[test]
    fn severity_ranks_order_levels() {
        assert!(severity_rank("Critical") > severity_rank("high"));
        assert!(severity_rank("high") > severity_rank("medium"));
        assert!(severity_rank("medium") > severity_rank("low"));
        assert_eq!(severity_rank("bogus"), 0);
    }
}
