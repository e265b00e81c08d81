//! Ordo on the local cluster's real node (containerd, kubelet, kube-proxy in iptables mode,
//! the harness's cluster DNS):
//!
//! - the ordo-enforcer image runs as the non-root user 65532 under the Deployment's security
//!   settings (its root file system read-only as its process sees it), proxies traffic from its Pod IP to an upstream outside the Pod, blocks an attack
//!   in Enforce mode, refuses its admin `/v1` API to a non-loopback client without a token, and
//!   is restarted by the kubelet when killed;
//! - the chart installed with helm: the operator Pods Ready as 65532, a leader elected, the
//!   webhook called by the API server through its Service; a sample API (the simulator's bank,
//!   in a Pod of its own) taken over by an ApiProtection, so that traffic to the Service's
//!   ClusterIP goes through an enforcer Pod and `<service>-origin` to the app; reports reach the
//!   leader through the report Service; Enforce blocks an attack on the ClusterIP; an enforcer
//!   Pod deleted under traffic, the leader killed during a reconcile, enforcers scaled
//!   1 → 3 → 1 (no enforcer container restarted), the ApiProtection and the SequenceRule
//!   deleted and the release uninstalled (none of its objects left).
//!
//! The images are assembled from debug binaries (`ordo_tests::e2e::debug_image`), so no
//! release build is needed; the node comes from `tests/cluster/build-node.sh`. Both tests
//! share one cluster whose real node is the only schedulable one (the operator deploys
//! enforcers without tolerations), so the Pods the operator creates run for real.
//!
//! Ignored by default: it needs root and the node build (kubelet, containerd), which takes
//! longer than the test suite may. Run it with
//! `cargo test -p ordo-tests --test e2e_node -- --ignored`.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_tests::cluster::{REAL_NODE_NAME, REAL_NODE_TAINT, TestCluster};
use ordo_tests::e2e::{
    Diagnostics, bank_deployment, bank_service, enforcer_requests, http_request, install_chart,
    is_ready, pod_admin, pod_pids, pod_pids_named, real_node_cluster, wait_for, wait_ready_pods_on,
};
use ordo_tests::helm::Helm;
use ordo_tests::sim::bank::{Directory, RunningBank};
use tokio::sync::OnceCell;

const IMAGE: &str = "ghcr.io/ordo-dev/ordo-enforcer";
const NONROOT: &str = "65532";

fn enforcer_pod(version: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "enforcer", "labels": { "app": "enforcer" } },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": REAL_NODE_NAME },
            "tolerations": [{ "key": REAL_NODE_TAINT.0, "operator": "Exists", "effect": "NoSchedule" }],
            "automountServiceAccountToken": false,
            // The enforcer Deployment's security settings (operator/src/resources.rs), without
            // a runAsUser: the image's own user must be the non-root one.
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "enforcer",
                "image": format!("{IMAGE}:{version}"),
                "imagePullPolicy": "Never",
                "args": ["--config", "/etc/ordo/config.yaml"],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
                "readinessProbe": { "httpGet": { "path": "/healthz", "port": 9090 }, "periodSeconds": 2 },
                "volumeMounts": [{ "name": "config", "mountPath": "/etc/ordo" }],
            }],
            "volumes": [{ "name": "config", "configMap": { "name": "enforcer" } }],
        },
    }))
    .unwrap()
}

/// Enforce mode with one sequence rule: a transfer must follow a balance lookup of the same
/// session. No admin token: `/v1/*` answers loopback clients only.
fn enforcer_config(upstream: SocketAddr) -> ConfigMap {
    let config = format!(
        r#"listen: 0.0.0.0:8080
admin:
  listen: 0.0.0.0:9090
upstream:
  url: http://{upstream}
mode: Enforce
rules:
  - name: balance-before-transfer
    priority: 100
    action: Block
    requires:
      operation: POST /api/v1/transfers
      after: ["GET /api/v1/accounts/{{account_id}}/balance"]
      within: {{ requests: 10, duration: 10m }}
"#
    );
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "enforcer" },
        "data": { "config.yaml": config },
    }))
    .unwrap()
}

/// Uid lines of every process in the Pod's cgroups.
fn pod_process_uids(pod_uid: &str) -> Vec<String> {
    pod_pids(pod_uid)
        .unwrap()
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_owned)
        })
        .collect()
}

