//! What the model knows about one operation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::ReachHistogram;
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
    pub status: BTreeMap<u16, u64>,
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

    /// Whether this operation authenticates: it carries credentials, or a notable share of
    /// its answers are 401/403 (learned, never from a path name).
    pub fn is_auth_like(&self) -> bool {
        let responses = self.responses();
        self.credential_requests > 0 || (responses >= 20 && self.auth_failures * 10 >= responses)
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
    }
}
