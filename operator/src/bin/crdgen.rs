//! Writes the CRD manifests of Ordo's custom resources, generated from the Rust types.
//!
//! ```text
//! crdgen                 print every manifest to stdout
//! crdgen --out DIR       write DIR/<plural>.ordo.dev.yaml (and remove stale ones)
//! crdgen --check DIR     exit 1 when DIR differs from what the types generate
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ordo_operator::crd::generate;

enum Command {
    Print,
    Write(PathBuf),
    Check(PathBuf),
}

fn parse_args() -> anyhow::Result<Command> {
    let mut args = std::env::args().skip(1);
    let command = match args.next().as_deref() {
        None => Command::Print,
        Some("--out") => Command::Write(args.next().context("--out needs a directory")?.into()),
        Some("--check") => Command::Check(args.next().context("--check needs a directory")?.into()),
        Some("-h" | "--help") => {
            println!("usage: crdgen [--out DIR | --check DIR]");
            std::process::exit(0);
        }
        Some(other) => bail!("unknown argument {other:?}; usage: crdgen [--out DIR | --check DIR]"),
    };
    if let Some(extra) = args.next() {
        bail!("unexpected argument {extra:?}");
    }
    Ok(command)
}

fn main() -> anyhow::Result<ExitCode> {
    match parse_args()? {
        Command::Print => {
            for manifest in generate::manifests()? {
                print!("---\n{}", manifest.content);
            }
        }
        Command::Write(dir) => {
            for path in generate::write(&dir)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Check(dir) => {
            let drift = generate::check(&dir)?;
            if !drift.is_empty() {
                for d in &drift {
                    eprintln!("{}: {d}", dir.display());
                }
                eprintln!(
                    "CRDs are stale: run `cargo run -p ordo-operator --bin crdgen -- --out {}`",
                    dir.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("{} is up to date", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
