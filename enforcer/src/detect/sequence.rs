//! Unlikely sequence: the current operation is very improbable after the session's recent
//! operations, judged the way a variable-order Markov model with back-off predicts.
//!
//! Every context of the current journey from order 1 up to the configured order (the journey
//! start included, see [`super::journey`]) that the model has seen at least
//! `minContextObservations` times gives evidence: the upper bound of the Beta credible interval
//! of the probability that the next step after the context is *at least as rare* as this one
//! (this operation's count plus the counts of every next operation seen at most as often). That
//! tail probability, not P(operation | context) alone, is what bounds the share of honest steps
//! flagged: a context followed by many rare-but-legitimate steps (a cached screen the client
//! does not reload, a shortcut few people take) spreads honest traffic over many small
//! probabilities that each sit under the limit, while an operation never seen after the context
//! has a tail of zero and is judged exactly as before. The request is flagged only when that
//! evidence agrees: every
//! mature context puts the bound below the sensitivity's limit. One mature context that deems
//! the step likely — typically the immediate predecessor, when a long context spans the end of
//! one task and the start of the next — vetoes the longer ones that have not seen it. A context
//! seen rarely never speaks, so a session's first steps and rare journeys are not flagged on
//! thin evidence.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::sequence::{NextCounts, SequenceModel, upper_bound, upper_bound_reaches};
use crate::model::{LearnedModel, SESSION_START};
use crate::session::LOST_HISTORY;

use super::context::{Judged, duration_text, finding, percent};
use super::journey::{JourneyStart, journey_start};
use super::thresholds::sequence_bounds;

/// Outcome of the sequence check.
pub enum SequenceVerdict {
    /// Nothing to judge (unknown operation, no mature context, a repeat).
    Silent,
    Likely,
    Unlikely(Finding),
}

/// What one context says about the next operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextEvidence<'h> {
    /// The context, oldest first (a suffix of the history).
    pub context: &'h [u16],
    /// Times the context was observed.
    pub total: u64,
    /// Times the operation came next.
    pub count: u64,
    /// Times a next operation at most as frequent as this one came next (this one included).
    pub as_rare: u64,
    /// Credibility of the bound (`upper`).
    pub credibility: f64,
}

impl ContextEvidence<'_> {
    /// Upper credible bound of P(next step at most as frequent as this one | context): computed
    /// when a finding shows it, not for every judgement (`judge` decides with
    /// `upper_bound_reaches`, which mostly does without the inverse Beta function).
    pub fn upper(&self) -> f64 {
        upper_bound(self.as_rare, self.total, self.credibility)
    }
}

/// Count of next operations of `counts` at most as frequent as `count` (the tail of the
/// learned next-step distribution that the operation belongs to). Operations evicted into
/// `other` count as one bucket.
fn as_rare_as(counts: &NextCounts, op: u16, count: u64) -> u64 {
    let listed = counts.count_of(op).is_some();
    let rarer: u64 = counts
        .next()
        .filter(|(o, c)| *o != op && *c <= count)
        .map(|(_, c)| c)
        .sum();
    let evicted = if listed && counts.other() <= count {
        counts.other()
    } else {
        0
    };
    count + rarer + evicted
}

/// The back-off judgement of one transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement<'h> {
    /// No context of the history is mature.
    NoEvidence,
    /// A mature context deems the step likely (the shortest such context).
    Likely(ContextEvidence<'h>),
    /// Every mature context deems the step unlikely; `shortest` is the one closest to the step
    /// (the most general evidence), `agreeing` how many mature contexts agree.
    Unlikely {
        shortest: ContextEvidence<'h>,
        longest: ContextEvidence<'h>,
        agreeing: usize,
    },
}

/// Limits of one judgement.
#[derive(Debug, Clone, Copy)]
pub struct JudgeLimits {
    pub order: usize,
    pub min_observations: u64,
    pub credibility: f64,
    pub limit: f64,
}

