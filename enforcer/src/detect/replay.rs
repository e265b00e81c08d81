//! Replays (judged by the `unlikelySequence` detector): a non-idempotent request — `POST` or
//! `PATCH`, which RFC 9110 §9.2.2 does not make idempotent — sent again with exactly the path,
//! query and body of the session's previous *successful* request of the same operation.
//!
//! A captured checkout, transfer or creation sent again looks like an ordinary step to every
//! other detector: the first copy is the honest request itself, and a repeat of an operation
//! is collapsed in the sequence model (a customer who opens two accounts in a row is not
//! doing anything odd). What is odd is the *identical* repeat: an honest client that orders,
//! pays or creates twice sends a different basket, amount or title. How odd is learned per
//! operation: among the learned requests of the operation, how many repeated the session's
//! previous successful one exactly ([`RepeatCounts`], plain counts merged by addition). The
//! repeat is flagged when that share is improbable by the sequence detector's credible bound
//! (Jeffreys, the sensitivity's credibility and limit, see `thresholds::sequence_bounds`) —
//! from a session's *second* identical repeat of a request on: a single identical repeat is
//! never judged ([`JUDGED_FROM_REPEAT`]). A client that never saw the answer (its connection
//! dropped after the application answered) resends once, and a customer who orders the same
//! thing twice to the same address sends the same body, for honest reasons the enforcer cannot
//! see; the evaluation showed the second (an honest shop session at seed 3). An operation whose own learned requests cannot settle it (fewer than
//! `minOperationRequests`, or more but still too few for the bound: with none repeated, about
//! 2 / limit) is judged, from its second identical repeat, on the pooled counts of every
//! learned state-changing operation of the API, but only while it never saw an identical
//! repeat itself. Clients that resend on
//! purpose (a form that submits twice, an idempotency key the application dedupes) teach the
//! repeat as normal, and it is never flagged there.
//!
//! The pool also holds the API's `PUT` and `DELETE` requests, which are fingerprinted and
//! learned like the others but never judged (repeating them is harmless by definition). Clients
//! resend idempotent requests at least as readily as the others — RFC 9110 §9.2.2 lets user
//! agents and libraries retry them on their own, and a form that saves the same value twice
//! sends an identical `PUT` — so pooling their rate in does not bias the estimate for a `POST`
//! downwards; what it adds is evidence. An API with a single non-idempotent operation (the
//! library's book creation, where about 200 learned requests are needed at Medium) was
//! otherwise blind to its replays for as long as that operation alone was too thin.
//!
//! Only a repeat of a request that *succeeded* counts: a retry after an error, a timeout or the
//! enforcer's own refusal resends the same body for good reason (every identical copy after
//! the success counts, whatever its own answer: an application that refuses the duplicate
//! does not make the next copy less of a replay). An operation whose answers grant
//! credentials (a login) is never judged: clients re-authenticate with the same credentials. Per session one 8-byte keyed
//! hash per operation is kept, in the window slot of the operation (`OpSlot::last_change`,
//! dropped with the slot); the hash is keyed per process because bodies may carry secrets.

use std::hash::{Hash, Hasher};

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::sequence::upper_bound;
use crate::model::{LearnedModel, RepeatCounts};
use crate::session::SessionSource;

use super::context::{Judged, finding, percent};
use super::lineage::ValueKeys;
use super::request::RequestContext;
use super::thresholds::sequence_bounds;

/// Whether repeating the method can change state again (RFC 9110 §9.2.2: `PUT` and `DELETE`
/// are idempotent, safe methods change nothing).
pub fn non_idempotent(method: &http::Method) -> bool {
    method == http::Method::POST || method == http::Method::PATCH
}

/// Whether the method is meant to change state (RFC 9110 §9.2.1: all but the safe methods):
/// the requests whose identical repeats are learned.
pub fn changes_state(method: &http::Method) -> bool {
    non_idempotent(method) || method == http::Method::PUT || method == http::Method::DELETE
}

/// A keyed hash of what the request asks for (path parameters, query pairs in order, the
/// parsed body), for state-changing requests of sessions a client names (token, cookie,
/// header) only; never 0. A session named by the client address pools every client behind it
/// (a NAT, a proxy, the logins before a token exists): identical requests there are not one
/// client's copies, and they are neither judged nor learned.
pub fn fingerprint(ctx: &RequestContext<'_>, keys: &ValueKeys) -> Option<u64> {
    if !changes_state(ctx.method) || ctx.session_source == SessionSource::ClientIp {
        return None;
    }
    let mut hasher = keys.build_hasher();
    ctx.operation.template.hash(&mut hasher);
    for (name, value) in ctx.path_params {
        (0u8, name, value).hash(&mut hasher);
    }
    for (key, value) in ctx.query {
        (1u8, key.as_ref(), value.as_ref()).hash(&mut hasher);
    }
    if let Some(body) = ctx.body {
        2u8.hash(&mut hasher);
        // The parsed body's own serialization: identical bodies give identical bytes.
        let _ = serde_json::to_writer(HashWriter(&mut hasher), body);
    }
    Some(hasher.finish().max(1))
}

