//! What the end-to-end suites share: the control plane with Ordo's CRDs and a namespace per
//! test, the workspace binaries built once, a control plane with the real node (the chart
//! installed on it, the sample bank's Deployment and Service, the processes of a Pod, an
//! enforcer Pod's admin API and request count), polling with a deadline (Ready Pods among
//! others), plain HTTP requests, YAML documents, and a [`Diagnostics`] guard that prints why a
//! test failed.
//!
//! A failing end-to-end test must explain itself: "deadline has elapsed" says nothing about
//! whether the operator, the enforcer or the control plane stopped the change. When a test
//! body ends without calling [`Diagnostics::passed`] (a panic, or an early `?` return), the
//! guard prints the last lines of every log it was given (operator, enforcer) and of the
//! control plane, each ApiProtection's generation and status, and each enforcer ConfigMap's
//! rendered hash and mode, so that the failure shows where a change stopped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde::Deserialize;

use crate::cluster::{
    self, NODE_NAME, NodeOptions, Options, REAL_NODE_NAME, TestCluster, binaries, node,
    workspace_root,
};
use crate::helm::{self, Helm};

/// The shared control plane of this test binary with the CRDs from `crds/` installed, a
/// client, and a fresh namespace named after `prefix`.
pub async fn setup(prefix: &str) -> anyhow::Result<(&'static TestCluster, Client, String)> {
    let cluster = cluster::shared().await?;
    cluster.install_crds(&workspace_root().join("crds")).await?;
    let client = cluster.client().await?;
    let namespace = cluster.namespace(prefix).await?;
    Ok((cluster, client, namespace))
}

/// Builds the debug `ordo-operator` and `ordo-enforcer` binaries once per test binary and
/// returns the directory they are in.
///
/// The build runs without the variables Cargo sets for the test process (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...): build scripts such as ring's declare `rerun-if-env-changed`
/// on them, so inheriting the test's values would make this build and the next `cargo test`
/// rebuild those crates (and everything above them) in turn.
pub fn binaries() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| cargo_build(&["ordo-operator", "ordo-enforcer"]))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Builds the debug `ordo-sample-bank` (the simulator's bank as a server, for a Pod) once
/// per test binary, with the other binaries of ordo-tests, and returns its path.
pub fn sample_bank_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| cargo_build(&["ordo-tests"]))
        .clone()
        .map(|dir| dir.join("ordo-sample-bank"))
        .map_err(|e| anyhow!(e))
}

/// Builds the debug `kubectl-ordo` plugin once per test binary and returns its path (a
/// separate build from [`binaries`], so that the suites that do not run it do not wait for
/// it).
pub fn plugin_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| cargo_build(&["kubectl-ordo"]))
        .clone()
        .map(|dir| dir.join("kubectl-ordo"))
        .map_err(|e| anyhow!(e))
}

/// `cargo build --bins` of `packages` without the test process's Cargo variables (see
/// [`binaries`]); the directory of the binaries.
fn cargo_build(packages: &[&str]) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else {
            continue;
        };
        if TEST_PROCESS_VARIABLES.contains(&name)
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            command.env_remove(name);
        }
    }
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet"]);
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .arg("--bins")
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of {} failed: {status}",
            packages.join(", ")
        ));
    }
    Ok(target_dir().join("debug"))
}

/// Variables Cargo sets for a test process (besides `CARGO_PKG_*` and `CARGO_BIN_*`) that a
/// nested build must not inherit (see [`binaries`]).
const TEST_PROCESS_VARIABLES: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The image `name` (`ordo-operator` or `ordo-enforcer`) assembled by `scripts/images
/// assemble` from the debug binary of [`binaries`], as an OCI archive under
/// `target/e2e-images/`. Named and tagged as the release image (the chart's defaults), so the
/// chart and the operator need no overrides. Debug binaries keep the release build out of the
/// test suite; their debug sections are stripped first (`objcopy --strip-debug`), since a
/// layer of several hundred MiB only slows the import. Needs root, as `scripts/images` does.
pub fn debug_image(name: &str) -> anyhow::Result<PathBuf> {
    let binary = match name {
        "ordo-sample-bank" => sample_bank_binary()?,
        _ => binaries()?.join(name),
    };
    assemble_image(name, &binary, &target_dir().join("e2e-images"))
}

