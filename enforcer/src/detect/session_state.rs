//! Per-session detector state, stored by the proxy's session table next to the rule history.
//!
//! It must stay small: it counts toward the 200-byte budget of an idle session (docs/benchmarks.md). An idle
//! session that never touched an operation costs 16 bytes here; one that did carries one boxed
//! window record of 32 bytes plus 56 bytes per operation it used in the current or the previous
//! window (at most [`MAX_WINDOW_SLOTS`] operations; others are not counted for volume or
//! objects), in one boxed slice of exactly that many slots. What few sessions have (a
//! quarantine, the values of `detect::lineage`, declared rate-limit slots, an open incident) is
//! behind one more box of the window record, allocated by the first of them.
//!
//! Volume and object counts slide: each slot keeps the previous window's counts next to the
//! current one's ([`SessionState::sliding`]), and the detectors weigh the previous window by how
//! much of it the sliding window still covers (two buckets), so that a session crossing a
//! window boundary does not get a fresh allowance on top of the one it just used.

use crate::finding::FindingKind;
use crate::session::LimitSlots;

use super::lineage::LineageState;

/// Most operations whose volume and objects are counted per session window.
pub const MAX_WINDOW_SLOTS: usize = 8;

const COUNTED: u8 = 1;
const TAINTED: u8 = 2;
/// The session requested a path outside the learned inventory that the app answered 404/405
/// (or that did not fit the learned structure): evidence that it probes (see `detect::shadow`).
const PROBED: u8 = 4;
/// The session failed to authenticate and has not used the API otherwise since.
const AUTH_FAILED: u8 = 8;

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
    /// The window's index (see [`window_key`]).
    window: u32,
    pub not_found: u16,
    /// One slot per operation used, exactly as many as there are (see [`Self::slot_mut`]).
    pub slots: Box<[OpSlot]>,
    /// What few sessions have; kept across windows.
    rare: Option<Box<Rare>>,
}

/// The parts of a session's state that few sessions have, behind one box.
#[derive(Debug, Default)]
struct Rare {
    /// The session's quarantine (see `detect::quarantine`).
    quarantine: Option<Quarantine>,
    /// Hashes of the values the session was given or sent (see `detect::lineage`).
    lineage: Option<Box<LineageState>>,
    /// Declared rate-limit state (see `policy::ratelimit`), for the limits of the operations
    /// the session used.
    limits: LimitSlots,
    /// Sequence number of the session's open incident (0 = none; see `incident`).
    incident: u32,
}

impl WindowCounters {
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }
}

/// A quarantine after a blocked high-severity finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quarantine {
    /// When the finding that caused it was made (unix ms).
    pub since_ms: u64,
    /// Until when requests are refused (unix ms).
    pub until_ms: u64,
    /// The kind of the finding that caused it.
    pub cause: FindingKind,
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
    /// The previous window's requests and objects (when it was the window just before).
    pub prev_requests: u16,
    pub prev_objects: [u64; 2],
    /// Fingerprint of the session's last successful state-changing request of this operation
    /// (0 = none; see `detect::replay`); kept while the slot is.
    pub last_change: u64,
    /// Successful requests since then that repeated it exactly.
    pub identical_repeats: u16,
    /// An identical repeat not learned yet: it is learned with the session's next learnable
    /// exchange, so that a replay caught later in the session teaches nothing.
    pub pending_repeat: bool,
}

/// One operation's counts in the current window and the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sliding {
    pub requests: u32,
    pub objects: [u64; 2],
    pub prev_requests: u32,
    pub prev_objects: [u64; 2],
}

impl Sliding {
    /// The two-bucket estimate of a count: the current window's, plus the previous window's
    /// weighted by the share of it the sliding window still covers (`elapsed` of `length`
    /// into the current window).
    pub fn carried(current: u32, previous: u32, elapsed_ms: u64, length_ms: u64) -> u32 {
        let length = length_ms.max(1);
        let remaining = length.saturating_sub(elapsed_ms.min(length));
        let carried = u64::from(previous) * remaining / length;
        current.saturating_add(u32::try_from(carried).unwrap_or(u32::MAX))
    }
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

