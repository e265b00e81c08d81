//! A flood of session ids must not cost an honest user the history a `requires` rule reads:
//! fresh ids are evicted before established sessions, and an established session evicted
//! anyway comes back with its history marked lost, so the rule does not fire on it.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

fn config(max_sessions: usize) -> String {
    format!(
        r#"
upstream: {{ url: "http://{{upstream}}" }}
mode: Enforce
session:
  identifiers: [ {{ cookie: {{ name: sid }} }} ]
  maxSessions: {max_sessions}
rules:
  - name: balance-before-transfer
    action: Block
    requires:
      operation: POST /api/transfer
      after: [ GET /api/balance ]
      within: {{ requests: 10, duration: 10m }}
"#
    )
}

async fn transfer(c: &TestClient, e: &ordo_enforcer::runtime::RunningEnforcer, sid: &str) -> u16 {
    let cookie = format!("sid={sid}");
    post(c, e, "/api/transfer", &[("cookie", cookie.as_str())], "{}")
        .await
        .status
}

async fn call(c: &TestClient, e: &ordo_enforcer::runtime::RunningEnforcer, sid: &str, path: &str) {
    let cookie = format!("sid={sid}");
    assert_eq!(
        get(c, e, path, &[("cookie", cookie.as_str())]).await.status,
        200
    );
}

#[tokio::test]
async fn fresh_ids_do_not_evict_an_established_user() {
    let up = start_upstream().await;
    let e = start_enforcer(&config(640), up.addr).await;
    let c = client();
    for path in [
        "/api/profile",
        "/api/accounts",
        "/api/history",
        "/api/balance",
    ] {
        call(&c, &e, "victim", path).await;
    }
    // Ten times the table's capacity in fresh ids, one request each.
    for i in 0..6_400 {
        call(&c, &e, &format!("flood-{i}"), "/api/profile").await;
    }
    let model = admin_json(&c, &e, "/v1/model").await;
    assert!(
        model["sessions"]["evicted"].as_u64().unwrap() >= 5_000,
        "{model}"
    );
    assert_eq!(
        transfer(&c, &e, "victim").await,
        200,
        "the balance is still known"
    );
    // A fresh session without the balance is still refused.
    assert_eq!(transfer(&c, &e, "newcomer").await, 403);
    e.shutdown().await;
}

#[tokio::test]
async fn an_evicted_established_session_is_not_refused_for_its_lost_history() {
    let up = start_upstream().await;
    // 64 sessions: one per shard, so that established sessions must be evicted too.
    let e = start_enforcer(&config(64), up.addr).await;
    let c = client();
    for path in [
        "/api/profile",
        "/api/accounts",
        "/api/history",
        "/api/balance",
    ] {
        call(&c, &e, "victim", path).await;
    }
    // The shard is picked by a keyed hash with a random key, so which flood ids share the
    // victim's shard is chance: with 1,000 ids the victim's shard gets none with probability
    // (63/64)^1000 < 2e-7 (300 ids left it alone about once in a hundred runs), and more
    // than the 64 evictions a shard remembers land after it with a probability far smaller.
    for i in 0..1_000 {
        for _ in 0..4 {
            call(&c, &e, &format!("flood-{i}"), "/api/profile").await;
        }
    }
    assert_eq!(
        transfer(&c, &e, "victim").await,
        200,
        "the balance was in the history eviction took"
    );
    let rules = admin_json(&c, &e, "/v1/rules").await;
    assert_eq!(rules["rules"][0]["skippedLostHistory"], 1, "{rules}");
    // Nothing was lost for a session never seen before: the rule applies.
    assert_eq!(transfer(&c, &e, "newcomer").await, 403);
    e.shutdown().await;
}