/// The per-mount options (`ro`, `rw`, ...) of what is mounted at `mount_point` as process
/// `pid` sees it, from `/proc/<pid>/mountinfo` (paths relative to the process's root); the
/// last mount there is the one the process sees.
fn mount_options(pid: u32, mount_point: &str) -> Option<Vec<String>> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    mountinfo
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields.len() > 5 && fields[4] == mount_point)
        .map(|fields| fields[5].split(',').map(str::to_owned).collect())
        .next_back()
}

/// Checks at run time what `readOnlyRootFilesystem` asks for: the enforcer process of the Pod
/// sees its root file system read-only, and each of `writable` (its emptyDir volumes)
/// writable, which also shows that the options read are the ones that apply.
fn assert_read_only_root(pod_uid: &str, writable: &[&str]) {
    let enforcers = pod_pids_named(pod_uid, "ordo-enforcer").unwrap();
    assert_eq!(enforcers.len(), 1, "Pod {pod_uid}: {enforcers:?}");
    let root = mount_options(enforcers[0], "/");
    assert!(
        root.as_ref().is_some_and(|o| o.iter().any(|o| o == "ro")),
        "Pod {pod_uid}: the enforcer's / is mounted {root:?}, not read-only"
    );
    for path in writable {
        let options = mount_options(enforcers[0], path);
        assert!(
            options
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o == "rw")),
            "Pod {pod_uid}: the enforcer's {path} is mounted {options:?}, not writable"
        );
    }
}

/// One HTTP/1.1 request; returns the status and the body (panics without an answer).
async fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    http_request(method, url, bearer, body, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The images every test of this binary runs.
const IMAGES: [&str; 3] = ["ordo-enforcer", "ordo-operator", "ordo-sample-bank"];

/// The cluster with the real node shared by this binary's tests (one real node per machine
/// at a time, see `ordo_tests::cluster`), the only schedulable node: the enforcer Pods the
/// operator creates (which tolerate no taint) run on it.
async fn node_cluster() -> &'static TestCluster {
    static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_init(|| async { real_node_cluster(&IMAGES).await.unwrap() })
        .await
}

#[tokio::test]
#[ignore = "needs root and tests/cluster/build-node.sh; run with --ignored"]
async fn enforcer_image_serves_and_enforces_as_nonroot_on_the_real_node() {
    let version = env!("CARGO_PKG_VERSION");
    let cluster = node_cluster().await;
    let namespace = cluster.namespace("real-node").await.unwrap();
    let mut diagnostics = Diagnostics::new(cluster, &namespace);
    diagnostics.node_logs();
    let client = cluster.client().await.unwrap();

    // The upstream runs on the host, at the Node's InternalIP: the bridge's gateway, which
    // the Pods reach and nothing outside this machine does.
    let node = Api::<Node>::all(client.clone())
        .get(REAL_NODE_NAME)
        .await
        .unwrap();
    let node_ip: IpAddr = node
        .status
        .unwrap()
        .addresses
        .unwrap()
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .unwrap()
        .address
        .parse()
        .unwrap();
    let directory = Directory::generate(3);
    let bank = RunningBank::start(&directory, Some(SocketAddr::new(node_ip, 0)))
        .await
        .unwrap();

    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &enforcer_config(bank.addr))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let created = pods
        .create(&PostParams::default(), &enforcer_pod(version))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let pod_ip = wait_for(
        "the enforcer Pod to be Running and Ready",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get("enforcer").await?;
                if is_ready(&pod) {
                    return Ok(pod.status.and_then(|s| s.pod_ip));
                }
                let status = pod.status.unwrap_or_default();
                anyhow::bail!(
                    "phase {:?}, containers {:?}",
                    status.phase,
                    status.container_statuses
                )
            }
        },
    )
    .await
    .unwrap();

    // Every process of the Pod (the sandbox and the enforcer) runs as 65532: the image's user.
    assert_nonroot(&created);

    // readOnlyRootFilesystem, as the enforcer process sees its mounts.
    assert_read_only_root(&uid, &[]);

    // Traffic to the Pod IP goes through the enforcer to the upstream.
    let proxy = format!("http://{pod_ip}:8080");
    let customer = &directory.customers[0];
    let token = login(&proxy, customer).await;
    assert!(
        bank.hits().iter().any(|h| h.path == "/api/v1/login"),
        "the login did not reach the upstream: {:?}",
        bank.hits()
    );

    let transfer = serde_json::json!({
        "fromAccount": customer.accounts[0].to_string(),
        "toAccount": directory.customers[1].accounts[0].to_string(),
        "amount": 10,
    });
    // Enforce: a transfer without the balance lookup is blocked before the upstream.
    let (status, body) = request(
        "POST",
        &format!("{proxy}/api/v1/transfers"),
        Some(&token),
        Some(transfer.clone()),
    )
    .await;
    assert_eq!(status, 403, "the attack must be blocked: {body}");
    assert_eq!(
        bank.transfers(),
        0,
        "a blocked transfer reached the upstream"
    );
    assert!(
        !bank.hits().iter().any(|h| h.path == "/api/v1/transfers"),
        "{:?}",
        bank.hits()
    );
    // The same transfer after the balance lookup passes: the rule, not the path, blocked it.
    let (status, body) = request(
        "GET",
        &format!("{proxy}/api/v1/accounts/{}/balance", customer.accounts[0]),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "balance through the enforcer: {body}");
    let (status, body) = request(
        "POST",
        &format!("{proxy}/api/v1/transfers"),
        Some(&token),
        Some(transfer),
    )
    .await;
    assert_eq!(status, 201, "the transfer after a balance lookup: {body}");
    assert_eq!(bank.transfers(), 1);

    // The admin listener: health for the kubelet's probe, but no /v1 for a non-loopback
    // client when no token is configured.
    let admin = format!("http://{pod_ip}:9090");
    let (status, _) = request("GET", &format!("{admin}/healthz"), None, None).await;
    assert_eq!(status, 200);
    let (status, body) = request("GET", &format!("{admin}/v1/rules"), None, None).await;
    assert_eq!(status, 403, "{body}");

    // A crash: the kubelet restarts the container in the same Pod, which serves again.
    let enforcers = pod_pids_named(&uid, "ordo-enforcer").unwrap();
    assert_eq!(enforcers.len(), 1, "{enforcers:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &enforcers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for(
        "the enforcer container to be restarted and Ready",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let status = pods.get("enforcer").await?.status.unwrap_or_default();
                let restarted = status
                    .container_statuses
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.restart_count >= 1 && c.ready);
                Ok(restarted.then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // The login after the restart.
    login(&proxy, customer).await;

    diagnostics.passed();
}

