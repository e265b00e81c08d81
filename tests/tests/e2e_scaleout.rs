//! Scale-out on the local cluster's real node (docs/scale-out.md): the chart's operator, an
//! ApiProtection in Enforce with 3 enforcer replicas and `scaleOut.secretRef`, and 2 front
//! proxies in Pods of their own (`ordo-sample-bank --front`: each request to the next enforcer
//! Pod, as the pods of an ingress controller spread one customer's requests) behind a
//! ClusterIP Service that the test sends the simulator's bank journeys to. A `requires` rule,
//! a per-session rate limit and every learned detector block.
//!
//! The same journeys run against one enforcer in this process (the reference: the same
//! settings, no peers), and every request's decision (refused or not) is compared:
//!
//! 1. learning (honest journeys), until every replica's model is mature and its detectors
//!    active (each replica learns from what it decides and adopts the model the operator
//!    merges from all replicas' reports);
//! 2. mixed: honest journeys and every attack kind, 3 replicas;
//! 3. churn: honest journeys without a pause while the replicas are scaled 3 → 5 → 2 and one
//!    of the two is killed (SIGKILL; the kubelet restarts it).
//!
//! It prints the decisions that differ from the reference and why, the forwarding counters and
//! the requests each replica decided; it asserts that on 3 replicas no honest request is
//! refused that the reference let through, that every attack kind is detected, that the
//! replicas really forwarded, and that no honest request is refused while the replicas change
//! (`ORDO_SCALEOUT_STRICT=0` allows up to 2 % instead, the bound the test kept before the
//! member views were versioned; docs/scale-out.md, "On a real node").
//!
//! Ignored by default like `e2e_node.rs` (root and `tests/cluster/build-node.sh`); run with
//! `cargo test -p ordo-tests --test e2e_scaleout -- --ignored --nocapture`.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::runtime::RunningEnforcer;
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_tests::cluster::TestCluster;
use ordo_tests::e2e::{
    Diagnostics, bank_deployment, bank_service, install_chart, is_ready, or_seen, pod_admin,
    pod_pids_named, real_node_cluster, wait_for, wait_ready_pods,
};
use ordo_tests::helm::Helm;
use ordo_tests::sim::bank::{Directory, RunningBank, TOKEN_SECRET};
use ordo_tests::sim::driver::{self, JourneyOutcome};
use ordo_tests::sim::evaluate::{admin_get, enforcer_yaml};
use ordo_tests::sim::journeys::{self, AttackKind, Journey, JourneyKind};

const SEED: u64 = 11;
const LEARNING: usize = 500;
const BENIGN: usize = 150;
const PER_KIND: usize = 2;
/// Honest journeys the churn phase draws from, in batches, cycling while the replicas change.
const CHURN_POOL: usize = 400;
const CHURN_BATCH: usize = 40;
const CONCURRENCY: usize = 8;
/// With `ORDO_SCALEOUT_STRICT=0`, at most this share (%) of the churn phase's requests may be
/// honest ones refused (by default none): 3x the worst run measured before the member views
/// were versioned (14 of 2,447, 0.6 %) rounded up; the runs since refused none
/// (docs/scale-out.md).
const CHURN_REFUSED_PERCENT: usize = 2;
/// `session.history.duration` and the rule's `within`: long enough that an honest journey
/// through a loaded node (debug builds on 2 shared cores) keeps its balance lookup in view;
/// also how long a replica that joined treats the sessions it owns as possibly served
/// elsewhere before.
const HISTORY: &str = "10s";
/// How long no replica's view of the members may change before the learning starts: the
/// history, the hold of the replicas' DNS discovery (twice its 2 s refresh, plus 1 s: see
/// `Router::hold`) and a second of margin.
const SETTLE: Duration = Duration::from_secs(10 + 5 + 1);
/// The learning's journey gap: a pause longer than this starts a new journey, judged by the
/// sequence model from its start. The simulator's journeys pause for milliseconds, but
/// through debug enforcers on a loaded node one request may take more than a second: a gap
/// of 1 s cut honest journeys in the middle (first runs: a transactions page refused as "the
/// first request of the session"). Each journey is a session of its own, so a long gap merges
/// nothing.
const JOURNEY_GAP: &str = "10s";
/// The shared secret of the replicas (a Secret the test creates, as a user would).
const PEER_SECRET: &str = "e2e-scaleout-replicas-shared-secret";

struct Plan {
    directory: Directory,
    learning: Vec<Journey>,
    mixed: Vec<Journey>,
    churn: Vec<Journey>,
}

