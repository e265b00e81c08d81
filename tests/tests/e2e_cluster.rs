//! End-to-end tests of the local control plane itself: the real release answers, the
//! controllers, the scheduler and kwok run Deployments, namespaces and RBAC keep tests apart,
//! CRDs install, and no process outlives its owner. Everything else in Ordo is tested on it.

// Test code throughout (helpers included): a panic is the failure report (see clippy.toml).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use ordo_tests::cluster::{self, K8S_VERSION, NODE_NAME};
use ordo_tests::e2e::{self, Diagnostics};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn api_server_and_kubectl_report_the_pinned_release() {
    let cluster = cluster::shared().await.unwrap();
    let diagnostics = Diagnostics::control_plane(cluster);
    let info = cluster
        .client()
        .await
        .unwrap()
        .apiserver_version()
        .await
        .unwrap();
    assert_eq!(info.git_version, K8S_VERSION);
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "36"));
    assert_eq!(info.git_tree_state, "clean");
    assert!(info.go_version.starts_with("go1."), "{}", info.go_version);

    let out = cluster
        .kubectl()
        .args(["version", "--output=json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(versions["clientVersion"]["gitVersion"], K8S_VERSION);
    assert_eq!(versions["serverVersion"]["gitVersion"], K8S_VERSION);
    diagnostics.passed();
}

#[tokio::test]
async fn a_deployment_becomes_available_on_the_kwok_node_and_is_garbage_collected() {
    let cluster = cluster::shared().await.unwrap();
    let client = cluster.client().await.unwrap();
    let ns = cluster.namespace("deployment").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);

    let deployment: Deployment = from_json(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{
                    "name": "web",
                    "image": "registry.example/web:1.0",
                    "ports": [{ "containerPort": 8080 }],
                }] },
            },
        },
    }));
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    // Available needs: the deployment and replicaset controllers (kube-controller-manager),
    // the scheduler binding each Pod to the Node, and kwok marking the Pods Running + Ready.
    e2e::wait_for(
        "Deployment web to have 3 available replicas",
        WAIT,
        || async {
            let status = deployments.get("web").await?.status.unwrap_or_default();
            let available = status.available_replicas == Some(3)
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Available" && c.status == "True");
            if available {
                return Ok(Some(()));
            }
            let pods = pods.list(&ListParams::default().labels("app=web")).await?;
            let phases: Vec<_> = pods
                .items
                .iter()
                .map(|p| {
                    (
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                    )
                })
                .collect();
            anyhow::bail!("status {status:?}; pods (node, phase) {phases:?}")
        },
    )
    .await
    .unwrap();

    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 3);
    let pod_cidr_prefix = "10.244.";
    for pod in &listed.items {
        let spec = pod.spec.as_ref().unwrap();
        let status = pod.status.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ip = status.pod_ip.as_deref().unwrap_or_default();
        assert!(
            ip.starts_with(pod_cidr_prefix),
            "pod IP {ip} outside {}",
            cluster::POD_CIDR
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        // ServiceAccount admission mounted a projected token (the enforcer will rely on it).
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        assert!(
            volumes
                .iter()
                .any(|v| v.name.starts_with("kube-api-access-")),
            "{volumes:?}"
        );
    }
    // The root CA publisher gives every namespace the cluster CA.
    let ca = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("kube-root-ca.crt")
        .await
        .unwrap();
    assert!(ca.data.unwrap()["ca.crt"].contains("BEGIN CERTIFICATE"));

    // Deleting the Deployment lets the garbage collector remove its ReplicaSet and Pods.
    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    e2e::wait_for(
        "the garbage collector to remove pods and replicasets",
        WAIT,
        || {
            let (pods, replica_sets) = (pods.clone(), replica_sets.clone());
            async move {
                let pods = pods.list(&ListParams::default()).await.unwrap().items;
                let sets = replica_sets
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items;
                if pods.is_empty() && sets.is_empty() {
                    return Ok(Some(()));
                }
                anyhow::bail!("{} pods and {} replicasets left", pods.len(), sets.len())
            }
        },
    )
    .await
    .unwrap();
    diagnostics.passed();
}

