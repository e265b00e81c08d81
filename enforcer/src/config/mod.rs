//! The enforcer's configuration: one YAML document (the one the operator renders into a
//! ConfigMap), loaded with field-path errors, validated, and watched for changes.

mod duration;
pub mod learning;
mod load;
mod peers;
mod reload;
mod report;

mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `operations` section, defined with the resolver it configures.
pub use crate::operation::OperationsConfig;
pub use crate::operation::{
    Backslash, DoubleEncoding, EncodedSlash, PathParameters, PathsConfig, RepeatedSlashes,
    TrailingSlash,
};
pub use duration::Duration;
pub use learning::{
    DEFAULT_QUARANTINE, DetectorConfig, DetectorsConfig, LearningConfig, Sensitivity,
};
pub use load::{ConfigError, load_file, parse_yaml};
pub use peers::{PeerDnsConfig, PeersConfig, expand_env};
pub use reload::{ConfigWatcher, ReloadOutcome};
pub use report::{ReportConfig, ReportConfigError};

pub use validate::{ValidationError, ValidationErrors, validate_config, validate_rule};

/// What a finding does when the mode is `Enforce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Action {
    /// Record the finding (incident, metrics) and let the request through.
    #[default]
    Log,
    /// Refuse the request (in `Enforce` mode only).
    Block,
}

/// How the whole enforcer acts on findings; applied in one place (`proxy::decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mode {
    /// Learn only: findings are discarded, nothing is flagged.
    Learn,
    /// Flag and report, never block.
    #[default]
    Monitor,
    /// Block where a finding's action is `Block`.
    Enforce,
}

/// What happens to a request when the enforcer itself fails on it (an internal error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FailurePolicy {
    /// Forward the request as if no check had run (availability first).
    #[default]
    Open,
    /// Refuse the request with 503.
    Closed,
}

/// The root document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnforcerConfig {
    /// Identifies the rendered config (the operator sets it to a hash of the rest); the
    /// enforcer reports which revision it runs and since when, so that the operator can tell
    /// how long a change took to reach every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Address of the proxy listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub client_address: ClientAddressConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub operations: OperationsConfig,
    /// How request paths are canonicalised before any check.
    #[serde(default)]
    pub paths: PathsConfig,
    /// Optional declared OpenAPI 3 document.
    #[serde(default, rename = "openAPI", skip_serializing_if = "Option::is_none")]
    pub open_api: Option<OpenApiConfig>,
    #[serde(default)]
    pub learning: LearningConfig,
    #[serde(default)]
    pub detectors: DetectorsConfig,
    /// Declared sequence rules (evaluated by priority, higher first).
    #[serde(default)]
    pub rules: Vec<SequenceRuleConfig>,
    /// Declared rate limits per operation per session.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub incidents: IncidentsConfig,
    /// Periodic reports to the operator (absent in standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportConfig>,
    /// The other replicas, among which sessions are spread (absent: one replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<PeersConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}

impl EnforcerConfig {
    /// The config a document naming only `upstream` loads as: every other field at its
    /// default.
    pub fn new(upstream: UpstreamConfig) -> Self {
        Self {
            revision: None,
            listen: default_listen(),
            admin: AdminConfig::default(),
            upstream,
            mode: Mode::default(),
            failure_policy: FailurePolicy::default(),
            client_address: ClientAddressConfig::default(),
            session: SessionConfig::default(),
            operations: OperationsConfig::default(),
            paths: PathsConfig::default(),
            open_api: None,
            learning: LearningConfig::default(),
            detectors: DetectorsConfig::default(),
            rules: Vec::new(),
            rate_limits: Vec::new(),
            limits: LimitsConfig::default(),
            incidents: IncidentsConfig::default(),
            report: None,
            peers: None,
        }
    }
}

