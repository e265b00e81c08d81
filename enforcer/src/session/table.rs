//! The bounded session table: shards of `Mutex<HashMap<u64, SessionEntry>>` keyed by a
//! keyed hash of the session string (the string itself is not stored). The number of shards
//! follows `maxSessions` (at least 64) so that a full shard fills its hash table's buckets to
//! 7/8 instead of leaving half of them empty (see [`shard_count`]). Entries expire
//! after the idle timeout; beyond the cap sessions are evicted in batches, young and unverified
//! ones first (see [`SessionEntry::standing`]): a flood of fresh session ids evicts other
//! fresh ids, not the history of an established user. When an established session is evicted
//! anyway (the shard is full of established ones), its hash is remembered for a while, and if
//! it comes back its history is marked lost ([`History::mark_lost`]), so that rules do not
//! hold the missing history against it.
//! A lock is held only for the synchronous work of one request, never across an await.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::history::History;

/// Fewest shards (lock striping for concurrent requests).
const MIN_SHARDS: usize = 64;
/// Sessions per shard at the cap: 7/8 of 16,384 buckets, the table's maximum load before it
/// doubles, so a full shard uses its buckets well.
const FULL_SHARD: usize = 16_384 / 8 * 7;

/// Shards for a table of `max_sessions`: at least [`MIN_SHARDS`], more when each would hold
/// more than [`FULL_SHARD`] sessions (1,000,000 sessions: 70 shards of 14,286).
pub fn shard_count(max_sessions: usize) -> usize {
    max_sessions.div_ceil(FULL_SHARD).max(MIN_SHARDS)
}

/// Passes an already-hashed `u64` through.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Sessions<S> = HashMap<u64, SessionEntry<S>, BuildHasherDefault<PassThroughHasher>>;

/// Requests after which a session counts as established.
pub const ESTABLISHED_REQUESTS: u16 = 4;
/// Evicted established sessions remembered per shard (their hashes, oldest forgotten first).
const REMEMBERED_EVICTIONS: usize = 64;

struct Shard<S> {
    map: Sessions<S>,
    /// Hashes of established sessions evicted recently.
    evicted: VecDeque<u64>,
}

impl<S> Default for Shard<S> {
    fn default() -> Self {
        Self {
            map: Sessions::default(),
            evicted: VecDeque::new(),
        }
    }
}

impl<S> Shard<S> {
    fn remember_eviction(&mut self, hash: u64) {
        if self.evicted.len() >= REMEMBERED_EVICTIONS {
            self.evicted.pop_front();
        }
        self.evicted.push_back(hash);
    }

    /// Whether `hash` was evicted recently (and forgets it).
    fn was_evicted(&mut self, hash: u64) -> bool {
        match self.evicted.iter().position(|h| *h == hash) {
            Some(at) => {
                self.evicted.remove(at);
                true
            }
            None => false,
        }
    }
}

/// Declared rate-limit state of one limit in one session (GCRA theoretical arrival time).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitSlot {
    pub limit: u16,
    /// Theoretical arrival time, ms since the table epoch.
    pub tat_ms: u64,
}

/// The rate-limit slots of one session, one per declared limit of the operations it used.
/// Not in the entry itself: most sessions never use a limited operation, so the detectors'
/// state keeps them with its other rarely used parts (`SessionState::limits_mut`), and
/// the entry is 8 bytes smaller.
#[derive(Debug, Default)]
pub struct LimitSlots(Vec<LimitSlot>);

impl LimitSlots {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slot of limit `limit`, added (at 0) when the session has none yet.
    pub fn slot_mut(&mut self, limit: u16) -> Option<&mut LimitSlot> {
        let slots = &mut self.0;
        let pos = match slots.iter().position(|s| s.limit == limit) {
            Some(pos) => pos,
            None => {
                slots.push(LimitSlot { limit, tat_ms: 0 });
                slots.len() - 1
            }
        };
        slots.get_mut(pos)
    }
}

