//! End-to-end tests of the operator on the real local control plane (no mocks): the
//! `ordo-operator` binary runs as a process against `ordo_tests::cluster`, one operator per
//! test restricted to the test's namespace; the enforcer is the real `ordo-enforcer` binary.

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use ordo_enforcer::report::{
    IncidentReport, ReportClient, ReportConfig, ReportError, ReportSource, RuleCounters,
    TrafficCounters,
};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_tests::cluster::TestCluster;
use ordo_tests::e2e::{self, Diagnostics, Proc, or_seen, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Support: certificates, the operator process, objects.
// ---------------------------------------------------------------------------------------

/// A CA and a serving certificate for 127.0.0.1 (the operator's HTTPS server).
struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> anyhow::Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir()?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ordo-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ordo-operator");
    let cert = params.signed_by(&key, &issuer)?;
    let paths = (
        dir.path().join("ca.crt"),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        ca: paths.0,
        cert: paths.1,
        key: paths.2,
        _dir: dir,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Operator {
    proc: Proc,
    https_port: u16,
}

/// Starts `ordo-operator` for one namespace, its output in `log`.
fn start_operator(
    cluster: &TestCluster,
    namespace: &str,
    pki: &Pki,
    https_port: u16,
    extra: &[&str],
    log: &Path,
) -> anyhow::Result<Operator> {
    let bin = e2e::binaries()?.join("ordo-operator");
    let health = free_port()?;
    let proc = Proc::spawn(
        Command::new(bin)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("RUST_LOG", "info,ordo_operator=debug")
            .args(["--https-addr", &format!("127.0.0.1:{https_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health}")])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .args(["--report-url", &format!("https://127.0.0.1:{https_port}")])
            .arg("--report-ca-file")
            .arg(&pki.ca)
            .args([
                "--report-interval-seconds",
                "1",
                "--status-refresh-seconds",
                "1",
            ])
            .args([
                "--watch-namespace",
                namespace,
                "--lease-namespace",
                namespace,
            ])
            .args([
                "--enforcer-image",
                "ordo-enforcer:e2e",
                "--log-format",
                "text",
            ])
            .args(extra),
        log,
    )
    .context("starting ordo-operator")?;
    Ok(Operator { proc, https_port })
}

fn original_selector() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_owned(), "bank".to_owned()),
        ("tier".to_owned(), "api".to_owned()),
    ])
}

fn enforcer_selector(protection: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "ordo-enforcer".to_owned(),
        ),
        ("ordo.dev/protection".to_owned(), protection.to_owned()),
    ])
}

async fn create_app_service(client: &Client, namespace: &str) -> anyhow::Result<Service> {
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "bank-api", "labels": { "app": "bank" } },
        "spec": {
            "selector": original_selector(),
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }]
        }
    }))?;
    Ok(Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await?)
}

fn protection(name: &str, routing: &str, mode: &str) -> anyhow::Result<ApiProtection> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": { "name": name },
        "spec": {
            "target": { "service": "bank-api", "port": 80 },
            "mode": mode,
            "routing": routing,
            "learning": { "minRequests": 30, "minSessions": 3 },
            "enforcer": { "replicas": 1 }
        }
    }))?)
}

fn requires_rule(
    name: &str,
    protection: &str,
    priority: i32,
    operation: &str,
) -> anyhow::Result<SequenceRule> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "SequenceRule",
        "metadata": { "name": name },
        "spec": {
            "protectionRef": { "name": protection },
            "priority": priority,
            "action": "Block",
            "requires": {
                "operation": operation,
                "after": ["GET /api/v1/accounts/{account_id}/balance"],
                "within": { "requests": 10, "duration": "10m" }
            }
        }
    }))?)
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Each Event's reason and the name of the object it is about (what a poll for an Event saw).
fn event_reasons(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.regarding
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_ready(
    api: &Api<ApiProtection>,
    name: &str,
    operator: &Operator,
) -> anyhow::Result<ApiProtection> {
    wait_for("ApiProtection Ready", WAIT, || async {
        let p = api.get(name).await?;
        let status = p.status.clone().unwrap_or_default();
        match condition(&status.conditions, "Ready") {
            Some(c) if c.status == "True" => Ok(Some(p)),
            Some(c) => Err(anyhow!("Ready={} {}: {}", c.status, c.reason, c.message)),
            None => Err(anyhow!("no Ready condition; status {status:?}")),
        }
    })
    .await
    .with_context(|| format!("operator log:\n{}", operator.proc.log_tail()))
}

async fn rendered_config(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(ConfigMap, ordo_enforcer::config::EnforcerConfig)> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = cms.get(&format!("{name}-enforcer")).await?;
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("enforcer.yaml"))
        .ok_or_else(|| anyhow!("no enforcer.yaml"))?;
    let config = ordo_enforcer::config::parse_yaml(yaml)
        .map_err(|e| anyhow!("rendered config does not load: {e}"))?;
    Ok((cm, config))
}

