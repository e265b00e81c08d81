//! `spec.session` and `spec.clientAddress`: how the enforcer tells sessions and clients apart.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ConfigMapKeyRef, SecretKeyRef};
use super::limits::{
    CLAIM_PATTERN, DURATION_MAX_LENGTH, DURATION_PATTERN, MAX_SESSION_IDENTIFIERS, NAME_MAX_LENGTH,
    QUERY_PARAM_PATTERN, TOKEN_PATTERN,
};

/// How requests are grouped into sessions. A session is the unit the enforcer learns from and
/// judges: sequence rules, volumes and object counts are all per session.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.jwtVerification) || !has(self.identifiers) || self.identifiers.exists(i, has(i.jwtClaim))")
        .message("session.jwtVerification requires at least one jwtClaim entry in session.identifiers")
        .field_path(".jwtVerification")
)]
pub struct SessionSpec {
    /// Ordered ways to find the session of a request; the first one that yields a value names
    /// the session. Each entry sets exactly one of `jwtClaim`, `header`, `cookie`, `queryParam`
    /// or `clientIp`; `clientIp` always yields a value, so it may only be the last entry.
    /// Default: the `sub` claim of the bearer token in `Authorization`, then the client IP.
    #[serde(default = "default_identifiers")]
    #[schemars(length(min = 1, max = MAX_SESSION_IDENTIFIERS))]
    #[x_kube(validation = Rule::new("self.filter(i, has(i.clientIp)).size() == 0 || (self.filter(i, has(i.clientIp)).size() == 1 && has(self[size(self) - 1].clientIp))")
        .message("session.identifiers: clientIp may appear once and only as the last entry, because it always yields a value and later entries would never be used"))]
    pub identifiers: Vec<SessionIdentifier>,

    /// A session without requests for this long is forgotten: its recent operations, counters
    /// and open incident are closed. A duration such as `30m` (units ms, s, m, h; 1s to 24h).
    /// Default `30m`.
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("session.idleTimeout must be between 1s and 24h"))]
    pub idle_timeout: String,

    /// Verify JWT signatures before a claim may name a session, so that a forged token cannot
    /// impersonate another user's session. Without it, claims are read from unverified tokens:
    /// fine for grouping traffic that an upstream gateway has already authenticated, unsafe
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_verification: Option<JwtVerificationSpec>,

    /// The recent operations kept per session for sequence rules: a rule's `within` window
    /// (requests and duration), a `maxRepeat` count and a `minInterval` duration must fit in
    /// it, else the rule is not accepted (`Accepted=False` naming the field). Default 10
    /// operations for 10 minutes; each kept operation costs 8 bytes per session.
    #[serde(default)]
    pub history: SessionHistorySpec,
}

/// `spec.session.history`: how much of each session's recent activity the enforcer keeps.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionHistorySpec {
    /// Operations kept per session, 1 to 64. Default 10.
    #[serde(default = "default_history_requests")]
    #[schemars(range(min = 1, max = 64))]
    pub requests: i32,

    /// How long an operation stays in the history. A duration such as `10m` (units ms, s, m,
    /// h; 1s to 24h). Default `10m`.
    #[serde(default = "default_history_duration")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("session.history.duration must be between 1s and 24h"))]
    pub duration: String,
}

impl Default for SessionHistorySpec {
    fn default() -> Self {
        Self {
            requests: default_history_requests(),
            duration: default_history_duration(),
        }
    }
}

fn default_history_requests() -> i32 {
    10
}

fn default_history_duration() -> String {
    "10m".to_owned()
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self {
            identifiers: default_identifiers(),
            idle_timeout: default_idle_timeout(),
            jwt_verification: None,
            history: SessionHistorySpec::default(),
        }
    }
}

fn default_identifiers() -> Vec<SessionIdentifier> {
    vec![
        SessionIdentifier {
            jwt_claim: Some(JwtClaimSource {
                header: default_authorization_header(),
                claim: "sub".to_owned(),
            }),
            ..SessionIdentifier::default()
        },
        SessionIdentifier {
            client_ip: Some(ClientIpSource {}),
            ..SessionIdentifier::default()
        },
    ]
}

fn default_idle_timeout() -> String {
    "30m".to_owned()
}

