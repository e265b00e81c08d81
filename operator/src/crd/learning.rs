//! `spec.learning` and `spec.detectors`: when the learned model may act, and what each detector
//! does when it fires.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Action;
use super::limits::{DURATION_MAX_LENGTH, DURATION_PATTERN};

/// Maturity thresholds of the learned model. A detector stays silent (and says in status what
/// it still waits for) until the model has seen enough traffic to know what normal looks like;
/// acting on a thin model would flag honest users.
///
/// The defaults let a small API (hundreds of sessions) become protected within minutes of
/// traffic; Cloudflare's figures (500 requests per endpoint over days, 50 sessions a day for
/// volumes) are far more conservative and can be set here.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct LearningSpec {
    /// Requests the model must have learned from (successful, unflagged) before any learned
    /// detector may act. Default 1000.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub min_requests: i64,
    /// Distinct sessions the model must have learned from before any learned detector may act;
    /// peer comparisons (volume, enumeration) need a population. Default 50.
    #[serde(default = "default_min_sessions")]
    #[schemars(range(min = 0, max = 100_000_000))]
    pub min_sessions: i64,
    /// How far back the model remembers: counts older than this age out, so that the model
    /// follows changes of the API and its use. A duration such as `24h` (1m to 720h). Default
    /// `24h`.
    #[serde(default = "default_window")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('720h')")
        .message("learning.window must be between 1m and 720h"))]
    pub window: String,
    /// Longest context (previous operations) the sequence model conditions on, as in a
    /// variable-order Markov chain; longer contexts are kept only where they predict better
    /// than shorter ones. Default 8.
    #[serde(default = "default_sequence_order")]
    #[schemars(range(min = 1, max = 8))]
    pub sequence_order: i32,
    /// A pause at least this long inside a session starts a new journey for the sequence
    /// model: what follows is judged like the start of a task, so a customer who comes back
    /// later is not compared with the end of their previous task. A duration such as `5m`
    /// (1s to 24h). Default `5m`.
    #[serde(default = "default_journey_gap")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("learning.journeyGap must be between 1s and 24h"))]
    pub journey_gap: String,
}

impl Default for LearningSpec {
    fn default() -> Self {
        Self {
            min_requests: default_min_requests(),
            min_sessions: default_min_sessions(),
            window: default_window(),
            sequence_order: default_sequence_order(),
            journey_gap: default_journey_gap(),
        }
    }
}

fn default_min_requests() -> i64 {
    1000
}

fn default_min_sessions() -> i64 {
    50
}

fn default_window() -> String {
    "24h".to_owned()
}

fn default_sequence_order() -> i32 {
    8
}

fn default_journey_gap() -> String {
    "5m".to_owned()
}

/// The learned detectors, each with its own action and sensitivity. Declared `SequenceRule`s
/// and `rateLimits` carry their own actions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DetectorsSpec {
    /// Requests to endpoints the mature model has never seen (shadow API probing, fuzzing).
    #[serde(default)]
    pub shadow_endpoint: DetectorSpec,
    /// Requests whose shape deviates from the operation's learned or declared shape: unknown
    /// fields (mass assignment), type confusion, out-of-profile values (injection payloads),
    /// missing fields.
    #[serde(default)]
    pub request_shape: DetectorSpec,
    /// An operation that is very unlikely after the session's recent operations (for example a
    /// transfer with no preceding balance lookup).
    #[serde(default)]
    pub unlikely_sequence: DetectorSpec,
    /// A session sending more requests to an operation than the learned threshold in a
    /// 10-minute window (scraping); answered with 429 when blocking.
    #[serde(default)]
    pub volume: DetectorSpec,
    /// A session touching many more distinct objects of an operation than its peers
    /// (object-level authorization abuse, BOLA), including lookups by phone number or e-mail.
    #[serde(default)]
    pub enumeration: DetectorSpec,
    /// Many authentication failures from one client address or across many identities.
    #[serde(default)]
    pub credential_stuffing: DetectorSpec,
    /// Answers that expose more than the operation's answers were learned to: a class of
    /// sensitive values they never carried (passwords or hashes, tokens, card numbers,
    /// national-id numbers, e-mail addresses, phone numbers), or many times their records (mass
    /// export). With `Block` in `Enforce` the answer is withheld; an answer that streams is
    /// then held back up to 64 KiB before it is relayed.
    #[serde(default)]
    pub exposure: DetectorSpec,
    /// A request naming an object (a user in the path, an account in the body) that no claim
    /// of the session's token, no earlier answer and no earlier request of the session
    /// carried, where the learned values of that parameter always had such an origin (BOLA
    /// from the first request).
    #[serde(default)]
    pub identity_lineage: DetectorSpec,
}

/// Settings of one learned detector.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DetectorSpec {
    /// Whether the detector runs at all. Default `true`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// What a finding of this detector does. Default `Log`: start by watching what a detector
    /// would block, then switch to `Block`.
    #[serde(default)]
    pub action: Action,
    /// How far from the learned baseline a request must be before it is flagged: `Low` flags
    /// only blatant deviations, `High` flags earlier at the price of more false positives.
    /// Default `Medium`.
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// After a high-severity finding of this detector that blocks, the session (and, for
    /// credential stuffing, the client address) is quarantined this long: every request of it
    /// is refused in `Enforce` with a problem body naming the incident, and logged in
    /// `Monitor`. A duration such as `15m` (0s to 24h); `0s` turns it off. Default `15m` for
    /// `enumeration` and `credentialStuffing` (their findings rest on many requests measured
    /// against peers), off for the others (one unusual honest request should cost that
    /// request, not the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')")
        .message("detectors.*.quarantine must be at most 24h"))]
    pub quarantine: Option<String>,
}

impl Default for DetectorSpec {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            action: Action::Log,
            sensitivity: Sensitivity::Medium,
            quarantine: None,
        }
    }
}

fn default_enabled() -> bool {
    true
}

/// Detector sensitivity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sensitivity {
    /// Flag only requests far outside the baseline; fewest false positives.
    Low,
    /// The balance the defaults are tuned for.
    #[default]
    Medium,
    /// Flag smaller deviations; catches low-and-slow abuse earlier, flags more honest outliers.
    High,
}
