//! Declared per-session rate limits: 429 with `Retry-After` once over the limit.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

#[tokio::test]
async fn over_the_limit_gets_429_with_retry_after() {
    let up = start_upstream().await;
    let yaml = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
session:
  identifiers: [ { header: { name: X-Session } } ]
rateLimits:
  - name: transfers
    operation: POST /api/v1/transferFunds
    requests: 3
    per: 1m
    action: Block
"#;
    let e = start_enforcer(yaml, up.addr).await;
    let c = client();
    let a = [("x-session", "a")];
    for _ in 0..3 {
        assert_eq!(
            post(&c, &e, "/api/v1/transferFunds", &a, "{}").await.status,
            200
        );
    }
    let limited = post(&c, &e, "/api/v1/transferFunds", &a, "{}").await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.json()["kind"], "RateLimit");
    // Another session has its own budget; other operations are not limited.
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &[("x-session", "b")], "{}")
            .await
            .status,
        200
    );
    assert_eq!(get(&c, &e, "/api/v1/accounts", &a).await.status, 200);
    assert_eq!(up.seen.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    let m = metrics(&c, &e).await;
    assert_eq!(
        metric_value(&m, "ordo_blocked_total{kind=\"RateLimit\"}"),
        1.0
    );
    e.shutdown().await;
}
