//! What the end-to-end suites share: the control plane with Ordo's CRDs and a namespace per
//! test, the workspace binaries built once, polling with a deadline, YAML documents, and a
//! [`Diagnostics`] guard that prints why a test failed.
//!
//! A failing end-to-end test must explain itself: "deadline has elapsed" says nothing about
//! whether the operator, the enforcer or the control plane stopped the change. When a test
//! body ends without calling [`Diagnostics::passed`] (a panic, or an early `?` return), the
//! guard prints the last lines of every log it was given (operator, enforcer) and of the
//! control plane, each ApiProtection's generation and status, and each enforcer ConfigMap's
//! rendered hash and mode, so that the failure shows where a change stopped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt as _};
use serde::Deserialize;

use crate::cluster::{self, TestCluster, workspace_root};

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
pub fn binaries() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "ordo-operator",
                    "-p",
                    "ordo-enforcer",
                    "--bins",
                ])
                .status()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of the binaries failed: {status}"));
            }
            Ok(target_dir().join("debug"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The image `name` (`ordo-operator` or `ordo-enforcer`) assembled by `scripts/images
/// assemble` from the debug binary of [`binaries`], as an OCI archive under
/// `target/e2e-images/`. Named and tagged as the release image (the chart's defaults), so the
/// chart and the operator need no overrides. Debug binaries keep the release build out of the
/// test suite; their debug sections are stripped first (`objcopy --strip-debug`), since a
/// layer of several hundred MiB only slows the import. Needs root, as `scripts/images` does.
pub fn debug_image(name: &str) -> anyhow::Result<PathBuf> {
    let binary = binaries()?.join(name);
    let dir = target_dir().join("e2e-images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stripped = dir.join(name);
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&binary)
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

/// Polls `check` every 250 ms until it yields a value or `timeout` passes; the error names
/// `what` and the last problem `check` reported.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not yet");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = format!("{err:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The non-empty documents of a YAML stream, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).context("parsing a YAML document"))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect()
}

/// The last `lines` lines of a text file ("(no log)" when it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(no log at {}: {err})", path.display()),
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
    namespace: String,
    logs: Vec<(String, PathBuf)>,
    passed: bool,
}

impl<'a> Diagnostics<'a> {
    /// A guard for a test (or the demo) that works in `namespace` of `cluster`.
    pub fn new(cluster: &'a TestCluster, namespace: &str) -> Self {
        Self {
            cluster,
            namespace: namespace.to_owned(),
            logs: Vec::new(),
            passed: false,
        }
    }

    /// Adds a process log (operator, enforcer, app) to the report.
    pub fn log(&mut self, name: &str, path: &Path) {
        self.logs.push((name.to_owned(), path.to_path_buf()));
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
        for component in ["kube-apiserver", "kube-controller-manager", "kwok"] {
            out.push_str(&format!(
                "---- last {CONTROL_PLANE_LINES} lines of {component}:\n{}\n",
                self.cluster.log_tail(component, CONTROL_PLANE_LINES)
            ));
        }
        match tokio::time::timeout(
            REPORT_TIMEOUT,
            objects_report(self.cluster, &self.namespace),
        )
        .await
        {
            Ok(Ok(objects)) => out.push_str(&objects),
            Ok(Err(err)) => out.push_str(&format!("---- objects: could not be read: {err:#}\n")),
            Err(_) => out.push_str("---- objects: the API server did not answer in time\n"),
        }
        out
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
        eprintln!(
            "\n======== why the test failed: namespace {} ========\n{report}======== end of report ========",
            self.namespace
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
