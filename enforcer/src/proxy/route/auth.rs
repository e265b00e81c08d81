//! Authentication of what replicas send each other: HMAC-SHA256 with the secret the replicas
//! share, over a timestamp, the kind of message, the original client connection's address,
//! the move hint, the sender and its member view, the request line and a canonical digest of
//! the header block. The internal listener takes nothing else; the public listener never
//! reads the header (a client cannot claim to be a replica). The body is not covered: it is
//! streamed, not buffered (docs/scale-out.md says what answers that: an encrypted pod
//! network or mTLS).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header carrying `v2 <kind> <unix ms> <client peer> <moved-since unix ms or 0>
/// <sender> <sender's view, 16 hex> <hex mac>`.
pub const PEER_AUTH: &str = "x-ordo-peer-auth";
const PEER_AUTH_NAME: HeaderName = HeaderName::from_static(PEER_AUTH);
/// A number no other message of this process carries, in every message between replicas
/// (under the MAC with the other headers): two messages alike in every other way, signed in
/// the same millisecond (two identical requests of one client, two identical failed logins),
/// still differ, so that taking each message once (`route::seen`) never refuses one of them.
pub const PEER_NONCE: &str = "x-ordo-peer-nonce";

/// The next [`PEER_NONCE`] value.
pub fn next_nonce() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    HeaderValue::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How far a forwarded request's timestamp may be from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 30_000;

/// What a message between replicas is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client's request, forwarded to its session's owner.
    Request,
    /// A replica telling the others that its member view changes (no client request).
    View,
    /// Facts about a client address (what an answer to its anonymous request showed it,
    /// `route::facts`); the client peer field is that address, port 0.
    Facts,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Request => "r",
            Kind::View => "v",
            Kind::Facts => "s",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "r" => Some(Kind::Request),
            "v" => Some(Kind::View),
            "s" => Some(Kind::Facts),
            _ => None,
        }
    }
}

/// What an authenticated message tells the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerClaims {
    pub kind: Kind,
    /// The client connection's address as the forwarding replica saw it.
    pub client_peer: SocketAddr,
    /// Unix ms until which the session may have been served elsewhere (0: none known).
    pub moved_since_ms: u64,
    /// The sender's advertised address (its entry among the members).
    pub from: SocketAddr,
    /// The hash of the member view the sender routed by.
    pub view: u64,
}

/// Whether a header is left out of the digest: the authentication header itself, and the
/// framing headers the HTTP client writes for the body it streams (the body is not covered).
fn unsigned(name: &HeaderName) -> bool {
    name == PEER_AUTH_NAME || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
}

/// A canonical digest of a header block: names sorted, the values of one name in their
/// order (their order is meaningful, e.g. `X-Forwarded-For`), every part length-prefixed.
pub fn headers_digest(headers: &HeaderMap) -> [u8; 32] {
    let mut names: Vec<&HeaderName> = headers.keys().filter(|n| !unsigned(n)).collect();
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut h = Sha256::new();
    for name in names {
        for value in headers.get_all(name) {
            h.update((name.as_str().len() as u64).to_be_bytes());
            h.update(name.as_str().as_bytes());
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        }
    }
    h.finalize().into()
}

fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The request a message is about: its line and its headers' digest.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [u8; 32],
}

