//! Protocol behaviour: upstream down / slow / resetting, oversized and malformed requests,
//! hop-by-hop and forwarding headers, HTTP/2 (h2c) clients, load shedding.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BASIC: &str =
    "upstream: { url: \"http://{upstream}\", timeout: 1s }\nlimits: { maxBodyBytes: 1024 }\n";

#[tokio::test]
async fn upstream_down_slow_and_resetting() {
    let c = client();
    let e = start_enforcer(BASIC, dead_address().await).await;
    let r = get(&c, &e, "/x", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.json()["detail"].as_str().unwrap().contains("refused"));
    let m = metrics(&c, &e).await;
    assert_eq!(
        metric_value(&m, "ordo_upstream_errors_total{kind=\"refused\"}"),
        1.0
    );
    e.shutdown().await;

    let up = start_upstream().await;
    let e = start_enforcer(BASIC, up.addr).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&c, &e, "/slow", &[]).await.status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metric_value(
            &metrics(&c, &e).await,
            "ordo_upstream_errors_total{kind=\"timeout\"}"
        ),
        1.0
    );
    e.shutdown().await;

    let e = start_enforcer(BASIC, start_resetting_upstream().await).await;
    let r = get(&c, &e, "/x", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        metric_value(
            &metrics(&c, &e).await,
            "ordo_upstream_errors_total{kind=\"reset\"}"
        ),
        1.0
    );
    e.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let up = start_upstream().await;
    let e = start_enforcer(BASIC, up.addr).await;
    let c = client();
    let big = "x".repeat(2000);
    assert_eq!(post(&c, &e, "/upload", &[], &big).await.status, 413);
    assert_eq!(
        post(&c, &e, "/upload", &[], &"x".repeat(1000)).await.status,
        200
    );
    // Chunked (no Content-Length): the limit applies while streaming.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..8)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 512]))))
        .collect();
    let body = StreamBody::new(futures::stream::iter(chunks));
    let streaming: Client<HttpConnector, _> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = http::Request::post(format!("http://{}/upload", e.proxy_addr))
        .body(body)
        .unwrap();
    let resp = streaming.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    e.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_400_and_do_not_wedge_the_proxy() {
    let up = start_upstream().await;
    let e = start_enforcer(BASIC, up.addr).await;
    let answer = raw(e.proxy_addr, b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let answer = raw(
        e.proxy_addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let answer = raw(
        e.proxy_addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = raw(e.proxy_addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // The proxy keeps serving others.
    let c = client();
    assert_eq!(get(&c, &e, "/still-alive", &[]).await.status, 200);
    e.shutdown().await;
}

#[tokio::test]
async fn header_read_timeout_closes_stalled_connections() {
    let up = start_upstream().await;
    let e = start_enforcer(
        &format!("{BASIC}\n").replace(
            "limits: { maxBodyBytes: 1024 }",
            "limits: { maxBodyBytes: 1024, headerReadTimeout: 1s }",
        ),
        up.addr,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(e.proxy_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the stalled connection must be closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    e.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let up = start_upstream().await;
    let e = start_enforcer(BASIC, up.addr).await;
    let c = client();
    let r = get(
        &c,
        &e,
        "/h?a=1&b=two",
        &[
            ("connection", "x-private"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("keep-alive").is_none(),
        "response hop-by-hop header leaked"
    );
    assert!(r.headers.get("x-request-id").is_some());
    // The upstream gets the request target in origin form, query included, and the client's Host.
    let seen = up.seen.paths.lock().clone();
    assert_eq!(seen, vec!["GET /h?a=1&b=two".to_owned()]);
    let h = up.seen.last_headers.lock().clone().unwrap();
    assert_eq!(h["host"], e.proxy_addr.to_string());
    assert!(h.get("x-private").is_none());
    assert!(h.get("te").is_none());
    assert_eq!(h["x-keep"], "yes");
    // The socket is the client (no trusted proxies): the client's own header is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-request-id").is_some());
    e.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_client() {
    let up = start_upstream().await;
    let e = start_enforcer(BASIC, up.addr).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    for i in 0..20 {
        let req = http::Request::get(format!("http://{}/api/v1/accounts/{i}", e.proxy_addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(&format!("/api/v1/accounts/{i}")));
    }
    let c = client();
    let model = admin_json(&c, &e, "/v1/model").await;
    let ops: Vec<&str> = model["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["GET /api/v1/accounts/{var1}"]);
    e.shutdown().await;
}

#[tokio::test]
async fn concurrency_limit_sheds_with_503() {
    let up = start_upstream().await;
    let yaml = BASIC.replace("timeout: 1s", "timeout: 10s").replace(
        "maxBodyBytes: 1024",
        "maxBodyBytes: 1024, maxConcurrentRequests: 2",
    );
    let e = start_enforcer(&yaml, up.addr).await;
    let url = format!("http://{}/slow", e.proxy_addr);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(&client(), "GET", &url, &[], "").await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = client();
    let shed = get(&c, &e, "/fast", &[]).await;
    assert_eq!(shed.status, 503);
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(&c, &e, "/fast", &[]).await.status, 200);
    assert_eq!(metric_value(&metrics(&c, &e).await, "ordo_shed_total"), 1.0);
    e.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let up = start_upstream().await;
    let e = start_enforcer(&BASIC.replace("timeout: 1s", "timeout: 10s"), up.addr).await;
    let url = format!("http://{}/slow", e.proxy_addr);
    let in_flight = tokio::spawn(async move { send(&client(), "GET", &url, &[], "").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = e.proxy_addr;
    e.shutdown().await;
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request completed"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
