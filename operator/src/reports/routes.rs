//! The operator's HTTPS routes: enforcer reports (`POST /v1/reports/{namespace}/{name}`) and
//! the admission webhooks (`POST /validate/...`). The health/metrics routes live on the plain
//! HTTP port (see [`health_handler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::{Resource as _, ResourceExt as _};
use ordo_enforcer::report::protocol::MAX_REPORT_BYTES;
use ordo_enforcer::report::{REPORT_PATH_PREFIX, Report};

use super::auth::{self, AuthError};
use super::hub::ReportHub;
use super::state::ProtectionKey;
use crate::crd::ApiProtection;
use crate::desired::names::{self, REPORT_AUDIENCE};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::serve::server::{self, Body, Handler};
use crate::serve::webhook::{self, Webhook};

/// Largest AdmissionReview accepted (the API server sends objects up to ~1.5 MiB).
const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;

/// Shared state of the HTTPS routes.
pub struct Endpoint {
    pub client: kube::Client,
    pub hub: Arc<ReportHub>,
    pub webhook: Webhook,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Endpoint {
    /// The hyper handler of the HTTPS port.
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |req: Request<Incoming>| {
            let this = Arc::clone(&self);
            Box::pin(async move { this.route(req).await })
        })
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if req.method() != Method::POST {
            return server::text(StatusCode::METHOD_NOT_ALLOWED, "only POST is served here\n");
        }
        if path == webhook::APIPROTECTION_PATH || path == webhook::SEQUENCERULE_PATH {
            let body = match read_body(req.into_body(), MAX_REVIEW_BYTES).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let review = self.webhook.review(&path, &body).await;
            return server::json(StatusCode::OK, &review);
        }
        if let Some(rest) = path
            .strip_prefix(REPORT_PATH_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
        {
            let mut parts = rest.split('/');
            if let (Some(namespace), Some(name), None) = (parts.next(), parts.next(), parts.next())
                && is_dns_name(namespace)
                && is_dns_name(name)
            {
                let key = ProtectionKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                let (outcome, response) = self.report(&key, req).await;
                self.metrics.reports.with_label_values(&[outcome]).inc();
                return response;
            }
        }
        server::text(StatusCode::NOT_FOUND, "not found\n")
    }

    /// Handles one report; returns the metric outcome and the response.
    async fn report(
        &self,
        key: &ProtectionKey,
        req: Request<Incoming>,
    ) -> (&'static str, Response<Body>) {
        if !self.hub.is_leading() {
            let mut response = server::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "this operator replica is not the leader; retry\n",
            );
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return ("not_leader", response);
        }
        let token = match auth::bearer_token(req.headers()) {
            Ok(token) => token.to_owned(),
            Err(err) => {
                return (
                    "unauthenticated",
                    server::text(StatusCode::UNAUTHORIZED, format!("{err}\n")),
                );
            }
        };
        let user = match auth::review(&self.client, &token, REPORT_AUDIENCE).await {
            Ok(user) => user,
            Err(AuthError::Review(err)) => {
                tracing::warn!(error = %err, "TokenReview failed");
                return (
                    "error",
                    server::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot review the token now; retry\n",
                    ),
                );
            }
            Err(err) => {
                return (
                    "unauthenticated",
                    server::text(StatusCode::UNAUTHORIZED, format!("{err}\n")),
                );
            }
        };
        let account = names::enforcer_name(&key.name);
        if let Err(err) = auth::authorize(&user, &key.namespace, &key.name, &account) {
            tracing::warn!(%user, namespace = %key.namespace, name = %key.name, "report refused: wrong ServiceAccount");
            return (
                "forbidden",
                server::text(StatusCode::FORBIDDEN, format!("{err}\n")),
            );
        }
        let api: Api<ApiProtection> = Api::namespaced(self.client.clone(), &key.namespace);
        let protection = match api.get_opt(&key.name).await {
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_none() => p,
            Ok(_) => {
                return (
                    "invalid",
                    server::text(StatusCode::NOT_FOUND, "no such ApiProtection\n"),
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "reading the ApiProtection failed");
                return (
                    "error",
                    server::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot read the ApiProtection now; retry\n",
                    ),
                );
            }
        };
        let Some(uid) = protection.metadata.uid.clone() else {
            return (
                "error",
                server::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ApiProtection without uid\n",
                ),
            );
        };
        let body = match read_body(req.into_body(), MAX_REPORT_BYTES).await {
            Ok(body) => body,
            Err(response) => return ("invalid", response),
        };
        let report: Report = match serde_json::from_slice(&body) {
            Ok(report) => report,
            Err(err) => {
                return (
                    "invalid",
                    server::text(StatusCode::BAD_REQUEST, format!("invalid report: {err}\n")),
                );
            }
        };
        let owner = crate::desired::resources::owner_reference(&protection.name_any(), &uid);
        let span = tracing::info_span!("report", apiprotection = %format!("{}/{}", key.namespace, key.name), replica = %report.replica);
        let _enter = span.enter();
        match self.hub.accept(key, &owner, &report).await {
            Ok(accepted) => {
                tracing::debug!(
                    applied = accepted.answer.applied,
                    incidents = report.incidents.len(),
                    "report merged"
                );
                if !accepted.discovered.is_empty() {
                    let reference = protection.object_ref(&());
                    self.hub
                        .publish_discovered(&self.recorder, &reference, &accepted.discovered)
                        .await;
                }
                if !accepted.new_incidents.is_empty() {
                    let reference = protection.object_ref(&());
                    self.hub
                        .publish_incidents(&self.recorder, &reference, &accepted.new_incidents)
                        .await;
                }
                let outcome = if accepted.answer.applied {
                    "applied"
                } else {
                    "duplicate"
                };
                (outcome, server::json(StatusCode::OK, &accepted.answer))
            }
            Err(Error::Model(problem)) => (
                "invalid",
                server::text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
            ),
            Err(err) => {
                tracing::warn!(error = %err, "merging a report failed");
                (
                    "error",
                    server::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "could not store the report; retry\n",
                    ),
                )
            }
        }
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            let too_large = err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            Err(if too_large {
                server::text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {limit} bytes\n"),
                )
            } else {
                server::text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {err}\n"),
                )
            })
        }
    }
}

fn is_dns_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Readiness flags of the process, shown on `/readyz`.
#[derive(Default)]
pub struct Readiness {
    /// The HTTPS server is listening (or is not configured).
    pub serving: AtomicBool,
}

/// The handler of the plain HTTP port: `/healthz`, `/readyz`, `/metrics`.
pub fn health_handler(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let metrics = Arc::clone(&metrics);
        let readiness = Arc::clone(&readiness);
        Box::pin(async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/healthz") => server::text(StatusCode::OK, "ok\n"),
                (&Method::GET, "/readyz") => {
                    if readiness.serving.load(Ordering::Relaxed) {
                        server::text(StatusCode::OK, "ready\n")
                    } else {
                        server::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
                (&Method::GET, "/metrics") => server::response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    Bytes::from(metrics.render()),
                ),
                _ => server::text(StatusCode::NOT_FOUND, "not found\n"),
            }
        })
    })
}
