//! `ordo-bench forwarding`: what routing a session to its owner replica costs, next to the
//! single-replica path (docs/scale-out.md). Enforcer processes with the benchmark's realistic
//! policy, on loopback, the same request mix at a fixed rate:
//!
//! - `single`: one enforcer without `peers` (today's path);
//! - `peers-solo`: one enforcer whose `peers` list holds only itself (the routing step's cost
//!   when nothing is forwarded);
//! - `forwarded`: an enforcer that is not in its own peer list, so that it forwards every
//!   request to the owner, which decides and proxies: the path of the requests that reach
//!   another replica than their session's owner ((N - 1) / N of them with N replicas).
//!
//! Latency is measured from each request's due time (open loop); CPU per request is the CPU
//! time of the enforcer processes involved over the requests; the bytes on the internal hop are
//! counted by a relay between the forwarder and the owner in a separate short run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::loadgen::{self, LoadReport, Workload};
use crate::procs::{Proc, clock_ticks_per_second, cpu_ticks, free_port};
use crate::scenario::{self, EnforcerMode, EnforcerParams, JWT_SECRET, OPENAPI_YAML};
use crate::sessions::{self, PooledSession};

/// Settings of a forwarding benchmark.
#[derive(Debug, Clone)]
pub struct ForwardingOptions {
    pub out: PathBuf,
    pub enforcer_bin: PathBuf,
    pub self_bin: PathBuf,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub sessions: u64,
    /// Fixed-rate runs of every target (interleaved); medians are reported.
    pub rounds: usize,
    /// CPUs of the enforcers and of the load generator with the upstream (taskset lists).
    pub proxy_cpus: String,
    pub load_cpus: String,
}

/// One target's figures (p50 of the median round, median p99 and CPU over the rounds).
#[derive(Debug, Clone, Serialize)]
pub struct ForwardingResult {
    pub name: String,
    pub report: LoadReport,
    /// CPU time of the enforcer processes of the target, per request.
    pub cpu_us_per_request: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardingResults {
    pub results: Vec<ForwardingResult>,
    /// Bytes per forwarded request on the internal hop: forwarder → owner, owner → forwarder.
    pub hop_bytes_out: f64,
    pub hop_bytes_back: f64,
}

/// One shortened session history (8 s) and a margin: the measured run starts after it.
const HISTORY_WAIT: Duration = Duration::from_secs(9);

const SECRET: &str = "ordo-bench-forwarding-secret-0123456789";

fn log(msg: impl AsRef<str>) {
    eprintln!("[ordo-bench forwarding] {}", msg.as_ref());
}

struct Enforcer {
    proc: Proc,
    addr: SocketAddr,
}

/// `peers`: (this replica's internal address, the member list).
fn start(
    name: &str,
    opts: &ForwardingOptions,
    upstream: SocketAddr,
    openapi: &Path,
    peers: Option<(SocketAddr, Vec<SocketAddr>)>,
    work: &Path,
) -> anyhow::Result<Enforcer> {
    let listen = free_port()?;
    let admin = free_port()?;
    let yaml = scenario::enforcer_config_yaml(&EnforcerParams {
        listen,
        admin,
        upstream,
        mode: EnforcerMode::Enforce,
        openapi_path: Some(openapi),
        max_sessions: usize::try_from(opts.sessions)? * 2,
        session_header: None,
        model_file: None,
        bare: false,
    });
    // The session history (and the rule windows within it) shortened from minutes to
    // seconds, for every target alike: a replica treats the sessions it owns as possibly
    // served elsewhere for one history after it starts, and what is measured is the steady
    // state after that (`HISTORY_WAIT`).
    let mut yaml = yaml
        .replace("duration: 10m", "duration: 8s")
        .replace("duration: 5m", "duration: 5s")
        // Rules without a window default to the history's default (10 min): give them one.
        .replace(
            "after: [\"GET /api/v1/cards/{card_id}\"]",
            "after: [\"GET /api/v1/cards/{card_id}\"]\n      within: { requests: 10, duration: 8s }",
        )
        .replace(
            "after: [\"GET /api/v1/profile\"]",
            "after: [\"GET /api/v1/profile\"]\n      within: { requests: 10, duration: 8s }",
        )
        .replace(
            "after: [\"GET /api/v1/accounts/{account_id}/transactions\"]",
            "after: [\"GET /api/v1/accounts/{account_id}/transactions\"]\n      within: { requests: 10, duration: 8s }",
        );
    if let Some((me, members)) = &peers {
        let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        yaml.push_str(&format!(
            "peers:\n  listen: \"{me}\"\n  advertise: \"{me}\"\n  static: [{}]\n  secret: \"{SECRET}\"\n",
            list.join(", ")
        ));
    }
    let config = work.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    let mut proc = Proc::spawn(
        name,
        Some(&opts.proxy_cpus),
        &opts.enforcer_bin,
        &["--config".into(), config.display().to_string()],
        &[("ORDO_WORKERS", "1".into()), ("ORDO_LOG", "warn".into())],
        work,
    )?;
    proc.wait_for_port(listen, Duration::from_secs(30))?;
    if let Some((me, _)) = &peers {
        proc.wait_for_port(*me, Duration::from_secs(10))?;
    }
    Ok(Enforcer { proc, addr: listen })
}

/// A TCP relay counting the bytes each way.
async fn counting_relay(
    to: SocketAddr,
    out: Arc<AtomicU64>,
    back: Arc<AtomicU64>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (out, back) = (Arc::clone(&out), Arc::clone(&back));
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let a = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                };
                let b = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = ro.read(&mut buf).await {
                        if n == 0 || wi.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        back.fetch_add(n as u64, Ordering::Relaxed);
                    }
                };
                tokio::join!(a, b);
            });
        }
    });
    Ok(addr)
}

