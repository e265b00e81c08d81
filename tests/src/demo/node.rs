//! The demo on the local cluster's real node (`tests/src/cluster/node.rs`): the images built
//! and imported into containerd, the chart installed with helm, the sample bank in a Pod of
//! its own behind Service bank-api, and the enforcers as the Pods the operator's Deployment
//! runs. The demo's traffic comes from this process, on the host, to the Service's ClusterIP:
//! kube-proxy routes it to an enforcer Pod, which forwards it through `bank-api-origin` to the
//! bank Pod.
//!
//! Everything the demo reads about the enforcers comes from the ApiProtection's status, as a
//! user reads it: an enforcer Pod answers its admin `/v1` API to loopback clients only when no
//! admin token is configured, and the host is not loopback to a Pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use ordo_operator::crd::ApiProtectionStatus;
use ordo_operator::desired::names::{CONFIG_HASH_ANNOTATION, CONFIG_KEY, Names};
use ordo_operator::desired::render::hash_data;

use crate::cluster::TestCluster;
use crate::e2e::{self, wait_for};
use crate::helm::Helm;

/// The namespace of the helm release (the operator).
pub const RELEASE_NAMESPACE: &str = "ordo-system";
/// The images the node runs: the two of Ordo and the sample bank.
pub const IMAGES: [&str; 3] = ["ordo-operator", "ordo-enforcer", "ordo-sample-bank"];

/// Where the demo runs Ordo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The operator, the enforcer and the bank as local processes; kwok plays the pods.
    Local,
    /// Everything in Pods on the local cluster's real node.
    Node,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "local processes",
            Self::Node => "real node",
        })
    }
}

