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

/// Next-operation counts of one context: how often it was followed (`total`), by which
/// operations, and the count of those evicted from the list by its cap (`other`).
///
/// The map of contexts holds up to `learning.maxContexts` of them (50,000 by default), most of
/// them (the long ones above all) only ever followed by one operation, a few times: such a
/// context is held in 16 bytes next to its key, counts of up to `u32::MAX`, and allocates
/// nothing. A second distinct next operation, an evicted count or a count beyond `u32::MAX`
/// moves the context to the boxed wide form; it comes back when it fits again (after
/// subtraction or ageing). Serialized as before: `total`, the `next` list of (operation
/// index, count) pairs and `other`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "NextCountsWire", into = "NextCountsWire")]
pub struct NextCounts(Counts);

#[derive(Debug, Clone)]
enum Counts {
    /// Followed by no listed operation (after subtraction or ageing, or never).
    Empty {
        total: u32,
    },
    One {
        op: u16,
        count: u32,
        total: u32,
    },
    Wide(Box<WideCounts>),
}

#[derive(Debug, Clone, Default)]
struct WideCounts {
    total: u64,
    /// (operation index, count), unordered.
    next: Vec<(u16, u64)>,
    other: u64,
}

impl Default for NextCounts {
    fn default() -> Self {
        Self(Counts::Empty { total: 0 })
    }
}

#[derive(Serialize, Deserialize)]
struct NextCountsWire {
    total: u64,
    next: Vec<(u16, u64)>,
    #[serde(default)]
    other: u64,
}

impl From<NextCountsWire> for NextCounts {
    fn from(wire: NextCountsWire) -> Self {
        Self::compact(WideCounts {
            total: wire.total,
            next: wire.next,
            other: wire.other,
        })
    }
}

impl From<NextCounts> for NextCountsWire {
    fn from(counts: NextCounts) -> Self {
        Self {
            total: counts.total(),
            next: counts.next().collect(),
            other: counts.other(),
        }
    }
}

impl PartialEq for NextCounts {
    /// The next operations compare as a list, in the order they were added.
    fn eq(&self, other: &Self) -> bool {
        self.total() == other.total()
            && self.other() == other.other()
            && self.next_len() == other.next_len()
            && self.next().eq(other.next())
    }
}

impl Eq for NextCounts {}

impl NextCounts {
    /// The compact form of `wide` when it fits one.
    fn compact(mut wide: WideCounts) -> Self {
        let small = |v: u64| u32::try_from(v).ok();
        if wide.other == 0
            && let Some(total) = small(wide.total)
        {
            match wide.next.as_slice() {
                [] => return Self(Counts::Empty { total }),
                [(op, count)] => {
                    if let Some(count) = small(*count) {
                        return Self(Counts::One {
                            op: *op,
                            count,
                            total,
                        });
                    }
                }
                _ => {}
            }
        }
        wide.next.shrink_to_fit();
        Self(Counts::Wide(Box::new(wide)))
    }

    /// The wide form, made from the compact one if needed.
    fn wide(&mut self) -> &mut WideCounts {
        let wide = match self.0 {
            Counts::Empty { total } => WideCounts {
                total: u64::from(total),
                ..WideCounts::default()
            },
            Counts::One { op, count, total } => WideCounts {
                total: u64::from(total),
                next: vec![(op, u64::from(count))],
                other: 0,
            },
            Counts::Wide(_) => WideCounts::default(),
        };
        if !matches!(self.0, Counts::Wide(_)) {
            self.0 = Counts::Wide(Box::new(wide));
        }
        match &mut self.0 {
            Counts::Wide(wide) => wide,
            // Made wide just above.
            _ => unreachable!(),
        }
    }

    /// Back to the compact form if the counts fit it again.
    fn settle(&mut self) {
        if let Counts::Wide(wide) = &mut self.0 {
            let taken = std::mem::take(&mut **wide);
            *self = Self::compact(taken);
        }
    }

    /// Times the context was followed by any operation.
    pub fn total(&self) -> u64 {
        match &self.0 {
            Counts::Empty { total } | Counts::One { total, .. } => u64::from(*total),
            Counts::Wide(wide) => wide.total,
        }
    }

    /// Counts of next operations evicted from the list because of its cap.
    pub fn other(&self) -> u64 {
        match &self.0 {
            Counts::Wide(wide) => wide.other,
            _ => 0,
        }
    }

    pub fn count_of(&self, op: u16) -> Option<u64> {
        match &self.0 {
            Counts::Empty { .. } => None,
            Counts::One { op: o, count, .. } => (*o == op).then_some(u64::from(*count)),
            Counts::Wide(wide) => wide.next.iter().find(|(o, _)| *o == op).map(|(_, c)| *c),
        }
    }

