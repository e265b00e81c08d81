//! `ordo-enforcer --config FILE`: the in-line reverse proxy with its admin server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use ordo_enforcer::config::ConfigWatcher;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::runtime::{EnforcerSource, ReloadHook, StartOptions, start_with_options};

/// mimalloc instead of glibc malloc: the per-request path (hyper buffers, header maps, boxed
/// futures, the analyzer's scratch) allocates and frees many small blocks, which glibc's
/// allocator served at a measurable share of the CPU profile (issue 7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ordo's enforcer: learns how an API is used and blocks abuse, in line.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The YAML config (the document the operator renders into a ConfigMap). Reloaded on change.
    #[arg(long, env = "ORDO_CONFIG")]
    config: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "ORDO_LOG", default_value = "info")]
    log: String,
    /// Log format: `json` (one line per event) or `text`.
    #[arg(long, env = "ORDO_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Proxy worker threads, each with its own runtime and listening socket; default: the
    /// CPUs this process may use (its cgroup's CPU limit included).
    #[arg(long, env = "ORDO_WORKERS")]
    workers: Option<usize>,
}

fn init_logging(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if args.log_format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The first proxy worker, the admin server, housekeeping and reports share the main thread's
/// single-threaded runtime; further workers get threads of their own (see `StartOptions`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args);
    let (config_watcher, config) = ConfigWatcher::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    // Standalone persistence of the learned model (learning.modelFile).
    let model_file = config.learning.model_file.clone();
    let initial = match &model_file {
        Some(path) if path.exists() => {
            let model = LearnedAnalyzer::load(path, &config.learning)
                .with_context(|| format!("loading the model from {}", path.display()))?;
            tracing::info!(path = %path.display(), requests = model.requests, sessions = model.sessions, "loaded the learned model");
            Some(model)
        }
        _ => None,
    };
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        initial,
    ));
    let on_reload: ReloadHook = {
        let analyzer = Arc::clone(&analyzer);
        Arc::new(move |config| analyzer.reconfigure(&config.learning, &config.detectors))
    };
    let report_config = config.report.clone();
    let config_persist_seconds = config.learning.persist_seconds;
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let running = start_with_options(
        config,
        Arc::clone(&analyzer) as _,
        StartOptions {
            config_watcher: Some(config_watcher),
            on_reload: Some(on_reload),
            workers,
        },
    )
    .await
    .context("starting the enforcer")?;
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, workers, "ordo-enforcer started");
    // Reports to the operator (when the config has a `report` section; read at start).
    let report_stop = tokio_util::sync::CancellationToken::new();
    let reporter = match report_config {
        Some(report) => {
            let client =
                ordo_enforcer::report::ReportClient::new(report).context("report section")?;
            let source = Arc::new(EnforcerSource::new(
                Arc::clone(&running.shared),
                Arc::clone(&analyzer),
            ));
            let stop = report_stop.clone();
            Some(tokio::spawn(async move {
                client
                    .run(source, async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    let persister = model_file.map(|path| {
        let analyzer = Arc::clone(&analyzer);
        let stop = report_stop.clone();
        let every = std::time::Duration::from_secs(config_persist_seconds.max(1));
        tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    _ = stop.cancelled() => true,
                };
                let (analyzer, path) = (Arc::clone(&analyzer), path.clone());
                match tokio::task::spawn_blocking(move || analyzer.persist(&path).map(|_| path))
                    .await
                {
                    Ok(Ok(path)) => {
                        tracing::debug!(path = %path.display(), "persisted the learned model")
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "persisting the learned model failed")
                    }
                    Err(err) => tracing::warn!(error = %err, "persisting the learned model failed"),
                }
                if stopping {
                    break;
                }
            }
        })
    });
    shutdown_signal().await;
    report_stop.cancel();
    if let Some(persister) = persister
        && tokio::time::timeout(std::time::Duration::from_secs(10), persister)
            .await
            .is_err()
    {
        tracing::warn!("the final model write did not finish in time");
    }
    if let Some(reporter) = reporter
        && tokio::time::timeout(std::time::Duration::from_secs(10), reporter)
            .await
            .is_err()
    {
        tracing::warn!("the final report did not finish in time");
    }
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
