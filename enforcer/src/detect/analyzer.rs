//! The learned analyzer: the [`Analyzer`] the proxy calls for every request. It owns the
//! learned model (behind one `RwLock`: detectors read it concurrently, learning takes the write
//! lock for a few map updates, never across an await), the bounded per-client failure table,
//! and the baseline of the last report, from which the next delta is taken.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use super::request::{
    AddressFacts, AddressQuarantine, Analyzer, AuthAttempt, AuthFailure, LateFinding,
    ModelMaturity, RequestContext, RequestScratch, ResponseSummary,
};
use crate::config::{Action, DetectorsConfig, EnforcerConfig, LearningConfig, SessionConfig};
use crate::detect::params::RequestParams;
use crate::detect::session_state::{Quarantine, SessionState, distinct_of, with_object};
use crate::finding::Finding;
use crate::model::exposure::ExposureSample;
use crate::model::hashing::stable_hash;
use crate::model::{LearnedModel, ModelCaps, ModelError, ShapeCaps, TakenBack};
use crate::operation::Operation;
use crate::session::{RecentOp, SessionSource};

use super::auth_activity::AuthActivity;
use super::baselines::{Baselines, OperationBaseline};
use super::clients::ClientTable;
use super::context::Judged;
use super::journey::journey_history;
use super::lesson::{Lesson, PendingLessons, TakeBack};
use super::lineage::{self, LineageState, ValueKeys};
use super::outcome::{self, Signals};
use super::quarantine::{self, ClientQuarantine};
use super::sequence::SequenceVerdict;
use super::shown::ShownToAddress;
use super::thresholds::{
    identity_threshold, learning_cap, object_threshold, peer_threshold, volume_threshold,
};
use super::view::{ModelView, model_view};
use super::{
    distributed, enumeration, exposure, replay, sequence, shadow, shape, stuffing, templates,
    volume,
};
use crate::model::lineage::OriginClass;

/// Most process-local operation ids remembered (the proxy's templates are capped far below).
const MAX_OPERATION_IDS: usize = 65_536;

/// Settings the analyzer reads per request (swapped atomically on config reload).
#[derive(Debug, Clone)]
struct Settings {
    learning: LearningConfig,
    detectors: DetectorsConfig,
    protection: Option<String>,
    /// Lower-case header, cookie and query names that identify sessions: never learned.
    session_names: Vec<String>,
    /// Headers of the JWT identifiers, whose claims are origins of values (`detect::lineage`).
    jwt_headers: Vec<String>,
}

/// The header, cookie and query names the session config identifies sessions by.
fn session_names(session: &SessionConfig) -> Vec<String> {
    session
        .identifiers
        .iter()
        .flat_map(|id| {
            [
                id.jwt_claim.as_ref().map(|j| j.header.clone()),
                id.header.as_ref().map(|h| h.name.clone()),
                id.cookie.as_ref().map(|c| c.name.clone()),
                id.query_param.as_ref().map(|q| q.name.clone()),
            ]
        })
        .flatten()
        .map(|name| name.to_ascii_lowercase())
        .collect()
}

/// The headers of the session config's JWT identifiers.
fn jwt_headers(session: &SessionConfig) -> Vec<String> {
    session
        .identifiers
        .iter()
        .filter_map(|id| id.jwt_claim.as_ref().map(|j| j.header.to_ascii_lowercase()))
        .collect()
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
    /// Bumped whenever the model's index space may change (adoption, merge): a lesson made
    /// under an older generation re-resolves its indices.
    generation: u64,
    /// Literal templates folded into a parameter (old → new), applied to every model adopted
    /// or merged later, so that a replica's model stays consistent with its resolver.
    folded: HashMap<String, String>,
}

/// Most folded templates remembered (the resolver's template cap is far below).
const MAX_FOLDED: usize = 65_536;

/// The learned model and its detectors.
pub struct LearnedAnalyzer {
    settings: ArcSwap<Settings>,
    inner: RwLock<Inner>,
    /// Lessons waiting for the write lock (see `detect::lesson`). Locked after `inner`, never
    /// before it, and only for a push or a take.
    pending: Mutex<PendingLessons>,
    clients: Mutex<ClientTable>,
    /// Authentication attempts across all clients (distributed stuffing).
    auth: Mutex<AuthActivity>,
    /// Proxy operation ids whose answers are read for their outcome (see `detect::outcome`):
    /// looked up for every response without a lock; replaced (rarely) when one is added.
    response_ops: ArcSwap<HashSet<u32>>,
    /// Client addresses quarantined after a blocked credential-stuffing finding.
    quarantined: Mutex<ClientQuarantine>,
    /// Proxy operation ids whose answers are read for the values they give the session (see
    /// `detect::lineage`), like `response_ops`.
    lineage_ops: ArcSwap<HashSet<u32>>,
    /// The per-process key of the value hashes kept per session.
    value_keys: ValueKeys,
    /// What answers to each client address's anonymous requests gave (see `detect::shown`).
    shown: ShownToAddress,
}

