//! Learned request shape: per parameter (path, query, JSON body field by path, header, cookie)
//! the kinds of values seen, presence, lengths, magnitudes, character classes, suspicious
//! constructs, small value sets and a distinct-count sketch. Counts only, so profiles merge by
//! addition (the sketch by register maximum, the value set by union).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::LogHistogram;
use super::sketch::DistinctSketch;
use super::value::{ValueFacts, ValueKind};

/// Where a parameter sits in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    Path,
    Query,
    Body,
    Header,
    Cookie,
}

impl Location {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Body => "body",
            Self::Header => "header",
            Self::Cookie => "cookie",
        }
    }
}

/// One parameter value of one request, ready to learn from or to check.
#[derive(Debug, Clone)]
pub struct ParamObservation {
    /// `body.payee.iban`, `query.page`, `path.var1`, `header.user-agent`, `cookie.lang`.
    pub name: String,
    pub location: Location,
    pub facts: ValueFacts,
    /// The value as text (scalars only; empty for objects and arrays), capped in length.
    pub value: String,
}

/// Caps of one shape profile.
#[derive(Debug, Clone, Copy)]
pub struct ShapeCaps {
    pub max_params: usize,
    pub max_enum_values: usize,
    pub max_enum_value_len: usize,
}

/// What was learned about one parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamProfile {
    /// Requests in which the parameter was present.
    pub present: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<ValueKind, u64>,
    /// Character class bit → values containing it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chars: BTreeMap<u8, u64>,
    /// Construct bit → values containing it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub markers: BTreeMap<u8, u64>,
    #[serde(default)]
    pub lengths: LogHistogram,
    #[serde(default)]
    pub magnitudes: LogHistogram,
    #[serde(default)]
    pub negatives: u64,
    /// Small value sets (enums): value → count, while at most `max_enum_values` were seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, u64>,
    /// More (or longer) distinct values than an enum may have were seen.
    #[serde(default)]
    pub values_overflow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctSketch>,
}

impl ParamProfile {
    pub fn learn(&mut self, obs: &ParamObservation, caps: &ShapeCaps) {
        let facts = &obs.facts;
        self.present += 1;
        *self.kinds.entry(facts.kind).or_insert(0) += 1;
        for bit in bits(facts.chars) {
            *self.chars.entry(bit).or_insert(0) += 1;
        }
        for bit in bits(u32::from(facts.markers)) {
            *self.markers.entry(bit).or_insert(0) += 1;
        }
        if !matches!(facts.kind, ValueKind::Object | ValueKind::Array) {
            self.lengths
                .record(LogHistogram::length_bucket(facts.length));
        }
        if let Some(number) = facts.number {
            self.magnitudes
                .record(LogHistogram::magnitude_bucket(number));
            if number < 0.0 {
                self.negatives += 1;
            }
        }
        if matches!(facts.kind, ValueKind::Object | ValueKind::Array) {
            return;
        }
        if !self.values_overflow {
            if obs.value.len() > caps.max_enum_value_len {
                self.values_overflow = true;
                self.values.clear();
            } else if let Some(count) = self.values.get_mut(obs.value.as_str()) {
                *count += 1;
            } else if self.values.len() < caps.max_enum_values {
                self.values.insert(obs.value.clone(), 1);
            } else {
                self.values_overflow = true;
                self.values.clear();
            }
        }
        if self.distinct.is_none() {
            self.distinct = DistinctSketch::new();
        }
        if let Some(sketch) = self.distinct.as_mut() {
            sketch.insert(&obs.value);
        }
    }

    pub fn kind_count(&self, kind: ValueKind) -> u64 {
        self.kinds.get(&kind).copied().unwrap_or(0)
    }

    /// Union of the character classes seen in at least `min_count` values.
    pub fn char_mask(&self, min_count: u64) -> u32 {
        self.chars
            .iter()
            .filter(|(_, c)| **c >= min_count)
            .fold(0, |acc, (bit, _)| acc | (1u32 << bit))
    }

    pub fn marker_mask(&self, min_count: u64) -> u16 {
        self.markers
            .iter()
            .filter(|(_, c)| **c >= min_count)
            .fold(0, |acc, (bit, _)| acc | (1u16 << bit))
    }

    /// The most frequent kind.
    pub fn dominant_kind(&self) -> Option<ValueKind> {
        self.kinds.iter().max_by_key(|(_, c)| **c).map(|(k, _)| *k)
    }

    /// Distinct values seen (exact for enums, estimated beyond).
    pub fn distinct_estimate(&self) -> u64 {
        if !self.values_overflow {
            return self.values.len() as u64;
        }
        self.distinct.as_ref().map_or(0, DistinctSketch::estimate)
    }

    pub fn merge(&mut self, other: &Self, caps: &ShapeCaps) {
        self.present += other.present;
        add_map(&mut self.kinds, &other.kinds);
        add_map(&mut self.chars, &other.chars);
        add_map(&mut self.markers, &other.markers);
        self.lengths.merge(&other.lengths);
        self.magnitudes.merge(&other.magnitudes);
        self.negatives += other.negatives;
        if other.values_overflow {
            self.values_overflow = true;
        }
        if !self.values_overflow {
            add_map(&mut self.values, &other.values);
            if self.values.len() > caps.max_enum_values {
                self.values_overflow = true;
            }
        }
        if self.values_overflow {
            self.values.clear();
        }
        match (&mut self.distinct, &other.distinct) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.distinct = Some(theirs.clone()),
            _ => {}
        }
    }

    pub fn subtract(&mut self, base: &Self) {
        self.present = self.present.saturating_sub(base.present);
        sub_map(&mut self.kinds, &base.kinds);
        sub_map(&mut self.chars, &base.chars);
        sub_map(&mut self.markers, &base.markers);
        self.lengths.subtract(&base.lengths);
        self.magnitudes.subtract(&base.magnitudes);
        self.negatives = self.negatives.saturating_sub(base.negatives);
        sub_map(&mut self.values, &base.values);
        // The sketch stays whole: merging it again is idempotent.
    }
}

