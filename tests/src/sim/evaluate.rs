//! The detection evaluation: the sample bank behind a real enforcer (in-process, the same
//! server the binary runs), a learning phase of benign journeys, then mixed benign and attack
//! journeys; per attack kind: sessions, detected, blocked, requests until first detection and
//! harm that still reached the app; the share of benign sessions flagged (in the learning phase
//! and after it), and the honest requests of the long tail (rare operations, the card view a
//! release adds once the model is mature) that were refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;

use super::bank::{Directory, RunningBank, TOKEN_SECRET};
use super::driver::{self, JourneyOutcome};
use super::journeys::{
    self, AttackKind, Journey, JourneyKind, Tail, TailPlan, TailResult, rare_learning_sessions,
};

/// Sizes and seed of one evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationOptions {
    pub seed: u64,
    /// Benign journeys of the learning phase.
    pub learning_journeys: usize,
    /// Benign journeys mixed with the attacks.
    pub benign_journeys: usize,
    pub attacks_per_kind: usize,
    pub concurrency: usize,
    /// `Enforce` (block) or `Monitor` (only record incidents).
    pub mode: &'static str,
}

impl Default for EvaluationOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            learning_journeys: 600,
            benign_journeys: 1000,
            attacks_per_kind: 10,
            concurrency: 16,
            mode: "Enforce",
        }
    }
}

/// One attack kind's results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindResult {
    pub sessions: usize,
    pub detected: usize,
    /// Sessions with at least one blocked request.
    pub blocked_sessions: usize,
    pub blocked_requests: usize,
    /// Requests until the first detection, per detected session (1-based).
    pub until_detection: Vec<usize>,
    pub harmful: usize,
    pub harm_reached: usize,
    /// Finding kinds in the incidents of these sessions.
    pub finding_kinds: BTreeMap<String, usize>,
}

/// The whole evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationReport {
    pub options: EvaluationOptions,
    pub attacks: BTreeMap<AttackKind, KindResult>,
    pub benign_sessions: usize,
    pub benign_flagged: usize,
    pub benign_blocked_requests: usize,
    /// Benign sessions of the learning phase, and those flagged.
    pub learning_sessions: usize,
    pub learning_flagged: usize,
    /// Honest requests to rare operations while the model learned.
    pub rare_learning: usize,
    /// Honest requests to rare operations after it (and how many were refused).
    pub rare: TailResult,
    /// Honest requests to the operation the release added after maturity.
    pub released: TailResult,
    /// Benign sessions of the mixed phase that hold several tasks, and those with an idle gap.
    pub benign_multi_task: usize,
    pub benign_idle_gaps: usize,
    /// Incident summaries of flagged benign sessions (to see why).
    pub benign_flag_reasons: Vec<String>,
    /// `GET /v1/model` after the learning phase.
    pub model_after_learning: serde_json::Value,
    /// Every incident at the end.
    pub incidents: Vec<serde_json::Value>,
    pub learning_requests: usize,
    pub mixed_requests: usize,
    pub elapsed: Duration,
}

impl EvaluationReport {
    pub fn benign_flagged_share(&self) -> f64 {
        if self.benign_sessions == 0 {
            0.0
        } else {
            self.benign_flagged as f64 / self.benign_sessions as f64
        }
    }
}

fn median(values: &[usize]) -> Option<usize> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

