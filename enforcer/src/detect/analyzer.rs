//! The learned analyzer: the [`Analyzer`] the proxy calls for every request. It owns the
//! learned model (behind one `RwLock`: detectors read it concurrently, learning takes the write
//! lock for a few map updates, never across an await), the bounded per-client failure table,
//! and the baseline of the last report, from which the next delta is taken.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arc_swap::ArcSwap;

use crate::analysis::{Analyzer, Finding, RequestContext, ResponseSummary};
use crate::config::{DetectorsConfig, LearningConfig};
use crate::detect::session_state::{SessionState, distinct_of, with_object};
use crate::model::{LearnedModel, ModelCaps, ModelError, SESSION_START};
use crate::operation::Operation;
use crate::session::RecentOp;

use super::baselines::Baselines;
use super::clients::ClientTable;
use super::context::Judged;
use super::params::RequestParams;
use super::sequence::SequenceVerdict;
use super::thresholds::{identity_threshold, learning_cap, peer_threshold, volume_threshold};
use super::view::{ModelView, model_view};
use super::{enumeration, sequence, shadow, shape, stuffing, volume};

/// Most process-local operation ids remembered (the proxy's templates are capped far below).
const MAX_OPERATION_IDS: usize = 65_536;

/// Settings the analyzer reads per request (swapped atomically on config reload).
#[derive(Debug, Clone)]
struct Settings {
    learning: LearningConfig,
    detectors: DetectorsConfig,
    protection: Option<String>,
}

#[derive(Debug)]
struct Inner {
    model: LearnedModel,
    /// The model as of the last `take_delta` (or adoption): the next delta is taken against it.
    reported: LearnedModel,
    /// Proxy operation id → (template, model index).
    ids: HashMap<u32, (Arc<str>, Option<u16>)>,
    /// When the model is next aged (halved), unix ms; 0 = not scheduled yet.
    next_ageing_ms: u64,
    /// Peer percentiles frozen for the current counting window.
    baselines: Baselines,
}

/// The learned model and its detectors.
pub struct LearnedAnalyzer {
    settings: ArcSwap<Settings>,
    inner: RwLock<Inner>,
    clients: Mutex<ClientTable>,
}

fn caps_of(learning: &LearningConfig) -> ModelCaps {
    ModelCaps {
        max_operations: learning.max_operations,
        max_contexts: learning.max_contexts,
        max_params: learning.max_params,
        max_enum_values: learning.max_enum_values,
        ..ModelCaps::default()
    }
}

fn window_ms(learning: &LearningConfig) -> u64 {
    learning.volume_window.as_millis_u64().max(1000)
}

/// Collapses consecutive repeats.
fn collapse(ops: impl Iterator<Item = u16>) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::with_capacity(10);
    for op in ops {
        if out.last() != Some(&op) {
            out.push(op);
        }
    }
    out
}

impl Inner {
    /// The session's collapsed history as model indices, oldest first. Operations the model
    /// does not know cut the history (only what follows them is used). The session start is
    /// prepended when the recent list holds the whole session.
    fn history(&self, recent: &[RecentOp], seen: u32) -> Vec<u16> {
        let mut start = 0;
        let mut indices = Vec::with_capacity(recent.len() + 1);
        for (i, r) in recent.iter().enumerate() {
            match self.ids.get(&r.op).and_then(|(_, index)| *index) {
                Some(index) => indices.push(index),
                None => {
                    indices.clear();
                    start = i + 1;
                }
            }
        }
        let complete = start == 0 && u32::try_from(recent.len()).is_ok_and(|n| n >= seen);
        let ops = collapse(indices.into_iter());
        if complete {
            let mut with_start = Vec::with_capacity(ops.len() + 1);
            with_start.push(SESSION_START);
            with_start.extend(ops);
            with_start
        } else {
            ops
        }
    }

    fn remember_id(&mut self, op: &Operation, index: Option<u16>) {
        if let Some(entry) = self.ids.get_mut(&op.id) {
            if entry.1.is_none() {
                entry.1 = index;
            }
            return;
        }
        if self.ids.len() < MAX_OPERATION_IDS {
            self.ids.insert(op.id, (op.template.clone(), index));
        }
    }

    /// Re-resolves the id map after the model's index space changed.
    fn reindex(&mut self) {
        for (template, index) in self.ids.values_mut() {
            *index = self.model.op_index(template);
        }
        // Indices may have changed: recompute the frozen baselines at the next exchange.
        self.baselines = Baselines::default();
    }
}

