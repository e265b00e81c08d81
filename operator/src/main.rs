//! `ordo-operator`: the control plane process. See docs/operator.md for flags, RBAC and
//! metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::events::Recorder;
use ordo_operator::controller::backoff::Backoff;
use ordo_operator::controller::cache::Caches;
use ordo_operator::controller::routing::RoutingStep;
use ordo_operator::controller::{self, Context, Settings};
use ordo_operator::desired::render::ReportTarget;
use ordo_operator::leader::{LeaderElector, LeaseTiming};
use ordo_operator::metrics::Metrics;
use ordo_operator::reports::hub::ReportHub;
use ordo_operator::reports::leader_slice::LeaderEndpoint;
use ordo_operator::reports::routes::{Endpoint, Readiness, health_handler};
use ordo_operator::serve::server;
use ordo_operator::serve::tls::ReloadingCert;
use ordo_operator::serve::webhook::Webhook;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Ordo operator: reconciles ApiProtection and SequenceRule into running enforcers, serves
/// the enforcers' report endpoint and the validating webhook.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the plain HTTP server with /healthz, /readyz and /metrics.
    #[arg(long, env = "ORDO_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Address of the HTTPS server (webhook + enforcer reports). Needs --tls-cert and --tls-key.
    #[arg(long, env = "ORDO_HTTPS_ADDR", default_value = "0.0.0.0:8443")]
    https_addr: SocketAddr,
    /// PEM certificate chain of the HTTPS server (reloaded when the file changes).
    #[arg(long, env = "ORDO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS server (reloaded when the file changes).
    #[arg(long, env = "ORDO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Base URL enforcers use to reach this operator's HTTPS server, e.g.
    /// https://ordo-operator.ordo-system.svc:8443. Without it enforcers do not report.
    #[arg(long, env = "ORDO_REPORT_URL")]
    report_url: Option<String>,
    /// PEM CA bundle the enforcers trust for --report-url (copied into their ConfigMap).
    #[arg(long, env = "ORDO_REPORT_CA_FILE")]
    report_ca_file: Option<PathBuf>,
    /// Name of a Service without a selector, in the lease namespace, whose only endpoint the
    /// leader sets to its own address (--pod-ip and the --https-addr port), so that enforcer
    /// reports reach the leader only. Point --report-url at this Service.
    #[arg(long, env = "ORDO_REPORT_SERVICE", requires = "pod_ip")]
    report_service: Option<String>,
    /// This replica's Pod IP (the address published for --report-service).
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// Seconds between two reports of one enforcer.
    #[arg(long, env = "ORDO_REPORT_INTERVAL_SECONDS", default_value_t = 30)]
    report_interval_seconds: u64,
    /// Minimum seconds between two status refreshes of one ApiProtection caused by reports.
    #[arg(long, env = "ORDO_STATUS_REFRESH_SECONDS", default_value_t = 10)]
    status_refresh_seconds: u64,
    /// Enforcer image used when an ApiProtection does not name one.
    #[arg(
        long,
        env = "ORDO_ENFORCER_IMAGE",
        default_value = "ghcr.io/ordo-dev/ordo-enforcer:0.1.0"
    )]
    enforcer_image: String,
    /// Elect a leader with a Lease so that only one replica reconciles (needed with >1 replica).
    #[arg(long, env = "ORDO_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (defaults to the pod's namespace, else "default").
    #[arg(long, env = "ORDO_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "ORDO_LEASE_NAME", default_value = "ordo-operator")]
    lease_name: String,
    /// Identity in the Lease and in Events (defaults to $POD_NAME, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconciles that may run at the same time.
    #[arg(long, env = "ORDO_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Seconds after which a healthy ApiProtection is reconciled again anyway.
    #[arg(long, env = "ORDO_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Watch and reconcile only this namespace (default: every namespace).
    #[arg(long, env = "ORDO_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Log format: json (one line per event) or text.
    #[arg(long, env = "ORDO_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// Fault injection for the crash-safety tests: exit right after this routing step.
    #[arg(long, env = "ORDO_EXIT_AFTER_ROUTING_STEP", hide = true)]
    exit_after_routing_step: Option<RoutingStep>,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ordo-operator".into());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