    /// The next operations with their counts, unordered.
    pub fn next(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        let (one, many) = match &self.0 {
            Counts::Empty { .. } => (None, &[][..]),
            Counts::One { op, count, .. } => (Some((*op, u64::from(*count))), &[][..]),
            Counts::Wide(wide) => (None, wide.next.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// Distinct next operations listed.
    pub fn next_len(&self) -> usize {
        match &self.0 {
            Counts::Empty { .. } => 0,
            Counts::One { .. } => 1,
            Counts::Wide(wide) => wide.next.len(),
        }
    }

    fn add(&mut self, op: u16, count: u64) {
        let n = u32::try_from(count).ok();
        match (&mut self.0, n) {
            (Counts::Empty { total }, Some(n)) => {
                if let Some(sum) = total.checked_add(n) {
                    self.0 = Counts::One {
                        op,
                        count: n,
                        total: sum,
                    };
                    return;
                }
            }
            (
                Counts::One {
                    op: o,
                    count: c,
                    total,
                },
                Some(n),
            ) if *o == op => {
                if let (Some(c2), Some(t2)) = (c.checked_add(n), total.checked_add(n)) {
                    (*c, *total) = (c2, t2);
                    return;
                }
            }
            _ => {}
        }
        let wide = self.wide();
        wide.total += count;
        if let Some(entry) = wide.next.iter_mut().find(|(o, _)| *o == op) {
            entry.1 += count;
            return;
        }
        wide.next.push((op, count));
        if wide.next.len() > MAX_NEXT_PER_CONTEXT
            && let Some((index, _)) = wide.next.iter().enumerate().min_by_key(|(_, (_, c))| *c)
        {
            let (_, evicted) = wide.next.swap_remove(index);
            wide.other += evicted;
        }
    }

    /// Adds `count` followers not listed by name (evicted elsewhere, or without a place here).
    fn add_other(&mut self, count: u64) {
        if count > 0 {
            let wide = self.wide();
            wide.total += count;
            wide.other += count;
        }
    }

    fn subtract(&mut self, base: &Self) {
        let wide = self.wide();
        wide.total = wide.total.saturating_sub(base.total());
        wide.other = wide.other.saturating_sub(base.other());
        for (op, count) in base.next() {
            if let Some(entry) = wide.next.iter_mut().find(|(o, _)| *o == op) {
                entry.1 = entry.1.saturating_sub(count);
            }
        }
        wide.next.retain(|(_, c)| *c > 0);
        self.settle();
    }

    fn halve(&mut self) {
        match &mut self.0 {
            Counts::Empty { total } => *total /= 2,
            Counts::One { count, total, .. } => {
                *count /= 2;
                *total /= 2;
                if *count == 0 {
                    self.0 = Counts::Empty { total: *total };
                }
            }
            Counts::Wide(wide) => {
                wide.total /= 2;
                wide.other /= 2;
                for entry in &mut wide.next {
                    entry.1 /= 2;
                }
                wide.next.retain(|(_, c)| *c > 0);
                self.settle();
            }
        }
    }
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "SequenceWire", into = "SequenceWire")]
pub struct SequenceModel {
    pub contexts: HashMap<ContextKey, NextCounts>,
    /// Context counts dropped by eviction (for the model view).
    pub evicted: u64,
}

/// Serialized form: JSON maps need string keys, so contexts travel as a list.
#[derive(Serialize, Deserialize)]
struct SequenceWire {
    #[serde(default)]
    contexts: Vec<(Vec<u16>, NextCounts)>,
    #[serde(default)]
    evicted: u64,
}

impl From<SequenceWire> for SequenceModel {
    fn from(wire: SequenceWire) -> Self {
        // A context longer than any this build learns (a foreign or damaged model) has no
        // place: it is dropped, as eviction would.
        let contexts = wire
            .contexts
            .into_iter()
            .filter_map(|(k, v)| Some((ContextKey::new(&k)?, v)))
            .collect();
        Self {
            contexts,
            evicted: wire.evicted,
        }
    }
}

impl From<SequenceModel> for SequenceWire {
    fn from(model: SequenceModel) -> Self {
        let mut contexts: Vec<(Vec<u16>, NextCounts)> = model
            .contexts
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
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
            if let Some(counts) = self.contexts.get_mut(context) {
                counts.add(next, 1);
            } else if let Some(key) = ContextKey::new(context) {
                let mut counts = NextCounts::default();
                counts.add(next, 1);
                self.contexts.insert(key, counts);
            }
        }
    }

    pub fn get(&self, context: &[u16]) -> Option<&NextCounts> {
        self.contexts.get(context)
    }

    /// Unigram count of an operation (how often it was entered, repeats collapsed).
    pub fn op_count(&self, op: u16) -> u64 {
        self.contexts
            .get(&[][..])
            .and_then(|c| c.count_of(op))
            .unwrap_or(0)
    }

    /// Keeps at most `max_contexts` contexts by dropping the least-counted ones (down to 90% of
    /// the cap, so that eviction runs rarely). The empty context is never dropped.
    pub fn enforce_cap(&mut self, max_contexts: usize) {
        if self.contexts.len() <= max_contexts {
            return;
        }
        let keep = max_contexts.saturating_mul(9) / 10;
        let mut totals: Vec<u64> = self
            .contexts
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(_, v)| v.total())
            .collect();
        totals.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = totals.get(keep.saturating_sub(1)).copied().unwrap_or(0);
        let mut kept = 0usize;
        let mut evicted = 0u64;
        self.contexts.retain(|key, counts| {
            if key.is_empty() {
                return true;
            }
            if counts.total() > cutoff || (counts.total() == cutoff && kept < keep) {
                kept += 1;
                true
            } else {
                evicted += counts.total();
                false
            }
        });
        // Ties above may still exceed `keep`; drop the rest deterministically by key order.
        if self.contexts.len() > max_contexts {
            let mut keys: Vec<ContextKey> = self
                .contexts
                .keys()
                .filter(|k| !k.is_empty())
                .copied()
                .collect();
            keys.sort_by(|a, b| {
                self.contexts[b]
                    .total()
                    .cmp(&self.contexts[a].total())
                    .then_with(|| a.cmp(b))
            });
            for key in keys.into_iter().skip(keep) {
                if let Some(c) = self.contexts.remove(&key) {
                    evicted += c.total();
                }
            }
        }
        self.evicted += evicted;
    }