/// The client address whose anonymous answers count as given to this request's session
/// (see `detect::shown`): none for a session the address itself names.
fn anonymous_peer(ctx: &RequestContext<'_>) -> Option<std::net::IpAddr> {
    (ctx.session_source != SessionSource::ClientIp).then_some(ctx.client)
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

/// Largest difference taken between the time of an attempt another replica recorded and
/// this replica's clock (the internal messages' own bound, `proxy::route::auth`).
const MAX_FACT_SKEW_MS: u64 = 30_000;

fn window_ms(learning: &LearningConfig) -> u64 {
    learning.volume_window.as_millis_u64().max(1000)
}

impl Inner {
    /// The current journey's collapsed history as model indices (see `journey_history`).
    fn history(&self, recent: &[RecentOp], seen: u32, now_ms: u64, gap_ms: u64) -> Vec<u16> {
        journey_history(recent, seen, now_ms, gap_ms, |op| {
            self.ids.get(&op).and_then(|(_, index)| *index)
        })
    }

    /// Whether `remember_id` would change nothing for this operation and index.
    fn remembers(&self, op: &Operation, index: Option<u16>) -> bool {
        match self.ids.get(&op.id) {
            Some((_, known)) => known.is_some() || index.is_none(),
            None => self.ids.len() >= MAX_OPERATION_IDS,
        }
    }

    fn remember_id(&mut self, id: u32, template: &Arc<str>, index: Option<u16>) {
        if let Some(entry) = self.ids.get_mut(&id) {
            if entry.1.is_none() {
                entry.1 = index;
            }
            return;
        }
        if self.ids.len() < MAX_OPERATION_IDS {
            self.ids.insert(id, (template.clone(), index));
        }
    }

    /// Applies lessons in order (see `detect::lesson`).
    fn apply(&mut self, lessons: impl IntoIterator<Item = Lesson>, shape_caps: &ShapeCaps) {
        for mut lesson in lessons {
            let remember = lesson.remember.take();
            let template = lesson.template.take();
            let generation = self.generation;
            lesson.template = template.clone();
            lesson.apply(&mut self.model, generation, shape_caps);
            if let (Some(id), Some(template)) = (remember, template) {
                let index = self.model.op_index(&template);
                self.remember_id(id, &template, index);
            }
        }
    }

    /// `model` with the folded templates renamed (see `detect::templates`).
    fn unfolded(&self, model: LearnedModel) -> LearnedModel {
        if self.folded.is_empty()
            || !model
                .operations
                .iter()
                .any(|o| self.folded.contains_key(&o.template))
        {
            return model;
        }
        model.renamed(&|t| self.folded.get(t).cloned())
    }

    /// The frozen baselines, their operations named by template: to carry them over an
    /// adoption or a merge, which may change the model's index space ([`Inner::refreeze`]).
    fn frozen(&self) -> (Baselines, Vec<(String, OperationBaseline)>) {
        let named = self
            .baselines
            .operations
            .iter()
            .filter_map(|(index, b)| Some((self.model.operation(*index)?.template.clone(), *b)))
            .collect();
        let rest = Baselines {
            operations: HashMap::new(),
            ..self.baselines.clone()
        };
        (rest, named)
    }

    /// Puts back the baselines [`Inner::frozen`] took, in the current index space: they stay
    /// frozen for their counting window, as one replica's do (a merged model that grew enough
    /// replaces them at the next refresh, see `detect::baselines`).
    fn refreeze(&mut self, (mut baselines, named): (Baselines, Vec<(String, OperationBaseline)>)) {
        baselines.operations = named
            .into_iter()
            .filter_map(|(template, b)| Some((self.model.op_index(&template)?, b)))
            .collect();
        self.baselines = baselines;
    }

    /// Re-resolves the id map after the model changed. Unless every operation kept its index
    /// (`indices_kept`), the generation moves on: lessons made before re-resolve their
    /// operation by template and drop what names other indices, and sessions forget their
    /// lessons without an origin (`detect::lineage`).
    fn reindex(&mut self, indices_kept: bool) {
        for (template, index) in self.ids.values_mut() {
            if let Some(new) = self.folded.get(&**template) {
                *template = Arc::from(new.as_str());
            }
            *index = self.model.op_index(template);
        }
        // Indices may have changed: recompute the frozen baselines at the next exchange.
        self.baselines = Baselines::default();
        if !indices_kept {
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

/// Whether every operation of `before` has the same index in `after`.
fn indices_kept(before: &LearnedModel, after: &LearnedModel) -> bool {
    before
        .operations
        .iter()
        .enumerate()
        .all(|(i, op)| after.op_index(&op.template).map(usize::from) == Some(i))
}

/// A session flagged now taught the model its counts of the current window while it was still
/// unflagged (a scraper's first pages, an enumerator's first ids): take them back, so that
/// abusive windows never become part of the peer baselines (anti-poisoning). Returns what to
/// subtract from the model and clears the session's record of it.
fn take_back_window(state: &mut SessionState, window: u64) -> Vec<TakeBack> {
    let Some(counters) = state.window(window) else {
        return Vec::new();
    };
    let slots: Vec<TakeBack> = counters
        .slots
        .iter()
        .filter(|s| s.learned_requests > 0 || s.learned_objects > 0)
        .map(|s| (s.op, s.learned_requests, s.learned_objects))
        .collect();
    let counters = state.window_mut(window);
    for slot in &mut counters.slots {
        slot.learned_requests = 0;
        slot.learned_objects = 0;
    }
    slots
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
        model.taken_back = TakenBack::default();
        let reported = model.clone();
        Self {
            settings: ArcSwap::from_pointee(Settings {
                learning: learning.clone(),
                detectors: detectors.clone(),
                protection: None,
                session_names: Vec::new(),
                jwt_headers: Vec::new(),
            }),
            inner: RwLock::new(Inner {
                model,
                reported,
                ids: HashMap::new(),
                next_ageing_ms: 0,
                baselines: Baselines::default(),
                generation: 0,
                folded: HashMap::new(),
            }),
            pending: Mutex::new(PendingLessons::default()),
            clients: Mutex::new(ClientTable::default()),
            auth: Mutex::new(AuthActivity::new(learning.max_tracked_clients)),
            response_ops: ArcSwap::from_pointee(HashSet::new()),
            quarantined: Mutex::new(ClientQuarantine::default()),
            lineage_ops: ArcSwap::from_pointee(HashSet::new()),
            value_keys: ValueKeys::default(),
            shown: ShownToAddress::default(),
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
            ..(**current).clone()
        }));
        self.auth
            .lock()
            .set_max_identities(learning.max_tracked_clients);
        let mut inner = self.write_inner();
        inner.model.set_caps(caps_of(learning));
    }

    /// A copy of the whole model (for persistence).
    pub fn snapshot(&self) -> LearnedModel {
        self.write_inner().model.clone()
    }

    /// What was learned since the previous call (or since adoption); the next delta starts here.
    pub fn take_delta(&self) -> LearnedModel {
        let mut inner = self.write_inner();
        let delta = inner.model.delta_since(&inner.reported);
        inner.reported = inner.model.clone();
        delta
    }

    /// Adopts the merged model of all replicas; what was learned locally since the last
    /// `take_delta` stays on top of it, so nothing is lost or counted twice.
    pub fn replace_model(&self, merged: LearnedModel) {
        let caps = caps_of(&self.settings.load().learning);
        let mut inner = self.write_inner();
        let pending = inner.model.delta_since(&inner.reported);
        let mut merged = inner.unfolded(merged);
        // A whole model is counts only: a negative part applies to a model merged into.
        merged.taken_back = TakenBack::default();
        // The operations this replica knows keep their indices (the merged model's others
        // come after them): what sessions recorded to take back when they are flagged (their
        // window slots, `detect::lineage::LineageState::take_taught`) names model indices,
        // and stays valid across the adoptions that follow every report.
        let mut model = LearnedModel::new(caps);
        for op in &inner.model.operations {
            model.op_index_or_insert(&op.template, 0);
        }
        model.merge(&merged);
        inner.reported = model.clone();
        // What a take-back lowered since the last delta (the pending delta's negative part)
        // is subtracted from the adopted counts too, and the next delta reports it again
        // against them (`model::taken_back`).
        model.merge(&pending);
        // The baselines of this counting window stay frozen, as on one replica: recomputed
        // from every merged model, they would follow what concurrent sessions taught while
        // they climbed (docs/scale-out.md).
        let frozen = inner.frozen();
        let kept = indices_kept(&inner.model, &model);
        inner.model = model;
        inner.reindex(kept);
        inner.refreeze(frozen);
    }

    /// Adds another model's counts (for example one learned elsewhere) as local learning: it
    /// is part of the next delta.
    pub fn merge_model(&self, other: &LearnedModel) {
        let mut inner = self.write_inner();
        let other = inner.unfolded(other.clone());
        let frozen = inner.frozen();
        inner.model.merge(&other);
        // Merging adds operations after the known ones: every index is kept.
        inner.reindex(true);
        inner.refreeze(frozen);
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
        let inner = self.write_inner();
        let clients = self.clients.lock().len();
        let mut view = model_view(
            &inner.model,
            &settings.learning,
            &settings.detectors,
            settings.protection.as_deref(),
        );
        view.usage.tracked_clients = clients;
        view
    }

    /// The write lock, with every queued lesson applied first: whoever reads the model through
    /// it (snapshots, deltas, the view) sees everything learned so far.
    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        let mut inner = self.inner.write();
        let queued = self.pending.lock().take();
        if !queued.is_empty() {
            let shape_caps = caps_of(&self.settings.load().learning).shape();
            inner.apply(queued, &shape_caps);
        }
        inner
    }

    /// Applies a lesson now when the write lock is free, else queues it for whoever holds the
    /// lock next; a full queue is applied in one batch. Never waits for the lock otherwise.
    fn learn(&self, lesson: Lesson, learning: &LearningConfig) {
        let shape_caps = caps_of(learning).shape();
        if let Some(mut inner) = self.inner.try_write() {
            let queued = self.pending.lock().take();
            inner.apply(
                queued.into_iter().chain(std::iter::once(lesson)),
                &shape_caps,
            );
        } else {
            // The queue's lock is released before the model's is taken (`write_inner` takes
            // them in the other order).
            let full = self.pending.lock().push(lesson);
            if let Some(batch) = full {
                let mut inner = self.inner.write();
                inner.apply(batch, &shape_caps);
            }
        }
    }

    /// The rare model changes a request may need before it learns, each behind a check made
    /// under the read lock: exponential ageing once per learning window, the frozen baselines
    /// (recomputed per counting window, filled at most once a second), and adding an operation
    /// seen for the first time (bounded by the operation cap).
    fn maintain(
        &self,
        ctx: &RequestContext<'_>,
        learning: &LearningConfig,
        window_ms: u64,
        learnable: bool,
    ) {
        let period = learning.window_seconds.saturating_mul(1000).max(60_000);
        let now = ctx.now_ms;
        let due = {
            let inner = self.inner.read();
            inner.next_ageing_ms == 0
                || now >= inner.next_ageing_ms
                || inner.baselines.due(now, window_ms)
                || (learnable
                    && inner.model.op_index(&ctx.operation.template).is_none()
                    && inner.model.has_room_for_operation())
        };
        if !due {
            return;
        }
        let mut guard = self.write_inner();
        let inner = &mut *guard;
        if inner.next_ageing_ms == 0 {
            inner.next_ageing_ms = now.saturating_add(period);
        } else if now >= inner.next_ageing_ms {
            inner.model.halve();
            inner.reported.halve();
            inner.next_ageing_ms = now.saturating_add(period);
        }
        inner
            .baselines
            .refresh(&inner.model, learning.min_volume_windows, now, window_ms);
        if learnable {
            let index = inner.model.op_index_or_insert(&ctx.operation.template, now);
            inner.remember_id(ctx.operation.id, &ctx.operation.template, index);
        }
    }

    /// The request's parameters, with those that identify sessions hidden.
    fn params_of(ctx: &RequestContext<'_>, settings: &Settings) -> RequestParams {
        let mut params = ctx.scratch.take_params(ctx);
        params.hide_session_identifiers(&settings.session_names);
        params
    }

    /// Starts reading the answers of proxy operation `id` for their outcome.
    fn read_responses_of(&self, id: u32) {
        if self.response_ops.load().contains(&id) {
            return;
        }
        self.response_ops.rcu(|ops| {
            let mut ops = HashSet::clone(ops);
            if ops.len() < MAX_OPERATION_IDS {
                ops.insert(id);
            }
            ops
        });
    }

    /// Starts or stops reading the answers of proxy operation `id` for their values.
    fn read_values_of(&self, id: u32, wanted: bool) {
        if self.lineage_ops.load().contains(&id) == wanted {
            return;
        }
        self.lineage_ops.rcu(|ops| {
            let mut ops = HashSet::clone(ops);
            if !wanted {
                ops.remove(&id);
            } else if ops.len() < MAX_OPERATION_IDS {
                ops.insert(id);
            }
            ops
        });
    }

    /// The hashed claims of the session's token (see `detect::lineage`).
    fn claims_of(&self, ctx: &RequestContext<'_>, settings: &Settings) -> Vec<(String, u64)> {
        ctx.scratch.claims(|| {
            lineage::claims(
                ctx.session_source,
                ctx.headers,
                &settings.jwt_headers,
                &self.value_keys,
            )
        })
    }

    /// Runs the learned detectors on one request (`inspect` without the quarantine).
    fn judge(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        out: &mut Vec<Finding>,
        settings: &Settings,
    ) {
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        let inner = self.inner.read();
        let model = &inner.model;
        if !Self::globally_mature(model, learning) {
            return;
        }
        let params = Self::params_of(ctx, settings);
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
            && let Some(f) = shadow::check(&judged, &detectors.shadow_endpoint, state)
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
            let history = inner.history(
                ctx.recent,
                state.seen(),
                ctx.now_ms,
                learning.journey_gap.as_millis_u64(),
            );
            // The history across an idle gap, asked for only when the journey's start alone
            // would flag the step (a customer may resume a task after a pause).
            let across_gap = || inner.history(ctx.recent, state.seen(), ctx.now_ms, u64::MAX);
            match sequence::check(
                &judged,
                &detectors.unlikely_sequence,
                &history,
                &across_gap,
                state.seen(),
                repeat,
                state.unlikely_op(),
            ) {
                SequenceVerdict::Unlikely(f) => {
                    state.set_unlikely_op(judged.op);
                    out.push(f);
                }
                SequenceVerdict::Likely => {
                    state.set_unlikely_op(None);
                    out.extend(self.replayed(&judged, state, &detectors.unlikely_sequence));
                }
                SequenceVerdict::Silent => {
                    out.extend(self.replayed(&judged, state, &detectors.unlikely_sequence));
                }
            }
        }
        if detectors.volume.enabled
            && let Some(f) = volume::check(&judged, &detectors.volume, state)
        {
            out.push(f);
        }
        if detectors.enumeration.enabled
            && let Some(f) = enumeration::check(
                &judged,
                &detectors.enumeration,
                state,
                &self.unshown_objects(ctx, state, &params, settings, model),
            )
        {
            out.push(f);
        }
        if detectors.credential_stuffing.enabled && stuffing::is_auth_request(&judged) {
            let client = self.clients.lock().get(&ctx.client, judged.window);
            if let Some(f) = stuffing::check(&judged, &detectors.credential_stuffing, client) {
                out.push(f);
            } else {
                let mut auth = self.auth.lock();
                out.extend(distributed::check(
                    &judged,
                    &detectors.credential_stuffing,
                    &mut auth,
                    client,
                ));
            }
        }
        if detectors.identity_lineage.enabled
            && let Some(f) = self.shown.with(anonymous_peer(ctx), ctx.now_ms, |address| {
                lineage::check(
                    &judged,
                    &detectors.identity_lineage,
                    state.lineage(),
                    address,
                    &|| self.claims_of(ctx, settings),
                    &self.value_keys,
                )
            })
        {
            out.push(f);
        }
        ctx.scratch.keep_params(params);
    }

    /// The request's object identifiers that no token claim and no earlier answer of the
    /// session carried (see `lineage::unshown_objects`); all of them without lineage. Found
    /// once per request: the check's answer is also what learning takes.
    fn unshown_objects(
        &self,
        ctx: &RequestContext<'_>,
        state: &SessionState,
        params: &RequestParams,
        settings: &Settings,
        model: &LearnedModel,
    ) -> Vec<u64> {
        if params.object_ids.is_empty() || !settings.detectors.identity_lineage.enabled {
            return params.object_ids.clone();
        }
        ctx.scratch.unshown(|| {
            self.shown.with(anonymous_peer(ctx), ctx.now_ms, |address| {
                lineage::unshown_objects(
                    params,
                    state.lineage(),
                    address,
                    ctx.recent,
                    &|| self.claims_of(ctx, settings),
                    &self.value_keys,
                    model,
                )
            })
        })
    }

    /// A non-idempotent request identical to the session's previous successful one of its
    /// operation, where the model learned such repeats to be improbable (see `detect::replay`).
    fn replayed(
        &self,
        judged: &Judged<'_>,
        state: &SessionState,
        config: &crate::config::DetectorConfig,
    ) -> Option<Finding> {
        let (last, repeats) = state.last_change(judged.window, judged.op?)?;
        let fingerprint = replay::fingerprint(judged.ctx, &self.value_keys)?;
        (fingerprint == last)
            .then(|| replay::check(judged, config, repeats.saturating_add(1)))
            .flatten()
    }

    /// Learns where the request's values came from, and remembers (hashed) the values the
    /// session sent and was given (see `detect::lineage`).
    #[allow(clippy::too_many_arguments)]
    fn follow_values(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary<'_>,
        settings: &Settings,
        model: &LearnedModel,
        index: u16,
        params: &RequestParams,
        lesson: &mut Lesson,
    ) {
        if state.seen() == 0 && lineage::history_lost(ctx.recent) {
            state.lineage_mut().mark_incomplete();
        }
        let complete = !state.lineage().is_some_and(LineageState::incomplete)
            && !lineage::history_lost(ctx.recent);
        let success = (200..400).contains(&resp.status) && !resp.refused;
        let candidates = lineage::candidates(params);
        if !candidates.is_empty() && (success || lesson.learnable) {
            let hashes: Vec<u64> = candidates
                .iter()
                .map(|c| self.value_keys.hash(&c.value))
                .collect();
            if lesson.learnable && complete {
                let claims = self.claims_of(ctx, settings);
                let origins: Vec<lineage::Origins> =
                    self.shown.with(anonymous_peer(ctx), ctx.now_ms, |address| {
                        hashes
                            .iter()
                            .map(|hash| {
                                lineage::origins_of(*hash, &claims, state.lineage(), address, model)
                            })
                            .collect()
                    });
                for (c, origins) in candidates.iter().zip(origins) {
                    if origins.classes.is_empty()
                        && !state
                            .lineage_mut()
                            .record_taught(index, &c.obs.name, lesson.generation)
                    {
                        continue;
                    }
                    for source in origins.supplied_by {
                        if !lesson.supplied.contains(&source) {
                            lesson.supplied.push(source);
                        }
                    }
                    lesson
                        .lineage
                        .push((c.obs.name.clone(), origins.classes, origins.sources));
                }
            }
            if success {
                let values = state.lineage_mut();
                for (c, hash) in candidates.iter().zip(&hashes) {
                    values.remember(*hash, index, &c.obs.name, OriginClass::Request);
                }
            }
        }
        let reading = self.lineage_ops.load().contains(&ctx.operation.id);
        if success && reading && resp.body.is_none() {
            // An answer whose values matter was not in memory (larger than the read limit, or
            // streamed): what the session was given is unknown from now on, so it is no
            // longer judged rather than judged on half its values.
            let known = model
                .operation(index)
                .is_some_and(|s| s.lineage.supplied > 0);
            if known {
                state.lineage_mut().mark_incomplete();
            }
        }
        if success
            && reading
            && let Some(body) = resp.body
        {
            lesson.lineage_read = !state.tainted();
            let values = lineage::response_values(body);
            if ctx.session_source == SessionSource::ClientIp {
                // Shown to the address: also given to the sessions its token or cookie names.
                self.shown.remember(
                    ctx.client,
                    ctx.now_ms,
                    index,
                    values
                        .iter()
                        .map(|(field, value)| (self.value_keys.hash(value), field.as_str())),
                );
                if ctx.scratch.exports() && !values.is_empty() {
                    // For the replicas that decide the sessions of this address's tokens.
                    ctx.scratch.add_facts(ctx.client, |facts| {
                        facts.operation = ctx.operation.template.to_string();
                        facts.values.clone_from(&values);
                    });
                }
            }
            if !values.is_empty() {
                let state = state.lineage_mut();
                for (field, value) in &values {
                    state.remember(
                        self.value_keys.hash(value),
                        index,
                        field,
                        OriginClass::Response,
                    );
                }
            }
        }
        if let Some(stats) = model.operation(index) {
            self.read_values_of(ctx.operation.id, lineage::wants(&stats.lineage));
        }
    }

    /// Whether `value` counts as shown to the sessions of tokens, cookies or headers from
    /// `client` at `now_ms` (an answer to an anonymous request of `client` carried it, here or
    /// on another replica: see `detect::shown`).
    pub fn shown_to(&self, client: std::net::IpAddr, value: &str, now_ms: u64) -> bool {
        let hash = self.value_keys.hash(value);
        self.shown.with(Some(client), now_ms, |address| {
            address.is_some_and(|a| a.contains_given(hash))
        })
    }

    /// Whether every request from `client` is refused here at `now_ms` (its address is
    /// quarantined, here or on another replica: see `detect::quarantine`).
    pub fn quarantines(&self, client: std::net::IpAddr, now_ms: u64) -> bool {
        self.quarantined.lock().get(&client, now_ms).is_some()
    }

    fn globally_mature(model: &LearnedModel, learning: &LearningConfig) -> bool {
        model.requests >= learning.min_requests && model.sessions >= learning.min_sessions
    }
}