/// A session flagged now taught the model its counts of the current window while it was still
/// unflagged (a scraper's first pages, an enumerator's first ids): take them back, so that
/// abusive windows never become part of the peer baselines (anti-poisoning).
fn take_back_window(model: &mut LearnedModel, state: &mut SessionState, window: u64) {
    let Some(counters) = state.window(window) else {
        return;
    };
    let slots: Vec<(u16, u16, u16)> = counters
        .slots
        .iter()
        .map(|s| (s.op, s.learned_requests, s.learned_objects))
        .collect();
    for (op, requests, objects) in slots {
        if let Some(stats) = model.operation_mut(op) {
            for count in 1..=u32::from(requests) {
                stats.volume.unrecord_reached(count);
            }
            for count in 1..=u32::from(objects) {
                stats.objects.unrecord_reached(count);
            }
        }
    }
    let counters = state.window_mut(window);
    for slot in &mut counters.slots {
        slot.learned_requests = 0;
        slot.learned_objects = 0;
    }
}

impl LearnedAnalyzer {
    /// Builds the analyzer, starting from `model` when one was persisted or handed over.
    pub fn new(
        learning: &LearningConfig,
        detectors: &DetectorsConfig,
        model: Option<LearnedModel>,
    ) -> Self {
        let caps = caps_of(learning);
        let mut model = model.unwrap_or_else(|| LearnedModel::new(caps));
        model.set_caps(caps);
        let reported = model.clone();
        Self {
            settings: ArcSwap::from_pointee(Settings {
                learning: learning.clone(),
                detectors: detectors.clone(),
                protection: None,
            }),
            inner: RwLock::new(Inner {
                model,
                reported,
                ids: HashMap::new(),
                next_ageing_ms: 0,
                baselines: Baselines::default(),
            }),
            clients: Mutex::new(ClientTable::default()),
        }
    }

    /// Names the ApiProtection this enforcer serves (used in suggested rules).
    pub fn set_protection_name(&self, name: Option<String>) {
        let current = self.settings.load();
        self.settings.store(Arc::new(Settings {
            protection: name,
            ..(**current).clone()
        }));
    }

    /// Applies a reloaded config; the model is kept (and trimmed to new caps).
    pub fn reconfigure(&self, learning: &LearningConfig, detectors: &DetectorsConfig) {
        let current = self.settings.load();
        self.settings.store(Arc::new(Settings {
            learning: learning.clone(),
            detectors: detectors.clone(),
            protection: current.protection.clone(),
        }));
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.model.set_caps(caps_of(learning));
    }

    /// A copy of the whole model (for persistence).
    pub fn snapshot(&self) -> LearnedModel {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .model
            .clone()
    }

    /// What was learned since the previous call (or since adoption); the next delta starts here.
    pub fn take_delta(&self) -> LearnedModel {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let delta = inner.model.delta_since(&inner.reported);
        inner.reported = inner.model.clone();
        delta
    }

    /// Adopts the merged model of all replicas; what was learned locally since the last
    /// `take_delta` stays on top of it, so nothing is lost or counted twice.
    pub fn replace_model(&self, merged: LearnedModel) {
        let caps = caps_of(&self.settings.load().learning);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let pending = inner.model.delta_since(&inner.reported);
        let mut model = merged;
        model.set_caps(caps);
        inner.reported = model.clone();
        model.merge(&pending);
        inner.model = model;
        inner.reindex();
    }

