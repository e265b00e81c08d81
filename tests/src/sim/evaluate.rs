//! The detection evaluation: the sample bank behind a real enforcer (in-process, the same
//! server the binary runs), a learning phase of benign journeys, then mixed benign and attack
//! journeys; per attack kind: sessions, detected, blocked, requests until first detection and
//! harm that still reached the app; the honest sessions flagged in three groups, as on the
//! other simulated APIs (`styles.rs`): the learning phase, new customers of the mixed phase and
//! customers who come back in it after a journey of the learning phase; and the honest requests
//! of the long tail (rare operations, the card view a release adds once the model is mature)
//! that were refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
use super::styles::{GroupResult, write_groups};

/// How long the evaluation waits after the mixed phase before it reads the incidents: the
/// journey gap (300 ms) for a campaign's last tries to settle, the quiet second the sweep
/// waits for after the last login, and one housekeeping tick (1 s) for the sweep that names
/// them (`detect::distributed::sweep`), with a margin.
pub const CAMPAIGN_SWEEP_WAIT: std::time::Duration = std::time::Duration::from_millis(3_000);

/// Sizes and seed of one evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationOptions {
    pub seed: u64,
    /// Benign journeys of the learning phase.
    pub learning_journeys: usize,
    /// Benign journeys mixed with the attacks: half of them (at most `learning_journeys`) by
    /// customers who come back after a learning-phase journey, the rest by new customers.
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
    /// Benign sessions of the learning phase.
    pub learning_group: GroupResult,
    /// Benign sessions of the mixed phase by new customers.
    pub new_group: GroupResult,
    /// Benign sessions of the mixed phase by customers who had a learning-phase session.
    pub returning_group: GroupResult,
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
    /// Benign sessions of the mixed phase (new and returning customers).
    pub fn benign_sessions(&self) -> usize {
        self.new_group.sessions + self.returning_group.sessions
    }

    /// Flagged benign sessions of the mixed phase.
    pub fn benign_flagged(&self) -> usize {
        self.new_group.flagged + self.returning_group.flagged
    }

    pub fn benign_flagged_share(&self) -> f64 {
        if self.benign_sessions() == 0 {
            0.0
        } else {
            self.benign_flagged() as f64 / self.benign_sessions() as f64
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
        write_groups(
            f,
            &self.learning_group,
            &self.new_group,
            &self.returning_group,
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "benign sessions with several tasks: {} of {}; with an idle gap: {}",
            self.benign_multi_task,
            self.benign_sessions(),
            self.benign_idle_gaps
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

/// The journeys of one bank evaluation.
#[derive(Debug, Clone)]
pub struct BankPlan {
    /// Benign visits of the learning phase (customers `0..learning_journeys`), two of them
    /// with the rare operations.
    pub learning: Vec<Journey>,
    /// Benign visits and attack journeys of the mixed phase, shuffled, with the long tail.
    pub mixed: Vec<Journey>,
    /// Clients of the mixed phase's benign visits by customers who had a learning-phase visit.
    pub returning: HashSet<Ipv4Addr>,
}

/// Customers the directory of an evaluation holds: every learning and mixed-phase journey's
/// own, and a few spare.
pub fn directory_size(options: &EvaluationOptions) -> usize {
    options.learning_journeys
        + options.benign_journeys
        + options.attacks_per_kind * AttackKind::ALL.len()
        + 10
}

/// The journeys of an evaluation. Learning phase: `learning_journeys` benign visits, one per
/// customer, two of them using the rare operations (fewer times than any inventory
/// threshold). Mixed phase (after the release): `benign_journeys` benign visits, half of them
/// (at most `learning_journeys`) by customers of the learning phase who come back — the same
/// customer, hence the same token `sub`, from another client address (a later day), doing
/// the ordinary visits again, with their own accounts and payees — the rest by new customers;
/// then `attacks_per_kind` journeys of every attack kind, each by a customer of its own;
/// shuffled. Everything derives from `seed`.
pub fn plan(options: &EvaluationOptions, directory: &Directory) -> BankPlan {
    let (mut learning, learning_customers) = journeys::generate_with_returning(
        options.seed,
        directory,
        0,
        &[],
        options.learning_journeys,
        0,
        false,
    );
    let rare_at = rare_learning_sessions(options.learning_journeys);
    journeys::add_tail(
        &mut learning,
        directory,
        &learning_customers,
        options.seed,
        TailPlan::Learning(&rare_at),
    );
    let mixed_seed = options.seed.wrapping_add(1);
    let returning_count = (options.benign_journeys / 2).min(options.learning_journeys);
    let returning =
        journeys::returning_customers(mixed_seed, options.learning_journeys, returning_count);
    let (mut mixed, mixed_customers) = journeys::generate_with_returning(
        mixed_seed,
        directory,
        options.learning_journeys,
        &returning,
        options.benign_journeys - returning_count,
        options.attacks_per_kind,
        true,
    );
    journeys::add_tail(
        &mut mixed,
        directory,
        &mixed_customers,
        mixed_seed,
        TailPlan::Mixed,
    );
    // The returning customers' visits are the first `returning.len()` journeys made.
    let returning = mixed
        .iter()
        .filter(|j| j.kind == JourneyKind::Benign && j.id < returning.len())
        .map(|j| j.client)
        .collect();
    BankPlan {
        learning,
        mixed,
        returning,
    }
}

/// Runs one evaluation end to end.
pub async fn run(options: EvaluationOptions) -> anyhow::Result<EvaluationReport> {
    let started = Instant::now();
    let directory = Directory::generate(directory_size(&options));
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
    let BankPlan {
        learning,
        mixed,
        returning,
    } = plan(&options, &directory);

    // Learning phase: benign traffic only.
    let learned = driver::run(enforcer.proxy_addr, &learning, options.concurrency).await?;
    let learning_requests = learned.iter().map(|o| o.steps.len()).sum();
    let model_after_learning = admin_get(enforcer.admin_addr, "/v1/model").await?;

    // A release of the bank adds the card view once the model is mature.
    bank.release();
    // Mixed phase.
    let outcomes = driver::run(enforcer.proxy_addr, &mixed, options.concurrency).await?;
    let mixed_requests = outcomes.iter().map(|o| o.steps.len()).sum();
    // A campaign's last tries are named once they settled, by the enforcer's sweep (about
    // once a second) when no login comes after them: read the incidents after it.
    tokio::time::sleep(CAMPAIGN_SWEEP_WAIT).await;
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
        learning_group: GroupResult::default(),
        new_group: GroupResult::default(),
        returning_group: GroupResult::default(),
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
        let client = IpAddr::V4(journey.client);
        let own_incidents = by_client.get(&client).map(Vec::as_slice).unwrap_or(&[]);
        let detected = !own_incidents.is_empty() || outcome.blocked() > 0;
        record_benign(
            &mut report.learning_group,
            &mut report.benign_flag_reasons,
            "learning",
            journey,
            outcome,
            own_incidents,
            detected,
        );
        report.rare_learning += journey
            .steps
            .iter()
            .filter(|s| s.tail == Tail::Rare)
            .count();
    }
    for (journey, outcome) in mixed.iter().zip(&outcomes) {
        let client = IpAddr::V4(journey.client);
        // Every journey has an address of its own, returning customers' included.
        debug_assert!(!learning_clients.contains(&client));
        let own_incidents = by_client.get(&client).map(Vec::as_slice).unwrap_or(&[]);
        let detected = !own_incidents.is_empty() || outcome.blocked() > 0;
        match journey.kind {
            JourneyKind::Benign => {
                report.benign_multi_task += usize::from(journeys::task_count(journey) > 1);
                report.benign_idle_gaps += usize::from(journeys::has_idle_gap(journey));
                for (s, o) in journey.steps.iter().zip(&outcome.steps) {
                    let tail = match s.tail {
                        Tail::Rare => &mut report.rare,
                        Tail::Released => &mut report.released,
                        Tail::No => continue,
                    };
                    tail.requests += 1;
                    tail.refused += usize::from(o.blocked);
                }
                let back = returning.contains(&journey.client);
                if detected && std::env::var_os("ORDO_EVAL_TRACE").is_some() {
                    // A flagged honest visit step by step; a returning customer's with its
                    // learning-phase visit.
                    trace_visit("mixed", journey, outcome);
                    let user = login_username(journey);
                    if let Some((j, o)) = learning
                        .iter()
                        .zip(&learned)
                        .find(|(j, _)| back && login_username(j) == user)
                    {
                        trace_visit("its learning visit", j, o);
                    }
                }
                let (group, name) = if back {
                    (&mut report.returning_group, "returning")
                } else {
                    (&mut report.new_group, "new")
                };
                record_benign(
                    group,
                    &mut report.benign_flag_reasons,
                    name,
                    journey,
                    outcome,
                    own_incidents,
                    detected,
                );
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

/// The username of a journey's first login.
fn login_username(journey: &Journey) -> Option<&str> {
    journey
        .steps
        .iter()
        .find(|s| s.path_and_query == "/api/v1/login")
        .and_then(|s| s.body.as_ref())
        .and_then(|b| b["username"].as_str())
}

/// A visit step by step on stderr (`ORDO_EVAL_TRACE`): pause, request, status, refusal.
fn trace_visit(label: &str, journey: &Journey, outcome: &JourneyOutcome) {
    eprintln!(
        "{label} {} ({}):",
        journey.client,
        login_username(journey).unwrap_or("?")
    );
    for (s, o) in journey.steps.iter().zip(&outcome.steps) {
        eprintln!(
            "   +{:>4} ms {} {} -> {}{}",
            s.think_ms,
            s.method,
            s.path_and_query,
            o.status,
            if o.blocked { " REFUSED" } else { "" }
        );
    }
}

/// Counts one benign session in its group; a flagged one adds the summaries of (at most two
/// of) its incidents to `reasons`, labelled with the group and the client address.
fn record_benign(
    group: &mut GroupResult,
    reasons: &mut Vec<String>,
    name: &str,
    journey: &Journey,
    outcome: &JourneyOutcome,
    incidents: &[&serde_json::Value],
    detected: bool,
) {
    group.sessions += 1;
    group.blocked_requests += outcome.blocked();
    if !detected {
        return;
    }
    group.flagged += 1;
    if incidents.is_empty() {
        reasons.push(format!(
            "{name} {}: blocked without an incident",
            journey.client
        ));
    }
    for incident in incidents.iter().take(2) {
        reasons.push(format!(
            "{name} {}: {}",
            journey.client,
            incident["summary"].as_str().unwrap_or("")
        ));
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn username(journey: &Journey) -> String {
        login_username(journey).unwrap_or_default().to_owned()
    }

    #[test]
    fn half_the_mixed_phase_are_returning_customers_from_new_addresses() {
        let options = EvaluationOptions {
            seed: 9,
            learning_journeys: 60,
            benign_journeys: 40,
            attacks_per_kind: 1,
            ..EvaluationOptions::default()
        };
        let directory = Directory::generate(directory_size(&options));
        let plan = plan(&options, &directory);
        assert_eq!(plan.learning.len(), 60);
        assert_eq!(plan.mixed.len(), 40 + AttackKind::ALL.len());
        assert_eq!(plan.returning.len(), 20);

        let learning_users: HashSet<String> = plan.learning.iter().map(username).collect();
        assert_eq!(learning_users.len(), 60);
        let learning_clients: HashSet<Ipv4Addr> = plan.learning.iter().map(|j| j.client).collect();
        let mut back = HashSet::new();
        for j in plan.mixed.iter().filter(|j| j.kind == JourneyKind::Benign) {
            let user = username(j);
            if plan.returning.contains(&j.client) {
                // The same customer (the same token `sub`), once each, from a new address.
                assert!(learning_users.contains(&user), "{user}");
                assert!(back.insert(user));
            } else {
                assert!(!learning_users.contains(&user), "{user}");
            }
        }
        assert_eq!(back.len(), 20);
        let mut clients = learning_clients.clone();
        for j in &plan.mixed {
            assert!(clients.insert(j.client), "{} used twice", j.client);
        }

        // Every honest request on an account, the long tail's included, is on the customer's
        // own account.
        let owner: HashMap<u64, &str> = directory
            .customers
            .iter()
            .flat_map(|c| c.accounts.iter().map(move |a| (*a, c.username.as_str())))
            .collect();
        for j in plan
            .learning
            .iter()
            .chain(&plan.mixed)
            .filter(|j| j.kind == JourneyKind::Benign)
        {
            let user = username(j);
            for s in &j.steps {
                if let Some(account) = s
                    .path_and_query
                    .strip_prefix("/api/v1/accounts/")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|a| a.parse::<u64>().ok())
                {
                    assert_eq!(owner.get(&account), Some(&user.as_str()), "{s:?}");
                }
            }
        }

        // Deterministic; fewer learning customers than half the mixed phase all come back.
        let again = super::plan(&options, &directory);
        assert_eq!(again.learning, plan.learning);
        assert_eq!(again.mixed, plan.mixed);
        assert_eq!(again.returning, plan.returning);
        let few = EvaluationOptions {
            learning_journeys: 10,
            ..options
        };
        let directory = Directory::generate(directory_size(&few));
        let plan = super::plan(&few, &directory);
        assert_eq!(plan.returning.len(), 10);
        let benign = plan
            .mixed
            .iter()
            .filter(|j| j.kind == JourneyKind::Benign)
            .count();
        assert_eq!(benign, 40);
    }

    #[test]
    fn report_shows_the_honest_groups_and_the_long_tail() {
        let group = |sessions, flagged, blocked_requests| GroupResult {
            sessions,
            flagged,
            blocked_requests,
        };
        let mut attacks = BTreeMap::new();
        attacks.insert(
            AttackKind::Scraping,
            KindResult {
                sessions: 10,
                detected: 10,
                blocked_sessions: 10,
                blocked_requests: 1000,
                until_detection: vec![23; 10],
                harmful: 1160,
                harm_reached: 160,
                finding_kinds: BTreeMap::from([("Volume".to_owned(), 10)]),
            },
        );
        let report = EvaluationReport {
            options: EvaluationOptions::default(),
            attacks,
            learning_group: group(600, 0, 0),
            new_group: group(500, 1, 2),
            returning_group: group(500, 2, 3),
            rare_learning: 4,
            rare: TailResult {
                requests: 37,
                refused: 0,
            },
            released: TailResult {
                requests: 210,
                refused: 1,
            },
            benign_multi_task: 550,
            benign_idle_gaps: 191,
            benign_flag_reasons: vec!["returning 10.0.2.100: Session c1042 (10.0.2.100) …".into()],
            model_after_learning: serde_json::Value::Null,
            incidents: Vec::new(),
            learning_requests: 4621,
            mixed_requests: 10901,
            elapsed: Duration::from_millis(30_400),
        };
        assert_eq!(report.benign_sessions(), 1000);
        assert_eq!(report.benign_flagged(), 3);
        let text = report.to_string();
        let expected = [
            "seed 42, mode Enforce, learning 600 journeys (4621 requests), mixed 1000 benign + 10 × 11 attack journeys (10901 requests), 30.4 s",
            "| scraping | 10 | 10 | 10 | 1000 | 23, 23 | 160 of 1160 | Volume (10) |",
            "| honest sessions | sessions | flagged | share | requests refused |\n|---|---:|---:|---:|---:|\n| learning phase | 600 | 0 | 0.00% | 0 |\n| new users | 500 | 1 | 0.20% | 2 |\n| returning users | 500 | 2 | 0.40% | 3 |\n",
            "benign sessions with several tasks: 550 of 1000; with an idle gap: 191",
            "honest requests to rare operations: 4 while learning, 37 after, 0 refused",
            "honest requests to the operation released after maturity: 210, 1 refused",
            "  - returning 10.0.2.100: Session c1042 (10.0.2.100) …",
        ];
        for line in expected {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("benign sessions flagged"), "{text}");
    }
}