/// A client that authenticates with a bearer token instead of the admin certificate.
async fn client_with_token(cluster: &cluster::TestCluster, token: &str) -> Client {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
         certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\n\
         contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        cluster.server(),
        cluster.ca_cert_path().display()
    );
    let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn namespaces_keep_tests_apart_and_rbac_confines_service_account_tokens() {
    let cluster = cluster::shared().await.unwrap();
    let client = cluster.client().await.unwrap();
    let a = cluster.namespace("isolation").await.unwrap();
    let b = cluster.namespace("isolation").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &b);
    assert_ne!(a, b);
    assert!(
        a.starts_with("isolation-") && b.starts_with("isolation-"),
        "{a} {b}"
    );

    for ns in [&a, &b] {
        let cm: ConfigMap = from_json(json!({
            "metadata": { "name": "settings" },
            "data": { "owner": ns },
        }));
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let in_a = Api::<ConfigMap>::namespaced(client.clone(), &a);
    let settings = in_a.get("settings").await.unwrap();
    assert_eq!(settings.data.unwrap()["owner"], a);

    // A ServiceAccount of `a` allowed to read ConfigMaps in `a` only.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &a);
    accounts
        .create(
            &PostParams::default(),
            &from_json(json!({ "metadata": { "name": "reader" } })),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), &a)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "configmap-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }],
            })),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &a)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": a }],
            })),
        )
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![cluster.server().to_owned()]),
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();

    let reader = client_with_token(cluster, &token).await;
    let review = Api::<SelfSubjectReview>::all(reader.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{a}:reader").as_str())
    );
    let own = Api::<ConfigMap>::namespaced(reader.clone(), &a);
    assert_eq!(own.get("settings").await.unwrap().data.unwrap()["owner"], a);
    let other = Api::<ConfigMap>::namespaced(reader.clone(), &b)
        .get("settings")
        .await;
    match other {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("reading another namespace must be forbidden, got {other:?}"),
    }
    let write = own
        .create(
            &PostParams::default(),
            &from_json(json!({ "metadata": { "name": "x" } })),
        )
        .await;
    assert!(
        matches!(write, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{write:?}"
    );

    // Deleting one namespace (namespace controller) leaves the other untouched.
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(&a, &DeleteParams::default())
        .await
        .unwrap();
    e2e::wait_for("namespace a to be deleted", WAIT, || {
        let namespaces = namespaces.clone();
        let a = a.clone();
        async move {
            match namespaces.get_opt(&a).await? {
                None => Ok(Some(())),
                Some(ns) => anyhow::bail!("namespace {a} is {:?}", ns.status),
            }
        }
    })
    .await
    .unwrap();
    let settings_b = Api::<ConfigMap>::namespaced(client, &b)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(settings_b.data.unwrap()["owner"], b);
    diagnostics.passed();
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.ordo.dev
spec:
  group: harness.ordo.dev
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget, listKind: WidgetList }
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: { type: integer, minimum: 1 }
"#;

#[tokio::test]
async fn install_crds_applies_idempotently_and_the_schema_is_enforced() {
    let cluster = cluster::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("widgets.yaml"), WIDGET_CRD).unwrap();
    cluster.install_crds(dir.path()).await.unwrap();
    // Applying the same files again is a no-op, as when several tests install the CRDs.
    cluster.install_crds(dir.path()).await.unwrap();

    let ns = cluster.namespace("crds").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &ns);
    let gvk = GroupVersionKind::gvk("harness.ordo.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().await.unwrap(),
        &ns,
        &ApiResource::from_gvk(&gvk),
    );
    let widget = |name: &str, size: i64| -> DynamicObject {
        from_json(json!({
            "apiVersion": "harness.ordo.dev/v1",
            "kind": "Widget",
            "metadata": { "name": name },
            "spec": { "size": size },
        }))
    };
    widgets
        .create(&PostParams::default(), &widget("ok", 3))
        .await
        .unwrap();
    match widgets
        .create(&PostParams::default(), &widget("bad", 0))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.size"), "{}", status.message);
        }
        other => panic!("size 0 must be rejected, got {other:?}"),
    }

    let empty = tempfile::tempdir().unwrap();
    let err = cluster.install_crds(empty.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("no CustomResourceDefinition"),
        "{err:#}"
    );
    diagnostics.passed();
}

/// `/proc/<pid>` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn a_killed_owner_leaves_no_process_and_no_directory_behind() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordo-cluster"))
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pids = Vec::new();
    let mut dir = None;
    let mut kubeconfig = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while kubeconfig.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                panic!("ordo-cluster did not report ready ({err}); pids {pids:?}");
            }
        };
        if let Some(rest) = line.strip_prefix("ordo-cluster: pid ") {
            let (pid, name) = rest.split_once(' ').unwrap();
            pids.push((name.to_owned(), pid.parse::<u32>().unwrap()));
        } else if let Some(rest) = line.strip_prefix("ordo-cluster: directory ") {
            dir = Some(std::path::PathBuf::from(rest.split(' ').next().unwrap()));
        } else if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(path.to_owned());
        }
    }
    let dir = dir.unwrap();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok"
        ]
    );
    assert!(pids.iter().all(|&(_, pid)| process_alive(pid)), "{pids:?}");
    assert!(dir.join("kubeconfig").is_file());
    assert_eq!(kubeconfig.as_deref(), dir.join("kubeconfig").to_str());

    // SIGKILL: no destructor, no signal handler runs in the owner.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<_> = pids
            .iter()
            .filter(|&&(_, pid)| process_alive(pid))
            .collect();
        if alive.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still alive after 30 s: {alive:?}; directory exists: {}",
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
