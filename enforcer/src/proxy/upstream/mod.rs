//! Keep-alive HTTP/1.1 connections to the protected Service, driven by the request's own task.
//!
//! Why not hyper's client: with it, every request crossed to the connection's own task over a
//! channel, and the response head and every body chunk came back over two more; the request
//! head went through a header map built for it and the response through hyper's dispatcher on
//! both sides (in the CPU profiles behind docs/benchmarks.md, the upstream connection task
//! alone was ~8 % of the proxy's CPU). A proxy in front of one upstream can do what nginx
//! does instead: the task that decided the request writes its head (and body) on a pooled
//! connection, reads the response head, and hands the client a body that reads the rest from
//! the same connection. A response whose body arrived with its head (most API responses) is
//! answered from memory and its connection is back in the pool before the client has it.
//!
//! Connections are kept per proxy worker (a shard each), since a socket belongs to the runtime
//! that opened it. An idle connection that the upstream closed is noticed from the readiness the
//! runtime already recorded (no system call) and dropped before use; when the close races with
//! reuse and nothing was answered, an idempotent request with a body in memory is sent again on
//! another connection (what nginx does; a POST is not, and gets a 502).
//!
//! The request body is written before the response is read: an upstream that answers early and
//! stops reading a large body ends the exchange with an error (or the upstream timeout), not
//! with its early answer.

mod body;
pub(super) mod chunked;
pub(super) mod codec;

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::UpstreamBody;
use body::{Decoder, Giveback, Streaming};
use chunked::ChunkedDecoder;
pub use codec::ProtocolError;
use codec::{Parsed, RequestFraming, ResponseFraming, ResponseHead};

use super::body::{BoxError, ProxyBody};

thread_local! {
    /// The proxy worker this thread runs (0 outside the worker threads); picks the shard.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as proxy worker `index` (the runtime starts one per worker).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Read buffer of a connection; a response head and a typical API body fit in one read.
const READ_BUFFER: usize = 16 * 1024;
/// Free space below which the read buffer is grown before a read.
const MIN_READ_SPACE: usize = 4 * 1024;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream response: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading the client's body failed (too large, client gone); the source says which.
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
}

/// A request for the upstream: its head up to the framing (request line and header field
/// lines, origin-form target, `Host` included, no hop-by-hop fields) and its body.
pub struct UpstreamRequest {
    pub method: Method,
    pub head: Vec<u8>,
    pub body: RequestBody,
}

impl UpstreamRequest {
    /// A request whose head holds the request line; the caller appends the field lines.
    pub fn new(method: Method, target: &str, body: RequestBody) -> Self {
        let mut head = Vec::with_capacity(1024);
        codec::encode_request_line(&method, target, &mut head);
        Self { method, head, body }
    }

    /// A request with the field lines of `headers` (without the framing ones); the proxy
    /// writes its field lines itself (`headers::write_forwarded`).
    #[cfg(test)]
    pub fn with_headers(
        method: Method,
        target: &str,
        headers: &http::HeaderMap,
        body: RequestBody,
    ) -> Self {
        let mut req = Self::new(method, target, body);
        codec::encode_fields(headers, &mut req.head);
        req
    }
}

/// The body to forward: in memory (read for the checks, or empty) or streamed from the client.
pub enum RequestBody {
    Buffered(Bytes),
    Streaming(ProxyBody),
}

impl RequestBody {
    /// The exact length when known.
    fn exact_len(&self) -> Option<u64> {
        match self {
            Self::Buffered(b) => Some(b.len() as u64),
            Self::Streaming(b) => b.size_hint().exact(),
        }
    }
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

/// One connection to the upstream and what was read from it but not consumed yet.
pub(super) struct Connection {
    stream: TcpStream,
    read_buf: BytesMut,
}

impl Connection {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read_buf: BytesMut::with_capacity(READ_BUFFER),
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. Reads the readiness the runtime recorded; only a connection that
    /// turned readable while idle costs a (non-blocking) read.
    fn usable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn reserve_read_space(&mut self) {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ_SPACE {
            self.read_buf.reserve(READ_BUFFER);
        }
    }

