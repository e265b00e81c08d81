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
    /// When the state was last written to its ConfigMap.
    last_persist: Option<Instant>,
    /// Merged changes wait for a delayed write (see [`PERSIST_INTERVAL`]).
    persist_pending: bool,
    /// The ApiProtection, for the ConfigMap's owner reference of a delayed write.
    owner: Option<OwnerReference>,
}

/// Shortest time between two writes of one protection's `<name>-model` ConfigMap. Every
/// replica reports every few seconds, and each write sends the whole merged model (up to
/// about a megabyte) through the API server and etcd; merging reports in memory and writing
/// at most this often keeps that load flat whatever the number of replicas. What is at stake
/// is what was merged in the last interval if the operator dies without stopping (on a
/// graceful stop [`ReportHub::flush`] writes it): the enforcers keep learning, but counts
/// merged in that window are missing from the merged model.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

impl ProtectionReports {
    /// Whether a merge may be written now, or must wait for the interval to end.
    fn persist_due(&self, now: Instant) -> bool {
        self.last_persist
            .is_none_or(|last| now.duration_since(last) >= PERSIST_INTERVAL)
    }
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

    /// Merges one authenticated report, persists the result (at once, or at the end of the
    /// current [`PERSIST_INTERVAL`]) and answers with the merged model. `owner` is the
    /// ApiProtection (for the ConfigMap's owner reference).
    pub async fn accept(
        self: &Arc<Self>,
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
        // Built (and its size checked) for every report, so that one too large is refused
        // with this report, not later.
        let config_map = persisted_config_map(key, owner, &model_bytes, &reports.state)?;
        reports.owner = Some(owner.clone());
        if reports.persist_due(Instant::now()) {
            self.write(key, &config_map).await?;
            reports.last_persist = Some(Instant::now());
            reports.persist_pending = false;
        } else if !reports.persist_pending {
            reports.persist_pending = true;
            self.persist_later(key, &entry, reports);
        }
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

    async fn write(&self, key: &ProtectionKey, config_map: &ConfigMap) -> Result<()> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        api.patch(
            &names::model_config_map(&key.name),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(config_map),
        )
        .await?;
        if let Some(model) = config_map
            .binary_data
            .as_ref()
            .and_then(|data| data.get(MODEL_KEY))
        {
            self.metrics.model_bytes.observe(model.0.len() as f64);
        }
        Ok(())
    }

