//! The running enforcer as a [`ReportSource`]: the learned analyzer's model deltas, the
//! incident store's changed incidents, the request counters and the rule counters.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::Collector as _;

use crate::detect::LearnedAnalyzer;
use crate::incident::Incident;
use crate::proxy::Shared;
use crate::report::{IncidentReport, ReportSource, RuleCounters, RunningConfig, TrafficCounters};

/// Reads what a report carries from the running enforcer.
pub struct EnforcerSource {
    shared: Arc<Shared>,
    analyzer: Arc<LearnedAnalyzer>,
}

impl EnforcerSource {
    pub fn new(shared: Arc<Shared>, analyzer: Arc<LearnedAnalyzer>) -> Self {
        Self { shared, analyzer }
    }
}

/// Lower-case name of a serde enum value (`High` → `high`, `SequenceRule` → `SequenceRule`).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The report form of an incident.
pub fn incident_report(incident: &Incident) -> IncidentReport {
    IncidentReport {
        id: incident.id.clone(),
        session: incident.session.clone(),
        client: incident.client.to_string(),
        severity: enum_name(&incident.severity).to_ascii_lowercase(),
        kinds: incident.kinds.iter().map(enum_name).collect(),
        operations: incident.operations.iter().cloned().collect(),
        requests: incident.requests,
        flagged: incident.flagged,
        blocked: incident.blocked,
        first_seen_ms: incident.first_seen_ms,
        last_seen_ms: incident.last_seen_ms,
        summary: incident.summary.clone(),
    }
}

impl ReportSource for EnforcerSource {
    fn running_config(&self) -> Option<RunningConfig> {
        let policy = self.shared.policy.load();
        policy
            .config
            .revision
            .clone()
            .map(|revision| RunningConfig {
                revision,
                since_ms: policy.compiled_at_ms,
            })
    }

    fn take_model_delta(&self) -> Option<Vec<u8>> {
        self.analyzer.take_delta_bytes()
    }

    fn changed_incidents(&self) -> Vec<IncidentReport> {
        self.shared
            .incidents
            .drain_updated()
            .iter()
            .map(incident_report)
            .collect()
    }

    fn counters(&self) -> TrafficCounters {
        let mut counters = TrafficCounters::default();
        for family in self.shared.metrics.requests.collect() {
            for metric in family.get_metric() {
                let decision = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "decision")
                    .map(|l| l.value().to_owned());
                let value = metric.get_counter().get_value() as u64;
                counters.requests += value;
                match decision.as_deref() {
                    Some("flag") => counters.flagged += value,
                    Some("block") => {
                        counters.flagged += value;
                        counters.blocked += value;
                    }
                    _ => {}
                }
            }
        }
        counters
    }

    fn rule_counters(&self) -> Vec<RuleCounters> {
        let policy = self.shared.policy.load();
        policy
            .rules
            .iter()
            .map(|rule| {
                let counters = self.shared.counters.get(&rule.name);
                let last = counters.last_match_ms.load(Ordering::Relaxed);
                RuleCounters {
                    name: rule.name.to_string(),
                    matches: counters.matches.load(Ordering::Relaxed),
                    blocked: counters.blocked.load(Ordering::Relaxed),
                    last_match_ms: (last > 0).then_some(last),
                }
            })
            .collect()
    }

    fn adopt_model(&self, merged: &[u8]) -> Result<(), String> {
        self.analyzer
            .adopt_model_bytes(merged)
            .map_err(|e| e.to_string())
    }
}
