//! The client address: the socket peer, or `X-Forwarded-For` behind trusted proxies.

use std::net::IpAddr;

use crate::config::{ClientAddressConfig, ClientAddressSource};

/// Resolves the client address. With `XForwardedFor` and `trustedHops = N`, each of the N
/// trusted proxies appended the address it received from, so the client is the N-th entry
/// from the right; entries further left were written by the client and are not trusted.
/// Without a usable header the socket peer is the client.
pub fn client_address(
    config: &ClientAddressConfig,
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> IpAddr {
    if config.source == ClientAddressSource::Socket || config.trusted_hops == 0 {
        return peer;
    }
    let mut entries: [Option<IpAddr>; 16] = [None; 16];
    let mut count = 0usize;
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            // Keep the rightmost 16 entries; more is noise from the client.
            let slot = count % entries.len();
            entries[slot] = part
                .parse::<IpAddr>()
                .ok()
                .or_else(|| part.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
            count += 1;
        }
    }
    if count == 0 {
        return peer;
    }
    let hops = usize::from(config.trusted_hops);
    let from_right = hops.min(count).min(entries.len());
    let index = (count - from_right) % entries.len();
    entries[index].unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn trusted_hops_pick_the_right_entry() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let cfg = ClientAddressConfig {
            source: ClientAddressSource::XForwardedFor,
            trusted_hops: 1,
        };
        assert_eq!(
            client_address(&cfg, peer, &headers("6.6.6.6, 1.2.3.4")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let cfg2 = ClientAddressConfig {
            trusted_hops: 2,
            ..cfg.clone()
        };
        assert_eq!(
            client_address(&cfg2, peer, &headers("6.6.6.6, 1.2.3.4, 10.0.0.9")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(&cfg, peer, &http::HeaderMap::new()), peer);
        assert_eq!(client_address(&cfg, peer, &headers("garbage")), peer);
        let socket = ClientAddressConfig::default();
        assert_eq!(client_address(&socket, peer, &headers("1.2.3.4")), peer);
    }
}
