//! User-space instructions per request, counted by valgrind's callgrind: nginx and the
//! enforcer (Enforce mode, the benchmark's policy) each run under `valgrind --tool=callgrind`
//! and receive the same warm-up and then the same fixed number of requests of the mix.
//!
//! Unlike CPU time, the count does not depend on what else the machine does (hardware counters
//! are not available in this VM). Only the measured requests are counted: each target starts
//! with callgrind's instrumentation off (`--instr-atstart=no`, so the warm-up runs at a few
//! times native cost instead of ~50x), `callgrind_control -i on` switches it on after the
//! warm-up, and `callgrind_control -d` dumps the counts once the measured requests are answered;
//! the dump holds exactly what the process executed in between (all its threads; valgrind does
//! not count the kernel's work in system calls). Start-up, warm-up and shutdown are not in it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::{self, Workload};
use crate::mix::CYCLE;
use crate::nginx::{self, NginxParams};
use crate::procs::{Proc, free_port};
use crate::scenario::{self, EnforcerMode, EnforcerParams, JWT_SECRET, OPENAPI_YAML};
use crate::sessions;

/// What an instruction count is told.
#[derive(Debug, Clone)]
pub struct InstructionOptions {
    pub out: PathBuf,
    pub enforcer_bin: PathBuf,
    pub self_bin: PathBuf,
    pub valgrind: PathBuf,
    /// Measured requests per target: whole cycles of the mix (a multiple of its length).
    pub requests: u64,
    /// Sessions of the learning traffic (one full cycle each), as in `ordo-bench run`.
    pub learn_sessions: u64,
    /// Live sessions put into the table (one request each) before measuring.
    pub sessions: u64,
    pub connections: usize,
    /// Functions of the enforcer's profile to print, by inclusive cost.
    pub top: usize,
    pub proxy_cpus: String,
    pub load_cpus: String,
    pub targets: Vec<String>,
}

/// The count of one target.
#[derive(Debug, Clone)]
pub struct Count {
    pub target: String,
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub instructions: u64,
    pub dump: PathBuf,
}

impl Count {
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[ordo-bench instructions] {}", msg.as_ref());
}

/// Runs the count for every target and returns the report text (also written to
/// `out/instructions.txt`; the callgrind dumps stay in `out/`).
pub async fn run(opts: InstructionOptions) -> anyhow::Result<String> {
    let cycle = CYCLE.len() as u64;
    anyhow::ensure!(
        opts.requests >= cycle && opts.requests.is_multiple_of(cycle),
        "--requests must be a multiple of the cycle's {cycle} requests"
    );
    // The measured requests are whole cycles of `requests / cycle` sessions continuing at step
    // 1, so every step of the mix is counted equally often.
    let measured_sessions = opts.requests / cycle;
    let live = opts.sessions.max(measured_sessions);
    let started = Instant::now();
    let work = opts.out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    log(format!(
        "{} sessions (learning {} + live {live}), OpenAPI document",
        opts.learn_sessions + live,
        opts.learn_sessions
    ));
    let pool = work.join("sessions.tsv");
    sessions::write_file(&pool, live + opts.learn_sessions, JWT_SECRET)?;
    let openapi = work.join("openapi.yaml");
    std::fs::write(&openapi, OPENAPI_YAML)?;
    let live_pool = Arc::new(sessions::read_range(&pool, 0, live)?);
    let learners = Arc::new(sessions::read_range(&pool, live, opts.learn_sessions)?);
    let measured = Arc::new(live_pool[..usize::try_from(measured_sessions)?].to_vec());

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

    let mut counts = Vec::new();
    let mut profile = String::new();
    for name in &opts.targets {
        let (mut proc, addr) = match name.as_str() {
            "nginx" => start_nginx(&opts, upstream_addr, &work, &logs)?,
            "ordo-enforce" => start_enforcer(&opts, upstream_addr, &openapi, &work, &logs)?,
            other => anyhow::bail!("unknown target {other} (nginx, ordo-enforce)"),
        };
        let conns = opts.connections;
        let learn = opts.learn_sessions * cycle;
        log(format!(
            "{name}: warm-up (instrumentation off): {learn} learning requests, {live} live sessions"
        ));
        let r = loadgen::run_closed(Workload::mix(addr, learners.clone(), 0, conns), learn).await?;
        anyhow::ensure!(r.errors == 0, "{name}: {} errors in the warm-up", r.errors);
        let r = loadgen::run_closed(Workload::mix(addr, live_pool.clone(), 0, conns), live).await?;
        anyhow::ensure!(r.errors == 0, "{name}: {} errors in the warm-up", r.errors);
        proc.check_alive()?;
        callgrind_control(&["-i", "on"], proc.pid())?;
        log(format!("{name}: {} measured requests", opts.requests));
        let r = loadgen::run_closed(
            Workload::mix(addr, measured.clone(), 1, conns),
            opts.requests,
        )
        .await?;
        callgrind_control(&["-d"], proc.pid())?;
        proc.check_alive()?;
        let dump = work.join(format!("callgrind.{name}.{}.1", proc.pid()));
        let instructions = read_total(&dump)?;
        drop(proc);
        let count = Count {
            target: name.clone(),
            requests: r.requests,
            non_2xx: r.non_2xx(),
            errors: r.errors,
            instructions,
            dump: dump.clone(),
        };
        log(format!(
            "{name}: {instructions} instructions for {} requests = {:.0} per request ({} non-2xx, {} errors)",
            count.requests,
            count.per_request(),
            count.non_2xx,
            count.errors
        ));
        if name == "ordo-enforce" {
            profile = top_functions(&dump, opts.top, count.requests)?;
            if let Some(outside) = outside_analyzer(&profile, count.per_request()) {
                log(format!(
                    "{name}: {outside:.0} per request outside the learned detectors' inspect and observe (repeatable to about 0.5 %; those two vary with what learning saw)"
                ));
            }
        }
        counts.push(count);
    }
    drop(upstream);

    let mut report = render(&counts, &opts);
    if !profile.is_empty() {
        let _ = writeln!(
            report,
            "\nordo-enforce: top {} functions by inclusive cost (callgrind_annotate --inclusive=yes), instructions per request:\n{profile}",
            opts.top
        );
    }
    let _ = writeln!(
        report,
        "took {:.0} s; callgrind dumps under {} (callgrind_annotate FILE)",
        started.elapsed().as_secs_f64(),
        work.display()
    );
    std::fs::write(opts.out.join("instructions.txt"), &report)?;
    Ok(report)
}