/// The image `name` assembled by `scripts/images assemble` from `binary` (its debug sections
/// stripped first) into `dir/<name>.oci.tar`, named and tagged as the release image. Needs
/// root, as `scripts/images` does.
pub fn assemble_image(name: &str, binary: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stripped = dir.join(name);
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&stripped)
        .status()
        .context("running objcopy (binutils)")?;
    if !status.success() {
        bail!(
            "objcopy --strip-debug {} failed: {status}",
            binary.display()
        );
    }
    let archive = dir.join(format!("{name}.oci.tar"));
    let output = Command::new(workspace_root().join("scripts/images"))
        .arg("assemble")
        .arg(name)
        .arg(&stripped)
        .arg(&archive)
        .env("ORDO_IMAGE_WORK", dir.join("work"))
        .env_remove("ORDO_IMAGE_REGISTRY")
        .env_remove("ORDO_IMAGE_TAG")
        .output()
        .context("running scripts/images")?;
    if !output.status.success() {
        bail!(
            "scripts/images assemble {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(archive)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `target/` of the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Polls `check` every 250 ms until it yields a value or `timeout` passes.
///
/// `check` answers `Ok(Some(value))` when the wait is over, and `Err(what it saw)` while it is
/// not (or when asking failed): the timeout's error names `what` was awaited, how many times
/// it was checked and the last thing `check` saw, so that a failure reads "waited 90.1s
/// (limit 90s, 341 checks) for ApiProtection Ready; last saw: Ready=False ServiceNotFound: ..."
/// rather than "deadline has elapsed". `Ok(None)` is "not yet" with nothing worth saying.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = None;
    let mut checks = 0u32;
    loop {
        checks += 1;
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = Some(format!("{err:#}")),
        }
        if Instant::now() > deadline {
            let seen = last.unwrap_or_else(|| "the condition never held".to_owned());
            bail!(
                "waited {:.1?} (limit {timeout:?}, {checks} checks) for {what}; last saw: {seen}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// For a [`wait_for`] check: `Some(value)` ends the wait; `None` keeps waiting and records
/// `seen()` as what the check last saw.
pub fn or_seen<T>(value: Option<T>, seen: impl FnOnce() -> String) -> anyhow::Result<Option<T>> {
    match value {
        Some(value) => Ok(Some(value)),
        None => Err(anyhow!(seen())),
    }
}

/// A control plane with a real node (`cluster::node`) that has the debug images `images`
/// imported ([`debug_image`]), made the only schedulable node ([`schedule_on_real_node`]).
pub async fn real_node_cluster(images: &[&str]) -> anyhow::Result<TestCluster> {
    let images = images
        .iter()
        .map(|name| debug_image(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = Options {
        node: Some(NodeOptions {
            bin_dir: node::default_node_bin_dir(),
            images,
        }),
        ..Options::default()
    };
    let cluster = TestCluster::start_with_options(&binaries::default_bin_dir(), &options).await?;
    schedule_on_real_node(&cluster.client().await?).await?;
    Ok(cluster)
}

/// Makes the real node the only schedulable one: its taint removed and kwok's node cordoned,
/// so that the Pods of the chart and of the operator (which tolerate no taint) run on it.
pub async fn schedule_on_real_node(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            REAL_NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "taints": null } })),
        )
        .await
        .context("removing the real node's taint")?;
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "unschedulable": true } })),
        )
        .await
        .context("cordoning kwok's node")?;
    Ok(())
}

