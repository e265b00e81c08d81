//! The ordo-enforcer image on the local cluster's real node (containerd + kubelet): it runs
//! as the non-root user 65532 under the Deployment's security settings, proxies traffic from
//! its Pod IP to an upstream outside the Pod, blocks an attack in Enforce mode, and refuses
//! its admin `/v1` API to a non-loopback client without a token; killed, it is restarted by the
//! kubelet and serves again.
//!
//! The image is assembled from the debug binary (`ordo_tests::e2e::debug_image`), so no
//! release build is needed; the node comes from `tests/cluster/build-node.sh`.
//!
//! Ignored by default: it needs root and the node build (kubelet, containerd), which takes
//! longer than the test suite may. Run it with
//! `cargo test -p ordo-tests --test e2e_node -- --ignored`.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::Api;
use kube::api::PostParams;
use ordo_tests::cluster::{
    NodeOptions, Options, REAL_NODE_NAME, REAL_NODE_TAINT, TestCluster, binaries, node,
};
use ordo_tests::e2e::{Diagnostics, debug_image, wait_for};
use ordo_tests::sim::bank::{Directory, RunningBank};

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

/// Uid lines of every process in the Pod's cgroups (found by the Pod's UID, which is unique).
fn pod_process_uids(pod_uid: &str) -> Vec<String> {
    let output = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup/pids",
            "-path",
            &format!("*pod{pod_uid}*"),
            "-name",
            "cgroup.procs",
        ])
        .output()
        .unwrap();
    let mut uids = Vec::new();
    for procs in String::from_utf8(output.stdout).unwrap().lines() {
        for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
                uids.push(line.to_owned());
            }
        }
    }
    uids
}

/// Pids in the Pod's cgroups whose command is `comm`.
fn pod_pids_named(pod_uid: &str, comm: &str) -> Vec<u32> {
    let output = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup/pids",
            "-path",
            &format!("*pod{pod_uid}*"),
            "-name",
            "cgroup.procs",
        ])
        .output()
        .unwrap();
    let mut pids = Vec::new();
    for procs in String::from_utf8(output.stdout).unwrap().lines() {
        for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if name.trim() == comm {
                pids.push(pid.parse().unwrap());
            }
        }
    }
    pids
}

/// One HTTP/1.1 request; returns the status and the body.
async fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
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
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(builder.body(body).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url}: no answer within 20s"))
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
#[ignore = "needs root and tests/cluster/build-node.sh; run with --ignored"]
async fn enforcer_image_serves_and_enforces_as_nonroot_on_the_real_node() {
    let version = env!("CARGO_PKG_VERSION");
    let archive = debug_image("ordo-enforcer").unwrap();
    let options = Options {
        node: Some(NodeOptions {
            bin_dir: node::default_node_bin_dir(),
            images: vec![archive],
        }),
    };
    let cluster = TestCluster::start_with_options(&binaries::default_bin_dir(), &options)
        .await
        .unwrap();
    let namespace = cluster.namespace("real-node").await.unwrap();
    let mut diagnostics = Diagnostics::new(&cluster, &namespace);
    for component in ["kubelet", "containerd"] {
        diagnostics.log(
            component,
            &cluster.dir().join("logs").join(format!("{component}.log")),
        );
    }
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
    let uid = created.metadata.uid.unwrap();

    let pod_ip = wait_for(
        "the enforcer Pod to be Running and Ready",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let status = pods.get("enforcer").await?.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if status.phase.as_deref() == Some("Running") && ready {
                    return Ok(status.pod_ip);
                }
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
    let uids = pod_process_uids(&uid);
    assert!(uids.len() >= 2, "{uids:?}");
    for line in &uids {
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(ids, [NONROOT; 4], "{line}");
    }

    // Traffic to the Pod IP goes through the enforcer to the upstream.
    let proxy = format!("http://{pod_ip}:8080");
    let customer = &directory.customers[0];
    let (status, body) = request(
        "POST",
        &format!("{proxy}/api/v1/login"),
        None,
        Some(serde_json::json!({ "username": customer.username, "password": customer.password })),
    )
    .await;
    assert_eq!(status, 200, "login through the enforcer: {body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let enforcers = pod_pids_named(&uid, "ordo-enforcer");
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
    let (status, body) = request(
        "POST",
        &format!("{proxy}/api/v1/login"),
        None,
        Some(serde_json::json!({ "username": customer.username, "password": customer.password })),
    )
    .await;
    assert_eq!(status, 200, "login after the restart: {body}");

    diagnostics.passed();
}
