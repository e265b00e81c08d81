//! Another spelling of a path is the same operation: rate limits, sequence rules and the
//! OpenAPI validation apply to every spelling the upstream would route to it, the upstream
//! receives the canonical path, and what has no unambiguous form is refused with 400.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

const POLICY: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
session:
  identifiers: [ { header: { name: X-Session } } ]
rateLimits:
  - name: exports
    operation: GET /api/v1/export
    requests: 1
    per: 1m
    action: Block
rules:
  - name: balance-before-transfer
    action: Block
    requires:
      operation: POST /api/v1/transferFunds
      after: ["GET /api/v1/accounts/{id}/balance"]
"#;

/// Sends raw bytes and returns what the proxy answered.
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn last_seen(up: &Upstream) -> String {
    up.seen.paths.lock().last().cloned().unwrap_or_default()
}

#[tokio::test]
async fn every_spelling_counts_against_the_rate_limit() {
    let up = start_upstream().await;
    let e = start_enforcer(POLICY, up.addr).await;
    let c = client();
    let spellings = [
        "/api/v1/%65xport",
        "/api/v1/./export",
        "/api/v1/x/../export",
        "/api/v1/x/%2E%2e/export",
        "/api//v1/export/",
        "/api/v1/export",
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let session = format!("s{i}");
        let s = [("x-session", session.as_str())];
        // The first request of the session passes, under any spelling, and the upstream
        // sees the path that was checked.
        let first = get(&c, &e, spelling, &s).await;
        assert_eq!(first.status, 200, "{spelling}");
        let want = if spelling.ends_with('/') {
            "GET /api/v1/export/"
        } else {
            "GET /api/v1/export"
        };
        assert_eq!(last_seen(&up), want, "{spelling}");
        // It used the operation's budget: the plain spelling is now over the limit...
        assert_eq!(get(&c, &e, "/api/v1/export", &s).await.status, 429);
        // ...and so is every other spelling, HEAD included.
        for other in spellings {
            assert_eq!(get(&c, &e, other, &s).await.status, 429, "{other}");
        }
        let head = send(
            &c,
            "HEAD",
            &format!("http://{}/api/v1/%65xport", e.proxy_addr),
            &s,
            "",
        )
        .await;
        assert_eq!(head.status, 429, "HEAD takes the GET operation's limit");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), spellings.len());
    e.shutdown().await;
}

#[tokio::test]
async fn every_spelling_meets_the_sequence_rule() {
    let up = start_upstream().await;
    let e = start_enforcer(POLICY, up.addr).await;
    let c = client();
    let s = [("x-session", "t")];
    for spelling in [
        "/api/v1/%74ransferFunds",
        "/api/v1/transfer%46unds",
        "/api/v1/./transferFunds",
        "/api/v1/accounts/../transferFunds",
        "/api/v1/transferFunds",
    ] {
        let blocked = post(&c, &e, spelling, &s, "{}").await;
        assert_eq!(blocked.status, 403, "{spelling}");
        assert_eq!(blocked.json()["rule"], "balance-before-transfer");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 0);
    // A balance lookup under another spelling satisfies the rule; the transfer then passes.
    assert_eq!(
        get(&c, &e, "/api/v1/accounts/7/%62alance", &s).await.status,
        200
    );
    assert_eq!(last_seen(&up), "GET /api/v1/accounts/7/balance");
    assert_eq!(
        post(&c, &e, "/api/v1/%74ransferFunds", &s, "{}")
            .await
            .status,
        200
    );
    assert_eq!(last_seen(&up), "POST /api/v1/transferFunds");
    e.shutdown().await;
}

fn openapi_yaml() -> String {
    format!(
        "upstream: {{ url: \"http://{{upstream}}\" }}\nmode: Enforce\nopenAPI: {{ path: {FIXTURES}/paths-openapi.yaml }}\n"
    )
}