/// The admin listener (health, metrics, incidents, model, rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token required on `/v1/*` (health, readiness and metrics stay open); without
    /// one, `/v1/*` answers loopback peers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the bearer token (read at load and reload; surrounding whitespace trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Show session keys verbatim in incidents, reports and logs (by default the values of
    /// header, cookie and query identifiers are shown as a keyed hash).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reveal_session_keys: bool,
    /// Connections the admin listener serves at once; more are answered 503 and closed. A cap
    /// of its own (and file descriptors kept for it out of the proxy's budget, see
    /// `limits.maxConnections`), so that probes and metrics stay reachable when the proxy port
    /// is flooded.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
}

fn default_admin_max_connections() -> usize {
    64
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            token_file: None,
            reveal_session_keys: false,
            max_connections: default_admin_max_connections(),
        }
    }
}

/// Where requests go and how long we wait for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` of the protected service (a path prefix is not supported).
    pub url: String,
    /// Time to establish a TCP connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time until the upstream's response headers arrive (then 504).
    #[serde(default = "default_upstream_timeout")]
    pub timeout: Duration,
    /// Idle pooled connections kept per upstream host.
    #[serde(default = "default_pool_idle")]
    pub max_idle_connections: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle() -> usize {
    256
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

impl UpstreamConfig {
    /// The upstream `url` with the default timeouts and pool.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: default_connect_timeout(),
            timeout: default_upstream_timeout(),
            max_idle_connections: default_pool_idle(),
            pool_idle_timeout: default_pool_idle_timeout(),
        }
    }
}

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClientAddressSource {
    /// The TCP peer address.
    #[default]
    Socket,
    /// `X-Forwarded-For`, skipping `trustedHops` proxies from the right.
    XForwardedFor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAddressConfig {
    #[serde(default)]
    pub source: ClientAddressSource,
    /// Number of trusted proxies in front of the enforcer (each appends one address).
    #[serde(default = "default_trusted_hops")]
    pub trusted_hops: u8,
}

fn default_trusted_hops() -> u8 {
    1
}

impl Default for ClientAddressConfig {
    fn default() -> Self {
        Self {
            source: ClientAddressSource::Socket,
            trusted_hops: default_trusted_hops(),
        }
    }
}

/// How a request is attributed to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionConfig {
    /// Tried in order; the first that yields a value names the session.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<SessionIdentifier>,
    /// A session without requests for this long is forgotten.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Cap on tracked sessions; the least recently seen are evicted beyond it.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Per-session history of recent operations kept for sequence rules.
    #[serde(default)]
    pub history: HistoryConfig,
    /// Verify JWT signatures before a token may name a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_verification: Option<JwtVerificationConfig>,
    /// With `jwtVerification`: who a request without a valid token (none, or an invalid one
    /// with `onInvalid: FallThrough`) is.
    #[serde(default, skip_serializing_if = "WithoutValidToken::is_default")]
    pub without_valid_token: WithoutValidToken,
}

fn default_identifiers() -> Vec<SessionIdentifier> {
    vec![
        SessionIdentifier {
            jwt_claim: Some(JwtClaimIdentifier {
                header: default_authorization(),
                claim: "sub".into(),
            }),
            ..SessionIdentifier::default()
        },
        SessionIdentifier {
            client_ip: Some(ClientIpIdentifier {}),
            ..SessionIdentifier::default()
        },
    ]
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_max_sessions() -> usize {
    100_000
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            identifiers: default_identifiers(),
            idle_timeout: default_idle_timeout(),
            max_sessions: default_max_sessions(),
            history: HistoryConfig::default(),
            jwt_verification: None,
            without_valid_token: WithoutValidToken::default(),
        }
    }
}

/// Exactly one field set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionIdentifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_claim: Option<JwtClaimIdentifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedIdentifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NamedIdentifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<NamedIdentifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpIdentifier>,
}

/// A claim of a JWT carried in a header (`Bearer ` prefix optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtClaimIdentifier {
    #[serde(default = "default_authorization")]
    pub header: String,
    pub claim: String,
}

