//! The `peers` section: the other enforcer replicas of the same ApiProtection, among which
//! sessions are spread so that each session is decided by one replica whatever replica a
//! request reaches (`crate::proxy` routes; docs/scale-out.md explains the design). Absent:
//! one replica, no routing at all. A reload applies a new secret (rotation: several, one per
//! line), member list, DNS name and timings; `listen`, `advertise` and adding or removing the
//! section take a restart (docs/scale-out.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Duration;

/// The `peers` section of the enforcer config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeersConfig {
    /// Address of the internal listener that takes requests forwarded by other replicas
    /// (only authenticated ones).
    pub listen: SocketAddr,
    /// This replica's address as the others reach it (its entry in `static`, or its pod IP and
    /// the internal port with `dns`). `${NAME}` is replaced by the environment variable NAME
    /// (the operator uses `${POD_IP}:<port>`).
    pub advertise: String,
    /// A fixed list of every replica's internal address, this one included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#static: Vec<String>,
    /// Or: a DNS name resolving to the ready replicas' IPs (a headless Service that does not
    /// publish not-ready addresses), resolved every `refreshInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<PeerDnsConfig>,
    /// The secret shared by the replicas, authenticating forwarded requests (HMAC-SHA256).
    /// Several, one per line, during a rotation: the first signs (and keys the ownership
    /// hash), every one is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Or a file holding it (or them, one per line; each line trimmed), read at start and
    /// again every second, so that an updated Secret applies without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Time to connect to the owner of a session before deciding locally.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How long a replica that could not be reached is left out of the ring before it is
    /// tried again.
    #[serde(default = "default_suspect_for")]
    pub suspect_for: Duration,
}

/// Peer discovery by DNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerDnsConfig {
    /// e.g. `bank-api-enforcer-peers.bank.svc.cluster.local`.
    pub name: String,
    /// The internal port on every replica.
    pub port: u16,
    #[serde(default = "default_refresh")]
    pub refresh_interval: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_suspect_for() -> Duration {
    Duration::from_secs(5)
}

fn default_refresh() -> Duration {
    Duration::from_secs(2)
}

/// Secrets accepted at once (a rotation needs two).
pub const MAX_SECRETS: usize = 4;

/// The secrets of a `secret` value or `secretFile` content: one per line, trimmed.
fn secrets_of(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let secrets: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        return Err("is empty".into());
    }
    if secrets.len() > MAX_SECRETS {
        return Err(format!(
            "holds at most {MAX_SECRETS} secrets (one per line)"
        ));
    }
    if secrets.iter().any(|s| s.len() < 16) {
        return Err("must be at least 16 bytes".into());
    }
    Ok(secrets)
}

/// Replaces `${NAME}` by the value of the environment variable `NAME` (empty when unset).
pub fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&std::env::var(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

impl PeersConfig {
    /// The shared secret that signs, from `secret` or `secretFile` (the first of
    /// [`Self::load_secrets`]).
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        let mut secrets = self.load_secrets()?;
        Ok(secrets.swap_remove(0))
    }

    /// The shared secrets, one per line of `secret` or `secretFile` (each trimmed, empty
    /// lines skipped): the first signs, all are accepted (a rotation's overlap). At least one,
    /// at most [`MAX_SECRETS`], each at least 16 bytes.
    pub fn load_secrets(&self) -> Result<Vec<Vec<u8>>, String> {
        let text = match (&self.secret, &self.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("peers.secretFile {}: {e}", path.display()))?,
            _ => return Err("peers: set exactly one of secret, secretFile".into()),
        };
        secrets_of(&text).map_err(|e| format!("peers.secret: {e}"))
    }

    /// Problems with the section, as (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |f: &str, m: &str| out.push((format!("peers.{f}"), m.to_owned()));
        if self.r#static.is_empty() == self.dns.is_none() {
            push("static", "set exactly one of static, dns");
        }
        if self.secret.is_some() == self.secret_file.is_some() {
            push("secret", "set exactly one of secret, secretFile");
        }
        if let Some(Err(e)) = self.secret.as_deref().map(secrets_of) {
            push("secret", &e);
        }
        if self.r#static.len() > 64 {
            push("static", "at most 64 replicas");
        }
        for (i, p) in self.r#static.iter().enumerate() {
            if expand_env(p).parse::<SocketAddr>().is_err() {
                push(&format!("static[{i}]"), "must be ip:port");
            }
        }
        if self.connect_timeout.std().is_zero() {
            push("connectTimeout", "must be greater than 0");
        }
        if let Some(dns) = &self.dns {
            if dns.name.is_empty() || dns.port == 0 {
                push("dns", "needs a name and a port");
            }
            if dns.refresh_interval.std() < std::time::Duration::from_millis(100) {
                push("dns.refreshInterval", "must be at least 100ms");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        serde_yaml_ng::from_str::<PeersConfig>(yaml)
            .unwrap()
            .problems()
            .into_iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn a_section_needs_one_source_and_one_long_enough_secret() {
        let base = "listen: 127.0.0.1:1\nadvertise: 127.0.0.1:1\n";
        let ok = format!("{base}static: [127.0.0.1:1]\nsecret: 0123456789abcdef\n");
        assert_eq!(problems(&ok), Vec::<String>::new());
        let both = format!("{ok}dns: {{ name: x, port: 1 }}\n");
        assert_eq!(
            problems(&both),
            ["peers.static: set exactly one of static, dns"]
        );
        let short = format!("{base}static: [127.0.0.1:1]\nsecret: short\n");
        assert_eq!(
            problems(&short),
            ["peers.secret: must be at least 16 bytes"]
        );
        let rotating = format!(
            "{base}static: [127.0.0.1:1]\nsecret: \"0123456789abcdef\\nfedcba9876543210\"\n"
        );
        assert_eq!(problems(&rotating), Vec::<String>::new());
        let one_short =
            format!("{base}static: [127.0.0.1:1]\nsecret: \"0123456789abcdef\\nshort\"\n");
        assert_eq!(
            problems(&one_short),
            ["peers.secret: must be at least 16 bytes"]
        );
        let bad = format!("{base}static: [nohost]\nsecretFile: /s\n");
        assert_eq!(problems(&bad), ["peers.static[0]: must be ip:port"]);
    }

    #[test]
    fn the_first_of_several_secrets_signs_and_each_line_counts() {
        let config: PeersConfig = serde_yaml_ng::from_str(
            "listen: 127.0.0.1:1\nadvertise: 127.0.0.1:1\nstatic: [127.0.0.1:1]\nsecret: \"  new-secret-0123456789 \\n\\n old-secret-0123456789\"\n",
        )
        .unwrap();
        assert_eq!(
            config.load_secrets().unwrap(),
            [
                b"new-secret-0123456789".to_vec(),
                b"old-secret-0123456789".to_vec()
            ]
        );
        assert_eq!(config.load_secret().unwrap(), b"new-secret-0123456789");
    }

    #[test]
    fn env_is_expanded() {
        // A variable that is not set expands to nothing.
        assert_eq!(expand_env("a${ORDO_NO_SUCH_VAR_X}:1"), "a:1");
        assert_eq!(expand_env("plain"), "plain");
        assert_eq!(expand_env("x${open"), "x${open");
    }
}
