//! Hop-by-hop headers (RFC 9110 §7.6.1) and the forwarding headers.
//!
//! Header names are pre-built constants: looking a header up by `&str` parses and
//! classifies the name on every call, which showed up in the per-request profile.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`, appended to on the way to the upstream.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`, set on the way to the upstream.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Request-Id`, taken from the client or generated, sent both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// The names listed in `Connection` (hop-by-hop for this connection only).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including those listed in `Connection`. Protocol upgrades
/// (WebSocket) are not proxied: `Upgrade` is removed like the others.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one scan of the names (no hashing) settles that.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A copy of `headers` without the hop-by-hop ones (as [`strip_hop_by_hop`] would leave it),
/// built in one pass with room for `extra` more headers, so that adding the forwarding
/// headers does not grow the map.
pub fn forwardable_headers(headers: &HeaderMap, extra: usize) -> HeaderMap {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(headers.len() + extra);
    for (name, value) in headers {
        if is_hop_by_hop(name) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` (kept when a trusted
/// proxy already set it).
pub fn add_forwarding(headers: &mut HeaderMap, peer: IpAddr, trust_incoming: bool) {
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if trust_incoming && !existing.is_empty() => format!("{existing}, {peer}"),
        _ => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(trust_incoming && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let copy = forwardable_headers(&h, 2);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        assert_eq!(copy, h);
        add_forwarding(&mut h, "10.0.0.1".parse().unwrap(), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn forwardable_copy_keeps_every_value_in_order() {
        let mut h = HeaderMap::new();
        h.append("accept", "a/b".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        h.append("transfer-encoding", "chunked".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.9".parse().unwrap());
        let copy = forwardable_headers(&h, 0);
        assert_eq!(copy.len(), 4);
        let multi: Vec<_> = copy.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert!(!copy.contains_key("transfer-encoding"));
        let mut stripped = h.clone();
        strip_hop_by_hop(&mut stripped);
        assert_eq!(copy, stripped);
        // Nothing hop-by-hop: the map is left as it was.
        let before = copy.clone();
        let mut same = copy;
        strip_hop_by_hop(&mut same);
        assert_eq!(same, before);
        let mut trusted = before.clone();
        add_forwarding(&mut trusted, "10.0.0.1".parse().unwrap(), true);
        assert_eq!(trusted["x-forwarded-for"], "10.0.0.9, 10.0.0.1");
    }
}
