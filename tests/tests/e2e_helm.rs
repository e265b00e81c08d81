//! End-to-end tests of the Helm chart `charts/ordo` with a real `helm` (built from the Go
//! module proxy by `tests/cluster/build-helm.sh`) against the real local control plane:
//! lint, the CRDs it ships, the values schema, a server-side dry run of everything it renders,
//! and a real install whose operator Deployment becomes Available (kwok plays the kubelet),
//! with its RBAC, webhook wiring and certificate checked, kept across an upgrade, and removed
//! by uninstall.
//!
//! When helm is not built these tests fail (they do not skip) and say how to build it.

// The helpers below are test code too: a panic there is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use ordo_tests::cluster::{self, TestCluster};
use ordo_tests::e2e::{self, Diagnostics, or_seen, yaml_documents};
use ordo_tests::helm::{self, COMMAND_TIMEOUT, Helm};
use tokio::io::AsyncWriteExt;

/// Longest the operator Deployment may take to become Available after install.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest the operator run by `operator_works_with_exactly_the_chart_rbac` may take per step.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(120);

fn chart_dir() -> PathBuf {
    helm::chart_dir()
}

fn pinned_helm_version() -> String {
    helm::pinned_version().unwrap()
}

fn helm_path() -> PathBuf {
    helm::path().unwrap()
}

/// Value sets every check runs with: the defaults and the variants that change what renders.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    (
        "single replica",
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
        ],
    ),
    (
        "webhook off",
        &[
            "--set",
            "webhook.enabled=false",
            "--set",
            "podDisruptionBudget.enabled=false",
        ],
    ),
    (
        "tuned",
        &[
            "--set",
            "webhook.failurePolicy=Ignore",
            "--set",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--set",
            "enforcer.image.tag=0.1.1",
            "--set",
            "operator.logFormat=text",
            "--set",
            "fullnameOverride=ordo-ctl",
        ],
    ),
];

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[tokio::test]
async fn helm_reports_the_pinned_release() {
    let helm = Helm::new().unwrap();
    let version = helm
        .run(&["version", "--template", "{{ .Version }}"])
        .await
        .unwrap();
    assert_eq!(version, pinned_helm_version());
}

#[tokio::test]
async fn chart_lints_strictly_with_every_value_set() {
    let helm = Helm::new().unwrap();
    let chart = chart_dir();
    for (name, args) in VALUE_SETS.iter().chain(&[
        ("cert-manager", &["--set", "certManager.enabled=true"][..]),
        (
            "service monitor",
            &["--set", "serviceMonitor.enabled=true"][..],
        ),
        ("one namespace", &["--set", "watchNamespace=apps"][..]),
    ]) {
        let mut full = vec!["lint", "--strict", chart.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = helm.run(&full).await.unwrap();
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{name}: {out}"
        );
    }
}

