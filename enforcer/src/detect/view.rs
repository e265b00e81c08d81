//! `GET /v1/model`: what the model learned and, per detector, whether it is active or what it
//! still waits for; endpoints with volume percentiles and suggested limits; the top 20
//! important sequences by precedence score; suggested `SequenceRule`s as ready-to-apply YAML.
//! A pure function of the model and config, so the operator can build the same view from the
//! merged model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Action, DetectorConfig, DetectorsConfig, LearningConfig, Sensitivity};
use crate::model::{LearnedModel, SESSION_START};

use super::exposure;
use super::thresholds::{
    Percentiles, confidence, object_threshold, suggested_volume_limit, volume_threshold,
};

/// Most endpoints listed.
pub const MAX_VIEW_ENDPOINTS: usize = 100;
/// Important sequences listed (REFERENCE: the top 20).
pub const MAX_VIEW_SEQUENCES: usize = 20;
/// Suggested rules listed.
pub const MAX_SUGGESTED_RULES: usize = 10;
/// Credibility of the intervals shown and used for pruning.
const VIEW_CREDIBILITY: f64 = 0.95;
/// Occurrences a sequence needs before it is listed.
const MIN_SEQUENCE_COUNT: u64 = 10;
/// Precedence a pair needs to become a suggested rule, and occurrences.
const RULE_MIN_PRECEDENCE: f64 = 0.95;
const RULE_MIN_COUNT: u64 = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub analyzer: String,
    pub requests: u64,
    pub sessions: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The global maturity gate (`minRequests`, `minSessions`) is passed.
    pub mature: bool,
    pub detectors: Vec<DetectorView>,
    pub endpoints: Vec<EndpointView>,
    /// Authentication and data posture: operations that answer 2xx without credentials or
    /// return sensitive classes (see `detect::exposure`).
    #[serde(default)]
    pub posture: Vec<crate::model::exposure::Posture>,
    pub top_sequences: Vec<SequenceView>,
    pub suggested_rules: Vec<SuggestedRule>,
    pub usage: UsageView,
    /// Operations learned after maturity (new releases, the long tail), most recent first.
    #[serde(default)]
    pub discovered: Vec<DiscoveredView>,
    /// Operations some detectors do not judge yet, and why (too little learned traffic).
    #[serde(default)]
    pub not_yet_judged: Vec<NotJudgedView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredView {
    pub operation: String,
    pub discovered_ms: u64,
    pub last_seen_ms: u64,
    pub requests: u64,
    /// Whether it has reached the inventory threshold (`minEndpointRequests`).
    pub in_inventory: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotJudgedView {
    pub operation: String,
    pub requests: u64,
    /// One entry per detector that does not judge the operation yet, e.g.
    /// "volume: needs 41 more session windows".
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectorView {
    pub name: String,
    pub enabled: bool,
    pub action: Action,
    pub sensitivity: Sensitivity,
    pub active: bool,
    /// What the detector still waits for, e.g. "needs 120 more sessions".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Operations with a mature baseline for this detector (per-operation detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_operations: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub operation: String,
    pub requests: u64,
    pub status_mix: BTreeMap<String, u64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub volume: VolumeView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectsView>,
    pub auth_like: bool,
    pub parameters: usize,
    /// What the operation's answers were learned to look like, when their bodies are read
    /// (see `detect::outcome`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<OutcomesView>,
    /// What the operation's 2xx answers exposed (see `detect::exposure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposureView {
    /// 2xx answers whose body was scanned.
    pub scanned: u64,
    /// 2xx answers to requests without credentials, and to requests with them.
    pub anonymous_answers: u64,
    pub authenticated_answers: u64,
    /// Scanned answers by sensitive class they carried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_classes: BTreeMap<String, u64>,
    /// Records per answer (longest array), supported p99.
    pub records_p99: u64,
    /// Top-level field names of the answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomesView {
    /// 2xx/3xx answers whose body was read.
    pub read: u64,
    /// Of those, answers whose body said they failed.
    pub error_answers: u64,
    /// Answers that granted a credential (token field, `Set-Cookie`).
    pub credential_answers: u64,
    /// Successful answers are learned to grant a credential (an answer without one fails).
    pub grants_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    /// Session windows observed.
    pub windows: u64,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    /// Suggested per-session limit per window (`max(⌈1.5·p99⌉, p99 + 3·max(p90−p50, 1))`).
    pub suggested_limit: u32,
    /// The threshold the volume detector applies at its configured sensitivity.
    pub threshold: u32,
    pub confidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectsView {
    pub windows: u64,
    pub p99: u32,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceView {
    pub operations: Vec<String>,
    pub count: u64,
    /// count(sequence) / count(last operation).
    pub precedence: f64,
    /// P(last | preceding) and its 95% credible interval.
    pub probability: f64,
    pub interval: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestedRule {
    pub name: String,
    pub operation: String,
    pub after: Vec<String>,
    pub precedence: f64,
    pub count: u64,
    pub yaml: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub operations: usize,
    pub max_operations: usize,
    pub contexts: usize,
    pub max_contexts: usize,
    pub contexts_evicted: u64,
    pub dropped_operations: u64,
    pub tracked_clients: usize,
    pub approx_bytes: usize,
}

fn more(needed: u64, have: u64, what: &str) -> Option<String> {
    (have < needed).then(|| format!("needs {} more {what}", needed - have))
}

fn detector(
    name: &str,
    config: &DetectorConfig,
    gate: &Option<String>,
    own: Option<String>,
    active_operations: Option<usize>,
) -> DetectorView {
    let waiting_for = if !config.enabled {
        Some("disabled".to_owned())
    } else {
        gate.clone().or(own)
    };
    DetectorView {
        name: name.to_owned(),
        enabled: config.enabled,
        action: config.action,
        sensitivity: config.sensitivity,
        active: config.enabled && waiting_for.is_none(),
        waiting_for,
        active_operations,
    }
}

/// Builds the view of `model` under `learning` and `detectors`.
pub fn model_view(
    model: &LearnedModel,
    learning: &LearningConfig,
    detectors: &DetectorsConfig,
    protection: Option<&str>,
) -> ModelView {
    let gate = {
        let parts: Vec<String> = [
            more(learning.min_requests, model.requests, "requests"),
            more(learning.min_sessions, model.sessions, "sessions"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(" and ").replace(" and needs ", " and "))
        }
    };
    let busiest = model
        .operations
        .iter()
        .map(|o| o.requests)
        .max()
        .unwrap_or(0);
    let shape_ops = model
        .operations
        .iter()
        .filter(|o| o.requests >= learning.min_operation_requests)
        .count();
    let volume_ops = model
        .operations
        .iter()
        .filter(|o| o.volume.windows() >= learning.min_volume_windows)
        .count();
    let object_ops = model
        .operations
        .iter()
        .filter(|o| o.objects.windows() >= learning.min_volume_windows)
        .count();
    let most_windows = model
        .operations
        .iter()
        .map(|o| o.volume.windows())
        .max()
        .unwrap_or(0);
    let most_object_windows = model
        .operations
        .iter()
        .map(|o| o.objects.windows())
        .max()
        .unwrap_or(0);
    let mature_contexts = model
        .sequences
        .iter()
        .filter(|(k, v)| !k.is_empty() && v.total() >= learning.min_context_observations)
        .count();
    let busiest_context = model
        .sequences
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(_, v)| v.total())
        .max()
        .unwrap_or(0);
    let auth_ops = model.operations.iter().filter(|o| o.is_auth_like()).count();
    let scanned_answers: u64 = model.operations.iter().map(|o| o.exposure.answers).sum();
    let exposure_ops = model
        .operations
        .iter()
        .filter(|o| o.exposure.answers >= exposure::MIN_OWN_ANSWERS)
        .count();
    // Operations with a parameter whose origins have the support to be judged (see
    // `detect::lineage`; whether they are near-certain is decided per request).
    let lineage_ops = model
        .operations
        .iter()
        .filter(|o| {
            o.lineage
                .params
                .values()
                .any(|c| c.seen >= learning.min_operation_requests)
        })
        .count();
    let detector_views = vec![
        detector("shadowEndpoint", &detectors.shadow_endpoint, &gate, None, None),
        detector(
            "requestShape",
            &detectors.request_shape,
            &gate,
            (shape_ops == 0).then(|| format!("needs {} more requests on its busiest operation", learning.min_operation_requests.saturating_sub(busiest))),
            Some(shape_ops),
        ),
        detector(
            "unlikelySequence",
            &detectors.unlikely_sequence,
            &gate,
            (mature_contexts == 0).then(|| {
                format!("needs {} more observations of its most frequent sequence context", learning.min_context_observations.saturating_sub(busiest_context))
            }),
            None,
        ),
        detector(
            "volume",
            &detectors.volume,
            &gate,
            (volume_ops == 0).then(|| format!("needs {} more session windows on its busiest operation", learning.min_volume_windows.saturating_sub(most_windows))),
            Some(volume_ops),
        ),
        detector(
            "enumeration",
            &detectors.enumeration,
            &gate,
            (object_ops == 0).then(|| {
                if most_object_windows == 0 {
                    "waits for an operation that names objects (path ids, id-like query or body values)".to_owned()
                } else {
                    format!("needs {} more session windows on its busiest object operation", learning.min_volume_windows.saturating_sub(most_object_windows))
                }
            }),
            Some(object_ops),
        ),
        detector("credentialStuffing", &detectors.credential_stuffing, &gate, None, Some(auth_ops)),
        detector(
            "exposure",
            &detectors.exposure,
            &gate,
            (scanned_answers < exposure::MIN_API_ANSWERS && exposure_ops == 0).then(|| {
                format!("needs {} more scanned answers", exposure::MIN_API_ANSWERS - scanned_answers)
            }),
            Some(exposure_ops),
        ),
        detector(
            "identityLineage",
            &detectors.identity_lineage,
            &gate,
            (lineage_ops == 0).then(|| format!("needs {} learned requests of an operation whose values name objects", learning.min_operation_requests)),
            Some(lineage_ops),
        ),
    ];
    let mut endpoints: Vec<EndpointView> = model
        .operations
        .iter()
        .filter(|o| o.requests > 0)
        .map(|o| {
            let p = Percentiles::of(&o.volume);
            EndpointView {
                operation: o.template.clone(),
                requests: o.requests,
                status_mix: o
                    .status
                    .iter()
                    .map(|(code, count)| {
                        (
                            if *code == 0 {
                                "other".to_owned()
                            } else {
                                code.to_string()
                            },
                            *count,
                        )
                    })
                    .collect(),
                first_seen_ms: o.first_seen_ms,
                last_seen_ms: o.last_seen_ms,
                volume: VolumeView {
                    windows: p.windows,
                    p50: p.p50,
                    p90: p.p90,
                    p99: p.p99,
                    suggested_limit: suggested_volume_limit(&p),
                    threshold: volume_threshold(&p, detectors.volume.sensitivity),
                    confidence: confidence(p.windows).to_owned(),
                },
                objects: (o.objects.windows() > 0).then(|| {
                    let p99 = Percentiles::of(&o.objects).p99;
                    ObjectsView {
                        windows: o.objects.windows(),
                        p99,
                        threshold: object_threshold(p99, detectors.enumeration.sensitivity),
                    }
                }),
                auth_like: o.is_auth_like(),
                parameters: o.shape.params.len(),
                outcomes: (!o.outcomes.is_zero()).then(|| OutcomesView {
                    read: o.outcomes.read,
                    error_answers: o.outcomes.error_answers,
                    credential_answers: o.outcomes.credential_answers,
                    grants_credentials: o.outcomes.grants_credentials(),
                }),
                exposure: (!o.exposure.is_zero()).then(|| ExposureView {
                    scanned: o.exposure.answers,
                    anonymous_answers: o.exposure.anonymous_answers,
                    authenticated_answers: o.exposure.authenticated_answers,
                    sensitive_classes: o
                        .exposure
                        .classes
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    records_p99: exposure::records_p99(&o.exposure.records),
                    fields: o.exposure.fields.keys().cloned().collect(),
                }),
            }
        })
        .collect();
    endpoints.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.operation.cmp(&b.operation))
    });
    endpoints.truncate(MAX_VIEW_ENDPOINTS);
    let top_sequences = model
        .sequences
        .important_sequences(MIN_SEQUENCE_COUNT, VIEW_CREDIBILITY, MAX_VIEW_SEQUENCES)
        .into_iter()
        .map(|s| SequenceView {
            operations: s
                .ops
                .iter()
                .map(|o| model.template_of(*o).to_owned())
                .collect(),
            count: s.count,
            precedence: round4(s.precedence),
            probability: round4(s.probability),
            interval: [round4(s.interval.0), round4(s.interval.1)],
        })
        .collect();
    let mut discovered: Vec<DiscoveredView> = model
        .operations
        .iter()
        .filter(|o| o.discovered_ms != 0)
        .map(|o| DiscoveredView {
            operation: o.template.clone(),
            discovered_ms: o.discovered_ms,
            last_seen_ms: o.last_seen_ms,
            requests: o.requests,
            in_inventory: o.requests >= learning.min_endpoint_requests,
        })
        .collect();
    discovered.sort_by(|a, b| {
        b.discovered_ms
            .cmp(&a.discovered_ms)
            .then_with(|| a.operation.cmp(&b.operation))
    });
    discovered.truncate(MAX_VIEW_ENDPOINTS);
    let mut not_yet_judged: Vec<NotJudgedView> = model
        .operations
        .iter()
        .filter_map(|o| {
            let reasons = not_judged_reasons(o, learning, detectors);
            (!reasons.is_empty()).then(|| NotJudgedView {
                operation: o.template.clone(),
                requests: o.requests,
                reasons,
            })
        })
        .collect();
    not_yet_judged.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.operation.cmp(&b.operation))
    });
    not_yet_judged.truncate(MAX_VIEW_ENDPOINTS);
    ModelView {
        posture: crate::model::exposure::posture(model, MAX_VIEW_ENDPOINTS),
        discovered,
        not_yet_judged,
        analyzer: "learned".to_owned(),
        requests: model.requests,
        sessions: model.sessions,
        first_seen_ms: model.first_seen_ms,
        last_seen_ms: model.last_seen_ms,
        mature: gate.is_none(),
        detectors: detector_views,
        endpoints,
        top_sequences,
        suggested_rules: suggested_rules(model, protection),
        usage: UsageView {
            operations: model.operations.len(),
            max_operations: model.caps().max_operations,
            contexts: model.sequences.len(),
            max_contexts: model.caps().max_contexts,
            contexts_evicted: model.sequences.evicted,
            dropped_operations: model.dropped_operations,
            tracked_clients: 0,
            approx_bytes: model.sequences.approx_bytes() + model.operations.len() * 512,
        },
    }
}

