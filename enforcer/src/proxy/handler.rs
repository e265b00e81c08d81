//! One request, in the order DESIGN §4 gives: session, operation, checks, decision,
//! forwarding, learning. No lock is held across an await.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{BoxError, PermitBody, ProxyBody};
use super::decision::{Verdict, decide};
use super::headers::{Forwarding, X_REQUEST_ID, strip_hop_by_hop, write_forwarded};
use super::problem::problem;
use super::state::Shared;
use super::upstream::{RequestBody, UpstreamRequest};
use crate::analysis::{
    Finding, FindingKind, RequestContext, RequestScratch, ResponseSummary, Severity,
};
use crate::config::{ClientAddressSource, FailurePolicy};
use crate::detect::session_state::SessionState;
use crate::incident::IncidentSettings;
use crate::metrics::Metrics;
use crate::operation::Operation;
use crate::operation::parse_query;
use crate::session::{MAX_HISTORY, RecentOp, SessionSource, client_address};

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn request_id(shared: &Shared, headers: &http::HeaderMap) -> String {
    match headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        _ => {
            // `{instance:x}-{seq:x}`, without the formatting machinery (every request
            // without an id of its own gets one).
            let mut id = String::with_capacity(33);
            push_hex(&mut id, shared.instance);
            id.push('-');
            push_hex(&mut id, shared.request_seq.fetch_add(1, Ordering::Relaxed));
            id
        }
    }
}

/// Appends `v` in lower-case hexadecimal without leading zeros (as `{:x}` writes it).
fn push_hex(out: &mut String, v: u64) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        let nibble = u32::try_from((v >> (i * 4)) & 0xf).unwrap_or(0);
        out.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json") || media.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Walks an error's sources looking for a specific type.
fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

fn upstream_error_kind(err: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(io) = find_source::<std::io::Error>(err) {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "reset",
        };
    }
    if let Some(h) = find_source::<hyper::Error>(err)
        && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
    {
        return "reset";
    }
    "other"
}

/// Handles one request end to end. Never panics on client input; every failure becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let metrics = &shared.metrics;
    metrics.in_flight.inc();
    let permit = match Arc::clone(&shared.limiter).try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            metrics.in_flight.dec();
            metrics.shed.inc();
            let id = request_id(&shared, req.headers());
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Overloaded",
                "too many requests in flight; retry later",
                &id,
                None,
            );
        }
    };
    let resp = handle_inner(&shared, peer, req, started).await;
    // Keep the permit and the in-flight gauge until the response body is done.
    let (parts, body) = resp.into_parts();
    let body = PermitBody::new(body, permit, metrics.in_flight.clone());
    Response::from_parts(parts, body.boxed_unsync())
}

