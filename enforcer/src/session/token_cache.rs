//! Verified bearer tokens, remembered so that a client presenting the same token on every
//! request is verified once, not on every request (an HS256 check costs microseconds, RS256
//! and ES256 far more).
//!
//! Only successful verifications are kept, with the one value the session key needs (the
//! configured claim) and until the token expires (`exp` plus the configured leeway, and never
//! longer than [`MAX_AGE_S`]): an expired token is verified again, and rejected. Entries are
//! keyed by a 128-bit SipHash-1-3 of the claim name and the token under a per-process random
//! key (one half is the map key, the other the entry's check) — 128 bits that nobody outside
//! the process can compute, so a forged token
//! cannot be aimed at a cached one — and the token itself is not stored (an entry is about
//! 90 bytes: 131,072 entries are about 12 MB; [`capacity_for`] sizes it from the session table). The cache is bounded:
//! each shard holds two generations; when the current one is full it becomes the previous one
//! and the oldest generation is dropped, and a hit in the previous generation moves the entry
//! forward (an approximate LRU with constant-time operations). The cache belongs to the
//! compiled policy, so a reload (new keys, issuer or audience) starts it empty.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use parking_lot::Mutex;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::table::PassThroughHasher;

/// Longest time a verified token is trusted without being verified again, seconds.
pub const MAX_AGE_S: u64 = 300;
/// Tokens longer than this are verified every time (never stored).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Bound on remembered tokens for a session table of `max_sessions`: three times the table, so
/// that one generation (the older is dropped when the newer fills) holds every tracked
/// session's current token between its requests. A generation per shard is 1.5 times the
/// shard's average share of sessions: tokens hash to shards at random, and with exactly the
/// average (twice the table) a shard holding a few more active sessions than average thrashed,
/// dropping tokens still in use (a 15% chance with 8,000 of 10,000 sessions active). At most
/// 2^21 tokens (~190 MB).
pub fn capacity_for(max_sessions: usize) -> usize {
    max_sessions.saturating_mul(3).clamp(1024, 1 << 21)
}

/// Shards of the cache. Many, so that a generation is small: when one fills, the generation
/// before it is dropped on the request path that filled it (about 4,000 entries per shard at
/// the benchmark's size, a fraction of a millisecond; with 16 shards it was four times that).
const SHARDS: usize = 64;

/// A random 64-bit value from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[derive(Debug)]
struct Verified {
    /// The second hash of the claim name and token (the first is the map key).
    check: u64,
    /// The claim's value (`None`: the token is valid but carries no usable value).
    value: Option<Box<str>>,
    /// Unix seconds after which the token must be verified again.
    valid_until_s: u64,
}

type Generation = HashMap<u64, Verified, BuildHasherDefault<PassThroughHasher>>;

#[derive(Debug, Default)]
struct Shard {
    current: Generation,
    previous: Generation,
}

/// The bounded cache of verified tokens.
#[derive(Debug)]
pub struct VerifiedTokens {
    shards: Box<[Mutex<Shard>]>,
    /// Per-process random key of the 128-bit SipHash whose halves are an entry's map key and
    /// its `check` (one pass over the token instead of two keyed 64-bit hashes).
    hasher: SipHasher13,
    /// Entries per generation per shard (two generations: at most twice this per shard).
    generation_cap: usize,
}

