//! `kubectl ordo`: a kubectl plugin that reads Ordo's resources (ApiProtection, SequenceRule)
//! through the API server with the user's kubeconfig and RBAC, and shows what the enforcers
//! learned and saw: a status summary, the incidents, the suggested rules as YAML, the learned
//! flow as a graph (DOT or SVG) and a self-contained HTML report.
//!
//! kubectl finds the binary by its name (`kubectl-ordo` on the PATH). Errors go to stderr
//! with exit code 1, as kubectl's own commands do; results go to stdout.

mod cli;
mod cluster;
mod graph;
mod incidents;
mod report;
mod status;
mod suggest;
mod text;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // `--help` and `--version` are "errors" to clap but succeed; a usage error exits
            // with 1 like kubectl's own (clap would use 2).
            let code = if error.use_stderr() { 1 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                // `kubectl ordo incidents | head` closes the pipe early: not an error.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: writing the output: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs one command and returns what it prints on stdout.
async fn run(cli: Cli) -> anyhow::Result<String> {
    let session = cluster::Session::connect(&cli.global).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    match cli.command {
        Command::Status(args) => status::run(&session, &args, now).await,
        Command::Incidents(args) => incidents::run(&session, &args, now).await,
        Command::Suggest(args) => suggest::run(&session, &args).await,
        Command::Graph(args) => graph::run(&session, &args).await,
        Command::Report(args) => report::run(&session, &args, now).await,
    }
}
