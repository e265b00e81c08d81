//! Unlikely sequence: the current operation is very improbable after the session's recent
//! operations. The longest context (up to the configured order) that the model has seen at
//! least `minContextObservations` times decides: the request is flagged when the upper bound
//! of the Beta credible interval of P(operation | context) lies below the sensitivity's limit.
//! A context seen rarely never decides, so a session's first steps and rare journeys are not
//! flagged on thin evidence.

use serde_json::json;

use crate::analysis::{Finding, FindingKind, Severity};
use crate::config::DetectorConfig;
use crate::model::SESSION_START;
use crate::model::sequence::upper_bound;

use super::context::{Judged, finding, percent};
use super::thresholds::sequence_bounds;

/// Outcome of the sequence check.
pub enum SequenceVerdict {
    /// Nothing to judge (unknown operation, no mature context, a repeat).
    Silent,
    Likely,
    Unlikely(Finding),
}

/// `history`: the session's collapsed operation indices, oldest first (starting with
/// [`SESSION_START`] when the whole session is known). `repeat`: the request repeats the
/// previous operation. `flagged_before`: the operation flagged as unlikely in this session.
pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    history: &[u16],
    repeat: bool,
    flagged_before: Option<u16>,
) -> SequenceVerdict {
    let Some(op) = j.op else {
        return SequenceVerdict::Silent;
    };
    if repeat {
        if flagged_before == Some(op) {
            let explanation = format!(
                "repeated {} right after it was flagged as an unlikely step",
                j.template()
            );
            let evidence = json!({ "operation": j.template(), "repeatOfFlagged": true });
            return SequenceVerdict::Unlikely(finding(
                FindingKind::UnlikelySequence,
                Severity::High,
                config,
                explanation,
                evidence,
            ));
        }
        return SequenceVerdict::Silent;
    }
    let (credibility, limit) = sequence_bounds(config.sensitivity);
    let order = j.learning.sequence_order.min(history.len());
    for len in (1..=order).rev() {
        let context = &history[history.len() - len..];
        let Some(counts) = j.model.sequences.get(context) else {
            continue;
        };
        if counts.total < j.learning.min_context_observations {
            continue;
        }
        let count = counts
            .count_of(op)
            .unwrap_or(if counts.other > 0 { counts.other } else { 0 });
        let upper = upper_bound(count, counts.total, credibility);
        if upper >= limit {
            return SequenceVerdict::Likely;
        }
        let names: Vec<&str> = context.iter().map(|o| j.model.template_of(*o)).collect();
        let after = if context == [SESSION_START] {
            "as the first request of the session".to_owned()
        } else if context.first() == Some(&SESSION_START) {
            format!(
                "right after the session began with {}",
                names[1..].join(" → ")
            )
        } else {
            format!("right after {}", names.join(" → "))
        };
        let explanation = format!(
            "called {} {after}; in {} sessions with that history it came next {} times (at most {} with {} credibility)",
            j.template(),
            counts.total,
            count,
            percent(upper),
            percent(credibility)
        );
        let evidence = json!({
            "operation": j.template(),
            "context": names,
            "contextObservations": counts.total,
            "count": count,
            "upperBound": upper,
            "credibility": credibility,
            "limit": limit,
        });
        return SequenceVerdict::Unlikely(finding(
            FindingKind::UnlikelySequence,
            Severity::High,
            config,
            explanation,
            evidence,
        ));
    }
    SequenceVerdict::Silent
}
