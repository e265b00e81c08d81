//! What one benchmark run measured (written to `target/bench/results.json`) and the table
//! printed from it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Every measured figure of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Unix seconds at the start of the run.
    pub started_at: u64,
    pub machine: Machine,
    pub settings: Settings,
    pub targets: Vec<TargetInfo>,
    /// Closed-loop wrk runs: one row per target per concurrency level.
    pub throughput: Vec<ThroughputRow>,
    /// The open-loop run at one fixed rate for every target.
    pub fixed_rate: Option<FixedRate>,
    /// Per target: best throughput, ratio to nginx, latency at the fixed rate.
    pub summary: Vec<SummaryRow>,
    /// What the enforcers held when measured (sessions, operations, maturity, rules).
    pub enforcers: Vec<EnforcerState>,
    pub memory: Option<Memory>,
    /// The targets of issue 7, each with the measured value and whether it holds.
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
    pub duration_s: f64,
    pub concurrency: Vec<usize>,
    pub fixed_rate_duration_s: f64,
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
    pub rows: Vec<FixedRateRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FixedRateRow {
    pub target: String,
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
    /// p99 of this target minus p99 of direct access at the same rate; `None` when the run
    /// did not measure direct access.
    #[serde(default)]
    pub added_p99_us: Option<i64>,
    #[serde(default)]
    pub cpu_us_per_request: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SummaryRow {
    pub target: String,
    pub max_rps: f64,
    pub best_concurrency: usize,
    /// `max_rps / nginx max_rps` in the same run.
    pub ratio_to_nginx: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Proxy CPU per request at the best level, and the throughput one dedicated core would
    /// give at that cost (`1e6 / cpu_us_per_request`).
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
        if !self.summary.is_empty() {
            let rate = self.fixed_rate.as_ref().map(|f| f.rate).unwrap_or(0.0);
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
        if !self.throughput.is_empty() {
            let _ = writeln!(t, "Closed loop (wrk), per concurrency level:\n");
            let _ = writeln!(
                t,
                "| target | connections | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | errors | CPU us/request | CPU busy |"
            );
            let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.throughput {
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.0}% |",
                    r.target,
                    r.concurrency,
                    r.rps,
                    ms(r.p50_us),
                    ms(r.p99_us),
                    ms(r.p999_us),
                    r.non_2xx,
                    r.errors,
                    r.cpu_us_per_request,
                    r.cpu_busy * 100.0
                );
            }
            t.push('\n');
        }
        if let Some(f) = &self.fixed_rate {
            let _ = writeln!(
                t,
                "Fixed rate {:.0} req/s ({}), latency from the scheduled send time:\n",
                f.rate, f.basis
            );
            let _ = writeln!(
                t,
                "| target | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | added p99 ms | non-2xx | errors+dropped |"
            );
            let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for r in &f.rows {
                let _ = writeln!(
                    t,
                    "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
                    r.errors + r.dropped
                );
            }
            t.push('\n');
        }
        if let Some(m) = &self.memory {
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
        if !self.goals.is_empty() {
            let _ = writeln!(t, "| issue 7 target | measured | holds |");
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
        for n in &self.notes {
            let _ = writeln!(t, "note: {n}");
        }
        t
    }

    /// Fills `summary` and the throughput/latency `goals` from the rows.
    pub fn summarise(&mut self) {
        let best = |target: &str| {
            self.throughput
                .iter()
                .filter(|r| r.target == target)
                .max_by(|a, b| a.rps.total_cmp(&b.rps))
                .map(|r| (r.rps, r.concurrency, r.cpu_us_per_request))
        };
        let nginx = best("nginx").map(|b| b.0).unwrap_or(0.0);
        let mut summary = Vec::new();
        for t in &self.targets {
            let Some((rps, conc, cpu)) = best(&t.name) else {
                continue;
            };
            let fr = self
                .fixed_rate
                .as_ref()
                .and_then(|f| f.rows.iter().find(|r| r.target == t.name));
            summary.push(SummaryRow {
                target: t.name.clone(),
                max_rps: rps,
                best_concurrency: conc,
                ratio_to_nginx: if nginx > 0.0 { rps / nginx } else { 0.0 },
                p50_us: fr.map(|r| r.p50_us).unwrap_or(0),
                p99_us: fr.map(|r| r.p99_us).unwrap_or(0),
                p999_us: fr.map(|r| r.p999_us).unwrap_or(0),
                cpu_us_per_request: cpu,
                capacity_per_core: if cpu > 0.0 { 1e6 / cpu } else { 0.0 },
            });
        }
        self.summary = summary;
        self.goals.retain(|g| g.goal.starts_with("memory"));
        let find = |name: &str| self.summary.iter().find(|r| r.target == name).cloned();
        if let (Some(enf), Some(ngx)) = (find("ordo-enforce"), find("nginx")) {
            self.goals.push(Goal {
                goal: "Enforce throughput >= nginx (ratio >= 1.0)".into(),
                measured: format!("{:.2}", enf.ratio_to_nginx),
                holds: enf.max_rps >= ngx.max_rps,
            });
            if enf.cpu_us_per_request > 0.0 && ngx.cpu_us_per_request > 0.0 {
                let ratio = ngx.cpu_us_per_request / enf.cpu_us_per_request;
                self.goals.push(Goal {
                    goal: "(same, per CPU second) Enforce req/s per core >= nginx's".into(),
                    measured: format!(
                        "{ratio:.2} ({:.1} vs {:.1} CPU us/request)",
                        enf.cpu_us_per_request, ngx.cpu_us_per_request
                    ),
                    holds: ratio >= 1.0,
                });
            }
            if let Some(crs) = find("nginx-crs") {
                let ratio = if crs.max_rps > 0.0 {
                    enf.max_rps / crs.max_rps
                } else {
                    0.0
                };
                self.goals.push(Goal {
                    goal: "Enforce throughput >= 3x nginx + CRS".into(),
                    measured: format!("{ratio:.2}x"),
                    holds: ratio >= 3.0,
                });
            }
        }
        if let Some(f) = &self.fixed_rate
            && let Some(r) = f.rows.iter().find(|r| r.target == "ordo-enforce")
        {
            let goal = "Enforce p99 added latency < 1 ms at half its max throughput".into();
            self.goals.push(match r.added_p99_us {
                Some(added) => Goal {
                    goal,
                    measured: format!("{:.3} ms at {:.0} req/s", added as f64 / 1000.0, f.rate),
                    holds: added < 1000 && r.dropped == 0 && r.errors == 0,
                },
                None => Goal {
                    goal,
                    measured: "not measured: the run has no `direct` target to add to".into(),
                    holds: false,
                },
            });
        }
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
