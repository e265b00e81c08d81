//! `ordo-bench forwarding`: what routing a session to its owner replica costs, next to the
//! single-replica path (docs/scale-out.md). Enforcer processes with the benchmark's realistic
//! policy, on loopback, the same request mix at a fixed rate:
//!
//! - `single`: one enforcer without `peers` (today's path);
//! - `peers-solo`: one enforcer whose `peers` list holds only itself (the routing step's cost
//!   when nothing is forwarded);
//! - `forwarded`: an enforcer that is not in its own peer list, so that it forwards every
//!   request to the owner, which decides and proxies: the path of the requests that reach
//!   another replica than their session's owner ((N - 1) / N of them with N replicas);
//! - `pair`: two replicas, each in both peer lists, the load entering one: half the sessions
//!   are forwarded, the other half decided where they enter.
//!
//! The banking mix has no authentication the enforcer recognises (its token refresh carries
//! no credential), so nothing it decides teaches facts about client addresses. A second
//! measurement does: every session confirms its password (`POST /api/v1/auth/confirm`, a
//! step-up authentication declared in this benchmark's copy of the OpenAPI document), once per
//! round, at the same rate. Each such decision is an authentication attempt of the API-wide
//! activity, so with `pair` the replica that decided sends it to the other before it answers
//! (enforcer/src/proxy/route/facts.rs); reported with the facts messages per request and how
//! long answers waited for them (`ordo_peer_facts_wait_seconds`).
//!
//! Latency is measured from each request's due time (open loop); CPU per request is the CPU
//! time of the enforcer processes involved over the requests; the bytes on the internal hop are
//! counted by relays between the replicas in a separate short run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::Full;
use hyper::Request;

use crate::loadgen::{self, LoadReport, RequestSource, Workload};
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
    /// Facts messages acknowledged by another replica, per request.
    pub facts_per_request: f64,
    /// Mean time an answer waited for the facts it taught to be acknowledged, µs.
    pub facts_wait_mean_us: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardingResults {
    pub results: Vec<ForwardingResult>,
    /// The password confirmations (authentications) alone, per path.
    pub confirmations: Vec<ForwardingResult>,
    /// Bytes per forwarded request on the internal hop: forwarder → owner, owner → forwarder.
    pub hop_bytes_out: f64,
    pub hop_bytes_back: f64,
    /// Bytes per facts message between the two replicas of `pair`, and of its acknowledgement.
    pub facts_bytes_out: f64,
    pub facts_bytes_back: f64,
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
    admin: SocketAddr,
}

/// A replica's `peers`: its internal listener, the address it advertises (a counting relay's
/// in the counted runs) and the member list.
struct Peers {
    listen: SocketAddr,
    advertise: SocketAddr,
    members: Vec<SocketAddr>,
}

impl Peers {
    fn direct(listen: SocketAddr, members: Vec<SocketAddr>) -> Option<Self> {
        Some(Self {
            listen,
            advertise: listen,
            members,
        })
    }
}

