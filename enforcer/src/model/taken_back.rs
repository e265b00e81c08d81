//! The negative part of a model delta: counts that a take-back (anti-poisoning: a session
//! flagged in its counting window gives back what it taught, see `detect::lesson`) lowered
//! below what the replica had already reported.
//!
//! A delta is `model − reported`. Every count only grows between two reports, except those a
//! take-back lowers: a session's requests and distinct objects per window
//! (`OperationStats::volume`, `OperationStats::objects`) and the values without an origin it
//! taught a parameter's lineage (`OriginCounts::seen` and `OriginCounts::input`). When a report
//! carried those counts away before the session was flagged, the local model drops below the
//! reported one, and the positive part of the delta (saturating at 0) cannot say so. This part
//! does: per operation template, by how much each of those counts is below what was reported.
//! [`LearnedModel::merge`] subtracts it from the model merged into (saturating at 0), so the
//! operator's merged model, and every replica adopting it, loses what the flagged session
//! taught, as one replica without reports does.
//!
//! Wire compatibility: it is one more field of the serialized model with a serde default
//! (`takenBack`, absent when empty), so the model format stays the same (`model::codec`). An
//! older operator ignores it and merges the positive part as it always did (the take-back
//! then stays local, as before this part existed); it never reads a negative count as a
//! positive one, which signed counts in the existing fields would have risked. A merged model
//! never carries it: merging applies it.
//!
//! [`LearnedModel::merge`]: super::LearnedModel::merge

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::endpoint::OperationStats;
use super::histogram::{ReachHistogram, add_vec, halve_vec, sub_vec};
use super::lineage::OperationLineage;

/// What take-backs lowered below the reported model, by operation template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TakenBack {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, OperationTakenBack>,
}

/// What take-backs lowered in one operation's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationTakenBack {
    /// Per reach bucket of `OperationStats::volume`, how far it is below the reported one.
    #[serde(default, skip_serializing_if = "ReachHistogram::is_empty")]
    pub volume: ReachHistogram,
    /// The same for `OperationStats::objects`.
    #[serde(default, skip_serializing_if = "ReachHistogram::is_empty")]
    pub objects: ReachHistogram,
    /// Per lineage parameter, how far its counts are below the reported ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lineage: BTreeMap<String, LineageTakenBack>,
}

/// The two lineage counts a take-back of a value without an origin lowers
/// (`OperationLineage::unlearn_without_origin`). Kept apart: honest learning between two
/// reports may raise `seen` (values with an origin) while the take-back lowers `input`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageTakenBack {
    #[serde(default)]
    pub seen: u64,
    #[serde(default)]
    pub input: u64,
}

impl LineageTakenBack {
    fn is_zero(&self) -> bool {
        self.seen == 0 && self.input == 0
    }
}

impl OperationTakenBack {
    /// How far `model`'s counts are below `reported`'s (same operation, an earlier state).
    pub fn between(model: &OperationStats, reported: &OperationStats) -> Self {
        let mut lineage = BTreeMap::new();
        lineage_between(&model.lineage, &reported.lineage, &mut lineage);
        Self {
            volume: below(&model.volume, &reported.volume),
            objects: below(&model.objects, &reported.objects),
            lineage,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.volume.is_empty() && self.objects.is_empty() && self.lineage.is_empty()
    }

    /// Subtracts these counts from `stats` (saturating at 0).
    pub fn apply_to(&self, stats: &mut OperationStats) {
        stats.volume.subtract(&self.volume);
        stats.objects.subtract(&self.objects);
        for (param, taken) in &self.lineage {
            if let Some(counts) = stats.lineage.params.get_mut(param) {
                counts.seen = counts.seen.saturating_sub(taken.seen);
                counts.input = counts.input.saturating_sub(taken.input);
            }
        }
    }

    fn add(&mut self, other: &Self) {
        add_vec(&mut self.volume.reach, &other.volume.reach);
        add_vec(&mut self.objects.reach, &other.objects.reach);
        for (param, taken) in &other.lineage {
            let mine = self.lineage.entry(param.clone()).or_default();
            mine.seen += taken.seen;
            mine.input += taken.input;
        }
    }

    fn halve(&mut self) {
        halve_vec(&mut self.volume.reach);
        halve_vec(&mut self.objects.reach);
        for taken in self.lineage.values_mut() {
            taken.seen /= 2;
            taken.input /= 2;
        }
        self.lineage.retain(|_, t| !t.is_zero());
    }
}

/// Per bucket, how far `model` is below `reported` (0 where it is not).
fn below(model: &ReachHistogram, reported: &ReachHistogram) -> ReachHistogram {
    let mut deficit = reported.clone();
    sub_vec(&mut deficit.reach, &model.reach);
    deficit
}

fn lineage_between(
    model: &OperationLineage,
    reported: &OperationLineage,
    out: &mut BTreeMap<String, LineageTakenBack>,
) {
    for (param, theirs) in &reported.params {
        let Some(mine) = model.params.get(param) else {
            // Parameters are never removed from a model: one missing here was not taken back.
            continue;
        };
        let taken = LineageTakenBack {
            seen: theirs.seen.saturating_sub(mine.seen),
            input: theirs.input.saturating_sub(mine.input),
        };
        if !taken.is_zero() {
            out.insert(param.clone(), taken);
        }
    }
}

impl TakenBack {
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Records what `model`'s operation `template` lost below `reported`'s.
    pub fn record(&mut self, template: &str, model: &OperationStats, reported: &OperationStats) {
        let taken = OperationTakenBack::between(model, reported);
        if !taken.is_empty() {
            self.operations.insert(template.to_owned(), taken);
        }
    }

