//! A change to an ApiProtection or its SequenceRules reaches the running enforcer, every time.
//!
//! The operator, an enforcer and the simulated bank run as local processes on the real
//! control plane, with customers' traffic flowing and reports arriving all along (as in the
//! demo). The test then switches `spec.mode` back and forth and deletes and re-creates a
//! SequenceRule many times in a row, and after each change measures how long until the
//! enforcer's admin API shows it running the new config. Every change must arrive within
//! [`BOUND`]; the distribution is printed. `ORDO_PROPAGATION_CHANGES=300` runs a longer loop.
//!
//! The stand-in for the kubelet's ConfigMap refresh is the demo's `ConfigSync` (the enforcer
//! itself cannot run in a kwok pod); everything else is the real operator and enforcer.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use ordo_enforcer::config::Mode;
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_operator::desired::names::enforcer_name;
use ordo_tests::cluster::supervisor::Supervisor;
use ordo_tests::cluster::workspace_root;
use ordo_tests::demo::enforcer::{
    self, ChangeFollower, ConfigSync, Expected, LocalAddrs, LocalFiles,
};
use ordo_tests::demo::examples::{self, FIELD_MANAGER};
use ordo_tests::demo::http::{self, free_loopback_addr};
use ordo_tests::demo::run::{create_bank_service, start_operator};
use ordo_tests::demo::tls;
use ordo_tests::e2e::{self, Diagnostics};
use ordo_tests::sim::bank::{Directory, RunningBank};
use ordo_tests::sim::{driver, journeys};

/// Longest a change may take to reach the enforcer: the operator reconciles within
/// milliseconds, the config sync polls every 0.5 s and the enforcer every 1 s, so anything
/// near this bound means a change was missed and found again only by a resync.
const BOUND: Duration = Duration::from_secs(15);
/// The operator's report interval in the demo's settings (`start_operator`).
const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Changes made by default (a third of them rule changes).
const DEFAULT_CHANGES: usize = 24;
/// The rule the loop deletes and re-creates.
const TOGGLED_RULE: &str = "no-repeated-transfer";

