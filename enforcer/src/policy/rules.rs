//! Declared sequence rules, compiled to operation ids and evaluated against a session's
//! recent operations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::config::{Action, Duration};
use crate::finding::{Finding, FindingKind, Severity};
use crate::session::{LOST_HISTORY, RecentOp};
use crate::time::format_unix_ms;

/// Match counters of one rule; kept across reloads by rule name.
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub matches: AtomicU64,
    pub blocked: AtomicU64,
    /// Unix ms of the last match (0 = never).
    pub last_match_ms: AtomicU64,
    /// `requires` checks not made because the session's history was lost to eviction.
    pub skipped_lost_history: AtomicU64,
}

/// A snapshot for JSON and reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCountersView {
    pub matches: u64,
    pub blocked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_match: Option<String>,
    pub skipped_lost_history: u64,
}

impl RuleCounters {
    pub fn view(&self) -> RuleCountersView {
        let last = self.last_match_ms.load(Ordering::Relaxed);
        RuleCountersView {
            matches: self.matches.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
            last_match: (last > 0).then(|| format_unix_ms(last)),
            skipped_lost_history: self.skipped_lost_history.load(Ordering::Relaxed),
        }
    }
}

/// The condition of a compiled rule (operation ids from the resolver).
#[derive(Debug, Clone)]
pub enum RuleKind {
    Requires {
        operation: u32,
        after: Vec<u32>,
        requests: usize,
        within_ms: u64,
    },
    Forbids {
        sequence: Vec<u32>,
        requests: usize,
        within_ms: u64,
    },
    MaxRepeat {
        operation: u32,
        count: u32,
    },
    MinInterval {
        from: u32,
        to: u32,
        min_ms: u64,
    },
}

impl RuleKind {
    /// The operation whose arrival triggers the check.
    pub fn trigger(&self) -> Option<u32> {
        match self {
            Self::Requires { operation, .. } | Self::MaxRepeat { operation, .. } => {
                Some(*operation)
            }
            Self::Forbids { sequence, .. } => sequence.last().copied(),
            Self::MinInterval { to, .. } => Some(*to),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: Arc<str>,
    pub priority: i32,
    pub action: Action,
    pub dry_run: bool,
    pub kind: RuleKind,
    /// Operations as written, for explanations (same order as in the rule).
    pub written: Vec<String>,
    pub window: Option<(u32, Duration)>,
    pub min_interval: Option<Duration>,
    pub counters: Arc<RuleCounters>,
    /// The rule as configured, for `/v1/rules`.
    pub source: crate::config::SequenceRuleConfig,
}

/// True when `needle` occurs in order (gaps allowed) in `hay`.
fn is_subsequence(needle: &[u32], hay: impl Iterator<Item = u32>) -> bool {
    let mut want = needle.iter().peekable();
    for op in hay {
        if want.peek() == Some(&&op) {
            want.next();
        }
        if want.peek().is_none() {
            return true;
        }
    }
    want.peek().is_none()
}

fn window(recent: &[RecentOp], requests: usize, within_ms: u64, now_ms: u64) -> &[RecentOp] {
    // The current request is one of the `requests`; the history holds the others.
    let by_count = &recent[recent.len().saturating_sub(requests.saturating_sub(1))..];
    let cutoff = now_ms.saturating_sub(within_ms);
    let start = by_count
        .iter()
        .position(|r| r.at_ms >= cutoff)
        .unwrap_or(by_count.len());
    &by_count[start..]
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0).replace(".0 s", " s")
    } else {
        format!("{} min", ms / 60_000)
    }
}

