//! Repeated, interleaved measurements and what is taken from them.
//!
//! The VM the benchmark runs on swings by ±15 % from one run to the next, so a single run per
//! target compares mostly noise. Every measurement is therefore repeated in rounds — within a
//! round every target runs once, always in the same order — and two targets are compared
//! within each round (their runs are seconds apart, under the same host conditions); the
//! median of those per-round comparisons is what is reported. A slow drift of the host then
//! hits both sides of every comparison alike, and one disturbed round is outvoted.

use std::ops::Range;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::loadgen::{LatencySummary, LoadReport, new_histogram};
use crate::results::{FixedRateRow, ThroughputRow};

/// The median of `values` (the mean of the two middle ones for an even count); `None` when
/// there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let upper = *sorted.get(n / 2)?;
    if n % 2 == 1 {
        Some(upper)
    } else {
        Some((sorted[n / 2 - 1] + upper) / 2.0)
    }
}

/// `a / b`, or `None` when `b` is not positive: a run that measured nothing has no ratio.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// A median over rounds and how many rounds it was taken over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverRounds {
    pub median: f64,
    pub rounds: usize,
}

/// How a figure was reduced over `rounds` rounds, for the tables and goals.
pub fn median_of(rounds: usize) -> String {
    if rounds <= 1 {
        "one round".to_owned()
    } else {
        format!("median of {rounds} rounds")
    }
}

/// The median over the rounds both sides ran of `compare(target, reference)`, pairing
/// `(round, value)` entries by round; a round `compare` has no answer for is left out.
pub fn paired_median(
    target: &[(usize, f64)],
    reference: &[(usize, f64)],
    compare: impl Fn(f64, f64) -> Option<f64>,
) -> Option<OverRounds> {
    let per_round: Vec<f64> = target
        .iter()
        .filter_map(|(round, t)| {
            let (_, r) = reference.iter().find(|(other, _)| other == round)?;
            compare(*t, *r)
        })
        .collect();
    Some(OverRounds {
        median: median(&per_round)?,
        rounds: per_round.len(),
    })
}

/// Every run of `target` at `level`, in the order they ran.
pub fn runs_of<'a>(
    rows: &'a [ThroughputRow],
    target: &str,
    level: usize,
) -> Vec<&'a ThroughputRow> {
    rows.iter()
        .filter(|r| r.target == target && r.concurrency == level)
        .collect()
}

/// The median run by req/s. It is one real run, so that its latency and CPU columns belong
/// together: for an even count the slower of the two middle runs (the cautious choice).
pub fn median_run<'a>(runs: &[&'a ThroughputRow]) -> Option<&'a ThroughputRow> {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

/// The median run of every target at every level, in the order the rows first name them.
pub fn median_runs(rows: &[ThroughputRow]) -> Vec<&ThroughputRow> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut medians = Vec::new();
    for r in rows {
        let key = (r.target.as_str(), r.concurrency);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        medians.extend(median_run(&runs_of(rows, key.0, key.1)));
    }
    medians
}

/// A target's best level, judged by median runs: its median run with the highest req/s.
pub fn best_median_run<'a>(rows: &'a [ThroughputRow], target: &str) -> Option<&'a ThroughputRow> {
    median_runs(rows)
        .into_iter()
        .filter(|r| r.target == target)
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
}

/// `(round, value)` of every run of `target` at `level`.
fn per_round(
    rows: &[ThroughputRow],
    target: &str,
    level: usize,
    value: impl Fn(&ThroughputRow) -> f64,
) -> Vec<(usize, f64)> {
    runs_of(rows, target, level)
        .into_iter()
        .map(|r| (r.round, value(r)))
        .collect()
}

/// The median over rounds of `target`'s req/s ÷ `reference`'s req/s in the same round at
/// `level`.
pub fn throughput_ratio(
    rows: &[ThroughputRow],
    target: &str,
    reference: &str,
    level: usize,
) -> Option<OverRounds> {
    paired_median(
        &per_round(rows, target, level, |r| r.rps),
        &per_round(rows, reference, level, |r| r.rps),
        ratio,
    )
}

/// The median over rounds of `reference`'s CPU µs per request ÷ `target`'s in the same round
/// at `level`: requests of the target per CPU second relative to the reference's (above 1 the
/// target is cheaper). A run without a CPU reading (0) is left out rather than counted as free.
pub fn cpu_ratio(
    rows: &[ThroughputRow],
    target: &str,
    reference: &str,
    level: usize,
) -> Option<OverRounds> {
    paired_median(
        &per_round(rows, target, level, |r| r.cpu_us_per_request),
        &per_round(rows, reference, level, |r| r.cpu_us_per_request),
        |t, r| ratio(r, t).filter(|x| *x > 0.0),
    )
}

