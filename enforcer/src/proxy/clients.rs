//! Slow-client limits: the proxy's connection cap, connections and requests in flight per
//! client address, and the minimum body rate ([`MinRateBody`]). Without them a few thousand
//! connections that each send one byte now and then hold every request permit and every file
//! descriptor of the process (docs/operations.md, "Slow clients").
//!
//! The table is keyed by client address, but holds an entry only while that address has a
//! connection or a request open: at most `maxConnections + maxConcurrentRequests` entries of a
//! fixed size, whatever the clients send.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;

const SHARDS: usize = 16;

/// What one address holds open.
#[derive(Default, Clone, Copy)]
struct Held {
    connections: u32,
    requests: u32,
}

/// Connections and requests per client address, and the proxy's connection count.
pub struct ClientLimits {
    shards: Vec<Mutex<HashMap<IpAddr, Held>>>,
    hasher: std::collections::hash_map::RandomState,
    connections: AtomicUsize,
    max_connections: usize,
}

/// Why a connection was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The proxy holds `maxConnections` connections.
    Total,
    /// The address holds `maxConnectionsPerClient` connections.
    Client,
}

impl ConnectionRefusal {
    /// The `reason` label of `ordo_client_limit_refusals_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Total => "connections",
            Self::Client => "client_connections",
        }
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (what one subscriber usually gets, so
/// that one client cannot take a fresh address per connection), IPv4-mapped IPv6 as IPv4.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl ClientLimits {
    pub fn new(max_connections: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            connections: AtomicUsize::new(0),
            max_connections: max_connections.max(1),
        }
    }

    /// The proxy's connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the proxy holds at least half of its connection cap: idle keep-alive
    /// connections then get `headerReadTimeout` instead of `idleTimeout`.
    pub fn under_pressure(&self) -> bool {
        self.connections().saturating_mul(2) >= self.max_connections
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, Held>> {
        let mut h = self.hasher.build_hasher();
        std::hash::Hash::hash(key, &mut h);
        let index = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        &self.shards[index % self.shards.len()]
    }

    /// Updates the entry of `key` with `f` (which says whether to go ahead), removing it
    /// when nothing is held any more.
    fn update(&self, key: IpAddr, f: impl FnOnce(&mut Held) -> bool) -> bool {
        let mut shard = self.shard(&key).lock();
        let held = shard.entry(key).or_default();
        let done = f(held);
        if held.connections == 0 && held.requests == 0 {
            shard.remove(&key);
        }
        done
    }

    /// Admits a connection from `peer`; `per_client` is the per-address cap (0: none).
    pub fn connect(
        self: &Arc<Self>,
        peer: IpAddr,
        per_client: usize,
    ) -> Result<ConnectionGuard, ConnectionRefusal> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnectionRefusal::Total);
        }
        if per_client == 0 {
            return Ok(ConnectionGuard {
                limits: Arc::clone(self),
                key: None,
            });
        }
        let key = client_key(peer);
        let cap = u32::try_from(per_client).unwrap_or(u32::MAX);
        let admitted = self.update(key, |held| {
            if held.connections >= cap {
                return false;
            }
            held.connections += 1;
            true
        });
        if !admitted {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnectionRefusal::Client);
        }
        Ok(ConnectionGuard {
            limits: Arc::clone(self),
            key: Some(key),
        })
    }

    /// Admits a request of `client`; `per_client` is the per-address cap (0: none). `None`
    /// when the address has that many requests in flight.
    pub fn request(self: &Arc<Self>, client: IpAddr, per_client: usize) -> Option<RequestGuard> {
        if per_client == 0 {
            return Some(RequestGuard { held: None });
        }
        let key = client_key(client);
        let cap = u32::try_from(per_client).unwrap_or(u32::MAX);
        let admitted = self.update(key, |held| {
            if held.requests >= cap {
                return false;
            }
            held.requests += 1;
            true
        });
        admitted.then(|| RequestGuard {
            held: Some((Arc::clone(self), key)),
        })
    }

    /// Addresses with something open (for tests of the table's bound).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// An admitted connection; dropping it frees its place.
pub struct ConnectionGuard {
    limits: Arc<ClientLimits>,
    key: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.limits.update(key, |held| {
                held.connections = held.connections.saturating_sub(1);
                true
            });
        }
        self.limits.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request; dropping it (when the response body is done) frees its place.
pub struct RequestGuard {
    held: Option<(Arc<ClientLimits>, IpAddr)>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some((limits, key)) = self.held.take() {
            limits.update(key, |held| {
                held.requests = held.requests.saturating_sub(1);
                true
            });
        }
    }
}

/// A request body that arrived slower than `limits.minBodyRate`.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {min_rate} bytes/s")]
pub struct BodyTooSlow {
    pub min_rate: u64,
}

/// Why a [`MinRateBody`] failed: a concrete error type (not a boxed one), so that the bodies
/// built on it convert their errors without higher-ranked bounds in the handler's future.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    TooSlow(#[from] BodyTooSlow),
    #[error("reading the request body: {0}")]
    Read(#[source] BoxError),
}

/// A request body that must keep up a minimum average rate: by `grace + n / min_rate` after
/// the body started, its `n`-th byte must have arrived. Checked by a timer, so a client that
/// sends nothing at all is cut too.
pub struct MinRateBody<B> {
    inner: B,
    min_rate: u64,
    started: Instant,
    grace: Duration,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    /// The deadline moves at most once per this many bytes (resetting a timer per small
    /// frame would cost more than the frame).
    next_reset_at: u64,
    failed: bool,
}