/// The value of the sample line that starts with `name` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_spec_change_reaches_the_enforcer() -> anyhow::Result<()> {
    let changes: usize = std::env::var("ORDO_PROPAGATION_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CHANGES);
    let bins = e2e::binaries()?;
    let (cluster, client, namespace) = e2e::setup("propagation").await?;

    let dir = tempfile::Builder::new()
        .prefix("ordo-propagation-")
        .tempdir()?
        .keep();
    let mut supervisor = Supervisor::start(&dir)?;
    // Declared after the supervisor so that it reports before the logs are removed.
    let mut diagnostics = Diagnostics::new(cluster, &namespace);
    let pki = tls::generate(&dir.join("pki"))?;
    diagnostics.log("operator", &supervisor.log_path("ordo-operator"));
    diagnostics.log("enforcer", &supervisor.log_path("ordo-enforcer"));
    let operator = start_operator(
        &mut supervisor,
        &bins.join("ordo-operator"),
        cluster.kubeconfig_path(),
        &pki,
        &[
            "--watch-namespace".into(),
            namespace.clone(),
            "--lease-namespace".into(),
            namespace.clone(),
        ],
    )?;
    http::wait_ok(
        &format!("http://{}/readyz", operator.health),
        Duration::from_secs(60),
        || supervisor.check_running(),
    )
    .await?;

    let directory = Directory::generate(2000);
    let bank = RunningBank::start(&directory, None).await?;
    create_bank_service(&client, &namespace).await?;
    let manifests = examples::load_dir(&workspace_root().join("examples/bank-api"))?;
    examples::apply(&client, &namespace, &manifests).await?;
    let rule_manifest = manifests
        .iter()
        .find(|m| m.raw["metadata"]["name"] == TOGGLED_RULE)
        .context("the bank example has no rule no-repeated-transfer")?
        .raw
        .clone();

    let addrs = start_enforcer(
        &client,
        &namespace,
        &mut supervisor,
        &bins.join("ordo-enforcer"),
        &dir,
        format!("http://{}", bank.addr),
    )
    .await?;
    let admin = addrs.0.admin.to_string();
    let sync = addrs.1;

    // Customers keep using the bank through the enforcer, so that reports with model deltas
    // and status refreshes race with every change.
    let traffic = {
        let journeys = journeys::generate(7, &directory, 0, 1500, 0, true);
        let target = addrs.0.listen;
        tokio::spawn(async move { driver::run(target, &journeys, 4).await })
    };

    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &namespace);
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), &namespace);
    let follower = ChangeFollower::new(
        &client,
        &namespace,
        &enforcer_name("bank-api"),
        &sync,
        &admin,
    );
    let mut expected = Expected {
        mode: Mode::Monitor,
        rules: vec![(TOGGLED_RULE.to_owned(), true)],
    };
    let applied = follower
        .follow(&expected, Instant::now(), follower.generation(), BOUND)
        .await;
    if applied.running.is_none() {
        bail!("the applied example did not reach the enforcer: {applied}");
    }

    let metrics_url = format!("http://{}/metrics", operator.health);
    // The enforcer's first reports count its start with the applied example; let them arrive.
    let mut observed = e2e::wait_for(
        "the operator to measure the enforcer's start",
        BOUND,
        || async {
            let (_, text) = http::get(&metrics_url, None).await?;
            let count = metric(&text, "ordo_operator_config_propagation_seconds_count");
            e2e::or_seen((count >= 1.0).then_some(count), || {
                format!("ordo_operator_config_propagation_seconds_count {count}")
            })
        },
    )
    .await?;
    tokio::time::sleep(REPORT_INTERVAL).await;
    let (_, text) = http::get(&metrics_url, None).await?;
    observed = observed.max(metric(
        &text,
        "ordo_operator_config_propagation_seconds_count",
    ));
    let mut latencies = Vec::new();
    let mut missed = Vec::new();
    let mut unmeasured = Vec::new();
    for change in 0..changes {
        let generation_before = follower.generation();
        let since = Instant::now();
        if change % 3 == 2 {
            let present = !expected.rules[0].1;
            expected.rules[0].1 = present;
            if present {
                rules
                    .patch(
                        TOGGLED_RULE,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&rule_manifest),
                    )
                    .await?;
            } else {
                rules.delete(TOGGLED_RULE, &DeleteParams::default()).await?;
            }
        } else {
            expected.mode = if expected.mode == Mode::Monitor {
                Mode::Enforce
            } else {
                Mode::Monitor
            };
            protections
                .patch(
                    "bank-api",
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&serde_json::json!({ "spec": { "mode": expected.mode } })),
                )
                .await?;
        }
        let arrival = follower
            .follow(&expected, since, generation_before, BOUND)
            .await;
        match arrival.running {
            Some(latency) => {
                latencies.push(latency);
                // A report carries the revision the enforcer runs; wait for the operator to
                // count this change before the next one (a revision run for less than one
                // report interval is never reported).
                let measured =
                    e2e::wait_for("the operator to measure the change", BOUND, || async {
                        let (_, text) = http::get(&metrics_url, None).await?;
                        let count = metric(&text, "ordo_operator_config_propagation_seconds_count");
                        e2e::or_seen((count > observed).then_some(count), || {
                            format!("ordo_operator_config_propagation_seconds_count {count}")
                        })
                    })
                    .await;
                match measured {
                    Ok(count) => observed = count,
                    Err(err) => {
                        eprintln!("change {change} was not measured: {err:#}");
                        unmeasured.push(change);
                    }
                }
            }
            None => {
                eprintln!(
                    "change {change} ({expected:?}) did not arrive within {BOUND:?}: {arrival}"
                );
                missed.push(change);
                // Let it settle (or not) before the next change, so that one miss counts once.
                let late = follower
                    .follow(
                        &expected,
                        since,
                        generation_before,
                        Duration::from_secs(300),
                    )
                    .await;
                eprintln!("change {change} later: {late}");
            }
        }
    }
    traffic.abort();

    latencies.sort();
    println!(
        "config propagation: {} changes, {} missed the {BOUND:?} bound; p50 {:?}, p90 {:?}, max {:?}",
        changes,
        missed.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().copied().unwrap_or_default(),
    );
    assert!(
        missed.is_empty(),
        "changes {missed:?} of {changes} did not reach the enforcer within {BOUND:?}"
    );

    assert!(
        unmeasured.is_empty(),
        "the operator did not measure changes {unmeasured:?} in ordo_operator_config_propagation_seconds"
    );
    let (_, text) = http::get(&metrics_url, None).await?;
    let sum = metric(&text, "ordo_operator_config_propagation_seconds_sum");
    let count = metric(&text, "ordo_operator_config_propagation_seconds_count");
    let within = |le: &str| {
        let name = format!("ordo_operator_config_propagation_seconds_bucket{{le=\"{le}\"}}");
        metric(&text, &name)
    };
    println!(
        "ordo_operator_config_propagation_seconds: {count} observations, mean {:.2} s; <= 1 s: {}, <= 2 s: {}, <= 5 s: {}, <= 10 s: {}",
        sum / count.max(1.0),
        within("1"),
        within("2"),
        within("5"),
        within("10"),
    );
    // Reports arrived all along, so they asked for status refreshes.
    let refreshes = metric(
        &text,
        "ordo_operator_status_refreshes_total{result=\"requested\"}",
    );
    assert!(
        refreshes >= 1.0,
        "no status refresh was requested by the enforcer's reports"
    );
    // The chart's dashboard and alerts read only metrics these live processes export.
    let (_, enforcer_metrics) = http::get(&format!("http://{admin}/metrics"), None).await?;
    let missing = ordo_tests::monitoring::missing_metrics(&[&text, &enforcer_metrics])?;
    assert!(
        missing.is_empty(),
        "the chart's dashboard or alerts read metrics the running operator and enforcer do not export: {missing:?}"
    );
    // The report lag and the model maturity they chart are live values: the operator
    // acknowledged a report within a few intervals, and the customers' traffic taught the model.
    let last_report = metric(
        &enforcer_metrics,
        "ordo_report_last_success_timestamp_seconds",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let lag = now - last_report;
    let progress = metric(&enforcer_metrics, "ordo_model_maturity_ratio");
    let operations = metric(&enforcer_metrics, "ordo_model_operations");
    println!(
        "report lag {lag:.1} s; model maturity {progress:.2} (mature: {}), {operations} operations, {} with a mature baseline",
        metric(&enforcer_metrics, "ordo_model_mature"),
        metric(&enforcer_metrics, "ordo_model_operations_mature"),
    );
    assert!(
        last_report > 0.0 && lag < (REPORT_INTERVAL * 10).as_secs_f64(),
        "the enforcer's last acknowledged report is {lag:.1} s old (ordo_report_last_success_timestamp_seconds {last_report})"
    );
    assert!(
        progress > 0.0 && operations > 0.0,
        "ordo_model_maturity_ratio {progress}, ordo_model_operations {operations} after minutes of traffic"
    );
    bank.shutdown();
    supervisor.shutdown();
    diagnostics.passed();
    Ok(())
}

