//! `ordo-evaluate`: the detection evaluation. Without `--atrdf` it runs the simulator through a
//! real enforcer (learning phase, then mixed benign and attack traffic) and prints, per attack
//! kind, sessions, detections, blocks, requests until first detection and harm that reached
//! the app, plus the share of benign sessions flagged. With `--atrdf FILE.json.gz` it replays
//! the labelled ATRDF dataset and prints precision, recall and F1 per attack class.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use ordo_tests::sim::{atrdf, evaluate};

#[derive(Debug, Parser)]
#[command(about = "Ordo detection evaluation (simulator or ATRDF replay)")]
struct Args {
    /// Seed of every random choice (journeys, shuffles, the ATRDF split).
    #[arg(long, env = "ORDO_EVAL_SEED", default_value_t = 42)]
    seed: u64,
    /// Benign journeys of the learning phase.
    #[arg(long, default_value_t = 600)]
    learning: usize,
    /// Benign journeys mixed with the attacks.
    #[arg(long, default_value_t = 1000)]
    benign: usize,
    /// Attack journeys per attack kind.
    #[arg(long, default_value_t = 10)]
    attacks: usize,
    /// Journeys in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// `Enforce` (blocking) or `Monitor`.
    #[arg(long, default_value = "Enforce")]
    mode: String,
    /// Replay the ATRDF dataset instead of the simulator.
    #[arg(long)]
    atrdf: Option<PathBuf>,
    /// Also print the learned baselines (`GET /v1/model` after the learning phase).
    #[arg(long)]
    show_model: bool,
    /// Share of the benign ATRDF records learned from.
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = args.atrdf {
        if !(0.05..=0.95).contains(&args.train_fraction) {
            bail!("--train-fraction must be between 0.05 and 0.95");
        }
        let records = atrdf::load(&path)?;
        let report = atrdf::replay(&records, args.seed, args.train_fraction);
        print!("{report}");
        return Ok(());
    }
    let mode: &'static str = match args.mode.as_str() {
        "Enforce" => "Enforce",
        "Monitor" => "Monitor",
        other => bail!("--mode must be Enforce or Monitor, not {other:?}"),
    };
    let options = evaluate::EvaluationOptions {
        seed: args.seed,
        learning_journeys: args.learning,
        benign_journeys: args.benign,
        attacks_per_kind: args.attacks,
        concurrency: args.concurrency,
        mode,
    };
    let report = evaluate::run(options).await?;
    if args.show_model {
        print!(
            "{}",
            evaluate::baselines_table(&report.model_after_learning)
        );
        println!();
    }
    print!("{report}");
    Ok(())
}