/// A target: where the load goes and the enforcer processes doing its work.
struct Measured {
    name: &'static str,
    entry: SocketAddr,
    pids: Vec<u32>,
}

/// Warm-up: every session's first steps (the model learns the operations, pools fill).
async fn warm(
    t: &Measured,
    sessions: &Arc<Vec<PooledSession>>,
    opts: &ForwardingOptions,
) -> anyhow::Result<()> {
    let w = Workload::mix(t.entry, Arc::clone(sessions), 0, opts.connections);
    let checked = loadgen::run_closed(w, opts.sessions * 3).await?;
    anyhow::ensure!(
        checked.non_2xx() == 0 && checked.errors == 0,
        "{}: the warm-up got failures: {checked:?}",
        t.name
    );
    Ok(())
}

/// One fixed-rate run of `t`, from `step` of every session's cycle.
async fn measure(
    t: &Measured,
    step: usize,
    sessions: &Arc<Vec<PooledSession>>,
    opts: &ForwardingOptions,
) -> anyhow::Result<ForwardingResult> {
    let before: u64 = t.pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).sum();
    let w = Workload::mix(t.entry, Arc::clone(sessions), step, opts.connections);
    let report = loadgen::run_fixed_rate(w, opts.rate, opts.duration).await?;
    let after: u64 = t.pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).sum();
    let seconds = after.saturating_sub(before) as f64 / clock_ticks_per_second() as f64;
    let cpu_us_per_request = seconds * 1e6 / report.requests.max(1) as f64;
    log(format!(
        "{}: {} requests, p50 {} µs, p99 {} µs, {cpu_us_per_request:.1} µs CPU per request, {} non-2xx, {} errors",
        t.name,
        report.requests,
        report.latency_us.p50,
        report.latency_us.p99,
        report.non_2xx(),
        report.errors
    ));
    Ok(ForwardingResult {
        name: t.name.into(),
        report,
        cpu_us_per_request,
    })
}

