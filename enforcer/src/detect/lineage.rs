//! Identity and data lineage (`identityLineage`): BOLA from the first request.
//!
//! An honest client names objects it was given: its own user name is a claim of its token,
//! the account it pays from came in the account list, the book it opens was on the catalogue
//! page. Per operation and parameter the model learns where values come from within the
//! session ([`OriginClass`]: a token claim, a field of an earlier answer, a parameter of an
//! earlier successful request, or none of these — the client's own input), as plain counts
//! (`OperationStats::lineage`). Where the learned origins are near-certain — a value of no
//! such origin is improbable by the same credible bound as the sequence detector's, with
//! support — a request whose value has no such origin (or only origins the parameter's values
//! never had) is flagged at once: the first foreign object, not the seventh.
//!
//! A parameter of an operation with too few learned requests to decide (a rare password
//! change: fewer than `minOperationRequests`, or more but too few for even a never-seen origin
//! to be improbable) is judged by the pooled evidence of every operation on the same object:
//! the path up to and including the parameter (`/users/v1/{var1}` for
//! `PUT /users/v1/{var1}/password`), where the object's identity is the same whatever the
//! sub-resource or method. Whose object a session may read is not whose it may change: a
//! state-changing request is judged by the state-changing operations on the object when they
//! can decide, and by all of them otherwise, except for what the writes credibly lack although
//! the reads have it (`writes_lack`); and where (nearly) every learned change named the
//! token's own subject, a change of an object no claim of the token names is flagged whatever
//! else gave the value (an earlier answer: a book's owner).
//!
//! Per session ([`LineageState`]) only keyed hashes of values are kept (a per-process random
//! key: values may be secrets), at most [`MAX_VALUES`] of them with at most [`MAX_FIELDS`]
//! field names, inside the session's detector record (evicted with it); when full, the 8
//! oldest values of the operation that gave the most go first (`LineageState::evict_one`).
//! Answers are read only when the proxy already holds the whole body (at most
//! `outcome::MAX_READ_BYTES`, never waited for), and only for operations whose answers are
//! still being sampled ([`PROBE_READS`]) or were learned to supply values to later requests.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::lineage::{OperationLineage, OriginClass, OriginCounts};
use crate::model::sequence::{upper_bound, upper_bound_reaches};
use crate::model::value::ValueKind;
use crate::model::{LearnedModel, Location, OperationStats, ParamObservation};
use crate::session::{LOST_HISTORY, RecentOp, SessionSource};

use super::context::{Judged, finding, percent};
use super::params::RequestParams;
use super::thresholds::sequence_bounds;

/// Most values remembered per session (16 bytes each).
pub const MAX_VALUES: usize = 96;
/// Values evicted at once from a full record (see `LineageState::evict_one`).
const EVICT_BATCH: usize = 8;
/// Most distinct field names remembered per session (each at most [`MAX_FIELD_LEN`] bytes);
/// values of further fields are remembered under [`OTHER_FIELD`].
pub const MAX_FIELDS: usize = 8;
pub const MAX_FIELD_LEN: usize = 48;
/// Longest value taken for a reference (longer values are text, not identifiers).
pub const MAX_VALUE_LEN: usize = 128;
/// Most scalar values taken from one answer, and the deepest nesting followed.
pub const MAX_RESPONSE_VALUES: usize = 256;
pub const MAX_RESPONSE_DEPTH: usize = 6;
/// Answers of an operation read before it is known whether they supply later requests.
pub const PROBE_READS: u64 = 50;
/// Most token claims compared.
const MAX_CLAIMS: usize = 16;
/// Most lessons without an origin remembered per session for taking back (4 bytes each): an
/// enumerator is flagged within a few dozen requests.
pub const MAX_TAUGHT: usize = 32;
/// Field index of values whose field name did not fit.
const OTHER_FIELD: u8 = u8::MAX;
/// Claims that describe the token rather than whom it names.
const TOKEN_CLAIMS: [&str; 7] = ["exp", "iat", "nbf", "auth_time", "jti", "iss", "aud"];

/// The per-process key of the values' hashes.
#[derive(Debug, Default)]
pub struct ValueKeys(RandomState);

impl ValueKeys {
    pub fn hash(&self, value: &str) -> u64 {
        self.0.hash_one(value.as_bytes())
    }

    /// A hasher with the same key, for values hashed in parts (see `detect::replay`).
    pub fn build_hasher(&self) -> std::hash::DefaultHasher {
        self.0.build_hasher()
    }
}

/// One value a session was given or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u64,
    /// Model index of the operation whose answer or request carried it.
    op: u16,
    field: u8,
    class: u8,
}

/// The values of one session (keyed hashes only), oldest first.
#[derive(Debug, Default)]
pub struct LineageState {
    entries: VecDeque<Entry>,
    /// Which values may be in `entries`: one bit per value, chosen by its hash (a value whose
    /// bit is clear is not there). A value the session was not given, the common case when an
    /// answer is read, is then answered without scanning the record.
    maybe: HashBits,
    /// The same for a value with its operation and class ([`entry_key`]): the same value
    /// comes in the answers of several operations (an account id in the list, the account,
    /// its transactions), and remembering one needs its own entry.
    maybe_entry: HashBits,
    fields: Vec<Box<str>>,
    /// The session's entry was recreated without what came before (eviction, a move between
    /// replicas): values it was given earlier are unknown, so nothing is judged.
    incomplete: bool,
    /// What the session taught the model while unflagged that had no origin in it: (operation
    /// index, field index), under the model generation `taught_generation`. When the session
    /// is flagged later these lessons are taken back (see [`LineageState::take_taught`]).
    taught: Vec<(u16, u8)>,
    taught_generation: u64,
    /// Where the last value remembered again was found: an answer that repeats an earlier
    /// one (a list read again) remembers its values in the order they were remembered
    /// before, and each one moved to the newest end leaves the next in its place. Checked
    /// before the record is searched; only a hint (the record holds at most [`MAX_VALUES`]).
    last_found: u8,
}

/// A set of hashes that may hold false positives and no false negatives: 256 bits, one per
/// value. At the record's [`MAX_VALUES`] about a third of the bits are set, so about two
/// thirds of the values a session was not given are ruled out at once.
#[derive(Debug, Default, Clone, Copy)]
struct HashBits([u64; 4]);

impl HashBits {
    /// The word and bit of `hash` (its top bits: the keyed hash is uniform in every bit).
    fn place(hash: u64) -> (usize, u64) {
        let bit = hash >> 56;
        (usize::try_from(bit >> 6).unwrap_or(0), 1 << (bit & 63))
    }

    fn insert(&mut self, hash: u64) {
        let (word, bit) = Self::place(hash);
        if let Some(w) = self.0.get_mut(word) {
            *w |= bit;
        }
    }

    fn may_hold(&self, hash: u64) -> bool {
        let (word, bit) = Self::place(hash);
        self.0.get(word).is_some_and(|w| w & bit != 0)
    }
}