/// `helm install ordo charts/ordo --wait` (5 minutes at most) into `namespace` (created if
/// missing) of a real-node cluster, with the images imported into the node (the chart's
/// default names and tags) and short intervals, so that results show within seconds (the
/// defaults are 30 s and 10 s): enforcers report every 2 s, the operator refreshes the status
/// every `status_refresh_seconds`; text logs, for people and the failure report.
pub async fn install_chart(
    helm: &Helm,
    namespace: &str,
    status_refresh_seconds: u32,
) -> anyhow::Result<()> {
    let chart = helm::chart_dir();
    let status_refresh = format!("operator.statusRefreshSeconds={status_refresh_seconds}");
    helm.run(&[
        "install",
        "ordo",
        &chart.display().to_string(),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "enforcer.reportIntervalSeconds=2",
        "--set",
        &status_refresh,
        "--set",
        "operator.logFormat=text",
    ])
    .await?;
    Ok(())
}

/// Whether a Pod is Running and Ready, and not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until exactly `count` Pods of `selector` exist, all Running and Ready; returns them.
/// The timeout's error lists each Pod with its phase and node.
pub async fn wait_ready_pods(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    wait_ready_pods_where(pods, selector, count, None, timeout).await
}

/// [`wait_ready_pods`], and the Ready Pods must all run on Node `node` (the real node: a Pod
/// Ready on kwok's node runs nothing).
pub async fn wait_ready_pods_on(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    wait_ready_pods_where(pods, selector, count, Some(node), timeout).await
}

async fn wait_ready_pods_where(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    node: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    let on = node.map(|n| format!(" on {n}")).unwrap_or_default();
    wait_for(
        &format!("{count} Ready Pod(s) {selector}{on}"),
        timeout,
        || async move {
            let all = pods.list(&ListParams::default().labels(selector)).await?;
            let ready: Vec<Pod> = all.items.iter().filter(|p| is_ready(p)).cloned().collect();
            let on_node = node.is_none_or(|node| {
                ready
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            });
            if ready.len() == count && all.items.len() == count && on_node {
                return Ok(Some(ready));
            }
            bail!(
                "{} Pods, {} Ready: {:?}",
                all.items.len(),
                ready.len(),
                all.items
                    .iter()
                    .map(|p| (
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    ))
                    .collect::<Vec<_>>()
            )
        },
    )
    .await
}

/// Pids of every process in a real-node Pod's cgroups, found by the Pod's UID (which is
/// unique). Reads the host's `/sys/fs/cgroup`: the test runs on the node's host.
pub fn pod_pids(pod_uid: &str) -> anyhow::Result<Vec<u32>> {
    let output = Command::new("find")
        .args([
            "/sys/fs/cgroup/pids",
            "-path",
            &format!("*pod{pod_uid}*"),
            "-name",
            "cgroup.procs",
        ])
        .output()
        .context("running find in /sys/fs/cgroup/pids")?;
    let mut pids = Vec::new();
    for procs in String::from_utf8(output.stdout)?.lines() {
        // A cgroup that went away since `find` listed it holds no process.
        for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
            pids.push(
                pid.parse()
                    .with_context(|| format!("a pid {pid:?} in {procs}"))?,
            );
        }
    }
    Ok(pids)
}

/// Pids in a real-node Pod's cgroups (see [`pod_pids`]) whose command is `comm`.
pub fn pod_pids_named(pod_uid: &str, comm: &str) -> anyhow::Result<Vec<u32>> {
    Ok(pod_pids(pod_uid)?
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                == comm
        })
        .collect())
}

/// `GET http://127.0.0.1:9090{path}` inside a real-node enforcer Pod's network namespace: the
/// admin API's `/v1` answers loopback clients only (no admin token is configured), as an
/// operator would reach it with `kubectl port-forward`. `/metrics` comes back as a JSON
/// string, the rest parsed as JSON.
pub async fn pod_admin(pod: &Pod, path: &str) -> anyhow::Result<serde_json::Value> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pid = pod_pids(&uid)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no process in Pod {:?}", pod.metadata.name))?;
    let output = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "curl", "-sf", "-m", "10"])
        .arg(format!("http://127.0.0.1:9090{path}"))
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "curl {path} in {:?}: {} {}",
        pod.metadata.name,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    if path == "/metrics" {
        return Ok(serde_json::Value::String(text.into_owned()));
    }
    Ok(serde_json::from_str(&text)?)
}

