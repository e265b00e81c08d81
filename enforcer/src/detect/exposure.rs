//! Response-side exposure: what an answer gives away, against what the operation's answers
//! were learned to give away (docs/detection.md, "Response-side exposure").
//!
//! [`scan`] reads a bounded prefix of a JSON answer ([`MAX_SCAN_BYTES`]) in one pass, without
//! building a tree and without needing the whole body (a truncated prefix gives lower
//! bounds): the top-level field names, the records it holds (the longest array at the top
//! level or one level down) and the classes of sensitive values it carries
//! ([`SensitiveClass`]). No value is kept: the scan yields classes and counts only.
//!
//! [`check`] flags an answer that
//! - carries a sensitive class the operation's answers never carried, when the learned
//!   answers make that credible: the upper bound of the class's share (Jeffreys, as the
//!   sequence detector) is below the sensitivity's limit — about 200 answers without it at
//!   Medium. An operation with too few answers of its own (a rare export, an endpoint nobody
//!   calls) is judged against every answer of the API: a class no answer of the API ever
//!   carried;
//! - holds many times the records the operation returns (mass export, excessive data
//!   exposure): more than `factor ×` the supported p99 of its learned record counts (at least
//!   [`MIN_OWN_ANSWERS`] answers), or, for an operation with fewer, of every answer of the API
//!   (the API's page sizes bound its honest answers), and at least a floor.

use serde_json::json;

use crate::config::{DetectorConfig, Sensitivity};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::LearnedModel;
use crate::model::disclosure::{looks_like_card, looks_like_ssn};
use crate::model::exposure::{
    ClassSet, ExposureCounts, ExposureSample, MAX_FIELD_LEN, MAX_FIELDS, SensitiveClass,
};
use crate::model::histogram::LogHistogram;
use crate::model::sequence::{upper_bound, upper_bound_reaches};

use super::context::finding;
use super::thresholds::supported_quantile;

/// Most bytes of an answer scanned, and held back before relaying when the detector blocks
/// and the answer streams (docs/detection.md: the latency and memory this costs).
pub const MAX_SCAN_BYTES: usize = 64 * 1024;
/// Most bytes of a streamed answer scanned as it passes (chunk by chunk, with the bounded
/// state of a [`Scanner`], nothing held back): beyond, its counts are lower bounds. Bounds the
/// CPU one answer costs (one pass of a byte-wise state machine over at most this many bytes).
pub const MAX_STREAM_SCAN_BYTES: usize = 64 * 1024 * 1024;
/// Scanned answers an operation needs before its own record counts are its baseline.
pub const MIN_OWN_ANSWERS: u64 = 30;
/// Scanned answers the whole API needs before it is the baseline of its rare operations.
pub const MIN_API_ANSWERS: u64 = 200;
/// Deepest nesting the scanner follows (deeper values are still classified).
const MAX_DEPTH: usize = 64;
/// Longest string value classified (longer ones are classified on their first bytes).
const MAX_VALUE: usize = 256;

/// What one scanned answer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The body is JSON (an object or an array) as far as it was scanned.
    pub json: bool,
    /// The whole body was scanned.
    pub complete: bool,
    pub classes: ClassSet,
    /// The longest array at the top level or one level down (a lower bound when truncated).
    pub records: u64,
    /// Top-level field names (at most [`MAX_FIELDS`]).
    pub fields: Vec<String>,
}

impl Scan {
    /// The sample learned from this answer.
    pub fn sample(&self, anonymous: bool) -> ExposureSample {
        ExposureSample {
            scanned: self.json,
            anonymous,
            classes: self.classes,
            records: self.records,
            fields: self.fields.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone)]
struct Frame {
    kind: Container,
    /// Elements of an array seen so far.
    elements: u64,
    /// What the current key of an object (its value's key) says about its values
    /// ([`KeyHints`]), found once per key rather than once per value.
    hints: KeyHints,
    /// Expecting a key (objects) next.
    want_key: bool,
}

impl Frame {
    fn new(kind: Container) -> Self {
        Self {
            kind,
            elements: 0,
            hints: KeyHints::default(),
            want_key: kind == Container::Object,
        }
    }

