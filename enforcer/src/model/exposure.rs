//! What an operation's answers expose (see `detect::exposure`): per operation, how many 2xx
//! answers were scanned, how many of them answered a request without credentials, how many
//! carried each class of sensitive value, how many records they held (a power-of-two
//! histogram of the largest array) and their top-level field names. Counts only — never a
//! value — so that replicas merge by addition like the rest of the model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::flat::FlatMap;
use super::histogram::LogHistogram;

/// Classes of sensitive values an answer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SensitiveClass {
    /// A password or password hash (a string under a password-, hash- or secret-named key, or
    /// a value in a password-hash format such as bcrypt or `$argon2`).
    Password,
    /// A bearer credential: a JWT, or a long string under a token-, key- or session-named key.
    Token,
    /// A card number (13–19 digits with a valid Luhn check digit).
    CardNumber,
    /// A national-id-like number (`123-45-6789`, or digits under an ssn/national-id key).
    NationalId,
    /// An e-mail address.
    Email,
    /// A phone number (international `+` form, or digits under a phone-named key).
    Phone,
}

impl SensitiveClass {
    pub const ALL: [Self; 6] = [
        Self::Password,
        Self::Token,
        Self::CardNumber,
        Self::NationalId,
        Self::Email,
        Self::Phone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Token => "token",
            Self::CardNumber => "cardNumber",
            Self::NationalId => "nationalId",
            Self::Email => "email",
            Self::Phone => "phone",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Password => "passwords or password hashes",
            Self::Token => "tokens",
            Self::CardNumber => "card numbers",
            Self::NationalId => "national-id numbers",
            Self::Email => "e-mail addresses",
            Self::Phone => "phone numbers",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Bit of this class in a [`ClassSet`].
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`SensitiveClass`]es as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassSet(pub u8);

impl ClassSet {
    pub fn insert(&mut self, class: SensitiveClass) {
        self.0 |= class.bit();
    }

