//! The report endpoint's state: per ApiProtection, the merged model of all enforcer
//! replicas, their counters and their incidents, persisted in the ConfigMap `<name>-model`
//! so that nothing learned is lost when enforcers or the operator restart.
//!
//! Only the leader serves reports (others answer 503 and the enforcer retries elsewhere).
//! Status is not written here: after a report the hub asks the controller to reconcile the
//! ApiProtection, at most once per `min_refresh`, and the reconcile builds the whole status
//! from the cluster and from this state (one writer, one field manager).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use ordo_enforcer::model::LearnedModel;
use ordo_enforcer::report::{IncidentReport, Report, ReportAnswer, RuleCounters, TrafficCounters};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{self, FIELD_MANAGER, MODEL_KEY, REPORT_STATE_KEY};

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

/// The whole state of one protection.
#[derive(Debug, Default)]
pub struct ProtectionReports {
    pub model: LearnedModel,
    pub state: PersistedState,
    loaded: bool,
    last_trigger: Option<Instant>,
    trigger_scheduled: bool,
}

/// Outcome of one report, for the HTTP answer and the metrics.
#[derive(Debug)]
pub struct Accepted {
    pub answer: ReportAnswer,
    pub new_incidents: Vec<IncidentReport>,
}

/// Shared report state of every protection; see the module docs.
pub struct ReportHub {
    client: kube::Client,
    metrics: Arc<Metrics>,
    states: parking_lot::Mutex<HashMap<ProtectionKey, Arc<tokio::sync::Mutex<ProtectionReports>>>>,
    /// Whether this replica leads (only the leader accepts reports).
    pub leading: AtomicBool,
    /// Reconcile requests for the controller.
    reconcile_tx: mpsc::Sender<ProtectionKey>,
    /// Minimum time between two status refreshes of one protection.
    pub min_refresh: Duration,
}

