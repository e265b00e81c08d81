//! The sequence model: a variable-order Markov chain over a session's operations (consecutive
//! repeats collapsed), as counts of the next operation given the previous 0..k operations.
//!
//! Probabilities are judged with Beta credible intervals (Jeffreys prior Beta(½, ½)), so that a
//! context seen 20 times never speaks as loudly as one seen 20,000 times. A longer context is
//! *pruned* (not important) when, for every next operation, its interval overlaps its parent's
//! (the context minus its oldest operation); what remains are the important sequences, ranked
//! by precedence score = count(sequence) / count(its last operation).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use statrs::function::beta::inv_beta_reg;

/// Pseudo-operation that marks the start of a session in contexts.
pub const SESSION_START: u16 = u16::MAX;

/// Most distinct next operations kept per context; rarer ones share the `other` count.
const MAX_NEXT_PER_CONTEXT: usize = 128;

/// Longest context kept: the largest `learning.sequenceOrder` the config accepts
/// (config/learning.rs).
pub const MAX_CONTEXT_LEN: usize = 9;

/// A context: up to [`MAX_CONTEXT_LEN`] operation indices, oldest first, held inline so that
/// a context costs no allocation of its own (the map of contexts holds tens of thousands of
/// them; a boxed slice cost a heap block each). Hashes, compares and orders as the slice it
/// holds, so that the map is looked up with a plain `&[u16]`.
#[derive(Clone, Copy)]
pub struct ContextKey {
    len: u8,
    ops: [u16; MAX_CONTEXT_LEN],
}

impl ContextKey {
    /// The key of `ops`; `None` when it is longer than [`MAX_CONTEXT_LEN`].
    pub fn new(ops: &[u16]) -> Option<Self> {
        let len = u8::try_from(ops.len())
            .ok()
            .filter(|&len| usize::from(len) <= MAX_CONTEXT_LEN)?;
        let mut key = Self {
            len,
            ops: [0; MAX_CONTEXT_LEN],
        };
        key.ops[..ops.len()].copy_from_slice(ops);
        Some(key)
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.ops[..usize::from(self.len)]
    }
}

impl std::ops::Deref for ContextKey {
    type Target = [u16];

    fn deref(&self) -> &[u16] {
        self.as_slice()
    }
}

impl std::borrow::Borrow<[u16]> for ContextKey {
    fn borrow(&self) -> &[u16] {
        self.as_slice()
    }
}

impl std::hash::Hash for ContextKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the slice: `Borrow<[u16]>` requires equal hashes.
        self.as_slice().hash(state);
    }
}

impl PartialEq for ContextKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ContextKey {}

impl PartialOrd for ContextKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ContextKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Next-operation counts of one context as stored in the map: how often it was followed, by
/// which operations, and the count of those evicted from the list by its cap.
///
/// The map holds up to `learning.maxContexts` contexts (50,000 by default), most of them (the
/// long ones above all) only ever followed by one operation, a few times: such a context is
/// held in 12 bytes next to its 20-byte key (a map slot of 32 bytes), counts of up to
/// `u32::MAX`, and allocates nothing. A second distinct next operation, an evicted count or a
/// count beyond `u32::MAX` moves its counts to the model's list of wide counts, which the slot
/// then names by index; they come back into the slot when they fit again (after subtraction
/// or ageing). Every count stays exact.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Followed by no listed operation (after subtraction or ageing, or never).
    Empty {
        total: u32,
    },
    One {
        op: u16,
        count: u32,
        total: u32,
    },
    /// Index in [`WideList`].
    Wide(u32),
}

impl Default for Slot {
    fn default() -> Self {
        Self::Empty { total: 0 }
    }
}

/// The counts of one context in full.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WideCounts {
    total: u64,
    /// (operation index, count), unordered.
    next: Vec<(u16, u64)>,
    other: u64,
}

impl WideCounts {
    /// The compact slot of these counts, when they fit one.
    fn compact(&self) -> Option<Slot> {
        let small = |v: u64| u32::try_from(v).ok();
        if self.other != 0 {
            return None;
        }
        let total = small(self.total)?;
        match self.next.as_slice() {
            [] => Some(Slot::Empty { total }),
            [(op, count)] => Some(Slot::One {
                op: *op,
                count: small(*count)?,
                total,
            }),
            _ => None,
        }
    }

