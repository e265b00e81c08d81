//! Where the control-plane binaries built by `tests/cluster/build.sh` live.
//!
//! They are built once per machine into a cache outside the repository, keyed by the
//! Kubernetes release, because a cold build takes tens of minutes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The Kubernetes release pinned in `tests/cluster/go.mod` (a unit test keeps them equal).
pub const K8S_VERSION: &str = "v1.36.3";

/// Every executable the harness starts or hands to tests.
pub const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
];

/// kwok's stage definitions, extracted by `build.sh` from the pinned kwok module.
pub const KWOK_STAGES: &str = "kwok-stages.yaml";

/// The directory the binaries are expected in: `$ORDO_K8S_BIN` when set, otherwise
/// `${ORDO_CACHE:-$HOME/.cache/ordo}/k8s-<version>/bin` (the same rule as `build.sh`).
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORDO_K8S_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    cache_root().join(format!("k8s-{K8S_VERSION}")).join("bin")
}

/// Where the build scripts cache what they build: `${ORDO_CACHE:-$HOME/.cache/ordo}`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("ORDO_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache").join("ordo")
        })
}

/// The version of `module` required in `tests/cluster/<module_dir>/go.mod`.
pub fn pinned_go_module_version(module_dir: &str, module: &str) -> anyhow::Result<String> {
    let go_mod =
        crate::cluster::workspace_root().join(format!("tests/cluster/{module_dir}/go.mod"));
    let text = std::fs::read_to_string(&go_mod)
        .with_context(|| format!("reading {}", go_mod.display()))?;
    text.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(name), Some(version)) if name == module && version.starts_with('v') => {
                    Some(version.to_owned())
                }
                _ => None,
            }
        })
        .with_context(|| format!("no {module} requirement in {}", go_mod.display()))
}

/// Where `tests/cluster/build-<module_dir>.sh` puts the tool built from the Go module pinned
/// in `tests/cluster/<module_dir>/go.mod`: `$<env_override>` when set, else
/// `<cache_root>/<module_dir>-<version>/bin/<module_dir>`.
pub fn go_tool_path(module_dir: &str, module: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let version = pinned_go_module_version(module_dir, module)?;
    Ok(cache_root()
        .join(format!("{module_dir}-{version}"))
        .join("bin")
        .join(module_dir))
}

/// [`go_tool_path`], failing with the command that builds the tool when it is missing.
pub fn go_tool(module_dir: &str, module: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    let bin = go_tool_path(module_dir, module, env_override)?;
    if !is_executable(&bin) {
        bail!(
            "{module_dir} is not built: {} is missing. Run `tests/cluster/build-{module_dir}.sh` \
             (it builds it from the Go module proxy into that cache), or point {env_override} at \
             a {module_dir} binary.",
            bin.display()
        );
    }
    Ok(bin)
}

/// Checks that `dir` holds every binary (executable) and the kwok stages, and says how to
/// build them when it does not.
pub fn verify_bin_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|name| !is_executable(&dir.join(name)))
        .chain((!dir.join(KWOK_STAGES).is_file()).then_some(KWOK_STAGES))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the local Kubernetes {K8S_VERSION} control plane is not built: {} missing from {}. \
             Run `tests/cluster/build.sh` (it builds them with Go into that cache; \
             set ORDO_K8S_BIN to use another directory)",
            missing.join(", "),
            dir.display()
        );
    }
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_version_matches_the_go_module() {
        let go_mod =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/go.mod"))
                .unwrap();
        let pinned = go_mod
            .lines()
            .filter(|l| !l.contains("=>"))
            .find_map(|l| {
                let mut words = l.split_whitespace();
                while let Some(w) = words.next() {
                    if w == "k8s.io/kubernetes" {
                        return words.next().map(str::to_owned);
                    }
                }
                None
            })
            .unwrap();
        assert_eq!(pinned, K8S_VERSION);
        // Every staging module must be pinned to the matching v0.X.Y release.
        let staging = format!("v0{}", &K8S_VERSION[2..]);
        let replaces: Vec<&str> = go_mod.lines().filter(|l| l.contains("=>")).collect();
        assert!(replaces.len() >= 30, "{replaces:?}");
        for line in replaces {
            assert!(line.trim_end().ends_with(&staging), "{line}");
        }
    }

    #[test]
    fn missing_binaries_are_named_with_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let err = verify_bin_dir(dir.path()).unwrap_err().to_string();
        // `etcd` exists but is not executable, so it counts as missing too.
        for name in BINARIES.iter().chain([&KWOK_STAGES]) {
            assert!(err.contains(name), "{err}");
        }
        assert!(err.contains("tests/cluster/build.sh"), "{err}");
    }

    #[test]
    fn a_complete_directory_is_accepted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for name in BINARIES {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.path().join(KWOK_STAGES), "kind: Stage\n").unwrap();
        assert_eq!(
            verify_bin_dir(dir.path()).unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }
}