/// A value's hash mixed with its operation and class, for [`LineageState::maybe_entry`].
fn entry_key(hash: u64, op: u16, class: u8) -> u64 {
    hash ^ ((u64::from(op) << 8 | u64::from(class)) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn class_code(class: OriginClass) -> u8 {
    match class {
        OriginClass::Claim => 0,
        OriginClass::Response => 1,
        OriginClass::Request => 2,
        OriginClass::Input => 3,
    }
}

impl LineageState {
    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
    }

    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether an answer gave the value with hash `hash`.
    pub fn contains_given(&self, hash: u64) -> bool {
        let given = class_code(OriginClass::Response);
        self.maybe.may_hold(hash)
            && self
                .entries
                .iter()
                .any(|e| e.hash == hash && e.class == given)
    }

    /// The entries of the value with hash `hash`.
    fn entries_of(&self, hash: u64) -> impl Iterator<Item = &Entry> {
        let scanned = if self.maybe.may_hold(hash) {
            self.entries.len()
        } else {
            0
        };
        self.entries
            .iter()
            .take(scanned)
            .filter(move |e| e.hash == hash)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn field_index(&mut self, field: &str) -> u8 {
        let field = bounded(field, MAX_FIELD_LEN);
        if let Some(i) = self.fields.iter().position(|f| &**f == field) {
            return u8::try_from(i).unwrap_or(OTHER_FIELD);
        }
        if self.fields.len() >= MAX_FIELDS {
            return OTHER_FIELD;
        }
        self.fields.push(Box::from(field));
        u8::try_from(self.fields.len() - 1).unwrap_or(OTHER_FIELD)
    }

    /// Remembers a value (once per operation and class: every operation whose answers carry
    /// a value later used is credited with it, see `OperationLineage::supplied`). A value
    /// remembered again moves to the newest end: what the session keeps using stays longest.
    pub fn remember(&mut self, hash: u64, op: u16, field: &str, class: OriginClass) {
        let class = class_code(class);
        let is_it = |e: &Entry| e.hash == hash && e.class == class && e.op == op;
        // Where the previous value was found, then from the newest end: an answer's values
        // are mostly those its previous answer gave, remembered last (an entry is unique, so
        // the first match from anywhere is it).
        let found = self
            .maybe_entry
            .may_hold(entry_key(hash, op, class))
            .then(|| {
                let hint = usize::from(self.last_found);
                if self.entries.get(hint).is_some_and(is_it) {
                    Some(hint)
                } else {
                    self.entries.iter().rposition(is_it)
                }
            })
            .flatten();
        if let Some(at) = found {
            self.last_found = u8::try_from(at).unwrap_or(0);
            if let Some(entry) = self.entries.remove(at) {
                self.entries.push_back(entry);
            }
            return;
        }
        let field = self.field_index(field);
        if self.entries.len() >= MAX_VALUES {
            self.evict_one();
        }
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(8);
        }
        self.entries.push_back(Entry {
            hash,
            op,
            field,
            class,
        });
        self.maybe.insert(hash);
        self.maybe_entry.insert(entry_key(hash, op, class));
    }

    /// Makes room: the [`EVICT_BATCH`] oldest values of the operation and class with the most
    /// values go. A chatty answer (pages of transactions, twenty values each) then pushes out
    /// its own older values, never the few an account list gave or the session sent, which it
    /// may use long after. In batches, so that a full record is scanned once per
    /// [`EVICT_BATCH`] values remembered, not for each (the request path reads answers).
    fn evict_one(&mut self) {
        // (op, class, count) of the first groups met; values of further groups are rare and
        // simply not candidates.
        let mut counts = [(0u16, 0u8, 0u16); 16];
        let mut groups = 0;
        for e in &self.entries {
            if let Some(c) = counts[..groups]
                .iter_mut()
                .find(|c| c.0 == e.op && c.1 == e.class)
            {
                c.2 += 1;
            } else if groups < counts.len() {
                counts[groups] = (e.op, e.class, 1);
                groups += 1;
            }
        }
        // The first group with the most values: among equals, the one seen first, the oldest.
        let Some((op, class, count)) = counts[..groups]
            .iter()
            .copied()
            .reduce(|best, next| if next.2 > best.2 { next } else { best })
        else {
            return;
        };
        let mut left = usize::from(count).min(EVICT_BATCH);
        self.entries.retain(|e| {
            if left > 0 && e.op == op && e.class == class {
                left -= 1;
                false
            } else {
                true
            }
        });
        self.maybe = HashBits::default();
        self.maybe_entry = HashBits::default();
        for e in &self.entries {
            self.maybe.insert(e.hash);
            self.maybe_entry.insert(entry_key(e.hash, e.op, e.class));
        }
    }

    /// Records that the session teaches the model a value of `field` of operation `op` with no
    /// origin in the session (model generation `generation`); `false` when it already taught
    /// one for that parameter, and this one is not to be learned. An enumerator's first ids,
    /// sent before any detector was sure, look exactly like that: counted once per session and
    /// taken back when it is flagged, they never make "no origin" look normal for the
    /// parameter and blind the check to every later enumerator. An honest session that types
    /// values counts once too, so a parameter whose values are often typed still shows it.
    pub fn record_taught(&mut self, op: u16, field: &str, generation: u64) -> bool {
        if self.taught_generation != generation {
            self.taught.clear();
            self.taught_generation = generation;
        }
        let field = self.field_index(field);
        if field == OTHER_FIELD {
            return true;
        }
        if self.taught.contains(&(op, field)) {
            return false;
        }
        if self.taught.len() < MAX_TAUGHT {
            self.taught.push((op, field));
        }
        true
    }

    /// The lessons without an origin to take back now that the session is flagged, as
    /// (operation index, field name); none when the model generation changed since (the
    /// indices then name other operations).
    pub fn take_taught(&mut self, generation: u64) -> Vec<(u16, String)> {
        let taught = std::mem::take(&mut self.taught);
        if self.taught_generation != generation {
            return Vec::new();
        }
        taught
            .into_iter()
            .map(|(op, field)| (op, self.field_name(field).to_owned()))
            .collect()
    }

    fn field_name(&self, index: u8) -> &str {
        self.fields
            .get(usize::from(index))
            .map_or("another field", |f| &**f)
    }
}

fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a value can name an object: a short string without white space, or an integer,
/// of at least two characters.
fn reference_like(text: &str) -> bool {
    (2..=MAX_VALUE_LEN).contains(&text.len()) && !text.chars().any(char::is_whitespace)
}

/// A request parameter whose value may name an object, with its value as the hash sees it.
pub struct Candidate<'p> {
    pub obs: &'p ParamObservation,
    pub value: String,
}

/// The request's parameters that may carry a reference (path, query and body scalars, never
/// secrets).
pub fn candidates(params: &RequestParams) -> Vec<Candidate<'_>> {
    params
        .params
        .iter()
        .filter(|o| {
            matches!(
                o.location,
                Location::Path | Location::Query | Location::Body
            ) && !o.secret
                && !matches!(
                    o.facts.kind,
                    ValueKind::Null
                        | ValueKind::Boolean
                        | ValueKind::Number
                        | ValueKind::Object
                        | ValueKind::Array
                        | ValueKind::EmptyString
                )
        })
        .filter_map(|o| {
            let value = if o.location == Location::Path && o.value.contains('%') {
                percent_encoding::percent_decode_str(&o.value)
                    .decode_utf8_lossy()
                    .into_owned()
            } else {
                o.value.clone()
            };
            reference_like(&value).then_some(Candidate { obs: o, value })
        })
        .collect()
}

/// The session token's claims that may name someone (hashed), when the session was named by a
/// token (verified when verification is configured: otherwise the session would not be named
/// by it).
pub fn claims(
    source: SessionSource,
    headers: &http::HeaderMap,
    jwt_headers: &[String],
    keys: &ValueKeys,
) -> Vec<(String, u64)> {
    if source != SessionSource::Jwt {
        return Vec::new();
    }
    let Some(token) = jwt_headers
        .iter()
        .find_map(|h| headers.get(h.as_str()).and_then(|v| v.to_str().ok()))
    else {
        return Vec::new();
    };
    let token = token.trim();
    let token = match token.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => token[7..].trim_start(),
        _ => token,
    };
    let Some(map) = crate::session::jwt::unverified_claims(token) else {
        return Vec::new();
    };
    map.iter()
        .filter(|(k, _)| !TOKEN_CLAIMS.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => return None,
            };
            reference_like(&text).then(|| (bounded(k, MAX_FIELD_LEN).to_owned(), keys.hash(&text)))
        })
        .take(MAX_CLAIMS)
        .collect()
}

/// Where one value came from in this session.
#[derive(Debug, Default)]
pub struct Origins {
    pub classes: Vec<OriginClass>,
    /// Named sources (`claim sub`, `GET /accounts field accounts[].id`), for learning.
    pub sources: Vec<String>,
    /// Model indices of the operations whose answers carried it.
    pub supplied_by: Vec<u16>,
}

/// The origins of a value with hash `hash`: the session's token claims, what the session
/// sent and was given (`state`), and what answers to its client address's anonymous requests
/// gave (`address`, see `detect::shown`; `None` for a session named by the address itself).
pub fn origins_of(
    hash: u64,
    claims: &[(String, u64)],
    state: Option<&LineageState>,
    address: Option<&LineageState>,
    model: &LearnedModel,
) -> Origins {
    let mut out = Origins::default();
    for (name, h) in claims {
        if *h == hash {
            if !out.classes.contains(&OriginClass::Claim) {
                out.classes.push(OriginClass::Claim);
            }
            out.sources.push(format!("claim {name}"));
        }
    }
    if let Some(state) = state {
        add_entries(&mut out, hash, state, model);
    }
    if let Some(address) = address {
        add_entries(&mut out, hash, address, model);
    }
    out.sources.sort();
    out.sources.dedup();
    out
}

/// Adds the origins `values` holds for the value with hash `hash`.
fn add_entries(out: &mut Origins, hash: u64, values: &LineageState, model: &LearnedModel) {
    for e in values.entries_of(hash) {
        let class = if e.class == class_code(OriginClass::Response) {
            OriginClass::Response
        } else {
            OriginClass::Request
        };
        if !out.classes.contains(&class) {
            out.classes.push(class);
        }
        let template = model.operation(e.op).map_or("?", |s| s.template.as_str());
        let field = values.field_name(e.field);
        out.sources.push(match class {
            OriginClass::Response => format!("{template} field {field}"),
            _ => format!("{template} {field}"),
        });
        if class == OriginClass::Response && !out.supplied_by.contains(&e.op) {
            out.supplied_by.push(e.op);
        }
    }
}