    /// This part with operations renamed by `rename` (old template → new; `None` keeps the
    /// name), those that get the same name added together (see `LearnedModel::renamed`).
    pub fn renamed(&self, rename: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut out = Self::default();
        for (template, taken) in &self.operations {
            let name = rename(template).unwrap_or_else(|| template.clone());
            out.operations.entry(name).or_default().add(taken);
        }
        out
    }

    pub fn halve(&mut self) {
        for taken in self.operations.values_mut() {
            taken.halve();
        }
        self.operations.retain(|_, t| !t.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lineage::OriginClass;

    #[test]
    fn records_only_what_fell_below_and_applies_it_saturating() {
        let mut reported = OperationStats::new("GET /a/{var1}", 1);
        for count in 1..=5 {
            reported.volume.record_reached(count);
            reported.objects.record_reached(count);
        }
        reported.lineage.learn("path.var1", &[], &[]);
        reported.lineage.learn("path.var1", &[], &[]);
        let mut model = reported.clone();
        // An honest window of 2 after the report, then the flagged session's 5 taken back.
        model.volume.record_reached(1);
        model.volume.record_reached(2);
        for count in 1..=5 {
            model.volume.unrecord_reached(count);
        }
        // A value with an origin learned, one without taken back.
        model.lineage.learn(
            "path.var1",
            &[OriginClass::Claim],
            &["claim sub".to_owned()],
        );
        model.lineage.unlearn_without_origin("path.var1");
        let taken = OperationTakenBack::between(&model, &reported);
        // Buckets 1 and 2 went up by 1 and down by 1; 3 to 5 down by 1.
        assert_eq!(taken.volume.reach, vec![0, 0, 1, 1, 1]);
        assert!(taken.objects.is_empty(), "objects were not taken back");
        assert_eq!(
            taken.lineage["path.var1"],
            LineageTakenBack { seen: 0, input: 1 }
        );
        // Applied to the reported counts plus the positive part, it gives the model back.
        let mut merged = reported.clone();
        merged.merge(
            &model_minus(&model, &reported),
            &crate::model::ModelCaps::default().shape(),
        );
        taken.apply_to(&mut merged);
        assert_eq!(merged.volume, model.volume);
        assert_eq!(merged.lineage, model.lineage);
        // Saturating at 0 where the merged counts are lower (a model that never had them).
        let mut empty = OperationStats::new("GET /a/{var1}", 1);
        taken.apply_to(&mut empty);
        assert!(empty.volume.is_empty());
    }

    fn model_minus(model: &OperationStats, base: &OperationStats) -> OperationStats {
        let mut delta = model.clone();
        delta.subtract(base);
        delta
    }

    /// The part travels in the codec under `takenBack`, only when it holds something, so a
    /// model without it (a whole model, or one written before it) reads as before.
    #[test]
    fn the_part_travels_in_the_codec_only_when_it_holds_something() {
        use crate::model::LearnedModel;
        let mut reported = LearnedModel::default();
        let index = reported.op_index_or_insert("GET /a/{var1}", 1).unwrap();
        let stats = reported.operation_mut(index).unwrap();
        for count in 1..=3 {
            stats.volume.record_reached(count);
        }
        let mut model = reported.clone();
        let stats = model.operation_mut(index).unwrap();
        for count in 1..=3 {
            stats.volume.unrecord_reached(count);
        }
        let delta = model.delta_since(&reported);
        let json = serde_json::to_value(&delta).unwrap();
        assert_eq!(
            json["takenBack"]["operations"]["GET /a/{var1}"]["volume"]["reach"],
            serde_json::json!([1, 1, 1])
        );
        let back = LearnedModel::from_bytes(&delta.to_bytes()).unwrap();
        assert_eq!(back, delta);
        assert!(!back.is_zero(), "a delta of take-backs alone is sent");
        let mut merged = reported.clone();
        merged.merge(&back);
        assert_eq!(merged, model);
        let whole = serde_json::to_value(&merged).unwrap();
        assert!(whole.get("takenBack").is_none(), "{whole}");
    }

    #[test]
    fn renaming_adds_the_parts_of_operations_that_get_one_name() {
        let mut part = TakenBack::default();
        for template in ["GET /a/x", "GET /a/y"] {
            let mut taken = OperationTakenBack::default();
            taken.volume.reach = vec![1, 1];
            taken
                .lineage
                .insert("path.id".into(), LineageTakenBack { seen: 1, input: 1 });
            part.operations.insert(template.into(), taken);
        }
        let renamed = part.renamed(&|t| t.starts_with("GET /a/").then(|| "GET /a/{var1}".into()));
        assert_eq!(renamed.operations.len(), 1);
        let taken = &renamed.operations["GET /a/{var1}"];
        assert_eq!(taken.volume.reach, vec![2, 2]);
        assert_eq!(
            taken.lineage["path.id"],
            LineageTakenBack { seen: 2, input: 2 }
        );
    }
}