    /// Takes `raw` (a key as it was written) as the current key.
    fn set_key(&mut self, raw: &[u8], known: &mut KnownKeys) {
        self.hints = known.hints(raw);
    }
}

/// A key normalised on the stack as `disclosure::normalised` does (ASCII alphanumerics, lower
/// case): its first 32 bytes and their count.
fn normalised_key(raw: &[u8]) -> ([u8; 32], usize) {
    let mut key = [0; 32];
    let mut len = 0;
    for (slot, b) in key
        .iter_mut()
        .zip(raw.iter().filter(|b| b.is_ascii_alphanumeric()))
    {
        *slot = b.to_ascii_lowercase();
        len += 1;
    }
    (key, len)
}

/// The hints of keys met before. An API's answers use the same few dozen keys (its records
/// repeat them, and so do its answers), while finding a key's hints searches it for every
/// name part of every class. Two-way set-associative by a hash of the key: bounded whatever
/// keys the answers carry, and a key whose slot another took is simply searched again.
#[derive(Debug, Clone)]
struct KnownKeys {
    slots: Box<[KnownKey; KNOWN_KEY_SLOTS]>,
}

const KNOWN_KEY_SLOTS: usize = 128;

#[derive(Debug, Clone, Copy, Default)]
struct KnownKey {
    /// The key as it was written.
    key: [u8; 32],
    /// Bytes of `key` in use; 0 with `filled` false: an empty slot.
    len: u8,
    filled: bool,
    hints: KeyHints,
}

impl Default for KnownKeys {
    fn default() -> Self {
        Self {
            slots: Box::new([KnownKey::default(); KNOWN_KEY_SLOTS]),
        }
    }
}

thread_local! {
    /// The keys this thread's scans met: shared by the answers it scans, one after the other.
    static KNOWN_KEYS: std::cell::RefCell<KnownKeys> = std::cell::RefCell::new(KnownKeys::default());
}

impl KnownKeys {
    /// The hints of `raw`, a key as it was written: keyed by those bytes, so that a key met
    /// before is neither normalised nor searched again. Keys longer than a slot are not kept.
    fn hints(&mut self, raw: &[u8]) -> KeyHints {
        let of = |raw: &[u8]| {
            let (key, len) = normalised_key(raw);
            KeyHints::of(key.get(..len).unwrap_or_default())
        };
        // FNV-1a: a few instructions per byte, and keys differ in their last bytes too.
        let hash = raw.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // Two ways per set, the one used last first: two keys an answer alternates between
        // that share a set do not take each other's place.
        let set = usize::try_from(hash % (KNOWN_KEY_SLOTS / 2) as u64).unwrap_or(0) * 2;
        let Some(ways) = self.slots.get_mut(set..set + 2).filter(|_| raw.len() <= 32) else {
            return of(raw);
        };
        let holds =
            |slot: &KnownKey| slot.filled && slot.key.get(..usize::from(slot.len)) == Some(raw);
        if let Some(first) = ways.first().filter(|slot| holds(slot)) {
            return first.hints;
        }
        if ways.get(1).is_some_and(holds) {
            ways.swap(0, 1);
            return ways.first().map_or_else(|| of(raw), |slot| slot.hints);
        }
        let hints = of(raw);
        // The way used last moves to the second place; the new key takes the first.
        ways.swap(0, 1);
        if let Some(slot) = ways.first_mut() {
            let n = raw.len().min(slot.key.len());
            if let (Some(dst), Some(src)) = (slot.key.get_mut(..n), raw.get(..n)) {
                dst.copy_from_slice(src);
                slot.len = u8::try_from(n).unwrap_or(0);
                slot.filled = true;
                slot.hints = hints;
            }
        }
        hints
    }
}

/// What a value's (normalised) key says about the value, for [`classify`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct KeyHints {
    password: bool,
    token: bool,
    national_id: bool,
    phone: bool,
}

impl KeyHints {
    fn of(key: &[u8]) -> Self {
        if key.is_empty() {
            return Self::default();
        }
        Self {
            password: key_has(
                key,
                &["password", "passwd", "pwd", "passhash", "hash", "secret"],
            ),
            token: key_has(key, &["token", "apikey", "jwt", "session", "bearer"]),
            national_id: key_has(key, &["ssn", "nationalid", "socialsecurity", "taxid"]),
            phone: key_has(key, &["phone", "mobile", "tel"]),
        }
    }
}

/// Scans a JSON answer's prefix (`complete`: `bytes` is the whole body). Anything that is not
/// JSON gives `json: false`.
pub fn scan(bytes: &[u8], complete: bool) -> Scan {
    let mut scanner = Scanner::new(MAX_SCAN_BYTES);
    scanner.feed(bytes);
    scanner.finish(complete)
}

/// The token the scanner is inside of, carried across the chunks of a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Between,
    /// Inside a string; `escaped`: the previous byte was a backslash.
    String {
        escaped: bool,
    },
    Number,
    /// `true`, `false` or `null`.
    Literal,
}

/// Scans an answer chunk by chunk as it streams, with bounded state: at most [`MAX_DEPTH`]
/// open containers, one value of at most [`MAX_VALUE`] bytes, [`MAX_FIELDS`] field names and
/// the counts. Bytes beyond `limit` are not read (the scan is then a lower bound).
#[derive(Debug, Clone)]
pub struct Scanner {
    out: Scan,
    /// The first non-blank byte was seen (and decided `out.json`).
    started: bool,
    stack: Vec<Frame>,
    /// Containers opened beyond [`MAX_DEPTH`] and not closed yet.
    depth_beyond: usize,
    token: Token,
    value: Vec<u8>,
    /// Bytes read so far, and the most that are read.
    read: usize,
    limit: usize,
    /// Bytes beyond `limit` were offered.
    truncated: bool,
}