fn start(
    name: &str,
    opts: &ForwardingOptions,
    upstream: SocketAddr,
    openapi: &Path,
    peers: Option<Peers>,
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
    if let Some(p) = &peers {
        let list: Vec<String> = p.members.iter().map(|m| format!("\"{m}\"")).collect();
        yaml.push_str(&format!(
            "peers:\n  listen: \"{}\"\n  advertise: \"{}\"\n  static: [{}]\n  secret: \"{SECRET}\"\n",
            p.listen,
            p.advertise,
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
    if let Some(p) = &peers {
        proc.wait_for_port(p.listen, Duration::from_secs(10))?;
    }
    Ok(Enforcer {
        proc,
        addr: listen,
        admin,
    })
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
    admins: Vec<SocketAddr>,
}

/// What the replicas of a target count about facts: messages acknowledged, and the sum (s) and
/// count of the waits for them.
#[derive(Debug, Clone, Default)]
struct FactsCounts {
    acknowledged: f64,
    wait_sum: f64,
    wait_count: f64,
    /// Findings by kind (a flagged request teaches no authentication attempt).
    findings: BTreeMap<String, f64>,
}

impl FactsCounts {
    fn since(self, before: &Self) -> Self {
        let mut findings = self.findings;
        for (kind, n) in &before.findings {
            *findings.entry(kind.clone()).or_default() -= n;
        }
        findings.retain(|_, n| *n != 0.0);
        Self {
            acknowledged: self.acknowledged - before.acknowledged,
            wait_sum: self.wait_sum - before.wait_sum,
            wait_count: self.wait_count - before.wait_count,
            findings,
        }
    }
}

/// The value of the sample named `series` (name and labels as exposed) in a Prometheus text
/// exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn findings_per_request(findings: &BTreeMap<String, f64>, requests: f64) -> String {
    if findings.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = findings
        .iter()
        .map(|(kind, n)| format!("{kind} {:.3}", n / requests))
        .collect();
    parts.join(", ")
}

/// The facts counts of every replica of a target, added up.
async fn facts_counts(admins: &[SocketAddr]) -> FactsCounts {
    let mut c = FactsCounts::default();
    for admin in admins {
        if let Ok((200, text)) = loadgen::get_text(*admin, "/metrics").await {
            c.acknowledged += sample(&text, "ordo_peer_facts_total{result=\"acknowledged\"}");
            c.wait_sum += sample(&text, "ordo_peer_facts_wait_seconds_sum");
            c.wait_count += sample(&text, "ordo_peer_facts_wait_seconds_count");
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("ordo_findings_total{kind=\"") else {
                    continue;
                };
                if let Some((kind, value)) = rest.split_once("\"} ")
                    && let Ok(n) = value.trim().parse::<f64>()
                {
                    *c.findings.entry(kind.to_owned()).or_default() += n;
                }
            }
        }
    }
    c
}

/// The step-up authentication every session makes once per round.
const CONFIRM_PATH: &str = "/api/v1/auth/confirm";

/// The benchmark's OpenAPI document with the password confirmation declared.
fn openapi_with_confirmation() -> String {
    OPENAPI_YAML.replacen(
        "paths:\n",
        "paths:\n  /api/v1/auth/confirm:\n    post:\n      operationId: confirmPassword\n      \
         requestBody:\n        required: true\n        content:\n          application/json:\n            \
         schema:\n              type: object\n              additionalProperties: false\n              \
         required: [password]\n              properties:\n                \
         password: { type: string, maxLength: 128 }\n      responses: { \"200\": { description: ok } }\n",
        1,
    )
}

/// Request `k`: session `k mod n` confirms its password (bearer token and a JSON body).
struct ConfirmSource {
    sessions: Arc<Vec<PooledSession>>,
}

impl RequestSource for ConfirmSource {
    fn build(&self, k: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        anyhow::ensure!(!self.sessions.is_empty(), "no sessions");
        let n = self.sessions.len() as u64;
        let session = &self.sessions[usize::try_from(k % n)?];
        let body = format!(r#"{{"password":"pw-{}"}}"#, session.vars.sub);
        Ok(Request::builder()
            .method("POST")
            .uri(CONFIRM_PATH)
            .header(HOST, scenario::HOST)
            .header(USER_AGENT, "ordo-bench/1 (bank-app)")
            .header(AUTHORIZATION, session.authorization.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?)
    }
}

fn confirmations(
    entry: SocketAddr,
    sessions: &Arc<Vec<PooledSession>>,
    connections: usize,
) -> Workload {
    Workload {
        target: entry,
        source: Arc::new(ConfirmSource {
            sessions: Arc::clone(sessions),
        }),
        connections,
    }
}

/// Warm-up: every session's first steps (the model learns the operations, pools fill), and
/// one password confirmation each.
async fn warm(
    t: &Measured,
    sessions: &Arc<Vec<PooledSession>>,
    opts: &ForwardingOptions,
) -> anyhow::Result<()> {
    let w = Workload::mix(t.entry, Arc::clone(sessions), 0, opts.connections);
    let checked = loadgen::run_closed(w, opts.sessions * 3).await?;
    let w = confirmations(t.entry, sessions, opts.connections);
    let confirmed = loadgen::run_closed(w, opts.sessions).await?;
    for r in [checked, confirmed] {
        anyhow::ensure!(
            r.non_2xx() == 0 && r.errors == 0,
            "{}: the warm-up got failures: {r:?}",
            t.name
        );
    }
    Ok(())
}

/// One fixed-rate run of `w` on `t`.
async fn measure(
    t: &Measured,
    w: Workload,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<ForwardingResult> {
    let facts_before = facts_counts(&t.admins).await;
    let before: u64 = t.pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).sum();
    let report = loadgen::run_fixed_rate(w, rate, duration).await?;
    let after: u64 = t.pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).sum();
    let facts = facts_counts(&t.admins).await.since(&facts_before);
    let seconds = after.saturating_sub(before) as f64 / clock_ticks_per_second() as f64;
    let requests = report.requests.max(1) as f64;
    let cpu_us_per_request = seconds * 1e6 / requests;
    let facts_per_request = facts.acknowledged / requests;
    let facts_wait_mean_us = if facts.wait_count > 0.0 {
        facts.wait_sum * 1e6 / facts.wait_count
    } else {
        0.0
    };
    log(format!(
        "{}: {} requests, p50 {} µs, p99 {} µs, {cpu_us_per_request:.1} µs CPU per request, {} non-2xx, {} errors; \
         {facts_per_request:.3} facts messages per request, {facts_wait_mean_us:.0} µs waited for them on average, \
         findings per request: {}",
        t.name,
        report.requests,
        report.latency_us.p50,
        report.latency_us.p99,
        report.non_2xx(),
        report.errors,
        findings_per_request(&facts.findings, requests),
    ));
    Ok(ForwardingResult {
        name: t.name.into(),
        report,
        cpu_us_per_request,
        facts_per_request,
        facts_wait_mean_us,
    })
}

/// The round whose p50 is the median of the target's rounds.
fn median_round(mut rounds: Vec<ForwardingResult>) -> Option<ForwardingResult> {
    rounds.sort_by_key(|r| r.report.latency_us.p50);
    let mid = rounds.len() / 2;
    rounds.into_iter().nth(mid)
}

/// A target's rounds as one result: the median round, with the medians of its p99, CPU and
/// facts figures over the rounds.
fn summary(rounds: Vec<ForwardingResult>) -> Option<ForwardingResult> {
    let cpu = median(rounds.iter().map(|x| x.cpu_us_per_request).collect());
    let p99 = median(
        rounds
            .iter()
            .map(|x| x.report.latency_us.p99 as f64)
            .collect(),
    );
    let facts = median(rounds.iter().map(|x| x.facts_per_request).collect());
    let wait = median(rounds.iter().map(|x| x.facts_wait_mean_us).collect());
    let mut m = median_round(rounds)?;
    m.cpu_us_per_request = cpu;
    m.report.latency_us.p99 = p99 as u64;
    m.facts_per_request = facts;
    m.facts_wait_mean_us = wait;
    Some(m)
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
    std::fs::write(&openapi, openapi_with_confirmation())?;
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
        Peers::direct(me, vec![me]),
        &work,
    )?;
    let owner_internal = free_port()?;
    let owner = start(
        "owner",
        &opts,
        upstream_addr,
        &openapi,
        Peers::direct(owner_internal, vec![owner_internal]),
        &work,
    )?;
    let forwarder_internal = free_port()?;
    let forwarder = start(
        "forwarder",
        &opts,
        upstream_addr,
        &openapi,
        Peers::direct(forwarder_internal, vec![owner_internal]),
        &work,
    )?;
    let (pair_a, pair_b) = (free_port()?, free_port()?);
    let first = start(
        "pair-a",
        &opts,
        upstream_addr,
        &openapi,
        Peers::direct(pair_a, vec![pair_a, pair_b]),
        &work,
    )?;
    let second = start(
        "pair-b",
        &opts,
        upstream_addr,
        &openapi,
        Peers::direct(pair_b, vec![pair_a, pair_b]),
        &work,
    )?;
    let targets = [
        Measured {
            name: "single",
            entry: single.addr,
            pids: vec![single.proc.pid()],
            admins: vec![single.admin],
        },
        Measured {
            name: "peers-solo",
            entry: solo.addr,
            pids: vec![solo.proc.pid()],
            admins: vec![solo.admin],
        },
        Measured {
            name: "forwarded",
            entry: forwarder.addr,
            pids: vec![forwarder.proc.pid(), owner.proc.pid()],
            admins: vec![forwarder.admin, owner.admin],
        },
        Measured {
            name: "pair",
            entry: first.addr,
            pids: vec![first.proc.pid(), second.proc.pid()],
            admins: vec![first.admin, second.admin],
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
    // A confirmation run sends one per session at the mix's rate.
    let confirm_duration = Duration::from_secs_f64(opts.sessions as f64 / opts.rate);
    let mut rounds: Vec<Vec<ForwardingResult>> = targets.iter().map(|_| Vec::new()).collect();
    let mut confirm_rounds: Vec<Vec<ForwardingResult>> =
        targets.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        for ((t, out), confirmed) in targets
            .iter()
            .zip(rounds.iter_mut())
            .zip(confirm_rounds.iter_mut())
        {
            let w = Workload::mix(
                t.entry,
                Arc::clone(&sessions),
                3 + round * per_round,
                opts.connections,
            );
            out.push(measure(t, w, opts.rate, opts.duration).await?);
            let w = confirmations(t.entry, &sessions, opts.connections);
            confirmed.push(measure(t, w, opts.rate, confirm_duration).await?);
        }
    }
    let results = rounds.into_iter().filter_map(summary).collect();
    let confirmations = confirm_rounds.into_iter().filter_map(summary).collect();
    drop((single, solo, owner, forwarder, first, second));
    // Bytes on the internal hop: the forwarder reaches the owner through a counting relay.
    let (out, back) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (hop_bytes_out, hop_bytes_back) = {
        let owner_internal = free_port()?;
        let _owner = start(
            "owner-counted",
            &opts,
            upstream_addr,
            &openapi,
            Peers::direct(owner_internal, vec![owner_internal]),
            &work,
        )?;
        let relay = counting_relay(owner_internal, Arc::clone(&out), Arc::clone(&back)).await?;
        let forwarder_internal = free_port()?;
        let forwarder = start(
            "forwarder-counted",
            &opts,
            upstream_addr,
            &openapi,
            Peers::direct(forwarder_internal, vec![relay]),
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
    let (facts_bytes_out, facts_bytes_back) =
        count_facts_bytes(&opts, upstream_addr, &openapi, &sessions, &work).await?;
    log(format!(
        "facts: {facts_bytes_out:.0} bytes per message, {facts_bytes_back:.0} bytes per acknowledgement"
    ));
    let all = ForwardingResults {
        results,
        confirmations,
        hop_bytes_out,
        hop_bytes_back,
        facts_bytes_out,
        facts_bytes_back,
    };
    std::fs::write(work.join("results.json"), serde_json::to_vec_pretty(&all)?)?;
    Ok(all)
}

/// Bytes of a facts message and of its acknowledgement: a pair whose replicas advertise
/// counting relays. The load enters the first replica, so the only traffic the second sends
/// to the first is the facts its own decisions taught (it forwards nothing); divided by the
/// messages it counts as acknowledged.
async fn count_facts_bytes(
    opts: &ForwardingOptions,
    upstream: SocketAddr,
    openapi: &Path,
    sessions: &Arc<Vec<PooledSession>>,
    work: &Path,
) -> anyhow::Result<(f64, f64)> {
    let (out, back) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a_internal, b_internal) = (free_port()?, free_port()?);
    let to_a = counting_relay(a_internal, Arc::clone(&out), Arc::clone(&back)).await?;
    // The other way (forwarded requests and the first replica's facts) is not counted.
    let ignored = Arc::new(AtomicU64::new(0));
    let to_b = counting_relay(b_internal, Arc::clone(&ignored), Arc::clone(&ignored)).await?;
    let members = vec![to_a, to_b];
    let first = start(
        "pair-a-counted",
        opts,
        upstream,
        openapi,
        Some(Peers {
            listen: a_internal,
            advertise: to_a,
            members: members.clone(),
        }),
        work,
    )?;
    let second = start(
        "pair-b-counted",
        opts,
        upstream,
        openapi,
        Some(Peers {
            listen: b_internal,
            advertise: to_b,
            members,
        }),
        work,
    )?;
    let w = Workload::mix(first.addr, Arc::clone(sessions), 0, opts.connections);
    let r = loadgen::run_closed(w, opts.sessions * 2).await?;
    let w = confirmations(first.addr, sessions, opts.connections);
    let confirmed = loadgen::run_closed(w, opts.sessions).await?;
    for r in [r, confirmed] {
        anyhow::ensure!(
            r.non_2xx() == 0 && r.errors == 0,
            "counted pair run failed: {r:?}"
        );
    }
    let messages = facts_counts(&[second.admin]).await.acknowledged;
    anyhow::ensure!(
        messages > 0.0,
        "the second replica of the counted pair acknowledged no facts message: nothing to divide"
    );
    Ok((
        out.load(Ordering::Relaxed) as f64 / messages,
        back.load(Ordering::Relaxed) as f64 / messages,
    ))
}

/// The Markdown tables of the results (the mix, then the confirmations), with the added cost
/// next to `single`.
pub fn table(all: &ForwardingResults) -> String {
    let mut out = String::from("The banking mix:\n\n");
    out.push_str(&rows(&all.results));
    out.push_str(
        "\nPassword confirmations (authentications: with `pair`, facts for the other replica):\n\n",
    );
    out.push_str(&rows(&all.confirmations));
    out.push_str(&format!(
        "\nInternal hop per forwarded request: {:.0} bytes to the owner, {:.0} bytes back.\n\
         Per facts message between two replicas: {:.0} bytes, {:.0} bytes of acknowledgement.\n",
        all.hop_bytes_out, all.hop_bytes_back, all.facts_bytes_out, all.facts_bytes_back
    ));
    out
}

fn rows(results: &[ForwardingResult]) -> String {
    let base = results.iter().find(|r| r.name == "single");
    let mut out = String::from(
        "| path | p50 µs | p99 µs | CPU µs / request | added p50 | added p99 | added CPU | facts messages / request | facts wait, mean µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (d50, d99, dcpu) = base.map_or((0, 0, 0.0), |b| {
            (
                r.report.latency_us.p50 as i64 - b.report.latency_us.p50 as i64,
                r.report.latency_us.p99 as i64 - b.report.latency_us.p99 as i64,
                r.cpu_us_per_request - b.cpu_us_per_request,
            )
        });
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {d50:+} | {d99:+} | {dcpu:+.1} | {:.3} | {:.0} |\n",
            r.name,
            r.report.latency_us.p50,
            r.report.latency_us.p99,
            r.cpu_us_per_request,
            r.facts_per_request,
            r.facts_wait_mean_us
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_their_exposed_series() {
        let text = "# HELP ordo_peer_facts_total x\n\
                    ordo_peer_facts_total{result=\"acknowledged\"} 42\n\
                    ordo_peer_facts_total{result=\"unacknowledged\"} 3\n\
                    ordo_peer_facts_wait_seconds_sum 0.0125\n\
                    ordo_peer_facts_wait_seconds_count 40\n";
        assert_eq!(
            sample(text, "ordo_peer_facts_total{result=\"acknowledged\"}"),
            42.0
        );
        assert_eq!(sample(text, "ordo_peer_facts_wait_seconds_sum"), 0.0125);
        assert_eq!(sample(text, "ordo_peer_facts_wait_seconds_count"), 40.0);
        assert_eq!(
            sample(text, "ordo_peer_facts_wait_seconds"),
            0.0,
            "a prefix is not a series"
        );
        assert_eq!(sample(text, "missing"), 0.0);
    }

    #[test]
    fn the_confirmation_is_declared_next_to_the_mix() {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&openapi_with_confirmation()).unwrap();
        let paths = &doc["paths"];
        let confirm = &paths[CONFIRM_PATH]["post"];
        assert_eq!(confirm["operationId"].as_str(), Some("confirmPassword"));
        let schema = &confirm["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(schema["required"][0].as_str(), Some("password"));
        assert!(
            paths["/api/v1/auth/refresh"]["post"].is_mapping(),
            "the mix's paths stay"
        );
    }

    #[test]
    fn facts_counts_are_differences() {
        let before = FactsCounts {
            acknowledged: 10.0,
            wait_sum: 0.5,
            wait_count: 10.0,
            findings: BTreeMap::from([("Volume".into(), 1.0), ("RateLimit".into(), 2.0)]),
        };
        let after = FactsCounts {
            acknowledged: 25.0,
            wait_sum: 0.8,
            wait_count: 22.0,
            findings: BTreeMap::from([("Volume".into(), 4.0), ("RateLimit".into(), 2.0)]),
        };
        let d = after.since(&before);
        assert_eq!(d.acknowledged, 15.0);
        assert!((d.wait_sum - 0.3).abs() < 1e-9);
        assert_eq!(d.wait_count, 12.0);
        assert_eq!(d.findings, BTreeMap::from([("Volume".into(), 3.0)]));
        assert_eq!(findings_per_request(&d.findings, 6.0), "Volume 0.500");
    }
}
