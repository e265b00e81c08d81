//! `ordo-controlplane-bench`: the control plane at scale — one operator, N
//! ApiProtections on the local control plane with kwok, a SequenceRule change, and reports
//! from simulated enforcers. See `ordo_tests::cpbench` and docs/benchmarks.md; run it with
//! `scripts/bench controlplane`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ordo_tests::cpbench::{self, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "ordo-controlplane-bench",
    version,
    about = "One operator at scale: time to Ready, rule propagation, report ingestion cost"
)]
struct Cli {
    /// ApiProtections (each with its target Service and one SequenceRule).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Namespaces the protections are spread over (round-robin).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Simulated enforcers reporting (one per protection, round-robin).
    #[arg(long, default_value_t = 200)]
    enforcers: usize,
    /// Seconds between two reports of one enforcer (the operator's default is 30).
    #[arg(long, default_value_t = 30)]
    report_interval: u64,
    /// Report rounds; the first is warm-up, CPU is measured over the others.
    #[arg(long, default_value_t = 5)]
    report_rounds: u32,
    /// Seconds the idle operator's CPU is measured before the reports start.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Creates and patches in flight at once.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Longest wait for every ApiProtection to be Ready.
    #[arg(long, default_value_t = 240)]
    ready_timeout: u64,
    /// Longest wait for the rule change to reach every rendered config.
    #[arg(long, default_value_t = 120)]
    rule_timeout: u64,
    /// `--kube-api-qps` of kube-controller-manager and kube-scheduler (burst: twice). Their
    /// default (20) throttles the Deployment and ReplicaSet controllers, not the operator.
    #[arg(long, default_value_t = 200)]
    api_qps: u32,
    /// The operator binary (build it with `cargo build --release -p ordo-operator`).
    #[arg(long, default_value = "target/release/ordo-operator")]
    operator_bin: PathBuf,
    /// Where the operator's log, the certificates and controlplane.json go.
    #[arg(long, default_value = "target/bench/controlplane")]
    out: PathBuf,
    /// Extra arguments for the operator (after `--`).
    #[arg(last = true)]
    operator_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = Settings {
        count: cli.count,
        namespaces: cli.namespaces,
        enforcers: cli.enforcers,
        report_interval: Duration::from_secs(cli.report_interval.max(1)),
        report_rounds: cli.report_rounds,
        idle: Duration::from_secs(cli.idle_seconds),
        create_concurrency: cli.create_concurrency,
        ready_timeout: Duration::from_secs(cli.ready_timeout),
        rule_timeout: Duration::from_secs(cli.rule_timeout),
        operator_bin: cli.operator_bin,
        out: cli.out,
        api_qps: Some(cli.api_qps).filter(|&qps| qps > 0),
        operator_args: cli.operator_args,
    };
    let figures = cpbench::run(&settings)
        .await
        .context("the control plane benchmark failed")?;
    print!("{}", cpbench::summary(&figures));
    println!(
        "figures: {}",
        settings.out.join("controlplane.json").display()
    );
    Ok(())
}
