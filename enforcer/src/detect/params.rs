//! Turns one request into the parameter observations the model learns from and the detectors
//! check: path parameters, query keys, JSON body fields by path, headers and cookies; plus the
//! object identifiers it names, whether it carries credentials, and the identity it claims.

use super::request::RequestContext;
use crate::model::disclosure::{is_secret_name, is_secret_param, is_session_param};
use crate::model::hashing::stable_hash;
use crate::model::value::{ValueKind, json_facts, text_facts};
use crate::model::{Location, ParamObservation};

/// Most parameters taken from one request (the rest are ignored, and counted).
pub const MAX_PARAMS_PER_REQUEST: usize = 128;
/// Deepest JSON nesting followed.
pub const MAX_JSON_DEPTH: usize = 8;
/// Array elements looked at per array.
pub const MAX_ARRAY_ELEMENTS: usize = 16;
/// Longest value kept as text (for enums and sketches).
pub const MAX_VALUE_TEXT: usize = 256;
/// Longest parameter name kept.
pub const MAX_NAME_LEN: usize = 96;

/// Headers that vary per request by nature (or are secrets) and are never profiled.
const SKIPPED_HEADERS: [&str; 23] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-length",
    "host",
    "date",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
    "traceparent",
    "tracestate",
    "if-none-match",
    "if-modified-since",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

/// Field names that carry a secret used to authenticate.
const CREDENTIAL_NAMES: [&str; 11] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "pin",
    "otp",
    "totp",
    "secret",
    "credential",
    "passcode",
];

/// Field names that name the identity being authenticated.
const IDENTITY_NAMES: [&str; 8] = [
    "username", "user", "login", "email", "phone", "account", "customer", "userid",
];

/// Field-name fragments that make a value an object reference.
const OBJECT_NAME_PARTS: [&str; 12] = [
    "id", "account", "user", "customer", "phone", "email", "iban", "msisdn", "card", "order",
    "payee", "number",
];

/// What one request offers to the model and the detectors.
#[derive(Debug, Default)]
pub struct RequestParams {
    /// Path, query and body parameters (per operation).
    pub params: Vec<ParamObservation>,
    /// Headers and cookies (profiled across operations).
    pub headers: Vec<ParamObservation>,
    /// Hashes of the object identifiers the request names.
    pub object_ids: Vec<u64>,
    pub has_credentials: bool,
    /// Hash of the identity a credential-carrying request claims.
    pub identity: Option<u64>,
    /// Parameters beyond the per-request cap.
    pub truncated: usize,
}

fn last_segment(name: &str) -> &str {
    name.rsplit(['.', '['])
        .next()
        .unwrap_or(name)
        .trim_end_matches(']')
}

/// Normalized names up to this length are built on the stack (longer ones are rare).
const MAX_NORMALIZED: usize = 48;

/// The last segment of a parameter name, alphanumerics only, lower-cased: `body.new_Password`
/// → `newpassword`. Written into a stack buffer (these checks run for every parameter of every
/// request); `None` when longer than [`MAX_NORMALIZED`].
fn normalized(name: &str, buf: &mut [u8; MAX_NORMALIZED]) -> Option<usize> {
    let mut len = 0;
    for b in last_segment(name).bytes().filter(u8::is_ascii_alphanumeric) {
        *buf.get_mut(len)? = b.to_ascii_lowercase();
        len += 1;
    }
    Some(len)
}

/// Runs `check` on the normalized name (allocating only for names longer than the buffer).
fn with_normalized(name: &str, check: impl FnOnce(&str) -> bool) -> bool {
    let mut buf = [0u8; MAX_NORMALIZED];
    let Some(len) = normalized(name, &mut buf) else {
        let long: String = last_segment(name)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        return check(&long);
    };
    // Only ASCII alphanumerics were written: always valid UTF-8.
    buf.get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .is_some_and(check)
}

fn is_credential_name(name: &str) -> bool {
    with_normalized(name, |n| {
        CREDENTIAL_NAMES.iter().any(|c| {
            n == *c
                || n.ends_with(c)
                    && (n.starts_with("new")
                        || n.starts_with("old")
                        || n.starts_with("current")
                        || n.starts_with("user"))
        })
    })
}

fn is_identity_name(name: &str) -> bool {
    with_normalized(name, |n| {
        IDENTITY_NAMES.iter().any(|c| {
            n.strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest == "name" || rest == "id")
        })
    })
}

fn is_object_name(name: &str) -> bool {
    with_normalized(name, |n| {
        if matches!(
            n,
            "page"
                | "limit"
                | "offset"
                | "size"
                | "sort"
                | "order"
                | "cursor"
                | "amount"
                | "currency"
        ) {
            return false;
        }
        OBJECT_NAME_PARTS.iter().any(|part| {
            if *part == "id" {
                n == "id" || n.ends_with("id") || n.ends_with("ids")
            } else {
                n.contains(part)
            }
        })
    })
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_VALUE_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_VALUE_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn bounded_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1 + name.len().min(MAX_NAME_LEN));
    out.push_str(prefix);
    out.push('.');
    for c in name.chars().take(MAX_NAME_LEN) {
        out.push(c);
    }
    out
}

impl RequestParams {
    fn push(&mut self, obs: ParamObservation) {
        if self.params.len() + self.headers.len() >= MAX_PARAMS_PER_REQUEST {
            self.truncated += 1;
            return;
        }
        match obs.location {
            Location::Header | Location::Cookie => self.headers.push(obs),
            _ => self.params.push(obs),
        }
    }