/// Everything kept per session. Small on purpose (see `entry_size_is_small` where the proxy
/// instantiates it: 48 bytes, 56 with the key in the hash table). `S` is the learned
/// detectors' state, which this module does not know; it also keeps what few sessions have
/// (their declared rate-limit slots, their open incident) behind one box of its own.
#[derive(Debug, Default)]
pub struct SessionEntry<S> {
    /// Seconds since the table epoch.
    last_seen_s: u32,
    pub history: History,
    /// The learned detectors' state.
    pub state: S,
    /// Requests seen (saturating).
    requests: u16,
    /// A verified token named the session.
    verified: bool,
}

impl<S> SessionEntry<S> {
    /// Counts one request of the session; `verified` when a verified token named it.
    pub fn note_request(&mut self, verified: bool) {
        self.requests = self.requests.saturating_add(1);
        self.verified |= verified;
    }

    /// How much the session is worth keeping when the table is full: 0 young and unverified,
    /// 1 established or verified, 2 both. Lower goes first.
    pub fn standing(&self) -> u8 {
        u8::from(self.requests >= ESTABLISHED_REQUESTS) + u8::from(self.verified)
    }
}

/// Table counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableStats {
    pub sessions: usize,
    pub capacity: usize,
    pub evicted: u64,
    pub expired: u64,
}

/// The sharded table of entries carrying detector state `S`.
pub struct SessionTable<S> {
    shards: Box<[Mutex<Shard<S>>]>,
    hasher: std::collections::hash_map::RandomState,
    per_shard_cap: AtomicUsize,
    idle_s: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    len: AtomicUsize,
}

impl<S> std::fmt::Debug for SessionTable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S> SessionTable<S> {
    /// `max_sessions` is split evenly over the shards (rounded up); the number of shards is
    /// fixed here from `max_sessions` (a reload changes only the per-shard cap).
    pub fn new(max_sessions: usize, idle_timeout: std::time::Duration) -> Self {
        let shards = (0..shard_count(max_sessions))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let table = Self {
            shards,
            hasher: std::collections::hash_map::RandomState::new(),
            per_shard_cap: AtomicUsize::new(1),
            idle_s: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            len: AtomicUsize::new(0),
        };
        table.configure(max_sessions, idle_timeout);
        table
    }

    /// Applies new limits (config reload); shrinking takes effect as sessions arrive.
    pub fn configure(&self, max_sessions: usize, idle_timeout: std::time::Duration) {
        self.per_shard_cap.store(
            max_sessions.div_ceil(self.shards.len()).max(1),
            Ordering::Relaxed,
        );
        self.idle_s
            .store(idle_timeout.as_secs().max(1), Ordering::Relaxed);
    }

    /// The keyed hash of a session key.
    pub fn key_hash(&self, session: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(session.as_bytes());
        h.finish()
    }

