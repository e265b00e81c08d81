//! What the model knows about one operation.

use serde::{Deserialize, Serialize};

use super::exposure::ExposureCounts;
use super::flat::FlatMap;
use super::histogram::ReachHistogram;
use super::lineage::OperationLineage;
use super::shape::{ShapeCaps, ShapeProfile, add_map, sub_map};

/// Most distinct status codes kept per operation; the rest count under 0.
const MAX_STATUS_CODES: usize = 32;

/// Learned statistics of one operation (`METHOD /templated/path`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStats {
    pub template: String,
    /// Successful (2xx/3xx), unflagged requests learned from.
    pub requests: u64,
    /// Responses to unflagged requests by status code (0 = other codes beyond the cap).
    #[serde(default)]
    pub status: FlatMap<u16, u64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// When the operation was first learned after the model was mature (a *discovered*
    /// operation: a new release's endpoint, the long tail of rare operations); 0 when it was
    /// learned while the model was still learning. Merged as the earliest non-zero time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discovered_ms: u64,
    #[serde(default)]
    pub shape: ShapeProfile,
    /// Requests per session per 10-minute window.
    #[serde(default)]
    pub volume: ReachHistogram,
    /// Distinct object identifiers per session per window.
    #[serde(default)]
    pub objects: ReachHistogram,
    /// Requests that carried a credential field (password, PIN, OTP, …).
    #[serde(default)]
    pub credential_requests: u64,
    /// 401/403 answers.
    #[serde(default)]
    pub auth_failures: u64,
    /// Requests that named objects (identifiers in the path, query or body).
    #[serde(default)]
    pub object_lookups: u64,
    /// What the answers whose body was read said (see `detect::outcome`).
    #[serde(default)]
    pub outcomes: OutcomeCounts,
    /// What the 2xx answers exposed (see `detect::exposure`).
    #[serde(default, skip_serializing_if = "ExposureCounts::is_zero")]
    pub exposure: ExposureCounts,
    /// Where its parameters' values come from within a session (see `detect::lineage`).
    /// Absent from models written before it (read as empty, same format).
    #[serde(default, skip_serializing_if = "OperationLineage::is_zero")]
    pub lineage: OperationLineage,
    /// How often a state-changing request repeats the session's previous successful one
    /// exactly (see `detect::replay`). Absent from models written before it (same format).
    #[serde(default, skip_serializing_if = "RepeatCounts::is_zero")]
    pub repeats: RepeatCounts,
}

/// Learned state-changing requests (POST, PUT, PATCH, DELETE) of one operation and, of them,
/// those identical (path, query and body) to the session's previous successful request of the
/// operation. Plain counts: merged across replicas by addition, like the rest of the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepeatCounts {
    pub requests: u64,
    pub identical: u64,
}

impl RepeatCounts {
    pub fn record(&mut self, identical: bool) {
        self.requests += 1;
        if identical {
            self.identical += 1;
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.identical += other.identical;
    }

    fn subtract(&mut self, base: &Self) {
        self.requests = self.requests.saturating_sub(base.requests);
        self.identical = self.identical.saturating_sub(base.identical);
    }

    fn halve(&mut self) {
        self.requests /= 2;
        self.identical /= 2;
    }

    pub fn is_zero(&self) -> bool {
        self.requests == 0 && self.identical == 0
    }
}

/// Answers of one operation whose body the analyzer read, by what they said. Plain counts:
/// merged across replicas by addition, like the rest of the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeCounts {
    /// 2xx/3xx answers whose body was read as a JSON object.
    pub read: u64,
    /// Of those, answers whose body said they failed and that granted nothing.
    pub error_answers: u64,
    /// Answers that granted a credential (a `Set-Cookie`, a token or session field).
    pub credential_answers: u64,
}

/// Answers an operation needs before its learned outcome shape is trusted.
pub const MIN_OUTCOME_SUPPORT: u64 = 20;

impl OutcomeCounts {
    /// Whether the operation's successful answers are learned to grant a credential: at least
    /// [`MIN_OUTCOME_SUPPORT`] did, and most read answers that did not say they failed.
    pub fn grants_credentials(&self) -> bool {
        self.credential_answers >= MIN_OUTCOME_SUPPORT
            && self.credential_answers.saturating_mul(2)
                >= self.read.saturating_sub(self.error_answers)
    }