async fn wait_deleted<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(&format!("{name} to be deleted"), WAIT, || async {
        match api.get_opt(name).await? {
            None => Ok(Some(())),
            Some(object) => Err(anyhow!(
                "{name} still exists (deletionTimestamp {:?}, finalizers {:?})",
                object.meta().deletion_timestamp,
                object.meta().finalizers
            )),
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Reconcile, Takeover, deletion.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_creates_hardened_enforcers_and_deletion_restores_the_service()
-> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-takeover").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let original = create_app_service(&client, &ns).await?;
    let api: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &protection("bank-api", "Takeover", "Monitor")?,
    )
    .await?;

    let ready = wait_ready(&api, "bank-api", &operator).await?;
    let status = ready.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, ready.metadata.generation);
    for type_ in ["TargetResolved", "EnforcerAvailable", "RulesAccepted"] {
        assert_eq!(
            condition(&status.conditions, type_).map(|c| c.status.as_str()),
            Some("True"),
            "{type_}: {:?}",
            status.conditions
        );
    }
    assert_eq!(
        status.enforcers.map(|e| (e.desired, e.ready >= 1)),
        Some((1, true))
    );
    assert!(
        ready
            .finalizers()
            .iter()
            .any(|f| f == "ordo.dev/restore-routing")
    );

    // The rendered config is the enforcer's own type and loads as such.
    let (cm, config) = rendered_config(&client, &ns, "bank-api").await?;
    assert_eq!(
        config.upstream.url,
        format!("http://bank-api-origin.{ns}.svc:80")
    );
    assert_eq!(
        config.listen.port(),
        8080,
        "the enforcer listens on the Service's targetPort"
    );
    assert_eq!(config.mode, ordo_enforcer::config::Mode::Monitor);
    let report = config
        .report
        .clone()
        .ok_or_else(|| anyhow!("no report section"))?;
    assert_eq!(
        report.url,
        format!(
            "https://127.0.0.1:{}/v1/reports/{ns}/bank-api",
            operator.https_port
        )
    );
    assert_eq!(
        report.token_file,
        PathBuf::from("/var/run/secrets/ordo/report/token")
    );
    assert_eq!(
        cm.data.as_ref().and_then(|d| d.get("report-ca.crt")),
        Some(&pki.ca_pem)
    );

    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("bank-api-enforcer")
        .await?;
    assert_eq!(sa.automount_service_account_token, Some(false));

    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("bank-api-enforcer")
        .await?;
    let template = deployment
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| anyhow!("no spec"))?;
    let hash = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("ordo.dev/config-hash"))
        .cloned();
    assert_eq!(
        hash,
        Some(ordo_operator::desired::render::hash_data(
            cm.data.as_ref().unwrap_or(&BTreeMap::new())
        ))
    );
    let pod = template.spec.ok_or_else(|| anyhow!("no pod spec"))?;
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("bank-api-enforcer")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let container = &pod.containers[0];
    let sc = container.security_context.clone().unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    let projected = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.projected)
        .and_then(|p| p.sources)
        .and_then(|s| s.into_iter().find_map(|s| s.service_account_token))
        .ok_or_else(|| anyhow!("no projected token"))?;
    assert_eq!(projected.audience.as_deref(), Some("ordo-report"));

    // Routing: the Service selects the enforcers, the origin Service the app.
    let service = services.get("bank-api").await?;
    let spec = service.spec.clone().unwrap_or_default();
    assert_eq!(spec.selector, Some(enforcer_selector("bank-api")));
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    let recorded = service
        .annotations()
        .get("ordo.dev/original-selector")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<BTreeMap<String, String>>(&recorded)?,
        original_selector()
    );
    let origin = services.get("bank-api-origin").await?;
    assert_eq!(
        origin.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(original_selector())
    );
    assert_eq!(
        origin
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|p| p[0].port),
        Some(80)
    );

    // What someone changes or deletes by hand is put back: the operator skips writes that
    // would change nothing, never those the watches show are needed (controller/cache.rs).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let rendered = cm.data.clone().unwrap_or_default();
    config_maps
        .patch(
            "bank-api-enforcer",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"enforcer.yaml": "mode: Learn\n"}})),
        )
        .await?;
    wait_for("the edited enforcer ConfigMap restored", WAIT, || async {
        let data = config_maps.get("bank-api-enforcer").await?.data;
        or_seen((data.as_ref() == Some(&rendered)).then_some(()), || {
            format!(
                "enforcer.yaml {:?}",
                data.as_ref()
                    .and_then(|d| d.get("enforcer.yaml"))
                    .map(|y| y.chars().take(80).collect::<String>())
            )
        })
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .patch(
            "bank-api-enforcer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    wait_for("the scaled enforcer Deployment restored", WAIT, || async {
        let replicas = deployments
            .get("bank-api-enforcer")
            .await?
            .spec
            .and_then(|s| s.replicas);
        or_seen((replicas == Some(1)).then_some(()), || {
            format!("replicas {replicas:?}")
        })
    })
    .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("bank-api-enforcer", &DeleteParams::default())
        .await?;
    wait_for(
        "the deleted enforcer ServiceAccount re-created",
        WAIT,
        || async {
            let account = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                .get_opt("bank-api-enforcer")
                .await?;
            or_seen(account.map(|_| ()), || "absent".to_owned())
        },
    )
    .await?;

    // State changes were recorded as Events.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for("a Ready Event", WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        or_seen(
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Ready")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bank-api")
                })
                .then_some(()),
            || format!("Event reasons {:?}", event_reasons(&list.items)),
        )
    })
    .await?;

    // Deletion restores exactly and removes what was owned.
    api.delete("bank-api", &DeleteParams::default()).await?;
    wait_deleted(&api, "bank-api")
        .await
        .with_context(|| operator.proc.log_tail())?;
    let restored = services.get("bank-api").await?;
    let restored_spec = restored.spec.clone().unwrap_or_default();
    assert_eq!(
        restored_spec.selector,
        original.spec.as_ref().and_then(|s| s.selector.clone())
    );
    assert_eq!(
        restored_spec.session_affinity,
        original
            .spec
            .as_ref()
            .and_then(|s| s.session_affinity.clone())
    );
    assert!(
        !restored
            .annotations()
            .keys()
            .any(|k| k.starts_with("ordo.dev/")),
        "{:?}",
        restored.annotations()
    );
    assert!(services.get_opt("bank-api-origin").await?.is_none());
    wait_deleted(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        "bank-api-enforcer",
    )
    .await?;
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("bank-api-enforcer")
            .await?
            .is_none()
    );
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt("bank-api-enforcer")
            .await?
            .is_none()
    );
    diagnostics.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_between_origin_and_selector_converges_after_restart() -> anyhow::Result<()>
{
    let (cluster, client, ns) = e2e::setup("op-crash").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    create_app_service(&client, &ns).await?;
    let api: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &protection("bank-api", "Takeover", "Monitor")?,
    )
    .await?;

    // The operator dies right after applying the origin Service.
    let port = free_port()?;
    let mut crashing = start_operator(
        cluster,
        &ns,
        &pki,
        port,
        &["--exit-after-routing-step", "origin-applied"],
        &diagnostics.new_log("operator (exits after origin-applied)")?,
    )?;
    let code = crashing.proc.wait_exit(WAIT).await?;
    assert_eq!(code, Some(75), "log:\n{}", crashing.proc.log_tail());
    let origin = services.get("bank-api-origin").await?;
    assert_eq!(
        origin.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(original_selector())
    );
    let untouched = services.get("bank-api").await?;
    assert_eq!(
        untouched.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(original_selector()),
        "traffic still goes to the app"
    );
    assert!(
        !untouched
            .annotations()
            .contains_key("ordo.dev/original-selector")
    );
    drop(crashing);

    // A restarted operator finishes the takeover from there.
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        port,
        &[],
        &diagnostics.new_log("operator (restarted)")?,
    )?;
    wait_ready(&api, "bank-api", &operator).await?;
    let taken = services.get("bank-api").await?;
    assert_eq!(
        taken.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(enforcer_selector("bank-api"))
    );
    let recorded = taken
        .annotations()
        .get("ordo.dev/original-selector")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<BTreeMap<String, String>>(&recorded)?,
        original_selector()
    );

    api.delete("bank-api", &DeleteParams::default()).await?;
    wait_deleted(&api, "bank-api")
        .await
        .with_context(|| operator.proc.log_tail())?;
    let restored = services.get("bank-api").await?;
    assert_eq!(
        restored.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(original_selector())
    );
    assert!(services.get_opt("bank-api-origin").await?.is_none());
    diagnostics.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_creates_nothing_and_says_why() -> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-missing").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    let api: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &protection("bank-api", "Takeover", "Monitor")?,
    )
    .await?;
    let status = wait_for("TargetResolved=False", WAIT, || async {
        let p = api.get("bank-api").await?;
        let status = p.status.unwrap_or_default();
        or_seen(
            condition(&status.conditions, "TargetResolved")
                .filter(|c| c.status == "False")
                .map(|c| (c.reason.clone(), c.message.clone())),
            || format!("conditions {:?}", status.conditions),
        )
    })
    .await
    .with_context(|| operator.proc.log_tail())?;
    assert_eq!(status.0, "ServiceNotFound");
    assert!(status.1.contains("bank-api"), "{}", status.1);
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("bank-api-enforcer")
            .await?
            .is_none()
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt("bank-api-origin")
            .await?
            .is_none()
    );
    diagnostics.passed();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SequenceRules.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_rules_change_the_rendered_config_and_their_status() -> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-rules").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    let original = create_app_service(&client, &ns).await?;
    let api: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &protection("bank-api", "Alongside", "Enforce")?,
    )
    .await?;
    wait_ready(&api, "bank-api", &operator).await?;
    // Alongside: a protected Service in front of the enforcers, the original untouched.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let protected = services.get("bank-api-protected").await?;
    assert_eq!(
        protected.spec.as_ref().and_then(|s| s.selector.clone()),
        Some(enforcer_selector("bank-api"))
    );
    assert_eq!(
        protected
            .spec
            .as_ref()
            .and_then(|s| s.session_affinity.clone())
            .as_deref(),
        Some("ClientIP")
    );
    assert_eq!(services.get("bank-api").await?.spec, original.spec);

    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), &ns);
    rules
        .create(
            &PostParams::default(),
            &requires_rule(
                "balance-before-transfer",
                "bank-api",
                10,
                "POST /api/v1/transfer",
            )?,
        )
        .await?;
    let rule_names = |config: &ordo_enforcer::config::EnforcerConfig| {
        config
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.priority))
            .collect::<Vec<_>>()
    };
    wait_for("the rule in the rendered config", WAIT, || async {
        let (_, config) = rendered_config(&client, &ns, "bank-api").await?;
        let names = rule_names(&config);
        or_seen(
            (names == vec![("balance-before-transfer".to_owned(), 10)]).then_some(()),
            || format!("rendered rules {names:?}"),
        )
    })
    .await?;
    let accepted = wait_for("rule Accepted", WAIT, || async {
        let r = rules.get("balance-before-transfer").await?;
        let status = r.status.unwrap_or_default();
        or_seen(
            condition(&status.conditions, "Accepted")
                .filter(|c| c.status == "True")
                .map(|_| status.clone()),
            || format!("rule status {status:?}"),
        )
    })
    .await?;
    assert_eq!(
        accepted.rule_kind,
        Some(ordo_operator::crd::RuleKind::Requires)
    );
    assert_eq!(accepted.observed_generation, Some(1));

    // A rule the enforcer would reject is not rendered and says why (no webhook here).
    rules
        .create(
            &PostParams::default(),
            &requires_rule("broken", "bank-api", 5, "POST /api/v1/transfer/{id")?,
        )
        .await?;
    let rejected = wait_for("broken rule Accepted=False", WAIT, || async {
        let status = rules.get("broken").await?.status.unwrap_or_default();
        or_seen(
            condition(&status.conditions, "Accepted")
                .filter(|c| c.status == "False")
                .map(|c| c.message.clone()),
            || format!("rule status {status:?}"),
        )
    })
    .await?;
    assert!(rejected.contains("spec.requires.operation"), "{rejected}");
    wait_for("RulesAccepted=False naming rule broken", WAIT, || async {
        let status = api.get("bank-api").await?.status.unwrap_or_default();
        or_seen(
            condition(&status.conditions, "RulesAccepted")
                .filter(|c| c.status == "False" && c.message.contains("broken"))
                .map(|_| ()),
            || format!("conditions {:?}", status.conditions),
        )
    })
    .await?;
    let (_, config) = rendered_config(&client, &ns, "bank-api").await?;
    assert_eq!(
        rule_names(&config),
        vec![("balance-before-transfer".to_owned(), 10)]
    );
    rules.delete("broken", &DeleteParams::default()).await?;

    // Editing a rule and adding one re-renders, ordered by priority.
    let mut edited = rules.get("balance-before-transfer").await?;
    edited.spec.priority = 20;
    rules
        .replace("balance-before-transfer", &PostParams::default(), &edited)
        .await?;
    rules
        .create(
            &PostParams::default(),
            &requires_rule(
                "balance-before-payee",
                "bank-api",
                50,
                "POST /api/v1/payees",
            )?,
        )
        .await?;
    wait_for("both rules by priority", WAIT, || async {
        let (_, config) = rendered_config(&client, &ns, "bank-api").await?;
        let names = rule_names(&config);
        or_seen(
            (names
                == vec![
                    ("balance-before-payee".to_owned(), 50),
                    ("balance-before-transfer".to_owned(), 20),
                ])
            .then_some(()),
            || format!("rendered rules {names:?}"),
        )
    })
    .await?;
    wait_for(
        "edited rule observed (observedGeneration 2)",
        WAIT,
        || async {
            let r = rules.get("balance-before-transfer").await?;
            let observed = r.status.and_then(|s| s.observed_generation);
            or_seen((observed == Some(2)).then_some(()), || {
                format!("observedGeneration {observed:?}")
            })
        },
    )
    .await?;

    // Deleting a rule removes it from the config.
    rules
        .delete("balance-before-transfer", &DeleteParams::default())
        .await?;
    wait_for("deleted rule gone from the config", WAIT, || async {
        let (_, config) = rendered_config(&client, &ns, "bank-api").await?;
        let names = rule_names(&config);
        or_seen(
            (names == vec![("balance-before-payee".to_owned(), 50)]).then_some(()),
            || format!("rendered rules {names:?}"),
        )
    })
    .await?;
    diagnostics.passed();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A real enforcer reporting to the operator.
