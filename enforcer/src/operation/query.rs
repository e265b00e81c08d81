//! Query-string decoding (`application/x-www-form-urlencoded` rules: `+` is a space).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// At most this many pairs are decoded; the rest of a query is ignored by the checks.
pub const MAX_QUERY_PAIRS: usize = 64;

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

/// Decodes `a=1&b=x%20y` into pairs, borrowing when nothing needed decoding.
pub fn parse_query(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PAIRS)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
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
}