    fn merge(&mut self, other: &Self) {
        self.read += other.read;
        self.error_answers += other.error_answers;
        self.credential_answers += other.credential_answers;
    }

    fn subtract(&mut self, base: &Self) {
        self.read = self.read.saturating_sub(base.read);
        self.error_answers = self.error_answers.saturating_sub(base.error_answers);
        self.credential_answers = self
            .credential_answers
            .saturating_sub(base.credential_answers);
    }

    fn halve(&mut self) {
        self.read /= 2;
        self.error_answers /= 2;
        self.credential_answers /= 2;
    }

    pub fn is_zero(&self) -> bool {
        self.read == 0 && self.error_answers == 0 && self.credential_answers == 0
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl OperationStats {
    pub fn new(template: &str, now_ms: u64) -> Self {
        Self {
            template: template.to_owned(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            ..Self::default()
        }
    }

    pub fn record_status(&mut self, status: u16) {
        if let Some(count) = self.status.get_mut(&status) {
            *count += 1;
        } else if self.status.len() < MAX_STATUS_CODES {
            self.status.insert(status, 1);
        } else {
            *self.status.entry(0).or_insert(0) += 1;
        }
    }

    /// Responses of any status recorded.
    pub fn responses(&self) -> u64 {
        self.status.values().sum()
    }

    /// Whether this operation authenticates: it carries credentials, a notable share of its
    /// answers are 401/403, or its answers grant credentials (learned, never from a path name).
    pub fn is_auth_like(&self) -> bool {
        let responses = self.responses();
        self.credential_requests > 0
            || (responses >= 20 && self.auth_failures * 10 >= responses)
            || self.outcomes.grants_credentials()
    }

    /// Failed answers learned: 401/403, 2xx answers whose body said they failed, and (where
    /// answers are learned to grant credentials) read 2xx answers that granted none.
    pub fn failures(&self) -> u64 {
        let o = &self.outcomes;
        let ungranted = if o.grants_credentials() {
            o.read
                .saturating_sub(o.error_answers)
                .saturating_sub(o.credential_answers)
        } else {
            0
        };
        self.auth_failures + o.error_answers + ungranted
    }

    pub fn merge(&mut self, other: &Self, caps: &ShapeCaps) {
        self.requests += other.requests;
        add_map(&mut self.status, &other.status);
        self.first_seen_ms = match (self.first_seen_ms, other.first_seen_ms) {
            (0, theirs) => theirs,
            (mine, 0) => mine,
            (mine, theirs) => mine.min(theirs),
        };
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.discovered_ms = match (self.discovered_ms, other.discovered_ms) {
            (0, theirs) => theirs,
            (mine, 0) => mine,
            (mine, theirs) => mine.min(theirs),
        };
        self.shape.merge(&other.shape, caps);
        self.volume.merge(&other.volume);
        self.objects.merge(&other.objects);
        self.credential_requests += other.credential_requests;
        self.auth_failures += other.auth_failures;
        self.object_lookups += other.object_lookups;
        self.outcomes.merge(&other.outcomes);
        self.exposure.merge(&other.exposure);
        self.lineage.merge(&other.lineage);
        self.repeats.add(&other.repeats);
    }

    pub fn subtract(&mut self, base: &Self) {
        self.requests = self.requests.saturating_sub(base.requests);
        sub_map(&mut self.status, &base.status);
        self.shape.subtract(&base.shape);
        self.volume.subtract(&base.volume);
        self.objects.subtract(&base.objects);
        self.credential_requests = self
            .credential_requests
            .saturating_sub(base.credential_requests);
        self.auth_failures = self.auth_failures.saturating_sub(base.auth_failures);
        self.object_lookups = self.object_lookups.saturating_sub(base.object_lookups);
        self.outcomes.subtract(&base.outcomes);
        self.exposure.subtract(&base.exposure);
        self.lineage.subtract(&base.lineage);
        self.repeats.subtract(&base.repeats);
    }

    pub fn halve(&mut self) {
        self.requests /= 2;
        for v in self.status.values_mut() {
            *v /= 2;
        }
        self.volume.halve();
        self.objects.halve();
        self.credential_requests /= 2;
        self.auth_failures /= 2;
        self.object_lookups /= 2;
        self.outcomes.halve();
        self.exposure.halve();
        self.lineage.halve();
        self.repeats.halve();
    }
}
