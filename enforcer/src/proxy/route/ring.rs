//! Who owns a session: rendezvous (highest-random-weight) hashing of the session key over the
//! replicas of the current view, and what the recent views say about sessions that moved.
//! Every replica computes the same owner from the same member list (a keyed SipHash, the key
//! derived from the shared secret so that clients cannot aim their sessions at one replica).
//! A change of members moves only the sessions of the replica that left, or the share that a
//! new replica takes (1/N of them), and nothing else.
//!
//! Replicas do not change views at the same instant (DNS refreshes, suspicions): for a moment
//! after a change, others may still route by the previous view. A session that moved is
//! therefore treated as possibly decided elsewhere until `hold` after the change, not only
//! at the change (docs/scale-out.md, "While the replicas change").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Previous views kept to tell which sessions moved, newest first.
const KEPT_VIEWS: usize = 8;

/// One membership: the ready replicas, sorted.
#[derive(Debug)]
pub struct View {
    pub members: Vec<SocketAddr>,
    /// The hash key the owners were computed with (derived from the signing secret).
    pub key: (u64, u64),
    /// Each member's hasher, its address already written.
    seeds: Vec<SipHasher13>,
    /// This replica's index among the members (none while it is not one).
    pub self_index: Option<usize>,
    /// When this view took effect (monotonic, and as Unix ms for other replicas).
    pub since: Instant,
    pub since_unix_ms: u64,
    /// Identifies the member list (the same on every replica with the same members): what
    /// replicas tell each other to notice that their views differ.
    pub hash: u64,
}

impl View {
    pub fn new(
        key: (u64, u64),
        mut members: Vec<SocketAddr>,
        self_addr: SocketAddr,
        since: Instant,
        since_unix_ms: u64,
    ) -> Self {
        members.sort_unstable();
        members.dedup();
        let seeds = members
            .iter()
            .map(|m| {
                let mut h = SipHasher13::new_with_keys(key.0, key.1);
                h.write(m.to_string().as_bytes());
                h.write_u8(0xff);
                h
            })
            .collect();
        let self_index = members.iter().position(|m| *m == self_addr);
        let hash = view_hash(key, &members);
        Self {
            members,
            key,
            seeds,
            self_index,
            since,
            since_unix_ms,
            hash,
        }
    }

    /// The index of the member that owns `session` (none without members).
    pub fn owner(&self, session: &str) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, seed) in self.seeds.iter().enumerate() {
            let mut h = *seed;
            h.write(session.as_bytes());
            let w = h.finish();
            if best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, i));
            }
        }
        best.map(|(_, i)| i)
    }

    pub fn owner_addr(&self, session: &str) -> Option<SocketAddr> {
        self.owner(session)
            .and_then(|i| self.members.get(i).copied())
    }

    /// Only this replica: nothing to route.
    pub fn is_solo(&self) -> bool {
        self.members.len() == 1 && self.self_index == Some(0)
    }
}

