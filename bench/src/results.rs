//! What one benchmark run measured (written to `target/bench/results.json`) and the table
//! printed from it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::rounds::{self, median_of};

/// Every measured figure of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Unix seconds at the start of the run.
    pub started_at: u64,
    pub machine: Machine,
    pub settings: Settings,
    pub targets: Vec<TargetInfo>,
    /// Closed-loop wrk runs: one row per target, concurrency level and round.
    pub throughput: Vec<ThroughputRow>,
    /// The open-loop rounds at one fixed rate for every target.
    pub fixed_rate: Option<FixedRate>,
    /// Per target: best throughput (median run), ratio to nginx (median of per-round ratios),
    /// latency at the fixed rate.
    pub summary: Vec<SummaryRow>,
    /// What the enforcers held when measured (sessions, operations, maturity, rules).
    pub enforcers: Vec<EnforcerState>,
    pub memory: Option<Memory>,
    /// The performance targets (docs/benchmarks.md, "Performance targets"), each with the measured value and whether it holds.
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_kib: u64,
    /// 1-minute load average when the run started (other work on the machine).
    pub loadavg_at_start: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Seconds of each closed-loop run.
    pub duration_s: f64,
    pub concurrency: Vec<usize>,
    /// Rounds of every measurement (closed loop per level, fixed rate).
    #[serde(default)]
    pub rounds: usize,
    /// Fixed-rate seconds per target, all rounds together.
    pub fixed_rate_duration_s: f64,
    /// Seconds of each fixed-rate round.
    #[serde(default)]
    pub fixed_rate_round_s: f64,
    pub fixed_rate_connections: usize,
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub upstream_cpus: String,
    pub proxy_workers: usize,
    pub live_sessions: u64,
    pub learning_requests: u64,
    pub wrk_threads: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThroughputRow {
    pub target: String,
    pub concurrency: usize,
    /// The round of this run, from 1 (0 in results written before runs had rounds).
    #[serde(default)]
    pub round: usize,
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    /// Responses outside 2xx/3xx.
    pub non_2xx: u64,
    /// Connect/read/write errors and timeouts.
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// CPU time (user + system) the proxy process spent per request, in microseconds (the
    /// upstream's for `direct`); independent of what else ran on the machine.
    #[serde(default)]
    pub cpu_us_per_request: f64,
    /// CPU seconds the proxy used per wall-clock second of the run (1.0 = its whole core).
    #[serde(default)]
    pub cpu_busy: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FixedRate {
    /// Requests per second offered to every target.
    pub rate: f64,
    /// How the rate was chosen.
    pub basis: String,
    /// Rounds, each offering the rate to every target for `round_duration_s`.
    #[serde(default)]
    pub rounds: usize,
    #[serde(default)]
    pub round_duration_s: f64,
    /// One row per target, all rounds together.
    pub rows: Vec<FixedRateRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FixedRateRow {
    pub target: String,
    /// Requests answered ÷ seconds, all rounds together (the percentiles below are those of
    /// every round's requests: the rounds' histograms added up).
    pub achieved_rps: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub dropped: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The median over rounds of (this target's p99 − direct access's p99 in the same round);
    /// `None` when the run did not measure direct access.
    #[serde(default)]
    pub added_p99_us: Option<i64>,
    /// This target's p99 in each round, in round order.
    #[serde(default)]
    pub rounds_p99_us: Vec<u64>,
    #[serde(default)]
    pub cpu_us_per_request: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SummaryRow {
    pub target: String,
    /// The median run's req/s at the level where it is highest (`best_concurrency`).
    pub max_rps: f64,
    pub best_concurrency: usize,
    /// Runs at `best_concurrency` the median was taken over.
    #[serde(default)]
    pub rounds: usize,
    /// The median over rounds of (this target's req/s ÷ nginx's req/s in the same round) at
    /// `best_concurrency`; 0 without nginx.
    pub ratio_to_nginx: f64,
    /// The median over rounds of (nginx's CPU µs per request ÷ this target's) at
    /// `best_concurrency`: above 1 this target serves more per CPU second.
    #[serde(default)]
    pub cpu_ratio_to_nginx: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Proxy CPU per request of the median run at the best level, and the throughput one
    /// dedicated core would give at that cost (`1e6 / cpu_us_per_request`).
    #[serde(default)]
    pub cpu_us_per_request: f64,
    #[serde(default)]
    pub capacity_per_core: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnforcerState {
    pub target: String,
    pub mode: String,
    pub sessions_tracked: Option<f64>,
    pub operations: Option<usize>,
    pub rules: usize,
    /// The enforcer's own view of its model (`GET /v1/model`), trimmed to the maturity part.
    pub maturity: serde_json::Value,
    /// Requests flagged or blocked during the measurement (from the enforcer's metrics).
    pub decisions: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    pub sessions: u64,
    pub sessions_tracked: Option<f64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_session: f64,
    pub operations: u64,
    pub operations_learned: Option<usize>,
    pub rss_before_operations_kib: u64,
    pub rss_after_operations_kib: u64,
    pub bytes_per_operation: f64,
    pub method: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub holds: bool,
}

/// Microseconds as milliseconds with 2 decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

impl Results {
    /// The tables printed at the end of a run (Markdown, so they paste into the docs).
    pub fn render_tables(&self) -> String {
        let mut t = String::new();
        self.render_summary(&mut t);
        self.render_throughput(&mut t);
        self.render_fixed_rate(&mut t);
        self.render_memory(&mut t);
        self.render_goals(&mut t);
        for n in &self.notes {
            let _ = writeln!(t, "note: {n}");
        }
        t
    }

    /// Distinct rounds among the closed-loop runs.
    fn closed_loop_rounds(&self) -> usize {
        let mut seen: Vec<usize> = self.throughput.iter().map(|r| r.round).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    fn render_summary(&self, t: &mut String) {
        if self.summary.is_empty() {
            return;
        }
        let rate = self.fixed_rate.as_ref().map(|f| f.rate).unwrap_or(0.0);
        let _ = writeln!(
            t,
            "Each target at the level where its median run is fastest ({}); ratio to nginx = the median over rounds of the ratio within a round:\n",
            median_of(self.closed_loop_rounds())
        );
        let _ = writeln!(
            t,
            "| target | max throughput (req/s) | at connections | ratio to nginx | CPU us/request | req/s per core | p50 ms | p99 ms | p99.9 ms (at {rate:.0} req/s) |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.summary {
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {:.2} | {:.1} | {:.0} | {} | {} | {} |",
                r.target,
                r.max_rps,
                r.best_concurrency,
                r.ratio_to_nginx,
                r.cpu_us_per_request,
                r.capacity_per_core,
                ms(r.p50_us),
                ms(r.p99_us),
                ms(r.p999_us)
            );
        }
        t.push('\n');
    }

    fn render_throughput(&self, t: &mut String) {
        if self.throughput.is_empty() {
            return;
        }
        let _ = writeln!(
            t,
            "Closed loop (wrk), per concurrency level: the median run of {} rounds by req/s (every run is in results.json):\n",
            self.closed_loop_rounds()
        );
        let _ = writeln!(
            t,
            "| target | connections | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | errors | CPU us/request | CPU busy | req/s per round |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in rounds::median_runs(&self.throughput) {
            let per_round: Vec<String> =
                rounds::runs_of(&self.throughput, &r.target, r.concurrency)
                    .iter()
                    .map(|run| format!("{:.0}", run.rps))
                    .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.0}% | {} |",
                r.target,
                r.concurrency,
                r.rps,
                ms(r.p50_us),
                ms(r.p99_us),
                ms(r.p999_us),
                r.non_2xx,
                r.errors,
                r.cpu_us_per_request,
                r.cpu_busy * 100.0,
                per_round.join(" / ")
            );
        }
        t.push('\n');
    }

    fn render_fixed_rate(&self, t: &mut String) {
        let Some(f) = &self.fixed_rate else { return };
        let rounds = if f.rounds > 0 {
            format!(
                ", {} rounds of {:.1} s per target",
                f.rounds, f.round_duration_s
            )
        } else {
            String::new()
        };
        let paired = f.rows.first().map_or(0, |r| r.rounds_p99_us.len());
        let _ = writeln!(
            t,
            "Fixed rate {:.0} req/s ({}){rounds}, latency from the scheduled send time; percentiles over every round's requests; added p99 = {} of (p99 - direct's p99 in the same round):\n",
            f.rate,
            f.basis,
            median_of(paired)
        );
        let _ = writeln!(
            t,
            "| target | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | added p99 ms | non-2xx | errors+dropped | p99 per round ms |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in &f.rows {
            let per_round: Vec<String> = r.rounds_p99_us.iter().map(|us| ms(*us)).collect();
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                r.achieved_rps,
                ms(r.p50_us),
                ms(r.p90_us),
                ms(r.p99_us),
                ms(r.p999_us),
                ms(r.max_us),
                r.added_p99_us.map_or_else(
                    || "n/a".to_owned(),
                    |us| format!("{:.2}", us as f64 / 1000.0)
                ),
                r.non_2xx,
                r.errors + r.dropped,
                per_round.join(" / ")
            );
        }
        t.push('\n');
    }

    fn render_memory(&self, t: &mut String) {
        let Some(m) = &self.memory else { return };
        let _ = writeln!(t, "Memory ({}):\n", m.method);
        let _ = writeln!(
            t,
            "- {} idle sessions: RSS {} KiB -> {} KiB = {:.0} bytes per session (sessions tracked: {})",
            m.sessions,
            m.rss_before_kib,
            m.rss_after_kib,
            m.bytes_per_session,
            m.sessions_tracked
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "n/a".into())
        );
        let _ = writeln!(
            t,
            "- {} learned operations: RSS {} KiB -> {} KiB = {:.0} bytes per operation (operations in the model: {})\n",
            m.operations,
            m.rss_before_operations_kib,
            m.rss_after_operations_kib,
            m.bytes_per_operation,
            m.operations_learned
                .map(|s| s.to_string())
                .unwrap_or_else(|| "n/a".into())
        );
    }

    fn render_goals(&self, t: &mut String) {
        if self.goals.is_empty() {
            return;
        }
        let _ = writeln!(t, "| performance target | measured | holds |");
        let _ = writeln!(t, "|---|---|---|");
        for g in &self.goals {
            let _ = writeln!(
                t,
                "| {} | {} | {} |",
                g.goal,
                g.measured,
                if g.holds { "yes" } else { "no" }
            );
        }
        t.push('\n');
    }

    /// Fills `summary` and the throughput/latency `goals` from the rows, with the median-based
    /// figures of [`crate::rounds`].
    pub fn summarise(&mut self) {
        let summary = self
            .targets
            .iter()
            .filter_map(|t| self.summary_row(&t.name))
            .collect();
        self.summary = summary;
        self.goals.retain(|g| g.goal.starts_with("memory"));
        let goals: Vec<Goal> = self
            .throughput_goals()
            .into_iter()
            .chain(self.latency_goal())
            .collect();
        self.goals.extend(goals);
    }

    /// A target at the level where its median run is fastest, compared with nginx round by
    /// round at that level.
    fn summary_row(&self, target: &str) -> Option<SummaryRow> {
        let rows = &self.throughput;
        let best = rounds::best_median_run(rows, target)?;
        let level = best.concurrency;
        let fixed = self
            .fixed_rate
            .as_ref()
            .and_then(|f| f.rows.iter().find(|r| r.target == target));
        Some(SummaryRow {
            target: target.to_owned(),
            max_rps: best.rps,
            best_concurrency: level,
            rounds: rounds::runs_of(rows, target, level).len(),
            ratio_to_nginx: rounds::throughput_ratio(rows, target, "nginx", level)
                .map_or(0.0, |r| r.median),
            cpu_ratio_to_nginx: rounds::cpu_ratio(rows, target, "nginx", level).map(|r| r.median),
            p50_us: fixed.map(|r| r.p50_us).unwrap_or(0),
            p99_us: fixed.map(|r| r.p99_us).unwrap_or(0),
            p999_us: fixed.map(|r| r.p999_us).unwrap_or(0),
            cpu_us_per_request: best.cpu_us_per_request,
            capacity_per_core: rounds::ratio(1e6, best.cpu_us_per_request).unwrap_or(0.0),
        })
    }

    /// The Enforce-mode enforcer against nginx and nginx + CRS, each a median of per-round
    /// ratios at the enforcer's best level.
    fn throughput_goals(&self) -> Vec<Goal> {
        let rows = &self.throughput;
        let mut goals = Vec::new();
        let Some(level) = rounds::best_median_run(rows, "ordo-enforce").map(|r| r.concurrency)
        else {
            return goals;
        };
        let how = |r: rounds::OverRounds| format!("{} at {level} connections", median_of(r.rounds));
        if let Some(r) = rounds::throughput_ratio(rows, "ordo-enforce", "nginx", level) {
            goals.push(Goal {
                goal: "Enforce throughput >= nginx (ratio >= 1.0)".into(),
                measured: format!("{:.2} ({})", r.median, how(r)),
                holds: r.median >= 1.0,
            });
        }
        if let Some(r) = rounds::cpu_ratio(rows, "ordo-enforce", "nginx", level) {
            goals.push(Goal {
                goal: "(same, per CPU second) Enforce req/s per core >= nginx's".into(),
                measured: format!(
                    "{:.2} (nginx's CPU us/request / Enforce's, {})",
                    r.median,
                    how(r)
                ),
                holds: r.median >= 1.0,
            });
        }
        if let Some(r) = rounds::throughput_ratio(rows, "ordo-enforce", "nginx-crs", level) {
            goals.push(Goal {
                goal: "Enforce throughput >= 3x nginx + CRS".into(),
                measured: format!("{:.2}x ({})", r.median, how(r)),
                holds: r.median >= 3.0,
            });
        }
        goals
    }

    /// The Enforce-mode enforcer's added p99 at the fixed rate (median of per-round figures).
    fn latency_goal(&self) -> Option<Goal> {
        let f = self.fixed_rate.as_ref()?;
        let r = f.rows.iter().find(|r| r.target == "ordo-enforce")?;
        let goal = "Enforce p99 added latency < 1 ms at half its max throughput".into();
        Some(match r.added_p99_us {
            Some(added) => Goal {
                goal,
                measured: format!(
                    "{:.3} ms at {:.0} req/s ({})",
                    added as f64 / 1000.0,
                    f.rate,
                    median_of(r.rounds_p99_us.len())
                ),
                holds: added < 1000 && r.dropped == 0 && r.errors == 0,
            },
            None => Goal {
                goal,
                measured: "not measured: the run has no `direct` target to add to".into(),
                holds: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str, c: usize, rps: f64) -> ThroughputRow {
        ThroughputRow {
            target: target.into(),
            concurrency: c,
            rps,
            ..Default::default()
        }
    }

    #[test]
    fn summary_takes_the_best_level_and_compares_to_nginx() {
        let mut r = Results {
            targets: ["direct", "nginx", "nginx-crs", "ordo-enforce"]
                .iter()
                .map(|n| TargetInfo {
                    name: (*n).into(),
                    description: String::new(),
                })
                .collect(),
            throughput: vec![
                row("nginx", 16, 10_000.0),
                row("nginx", 64, 12_000.0),
                row("nginx-crs", 64, 3_000.0),
                row("ordo-enforce", 16, 9_000.0),
                row("ordo-enforce", 64, 9_600.0),
                row("direct", 64, 40_000.0),
            ],
            fixed_rate: Some(FixedRate {
                rate: 4800.0,
                basis: "half".into(),
                rows: vec![FixedRateRow {
                    target: "ordo-enforce".into(),
                    p99_us: 900,
                    added_p99_us: Some(600),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        r.summarise();
        let enf = r
            .summary
            .iter()
            .find(|s| s.target == "ordo-enforce")
            .unwrap();
        assert_eq!(enf.best_concurrency, 64);
        assert!((enf.ratio_to_nginx - 0.8).abs() < 1e-9);
        assert_eq!(enf.p99_us, 900);
        let goals: Vec<(String, bool)> =
            r.goals.iter().map(|g| (g.goal.clone(), g.holds)).collect();
        assert!(!goals[0].1, "0.8 < 1.0");
        assert!(goals[1].1, "9600 / 3000 = 3.2");
        assert!(goals[2].1, "0.6 ms added");
        let table = r.render_tables();
        assert!(
            table.contains("| ordo-enforce | 9600 | 64 | 0.80 |"),
            "{table}"
        );
    }

    fn round(target: &str, c: usize, round: usize, rps: f64, cpu: f64) -> ThroughputRow {
        ThroughputRow {
            round,
            cpu_us_per_request: cpu,
            ..row(target, c, rps)
        }
    }

    fn fixed_row(target: &str, rounds_p99_us: &[u64]) -> FixedRateRow {
        FixedRateRow {
            target: target.into(),
            rounds_p99_us: rounds_p99_us.to_vec(),
            ..Default::default()
        }
    }

    /// Three rounds in which the host is fastest for the enforcer's round 3 and slowest for
    /// nginx's round 2: per round the enforcer reaches 0.95, 1.1 and 1.05 of nginx at 64
    /// connections (median 1.05), while its median run over nginx's (11,400 / 12,000) is 0.95.
    fn three_rounds() -> Results {
        let mut throughput = Vec::new();
        for (r, (ngx16, ngx64, enf64, enf_cpu)) in [
            (10_000.0, 12_000.0, 11_400.0, 40.0),
            (8_000.0, 9_000.0, 9_900.0, 20.0),
            (11_000.0, 12_500.0, 13_125.0, 25.0),
        ]
        .into_iter()
        .enumerate()
        {
            let r = r + 1;
            throughput.extend([
                round("nginx", 16, r, ngx16, 30.0),
                round("ordo-enforce", 16, r, 9_000.0, 40.0),
                round("nginx-crs", 16, r, 3_000.0, 1000.0),
                round("nginx", 64, r, ngx64, 30.0),
                round("ordo-enforce", 64, r, enf64, enf_cpu),
                round("nginx-crs", 64, r, 3_000.0, 1000.0),
            ]);
        }
        // Direct access's own p99 is the highest of all in round 2.
        let mut rows = vec![
            fixed_row("direct", &[900, 8_700, 1_000]),
            fixed_row("ordo-enforce", &[1_500, 2_000, 1_400]),
        ];
        crate::rounds::fill_added_p99(&mut rows);
        Results {
            targets: ["direct", "nginx", "nginx-crs", "ordo-enforce"]
                .iter()
                .map(|n| TargetInfo {
                    name: (*n).into(),
                    description: String::new(),
                })
                .collect(),
            throughput,
            fixed_rate: Some(FixedRate {
                rate: 5_700.0,
                basis: "half".into(),
                rounds: 3,
                round_duration_s: 10.0 / 3.0,
                rows,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn summary_and_goals_use_medians_of_per_round_comparisons() {
        let mut r = three_rounds();
        r.summarise();
        let enf = r
            .summary
            .iter()
            .find(|s| s.target == "ordo-enforce")
            .unwrap();
        assert_eq!((enf.best_concurrency, enf.max_rps), (64, 11_400.0));
        assert_eq!(enf.rounds, 3);
        assert!((enf.ratio_to_nginx - 1.05).abs() < 1e-9, "{enf:?}");
        // nginx's 30 µs over the enforcer's 40, 20, 25 µs: 0.75, 1.5, 1.2.
        let cpu = enf.cpu_ratio_to_nginx.unwrap();
        assert!((cpu - 1.2).abs() < 1e-9, "{cpu}");
        assert!(
            r.summary.iter().all(|s| s.target != "direct"),
            "no closed-loop run"
        );

        let goal = |part: &str| r.goals.iter().find(|g| g.goal.contains(part)).unwrap();
        let vs_nginx = goal(">= nginx");
        assert!(vs_nginx.holds);
        assert_eq!(
            vs_nginx.measured,
            "1.05 (median of 3 rounds at 64 connections)"
        );
        assert!(goal("per CPU second").measured.starts_with("1.20 "));
        let crs = goal("3x nginx + CRS");
        assert!(
            crs.measured.starts_with("3.80x (median of 3 rounds"),
            "{}",
            crs.measured
        );
        let added = goal("added latency");
        assert_eq!(
            added.measured,
            "0.400 ms at 5700 req/s (median of 3 rounds)"
        );
        assert!(added.holds);
    }

    #[test]
    fn tables_show_the_median_run_and_every_round() {
        let mut r = three_rounds();
        r.summarise();
        let table = r.render_tables();
        assert!(
            table.contains("the median run of 3 rounds by req/s"),
            "{table}"
        );
        assert!(table.contains("| ordo-enforce | 64 | 11400 |"), "{table}");
        assert!(table.contains("| 11400 / 9900 / 13125 |"), "{table}");
        // One line per target and level, not one per run.
        assert_eq!(table.matches("| nginx | 64 |").count(), 1, "{table}");
        assert!(table.contains("added p99 = median of 3 rounds"), "{table}");
        assert!(table.contains("| 0.90 / 8.70 / 1.00 |"), "{table}");
        assert!(
            table.contains("| ordo-enforce | 11400 | 64 | 1.05 |"),
            "{table}"
        );
    }

    #[test]
    fn added_latency_without_direct_access_is_not_measured() {
        let mut r = Results {
            fixed_rate: Some(FixedRate {
                rate: 4800.0,
                basis: "half".into(),
                rows: vec![FixedRateRow {
                    target: "ordo-enforce".into(),
                    p99_us: 900,
                    added_p99_us: None,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        r.summarise();
        let goal = r
            .goals
            .iter()
            .find(|g| g.goal.contains("added latency"))
            .unwrap();
        assert!(!goal.holds);
        assert!(goal.measured.contains("not measured"), "{}", goal.measured);
        assert!(r.render_tables().contains("| n/a |"));
    }
}
