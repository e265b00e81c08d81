//! Sequence rules of every kind in Log, Block and dry-run, and the three modes, through a
//! real enforcer in front of a real upstream.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

const RULES: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
session:
  identifiers: [ { header: { name: X-Session } } ]
rules:
  - name: balance-before-transfer
    priority: 100
    action: ACTION
    dryRun: DRY
    requires:
      operation: POST /api/v1/transferFunds
      after: [ "GET /api/v1/accounts/{account_id}/balance" ]
      within: { requests: 5, duration: 10m }
  - name: no-delete-after-export
    priority: 50
    action: ACTION
    dryRun: DRY
    forbids:
      sequence: [ "GET /api/v1/export", "DELETE /api/v1/accounts/{id}" ]
  - name: no-repeated-otp
    priority: 10
    action: ACTION
    dryRun: DRY
    maxRepeat: { operation: POST /api/v1/otp, count: 2 }
  - name: human-speed-payee
    priority: 5
    action: ACTION
    dryRun: DRY
    minInterval: { from: GET /api/v1/payees, to: POST /api/v1/payees, duration: 2s }
"#;

fn config(action: &str, dry: bool, mode: &str) -> String {
    RULES
        .replace("ACTION", action)
        .replace("DRY", if dry { "true" } else { "false" })
        .replace("mode: Enforce", &format!("mode: {mode}"))
}

/// Runs one violation of each rule and returns the statuses seen.
async fn violate_each(e: &ordo_enforcer::runtime::RunningEnforcer, c: &TestClient) -> Vec<u16> {
    let s1 = [("x-session", "s1")];
    let s2 = [("x-session", "s2")];
    let s3 = [("x-session", "s3")];
    let s4 = [("x-session", "s4")];
    let mut statuses = Vec::new();
    // requires: transfer without balance.
    statuses.push(post(c, e, "/api/v1/transferFunds", &s1, "{}").await.status);
    // forbids: export then delete.
    assert_eq!(get(c, e, "/api/v1/export", &s2).await.status, 200);
    statuses.push(
        send(
            c,
            "DELETE",
            &format!("http://{}/api/v1/accounts/77", e.proxy_addr),
            &s2,
            "",
        )
        .await
        .status,
    );
    // maxRepeat: third OTP in a row.
    assert_eq!(post(c, e, "/api/v1/otp", &s3, "").await.status, 200);
    assert_eq!(post(c, e, "/api/v1/otp", &s3, "").await.status, 200);
    statuses.push(post(c, e, "/api/v1/otp", &s3, "").await.status);
    // minInterval: add a payee right after listing them.
    assert_eq!(get(c, e, "/api/v1/payees", &s4).await.status, 200);
    statuses.push(post(c, e, "/api/v1/payees", &s4, "{}").await.status);
    statuses
}

async fn rule_counters(
    c: &TestClient,
    e: &ordo_enforcer::runtime::RunningEnforcer,
) -> Vec<(String, u64, u64)> {
    let rules = admin_json(c, e, "/v1/rules").await;
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["matches"].as_u64().unwrap(),
                r["blocked"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_rule_kind_blocks_in_enforce_with_block() {
    let up = start_upstream().await;
    let e = start_enforcer(&config("Block", false, "Enforce"), up.addr).await;
    let c = client();
    // Allowed paths first: balance then transfer passes.
    let ok = [("x-session", "good")];
    assert_eq!(
        get(&c, &e, "/api/v1/accounts/12/balance", &ok).await.status,
        200
    );
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &ok, "{}")
            .await
            .status,
        200
    );
    let statuses = violate_each(&e, &c).await;
    assert_eq!(statuses, vec![403, 403, 403, 403]);
    // The blocked transfer never reached the upstream.
    let paths = up.seen.paths.lock().clone();
    assert_eq!(
        paths.iter().filter(|p| p.contains("transferFunds")).count(),
        1
    );
    // Counters: one match and one block each, in priority order.
    assert_eq!(
        rule_counters(&c, &e).await,
        vec![
            ("balance-before-transfer".to_owned(), 1, 1),
            ("no-delete-after-export".to_owned(), 1, 1),
            ("no-repeated-otp".to_owned(), 1, 1),
            ("human-speed-payee".to_owned(), 1, 1),
        ]
    );
    // The 403 carries the incident id, which /v1/incidents lists with a summary.
    let blocked = post(
        &c,
        &e,
        "/api/v1/transferFunds",
        &[("x-session", "s1")],
        "{}",
    )
    .await;
    assert_eq!(blocked.status, 403);
    assert_eq!(blocked.headers["content-type"], "application/problem+json");
    let problem = blocked.json();
    let incident_id = problem["incidentId"].as_str().unwrap().to_owned();
    assert_eq!(problem["rule"], "balance-before-transfer");
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    let incident = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == incident_id.as_str())
        .unwrap();
    // A header's value is a credential: shown as a keyed hash (admin.revealSessionKeys).
    let session = incident["session"].as_str().unwrap();
    assert!(session.starts_with("header:x-session=#"), "{session}");
    assert_eq!(incident["requests"], 2);
    assert_eq!(incident["blocked"], 2);
    assert_eq!(incident["kinds"], serde_json::json!(["SequenceRule"]));
    let summary = incident["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "Session {session} (127.0.0.1) sent POST /api/v1/transferFunds 2 times in "
        )) && summary.contains("without a preceding GET /api/v1/accounts/{account_id}/balance")
            && summary.ends_with(
                "which rule balance-before-transfer requires; 2 of the requests were blocked."
            ),
        "{summary}"
    );
    for key in ["client", "severity", "operations", "firstSeen", "lastSeen"] {
        assert!(!incident[key].is_null(), "{key} missing");
    }
    assert_eq!(
        incidents.as_array().unwrap().len(),
        4,
        "one incident per offending session"
    );
    let m = metrics(&c, &e).await;
    assert_eq!(
        metric_value(&m, "ordo_blocked_total{kind=\"SequenceRule\"}"),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            "ordo_rule_blocked_total{rule=\"balance-before-transfer\"}"
        ),
        2.0
    );
    e.shutdown().await;
}

