//! Keep-alive HTTP/1.1 connections to the protected Service.
//!
//! Why not hyper-util's legacy `Client`: for every request it hashes a pool key, goes through a
//! shared checkout future and spawns one more task that waits for the connection to be idle
//! again before putting it back (issue 7's profile). A proxy in front of one upstream needs
//! none of that. Here a request takes the most recently used idle connection of its worker's
//! shard, sends on it, and the connection returns to the shard when the response body has been
//! read to its end — by the same task, without a spawn. Each connection is driven by its own
//! task on the runtime that opened it; shards keep a worker's requests on its own connections
//! so that no request waits for a task of another thread.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ProxyBody;

thread_local! {
    /// The proxy worker this thread runs (0 outside the worker threads); picks the shard.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as proxy worker `index` (see [`crate::proxy::StartOptions`]).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// Not `transparent`: the handler looks for the `hyper::Error` among the sources.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Settings of the pool (from `upstream` in the config).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `host:port` to connect to.
    pub authority: http::uri::Authority,
    pub connect_timeout: Duration,
    /// Idle connections kept, over all shards.
    pub max_idle: usize,
    pub idle_timeout: Duration,
    /// One shard per proxy worker.
    pub shards: usize,
}

struct IdleConnection {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

struct PoolInner {
    settings: PoolSettings,
    max_idle_per_shard: usize,
    shards: Box<[Mutex<Vec<IdleConnection>>]>,
}

/// The upstream connection pool. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<PoolInner>,
}

impl UpstreamPool {
    pub fn new(settings: PoolSettings) -> Self {
        let shards = settings.shards.max(1);
        let max_idle_per_shard = settings.max_idle.div_ceil(shards);
        Self {
            inner: Arc::new(PoolInner {
                max_idle_per_shard,
                shards: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
                settings,
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) and returns the response head; its body gives
    /// the connection back to the pool once read to the end. A request that an idle connection
    /// could not take (closed by the upstream meanwhile) goes on the next one, or a new one.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<http::Response<PooledBody>, UpstreamError> {
        let shard = WORKER.with(Cell::get) % self.inner.shards.len();
        while let Some(mut sender) = self.inner.take_idle(shard) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender, shard)),
                Err(mut failed) => match failed.take_message() {
                    // Not written: the connection closed before it could take the request.
                    Some(unsent) => req = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        Ok(self.wrap(resp, sender, shard))
    }

    /// The upstream's `host:port`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.inner.settings.authority
    }

    /// Closes idle connections kept longer than `idle_timeout` (called by housekeeping once a
    /// second; a checkout does not read the clock).
    pub fn evict_idle(&self) {
        let timeout = self.inner.settings.idle_timeout;
        for shard in &self.inner.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
        }
    }

    /// Idle connections now in the pool.
    pub fn idle(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let authority = &self.inner.settings.authority;
        let connect_error = |source| UpstreamError::Connect {
            authority: authority.to_string(),
            source,
        };
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            self.inner.settings.connect_timeout,
            TcpStream::connect((authority.host(), port)),
        )
        .await
        .map_err(|_| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timeout",
            ))
        })?
        .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn wrap(
        &self,
        resp: http::Response<Incoming>,
        sender: SendRequest<ProxyBody>,
        shard: usize,
    ) -> http::Response<PooledBody> {
        resp.map(|body| {
            let mut pooled = PooledBody {
                inner: body,
                giveback: Some(Giveback {
                    sender,
                    pool: Arc::clone(&self.inner),
                    shard,
                }),
            };
            if pooled.inner.is_end_stream() {
                pooled.give_back();
            }
            pooled
        })
    }
}

impl PoolInner {
    fn take_idle(&self, shard: usize) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_idle(&self, shard: usize, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle_per_shard {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }
}

struct Giveback {
    sender: SendRequest<ProxyBody>,
    pool: Arc<PoolInner>,
    shard: usize,
}

/// An upstream response body that returns its connection to the pool when read to the end.
/// Dropped early (the client went away), it drops the connection instead: hyper closes a
/// connection whose response was not read.
pub struct PooledBody {
    inner: Incoming,
    giveback: Option<Giveback>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(g) = self.giveback.take() {
            g.pool.put_idle(g.shard, g.sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.giveback = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A keep-alive HTTP/1.1 upstream that counts the connections it accepted.
    async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                            "got {} bytes",
                            body.len()
                        )))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// An upstream that answers one request per connection, keep-alive style (no
    /// `Connection: close`), then closes the socket: every pooled connection goes stale.
    async fn one_shot_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool(addr: SocketAddr, idle_timeout: Duration) -> UpstreamPool {
        UpstreamPool::new(PoolSettings {
            authority: addr.to_string().parse().unwrap(),
            connect_timeout: Duration::from_secs(2),
            max_idle: 8,
            idle_timeout,
            shards: 1,
        })
    }

    fn request(body: &'static str) -> Request<ProxyBody> {
        let body: ProxyBody = if body.is_empty() {
            Empty::new().map_err(|e| match e {}).boxed_unsync()
        } else {
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync()
        };
        Request::post("/items")
            .header(http::header::HOST, "upstream")
            .body(body)
            .unwrap()
    }

    async fn send_and_read(pool: &UpstreamPool, body: &'static str) -> (u16, Bytes) {
        let resp = pool.send(request(body)).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..50 {
            let (status, body) = send_and_read(&pool, "hello").await;
            assert_eq!((status, &body[..]), (200, &b"got 5 bytes"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_at_most_one_connection_each() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..5 {
            let waves: Vec<_> = (0..6)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { send_and_read(&pool, "").await.0 })
                })
                .collect();
            for w in waves {
                assert_eq!(w.await.unwrap(), 200);
            }
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=6).contains(&opened), "{opened} connections");
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_replaced() {
        let (addr, accepted) = one_shot_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..20 {
            let (status, body) = send_and_read(&pool, "").await;
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_millis(50));
        send_and_read(&pool, "").await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        pool.evict_idle();
        assert_eq!(pool.idle(), 0);
        send_and_read(&pool, "").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unread_response_does_not_return_its_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        drop(pool.send(request("abc")).await.unwrap());
        assert_eq!(pool.idle(), 0);
        send_and_read(&pool, "").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
