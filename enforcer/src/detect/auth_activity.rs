//! Authentication activity across all clients, for the distributed credential-stuffing
//! detector ([`super::distributed`]).
//!
//! Two bounded structures, both fed from `observe` with unflagged exchanges only (requests a
//! detector already refused are not evidence of a new attack, and counting our own 403s would
//! keep an alarm alive by itself):
//!
//! - per authenticating operation, a ring of its most recent attempts API-wide (time, hashed
//!   identity, hashed client address, failed or not): the "current window" of the surge check,
//!   limited both by count ([`RING_SIZE`]) and by age (the counting window);
//! - per identity (hashed), its failures in the current counting window and a bitmap of the
//!   client addresses they came from: one identity failing from many addresses.
//!
//! Both are keyed by client input, so both are capped: at most [`MAX_AUTH_OPERATIONS`] rings of
//! [`RING_SIZE`] attempts, and at most `max_tracked_clients` identities (entries of past
//! windows are dropped first; when the table is still full, new identities are not tracked and
//! counted in `untracked`).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::hashing::stable_hash;

use super::session_state::{distinct_of, with_object};

/// Most authenticating operations with their own ring (an API has one or two login operations).
pub const MAX_AUTH_OPERATIONS: usize = 8;
/// Attempts remembered per authenticating operation.
pub const RING_SIZE: usize = 128;

/// One authentication attempt as remembered by the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Attempt {
    at_ms: u64,
    /// Hash of the claimed identity (0 = none claimed).
    identity: u64,
    /// Hash of the client address.
    client: u64,
    failed: bool,
}

#[derive(Debug)]
struct AttemptRing {
    op: u16,
    next: usize,
    attempts: Vec<Attempt>,
    /// The learned failure rate frozen for one counting window: (window, rate).
    frozen_rate: Option<(u64, f64)>,
}

/// The recent attempts of one operation, summarised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentAttempts {
    pub attempts: u32,
    pub failures: u32,
    /// Distinct identities among the failures.
    pub failing_identities: u32,
    /// Distinct client addresses among the failures.
    pub failing_clients: u32,
    /// Age of the oldest attempt counted, in ms.
    pub span_ms: u64,
}

/// One identity's failures in one counting window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityFailures {
    pub window: u64,
    pub failures: u32,
    /// Linear-counting bitmap of the client addresses the failures came from.
    pub clients: [u64; 2],
}

impl IdentityFailures {
    pub fn distinct_clients(&self) -> u32 {
        distinct_of(self.clients)
    }
}

/// Stable hash of a client address (for bitmaps and rings; addresses are not stored).
pub fn client_hash(client: &IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    }
}

/// Authentication attempts across all clients (see the module docs).
#[derive(Debug)]
pub struct AuthActivity {
    rings: Vec<AttemptRing>,
    identities: HashMap<u64, IdentityFailures>,
    /// Cap on identities with failures tracked at once (`learning.maxTrackedClients`).
    max_identities: usize,
    /// Identities not tracked because the table was full.
    pub untracked: u64,
}

impl AuthActivity {
    pub fn new(max_identities: usize) -> Self {
        Self {
            rings: Vec::new(),
            identities: HashMap::new(),
            max_identities,
            untracked: 0,
        }
    }

    /// Applies a new cap (config reload); a smaller one takes effect as identities arrive.
    pub fn set_max_identities(&mut self, max_identities: usize) {
        self.max_identities = max_identities;
    }

    /// Records one unflagged attempt on authenticating operation `op`.
    pub fn record(
        &mut self,
        op: u16,
        now_ms: u64,
        window: u64,
        identity: Option<u64>,
        client: &IpAddr,
        failed: bool,
    ) {
        let client_key = client_hash(client);
        let attempt = Attempt {
            at_ms: now_ms,
            identity: identity.unwrap_or(0),
            client: client_key,
            failed,
        };
        if let Some(ring) = self.ring_mut(op) {
            if ring.attempts.len() < RING_SIZE {
                ring.attempts.push(attempt);
            } else if let Some(slot) = ring.attempts.get_mut(ring.next) {
                *slot = attempt;
            }
            ring.next = (ring.next + 1) % RING_SIZE;
        }
        if failed && let Some(identity) = identity {
            self.record_identity_failure(identity, window, client_key);
        }
    }

    fn ring_mut(&mut self, op: u16) -> Option<&mut AttemptRing> {
        if let Some(index) = self.rings.iter().position(|r| r.op == op) {
            return self.rings.get_mut(index);
        }
        if self.rings.len() >= MAX_AUTH_OPERATIONS {
            return None;
        }
        self.rings.push(AttemptRing {
            op,
            next: 0,
            attempts: Vec::with_capacity(RING_SIZE),
            frozen_rate: None,
        });
        self.rings.last_mut()
    }