    fn add(&mut self, op: u16, count: u64) {
        self.total += count;
        if let Some(entry) = self.next.iter_mut().find(|(o, _)| *o == op) {
            entry.1 += count;
            return;
        }
        self.next.push((op, count));
        if self.next.len() > MAX_NEXT_PER_CONTEXT
            && let Some((index, _)) = self.next.iter().enumerate().min_by_key(|(_, (_, c))| *c)
        {
            let (_, evicted) = self.next.swap_remove(index);
            self.other += evicted;
        }
    }
}

/// The wide counts of the contexts that need them, by index; freed indices are reused.
#[derive(Debug, Clone, Default)]
struct WideList {
    items: Vec<WideCounts>,
    free: Vec<u32>,
}

impl WideList {
    fn get(&self, index: u32) -> &WideCounts {
        &self.items[index as usize]
    }

    fn put(&mut self, counts: WideCounts) -> Slot {
        if let Some(index) = self.free.pop() {
            self.items[index as usize] = counts;
            return Slot::Wide(index);
        }
        let index = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        self.items.push(counts);
        Slot::Wide(index)
    }

    fn release(&mut self, slot: Slot) {
        if let Slot::Wide(index) = slot {
            self.items[index as usize] = WideCounts::default();
            self.free.push(index);
        }
    }

    /// The counts of `slot` in full.
    fn expand(&self, slot: Slot) -> WideCounts {
        match slot {
            Slot::Empty { total } => WideCounts {
                total: u64::from(total),
                ..WideCounts::default()
            },
            Slot::One { op, count, total } => WideCounts {
                total: u64::from(total),
                next: vec![(op, u64::from(count))],
                other: 0,
            },
            Slot::Wide(index) => self.get(index).clone(),
        }
    }

    /// Applies `change` to the counts of `slot`, keeping them in the slot when they fit it.
    fn change(&mut self, slot: &mut Slot, change: impl FnOnce(&mut WideCounts)) {
        match *slot {
            Slot::Wide(index) => {
                let wide = &mut self.items[index as usize];
                change(wide);
                if let Some(compact) = wide.compact() {
                    self.release(*slot);
                    *slot = compact;
                }
            }
            compact => {
                let mut wide = self.expand(compact);
                change(&mut wide);
                *slot = match wide.compact() {
                    Some(compact) => compact,
                    None => {
                        wide.next.shrink_to_fit();
                        self.put(wide)
                    }
                };
            }
        }
    }

    /// Adds `count` followers `op` to `slot`; in place when the slot holds them.
    fn add(&mut self, slot: &mut Slot, op: u16, count: u64) {
        if let Ok(n) = u32::try_from(count) {
            match slot {
                Slot::Empty { total } => {
                    if let Some(sum) = total.checked_add(n) {
                        *slot = Slot::One {
                            op,
                            count: n,
                            total: sum,
                        };
                        return;
                    }
                }
                Slot::One {
                    op: o,
                    count: c,
                    total,
                } if *o == op => {
                    if let (Some(c2), Some(t2)) = (c.checked_add(n), total.checked_add(n)) {
                        (*c, *total) = (c2, t2);
                        return;
                    }
                }
                Slot::Wide(index) => {
                    self.items[*index as usize].add(op, count);
                    return;
                }
                Slot::One { .. } => {}
            }
        }
        self.change(slot, |wide| wide.add(op, count));
    }

    fn view(&self, slot: &Slot) -> NextCounts<'_> {
        NextCounts(match *slot {
            Slot::Empty { total } => View::Small { total, next: None },
            Slot::One { op, count, total } => View::Small {
                total,
                next: Some((op, count)),
            },
            Slot::Wide(index) => View::Wide(self.get(index)),
        })
    }
}

/// Next-operation counts of one context (a view of the model, see [`SequenceModel::get`]).
#[derive(Debug, Clone, Copy)]
pub struct NextCounts<'a>(View<'a>);

#[derive(Debug, Clone, Copy)]
enum View<'a> {
    Small {
        total: u32,
        next: Option<(u16, u32)>,
    },
    Wide(&'a WideCounts),
}

impl PartialEq for NextCounts<'_> {
    /// The next operations compare as a list, in the order they were added.
    fn eq(&self, other: &Self) -> bool {
        self.total() == other.total()
            && self.other() == other.other()
            && self.next_len() == other.next_len()
            && self.next().eq(other.next())
    }
}

