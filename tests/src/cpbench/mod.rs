//! The control plane at scale: one `ordo-operator` against the local control plane of
//! [`crate::cluster`] (kwok runs the enforcer Pods), measured in three phases; the method and
//! the figures are in docs/benchmarks.md, "The control plane at scale".
//!
//! 1. **Ready**: `count` ApiProtections (each with its own target Service and SequenceRule)
//!    are created at once; the time from the first create until every one is `Ready=True`.
//!    The time until every enforcer Deployment is available is printed next to it, to tell
//!    the operator's share from kube-controller-manager's.
//! 2. **Rule change**: every SequenceRule is changed (a rule names one ApiProtection, so
//!    a change that concerns all protections is one patch per rule); the time from the first
//!    patch until every rendered enforcer ConfigMap carries the change.
//! 3. **Reports**: `enforcers` simulated enforcers ([`enforcers`]) report every `interval`;
//!    the operator's CPU (from `/proc/PID/stat`, over every round after the first) and its
//!    resident memory at the end of each round.
//!
//! Progress is followed with watches (not polls), so a phase's time is when the last object
//! was seen in its final state. Everything runs on loopback; the run is bounded by the
//! phases' timeouts and stops every process it started (the cluster's supervisor and
//! [`crate::e2e::Proc`]).

pub mod enforcers;
pub mod objects;
pub mod procstat;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt as _};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use serde::Serialize;

use crate::cluster::{Options, TestCluster, binaries, workspace_root};
use crate::e2e::Proc;
use enforcers::SimulatedEnforcer;

/// What to run; see `ordo-controlplane-bench --help`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub count: usize,
    pub namespaces: usize,
    pub enforcers: usize,
    pub report_interval: Duration,
    pub report_rounds: u32,
    pub idle: Duration,
    pub create_concurrency: usize,
    pub ready_timeout: Duration,
    pub rule_timeout: Duration,
    pub operator_bin: PathBuf,
    pub out: PathBuf,
    pub api_qps: Option<u32>,
    pub operator_args: Vec<String>,
}

/// The figures of one run (also written as JSON).
#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub date: String,
    pub count: usize,
    pub namespaces: usize,
    pub load_before: String,
    pub create_seconds: f64,
    pub ready_seconds: Option<f64>,
    pub ready_reached: usize,
    pub enforcers_available_seconds: Option<f64>,
    /// Until the operator had created every enforcer Deployment: its own share of Ready.
    pub enforcers_created_seconds: Option<f64>,
    pub rule_patch_seconds: f64,
    pub rule_rendered_seconds: Option<f64>,
    pub rule_rendered_reached: usize,
    pub idle_cores: f64,
    pub enforcers: usize,
    pub report_interval_seconds: u64,
    pub report_rounds: u32,
    pub reports_sent: u64,
    pub reports_failed: u64,
    pub report_p50_ms: f64,
    pub report_p99_ms: f64,
    pub report_cores: f64,
    pub rss_mib_per_round: Vec<f64>,
    pub operator_metrics: Vec<String>,
}

/// Runs the benchmark and returns its figures; see the module docs.
pub async fn run(settings: &Settings) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("creating {}", settings.out.display()))?;
    let mut figures = Figures {
        date: utc_now(),
        count: settings.count,
        namespaces: settings.namespaces.clamp(1, settings.count.max(1)),
        load_before: load_average(),
        enforcers: settings.enforcers,
        report_interval_seconds: settings.report_interval.as_secs(),
        report_rounds: settings.report_rounds,
        ..Figures::default()
    };
    say(&format!(
        "control plane benchmark: {} ApiProtections in {} namespaces, {} enforcers; load average {}",
        figures.count, figures.namespaces, figures.enforcers, figures.load_before
    ));
    let options = Options {
        api_qps: settings.api_qps,
        ..Options::default()
    };
    let cluster = TestCluster::start_with_options(&binaries::default_bin_dir(), &options)
        .await
        .context("starting the local control plane")?;
    cluster.install_crds(&workspace_root().join("crds")).await?;
    let client = cluster.client().await?;
    say(&format!("control plane up: {}", cluster.dir().display()));

    let placements: Vec<(String, String)> = (0..settings.count)
        .map(|i| objects::placement(i, figures.namespaces))
        .collect();
    create_prerequisites(&client, settings, &placements, figures.namespaces).await?;

    let pki = OperatorPki::generate(&settings.out)?;
    let operator = start_operator(&cluster, settings, &pki)?;
    wait_operator_ready(&operator, settings).await?;
    say(&format!("operator running (pid {})", operator.proc.id()));

    measure_ready(&client, settings, &placements, &operator, &mut figures).await?;
    measure_rule_change(&client, settings, &placements, &operator, &mut figures).await?;
    figures.idle_cores = cores_over(operator.proc.id(), settings.idle).await?;
    say(&format!(
        "operator idle with {} protections: {:.3} cores over {:?}",
        settings.count, figures.idle_cores, settings.idle
    ));
    measure_reports(
        &client,
        settings,
        &placements,
        &operator,
        &pki,
        &mut figures,
    )
    .await?;
    figures.operator_metrics = operator_metrics(operator.health_port)
        .await
        .unwrap_or_else(|err| vec![format!("(metrics unavailable: {err:#})")]);
    operator.check_alive()?;
    drop(operator);
    drop(cluster);
    let json = serde_json::to_string_pretty(&figures)?;
    let path = settings.out.join("controlplane.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(figures)
}

