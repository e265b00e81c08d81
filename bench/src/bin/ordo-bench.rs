//! `ordo-bench`: the benchmark driver (`run`), the fast upstream it starts (`upstream`), and
//! `report`, which re-renders the table and chart of a results file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ordo_bench::results::Results;
use ordo_bench::run::{ALL_TARGETS, RunOptions};

#[derive(Parser)]
#[command(
    name = "ordo-bench",
    about = "Ordo's benchmark: the enforcer vs direct, nginx and nginx + ModSecurity/CRS"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the ~1 KB JSON upstream on ADDR (one thread).
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run the whole benchmark (see docs/benchmarks.md).
    Run(Box<RunArgs>),
    /// User-space instructions per request of nginx and the enforcer (Enforce) under valgrind.
    Instructions(Box<InstructionArgs>),
    /// What routing sessions to their owner replica costs next to one replica
    /// (docs/scale-out.md).
    Forwarding(Box<ForwardingArgs>),
    /// Print the tables and redraw the chart of a results file.
    Report {
        #[arg(long, default_value = "target/bench/results.json")]
        results: PathBuf,
        #[arg(long, default_value = "target/bench/throughput.png")]
        png: PathBuf,
    },
}

#[derive(clap::Args)]
struct ForwardingArgs {
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    #[arg(long, default_value = "target/release/ordo-enforcer")]
    enforcer_bin: PathBuf,
    /// Requests per second of the measured (open-loop) run.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 2000)]
    sessions: u64,
    /// Fixed-rate runs of every target, interleaved; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPUs (taskset list) of the enforcers.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// CPUs of the load generator and the upstream.
    #[arg(long, default_value = "0")]
    load_cpus: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Output directory (results.json, throughput.png, work/ with configs and logs).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    #[arg(long, default_value = "target/dist/ordo-enforcer")]
    enforcer_bin: PathBuf,
    #[arg(long, default_value = "bench/wrk/mix.lua")]
    wrk_script: PathBuf,
    /// Seconds of each closed-loop (wrk) run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrency levels (keep-alive connections) of the closed-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    levels: Vec<usize>,
    /// Rounds of every measurement: per level, every target runs once per round (same order);
    /// the fixed rate likewise. Targets are compared within a round, medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Seconds of fixed rate per target, shared among the rounds (at least 2 s per round).
    #[arg(long, default_value_t = 10)]
    rate_duration: u64,
    #[arg(long, default_value_t = 64)]
    rate_connections: usize,
    /// Live sessions in each enforcer's table before measuring.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    #[arg(long, default_value_t = 2_000)]
    learn_sessions: u64,
    #[arg(long, default_value_t = 1)]
    learn_cycles: u64,
    /// Idle sessions for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    memory_sessions: u64,
    /// Distinct operations for the per-operation memory measurement: A x B.
    #[arg(long, default_value_t = 20)]
    memory_ops_a: u64,
    #[arg(long, default_value_t = 20)]
    memory_ops_b: u64,
    /// CPUs (taskset list) of every proxy under test.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// CPUs of the load generator and the upstream.
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// Worker processes (nginx) / worker threads (enforcer) of each proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// Targets to measure (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nginx,nginx-crs,ordo-bare,ordo-monitor,ordo-enforce"
    )]
    targets: Vec<String>,
}

