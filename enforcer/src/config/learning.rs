//! Learning and detector settings: when the learned model may act (maturity), how it counts
//! (windows, sequence order) and how much memory it may take (caps). Every field has a default
//! (see `docs/detection.md`); the defaults let a small API — hundreds of sessions — become
//! protected within minutes of traffic.

use serde::{Deserialize, Serialize};

use super::Action;
use super::duration::Duration;

/// Maturity thresholds, windows and caps of the learned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Successful, unflagged requests the model must have learned from before any learned
    /// detector may act.
    pub min_requests: u64,
    /// Distinct sessions the model must have learned from before any learned detector may act.
    pub min_sessions: u64,
    /// How long the model remembers, in seconds (the CRD's `learning.window`): every window
    /// all counts are halved (exponential ageing), so the model follows changes of the API.
    pub window_seconds: u64,
    /// Length of the per-session counting window of the volume, enumeration, not-found and
    /// authentication-failure detectors (windows are aligned to the clock, as 10-minute buckets).
    pub volume_window: Duration,
    /// Longest context (previous operations) of the sequence model.
    pub sequence_order: usize,
    /// Observations of a sequence context before it may judge a transition.
    pub min_context_observations: u64,
    /// A pause at least this long inside a session starts a new journey for the sequence
    /// model: what follows is judged and learned like the start of a session (a customer who
    /// comes back to the app later starts a new task, not the next step of the old one).
    pub journey_gap: Duration,
    /// Successful requests of an operation before its request shape is enforced.
    pub min_operation_requests: u64,
    /// Successful requests before an operation counts as part of the known inventory.
    pub min_endpoint_requests: u64,
    /// Session windows of an operation before its volume and object baselines are used.
    pub min_volume_windows: u64,
    /// Cap on learned operations.
    pub max_operations: usize,
    /// Cap on sequence contexts (least-counted ones are evicted).
    pub max_contexts: usize,
    /// Cap on profiled parameters per operation (and on profiled headers and cookies).
    pub max_params: usize,
    /// Most distinct values a parameter may have to be kept as an enum.
    pub max_enum_values: usize,
    /// Cap on client addresses tracked for authentication failures.
    pub max_tracked_clients: usize,
    /// Standalone persistence: the model is loaded from this file at start (when it exists)
    /// and written back every `persistSeconds` and at shutdown. In a cluster the operator
    /// keeps the merged model instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_file: Option<std::path::PathBuf>,
    /// Seconds between writes of `modelFile`.
    pub persist_seconds: u64,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            min_requests: 1000,
            min_sessions: 50,
            window_seconds: 24 * 3600,
            volume_window: Duration::from_secs(600),
            sequence_order: 8,
            min_context_observations: 50,
            journey_gap: Duration::from_secs(300),
            min_operation_requests: 30,
            min_endpoint_requests: 3,
            min_volume_windows: 50,
            max_operations: 512,
            max_contexts: 50_000,
            max_params: 64,
            max_enum_values: 16,
            max_tracked_clients: 65_536,
            model_file: None,
            persist_seconds: 60,
        }
    }
}