/// The CRDs helm installs from the chart (its crds/ is a symlink to the repository's
/// generated crds/, which helm lint, package and install follow) are exactly the generated
/// ones, also in a packaged chart.
#[tokio::test]
async fn chart_ships_exactly_the_generated_crds() {
    let helm = Helm::new().unwrap();
    let crds_dir = cluster::workspace_root().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let generated: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| yaml_documents(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    assert_eq!(
        generated.len(),
        2,
        "crds/ should hold ApiProtection and SequenceRule"
    );

    let out_dir = tempfile::tempdir().unwrap();
    helm.run(&[
        "package",
        chart_dir().to_str().unwrap(),
        "--destination",
        out_dir.path().to_str().unwrap(),
    ])
    .await
    .unwrap();
    let package = std::fs::read_dir(out_dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for chart in [chart_dir(), package] {
        // `helm template --include-crds` renders each CRD file as its own document, as
        // `helm install` reads them.
        let rendered = helm
            .run(&[
                "template",
                "ordo",
                chart.to_str().unwrap(),
                "--include-crds",
            ])
            .await
            .unwrap();
        let docs = yaml_documents(&rendered).unwrap();
        let shipped = find(&docs, "CustomResourceDefinition");
        let name = |d: &serde_json::Value| {
            d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let mut shipped_names: Vec<String> = shipped.iter().map(|d| name(d)).collect();
        let mut generated_names: Vec<String> = generated.iter().map(name).collect();
        shipped_names.sort();
        generated_names.sort();
        assert_eq!(shipped_names, generated_names, "{}", chart.display());
        for crd in &generated {
            let from_chart = shipped.iter().find(|d| name(d) == name(crd)).unwrap();
            assert!(
                *from_chart == crd,
                "{}: CRD {} differs from crds/",
                chart.display(),
                name(crd)
            );
        }
    }
}

/// Bad values fail at `helm template` and `helm install` with a message naming the value,
/// before anything reaches the cluster.
#[tokio::test]
async fn invalid_values_are_rejected_by_the_schema() {
    let helm = Helm::new().unwrap();
    let chart = chart_dir();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=0"], "/replicaCount"),
        (
            &["--set", "webhook.failurePolicy=Sometimes"],
            "/webhook/failurePolicy",
        ),
        (
            &["--set", "webhook.timeoutSeconds=31"],
            "/webhook/timeoutSeconds",
        ),
        (&["--set", "leaderElection.enabled=false"], "/replicaCount"),
        (&["--set", "image.digest=latest"], "/image/digest"),
        (
            &["--set", "podSecurityContext.runAsNonRoot=false"],
            "/podSecurityContext/runAsNonRoot",
        ),
        (
            &["--set", "securityContext.allowPrivilegeEscalation=true"],
            "/securityContext/allowPrivilegeEscalation",
        ),
        (&["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (
            &["--set", "operator.httpsPort=70000"],
            "/operator/httpsPort",
        ),
        (
            &["--set", "resources.limits.memory=lots"],
            "/resources/limits/memory",
        ),
        (
            &["--set", "certManager.issuerRef.kind=Issuer"],
            "/certManager/issuerRef",
        ),
        (
            &["--set", "watchNamespace=Not_A_Namespace"],
            "/watchNamespace",
        ),
        (&["--set", "replicas=3"], "replicas"),
        (&["--set-string", "replicaCount=2"], "/replicaCount"),
    ];
    for (args, path) in cases {
        let mut full = vec!["template", "ordo", chart.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = helm.output(&full).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(path),
            "{args:?}: expected a schema error naming {path}, got:\n{stderr}"
        );
    }

    // The same at install time against the cluster: nothing is created.
    let cluster = cluster::shared().await.unwrap();
    let namespace = cluster.namespace("helm-invalid").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let helm = Helm::for_cluster(cluster).unwrap();
    let out = helm
        .output(&[
            "install",
            "bad",
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--set",
            "replicaCount=0",
        ])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/replicaCount"));
    let releases = helm
        .run(&["list", "--all", "--namespace", &namespace, "--short"])
        .await
        .unwrap();
    assert_eq!(releases.trim(), "", "a failed install left a release");
    let client = cluster.client().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client, &namespace);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    diagnostics.passed();
}

/// Everything the chart renders, CRDs included, is accepted by the real API server
/// (`kubectl apply --server-side --dry-run=server`): schemas, CEL cost limits, RBAC rules,
/// the webhook configuration.
#[tokio::test]
async fn rendered_chart_passes_a_server_side_dry_run() {
    let cluster = cluster::shared().await.unwrap();
    let namespace = cluster.namespace("helm-dry-run").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let helm = Helm::for_cluster(cluster).unwrap();
    let chart = chart_dir();
    let watch = format!("watchNamespace={namespace}");
    let one_namespace: &[&str] = &["--set", &watch];
    for (name, args) in VALUE_SETS
        .iter()
        .copied()
        .chain([("one namespace", one_namespace)])
    {
        // Its own release name: nothing clashes with the install test's cluster-wide objects.
        let mut full = vec![
            "template",
            "dryrun",
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--include-crds",
        ];
        full.extend_from_slice(args);
        let rendered = helm.run(&full).await.unwrap();
        let docs = yaml_documents(&rendered).unwrap();
        assert_eq!(find(&docs, "CustomResourceDefinition").len(), 2, "{name}");
        assert_eq!(find(&docs, "Deployment").len(), 1, "{name}");

        let mut kubectl = tokio::process::Command::from(cluster.kubectl());
        kubectl
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=helm-dry-run",
                "-n",
                &namespace,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = kubectl.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(rendered.as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: the API server rejected the rendered chart:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One "(server dry run)" line per object.
        assert_eq!(
            stdout.matches("(server dry run)").count(),
            docs.len(),
            "{name}:\n{stdout}"
        );
    }
    diagnostics.passed();
}

/// A real `helm install`: the operator Deployment becomes Available, the webhook is wired to
/// both kinds with the chart's CA, the RBAC grants what the operator calls and nothing
/// broader, an upgrade keeps the certificate, and uninstall removes the operator.
#[tokio::test]
async fn helm_install_runs_the_operator_and_upgrade_keeps_its_certificate() {
    let cluster = cluster::shared().await.unwrap();
    let namespace = cluster.namespace("helm-install").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let helm = Helm::for_cluster(cluster).unwrap();
    let chart = chart_dir();
    let client = cluster.client().await.unwrap();

    // The webhook only for this test's namespace: other tests of this binary create Ordo
    // objects in theirs while this release's (fake) operator answers nobody.
    let only_here = format!(
        r#"webhook.namespaceSelector={{"matchLabels":{{"kubernetes.io/metadata.name":"{namespace}"}}}}"#
    );
    let notes = helm
        .run(&[
            "install",
            "ordo",
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--wait",
            "--timeout",
            "3m",
            "--set-json",
            &only_here,
        ])
        .await
        .unwrap();
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains("kind: ApiProtection"),
        "NOTES.txt should show an ApiProtection to apply:\n{notes}"
    );
    assert!(notes.contains("rollout status deployment/ordo"), "{notes}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = wait_available(&deployments, "ordo").await;
    let status = deployment.status.unwrap();
    assert_eq!(status.ready_replicas, Some(2));
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    let env = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        env("ORDO_ENFORCER_IMAGE"),
        "ghcr.io/ordo-dev/ordo-enforcer:0.1.0"
    );
    assert_eq!(
        env("ORDO_REPORT_URL"),
        format!("https://ordo-reports.{namespace}.svc:443")
    );
    assert_eq!(env("ORDO_REPORT_SERVICE"), "ordo-reports");
    assert!(
        container.env.iter().flatten().any(|e| e.name == "POD_IP"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .is_some_and(|f| f.field_path == "status.podIP")),
        "POD_IP must come from status.podIP"
    );
    assert_eq!(env("ORDO_LEADER_ELECTION"), "true");

    // The CRDs came with the chart and are served.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for name in ["apiprotections.ordo.dev", "sequencerules.ordo.dev"] {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} was not installed: {e}"));
    }

    // The webhook trusts exactly the CA in the Secret the operator serves from.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get("ordo-tls").await.unwrap();
    let data = secret.data.clone().unwrap();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(
            data.get(key).is_some_and(|v| !v.0.is_empty()),
            "Secret ordo-tls has no {key}"
        );
    }
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = webhooks.get("ordo").await.unwrap();
    let hooks = webhook.webhooks.clone().unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in &hooks {
        assert_eq!(
            hook.client_config.ca_bundle.as_ref(),
            data.get("ca.crt"),
            "{}",
            hook.name
        );
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!(
            (service.name.as_str(), service.namespace.as_str()),
            ("ordo", namespace.as_str())
        );
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let ports: Vec<String> = services
        .get("ordo")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(ports, ["https", "metrics"]);
    // Reports go to a Service without a selector: only the leader's EndpointSlice backs it.
    let reports = services.get("ordo-reports").await.unwrap().spec.unwrap();
    assert_eq!(
        reports.selector, None,
        "the report Service must not select every replica"
    );
    assert_eq!(
        reports
            .ports
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect::<Vec<_>>(),
        [("https".to_owned(), 443)]
    );

    // Both kinds go through the webhook: the operator pods are kwok's fakes, nobody answers
    // on the Service, and failurePolicy Fail refuses the objects naming the webhook.
    for (plural, kind, spec, hook) in [
        (
            "apiprotections",
            "ApiProtection",
            serde_json::json!({"target": {"service": "bank-api", "port": 8080}}),
            "apiprotections.validate.ordo.dev",
        ),
        (
            "sequencerules",
            "SequenceRule",
            serde_json::json!({"protectionRef": {"name": "bank-api"}, "maxRepeat": {"operation": "POST /api/v1/transferFunds", "count": 3}}),
            "sequencerules.validate.ordo.dev",
        ),
    ] {
        let resource = ApiResource {
            group: "ordo.dev".into(),
            version: "v1alpha1".into(),
            api_version: "ordo.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "ordo.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "through-the-webhook"},
            "spec": spec,
        }))
        .unwrap();
        let err = api
            .create(&PostParams::default(), &object)
            .await
            .expect_err("the webhook should be called");
        assert!(err.to_string().contains(hook), "{kind}: {err}");
    }

    assert_rbac(&client, &namespace).await;

    // helm upgrade keeps the certificate (lookup of the existing Secret): the webhook's
    // caBundle and the enforcers' trust survive upgrades.
    helm.run(&[
        "upgrade",
        "ordo",
        chart.to_str().unwrap(),
        "--namespace",
        &namespace,
        "--wait",
        "--timeout",
        "3m",
        "--reuse-values",
        "--set",
        "operator.logFormat=text",
    ])
    .await
    .unwrap();
    let after = secrets.get("ordo-tls").await.unwrap().data.unwrap();
    assert_eq!(after, data, "the upgrade re-issued the certificate");
    let hooks_after = webhooks.get("ordo").await.unwrap().webhooks.unwrap();
    assert!(
        hooks_after
            .iter()
            .all(|h| h.client_config.ca_bundle.as_ref() == data.get("ca.crt"))
    );
    let upgraded = wait_available(&deployments, "ordo").await;
    let container = &upgraded.spec.unwrap().template.spec.unwrap().containers[0];
    let log_format = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ORDO_LOG_FORMAT")
        .unwrap();
    assert_eq!(log_format.value.as_deref(), Some("text"));

    // Uninstall removes the operator and its cluster-wide objects; the CRDs (and so every
    // user's ApiProtection) stay, as Helm does for crds/.
    helm.run(&[
        "uninstall",
        "ordo",
        "--namespace",
        &namespace,
        "--wait",
        "--timeout",
        "2m",
    ])
    .await
    .unwrap();
    assert!(deployments.get_opt("ordo").await.unwrap().is_none());
    assert!(webhooks.get_opt("ordo").await.unwrap().is_none());
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("ordo")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        crds.get_opt("apiprotections.ordo.dev")
            .await
            .unwrap()
            .is_some()
    );
    diagnostics.passed();
}

