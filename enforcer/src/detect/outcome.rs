//! Outcomes read from responses, not only from status codes.
//!
//! Many APIs answer a failed login, a missing object or a denied action with 200 and an error
//! body. The proxy hands the analyzer the response body of the operations it asks for
//! ([`wants`]) when the whole body is already in memory and small ([`MAX_READ_BYTES`]): reading
//! it never delays the response. [`Signals`] is what one answer says (its status, whether its
//! body carries an error marker, whether it grants a credential: a `Set-Cookie` or a token or
//! session field); the model counts the signals per operation (`OperationStats::outcomes`),
//! and [`classify`] decides from both whether an answer is a failure:
//!
//! - 401/403 are authentication failures and 404 is not-found, as before;
//! - a 2xx/3xx answer whose body says it failed (an `error`/`errors` field, a `status`/`result`
//!   of `fail`/`error`/…, `success: false`) and grants nothing is a failure — trusted once the
//!   operation has at least [`MIN_SUPPORT`] read answers and such answers are a minority of
//!   them (an API that wraps every answer in an error envelope says nothing by it);
//! - on an operation whose successful answers are learned to grant a credential (at least
//!   [`MIN_SUPPORT`] of them, and most of its read 2xx answers), a 2xx answer that grants none
//!   is a failure even without an error marker.
//!
//! Only the top level of a JSON object body is looked at, without building a tree: key names
//! and short string or boolean values, everything else skipped.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::model::endpoint::MIN_OUTCOME_SUPPORT;
use crate::model::{OperationStats, OutcomeCounts};

/// Largest response body read (bodies beyond it, or not yet in memory, give signals from the
/// status and headers only).
pub const MAX_READ_BYTES: usize = 16 * 1024;
/// Read answers an operation needs before its learned outcome shape is trusted.
pub const MIN_SUPPORT: u64 = MIN_OUTCOME_SUPPORT;

/// What one answer says about its outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub status: u16,
    /// The body was read as a JSON object.
    pub read: bool,
    /// The body says the request failed.
    pub error_marker: bool,
    /// The answer grants a credential (a `Set-Cookie`, or a token or session field).
    pub credential: bool,
}

impl Signals {
    /// Reads the signals of one answer; `body` only when it was in memory and small.
    pub fn read(status: u16, set_cookie: bool, body: Option<&[u8]>) -> Self {
        let mut signals = Self {
            status,
            credential: set_cookie,
            ..Self::default()
        };
        match body {
            // A complete empty body (a 204, a redirect) was read too: it says nothing more.
            Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => signals.read = true,
            Some(bytes) => {
                if let Some(top) = TopLevel::parse(bytes) {
                    signals.read = true;
                    signals.error_marker = top.error_marker;
                    signals.credential |= top.credential;
                }
            }
            None => {}
        }
        signals
    }

    pub fn success_status(&self) -> bool {
        (200..400).contains(&self.status)
    }
}

/// Why an answer counts as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401/403.
    Denied,
    /// 404.
    NotFound,
    /// A 2xx/3xx answer whose body says it failed.
    ErrorBody,
    /// A 2xx/3xx answer without the credential the operation's successful answers grant.
    NoCredential,
}

impl Failure {
    /// Read from the body rather than the status.
    pub fn from_body(self) -> bool {
        matches!(self, Self::ErrorBody | Self::NoCredential)
    }
}

/// Whether the learned outcome counts make the error marker of a 2xx answer credible.
fn error_marker_credible(o: &OutcomeCounts) -> bool {
    o.read >= MIN_SUPPORT && o.error_answers.saturating_mul(2) < o.read
}

/// Whether the operation's successful answers are learned to grant a credential.
pub fn grants_credentials(o: &OutcomeCounts) -> bool {
    o.grants_credentials()
}

