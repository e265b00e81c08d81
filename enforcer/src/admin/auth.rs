//! Who may read `/v1/*`: with a token configured (`admin.token` / `admin.tokenFile`), requests
//! carrying `Authorization: Bearer <token>`, compared as SHA-256 digests in constant time;
//! without one, loopback peers only (a `kubectl port-forward`, a sidecar, the host itself).
//! `/healthz`, `/readyz` and `/metrics` are open: probes and Prometheus need them, and they
//! carry no session, client or request data.

use std::net::IpAddr;

use crate::policy::AdminToken;

/// Whether `path` is served without authentication.
pub fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Whether a request from `peer` with this `Authorization` value may read `/v1/*`.
pub fn authorized(token: Option<&AdminToken>, peer: IpAddr, authorization: Option<&str>) -> bool {
    match token {
        Some(token) => authorization
            .and_then(bearer)
            .is_some_and(|given| token.matches(given)),
        None => is_loopback(peer),
    }
}

fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| value[7..].trim())
}

/// Loopback, including an IPv4 loopback address mapped into IPv6 (`::ffff:127.0.0.1`).
fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_loopback() {
        let token = AdminToken::new("s3cr3t");
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(authorized(Some(&token), remote, Some("Bearer s3cr3t")));
        assert!(authorized(Some(&token), remote, Some("bearer  s3cr3t ")));
        assert!(!authorized(Some(&token), remote, Some("Bearer s3cr3")));
        assert!(
            !authorized(Some(&token), local, None),
            "a token binds loopback too"
        );
        assert!(!authorized(Some(&token), remote, Some("Basic s3cr3t")));
        assert!(authorized(None, local, None));
        assert!(authorized(None, mapped, None));
        assert!(!authorized(None, remote, Some("Bearer anything")));
        assert!(is_open_path("/metrics") && !is_open_path("/v1/incidents"));
    }
}
