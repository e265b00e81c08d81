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
/// Failed attempts remembered per authenticating operation for naming the members of a
/// campaign (see [`AuthActivity::campaign_members`]), oldest out first.
pub const MAX_FAILURES: usize = 256;

/// One authentication attempt as remembered by the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    at_ms: u64,
    /// Hash of the claimed identity (0 = none claimed).
    identity: u64,
    /// Hash of the client address.
    client: u64,
    failed: bool,
}

/// One failed attempt kept for naming the members of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    at_ms: u64,
    identity: u64,
    client: u64,
    /// The address itself, to name the members of a campaign.
    address: IpAddr,
    /// Named as a member already, or cleared (its address logged in as that identity
    /// afterwards, or went on using the API).
    settled: bool,
    /// Recorded from another replica's decision (`record_elsewhere`): that replica names it.
    elsewhere: bool,
}

#[derive(Debug)]
struct AttemptRing {
    op: u16,
    next: usize,
    attempts: Vec<Attempt>,
    /// The operation's failed attempts, oldest first (at most [`MAX_FAILURES`]): kept apart
    /// from `attempts` so that a campaign's first tries are still named when the surge is
    /// recognised after they left the ring of the last [`RING_SIZE`] attempts.
    failures: std::collections::VecDeque<Failure>,
    /// The learned failure rate frozen for one counting window: (window, rate).
    frozen_rate: Option<(u64, f64)>,
    /// When a surge of failures was last found on the operation (0: never).
    surged_ms: u64,
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
    /// The campaign in progress: (operation, first named, last named), unix ms.
    campaign: Option<(u16, u64, u64)>,
}

impl AuthActivity {
    pub fn new(max_identities: usize) -> Self {
        Self {
            rings: Vec::new(),
            identities: HashMap::new(),
            max_identities,
            untracked: 0,
            campaign: None,
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
            if failed {
                if ring.failures.len() >= MAX_FAILURES {
                    ring.failures.pop_front();
                }
                ring.failures.push_back(Failure {
                    at_ms: now_ms,
                    identity: attempt.identity,
                    client: client_key,
                    address: *client,
                    settled: false,
                    elsewhere: false,
                });
            } else {
                // An honest user who mistyped logs in right after: not a member.
                for f in ring
                    .failures
                    .iter_mut()
                    .filter(|f| f.client == client_key && f.identity == attempt.identity)
                {
                    f.settled = true;
                }
            }
        }
        if failed && let Some(identity) = identity {
            self.record_identity_failure(identity, window, client_key);
        }
    }

    /// [`Self::record`] for an attempt another replica decided (shared with this one): it
    /// counts here alike, but a failure of it is named by that replica's sweep, not this
    /// one's (see [`Self::campaign_members`]).
    pub fn record_elsewhere(
        &mut self,
        op: u16,
        at_ms: u64,
        window: u64,
        identity: Option<u64>,
        client: &IpAddr,
        failed: bool,
    ) {
        self.record(op, at_ms, window, identity, client, failed);
        if failed
            && let Some(ring) = self.rings.iter_mut().find(|r| r.op == op)
            && let Some(last) = ring.failures.back_mut()
        {
            last.elsewhere = true;
        }
    }