/// The failure an answer shows, judged against what the operation's answers were learned to
/// look like (`stats` is `None` for an operation the model does not know: status only).
pub fn classify(signals: &Signals, stats: Option<&OperationStats>) -> Option<Failure> {
    match signals.status {
        401 | 403 => return Some(Failure::Denied),
        404 => return Some(Failure::NotFound),
        _ => {}
    }
    if !signals.success_status() || !signals.read || signals.credential {
        return None;
    }
    let o = &stats?.outcomes;
    if signals.error_marker && error_marker_credible(o) {
        return Some(Failure::ErrorBody);
    }
    if grants_credentials(o) {
        return Some(Failure::NoCredential);
    }
    None
}

/// Plain-language account of what the operation's answers were learned to look like.
pub fn describe(o: &OutcomeCounts) -> String {
    let mut parts = Vec::new();
    if grants_credentials(o) {
        parts.push(format!(
            "{} of {} read answers granted a credential",
            o.credential_answers, o.read
        ));
    }
    if o.error_answers > 0 {
        parts.push(format!(
            "{} of {} said in the body that they failed",
            o.error_answers, o.read
        ));
    }
    parts.join("; ")
}

/// Whether the proxy should hand the analyzer this operation's response body: operations that
/// authenticate, and those looked up by object identifiers (not-found enumeration).
pub fn wants(stats: &OperationStats) -> bool {
    stats.is_auth_like() || stats.object_lookups > 0
}

/// Keys whose presence (with a value that is not null/false/empty) means an error.
const ERROR_KEYS: [&str; 4] = ["error", "errors", "fault", "exception"];
/// Keys whose string value tells the outcome.
const OUTCOME_KEYS: [&str; 5] = ["status", "result", "outcome", "state", "code"];
/// Outcome values that mean failure (lower-cased).
const FAILURE_VALUES: [&str; 11] = [
    "fail",
    "failed",
    "failure",
    "error",
    "denied",
    "invalid",
    "unauthorized",
    "unauthorised",
    "forbidden",
    "not_found",
    "rejected",
];
/// Keys whose boolean value tells success.
const SUCCESS_KEYS: [&str; 3] = ["success", "ok", "succeeded"];
/// Key fragments of a credential field (lower-cased).
const CREDENTIAL_FRAGMENTS: [&str; 4] = ["token", "session", "jwt", "bearer"];

/// Shortest string value taken for a credential.
const MIN_CREDENTIAL_LEN: usize = 16;

/// The top level of a JSON object body, as far as outcomes go.
#[derive(Debug, Default)]
struct TopLevel {
    error_marker: bool,
    credential: bool,
}

impl TopLevel {
    fn parse(body: &[u8]) -> Option<Self> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' || body.len() > MAX_READ_BYTES {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_map(TopVisitor).ok()
    }
}

/// A top-level value, kept only when short and scalar.
#[derive(Debug)]
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
    /// Null, an empty array or object.
    Empty,
    Other,
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Empty)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Empty)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut any = false;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            any = true;
        }
        Ok(if any { Scalar::Other } else { Scalar::Empty })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut any = false;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            any = true;
        }
        Ok(if any { Scalar::Other } else { Scalar::Empty })
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut top = TopLevel::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value: Scalar<'de> = map.next_value()?;
            judge_field(&key, &value, &mut top);
        }
        Ok(top)
    }
}

fn judge_field(key: &str, value: &Scalar<'_>, top: &mut TopLevel) {
    let is = |names: &[&str]| names.iter().any(|n| key.eq_ignore_ascii_case(n));
    match value {
        Scalar::Empty | Scalar::Bool(false) if is(&ERROR_KEYS) => {}
        _ if is(&ERROR_KEYS) => top.error_marker = true,
        Scalar::Bool(ok) if is(&SUCCESS_KEYS) => top.error_marker |= !ok,
        Scalar::Text(text) if is(&OUTCOME_KEYS) => {
            let text = text.trim();
            if FAILURE_VALUES.iter().any(|v| text.eq_ignore_ascii_case(v)) {
                top.error_marker = true;
            }
        }
        Scalar::Text(text) if text.len() >= MIN_CREDENTIAL_LEN && credential_key(key) => {
            top.credential = true;
        }
        _ => {}
    }
}