/// One plain HTTP/1.1 request on a new connection (optionally with a bearer token and a JSON
/// body); returns the status and the body, or why there was none within `timeout`.
pub async fn http_request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let client: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(json.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let response = tokio::time::timeout(timeout, async {
        let response = client.request(builder.body(body)?).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
    .await;
    match response {
        Ok(result) => result,
        Err(_) => bail!("{method} {url}: no answer within {timeout:?}"),
    }
}

/// The sum of an enforcer Pod's `ordo_requests_total` (every label set), from its metrics on
/// the admin port (open to every client, unlike `/v1`).
pub async fn enforcer_requests(pod_ip: &str) -> anyhow::Result<u64> {
    let url = format!("http://{pod_ip}:9090/metrics");
    let (status, metrics) = http_request("GET", &url, None, None, Duration::from_secs(10)).await?;
    if status != 200 {
        bail!("GET /metrics of {pod_ip} answered {status}");
    }
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("ordo_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The simulator's bank (the `ordo-sample-bank` image of this version, with `customers`
/// customers) in a Deployment `name` of one replica, Pods labelled `app: <name>`, port 8080
/// named `http`.
pub fn bank_deployment(name: &str, customers: usize) -> anyhow::Result<Deployment> {
    let version = env!("CARGO_PKG_VERSION");
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": { "runAsNonRoot": true },
                    "containers": [{
                        "name": "bank",
                        "image": format!("ghcr.io/ordo-dev/ordo-sample-bank:{version}"),
                        "imagePullPolicy": "Never",
                        "args": ["--listen", "0.0.0.0:8080", "--customers", customers.to_string()],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": { "tcpSocket": { "port": 8080 }, "periodSeconds": 2 },
                    }],
                },
            },
        },
    }))
    .context("the bank's Deployment")
}

/// Service `name` in front of [`bank_deployment`]'s Pods `name`: port 80, named `http`.
pub fn bank_service(name: &str) -> anyhow::Result<Service> {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "selector": { "app": name },
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
        },
    }))
    .context("the bank's Service")
}

/// The non-empty documents of a YAML stream, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).context("parsing a YAML document"))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect()
}

/// The last `lines` lines of a text file, without terminal colour codes ("(no log)" when it
/// cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // A panic's or an error's backtrace would fill the tail with frames and push out
            // the message that says what happened: the frames are left out.
            let all: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
            strip_ansi(&all[all.len().saturating_sub(lines)..].join("\n"))
        }
        Err(err) => format!("(no log at {}: {err})", path.display()),
    }
}

/// A line of a Rust backtrace: `  12: function` or `             at file:line`.
fn is_backtrace_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.len() == line.len() {
        return false;
    }
    trimmed.starts_with("at ")
        || trimmed
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which tracing writes even
/// into a log file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process, killed when dropped, with its output in a log file.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with its standard output and error written to `log`.
    pub fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        let child = command
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id (to send it a signal).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_LINES)
    }

    /// The whole log so far ("" when it cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of each log the failure report shows.
const LOG_LINES: usize = 40;
/// Lines of each control-plane component's log the failure report shows.
const CONTROL_PLANE_LINES: usize = 15;
/// Longest the failure report may spend asking the API server.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Prints what a person needs to see why an end-to-end test failed, unless the test called
/// [`Diagnostics::passed`]. See the module docs.
pub struct Diagnostics<'a> {
    cluster: &'a TestCluster,
    /// The test's namespace, whose Ordo objects the report shows (none: control plane only).
    namespace: Option<String>,
    logs: Vec<(String, PathBuf)>,
    /// Where [`Diagnostics::new_log`] puts logs: removed only after the report is printed.
    log_dir: Option<tempfile::TempDir>,
    /// The namespace's objects as [`Diagnostics::snapshot`] recorded them earlier.
    snapshots: Vec<String>,
    passed: bool,
}