// ---------------------------------------------------------------------------------------

/// A small upstream answering every request with 200 and a JSON body.
async fn start_upstream() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |_req: hyper::Request<hyper::body::Incoming>| async {
                        let mut response = hyper::Response::new(Full::new(Bytes::from_static(
                            br#"{"ok":true,"balance":120.5}"#,
                        )));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

async fn token_for(
    client: &Client,
    namespace: &str,
    account: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await?;
    answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("no token in the TokenRequest answer"))
}

fn session_token(user: &str) -> anyhow::Result<String> {
    let claims = json!({ "sub": user, "exp": 4_102_444_800u64 });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"e2e-unverified"),
    )?)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn send(
    client: &HttpClient,
    port: u16,
    user: &str,
    method: &str,
    path: &str,
) -> anyhow::Result<u16> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", session_token(user)?),
        );
    let body = if method == "POST" {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        Bytes::from_static(br#"{"from":"acc-1","to":"acc-2","amount":10}"#)
    } else {
        Bytes::new()
    };
    let response = client.request(builder.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// A report source with fixed content, to exercise the endpoint's authentication.
struct StaticSource;

impl ReportSource for StaticSource {
    fn take_model_delta(&self) -> Option<Vec<u8>> {
        None
    }
    fn changed_incidents(&self) -> Vec<IncidentReport> {
        Vec::new()
    }
    fn counters(&self) -> TrafficCounters {
        TrafficCounters::default()
    }
    fn rule_counters(&self) -> Vec<RuleCounters> {
        Vec::new()
    }
    fn adopt_model(&self, _merged: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcer_reports_learning_and_incidents_into_status() -> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-report").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    create_app_service(&client, &ns).await?;
    let api: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &protection("bank-api", "Alongside", "Monitor")?,
    )
    .await?;
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), &ns);
    rules
        .create(
            &PostParams::default(),
            &requires_rule(
                "balance-before-transfer",
                "bank-api",
                10,
                "POST /api/v1/transfer",
            )?,
        )
        .await?;
    wait_ready(&api, "bank-api", &operator).await?;
    wait_for("the rule in the rendered config", WAIT, || async {
        let (_, config) = rendered_config(&client, &ns, "bank-api").await?;
        or_seen((config.rules.len() == 1).then_some(()), || {
            format!("rendered rules {:?}", config.rules)
        })
    })
    .await?;

    // The enforcer runs locally with the rendered config, addresses moved to loopback.
    let (_, mut config) = rendered_config(&client, &ns, "bank-api").await?;
    let dir = tempfile::tempdir()?;
    let upstream = start_upstream().await?;
    let proxy_port = free_port()?;
    config.listen = format!("127.0.0.1:{proxy_port}").parse()?;
    config.admin.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    config.upstream.url = format!("http://127.0.0.1:{upstream}");
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        token_for(&client, &ns, "bank-api-enforcer", "ordo-report").await?,
    )?;
    let report = config
        .report
        .as_mut()
        .ok_or_else(|| anyhow!("no report section"))?;
    report.token_file = token_file.clone();
    report.ca_file = Some(pki.ca.clone());
    report.replica = Some("e2e-enforcer-0".into());
    let report_url = report.url.clone();
    let config_file = dir.path().join("enforcer.yaml");
    std::fs::write(&config_file, serde_yaml_ng::to_string(&config)?)?;
    let enforcer = Proc::spawn(
        Command::new(e2e::binaries()?.join("ordo-enforcer"))
            .arg("--config")
            .arg(&config_file),
        &diagnostics.new_log("enforcer")?,
    )
    .context("starting ordo-enforcer")?;

    // Simulated traffic: honest sessions look at a balance before they transfer; one
    // session transfers without looking.
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    wait_for("the enforcer to answer", WAIT, || async {
        send(&http, proxy_port, "probe", "GET", "/api/v1/health")
            .await
            .map(|_| Some(()))
    })
    .await
    .with_context(|| enforcer.log_tail())?;
    for round in 0..4 {
        for user in 0..12 {
            let user = format!("user-{user}");
            let account = format!("{}", 1000 + round);
            for (method, path) in [
                ("GET", format!("/api/v1/accounts/{account}/balance")),
                ("POST", "/api/v1/transfer".to_owned()),
                ("GET", format!("/api/v1/accounts/{account}/transactions")),
            ] {
                let status = send(&http, proxy_port, &user, method, &path).await?;
                assert_eq!(status, 200, "{method} {path}");
            }
        }
    }
    for _ in 0..3 {
        let status = send(&http, proxy_port, "mallory", "POST", "/api/v1/transfer").await?;
        assert_eq!(status, 200, "Monitor mode never blocks");
    }

    let status = wait_for(
        "learned endpoints, sequences and the incident in status",
        Duration::from_secs(120),
        || async {
            let p = api.get("bank-api").await?;
            let status = p.status.unwrap_or_default();
            let learned = status.model.as_ref().is_some_and(|m| m.requests > 0)
                && !status.endpoints.is_empty();
            let sequences = !status.top_sequences.is_empty();
            let incident = status
                .incidents
                .iter()
                .any(|i| i.session.contains("mallory") && !i.summary.is_empty());
            if learned && sequences && incident {
                Ok(Some(status))
            } else {
                Err(anyhow!(
                    "status so far: model={:?} endpoints={} sequences={} incidents={}",
                    status.model,
                    status.endpoints.len(),
                    status.top_sequences.len(),
                    status.incidents.len()
                ))
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "enforcer log:\n{}\noperator log:\n{}",
            enforcer.log_tail(),
            operator.proc.log_tail()
        )
    })?;
    assert!(
        status
            .endpoints
            .iter()
            .any(|e| e.operation.starts_with("GET /api/v1/accounts/")
                && e.operation.ends_with("/balance")),
        "{:?}",
        status.endpoints
    );
    let incident = status
        .incidents
        .iter()
        .find(|i| i.session.contains("mallory"))
        .ok_or_else(|| anyhow!("no incident"))?;
    assert!(
        incident.summary.contains("balance-before-transfer")
            || incident.summary.contains("/api/v1/transfer"),
        "{}",
        incident.summary
    );
    assert!(
        status
            .totals
            .is_some_and(|t| t.requests >= 147 && t.flagged >= 3 && t.blocked == 0),
        "{:?}",
        status.totals
    );
    assert!(status.enforcers.is_some_and(|e| e.reporting >= 1));

    // The incident became an Event, the rule's counters reached its status, the merged
    // model was persisted.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for("an IncidentDetected Event", WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        or_seen(
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("IncidentDetected"))
                .then_some(()),
            || format!("Event reasons {:?}", event_reasons(&list.items)),
        )
    })
    .await?;
    wait_for("at least 3 rule matches in status", WAIT, || async {
        let status = rules.get("balance-before-transfer").await?.status;
        or_seen(
            status
                .as_ref()
                .filter(|s| s.matches >= 3 && s.last_match.is_some())
                .map(|_| ()),
            || {
                format!(
                    "matches {:?}, lastMatch {:?}",
                    status.as_ref().map(|s| s.matches),
                    status.as_ref().map(|s| s.last_match.clone())
                )
            },
        )
    })
    .await?;
    let model_cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("bank-api-model")
        .await?;
    let model = model_cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get("model"))
        .ok_or_else(|| anyhow!("no model"))?;
    let merged =
        ordo_enforcer::model::LearnedModel::from_bytes(&model.0).map_err(|e| anyhow!("{e}"))?;
    assert!(merged.requests > 0 && model.0.len() < 1024 * 1024);

    // Tokens of another ServiceAccount, or for another audience, are refused.
    let wrong_dir = tempfile::tempdir()?;
    let wrong_token = wrong_dir.path().join("token");
    let attempt = |token_file: PathBuf| ReportConfig {
        url: report_url.clone(),
        token_file,
        ca_file: Some(pki.ca.clone()),
        interval_seconds: 1,
        timeout_seconds: 10,
        replica: Some("intruder".into()),
    };
    std::fs::write(
        &wrong_token,
        token_for(&client, &ns, "default", "ordo-report").await?,
    )?;
    let refused = ReportClient::new(attempt(wrong_token.clone()))?
        .report_once(&StaticSource)
        .await;
    assert!(
        matches!(refused, Err(ReportError::Refused { status: 403, .. })),
        "{refused:?}"
    );
    std::fs::write(
        &wrong_token,
        token_for(
            &client,
            &ns,
            "bank-api-enforcer",
            "https://kubernetes.default.svc",
        )
        .await?,
    )?;
    let refused = ReportClient::new(attempt(wrong_token.clone()))?
        .report_once(&StaticSource)
        .await;
    assert!(
        matches!(refused, Err(ReportError::Refused { status: 401, .. })),
        "{refused:?}"
    );
    let accepted = ReportClient::new(attempt(token_file))?
        .report_once(&StaticSource)
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    drop(enforcer);
    diagnostics.passed();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The validating webhook.
