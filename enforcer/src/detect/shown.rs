//! Values that answers to a client address's anonymous requests carried, for the sessions
//! its token or cookie names (see `detect::lineage`).
//!
//! A client often reads public listings without credentials (a catalogue, a search, a price
//! list) and then opens what they showed with its token. The two land in different sessions:
//! the anonymous one is named by the client address, the other by the token. Without this,
//! the token's session seems to name objects nobody gave it, and a reader who opens nine
//! books a catalogue page listed looks like one who guesses nine titles. So what an address
//! was shown anonymously counts as given to every named session from that address; objects
//! nobody listed (guessed ids, another customer's order) still have no origin.
//!
//! Behind a NAT or a proxy every client's listings count for all of them. That only makes
//! values that were answered to anonymous requests, public by construction, count as given.
//!
//! Keyed by client input, so bounded: at most [`MAX_ADDRESSES`] addresses, each with one
//! `LineageState` (at most `lineage::MAX_VALUES` keyed hashes and `lineage::MAX_FIELDS` field
//! names: about 2.5 KiB, so about 10 MiB in all), forgotten [`TTL_MS`] after the address was
//! last shown something; when a shard is full its least recently shown address goes. Only
//! keyed hashes are kept (see `lineage::ValueKeys`), never a value.
//!
//! Lock order: a shard here is locked while a session's entry is locked, never the other way
//! round, and nothing else is locked while a shard is held.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::lineage::LineageState;
use crate::model::lineage::OriginClass;

/// Most addresses remembered.
pub const MAX_ADDRESSES: usize = 4_096;
/// How long what an address was shown counts, after the last answer that showed it something.
pub const TTL_MS: u64 = 30 * 60 * 1000;
const SHARDS: usize = 16;
const PER_SHARD: usize = MAX_ADDRESSES / SHARDS;

struct Shown {
    values: LineageState,
    last_ms: u64,
}

/// What each client address was shown in answers to its anonymous requests.
pub struct ShownToAddress {
    shards: Box<[Mutex<HashMap<IpAddr, Shown>>]>,
    hasher: RandomState,
    /// Whether anything was ever remembered: an API without anonymous listings never takes a
    /// lock here.
    used: AtomicBool,
}

impl Default for ShownToAddress {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            used: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for ShownToAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShownToAddress")
            .field("addresses", &self.len())
            .finish_non_exhaustive()
    }
}

impl ShownToAddress {
    fn shard(&self, client: &IpAddr) -> &Mutex<HashMap<IpAddr, Shown>> {
        let index = usize::try_from(self.hasher.hash_one(client) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    /// Remembers the values (keyed hash, field) an answer of operation `op` gave `client`'s
    /// anonymous request at `now_ms`.
    pub fn remember<'v>(
        &self,
        client: IpAddr,
        now_ms: u64,
        op: u16,
        values: impl IntoIterator<Item = (u64, &'v str)>,
    ) {
        let mut values = values.into_iter().peekable();
        if values.peek().is_none() {
            return;
        }
        self.used.store(true, Ordering::Relaxed);
        let mut shard = self.shard(&client).lock();
        if !shard.contains_key(&client) && shard.len() >= PER_SHARD {
            make_room(&mut shard, now_ms);
        }
        let shown = shard.entry(client).or_insert_with(|| Shown {
            values: LineageState::default(),
            last_ms: now_ms,
        });
        if now_ms.saturating_sub(shown.last_ms) > TTL_MS {
            shown.values = LineageState::default();
        }
        shown.last_ms = now_ms;
        for (hash, field) in values {
            shown
                .values
                .remember(hash, op, field, OriginClass::Response);
        }
    }

    /// Runs `f` with what `client` was shown (when it is `Some` and was shown something less
    /// than [`TTL_MS`] before `now_ms`), or with `None`.
    pub fn with<R>(
        &self,
        client: Option<IpAddr>,
        now_ms: u64,
        f: impl FnOnce(Option<&LineageState>) -> R,
    ) -> R {
        let Some(client) = client.filter(|_| self.used.load(Ordering::Relaxed)) else {
            return f(None);
        };
        let shard = self.shard(&client).lock();
        let shown = shard
            .get(&client)
            .filter(|s| now_ms.saturating_sub(s.last_ms) <= TTL_MS)
            .map(|s| &s.values);
        f(shown)
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the expired addresses of a full shard, or else its least recently shown one.
fn make_room(shard: &mut HashMap<IpAddr, Shown>, now_ms: u64) {
    shard.retain(|_, s| now_ms.saturating_sub(s.last_ms) <= TTL_MS);
    if shard.len() < PER_SHARD {
        return;
    }
    if let Some(oldest) = shard
        .iter()
        .min_by_key(|(_, s)| s.last_ms)
        .map(|(addr, _)| *addr)
    {
        shard.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    fn holds(shown: &ShownToAddress, client: IpAddr, now_ms: u64, hash: u64) -> bool {
        shown.with(Some(client), now_ms, |values| {
            values.is_some_and(|v| v.contains_given(hash))
        })
    }

    #[test]
    fn what_an_address_was_shown_counts_for_it_alone_and_expires() {
        let shown = ShownToAddress::default();
        assert!(!holds(&shown, addr(1), 0, 7), "nothing remembered yet");
        shown.remember(
            addr(1),
            1_000,
            3,
            [(7, "books[].title"), (8, "books[].title")],
        );
        assert!(holds(&shown, addr(1), 2_000, 7));
        assert!(holds(&shown, addr(1), 2_000, 8));
        assert!(
            !holds(&shown, addr(1), 2_000, 9),
            "a value it was not shown"
        );
        assert!(!holds(&shown, addr(2), 2_000, 7), "another address");
        assert!(
            shown.with(None, 2_000, |v| v.is_none()),
            "no address: nothing"
        );
        assert!(!holds(&shown, addr(1), 1_000 + TTL_MS + 1, 7), "expired");
        // Shown something again after it expired: only the new values count.
        shown.remember(addr(1), 2_000 + TTL_MS, 3, [(9, "books[].title")]);
        assert!(holds(&shown, addr(1), 2_001 + TTL_MS, 9));
        assert!(!holds(&shown, addr(1), 2_001 + TTL_MS, 7));
    }

    #[test]
    fn at_most_max_addresses_are_kept_the_least_recently_shown_go_first() {
        let shown = ShownToAddress::default();
        let count = u32::try_from(MAX_ADDRESSES * 2).unwrap();
        for i in 0..count {
            shown.remember(addr(i), u64::from(i), 1, [(u64::from(i), "f")]);
        }
        assert!(shown.len() <= MAX_ADDRESSES, "{} addresses", shown.len());
        assert!(
            shown.len() >= MAX_ADDRESSES / 2,
            "{} addresses",
            shown.len()
        );
        // The newest address is kept, the oldest is gone.
        let last = count - 1;
        assert!(holds(&shown, addr(last), u64::from(last), u64::from(last)));
        assert!(!holds(&shown, addr(0), u64::from(last), 0));
    }
}