impl Analyzer for LearnedAnalyzer {
    fn remember_address_facts(&self, facts: &AddressFacts, now_ms: u64) -> usize {
        let Some(address) = facts.address else {
            return 0;
        };
        let settings = self.settings.load();
        let learning = &settings.learning;
        let cap = learning.max_tracked_clients;
        let mut skipped = 0;
        if !facts.values.is_empty() {
            // The model index of the operation here (another replica's may differ); one this
            // replica has not learned yet only names no source.
            let index = self
                .inner
                .read()
                .model
                .op_index(&facts.operation)
                .unwrap_or(u16::MAX);
            self.shown.remember(
                address,
                now_ms,
                index,
                facts
                    .values
                    .iter()
                    .take(lineage::MAX_RESPONSE_VALUES)
                    .map(|(field, value)| (self.value_keys.hash(value), field.as_str())),
            );
        }
        if let Some(failure) = facts.failure {
            // Counted, not learned from: the replica that decided it learned from it.
            self.clients
                .lock()
                .record_failure(address, failure.window, failure.identity, cap);
        }
        if let Some(q) = facts.quarantine {
            self.quarantined.lock().insert(
                address,
                Quarantine {
                    since_ms: q.since_ms,
                    until_ms: q.until_ms,
                    cause: q.cause,
                },
                now_ms,
                cap,
            );
        }
        if let Some(attempt) = &facts.attempt {
            let window_ms = window_ms(learning);
            // The operation's index here (another replica's may differ): an operation this
            // replica has not learned yet has no ring here. An attempt from beyond the
            // clock skew the messages allow, or older than the counting window, is judged by
            // nothing: neither is recorded.
            let index = self.inner.read().model.op_index(&attempt.operation);
            let timely = attempt.at_ms <= now_ms.saturating_add(MAX_FACT_SKEW_MS)
                && attempt.at_ms.saturating_add(window_ms) >= now_ms;
            match index {
                Some(index) if timely => self.auth.lock().record_elsewhere(
                    index,
                    attempt.at_ms,
                    attempt.at_ms / window_ms,
                    attempt.identity,
                    &address,
                    attempt.failed,
                ),
                _ => skipped += 1,
            }
        }
        if facts.carried_on {
            self.auth.lock().carried_on(&address);
        }
        if let Some(up_to_ms) = facts.campaign_member {
            self.auth.lock().named_elsewhere(&address, up_to_ms);
        }
        skipped
    }