    /// Adds another model's counts (for example one learned elsewhere) as local learning: it
    /// is part of the next delta.
    pub fn merge_model(&self, other: &LearnedModel) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.model.merge(other);
        inner.reindex();
    }

    /// `take_delta` as bytes; `None` when nothing was learned.
    pub fn take_delta_bytes(&self) -> Option<Vec<u8>> {
        let delta = self.take_delta();
        if delta.is_zero() {
            None
        } else {
            Some(delta.to_bytes())
        }
    }

    /// `replace_model` from bytes.
    pub fn adopt_model_bytes(&self, bytes: &[u8]) -> Result<(), ModelError> {
        let caps = caps_of(&self.settings.load().learning);
        let merged = LearnedModel::from_bytes_with_caps(bytes, caps)?;
        self.replace_model(merged);
        Ok(())
    }

    /// Writes the model to `path` atomically (temporary file, then rename).
    pub fn persist(&self, path: &Path) -> std::io::Result<()> {
        let bytes = self.snapshot().to_bytes();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }

    /// Loads a model written by [`LearnedAnalyzer::persist`].
    pub fn load(path: &Path, learning: &LearningConfig) -> Result<LearnedModel, ModelError> {
        let bytes = std::fs::read(path)?;
        LearnedModel::from_bytes_with_caps(&bytes, caps_of(learning))
    }

    /// The typed model view (`GET /v1/model`).
    pub fn view(&self) -> ModelView {
        let settings = self.settings.load();
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let mut view = model_view(
            &inner.model,
            &settings.learning,
            &settings.detectors,
            settings.protection.as_deref(),
        );
        view.usage.tracked_clients = clients;
        view
    }

    fn globally_mature(model: &LearnedModel, learning: &LearningConfig) -> bool {
        model.requests >= learning.min_requests && model.sessions >= learning.min_sessions
    }
}

impl Analyzer for LearnedAnalyzer {
    fn wants_body(&self, _op: &Operation) -> bool {
        let d = &self.settings.load().detectors;
        d.request_shape.enabled || d.enumeration.enabled || d.credential_stuffing.enabled
    }