#[tokio::test]
async fn every_spelling_is_validated_against_the_openapi_document() {
    let up = start_upstream().await;
    let e = start_enforcer(&openapi_yaml(), up.addr).await;
    let c = client();
    let json = [("content-type", "application/json")];
    let bad = r#"{"name": "x", "isAdmin": true}"#;
    for spelling in ["/api/v1/payees", "/api/v1/%70ayees", "/api/v1/x/../payees"] {
        let refused = post(&c, &e, spelling, &json, bad).await;
        assert_eq!(refused.status, 400, "{spelling}");
        assert_eq!(refused.json()["kind"], "SchemaViolation", "{spelling}");
    }
    let ok = post(&c, &e, "/api/v1/%70ayees", &json, r#"{"name": "x"}"#).await;
    assert_eq!(ok.status, 200);
    assert_eq!(last_seen(&up), "POST /api/v1/payees");
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 1);
    e.shutdown().await;
}

#[tokio::test]
async fn every_query_parameter_is_validated() {
    let up = start_upstream().await;
    let e = start_enforcer(&openapi_yaml(), up.addr).await;
    let c = client();
    let padding: String = (0..64).map(|i| format!("p={i}&")).collect();
    for query in [
        "limit=1000".to_owned(),
        format!("{padding}limit=1000"),
        "limit=5&limit=1000".to_owned(),
        "li%6Dit=1000".to_owned(),
    ] {
        let path = format!("/api/v1/export?{query}");
        let refused = get(&c, &e, &path, &[]).await;
        assert_eq!(refused.status, 400, "{query}");
        assert_eq!(refused.json()["kind"], "SchemaViolation", "{query}");
    }
    let ok = get(&c, &e, &format!("/api/v1/%65xport?{padding}limit=5"), &[]).await;
    assert_eq!(ok.status, 200);
    // The query is forwarded as received, after the canonical path.
    assert_eq!(
        last_seen(&up),
        format!("GET /api/v1/export?{padding}limit=5")
    );
    // Above the cap (128 by default) the request is refused rather than partly checked.
    let many: String = (0..129).map(|i| format!("p{i}=1&")).collect();
    let refused = get(&c, &e, &format!("/api/v1/other?{many}"), &[]).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["detail"],
        "the query has more than 128 parameters"
    );
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 1);
    e.shutdown().await;
}

#[tokio::test]
async fn ambiguous_targets_are_refused_with_a_problem() {
    let up = start_upstream().await;
    let e = start_enforcer(POLICY, up.addr).await;
    let c = client();
    for path in [
        "/api%2Fv1/export",
        "/api/v1/export;jsessionid=1",
        "/api/v1/..;/v1/export",
        "/api/v1/export%00",
        "/api/v1/%252e%252e/export",
        "/api/v1/%5Cexport",
        "/api/v1/%FFexport",
        "/../api/v1/export",
        "/api/v1/export?li%00mit=1",
    ] {
        let refused = get(&c, &e, path, &[]).await;
        assert_eq!(refused.status, 400, "{path}");
        assert_eq!(refused.headers["content-type"], "application/problem+json");
        assert_eq!(refused.json()["title"], "Bad request", "{path}");
        assert!(refused.json()["requestId"].is_string());
    }
    let host = e.proxy_addr;
    for request in [
        format!("get /api/v1/export HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("Get /api/v1/export HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET http://{host}/api/v1/export HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ),
        format!("GET /api/v1\\export HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = raw(e.proxy_addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 0);
    e.shutdown().await;
}

#[tokio::test]
async fn the_policy_can_accept_what_the_upstream_reads_one_way() {
    let up = start_upstream().await;
    let yaml = format!(
        "{POLICY}paths: {{ encodedSlash: Keep, pathParameters: Strip, caseSensitive: false, trailingSlash: Strip }}\n"
    );
    let e = start_enforcer(&yaml, up.addr).await;
    let c = client();
    let s = [("x-session", "p")];
    assert_eq!(
        get(&c, &e, "/API/v1/Export;jsessionid=1/", &s).await.status,
        200
    );
    // Matched case-insensitively, forwarded in the client's case without the parameter.
    assert_eq!(last_seen(&up), "GET /API/v1/Export");
    assert_eq!(get(&c, &e, "/api/v1/export", &s).await.status, 429);
    assert_eq!(get(&c, &e, "/a%2fb", &s).await.status, 200);
    assert_eq!(last_seen(&up), "GET /a%2Fb");
    e.shutdown().await;
}
