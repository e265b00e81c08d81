//! Semantic validation shared by the enforcer (at load and reload) and the operator's
//! validating webhook, so that admission and runtime never disagree.

use std::collections::HashSet;
use std::fmt;

use super::{EnforcerConfig, JwtAlgorithm, SequenceRuleConfig, SessionIdentifier, Within};
use crate::operation::OperationPattern;

/// Longest per-session history (and so the longest rule window in requests).
pub const MAX_HISTORY_REQUESTS: u32 = 64;
/// Longest window in time a rule may use.
pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One problem, with the path of the field that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// e.g. `rules[2].requires.after[0]`.
    pub path: String,
    pub message: String,
}

/// Every problem found (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    fn extend_prefixed(&mut self, prefix: &str, other: Self) {
        for e in other.0 {
            let path = if e.path.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{}", e.path)
            };
            self.0.push(ValidationError {
                path,
                message: e.message,
            });
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

fn check_operation(errors: &mut ValidationErrors, path: &str, text: &str) {
    if let Err(reason) = OperationPattern::parse(text) {
        errors.push(path, format!("invalid operation {text:?}: {reason}"));
    }
}

fn check_within(errors: &mut ValidationErrors, path: &str, within: &Within) {
    if within.requests == 0 || within.requests > MAX_HISTORY_REQUESTS {
        errors.push(
            format!("{path}.requests"),
            format!(
                "must be between 1 and {MAX_HISTORY_REQUESTS}, got {}",
                within.requests
            ),
        );
    }
    if within.duration.std().is_zero() || within.duration.std() > MAX_WINDOW {
        errors.push(
            format!("{path}.duration"),
            format!("must be between 1ms and 24h, got {}", within.duration),
        );
    }
}

/// Validates one sequence rule; error paths are relative to the rule (`requires.after[0]`).
pub fn validate_rule(rule: &SequenceRuleConfig) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let name_ok = !rule.name.is_empty()
        && rule.name.len() <= 253
        && rule
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !name_ok {
        errors.push(
            "name",
            format!(
                "{:?} must be 1-253 characters of letters, digits, '-', '_', '.', '/'",
                rule.name
            ),
        );
    }
    let kinds = [
        rule.requires.is_some(),
        rule.forbids.is_some(),
        rule.max_repeat.is_some(),
        rule.min_interval.is_some(),
    ];
    match kinds.iter().filter(|set| **set).count() {
        1 => {}
        0 => errors.push(
            "",
            "exactly one of requires, forbids, maxRepeat, minInterval must be set, found none",
        ),
        n => errors.push(
            "",
            format!(
                "exactly one of requires, forbids, maxRepeat, minInterval must be set, found {n}"
            ),
        ),
    }
    if let Some(r) = &rule.requires {
        check_operation(&mut errors, "requires.operation", &r.operation);
        if r.after.is_empty() || r.after.len() > 9 {
            errors.push(
                "requires.after",
                format!("must list 1 to 9 operations, got {}", r.after.len()),
            );
        }
        for (i, op) in r.after.iter().enumerate() {
            check_operation(&mut errors, &format!("requires.after[{i}]"), op);
        }
        check_within(&mut errors, "requires.within", &r.within);
        if r.within.requests > 0 && (r.after.len() as u64) > u64::from(r.within.requests) {
            errors.push(
                "requires.within.requests",
                format!(
                    "{} operations cannot fit in a window of {} requests",
                    r.after.len(),
                    r.within.requests
                ),
            );
        }
    }
    if let Some(r) = &rule.forbids {
        if r.sequence.len() < 2 || r.sequence.len() > 10 {
            errors.push(
                "forbids.sequence",
                format!("must list 2 to 10 operations, got {}", r.sequence.len()),
            );
        }
        for (i, op) in r.sequence.iter().enumerate() {
            check_operation(&mut errors, &format!("forbids.sequence[{i}]"), op);
        }
        check_within(&mut errors, "forbids.within", &r.within);
        if r.within.requests > 0 && (r.sequence.len() as u64) > u64::from(r.within.requests) + 1 {
            errors.push(
                "forbids.within.requests",
                format!(
                    "{} operations cannot fit in a window of {} requests",
                    r.sequence.len(),
                    r.within.requests
                ),
            );
        }
    }
    if let Some(r) = &rule.max_repeat {
        check_operation(&mut errors, "maxRepeat.operation", &r.operation);
        if r.count == 0 || r.count >= MAX_HISTORY_REQUESTS {
            errors.push(
                "maxRepeat.count",
                format!(
                    "must be between 1 and {}, got {}",
                    MAX_HISTORY_REQUESTS - 1,
                    r.count
                ),
            );
        }
    }
    if let Some(r) = &rule.min_interval {
        check_operation(&mut errors, "minInterval.from", &r.from);
        check_operation(&mut errors, "minInterval.to", &r.to);
        if r.duration.std().is_zero() || r.duration.std() > MAX_WINDOW {
            errors.push(
                "minInterval.duration",
                format!("must be between 1ms and 24h, got {}", r.duration),
            );
        }
    }
    errors.into_result()
}