    /// Whether the session's last authentication failed (and it did nothing else since).
    pub fn auth_failed(&self) -> bool {
        self.flags & AUTH_FAILED != 0
    }

    pub fn set_auth_failed(&mut self, failed: bool) {
        if failed {
            self.flags |= AUTH_FAILED;
        } else {
            self.flags &= !AUTH_FAILED;
        }
    }

    pub fn unlikely_op(&self) -> Option<u16> {
        self.unlikely_op.checked_sub(1)
    }

    pub fn set_unlikely_op(&mut self, op: Option<u16>) {
        self.unlikely_op = op.map_or(0, |o| o.saturating_add(1));
    }

    fn rare(&self) -> Option<&Rare> {
        self.window.as_deref().and_then(|w| w.rare.as_deref())
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.window.get_or_insert_with(Box::default).rare_mut()
    }

    /// The session's quarantine, while it lasts.
    pub fn quarantine(&self, now_ms: u64) -> Option<Quarantine> {
        self.rare()
            .and_then(|r| r.quarantine)
            .filter(|q| now_ms < q.until_ms)
    }

    /// Quarantines the session (a longer quarantine in force is kept).
    pub fn set_quarantine(&mut self, quarantine: Quarantine) {
        let rare = self.rare_mut();
        match rare.quarantine {
            Some(q) if q.until_ms >= quarantine.until_ms => {}
            _ => rare.quarantine = Some(quarantine),
        }
    }

    /// The values the session was given or sent, when it has any (see `detect::lineage`).
    pub fn lineage(&self) -> Option<&LineageState> {
        self.rare().and_then(|r| r.lineage.as_deref())
    }

    /// The session's values, only when it has some (never allocates them).
    pub fn lineage_if_any(&mut self) -> Option<&mut LineageState> {
        self.window
            .as_deref_mut()
            .and_then(|w| w.rare.as_deref_mut())
            .and_then(|r| r.lineage.as_deref_mut())
    }

    pub fn lineage_mut(&mut self) -> &mut LineageState {
        self.rare_mut().lineage.get_or_insert_with(Box::default)
    }

    /// The session's declared rate-limit slots (allocated with the first).
    pub fn limits_mut(&mut self) -> &mut LimitSlots {
        &mut self.rare_mut().limits
    }

    /// Sequence number of the session's open incident (0 = none).
    pub fn incident(&self) -> u32 {
        self.rare().map_or(0, |r| r.incident)
    }

    /// Records the session's open incident (0 = none; allocates nothing for 0).
    pub fn set_incident(&mut self, seq: u32) {
        if seq != 0 || self.incident() != 0 {
            self.rare_mut().incident = seq;
        }
    }

    /// Starts the detectors' state over (after a detector failed), keeping the declared
    /// rate-limit slots and the open incident, which are not the detectors' to forget.
    pub fn reset_detectors(&mut self) {
        let kept = self
            .window
            .as_deref_mut()
            .and_then(|w| w.rare.as_deref_mut())
            .map(|r| (std::mem::take(&mut r.limits), r.incident));
        *self = Self::default();
        if let Some((limits, incident)) = kept {
            if !limits.is_empty() {
                *self.limits_mut() = limits;
            }
            self.set_incident(incident);
        }
    }

    /// The counters of window `window`, if this session has any.
    pub fn window(&self, window: u64) -> Option<&WindowCounters> {
        self.window
            .as_deref()
            .filter(|w| w.window == window_key(window))
    }

    /// The counts of operation `op` in window `window` and the one before it.
    pub fn sliding(&self, window: u64, op: u16) -> Sliding {
        let Some(counters) = self.window.as_deref() else {
            return Sliding::default();
        };
        let Some(slot) = counters.slot(op) else {
            return Sliding::default();
        };
        let key = window_key(window);
        if counters.window == key {
            Sliding {
                requests: u32::from(slot.requests),
                objects: slot.objects,
                prev_requests: u32::from(slot.prev_requests),
                prev_objects: slot.prev_objects,
            }
        } else if counters.window.checked_add(1) == Some(key) {
            Sliding {
                prev_requests: u32::from(slot.requests),
                prev_objects: slot.objects,
                ..Sliding::default()
            }
        } else {
            Sliding::default()
        }
    }