/// The median over rounds of `target`'s p99 − `direct`'s p99 in the same round (µs; entry `i`
/// of each list is round `i`). A round in which direct access happened to be slower counts as
/// a negative difference rather than being dropped, so that noise stays symmetric.
pub fn median_added_p99(target: &[u64], direct: &[u64]) -> Option<OverRounds> {
    let diffs: Vec<f64> = target
        .iter()
        .zip(direct)
        .map(|(t, d)| *t as f64 - *d as f64)
        .collect();
    Some(OverRounds {
        median: median(&diffs)?,
        rounds: diffs.len(),
    })
}

/// Sets every row's `added_p99_us` from its per-round p99 and direct access's; leaves them
/// `None` when direct access was not measured.
pub fn fill_added_p99(rows: &mut [FixedRateRow]) {
    let Some(direct) = rows
        .iter()
        .find(|r| r.target == "direct")
        .map(|r| r.rounds_p99_us.clone())
    else {
        return;
    };
    for r in rows.iter_mut() {
        r.added_p99_us =
            median_added_p99(&r.rounds_p99_us, &direct).map(|m| m.median.round() as i64);
    }
}

/// Which slice of the measured session pool each run uses. Every run of a target gets its own
/// slice, so that each session continues its cycle exactly once after the pre-warm and never
/// interleaves across runs: the closed-loop runs first (level by level, round by round), then
/// the fixed-rate rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlicePlan {
    levels: usize,
    rounds: usize,
    size: u64,
}

impl SlicePlan {
    /// Below this, one session's requests come close enough together in a closed-loop run at
    /// 30,000 req/s that the mix would no longer look like people using an app.
    pub const MIN_SLICE: u64 = 1000;

    /// Splits `sessions` among `levels` closed-loop runs plus one fixed-rate run, per round.
    pub fn new(sessions: u64, levels: usize, rounds: usize) -> anyhow::Result<Self> {
        let runs = u64::try_from((levels + 1) * rounds)?;
        anyhow::ensure!(runs > 0, "at least one round is needed");
        let size = sessions / runs;
        anyhow::ensure!(
            size >= Self::MIN_SLICE,
            "--sessions {sessions} is too small for {runs} runs per target (at least {} needed)",
            runs * Self::MIN_SLICE
        );
        Ok(Self {
            levels,
            rounds,
            size,
        })
    }

    /// Sessions per slice.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The slice of the closed-loop run at level index `level` in round `round` (0-based).
    pub fn closed(&self, level: usize, round: usize) -> Range<u64> {
        self.slice(level * self.rounds + round)
    }

    /// The slice of fixed-rate round `round` (0-based).
    pub fn fixed(&self, round: usize) -> Range<u64> {
        self.slice(self.levels * self.rounds + round)
    }

    fn slice(&self, index: usize) -> Range<u64> {
        let first = index as u64 * self.size;
        first..first + self.size
    }
}

/// The shortest fixed-rate round: at the rates measured here (over 10,000 req/s) two seconds
/// still put a few hundred requests above the p99, fewer would make each round's p99 a guess.
pub const MIN_FIXED_ROUND: Duration = Duration::from_secs(2);

/// Each fixed-rate round's share of `total`, at least [`MIN_FIXED_ROUND`].
pub fn fixed_round_duration(total: Duration, rounds: usize) -> Duration {
    Duration::from_secs_f64(total.as_secs_f64() / rounds.max(1) as f64).max(MIN_FIXED_ROUND)
}

/// One target's fixed-rate rounds added up: the latency histograms merged (so the percentiles
/// are those of every request of every round), the counts summed, each round's p99 kept.
pub struct FixedTally {
    target: String,
    histogram: Histogram<u64>,
    requests: u64,
    non_2xx: u64,
    errors: u64,
    dropped: u64,
    duration_s: f64,
    cpu_s: f64,
    rounds_p99_us: Vec<u64>,
}

impl FixedTally {
    pub fn new(target: &str) -> anyhow::Result<Self> {
        Ok(Self {
            target: target.to_owned(),
            histogram: new_histogram()?,
            requests: 0,
            non_2xx: 0,
            errors: 0,
            dropped: 0,
            duration_s: 0.0,
            cpu_s: 0.0,
            rounds_p99_us: Vec::new(),
        })
    }

    /// Adds one round: its report, its latency histogram and the CPU seconds the target used.
    pub fn add(
        &mut self,
        report: &LoadReport,
        histogram: &Histogram<u64>,
        cpu_s: f64,
    ) -> anyhow::Result<()> {
        self.histogram.add(histogram)?;
        self.requests += report.requests;
        self.non_2xx += report.non_2xx();
        self.errors += report.errors;
        self.dropped += report.dropped;
        self.duration_s += report.duration_s;
        self.cpu_s += cpu_s;
        self.rounds_p99_us.push(report.latency_us.p99);
        Ok(())
    }