impl LearningConfig {
    /// Problems with field paths relative to `learning` (empty when valid).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=9).contains(&self.sequence_order) {
            problems.push((
                "sequenceOrder",
                format!("must be between 1 and 9, got {}", self.sequence_order),
            ));
        }
        if self.volume_window.std() < std::time::Duration::from_secs(10)
            || self.volume_window.std() > std::time::Duration::from_secs(24 * 3600)
        {
            problems.push((
                "volumeWindow",
                format!("must be between 10s and 24h, got {}", self.volume_window),
            ));
        }
        if self.journey_gap.std() < std::time::Duration::from_millis(100)
            || self.journey_gap.std() > std::time::Duration::from_secs(24 * 3600)
        {
            problems.push((
                "journeyGap",
                format!("must be between 100ms and 24h, got {}", self.journey_gap),
            ));
        }
        if self.window_seconds < 60 {
            problems.push((
                "windowSeconds",
                format!("must be at least 60, got {}", self.window_seconds),
            ));
        }
        if self.max_operations == 0 || self.max_operations > 65_000 {
            problems.push((
                "maxOperations",
                format!("must be between 1 and 65000, got {}", self.max_operations),
            ));
        }
        if self.max_contexts < 100 {
            problems.push((
                "maxContexts",
                format!("must be at least 100, got {}", self.max_contexts),
            ));
        }
        if self.max_params == 0 {
            problems.push(("maxParams", "must be at least 1".to_owned()));
        }
        if self.max_enum_values == 0 || self.max_enum_values > 256 {
            problems.push((
                "maxEnumValues",
                format!("must be between 1 and 256, got {}", self.max_enum_values),
            ));
        }
        if self.model_file.is_some() && self.persist_seconds == 0 {
            problems.push((
                "persistSeconds",
                "must be at least 1 when modelFile is set".to_owned(),
            ));
        }
        if self.max_tracked_clients == 0 {
            problems.push(("maxTrackedClients", "must be at least 1".to_owned()));
        }
        problems
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
    /// After a high-severity finding of this detector that blocks, the session (and, for
    /// credential stuffing, the client address) is quarantined this long: every request of it
    /// is refused (`Enforce`) or logged (`Monitor`), so that an attacker caught once does not
    /// simply change path. `0s` turns it off. When unset: [`DEFAULT_QUARANTINE`] for the
    /// detectors whose findings rest on many requests measured against peers (enumeration,
    /// credential stuffing), off for those that judge one request or a rate (request shape,
    /// unlikely sequence, unknown endpoint, volume): one unusual honest request should cost
    /// that request, not the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Duration>,
}

/// How long a session is quarantined after a blocked high-severity finding of enumeration or
/// credential stuffing, unless configured.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(15 * 60);

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            action: Action::Log,
            sensitivity: Sensitivity::Medium,
            quarantine: None,
        }
    }
}

/// Per learned detector: action, sensitivity and quarantine.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectorsConfig {
    pub shadow_endpoint: DetectorConfig,
    pub request_shape: DetectorConfig,
    pub unlikely_sequence: DetectorConfig,
    pub volume: DetectorConfig,
    pub enumeration: DetectorConfig,
    pub credential_stuffing: DetectorConfig,
    /// Answers that expose more than the operation's answers were learned to (see
    /// `detect::exposure`); on `Block` in `Enforce` such an answer is withheld.
    pub exposure: DetectorConfig,
    /// Values of no learned origin in the session: a claim of the token, an earlier answer or
    /// request (BOLA from the first request, see `detect::lineage`).
    pub identity_lineage: DetectorConfig,
}

impl DetectorsConfig {
    /// Every detector with the same action (used by tests and the evaluation).
    pub fn all(action: Action) -> Self {
        let mut all = Self::default();
        for d in [
            &mut all.shadow_endpoint,
            &mut all.request_shape,
            &mut all.unlikely_sequence,
            &mut all.volume,
            &mut all.enumeration,
            &mut all.credential_stuffing,
            &mut all.exposure,
            &mut all.identity_lineage,
        ] {
            d.action = action;
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse_from_yaml() {
        assert!(LearningConfig::default().problems().is_empty());
        let parsed: LearningConfig =
            serde_yaml_ng::from_str("minSessions: 10\nvolumeWindow: 5m\nsequenceOrder: 4\n")
                .unwrap();
        assert_eq!(parsed.min_sessions, 10);
        assert_eq!(parsed.volume_window, Duration::from_secs(300));
        assert_eq!(parsed.min_requests, 1000);
        let bad = LearningConfig {
            sequence_order: 0,
            ..LearningConfig::default()
        };
        assert_eq!(bad.problems()[0].0, "sequenceOrder");
    }
}
