//! Distributed credential stuffing: authentication failures spread over many client
//! addresses, each of which stays far below the per-client threshold of [`super::stuffing`].
//!
//! Two checks, both on authenticating operations only:
//!
//! - **Surge.** The learned baseline is the operation's failure rate (401/403 answers, and
//!   answers whose body said they failed — see [`super::outcome`] — among all answers to
//!   unflagged requests: plain counts in the model, merged across replicas by
//!   addition), frozen for the counting window like the peer baselines. The current window is the operation's most recent attempts API-wide (at most
//!   128, none older than the counting window). When its failures are far above what the
//!   learned rate predicts ([`surge_threshold`]) and come from many identities and many
//!   addresses, the API is under a stuffing surge. A surge does not make every login
//!   suspicious — honest users keep logging in — so it singles out the attempts that look like
//!   the attack: from a client that already failed *for another identity* in this window (a
//!   stuffer moving down its list; an honest user retries their own name). An identity that
//!   the attack tried is not blocked for that alone: its owner must still be able to log in.
//! - **Campaign.** Blocking stops only the addresses that try again; a campaign that tries
//!   once or twice per address is seen after the answers. While the operation is in a surge,
//!   every failed attempt of the surge's window that settled (made at least `journeyGap` ago,
//!   at most 30 s), whose session did not go on using the API for something else (an honest
//!   user whose login failed — a mistype, a password an attacker changed — carries on with
//!   what they came for; a stuffer's address only tries logins)
//!   and that its address did not follow with a success for the same identity (an honest user
//!   who mistyped logs in right after) names its address as a member of the campaign: a
//!   [`LateFinding`] per address, all carrying one campaign id, so that the incident store
//!   makes them one incident that lists the addresses. Its members are refused afterwards by
//!   the quarantine of credential stuffing (see `detect::quarantine`), so that an address of
//!   the campaign that comes back is refused.
//! - **One identity, many addresses.** An identity that failed from at least
//!   [`identity_spread_threshold`] distinct addresses in the window is under attack (password
//!   spraying over a botnet): further attempts on it are flagged for the rest of the window.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};

use super::auth_activity::{AuthActivity, IdentityFailures, RecentAttempts};
use super::clients::ClientFailures;
use super::context::{Judged, finding, percent};
use super::request::LateFinding;
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
        learned_failure_rate(stats.failures(), stats.responses())
    });
    let threshold = surge_threshold(recent.attempts, rate, config.sensitivity);
    let found = spread_over(&recent, threshold).then_some(Surge {
        recent,
        rate,
        threshold,
    });
    if found.is_some() {
        activity.mark_surge(op, j.ctx.now_ms);
    }
    found
}

/// Whether `threshold` failures or more came from many identities and many addresses (one
/// address or one identity is the job of the per-client and per-identity checks).
fn spread_over(recent: &RecentAttempts, threshold: u32) -> bool {
    let spread = threshold.div_ceil(2);
    recent.failures >= threshold
        && recent.failing_identities >= spread
        && recent.failing_clients >= spread
}

/// A campaign in progress against `op` at `now_ms`: a surge now, or, when a surge was found on
/// the operation within the counting window, failures still at half its bar or more. A
/// campaign does not stop being one when its pace dips: spread over minutes, its tries thin
/// out in the last attempts as honest logins go on, and the stragglers at its end would
/// otherwise never be named (hysteresis, as alerting uses to keep a condition from flapping
/// at its threshold). `learned_rate` gives the operation's learned failure rate when the
/// counting window has none frozen yet.
pub fn campaign_in_progress(
    activity: &mut AuthActivity,
    config: &DetectorConfig,
    at: CampaignClock,
    op: u16,
    learned_rate: impl FnOnce() -> f64,
) -> Option<Surge> {
    let recent = activity.recent(op, at.now_ms, at.window_ms);
    let rate = activity.frozen_rate(op, at.window, learned_rate);
    let threshold = surge_threshold(recent.attempts, rate, config.sensitivity);
    if spread_over(&recent, threshold) {
        activity.mark_surge(op, at.now_ms);
        return Some(Surge {
            recent,
            rate,
            threshold,
        });
    }
    if !activity.surged_within(op, at.now_ms, at.window_ms) {
        return None;
    }
    let threshold = threshold.div_ceil(2);
    spread_over(&recent, threshold).then_some(Surge {
        recent,
        rate,
        threshold,
    })
}

