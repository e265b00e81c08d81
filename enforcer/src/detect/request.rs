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
    /// The session token's claims (hashed, see `lineage::claims`): decoding the token is the
    /// same work for the check and for learning.
    claims: Mutex<Option<Vec<(String, u64)>>>,
    /// The request's object identifiers the session was not shown, as the check found them:
    /// learning takes them as they were when the request was judged.
    unshown: Mutex<Option<Vec<u64>>>,
    /// Whether facts about the client address are collected for the other replicas (only
    /// with `peers`: see [`AddressFacts`]).
    exporting: bool,
    /// What this request taught about its client address, for the other replicas.
    facts: Mutex<AddressFacts>,
}

/// What a decision about a client address's request taught about the address, that a later
/// decision on another replica reads (`proxy::route` sends it to the other replicas): the
/// session of a token, cookie or header from that address, or the next session a
/// credential stuffer opens from it, is usually decided by another replica than this one.
///
/// - `values`: what an answer to an anonymous request of the address showed it (see
///   `detect::shown`): the values of an answer to an anonymous request (public by
///   construction, and crossing the internal hop anyway when forwarded); the receiver keeps
///   only its own keyed hashes of them.
/// - `failure`: a failed authentication from the address (see `detect::clients`).
/// - `quarantine`: the address was quarantined (see `detect::quarantine`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddressFacts {
    /// The client address (carried by the message's authenticated header, not its body).
    #[serde(skip)]
    pub address: Option<IpAddr>,
    /// The operation template whose answer showed `values`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// (field path, value), at most `detect::lineage::MAX_RESPONSE_VALUES`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<AuthFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<AddressQuarantine>,
}

impl AddressFacts {
    /// Nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.failure.is_none() && self.quarantine.is_none()
    }
}

/// A failed authentication of a client address in a counting window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthFailure {
    /// The counting window (`now / learning.windowSeconds`, the same on every replica).
    pub window: u64,
    /// Stable hash of the identity it claimed.
    pub identity: Option<u64>,
}

/// A client address's quarantine (see `detect::quarantine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddressQuarantine {
    pub since_ms: u64,
    pub until_ms: u64,
    pub cause: crate::finding::FindingKind,
}

impl std::fmt::Debug for RequestScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestScratch").finish_non_exhaustive()
    }
}

impl RequestScratch {
    /// A scratch that collects facts about the client address for the other replicas
    /// (`exporting`: the enforcer has peers).
    pub fn exporting(exporting: bool) -> Self {
        Self {
            exporting,
            ..Self::default()
        }
    }

    /// Whether facts about the client address are collected for the other replicas.
    pub fn exports(&self) -> bool {
        self.exporting
    }

    /// Adds to what the request taught about its client address `address`, for the other
    /// replicas (nothing without peers).
    pub fn add_facts(&self, address: IpAddr, add: impl FnOnce(&mut AddressFacts)) {
        if self.exporting {
            let mut facts = self.facts.lock();
            facts.address = Some(address);
            add(&mut facts);
        }
    }

    /// What the request taught about its client address, once; `None` when nothing.
    pub fn take_facts(&self) -> Option<AddressFacts> {
        if !self.exporting {
            return None;
        }
        let facts = std::mem::take(&mut *self.facts.lock());
        (!facts.is_empty()).then_some(facts)
    }

    /// The request's parameter observations, derived now unless an earlier call left them.
    pub fn take_params(&self, ctx: &RequestContext<'_>) -> RequestParams {
        let kept = self.params.lock().take();
        kept.unwrap_or_else(|| RequestParams::from_request(ctx))
    }

    /// Keeps the observations for a later call on the same request.
    pub fn keep_params(&self, params: RequestParams) {
        *self.params.lock() = Some(params);
    }

    /// The session token's claims, derived by `derive` on the first call for the request.
    pub fn claims(&self, derive: impl FnOnce() -> Vec<(String, u64)>) -> Vec<(String, u64)> {
        self.claims.lock().get_or_insert_with(derive).clone()
    }

    /// The unshown object identifiers, derived by `derive` on the first call for the request.
    pub fn unshown(&self, derive: impl FnOnce() -> Vec<u64>) -> Vec<u64> {
        self.unshown.lock().get_or_insert_with(derive).clone()
    }
}

/// What the upstream answered, for learning.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseSummary<'a> {
    pub status: u16,
    pub duration_us: u64,
    /// The answer sets a cookie (read only for operations the analyzer `wants_response` of).
    pub set_cookie: bool,
    /// The whole response body, for operations the analyzer `wants_response` of, when it was
    /// already in memory and at most `detect::outcome::MAX_READ_BYTES` long (never waited
    /// for: the response is not delayed by it).
    pub body: Option<&'a [u8]>,
    /// The enforcer answered itself (a refusal): the status is its own, not the application's.
    pub refused: bool,
    /// What the answer's body exposes (see `detect::exposure`), when it was scanned: the body
    /// in memory, or the prefix held back while the exposure detector blocks.
    pub exposure: Option<&'a super::exposure::Scan>,
}

/// A finding about an exchange that was already answered (it cannot block it): a failed
/// login found to belong to a credential-stuffing campaign once it settled. Recorded as an
/// incident of `client`.
#[derive(Debug, Clone)]
pub struct LateFinding {
    pub client: IpAddr,
    pub finding: Finding,
}