/// Feeds written bytes into a hasher.
struct HashWriter<'h, H: Hasher>(&'h mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whose learned requests are the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Operation,
    /// Every learned state-changing operation of the API, pooled.
    Api,
}

/// The first identical repeat (1 = one copy of the request) that is judged: a single copy has
/// honest causes (a client that never saw the answer resends once; the same order placed twice),
/// two copies of a request that succeeded twice have none the enforcer should assume.
pub const JUDGED_FROM_REPEAT: u16 = 2;

/// The evidence that the `nth` identical repeat (1 = the first) of operation `op` is
/// improbable, if there is enough: the counts, their scope, the upper bound of the probability
/// of an identical repeat and the limit it was held to. Repeats before [`JUDGED_FROM_REPEAT`]
/// are never judged; later ones against `limit`, on the operation's own counts once it has
/// `min_support` learned requests and they bound the probability below the limit, otherwise on
/// the counts of every learned state-changing operation of the API pooled (only while the
/// operation never saw an identical repeat itself). The probability of a first identical repeat bounds that of a second, so the
/// learned counts of first repeats serve.
pub fn improbable(
    model: &LearnedModel,
    op: u16,
    nth: u16,
    credibility: f64,
    limit: f64,
    min_support: u64,
) -> Option<(RepeatCounts, Scope, f64, f64)> {
    let stats = model.operation(op)?;
    // A client re-authenticates with the same credentials whenever its token or cookie
    // expires: an operation whose answers grant credentials is asked again by design (and
    // credential replays are the credential-stuffing detector's).
    if stats.outcomes.grants_credentials() {
        return None;
    }
    if nth < JUDGED_FROM_REPEAT {
        return None;
    }
    let own = stats.repeats;
    if own.requests >= min_support {
        let bound = upper_bound(own.identical, own.requests, credibility);
        if bound < limit {
            return Some((own, Scope::Operation, bound, limit));
        }
    }
    // The operation's own requests are too few to bound the probability (below the support,
    // or above it but not yet enough: with none repeated, about 2 / limit requests are
    // needed): borrow the API's, as long as the operation never saw an identical repeat
    // itself. Without this an operation is blind between the support and that count — a
    // replay in that stretch passes where one the operation had fewer requests for is caught.
    if own.identical > 0 {
        return None;
    }
    let mut pooled = RepeatCounts::default();
    for stats in &model.operations {
        pooled.add(&stats.repeats);
    }
    let bound = upper_bound(pooled.identical, pooled.requests, credibility);
    (bound < limit).then_some((pooled, Scope::Api, bound, limit))
}

/// Judges a request identical to the session's previous successful request of its operation,
/// its `nth` identical repeat (1 = the first).
pub fn check(j: &Judged<'_>, config: &DetectorConfig, nth: u16) -> Option<Finding> {
    // `PUT` and `DELETE` repeats are learned as evidence, never judged: a copy changes nothing.
    if !non_idempotent(j.ctx.method) {
        return None;
    }
    let op = j.op?;
    let (credibility, limit) = sequence_bounds(config.sensitivity);
    let (counts, scope, bound, limit) = improbable(
        j.model,
        op,
        nth,
        credibility,
        limit,
        j.learning.min_operation_requests,
    )?;
    let learned = match scope {
        Scope::Operation => format!("learned {} requests", j.template()),
        Scope::Api => "learned POST, PUT, PATCH and DELETE requests of the API".to_owned(),
    };
    let copies = match nth {
        0 | 1 => "again".to_owned(),
        n => format!("for the {} time", ordinal(u32::from(n) + 1)),
    };
    let explanation = format!(
        "sent {} {copies} with exactly the path, query and body of its earlier successful request in this session (a replay); of {} {learned}, {} repeated the session's previous one exactly (at most {} with {} credibility, limit {})",
        j.template(),
        counts.requests,
        counts.identical,
        percent(bound),
        percent(credibility),
        percent(limit),
    );
    let evidence = json!({
        "operation": j.template(),
        "replay": true,
        "identicalRepeat": nth,
        "learnedRequests": counts.requests,
        "learnedIdenticalRepeats": counts.identical,
        "scope": match scope { Scope::Operation => "operation", Scope::Api => "api" },
        "upperBound": bound,
        "limit": limit,
    });
    Some(finding(
        FindingKind::UnlikelySequence,
        Severity::High,
        config,
        explanation,
        evidence,
    ))
}