/// When a campaign is judged: now, the counting window's number and length.
#[derive(Debug, Clone, Copy)]
pub struct CampaignClock {
    pub now_ms: u64,
    pub window: u64,
    pub window_ms: u64,
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

/// Most campaign members named per exchange.
const MAX_MEMBERS_PER_EXCHANGE: usize = 32;

/// Longest wait before a failed attempt counts as settled: an honest user who mistyped
/// retries within seconds, and an attempt must settle before it leaves the ring.
pub const MAX_SETTLE_MS: u64 = 30_000;

/// How long a failed attempt waits for a success of its address and identity before it
/// names a campaign member: the journey gap, at most [`MAX_SETTLE_MS`].
pub fn settle_ms(journey_gap_ms: u64) -> u64 {
    journey_gap_ms.min(MAX_SETTLE_MS)
}

/// The campaign members settled by this exchange (see the module docs); empty without a
/// campaign in progress.
pub fn campaign(
    j: &Judged<'_>,
    config: &DetectorConfig,
    activity: &mut AuthActivity,
    settle_ms: u64,
) -> Vec<LateFinding> {
    let (Some(op), Some(stats)) = (j.op, j.op_stats()) else {
        return Vec::new();
    };
    let at = CampaignClock {
        now_ms: j.ctx.now_ms,
        window: j.window,
        window_ms: j.window_ms,
    };
    let Some(surge) = campaign_in_progress(activity, config, at, op, || {
        learned_failure_rate(stats.failures(), stats.responses())
    }) else {
        return Vec::new();
    };
    let members = activity.campaign_members(
        op,
        at.now_ms,
        at.window_ms,
        settle_ms,
        MAX_MEMBERS_PER_EXCHANGE,
    );
    name_members(activity, config, at, op, j.template(), &surge, members)
}

/// How long the authenticating operation must have had no attempt at all, beyond the
/// settling time, before the sweep names anything: while logins come, they name the members
/// (on whichever replica decides them), and a sweep running at the same moment as a login on
/// another replica could name a member twice.
const SWEEP_QUIET_MS: u64 = 1_000;

/// The members of the campaign against `op` (template `template`) that settled with no login
/// after them to name them (a campaign's last tries), found without a request
/// (`Analyzer::sweep_campaigns`, every second) once the operation has been quiet for the
/// settling time and [`SWEEP_QUIET_MS`]. Only the failures decided here: another replica's
/// are its own to name.
pub fn sweep(
    activity: &mut AuthActivity,
    config: &DetectorConfig,
    at: CampaignClock,
    op: u16,
    template: &str,
    settle_ms: u64,
    learned_rate: impl FnOnce() -> f64,
) -> Vec<LateFinding> {
    if !activity.quiet_for(op, at.now_ms, settle_ms + SWEEP_QUIET_MS) {
        return Vec::new();
    }
    let Some(surge) = campaign_in_progress(activity, config, at, op, learned_rate) else {
        return Vec::new();
    };
    let members = activity.campaign_members_decided_here(
        op,
        at.now_ms,
        at.window_ms,
        settle_ms,
        MAX_MEMBERS_PER_EXCHANGE,
    );
    name_members(activity, config, at, op, template, &surge, members)
}

/// One finding per member, all carrying the campaign's id.
fn name_members(
    activity: &mut AuthActivity,
    config: &DetectorConfig,
    at: CampaignClock,
    op: u16,
    template: &str,
    surge: &Surge,
    members: Vec<std::net::IpAddr>,
) -> Vec<LateFinding> {
    if members.is_empty() {
        return Vec::new();
    }
    let id = activity.campaign_id(op, at.now_ms, at.window_ms);
    let r = surge.recent;
    let explanation = format!(
        "took part in a credential-stuffing campaign against {template}: {} of the last {} attempts API-wide failed ({}), for {} distinct identities from {} addresses, where the learned failure rate is {} (threshold {} failures); each of these addresses failed and did not log in after it",
        r.failures,
        r.attempts,
        percent(f64::from(r.failures) / f64::from(r.attempts.max(1))),
        r.failing_identities,
        r.failing_clients,
        percent(surge.rate),
        surge.threshold,
    );
    members
        .into_iter()
        .map(|client| {
            let evidence = json!({
                "campaign": format!("camp-{id:016x}"),
                "operation": template,
                "client": client.to_string(),
                "surge": {
                    "attempts": r.attempts,
                    "failures": r.failures,
                    "distinctIdentities": r.failing_identities,
                    "distinctClients": r.failing_clients,
                    "learnedFailureRate": surge.rate,
                    "threshold": surge.threshold,
                },
            });
            LateFinding {
                client,
                finding: finding(
                    FindingKind::CredentialStuffing,
                    Severity::High,
                    config,
                    explanation.clone(),
                    evidence,
                ),
            }
        })
        .collect()
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