// ---------------------------------------------------------------------------------------

fn webhook(
    name: &str,
    path: &str,
    resource: &str,
    port: u16,
    ca_pem: &str,
    namespace: &str,
) -> ValidatingWebhook {
    ValidatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        side_effects: "None".to_owned(),
        failure_policy: Some("Fail".to_owned()),
        timeout_seconds: Some(10),
        client_config: WebhookClientConfig {
            url: Some(format!("https://127.0.0.1:{port}{path}")),
            ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
            ..WebhookClientConfig::default()
        },
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec!["ordo.dev".to_owned()]),
            api_versions: Some(vec!["v1alpha1".to_owned()]),
            operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
            resources: Some(vec![resource.to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        ..ValidatingWebhook::default()
    }
}

fn denial(result: Result<impl Sized, kube::Error>) -> String {
    match result {
        Ok(_) => "allowed".to_owned(),
        Err(kube::Error::Api(status)) => status.message.clone(),
        Err(other) => format!("error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_denies_invalid_resources_naming_the_field_and_allows_valid_ones()
-> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-webhook").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config_name = format!("ordo-e2e-{ns}");
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(config_name.clone()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook(
                "apiprotections.ordo.dev",
                "/validate/apiprotections",
                "apiprotections",
                operator.https_port,
                &pki.ca_pem,
                &ns,
            ),
            webhook(
                "sequencerules.ordo.dev",
                "/validate/sequencerules",
                "sequencerules",
                operator.https_port,
                &pki.ca_pem,
                &ns,
            ),
        ]),
    };
    configs
        .patch(
            &config_name,
            &PatchParams::apply("ordo-e2e").force(),
            &Patch::Apply(&config),
        )
        .await?;
    let outcome = run_webhook_checks(&client, &ns, &operator).await;
    configs
        .delete(&config_name, &DeleteParams::default())
        .await?;
    outcome?;
    diagnostics.passed();
    Ok(())
}

