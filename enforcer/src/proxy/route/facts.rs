//! Facts about a client address that a decision on another replica needs
//! ([`AddressFacts`]: what an answer to its anonymous request showed it, a failed
//! authentication, a quarantine, an authentication attempt of the API-wide activity, a
//! campaign naming it).
//!
//! Sessions are owned by their key, but some state is the client address's: what an answer
//! to an address's anonymous request showed it counts as given to every token, cookie or
//! header session from that address (`detect::shown`); authentication failures are counted
//! per address (`detect::clients`); a credential stuffer's address is quarantined, every
//! session from it refused (`detect::quarantine`). The anonymous request is decided by the
//! owner of `ip:<address>`, a token's or a stuffer's next session by its own owner, usually
//! another replica. So the replica that decided sends what it learned about the address to
//! every other member *before* it answers the client (each message acknowledged, all of them
//! in parallel, waiting at most twice `connectTimeout`): by the time the client can send its
//! next request, whichever replica decides it holds the facts, as one replica would. Only
//! the requests that taught something wait: anonymous answers whose values are followed,
//! logins (failed or not: the distributed-stuffing checks read every attempt API-wide),
//! quarantines, the exchange that names a campaign's members (one message per member).
//!
//! The message is a `POST /facts` of kind `s`, authenticated as every other message (the
//! client address is the MAC-covered `client peer` field), with the JSON body's SHA-256 in a
//! header the MAC covers, so the body is authenticated too (it is small and buffered, unlike
//! a forwarded request's).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize as _;
use sha2::{Digest, Sha256};

use super::auth::{self, Kind, PEER_AUTH, PEER_NONCE, PeerClaims, Signed, Stamp};
use super::forward::connect;
use super::{Router, unix_ms};
use crate::detect::AddressFacts;
use crate::detect::lineage::{MAX_RESPONSE_VALUES, MAX_VALUE_LEN};
use crate::proxy::state::Shared;

/// The header carrying the SHA-256 (hex) of a facts message's body; covered by the MAC.
pub(super) const PEER_BODY: &str = "x-ordo-peer-body";
/// Largest facts body taken: `MAX_RESPONSE_VALUES` values of at most 128 bytes, with their
/// field paths and JSON framing.
const MAX_FACTS_BYTES: usize = 96 * 1024;
/// Idle connections kept per member for facts.
pub(super) const MAX_IDLE: usize = 8;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The facts message's body: at most [`MAX_RESPONSE_VALUES`] values that can name an object
/// (the others are never looked up); `None` when there is nothing to tell, or when it would
/// be larger than a receiver takes ([`MAX_FACTS_BYTES`]; without the values first).
fn body_of(facts: &AddressFacts) -> Option<Bytes> {
    let mut facts = facts.clone();
    facts
        .values
        .retain(|(_, value)| (2..=MAX_VALUE_LEN).contains(&value.len()));
    facts.values.truncate(MAX_RESPONSE_VALUES);
    if facts.is_empty() {
        return None;
    }
    let body = serde_json::to_vec(&facts).ok()?;
    if body.len() <= MAX_FACTS_BYTES {
        return Some(Bytes::from(body));
    }
    facts.values.clear();
    facts.operation.clear();
    let body = serde_json::to_vec(&facts).ok()?;
    (!facts.is_empty() && body.len() <= MAX_FACTS_BYTES).then(|| Bytes::from(body))
}

/// One facts message: its address, body and the body's digest.
struct Message {
    address: std::net::IpAddr,
    body: Bytes,
    digest: String,
}

