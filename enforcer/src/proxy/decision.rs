//! The one place where the mode turns findings into a verdict.

use crate::config::{Action, Mode};
use crate::finding::Finding;

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No finding counts (none, or `Learn` mode).
    Allow,
    /// Findings are recorded; the request goes through.
    Flag,
    /// Refused; `index` is the deciding finding (the first blocking one, findings being
    /// ordered by priority).
    Block { index: usize },
}

/// `Learn` discards findings, `Monitor` never blocks, `Enforce` blocks on the first
/// finding whose action is `Block`.
pub fn decide(mode: Mode, findings: &[Finding]) -> Verdict {
    if findings.is_empty() || mode == Mode::Learn {
        return Verdict::Allow;
    }
    if mode == Mode::Enforce
        && let Some(index) = findings.iter().position(|f| f.action == Action::Block)
    {
        return Verdict::Block { index };
    }
    Verdict::Flag
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Flag => "flag",
            Self::Block { .. } => "block",
        }
    }
}