    fn record_identity_failure(&mut self, identity: u64, window: u64, client: u64) {
        let cap = self.max_identities;
        if !self.identities.contains_key(&identity) && self.identities.len() >= cap {
            self.identities.retain(|_, e| e.window == window);
            if self.identities.len() >= cap {
                self.untracked += 1;
                return;
            }
        }
        let entry = self.identities.entry(identity).or_default();
        if entry.window != window {
            *entry = IdentityFailures {
                window,
                ..IdentityFailures::default()
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.clients = with_object(entry.clients, client);
    }

    /// The failures of `identity` in `window` so far.
    pub fn identity(&self, identity: u64, window: u64) -> Option<IdentityFailures> {
        self.identities
            .get(&identity)
            .copied()
            .filter(|e| e.window == window)
    }

    /// The attempts of `op` in the last `horizon_ms` (at most [`RING_SIZE`] of them).
    pub fn recent(&self, op: u16, now_ms: u64, horizon_ms: u64) -> RecentAttempts {
        let Some(ring) = self.rings.iter().find(|r| r.op == op) else {
            return RecentAttempts::default();
        };
        let since = now_ms.saturating_sub(horizon_ms);
        let mut summary = RecentAttempts::default();
        let mut identities = [0u64; RING_SIZE];
        let mut clients = [0u64; RING_SIZE];
        let mut oldest = now_ms;
        for a in ring.attempts.iter().filter(|a| a.at_ms >= since) {
            summary.attempts += 1;
            oldest = oldest.min(a.at_ms);
            if a.failed {
                let i = summary.failures as usize;
                if let (Some(id), Some(cl)) = (identities.get_mut(i), clients.get_mut(i)) {
                    *id = a.identity;
                    *cl = a.client;
                }
                summary.failures += 1;
            }
        }
        let n = summary.failures as usize;
        summary.failing_identities = distinct_nonzero(identities.get_mut(..n).unwrap_or_default());
        summary.failing_clients = distinct_nonzero(clients.get_mut(..n).unwrap_or_default());
        summary.span_ms = now_ms.saturating_sub(oldest);
        summary
    }

    /// The learned failure rate of `op` for `window`: `learned` is evaluated once per counting
    /// window and kept, like the frozen peer baselines — otherwise the failures of a surge,
    /// learned as they happen, would raise the rate they are judged against.
    pub fn frozen_rate(&mut self, op: u16, window: u64, learned: impl FnOnce() -> f64) -> f64 {
        let Some(ring) = self.rings.iter_mut().find(|r| r.op == op) else {
            return learned();
        };
        match ring.frozen_rate {
            Some((w, rate)) if w == window => rate,
            _ => {
                let rate = learned();
                ring.frozen_rate = Some((window, rate));
                rate
            }
        }
    }

    pub fn tracked_identities(&self) -> usize {
        self.identities.len()
    }
}

/// Distinct non-zero values (sorts `values`).
fn distinct_nonzero(values: &mut [u64]) -> u32 {
    values.sort_unstable();
    let mut count = 0;
    let mut last = 0;
    for v in values.iter().copied() {
        if v != 0 && v != last {
            count += 1;
        }
        last = v;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i))
    }

    #[test]
    fn ring_keeps_the_latest_attempts_within_the_horizon() {
        let mut a = AuthActivity::new(100);
        // 200 attempts, every fourth failing for its own identity from its own address.
        for i in 0..200u32 {
            a.record(
                0,
                u64::from(i) * 10,
                1,
                Some(u64::from(i) + 1),
                &ip(i),
                i % 4 == 0,
            );
        }
        let r = a.recent(0, 2000, 10_000);
        assert_eq!(r.attempts, RING_SIZE as u32);
        assert_eq!(r.failures, 32);
        assert_eq!(r.failing_identities, 32);
        assert_eq!(r.failing_clients, 32);
        // Only the last 500 ms: attempts 150..200.
        let r = a.recent(0, 1995, 500);
        assert_eq!(r.attempts, 50);
        assert_eq!(r.failures, 12);
        // The rate is frozen for the window.
        assert!((a.frozen_rate(0, 1, || 0.04) - 0.04).abs() < 1e-12);
        assert!((a.frozen_rate(0, 1, || 0.5) - 0.04).abs() < 1e-12);
        assert!((a.frozen_rate(0, 2, || 0.5) - 0.5).abs() < 1e-12);
        // Another operation is separate.
        assert_eq!(a.recent(1, 2000, 10_000), RecentAttempts::default());
    }

    #[test]
    fn operations_and_identities_are_bounded() {
        let mut a = AuthActivity::new(10);
        for op in 0..20u16 {
            a.record(op, 1, 1, None, &ip(1), true);
        }
        assert_eq!(a.rings.len(), MAX_AUTH_OPERATIONS);
        for i in 0..100u32 {
            a.record(0, 2, 1, Some(u64::from(i) + 1), &ip(i), true);
        }
        assert_eq!(a.tracked_identities(), 10);
        assert_eq!(a.untracked, 90);
        // A new window frees the table.
        a.record(0, 3, 2, Some(7777), &ip(1), true);
        assert_eq!(a.tracked_identities(), 1);
    }

    #[test]
    fn one_identity_from_many_addresses() {
        let mut a = AuthActivity::new(100);
        for i in 0..6u32 {
            a.record(0, 1, 5, Some(42), &ip(i), true);
        }
        let e = a.identity(42, 5).unwrap();
        assert_eq!(e.failures, 6);
        assert_eq!(e.distinct_clients(), 6);
        assert!(a.identity(42, 6).is_none());
        let mut b = AuthActivity::new(100);
        b.record(0, 1, 5, Some(42), &ip(3), true);
        b.record(0, 1, 5, Some(42), &ip(3), true);
        let e = b.identity(42, 5).unwrap();
        assert_eq!(e.distinct_clients(), 1);
    }
}
