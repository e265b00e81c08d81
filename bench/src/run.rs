//! One benchmark run, end to end: prepare the data, start every target pinned to its CPUs,
//! check each answers the whole mix, bring the enforcers to a realistic state (mature model,
//! 100,000 live sessions), measure throughput (wrk, several concurrency levels) and latency
//! (fixed rate, open loop), each in interleaved rounds (see [`crate::rounds`]), measure memory,
//! and write the results and the chart.
//!
//! Every process is owned by a [`Proc`] guard, so an error or an interrupt (the script sends
//! SIGTERM to the process group) stops them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::{self, DistinctOperationsSource, DistinctSessionsSource, Workload};
use crate::mix::{CYCLE, lua_cycle};
use crate::nginx::{self, NginxParams};
use crate::procs::{Proc, free_port};
use crate::results::{
    EnforcerState, FixedRate, FixedRateRow, Goal, Memory, Results, Settings, TargetInfo,
    ThroughputRow,
};
use crate::rounds::{self, FixedTally, SlicePlan};
use crate::scenario::{self, EnforcerMode, EnforcerParams, JWT_SECRET, OPENAPI_YAML};
use crate::sessions::{self, PooledSession};
use crate::wrk::{self, WrkRun};

/// Everything a run can be told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    pub enforcer_bin: PathBuf,
    pub self_bin: PathBuf,
    pub wrk_script: PathBuf,
    /// Each closed-loop run.
    pub duration: Duration,
    pub levels: Vec<usize>,
    /// Rounds of every measurement: each closed-loop level and the fixed rate.
    pub rounds: usize,
    /// Fixed rate per target, shared among the rounds.
    pub rate_duration: Duration,
    pub rate_connections: usize,
    /// Live sessions put into each enforcer's table before measuring (also the measured pool).
    pub sessions: u64,
    /// Sessions of the learning traffic, each walking `learn_cycles` full cycles.
    pub learn_sessions: u64,
    pub learn_cycles: u64,
    /// Distinct idle sessions for the memory measurement (0 skips it).
    pub memory_sessions: u64,
    /// Distinct operations for the per-operation memory measurement (`a x b`).
    pub memory_operations: (u64, u64),
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub workers: usize,
    pub wrk_threads: usize,
    /// Targets to measure (names of [`ALL_TARGETS`]).
    pub targets: Vec<String>,
}

/// The targets in the order they are measured and shown; `direct` comes first, so that in every
/// fixed-rate round the reference of the added p99 is measured first.
pub const ALL_TARGETS: &[(&str, &str)] = &[
    (
        "direct",
        "the upstream accessed directly: the physical limit",
    ),
    (
        "nginx",
        "nginx 1.22 (Debian) as a plain keep-alive reverse proxy",
    ),
    (
        "nginx-crs",
        "nginx + ModSecurity 3 + OWASP CRS 3.3.4, paranoia level 1, blocking",
    ),
    (
        "ordo-bare",
        "ordo-enforcer as a plain proxy: sessions by client address, no token check, OpenAPI, rules or detectors",
    ),
    ("ordo-monitor", "ordo-enforcer in Monitor mode"),
    ("ordo-enforce", "ordo-enforcer in Enforce mode"),
];

struct Target {
    name: String,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    mode: Option<EnforcerMode>,
    proc: Option<Proc>,
}