    /// The fingerprint of the session's last successful non-idempotent request of `op` in
    /// window `window` or the one before it, and how many successful requests repeated it
    /// exactly since (see `detect::replay`).
    pub fn last_change(&self, window: u64, op: u16) -> Option<(u64, u16)> {
        let counters = self.window.as_deref()?;
        let key = window_key(window);
        if counters.window != key && counters.window.checked_add(1) != Some(key) {
            return None;
        }
        counters
            .slot(op)
            .filter(|s| s.last_change != 0)
            .map(|s| (s.last_change, s.identical_repeats))
    }

    /// The counters of window `window`, starting them afresh when the window changed (the
    /// counts of the window just before are kept as the previous ones).
    pub fn window_mut(&mut self, window: u64) -> &mut WindowCounters {
        let counters = self.window.get_or_insert_with(Box::default);
        let key = window_key(window);
        if counters.window != key {
            let next = counters.window.checked_add(1) == Some(key);
            counters.window = key;
            counters.not_found = 0;
            if next {
                for slot in &mut counters.slots {
                    *slot = OpSlot {
                        op: slot.op,
                        prev_requests: slot.requests,
                        prev_objects: slot.objects,
                        last_change: slot.last_change,
                        identical_repeats: slot.identical_repeats,
                        pending_repeat: slot.pending_repeat,
                        ..OpSlot::default()
                    };
                }
                if counters.slots.iter().any(|s| s.prev_requests == 0) {
                    let mut slots = std::mem::take(&mut counters.slots).into_vec();
                    slots.retain(|s| s.prev_requests > 0);
                    counters.slots = slots.into_boxed_slice();
                }
            } else {
                counters.slots = Box::default();
            }
        }
        counters
    }
}

/// A window index (unix time ÷ a window of at least a second: below 2³² until 2106) in the
/// 32 bits it is kept in, so that the boxed record of an idle session is 32 bytes, not 40.
fn window_key(window: u64) -> u32 {
    u32::try_from(window).unwrap_or(u32::MAX)
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
        // Grown one slot at a time (a copy of at most 7 slots, at most 8 times a window):
        // most idle sessions used one operation in their window, and every slot allocated
        // ahead of use is 56 bytes of each of them.
        let mut slots = std::mem::take(&mut self.slots).into_vec();
        slots.reserve_exact(1);
        slots.push(OpSlot {
            op,
            ..OpSlot::default()
        });
        self.slots = slots.into_boxed_slice();
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
        assert_eq!(std::mem::size_of::<OpSlot>(), 56);
        // The boxed record of every session that used an operation (an allocation of 32 bytes
        // next to its slots).
        assert!(std::mem::size_of::<WindowCounters>() <= 32);
        assert!(std::mem::size_of::<Rare>() <= 64);
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
        // The next window keeps the counts as the previous ones; a later one forgets them.
        assert!(
            s.window_mut(8)
                .slots
                .iter()
                .all(|slot| slot.requests == 0 && slot.prev_requests == 1)
        );
        assert!(s.window_mut(10).slots.is_empty());
        s.set_unlikely_op(Some(0));
        assert_eq!(s.unlikely_op(), Some(0));
        s.set_unlikely_op(None);
        assert_eq!(s.unlikely_op(), None);
    }
}

#[cfg(test)]
mod rare_tests {
    use super::*;

