//! Listeners, connection handling, reload and shutdown.

use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::handle;
use super::state::Shared;
use super::upstream::{PoolSettings, UpstreamPool, set_worker_index};
use crate::analysis::Analyzer;
use crate::config::{ConfigWatcher, EnforcerConfig, ReloadOutcome};
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::{CompileError, CounterRegistry, compile};
use crate::session::SessionTable;

/// Why the enforcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("upstream.url: {0}")]
    Upstream(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting proxy worker {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
}

/// A running enforcer (proxy + admin listener + background tasks).
pub struct RunningEnforcer {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
}

impl RunningEnforcer {
    /// Stops accepting, lets in-flight requests finish (up to `limits.shutdownGrace`), then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }

    /// A token that stops the enforcer when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Called with every config that was reloaded and applied (e.g. to reconfigure the analyzer).
pub type ReloadHook = Arc<dyn Fn(&EnforcerConfig) + Send + Sync>;

/// Starts the enforcer with `config`. When `config_path` is given the file is watched and
/// reloaded on change.
pub async fn start(
    config: EnforcerConfig,
    config_path: Option<PathBuf>,
    analyzer: Arc<dyn Analyzer>,
) -> Result<RunningEnforcer, StartError> {
    let options = StartOptions {
        config_path,
        on_reload: None,
        workers: 1,
    };
    start_with_options(config, analyzer, options).await
}

/// How the enforcer process runs around its config.
pub struct StartOptions {
    /// Watched and reloaded on change when given.
    pub config_path: Option<PathBuf>,
    /// Run after each applied reload.
    pub on_reload: Option<ReloadHook>,
    /// Proxy workers. Worker 0 serves on the caller's runtime (with the admin server and
    /// housekeeping); each further worker is a thread with its own single-threaded runtime and
    /// its own listening socket on the same address (`SO_REUSEPORT`: the kernel spreads new
    /// connections over them). One per core is the nginx model: a connection, its upstream
    /// connections and every task of its requests stay on one thread, without the work
    /// stealing of tokio's multi-threaded runtime (measured in docs/benchmarks.md).
    pub workers: usize,
}

/// Starts the enforcer (see [`StartOptions`]).
pub async fn start_with_options(
    config: EnforcerConfig,
    analyzer: Arc<dyn Analyzer>,
    options: StartOptions,
) -> Result<RunningEnforcer, StartError> {
    let StartOptions {
        config_path,
        on_reload,
        workers,
    } = options;
    let workers = workers.max(1);
    let uri: http::Uri = config
        .upstream
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| StartError::Upstream(e.to_string()))?;
    let upstream_authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| StartError::Upstream("missing host".into()))?;
    let resolver = OperationResolver::new(&config.operations);
    let counters = CounterRegistry::default();
    let sessions = SessionTable::new(
        config.session.max_sessions,
        config.session.idle_timeout.std(),
    );
    let limits = config.limits.clone();
    let listen = config.listen;
    let admin_listen = config.admin.listen;
    let max_concurrent = config.limits.max_concurrent_requests;

    let upstream = UpstreamPool::new(PoolSettings {
        authority: upstream_authority,
        connect_timeout: config.upstream.connect_timeout.std(),
        max_idle: config.upstream.max_idle_connections,
        idle_timeout: config.upstream.pool_idle_timeout.std(),
        shards: workers,
    });

    let policy = compile(config, &resolver, &counters)?;
    analyzer.configure(&policy.config);
    let shared = Arc::new(Shared {
        policy: ArcSwap::from_pointee(policy),
        resolver,
        sessions,
        incidents: IncidentStore::default(),
        counters,
        metrics: Metrics::new()?,
        analyzer,
        upstream,
        limiter: Arc::new(Semaphore::new(max_concurrent)),
        epoch: Instant::now(),
        instance: random_u64() & 0xffff_ffff,
        request_seq: AtomicU64::new(1),
    });

    let proxy_listener = bind_proxy(listen, workers > 1).map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let admin_listener =
        TcpListener::bind(admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: admin_listen,
                source,
            })?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: admin_listen,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();

    tasks.spawn(accept_loop(
        proxy_listener,
        Arc::clone(&shared),
        shutdown.clone(),
        tasks.clone(),
        limits.clone(),
    ));
    for index in 1..workers {
        // Bound here, so that a failure stops the start; served by the worker's own runtime.
        let started = bind_proxy(proxy_addr, true)
            .and_then(TcpListener::into_std)
            .and_then(|listener| {
                spawn_worker(
                    index,
                    listener,
                    Arc::clone(&shared),
                    shutdown.clone(),
                    limits.clone(),
                )
            });
        let done = match started {
            Ok(done) => done,
            Err(source) => {
                // Stop what already runs (worker 0 and earlier workers) before failing.
                shutdown.cancel();
                return Err(StartError::Worker { index, source });
            }
        };
        // `shutdown` waits for the worker's connections to drain, as for worker 0's.
        tasks.spawn(async move {
            let _ = done.await;
        });
    }
    tasks.spawn(crate::admin::serve(
        admin_listener,
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    tasks.spawn(housekeeping(
        Arc::clone(&shared),
        config_path,
        on_reload,
        shutdown.clone(),
    ));
    tracing::info!(%proxy_addr, %admin_addr, "enforcer listening");
    Ok(RunningEnforcer {
        proxy_addr,
        admin_addr,
        shared,
        shutdown,
        tasks,
        grace: limits.shutdown_grace.std(),
    })
}

/// The proxy's listening socket; `shared` lets further workers bind the same address.
fn bind_proxy(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Runs proxy worker `index` on a thread of its own with a single-threaded runtime. The
/// receiver completes when the worker has stopped accepting and its connections have ended
/// (or the shutdown grace period is over).
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    limits: crate::config::LimitsConfig,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered with the worker's runtime here, so that a failure fails the start.
    let listener = {
        let _worker_runtime = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("ordo-proxy-{index}"))
        .spawn(move || {
            set_worker_index(index);
            runtime.block_on(async move {
                let grace = limits.shutdown_grace.std();
                let connections = TaskTracker::new();
                accept_loop(listener, shared, shutdown, connections.clone(), limits).await;
                connections.close();
                let _ = tokio::time::timeout(grace, connections.wait()).await;
            });
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// Per-connection activity, for the idle timeout.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limits: crate::config::LimitsConfig,
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
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        let idle = limits.idle_timeout.std();
        tasks.spawn(async move {
            let activity = Arc::new(Activity::default());
            let started = Instant::now();
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let activity = Arc::clone(&activity);
                    async move {
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
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle));
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
                        if activity.in_flight.load(Ordering::Relaxed) == 0 && u128::from(idle_ms) >= idle.as_millis() {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
}

/// Reloads the config, expires idle sessions and refreshes gauges.
async fn housekeeping(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    on_reload: Option<ReloadHook>,
    shutdown: CancellationToken,
) {
    let mut watcher = config_path.as_deref().map(ConfigWatcher::new);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_shard = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(w) = watcher.as_mut() {
            match w.poll() {
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Loaded(config) => {
                    if apply_reload(&shared, *config)
                        && let Some(hook) = &on_reload
                    {
                        hook(&shared.policy.load().config);
                    }
                }
                ReloadOutcome::Rejected(e) => {
                    shared
                        .metrics
                        .config_reloads
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::error!(path = %w.path().display(), error = %e, "new config rejected; keeping the current one");
                }
            }
        }
        shared.upstream.evict_idle();
        sweep_sessions(&shared, &mut next_shard).await;
        refresh_gauges(&shared);
    }
}

/// Seconds over which housekeeping sweeps the whole session table once.
const SWEEP_PERIOD_S: usize = 10;

/// Sweeps the next tenth of the session table's shards (a full pass every
/// [`SWEEP_PERIOD_S`] ticks), yielding after each shard. Housekeeping shares its thread with
/// proxy worker 0: one sweep of 100,000 sessions at once held that worker for milliseconds, and
/// at a high request rate every request queued behind it paid for it in the latency tail.
async fn sweep_sessions(shared: &Shared, next_shard: &mut usize) {
    let shards = shared.sessions.shard_len();
    for _ in 0..shards.div_ceil(SWEEP_PERIOD_S) {
        let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        shared.sessions.sweep_shard(*next_shard % shards, now_s);
        *next_shard = (*next_shard + 1) % shards;
        tokio::task::yield_now().await;
    }
}

/// Copies table counters into the metrics.
pub fn refresh_gauges(shared: &Shared) {
    let stats = shared.sessions.stats();
    let m = &shared.metrics;
    m.sessions
        .set(i64::try_from(stats.sessions).unwrap_or(i64::MAX));
    Metrics::sync_counter(&m.session_evictions, stats.evicted);
    Metrics::sync_counter(&m.session_expirations, stats.expired);
    m.operations_learned
        .set(i64::try_from(shared.resolver.stats().learned_templates).unwrap_or(i64::MAX));
}

fn apply_reload(shared: &Shared, config: EnforcerConfig) -> bool {
    let current = shared.policy.load();
    let old = &current.config;
    if old.listen != config.listen
        || old.admin.listen != config.admin.listen
        || old.upstream != config.upstream
        || old.operations != config.operations
    {
        tracing::warn!(
            "listen, admin.listen, upstream and operations changes take effect after a restart"
        );
    }
    if old.limits.max_concurrent_requests != config.limits.max_concurrent_requests {
        tracing::warn!("limits.maxConcurrentRequests changes take effect after a restart");
    }
    let mut config = config;
    // Settings bound to listeners and the resolver stay as started.
    config.listen = old.listen;
    config.admin.listen = old.admin.listen;
    config.upstream = old.upstream.clone();
    config.operations = old.operations.clone();
    let max_sessions = config.session.max_sessions;
    let idle = config.session.idle_timeout.std();
    match compile(config, &shared.resolver, &shared.counters) {
        Ok(policy) => {
            shared.sessions.configure(max_sessions, idle);
            shared.analyzer.configure(&policy.config);
            shared.policy.store(Arc::new(policy));
            shared
                .metrics
                .config_reloads
                .with_label_values(&["ok"])
                .inc();
            tracing::info!("config reloaded");
            true
        }
        Err(e) => {
            shared
                .metrics
                .config_reloads
                .with_label_values(&["failed"])
                .inc();
            tracing::error!(error = %e, "new config rejected; keeping the current one");
            false
        }
    }
}
