//! `ordo-demo [--keep]`: the whole of Ordo on this machine in one command — a local
//! Kubernetes control plane, the CRDs, the operator, the sample banking API behind the
//! enforcers, learning, Enforce mode, attacks, and what a user then sees. `scripts/demo` builds
//! it and runs it. See `tests/src/demo/` for the steps.
//!
//! Where the machine can run the local cluster's real node (root, cgroup v1, the bridge
//! netfilter hook, unshare and ip: the checks of `scripts/test`'s node tier), everything runs
//! in Pods on it; elsewhere as local processes. `ORDO_DEMO_NODE=0` forces the local processes,
//! `ORDO_DEMO_NODE=1` requires the node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ordo_tests::demo::node;
use ordo_tests::demo::run::{Options, run};

#[derive(Debug, Parser)]
#[command(
    name = "ordo-demo",
    version,
    about = "Run the whole Ordo system locally and show what it catches",
    after_help = "Where: on the local cluster's real node (Pods, helm, kube-proxy) where the machine \
                  supports it (root, cgroup v1, the bridge netfilter hook, unshare, ip), else as \
                  local processes. ORDO_DEMO_NODE=0 forces the local processes, ORDO_DEMO_NODE=1 \
                  requires the real node."
)]
struct Cli {
    /// Leave everything running at the end and print how to reach it; Ctrl-C stops it.
    #[arg(long)]
    keep: bool,
    /// Do not build the operator, the enforcer and the control plane first (they must exist).
    #[arg(long)]
    no_build: bool,
    /// Use the debug builds in target/debug instead of target/release.
    #[arg(long)]
    debug: bool,
    /// Seed of the simulated customers and attackers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Longest learning phase in seconds; the demo goes on with whatever is mature by then.
    #[arg(long, default_value_t = 420)]
    max_learning_seconds: u64,
    /// Directory with the Kubernetes binaries (default: the tests/cluster/build.sh cache).
    #[arg(long, env = "ORDO_K8S_BIN")]
    k8s_bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (platform, why_local) = node::choose(std::env::var("ORDO_DEMO_NODE").ok().as_deref())?;
    let options = Options {
        platform,
        why_local,
        keep: cli.keep,
        build: !cli.no_build,
        debug: cli.debug,
        seed: cli.seed,
        max_learning: Duration::from_secs(cli.max_learning_seconds.max(10)),
        k8s_bin_dir: cli.k8s_bin_dir,
        verify: None,
    };
    // Ctrl-C at any point drops the demo: every process it started is stopped by the
    // supervisors' drop (and by their reapers if this process dies harder).
    tokio::select! {
        result = run(options) => result.map(|_| ()),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping everything");
            Ok(())
        }
    }
}
