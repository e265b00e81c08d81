//! Scale-out on loopback: the sample bank behind 3 enforcer replicas (in-process, the server the
//! binary runs, with a static peer list), 2 round-robin front proxies and a connection balancer
//! in front of them, so that each customer's requests reach every replica. Sequence rules,
//! per-session limits and every learned detector in Enforce. The same journeys run against one
//! replica; the decisions are compared request by request. Then the replica set changes during
//! traffic (3 → 5 → 2, and one of the two crashes) with honest journeys only: no false positive.
//!
//! Each replica learns on its own and adopts the model merged from every replica's deltas, as
//! the operator merges reports (exactly, by addition: docs/detection.md): here every 500 ms,
//! and once right after the learning phase, so that what is compared is the session state.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::model::LearnedModel;
use ordo_enforcer::runtime::RunningEnforcer;
use ordo_tests::sim::bank::{Directory, RunningBank};
use ordo_tests::sim::driver::{self, JourneyOutcome};
use ordo_tests::sim::evaluate::{admin_get, enforcer_yaml};
use ordo_tests::sim::journeys::{self, AttackKind, Journey, JourneyKind};
use ordo_tests::sim::scaleout::{Backends, free_address, peers_yaml, start_balancer, start_front};
use parking_lot::Mutex;

const SEED: u64 = 11;
const LEARNING: usize = 500;
const BENIGN: usize = 200;
const PER_KIND: usize = 2;
const CHURN: usize = 300;
const CONCURRENCY: usize = 8;
/// The session history's duration, short as the simulator's clock is (its journeys pause for
/// milliseconds): also how long a replica that joined treats the sessions it owns as possibly
/// served elsewhere before.
const HISTORY: Duration = Duration::from_secs(3);

fn yaml(upstream: SocketAddr, peers: Option<String>) -> String {
    let mut text = enforcer_yaml(upstream, "Enforce").replace(
        "session:\n  identifiers:",
        &format!(
            "session:\n  history: {{ requests: 16, duration: {}ms }}\n  identifiers:",
            HISTORY.as_millis()
        ),
    );
    text.push_str(
        r#"rules:
  - name: balance-before-transfer
    action: Block
    requires:
      operation: POST /api/v1/transfers
      after: ["GET /api/v1/accounts/{account_id}/balance"]
      within: { requests: 10, duration: 3s }
rateLimits:
  - name: history-pages
    operation: GET /api/v1/accounts/{account_id}/transactions
    requests: 40
    per: 1m
    action: Block
"#,
    );
    if let Some(peers) = peers {
        text.push_str(&peers);
    }
    text
}

struct Plan {
    directory: Directory,
    learning: Vec<Journey>,
    mixed: Vec<Journey>,
    churn: Vec<Journey>,
}

fn plan() -> Plan {
    let attacks = PER_KIND * AttackKind::ALL.len();
    let directory = Directory::generate(LEARNING + BENIGN + attacks + CHURN + 10);
    let learning = journeys::generate(SEED, &directory, 0, LEARNING, 0, false);
    let mixed = journeys::generate(SEED + 1, &directory, LEARNING, BENIGN, PER_KIND, true);
    let churn = journeys::generate(
        SEED + 2,
        &directory,
        LEARNING + BENIGN + attacks,
        CHURN,
        0,
        true,
    );
    Plan {
        directory,
        learning,
        mixed,
        churn,
    }
}

/// What one run saw.
struct Run {
    mixed: Vec<JourneyOutcome>,
    churn: Vec<JourneyOutcome>,
    /// Incidents after the mixed phase, by client.
    incidents: HashMap<IpAddr, Vec<serde_json::Value>>,
    /// `ordo_forward_total` by result after the mixed phase, summed over the replicas.
    forward_mixed: BTreeMap<String, f64>,
    /// Requests each replica decided, after the mixed phase.
    decided: Vec<f64>,
    /// The same at the end, over the replicas still running.
    forward: BTreeMap<String, f64>,
    /// Per replica, over the learning and mixed phases (one member view throughout, past the
    /// start-up window): messages from a replica routing by another view, and sessions that
    /// started over as possibly served elsewhere. Both must stay 0.
    steady: Vec<(f64, f64)>,
}