/// The object identifiers of a request (`RequestParams::object_ids`) that the session had to
/// come up with itself: all of them but those whose value a claim of the session's token
/// named or an earlier answer in the session carried (see `detect::enumeration`). A client
/// that opens what a listing just showed it, or its own profile, is navigating; an enumerator
/// guesses. A value the session only sent before (the `Request` origin) still counts as its
/// own input: sending a guess twice must not make it look shown. When the session's values
/// are unknown (no lineage state, an incomplete one, a lost history) every identifier counts,
/// as without lineage. What answers to the client address's anonymous requests gave
/// (`address`, see `detect::shown`) was shown too.
pub fn unshown_objects(
    params: &RequestParams,
    state: Option<&LineageState>,
    address: Option<&LineageState>,
    recent: &[RecentOp],
    claims: &dyn Fn() -> Vec<(String, u64)>,
    keys: &ValueKeys,
    model: &LearnedModel,
) -> Vec<u64> {
    if params.object_ids.is_empty()
        || state.is_some_and(LineageState::incomplete)
        || history_lost(recent)
    {
        return params.object_ids.clone();
    }
    let mut token: Option<Vec<(String, u64)>> = None;
    let mut shown: Vec<u64> = Vec::new();
    for obs in params.params.iter().filter(|o| {
        matches!(
            o.location,
            Location::Path | Location::Query | Location::Body
        ) && !o.secret
            && !o.value.is_empty()
    }) {
        let id = crate::model::hashing::stable_hash(obs.value.as_bytes());
        if !params.object_ids.contains(&id) || shown.contains(&id) {
            continue;
        }
        let value = if obs.location == Location::Path && obs.value.contains('%') {
            percent_encoding::percent_decode_str(&obs.value)
                .decode_utf8_lossy()
                .into_owned()
        } else {
            obs.value.clone()
        };
        let claims = token.get_or_insert_with(claims);
        let origins = origins_of(keys.hash(&value), claims, state, address, model);
        if origins
            .classes
            .iter()
            .any(|c| matches!(c, OriginClass::Claim | OriginClass::Response))
        {
            shown.push(id);
        }
    }
    params
        .object_ids
        .iter()
        .copied()
        .filter(|id| !shown.contains(id))
        .collect()
}

/// Whether a session's history says it lost what came before (see `session::History`).
pub fn history_lost(recent: &[RecentOp]) -> bool {
    recent.first().is_some_and(|r| r.op == LOST_HISTORY)
}

/// Scalar values of a JSON answer with their field paths (`accounts[].id`): strings and
/// integers that may name an object. Bounded in count and depth.
///
/// Read in one pass, without building the document (the answers of the operations whose
/// values are followed are read on the request path): values in the document's order. An
/// answer that is not one JSON document gives none.
pub fn response_values(body: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut path = String::new();
    let mut reader = serde_json::Deserializer::from_slice(body);
    let values = AnswerValues {
        path: &mut path,
        depth: 0,
        out: &mut out,
    };
    if values
        .deserialize(&mut reader)
        .and_then(|()| reader.end())
        .is_err()
    {
        return Vec::new();
    }
    out
}

/// Collects the reference-like scalars of one JSON value at `path` (see [`response_values`]).
struct AnswerValues<'a> {
    path: &'a mut String,
    depth: usize,
    out: &'a mut Vec<(String, String)>,
}

impl AnswerValues<'_> {
    fn push(&mut self, text: &str) {
        if self.out.len() < MAX_RESPONSE_VALUES
            && self.depth <= MAX_RESPONSE_DEPTH
            && reference_like(text)
        {
            self.out.push((self.path.clone(), text.to_owned()));
        }
    }

    fn below(&mut self) -> AnswerValues<'_> {
        AnswerValues {
            path: self.path,
            depth: self.depth + 1,
            out: self.out,
        }
    }
}

impl<'de> DeserializeSeed<'de> for AnswerValues<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnswerValues<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.push(&v.to_string());
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.push(&v.to_string());
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.push(v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<(), A::Error> {
        let len = self.path.len();
        self.path.push_str("[]");
        while items.next_element_seed(self.below())?.is_some() {}
        self.path.truncate(len);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut fields: A) -> Result<(), A::Error> {
        let len = self.path.len();
        while fields.next_key_seed(FieldName(self.path))?.is_some() {
            fields.next_value_seed(self.below())?;
            self.path.truncate(len);
        }
        Ok(())
    }
}

/// Appends a field's name (its first 32 bytes) to the path, after a `.` unless first.
struct FieldName<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, name: &str) -> Result<(), E> {
        if !self.0.is_empty() {
            self.0.push('.');
        }
        self.0.push_str(bounded(name, 32));
        Ok(())
    }
}

/// Share of read answers (1 in this many) that must supply a later value for an operation's
/// answers to stay read: answers whose values are used only by coincidence (a page number that
/// equals a later one) would otherwise fill the session's bounded record and push out the
/// values that matter.
pub const MIN_SUPPLY_RATIO: u64 = 20;

/// Whether an operation's answers are worth reading for values: while sampled, then while at
/// least one read answer in [`MIN_SUPPLY_RATIO`] supplied a value of a later learned request.
pub fn wants(lineage: &OperationLineage) -> bool {
    lineage.reads < PROBE_READS
        || (lineage.supplied > 0
            && lineage.supplied.saturating_mul(MIN_SUPPLY_RATIO) >= lineage.reads)
}

/// Whether an operation's parameter has more distinct values than an enum (it names objects,
/// not one of a handful of choices).
fn high_cardinality(stats: &OperationStats, name: &str) -> bool {
    stats
        .shape
        .params
        .get(name)
        .is_some_and(|p| p.values_overflow)
}

/// Whether `seen` learned values can make an origin improbable at all: even one that none of
/// them had keeps an upper bound at or above the limit with fewer (about 200 at Medium).
fn decisive(seen: u64, (credibility, limit): (f64, f64)) -> bool {
    !upper_bound_reaches(0, seen, credibility, limit)
}

/// Whether a method changes state: anything but GET, HEAD, OPTIONS and TRACE.
fn changes_state(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Whether an operation template (`PUT /users/v1/{var1}/password`) changes state.
fn template_changes_state(template: &str) -> bool {
    template
        .split_once(' ')
        .is_some_and(|(method, _)| changes_state(method))
}

/// The path of `template` up to and including the parameter `{var}` (`/users/v1/{var1}` for
/// `PUT /users/v1/{var1}/password` and `var1`): the object the parameter names.
fn object_prefix<'t>(template: &'t str, var: &str) -> Option<&'t str> {
    let (_, path) = template.split_once(' ')?;
    let end = path.match_indices(var).find_map(|(at, _)| {
        let end = at + var.len();
        (path[..at].ends_with('{') && path[end..].starts_with('}')).then_some(end + 1)
    })?;
    Some(&path[..end])
}

/// Whether operation `template` is on the object `prefix`: its path is the prefix or goes on
/// below it.
fn on_object(template: &str, prefix: &str) -> bool {
    template
        .split_once(' ')
        .and_then(|(_, path)| path.strip_prefix(prefix))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Which learned requests a parameter is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope<'m> {
    /// The operation's own.
    Own,
    /// Those of the operations on the object `prefix`: only the state-changing ones
    /// (`writes_only`), or all of them, reads included.
    Pooled { prefix: &'m str, writes_only: bool },
}

/// The learned origins a parameter is judged by (pooled ones as counts only: the named
/// sources are gathered when a finding is explained).
struct Evidence<'m> {
    learned: std::borrow::Cow<'m, OriginCounts>,
    scope: Scope<'m>,
    /// For a state-changing request judged by every operation on the object because the
    /// state-changing ones are too few to decide alone, though at least
    /// `minOperationRequests`, while all of them together can decide: their counts and the
    /// other operations' (see [`writes_lack`]).
    split: Option<Split>,
}

/// The learned origins on one object, of its state-changing operations and of the others.
#[derive(Debug, Default)]
struct Split {
    writes: OriginCounts,
    others: OriginCounts,
}

/// How the writes on an object credibly lack something the other requests on it have (see
/// [`writes_lack`]).
#[derive(Debug, Clone, Copy)]
struct Lacked {
    writes: u64,
    writes_upper: f64,
    others: u64,
    others_count: u64,
    others_lower: f64,
}

/// Whether the learned state-changing requests on an object credibly lack what `count_of`
/// counts (an origin class, or a value that is no token claim), though the other requests
/// on it have it: none of the writes had it, and even its share's upper credible bound among
/// them is below the lower credible bound of its share among the others (the reads). The
/// pooled evidence then mixes two kinds of request that credibly differ in it, and what the
/// reads do says nothing about a write: whose object a session may read is not whose it may
/// change.
fn writes_lack(
    split: &Split,
    count_of: impl Fn(&OriginCounts) -> u64,
    credibility: f64,
) -> Option<Lacked> {
    let others_count = count_of(&split.others);
    if count_of(&split.writes) > 0 || others_count == 0 {
        return None;
    }
    let others = split.others.seen;
    let writes_upper = upper_bound(0, split.writes.seen, credibility);
    let others_lower = 1.0 - upper_bound(others.saturating_sub(others_count), others, credibility);
    (writes_upper < others_lower).then_some(Lacked {
        writes: split.writes.seen,
        writes_upper,
        others,
        others_count,
        others_lower,
    })
}