async fn run_webhook_checks(client: &Client, ns: &str, operator: &Operator) -> anyhow::Result<()> {
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // Operation syntax the CRD pattern lets through (the webhook may take a moment to be
    // called by the API server after registration).
    let unclosed = requires_rule("unclosed", "bank-api", 1, "POST /api/v1/transfer/{id")?;
    let message = wait_for("the webhook to deny", WAIT, || async {
        let message = denial(rules.create(&dry, &unclosed).await);
        // Until the operator listens, the API server reports a failed call instead.
        if message.contains("spec.requires.operation") {
            Ok(Some(message))
        } else {
            Err(anyhow!(message))
        }
    })
    .await
    .with_context(|| operator.proc.log_tail())?;
    assert!(
        message.contains("spec.requires.operation") && message.contains("unclosed"),
        "{message}"
    );

    let query: SequenceRule = serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1", "kind": "SequenceRule",
        "metadata": { "name": "query-in-path" },
        "spec": { "protectionRef": { "name": "bank-api" },
                  "forbids": { "sequence": ["GET /api/v1/accounts", "POST /api/v1/transfer?again=1"] } }
    }))?;
    let message = denial(rules.create(&dry, &query).await);
    assert!(message.contains("spec.forbids.sequence[1]"), "{message}");

    let from_to: SequenceRule = serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1", "kind": "SequenceRule",
        "metadata": { "name": "bad-from" },
        "spec": { "protectionRef": { "name": "bank-api" },
                  "minInterval": { "from": "GET /api/{x}{y}", "to": "POST /api/v1/transfer", "duration": "2s" } }
    }))?;
    let message = denial(rules.create(&dry, &from_to).await);
    assert!(message.contains("spec.minInterval.from"), "{message}");

    // A valid rule is allowed, also when its protection does not exist (yet).
    let valid = requires_rule(
        "balance-before-transfer",
        "does-not-exist-yet",
        10,
        "POST /api/v1/transfer",
    )?;
    assert_eq!(
        denial(rules.create(&PostParams::default(), &valid).await),
        "allowed"
    );

    // ApiProtection: a second protection of the same Service, an invalid rate limit.
    create_app_service(client, ns).await?;
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), ns);
    assert_eq!(
        denial(
            protections
                .create(
                    &PostParams::default(),
                    &protection("bank-api", "Alongside", "Monitor")?
                )
                .await
        ),
        "allowed"
    );
    let message = denial(
        protections
            .create(&dry, &protection("bank-api-2", "Alongside", "Monitor")?)
            .await,
    );
    assert!(
        message.contains("spec.target.service") && message.contains("bank-api"),
        "{message}"
    );

    let mut limited = protection("limited", "Alongside", "Monitor")?;
    limited.spec.target.service = "other-api".into();
    limited.spec.rate_limits = vec![serde_json::from_value(
        json!({ "operation": "GET /api/v1/accounts/{id", "requests": 10, "per": "1m" }),
    )?];
    let message = denial(protections.create(&dry, &limited).await);
    assert!(message.contains("spec.rateLimits[0]"), "{message}");
    limited.spec.rate_limits = vec![serde_json::from_value(
        json!({ "operation": "GET /api/v1/accounts/{id}", "requests": 10, "per": "1m" }),
    )?];
    assert_eq!(denial(protections.create(&dry, &limited).await), "allowed");

    // A JWKS URL the CRD's pattern lets through but the enforcer could not use.
    let mut jwks = limited.clone();
    jwks.spec.session.jwt_verification = Some(serde_json::from_value(
        json!({ "jwks": { "uri": "https://idp.example:99999/certs" } }),
    )?);
    let message = denial(protections.create(&dry, &jwks).await);
    assert!(
        message.contains("spec.session.jwtVerification.jwks.uri"),
        "{message}"
    );
    jwks.spec.session.jwt_verification = Some(serde_json::from_value(
        json!({ "jwks": { "uri": "https://idp.example:8443/certs" } }),
    )?);
    assert_eq!(denial(protections.create(&dry, &jwks).await), "allowed");

    // Updates are validated too.
    let mut existing = rules.get("balance-before-transfer").await?;
    existing
        .spec
        .requires
        .as_mut()
        .ok_or_else(|| anyhow!("requires"))?
        .after = vec!["GET /api/v1/accounts/{".to_owned()];
    let message = denial(
        rules
            .replace("balance-before-transfer", &PostParams::default(), &existing)
            .await,
    );
    assert!(message.contains("spec.requires.after[0]"), "{message}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Leader election on a real Lease.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_candidate_leads_and_a_standby_takes_over_an_abandoned_lease() -> anyhow::Result<()>
{
    use k8s_openapi::api::coordination::v1::Lease;
    use ordo_operator::leader::{Attempt, LeaderElector, LeaseTiming};
    let (cluster, client, ns) = e2e::setup("op-lease").await?;
    let diagnostics = Diagnostics::new(cluster, &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let timing = LeaseTiming {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
    };
    let mut a = LeaderElector::new(leases.clone(), "ordo-operator", "replica-a", timing);
    let mut b = LeaderElector::new(leases.clone(), "ordo-operator", "replica-b", timing);
    assert_eq!(a.try_acquire_or_renew().await?, Attempt::Leading);
    assert_eq!(b.try_acquire_or_renew().await?, Attempt::Following);
    // While a renews, b never takes over, however long it waits.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.try_acquire_or_renew().await?, Attempt::Leading);
        assert_eq!(b.try_acquire_or_renew().await?, Attempt::Following);
    }
    // a stops renewing (it died): b takes over once the record stayed unchanged for a lease
    // duration on b's clock, and a, back, follows.
    let started = Instant::now();
    // Each check needs b mutably, and wait_for's checks are futures of an `FnMut`: b is lent
    // to one check at a time through a lock.
    let standby = tokio::sync::Mutex::new(b);
    wait_for(
        "b to take over the abandoned Lease",
        Duration::from_secs(15),
        || async {
            let attempt = standby.lock().await.try_acquire_or_renew().await?;
            if attempt == Attempt::Leading {
                return Ok(Some(()));
            }
            let lease = leases.get("ordo-operator").await?;
            bail!("b is {attempt:?}; the Lease: {:?}", lease.spec)
        },
    )
    .await?;
    let mut b = standby.into_inner();
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "took over after {:?}",
        started.elapsed()
    );
    assert_eq!(a.try_acquire_or_renew().await?, Attempt::Following);
    let lease = leases.get("ordo-operator").await?;
    let spec = lease.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // A released Lease is taken at once.
    b.release().await;
    assert_eq!(a.try_acquire_or_renew().await?, Attempt::Leading);
    diagnostics.passed();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reports reach the leader only: the leader writes the report Service's EndpointSlice.
// ---------------------------------------------------------------------------------------

/// The address and port the report Service's only EndpointSlice points at (`None`: no
/// endpoint, e.g. during a graceful hand-over).
async fn report_endpoint(
    slices: &Api<k8s_openapi::api::discovery::v1::EndpointSlice>,
) -> anyhow::Result<Option<(String, i32)>> {
    let Some(slice) = slices.get_opt("ordo-reports-leader").await? else {
        return Ok(None);
    };
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    if labels.get("kubernetes.io/service-name").map(String::as_str) != Some("ordo-reports") {
        bail!("the slice does not belong to the report Service: {labels:?}");
    }
    let endpoints = slice.endpoints.unwrap_or_default();
    let port = slice
        .ports
        .unwrap_or_default()
        .first()
        .and_then(|p| p.port)
        .unwrap_or_default();
    match endpoints.as_slice() {
        [] => Ok(None),
        [one] if one.addresses.len() == 1 => Ok(Some((one.addresses[0].clone(), port))),
        more => bail!("the report Service must have exactly one endpoint, has {more:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_service_follows_the_leader_through_handover_and_crash() -> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-leader-ep").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    // The chart's report Service: no selector, the leader provides its endpoint.
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "ordo-reports" },
        "spec": { "ports": [{ "name": "https", "port": 443, "protocol": "TCP" }] }
    }))?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), &ns);
    // Every replica listens on loopback; the API server refuses loopback endpoint addresses,
    // so each publishes a distinct stand-in Pod IP (nothing routes to it in this test).
    let mut replica = |identity: &'static str, pod_ip: &'static str| -> anyhow::Result<Operator> {
        let log = diagnostics.new_log(&format!("operator {identity}"))?;
        start_operator(
            cluster,
            &ns,
            &pki,
            free_port()?,
            &[
                "--identity",
                identity,
                "--report-service",
                "ordo-reports",
                "--pod-ip",
                pod_ip,
            ],
            &log,
        )
    };
    let points_at = |pod_ip: &'static str, port: u16| {
        let slices = slices.clone();
        move || {
            let slices = slices.clone();
            async move {
                let endpoint = report_endpoint(&slices).await?;
                or_seen(
                    endpoint
                        .as_ref()
                        .filter(|(address, p)| address == pod_ip && *p == i32::from(port))
                        .map(|_| ()),
                    || format!("the report Service's endpoint is {endpoint:?}"),
                )
            }
        }
    };

    let mut a = replica("replica-a", "10.255.0.1")?;
    wait_for(
        "the report Service to point at a",
        WAIT,
        points_at("10.255.0.1", a.https_port),
    )
    .await
    .with_context(|| format!("a's log:\n{}", a.proc.log_tail()))?;
    let b = replica("replica-b", "10.255.0.2")?;
    // b is a standby: it answers reports with 503 and never takes the endpoint.
    assert_eq!(
        bogus_report_status(b.https_port, &pki, &ns).await?,
        503,
        "a standby must refuse reports"
    );
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            report_endpoint(&slices).await?,
            Some(("10.255.0.1".to_owned(), i32::from(a.https_port))),
            "the endpoint moved away from the leader"
        );
    }

    // Graceful hand-over: a withdraws its address before releasing the Lease; b publishes its own.
    let status = Command::new("kill")
        .args(["-TERM", &a.proc.id().to_string()])
        .status()?;
    assert!(status.success());
    assert_eq!(a.proc.wait_exit(Duration::from_secs(30)).await?, Some(0));
    let after_a = report_endpoint(&slices).await?;
    assert_ne!(
        after_a.map(|(_, p)| p),
        Some(i32::from(a.https_port)),
        "a stopped but the Service still points at it"
    );
    wait_for(
        "the report Service to point at b",
        WAIT,
        points_at("10.255.0.2", b.https_port),
    )
    .await
    .with_context(|| format!("b's log:\n{}", b.proc.log_tail()))?;

    // Crash: b is killed without a chance to clean up; the next leader overwrites its address
    // once the Lease expires (15 s by default).
    let c = replica("replica-c", "10.255.0.3")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(b);
    let crashed = Instant::now();
    wait_for(
        "the report Service to point at c",
        WAIT,
        points_at("10.255.0.3", c.https_port),
    )
    .await
    .with_context(|| format!("c's log:\n{}", c.proc.log_tail()))?;
    assert!(
        crashed.elapsed() < Duration::from_secs(40),
        "took {:?}",
        crashed.elapsed()
    );
    assert_eq!(
        bogus_report_status(c.https_port, &pki, &ns).await?,
        401,
        "the leader must authenticate reports (and refuse a bogus token)"
    );
    diagnostics.passed();
    Ok(())
}