    /// The authenticating operations with a ring.
    pub fn operations(&self) -> Vec<u16> {
        self.rings.iter().map(|r| r.op).collect()
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
            failures: std::collections::VecDeque::new(),
            frozen_rate: None,
            surged_ms: 0,
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

    /// The addresses of failed attempts of `op` in the last `horizon_ms` (the counting
    /// window, not only the last [`RING_SIZE`] attempts: a campaign's first tries were made
    /// before its surge could be recognised) that were made at least `settle_ms` ago and that
    /// the same address did not follow with a success for the same identity (an honest user
    /// who mistyped logs in right after) nor with other use of the API: the members of a
    /// campaign, each named once (at most `max` per call).
    pub fn campaign_members(
        &mut self,
        op: u16,
        now_ms: u64,
        horizon_ms: u64,
        settle_ms: u64,
        max: usize,
    ) -> Vec<IpAddr> {
        self.members(op, now_ms, horizon_ms, settle_ms, max, false)
    }

    /// [`Self::campaign_members`] among the failures decided here only (the sweep's: a
    /// failure another replica decided is that replica's to name).
    pub fn campaign_members_decided_here(
        &mut self,
        op: u16,
        now_ms: u64,
        horizon_ms: u64,
        settle_ms: u64,
        max: usize,
    ) -> Vec<IpAddr> {
        self.members(op, now_ms, horizon_ms, settle_ms, max, true)
    }

    fn members(
        &mut self,
        op: u16,
        now_ms: u64,
        horizon_ms: u64,
        settle_ms: u64,
        max: usize,
        here_only: bool,
    ) -> Vec<IpAddr> {
        let Some(ring) = self.rings.iter_mut().find(|r| r.op == op) else {
            return Vec::new();
        };
        let since = now_ms.saturating_sub(horizon_ms);
        let settled = now_ms.saturating_sub(settle_ms);
        let mut members = Vec::new();
        for f in ring.failures.iter_mut() {
            if members.len() >= max {
                break;
            }
            if f.settled || f.at_ms < since || f.at_ms > settled || (here_only && f.elsewhere) {
                continue;
            }
            f.settled = true;
            if !members.contains(&f.address) {
                members.push(f.address);
            }
        }
        members
    }

    /// `client` was named a member of a campaign on another replica at a time when its
    /// failed attempts up to `up_to_ms` had settled: they count as named here too, so that
    /// each member is named once across the replicas (see [`Self::campaign_members`]).
    pub fn named_elsewhere(&mut self, client: &IpAddr, up_to_ms: u64) {
        let key = client_hash(client);
        for ring in &mut self.rings {
            for f in ring
                .failures
                .iter_mut()
                .filter(|f| f.client == key && f.at_ms <= up_to_ms)
            {
                f.settled = true;
            }
        }
    }

    /// A surge of failures was found on `op` at `now_ms`.
    pub fn mark_surge(&mut self, op: u16, now_ms: u64) {
        if let Some(ring) = self.rings.iter_mut().find(|r| r.op == op) {
            ring.surged_ms = ring.surged_ms.max(now_ms);
        }
    }

    /// Whether a surge was found on `op` within `horizon_ms` before `now_ms`.
    pub fn surged_within(&self, op: u16, now_ms: u64, horizon_ms: u64) -> bool {
        self.rings
            .iter()
            .find(|r| r.op == op)
            .is_some_and(|r| r.surged_ms != 0 && now_ms.saturating_sub(r.surged_ms) <= horizon_ms)
    }

    /// Whether no attempt on `op` (decided here or on another replica) came within `quiet_ms`
    /// before `now_ms`.
    pub fn quiet_for(&self, op: u16, now_ms: u64, quiet_ms: u64) -> bool {
        self.rings.iter().find(|r| r.op == op).is_some_and(|r| {
            r.attempts
                .iter()
                .all(|a| now_ms.saturating_sub(a.at_ms) >= quiet_ms)
        })
    }

    /// `client` went on using the API after failing to authenticate (an honest user carries
    /// on with what they came for; a stuffer's address only tries logins): its failed attempts
    /// not named yet are no campaign evidence.
    pub fn carried_on(&mut self, client: &IpAddr) {
        let key = client_hash(client);
        for ring in &mut self.rings {
            for f in ring.failures.iter_mut().filter(|f| f.client == key) {
                f.settled = true;
            }
        }
    }

    /// A stable id of the campaign against `op` in progress (its first naming time, mixed
    /// with the operation): a new campaign starts when none was named for `horizon_ms`.
    pub fn campaign_id(&mut self, op: u16, now_ms: u64, horizon_ms: u64) -> u64 {
        let started = match self.campaign {
            Some((o, started, last)) if o == op && now_ms.saturating_sub(last) <= horizon_ms => {
                started
            }
            _ => now_ms,
        };
        self.campaign = Some((op, started, now_ms));
        (started << 16) | u64::from(op)
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

#[cfg(test)]
mod campaign_tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xCB00_7100 + i))
    }

    #[test]
    fn members_are_settled_failures_not_followed_by_a_success() {
        let mut a = AuthActivity::new(100);
        // Three stuffers fail once each; an honest user fails and then logs in.
        a.record(0, 1_000, 1, Some(11), &ip(1), true);
        a.record(0, 1_100, 1, Some(12), &ip(2), true);
        a.record(0, 1_200, 1, Some(7), &ip(9), true);
        a.record(0, 1_300, 1, Some(7), &ip(9), false);
        a.record(0, 1_400, 1, Some(13), &ip(3), true);
        // An address that went on using the API after failing is no member.
        a.record(0, 1_420, 1, Some(15), &ip(5), true);
        a.carried_on(&ip(5));
        // Not settled yet (300 ms): only those older than that.
        assert_eq!(
            a.campaign_members(0, 1_450, 60_000, 300, 10),
            vec![ip(1), ip(2)]
        );
        // Each member is named once; the honest users never (ip 9 logged in, ip 5 carried on).
        assert_eq!(a.campaign_members(0, 5_000, 60_000, 300, 10), vec![ip(3)]);
        assert!(a.campaign_members(0, 6_000, 60_000, 300, 10).is_empty());
        // Beyond the horizon, nothing; another operation, nothing.
        a.record(0, 10_000, 1, Some(14), &ip(4), true);
        assert!(a.campaign_members(0, 100_000, 1_000, 300, 10).is_empty());
        assert!(a.campaign_members(1, 10_500, 60_000, 300, 10).is_empty());
    }

    #[test]
    fn first_tries_are_named_after_they_left_the_ring_of_recent_attempts() {
        let mut a = AuthActivity::new(1000);
        // A stuffer's single try, then far more than a ring of honest logins (one of whom
        // mistypes first and logs in 200 attempts later), then the surge is recognised.
        a.record(0, 1_000, 1, Some(11), &ip(1), true);
        a.record(0, 1_001, 1, Some(7), &ip(9), true);
        for i in 0..(2 * RING_SIZE as u32) {
            let at = 2_000 + u64::from(i);
            let (identity, client) = if i == 200 {
                (7, ip(9))
            } else {
                (1_000 + u64::from(i), ip(1_000 + i))
            };
            a.record(0, at, 1, Some(identity), &client, false);
        }
        assert_eq!(a.recent(0, 3_000, 60_000).failures, 0, "left the ring");
        assert_eq!(
            a.campaign_members(0, 3_000, 60_000, 300, 10),
            vec![ip(1)],
            "the stuffer is named, the user who logged in later is not"
        );
    }

    #[test]
    fn a_member_named_elsewhere_is_not_named_again() {
        let mut a = AuthActivity::new(100);
        a.record(0, 1_000, 1, Some(11), &ip(1), true);
        a.record(0, 1_100, 1, Some(12), &ip(2), true);
        a.record(0, 1_200, 1, Some(13), &ip(1), true);
        // Named on another replica when its failures up to 1_100 had settled.
        a.named_elsewhere(&ip(1), 1_100);
        assert_eq!(
            a.campaign_members(0, 5_000, 60_000, 300, 10),
            vec![ip(2), ip(1)],
            "its later failure still names it, as on the replica that named it"
        );
        a.record(0, 6_000, 1, Some(14), &ip(3), true);
        a.named_elsewhere(&ip(3), 7_000);
        assert!(a.campaign_members(0, 9_000, 60_000, 300, 10).is_empty());
    }

    #[test]
    fn failures_kept_for_campaigns_are_bounded() {
        let mut a = AuthActivity::new(10);
        for i in 0..(3 * MAX_FAILURES as u32) {
            a.record(0, 1_000 + u64::from(i), 1, Some(u64::from(i)), &ip(i), true);
        }
        let ring = a.rings.first().unwrap();
        assert_eq!(ring.failures.len(), MAX_FAILURES);
        // The oldest went first.
        assert_eq!(
            ring.failures.front().map(|f| f.at_ms),
            Some(1_000 + 2 * MAX_FAILURES as u64)
        );
    }
}
