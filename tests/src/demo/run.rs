//! The demo, step by step. Every process it starts is stopped when it returns, fails or is
//! interrupted: the control plane by its own supervisor, the operator and the enforcer by a
//! second [`Supervisor`] over the demo's directory, the bank and the config sync with the
//! runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use ordo_enforcer::config::Mode;
use ordo_enforcer::detect::ModelView;
use ordo_operator::crd::{ApiProtection, ApiProtectionStatus, SequenceRule};
use ordo_operator::desired::names::{
    ORIGINAL_SELECTOR_ANNOTATION, TAKEN_OVER_BY_ANNOTATION, enforcer_name,
};

use super::enforcer::{self, ChangeFollower, ConfigSync, Expected, LocalAddrs, LocalFiles};
use super::examples::{self, FIELD_MANAGER};
use super::http::{self, free_loopback_addr};
use super::progress::{Step, learning_bar, run_command};
use super::show;
use super::tls;
use crate::cluster::supervisor::Supervisor;
use crate::cluster::{K8S_VERSION, TestCluster, binaries, workspace_root};
use crate::e2e::Diagnostics;
use crate::sim::bank::{Directory, RunningBank};
use crate::sim::driver::{self, JourneyOutcome};
use crate::sim::journeys::{self, AttackKind, JourneyKind};

/// Namespace the demo's bank and protection live in.
pub const NAMESPACE: &str = "bank";
/// Name of the example ApiProtection and of the Service it protects.
const PROTECTION: &str = "bank-api";
/// Customers of the simulated bank.
const CUSTOMERS: usize = 6000;
/// Customers of the learning phase are `0..LEARNING_CUSTOMERS` (one visit each, at most); the
/// honest customers of the attack phase and the attackers come after them, so that they
/// arrive as new visitors, not as sessions that are still open from the learning phase.
const LEARNING_CUSTOMERS: usize = 4050;
/// First customer of the honest traffic during the attacks.
const HONEST_FIRST: usize = 4200;
/// First customer of the attackers.
const ATTACKERS_FIRST: usize = 5000;
/// Benign journeys per learning round (then the model is checked).
const LEARNING_ROUND: usize = 150;
/// Benign journeys before the demo checks maturity at all: enough that even the rarer
/// operations (a profile update is one visit in fourteen) pass `minOperationRequests` and
/// their request shape is enforced too.
const MIN_LEARNING_JOURNEYS: usize = 1500;
/// Journeys running at once.
const CONCURRENCY: usize = 12;

/// What one attack journey achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttackResult {
    pub kind: AttackKind,
    pub requests: usize,
    pub blocked: usize,
    /// Harmful steps sent, and those that reached the bank.
    pub harmful: usize,
    pub harm_reached: usize,
    /// Finding kinds of the enforcer's incidents for the attacker's client address.
    pub detected_as: Vec<String>,
}

/// The facts behind what the demo printed, for its end-to-end test.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// The operator re-pointed Service bank-api at the enforcers.
    pub taken_over: bool,
    /// Every enabled detector was active when learning stopped.
    pub detectors_active: bool,
    /// The operator's status said the model is mature.
    pub status_mature: bool,
    /// Benign requests of the learning phase, and how many were blocked (Monitor: none).
    pub learning_requests: usize,
    pub learning_blocked: usize,
    /// The enforcer reloaded the Enforce config.
    pub enforce_reloaded: bool,
    pub attacks: Vec<AttackResult>,
    /// Honest journeys during the attacks: requests, blocked requests.
    pub honest_requests: usize,
    pub honest_blocked: usize,
    /// The status after the attacks were reported.
    pub status: ApiProtectionStatus,
    /// `status.matches` of each SequenceRule, by name, at the same time.
    pub rule_matches: BTreeMap<String, i64>,
    /// The finalizer restored the Service's original selector after the deletion.
    pub service_restored: bool,
}