/// The learned origins a parameter is judged by: the operation's own when they can decide,
/// otherwise (path parameters) those of the operations on the same object, its own
/// included. For a state-changing request first only the state-changing operations on the
/// object (what a session may read is no evidence of what it may change), when they can
/// decide; otherwise every operation on it, with the writes' and the others' counts apart
/// ([`Evidence::split`]) once the writes number at least `min_seen`. `None` when there is
/// too little evidence, or the parameter is enum-like.
///
/// Own evidence that has `min_seen` values but cannot decide (a password change learned 31
/// times) must not shadow the pooled evidence: it would judge nothing, and every foreign
/// password change after the 30th honest one would pass.
fn evidence<'m>(
    j: &Judged<'m>,
    name: &str,
    min_seen: u64,
    bounds: (f64, f64),
) -> Option<Evidence<'m>> {
    let stats = j.op_stats()?;
    let own = stats
        .lineage
        .params
        .get(name)
        .filter(|c| c.seen >= min_seen);
    if let Some(own) = own {
        if !high_cardinality(stats, name) {
            return None;
        }
        if decisive(own.seen, bounds) {
            return Some(Evidence {
                learned: std::borrow::Cow::Borrowed(own),
                scope: Scope::Own,
                split: None,
            });
        }
    }
    let var = name.strip_prefix("path.")?;
    let ctx: &'m crate::detect::request::RequestContext<'m> = j.ctx;
    let prefix = object_prefix(&ctx.operation.template, var)?;
    let mut split = Split::default();
    let mut many_values = false;
    for op in &j.model.operations {
        if on_object(&op.template, prefix)
            && let Some(c) = op.lineage.params.get(name)
        {
            if template_changes_state(&op.template) {
                split.writes.add_counts(c);
            } else {
                split.others.add_counts(c);
            }
            many_values |= high_cardinality(op, name);
        }
    }
    let mut all = OriginCounts::default();
    all.add_counts(&split.writes);
    all.add_counts(&split.others);
    if all.seen < min_seen || !many_values {
        return None;
    }
    let write = changes_state(ctx.method.as_str());
    if write && split.writes.seen >= min_seen && decisive(split.writes.seen, bounds) {
        return Some(Evidence {
            learned: std::borrow::Cow::Owned(split.writes),
            scope: Scope::Pooled {
                prefix,
                writes_only: true,
            },
            split: None,
        });
    }
    let split =
        (write && split.writes.seen >= min_seen && decisive(all.seen, bounds)).then_some(split);
    Some(Evidence {
        learned: std::borrow::Cow::Owned(all),
        scope: Scope::Pooled {
            prefix,
            writes_only: false,
        },
        split,
    })
}

/// One origin class of a request's value, judged.
#[derive(Debug, Clone, Copy)]
struct Bound {
    class: OriginClass,
    /// Learned requests whose value had it, and its share's upper credible bound.
    count: u64,
    upper: f64,
    /// Probable by the evidence, but credibly lacking from the writes on the object.
    lacked: Option<Lacked>,
}

/// Why a value is flagged.
enum Reason {
    /// Every origin it has is improbable (or credibly lacking from the writes).
    Origins(Vec<Bound>),
    /// A state-changing request's value that no claim of the session's token names, where
    /// (nearly) every learned value was one: `count` learned values were not, with upper
    /// credible bound `upper`, or the writes credibly lack such values (`lacked`).
    NotClaimed {
        classes: Vec<OriginClass>,
        count: u64,
        upper: f64,
        lacked: Option<Lacked>,
    },
}

/// Judges the request's reference-like parameters against their learned origins.
pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    state: Option<&LineageState>,
    address: Option<&LineageState>,
    claims: &dyn Fn() -> Vec<(String, u64)>,
    keys: &ValueKeys,
) -> Option<Finding> {
    if state.is_some_and(LineageState::incomplete) || history_lost(j.ctx.recent) {
        return None;
    }
    let (credibility, limit) = sequence_bounds(config.sensitivity);
    let min_seen = j.learning.min_operation_requests.max(1);
    let write = changes_state(j.ctx.method.as_str());
    let mut token: Option<Vec<(String, u64)>> = None;
    for c in candidates(j.params) {
        let name = c.obs.name.as_str();
        let Some(ev) = evidence(j, name, min_seen, (credibility, limit)) else {
            continue;
        };
        let learned = &*ev.learned;
        let claims = token.get_or_insert_with(claims);
        let origins = origins_of(keys.hash(&c.value), claims, state, address, j.model);
        let classes: &[OriginClass] = if origins.classes.is_empty() {
            &[OriginClass::Input]
        } else {
            &origins.classes
        };
        let bounds: Vec<Bound> = classes
            .iter()
            .map(|&class| {
                let count = learned.count(class);
                let upper = upper_bound(count, learned.seen, credibility);
                let lacked = if upper < limit {
                    None
                } else {
                    ev.split
                        .as_ref()
                        .and_then(|s| writes_lack(s, |o| o.count(class), credibility))
                };
                Bound {
                    class,
                    count,
                    upper,
                    lacked,
                }
            })
            .collect();
        let reason = if bounds.iter().all(|b| b.upper < limit || b.lacked.is_some()) {
            Reason::Origins(bounds)
        } else if write
            && !claims.is_empty()
            && !classes.contains(&OriginClass::Claim)
            && let Some((count, upper, lacked)) = not_claimed(&ev, (credibility, limit))
        {
            Reason::NotClaimed {
                classes: classes.to_vec(),
                count,
                upper,
                lacked,
            }
        } else {
            continue;
        };
        return Some(found(
            j,
            config,
            &c,
            &ev,
            &reason,
            (credibility, limit),
            claims,
        ));
    }
    None
}

/// Whether the evidence makes a value that is no claim of the session's token improbable
/// for a state-changing request: (learned values that were no claim, their share's upper
/// credible bound, how the writes credibly lack them when only that says so).
fn not_claimed(
    ev: &Evidence<'_>,
    (credibility, limit): (f64, f64),
) -> Option<(u64, f64, Option<Lacked>)> {
    let learned = &*ev.learned;
    let count = learned.seen.saturating_sub(learned.claim);
    if !upper_bound_reaches(count, learned.seen, credibility, limit) {
        return Some((count, upper_bound(count, learned.seen, credibility), None));
    }
    let lacked = writes_lack(
        ev.split.as_ref()?,
        |o| o.seen.saturating_sub(o.claim),
        credibility,
    )?;
    Some((
        count,
        upper_bound(count, learned.seen, credibility),
        Some(lacked),
    ))
}

/// The named sources of the evidence (gathered again for a pooled one: judging counts only).
fn sources_of(j: &Judged<'_>, name: &str, ev: &Evidence<'_>) -> Vec<String> {
    let pooled;
    let (learned, seen) = match ev.scope {
        Scope::Own => (&*ev.learned, ev.learned.seen),
        Scope::Pooled {
            prefix,
            writes_only,
        } => {
            let mut all = OriginCounts::default();
            for op in &j.model.operations {
                if on_object(&op.template, prefix)
                    && (!writes_only || template_changes_state(&op.template))
                    && let Some(c) = op.lineage.params.get(name)
                {
                    all.add(c);
                }
            }
            pooled = all;
            (&pooled, pooled.seen)
        }
    };
    learned
        .top_sources()
        .into_iter()
        .take(3)
        .map(|(s, n)| format!("{s} ({})", percent(n as f64 / seen.max(1) as f64)))
        .collect()
}

/// "… (at most 2 % with 95 % credibility, limit 1 %)".
fn bound_text(upper: f64, credibility: f64, limit: f64) -> String {
    format!(
        "at most {} with {} credibility, limit {}",
        percent(upper),
        percent(credibility),
        percent(limit)
    )
}

/// "but none of the 120 learned state-changing requests on /users/{var1} had one (…), while
/// at least 41 % of the 800 other requests on it did".
fn lacked_text(l: &Lacked, prefix: &str, credibility: f64) -> String {
    format!(
        "but none of the {} learned state-changing requests on {prefix} had one (at most {} with {} credibility), while {} of the {} other requests on it did (at least {}): what a session may read is no evidence of what it may change",
        l.writes,
        percent(l.writes_upper),
        percent(credibility),
        l.others_count,
        l.others,
        percent(l.others_lower),
    )
}

