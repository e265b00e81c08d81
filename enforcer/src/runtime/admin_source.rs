//! The admin API's view of the proxy's shared state.

use std::sync::Arc;

use crate::admin::AdminSource;
use crate::detect::Analyzer;
use crate::incident::IncidentStore;
use crate::metrics::Metrics;
use crate::operation::OperationResolver;
use crate::policy::CompiledPolicy;
use crate::proxy::Shared;
use crate::session::TableStats;

impl AdminSource for Shared {
    fn policy(&self) -> Arc<CompiledPolicy> {
        self.policy.load_full()
    }

    fn upstream_authority(&self) -> String {
        self.upstream.authority().as_str().to_owned()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn refresh_gauges(&self) {
        Shared::refresh_gauges(self);
    }

    fn incidents(&self) -> &IncidentStore {
        &self.incidents
    }

    fn resolver(&self) -> &OperationResolver {
        &self.resolver
    }

    fn session_stats(&self) -> TableStats {
        self.sessions.stats()
    }

    fn analyzer(&self) -> &dyn Analyzer {
        &*self.analyzer
    }
}
