//! The report state of one ApiProtection: what each enforcer instance reported (cumulative
//! counters, rule counters, the latest model sequence merged) and the incidents, with the pure
//! merge of one report into it. Persisted next to the model by [`super::hub`].

use std::collections::BTreeMap;
use std::time::Duration;

use ordo_enforcer::report::{IncidentReport, Report, RuleCounters, TrafficCounters};
use serde::{Deserialize, Serialize};

/// Most incidents kept per protection (the status shows fewer).
pub const MAX_INCIDENTS: usize = 200;
/// Most enforcer instances tracked per protection; older ones are folded into `retired`.
pub const MAX_INSTANCES: usize = 64;
/// The ConfigMap limit is 1 MiB for all keys together; keep a margin for metadata.
pub const MAX_PERSISTED_BYTES: usize = 1_000_000;

/// Key of one ApiProtection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtectionKey {
    pub namespace: String,
    pub name: String,
}

/// What the operator remembers of one enforcer instance (one process start of one pod).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceState {
    pub replica: String,
    /// Highest model delta sequence merged.
    pub applied_sequence: u64,
    /// Latest cumulative counters.
    pub counters: TrafficCounters,
    /// Latest cumulative rule counters, by rule name.
    pub rules: BTreeMap<String, RuleCounters>,
    /// Unix ms of the latest report.
    pub last_report_ms: u64,
}

/// Counters of instances that are no longer tracked, kept so totals never go down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retired {
    pub counters: TrafficCounters,
    pub rules: BTreeMap<String, RuleCounters>,
}

/// The persisted, non-model part of the state (`state.json` in the model ConfigMap).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedState {
    pub instances: BTreeMap<String, InstanceState>,
    pub retired: Retired,
    pub incidents: BTreeMap<String, IncidentReport>,
    /// Incidents ever seen (the kept ones are bounded).
    pub incidents_seen: u64,
    /// Unix ms of the latest merged model delta.
    pub model_updated_ms: u64,
}

impl PersistedState {
    /// Sum of every instance's (and the retired) counters.
    pub fn totals(&self) -> TrafficCounters {
        let mut total = self.retired.counters;
        for instance in self.instances.values() {
            total.requests += instance.counters.requests;
            total.flagged += instance.counters.flagged;
            total.blocked += instance.counters.blocked;
        }
        total
    }

    /// Sum of one rule's counters over every instance.
    pub fn rule_totals(&self) -> BTreeMap<String, RuleCounters> {
        let mut totals = self.retired.rules.clone();
        for instance in self.instances.values() {
            for (name, counters) in &instance.rules {
                add_rule(
                    totals.entry(name.clone()).or_insert_with(|| RuleCounters {
                        name: name.clone(),
                        ..RuleCounters::default()
                    }),
                    counters,
                );
            }
        }
        totals
    }

    /// Instances that reported within `window` before `now_ms`.
    pub fn reporting(&self, now_ms: u64, window: Duration) -> usize {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.instances
            .values()
            .filter(|i| now_ms.saturating_sub(i.last_report_ms) <= window_ms)
            .count()
    }

    /// Records one report's counters, rules and incidents; returns the ids of incidents seen
    /// for the first time.
    pub fn record(&mut self, report: &Report, now_ms: u64) -> Vec<String> {
        let instance = self.instances.entry(report.instance.clone()).or_default();
        instance.replica = report.replica.clone();
        instance.counters = report.counters;
        instance.rules = report
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        instance.last_report_ms = now_ms;
        while self.instances.len() > MAX_INSTANCES {
            let oldest = self
                .instances
                .iter()
                .min_by_key(|(_, i)| i.last_report_ms)
                .map(|(id, _)| id.clone());
            let Some(oldest) = oldest else { break };
            if let Some(gone) = self.instances.remove(&oldest) {
                self.retired.counters.requests += gone.counters.requests;
                self.retired.counters.flagged += gone.counters.flagged;
                self.retired.counters.blocked += gone.counters.blocked;
                for (name, counters) in gone.rules {
                    add_rule(
                        self.retired
                            .rules
                            .entry(name.clone())
                            .or_insert_with(|| RuleCounters {
                                name,
                                ..RuleCounters::default()
                            }),
                        &counters,
                    );
                }
            }
        }
        let mut new_ids = Vec::new();
        for incident in &report.incidents {
            if !self.incidents.contains_key(&incident.id) {
                new_ids.push(incident.id.clone());
                self.incidents_seen += 1;
            }
            self.incidents.insert(incident.id.clone(), incident.clone());
        }
        while self.incidents.len() > MAX_INCIDENTS {
            // Drop the least severe, then the oldest.
            let victim = self
                .incidents
                .values()
                .min_by_key(|i| (i.severity_rank(), i.last_seen_ms))
                .map(|i| i.id.clone());
            let Some(victim) = victim else { break };
            self.incidents.remove(&victim);
            new_ids.retain(|id| *id != victim);
        }
        new_ids
    }
}