/// Status code with which the operator at `127.0.0.1:port` refuses a report carrying a bogus
/// token (503 from a standby before any authentication, 401 from the leader); waits for the
/// operator's HTTPS server to listen.
async fn bogus_report_status(port: u16, pki: &Pki, ns: &str) -> anyhow::Result<u16> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not-a-token")?;
    let client = ReportClient::new(ReportConfig {
        url: format!(
            "https://127.0.0.1:{port}{}/{ns}/bank-api",
            ordo_enforcer::report::REPORT_PATH_PREFIX
        ),
        token_file,
        ca_file: Some(pki.ca.clone()),
        interval_seconds: 1,
        timeout_seconds: 10,
        replica: Some("probe".into()),
    })?;
    // `report_once` takes the client mutably; each check borrows it in turn.
    let client = tokio::sync::Mutex::new(client);
    let answered = wait_for("the operator to answer a report", WAIT, || async {
        match client.lock().await.report_once(&StaticSource).await {
            Err(ReportError::Refused { status, .. }) => Ok(Some(Ok(status))),
            // Not listening yet.
            Err(err @ ReportError::Send(_)) => Err(anyhow!("{err:?}")),
            other => Ok(Some(Err(other))),
        }
    })
    .await?;
    answered.map_err(|other| anyhow!("expected a refusal, got {other:?}"))
}

