//! The demo (`scripts/demo`) end to end, on its own control plane: what it shows a user is
//! true. The operator takes the Service over, the example rules and detectors stop the attacks
//! they are meant to stop while honest customers are never blocked, the incidents reach the
//! ApiProtection's status, and deleting the protection restores the Service.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use ordo_tests::demo::run::{DemoReport, Options, Platform, run};
use ordo_tests::e2e;
use ordo_tests::sim::journeys::AttackKind;

/// The demo runs the debug `ordo-operator` and `ordo-enforcer` (`debug: true`); it checks the
/// report with [`check`] before it stops anything, so that a failed check prints the demo's
/// diagnostics (logs, status, rendered ConfigMap) while they still exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_shows_what_ordo_catches() {
    tokio::task::spawn_blocking(e2e::binaries)
        .await
        .unwrap()
        .unwrap();
    // The demo's last section runs the kubectl plugin when it is built.
    tokio::task::spawn_blocking(e2e::plugin_binary)
        .await
        .unwrap()
        .unwrap();
    let report = run(Options {
        platform: Platform::Local,
        why_local: Some("the test of the local mode".into()),
        keep: false,
        build: false,
        debug: true,
        seed: 42,
        max_learning: Duration::from_secs(300),
        k8s_bin_dir: std::env::var_os("ORDO_K8S_BIN").map(PathBuf::from),
        verify: Some(check),
    })
    .await
    .unwrap();
    // `check` ran inside the demo; running it again here makes sure it did run.
    check(&report);
}

/// The demo on the local cluster's real node (what `scripts/demo` runs where the machine
/// supports it): the chart, the enforcers and the bank in Pods, the traffic through the
/// ClusterIP. The same checks as the local mode. Ignored by default, like
/// `tests/tests/e2e_node.rs` (root, tests/cluster/build-node.sh and helm); scripts/test's
/// real-node tier runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root, tests/cluster/build-node.sh and build-helm.sh; run with --ignored"]
async fn demo_on_the_real_node_shows_what_ordo_catches() {
    if let Some(reason) = ordo_tests::demo::node::unsupported() {
        panic!("this machine cannot run the real node: {reason}");
    }
    tokio::task::spawn_blocking(|| {
        e2e::binaries()?;
        e2e::sample_bank_binary()?;
        e2e::plugin_binary()
    })
    .await
    .unwrap()
    .unwrap();
    let report = run(Options {
        platform: Platform::Node,
        why_local: None,
        keep: false,
        build: false,
        debug: true,
        seed: 42,
        max_learning: Duration::from_secs(420),
        k8s_bin_dir: std::env::var_os("ORDO_K8S_BIN").map(PathBuf::from),
        verify: Some(check),
    })
    .await
    .unwrap();
    assert_eq!(report.platform, Some(Platform::Node));
    check(&report);
}

