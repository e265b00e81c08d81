//! What one exchange teaches the shared model, separated from when it is applied.
//!
//! `LearnedAnalyzer::observe` works out everything under the model's read lock — the
//! operation's index, the session's history, which per-window counts are under their learning
//! caps — and updates the session's own counters there. What must change in the shared model is
//! collected in a [`Lesson`]. The lesson is applied at once when the write lock is free
//! (`try_write`, never waiting); when it is not, it joins a short queue that whoever next holds
//! the write lock applies first ([`PendingLessons`]), and a full queue is applied in one batch.
//! Requests therefore never wait to learn, and the model is the sum of the same counts as
//! before: it is counts only, so applying lessons later or in a batch adds the same numbers.

use std::sync::Arc;

use super::outcome::Signals;
use crate::model::lineage::OriginClass;
use crate::model::{LearnedModel, ParamObservation, ShapeCaps};

/// Lessons queued beyond this are applied in one batch by the request that filled the queue.
pub const MAX_PENDING_LESSONS: usize = 64;

/// Counts an abusive session taught the current window and that are taken back (anti-poisoning):
/// operation index, requests, objects.
pub type TakeBack = (u16, u16, u16);

/// The model updates of one exchange.
#[derive(Debug, Default)]
pub struct Lesson {
    /// The model generation the indices below refer to (see `Inner::generation`).
    pub generation: u64,
    pub now_ms: u64,
    /// The operation's template (to translate the index after a model adoption).
    pub template: Option<Arc<str>>,
    /// The operation's model index when the lesson was made.
    pub op: Option<u16>,
    /// Proxy operation id to remember with the index, when not remembered yet.
    pub remember: Option<u32>,
    /// The session was flagged now: take back what it taught the current window (what a
    /// report already carried away reaches the merged model with the next delta's negative
    /// part, see `model::taken_back`).
    pub take_back: Vec<TakeBack>,
    /// Successful, unflagged traffic: learned from.
    pub learnable: bool,
    /// The operation is learned from outside the inventory after maturity: mark it discovered.
    pub discovered: bool,
    /// The operation could not be added (operation cap reached).
    pub dropped_operation: bool,
    /// First learnable request of the session.
    pub new_session: bool,
    pub headers: Vec<ParamObservation>,
    pub params: Vec<ParamObservation>,
    pub has_credentials: bool,
    /// Fingerprint of the session key (the model's keyed hash): which sessions saw a value.
    pub session: u64,
    /// The collapsed history this operation followed (sequence learning), when learned.
    pub sequence: Option<Vec<u16>>,
    pub sequence_order: usize,
    pub max_contexts: usize,
    /// The status to count (untainted sessions only) and whether it is an auth failure.
    pub status: Option<u16>,
    pub auth_failure: bool,
    /// What the answer said, when its body was read (counted with `status`).
    pub outcome: Option<Signals>,
    /// A learnable request that named objects.
    pub object_lookup: bool,
    /// Per-session window counts reached (already filtered by their learning caps).
    pub volume_reached: Option<u32>,
    pub objects_reached: Option<(u32, u32)>,
    pub not_found_reached: Option<u32>,
    pub auth_failures_reached: Option<u32>,
    pub auth_identities_reached: Option<(u32, u32)>,
    /// What a learnable 2xx answer exposed (see `detect::exposure`).
    pub exposure: Option<crate::model::exposure::ExposureSample>,
    /// What a streamed 2xx answer held, scanned to its end after the exchange was learned
    /// (its `exposure` counted the answer; this adds the scan alone).
    pub streamed_exposure: Option<crate::model::exposure::ExposureSample>,
    /// Origins of the request's reference-like values (parameter, classes, named sources),
    /// learned with the request (see `detect::lineage`).
    pub lineage: Vec<(String, Vec<OriginClass>, Vec<String>)>,
    /// The session was flagged now: its earlier lessons of values without an origin, taken
    /// back (operation index, parameter), see `detect::lineage::LineageState::take_taught`.
    pub untaught: Vec<(u16, String)>,
    /// Operations (model indices) whose answers supplied those values.
    pub supplied: Vec<u16>,
    /// The answer's body was read for values.
    pub lineage_read: bool,
    /// A learnable non-idempotent request that did not repeat the session's previous
    /// successful request of the operation exactly (see `detect::replay`).
    pub different_request: bool,
    /// Operations (model indices) whose identical repeats earlier in the session are learned
    /// now, the session having gone on unflagged.
    pub identical_repeats: Vec<u16>,
}

