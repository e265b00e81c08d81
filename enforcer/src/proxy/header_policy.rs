//! Which client header fields reach the upstream, beyond the hop-by-hop rules: the
//! client-address headers follow the `X-Forwarded-For` trust policy, names with `_` are
//! dropped, and `Connection` cannot remove the fields routing depends on.

use std::io::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, header};

/// `X-Real-IP`: the client address as one proxy saw it.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `True-Client-IP`: the same, as some CDNs write it.
pub const TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

/// Headers that name the client: from a trusted proxy they are kept (`Forwarded` extended
/// with this hop); from the client itself they are dropped, since the upstream would take a
/// forged address for the real one. `X-Forwarded-For` is written by `write_forwarded`.
fn names_the_client(name: &HeaderName) -> bool {
    name == header::FORWARDED || name == X_REAL_IP || name == TRUE_CLIENT_IP
}

/// Whether a client header field is forwarded (before the hop-by-hop rules). A name with an
/// underscore never is (nginx's default): CGI-style servers read `Transfer_Encoding` or
/// `X_Forwarded_For` as `Transfer-Encoding` or `X-Forwarded-For`, around the framing checks
/// and the forwarding rules.
pub fn forwardable(name: &HeaderName, trust_incoming: bool) -> bool {
    !name.as_str().contains('_') && (trust_incoming || !names_the_client(name))
}

/// Fields a `Connection` header may not remove: `Host` (the upstream routes on it) and the
/// forwarding fields, whose handling follows the trust policy, not the client's wish.
pub fn kept_despite_connection(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || names_the_client(name)
        || name.as_str().starts_with("x-forwarded-")
        || name.as_str() == "x-request-id"
}

/// With a trusted proxy in front that sent `Forwarded`, this hop's element (RFC 7239): the
/// peer as `for`, quoted and bracketed when IPv6.
pub fn write_forwarded_element(out: &mut Vec<u8>, headers: &HeaderMap, peer: IpAddr) {
    if !headers.contains_key(header::FORWARDED) {
        return;
    }
    let _ = match peer {
        IpAddr::V4(v4) => write!(out, "forwarded: for={v4};proto=http\r\n"),
        IpAddr::V6(v6) => write!(out, "forwarded: for=\"[{v6}]\";proto=http\r\n"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_and_untrusted_client_addresses_are_not_forwarded() {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        assert!(!forwardable(&name("transfer_encoding"), true));
        assert!(!forwardable(&name("x_forwarded_for"), true));
        assert!(forwardable(&name("x-keep"), false));
        for client in ["forwarded", "x-real-ip", "true-client-ip"] {
            assert!(!forwardable(&name(client), false), "{client}");
            assert!(forwardable(&name(client), true), "{client}");
        }
        assert!(kept_despite_connection(&header::HOST));
        assert!(kept_despite_connection(&name("x-forwarded-proto")));
        assert!(!kept_despite_connection(&name("x-private")));
    }

    #[test]
    fn forwarded_element_only_after_a_trusted_one() {
        let mut out = Vec::new();
        write_forwarded_element(&mut out, &HeaderMap::new(), IpAddr::from([10, 0, 0, 1]));
        assert!(out.is_empty());
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, "for=1.2.3.4".parse().unwrap());
        write_forwarded_element(&mut out, &h, IpAddr::from([10, 0, 0, 1]));
        write_forwarded_element(&mut out, &h, "::1".parse().unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "forwarded: for=10.0.0.1;proto=http\r\nforwarded: for=\"[::1]\";proto=http\r\n"
        );
    }
}
