//! One request, in phases: admit (its shape), identify (the session), resolve (the
//! operation), read the body when a check needs it, then check → decide → forward → learn.
//! The policy is loaded once per request and every phase uses that one. Whatever the proxy
//! answers itself is a [`Rejection`]. No lock is held across an await.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::{BoxError, PermitBody, ProxyBody};
use super::clients::{ClientBodyError, MinRateBody};
use super::decision::{Verdict, decide};
use super::exposure::{self as proxy_exposure, Scanning, StreamEnd};
use super::headers::{Forwarding, X_REQUEST_ID, strip_hop_by_hop, write_forwarded};
use super::rejection::{Block, Rejection, UpstreamFailure, find_source};
use super::route::Routed;
use super::state::Shared;
use super::upstream::{RequestBody, UpstreamBody, UpstreamError, UpstreamRequest};
use crate::config::{Action, ClientAddressSource, FailurePolicy, LimitsConfig, Mode};
use crate::detect::exposure::{self, Scan, Scanner};
use crate::detect::outcome;
use crate::detect::session_state::SessionState;
use crate::detect::{RequestContext, RequestScratch, ResponseSummary};
use crate::finding::{Finding, FindingKind, Severity};
use crate::metrics::Metrics;
use crate::operation::{CanonicalTarget, OperationSchema, QueryPairs, Template, canonical_target};
use crate::policy::CompiledPolicy;
use crate::session::{MAX_HISTORY, RecentOp, Refusal, SessionEntry, SessionSource, client_address};

/// The operation label of rejections before the operation is known.
const NO_OPERATION: &str = "none";

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

/// Handles one request end to end. Never panics on client input; every failure becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let metrics = &shared.metrics;
    // The policy of this request, for every phase (routing, checks, learning), and the
    // client address under it.
    let policy = shared.policy.load_full();
    let client = client_address(&policy.config.client_address, peer.ip(), req.headers());
    // One client may hold only so many of the permits below (a client holding requests open
    // with slow bodies would otherwise take all of them).
    let cap = policy.config.limits.max_concurrent_requests_per_client;
    let Some(client_guard) = shared.clients.request(client, cap) else {
        let id = request_id(&shared, req.headers());
        return Rejection::ClientBusy.into_response(metrics, &id, NO_OPERATION);
    };
    metrics.in_flight.inc();
    let Ok(permit) = Arc::clone(&shared.limiter).try_acquire_owned() else {
        metrics.in_flight.dec();
        let id = request_id(&shared, req.headers());
        return Rejection::Overloaded.into_response(metrics, &id, NO_OPERATION);
    };
    let resp = match super::route::route(&shared, &policy, peer, client, req, started).await {
        Routed::Local(req) => handle_inner(&shared, &policy, peer, client, req, started).await,
        Routed::Answered(resp) => resp,
    };
    // Keep the permits and the in-flight gauge until the response body is done.
    let (parts, body) = resp.into_parts();
    let body = PermitBody::new(
        body,
        Some(permit),
        Some(client_guard),
        metrics.in_flight.clone(),
    );
    Response::from_parts(parts, body.boxed_unsync())
}

