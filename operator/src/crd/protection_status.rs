//! The status the operator writes on an `ApiProtection`: its state, and what the enforcers
//! learned and saw. Every list is bounded so that the object stays small (and GitOps tools
//! stay calm) however much traffic flows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::{
    DESCRIPTION_MAX_LENGTH, MAX_CONDITIONS, MAX_FORBIDDEN_SEQUENCE, MAX_STATUS_ENDPOINTS,
    MAX_STATUS_INCIDENTS, MAX_STATUS_POSTURE, MAX_STATUS_SEQUENCES, MAX_STATUS_SUGGESTED_RULES,
    NAME_MAX_LENGTH, OBJECT_NAME_MAX_LENGTH, OPERATION_MAX_LENGTH, SUMMARY_MAX_LENGTH,
};

/// Observed state of an ApiProtection.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtectionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type: `Ready`, `TargetResolved`, `EnforcerAvailable`,
    /// `RulesAccepted`, `ModelMature`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONDITIONS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Summary of the state, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ProtectionPhase>,
    /// Enforcer pods: wanted, ready, and sending reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcers: Option<EnforcerCounts>,
    /// Size and maturity of the merged learned model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSummary>,
    /// The busiest discovered operations with their per-session volume percentiles and a
    /// suggested rate limit (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATUS_ENDPOINTS))]
    pub endpoints: Vec<EndpointStatus>,
    /// Authentication and data posture: the operations that answer 2xx to requests without
    /// credentials, and those whose answers carry sensitive classes of values, both first (at
    /// most 50). Learned from the answers; no value is kept, only classes and counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATUS_POSTURE))]
    pub posture: Vec<PostureStatus>,
    /// The most important learned sequences by precedence score (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATUS_SEQUENCES))]
    pub top_sequences: Vec<SequenceStatus>,
    /// SequenceRules derived from high-precedence sequences, ready to apply (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATUS_SUGGESTED_RULES))]
    pub suggested_rules: Vec<SuggestedRule>,
    /// The most recent and most severe incidents (at most 20). One session's incidents from
    /// several enforcer replicas are shown as one, their counts added up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STATUS_INCIDENTS))]
    pub incidents: Vec<IncidentStatus>,
    /// Counters since the ApiProtection was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
}

/// Lifecycle phase: `Pending` (resources being created, enforcers starting), `Learning`
/// (model not yet mature, or mode `Learn`), `Protecting` (mature model, detecting and in
/// `Enforce` blocking), `Degraded` (some enforcers not ready or not reporting), `Failed` (the
/// protection cannot work, for example the target Service does not exist; the `Ready` condition
/// says why).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtectionPhase {
    /// Resources are being created or enforcers are starting.
    Pending,
    /// Enforcers run and learn; the model is not yet mature, or the mode is `Learn`.
    Learning,
    /// Enforcers run with a mature model and detect (and, in `Enforce`, block).
    Protecting,
    /// Enforcers run but some are not ready or not reporting.
    Degraded,
    /// The protection cannot work (for example the target Service does not exist); the
    /// `Ready` condition says why.
    Failed,
}

/// Enforcer pod counts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcerCounts {
    /// Replicas the Deployment asks for.
    pub desired: i32,
    /// Replicas that are ready.
    pub ready: i32,
    /// Replicas that reported to the operator recently.
    pub reporting: i32,
}

/// Size and maturity of the learned model.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    /// Requests the model has learned from.
    pub requests: i64,
    /// Distinct sessions the model has learned from.
    pub sessions: i64,
    /// Operations the model knows.
    pub endpoints: i32,
    /// When the model last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<Time>,
    /// Whether the model has passed the `spec.learning` thresholds, so that learned detectors
    /// may act. The `ModelMature` condition says what it still waits for.
    pub mature: bool,
}

/// One discovered operation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// Method and templated path.
    #[schemars(length(max = OPERATION_MAX_LENGTH))]
    pub operation: String,
    /// Requests seen.
    pub requests: i64,
    /// Median requests per session in a 10-minute window.
    pub p50: i64,
    /// 90th percentile of requests per session in a 10-minute window.
    pub p90: i64,
    /// 99th percentile of requests per session in a 10-minute window.
    pub p99: i64,
    /// Suggested limit of requests per session per 10 minutes, accounting for the spread
    /// across sessions; absent until enough sessions were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_limit: Option<i64>,
    /// Confidence in the suggested limit, from the number of sessions and their variance.
    pub confidence: Confidence,
}