fn default_authorization() -> String {
    "Authorization".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedIdentifier {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpIdentifier {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryConfig {
    /// Operations kept per session (1..=64).
    #[serde(default = "default_history_requests")]
    pub requests: u32,
    /// How long an operation stays in the history.
    #[serde(default = "default_history_duration")]
    pub duration: Duration,
}

fn default_history_requests() -> u32 {
    10
}
fn default_history_duration() -> Duration {
    Duration::from_secs(600)
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            requests: default_history_requests(),
            duration: default_history_duration(),
        }
    }
}

/// Signature algorithms accepted for session tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// What to do with a token that fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnInvalidToken {
    /// Answer 401 without forwarding.
    #[default]
    Reject,
    /// Ignore the token and try the next identifier.
    FallThrough,
}

/// Who a request without a valid token is, when tokens are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WithoutValidToken {
    /// The next identifier names the session (a header, cookie or query value the client
    /// picks: it can spread its requests over as many sessions as it likes).
    #[default]
    NextIdentifier,
    /// The client address names the session: every unverified request of one address shares
    /// one session (clients behind one NAT share its limits and rules).
    ClientAddress,
}

impl WithoutValidToken {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtVerificationConfig {
    /// Fixed verification keys; a token's `kid` selects among keys that carry one. May be
    /// empty when `jwks` is set.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// Keys published as a JWK Set (RFC 7517), read from a file or fetched over HTTPS and
    /// refreshed, so that an identity provider can rotate them (session/jwks.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
    #[serde(default)]
    pub on_invalid: OnInvalidToken,
    /// Clock skew tolerated on `exp` / `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Tokens without `exp` are invalid.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

impl JwtVerificationConfig {
    /// Verification with `keys` and the default policy, leeway and claims.
    pub fn new(keys: Vec<JwtKeyConfig>) -> Self {
        Self {
            keys,
            jwks: None,
            on_invalid: OnInvalidToken::default(),
            leeway: default_leeway(),
            require_exp: default_true(),
            issuer: None,
            audience: None,
        }
    }
}

/// Where a JWK Set comes from: exactly one of `file`, `uri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksConfig {
    /// A JWKS document on disk (e.g. a mounted ConfigMap or Secret key), read again when its
    /// content changes (checked every `refreshInterval`, default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An `https://` URL of the JWKS (an identity provider's `jwks_uri`), fetched with the
    /// system's CA certificates plus `caFile`, every `refreshInterval` (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// PEM CA certificates trusted for `uri` in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How often the document is read or fetched again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
}

impl JwksConfig {
    /// Default interval between reads of `file`: cheap, and a mounted ConfigMap changes
    /// within about a minute anyway.
    pub const FILE_REFRESH: Duration = Duration::from_secs(5);
    /// Default interval between fetches of `uri` (identity providers publish a new key well
    /// before signing with it; a token naming an unknown `kid` fetches early).
    pub const URI_REFRESH: Duration = Duration::from_secs(300);

    /// The configured or default refresh interval.
    pub fn refresh(&self) -> std::time::Duration {
        let default = if self.uri.is_some() {
            Self::URI_REFRESH
        } else {
            Self::FILE_REFRESH
        };
        self.refresh_interval.unwrap_or(default).std()
    }
}

/// One verification key: exactly one of `secret`, `publicKeyPem`, `file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtKeyConfig {
    pub algorithm: JwtAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// HS256 shared secret (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256 / ES256 public key in PEM (SPKI `PUBLIC KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// File with the secret (HS256) or the PEM public key (RS256/ES256), e.g. a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A declared OpenAPI 3 document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenApiConfig {
    /// Path of the document (YAML or JSON, OpenAPI 3.0 or 3.1).
    pub path: PathBuf,
    /// Validate path/query parameters and JSON request bodies against the schemas.
    #[serde(default = "default_true")]
    pub validate: bool,
    /// What a schema violation does in `Enforce` mode (blocking answers 400).
    #[serde(default = "default_block")]
    pub action: Action,
}

