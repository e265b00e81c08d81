//! Starts the control-plane processes and guarantees they die with the test process.
//!
//! A `static` is never dropped and a test binary can panic, abort or be killed with
//! SIGKILL, so `Drop` alone cannot stop the components. Instead, a tiny POSIX-shell
//! *reaper* is started first with a pipe from this process on its standard input. The pipe's
//! write end is close-on-exec, so only this process holds it: when this process ends for any
//! reason the kernel closes it, the reaper reads end-of-file, stops every component recorded
//! in `<dir>/pids/` in reverse start order (clients before the API server before etcd, so no
//! one waits on a peer that is already gone): SIGTERM, SIGKILL after a grace period. Then it
//! runs the cleanup scripts in `<dir>/cleanup/` (what outlives the components, e.g. the real
//! node's containers, cgroups and bridge) and removes the whole temporary directory. `Drop` uses the same path: it closes the pipe and
//! waits.
//!
//! Components and the reaper run in their own process groups, so a Ctrl-C in a terminal
//! reaches only the test process (which then cleans up) and not etcd in the middle of a write.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long each component gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// The reaper: waits for EOF on stdin, then stops the recorded pids (files `NN-name`) in
/// reverse order, runs the scripts in `$1/cleanup` and removes `$1`. A zombie (state `Z`)
/// counts as stopped: it has exited and only waits for its parent.
const REAPER_SCRIPT: &str = r#"
dir="$1"
grace_ticks="$2"
while read -r _ignored; do :; done
alive() {
    [ -e "/proc/$1" ] || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ]
}
wait_gone() {
    i=0
    while alive "$1" && [ "$i" -lt "$2" ]; do
        sleep 0.1
        i=$((i + 1))
    done
}
for f in $(ls -r "$dir/pids" 2>/dev/null); do
    p=$(cat "$dir/pids/$f" 2>/dev/null)
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || continue
    wait_gone "$p" "$grace_ticks"
    if alive "$p"; then
        kill -KILL "$p" 2>/dev/null
        wait_gone "$p" 10
    fi
done
for f in $(ls "$dir/cleanup" 2>/dev/null); do
    sh "$dir/cleanup/$f" >/dev/null 2>&1
done
rm -rf "$dir"
"#;

/// One running control-plane component.
#[derive(Debug)]
struct Component {
    name: String,
    child: Child,
    log: PathBuf,
    /// `pids/NN-name`: the reaper stops components in reverse `NN` order.
    pid_file: PathBuf,
    exited: Option<ExitStatus>,
}

/// Owns the reaper and the components of one control plane in `dir`.
#[derive(Debug)]
pub struct Supervisor {
    dir: PathBuf,
    reaper: Option<Child>,
    reaper_stdin: Option<ChildStdin>,
    components: Vec<Component>,
}

impl Supervisor {
    /// Starts the reaper for `dir` (which it removes at the end). Call this before anything
    /// else is put in `dir`, so nothing can leak.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["pids", "logs", "cleanup"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let grace_ticks = (GRACE.as_millis() / 100).to_string();
        let mut reaper = Command::new("sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("ordo-cluster-reaper")
            .arg(dir)
            .arg(grace_ticks)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the reaper (sh)")?;
        let reaper_stdin = reaper.stdin.take();
        Ok(Self {
            dir: dir.to_path_buf(),
            reaper: Some(reaper),
            reaper_stdin,
            components: Vec::new(),
        })
    }

