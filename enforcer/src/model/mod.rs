//! The learned behaviour model: counts only, so that the models of several replicas merge
//! exactly by addition; bounded by documented caps; serializable to compact compressed bytes.
//!
//! - endpoints: per operation, requests, status mix, first/last seen ([`OperationStats`]);
//! - request shape per operation, and headers/cookies across operations ([`ShapeProfile`]);
//! - sequences: a variable-order Markov chain over operations ([`SequenceModel`]);
//! - volume and objects: per operation, how many windows reached each per-session count
//!   ([`ReachHistogram`]); not-found answers per session window; authentication failures and
//!   distinct failing identities per client address window.
//!
//! Operations are interned: contexts refer to an operation by its index in `operations`, and
//! merging translates the other model's indices by template.

pub mod codec;
pub mod disclosure;
pub mod endpoint;
pub mod exposure;
pub mod flat;
pub mod format;
pub mod hashing;
pub mod histogram;
pub mod lineage;
pub mod sequence;
pub mod shape;
pub mod sketch;
pub mod taken_back;
pub mod value;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use endpoint::{OperationStats, OutcomeCounts, RepeatCounts};
pub use histogram::{LogHistogram, ReachHistogram};
pub use sequence::{SESSION_START, SequenceModel};
pub use shape::{Location, ParamObservation, ParamProfile, ShapeCaps, ShapeProfile};
pub use taken_back::TakenBack;

/// Version of the serialized form.
pub const MODEL_FORMAT: u32 = 1;

/// Errors of loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model bytes are not a valid compressed model: {0}")]
    Decode(#[from] std::io::Error),
    #[error("model JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("model format {found} is not supported (this build reads format {MODEL_FORMAT})")]
    Format { found: u32 },
    #[error("model is inconsistent: {0}")]
    Inconsistent(String),
}

/// Caps that bound the model's memory. Defaults are documented in `docs/detection.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCaps {
    pub max_operations: usize,
    pub max_contexts: usize,
    pub max_params: usize,
    pub max_enum_values: usize,
    pub max_enum_value_len: usize,
}

impl Default for ModelCaps {
    fn default() -> Self {
        Self {
            max_operations: 512,
            max_contexts: 50_000,
            max_params: 64,
            max_enum_values: 16,
            max_enum_value_len: 64,
        }
    }
}

impl ModelCaps {
    pub fn shape(&self) -> ShapeCaps {
        ShapeCaps {
            max_params: self.max_params,
            max_enum_values: self.max_enum_values,
            max_enum_value_len: self.max_enum_value_len,
        }
    }
}

/// The whole learned model of one protected API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedModel {
    pub format: u32,
    /// Successful, unflagged requests learned from.
    pub requests: u64,
    /// Distinct sessions learned from.
    pub sessions: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default)]
    pub operations: Vec<OperationStats>,
    /// Headers and cookies, profiled across operations.
    #[serde(default)]
    pub headers: ShapeProfile,
    #[serde(default)]
    pub sequences: SequenceModel,
    /// Not-found answers on operations with object identifiers, per session window.
    #[serde(default)]
    pub not_found: ReachHistogram,
    /// Authentication failures per client address window.
    #[serde(default)]
    pub auth_failures: ReachHistogram,
    /// Distinct identities failing authentication per client address window.
    #[serde(default)]
    pub auth_identities: ReachHistogram,
    /// Successful requests of operations not learned because the operation cap was reached.
    #[serde(default)]
    pub dropped_operations: u64,
    /// In a delta only: what take-backs lowered below the model reported before, subtracted
    /// by [`LearnedModel::merge`] (see [`taken_back`]). Empty in a whole model.
    #[serde(default, skip_serializing_if = "TakenBack::is_empty")]
    pub taken_back: TakenBack,
    #[serde(skip)]
    index: HashMap<String, u16>,
    #[serde(skip)]
    caps: ModelCaps,
}

impl Default for LearnedModel {
    fn default() -> Self {
        Self::new(ModelCaps::default())
    }
}

impl PartialEq for LearnedModel {
    fn eq(&self, other: &Self) -> bool {
        self.requests == other.requests
            && self.sessions == other.sessions
            && self.operations == other.operations
            && self.headers == other.headers
            && self.sequences == other.sequences
            && self.not_found == other.not_found
            && self.auth_failures == other.auth_failures
            && self.auth_identities == other.auth_identities
            && self.taken_back == other.taken_back
    }
}

impl LearnedModel {
    pub fn new(caps: ModelCaps) -> Self {
        Self {
            format: MODEL_FORMAT,
            requests: 0,
            sessions: 0,
            first_seen_ms: 0,
            last_seen_ms: 0,
            operations: Vec::new(),
            headers: ShapeProfile::default(),
            sequences: SequenceModel::default(),
            not_found: ReachHistogram::default(),
            auth_failures: ReachHistogram::default(),
            auth_identities: ReachHistogram::default(),
            dropped_operations: 0,
            taken_back: TakenBack::default(),
            index: HashMap::new(),
            caps,
        }
    }