    /// Writes the head and the body (head and a body in memory in one `writev`).
    async fn write_request(
        &mut self,
        head: &[u8],
        body: &mut RequestBody,
        framing: RequestFraming,
    ) -> Result<(), UpstreamError> {
        match body {
            RequestBody::Buffered(bytes) if bytes.is_empty() => self.stream.write_all(head).await?,
            RequestBody::Buffered(bytes) => {
                let mut message = Buf::chain(head, bytes.clone());
                self.stream.write_all_buf(&mut message).await?;
            }
            RequestBody::Streaming(body) => {
                self.stream.write_all(head).await?;
                let chunked = framing == RequestFraming::Chunked;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(UpstreamError::RequestBody)?;
                    let Ok(data) = frame.into_data() else {
                        continue; // Trailers are not forwarded.
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        let size = format!("{:x}\r\n", data.len());
                        let mut piece = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
                        self.stream.write_all_buf(&mut piece).await?;
                    } else {
                        let mut piece = data;
                        self.stream.write_all_buf(&mut piece).await?;
                    }
                }
                if chunked {
                    self.stream.write_all(b"0\r\n\r\n").await?;
                }
            }
        }
        Ok(())
    }

    /// Reads up to the final response head, skipping interim (1xx) responses.
    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, Failure> {
        let mut received = false;
        loop {
            if !self.read_buf.is_empty() {
                received = true;
                match codec::parse_response_head(&self.read_buf, method) {
                    Ok(Parsed::Complete { head, len }) => {
                        self.read_buf.advance(len);
                        return Ok(head);
                    }
                    Ok(Parsed::Informational { len }) => {
                        self.read_buf.advance(len);
                        continue;
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(Failure::answered(e.into())),
                }
            }
            self.reserve_read_space();
            let read = self.stream.read_buf(&mut self.read_buf).await;
            match read {
                Ok(0) => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before answering",
                    );
                    return Err(Failure {
                        error: error.into(),
                        answered_nothing: !received,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure {
                        error: e.into(),
                        answered_nothing: !received,
                    });
                }
            }
        }
    }
}

/// An exchange that failed, and whether the upstream answered anything before it did.
struct Failure {
    error: UpstreamError,
    answered_nothing: bool,
}

impl Failure {
    fn answered(error: UpstreamError) -> Self {
        Self {
            error,
            answered_nothing: false,
        }
    }
}

struct IdleConnection {
    conn: Connection,
    since: Instant,
}

pub(super) struct PoolInner {
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

    /// Sends `req` and returns the response; its body gives the connection back to the pool
    /// once read to the end.
    pub async fn send(
        &self,
        req: UpstreamRequest,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let shard = WORKER.with(Cell::get) % self.inner.shards.len();
        let UpstreamRequest {
            method,
            mut head,
            mut body,
        } = req;
        let framing = RequestFraming::of(&method, body.exact_len());
        codec::finish_head(framing, &mut head);
        let resendable = matches!(body, RequestBody::Buffered(_)) && codec::is_idempotent(&method);

        while let Some(conn) = self.inner.take_idle(shard) {
            match self
                .exchange(conn, &head, &mut body, framing, &method, shard)
                .await
            {
                Ok(response) => return Ok(response),
                Err(f) if f.answered_nothing && resendable => {
                    tracing::debug!(error = %f.error, "pooled upstream connection was closed; sending again");
                }
                Err(f) => return Err(f.error),
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, &head, &mut body, framing, &method, shard)
            .await
            .map_err(|f| f.error)
    }

    /// The upstream's `host:port`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.inner.settings.authority
    }

    /// Closes idle connections kept longer than `idle_timeout` and those the upstream closed
    /// meanwhile, which would otherwise hold their socket until then (called by housekeeping
    /// once a second; a checkout does not read the clock).
    pub fn evict_idle(&self) {
        let timeout = self.inner.settings.idle_timeout;
        for shard in &self.inner.shards {
            shard
                .lock()
                .retain_mut(|c| c.since.elapsed() < timeout && c.conn.usable());
        }
    }

