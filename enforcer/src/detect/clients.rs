//! Authentication failures per client address in the current window, for the
//! credential-stuffing detector. Keyed by client input, so bounded: at most
//! `max_tracked_clients` addresses; entries of past windows are dropped first, and when the
//! table is still full new addresses are not tracked (and counted).

use std::collections::HashMap;
use std::net::IpAddr;

use super::session_state::{distinct_of, with_object};

/// One client's failures in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientFailures {
    pub window: u64,
    pub failures: u32,
    /// Linear-counting bitmap of the identities that failed.
    pub identities: [u64; 2],
}

impl ClientFailures {
    pub fn distinct_identities(&self) -> u32 {
        distinct_of(self.identities)
    }
}

/// Bounded table of client failures.
#[derive(Debug, Default)]
pub struct ClientTable {
    entries: HashMap<IpAddr, ClientFailures>,
    /// Clients not tracked because the table was full.
    pub untracked: u64,
}

impl ClientTable {
    /// Failures of `client` in `window` so far.
    pub fn get(&self, client: &IpAddr, window: u64) -> Option<ClientFailures> {
        self.entries
            .get(client)
            .copied()
            .filter(|e| e.window == window)
    }

    /// Records one failure; returns the updated record, or `None` when the table is full.
    pub fn record_failure(
        &mut self,
        client: IpAddr,
        window: u64,
        identity: Option<u64>,
        cap: usize,
    ) -> Option<ClientFailures> {
        if !self.entries.contains_key(&client) && self.entries.len() >= cap {
            self.entries.retain(|_, e| e.window == window);
            if self.entries.len() >= cap {
                self.untracked += 1;
                return None;
            }
        }
        let entry = self.entries.entry(client).or_default();
        if entry.window != window {
            *entry = ClientFailures {
                window,
                ..ClientFailures::default()
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        if let Some(identity) = identity {
            entry.identities = with_object(entry.identities, identity);
        }
        Some(*entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_windowed() {
        let mut t = ClientTable::default();
        for i in 0..100u8 {
            t.record_failure(IpAddr::from([10, 0, 0, i]), 1, Some(u64::from(i)), 50);
        }
        assert_eq!(t.len(), 50);
        assert_eq!(t.untracked, 50);
        // A new window frees the table.
        assert!(
            t.record_failure(IpAddr::from([10, 0, 1, 1]), 2, None, 50)
                .is_some()
        );
        assert_eq!(t.len(), 1);
        let a = IpAddr::from([10, 0, 1, 1]);
        for id in 0..5u64 {
            t.record_failure(a, 2, Some(id * 7919), 50);
        }
        let e = t.get(&a, 2).unwrap();
        assert_eq!(e.failures, 6);
        assert_eq!(e.distinct_identities(), 5);
        assert!(t.get(&a, 3).is_none());
    }
}