    fn sweep_campaigns(&self, now_ms: u64, facts: &RequestScratch) -> Vec<(String, LateFinding)> {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        if !detectors.credential_stuffing.enabled {
            return Vec::new();
        }
        let window_ms = window_ms(learning);
        let at = distributed::CampaignClock {
            now_ms,
            window: now_ms / window_ms,
            window_ms,
        };
        let settle_ms = distributed::settle_ms(learning.journey_gap.as_millis_u64());
        // The model's read lock, then the activity's: the order `observe` takes them in.
        let inner = self.inner.read();
        let model = &inner.model;
        if !Self::globally_mature(model, learning) {
            return Vec::new();
        }
        let mut auth = self.auth.lock();
        let mut named = Vec::new();
        for op in auth.operations() {
            let Some(stats) = model.operation(op) else {
                continue;
            };
            let template = model.template_of(op);
            let late = distributed::sweep(
                &mut auth,
                &detectors.credential_stuffing,
                at,
                op,
                template,
                settle_ms,
                || distributed::learned_failure_rate(stats.failures(), stats.responses()),
            );
            named.extend(late.into_iter().map(|l| (template.to_owned(), l)));
        }
        drop(auth);
        drop(inner);
        // Quarantined like the members a login names, here and, with peers, everywhere
        // (`observe`).
        let member_quarantine = named.first().and_then(|(_, l)| {
            quarantine::after(std::slice::from_ref(&l.finding), detectors, now_ms)
        });
        if let Some((q, _)) = member_quarantine {
            let mut table = self.quarantined.lock();
            for (_, l) in &named {
                table.insert(l.client, q, now_ms, learning.max_tracked_clients);
            }
        }
        for (_, l) in &named {
            facts.add_facts(l.client, |f| {
                f.campaign_member = Some(now_ms.saturating_sub(settle_ms));
                if let Some((q, _)) = member_quarantine {
                    f.quarantine = Some(AddressQuarantine {
                        since_ms: q.since_ms,
                        until_ms: q.until_ms,
                        cause: q.cause,
                    });
                }
            });
        }
        named
    }