impl Target {
    /// CPU ticks of the process doing this target's work (the upstream for `direct`).
    fn cpu_ticks(&self, upstream_pid: u32) -> u64 {
        let pid = self.proc.as_ref().map(|p| p.pid()).unwrap_or(upstream_pid);
        crate::procs::cpu_ticks_with_children(pid).unwrap_or(0)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.proc {
            Some(p) => p.check_alive(),
            None => Ok(()),
        }
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[ordo-bench {:>8}] {}", chrono_like_now(), msg.as_ref());
}

fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Runs the whole benchmark and returns what it measured (also written under `opts.out`).
pub async fn run(opts: RunOptions) -> anyhow::Result<Results> {
    let started = Instant::now();
    // Slices of the measured pool: one per run of a target, so every session continues its own
    // cycle exactly once after the pre-warm (step 0) and never interleaves across runs. Planned
    // first, so that a pool too small for the rounds fails at once, not after the preparation.
    let plan = SlicePlan::new(opts.sessions, opts.levels.len(), opts.rounds)?;
    let work = opts.out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;

    let mut results = Results {
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        machine: crate::machine::describe(),
        settings: Settings {
            duration_s: opts.duration.as_secs_f64(),
            concurrency: opts.levels.clone(),
            rounds: opts.rounds,
            fixed_rate_duration_s: opts.rate_duration.as_secs_f64(),
            fixed_rate_round_s: rounds::fixed_round_duration(opts.rate_duration, opts.rounds)
                .as_secs_f64(),
            fixed_rate_connections: opts.rate_connections,
            proxy_cpus: opts.proxy_cpus.clone(),
            load_cpus: opts.load_cpus.clone(),
            upstream_cpus: opts.load_cpus.clone(),
            proxy_workers: opts.workers,
            live_sessions: opts.sessions,
            learning_requests: opts.learn_sessions * opts.learn_cycles * CYCLE.len() as u64,
            wrk_threads: opts.wrk_threads,
        },
        ..Default::default()
    };

    // Data shared by wrk and the Rust generator.
    log("writing the request cycle, the session pool and the OpenAPI document");
    std::fs::write(work.join("cycle.lua"), lua_cycle())?;
    let pool_size = opts.sessions + opts.learn_sessions;
    sessions::write_file(&work.join("sessions.tsv"), pool_size, JWT_SECRET)?;
    let openapi = work.join("openapi.yaml");
    std::fs::write(&openapi, OPENAPI_YAML)?;
    let measured: Arc<Vec<PooledSession>> = Arc::new(sessions::read_range(
        &work.join("sessions.tsv"),
        0,
        opts.sessions,
    )?);
    let learners: Arc<Vec<PooledSession>> = Arc::new(sessions::read_range(
        &work.join("sessions.tsv"),
        opts.sessions,
        opts.learn_sessions,
    )?);

    // The upstream shares the load generator's CPU; every proxy gets the other one.
    let upstream_addr = free_port()?;
    let mut upstream = Proc::spawn(
        "upstream",
        Some(&opts.load_cpus),
        &opts.self_bin,
        &[
            "upstream".into(),
            "--listen".into(),
            upstream_addr.to_string(),
        ],
        &[],
        &logs,
    )?;
    upstream.wait_for_port(upstream_addr, Duration::from_secs(10))?;

    let mut targets = Vec::new();
    for (name, description) in ALL_TARGETS {
        if !opts.targets.iter().any(|t| t == name) {
            continue;
        }
        results.targets.push(TargetInfo {
            name: (*name).into(),
            description: (*description).into(),
        });
        let target = match *name {
            "direct" => Target {
                name: (*name).into(),
                addr: upstream_addr,
                admin: None,
                mode: None,
                proc: None,
            },
            "nginx" | "nginx-crs" => start_nginx(name, &opts, upstream_addr, &work, &logs)?,
            "ordo-bare" | "ordo-monitor" | "ordo-enforce" => {
                let mode = if *name == "ordo-enforce" {
                    EnforcerMode::Enforce
                } else {
                    EnforcerMode::Monitor
                };
                let bare = *name == "ordo-bare";
                let spec = EnforcerSpec {
                    name,
                    mode,
                    openapi: (!bare).then_some(openapi.as_path()),
                    max_sessions: usize::try_from(pool_size)? * 2,
                    session_header: None,
                    bare,
                };
                start_enforcer(&spec, &opts, upstream_addr, &work, &logs)?
            }
            other => anyhow::bail!("unknown target {other}"),
        };
        targets.push(target);
    }

    // Every target must answer the whole mix with 2xx before anything is measured.
    for t in &mut targets {
        t.check_alive()?;
        let w = Workload::mix(
            t.addr,
            Arc::new(learners[..3.min(learners.len())].to_vec()),
            0,
            1,
        );
        let checked =
            loadgen::run_checked(&w, 3.min(learners.len() as u64) * CYCLE.len() as u64).await?;
        let refused: Vec<String> = checked
            .iter()
            .filter(|(_, _, s)| !(200..400).contains(s))
            .map(|(m, p, s)| format!("{s} {m} {p}"))
            .collect();
        if refused.is_empty() {
            log(format!(
                "{}: answers all {} requests of the mix with 2xx",
                t.name,
                checked.len()
            ));
        } else {
            let note = format!(
                "{}: {} of {} smoke requests refused: {}",
                t.name,
                refused.len(),
                checked.len(),
                refused.join("; ")
            );
            log(&note);
            results.notes.push(note);
        }
    }

    // Enforcers: learn, then fill the session table.
    for t in targets.iter_mut().filter(|t| t.mode.is_some()) {
        let learn_total = opts.learn_sessions * opts.learn_cycles * CYCLE.len() as u64;
        log(format!(
            "{}: learning traffic, {learn_total} requests from {} sessions",
            t.name, opts.learn_sessions
        ));
        let r = loadgen::run_closed(Workload::mix(t.addr, learners.clone(), 0, 32), learn_total)
            .await?;
        log(format!(
            "{}: learning done at {:.0} req/s ({} non-2xx, {} errors)",
            t.name,
            r.rps,
            r.non_2xx(),
            r.errors
        ));
        log(format!(
            "{}: pre-warming {} live sessions",
            t.name, opts.sessions
        ));
        let r = loadgen::run_closed(
            Workload::mix(t.addr, measured.clone(), 0, 32),
            opts.sessions,
        )
        .await?;
        log(format!(
            "{}: pre-warm done at {:.0} req/s ({} non-2xx, {} errors)",
            t.name,
            r.rps,
            r.non_2xx(),
            r.errors
        ));
        t.check_alive()?;
    }
    for t in targets.iter().filter(|t| t.mode.is_some()) {
        let state = enforcer_state(t).await;
        log(format!(
            "{}: {} sessions tracked, {} operations in the model",
            t.name,
            state
                .sessions_tracked
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "?".into()),
            state
                .operations
                .map(|s| s.to_string())
                .unwrap_or_else(|| "?".into())
        ));
        results.enforcers.push(state);
    }