impl NextCounts<'_> {
    /// Times the context was followed by any operation.
    pub fn total(&self) -> u64 {
        match self.0 {
            View::Small { total, .. } => u64::from(total),
            View::Wide(wide) => wide.total,
        }
    }

    /// Counts of next operations evicted from the list because of its cap.
    pub fn other(&self) -> u64 {
        match self.0 {
            View::Small { .. } => 0,
            View::Wide(wide) => wide.other,
        }
    }

    pub fn count_of(&self, op: u16) -> Option<u64> {
        match self.0 {
            View::Small { next, .. } => next.filter(|(o, _)| *o == op).map(|(_, c)| u64::from(c)),
            View::Wide(wide) => wide.next.iter().find(|(o, _)| *o == op).map(|(_, c)| *c),
        }
    }

    /// The next operations with their counts, unordered.
    pub fn next(&self) -> impl Iterator<Item = (u16, u64)> + use<'_> {
        let (one, many) = match self.0 {
            View::Small { next, .. } => (next.map(|(o, c)| (o, u64::from(c))), &[][..]),
            View::Wide(wide) => (None, wide.next.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// Distinct next operations listed.
    pub fn next_len(&self) -> usize {
        match self.0 {
            View::Small { next, .. } => usize::from(next.is_some()),
            View::Wide(wide) => wide.next.len(),
        }
    }

    fn to_wire(self) -> NextCountsWire {
        NextCountsWire {
            total: self.total(),
            next: self.next().collect(),
            other: self.other(),
        }
    }
}

/// Serialized form of one context's counts (unchanged since `next` was a plain list).
#[derive(Serialize, Deserialize)]
struct NextCountsWire {
    total: u64,
    next: Vec<(u16, u64)>,
    #[serde(default)]
    other: u64,
}

/// Beta credible interval of a proportion `count / total` (Jeffreys prior).
pub fn credible_interval(count: u64, total: u64, credibility: f64) -> (f64, f64) {
    let alpha = (1.0 - credibility).clamp(1e-9, 0.5);
    let a = count as f64 + 0.5;
    let b = total.saturating_sub(count) as f64 + 0.5;
    let lower = if count == 0 {
        0.0
    } else {
        inv_beta_reg(a, b, alpha / 2.0)
    };
    let upper = if count >= total {
        1.0
    } else {
        inv_beta_reg(a, b, 1.0 - alpha / 2.0)
    };
    (lower, upper)
}

/// One-sided upper credible bound of a proportion.
pub fn upper_bound(count: u64, total: u64, credibility: f64) -> f64 {
    if count >= total {
        return 1.0;
    }
    let a = count as f64 + 0.5;
    let b = (total - count) as f64 + 0.5;
    inv_beta_reg(a, b, credibility.clamp(0.5, 1.0 - 1e-9))
}

/// Whether `upper_bound(count, total, credibility) >= limit`. The same answer, but most
/// calls get it without the inverse incomplete Beta function (about 4,800 instructions a call,
/// docs/benchmarks.md, sixth pass), from a bound on either side of the quantile that already
/// settles it: a floor of the posterior's median for a common step (the quantile is at least
/// the median), a ceiling of its tail for a count of zero (a format every learned value
/// followed, a step never seen). Only counts near the limit pay for the inverse.
pub fn upper_bound_reaches(count: u64, total: u64, credibility: f64, limit: f64) -> bool {
    if count >= total {
        return 1.0 >= limit;
    }
    // With a margin far wider than the inverse's own error (up to about 1e-6 at a million
    // observations, see the test below), so that the shortcut never answers "reaches" where the
    // inverse would land just under the limit.
    if posterior_median_floor(count, total).is_some_and(|floor| floor >= limit + 1e-4) {
        return true;
    }
    let credibility = credibility.clamp(0.5, 1.0 - 1e-9);
    // Strictly below 1 − credibility, with a margin far wider than the inverse's error, so
    // that the shortcut never answers "below" where the inverse would land on the limit.
    if count == 0 && zero_count_tail_ceiling(total, limit) < (1.0 - credibility) * 0.999 {
        return false;
    }
    upper_bound(count, total, credibility) >= limit
}

/// A number at most the median of the Jeffreys posterior Beta(count + ½, total − count + ½),
/// when both of its parameters exceed 1 (`0 < count < total`). For such a Beta the median lies
/// between the mode and the mean (Groeneveld and Meeden, 1977, "The mode, median, and mean
/// inequality"), so it is at least the smaller of the two; `upper_bound` clamps its
/// credibility to at least ½, so its result is at least this median.
fn posterior_median_floor(count: u64, total: u64) -> Option<f64> {
    if count == 0 || count >= total {
        return None;
    }
    let a = count as f64 + 0.5;
    let b = (total - count) as f64 + 0.5;
    let mode = (a - 1.0) / (a + b - 2.0);
    let mean = a / (a + b);
    Some(mode.min(mean))
}

/// A number at least P(X > x) for X ~ Beta(½, b), the posterior of a count of zero in `total`
/// (b = total + ½), for 0 < x < 1:
/// P(X > x) = ∫ₓ¹ t^(−½) (1 − t)^(b−1) dt / B(½, b) ≤ x^(−½) (1 − x)^b / (b B(½, b)), and
/// B(½, b) = Γ(½) Γ(b) / Γ(b + ½) ≥ √π / √b (Wendel's inequality, Γ(b + ½) ≤ √b Γ(b)), so
/// P(X > x) ≤ (1 − x)^b / √(π b x). When it is below 1 − credibility, the credible bound (the
/// credibility-quantile of X) is below x.
fn zero_count_tail_ceiling(total: u64, x: f64) -> f64 {
    if !(x > 0.0 && x < 1.0) {
        return f64::INFINITY;
    }
    let b = total as f64 + 0.5;
    (b * (-x).ln_1p()).exp() / (std::f64::consts::PI * b * x).sqrt()
}

/// Context → next-operation counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "SequenceWire", into = "SequenceWire")]
pub struct SequenceModel {
    contexts: HashMap<ContextKey, Slot>,
    /// Counts of the contexts that do not fit their slot (see [`Slot`]).
    wide: WideList,
    /// Context counts dropped by eviction (for the model view).
    pub evicted: u64,
}

impl PartialEq for SequenceModel {
    fn eq(&self, other: &Self) -> bool {
        self.evicted == other.evicted
            && self.contexts.len() == other.contexts.len()
            && self
                .iter()
                .all(|(context, counts)| other.get(context) == Some(counts))
    }
}

/// Serialized form: JSON maps need string keys, so contexts travel as a list.
#[derive(Serialize, Deserialize)]
struct SequenceWire {
    #[serde(default)]
    contexts: Vec<(Vec<u16>, NextCountsWire)>,
    #[serde(default)]
    evicted: u64,
}

impl From<SequenceWire> for SequenceModel {
    fn from(wire: SequenceWire) -> Self {
        let mut model = Self {
            evicted: wire.evicted,
            ..Self::default()
        };
        for (context, counts) in wire.contexts {
            // A context longer than any this build learns (a foreign or damaged model) has
            // no place: it is dropped, as eviction would.
            let Some(key) = ContextKey::new(&context) else {
                continue;
            };
            let wide = WideCounts {
                total: counts.total,
                next: counts.next,
                other: counts.other,
            };
            let slot = match wide.compact() {
                Some(slot) => slot,
                None => model.wide.put(wide),
            };
            if let Some(replaced) = model.contexts.insert(key, slot) {
                model.wide.release(replaced);
            }
        }
        model
    }
}

impl From<SequenceModel> for SequenceWire {
    fn from(model: SequenceModel) -> Self {
        let mut contexts: Vec<(Vec<u16>, NextCountsWire)> = model
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_wire()))
            .collect();
        contexts.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            contexts,
            evicted: model.evicted,
        }
    }
}