/// A request after admission and routing, in its phases: identify → check → decide → forward
/// → answer (which learns). `policy` and `client` are the ones `handle` computed.
async fn handle_inner(
    shared: &Arc<Shared>,
    policy: &CompiledPolicy,
    peer: SocketAddr,
    client: IpAddr,
    req: Request<Incoming>,
    started: Instant,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let rid = request_id(shared, &parts.headers);
    let reject = |rejection: Rejection, operation: &str| {
        rejection.into_response(&shared.metrics, &rid, operation)
    };
    let (target, query) = match admit(&parts, policy) {
        Ok(admitted) => admitted,
        Err(rejection) => return reject(rejection, NO_OPERATION),
    };
    let now_ms = crate::time::now_ms();
    let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
    let (session, source) = match identify(
        shared,
        policy,
        &parts.headers,
        &query,
        client,
        &rid,
        started,
    )
    .await
    {
        Ok(identified) => identified,
        Err(rejection) => return reject(rejection, NO_OPERATION),
    };

    let mut segments = Vec::with_capacity(8);
    let template = shared
        .resolver
        .resolve(&parts.method, target.match_path(), &mut segments)
        .template;
    let (op, path_params) = (&template.op, template.path_params(&segments));
    let op_label: &str = Metrics::operation_label(op.id, &op.template);
    let (schema, needs_body) = body_checks(shared, policy, &template);
    let limits = &policy.config.limits;
    let body = match read_body(body, &parts.headers, needs_body, limits).await {
        Ok(body) => body,
        Err(rejection) => return reject(rejection, op_label),
    };

    let scratch = RequestScratch::exporting(shared.router.is_some());
    let mut exchange = Exchange {
        shared,
        policy,
        ctx: RequestContext {
            now_ms,
            session: &session,
            session_source: source,
            client,
            method: &parts.method,
            operation: op,
            path_params: &path_params,
            query: &query,
            headers: &parts.headers,
            body: body.json.as_ref(),
            recent: &[],
            scratch: &scratch,
        },
        hash: shared.sessions.key_hash(&session),
        now_s,
        rid: &rid,
        recent: Recent::default(),
    };
    let (findings, incident_seq) = match exchange.check(schema, body.present) {
        Ok(checked) => checked,
        Err(rejection) => return reject(rejection, op_label),
    };
    let (verdict, incident_id) = exchange.decide(&findings, incident_seq, op_label);
    if let Verdict::Block { index } = verdict {
        let refused = exchange.refuse(&findings, index, incident_id, started);
        exchange.share_facts().await;
        return reject(refused, op_label);
    }

    let upstream_req = upstream_request(&exchange, peer, &parts, &target, body.forward);
    let (response, upstream_elapsed) = match exchange.forward(upstream_req, started).await {
        Ok(forwarded) => forwarded,
        Err(rejection) => return reject(rejection, op_label),
    };
    match exchange
        .answer(response, verdict, incident_seq, upstream_elapsed)
        .await
    {
        Ok(answered) => answered,
        Err(rejection) => reject(rejection, op_label),
    }
}

/// The OpenAPI schema the request is validated against (when the policy validates), and
/// whether a check needs the body.
fn body_checks<'t>(
    shared: &Shared,
    policy: &CompiledPolicy,
    template: &'t Template,
) -> (Option<&'t OperationSchema>, bool) {
    let schema = template
        .schema
        .as_deref()
        .filter(|_| policy.schema_action.is_some());
    let needs_body =
        schema.is_some_and(|s| s.wants_body()) || shared.analyzer.wants_body(&template.op);
    (schema, needs_body)
}

/// Identifies the request's session: its key and which identifier produced it. An invalid
/// token is counted, and refused when the identifiers say so. A token naming a key the JWKS
/// does not have yet waits (bounded, from `arrived`) for the early refresh it asks for.
async fn identify(
    shared: &Shared,
    policy: &CompiledPolicy,
    headers: &http::HeaderMap,
    query: &[(Cow<'_, str>, Cow<'_, str>)],
    client: IpAddr,
    rid: &str,
    arrived: Instant,
) -> Result<(String, SessionSource), Rejection> {
    let mut session = String::with_capacity(48);
    match policy
        .identifiers
        .identify_waiting(headers, query, client, &mut session, arrived)
        .await
    {
        Ok(identified) => {
            if identified.invalid_token {
                shared.metrics.invalid_tokens.inc();
            }
            Ok((session, identified.source))
        }
        Err(refusal) => {
            tracing::info!(request_id = %rid, client = %client, reason = %refusal.reason(), "session identification refused");
            Err(match refusal {
                Refusal::InvalidToken(_) => {
                    shared.metrics.invalid_tokens.inc();
                    Rejection::InvalidToken
                }
                Refusal::RepeatedHeader(name) => Rejection::RepeatedCredentialHeader(name),
            })
        }
    }
}

/// A 2xx answer that streams on while it is scanned: what the exchange's findings need once
/// it ended (owned: the request's borrows are gone by then).
struct StreamedAnswer {
    shared: Arc<Shared>,
    /// The mode the request was admitted under.
    mode: Mode,
    session: String,
    client: std::net::IpAddr,
    template: Arc<str>,
    /// Keyed hash of the session (the session table's key).
    hash: u64,
    rid: String,
}