impl Scanner {
    /// A scanner that reads at most `limit` bytes of the answer.
    pub fn new(limit: usize) -> Self {
        Self {
            out: Scan::default(),
            started: false,
            stack: Vec::with_capacity(8),
            depth_beyond: 0,
            token: Token::Between,
            value: Vec::with_capacity(MAX_VALUE),
            read: 0,
            limit,
            truncated: false,
        }
    }

    /// Bytes read so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// Bytes beyond the scanner's limit were offered (and not read).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Reads the next chunk of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.read);
        if chunk.len() > room {
            self.truncated = true;
        }
        let mut chunk = chunk.get(..room).unwrap_or(chunk);
        self.read += chunk.len();
        while let Some((&b, rest)) = chunk.split_first() {
            chunk = rest;
            if !self.started {
                if b.is_ascii_whitespace() {
                    continue;
                }
                self.started = true;
                self.out.json = matches!(b, b'{' | b'[');
            }
            if !self.out.json {
                return;
            }
            self.byte(b);
            if self.token == (Token::String { escaped: false }) {
                chunk = self.string_run(chunk);
            }
        }
    }

    /// Inside a string: takes the bytes up to the next quote or backslash at once (most of an
    /// answer's bytes are in strings, and this is where the scan spends its time), and
    /// returns what is left of `chunk` from that byte on.
    fn string_run<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let end = memchr::memchr2(b'"', b'\\', chunk).unwrap_or(chunk.len());
        let (run, rest) = chunk.split_at(end);
        let room = MAX_VALUE.saturating_sub(self.value.len());
        self.value
            .extend_from_slice(run.get(..room.min(run.len())).unwrap_or_default());
        rest
    }

    fn byte(&mut self, b: u8) {
        match self.token {
            Token::String { escaped: true } => {
                let kept = match b {
                    b'"' | b'\\' | b'/' => b,
                    _ => b'?',
                };
                self.push(kept);
                self.token = Token::String { escaped: false };
                return;
            }
            Token::String { escaped: false } => {
                match b {
                    b'"' => {
                        self.token = Token::Between;
                        self.end_string();
                    }
                    b'\\' => self.token = Token::String { escaped: true },
                    _ => self.push(b),
                }
                return;
            }
            Token::Number => {
                if b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-') {
                    self.push(b);
                    return;
                }
                self.token = Token::Between;
                self.end_number();
            }
            Token::Literal => {
                if b.is_ascii_alphabetic() {
                    return;
                }
                self.token = Token::Between;
            }
            Token::Between => {}
        }
        self.between(b);
    }

    fn push(&mut self, b: u8) {
        if self.value.len() < MAX_VALUE {
            self.value.push(b);
        }
    }

    /// A byte outside any token.
    fn between(&mut self, b: u8) {
        let (stack, out) = (&mut self.stack, &mut self.out);
        match b {
            b'{' | b'[' => {
                count_element(stack);
                if stack.len() < MAX_DEPTH {
                    stack.push(Frame::new(if b == b'{' {
                        Container::Object
                    } else {
                        Container::Array
                    }));
                } else {
                    self.depth_beyond += 1;
                }
            }
            b'}' | b']' => {
                if self.depth_beyond > 0 {
                    self.depth_beyond -= 1;
                } else if let Some(frame) = stack.pop() {
                    close(&frame, stack.len(), out);
                }
                if let Some(top) = stack.last_mut() {
                    top.want_key = top.kind == Container::Object;
                }
            }
            b',' => {
                if let Some(top) = stack.last_mut()
                    && top.kind == Container::Object
                {
                    top.want_key = true;
                }
            }
            b'"' => {
                self.value.clear();
                self.token = Token::String { escaped: false };
            }
            b'-' | b'0'..=b'9' => {
                self.value.clear();
                self.value.push(b);
                self.token = Token::Number;
            }
            b't' | b'f' | b'n' => {
                count_element(stack);
                self.token = Token::Literal;
            }
            _ => {}
        }
    }

    /// A string ended: a key, or a value to classify.
    fn end_string(&mut self) {
        let (stack, out, value) = (&mut self.stack, &mut self.out, &self.value);
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            return;
        };
        if top.want_key && self.depth_beyond == 0 {
            top.want_key = false;
            KNOWN_KEYS.with(|known| top.set_key(value, &mut known.borrow_mut()));
            if depth == 1 && out.fields.len() < MAX_FIELDS && value.len() <= MAX_FIELD_LEN {
                // Bounded as written: a byte that is not UTF-8 becomes three.
                let field = String::from_utf8_lossy(value);
                if field.len() <= MAX_FIELD_LEN && !out.fields.iter().any(|f| *f == field) {
                    out.fields.push(field.into_owned());
                }
            }
        } else {
            count_element(stack);
            let hints = stack.last().map(|f| f.hints).unwrap_or_default();
            classify(hints, value, &mut out.classes);
        }
    }

    /// A number ended: counted, and classified when it is all digits.
    fn end_number(&mut self) {
        count_element(&mut self.stack);
        let hints = self.stack.last().map(|f| f.hints).unwrap_or_default();
        if self.value.iter().all(u8::is_ascii_digit) {
            classify(hints, &self.value, &mut self.out.classes);
        }
    }

    /// What was scanned so far (`complete`: the answer ended and nothing of it was left
    /// unread). A token cut by the end counts as it stands; the arrays still open count what
    /// was seen of them.
    pub fn finish(mut self, complete: bool) -> Scan {
        match self.token {
            Token::String { .. } => self.end_string(),
            Token::Number => self.end_number(),
            Token::Literal | Token::Between => {}
        }
        self.out.complete = complete && !self.truncated();
        let open = std::mem::take(&mut self.stack);
        for (depth, frame) in open.iter().enumerate() {
            close(frame, depth, &mut self.out);
        }
        self.out
    }
}

