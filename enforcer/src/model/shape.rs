//! Learned request shape: per parameter (path, query, JSON body field by path, header, cookie)
//! the kinds of values seen, presence, lengths, magnitudes, character classes, suspicious
//! constructs, small value sets and a distinct-count sketch. Counts only, so profiles merge by
//! addition (the sketch by register maximum, the value set by union). Values are kept as the
//! model's keyed hash; clear text only for values proven not to be secrets, and nothing at all
//! of secret ones (see [`super::disclosure`]).

use serde::{Deserialize, Serialize};

use super::disclosure::{MIN_SHOWN_SESSIONS, is_secret_param, is_secret_value, may_show_value};
use super::flat::{FlatMap, FlatSet};
use super::format::ValueFormat;
use super::hashing::stable_hash;
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
    /// The value as text (scalars only; empty for objects and arrays and secrets), capped in
    /// length.
    pub value: String,
    /// The value is a secret (see [`super::disclosure`]): only its facts are learned.
    pub secret: bool,
}

impl ParamObservation {
    /// An observation; `secret` when the parameter or the value is secret, in which case the
    /// value itself is not kept.
    pub fn new(
        name: String,
        location: Location,
        facts: ValueFacts,
        value: String,
        secret: bool,
    ) -> Self {
        let secret = secret || is_secret_value(&value);
        Self {
            name,
            location,
            facts,
            value: if secret { String::new() } else { value },
            secret,
        }
    }

    /// Whether the value may be shown (in explanations) as it is.
    pub fn may_show(&self) -> bool {
        !self.secret && may_show_value(&self.value)
    }
}

/// One member of a parameter's value set: how often it was seen, and in which sessions (one
/// bit per session fingerprint modulo 64: the bits set are a lower bound on distinct sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnumValue {
    pub count: u64,
    pub sessions: u64,
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
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub kinds: FlatMap<ValueKind, u64>,
    /// Character class bit → values containing it.
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub chars: FlatMap<u8, u64>,
    /// Construct bit → values containing it.
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub markers: FlatMap<u8, u64>,
    /// Value format → text values that followed it (a value follows several formats; every
    /// text value follows `text`, whose count is the number of text values). Missing in models
    /// written before formats were learned: such a profile has no format until it learns one.
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub formats: FlatMap<ValueFormat, u64>,
    #[serde(default)]
    pub lengths: LogHistogram,
    #[serde(default)]
    pub magnitudes: LogHistogram,
    #[serde(default)]
    pub negatives: u64,
    /// Small value sets (enums), by the keyed hash of the value, while at most
    /// `max_enum_values` were seen.
    #[serde(
        default,
        rename = "valueHashes",
        skip_serializing_if = "FlatMap::is_empty"
    )]
    pub values: FlatMap<u64, EnumValue>,
    /// Clear text of the members of `values` proven not to be secrets.
    #[serde(default, skip_serializing_if = "FlatSet::is_empty")]
    pub shown_values: FlatSet<String>,
    /// Clear-text values of models written before values were hashed: read, scrubbed when the
    /// model is loaded (see [`ParamProfile::scrub_legacy`]), never written.
    #[serde(default, rename = "values", skip_serializing)]
    legacy_values: FlatMap<String, u64>,
    /// More (or longer) distinct values than an enum may have were seen.
    #[serde(default)]
    pub values_overflow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<Box<DistinctSketch>>,
}

