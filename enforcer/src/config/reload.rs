//! Noticing that the config file changed. A mounted ConfigMap changes by swapping the
//! `..data` symlink in its directory, which inotify on the file itself does not report;
//! polling the canonical path, modification time, length and a content hash every second
//! catches that and plain edits alike, at negligible cost.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{ConfigError, EnforcerConfig, parse_yaml};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    canonical: Option<PathBuf>,
    modified: Option<SystemTime>,
    len: u64,
    content: u64,
}

/// What one poll found.
#[derive(Debug)]
pub enum ReloadOutcome {
    Unchanged,
    /// The file changed and the new content is valid.
    Loaded(Box<EnforcerConfig>),
    /// The file changed and the new content is invalid (the old config stays).
    Rejected(ConfigError),
}

/// Polls one config file for changes.
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    last: Option<Fingerprint>,
}

fn fingerprint(path: &Path) -> Result<(Fingerprint, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(path).ok();
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    Ok((
        Fingerprint {
            canonical: std::fs::canonicalize(path).ok(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map(|m| m.len()).unwrap_or(0),
            content: h.finish(),
        },
        text,
    ))
}

impl ConfigWatcher {
    /// Reads and parses the config file, and watches it from exactly the text that was
    /// parsed. (Taking the baseline later, when the watching starts, would count a change
    /// made while the process starts as already loaded, and it would never be applied.)
    pub fn load(path: &Path) -> Result<(Self, EnforcerConfig), ConfigError> {
        let (fingerprint, text) = fingerprint(path)?;
        let config = parse_yaml(&text)?;
        let watcher = Self {
            path: path.to_path_buf(),
            last: Some(fingerprint),
        };
        Ok((watcher, config))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once.
    pub fn poll(&mut self) -> ReloadOutcome {
        match fingerprint(&self.path) {
            Ok((fp, text)) => {
                if self
                    .last
                    .as_ref()
                    .is_some_and(|l| l.content == fp.content && l.len == fp.len)
                {
                    self.last = Some(fp);
                    return ReloadOutcome::Unchanged;
                }
                self.last = Some(fp);
                match parse_yaml(&text) {
                    Ok(config) => ReloadOutcome::Loaded(Box::new(config)),
                    Err(e) => ReloadOutcome::Rejected(e),
                }
            }
            // A missing file mid-swap is transient: try again next time, keep the old config.
            Err(e) => {
                if self.last.take().is_some() {
                    ReloadOutcome::Rejected(e)
                } else {
                    ReloadOutcome::Unchanged
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "upstream:\n  url: http://127.0.0.1:9\nmode: Monitor\n";

    #[test]
    fn a_change_between_load_and_the_first_poll_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let (mut watcher, loaded) = ConfigWatcher::load(&path).unwrap();
        assert_eq!(loaded.mode, crate::config::Mode::Monitor);
        assert!(matches!(watcher.poll(), ReloadOutcome::Unchanged));
        // The process is still starting when the file changes.
        std::fs::write(&path, CONFIG.replace("Monitor", "Enforce")).unwrap();
        match watcher.poll() {
            ReloadOutcome::Loaded(config) => {
                assert_eq!(config.mode, crate::config::Mode::Enforce);
            }
            other => panic!("the change was not seen: {other:?}"),
        }
        assert!(matches!(watcher.poll(), ReloadOutcome::Unchanged));
    }
}