    let cpu = CpuMeter {
        ticks_per_s: crate::procs::clock_ticks_per_second() as f64,
        upstream_pid: upstream.pid(),
    };

    // Closed loop, level by level; at each level `rounds` rounds in which every target runs
    // once, always in the same order, so that the runs compared within a round are seconds
    // apart and a drift of the host hits all targets alike.
    for (i, level) in opts.levels.iter().enumerate() {
        for round in 0..opts.rounds {
            for t in &mut targets {
                let run = ClosedRun {
                    level: *level,
                    round,
                    sessions: plan.closed(i, round),
                };
                let row = measure_closed(t, &run, &opts, &work, &cpu)?;
                results.throughput.push(row);
            }
        }
    }

    let fixed = measure_fixed_rate(
        &mut targets,
        &results.throughput,
        &plan,
        &measured,
        &opts,
        &cpu,
    )
    .await?;
    results.fixed_rate = Some(fixed);

    // What the enforcers decided during the measurement.
    for t in targets.iter().filter(|t| t.mode.is_some()) {
        let decisions = decision_metrics(t).await;
        if let Some(e) = results.enforcers.iter_mut().find(|e| e.target == t.name) {
            e.decisions = decisions;
        }
    }
    // Stop the proxies before the memory run so it has the CPU to itself.
    drop(targets);