fn check_identifier(errors: &mut ValidationErrors, path: &str, id: &SessionIdentifier) {
    let set = [
        id.jwt_claim.is_some(),
        id.header.is_some(),
        id.cookie.is_some(),
        id.query_param.is_some(),
        id.client_ip.is_some(),
    ];
    let count = set.iter().filter(|s| **s).count();
    if count != 1 {
        errors.push(
            path,
            format!("exactly one of jwtClaim, header, cookie, queryParam, clientIp must be set, found {count}"),
        );
    }
    let names = [
        (
            id.jwt_claim.as_ref().map(|j| j.header.as_str()),
            "jwtClaim.header",
        ),
        (
            id.jwt_claim.as_ref().map(|j| j.claim.as_str()),
            "jwtClaim.claim",
        ),
        (id.header.as_ref().map(|n| n.name.as_str()), "header.name"),
        (id.cookie.as_ref().map(|n| n.name.as_str()), "cookie.name"),
        (
            id.query_param.as_ref().map(|n| n.name.as_str()),
            "queryParam.name",
        ),
    ];
    for (value, field) in names {
        if value.is_some_and(str::is_empty) {
            errors.push(format!("{path}.{field}"), "must not be empty");
        }
    }
    for (header, field) in [
        (
            id.jwt_claim.as_ref().map(|j| j.header.as_str()),
            "jwtClaim.header",
        ),
        (id.header.as_ref().map(|n| n.name.as_str()), "header.name"),
    ] {
        if let Some(h) = header
            && !h.is_empty()
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            errors.push(
                format!("{path}.{field}"),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
}

/// Validates a whole config (every rule through [`validate_rule`], plus cross-field checks).
pub fn validate_config(config: &EnforcerConfig) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    match config.upstream.url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                errors.push(
                    "upstream.url",
                    "must be http://host:port without a path or query",
                );
            }
        }
        Ok(_) => errors.push(
            "upstream.url",
            format!(
                "{:?} must be an http:// URL with a host",
                config.upstream.url
            ),
        ),
        Err(e) => errors.push(
            "upstream.url",
            format!("{:?} is not a URL: {e}", config.upstream.url),
        ),
    }
    if config.upstream.timeout.std().is_zero() {
        errors.push("upstream.timeout", "must be greater than 0");
    }
    if config.admin.listen == config.listen && config.listen.port() != 0 {
        errors.push("admin.listen", "must differ from listen");
    }
    if config.admin.token.is_some() && config.admin.token_file.is_some() {
        errors.push("admin", "set at most one of token, tokenFile");
    }
    if config.session.identifiers.is_empty() {
        errors.push("session.identifiers", "must list at least one identifier");
    }
    for (i, id) in config.session.identifiers.iter().enumerate() {
        check_identifier(&mut errors, &format!("session.identifiers[{i}]"), id);
    }
    if config.session.max_sessions == 0 {
        errors.push("session.maxSessions", "must be at least 1");
    }
    let history = &config.session.history;
    if history.requests == 0 || history.requests > MAX_HISTORY_REQUESTS {
        errors.push(
            "session.history.requests",
            format!(
                "must be between 1 and {MAX_HISTORY_REQUESTS}, got {}",
                history.requests
            ),
        );
    }
    if history.duration.std().is_zero() || history.duration.std() > MAX_WINDOW {
        errors.push("session.history.duration", "must be between 1ms and 24h");
    }
    if config.session.without_valid_token == super::WithoutValidToken::ClientAddress
        && config.session.jwt_verification.is_none()
    {
        errors.push(
            "session.withoutValidToken",
            "ClientAddress needs jwtVerification (without it no token is ever valid)",
        );
    }
    if let Some(jwt) = &config.session.jwt_verification {
        if jwt.keys.is_empty() && jwt.jwks.is_none() {
            errors.push(
                "session.jwtVerification.keys",
                "must list at least one key (or set session.jwtVerification.jwks)",
            );
        }
        if let Some(jwks) = &jwt.jwks {
            validate_jwks(jwks, &mut errors);
        }
        for (i, key) in jwt.keys.iter().enumerate() {
            let path = format!("session.jwtVerification.keys[{i}]");
            let sources = [
                key.secret.is_some(),
                key.public_key_pem.is_some(),
                key.file.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                errors.push(
                    &path,
                    "exactly one of secret, publicKeyPem, file must be set",
                );
            }
            match key.algorithm {
                JwtAlgorithm::HS256 if key.public_key_pem.is_some() => errors.push(
                    format!("{path}.publicKeyPem"),
                    "HS256 takes a secret, not a public key",
                ),
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 if key.secret.is_some() => errors.push(
                    format!("{path}.secret"),
                    "RS256/ES256 take a public key, not a secret",
                ),
                _ => {}
            }
        }
    }
    for (field, message) in config.learning.problems() {
        errors.push(format!("learning.{field}"), message);
    }
    if let Some(peers) = &config.peers {
        for (field, message) in peers.problems() {
            errors.push(field, message);
        }
        if peers.listen.port() != 0
            && (peers.listen == config.listen || peers.listen == config.admin.listen)
        {
            errors.push("peers.listen", "must differ from listen and admin.listen");
        }
    }
    // The report section is checked with the rest so that a bad URL or a missing CA file is
    // rejected at load (and by the operator's webhook), not only when the client starts.
    if let Some(report) = &config.report
        && let Err(super::ReportConfigError { field, message }) = report.validate()
    {
        errors.push(field, message);
    }
    if config.operations.max_templates == 0 {
        errors.push("operations.maxTemplates", "must be at least 1");
    }
    if config.operations.max_values_per_position < 2 {
        errors.push("operations.maxValuesPerPosition", "must be at least 2");
    }
    if config.operations.max_segments == 0 || config.operations.max_segments > 64 {
        errors.push("operations.maxSegments", "must be between 1 and 64");
    }
    let mut names = HashSet::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let prefix = format!("rules[{i}]");
        if let Err(rule_errors) = validate_rule(rule) {
            errors.extend_prefixed(&prefix, rule_errors);
        }
        if !names.insert(rule.name.as_str()) {
            errors.push(
                format!("{prefix}.name"),
                format!("duplicate rule name {:?}", rule.name),
            );
        }
        let window = [
            rule.requires.as_ref().map(|r| &r.within),
            rule.forbids.as_ref().map(|r| &r.within),
        ];
        for (within, kind) in window.into_iter().zip(["requires", "forbids"]) {
            if let Some(within) = within {
                if within.requests > history.requests {
                    errors.push(
                        format!("{prefix}.{kind}.within.requests"),
                        format!("{} exceeds the session history of {} requests (session.history.requests)", within.requests, history.requests),
                    );
                }
                if within.duration > history.duration {
                    errors.push(
                        format!("{prefix}.{kind}.within.duration"),
                        format!(
                            "{} exceeds the session history of {} (session.history.duration)",
                            within.duration, history.duration
                        ),
                    );
                }
            }
        }
        if let Some(r) = &rule.max_repeat
            && r.count >= history.requests
        {
            errors.push(
                format!("{prefix}.maxRepeat.count"),
                format!(
                    "{} needs a history longer than session.history.requests ({})",
                    r.count, history.requests
                ),
            );
        }
        if let Some(r) = &rule.min_interval
            && r.duration > history.duration
        {
            errors.push(
                format!("{prefix}.minInterval.duration"),
                format!(
                    "{} exceeds the session history of {} (session.history.duration)",
                    r.duration, history.duration
                ),
            );
        }
    }
    for (i, limit) in config.rate_limits.iter().enumerate() {
        let prefix = format!("rateLimits[{i}]");
        check_operation(
            &mut errors,
            &format!("{prefix}.operation"),
            &limit.operation,
        );
        if limit.requests == 0 {
            errors.push(format!("{prefix}.requests"), "must be at least 1");
        }
        if limit.per.std().is_zero() || limit.per.std() > MAX_WINDOW {
            errors.push(format!("{prefix}.per"), "must be between 1ms and 24h");
        }
    }
    if config.rate_limits.len() > usize::from(u16::MAX) {
        errors.push("rateLimits", "too many rate limits");
    }
    if config.limits.max_concurrent_requests == 0 {
        errors.push("limits.maxConcurrentRequests", "must be at least 1");
    }
    if config.limits.max_query_parameters == 0 {
        errors.push("limits.maxQueryParameters", "must be at least 1");
    }
    if config.limits.header_read_timeout.std().is_zero() {
        errors.push("limits.headerReadTimeout", "must be greater than 0");
    }
    if config.limits.max_connections == Some(0) {
        errors.push(
            "limits.maxConnections",
            "must be at least 1 (omit it for the default)",
        );
    }
    if config.admin.max_connections == 0 {
        errors.push("admin.maxConnections", "must be at least 1");
    }
    if config.incidents.max_incidents == 0 {
        errors.push("incidents.maxIncidents", "must be at least 1");
    }
    errors.into_result()
}