    /// Runs `f` on the session's entry (created if needed) with its shard locked.
    /// `now_s` is seconds since the caller's epoch (the same for every call).
    pub fn with_entry<R>(
        &self,
        hash: u64,
        now_s: u32,
        f: impl FnOnce(&mut SessionEntry<S>, bool) -> R,
    ) -> Option<R>
    where
        S: Default,
    {
        // The high bits pick the shard; the map inside uses the low bits for its buckets.
        let shard = self.shards.get((hash >> 40) as usize % self.shards.len())?;
        let mut shard = shard.lock();
        let idle = u32::try_from(self.idle_s.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let mut fresh = false;
        if let Some(entry) = shard.map.get_mut(&hash) {
            if now_s.saturating_sub(entry.last_seen_s) > idle {
                // Expired while idle: start over.
                *entry = SessionEntry::default();
                fresh = true;
                self.expired.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let cap = self.per_shard_cap.load(Ordering::Relaxed);
            if shard.map.len() >= cap {
                self.make_room(&mut shard, now_s, idle, cap);
            }
            let mut entry = SessionEntry::default();
            if shard.was_evicted(hash) {
                entry.history.mark_lost();
            }
            shard.map.insert(hash, entry);
            self.len.fetch_add(1, Ordering::Relaxed);
            fresh = true;
        }
        let entry = shard.map.get_mut(&hash)?;
        entry.last_seen_s = now_s;
        Some(f(entry, fresh))
    }

    /// For a session that may have been served by another enforcer replica since `since_s`
    /// (it moved here when the replicas changed): unless this replica saw it at or after
    /// `since_s` (strictly after: the second is the clock's grain), what the entry holds
    /// may lack what happened elsewhere, so it starts over with its history marked lost
    /// (rules then err toward not firing, as after an eviction). Returns whether it did.
    pub fn forget_unless_seen_after(&self, hash: u64, now_s: u32, since_s: u32) -> bool
    where
        S: Default,
    {
        let stale = {
            let Some(shard) = self.shards.get((hash >> 40) as usize % self.shards.len()) else {
                return false;
            };
            shard
                .lock()
                .map
                .get(&hash)
                .is_none_or(|e| e.last_seen_s <= since_s)
        };
        if stale {
            self.with_entry(hash, now_s, |entry, _| {
                *entry = SessionEntry::default();
                entry.history.mark_lost();
            });
        }
        stale
    }

    /// Drops expired entries; if still full, an eighth of the shard: the lowest standing
    /// first, the least recently seen first within a standing.
    fn make_room(&self, shard: &mut Shard<S>, now_s: u32, idle: u32, cap: usize) {
        let map = &mut shard.map;
        let before = map.len();
        map.retain(|_, e| now_s.saturating_sub(e.last_seen_s) <= idle);
        let expired = before - map.len();
        self.expired.fetch_add(expired as u64, Ordering::Relaxed);
        self.len.fetch_sub(expired, Ordering::Relaxed);
        if map.len() < cap {
            return;
        }
        let batch = (cap / 8).max(1).min(map.len());
        let order = |e: &SessionEntry<S>| (e.standing(), e.last_seen_s);
        let mut keys: Vec<(u8, u32)> = map.values().map(order).collect();
        let (_, cutoff, _) = keys.select_nth_unstable(batch - 1);
        let cutoff = *cutoff;
        let mut removed = Vec::with_capacity(batch);
        map.retain(|hash, e| {
            if removed.len() < batch && order(e) <= cutoff {
                removed.push((*hash, e.standing() > 0));
                false
            } else {
                true
            }
        });
        for (hash, established) in &removed {
            if *established {
                shard.remember_eviction(*hash);
            }
        }
        self.evicted
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        self.len.fetch_sub(removed.len(), Ordering::Relaxed);
    }

    /// Removes every idle entry (all shards at once; see [`Self::sweep_shard`]).
    pub fn sweep(&self, now_s: u32) -> usize {
        (0..self.shards.len())
            .map(|index| self.sweep_shard(index, now_s))
            .sum()
    }

    /// Number of shards, for sweeping them one at a time.
    pub fn shard_len(&self) -> usize {
        self.shards.len()
    }

    /// Removes the idle entries of one shard. The proxy's housekeeping sweeps shard by shard,
    /// letting requests run in between: a whole table of 100,000 sessions is milliseconds of
    /// work, a stall that every request queued behind it would pay.
    pub fn sweep_shard(&self, index: usize, now_s: u32) -> usize {
        let idle = u32::try_from(self.idle_s.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let Some(mut shard) = self.shards.get(index).map(Mutex::lock) else {
            return 0;
        };
        let map = &mut shard.map;
        let before = map.len();
        map.retain(|_, e| now_s.saturating_sub(e.last_seen_s) <= idle);
        let n = before - map.len();
        if map.capacity() > 4 * map.len().max(16) {
            map.shrink_to_fit();
        }
        drop(shard);
        self.expired.fetch_add(n as u64, Ordering::Relaxed);
        self.len.fetch_sub(n, Ordering::Relaxed);
        n
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            sessions: self.len.load(Ordering::Relaxed),
            capacity: self.per_shard_cap.load(Ordering::Relaxed) * self.shards.len(),
            evicted: self.evicted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// Exact count (locks every shard; for tests and diagnostics).
    pub fn count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table without detector state.
    type SessionTable = super::SessionTable<()>;

    #[test]
    fn one_million_sessions_stay_within_the_cap() {
        let table = SessionTable::new(50_000, std::time::Duration::from_secs(600));
        for i in 0..1_000_000u32 {
            let key = format!("header:x-session-id=user-{i}");
            let hash = table.key_hash(&key);
            table
                .with_entry(hash, i / 1000, |e, _| e.history.push(1, u64::from(i), 10))
                .unwrap();
        }
        let stats = table.stats();
        assert!(table.count() <= 50_048, "{stats:?}");
        assert_eq!(stats.sessions, table.count());
        assert!(stats.evicted >= 1_000_000 - 50_048, "{stats:?}");
        // The most recent sessions survive.
        let hash = table.key_hash("header:x-session-id=user-999999");
        assert_eq!(
            table
                .with_entry(hash, 1000, |e, fresh| (fresh, e.history.len()))
                .unwrap(),
            (false, 1)
        );
    }

    /// 50,000 fresh ids against 10,000 slots: the established users keep their history; an
    /// established session evicted anyway comes back with its history marked lost.
    #[test]
    fn a_flood_of_fresh_ids_evicts_fresh_ids_first() {
        let table = SessionTable::new(10_000, std::time::Duration::from_secs(3600));
        let users: Vec<u64> = (0..500)
            .map(|i| table.key_hash(&format!("cookie:sid=user-{i}")))
            .collect();
        for hash in &users {
            for op in 0..5u32 {
                table
                    .with_entry(*hash, 0, |e, _| {
                        e.note_request(false);
                        e.history.push(op, u64::from(op), 10);
                    })
                    .unwrap();
            }
        }
        for i in 0..50_000u32 {
            let hash = table.key_hash(&format!("cookie:sid=flood-{i}"));
            table
                .with_entry(hash, 1 + i / 1000, |e, _| e.note_request(false))
                .unwrap();
        }
        assert!(table.stats().evicted >= 40_000, "{:?}", table.stats());
        for hash in &users {
            let (fresh, len) = table
                .with_entry(*hash, 100, |e, fresh| (fresh, e.history.len()))
                .unwrap();
            assert!(!fresh && len == 5, "an established user lost its history");
        }
        // A shard full of established sessions evicts them; the evicted one is marked.
        let small = SessionTable::new(64, std::time::Duration::from_secs(3600));
        let hashes: Vec<u64> = (0..2_000)
            .map(|i| small.key_hash(&format!("s{i}")))
            .collect();
        for (t, hash) in hashes.iter().enumerate() {
            for _ in 0..5 {
                small
                    .with_entry(*hash, u32::try_from(t).unwrap(), |e, _| {
                        e.note_request(false)
                    })
                    .unwrap();
            }
        }
        let lost = small
            .with_entry(hashes[0], 5_000, |e, fresh| (fresh, e.history.is_lost()))
            .unwrap();
        assert_eq!(lost, (true, true));
    }

    #[test]
    fn shards_follow_max_sessions() {
        assert_eq!(shard_count(10_000), 64);
        assert_eq!(shard_count(1_000_000), 70);
        assert!(1_000_000usize.div_ceil(shard_count(1_000_000)) <= FULL_SHARD);
        let table = SessionTable::new(1_110_000, std::time::Duration::from_secs(600));
        assert_eq!(table.stats().capacity, 78 * 1_110_000usize.div_ceil(78));
    }

    #[test]
    fn idle_sessions_expire() {
        let table = SessionTable::new(1000, std::time::Duration::from_secs(60));
        for i in 0..100u32 {
            let hash = table.key_hash(&format!("s{i}"));
            table.with_entry(hash, 0, |_, _| ()).unwrap();
        }
        assert_eq!(table.sweep(30), 0);
        assert_eq!(table.sweep(61), 100);
        assert_eq!(table.stats().sessions, 0);
    }
}
