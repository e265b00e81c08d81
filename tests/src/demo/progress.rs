//! What the demo shows while it waits: a spinner for steps of unknown length (builds, start
//! of the control plane) and a bar for learning, with `indicatif`. Without a terminal (CI,
//! a pipe) indicatif draws nothing, so every step also prints one line when it ends.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// A step of the demo, shown as a spinner until it ends.
pub struct Step {
    bar: ProgressBar,
    title: String,
    started: Instant,
}

impl Step {
    /// Starts a spinner titled `title`.
    pub fn start(title: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.cyan} {prefix:.bold} {wide_msg:.dim} {elapsed:>4}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(title.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            title: title.to_owned(),
            started: Instant::now(),
        }
    }

    /// Shows a detail next to the title (the last line of a build, what is awaited).
    pub fn detail(&self, text: &str) {
        self.bar
            .set_message(text.trim().chars().take(160).collect::<String>());
    }

    /// Ends the step with a check mark and its duration.
    pub fn done(self, result: &str) {
        self.bar.finish_and_clear();
        println!(
            "✔ {} — {result} ({:.1}s)",
            self.title,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Ends the step with a cross (the error is reported by the caller).
    pub fn fail(self) {
        self.bar.finish_and_clear();
        println!(
            "✘ {} (after {:.1}s)",
            self.title,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A bar from 0 to `len` for learning, with a message under the caller's control.
pub fn learning_bar(len: u64, title: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.green/dim}] {percent:>3}% {wide_msg} {elapsed:>4}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar.set_prefix(title.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `command` to completion under a spinner that shows its latest output line. On
/// failure, prints the last lines of its output and fails.
pub fn run_command(title: &str, mut command: Command) -> anyhow::Result<()> {
    let step = Step::start(title);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut last = std::collections::VecDeque::with_capacity(40);
    for line in rx {
        step.detail(&line);
        if last.len() == 40 {
            last.pop_front();
        }
        last.push_back(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().context("waiting for the command")?;
    if !status.success() {
        step.fail();
        eprintln!("{}", Vec::from(last).join("\n"));
        bail!("{title} failed ({status})");
    }
    step.done("done");
    Ok(())
}
