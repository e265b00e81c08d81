//! State shared by every connection.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use super::upstream::UpstreamPool;
use crate::analysis::Analyzer;
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::{CompiledPolicy, CounterRegistry};
use crate::session::SessionTable;

/// Everything a request needs, behind one `Arc`.
pub struct Shared {
    /// The compiled policy; swapped whole on reload.
    pub policy: ArcSwap<CompiledPolicy>,
    pub resolver: OperationResolver,
    pub sessions: SessionTable,
    pub incidents: IncidentStore,
    pub counters: CounterRegistry,
    pub metrics: Metrics,
    pub analyzer: Arc<dyn Analyzer>,
    /// Keep-alive connections to the protected Service.
    pub upstream: UpstreamPool,
    pub limiter: Arc<Semaphore>,
    /// Process start, the zero of the session table's clock.
    pub epoch: Instant,
    /// Random per process, prefix of generated request ids.
    pub instance: u64,
    pub request_seq: AtomicU64,
}