    fn wants_body(&self, _op: &Operation) -> bool {
        let d = &self.settings.load().detectors;
        d.request_shape.enabled
            || d.enumeration.enabled
            || d.credential_stuffing.enabled
            || d.identity_lineage.enabled
    }

    fn wants_response(&self, op: &Operation) -> bool {
        self.response_ops.load().contains(&op.id)
            || self.lineage_ops.load().contains(&op.id)
            || self.settings.load().detectors.exposure.enabled
    }

    fn holds_response(&self, _op: &Operation) -> bool {
        let settings = self.settings.load();
        let exposure = &settings.detectors.exposure;
        exposure.enabled
            && exposure.action == Action::Block
            && Self::globally_mature(&self.inner.read().model, &settings.learning)
    }

    fn scans_streamed(&self, _op: &Operation) -> bool {
        self.settings.load().detectors.exposure.enabled
    }

    fn observe_streamed(
        &self,
        template: &str,
        now_ms: u64,
        state: &mut SessionState,
        scan: &exposure::Scan,
    ) -> Option<Finding> {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        if !detectors.exposure.enabled || !scan.json {
            return None;
        }
        let inner = self.inner.read();
        let finding = Self::globally_mature(&inner.model, learning)
            .then(|| exposure::check(&inner.model, template, scan, &detectors.exposure))
            .flatten();
        if let Some(found) = &finding {
            // As a flagged request: the session teaches nothing from now on.
            state.taint();
            if let Some((q, _)) = quarantine::after(std::slice::from_ref(found), detectors, now_ms)
            {
                state.set_quarantine(q);
            }
            return finding;
        }
        // Learned only from a whole answer of a session still learned from (`observe` decided
        // the rest of the exchange: a tainted session's answers teach nothing).
        if !scan.complete || state.tainted() {
            return None;
        }
        let op = inner.model.op_index(template)?;
        let lesson = Lesson {
            generation: inner.generation,
            now_ms,
            template: Some(template.into()),
            op: Some(op),
            streamed_exposure: Some(scan.sample(false)),
            ..Lesson::default()
        };
        drop(inner);
        self.learn(lesson, learning);
        None
    }