/// A value starts in the innermost container: an array counts it.
fn count_element(stack: &mut [Frame]) {
    if let Some(top) = stack.last_mut()
        && top.kind == Container::Array
    {
        top.elements = top.elements.saturating_add(1);
    }
}

/// An array closed at `depth` (0: the body itself) counts as records when at most one level
/// down.
fn close(frame: &Frame, depth: usize, out: &mut Scan) {
    if frame.kind == Container::Array && depth <= 1 {
        out.records = out.records.max(frame.elements);
    }
}

fn key_has(key: &[u8], parts: &[&str]) -> bool {
    parts
        .iter()
        .any(|p| key.windows(p.len()).any(|w| w == p.as_bytes()))
}

/// Password-hash formats recognised by their prefix.
const HASH_PREFIXES: [&str; 7] = ["$2a$", "$2b$", "$2y$", "$argon2", "$pbkdf2", "$6$", "$5$"];

/// Adds the class of one value (with what its key says) to `classes`. One pass over the
/// value finds what each class needs (digits, its characters, an `@`), so that the fuller
/// checks run only on values that can pass them: an answer's values are mostly names, dates
/// and amounts, and this runs on every one of them.
fn classify(hints: KeyHints, value: &[u8], classes: &mut ClassSet) {
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let facts = ValueFacts::of(text.as_bytes());
    if hints.password
        || (text.starts_with('$') && HASH_PREFIXES.iter().any(|p| text.starts_with(p)))
    {
        classes.insert(SensitiveClass::Password);
    }
    let jwt = text.starts_with("eyJ") && text.split('.').count() == 3;
    if jwt || (text.len() >= 16 && hints.token) {
        classes.insert(SensitiveClass::Token);
    }
    if facts.card_chars && (13..=19).contains(&facts.digits) && looks_like_card(text) {
        classes.insert(SensitiveClass::CardNumber);
    }
    if (text.len() == 11 && looks_like_ssn(text)) || (facts.digits >= 6 && hints.national_id) {
        classes.insert(SensitiveClass::NationalId);
    }
    if facts.at && looks_like_email(text) {
        classes.insert(SensitiveClass::Email);
    }
    if facts.phone_chars
        && ((text.starts_with('+') && (8..=15).contains(&facts.digits))
            || ((7..=15).contains(&facts.digits) && hints.phone))
    {
        classes.insert(SensitiveClass::Phone);
    }
}

/// What one pass over a value finds, for [`classify`].
struct ValueFacts {
    digits: usize,
    /// Only digits, spaces and dashes (as a card number is written).
    card_chars: bool,
    /// Only digits and `+ -().` and spaces (as a phone number is written).
    phone_chars: bool,
    at: bool,
}

/// Per byte, what [`ValueFacts`] needs to know of it (one table load per byte of every value
/// an answer carries).
const DIGIT: u8 = 1;
const CARD_OK: u8 = 2;
const PHONE_OK: u8 = 4;
const AT: u8 = 8;
const BYTE_FACTS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = if byte.is_ascii_digit() {
            DIGIT | CARD_OK | PHONE_OK
        } else {
            let card = if matches!(byte, b' ' | b'-') {
                CARD_OK
            } else {
                0
            };
            let phone = if matches!(byte, b'+' | b' ' | b'-' | b'(' | b')' | b'.') {
                PHONE_OK
            } else {
                0
            };
            let at = if byte == b'@' { AT } else { 0 };
            card | phone | at
        };
        b += 1;
    }
    table
};

impl ValueFacts {
    fn of(bytes: &[u8]) -> Self {
        let (mut digits, mut all, mut any) = (0, CARD_OK | PHONE_OK, 0);
        for &b in bytes {
            let facts = BYTE_FACTS[usize::from(b)];
            digits += usize::from(facts & DIGIT);
            all &= facts;
            any |= facts;
        }
        Self {
            digits,
            card_chars: all & CARD_OK != 0,
            phone_chars: all & PHONE_OK != 0,
            at: any & AT != 0,
        }
    }
}

fn looks_like_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains(char::is_whitespace)
        && domain.len() >= 3
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
}

