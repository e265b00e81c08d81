//! Prometheus metrics of the enforcer. Label sets are bounded: operations by their first
//! [`MAX_OPERATION_LABELS`] ids (then `other`) and [`MAX_LABEL_BYTES`] each, decisions and
//! kinds are fixed enums, rules come from the config.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Operation ids at or beyond this share the label `other`.
pub const MAX_OPERATION_LABELS: u32 = 200;
/// Longest operation label (a longer template is cut at a character boundary).
pub const MAX_LABEL_BYTES: usize = 256;

/// All metrics, registered in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub added_latency: Histogram,
    pub blocked: IntCounterVec,
    pub findings: IntCounterVec,
    pub sessions: IntGauge,
    pub session_evictions: IntCounter,
    pub session_expirations: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub failure_policy: IntCounterVec,
    pub shed: IntCounter,
    pub invalid_tokens: IntCounter,
    pub in_flight: IntGauge,
    /// Incidents opened, by the severity they opened with.
    pub incidents: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub rule_blocked: IntCounterVec,
    /// Operation templates the resolver learned from traffic for paths outside the declared
    /// operations (`operations.maxTemplates` caps them); not the operations the model holds
    /// statistics for (`status.model.endpoints`, `GET /v1/model`).
    pub operations_learned: IntGauge,
    /// Reports to the operator by result (`ok`, `failed`).
    pub reports: IntCounterVec,
    /// When the operator last acknowledged a report of this process, Unix seconds; 0 until
    /// the first (and without a report channel). `time() - …` is the report lag.
    pub report_last_success: Gauge,
    /// 1 once the learned model passed the maturity gate (`learning.minRequests` and
    /// `minSessions`): the learned detectors act. 0 while it learns.
    pub model_mature: IntGauge,
    /// Progress toward the maturity gate, 0 to 1 (the lesser of requests and sessions over
    /// their thresholds).
    pub model_maturity_ratio: Gauge,
    /// Operations the learned model holds statistics for (`status.model.endpoints`).
    pub model_operations: IntGauge,
    /// Of those, operations with a mature volume baseline (`learning.minVolumeWindows`).
    pub model_operations_mature: IntGauge,
    /// JWKS reads and fetches by result (`ok`, `unchanged`, `failed`).
    pub jwks_refreshes: IntCounterVec,
    /// Keys of the JWKS in use.
    pub jwks_keys: IntGauge,
    /// Connections and requests refused by the slow-client limits, by reason
    /// ([`CLIENT_LIMIT_REASONS`]).
    pub client_limit_refusals: IntCounterVec,
    /// Open client connections of the proxy listener (every worker).
    pub connections: IntGauge,
    /// The proxy's connection cap in force (configured, or derived from the file-descriptor limit).
    pub connections_max: IntGauge,
}