/// "3rd", "4th", "21st".
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OperationStats;

    fn model_with(ops: &[(u64, u64)]) -> LearnedModel {
        let mut model = LearnedModel::default();
        for (i, (requests, identical)) in ops.iter().enumerate() {
            let mut stats = OperationStats::new(&format!("POST /op{i}"), 0);
            stats.repeats = RepeatCounts {
                requests: *requests,
                identical: *identical,
            };
            model.operations.push(stats);
        }
        model
    }

    #[test]
    fn only_post_and_patch_can_be_replays() {
        assert!(non_idempotent(&http::Method::POST));
        assert!(non_idempotent(&http::Method::PATCH));
        assert!(!non_idempotent(&http::Method::PUT));
        assert!(!non_idempotent(&http::Method::DELETE));
        assert!(!non_idempotent(&http::Method::GET));
        // … but the repeats of every state-changing method are learned (as evidence).
        for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            assert!(changes_state(&method), "{method}");
        }
        assert!(!changes_state(&http::Method::GET) && !changes_state(&http::Method::HEAD));
    }

    #[test]
    fn a_single_identical_repeat_is_never_judged() {
        // Not even on overwhelming evidence that the operation's requests are never repeated.
        assert_eq!(
            improbable(&model_with(&[(100_000, 0)]), 0, 1, 0.95, 0.01, 30),
            None
        );
        assert!(improbable(&model_with(&[(100_000, 0)]), 0, 2, 0.95, 0.01, 30).is_some());
    }

    #[test]
    fn a_second_repeat_is_judged_at_the_sequence_limit() {
        let (counts, scope, bound, _) =
            improbable(&model_with(&[(400, 0)]), 0, 2, 0.95, 0.01, 30).expect("improbable");
        assert_eq!((counts.requests, scope), (400, Scope::Operation));
        assert!(bound < 0.01, "{bound}");
    }

    #[test]
    fn thin_or_repeating_evidence_never_flags() {
        // 50 requests cannot bound a probability below 1% at 95%.
        assert_eq!(
            improbable(&model_with(&[(50, 0)]), 0, 2, 0.95, 0.01, 30),
            None
        );
        // Clients of this operation resend identical requests: learned as normal.
        assert_eq!(
            improbable(&model_with(&[(400, 12)]), 0, 2, 0.95, 0.01, 30),
            None
        );
    }

    #[test]
    fn a_rare_operation_borrows_the_pooled_evidence_unless_it_repeated_itself() {
        let pooled = improbable(&model_with(&[(20, 0), (500, 1)]), 0, 2, 0.95, 0.01, 30);
        assert_eq!(
            pooled.map(|(c, s, _, _)| (c.requests, s)),
            Some((520, Scope::Api))
        );
        assert_eq!(
            improbable(&model_with(&[(20, 1), (500, 0)]), 0, 2, 0.95, 0.01, 30),
            None
        );
    }

    #[test]
    fn an_operation_with_support_but_too_few_requests_for_the_bound_borrows_the_pool() {
        // 120 learned requests, none repeated: past the support (30) but not enough to bound
        // the probability below 1% at 95%; the API's 900 others settle it.
        let (counts, scope, bound, _) =
            improbable(&model_with(&[(120, 0), (900, 0)]), 0, 2, 0.95, 0.01, 30)
                .expect("judged on the pooled evidence");
        assert_eq!((counts.requests, scope), (1020, Scope::Api));
        assert!(bound < 0.01, "{bound}");
        // Not when the operation repeated itself, nor when the pool is as thin.
        assert_eq!(
            improbable(&model_with(&[(120, 1), (900, 0)]), 0, 2, 0.95, 0.01, 30),
            None
        );
        assert_eq!(
            improbable(&model_with(&[(120, 0), (30, 0)]), 0, 2, 0.95, 0.01, 30),
            None
        );
    }

    #[test]
    fn operations_that_grant_credentials_are_asked_again_by_design() {
        let mut model = model_with(&[(5_000, 0)]);
        model.operations[0].outcomes = crate::model::OutcomeCounts {
            read: 400,
            error_answers: 10,
            credential_answers: 390,
        };
        assert_eq!(improbable(&model, 0, 3, 0.95, 0.01, 30), None);
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal(3), "3rd");
        assert_eq!(ordinal(4), "4th");
        assert_eq!(ordinal(11), "11th");
        assert_eq!(ordinal(22), "22nd");
    }
}
