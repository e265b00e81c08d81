//! Forwarding between replicas: a small pool of HTTP/1.1 connections per owner, and the
//! internal listener that takes only authenticated messages: forwarded requests, handed to
//! the same request path as the public listener and marked so that they are decided here,
//! and view announcements ([`send_view`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, Kind, PEER_AUTH, PEER_NONCE, PeerClaims, Signed};
use super::{Forwarded, MAX_ANNOUNCED, PEER_VIEWS, Router, unix_ms};
use crate::policy::CompiledPolicy;
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::handler::handle;
use crate::proxy::headers::{X_REQUEST_ID, strip_hop_by_hop};
use crate::proxy::rejection::{Rejection, UpstreamFailure};
use crate::proxy::state::Shared;

/// Idle connections kept per owner.
pub(super) const MAX_IDLE_PER_PEER: usize = 64;

/// Idle keep-alive connections to other replicas, for requests with body type `B` (forwarded
/// requests stream theirs; address facts send a small buffered one).
pub(super) struct Pool<B> {
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<SendRequest<B>>>>>,
    /// Idle connections kept per replica.
    max_idle: usize,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            idle: Arc::clone(&self.idle),
            max_idle: self.max_idle,
        }
    }
}

impl<B> Pool<B> {
    pub(super) fn new(max_idle: usize) -> Self {
        Self {
            idle: Arc::default(),
            max_idle,
        }
    }

    pub(super) fn take(&self, peer: SocketAddr) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&peer)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    pub(super) fn put(&self, peer: SocketAddr, sender: SendRequest<B>) {
        let mut idle = self.idle.lock();
        // Bounded by the members (at most 64 addresses) times `max_idle`.
        let list = idle.entry(peer).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < self.max_idle {
            list.push(sender);
        }
    }
}

/// What forwarding did.
pub(super) enum Outcome {
    /// The owner answered (or failed after the request went out: a 502 / 504).
    Answered(Response<ProxyBody>),
    /// The owner could not be reached; the request, as it came, to decide here.
    Unreachable(Request<Incoming>),
}

/// An HTTP/1.1 connection to another replica's internal listener (`what` names it in the
/// log when it ends), or `None` when it cannot be opened within `timeout`.
pub(super) async fn connect<B>(
    peer: SocketAddr,
    timeout: Duration,
    what: &'static str,
) -> Option<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = tokio::time::timeout(timeout, TcpStream::connect(peer))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "{what} to a replica ended");
        }
    });
    Some(sender)
}

/// The original request line, to give a request back when it could not be forwarded.
struct Original {
    uri: Uri,
    version: Version,
}

fn restore(req: Request<Incoming>, original: Original) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(PEER_AUTH);
    parts.headers.remove(PEER_NONCE);
    parts.uri = original.uri;
    parts.version = original.version;
    Request::from_parts(parts, body)
}

impl Router {
    /// Sends `req` (from the client connection `peer`) to `owner` within the timeouts of
    /// `policy` (the request's); `moved_since` tells the owner since when this replica knows
    /// the session may have been served elsewhere.
    pub(super) async fn forward(
        &self,
        shared: &Shared,
        policy: &CompiledPolicy,
        owner: SocketAddr,
        peer: SocketAddr,
        req: Request<Incoming>,
        moved_since: Option<u64>,
    ) -> Outcome {
        let (mut parts, body) = req.into_parts();
        let original = Original {
            uri: parts.uri.clone(),
            version: parts.version,
        };
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if !parts.headers.contains_key(header::HOST)
            && let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
        strip_hop_by_hop(&mut parts.headers);
        // Whatever the client sent in these names is not ours to pass on.
        parts.headers.remove(PEER_AUTH);
        parts.headers.insert(PEER_NONCE, auth::next_nonce());
        let claims = PeerClaims {
            kind: Kind::Request,
            client_peer: peer,
            moved_since_ms: moved_since.unwrap_or(0),
            from: self.self_addr,
            view: self.views.load().current.hash,
        };
        let digest = auth::headers_digest(&parts.headers);
        let signed = auth::sign(
            &self.signing_secret(),
            unix_ms(),
            &claims,
            &Signed {
                method: parts.method.as_str(),
                target: &target,
                headers: &digest,
            },
        );
        let (Ok(value), Ok(uri)) = (HeaderValue::from_str(&signed), Uri::try_from(target)) else {
            return Outcome::Unreachable(restore(Request::from_parts(parts, body), original));
        };
        parts.headers.insert(PEER_AUTH, value);
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let request_id = parts
            .headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut req = Request::from_parts(parts, body);
        let connect_timeout = self.config.load().connect_timeout.std();
        let timeout = policy.config.upstream.timeout.std() + connect_timeout;
        // A pooled connection first; if it turns out closed before the request went out,
        // one new connection.
        for attempt in 0..2 {
            let pooled = if attempt == 0 {
                self.pool.take(owner)
            } else {
                None
            };
            let mut sender = match pooled {
                Some(s) => s,
                None => match connect(owner, connect_timeout, "connection").await {
                    Some(s) => s,
                    None => return Outcome::Unreachable(restore(req, original)),
                },
            };
            match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
                Ok(Ok(response)) => {
                    self.metrics.forward.with_label_values(&["forwarded"]).inc();
                    let pool = self.pool.clone();
                    // Back to the pool once the response body has been read.
                    tokio::spawn(async move {
                        if sender.ready().await.is_ok() {
                            pool.put(owner, sender);
                        }
                    });
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
                    return Outcome::Answered(Response::from_parts(parts, body));
                }
                Ok(Err(mut err)) => match err.take_message() {
                    Some(back) => req = back,
                    None => {
                        tracing::warn!(%owner, error = %err.error(), "forwarded request failed");
                        return self.failed(shared, &request_id, UpstreamFailure::Reset);
                    }
                },
                Err(_) => {
                    tracing::warn!(%owner, "forwarded request timed out");
                    let after = policy.config.upstream.timeout;
                    return self.failed(shared, &request_id, UpstreamFailure::Timeout { after });
                }
            }
        }
        Outcome::Unreachable(restore(req, original))
    }

    fn failed(&self, shared: &Shared, request_id: &str, failure: UpstreamFailure) -> Outcome {
        self.metrics.forward.with_label_values(&["failed"]).inc();
        Outcome::Answered(Rejection::Upstream(failure).into_response(
            &shared.metrics,
            request_id,
            "none",
        ))
    }
}