/// Why this machine cannot run the harness's real node, `None` when it can: the same checks,
/// in the same order, as `node_unsupported` in `scripts/test` (root, cgroup v1 with a pids
/// hierarchy, the bridge netfilter hook, unshare and ip, curl and objcopy).
pub fn unsupported() -> Option<String> {
    // The effective uid: the second field of the `Uid:` line (std has no geteuid).
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        .unwrap_or(false);
    if !root {
        return Some("not root".into());
    }
    if !Path::new("/sys/fs/cgroup/pids").is_dir() {
        return Some("no cgroup v1 pids hierarchy at /sys/fs/cgroup/pids".into());
    }
    let bridge =
        std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").unwrap_or_default();
    if bridge.trim() != "1" {
        return Some(
            "net.bridge.bridge-nf-call-iptables is not 1 (modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1)"
                .into(),
        );
    }
    if !on_path("unshare") || !on_path("ip") {
        return Some("unshare (util-linux) or ip (iproute2) is missing".into());
    }
    if !on_path("curl") {
        return Some("curl is missing (apt-get install curl)".into());
    }
    if !on_path("objcopy") {
        return Some("objcopy is missing (apt-get install binutils)".into());
    }
    None
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

/// The platform `ORDO_DEMO_NODE` asks for: `0` local processes, `1` the real node (an error
/// where the machine cannot run it), unset or anything else: the real node where supported.
/// Returns the platform and why the node is not used, when it is not.
pub fn choose(setting: Option<&str>) -> anyhow::Result<(Platform, Option<String>)> {
    match setting.map(str::trim) {
        Some("0") => Ok((Platform::Local, Some("ORDO_DEMO_NODE=0".into()))),
        Some("1") => match unsupported() {
            None => Ok((Platform::Node, None)),
            Some(reason) => {
                bail!("ORDO_DEMO_NODE=1, but this machine cannot run the real node: {reason}")
            }
        },
        _ => Ok(match unsupported() {
            None => (Platform::Node, None),
            Some(reason) => (Platform::Local, Some(reason)),
        }),
    }
}

/// The three images as OCI archives: from the debug binaries through
/// [`e2e::debug_image`] (what the end-to-end tests import too), or from the release binaries
/// in `bins` into `target/ordo-demo/images/`.
pub fn images(debug: bool, bins: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = bins
        .parent()
        .map_or_else(|| bins.join("ordo-demo"), |p| p.join("ordo-demo"))
        .join("images");
    IMAGES
        .iter()
        .map(|name| {
            if debug {
                e2e::debug_image(name)
            } else {
                e2e::assemble_image(name, &bins.join(name), &dir)
            }
        })
        .collect()
}

/// `helm install ordo charts/ordo` in [`RELEASE_NAMESPACE`], with the images imported into the
/// node (the chart's default names and tags) and the demo's short intervals; waits until
/// the operator's Pods are Ready.
pub async fn install_chart(cluster: &TestCluster) -> anyhow::Result<()> {
    let helm = Helm::for_cluster(cluster)?;
    e2e::install_chart(&helm, RELEASE_NAMESPACE, 2).await
}

/// Pods of `selector` in `namespace` that are Running and Ready, not being deleted.
async fn ready_pods(pods: &Api<Pod>, selector: &str) -> anyhow::Result<(Vec<Pod>, usize)> {
    let list = pods.list(&ListParams::default().labels(selector)).await?;
    let all = list.items.len();
    let ready = list.items.into_iter().filter(e2e::is_ready).collect();
    Ok((ready, all))
}

/// Waits until exactly `count` Pods of `selector` exist, all Running and Ready (and, when
/// given, with `annotation` = `value` on the Pod); returns their names and IPs.
pub async fn wait_pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    count: usize,
    annotation: Option<(&str, &str)>,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("{count} Ready Pod(s) {selector} in {namespace}"),
        timeout,
        || async {
            let (ready, all) = ready_pods(&pods, selector).await?;
            let annotated = ready
                .iter()
                .filter(|p| {
                    annotation.is_none_or(|(key, value)| {
                        p.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(key))
                            .is_some_and(|v| v == value)
                    })
                })
                .count();
            if ready.len() == count && all == count && annotated == count {
                return Ok(Some(
                    ready
                        .iter()
                        .map(|p| {
                            (
                                p.metadata.name.clone().unwrap_or_default(),
                                p.status
                                    .as_ref()
                                    .and_then(|s| s.pod_ip.clone())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect(),
                ));
            }
            bail!(
                "{all} Pods, {} Ready, {annotated} with the wanted annotation",
                ready.len()
            )
        },
    )
    .await
}

/// The enforcer Pods' selector for ApiProtection `protection`.
pub fn enforcer_selector(namespace: &str, protection: &str) -> String {
    Names::new(namespace, protection, protection)
        .selector()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until the enforcers run what the operator rendered last: the ConfigMap holds
/// `mode`, and the Deployment has rolled, so that every enforcer Pod carries the ConfigMap's
/// hash and no Pod of the old config is left (a terminating Pod keeps serving during its
/// preStop sleep, and kube-proxy keeps a client on it). Returns the new Pods.
pub async fn wait_rolled_out(
    client: &kube::Client,
    namespace: &str,
    protection: &str,
    replicas: usize,
    mode: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = ordo_operator::desired::names::enforcer_name(protection);
    let hash = wait_for(
        &format!("ConfigMap {config_map} to render mode {mode}"),
        timeout,
        || async {
            let data = maps
                .get(&config_map)
                .await?
                .data
                .ok_or_else(|| anyhow!("no data"))?;
            let config = data
                .get(CONFIG_KEY)
                .ok_or_else(|| anyhow!("no config key"))?;
            let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(config)?;
            let rendered = value.get("mode").and_then(|m| m.as_str()).unwrap_or("");
            if rendered == mode {
                return Ok(Some(hash_data(&data)));
            }
            bail!("mode {rendered}")
        },
    )
    .await?;
    wait_pods(
        client,
        namespace,
        &enforcer_selector(namespace, protection),
        replicas,
        Some((CONFIG_HASH_ANNOTATION, &hash)),
        timeout,
    )
    .await
}

/// How far learning is (0 to 1000) from the status's merged model, and what it says.
pub fn learning_progress(
    status: &ApiProtectionStatus,
    min_requests: u64,
    min_sessions: u64,
) -> (u64, String, bool) {
    let Some(model) = &status.model else {
        return (0, "no report in status yet".into(), false);
    };
    let gate = |have: i64, need: u64| {
        if need == 0 {
            1.0
        } else {
            (u64::try_from(have).unwrap_or(0) as f64 / need as f64).min(1.0)
        }
    };
    let mature = model.mature;
    let fraction = (gate(model.requests, min_requests)
        + gate(model.sessions, min_sessions)
        + if mature { 2.0 } else { 0.0 })
        / 4.0;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ordo_operator::desired::conditions::MODEL_MATURE)
        .map(|c| format!(" · ModelMature {}: {}", c.status, c.message))
        .unwrap_or_default();
    (
        (fraction * 1000.0) as u64,
        format!(
            "status: {} requests · {} sessions · {} endpoints · mature {mature}{condition}",
            model.requests, model.sessions, model.endpoints
        ),
        mature,
    )
}

/// The finding kinds of the incidents in status, by client address.
pub fn incident_kinds_by_client(status: &ApiProtectionStatus) -> BTreeMap<String, Vec<String>> {
    let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for incident in &status.incidents {
        let kinds = by_client.entry(incident.client.clone()).or_default();
        for kind in &incident.kinds {
            if !kinds.contains(kind) {
                kinds.push(kind.clone());
            }
        }
    }
    by_client
}

/// The Service's ClusterIP and port.
pub fn cluster_ip(service: &k8s_openapi::api::core::v1::Service) -> anyhow::Result<SocketAddr> {
    let spec = service
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("the Service has no spec"))?;
    let ip = spec
        .cluster_ip
        .as_deref()
        .ok_or_else(|| anyhow!("the Service has no ClusterIP"))?;
    let port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map_or(80, |p| p.port);
    let ip: std::net::IpAddr = ip.parse().context("the ClusterIP")?;
    Ok(SocketAddr::new(ip, u16::try_from(port).unwrap_or(80)))
}

