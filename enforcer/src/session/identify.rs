//! Naming the session of a request: the first configured identifier that yields a value.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use http::HeaderName;

use super::SessionSource;
use super::jwks::EARLY_REFRESH_WAIT;
use super::jwt::{JwtConfigError, JwtVerifier, unverified_claims};
use super::token_cache::{Cached, VerifiedTokens, capacity_for};
use crate::config::{OnInvalidToken, SessionConfig, WithoutValidToken};

/// Session values longer than this are replaced by a hash (keys stay small).
const MAX_VALUE_LEN: usize = 128;

#[derive(Debug)]
enum Identifier {
    Jwt { header: HeaderName, claim: String },
    Header { header: HeaderName },
    Cookie { name: String },
    Query { name: String },
    ClientIp,
}

/// Why a request is refused before it has a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A token failed verification and the policy is `Reject` (401).
    InvalidToken(String),
    /// A credential header came more than once (400): the enforcer and the app could each
    /// read a different one, so the token the enforcer checked need not be the one the app
    /// acts on.
    RepeatedHeader(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidToken(_) => 401,
            Self::RepeatedHeader(_) => 400,
        }
    }

    /// Title and detail of the problem answer.
    pub fn problem(&self) -> (&'static str, String) {
        match self {
            Self::InvalidToken(_) => (
                "Invalid session token",
                "the bearer token could not be verified".to_owned(),
            ),
            Self::RepeatedHeader(name) => (
                "Bad request",
                format!("the {name} header may appear only once"),
            ),
        }
    }

    /// For the log.
    pub fn reason(&self) -> &str {
        match self {
            Self::InvalidToken(reason) => reason,
            Self::RepeatedHeader(_) => "repeated credential header",
        }
    }
}

/// The session a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identified {
    pub source: SessionSource,
    /// A token was presented and failed verification (and was ignored: `FallThrough`).
    pub invalid_token: bool,
}

/// The compiled identifier list.
#[derive(Debug)]
pub struct SessionIdentifiers {
    list: Vec<Identifier>,
    verifier: Option<JwtVerifier>,
    on_invalid: OnInvalidToken,
    without_valid_token: WithoutValidToken,
    /// Headers that may appear at most once: `Authorization` and every JWT identifier's.
    single_headers: Vec<HeaderName>,
    /// Hashes over-long values (keyed per process so that nobody can aim at collisions).
    hasher: std::collections::hash_map::RandomState,
    /// Tokens verified already (bounded; see `token_cache`).
    tokens: VerifiedTokens,
    /// Clock skew tolerated on `exp`, seconds (the verifier's leeway).
    leeway_s: u64,
}

impl SessionIdentifiers {
    pub fn new(config: &SessionConfig) -> Result<Self, JwtConfigError> {
        let mut list = Vec::with_capacity(config.identifiers.len() + 1);
        for id in &config.identifiers {
            if let Some(j) = &id.jwt_claim {
                if let Ok(header) = HeaderName::from_bytes(j.header.as_bytes()) {
                    list.push(Identifier::Jwt {
                        header,
                        claim: j.claim.clone(),
                    });
                }
            } else if let Some(h) = &id.header {
                if let Ok(header) = HeaderName::from_bytes(h.name.as_bytes()) {
                    list.push(Identifier::Header { header });
                }
            } else if let Some(c) = &id.cookie {
                list.push(Identifier::Cookie {
                    name: c.name.clone(),
                });
            } else if let Some(q) = &id.query_param {
                list.push(Identifier::Query {
                    name: q.name.clone(),
                });
            } else if id.client_ip.is_some() {
                list.push(Identifier::ClientIp);
            }
        }
        let verifier = config
            .jwt_verification
            .as_ref()
            .map(JwtVerifier::new)
            .transpose()?;
        let on_invalid = config
            .jwt_verification
            .as_ref()
            .map(|j| j.on_invalid)
            .unwrap_or_default();
        let without_valid_token = config.without_valid_token;
        let mut single_headers = vec![http::header::AUTHORIZATION];
        for id in &list {
            if let Identifier::Jwt { header, .. } = id
                && !single_headers.contains(header)
            {
                single_headers.push(header.clone());
            }
        }
        Ok(Self {
            list,
            verifier,
            on_invalid,
            without_valid_token,
            single_headers,
            hasher: std::collections::hash_map::RandomState::new(),
            tokens: VerifiedTokens::new(capacity_for(config.max_sessions)),
            leeway_s: config
                .jwt_verification
                .as_ref()
                .map_or(0, |j| j.leeway.std().as_secs()),
        })
    }