    if opts.memory_sessions > 0 {
        log(format!(
            "memory: {} idle sessions, then {} learned operations",
            opts.memory_sessions,
            opts.memory_operations.0 * opts.memory_operations.1
        ));
        let memory = measure_memory(&opts, upstream_addr, &openapi, &work, &logs).await?;
        let holds = memory.bytes_per_session <= 200.0;
        results.goals.push(Goal {
            goal: "memory: at most 200 bytes per tracked idle session".into(),
            measured: format!("{:.0} bytes", memory.bytes_per_session),
            holds,
        });
        results.memory = Some(memory);
    }
    drop(upstream);

    results.summarise();
    results
        .notes
        .push(format!("run took {:.0} s", started.elapsed().as_secs_f64()));
    Ok(results)
}

/// The CPU time of the process doing a target's work.
struct CpuMeter {
    ticks_per_s: f64,
    upstream_pid: u32,
}

impl CpuMeter {
    fn ticks(&self, t: &Target) -> u64 {
        t.cpu_ticks(self.upstream_pid)
    }

    /// CPU seconds `t` used since it was at `before` ticks.
    fn seconds_since(&self, t: &Target, before: u64) -> f64 {
        self.ticks(t).saturating_sub(before) as f64 / self.ticks_per_s
    }
}

/// One closed-loop run of a target: the level, the round (from 0) and its slice of sessions.
struct ClosedRun {
    level: usize,
    round: usize,
    sessions: std::ops::Range<u64>,
}

/// Runs wrk once against `t` and returns the row of the results (logged as it ends).
fn measure_closed(
    t: &mut Target,
    run: &ClosedRun,
    opts: &RunOptions,
    work: &Path,
    cpu: &CpuMeter,
) -> anyhow::Result<ThroughputRow> {
    t.check_alive()?;
    let (level, round) = (run.level, run.round + 1);
    let before = cpu.ticks(t);
    let summary = wrk::run(&WrkRun {
        target: t.addr,
        threads: opts.wrk_threads,
        connections: level,
        duration: opts.duration,
        cpus: Some(&opts.load_cpus),
        script: &opts.wrk_script,
        data_dir: work,
        first_session: run.sessions.start,
        sessions: run.sessions.end - run.sessions.start,
        start_step: 1,
        out: work.join(format!("wrk-{}-{level}-{round}.json", t.name)),
    })?;
    let cpu_s = cpu.seconds_since(t, before);
    let duration_s = summary.duration_us as f64 / 1e6;
    let cpu_us_per_request = rounds::ratio(cpu_s * 1e6, summary.requests as f64).unwrap_or(0.0);
    let cpu_busy = cpu_s / duration_s.max(1e-9);
    log(format!(
        "{} c={level} round {round}/{}: {:.0} req/s, p50 {} us, p99 {} us, {} non-2xx, {} errors, {cpu_us_per_request:.1} CPU us/request, CPU busy {:.0}%",
        t.name,
        opts.rounds,
        summary.rps(),
        summary.latency_us.p50,
        summary.latency_us.p99,
        summary.errors.status,
        summary.transport_errors(),
        cpu_busy * 100.0
    ));
    Ok(ThroughputRow {
        target: t.name.clone(),
        concurrency: level,
        round,
        requests: summary.requests,
        duration_s,
        cpu_us_per_request,
        cpu_busy,
        rps: summary.rps(),
        non_2xx: summary.errors.status,
        errors: summary.transport_errors(),
        p50_us: summary.latency_us.p50,
        p99_us: summary.latency_us.p99,
        p999_us: summary.latency_us.p999,
    })
}

/// The rate every target is offered: half of the Enforce-mode enforcer's best closed-loop
/// throughput (the latency target of docs/benchmarks.md, "Performance targets"), judged by its median run per level so that one
/// lucky run does not set it; failing that, of the next target measured.
fn fixed_rate_basis(throughput: &[ThroughputRow]) -> (&'static str, f64) {
    let (target, rps) = ["ordo-enforce", "ordo-monitor", "nginx", "direct"]
        .iter()
        .map(|n| {
            (
                *n,
                rounds::best_median_run(throughput, n).map_or(0.0, |r| r.rps),
            )
        })
        .find(|(_, rps)| *rps > 0.0)
        .unwrap_or(("none", 2000.0));
    (target, (rps / 2.0).floor().max(100.0))
}