impl<'a> Diagnostics<'a> {
    /// A guard for a test (or the demo) that works in `namespace` of `cluster`.
    pub fn new(cluster: &'a TestCluster, namespace: &str) -> Self {
        Self {
            cluster,
            namespace: Some(namespace.to_owned()),
            logs: Vec::new(),
            log_dir: None,
            snapshots: Vec::new(),
            passed: false,
        }
    }

    /// A guard for a test of the control plane itself, which has no namespace of its own:
    /// the report shows the control plane's logs only.
    pub fn control_plane(cluster: &'a TestCluster) -> Self {
        Self {
            cluster,
            namespace: None,
            logs: Vec::new(),
            log_dir: None,
            snapshots: Vec::new(),
            passed: false,
        }
    }

    /// Adds a process log (operator, enforcer, app) to the report.
    pub fn log(&mut self, name: &str, path: &Path) {
        self.logs.push((name.to_owned(), path.to_path_buf()));
    }

    /// Adds the logs of the real node's components (kubelet, containerd, kube-proxy) of the
    /// cluster to the report.
    pub fn node_logs(&mut self) {
        for component in ["kubelet", "containerd", "kube-proxy"] {
            let path = self
                .cluster
                .dir()
                .join("logs")
                .join(format!("{component}.log"));
            self.log(component, &path);
        }
    }

    /// A path for a new process log named `name`, added to the report. The file lives in a
    /// directory the guard owns, so it outlasts the process and is still there for the report.
    pub fn new_log(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = match &self.log_dir {
            Some(dir) => dir.path().to_path_buf(),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("ordo-e2e-logs-")
                    .tempdir()?;
                let path = dir.path().to_path_buf();
                self.log_dir = Some(dir);
                path
            }
        };
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = dir.join(format!("{}-{file}.log", self.logs.len()));
        self.log(name, &path);
        Ok(path)
    }

    /// The test passed: print nothing.
    pub fn passed(mut self) {
        self.passed = true;
    }

    /// The report: logs, control plane, and the namespace's Ordo objects.
    pub async fn report(&self) -> String {
        let mut out = String::new();
        for (name, path) in &self.logs {
            out.push_str(&format!(
                "---- last {LOG_LINES} lines of {name} ({}):\n{}\n",
                path.display(),
                file_tail(path, LOG_LINES)
            ));
        }
        for component in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        ] {
            out.push_str(&format!(
                "---- last {CONTROL_PLANE_LINES} lines of {component}:\n{}\n",
                self.cluster.log_tail(component, CONTROL_PLANE_LINES)
            ));
        }
        for snapshot in &self.snapshots {
            out.push_str(snapshot);
        }
        if self.namespace.is_some() {
            out.push_str("======== the objects now:\n");
            out.push_str(&self.objects().await);
        }
        out
    }

    /// Records the namespace's objects as they are now, for the report: a test that goes on
    /// to delete them (the demo deletes its ApiProtection) still shows their status and
    /// rendered ConfigMap when a later check fails.
    pub async fn snapshot(&mut self, when: &str) {
        if self.namespace.is_some() {
            let objects = self.objects().await;
            self.snapshots
                .push(format!("======== the objects {when}:\n{objects}"));
        }
    }

    /// The namespace's Ordo objects, or why they could not be read.
    async fn objects(&self) -> String {
        let Some(namespace) = &self.namespace else {
            return String::new();
        };
        match tokio::time::timeout(REPORT_TIMEOUT, objects_report(self.cluster, namespace)).await {
            Ok(Ok(objects)) => objects,
            Ok(Err(err)) => format!("---- objects: could not be read: {err:#}\n"),
            Err(_) => "---- objects: the API server did not answer in time\n".to_owned(),
        }
    }
}

