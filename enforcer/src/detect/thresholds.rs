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

/// Session windows that must reach a count before a percentile may rest on it (anti-poisoning).
///
/// A session window adds at most one to each count of a [`ReachHistogram`], so this is a
/// per-session contribution cap expressed on the tail: with few windows (the model is young,
/// or the operation rare) the p99 would be the largest count of a single window, and one early
/// abusive session — a scraper, an enumerator, learned before any detector was mature — would
/// set the threshold that later hides its repeat. Requiring the tail to be reached by more than
/// this many windows means one or two sessions can never define it.
pub const MIN_TAIL_SUPPORT: u64 = 3;

/// The quantile actually used for `q`: `q`, or lower when `windows` is small, so that more than
/// [`MIN_TAIL_SUPPORT`] windows lie at or beyond it.
pub fn supported_quantile(q: f64, windows: u64) -> f64 {
    if windows == 0 {
        return q;
    }
    q.min(1.0 - MIN_TAIL_SUPPORT as f64 / windows as f64)
        .max(0.5)
}

impl Percentiles {
    pub fn of(histogram: &ReachHistogram) -> Self {
        Self::among(histogram, histogram.windows())
    }

    /// The percentiles among `windows` windows, those the histogram does not count at 0.
    pub fn among(histogram: &ReachHistogram, windows: u64) -> Self {
        let windows = windows.max(histogram.windows());
        Self {
            p50: histogram.quantile_among(0.5, windows),
            p90: histogram.quantile_among(supported_quantile(0.9, windows), windows),
            p99: histogram.quantile_among(supported_quantile(0.99, windows), windows),
            windows,
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

/// Threshold of the enumeration detector on distinct objects per session window: like
/// [`peer_threshold`] (twice the peers' p99 or p99 + 4 at medium sensitivity), with a lower
/// floor — objects are counted exactly per session, and honest sessions touch their own few
/// (p99 of 1–3 is typical), so the learned part decides, not the floor.
pub fn object_threshold(p99: u32, sensitivity: Sensitivity) -> u32 {
    let (ratio, margin, floor) = match sensitivity {
        Sensitivity::Low => (3.0, 8, 12),
        Sensitivity::Medium => (2.0, 4, 6),
        Sensitivity::High => (1.5, 2, 4),
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

/// Failures among `attempts` recent authentication attempts (API-wide, one operation) above
/// which the window is a credential-stuffing surge, given the learned failure rate `rate` of
/// that operation: at least `ratio` times the expected failures, at least `z` standard
/// deviations above them (binomial), and never below a floor.
pub fn surge_threshold(attempts: u32, rate: f64, sensitivity: Sensitivity) -> u32 {
    let (ratio, z, floor) = match sensitivity {
        Sensitivity::Low => (5.0, 6.0, 20),
        Sensitivity::Medium => (3.0, 4.0, 10),
        Sensitivity::High => (2.0, 3.0, 6),
    };
    let rate = rate.clamp(0.0, 1.0);
    let expected = f64::from(attempts) * rate;
    let deviation = (expected * (1.0 - rate)).sqrt();
    let by_ratio = (expected * ratio).ceil() as u32;
    let by_deviation = (expected + z * deviation).ceil() as u32;
    by_ratio.max(by_deviation).max(floor)
}

/// Distinct client addresses failing for one identity in one window from which the identity
/// counts as attacked from many places (honest users retry from the address they are on).
pub fn identity_spread_threshold(sensitivity: Sensitivity) -> u32 {
    match sensitivity {
        Sensitivity::Low => 8,
        Sensitivity::Medium => 4,
        Sensitivity::High => 3,
    }
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
        // 128 attempts at a learned 4% failure rate: 5.1 expected, threshold 3× that.
        assert_eq!(surge_threshold(128, 0.04, Sensitivity::Medium), 16);
        assert_eq!(surge_threshold(20, 0.04, Sensitivity::Medium), 10);
        assert_eq!(surge_threshold(128, 0.5, Sensitivity::Medium), 192);
        assert_eq!(identity_spread_threshold(Sensitivity::Medium), 4);
        assert_eq!(object_threshold(3, Sensitivity::Medium), 7);
        assert_eq!(object_threshold(0, Sensitivity::Medium), 6);
        assert_eq!(object_threshold(30, Sensitivity::Medium), 60);
    }

    #[test]
    fn one_early_abusive_session_cannot_set_the_tail() {
        use crate::model::ReachHistogram;
        // 60 honest session windows touching 1–3 objects, and one enumerator reaching 500
        // during learning, before any baseline was mature.
        let mut h = ReachHistogram::default();
        for i in 0..60u32 {
            for count in 1..=(1 + i % 3) {
                h.record_reached(count);
            }
        }
        let honest = Percentiles::of(&h);
        for count in 1..=500 {
            h.record_reached(count);
        }
        let poisoned = Percentiles::of(&h);
        assert_eq!(poisoned.p99, honest.p99);
        assert_eq!(poisoned.p99, 3);
        assert_eq!(object_threshold(poisoned.p99, Sensitivity::Medium), 7);
        // Three such sessions still cannot; a fourth (a real population) can.
        for _ in 0..2 {
            for count in 1..=500 {
                h.record_reached(count);
            }
        }
        assert_eq!(Percentiles::of(&h).p99, 3);
        for count in 1..=500 {
            h.record_reached(count);
        }
        assert!(Percentiles::of(&h).p99 >= 448);
        // With many windows the plain p99 applies.
        assert!((supported_quantile(0.99, 1000) - 0.99).abs() < 1e-12);
        assert!((supported_quantile(0.99, 60) - 0.95).abs() < 1e-12);
    }
}
