//! State shared by every connection.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use super::upstream::UpstreamPool;
use crate::detect::session_state::SessionState;
use crate::detect::{Analyzer, LateFinding};
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::{CompiledPolicy, CounterRegistry};
use crate::session::SessionTable;

/// The session table with the learned detectors' state in each entry.
pub type Sessions = SessionTable<SessionState>;

/// Everything a request needs, behind one `Arc`.
pub struct Shared {
    /// The compiled policy; swapped whole on reload.
    pub policy: ArcSwap<CompiledPolicy>,
    pub resolver: OperationResolver,
    pub sessions: Sessions,
    pub incidents: IncidentStore,
    pub counters: CounterRegistry,
    pub metrics: Metrics,
    pub analyzer: Arc<dyn Analyzer>,
    /// Keep-alive connections to the protected Service.
    pub upstream: UpstreamPool,
    pub limiter: Arc<Semaphore>,
    /// Connections and requests per client address, the proxy's connection cap.
    pub clients: Arc<super::clients::ClientLimits>,
    /// Process start, the zero of the session table's clock.
    pub epoch: Instant,
    /// Random per process, prefix of generated request ids.
    pub instance: u64,
    pub request_seq: AtomicU64,
    /// The other replicas sessions are spread over (none: this replica decides everything).
    pub router: Option<Arc<super::route::Router>>,
}

impl Shared {
    /// Records findings about exchanges already answered (campaign members) as incidents of
    /// their addresses, under the operation they tried; they were not blocked.
    pub fn record_late(&self, operation: &str, late: &[LateFinding], now_ms: u64) {
        for l in late {
            let findings = std::slice::from_ref(&l.finding);
            self.metrics
                .findings
                .with_label_values(&[l.finding.kind.as_str()])
                .inc();
            let recorded = self
                .incidents
                .record("", l.client, operation, findings, false, now_ms);
            if let Some(rec) = recorded
                && rec.created
            {
                self.metrics
                    .incidents
                    .with_label_values(&[l.finding.severity.as_str()])
                    .inc();
            }
            tracing::info!(
                client = %l.client,
                operation = %operation,
                finding = l.finding.kind.as_str(),
                "earlier request found to belong to a campaign"
            );
        }
    }

    /// Copies table counters into the metrics.
    pub fn refresh_gauges(&self) {
        let stats = self.sessions.stats();
        let m = &self.metrics;
        m.sessions
            .set(i64::try_from(stats.sessions).unwrap_or(i64::MAX));
        m.connections
            .set(i64::try_from(self.clients.connections()).unwrap_or(i64::MAX));
        Metrics::sync_counter(&m.session_evictions, stats.evicted);
        Metrics::sync_counter(&m.session_expirations, stats.expired);
        m.operations_learned
            .set(i64::try_from(self.resolver.stats().learned_templates).unwrap_or(i64::MAX));
        for (result, total) in crate::session::jwks::refresh_totals() {
            Metrics::sync_counter(&m.jwks_refreshes.with_label_values(&[result]), total);
        }
        m.jwks_keys
            .set(i64::try_from(self.policy.load().identifiers.jwks_keys()).unwrap_or(i64::MAX));
        if let Some(maturity) = self.analyzer.maturity() {
            maturity.export(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionEntry;

    #[test]
    fn entry_size_is_small() {
        println!(
            "SessionEntry {} bytes inline (SessionState {})",
            std::mem::size_of::<SessionEntry<SessionState>>(),
            std::mem::size_of::<SessionState>()
        );
        // Inline part of an entry (toward the 200 bytes of an idle session, docs/benchmarks.md;
        // 56 bytes a bucket with the key): the history's first slot is inline, more add 8
        // bytes each.
        assert!(
            std::mem::size_of::<SessionEntry<SessionState>>() <= 48,
            "{}",
            std::mem::size_of::<SessionEntry<SessionState>>()
        );
    }
}
