//! What of a parameter value the learned model may keep. The model leaves the enforcer — in
//! reports to the operator, in a ConfigMap, in `/v1/model` and the ApiProtection's status — so
//! it must never carry a credential or personal secret. Every value falls in one of three
//! classes (documented in `docs/operations.md`, "Data kept"):
//!
//! - **secret** — nothing of the value is kept beyond its facts (kind, length, character
//!   classes): no value set entry, no sketch. Cookies; credential headers (`Authorization`,
//!   `Proxy-Authorization`, `Cookie`, `X-Api-Key`, and every header, cookie or query parameter
//!   the session config names); fields whose normalised name matches [`SECRET_NAME_PARTS`] or
//!   [`SECRET_NAMES`]; values that look like card numbers (Luhn) or social security numbers.
//!   These are low-entropy or regulated: even a keyed hash of them could be reversed by trying
//!   every candidate.
//! - **hashed** — kept only as the model's keyed hash (enum membership) and in the distinct
//!   sketch: everything else, unless it qualifies for clear text.
//! - **clear text** — a value that is provably not a secret: at most [`MAX_SHOWN_LEN`] bytes of
//!   printable ASCII, at most [`MAX_SHOWN_DIGITS`] digits, at most [`MAX_CLASS_SWITCHES`]
//!   switches between lower case, upper case, digits and other characters (`EUR`, `monthly`,
//!   `en-US`, `application/json` pass; `pw1234x!`, `csrf-Q7w1` do not), not JWT-like nor
//!   a long hex or base64 string, in a parameter that is not secret — and only once it was
//!   seen in at least [`MIN_SHOWN_SESSIONS`] distinct sessions (a small enum shared by many
//!   users, not one user's value).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use super::shape::Location;

/// Distinct sessions a value must be seen in before its clear text is kept.
pub const MIN_SHOWN_SESSIONS: u32 = 5;
/// Longest value kept in clear text.
pub const MAX_SHOWN_LEN: usize = 32;
/// Most digits in a value kept in clear text.
pub const MAX_SHOWN_DIGITS: usize = 4;
/// Most switches between character classes in a value kept in clear text.
pub const MAX_CLASS_SWITCHES: usize = 2;

/// Headers whose values are credentials, whatever the session config says.
pub const CREDENTIAL_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// A parameter is secret when a segment of its name, normalised (alphanumerics only, lower
/// case: `body.payee.cardNumber` → `cardnumber`, `header.x-api-key` → `xapikey`), contains one
/// of these.
pub const SECRET_NAME_PARTS: [&str; 24] = [
    "token",
    "secret",
    "passw",
    "passphrase",
    "passcode",
    "pwd",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "auth",
    "session",
    "cookie",
    "card",
    "iban",
    "ssn",
    "socialsecurity",
    "cvv",
    "cvc",
    "accountnumber",
    "accountno",
    "routingnumber",
    "signature",
    "bearer",
];

/// ... or is one of these, or ends with one of them (short words that are parts of harmless
/// names too: `pan` of `company`, `pin` of `shipping`).
pub const SECRET_NAMES: [&str; 9] = [
    "key", "pan", "pin", "otp", "totp", "sid", "pass", "jwt", "sig",
];