fn default_block() -> Action {
    Action::Block
}

/// A declared rule about order (docs/rules-cookbook.md). Exactly one of `requires`, `forbids`,
/// `maxRepeat`, `minInterval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceRuleConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Higher first; the highest-priority blocking finding decides the answer.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub action: Action,
    /// Count matches, never flag or block.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<RequiresRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbids: Option<ForbidsRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_repeat: Option<MaxRepeatRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<MinIntervalRule>,
}

/// A window of the session's recent operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Within {
    #[serde(default = "default_history_requests")]
    pub requests: u32,
    #[serde(default = "default_history_duration")]
    pub duration: Duration,
}

impl Default for Within {
    fn default() -> Self {
        Self {
            requests: default_history_requests(),
            duration: default_history_duration(),
        }
    }
}

/// `operation` must be preceded by each of `after`, in that order, within the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequiresRule {
    pub operation: String,
    pub after: Vec<String>,
    #[serde(default)]
    pub within: Within,
}

/// The ordered `sequence` must not occur within the window (gaps allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForbidsRule {
    pub sequence: Vec<String>,
    #[serde(default)]
    pub within: Within,
}

/// `operation` may not occur more than `count` times in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaxRepeatRule {
    pub operation: String,
    pub count: u32,
}

/// At least `duration` must pass between `from` and `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MinIntervalRule {
    pub from: String,
    pub to: String,
    pub duration: Duration,
}

/// At most `requests` per `per` for one operation in one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub operation: String,
    pub requests: u32,
    pub per: Duration,
    #[serde(default)]
    pub action: Action,
}

/// Protocol limits and timeouts of the proxy listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted (413 beyond); bodies are buffered only when a check needs them.
    pub max_body_bytes: u64,
    /// Requests in flight beyond this are shed with 503.
    pub max_concurrent_requests: usize,
    /// Time a client has to send the request headers.
    pub header_read_timeout: Duration,
    /// Keep-alive connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Time a client has to send a buffered request body.
    pub body_read_timeout: Duration,
    /// Time allowed to drain in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// Query parameters (`&`-separated pairs) accepted in one request; more answer 400, so
    /// that no parameter goes unchecked.
    pub max_query_parameters: usize,
    /// Client connections the proxy listener serves at once (every worker); more are answered
    /// 503 and closed. Absent: derived from the process's file-descriptor limit, so that the
    /// proxy never takes the descriptors the admin listener and the upstream connections need.
    /// A configured value is lowered to that bound too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections one client address may hold open (IPv6: one /64); more are answered 503 and
    /// closed. Counted on the TCP peer, and only with `clientAddress.source: Socket` (behind a
    /// trusted proxy every connection comes from the proxy). 0: no cap.
    pub max_connections_per_client: usize,
    /// Requests of one client address in flight at once (the address as `clientAddress`
    /// resolves it); more answer 429, so one client cannot hold every
    /// `maxConcurrentRequests` permit. 0: no cap.
    pub max_concurrent_requests_per_client: usize,
    /// Minimum average rate of a request body, in bytes per second, after `bodyRateGrace`: a
    /// body that has not delivered `minBodyRate × (elapsed − bodyRateGrace)` bytes is cut with
    /// 408, whether it is buffered or streamed to the upstream. 0: no minimum.
    pub min_body_rate: u64,
    /// Time a body may take before `minBodyRate` applies.
    pub body_rate_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            max_query_parameters: 128,
            max_connections: None,
            max_connections_per_client: 256,
            max_concurrent_requests_per_client: 256,
            min_body_rate: 1024,
            body_rate_grace: Duration::from_secs(5),
        }
    }
}

/// How findings are grouped into incidents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// A session's findings separated by less than this belong to one incident.
    pub inactivity_window: Duration,
    /// Incidents kept in memory (oldest evicted first).
    pub max_incidents: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        Self {
            inactivity_window: Duration::from_secs(15 * 60),
            max_incidents: 1000,
        }
    }
}