async fn handle_inner(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
) -> Response<ProxyBody> {
    let policy = shared.policy.load_full();
    let metrics = &shared.metrics;
    let (parts, body) = req.into_parts();
    let rid = request_id(shared, &parts.headers);
    if parts.method == Method::CONNECT || !parts.uri.path().starts_with('/') {
        metrics
            .requests
            .with_label_values(&["none", "reject"])
            .inc();
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "only origin-form requests are proxied",
            &rid,
            None,
        );
    }
    let limits = &policy.config.limits;
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>());
    if let Some(Err(_)) = content_length {
        metrics
            .requests
            .with_label_values(&["none", "reject"])
            .inc();
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "invalid Content-Length",
            &rid,
            None,
        );
    }
    if let Some(Ok(len)) = content_length
        && len > limits.max_body_bytes
    {
        metrics
            .requests
            .with_label_values(&["none", "reject"])
            .inc();
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            &format!(
                "the body has {len} bytes; the limit is {}",
                limits.max_body_bytes
            ),
            &rid,
            None,
        );
    }

    let now_ms = unix_ms();
    let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
    let client: IpAddr = client_address(&policy.config.client_address, peer.ip(), &parts.headers);
    let uri = parts.uri.clone();
    let query = uri.query().map(parse_query).unwrap_or_default();

    // 1. Session.
    let mut session = String::with_capacity(48);
    let source = match policy
        .identifiers
        .identify(&parts.headers, &query, client, &mut session)
    {
        Ok(identified) => {
            if identified.invalid_token {
                metrics.invalid_tokens.inc();
            }
            identified.source
        }
        Err(refusal) => {
            if refusal.status() == 401 {
                metrics.invalid_tokens.inc();
            }
            metrics
                .requests
                .with_label_values(&["none", "reject"])
                .inc();
            tracing::info!(request_id = %rid, client = %client, reason = %refusal.reason(), "session identification refused");
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let (title, detail) = refusal.problem();
            let mut resp = problem(status, title, &detail, &rid, None);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            return resp;
        }
    };

    // 2. Operation.
    let mut segments = Vec::with_capacity(8);
    let resolved = shared
        .resolver
        .resolve(&parts.method, uri.path(), &mut segments);
    let template = resolved.template;
    let op = &template.op;
    let path_params = template.path_params(&segments);
    let op_label: &str = Metrics::operation_label(op.id, &op.template);

    // Body: buffered only when a check needs it.
    let schema = template
        .schema
        .as_ref()
        .filter(|_| policy.schema_action.is_some());
    let needs_body = schema.is_some_and(|s| s.wants_body()) || shared.analyzer.wants_body(op);
    let (forward_body, json_body, body_present): (RequestBody, Option<serde_json::Value>, bool) =
        if needs_body {
            let limited = Limited::new(
                body,
                usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
            );
            match tokio::time::timeout(limits.body_read_timeout.std(), limited.collect()).await {
                Ok(Ok(collected)) => {
                    let bytes = collected.to_bytes();
                    let parse = is_json(&parts.headers)
                        || !parts.headers.contains_key(header::CONTENT_TYPE);
                    let json = if bytes.is_empty() || !parse {
                        None
                    } else {
                        serde_json::from_slice(&bytes).ok()
                    };
                    let present = !bytes.is_empty();
                    (RequestBody::Buffered(bytes), json, present)
                }
                Ok(Err(e)) => {
                    metrics
                        .requests
                        .with_label_values(&[op_label, "reject"])
                        .inc();
                    if find_source::<http_body_util::LengthLimitError>(&*e).is_some() {
                        return problem(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "Request body too large",
                            &format!("the limit is {} bytes", limits.max_body_bytes),
                            &rid,
                            None,
                        );
                    }
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "Bad request",
                        "the request body could not be read",
                        &rid,
                        None,
                    );
                }
                Err(_) => {
                    metrics
                        .requests
                        .with_label_values(&[op_label, "reject"])
                        .inc();
                    return problem(
                        StatusCode::REQUEST_TIMEOUT,
                        "Request timeout",
                        "the request body was not received in time",
                        &rid,
                        None,
                    );
                }
            }
        } else if body.is_end_stream() {
            (RequestBody::Buffered(Bytes::new()), None, false)
        } else {
            let limited = Limited::new(
                body,
                usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
            );
            (RequestBody::Streaming(limited.boxed_unsync()), None, false)
        };

    // 3. Checks.
    let mut findings: Vec<Finding> = Vec::new();
    if let (Some(schema), Some(action)) = (schema, policy.schema_action) {
        let mut errors = Vec::new();
        schema.validate_params(&path_params, &query, &mut errors);
        if schema.wants_body() {
            schema.validate_body(json_body.as_ref(), body_present, &mut errors);
        }
        if !errors.is_empty() {
            let more = if errors.len() > 1 {
                format!(", and {} more", errors.len() - 1)
            } else {
                String::new()
            };
            findings.push(Finding {
                kind: FindingKind::SchemaViolation,
                severity: Severity::Medium,
                action,
                block_status: 400,
                rule: None,
                explanation: format!(
                    "with a request that violates the OpenAPI document ({}{more})",
                    errors.first().map(String::as_str).unwrap_or_default()
                ),
                evidence: serde_json::json!({ "errors": errors }),
                retry_after_s: None,
            });
        }
    }
    let scratch = RequestScratch::default();
    let facts = RequestFacts {
        hash: shared.sessions.key_hash(&session),
        now_s,
        now_ms,
        session: &session,
        source,
        client,
        parts: &parts,
        op,
        path_params: &path_params,
        query: &query,
        body: json_body.as_ref(),
        scratch: &scratch,
    };
    let hash = facts.hash;
    let analyzer = &shared.analyzer;
    let mut internal_error = false;
    let verified = policy.identifiers.verifies(source);
    let checked = shared.sessions.with_entry(hash, now_s, |entry, _fresh| {
        entry.note_request(verified);
        let mut recent_buf = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        let n = entry
            .history
            .fill(&mut recent_buf, now_ms, policy.history_ms);
        let recent = recent_buf.get(..n).unwrap_or_default();
        let mut rule_findings = Vec::new();
        for rule in policy.rules_for(op.id) {
            if let Some(explanation) = rule.check(op.id, recent, now_ms) {
                rule.counters.matches.fetch_add(1, Ordering::Relaxed);
                rule.counters.last_match_ms.store(now_ms, Ordering::Relaxed);
                metrics.rule_matches.with_label_values(&[&*rule.name]).inc();
                if !rule.dry_run {
                    rule_findings.push(rule.finding(explanation, &op.template));
                }
            }
        }
        for limit in policy.limits_for(op.id) {
            if let Some(f) = limit.check(&mut entry.limits, now_ms) {
                rule_findings.push(f);
            }
        }
        let ctx = facts.context(recent);
        let mut learned = Vec::new();
        let inspected = std::panic::catch_unwind(AssertUnwindSafe(|| {
            analyzer.inspect(&ctx, &mut entry.state, &mut learned)
        }));
        if inspected.is_err() {
            entry.state = SessionState::default();
            learned.clear();
            internal_error = true;
        }
        entry.history.push(op.id, now_ms, policy.history_capacity);
        (rule_findings, learned, entry.incident)
    });
    let incident_seq = match checked {
        Some((rule_findings, learned, seq)) => {
            // Priority order: rules (by priority), limits, schema, learned detectors.
            let schema_findings = std::mem::take(&mut findings);
            findings = rule_findings;
            findings.extend(schema_findings);
            findings.extend(learned);
            seq
        }
        None => {
            internal_error = true;
            0
        }
    };
    if internal_error {
        let label = match policy.config.failure_policy {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        };
        metrics.failure_policy.with_label_values(&[label]).inc();
        tracing::error!(request_id = %rid, operation = %op.template, policy = label, "internal error while checking a request");
        if policy.config.failure_policy == FailurePolicy::Closed {
            metrics
                .requests
                .with_label_values(&[op_label, "reject"])
                .inc();
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "the request could not be checked",
                &rid,
                None,
            );
        }
    }

    // 4. Decision (the mode is applied here and only here).
    let verdict = decide(policy.config.mode, &findings);
    let mut incident_id = None;
    if verdict != Verdict::Allow {
        let blocked = matches!(verdict, Verdict::Block { .. });
        for f in &findings {
            metrics.findings.with_label_values(&[f.kind.as_str()]).inc();
        }
        let settings = IncidentSettings::of(&policy.config);
        let mut shown_session = String::new();
        if let Some(rec) = shared.incidents.record(
            &session,
            client,
            &op.template,
            &findings,
            blocked,
            now_ms,
            &settings,
        ) {
            shown_session = rec.session;
            if rec.created {
                metrics.incidents.inc();
            }
            if rec.seq != incident_seq {
                shared
                    .sessions
                    .with_entry(hash, now_s, |e, _| e.incident = rec.seq);
            }
            incident_id = Some(rec.id);
        }
        tracing::info!(
            request_id = %rid,
            session = %shown_session,
            client = %client,
            operation = %op.template,
            decision = verdict.label(),
            incident = incident_id.as_deref().unwrap_or(""),
            findings = ?findings.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
            "request flagged"
        );
    } else if incident_seq != 0
        && !shared.incidents.note_request(
            incident_seq,
            now_ms,
            policy.config.incidents.inactivity_window.as_millis_u64(),
        )
    {
        shared
            .sessions
            .with_entry(hash, now_s, |e, _| e.incident = 0);
    }
    metrics
        .requests
        .with_label_values(&[op_label, verdict.label()])
        .inc();

    if let Verdict::Block { index } = verdict {
        let Some(f) = findings.get(index) else {
            return problem(
                StatusCode::FORBIDDEN,
                "Request blocked",
                "blocked by policy",
                &rid,
                None,
            );
        };
        metrics.blocked.with_label_values(&[f.kind.as_str()]).inc();
        for rf in findings.iter().filter(|x| {
            x.kind == FindingKind::SequenceRule && x.action == crate::config::Action::Block
        }) {
            if let Some(rule) = rf.rule.as_deref().and_then(|n| policy.rule(n)) {
                rule.counters.blocked.fetch_add(1, Ordering::Relaxed);
                metrics.rule_blocked.with_label_values(&[&*rule.name]).inc();
            }
        }
        let status = StatusCode::from_u16(f.block_status).unwrap_or(StatusCode::FORBIDDEN);
        let title = match status.as_u16() {
            429 => "Too many requests",
            400 => "Request does not match the API schema",
            _ => "Request blocked",
        };
        let mut extra = serde_json::json!({ "incidentId": incident_id, "kind": f.kind.as_str() });
        if let Some(obj) = extra.as_object_mut() {
            if let Some(rule) = &f.rule {
                obj.insert("rule".into(), rule.clone().into());
            }
            if f.kind == FindingKind::SchemaViolation
                && let Some(errors) = f.evidence.get("errors")
            {
                obj.insert("errors".into(), errors.clone());
            }
        }
        let detail = format!("{} {}", op.template, f.explanation);
        let mut resp = problem(status, title, &detail, &rid, Some(extra));
        if let Some(retry) = f.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&retry.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        metrics
            .added_latency
            .observe(started.elapsed().as_secs_f64());
        observe(shared, &facts, status.as_u16(), 0, true);
        return resp;
    }
    let flagged = verdict == Verdict::Flag;

    // 5. Forward, in origin form (`/path?query`): the pool holds connections to the one upstream.
    // The request's own headers stay as received for learning; the upstream's head is written
    // from them directly (without the hop-by-hop ones, with the forwarding headers).
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream_req = UpstreamRequest::new(parts.method.clone(), target, forward_body);
    // HTTP/2 carries the host in `:authority`; without either, name the upstream.
    let authority = uri.authority().unwrap_or(shared.upstream.authority());
    let forwarding = Forwarding {
        peer: peer.ip(),
        trust_incoming: policy.config.client_address.source == ClientAddressSource::XForwardedFor,
        request_id: &rid,
        host: authority.as_str(),
    };
    write_forwarded(&mut upstream_req.head, &parts.headers, &forwarding);
    // Built once, for the response.
    let rid_value = HeaderValue::from_str(&rid).ok();
    let decided = started.elapsed();
    let upstream_started = Instant::now();
    let result = tokio::time::timeout(
        policy.config.upstream.timeout.std(),
        shared.upstream.send(upstream_req),
    )
    .await;
    let upstream_elapsed = upstream_started.elapsed();
    let response = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(err)) => {
            if find_source::<http_body_util::LengthLimitError>(&err).is_some() {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large",
                    &format!("the limit is {} bytes", limits.max_body_bytes),
                    &rid,
                    None,
                );
            }
            let kind = upstream_error_kind(&err);
            metrics.upstream_errors.with_label_values(&[kind]).inc();
            tracing::warn!(request_id = %rid, operation = %op.template, kind, error = %err, "upstream request failed");
            let detail = match kind {
                "refused" => "the upstream refused the connection",
                "reset" => "the upstream closed the connection before answering",
                "timeout" => "the upstream did not accept the connection in time",
                _ => "the upstream request failed",
            };
            let status = if kind == "timeout" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            return problem(
                status,
                if status == StatusCode::BAD_GATEWAY {
                    "Bad gateway"
                } else {
                    "Gateway timeout"
                },
                detail,
                &rid,
                None,
            );
        }
        Err(_) => {
            metrics
                .upstream_errors
                .with_label_values(&["timeout"])
                .inc();
            tracing::warn!(request_id = %rid, operation = %op.template, "upstream timed out");
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout",
                &format!(
                    "the upstream did not answer within {}",
                    policy.config.upstream.timeout
                ),
                &rid,
                None,
            );
        }
    };
    let status = response.status().as_u16();
    metrics.added_latency.observe(decided.as_secs_f64());

    // 6. Learn.
    let duration_us = u64::try_from(upstream_elapsed.as_micros()).unwrap_or(u64::MAX);
    observe(shared, &facts, status, duration_us, flagged);
    let (mut rparts, rbody) = response.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    if let Some(v) = rid_value {
        rparts.headers.insert(X_REQUEST_ID, v);
    }
    Response::from_parts(
        rparts,
        rbody
            .map_err(|e| -> BoxError { Box::new(e) })
            .boxed_unsync(),
    )
}