/// Judges `op` after `history` (collapsed, oldest first, possibly starting with
/// [`SESSION_START`]) with back-off agreement: contexts from order 1 up; the first mature one
/// that deems the step likely ends the judgement.
pub fn judge<'h>(
    model: &SequenceModel,
    history: &'h [u16],
    op: u16,
    limits: &JudgeLimits,
) -> Judgement<'h> {
    let order = limits.order.min(history.len());
    let mut shortest = None;
    let mut longest = None;
    let mut agreeing = 0;
    for len in 1..=order {
        let context = &history[history.len() - len..];
        let Some(counts) = model.get(context) else {
            continue;
        };
        if counts.total() < limits.min_observations {
            continue;
        }
        // An operation evicted from the context's list may hide in its `other` count: give it
        // that count rather than zero.
        let count = counts.count_of(op).unwrap_or(counts.other());
        let as_rare = as_rare_as(&counts, op, count);
        let evidence = ContextEvidence {
            context,
            total: counts.total(),
            count,
            as_rare,
            credibility: limits.credibility,
        };
        if upper_bound_reaches(as_rare, counts.total(), limits.credibility, limits.limit) {
            return Judgement::Likely(evidence);
        }
        agreeing += 1;
        shortest.get_or_insert(evidence);
        longest = Some(evidence);
    }
    match (shortest, longest) {
        (Some(shortest), Some(longest)) => Judgement::Unlikely {
            shortest,
            longest,
            agreeing,
        },
        _ => Judgement::NoEvidence,
    }
}

/// Screens a client may go back to without a request: the last `MAX_BACK_STEPS` operations.
pub const MAX_BACK_STEPS: usize = 2;

/// Whether `op` is likely after the journey as it stood one or two operations ago. Clients
/// keep what they loaded: an app goes back to the account list it fetched two requests earlier
/// and opens an account from there, so the request that follows depends on that earlier
/// screen, not on the last request. The journey's start alone is not a screen to go back to (a
/// session does not restart without a request, see [`super::journey`] for idle gaps), so a
/// skipped step at the start, or a step that follows no operation of the journey, stays
/// unlikely.
pub fn likely_after_going_back(
    model: &SequenceModel,
    history: &[u16],
    op: u16,
    limits: &JudgeLimits,
) -> bool {
    (1..=MAX_BACK_STEPS).any(|back| {
        let Some(earlier) = history.len().checked_sub(back).map(|n| &history[..n]) else {
            return false;
        };
        earlier.last().is_some_and(|last| *last != SESSION_START)
            && matches!(judge(model, earlier, op, limits), Judgement::Likely(_))
    })
}

/// Whether `op` is a common entry point: sessions or journeys (after an idle gap) credibly
/// begin with it at least [`MIN_ENTRY_SHARE`] of the time.
/// Clients start a new task from the app's navigation at any moment, not only after an idle
/// gap (a shopper who leaves the catalogue for the account page), so a step that sessions and
/// journeys commonly begin with is no evidence of a skipped step in the middle of one, however
/// rarely it followed the last screen. A step that is itself unlikely at a journey's start (a
/// transfer or a checkout with nothing before it) stays judged by the history; and when the
/// history is the journey's start, this judgement is the one already made.
pub fn likely_as_entry_point(
    model: &SequenceModel,
    history: &[u16],
    op: u16,
    limits: &JudgeLimits,
) -> bool {
    const STARTS: [&[u16]; 2] = [&[SESSION_START], &[SESSION_START, SESSION_START]];
    history.iter().any(|o| *o != SESSION_START)
        && STARTS.iter().any(|start| {
            model.get(start).is_some_and(|counts| {
                let count = counts.count_of(op).unwrap_or(0);
                counts.total() >= limits.min_observations
                    && lower_bound(count, counts.total(), limits.credibility) >= MIN_ENTRY_SHARE
            })
        })
}

/// Share of sessions or journeys that must credibly begin with an operation for it to be a
/// common entry point (the lower credible bound at the sensitivity's credibility).
pub const MIN_ENTRY_SHARE: f64 = 0.05;

/// Lower credible bound of a share (Jeffreys prior), the mirror of `upper_bound`.
fn lower_bound(count: u64, total: u64, credibility: f64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    1.0 - upper_bound(total.saturating_sub(count), total, credibility)
}

/// Whether a literal operation kept apart from its template family (a name many sessions use,
/// `GET /books/v1/secret-harbour` next to `GET /books/v1/{var1}`, see `detect::templates`) is
/// likely as a member of that family: a request for one more object of a learned kind is as
/// expected as requests for that kind, however the popular names were split from it. A
/// literal with no parameterised sibling is judged alone.
fn likely_as_its_family(j: &Judged<'_>, history: &[u16], op: u16, limits: &JudgeLimits) -> bool {
    let Some(family) = super::shadow::parameterised_sibling(j.model, j.template()) else {
        return false;
    };
    family != op
        && (matches!(
            judge(&j.model.sequences, history, family, limits),
            Judgement::Likely(_)
        ) || likely_after_going_back(&j.model.sequences, history, family, limits)
            || likely_as_entry_point(&j.model.sequences, history, family, limits))
}

