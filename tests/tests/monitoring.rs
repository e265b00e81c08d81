//! The chart's alert rules and Grafana dashboard (charts/ordo/monitoring/) stay true:
//! promtool checks the rules and runs their unit tests (tests/monitoring/alerts.test.yaml),
//! every alert has a case in which it fires, every dashboard query is valid PromQL, every
//! metric either of them reads is one Ordo exports (or one of the few kube-apiserver metrics
//! named in tests/src/monitoring.rs), and the chart renders them (off by default). The same
//! metric check against a live operator and enforcer is in e2e_propagation.rs.
//!
//! promtool and helm are built from the Go module proxy by tests/cluster/build-promtool.sh
//! and build-helm.sh (scripts/test runs both); without them these tests fail and say so.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::Context as _;
use ordo_enforcer::finding::{FindingKind, Severity};
use ordo_operator::desired::names::Names;
use ordo_tests::cluster::workspace_root;
use ordo_tests::e2e::yaml_documents;
use ordo_tests::monitoring::{
    self, KUBE_APISERVER_METRICS, alert_rules, dashboard_queries, missing_metrics,
};

/// Runs `promtool` with `args` in `dir`; its combined output, or an error with it.
fn promtool(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(monitoring::promtool()?)
        .args(args)
        .current_dir(dir)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let root = workspace_root();
    let checked = promtool(
        &root,
        &["check", "rules", "charts/ordo/monitoring/alerts.yaml"],
    )
    .unwrap();
    println!("{checked}");
    let tested = promtool(
        &root.join("tests/monitoring"),
        &["test", "rules", "alerts.test.yaml"],
    )
    .unwrap();
    println!("{tested}");
}

#[test]
fn every_alert_fires_in_a_unit_test() {
    let text = std::fs::read_to_string(workspace_root().join("tests/monitoring/alerts.test.yaml"))
        .unwrap();
    let tests: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut firing = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let expected = check["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(check["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let rules = alert_rules().unwrap();
    assert!(rules.len() >= 10, "only {} alerts", rules.len());
    let untested: Vec<&str> = rules
        .iter()
        .map(|r| r.name.as_str())
        .filter(|name| !firing.contains(*name))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing case in tests/monitoring/alerts.test.yaml: {untested:?}"
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool has no offline query parser; a recording rule per query gets one.
    let queries = dashboard_queries().unwrap();
    assert!(queries.len() >= 20, "only {} queries", queries.len());
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({ "record": format!("dashboard:query{i}"), "expr": expr }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    let path_text = path.display().to_string();
    if let Err(err) = promtool(dir.path(), &["check", "rules", &path_text]) {
        let listing: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, (title, q))| format!("query{i} ({title}): {q}"))
            .collect();
        panic!("{err:#}\n{}", listing.join("\n"));
    }
}

/// What the enforcer's and the operator's registries expose once every labelled metric has
/// one series (the live check in e2e_propagation.rs sees what traffic creates).
fn registry_expositions() -> anyhow::Result<(String, String)> {
    let enforcer = ordo_enforcer::metrics::Metrics::new()?;
    enforcer.initialize_kinds(
        &FindingKind::ALL.map(FindingKind::as_str),
        &Severity::ALL.map(Severity::as_str),
    );
    enforcer
        .requests
        .with_label_values(&["GET /x", "allow"])
        .inc();
    enforcer.initialize_rules(["a-declared-rule"]);
    enforcer.added_latency.observe(0.001);
    let operator = ordo_operator::metrics::Metrics::new()?;
    operator.config_propagation.observe(1.0);
    Ok((String::from_utf8(enforcer.encode())?, operator.render()))
}

#[test]
fn dashboard_and_alerts_read_only_metrics_ordo_exports() {
    let queried = monitoring::queried_metric_names().unwrap();
    assert!(queried.len() >= 20, "only {queried:?}");
    let (enforcer, operator) = registry_expositions().unwrap();
    let missing = missing_metrics(&[&enforcer, &operator]).unwrap();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts read metrics that Ordo does not export \
         (nor the kube-apiserver, KUBE_APISERVER_METRICS in tests/src/monitoring.rs): {missing:?}"
    );
}

/// The kube-apiserver metrics accepted without an Ordo exporter are few, named, none of them
/// Ordo's own, and each one is read by the rules or the dashboard (an entry nothing reads any
/// more goes).
#[test]
fn the_external_metrics_are_kube_apiserver_ones_that_are_read() {
    let external: BTreeSet<&str> = KUBE_APISERVER_METRICS.iter().copied().collect();
    assert!(external.len() <= 5, "{external:?}");
    let read = monitoring::queried_metric_names().unwrap();
    for name in &external {
        assert!(
            name.starts_with("apiserver_"),
            "{name} is not a kube-apiserver metric"
        );
        assert!(
            read.contains(*name),
            "{name} is listed but nothing reads it"
        );
    }
    let (enforcer, operator) = registry_expositions().unwrap();
    let exported = monitoring::sample_names(&format!("{enforcer}\n{operator}"));
    let own: Vec<&&str> = external
        .iter()
        .filter(|name| exported.contains(**name))
        .collect();
    assert!(own.is_empty(), "Ordo exports {own:?}");
}

/// `helm template` of the chart with `sets`, as JSON documents.
fn render_chart(sets: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let helm = ordo_tests::cluster::binaries::go_tool("helm", "helm.sh/helm/v3", "ORDO_HELM")?;
    let home = tempfile::tempdir()?;
    let mut command = Command::new(helm);
    command
        .args([
            "template",
            "ordo",
            "charts/ordo",
            "--namespace",
            "ordo-system",
        ])
        .current_dir(workspace_root())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().context("running helm")?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

fn kinds(docs: &[serde_json::Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_chart_ships_the_rules_the_dashboard_and_an_enforcer_pod_monitor() {
    let default = render_chart(&[]).unwrap();
    let default_kinds = kinds(&default);
    for kind in ["PrometheusRule", "PodMonitor"] {
        assert!(
            !default_kinds.contains(kind),
            "{kind} is rendered by default"
        );
    }
    // The dashboard ConfigMap (templates/grafana-dashboard.yaml), by the sidecar label, its key
    // or its name, so that a renamed label or value does not hide it.
    let dashboards: Vec<&str> = default
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter(|d| {
            d["metadata"]["labels"]["grafana_dashboard"].is_string()
                || d["data"]["ordo.json"].is_string()
                || d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert!(
        dashboards.is_empty(),
        "the Grafana dashboard ConfigMap is rendered by default: {dashboards:?}"
    );
    let docs = render_chart(&[
        "prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "podMonitor.enabled=true",
    ])
    .unwrap();

    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("no PrometheusRule");
    let file: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(monitoring::alerts_path()).unwrap())
            .unwrap();
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "the PrometheusRule differs from charts/ordo/monitoring/alerts.yaml"
    );

    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("no ConfigMap with the grafana_dashboard label");
    let shipped: serde_json::Value =
        serde_json::from_str(dashboard["data"]["ordo.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring::dashboard_path()).unwrap())
            .unwrap();
    assert_eq!(
        shipped, file,
        "the dashboard ConfigMap differs from dashboard.json"
    );

    // The PodMonitor must select the pods the operator creates, on the port it names.
    let monitor = docs
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("no PodMonitor");
    let pod_labels = Names::new("shop", "api", "orders").labels();
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            pod_labels.get(key).map(String::as_str),
            value.as_str(),
            "the PodMonitor selects {key}={value}, which enforcer pods do not carry: {pod_labels:?}"
        );
    }
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin",
        "enforcer pods serve /metrics on the port named admin"
    );
}
