//! The admin listener: health, readiness, Prometheus metrics, incidents, model and rules.
//! `/v1/*` requires `Authorization: Bearer <token>` when a token is configured, and answers
//! loopback peers only otherwise (see [`auth`]). Answers are capped in bytes
//! ([`MAX_ANSWER_BYTES`]): list items beyond the cap are left out and counted in the
//! `Ordo-Omitted-Items` header.

pub mod auth;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::detect::Analyzer;
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::CompiledPolicy;
use crate::session::TableStats;
use crate::time::format_unix_ms;

/// What the admin API reads from the running enforcer. The runtime implements it for the
/// proxy's shared state, so that this module does not depend on the proxy.
pub trait AdminSource: Send + Sync + 'static {
    /// The policy in force.
    fn policy(&self) -> Arc<CompiledPolicy>;
    /// `host:port` of the protected Service, for `/readyz?upstream=true`.
    fn upstream_authority(&self) -> String;
    fn metrics(&self) -> &Metrics;
    /// Copies table counters into the gauges before `/metrics` is served.
    fn refresh_gauges(&self);
    fn incidents(&self) -> &IncidentStore;
    fn resolver(&self) -> &OperationResolver;
    fn session_stats(&self) -> TableStats;
    fn analyzer(&self) -> &dyn Analyzer;
}

type AdminResponse = Response<Full<Bytes>>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Largest body of a `/v1/*` answer.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Header counting the list items left out of an answer to keep it under the cap.
pub const OMITTED_HEADER: &str = "ordo-omitted-items";

/// A JSON array of `items` in order, stopping before the one that would take the body past
/// `max_bytes`; returns the body and how many items were left out.
pub fn bounded_json_array<T: serde::Serialize>(
    items: impl ExactSizeIterator<Item = T>,
    max_bytes: usize,
) -> (Vec<u8>, usize) {
    let total = items.len();
    let mut body = Vec::with_capacity(4096);
    body.push(b'[');
    let mut kept = 0;
    for item in items {
        let Ok(json) = serde_json::to_vec(&item) else {
            continue;
        };
        // Room for the comma and the closing bracket.
        if body.len() + json.len() + 2 > max_bytes {
            break;
        }
        if kept > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
        kept += 1;
    }
    body.push(b']');
    (body, total - kept)
}

fn bounded_response(body: Vec<u8>, omitted: usize) -> AdminResponse {
    let mut r = respond(StatusCode::OK, "application/json", body);
    if omitted > 0 {
        r.headers_mut()
            .insert(OMITTED_HEADER, HeaderValue::from(omitted));
    }
    r
}