/// The fixed-rate rounds: in each, every target in turn (direct first) gets the rate for a
/// share of `--rate-duration`, over the round's own slice of sessions. Per target the rounds'
/// histograms are merged; the added p99 is the median of per-round differences to direct.
async fn measure_fixed_rate(
    targets: &mut [Target],
    throughput: &[ThroughputRow],
    plan: &SlicePlan,
    measured: &[PooledSession],
    opts: &RunOptions,
    cpu: &CpuMeter,
) -> anyhow::Result<FixedRate> {
    let (basis_target, rate) = fixed_rate_basis(throughput);
    let duration = rounds::fixed_round_duration(opts.rate_duration, opts.rounds);
    let mut tallies = targets
        .iter()
        .map(|t| FixedTally::new(&t.name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for round in 0..opts.rounds {
        let slice = plan.fixed(round);
        let sessions =
            Arc::new(measured[usize::try_from(slice.start)?..usize::try_from(slice.end)?].to_vec());
        for (t, tally) in targets.iter_mut().zip(&mut tallies) {
            let run = FixedRound {
                rate,
                duration,
                round,
                sessions: sessions.clone(),
            };
            measure_fixed_round(t, tally, run, opts, cpu).await?;
        }
    }
    let mut rows: Vec<FixedRateRow> = tallies.iter().map(FixedTally::row).collect();
    rounds::fill_added_p99(&mut rows);
    for r in &rows {
        log(format!(
            "{} at {rate:.0} req/s, {} rounds together: p50 {} us, p99 {} us, p99.9 {} us; added p99 {}",
            r.target,
            opts.rounds,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.added_p99_us.map_or_else(
                || "n/a".to_owned(),
                |us| format!("{us} us (median of rounds)")
            )
        ));
    }
    Ok(FixedRate {
        rate,
        basis: format!(
            "half of {basis_target}'s best closed-loop throughput (median run per level)"
        ),
        rounds: opts.rounds,
        round_duration_s: duration.as_secs_f64(),
        rows,
    })
}

/// One fixed-rate round of one target.
struct FixedRound {
    rate: f64,
    duration: Duration,
    /// From 0.
    round: usize,
    sessions: Arc<Vec<PooledSession>>,
}

/// Offers `run.rate` to `t` for `run.duration` and adds the outcome to its tally.
async fn measure_fixed_round(
    t: &mut Target,
    tally: &mut FixedTally,
    run: FixedRound,
    opts: &RunOptions,
    cpu: &CpuMeter,
) -> anyhow::Result<()> {
    t.check_alive()?;
    let w = Workload::mix(t.addr, run.sessions, 1, opts.rate_connections);
    let before = cpu.ticks(t);
    let (r, histogram) = loadgen::run_fixed_rate_recorded(w, run.rate, run.duration).await?;
    let cpu_s = cpu.seconds_since(t, before);
    log(format!(
        "{} at {:.0} req/s round {}/{}: p50 {} us, p99 {} us, p99.9 {} us ({} non-2xx, {} errors, {} dropped)",
        t.name,
        run.rate,
        run.round + 1,
        opts.rounds,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.non_2xx(),
        r.errors,
        r.dropped
    ));
    tally.add(&r, &histogram, cpu_s)
}

fn start_nginx(
    name: &str,
    opts: &RunOptions,
    upstream: SocketAddr,
    work: &Path,
    logs: &Path,
) -> anyhow::Result<Target> {
    let listen = free_port()?;
    let params = NginxParams {
        name: name.into(),
        listen,
        upstream,
        workers: opts.workers,
        dir: work.join(name),
        modsecurity: name == "nginx-crs",
        master_process: true,
    };
    nginx::write(&params)?;
    let mut proc = Proc::spawn(
        name,
        Some(&opts.proxy_cpus),
        Path::new(nginx::NGINX_BIN),
        &nginx::args(&params),
        &[],
        logs,
    )?;
    // The CRS takes a few seconds to compile its rules.
    proc.wait_for_port(listen, Duration::from_secs(60))?;
    log(format!("{name}: listening on {listen}"));
    Ok(Target {
        name: name.into(),
        addr: listen,
        admin: None,
        mode: None,
        proc: Some(proc),
    })
}

/// Ports and config of one enforcer instance.
struct EnforcerSpec<'a> {
    name: &'a str,
    mode: EnforcerMode,
    openapi: Option<&'a Path>,
    max_sessions: usize,
    session_header: Option<&'a str>,
    bare: bool,
}

fn start_enforcer(
    spec: &EnforcerSpec<'_>,
    opts: &RunOptions,
    upstream: SocketAddr,
    work: &Path,
    logs: &Path,
) -> anyhow::Result<Target> {
    let listen = free_port()?;
    let admin = free_port()?;
    let config = work.join(format!("{}.yaml", spec.name));
    let yaml = scenario::enforcer_config_yaml(&EnforcerParams {
        listen,
        admin,
        upstream,
        mode: spec.mode,
        openapi_path: spec.openapi,
        max_sessions: spec.max_sessions,
        session_header: spec.session_header,
        model_file: None,
        bare: spec.bare,
    });
    std::fs::write(&config, yaml)?;
    let mut proc = Proc::spawn(
        spec.name,
        Some(&opts.proxy_cpus),
        &opts.enforcer_bin,
        &["--config".into(), config.display().to_string()],
        &[
            ("ORDO_WORKERS", opts.workers.to_string()),
            ("ORDO_LOG", "warn".into()),
        ],
        logs,
    )?;
    proc.wait_for_port(listen, Duration::from_secs(30))?;
    proc.wait_for_port(admin, Duration::from_secs(10))?;
    log(format!(
        "{}: listening on {listen} (admin {admin})",
        spec.name
    ));
    Ok(Target {
        name: spec.name.into(),
        addr: listen,
        admin: Some(admin),
        mode: Some(spec.mode),
        proc: Some(proc),
    })
}

/// Prometheus text → `(name with labels, value)` for the lines whose name contains any of `keys`.
pub fn metric_lines(text: &str, keys: &[&str]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let base = name.split('{').next().unwrap_or(name);
            if keys.iter().any(|k| base.contains(k)) {
                Some((name.to_owned(), value.parse().ok()?))
            } else {
                None
            }
        })
        .collect()
}

