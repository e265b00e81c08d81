//! Starting the enforcer: the shared state, the proxy workers (one runtime and listening
//! socket each), the admin server and housekeeping.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::housekeeping::housekeeping;
use crate::config::{ConfigWatcher, EnforcerConfig, LimitsConfig};
use crate::detect::Analyzer;
use crate::finding::{FindingKind, Severity};
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::{CompileError, CounterRegistry, compile};
use crate::proxy::{
    ClientLimits, PoolSettings, Router, RouterError, Shared, UpstreamPool, accept_loop,
    serve_peers, set_worker_index,
};
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
    #[error("peers: {0}")]
    Peers(#[from] RouterError),
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

/// Starts the enforcer with `config`. When `config_watcher` is given (from
/// [`ConfigWatcher::load`], which also gave `config`) the file is reloaded on change.
pub async fn start(
    config: EnforcerConfig,
    config_watcher: Option<ConfigWatcher>,
    analyzer: Arc<dyn Analyzer>,
) -> Result<RunningEnforcer, StartError> {
    let options = StartOptions {
        config_watcher,
        on_reload: None,
        workers: 1,
    };
    start_with_options(config, analyzer, options).await
}

/// How the enforcer process runs around its config.
pub struct StartOptions {
    /// The config file, reloaded on change when given (see [`ConfigWatcher::load`]).
    pub config_watcher: Option<ConfigWatcher>,
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
        config_watcher,
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
    let admin_max_connections = config.admin.max_connections;
    let fd_limit = open_files_limit();
    let max_connections = connection_cap(
        config.limits.max_connections,
        fd_limit,
        admin_max_connections,
    );

    let upstream = UpstreamPool::new(PoolSettings {
        authority: upstream_authority,
        connect_timeout: config.upstream.connect_timeout.std(),
        max_idle: config.upstream.max_idle_connections,
        idle_timeout: config.upstream.pool_idle_timeout.std(),
        shards: workers,
    });

    let incidents = IncidentStore::new(&config.incidents, config.admin.reveal_session_keys);
    let policy = compile(config, &resolver, &counters)?;
    analyzer.configure(&policy.config);
    let metrics = Metrics::new()?;
    metrics.initialize_kinds(
        &FindingKind::ALL.map(FindingKind::as_str),
        &Severity::ALL.map(Severity::as_str),
    );
    metrics.initialize_rules(policy.rules.iter().map(|rule| &*rule.name));
    metrics
        .connections_max
        .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    if let (Some(configured), Some(fds)) = (policy.config.limits.max_connections, fd_limit)
        && configured > max_connections
    {
        tracing::warn!(
            configured,
            fds,
            max_connections,
            "limits.maxConnections lowered to what the file-descriptor limit allows"
        );
    }
    let router = match &policy.config.peers {
        Some(peers) => {
            // Every replica labels a credential-keyed session alike, so that the operator
            // merges their incidents of it (session/label.rs).
            if let Ok(secret) = peers.load_secret() {
                crate::session::share_pseudonym_key(&secret);
            }
            Some(Arc::new(Router::new(
                peers,
                &metrics.registry,
                policy.config.session.history.duration.std(),
            )?))
        }
        None => None,
    };
    let peer_listen = policy.config.peers.as_ref().map(|p| p.listen);
    let shared = Arc::new(Shared {
        policy: ArcSwap::from_pointee(policy),
        resolver,
        sessions,
        incidents,
        counters,
        metrics,
        analyzer,
        upstream,
        limiter: Arc::new(Semaphore::new(max_concurrent)),
        clients: Arc::new(ClientLimits::new(max_connections)),
        epoch: Instant::now(),
        instance: random_u64() & 0xffff_ffff,
        request_seq: AtomicU64::new(1),
        router,
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
    let peer_listener = match peer_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    if let (Some(listener), Some(router)) = (peer_listener, shared.router.clone()) {
        tasks.spawn(serve_peers(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
            tasks.clone(),
        ));
        tasks.spawn(router.maintain(shutdown.clone()));
    }

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
        Arc::clone(&shared) as _,
        shutdown.clone(),
        admin_max_connections,
    ));
    tasks.spawn(housekeeping(
        Arc::clone(&shared),
        config_watcher,
        on_reload,
        shutdown.clone(),
    ));
    tracing::info!(%proxy_addr, %admin_addr, max_connections, fd_limit, "enforcer listening");
    Ok(RunningEnforcer {
        proxy_addr,
        admin_addr,
        shared,
        shutdown,
        tasks,
        grace: limits.shutdown_grace.std(),
    })
}

/// Proxy connections when neither the config nor a readable file-descriptor limit says
/// otherwise.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept out of the proxy's budget besides the admin listener's connections: the
/// listening sockets, the peers' connections, files (config, keys, JWKS), the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The soft limit on open files of this process (`/proc/self/limits`), if it is known.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The proxy's connection cap: the configured one, lowered so that the proxy's connections
/// and an upstream connection for each (the worst case: every connection has a request in
/// flight) fit in the descriptors left once the admin listener and the process have theirs.
/// When the process runs out anyway, `accept` fails on the proxy port first, and the admin
/// port still has its share.
pub fn connection_cap(configured: Option<usize>, fd_limit: Option<u64>, admin: usize) -> usize {
    let by_fds = fd_limit.map(|fds| {
        let reserved =
            RESERVED_DESCRIPTORS.saturating_add(u64::try_from(admin).unwrap_or(u64::MAX));
        usize::try_from(fds.saturating_sub(reserved) / 2).unwrap_or(usize::MAX)
    });
    let cap = match (configured, by_fds) {
        (Some(c), Some(f)) => c.min(f),
        (Some(c), None) => c,
        (None, Some(f)) => f,
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    };
    cap.max(1)
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
    limits: LimitsConfig,
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

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_admin_port_and_the_upstream() {
        // 1,024 descriptors, 64 admin connections: (1024 - 64 - 64) / 2.
        assert_eq!(connection_cap(None, Some(1024), 64), 448);
        assert_eq!(connection_cap(Some(100), Some(1024), 64), 100);
        assert_eq!(connection_cap(Some(5000), Some(1024), 64), 448);
        assert_eq!(connection_cap(Some(5000), None, 64), 5000);
        assert_eq!(
            connection_cap(None, None, 64),
            super::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(connection_cap(None, Some(10), 64), 1);
    }

    #[test]
    fn the_open_files_limit_is_read() {
        let limit = super::open_files_limit();
        assert!(limit.is_some_and(|l| l > 0), "{limit:?}");
    }
}