/// What a cache lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    /// Verified before and not expired: the claim's value (`None`: no usable value).
    Valid(Option<String>),
    Unknown,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: SipHasher13::new_with_keys(random_u64(), random_u64()),
            generation_cap: capacity / (2 * SHARDS),
        }
    }

    /// The map key and the check of `claim` and `token` verified with the keys of `epoch`.
    fn key(&self, epoch: u64, claim: &str, token: &str) -> (u64, u64) {
        let mut h = self.hasher;
        h.write_u64(epoch);
        h.write(claim.as_bytes());
        h.write_u8(0xff);
        h.write(token.as_bytes());
        let hash = h.finish128();
        (hash.h1, hash.h2)
    }

    fn shard(&self, key: u64) -> Option<&Mutex<Shard>> {
        self.shards.get((key >> 58) as usize % SHARDS)
    }

    /// Looks `token` up for `claim` at `now_s` (unix seconds), as verified by the key set
    /// `epoch` (a token verified by an earlier set, whose key may have been removed since, is
    /// not found).
    pub fn get(&self, epoch: u64, claim: &str, token: &str, now_s: u64) -> Cached {
        if self.generation_cap == 0 || token.len() > MAX_TOKEN_LEN {
            return Cached::Unknown;
        }
        let (key, check) = self.key(epoch, claim, token);
        let Some(shard) = self.shard(key) else {
            return Cached::Unknown;
        };
        let mut shard = shard.lock();
        let matches = |v: &Verified| v.check == check;
        if let Some(v) = shard.current.get(&key) {
            if matches(v) && now_s <= v.valid_until_s {
                return Cached::Valid(v.value.as_deref().map(str::to_owned));
            }
            return Cached::Unknown;
        }
        let Some(v) = shard.previous.remove(&key) else {
            return Cached::Unknown;
        };
        if !matches(&v) || now_s > v.valid_until_s {
            return Cached::Unknown;
        }
        let value = v.value.as_deref().map(str::to_owned);
        Self::insert_into(&mut shard, key, v, self.generation_cap);
        Cached::Valid(value)
    }

    /// Remembers a verified token: `expires_s` is its expiry claim plus the tolerated clock
    /// skew (unix seconds) when it has one.
    pub fn insert(
        &self,
        epoch: u64,
        claim: &str,
        token: &str,
        value: Option<&str>,
        expires_s: Option<u64>,
        now_s: u64,
    ) {
        if self.generation_cap == 0 || token.len() > MAX_TOKEN_LEN {
            return;
        }
        let mut valid_until_s = now_s.saturating_add(MAX_AGE_S);
        if let Some(expires_s) = expires_s {
            valid_until_s = valid_until_s.min(expires_s);
        }
        if valid_until_s < now_s {
            return;
        }
        let (key, check) = self.key(epoch, claim, token);
        let Some(shard) = self.shard(key) else {
            return;
        };
        let entry = Verified {
            check,
            value: value.map(Into::into),
            valid_until_s,
        };
        let mut shard = shard.lock();
        Self::insert_into(&mut shard, key, entry, self.generation_cap);
    }

    fn insert_into(shard: &mut Shard, key: u64, entry: Verified, cap: usize) {
        if shard.current.len() >= cap && !shard.current.contains_key(&key) {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(key, entry);
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_and_expiry() {
        let cache = VerifiedTokens::new(1024);
        assert_eq!(cache.get(0, "sub", "t1", 100), Cached::Unknown);
        cache.insert(0, "sub", "t1", Some("alice"), Some(160), 100);
        assert_eq!(
            cache.get(0, "sub", "t1", 100),
            Cached::Valid(Some("alice".into()))
        );
        // A different token or claim is not the cached one.
        assert_eq!(cache.get(0, "sub", "t2", 100), Cached::Unknown);
        assert_eq!(cache.get(0, "uid", "t1", 100), Cached::Unknown);
        // Verified by another key set (the JWKS changed since): verified again.
        assert_eq!(cache.get(1, "sub", "t1", 100), Cached::Unknown);
        // Valid until exp + leeway, not after.
        assert_eq!(
            cache.get(0, "sub", "t1", 160),
            Cached::Valid(Some("alice".into()))
        );
        assert_eq!(cache.get(0, "sub", "t1", 161), Cached::Unknown);
        // Without exp: at most MAX_AGE_S.
        cache.insert(0, "sub", "t3", None, None, 1000);
        assert_eq!(
            cache.get(0, "sub", "t3", 1000 + MAX_AGE_S),
            Cached::Valid(None)
        );
        assert_eq!(cache.get(0, "sub", "t3", 1001 + MAX_AGE_S), Cached::Unknown);
        // Already expired: not stored.
        cache.insert(0, "sub", "t4", Some("bob"), Some(10), 100);
        assert_eq!(cache.get(0, "sub", "t4", 100), Cached::Unknown);
    }

    #[test]
    fn bounded_with_recent_entries_kept() {
        let capacity = 2 * SHARDS * 8;
        let cache = VerifiedTokens::new(capacity);
        cache.insert(0, "sub", "hot", Some("hot"), None, 0);
        for i in 0..10_000 {
            cache.insert(0, "sub", &format!("token-{i}"), Some("x"), None, 0);
            // A token in use stays: every hit moves it into the current generation.
            assert_eq!(
                cache.get(0, "sub", "hot", 0),
                Cached::Valid(Some("hot".into()))
            );
        }
        assert!(cache.len() <= capacity, "{} > {capacity}", cache.len());
        assert_eq!(cache.get(0, "sub", "token-0", 0), Cached::Unknown);
        assert_eq!(
            cache.get(0, "sub", "token-9999", 0),
            Cached::Valid(Some("x".into()))
        );
    }

    #[test]
    fn sized_for_the_session_table_it_keeps_the_active_sessions_tokens() {
        // Sized for 10,000 sessions, with 8,000 of them active (each token used again and
        // again): after the first round every request is a hit.
        let cache = VerifiedTokens::new(capacity_for(10_000));
        let active = 8_000;
        for i in 0..active {
            cache.insert(0, "sub", &format!("token-{i}"), Some("x"), None, 0);
        }
        for round in 0..3 {
            let hits = (0..active)
                .filter(|i| cache.get(0, "sub", &format!("token-{i}"), 0) != Cached::Unknown)
                .count();
            assert_eq!(hits, active, "round {round}");
        }
        assert_eq!(capacity_for(0), 1024);
        assert_eq!(capacity_for(usize::MAX), 1 << 21);
    }

    #[test]
    fn disabled_and_oversized() {
        let cache = VerifiedTokens::new(0);
        cache.insert(0, "sub", "t", Some("a"), None, 0);
        assert_eq!(cache.get(0, "sub", "t", 0), Cached::Unknown);
        let cache = VerifiedTokens::new(1024);
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        cache.insert(0, "sub", &long, Some("a"), None, 0);
        assert!(cache.is_empty());
    }
}