    fn inspect(&self, ctx: &RequestContext<'_>, state: &mut SessionState, out: &mut Vec<Finding>) {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let model = &inner.model;
        if !Self::globally_mature(model, learning) {
            return;
        }
        let params = RequestParams::from_request(ctx);
        let window_ms = window_ms(learning);
        let judged = Judged {
            ctx,
            model,
            learning,
            op: model.op_index(&ctx.operation.template),
            params: &params,
            window: ctx.now_ms / window_ms,
            window_ms,
            baselines: &inner.baselines,
        };
        if detectors.shadow_endpoint.enabled
            && let Some(f) = shadow::check(&judged, &detectors.shadow_endpoint)
        {
            out.push(f);
        }
        if detectors.request_shape.enabled
            && let Some(f) = shape::check(&judged, &detectors.request_shape)
        {
            out.push(f);
        }
        if detectors.unlikely_sequence.enabled {
            let repeat = ctx.recent.last().is_some_and(|r| r.op == ctx.operation.id);
            let history = inner.history(ctx.recent, state.seen());
            match sequence::check(
                &judged,
                &detectors.unlikely_sequence,
                &history,
                repeat,
                state.unlikely_op(),
            ) {
                SequenceVerdict::Unlikely(f) => {
                    state.set_unlikely_op(judged.op);
                    out.push(f);
                }
                SequenceVerdict::Likely => state.set_unlikely_op(None),
                SequenceVerdict::Silent => {}
            }
        }
        if detectors.volume.enabled
            && let Some(f) = volume::check(&judged, &detectors.volume, state)
        {
            out.push(f);
        }
        if detectors.enumeration.enabled
            && let Some(f) = enumeration::check(&judged, &detectors.enumeration, state)
        {
            out.push(f);
        }
        if detectors.credential_stuffing.enabled && stuffing::is_auth_request(&judged) {
            let client = self
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&ctx.client, judged.window);
            if let Some(f) = stuffing::check(&judged, &detectors.credential_stuffing, client) {
                out.push(f);
            }
        }
    }

    fn observe(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary,
        flagged: bool,
    ) {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        let newly_tainted = flagged && !state.tainted();
        if flagged {
            state.taint();
        }
        let tainted = state.tainted();
        let learnable = (200..400).contains(&resp.status) && !tainted;
        let params = RequestParams::from_request(ctx);
        let window_ms = window_ms(learning);
        let window = ctx.now_ms / window_ms;
        let shape_caps = caps_of(learning).shape();
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        // Exponential ageing once per learning window.
        let period = learning.window_seconds.saturating_mul(1000).max(60_000);
        if inner.next_ageing_ms == 0 {
            inner.next_ageing_ms = ctx.now_ms.saturating_add(period);
        } else if ctx.now_ms >= inner.next_ageing_ms {
            inner.model.halve();
            inner.reported.halve();
            inner.next_ageing_ms = ctx.now_ms.saturating_add(period);
        }
        let min_windows = learning.min_volume_windows;
        inner
            .baselines
            .refresh(&inner.model, min_windows, ctx.now_ms, window_ms);
        let history = if learnable {
            inner.history(ctx.recent, state.seen())
        } else {
            Vec::new()
        };
        let baselines = &inner.baselines;
        let model = &mut inner.model;
        if newly_tainted {
            take_back_window(model, state, window);
        }
        let op = if learnable {
            model.op_index_or_insert(&ctx.operation.template, ctx.now_ms)
        } else {
            model.op_index(&ctx.operation.template)
        };
        if op.is_none() && learnable {
            model.dropped_operations += 1;
        }
        let repeat = ctx.recent.last().is_some_and(|r| r.op == ctx.operation.id);
        if learnable {
            model.requests += 1;
            model.touch(ctx.now_ms);
            if !state.counted() {
                model.sessions += 1;
                state.mark_counted();
            }
            for obs in &params.headers {
                model.headers.learn(obs, &shape_caps);
            }
            if let Some(op) = op
                && !repeat
            {
                model.sequences.learn(&history, op, learning.sequence_order);
                model.sequences.enforce_cap(learning.max_contexts);
            }
        }
        let auth_failure = matches!(resp.status, 401 | 403);
        let mut auth_like = params.has_credentials;
        if let Some(index) = op
            && let Some(stats) = model.operation_mut(index)
        {
            if !tainted {
                stats.record_status(resp.status);
                if auth_failure {
                    stats.auth_failures += 1;
                }
            }
            auth_like |= stats.is_auth_like();
            if learnable {
                stats.requests += 1;
                stats.last_seen_ms = stats.last_seen_ms.max(ctx.now_ms);
                if params.has_credentials {
                    stats.credential_requests += 1;
                }
                for obs in &params.params {
                    stats.shape.learn(obs, &shape_caps);
                }
            }
            let counters = state.window_mut(window);
            if let Some(slot) = counters.slot_mut(index) {
                slot.requests = slot.requests.saturating_add(1);
                let before = distinct_of(slot.objects);
                for id in &params.object_ids {
                    slot.objects = with_object(slot.objects, *id);
                }
                let after = distinct_of(slot.objects);
                if learnable {
                    let frozen = baselines.operation(index);
                    let volume_cap = learning_cap(frozen.volume, |p| {
                        volume_threshold(p, detectors.volume.sensitivity)
                    });
                    if u32::from(slot.requests) <= volume_cap {
                        stats.volume.record_reached(u32::from(slot.requests));
                        slot.learned_requests = slot.requests;
                    }
                    let objects_cap = learning_cap(frozen.objects, |p| {
                        peer_threshold(p.p99, detectors.enumeration.sensitivity)
                    });
                    for reached in (before + 1..=after).filter(|r| *r <= objects_cap) {
                        stats.objects.record_reached(reached);
                        slot.learned_objects = u16::try_from(reached).unwrap_or(u16::MAX);
                    }
                }
            }
            if resp.status == 404 && !params.object_ids.is_empty() {
                counters.not_found = counters.not_found.saturating_add(1);
                let cap = learning_cap(baselines.not_found, |p| {
                    peer_threshold(p.p99, detectors.enumeration.sensitivity)
                });
                if !tainted && u32::from(counters.not_found) <= cap {
                    model
                        .not_found
                        .record_reached(u32::from(counters.not_found));
                }
            }
        }
        if auth_failure && auth_like {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            let before = clients
                .get(&ctx.client, window)
                .map_or(0, |e| e.distinct_identities());
            if let Some(entry) = clients.record_failure(
                ctx.client,
                window,
                params.identity,
                learning.max_tracked_clients,
            ) && !tainted
            {
                let sensitivity = detectors.credential_stuffing.sensitivity;
                if entry.failures
                    <= learning_cap(baselines.auth_failures, |p| {
                        peer_threshold(p.p99, sensitivity)
                    })
                {
                    model.auth_failures.record_reached(entry.failures);
                }
                let identities_cap = learning_cap(baselines.auth_identities, |p| {
                    identity_threshold(p.p99, sensitivity)
                });
                for reached in
                    (before + 1..=entry.distinct_identities()).filter(|r| *r <= identities_cap)
                {
                    model.auth_identities.record_reached(reached);
                }
            }
        }
        let index = op;
        inner.remember_id(ctx.operation, index);
        drop(guard);
        state.record_seen();
    }

    fn model_view(&self) -> serde_json::Value {
        serde_json::to_value(self.view())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}