async fn start_replica(
    upstream: SocketAddr,
    peers: Option<String>,
    analyzer: &Arc<LearnedAnalyzer>,
) -> RunningEnforcer {
    let config = parse_yaml(&yaml(upstream, peers)).expect("the run's config");
    ordo_enforcer::runtime::start(config, None, Arc::clone(analyzer) as _)
        .await
        .expect("an enforcer starts")
}

async fn incidents_of(replicas: &[&RunningEnforcer]) -> HashMap<IpAddr, Vec<serde_json::Value>> {
    let mut by_client: HashMap<IpAddr, Vec<serde_json::Value>> = HashMap::new();
    for e in replicas {
        let all = admin_get(e.admin_addr, "/v1/incidents")
            .await
            .expect("incidents");
        for incident in all.as_array().cloned().unwrap_or_default() {
            if let Some(client) = incident["client"].as_str().and_then(|c| c.parse().ok()) {
                by_client.entry(client).or_default().push(incident);
            }
        }
    }
    by_client
}

async fn metrics_of(e: &RunningEnforcer) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = format!("http://{}/metrics", e.admin_addr).parse().unwrap();
    let resp = client.get(uri).await.expect("metrics");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Requests each replica decided (`ordo_requests_total`, every operation and decision).
async fn decided_per_replica(replicas: &[&RunningEnforcer]) -> Vec<f64> {
    let mut out = Vec::new();
    for e in replicas {
        let text = metrics_of(e).await;
        out.push(
            text.lines()
                .filter(|l| l.starts_with("ordo_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        );
    }
    out
}

/// The sum of a counter's series on one replica.
async fn counter(e: &RunningEnforcer, name: &str) -> f64 {
    metrics_of(e)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const DISAGREEMENTS: &str = "ordo_peer_view_disagreements_total";
const MOVED: &str = "ordo_sessions_moved_total";

async fn forward_counts(replicas: &[&RunningEnforcer]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for e in replicas {
        for line in metrics_of(e).await.lines() {
            if let Some(rest) = line.strip_prefix("ordo_forward_total{result=\"")
                && let Some((result, value)) = rest.split_once("\"} ")
            {
                *out.entry(result.to_owned()).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    out
}

/// Waits until the learned model is mature and every detector active (as the detection
/// evaluation checks after its learning phase): the runs compare session state, so both must
/// judge the mixed phase with an active model.
async fn wait_for_active_model(admin: SocketAddr) {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let model = admin_get(admin, "/v1/model").await.expect("the model");
        let analyzer = &model["analyzer"];
        let active = analyzer["mature"] == true
            && analyzer["detectors"]
                .as_array()
                .is_some_and(|ds| ds.iter().all(|d| d["active"] == true));
        if active {
            return;
        }
        last = analyzer.clone();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the model did not become active: {last}");
}

async fn single(plan: &Plan) -> Run {
    let bank = RunningBank::start(&plan.directory, None).await.unwrap();
    let config = parse_yaml(&yaml(bank.addr, None)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let e = start_replica(bank.addr, None, &analyzer).await;
    driver::run(e.proxy_addr, &plan.learning, CONCURRENCY)
        .await
        .unwrap();
    wait_for_active_model(e.admin_addr).await;
    let mixed = driver::run(e.proxy_addr, &plan.mixed, CONCURRENCY)
        .await
        .unwrap();
    let incidents = incidents_of(&[&e]).await;
    let churn = driver::run(e.proxy_addr, &plan.churn, CONCURRENCY)
        .await
        .unwrap();
    e.shutdown().await;
    bank.shutdown();
    Run {
        mixed,
        churn,
        incidents,
        forward_mixed: BTreeMap::new(),
        decided: Vec::new(),
        forward: BTreeMap::new(),
        steady: Vec::new(),
    }
}

/// What the operator does with the replicas' reports: merges their deltas into one model and
/// hands it back to each.
#[derive(Default)]
struct ModelHub {
    analyzers: Mutex<Vec<Arc<LearnedAnalyzer>>>,
    merged: Mutex<Option<LearnedModel>>,
}

impl ModelHub {
    fn sync(&self) {
        let analyzers = self.analyzers.lock().clone();
        let mut merged = self.merged.lock();
        for a in &analyzers {
            let delta = a.take_delta();
            match merged.as_mut() {
                Some(m) => m.merge(&delta),
                None => *merged = Some(delta),
            }
        }
        if let Some(m) = merged.as_ref() {
            for a in &analyzers {
                a.replace_model(m.clone());
            }
        }
    }

    /// A new replica's analyzer, starting from the merged model.
    fn join(&self, config: &ordo_enforcer::config::EnforcerConfig) -> Arc<LearnedAnalyzer> {
        let analyzer = Arc::new(LearnedAnalyzer::new(
            &config.learning,
            &config.detectors,
            None,
        ));
        if let Some(m) = self.merged.lock().as_ref() {
            analyzer.replace_model(m.clone());
        }
        self.analyzers.lock().push(Arc::clone(&analyzer));
        analyzer
    }
}

async fn scaled(plan: &Plan) -> Run {
    let bank = RunningBank::start(&plan.directory, None).await.unwrap();
    let config = parse_yaml(&yaml(bank.addr, None)).unwrap();
    let hub = Arc::new(ModelHub::default());
    let syncing = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                hub.sync();
            }
        })
    };
    let internal: Vec<SocketAddr> = (0..5).map(|_| free_address().unwrap()).collect();
    let mut replicas: Vec<Option<RunningEnforcer>> = Vec::new();
    for me in &internal[..3] {
        let peers = peers_yaml(*me, &internal[..3]);
        let analyzer = hub.join(&config);
        replicas.push(Some(start_replica(bank.addr, Some(peers), &analyzer).await));
    }
    let backends: Backends = Arc::new(Mutex::new(
        replicas.iter().flatten().map(|e| e.proxy_addr).collect(),
    ));
    let fronts = vec![
        start_front(Arc::clone(&backends)).await.unwrap(),
        start_front(Arc::clone(&backends)).await.unwrap(),
    ];
    let entry = start_balancer(fronts).await.unwrap();
    // Past the start-up horizon (a replica that just started does not know where its sessions
    // were before, here nowhere, until the hold of a static list, 1 s, and one history after).
    tokio::time::sleep(HISTORY + Duration::from_millis(1200)).await;
    let mut moved_at_start = Vec::new();
    for e in replicas.iter().flatten() {
        moved_at_start.push(counter(e, MOVED).await);
    }

    driver::run(entry, &plan.learning, CONCURRENCY)
        .await
        .unwrap();
    hub.sync();
    for e in replicas.iter().flatten() {
        wait_for_active_model(e.admin_addr).await;
    }
    let mixed = driver::run(entry, &plan.mixed, CONCURRENCY).await.unwrap();
    let running: Vec<&RunningEnforcer> = replicas.iter().flatten().collect();
    let incidents = incidents_of(&running).await;
    let forward_mixed = forward_counts(&running).await;
    let decided = decided_per_replica(&running).await;
    let mut steady = Vec::new();
    for (e, at_start) in running.iter().zip(&moved_at_start) {
        steady.push((
            counter(e, DISAGREEMENTS).await,
            counter(e, MOVED).await - at_start,
        ));
    }

    // Honest traffic while the replica set changes: 3 → 5 → 2, then one of the two crashes.
    let churn_journeys = plan.churn.clone();
    let traffic =
        tokio::spawn(async move { driver::run(entry, &churn_journeys, CONCURRENCY).await });
    async fn set_members(replicas: &[Option<RunningEnforcer>], members: &[SocketAddr]) {
        for e in replicas.iter().flatten() {
            if let Some(router) = &e.shared.router {
                router.set_members(members.to_vec()).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!traffic.is_finished(), "the changes happen during traffic");
    for me in &internal[3..] {
        let peers = peers_yaml(*me, &internal);
        let analyzer = hub.join(&config);
        replicas.push(Some(start_replica(bank.addr, Some(peers), &analyzer).await));
    }
    set_members(&replicas, &internal).await;
    backends
        .lock()
        .extend(replicas[3..].iter().flatten().map(|e| e.proxy_addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!traffic.is_finished(), "the changes happen during traffic");
    // Scale down to the first two: the set first (the Endpoints), the front a little later.
    set_members(&replicas, &internal[..2]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let keep: Vec<SocketAddr> = replicas[..2]
        .iter()
        .flatten()
        .map(|e| e.proxy_addr)
        .collect();
    *backends.lock() = keep;
    for slot in replicas.iter_mut().skip(2) {
        if let Some(e) = slot.take() {
            e.shutdown().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!traffic.is_finished(), "the changes happen during traffic");
    // The second replica crashes: neither the front nor the set know yet.
    if let Some(e) = replicas[1].take() {
        e.shutdown().await;
    }
    let churn = traffic.await.unwrap().unwrap();
    let running: Vec<&RunningEnforcer> = replicas.iter().flatten().collect();
    let forward = forward_counts(&running).await;
    for e in replicas.into_iter().flatten() {
        e.shutdown().await;
    }
    syncing.abort();
    bank.shutdown();
    Run {
        mixed,
        churn,
        incidents,
        forward_mixed,
        decided,
        forward,
        steady,
    }
}

/// Requests whose decision (blocked or not) differs, and the journeys they are in.
fn differences(journeys: &[Journey], a: &[JourneyOutcome], b: &[JourneyOutcome]) -> Vec<String> {
    let mut out = Vec::new();
    for ((j, x), y) in journeys.iter().zip(a).zip(b) {
        for (i, (sx, sy)) in x.steps.iter().zip(&y.steps).enumerate() {
            if sx.blocked != sy.blocked {
                out.push(format!(
                    "{:?} {} step {} {} {}: one replica {} , scaled {}",
                    j.kind,
                    j.client,
                    i + 1,
                    j.steps[i].method,
                    j.steps[i].path_and_query,
                    sx.status,
                    sy.status
                ));
            }
        }
        if x.steps.len() != y.steps.len() {
            out.push(format!(
                "{:?} {}: {} vs {} steps",
                j.kind,
                j.client,
                x.steps.len(),
                y.steps.len()
            ));
        }
    }
    out
}

/// Per attack kind: sessions detected (blocked or with an incident) and the finding kinds.
fn detections(plan: &Plan, run: &Run) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for (j, o) in plan.mixed.iter().zip(&run.mixed) {
        let JourneyKind::Attack(kind) = j.kind else {
            continue;
        };
        let incidents = run
            .incidents
            .get(&IpAddr::V4(j.client))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let entry = out.entry(kind.to_string()).or_default();
        if o.blocked() > 0 || !incidents.is_empty() {
            entry.0 += 1;
        }
        for i in incidents {
            for k in i["kinds"].as_array().into_iter().flatten() {
                entry.1.insert(k.as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

/// Every honest request refused, with what the enforcer said (the rule or finding that fired).
fn honest_refusals(phase: &str, journeys: &[Journey], outcomes: &[JourneyOutcome]) -> Vec<String> {
    let mut out = Vec::new();
    for (j, o) in journeys.iter().zip(outcomes) {
        if j.kind != JourneyKind::Benign {
            continue;
        }
        for (i, s) in o.steps.iter().enumerate().filter(|(_, s)| s.blocked) {
            out.push(format!(
                "{phase}: {} step {} {} {}: {} {}",
                j.client,
                i + 1,
                j.steps[i].method,
                j.steps[i].path_and_query,
                s.status,
                s.refusal.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

fn benign_blocked(journeys: &[Journey], outcomes: &[JourneyOutcome]) -> usize {
    journeys
        .iter()
        .zip(outcomes)
        .filter(|(j, _)| j.kind == JourneyKind::Benign)
        .map(|(_, o)| o.blocked())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_round_robin_fronts_decide_as_one() {
    if std::env::var_os("ORDO_SCALEOUT_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .try_init();
    }
    let started = Instant::now();
    let plan = plan();
    let one = single(&plan).await;
    let three = scaled(&plan).await;

    let mixed_diff = differences(&plan.mixed, &one.mixed, &three.mixed);
    let churn_diff = differences(&plan.churn, &one.churn, &three.churn);
    let count = |js: &[Journey]| js.iter().map(|j| j.steps.len()).sum::<usize>();
    println!(
        "decisions that differ from one replica: {} of {} requests with 3 replicas, {} of {} while the set changed",
        mixed_diff.len(),
        count(&plan.mixed),
        churn_diff.len(),
        count(&plan.churn)
    );
    for d in mixed_diff.iter().chain(&churn_diff) {
        println!("  - {d}");
    }
    println!(
        "forwarding after the mixed phase (3 replicas): {:?}",
        three.forward_mixed
    );
    println!(
        "forwarding at the end (the replica still running): {:?}",
        three.forward
    );
    println!("requests decided per replica: {:?}", three.decided);
    println!(
        "steady state (learning and mixed phases), per replica (view disagreements, sessions started over): {:?}",
        three.steady
    );
    let (d1, d3) = (detections(&plan, &one), detections(&plan, &three));
    for (kind, (n, kinds)) in &d3 {
        println!(
            "{kind}: detected {n} of {PER_KIND} (one replica: {:?}); findings {kinds:?}",
            d1.get(kind)
        );
    }
    println!("in {:.1} s", started.elapsed().as_secs_f64());
    for (name, run) in [("one replica", &one), ("scaled", &three)] {
        for (phase, journeys, outcomes) in [
            ("mixed", &plan.mixed, &run.mixed),
            ("churn", &plan.churn, &run.churn),
        ] {
            for r in honest_refusals(phase, journeys, outcomes) {
                println!("honest request refused ({name}) {r}");
            }
        }
    }

    // With one member view on every replica and the start-up window past, no message shows
    // another view and no session starts over: the routing changes nothing in steady state.
    assert_eq!(three.steady.len(), 3);
    assert!(
        three.steady.iter().all(|(d, m)| *d == 0.0 && *m == 0.0),
        "steady state: {:?}",
        three.steady
    );
    // No honest request refused, on three replicas as while the set changed (and not more
    // than one replica refuses: the learned detectors may flag an honest session anyway).
    let benign_one = benign_blocked(&plan.mixed, &one.mixed);
    assert_eq!(benign_blocked(&plan.mixed, &three.mixed), benign_one);
    assert_eq!(
        benign_blocked(&plan.churn, &three.churn),
        benign_blocked(&plan.churn, &one.churn)
    );
    assert_eq!(benign_blocked(&plan.churn, &three.churn), 0);
    // Every attack is detected in as many sessions as on one replica, by no other kind of
    // finding (a learned detector may speak later than on one replica: the replicas learn
    // operation templates each from the traffic it decides, and share one model object here;
    // the differences printed above say where).
    for (kind, (n1, kinds1)) in &d1 {
        let (n3, kinds3) = &d3[kind];
        assert_eq!(n1, n3, "{kind}: detected sessions");
        assert!(kinds3.is_subset(kinds1), "{kind}: {kinds3:?} vs {kinds1:?}");
    }
    // Sessions, not addresses, are spread: every replica decides about a third although all
    // the traffic comes through two front proxies.
    let total: f64 = three.decided.iter().sum();
    assert!(
        three.decided.iter().all(|n| *n >= 0.25 * total),
        "{:?}",
        three.decided
    );
    // Requests were forwarded (with 3 replicas a request reaches its session's owner first a
    // third of the time), and the crash was met by deciding locally.
    let forwarded = three.forward_mixed.get("forwarded").copied().unwrap_or(0.0);
    let sent = (count(&plan.learning) + count(&plan.mixed)) as f64;
    println!(
        "forwarded: {:.1}% of the requests before the changes",
        100.0 * forwarded / sent
    );
    assert!(forwarded >= 0.5 * sent, "{:?}", three.forward_mixed);
    assert!(
        three.forward.get("local_fallback").copied().unwrap_or(0.0) >= 1.0,
        "{:?}",
        three.forward
    );
}
