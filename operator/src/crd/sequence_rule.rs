//! The `SequenceRule` resource: one declared rule about the order of operations in a session,
//! attached to an `ApiProtection` by name so that rules can be owned and reviewed one file each.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Action;
use super::limits::{
    DESCRIPTION_MAX_LENGTH, DURATION_MAX_LENGTH, DURATION_PATTERN, MAX_CONDITIONS,
    MAX_FORBIDDEN_SEQUENCE, MAX_PRIORITY, MAX_REQUIRED_PREDECESSORS, MAX_WINDOW_REQUESTS,
    OBJECT_NAME_MAX_LENGTH, OBJECT_NAME_PATTERN, OPERATION_MAX_LENGTH, OPERATION_PATTERN,
};

/// One rule about the order of operations within a session. Exactly one of `requires`,
/// `forbids`, `maxRepeat` and `minInterval` is set.
// Clippy reads the repeated `type_ = "string"` of separate printer columns as duplicated
// attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "ordo.dev",
    version = "v1alpha1",
    kind = "SequenceRule",
    plural = "sequencerules",
    singular = "sequencerule",
    shortname = "seqrule",
    category = "ordo",
    namespaced,
    cel,
    status = "SequenceRuleStatus",
    derive = "PartialEq",
    selectable = ".spec.protectionRef.name",
    doc = "SequenceRule declares one rule about the order of operations within a session of the API that an ApiProtection (spec.protectionRef) protects: an operation that requires others before it, a forbidden sequence, a maximum run of one operation, or a minimum interval between two operations.",
    printcolumn(
        name = "Protection",
        type_ = "string",
        json_path = ".spec.protectionRef.name",
        description = "ApiProtection the rule belongs to"
    ),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".status.ruleKind",
        description = "Requires, Forbids, MaxRepeat or MinInterval"
    ),
    printcolumn(
        name = "Action",
        type_ = "string",
        json_path = ".spec.action",
        description = "Log or Block"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the enforcers run the rule"
    ),
    printcolumn(
        name = "Matches",
        type_ = "integer",
        json_path = ".status.matches",
        description = "Requests that matched"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.requires) ? 1 : 0) + (has(self.forbids) ? 1 : 0) + (has(self.maxRepeat) ? 1 : 0) + (has(self.minInterval) ? 1 : 0) == 1")
        .message("spec: set exactly one of requires, forbids, maxRepeat or minInterval")
)]
pub struct SequenceRuleSpec {
    /// The ApiProtection, in the same namespace, whose enforcers run this rule.
    pub protection_ref: ProtectionRef,
    /// Evaluation order: rules with a higher priority are evaluated first and the first
    /// blocking match decides the response. 0 to 1000, default 0.
    #[serde(default)]
    #[x_kube(validation = Rule::new(format!("self >= 0 && self <= {MAX_PRIORITY}"))
        .message(Message::Message(format!("priority must be between 0 and {MAX_PRIORITY}"))))]
    pub priority: i32,
    /// What a match does: `Log` records it, `Block` also refuses the request with 403 when the
    /// ApiProtection is in `Enforce` mode. Default `Log`.
    #[serde(default)]
    pub action: Action,
    /// Evaluate and count matches but never act on them, whatever `action` and the mode say:
    /// to try a rule on live traffic.
    #[serde(default)]
    pub dry_run: bool,
    /// Why the rule exists, for reviewers and for the incident summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DESCRIPTION_MAX_LENGTH))]
    pub description: Option<String>,
    /// `operation` must be preceded, in the same session, by each operation of `after` in
    /// that order, all within the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<RequiresRule>,
    /// The operations of `sequence` must not occur in this order within the window (other
    /// operations may come between them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbids: Option<ForbidsRule>,
    /// `operation` may not occur more than `count` times in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_repeat: Option<MaxRepeatRule>,
    /// At least `duration` must pass between `from` and a following `to` (faster means
    /// automation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<MinIntervalRule>,
}

/// Kind of a sequence rule: `Requires`, `Forbids`, `MaxRepeat` or `MinInterval` (which of the
/// spec's rule fields is set).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// `spec.requires` is set.
    Requires,
    /// `spec.forbids` is set.
    Forbids,
    /// `spec.maxRepeat` is set.
    MaxRepeat,
    /// `spec.minInterval` is set.
    MinInterval,
}