/// An important sequence with its statistics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportantSequence {
    /// Operation indices, oldest first; the last one is the predicted operation.
    pub ops: Vec<u16>,
    pub count: u64,
    pub precedence: f64,
    /// P(last | preceding) with its credible interval.
    pub probability: f64,
    pub interval: (f64, f64),
}

impl SequenceModel {
    /// Learns one transition: `history` (collapsed, oldest first, possibly starting with
    /// [`SESSION_START`]) followed by `next`. Updates contexts of length 0..=order.
    pub fn learn(&mut self, history: &[u16], next: u16, order: usize) {
        let longest = history.len().min(order).min(MAX_CONTEXT_LEN);
        for len in 0..=longest {
            let context = &history[history.len() - len..];
            if let Some(slot) = self.contexts.get_mut(context) {
                self.wide.add(slot, next, 1);
            } else if let Some(key) = ContextKey::new(context) {
                let mut slot = Slot::default();
                self.wide.add(&mut slot, next, 1);
                self.contexts.insert(key, slot);
            }
        }
    }

    pub fn get(&self, context: &[u16]) -> Option<NextCounts<'_>> {
        self.contexts.get(context).map(|slot| self.wide.view(slot))
    }

    /// Every context with its counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u16], NextCounts<'_>)> + '_ {
        self.contexts
            .iter()
            .map(|(key, slot)| (key.as_slice(), self.wide.view(slot)))
    }

    /// Contexts held.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// Unigram count of an operation (how often it was entered, repeats collapsed).
    pub fn op_count(&self, op: u16) -> u64 {
        self.get(&[]).and_then(|c| c.count_of(op)).unwrap_or(0)
    }

    fn total_of(&self, slot: &Slot) -> u64 {
        self.wide.view(slot).total()
    }

    /// Keeps at most `max_contexts` contexts by dropping the least-counted ones (down to 90% of
    /// the cap, so that eviction runs rarely). The empty context is never dropped.
    pub fn enforce_cap(&mut self, max_contexts: usize) {
        if self.contexts.len() <= max_contexts {
            return;
        }
        let keep = max_contexts.saturating_mul(9) / 10;
        let mut totals: Vec<u64> = self
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(_, v)| v.total())
            .collect();
        totals.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = totals.get(keep.saturating_sub(1)).copied().unwrap_or(0);
        let mut kept = 0usize;
        let mut evicted = 0u64;
        let wide = &mut self.wide;
        self.contexts.retain(|key, slot| {
            if key.is_empty() {
                return true;
            }
            let total = wide.view(slot).total();
            if total > cutoff || (total == cutoff && kept < keep) {
                kept += 1;
                true
            } else {
                evicted += total;
                wide.release(*slot);
                false
            }
        });
        // Ties above may still exceed `keep`; drop the rest deterministically by key order.
        if self.contexts.len() > max_contexts {
            let mut keys: Vec<(u64, ContextKey)> = self
                .contexts
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, slot)| (self.total_of(slot), *k))
                .collect();
            keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, key) in keys.into_iter().skip(keep) {
                if let Some(slot) = self.contexts.remove(&key) {
                    evicted += self.total_of(&slot);
                    self.wide.release(slot);
                }
            }
        }
        self.evicted += evicted;
    }

    /// Adds `other`'s counts, with `other`'s operation indices translated by `map`
    /// (`None` = that operation has no place in this model; its contexts are skipped).
    pub fn merge(&mut self, other: &Self, map: &dyn Fn(u16) -> Option<u16>) {
        'contexts: for (key, theirs) in other.iter() {
            let mut translated = Vec::with_capacity(key.len());
            for op in key.iter() {
                match translate(*op, map) {
                    Some(mine) => translated.push(mine),
                    None => continue 'contexts,
                }
            }
            let Some(key) = ContextKey::new(&translated) else {
                continue;
            };
            let slot = self.contexts.entry(key).or_default();
            let mut unlisted = theirs.other();
            for (op, count) in theirs.next() {
                match translate(op, map) {
                    Some(op) => self.wide.add(slot, op, count),
                    None => unlisted += count,
                }
            }
            if unlisted > 0 {
                self.wide.change(slot, |wide| {
                    wide.total += unlisted;
                    wide.other += unlisted;
                });
            }
        }
        self.evicted += other.evicted;
    }

    /// Removes `base`'s counts (same index space), for deltas.
    pub fn subtract(&mut self, base: &Self) {
        for (key, theirs) in base.iter() {
            let Some(slot) = self.contexts.get_mut(key) else {
                continue;
            };
            self.wide.change(slot, |mine| {
                mine.total = mine.total.saturating_sub(theirs.total());
                mine.other = mine.other.saturating_sub(theirs.other());
                for (op, count) in theirs.next() {
                    if let Some(entry) = mine.next.iter_mut().find(|(o, _)| *o == op) {
                        entry.1 = entry.1.saturating_sub(count);
                    }
                }
                mine.next.retain(|(_, c)| *c > 0);
            });
        }
        self.drop_uncounted();
        self.evicted = self.evicted.saturating_sub(base.evicted);
    }

    pub fn halve(&mut self) {
        for slot in self.contexts.values_mut() {
            match slot {
                Slot::Empty { total } => *total /= 2,
                Slot::One { op, count, total } => {
                    *slot = if *count / 2 == 0 {
                        Slot::Empty { total: *total / 2 }
                    } else {
                        Slot::One {
                            op: *op,
                            count: *count / 2,
                            total: *total / 2,
                        }
                    };
                }
                Slot::Wide(_) => self.wide.change(slot, |wide| {
                    wide.total /= 2;
                    wide.other /= 2;
                    for entry in &mut wide.next {
                        entry.1 /= 2;
                    }
                    wide.next.retain(|(_, c)| *c > 0);
                }),
            }
        }
        self.drop_uncounted();
    }

    /// Drops the contexts whose total fell to zero.
    fn drop_uncounted(&mut self) {
        let wide = &mut self.wide;
        self.contexts.retain(|_, slot| {
            let keep = wide.view(slot).total() > 0;
            if !keep {
                wide.release(*slot);
            }
            keep
        });
    }

    /// Whether `context` (length ≥ 1) predicts differently from its parent for some next
    /// operation: some credible interval does not overlap the parent's.
    pub fn is_important(&self, context: &[u16], min_total: u64, credibility: f64) -> bool {
        let (Some(counts), Some(parent)) = (self.get(context), self.get(&context[1..])) else {
            return false;
        };
        if counts.total() < min_total || context.is_empty() {
            return false;
        }
        counts.next().any(|(op, count)| {
            let (lo, hi) = credible_interval(count, counts.total(), credibility);
            let parent_count = parent.count_of(op).unwrap_or(0);
            let (plo, phi) = credible_interval(parent_count, parent.total(), credibility);
            hi < plo || lo > phi
        })
    }

    /// The important sequences (context of length ≥ 1 plus next operation), ranked by
    /// precedence score, then count; at most `limit`. Sequences with fewer than `min_count`
    /// occurrences are ignored.
    pub fn important_sequences(
        &self,
        min_count: u64,
        credibility: f64,
        limit: usize,
    ) -> Vec<ImportantSequence> {
        let mut found = Vec::new();
        for (context, counts) in self.iter() {
            if context.is_empty() || counts.total() < min_count {
                continue;
            }
            // The length-1 context's parent is the empty context: order 1 vs order 0.
            if !self.is_important(context, min_count, credibility) {
                continue;
            }
            for (op, count) in counts.next() {
                if count < min_count {
                    continue;
                }
                let last = self.op_count(op).max(count);
                let interval = credible_interval(count, counts.total(), credibility);
                let mut ops = context.to_vec();
                ops.push(op);
                found.push(ImportantSequence {
                    ops,
                    count,
                    precedence: count as f64 / last as f64,
                    probability: count as f64 / counts.total() as f64,
                    interval,
                });
            }
        }
        found.sort_by(|a, b| {
            b.precedence
                .partial_cmp(&a.precedence)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| b.count.cmp(&a.count))
                .then_with(|| a.ops.len().cmp(&b.ops.len()))
                .then_with(|| a.ops.cmp(&b.ops))
        });
        // Drop a sequence whose shorter suffix with the same precedence is already listed.
        let mut kept: Vec<ImportantSequence> = Vec::new();
        for seq in found {
            let redundant = kept.iter().any(|k| {
                k.ops.len() < seq.ops.len()
                    && seq.ops.ends_with(&k.ops)
                    && (k.precedence - seq.precedence).abs() < 1e-9
            });
            if !redundant {
                kept.push(seq);
            }
            if kept.len() >= limit {
                break;
            }
        }
        kept
    }

    /// Bytes held by the contexts (approximate; for the model view and caps): a map slot
    /// each, and the wide counts of those that need them.
    pub fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(ContextKey, Slot)>() + 1;
        self.contexts.capacity() * slot
            + self.wide.items.capacity() * std::mem::size_of::<WideCounts>()
            + self
                .wide
                .items
                .iter()
                .map(|w| w.next.capacity() * 16)
                .sum::<usize>()
    }
}

