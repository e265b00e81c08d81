//! Serving client connections: HTTP/1.1 keep-alive and HTTP/2 (h2c), the idle timeout and
//! graceful shutdown of each connection. Listeners and workers are set up by `crate::runtime`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::handle;
use super::state::Shared;
use crate::config::{ClientAddressSource, LimitsConfig};

/// What a connection over a connection cap gets before it is closed: written without
/// waiting (into an empty socket buffer it fits at once), so a refusal costs no task.
pub(crate) const REFUSED_CONNECTION: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// Answers [`REFUSED_CONNECTION`] if the socket takes it now, then closes the connection
/// (when the caller drops it).
pub(crate) fn refuse_connection(stream: &tokio::net::TcpStream) {
    let _ = stream.try_write(REFUSED_CONNECTION);
}

/// Per-connection activity, for the idle timeout.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Whether a request has arrived on the connection yet.
    served: AtomicBool,
}

/// Accepts connections on `listener` and serves each as a task of `tasks` until `shutdown`.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limits: LimitsConfig,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.std())
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = {
            let policy = shared.policy.load();
            // Behind trusted proxies every connection comes from one of them: the per-client
            // connection cap would cap the proxy. The request cap (on the forwarded address)
            // still applies.
            let per_client = match policy.config.client_address.source {
                ClientAddressSource::Socket => policy.config.limits.max_connections_per_client,
                ClientAddressSource::XForwardedFor => 0,
            };
            shared.clients.connect(peer.ip(), per_client)
        };
        let guard = match guard {
            Ok(guard) => guard,
            Err(refusal) => {
                shared
                    .metrics
                    .client_limit_refusals
                    .with_label_values(&[refusal.reason()])
                    .inc();
                refuse_connection(&stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let shared_clients = Arc::clone(&shared.clients);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        let idle = limits.idle_timeout.std();
        // A connection that has not sent a request yet gets only the time to send its headers:
        // otherwise connections opened and left silent hold a socket (and a file descriptor)
        // for the whole keep-alive idle timeout.
        let first_request = limits.header_read_timeout.std().min(idle);
        let header_read = limits.header_read_timeout.std();
        tasks.spawn(async move {
            let _guard = guard;
            let activity = Arc::new(Activity::default());
            let started = Instant::now();
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let activity = Arc::clone(&activity);
                    async move {
                        activity.served.store(true, Ordering::Relaxed);
                        activity.in_flight.fetch_add(1, Ordering::Relaxed);
                        let resp = handle(shared, peer, req).await;
                        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                        activity.last_ms.store(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                        Ok::<_, Infallible>(resp)
                    }
                })
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut closing = false;
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(first_request));
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = shutdown.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tick.tick(), if !closing => {
                        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        let idle_ms = now.saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                        // Between requests a connection may idle for `idleTimeout`, or only for
                        // `headerReadTimeout` while the proxy holds half its connection cap.
                        let bound = if !activity.served.load(Ordering::Relaxed) {
                            first_request
                        } else if shared_clients.under_pressure() {
                            idle.min(header_read)
                        } else {
                            idle
                        };
                        if activity.in_flight.load(Ordering::Relaxed) == 0 && u128::from(idle_ms) >= bound.as_millis() {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
}