impl SequenceRuleSpec {
    /// The kind of the rule, or `None` when not exactly one kind is set (the CRD's CEL rule
    /// rejects such objects, so this only happens for objects built in code).
    pub fn kind(&self) -> Option<RuleKind> {
        let kinds = [
            self.requires.as_ref().map(|_| RuleKind::Requires),
            self.forbids.as_ref().map(|_| RuleKind::Forbids),
            self.max_repeat.as_ref().map(|_| RuleKind::MaxRepeat),
            self.min_interval.as_ref().map(|_| RuleKind::MinInterval),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

/// Reference to an ApiProtection.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionRef {
    /// Name of the ApiProtection in the namespace of this rule. A rule that points at no
    /// ApiProtection is kept and reported as not accepted.
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LENGTH), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// The window within which the operations of a rule must fall: both limits apply.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct Window {
    /// Most requests of the session, counting the last one, the sequence may span. 1 to 64,
    /// default 10.
    #[serde(default = "default_window_requests")]
    #[x_kube(validation = Rule::new(format!("self >= 1 && self <= {MAX_WINDOW_REQUESTS}"))
        .message(Message::Message(format!("within.requests must be between 1 and {MAX_WINDOW_REQUESTS}"))))]
    pub requests: i32,
    /// Longest time from the first to the last operation of the sequence: a duration such as
    /// `10m` (1ms to 24h). Default `10m`.
    #[serde(default = "default_window_duration")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')")
        .message("within.duration must be more than 0s and at most 24h"))]
    pub duration: String,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: default_window_requests(),
            duration: default_window_duration(),
        }
    }
}

fn default_window_requests() -> i32 {
    10
}

fn default_window_duration() -> String {
    "10m".to_owned()
}

/// `operation` requires `after` before it.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.within) || !has(self.within.requests) || self.within.requests > size(self.after)")
        .message("requires.within.requests must be greater than the number of operations in requires.after, or the rule can never be satisfied")
        .field_path(".within.requests")
)]
pub struct RequiresRule {
    /// The guarded operation, for example `POST /api/v1/transferFunds`.
    #[schemars(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))]
    pub operation: String,
    /// Operations that must come before it, oldest first (1 to 9), for example
    /// `GET /api/v1/accounts/{account_id}/balance`.
    #[schemars(
        length(min = 1, max = MAX_REQUIRED_PREDECESSORS),
        inner(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))
    )]
    pub after: Vec<String>,
    /// The window `after` and `operation` must fall within. Default 10 requests and 10 minutes.
    #[serde(default)]
    pub within: Window,
}

/// A forbidden sequence.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.within) || !has(self.within.requests) || self.within.requests >= size(self.sequence)")
        .message("forbids.within.requests must be at least the number of operations in forbids.sequence, or the sequence can never occur")
        .field_path(".within.requests")
)]
pub struct ForbidsRule {
    /// The operations, in order (2 to 10).
    #[schemars(
        length(min = 2, max = MAX_FORBIDDEN_SEQUENCE),
        inner(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))
    )]
    pub sequence: Vec<String>,
    /// The window the whole sequence must fall within to match. Default 10 requests and 10
    /// minutes.
    #[serde(default)]
    pub within: Window,
}

/// A limit on consecutive repeats of one operation.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct MaxRepeatRule {
    /// The operation.
    #[schemars(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))]
    pub operation: String,
    /// Most consecutive requests to `operation` allowed; the next one matches. 1 to 64 (the
    /// per-session history the enforcer keeps).
    #[x_kube(validation = Rule::new(format!("self >= 1 && self <= {MAX_WINDOW_REQUESTS}"))
        .message(Message::Message(format!("maxRepeat.count must be between 1 and {MAX_WINDOW_REQUESTS}"))))]
    pub count: i32,
}

/// A minimum time between two operations.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct MinIntervalRule {
    /// The earlier operation, for example `GET /api/v1/payees`.
    #[schemars(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))]
    pub from: String,
    /// The later operation, for example `POST /api/v1/transferFunds`; it matches when it comes
    /// sooner than `duration` after the session's last `from`.
    #[schemars(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))]
    pub to: String,
    /// Shortest human interval: a duration such as `2s` (1ms to 1h).
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('1h')")
        .message("minInterval.duration must be more than 0s and at most 1h"))]
    pub duration: String,
}

/// Observed state of a SequenceRule.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SequenceRuleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type; `Accepted` says whether the enforcers run the rule and, when
    /// not, why (for example `ProtectionNotFound` or `InvalidRule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONDITIONS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Which kind of rule this is, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_kind: Option<RuleKind>,
    /// Requests that matched the rule (including dry-run matches).
    #[serde(default)]
    pub matches: i64,
    /// Requests the rule blocked.
    #[serde(default)]
    pub blocked: i64,
    /// When the rule last matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_match: Option<Time>,
}
