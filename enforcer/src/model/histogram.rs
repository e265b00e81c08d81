//! Count histograms that merge exactly by addition.
//!
//! [`ReachHistogram`] records, for per-window counters (requests of one session to one
//! operation in one 10-minute window, distinct objects it touched, authentication failures of
//! one client), how many windows *reached* each count. Only increments are ever needed — when a
//! window's counter reaches a bucket bound its reach is incremented once — so the histogram is
//! always up to date without flushing windows at their end, and replicas merge by adding.
//! [`LogHistogram`] counts values in power-of-two (lengths) or power-of-ten (magnitudes) buckets.

use serde::{Deserialize, Serialize};

/// Bucket lower bounds of [`ReachHistogram`]: exact up to 16, then steps of at most 25%.
pub const COUNT_BOUNDS: [u32; 56] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96,
    112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048,
    2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 12288, 16384, 32768, 65536,
];

/// How many windows reached each count bound (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachHistogram {
    /// `reach[i]` = windows whose counter reached `COUNT_BOUNDS[i]`; trailing zeros trimmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<u64>,
}

impl ReachHistogram {
    /// Records that a window's running counter has just become `count` (call once per increment).
    pub fn record_reached(&mut self, count: u32) {
        if let Ok(index) = COUNT_BOUNDS.binary_search(&count) {
            if self.reach.len() <= index {
                self.reach.resize(index + 1, 0);
            }
            self.reach[index] += 1;
        }
    }

    /// Takes back one [`ReachHistogram::record_reached`] (a window that turned out to be abuse).
    pub fn unrecord_reached(&mut self, count: u32) {
        if let Ok(index) = COUNT_BOUNDS.binary_search(&count)
            && let Some(reach) = self.reach.get_mut(index)
        {
            *reach = reach.saturating_sub(1);
            // Trailing zeros trimmed, as everywhere: equal counts, equal histograms.
            trim(&mut self.reach);
        }
    }

    /// Whether no window reached any count.
    pub fn is_empty(&self) -> bool {
        self.reach.iter().all(|&r| r == 0)
    }

    /// Windows observed (those that reached 1).
    pub fn windows(&self) -> u64 {
        self.reach.first().copied().unwrap_or(0)
    }

    /// The `q`-quantile (0 < q < 1) of the per-window count, as the upper end of its bucket:
    /// the largest count `v` such that more than `1 - q` of the windows reached `v`.
    pub fn quantile(&self, q: f64) -> u32 {
        self.quantile_among(q, self.windows())
    }

    /// [`Self::quantile`] among `total` windows, of which those this histogram does not count
    /// stayed at 0 (a `total` below [`Self::windows`] counts as that).
    pub fn quantile_among(&self, q: f64, total: u64) -> u32 {
        let total = total.max(self.windows());
        if total == 0 {
            return 0;
        }
        // Rounded so that 1 − 0.9 does not become 0.09999….
        let tail = ((1.0 - q).clamp(0.0, 1.0) * total as f64 * 1e6).round() / 1e6;
        let mut value = 0;
        for (index, &reached) in self.reach.iter().enumerate() {
            if reached as f64 > tail {
                value = bucket_upper(index);
            } else {
                break;
            }
        }
        value
    }

    pub fn merge(&mut self, other: &Self) {
        add_vec(&mut self.reach, &other.reach);
    }

    pub fn subtract(&mut self, base: &Self) {
        sub_vec(&mut self.reach, &base.reach);
    }

    pub fn halve(&mut self) {
        halve_vec(&mut self.reach);
    }
}

/// Upper end of reach bucket `index` (equal to its lower bound where buckets are exact).
fn bucket_upper(index: usize) -> u32 {
    match COUNT_BOUNDS.get(index + 1) {
        Some(next) => next - 1,
        None => COUNT_BOUNDS[COUNT_BOUNDS.len() - 1],
    }
}

/// Number of buckets of [`LogHistogram`].
pub const LOG_BUCKETS: usize = 24;

/// Counts of values per logarithmic bucket (bucket 0 holds zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistogram {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<u64>,
}

impl LogHistogram {
    /// Power-of-two bucket of a length: 0 → 0, 1 → 1, 2..=3 → 2, 4..=7 → 3, …
    pub fn length_bucket(len: usize) -> usize {
        if len == 0 {
            0
        } else {
            ((usize::BITS - len.leading_zeros()) as usize).min(LOG_BUCKETS - 1)
        }
    }