impl Lesson {
    /// Applies the lesson to `model`. `generation` is the model's current generation: when the
    /// model was replaced since the lesson was made, operation indices are re-resolved by
    /// template and the sequence part (indices of other operations) is dropped.
    pub fn apply(mut self, model: &mut LearnedModel, generation: u64, shape_caps: &ShapeCaps) {
        if self.generation != generation {
            self.op = self.template.as_deref().and_then(|t| model.op_index(t));
            self.sequence = None;
            self.take_back.clear();
            self.untaught.clear();
            self.supplied.clear();
            self.identical_repeats.clear();
        }
        if self.learnable {
            for op in &self.identical_repeats {
                if let Some(stats) = model.operation_mut(*op) {
                    stats.repeats.record(true);
                }
            }
            for source in &self.supplied {
                if let Some(stats) = model.operation_mut(*source) {
                    stats.lineage.supplied += 1;
                }
            }
        }
        for (op, param) in self.untaught.drain(..) {
            if let Some(stats) = model.operation_mut(op) {
                stats.lineage.unlearn_without_origin(&param);
            }
        }
        for (op, requests, objects) in self.take_back.drain(..) {
            if let Some(stats) = model.operation_mut(op) {
                for count in 1..=u32::from(requests) {
                    stats.volume.unrecord_reached(count);
                }
                for count in 1..=u32::from(objects) {
                    stats.objects.unrecord_reached(count);
                }
            }
        }
        if self.learnable {
            if self.dropped_operation {
                model.dropped_operations += 1;
            }
            model.requests += 1;
            model.touch(self.now_ms);
            if self.new_session {
                model.sessions += 1;
            }
            for obs in &self.headers {
                model.headers.learn(obs, shape_caps, self.session);
            }
            if let (Some(op), Some(history)) = (self.op, &self.sequence) {
                model.sequences.learn(history, op, self.sequence_order);
                model.sequences.enforce_cap(self.max_contexts);
            }
        }
        if let Some(stats) = self.op.and_then(|op| model.operation_mut(op)) {
            if let Some(status) = self.status {
                stats.record_status(status);
                if self.auth_failure {
                    stats.auth_failures += 1;
                }
                if let Some(o) = self.outcome.filter(|o| o.read && o.success_status()) {
                    let outcomes = &mut stats.outcomes;
                    outcomes.read += 1;
                    if o.credential {
                        outcomes.credential_answers += 1;
                    } else if o.error_marker {
                        outcomes.error_answers += 1;
                    }
                }
            }
            if let Some(sample) = &self.streamed_exposure {
                stats.exposure.record_scan(sample);
            }
            if self.lineage_read {
                stats.lineage.reads += 1;
            }
            if self.discovered && stats.discovered_ms == 0 {
                stats.discovered_ms = self.now_ms;
            }
            if self.learnable {
                if let Some(sample) = &self.exposure {
                    stats.exposure.record(sample);
                }
                stats.requests += 1;
                stats.last_seen_ms = stats.last_seen_ms.max(self.now_ms);
                if self.has_credentials {
                    stats.credential_requests += 1;
                }
                if self.object_lookup {
                    stats.object_lookups += 1;
                }
                for obs in &self.params {
                    stats.shape.learn(obs, shape_caps, self.session);
                }
                for (name, classes, sources) in &self.lineage {
                    stats.lineage.learn(name, classes, sources);
                }
                if self.different_request {
                    stats.repeats.record(false);
                }
            }
            if let Some(reached) = self.volume_reached {
                stats.volume.record_reached(reached);
            }
            if let Some((from, to)) = self.objects_reached {
                for reached in from..=to {
                    stats.objects.record_reached(reached);
                }
            }
            if let Some(reached) = self.not_found_reached {
                model.not_found.record_reached(reached);
            }
        }
        if let Some(reached) = self.auth_failures_reached {
            model.auth_failures.record_reached(reached);
        }
        if let Some((from, to)) = self.auth_identities_reached {
            for reached in from..=to {
                model.auth_identities.record_reached(reached);
            }
        }
    }
}

/// Lessons waiting for the write lock, in arrival order (a session's lessons stay in order).
#[derive(Debug, Default)]
pub struct PendingLessons {
    lessons: Vec<Lesson>,
}