fn credential_key(key: &str) -> bool {
    // Key names are short; longer ones are not credential fields.
    if key.len() > 64 {
        return false;
    }
    let mut lower = [0u8; 64];
    let Some(buf) = lower.get_mut(..key.len()) else {
        return false;
    };
    for (d, s) in buf.iter_mut().zip(key.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    CREDENTIAL_FRAGMENTS
        .iter()
        .any(|f| buf.windows(f.len()).any(|w| w == f.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(status: u16, body: &str) -> Signals {
        Signals::read(status, false, Some(body.as_bytes()))
    }

    #[test]
    fn reads_error_markers_and_credentials() {
        let s = signals(
            200,
            r#"{"status":"fail","message":"Password is not correct."}"#,
        );
        assert!(s.read && s.error_marker && !s.credential);
        let s = signals(
            200,
            r#"{"auth_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig","status":"success"}"#,
        );
        assert!(s.read && !s.error_marker && s.credential);
        let s = signals(200, r#"{"error":{"code":17,"text":"no"}}"#);
        assert!(s.error_marker);
        let s = signals(200, r#"{"error":null,"data":[1,2]}"#);
        assert!(!s.error_marker, "a null error field is no error");
        let s = signals(200, r#"{"success":false}"#);
        assert!(s.error_marker);
        let s = signals(200, r#"{"sessionId":"short"}"#);
        assert!(!s.credential, "too short for a credential");
        let s = signals(200, r#"{"username":"tokenizer-fan-2024-x","email":"a@b"}"#);
        assert!(!s.credential, "a token-like value under an unrelated key");
        // Not an object, not JSON, too large: no body signals.
        assert!(!signals(200, "[1,2]").read);
        assert!(!signals(200, "<html>").read);
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_READ_BYTES));
        assert!(!signals(200, &big).read);
        // Set-Cookie grants a credential whatever the body.
        assert!(Signals::read(200, true, None).credential);
    }

    fn stats(read: u64, errors: u64, credentials: u64) -> OperationStats {
        let mut s = OperationStats::new("POST /login", 1);
        s.outcomes = OutcomeCounts {
            read,
            error_answers: errors,
            credential_answers: credentials,
        };
        s
    }

    #[test]
    fn classification_needs_learned_support() {
        let fail = signals(200, r#"{"status":"fail","message":"no such user"}"#);
        let plain = signals(200, r#"{"status":"success","message":"hi"}"#);
        // Status codes are enough on their own.
        assert_eq!(classify(&signals(401, "{}"), None), Some(Failure::Denied));
        assert_eq!(classify(&signals(404, "{}"), None), Some(Failure::NotFound));
        // Without learned support, a body says nothing.
        assert_eq!(classify(&fail, None), None);
        assert_eq!(classify(&fail, Some(&stats(5, 1, 4))), None);
        // With it: the error marker counts, and so does a missing credential where answers
        // are learned to grant one.
        let login = stats(200, 10, 185);
        assert_eq!(classify(&fail, Some(&login)), Some(Failure::ErrorBody));
        assert_eq!(classify(&plain, Some(&login)), Some(Failure::NoCredential));
        let granted = signals(200, r#"{"token":"0123456789abcdef0123"}"#);
        assert_eq!(classify(&granted, Some(&login)), None);
        // An API that wraps most answers in an error envelope says nothing by it.
        assert_eq!(classify(&fail, Some(&stats(200, 150, 0))), None);
        // A lookup that never grants credentials: only the marker counts.
        let lookup = stats(300, 12, 0);
        assert_eq!(classify(&plain, Some(&lookup)), None);
        assert_eq!(classify(&fail, Some(&lookup)), Some(Failure::ErrorBody));
        // Unread bodies: status only.
        assert_eq!(
            classify(&Signals::read(200, false, None), Some(&login)),
            None
        );
        assert!(describe(&login.outcomes).contains("185 of 200 read answers granted a credential"));
    }
}
