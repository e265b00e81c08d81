//! The evaluation on API styles other than the bank's (`library.rs`: readable names, 200 with
//! an error body, bearer JWTs; `shop.rs`: cookie sessions, pagination, exports, a release after
//! maturity), and the journey helpers they share.
//!
//! Each API runs through a real enforcer with every detector on `Block` (as the bank's
//! evaluation): a learning phase of honest sessions, then honest sessions mixed with attacks.
//! Honest sessions are reported in three groups: sessions of the learning phase, new users
//! of the mixed phase, and users who come back in the mixed phase after a session of the
//! learning phase (a later day, another address, a new login). Honest requests to rare
//! operations (fewer during learning than any threshold) and to an operation a release added
//! after maturity are counted apart, with how many of them were refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;
use rand::RngExt as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::app::{App, Hit, RunningApp};
use super::driver::{self, JourneyOutcome};
use super::evaluate::{KindResult, admin_get, record_attack};
use super::journeys::{AttackKind, Journey, JourneyKind, Step, Tail};
pub use super::journeys::{RARE_SHARE, TailResult, rare_learning_sessions};
use super::{library, shop};

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An authenticated step (token or cookies of the journey), sent right away.
pub fn step(method: http::Method, path: impl Into<String>, body: Option<Value>) -> Step {
    Step {
        method,
        path_and_query: path.into(),
        body,
        authenticated: true,
        harmful: false,
        think_ms: 1,
        tail: Tail::No,
    }
}

/// A step without credentials.
pub fn anonymous(method: http::Method, path: impl Into<String>, body: Option<Value>) -> Step {
    Step {
        authenticated: false,
        ..step(method, path, body)
    }
}

/// Percent-encodes one path segment.
pub fn encode_path(segment: &str) -> String {
    super::journeys::encode_query(segment)
}

/// Tasks of one visit: 1–4, weights 50/30/15/5 %.
pub fn tasks_per_visit(rng: &mut ChaCha8Rng) -> usize {
    match rng.random_range(0..100) {
        0..=49 => 1,
        50..=79 => 2,
        80..=94 => 3,
        _ => 4,
    }
}

/// Pause before a later task of a visit (simulator time, 1 ms ≈ 1 s): 20–120 ms, one in five
/// an idle gap of 360–900 ms (as the bank's visits, `journeys::IDLE_GAP_MS`).
pub fn pause(rng: &mut ChaCha8Rng) -> u64 {
    if rng.random_bool(0.2) {
        rng.random_range(super::journeys::IDLE_GAP_MS)
    } else {
        rng.random_range(20..=120)
    }
}

/// A user's password: words, digits and punctuation of every kind, as people choose them (so
/// that a leaked list's passwords are not told apart by their characters alone).
pub fn password(i: usize) -> String {
    const WORDS: [&str; 8] = [
        "Summer", "harbour", "Tiger", "winter", "Blue", "falcon", "Rosa", "pepper",
    ];
    const MARKS: [&str; 8] = ["!", "#", "", "?", "$", ".", "", "-"];
    format!(
        "{}{}{}{}",
        WORDS[i % 8],
        MARKS[(i / 8) % 8],
        1960 + (i * 7) % 64,
        MARKS[(i / 3) % 8]
    )
}

/// A catalogue page an honest visitor opens: mostly the first three, now and then up to ten.
pub fn page(rng: &mut ChaCha8Rng) -> usize {
    if rng.random_bool(0.85) {
        rng.random_range(1..=3)
    } else {
        rng.random_range(4..=10)
    }
}

const LEAKED_PASSWORDS: [&str; 4] = ["Summer2024!", "Password1", "Qwerty123!", "Welcome2025"];

pub fn leaked_password(rng: &mut ChaCha8Rng) -> &'static str {
    LEAKED_PASSWORDS.choose(rng).copied().unwrap_or("Password1")
}

const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "okhttp/4.12.0",
];

/// Unique client addresses and journey ids across the phases of one API's plan.
#[derive(Debug, Default)]
pub struct Addresses {
    benign: u32,
    attack: u32,
    campaign: u32,
    next_id: usize,
}

/// First address of honest journeys.
pub const BENIGN_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// First address of attack journeys (the benchmarking range).
pub const ATTACK_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// First address of stuffing-campaign journeys (TEST-NET-3 and beyond).
pub const CAMPAIGN_BASE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