impl StreamEnd for StreamedAnswer {
    /// Judges and learns the answer's scan with the session's entry locked; a finding is
    /// recorded in the session's incident as flagged (never as blocked: it was relayed).
    fn ended(self: Box<Self>, scan: Scan) {
        let shared = &self.shared;
        let now_ms = crate::time::now_ms();
        let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        let judged = shared.sessions.with_entry(self.hash, now_s, |entry, _| {
            let found = std::panic::catch_unwind(AssertUnwindSafe(|| {
                shared
                    .analyzer
                    .observe_streamed(&self.template, now_ms, &mut entry.state, &scan)
            }));
            (found.ok().flatten(), entry.state.incident())
        });
        let Some((Some(mut finding), incident_seq)) = judged else {
            return;
        };
        if self.mode == Mode::Learn {
            return;
        }
        finding.explanation.push_str(
            " (found once the answer had streamed to the client: reported, not withheld)",
        );
        let metrics = &shared.metrics;
        metrics
            .findings
            .with_label_values(&[finding.kind.as_str()])
            .inc();
        let severity = finding.severity;
        let kind = finding.kind.as_str();
        let recorded = shared.incidents.record(
            &self.session,
            self.client,
            &self.template,
            std::slice::from_ref(&finding),
            false,
            now_ms,
        );
        let mut incident_id = String::new();
        if let Some(rec) = recorded {
            if rec.created {
                metrics
                    .incidents
                    .with_label_values(&[severity.as_str()])
                    .inc();
            }
            if rec.seq != incident_seq {
                shared
                    .sessions
                    .with_entry(self.hash, now_s, |e, _| e.state.set_incident(rec.seq));
            }
            incident_id = rec.id;
        }
        tracing::info!(
            request_id = %self.rid,
            client = %self.client,
            operation = %self.template,
            incident = %incident_id,
            finding = kind,
            "streamed answer flagged"
        );
    }
}

/// An answer's body as it is relayed: straight from the upstream, or after holding.
enum Relayed {
    Upstream(UpstreamBody),
    /// Held back for the exposure check, with the whole answer when it ended within what was
    /// held and is small enough for the analyzer (`proxy::exposure::HeldAnswer::whole`).
    Held(ProxyBody, Option<Bytes>),
}

impl Relayed {
    fn into_proxy_body(self) -> ProxyBody {
        match self {
            Relayed::Upstream(b) => b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
            Relayed::Held(b, _) => b,
        }
    }
}

/// The request's canonical target (every check sees it, and the upstream receives it), or
/// the refusal of a request the proxy does not forward at all: a target `canonical_target`
/// refuses, a bad or too large `Content-Length`.
fn admit<'u>(
    parts: &'u Parts,
    policy: &CompiledPolicy,
) -> Result<(CanonicalTarget<'u>, QueryPairs<'u>), Rejection> {
    let limits = &policy.config.limits;
    let canonical = canonical_target(
        &parts.method,
        parts.version,
        &parts.uri,
        &policy.config.paths,
        limits.max_query_parameters,
    )
    .map_err(Rejection::BadTarget)?;
    let max_body_bytes = limits.max_body_bytes;
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>());
    match content_length {
        Some(Err(_)) => Err(Rejection::BadContentLength),
        Some(Ok(len)) if len > max_body_bytes => Err(Rejection::BodyTooLarge {
            limit: max_body_bytes,
            declared: Some(len),
        }),
        _ => Ok(canonical),
    }
}

/// The request body: what is forwarded, and the parsed JSON when a check needed the body.
struct ReadBody {
    forward: RequestBody,
    json: Option<serde_json::Value>,
    /// A buffered body was not empty.
    present: bool,
}