/// Longest a stepping-down leader waits for the API server (a slow one must not hold up
/// shutdown past the pod's grace period).
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Stops publishing this replica behind the report Service and empties its endpoint.
async fn step_down(
    publisher: Option<tokio::task::JoinHandle<()>>,
    endpoint: Option<&LeaderEndpoint>,
) {
    if let Some(publisher) = publisher
        && tokio::time::timeout(STEP_DOWN_TIMEOUT, publisher)
            .await
            .is_err()
    {
        tracing::warn!("the leader endpoint publisher did not stop in time");
    }
    let Some(endpoint) = endpoint else { return };
    match tokio::time::timeout(STEP_DOWN_TIMEOUT, endpoint.withdraw()).await {
        Ok(Ok(())) => tracing::info!("withdrew this replica from the report Service"),
        Ok(Err(err)) => tracing::warn!(error = %err, "withdrawing the leader endpoint failed"),
        Err(_) => tracing::warn!("withdrawing the leader endpoint timed out"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    // One crypto provider for every rustls user in the process (kube's client included).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));

    let (hub, reconcile_requests) = ReportHub::new(
        client.clone(),
        Arc::clone(&metrics),
        Duration::from_secs(args.status_refresh_seconds.max(1)),
    );
    let recorder = Recorder::new(client.clone(), controller::reporter(&identity));

    let readiness = Arc::new(Readiness::default());
    let health_listener = TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding {}", args.health_addr))?;
    tracing::info!(addr = %health_listener.local_addr()?, "health and metrics server listening");
    let mut servers = Vec::new();
    servers.push(tokio::spawn(server::serve(
        health_listener,
        None,
        health_handler(Arc::clone(&metrics), Arc::clone(&readiness)),
        shutdown.clone(),
    )));

    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let resolver = ReloadingCert::load(cert, key).context("loading the serving certificate")?;
        resolver.spawn_watcher(
            Duration::from_secs(5),
            Arc::clone(&metrics),
            shutdown.clone(),
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(resolver.server_config()?);
        let listener = TcpListener::bind(args.https_addr)
            .await
            .with_context(|| format!("binding {}", args.https_addr))?;
        tracing::info!(addr = %listener.local_addr()?, "HTTPS server (webhook, reports) listening");
        let endpoint = Arc::new(Endpoint {
            client: client.clone(),
            hub: Arc::clone(&hub),
            webhook: Webhook {
                client: client.clone(),
                metrics: Arc::clone(&metrics),
            },
            recorder: recorder.clone(),
            metrics: Arc::clone(&metrics),
        });
        servers.push(tokio::spawn(server::serve(
            listener,
            Some(acceptor),
            endpoint.handler(),
            shutdown.clone(),
        )));
    } else {
        tracing::warn!(
            "no --tls-cert/--tls-key: the webhook and the report endpoint are not served"
        );
    }
    readiness.serving.store(true, Ordering::Relaxed);

    let report = match &args.report_url {
        Some(url) => {
            let ca_pem = match &args.report_ca_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            Some(ReportTarget {
                base_url: url.clone(),
                ca_pem,
                interval_seconds: args.report_interval_seconds.max(1),
            })
        }
        None => None,
    };
    let (caches, cache_writers) = Caches::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: Settings {
            enforcer_image: args.enforcer_image.clone(),
            report,
            exit_after: args.exit_after_routing_step,
            resync: Duration::from_secs(args.resync_seconds.max(10)),
            concurrency: args.concurrency.max(1),
            namespace: args.watch_namespace.clone(),
        },
        recorder,
        metrics: Arc::clone(&metrics),
        hub: Arc::clone(&hub),
        backoff: Backoff::default(),
        caches,
    });

    let namespace = args
        .lease_namespace
        .clone()
        .or_else(pod_namespace)
        .unwrap_or_else(|| "default".into());
    let leader_endpoint = match (&args.report_service, args.pod_ip) {
        (Some(service), Some(address)) if args.tls_cert.is_some() => Some(LeaderEndpoint::new(
            &client,
            &namespace,
            service,
            address,
            args.https_addr.port(),
            &identity,
        )),
        (Some(_), _) => {
            tracing::warn!(
                "--report-service needs the HTTPS server: not publishing the leader endpoint"
            );
            None
        }
        _ => None,
    };

    let mut exit_code = 0;
    if args.leader_election {
        let mut elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &namespace),
            &args.lease_name,
            &identity,
            LeaseTiming::default(),
        );
        tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), %identity, "waiting for leadership");
        if elector.acquire(&shutdown).await {
            tracing::info!(%identity, "leading");
            hub.leading.store(true, Ordering::Relaxed);
            metrics.leader.set(1);
            let controller_stop = CancellationToken::new();
            let running = tokio::spawn(controller::run(
                Arc::clone(&ctx),
                cache_writers,
                reconcile_requests,
                controller_stop.clone(),
            ));
            let mut publisher = leader_endpoint.clone().map(|endpoint| {
                let stop = controller_stop.clone();
                tokio::spawn(async move { endpoint.keep_published(stop).await })
            });
            let hold_stop = CancellationToken::new();
            let hold = elector.hold(&hold_stop);
            tokio::pin!(hold);
            let released = tokio::select! {
                released = &mut hold => released,
                () = shutdown.cancelled() => {
                    // Still holding the Lease: empty the report Service first, so the next
                    // leader's address is the only one published after this one.
                    controller_stop.cancel();
                    step_down(publisher.take(), leader_endpoint.as_ref()).await;
                    // Still leading: write what was merged since the last write, before
                    // another replica can lead and load it.
                    hub.leading.store(false, Ordering::Relaxed);
                    hub.flush().await;
                    hold_stop.cancel();
                    hold.await
                }
            };
            if let Some(publisher) = publisher.take() {
                // Leadership lost: the next leader owns the slice; never write it again.
                publisher.abort();
            }
            hub.leading.store(false, Ordering::Relaxed);
            metrics.leader.set(0);
            controller_stop.cancel();
            let _ = running.await;
            if !released {
                // Lost the Lease: another replica may reconcile (and own the report Service's
                // endpoint) now. Stop at once; the Deployment restarts this one as a standby.
                tracing::error!("leadership lost; exiting");
                shutdown.cancel();
                exit_code = 1;
            }
        }
    } else {
        hub.leading.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        let publisher = leader_endpoint.clone().map(|endpoint| {
            let stop = shutdown.clone();
            tokio::spawn(async move { endpoint.keep_published(stop).await })
        });
        controller::run(
            Arc::clone(&ctx),
            cache_writers,
            reconcile_requests,
            shutdown.clone(),
        )
        .await;
        hub.flush().await;
        step_down(publisher, leader_endpoint.as_ref()).await;
    }
    shutdown.cancel();
    for server in servers {
        let _ = server.await;
    }
    if exit_code != 0 {
        std::process::exit(exit_code);
    }
    Ok(())
}