impl Addresses {
    fn journey(
        &mut self,
        kind: JourneyKind,
        client: Ipv4Addr,
        user_agent: &'static str,
        steps: Vec<Step>,
    ) -> Journey {
        self.next_id += 1;
        Journey {
            id: self.next_id - 1,
            kind,
            client,
            user_agent,
            steps,
        }
    }

    pub fn benign(&mut self, steps: Vec<Step>, rng: &mut ChaCha8Rng) -> Journey {
        self.benign += 1;
        let ua = USER_AGENTS.choose(rng).copied().unwrap_or(USER_AGENTS[0]);
        self.journey(
            JourneyKind::Benign,
            nth(BENIGN_BASE, self.benign - 1),
            ua,
            steps,
        )
    }

    pub fn attack(&mut self, kind: AttackKind, steps: Vec<Step>, rng: &mut ChaCha8Rng) -> Journey {
        self.attack += 1;
        let ua = USER_AGENTS.choose(rng).copied().unwrap_or(USER_AGENTS[0]);
        self.journey(
            JourneyKind::Attack(kind),
            nth(ATTACK_BASE, self.attack - 1),
            ua,
            steps,
        )
    }

    /// A stuffing campaign: one journey per address, 1–2 tries each, every identity of
    /// `identities` tried once (as many addresses as it takes).
    pub fn campaign(
        &mut self,
        identities: &[String],
        rng: &mut ChaCha8Rng,
        try_one: impl Fn(&str, &mut ChaCha8Rng) -> Step,
    ) -> Vec<Journey> {
        let mut journeys = Vec::new();
        let mut rest = identities;
        while !rest.is_empty() {
            let tries = rng.random_range(1..=2usize).min(rest.len());
            let (now, later) = rest.split_at(tries);
            rest = later;
            let steps: Vec<Step> = now
                .iter()
                .map(|name| {
                    let mut s = try_one(name, rng);
                    s.think_ms = rng.random_range(5..30);
                    s
                })
                .collect();
            self.campaign += 1;
            let client = nth(CAMPAIGN_BASE, self.campaign - 1);
            journeys.push(self.journey(
                JourneyKind::Attack(AttackKind::StuffingCampaign),
                client,
                "python-requests/2.32.3",
                steps,
            ));
        }
        journeys
    }
}

/// The journeys of one API's evaluation.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub learning: Vec<Journey>,
    /// Honest and attack journeys, shuffled.
    pub mixed: Vec<Journey>,
    /// Clients of honest mixed-phase journeys by users who had a learning-phase session.
    pub returning: HashSet<Ipv4Addr>,
}

/// Sizes of one API's evaluation.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub learning: usize,
    pub benign: usize,
    pub attacks_per_kind: usize,
}

/// The API styles besides the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Library,
    Shop,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Self::Library => "library",
            Self::Shop => "shop",
        }
    }

    pub fn attacks(self) -> &'static [AttackKind] {
        match self {
            Self::Library => &library::ATTACKS,
            Self::Shop => &shop::ATTACKS,
        }
    }

    pub fn label(self, kind: AttackKind) -> &'static str {
        match self {
            Self::Library => library::label(kind),
            Self::Shop => shop::label(kind),
        }
    }
}

/// The enforcer config: the bank evaluation's, with the API's session identifiers.
pub fn enforcer_yaml(upstream: SocketAddr, mode: &str, session: &str) -> String {
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
{session}
learning:
  journeyGap: 300ms
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

/// Options of one API's evaluation.
#[derive(Debug, Clone)]
pub struct StyleOptions {
    pub seed: u64,
    pub sizes: Sizes,
    pub concurrency: usize,
    pub mode: &'static str,
}

/// Honest sessions of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupResult {
    pub sessions: usize,
    pub flagged: usize,
    pub blocked_requests: usize,
}

