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

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    /// Stable name used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "Low",
            Self::Medium => "Medium",
            Self::High => "High",
            Self::Critical => "Critical",
        }
    }
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
    /// An answer that exposes more than the operation's answers were learned to: a sensitive
    /// class they never carried, or many times their records (see `detect::exposure`).
    Exposure,
    /// A parameter named an object that no token claim, earlier answer or earlier request of
    /// the session carried, where honest values always have such an origin (see
    /// `detect::lineage`).
    IdentityLineage,
    /// A request of a session or client address quarantined after a blocked high-severity
    /// finding (see `detect::quarantine`).
    Quarantined,
}

impl FindingKind {
    /// Every kind, so that metrics can show each at zero before its first finding.
    pub const ALL: [Self; 12] = [
        Self::SequenceRule,
        Self::RateLimit,
        Self::SchemaViolation,
        Self::ShadowEndpoint,
        Self::ShapeDeviation,
        Self::UnlikelySequence,
        Self::Volume,
        Self::Enumeration,
        Self::CredentialStuffing,
        Self::Exposure,
        Self::IdentityLineage,
        Self::Quarantined,
    ];

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
            Self::Exposure => "Exposure",
            Self::IdentityLineage => "IdentityLineage",
            Self::Quarantined => "Quarantined",
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