#[derive(clap::Args)]
struct InstructionArgs {
    /// Output directory (instructions.txt, work/ with the callgrind dumps, configs and logs).
    #[arg(long, default_value = "target/bench-instructions")]
    out: PathBuf,
    #[arg(long, default_value = "target/dist/ordo-enforcer")]
    enforcer_bin: PathBuf,
    #[arg(long, default_value = "/usr/bin/valgrind")]
    valgrind: PathBuf,
    /// Measured requests per target (a multiple of the 30-request cycle).
    #[arg(long, default_value_t = 3_000)]
    requests: u64,
    /// Sessions of the learning traffic (one cycle each), as in `run`.
    #[arg(long, default_value_t = 2_000)]
    learn_sessions: u64,
    /// Live sessions in the table before measuring (one request each).
    #[arg(long, default_value_t = 20_000)]
    sessions: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Functions of the enforcer's profile to print.
    #[arg(long, default_value_t = 40)]
    top: usize,
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// Targets to count (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "nginx,ordo-enforce")]
    targets: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Upstream { listen } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(ordo_bench::upstream::bind_and_serve(listen))?;
            Ok(())
        }
        Cmd::Report { results, png } => {
            let results: Results = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
            ordo_bench::chart::draw(&results, &png)?;
            print!("{}", results.render_tables());
            Ok(())
        }
        Cmd::Run(args) => run(*args),
        Cmd::Instructions(args) => instructions(*args),
        Cmd::Forwarding(args) => forwarding(*args),
    }
}

fn forwarding(a: ForwardingArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let opts = ordo_bench::forwarding::ForwardingOptions {
        out: std::fs::canonicalize(&a.out)?,
        enforcer_bin: std::fs::canonicalize(&a.enforcer_bin)?,
        self_bin: std::env::current_exe()?,
        rate: a.rate,
        duration: Duration::from_secs(a.duration),
        connections: a.connections,
        sessions: a.sessions,
        rounds: a.rounds.max(1),
        proxy_cpus: a.proxy_cpus,
        load_cpus: a.load_cpus,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(ordo_bench::forwarding::run(opts))?;
    print!("{}", ordo_bench::forwarding::table(&results));
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    for t in &a.targets {
        anyhow::ensure!(
            ALL_TARGETS.iter().any(|(n, _)| n == t),
            "unknown target {t}"
        );
    }
    // Absolute paths: nginx resolves relative ones against its prefix directory.
    std::fs::create_dir_all(&a.out)?;
    let out = std::fs::canonicalize(&a.out)?;
    let enforcer_bin = std::fs::canonicalize(&a.enforcer_bin).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (cargo build --release -p ordo-enforcer)",
            a.enforcer_bin.display()
        )
    })?;
    let opts = RunOptions {
        out: out.clone(),
        enforcer_bin,
        self_bin: std::env::current_exe()?,
        wrk_script: std::fs::canonicalize(&a.wrk_script)?,
        duration: Duration::from_secs(a.duration),
        levels: a.levels,
        rounds: usize::from(a.rounds),
        rate_duration: Duration::from_secs(a.rate_duration),
        rate_connections: a.rate_connections,
        sessions: a.sessions,
        learn_sessions: a.learn_sessions,
        learn_cycles: a.learn_cycles,
        memory_sessions: a.memory_sessions,
        memory_operations: (a.memory_ops_a, a.memory_ops_b),
        proxy_cpus: a.proxy_cpus,
        load_cpus: a.load_cpus,
        workers: a.workers,
        wrk_threads: a.wrk_threads,
        targets: a.targets,
    };
    // One thread: the load generator must stay on its CPU and not compete with the proxies.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // On SIGINT/SIGTERM the run future is dropped, and with it every process guard it holds.
    let results = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = ordo_bench::run::run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    })?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let png = out.join("throughput.png");
    ordo_bench::chart::draw(&results, &png)?;
    print!("{}", results.render_tables());
    println!("wrote {} and {}", json.display(), png.display());
    Ok(())
}

fn instructions(a: InstructionArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let opts = ordo_bench::instructions::InstructionOptions {
        out: std::fs::canonicalize(&a.out)?,
        enforcer_bin: std::fs::canonicalize(&a.enforcer_bin)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.enforcer_bin.display()))?,
        self_bin: std::env::current_exe()?,
        valgrind: a.valgrind,
        requests: a.requests,
        learn_sessions: a.learn_sessions,
        sessions: a.sessions,
        connections: a.connections,
        top: a.top,
        proxy_cpus: a.proxy_cpus,
        load_cpus: a.load_cpus,
        targets: a.targets,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = ordo_bench::instructions::run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    })?;
    print!("{report}");
    Ok(())
}
