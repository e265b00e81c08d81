//! A small HTTP server for the simulated apps of other API styles (`library.rs`, `shop.rs`):
//! it reads each request whole, lets the app answer it synchronously, and records every request
//! that reached the app with the app's own judgement of whether it succeeded (apps that answer
//! a failure with 200 and an error body say so here), so that an evaluation can count the harm
//! that got past the enforcer and a test can check that honest journeys really worked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request as the app sees it.
#[derive(Debug, Clone)]
pub struct AppRequest {
    pub method: http::Method,
    pub path: String,
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl AppRequest {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// A query parameter, percent-decoded.
    pub fn query_value(&self, key: &str) -> Option<String> {
        super::bank::query_value(&self.query, key)
    }

    /// The path's segments after the leading slash, percent-decoded.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .trim_start_matches('/')
            .split('/')
            .map(super::bank::percent_decode)
            .collect()
    }
}

/// The app's answer.
#[derive(Debug, Clone)]
pub struct AppResponse {
    pub status: u16,
    pub body: Value,
    pub set_cookie: Option<String>,
    /// Whether the app did what was asked (false for a failed login answered with 200).
    pub ok: bool,
}

impl AppResponse {
    pub fn ok(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            set_cookie: None,
            ok: true,
        }
    }

    pub fn failed(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            set_cookie: None,
            ok: false,
        }
    }
}

/// A simulated application.
pub trait App: Send + Sync + 'static {
    fn handle(&self, request: &AppRequest) -> AppResponse;

    /// A release of the app after the model matured (it may add an operation).
    fn release(&self) {}
}

/// One request that reached the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The original client address (first `X-Forwarded-For` entry), or the peer.
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub ok: bool,
    /// Records the answer carried (the length of its largest array).
    pub records: usize,
}

/// A running app; stops when dropped.
pub struct RunningApp<A: App> {
    pub addr: SocketAddr,
    pub app: Arc<A>,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: watch::Sender<bool>,
}

impl<A: App> RunningApp<A> {
    /// Serves `app` on `127.0.0.1:0`.
    pub async fn start(app: A) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let app = Arc::new(app);
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let (serving, recording) = (Arc::clone(&app), Arc::clone(&hits));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => break,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                let (app, hits) = (Arc::clone(&serving), Arc::clone(&recording));
                let mut conn_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (app, hits) = (Arc::clone(&app), Arc::clone(&hits));
                        async move { Ok::<_, Infallible>(serve(&*app, &hits, peer, req).await) }
                    });
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stopped.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            app,
            hits,
            stop,
        })
    }

    /// Everything that reached the app so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl<A: App> Drop for RunningApp<A> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn records(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.len(),
        Value::Object(fields) => fields.values().map(records).max().unwrap_or(0),
        _ => 0,
    }
}

async fn serve<A: App>(
    app: &A,
    hits: &Mutex<Vec<Hit>>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let client = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map_or_else(|| peer.ip().to_string(), |v| v.trim().to_owned());
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let request = AppRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts.headers,
        body,
    };
    let answer = app.handle(&request);
    hits.lock().push(Hit {
        client,
        method: request.method.to_string(),
        path: request.path.clone(),
        status: answer.status,
        ok: answer.ok,
        records: records(&answer.body),
    });
    let mut response = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(cookie) = answer.set_cookie
        && let Ok(value) = http::HeaderValue::from_str(&cookie)
    {
        response
            .headers_mut()
            .insert(http::header::SET_COOKIE, value);
    }
    response
}
