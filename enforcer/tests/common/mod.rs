//! Test support: a real upstream hyper server on loopback, an in-process enforcer started
//! from YAML, and a small HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::{LearnedAnalyzer, NoopAnalyzer};
use ordo_enforcer::runtime::{RunningEnforcer, start};
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    pub hits: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    pub paths: Mutex<Vec<String>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

async fn upstream_service(
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    *seen.last_headers.lock() = Some(req.headers().clone());
    seen.paths
        .lock()
        .push(format!("{} {}", req.method(), req.uri()));
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let json = serde_json::json!({ "method": method, "path": path, "bodyLen": body.len() });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(resp)
}

/// A real HTTP/1.1 upstream on 127.0.0.1:0. `/slow*` sleeps 5 s, `/status/N` answers N.
pub async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_service(Arc::clone(&s), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

/// An upstream that reads the request and closes the connection without answering.
pub async fn start_resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            });
        }
    });
    addr
}

/// An address nobody listens on.
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Starts an enforcer from YAML; `{upstream}` is replaced by the upstream address and
/// listen/admin addresses are set to loopback port 0 unless given.
pub async fn start_enforcer(yaml: &str, upstream: SocketAddr) -> RunningEnforcer {
    let config = parse_yaml(&enforcer_yaml(yaml, upstream)).unwrap();
    start(config, None, Arc::new(NoopAnalyzer)).await.unwrap()
}

/// Starts an enforcer from YAML, as [`start_enforcer`], with the learned analyzer its config
/// describes; the analyzer is returned too, for the test to look into.
pub async fn start_learning(
    yaml: &str,
    upstream: SocketAddr,
) -> (RunningEnforcer, Arc<LearnedAnalyzer>) {
    let config = parse_yaml(&enforcer_yaml(yaml, upstream)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let e = start(config, None, Arc::clone(&analyzer) as _)
        .await
        .unwrap();
    (e, analyzer)
}

pub fn enforcer_yaml(yaml: &str, upstream: SocketAddr) -> String {
    let mut text = yaml.replace("{upstream}", &upstream.to_string());
    if !text.contains("\nlisten:") && !text.starts_with("listen:") {
        text.push_str("\nlisten: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n");
    }
    text
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// GET on the proxy.
pub async fn get(
    client: &TestClient,
    e: &RunningEnforcer,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    send(
        client,
        "GET",
        &format!("http://{}{path}", e.proxy_addr),
        headers,
        "",
    )
    .await
}

pub async fn post(
    client: &TestClient,
    e: &RunningEnforcer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send(
        client,
        "POST",
        &format!("http://{}{path}", e.proxy_addr),
        headers,
        body,
    )
    .await
}

/// GET on the admin API, parsed as JSON.
pub async fn admin_json(client: &TestClient, e: &RunningEnforcer, path: &str) -> serde_json::Value {
    let a = send(
        client,
        "GET",
        &format!("http://{}{path}", e.admin_addr),
        &[],
        "",
    )
    .await;
    assert_eq!(
        a.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

pub async fn metrics(client: &TestClient, e: &RunningEnforcer) -> String {
    let a = send(
        client,
        "GET",
        &format!("http://{}/metrics", e.admin_addr),
        &[],
        "",
    )
    .await;
    String::from_utf8(a.body.to_vec()).unwrap()
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An enforcer process (the binary of this package), killed when the test ends, passed or
/// failed.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the enforcer's JSON log until the "enforcer listening" line; returns its fields.
pub fn listening_line(stdout: std::process::ChildStdout) -> serde_json::Value {
    follow_log(stdout, None)
}

/// [`listening_line`], keeping every line of the log (to this point and after) in `kept`.
pub fn follow_log(
    stdout: std::process::ChildStdout,
    kept: Option<Arc<Mutex<Vec<String>>>>,
) -> serde_json::Value {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "enforcer listening"
            {
                let _ = tx.send(v);
                sent = true;
            }
            // Keep draining so that the child never blocks on a full pipe.
            if let Some(kept) = &kept {
                kept.lock().push(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the enforcer did not log \"enforcer listening\" within 60 s")
}