/// The number of live sessions an enforcer reports on `/metrics`.
pub fn sessions_tracked(metrics: &str) -> Option<f64> {
    metric_lines(metrics, &["session"])
        .into_iter()
        .find(|(name, _)| {
            !name.contains('{')
                && (name.contains("tracked") || name.contains("active") || name.contains("live"))
        })
        .map(|(_, v)| v)
}

/// The number of operations in `GET /v1/model`'s answer (the first array under a key naming them).
pub fn model_operations(model: &serde_json::Value) -> Option<usize> {
    for key in ["operations", "endpoints", "inventory"] {
        if let Some(v) = model.get(key) {
            if let Some(a) = v.as_array() {
                return Some(a.len());
            }
            if let Some(o) = v.as_object() {
                for inner in ["operations", "endpoints", "items"] {
                    if let Some(a) = o.get(inner).and_then(|x| x.as_array()) {
                        return Some(a.len());
                    }
                }
                return Some(o.len());
            }
        }
    }
    for v in model.as_object()?.values() {
        if let Some(n) = model_operations(v) {
            return Some(n);
        }
    }
    None
}

/// The maturity part of `GET /v1/model`.
pub fn model_maturity(model: &serde_json::Value) -> serde_json::Value {
    let Some(obj) = model.as_object() else {
        return serde_json::Value::Null;
    };
    let picked: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(k, _)| k.contains("matur") || k.contains("detector"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if picked.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(picked)
    }
}