/// Per-parameter profiles of one operation (or of the headers and cookies of all operations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapeProfile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamProfile>,
    /// Parameters not learned because the cap was reached.
    #[serde(default)]
    pub dropped: u64,
}

impl ShapeProfile {
    pub fn learn(&mut self, obs: &ParamObservation, caps: &ShapeCaps) {
        if let Some(profile) = self.params.get_mut(obs.name.as_str()) {
            profile.learn(obs, caps);
        } else if self.params.len() < caps.max_params {
            let mut profile = ParamProfile::default();
            profile.learn(obs, caps);
            self.params.insert(obs.name.clone(), profile);
        } else {
            self.dropped += 1;
        }
    }

    pub fn merge(&mut self, other: &Self, caps: &ShapeCaps) {
        for (name, theirs) in &other.params {
            if let Some(mine) = self.params.get_mut(name) {
                mine.merge(theirs, caps);
            } else if self.params.len() < caps.max_params {
                let mut fresh = ParamProfile::default();
                fresh.merge(theirs, caps);
                self.params.insert(name.clone(), fresh);
            } else {
                self.dropped += theirs.present;
            }
        }
        self.dropped += other.dropped;
    }

    pub fn subtract(&mut self, base: &Self) {
        for (name, theirs) in &base.params {
            if let Some(mine) = self.params.get_mut(name) {
                mine.subtract(theirs);
            }
        }
        self.params.retain(|_, p| p.present > 0);
        self.dropped = self.dropped.saturating_sub(base.dropped);
    }
}

fn bits(mask: u32) -> impl Iterator<Item = u8> {
    (0u8..32).filter(move |bit| mask & (1u32 << bit) != 0)
}

pub(crate) fn add_map<K: Ord + Clone>(target: &mut BTreeMap<K, u64>, other: &BTreeMap<K, u64>) {
    for (key, value) in other {
        *target.entry(key.clone()).or_insert(0) += value;
    }
}

pub(crate) fn sub_map<K: Ord + Clone>(target: &mut BTreeMap<K, u64>, base: &BTreeMap<K, u64>) {
    for (key, value) in base {
        if let Some(mine) = target.get_mut(key) {
            *mine = mine.saturating_sub(*value);
        }
    }
    target.retain(|_, v| *v > 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::{json_facts, text_facts};

    const CAPS: ShapeCaps = ShapeCaps {
        max_params: 4,
        max_enum_values: 3,
        max_enum_value_len: 16,
    };

    fn obs(name: &str, value: serde_json::Value) -> ParamObservation {
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        ParamObservation {
            name: name.into(),
            location: Location::Body,
            facts: json_facts(&value),
            value: text,
        }
    }

    #[test]
    fn learns_enum_then_overflows() {
        let mut p = ParamProfile::default();
        for v in ["EUR", "USD", "EUR", "CHF"] {
            p.learn(&obs("body.currency", serde_json::json!(v)), &CAPS);
        }
        assert_eq!(p.values.len(), 3);
        assert!(!p.values_overflow);
        p.learn(&obs("body.currency", serde_json::json!("GBP")), &CAPS);
        assert!(p.values_overflow);
        assert!(p.values.is_empty());
        assert_eq!(p.distinct_estimate(), 4);
    }

    #[test]
    fn merge_equals_learning_everything_in_one() {
        let values: Vec<serde_json::Value> = (0..40)
            .map(|i| {
                if i % 3 == 0 {
                    serde_json::json!(i * 10)
                } else {
                    serde_json::json!(format!("x{i}"))
                }
            })
            .collect();
        let mut all = ShapeProfile::default();
        let (mut left, mut right) = (ShapeProfile::default(), ShapeProfile::default());
        for (i, v) in values.iter().enumerate() {
            let o = obs("body.field", v.clone());
            all.learn(&o, &CAPS);
            if i % 2 == 0 {
                left.learn(&o, &CAPS)
            } else {
                right.learn(&o, &CAPS)
            }
        }
        left.merge(&right, &CAPS);
        let (a, b) = (&left.params["body.field"], &all.params["body.field"]);
        assert_eq!(a.present, b.present);
        assert_eq!(a.kinds, b.kinds);
        assert_eq!(a.chars, b.chars);
        assert_eq!(a.lengths, b.lengths);
        assert_eq!(a.magnitudes, b.magnitudes);
        assert_eq!(a.values_overflow, b.values_overflow);
        assert_eq!(a.distinct_estimate(), b.distinct_estimate());
    }

    #[test]
    fn param_cap_is_enforced() {
        let mut s = ShapeProfile::default();
        for i in 0..10 {
            s.learn(
                &ParamObservation {
                    name: format!("query.k{i}"),
                    location: Location::Query,
                    facts: text_facts("1"),
                    value: "1".into(),
                },
                &CAPS,
            );
        }
        assert_eq!(s.params.len(), 4);
        assert_eq!(s.dropped, 6);
    }
}