/// What the checks and learning know about one request, gathered once in `handle_inner` and
/// borrowed by both: the session, the resolved operation and the parsed request.
struct RequestFacts<'a> {
    /// Keyed hash of `session` (the session table's key).
    hash: u64,
    /// Seconds since the process epoch (the session table's clock).
    now_s: u32,
    now_ms: u64,
    session: &'a str,
    source: SessionSource,
    client: IpAddr,
    /// Method and headers as received.
    parts: &'a http::request::Parts,
    op: &'a Operation,
    path_params: &'a [(&'a str, &'a str)],
    query: &'a [(Cow<'a, str>, Cow<'a, str>)],
    body: Option<&'a serde_json::Value>,
    scratch: &'a RequestScratch,
}

impl<'a> RequestFacts<'a> {
    /// The analyzer's view of the request, with the session's recent operations.
    fn context(&self, recent: &'a [RecentOp]) -> RequestContext<'a> {
        RequestContext {
            now_ms: self.now_ms,
            session: self.session,
            session_source: self.source,
            client: self.client,
            method: &self.parts.method,
            operation: self.op,
            path_params: self.path_params,
            query: self.query,
            headers: &self.parts.headers,
            body: self.body,
            recent,
            scratch: self.scratch,
        }
    }
}

/// Learning from the exchange (`status` answered, or the block status with `flagged`).
fn observe(
    shared: &Shared,
    facts: &RequestFacts<'_>,
    status: u16,
    duration_us: u64,
    flagged: bool,
) {
    let policy = shared.policy.load();
    let analyzer = &shared.analyzer;
    let done = shared
        .sessions
        .with_entry(facts.hash, facts.now_s, |entry, _| {
            let mut recent_buf = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
            let n = entry
                .history
                .fill(&mut recent_buf, facts.now_ms, policy.history_ms);
            // The newest entry is this request.
            let recent = recent_buf.get(..n.saturating_sub(1)).unwrap_or_default();
            let ctx = facts.context(recent);
            let resp = ResponseSummary {
                status,
                duration_us,
            };
            let observed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                analyzer.observe(&ctx, &mut entry.state, &resp, flagged)
            }));
            if observed.is_err() {
                entry.state = SessionState::default();
                return false;
            }
            true
        });
    if done != Some(true) {
        shared
            .metrics
            .failure_policy
            .with_label_values(&["open"])
            .inc();
        tracing::error!(operation = %facts.op.template, "internal error while learning from a response");
    }
}

#[cfg(test)]
mod tests {
    use super::push_hex;

    #[test]
    fn hex_ids_match_the_format_macro() {
        for v in [0, 1, 9, 10, 15, 16, 255, 0xdead_beef, u64::MAX, 1 << 63] {
            let mut s = String::new();
            push_hex(&mut s, v);
            assert_eq!(s, format!("{v:x}"));
        }
    }
}