/// Credibility and limit of "never carried" per sensitivity (as the sequence detector's).
fn novelty_bound(sensitivity: Sensitivity) -> (f64, f64) {
    match sensitivity {
        Sensitivity::Low => (0.99, 0.002),
        Sensitivity::Medium => (0.95, 0.01),
        Sensitivity::High => (0.90, 0.02),
    }
}

/// Records threshold: `factor ×` the supported p99 of the learned record counts, at least
/// `floor`.
fn records_factor(sensitivity: Sensitivity) -> (u64, u64) {
    match sensitivity {
        Sensitivity::Low => (20, 100),
        Sensitivity::Medium => (10, 50),
        Sensitivity::High => (5, 25),
    }
}

/// The supported p99 of a record histogram: the upper end of the bucket where the top
/// `1 − q` of the answers start, with `q` lowered so that more than 3 answers lie beyond it
/// (`thresholds::supported_quantile`).
pub fn records_p99(records: &LogHistogram) -> u64 {
    let total = records.total();
    if total == 0 {
        return 0;
    }
    let q = supported_quantile(0.99, total);
    let tail = ((1.0 - q) * total as f64).floor() as u64;
    let mut above = 0u64;
    for (bucket, count) in records.counts.iter().enumerate().rev() {
        above += count;
        if above > tail {
            return LogHistogram::length_bucket_upper(bucket) as u64;
        }
    }
    0
}

/// The baseline an answer of `own` is judged against: its own counts when they have
/// [`MIN_OWN_ANSWERS`], else every answer of the API when it has [`MIN_API_ANSWERS`].
pub enum Baseline<'a> {
    Own(&'a ExposureCounts),
    Api(ExposureCounts),
}

impl Baseline<'_> {
    fn counts(&self) -> &ExposureCounts {
        match self {
            Self::Own(c) => c,
            Self::Api(c) => c,
        }
    }

    fn name(&self, template: &str) -> String {
        match self {
            Self::Own(_) => format!("learned answers of {template}"),
            Self::Api(_) => "learned answers of the whole API".to_owned(),
        }
    }
}

/// The baseline of operation `template` (see [`Baseline`]), `None` while neither has support.
pub fn baseline<'a>(model: &'a LearnedModel, template: &str) -> Option<Baseline<'a>> {
    let own = model
        .op_index(template)
        .and_then(|i| model.operation(i))
        .map(|s| &s.exposure);
    if let Some(own) = own
        && own.answers >= MIN_OWN_ANSWERS
    {
        return Some(Baseline::Own(own));
    }
    let mut api = ExposureCounts::default();
    for op in &model.operations {
        api.answers += op.exposure.answers;
        api.records.merge(&op.exposure.records);
        for (name, n) in &op.exposure.classes {
            *api.classes.entry(name.clone()).or_insert(0) += n;
        }
    }
    (api.answers >= MIN_API_ANSWERS).then_some(Baseline::Api(api))
}