fn translate(op: u16, map: &dyn Fn(u16) -> Option<u16>) -> Option<u16> {
    if op == SESSION_START {
        Some(SESSION_START)
    } else {
        map(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut must never change a judgement: over every count of small contexts and a
    /// spread of large ones, at each sensitivity's (credibility, limit) and at credibility ½
    /// (where the bound is the median itself), it answers what the inverse answers, and the
    /// floor it relies on is never above the median computed by the inverse.
    #[test]
    fn upper_bound_reaches_answers_what_the_inverse_answers() {
        let pairs = [
            (0.5, 0.01),
            (0.9, 0.02),
            (0.95, 0.01),
            (0.99, 0.002),
            (0.95, 0.3),
        ];
        let mut totals: Vec<u64> = (1..=120).collect();
        totals.extend([1_000, 4_097, 20_000, 1_000_000]);
        let mut shortcut_taken = 0;
        for total in totals {
            let step = (total / 60).max(1);
            for count in (0..=total).step_by(step as usize) {
                if let Some(floor) = posterior_median_floor(count, total) {
                    let median = upper_bound(count, total, 0.5);
                    // Within the inverse's accuracy (1.05e-6 seen at 449,982 of 1,000,000).
                    assert!(
                        floor <= median + 1e-5,
                        "{count}/{total}: {floor} > {median}"
                    );
                }
                if count == 0 {
                    // The tail ceiling at the 95 % bound is at least the 5 % it leaves out.
                    let upper = upper_bound(0, total, 0.95);
                    let ceiling = zero_count_tail_ceiling(total, upper);
                    assert!(ceiling >= 0.05 - 1e-9, "{total}: {ceiling}");
                }
                for (credibility, limit) in pairs {
                    let exact = upper_bound(count, total, credibility) >= limit;
                    assert_eq!(
                        upper_bound_reaches(count, total, credibility, limit),
                        exact,
                        "{count}/{total} at {credibility}, limit {limit}"
                    );
                    let tail = count == 0
                        && zero_count_tail_ceiling(total, limit) < (1.0 - credibility) * 0.999;
                    shortcut_taken += usize::from(
                        tail || posterior_median_floor(count, total)
                            .is_some_and(|f| f >= limit + 1e-4),
                    );
                }
            }
        }
        // The grid exercises the shortcut, not only the fallback.
        assert!(shortcut_taken > 10_000, "{shortcut_taken}");
    }

    #[test]
    fn credible_intervals_shrink_with_evidence() {
        let (lo, hi) = credible_interval(5, 10, 0.95);
        assert!(lo < 0.5 && hi > 0.5 && hi - lo > 0.4);
        let (lo, hi) = credible_interval(500, 1000, 0.95);
        assert!(hi - lo < 0.07, "{lo} {hi}");
        // No occurrences in 300 tries: the upper bound is about 2/300.
        let upper = upper_bound(0, 300, 0.95);
        assert!(upper < 0.01 && upper > 0.001, "{upper}");
        assert!(upper_bound(0, 20, 0.95) > 0.05);
    }

    #[test]
    fn learns_contexts_and_ranks_precedence() {
        // login(0) → accounts(1) → balance(2) → transfer(3), and login → accounts → profile(4).
        let mut m = SequenceModel::default();
        for i in 0..200 {
            let history = [SESSION_START, 0, 1];
            m.learn(&history[..1], 0, 8);
            m.learn(&history[..2], 1, 8);
            if i % 2 == 0 {
                m.learn(&history[..3], 2, 8);
                m.learn(&[SESSION_START, 0, 1, 2], 3, 8);
            } else {
                m.learn(&history[..3], 4, 8);
            }
        }
        assert_eq!(m.get(&[1]).unwrap().total(), 200);
        assert_eq!(m.get(&[2]).unwrap().count_of(3), Some(100));
        assert_eq!(m.op_count(3), 100);
        let top = m.important_sequences(10, 0.95, 20);
        assert!(!top.is_empty());
        // balance → transfer: every transfer follows a balance lookup.
        let pair = top
            .iter()
            .find(|s| s.ops == vec![2, 3])
            .expect("balance → transfer listed");
        assert!((pair.precedence - 1.0).abs() < 1e-9);
    }

    #[test]
    fn merge_is_addition_and_subtract_inverts() {
        let mut a = SequenceModel::default();
        let mut b = SequenceModel::default();
        a.learn(&[0, 1], 2, 8);
        b.learn(&[0, 1], 2, 8);
        b.learn(&[1], 3, 8);
        let mut merged = a.clone();
        merged.merge(&b, &|op| Some(op));
        assert_eq!(merged.get(&[0, 1]).unwrap().count_of(2), Some(2));
        assert_eq!(merged.get(&[]).unwrap().total(), 3);
        merged.subtract(&a);
        assert_eq!(merged, b);
    }

    #[test]
    fn context_cap_evicts_least_counted() {
        let mut m = SequenceModel::default();
        for i in 0..100u16 {
            for _ in 0..=i {
                m.learn(&[i], 1000, 1);
            }
        }
        m.enforce_cap(50);
        assert!(m.len() <= 50);
        assert!(m.get(&[99]).is_some());
        assert!(m.get(&[0]).is_none());
        assert!(m.get(&[]).is_some());
        assert!(m.evicted > 0);
    }

    /// A map slot of the contexts stays small (the map holds up to `learning.maxContexts`
    /// of them, 50,000 by default): an inline key and counts that need no allocation until a
    /// second next operation comes.
    #[test]
    fn a_context_slot_is_small_and_one_successor_allocates_nothing() {
        assert!(std::mem::size_of::<(ContextKey, Slot)>() <= 32);
        let mut m = SequenceModel::default();
        m.learn(&[SESSION_START, 4, 5, 6], 7, 8);
        for slot in m.contexts.values() {
            assert!(matches!(
                slot,
                Slot::One {
                    op: 7,
                    count: 1,
                    total: 1
                }
            ));
        }
        assert!(m.wide.items.is_empty());
        m.learn(&[SESSION_START, 4, 5, 6], 8, 8);
        let counts = m.get(&[5, 6]).unwrap();
        assert_eq!((counts.total(), counts.next_len()), (2, 2));
        assert_eq!(counts.count_of(8), Some(1));
        assert_eq!(m.wide.items.len(), 5);
        assert!(ContextKey::new(&[0; MAX_CONTEXT_LEN + 1]).is_none());
        // Ageing brings the contexts back into their slots and frees the wide counts for reuse.
        m.halve();
        assert!(m.contexts.values().all(|s| !matches!(s, Slot::Wide(_))));
        assert_eq!(m.wide.free.len(), 5);
    }

    /// Evicted counts survive the wire, merging, subtraction and halving; the JSON of a
    /// context is what it was when `next` was a plain list; counts beyond u32 stay exact.
    #[test]
    fn evicted_counts_travel_and_age_with_the_context() {
        let mut m = SequenceModel::default();
        for op in 0..=(MAX_NEXT_PER_CONTEXT as u16) {
            for _ in 0..=op {
                m.learn(&[9], op, 1);
            }
        }
        let counts = m.get(&[9]).unwrap();
        assert_eq!(counts.other(), 1);
        assert_eq!(counts.next_len(), MAX_NEXT_PER_CONTEXT);
        let json = serde_json::to_value(&m).unwrap();
        let wire = &json["contexts"][1][1];
        assert_eq!(wire["other"], 1);
        assert_eq!(wire["next"].as_array().unwrap().len(), MAX_NEXT_PER_CONTEXT);
        let back: SequenceModel = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        let mut merged = m.clone();
        merged.merge(&m, &|op| Some(op));
        assert_eq!(merged.get(&[9]).unwrap().other(), 2);
        merged.subtract(&m);
        assert_eq!(merged, m);
        merged.halve();
        assert_eq!(merged.get(&[9]).unwrap().other(), 0);
        // A plain list as older models wrote it reads back into the slot.
        let mut old: SequenceModel =
            serde_json::from_str(r#"{"contexts":[[[1,2],{"total":3,"next":[[4,3]]}]]}"#).unwrap();
        assert!(old.wide.items.is_empty());
        let counts = old.get(&[1, 2]).unwrap();
        assert_eq!(
            (counts.total(), counts.other(), counts.count_of(4)),
            (3, 0, Some(3))
        );
        // Beyond u32 the wide form keeps the counts exact, and the slot comes back after.
        let base = old.clone();
        let mut big = SequenceModel::default();
        big.contexts
            .insert(ContextKey::new(&[1, 2]).unwrap(), Slot::default());
        let slot = big.contexts.values_mut().next().unwrap();
        big.wide.add(slot, 4, u64::from(u32::MAX));
        old.merge(&big, &|op| Some(op));
        let counts = old.get(&[1, 2]).unwrap();
        assert_eq!(counts.count_of(4), Some(u64::from(u32::MAX) + 3));
        assert_eq!(old.wide.items.len(), 1);
        old.subtract(&big);
        assert_eq!(old, base);
        assert_eq!(old.wide.free.len(), 1);
    }

    #[test]
    fn serde_round_trip() {
        let mut m = SequenceModel::default();
        m.learn(&[SESSION_START, 4], 7, 8);
        let json = serde_json::to_string(&m).unwrap();
        let back: SequenceModel = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
