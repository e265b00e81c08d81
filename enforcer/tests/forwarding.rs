//! What reaches the upstream besides the path: client-address headers follow the
//! `X-Forwarded-For` trust policy, names with `_` are dropped, `Connection` cannot remove
//! `Host`, and absolute-form targets are refused.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DIRECT: &str = "upstream: { url: \"http://{upstream}\" }\n";
const BEHIND_PROXY: &str = "upstream: { url: \"http://{upstream}\" }\nclientAddress: { source: XForwardedFor, trustedHops: 1 }\n";

const CLIENT_ADDRESS_HEADERS: [(&str, &str); 4] = [
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("true-client-ip", "6.6.6.6"),
    ("x-forwarded-for", "6.6.6.6"),
];

fn upstream_headers(up: &Upstream) -> HeaderMap {
    up.seen.last_headers.lock().clone().unwrap()
}

async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn client_address_headers_from_the_client_are_dropped() {
    let up = start_upstream().await;
    let e = start_enforcer(DIRECT, up.addr).await;
    let c = client();
    assert_eq!(get(&c, &e, "/x", &CLIENT_ADDRESS_HEADERS).await.status, 200);
    let h = upstream_headers(&up);
    assert!(h.get("forwarded").is_none());
    assert!(h.get("x-real-ip").is_none());
    assert!(h.get("true-client-ip").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    e.shutdown().await;
}

#[tokio::test]
async fn client_address_headers_from_a_trusted_proxy_are_kept() {
    let up = start_upstream().await;
    let e = start_enforcer(BEHIND_PROXY, up.addr).await;
    let c = client();
    assert_eq!(get(&c, &e, "/x", &CLIENT_ADDRESS_HEADERS).await.status, 200);
    let h = upstream_headers(&up);
    let forwarded: Vec<&str> = h
        .get_all("forwarded")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        forwarded,
        ["for=6.6.6.6;proto=https", "for=127.0.0.1;proto=http"]
    );
    assert_eq!(h["x-real-ip"], "6.6.6.6");
    assert_eq!(h["true-client-ip"], "6.6.6.6");
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    e.shutdown().await;
}

#[tokio::test]
async fn header_names_with_underscores_are_not_forwarded() {
    let up = start_upstream().await;
    let e = start_enforcer(DIRECT, up.addr).await;
    let host = e.proxy_addr;
    let answer = raw(
        e.proxy_addr,
        &format!(
            "POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\nX-Keep: 1\r\nConnection: close\r\n\r\nhello"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"bodyLen\":5"), "{answer}");
    let h = upstream_headers(&up);
    assert!(h.get("transfer_encoding").is_none());
    assert!(h.get("x_forwarded_for").is_none());
    assert_eq!(h["x-keep"], "1");
    e.shutdown().await;
}

#[tokio::test]
async fn connection_cannot_remove_host_or_forwarding_headers() {
    let up = start_upstream().await;
    let e = start_enforcer(BEHIND_PROXY, up.addr).await;
    let answer = raw(
        e.proxy_addr,
        "GET /x HTTP/1.1\r\nHost: api.example\r\nConnection: close, Host, X-Forwarded-For, X-Private\r\nX-Forwarded-For: 203.0.113.9\r\nX-Private: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let h = upstream_headers(&up);
    assert_eq!(h["host"], "api.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert!(h.get("x-private").is_none());
    e.shutdown().await;
}

#[tokio::test]
async fn absolute_form_targets_are_refused() {
    let up = start_upstream().await;
    let e = start_enforcer(DIRECT, up.addr).await;
    let host = e.proxy_addr;
    for target in [
        format!("http://{host}/x"),
        "http://evil.example/x".to_owned(),
    ] {
        let answer = raw(
            e.proxy_addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 0);
    e.shutdown().await;
}
