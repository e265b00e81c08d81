//! A small HTTP/1.1 keep-alive load generator for what wrk cannot do: the fixed-rate latency
//! run and the bounded pre-warm of the session table.
//!
//! Fixed rate (open loop, as wrk2 does it): request `i` is due at `start + i / rate`. A pacer
//! thread (`std::thread::sleep`, ~0.1 ms precision, unlike tokio's 1 ms timer wheel) hands due
//! requests to the connections round-robin; a connection that is still busy queues them. The
//! latency of a request is measured from the time it was *due*, not from when it was sent, so
//! a stalled target is charged for every request it held back (no coordinated omission).
//!
//! Requests come from [`crate::mix`]: request `k` goes to session `k mod n` of the slice, at
//! that session's next step of the cycle, so one session's consecutive requests are `n`
//! requests apart and never in flight together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::mix::{SessionVars, request};
use crate::scenario::HOST as HOST_NAME;
use crate::sessions::PooledSession;

/// Produces request number `k` of a run.
pub trait RequestSource: Send + Sync + 'static {
    fn build(&self, k: u64) -> anyhow::Result<Request<Full<Bytes>>>;
}

/// The banking mix over a slice of the session pool: request `k` goes to session `k mod n`
/// at cycle step `start_step + k / n`.
#[derive(Debug, Clone)]
pub struct MixSource {
    pub sessions: Arc<Vec<PooledSession>>,
    /// Cycle step of every session's first request.
    pub start_step: usize,
}

impl RequestSource for MixSource {
    fn build(&self, k: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        anyhow::ensure!(!self.sessions.is_empty(), "no sessions");
        let n = self.sessions.len() as u64;
        let session = &self.sessions[usize::try_from(k % n)?];
        let step = self.start_step + usize::try_from(k / n)?;
        mix_request(
            &session.vars,
            step,
            (AUTHORIZATION, session.authorization.as_str()),
        )
    }
}

/// One request per session for `first + k`, the session named by a plain header (no token to
/// sign or hold): fills the enforcer's session table cheaply for the memory measurement.
#[derive(Debug, Clone)]
pub struct DistinctSessionsSource {
    pub first: u64,
    pub header: http::HeaderName,
    pub step: usize,
}

impl RequestSource for DistinctSessionsSource {
    fn build(&self, k: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        let vars = SessionVars::for_index(self.first + k);
        mix_request(&vars, self.step, (self.header.clone(), vars.sub.as_str()))
    }
}

/// Requests spread over `a_values x b_values` distinct operations
/// `GET /api/v2/<a>/<b>/items` (each position holds few literal values, so each pair stays
/// its own operation), for the memory cost of a learned operation.
#[derive(Debug, Clone)]
pub struct DistinctOperationsSource {
    pub a_values: u64,
    pub b_values: u64,
    pub sessions: u64,
}

/// Literal path segments for [`DistinctOperationsSource`].
pub const SEGMENT_WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray",
];

impl RequestSource for DistinctOperationsSource {
    fn build(&self, k: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        let ops = (self.a_values * self.b_values).max(1);
        let op = k % ops;
        let a = SEGMENT_WORDS[usize::try_from(op / self.b_values.max(1))? % SEGMENT_WORDS.len()];
        let b = SEGMENT_WORDS[usize::try_from(op % self.b_values.max(1))? % SEGMENT_WORDS.len()];
        let session = (k / ops) % self.sessions.max(1);
        let page = 1 + (k / ops) % 5;
        Ok(Request::builder()
            .method("GET")
            .uri(format!(
                "/api/v2/{a}/{b}/items?page={page}&pageSize=20&sort=name"
            ))
            .header(HOST, HOST_NAME)
            .header(USER_AGENT, "ordo-bench/1 (bank-app)")
            .header("x-session-id", format!("ops-{session}"))
            .body(Full::new(Bytes::new()))?)
    }
}

fn mix_request(
    vars: &SessionVars,
    step: usize,
    identity: (http::HeaderName, &str),
) -> anyhow::Result<Request<Full<Bytes>>> {
    let r = request(vars, step);
    let mut builder = Request::builder()
        .method(r.method)
        .uri(r.path)
        .header(HOST, HOST_NAME)
        .header(USER_AGENT, "ordo-bench/1 (bank-app)")
        .header(identity.0, identity.1);
    let body = match r.body {
        Some(b) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(b)
        }
        None => Bytes::new(),
    };
    Ok(builder.body(Full::new(body))?)
}

/// What to send, where, over how many keep-alive connections.
#[derive(Clone)]
pub struct Workload {
    pub target: SocketAddr,
    pub source: Arc<dyn RequestSource>,
    pub connections: usize,
}