    /// Writes the protection's state when the current interval ends (what was merged by
    /// then), unless the protection was forgotten meanwhile.
    fn persist_later(
        self: &Arc<Self>,
        key: &ProtectionKey,
        entry: &Arc<tokio::sync::Mutex<ProtectionReports>>,
        reports: &ProtectionReports,
    ) {
        let wait = reports.last_persist.map_or(Duration::ZERO, |last| {
            PERSIST_INTERVAL.saturating_sub(last.elapsed())
        });
        let hub = Arc::clone(self);
        let key = key.clone();
        let entry = Arc::clone(entry);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            hub.persist_pending(&key, &entry).await;
        });
    }

    /// Writes a pending merge of `entry` now.
    async fn persist_pending(
        &self,
        key: &ProtectionKey,
        entry: &Arc<tokio::sync::Mutex<ProtectionReports>>,
    ) {
        let forgotten = self
            .states
            .lock()
            .get(key)
            .is_none_or(|current| !Arc::ptr_eq(current, entry));
        let mut reports = entry.lock().await;
        if forgotten || !reports.persist_pending {
            return;
        }
        reports.persist_pending = false;
        let Some(owner) = reports.owner.clone() else {
            return;
        };
        let written =
            match persisted_config_map(key, &owner, &reports.model.to_bytes(), &reports.state) {
                Ok(config_map) => self.write(key, &config_map).await,
                Err(err) => Err(err),
            };
        reports.last_persist = Some(Instant::now());
        if let Err(err) = written {
            // The next report writes again.
            tracing::warn!(namespace = %key.namespace, name = %key.name, error = %err, "writing the merged model failed");
        }
    }

    /// Writes every pending merge now (the operator is stopping or stepping down).
    pub async fn flush(&self) {
        let entries: Vec<_> = self
            .states
            .lock()
            .iter()
            .map(|(key, entry)| (key.clone(), Arc::clone(entry)))
            .collect();
        for (key, entry) in entries {
            self.persist_pending(&key, &entry).await;
        }
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

/// The `<name>-model` ConfigMap holding `model` and `state`; refused when larger than a
/// ConfigMap may be.
fn persisted_config_map(
    key: &ProtectionKey,
    owner: &OwnerReference,
    model: &[u8],
    state: &PersistedState,
) -> Result<ConfigMap> {
    let state_json = serde_json::to_string(state)?;
    let size = model.len() + state_json.len();
    if size > MAX_PERSISTED_BYTES {
        return Err(ModelProblem::TooLarge {
            size,
            limit: MAX_PERSISTED_BYTES,
        }
        .into());
    }
    Ok(ConfigMap {
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
    })
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

#[cfg(test)]
mod persist_tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    use ordo_enforcer::model::lineage::OriginClass;
    use ordo_enforcer::report::{RuleCounters, TrafficCounters};

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// An API server that records every PATCH (path, body) and answers it with the patch
    /// itself; anything else is 404 (no model ConfigMap yet).
    async fn recording_api() -> (kube::Client, Seen, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let recorded = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let patch = request.method() == hyper::Method::PATCH;
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await?.to_bytes();
                            let response = if patch {
                                recorded
                                    .lock()
                                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                                hyper::Response::new(Full::new(body))
                            } else {
                                let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from(status)));
                                *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                                response
                            };
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, seen, server)
    }

    fn report(sequence: u64, requests: u64) -> Report {
        Report {
            replica: "pod-a".into(),
            instance: "a".into(),
            sequence,
            sent_at_ms: 0,
            model_delta: Vec::new(),
            incidents: Vec::new(),
            counters: TrafficCounters {
                requests,
                flagged: 0,
                blocked: 0,
            },
            rules: vec![RuleCounters {
                name: "r".into(),
                matches: 0,
                blocked: 0,
                last_match_ms: None,
            }],
            config: None,
        }
    }

    #[tokio::test]
    async fn reports_within_an_interval_are_written_once_more_at_its_end_with_the_last_merge() {
        let (client, seen, server) = recording_api().await;
        let (hub, _requests) = ReportHub::new(
            client,
            Arc::new(Metrics::new().unwrap()),
            Duration::from_secs(1),
        );
        let key = ProtectionKey {
            namespace: "ns".into(),
            name: "api".into(),
        };
        let owner = crate::desired::resources::owner_reference("api", "uid-1");
        let started = Instant::now();
        for sequence in 1..=4 {
            hub.accept(&key, &owner, &report(sequence, sequence * 100))
                .await
                .unwrap();
        }
        // The first report is written at once, the next three wait for the interval.
        assert_eq!(seen.lock().len(), 1);
        assert!(
            seen.lock()[0]
                .0
                .ends_with("/namespaces/ns/configmaps/api-model")
        );
        let deadline = started + PERSIST_INTERVAL + Duration::from_secs(3);
        while seen.lock().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let writes = seen.lock().clone();
        assert_eq!(writes.len(), 2, "one delayed write after the interval");
        assert!(
            started.elapsed() >= PERSIST_INTERVAL - Duration::from_millis(100),
            "the delayed write came after {:?}, before the interval ended",
            started.elapsed()
        );
        // It holds the last merge: the cumulative counters of report 4.
        assert!(
            writes[1].1.contains(r#"\"requests\":400"#),
            "{}",
            writes[1].1
        );
        // Nothing is pending any more: a flush writes nothing.
        hub.flush().await;
        assert_eq!(seen.lock().len(), 2);
        server.abort();
    }

    /// `windows` session windows that each reached `count` requests and objects of
    /// `template`, each teaching one value of origins `classes` (none: the client's own).
    fn learn(
        model: &mut LearnedModel,
        template: &str,
        windows: u32,
        count: u32,
        classes: &[OriginClass],
    ) {
        let index = model.op_index_or_insert(template, 1).unwrap();
        let stats = model.operation_mut(index).unwrap();
        for _ in 0..windows {
            for reached in 1..=count {
                stats.volume.record_reached(reached);
                stats.objects.record_reached(reached);
            }
            stats.lineage.learn("path.id", classes, &[]);
        }
    }

    /// A replica that reported a window and then took it back (a session flagged after the
    /// report, `ordo_enforcer::detect::lesson`) sends a delta whose negative part the merge
    /// subtracts (`ordo_enforcer::model::taken_back`): the merged model is the sum of what
    /// every replica holds now, whether another replica's report came in between or not, and
    /// it carries no negative part itself.
    #[tokio::test]
    async fn a_take_back_after_a_report_is_subtracted_from_the_merged_model() {
        let (client, _seen, server) = recording_api().await;
        let (hub, _requests) = ReportHub::new(
            client,
            Arc::new(Metrics::new().unwrap()),
            Duration::from_secs(1),
        );
        let owner = crate::desired::resources::owner_reference("api", "uid-1");
        let template = "GET /accounts/{var1}";
        // Replica a: honest windows of 3, and a session's window of 20, reported.
        let mut a = LearnedModel::default();
        learn(&mut a, template, 30, 3, &[]);
        learn(&mut a, template, 1, 20, &[]);
        let a_first = a.delta_since(&LearnedModel::default());
        let a_reported = a.clone();
        // Then an honest window of 2 (its value named by a claim), and the session is
        // flagged: its window and its value without an origin are taken back.
        learn(&mut a, template, 1, 2, &[OriginClass::Claim]);
        let stats = a.operation_mut(0).unwrap();
        for count in 1..=20 {
            stats.volume.unrecord_reached(count);
            stats.objects.unrecord_reached(count);
        }
        stats.lineage.unlearn_without_origin("path.id");
        let a_second = a.delta_since(&a_reported);
        // Replica b: honest windows of 4.
        let mut b = LearnedModel::default();
        learn(&mut b, template, 10, 4, &[]);
        let b_first = b.delta_since(&LearnedModel::default());
        let mut expected = a.clone();
        expected.merge(&b);
        let stats = expected.operation(0).unwrap();
        assert_eq!(stats.volume.windows(), 30 + 1 + 10);
        let origins = &stats.lineage.params["path.id"];
        assert_eq!((origins.seen, origins.input), (30 + 1 + 10, 30 + 10));

        let delta = |instance: &str, sequence: u64, model: &LearnedModel| Report {
            replica: format!("pod-{instance}"),
            instance: instance.into(),
            model_delta: model.to_bytes(),
            ..report(sequence, 0)
        };
        let orders = [
            (
                "in-turn",
                [("a", 1, &a_first), ("a", 2, &a_second), ("b", 1, &b_first)],
            ),
            (
                "between",
                [("a", 1, &a_first), ("b", 1, &b_first), ("a", 2, &a_second)],
            ),
            (
                "b-first",
                [("b", 1, &b_first), ("a", 1, &a_first), ("a", 2, &a_second)],
            ),
        ];
        for (name, reports) in orders {
            let key = ProtectionKey {
                namespace: "ns".into(),
                name: name.into(),
            };
            let mut answer = None;
            for (instance, sequence, model) in reports {
                let accepted = hub
                    .accept(&key, &owner, &delta(instance, sequence, model))
                    .await
                    .unwrap();
                assert!(accepted.answer.applied);
                answer = Some(accepted.answer.model);
            }
            let merged = LearnedModel::from_bytes(&answer.unwrap()).unwrap();
            assert_eq!(merged, expected, "{name}");
            let json = serde_json::to_value(&merged).unwrap();
            assert!(json.get("takenBack").is_none(), "{name}: {json}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_flush_writes_what_waits_and_a_forgotten_protection_is_not_written() {
        let (client, seen, server) = recording_api().await;
        let (hub, _requests) = ReportHub::new(
            client,
            Arc::new(Metrics::new().unwrap()),
            Duration::from_secs(1),
        );
        let key = |name: &str| ProtectionKey {
            namespace: "ns".into(),
            name: name.into(),
        };
        let owner = crate::desired::resources::owner_reference("api", "uid-1");
        for name in ["kept", "gone"] {
            hub.accept(&key(name), &owner, &report(1, 100))
                .await
                .unwrap();
            hub.accept(&key(name), &owner, &report(2, 200))
                .await
                .unwrap();
        }
        assert_eq!(seen.lock().len(), 2);
        hub.forget(&key("gone"));
        hub.flush().await;
        let writes = seen.lock().clone();
        assert_eq!(writes.len(), 3);
        assert!(writes[2].0.ends_with("/configmaps/kept-model"));
        assert!(
            writes[2].1.contains(r#"\"requests\":200"#),
            "{}",
            writes[2].1
        );
        server.abort();
    }
}
