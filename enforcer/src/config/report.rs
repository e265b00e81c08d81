//! The `report` section: where and how an enforcer reports to the operator. The client that
//! sends the reports lives in `crate::report`; the section is validated here with the rest of
//! the config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `report` section of the enforcer config: where and how to report to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportConfig {
    /// Full URL of this ApiProtection's report endpoint,
    /// e.g. `https://ordo-operator.ordo-system.svc:8443/v1/reports/bank/bank-api`.
    pub url: String,
    /// File holding the projected ServiceAccount token (audience `ordo-report`); re-read
    /// before every report.
    pub token_file: PathBuf,
    /// PEM file with the CA that signed the operator's serving certificate. Required for
    /// `https` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Seconds between reports.
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: u64,
    /// Seconds one report may take before it counts as failed.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Replica name shown by the operator; defaults to `$POD_NAME`, then `$HOSTNAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

fn default_interval_seconds() -> u64 {
    30
}

fn default_timeout_seconds() -> u64 {
    10
}

impl ReportConfig {
    /// Checks the section; errors name the field under `report.`.
    pub fn validate(&self) -> Result<(), ReportConfigError> {
        let field = |name: &str, message: String| ReportConfigError {
            field: format!("report.{name}"),
            message,
        };
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|err| field("url", format!("invalid URL {:?}: {err}", self.url)))?;
        match uri.scheme_str() {
            Some("https") => {
                if self.ca_file.is_none() {
                    return Err(field("caFile", "required for an https url".into()));
                }
            }
            Some("http") => {
                let host = uri.host().unwrap_or_default();
                if !is_loopback_host(host) {
                    return Err(field(
                        "url",
                        "plain http is only allowed to a loopback host; use https".into(),
                    ));
                }
            }
            _ => {
                return Err(field(
                    "url",
                    format!("scheme must be https (got {:?})", self.url),
                ));
            }
        }
        if uri.host().is_none() {
            return Err(field("url", format!("no host in {:?}", self.url)));
        }
        if !(1..=3600).contains(&self.interval_seconds) {
            return Err(field(
                "intervalSeconds",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(1..=300).contains(&self.timeout_seconds) {
            return Err(field("timeoutSeconds", "must be between 1 and 300".into()));
        }
        if self.token_file.as_os_str().is_empty() {
            return Err(field("tokenFile", "must not be empty".into()));
        }
        Ok(())
    }

    /// The replica name reports carry: `replica`, else `$POD_NAME`, else `$HOSTNAME`.
    pub fn replica_name(&self) -> String {
        self.replica
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()))
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "enforcer".to_owned())
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `report` field with a problem; `field` is the path under `report.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ReportConfigError {
    pub field: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ReportConfig {
        ReportConfig {
            url: url.into(),
            token_file: "/tmp/token".into(),
            ca_file: Some("/tmp/ca.crt".into()),
            interval_seconds: 30,
            timeout_seconds: 10,
            replica: Some("r0".into()),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(
            config("https://op.ordo-system.svc:8443/v1/reports/a/b")
                .validate()
                .is_ok()
        );
        let err = config("ftp://x/y").validate().unwrap_err().to_string();
        assert!(err.starts_with("report.url:"), "{err}");
        let mut no_ca = config("https://op:8443/v1/reports/a/b");
        no_ca.ca_file = None;
        assert!(
            no_ca
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("report.caFile:")
        );
        let mut plain = config("http://10.0.0.1:8080/v1/reports/a/b");
        plain.ca_file = None;
        assert!(plain.validate().is_err());
        plain.url = "http://127.0.0.1:8080/v1/reports/a/b".into();
        assert!(plain.validate().is_ok());
        let mut interval = config("https://op:8443/x");
        interval.interval_seconds = 0;
        assert!(
            interval
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("report.intervalSeconds:")
        );
    }
}