/// `history`: the current journey's collapsed operation indices, oldest first (starting with
/// [`SESSION_START`] when the journey's start is known). `across_gap`: the session's history
/// ignoring idle gaps; when the journey began after an idle gap, the step is flagged only if
/// that history agrees (a customer may resume a task after a pause rather than start a new one).
/// `seen`: exchanges of the session before this one. `repeat`: the request repeats the
/// previous operation. `flagged_before`: the operation flagged as unlikely in this session.
pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    history: &[u16],
    across_gap: &dyn Fn() -> Vec<u16>,
    seen: u32,
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
    // What the session did before its history was lost (its entry evicted, or kept by another
    // replica before the session moved here: proxy/route) is unknown: the shorter context left
    // may call a step unlikely that the whole journey explains. Silent until the history is
    // whole again, as `requires` rules are (policy/rules.rs).
    if j.ctx.recent.iter().any(|r| r.op == LOST_HISTORY) {
        return SequenceVerdict::Silent;
    }
    // An operation learned from too few requests has no sequence evidence of its own: a rare
    // honest step (the long tail) is not judged on the contexts that merely never saw it.
    if j.op_stats()
        .is_none_or(|s| s.requests < j.learning.min_operation_requests)
    {
        return SequenceVerdict::Silent;
    }
    let (credibility, limit) = sequence_bounds(config.sensitivity);
    let limits = JudgeLimits {
        order: j.learning.sequence_order,
        min_observations: j.learning.min_context_observations,
        credibility,
        limit,
    };
    let (shortest, longest, agreeing) = match judge(&j.model.sequences, history, op, &limits) {
        Judgement::NoEvidence => return SequenceVerdict::Silent,
        Judgement::Likely(_) => return SequenceVerdict::Likely,
        Judgement::Unlikely {
            shortest,
            longest,
            agreeing,
        } => (shortest, longest, agreeing),
    };
    if likely_after_going_back(&j.model.sequences, history, op, &limits)
        || likely_as_entry_point(&j.model.sequences, history, op, &limits)
        || likely_as_its_family(j, history, op, &limits)
    {
        return SequenceVerdict::Likely;
    }
    let idle = match journey_start(
        j.ctx.recent,
        seen,
        j.ctx.now_ms,
        j.learning.journey_gap.as_millis_u64(),
    ) {
        JourneyStart::AfterIdle { idle_ms, .. } => Some(idle_ms),
        _ => None,
    };
    if idle.is_some() {
        let continuous = across_gap();
        if let Judgement::Likely(_) = judge(&j.model.sequences, &continuous, op, &limits) {
            return SequenceVerdict::Likely;
        }
    }
    let names = |context: &[u16]| -> Vec<String> {
        context
            .iter()
            .map(|o| {
                if *o == SESSION_START {
                    "(start)".to_owned()
                } else {
                    j.model.template_of(*o).to_owned()
                }
            })
            .collect()
    };
    let after = describe_context(j.model, shortest.context, idle);
    let agreement = if agreeing > 1 {
        format!(
            "; all {agreeing} learned histories of this journey up to {} steps back agree",
            longest.context.len()
        )
    } else {
        String::new()
    };
    let rarer = if shortest.as_rare > shortest.count {
        format!(
            " and {} another call at most as rare",
            shortest.as_rare - shortest.count
        )
    } else {
        String::new()
    };
    let explanation = format!(
        "called {} {after}; of {} learned next steps after that history, {} were this call{rarer} (at most {} with {} credibility, limit {}){agreement}",
        j.template(),
        shortest.total,
        shortest.count,
        percent(shortest.upper()),
        percent(credibility),
        percent(limit),
    );
    let evidence = json!({
        "operation": j.template(),
        "context": names(shortest.context),
        "contextObservations": shortest.total,
        "count": shortest.count,
        "asRareOrRarer": shortest.as_rare,
        "upperBound": shortest.upper(),
        "credibility": credibility,
        "limit": limit,
        "agreeingContexts": agreeing,
        "longestContext": names(longest.context),
        "longestContextObservations": longest.total,
        "longestContextCount": longest.count,
        "idleBeforeMs": idle,
    });
    SequenceVerdict::Unlikely(finding(
        FindingKind::UnlikelySequence,
        Severity::High,
        config,
        explanation,
        evidence,
    ))
}