impl Router {
    /// Tells every other member what a decision taught about each address of `facts` (its
    /// client's, and the members of a campaign it named): one message per address, in order,
    /// to every member in parallel; returns once all acknowledged, or after twice
    /// `connectTimeout`.
    pub async fn share_facts(&self, facts: Vec<AddressFacts>) {
        let messages: Vec<Message> = facts
            .iter()
            .filter_map(|f| {
                let address = f.address?;
                let body = body_of(f)?;
                let digest = hex(&Sha256::digest(&body));
                Some(Message {
                    address,
                    body,
                    digest,
                })
            })
            .collect();
        if messages.is_empty() {
            return;
        }
        let views = self.views.load_full();
        let targets: Vec<SocketAddr> = views
            .current
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.self_addr)
            .collect();
        if targets.is_empty() {
            return;
        }
        let waited = std::time::Instant::now();
        let timeout = self.config.load().connect_timeout.std();
        let sends = targets.iter().map(|peer| {
            let messages = &messages;
            let view = views.current.hash;
            async move {
                // In order over one connection: the client's own facts first (its next
                // request reads them), a campaign's members after.
                let mut acknowledged = 0;
                let _ = tokio::time::timeout(timeout * 2, async {
                    for m in messages {
                        let claims = PeerClaims {
                            kind: Kind::Facts,
                            client_peer: SocketAddr::new(m.address, 0),
                            moved_since_ms: 0,
                            from: self.self_addr,
                            view,
                        };
                        if !self
                            .send_facts(*peer, &claims, m.body.clone(), &m.digest, timeout)
                            .await
                        {
                            break;
                        }
                        acknowledged += 1;
                    }
                })
                .await;
                acknowledged
            }
        });
        for acknowledged in futures::future::join_all(sends).await {
            let metric = &self.metrics.facts;
            let unacknowledged = messages.len().saturating_sub(acknowledged);
            metric
                .with_label_values(&["acknowledged"])
                .inc_by(acknowledged as u64);
            metric
                .with_label_values(&["unacknowledged"])
                .inc_by(unacknowledged as u64);
        }
        self.metrics
            .facts_wait
            .observe(waited.elapsed().as_secs_f64());
    }

    async fn send_facts(
        &self,
        peer: SocketAddr,
        claims: &PeerClaims,
        body: Bytes,
        digest: &str,
        connect_timeout: Duration,
    ) -> bool {
        let sender = match self.facts_pool.take(peer) {
            Some(sender) => Some(sender),
            None => connect(peer, connect_timeout, "facts connection").await,
        };
        let Some(mut sender) = sender else {
            return false;
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = Uri::from_static("/facts");
        let headers = req.headers_mut();
        let (Ok(host), Ok(digest)) = (
            HeaderValue::from_str(&peer.to_string()),
            HeaderValue::from_str(digest),
        ) else {
            return false;
        };
        headers.insert(header::HOST, host);
        headers.insert(PEER_BODY, digest);
        headers.insert(PEER_NONCE, auth::next_nonce());
        let headers_digest = auth::headers_digest(req.headers());
        let value = auth::sign(
            &self.signing_secret(),
            unix_ms(),
            claims,
            &Signed {
                method: "POST",
                target: "/facts",
                headers: &headers_digest,
            },
        );
        let Ok(value) = HeaderValue::from_str(&value) else {
            return false;
        };
        req.headers_mut().insert(PEER_AUTH, value);
        match sender.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                // Read to its end so that the connection can carry the next message.
                if resp.into_body().collect().await.is_ok() && ok {
                    self.facts_pool.put(peer, sender);
                }
                ok
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "facts not acknowledged");
                false
            }
        }
    }
}

/// Takes an authenticated facts message (`claims` verified over its headers): checks the
/// body against the digest the MAC covered, takes the message once (`stamp`: 401 when it was
/// taken before) and hands the facts to the analyzer. The status to answer.
pub(super) async fn receive(
    router: &Router,
    shared: &Arc<Shared>,
    claims: &PeerClaims,
    stamp: Stamp,
    req: Request<Incoming>,
) -> StatusCode {
    let expected = req
        .headers()
        .get(PEER_BODY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_FACTS_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return invalid(router),
    };
    if expected.as_deref() != Some(hex(&Sha256::digest(&body)).as_str()) {
        return invalid(router);
    }
    if !router.first_time(stamp) {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return invalid(router);
    };
    let Ok(mut facts) = AddressFacts::deserialize(&value) else {
        return invalid(router);
    };
    // The entries read leniently (see `AddressFacts`) that were left out: malformed.
    let told = |name: &str| value.get(name).is_some_and(|v| !v.is_null());
    let malformed = usize::from(told("attempt") && facts.attempt.is_none())
        + usize::from(told("campaign_member") && facts.campaign_member.is_none());
    facts.values.truncate(MAX_RESPONSE_VALUES);
    facts.address = Some(claims.client_peer.ip());
    let skipped = malformed + shared.analyzer.remember_address_facts(&facts, unix_ms());
    router.metrics.facts.with_label_values(&["received"]).inc();
    if skipped > 0 {
        router
            .metrics
            .facts
            .with_label_values(&["skipped"])
            .inc_by(skipped as u64);
    }
    StatusCode::NO_CONTENT
}

fn invalid(router: &Router) -> StatusCode {
    router.metrics.facts.with_label_values(&["invalid"]).inc();
    StatusCode::BAD_REQUEST
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::AuthAttempt;

    #[test]
    fn a_body_stays_within_what_a_receiver_takes() {
        let attempt = AuthAttempt {
            operation: "POST /login".into(),
            at_ms: 1,
            identity: Some(7),
            failed: true,
        };
        // Values whose field paths make the body too large: sent without them.
        let facts = AddressFacts {
            operation: "GET /list".into(),
            values: (0..MAX_RESPONSE_VALUES)
                .map(|i| ("f".repeat(1024), format!("v{i}")))
                .collect(),
            attempt: Some(attempt.clone()),
            ..AddressFacts::default()
        };
        let body = body_of(&facts).unwrap();
        assert!(body.len() <= MAX_FACTS_BYTES);
        let sent: AddressFacts = serde_json::from_slice(&body).unwrap();
        assert!(sent.values.is_empty() && sent.operation.is_empty());
        assert_eq!(sent.attempt, Some(attempt));
        // Nothing else to tell: nothing sent.
        let only_values = AddressFacts {
            attempt: None,
            ..facts
        };
        assert!(body_of(&only_values).is_none());
        assert!(body_of(&AddressFacts::default()).is_none());
    }
}
