//! Query-string decoding (`application/x-www-form-urlencoded` rules: `+` is a space).

use std::borrow::Cow;

use percent_encoding::{percent_decode, percent_decode_str};

use super::canonical::TargetError;
use super::paths::{DoubleEncoding, PathsConfig};

/// Decoded query pairs, borrowing what needed no decoding.
pub type QueryPairs<'q> = Vec<(Cow<'q, str>, Cow<'q, str>)>;

fn decode(part: &str) -> Cow<'_, str> {
    if part.contains('+') {
        let replaced = part.replace('+', " ");
        Cow::Owned(
            percent_decode_str(&replaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        percent_decode_str(part).decode_utf8_lossy()
    }
}

/// The non-empty `&`-separated pairs of a query, split at the first `=`.
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Decodes `a=1&b=x%20y` into pairs, leniently (invalid UTF-8 becomes U+FFFD). Every pair is
/// decoded: the caller bounds the query (the proxy uses [`parse_request_query`]).
pub fn parse_query(query: &str) -> QueryPairs<'_> {
    pairs(query).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// Decodes a request's query for the checks: every pair, so that a parameter repeated or
/// placed after many others is seen. More than `max` pairs is an error, as is a name that
/// does not decode to clean text under the path rules (invalid UTF-8, a control character,
/// a second level of encoding): such a name could be read as another one by the upstream.
/// Values are decoded leniently; the checks see them as the upstream would.
pub fn parse_request_query<'q>(
    query: &'q str,
    max: usize,
    policy: &PathsConfig,
) -> Result<QueryPairs<'q>, TargetError> {
    if pairs(query).nth(max).is_some() {
        return Err(TargetError::TooManyQueryParameters(max));
    }
    pairs(query)
        .map(|(k, v)| Ok((decode_name(k, policy)?, decode(v))))
        .collect()
}

fn decode_name<'q>(raw: &'q str, policy: &PathsConfig) -> Result<Cow<'q, str>, TargetError> {
    let name: Cow<'q, str> = if raw.contains(['%', '+']) {
        let spaced = raw.replace('+', " ");
        let bytes: Vec<u8> = percent_decode(spaced.as_bytes()).collect();
        Cow::Owned(String::from_utf8(bytes).map_err(|_| TargetError::InvalidQueryName)?)
    } else {
        Cow::Borrowed(raw)
    };
    if name.chars().any(char::is_control) {
        return Err(TargetError::InvalidQueryName);
    }
    if policy.double_encoding == DoubleEncoding::Reject && looks_encoded(&name) {
        return Err(TargetError::InvalidQueryName);
    }
    Ok(name)
}

/// Whether decoded text still holds a `%XX` escape.
fn looks_encoded(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        let q = parse_query("sid=abc&name=J%C3%B6rg+M&flag&");
        assert_eq!(q.len(), 3);
        assert_eq!(q[1], (Cow::from("name"), Cow::from("Jörg M")));
        assert_eq!(q[2], (Cow::from("flag"), Cow::from("")));
    }

    #[test]
    fn request_queries_keep_every_pair_up_to_the_cap() {
        let policy = PathsConfig::default();
        let mut long: String = (0..64).map(|i| format!("p={i}&")).collect();
        long.push_str("limit=1000&limit=5");
        let q = parse_request_query(&long, 128, &policy).unwrap();
        assert_eq!(q.len(), 66);
        let limits: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "limit")
            .map(|(_, v)| v.as_ref())
            .collect();
        assert_eq!(limits, ["1000", "5"]);
        assert_eq!(
            parse_request_query(&long, 65, &policy),
            Err(TargetError::TooManyQueryParameters(65))
        );
        assert!(parse_request_query("a&&b&", 2, &policy).is_ok());
    }

    #[test]
    fn names_decode_like_paths() {
        let policy = PathsConfig::default();
        let q = parse_request_query("li%6Dit=1&a+b=2&caf%C3%A9=3", 8, &policy).unwrap();
        let names: Vec<&str> = q.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["limit", "a b", "café"]);
        for bad in ["li%00mit=1", "lim%FFit=1", "%256c%2569mit=1", "a%0Ab=1"] {
            assert_eq!(
                parse_request_query(bad, 8, &policy),
                Err(TargetError::InvalidQueryName),
                "{bad}"
            );
        }
        let literal = PathsConfig {
            double_encoding: DoubleEncoding::Literal,
            ..PathsConfig::default()
        };
        let q = parse_request_query("%256cimit=1", 8, &literal).unwrap();
        assert_eq!(q[0].0, "%6cimit");
        // Values stay lenient: the checks see what the upstream would decode.
        let q = parse_request_query("x=%FF%00", 8, &policy).unwrap();
        assert_eq!(q[0].1, "\u{fffd}\0");
    }
}
