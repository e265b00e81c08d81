//! Prometheus metrics of the operator, served as text on `/metrics` of the health port.
//!
//! Label values are bounded: results and error kinds are fixed enums, ApiProtections are
//! not used as labels (their number is unbounded in principle); what is per ApiProtection is
//! counted instead (`protections_without_ready_enforcers`).

use std::collections::BTreeSet;

use parking_lot::Mutex;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric of the operator, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by kind (`ApiProtection`) and result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by error kind (see `Error::metric_kind`).
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration.
    pub reconcile_seconds: Histogram,
    /// Reports by outcome: `applied`, `duplicate`, `unauthenticated`, `forbidden`, `invalid`,
    /// `not_leader`, `error`.
    pub reports: IntCounterVec,
    /// Size of merged model deltas (bytes, compressed).
    pub merge_bytes: Histogram,
    /// Size of the persisted merged models (bytes, compressed), last written.
    pub model_bytes: Histogram,
    /// Webhook decisions by kind and decision (`allowed`, `denied`, `error`).
    pub webhook_decisions: IntCounterVec,
    /// Status refreshes that reports asked for: `requested` (a reconcile was queued), `deferred`
    /// (queued after `min_refresh`), `dropped` (the queue was full; the periodic requeue refreshes).
    pub status_refreshes: IntCounterVec,
    /// Serving certificate reloads by result.
    pub tls_reloads: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Seconds from a spec change to an enforcer running it (see `propagation`).
    pub config_propagation: Histogram,
    /// ApiProtections whose enforcer Deployment has no ready replica: their Service is served
    /// by nobody in Takeover, or unprotected in Alongside.
    pub protections_without_ready_enforcers: IntGauge,
    /// When the serving certificate (webhook, reports) expires, Unix seconds; 0 until loaded.
    pub tls_certificate_expiry: IntGauge,
    /// The `(namespace, name)` behind `protections_without_ready_enforcers`.
    unready: Mutex<BTreeSet<(String, String)>>,
}

impl Metrics {
    /// Creates and registers every metric; fails only on a malformed metric definition.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("ordo_operator".into()), None)?;
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles by kind and result"),
            &["kind", "result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Reconcile errors by error kind"),
            &["error"],
        )?;
        let reconcile_seconds = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of one reconcile").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
        )?;
        let reports = IntCounterVec::new(
            Opts::new("reports_total", "Enforcer reports by outcome"),
            &["outcome"],
        )?;
        let merge_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "report_merge_bytes",
                "Compressed size of merged model deltas",
            )
            .buckets(prometheus::exponential_buckets(256.0, 4.0, 8)?),
        )?;
        let model_bytes = Histogram::with_opts(
            HistogramOpts::new(
                "model_persisted_bytes",
                "Compressed size of the persisted merged models",
            )
            .buckets(prometheus::exponential_buckets(1024.0, 4.0, 7)?),
        )?;
        let webhook_decisions = IntCounterVec::new(
            Opts::new(
                "webhook_decisions_total",
                "Admission decisions by kind and decision",
            ),
            &["kind", "decision"],
        )?;
        let status_refreshes = IntCounterVec::new(
            Opts::new(
                "status_refreshes_total",
                "Status refreshes requested by enforcer reports, by result",
            ),
            &["result"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new("tls_reloads_total", "Serving certificate reloads by result"),
            &["result"],
        )?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader Lease")?;
        let config_propagation = Histogram::with_opts(
            HistogramOpts::new(
                "config_propagation_seconds",
                "From a spec change of an ApiProtection or its SequenceRules to an enforcer running the config rendered from it",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0]),
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_seconds.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(merge_bytes.clone()))?;
        registry.register(Box::new(model_bytes.clone()))?;
        registry.register(Box::new(webhook_decisions.clone()))?;
        registry.register(Box::new(status_refreshes.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(config_propagation.clone()))?;
        let protections_without_ready_enforcers = IntGauge::new(
            "protections_without_ready_enforcers",
            "ApiProtections whose enforcer Deployment has no ready replica",
        )?;
        registry.register(Box::new(protections_without_ready_enforcers.clone()))?;
        let tls_certificate_expiry = IntGauge::new(
            "tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate of the webhook and the report endpoint expires",
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            reports,
            merge_bytes,
            model_bytes,
            webhook_decisions,
            status_refreshes,
            tls_reloads,
            leader,
            config_propagation,
            protections_without_ready_enforcers,
            tls_certificate_expiry,
            unready: Mutex::new(BTreeSet::new()),
        }
        .initialize())
    }

    /// Creates the series of fixed label sets at zero, so that dashboards and alerts see
    /// them before the first event.
    fn initialize(self) -> Self {
        for kind in ["ApiProtection", "SequenceRule"] {
            for result in ["ok", "error"] {
                self.reconciles.with_label_values(&[kind, result]);
            }
            for decision in ["allowed", "denied", "error"] {
                self.webhook_decisions.with_label_values(&[kind, decision]);
            }
        }
        for error in crate::error::Error::METRIC_KINDS {
            self.reconcile_errors.with_label_values(&[error]);
        }
        for outcome in [
            "applied",
            "duplicate",
            "unauthenticated",
            "forbidden",
            "invalid",
            "not_leader",
            "error",
        ] {
            self.reports.with_label_values(&[outcome]);
        }
        for result in ["ok", "error"] {
            self.tls_reloads.with_label_values(&[result]);
        }
        for result in ["requested", "deferred", "dropped"] {
            self.status_refreshes.with_label_values(&[result]);
        }
        self
    }

    /// Records how many enforcers of an ApiProtection are ready (after a reconcile).
    pub fn note_ready_enforcers(&self, namespace: &str, name: &str, ready: i32) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut unready = self.unready.lock();
        if ready > 0 {
            unready.remove(&key);
        } else {
            unready.insert(key);
        }
        self.protections_without_ready_enforcers
            .set(i64::try_from(unready.len()).unwrap_or(i64::MAX));
    }

    /// Forgets a deleted ApiProtection.
    pub fn forget_protection(&self, namespace: &str, name: &str) {
        let mut unready = self.unready.lock();
        unready.remove(&(namespace.to_owned(), name.to_owned()));
        self.protections_without_ready_enforcers
            .set(i64::try_from(unready.len()).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protections_without_ready_enforcers_follows_each_protection() {
        let metrics = Metrics::new().unwrap();
        metrics.note_ready_enforcers("a", "api", 0);
        metrics.note_ready_enforcers("b", "api", 0);
        metrics.note_ready_enforcers("a", "api", 0);
        assert_eq!(metrics.protections_without_ready_enforcers.get(), 2);
        metrics.note_ready_enforcers("a", "api", 2);
        assert_eq!(metrics.protections_without_ready_enforcers.get(), 1);
        metrics.forget_protection("b", "api");
        assert_eq!(metrics.protections_without_ready_enforcers.get(), 0);
        assert!(
            metrics
                .render()
                .contains("ordo_operator_protections_without_ready_enforcers 0")
        );
    }

    #[test]
    fn metrics_register_and_render() {
        let metrics = Metrics::new().unwrap();
        metrics.reports.with_label_values(&["applied"]).inc();
        metrics
            .webhook_decisions
            .with_label_values(&["SequenceRule", "denied"])
            .inc_by(2);
        let text = metrics.render();
        assert!(
            text.contains("ordo_operator_reports_total{outcome=\"applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ordo_operator_webhook_decisions_total{decision=\"denied\",kind=\"SequenceRule\"} 2"
            ),
            "{text}"
        );
    }
}