/// How far the learned model is from the maturity gate (`learning.minRequests` and
/// `learning.minSessions`, the thresholds the operator applies to the merged model for the
/// `ModelMature` condition), for the metrics (`ordo_model_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelMaturity {
    pub requests: u64,
    pub sessions: u64,
    pub min_requests: u64,
    pub min_sessions: u64,
    /// Operations the model holds statistics for (`status.model.endpoints`).
    pub operations: u64,
    /// Of those, operations whose volume baseline is mature (`learning.minVolumeWindows`
    /// session windows), so that the per-operation detectors judge them.
    pub operations_mature: u64,
}

impl ModelMaturity {
    /// Copies the progress toward maturity into the `ordo_model_*` gauges of `metrics` (here,
    /// not in metrics.rs, which sits below `detect` in the module order: enforcer/tests/layering.rs).
    pub fn export(&self, metrics: &crate::metrics::Metrics) {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        metrics.model_mature.set(i64::from(self.mature()));
        metrics.model_maturity_ratio.set(self.progress());
        metrics.model_operations.set(int(self.operations));
        metrics
            .model_operations_mature
            .set(int(self.operations_mature));
    }

    /// Whether the gate is passed: the learned detectors act.
    pub fn mature(&self) -> bool {
        self.requests >= self.min_requests && self.sessions >= self.min_sessions
    }

    /// Progress toward the gate, 0 to 1: the lesser of the two fractions (requests and
    /// sessions), capped at 1.
    pub fn progress(&self) -> f64 {
        let fraction = |have: u64, need: u64| {
            if need == 0 {
                1.0
            } else {
                (have as f64 / need as f64).min(1.0)
            }
        };
        fraction(self.requests, self.min_requests).min(fraction(self.sessions, self.min_sessions))
    }
}

/// Implemented by the learned model + detectors. The proxy calls it; `inspect` runs with the
/// session's entry locked (synchronous, must be cheap, never awaits).
pub trait Analyzer: Send + Sync + 'static {
    /// Whether the request body of this operation must be buffered (≤ configured limit) and parsed.
    fn wants_body(&self, op: &Operation) -> bool;
    /// Whether the answer's `Set-Cookie` and (small, in-memory) body must be handed to
    /// `observe` for this operation (see `detect::outcome`). Cheap: asked for every response.
    fn wants_response(&self, _op: &Operation) -> bool {
        false
    }
    /// Whether the answer of this operation must be held back (up to
    /// `detect::exposure::MAX_SCAN_BYTES`) when it streams, so that `inspect_response` can
    /// withhold it: only while a detector that judges answers blocks.
    fn holds_response(&self, _op: &Operation) -> bool {
        false
    }
    /// Whether an answer of this operation that streams must be scanned as it passes and
    /// handed to `observe_streamed` when it ends (see `proxy::exposure::Scanning`).
    fn scans_streamed(&self, _op: &Operation) -> bool {
        false
    }
    /// Judges and learns what a streamed 2xx answer of `template` held, once it ended (or was
    /// cut: `scan.complete` is false). Runs with the session's entry locked, after `observe`
    /// learned the exchange. A finding can only be reported: the answer was relayed.
    fn observe_streamed(
        &self,
        _template: &str,
        _now_ms: u64,
        _state: &mut SessionState,
        _scan: &super::exposure::Scan,
    ) -> Option<Finding> {
        None
    }
    /// Judges the answer before it is relayed (what it exposes); a finding is applied like a
    /// request's (logged, or the answer withheld when it blocks in `Enforce`).
    fn inspect_response(
        &self,
        _ctx: &RequestContext<'_>,
        _state: &mut SessionState,
        _resp: &ResponseSummary<'_>,
    ) -> Option<Finding> {
        None
    }
    /// Evaluate the request; push findings. `state` is this session's detector state.
    fn inspect(&self, ctx: &RequestContext<'_>, state: &mut SessionState, out: &mut Vec<Finding>);
    /// Learn from the exchange. Called for every completed exchange; the analyzer learns only
    /// from successful (2xx/3xx), unflagged traffic but may count failures. Returns findings
    /// about earlier exchanges that this one settled (usually none: no allocation).
    fn observe(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary<'_>,
        flagged: bool,
    ) -> Vec<LateFinding>;
    /// JSON for `GET /v1/model`.
    fn model_view(&self) -> serde_json::Value;
    /// The model's progress toward maturity (cheap: read at every scrape of `/metrics`);
    /// `None` for an analyzer that learns nothing.
    fn maturity(&self) -> Option<ModelMaturity> {
        None
    }
    /// Folds literal path names learned before their position became a parameter into it,
    /// statistics included (see `detect::templates`). Called periodically by housekeeping.
    fn fold_templates(&self, _resolver: &crate::operation::OperationResolver) {}
    /// Called with the config at start and after every applied reload (e.g. so that the values
    /// of the headers, cookies and query parameters that identify sessions are never learned).
    fn configure(&self, _config: &crate::config::EnforcerConfig) {}
    /// Takes in what another replica's decision taught about `facts.address` (see
    /// [`AddressFacts`] and `proxy::route`), at `now_ms`.
    fn remember_address_facts(&self, _facts: &AddressFacts, _now_ms: u64) {}
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
        _resp: &ResponseSummary<'_>,
        _flagged: bool,
    ) -> Vec<LateFinding> {
        Vec::new()
    }

    fn model_view(&self) -> serde_json::Value {
        serde_json::json!({ "analyzer": "none", "detectors": [] })
    }
}