fn plan() -> Plan {
    let attacks = PER_KIND * AttackKind::ALL.len();
    let directory = Directory::generate(customers());
    let learning = journeys::generate(SEED, &directory, 0, LEARNING, 0, false);
    let mixed = journeys::generate(SEED + 1, &directory, LEARNING, BENIGN, PER_KIND, true);
    let churn = journeys::generate(
        SEED + 2,
        &directory,
        LEARNING + BENIGN + attacks,
        CHURN_POOL,
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

/// Customers of the bank Pod and of the reference's bank (`Directory::generate`).
fn customers() -> usize {
    LEARNING + BENIGN + PER_KIND * AttackKind::ALL.len() + CHURN_POOL + 10
}

// ---------------------------------------------------------------------------------------------
// The reference: one enforcer in this process with the settings the ApiProtection renders.

/// The reference decides with what the ApiProtection renders for the replicas (the mode, every
/// detector's settings, the learning, the session history, the client address): otherwise a
/// decision that differs says nothing about scale-out. Not ignored: no cluster needed. The
/// ApiProtection once left `exposure` and `identityLineage` at their default (`Log`) while the
/// reference blocked with them, so the account enumerations, refused by one replica at their
/// 4th request (IdentityLineage, BOLA from the first foreign account), were refused by the
/// replicas only at their 9th–10th (Enumeration's threshold): the "mixed-phase enumeration lag"
/// of docs/scale-out.md.
#[test]
fn the_reference_decides_with_the_settings_the_protection_renders() {
    use ordo_operator::desired::render::{RenderInput, render};
    let protection: ApiProtection = serde_json::from_value(protection()).unwrap();
    let rendered = render(RenderInput {
        namespace: "bank",
        name: "bank",
        spec: &protection.spec,
        upstream_url: "http://bank.bank.svc:8080".to_owned(),
        listen_port: 8080,
        admin_port: 9090,
        rules: Vec::new(),
        openapi: None,
        report: None,
    })
    .unwrap()
    .config;
    let reference = parse_yaml(&reference_yaml("127.0.0.1:8080".parse().unwrap())).unwrap();
    assert_eq!(rendered.mode, reference.mode);
    assert_eq!(rendered.detectors, reference.detectors);
    assert_eq!(
        rendered.learning.journey_gap,
        reference.learning.journey_gap
    );
    assert_eq!(rendered.session.history, reference.session.history);
    assert_eq!(rendered.client_address, reference.client_address);
}

/// The reference's config: what `protection()` renders for the enforcers, without peers.
fn reference_yaml(upstream: SocketAddr) -> String {
    let mut text = enforcer_yaml(upstream, "Enforce");
    let gap = text
        .lines()
        .find(|l| l.trim_start().starts_with("journeyGap:"))
        .map(str::to_owned)
        .unwrap();
    text = text
        .replace(&gap, &format!("  journeyGap: {JOURNEY_GAP}"))
        .replace(
            "session:\n  identifiers:",
            &format!(
                "session:\n  history: {{ requests: 16, duration: {HISTORY} }}\n  identifiers:"
            ),
        );
    text.push_str(&format!(
        r#"rules:
  - name: balance-before-transfer
    priority: 100
    action: Block
    requires:
      operation: POST /api/v1/transfers
      after: ["GET /api/v1/accounts/{{account_id}}/balance"]
      within: {{ requests: 10, duration: {HISTORY} }}
rateLimits:
  - name: history-pages
    operation: GET /api/v1/accounts/{{account_id}}/transactions
    requests: 40
    per: 1m
    action: Block
"#
    ));
    text
}

struct Reference {
    bank: RunningBank,
    enforcer: RunningEnforcer,
    mixed: Vec<JourneyOutcome>,
    incidents: HashMap<IpAddr, Vec<serde_json::Value>>,
}

async fn reference(plan: Arc<Plan>) -> Reference {
    let bank = RunningBank::start(&plan.directory, None).await.unwrap();
    let config = parse_yaml(&reference_yaml(bank.addr)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let enforcer = ordo_enforcer::runtime::start(config, None, analyzer as _)
        .await
        .unwrap();
    driver::run(enforcer.proxy_addr, &plan.learning, CONCURRENCY)
        .await
        .unwrap();
    let admin = enforcer.admin_addr;
    wait_for(
        "the reference's model to be mature with every detector active",
        Duration::from_secs(60),
        || async move { model_active(&admin_get(admin, "/v1/model").await?) },
    )
    .await
    .unwrap();
    let mixed = driver::run(enforcer.proxy_addr, &plan.mixed, CONCURRENCY)
        .await
        .unwrap();
    let incidents = by_client(&admin_get(admin, "/v1/incidents").await.unwrap());
    Reference {
        bank,
        enforcer,
        mixed,
        incidents,
    }
}

/// `Ok(Some(()))` when the `/v1/model` answer says mature with every detector active.
fn model_active(model: &serde_json::Value) -> anyhow::Result<Option<()>> {
    let analyzer = &model["analyzer"];
    let active = analyzer["mature"] == true
        && analyzer["detectors"]
            .as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["active"] == true));
    if active {
        return Ok(Some(()));
    }
    anyhow::bail!("analyzer {analyzer}")
}

fn by_client(incidents: &serde_json::Value) -> HashMap<IpAddr, Vec<serde_json::Value>> {
    let mut out: HashMap<IpAddr, Vec<serde_json::Value>> = HashMap::new();
    for incident in incidents.as_array().cloned().unwrap_or_default() {
        if let Some(client) = incident["client"].as_str().and_then(|c| c.parse().ok()) {
            out.entry(client).or_default().push(incident);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The cluster.

const IMAGES: [&str; 3] = ["ordo-enforcer", "ordo-operator", "ordo-sample-bank"];

/// The cluster with the real node made the only schedulable node (as in `e2e_node.rs`: the
/// operator deploys enforcers without tolerations).
async fn node_cluster() -> TestCluster {
    real_node_cluster(&IMAGES).await.unwrap()
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "stringData": { "key": value },
    }))
    .unwrap()
}

/// Two front proxies (the sample image's `--front` mode) over the enforcer Pods, found by the
/// headless Service the operator makes for the peers, behind Service `front` (port 80).
fn front_objects(version: &str, namespace: &str, proxy_port: u16) -> (Deployment, Service) {
    let backends = format!("bank-enforcer-peers.{namespace}.svc.cluster.local:{proxy_port}");
    let deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "front", "labels": { "app": "front" } },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "front" } },
            "template": {
                "metadata": { "labels": { "app": "front" } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": { "runAsNonRoot": true },
                    "containers": [{
                        "name": "front",
                        "image": format!("ghcr.io/ordo-dev/ordo-sample-bank:{version}"),
                        "imagePullPolicy": "Never",
                        "args": ["--front", backends, "--listen", "0.0.0.0:8080"],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 2 },
                    }],
                },
            },
        },
    }))
    .unwrap();
    let service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "front" },
        "spec": {
            "selector": { "app": "front" },
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
        },
    }))
    .unwrap();
    (deployment, service)
}