    /// Keys of the current JWKS (0 without one), for the metrics.
    pub fn jwks_keys(&self) -> usize {
        self.verifier.as_ref().map_or(0, JwtVerifier::jwks_keys)
    }

    /// Whether a session named by `source` was named by a verified token.
    pub fn verifies(&self, source: SessionSource) -> bool {
        source == SessionSource::Jwt && self.verifier.is_some()
    }

    /// Writes the session key into `out` (e.g. `jwt:sub=4411`, `ip:10.0.0.7`). The client
    /// address is always the last resort. With verification and `withoutValidToken:
    /// ClientAddress`, a request without a valid token is named by its client address.
    pub fn identify(
        &self,
        headers: &http::HeaderMap,
        query: &[(Cow<'_, str>, Cow<'_, str>)],
        client: IpAddr,
        out: &mut String,
    ) -> Result<Identified, Refusal> {
        out.clear();
        if let Some(repeated) = self
            .single_headers
            .iter()
            .find(|h| headers.get_all(*h).iter().nth(1).is_some())
        {
            return Err(Refusal::RepeatedHeader(repeated.as_str().to_owned()));
        }
        let mut invalid_token = false;
        let by_address =
            self.verifier.is_some() && self.without_valid_token == WithoutValidToken::ClientAddress;
        for id in &self.list {
            let source = match id {
                Identifier::Jwt { header, claim } => {
                    match self.jwt_claim(headers, header, claim, out)? {
                        JwtOutcome::Named => Some(SessionSource::Jwt),
                        JwtOutcome::Invalid => {
                            invalid_token = true;
                            None
                        }
                        JwtOutcome::Absent => None,
                    }
                }
                Identifier::ClientIp => break,
                // Only a valid token may name the session; everything else is the address.
                _ if by_address => None,
                Identifier::Header { header } => headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(|v| {
                        self.write_key(out, "header", header.as_str(), v);
                        SessionSource::Header
                    }),
                Identifier::Cookie { name } => find_cookie(headers, name).map(|v| {
                    self.write_key(out, "cookie", name, v);
                    SessionSource::Cookie
                }),
                Identifier::Query { name } => query
                    .iter()
                    .find(|(k, v)| k == name && !v.is_empty())
                    .map(|(_, v)| {
                        self.write_key(out, "query", name, v);
                        SessionSource::Query
                    }),
            };
            if let Some(source) = source {
                return Ok(Identified {
                    source,
                    invalid_token,
                });
            }
        }
        out.clear();
        let _ = write!(out, "ip:{client}");
        Ok(Identified {
            source: SessionSource::ClientIp,
            invalid_token,
        })
    }