/// Why detectors do not judge operation `o` yet (empty when every enabled one does).
fn not_judged_reasons(
    o: &crate::model::OperationStats,
    learning: &LearningConfig,
    detectors: &DetectorsConfig,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if detectors.shadow_endpoint.enabled && o.requests < learning.min_endpoint_requests {
        reasons.push(format!(
            "shadowEndpoint: outside the inventory ({} of {} successful requests); refused only with evidence of probing",
            o.requests, learning.min_endpoint_requests
        ));
    }
    if o.requests < learning.min_operation_requests {
        let more = learning.min_operation_requests - o.requests;
        if detectors.request_shape.enabled {
            reasons.push(format!(
                "requestShape: unknown and missing fields need {more} more requests"
            ));
        }
        if detectors.unlikely_sequence.enabled {
            reasons.push(format!(
                "unlikelySequence: needs {more} more requests before its steps are judged"
            ));
        }
    }
    let windows = o.volume.windows();
    if detectors.volume.enabled && windows < learning.min_volume_windows {
        reasons.push(format!(
            "volume: needs {} more session windows",
            learning.min_volume_windows - windows
        ));
    }
    let object_windows = o.objects.windows();
    if detectors.enumeration.enabled
        && object_windows > 0
        && object_windows < learning.min_volume_windows
    {
        reasons.push(format!(
            "enumeration: needs {} more session windows",
            learning.min_volume_windows - object_windows
        ));
    }
    reasons
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// `GET /api/v1/accounts/{var1}/balance` → `get-balance`.
fn slug(template: &str) -> String {
    let (method, path) = template.split_once(' ').unwrap_or(("", template));
    let last = path
        .split('/')
        .rev()
        .find(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or("root");
    let mut out = format!(
        "{}-{}",
        method.to_ascii_lowercase(),
        last.to_ascii_lowercase()
    );
    out.retain(|c| c.is_ascii_alphanumeric() || c == '-');
    out
}

/// Suggested `requires` rules from high-precedence pairs: operation B is (almost) always
/// entered right after A, so "B requires A before it" would not hurt honest sessions.
/// `protection` names the ApiProtection the rules belong to (their `protectionRef`).
pub fn suggested_rules(model: &LearnedModel, protection: Option<&str>) -> Vec<SuggestedRule> {
    suggested_rules_in(model, protection, None)
}

/// [`suggested_rules`] for an ApiProtection in `namespace` (the operator's status): the YAML
/// then also carries `metadata.namespace`, so it applies as it is. This is the one algorithm
/// behind both `GET /v1/model` and the ApiProtection status.
pub fn suggested_rules_in(
    model: &LearnedModel,
    protection: Option<&str>,
    namespace: Option<&str>,
) -> Vec<SuggestedRule> {
    let mut pairs = Vec::new();
    for (context, counts) in model.sequences.iter() {
        let [previous] = context[..] else { continue };
        if previous == SESSION_START {
            continue;
        }
        for (next, count) in counts.next() {
            if next == previous || count < RULE_MIN_COUNT {
                continue;
            }
            let entered = model.sequences.op_count(next).max(count);
            let precedence = count as f64 / entered as f64;
            if precedence >= RULE_MIN_PRECEDENCE {
                pairs.push((previous, next, count, precedence));
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.3.partial_cmp(&a.3)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.2.cmp(&a.2))
            .then_with(|| (a.0, a.1).cmp(&(b.0, b.1)))
    });
    pairs
        .into_iter()
        .take(MAX_SUGGESTED_RULES)
        .map(|(previous, next, count, precedence)| {
            let before = model.template_of(previous).to_owned();
            let operation = model.template_of(next).to_owned();
            let mut name = format!("require-{}-before-{}", slug(&before), slug(&operation));
            name.truncate(63);
            let name = name.trim_end_matches('-').to_owned();
            let description = format!(
                "Suggested by Ordo: {:.1}% of {} entries of {} came right after {}.",
                precedence * 100.0,
                model.sequences.op_count(next).max(count),
                operation,
                before
            );
            let mut spec = json!({
                "priority": 100,
                "action": "Log",
                "description": description,
                "requires": { "operation": operation, "after": [before], "within": { "requests": 10, "duration": "10m" } },
            });
            if let (Some(name), Some(obj)) = (protection, spec.as_object_mut()) {
                obj.insert("protectionRef".to_owned(), json!({ "name": name }));
            }
            let mut metadata = json!({ "name": name });
            if let (Some(namespace), Some(obj)) = (namespace, metadata.as_object_mut()) {
                obj.insert("namespace".to_owned(), json!(namespace));
            }
            let document = json!({
                "apiVersion": "ordo.dev/v1alpha1",
                "kind": "SequenceRule",
                "metadata": metadata,
                "spec": spec,
            });
            let mut yaml = String::new();
            if protection.is_none() {
                yaml.push_str("# Add spec.protectionRef.name: the ApiProtection this rule belongs to.\n");
            }
            yaml.push_str(&serde_yaml_ng::to_string(&document).unwrap_or_default());
            SuggestedRule { name, operation, after: vec![before], precedence: round4(precedence), count, yaml }
        })
        .collect()
}
