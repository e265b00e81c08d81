//! Small plain-HTTP helpers for the demo's processes and Pods: a free port, a GET and a JSON
//! POST that return status and body, and a wait for a readiness endpoint.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A loopback address with a port that was free a moment ago, for a process started next.
/// Taken below Linux's ephemeral range (32768-60999): a port from `bind(0)` is free only until
/// an outgoing connection or another `bind(0)` gets it too, which happened in CI ("Address
/// already in use" for the operator's health port). Each process starts at its own offset, as
/// `enforcer/tests/scaleout.rs` does.
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = u16::try_from(std::process::id() % 1_000).unwrap_or(0) * 10;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + (start + offset) % SPAN;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().context("reading the picked port");
        }
    }
    bail!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}

/// A pooled plain-HTTP client.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET url` with an optional bearer token; returns the status and the body as text.
pub async fn get(url: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut request = http::Request::get(url);
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .with_context(|| format!("building GET {url}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .with_context(|| format!("GET {url} timed out"))?
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading GET {url}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST url` with a JSON body on a new connection; returns the status and the body as text.
pub async fn post_json(url: &str, body: &serde_json::Value) -> anyhow::Result<(u16, String)> {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .with_context(|| format!("building POST {url}"))?;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .with_context(|| format!("POST {url} timed out"))?
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading POST {url}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `url` until it answers 200, for at most `timeout`; `alive` is called between tries
/// and fails the wait early (for example when the process has exited).
pub async fn wait_ok(
    url: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        alive()?;
        let last = match get(url, None).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {}", body.trim()),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!("{url} not ready after {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
