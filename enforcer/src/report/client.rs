//! The enforcer side of the report channel: every `interval` it sends what this replica
//! learned and saw to the operator and adopts the merged model from the answer.
//!
//! The token is read from its file before every report (projected tokens are rotated by the
//! kubelet), the CA file is re-read when it changes, and failures are retried with an
//! exponential backoff capped at the interval. What has not been acknowledged is kept and
//! resent (see the protocol's exactness notes) with bounded memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{ReportConfig, ReportConfigError};

use super::protocol::{
    IncidentReport, MAX_INCIDENTS_PER_REPORT, MAX_REPORT_BYTES, MAX_RULES_PER_REPORT, Report,
    ReportAnswer, RuleCounters, RunningConfig, TrafficCounters,
};

/// Incidents waiting for acknowledgement are capped; the oldest (by last seen) are dropped.
const MAX_PENDING_INCIDENTS: usize = 1_000;

/// Errors of the report channel.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Config(#[from] ReportConfigError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("sending the report: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("the operator refused the report with status {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the report timed out after {0:?}")]
    Timeout(Duration),
    #[error("adopting the merged model: {0}")]
    Adopt(String),
}

/// What the report client needs from the running enforcer.
pub trait ReportSource: Send + Sync + 'static {
    /// Takes what was learned since the previous call, as `LearnedModel::to_bytes()`;
    /// `None` when nothing was learned. Called only when the previous delta was acknowledged.
    fn take_model_delta(&self) -> Option<Vec<u8>>;
    /// Incidents that are new or changed since the previous call (full records).
    fn changed_incidents(&self) -> Vec<IncidentReport>;
    /// Cumulative traffic counters of this process.
    fn counters(&self) -> TrafficCounters;
    /// Cumulative counters of each declared sequence rule.
    fn rule_counters(&self) -> Vec<RuleCounters>;
    /// Adopts the merged model of all replicas (`LearnedModel::to_bytes()`). The learning
    /// that happened after the last `take_model_delta` must be kept on top of it.
    fn adopt_model(&self, merged: &[u8]) -> Result<(), String>;
    /// The config revision this process runs and since when (`None` without a revision).
    fn running_config(&self) -> Option<RunningConfig> {
        None
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Periodic reporter; see the module docs.
pub struct ReportClient {
    config: ReportConfig,
    replica: String,
    instance: String,
    /// Sequence number of the last delta the operator acknowledged.
    acked_sequence: u64,
    /// The delta being sent (number, bytes) until acknowledged.
    pending_delta: Option<(u64, Vec<u8>)>,
    /// Incidents not acknowledged yet, by id.
    pending_incidents: BTreeMap<String, IncidentReport>,
    http: Option<(Vec<u8>, HttpsClient)>,
    /// Successful reports so far.
    pub sent: u64,
    /// Failed attempts so far.
    pub failed: u64,
    /// `ordo_reports_total`, when the client reports into the enforcer's metrics.
    outcomes: Option<prometheus::IntCounterVec>,
    /// `ordo_report_last_success_timestamp_seconds`, with `outcomes`.
    last_success: Option<prometheus::Gauge>,
}

impl ReportClient {
    /// Creates a client after validating `config`.
    pub fn new(config: ReportConfig) -> Result<Self, ReportError> {
        config.validate()?;
        let replica = config.replica_name();
        Ok(Self {
            config,
            replica,
            instance: new_instance_id(),
            acked_sequence: 0,
            pending_delta: None,
            pending_incidents: BTreeMap::new(),
            http: None,
            sent: 0,
            failed: 0,
            outcomes: None,
            last_success: None,
        })
    }

    /// Counts every attempt in `metrics` (`ordo_reports_total{result}`) and stamps each
    /// acknowledged one (`ordo_report_last_success_timestamp_seconds`), so that a failing or
    /// stalled report channel is visible on `/metrics` and can be alerted on.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.outcomes = Some(metrics.reports.clone());
        self.last_success = Some(metrics.report_last_success.clone());
        self
    }

    fn count(&self, result: &str) {
        if let Some(outcomes) = &self.outcomes {
            outcomes.with_label_values(&[result]).inc();
        }
        if result == "ok"
            && let Some(last_success) = &self.last_success
        {
            last_success.set(crate::time::now_ms() as f64 / 1000.0);
        }
    }

    /// Sends reports every interval until `shutdown` resolves, then one last report
    /// (best effort) so that little is lost on a rolling update.
    pub async fn run(mut self, source: Arc<dyn ReportSource>, shutdown: impl Future<Output = ()>) {
        let interval = Duration::from_secs(self.config.interval_seconds);
        let mut wait = interval;
        let mut failures: u32 = 0;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
            }
            match self.report_once(source.as_ref()).await {
                Ok(()) => {
                    failures = 0;
                    wait = interval;
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    wait = backoff(failures, interval);
                    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "report to the operator failed");
                }
            }
        }
        if let Err(err) = self.report_once(source.as_ref()).await {
            tracing::warn!(error = %err, "final report to the operator failed");
        }
    }

    /// Builds and sends one report; on success adopts the merged model and forgets what was
    /// acknowledged.
    pub async fn report_once(&mut self, source: &dyn ReportSource) -> Result<(), ReportError> {
        if self.pending_delta.is_none()
            && let Some(delta) = source.take_model_delta()
            && !delta.is_empty()
        {
            self.pending_delta = Some((self.acked_sequence + 1, delta));
        }
        self.collect_incidents(source.changed_incidents());
        let (sequence, model_delta) = match &self.pending_delta {
            Some((sequence, delta)) => (*sequence, delta.clone()),
            None => (self.acked_sequence, Vec::new()),
        };
        let incidents: Vec<IncidentReport> = self
            .pending_incidents
            .values()
            .take(MAX_INCIDENTS_PER_REPORT)
            .cloned()
            .collect();
        let mut rules = source.rule_counters();
        rules.truncate(MAX_RULES_PER_REPORT);
        let report = Report {
            replica: self.replica.clone(),
            instance: self.instance.clone(),
            sequence,
            sent_at_ms: crate::time::now_ms(),
            model_delta,
            incidents,
            counters: source.counters(),
            rules,
            config: source.running_config(),
        };
        let timeout = Duration::from_secs(self.config.timeout_seconds);
        let answer = match tokio::time::timeout(timeout, self.send(&report)).await {
            Ok(result) => result,
            Err(_) => Err(ReportError::Timeout(timeout)),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                self.failed += 1;
                self.count("failed");
                return Err(err);
            }
        };
        self.sent += 1;
        self.count("ok");
        if self
            .pending_delta
            .as_ref()
            .is_some_and(|(seq, _)| *seq == sequence)
        {
            self.pending_delta = None;
            self.acked_sequence = sequence;
        }
        for sent in &report.incidents {
            if self.pending_incidents.get(&sent.id) == Some(sent) {
                self.pending_incidents.remove(&sent.id);
            }
        }
        if !answer.model.is_empty() {
            source
                .adopt_model(&answer.model)
                .map_err(ReportError::Adopt)?;
        }
        Ok(())
    }

    fn collect_incidents(&mut self, changed: Vec<IncidentReport>) {
        for incident in changed {
            self.pending_incidents.insert(incident.id.clone(), incident);
        }
        while self.pending_incidents.len() > MAX_PENDING_INCIDENTS {
            let oldest = self
                .pending_incidents
                .values()
                .min_by_key(|incident| incident.last_seen_ms)
                .map(|incident| incident.id.clone());
            match oldest {
                Some(id) => {
                    self.pending_incidents.remove(&id);
                }
                None => break,
            }
        }
    }

    async fn send(&mut self, report: &Report) -> Result<ReportAnswer, ReportError> {
        let token = read_token(&self.config.token_file)?;
        let client = self.http_client()?;
        let body = serde_json::to_vec(report)?;
        let request = http::Request::post(&self.config.url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = client.request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
            .map_err(|err| ReportError::Body(err.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(ReportError::Refused {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The HTTP client, rebuilt when the CA file content changed.
    fn http_client(&mut self) -> Result<HttpsClient, ReportError> {
        let ca = match &self.config.ca_file {
            Some(path) => std::fs::read(path).map_err(|source| ReportError::Read {
                path: path.clone(),
                source,
            })?,
            None => Vec::new(),
        };
        if let Some((cached_ca, client)) = &self.http
            && *cached_ca == ca
        {
            return Ok(client.clone());
        }
        let client = build_client(&ca, self.config.ca_file.as_deref())?;
        self.http = Some((ca, client.clone()));
        Ok(client)
    }
}

fn build_client(ca_pem: &[u8], ca_path: Option<&Path>) -> Result<HttpsClient, ReportError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let ca_error = |message: String| ReportError::Ca {
        path: ca_path.map(Path::to_path_buf).unwrap_or_default(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|err| ca_error(err.to_string()))?;
        roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
    }
    if ca_path.is_some() && roots.is_empty() {
        return Err(ca_error("no certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ca_error(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn read_token(path: &Path) -> Result<String, ReportError> {
    let token = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ReportError::EmptyToken(path.to_path_buf()));
    }
    Ok(token.to_owned())
}

/// Delay after `failures` consecutive failures: 1 s, 2 s, 4 s … capped at `interval`.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(interval)
}

/// A process-unique id: wall clock nanos mixed with the pid through a hasher with a random
/// key (std's `RandomState`), printed as hex.
fn new_instance_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
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
    fn backoff_doubles_and_caps_at_interval() {
        let interval = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn pending_incidents_are_bounded_by_evicting_the_oldest() {
        let mut client = ReportClient::new(config("https://op:8443/x")).unwrap();
        let incidents = (0..(MAX_PENDING_INCIDENTS as u64 + 5))
            .map(|i| IncidentReport {
                id: format!("inc-{i:05}"),
                last_seen_ms: i,
                ..IncidentReport::default()
            })
            .collect();
        client.collect_incidents(incidents);
        assert_eq!(client.pending_incidents.len(), MAX_PENDING_INCIDENTS);
        assert!(!client.pending_incidents.contains_key("inc-00000"));
        assert!(!client.pending_incidents.contains_key("inc-00004"));
        assert!(client.pending_incidents.contains_key("inc-00005"));
    }

    #[test]
    fn an_acknowledged_report_stamps_the_last_success() {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let client = ReportClient::new(config("https://op:8443/x"))
            .unwrap()
            .with_metrics(&metrics);
        client.count("failed");
        assert_eq!(
            metrics.report_last_success.get(),
            0.0,
            "a failure is no success"
        );
        let before = crate::time::now_ms() as f64 / 1000.0;
        client.count("ok");
        let stamped = metrics.report_last_success.get();
        assert!(
            stamped >= before - 0.001 && stamped <= crate::time::now_ms() as f64 / 1000.0,
            "{stamped} vs {before}"
        );
        assert_eq!(metrics.reports.with_label_values(&["ok"]).get(), 1);
    }

    #[test]
    fn instance_ids_differ() {
        assert_ne!(new_instance_id(), new_instance_id());
    }
}
