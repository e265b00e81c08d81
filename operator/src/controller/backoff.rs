//! Requeue delays after failed reconciles, per object: 1 s, 2 s, 4 s … up to 5 minutes while
//! an object keeps failing, back to 1 s after it reconciled once. An object that is broken
//! (a missing permission, a webhook that refuses) is not retried every few seconds forever,
//! and one that failed once (an API server restart) is retried at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;

/// The delay after the first failure; it doubles with each further one.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(300);
/// The delay after a write conflict (409): someone else wrote the object first; the retry
/// reads the new version, so waiting longer would not help.
pub const CONFLICT: Duration = Duration::from_secs(1);

/// Consecutive failures per object.
#[derive(Debug)]
pub struct Backoff<K> {
    failures: Mutex<HashMap<K, u32>>,
}

impl<K> Default for Backoff<K> {
    fn default() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> Backoff<K> {
    /// Counts a failure of `object` and returns how long to wait before retrying it.
    pub fn failed(&self, object: K) -> Duration {
        let mut failures = self.failures.lock();
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        delay(*count)
    }

    /// Forgets the failures of `object` (it reconciled, or it is gone).
    pub fn succeeded(&self, object: &K) {
        self.failures.lock().remove(object);
    }
}

/// The delay after `failures` consecutive failures (at least one).
fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_per_failure_up_to_five_minutes() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn a_success_resets_only_that_object() {
        let backoff = Backoff::default();
        for _ in 0..3 {
            backoff.failed("a");
            backoff.failed("b");
        }
        backoff.succeeded(&"a");
        assert_eq!(backoff.failed("a"), FIRST);
        assert_eq!(backoff.failed("b"), Duration::from_secs(8));
    }
}