fn say(line: &str) {
    eprintln!("[cpbench {}] {line}", utc_time());
}

// ---------------------------------------------------------------------------------------
// Objects.
// ---------------------------------------------------------------------------------------

/// Namespaces, target Services and SequenceRules: what exists before the protections.
async fn create_prerequisites(
    client: &Client,
    settings: &Settings,
    placements: &[(String, String)],
    namespaces: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let namespace_api: Api<Namespace> = Api::all(client.clone());
    for index in 0..namespaces {
        let namespace = objects::namespace(&objects::namespace_name(index))?;
        namespace_api
            .create(&PostParams::default(), &namespace)
            .await
            .context("creating a namespace")?;
    }
    for_each_concurrently(placements, settings.create_concurrency, |(ns, name)| {
        let client = client.clone();
        async move {
            let service = objects::target_service(&name)?;
            Api::<Service>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &service)
                .await
                .with_context(|| format!("creating Service {ns}/{name}"))?;
            let rule = objects::rule(&name)?;
            Api::<SequenceRule>::namespaced(client, &ns)
                .create(&PostParams::default(), &rule)
                .await
                .with_context(|| format!("creating SequenceRule {ns}/{name}"))?;
            Ok(())
        }
    })
    .await?;
    say(&format!(
        "{} Services and SequenceRules created in {:.1} s",
        placements.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs `f` on every item with at most `concurrency` at once; fails with the first error.
async fn for_each_concurrently<F, Fut>(
    items: &[(String, String)],
    concurrency: usize,
    f: F,
) -> anyhow::Result<()>
where
    F: Fn((String, String)) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(items.iter().cloned().map(f))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

// ---------------------------------------------------------------------------------------
// The operator.
// ---------------------------------------------------------------------------------------

struct Operator {
    proc: Proc,
    https_port: u16,
    health_port: u16,
}

impl Operator {
    /// Fails with the end of its log when the operator has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        if procstat::is_running(self.proc.id()) {
            Ok(())
        } else {
            bail!("the operator exited; its log:\n{}", self.proc.log_tail())
        }
    }
}