/// Buffers the body (within the limits) when a check needs it; streams it otherwise.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    needs_body: bool,
    limits: &LimitsConfig,
) -> Result<ReadBody, Rejection> {
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    if body.is_end_stream() {
        return Ok(ReadBody {
            forward: RequestBody::Buffered(Bytes::new()),
            json: None,
            present: false,
        });
    }
    // Buffered or streamed, a body that trickles below the minimum rate is cut (408), so that
    // it does not hold its permit for `bodyReadTimeout` (or, streamed, for as long as the
    // upstream waits).
    let body = MinRateBody::new(body, limits.min_body_rate, limits.body_rate_grace.std());
    if !needs_body {
        let forward = RequestBody::Streaming(Limited::new(body, limit).boxed_unsync());
        return Ok(ReadBody {
            forward,
            json: None,
            present: false,
        });
    }
    let collected = tokio::time::timeout(
        limits.body_read_timeout.std(),
        Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| Rejection::BodyTimeout)?
    .map_err(|e| client_body_error(&*e, limits.max_body_bytes))?;
    let bytes = collected.to_bytes();
    let parse = is_json(headers) || !headers.contains_key(header::CONTENT_TYPE);
    let json = if bytes.is_empty() || !parse {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let present = !bytes.is_empty();
    Ok(ReadBody {
        forward: RequestBody::Buffered(bytes),
        json,
        present,
    })
}

/// The answer to a request whose body could not be read from the client: too large, too
/// slow, or broken (a malformed chunk, the client gone). A client fault, never the upstream's.
fn client_body_error(err: &(dyn std::error::Error + 'static), max_body_bytes: u64) -> Rejection {
    if find_source::<http_body_util::LengthLimitError>(err).is_some() {
        Rejection::BodyTooLarge {
            limit: max_body_bytes,
            declared: None,
        }
    } else if let Some(ClientBodyError::TooSlow(slow)) = find_source::<ClientBodyError>(err) {
        Rejection::BodyTooSlow {
            min_rate: slow.min_rate,
        }
    } else {
        Rejection::BodyUnreadable
    }
}

/// The finding of a request that does not match the declared OpenAPI document.
fn schema_violation(
    schema: &OperationSchema,
    action: Action,
    ctx: &RequestContext<'_>,
    body_present: bool,
) -> Option<Finding> {
    let mut errors = Vec::new();
    schema.validate_params(ctx.path_params, ctx.query, &mut errors);
    if schema.wants_body() {
        schema.validate_body(ctx.body, body_present, &mut errors);
    }
    let first = errors.first()?;
    let more = if errors.len() > 1 {
        format!(", and {} more", errors.len() - 1)
    } else {
        String::new()
    };
    Some(Finding {
        kind: FindingKind::SchemaViolation,
        severity: Severity::Medium,
        action,
        block_status: 400,
        rule: None,
        explanation: format!("with a request that violates the OpenAPI document ({first}{more})"),
        evidence: serde_json::json!({ "errors": errors }),
        retry_after_s: None,
    })
}

/// One identified request with its resolved operation, as the phases after identification
/// see it: the policy it was admitted under and the analyzer's view of it.
struct Exchange<'a> {
    shared: &'a Arc<Shared>,
    policy: &'a CompiledPolicy,
    /// The request facts, shared by the checks and learning; `recent` is the session's
    /// history once the checks read it (`Exchange::recent`), empty before.
    ctx: RequestContext<'a>,
    /// Keyed hash of the session (the session table's key).
    hash: u64,
    /// Seconds since the process epoch (the session table's clock).
    now_s: u32,
    rid: &'a str,
    /// The session's recent operations before this request, as the checks saw them; learning
    /// sees the same.
    recent: Recent,
}

/// A session's recent operations, oldest first (`History::fill`).
struct Recent {
    ops: [RecentOp; MAX_HISTORY],
    len: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            ops: [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY],
            len: 0,
        }
    }
}

impl Recent {
    fn ops(&self) -> &[RecentOp] {
        self.ops.get(..self.len).unwrap_or_default()
    }
}

/// What the checks found in one visit of the session entry.
struct Checked {
    /// Declared rules (by priority) and rate limits.
    declared: Vec<Finding>,
    learned: Vec<Finding>,
    /// The session's open incident (0: none).
    incident: u32,
    /// The analyzer failed.
    failed: bool,
}