impl CompiledRule {
    /// Evaluates the rule for the operation `op` arriving at `now_ms`; returns the
    /// explanation clause when the rule matches (is broken).
    pub fn check(&self, op: u32, recent: &[RecentOp], now_ms: u64) -> Option<String> {
        match &self.kind {
            RuleKind::Requires {
                operation,
                after,
                requests,
                within_ms,
            } if *operation == op => {
                let w = window(recent, *requests, *within_ms, now_ms);
                if is_subsequence(after, w.iter().map(|r| r.op)) {
                    return None;
                }
                if w.iter().any(|r| r.op == LOST_HISTORY) {
                    // What the rule needs may be in the part of the history that eviction
                    // took: err toward not firing until the window is known again.
                    self.counters
                        .skipped_lost_history
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let names = self.written.get(1..).unwrap_or_default().join(" then ");
                Some(format!(
                    "without a preceding {names} (within {} requests and {}), which rule {} requires",
                    requests,
                    self.window.map(|(_, d)| d.to_string()).unwrap_or_default(),
                    self.name
                ))
            }
            RuleKind::Forbids {
                sequence,
                requests,
                within_ms,
            } if sequence.last() == Some(&op) => {
                let w = window(recent, *requests, *within_ms, now_ms);
                let prefix = sequence.get(..sequence.len() - 1).unwrap_or_default();
                if !is_subsequence(prefix, w.iter().map(|r| r.op)) {
                    return None;
                }
                let names = self
                    .written
                    .get(..self.written.len().saturating_sub(1))
                    .unwrap_or_default()
                    .join(" then ");
                Some(format!(
                    "after {names}, a sequence that rule {} forbids",
                    self.name
                ))
            }
            RuleKind::MaxRepeat { operation, count } if *operation == op => {
                let run = 1 + recent.iter().rev().take_while(|r| r.op == op).count();
                if run as u64 <= u64::from(*count) {
                    return None;
                }
                Some(format!(
                    "beyond the {count} in a row that rule {} allows ({run} in a row)",
                    self.name
                ))
            }
            RuleKind::MinInterval { from, to, min_ms } if *to == op => {
                let last_from = recent.iter().rev().find(|r| r.op == *from)?;
                let elapsed = now_ms.saturating_sub(last_from.at_ms);
                if elapsed >= *min_ms {
                    return None;
                }
                let from_name = self.written.first().map(String::as_str).unwrap_or_default();
                Some(format!(
                    "{} after {from_name}, sooner than the {} that rule {} requires",
                    human_ms(elapsed),
                    self.min_interval.map(|d| d.to_string()).unwrap_or_default(),
                    self.name
                ))
            }
            _ => None,
        }
    }

    /// The finding for a match (dry-run rules only count).
    pub fn finding(&self, explanation: String, op_template: &str) -> Finding {
        Finding {
            kind: FindingKind::SequenceRule,
            severity: if self.action == Action::Block {
                Severity::High
            } else {
                Severity::Medium
            },
            action: self.action,
            block_status: 403,
            rule: Some(self.name.to_string()),
            evidence: serde_json::json!({ "rule": &*self.name, "operation": op_template, "priority": self.priority }),
            explanation,
            retry_after_s: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, written: &[&str]) -> CompiledRule {
        CompiledRule {
            name: "r".into(),
            priority: 0,
            action: Action::Block,
            dry_run: false,
            kind,
            written: written.iter().map(|s| s.to_string()).collect(),
            window: Some((10, Duration::from_secs(600))),
            min_interval: Some(Duration::from_secs(2)),
            counters: Arc::default(),
            source: crate::config::SequenceRuleConfig {
                name: "r".into(),
                description: None,
                priority: 0,
                action: Action::Block,
                dry_run: false,
                requires: None,
                forbids: None,
                max_repeat: None,
                min_interval: None,
            },
        }
    }

    fn ops(list: &[(u32, u64)]) -> Vec<RecentOp> {
        list.iter()
            .map(|(op, at_ms)| RecentOp {
                op: *op,
                at_ms: *at_ms,
            })
            .collect()
    }

    #[test]
    fn requires_in_order_within_window() {
        let r = rule(
            RuleKind::Requires {
                operation: 9,
                after: vec![1, 2],
                requests: 10,
                within_ms: 600_000,
            },
            &["POST /t", "GET /a", "GET /b"],
        );
        assert!(r.check(9, &ops(&[(1, 0), (2, 10)]), 20).is_none());
        assert!(
            r.check(9, &ops(&[(2, 0), (1, 10)]), 20).is_some(),
            "wrong order"
        );
        assert!(
            r.check(9, &ops(&[]), 20)
                .unwrap()
                .contains("without a preceding GET /a then GET /b")
        );
        assert!(
            r.check(9, &ops(&[(1, 0), (2, 10)]), 700_000).is_some(),
            "too old"
        );
        assert!(r.check(5, &ops(&[]), 20).is_none(), "other operation");
    }

    #[test]
    fn requires_does_not_fire_on_a_lost_history() {
        let r = rule(
            RuleKind::Requires {
                operation: 9,
                after: vec![1],
                requests: 3,
                within_ms: 600_000,
            },
            &["POST /t", "GET /a"],
        );
        let lost = ops(&[(LOST_HISTORY, 0), (5, 10)]);
        assert!(r.check(9, &lost, 20).is_none());
        assert_eq!(r.counters.skipped_lost_history.load(Ordering::Relaxed), 1);
        // Once the window no longer reaches the marker, the rule applies again.
        let refilled = ops(&[(LOST_HISTORY, 0), (5, 10), (5, 11), (5, 12)]);
        assert!(r.check(9, &refilled, 20).is_some());
        assert!(
            r.check(9, &lost, 700_000).is_some(),
            "marker out of the time window"
        );
    }

    #[test]
    fn forbids_repeat_and_interval() {
        let f = rule(
            RuleKind::Forbids {
                sequence: vec![1, 2, 3],
                requests: 10,
                within_ms: 600_000,
            },
            &["A", "B", "C"],
        );
        assert!(f.check(3, &ops(&[(1, 0), (7, 1), (2, 2)]), 3).is_some());
        assert!(f.check(3, &ops(&[(2, 0), (1, 1)]), 3).is_none());
        let m = rule(
            RuleKind::MaxRepeat {
                operation: 4,
                count: 2,
            },
            &["X"],
        );
        assert!(m.check(4, &ops(&[(4, 0)]), 1).is_none());
        assert!(m.check(4, &ops(&[(4, 0), (4, 1)]), 2).is_some());
        assert!(m.check(4, &ops(&[(4, 0), (5, 1), (4, 2)]), 3).is_none());
        let i = rule(
            RuleKind::MinInterval {
                from: 1,
                to: 2,
                min_ms: 2000,
            },
            &["A", "B"],
        );
        assert!(
            i.check(2, &ops(&[(1, 1000)]), 1500)
                .unwrap()
                .starts_with("500 ms after A")
        );
        assert!(i.check(2, &ops(&[(1, 1000)]), 3000).is_none());
        assert!(i.check(2, &ops(&[]), 3000).is_none());
    }
}