/// One way to find a session in a request. Exactly one field is set.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.jwtClaim) ? 1 : 0) + (has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.queryParam) ? 1 : 0) + (has(self.clientIp) ? 1 : 0) == 1")
        .message("session identifier: set exactly one of jwtClaim, header, cookie, queryParam or clientIp")
)]
pub struct SessionIdentifier {
    /// A claim of a JSON Web Token carried in a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_claim: Option<JwtClaimSource>,
    /// The value of a request header (for example an API key header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderSource>,
    /// The value of a cookie (for example a session cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieSource>,
    /// The value of a query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<QueryParamSource>,
    /// The client address (see `spec.clientAddress`): the last resort when a request carries no
    /// credential, so that anonymous traffic is still grouped per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpSource>,
}

/// A JWT claim as session key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtClaimSource {
    /// Request header that carries the token; a leading `Bearer ` is stripped. Default
    /// `Authorization`.
    #[serde(default = "default_authorization_header")]
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH), regex(pattern = TOKEN_PATTERN))]
    pub header: String,
    /// Claim whose value names the session, for example `sub` or `sid`; dots select a nested
    /// claim (`user.id`). A token without this claim yields no session and the next identifier
    /// is tried.
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH), regex(pattern = CLAIM_PATTERN))]
    pub claim: String,
}

fn default_authorization_header() -> String {
    "Authorization".to_owned()
}

/// A request header as session key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderSource {
    /// Header name, matched case-insensitively (for example `X-Api-Key`).
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH), regex(pattern = TOKEN_PATTERN))]
    pub name: String,
}

/// A cookie as session key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CookieSource {
    /// Cookie name, matched exactly (for example `SESSIONID`).
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH), regex(pattern = TOKEN_PATTERN))]
    pub name: String,
}

/// A query parameter as session key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamSource {
    /// Query parameter name, matched exactly (for example `api_key`).
    #[schemars(length(min = 1, max = NAME_MAX_LENGTH), regex(pattern = QUERY_PARAM_PATTERN))]
    pub name: String,
}

/// The client address as session key. It has no settings: `spec.clientAddress` says how the
/// address is found.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIpSource {}

/// Signature verification of the JWTs that `jwtClaim` identifiers read: fixed keys from a
/// Secret (`secretRef` and `algorithms`) or the keys an identity provider publishes as a JWK
/// Set (`jwks`), exactly one of them.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("has(self.secretRef) != has(self.jwks)")
        .message("session.jwtVerification: set exactly one of secretRef (fixed keys) or jwks (a published key set)")
        .field_path(".jwks"),
    validation = Rule::new("!has(self.secretRef) || (has(self.algorithms) && size(self.algorithms) >= 1)")
        .message("session.jwtVerification.algorithms: list the algorithms of the keys in secretRef")
        .field_path(".algorithms"),
    validation = Rule::new("!has(self.jwks) || has(self.secretRef) || !has(self.algorithms) || size(self.algorithms) == 0")
        .message("session.jwtVerification.algorithms: applies to secretRef only; with jwks each key's alg, kty and crv give its algorithm")
        .field_path(".algorithms"),
    validation = Rule::new("!has(self.algorithms) || !(self.algorithms.exists(a, a == 'HS256') && self.algorithms.exists(a, a != 'HS256'))")
        .message("session.jwtVerification.algorithms: HS256 (a shared secret) cannot be combined with RS256 or ES256 (public keys), because the Secret key holds one kind of key")
        .field_path(".algorithms")
)]
pub struct JwtVerificationSpec {
    /// Secret key with fixed verification keys: the shared secret for `HS256`, or one or more
    /// PEM-encoded public keys for `RS256` / `ES256`. Exactly one of `secretRef` and `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Signature algorithms of the keys in `secretRef` (required with it, not allowed with
    /// `jwks`); a token signed with any other algorithm (including `none`) is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub algorithms: Vec<JwtAlgorithm>,
    /// The identity provider's keys as a JWK Set (RFC 7517), as Keycloak, Dex, Auth0, Okta or
    /// Entra ID publish them, so that keys can be rotated without changing this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSpec>,
    /// Tokens must carry this `iss` claim (e.g. `https://idp.example.com/realms/shop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// Tokens must name this audience in their `aud` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// What to do with a request whose token is present but invalid (bad signature, wrong
    /// algorithm, unknown key, expired, not yet valid, wrong issuer or audience): `Reject`
    /// answers 401 without forwarding it, `FallThrough` ignores the token and tries the next
    /// identifier. Default `Reject`.
    #[serde(default)]
    pub on_invalid: InvalidTokenPolicy,
    /// Whether a token without an `exp` claim is invalid. `exp` and `nbf` are always checked
    /// when present. Default `true`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
}