/// The round whose p50 is the median of the target's rounds.
fn median_round(mut rounds: Vec<ForwardingResult>) -> Option<ForwardingResult> {
    rounds.sort_by_key(|r| r.report.latency_us.p50);
    let mid = rounds.len() / 2;
    rounds.into_iter().nth(mid)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the forwarding benchmark.
pub async fn run(opts: ForwardingOptions) -> anyhow::Result<ForwardingResults> {
    let work = opts.out.join("forwarding");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    sessions::write_file(&work.join("sessions.tsv"), opts.sessions, JWT_SECRET)?;
    let sessions = Arc::new(sessions::read_range(
        &work.join("sessions.tsv"),
        0,
        opts.sessions,
    )?);
    let openapi = work.join("openapi.yaml");
    std::fs::write(&openapi, OPENAPI_YAML)?;
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
        &work,
    )?;
    upstream.wait_for_port(upstream_addr, Duration::from_secs(10))?;

    let since = std::time::Instant::now();
    let single = start("single", &opts, upstream_addr, &openapi, None, &work)?;
    let me = free_port()?;
    let solo = start(
        "peers-solo",
        &opts,
        upstream_addr,
        &openapi,
        Some((me, vec![me])),
        &work,
    )?;
    let owner_internal = free_port()?;
    let owner = start(
        "owner",
        &opts,
        upstream_addr,
        &openapi,
        Some((owner_internal, vec![owner_internal])),
        &work,
    )?;
    let forwarder_internal = free_port()?;
    let forwarder = start(
        "forwarder",
        &opts,
        upstream_addr,
        &openapi,
        Some((forwarder_internal, vec![owner_internal])),
        &work,
    )?;
    let targets = [
        Measured {
            name: "single",
            entry: single.addr,
            pids: vec![single.proc.pid()],
        },
        Measured {
            name: "peers-solo",
            entry: solo.addr,
            pids: vec![solo.proc.pid()],
        },
        Measured {
            name: "forwarded",
            entry: forwarder.addr,
            pids: vec![forwarder.proc.pid(), owner.proc.pid()],
        },
    ];
    for t in &targets {
        warm(t, &sessions, &opts).await?;
    }
    if let Some(rest) = HISTORY_WAIT.checked_sub(since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // Rounds: every target once per round, in the same order; medians are reported.
    let per_round =
        (opts.rate * opts.duration.as_secs_f64() / opts.sessions as f64).ceil() as usize;
    let mut rounds: Vec<Vec<ForwardingResult>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        for (t, out) in targets.iter().zip(rounds.iter_mut()) {
            out.push(measure(t, 3 + round * per_round, &sessions, &opts).await?);
        }
    }
    let mut results = Vec::new();
    for r in rounds {
        let cpu = median(r.iter().map(|x| x.cpu_us_per_request).collect());
        let p99 = median(r.iter().map(|x| x.report.latency_us.p99 as f64).collect());
        if let Some(mut m) = median_round(r) {
            m.cpu_us_per_request = cpu;
            m.report.latency_us.p99 = p99 as u64;
            results.push(m);
        }
    }
    drop((single, solo, owner, forwarder));
    // Bytes on the internal hop: the forwarder reaches the owner through a counting relay.
    let (out, back) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (hop_bytes_out, hop_bytes_back) = {
        let owner_internal = free_port()?;
        let _owner = start(
            "owner-counted",
            &opts,
            upstream_addr,
            &openapi,
            Some((owner_internal, vec![owner_internal])),
            &work,
        )?;
        let relay = counting_relay(owner_internal, Arc::clone(&out), Arc::clone(&back)).await?;
        let forwarder_internal = free_port()?;
        let forwarder = start(
            "forwarder-counted",
            &opts,
            upstream_addr,
            &openapi,
            Some((forwarder_internal, vec![relay])),
            &work,
        )?;
        let requests = opts.sessions * 2;
        let w = Workload::mix(forwarder.addr, Arc::clone(&sessions), 0, opts.connections);
        let r = loadgen::run_closed(w, requests).await?;
        anyhow::ensure!(
            r.non_2xx() == 0 && r.errors == 0,
            "counted run failed: {r:?}"
        );
        let n = r.requests.max(1) as f64;
        (
            out.load(Ordering::Relaxed) as f64 / n,
            back.load(Ordering::Relaxed) as f64 / n,
        )
    };
    log(format!(
        "internal hop: {hop_bytes_out:.0} bytes forwarder → owner, {hop_bytes_back:.0} bytes back, per request"
    ));
    let all = ForwardingResults {
        results,
        hop_bytes_out,
        hop_bytes_back,
    };
    std::fs::write(work.join("results.json"), serde_json::to_vec_pretty(&all)?)?;
    Ok(all)
}

/// The Markdown table of the results, with the added cost next to `single`.
pub fn table(all: &ForwardingResults) -> String {
    let base = all.results.iter().find(|r| r.name == "single");
    let mut out = String::from(
        "| path | p50 µs | p99 µs | CPU µs / request | added p50 | added p99 | added CPU |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &all.results {
        let (d50, d99, dcpu) = base.map_or((0, 0, 0.0), |b| {
            (
                r.report.latency_us.p50 as i64 - b.report.latency_us.p50 as i64,
                r.report.latency_us.p99 as i64 - b.report.latency_us.p99 as i64,
                r.cpu_us_per_request - b.cpu_us_per_request,
            )
        });
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {d50:+} | {d99:+} | {dcpu:+.1} |\n",
            r.name, r.report.latency_us.p50, r.report.latency_us.p99, r.cpu_us_per_request
        ));
    }
    out.push_str(&format!(
        "\nInternal hop per forwarded request: {:.0} bytes to the owner, {:.0} bytes back.\n",
        all.hop_bytes_out, all.hop_bytes_back
    ));
    out
}
