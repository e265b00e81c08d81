//! Path canonicalisation and the request target: never a panic; a canonical path is its own
//! canonical form, has no dot segment, no empty segment and no character outside its
//! alphabet; the target forwarded upstream is a valid request target.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::{
    Backslash, DoubleEncoding, EncodedSlash, PathParameters, PathsConfig, RepeatedSlashes,
    TrailingSlash,
};
use ordo_enforcer::operation::{canonical_path, canonical_target};

/// One of several policies, chosen by the first input byte.
fn policy(selector: u8) -> PathsConfig {
    let bit = |n: u8| selector & (1 << n) != 0;
    PathsConfig {
        encoded_slash: if bit(0) {
            EncodedSlash::Keep
        } else {
            EncodedSlash::Reject
        },
        path_parameters: match selector >> 6 {
            0 => PathParameters::Reject,
            1 => PathParameters::Strip,
            _ => PathParameters::Keep,
        },
        case_sensitive: !bit(1),
        trailing_slash: if bit(2) {
            TrailingSlash::Strip
        } else {
            TrailingSlash::Keep
        },
        repeated_slashes: if bit(3) {
            RepeatedSlashes::Reject
        } else {
            RepeatedSlashes::Merge
        },
        double_encoding: if bit(4) {
            DoubleEncoding::Literal
        } else {
            DoubleEncoding::Reject
        },
        backslash: if bit(5) {
            Backslash::Keep
        } else {
            Backslash::Reject
        },
    }
}

fn allowed(b: u8, policy: &PathsConfig) -> bool {
    b.is_ascii_alphanumeric()
        || b"-._~!$&'()*+,=:@/%".contains(&b)
        || (b == b';' && policy.path_parameters == PathParameters::Keep)
}

fn check_canonical(path: &str, policy: &PathsConfig) {
    let bytes = path.as_bytes();
    assert_eq!(bytes.first(), Some(&b'/'), "{path:?}");
    assert!(bytes.iter().all(|&b| allowed(b, policy)), "{path:?}");
    for (i, _) in path.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()),
            "{path:?}"
        );
    }
    let inner = path.strip_prefix('/').unwrap_or_default();
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        for segment in inner.split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "{path:?}");
        }
    }
    if policy.trailing_slash == TrailingSlash::Strip {
        assert!(path == "/" || !path.ends_with('/'), "{path:?}");
    }
    assert_eq!(
        canonical_path(path, policy).as_deref(),
        Ok(path),
        "not a fixed point"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let policy = policy(selector);
    if let Ok(path) = canonical_path(text, &policy) {
        check_canonical(&path, &policy);
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return;
    };
    let method = match selector % 5 {
        0 => http::Method::GET,
        1 => http::Method::HEAD,
        2 => http::Method::POST,
        3 => http::Method::from_bytes(b"get").unwrap_or(http::Method::GET),
        _ => http::Method::from_bytes(b"PROPFIND").unwrap_or(http::Method::GET),
    };
    let version = if selector & 0x80 != 0 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    if let Ok((target, pairs)) = canonical_target(&method, version, &uri, &policy, 16) {
        assert!(pairs.len() <= 16);
        check_canonical(&target.path, &policy);
        if policy.case_sensitive {
            assert_eq!(target.match_path(), target.path);
        } else {
            assert_eq!(target.match_path(), target.path.to_ascii_lowercase());
        }
        let forwarded = target.forward_target();
        assert!(forwarded.parse::<http::Uri>().is_ok(), "{forwarded:?}");
    }
});