impl Exchange<'_> {
    /// Runs the declared rules and limits and the analyzer with the session's entry locked,
    /// and records the operation in its history. Findings come in priority order: rules,
    /// limits, schema, learned detectors. With the incident the session has open.
    fn check(
        &mut self,
        schema: Option<&OperationSchema>,
        body_present: bool,
    ) -> Result<(Vec<Finding>, u32), Rejection> {
        let schema = schema
            .zip(self.policy.schema_action)
            .and_then(|(schema, action)| schema_violation(schema, action, &self.ctx, body_present));
        let (shared, hash, now_s) = (self.shared, self.hash, self.now_s);
        let checked = shared
            .sessions
            .with_entry(hash, now_s, |entry, _fresh| self.check_session(entry));
        let (findings, incident, failed) = match checked {
            Some(checked) => {
                let mut findings = checked.declared;
                findings.extend(schema);
                findings.extend(checked.learned);
                (findings, checked.incident, checked.failed)
            }
            None => (schema.into_iter().collect(), 0, true),
        };
        if failed {
            self.check_failed()?;
        }
        Ok((findings, incident))
    }

    fn check_session(&mut self, entry: &mut SessionEntry<SessionState>) -> Checked {
        let (policy, metrics, op, now_ms) = (
            self.policy,
            &self.shared.metrics,
            self.ctx.operation,
            self.ctx.now_ms,
        );
        entry.note_request(policy.identifiers.verifies(self.ctx.session_source));
        let recent = &mut self.recent;
        recent.len = entry
            .history
            .fill(&mut recent.ops, now_ms, policy.history_ms);
        let recent = self.recent.ops();
        let mut declared = Vec::new();
        for rule in policy.rules_for(op.id) {
            if let Some(explanation) = rule.check(op.id, recent, now_ms) {
                rule.counters.matches.fetch_add(1, Ordering::Relaxed);
                rule.counters.last_match_ms.store(now_ms, Ordering::Relaxed);
                metrics.rule_matches.with_label_values(&[&*rule.name]).inc();
                if !rule.dry_run {
                    declared.push(rule.finding(explanation, &op.template));
                }
            }
        }
        for limit in policy.limits_for(op.id) {
            if let Some(f) = limit.check(entry.state.limits_mut(), now_ms) {
                declared.push(f);
            }
        }
        let ctx = RequestContext { recent, ..self.ctx };
        let mut learned = Vec::new();
        let inspected = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.shared
                .analyzer
                .inspect(&ctx, &mut entry.state, &mut learned)
        }));
        let failed = inspected.is_err();
        if failed {
            entry.state.reset_detectors();
            learned.clear();
        }
        entry.history.push(op.id, now_ms, policy.history_capacity);
        Checked {
            declared,
            learned,
            incident: entry.state.incident(),
            failed,
        }
    }

    /// Counts and logs an internal error of the checks; refuses the request when the
    /// failure policy is `Closed`.
    fn check_failed(&self) -> Result<(), Rejection> {
        let failure_policy = self.policy.config.failure_policy;
        let label = match failure_policy {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        };
        self.shared
            .metrics
            .failure_policy
            .with_label_values(&[label])
            .inc();
        tracing::error!(request_id = %self.rid, operation = %self.ctx.operation.template, policy = label, "internal error while checking a request");
        match failure_policy {
            FailurePolicy::Open => Ok(()),
            FailurePolicy::Closed => Err(Rejection::CheckFailed),
        }
    }

    /// Applies the mode (in `decision`), records findings in the session's incident, counts
    /// the request under its decision. Returns the verdict and the incident's id.
    fn decide(
        &self,
        findings: &[Finding],
        incident_seq: u32,
        op_label: &str,
    ) -> (Verdict, Option<String>) {
        let (verdict, incident_id) = self.record(findings, incident_seq);
        self.shared
            .metrics
            .requests
            .with_label_values(&[op_label, verdict.label()])
            .inc();
        (verdict, incident_id)
    }

    /// Applies the mode to `findings` and records them in the session's incident (without
    /// counting the request: an answer's findings come after its request was counted).
    fn record(&self, findings: &[Finding], incident_seq: u32) -> (Verdict, Option<String>) {
        let (shared, ctx) = (self.shared, &self.ctx);
        let metrics = &shared.metrics;
        let verdict = decide(self.policy.config.mode, findings);
        let mut incident_id = None;
        if verdict != Verdict::Allow {
            let blocked = matches!(verdict, Verdict::Block { .. });
            for f in findings {
                metrics.findings.with_label_values(&[f.kind.as_str()]).inc();
            }
            // The session as incidents show it (credential values hashed), for the log too.
            let mut shown_session = String::new();
            if let Some(rec) = shared.incidents.record(
                ctx.session,
                ctx.client,
                &ctx.operation.template,
                findings,
                blocked,
                ctx.now_ms,
            ) {
                if rec.created {
                    let severity = findings.iter().map(|f| f.severity).max();
                    if let Some(severity) = severity {
                        metrics
                            .incidents
                            .with_label_values(&[severity.as_str()])
                            .inc();
                    }
                }
                if rec.seq != incident_seq {
                    self.set_incident(rec.seq);
                }
                incident_id = Some(rec.id);
                shown_session = rec.session;
            }
            tracing::info!(
                request_id = %self.rid,
                session = %shown_session,
                client = %ctx.client,
                operation = %ctx.operation.template,
                decision = verdict.label(),
                incident = incident_id.as_deref().unwrap_or(""),
                findings = ?findings.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
                "request flagged"
            );
        } else if incident_seq != 0 && !shared.incidents.note_request(incident_seq, ctx.now_ms) {
            self.set_incident(0);
        }
        (verdict, incident_id)
    }

    /// Judges the answer (what it exposes) with the session's entry locked.
    fn inspect_response(&self, resp: &ResponseSummary<'_>) -> Option<Finding> {
        self.shared
            .sessions
            .with_entry(self.hash, self.now_s, |entry, _| {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.shared
                        .analyzer
                        .inspect_response(&self.ctx, &mut entry.state, resp)
                }))
                .ok()
                .flatten()
            })
            .flatten()
    }

    fn set_incident(&self, seq: u32) {
        self.shared
            .sessions
            .with_entry(self.hash, self.now_s, |e, _| e.state.set_incident(seq));
    }

    /// The answer to a request blocked by `findings[index]`, counted per kind and rule.
    fn block(
        &self,
        findings: &[Finding],
        index: usize,
        incident_id: Option<String>,
    ) -> Option<Box<Block>> {
        let f = findings.get(index)?;
        let metrics = &self.shared.metrics;
        metrics.blocked.with_label_values(&[f.kind.as_str()]).inc();
        for rf in findings
            .iter()
            .filter(|x| x.kind == FindingKind::SequenceRule && x.action == Action::Block)
        {
            if let Some(rule) = rf.rule.as_deref().and_then(|n| self.policy.rule(n)) {
                rule.counters.blocked.fetch_add(1, Ordering::Relaxed);
                metrics.rule_blocked.with_label_values(&[&*rule.name]).inc();
            }
        }
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
        Some(Box::new(Block {
            status: StatusCode::from_u16(f.block_status).unwrap_or(StatusCode::FORBIDDEN),
            detail: format!("{} {}", self.ctx.operation.template, f.explanation),
            extra: Some(extra),
            retry_after_s: f.retry_after_s,
        }))
    }

    /// Sends the request to the upstream within `upstream.timeout`: the answer, and how long
    /// the upstream took. Observes the latency the proxy added (since `started`) when it
    /// answered.
    async fn forward(
        &self,
        req: UpstreamRequest,
        started: Instant,
    ) -> Result<(Response<UpstreamBody>, Duration), Rejection> {
        let config = &self.policy.config;
        let operation = &self.ctx.operation.template;
        let decided = started.elapsed();
        let upstream_started = Instant::now();
        let sent = tokio::time::timeout(
            config.upstream.timeout.std(),
            self.shared.upstream.send(req),
        )
        .await;
        let upstream_elapsed = upstream_started.elapsed();
        match sent {
            Ok(Ok(response)) => {
                let metrics = &self.shared.metrics;
                metrics.added_latency.observe(decided.as_secs_f64());
                Ok((response, upstream_elapsed))
            }
            // Reading the client's body failed while it was streamed: the client's fault.
            Ok(Err(UpstreamError::RequestBody(source))) => {
                Err(client_body_error(&*source, config.limits.max_body_bytes))
            }
            Ok(Err(err)) => {
                let failure = UpstreamFailure::classify(&err, config.limits.max_body_bytes);
                if let Some(kind) = failure.metric_label() {
                    tracing::warn!(request_id = %self.rid, operation = %operation, kind, error = %err, "upstream request failed");
                }
                Err(Rejection::Upstream(failure))
            }
            Err(_) => {
                tracing::warn!(request_id = %self.rid, operation = %operation, "upstream timed out");
                Err(Rejection::Upstream(UpstreamFailure::Timeout {
                    after: config.upstream.timeout,
                }))
            }
        }
    }

    /// Tells the other replicas what this exchange taught about the client address (with
    /// `peers` only): before the client has its answer, so before it can send the next request
    /// whose decision reads it, perhaps on another replica (see `proxy::route::facts`).
    async fn share_facts(&self) {
        if let Some(router) = self.shared.router.as_deref() {
            let facts = self.ctx.scratch.take_facts();
            if !facts.is_empty() {
                router.share_facts(facts).await;
            }
        }
    }

    /// Learning from the exchange (what was answered, or the block status with `flagged`),
    /// under the policy the request was checked with and with the session's history as the
    /// checks saw it.
    fn learn(&self, resp: &ResponseSummary<'_>, flagged: bool) {
        let done = self
            .shared
            .sessions
            .with_entry(self.hash, self.now_s, |entry, _| {
                let ctx = RequestContext {
                    recent: self.recent.ops(),
                    ..self.ctx
                };
                let observed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.shared
                        .analyzer
                        .observe(&ctx, &mut entry.state, resp, flagged)
                }));
                if observed.is_err() {
                    entry.state.reset_detectors();
                }
                observed.ok()
            });
        if let Some(Some(late)) = &done {
            self.shared
                .record_late(&self.ctx.operation.template, late, self.ctx.now_ms);
        }
        if !matches!(done, Some(Some(_))) {
            self.shared
                .metrics
                .failure_policy
                .with_label_values(&["open"])
                .inc();
            tracing::error!(operation = %self.ctx.operation.template, "internal error while learning from a response");
        }
    }
}

