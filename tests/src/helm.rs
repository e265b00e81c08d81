//! A real `helm` (built from the Go module proxy by `tests/cluster/build-helm.sh`) for the
//! suites that install the chart `charts/ordo`: `tests/tests/e2e_helm.rs` against kwok's
//! fake node, `tests/tests/e2e_node.rs` on the real node.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cluster::{self, TestCluster};

/// Longest a single helm invocation may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The chart in the repository.
pub fn chart_dir() -> PathBuf {
    cluster::workspace_root().join("charts/ordo")
}

/// The helm release pinned in tests/cluster/helm/go.mod.
pub fn pinned_version() -> anyhow::Result<String> {
    cluster::binaries::pinned_go_module_version("helm", "helm.sh/helm/v3")
}

/// `$ORDO_HELM`, else `${ORDO_CACHE:-$HOME/.cache/ordo}/helm-<version>/bin/helm` (where
/// build-helm.sh puts it).
pub fn path() -> anyhow::Result<PathBuf> {
    cluster::binaries::go_tool_path("helm", "helm.sh/helm/v3", "ORDO_HELM")
}

/// A helm with its own config/cache/data directories (nothing of the user's is read or
/// written) and, when given, a cluster's kubeconfig.
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// Fails, with the command to run, when helm has not been built.
    pub fn new() -> anyhow::Result<Self> {
        let bin = path()?;
        let executable = std::fs::metadata(&bin).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !executable {
            bail!(
                "helm {} is not built: {} is missing. Run `tests/cluster/build-helm.sh` (it builds \
                 helm from the Go module proxy into that cache), or point ORDO_HELM at a helm 3 binary.",
                pinned_version()?,
                bin.display()
            );
        }
        Ok(Self {
            bin,
            home: tempfile::tempdir().context("creating helm's home")?,
            kubeconfig: None,
        })
    }

    /// A helm that talks to `cluster` with its admin kubeconfig.
    pub fn for_cluster(cluster: &TestCluster) -> anyhow::Result<Self> {
        Ok(Self {
            kubeconfig: Some(cluster.kubeconfig_path().to_path_buf()),
            ..Self::new()?
        })
    }

    /// `helm ARGS` with this helm's environment, not started.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(args)
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .kill_on_drop(true)
            .stdin(Stdio::null());
        match &self.kubeconfig {
            Some(kubeconfig) => command.env("KUBECONFIG", kubeconfig),
            // Offline commands must not reach any cluster.
            None => command.env("KUBECONFIG", self.home.path().join("no-kubeconfig")),
        };
        command
    }

    /// Runs helm and returns its output, whatever the exit status.
    pub async fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting helm")?;
        tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("helm {args:?} did not finish within {COMMAND_TIMEOUT:?}"))?
            .context("waiting for helm")
    }

    /// Runs helm, fails when it fails, and returns its stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args).await?;
        if !out.status.success() {
            bail!(
                "helm {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).context("helm's output is not UTF-8")
    }
}