/// Tells the replica `peer` that `from` routes by the view `view` from now on; `lists` is the
/// announcement header's value (`<previous members>;<new members>`). Waits at most
/// `connect_timeout` for the connection and a second more for the answer; returns whether
/// `peer` acknowledged (`maintain` sends it again otherwise).
pub(super) async fn send_view(
    secret: Vec<u8>,
    from: SocketAddr,
    view: u64,
    peer: SocketAddr,
    lists: String,
    connect_timeout: Duration,
) -> (SocketAddr, bool) {
    let sent = async {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(peer))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut req = Request::new(Empty::new());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = Uri::from_static("/");
        let headers = req.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_str(&peer.to_string()).ok()?);
        headers.insert(PEER_VIEWS, HeaderValue::from_str(&lists).ok()?);
        headers.insert(PEER_NONCE, auth::next_nonce());
        let digest = auth::headers_digest(req.headers());
        let claims = PeerClaims {
            kind: Kind::View,
            client_peer: from,
            moved_since_ms: 0,
            from,
            view,
        };
        let value = auth::sign(
            &secret,
            unix_ms(),
            &claims,
            &Signed {
                method: "POST",
                target: "/",
                headers: &digest,
            },
        );
        req.headers_mut()
            .insert(PEER_AUTH, HeaderValue::from_str(&value).ok()?);
        sender.send_request(req).await.ok().map(|r| r.status())
    };
    match tokio::time::timeout(connect_timeout + Duration::from_secs(1), sent).await {
        Ok(Some(status)) if status.is_success() => (peer, true),
        outcome => {
            tracing::debug!(%peer, ?outcome, "view announcement not acknowledged");
            (peer, false)
        }
    }
}

/// The two member lists of an announcement (at most [`MAX_ANNOUNCED`] each).
fn announced_lists(req: &Request<Incoming>) -> [Vec<SocketAddr>; 2] {
    let value = req
        .headers()
        .get(PEER_VIEWS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut halves = value.splitn(2, ';');
    let mut list = || -> Vec<SocketAddr> {
        halves
            .next()
            .unwrap_or("")
            .split(',')
            .filter_map(|m| m.trim().parse().ok())
            .take(MAX_ANNOUNCED)
            .collect()
    };
    let previous = list();
    let next = list();
    [previous, next]
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Empty::new()
            .map_err(|never| -> BoxError { match never {} })
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn unauthenticated() -> Response<ProxyBody> {
    let body = Full::new(Bytes::from_static(b"forwarded requests only\n"))
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp
}

/// Serves the internal listener: requests forwarded by other replicas, each authenticated
/// (anything else gets 401), decided here as if it had come from the original client.
pub async fn serve_peers(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Some(router) = shared.router.clone() else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the peer listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let router = Arc::clone(&router);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                let router = Arc::clone(&router);
                async move {
                    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let digest = auth::headers_digest(req.headers());
                    let claims = req
                        .headers()
                        .get(PEER_AUTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| {
                            router.verify(
                                v,
                                &Signed {
                                    method: req.method().as_str(),
                                    target,
                                    headers: &digest,
                                },
                            )
                        });
                    let refuse = || {
                        router
                            .metrics
                            .forward
                            .with_label_values(&["unauthenticated"])
                            .inc();
                        Ok::<_, std::convert::Infallible>(unauthenticated())
                    };
                    let Some((claims, stamp)) = claims else {
                        return refuse();
                    };
                    if claims.kind == Kind::Facts {
                        router.observe(claims.from, claims.view, None);
                        let status =
                            super::facts::receive(&router, &shared, &claims, stamp, req).await;
                        if status == StatusCode::UNAUTHORIZED {
                            return refuse();
                        }
                        return Ok(empty(status));
                    }
                    // Taken once; the body of a forwarded request is not checked (streamed).
                    if !router.first_time(stamp) {
                        return refuse();
                    }
                    if claims.kind == Kind::View {
                        router.observe(claims.from, claims.view, Some(announced_lists(&req)));
                        return Ok(empty(StatusCode::NO_CONTENT));
                    }
                    router.observe(claims.from, claims.view, None);
                    router
                        .metrics
                        .forward
                        .with_label_values(&["received"])
                        .inc();
                    req.headers_mut().remove(PEER_AUTH);
                    req.headers_mut().remove(PEER_NONCE);
                    req.extensions_mut().insert(Forwarded {
                        moved_since_ms: claims.moved_since_ms,
                    });
                    Ok(handle(shared, claims.client_peer, req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "peer connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