/// Starts the enforcer with the config the operator rendered, kept in step with the
/// ConfigMap; returns its addresses and the running sync.
async fn start_enforcer(
    client: &kube::Client,
    namespace: &str,
    supervisor: &mut Supervisor,
    bin: &Path,
    dir: &Path,
    upstream: String,
) -> anyhow::Result<(LocalAddrs, ConfigSync)> {
    let config_map = enforcer_name("bank-api");
    let data = enforcer::wait_for_config(client, namespace, &config_map, BOUND * 4).await?;
    let token = dir.join("report-token");
    enforcer::write_report_token(client, namespace, &config_map, &token).await?;
    let addrs = LocalAddrs {
        listen: free_loopback_addr()?,
        admin: free_loopback_addr()?,
        upstream,
    };
    let config = dir.join("enforcer.yaml");
    enforcer::write_atomically(
        &config,
        &enforcer::local_config(&data, &addrs, dir, &token)?,
    )?;
    supervisor.spawn(
        "ordo-enforcer",
        bin,
        &[
            "--config".to_owned(),
            config.display().to_string(),
            "--log-format".to_owned(),
            "text".to_owned(),
        ],
        &[],
    )?;
    let sync = ConfigSync::start(
        client.clone(),
        namespace.to_owned(),
        config_map,
        data,
        addrs.clone(),
        LocalFiles {
            dir: dir.to_path_buf(),
            token,
            config,
        },
    );
    http::wait_ok(
        &format!("http://{}/readyz", addrs.admin),
        Duration::from_secs(60),
        || supervisor.check_running(),
    )
    .await?;
    Ok((addrs, sync))
}