/// The answer phase: what the upstream answered, judged (what it exposes), learned, and
/// relayed to the client.
impl Exchange<'_> {
    /// The request blocked by `findings[index]`: counted, learned as refused, and the
    /// rejection that answers it.
    fn refuse(
        &self,
        findings: &[Finding],
        index: usize,
        incident_id: Option<String>,
        started: Instant,
    ) -> Rejection {
        let Some(block) = self.block(findings, index, incident_id) else {
            return Rejection::Blocked(Box::new(Block::by_policy()));
        };
        let status = block.status.as_u16();
        self.shared
            .metrics
            .added_latency
            .observe(started.elapsed().as_secs_f64());
        let answered = ResponseSummary {
            status,
            refused: true,
            ..ResponseSummary::default()
        };
        self.learn(&answered, true);
        Rejection::Blocked(block)
    }

    /// Judges, learns and relays the upstream's `response` (answered `upstream_elapsed` after
    /// it was sent) to a request decided `verdict`. A rejection when the answer exposes what
    /// the policy blocks: nothing of it is forwarded then.
    ///
    /// The outcome is read from the answer only where the analyzer needs it, and from a body
    /// only when it is already in memory: never waited for — except that an answer that
    /// streams is held back (bounded, see `proxy::exposure`) while the exposure detector
    /// blocks, so that it can be withheld. Whatever streams on unjudged is scanned as it
    /// passes and judged when it ends ([`StreamedAnswer`]).
    async fn answer(
        &self,
        response: Response<UpstreamBody>,
        verdict: Verdict,
        incident_seq: u32,
        upstream_elapsed: Duration,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let op = self.ctx.operation;
        let read = self.shared.analyzer.wants_response(op);
        let status = response.status().as_u16();
        let set_cookie = read && response.headers().contains_key(header::SET_COOKIE);
        let (parts, body) = response.into_parts();
        let (body, scan, mut stream_scan) =
            self.receive(body, read, (200..300).contains(&status)).await;
        let in_memory = match &body {
            Relayed::Upstream(b) if read => {
                b.in_memory().filter(|b| b.len() <= outcome::MAX_READ_BYTES)
            }
            // Held whole: as much in memory as an answer that arrived with its head, so
            // that outcome and lineage read it alike, whatever the timing of its reads.
            Relayed::Held(_, whole) if read => whole.as_deref(),
            _ => None,
        };
        let answered = ResponseSummary {
            status,
            duration_us: u64::try_from(upstream_elapsed.as_micros()).unwrap_or(u64::MAX),
            set_cookie,
            body: in_memory,
            refused: false,
            exposure: scan.as_ref().filter(|s| s.json),
        };
        let exposed = answered
            .exposure
            .and_then(|_| self.inspect_response(&answered));
        let mut flagged = verdict == Verdict::Flag;
        if let Some(finding) = exposed {
            // Judged already: the rest is not judged again.
            stream_scan = None;
            let findings = [finding];
            let (answer_verdict, incident_id) = self.record(&findings, incident_seq);
            flagged = true;
            if let Verdict::Block { index } = answer_verdict
                && let Some(block) = self.block(&findings, index, incident_id)
            {
                // Nothing of the answer is forwarded: the held or in-memory body is dropped.
                self.learn(&answered, true);
                self.share_facts().await;
                return Err(Rejection::Blocked(block));
            }
        }
        // An answer scanned to its end later is learned then; now only that it was answered.
        let learned = ResponseSummary {
            exposure: answered.exposure.filter(|_| stream_scan.is_none()),
            ..answered
        };
        self.learn(&learned, flagged);
        self.share_facts().await;
        let body = body.into_proxy_body();
        let body = match stream_scan {
            Some(scanner) => self.scanning(body, scanner),
            None => body,
        };
        Ok(relay(
            Response::from_parts(parts, body),
            HeaderValue::from_str(self.rid).ok(),
        ))
    }

    /// The answer's body as it will be relayed, with its exposure scan when it was in memory
    /// or held back (`success`: a 2xx answer; `read`: the analyzer reads this operation's
    /// answers), and the scanner of a body judged as it streams.
    async fn receive(
        &self,
        body: UpstreamBody,
        read: bool,
        success: bool,
    ) -> (Relayed, Option<Scan>, Option<Scanner>) {
        let (analyzer, op) = (&self.shared.analyzer, self.ctx.operation);
        match body.in_memory() {
            Some(bytes) if read => {
                let scan = exposure::scan(bytes, true);
                (Relayed::Upstream(body), Some(scan), None)
            }
            None if read
                && success
                && self.policy.config.mode == Mode::Enforce
                && analyzer.holds_response(op) =>
            {
                let timeout = self.policy.config.upstream.timeout.std();
                let held = proxy_exposure::hold(body, timeout).await;
                (
                    Relayed::Held(held.body, held.whole),
                    Some(held.scan),
                    held.rest,
                )
            }
            None if read && success && analyzer.scans_streamed(op) => {
                let scanner = Scanner::new(exposure::MAX_STREAM_SCAN_BYTES);
                (Relayed::Upstream(body), None, Some(scanner))
            }
            _ => (Relayed::Upstream(body), None, None),
        }
    }

    /// `body` relayed through `scanner`, judged when it ends.
    fn scanning(&self, body: ProxyBody, scanner: Scanner) -> ProxyBody {
        let end = Box::new(StreamedAnswer {
            shared: Arc::clone(self.shared),
            mode: self.policy.config.mode,
            session: self.ctx.session.to_owned(),
            client: self.ctx.client,
            template: self.ctx.operation.template.clone(),
            hash: self.hash,
            rid: self.rid.to_owned(),
        });
        Scanning::new(body, scanner, end).boxed_unsync()
    }
}

