//! Hop-by-hop headers (RFC 9110 §7.6.1) and the forwarding headers.
//!
//! Header names are pre-built constants: looking a header up by `&str` parses and
//! classifies the name on every call, which showed up in the per-request profile.

use std::net::IpAddr;

use std::io::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::header_policy::{forwardable, kept_despite_connection, write_forwarded_element};

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
        .filter(|name| !kept_despite_connection(name))
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

/// What the proxy adds to a forwarded request's headers.
pub struct Forwarding<'a> {
    /// The client connection's address, appended to `X-Forwarded-For`.
    pub peer: IpAddr,
    /// Whether the incoming `X-Forwarded-*` headers come from a trusted proxy (kept and
    /// extended) or from the client (replaced).
    pub trust_incoming: bool,
    pub request_id: &'a str,
    /// `Host` for a request without one (HTTP/2 carries it in `:authority`).
    pub host: &'a str,
}

/// Writes the header field lines of the request as it goes to the upstream straight into
/// the request head being built: the client's headers without the hop-by-hop ones (those
/// listed in `Connection` included) and without framing headers (the upstream client writes
/// its own), then `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id` and, when missing,
/// `Host`. No header map is built for the upstream request (a copy of the map and its drop
/// were ~3 % of the enforcer's CPU). Names and values were validated by the server side.
pub fn write_forwarded(out: &mut Vec<u8>, headers: &HeaderMap, fwd: &Forwarding<'_>) {
    let listed = if headers.contains_key(header::CONNECTION) {
        connection_listed(headers)
    } else {
        Vec::new()
    };
    let keep_proto = fwd.trust_incoming && headers.contains_key(X_FORWARDED_PROTO);
    for (name, value) in headers {
        let replaced = name == X_FORWARDED_FOR
            || name == X_REQUEST_ID
            || (name == X_FORWARDED_PROTO && !keep_proto);
        if replaced
            || name == header::CONTENT_LENGTH
            || is_hop_by_hop(name)
            || listed.contains(name)
            || !forwardable(name, fwd.trust_incoming)
        {
            continue;
        }
        write_field(out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if fwd.trust_incoming
        && let Some(existing) = headers.get(X_FORWARDED_FOR).map(HeaderValue::as_bytes)
        && !existing.is_empty()
    {
        out.extend_from_slice(existing);
        out.extend_from_slice(b", ");
    }
    write_ip(out, fwd.peer);
    out.extend_from_slice(b"\r\n");
    if fwd.trust_incoming {
        write_forwarded_element(out, headers, fwd.peer);
    }
    if !keep_proto {
        write_field(out, "x-forwarded-proto", b"http");
    }
    write_field(out, "x-request-id", fwd.request_id.as_bytes());
    if !headers.contains_key(header::HOST) {
        write_field(out, "host", fwd.host.as_bytes());
    }
}

/// Writes `ip` as `Display` does; an IPv4 address without the formatting machinery (on every
/// request it was ~1.3 % of the enforcer's instructions, docs/benchmarks.md).
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_displayed() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "1.20.255.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    const FWD: Forwarding<'static> = Forwarding {
        peer: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        trust_incoming: false,
        request_id: "rid-1",
        host: "upstream:8080",
    };

    fn written(headers: &HeaderMap, fwd: &Forwarding<'_>) -> Vec<String> {
        let mut out = Vec::new();
        write_forwarded(&mut out, headers, fwd);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n"));
        text.split_terminator("\r\n").map(str::to_owned).collect()
    }

    #[test]
    fn strips_hop_by_hop_headers_in_place() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        // Nothing hop-by-hop: the map is left as it was.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn forwarded_head_drops_hop_by_hop_and_framing_and_adds_ours() {
        let mut h = HeaderMap::new();
        h.insert("host", "api.example".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        h.insert("x-request-id", "client-chosen".parse().unwrap());
        // From the client, not a trusted proxy: replaced, not extended.
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(
            written(&h, &FWD),
            [
                "host: api.example",
                "x-multi: 1",
                "x-multi: 2",
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-proto: http",
                "x-request-id: rid-1",
            ]
        );
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_a_missing_host_named() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.9".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let trusted = Forwarding {
            trust_incoming: true,
            ..FWD
        };
        assert_eq!(
            written(&h, &trusted),
            [
                "x-forwarded-proto: https",
                "x-forwarded-for: 10.0.0.9, 10.0.0.1",
                "x-request-id: rid-1",
                "host: upstream:8080",
            ]
        );
        assert_eq!(
            written(&HeaderMap::new(), &trusted),
            [
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-proto: http",
                "x-request-id: rid-1",
                "host: upstream:8080",
            ]
        );
    }
}