/// What the demo shows a user is true.
fn check(report: &DemoReport) {
    let plugin = report
        .plugin_status
        .as_deref()
        .expect("the demo did not run kubectl ordo");
    for wanted in ["bank-api", "Enforce", "Incidents:", "Blocked:"] {
        assert!(
            plugin.contains(wanted),
            "kubectl ordo status lacks {wanted:?}:\n{plugin}"
        );
    }
    assert!(
        report.taken_over,
        "the operator did not take Service bank-api over"
    );
    assert!(
        report.detectors_active,
        "learning ended with inactive detectors"
    );
    assert!(
        report.status_mature,
        "the status never said the model is mature"
    );
    assert!(
        report.learning_requests > 1000,
        "{} learning requests",
        report.learning_requests
    );
    assert_eq!(
        report.learning_blocked, 0,
        "Monitor mode blocked benign requests"
    );
    assert!(report.enforce_reloaded);

    // Honest customers, running alongside the attacks in Enforce mode, are never blocked.
    assert!(report.honest_requests > 100);
    assert_eq!(
        report.honest_blocked, 0,
        "honest customers were blocked in Enforce mode"
    );

    assert_eq!(report.attacks.len(), AttackKind::ALL.len());
    let attack = |kind: AttackKind| report.attacks.iter().find(|a| a.kind == kind).unwrap();
    // A detection assertion that fails says what the status did show, in a few lines.
    let shown = shown_incidents(&report.status);
    // The example's SequenceRules stop a transfer without a balance lookup and replays from the
    // first harmful request.
    for kind in [AttackKind::SkippedSteps, AttackKind::ReplayedTransfer] {
        let a = attack(kind);
        assert_eq!(a.harm_reached, 0, "{kind}: {a:?}");
        assert!(
            a.detected_as.iter().any(|k| k == "SequenceRule"),
            "{kind}: {a:?}\n{shown}"
        );
    }
    // Detectors whose example action is Block stop these before any harm.
    for (kind, finding) in [
        (AttackKind::TamperedTransfer, "ShapeDeviation"),
        (AttackKind::ShadowProbing, "ShadowEndpoint"),
        (AttackKind::Injection, "ShapeDeviation"),
    ] {
        let a = attack(kind);
        assert_eq!(a.harm_reached, 0, "{kind}: {a:?}");
        assert!(
            a.detected_as.iter().any(|k| k == finding),
            "{kind}: {a:?}\n{shown}"
        );
    }
    // Enumeration and stuffing are judged against peers, so a few requests pass before the
    // session is far enough above them; then it is blocked.
    for (kind, finding) in [
        (AttackKind::AccountEnumeration, "Enumeration"),
        (AttackKind::PhoneEnumeration, "Enumeration"),
        (AttackKind::CredentialStuffing, "CredentialStuffing"),
    ] {
        let a = attack(kind);
        assert!(a.blocked > 0 && a.harm_reached < a.harmful, "{kind}: {a:?}");
        assert!(
            a.detected_as.iter().any(|k| k == finding),
            "{kind}: {a:?}\n{shown}"
        );
    }
    // Scraping is detected by volume, which the example only logs.
    let scraping = attack(AttackKind::Scraping);
    assert!(
        scraping.detected_as.iter().any(|k| k == "Volume"),
        "{scraping:?}\n{shown}"
    );
    assert_eq!(
        scraping.blocked, 0,
        "the example's volume detector logs, it must not block: {scraping:?}"
    );

    // What the user reads in status.
    let status = &report.status;
    assert!(!status.incidents.is_empty());
    assert!(status.incidents.iter().all(|i| !i.summary.is_empty()));
    // Skipped steps (1) and the replay (4) break balance-before-transfer; the replay's
    // second to fourth transfers break no-repeated-transfer.
    let matches = |rule: &str| report.rule_matches.get(rule).copied().unwrap_or(0);
    assert!(
        matches("balance-before-transfer") >= 5,
        "{:?}",
        report.rule_matches
    );
    assert!(
        matches("no-repeated-transfer") >= 3,
        "{:?}",
        report.rule_matches
    );
    let totals = status.totals.unwrap();
    assert!(totals.blocked > 0 && totals.incidents > 0, "{totals:?}");
    assert!(!status.endpoints.is_empty() && !status.top_sequences.is_empty());

    assert!(
        report.service_restored,
        "deleting the ApiProtection did not restore the Service"
    );
}

/// The incidents status showed (client, kinds, blocked) and its totals, one line.
fn shown_incidents(status: &ordo_operator::crd::ApiProtectionStatus) -> String {
    let incidents: Vec<String> = status
        .incidents
        .iter()
        .map(|i| format!("{} {:?} blocked {}", i.client, i.kinds, i.blocked))
        .collect();
    format!(
        "status showed {} incidents (totals {:?}): {}",
        incidents.len(),
        status.totals,
        incidents.join("; ")
    )
}
