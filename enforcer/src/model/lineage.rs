//! Where the values of an operation's parameters come from within a session (see
//! `detect::lineage`): per parameter, how many learned requests carried a value that a claim of
//! the session's token named, that an earlier answer of the session carried, that an earlier
//! request of the session sent, or none of these (the client's own input). Plain counts, merged
//! across replicas by addition like the rest of the model; the most frequent sources are kept
//! by name for the explanations.

use serde::{Deserialize, Serialize};

use super::flat::FlatMap;
use super::shape::{add_map, sub_map};

/// Most parameters whose origins are learned per operation (the rest are not judged).
pub const MAX_LINEAGE_PARAMS: usize = 32;
/// Most named sources kept per parameter; rarer ones are counted under [`OTHER_SOURCES`].
pub const MAX_SOURCES: usize = 8;
/// Longest source name kept (an operation and a field).
pub const MAX_SOURCE_LEN: usize = 160;
/// The name rarer sources share beyond [`MAX_SOURCES`].
pub const OTHER_SOURCES: &str = "other sources";

/// Where one value came from (a value may have several origins at once: the own user name is
/// a claim of the token and a field of the profile answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OriginClass {
    /// A claim of the token that named the session.
    Claim,
    /// A field of an earlier answer in the session.
    Response,
    /// A parameter of an earlier successful request of the session.
    Request,
    /// None of these: the client's own input.
    Input,
}

impl OriginClass {
    pub const ALL: [Self; 4] = [Self::Claim, Self::Response, Self::Request, Self::Input];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "a claim of the session's token",
            Self::Response => "an earlier answer in the session",
            Self::Request => "an earlier request of the session",
            Self::Input => "none of these (the client's own input)",
        }
    }
}

/// Learned origins of one parameter's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginCounts {
    /// Learned requests that carried a value in this parameter.
    pub seen: u64,
    /// Of those, requests whose value a token claim named.
    #[serde(default)]
    pub claim: u64,
    /// … that an earlier answer of the session carried.
    #[serde(default)]
    pub response: u64,
    /// … that an earlier successful request of the session sent.
    #[serde(default)]
    pub request: u64,
    /// … that had none of these origins.
    #[serde(default)]
    pub input: u64,
    /// Requests per named source (`claim sub`, `GET /accounts field accounts[].id`), the most
    /// frequent [`MAX_SOURCES`].
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub sources: FlatMap<String, u64>,
}

impl OriginCounts {
    /// Requests whose value had origin `class`.
    pub fn count(&self, class: OriginClass) -> u64 {
        match class {
            OriginClass::Claim => self.claim,
            OriginClass::Response => self.response,
            OriginClass::Request => self.request,
            OriginClass::Input => self.input,
        }
    }

    /// Learns one value with origins `classes` (empty: the client's own input) from `sources`.
    pub fn learn(&mut self, classes: &[OriginClass], sources: &[String]) {
        self.seen += 1;
        if classes.is_empty() {
            self.input += 1;
        }
        for class in classes {
            match class {
                OriginClass::Claim => self.claim += 1,
                OriginClass::Response => self.response += 1,
                OriginClass::Request => self.request += 1,
                OriginClass::Input => self.input += 1,
            }
        }
        for source in sources {
            let name = bounded(source);
            if let Some(count) = self.sources.get_mut(&name) {
                *count += 1;
            } else if self.sources.len() < MAX_SOURCES {
                self.sources.insert(name, 1);
            } else {
                *self.sources.entry(OTHER_SOURCES.to_owned()).or_insert(0) += 1;
            }
        }
        self.trim_sources();
    }

    /// The named sources, most frequent first.
    pub fn top_sources(&self) -> Vec<(&str, u64)> {
        let mut top: Vec<(&str, u64)> =
            self.sources.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top
    }

    /// Keeps at most [`MAX_SOURCES`] names (plus the shared one): the least frequent go to
    /// [`OTHER_SOURCES`]. Deterministic (ties by name), so that replicas trim alike.
    fn trim_sources(&mut self) {
        let named = self.sources.len() - usize::from(self.sources.contains_key(OTHER_SOURCES));
        if named <= MAX_SOURCES {
            return;
        }
        let mut ranked: Vec<(String, u64)> = self
            .sources
            .iter()
            .filter(|(k, _)| k.as_str() != OTHER_SOURCES)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let moved: u64 = ranked.iter().skip(MAX_SOURCES).map(|(_, v)| *v).sum();
        for (name, _) in ranked.iter().skip(MAX_SOURCES) {
            self.sources.remove(name);
        }
        *self.sources.entry(OTHER_SOURCES.to_owned()).or_insert(0) += moved;
    }

    fn merge(&mut self, other: &Self) {
        self.seen += other.seen;
        self.claim += other.claim;
        self.response += other.response;
        self.request += other.request;
        self.input += other.input;
        add_map(&mut self.sources, &other.sources);
        self.trim_sources();
    }

    fn subtract(&mut self, base: &Self) {
        self.seen = self.seen.saturating_sub(base.seen);
        self.claim = self.claim.saturating_sub(base.claim);
        self.response = self.response.saturating_sub(base.response);
        self.request = self.request.saturating_sub(base.request);
        self.input = self.input.saturating_sub(base.input);
        sub_map(&mut self.sources, &base.sources);
    }