/// Takeover of Service `bank` in Enforce with the reference's settings, 3 replicas that
/// share sessions (`scaleOut`).
fn protection() -> serde_json::Value {
    let block = serde_json::json!({ "action": "Block" });
    serde_json::json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": { "name": "bank" },
        "spec": {
            "target": { "service": "bank", "port": "http" },
            "mode": "Enforce",
            "routing": "Takeover",
            "session": {
                "identifiers": [
                    { "jwtClaim": { "header": "Authorization", "claim": "sub" } },
                    { "clientIp": {} },
                ],
                "jwtVerification": {
                    "secretRef": { "name": "bank-jwt", "key": "key" },
                    "algorithms": ["HS256"],
                    "onInvalid": "FallThrough",
                },
                "history": { "requests": 16, "duration": HISTORY },
            },
            "clientAddress": { "source": "XForwardedFor", "trustedHops": 1 },
            "learning": { "journeyGap": JOURNEY_GAP },
            "detectors": {
                "shadowEndpoint": block,
                "requestShape": block,
                "unlikelySequence": block,
                "volume": block,
                "enumeration": block,
                "credentialStuffing": block,
                "exposure": block,
                "identityLineage": block,
            },
            "enforcer": {
                "replicas": 3,
                "scaleOut": { "secretRef": { "name": "bank-peers", "key": "key" } },
            },
            "rateLimits": [{
                "operation": "GET /api/v1/accounts/{account_id}/transactions",
                "requests": 40,
                "per": "1m",
                "action": "Block",
            }],
        },
    })
}

fn sequence_rule() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "SequenceRule",
        "metadata": { "name": "balance-before-transfer" },
        "spec": {
            "protectionRef": { "name": "bank" },
            "priority": 100,
            "action": "Block",
            "requires": {
                "operation": "POST /api/v1/transfers",
                "after": ["GET /api/v1/accounts/{account_id}/balance"],
                "within": { "requests": 10, "duration": HISTORY },
            },
        },
    })
}

/// Waits until exactly `count` Pods of `selector` exist, all Running and Ready; returns them.
/// On a timeout the panic message says where the scaling stopped (see [`scaling_facts`]).
async fn wait_pods(pods: &Api<Pod>, selector: &str, count: usize, timeout: Duration) -> Vec<Pod> {
    match wait_ready_pods(pods, selector, count, timeout).await {
        Ok(ready) => ready,
        Err(err) => panic!("{err:#}\n{}", scaling_facts(pods).await),
    }
}