impl Block {
    /// A block without a deciding finding (the verdict names one; kept as a safe answer).
    fn by_policy() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            detail: "blocked by policy".into(),
            extra: None,
            retry_after_s: None,
        }
    }
}

/// The upstream request in origin form (`/path?query`): the pool holds connections to the
/// one upstream. The request's own headers stay as received for learning; the upstream's
/// head is written from them directly (without the hop-by-hop ones, with the forwarding
/// headers).
fn upstream_request(
    exchange: &Exchange<'_>,
    peer: SocketAddr,
    parts: &Parts,
    target: &CanonicalTarget<'_>,
    body: RequestBody,
) -> UpstreamRequest {
    let mut req = UpstreamRequest::new(parts.method.clone(), &target.forward_target(), body);
    // HTTP/2 carries the host in `:authority`; without either, name the upstream.
    let authority = parts
        .uri
        .authority()
        .unwrap_or(exchange.shared.upstream.authority());
    let forwarding = Forwarding {
        peer: peer.ip(),
        trust_incoming: exchange.policy.config.client_address.source
            == ClientAddressSource::XForwardedFor,
        request_id: exchange.rid,
        host: authority.as_str(),
    };
    write_forwarded(&mut req.head, &parts.headers, &forwarding);
    req
}

/// The upstream's response as the client gets it: without hop-by-hop headers, with the
/// request id.
fn relay(response: Response<ProxyBody>, rid: Option<HeaderValue>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = rid {
        parts.headers.insert(X_REQUEST_ID, v);
    }
    Response::from_parts(parts, body)
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
