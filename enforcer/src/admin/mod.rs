//! The admin listener: health, readiness, Prometheus metrics, incidents, model and rules.
//! Everything except `/healthz` and `/readyz` requires `Authorization: Bearer <admin.token>`
//! when a token is configured.

use std::convert::Infallible;
use std::sync::Arc;
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

fn json_response(value: &serde_json::Value) -> AdminResponse {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// Constant-time comparison (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(shared: &dyn AdminSource, req: &Request<Incoming>) -> bool {
    let policy = shared.policy();
    let Some(token) = policy.admin_token.as_deref() else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
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

async fn route(shared: Arc<dyn AdminSource>, req: Request<Incoming>) -> AdminResponse {
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
        _ => {}
    }
    if !authorized(&*shared, &req) {
        let mut r = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "admin token required\n",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match path {
        "/metrics" => {
            shared.refresh_gauges();
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                shared.metrics().encode(),
            )
        }
        "/v1/incidents" => {
            json_response(&serde_json::to_value(shared.incidents().list()).unwrap_or_default())
        }
        "/v1/model" => json_response(&model_view(&*shared)),
        "/v1/rules" => json_response(&rules_view(&*shared)),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `GET /v1/model`: the operation inventory, table sizes and the analyzer's view.
pub fn model_view(shared: &dyn AdminSource) -> serde_json::Value {
    let ops: Vec<serde_json::Value> = shared
        .resolver()
        .inventory()
        .into_iter()
        .map(|op| json!({ "id": op.id, "operation": &*op.template, "origin": op.origin }))
        .collect();
    let policy = shared.policy();
    json!({
        "mode": policy.config.mode,
        "configRevision": policy.config.revision,
        "configSince": format_unix_ms(policy.compiled_at_ms),
        "operations": ops,
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

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<dyn AdminSource>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(shared, req).await) }
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