/// Where a change of `spec.enforcer.replicas` stopped, in a few lines a truncated CI log still
/// shows: the ApiProtection's generation against the one its status observed, the enforcer
/// Deployment's replicas, and every operator Pod's phase, restarts and last termination.
async fn scaling_facts(pods: &Api<Pod>) -> String {
    let namespace = pods.namespace().unwrap_or_default().to_owned();
    let client = pods.clone().into_client();
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
    let mut facts = Vec::new();
    match protections.get("bank").await {
        Ok(p) => {
            let status = p.status.unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            facts.push(format!(
                "ApiProtection bank: generation {:?}, observed {:?}, replicas {:?}, Ready {:?}",
                p.metadata.generation,
                status.observed_generation,
                p.spec.enforcer.replicas,
                ready.map(|c| (&c.status, &c.reason, &c.message)),
            ));
        }
        Err(err) => facts.push(format!("ApiProtection bank: {err}")),
    }
    match deployments.get("bank-enforcer").await {
        Ok(d) => facts.push(format!(
            "Deployment bank-enforcer: spec.replicas {:?}, status {:?}",
            d.spec.and_then(|s| s.replicas),
            d.status
                .map(|s| (s.replicas, s.ready_replicas, s.observed_generation)),
        )),
        Err(err) => facts.push(format!("Deployment bank-enforcer: {err}")),
    }
    // Deployment scaled but its ReplicaSet not: the controller manager did not act.
    let sets: Api<ReplicaSet> = Api::namespaced(pods.clone().into_client(), &namespace);
    match sets
        .list(&ListParams::default().labels("ordo.dev/protection=bank"))
        .await
    {
        Ok(list) => {
            for set in list {
                facts.push(format!(
                    "ReplicaSet {}: spec.replicas {:?}, status.replicas {}",
                    set.metadata.name.unwrap_or_default(),
                    set.spec.and_then(|s| s.replicas),
                    set.status.map_or(0, |s| s.replicas),
                ));
            }
        }
        Err(err) => facts.push(format!("ReplicaSets: {err}")),
    }
    let operators = ListParams::default().labels("app.kubernetes.io/component=operator");
    match pods.list(&operators).await {
        Ok(list) => {
            for pod in list {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let status = pod.status.unwrap_or_default();
                let containers = status.container_statuses.unwrap_or_default();
                let restarts: i32 = containers.iter().map(|c| c.restart_count).sum();
                let last = containers
                    .iter()
                    .filter_map(|c| c.last_state.as_ref()?.terminated.as_ref())
                    .map(|t| format!("{:?} exit {}", t.reason, t.exit_code))
                    .collect::<Vec<_>>();
                facts.push(format!(
                    "operator Pod {name}: {:?}, restarts {restarts}, last terminated {last:?}",
                    status.phase
                ));
            }
        }
        Err(err) => facts.push(format!("operator Pods: {err}")),
    }
    facts.join("\n")
}