    /// Idle connections now in the pool.
    pub fn idle(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    async fn connect(&self) -> Result<Connection, UpstreamError> {
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
        .map_err(|_| connect_error(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")))?
        .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(Connection::new(stream))
    }

    /// One request and response head on `conn`.
    async fn exchange(
        &self,
        mut conn: Connection,
        head: &[u8],
        body: &mut RequestBody,
        framing: RequestFraming,
        method: &Method,
        shard: usize,
    ) -> Result<Response<UpstreamBody>, Failure> {
        if let Err(error) = conn.write_request(head, body, framing).await {
            // A write fails on a connection the upstream closed: nothing was answered.
            let answered_nothing = matches!(error, UpstreamError::Io(_));
            return Err(Failure {
                error,
                answered_nothing,
            });
        }
        let head = conn.read_head(method).await?;
        Ok(self.respond(conn, head, shard))
    }

    /// The response for the client, with a body in memory when it is all there already.
    fn respond(
        &self,
        mut conn: Connection,
        head: ResponseHead,
        shard: usize,
    ) -> Response<UpstreamBody> {
        let giveback = head.keep_alive.then(|| Giveback {
            pool: Arc::clone(&self.inner),
            shard,
        });
        let body = match head.framing {
            ResponseFraming::Empty => {
                if let Some(g) = giveback {
                    g.give(conn);
                }
                UpstreamBody::full(Bytes::new())
            }
            ResponseFraming::Length(n) if conn.read_buf.len() as u64 >= n => {
                let bytes = conn
                    .read_buf
                    .split_to(usize::try_from(n).unwrap_or(usize::MAX))
                    .freeze();
                if let Some(g) = giveback {
                    g.give(conn);
                }
                UpstreamBody::full(bytes)
            }
            framing => {
                let decoder = match framing {
                    ResponseFraming::Length(n) => Decoder::Length(n),
                    ResponseFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
                    _ => Decoder::UntilClose,
                };
                UpstreamBody::streaming(Streaming {
                    conn: Some(conn),
                    decoder,
                    giveback,
                })
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = head.headers;
        response
    }
}

impl PoolInner {
    /// The most recently used idle connection of `shard` that is still usable.
    fn take_idle(&self, shard: usize) -> Option<Connection> {
        let mut idle = self.shards[shard].lock();
        while let Some(mut c) = idle.pop() {
            if c.conn.usable() {
                return Some(c.conn);
            }
        }
        None
    }

    pub(super) fn put_idle(&self, shard: usize, conn: Connection) {
        let mut idle = self.shards[shard].lock();
        if idle.len() < self.max_idle_per_shard {
            idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Request;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const BIG: usize = 1 << 20;

    /// A keep-alive HTTP/1.1 upstream (hyper) that counts the connections it accepted. It
    /// answers `got N bytes`; `/big` answers 1 MiB, `/chunked` three chunks of unknown length.
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
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let response: Response<ProxyBody> = match path.as_str() {
                            "/big" => Response::new(
                                Full::new(Bytes::from(vec![b'x'; BIG]))
                                    .map_err(|e| match e {})
                                    .boxed_unsync(),
                            ),
                            "/chunked" => {
                                let pieces = ["one ", "two ", "three"].map(|p| {
                                    Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(p)))
                                });
                                Response::new(
                                    StreamBody::new(futures::stream::iter(pieces)).boxed_unsync(),
                                )
                            }
                            _ => Response::new(
                                Full::new(Bytes::from(format!("got {} bytes", body.len())))
                                    .map_err(|e| match e {})
                                    .boxed_unsync(),
                            ),
                        };
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// A raw upstream: for every request head it reads, writes `answer`; closes the connection
    /// after each answer when `close` is set (without saying so when the answer does not).
    async fn raw_upstream(answer: &'static str, close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
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
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.clear();
                        if stream.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
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

    fn request(method: Method, path: &str, body: RequestBody) -> UpstreamRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("upstream"),
        );
        UpstreamRequest::with_headers(method, path, &headers, body)
    }

    fn post(body: &'static str) -> UpstreamRequest {
        request(
            Method::POST,
            "/items",
            RequestBody::Buffered(Bytes::from(body)),
        )
    }

    fn get(path: &str) -> UpstreamRequest {
        request(Method::GET, path, RequestBody::Buffered(Bytes::new()))
    }

    async fn send_and_read(pool: &UpstreamPool, req: UpstreamRequest) -> (u16, Bytes) {
        let resp = pool.send(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..50 {
            let (status, body) = send_and_read(&pool, post("hello")).await;
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
                    tokio::spawn(async move { send_and_read(&pool, post("")).await.0 })
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
    async fn streamed_bodies_of_every_framing_arrive_whole_and_free_their_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..3 {
            let (_, big) = send_and_read(&pool, get("/big")).await;
            assert_eq!(big.len(), BIG);
            assert!(big.iter().all(|&b| b == b'x'));
            let (_, chunked) = send_and_read(&pool, get("/chunked")).await;
            assert_eq!(&chunked[..], b"one two three");
            // A request body of unknown length goes out chunked.
            let pieces = ["ab", "", "cde"]
                .map(|p| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(p))));
            let body = RequestBody::Streaming(
                StreamBody::new(futures::stream::iter(pieces)).boxed_unsync(),
            );
            let (_, got) = send_and_read(&pool, request(Method::POST, "/items", body)).await;
            assert_eq!(&got[..], b"got 5 bytes");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_replaced() {
        // Keep-alive style answers (no `Connection: close`), then the upstream closes: every
        // pooled connection goes stale, and each GET still gets its answer.
        let (addr, accepted) =
            raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..20 {
            let (status, body) = send_and_read(&pool, get("/")).await;
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_close_delimited_bodies_read_to_the_end() {
        let answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nuntil the end";
        let (addr, accepted) = raw_upstream(answer, true).await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..2 {
            let resp = pool.send(post("x")).await.unwrap();
            assert_eq!(resp.headers()["x-a"], "1");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"until the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn head_responses_have_no_body_and_keep_the_connection() {
        let (addr, accepted) =
            raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n", false).await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..3 {
            let resp = pool
                .send(request(
                    Method::HEAD,
                    "/",
                    RequestBody::Buffered(Bytes::new()),
                ))
                .await
                .unwrap();
            assert_eq!(resp.headers()["content-length"], "42");
            assert!(resp.body().is_end_stream());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_and_their_connection_is_dropped() {
        let (addr, _) =
            raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx", false).await;
        let pool = pool(addr, Duration::from_secs(60));
        let err = pool.send(get("/")).await.err().unwrap();
        assert!(
            matches!(
                err,
                UpstreamError::Protocol(ProtocolError::BadContentLength)
            ),
            "{err}"
        );
        assert_eq!(pool.idle(), 0);
        let (addr, _) = raw_upstream(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello",
            false,
        )
        .await;
        let pool = super::tests::pool(addr, Duration::from_secs(60));
        let resp = pool.send(get("/")).await.unwrap();
        assert!(resp.into_body().collect().await.is_err());
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_millis(50));
        send_and_read(&pool, get("/")).await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        pool.evict_idle();
        assert_eq!(pool.idle(), 0);
        send_and_read(&pool, get("/")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_evicted() {
        let (addr, _) = raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        let pool = pool(addr, Duration::from_secs(60));
        send_and_read(&pool, get("/")).await;
        assert_eq!(pool.idle(), 1);
        // The upstream's close reaches the runtime's readiness after a turn of its driver.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            pool.evict_idle();
            if pool.idle() == 0 {
                return;
            }
        }
        panic!("the closed connection stayed in the pool");
    }

    #[tokio::test]
    async fn an_unread_streamed_response_does_not_return_its_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pool = pool(addr, Duration::from_secs(60));
        drop(pool.send(get("/big")).await.unwrap());
        assert_eq!(pool.idle(), 0);
        send_and_read(&pool, get("/")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
