//! Closed-loop throughput runs with wrk (Debian's `wrk` 4.1) and the `bench/wrk/mix.lua`
//! script, which sends the same banking mix as the Rust generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

/// One wrk invocation.
#[derive(Debug, Clone)]
pub struct WrkRun<'a> {
    pub target: SocketAddr,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    pub cpus: Option<&'a str>,
    pub script: &'a Path,
    pub data_dir: &'a Path,
    pub first_session: u64,
    pub sessions: u64,
    pub start_step: usize,
    /// Where done() writes its JSON summary.
    pub out: PathBuf,
}

/// The JSON written by `done()` in `mix.lua`.
#[derive(Debug, Clone, Deserialize)]
pub struct WrkSummary {
    pub duration_us: u64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: WrkErrors,
    pub latency_us: WrkLatency,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses with a status of 400 or more.
    pub status: u64,
    pub timeout: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WrkLatency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl WrkSummary {
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            0.0
        } else {
            self.requests as f64 / (self.duration_us as f64 / 1e6)
        }
    }

    pub fn transport_errors(&self) -> u64 {
        self.errors.connect + self.errors.read + self.errors.write + self.errors.timeout
    }
}

/// The command line of a run (taskset prefix included).
pub fn command(run: &WrkRun<'_>) -> Command {
    let mut cmd = match run.cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    let secs = run.duration.as_secs().max(1);
    cmd.arg("-t")
        .arg(run.threads.max(1).to_string())
        .arg("-c")
        .arg(run.connections.max(run.threads).to_string())
        .arg("-d")
        .arg(format!("{secs}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(run.script)
        .arg(format!("http://{}", run.target))
        .arg("--")
        .arg(run.data_dir)
        .arg(run.first_session.to_string())
        .arg(run.sessions.to_string())
        .arg(run.start_step.to_string())
        .env("ORDO_WRK_OUT", &run.out)
        .stdin(Stdio::null());
    cmd
}

/// Runs wrk and reads its summary; fails with wrk's output when it did not write one.
pub fn run(run: &WrkRun<'_>) -> anyhow::Result<WrkSummary> {
    let _ = std::fs::remove_file(&run.out);
    let output = command(run)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk: {e} (apt-get install wrk)"))?;
    let text = std::fs::read_to_string(&run.out).map_err(|_| {
        anyhow::anyhow!(
            "wrk wrote no summary ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_parses_and_rates() {
        let s: WrkSummary = serde_json::from_str(
            r#"{"duration_us":2000000,"requests":5000,"bytes":1,"errors":{"connect":0,"read":1,"write":0,"status":3,"timeout":2},"latency_us":{"p50":100,"p90":200,"p99":300,"p999":400,"max":500,"mean":120.5}}"#,
        )
        .unwrap();
        assert_eq!(s.rps(), 2500.0);
        assert_eq!(s.transport_errors(), 3);
    }

    #[test]
    fn command_pins_and_passes_the_slice() {
        let run = WrkRun {
            target: "127.0.0.1:8080".parse().unwrap(),
            threads: 1,
            connections: 64,
            duration: Duration::from_secs(5),
            cpus: Some("0"),
            script: Path::new("mix.lua"),
            data_dir: Path::new("/d"),
            first_session: 100,
            sessions: 50,
            start_step: 1,
            out: PathBuf::from("/tmp/o.json"),
        };
        let cmd = command(&run);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "taskset");
        assert_eq!(&args[..3], ["-c", "0", "wrk"]);
        assert!(args.ends_with(&[
            "--".into(),
            "/d".into(),
            "100".into(),
            "50".into(),
            "1".into()
        ]));
    }
}