/// One API's evaluation.
#[derive(Debug, Clone)]
pub struct StyleReport {
    pub api: Api,
    pub options: StyleOptions,
    /// In the order of [`Api::attacks`].
    pub attacks: Vec<(AttackKind, KindResult)>,
    pub learning_group: GroupResult,
    pub new_group: GroupResult,
    pub returning_group: GroupResult,
    /// Honest requests to rare operations in the mixed phase.
    pub rare: TailResult,
    /// Honest requests to rare operations while the model learned.
    pub rare_learning: usize,
    /// Honest requests to the operation a release added after maturity.
    pub released: TailResult,
    /// Incident summaries of flagged honest sessions (a few).
    pub flag_reasons: Vec<String>,
    pub model_after_learning: Value,
    pub learning: Vec<(Journey, JourneyOutcome)>,
    pub mixed: Vec<(Journey, JourneyOutcome)>,
    /// Every request that reached the app.
    pub hits: Vec<Hit>,
    pub elapsed: Duration,
}

impl StyleReport {
    pub fn attack(&self, kind: AttackKind) -> Option<&KindResult> {
        self.attacks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| r)
    }
}

fn median(values: &[usize]) -> Option<usize> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The honest sessions of every API's report as a Markdown table: the learning phase, new
/// and returning users of the mixed phase, each with its sessions, those flagged, their share
/// and the honest requests refused.
pub fn write_groups(
    f: &mut fmt::Formatter<'_>,
    learning: &GroupResult,
    new: &GroupResult,
    returning: &GroupResult,
) -> fmt::Result {
    writeln!(
        f,
        "| honest sessions | sessions | flagged | share | requests refused |"
    )?;
    writeln!(f, "|---|---:|---:|---:|---:|")?;
    for (name, g) in [
        ("learning phase", learning),
        ("new users", new),
        ("returning users", returning),
    ] {
        writeln!(
            f,
            "| {name} | {} | {} | {:.2}% | {} |",
            g.sessions,
            g.flagged,
            share(g.flagged, g.sessions),
            g.blocked_requests
        )?;
    }
    Ok(())
}

impl fmt::Display for StyleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let requests = |j: &[(Journey, JourneyOutcome)]| -> usize {
            j.iter().map(|(_, o)| o.steps.len()).sum()
        };
        writeln!(
            f,
            "API {}: seed {}, mode {}, learning {} sessions ({} requests), mixed {} honest + {} per attack kind ({} requests), {:.1} s",
            self.api.name(),
            o.seed,
            o.mode,
            self.learning.len(),
            requests(&self.learning),
            self.new_group.sessions + self.returning_group.sessions,
            o.sizes.attacks_per_kind,
            requests(&self.mixed),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| attack | sessions | detected | blocked sessions | requests until first detection (median, max) | harmful requests that reached the app | detectors |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---|")?;
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
                "| {} | {} | {} | {} | {until} | {} of {} | {} |",
                self.api.label(*kind),
                r.sessions,
                r.detected,
                r.blocked_sessions,
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
            "honest requests to rare operations: {} while learning, {} after, {} refused",
            self.rare_learning, self.rare.requests, self.rare.refused
        )?;
        if self.released.requests > 0 {
            writeln!(
                f,
                "honest requests to the operation released after maturity: {}, {} refused",
                self.released.requests, self.released.refused
            )?;
        }
        for reason in &self.flag_reasons {
            writeln!(f, "  - {reason}")?;
        }
        Ok(())
    }
}

/// Runs one API's evaluation end to end.
pub async fn run(api: Api, options: StyleOptions) -> anyhow::Result<StyleReport> {
    match api {
        Api::Library => {
            let (world, plan) = library::plan(options.seed, &options.sizes);
            let app = RunningApp::start(library::Library::new(&world))
                .await
                .context("starting the library")?;
            let yaml = library::enforcer_yaml(app.addr, options.mode);
            run_plan(api, &app, &yaml, plan, options).await
        }
        Api::Shop => {
            let (world, plan) = shop::plan(options.seed, &options.sizes);
            let app = RunningApp::start(shop::Shop::new(&world))
                .await
                .context("starting the shop")?;
            let yaml = shop::enforcer_yaml(app.addr, options.mode);
            run_plan(api, &app, &yaml, plan, options).await
        }
    }
}