/// "as the first request of the session", "right after GET /a → GET /b", ...
fn describe_context(model: &LearnedModel, context: &[u16], idle_ms: Option<u64>) -> String {
    let names: Vec<&str> = context
        .iter()
        .filter(|o| **o != SESSION_START)
        .map(|o| model.template_of(*o))
        .collect();
    let start = match idle_ms {
        Some(0) => {
            "the first request after the session was idle longer than its history keeps".to_owned()
        }
        Some(ms) => format!(
            "the first request after the session was idle for {}",
            idle_text(ms)
        ),
        None => "the first request of the session".to_owned(),
    };
    if context.iter().all(|o| *o == SESSION_START) {
        format!("as {start}")
    } else if context.first() == Some(&SESSION_START) {
        let start = start.trim_start_matches("the first request ");
        let start = if idle_ms.is_some() {
            format!("the journey {start}")
        } else {
            "the session".to_owned()
        };
        format!("right after {start} began with {}", names.join(" → "))
    } else {
        format!("right after {}", names.join(" → "))
    }
}

/// "850 ms", "42 seconds", "7 minutes" (rounded down).
fn idle_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => duration_text(ms - ms % 1_000),
        _ => duration_text(ms - ms % 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // accounts(1), balance(2), transfer(4), transactions(5), profile(6).
    const S: u16 = SESSION_START;

    fn limits() -> JudgeLimits {
        let (credibility, limit) = sequence_bounds(crate::config::Sensitivity::Medium);
        JudgeLimits {
            order: 8,
            min_observations: 50,
            credibility,
            limit,
        }
    }

    fn learn_journey(m: &mut SequenceModel, journey: &[u16]) {
        for i in 0..journey.len() {
            m.learn(&journey[..i], journey[i], 8);
        }
    }

    /// 300 sessions check balances then open the profile ([S 1 2 5 6]); 100 open the profile,
    /// check balances, then look at the accounts again ([S 6 1 2 5 1 2]).
    fn trained() -> SequenceModel {
        let mut m = SequenceModel::default();
        for _ in 0..300 {
            learn_journey(&mut m, &[S, 1, 2, 5, 6]);
        }
        for _ in 0..100 {
            learn_journey(&mut m, &[S, 6, 1, 2, 5, 1, 2]);
        }
        m
    }

    #[test]
    fn a_task_boundary_is_vetoed_by_the_shorter_context() {
        let m = trained();
        // After the balance task, a new task starts with the account list. The longest
        // context [S 1 2 5] is mature (300) and never saw accounts next — on its own it would
        // flag — but [5] saw it 100 times in 400: likely.
        let history = [S, 1, 2, 5];
        let long = m.get(&history).unwrap();
        assert_eq!((long.total(), long.count_of(1)), (300, None));
        let alone = upper_bound(0, long.total(), limits().credibility);
        assert!(alone < limits().limit, "{alone}");
        match judge(&m, &history, 1, &limits()) {
            Judgement::Likely(e) => {
                assert_eq!(e.context, &[5]);
                assert_eq!((e.total, e.count), (400, 100));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_common_entry_point_is_no_skipped_step() {
        let m = trained();
        // The profile (6) right after a balance (2): [2] saw 5 or 1 next, never 6 (500 times),
        // and [S 1 2] agrees — but a quarter of the sessions begin with the profile, so a
        // client that opens it from the app's navigation mid-journey skipped nothing.
        assert!(matches!(
            judge(&m, &[S, 1, 2], 6, &limits()),
            Judgement::Unlikely { .. }
        ));
        assert!(likely_as_entry_point(&m, &[S, 1, 2], 6, &limits()));
        // A transfer (4) is no entry point: after the balance it stays unlikely, and at the
        // start of a journey the history's own judgement is the one that counts.
        assert!(!likely_as_entry_point(&m, &[S, 1, 2], 4, &limits()));
        assert!(!likely_as_entry_point(&m, &[S], 6, &limits()));
    }

    #[test]
    fn a_skipped_step_is_still_flagged_at_every_order() {
        let m = trained();
        // A transfer (4) as the first request of a journey.
        match judge(&m, &[S], 4, &limits()) {
            Judgement::Unlikely {
                shortest,
                longest,
                agreeing,
            } => {
                assert_eq!(shortest.context, &[S]);
                assert_eq!(longest.context, &[S]);
                assert_eq!((shortest.total, shortest.count, agreeing), (400, 0, 1));
                assert!(shortest.upper() < 0.01, "{}", shortest.upper());
            }
            other => panic!("{other:?}"),
        }
        // A transfer right after the account list: [1] and [S 1] both agree.
        match judge(&m, &[S, 1], 4, &limits()) {
            Judgement::Unlikely {
                shortest,
                longest,
                agreeing,
            } => {
                assert_eq!(shortest.context, &[1]);
                assert_eq!(longest.context, &[S, 1]);
                assert_eq!(agreeing, 2);
            }
            other => panic!("{other:?}"),
        }
        // The honest steps are likely.
        assert!(matches!(
            judge(&m, &[S, 1, 2], 5, &limits()),
            Judgement::Likely(_)
        ));
        assert!(matches!(
            judge(&m, &[S], 6, &limits()),
            Judgement::Likely(_)
        ));
    }

    #[test]
    fn a_rare_step_among_many_rare_steps_is_likely_but_a_lone_one_is_not() {
        // After 9, honest sessions mostly go on with 1, and now and then with one of twenty
        // other operations (each seen once): together those rare steps are 4% of what follows
        // 9, so one of them is not improbable; an operation never seen after 9 still is.
        let mut m = SequenceModel::default();
        for _ in 0..480 {
            m.learn(&[9], 1, 8);
        }
        for op in 10..30 {
            m.learn(&[9], op, 8);
        }
        match judge(&m, &[9], 10, &limits()) {
            Judgement::Likely(e) => assert_eq!((e.total, e.count, e.as_rare), (500, 1, 20)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(&m, &[9], 4, &limits()),
            Judgement::Unlikely { shortest, .. } if shortest.as_rare == 0
        ));
        // One rare step in a context that otherwise always goes on the same way stays unlikely.
        let mut lone = SequenceModel::default();
        for _ in 0..999 {
            lone.learn(&[9], 1, 8);
        }
        lone.learn(&[9], 10, 8);
        match judge(&lone, &[9], 10, &limits()) {
            Judgement::Unlikely { shortest, .. } => {
                assert_eq!(
                    (shortest.total, shortest.count, shortest.as_rare),
                    (1000, 1, 1)
                );
                assert!(shortest.upper() < 0.01, "{}", shortest.upper());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn going_back_to_an_earlier_screen_is_likely_but_not_to_the_start() {
        let mut m = trained();
        // Reading the history: the account list, then the transactions (5), 200 times. A
        // quick look: the account list, then the payees (7), 1000 times; once, the customer
        // went back to the cached account list and opened the history.
        for _ in 0..200 {
            learn_journey(&mut m, &[S, 1, 5]);
        }
        for _ in 0..1000 {
            learn_journey(&mut m, &[S, 1, 7, 1]);
        }
        learn_journey(&mut m, &[S, 1, 7, 5]);
        let history = [S, 1, 7];
        assert!(matches!(
            judge(&m, &history, 5, &limits()),
            Judgement::Unlikely { .. }
        ));
        // Going back one screen, to the account list, makes the history likely.
        assert!(likely_after_going_back(&m, &history, 5, &limits()));
        // A transfer (4) follows neither the payees nor the account list.
        assert!(!likely_after_going_back(&m, &history, 4, &limits()));
        // Going back to the start is not going back to a screen: the profile (6) starts
        // journeys, yet after [S 1] it is unlikely.
        assert!(matches!(
            judge(&m, &[S], 6, &limits()),
            Judgement::Likely(_)
        ));
        assert!(matches!(
            judge(&m, &[S, 1], 6, &limits()),
            Judgement::Unlikely { .. }
        ));
        assert!(!likely_after_going_back(&m, &[S, 1], 6, &limits()));
    }

    #[test]
    fn idle_texts() {
        assert_eq!(idle_text(850), "850 ms");
        assert_eq!(idle_text(42_300), "42 seconds");
        assert_eq!(idle_text(421_000), "7 minutes");
    }

    #[test]
    fn thin_evidence_never_flags() {
        let mut m = SequenceModel::default();
        for _ in 0..49 {
            learn_journey(&mut m, &[S, 1, 2]);
        }
        assert_eq!(judge(&m, &[S], 4, &limits()), Judgement::NoEvidence);
        // 60 observations: mature, but a never-seen step is not improbable enough yet.
        for _ in 0..11 {
            learn_journey(&mut m, &[S, 1, 2]);
        }
        assert!(matches!(
            judge(&m, &[S], 4, &limits()),
            Judgement::Likely(e) if e.total == 60 && e.count == 0
        ));
    }
}