async fn upstream_reachable(shared: &dyn AdminSource) -> bool {
    let authority = shared.upstream_authority();
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(authority)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn route(
    shared: Arc<dyn AdminSource>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> AdminResponse {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    let path = req.uri().path();
    match path {
        "/healthz" => return respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let check_upstream = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "upstream=true"));
            if check_upstream && !upstream_reachable(&*shared).await {
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "upstream unreachable\n",
                );
            }
            return respond(StatusCode::OK, "text/plain", "ready\n");
        }
        "/metrics" => {
            shared.refresh_gauges();
            return respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                shared.metrics().encode(),
            );
        }
        _ => {}
    }
    let policy = shared.policy();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !auth::authorized(policy.admin_token.as_ref(), peer, authorization) {
        return unauthorized(policy.admin_token.is_some());
    }
    match path {
        "/v1/incidents" => {
            let incidents = shared.incidents().list();
            let (body, omitted) = bounded_json_array(incidents.iter(), MAX_ANSWER_BYTES);
            bounded_response(body, omitted)
        }
        "/v1/model" => capped_json(&model_view(&*shared)),
        "/v1/rules" => capped_json(&rules_view(&*shared)),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn unauthorized(token_configured: bool) -> AdminResponse {
    if !token_configured {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "no admin token is configured: /v1/* answers loopback clients only\n",
        );
    }
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "admin token required\n",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// A JSON answer whose lists are bounded by the config caps; one past [`MAX_ANSWER_BYTES`]
/// anyway is refused rather than sent.
fn capped_json(value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    if body.len() > MAX_ANSWER_BYTES {
        return respond(
            StatusCode::INSUFFICIENT_STORAGE,
            "text/plain",
            format!(
                "the answer has {} bytes, more than the {MAX_ANSWER_BYTES} an answer may have\n",
                body.len()
            ),
        );
    }
    respond(StatusCode::OK, "application/json", body)
}

/// Operations listed by `GET /v1/model` (the rest are counted in `omittedOperations`).
pub const MAX_LISTED_OPERATIONS: usize = 2000;

/// `GET /v1/model`: the operation inventory, table sizes and the analyzer's view.
pub fn model_view(shared: &dyn AdminSource) -> serde_json::Value {
    let inventory = shared.resolver().inventory();
    let omitted = inventory.len().saturating_sub(MAX_LISTED_OPERATIONS);
    let ops: Vec<serde_json::Value> = inventory
        .into_iter()
        .take(MAX_LISTED_OPERATIONS)
        .map(|op| json!({ "id": op.id, "operation": &*op.template, "origin": op.origin }))
        .collect();
    let policy = shared.policy();
    json!({
        "mode": policy.config.mode,
        "configRevision": policy.config.revision,
        "configSince": format_unix_ms(policy.compiled_at_ms),
        "operations": ops,
        "omittedOperations": omitted,
        "templating": shared.resolver().stats(),
        "sessions": shared.session_stats(),
        "analyzer": shared.analyzer().model_view(),
    })
}

/// `GET /v1/rules`: compiled rules (priority order) with counters, and rate limits.
pub fn rules_view(shared: &dyn AdminSource) -> serde_json::Value {
    let policy = shared.policy();
    let rules: Vec<serde_json::Value> = policy
        .rules
        .iter()
        .map(|r| {
            let kind = if r.source.requires.is_some() {
                "requires"
            } else if r.source.forbids.is_some() {
                "forbids"
            } else if r.source.max_repeat.is_some() {
                "maxRepeat"
            } else {
                "minInterval"
            };
            let mut v = json!({
                "name": &*r.name,
                "kind": kind,
                "priority": r.priority,
                "action": r.action,
                "dryRun": r.dry_run,
                "operations": r.written,
                "spec": r.source,
            });
            if let (Some(obj), Ok(serde_json::Value::Object(counters))) =
                (v.as_object_mut(), serde_json::to_value(r.counters.view()))
            {
                obj.extend(counters);
            }
            v
        })
        .collect();
    let limits: Vec<serde_json::Value> = policy
        .limits
        .iter()
        .map(|l| json!({ "name": &*l.name, "operation": l.written, "requests": l.requests, "per": l.per, "action": l.action }))
        .collect();
    json!({ "rules": rules, "rateLimits": limits })
}

/// What a connection over `admin.maxConnections` gets before it is closed.
const REFUSED_CONNECTION: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// An admitted admin connection; dropping it frees its place.
struct AdminConnection(Arc<AtomicUsize>);

impl Drop for AdminConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the admin API until `shutdown`, at most `max_connections` connections at once: the
/// listener has a cap of its own, apart from the proxy's, so that a flood of the proxy port
/// does not shut the probes out (and a flood of this one does not take the proxy's
/// descriptors).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<dyn AdminSource>,
    shutdown: CancellationToken,
    max_connections: usize,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            shared
                .metrics()
                .client_limit_refusals
                .with_label_values(&["admin_connections"])
                .inc();
            let _ = stream.try_write(REFUSED_CONNECTION);
            continue;
        }
        let admitted = AdminConnection(Arc::clone(&open));
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(shared, peer.ip(), req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_stop_at_the_cap_and_count_the_rest() {
        let items: Vec<String> = (0..100).map(|i| format!("item-{i:03}")).collect();
        let (body, omitted) = bounded_json_array(items.iter(), 1_000);
        assert!(body.len() <= 1_000, "{}", body.len());
        let kept: Vec<String> = serde_json::from_slice(&body).unwrap();
        assert_eq!(kept.len() + omitted, 100);
        assert_eq!(kept.first().map(String::as_str), Some("item-000"));
        let (all, none) = bounded_json_array(items.iter(), 1 << 20);
        assert_eq!(none, 0);
        assert_eq!(serde_json::from_slice::<Vec<String>>(&all).unwrap(), items);
    }
}