    /// The target's row; `added_p99_us` is left to [`fill_added_p99`], which needs every row.
    pub fn row(&self) -> FixedRateRow {
        let latency = LatencySummary::from_histogram(&self.histogram);
        FixedRateRow {
            target: self.target.clone(),
            achieved_rps: ratio(self.requests as f64, self.duration_s).unwrap_or(0.0),
            requests: self.requests,
            non_2xx: self.non_2xx,
            errors: self.errors,
            dropped: self.dropped,
            p50_us: latency.p50,
            p90_us: latency.p90,
            p99_us: latency.p99,
            p999_us: latency.p999,
            max_us: latency.max,
            added_p99_us: None,
            rounds_p99_us: self.rounds_p99_us.clone(),
            cpu_us_per_request: ratio(self.cpu_s * 1e6, self.requests as f64).unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(target: &str, level: usize, round: usize, rps: f64, cpu: f64) -> ThroughputRow {
        ThroughputRow {
            target: target.into(),
            concurrency: level,
            round,
            rps,
            cpu_us_per_request: cpu,
            ..Default::default()
        }
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_median_run_is_a_real_run_and_the_slower_middle_one_when_even() {
        let rows = [
            run("nginx", 16, 1, 300.0, 0.0),
            run("nginx", 16, 2, 100.0, 0.0),
            run("nginx", 16, 3, 200.0, 0.0),
            run("nginx", 16, 4, 400.0, 0.0),
        ];
        let odd: Vec<&ThroughputRow> = rows[..3].iter().collect();
        assert_eq!(median_run(&odd).map(|r| r.round), Some(3));
        let even: Vec<&ThroughputRow> = rows.iter().collect();
        assert_eq!(median_run(&even).map(|r| r.rps), Some(200.0));
        assert_eq!(median_run(&[]).map(|r| r.rps), None);
    }

    #[test]
    fn the_ratio_is_the_median_of_per_round_ratios_not_the_ratio_of_medians() {
        // The host is slow in round 3 for both. Per round the enforcer reaches 1.0, 0.818 and
        // 0.975 of nginx: median 0.975. The ratio of the medians (900 / 1000) would pair the
        // enforcer's round 2 with nginx's round 1 and say 0.9.
        let rows = [
            run("nginx", 64, 1, 1000.0, 30.0),
            run("ordo-enforce", 64, 1, 1000.0, 40.0),
            run("nginx", 64, 2, 1100.0, 30.0),
            run("ordo-enforce", 64, 2, 900.0, 60.0),
            run("nginx", 64, 3, 800.0, 30.0),
            run("ordo-enforce", 64, 3, 780.0, 30.0),
        ];
        let r = throughput_ratio(&rows, "ordo-enforce", "nginx", 64).unwrap();
        assert!((r.median - 0.975).abs() < 1e-9, "{r:?}");
        assert_eq!(r.rounds, 3);
        // Per CPU second: nginx's cost ÷ the enforcer's = 0.75, 0.5, 1.0 → median 0.75.
        let c = cpu_ratio(&rows, "ordo-enforce", "nginx", 64).unwrap();
        assert!((c.median - 0.75).abs() < 1e-9, "{c:?}");
        assert_eq!(throughput_ratio(&rows, "ordo-enforce", "nginx", 16), None);
    }

    #[test]
    fn rounds_are_paired_by_number_and_unmeasured_rounds_left_out() {
        let target = [(1, 10.0), (2, 20.0), (3, 30.0)];
        // Round 1 has no reference run, round 3's reference measured nothing.
        let reference = [(2, 10.0), (3, 0.0)];
        let m = paired_median(&target, &reference, ratio).unwrap();
        assert_eq!(
            m,
            OverRounds {
                median: 2.0,
                rounds: 1
            }
        );
    }

    #[test]
    fn the_best_level_is_judged_by_median_runs() {
        // At 16 one lucky run (2000) beats everything at 64, but 64's median is higher.
        let rows = [
            run("ordo-enforce", 16, 1, 2000.0, 0.0),
            run("ordo-enforce", 16, 2, 900.0, 0.0),
            run("ordo-enforce", 16, 3, 950.0, 0.0),
            run("ordo-enforce", 64, 1, 1000.0, 0.0),
            run("ordo-enforce", 64, 2, 1050.0, 0.0),
            run("ordo-enforce", 64, 3, 1020.0, 0.0),
        ];
        let best = best_median_run(&rows, "ordo-enforce").unwrap();
        assert_eq!((best.concurrency, best.rps), (64, 1020.0));
        let medians: Vec<(usize, f64)> = median_runs(&rows)
            .iter()
            .map(|r| (r.concurrency, r.rps))
            .collect();
        assert_eq!(medians, vec![(16, 950.0), (64, 1020.0)]);
    }

    #[test]
    fn added_p99_is_the_median_of_per_round_differences_even_when_direct_is_slower() {
        // Round 2: direct's own p99 (8.7 ms) is above the enforcer's: -6.7 ms that round.
        let enforce = [1500, 2000, 1400];
        let direct = [900, 8700, 1000];
        let m = median_added_p99(&enforce, &direct).unwrap();
        assert_eq!(m.median, 400.0);
        assert_eq!(m.rounds, 3);
        assert_eq!(median_added_p99(&[], &[]), None);
        // Noise is not clamped: when direct is the slower one in most rounds, so be it.
        let m = median_added_p99(&[1_000, 1_000, 1_000], &[900, 1_100, 8_700]).unwrap();
        assert_eq!(m.median, -100.0);

        let mut rows = vec![
            FixedRateRow {
                target: "direct".into(),
                rounds_p99_us: direct.to_vec(),
                ..Default::default()
            },
            FixedRateRow {
                target: "ordo-enforce".into(),
                rounds_p99_us: enforce.to_vec(),
                ..Default::default()
            },
        ];
        fill_added_p99(&mut rows);
        assert_eq!(rows[0].added_p99_us, Some(0));
        assert_eq!(rows[1].added_p99_us, Some(400));
        rows.remove(0);
        rows[0].added_p99_us = None;
        fill_added_p99(&mut rows);
        assert_eq!(
            rows[0].added_p99_us, None,
            "no direct run, nothing to add to"
        );
    }

    #[test]
    fn slices_never_overlap_and_the_default_pool_suffices() {
        let (levels, rounds) = (3, 3);
        let plan = SlicePlan::new(100_000, levels, rounds).unwrap();
        let mut slices: Vec<Range<u64>> = (0..levels)
            .flat_map(|l| (0..rounds).map(move |r| (l, r)))
            .map(|(l, r)| plan.closed(l, r))
            .chain((0..rounds).map(|r| plan.fixed(r)))
            .collect();
        assert_eq!(slices.len(), 12);
        slices.sort_by_key(|s| s.start);
        for pair in slices.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "{slices:?}");
        }
        assert!(slices.iter().all(|s| s.end - s.start == plan.size()));
        assert!(plan.size() >= SlicePlan::MIN_SLICE);
        assert!(slices.last().unwrap().end <= 100_000);
        assert!(SlicePlan::new(11_999, levels, rounds).is_err());
        assert!(SlicePlan::new(100_000, levels, 0).is_err());
    }

    #[test]
    fn fixed_rounds_share_the_duration_but_last_at_least_two_seconds() {
        let ten = Duration::from_secs(10);
        assert_eq!(fixed_round_duration(ten, 1), ten);
        assert_eq!(fixed_round_duration(ten, 2), Duration::from_secs(5));
        let third = fixed_round_duration(ten, 3).as_secs_f64();
        assert!((third - 10.0 / 3.0).abs() < 1e-6, "{third}");
        assert_eq!(fixed_round_duration(ten, 8), MIN_FIXED_ROUND);
    }

    #[test]
    fn a_tally_merges_the_histograms_and_keeps_each_round_p99() {
        let mut tally = FixedTally::new("nginx").unwrap();
        // Round 1: 100 fast requests; round 2: 100 slow ones. Merged, the p99 is a slow one
        // and the p50 still a fast one.
        for (value, seconds) in [(100u64, 1.0), (10_000, 1.0)] {
            let mut h = new_histogram().unwrap();
            h.record_n(value, 100).unwrap();
            let report = LoadReport {
                requests: 100,
                duration_s: seconds,
                rps: 100.0,
                status_2xx: 98,
                status_3xx: 0,
                status_4xx: 2,
                status_5xx: 0,
                errors: 1,
                dropped: 0,
                latency_us: LatencySummary::from_histogram(&h),
            };
            tally.add(&report, &h, 0.01).unwrap();
        }
        let row = tally.row();
        assert_eq!(row.requests, 200);
        assert_eq!(row.non_2xx, 4);
        assert_eq!(row.errors, 2);
        assert!((row.achieved_rps - 100.0).abs() < 1e-9);
        assert!((row.cpu_us_per_request - 100.0).abs() < 1e-9);
        assert_eq!(row.rounds_p99_us.len(), 2);
        assert!(row.rounds_p99_us[0] < 200 && row.rounds_p99_us[1] > 9_000);
        assert!(row.p99_us > 9_000, "{}", row.p99_us);
        assert!(row.p50_us < 200, "{}", row.p50_us);
    }
}