fn render(counts: &[Count], opts: &InstructionOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "User-space instructions per request (valgrind --tool=callgrind), {} requests of the mix after {} learning sessions and {} live sessions, {} connections:",
        opts.requests, opts.learn_sessions, opts.sessions, opts.connections
    );
    let _ = writeln!(
        s,
        "\n| target | requests | non-2xx | errors | instructions | per request |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for c in counts {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} |",
            c.target,
            c.requests,
            c.non_2xx,
            c.errors,
            c.instructions,
            c.per_request()
        );
    }
    let find = |n: &str| counts.iter().find(|c| c.target == n);
    if let (Some(e), Some(n)) = (find("ordo-enforce"), find("nginx")) {
        let _ = writeln!(
            s,
            "\nordo-enforce / nginx: {:.2} (instructions per request)",
            e.per_request() / n.per_request().max(1.0)
        );
    }
    s
}

/// `callgrind_control ARGS PID`, which waits until valgrind has carried the command out.
fn callgrind_control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .map_err(|e| anyhow::anyhow!("callgrind_control: {e} (is valgrind installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains("OK"),
        "callgrind_control {args:?} {pid} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The total instruction count of a callgrind dump (`summary:` line, else `totals:`).
pub fn read_total(dump: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(dump).map_err(|e| anyhow::anyhow!("{}: {e}", dump.display()))?;
    parse_total(&text).ok_or_else(|| anyhow::anyhow!("{}: no summary line", dump.display()))
}

fn parse_total(text: &str) -> Option<u64> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    line("summary:").or_else(|| line("totals:"))
}

/// The `top` functions of a dump by inclusive cost, as instructions per request.
fn top_functions(dump: &Path, top: usize, requests: u64) -> anyhow::Result<String> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .map_err(|e| anyhow::anyhow!("callgrind_annotate: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "callgrind_annotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(per_request_lines(
        &String::from_utf8_lossy(&out.stdout),
        top,
        requests,
    ))
}

/// Instructions per request outside the analyzer's `inspect` and `observe` (docs/benchmarks.md,
/// seventh pass): what the learned detectors do for a request depends on which answers each
/// session was given during the warm-up, which the connections interleave differently from
/// run to run, so the total moves by a few percent; the rest repeats. `None` when the profile
/// does not name both.
fn outside_analyzer(profile: &str, per_request: f64) -> Option<f64> {
    let cost = |method: &str| {
        profile.lines().find_map(|l| {
            let (n, name) = l.trim_start().split_once("  ")?;
            name.contains(&format!(
                "as ordo_enforcer::detect::request::Analyzer>::{method}"
            ))
            .then(|| n.trim().parse::<f64>().ok())
            .flatten()
        })
    };
    Some(per_request - cost("inspect")? - cost("observe")?)
}

/// Lines `1,234,567 (12.34%)  file:function [object]` of callgrind_annotate → per request.
fn per_request_lines(annotate: &str, top: usize, requests: u64) -> String {
    let mut s = String::new();
    for line in annotate
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (count, rest) = l.split_once(' ')?;
            let n: u64 = count.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')').map_or(r, |(_, after)| after),
                None => rest,
            };
            let name = rest.trim();
            // The "PROGRAM TOTALS" line and lines without a function name.
            (!name.is_empty() && !name.starts_with("PROGRAM")).then_some((n, name.to_owned()))
        })
        .take(top)
    {
        let (n, name) = line;
        let name = name.strip_prefix("???:").unwrap_or(&name);
        let _ = writeln!(s, "{:>10.0}  {name}", n as f64 / requests.max(1) as f64);
    }
    s
}