    fn halve(&mut self) {
        self.seen /= 2;
        self.claim /= 2;
        self.response /= 2;
        self.request /= 2;
        self.input /= 2;
        for v in self.sources.values_mut() {
            *v /= 2;
        }
        self.sources.retain(|_, v| *v > 0);
    }

    /// Whether it holds no count at all.
    pub fn is_zero(&self) -> bool {
        self.seen == 0
            && self.claim == 0
            && self.response == 0
            && self.request == 0
            && self.input == 0
            && self.sources.is_empty()
    }

    /// Adds `other`'s counts, not its named sources (a pooled view for judging, never
    /// stored: nothing is allocated).
    pub fn add_counts(&mut self, other: &Self) {
        self.seen += other.seen;
        self.claim += other.claim;
        self.response += other.response;
        self.request += other.request;
        self.input += other.input;
    }

    /// Adds `other` without trimming (a pooled view for judging, never stored).
    pub fn add(&mut self, other: &Self) {
        self.add_counts(other);
        add_map(&mut self.sources, &other.sources);
    }
}

fn bounded(name: &str) -> String {
    if name.len() <= MAX_SOURCE_LEN {
        return name.to_owned();
    }
    let mut end = MAX_SOURCE_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// What one operation's lineage is: the origins of its parameters, and how its own answers
/// served later requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationLineage {
    /// Parameter (`path.var1`, `body.from`) → learned origins of its values.
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    pub params: FlatMap<String, OriginCounts>,
    /// Answers of this operation whose body was read for values.
    #[serde(default)]
    pub reads: u64,
    /// Values of later learned requests that this operation's answers carried: its answers are
    /// worth reading.
    #[serde(default)]
    pub supplied: u64,
}

impl OperationLineage {
    /// Learns the origins of one parameter value (parameters beyond the cap are not learned).
    pub fn learn(&mut self, param: &str, classes: &[OriginClass], sources: &[String]) {
        if let Some(counts) = self.params.get_mut(param) {
            counts.learn(classes, sources);
        } else if self.params.len() < MAX_LINEAGE_PARAMS {
            let mut counts = OriginCounts::default();
            counts.learn(classes, sources);
            self.params.insert(param.to_owned(), counts);
        }
    }

    /// Takes back one learned value of `param` that had no origin (see
    /// `detect::lineage::LineageState::take_taught`).
    pub fn unlearn_without_origin(&mut self, param: &str) {
        if let Some(counts) = self.params.get_mut(param)
            && counts.input > 0
        {
            counts.input -= 1;
            counts.seen = counts.seen.saturating_sub(1);
        }
    }

    pub fn merge(&mut self, other: &Self) {
        for (name, theirs) in &other.params {
            if let Some(mine) = self.params.get_mut(name) {
                mine.merge(theirs);
            } else if self.params.len() < MAX_LINEAGE_PARAMS {
                self.params.insert(name.clone(), theirs.clone());
            }
        }
        self.reads += other.reads;
        self.supplied += other.supplied;
    }

    pub fn subtract(&mut self, base: &Self) {
        for (name, theirs) in &base.params {
            if let Some(mine) = self.params.get_mut(name) {
                mine.subtract(theirs);
            }
        }
        // A delta may hold a parameter whose `seen` did not change while its classes did (a
        // value with an origin learned, one without taken back: `model::taken_back`).
        self.params.retain(|_, c| !c.is_zero());
        self.reads = self.reads.saturating_sub(base.reads);
        self.supplied = self.supplied.saturating_sub(base.supplied);
    }

    pub fn halve(&mut self) {
        for counts in self.params.values_mut() {
            counts.halve();
        }
        self.reads /= 2;
        self.supplied /= 2;
    }

    pub fn is_zero(&self) -> bool {
        self.reads == 0 && self.supplied == 0 && self.params.values().all(OriginCounts::is_zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_by_addition_and_keep_the_frequent_sources() {
        let mut a = OperationLineage::default();
        let mut b = OperationLineage::default();
        for _ in 0..3 {
            a.learn(
                "path.var1",
                &[OriginClass::Claim],
                &["claim sub".to_owned()],
            );
        }
        b.learn("path.var1", &[], &[]);
        b.learn(
            "path.var1",
            &[OriginClass::Claim, OriginClass::Response],
            &["claim sub".to_owned(), "GET /me field username".to_owned()],
        );
        let mut merged = a.clone();
        merged.merge(&b);
        let c = &merged.params["path.var1"];
        assert_eq!((c.seen, c.claim, c.response, c.input), (5, 4, 1, 1));
        assert_eq!(c.sources["claim sub"], 4);
        // The delta of the merged model against `a` is `b`.
        let mut delta = merged.clone();
        delta.subtract(&a);
        assert_eq!(delta.params["path.var1"].seen, 2);
        assert_eq!(delta.params["path.var1"].claim, 1);
        // Beyond the cap, the rarest sources share one name.
        let mut many = OriginCounts::default();
        for i in 0..20u64 {
            for _ in 0..=i {
                many.learn(&[OriginClass::Response], &[format!("GET /x{i} field id")]);
            }
        }
        assert!(many.sources.len() <= MAX_SOURCES + 1);
        assert!(many.sources.contains_key(OTHER_SOURCES));
        let total: u64 = many.sources.values().sum();
        assert_eq!(total, many.seen, "nothing lost when trimming");
    }
}