async fn run_plan<A: App>(
    api: Api,
    app: &RunningApp<A>,
    yaml: &str,
    plan: Plan,
    options: StyleOptions,
) -> anyhow::Result<StyleReport> {
    let started = Instant::now();
    let mut config = parse_yaml(yaml).context("the evaluation's enforcer config")?;
    super::evaluate::disable_from_env(&mut config.detectors)?;
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let enforcer = ordo_enforcer::runtime::start(config, None, Arc::clone(&analyzer) as _)
        .await
        .context("starting the enforcer")?;
    let learned = driver::run(enforcer.proxy_addr, &plan.learning, options.concurrency).await?;
    let model_after_learning = admin_get(enforcer.admin_addr, "/v1/model").await?;
    // A release of the app adds an operation once the model is mature.
    app.app.release();
    let outcomes = driver::run(enforcer.proxy_addr, &plan.mixed, options.concurrency).await?;
    // A campaign's last tries are named once they settled, by the enforcer's sweep (about
    // once a second) when no login comes after them: read the incidents after it.
    tokio::time::sleep(super::evaluate::CAMPAIGN_SWEEP_WAIT).await;
    let incidents = admin_get(enforcer.admin_addr, "/v1/incidents").await?;
    enforcer.shutdown().await;
    app.shutdown();

    let mut by_client: HashMap<IpAddr, Vec<&Value>> = HashMap::new();
    for incident in incidents.as_array().into_iter().flatten() {
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
    let mut attacks: BTreeMap<AttackKind, KindResult> = BTreeMap::new();
    let mut report = StyleReport {
        api,
        options,
        attacks: Vec::new(),
        learning_group: GroupResult::default(),
        new_group: GroupResult::default(),
        returning_group: GroupResult::default(),
        rare: TailResult::default(),
        rare_learning: 0,
        released: TailResult::default(),
        flag_reasons: Vec::new(),
        model_after_learning,
        learning: Vec::new(),
        mixed: Vec::new(),
        hits: app.hits(),
        elapsed: Duration::ZERO,
    };
    let mut judge = |journey: &Journey, outcome: &JourneyOutcome, learning: bool| {
        let client = IpAddr::V4(journey.client);
        let own = by_client.get(&client).map(Vec::as_slice).unwrap_or(&[]);
        let detected = !own.is_empty() || outcome.blocked() > 0;
        match journey.kind {
            JourneyKind::Benign => {
                let group = if learning {
                    &mut report.learning_group
                } else if plan.returning.contains(&journey.client) {
                    &mut report.returning_group
                } else {
                    &mut report.new_group
                };
                group.sessions += 1;
                group.blocked_requests += outcome.blocked();
                if detected {
                    group.flagged += 1;
                    let why = own
                        .first()
                        .and_then(|i| i["summary"].as_str())
                        .unwrap_or("blocked without an incident");
                    // Every flagged honest session with `ORDO_EVAL_TRACE` (as the attacks in
                    // `evaluate::record_attack`), a few in the report.
                    if std::env::var_os("ORDO_EVAL_TRACE").is_some() {
                        eprintln!(
                            "honest {} {}: {why}",
                            if learning { "learning" } else { "mixed" },
                            journey.client
                        );
                    }
                    if report.flag_reasons.len() < 12 {
                        report.flag_reasons.push(format!(
                            "{} {}: {why}",
                            if learning { "learning" } else { "mixed" },
                            journey.client
                        ));
                    }
                }
                for (s, o) in journey.steps.iter().zip(&outcome.steps) {
                    match (s.tail, learning) {
                        (Tail::Rare, true) => report.rare_learning += 1,
                        (Tail::Rare, false) => {
                            report.rare.requests += 1;
                            report.rare.refused += usize::from(o.blocked);
                        }
                        (Tail::Released, _) => {
                            report.released.requests += 1;
                            report.released.refused += usize::from(o.blocked);
                        }
                        (Tail::No, _) => {}
                    }
                }
            }
            JourneyKind::Attack(kind) => {
                let r = attacks.entry(kind).or_default();
                record_attack(r, journey, outcome, own, detected);
            }
        }
    };
    for (journey, outcome) in plan.learning.iter().zip(&learned) {
        judge(journey, outcome, true);
    }
    for (journey, outcome) in plan.mixed.iter().zip(&outcomes) {
        judge(journey, outcome, false);
    }
    report.attacks = api
        .attacks()
        .iter()
        .map(|k| (*k, attacks.remove(k).unwrap_or_default()))
        .collect();
    report.learning = plan.learning.into_iter().zip(learned).collect();
    report.mixed = plan.mixed.into_iter().zip(outcomes).collect();
    report.elapsed = started.elapsed();
    Ok(report)
}