impl Drop for Diagnostics<'_> {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        // Drop cannot await, and it may run on a runtime's thread (where blocking on another
        // future panics): build the report on a thread of its own with its own runtime.
        let report = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|runtime| runtime.block_on(self.report()))
                        .unwrap_or_else(|err| format!("(no runtime for the report: {err})"))
                })
                .join()
                .unwrap_or_else(|_| "(building the report panicked)".to_owned())
        });
        let scope = self.namespace.as_deref().map_or_else(
            || "the control plane".to_owned(),
            |namespace| format!("namespace {namespace}"),
        );
        eprintln!(
            "\n======== why the test failed: {scope} ========\n{report}======== end of report ========"
        );
    }
}

/// Each ApiProtection's generation and status, each enforcer ConfigMap's hash and mode, each
/// enforcer Deployment's config-hash annotation, and the latest Events.
async fn objects_report(cluster: &TestCluster, namespace: &str) -> anyhow::Result<String> {
    let client = cluster.client().await?;
    let mut out = String::new();
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "ordo.dev",
        "v1alpha1",
        "ApiProtection",
    ));
    let protections: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    for protection in protections.list(&ListParams::default()).await? {
        let status = protection.data.get("status").cloned().unwrap_or_default();
        out.push_str(&format!(
            "---- ApiProtection {} generation {:?} mode {}:\n{}\n",
            protection.name_any(),
            protection.metadata.generation,
            protection.data["spec"]["mode"],
            serde_yaml_ng::to_string(&status).unwrap_or_default()
        ));
    }
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=ordo-operator");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for map in maps.list(&managed).await? {
        let data = map.data.clone().unwrap_or_default();
        let mode = data
            .values()
            .find_map(|text| text.lines().find(|l| l.starts_with("mode:")))
            .unwrap_or("(no mode line)");
        out.push_str(&format!(
            "---- ConfigMap {} (resourceVersion {:?}): hash {} {mode}\n",
            map.name_any(),
            map.metadata.resource_version,
            ordo_operator::desired::render::hash_data(&data),
        ));
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for deployment in deployments.list(&managed).await? {
        let hash = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| {
                a.get(ordo_operator::desired::names::CONFIG_HASH_ANNOTATION)
                    .cloned()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "---- Deployment {}: pod template config hash {hash}, status {:?}\n",
            deployment.name_any(),
            deployment.status.map(|s| (s.replicas, s.ready_replicas)),
        ));
    }
    let events: Api<Event> = Api::namespaced(client, namespace);
    let mut events = events.list(&ListParams::default()).await?.items;
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    out.push_str("---- latest Events:\n");
    for event in events.iter().rev().take(15).rev() {
        out.push_str(&format!(
            "{} {} {}: {}\n",
            event.type_.as_deref().unwrap_or("?"),
            event
                .regarding
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .unwrap_or("?"),
            event.reason.as_deref().unwrap_or("?"),
            event.note.as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{file_tail, is_backtrace_frame, strip_ansi};

    #[test]
    fn colour_codes_are_removed_and_text_kept() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026-12-06T16:06:21Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m leading"),
            "2026-12-06T16:06:21Z  INFO leading"
        );
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
    }

    #[test]
    fn a_panic_message_stays_in_the_tail_without_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("op.log");
        let mut text = String::from(
            "INFO started\nthread 'main' panicked at src/x.rs:1:2:\nboom\nstack backtrace:\n",
        );
        for i in 0..60 {
            text.push_str(&format!(
                "  {i}: frame::f{i}\n             at /src/f.rs:{i}:1\n"
            ));
        }
        std::fs::write(&log, text).unwrap();
        let tail = file_tail(&log, 3);
        assert_eq!(
            tail,
            "thread 'main' panicked at src/x.rs:1:2:\nboom\nstack backtrace:"
        );
        assert!(!is_backtrace_frame("2026-12-06T16:06:21Z  INFO a: b"));
        assert!(!is_backtrace_frame("error: 12: not a frame"));
    }
}