/// The hash of a sorted member list.
pub fn view_hash(key: (u64, u64), members: &[SocketAddr]) -> u64 {
    let mut h = SipHasher13::new_with_keys(key.1, key.0);
    h.write(b"ordo view");
    for m in members {
        h.write(m.to_string().as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// The current view and the recent ones.
#[derive(Debug)]
pub struct Views {
    pub current: Arc<View>,
    /// Newest first; `previous[0]` was replaced by `current`, `previous[i]` by
    /// `previous[i - 1]`.
    previous: Vec<Arc<View>>,
    /// Views before the oldest kept are unknown since this moment (the process start, or a
    /// view dropped to keep [`KEPT_VIEWS`]): any session may have been elsewhere before it.
    unknown_before: Option<(Instant, u64)>,
}

impl Views {
    /// The first view of a process: what happened before it is unknown.
    pub fn first(view: View) -> Self {
        let at = (view.since, view.since_unix_ms);
        Self {
            current: Arc::new(view),
            previous: Vec::new(),
            unknown_before: Some(at),
        }
    }

    /// The views after `next` took effect, forgetting those replaced longer than `window`
    /// ago (the session history's duration plus the hold).
    pub fn then(&self, next: View, window: Duration) -> Self {
        let now = next.since;
        let mut previous = Vec::with_capacity(KEPT_VIEWS);
        previous.push(Arc::clone(&self.current));
        previous.extend(self.previous.iter().cloned());
        // previous[i] was replaced when previous[i - 1] (or `next`) took effect.
        let mut keep = 0;
        let mut replaced = now;
        for view in &previous {
            if now.duration_since(replaced) > window {
                break;
            }
            keep += 1;
            replaced = view.since;
        }
        let mut unknown_before = self
            .unknown_before
            .filter(|(at, _)| now.duration_since(*at) <= window);
        if keep > KEPT_VIEWS {
            keep = KEPT_VIEWS;
        }
        if keep < previous.len()
            && let Some(oldest) = previous.get(keep.saturating_sub(1))
            && now.duration_since(oldest.since) <= window
        {
            // Dropped although recent: sessions may have moved in views we no longer know.
            unknown_before = Some((oldest.since, oldest.since_unix_ms));
        }
        previous.truncate(keep);
        Self {
            current: Arc::new(next),
            previous,
            unknown_before,
        }
    }

    /// Whether no session can count as moved: no previous view and no unknown past, or the
    /// current view older than `window` (the history's duration plus the hold: everything
    /// before it is out of every window).
    pub fn settled(&self, now: Instant, window: Duration) -> bool {
        (self.previous.is_empty() && self.unknown_before.is_none())
            || now.duration_since(self.current.since) > window
    }

    /// The current or a recent view with this hash.
    pub fn find(&self, hash: u64) -> Option<&Arc<View>> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|v| v.hash == hash)
    }

    /// The latest moment (Unix ms) until which `session`, owned by `owner` now, may have been
    /// served by another replica, while that matters (within `horizon`, the session history's
    /// duration): `hold` after a recent view that gave it to another member (or to none) was
    /// replaced, since other replicas may route by that view for that long. `with_unknown`:
    /// also when what came before the oldest known view is unknown (for the owner's own
    /// table, not for what it tells others).
    pub fn moved_since(
        &self,
        session: &str,
        owner: SocketAddr,
        now: Instant,
        horizon: Duration,
        hold: Duration,
        with_unknown: bool,
    ) -> Option<u64> {
        let window = horizon + hold;
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        let mut replaced = (self.current.since, self.current.since_unix_ms);
        for view in &self.previous {
            if now.duration_since(replaced.0) > window {
                return None;
            }
            if view.owner_addr(session) != Some(owner) {
                return Some(replaced.1.saturating_add(hold_ms));
            }
            replaced = (view.since, view.since_unix_ms);
        }
        match self.unknown_before {
            Some((at, ms)) if with_unknown && now.duration_since(at) <= window => {
                Some(ms.saturating_add(hold_ms))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8090))
    }

    fn view(members: &[u8], me: u8, at: Instant, ms: u64) -> View {
        View::new(
            (1, 2),
            members.iter().map(|i| addr(*i)).collect(),
            addr(me),
            at,
            ms,
        )
    }

    #[test]
    fn owners_spread_evenly_and_only_the_leaving_share_moves() {
        let t = Instant::now();
        let five = view(&[1, 2, 3, 4, 5], 1, t, 0);
        let four = view(&[1, 2, 3, 4], 1, t, 0);
        let mut per = [0usize; 5];
        let mut moved = 0;
        for s in 0..20_000 {
            let key = format!("session-{s}");
            let owner = five.owner(&key).unwrap();
            per[owner] += 1;
            let after = four.owner_addr(&key).unwrap();
            if after != five.members[owner] {
                moved += 1;
                // Only sessions of the replica that left move.
                assert_eq!(five.members[owner], addr(5));
            }
        }
        for n in per {
            assert!((3_600..=4_400).contains(&n), "{per:?}");
        }
        assert_eq!(moved, per[4]);
        // The same members in any order give the same owners.
        let shuffled = view(&[4, 2, 1, 3], 3, t, 0);
        assert!((0..100).all(|s| {
            let k = format!("k{s}");
            shuffled.owner_addr(&k) == four.owner_addr(&k)
        }));
    }

    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn moved_sessions_are_told_apart_until_the_horizon() {
        let t0 = Instant::now();
        let horizon = Duration::from_secs(60);
        let mut views = Views::first(view(&[1, 2, 3], 1, t0, 1_000));
        // Right after the start anything may have been elsewhere (own table only).
        assert_eq!(
            views.moved_since("s", addr(1), t0, horizon, ZERO, true),
            Some(1_000)
        );
        assert_eq!(
            views.moved_since("s", addr(1), t0, horizon, ZERO, false),
            None
        );
        let t1 = t0 + Duration::from_secs(1);
        views = views.then(view(&[1, 2, 3, 4], 1, t1, 2_000), horizon);
        let mut to_new = None;
        let mut stayed = None;
        for s in 0..1000 {
            let k = format!("s{s}");
            if views.current.owner_addr(&k) == Some(addr(4)) {
                to_new.get_or_insert(k);
            } else {
                stayed.get_or_insert(k);
            }
        }
        let (to_new, stayed) = (to_new.unwrap(), stayed.unwrap());
        let owner = views.current.owner_addr(&stayed).unwrap();
        assert_eq!(
            views.moved_since(&to_new, addr(4), t1, horizon, ZERO, false),
            Some(2_000)
        );
        assert_eq!(
            views.moved_since(&stayed, owner, t1, horizon, ZERO, false),
            None
        );
        // Past the horizon nothing counts as moved any more.
        let late = t1 + Duration::from_secs(61);
        assert_eq!(
            views.moved_since(&to_new, addr(4), late, horizon, ZERO, true),
            None
        );
        assert!(!views.settled(t1, horizon));
        assert!(views.settled(late, horizon));
        let views = views.then(view(&[1, 2, 4], 1, late, 70_000), horizon);
        assert!(!views.settled(late, horizon));
        assert!(views.settled(late + Duration::from_secs(61), horizon));
    }

    #[test]
    fn a_moved_session_counts_as_served_elsewhere_until_the_hold_after_the_change() {
        let t0 = Instant::now();
        let (horizon, hold) = (Duration::from_secs(60), Duration::from_secs(5));
        let views = Views::first(view(&[1, 2, 3], 1, t0, 1_000));
        // Others may still route by the first view until `hold` after it was replaced, and
        // what they decided matters for one horizon after that.
        let t1 = t0 + Duration::from_secs(100);
        let views = views.then(view(&[1, 2, 3, 4], 1, t1, 101_000), horizon + hold);
        let moved = (0..1000)
            .map(|s| format!("s{s}"))
            .find(|k| views.current.owner_addr(k) == Some(addr(4)))
            .unwrap();
        assert_eq!(
            views.moved_since(&moved, addr(4), t1, horizon, hold, false),
            Some(106_000)
        );
        let in_window = t1 + horizon + hold - Duration::from_millis(1);
        assert!(!views.settled(in_window, horizon + hold));
        assert_eq!(
            views.moved_since(&moved, addr(4), in_window, horizon, hold, false),
            Some(106_000)
        );
        let past = t1 + horizon + hold + Duration::from_millis(1);
        assert_eq!(
            views.moved_since(&moved, addr(4), past, horizon, hold, false),
            None
        );
        assert!(views.settled(past, horizon + hold));
    }

    #[test]
    fn the_same_members_give_the_same_view_hash_on_every_replica() {
        let t = Instant::now();
        let a = view(&[3, 1, 2], 1, t, 0);
        let b = view(&[1, 2, 3], 2, t + Duration::from_secs(9), 99);
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, view(&[1, 2], 1, t, 0).hash);
        assert_ne!(a.hash, view(&[1, 2, 3, 4], 1, t, 0).hash);
        let views = Views::first(a).then(view(&[1, 2], 1, t, 0), Duration::from_secs(60));
        assert!(views.find(b.hash).is_some());
        assert!(views.find(0).is_none());
    }
}
