//! Peer baselines frozen for one counting window.
//!
//! The per-window detectors (volume, enumeration, not-found, credential stuffing) compare a
//! session with the distribution of its peers. If that distribution were read live, a group of
//! concurrent attackers — each still under the threshold — would raise it while they climb
//! (every count they reach is learned), and the threshold would creep ahead of them. So the
//! percentiles are recomputed only once per counting window: within a window, thresholds do not
//! move, a session that crosses one is flagged, and what it taught the model in that window is
//! taken back.

use std::collections::HashMap;

use crate::model::{LearnedModel, ReachHistogram};

use super::thresholds::Percentiles;

/// Percentiles of one operation, when its baseline is mature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationBaseline {
    pub volume: Option<Percentiles>,
    pub objects: Option<Percentiles>,
}

/// Frozen percentiles of every peer distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baselines {
    /// When they were computed (unix ms); 0 = never.
    pub at_ms: u64,
    pub operations: HashMap<u16, OperationBaseline>,
    pub not_found: Option<Percentiles>,
    pub auth_failures: Option<Percentiles>,
    pub auth_identities: Option<Percentiles>,
    /// Last time newly mature baselines were added (unix ms).
    pub filled_at_ms: u64,
}

fn mature(histogram: &ReachHistogram, min_windows: u64) -> Option<Percentiles> {
    (histogram.windows() >= min_windows).then(|| Percentiles::of(histogram))
}

impl Baselines {
    pub fn compute(model: &LearnedModel, min_windows: u64, now_ms: u64) -> Self {
        let operations = model
            .operations
            .iter()
            .enumerate()
            .filter_map(|(i, op)| {
                let baseline = OperationBaseline {
                    volume: mature(&op.volume, min_windows),
                    objects: mature(&op.objects, min_windows),
                };
                let index = u16::try_from(i).ok()?;
                (baseline != OperationBaseline::default()).then_some((index, baseline))
            })
            .collect();
        Self {
            at_ms: now_ms,
            operations,
            not_found: mature(&model.not_found, min_windows),
            auth_failures: mature(&model.auth_failures, min_windows),
            auth_identities: mature(&model.auth_identities, min_windows),
            filled_at_ms: now_ms,
        }
    }

    pub fn operation(&self, op: u16) -> OperationBaseline {
        self.operations.get(&op).copied().unwrap_or_default()
    }

    /// Whether they should be recomputed at `now_ms` (once per counting window).
    pub fn stale(&self, now_ms: u64, window_ms: u64) -> bool {
        self.at_ms == 0
            || now_ms / window_ms.max(1) != self.at_ms / window_ms.max(1)
            || now_ms < self.at_ms
    }

    /// Whether `refresh` would change anything now (checked under the model's read lock, so
    /// that the write lock is taken only when it will).
    pub fn due(&self, now_ms: u64, window_ms: u64) -> bool {
        self.stale(now_ms, window_ms) || now_ms >= self.filled_at_ms.saturating_add(1000)
    }

    /// Keeps the baselines current: recomputed when a new window starts; within a window only
    /// baselines that became mature are added (at most once per second), frozen ones stay.
    pub fn refresh(&mut self, model: &LearnedModel, min_windows: u64, now_ms: u64, window_ms: u64) {
        if self.stale(now_ms, window_ms) {
            *self = Self::compute(model, min_windows, now_ms);
            self.filled_at_ms = now_ms;
            return;
        }
        if now_ms < self.filled_at_ms.saturating_add(1000) {
            return;
        }
        self.filled_at_ms = now_ms;
        let fresh = Self::compute(model, min_windows, now_ms);
        for (op, baseline) in fresh.operations {
            let frozen = self.operations.entry(op).or_default();
            frozen.volume = frozen.volume.or(baseline.volume);
            frozen.objects = frozen.objects.or(baseline.objects);
        }
        self.not_found = self.not_found.or(fresh.not_found);
        self.auth_failures = self.auth_failures.or(fresh.auth_failures);
        self.auth_identities = self.auth_identities.or(fresh.auth_identities);
    }
}