impl fmt::Display for EvaluationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "seed {}, mode {}, learning {} journeys ({} requests), mixed {} benign + {} × {} attack journeys ({} requests), {:.1} s",
            o.seed,
            o.mode,
            o.learning_journeys,
            self.learning_requests,
            o.benign_journeys,
            o.attacks_per_kind,
            AttackKind::ALL.len(),
            self.mixed_requests,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| attack | sessions | detected | blocked sessions | blocked requests | requests until first detection (median, max) | harmful requests that reached the app | detectors |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---|")?;
        for (kind, r) in &self.attacks {
            let until = match (median(&r.until_detection), r.until_detection.iter().max()) {
                (Some(m), Some(x)) => format!("{m}, {x}"),
                _ => "–".to_owned(),
            };
            let detectors: Vec<String> = r
                .finding_kinds
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect();
            writeln!(
                f,
                "| {kind} | {} | {} | {} | {} | {until} | {} of {} | {} |",
                r.sessions,
                r.detected,
                r.blocked_sessions,
                r.blocked_requests,
                r.harm_reached,
                r.harmful,
                detectors.join(", ")
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "benign sessions flagged: {} of {} ({:.2}%); benign requests blocked: {}",
            self.benign_flagged,
            self.benign_sessions,
            self.benign_flagged_share() * 100.0,
            self.benign_blocked_requests
        )?;
        writeln!(
            f,
            "learning-phase sessions flagged: {} of {} ({:.2}%)",
            self.learning_flagged,
            self.learning_sessions,
            if self.learning_sessions == 0 {
                0.0
            } else {
                self.learning_flagged as f64 * 100.0 / self.learning_sessions as f64
            }
        )?;
        writeln!(
            f,
            "benign sessions with several tasks: {} of {}; with an idle gap: {}",
            self.benign_multi_task, self.benign_sessions, self.benign_idle_gaps
        )?;
        writeln!(
            f,
            "honest requests to rare operations: {} while learning, {} after, {} refused",
            self.rare_learning, self.rare.requests, self.rare.refused
        )?;
        writeln!(
            f,
            "honest requests to the operation released after maturity: {}, {} refused",
            self.released.requests, self.released.refused
        )?;
        for reason in &self.benign_flag_reasons {
            writeln!(f, "  - {reason}")?;
        }
        Ok(())
    }
}

/// The simulator compresses time (1 ms of a journey's pause stands for about 1 s of a real
/// customer's, see `journeys::IDLE_GAP_MS`): the journey gap is scaled the same way, 300 ms for
/// the default 5 minutes.
const JOURNEY_GAP: &str = "300ms";

/// The enforcer config of the evaluation: every learned detector blocks (`mode` permitting).
pub fn enforcer_yaml(upstream: SocketAddr, mode: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
upstream:
  url: http://{upstream}
mode: {mode}
clientAddress:
  source: XForwardedFor
  trustedHops: 1
session:
  identifiers:
    - jwtClaim: {{ claim: sub }}
    - clientIp: {{}}
  jwtVerification:
    keys:
      - algorithm: HS256
        secret: {TOKEN_SECRET}
    onInvalid: FallThrough
learning:
  journeyGap: {JOURNEY_GAP}
detectors:
  shadowEndpoint: {{ action: Block }}
  requestShape: {{ action: Block }}
  unlikelySequence: {{ action: Block }}
  volume: {{ action: Block }}
  enumeration: {{ action: Block }}
  credentialStuffing: {{ action: Block }}
  exposure: {{ action: Block }}
  identityLineage: {{ action: Block }}
"#
    )
}