async fn enforcer_state(t: &Target) -> EnforcerState {
    let mut state = EnforcerState {
        target: t.name.clone(),
        mode: t.mode.map(|m| m.as_str().to_owned()).unwrap_or_default(),
        rules: 10,
        ..Default::default()
    };
    let Some(admin) = t.admin else { return state };
    if let Ok((200, metrics)) = loadgen::get_text(admin, "/metrics").await {
        state.sessions_tracked = sessions_tracked(&metrics);
    }
    if let Ok((200, body)) = loadgen::get_text(admin, "/v1/model").await
        && let Ok(model) = serde_json::from_str::<serde_json::Value>(&body)
    {
        state.operations = model_operations(&model);
        state.maturity = model_maturity(&model);
    }
    if let Ok((200, body)) = loadgen::get_text(admin, "/v1/rules").await
        && let Ok(serde_json::Value::Array(rules)) =
            serde_json::from_str::<serde_json::Value>(&body)
    {
        state.rules = rules.len();
    }
    state
}

async fn decision_metrics(t: &Target) -> serde_json::Value {
    let Some(admin) = t.admin else {
        return serde_json::Value::Null;
    };
    match loadgen::get_text(admin, "/metrics").await {
        Ok((200, metrics)) => {
            let lines = metric_lines(
                &metrics,
                &[
                    "decision", "blocked", "flagged", "finding", "evict", "failure",
                ],
            );
            serde_json::Value::Object(
                lines
                    .into_iter()
                    .filter(|(_, v)| *v != 0.0)
                    .map(|(k, v)| (k, serde_json::json!(v)))
                    .collect(),
            )
        }
        _ => serde_json::Value::Null,
    }
}