/// Creates the bank's Deployment in `namespace`.
pub async fn create_bank(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    customers: usize,
) -> anyhow::Result<()> {
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &e2e::bank_deployment(name, customers)?,
        )
        .await
        .context("creating the bank's Deployment")?;
    Ok(())
}

/// The kubelet's log file of the first run of `container` in the Pod `namespace/name`.
pub async fn pod_log(
    cluster: &TestCluster,
    client: &kube::Client,
    namespace: &str,
    name: &str,
    container: &str,
) -> anyhow::Result<PathBuf> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(cluster.pod_log(&pod, container))
}

#[cfg(test)]
mod tests {
    // A panic is the failure report of a unit test.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status(value: serde_json::Value) -> ApiProtectionStatus {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn demo_node_zero_forces_the_local_processes_without_a_check() {
        let (platform, why) = choose(Some("0")).unwrap();
        assert_eq!(platform, Platform::Local);
        assert_eq!(why.as_deref(), Some("ORDO_DEMO_NODE=0"));
        // Unset: the node exactly where the checks pass, with the reason otherwise.
        let (platform, why) = choose(None).unwrap();
        assert_eq!(platform == Platform::Node, unsupported().is_none());
        assert_eq!(why, unsupported());
        // 1: the node, or an error that names why it cannot run.
        match (choose(Some("1")), unsupported()) {
            (Ok((Platform::Node, None)), None) => {}
            (Err(err), Some(reason)) => assert!(err.to_string().contains(&reason), "{err}"),
            (other, reason) => panic!("ORDO_DEMO_NODE=1 gave {other:?} with {reason:?}"),
        }
    }

    #[test]
    fn learning_progress_follows_the_merged_model_in_status() {
        let (position, message, mature) =
            learning_progress(&status(serde_json::json!({})), 1000, 50);
        assert_eq!((position, mature), (0, false), "{message}");
        let half = status(serde_json::json!({
            "model": { "requests": 500, "sessions": 50, "endpoints": 4, "mature": false },
        }));
        let (position, message, mature) = learning_progress(&half, 1000, 50);
        // (0.5 + 1.0 + 0) / 4 of the way.
        assert_eq!((position, mature), (375, false), "{message}");
        assert!(
            message.contains("500 requests · 50 sessions · 4 endpoints"),
            "{message}"
        );
        let done = status(serde_json::json!({
            "model": { "requests": 5000, "sessions": 900, "endpoints": 10, "mature": true },
        }));
        assert_eq!(learning_progress(&done, 1000, 50).0, 1000);
        assert!(learning_progress(&done, 1000, 50).2);
    }

    #[test]
    fn incident_kinds_are_grouped_by_client_without_repeats() {
        let incident = |client: &str, kinds: &[&str]| {
            serde_json::json!({
                "id": "inc", "severity": "High", "open": true, "session": "s", "client": client,
                "kinds": kinds, "operations": [], "requests": 1, "blocked": 1,
                "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-01T00:00:00Z",
                "summary": "x",
            })
        };
        let by_client = incident_kinds_by_client(&status(serde_json::json!({
            "incidents": [
                incident("198.51.100.1", &["Enumeration", "Quarantined"]),
                incident("198.51.100.1", &["Quarantined", "RateLimit"]),
                incident("198.51.100.2", &["ShapeDeviation"]),
            ],
        })));
        assert_eq!(
            by_client.get("198.51.100.1").unwrap(),
            &["Enumeration", "Quarantined", "RateLimit"]
        );
        assert_eq!(by_client.get("198.51.100.2").unwrap(), &["ShapeDeviation"]);
        assert_eq!(by_client.len(), 2);
    }

    #[test]
    fn the_bank_pod_runs_the_sample_bank_image_with_the_demos_customers() {
        let deployment = e2e::bank_deployment("bank-api", 6000).unwrap();
        let spec = deployment.spec.unwrap().template.spec.unwrap();
        let container = &spec.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(
                format!(
                    "ghcr.io/ordo-dev/ordo-sample-bank:{}",
                    env!("CARGO_PKG_VERSION")
                )
                .as_str()
            )
        );
        assert!(
            container
                .args
                .as_ref()
                .unwrap()
                .contains(&"6000".to_owned())
        );
        assert_eq!(
            container.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("http")
        );
        assert_eq!(
            enforcer_selector("bank", "bank-api"),
            "app.kubernetes.io/name=ordo-enforcer,ordo.dev/protection=bank-api"
        );
    }
}