/// A CA and the operator's serving certificate for 127.0.0.1.
struct OperatorPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl OperatorPki {
    fn generate(out: &Path) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = out.join("pki");
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ordo-cpbench-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ordo-operator");
        let cert = params.signed_by(&key, &issuer)?;
        let pki = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the operator for every namespace with its defaults (concurrency, resync, status
/// refresh), reports every `report_interval`, its log in `out/operator.log`.
fn start_operator(
    cluster: &TestCluster,
    settings: &Settings,
    pki: &OperatorPki,
) -> anyhow::Result<Operator> {
    let https_port = free_port()?;
    let health_port = free_port()?;
    let proc = Proc::spawn(
        Command::new(&settings.operator_bin)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            // ORDO_OPERATOR_LOG, for example `info,kube_runtime=debug` to see why each
            // reconcile ran.
            .env(
                "RUST_LOG",
                std::env::var("ORDO_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["--https-addr", &format!("127.0.0.1:{https_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .args(["--report-url", &format!("https://127.0.0.1:{https_port}")])
            .arg("--report-ca-file")
            .arg(&pki.ca)
            .args([
                "--report-interval-seconds",
                &settings.report_interval.as_secs().to_string(),
            ])
            .args(["--lease-namespace", "default"])
            .args(["--enforcer-image", "ordo-enforcer:cpbench"])
            .args(&settings.operator_args),
        &settings.out.join("operator.log"),
    )
    .with_context(|| format!("starting {}", settings.operator_bin.display()))?;
    Ok(Operator {
        proc,
        https_port,
        health_port,
    })
}

/// Waits until the operator leads and serves (`/readyz` answers 200).
async fn wait_operator_ready(operator: &Operator, settings: &Settings) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        operator.check_alive()?;
        if http_get(operator.health_port, "/readyz")
            .await
            .is_ok_and(|(status, _)| status == 200)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the operator did not become ready within 60 s; its log ({}):\n{}",
                settings.out.join("operator.log").display(),
                operator.proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET path` on `127.0.0.1:port` (plain HTTP/1.0): status and body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream
            .take(16 * 1024 * 1024)
            .read_to_end(&mut response)
            .await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange).await??;
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .context("not an HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((status, body))
}

/// The operator's own metrics that explain where its time went.
async fn operator_metrics(port: u16) -> anyhow::Result<Vec<String>> {
    let (_, body) = http_get(port, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && [
                    "ordo_operator_reconciles_total",
                    "ordo_operator_reconcile_seconds_sum",
                    "ordo_operator_reconcile_seconds_count",
                    "ordo_operator_reconcile_errors_total",
                    "ordo_operator_reports_total",
                    "ordo_operator_status_refreshes_total",
                    "ordo_operator_merge_bytes_sum",
                ]
                .iter()
                .any(|prefix| line.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect())
}

// ---------------------------------------------------------------------------------------
// Phases.
// ---------------------------------------------------------------------------------------

/// Phase 1: creates the ApiProtections and waits until each is Ready.
async fn measure_ready(
    client: &Client,
    settings: &Settings,
    placements: &[(String, String)],
    operator: &Operator,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + settings.ready_timeout;
    let ready = tokio::spawn(track_until_all(
        Api::<ApiProtection>::all(client.clone()),
        settings.count,
        deadline,
        objects::is_ready,
    ));
    let owned = |d: &Deployment| {
        d.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("ordo-operator")
    };
    let created = tokio::spawn(track_until_all(
        Api::<Deployment>::all(client.clone()),
        settings.count,
        deadline,
        owned,
    ));
    let available = tokio::spawn(track_until_all(
        Api::<Deployment>::all(client.clone()),
        settings.count,
        deadline,
        move |d: &Deployment| {
            owned(d)
                && d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    >= 1
        },
    ));
    for_each_concurrently(placements, settings.create_concurrency, |(ns, name)| {
        let client = client.clone();
        async move {
            Api::<ApiProtection>::namespaced(client, &ns)
                .create(&PostParams::default(), &objects::protection(&name)?)
                .await
                .with_context(|| format!("creating ApiProtection {ns}/{name}"))?;
            Ok(())
        }
    })
    .await?;
    figures.create_seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "{} ApiProtections created in {:.1} s; waiting until all are Ready (at most {:?})",
        settings.count, figures.create_seconds, settings.ready_timeout
    ));
    let ready = ready.await??;
    let available = available.await??;
    let created = created.await??;
    operator.check_alive()?;
    figures.ready_reached = ready.reached;
    figures.ready_seconds = ready.all_at.map(|t| (t - started).as_secs_f64());
    figures.enforcers_available_seconds = available.all_at.map(|t| (t - started).as_secs_f64());
    figures.enforcers_created_seconds = created.all_at.map(|t| (t - started).as_secs_f64());
    say(&format!(
        "Ready: {}/{} after {}; every enforcer Deployment created after {}, available after {}",
        ready.reached,
        settings.count,
        seconds_or_missed(figures.ready_seconds),
        seconds_or_missed(figures.enforcers_created_seconds),
        seconds_or_missed(figures.enforcers_available_seconds)
    ));
    Ok(())
}

/// Phase 2: changes every SequenceRule and waits until every rendered config carries it.
async fn measure_rule_change(
    client: &Client,
    settings: &Settings,
    placements: &[(String, String)],
    operator: &Operator,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let rendered = tokio::spawn(track_until_all(
        Api::<ConfigMap>::all(client.clone()),
        settings.count,
        started + settings.rule_timeout,
        objects::carries_changed_rule,
    ));
    let change = objects::rule_change();
    for_each_concurrently(placements, settings.create_concurrency, |(ns, name)| {
        let client = client.clone();
        let change = change.clone();
        async move {
            let rule = objects::rule_name(&name);
            Api::<SequenceRule>::namespaced(client, &ns)
                .patch(&rule, &PatchParams::default(), &Patch::Merge(&change))
                .await
                .with_context(|| format!("changing SequenceRule {ns}/{rule}"))?;
            Ok(())
        }
    })
    .await?;
    figures.rule_patch_seconds = started.elapsed().as_secs_f64();
    let rendered = rendered.await??;
    operator.check_alive()?;
    figures.rule_rendered_reached = rendered.reached;
    figures.rule_rendered_seconds = rendered.all_at.map(|t| (t - started).as_secs_f64());
    say(&format!(
        "rule change: {} rules patched in {:.1} s; {}/{} rendered configs carry it after {}",
        settings.count,
        figures.rule_patch_seconds,
        rendered.reached,
        settings.count,
        seconds_or_missed(figures.rule_rendered_seconds)
    ));
    Ok(())
}

/// Phase 3: the simulated enforcers report; the operator's CPU and memory meanwhile.
async fn measure_reports(
    client: &Client,
    settings: &Settings,
    placements: &[(String, String)],
    operator: &Operator,
    pki: &OperatorPki,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    if settings.enforcers == 0 || settings.report_rounds < 2 || placements.is_empty() {
        say("reports: skipped (no enforcers, or fewer than 2 rounds)");
        return Ok(());
    }
    let tokens = settings.out.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let operator_url = format!("https://127.0.0.1:{}", operator.https_port);
    let mut clients = Vec::with_capacity(settings.enforcers);
    for index in 0..settings.enforcers {
        let (namespace, protection) = placements[index % placements.len()].clone();
        let enforcer = SimulatedEnforcer::new(index, namespace, protection);
        // A protection the operator has not reconciled yet has no enforcer ServiceAccount:
        // its enforcer is left out (and counted) rather than failing the whole phase.
        let token = match enforcers::token_file(client, &enforcer, &tokens).await {
            Ok(token) => token,
            Err(err) => {
                say(&format!("enforcer {} left out: {err:#}", enforcer.replica));
                continue;
            }
        };
        let report = enforcers::report_client(
            &operator_url,
            &pki.ca,
            token,
            &enforcer,
            settings.report_interval,
        )?;
        clients.push((report, enforcer));
    }
    figures.enforcers = clients.len();
    if clients.is_empty() {
        say("reports: skipped (no protection has its enforcer ServiceAccount yet)");
        return Ok(());
    }
    let interval = settings.report_interval;
    let rounds = settings.report_rounds;
    let start = Instant::now() + Duration::from_secs(1);
    let spacing = interval / u32::try_from(clients.len()).unwrap_or(u32::MAX);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (report, enforcer))| {
            let offset = spacing * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::spawn(enforcers::run_schedule(
                report, enforcer, start, offset, interval, rounds,
            ))
        })
        .collect();
    say(&format!(
        "reports: {} enforcers, one report each every {:?}, {rounds} rounds (the first is warm-up)",
        figures.enforcers, interval
    ));
    let pid = operator.proc.id();
    let ticks_per_second = procstat::ticks_per_second();
    let mut window_start = None;
    for round in 1..=rounds {
        tokio::time::sleep_until((start + interval * round).into()).await;
        operator.check_alive()?;
        let rss = procstat::rss_kib(pid)? as f64 / 1024.0;
        figures.rss_mib_per_round.push(rss);
        let ticks = procstat::cpu_ticks(pid)?;
        match window_start {
            None => window_start = Some((Instant::now(), ticks)),
            Some((at, before)) => {
                let seconds = at.elapsed().as_secs_f64();
                figures.report_cores = (ticks - before) as f64 / ticks_per_second as f64 / seconds;
                say(&format!(
                    "round {round}: operator {:.3} cores since round 1, RSS {rss:.1} MiB",
                    figures.report_cores
                ));
            }
        }
    }
    let mut latencies = Vec::new();
    for task in tasks {
        let outcome = task.await?;
        figures.reports_sent += outcome.sent;
        figures.reports_failed += outcome.failed;
        latencies.extend(outcome.latencies);
        if let Some(error) = outcome.last_error {
            say(&format!("a report failed: {error}"));
        }
    }
    latencies.sort_unstable();
    figures.report_p50_ms = percentile_ms(&latencies, 0.50);
    figures.report_p99_ms = percentile_ms(&latencies, 0.99);
    Ok(())
}

/// CPU cores the process used over `window` from now.
async fn cores_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    if window.is_zero() {
        return Ok(0.0);
    }
    let before = procstat::cpu_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let ticks = procstat::cpu_ticks(pid)? - before;
    Ok(ticks as f64 / procstat::ticks_per_second() as f64 / started.elapsed().as_secs_f64())
}

fn percentile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// How far a watch got: how many objects matched at the end, and when all `expected` did.
struct Tracked {
    reached: usize,
    all_at: Option<Instant>,
}

/// Watches every object of `api` until `expected` of them satisfy `done` at once, or until
/// `deadline`.
async fn track_until_all<K>(
    api: Api<K>,
    expected: usize,
    deadline: Instant,
    done: impl Fn(&K) -> bool + Send + 'static,
) -> anyhow::Result<Tracked>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut matching: HashSet<String> = HashSet::new();
    let stream = watcher(api, watcher::Config::default().any_semantic());
    let mut stream = std::pin::pin!(stream);
    let key = |object: &K| {
        format!(
            "{}/{}",
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default()
        )
    };
    loop {
        let event = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Err(_) | Ok(None) => {
                return Ok(Tracked {
                    reached: matching.len(),
                    all_at: None,
                });
            }
            Ok(Some(Err(err))) => {
                tracing::debug!(error = %err, "watch error; the watcher retries");
                continue;
            }
            Ok(Some(Ok(event))) => event,
        };
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                if done(&object) {
                    matching.insert(key(&object));
                } else {
                    matching.remove(&key(&object));
                }
            }
            watcher::Event::Delete(object) => {
                matching.remove(&key(&object));
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        if matching.len() >= expected {
            return Ok(Tracked {
                reached: matching.len(),
                all_at: Some(Instant::now()),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Output.
// ---------------------------------------------------------------------------------------

fn seconds_or_missed(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "— (timed out)".to_owned(), |s| format!("{s:.1} s"))
}

/// The figures as a table, each next to its target (docs/benchmarks.md, "Performance targets").
pub fn summary(figures: &Figures) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nControl plane at scale: {} ApiProtections in {} namespaces, one operator ({}; load average before: {})",
        figures.count, figures.namespaces, figures.date, figures.load_before
    );
    let ready_ok = figures.ready_seconds.is_some_and(|s| s <= 60.0);
    let _ = writeln!(
        text,
        "  all Ready after creation          {:>12}   target ≤ 60 s    {}   ({} created in {:.1} s; enforcer Deployments all created after {}, all available after {})",
        seconds_or_missed(figures.ready_seconds),
        verdict(ready_ok),
        figures.count,
        figures.create_seconds,
        seconds_or_missed(figures.enforcers_created_seconds),
        seconds_or_missed(figures.enforcers_available_seconds)
    );
    let rule_ok = figures.rule_rendered_seconds.is_some_and(|s| s <= 30.0);
    let _ = writeln!(
        text,
        "  rule change in every config       {:>12}   target ≤ 30 s    {}   ({} rules patched in {:.1} s)",
        seconds_or_missed(figures.rule_rendered_seconds),
        verdict(rule_ok),
        figures.count,
        figures.rule_patch_seconds
    );
    let max_rss = figures
        .rss_mib_per_round
        .iter()
        .copied()
        .fold(0.0, f64::max);
    let _ = writeln!(
        text,
        "  CPU, {} enforcers every {} s     {:>9.3} cores   target ≤ 0.25    {}   ({} reports ok, {} failed; p50 {:.0} ms, p99 {:.0} ms)",
        figures.enforcers,
        figures.report_interval_seconds,
        figures.report_cores,
        verdict(figures.report_cores <= 0.25),
        figures.reports_sent,
        figures.reports_failed,
        figures.report_p50_ms,
        figures.report_p99_ms
    );
    let rss: Vec<String> = figures
        .rss_mib_per_round
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect();
    let _ = writeln!(
        text,
        "  operator RSS per round (MiB)      {:>12}   bounded          [{}]",
        format!("{max_rss:.0} max"),
        rss.join(", ")
    );
    let _ = writeln!(
        text,
        "  operator idle, {} protections   {:>9.3} cores",
        figures.count, figures.idle_cores
    );
    let _ = writeln!(text, "  operator metrics:");
    for line in &figures.operator_metrics {
        let _ = writeln!(text, "    {line}");
    }
    text
}

fn utc_now() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn utc_time() -> String {
    command_output("date", &["-u", "+%H:%M:%S"])
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.5), 51.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn the_summary_says_which_targets_were_missed() {
        let figures = Figures {
            count: 1000,
            ready_seconds: Some(42.0),
            rule_rendered_seconds: None,
            report_cores: 0.1,
            ..Figures::default()
        };
        let text = summary(&figures);
        assert!(text.contains("42.0 s"), "{text}");
        assert!(text.contains("timed out"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Ready") && l.contains(" met ")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("rule change") && l.contains("MISSED")),
            "{text}"
        );
    }
}