    /// Adds `other`'s counts, with `other`'s operation indices translated by `map`
    /// (`None` = that operation has no place in this model; its contexts are skipped).
    pub fn merge(&mut self, other: &Self, map: &dyn Fn(u16) -> Option<u16>) {
        'contexts: for (key, theirs) in &other.contexts {
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
            let mine = self.contexts.entry(key).or_default();
            for (op, count) in theirs.next() {
                if let Some(op) = translate(op, map) {
                    mine.add(op, count);
                } else {
                    mine.add_other(count);
                }
            }
            mine.add_other(theirs.other());
        }
        self.evicted += other.evicted;
    }

    /// Removes `base`'s counts (same index space), for deltas.
    pub fn subtract(&mut self, base: &Self) {
        for (key, theirs) in &base.contexts {
            let Some(mine) = self.contexts.get_mut(key) else {
                continue;
            };
            mine.subtract(theirs);
        }
        self.contexts.retain(|_, c| c.total() > 0);
        self.evicted = self.evicted.saturating_sub(base.evicted);
    }

    pub fn halve(&mut self) {
        for counts in self.contexts.values_mut() {
            counts.halve();
        }
        self.contexts.retain(|_, c| c.total() > 0);
    }

    /// Whether `context` (length ≥ 1) predicts differently from its parent for some next
    /// operation: some credible interval does not overlap the parent's.
    pub fn is_important(&self, context: &[u16], min_total: u64, credibility: f64) -> bool {
        let (Some(counts), Some(parent)) =
            (self.contexts.get(context), self.contexts.get(&context[1..]))
        else {
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
        for (context, counts) in &self.contexts {
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
    /// each, and the wide form of those that need one.
    pub fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(ContextKey, NextCounts)>() + 1;
        self.contexts.capacity() * slot
            + self
                .contexts
                .values()
                .filter(|v| matches!(v.0, Counts::Wide(_)))
                .map(|v| 48 + v.next_len() * 16)
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
        assert!(m.contexts.len() <= 50);
        assert!(m.get(&[99]).is_some());
        assert!(m.get(&[0]).is_none());
        assert!(m.get(&[]).is_some());
        assert!(m.evicted > 0);
    }

    /// A map slot of the contexts stays small (the map holds up to `learning.maxContexts`
    /// of them, 50,000 by default): an inline key and a successor list that allocates only
    /// from the second next operation on.
    #[test]
    fn a_context_slot_is_small_and_one_successor_allocates_nothing() {
        assert!(std::mem::size_of::<(ContextKey, NextCounts)>() <= 40);
        let mut m = SequenceModel::default();
        m.learn(&[SESSION_START, 4, 5, 6], 7, 8);
        for counts in m.contexts.values() {
            assert!(matches!(
                counts.0,
                Counts::One {
                    op: 7,
                    count: 1,
                    total: 1
                }
            ));
        }
        m.learn(&[SESSION_START, 4, 5, 6], 8, 8);
        let counts = m.get(&[5, 6]).unwrap();
        assert_eq!((counts.total(), counts.next_len()), (2, 2));
        assert_eq!(counts.count_of(8), Some(1));
        assert!(ContextKey::new(&[0; MAX_CONTEXT_LEN + 1]).is_none());
    }

    /// Evicted counts survive the wire, merging, subtraction and halving; the JSON of a
    /// context is what it was when `next` was a plain list.
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
        // A plain list as older models wrote it reads back with one inline successor.
        let old: SequenceModel =
            serde_json::from_str(r#"{"contexts":[[[1,2],{"total":3,"next":[[4,3]]}]]}"#).unwrap();
        let counts = old.get(&[1, 2]).unwrap();
        assert!(matches!(
            counts.0,
            Counts::One {
                op: 4,
                count: 3,
                total: 3
            }
        ));
        // Beyond u32 the wide form keeps the counts exact, and comes back when they fit.
        let mut big = counts.clone();
        big.add(4, u64::from(u32::MAX));
        assert!(matches!(big.0, Counts::Wide(_)));
        assert_eq!(big.count_of(4), Some(u64::from(u32::MAX) + 3));
        big.subtract(&big.clone());
        assert!(matches!(big.0, Counts::Empty { total: 0 }));
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
