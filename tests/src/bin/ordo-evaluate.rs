//! `ordo-evaluate`: the detection evaluation. Without `--atrdf` it runs the simulated APIs
//! (`--api bank|library|shop|all`) through a real enforcer (learning phase, then mixed benign
//! and attack traffic) and prints, per API and attack kind, sessions, detections, blocks,
//! requests until first detection and harm that reached the app, plus the honest sessions
//! flagged (on every API in three groups: learning phase, new and returning users) and the
//! honest requests to rare or newly released operations that were refused. With
//! `--atrdf FILE.json.gz` it replays the labelled ATRDF dataset and prints precision, recall and
//! F1 per attack class.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use ordo_tests::sim::styles::{self, Api};
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
    /// Which simulated API to evaluate: bank, library, shop or all.
    #[arg(long, default_value = "all")]
    api: String,
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
    if let Some(path) = &args.atrdf {
        if !(0.05..=0.95).contains(&args.train_fraction) {
            bail!("--train-fraction must be between 0.05 and 0.95");
        }
        let records = atrdf::load(path)?;
        let report = atrdf::replay(&records, args.seed, args.train_fraction);
        print!("{report}");
        return Ok(());
    }
    let mode: &'static str = match args.mode.as_str() {
        "Enforce" => "Enforce",
        "Monitor" => "Monitor",
        other => bail!("--mode must be Enforce or Monitor, not {other:?}"),
    };
    let (bank, others): (bool, Vec<Api>) = match args.api.as_str() {
        "all" => (true, vec![Api::Library, Api::Shop]),
        "bank" => (true, Vec::new()),
        "library" => (false, vec![Api::Library]),
        "shop" => (false, vec![Api::Shop]),
        other => bail!("--api must be bank, library, shop or all, not {other:?}"),
    };
    if bank {
        run_bank(&args, mode).await?;
    }
    for (i, api) in others.into_iter().enumerate() {
        if bank || i > 0 {
            println!();
        }
        let options = styles::StyleOptions {
            seed: args.seed,
            sizes: styles::Sizes {
                learning: args.learning,
                benign: args.benign,
                attacks_per_kind: args.attacks,
            },
            concurrency: args.concurrency,
            mode,
        };
        let report = styles::run(api, options).await?;
        if args.show_model {
            print!(
                "{}",
                evaluate::baselines_table(&report.model_after_learning)
            );
            println!();
        }
        print!("{report}");
    }
    Ok(())
}

async fn run_bank(args: &Args, mode: &'static str) -> anyhow::Result<()> {
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
