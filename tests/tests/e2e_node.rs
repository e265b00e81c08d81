//! The ordo-enforcer image runs on the local cluster's real node (containerd + kubelet) as
//! the non-root user 65532.
//!
//! Ignored by default: it needs root, `tests/cluster/build-node.sh` (kubelet, containerd)
//! and `scripts/images` (the release image), which take far longer to build than the test
//! suite may. Run it with
//! `cargo test -p ordo-tests --test e2e_node -- --ignored`.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::PostParams;
use ordo_tests::cluster::{
    NodeOptions, Options, REAL_NODE_NAME, REAL_NODE_TAINT, TestCluster, binaries, node,
    workspace_root,
};

const IMAGE: &str = "ghcr.io/ordo-dev/ordo-enforcer";

fn enforcer_pod(version: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "enforcer" },
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

fn enforcer_config() -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "enforcer" },
        "data": { "config.yaml": "listen: 0.0.0.0:8080\nadmin:\n  listen: 0.0.0.0:9090\nupstream:\n  url: http://127.0.0.1:9\n" },
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

#[tokio::test]
#[ignore = "needs root, tests/cluster/build-node.sh and scripts/images; run with --ignored"]
async fn enforcer_image_runs_as_nonroot_on_the_real_node() {
    let version = env!("CARGO_PKG_VERSION");
    let archive = workspace_root().join("target/images/ordo-enforcer.oci.tar");
    assert!(
        archive.is_file(),
        "run scripts/images first: {} is missing",
        archive.display()
    );
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
    let client = cluster.client().await.unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &enforcer_config())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let created = pods
        .create(&PostParams::default(), &enforcer_pod(version))
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = pods.get("enforcer").await.unwrap();
        let status = pod.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if status.phase.as_deref() == Some("Running") && ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the enforcer Pod is not Running and Ready: {:?}; kubelet log:\n{}",
            status.container_statuses,
            cluster.log_tail("kubelet", 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let uids = pod_process_uids(&uid);
    // The sandbox (pause) and the enforcer.
    assert!(uids.len() >= 2, "{uids:?}");
    for line in &uids {
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(ids, ["65532"; 4], "{line}");
    }
}
