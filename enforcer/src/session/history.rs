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
    /// Milliseconds since `History::base_ms`.
    at: u32,
}

/// Recent operations, oldest overwritten first. Allocated on the first push, grown as needed.
#[derive(Debug, Default)]
pub struct History {
    base_ms: u64,
    slots: Box<[Slot]>,
    /// Index of the oldest slot.
    head: u8,
    len: u8,
    /// What the session did before `base_ms` was lost (its entry was evicted).
    lost: bool,
}

impl History {
    /// Records an operation; `capacity` (1..=64) follows the current config.
    pub fn push(&mut self, op: u32, now_ms: u64, capacity: usize) {
        let capacity = capacity.clamp(1, MAX_HISTORY);
        // The ring grows with use (1, 2, 4, 8, … up to `capacity`): an idle session that made
        // one request keeps 1 slot (8 bytes), not the whole configured history.
        let allocated = self.slots.len();
        let target = if allocated > capacity {
            capacity
        } else if usize::from(self.len) == allocated && allocated < capacity {
            (allocated * 2).clamp(1, capacity)
        } else {
            allocated
        };
        if target != allocated {
            self.resize(target);
        }
        if self.len == 0 && self.base_ms == 0 {
            self.base_ms = now_ms;
        }
        let mut offset = now_ms.saturating_sub(self.base_ms);
        if offset > u64::from(u32::MAX) {
            // Rebase after ~49 days; anything that old is outside every window anyway.
            let shift = offset;
            for s in self.slots.iter_mut() {
                s.at = u32::try_from(u64::from(s.at).saturating_sub(shift)).unwrap_or(0);
            }
            self.base_ms = now_ms;
            offset = 0;
        }
        let slot = Slot {
            op,
            at: u32::try_from(offset).unwrap_or(u32::MAX),
        };
        let cap = self.slots.len();
        let len = usize::from(self.len);
        let head = usize::from(self.head);
        if len + 1 >= capacity {
            // A full history again: as much as a session that was never evicted keeps.
            self.lost = false;
        }
        if len < cap {
            if let Some(s) = self.slots.get_mut((head + len) % cap) {
                *s = slot;
            }
            self.len = u8::try_from(len + 1).unwrap_or(u8::MAX);
        } else {
            if let Some(s) = self.slots.get_mut(head) {
                *s = slot;
            }
            self.head = u8::try_from((head + 1) % cap).unwrap_or(0);
        }
    }

    /// Marks the history as missing what came before (the session's entry was evicted).
    pub fn mark_lost(&mut self) {
        self.lost = true;
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    fn resize(&mut self, capacity: usize) {
        let mut kept = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        let n = self.fill_kept(&mut kept, 0, u64::MAX);
        let start = n.saturating_sub(capacity);
        self.slots = vec![Slot::default(); capacity].into_boxed_slice();
        self.head = 0;
        self.len = 0;
        let base = self.base_ms;
        for r in kept.iter().take(n).skip(start) {
            let cap = self.slots.len();
            let len = usize::from(self.len);
            if let Some(s) = self.slots.get_mut(len % cap) {
                *s = Slot {
                    op: r.op,
                    at: u32::try_from(r.at_ms.saturating_sub(base)).unwrap_or(u32::MAX),
                };
            }
            self.len = u8::try_from(len + 1).unwrap_or(u8::MAX);
        }
    }

    /// Copies the operations no older than `max_age_ms` into `out`, oldest first; returns
    /// how many were written. A lost history starts with a [`LOST_HISTORY`] marker at the
    /// time the session was recreated (while that is no older than `max_age_ms`).
    pub fn fill(&self, out: &mut [RecentOp; MAX_HISTORY], now_ms: u64, max_age_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let since = if self.len == 0 { now_ms } else { self.base_ms };
        let marked = self.lost && usize::from(self.len) < MAX_HISTORY && since >= cutoff;
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
        let cap = self.slots.len();
        if cap == 0 {
            return 0;
        }
        let mut n = 0;
        for i in 0..usize::from(self.len) {
            let Some(slot) = self.slots.get((usize::from(self.head) + i) % cap) else {
                break;
            };
            let at_ms = self.base_ms + u64::from(slot.at);
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
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