fn found(
    j: &Judged<'_>,
    config: &DetectorConfig,
    c: &Candidate<'_>,
    ev: &Evidence<'_>,
    reason: &Reason,
    (credibility, limit): (f64, f64),
    claims: &[(String, u64)],
) -> Finding {
    let name = c.obs.name.as_str();
    let learned = &*ev.learned;
    let shown = if c.obs.location == Location::Path {
        format!("{} ({name})", bounded(&c.value, 64))
    } else {
        name.to_owned()
    };
    let classes: Vec<OriginClass> = match reason {
        Reason::Origins(bounds) => bounds.iter().map(|b| b.class).collect(),
        Reason::NotClaimed { classes, .. } => classes.clone(),
    };
    let had = classes
        .iter()
        .map(|class| class.as_str())
        .collect::<Vec<_>>()
        .join(" and ");
    let claim_names: Vec<&str> = claims.iter().map(|(n, _)| n.as_str()).collect();
    let token = if claim_names.is_empty() {
        "the session has no token claims".to_owned()
    } else {
        format!(
            "the session's token names someone else ({})",
            claim_names.join(", ")
        )
    };
    let (prefix, writes_only) = match ev.scope {
        Scope::Own => (None, false),
        Scope::Pooled {
            prefix,
            writes_only,
        } => (Some(prefix), writes_only),
    };
    let scope = match (prefix, writes_only) {
        (None, _) => "learned requests".to_owned(),
        (Some(prefix), true) => format!(
            "learned state-changing requests (not GET, HEAD, OPTIONS or TRACE) to operations on {prefix}"
        ),
        (Some(prefix), false) if ev.split.is_some() => format!(
            "learned requests to operations on {prefix}, reads included (too few state-changing ones to decide alone)"
        ),
        (Some(prefix), false) => format!("learned requests to operations on {prefix}"),
    };
    let object = prefix.unwrap_or("the object");
    let origin_text = if classes.contains(&OriginClass::Input) {
        format!(
            "a value that no claim of the session's token, no earlier answer and no earlier request of this session carried ({token})"
        )
    } else if matches!(reason, Reason::NotClaimed { .. }) {
        format!(
            "a value that no claim of the session's token names ({token}); its origin in this session is {had}"
        )
    } else {
        format!("a value whose only origin in this session is {had}")
    };
    let counts = match reason {
        Reason::Origins(bounds) => bounds
            .iter()
            .map(|b| {
                let what = if b.class == OriginClass::Input {
                    "no such origin".to_owned()
                } else {
                    format!("a value from {}", b.class.as_str())
                };
                let lacked = b
                    .lacked
                    .map(|l| format!(", {}", lacked_text(&l, object, credibility)))
                    .unwrap_or_default();
                format!(
                    "{} had {what} ({}){lacked}",
                    b.count,
                    bound_text(b.upper, credibility, limit)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Reason::NotClaimed {
            count,
            upper,
            lacked,
            ..
        } => {
            let lacked = lacked
                .map(|l| format!(", {}", lacked_text(&l, object, credibility)))
                .unwrap_or_default();
            format!(
                "{count} had a value that was no claim of the session's token ({}){lacked}; a state-changing request here names the session's own object",
                bound_text(*upper, credibility, limit)
            )
        }
    };
    let sources = sources_of(j, name, ev).join(", ");
    let explanation = format!(
        "{} named {shown}, {origin_text}; of {} {scope}, {counts}; values came from {}",
        j.template(),
        learned.seen,
        if sources.is_empty() {
            "no named source".to_owned()
        } else {
            sources
        },
    );
    let lacked = match reason {
        Reason::Origins(bounds) => bounds.iter().find_map(|b| b.lacked),
        Reason::NotClaimed { lacked, .. } => *lacked,
    };
    let evidence = json!({
        "operation": j.template(),
        "parameter": name,
        "origins": classes.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>(),
        "reason": match reason {
            Reason::Origins(_) => "improbableOrigin",
            Reason::NotClaimed { .. } => "notTheTokensClaim",
        },
        "learnedRequests": learned.seen,
        "learned": {
            "claim": learned.claim,
            "response": learned.response,
            "request": learned.request,
            "input": learned.input,
        },
        "pooledOver": prefix,
        "writesOnly": writes_only,
        "writesLack": lacked.map(|l| json!({
            "stateChangingRequests": l.writes,
            "stateChangingUpper": l.writes_upper,
            "otherRequests": l.others,
            "otherRequestsWith": l.others_count,
            "otherLower": l.others_lower,
        })),
        "credibility": credibility,
        "limit": limit,
    });
    finding(
        FindingKind::IdentityLineage,
        Severity::High,
        config,
        explanation,
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of transactions (twenty values each) do not push out the few ids an account list
    /// gave or the session sent: the chattiest operation's oldest values go first.
    #[test]
    fn a_chatty_answer_pushes_out_its_own_values_first() {
        let keys = ValueKeys::default();
        let model = LearnedModel::default();
        let mut state = LineageState::default();
        for account in ["acc-30", "acc-31", "acc-32"] {
            state.remember(
                keys.hash(account),
                1,
                "accounts[].id",
                OriginClass::Response,
            );
        }
        state.remember(keys.hash("acc-32"), 2, "path.var1", OriginClass::Request);
        for page in 0..10 {
            for i in 0..20 {
                state.remember(
                    keys.hash(&format!("tx-{page}-{i}")),
                    3,
                    "items[].id",
                    OriginClass::Response,
                );
            }
        }
        assert!((MAX_VALUES - EVICT_BATCH..=MAX_VALUES).contains(&state.len()));
        for account in ["acc-30", "acc-31", "acc-32"] {
            let origins = origins_of(keys.hash(account), &[], Some(&state), None, &model);
            assert!(
                origins.classes.contains(&OriginClass::Response),
                "{account}: {origins:?}"
            );
        }
        let sent = origins_of(keys.hash("acc-32"), &[], Some(&state), None, &model);
        assert!(sent.classes.contains(&OriginClass::Request));
        // The pages' newest values are kept, their oldest are gone.
        let newest = origins_of(keys.hash("tx-9-19"), &[], Some(&state), None, &model);
        assert_eq!(newest.classes, vec![OriginClass::Response]);
        let oldest = origins_of(keys.hash("tx-0-0"), &[], Some(&state), None, &model);
        assert!(oldest.classes.is_empty());
    }

    #[test]
    fn session_values_are_bounded_and_hashed() {
        let keys = ValueKeys::default();
        let mut state = LineageState::default();
        for i in 0..(MAX_VALUES as u64 + 40) {
            state.remember(
                keys.hash(&format!("acc-{i}")),
                0,
                &format!("field{}", i % 20),
                OriginClass::Response,
            );
        }
        assert!((MAX_VALUES - EVICT_BATCH..=MAX_VALUES).contains(&state.len()));
        assert!(state.fields.len() <= MAX_FIELDS);
        assert!(state.fields.iter().all(|f| f.len() <= MAX_FIELD_LEN));
        // Oldest first out: the first values are gone, the last kept.
        let model = LearnedModel::default();
        let first = origins_of(keys.hash("acc-0"), &[], Some(&state), None, &model);
        assert!(first.classes.is_empty());
        let last = origins_of(
            keys.hash(&format!("acc-{}", MAX_VALUES + 39)),
            &[],
            Some(&state),
            None,
            &model,
        );
        assert_eq!(last.classes, vec![OriginClass::Response]);
        // A value remembered again is the newest: it outlives the values that came after it.
        let kept = keys.hash("acc-50");
        state.remember(kept, 0, "field0", OriginClass::Response);
        for i in 0..((MAX_VALUES - EVICT_BATCH) as u64 - 1) {
            state.remember(
                keys.hash(&format!("new-{i}")),
                0,
                "x",
                OriginClass::Response,
            );
        }
        let origins = origins_of(kept, &[], Some(&state), None, &model);
        assert_eq!(origins.classes, vec![OriginClass::Response]);
        // Answers stay read while sampled, then only when they supply later values often
        // enough.
        let mut lineage = OperationLineage::default();
        assert!(wants(&lineage));
        lineage.reads = PROBE_READS;
        assert!(!wants(&lineage), "never supplied anything");
        lineage.supplied = 3;
        assert!(wants(&lineage), "3 of 50 supplied a later value");
        lineage.reads = 1000;
        assert!(!wants(&lineage), "one in 1000 is coincidence");
        lineage.supplied = 60;
        assert!(wants(&lineage));
        // Only hashes are kept: no value text in the record.
        assert!(!format!("{state:?}").contains("acc-"));
    }

    #[test]
    fn objects_an_answer_or_the_token_named_are_not_counted_as_guessed() {
        use crate::model::hashing::stable_hash;
        use crate::model::value::text_facts;
        let keys = ValueKeys::default();
        let model = LearnedModel::default();
        let params = |values: &[&str]| RequestParams {
            params: values
                .iter()
                .map(|v| {
                    ParamObservation::new(
                        "path.var1".to_owned(),
                        Location::Path,
                        text_facts(v),
                        (*v).to_owned(),
                        false,
                    )
                })
                .collect(),
            object_ids: values.iter().map(|v| stable_hash(v.as_bytes())).collect(),
            ..RequestParams::default()
        };
        let mut state = LineageState::default();
        // A listing showed two titles; the session itself sent a third before.
        state.remember(
            keys.hash("silent-harbour"),
            0,
            "Books[].book_title",
            OriginClass::Response,
        );
        state.remember(
            keys.hash("lonely-garden"),
            0,
            "Books[].book_title",
            OriginClass::Response,
        );
        state.remember(
            keys.hash("typed-title"),
            1,
            "path.var1",
            OriginClass::Request,
        );
        let claims = || vec![("sub".to_owned(), keys.hash("maria.keller"))];
        let id = |v: &str| stable_hash(v.as_bytes());
        let mut address = LineageState::default();
        address.remember(
            keys.hash("public-title"),
            2,
            "Books[].book_title",
            OriginClass::Response,
        );
        let shown_with = |values: &[&str], state: Option<&LineageState>, address| {
            unshown_objects(&params(values), state, address, &[], &claims, &keys, &model)
        };
        let shown = |values: &[&str], state: Option<&LineageState>| shown_with(values, state, None);
        // What an anonymous listing showed the client's address counts as shown too, also
        // to a session that has no values of its own yet; nothing else does.
        assert!(shown_with(&["public-title"], Some(&state), Some(&address)).is_empty());
        assert!(shown_with(&["public-title"], None, Some(&address)).is_empty());
        assert_eq!(
            shown_with(&["deep-guess"], Some(&state), Some(&address)),
            vec![id("deep-guess")]
        );
        assert_eq!(
            shown(&["public-title"], Some(&state)),
            vec![id("public-title")]
        );
        assert!(shown(&["silent-harbour"], Some(&state)).is_empty());
        assert!(
            shown(&["maria.keller"], Some(&state)).is_empty(),
            "the token's subject"
        );
        // Guesses count, and so does a value the session only sent itself before.
        assert_eq!(shown(&["deep-guess"], Some(&state)), vec![id("deep-guess")]);
        assert_eq!(
            shown(&["typed-title"], Some(&state)),
            vec![id("typed-title")]
        );
        // A session with no values yet was shown nothing but its token's claims; one whose
        // values are unknown (an incomplete state) counts everything.
        assert_eq!(shown(&["silent-harbour"], None), vec![id("silent-harbour")]);
        assert!(shown(&["maria.keller"], None).is_empty());
        state.mark_incomplete();
        assert_eq!(
            shown(&["silent-harbour"], Some(&state)),
            vec![id("silent-harbour")]
        );
    }

    /// How answers were read before [`response_values`] streamed: the whole document
    /// built, then walked.
    fn response_values_by_tree(body: &[u8]) -> Vec<(String, String)> {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        walk(&value, &mut String::new(), 0, &mut out);
        out
    }

    fn walk(value: &Value, path: &mut String, depth: usize, out: &mut Vec<(String, String)>) {
        if out.len() >= MAX_RESPONSE_VALUES || depth > MAX_RESPONSE_DEPTH {
            return;
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(bounded(k, 32));
                    walk(v, path, depth + 1, out);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                let len = path.len();
                path.push_str("[]");
                for v in items {
                    walk(v, path, depth + 1, out);
                }
                path.truncate(len);
            }
            Value::String(s) if reference_like(s) => {
                out.push((path.clone(), s.clone()));
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                let text = n.to_string();
                if reference_like(&text) {
                    out.push((path.clone(), text));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_hash_bits_never_rule_out_a_value_the_record_holds() {
        let keys = ValueKeys::default();
        let mut state = LineageState::default();
        // Far more values than the record keeps: evictions rebuild the bits.
        for i in 0..1_000u32 {
            let op = u16::try_from(i % 5).unwrap();
            state.remember(
                keys.hash(&format!("v-{i}")),
                op,
                "id",
                OriginClass::Response,
            );
            for e in &state.entries {
                assert!(
                    state.maybe.may_hold(e.hash),
                    "value {i}: a held value ruled out"
                );
                assert!(
                    state.maybe_entry.may_hold(entry_key(e.hash, e.op, e.class)),
                    "value {i}: a held entry ruled out"
                );
            }
            let held = |hash| state.entries.iter().any(|e| e.hash == hash);
            let last = keys.hash(&format!("v-{i}"));
            assert!(held(last) && state.contains_given(last));
            assert_eq!(state.entries_of(last).count(), 1);
        }
        assert!(state.len() <= MAX_VALUES);
        let absent: Vec<u64> = (0..1_000)
            .map(|i| keys.hash(&format!("never-{i}")))
            .collect();
        assert!(absent.iter().all(|&h| state.entries_of(h).count() == 0));
        // Most values never given are ruled out by the bits alone.
        let ruled_out = absent.iter().filter(|&&h| !state.maybe.may_hold(h)).count();
        assert!(ruled_out > 500, "{ruled_out} of 1000 ruled out");
    }

    /// Values remembered again move to the newest end whether or not they were where the
    /// previous one was found (`LineageState::last_found`): the record keeps the order of a
    /// plain move-to-end list, through lists read again, shuffled and evicted.
    #[test]
    fn values_remembered_again_keep_the_order_of_their_last_use() {
        let keys = ValueKeys::default();
        let mut state = LineageState::default();
        let mut reference: Vec<(u64, u16)> = Vec::new();
        let mut next = 7u32;
        for round in 0..300u32 {
            // A page of 12 values: mostly the previous page's, sometimes shifted or new.
            for i in 0..12u32 {
                next = next.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let value = if next.is_multiple_of(7) {
                    round * 12 + i
                } else {
                    (round / 3) * 12 + i
                };
                let (hash, op) = (
                    keys.hash(&format!("p-{value}")),
                    u16::try_from(value % 3).unwrap(),
                );
                state.remember(hash, op, "id", OriginClass::Response);
                if let Some(at) = reference.iter().position(|&(h, o)| h == hash && o == op) {
                    let entry = reference.remove(at);
                    reference.push(entry);
                } else {
                    reference.push((hash, op));
                }
                // Evictions are the record's own business: follow them.
                reference.retain(|&(h, o)| state.entries.iter().any(|e| e.hash == h && e.op == o));
                let held: Vec<(u64, u16)> = state.entries.iter().map(|e| (e.hash, e.op)).collect();
                assert_eq!(held, reference, "round {round}, value {i}");
            }
        }
    }

    #[test]
    fn answers_read_in_one_pass_give_what_the_document_gives() {
        let long = "x".repeat(40);
        let deep =
            r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":"too-deep","id":"at-seven"},"id":"e-5"}}}}}}"#;
        let bodies = [
            r#"{"accounts":[{"id":4411,"name":"Main account","balance":12.5},{"id":"acc-2"}],"page":1,"owner":"maria.keller"}"#.to_owned(),
            r#"[{"id":"b-1","tags":["alpha-1","beta-2"]},{"id":18446744073709551615},{"id":-42},{"id":1e3}]"#.to_owned(),
            format!(r#"{{"{long}":"value-long-key","esc\u0061ped":"a\"b-12","nested":[[{{"x":"in-arrays"}}]],"n":null,"t":true}}"#),
            deep.to_owned(),
            r#""just-a-string""#.to_owned(),
            "4411".to_owned(),
        ];
        for body in &bodies {
            let mut streamed = response_values(body.as_bytes());
            let mut tree = response_values_by_tree(body.as_bytes());
            streamed.sort();
            tree.sort();
            assert_eq!(streamed, tree, "{body}");
        }
        // Values at most MAX_RESPONSE_DEPTH levels down, and no deeper.
        assert_eq!(
            response_values(deep.as_bytes()),
            vec![("a.b.c.d.e.id".to_owned(), "e-5".to_owned())]
        );
        for broken in [
            "{\"id\":\"acc-1\"",
            "{\"id\":\"acc-1\"} trailing",
            "",
            "[1,]",
        ] {
            assert!(response_values(broken.as_bytes()).is_empty(), "{broken}");
        }
        // At most MAX_RESPONSE_VALUES values, the first ones.
        let many: Vec<String> = (0..MAX_RESPONSE_VALUES + 10)
            .map(|i| format!("\"v-{i}\""))
            .collect();
        let values = response_values(format!("[{}]", many.join(",")).as_bytes());
        assert_eq!(values.len(), MAX_RESPONSE_VALUES);
        assert_eq!(values.first().map(|v| v.1.as_str()), Some("v-0"));
    }

    #[test]
    fn answers_give_reference_like_values_with_their_fields() {
        let body = br#"{"accounts":[{"id":4411,"name":"Main account","balance":12.5},{"id":"acc-2"}],"page":1,"owner":"maria.keller"}"#;
        let values = response_values(body);
        assert!(values.contains(&("accounts[].id".to_owned(), "4411".to_owned())));
        assert!(values.contains(&("accounts[].id".to_owned(), "acc-2".to_owned())));
        assert!(values.contains(&("owner".to_owned(), "maria.keller".to_owned())));
        // Free text, floats and one-character values are no references.
        assert!(
            !values
                .iter()
                .any(|(f, _)| f == "accounts[].name" || f == "page")
        );
        assert!(!values.iter().any(|(f, _)| f == "accounts[].balance"));
        assert!(response_values(b"not json").is_empty());
    }
}

/// The detector through the analyzer, on synthetic sessions named by a token's `sub`.
#[cfg(test)]
mod analyzer_tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use crate::config::{Action, DetectorsConfig, LearningConfig};
    use crate::detect::LearnedAnalyzer;
    use crate::detect::request::{Analyzer, RequestContext, ResponseSummary};
    use crate::detect::session_state::SessionState;
    use crate::finding::{Finding, FindingKind};
    use crate::operation::{Operation, OperationOrigin};
    use crate::session::{RecentOp, SessionSource};

    const OPS: [&str; 6] = [
        "GET /users/{var1}",
        "PUT /users/{var1}/email",
        "PUT /users/{var1}/password",
        "GET /books",
        "GET /books/{var1}",
        "GET /me",
    ];

    struct Session {
        user: String,
        token: String,
        state: SessionState,
        recent: Vec<RecentOp>,
    }

    struct Driver {
        analyzer: LearnedAnalyzer,
        ops: Vec<Operation>,
        now: u64,
    }

    fn token(sub: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": sub, "exp": 4_000_000_000u64 }),
            &jsonwebtoken::EncodingKey::from_secret(b"test"),
        )
        .unwrap()
    }

    impl Driver {
        fn new() -> Self {
            let learning = LearningConfig {
                min_requests: 200,
                min_sessions: 20,
                ..LearningConfig::default()
            };
            let analyzer =
                LearnedAnalyzer::new(&learning, &DetectorsConfig::all(Action::Block), None);
            let config = crate::config::parse_yaml(
                "upstream: { url: \"http://127.0.0.1:1\" }\nsession:\n  identifiers:\n    - jwtClaim: { claim: sub }\n",
            )
            .unwrap();
            analyzer.configure(&config);
            let ops = OPS
                .iter()
                .enumerate()
                .map(|(i, t)| Operation {
                    id: u32::try_from(i).unwrap(),
                    template: Arc::from(*t),
                    origin: OperationOrigin::Learned,
                })
                .collect();
            Self {
                analyzer,
                ops,
                now: 1_700_000_000_000,
            }
        }

        fn session(user: &str) -> Session {
            Session {
                user: user.to_owned(),
                token: token(user),
                state: SessionState::default(),
                recent: Vec::new(),
            }
        }

        /// A session of `user` that opened the book `title` owned by `owner` (operation 4):
        /// the owner's name is a value an earlier answer of the session gave.
        fn shown_a_book(&mut self, user: &str, title: &str, owner: &str) -> Session {
            let mut s = Self::session(user);
            let book = serde_json::json!({ "title": title, "owner": owner });
            self.send(&mut s, 4, Some(title), Some(book));
            s
        }

        /// One exchange; returns the findings of the request.
        fn send(
            &mut self,
            s: &mut Session,
            op: usize,
            var: Option<&str>,
            answer: Option<serde_json::Value>,
        ) -> Vec<Finding> {
            self.send_as(s, op, var, answer, false)
        }

        /// One exchange, the session flagged by it when `flagged` (as another detector would).
        fn send_as(
            &mut self,
            s: &mut Session,
            op: usize,
            var: Option<&str>,
            answer: Option<serde_json::Value>,
            flagged: bool,
        ) -> Vec<Finding> {
            self.now += 1_000;
            let operation = self.ops[op].clone();
            let method: http::Method = OPS[op].split(' ').next().unwrap().parse().unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "authorization",
                format!("Bearer {}", s.token).parse().unwrap(),
            );
            let path: Vec<(&str, &str)> = var.map(|v| vec![("var1", v)]).unwrap_or_default();
            let body = (method == http::Method::PUT)
                .then(|| serde_json::json!({ "email": format!("{}@example.net", s.user) }));
            let session_key = format!("jwt:sub={}", s.user);
            let ctx = RequestContext {
                now_ms: self.now,
                session: &session_key,
                session_source: SessionSource::Jwt,
                client: IpAddr::from([10, 0, 0, 1]),
                method: &method,
                operation: &operation,
                path_params: &path,
                query: &[],
                headers: &headers,
                body: body.as_ref(),
                recent: &s.recent,
                scratch: &Default::default(),
            };
            let mut findings = Vec::new();
            self.analyzer.inspect(&ctx, &mut s.state, &mut findings);
            let answer = answer.map(|a| a.to_string());
            let read = self.analyzer.wants_response(&operation);
            self.analyzer.observe(
                &ctx,
                &mut s.state,
                &ResponseSummary {
                    status: 200,
                    duration_us: 100,
                    body: answer.as_deref().filter(|_| read).map(str::as_bytes),
                    ..ResponseSummary::default()
                },
                flagged || !findings.is_empty(),
            );
            s.recent.push(RecentOp {
                op: operation.id,
                at_ms: self.now,
            });
            findings
        }

        /// An honest visit of user `i`: the catalogue, a book, its owner (from the answer),
        /// the own profile and an e-mail change (own name: the token's subject); one in 40 a
        /// password change (too few for the operation's own evidence).
        fn honest(&mut self, i: usize) -> Vec<Finding> {
            self.honest_changing(i, 40)
        }

        /// [`Driver::honest`] with a password change in one visit of `every`.
        fn honest_changing(&mut self, i: usize, every: usize) -> Vec<Finding> {
            self.visit(
                i,
                &Visit {
                    password_every: every,
                    ..Visit::default()
                },
            )
        }

        /// An honest visit of user `i` as `v` describes it.
        fn visit(&mut self, i: usize, v: &Visit) -> Vec<Finding> {
            let mut s = Self::session(&format!("reader.{i}"));
            let owner = format!("author.{}", i % 37);
            let title = format!("book-{}", i % 53);
            let mut found = Vec::new();
            let books = serde_json::json!({ "books": [{ "title": title, "owner": owner }] });
            found.extend(self.send(&mut s, 3, None, Some(books)));
            let book = serde_json::json!({ "title": title, "owner": owner });
            found.extend(self.send(&mut s, 4, Some(&title), Some(book)));
            found.extend(self.send(&mut s, 0, Some(&owner), None));
            let me = s.user.clone();
            if v.own_answer {
                let profile = serde_json::json!({ "username": me, "email": "me@example.net" });
                found.extend(self.send(&mut s, 5, None, Some(profile)));
            }
            found.extend(self.send(&mut s, 0, Some(&me), None));
            if i.is_multiple_of(v.email_every) {
                found.extend(self.send(&mut s, 1, Some(&me), None));
            }
            if i.is_multiple_of(v.password_every) {
                found.extend(self.send(&mut s, 2, Some(&me), None));
            }
            found
        }
    }

    /// What an honest visit does besides reading a book and its owner's profile.
    struct Visit {
        /// An e-mail change (of the own user) in one visit of this many.
        email_every: usize,
        /// A password change (of the own user) in one visit of this many.
        password_every: usize,
        /// The visit opens `GET /me` first, whose answer names the user (as the library's
        /// `GET /users/v1/me` does): the name the changes then send came from an answer
        /// too, not only from the token.
        own_answer: bool,
    }

    impl Default for Visit {
        fn default() -> Self {
            Self {
                email_every: 1,
                password_every: 40,
                own_answer: false,
            }
        }
    }

    fn lineage(findings: &[Finding]) -> Option<&Finding> {
        findings
            .iter()
            .find(|f| f.kind == FindingKind::IdentityLineage)
    }

    #[test]
    fn a_foreign_user_in_the_path_is_flagged_at_its_first_request() {
        let mut d = Driver::new();
        for i in 0..400 {
            let found = d.honest(i);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
        // Honest visits after learning are not flagged.
        for i in 1000..1100 {
            let found = d.honest(i);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
        // The password change of someone no claim, answer or request of the session named:
        // flagged at once, although the operation itself was learned from few requests (the
        // evidence of every operation on /users/{var1} is pooled).
        let mut mallory = Driver::session("mallory");
        let me = mallory.user.clone();
        assert!(lineage(&d.send(&mut mallory, 0, Some(&me), None)).is_none());
        let found = d.send(&mut mallory, 2, Some("reader.7"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert!(
            f.explanation
                .contains("PUT /users/{var1}/password named reader.7"),
            "{}",
            f.explanation
        );
        assert!(f.explanation.contains("claim sub"), "{}", f.explanation);
        assert_eq!(f.evidence["pooledOver"], "/users/{var1}");
        // The e-mail change of a user whose name only an answer gave (its values always were
        // the token's subject): the answer is no origin this parameter's values ever had.
        let mut eve = d.shown_a_book("eve", "book-1", "author.3");
        let found = d.send(&mut eve, 1, Some("author.3"), None);
        assert!(lineage(&found).is_some(), "{found:?}");
        // … while looking that user up, as honest readers do, is not.
        let found = d.send(&mut eve, 0, Some("author.3"), None);
        assert!(lineage(&found).is_none(), "{found:?}");
    }

    /// A password change learned more often than `minOperationRequests` (30) but too rarely
    /// to decide alone (below about 200 values even an origin none of them had is not
    /// improbable) is still judged by the evidence pooled over /users/{var1}. Before, its own
    /// thin evidence was taken and every foreign password change after the 30th honest one
    /// passed.
    #[test]
    fn own_evidence_too_thin_to_decide_is_pooled() {
        let mut d = Driver::new();
        for i in 0..400 {
            let found = d.honest_changing(i, 8);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
        let model = d.analyzer.snapshot();
        let own = model
            .op_index(OPS[2])
            .and_then(|op| model.operation(op))
            .and_then(|stats| stats.lineage.params.get("path.var1"))
            .map(|c| (c.seen, c.input))
            .unwrap();
        assert!((31..100).contains(&own.0) && own.1 == 0, "{own:?}");
        let mut mallory = Driver::session("mallory");
        let found = d.send(&mut mallory, 2, Some("reader.7"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert_eq!(f.evidence["pooledOver"], "/users/{var1}");
        // Honest password changes still pass.
        for i in 1000..1100 {
            let found = d.honest_changing(i, 8);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
    }

    #[test]
    fn thin_evidence_and_mixed_origins_flag_nothing() {
        let mut d = Driver::new();
        // Too few learned requests: nothing is judged.
        for i in 0..40 {
            d.honest(i);
        }
        let mut mallory = Driver::session("mallory");
        assert!(lineage(&d.send(&mut mallory, 2, Some("reader.7"), None)).is_none());
        // Books opened by a title typed by the reader as often as from the catalogue: that
        // parameter's origin is not near-certain, so a title from nowhere is not flagged.
        let mut d = Driver::new();
        for i in 0..400usize {
            let mut s = Driver::session(&format!("reader.{i}"));
            let title = format!("book-{}", i % 53);
            if i.is_multiple_of(2) {
                let books = serde_json::json!({ "books": [{ "title": title }] });
                d.send(&mut s, 3, None, Some(books));
            }
            d.send(&mut s, 4, Some(&title), None);
        }
        let mut eve = Driver::session("eve");
        assert!(lineage(&d.send(&mut eve, 4, Some("book-999"), None)).is_none());
    }

    /// (seen, without origin) of `GET /books/{var1}`'s `path.var1` in the analyzer's model.
    fn book_title_counts(d: &Driver) -> (u64, u64) {
        let model = d.analyzer.snapshot();
        model
            .op_index(OPS[4])
            .and_then(|op| model.operation(op))
            .and_then(|stats| stats.lineage.params.get("path.var1"))
            .map_or((0, 0), |c| (c.seen, c.input))
    }

    #[test]
    fn what_a_session_taught_before_it_was_flagged_is_taken_back() {
        let mut d = Driver::new();
        // Young model: nothing is judged yet, so every lesson is learned.
        for i in 0..10 {
            d.honest(i);
        }
        let before = book_title_counts(&d);
        assert_eq!(before.0, 10);
        // An enumerator's first guesses, before any detector is sure: one is learned without
        // an origin (a session counts once among them).
        let mut mallory = Driver::session("mallory");
        for n in 0..5 {
            let guess = format!("guess-{n}");
            let answer = serde_json::json!({ "title": guess });
            let found = d.send(&mut mallory, 4, Some(&guess), Some(answer));
            assert!(found.is_empty(), "{found:?}");
        }
        assert_eq!(book_title_counts(&d), (before.0 + 1, before.1 + 1));
        // Flagged now (by another detector): that lesson is taken back.
        d.send_as(&mut mallory, 3, None, None, true);
        assert_eq!(book_title_counts(&d), before);
        // An honest session that never gets flagged keeps what it taught.
        let mut walker = Driver::session("walker");
        let answer = serde_json::json!({ "title": "typed-title" });
        d.send(&mut walker, 4, Some("typed-title"), Some(answer));
        d.send(&mut walker, 3, None, None);
        assert_eq!(book_title_counts(&d), (before.0 + 1, before.1 + 1));
    }

    /// Changes the password of the owner of a book it opened: a name an earlier answer of
    /// the session gave, like the owners honest readers look up (`GET /users/{var1}` takes
    /// its values from answers and from the token), but no learned change of a user ever
    /// named anyone but the token's subject. Before, the thin password change was judged by
    /// every operation on /users/{var1}, the reads included, and passed.
    #[test]
    fn a_foreign_change_of_a_user_an_answer_named_is_flagged() {
        let mut d = Driver::new();
        for i in 0..400 {
            let found = d.honest(i);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
        let mut eve = d.shown_a_book("eve", "book-1", "author.3");
        // Reading that user's profile is what honest readers do …
        let found = d.send(&mut eve, 0, Some("author.3"), None);
        assert!(lineage(&found).is_none(), "{found:?}");
        // … changing its password is not.
        let found = d.send(&mut eve, 2, Some("author.3"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert_eq!(f.evidence["pooledOver"], "/users/{var1}");
        assert_eq!(f.evidence["writesOnly"], true);
        assert!(
            f.explanation.contains("state-changing requests"),
            "{}",
            f.explanation
        );
        // Straight from the book to the change: the answer is its value's only origin, one
        // that no learned change had.
        let mut eve = d.shown_a_book("eve.2", "book-2", "author.4");
        let found = d.send(&mut eve, 2, Some("author.4"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert_eq!(f.evidence["reason"], "improbableOrigin");
        assert_eq!(f.evidence["writesOnly"], true);
        // Honest visits after learning are not flagged.
        for i in 1000..1100 {
            let found = d.honest(i);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
    }

    /// The same with too few learned changes of a user to decide alone (an e-mail change in
    /// one visit of four: about 110 changes, below the about 200 needed for a never-seen
    /// origin to be improbable): judged by every operation on the object, except that what
    /// no learned change had, while the reads credibly had it more often than the changes
    /// could, is ruled out for a change.
    #[test]
    fn a_foreign_change_is_flagged_when_the_changes_are_few() {
        let mut d = Driver::new();
        let visit = Visit {
            email_every: 4,
            password_every: 40,
            own_answer: false,
        };
        for i in 0..400 {
            let found = d.visit(i, &visit);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
        let mut eve = d.shown_a_book("eve", "book-1", "author.3");
        let found = d.send(&mut eve, 0, Some("author.3"), None);
        assert!(lineage(&found).is_none(), "{found:?}");
        let found = d.send(&mut eve, 2, Some("author.3"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert_eq!(f.evidence["pooledOver"], "/users/{var1}");
        assert_eq!(f.evidence["writesOnly"], false);
        assert!(f.evidence["writesLack"].is_object(), "{}", f.evidence);
        let mut eve = d.shown_a_book("eve.2", "book-2", "author.4");
        let found = d.send(&mut eve, 2, Some("author.4"), None);
        let f = lineage(&found).expect("foreign password change flagged");
        assert_eq!(f.evidence["reason"], "improbableOrigin");
        assert!(f.evidence["writesLack"].is_object(), "{}", f.evidence);
        for i in 1000..1100 {
            let found = d.visit(i, &visit);
            assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
        }
    }

    /// Where the own profile's answer names the user (as `GET /users/v1/me` does), honest
    /// changes send a name that an answer gave too, so "an earlier answer" is no origin the
    /// changes lack; what they all had is the token's claim. A change of a user that no claim
    /// of the session's token names is flagged, with many learned changes and with few.
    #[test]
    fn a_change_of_a_user_the_token_does_not_name_is_flagged() {
        for email_every in [1, 4] {
            let mut d = Driver::new();
            let visit = Visit {
                email_every,
                password_every: 40,
                own_answer: true,
            };
            for i in 0..400 {
                let found = d.visit(i, &visit);
                assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
            }
            let model = d.analyzer.snapshot();
            let writes = model
                .op_index(OPS[1])
                .and_then(|op| model.operation(op))
                .and_then(|stats| stats.lineage.params.get("path.var1"))
                .map(|c| (c.seen, c.response))
                .unwrap();
            assert!(
                writes.1 * 10 > writes.0 * 9,
                "answers named the changed users: {writes:?}"
            );
            let mut eve = Driver::session("eve");
            let me = serde_json::json!({ "username": "eve", "email": "eve@example.net" });
            d.send(&mut eve, 5, None, Some(me));
            let book = serde_json::json!({ "title": "book-1", "owner": "author.3" });
            d.send(&mut eve, 4, Some("book-1"), Some(book));
            let found = d.send(&mut eve, 2, Some("author.3"), None);
            let f = lineage(&found)
                .unwrap_or_else(|| panic!("every {email_every}: foreign change flagged"));
            assert_eq!(f.evidence["pooledOver"], "/users/{var1}");
            assert_eq!(f.evidence["writesOnly"], email_every == 1);
            assert!(
                f.explanation.contains("no claim of the session's token"),
                "{}",
                f.explanation
            );
            for i in 1000..1100 {
                let found = d.visit(i, &visit);
                assert!(lineage(&found).is_none(), "honest visit {i}: {found:?}");
            }
        }
    }
}