/// `valgrind --tool=callgrind` with instrumentation off until the warm-up is over and its dumps
/// in `work`, followed by `program`.
fn valgrind_args(name: &str, work: &Path, program: &Path) -> Vec<String> {
    vec![
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!(
            "--callgrind-out-file={}",
            work.join(format!("callgrind.{name}.%p")).display()
        ),
        program.display().to_string(),
    ]
}

fn start_nginx(
    opts: &InstructionOptions,
    upstream: SocketAddr,
    work: &Path,
    logs: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let listen = free_port()?;
    let params = NginxParams {
        name: "nginx".into(),
        listen,
        upstream,
        workers: 1,
        dir: work.join("nginx"),
        modsecurity: false,
        // One process, so that valgrind follows the one doing the work.
        master_process: false,
    };
    nginx::write(&params)?;
    let mut args = valgrind_args("nginx", work, Path::new(nginx::NGINX_BIN));
    args.extend(nginx::args(&params));
    let mut proc = Proc::spawn(
        "nginx",
        Some(&opts.proxy_cpus),
        &opts.valgrind,
        &args,
        &[],
        logs,
    )?;
    proc.wait_for_port(listen, Duration::from_secs(120))?;
    Ok((proc, listen))
}

fn start_enforcer(
    opts: &InstructionOptions,
    upstream: SocketAddr,
    openapi: &Path,
    work: &Path,
    logs: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let listen = free_port()?;
    let admin = free_port()?;
    let config = work.join("ordo-enforce.yaml");
    let max_sessions = usize::try_from(opts.sessions + opts.learn_sessions)? * 2;
    std::fs::write(
        &config,
        scenario::enforcer_config_yaml(&EnforcerParams {
            listen,
            admin,
            upstream,
            mode: EnforcerMode::Enforce,
            openapi_path: Some(openapi),
            max_sessions,
            session_header: None,
            model_file: None,
            bare: false,
        }),
    )?;
    let mut args = valgrind_args("ordo-enforce", work, &opts.enforcer_bin);
    args.extend(["--config".into(), config.display().to_string()]);
    let mut proc = Proc::spawn(
        "ordo-enforce",
        Some(&opts.proxy_cpus),
        &opts.valgrind,
        &args,
        &[("ORDO_WORKERS", "1".into()), ("ORDO_LOG", "warn".into())],
        logs,
    )?;
    proc.wait_for_port(listen, Duration::from_secs(120))?;
    proc.wait_for_port(admin, Duration::from_secs(60))?;
    Ok((proc, listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_comes_from_the_summary_line() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 1237173\n\ntotals: 1237485\n";
        assert_eq!(parse_total(dump), Some(1_237_173));
        assert_eq!(parse_total("events: Ir\ntotals: 42\n"), Some(42));
        assert_eq!(parse_total("events: Ir\n"), None);
    }

    #[test]
    fn the_part_outside_the_analyzer_is_the_total_less_inspect_and_observe() {
        let profile = "    213354  ordo_enforcer::main [/x]\n     56030  <ordo_enforcer::detect::analyzer::LearnedAnalyzer as ordo_enforcer::detect::request::Analyzer>::observe [/x]\n     45209  <ordo_enforcer::detect::analyzer::LearnedAnalyzer as ordo_enforcer::detect::request::Analyzer>::inspect [/x]\n";
        assert_eq!(outside_analyzer(profile, 213_354.0), Some(112_115.0));
        assert_eq!(
            outside_analyzer("    10  ordo_enforcer::main [/x]\n", 10.0),
            None
        );
    }

    #[test]
    fn annotate_lines_become_per_request_costs() {
        let text = "--------\nIr\n--------\n10,000 (100.0%)  PROGRAM TOTALS\n\n--------\nIr  file:function\n--------\n8,000 (80.00%)  ???:ordo_enforcer::proxy::handler::handle [/x/ordo-enforcer]\n2,000 (20.00%)  ???:memcpy [/lib/libc.so.6]\n";
        let s = per_request_lines(text, 10, 100);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        assert!(
            lines[0]
                .trim_start()
                .starts_with("80  ordo_enforcer::proxy::handler::handle")
        );
        assert!(lines[1].contains("20  memcpy"));
    }
}