/// `GET` on the enforcer's admin API, as JSON.
pub async fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{admin}{path}");
    let response = client
        .get(uri.parse()?)
        .await
        .with_context(|| format!("GET {uri}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {uri}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Turns off the detectors named in `ORDO_EVAL_DISABLE` (comma-separated config names, e.g.
/// `identityLineage`), so that a detector's effect can be measured with the same binary: the
/// run without it is the "before". Unknown names fail the run.
pub fn disable_from_env(
    detectors: &mut ordo_enforcer::config::DetectorsConfig,
) -> anyhow::Result<()> {
    let Ok(list) = std::env::var("ORDO_EVAL_DISABLE") else {
        return Ok(());
    };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let detector = match name {
            "shadowEndpoint" => &mut detectors.shadow_endpoint,
            "requestShape" => &mut detectors.request_shape,
            "unlikelySequence" => &mut detectors.unlikely_sequence,
            "volume" => &mut detectors.volume,
            "enumeration" => &mut detectors.enumeration,
            "credentialStuffing" => &mut detectors.credential_stuffing,
            "identityLineage" => &mut detectors.identity_lineage,
            other => bail!("ORDO_EVAL_DISABLE names no detector {other:?}"),
        };
        detector.enabled = false;
    }
    Ok(())
}

/// Runs one evaluation end to end.
pub async fn run(options: EvaluationOptions) -> anyhow::Result<EvaluationReport> {
    let started = Instant::now();
    let attack_count = options.attacks_per_kind * AttackKind::ALL.len();
    let directory = Directory::generate(
        options.learning_journeys + options.benign_journeys + attack_count + 10,
    );
    let bank = RunningBank::start(&directory, None)
        .await
        .context("starting the sample bank")?;
    let mut config = parse_yaml(&enforcer_yaml(bank.addr, options.mode))
        .context("the evaluation's enforcer config")?;
    disable_from_env(&mut config.detectors)?;
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let enforcer = ordo_enforcer::runtime::start(config, None, Arc::clone(&analyzer) as _)
        .await
        .context("starting the enforcer")?;

    // Learning phase: benign traffic only; two visits use the rare operations (fewer times
    // than any inventory threshold).
    let mut learning = journeys::generate(
        options.seed,
        &directory,
        0,
        options.learning_journeys,
        0,
        false,
    );
    let rare_at = rare_learning_sessions(options.learning_journeys);
    journeys::add_tail(
        &mut learning,
        &directory,
        0,
        options.seed,
        TailPlan::Learning(&rare_at),
    );
    let learned = driver::run(enforcer.proxy_addr, &learning, options.concurrency).await?;
    let learning_requests = learned.iter().map(|o| o.steps.len()).sum();
    let model_after_learning = admin_get(enforcer.admin_addr, "/v1/model").await?;

    // A release of the bank adds the card view once the model is mature.
    bank.release();
    // Mixed phase.
    let mut mixed = journeys::generate(
        options.seed.wrapping_add(1),
        &directory,
        options.learning_journeys,
        options.benign_journeys,
        options.attacks_per_kind,
        true,
    );
    journeys::add_tail(
        &mut mixed,
        &directory,
        options.learning_journeys,
        options.seed.wrapping_add(1),
        TailPlan::Mixed,
    );
    let outcomes = driver::run(enforcer.proxy_addr, &mixed, options.concurrency).await?;
    let mixed_requests = outcomes.iter().map(|o| o.steps.len()).sum();
    let incidents = admin_get(enforcer.admin_addr, "/v1/incidents").await?;
    let incidents: Vec<serde_json::Value> = incidents.as_array().cloned().unwrap_or_default();
    enforcer.shutdown().await;
    bank.shutdown();

    let mut by_client: HashMap<IpAddr, Vec<&serde_json::Value>> = HashMap::new();
    for incident in &incidents {
        // A campaign's incident lists its addresses; other incidents name one.
        let listed = incident["clients"].as_array().into_iter().flatten();
        let mut clients: Vec<IpAddr> = listed
            .filter_map(|c| c.as_str().and_then(|c| c.parse::<IpAddr>().ok()))
            .collect();
        if clients.is_empty()
            && let Some(client) = incident["client"]
                .as_str()
                .and_then(|c| c.parse::<IpAddr>().ok())
        {
            clients.push(client);
        }
        for client in clients {
            by_client.entry(client).or_default().push(incident);
        }
    }
    let learning_clients: HashSet<IpAddr> = learning.iter().map(|j| IpAddr::V4(j.client)).collect();
    let mut report = EvaluationReport {
        options,
        attacks: BTreeMap::new(),
        benign_sessions: 0,
        benign_flagged: 0,
        benign_blocked_requests: 0,
        learning_sessions: 0,
        learning_flagged: 0,
        rare_learning: 0,
        rare: TailResult::default(),
        released: TailResult::default(),
        benign_multi_task: 0,
        benign_idle_gaps: 0,
        benign_flag_reasons: Vec::new(),
        model_after_learning,
        incidents: incidents.clone(),
        learning_requests,
        mixed_requests,
        elapsed: Duration::ZERO,
    };
    for (journey, outcome) in learning.iter().zip(&learned) {
        report.learning_sessions += 1;
        let client = IpAddr::V4(journey.client);
        if by_client.contains_key(&client) || outcome.blocked() > 0 {
            report.learning_flagged += 1;
            for incident in by_client.get(&client).into_iter().flatten().take(2) {
                report.benign_flag_reasons.push(format!(
                    "learning: {}",
                    incident["summary"].as_str().unwrap_or("")
                ));
            }
        }
        report.rare_learning += journey
            .steps
            .iter()
            .filter(|s| s.tail == Tail::Rare)
            .count();
    }
    for (journey, outcome) in mixed.iter().zip(&outcomes) {
        let client = IpAddr::V4(journey.client);
        debug_assert!(!learning_clients.contains(&client));
        let own_incidents = by_client.get(&client).map(Vec::as_slice).unwrap_or(&[]);
        let detected = !own_incidents.is_empty() || outcome.blocked() > 0;
        match journey.kind {
            JourneyKind::Benign => {
                report.benign_sessions += 1;
                report.benign_multi_task += usize::from(journeys::task_count(journey) > 1);
                report.benign_idle_gaps += usize::from(journeys::has_idle_gap(journey));
                report.benign_blocked_requests += outcome.blocked();
                for (s, o) in journey.steps.iter().zip(&outcome.steps) {
                    let tail = match s.tail {
                        Tail::Rare => &mut report.rare,
                        Tail::Released => &mut report.released,
                        Tail::No => continue,
                    };
                    tail.requests += 1;
                    tail.refused += usize::from(o.blocked);
                }
                if detected {
                    report.benign_flagged += 1;
                    for incident in own_incidents.iter().take(2) {
                        report
                            .benign_flag_reasons
                            .push(incident["summary"].as_str().unwrap_or("").to_owned());
                    }
                }
            }
            JourneyKind::Attack(kind) => {
                let r = report.attacks.entry(kind).or_default();
                record_attack(r, journey, outcome, own_incidents, detected);
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

pub(crate) fn record_attack(
    r: &mut KindResult,
    journey: &Journey,
    outcome: &JourneyOutcome,
    incidents: &[&serde_json::Value],
    detected: bool,
) {
    if std::env::var_os("ORDO_EVAL_TRACE").is_some() {
        let statuses: Vec<u16> = outcome.steps.iter().map(|s| s.status).collect();
        eprintln!("{:?} {}: {statuses:?}", journey.kind, journey.client);
        for i in incidents {
            eprintln!("   {}", i["summary"]);
        }
    }
    r.sessions += 1;
    r.harmful += outcome.harmful();
    r.harm_reached += outcome.harm_reached();
    r.blocked_requests += outcome.blocked();
    if outcome.blocked() > 0 {
        r.blocked_sessions += 1;
    }
    if detected {
        r.detected += 1;
        // In Enforce every detector blocks, so the first blocked request is the first
        // detection; in Monitor fall back to the incident's request count at its first event.
        let first = outcome.first_blocked().or_else(|| {
            incidents
                .iter()
                .filter_map(|i| i["requests"].as_u64())
                .min()
                .map(|n| journey.steps.len().saturating_sub(n as usize) + 1)
        });
        if let Some(first) = first {
            r.until_detection.push(first);
        }
    }
    let mut kinds = HashSet::new();
    for incident in incidents {
        for kind in incident["kinds"].as_array().into_iter().flatten() {
            if let Some(k) = kind.as_str() {
                kinds.insert(k.to_owned());
            }
        }
    }
    for k in kinds {
        *r.finding_kinds.entry(k).or_insert(0) += 1;
    }
}

/// The learned baselines of a `GET /v1/model` answer as a Markdown table.
pub fn baselines_table(model: &serde_json::Value) -> String {
    let analyzer = &model["analyzer"];
    let mut out = format!(
        "model after learning: {} requests, {} sessions, mature: {}\n\n",
        analyzer["requests"], analyzer["sessions"], analyzer["mature"]
    );
    for d in analyzer["detectors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "- {}: {}\n",
            d["name"].as_str().unwrap_or(""),
            if d["active"].as_bool() == Some(true) {
                "active".to_owned()
            } else {
                d["waitingFor"].as_str().unwrap_or("inactive").to_owned()
            }
        ));
    }
    out.push_str("\n| operation | requests | volume p50 / p90 / p99 | suggested limit | volume threshold | objects p99 / threshold | auth |\n|---|---:|---:|---:|---:|---:|---|\n");
    for e in analyzer["endpoints"].as_array().into_iter().flatten() {
        let v = &e["volume"];
        let objects = if e["objects"].is_null() {
            "–".to_owned()
        } else {
            format!("{} / {}", e["objects"]["p99"], e["objects"]["threshold"])
        };
        out.push_str(&format!(
            "| {} | {} | {} / {} / {} | {} | {} | {} | {} |\n",
            e["operation"].as_str().unwrap_or(""),
            e["requests"],
            v["p50"],
            v["p90"],
            v["p99"],
            v["suggestedLimit"],
            v["threshold"],
            objects,
            if e["authLike"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            }
        ));
    }
    out
}