/// Customers of the bank Pod; the test generates the same directory to log in with.
const BANK_CUSTOMERS: usize = 20;

/// Takeover of Service `bank`, one enforcer; the learning thresholds keep the model immature,
/// so that in Enforce mode only the sequence rule blocks (a deterministic attack).
fn protection() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": { "name": "bank" },
        "spec": {
            "target": { "service": "bank", "port": "http" },
            "mode": "Monitor",
            "routing": "Takeover",
            "session": {
                "identifiers": [
                    { "jwtClaim": { "header": "Authorization", "claim": "sub" } },
                    { "clientIp": {} },
                ],
            },
            "clientAddress": { "source": "Socket" },
            "enforcer": { "replicas": 1 },
        },
    })
}

/// The example rule: a transfer must follow a balance lookup of the same session.
fn sequence_rule(after: &str) -> serde_json::Value {
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
                "after": [after],
                "within": { "requests": 10, "duration": "10m" },
            },
        },
    })
}

/// Waits until exactly `count` Pods of `selector` are Running and Ready on the real node and
/// no other Pod of it remains; returns them.
async fn wait_pods(pods: &Api<Pod>, selector: &str, count: usize, timeout: Duration) -> Vec<Pod> {
    wait_ready_pods_on(pods, selector, count, REAL_NODE_NAME, timeout)
        .await
        .unwrap()
}

/// Asserts that every process of the Pod runs as 65532.
fn assert_nonroot(pod: &Pod) {
    let uid = pod.metadata.uid.clone().unwrap();
    let uids = pod_process_uids(&uid);
    assert!(
        uids.len() >= 2,
        "{:?}: {uids:?}",
        pod.metadata.name.as_deref()
    );
    for line in &uids {
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(
            ids,
            [NONROOT; 4],
            "{:?}: {line}",
            pod.metadata.name.as_deref()
        );
    }
}

/// Asserts that no container of the Pods matching `selector` has been restarted by the
/// kubelet (a crash, a failed liveness probe): the faults of the test delete Pods, they never
/// make a container fail.
async fn assert_no_restarts(pods: &Api<Pod>, selector: &str) {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    assert!(!list.items.is_empty(), "no Pod {selector}");
    for pod in &list.items {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for status in statuses.into_iter().flatten() {
            assert_eq!(
                status.restart_count,
                0,
                "Pod {}: container {} restarted (last state {:?})",
                pod.name_any(),
                status.name,
                status.last_state
            );
        }
    }
}

