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
    /// What this request taught about its client address (first) and about other addresses
    /// (the members of a campaign it named), for the other replicas: at most
    /// [`MAX_FACT_ADDRESSES`] addresses.
    facts: Mutex<Vec<AddressFacts>>,
}

/// Most addresses one request teaches about: its client and the members of a campaign it
/// names (at most 32 per exchange, see `detect::distributed`).
pub const MAX_FACT_ADDRESSES: usize = 64;

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
/// - `quarantine`: the address was quarantined (see `detect::quarantine`), as a stuffer
///   caught in the act or as a member of a campaign.
/// - `attempt`: an authentication attempt of the address, as the API-wide activity records it
///   (see `detect::auth_activity`, read by the distributed-stuffing checks).
/// - `carried_on`: the address went on using the API after failing to authenticate (its
///   failed attempts are no campaign evidence).
/// - `campaign_member`: the address was named a member of a credential-stuffing campaign:
///   its failed attempts up to that time count as named (each member is named once).
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
    /// Malformed: `None` (skipped, the rest of the message taken).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub attempt: Option<AuthAttempt>,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "lenient_flag"
    )]
    pub carried_on: bool,
    /// Unix ms: the named member's failed attempts made up to this time are settled.
    /// Malformed: `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub campaign_member: Option<u64>,
}

/// `T`, or `None` when the value is not one.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = <serde_json::Value as serde::Deserialize>::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// A boolean, or `false` when the value is not one.
fn lenient_flag<'de, D>(deserializer: D) -> Result<bool, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = <serde_json::Value as serde::Deserialize>::deserialize(deserializer)?;
    Ok(value.as_bool().unwrap_or(false))
}

impl AddressFacts {
    /// Nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.failure.is_none()
            && self.quarantine.is_none()
            && self.attempt.is_none()
            && !self.carried_on
            && self.campaign_member.is_none()
    }
}

/// An authentication attempt as the API-wide activity records it (see
/// `detect::auth_activity`): no credential, only the stable hash of the identity claimed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthAttempt {
    /// The authenticating operation's template (each replica has its own operation indexes).
    pub operation: String,
    /// When it was made, unix ms (the deciding replica's clock).
    pub at_ms: u64,
    /// Stable hash of the identity it claimed, as in [`AuthFailure`].
    pub identity: Option<u64>,
    pub failed: bool,
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

    /// Adds to what the request taught about the address `address` (its client's, or a
    /// campaign member's), for the other replicas (nothing without peers; nothing about more
    /// than [`MAX_FACT_ADDRESSES`] addresses).
    pub fn add_facts(&self, address: IpAddr, add: impl FnOnce(&mut AddressFacts)) {
        if !self.exporting {
            return;
        }
        let mut facts = self.facts.lock();
        if let Some(known) = facts.iter_mut().find(|f| f.address == Some(address)) {
            add(known);
        } else if facts.len() < MAX_FACT_ADDRESSES {
            let mut new = AddressFacts {
                address: Some(address),
                ..AddressFacts::default()
            };
            add(&mut new);
            facts.push(new);
        }
    }

    /// What the request taught, once, one entry per address, in the order first taught
    /// (the client's first); empty when nothing.
    pub fn take_facts(&self) -> Vec<AddressFacts> {
        if !self.exporting {
            return Vec::new();
        }
        let mut facts = std::mem::take(&mut *self.facts.lock());
        facts.retain(|f| !f.is_empty());
        facts
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
    /// [`AddressFacts`] and `proxy::route`), at `now_ms`; the number of entries skipped
    /// (unknown here, or out of time).
    fn remember_address_facts(&self, _facts: &AddressFacts, _now_ms: u64) -> usize {
        0
    }
    /// The members of a credential-stuffing campaign in progress that settled with no login
    /// after them to name them (a campaign's last tries), with the operation they tried;
    /// called about once a second (see `detect::distributed::sweep`). They were answered
    /// already: findings to record, not to block. What the other replicas must know of them
    /// (their quarantine) goes into `facts`, as a request's would.
    fn sweep_campaigns(&self, _now_ms: u64, _facts: &RequestScratch) -> Vec<(String, LateFinding)> {
        Vec::new()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xCB00_7100 + i))
    }

    #[test]
    fn facts_are_collected_per_address_client_first_and_bounded() {
        let quiet = RequestScratch::exporting(false);
        quiet.add_facts(ip(0), |f| f.carried_on = true);
        assert!(quiet.take_facts().is_empty(), "nothing without peers");

        let scratch = RequestScratch::exporting(true);
        scratch.add_facts(ip(0), |f| f.carried_on = true);
        for i in 1..200 {
            scratch.add_facts(ip(i), |f| f.campaign_member = Some(u64::from(i)));
        }
        scratch.add_facts(ip(0), |f| {
            f.failure = Some(AuthFailure {
                window: 1,
                identity: Some(7),
            });
        });
        scratch.add_facts(ip(500), |_| {});
        let facts = scratch.take_facts();
        assert_eq!(facts.len(), MAX_FACT_ADDRESSES);
        let first = facts.first().unwrap();
        assert_eq!(first.address, Some(ip(0)));
        assert!(first.carried_on && first.failure.is_some());
        assert!(facts.iter().all(|f| !f.is_empty()));
        assert!(scratch.take_facts().is_empty(), "taken once");
    }

    #[test]
    fn facts_read_leniently_where_new() {
        // A message that tells no attempt (an earlier version's) reads as before.
        let old: AddressFacts =
            serde_json::from_str(r#"{"failure":{"window":3,"identity":9}}"#).unwrap();
        assert!(old.attempt.is_none() && !old.carried_on && old.campaign_member.is_none());
        let with: AddressFacts = serde_json::from_str(
            r#"{"attempt":{"operation":"POST /login","at_ms":5,"identity":null,"failed":false}}"#,
        )
        .unwrap();
        assert_eq!(with.attempt.map(|a| a.at_ms), Some(5));
        // A malformed attempt, flag or member time is left out; the rest is taken.
        let malformed: AddressFacts = serde_json::from_str(
            r#"{"attempt":{"at_ms":"x"},"carried_on":3,"campaign_member":-1,"failure":{"window":3,"identity":null},"unknown":1}"#,
        )
        .unwrap();
        assert!(malformed.attempt.is_none() && !malformed.carried_on);
        assert!(malformed.campaign_member.is_none() && malformed.failure.is_some());
        let facts = AddressFacts {
            attempt: Some(AuthAttempt {
                operation: "POST /login".into(),
                at_ms: 9,
                identity: Some(4),
                failed: true,
            }),
            carried_on: true,
            campaign_member: Some(8),
            ..AddressFacts::default()
        };
        let json = serde_json::to_string(&facts).unwrap();
        assert_eq!(serde_json::from_str::<AddressFacts>(&json).unwrap(), facts);
    }
}
