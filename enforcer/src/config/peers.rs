//! The `peers` section: the other enforcer replicas of the same ApiProtection, among which
//! sessions are spread so that each session is decided by one replica whatever replica a
//! request reaches (`crate::proxy` routes; docs/scale-out.md explains the design). Absent:
//! one replica, no routing at all. Read at start only (a reload does not change it).

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Or a file holding it (surrounding whitespace trimmed), read at start.
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
    /// The shared secret, from `secret` or `secretFile`.
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), None) => s.trim().as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("peers.secretFile {}: {e}", path.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
            _ => return Err("peers: set exactly one of secret, secretFile".into()),
        };
        if secret.len() < 16 {
            return Err("peers: the secret must be at least 16 bytes".into());
        }
        Ok(secret)
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
        if self.secret.as_ref().is_some_and(|s| s.trim().len() < 16) {
            push("secret", "must be at least 16 bytes");
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
        let bad = format!("{base}static: [nohost]\nsecretFile: /s\n");
        assert_eq!(problems(&bad), ["peers.static[0]: must be ip:port"]);
    }

    #[test]
    fn env_is_expanded() {
        // A variable that is not set expands to nothing.
        assert_eq!(expand_env("a${ORDO_NO_SUCH_VAR_X}:1"), "a:1");
        assert_eq!(expand_env("plain"), "plain");
        assert_eq!(expand_env("x${open"), "x${open");
    }
}
