//! Distributed credential stuffing: authentication failures spread over many client
//! addresses, each of which stays far below the per-client threshold of [`super::stuffing`].
//!
//! Two checks, both on authenticating operations only:
//!
//! - **Surge.** The learned baseline is the operation's failure rate (401/403 answers among all
//!   answers to unflagged requests: plain counts in the model, merged across replicas by
//!   addition), frozen for the counting window like the peer baselines. The current window is the operation's most recent attempts API-wide (at most
//!   128, none older than the counting window). When its failures are far above what the
//!   learned rate predicts ([`surge_threshold`]) and come from many identities and many
//!   addresses, the API is under a stuffing surge. A surge does not make every login
//!   suspicious — honest users keep logging in — so it singles out the attempts that look like
//!   the attack: from a client that already failed *for another identity* in this window (a
//!   stuffer moving down its list; an honest user retries their own name). An identity that
//!   the attack tried is not blocked for that alone: its owner must still be able to log in.
//! - **One identity, many addresses.** An identity that failed from at least
//!   [`identity_spread_threshold`] distinct addresses in the window is under attack (password
//!   spraying over a botnet): further attempts on it are flagged for the rest of the window.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};

use super::auth_activity::{AuthActivity, IdentityFailures, RecentAttempts};
use super::clients::ClientFailures;
use super::context::{Judged, finding, percent};
use super::session_state::with_object;
use super::thresholds::{identity_spread_threshold, surge_threshold};

/// The learned failure rate of an operation, smoothed (Laplace) so that a thin or spotless
/// history does not make every failure look improbable.
pub fn learned_failure_rate(failures: u64, responses: u64) -> f64 {
    (failures as f64 + 1.0) / (responses as f64 + 2.0)
}

/// The surge figures of the current window of `op`, when it is a surge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surge {
    pub recent: RecentAttempts,
    pub rate: f64,
    pub threshold: u32,
}

/// Whether the recent attempts of the judged operation form a surge.
pub fn surge(
    j: &Judged<'_>,
    config: &DetectorConfig,
    activity: &mut AuthActivity,
) -> Option<Surge> {
    let op = j.op?;
    let stats = j.op_stats()?;
    let recent = activity.recent(op, j.ctx.now_ms, j.window_ms);
    let rate = activity.frozen_rate(op, j.window, || {
        learned_failure_rate(stats.auth_failures, stats.responses())
    });
    let threshold = surge_threshold(recent.attempts, rate, config.sensitivity);
    // Spread: many identities and many addresses (one address or one identity is the job of
    // the per-client and per-identity checks).
    let spread = threshold.div_ceil(2);
    (recent.failures >= threshold
        && recent.failing_identities >= spread
        && recent.failing_clients >= spread)
        .then_some(Surge {
            recent,
            rate,
            threshold,
        })
}

/// Whether `client` already failed in this window for an identity other than `identity`.
fn client_moved_on(client: Option<ClientFailures>, identity: Option<u64>) -> bool {
    let Some(client) = client else {
        return false;
    };
    let mine = identity.map_or([0, 0], |id| with_object([0, 0], id));
    client.identities[0] & !mine[0] != 0 || client.identities[1] & !mine[1] != 0
}

pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    activity: &mut AuthActivity,
    client: Option<ClientFailures>,
) -> Option<Finding> {
    let identity = j
        .params
        .identity
        .and_then(|id| activity.identity(id, j.window));
    if let Some(found) = spread_identity(j, config, identity) {
        return Some(found);
    }
    let surge = surge(j, config, activity)?;
    if !client_moved_on(client, j.params.identity) {
        return None;
    }
    let r = surge.recent;
    let explanation = format!(
        "tried {} during a credential-stuffing surge across clients: {} of the last {} attempts API-wide failed ({}), for {} distinct identities from {} addresses; the learned failure rate is {} (threshold {} failures), and this client already failed for another identity ({} failures in the current {} window)",
        j.template(),
        r.failures,
        r.attempts,
        percent(f64::from(r.failures) / f64::from(r.attempts.max(1))),
        r.failing_identities,
        r.failing_clients,
        percent(surge.rate),
        surge.threshold,
        client.map_or(0, |c| c.failures),
        j.window_text(),
    );
    let evidence = json!({
        "operation": j.template(),
        "client": j.ctx.client.to_string(),
        "surge": {
            "attempts": r.attempts,
            "failures": r.failures,
            "distinctIdentities": r.failing_identities,
            "distinctClients": r.failing_clients,
            "spanMs": r.span_ms,
            "learnedFailureRate": surge.rate,
            "threshold": surge.threshold,
        },
        "clientFailures": client.map_or(0, |c| c.failures),
        "clientIdentities": client.map_or(0, |c| c.distinct_identities()),
    });
    Some(finding(
        FindingKind::CredentialStuffing,
        Severity::High,
        config,
        explanation,
        evidence,
    ))
}

fn spread_identity(
    j: &Judged<'_>,
    config: &DetectorConfig,
    identity: Option<IdentityFailures>,
) -> Option<Finding> {
    let identity = identity?;
    let clients = identity.distinct_clients();
    let threshold = identity_spread_threshold(config.sensitivity);
    if clients < threshold {
        return None;
    }
    let explanation = format!(
        "tried {} for an identity that failed authentication {} times from {clients} distinct client addresses in the current {} window; honest users fail from one address (threshold {threshold} addresses)",
        j.template(),
        identity.failures,
        j.window_text(),
    );
    let evidence = json!({
        "operation": j.template(),
        "client": j.ctx.client.to_string(),
        "identityFailures": identity.failures,
        "identityClients": clients,
        "threshold": threshold,
    });
    Some(finding(
        FindingKind::CredentialStuffing,
        Severity::High,
        config,
        explanation,
        evidence,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_on_means_another_identity() {
        let mut c = ClientFailures::default();
        assert!(!client_moved_on(Some(c), Some(7)));
        c.identities = with_object(c.identities, 7);
        assert!(
            !client_moved_on(Some(c), Some(7)),
            "retrying the same identity"
        );
        assert!(client_moved_on(Some(c), Some(8)), "a different identity");
        assert!(client_moved_on(Some(c), None));
        assert!(!client_moved_on(None, Some(8)));
    }

    #[test]
    fn failure_rate_is_smoothed() {
        assert!((learned_failure_rate(0, 0) - 0.5).abs() < 1e-9);
        assert!((learned_failure_rate(40, 998) - 0.041).abs() < 1e-9);
    }
}
