//! The extension point between the proxy (declared policy, sessions, operations) and the
//! learned detectors. The proxy builds one [`RequestContext`] per request, asks every
//! checker for [`Finding`]s, and applies the mode once, in `proxy::decision`.

use std::borrow::Cow;
use std::net::IpAddr;

use parking_lot::Mutex;

use super::params::RequestParams;
use super::session_state::SessionState;
use crate::finding::Finding;
use crate::operation::Operation;
use crate::session::{RecentOp, SessionSource};

/// Everything the learned detectors may look at for one request. Borrowed; built once per
/// request (only `recent` differs between checking and learning).
#[derive(Clone, Copy)]
pub struct RequestContext<'a> {
    /// Unix milliseconds when the request arrived.
    pub now_ms: u64,
    /// Resolved session key, e.g. `jwt:sub=4411` or `ip:10.0.0.7`.
    pub session: &'a str,
    /// Which identifier produced `session`.
    pub session_source: SessionSource,
    /// Client address (socket or trusted `X-Forwarded-For` hop).
    pub client: IpAddr,
    pub method: &'a http::Method,
    /// The resolved operation (declared, learned, overflow or unknown).
    pub operation: &'a Operation,
    /// Template parameter name → raw segment value.
    pub path_params: &'a [(&'a str, &'a str)],
    /// Decoded query pairs in request order.
    pub query: &'a [(Cow<'a, str>, Cow<'a, str>)],
    pub headers: &'a http::HeaderMap,
    /// Parsed JSON body when it was buffered.
    pub body: Option<&'a serde_json::Value>,
    /// This session's recent operations, oldest first, excluding this request.
    pub recent: &'a [RecentOp],
    /// Values derived from this request once and shared by `inspect` and `observe`.
    pub scratch: &'a RequestScratch,
}

/// Per-request values the analyzer derives once (the parameter observations: parsing every
/// path, query, body and header value is the largest part of the learned checks), created
/// empty by whoever builds the [`RequestContext`] and kept for the whole request.
#[derive(Default)]
pub struct RequestScratch {
    /// A mutex only so that the handler's future stays `Send`: one request uses it at a time,
    /// so it is never contended.
    params: Mutex<Option<RequestParams>>,
}

impl std::fmt::Debug for RequestScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestScratch").finish_non_exhaustive()
    }
}

impl RequestScratch {
    /// The request's parameter observations, derived now unless an earlier call left them.
    pub fn take_params(&self, ctx: &RequestContext<'_>) -> RequestParams {
        let kept = self.params.lock().take();
        kept.unwrap_or_else(|| RequestParams::from_request(ctx))
    }

    /// Keeps the observations for a later call on the same request.
    pub fn keep_params(&self, params: RequestParams) {
        *self.params.lock() = Some(params);
    }
}

/// What the upstream answered, for learning.
#[derive(Debug, Clone, Copy)]
pub struct ResponseSummary {
    pub status: u16,
    pub duration_us: u64,
}

/// Implemented by the learned model + detectors. The proxy calls it; `inspect` runs with the
/// session's entry locked (synchronous, must be cheap, never awaits).
pub trait Analyzer: Send + Sync + 'static {
    /// Whether the request body of this operation must be buffered (≤ configured limit) and parsed.
    fn wants_body(&self, op: &Operation) -> bool;
    /// Evaluate the request; push findings. `state` is this session's detector state.
    fn inspect(&self, ctx: &RequestContext<'_>, state: &mut SessionState, out: &mut Vec<Finding>);
    /// Learn from the exchange. Called for every completed exchange; the analyzer learns only
    /// from successful (2xx/3xx), unflagged traffic but may count failures.
    fn observe(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary,
        flagged: bool,
    );
    /// JSON for `GET /v1/model`.
    fn model_view(&self) -> serde_json::Value;
    /// Folds literal path names learned before their position became a parameter into it,
    /// statistics included (see `detect::templates`). Called periodically by housekeeping.
    fn fold_templates(&self, _resolver: &crate::operation::OperationResolver) {}
    /// Called with the config at start and after every applied reload (e.g. so that the values
    /// of the headers, cookies and query parameters that identify sessions are never learned).
    fn configure(&self, _config: &crate::config::EnforcerConfig) {}
}

/// An analyzer that learns nothing and finds nothing: the proxy's declared policy alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopAnalyzer;

impl Analyzer for NoopAnalyzer {
    fn wants_body(&self, _op: &Operation) -> bool {
        false
    }

    fn inspect(
        &self,
        _ctx: &RequestContext<'_>,
        _state: &mut SessionState,
        _out: &mut Vec<Finding>,
    ) {
    }

    fn observe(
        &self,
        _ctx: &RequestContext<'_>,
        _state: &mut SessionState,
        _resp: &ResponseSummary,
        _flagged: bool,
    ) {
    }

    fn model_view(&self) -> serde_json::Value {
        serde_json::json!({ "analyzer": "none", "detectors": [] })
    }
}
