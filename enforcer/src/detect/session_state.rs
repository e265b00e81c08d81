//! Per-session detector state, stored by the proxy's session table next to the rule history.
//!
//! It must stay small: it counts toward the ~300 bytes budget of an idle session. An idle
//! session that never touched an operation costs 16 bytes here; one that did carries one boxed
//! window record of 16 bytes plus 24 bytes per operation it used in the current window (at most
//! [`MAX_WINDOW_SLOTS`] operations; others are not counted for volume or objects).

/// Most operations whose volume and objects are counted per session window.
pub const MAX_WINDOW_SLOTS: usize = 8;

const COUNTED: u8 = 1;
const TAINTED: u8 = 2;
/// The session requested a path outside the learned inventory that the app answered 404/405
/// (or that did not fit the learned structure): evidence that it probes (see `detect::shadow`).
const PROBED: u8 = 4;

/// Detector state of one session.
#[derive(Default, Debug)]
pub struct SessionState {
    /// Exchanges observed (saturating).
    seen: u32,
    flags: u8,
    /// Model index + 1 of the operation of the last unlikely-sequence finding (0 = none): its
    /// immediate repeats are judged like it.
    unlikely_op: u16,
    window: Option<Box<WindowCounters>>,
}

/// Counters of the current clock-aligned window.
#[derive(Debug, Default)]
pub struct WindowCounters {
    pub window: u64,
    pub not_found: u16,
    pub slots: Vec<OpSlot>,
}

/// One operation's counters in the current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpSlot {
    pub op: u16,
    pub requests: u16,
    /// Requests and distinct objects of this window already learned into the model (taken
    /// back if the session is flagged within the window).
    pub learned_requests: u16,
    pub learned_objects: u16,
    /// Linear-counting bitmap of object-id hashes (128 bits).
    pub objects: [u64; 2],
}

impl OpSlot {
    /// Distinct object ids estimated from the bitmap (linear counting: −m·ln(zeros/m)).
    pub fn distinct_objects(&self) -> u32 {
        distinct_of(self.objects)
    }
}

/// Linear-counting estimate of a 128-bit bitmap.
pub fn distinct_of(bits: [u64; 2]) -> u32 {
    let ones = bits[0].count_ones() + bits[1].count_ones();
    if ones == 0 {
        return 0;
    }
    let zeros = 128 - ones;
    if zeros == 0 {
        // Saturated: at least m·ln(m) ids.
        return 621;
    }
    let estimate = -128.0 * (f64::from(zeros) / 128.0).ln();
    (estimate.round() as u32).max(ones)
}

/// Sets the bit of an id hash in a 128-bit bitmap.
pub fn with_object(bits: [u64; 2], hash: u64) -> [u64; 2] {
    let bit = (hash % 128) as u32;
    let mut out = bits;
    out[(bit / 64) as usize] |= 1u64 << (bit % 64);
    out
}

impl SessionState {
    pub fn seen(&self) -> u32 {
        self.seen
    }

    pub fn record_seen(&mut self) {
        self.seen = self.seen.saturating_add(1);
    }

    /// Whether this session has been counted in the model's session total.
    pub fn counted(&self) -> bool {
        self.flags & COUNTED != 0
    }

    pub fn mark_counted(&mut self) {
        self.flags |= COUNTED;
    }

    /// A session that was flagged is never learned from again (anti-poisoning).
    pub fn tainted(&self) -> bool {
        self.flags & TAINTED != 0
    }

    pub fn taint(&mut self) {
        self.flags |= TAINTED;
    }

    /// Whether the session already probed for paths that do not exist (see `detect::shadow`).
    pub fn probed(&self) -> bool {
        self.flags & PROBED != 0
    }

    pub fn mark_probed(&mut self) {
        self.flags |= PROBED;
    }

    pub fn unlikely_op(&self) -> Option<u16> {
        self.unlikely_op.checked_sub(1)
    }

    pub fn set_unlikely_op(&mut self, op: Option<u16>) {
        self.unlikely_op = op.map_or(0, |o| o.saturating_add(1));
    }

    /// The counters of window `window`, if this session has any.
    pub fn window(&self, window: u64) -> Option<&WindowCounters> {
        self.window.as_deref().filter(|w| w.window == window)
    }

    /// The counters of window `window`, starting them afresh when the window changed.
    pub fn window_mut(&mut self, window: u64) -> &mut WindowCounters {
        let counters = self.window.get_or_insert_with(Box::default);
        if counters.window != window {
            counters.window = window;
            counters.not_found = 0;
            counters.slots.clear();
        }
        counters
    }
}

impl WindowCounters {
    pub fn slot(&self, op: u16) -> Option<&OpSlot> {
        self.slots.iter().find(|s| s.op == op)
    }

    /// The slot of `op`, added when there is room.
    pub fn slot_mut(&mut self, op: u16) -> Option<&mut OpSlot> {
        if let Some(index) = self.slots.iter().position(|s| s.op == op) {
            return self.slots.get_mut(index);
        }
        if self.slots.len() >= MAX_WINDOW_SLOTS {
            return None;
        }
        self.slots.push(OpSlot {
            op,
            ..OpSlot::default()
        });
        self.slots.last_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_small() {
        assert!(
            std::mem::size_of::<SessionState>() <= 16,
            "{}",
            std::mem::size_of::<SessionState>()
        );
        assert_eq!(std::mem::size_of::<OpSlot>(), 24);
    }

    #[test]
    fn linear_counting_is_close_for_small_and_medium_counts() {
        let mut bits = [0u64; 2];
        for i in 0..3u64 {
            bits = with_object(
                bits,
                crate::model::hashing::stable_hash(format!("acc-{i}").as_bytes()),
            );
        }
        assert!((2..=3).contains(&distinct_of(bits)));
        for i in 3..40u64 {
            bits = with_object(
                bits,
                crate::model::hashing::stable_hash(format!("acc-{i}").as_bytes()),
            );
        }
        let estimate = distinct_of(bits);
        assert!((30..=50).contains(&estimate), "{estimate}");
    }

    #[test]
    fn window_resets_and_slots_are_capped() {
        let mut s = SessionState::default();
        for op in 0..20u16 {
            if let Some(slot) = s.window_mut(7).slot_mut(op) {
                slot.requests += 1;
            }
        }
        assert_eq!(s.window(7).unwrap().slots.len(), MAX_WINDOW_SLOTS);
        assert!(s.window(8).is_none());
        assert!(s.window_mut(8).slots.is_empty());
        s.set_unlikely_op(Some(0));
        assert_eq!(s.unlikely_op(), Some(0));
        s.set_unlikely_op(None);
        assert_eq!(s.unlikely_op(), None);
    }
}
