//! The one canonical form of a request path, computed before any check and forwarded to the
//! upstream, so that every spelling of a path the upstream would route to an operation is
//! checked as that operation (docs/enforcer-config.md, `paths`).
//!
//! Each segment is decoded completely and written again: a byte that may stand unencoded in
//! a path segment (RFC 3986 `pchar`: unreserved, sub-delimiters, `:`, `@`) is written as
//! itself, every other byte as `%XX` with upper-case hex. Decoding more than the unreserved
//! characters matters because upstream frameworks decode them too: `%3A` must match a
//! declared `:`. Two encodings keep their meaning and stay encoded: `%3B` (a decoded `;`
//! would start a path parameter) and `%25`. Dot segments are removed (RFC 3986 §5.2.4) after
//! decoding, so `%2E%2E` is `..`. What different servers read differently (`%2F`, `;`, `\`,
//! double encoding) follows the configured policy; what no server should see (control
//! characters, invalid escapes, invalid UTF-8, `..` above the root) is refused.

use std::borrow::Cow;

use super::paths::{
    Backslash, DoubleEncoding, EncodedSlash, PathParameters, PathsConfig, RepeatedSlashes,
    TrailingSlash,
};

/// Why a request target has no unambiguous canonical form (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("only origin-form requests are proxied (/path?query)")]
    NotOriginForm,
    #[error("the method must be written in upper case")]
    MethodCase,
    #[error("the path has an invalid percent-encoding")]
    InvalidEscape,
    #[error("the path has an encoded slash (%2F)")]
    EncodedSlash,
    #[error("the path has a control character")]
    ControlCharacter,
    #[error("the path is percent-encoded twice (%25 followed by hex digits)")]
    DoubleEncoding,
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a ';' path parameter")]
    PathParameter,
    #[error("the path has repeated slashes")]
    RepeatedSlashes,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("the query has more than {0} parameters")]
    TooManyQueryParameters(usize),
    #[error("a query parameter name has an invalid encoding or a control character")]
    InvalidQueryName,
}

/// Bytes written as themselves in a canonical segment (RFC 3986 `pchar` without `;`).
fn stays_raw(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One byte of a segment after decoding, and whether it was percent-encoded.
#[derive(Clone, Copy)]
struct Unit {
    byte: u8,
    encoded: bool,
}

/// Decodes every `%XX` of `raw` (an invalid escape is an error).
fn decode_units(raw: &str) -> Result<Vec<Unit>, TargetError> {
    let bytes = raw.as_bytes();
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(TargetError::InvalidEscape);
            };
            units.push(Unit {
                byte: hi << 4 | lo,
                encoded: true,
            });
            i += 3;
        } else {
            units.push(Unit {
                byte: b,
                encoded: false,
            });
            i += 1;
        }
    }
    Ok(units)
}

/// Whether an encoded `%` at `i` is followed by two hex digits (raw or encoded): a second
/// decoding would turn them into another character.
fn is_double_encoded(units: &[Unit], i: usize) -> bool {
    let hex = |j: usize| units.get(j).is_some_and(|u| hex_value(u.byte).is_some());
    hex(i + 1) && hex(i + 2)
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// The canonical spelling of one segment (no `/` in `raw`), `;` parameters already handled.
fn canonical_segment(raw: &str, policy: &PathsConfig) -> Result<String, TargetError> {
    let units = decode_units(raw)?;
    let decoded: Vec<u8> = units.iter().map(|u| u.byte).collect();
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::InvalidUtf8);
    }
    let mut out = String::with_capacity(raw.len());
    for (i, unit) in units.iter().enumerate() {
        let b = unit.byte;
        match b {
            _ if b.is_ascii_control() => return Err(TargetError::ControlCharacter),
            b'/' => match policy.encoded_slash {
                EncodedSlash::Reject => return Err(TargetError::EncodedSlash),
                EncodedSlash::Keep => push_encoded(&mut out, b),
            },
            b'\\' => match policy.backslash {
                Backslash::Reject => return Err(TargetError::Backslash),
                Backslash::Keep => push_encoded(&mut out, b),
            },
            b'%' => {
                if policy.double_encoding == DoubleEncoding::Reject && is_double_encoded(&units, i)
                {
                    return Err(TargetError::DoubleEncoding);
                }
                push_encoded(&mut out, b);
            }
            b';' if unit.encoded => push_encoded(&mut out, b),
            b';' => out.push(';'),
            _ if stays_raw(b) => out.push(char::from(b)),
            _ => push_encoded(&mut out, b),
        }
    }
    Ok(out)
}

