//! JWT parsing and session identification (`session::SessionIdentifiers`): never a panic; a
//! token names a session only when it verifies (checked independently with `jsonwebtoken`
//! and the same key); a session key is bounded and free of control characters; asking twice
//! gives the same answer (the verified-token cache agrees with verification); a repeated
//! `Authorization` field is always refused; without keys, the claims read back are the
//! claims signed.
//!
//! Input: one selector byte, then either a raw token (`Authorization` value) or a claims
//! document (JSON) that the target signs with the configured key.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::session::jwt::unverified_claims;
use ordo_enforcer::session::{Refusal, SessionIdentifiers, SessionSource};

const SECRET: &str = "fuzz-secret-0123456789abcdef0123";
const LEEWAY_S: u64 = 30;
/// `jwt:sub=` plus a value of at most 128 bytes, or a 17-byte hash.
const MAX_KEY: usize = "jwt:sub=".len() + 128;

fn identifiers(verification: &str) -> SessionIdentifiers {
    let yaml = format!(
        "upstream: {{ url: \"http://127.0.0.1:1\" }}\n\
         session:\n  identifiers:\n    - jwtClaim: {{ header: authorization, claim: sub }}\n    \
         - cookie: {{ name: sid }}\n    - clientIp: {{}}\n{verification}"
    );
    let config = parse_yaml(&yaml).unwrap_or_else(|e| panic!("fuzz config: {e}"));
    SessionIdentifiers::new(&config.session).unwrap_or_else(|e| panic!("identifiers: {e}"))
}

static REJECT: LazyLock<SessionIdentifiers> = LazyLock::new(|| {
    identifiers(&format!(
        "  jwtVerification:\n    keys: [{{ algorithm: HS256, secret: \"{SECRET}\" }}]\n    \
         onInvalid: Reject\n    leeway: {LEEWAY_S}s\n"
    ))
});
static FALL_THROUGH: LazyLock<SessionIdentifiers> = LazyLock::new(|| {
    identifiers(&format!(
        "  jwtVerification:\n    keys: [{{ algorithm: HS256, secret: \"{SECRET}\" }}]\n    \
         onInvalid: FallThrough\n    leeway: {LEEWAY_S}s\n"
    ))
});
static UNVERIFIED: LazyLock<SessionIdentifiers> = LazyLock::new(|| identifiers(""));

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `token` verifies with the key and the policy the enforcer is configured with, and
/// `None` when the answer could change between two clock readings (a time claim within a few
/// seconds of the leeway's edge).
fn verifies(token: &str) -> Option<bool> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_S;
    validation.validate_aud = false;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    let key = DecodingKey::from_secret(SECRET.as_bytes());
    let decoded = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key,
        &validation,
    );
    if let Some(claims) = unverified_claims(token) {
        let now = now_s();
        for name in ["exp", "nbf"] {
            if let Some(t) = claims.get(name).and_then(serde_json::Value::as_f64)
                && (t - now as f64).abs() < (LEEWAY_S + 5) as f64
            {
                return None;
            }
        }
    }
    Some(decoded.is_ok())
}

/// The token of an `Authorization` value, as `session::identify` takes it.
fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v.get(7..).unwrap_or_default().trim_start(),
        _ => v,
    }
}

fn check_key(key: &str) {
    assert!(
        key.len() <= MAX_KEY.max("ip:255.255.255.255".len()),
        "{key:?}"
    );
    assert!(!key.chars().any(char::is_control), "{key:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let token = if selector & 1 == 0 {
        // A raw token, as a client sends it.
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        // A claims document, signed with the right key (the header varies with the selector).
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        let mut header = Header::new(Algorithm::HS256);
        if selector & 2 != 0 {
            header.kid = Some("k1".into());
        }
        match jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        ) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let bearer = if selector & 4 != 0 {
        format!("Bearer {token}")
    } else {
        token.clone()
    };
    let Ok(value) = http::HeaderValue::from_str(&bearer) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_static("sid=cookie-session"),
    );
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let verified = verifies(strip_bearer(&bearer));

    for (name, ids) in [("Reject", &*REJECT), ("FallThrough", &*FALL_THROUGH)] {
        let mut key = String::new();
        let first = ids.identify(&headers, &[], client, &mut key);
        let first_key = key.clone();
        let second = ids.identify(&headers, &[], client, &mut key);
        assert_eq!(first, second, "{name}: second answer differs (token cache)");
        assert_eq!(first_key, key, "{name}: second key differs (token cache)");
        match first {
            Ok(identified) => {
                check_key(&key);
                if identified.source == SessionSource::Jwt {
                    assert_ne!(
                        verified,
                        Some(false),
                        "{name}: unverifiable token named {key}"
                    );
                    assert!(key.starts_with("jwt:sub="));
                } else if verified == Some(true) && !identified.invalid_token {
                    // A valid token without a usable `sub` falls through: fine.
                } else if verified == Some(true) {
                    panic!("{name}: a valid token was counted as invalid");
                }
                if name == "Reject" {
                    assert!(!identified.invalid_token);
                }
            }
            Err(Refusal::InvalidToken(_)) => {
                assert_eq!(name, "Reject");
                assert_ne!(verified, Some(true), "a valid token was refused");
            }
            Err(Refusal::RepeatedHeader(h)) => panic!("{name}: repeated {h} with one field"),
        }
    }

    // Without keys the claims are read unverified: a signed claims object reads back as is.
    let mut key = String::new();
    if let Ok(identified) = UNVERIFIED.identify(&headers, &[], client, &mut key) {
        check_key(&key);
        if selector & 1 != 0
            && let Ok(serde_json::Value::Object(signed)) = serde_json::from_slice(rest)
        {
            assert_eq!(unverified_claims(&token).as_ref(), Some(&signed));
            if let Some(serde_json::Value::String(sub)) = signed.get("sub")
                && !sub.is_empty()
            {
                assert_eq!(identified.source, SessionSource::Jwt);
                if sub.len() <= 128 && !sub.chars().any(char::is_control) {
                    assert_eq!(key, format!("jwt:sub={sub}"));
                } else {
                    assert!(key.starts_with("jwt:sub=#"), "{key}");
                }
            }
        }
    }

    // Two Authorization fields: always refused, whatever they hold.
    headers.append(http::header::AUTHORIZATION, value);
    for ids in [&*REJECT, &*FALL_THROUGH, &*UNVERIFIED] {
        let mut key = String::new();
        assert!(matches!(
            ids.identify(&headers, &[], client, &mut key),
            Err(Refusal::RepeatedHeader(_))
        ));
    }
});