impl ParamProfile {
    /// Learns one observation of session `session` (a fingerprint of the session key).
    pub fn learn(&mut self, obs: &ParamObservation, caps: &ShapeCaps, session: u64) {
        let facts = &obs.facts;
        self.present += 1;
        *self.kinds.entry(facts.kind).or_insert(0) += 1;
        for bit in bits(facts.chars) {
            *self.chars.entry(bit).or_insert(0) += 1;
        }
        for bit in bits(u32::from(facts.markers)) {
            *self.markers.entry(bit).or_insert(0) += 1;
        }
        for format in facts.formats.iter() {
            *self.formats.entry(format).or_insert(0) += 1;
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
        if matches!(facts.kind, ValueKind::Object | ValueKind::Array) || obs.secret {
            return;
        }
        if !self.values_overflow {
            self.learn_value(obs, caps, session);
        }
        if self.distinct.is_none() {
            self.distinct = DistinctSketch::new().map(Box::new);
        }
        if let Some(sketch) = self.distinct.as_mut() {
            sketch.insert(&obs.value);
        }
    }

    fn learn_value(&mut self, obs: &ParamObservation, caps: &ShapeCaps, session: u64) {
        if obs.value.len() > caps.max_enum_value_len {
            self.overflow();
            return;
        }
        let hash = stable_hash(obs.value.as_bytes());
        if !self.values.contains_key(&hash) && self.values.len() >= caps.max_enum_values {
            self.overflow();
            return;
        }
        let member = self.values.entry(hash).or_default();
        member.count += 1;
        member.sessions |= 1 << (session % 64);
        if member.sessions.count_ones() >= MIN_SHOWN_SESSIONS
            && obs.may_show()
            && !self.shown_values.contains(obs.value.as_str())
        {
            self.shown_values.insert(obs.value.clone());
        }
    }

    fn overflow(&mut self) {
        self.values_overflow = true;
        self.values.clear();
        self.shown_values.clear();
    }

    /// Whether `value` is a member of the learned value set.
    pub fn has_value(&self, value: &str) -> bool {
        self.values.contains_key(&stable_hash(value.as_bytes()))
    }

    /// Drops what a model written before values were hashed kept in clear text: secret
    /// parameters and values lose it, the rest is kept as hashes (shown again once seen in
    /// enough sessions).
    pub fn scrub_legacy(&mut self, name: &str, location: Location) {
        let legacy = std::mem::take(&mut self.legacy_values);
        if self.values_overflow || is_secret_param(location, name, &[]) {
            return;
        }
        for (value, count) in legacy {
            if !is_secret_value(&value) {
                self.values
                    .entry(stable_hash(value.as_bytes()))
                    .or_default()
                    .count += count;
            }
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

    /// Text values learned (the count of the `text` format, which every text value follows).
    pub fn text_values(&self) -> u64 {
        self.formats.get(&ValueFormat::Text).copied().unwrap_or(0)
    }

    /// Learned text values that followed `format`.
    pub fn format_count(&self, format: ValueFormat) -> u64 {
        self.formats.get(&format).copied().unwrap_or(0)
    }

    /// The most frequent kind.
    pub fn dominant_kind(&self) -> Option<ValueKind> {
        self.kinds.iter().max_by_key(|(_, c)| **c).map(|(k, _)| *k)
    }

    /// Distinct values seen (exact for enums, estimated beyond).
    pub fn distinct_estimate(&self) -> u64 {
        if !self.values_overflow && !self.values.is_empty() {
            return self.values.len() as u64;
        }
        self.distinct.as_ref().map_or(0, |d| d.estimate())
    }

    pub fn merge(&mut self, other: &Self, caps: &ShapeCaps) {
        self.present += other.present;
        add_map(&mut self.kinds, &other.kinds);
        add_map(&mut self.chars, &other.chars);
        add_map(&mut self.markers, &other.markers);
        add_map(&mut self.formats, &other.formats);
        self.lengths.merge(&other.lengths);
        self.magnitudes.merge(&other.magnitudes);
        self.negatives += other.negatives;
        if other.values_overflow {
            self.values_overflow = true;
        }
        if !self.values_overflow {
            for (hash, theirs) in &other.values {
                let mine = self.values.entry(*hash).or_default();
                mine.count += theirs.count;
                mine.sessions |= theirs.sessions;
            }
            self.shown_values.extend(other.shown_values.iter().cloned());
            if self.values.len() > caps.max_enum_values {
                self.values_overflow = true;
            }
        }
        if self.values_overflow {
            self.overflow();
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
        sub_map(&mut self.formats, &base.formats);
        self.lengths.subtract(&base.lengths);
        self.magnitudes.subtract(&base.magnitudes);
        self.negatives = self.negatives.saturating_sub(base.negatives);
        for (hash, theirs) in &base.values {
            if let Some(mine) = self.values.get_mut(hash) {
                mine.count = mine.count.saturating_sub(theirs.count);
            }
        }
        self.values.retain(|_, v| v.count > 0);
        // The sketch, the session bits and the shown values stay whole: merging them again is
        // idempotent.
    }
}

/// Per-parameter profiles of one operation (or of the headers and cookies of all operations).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapeProfile {
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub params: FlatMap<String, ParamProfile>,
    /// Parameters not learned because the cap was reached.
    #[serde(default)]
    pub dropped: u64,
}

impl ShapeProfile {
    pub fn learn(&mut self, obs: &ParamObservation, caps: &ShapeCaps, session: u64) {
        if let Some(profile) = self.params.get_mut(obs.name.as_str()) {
            profile.learn(obs, caps, session);
        } else if self.params.len() < caps.max_params {
            let mut profile = ParamProfile::default();
            profile.learn(obs, caps, session);
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

    /// See [`ParamProfile::scrub_legacy`].
    pub fn scrub_legacy(&mut self) {
        for (name, profile) in &mut self.params {
            let location = match name.split_once('.').map(|(prefix, _)| prefix) {
                Some("path") => Location::Path,
                Some("query") => Location::Query,
                Some("header") => Location::Header,
                Some("cookie") => Location::Cookie,
                _ => Location::Body,
            };
            profile.scrub_legacy(name, location);
        }
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

pub(crate) fn add_map<K: Ord + Clone>(target: &mut FlatMap<K, u64>, other: &FlatMap<K, u64>) {
    for (key, value) in other {
        *target.entry(key.clone()).or_insert(0) += value;
    }
}

pub(crate) fn sub_map<K: Ord + Clone>(target: &mut FlatMap<K, u64>, base: &FlatMap<K, u64>) {
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
        ParamObservation::new(name.into(), Location::Body, json_facts(&value), text, false)
    }

    #[test]
    fn learns_enum_then_overflows() {
        let mut p = ParamProfile::default();
        for v in ["EUR", "USD", "EUR", "CHF"] {
            p.learn(&obs("body.currency", serde_json::json!(v)), &CAPS, 0);
        }
        assert_eq!(p.values.len(), 3);
        assert!(!p.values_overflow);
        p.learn(&obs("body.currency", serde_json::json!("GBP")), &CAPS, 0);
        assert!(p.values_overflow);
        assert!(p.values.is_empty());
        assert_eq!(p.distinct_estimate(), 4);
    }

    #[test]
    fn clear_text_needs_many_sessions_and_a_harmless_value() {
        let caps = ShapeCaps {
            max_enum_values: 16,
            ..CAPS
        };
        let mut p = ParamProfile::default();
        for session in 0..4 {
            p.learn(
                &obs("body.currency", serde_json::json!("EUR")),
                &caps,
                session,
            );
        }
        assert!(p.shown_values.is_empty(), "four sessions are too few");
        p.learn(&obs("body.currency", serde_json::json!("EUR")), &caps, 4);
        assert_eq!(p.shown_values.iter().collect::<Vec<_>>(), ["EUR"]);
        assert!(p.has_value("EUR") && !p.has_value("USD"));
        // One session sending a value many times does not make it shown.
        for _ in 0..50 {
            p.learn(&obs("body.currency", serde_json::json!("CHF")), &caps, 7);
        }
        assert!(!p.shown_values.contains("CHF"));
        // A high-entropy value is hashed only, however many sessions send it.
        for session in 0..64 {
            p.learn(
                &obs("body.currency", serde_json::json!("x9Qz-77Lp!")),
                &caps,
                session,
            );
        }
        assert!(p.has_value("x9Qz-77Lp!"));
        assert!(!p.shown_values.contains("x9Qz-77Lp!"));
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("x9Qz") && !json.contains("CHF"), "{json}");
    }

    #[test]
    fn secrets_leave_only_facts() {
        let mut p = ParamProfile::default();
        let secret = ParamObservation::new(
            "body.password".into(),
            Location::Body,
            text_facts("hunter2"),
            "hunter2".into(),
            true,
        );
        for session in 0..10 {
            p.learn(&secret, &CAPS, session);
        }
        assert_eq!(p.present, 10);
        assert!(p.values.is_empty() && p.distinct.is_none());
        let card = ParamObservation::new(
            "body.note".into(),
            Location::Body,
            text_facts("4111111111111111"),
            "4111111111111111".into(),
            false,
        );
        assert!(card.secret && card.value.is_empty());
    }

    #[test]
    fn legacy_clear_text_is_scrubbed_on_load() {
        let legacy = r#"{"params":{
            "body.currency":{"present":3,"values":{"EUR":2,"USD":1}},
            "body.cardNumber":{"present":1,"values":{"4111111111111111":1}},
            "body.note":{"present":1,"values":{"078-05-1120":1}}}}"#;
        let mut shape: ShapeProfile = serde_json::from_str(legacy).unwrap();
        shape.scrub_legacy();
        assert!(shape.params["body.currency"].has_value("EUR"));
        assert!(shape.params["body.cardNumber"].values.is_empty());
        assert!(shape.params["body.note"].values.is_empty());
        let json = serde_json::to_string(&shape).unwrap();
        for clear in ["EUR", "USD", "4111111111111111", "078-05-1120"] {
            assert!(!json.contains(clear), "{json}");
        }
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
            all.learn(&o, &CAPS, i as u64);
            if i % 2 == 0 {
                left.learn(&o, &CAPS, i as u64)
            } else {
                right.learn(&o, &CAPS, i as u64)
            }
        }
        left.merge(&right, &CAPS);
        let (a, b) = (&left.params["body.field"], &all.params["body.field"]);
        assert_eq!(a.present, b.present);
        assert_eq!(a.kinds, b.kinds);
        assert_eq!(a.chars, b.chars);
        assert_eq!(a.formats, b.formats);
        assert!(a.formats[&ValueFormat::Text] > 0 && a.formats[&ValueFormat::Slug] > 0);
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
                &ParamObservation::new(
                    format!("query.k{i}"),
                    Location::Query,
                    text_facts("1"),
                    "1".into(),
                    false,
                ),
                &CAPS,
                0,
            );
        }
        assert_eq!(s.params.len(), 4);
        assert_eq!(s.dropped, 6);
    }
}