/// Command-line options of `ordo-demo`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Leave everything running at the end, until Ctrl-C.
    pub keep: bool,
    /// Build the release binaries and the control plane first.
    pub build: bool,
    /// Use `target/debug` instead of `target/release`.
    pub debug: bool,
    /// Seed of the simulated traffic.
    pub seed: u64,
    /// Longest learning phase before the demo goes on with what is mature.
    pub max_learning: Duration,
    /// Directory of the control-plane binaries (default: the build.sh cache).
    pub k8s_bin_dir: Option<PathBuf>,
}

fn target_dir(debug: bool) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    base.join(if debug { "debug" } else { "release" })
}

fn build(options: &Options) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "-p",
        "ordo-operator",
        "-p",
        "ordo-enforcer",
        "--bins",
    ]);
    if !options.debug {
        command.arg("--release");
    }
    run_command("Building ordo-operator and ordo-enforcer", command)?;
    let mut command = Command::new("bash");
    command
        .current_dir(workspace_root())
        .arg("tests/cluster/build.sh");
    run_command(
        &format!("Building Kubernetes {K8S_VERSION} (cached after the first run)"),
        command,
    )
}

/// The operator process and where it serves.
pub struct OperatorProcess {
    /// Health, readiness and metrics.
    pub health: std::net::SocketAddr,
}

/// Starts `ordo-operator` under `supervisor` (component `ordo-operator`) with short report
/// and status intervals, without leader election; `extra` arguments go last (for example
/// `--watch-namespace`).
pub fn start_operator(
    supervisor: &mut Supervisor,
    bin: &Path,
    kubeconfig: &Path,
    pki: &tls::ServingCert,
    extra: &[String],
) -> anyhow::Result<OperatorProcess> {
    let health = free_loopback_addr()?;
    let https = free_loopback_addr()?;
    let mut args: Vec<String> = vec![
        "--health-addr".into(),
        health.to_string(),
        "--https-addr".into(),
        https.to_string(),
        "--tls-cert".into(),
        pki.cert.display().to_string(),
        "--tls-key".into(),
        pki.key.display().to_string(),
        "--report-url".into(),
        format!("https://{https}"),
        "--report-ca-file".into(),
        pki.ca.display().to_string(),
        // Short intervals so the demo shows results within seconds (defaults: 30 s and 10 s).
        "--report-interval-seconds".into(),
        "2".into(),
        "--status-refresh-seconds".into(),
        "2".into(),
        // One local replica: nothing to elect.
        "--leader-election".into(),
        "false".into(),
        "--log-format".into(),
        "text".into(),
    ];
    args.extend_from_slice(extra);
    supervisor.spawn(
        "ordo-operator",
        bin,
        &args,
        &[
            ("KUBECONFIG", kubeconfig),
            (
                "RUST_LOG",
                Path::new("info,kube=warn,hyper=warn,rustls=warn"),
            ),
        ],
    )?;
    Ok(OperatorProcess { health })
}

async fn create_namespace(client: &kube::Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .context("creating namespace bank")?;
    Ok(())
}