    #[test]
    fn rare_parts_share_one_box_and_a_reset_keeps_the_limits() {
        let mut s = SessionState::default();
        assert!(s.rare().is_none());
        s.window_mut(3).slot_mut(1).unwrap().requests = 2;
        assert!(s.rare().is_none(), "counting allocates no rare parts");
        s.limits_mut().slot_mut(4).unwrap().tat_ms = 9_000;
        s.set_quarantine(Quarantine {
            since_ms: 0,
            until_ms: 5_000,
            cause: FindingKind::Enumeration,
        });
        s.lineage_mut();
        assert!(s.lineage().is_some() && s.quarantine(1).is_some());
        s.set_incident(12);
        s.record_seen();
        s.reset_detectors();
        assert_eq!((s.seen(), s.incident()), (0, 12));
        assert!(s.lineage().is_none() && s.quarantine(1).is_none());
        assert!(s.window(3).is_none_or(|w| w.slots.is_empty()));
        assert_eq!(s.limits_mut().slot_mut(4).unwrap().tat_ms, 9_000);
        s.set_incident(0);
        assert_eq!(s.incident(), 0);
        // Nothing to keep: nothing allocated.
        let mut fresh = SessionState::default();
        fresh.set_incident(0);
        assert!(fresh.window.is_none(), "no incident, no allocation");
        fresh.window_mut(3);
        fresh.reset_detectors();
        assert!(fresh.window.is_none());
    }

    #[test]
    fn slots_are_allocated_one_at_a_time_and_dropped_with_the_window() {
        let mut s = SessionState::default();
        for op in 0..3u16 {
            s.window_mut(5).slot_mut(op).unwrap().requests = 1;
            assert_eq!(s.window(5).unwrap().slots.len(), usize::from(op) + 1);
        }
        s.window_mut(6).slot_mut(1).unwrap().requests = 4;
        // Only operation 1 was used in window 6; all three were in window 5.
        assert_eq!(s.window(6).unwrap().slots.len(), 3);
        s.window_mut(7);
        let ops: Vec<u16> = s.window(7).unwrap().slots.iter().map(|x| x.op).collect();
        assert_eq!(ops, vec![1]);
        assert_eq!(s.sliding(7, 1).prev_requests, 4);
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;

    #[test]
    fn quarantine_lasts_and_survives_window_changes() {
        let mut s = SessionState::default();
        assert!(s.quarantine(0).is_none());
        let q = Quarantine {
            since_ms: 1000,
            until_ms: 61_000,
            cause: FindingKind::Enumeration,
        };
        s.set_quarantine(q);
        assert_eq!(s.quarantine(2000), Some(q));
        s.window_mut(99).not_found = 3;
        assert_eq!(s.quarantine(60_999), Some(q), "a new window keeps it");
        assert!(s.quarantine(61_000).is_none(), "it ends");
        // A shorter one does not cut a longer one short; a longer one extends it.
        s.set_quarantine(Quarantine {
            until_ms: 30_000,
            ..q
        });
        assert_eq!(s.quarantine(40_000), Some(q));
        let longer = Quarantine {
            until_ms: 90_000,
            ..q
        };
        s.set_quarantine(longer);
        assert_eq!(s.quarantine(70_000), Some(longer));
    }
}

#[cfg(test)]
mod sliding_tests {
    use super::*;

    #[test]
    fn the_previous_window_is_kept_and_weighted_by_its_overlap() {
        let mut s = SessionState::default();
        for _ in 0..10 {
            if let Some(slot) = s.window_mut(5).slot_mut(1) {
                slot.requests += 1;
                slot.objects = with_object(slot.objects, 77);
            }
        }
        // The next window, before its first request: the old counts are the previous ones.
        let next = s.sliding(6, 1);
        assert_eq!((next.requests, next.prev_requests), (0, 10));
        assert_eq!(distinct_of(next.prev_objects), 1);
        // After it: the same.
        if let Some(slot) = s.window_mut(6).slot_mut(1) {
            slot.requests += 1;
        }
        let now = s.sliding(6, 1);
        assert_eq!((now.requests, now.prev_requests), (1, 10));
        // A window later than the next one forgets them.
        assert_eq!(s.sliding(8, 1), Sliding::default());
        s.window_mut(8);
        assert!(s.window(8).unwrap().slots.is_empty());
        // The weighting: at the start of the window all of the previous one counts, half-way
        // half of it, at its end none.
        assert_eq!(Sliding::carried(3, 10, 0, 600), 13);
        assert_eq!(Sliding::carried(3, 10, 300, 600), 8);
        assert_eq!(Sliding::carried(3, 10, 600, 600), 3);
    }
}