impl<B> MinRateBody<B> {
    /// `min_rate` 0: no minimum (the body is passed through).
    pub fn new(inner: B, min_rate: u64, grace: Duration) -> Self {
        let started = Instant::now();
        Self {
            inner,
            min_rate,
            started,
            grace,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
            next_reset_at: 0,
            failed: false,
        }
    }

    fn allowed(&self, bytes: u64) -> Duration {
        let ms = u128::from(bytes) * 1000 / u128::from(self.min_rate.max(1));
        self.grace
            .saturating_add(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    self.received = self.received.saturating_add(len);
                    if self.min_rate > 0 && self.received >= self.next_reset_at {
                        // A step of about a tenth of a second's worth of bytes.
                        let step = (self.min_rate / 10).max(1);
                        self.next_reset_at = self.received.saturating_add(step);
                        let at = self.started + self.allowed(self.received);
                        self.deadline.as_mut().reset(at);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Read(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.min_rate > 0 && self.deadline.as_mut().poll(cx).is_ready() {
                    self.failed = true;
                    let min_rate = self.min_rate;
                    return Poll::Ready(Some(Err(BodyTooSlow { min_rate }.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn connections_are_capped_per_address_and_in_total() {
        let limits = Arc::new(ClientLimits::new(5));
        let a: Vec<_> = (0..3).map(|_| limits.connect(v4(1), 3).unwrap()).collect();
        assert_eq!(
            limits.connect(v4(1), 3).err(),
            Some(ConnectionRefusal::Client)
        );
        let b: Vec<_> = (0..2).map(|_| limits.connect(v4(2), 3).unwrap()).collect();
        assert_eq!(
            limits.connect(v4(3), 3).err(),
            Some(ConnectionRefusal::Total)
        );
        assert_eq!(limits.connections(), 5);
        drop(a);
        assert_eq!(limits.connections(), 2);
        assert!(limits.connect(v4(1), 3).is_ok());
        drop(b);
        // Only addresses with something open are kept.
        assert_eq!(limits.tracked(), 0);
        assert_eq!(limits.connections(), 0);
    }

    #[test]
    fn requests_are_capped_per_address() {
        let limits = Arc::new(ClientLimits::new(10));
        let held: Vec<_> = (0..2).map(|_| limits.request(v4(1), 2).unwrap()).collect();
        assert!(limits.request(v4(1), 2).is_none());
        assert!(limits.request(v4(2), 2).is_some());
        assert!(limits.request(v4(1), 0).is_some(), "0 is no cap");
        drop(held);
        assert!(limits.request(v4(1), 2).is_some());
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let limits = Arc::new(ClientLimits::new(10));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_host: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = limits.connect(one, 1).unwrap();
        assert_eq!(
            limits.connect(other_host, 1).err(),
            Some(ConnectionRefusal::Client)
        );
        assert!(limits.connect(other_net, 1).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _b = limits.connect(v4(1), 1).unwrap();
        assert_eq!(
            limits.connect(mapped, 1).err(),
            Some(ConnectionRefusal::Client)
        );
    }

    /// A body of `frames` frames of `size` bytes, one every `every`.
    fn trickle(
        frames: usize,
        size: usize,
        every: Duration,
    ) -> http_body_util::StreamBody<
        futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
    > {
        use futures::StreamExt as _;
        let stream = futures::stream::iter(0..frames)
            .then(move |_| async move {
                tokio::time::sleep(every).await;
                Ok(Frame::data(Bytes::from(vec![b'x'; size])))
            })
            .boxed();
        http_body_util::StreamBody::new(stream)
    }

    // Real time (the runtime's paused clock needs a tokio feature the crate does not use);
    // the bounds leave a margin of several times what a loaded machine adds.
    #[tokio::test]
    async fn a_trickling_body_is_cut_after_the_grace() {
        use http_body_util::BodyExt as _;
        // 20 bytes/s against a minimum of 100 bytes/s: cut a little after the 300 ms grace.
        let body = MinRateBody::new(
            trickle(100, 1, Duration::from_millis(50)),
            100,
            Duration::from_millis(300),
        );
        let started = Instant::now();
        let Err(err) = body.collect().await else {
            panic!("the body must be cut");
        };
        assert!(matches!(err, ClientBodyError::TooSlow(_)), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_body_above_the_rate_is_whole() {
        use http_body_util::BodyExt as _;
        // 800 bytes/s for 1 s against a minimum of 100 bytes/s.
        let body = MinRateBody::new(
            trickle(20, 40, Duration::from_millis(50)),
            100,
            Duration::from_millis(100),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 800);
    }

    #[tokio::test]
    async fn a_silent_body_is_cut_by_the_timer() {
        use http_body_util::BodyExt as _;
        let body = MinRateBody::new(
            trickle(1, 1, Duration::from_secs(3600)),
            100,
            Duration::from_millis(300),
        );
        let started = Instant::now();
        assert!(body.collect().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn no_minimum_passes_a_slow_body() {
        use http_body_util::BodyExt as _;
        let body = MinRateBody::new(trickle(3, 1, Duration::from_millis(200)), 0, Duration::ZERO);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
    }
}