impl Workload {
    /// The banking mix over `sessions` from `start_step`.
    pub fn mix(
        target: SocketAddr,
        sessions: Arc<Vec<PooledSession>>,
        start_step: usize,
        connections: usize,
    ) -> Self {
        Self {
            target,
            source: Arc::new(MixSource {
                sessions,
                start_step,
            }),
            connections,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Connection or protocol errors, or no response within [`REQUEST_TIMEOUT`].
    pub errors: u64,
    /// Fixed rate only: requests still queued when the run's grace period ended (the target
    /// could not keep up); they are not sent and count as failures of the target.
    pub dropped: u64,
    pub latency_us: LatencySummary,
}

impl LoadReport {
    /// Responses of 400 or more.
    pub fn non_2xx(&self) -> u64 {
        self.status_4xx + self.status_5xx
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Default)]
struct Counters {
    s2: AtomicU64,
    s3: AtomicU64,
    s4: AtomicU64,
    s5: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn record(&self, status: u16) {
        let c = match status {
            200..=299 => &self.s2,
            300..=399 => &self.s3,
            400..=499 => &self.s4,
            _ => &self.s5,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A latency histogram in µs (1 µs to 60 s, 3 significant digits); every run's has these
/// bounds, so that the rounds of a fixed-rate measurement can be added together.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// A request without a complete response after this long counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a fixed-rate run may overrun its duration to drain queued requests.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One keep-alive connection that reconnects after an error.
struct Conn {
    target: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: SocketAddr) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    async fn ready(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.target).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        sender.ready().await?;
        Ok(sender)
    }

    /// Sends one request and reads the whole response; returns the status.
    async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let exchange = async {
            let sender = self.ready().await?;
            let response = sender.send_request(req).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            Ok::<_, anyhow::Error>(status)
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}")),
        };
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// Builds request number `k` of the workload.
pub fn build_request(w: &Workload, k: u64) -> anyhow::Result<Request<Full<Bytes>>> {
    w.source.build(k)
}

/// Sends requests `0..total` one after the other and returns `(method, path, status)` of each
/// (status 0 when no response came): the smoke check that a target answers the whole mix.
pub async fn run_checked(w: &Workload, total: u64) -> anyhow::Result<Vec<(String, String, u16)>> {
    let mut conn = Conn::new(w.target);
    let mut out = Vec::new();
    for k in 0..total {
        let req = build_request(w, k)?;
        let (method, path) = (req.method().to_string(), req.uri().to_string());
        let status = conn.send(req).await.unwrap_or(0);
        out.push((method, path, status));
    }
    Ok(out)
}

/// `GET path` on `addr` (the enforcer's admin API): status and body.
pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri(path)
        .header(HOST, "localhost")
        .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req)).await??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await??
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `total` requests as fast as `connections` keep-alive connections allow (closed loop).
pub async fn run_closed(w: Workload, total: u64) -> anyhow::Result<LoadReport> {
    let next = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(Counters::default());
    let w = Arc::new(w);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..w.connections.max(1) {
        let (next, counters, w) = (next.clone(), counters.clone(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let mut conn = Conn::new(w.target);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let req = build_request(&w, k)?;
                let sent = Instant::now();
                match conn.send(req).await {
                    Ok(status) => {
                        counters.record(status);
                        hist.saturating_record(micros(sent.elapsed()));
                    }
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut hist = new_histogram()?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(report(&counters, &hist, start.elapsed()))
}

/// Sends at `rate` requests per second for `duration` (open loop, latency from the due time).
pub async fn run_fixed_rate(
    w: Workload,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    Ok(run_fixed_rate_recorded(w, rate, duration).await?.0)
}

/// [`run_fixed_rate`], also returning the latency histogram (to merge several rounds).
pub async fn run_fixed_rate_recorded(
    w: Workload,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(LoadReport, Histogram<u64>)> {
    anyhow::ensure!(rate > 0.0, "rate must be positive");
    let connections = w.connections.max(1);
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let counters = Arc::new(Counters::default());
    let w = Arc::new(w);
    let mut senders = Vec::with_capacity(connections);
    let mut tasks = Vec::with_capacity(connections);
    let (start_tx, start_rx) =
        tokio::sync::watch::channel::<(Instant, Instant)>((Instant::now(), Instant::now()));
    for _ in 0..connections {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
        senders.push(tx);
        let (counters, w, start_rx) = (counters.clone(), w.clone(), start_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let mut conn = Conn::new(w.target);
            // Open the connection before the clock starts.
            let _ = conn.ready().await;
            while let Some((k, due)) = rx.recv().await {
                let deadline = start_rx.borrow().1;
                if Instant::now() > deadline {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let req = build_request(&w, k)?;
                match conn.send(req).await {
                    Ok(status) => {
                        counters.record(status);
                        hist.saturating_record(micros(due.elapsed()));
                    }
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    // Let the connections open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let _ = start_tx.send((start, start + duration + DRAIN_GRACE));
    let pacer = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut k = 0u64;
        while k < total {
            let due = start + interval.mul_f64(k as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // Hand over everything due by now (batches when the thread woke late).
            let now = Instant::now();
            while k < total {
                let due = start + interval.mul_f64(k as f64);
                if due > now {
                    break;
                }
                let conn = usize::try_from(k % senders.len() as u64).unwrap_or(0);
                if senders[conn].send((k, due)).is_err() {
                    return;
                }
                k += 1;
            }
        }
    });
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;
    let mut hist = new_histogram()?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let report = report(&counters, &hist, start.elapsed());
    Ok((report, hist))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn report(c: &Counters, hist: &Histogram<u64>, elapsed: Duration) -> LoadReport {
    let (s2, s3, s4, s5) = (
        c.s2.load(Ordering::Relaxed),
        c.s3.load(Ordering::Relaxed),
        c.s4.load(Ordering::Relaxed),
        c.s5.load(Ordering::Relaxed),
    );
    let requests = s2 + s3 + s4 + s5;
    let secs = elapsed.as_secs_f64();
    LoadReport {
        requests,
        duration_s: secs,
        rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        status_2xx: s2,
        status_3xx: s3,
        status_4xx: s4,
        status_5xx: s5,
        errors: c.errors.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        latency_us: LatencySummary::from_histogram(hist),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::SessionVars;

    fn sessions(n: u64) -> Arc<Vec<PooledSession>> {
        Arc::new(
            (0..n)
                .map(|i| PooledSession {
                    authorization: format!("Bearer t{i}"),
                    vars: SessionVars::for_index(i),
                })
                .collect(),
        )
    }

    async fn upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::upstream::serve(listener));
        addr
    }

    #[test]
    fn requests_walk_each_session_through_the_cycle() {
        let w = Workload::mix("127.0.0.1:1".parse().unwrap(), sessions(3), 1, 1);
        let r0 = build_request(&w, 0).unwrap();
        let r3 = build_request(&w, 3).unwrap();
        assert_eq!(r0.uri().path(), "/api/v1/accounts");
        assert_eq!(r0.headers()[AUTHORIZATION], "Bearer t0");
        assert_eq!(r3.uri().path(), "/api/v1/accounts/40000000");
        assert_eq!(r3.headers()[AUTHORIZATION], "Bearer t0");
        let r1 = build_request(&w, 1).unwrap();
        assert_eq!(r1.headers()[AUTHORIZATION], "Bearer t1");
    }

    #[tokio::test]
    async fn closed_loop_sends_exactly_the_total() {
        let addr = upstream().await;
        let w = Workload::mix(addr, sessions(10), 0, 4);
        let r = run_closed(w, 500).await.unwrap();
        assert_eq!(r.requests, 500);
        assert_eq!(r.status_2xx, 500);
        assert_eq!(r.errors, 0);
        assert!(r.latency_us.p50 > 0);
    }

    #[tokio::test]
    async fn fixed_rate_holds_the_rate() {
        let addr = upstream().await;
        let w = Workload::mix(addr, sessions(10), 0, 4);
        let r = run_fixed_rate(w, 1000.0, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(r.requests, 500);
        assert_eq!(r.status_2xx, 500);
        // 500 requests at 1000/s take about half a second, not much less.
        assert!(r.duration_s >= 0.45, "{}", r.duration_s);
    }

    #[tokio::test]
    async fn checked_run_reports_each_status() {
        let addr = upstream().await;
        let w = Workload::mix(addr, sessions(1), 0, 1);
        let r = run_checked(&w, crate::mix::CYCLE.len() as u64)
            .await
            .unwrap();
        assert_eq!(r.len(), 30);
        assert!(r.iter().all(|(_, _, s)| *s == 200));
        assert_eq!(r[0].0, "POST");
    }

    #[test]
    fn distinct_sources_vary_what_they_should() {
        let s = DistinctSessionsSource {
            first: 5,
            header: http::HeaderName::from_static("x-session-id"),
            step: 1,
        };
        assert_eq!(
            s.build(0).unwrap().headers()["x-session-id"],
            "cust-0000005"
        );
        assert_eq!(
            s.build(1).unwrap().headers()["x-session-id"],
            "cust-0000006"
        );
        let o = DistinctOperationsSource {
            a_values: 2,
            b_values: 3,
            sessions: 10,
        };
        let paths: std::collections::BTreeSet<String> = (0..6)
            .map(|k| o.build(k).unwrap().uri().path().to_owned())
            .collect();
        assert_eq!(paths.len(), 6);
        assert_eq!(
            o.build(6).unwrap().uri().path(),
            o.build(0).unwrap().uri().path()
        );
    }

    #[tokio::test]
    async fn a_dead_target_counts_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let w = Workload::mix(addr, sessions(2), 0, 1);
        let r = run_closed(w, 5).await.unwrap();
        assert_eq!(r.requests, 0);
        assert_eq!(r.errors, 5);
    }
}