fn add_rule(total: &mut RuleCounters, add: &RuleCounters) {
    total.matches += add.matches;
    total.blocked += add.blocked;
    total.last_match_ms = match (total.last_match_ms, add.last_match_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

/// Truncates on a char boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, requests: u64, incidents: Vec<IncidentReport>) -> Report {
        Report {
            replica: format!("pod-{instance}"),
            instance: instance.into(),
            sequence: 1,
            sent_at_ms: 0,
            model_delta: Vec::new(),
            incidents,
            counters: TrafficCounters {
                requests,
                flagged: requests / 10,
                blocked: requests / 20,
            },
            rules: vec![RuleCounters {
                name: "r".into(),
                matches: requests / 10,
                blocked: 1,
                last_match_ms: Some(requests),
            }],
            config: None,
        }
    }

    #[test]
    fn cumulative_counters_are_idempotent_and_summed_over_instances() {
        let mut state = PersistedState::default();
        state.record(&report("a", 100, vec![]), 1);
        state.record(&report("a", 100, vec![]), 2);
        state.record(&report("b", 40, vec![]), 3);
        assert_eq!(
            state.totals(),
            TrafficCounters {
                requests: 140,
                flagged: 14,
                blocked: 7
            }
        );
        let rules = state.rule_totals();
        assert_eq!(rules["r"].matches, 14);
        assert_eq!(rules["r"].blocked, 2);
        assert_eq!(rules["r"].last_match_ms, Some(100));
    }

    #[test]
    fn evicted_instances_keep_their_counts_in_retired() {
        let mut state = PersistedState::default();
        for i in 0..(MAX_INSTANCES as u64 + 3) {
            state.record(&report(&format!("i{i:03}"), 10, vec![]), i);
        }
        assert_eq!(state.instances.len(), MAX_INSTANCES);
        assert_eq!(state.totals().requests, 10 * (MAX_INSTANCES as u64 + 3));
        assert_eq!(
            state.reporting(MAX_INSTANCES as u64 + 2, Duration::from_millis(5)),
            6
        );
    }

    #[test]
    fn incidents_are_upserted_and_bounded_keeping_the_severe() {
        let mut state = PersistedState::default();
        let incident = |i: u64, severity: &str| IncidentReport {
            id: format!("inc-{i}"),
            severity: severity.into(),
            last_seen_ms: i,
            ..IncidentReport::default()
        };
        let new = state.record(&report("a", 1, vec![incident(0, "critical")]), 0);
        assert_eq!(new, vec!["inc-0".to_owned()]);
        let again = state.record(&report("a", 1, vec![incident(0, "critical")]), 0);
        assert!(again.is_empty());
        let many: Vec<_> = (1..=(MAX_INCIDENTS as u64 + 10))
            .map(|i| incident(i, "low"))
            .collect();
        state.record(&report("a", 1, many), 1);
        assert_eq!(state.incidents.len(), MAX_INCIDENTS);
        assert!(
            state.incidents.contains_key("inc-0"),
            "the critical incident is kept"
        );
        assert!(
            !state.incidents.contains_key("inc-1"),
            "the oldest low incident is dropped"
        );
        assert_eq!(state.incidents_seen, MAX_INCIDENTS as u64 + 11);
    }
}