/// A name segment normalised: alphanumerics only, lower case (`new_Password` → `newpassword`).
pub fn normalised(segment: &str) -> String {
    segment
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// [`SECRET_NAME_PARTS`] as one automaton, built once: every parameter and header name of
/// every request is checked, and 24 substring searches per name segment were a third of the
/// enforcer's instructions per request (docs/benchmarks.md, "Instructions per request").
static SECRET_PARTS: LazyLock<Option<AhoCorasick>> =
    LazyLock::new(|| AhoCorasick::new(SECRET_NAME_PARTS).ok());

/// Longest name segment normalised on the stack (longer ones are normalised into a `String`).
const STACK_SEGMENT: usize = 96;

/// Whether a field, query parameter or header name marks its value as secret: any segment of
/// the name (`body.auth.code` has `auth`), normalised, matches.
pub fn is_secret_name(name: &str) -> bool {
    name.split(['.', '[']).any(|segment| {
        let mut buf = [0u8; STACK_SEGMENT];
        let mut len = 0;
        for b in segment.bytes().filter(u8::is_ascii_alphanumeric) {
            match buf.get_mut(len) {
                Some(slot) => *slot = b.to_ascii_lowercase(),
                None => return is_secret_segment(normalised(segment).as_bytes()),
            }
            len += 1;
        }
        is_secret_segment(buf.get(..len).unwrap_or_default())
    })
}

/// Whether a normalised name segment contains one of [`SECRET_NAME_PARTS`] or ends with one
/// of [`SECRET_NAMES`].
fn is_secret_segment(n: &[u8]) -> bool {
    let part = match SECRET_PARTS.as_ref() {
        Some(automaton) => automaton.is_match(n),
        None => SECRET_NAME_PARTS
            .iter()
            .any(|p| n.windows(p.len()).any(|w| w == p.as_bytes())),
    };
    part || SECRET_NAMES.iter().any(|word| n.ends_with(word.as_bytes()))
}

/// `lower == text.to_ascii_lowercase()`, without allocating.
fn equals_lowered(lower: &str, text: &str) -> bool {
    lower.len() == text.len()
        && lower
            .bytes()
            .zip(text.bytes())
            .all(|(l, t)| l == t.to_ascii_lowercase())
}

/// Whether a profiled parameter (`body.x`, `query.x`, `header.x`, `cookie.x`, `path.x`) is
/// secret by where it is and what it is called. `session_names` are the lower-case header,
/// cookie and query names the session config uses as identifiers.
pub fn is_secret_param(location: Location, name: &str, session_names: &[String]) -> bool {
    let bare = name.split_once('.').map_or(name, |(_, rest)| rest);
    match location {
        Location::Cookie => true,
        Location::Header if CREDENTIAL_HEADERS.iter().any(|h| equals_lowered(h, bare)) => true,
        Location::Path => false,
        _ => is_session_param(location, name, session_names) || is_secret_name(name),
    }
}

/// What `session_names` add to [`is_secret_param`]: `is_secret_param(l, n, names)` is
/// `is_secret_param(l, n, &[]) || is_session_param(l, n, names)`, so a parameter already
/// judged without the session names needs only this check.
pub fn is_session_param(location: Location, name: &str, session_names: &[String]) -> bool {
    let bare = name.split_once('.').map_or(name, |(_, rest)| rest);
    location != Location::Path && session_names.iter().any(|s| equals_lowered(s, bare))
}

/// Values that are secret wherever they appear: card numbers (13–19 digits, spaces or dashes
/// allowed, valid Luhn check digit) and social security numbers (`123-45-6789`).
pub fn is_secret_value(text: &str) -> bool {
    looks_like_card(text) || looks_like_ssn(text)
}

pub fn looks_like_card(text: &str) -> bool {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
    {
        return false;
    }
    let digits: Vec<u32> = text
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub fn looks_like_ssn(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 11
        && b.iter().enumerate().all(|(i, c)| match i {
            3 | 6 => *c == b'-' || *c == b' ',
            _ => c.is_ascii_digit(),
        })
}

/// JWT-like (`eyJ…` with three dot-separated base64url parts), or a long hex or base64 string.
fn looks_like_token(text: &str) -> bool {
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'=');
    if text.starts_with("eyJ") && text.split('.').count() >= 2 {
        return true;
    }
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    text.len() >= 16 && text.bytes().all(base64) && digits > 0 && digits < text.len()
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum CharClass {
    Lower,
    Upper,
    Digit,
    Other,
}

fn class_of(b: u8) -> CharClass {
    match b {
        b'a'..=b'z' => CharClass::Lower,
        b'A'..=b'Z' => CharClass::Upper,
        b'0'..=b'9' => CharClass::Digit,
        _ => CharClass::Other,
    }
}

/// Whether a value (of a parameter that is not secret) may be kept in clear text once seen in
/// enough sessions: short, printable, low-entropy, of no sensitive class.
pub fn may_show_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_SHOWN_LEN
        || !bytes.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let switches = bytes
        .windows(2)
        .filter(|w| match w {
            [a, b] => class_of(*a) != class_of(*b),
            _ => false,
        })
        .count();
    digits <= MAX_SHOWN_DIGITS
        && switches <= MAX_CLASS_SWITCHES
        && !looks_like_token(text)
        && !is_secret_value(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_matched_on_normalised_names() {
        for name in [
            "body.password",
            "body.newPassword",
            "body.payee.cardNumber",
            "body.card_number",
            "body.ssn",
            "body.cvv",
            "query.api_key",
            "query.access_token",
            "header.x-api-key",
            "header.x-session-id",
            "body.iban",
            "body.accountNumber",
            "body.pin",
            "body.auth.code",
            "body.pan",
            "body.clientSecret",
            "body.items[].token",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "body.currency",
            "body.amount",
            "query.page",
            "body.company",
            "body.shipping",
            "header.user-agent",
            "body.memo",
            "body.fromAccount",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    /// The definition `is_secret_name` implements without allocating.
    fn secret_name_by_definition(name: &str) -> bool {
        name.split(['.', '[']).map(normalised).any(|n| {
            SECRET_NAME_PARTS.iter().any(|part| n.contains(part))
                || SECRET_NAMES.iter().any(|word| n.ends_with(word))
        })
    }

    #[test]
    fn secret_names_match_the_definition_for_any_name() {
        let long = format!("body.{}Token", "x".repeat(200));
        let long_harmless = format!("query.{}", "ab-".repeat(100));
        for name in [
            "body.password",
            "body.Pass_Word",
            "body.passenger",
            "header.x-api-key",
            "header.X-API-KEY",
            "header.user-agent",
            "query.pageSize",
            "body.items[].sig",
            "body.signal",
            "body.tokenizer.x",
            "body.ñpassword",
            "body.pä",
            "body.ke-y",
            "",
            ".",
            "[[",
            long.as_str(),
            long_harmless.as_str(),
        ] {
            assert_eq!(
                is_secret_name(name),
                secret_name_by_definition(name),
                "{name}"
            );
        }
        assert!(is_secret_name(&long));
        assert!(!is_secret_name(&long_harmless));
    }

    #[test]
    fn session_names_add_only_the_session_parameters() {
        let names = vec!["x-session-id".to_owned(), "sid".to_owned()];
        for location in [
            Location::Path,
            Location::Query,
            Location::Body,
            Location::Header,
            Location::Cookie,
        ] {
            for name in [
                "header.x-session-id",
                "header.X-Session-Id",
                "query.sid",
                "query.page",
                "body.sid",
                "path.sid",
                "cookie.sid",
                "header.authorization",
                "header.accept",
                "body.password",
            ] {
                assert_eq!(
                    is_secret_param(location, name, &names),
                    is_secret_param(location, name, &[])
                        || is_session_param(location, name, &names),
                    "{location:?} {name}"
                );
            }
        }
    }

    #[test]
    fn cookies_credential_headers_and_session_names_are_secret() {
        let none: Vec<String> = Vec::new();
        assert!(is_secret_param(Location::Cookie, "cookie.theme", &none));
        assert!(is_secret_param(
            Location::Header,
            "header.authorization",
            &none
        ));
        assert!(!is_secret_param(Location::Header, "header.accept", &none));
        let named = vec!["x-client".to_owned()];
        assert!(is_secret_param(Location::Header, "header.x-client", &named));
        // Names are compared in lower case, as sent or not.
        assert!(is_secret_param(Location::Header, "header.X-Client", &named));
        assert!(is_secret_param(Location::Query, "query.X-CLIENT", &named));
        assert!(is_secret_param(
            Location::Header,
            "header.Proxy-Authorization",
            &none
        ));
        assert!(!is_secret_param(
            Location::Header,
            "header.x-clients",
            &named
        ));
        assert!(!is_secret_param(Location::Path, "path.var1", &none));
    }

    #[test]
    fn value_classes() {
        assert!(is_secret_value("4111111111111111"));
        assert!(is_secret_value("4000 0566 5566 5556"));
        assert!(!is_secret_value("4111111111111112"), "Luhn fails");
        assert!(is_secret_value("078-05-1120"));
        for shown in [
            "EUR",
            "monthly",
            "en-US",
            "application/json",
            "1",
            "true",
            "Rent",
        ] {
            assert!(may_show_value(shown), "{shown}");
        }
        for hidden in [
            "pw1234x!",
            "csrf-Q7w1",
            "hunter2-Correct!",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "9f86d081884c7d659a2feaa0c55ad015",
            "c2lnbmF0dXJlLXZhbHVlLTEyMw==",
            "DE89370400440532013000",
            "078-05-1120",
            "2024-01-01",
            "",
        ] {
            assert!(!may_show_value(hidden), "{hidden}");
        }
    }
}
