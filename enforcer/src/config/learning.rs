//! Learning and detector settings (owned by the learned-model work; first version).

use serde::{Deserialize, Serialize};

use super::Action;

/// Maturity thresholds, windows and caps of the learned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Requests the model must have seen before a detector may act.
    pub min_requests: u64,
    /// Distinct sessions the model must have seen before a detector may act.
    pub min_sessions: u64,
    /// Length of the volume / object window, in seconds.
    pub window_seconds: u64,
    /// Order of the sequence model (previous operations considered).
    pub sequence_order: usize,
    /// Cap on learned operations.
    pub max_operations: usize,
    /// Cap on sequence contexts.
    pub max_contexts: usize,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            min_requests: 2000,
            min_sessions: 100,
            window_seconds: 600,
            sequence_order: 8,
            max_operations: 512,
            max_contexts: 50_000,
        }
    }
}

/// How eagerly a detector flags (the CRD's `Low|Medium|High`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
}

/// One learned detector's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub enabled: bool,
    pub action: Action,
    pub sensitivity: Sensitivity,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { enabled: true, action: Action::Log, sensitivity: Sensitivity::Medium }
    }
}

/// Per learned detector: action and sensitivity.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectorsConfig {
    pub shadow_endpoint: DetectorConfig,
    pub request_shape: DetectorConfig,
    pub unlikely_sequence: DetectorConfig,
    pub volume: DetectorConfig,
    pub enumeration: DetectorConfig,
    pub credential_stuffing: DetectorConfig,
}
