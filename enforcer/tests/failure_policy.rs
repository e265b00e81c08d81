//! Internal errors follow the failure policy (open by default), counted; idle keep-alive
//! connections are closed after `limits.idleTimeout`.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::session_state::SessionState;
use ordo_enforcer::detect::{Analyzer, LateFinding, RequestContext, ResponseSummary};
use ordo_enforcer::finding::Finding;
use ordo_enforcer::operation::Operation;
use ordo_enforcer::runtime::start;

/// A detector with a bug: it panics on one path.
struct Buggy;

impl Analyzer for Buggy {
    fn wants_body(&self, _op: &Operation) -> bool {
        false
    }
    fn inspect(
        &self,
        ctx: &RequestContext<'_>,
        _state: &mut SessionState,
        _out: &mut Vec<Finding>,
    ) {
        assert!(!ctx.operation.template.contains("boom"), "detector bug");
    }
    fn observe(
        &self,
        _ctx: &RequestContext<'_>,
        _state: &mut SessionState,
        _resp: &ResponseSummary,
        _flagged: bool,
    ) -> Vec<LateFinding> {
        Vec::new()
    }
    fn model_view(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[tokio::test]
async fn open_forwards_and_closed_refuses_on_internal_errors() {
    let up = start_upstream().await;
    let c = client();
    for (policy, status) in [("Open", 200), ("Closed", 503)] {
        let yaml = enforcer_yaml(
            &format!(
                "upstream: {{ url: \"http://{{upstream}}\" }}\nmode: Enforce\nfailurePolicy: {policy}\n"
            ),
            up.addr,
        );
        let e = start(parse_yaml(&yaml).unwrap(), None, Arc::new(Buggy))
            .await
            .unwrap();
        assert_eq!(
            get(&c, &e, "/api/boom", &[]).await.status,
            status,
            "{policy}"
        );
        // The session and the process survive: the next request is checked normally.
        assert_eq!(get(&c, &e, "/api/fine", &[]).await.status, 200, "{policy}");
        let m = metrics(&c, &e).await;
        let label = policy.to_lowercase();
        assert_eq!(
            metric_value(
                &m,
                &format!("ordo_failure_policy_activations_total{{policy=\"{label}\"}}")
            ),
            1.0,
            "{policy}"
        );
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt as _;
    let up = start_upstream().await;
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\nlimits: { idleTimeout: 60s, headerReadTimeout: 1s }\n",
        up.addr,
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(e.proxy_addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // The server closes it (EOF, or a reset) long before the 60 s keep-alive idle timeout.
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was still open after 10 s: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    e.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = start_upstream().await;
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\nlimits: { idleTimeout: 1s }\n",
        up.addr,
    )
    .await;
    let stream = tokio::net::TcpStream::connect(e.proxy_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/x")
        .header("host", "bank")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    // The server closes the idle connection: the client's connection task ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "idle connection was not closed");
    e.shutdown().await;
}