/// The sum of every series of `metric` in a Prometheus text, by its `result` label (or "").
fn metric_by_result(text: &str, metric: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let result = rest
            .split_once("result=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map_or("", |(r, _)| r);
        *out.entry(result.to_owned()).or_insert(0.0) += value;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Comparing runs.

/// Requests whose decision (refused or not) differs from the reference, with why.
fn differences(
    journeys: &[Journey],
    one: &[JourneyOutcome],
    scaled: &[JourneyOutcome],
) -> Vec<String> {
    let mut out = Vec::new();
    for ((j, x), y) in journeys.iter().zip(one).zip(scaled) {
        let mut failed_before = false;
        for (i, (sx, sy)) in x.steps.iter().zip(&y.steps).enumerate() {
            if sx.blocked != sy.blocked {
                let why = match (j.kind, sy.blocked) {
                    (JourneyKind::Attack(_), false) => {
                        "attack request let through (detected later in the session, or not here)"
                    }
                    (JourneyKind::Attack(_), true) => {
                        "attack request refused earlier than on one replica"
                    }
                    (JourneyKind::Benign, true) if failed_before => {
                        "honest request refused after an earlier request of its journey failed (5xx) during the change"
                    }
                    (JourneyKind::Benign, true) => "HONEST REQUEST REFUSED",
                    (JourneyKind::Benign, false) => {
                        "honest request that one replica refused let through"
                    }
                };
                out.push(format!(
                    "{:?} {} step {} {} {}: one replica {}, scaled {}: {why}",
                    j.kind,
                    j.client,
                    i + 1,
                    j.steps[i].method,
                    j.steps[i].path_and_query,
                    sx.status,
                    sy.status
                ));
            }
            if sy.status >= 500 {
                failed_before = true;
            }
        }
    }
    out
}

/// Per attack kind: sessions detected (a request refused, or an incident) and finding kinds.
fn detections(
    journeys: &[Journey],
    outcomes: &[JourneyOutcome],
    incidents: &HashMap<IpAddr, Vec<serde_json::Value>>,
) -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for (j, o) in journeys.iter().zip(outcomes) {
        let JourneyKind::Attack(kind) = j.kind else {
            continue;
        };
        let found = incidents
            .get(&IpAddr::V4(j.client))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let entry = out.entry(kind.to_string()).or_default();
        if o.blocked() > 0 || !found.is_empty() {
            entry.0 += 1;
        }
        for i in found {
            for k in i["kinds"].as_array().into_iter().flatten() {
                entry.1.insert(k.as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

/// Honest requests refused; with `after_failure`, also those after a 5xx of the journey;
/// with `with_body`, each with its problem body (what fired: kind, incident, explanation),
/// which differs from run to run and so is left out where refusals are compared.
fn benign_refused(
    journeys: &[Journey],
    outcomes: &[JourneyOutcome],
    after_failure: bool,
    with_body: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (j, o) in journeys.iter().zip(outcomes) {
        if j.kind != JourneyKind::Benign {
            continue;
        }
        let mut failed_before = false;
        for (i, s) in o.steps.iter().enumerate() {
            if s.blocked && (after_failure || !failed_before) {
                let body = s.refusal.as_deref().filter(|_| with_body).unwrap_or("");
                out.push(format!(
                    "{} step {} {} {}: {} {body}",
                    j.client,
                    i + 1,
                    j.steps[i].method,
                    j.steps[i].path_and_query,
                    s.status,
                ));
            }
            failed_before |= s.status >= 500;
        }
    }
    out
}

/// The churn phase's honest traffic: batches of the churn pool, in turn (cycling), one after
/// the other without a pause, until stopped; returns the batches it ran (by index) and what
/// each got.
struct Churn {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(usize, Vec<JourneyOutcome>)>>,
}

impl Churn {
    fn start(target: SocketAddr, pool: Arc<Vec<Journey>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let batches = pool.len().div_ceil(CHURN_BATCH);
            let mut ran = Vec::new();
            let mut next = 0;
            while !stopping.load(Ordering::Relaxed) {
                let b = next % batches;
                let end = ((b + 1) * CHURN_BATCH).min(pool.len());
                let outcomes = driver::run(target, &pool[b * CHURN_BATCH..end], CONCURRENCY)
                    .await
                    .unwrap_or_else(|e| panic!("churn traffic through the fronts: {e:#}"));
                ran.push((b, outcomes));
                next += 1;
            }
            ran
        });
        Self { stop, task }
    }

    fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(self) -> Vec<(usize, Vec<JourneyOutcome>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Waits until every replica of `pods` routes by 3 members and none changed its view or saw
/// another replica's view differ for `quiet`; returns each replica's view changes so far.
async fn wait_settled(pods: &[Pod], quiet: Duration) -> String {
    let started = Instant::now();
    let mut last: Option<(Vec<[f64; 3]>, Instant)> = None;
    loop {
        let mut now = Vec::new();
        for pod in pods {
            let metrics = pod_admin(pod, "/metrics").await.unwrap();
            let text = metrics.as_str().unwrap_or_default();
            let sum = |name: &str| metric_by_result(text, name).values().sum::<f64>();
            now.push([
                sum("ordo_peers"),
                sum("ordo_peer_view_changes_total"),
                sum("ordo_peer_view_disagreements_total"),
            ]);
        }
        let since = match &last {
            Some((seen, at)) if *seen == now => *at,
            _ => Instant::now(),
        };
        if now.iter().all(|m| m[0] == 3.0) && since.elapsed() >= quiet {
            let changes: Vec<f64> = now.iter().map(|m| m[1]).collect();
            return format!("view changes per replica {changes:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the replicas' views did not settle in 180 s: members, view changes, disagreements per replica {now:?}, unchanged for {:.0?}",
            since.elapsed()
        );
        last = Some((now, since));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sessions the replicas started over with their history marked lost (possibly served
/// elsewhere, `ordo_sessions_moved_total`), summed over `pods`.
async fn sessions_started_over(pods: &[Pod]) -> f64 {
    let mut moved = 0.0;
    for pod in pods {
        let metrics = pod_admin(pod, "/metrics").await.unwrap();
        moved += metric_by_result(
            metrics.as_str().unwrap_or_default(),
            "ordo_sessions_moved_total",
        )
        .values()
        .sum::<f64>();
    }
    moved
}

async fn patch_replicas(protections: &Api<ApiProtection>, replicas: i32) {
    protections
        .patch(
            "bank",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "enforcer": { "replicas": replicas } } })),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and tests/cluster/build-node.sh; run with --ignored"]
async fn three_replicas_behind_round_robin_front_pods_decide_as_one() {
    let started = Instant::now();
    let version = env!("CARGO_PKG_VERSION");
    let plan = Arc::new(plan());
    // The reference runs while the cluster starts (it needs none of it).
    let reference_run = tokio::spawn(reference(Arc::clone(&plan)));
    let cluster = node_cluster().await;
    println!("cluster with the real node: {:.0?}", started.elapsed());
    let namespace = cluster.namespace("scaleout").await.unwrap();
    let mut diagnostics = Diagnostics::new(&cluster, &namespace);
    diagnostics.node_logs();
    let client = cluster.client().await.unwrap();
    let helm = Helm::for_cluster(&cluster).unwrap();
    install_chart(&helm, &namespace, 1).await.unwrap();
    println!("helm install --wait: {:.0?}", started.elapsed());
    let client_pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let operators = ListParams::default().labels("app.kubernetes.io/component=operator");
    for pod in client_pods.list(&operators).await.unwrap() {
        diagnostics.log("operator", &cluster.pod_log(&pod, "operator"));
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for (name, value) in [("bank-jwt", TOKEN_SECRET), ("bank-peers", PEER_SECRET)] {
        secrets
            .create(&PostParams::default(), &secret(name, value))
            .await
            .unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let deployment = bank_deployment("bank", customers()).unwrap();
    let service = bank_service("bank").unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    wait_pods(&pods, "app=bank", 1, Duration::from_secs(120)).await;

    let rules: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &kube::api::ApiResource::erase::<SequenceRule>(&()),
    );
    rules
        .create(
            &PostParams::default(),
            &serde_json::from_value(sequence_rule()).unwrap(),
        )
        .await
        .unwrap();
    let protections_dyn: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &kube::api::ApiResource::erase::<ApiProtection>(&()),
    );
    protections_dyn
        .create(
            &PostParams::default(),
            &serde_json::from_value(protection()).unwrap(),
        )
        .await
        .unwrap();
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &namespace);
    let enforcer_selector = "ordo.dev/protection=bank";
    // The rendered config must carry the rule and the peers before traffic starts: a Pod
    // started from an earlier rendering is replaced by the rollout.
    wait_for(
        "the rendered enforcer config to hold the rule and the peers",
        Duration::from_secs(120),
        || {
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), &namespace);
            async move {
                let maps = api.list(&ListParams::default()).await?;
                let config = maps
                    .items
                    .iter()
                    .filter(|m| {
                        m.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("bank-enforcer"))
                    })
                    .flat_map(|m| m.data.iter().flat_map(|d| d.values()))
                    .find(|text| text.contains("peers:"))
                    .cloned();
                match config {
                    Some(text) if text.contains("balance-before-transfer") => Ok(Some(())),
                    other => anyhow::bail!("rendered: {other:?}"),
                }
            }
        },
    )
    .await
    .unwrap();
    let enforcers = wait_for(
        "3 Ready enforcer Pods of the config with the rule",
        Duration::from_secs(240),
        || {
            let pods = pods.clone();
            async move {
                let all = pods
                    .list(&ListParams::default().labels(enforcer_selector))
                    .await?;
                let ready: Vec<Pod> = all.items.iter().filter(|p| is_ready(p)).cloned().collect();
                if ready.len() == 3 && all.items.len() == 3 {
                    // Every replica has the rule (a replica of an earlier rendering would
                    // refuse nothing).
                    for pod in &ready {
                        let rules = pod_admin(pod, "/v1/rules").await?;
                        anyhow::ensure!(
                            rules.to_string().contains("balance-before-transfer"),
                            "{:?} has no rule yet: {rules}",
                            pod.metadata.name
                        );
                    }
                    return Ok(Some(ready));
                }
                anyhow::bail!("{} Pods, {} Ready", all.items.len(), ready.len())
            }
        },
    )
    .await
    .unwrap();
    let proxy_port = enforcers[0].spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .find(|p| !matches!(p.name.as_deref(), Some("admin" | "peers")))
        .map(|p| u16::try_from(p.container_port).unwrap())
        .expect("the enforcer container's proxy port");
    for (i, pod) in enforcers.iter().enumerate() {
        diagnostics.log(
            &format!("enforcer Pod {i}"),
            &cluster.pod_log(pod, "enforcer"),
        );
    }

    let (deployment, service) = front_objects(version, &namespace, proxy_port);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let front = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    wait_pods(&pods, "app=front", 2, Duration::from_secs(120)).await;
    let front: SocketAddr = format!("{}:80", front.spec.unwrap().cluster_ip.unwrap())
        .parse()
        .unwrap();
    // Until kube-proxy programs the front's ClusterIP and the fronts have resolved the
    // enforcers, a request may fail: wait for a login through them.
    let customer = &plan.directory.customers[customers() - 1];
    wait_for(
        "a login through the front Service",
        Duration::from_secs(90),
        || async move {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let body =
                serde_json::json!({ "username": customer.username, "password": customer.password });
            let request = http::Request::post(format!("http://{front}/api/v1/login"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))?;
            let response =
                tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
            anyhow::ensure!(response.status() == 200, "{}", response.status());
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    // Until the replicas are settled, a session may have been served by another replica
    // before (a replica that just started, a view that just changed): each starts such a
    // session over with its history marked lost, and its lineage learns nothing from it. The
    // reference learns from every session, so learning must start once no replica's view
    // changed for the history plus the hold (`proxy/route`): the first runs with a fixed 11 s
    // wait started over 1,076 sessions of the learning, and the replicas' thin lineage
    // evidence then let account enumerations through that the reference refused at once.
    let views = wait_settled(&enforcers, SETTLE).await;
    println!(
        "3 enforcers and 2 fronts serving, views settled ({views}): {:.0?}",
        started.elapsed()
    );
    let moved_learning = sessions_started_over(&enforcers).await;

    // --- 1. Learning.
    let phase = Instant::now();
    driver::run(front, &plan.learning, CONCURRENCY)
        .await
        .unwrap();
    let learning_requests: usize = plan.learning.iter().map(|j| j.steps.len()).sum();
    println!(
        "learning: {learning_requests} requests in {:.1?}",
        phase.elapsed()
    );
    // The reference learned every learning request itself; a replica learned those of the
    // sessions it owns and the rest from the operator's merges (every 2 s here). Mature is not
    // enough: a replica that reported first after the learning holds a merge without the
    // other replicas' last deltas, and a learned origin or threshold just under its evidence
    // bar then stays silent where the reference decides. Wait for every replica to hold the
    // whole learning: the same request count everywhere (a replica's own deltas are always in
    // its model, so equal counts mean every replica adopted a merge with all of them).
    let merged = wait_for(
        "every replica's model mature with every detector active and the whole learning merged",
        Duration::from_secs(120),
        || {
            let enforcers = enforcers.clone();
            async move {
                let mut learned = Vec::new();
                for pod in &enforcers {
                    let model = pod_admin(pod, "/v1/model").await?;
                    model_active(&model)?;
                    learned.push(model["analyzer"]["requests"].as_u64().unwrap_or(0));
                }
                // Not every request sent is learned (a failed login, a 4xx): 3,755 of 3,780
                // in the first run; the floor only says that merges happened at all.
                let floor = learning_requests as u64 * 9 / 10;
                let whole = learned.iter().all(|&n| n == learned[0] && n >= floor);
                or_seen(whole.then_some(learned[0]), || {
                    format!("learned requests per replica {learned:?} (learning sent {learning_requests})")
                })
            }
        },
    )
    .await
    .unwrap();
    println!(
        "every replica holds the whole learning ({merged} requests learned): {:.1?} after the learning started",
        phase.elapsed()
    );

    let moved_before = sessions_started_over(&enforcers).await;
    println!(
        "sessions started over during the learning: {}",
        moved_before - moved_learning
    );

    // --- 2. Mixed traffic on 3 replicas.
    let phase = Instant::now();
    let mixed = driver::run(front, &plan.mixed, CONCURRENCY).await.unwrap();
    let mixed_seconds = phase.elapsed().as_secs_f64();
    let mut incidents: HashMap<IpAddr, Vec<serde_json::Value>> = HashMap::new();
    let mut forward_mixed: BTreeMap<String, f64> = BTreeMap::new();
    let mut decided = Vec::new();
    for pod in &enforcers {
        for (client, list) in by_client(&pod_admin(pod, "/v1/incidents").await.unwrap()) {
            incidents.entry(client).or_default().extend(list);
        }
        let metrics = pod_admin(pod, "/metrics").await.unwrap();
        let metrics = metrics.as_str().unwrap_or_default();
        for (result, n) in metric_by_result(metrics, "ordo_forward_total") {
            *forward_mixed.entry(result).or_insert(0.0) += n;
        }
        decided.push(
            metric_by_result(metrics, "ordo_requests_total")
                .values()
                .sum::<f64>(),
        );
    }
    let reference = reference_run.await.unwrap();
    let moved_mixed = sessions_started_over(&enforcers).await - moved_before;
    println!(
        "mixed phase: {mixed_seconds:.1} s; sessions started over as possibly served elsewhere: {moved_mixed} ({moved_before} before it)"
    );

    // --- 3. Honest traffic while the replicas change: 3 → 5 → 2, then one is killed.
    let phase = Instant::now();
    let pool = Arc::new(plan.churn.clone());
    let churn = Churn::start(front, Arc::clone(&pool));
    tokio::time::sleep(Duration::from_secs(3)).await;
    patch_replicas(&protections, 5).await;
    wait_pods(&pods, enforcer_selector, 5, Duration::from_secs(180)).await;
    println!(
        "scaled to 5 under traffic: {:.1?} into the phase",
        phase.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(churn.is_running(), "the changes must happen during traffic");
    patch_replicas(&protections, 2).await;
    let two = wait_pods(&pods, enforcer_selector, 2, Duration::from_secs(180)).await;
    println!(
        "scaled to 2 under traffic: {:.1?} into the phase",
        phase.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(churn.is_running(), "the changes must happen during traffic");
    let victim = &two[1];
    let victim_name = victim.metadata.name.clone().unwrap();
    let killed = pod_pids_named(victim.metadata.uid.as_deref().unwrap(), "ordo-enforcer").unwrap();
    assert_eq!(
        killed.len(),
        1,
        "the enforcer process of {victim_name}: {killed:?}"
    );
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "the killed enforcer to be restarted and Ready",
        Duration::from_secs(120),
        || {
            let (pods, victim_name) = (pods.clone(), victim_name.clone());
            async move {
                let pod = pods.get(&victim_name).await?;
                let restarted = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.restart_count >= 1 && c.ready);
                Ok(restarted.then_some(()))
            }
        },
    )
    .await
    .unwrap();
    println!(
        "{victim_name} killed and restarted: {:.1?} into the phase",
        phase.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(churn.is_running(), "the changes must happen during traffic");
    let ran = churn.stop().await;
    let churn_seconds = phase.elapsed().as_secs_f64();
    let mut forward_end: BTreeMap<String, f64> = BTreeMap::new();
    let mut moved = 0.0;
    for pod in &wait_pods(&pods, enforcer_selector, 2, Duration::from_secs(60)).await {
        let metrics = pod_admin(pod, "/metrics").await.unwrap();
        let metrics = metrics.as_str().unwrap_or_default();
        for (result, n) in metric_by_result(metrics, "ordo_forward_total") {
            *forward_end.entry(result).or_insert(0.0) += n;
        }
        moved += metric_by_result(metrics, "ordo_sessions_moved_total")
            .values()
            .sum::<f64>();
    }

    // The reference runs the same batches in the same order.
    let mut churn_journeys = Vec::new();
    let mut churn_scaled = Vec::new();
    let mut churn_one = Vec::new();
    for (b, outcomes) in ran {
        let end = ((b + 1) * CHURN_BATCH).min(pool.len());
        let batch = &pool[b * CHURN_BATCH..end];
        churn_one.extend(
            driver::run(reference.enforcer.proxy_addr, batch, CONCURRENCY)
                .await
                .unwrap(),
        );
        churn_journeys.extend_from_slice(batch);
        churn_scaled.extend(outcomes);
    }
    reference.enforcer.shutdown().await;
    reference.bank.shutdown();

    // --- The report.
    let count = |js: &[Journey]| js.iter().map(|j| j.steps.len()).sum::<usize>();
    let mixed_diff = differences(&plan.mixed, &reference.mixed, &mixed);
    let churn_diff = differences(&churn_journeys, &churn_one, &churn_scaled);
    println!(
        "decisions that differ from one replica: {} of {} requests with 3 replicas, {} of {} \
         while the replicas changed 3 → 5 → 2 and one was killed",
        mixed_diff.len(),
        count(&plan.mixed),
        churn_diff.len(),
        count(&churn_journeys)
    );
    for d in mixed_diff.iter().chain(&churn_diff) {
        println!("  - {d}");
    }
    let failed = churn_scaled
        .iter()
        .flat_map(|o| &o.steps)
        .filter(|s| s.status >= 500)
        .count();
    println!(
        "churn: {} requests in {churn_seconds:.1} s, {failed} answered 5xx (in flight on a \
         replica that stopped or was killed); sessions moved (on the 2 left): {moved}",
        count(&churn_journeys)
    );
    println!("forwarding after the mixed phase (3 replicas): {forward_mixed:?}");
    println!("forwarding at the end (the 2 replicas left): {forward_end:?}");
    let total: f64 = decided.iter().sum();
    println!(
        "requests decided per replica (learning and mixed): {decided:?} ({:?} %)",
        decided
            .iter()
            .map(|n| (100.0 * n / total.max(1.0)).round())
            .collect::<Vec<_>>()
    );
    let (d1, d3) = (
        detections(&plan.mixed, &reference.mixed, &reference.incidents),
        detections(&plan.mixed, &mixed, &incidents),
    );
    for (kind, (n, kinds)) in &d3 {
        println!(
            "{kind}: detected {n} of {PER_KIND} (one replica: {:?}); findings {kinds:?}",
            d1.get(kind)
        );
    }
    println!("whole test: {:.0?}", started.elapsed());

    // Honest requests refused while the replicas changed (a request after one of its
    // journey's requests failed with a 5xx is listed above but not counted: the step a rule
    // needs may not have happened). None may be; ORDO_SCALEOUT_STRICT=0 allows the old bound
    // (docs/scale-out.md, "On a real node": 0-14 of ~2,000 before the member views were
    // versioned, none in every run since).
    let refused = benign_refused(&churn_journeys, &churn_scaled, false, true);
    println!(
        "honest requests refused while the replicas changed: {} of {}",
        refused.len(),
        count(&churn_journeys)
    );
    let strict = std::env::var("ORDO_SCALEOUT_STRICT").map_or(true, |v| v != "0");
    let bound = if strict {
        0
    } else {
        count(&churn_journeys) * CHURN_REFUSED_PERCENT / 100
    };
    assert!(
        refused.len() <= bound,
        "{} honest requests refused while the replicas changed (at most {bound} allowed, \
         ORDO_SCALEOUT_STRICT={strict}): {refused:#?}",
        refused.len()
    );
    // In the mixed phase (3 replicas, no change): none that one replica did not refuse too
    // (the learned detectors may flag an honest session anyway, wherever it is decided).
    let refused_one: BTreeSet<String> = benign_refused(&plan.mixed, &reference.mixed, true, false)
        .into_iter()
        .collect();
    let refused: Vec<String> = benign_refused(&plan.mixed, &mixed, true, false)
        .into_iter()
        .filter(|r| !refused_one.contains(r))
        .collect();
    assert!(
        refused.is_empty(),
        "honest requests refused on 3 replicas that one replica let through: {refused:#?}"
    );
    // Every attack kind is detected.
    for kind in AttackKind::ALL {
        let n = d3.get(&kind.to_string()).map_or(0, |(n, _)| *n);
        assert!(n >= 1, "{kind}: no session detected on 3 replicas: {d3:?}");
    }
    // The replicas shared the sessions: requests were forwarded to their owner, and every
    // replica decided some.
    assert!(
        forward_mixed.get("forwarded").copied().unwrap_or(0.0) > 0.0,
        "{forward_mixed:?}"
    );
    assert!(decided.iter().all(|n| *n > 0.0), "{decided:?}");
    diagnostics.passed();
}