/// The authentication and data posture of one operation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostureStatus {
    /// Method and templated path.
    #[schemars(length(max = OPERATION_MAX_LENGTH))]
    pub operation: String,
    /// 2xx answers learned.
    pub answers: i64,
    /// Of those, answers to requests that carried no credential (no token, session cookie or
    /// session header): the operation answers without authentication.
    pub unauthenticated_answers: i64,
    /// Classes of sensitive values its answers carried (`password`, `token`, `cardNumber`,
    /// `nationalId`, `email`, `phone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6), inner(length(max = 16)))]
    pub sensitive_classes: Vec<String>,
}

/// Confidence of a learned figure.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Confidence {
    /// Few sessions or a wide spread: use in `Log` first.
    Low,
    /// Enough sessions for a cautious limit.
    Medium,
    /// Many sessions with a stable distribution.
    High,
}

/// One learned sequence.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SequenceStatus {
    /// The operations in order, oldest first.
    #[schemars(length(max = MAX_FORBIDDEN_SEQUENCE), inner(length(max = OPERATION_MAX_LENGTH)))]
    pub operations: Vec<String>,
    /// count(sequence) / count(its last operation), in [0, 1]: near 1 means the last operation
    /// is almost always preceded by the others.
    pub precedence: f64,
    /// Times the sequence was seen.
    pub count: i64,
}

/// A SequenceRule suggested from the learned model.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SuggestedRule {
    /// Suggested name of the SequenceRule.
    #[schemars(length(max = OBJECT_NAME_MAX_LENGTH))]
    pub name: String,
    /// Why it is suggested (the sequence and its precedence score).
    #[schemars(length(max = DESCRIPTION_MAX_LENGTH))]
    pub reason: String,
    /// The complete SequenceRule manifest, ready for `kubectl apply -f -`.
    #[schemars(length(max = SUMMARY_MAX_LENGTH))]
    pub yaml: String,
}

/// One incident: the flagged requests of one session (one client address for credential
/// stuffing) within an inactivity window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStatus {
    /// Incident id, as in the enforcer's block responses and admin API.
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub id: String,
    /// Severity.
    pub severity: Severity,
    /// Whether the session is still active, so that the incident may grow.
    pub open: bool,
    /// Session key, for example `jwt:sub=4411`.
    #[schemars(length(max = 256))]
    pub session: String,
    /// Client address.
    #[schemars(length(max = 64))]
    pub client: String,
    /// What was detected (`SequenceRule`, `RateLimit`, `SchemaViolation`, `ShadowEndpoint`,
    /// `ShapeDeviation`, `UnlikelySequence`, `Volume`, `Enumeration`, `CredentialStuffing`).
    #[schemars(length(max = 9), inner(length(max = 64)))]
    pub kinds: Vec<String>,
    /// Operations involved (at most 10).
    #[schemars(length(max = 10), inner(length(max = OPERATION_MAX_LENGTH)))]
    pub operations: Vec<String>,
    /// Requests of the incident.
    pub requests: i64,
    /// Requests flagged.
    #[serde(default)]
    pub flagged: i64,
    /// Requests blocked.
    pub blocked: i64,
    /// First request of the incident.
    pub first_seen: Time,
    /// Last request of the incident.
    pub last_seen: Time,
    /// What happened, in plain language, naming the session, the client, what was done and
    /// the baseline or rule it broke.
    #[schemars(length(max = SUMMARY_MAX_LENGTH))]
    pub summary: String,
}

/// Incident severity.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Likely abuse.
    Medium,
    /// Clear abuse.
    High,
    /// Clear abuse that reached or tried to reach sensitive operations at scale.
    Critical,
}

/// Counters since creation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Requests seen by the enforcers.
    pub requests: i64,
    /// Requests flagged by a rule or detector.
    pub flagged: i64,
    /// Requests blocked.
    pub blocked: i64,
    /// Incidents opened (each enforcer replica counts those it opened).
    pub incidents: i64,
    /// Incidents still open (one session's incidents from several replicas count once).
    pub open_incidents: i64,
}