/// Whether `authority` names a port that is not 1 to 65535.
fn bad_port(authority: &http::uri::Authority) -> bool {
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    // After an IPv6 literal's `]`, or the whole host otherwise.
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    after_host.contains(':') && authority.port_u16().is_none_or(|p| p == 0)
}

fn validate_jwks(jwks: &super::JwksConfig, errors: &mut ValidationErrors) {
    const PATH: &str = "session.jwtVerification.jwks";
    match (&jwks.file, &jwks.uri) {
        (Some(_), None) => {
            if jwks.ca_file.is_some() {
                errors.push(format!("{PATH}.caFile"), "only applies to uri");
            }
        }
        (None, Some(uri)) => match uri.parse::<http::Uri>() {
            // `http::Uri` accepts any digits as a port (and then reports none); every fetch
            // would fail.
            Ok(u) if u.authority().is_some_and(bad_port) => errors.push(
                format!("{PATH}.uri"),
                format!("invalid URL {uri:?}: the port must be 1 to 65535"),
            ),
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
            Ok(_) => errors.push(
                format!("{PATH}.uri"),
                format!("must be an https:// URL with a host, got {uri:?}"),
            ),
            Err(e) => errors.push(format!("{PATH}.uri"), format!("invalid URL {uri:?}: {e}")),
        },
        _ => errors.push(PATH, "exactly one of file, uri must be set"),
    }
    if let Some(every) = jwks.refresh_interval {
        let every = every.std();
        if every < std::time::Duration::from_secs(1)
            || every > std::time::Duration::from_secs(86_400)
        {
            errors.push(
                format!("{PATH}.refreshInterval"),
                "must be between 1s and 24h",
            );
        }
    }
}