    pub fn contains(self, class: SensitiveClass) -> bool {
        self.0 & class.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = SensitiveClass> {
        SensitiveClass::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Most top-level field names kept per operation (the rest are counted under
/// [`OTHER_FIELDS`]).
pub const MAX_FIELDS: usize = 32;
/// Longest field name kept.
pub const MAX_FIELD_LEN: usize = 64;
/// The name that counts fields beyond [`MAX_FIELDS`] or longer than [`MAX_FIELD_LEN`].
pub const OTHER_FIELDS: &str = "(other)";

/// What one operation's scanned 2xx answers exposed. Plain counts, merged by addition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExposureCounts {
    /// 2xx answers whose body was scanned (a JSON object or array).
    pub answers: u64,
    /// 2xx answers (scanned or not) to requests that carried no credential (no token, session
    /// cookie or header: the session was keyed by the client address).
    #[serde(default)]
    pub anonymous_answers: u64,
    /// 2xx answers (scanned or not) to requests that carried one.
    #[serde(default)]
    pub authenticated_answers: u64,
    /// Scanned answers that carried each class (by [`SensitiveClass::as_str`]).
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub classes: FlatMap<String, u64>,
    /// Records per scanned answer (the longest array at the top level or one level down), in
    /// power-of-two buckets (`LogHistogram::length_bucket`).
    #[serde(default)]
    pub records: LogHistogram,
    /// Scanned answers by top-level field name (at most [`MAX_FIELDS`] names).
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub fields: FlatMap<String, u64>,
}

/// What one answer exposed, as learned (no value, only classes and counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExposureSample {
    /// The body was scanned.
    pub scanned: bool,
    /// The request carried no credential.
    pub anonymous: bool,
    pub classes: ClassSet,
    /// Records (a lower bound when the body was longer than what was scanned).
    pub records: u64,
    /// Top-level field names (bounded by the scanner).
    pub fields: Vec<String>,
}

impl ExposureCounts {
    /// Scanned answers that carried `class`.
    pub fn class_count(&self, class: SensitiveClass) -> u64 {
        self.classes.get(class.as_str()).copied().unwrap_or(0)
    }

    /// Learns one 2xx answer.
    pub fn record(&mut self, sample: &ExposureSample) {
        if sample.anonymous {
            self.anonymous_answers += 1;
        } else {
            self.authenticated_answers += 1;
        }
        self.record_scan(sample);
    }

    /// Learns what one scanned answer held, without counting the answer itself (an answer
    /// scanned as it streamed was counted when its head was relayed).
    pub fn record_scan(&mut self, sample: &ExposureSample) {
        if !sample.scanned {
            return;
        }
        self.answers += 1;
        for class in sample.classes.iter() {
            *self.classes.entry(class.as_str().to_owned()).or_insert(0) += 1;
        }
        let records = usize::try_from(sample.records).unwrap_or(usize::MAX);
        self.records.record(LogHistogram::length_bucket(records));
        for name in &sample.fields {
            self.add_field(name, 1);
        }
    }

    fn add_field(&mut self, name: &str, count: u64) {
        if let Some(n) = self.fields.get_mut(name) {
            *n += count;
        } else if name.len() <= MAX_FIELD_LEN && self.fields.len() < MAX_FIELDS {
            self.fields.insert(name.to_owned(), count);
        } else {
            *self.fields.entry(OTHER_FIELDS.to_owned()).or_insert(0) += count;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.answers += other.answers;
        self.anonymous_answers += other.anonymous_answers;
        self.authenticated_answers += other.authenticated_answers;
        for (name, n) in &other.classes {
            // Only known class names travel (a model from elsewhere cannot grow the map).
            if SensitiveClass::from_name(name).is_some() {
                *self.classes.entry(name.clone()).or_insert(0) += n;
            }
        }
        self.records.merge(&other.records);
        for (name, n) in &other.fields {
            self.add_field(name, *n);
        }
    }

    pub fn subtract(&mut self, base: &Self) {
        self.answers = self.answers.saturating_sub(base.answers);
        self.anonymous_answers = self
            .anonymous_answers
            .saturating_sub(base.anonymous_answers);
        self.authenticated_answers = self
            .authenticated_answers
            .saturating_sub(base.authenticated_answers);
        for (name, n) in &base.classes {
            if let Some(mine) = self.classes.get_mut(name) {
                *mine = mine.saturating_sub(*n);
            }
        }
        self.classes.retain(|_, n| *n > 0);
        self.records.subtract(&base.records);
        for (name, n) in &base.fields {
            if let Some(mine) = self.fields.get_mut(name) {
                *mine = mine.saturating_sub(*n);
            }
        }
        self.fields.retain(|_, n| *n > 0);
    }

    pub fn halve(&mut self) {
        self.answers /= 2;
        self.anonymous_answers /= 2;
        self.authenticated_answers /= 2;
        for n in self.classes.values_mut() {
            *n /= 2;
        }
        self.records.halve();
        for n in self.fields.values_mut() {
            *n /= 2;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.answers == 0 && self.anonymous_answers == 0 && self.authenticated_answers == 0
    }
}

/// The authentication and data posture of one operation: whether it answers 2xx without
/// credentials and which sensitive classes its answers carry (from learned counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Posture {
    pub operation: String,
    /// 2xx answers learned.
    pub answers: u64,
    /// Of those, answers to requests without credentials.
    pub anonymous_answers: u64,
    /// Scanned answers.
    pub scanned: u64,
    /// Sensitive classes the scanned answers carried, with how many answers carried each.
    pub sensitive_classes: BTreeMap<String, u64>,
}

impl Posture {
    /// The operation answers 2xx to requests without credentials.
    pub fn unauthenticated(&self) -> bool {
        self.anonymous_answers > 0
    }
}

/// The operations that answer 2xx without credentials or return sensitive classes, those
/// that do both first, then by answers; at most `limit`.
pub fn posture(model: &super::LearnedModel, limit: usize) -> Vec<Posture> {
    let mut out: Vec<Posture> = model
        .operations
        .iter()
        .filter(|o| o.exposure.anonymous_answers > 0 || !o.exposure.classes.is_empty())
        .map(|o| Posture {
            operation: o.template.clone(),
            answers: o.exposure.anonymous_answers + o.exposure.authenticated_answers,
            anonymous_answers: o.exposure.anonymous_answers,
            scanned: o.exposure.answers,
            sensitive_classes: o
                .exposure
                .classes
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| {
        let both = |p: &Posture| p.unauthenticated() && !p.sensitive_classes.is_empty();
        both(b)
            .cmp(&both(a))
            .then_with(|| b.answers.cmp(&a.answers))
            .then_with(|| a.operation.cmp(&b.operation))
    });
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(classes: &[SensitiveClass], records: u64, anonymous: bool) -> ExposureSample {
        let mut set = ClassSet::default();
        for c in classes {
            set.insert(*c);
        }
        ExposureSample {
            scanned: true,
            anonymous,
            classes: set,
            records,
            fields: vec!["items".into(), "page".into()],
        }
    }

    #[test]
    fn counts_merge_by_addition_and_subtract_back() {
        let mut a = ExposureCounts::default();
        a.record(&sample(&[SensitiveClass::Email], 10, false));
        a.record(&sample(&[], 3, true));
        let mut b = ExposureCounts::default();
        b.record(&sample(
            &[SensitiveClass::Email, SensitiveClass::Phone],
            12,
            false,
        ));
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged.answers, 3);
        assert_eq!(merged.anonymous_answers, 1);
        assert_eq!(merged.authenticated_answers, 2);
        assert_eq!(merged.class_count(SensitiveClass::Email), 2);
        assert_eq!(merged.class_count(SensitiveClass::Phone), 1);
        assert_eq!(merged.records.total(), 3);
        assert_eq!(merged.fields.get("items"), Some(&3));
        merged.subtract(&b);
        assert_eq!(merged, a);
    }

    #[test]
    fn field_names_are_bounded() {
        let mut counts = ExposureCounts::default();
        let fields: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        counts.record(&ExposureSample {
            scanned: true,
            fields,
            ..ExposureSample::default()
        });
        assert_eq!(counts.fields.len(), MAX_FIELDS + 1);
        assert_eq!(
            counts.fields.get(OTHER_FIELDS),
            Some(&(100 - MAX_FIELDS as u64))
        );
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use crate::model::LearnedModel;

    #[test]
    fn exposure_travels_in_the_codec_and_older_models_still_load() {
        let mut model = LearnedModel::default();
        let index = model.op_index_or_insert("GET /orders/export", 1);
        let stats = index.and_then(|i| model.operation_mut(i));
        assert!(stats.is_some());
        if let Some(stats) = stats {
            stats.exposure.record(&ExposureSample {
                scanned: true,
                records: 12,
                classes: ClassSet(SensitiveClass::Email.bit()),
                ..ExposureSample::default()
            });
        }
        let back = LearnedModel::from_bytes(&model.to_bytes()).unwrap();
        assert_eq!(back, model);
        assert_eq!(
            back.operations[0]
                .exposure
                .class_count(SensitiveClass::Email),
            1
        );
        // A model of the same format written before exposure was learned.
        let older = serde_json::json!({
            "format": crate::model::MODEL_FORMAT, "requests": 5, "sessions": 1,
            "firstSeenMs": 1, "lastSeenMs": 2,
            "operations": [{ "template": "GET /a", "requests": 5, "firstSeenMs": 1, "lastSeenMs": 2 }]
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, older.to_string().as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let loaded = LearnedModel::from_bytes(&bytes).unwrap();
        assert!(loaded.operations[0].exposure.is_zero());
    }
}