#[tokio::test]
async fn log_action_flags_without_blocking() {
    let up = start_upstream().await;
    let e = start_enforcer(&config("Log", false, "Enforce"), up.addr).await;
    let c = client();
    assert_eq!(violate_each(&e, &c).await, vec![200, 200, 200, 200]);
    assert_eq!(
        rule_counters(&c, &e)
            .await
            .iter()
            .map(|r| (r.1, r.2))
            .collect::<Vec<_>>(),
        vec![(1, 0); 4]
    );
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    assert_eq!(incidents.as_array().unwrap().len(), 4);
    assert!(
        incidents
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["blocked"] == 0)
    );
    e.shutdown().await;
}

#[tokio::test]
async fn dry_run_counts_but_never_flags() {
    let up = start_upstream().await;
    let e = start_enforcer(&config("Block", true, "Enforce"), up.addr).await;
    let c = client();
    assert_eq!(violate_each(&e, &c).await, vec![200, 200, 200, 200]);
    assert_eq!(
        rule_counters(&c, &e)
            .await
            .iter()
            .map(|r| (r.1, r.2))
            .collect::<Vec<_>>(),
        vec![(1, 0); 4]
    );
    assert_eq!(
        admin_json(&c, &e, "/v1/incidents")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    e.shutdown().await;
}

#[tokio::test]
async fn modes_learn_monitor_enforce() {
    let up = start_upstream().await;
    let c = client();
    for (mode, status, incidents) in [("Learn", 200, 0), ("Monitor", 200, 1), ("Enforce", 403, 1)] {
        let e = start_enforcer(&config("Block", false, mode), up.addr).await;
        let a = post(&c, &e, "/api/v1/transferFunds", &[("x-session", "m")], "{}").await;
        assert_eq!(a.status, status, "{mode}");
        assert_eq!(
            admin_json(&c, &e, "/v1/incidents")
                .await
                .as_array()
                .unwrap()
                .len(),
            incidents,
            "{mode}"
        );
        let m = metrics(&c, &e).await;
        let decision = match mode {
            "Learn" => "allow",
            "Monitor" => "flag",
            _ => "block",
        };
        assert_eq!(
            metric_value(
                &m,
                &format!(
                    "ordo_requests_total{{decision=\"{decision}\",operation=\"POST /api/v1/transferFunds\"}}"
                )
            ),
            1.0,
            "{mode}\n{m}"
        );
        e.shutdown().await;
    }
}

#[tokio::test]
async fn requires_window_counts_requests() {
    let up = start_upstream().await;
    let e = start_enforcer(&config("Block", false, "Enforce"), up.addr).await;
    let c = client();
    let h = [("x-session", "w")];
    assert_eq!(
        get(&c, &e, "/api/v1/accounts/1/balance", &h).await.status,
        200
    );
    for _ in 0..4 {
        assert_eq!(get(&c, &e, "/api/v1/other", &h).await.status, 200);
    }
    // The balance is now 5 requests back: outside `within.requests: 5`.
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "{}").await.status,
        403
    );
    e.shutdown().await;
}
