//! The report hub: per ApiProtection, the merged model of all enforcer replicas and their
//! [report state](super::state), persisted in the ConfigMap `<name>-model` so that nothing
//! learned is lost when enforcers or the operator restart.
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
use ordo_enforcer::report::{IncidentReport, Report, ReportAnswer};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::propagation::Propagation;
use super::state::{MAX_PERSISTED_BYTES, PersistedState, ProtectionKey, now_ms, truncate};
use crate::desired::names::{self, FIELD_MANAGER, MODEL_KEY, REPORT_STATE_KEY};
use crate::error::{ModelProblem, Result};
use crate::metrics::Metrics;

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
    /// Operations the merged model marks as discovered for the first time with this report
    /// (learned after maturity: the long tail, a new release's endpoint), with their
    /// discovery time (unix ms).
    pub discovered: Vec<(String, u64)>,
}

/// Shared report state of every protection; see the module docs.
pub struct ReportHub {
    client: kube::Client,
    metrics: Arc<Metrics>,
    states: Mutex<HashMap<ProtectionKey, Arc<tokio::sync::Mutex<ProtectionReports>>>>,
    /// Which config revision each protection's enforcers should run (never held across an
    /// await, so reconciles and reports never wait on each other for it).
    propagation: Mutex<HashMap<ProtectionKey, Propagation>>,
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
            states: Mutex::new(HashMap::new()),
            propagation: Mutex::new(HashMap::new()),
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
        self.propagation.lock().remove(key);
    }

    /// The reconcile rendered `revision` for the protection; `last_spec_write_ms` as in
    /// [`Propagation::rendered`].
    pub fn rendered(&self, key: &ProtectionKey, revision: &str, last_spec_write_ms: Option<u64>) {
        self.propagation
            .lock()
            .entry(key.clone())
            .or_default()
            .rendered(revision, last_spec_write_ms, now_ms());
    }

    /// Observes the propagation delay when this report shows a replica switching to the
    /// protection's current config.
    fn observe_running_config(&self, key: &ProtectionKey, report: &Report) {
        let Some(running) = &report.config else {
            return;
        };
        let delay = self
            .propagation
            .lock()
            .entry(key.clone())
            .or_default()
            .reported(&report.instance, running);
        if let Some(seconds) = delay {
            self.metrics.config_propagation.observe(seconds);
            tracing::info!(namespace = %key.namespace, name = %key.name, replica = %report.replica, revision = %running.revision, seconds, "an enforcer runs the changed config");
        }
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
                reports.model = LearnedModel::from_bytes(&bytes.0).map_err(ModelProblem::from)?;
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
        self.observe_running_config(key, report);
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
        let mut discovered = Vec::new();
        if report.sequence > applied_before && !report.model_delta.is_empty() {
            let delta =
                LearnedModel::from_bytes(&report.model_delta).map_err(ModelProblem::from)?;
            discovered = newly_discovered(&reports.model, &delta);
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
            discovered,
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
            return Err(ModelProblem::TooLarge {
                size,
                limit: MAX_PERSISTED_BYTES,
            }
            .into());
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
        let refreshes = &self.metrics.status_refreshes;
        if due {
            reports.last_trigger = Some(Instant::now());
            if self.reconcile_tx.try_send(key.clone()).is_err() {
                refreshes.with_label_values(&["dropped"]).inc();
                tracing::debug!(
                    "reconcile request queue full; the periodic requeue will refresh the status"
                );
            } else {
                refreshes.with_label_values(&["requested"]).inc();
            }
        } else if !reports.trigger_scheduled {
            refreshes.with_label_values(&["deferred"]).inc();
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

    /// Publishes an Event for each operation discovered (at most 10 per report).
    pub async fn publish_discovered(
        &self,
        recorder: &Recorder,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        discovered: &[(String, u64)],
    ) {
        for (operation, _) in discovered.iter().take(10) {
            let event = Event {
                type_: EventType::Normal,
                reason: "EndpointDiscovered".into(),
                note: Some(truncate(
                    &format!(
                        "new endpoint discovered: {operation} was learned after the model matured (successful requests of clean sessions)"
                    ),
                    1000,
                )),
                action: "Learn".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, reference).await {
                tracing::warn!(error = %err, "publishing a discovery Event failed");
            }
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

/// Operations `delta` marks as discovered that `merged` does not know as discovered yet.
fn newly_discovered(merged: &LearnedModel, delta: &LearnedModel) -> Vec<(String, u64)> {
    delta
        .operations
        .iter()
        .filter(|op| op.discovered_ms != 0)
        .filter(|op| {
            merged
                .op_index(&op.template)
                .and_then(|i| merged.operation(i))
                .is_none_or(|known| known.discovered_ms == 0)
        })
        .map(|op| (op.template.clone(), op.discovered_ms))
        .collect()
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    #[test]
    fn a_discovery_is_reported_once() {
        let mut merged = LearnedModel::default();
        let mut delta = LearnedModel::default();
        for (m, discovered) in [(&mut merged, 0), (&mut delta, 7)] {
            let i = m
                .op_index_or_insert("PUT /users/{var1}/password", 1)
                .unwrap();
            m.operation_mut(i).unwrap().discovered_ms = discovered;
        }
        assert_eq!(
            newly_discovered(&merged, &delta),
            vec![("PUT /users/{var1}/password".to_owned(), 7)]
        );
        merged.merge(&delta);
        assert!(newly_discovered(&merged, &delta).is_empty());
    }
}