    pub fn caps(&self) -> ModelCaps {
        self.caps
    }

    /// Applies (possibly smaller) caps, trimming what exceeds them.
    pub fn set_caps(&mut self, caps: ModelCaps) {
        self.caps = caps;
        self.sequences.enforce_cap(caps.max_contexts);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.operations.is_empty() && self.sequences.is_empty()
    }

    /// Whether this model (typically a delta) holds no counts at all.
    pub fn is_zero(&self) -> bool {
        self.requests == 0
            && self.sessions == 0
            && self.operations.iter().all(|op| {
                op.requests == 0
                    && op.status.is_empty()
                    && op.auth_failures == 0
                    && op.object_lookups == 0
                    && op.outcomes.is_zero()
                    && op.exposure.is_zero()
                    && op.lineage.is_zero()
                    && op.repeats.is_zero()
            })
            && self.sequences.is_empty()
            && self.not_found.windows() == 0
            && self.auth_failures.windows() == 0
            && self.taken_back.is_empty()
    }

    pub fn op_index(&self, template: &str) -> Option<u16> {
        self.index.get(template).copied()
    }

    pub fn operation(&self, index: u16) -> Option<&OperationStats> {
        self.operations.get(usize::from(index))
    }

    pub fn operation_mut(&mut self, index: u16) -> Option<&mut OperationStats> {
        self.operations.get_mut(usize::from(index))
    }

    /// Whether another operation fits under the cap.
    pub fn has_room_for_operation(&self) -> bool {
        self.operations.len() < self.caps.max_operations.min(usize::from(SESSION_START))
    }

    /// The operation's index, adding it when there is room under the cap.
    pub fn op_index_or_insert(&mut self, template: &str, now_ms: u64) -> Option<u16> {
        if let Some(index) = self.index.get(template) {
            return Some(*index);
        }
        if !self.has_room_for_operation() {
            return None;
        }
        let index = u16::try_from(self.operations.len()).ok()?;
        self.operations.push(OperationStats::new(template, now_ms));
        self.index.insert(template.to_owned(), index);
        Some(index)
    }

    /// Template of an operation index, or the session-start marker.
    pub fn template_of(&self, index: u16) -> &str {
        if index == SESSION_START {
            return "(session start)";
        }
        self.operation(index)
            .map_or("(unknown operation)", |op| op.template.as_str())
    }

