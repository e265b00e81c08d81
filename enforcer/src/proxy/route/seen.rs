//! Every message between replicas is taken once. A message is valid for
//! [`auth::MAX_SKEW_MS`] either side of its timestamp, so without this a host that can read
//! the pod network could send a captured one again within that time: a forwarded request
//! (the same request line and headers, so the same session and token, with another body: the
//! body is streamed, not under the MAC), or facts about an address (a failed login told
//! again and again would quarantine an innocent address). The MAC of each accepted message is
//! remembered until its timestamp is too old to verify; a second message with the same MAC
//! is refused.
//!
//! Memory is bounded in bytes: at most [`MAX_REMEMBERED`] MACs (8 bytes of each: the MAC is
//! keyed with the shared secret, so no one without it can aim at a collision), about 18 bytes
//! each in the hash sets at their fullest, ≈ 9.4 MiB. Beyond that, which takes more than
//! 5,800 messages a second to this replica, a message is taken unchecked and counted
//! (`ordo_forward_total{result="replay_unchecked"}`): refusing would turn a busy replica's
//! forwarded traffic into errors.

use std::collections::HashSet;

use super::auth::MAX_SKEW_MS;

/// MACs remembered at most, over every bucket.
pub const MAX_REMEMBERED: usize = 1 << 19;

/// Timestamps are grouped in buckets of the skew's length: a bucket can be dropped once its
/// newest timestamp is more than the skew in the past.
const BUCKET_MS: u64 = MAX_SKEW_MS;

/// The live buckets are those of `now - skew ..= now + skew`: at most three consecutive ones.
const BUCKETS: usize = 4;

/// Whether a message was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: remembered now.
    First,
    /// Seen before: a replay.
    Again,
    /// Not checked: as many MACs as the bound allows are remembered.
    Unchecked,
}

/// The MACs of the messages accepted in the last two skews (and the next one).
#[derive(Debug, Default)]
pub struct SeenMacs {
    /// `(bucket index, MACs)`, at `index % BUCKETS`.
    buckets: [(u64, HashSet<u64>); BUCKETS],
    remembered: usize,
}

impl SeenMacs {
    /// Records the MAC `mac` of a message stamped `at_ms`, verified at `now_ms`.
    pub fn check(&mut self, mac: u64, at_ms: u64, now_ms: u64) -> Seen {
        self.drop_stale(now_ms);
        let index = at_ms / BUCKET_MS;
        let slot = usize::try_from(index % BUCKETS as u64).unwrap_or(0);
        let (held, macs) = &mut self.buckets[slot];
        if *held != index {
            // Stale (dropped above) or never used: this bucket starts now.
            self.remembered -= macs.len();
            *macs = HashSet::new();
            *held = index;
        }
        if macs.contains(&mac) {
            return Seen::Again;
        }
        if self.remembered >= MAX_REMEMBERED {
            return Seen::Unchecked;
        }
        macs.insert(mac);
        self.remembered += 1;
        Seen::First
    }

    /// Forgets the buckets whose every timestamp is now too old to verify.
    fn drop_stale(&mut self, now_ms: u64) {
        let oldest_live = now_ms.saturating_sub(MAX_SKEW_MS) / BUCKET_MS;
        for (index, macs) in &mut self.buckets {
            if *index < oldest_live && !macs.is_empty() {
                self.remembered -= macs.len();
                *macs = HashSet::new();
            }
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.remembered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn a_message_is_taken_once_while_it_can_verify() {
        let mut seen = SeenMacs::default();
        assert_eq!(seen.check(7, T0, T0 + 5), Seen::First);
        assert_eq!(seen.check(7, T0, T0 + 10), Seen::Again);
        // Until the last moment its timestamp verifies, and from either side of the clock.
        assert_eq!(seen.check(7, T0, T0 + MAX_SKEW_MS), Seen::Again);
        assert_eq!(seen.check(8, T0 + MAX_SKEW_MS, T0), Seen::First);
        assert_eq!(
            seen.check(8, T0 + MAX_SKEW_MS, T0 + 2 * MAX_SKEW_MS),
            Seen::Again
        );
        // Another MAC is another message.
        assert_eq!(seen.check(9, T0, T0 + 20), Seen::First);
    }

    #[test]
    fn what_can_no_longer_verify_is_forgotten() {
        let mut seen = SeenMacs::default();
        for mac in 0..100 {
            assert_eq!(seen.check(mac, T0 + mac, T0 + mac), Seen::First);
        }
        assert_eq!(seen.remembered(), 100);
        // Three skews later every one of them is too old to verify: all forgotten.
        assert_eq!(
            seen.check(1_000, T0 + 3 * MAX_SKEW_MS, T0 + 3 * MAX_SKEW_MS),
            Seen::First
        );
        assert_eq!(seen.remembered(), 1);
        // A bucket slot reused for a later index starts empty.
        let later = T0 + 4 * BUCKET_MS * BUCKETS as u64;
        assert_eq!(seen.check(5, later, later), Seen::First);
        assert_eq!(seen.remembered(), 1);
    }

    #[test]
    fn memory_is_bounded_and_the_excess_is_unchecked() {
        let mut seen = SeenMacs::default();
        for mac in 0..MAX_REMEMBERED as u64 {
            assert_eq!(seen.check(mac, T0, T0), Seen::First);
        }
        assert_eq!(seen.check(u64::MAX, T0, T0), Seen::Unchecked);
        assert_eq!(
            seen.check(3, T0, T0),
            Seen::Again,
            "what is remembered stays checked"
        );
        // Room again once the bucket is too old.
        let later = T0 + 3 * MAX_SKEW_MS;
        assert_eq!(seen.check(u64::MAX, later, later), Seen::First);
        assert_eq!(seen.remembered(), 1);
    }
}