    fn consider_object(&mut self, location: Location, name: &str, kind: ValueKind, text: &str) {
        let by_kind = matches!(kind, ValueKind::Uuid | ValueKind::Email | ValueKind::Phone);
        let by_name = is_object_name(name)
            && !matches!(
                kind,
                ValueKind::Boolean
                    | ValueKind::Null
                    | ValueKind::Object
                    | ValueKind::Array
                    | ValueKind::EmptyString
            )
            && text.len() <= 128
            && !text.contains(char::is_whitespace);
        if location == Location::Path || by_kind || by_name {
            self.object_ids.push(stable_hash(text.as_bytes()));
        }
    }

    fn walk_json(&mut self, name: &str, value: &serde_json::Value, depth: usize) {
        let facts = json_facts(value);
        let kind = facts.kind;
        let text = match value {
            serde_json::Value::String(s) => truncate(s),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        if is_credential_name(name) && matches!(value, serde_json::Value::String(_)) {
            self.has_credentials = true;
            // A secret is never profiled beyond its presence and type: no value set, no sketch.
            self.push(ParamObservation::new(
                name.to_owned(),
                Location::Body,
                facts,
                String::new(),
                true,
            ));
            return;
        }
        if is_identity_name(name) && !text.is_empty() && self.identity.is_none() {
            self.identity = Some(stable_hash(text.to_ascii_lowercase().as_bytes()));
        }
        if !matches!(kind, ValueKind::Object | ValueKind::Array) {
            self.consider_object(Location::Body, name, kind, &text);
        }
        self.push(ParamObservation::new(
            name.to_owned(),
            Location::Body,
            facts,
            text,
            is_secret_name(name),
        ));
        if depth >= MAX_JSON_DEPTH {
            return;
        }
        match value {
            serde_json::Value::Object(fields) => {
                for (key, child) in fields.iter().take(MAX_PARAMS_PER_REQUEST) {
                    let child_name = bounded_name(name, key);
                    self.walk_json(&child_name, child, depth + 1);
                }
            }
            serde_json::Value::Array(items) => {
                let child_name = format!("{name}[]");
                for child in items.iter().take(MAX_ARRAY_ELEMENTS) {
                    self.walk_json(&child_name, child, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// Marks the parameters the session config names (lower-case header, cookie and query
    /// names) as secret: their values identify sessions and are not kept.
    pub fn hide_session_identifiers(&mut self, session_names: &[String]) {
        if session_names.is_empty() {
            return;
        }
        for obs in self.params.iter_mut().chain(self.headers.iter_mut()) {
            // Every observation is made with `secret` set as `is_secret_param` without session
            // names judges it (`from_request`): only the session names are left to check.
            if !obs.secret && is_session_param(obs.location, &obs.name, session_names) {
                obs.secret = true;
                obs.value.clear();
            }
        }
    }

    /// Extracts everything from one request.
    pub fn from_request(ctx: &RequestContext<'_>) -> Self {
        let mut out = Self::default();
        for (name, value) in ctx.path_params {
            let facts = text_facts(value);
            let kind = facts.kind;
            let obs = ParamObservation::new(
                bounded_name("path", name),
                Location::Path,
                facts,
                truncate(value),
                false,
            );
            out.consider_object(Location::Path, name, kind, value);
            out.push(obs);
        }
        for (key, value) in ctx.query {
            let name = bounded_name("query", key);
            let facts = text_facts(value);
            if is_credential_name(key) {
                out.has_credentials = true;
                out.push(ParamObservation::new(
                    name,
                    Location::Query,
                    facts,
                    String::new(),
                    true,
                ));
                continue;
            }
            if is_identity_name(key) && out.identity.is_none() && !value.is_empty() {
                out.identity = Some(stable_hash(value.to_ascii_lowercase().as_bytes()));
            }
            out.consider_object(Location::Query, key, facts.kind, value);
            let secret = is_secret_name(&name);
            out.push(ParamObservation::new(
                name,
                Location::Query,
                facts,
                truncate(value),
                secret,
            ));
        }
        if let Some(body) = ctx.body {
            match body {
                serde_json::Value::Object(fields) => {
                    for (key, child) in fields.iter().take(MAX_PARAMS_PER_REQUEST) {
                        let name = bounded_name("body", key);
                        out.walk_json(&name, child, 1);
                    }
                }
                other => out.walk_json("body", other, 1),
            }
        }
        if out.has_credentials {
            // On a login, the identity fields are not objects being enumerated.
            out.object_ids.clear();
        }
        for (name, value) in ctx.headers {
            let header = name.as_str();
            if SKIPPED_HEADERS.contains(&header) {
                continue;
            }
            let text = String::from_utf8_lossy(value.as_bytes());
            let facts = text_facts(&text);
            let name = bounded_name("header", header);
            let secret = is_secret_param(Location::Header, &name, &[]);
            out.push(ParamObservation::new(
                name,
                Location::Header,
                facts,
                truncate(&text),
                secret,
            ));
        }
        for cookie_header in ctx.headers.get_all(http::header::COOKIE) {
            let text = String::from_utf8_lossy(cookie_header.as_bytes());
            for pair in text.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                let facts = text_facts(value);
                // Cookies carry sessions and credentials: never a value, only facts.
                out.push(ParamObservation::new(
                    bounded_name("cookie", name.trim()),
                    Location::Cookie,
                    facts,
                    String::new(),
                    true,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_credential_name("body.password"));
        assert!(is_credential_name("body.newPassword"));
        assert!(!is_credential_name("body.passenger"));
        assert!(is_identity_name("body.username"));
        assert!(is_object_name("body.fromAccount"));
        assert!(is_object_name("query.accountId"));
        assert!(is_object_name("query.phone"));
        assert!(!is_object_name("query.page"));
        assert!(!is_object_name("body.amount"));
        assert!(!is_object_name("body.memo"));
    }
}