    /// Largest length that falls in power-of-two bucket `bucket`.
    pub fn length_bucket_upper(bucket: usize) -> usize {
        if bucket == 0 {
            0
        } else {
            (1usize << bucket.min(62)) - 1
        }
    }

    /// Power-of-ten bucket of a magnitude: 0 → 0, (0, 1) → 1, [1, 10) → 2, [10, 100) → 3, …
    pub fn magnitude_bucket(value: f64) -> usize {
        let magnitude = value.abs();
        if magnitude == 0.0 || !magnitude.is_finite() {
            return if magnitude == 0.0 { 0 } else { LOG_BUCKETS - 1 };
        }
        if magnitude < 1.0 {
            return 1;
        }
        let decades = magnitude.log10().floor() as usize;
        (decades + 2).min(LOG_BUCKETS - 1)
    }

    pub fn record(&mut self, bucket: usize) {
        let bucket = bucket.min(LOG_BUCKETS - 1);
        if self.counts.len() <= bucket {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += 1;
    }

    /// Highest bucket with a count, if any.
    pub fn max_bucket(&self) -> Option<usize> {
        self.counts.iter().rposition(|&c| c > 0)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Self) {
        add_vec(&mut self.counts, &other.counts);
    }

    pub fn subtract(&mut self, base: &Self) {
        sub_vec(&mut self.counts, &base.counts);
    }

    pub fn halve(&mut self) {
        halve_vec(&mut self.counts);
    }
}

pub(crate) fn add_vec(target: &mut Vec<u64>, other: &[u64]) {
    if target.len() < other.len() {
        target.resize(other.len(), 0);
    }
    for (t, o) in target.iter_mut().zip(other) {
        *t = t.saturating_add(*o);
    }
}

pub(crate) fn sub_vec(target: &mut Vec<u64>, base: &[u64]) {
    for (t, b) in target.iter_mut().zip(base) {
        *t = t.saturating_sub(*b);
    }
    trim(target);
}

pub(crate) fn halve_vec(target: &mut Vec<u64>) {
    for t in target.iter_mut() {
        *t /= 2;
    }
    trim(target);
}

fn trim(target: &mut Vec<u64>) {
    while target.last() == Some(&0) {
        target.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(counts: &[u32]) -> ReachHistogram {
        let mut h = ReachHistogram::default();
        for &c in counts {
            for step in 1..=c {
                h.record_reached(step);
            }
        }
        h
    }

    #[test]
    fn quantiles_are_exact_for_small_counts() {
        // 90 windows with 2 requests, 9 with 5, 1 with 40.
        let mut counts = vec![2; 90];
        counts.extend([5; 9]);
        counts.push(40);
        let h = histogram_of(&counts);
        assert_eq!(h.windows(), 100);
        assert_eq!(h.quantile(0.5), 2);
        assert_eq!(h.quantile(0.9), 2);
        assert_eq!(h.quantile(0.95), 5);
        assert_eq!(h.quantile(0.999), 47); // bucket 40..=47
    }

    #[test]
    fn merge_adds_and_subtract_inverts() {
        let a = histogram_of(&[1, 3, 3]);
        let b = histogram_of(&[2, 20]);
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged, histogram_of(&[1, 3, 3, 2, 20]));
        merged.subtract(&a);
        assert_eq!(merged, b);
    }

    #[test]
    fn log_buckets() {
        assert_eq!(LogHistogram::length_bucket(0), 0);
        assert_eq!(LogHistogram::length_bucket(1), 1);
        assert_eq!(LogHistogram::length_bucket(7), 3);
        assert_eq!(LogHistogram::length_bucket(8), 4);
        assert_eq!(LogHistogram::length_bucket_upper(3), 7);
        assert_eq!(LogHistogram::magnitude_bucket(0.0), 0);
        assert_eq!(LogHistogram::magnitude_bucket(0.5), 1);
        assert_eq!(LogHistogram::magnitude_bucket(9.99), 2);
        assert_eq!(LogHistogram::magnitude_bucket(-250.0), 4);
        assert_eq!(LogHistogram::magnitude_bucket(9_999_999.0), 8);
    }
}
