//! The vocabulary every check speaks: a [`Finding`] of some [`FindingKind`] and
//! [`Severity`]. Declared rules and limits (`policy`) and the learned detectors (`detect`)
//! produce findings; incidents group them and the proxy applies the mode to them.

use serde::Serialize;

use crate::config::Action;

/// How bad a finding is; incidents take the maximum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Which check produced a finding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum FindingKind {
    SequenceRule,
    RateLimit,
    /// The request does not match the declared OpenAPI document.
    SchemaViolation,
    ShadowEndpoint,
    ShapeDeviation,
    UnlikelySequence,
    Volume,
    Enumeration,
    CredentialStuffing,
}

impl FindingKind {
    /// Stable name used in metrics, JSON and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SequenceRule => "SequenceRule",
            Self::RateLimit => "RateLimit",
            Self::SchemaViolation => "SchemaViolation",
            Self::ShadowEndpoint => "ShadowEndpoint",
            Self::ShapeDeviation => "ShapeDeviation",
            Self::UnlikelySequence => "UnlikelySequence",
            Self::Volume => "Volume",
            Self::Enumeration => "Enumeration",
            Self::CredentialStuffing => "CredentialStuffing",
        }
    }
}

/// One check's verdict with evidence. `explanation` is a deterministic plain-language clause
/// that the incident summary quotes, e.g. "touched 58 distinct account ids via
/// GET /api/v1/accounts/{var1}/balance in 2 min; 99% of sessions touch at most 3".
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub action: Action,
    /// Status used when this finding blocks: 403 (or 429 for volume/rate findings, 400 for schema).
    pub block_status: u16,
    /// Name of the declared rule, when one was broken.
    pub rule: Option<String>,
    pub explanation: String,
    pub evidence: serde_json::Value,
    pub retry_after_s: Option<u64>,
}