/// RSS of a fresh enforcer before and after `memory_sessions` distinct idle sessions, and of
/// another before and after learning `a x b` distinct operations.
async fn measure_memory(
    opts: &RunOptions,
    upstream: SocketAddr,
    openapi: &Path,
    work: &Path,
    logs: &Path,
) -> anyhow::Result<Memory> {
    let cap = usize::try_from(opts.memory_sessions + opts.memory_sessions / 10)? + 10_000;
    let spec = EnforcerSpec {
        name: "ordo-memory",
        mode: EnforcerMode::Monitor,
        openapi: Some(openapi),
        max_sessions: cap,
        session_header: Some("X-Session-Id"),
        bare: false,
    };
    let mut t = start_enforcer(&spec, opts, upstream, work, logs)?;
    let header = http::HeaderName::from_static("x-session-id");
    // Warm the allocator and the connection pool with sessions that stay in the table.
    let warm = Workload {
        target: t.addr,
        source: Arc::new(DistinctSessionsSource {
            first: 10_000_000,
            header: header.clone(),
            step: 1,
        }),
        connections: 32,
    };
    loadgen::run_closed(warm, 2000).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid_rss = |t: &Target| t.proc.as_ref().map(|p| p.rss_kib()).transpose();
    let before = pid_rss(&t)?.unwrap_or(0);
    let fill = Workload {
        target: t.addr,
        source: Arc::new(DistinctSessionsSource {
            first: 0,
            header,
            step: 1,
        }),
        connections: 32,
    };
    let r = loadgen::run_closed(fill, opts.memory_sessions).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    t.check_alive()?;
    let after = pid_rss(&t)?.unwrap_or(0);
    let tracked = match t.admin {
        Some(admin) => loadgen::get_text(admin, "/metrics")
            .await
            .ok()
            .and_then(|(_, m)| sessions_tracked(&m)),
        None => None,
    };
    log(format!(
        "memory: {} sessions sent ({:.0} req/s, {} non-2xx, {} errors): RSS {before} -> {after} KiB, {} tracked",
        r.requests,
        r.rps,
        r.non_2xx(),
        r.errors,
        tracked
            .map(|s| format!("{s:.0}"))
            .unwrap_or_else(|| "?".into())
    ));
    drop(t);

    // Per learned operation: a fresh enforcer in Learn mode without the OpenAPI document, so
    // every operation is learned from traffic.
    let spec = EnforcerSpec {
        name: "ordo-memory-ops",
        mode: EnforcerMode::Learn,
        openapi: None,
        max_sessions: 100_000,
        session_header: Some("X-Session-Id"),
        bare: false,
    };
    let mut t = start_enforcer(&spec, opts, upstream, work, logs)?;
    let (a, b) = opts.memory_operations;
    let ops = a * b;
    // Same sessions before and after: only the operations differ.
    let warm = Workload {
        target: t.addr,
        source: Arc::new(DistinctOperationsSource {
            a_values: 1,
            b_values: 1,
            sessions: 200,
        }),
        connections: 16,
    };
    loadgen::run_closed(warm, 2000).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ops_before = pid_rss(&t)?.unwrap_or(0);
    let w = Workload {
        target: t.addr,
        source: Arc::new(DistinctOperationsSource {
            a_values: a,
            b_values: b,
            sessions: 200,
        }),
        connections: 16,
    };
    loadgen::run_closed(w, ops * 25).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    t.check_alive()?;
    let ops_after = pid_rss(&t)?.unwrap_or(0);
    let model = match t.admin {
        Some(admin) => match loadgen::get_text(admin, "/v1/model").await {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok(),
            _ => None,
        },
        None => None,
    };
    let learned = model.as_ref().and_then(model_operations);
    // The learned model's own account of its size (`analyzer.usage` of the view,
    // enforcer/src/detect/view.rs): how many sequence contexts the workload made, and the
    // model's estimate of its bytes, next to the RSS.
    let usage = |key: &str| {
        model
            .as_ref()
            .and_then(|m| m.get("analyzer")?.get("usage")?.get(key)?.as_u64())
    };
    log(format!(
        "memory: {ops} operations x 25 requests: RSS {ops_before} -> {ops_after} KiB (model reports {learned:?} operations, {:?} sequence contexts, about {:?} bytes)",
        usage("contexts"),
        usage("approxBytes"),
    ));
    drop(t);

    Ok(Memory {
        sessions: opts.memory_sessions,
        sessions_tracked: tracked,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_session: (after.saturating_sub(before) as f64 * 1024.0) / opts.memory_sessions.max(1) as f64,
        operations: ops,
        operations_learned: learned,
        rss_before_operations_kib: ops_before,
        rss_after_operations_kib: ops_after,
        bytes_per_operation: (ops_after.saturating_sub(ops_before) as f64 * 1024.0) / ops.max(1) as f64,
        method: "VmRSS of the ordo-enforcer process (/proc/PID/status) before and after; sessions named by an \
                 X-Session-Id header, one GET /api/v1/accounts each; operations learned in Learn mode (no OpenAPI) \
                 from GET /api/v2/<a>/<b>/items, 25 requests each"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_picked_by_name() {
        let text = "# HELP x\nordo_sessions_tracked 100000\nordo_requests_total{decision=\"allow\"} 5\nother 1\n";
        assert_eq!(sessions_tracked(text), Some(100_000.0));
        let lines = metric_lines(text, &["decision", "requests"]);
        assert_eq!(
            lines,
            vec![("ordo_requests_total{decision=\"allow\"}".to_owned(), 5.0)]
        );
    }

    #[test]
    fn model_operations_are_counted_wherever_they_are() {
        let m = serde_json::json!({"operations": [{"id": 1}, {"id": 2}]});
        assert_eq!(model_operations(&m), Some(2));
        let m = serde_json::json!({"model": {"endpoints": [1, 2, 3]}});
        assert_eq!(model_operations(&m), Some(3));
        assert_eq!(model_operations(&serde_json::json!({"x": 1})), None);
    }
}
