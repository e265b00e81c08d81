//! Declared rate limits per operation per session, as a GCRA (generic cell rate
//! algorithm): one timestamp per limit and session, `requests` per `per` with bursts up to
//! `requests`.

use std::sync::Arc;

use crate::config::{Action, Duration};
use crate::finding::{Finding, FindingKind, Severity};
use crate::session::LimitSlots;

#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub index: u16,
    pub name: Arc<str>,
    pub operation: u32,
    pub written: String,
    pub requests: u32,
    pub per: Duration,
    pub action: Action,
    /// Emission interval in ms.
    interval_ms: u64,
    /// Burst tolerance in ms.
    tolerance_ms: u64,
}

impl CompiledLimit {
    pub fn new(
        index: u16,
        name: Arc<str>,
        operation: u32,
        written: String,
        requests: u32,
        per: Duration,
        action: Action,
    ) -> Self {
        let per_ms = per.as_millis_u64().max(1);
        let interval_ms = (per_ms / u64::from(requests.max(1))).max(1);
        Self {
            index,
            name,
            operation,
            written,
            requests,
            per,
            action,
            interval_ms,
            tolerance_ms: per_ms.saturating_sub(interval_ms),
        }
    }

    /// Counts the request; returns the finding when it is over the limit (then it is not counted).
    pub fn check(&self, slots: &mut LimitSlots, now_ms: u64) -> Option<Finding> {
        let slot = slots.slot_mut(self.index)?;
        let tat = slot.tat_ms.max(now_ms);
        if tat - now_ms > self.tolerance_ms {
            let wait_ms = tat - self.tolerance_ms - now_ms;
            let retry = wait_ms.div_ceil(1000).max(1);
            return Some(Finding {
                kind: FindingKind::RateLimit,
                severity: Severity::Medium,
                action: self.action,
                block_status: 429,
                rule: Some(self.name.to_string()),
                explanation: format!(
                    "beyond the limit {} ({} per {})",
                    self.name, self.requests, self.per
                ),
                evidence: serde_json::json!({ "limit": &*self.name, "operation": self.written, "requests": self.requests, "per": self.per.to_string() }),
                retry_after_s: Some(retry),
            });
        }
        slot.tat_ms = tat + self.interval_ms;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_limits_with_retry_after() {
        let l = CompiledLimit::new(
            0,
            "l".into(),
            1,
            "POST /t".into(),
            3,
            Duration::from_secs(60),
            Action::Block,
        );
        let mut slots = LimitSlots::default();
        for _ in 0..3 {
            assert!(l.check(&mut slots, 1_000_000).is_none());
        }
        let f = l.check(&mut slots, 1_000_000).unwrap();
        assert_eq!(f.retry_after_s, Some(20));
        assert!(
            l.check(&mut slots, 1_000_000 + 20_000).is_none(),
            "one more after 20 s"
        );
        assert!(l.check(&mut slots, 1_000_000 + 20_000).is_some());
    }
}