/// Where the JWK Set comes from: exactly one of `configMapKeyRef`, `secretKeyRef` (a document
/// mounted into the enforcer pods and read again when it changes) or `uri` (fetched by the
/// enforcers over HTTPS).
///
/// Keys are selected by the token's `kid`; a key's `alg` (or else its `kty` and `crv`) gives
/// the algorithms it verifies: RS256/RS384/RS512, PS256/PS384/PS512, ES256, ES384, EdDSA.
/// With `uri`, a fetch that fails or returns a document that is not a usable JWKS (over 1 MiB
/// or 100 keys) keeps the last good keys; a token naming an unknown `kid` makes the enforcer
/// fetch early, at most once per 30 s.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.configMapKeyRef) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1")
        .message("session.jwtVerification.jwks: set exactly one of configMapKeyRef, secretKeyRef or uri"),
    validation = Rule::new("!has(self.caConfigMapKeyRef) || has(self.uri)")
        .message("session.jwtVerification.jwks.caConfigMapKeyRef applies only to uri")
        .field_path(".caConfigMapKeyRef")
)]
pub struct JwksSpec {
    /// A ConfigMap key holding the JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    /// A Secret key holding the JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// The `https://` URL of the JWKS (the provider's `jwks_uri`, e.g.
    /// `https://keycloak.example.com/realms/shop/protocol/openid-connect/certs`), verified with
    /// the system's CA certificates and `caConfigMapKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 9, max = 2048),
        regex(pattern = r"^https://[^\s/?#]+(/[^\s]*)?$")
    )]
    #[x_kube(validation = Rule::new("self.startsWith('https://')")
        .message("session.jwtVerification.jwks.uri must be an https:// URL"))]
    pub uri: Option<String>,
    /// How often the document is fetched (`uri`, default `5m`) or checked for changes (a
    /// mounted key, default `5s`). A duration between 1s and 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("session.jwtVerification.jwks.refreshInterval must be between 1s and 24h"))]
    pub refresh_interval: Option<String>,
    /// A ConfigMap key with PEM CA certificates trusted for `uri` in addition to the system's
    /// (an identity provider behind a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_key_ref: Option<ConfigMapKeyRef>,
}

fn default_true() -> bool {
    true
}

/// A JWT signature algorithm.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256 and an EC public key.
    #[serde(rename = "ES256")]
    Es256,
}

/// What happens to a request whose JWT fails verification.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidTokenPolicy {
    /// Answer 401 without forwarding the request (in every mode, since a forged token is never
    /// benign).
    #[default]
    Reject,
    /// Ignore the token and try the next session identifier.
    FallThrough,
}

/// How the enforcer finds the client's address.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.source) || self.source != 'XForwardedFor' || (has(self.trustedHops) && self.trustedHops >= 1)")
        .message("clientAddress.trustedHops must be at least 1 when source is XForwardedFor")
        .field_path(".trustedHops"),
    validation = Rule::new("!has(self.trustedHops) || self.trustedHops == 0 || (has(self.source) && self.source == 'XForwardedFor')")
        .message("clientAddress.trustedHops applies only when source is XForwardedFor")
        .field_path(".trustedHops")
)]
pub struct ClientAddressSpec {
    /// Where the address comes from: `Socket` (the TCP peer, right when nothing proxies in
    /// front of the enforcers) or `XForwardedFor` (the header, trusting `trustedHops`
    /// proxies). Default `Socket`.
    #[serde(default)]
    pub source: ClientAddressSource,
    /// With `XForwardedFor`: how many proxies in front of the enforcer append to
    /// `X-Forwarded-For`; the client is the entry that many places from the right, so that a
    /// client cannot spoof its address by sending the header itself. 0 with `Socket`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_hops: i32,
}

/// Source of the client address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAddressSource {
    /// The peer address of the TCP connection (right when nothing proxies in front).
    #[default]
    Socket,
    /// The `X-Forwarded-For` header, trusting `trustedHops` proxies.
    XForwardedFor,
}
