//! `ordo-sample-bank [--listen ADDR] [--customers N]`: the traffic simulator's bank
//! (`ordo_tests::sim::bank`) as a server of its own, so that it can run in a Pod as the
//! sample API the real-node tests protect (`tests/tests/e2e_node.rs` packages it with
//! `scripts/images assemble`). Its customers are `Directory::generate(N)`, the same ones a
//! test generates to log in with. It runs until SIGTERM or Ctrl-C.
//!
//! `ordo-sample-bank --front NAME:PORT [--listen ADDR]` runs instead a round-robin HTTP proxy
//! over the addresses `NAME` resolves to (looked up every second), each request to the next
//! one, as the pods of an ingress controller spread one customer's requests over a Service's
//! endpoints: the front proxies of `tests/tests/e2e_scaleout.rs`, in the same image.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ordo_tests::sim::bank::{Directory, RunningBank};
use ordo_tests::sim::scaleout::{Backends, follow_dns, start_front_on};
use parking_lot::Mutex;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "ordo-sample-bank",
    version,
    about = "The simulator's sample banking API"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Customers of the bank (`Directory::generate`).
    #[arg(long, default_value_t = 50)]
    customers: usize,
    /// Run a round-robin front proxy over the addresses of this DNS name and port instead of
    /// the bank.
    #[arg(long, value_name = "NAME:PORT")]
    front: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(front) = &args.front {
        return run_front(front, args.listen).await;
    }
    let directory = Directory::generate(args.customers);
    let bank = RunningBank::start(&directory, Some(args.listen))
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "ordo-sample-bank: {} customers on http://{}",
        args.customers, bank.addr
    );
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    bank.shutdown();
    Ok(())
}

/// The front proxy mode (`--front NAME:PORT`).
async fn run_front(front: &str, listen: SocketAddr) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(false)
        .init();
    let (name, port) = front.rsplit_once(':').context("--front takes NAME:PORT")?;
    let port: u16 = port.parse().context("the port of --front")?;
    let backends: Backends = Arc::new(Mutex::new(Vec::new()));
    let _follow = follow_dns(
        name.to_owned(),
        port,
        Arc::clone(&backends),
        Duration::from_secs(1),
    );
    let addr = start_front_on(listen, backends)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("ordo-sample-bank: front on http://{addr} over {front}");
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
