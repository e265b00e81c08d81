//! Peer baselines frozen for one counting window.
//!
//! The per-window detectors (volume, enumeration, not-found, credential stuffing) compare a
//! session with the distribution of its peers. If that distribution were read live, a group of
//! concurrent attackers — each still under the threshold — would raise it while they climb
//! (every count they reach is learned), and the threshold would creep ahead of them. So the
//! percentiles are recomputed only once per counting window: within a window, thresholds do not
//! move, a session that crosses one is flagged, and what it taught the model in that window is
//! taken back.
//!
//! One exception: a baseline frozen while its evidence was thin is replaced within the window
//! once the model holds at least [`GROWTH_TO_REPLACE`] times the session windows it was
//! computed from. A baseline becomes mature at `minVolumeWindows` (50) windows, where its p99
//! is the tail of a few sessions (`thresholds::supported_quantile` even lowers it, so that one
//! early abuser cannot set it); frozen until the next clock window, that thin estimate judged
//! honest sessions for up to a whole window while the model already knew hundreds more (in the
//! simulator, whose run fits in one 10-minute window, whether a window boundary fell into the
//! judged phase decided whether returning readers who opened eight or nine books were
//! flagged). Sessions climbing towards a threshold cannot use this to raise it quickly: they
//! must add as many session windows as the whole baseline already had, and what each of them
//! counts above the current threshold is not learned (`thresholds::learning_cap`).

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

/// How many times the session windows a frozen baseline was computed from the model must hold
/// before the baseline is replaced within a counting window.
pub const GROWTH_TO_REPLACE: u64 = 2;

fn mature(histogram: &ReachHistogram, min_windows: u64) -> Option<Percentiles> {
    (histogram.windows() >= min_windows).then(|| Percentiles::of(histogram))
}

/// The baseline to use within a counting window: the frozen one, unless there is none yet or
/// the fresh one rests on at least [`GROWTH_TO_REPLACE`] times its session windows.
fn keep_or_replace(frozen: Option<Percentiles>, fresh: Option<Percentiles>) -> Option<Percentiles> {
    match (frozen, fresh) {
        (Some(f), Some(n)) if n.windows >= f.windows.saturating_mul(GROWTH_TO_REPLACE) => Some(n),
        (Some(f), _) => Some(f),
        (None, n) => n,
    }
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
                    // Among every window that used the operation: a session that named no
                    // object it was not shown (see `detect::enumeration`) touched 0, and
                    // the baseline must not wait for the few that did.
                    objects: (op.volume.windows() >= min_windows)
                        .then(|| Percentiles::among(&op.objects, op.volume.windows())),
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

    /// Keeps the baselines current: recomputed when a new window starts; within a window (at
    /// most once per second) baselines that became mature are added and frozen ones stay,
    /// unless their evidence has grown [`GROWTH_TO_REPLACE`]-fold (see the module docs).
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
            frozen.volume = keep_or_replace(frozen.volume, baseline.volume);
            frozen.objects = keep_or_replace(frozen.objects, baseline.objects);
        }
        self.not_found = keep_or_replace(self.not_found, fresh.not_found);
        self.auth_failures = keep_or_replace(self.auth_failures, fresh.auth_failures);
        self.auth_identities = keep_or_replace(self.auth_identities, fresh.auth_identities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentiles(p99: u32, windows: u64) -> Option<Percentiles> {
        Some(Percentiles {
            p50: 1,
            p90: p99,
            p99,
            windows,
        })
    }

    #[test]
    fn a_thin_frozen_baseline_is_replaced_once_its_evidence_doubled() {
        // Frozen at maturity on 50 windows: kept while the model holds fewer than 100, even if
        // the fresh p99 moved (sessions climbing towards the threshold within the window).
        assert_eq!(
            keep_or_replace(percentiles(3, 50), percentiles(9, 99)),
            percentiles(3, 50)
        );
        // Twice the evidence: the fresh baseline replaces it, whichever way it moved.
        assert_eq!(
            keep_or_replace(percentiles(3, 50), percentiles(5, 100)),
            percentiles(5, 100)
        );
        assert_eq!(
            keep_or_replace(percentiles(5, 100), percentiles(4, 250)),
            percentiles(4, 250)
        );
        // A baseline that was not mature is added; one that stopped being mature (the model
        // aged) stays frozen until the window ends.
        assert_eq!(
            keep_or_replace(None, percentiles(3, 50)),
            percentiles(3, 50)
        );
        assert_eq!(
            keep_or_replace(percentiles(3, 50), None),
            percentiles(3, 50)
        );
        assert_eq!(keep_or_replace(None, None), None);
    }

    #[test]
    fn refresh_within_a_window_replaces_only_grown_baselines() {
        let mut model = LearnedModel::default();
        let op = model.op_index_or_insert("GET /books/{id}", 1).unwrap();
        let record = |model: &mut LearnedModel, windows: u32, objects: u32| {
            let stats = model.operation_mut(op).unwrap();
            for _ in 0..windows {
                stats.volume.record_reached(1);
                for count in 1..=objects {
                    stats.objects.record_reached(count);
                }
            }
        };
        record(&mut model, 50, 3);
        let window_ms = 600_000;
        let start = 6_000_000;
        let mut baselines = Baselines::compute(&model, 50, start);
        assert_eq!(baselines.operation(op).objects.unwrap().windows, 50);
        // 40 more windows reaching 6 objects: the frozen baseline stays (not yet doubled).
        record(&mut model, 40, 6);
        baselines.refresh(&model, 50, start + 2_000, window_ms);
        assert_eq!(baselines.operation(op).objects.unwrap().windows, 50);
        assert_eq!(baselines.operation(op).objects.unwrap().p99, 3);
        // Ten more: 100 windows, twice the evidence; replaced within the same window.
        record(&mut model, 10, 6);
        baselines.refresh(&model, 50, start + 4_000, window_ms);
        let objects = baselines.operation(op).objects.unwrap();
        assert_eq!(objects.windows, 100);
        assert!(objects.p99 >= 6, "{objects:?}");
        assert!(!baselines.stale(start + 4_000, window_ms));
    }

    #[test]
    fn windows_that_named_no_object_count_at_zero() {
        let mut model = LearnedModel::default();
        let op = model.op_index_or_insert("GET /orders/{id}", 1).unwrap();
        let stats = model.operation_mut(op).unwrap();
        // 200 windows used the operation; only 3 of them named objects (5 each) the session
        // was not shown: the others touched none.
        for _ in 0..200 {
            stats.volume.record_reached(1);
        }
        for _ in 0..3 {
            for count in 1..=5 {
                stats.objects.record_reached(count);
            }
        }
        let objects = Baselines::compute(&model, 50, 6_000_000)
            .operation(op)
            .objects
            .expect("mature: 200 windows");
        assert_eq!(objects.windows, 200);
        assert!(objects.p99 <= 5, "{objects:?}");
        assert_eq!(objects.p90, 0, "{objects:?}");
        // Without windows of use, no baseline, however many objects were counted.
        let mut model = LearnedModel::default();
        let op = model.op_index_or_insert("GET /orders/{id}", 1).unwrap();
        model.operation_mut(op).unwrap().objects.record_reached(1);
        assert!(
            Baselines::compute(&model, 50, 6_000_000)
                .operation(op)
                .objects
                .is_none()
        );
    }
}
