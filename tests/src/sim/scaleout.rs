//! What a scale-out run needs around the enforcer replicas: round-robin front proxies (as the
//! pods of an ingress controller would be: each request of one customer may reach any replica)
//! and a connection balancer in front of them (as the Service of the ingress would be), plus
//! the enforcer config with a static peer list. Used by `tests/tests/scaleout.rs` and the
//! forwarding benchmark (`bench`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

type FrontBody = BoxBody<Bytes, hyper::Error>;

/// The backends a front spreads requests over; changed while it runs (endpoints that come and
/// go, with the lag of a real controller when the caller changes them late).
pub type Backends = Arc<Mutex<Vec<SocketAddr>>>;

/// Starts an HTTP proxy on loopback that sends each request to the next backend in turn,
/// passing every header through (`X-Forwarded-For` as the client set it), and tries the
/// next backend when one refuses the connection (as ingress controllers retry connection
/// failures).
pub async fn start_front(backends: Backends) -> std::io::Result<SocketAddr> {
    start_front_on(
        "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        backends,
    )
    .await
}

/// [`start_front`] on `listen` (the front Pods of `tests/tests/e2e_scaleout.rs` listen on
/// their Pod IP).
pub async fn start_front_on(listen: SocketAddr, backends: Backends) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (client, backends, next) =
                (client.clone(), Arc::clone(&backends), Arc::clone(&next));
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let (client, backends, next) =
                        (client.clone(), Arc::clone(&backends), Arc::clone(&next));
                    async move { Ok::<_, Infallible>(relay(&client, &backends, &next, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(status: u16) -> http::Response<FrontBody> {
    let mut resp = http::Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    resp
}

async fn relay(
    client: &Client<HttpConnector, Full<Bytes>>,
    backends: &Backends,
    next: &AtomicUsize,
    req: http::Request<Incoming>,
) -> http::Response<FrontBody> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(400);
    };
    let list = backends.lock().clone();
    let start = next.fetch_add(1, Ordering::Relaxed);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    for i in 0..list.len() {
        let backend = list[(start + i) % list.len()];
        let mut out = http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("http://{backend}{path}"));
        for (name, value) in &parts.headers {
            if name != http::header::HOST && name != http::header::CONNECTION {
                out = out.header(name, value);
            }
        }
        let Ok(out) = out.body(Full::new(body.clone())) else {
            return answer(400);
        };
        match client.request(out).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                return http::Response::from_parts(parts, body.boxed());
            }
            Err(e) if e.is_connect() => continue,
            Err(_) => return answer(502),
        }
    }
    answer(502)
}

/// Keeps `backends` at the addresses `name` resolves to (port `port`), looked up every
/// `interval`, as an ingress controller follows a Service's endpoints. A failed or empty
/// lookup keeps the last answer, so that a DNS hiccup does not leave the front with nothing.
pub fn follow_dns(
    name: String,
    port: u16,
    backends: Backends,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(found) = tokio::net::lookup_host((name.as_str(), port)).await {
                let mut found: Vec<SocketAddr> = found.filter(SocketAddr::is_ipv4).collect();
                found.sort_unstable();
                found.dedup();
                if !found.is_empty() {
                    let mut current = backends.lock();
                    if *current != found {
                        tracing::info!(?found, "front: backends changed");
                        *current = found;
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// Starts a TCP balancer on loopback that hands each new connection to the next of `fronts`
/// (kube-proxy in front of the ingress pods).
pub async fn start_balancer(fronts: Vec<SocketAddr>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let next = AtomicUsize::new(0);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Some(front) = fronts
                .get(next.fetch_add(1, Ordering::Relaxed) % fronts.len().max(1))
                .copied()
            else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(front).await {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(addr)
}

/// The secret of the runs' replicas.
pub const PEER_SECRET: &str = "scale-out-runs-shared-secret-0001";

/// The `peers` section of replica `me` among `all` (a static list).
pub fn peers_yaml(me: SocketAddr, all: &[SocketAddr]) -> String {
    let list: Vec<String> = all.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "peers:\n  listen: {me}\n  advertise: \"{me}\"\n  static: [{}]\n  secret: {PEER_SECRET}\n",
        list.join(", ")
    )
}

/// A free loopback address for a replica's internal listener.
pub fn free_address() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}
