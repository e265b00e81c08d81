//! How each sensitivity turns a learned baseline into a threshold. Every formula here is
//! documented in `docs/detection.md`; none is tuned to a particular API: thresholds come from
//! the learned peer distribution, with floors so that a thin or very uniform baseline does not
//! flag honest outliers.

use crate::config::Sensitivity;
use crate::model::ReachHistogram;

/// Percentiles of a per-window count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub windows: u64,
}

impl Percentiles {
    pub fn of(histogram: &ReachHistogram) -> Self {
        Self {
            p50: histogram.quantile(0.5),
            p90: histogram.quantile(0.9),
            p99: histogram.quantile(0.99),
            windows: histogram.windows(),
        }
    }
}

/// Suggested per-session volume limit for one operation and one window (as shown in the model
/// view): `max(⌈1.5 × p99⌉, p99 + 3 × max(p90 − p50, 1))`, which grows with the spread of the
/// distribution, not only with its tail.
pub fn suggested_volume_limit(p: &Percentiles) -> u32 {
    let spread = p.p90.saturating_sub(p.p50).max(1);
    let by_ratio = (f64::from(p.p99) * 1.5).ceil() as u32;
    by_ratio.max(p.p99.saturating_add(spread.saturating_mul(3)))
}

/// Volume threshold the detector enforces: the suggested limit scaled by sensitivity, never
/// below a floor.
pub fn volume_threshold(p: &Percentiles, sensitivity: Sensitivity) -> u32 {
    let suggested = suggested_volume_limit(p);
    let (scaled, floor) = match sensitivity {
        Sensitivity::Low => (suggested.saturating_mul(2), 50),
        Sensitivity::Medium => (suggested, 20),
        Sensitivity::High => (suggested.max(p.p99.saturating_add(1)), 10),
    };
    scaled.max(floor)
}

/// The largest per-window count a session may teach a baseline: once the baseline is mature
/// (frozen for the window, see `baselines`), counts above the detector's current threshold are not learned, so that
/// sessions heading for a finding (scrapers, enumerators, stuffers before they cross the
/// line) cannot raise their own threshold. Before that, everything is learned.
pub fn learning_cap(frozen: Option<Percentiles>, threshold: impl Fn(&Percentiles) -> u32) -> u32 {
    frozen.map_or(u32::MAX, |p| threshold(&p))
}

/// Confidence of a learned volume limit: grows with the number of session windows observed.
pub fn confidence(windows: u64) -> &'static str {
    match windows {
        0..=49 => "low",
        50..=499 => "medium",
        _ => "high",
    }
}

/// Threshold of the peer-comparison detectors (distinct objects, not-found answers,
/// authentication failures per window): far above the peers' p99, never below a floor.
pub fn peer_threshold(p99: u32, sensitivity: Sensitivity) -> u32 {
    let (ratio, margin, floor) = match sensitivity {
        Sensitivity::Low => (3.0, 8, 20),
        Sensitivity::Medium => (2.0, 4, 10),
        Sensitivity::High => (1.5, 2, 6),
    };
    let by_ratio = (f64::from(p99) * ratio).ceil() as u32;
    by_ratio.max(p99.saturating_add(margin)).max(floor)
}

/// Threshold on distinct identities failing authentication from one client in one window.
pub fn identity_threshold(p99: u32, sensitivity: Sensitivity) -> u32 {
    let floor = match sensitivity {
        Sensitivity::Low => 8,
        Sensitivity::Medium => 4,
        Sensitivity::High => 3,
    };
    p99.saturating_add(2).max(floor)
}

/// Sequence detector: (credibility of the one-sided upper bound, largest upper bound of
/// P(operation | context) that still counts as improbable).
pub fn sequence_bounds(sensitivity: Sensitivity) -> (f64, f64) {
    match sensitivity {
        Sensitivity::Low => (0.99, 0.002),
        Sensitivity::Medium => (0.95, 0.01),
        Sensitivity::High => (0.90, 0.02),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_have_floors_and_follow_spread() {
        let narrow = Percentiles {
            p50: 1,
            p90: 2,
            p99: 3,
            windows: 500,
        };
        assert_eq!(suggested_volume_limit(&narrow), 6);
        assert_eq!(volume_threshold(&narrow, Sensitivity::Medium), 20);
        let wide = Percentiles {
            p50: 5,
            p90: 30,
            p99: 60,
            windows: 500,
        };
        assert_eq!(suggested_volume_limit(&wide), 135);
        assert_eq!(volume_threshold(&wide, Sensitivity::Medium), 135);
        assert_eq!(volume_threshold(&wide, Sensitivity::Low), 270);
        assert_eq!(peer_threshold(3, Sensitivity::Medium), 10);
        assert_eq!(peer_threshold(30, Sensitivity::Medium), 60);
        assert_eq!(identity_threshold(1, Sensitivity::Medium), 4);
        assert_eq!(confidence(10), "low");
    }
}