    /// [`Self::identify`], except that a token refused because the JWKS lacks the key it names
    /// (a key published since the last fetch) waits for the early refresh it asks for, until
    /// [`EARLY_REFRESH_WAIT`] after the request `arrived` at most (so that the phases that
    /// identify one request, routing and handling, wait that long in all), and is then
    /// verified against the refreshed set. Requests with a valid token, without one, or with
    /// one refused for another reason never wait.
    pub async fn identify_waiting(
        &self,
        headers: &http::HeaderMap,
        query: &[(Cow<'_, str>, Cow<'_, str>)],
        client: IpAddr,
        out: &mut String,
        arrived: std::time::Instant,
    ) -> Result<Identified, Refusal> {
        let Some(verifier) = &self.verifier else {
            return self.identify(headers, query, client, out);
        };
        let epoch = verifier.epoch();
        let first = self.identify(headers, query, client, out);
        let refused = match &first {
            Ok(identified) => identified.invalid_token,
            Err(refusal) => matches!(refusal, Refusal::InvalidToken(_)),
        };
        if !refused {
            return first;
        }
        // The keys may have changed since the token was verified (a refresh completed
        // meanwhile): then it is verified again without waiting.
        let mut again = verifier.epoch() != epoch;
        let deadline = tokio::time::Instant::from_std(arrived + EARLY_REFRESH_WAIT);
        for id in &self.list {
            if again {
                break;
            }
            let Identifier::Jwt { header, .. } = id else {
                continue;
            };
            let Some(token) = headers.get(header).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let token = strip_bearer(token);
            again = !token.is_empty() && verifier.await_key_for(token, deadline).await;
        }
        if again {
            self.identify(headers, query, client, out)
        } else {
            first
        }
    }

    /// A JWT identifier: the claim named into `out`, or why not.
    fn jwt_claim(
        &self,
        headers: &http::HeaderMap,
        header: &HeaderName,
        claim: &str,
        out: &mut String,
    ) -> Result<JwtOutcome, Refusal> {
        let Some(token) = headers.get(header).and_then(|v| v.to_str().ok()) else {
            return Ok(JwtOutcome::Absent);
        };
        let token = strip_bearer(token);
        if token.is_empty() {
            return Ok(JwtOutcome::Absent);
        }
        let now_s = crate::time::now_s();
        let epoch = self.verifier.as_ref().map_or(0, JwtVerifier::epoch);
        if self.verifier.is_some()
            && let Cached::Valid(value) = self.tokens.get(epoch, claim, token, now_s)
        {
            let Some(value) = value else {
                return Ok(JwtOutcome::Absent);
            };
            self.write_key(out, "jwt", claim, &value);
            return Ok(JwtOutcome::Named);
        }
        let claims = match &self.verifier {
            Some(v) => match v.verify(token) {
                Ok(c) => c,
                Err(reason) => {
                    return match self.on_invalid {
                        OnInvalidToken::Reject => Err(Refusal::InvalidToken(reason)),
                        OnInvalidToken::FallThrough => Ok(JwtOutcome::Invalid),
                    };
                }
            },
            None => match unverified_claims(token) {
                Some(c) => c,
                None => return Ok(JwtOutcome::Absent),
            },
        };
        let value = match claims.get(claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(Cow::Borrowed(s.as_str())),
            Some(serde_json::Value::Number(n)) => Some(Cow::Owned(n.to_string())),
            _ => None,
        };
        // Cached until `exp` (a non-integer `exp` is not cached at all).
        let exp = claims.get("exp");
        if self.verifier.is_some() && exp.is_none_or(|e| e.as_u64().is_some()) {
            let expires_s = exp
                .and_then(serde_json::Value::as_u64)
                .map(|exp| exp.saturating_add(self.leeway_s));
            self.tokens
                .insert(epoch, claim, token, value.as_deref(), expires_s, now_s);
        }
        let Some(value) = value else {
            return Ok(JwtOutcome::Absent);
        };
        self.write_key(out, "jwt", claim, &value);
        Ok(JwtOutcome::Named)
    }

    fn write_key(&self, out: &mut String, kind: &str, name: &str, value: &str) {
        out.push_str(kind);
        out.push(':');
        out.push_str(name);
        out.push('=');
        if value.len() <= MAX_VALUE_LEN && !value.chars().any(char::is_control) {
            out.push_str(value);
        } else {
            let mut h = self.hasher.build_hasher();
            h.write(value.as_bytes());
            let _ = write!(out, "#{:016x}", h.finish());
        }
    }
}

/// What a JWT identifier found.
enum JwtOutcome {
    /// The claim named the session (written into the key).
    Named,
    /// A token failed verification and is ignored (`FallThrough`).
    Invalid,
    /// No token, or no usable claim.
    Absent,
}

fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim_start(),
        _ => v,
    }
}

fn find_cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}