async fn wait_available(deployments: &Api<Deployment>, name: &str) -> Deployment {
    e2e::wait_for(
        &format!("Deployment {name} to be Available"),
        AVAILABLE_TIMEOUT,
        || async {
            let deployment = deployments.get(name).await?;
            let generation = deployment.metadata.generation;
            let status = deployment.status.clone().unwrap_or_default();
            let available = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let settled = status.observed_generation == generation
                && status.updated_replicas == status.replicas
                && status.ready_replicas == status.replicas;
            if available && settled {
                Ok(Some(deployment))
            } else {
                Err(anyhow::anyhow!("status {status:?}"))
            }
        },
    )
    .await
    .unwrap()
}

/// A permission asked of the API server's authorizer: (verb, group, resource[/subresource],
/// object name, namespace; "" for cluster-scoped).
type Permission<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str);

/// Whether ServiceAccount `namespace/account` may do `permission` (SubjectAccessReview).
async fn may(client: &Client, namespace: &str, account: &str, permission: Permission<'_>) -> bool {
    let (verb, group, resource, name, ns) = permission;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{namespace}:{account}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                name: name.map(Into::into),
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

async fn assert_permissions(
    client: &Client,
    namespace: &str,
    account: &str,
    allowed: &[Permission<'_>],
    denied: &[Permission<'_>],
) {
    for (expected, table) in [(true, allowed), (false, denied)] {
        for permission in table {
            assert_eq!(
                may(client, namespace, account, *permission).await,
                expected,
                "{namespace}/{account} {permission:?}: expected allowed={expected}"
            );
        }
    }
}

/// Everything the operator calls is allowed in any namespace; nothing broader is (no Secrets,
/// Pods, RBAC, updates it never makes; the Lease only in the release namespace).
async fn assert_rbac(client: &Client, namespace: &str) {
    let anywhere = "some-app-namespace";
    let allowed: &[Permission] = &[
        ("watch", "ordo.dev", "apiprotections", None, anywhere),
        ("patch", "ordo.dev", "apiprotections", None, anywhere),
        ("patch", "ordo.dev", "apiprotections/status", None, anywhere),
        (
            "update",
            "ordo.dev",
            "apiprotections/finalizers",
            None,
            anywhere,
        ),
        ("list", "ordo.dev", "sequencerules", None, anywhere),
        ("patch", "ordo.dev", "sequencerules/status", None, anywhere),
        ("create", "", "services", None, anywhere),
        ("patch", "", "services", None, anywhere),
        ("delete", "", "services", None, anywhere),
        ("create", "", "configmaps", None, anywhere),
        ("get", "", "configmaps", None, anywhere),
        ("create", "", "serviceaccounts", None, anywhere),
        ("patch", "apps", "deployments", None, anywhere),
        ("watch", "apps", "deployments", None, anywhere),
        ("create", "authentication.k8s.io", "tokenreviews", None, ""),
        ("create", "events.k8s.io", "events", None, anywhere),
        ("patch", "events.k8s.io", "events", None, anywhere),
        ("create", "coordination.k8s.io", "leases", None, namespace),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some("ordo"),
            namespace,
        ),
        ("get", "", "services", Some("ordo-reports"), namespace),
        (
            "create",
            "discovery.k8s.io",
            "endpointslices",
            None,
            namespace,
        ),
        (
            "patch",
            "discovery.k8s.io",
            "endpointslices",
            Some("ordo-reports-leader"),
            namespace,
        ),
    ];
    let denied: &[Permission] = &[
        ("patch", "", "pods", None, namespace),
        (
            "patch",
            "discovery.k8s.io",
            "endpointslices",
            Some("kubernetes"),
            namespace,
        ),
        (
            "patch",
            "discovery.k8s.io",
            "endpointslices",
            Some("ordo-reports-leader"),
            anywhere,
        ),
        (
            "delete",
            "discovery.k8s.io",
            "endpointslices",
            None,
            namespace,
        ),
        ("get", "", "secrets", None, anywhere),
        ("list", "", "secrets", None, namespace),
        ("list", "", "pods", None, anywhere),
        ("update", "ordo.dev", "apiprotections", None, anywhere),
        ("delete", "ordo.dev", "apiprotections", None, anywhere),
        ("update", "ordo.dev", "sequencerules/status", None, anywhere),
        ("patch", "ordo.dev", "sequencerules", None, anywhere),
        ("update", "", "services", None, anywhere),
        (
            "create",
            "rbac.authorization.k8s.io",
            "roles",
            None,
            anywhere,
        ),
        ("create", "", "serviceaccounts/token", None, anywhere),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some("ordo"),
            anywhere,
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some("kube-scheduler"),
            namespace,
        ),
        (
            "delete",
            "coordination.k8s.io",
            "leases",
            Some("ordo"),
            namespace,
        ),
        ("create", "", "events", None, anywhere),
    ];
    assert_permissions(client, namespace, "ordo", allowed, denied).await;
}

/// With `watchNamespace` the operator's rights shrink to that namespace (a Role), its webhook
/// only sees it, and it is told to watch only it.
#[tokio::test]
async fn helm_install_scoped_to_one_namespace_grants_only_that_namespace() {
    let cluster = cluster::shared().await.unwrap();
    let namespace = cluster.namespace("helm-scoped").await.unwrap();
    let watched = cluster.namespace("helm-watched").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let helm = Helm::for_cluster(cluster).unwrap();
    let client = cluster.client().await.unwrap();
    let watch = format!("watchNamespace={watched}");
    helm.run(&[
        "install",
        "scoped",
        chart_dir().to_str().unwrap(),
        "--namespace",
        &namespace,
        "--wait",
        "--timeout",
        "3m",
        "--set",
        &watch,
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
    ])
    .await
    .unwrap();
    let deployment =
        wait_available(&Api::namespaced(client.clone(), &namespace), "scoped-ordo").await;
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    let env = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env("ORDO_WATCH_NAMESPACE").as_deref(),
        Some(watched.as_str())
    );
    assert_eq!(env("ORDO_LEADER_ELECTION").as_deref(), Some("false"));

    let other = "some-app-namespace";
    let allowed: &[Permission] = &[
        ("watch", "ordo.dev", "apiprotections", None, &watched),
        ("patch", "ordo.dev", "apiprotections/status", None, &watched),
        ("create", "", "services", None, &watched),
        ("patch", "apps", "deployments", None, &watched),
        ("create", "events.k8s.io", "events", None, &watched),
        ("create", "authentication.k8s.io", "tokenreviews", None, ""),
    ];
    let denied: &[Permission] = &[
        ("watch", "ordo.dev", "apiprotections", None, ""),
        ("watch", "ordo.dev", "apiprotections", None, other),
        ("create", "", "services", None, other),
        ("patch", "apps", "deployments", None, other),
        ("create", "events.k8s.io", "events", None, other),
        // No leader election asked for, so no Lease rights.
        ("create", "coordination.k8s.io", "leases", None, &namespace),
    ];
    assert_permissions(&client, &namespace, "scoped-ordo", allowed, denied).await;

    let webhook = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get("scoped-ordo")
        .await
        .unwrap();
    for hook in webhook.webhooks.unwrap() {
        let labels = hook
            .namespace_selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/metadata.name"),
            Some(&watched),
            "{}",
            hook.name
        );
    }
    helm.run(&[
        "uninstall",
        "scoped",
        "--namespace",
        &namespace,
        "--wait",
        "--timeout",
        "2m",
    ])
    .await
    .unwrap();
    diagnostics.passed();
}

