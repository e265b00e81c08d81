//! A session's recent operations: a compact ring buffer (8 bytes per slot).
//!
//! A session recreated after its entry was evicted lost what it did before: its history is
//! marked, and [`History::fill`] puts a [`LOST_HISTORY`] marker in front of what it kept
//! since, until the ring holds a full configured history again. Rules then see where the
//! known history starts and do not take "not in the history" for "never happened".

use super::RecentOp;

/// Longest history kept per session.
pub const MAX_HISTORY: usize = 64;

/// Operation id of the marker that stands for the operations an evicted session lost (never
/// the id of a real operation).
pub const LOST_HISTORY: u32 = u32::MAX - 1;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    op: u32,
    /// Milliseconds since the history's base time.
    at: u32,
}

/// The ring's slots: one kept inline (no allocation: a session that made one request costs
/// nothing more), more on the heap. 16 bytes either way (the inline slot sits next to the
/// boxed slice's null pointer).
#[derive(Debug)]
enum Ring {
    Inline(Slot),
    Heap(Box<[Slot]>),
}

impl Default for Ring {
    fn default() -> Self {
        Self::Inline(Slot::default())
    }
}

impl Ring {
    fn of(capacity: usize) -> Self {
        if capacity <= 1 {
            Self::default()
        } else {
            Self::Heap(vec![Slot::default(); capacity].into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[Slot] {
        match self {
            Self::Inline(slot) => std::slice::from_ref(slot),
            Self::Heap(slots) => slots,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Slot] {
        match self {
            Self::Inline(slot) => std::slice::from_mut(slot),
            Self::Heap(slots) => slots,
        }
    }
}

/// Bits of [`History::packed`] that hold the base time (unix ms below 2⁵⁰, the year 37,648;
/// a later time is clamped to it).
const BASE_BITS: u32 = 50;
const BASE_MAX: u64 = (1 << BASE_BITS) - 1;
/// Where the ring's head (0..64, 6 bits), length (0..=64, 7 bits) and the lost flag sit.
const HEAD_SHIFT: u32 = BASE_BITS;
const LEN_SHIFT: u32 = HEAD_SHIFT + 6;
const LOST_BIT: u64 = 1 << 63;

/// Recent operations, oldest overwritten first. One slot inline, grown on the heap as needed.
/// 24 bytes in the session entry: the base time, the head, the length and the lost flag share
/// one `u64` ([`BASE_BITS`]).
#[derive(Debug, Default)]
pub struct History {
    /// The base time of the slots' offsets (ms) in the low [`BASE_BITS`] bits; the index of
    /// the oldest slot, the number of slots used, and whether what the session did before the
    /// base time was lost (its entry was evicted) above them.
    packed: u64,
    slots: Ring,
}

impl History {
    fn base_ms(&self) -> u64 {
        self.packed & BASE_MAX
    }

    fn set_base_ms(&mut self, base_ms: u64) {
        self.packed = (self.packed & !BASE_MAX) | base_ms.min(BASE_MAX);
    }

    fn head(&self) -> usize {
        ((self.packed >> HEAD_SHIFT) & 0x3f) as usize
    }

    fn set_head(&mut self, head: usize) {
        let head = (head as u64) & 0x3f;
        self.packed = (self.packed & !(0x3f << HEAD_SHIFT)) | (head << HEAD_SHIFT);
    }

    fn set_len(&mut self, len: usize) {
        let len = (len.min(MAX_HISTORY) as u64) & 0x7f;
        self.packed = (self.packed & !(0x7f << LEN_SHIFT)) | (len << LEN_SHIFT);
    }

    fn set_lost(&mut self, lost: bool) {
        if lost {
            self.packed |= LOST_BIT;
        } else {
            self.packed &= !LOST_BIT;
        }
    }

    /// Records an operation; `capacity` (1..=64) follows the current config.
    pub fn push(&mut self, op: u32, now_ms: u64, capacity: usize) {
        let capacity = capacity.clamp(1, MAX_HISTORY);
        // The ring grows with use (1, 2, 4, 8, … up to `capacity`): an idle session that made
        // one request keeps 1 slot, inline, not the whole configured history.
        let allocated = self.slots.as_slice().len();
        let target = if allocated > capacity {
            capacity
        } else if self.len() == allocated && allocated < capacity {
            (allocated * 2).clamp(1, capacity)
        } else {
            allocated
        };
        if target != allocated {
            self.resize(target);
        }
        if self.is_empty() && self.base_ms() == 0 {
            self.set_base_ms(now_ms);
        }
        let mut offset = now_ms.saturating_sub(self.base_ms());
        if offset > u64::from(u32::MAX) {
            // Rebase after ~49 days; anything that old is outside every window anyway.
            let shift = offset;
            for s in self.slots.as_mut_slice() {
                s.at = u32::try_from(u64::from(s.at).saturating_sub(shift)).unwrap_or(0);
            }
            self.set_base_ms(now_ms);
            offset = 0;
        }
        let slot = Slot {
            op,
            at: u32::try_from(offset).unwrap_or(u32::MAX),
        };
        let len = self.len();
        let head = self.head();
        if len + 1 >= capacity {
            // A full history again: as much as a session that was never evicted keeps.
            self.set_lost(false);
        }
        let slots = self.slots.as_mut_slice();
        let cap = slots.len();
        if len < cap {
            if let Some(s) = slots.get_mut((head + len) % cap) {
                *s = slot;
            }
            self.set_len(len + 1);
        } else {
            if let Some(s) = slots.get_mut(head) {
                *s = slot;
            }
            self.set_head((head + 1) % cap);
        }
    }

    /// Marks the history as missing what came before (the session's entry was evicted).
    pub fn mark_lost(&mut self) {
        self.set_lost(true);
    }

    pub fn is_lost(&self) -> bool {
        self.packed & LOST_BIT != 0
    }

    fn resize(&mut self, capacity: usize) {
        let mut kept = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        let n = self.fill_kept(&mut kept, 0, u64::MAX);
        let start = n.saturating_sub(capacity);
        self.slots = Ring::of(capacity);
        self.set_head(0);
        self.set_len(0);
        let base = self.base_ms();
        for r in kept.iter().take(n).skip(start) {
            let len = self.len();
            let slots = self.slots.as_mut_slice();
            let cap = slots.len();
            if let Some(s) = slots.get_mut(len % cap) {
                *s = Slot {
                    op: r.op,
                    at: u32::try_from(r.at_ms.saturating_sub(base)).unwrap_or(u32::MAX),
                };
            }
            self.set_len(len + 1);
        }
    }

    /// Copies the operations no older than `max_age_ms` into `out`, oldest first; returns
    /// how many were written. A lost history starts with a [`LOST_HISTORY`] marker at the
    /// time the session was recreated (while that is no older than `max_age_ms`).
    pub fn fill(&self, out: &mut [RecentOp; MAX_HISTORY], now_ms: u64, max_age_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let since = if self.is_empty() {
            now_ms
        } else {
            self.base_ms()
        };
        let marked = self.is_lost() && self.len() < MAX_HISTORY && since >= cutoff;
        if marked && let Some(first) = out.first_mut() {
            *first = RecentOp {
                op: LOST_HISTORY,
                at_ms: since,
            };
        }
        let start = usize::from(marked);
        let Some(rest) = out.get_mut(start..) else {
            return start;
        };
        start + self.fill_from(rest, cutoff)
    }

    /// The operations kept, without a marker.
    fn fill_kept(&self, out: &mut [RecentOp; MAX_HISTORY], now_ms: u64, max_age_ms: u64) -> usize {
        self.fill_from(out, now_ms.saturating_sub(max_age_ms))
    }

    fn fill_from(&self, out: &mut [RecentOp], cutoff: u64) -> usize {
        let slots = self.slots.as_slice();
        let cap = slots.len();
        if cap == 0 {
            return 0;
        }
        let (base, head) = (self.base_ms(), self.head());
        let mut n = 0;
        for i in 0..self.len() {
            let Some(slot) = slots.get((head + i) % cap) else {
                break;
            };
            let at_ms = base + u64::from(slot.at);
            if at_ms < cutoff {
                continue;
            }
            if let Some(o) = out.get_mut(n) {
                *o = RecentOp { op: slot.op, at_ms };
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        ((self.packed >> LEN_SHIFT) & 0x7f) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_small() {
        // 24 bytes in every session entry (docs/benchmarks.md, 200 bytes per idle session).
        assert_eq!(std::mem::size_of::<Ring>(), 16);
        assert_eq!(std::mem::size_of::<History>(), 24);
    }

    #[test]
    fn one_slot_is_inline_and_the_ring_grows_then_shrinks() {
        let mut h = History::default();
        h.push(7, 1_000, 64);
        assert!(matches!(h.slots, Ring::Inline(_)));
        assert_eq!((h.len(), h.head(), h.base_ms()), (1, 0, 1_000));
        for i in 0..70u32 {
            h.push(i, 2_000 + u64::from(i), 64);
        }
        assert_eq!((h.len(), h.slots.as_slice().len()), (64, 64));
        let mut out = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        assert_eq!(h.fill(&mut out, 3_000, 600_000), 64);
        assert_eq!((out[0].op, out[63].op, out[63].at_ms), (6, 69, 2_069));
        // A smaller configured history shrinks the ring; one slot goes back inline.
        h.push(100, 3_000, 1);
        assert!(matches!(h.slots, Ring::Inline(_)));
        assert_eq!(h.fill(&mut out, 3_000, 600_000), 1);
        assert_eq!((out[0].op, out[0].at_ms), (100, 3_000));
        h.mark_lost();
        assert!(h.is_lost() && h.len() == 1 && h.base_ms() == 1_000);
    }

    #[test]
    fn a_lost_history_is_marked_until_it_is_full_again() {
        let mut h = History::default();
        h.mark_lost();
        let mut out = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        assert_eq!(h.fill(&mut out, 5_000, 600_000), 1);
        assert_eq!(
            out[0],
            RecentOp {
                op: LOST_HISTORY,
                at_ms: 5_000
            }
        );
        for i in 0..3u32 {
            h.push(i, 5_000 + u64::from(i), 4);
        }
        let n = h.fill(&mut out, 6_000, 600_000);
        assert_eq!((n, out[0].op, out[1].op), (4, LOST_HISTORY, 0));
        assert_eq!(out[0].at_ms, 5_000);
        // Aged out of the window: no marker.
        assert_eq!(h.fill(&mut out, 700_000, 600_000), 0);
        h.push(3, 6_000, 4);
        assert!(!h.is_lost(), "four of four kept");
        assert_eq!(h.fill(&mut out, 6_000, 600_000), 4);
        assert_eq!(out[0].op, 0);
    }

    #[test]
    fn keeps_the_newest_in_order_and_drops_old_ones() {
        let mut h = History::default();
        for i in 0..15u32 {
            h.push(i, 1_000 + u64::from(i) * 1000, 10);
        }
        let mut out = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        let n = h.fill(&mut out, 15_000, 600_000);
        assert_eq!(n, 10);
        assert_eq!(out[0].op, 5);
        assert_eq!(out[9].op, 14);
        assert_eq!(out[9].at_ms, 15_000);
        let n = h.fill(&mut out, 15_000, 2_500);
        assert_eq!(n, 3, "only the last 2.5 s");
        h.push(99, 16_000, 4);
        let n = h.fill(&mut out, 16_000, 600_000);
        assert_eq!((n, out[0].op, out[3].op), (4, 12, 99));
    }
}