/// Applies the `;` policy to one raw segment.
fn without_parameters<'a>(raw: &'a str, policy: &PathsConfig) -> Result<&'a str, TargetError> {
    match (raw.find(';'), policy.path_parameters) {
        (None, _) | (Some(_), PathParameters::Keep) => Ok(raw),
        (Some(_), PathParameters::Reject) => Err(TargetError::PathParameter),
        (Some(at), PathParameters::Strip) => Ok(raw.get(..at).unwrap_or_default()),
    }
}

/// Whether `raw` is canonical as it is (most requests): only characters written as
/// themselves, no empty segment but a trailing one, no dot segment.
fn already_canonical(raw: &str, policy: &PathsConfig) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    if !rest.bytes().all(|b| b == b'/' || stays_raw(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" if last => return policy.trailing_slash == TrailingSlash::Keep,
            "" | "." | ".." => return false,
            _ => {}
        }
    }
    true
}

/// The canonical form of a path (`raw` without the query): see the module documentation.
/// Borrowed when `raw` is canonical already.
pub fn canonical_path<'a>(raw: &'a str, policy: &PathsConfig) -> Result<Cow<'a, str>, TargetError> {
    if already_canonical(raw, policy) {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild_path(raw, policy).map(Cow::Owned)
}

fn rebuild_path(raw: &str, policy: &PathsConfig) -> Result<String, TargetError> {
    let rest = raw.strip_prefix('/').ok_or(TargetError::NotOriginForm)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing = rest.is_empty();
    let mut pieces = rest.split('/').peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let piece = without_parameters(piece, policy)?;
        if piece.is_empty() {
            if last {
                trailing = true;
            } else if policy.repeated_slashes == RepeatedSlashes::Reject {
                return Err(TargetError::RepeatedSlashes);
            }
            continue;
        }
        let segment = canonical_segment(piece, policy)?;
        trailing = last && matches!(segment.as_str(), "." | "..");
        match segment.as_str() {
            "." => {}
            ".." => {
                segments.pop().ok_or(TargetError::AboveRoot)?;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing && policy.trailing_slash == TrailingSlash::Keep) {
        out.push('/');
    }
    Ok(out)
}

/// The canonical form of a literal segment written in a declared operation (so that
/// `transfer%46unds` or `caf\u{e9}` in a rule match what requests are reduced to).
pub fn canonical_literal(raw: &str) -> Result<String, TargetError> {
    let strict = PathsConfig::default();
    if raw.contains(['/', ';']) {
        return Err(TargetError::PathParameter);
    }
    let mut encoded = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii() {
            encoded.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                push_encoded(&mut encoded, b);
            }
        }
    }
    canonical_segment(&encoded, &strict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, TargetError> {
        canonical_path(raw, &PathsConfig::default()).map(Cow::into_owned)
    }

    #[test]
    fn spellings_of_one_path_have_one_form() {
        let table: &[(&str, &str)] = &[
            ("/api/v1/export", "/api/v1/export"),
            ("/api/v1/%65xport", "/api/v1/export"),
            ("/api/v1/%65%78%70%6F%72%74", "/api/v1/export"),
            ("/api/v1/./export", "/api/v1/export"),
            ("/api/v1/x/../export", "/api/v1/export"),
            ("/api/v1/x/%2e%2E/export", "/api/v1/export"),
            ("/api/v1/x/.%2e/export", "/api/v1/export"),
            ("/api/v1/%70ayees", "/api/v1/payees"),
            ("/api/v1/%74ransferFunds", "/api/v1/transferFunds"),
            ("/api//v1///export", "/api/v1/export"),
            ("/api/v1/export/", "/api/v1/export/"),
            ("/api/v1/export/.", "/api/v1/export/"),
            ("/api/v1/export/x/..", "/api/v1/export/"),
            ("/", "/"),
            ("//", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            // Unreserved and pchar characters decoded, others upper-case hex.
            ("/v1/items%3abatchGet", "/v1/items:batchGet"),
            ("/a%7e%2d%5f%2E", "/a~-_."),
            ("/a%20b", "/a%20b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%3Fb%23c", "/a%3Fb%23c"),
            ("/a\"b", "/a%22b"),
            ("/a%25zz", "/a%25zz"),
            ("/a%25z1", "/a%25z1"),
        ];
        for (raw, want) in table {
            assert_eq!(canon(raw).as_deref(), Ok(*want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_by_default() {
        let table: &[(&str, TargetError)] = &[
            ("/api%2Fv1/export", TargetError::EncodedSlash),
            ("/api%2fv1", TargetError::EncodedSlash),
            ("/api/v1/export;jsessionid=1", TargetError::PathParameter),
            ("/api/..;/export", TargetError::PathParameter),
            ("/a%00", TargetError::ControlCharacter),
            ("/a%0d%0aX: y", TargetError::ControlCharacter),
            ("/a%7F", TargetError::ControlCharacter),
            ("/a/%252e%252e/b", TargetError::DoubleEncoding),
            ("/a/%25%32%65", TargetError::DoubleEncoding),
            ("/a%ff", TargetError::InvalidUtf8),
            ("/a%c3", TargetError::InvalidUtf8),
            ("/a\\b", TargetError::Backslash),
            ("/a%5cb", TargetError::Backslash),
            ("/a%", TargetError::InvalidEscape),
            ("/a%2", TargetError::InvalidEscape),
            ("/a%g0", TargetError::InvalidEscape),
            ("/..", TargetError::AboveRoot),
            ("/a/../../b", TargetError::AboveRoot),
            ("/%2e%2e/etc/passwd", TargetError::AboveRoot),
            ("api/v1", TargetError::NotOriginForm),
            ("*", TargetError::NotOriginForm),
        ];
        for (raw, want) in table {
            assert_eq!(canon(raw), Err(*want), "{raw}");
        }
    }

    #[test]
    fn the_policy_decides_what_servers_disagree_on() {
        let lenient = PathsConfig {
            encoded_slash: EncodedSlash::Keep,
            path_parameters: PathParameters::Strip,
            trailing_slash: TrailingSlash::Strip,
            double_encoding: DoubleEncoding::Literal,
            backslash: Backslash::Keep,
            ..PathsConfig::default()
        };
        let table: &[(&str, &str)] = &[
            ("/api%2fv1/export", "/api%2Fv1/export"),
            ("/api/v1/export;jsessionid=1", "/api/v1/export"),
            ("/api/v1/export;a=1/", "/api/v1/export"),
            ("/api/x/..;a/export", "/api/export"),
            ("/api/;x/export", "/api/export"),
            ("/a/%252e", "/a/%252e"),
            ("/a\\b%5c", "/a%5Cb%5C"),
        ];
        for (raw, want) in table {
            assert_eq!(canonical_path(raw, &lenient).as_deref(), Ok(*want), "{raw}");
        }
        let keep = PathsConfig {
            path_parameters: PathParameters::Keep,
            repeated_slashes: RepeatedSlashes::Reject,
            ..PathsConfig::default()
        };
        assert_eq!(
            canonical_path("/a;b/..;/c", &keep).as_deref(),
            Ok("/a;b/..;/c")
        );
        assert_eq!(
            canonical_path("/a//b", &keep),
            Err(TargetError::RepeatedSlashes)
        );
        assert_eq!(canonical_path("/a/b/", &keep).as_deref(), Ok("/a/b/"));
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for raw in [
            "/api/v1/%65xport",
            "/caf%c3%a9/%20x",
            "/a/b/../c/./d/",
            "/v1/items%3abatchGet",
            "/x%3b%25zz",
        ] {
            let once = canon(raw).unwrap();
            assert_eq!(canon(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_rebuild() {
        let strip = PathsConfig {
            trailing_slash: TrailingSlash::Strip,
            ..PathsConfig::default()
        };
        for policy in [PathsConfig::default(), strip] {
            for raw in [
                "/", "/a", "/a/", "/a/b", "/a//b", "/a/./b", "/a/..", "/.", "/a:b@c~d", "/a;b",
                "/a%41", "/a b", "//", "/a/b/",
            ] {
                let fast = canonical_path(raw, &policy);
                assert_eq!(fast, rebuild_path(raw, &policy).map(Cow::Owned), "{raw}");
                let borrowed = matches!(fast, Ok(Cow::Borrowed(_)));
                assert_eq!(borrowed, fast.as_deref() == Ok(raw), "{raw}");
            }
        }
    }

    #[test]
    fn declared_literals_take_the_same_form() {
        assert_eq!(
            canonical_literal("transfer%46unds").unwrap(),
            "transferFunds"
        );
        assert_eq!(canonical_literal("café").unwrap(), "caf%C3%A9");
        assert_eq!(canonical_literal("a b").unwrap(), "a%20b");
        assert!(canonical_literal("a%2Fb").is_err());
        assert!(canonical_literal("a;b").is_err());
    }
}