/// The names of the objects `api` lists.
async fn names<K>(api: &Api<K>) -> anyhow::Result<Vec<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.iter().map(ResourceExt::name_any).collect())
}

/// Requests sent by a [`Traffic`] loop and those that failed (no answer, or not 200).
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// A balance lookup every 50 ms to the Service's ClusterIP, each on a new connection, until
/// stopped; counts what failed.
struct Traffic {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(url: String, token: String) -> Self {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&counts), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                c.sent.fetch_add(1, Ordering::Relaxed);
                match http_request("GET", &url, Some(&token), None, Duration::from_secs(5)).await {
                    Ok((200, _)) => {}
                    Ok((status, body)) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!(
                            "{status}: {}",
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                    Err(err) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{err:#}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        });
        Self { counts, stop, task }
    }

    /// Stops the loop; returns (sent, failed, the first failures).
    async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = self.task.await.unwrap();
        failures.truncate(5);
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
            failures,
        )
    }
}

/// Logs in as `customer` through `base`; returns the token.
async fn login(base: &str, customer: &ordo_tests::sim::bank::Customer) -> String {
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/login"),
        None,
        Some(serde_json::json!({ "username": customer.username, "password": customer.password })),
    )
    .await;
    assert_eq!(status, 200, "login via {base}: {body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Logs in as `customer` through `base`, retrying while the path is not there yet (an
/// endpoint kube-proxy has not programmed, an enforcer not yet serving); returns the token.
async fn wait_login(base: &str, customer: &ordo_tests::sim::bank::Customer) -> String {
    wait_for(
        &format!("a login through {base}"),
        Duration::from_secs(60),
        || async {
            let (status, body) = http_request(
                "POST",
                &format!("{base}/api/v1/login"),
                None,
                Some(serde_json::json!({ "username": customer.username, "password": customer.password })),
                Duration::from_secs(10),
            )
            .await?;
            if status != 200 {
                anyhow::bail!("{status}: {body}");
            }
            let value: serde_json::Value = serde_json::from_str(&body)?;
            Ok(value["token"].as_str().map(str::to_owned))
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
#[ignore = "needs root and tests/cluster/build-node.sh; run with --ignored"]
async fn chart_protects_a_service_through_real_pods_and_kube_proxy() {
    let started = Instant::now();
    let cluster = node_cluster().await;
    let namespace = cluster.namespace("node-helm").await.unwrap();
    let mut diagnostics = Diagnostics::new(cluster, &namespace);
    diagnostics.node_logs();
    let client = cluster.client().await.unwrap();
    let helm = Helm::for_cluster(cluster).unwrap();

    // --- The chart, with the images imported into the node (no registry).
    install_chart(&helm, &namespace, 1).await.unwrap();
    println!(
        "helm install --wait: {:.0?} since the start",
        started.elapsed()
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let operators = wait_pods(
        &pods,
        "app.kubernetes.io/name=ordo",
        2,
        Duration::from_secs(180),
    )
    .await;
    for pod in &operators {
        assert_nonroot(pod);
        diagnostics.log(
            &format!(
                "operator Pod {}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            &cluster.pod_log(pod, "operator"),
        );
    }
    let operator_names: Vec<String> = operators
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();

    // A leader: the Lease names one of the Pods, and the report Service's EndpointSlice
    // (written by the leader) holds that Pod's real IP.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let leader = wait_for("a leader in Lease ordo", Duration::from_secs(90), || {
        let leases = leases.clone();
        let names = operator_names.clone();
        async move {
            let holder = leases
                .get_opt("ordo")
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            Ok(holder.filter(|h| names.contains(h)))
        }
    })
    .await
    .unwrap();
    let leader_ip = operators
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&leader))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        "the report Service's EndpointSlice to hold the leader's Pod IP",
        Duration::from_secs(60),
        || {
            let slices = slices.clone();
            let leader_ip = leader_ip.clone();
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=ordo-reports"))
                    .await?;
                let addresses: Vec<String> = list
                    .items
                    .iter()
                    .flat_map(|s| {
                        s.endpoints
                            .iter()
                            .flatten()
                            .flat_map(|e| e.addresses.clone())
                    })
                    .collect();
                if addresses == [leader_ip.clone()] {
                    return Ok(Some(()));
                }
                anyhow::bail!("addresses {addresses:?}")
            }
        },
    )
    .await
    .unwrap();

    // The webhook, called by the API server through Service ordo (kube-proxy routes the
    // ClusterIP to an operator Pod): a rule with an unclosed path parameter, which the
    // CRD's pattern lets through, is refused by the operator's check.
    let rules: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &kube::api::ApiResource::erase::<SequenceRule>(&()),
    );
    let bad: DynamicObject =
        serde_json::from_value(sequence_rule("GET /api/v1/accounts/{account_id")).unwrap();
    let err = rules
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the webhook must refuse the rule");
    let text = err.to_string();
    // The operator's own refusal, naming the field and what is wrong with it: not only
    // that some webhook answered.
    assert!(
        text.contains("sequencerules.validate.ordo.dev")
            && text.contains("after")
            && text.contains("unclosed parameter"),
        "{text}"
    );

    // --- The sample API in its own Pod behind Service bank.
    let deployment = bank_deployment("bank", BANK_CUSTOMERS).unwrap();
    let service = bank_service("bank").unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let bank_pods = wait_pods(&pods, "app=bank", 1, Duration::from_secs(120)).await;
    assert_nonroot(&bank_pods[0]);
    let base = format!("http://{cluster_ip}:80");
    let directory = Directory::generate(BANK_CUSTOMERS);
    // Straight to the app through kube-proxy, before any protection (once kube-proxy has
    // programmed the new endpoint).
    wait_login(&base, &directory.customers[0]).await;

    // --- Takeover.
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &namespace);
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
    let enforcer_selector = "ordo.dev/protection=bank";
    let enforcers = wait_pods(&pods, enforcer_selector, 1, Duration::from_secs(180)).await;
    assert_nonroot(&enforcers[0]);
    diagnostics.log(
        "the first enforcer Pod",
        &cluster.pod_log(&enforcers[0], "enforcer"),
    );
    let container = &enforcers[0].spec.as_ref().unwrap().containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    // And at run time: the enforcer's root is mounted read-only, its /tmp emptyDir writable.
    assert_read_only_root(enforcers[0].metadata.uid.as_deref().unwrap(), &["/tmp"]);
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    wait_for(
        "Service bank to select the enforcers and bank-origin the app",
        Duration::from_secs(120),
        || {
            let services = services.clone();
            async move {
                let selector = services
                    .get("bank")
                    .await?
                    .spec
                    .unwrap_or_default()
                    .selector;
                let origin = services
                    .get_opt("bank-origin")
                    .await?
                    .and_then(|s| s.spec)
                    .and_then(|s| s.selector);
                let app = BTreeMap::from([("app".to_owned(), "bank".to_owned())]);
                if origin.as_ref() == Some(&app)
                    && selector
                        .as_ref()
                        .is_some_and(|s| s.contains_key("ordo.dev/protection"))
                {
                    return Ok(Some(()));
                }
                anyhow::bail!("bank selects {selector:?}, bank-origin {origin:?}")
            }
        },
    )
    .await
    .unwrap();
    println!("takeover done: {:.0?} since the start", started.elapsed());
    // kube-proxy follows the Service's new endpoints within its sync period: until then a
    // new connection may still reach the app directly. Wait until the enforcer counts a login.
    let enforcer_ip = enforcers[0]
        .status
        .as_ref()
        .unwrap()
        .pod_ip
        .clone()
        .unwrap();
    wait_for(
        "a login to the ClusterIP to go through the enforcer Pod",
        Duration::from_secs(60),
        || {
            let (base, enforcer_ip) = (base.clone(), enforcer_ip.clone());
            let customer = &directory.customers[0];
            async move {
                let before = enforcer_requests(&enforcer_ip).await?;
                wait_login(&base, customer).await;
                let after = enforcer_requests(&enforcer_ip).await?;
                if after > before {
                    return Ok(Some(()));
                }
                anyhow::bail!("the enforcer counted {after} requests, as before the login")
            }
        },
    )
    .await
    .unwrap();

    // Honest customers through the ClusterIP: kube-proxy → enforcer Pod → bank-origin → app.
    let mut tokens = Vec::new();
    for customer in directory.customers.iter().take(6) {
        let token = wait_login(&base, customer).await;
        for account in &customer.accounts {
            let (status, body) = request(
                "GET",
                &format!("{base}/api/v1/accounts/{account}/balance"),
                Some(&token),
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        tokens.push(token);
    }
    // The enforcer saw them all (its own counters, on its Pod IP).
    let counted = enforcer_requests(&enforcer_ip).await.unwrap();
    let sent: usize = directory
        .customers
        .iter()
        .take(6)
        .map(|c| 1 + c.accounts.len())
        .sum();
    assert!(
        counted >= sent as u64,
        "the enforcer counted {counted} requests, {sent} were sent to the ClusterIP"
    );

    // Reports reach the leader through the report Service: the status shows the model.
    let model = wait_for(
        "the status to show the learned model",
        Duration::from_secs(120),
        || {
            let protections = protections.clone();
            async move {
                let status = protections.get("bank").await?.status;
                let model = status.as_ref().and_then(|s| s.model.clone());
                if let Some(model) = model.filter(|m| m.requests >= 12 && m.endpoints >= 2) {
                    return Ok(Some(model));
                }
                anyhow::bail!("status {:?}", status.map(|s| (s.model, s.conditions)))
            }
        },
    )
    .await
    .unwrap();
    println!(
        "learned model in the status: {model:?} ({:.0?} since the start)",
        started.elapsed()
    );

    // --- Enforce: the rule (accepted by the webhook) blocks a transfer without the balance
    // lookup, sent to the ClusterIP; an honest transfer passes.
    rules
        .create(
            &PostParams::default(),
            &serde_json::from_value(sequence_rule("GET /api/v1/accounts/{account_id}/balance"))
                .unwrap(),
        )
        .await
        .unwrap();
    protections
        .patch(
            "bank",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "mode": "Enforce" } })),
        )
        .await
        .unwrap();
    let attacker = &directory.customers[10];
    let victim_account = directory.customers[11].accounts[0];
    let attacker_token = login(&base, attacker).await;
    let transfer = serde_json::json!({
        "fromAccount": attacker.accounts[0].to_string(),
        "toAccount": victim_account.to_string(),
        "amount": 5,
    });
    wait_for(
        "a transfer without a balance lookup to be blocked at the ClusterIP",
        Duration::from_secs(90),
        || {
            let transfer = transfer.clone();
            let token = attacker_token.clone();
            let base = base.clone();
            async move {
                let (status, body) = http_request(
                    "POST",
                    &format!("{base}/api/v1/transfers"),
                    Some(&token),
                    Some(transfer),
                    Duration::from_secs(10),
                )
                .await?;
                if status == 403 {
                    return Ok(Some(()));
                }
                anyhow::bail!("{status}: {body}")
            }
        },
    )
    .await
    .unwrap();
    let honest = &directory.customers[12];
    let honest_token = login(&base, honest).await;
    let (status, body) = request(
        "GET",
        &format!("{base}/api/v1/accounts/{}/balance", honest.accounts[0]),
        Some(&honest_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/transfers"),
        Some(&honest_token),
        Some(serde_json::json!({
            "fromAccount": honest.accounts[0].to_string(),
            "toAccount": victim_account.to_string(),
            "amount": 5,
        })),
    )
    .await;
    assert_eq!(status, 201, "an honest transfer after the balance: {body}");
    println!(
        "enforce verified: {:.0?} since the start",
        started.elapsed()
    );

    // --- Faults. Traffic keeps flowing to the ClusterIP throughout.
    let balance_url = format!(
        "{base}/api/v1/accounts/{}/balance",
        directory.customers[0].accounts[0]
    );

    // 1. An enforcer Pod deleted under traffic: the Deployment replaces it.
    let traffic = Traffic::start(balance_url.clone(), tokens[0].clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The current enforcer Pod (a change of the rendered config may have rolled the first).
    let current = wait_pods(&pods, enforcer_selector, 1, Duration::from_secs(120)).await;
    let old = current[0].metadata.name.clone().unwrap();
    let replaced_at = Instant::now();
    pods.delete(&old, &DeleteParams::default()).await.unwrap();
    let replacement = wait_pods(&pods, enforcer_selector, 1, Duration::from_secs(180)).await;
    let replaced_in = replaced_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, failed, failures) = traffic.stop().await;
    assert_ne!(replacement[0].metadata.name.as_deref(), Some(old.as_str()));
    println!(
        "enforcer Pod deleted under traffic: replaced and Ready in {replaced_in:.1?}; \
         {failed} of {sent} requests failed {failures:?}"
    );
    // The deleted Pod keeps serving (preStop sleep) until kube-proxy has moved to the new
    // one: without that, 4-8 requests of ~100 were refused here.
    assert_eq!(
        failed, 0,
        "requests failed while the enforcer Pod was replaced: {failures:?}"
    );
    // The new Pod adopts the merged model the leader persisted: during the fault only the
    // balance endpoint was called, so learning on its own it would know at most that one
    // operation; the merged model holds every endpoint the status lists (at least 2, waited
    // for above).
    let listed = protections
        .get("bank")
        .await
        .unwrap()
        .status
        .and_then(|s| s.model)
        .map_or(0, |m| usize::try_from(m.endpoints).unwrap_or(0));
    assert!(listed >= 2, "the status lists {listed} endpoints");
    let adopted = wait_for(
        "the replacement enforcer to adopt the merged model",
        Duration::from_secs(90),
        || {
            let pod = replacement[0].clone();
            async move {
                // `/v1/model` from inside the Pod's network namespace: the admin API answers
                // only loopback clients unless a token is configured.
                let view = pod_admin(&pod, "/v1/model").await?;
                let known = view["analyzer"]["endpoints"].as_array().map_or(0, Vec::len);
                if known >= listed {
                    return Ok(Some(known));
                }
                anyhow::bail!("{known} endpoints in /v1/model, the status lists {listed}")
            }
        },
    )
    .await
    .unwrap();
    println!("the replacement enforcer knows {adopted} endpoints (the status lists {listed})");
    // And it enforces.
    let (status, _) = request(
        "POST",
        &format!("{base}/api/v1/transfers"),
        Some(&attacker_token),
        Some(transfer.clone()),
    )
    .await;
    assert_eq!(
        status, 403,
        "the replacement enforcer must enforce the rule"
    );
    let model_after = protections
        .get("bank")
        .await
        .unwrap()
        .status
        .unwrap()
        .model
        .unwrap();
    assert!(
        model_after.requests >= model.requests,
        "the model shrank after the replacement: {model:?} -> {model_after:?}"
    );

    // 2. The leader killed during a reconcile (scaling to 3): the Service never points at
    // nothing, so every request to the ClusterIP succeeds.
    let traffic = Traffic::start(balance_url.clone(), tokens[1].clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = leases
        .get("ordo")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    protections
        .patch(
            "bank",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "enforcer": { "replicas": 3 } } })),
        )
        .await
        .unwrap();
    pods.delete(&leader, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let scaled_at = Instant::now();
    let three = wait_pods(&pods, enforcer_selector, 3, Duration::from_secs(240)).await;
    let new_leader = wait_for("a new leader", Duration::from_secs(120), || {
        let leases = leases.clone();
        let leader = leader.clone();
        async move {
            let holder = leases
                .get("ordo")
                .await?
                .spec
                .and_then(|s| s.holder_identity);
            Ok(holder.filter(|h| *h != leader))
        }
    })
    .await
    .unwrap();
    let (sent, failed, failures) = traffic.stop().await;
    println!(
        "leader {leader} killed during the scale to 3: new leader {new_leader}, 3 enforcers Ready \
         in {:.1?}; {failed} of {sent} requests failed {failures:?}",
        scaled_at.elapsed()
    );
    assert_eq!(
        failed, 0,
        "requests failed while the operator restarted: {failures:?}"
    );
    for pod in &three {
        assert_nonroot(pod);
        assert_read_only_root(pod.metadata.uid.as_deref().unwrap(), &["/tmp"]);
    }
    assert_no_restarts(&pods, enforcer_selector).await;

    // 3. Back to one enforcer, under traffic.
    let traffic = Traffic::start(balance_url.clone(), tokens[2].clone());
    protections
        .patch(
            "bank",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "enforcer": { "replicas": 1 } } })),
        )
        .await
        .unwrap();
    wait_pods(&pods, enforcer_selector, 1, Duration::from_secs(180)).await;
    let (sent, failed, failures) = traffic.stop().await;
    println!("scaled 3 → 1 under traffic: {failed} of {sent} requests failed {failures:?}");
    // Removed enforcers are taken out of the Service before they stop (readiness, then a
    // graceful drain), so scaling down loses no request.
    assert_eq!(
        failed, 0,
        "requests failed while the enforcers were scaled 3 → 1: {failures:?}"
    );
    // Nor did the enforcer left after the faults.
    assert_no_restarts(&pods, enforcer_selector).await;

    // --- The ApiProtection deleted: Service bank selects the app again, traffic reaches it
    // directly, the enforcers and bank-origin are gone.
    protections
        .delete("bank", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "Service bank to select the app again, without enforcers",
        Duration::from_secs(120),
        || {
            let services = services.clone();
            let pods = pods.clone();
            async move {
                let selector = services
                    .get("bank")
                    .await?
                    .spec
                    .unwrap_or_default()
                    .selector;
                let origin = services.get_opt("bank-origin").await?.is_some();
                let enforcers = pods
                    .list(&ListParams::default().labels(enforcer_selector))
                    .await?
                    .items
                    .len();
                let app = BTreeMap::from([("app".to_owned(), "bank".to_owned())]);
                if selector.as_ref() == Some(&app) && !origin && enforcers == 0 {
                    return Ok(Some(()));
                }
                anyhow::bail!("selector {selector:?}, origin {origin}, {enforcers} enforcer Pods")
            }
        },
    )
    .await
    .unwrap();
    // Directly to the app: the attack is no longer blocked (nothing checks it now).
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/transfers"),
        Some(&attacker_token),
        Some(transfer),
    )
    .await;
    assert_eq!(
        status, 201,
        "without the protection the app answers directly: {body}"
    );

    // The test's SequenceRule goes too, while the operator still runs: it is the test's own
    // object, not the release's, so helm would leave it behind (and the CRDs keep it).
    rules
        .delete("balance-before-transfer", &DeleteParams::default())
        .await
        .unwrap();

    // --- helm uninstall leaves no Ordo object. (The CRDs stay: helm never deletes what a
    // chart's crds/ directory installed.)
    helm.run(&[
        "uninstall",
        "ordo",
        "--namespace",
        &namespace,
        "--wait",
        "--timeout",
        "3m",
    ])
    .await
    .unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let roles: Api<Role> = Api::namespaced(client.clone(), &namespace);
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let left = wait_for(
        "no Ordo object after helm uninstall",
        Duration::from_secs(120),
        || async {
            // The release's objects (charts/ordo/templates: all named `ordo` or `ordo-*`, the
            // release being `ordo`), and what the operator made for ApiProtection bank; not
            // the app's own Pods and EndpointSlices, nor the namespace's default
            // ServiceAccount and kube-root-ca.crt.
            let found = [
                ("Deployment", names(&deployments).await?),
                ("Service", names(&services).await?),
                ("ConfigMap", names(&config_maps).await?),
                ("Secret", names(&secrets).await?),
                ("ServiceAccount", names(&accounts).await?),
                ("Role", names(&roles).await?),
                ("RoleBinding", names(&role_bindings).await?),
                ("PodDisruptionBudget", names(&budgets).await?),
                ("Lease", names(&leases).await?),
                ("EndpointSlice", names(&slices).await?),
                ("Pod", names(&pods).await?),
                ("ValidatingWebhookConfiguration", names(&webhooks).await?),
                ("ClusterRole", names(&cluster_roles).await?),
                ("ClusterRoleBinding", names(&cluster_bindings).await?),
            ];
            let ordo = [
                "ordo",
                "bank-enforcer",
                "bank-origin",
                "bank-model",
                "bank-protected",
            ];
            let mut left: Vec<String> = found
                .iter()
                .flat_map(|(kind, names)| {
                    names
                        .iter()
                        .filter(|n| ordo.iter().any(|prefix| n.starts_with(prefix)))
                        .map(move |n| format!("{kind}/{n}"))
                })
                .collect();
            // Every ApiProtection and SequenceRule of the namespace is the test's.
            left.extend(
                names(&protections_dyn)
                    .await?
                    .into_iter()
                    .map(|n| format!("ApiProtection/{n}")),
            );
            left.extend(
                names(&rules)
                    .await?
                    .into_iter()
                    .map(|n| format!("SequenceRule/{n}")),
            );
            if left.is_empty() {
                return Ok(Some(()));
            }
            anyhow::bail!("left: {left:?}")
        },
    )
    .await;
    left.unwrap();
    // The app still answers at its ClusterIP.
    login(&base, &directory.customers[1]).await;
    println!("whole scenario: {:.0?}", started.elapsed());
    diagnostics.passed();
}