    /// Starts `program` as component `name`, output appended to `logs/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
    ) -> anyhow::Result<u32> {
        let log = self.log_path(name);
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child.id();
        // Record the pid before anything else can fail, so the reaper knows about it.
        let pid_file = self
            .dir
            .join("pids")
            .join(format!("{:02}-{name}", self.components.len()));
        std::fs::write(&pid_file, pid.to_string())
            .with_context(|| format!("writing {}", pid_file.display()))?;
        self.components.push(Component {
            name: name.to_owned(),
            child,
            log,
            pid_file,
            exited: None,
        });
        Ok(pid)
    }

    /// Registers `script` (POSIX shell), which the reaper runs after stopping every component
    /// and before removing the directory, whatever way this process ends.
    pub fn add_cleanup(&self, name: &str, script: &str) -> anyhow::Result<()> {
        let path = self.dir.join("cleanup").join(name);
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))
    }

    /// Fails, with the tail of its log, when a component has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for component in &mut self.components {
            if component.exited.is_none()
                && let Some(status) = component.child.try_wait()?
            {
                component.exited = Some(status);
                // Its pid may be reused now: the reaper must not signal it any more.
                let _ = std::fs::remove_file(&component.pid_file);
            }
            if let Some(status) = component.exited {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    component.name,
                    component.log.display(),
                    tail(&component.log, 40)
                );
            }
        }
        Ok(())
    }

    /// `logs/<name>.log` under the cluster directory.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.log_path(name), lines)
    }

    /// `(name, pid)` of every component started so far.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.components
            .iter()
            .map(|c| (c.name.clone(), c.child.id()))
            .collect()
    }

    /// Stops every component and removes the directory; waits at most the grace period plus
    /// a margin. Idempotent.
    pub fn shutdown(&mut self) {
        // EOF for the reaper: it signals the components and removes the directory.
        drop(self.reaper_stdin.take());
        let Some(mut reaper) = self.reaper.take() else {
            return;
        };
        let components = u32::try_from(self.components.len()).unwrap_or(u32::MAX);
        let deadline = Instant::now() + GRACE.saturating_mul(components) + Duration::from_secs(5);
        loop {
            // Reap our exited children promptly so the reaper sees them gone, not as zombies.
            for component in &mut self.components {
                if component.exited.is_none()
                    && let Ok(Some(status)) = component.child.try_wait()
                {
                    component.exited = Some(status);
                }
            }
            if matches!(reaper.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for component in &mut self.components {
            if component.exited.is_none() {
                let _ = component.child.kill();
                component.exited = component.child.wait().ok();
            }
        }
        if matches!(reaper.try_wait(), Ok(None)) {
            let _ = reaper.kill();
            let _ = reaper.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `lines` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let mut last = VecDeque::with_capacity(lines);
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if last.len() == lines {
            last.pop_front();
        }
        last.push_back(line);
    }
    Vec::from(last).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
                state != Some("Z")
            })
            .unwrap_or(false)
    }

    #[test]
    fn shutdown_stops_components_and_removes_the_directory() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cluster");
        let mut supervisor = Supervisor::start(&dir).unwrap();
        let pid = supervisor
            .spawn("sleeper", Path::new("sleep"), &["300".to_owned()], &[])
            .unwrap();
        assert!(alive(pid));
        supervisor.check_running().unwrap();
        let started = Instant::now();
        supervisor.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!alive(pid));
        assert!(!dir.exists());
    }

    /// A component that appends its name to `record` when asked to stop (or ignores SIGTERM).
    fn stoppable(name: &str, record: &Path, ignore_term: bool) -> Vec<String> {
        let on_term = if ignore_term {
            String::new()
        } else {
            format!("echo {name} >> '{}'; exit 0", record.display())
        };
        vec![
            "-c".to_owned(),
            format!("trap \"{on_term}\" TERM; while :; do sleep 0.05; done"),
        ]
    }

    #[test]
    fn components_stop_in_reverse_start_order() {
        let base = tempfile::tempdir().unwrap();
        let record = base.path().join("order");
        let mut supervisor = Supervisor::start(&base.path().join("c")).unwrap();
        for name in ["store", "server", "client"] {
            supervisor
                .spawn(name, Path::new("sh"), &stoppable(name, &record, false), &[])
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        supervisor.shutdown();
        assert_eq!(
            std::fs::read_to_string(&record).unwrap(),
            "client\nserver\nstore\n"
        );
    }

    #[test]
    fn a_component_ignoring_sigterm_is_killed_after_the_grace_period() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("c");
        let mut supervisor = Supervisor::start(&dir).unwrap();
        let record = base.path().join("order");
        let pid = supervisor
            .spawn(
                "stubborn",
                Path::new("sh"),
                &stoppable("x", &record, true),
                &[],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        supervisor.shutdown();
        let took = started.elapsed();
        assert!(!alive(pid));
        assert!(!dir.exists());
        assert!(
            took >= GRACE && took < GRACE + Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn an_exited_component_is_reported_with_its_log() {
        let base = tempfile::tempdir().unwrap();
        let mut supervisor = Supervisor::start(&base.path().join("c")).unwrap();
        supervisor
            .spawn(
                "failing",
                Path::new("sh"),
                &[
                    "-c".to_owned(),
                    "echo bad flag --nope >&2; exit 3".to_owned(),
                ],
                &[],
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match supervisor.check_running() {
                Err(err) => break err.to_string(),
                Ok(()) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(()) => panic!("the component never exited"),
            }
        };
        assert!(err.contains("failing exited"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("bad flag --nope"), "{err}");
    }

    #[test]
    fn cleanup_scripts_run_after_the_components_stop() {
        let base = tempfile::tempdir().unwrap();
        let record = base.path().join("order");
        let mut supervisor = Supervisor::start(&base.path().join("c")).unwrap();
        supervisor
            .spawn(
                "server",
                Path::new("sh"),
                &stoppable("server", &record, false),
                &[],
            )
            .unwrap();
        supervisor
            .add_cleanup("node", &format!("echo cleanup >> '{}'", record.display()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        supervisor.shutdown();
        assert_eq!(
            std::fs::read_to_string(&record).unwrap(),
            "server\ncleanup\n"
        );
        assert!(!base.path().join("c").exists());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail(&path, 3), "line 98\nline 99\nline 100");
    }
}