    fn inspect_response(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary<'_>,
    ) -> Option<Finding> {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        let scan = resp.exposure?;
        if !detectors.exposure.enabled || !(200..300).contains(&resp.status) {
            return None;
        }
        let finding = {
            let inner = self.inner.read();
            if !Self::globally_mature(&inner.model, learning) {
                return None;
            }
            exposure::check(
                &inner.model,
                &ctx.operation.template,
                scan,
                &detectors.exposure,
            )?
        };
        if let Some((q, _)) =
            quarantine::after(std::slice::from_ref(&finding), detectors, ctx.now_ms)
        {
            state.set_quarantine(q);
        }
        Some(finding)
    }

    fn inspect(&self, ctx: &RequestContext<'_>, state: &mut SessionState, out: &mut Vec<Finding>) {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        // A quarantined session or address is refused before anything else is judged.
        let client_quarantine = self.quarantined.lock().get(&ctx.client, ctx.now_ms);
        if let Some(f) = quarantine::check(state, client_quarantine, &ctx.client, ctx.now_ms) {
            out.push(f);
            return;
        }
        let first = out.len();
        self.judge(ctx, state, out, &settings);
        let found = out.get(first..).unwrap_or_default();
        if let Some((q, client)) = quarantine::after(found, detectors, ctx.now_ms) {
            state.set_quarantine(q);
            if client {
                self.quarantined.lock().insert(
                    ctx.client,
                    q,
                    ctx.now_ms,
                    learning.max_tracked_clients,
                );
                // Every session from the address is refused, whatever replica decides it.
                ctx.scratch.add_facts(ctx.client, |facts| {
                    facts.quarantine = Some(AddressQuarantine {
                        since_ms: q.since_ms,
                        until_ms: q.until_ms,
                        cause: q.cause,
                    });
                });
            }
        }
    }