/// Judges one 2xx answer of operation `template` against the learned model.
pub fn check(
    model: &LearnedModel,
    template: &str,
    scan: &Scan,
    config: &DetectorConfig,
) -> Option<Finding> {
    if !scan.json {
        return None;
    }
    let base = baseline(model, template)?;
    let counts = base.counts();
    let (credibility, limit) = novelty_bound(config.sensitivity);
    let novel: Vec<SensitiveClass> = scan
        .classes
        .iter()
        .filter(|c| counts.class_count(*c) == 0)
        .filter(|_| !upper_bound_reaches(0, counts.answers, credibility, limit))
        .collect();
    let p99 = records_p99(&counts.records);
    let (factor, floor) = records_factor(config.sensitivity);
    let threshold = p99.saturating_mul(factor).max(floor);
    let mass = scan.records > threshold;
    if novel.is_empty() && !mass {
        return None;
    }
    let of = base.name(template);
    let mut clauses = Vec::new();
    if mass {
        let at_least = if scan.complete { "" } else { "at least " };
        clauses.push(format!(
            "answered {template} with {at_least}{} records; 99% of the {} {of} held at most {p99} (threshold {threshold})",
            scan.records, counts.answers
        ));
    }
    if !novel.is_empty() {
        let names: Vec<&str> = novel.iter().map(|c| c.describe()).collect();
        clauses.push(format!(
            "answered {template} with {}, which none of the {} {of} carried (at most {:.1}% with {:.0}% credibility, limit {}%)",
            names.join(" and "),
            counts.answers,
            upper_bound(0, counts.answers, credibility) * 100.0,
            credibility * 100.0,
            limit * 100.0
        ));
    }
    let evidence = json!({
        "operation": template,
        "records": scan.records,
        "complete": scan.complete,
        "recordsP99": p99,
        "recordsThreshold": threshold,
        "newClasses": novel.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "classes": scan.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "learnedAnswers": counts.answers,
        "baseline": match base { Baseline::Own(_) => "operation", Baseline::Api(_) => "api" },
    });
    Some(finding(
        FindingKind::Exposure,
        Severity::High,
        config,
        clauses.join("; "),
        evidence,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;
    use crate::model::disclosure::normalised;

    fn classes(scan: &Scan) -> Vec<&'static str> {
        scan.classes.iter().map(SensitiveClass::as_str).collect()
    }

    #[test]
    fn known_keys_give_the_hints_of_the_key_whatever_took_their_slot_before() {
        let mut known = KnownKeys::default();
        let names = [
            "password",
            "api_Token",
            "Phone",
            "ssn",
            "name",
            "id",
            "mobile-tel",
            "a_very_long_key_name_that_does_not_fit_a_slot_password",
        ];
        // Far more keys than slots, each met twice: slots are taken over many times.
        let keys: Vec<String> = (0..1_000)
            .map(|i| format!("{}{i}", names[i % names.len()]))
            .collect();
        for key in keys.iter().chain(&keys) {
            let (normal, len) = normalised_key(key.as_bytes());
            let expected = KeyHints::of(normal.get(..len).unwrap_or_default());
            assert_eq!(known.hints(key.as_bytes()), expected, "{key:?}");
        }
    }

    #[test]
    fn scans_fields_records_and_classes() {
        let body = br#"{"records":[{"orderId":1,"customer":"ann@example.net"},{"orderId":2,"customer":"bob@example.org"}],"page":1}"#;
        let s = scan(body, true);
        assert!(s.json && s.complete);
        assert_eq!(s.records, 2);
        assert_eq!(s.fields, vec!["records".to_owned(), "page".to_owned()]);
        assert_eq!(classes(&s), vec!["email"]);

        let body = br#"[{"username":"ann","password":"$2b$12$abcdefghijklmnopqrstuv","ssn":"078-05-1120"},
            {"username":"bob","password":"hunter2","card":"4111 1111 1111 1111","phone":"+31 6 1234 5678",
             "auth_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"}]"#;
        let s = scan(body, true);
        assert_eq!(s.records, 2);
        assert!(s.fields.is_empty(), "a top-level array has no fields");
        assert_eq!(
            classes(&s),
            vec!["password", "token", "cardNumber", "nationalId", "phone"]
        );
        // Numbers are classified too (a card number sent as a JSON number).
        assert_eq!(
            classes(&scan(br#"{"pan":4111111111111111}"#, true)),
            vec!["cardNumber"]
        );
        // Harmless values are no class.
        let s = scan(
            br#"{"items":[{"sku":"SKU-10007","price":12.5,"name":"Kettle","orderId":500001}],"total":3}"#,
            true,
        );
        assert!(s.classes.is_empty(), "{:?}", classes(&s));
        assert!(!scan(b"<html>", true).json);
    }

    #[test]
    fn a_truncated_prefix_gives_lower_bounds() {
        let mut body = String::from(r#"{"records":["#);
        for i in 0..10_000 {
            body.push_str(&format!(
                r#"{{"orderId":{i},"customer":"c{i}@example.net"}},"#
            ));
        }
        let prefix = body.get(..MAX_SCAN_BYTES / 2).unwrap_or(&body);
        let s = scan(prefix.as_bytes(), false);
        assert!(!s.complete);
        assert!(s.records > 300 && s.records < 1000, "{}", s.records);
        assert!(body.len() > MAX_SCAN_BYTES);
        assert_eq!(classes(&s), vec!["email"]);
        // A scan never reads beyond its cap.
        let s = scan(body.as_bytes(), false);
        assert!(s.records < 10_000, "{}", s.records);
    }

    #[test]
    fn a_body_in_chunks_scans_as_in_one_piece() {
        let body = br#"{"records":[{"id":1,"mail":"ann@example.net","pan":4111111111111111},
            {"id":-2.5e3,"ok":true,"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln","note":"a \"q\" \\ b"},
            {"nested":{"deep":[1,2,3]},"ssn":"078-05-1120","x":null}],"page":1,"phone":"+31 6 1234 5678"}"#;
        let whole = scan(body, true);
        assert_eq!(whole.records, 3);
        assert_eq!(
            classes(&whole),
            vec!["token", "cardNumber", "nationalId", "email", "phone"]
        );
        // Every split point, and byte by byte: the state carried across chunks is exact.
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            let mut s = Scanner::new(MAX_STREAM_SCAN_BYTES);
            s.feed(a);
            s.feed(b);
            assert_eq!(s.finish(true), whole, "split at {at}");
        }
        let mut s = Scanner::new(MAX_STREAM_SCAN_BYTES);
        for b in body.chunks(1) {
            s.feed(b);
        }
        assert_eq!(s.finish(true), whole);
    }

    /// The classification as it was written before [`KeyHints`] and [`ValueFacts`]: every
    /// check on every value, the key searched for each class.
    fn classify_by_definition(key: &[u8], value: &[u8]) -> ClassSet {
        let mut classes = ClassSet::default();
        let Ok(text) = std::str::from_utf8(value) else {
            return classes;
        };
        let text = text.trim();
        if text.is_empty() {
            return classes;
        }
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        if key_has(
            key,
            &["password", "passwd", "pwd", "passhash", "hash", "secret"],
        ) || HASH_PREFIXES.iter().any(|p| text.starts_with(p))
        {
            classes.insert(SensitiveClass::Password);
        }
        let jwt = text.starts_with("eyJ") && text.split('.').count() == 3;
        if jwt
            || (text.len() >= 16 && key_has(key, &["token", "apikey", "jwt", "session", "bearer"]))
        {
            classes.insert(SensitiveClass::Token);
        }
        if looks_like_card(text) {
            classes.insert(SensitiveClass::CardNumber);
        }
        if looks_like_ssn(text)
            || (digits >= 6 && key_has(key, &["ssn", "nationalid", "socialsecurity", "taxid"]))
        {
            classes.insert(SensitiveClass::NationalId);
        }
        if looks_like_email(text) {
            classes.insert(SensitiveClass::Email);
        }
        let phone_chars = text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-' | b'(' | b')' | b'.'));
        if phone_chars
            && ((text.starts_with('+') && (8..=15).contains(&digits))
                || ((7..=15).contains(&digits) && key_has(key, &["phone", "mobile", "tel"])))
        {
            classes.insert(SensitiveClass::Phone);
        }
        classes
    }

    #[test]
    fn values_are_classified_as_by_the_definition() {
        let keys = [
            "",
            "password",
            "newpwd",
            "hash",
            "apitoken",
            "sessionid",
            "ssn",
            "taxid",
            "phone",
            "mobilenr",
            "tel",
            "name",
            "email",
            "hotel",
        ];
        let seeds = [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111112",
            "078-05-1120",
            "078 05 1120",
            "+31 6 1234 5678",
            "(020) 555-0101",
            "ann@example.net",
            "a@b.c",
            "@x.io",
            "$2b$12$abcdefghijklmnopqrstuv",
            "$argon2id$v=19",
            "$5$rounds",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            "eyJ.a",
            "0123456789abcdef0123",
            "123456",
            "1234567",
            "  +123456789  ",
            "Ünïcødé 123",
            "",
            " ",
            "12.5",
            "-3",
        ];
        // Every seed, and every seed with one byte of a small alphabet put at every place:
        // values one character away from each class.
        let alphabet = b"0 -+@.$(eyJ";
        let mut values: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
        for seed in seeds {
            for at in 0..=seed.len() {
                for &b in alphabet {
                    let mut v = seed.as_bytes().to_vec();
                    v.insert(at, b);
                    values.push(v.clone());
                    if at < seed.len() {
                        v.remove(at + 1);
                        values.push(v);
                    }
                }
            }
        }
        for key in keys {
            let mut frame = Frame::new(Container::Object);
            frame.set_key(key.as_bytes(), &mut KnownKeys::default());
            let mut again = Frame::new(Container::Object);
            let mut known = KnownKeys::default();
            for other in keys.iter().chain([&key]) {
                again.set_key(other.as_bytes(), &mut known);
            }
            assert_eq!(again.hints, frame.hints, "{key} after the other keys");
            let (normal, len) = normalised_key(key.as_bytes());
            assert_eq!(normal.get(..len), Some(normalised(key).as_bytes()));
            for value in &values {
                let mut classes = ClassSet::default();
                classify(frame.hints, value, &mut classes);
                assert_eq!(
                    classes,
                    classify_by_definition(key.as_bytes(), value),
                    "key {key:?}, value {:?}",
                    String::from_utf8_lossy(value)
                );
            }
        }
    }

    #[test]
    fn keys_are_normalised_as_names_are() {
        for raw in [
            "new_Password",
            "API-Token",
            "Ünïcødé_Key",
            "a".repeat(40).as_str(),
            "",
        ] {
            let (key, len) = normalised_key(raw.as_bytes());
            let name = normalised(raw);
            let expected = name.as_bytes().get(..32.min(name.len())).unwrap();
            assert_eq!(key.get(..len).unwrap(), expected, "{raw}");
        }
    }

    #[test]
    fn long_strings_and_escapes_split_anywhere_scan_alike() {
        let long = "x".repeat(300);
        let body = format!(
            r#"[{{"note":"{long}\"q\" 4111 1111 1111 1111","password":"{long}"}},{{"phone":"+31 6 1234 5678","a\\b":"c\u0041@d.io"}}]"#
        );
        let whole = scan(body.as_bytes(), true);
        assert_eq!(whole.records, 2);
        for at in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(at);
            let mut s = Scanner::new(MAX_STREAM_SCAN_BYTES);
            s.feed(a);
            s.feed(b);
            assert_eq!(s.finish(true), whole, "split at {at}");
        }
    }

    #[test]
    fn a_streamed_scan_reads_up_to_its_limit_and_says_so() {
        let mut s = Scanner::new(10);
        s.feed(b"[1,2,3,");
        s.feed(b"4,5,6,7,8");
        assert!(s.truncated());
        assert_eq!(s.read(), 10);
        let out = s.finish(true);
        assert!(!out.complete, "a truncated answer is a lower bound");
        assert_eq!(out.records, 5);
        // Not JSON: nothing is judged, whatever follows.
        let mut s = Scanner::new(MAX_STREAM_SCAN_BYTES);
        s.feed(b"  <html>");
        s.feed(b"[1,2]");
        assert!(!s.finish(true).json);
    }

    #[test]
    fn deep_or_broken_input_does_not_panic() {
        let deep = "[".repeat(10_000);
        let s = scan(deep.as_bytes(), true);
        assert_eq!(s.records, 1);
        for junk in [&b"{\"a\":\"\\"[..], b"]]]]}}}", b"{\"\":", b"[\"\\u12"] {
            let _ = scan(junk, false);
        }
    }

    fn learned(answers: u64, records: u64, class: Option<SensitiveClass>) -> LearnedModel {
        let mut model = LearnedModel::default();
        let i = model.op_index_or_insert("GET /orders", 1);
        if let Some(stats) = i.and_then(|i| model.operation_mut(i)) {
            for _ in 0..answers {
                let mut classes = ClassSet::default();
                if let Some(c) = class {
                    classes.insert(c);
                }
                stats.exposure.record(&ExposureSample {
                    scanned: true,
                    records,
                    classes,
                    ..ExposureSample::default()
                });
            }
        }
        model
    }

    fn config() -> DetectorConfig {
        DetectorConfig {
            action: Action::Block,
            ..DetectorConfig::default()
        }
    }

    fn answer(records: u64, class: Option<SensitiveClass>) -> Scan {
        let mut classes = ClassSet::default();
        if let Some(c) = class {
            classes.insert(c);
        }
        Scan {
            json: true,
            complete: true,
            classes,
            records,
            fields: Vec::new(),
        }
    }

    #[test]
    fn flags_many_times_the_learned_records_only_with_support() {
        let model = learned(300, 10, Some(SensitiveClass::Email));
        // Page size 10 → bucket upper 15 → threshold 150.
        assert!(
            check(
                &model,
                "GET /orders",
                &answer(15, Some(SensitiveClass::Email)),
                &config()
            )
            .is_none()
        );
        assert!(check(&model, "GET /orders", &answer(150, None), &config()).is_none());
        let f = check(
            &model,
            "GET /orders",
            &answer(5000, Some(SensitiveClass::Email)),
            &config(),
        );
        let f = f.map(|f| f.explanation).unwrap_or_default();
        assert!(
            f.contains("5000 records") && f.contains("threshold 150"),
            "{f}"
        );
        // Too few answers, of the operation or of the API: nothing is judged.
        let young = learned(MIN_OWN_ANSWERS - 1, 10, None);
        assert!(check(&young, "GET /orders", &answer(5000, None), &config()).is_none());
    }

    #[test]
    fn a_rare_operation_is_judged_against_the_whole_api() {
        let mut model = learned(300, 10, Some(SensitiveClass::Email));
        let export = model.op_index_or_insert("GET /orders/export", 1);
        if let Some(stats) = export.and_then(|i| model.operation_mut(i)) {
            stats.exposure.record(&ExposureSample {
                scanned: true,
                records: 9,
                ..ExposureSample::default()
            });
        }
        let cfg = config();
        assert!(
            check(
                &model,
                "GET /orders/export",
                &answer(12, Some(SensitiveClass::Email)),
                &cfg
            )
            .is_none()
        );
        let f = check(&model, "GET /orders/export", &answer(12_000, None), &cfg);
        assert!(f.is_some_and(|f| f.explanation.contains("whole API")));
        // A class no answer of the API ever carried, on an operation never answered.
        let f = check(
            &model,
            "GET /users/_debug",
            &answer(3, Some(SensitiveClass::Password)),
            &cfg,
        );
        assert!(f.is_some_and(|f| f.explanation.contains("passwords")));
    }

    #[test]
    fn a_new_class_needs_credible_support() {
        let cfg = config();
        // 100 answers without phone numbers: the bound (about 1.9%) is above 1%.
        let model = learned(100, 2, None);
        assert!(
            check(
                &model,
                "GET /orders",
                &answer(2, Some(SensitiveClass::Phone)),
                &cfg
            )
            .is_none()
        );
        let model = learned(400, 2, None);
        let f = check(
            &model,
            "GET /orders",
            &answer(2, Some(SensitiveClass::Phone)),
            &cfg,
        );
        assert!(f.is_some_and(
            |f| f.kind == FindingKind::Exposure && f.explanation.contains("phone numbers")
        ));
        // A class the operation's answers carry is no news.
        let model = learned(400, 2, Some(SensitiveClass::Phone));
        assert!(
            check(
                &model,
                "GET /orders",
                &answer(2, Some(SensitiveClass::Phone)),
                &cfg
            )
            .is_none()
        );
    }
}