/// Why a slow-client limit refused a connection or a request (`limits` and `admin` in
/// docs/enforcer-config.md): the proxy's connection cap, one client's connection cap, the admin
/// listener's connection cap, one client's requests in flight, a request body below the
/// minimum rate.
pub const CLIENT_LIMIT_REASONS: [&str; 5] = [
    "connections",
    "client_connections",
    "admin_connections",
    "client_requests",
    "body_rate",
];

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let added_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ordo_added_latency_seconds",
                "Time the enforcer adds to a request (everything except waiting for the upstream)",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.05,
            ]),
        )?;
        registry.register(Box::new(added_latency.clone()))?;
        Ok(Self {
            requests: counter_vec(
                &registry,
                "ordo_requests_total",
                "Requests by operation and decision (allow, flag, block, reject)",
                &["operation", "decision"],
            )?,
            added_latency,
            blocked: counter_vec(
                &registry,
                "ordo_blocked_total",
                "Requests blocked, by finding kind",
                &["kind"],
            )?,
            findings: counter_vec(
                &registry,
                "ordo_findings_total",
                "Findings (after the mode), by kind",
                &["kind"],
            )?,
            sessions: gauge(
                &registry,
                "ordo_sessions_tracked",
                "Sessions in the session table",
            )?,
            session_evictions: counter(
                &registry,
                "ordo_session_evictions_total",
                "Sessions evicted because the table was full",
            )?,
            session_expirations: counter(
                &registry,
                "ordo_session_expirations_total",
                "Sessions dropped after the idle timeout",
            )?,
            upstream_errors: counter_vec(
                &registry,
                "ordo_upstream_errors_total",
                "Upstream failures by kind (refused, reset, timeout, other)",
                &["kind"],
            )?,
            config_reloads: counter_vec(
                &registry,
                "ordo_config_reloads_total",
                "Config reloads by result (ok, failed)",
                &["result"],
            )?,
            failure_policy: counter_vec(
                &registry,
                "ordo_failure_policy_activations_total",
                "Internal errors handled by the failure policy (open, closed)",
                &["policy"],
            )?,
            shed: counter(
                &registry,
                "ordo_shed_total",
                "Requests refused with 503 by the concurrency limit",
            )?,
            invalid_tokens: counter(
                &registry,
                "ordo_invalid_tokens_total",
                "Session tokens that failed verification",
            )?,
            in_flight: gauge(
                &registry,
                "ordo_requests_in_flight",
                "Requests being processed",
            )?,
            incidents: counter_vec(
                &registry,
                "ordo_incidents_total",
                "Incidents opened, by severity",
                &["severity"],
            )?,
            rule_matches: counter_vec(
                &registry,
                "ordo_rule_matches_total",
                "Sequence rule matches (dry-run included)",
                &["rule"],
            )?,
            rule_blocked: counter_vec(
                &registry,
                "ordo_rule_blocked_total",
                "Requests blocked by a sequence rule",
                &["rule"],
            )?,
            operations_learned: gauge(
                &registry,
                "ordo_operations_learned",
                "Operation templates learned from traffic for paths outside the declared operations (capped by operations.maxTemplates; declared operations and the overflow buckets are not counted)",
            )?,
            reports: counter_vec(
                &registry,
                "ordo_reports_total",
                "Reports to the operator by result",
                &["result"],
            )?,
            report_last_success: float_gauge(
                &registry,
                "ordo_report_last_success_timestamp_seconds",
                "When the operator last acknowledged a report of this enforcer (Unix seconds; 0 before the first and without a report channel)",
            )?,
            model_mature: gauge(
                &registry,
                "ordo_model_mature",
                "1 once the learned model passed the maturity gate (learning.minRequests and minSessions) and the learned detectors act, 0 while it learns",
            )?,
            model_maturity_ratio: float_gauge(
                &registry,
                "ordo_model_maturity_ratio",
                "Progress of the learned model toward the maturity gate, 0 to 1 (the lesser of requests/minRequests and sessions/minSessions)",
            )?,
            model_operations: gauge(
                &registry,
                "ordo_model_operations",
                "Operations the learned model holds statistics for (status.model.endpoints)",
            )?,
            model_operations_mature: gauge(
                &registry,
                "ordo_model_operations_mature",
                "Operations of the learned model with a mature volume baseline (learning.minVolumeWindows session windows): the per-operation detectors judge them",
            )?,
            jwks_refreshes: counter_vec(
                &registry,
                "ordo_jwks_refreshes_total",
                "JWKS reads and fetches by result (ok: a new key set installed, unchanged, failed: the last good set kept)",
                &["result"],
            )?,
            jwks_keys: gauge(
                &registry,
                "ordo_jwks_keys",
                "Keys of the JWKS used to verify session tokens",
            )?,
            client_limit_refusals: counter_vec(
                &registry,
                "ordo_client_limit_refusals_total",
                "Connections and requests refused by the slow-client limits, by reason (connections, client_connections, admin_connections, client_requests, body_rate)",
                &["reason"],
            )?,
            connections: gauge(
                &registry,
                "ordo_connections",
                "Open client connections of the proxy listener",
            )?,
            connections_max: gauge(
                &registry,
                "ordo_connections_max",
                "Connection cap of the proxy listener (configured or derived from the file-descriptor limit)",
            )?,
            registry,
        }
        .initialize())
    }

    /// Creates the series of fixed label sets at zero, so that dashboards and alerts see
    /// them before the first event.
    fn initialize(self) -> Self {
        for kind in ["refused", "reset", "timeout", "other"] {
            self.upstream_errors.with_label_values(&[kind]);
        }
        for result in ["ok", "failed"] {
            self.config_reloads.with_label_values(&[result]);
            self.reports.with_label_values(&[result]);
        }
        for result in ["ok", "unchanged", "failed"] {
            self.jwks_refreshes.with_label_values(&[result]);
        }
        for policy in ["open", "closed"] {
            self.failure_policy.with_label_values(&[policy]);
        }
        for reason in CLIENT_LIMIT_REASONS {
            self.client_limit_refusals.with_label_values(&[reason]);
        }
        self
    }

    /// Creates the series of every finding kind and severity at zero (the names live above
    /// this module, in `finding`).
    pub fn initialize_kinds(&self, kinds: &[&str], severities: &[&str]) {
        for kind in kinds {
            self.blocked.with_label_values(&[kind]);
            self.findings.with_label_values(&[kind]);
        }
        for severity in severities {
            self.incidents.with_label_values(&[severity]);
        }
    }

    /// Creates the series of every declared rule at zero, so that a rule that never matched
    /// shows as 0 rather than missing (called whenever a policy is compiled).
    pub fn initialize_rules<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.rule_matches.with_label_values(&[name]);
            self.rule_blocked.with_label_values(&[name]);
        }
    }

    /// The label of an operation (bounded in number and in length).
    pub fn operation_label(id: u32, template: &str) -> &str {
        if id >= MAX_OPERATION_LABELS {
            return "other";
        }
        let mut end = template.len().min(MAX_LABEL_BYTES);
        while !template.is_char_boundary(end) {
            end -= 1;
        }
        template.get(..end).unwrap_or("other")
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Brings a monotonic counter up to an externally kept total.
    pub fn sync_counter(counter: &IntCounter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }
}