impl PendingLessons {
    /// Queues a lesson; returns the whole batch when the queue is full.
    pub fn push(&mut self, lesson: Lesson) -> Option<Vec<Lesson>> {
        self.lessons.push(lesson);
        (self.lessons.len() >= MAX_PENDING_LESSONS).then(|| self.take())
    }

    pub fn take(&mut self) -> Vec<Lesson> {
        std::mem::take(&mut self.lessons)
    }

    pub fn is_empty(&self) -> bool {
        self.lessons.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lessons.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use crate::config::{Action, DetectorsConfig, LearningConfig};
    use crate::detect::LearnedAnalyzer;
    use crate::detect::request::{Analyzer, RequestContext, RequestScratch, ResponseSummary};
    use crate::detect::session_state::SessionState;
    use crate::model::LearnedModel;
    use crate::operation::{Operation, OperationOrigin};
    use crate::session::{RecentOp, SessionSource};

    const TEMPLATES: [&str; 4] = [
        "GET /api/v1/accounts",
        "GET /api/v1/accounts/{var1}/balance",
        "POST /api/v1/transfers",
        "GET /api/v1/profile",
    ];

    /// Plays `sessions` sessions of four requests each (`first` is the first session number).
    fn play(analyzer: &LearnedAnalyzer, ops: &[Operation], first: u32, sessions: u32) {
        let now = 1_700_000_000_000u64;
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", http::HeaderValue::from_static("bank-app/1.2"));
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        for s in first..first + sessions {
            let session = format!("jwt:sub=user-{s}");
            let account = format!("acc-{s}");
            let mut state = SessionState::default();
            let mut recent: Vec<RecentOp> = Vec::new();
            for (step, op) in ops.iter().enumerate() {
                let method: http::Method = op.template.split(' ').next().unwrap().parse().unwrap();
                let path_params: Vec<(&str, &str)> = if step == 1 {
                    vec![("var1", account.as_str())]
                } else {
                    Vec::new()
                };
                let body = (step == 2).then(|| serde_json::json!({ "amount": s, "to": "acc-1" }));
                let scratch = RequestScratch::default();
                let ctx = RequestContext {
                    now_ms: now + u64::from(s) * 10 + step as u64,
                    session: &session,
                    session_source: SessionSource::Jwt,
                    client,
                    method: &method,
                    operation: op,
                    path_params: &path_params,
                    query: &[],
                    headers: &headers,
                    body: body.as_ref(),
                    recent: &recent,
                    scratch: &scratch,
                };
                let mut findings = Vec::new();
                analyzer.inspect(&ctx, &mut state, &mut findings);
                let response = ResponseSummary {
                    status: 200,
                    duration_us: 100,
                    ..ResponseSummary::default()
                };
                analyzer.observe(&ctx, &mut state, &response, false);
                recent.push(RecentOp {
                    op: op.id,
                    at_ms: ctx.now_ms,
                });
            }
        }
    }

    fn analyzer() -> LearnedAnalyzer {
        LearnedAnalyzer::new(
            &LearningConfig::default(),
            &DetectorsConfig::all(Action::Block),
            None,
        )
    }

    /// Learning from several threads at once (lessons applied at once, queued or batched)
    /// yields exactly the model learned from the same traffic on one thread.
    #[test]
    fn concurrent_learning_equals_sequential_learning() {
        let ops: Vec<Operation> = TEMPLATES
            .iter()
            .enumerate()
            .map(|(i, t)| Operation {
                id: u32::try_from(i).unwrap(),
                template: Arc::from(*t),
                origin: OperationOrigin::Learned,
            })
            .collect();
        let sequential = analyzer();
        // Create the operations first on both, so that indices are the same.
        play(&sequential, &ops, 0, 1);
        let concurrent = analyzer();
        play(&concurrent, &ops, 0, 1);
        play(&sequential, &ops, 1, 800);
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (analyzer, ops) = (&concurrent, &ops);
                scope.spawn(move || play(analyzer, ops, 1 + t * 200, 200));
            }
            // A reader holding the lock now and then, as the admin endpoint does.
            scope.spawn(|| {
                for _ in 0..200 {
                    std::hint::black_box(concurrent.view());
                }
            });
        });
        let a: LearnedModel = sequential.snapshot();
        let b: LearnedModel = concurrent.snapshot();
        assert_eq!(a.requests, 801 * 4);
        assert_eq!(b.requests, 801 * 4);
        assert_eq!(b.sessions, 801);
        assert_eq!(a, b);
    }
}