    pub fn touch(&mut self, now_ms: u64) {
        if self.first_seen_ms == 0 || now_ms < self.first_seen_ms {
            self.first_seen_ms = now_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }

    /// Adds `other` to this model: exact by addition for every count (sketches merge by
    /// register maximum, value sets by union), within this model's caps.
    pub fn merge(&mut self, other: &LearnedModel) {
        self.merge_renamed(other, &|_| None);
    }

    /// This model with operations renamed by `rename` (old template → new template; `None`
    /// keeps the name), the statistics of operations that get the same name added together
    /// and sequence contexts translated: how literal templates folded into a parameter
    /// (`OperationResolver::fold`) keep what was learned under them. Deterministic, so that
    /// every replica that applies the same renames to the same counts gets the same model.
    pub fn renamed(&self, rename: &dyn Fn(&str) -> Option<String>) -> LearnedModel {
        let mut out = LearnedModel::new(self.caps);
        out.add_renamed(self, rename);
        // A delta's negative part stays one, renamed: it applies to the model it is merged
        // into, not to the delta's own counts.
        out.taken_back = self.taken_back.renamed(rename);
        out.first_seen_ms = self.first_seen_ms;
        out.last_seen_ms = self.last_seen_ms;
        out
    }

    /// Adds `other`'s counts, then subtracts what `other` says was taken back (a delta's
    /// negative part, see [`taken_back`]), saturating at 0.
    fn merge_renamed(&mut self, other: &LearnedModel, rename: &dyn Fn(&str) -> Option<String>) {
        self.add_renamed(other, rename);
        for (template, taken) in &other.taken_back.operations {
            let name = rename(template);
            let template = name.as_deref().unwrap_or(template);
            if let Some(stats) = self
                .op_index(template)
                .and_then(|i| self.operations.get_mut(usize::from(i)))
            {
                taken.apply_to(stats);
            }
        }
    }

    fn add_renamed(&mut self, other: &LearnedModel, rename: &dyn Fn(&str) -> Option<String>) {
        let shape_caps = self.caps.shape();
        self.requests += other.requests;
        self.sessions += other.sessions;
        if other.first_seen_ms != 0 {
            self.touch(other.first_seen_ms);
        }
        self.touch(other.last_seen_ms);
        let mut translation: Vec<Option<u16>> = Vec::with_capacity(other.operations.len());
        for theirs in &other.operations {
            let name = rename(&theirs.template);
            let template = name.as_deref().unwrap_or(&theirs.template);
            let mine = self.op_index_or_insert(template, theirs.first_seen_ms);
            match mine.and_then(|i| self.operations.get_mut(usize::from(i))) {
                Some(stats) => stats.merge(theirs, &shape_caps),
                None => self.dropped_operations += theirs.requests,
            }
            translation.push(mine);
        }
        self.headers.merge(&other.headers, &shape_caps);
        self.sequences.merge(&other.sequences, &|op| {
            translation.get(usize::from(op)).copied().flatten()
        });
        self.sequences.enforce_cap(self.caps.max_contexts);
        self.not_found.merge(&other.not_found);
        self.auth_failures.merge(&other.auth_failures);
        self.auth_identities.merge(&other.auth_identities);
        self.dropped_operations += other.dropped_operations;
    }

    /// What this model learned beyond `base`, where `base` is an earlier state of this same
    /// model (or a model this one was built on): merging the result into `base` gives `self`
    /// back (up to context eviction), including the counts a take-back lowered below `base`
    /// (the delta's [`taken_back`] part).
    pub fn delta_since(&self, base: &LearnedModel) -> LearnedModel {
        let mut delta = self.clone();
        delta.requests = self.requests.saturating_sub(base.requests);
        delta.sessions = self.sessions.saturating_sub(base.sessions);
        let mut taken_back = TakenBack::default();
        for theirs in &base.operations {
            if let Some(index) = delta.op_index(&theirs.template)
                && let Some(mine) = delta.operations.get_mut(usize::from(index))
            {
                taken_back.record(&theirs.template, mine, theirs);
                mine.subtract(theirs);
            }
        }
        delta.taken_back = taken_back;
        delta.headers.subtract(&base.headers);
        // Contexts use indices: translate base's into this model's index space first.
        let mut base_sequences = SequenceModel::default();
        let translation: Vec<Option<u16>> = base
            .operations
            .iter()
            .map(|op| self.op_index(&op.template))
            .collect();
        base_sequences.merge(&base.sequences, &|op| {
            translation.get(usize::from(op)).copied().flatten()
        });
        delta.sequences.subtract(&base_sequences);
        delta.not_found.subtract(&base.not_found);
        delta.auth_failures.subtract(&base.auth_failures);
        delta.auth_identities.subtract(&base.auth_identities);
        delta.dropped_operations = self
            .dropped_operations
            .saturating_sub(base.dropped_operations);
        delta
    }

    /// Halves every count: exponential ageing, so that the model follows changes of the API.
    pub fn halve(&mut self) {
        self.requests /= 2;
        self.sessions /= 2;
        for op in &mut self.operations {
            op.halve();
        }
        self.sequences.halve();
        self.not_found.halve();
        self.auth_failures.halve();
        self.auth_identities.halve();
        self.taken_back.halve();
    }

    /// Rebuilds the template index and checks internal references (after deserializing).
    fn rebuild(&mut self) -> Result<(), ModelError> {
        self.index.clear();
        if self.operations.len() >= usize::from(SESSION_START) {
            return Err(ModelError::Inconsistent(format!(
                "{} operations exceed the index space",
                self.operations.len()
            )));
        }
        for (i, op) in self.operations.iter().enumerate() {
            let index = u16::try_from(i)
                .map_err(|_| ModelError::Inconsistent("operation index overflow".into()))?;
            if self.index.insert(op.template.clone(), index).is_some() {
                return Err(ModelError::Inconsistent(format!(
                    "operation {:?} appears twice",
                    op.template
                )));
            }
        }
        for op in &mut self.operations {
            op.shape.scrub_legacy();
        }
        self.headers.scrub_legacy();
        let count = self.operations.len();
        let valid = |op: &u16| *op == SESSION_START || usize::from(*op) < count;
        for (context, next) in self.sequences.iter() {
            if !context.iter().all(valid) || !next.next().all(|(op, _)| valid(&op)) {
                return Err(ModelError::Inconsistent(
                    "a sequence context names an unknown operation".into(),
                ));
            }
        }
        Ok(())
    }

    /// Compact compressed bytes (gzip of JSON) for persistence and reports.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Loads bytes written by [`LearnedModel::to_bytes`], applying `caps`.
    pub fn from_bytes_with_caps(bytes: &[u8], caps: ModelCaps) -> Result<Self, ModelError> {
        let mut model: LearnedModel = codec::decode(bytes)?;
        if model.format != MODEL_FORMAT {
            return Err(ModelError::Format {
                found: model.format,
            });
        }
        model.rebuild()?;
        model.set_caps(caps);
        Ok(model)
    }

    /// Loads bytes written by [`LearnedModel::to_bytes`] with the default caps.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::from_bytes_with_caps(bytes, ModelCaps::default())
    }
}