impl ReportHub {
    /// A hub and the receiving end of its reconcile requests (for `Controller::reconcile_on`).
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        min_refresh: Duration,
    ) -> (Arc<Self>, mpsc::Receiver<ProtectionKey>) {
        let (reconcile_tx, rx) = mpsc::channel(1024);
        let hub = Arc::new(Self {
            client,
            metrics,
            states: parking_lot::Mutex::new(HashMap::new()),
            leading: AtomicBool::new(false),
            reconcile_tx,
            min_refresh,
        });
        (hub, rx)
    }

    fn entry(&self, key: &ProtectionKey) -> Arc<tokio::sync::Mutex<ProtectionReports>> {
        Arc::clone(self.states.lock().entry(key.clone()).or_default())
    }

    /// Forgets a protection (it was deleted).
    pub fn forget(&self, key: &ProtectionKey) {
        self.states.lock().remove(key);
    }

    /// Runs `f` on the protection's state, loading it from its ConfigMap first if needed.
    pub async fn with_state<T>(
        &self,
        key: &ProtectionKey,
        f: impl FnOnce(&ProtectionReports) -> T,
    ) -> Result<T> {
        let entry = self.entry(key);
        let mut guard = entry.lock().await;
        self.ensure_loaded(key, &mut guard).await?;
        Ok(f(&guard))
    }

    async fn ensure_loaded(
        &self,
        key: &ProtectionKey,
        reports: &mut ProtectionReports,
    ) -> Result<()> {
        if reports.loaded {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Some(cm) = api.get_opt(&names::model_config_map(&key.name)).await? {
            if let Some(bytes) = cm.binary_data.as_ref().and_then(|d| d.get(MODEL_KEY)) {
                reports.model =
                    LearnedModel::from_bytes(&bytes.0).map_err(|e| Error::Model(e.to_string()))?;
            }
            if let Some(text) = cm.data.as_ref().and_then(|d| d.get(REPORT_STATE_KEY)) {
                reports.state = serde_json::from_str(text)?;
            }
            tracing::info!(namespace = %key.namespace, name = %key.name, requests = reports.model.requests, "report state loaded from its ConfigMap");
        }
        reports.loaded = true;
        Ok(())
    }

    /// Merges one authenticated report, persists the result and answers with the merged
    /// model. `owner` is the ApiProtection (for the ConfigMap's owner reference).
    pub async fn accept(
        &self,
        key: &ProtectionKey,
        owner: &OwnerReference,
        report: &Report,
    ) -> Result<Accepted> {
        let entry = self.entry(key);
        let mut guard = entry.lock().await;
        self.ensure_loaded(key, &mut guard).await?;
        let reports = &mut *guard;
        let now_ms = now_ms();
        let applied_before = reports
            .state
            .instances
            .get(&report.instance)
            .map_or(0, |i| i.applied_sequence);
        let mut applied = false;
        if report.sequence > applied_before && !report.model_delta.is_empty() {
            let delta = LearnedModel::from_bytes(&report.model_delta)
                .map_err(|e| Error::Model(e.to_string()))?;
            reports.model.merge(&delta);
            self.metrics
                .merge_bytes
                .observe(report.model_delta.len() as f64);
            reports.state.model_updated_ms = now_ms;
            applied = true;
        }
        let new_ids = reports.state.record(report, now_ms);
        if applied && let Some(instance) = reports.state.instances.get_mut(&report.instance) {
            instance.applied_sequence = report.sequence;
        }
        let model_bytes = reports.model.to_bytes();
        self.persist(key, owner, &model_bytes, &reports.state)
            .await?;
        let new_incidents = new_ids
            .iter()
            .filter_map(|id| reports.state.incidents.get(id).cloned())
            .collect();
        self.request_refresh(key, reports);
        Ok(Accepted {
            answer: ReportAnswer {
                applied,
                model: model_bytes,
            },
            new_incidents,
        })
    }

    async fn persist(
        &self,
        key: &ProtectionKey,
        owner: &OwnerReference,
        model: &[u8],
        state: &PersistedState,
    ) -> Result<()> {
        let state_json = serde_json::to_string(state)?;
        let size = model.len() + state_json.len();
        if size > MAX_PERSISTED_BYTES {
            return Err(Error::Model(format!(
                "merged model and state take {size} bytes, more than the {MAX_PERSISTED_BYTES} a ConfigMap can hold"
            )));
        }
        self.metrics.model_bytes.observe(model.len() as f64);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(names::model_config_map(&key.name)),
                namespace: Some(key.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (names::PROTECTION_LABEL.to_owned(), key.name.clone()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    ),
                ])),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            binary_data: Some(BTreeMap::from([(
                MODEL_KEY.to_owned(),
                ByteString(model.to_vec()),
            )])),
            data: Some(BTreeMap::from([(REPORT_STATE_KEY.to_owned(), state_json)])),
            ..ConfigMap::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        api.patch(
            &names::model_config_map(&key.name),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        Ok(())
    }

    /// Asks the controller to refresh the status, at most once per `min_refresh`.
    fn request_refresh(&self, key: &ProtectionKey, reports: &mut ProtectionReports) {
        let due = reports
            .last_trigger
            .is_none_or(|t| t.elapsed() >= self.min_refresh);
        if due {
            reports.last_trigger = Some(Instant::now());
            if self.reconcile_tx.try_send(key.clone()).is_err() {
                tracing::debug!(
                    "reconcile request queue full; the periodic requeue will refresh the status"
                );
            }
        } else if !reports.trigger_scheduled {
            reports.trigger_scheduled = true;
            let wait = reports.last_trigger.map_or(Duration::ZERO, |t| {
                self.min_refresh.saturating_sub(t.elapsed())
            });
            let tx = self.reconcile_tx.clone();
            let key = key.clone();
            let entry = self.entry(&key);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                {
                    let mut reports = entry.lock().await;
                    reports.trigger_scheduled = false;
                    reports.last_trigger = Some(Instant::now());
                }
                let _ = tx.send(key).await;
            });
        }
    }

    /// Publishes an Event for each new incident on the ApiProtection.
    pub async fn publish_incidents(
        &self,
        recorder: &Recorder,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        incidents: &[IncidentReport],
    ) {
        for incident in incidents.iter().take(10) {
            let event = Event {
                type_: EventType::Warning,
                reason: "IncidentDetected".into(),
                note: Some(truncate(
                    &format!(
                        "{} [{}] {}",
                        incident.id, incident.severity, incident.summary
                    ),
                    1000,
                )),
                action: "Detect".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, reference).await {
                tracing::warn!(error = %err, "publishing an incident Event failed");
            }
        }
    }

    /// Whether this replica leads.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }
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