// ---------------------------------------------------------------------------------------
// A SequenceRule whose ApiProtection does not exist says so, and flips when it appears.
// ---------------------------------------------------------------------------------------

/// Waits until the rule's `Accepted` condition has `status` and `reason`; returns its message.
async fn wait_accepted(
    rules: &Api<SequenceRule>,
    name: &str,
    status: &'static str,
    reason: &'static str,
    operator: &Operator,
) -> anyhow::Result<String> {
    wait_for(
        &format!("rule {name} Accepted={status} ({reason})"),
        WAIT,
        || async {
            let conditions = rules.get(name).await?.status.unwrap_or_default().conditions;
            or_seen(
                condition(&conditions, "Accepted")
                    .filter(|c| c.status == status && c.reason == reason)
                    .map(|c| c.message.clone()),
                || format!("conditions {conditions:?}"),
            )
        },
    )
    .await
    .with_context(|| format!("operator log:\n{}", operator.proc.log_tail()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_its_protection_says_so_until_the_protection_exists() -> anyhow::Result<()> {
    let (cluster, client, ns) = e2e::setup("op-orphan-rule").await?;
    let mut diagnostics = Diagnostics::new(cluster, &ns);
    let pki = pki()?;
    let operator = start_operator(
        cluster,
        &ns,
        &pki,
        free_port()?,
        &[],
        &diagnostics.new_log("operator")?,
    )?;
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), &ns);
    rules
        .create(
            &PostParams::default(),
            &requires_rule("early", "bank-api", 10, "POST /api/v1/transfer")?,
        )
        .await?;
    let message = wait_accepted(&rules, "early", "False", "ProtectionNotFound", &operator).await?;
    assert!(
        message.contains("spec.protectionRef.name") && message.contains("\"bank-api\""),
        "{message}"
    );
    assert_eq!(
        rules
            .get("early")
            .await?
            .status
            .unwrap_or_default()
            .observed_generation,
        Some(1)
    );

    // The ApiProtection appears: its reconcile accepts the rule.
    create_app_service(&client, &ns).await?;
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &ns);
    protections
        .create(
            &PostParams::default(),
            &protection("bank-api", "Alongside", "Monitor")?,
        )
        .await?;
    wait_accepted(&rules, "early", "True", "Accepted", &operator).await?;

    // It goes away again: the rule says so again.
    protections
        .delete("bank-api", &DeleteParams::default())
        .await?;
    wait_deleted(&protections, "bank-api").await?;
    wait_accepted(&rules, "early", "False", "ProtectionNotFound", &operator).await?;
    diagnostics.passed();
    Ok(())
}