    fn observe(
        &self,
        ctx: &RequestContext<'_>,
        state: &mut SessionState,
        resp: &ResponseSummary,
        flagged: bool,
    ) -> Vec<LateFinding> {
        let settings = self.settings.load();
        let (learning, detectors) = (&settings.learning, &settings.detectors);
        // A request outside the inventory that the application answers as not existing is
        // probing (see `detect::shadow`): the session's later unknown operations are refused
        // and it teaches nothing from now on.
        let probe = matches!(resp.status, 404 | 405) && {
            let learned = {
                let inner = self.inner.read();
                inner
                    .model
                    .op_index(&ctx.operation.template)
                    .and_then(|i| inner.model.operation(i))
                    .map_or(0, |s| s.requests)
            };
            shadow::outside_inventory(
                ctx.operation.origin,
                learned,
                learning.min_endpoint_requests,
            )
        };
        if probe {
            state.mark_probed();
        }
        let flagged = flagged || probe;
        let newly_tainted = flagged && !state.tainted();
        if flagged {
            state.taint();
        }
        let tainted = state.tainted();
        let params = Self::params_of(ctx, &settings);
        // What the answer says, judged against what the operation's answers were learned to
        // look like (see `detect::outcome`).
        // Only the operations whose outcome matters are read for it (an answer handed over for
        // its exposure alone says nothing about outcomes).
        let outcome_read = self.response_ops.load().contains(&ctx.operation.id);
        let signals = Signals::read(
            resp.status,
            resp.set_cookie && outcome_read,
            resp.body.filter(|_| outcome_read),
        );
        // Without a body read, the status alone decides (no model lookup on the common path).
        let failure = if signals.read {
            let inner = self.inner.read();
            let stats = inner
                .model
                .op_index(&ctx.operation.template)
                .and_then(|i| inner.model.operation(i));
            outcome::classify(&signals, stats)
        } else {
            outcome::classify(&signals, None)
        };
        let body_failure = failure.is_some_and(outcome::Failure::from_body);
        // Learn only from successful traffic: a 200 whose body says it failed is no success.
        let learnable = (200..400).contains(&resp.status) && !tainted && !body_failure;
        let window_ms = window_ms(learning);
        let window = ctx.now_ms / window_ms;
        self.maintain(ctx, learning, window_ms, learnable);
        // Everything below reads the shared model; what it must change goes into `lesson`.
        let guard = self.inner.read();
        let inner = &*guard;
        let baselines = &inner.baselines;
        let model = &inner.model;
        let mut lesson = Lesson {
            generation: inner.generation,
            now_ms: ctx.now_ms,
            template: Some(ctx.operation.template.clone()),
            learnable,
            sequence_order: learning.sequence_order,
            max_contexts: learning.max_contexts,
            session: stable_hash(ctx.session.as_bytes()),
            ..Lesson::default()
        };
        if newly_tainted {
            lesson.take_back = take_back_window(state, window);
            if let Some(values) = state.lineage_if_any() {
                lesson.untaught = values.take_taught(inner.generation);
            }
        }
        let op = model.op_index(&ctx.operation.template);
        lesson.op = op;
        if !inner.remembers(ctx.operation, op) {
            lesson.remember = Some(ctx.operation.id);
        }
        lesson.dropped_operation = op.is_none() && learnable;
        let repeat = ctx.recent.last().is_some_and(|r| r.op == ctx.operation.id);
        if learnable {
            if !state.counted() {
                lesson.new_session = true;
                state.mark_counted();
            }
            if op.is_some() && !repeat {
                lesson.sequence = Some(inner.history(
                    ctx.recent,
                    state.seen(),
                    ctx.now_ms,
                    learning.journey_gap.as_millis_u64(),
                ));
            }
        }
        // The enforcer's own refusals say nothing about the credentials (a session refused for
        // its sign-up would otherwise have "failed" for the identity it signed up with).
        let status_failure = !resp.refused && matches!(resp.status, 401 | 403);
        let mut auth_like = params.has_credentials;
        if let Some(index) = op
            && let Some(stats) = model.operation(index)
        {
            if !tainted {
                lesson.status = Some(resp.status);
                lesson.auth_failure = status_failure;
                lesson.outcome = Some(signals);
            }
            lesson.object_lookup = learnable && !params.object_ids.is_empty();
            if learnable && detectors.exposure.enabled && (200..300).contains(&resp.status) {
                let anonymous = ctx.session_source == SessionSource::ClientIp;
                lesson.exposure = Some(match resp.exposure {
                    Some(scan) => scan.sample(anonymous),
                    None => ExposureSample {
                        anonymous,
                        ..ExposureSample::default()
                    },
                });
            }
            auth_like |= stats.is_auth_like();
            if outcome::wants(stats) || params.has_credentials || !params.object_ids.is_empty() {
                self.read_responses_of(ctx.operation.id);
            }
            // Learned from while outside the inventory after maturity: discovered (see
            // `detect::shadow`).
            lesson.discovered = learnable
                && stats.discovered_ms == 0
                && stats.requests < learning.min_endpoint_requests
                && Self::globally_mature(model, learning);
            let change = detectors
                .unlikely_sequence
                .enabled
                .then(|| replay::fingerprint(ctx, &self.value_keys))
                .flatten();
            let succeeded = (200..300).contains(&resp.status) && !resp.refused && !body_failure;
            // Judged on these (see `enumeration::check`), so learned on these: before this
            // answer's values are followed, as when the request was judged.
            let unshown = if params.object_ids.is_empty() {
                Vec::new()
            } else {
                self.unshown_objects(ctx, state, &params, &settings, model)
            };
            let counters = state.window_mut(window);
            if learnable {
                // The session's earlier identical repeats are learned now that it went on
                // unflagged (see `OpSlot::pending_repeat`).
                for slot in counters.slots.iter_mut().filter(|s| s.pending_repeat) {
                    slot.pending_repeat = false;
                    lesson.identical_repeats.push(slot.op);
                }
            }
            if let Some(slot) = counters.slot_mut(index) {
                if let Some(change) = change {
                    let identical = slot.last_change == change;
                    if learnable && identical {
                        slot.pending_repeat = true;
                    } else if learnable {
                        lesson.different_request = true;
                    }
                    // Every identical copy counts, whatever the answer (an application that
                    // refuses a duplicate does not make the next copy less of a replay); only
                    // a different request that succeeded starts afresh.
                    if identical {
                        slot.identical_repeats = slot.identical_repeats.saturating_add(1);
                    } else if succeeded {
                        slot.identical_repeats = 0;
                        slot.last_change = change;
                    }
                }
                slot.requests = slot.requests.saturating_add(1);
                let before = distinct_of(slot.objects);
                for id in &unshown {
                    slot.objects = with_object(slot.objects, *id);
                }
                let after = distinct_of(slot.objects);
                if learnable {
                    let frozen = baselines.operation(index);
                    let volume_cap = learning_cap(frozen.volume, |p| {
                        volume_threshold(p, detectors.volume.sensitivity)
                    });
                    if u32::from(slot.requests) <= volume_cap {
                        lesson.volume_reached = Some(u32::from(slot.requests));
                        slot.learned_requests = slot.requests;
                    }
                    let objects_cap = learning_cap(frozen.objects, |p| {
                        object_threshold(p.p99, detectors.enumeration.sensitivity)
                    });
                    let last = after.min(objects_cap);
                    if last > before {
                        lesson.objects_reached = Some((before + 1, last));
                        slot.learned_objects = u16::try_from(last).unwrap_or(u16::MAX);
                    }
                }
            }
            if (resp.status == 404 || body_failure) && !params.object_ids.is_empty() {
                counters.not_found = counters.not_found.saturating_add(1);
                let cap = learning_cap(baselines.not_found, |p| {
                    peer_threshold(p.p99, detectors.enumeration.sensitivity)
                });
                if !tainted && u32::from(counters.not_found) <= cap {
                    lesson.not_found_reached = Some(u32::from(counters.not_found));
                }
            }
        }
        if detectors.identity_lineage.enabled
            && let Some(index) = op
        {
            self.follow_values(
                ctx,
                state,
                resp,
                &settings,
                model,
                index,
                &params,
                &mut lesson,
            );
        }
        let auth_failure = status_failure || (auth_like && body_failure);
        let mut late = Vec::new();
        // Attempts of flagged sessions are no evidence across clients (they were judged).
        if auth_like
            && !flagged
            && !tainted
            && let Some(index) = op
        {
            let mut auth = self.auth.lock();
            auth.record(
                index,
                ctx.now_ms,
                window,
                params.identity,
                &ctx.client,
                auth_failure,
            );
            // Recorded alike by every replica: the activity is API-wide, each replica decides
            // a share of it (the identity's stable hash only, never a credential).
            ctx.scratch.add_facts(ctx.client, |facts| {
                facts.attempt = Some(AuthAttempt {
                    operation: ctx.operation.template.to_string(),
                    at_ms: ctx.now_ms,
                    identity: params.identity,
                    failed: auth_failure,
                });
            });
            if detectors.credential_stuffing.enabled && Self::globally_mature(model, learning) {
                let judged = Judged {
                    ctx,
                    model,
                    learning,
                    op,
                    params: &params,
                    window,
                    window_ms,
                    baselines,
                };
                late = distributed::campaign(
                    &judged,
                    &detectors.credential_stuffing,
                    &mut auth,
                    distributed::settle_ms(learning.journey_gap.as_millis_u64()),
                );
            }
        }
        // A session that failed to authenticate and then used the API for something else is an
        // honest user carrying on (see `detect::distributed`, campaign).
        if auth_like {
            state.set_auth_failed(auth_failure && !flagged);
        } else if state.auth_failed() {
            state.set_auth_failed(false);
            self.auth.lock().carried_on(&ctx.client);
            ctx.scratch
                .add_facts(ctx.client, |facts| facts.carried_on = true);
        }
        // The members of a campaign are quarantined like a stuffer caught in the act.
        let member_quarantine = late.first().and_then(|l| {
            quarantine::after(std::slice::from_ref(&l.finding), detectors, ctx.now_ms)
        });
        if let Some((q, _)) = member_quarantine {
            let mut table = self.quarantined.lock();
            for l in &late {
                table.insert(l.client, q, ctx.now_ms, learning.max_tracked_clients);
            }
        }
        if ctx.scratch.exports() && !late.is_empty() {
            // Named once, refused everywhere: each member's facts, as its own address's.
            let settled = ctx
                .now_ms
                .saturating_sub(distributed::settle_ms(learning.journey_gap.as_millis_u64()));
            for l in &late {
                ctx.scratch.add_facts(l.client, |facts| {
                    facts.campaign_member = Some(settled);
                    if let Some((q, _)) = member_quarantine {
                        facts.quarantine = Some(AddressQuarantine {
                            since_ms: q.since_ms,
                            until_ms: q.until_ms,
                            cause: q.cause,
                        });
                    }
                });
            }
        }
        if auth_failure && auth_like {
            // Counted wherever the address's next attempt is decided.
            ctx.scratch.add_facts(ctx.client, |facts| {
                facts.failure = Some(AuthFailure {
                    window,
                    identity: params.identity,
                });
            });
            let mut clients = self.clients.lock();
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
                    lesson.auth_failures_reached = Some(entry.failures);
                }
                let identities_cap = learning_cap(baselines.auth_identities, |p| {
                    identity_threshold(p.p99, sensitivity)
                });
                let last = entry.distinct_identities().min(identities_cap);
                if last > before {
                    lesson.auth_identities_reached = Some((before + 1, last));
                }
            }
        }
        drop(guard);
        if learnable {
            lesson.has_credentials = params.has_credentials;
            lesson.params = params.params;
            lesson.headers = params.headers;
        }
        self.learn(lesson, learning);
        state.record_seen();
        late
    }

    fn fold_templates(&self, resolver: &crate::operation::OperationResolver) {
        let positions = resolver.saturated_positions();
        let settings = self.settings.load();
        let decisions: Vec<(u32, Vec<Box<str>>)> = {
            let inner = self.inner.read();
            positions
                .iter()
                .map(|p| {
                    let names = templates::names_to_fold(
                        &inner.model,
                        p,
                        &settings.learning,
                        resolver.max_values_per_position(),
                    );
                    (p.node, names)
                })
                .filter(|(_, names)| !names.is_empty())
                .collect()
        };
        let renames: Vec<(Arc<str>, Arc<str>)> = decisions
            .iter()
            .flat_map(|(node, names)| resolver.fold(*node, names))
            .collect();
        // A request resolved just before a fold may have added its literal operation again:
        // rename whenever the model holds a folded template.
        let stale = |inner: &Inner| {
            inner
                .model
                .operations
                .iter()
                .any(|o| inner.folded.contains_key(&o.template))
        };
        if renames.is_empty() && !stale(&self.inner.read()) {
            return;
        }
        let mut guard = self.write_inner();
        let inner = &mut *guard;
        for (old, new) in &renames {
            if inner.folded.len() < MAX_FOLDED {
                inner.folded.insert(old.to_string(), new.to_string());
            }
        }
        if !renames.is_empty() {
            tracing::info!(
                folded = renames.len(),
                "literal path names folded into a parameter with their statistics"
            );
        }
        let model = std::mem::take(&mut inner.model);
        inner.model = inner.unfolded(model);
        let reported = std::mem::take(&mut inner.reported);
        inner.reported = inner.unfolded(reported);
        inner.reindex(false);
    }

    fn configure(&self, config: &EnforcerConfig) {
        let current = self.settings.load();
        self.settings.store(Arc::new(Settings {
            session_names: session_names(&config.session),
            jwt_headers: jwt_headers(&config.session),
            ..(**current).clone()
        }));
    }

    fn maturity(&self) -> Option<ModelMaturity> {
        let settings = self.settings.load();
        let learning = &settings.learning;
        let inner = self.inner.read();
        let model = &inner.model;
        let operations_mature = model
            .operations
            .iter()
            .filter(|op| op.volume.windows() >= learning.min_volume_windows)
            .count();
        Some(ModelMaturity {
            requests: model.requests,
            sessions: model.sessions,
            min_requests: learning.min_requests,
            min_sessions: learning.min_sessions,
            operations: model.operations.len() as u64,
            operations_mature: operations_mature as u64,
        })
    }

    fn model_view(&self) -> serde_json::Value {
        serde_json::to_value(self.view())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}