fn mac(secret: &[u8], at_ms: u64, claims: &PeerClaims, request: &Signed<'_>) -> [u8; 32] {
    let peer = claims.client_peer.to_string();
    let from = claims.from.to_string();
    let len = |s: &str| (s.len() as u64).to_be_bytes();
    // Each variable-length part is preceded by its length: no two messages sign the same bytes.
    hmac_sha256(
        secret,
        &[
            b"v2",
            claims.kind.tag().as_bytes(),
            &at_ms.to_be_bytes(),
            &len(&peer),
            peer.as_bytes(),
            &claims.moved_since_ms.to_be_bytes(),
            &len(&from),
            from.as_bytes(),
            &claims.view.to_be_bytes(),
            &len(request.method),
            request.method.as_bytes(),
            &len(request.target),
            request.target.as_bytes(),
            request.headers,
        ],
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// The header value for `request` sent at `now_ms`.
pub fn sign(secret: &[u8], now_ms: u64, claims: &PeerClaims, request: &Signed<'_>) -> String {
    format!(
        "v2 {} {now_ms} {} {} {} {:016x} {}",
        claims.kind.tag(),
        claims.client_peer,
        claims.moved_since_ms,
        claims.from,
        claims.view,
        hex(&mac(secret, now_ms, claims, request))
    )
}

/// When a verified message was signed and the first 8 bytes of its MAC: what tells it from
/// every other message (see `route::seen`: each is taken once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub at_ms: u64,
    pub mac: u64,
}

/// Checks a header value; the claims when it is genuine, fresh and for this request, with the
/// message's stamp.
pub fn verify(
    secret: &[u8],
    now_ms: u64,
    value: &str,
    request: &Signed<'_>,
) -> Option<(PeerClaims, Stamp)> {
    let mut fields = value.split(' ');
    if fields.next()? != "v2" {
        return None;
    }
    let kind = Kind::from_tag(fields.next()?)?;
    let at_ms: u64 = fields.next()?.parse().ok()?;
    let claims = PeerClaims {
        kind,
        client_peer: fields.next()?.parse().ok()?,
        moved_since_ms: fields.next()?.parse().ok()?,
        from: fields.next()?.parse().ok()?,
        view: u64::from_str_radix(fields.next()?, 16).ok()?,
    };
    let given = unhex(fields.next()?)?;
    if fields.next().is_some() || at_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return None;
    }
    let expected = mac(secret, at_ms, &claims, request);
    let mut first = [0u8; 8];
    first.copy_from_slice(&given[..8]);
    let stamp = Stamp {
        at_ms,
        mac: u64::from_be_bytes(first),
    };
    bool::from(expected.ct_eq(&given)).then_some((claims, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn claims() -> PeerClaims {
        PeerClaims {
            kind: Kind::Request,
            client_peer: "10.1.2.3:45678".parse().unwrap(),
            moved_since_ms: 7,
            from: "10.0.0.2:8444".parse().unwrap(),
            view: 0xfeed,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_signed_request_verifies_and_nothing_else_does() {
        let d = headers_digest(&headers(&[("authorization", "Bearer x")]));
        let req = |method, target| Signed {
            method,
            target,
            headers: &d,
        };
        let v = sign(SECRET, 1_000_000, &claims(), &req("POST", "/a?b=1"));
        let (verified, stamp) = verify(SECRET, 1_000_500, &v, &req("POST", "/a?b=1")).unwrap();
        assert_eq!(verified, claims());
        assert_eq!(stamp.at_ms, 1_000_000);
        // The stamp's MAC is the header's: another message, another stamp.
        assert!(v.contains(&format!("{:016x}", stamp.mac)));
        let other = sign(SECRET, 1_000_001, &claims(), &req("POST", "/a?b=1"));
        let (_, other_stamp) = verify(SECRET, 1_000_500, &other, &req("POST", "/a?b=1")).unwrap();
        assert_ne!(other_stamp.mac, stamp.mac);
        // Another request line, another secret, too old, tampered claims.
        assert_eq!(verify(SECRET, 1_000_500, &v, &req("GET", "/a?b=1")), None);
        assert_eq!(verify(SECRET, 1_000_500, &v, &req("POST", "/a?b=2")), None);
        assert_eq!(
            verify(
                b"another-secret-0000",
                1_000_500,
                &v,
                &req("POST", "/a?b=1")
            ),
            None
        );
        assert_eq!(
            verify(SECRET, 1_000_000 + 31_000, &v, &req("POST", "/a?b=1")),
            None
        );
        for (from, to) in [
            ("10.1.2.3", "10.1.2.4"),
            (" r ", " v "),
            ("10.0.0.2:8444", "10.0.0.3:8444"),
            ("000000000000feed", "000000000000feee"),
        ] {
            let forged = v.replace(from, to);
            assert_ne!(forged, v);
            assert_eq!(
                verify(SECRET, 1_000_500, &forged, &req("POST", "/a?b=1")),
                None,
                "{forged}"
            );
        }
        assert_eq!(
            verify(SECRET, 1_000_500, "v2 r 1 2 3", &req("POST", "/a?b=1")),
            None
        );
        // The former format (no header digest) is not accepted.
        assert_eq!(
            verify(
                SECRET,
                1_000_500,
                &v.replacen("v2 r", "v1", 1),
                &req("POST", "/a?b=1")
            ),
            None
        );
    }

    #[test]
    fn the_digest_covers_every_end_to_end_header_and_the_order_of_values() {
        let base = headers(&[
            ("authorization", "Bearer x"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        let d = headers_digest(&base);
        // Names in another order: the same digest.
        let reordered = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("authorization", "Bearer x"),
        ]);
        assert_eq!(headers_digest(&reordered), d);
        // Framing and the authentication header itself are left out.
        let mut framed = base.clone();
        framed.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        framed.insert(PEER_AUTH_NAME, HeaderValue::from_static("v2 ..."));
        assert_eq!(headers_digest(&framed), d);
        // A changed, added or removed header, or values of one name swapped: another digest.
        let changed = headers(&[
            ("authorization", "Bearer y"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        let swapped = headers(&[
            ("authorization", "Bearer x"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        let mut added = base.clone();
        added.insert(
            header::CONNECTION,
            HeaderValue::from_static("authorization"),
        );
        let mut removed = base.clone();
        removed.remove(header::AUTHORIZATION);
        for other in [changed, swapped, added, removed] {
            assert_ne!(headers_digest(&other), d, "{other:?}");
        }
    }

    #[test]
    fn messages_alike_in_every_other_way_differ_by_their_nonce() {
        let (a, b) = (next_nonce(), next_nonce());
        assert_ne!(a, b);
        let with = |nonce: &HeaderValue| {
            let mut h = headers(&[("authorization", "Bearer x")]);
            h.insert(PEER_NONCE, nonce.clone());
            headers_digest(&h)
        };
        assert_ne!(with(&a), with(&b), "the nonce is under the MAC");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
