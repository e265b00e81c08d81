//! A session's recent operations: a compact ring buffer (8 bytes per slot).

use super::RecentOp;

/// Longest history kept per session.
pub const MAX_HISTORY: usize = 64;

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
}

impl History {
    /// Records an operation; `capacity` (1..=64) follows the current config.
    pub fn push(&mut self, op: u32, now_ms: u64, capacity: usize) {
        let capacity = capacity.clamp(1, MAX_HISTORY);
        // The ring grows with use (2, 4, 8, … up to `capacity`): an idle session that made one
        // request keeps 2 slots, not the whole configured history.
        let allocated = self.slots.len();
        let target = if allocated > capacity {
            capacity
        } else if usize::from(self.len) == allocated && allocated < capacity {
            (allocated * 2).clamp(2, capacity)
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

    fn resize(&mut self, capacity: usize) {
        let mut kept = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
        let n = self.fill(&mut kept, 0, u64::MAX);
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
    /// how many were written.
    pub fn fill(&self, out: &mut [RecentOp; MAX_HISTORY], now_ms: u64, max_age_ms: u64) -> usize {
        let cap = self.slots.len();
        if cap == 0 {
            return 0;
        }
        let cutoff = now_ms.saturating_sub(max_age_ms);
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