/// The bank's Service as its team would have it: a selector for the app's pods and one named
/// port. Its selector is what Takeover moves to `bank-api-origin`.
pub async fn create_bank_service(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<Service> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = Service {
        metadata: ObjectMeta {
            name: Some(PROTECTION.into()),
            labels: Some(BTreeMap::from([("app".to_owned(), "bank-api".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_owned(), "bank-api".to_owned())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .create(&PostParams::default(), &service)
        .await
        .context("creating Service bank-api")
}

fn selector_text(service: &Service) -> String {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

async fn model_view(admin: &str) -> anyhow::Result<ModelView> {
    let (status, body) = http::get(&format!("http://{admin}/v1/model"), None).await?;
    if status != 200 {
        bail!("GET /v1/model answered {status}: {body}");
    }
    // `/v1/model` wraps the analyzer's view with the proxy's operation inventory.
    let mut value: serde_json::Value = serde_json::from_str(&body).context("parsing /v1/model")?;
    serde_json::from_value(value["analyzer"].take()).context("parsing /v1/model's analyzer view")
}

/// How far learning is, from 0 to 1000, and what is still awaited.
fn learning_progress(view: &ModelView, min_requests: u64, min_sessions: u64) -> (u64, String) {
    let enabled: Vec<_> = view.detectors.iter().filter(|d| d.enabled).collect();
    let active = enabled.iter().filter(|d| d.active).count();
    let gate = |have: u64, need: u64| {
        if need == 0 {
            1.0
        } else {
            (have as f64 / need as f64).min(1.0)
        }
    };
    let detectors = if enabled.is_empty() {
        1.0
    } else {
        active as f64 / enabled.len() as f64
    };
    let fraction =
        (gate(view.requests, min_requests) + gate(view.sessions, min_sessions) + 2.0 * detectors)
            / 4.0;
    let waiting = enabled
        .iter()
        .find(|d| !d.active)
        .map(|d| {
            format!(
                " · {}: {}",
                d.name,
                d.waiting_for.clone().unwrap_or_else(|| "waiting".into())
            )
        })
        .unwrap_or_default();
    let message = format!(
        "{} requests · {} sessions · {active}/{} detectors active{waiting}",
        view.requests,
        view.sessions,
        enabled.len()
    );
    ((fraction * 1000.0) as u64, message)
}

fn all_active(view: &ModelView) -> bool {
    view.mature
        && view
            .detectors
            .iter()
            .filter(|d| d.enabled)
            .all(|d| d.active)
}

async fn protection_status(api: &Api<ApiProtection>) -> anyhow::Result<ApiProtectionStatus> {
    Ok(api.get(PROTECTION).await?.status.unwrap_or_default())
}

/// Polls until `check` accepts the status or `timeout` passes; returns the last status and
/// whether it was accepted.
async fn wait_status(
    api: &Api<ApiProtection>,
    timeout: Duration,
    check: impl Fn(&ApiProtectionStatus) -> bool,
) -> anyhow::Result<(ApiProtectionStatus, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = protection_status(api).await?;
        if check(&status) {
            return Ok((status, true));
        }
        if Instant::now() > deadline {
            return Ok((status, false));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The finding kinds of the enforcer's incidents, by client address (`GET /v1/incidents`).
async fn incident_kinds_by_client(admin: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let (status, body) = http::get(&format!("http://{admin}/v1/incidents"), None).await?;
    if status != 200 {
        bail!("GET /v1/incidents answered {status}: {body}");
    }
    let incidents: Vec<serde_json::Value> =
        serde_json::from_str(&body).context("parsing /v1/incidents")?;
    let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for incident in &incidents {
        let Some(client) = incident.get("client").and_then(|c| c.as_str()) else {
            continue;
        };
        let kinds = by_client.entry(client.to_owned()).or_default();
        for kind in incident
            .get("kinds")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
        {
            if !kinds.iter().any(|known| known == kind) {
                kinds.push(kind.to_owned());
            }
        }
    }
    Ok(by_client)
}

/// Runs the demo. Returns when it is over (with `keep`, after Ctrl-C).
pub async fn run(options: Options) -> anyhow::Result<DemoReport> {
    let mut report = DemoReport::default();
    let started = Instant::now();
    if options.build {
        build(&options)?;
    }
    let bins = target_dir(options.debug);
    let operator_bin = bins.join("ordo-operator");
    let enforcer_bin = bins.join("ordo-enforcer");
    for bin in [&operator_bin, &enforcer_bin] {
        if !bin.exists() {
            bail!(
                "{} is missing: run scripts/demo (it builds it) or cargo build --release -p ordo-operator -p ordo-enforcer",
                bin.display()
            );
        }
    }

    // The control plane.
    let step = Step::start(&format!(
        "Starting a local Kubernetes {K8S_VERSION} control plane"
    ));
    step.detail("etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok");
    let bin_dir = options
        .k8s_bin_dir
        .clone()
        .unwrap_or_else(binaries::default_bin_dir);
    let cluster = match TestCluster::start_with(&bin_dir).await {
        Ok(cluster) => cluster,
        Err(err) => {
            step.fail();
            return Err(err);
        }
    };
    step.done(&format!("API server at {}", cluster.server()));
    let step = Step::start("Installing the Ordo CRDs");
    cluster.install_crds(&workspace_root().join("crds")).await?;
    step.done("apiprotections.ordo.dev, sequencerules.ordo.dev Established");
    let client = cluster.client().await?;
    create_namespace(&client).await?;

    // The demo's own processes live under a supervisor like the control plane's: they stop
    // when the demo ends, however it ends.
    let dir = tempfile::Builder::new()
        .prefix("ordo-demo-")
        .tempdir()
        .context("creating the demo directory")?
        .keep();
    let mut supervisor = Supervisor::start(&dir)?;
    let mut diagnostics = Diagnostics::new(&cluster, NAMESPACE);
    diagnostics.log("the operator", &supervisor.log_path("ordo-operator"));
    diagnostics.log("the enforcer", &supervisor.log_path("ordo-enforcer"));
    let pki = tls::generate(&dir.join("pki"))?;

    let step = Step::start("Starting the operator (local process)");
    let operator = start_operator(
        &mut supervisor,
        &operator_bin,
        cluster.kubeconfig_path(),
        &pki,
        &[],
    )?;
    if let Err(err) = http::wait_ok(
        &format!("http://{}/readyz", operator.health),
        Duration::from_secs(60),
        || supervisor.check_running(),
    )
    .await
    {
        step.fail();
        return Err(err);
    }
    step.done(&format!(
        "health and metrics on http://{}, webhook and reports over TLS",
        operator.health
    ));

    let step = Step::start("Starting the sample banking API");
    let directory = Directory::generate(CUSTOMERS);
    let bank = RunningBank::start(&directory, None)
        .await
        .context("starting the bank")?;
    let service = create_bank_service(&client, NAMESPACE).await?;
    step.done(&format!(
        "http://{} behind Service bank/bank-api (selector {})",
        bank.addr,
        selector_text(&service)
    ));

    let step = Step::start("Applying examples/bank-api/");
    let manifests = examples::load_dir(&workspace_root().join("examples/bank-api"))?;
    let problems = examples::validate(&manifests);
    if !problems.is_empty() {
        step.fail();
        bail!("the examples do not validate:\n{}", problems.join("\n"));
    }
    let stored = examples::apply(&client, NAMESPACE, &manifests).await?;
    step.done(
        &stored
            .iter()
            .map(examples::Resource::describe)
            .collect::<Vec<_>>()
            .join(", "),
    );

    // The enforcer, standing in for the pod the operator's Deployment describes.
    let step = Step::start("Starting an enforcer with the config the operator rendered");
    step.detail("waiting for ConfigMap bank-api-enforcer");
    let config_map = enforcer_name(PROTECTION);
    let data =
        enforcer::wait_for_config(&client, NAMESPACE, &config_map, Duration::from_secs(60)).await?;
    let token_file = dir.join("report-token");
    enforcer::write_report_token(&client, NAMESPACE, &enforcer_name(PROTECTION), &token_file)
        .await?;
    let addrs = LocalAddrs {
        listen: free_loopback_addr()?,
        admin: free_loopback_addr()?,
        upstream: format!("http://{}", bank.addr),
    };
    let config_path = dir.join("enforcer.yaml");
    enforcer::write_atomically(
        &config_path,
        &enforcer::local_config(&data, &addrs, &dir, &token_file)?,
    )?;
    supervisor.spawn(
        "ordo-enforcer",
        &enforcer_bin,
        &[
            "--config".to_owned(),
            config_path.display().to_string(),
            "--log-format".to_owned(),
            "text".to_owned(),
        ],
        &[],
    )?;
    let sync = ConfigSync::start(
        client.clone(),
        NAMESPACE.to_owned(),
        config_map.clone(),
        data,
        addrs.clone(),
        LocalFiles {
            dir: dir.clone(),
            token: token_file.clone(),
            config: config_path.clone(),
        },
    );
    if let Err(err) = http::wait_ok(
        &format!("http://{}/readyz", addrs.admin),
        Duration::from_secs(60),
        || supervisor.check_running(),
    )
    .await
    {
        step.fail();
        return Err(err);
    }
    step.done(&format!(
        "proxy on http://{}, admin on http://{}, reporting to the operator",
        addrs.listen, addrs.admin
    ));

    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let step = Step::start("Waiting for the operator to take over Service bank-api");
    step.detail("the enforcer Deployment must become Available (kwok plays its pods)");
    let deadline = Instant::now() + Duration::from_secs(90);
    let taken = loop {
        let service = services.get(PROTECTION).await?;
        let annotations = service.metadata.annotations.clone().unwrap_or_default();
        if annotations.contains_key(TAKEN_OVER_BY_ANNOTATION) {
            break Some((service, annotations));
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.taken_over = taken.is_some();
    match taken {
        Some((service, annotations)) => step.done(&format!(
            "selector now {}, original {} kept in Service bank-api-origin",
            selector_text(&service),
            annotations
                .get(ORIGINAL_SELECTOR_ANNOTATION)
                .cloned()
                .unwrap_or_default()
        )),
        None => {
            step.fail();
            println!(
                "  (the Service was not re-pointed within 90 s; see the Ready condition below — the demo goes on)"
            );
        }
    }

    // Learning.
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), NAMESPACE);
    let protection = protections.get(PROTECTION).await?;
    let min_requests = u64::try_from(protection.spec.learning.min_requests).unwrap_or(0);
    let min_sessions = u64::try_from(protection.spec.learning.min_sessions).unwrap_or(0);
    println!();
    println!(
        "Learning: benign customers use the bank through the enforcer (mode Monitor) until the model is mature."
    );
    let bar = learning_bar(1000, "learning");
    let learning_started = Instant::now();
    let (mut benign_requests, mut benign_blocked) = (0usize, 0usize);
    let mut round = 0u64;
    let (view, message) = loop {
        let journeys = journeys::generate(
            options.seed.wrapping_add(round),
            &directory,
            (round as usize) * LEARNING_ROUND,
            LEARNING_ROUND,
            0,
            true,
        );
        round += 1;
        let outcomes = driver::run(addrs.listen, &journeys, CONCURRENCY).await?;
        benign_requests += outcomes.iter().map(|o| o.steps.len()).sum::<usize>();
        benign_blocked += outcomes.iter().map(JourneyOutcome::blocked).sum::<usize>();
        let view = model_view(&addrs.admin.to_string()).await?;
        let (position, message) = learning_progress(&view, min_requests, min_sessions);
        bar.set_position(position);
        bar.set_message(message.clone());
        let enough =
            (round as usize) * LEARNING_ROUND >= MIN_LEARNING_JOURNEYS && all_active(&view);
        let exhausted = (round as usize + 1) * LEARNING_ROUND > LEARNING_CUSTOMERS;
        if enough || exhausted || learning_started.elapsed() > options.max_learning {
            break (view, message);
        }
    };
    bar.finish_and_clear();
    report.detectors_active = all_active(&view);
    report.learning_requests = benign_requests;
    report.learning_blocked = benign_blocked;
    if all_active(&view) {
        println!(
            "✔ Model mature in {:.0}s: {message}",
            learning_started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "! Learning stopped after {:.0}s with: {message}",
            learning_started.elapsed().as_secs_f64()
        );
    }
    println!(
        "  {benign_requests} benign requests sent, {benign_blocked} blocked (Monitor never blocks)"
    );

    let step = Step::start("Waiting for the operator's status to show the mature model");
    let (_, mature) = wait_status(&protections, Duration::from_secs(60), |s| {
        s.model.as_ref().is_some_and(|m| m.mature)
    })
    .await?;
    report.status_mature = mature;
    if mature {
        step.done("status.model.mature = true (ModelMature condition True)");
    } else {
        step.fail();
        println!("  (the status did not report a mature model within 60 s; the demo goes on)");
    }

    // Enforce.
    let step = Step::start("Switching ApiProtection bank-api to mode Enforce");
    let follower = ChangeFollower::new(
        &client,
        NAMESPACE,
        &config_map,
        &sync,
        &addrs.admin.to_string(),
    );
    let generation_before = follower.generation();
    let (_, running_rules) = enforcer::running_state(&addrs.admin.to_string()).await?;
    let expected = Expected {
        mode: Mode::Enforce,
        rules: running_rules.into_iter().map(|name| (name, true)).collect(),
    };
    let since = tokio::time::Instant::now();
    protections
        .patch(
            PROTECTION,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&serde_json::json!({ "spec": { "mode": "Enforce" } })),
        )
        .await
        .context("patching the mode")?;
    step.detail("the operator re-renders the ConfigMap; the enforcer reloads it");
    let arrival = follower
        .follow(&expected, since, generation_before, Duration::from_secs(60))
        .await;
    if arrival.running.is_none() {
        step.fail();
        bail!("the Enforce mode did not reach the enforcer within 60 s: {arrival}");
    }
    report.enforce_reloaded = true;
    step.done(&format!(
        "ConfigMap re-rendered, enforcer reloaded without a restart ({:.1} s)",
        arrival.running.unwrap_or_default().as_secs_f64()
    ));

    // Attacks, with some honest customers in between.
    println!();
    println!(
        "Attacks (one journey each, from their own sessions and addresses), with honest customers at the same time:"
    );
    let attacks = journeys::generate(
        options.seed.wrapping_add(1_000_000),
        &directory,
        ATTACKERS_FIRST,
        0,
        1,
        false,
    );
    let honest = journeys::generate(
        options.seed.wrapping_add(2_000_000),
        &directory,
        HONEST_FIRST,
        60,
        0,
        true,
    );
    let target = addrs.listen;
    let honest_run = tokio::spawn(async move { driver::run(target, &honest, 4).await });
    let mut results = Vec::new();
    for journey in &attacks {
        let JourneyKind::Attack(kind) = journey.kind else {
            continue;
        };
        let outcome = driver::run(addrs.listen, std::slice::from_ref(journey), 1)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no outcome for the {kind} journey"))?;
        results.push((kind, outcome));
    }
    let honest_outcomes = honest_run.await.context("the honest customers' task")??;
    let detected = incident_kinds_by_client(&addrs.admin.to_string()).await?;
    println!(
        "  {:<27} {:>8} {:>8} {:>13}  detected as (the enforcer's incidents for that client)",
        "attack", "requests", "blocked", "harm reached"
    );
    let mut total_harm = 0;
    for (kind, outcome) in &results {
        let harm = outcome.harm_reached();
        total_harm += harm;
        let kinds = detected.get(&outcome.client.to_string());
        let mark = match (harm, kinds) {
            (0, _) => "✔",
            (_, Some(_)) => "◐",
            (_, None) => "✘",
        };
        println!(
            "  {mark} {:<25} {:>8} {:>8} {:>13}  {}",
            kind.name(),
            outcome.steps.len(),
            outcome.blocked(),
            format!("{harm}/{}", outcome.harmful()),
            kinds.map_or_else(|| "not detected".to_owned(), |k| k.join(", ")),
        );
        report.attacks.push(AttackResult {
            kind: *kind,
            requests: outcome.steps.len(),
            blocked: outcome.blocked(),
            harmful: outcome.harmful(),
            harm_reached: harm,
            detected_as: kinds.cloned().unwrap_or_default(),
        });
    }
    println!(
        "  ✔ stopped before any harm · ◐ detected, partly blocked or only logged (the detector's action is Log, or it needed a few requests to be sure) · ✘ not detected"
    );
    report.honest_requests = honest_outcomes.iter().map(|o| o.steps.len()).sum();
    report.honest_blocked = honest_outcomes.iter().map(JourneyOutcome::blocked).sum();
    let honest_flagged = honest_outcomes
        .iter()
        .filter(|o| detected.contains_key(&o.client.to_string()))
        .count();
    println!(
        "  honest customers meanwhile: {} journeys, {} requests, {} blocked, {honest_flagged} with a logged finding",
        honest_outcomes.len(),
        honest_outcomes.iter().map(|o| o.steps.len()).sum::<usize>(),
        honest_outcomes
            .iter()
            .map(JourneyOutcome::blocked)
            .sum::<usize>()
    );
    let blocked_total: usize = results.iter().map(|(_, o)| o.blocked()).sum::<usize>()
        + honest_outcomes
            .iter()
            .map(JourneyOutcome::blocked)
            .sum::<usize>();
    println!(
        "  bank: {} transfers executed in total; {total_harm} harmful attack requests reached it",
        bank.transfers()
    );

    let step = Step::start("Waiting for the enforcer's report to reach the ApiProtection's status");
    step.detail(&format!("status.totals.blocked must reach {blocked_total}"));
    let (status, found) = wait_status(&protections, Duration::from_secs(60), |s| {
        !s.incidents.is_empty()
            && s.totals
                .as_ref()
                .is_some_and(|t| usize::try_from(t.blocked).unwrap_or(0) >= blocked_total)
    })
    .await?;
    if found {
        step.done(&format!(
            "{} incidents and {blocked_total} blocked requests in status",
            status.incidents.len()
        ));
    } else {
        step.fail();
        println!("  (status is behind the enforcer; showing what it has)");
    }

    report.status = status.clone();
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), NAMESPACE);
    for rule in rules.list(&ListParams::default()).await? {
        let matches = rule.status.as_ref().map_or(0, |s| s.matches);
        report
            .rule_matches
            .insert(rule.metadata.name.unwrap_or_default(), matches);
    }

    // What a user sees.
    show::heading("kubectl get apiprotections");
    show::kubectl(
        cluster.kubectl(),
        &["get", "apiprotections", "-n", NAMESPACE, "-o", "wide"],
    )?;
    show::heading("kubectl get sequencerules");
    show::kubectl(
        cluster.kubectl(),
        &["get", "sequencerules", "-n", NAMESPACE],
    )?;
    show::heading("Incidents (status.incidents)");
    show::incidents(&status.incidents, 10);
    show::heading("What the model learned (status.endpoints, topSequences, suggestedRules)");
    show::learned(&status);
    show::heading("Events");
    show::kubectl(
        cluster.kubectl(),
        &["events", "-n", NAMESPACE, "--for", "apiprotection/bank-api"],
    )?;

    println!();
    println!("Demo ran in {:.0}s.", started.elapsed().as_secs_f64());
    diagnostics.passed();
    if options.keep {
        keep_running(&cluster, &dir, &addrs, operator.health).await;
        drop(sync);
        supervisor.shutdown();
        return Ok(report);
    }

    let step = Step::start("Deleting ApiProtection bank-api");
    protections
        .delete(PROTECTION, &DeleteParams::foreground())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        let service = services.get(PROTECTION).await?;
        if !service
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(TAKEN_OVER_BY_ANNOTATION))
        {
            break Some(service);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.service_restored = restored.is_some();
    match restored {
        Some(service) => step.done(&format!(
            "the finalizer restored Service bank-api's selector ({})",
            selector_text(&service)
        )),
        None => step.fail(),
    }
    let step = Step::start("Stopping everything");
    drop(sync);
    bank.shutdown();
    supervisor.shutdown();
    cluster.stop();
    step.done("enforcer, operator, bank and control plane stopped, temporary files removed");
    Ok(report)
}

async fn keep_running(
    cluster: &TestCluster,
    dir: &Path,
    addrs: &LocalAddrs,
    operator_health: std::net::SocketAddr,
) {
    println!();
    println!("Everything keeps running (--keep):");
    println!(
        "  export KUBECONFIG={}",
        cluster.kubeconfig_path().display()
    );
    println!(
        "  kubectl get apip,seqrule -n {NAMESPACE}      (kubectl: {})",
        cluster.bin("kubectl").display()
    );
    println!(
        "  the bank through the enforcer:  curl http://{}/api/v1/accounts",
        addrs.listen
    );
    println!(
        "  enforcer admin:                 curl http://{}/v1/incidents",
        addrs.admin
    );
    println!("  operator metrics:               curl http://{operator_health}/metrics");
    println!(
        "  logs: {}/logs/ (operator, enforcer), {}/logs/ (control plane)",
        dir.display(),
        cluster.dir().display()
    );
    println!(
        "Stop everything with Ctrl-C (or kill -TERM {}).",
        std::process::id()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    println!("Stopping everything…");
}