/// A kubeconfig that authenticates as ServiceAccount `namespace/account` with a fresh token.
async fn service_account_kubeconfig(
    cluster: &TestCluster,
    client: &Client,
    namespace: &str,
    account: &str,
    dir: &Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![cluster.server().to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster.server(),
            "certificate-authority": cluster.ca_cert_path(),
        }}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": "test",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// The chart's RBAC is enough for the real operator: `ordo-operator`, running with a token of
/// the chart's ServiceAccount (as its pod would), takes a Service over for an ApiProtection,
/// reports Ready with its Lease, and on deletion restores the Service, without a single
/// request refused by the authorizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_works_with_exactly_the_chart_rbac() {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::{DeleteParams, ObjectMeta};
    use ordo_operator::crd::ApiProtection;

    let cluster = cluster::shared().await.unwrap();
    let release_namespace = cluster.namespace("helm-rbac").await.unwrap();
    let app_namespace = cluster.namespace("helm-rbac-app").await.unwrap();
    let mut diagnostics = Diagnostics::new(cluster, &app_namespace);
    let helm = Helm::for_cluster(cluster).unwrap();
    let client = cluster.client().await.unwrap();
    let binary = tokio::task::spawn_blocking(e2e::binaries)
        .await
        .unwrap()
        .unwrap()
        .join("ordo-operator");
    helm.run(&[
        "install",
        "rbac",
        chart_dir().to_str().unwrap(),
        "--namespace",
        &release_namespace,
        "--wait",
        "--timeout",
        "3m",
        "--set",
        "replicaCount=1",
        "--set",
        "webhook.enabled=false",
    ])
    .await
    .unwrap();

    // The application: a Service the operator will take over.
    let selector = std::collections::BTreeMap::from([("app".to_owned(), "bank".to_owned())]);
    let services: Api<Service> = Api::namespaced(client.clone(), &app_namespace);
    let service = Service {
        metadata: ObjectMeta {
            name: Some("bank-api".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &app_namespace);
    let protection: ApiProtection = serde_json::from_value(serde_json::json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": {"name": "bank-api"},
        "spec": {"target": {"service": "bank-api", "port": 8080}, "routing": "Takeover"},
    }))
    .unwrap();
    protections
        .create(&PostParams::default(), &protection)
        .await
        .unwrap();

    // The operator, as the chart's ServiceAccount, with the chart's Lease settings.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(
        cluster,
        &client,
        &release_namespace,
        "rbac-ordo",
        dir.path(),
    )
    .await;
    let log_path = diagnostics.new_log("operator").unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let health_port = free_port();
    let https_port = free_port();
    // The chart's serving certificate, so the leader publishes itself behind the report Service.
    let tls = Api::<Secret>::namespaced(client.clone(), &release_namespace)
        .get("rbac-ordo-tls")
        .await
        .unwrap()
        .data
        .unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &tls["tls.crt"].0).unwrap();
    std::fs::write(&key, &tls["tls.key"].0).unwrap();
    let operator = e2e::Proc::spawn(
        std::process::Command::new(&binary)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .args(["--https-addr", &format!("127.0.0.1:{https_port}")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args([
                "--report-service",
                "rbac-ordo-reports",
                "--pod-ip",
                "10.255.0.9",
            ])
            .args([
                "--lease-namespace",
                &release_namespace,
                "--lease-name",
                "rbac-ordo",
            ])
            .args([
                "--log-format",
                "text",
                "--enforcer-image",
                "ordo-enforcer:e2e",
            ]),
        &log_path,
    )
    .unwrap();
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    e2e::wait_for(
        "the ApiProtection to become Ready under the chart's RBAC",
        OPERATOR_TIMEOUT,
        || async {
            let conditions = protections
                .get("bank-api")
                .await?
                .status
                .unwrap_or_default()
                .conditions;
            or_seen(
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(()),
                || format!("conditions {conditions:?}"),
            )
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err:#}; operator log:\n{}", log_text()));
    let taken_over = services.get("bank-api").await.unwrap();
    assert_ne!(
        taken_over.spec.unwrap().selector,
        Some(selector.clone()),
        "Takeover did not re-point the Service"
    );
    assert!(services.get_opt("bank-api-origin").await.unwrap().is_some());
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        &release_namespace,
    )
    .get("rbac-ordo")
    .await
    .unwrap();
    assert!(
        lease.spec.unwrap().holder_identity.is_some(),
        "the operator holds no Lease"
    );
    // The leader wrote the report Service's only endpoint with the chart's RBAC.
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
        client.clone(),
        &release_namespace,
    );
    let slice = e2e::wait_for("the leader's EndpointSlice", OPERATOR_TIMEOUT, || async {
        let slice = slices.get_opt("rbac-ordo-reports-leader").await?;
        or_seen(slice, || {
            "no EndpointSlice rbac-ordo-reports-leader".to_owned()
        })
    })
    .await
    .unwrap_or_else(|err| panic!("{err:#}; operator log:\n{}", log_text()));
    let endpoints = slice.endpoints.unwrap_or_default();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addresses, ["10.255.0.9"]);
    assert_eq!(
        slice.ports.unwrap_or_default()[0].port,
        Some(i32::from(https_port))
    );

    protections
        .delete("bank-api", &DeleteParams::default())
        .await
        .unwrap();
    e2e::wait_for(
        "the ApiProtection to be cleaned up",
        OPERATOR_TIMEOUT,
        || async {
            match protections.get_opt("bank-api").await? {
                None => Ok(Some(())),
                Some(p) => anyhow::bail!(
                    "bank-api still exists (deletionTimestamp {:?}, finalizers {:?})",
                    p.metadata.deletion_timestamp,
                    p.metadata.finalizers
                ),
            }
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err:#}; operator log:\n{}", log_text()));
    let restored = services.get("bank-api").await.unwrap();
    assert_eq!(
        restored.spec.unwrap().selector,
        Some(selector),
        "the original selector was not restored"
    );

    drop(operator);
    let text = log_text();
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "the operator was refused something by the chart's RBAC:\n{text}"
    );
    helm.run(&[
        "uninstall",
        "rbac",
        "--namespace",
        &release_namespace,
        "--wait",
        "--timeout",
        "2m",
    ])
    .await
    .unwrap();
    diagnostics.passed();
}

#[test]
fn helm_path_follows_the_cache_layout_of_build_helm_sh() {
    let path = helm_path();
    if std::env::var_os("ORDO_HELM").is_none() {
        let expected_tail = Path::new(&format!("helm-{}", pinned_helm_version())).join("bin/helm");
        assert!(path.ends_with(&expected_tail), "{}", path.display());
    }
    assert!(pinned_helm_version().starts_with("v3."));
}
