//! `ordo-cluster up [--crds DIR] [--node [--image FILE]...]`: runs the local Kubernetes
//! control plane of the test suite (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok with one fake Node) until Ctrl-C or SIGTERM, for trying Ordo by hand
//! and for the demo. `--node` adds a real node (containerd and a kubelet, as root; see
//! `ordo_tests::cluster::node`) with the OCI archives of `target/images/` imported.
//!
//! It prints the kubeconfig path and an `export KUBECONFIG=...` line once the control plane
//! is ready. Stopping it (even with SIGKILL) stops every component and removes the directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ordo_tests::cluster::{
    K8S_VERSION, NodeOptions, Options, REAL_NODE_NAME, TestCluster, binaries, node, workspace_root,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "ordo-cluster",
    version,
    about = "Ordo's local Kubernetes control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the control plane and keep it running until Ctrl-C or SIGTERM.
    Up {
        /// Apply the CustomResourceDefinitions in this directory (e.g. `crds/`) and wait
        /// until they are Established.
        #[arg(long, value_name = "DIR")]
        crds: Option<PathBuf>,
        /// Directory with the control-plane binaries (default: the build.sh cache).
        #[arg(long, value_name = "DIR", env = "ORDO_K8S_BIN")]
        bin_dir: Option<PathBuf>,
        /// Also start a real node (tests/cluster/build-node.sh builds it; needs root).
        #[arg(long)]
        node: bool,
        /// OCI archive to import into the real node (repeatable; default: every
        /// target/images/*.oci.tar, as scripts/images writes them).
        #[arg(long = "image", value_name = "FILE", requires = "node")]
        images: Vec<PathBuf>,
        /// Directory with the real node's binaries (default: the build-node.sh cache).
        #[arg(long, value_name = "DIR", env = "ORDO_NODE_BIN")]
        node_bin_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-client logs every refused poll while the API server starts as an error.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up {
            crds,
            bin_dir,
            node,
            images,
            node_bin_dir,
        } => {
            let options = Options {
                node: node
                    .then(|| node_options(images, node_bin_dir))
                    .transpose()?,
                ..Options::default()
            };
            up(crds, bin_dir, options).await
        }
    }
}

fn node_options(images: Vec<PathBuf>, bin_dir: Option<PathBuf>) -> anyhow::Result<NodeOptions> {
    let images = if images.is_empty() {
        built_images()?
    } else {
        images
    };
    Ok(NodeOptions {
        bin_dir: bin_dir.unwrap_or_else(node::default_node_bin_dir),
        images,
    })
}

/// Every `target/images/*.oci.tar` (none when scripts/images has not run).
fn built_images() -> anyhow::Result<Vec<PathBuf>> {
    let dir = workspace_root().join("target").join("images");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut images = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.to_string_lossy().ends_with(".oci.tar") {
            images.push(path);
        }
    }
    images.sort();
    Ok(images)
}

async fn up(
    crds: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    options: Options,
) -> anyhow::Result<()> {
    // Listen before starting, so that an interrupt during the start also cleans up: dropping
    // the start future drops the half-started cluster.
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let bin_dir = bin_dir.unwrap_or_else(binaries::default_bin_dir);
    println!(
        "ordo-cluster: starting Kubernetes {K8S_VERSION} from {}",
        bin_dir.display()
    );
    let started = Instant::now();
    let cluster = tokio::select! {
        cluster = TestCluster::start_with_options(&bin_dir, &options) => cluster?,
        _ = terminate.recv() => bail!("terminated while starting"),
        _ = interrupt.recv() => bail!("interrupted while starting"),
    };
    println!(
        "ordo-cluster: control plane ready at {} in {:.1}s",
        cluster.server(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "ordo-cluster: directory {} (component logs in logs/)",
        cluster.dir().display()
    );
    for (component, pid) in cluster.pids() {
        println!("ordo-cluster: pid {pid} {component}");
    }
    if let Some(node) = &options.node {
        println!(
            "ordo-cluster: real node {REAL_NODE_NAME} Ready (tainted {}; images imported: {})",
            ordo_tests::cluster::REAL_NODE_TAINT.0,
            node.images
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(dir) = crds {
        cluster
            .install_crds(&dir)
            .await
            .with_context(|| format!("installing the CRDs in {}", dir.display()))?;
        println!(
            "ordo-cluster: CRDs in {} installed and Established",
            dir.display()
        );
    }
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    println!("kubeconfig: {kubeconfig}");
    println!("export KUBECONFIG={kubeconfig}");
    println!("ordo-cluster: running; Ctrl-C or SIGTERM stops it and removes the directory");

    let mut health = tokio::time::interval(Duration::from_secs(2));
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
            _ = health.tick() => {
                if let Err(err) = cluster.check_running() {
                    break Err(err.context("a control-plane component stopped"));
                }
            }
        }
    };
    println!("ordo-cluster: stopping");
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .context("stopping the control plane")?;
    println!("ordo-cluster: stopped");
    outcome
}
