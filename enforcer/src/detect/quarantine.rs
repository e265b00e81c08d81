//! Follow-through: a session with a high-severity finding that blocks is quarantined for its
//! detector's `quarantine` time, so that an attacker caught once does not simply change path
//! (or operation) and carry on. Every request of a quarantined session is then a
//! [`FindingKind::Quarantined`] finding that blocks: in `Enforce` it is refused with a problem
//! body that names the session's incident and what caused the quarantine; in `Monitor` it is
//! only logged, like every finding.
//!
//! A credential-stuffing finding is about a client address rather than a session (a stuffer
//! opens a new session with every request), so it also quarantines the address: every session
//! from it is refused for the time. Addresses are kept in a [`ClientQuarantine`] table bounded by
//! `learning.maxTrackedClients` entries of fixed size ([`CLIENT_ENTRY_BYTES`]): expired entries
//! are dropped first, and when the table is still full a new address is not quarantined (its
//! session still is). The session's mark lives in its own detector state and goes with it.
//!
//! Quarantine is local state of the replica that saw the finding, like the session table: the
//! learned model and the reports carry none of it (nothing to merge).

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::json;

use crate::config::{Action, DEFAULT_QUARANTINE, DetectorConfig, DetectorsConfig, Duration};
use crate::finding::{Finding, FindingKind, Severity};

use super::context::duration_text;
use super::session_state::{Quarantine, SessionState};

/// Approximate bytes of one quarantined address (key, mark and the map's own overhead).
pub const CLIENT_ENTRY_BYTES: usize = 64;

/// Quarantined client addresses (see the module docs).
#[derive(Debug, Default)]
pub struct ClientQuarantine {
    entries: HashMap<IpAddr, Quarantine>,
    /// Addresses not quarantined because the table was full.
    pub untracked: u64,
}

impl ClientQuarantine {
    /// The quarantine of `client`, while it lasts.
    pub fn get(&self, client: &IpAddr, now_ms: u64) -> Option<Quarantine> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries
            .get(client)
            .copied()
            .filter(|q| now_ms < q.until_ms)
    }

    /// Quarantines `client` (a longer quarantine in force is kept), within `cap` entries.
    pub fn insert(&mut self, client: IpAddr, quarantine: Quarantine, now_ms: u64, cap: usize) {
        if !self.entries.contains_key(&client) && self.entries.len() >= cap {
            self.entries.retain(|_, q| now_ms < q.until_ms);
            if self.entries.len() >= cap {
                self.untracked += 1;
                return;
            }
        }
        let entry = self.entries.entry(client).or_insert(quarantine);
        if entry.until_ms < quarantine.until_ms {
            *entry = quarantine;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The settings of the detector that made findings of `kind`.
pub fn detector_of(detectors: &DetectorsConfig, kind: FindingKind) -> Option<&DetectorConfig> {
    match kind {
        FindingKind::ShadowEndpoint => Some(&detectors.shadow_endpoint),
        FindingKind::ShapeDeviation => Some(&detectors.request_shape),
        FindingKind::UnlikelySequence => Some(&detectors.unlikely_sequence),
        FindingKind::Volume => Some(&detectors.volume),
        FindingKind::Enumeration => Some(&detectors.enumeration),
        FindingKind::CredentialStuffing => Some(&detectors.credential_stuffing),
        FindingKind::Exposure => Some(&detectors.exposure),
        FindingKind::IdentityLineage => Some(&detectors.identity_lineage),
        FindingKind::SequenceRule
        | FindingKind::RateLimit
        | FindingKind::SchemaViolation
        | FindingKind::Quarantined => None,
    }
}

/// How long a finding of `kind` quarantines (0: not at all): the detector's `quarantine`, or
/// its default (see `DetectorConfig::quarantine`).
pub fn time_of(detectors: &DetectorsConfig, kind: FindingKind) -> u64 {
    let Some(detector) = detector_of(detectors, kind) else {
        return 0;
    };
    let default = match kind {
        FindingKind::Enumeration | FindingKind::CredentialStuffing => DEFAULT_QUARANTINE,
        _ => Duration::from_secs(0),
    };
    detector.quarantine.unwrap_or(default).as_millis_u64()
}

/// What to quarantine after `findings`: the session's mark, and whether the client address is
/// quarantined too. `None` when no finding is high-severity, blocks, and has a quarantine time.
pub fn after(
    findings: &[Finding],
    detectors: &DetectorsConfig,
    now_ms: u64,
) -> Option<(Quarantine, bool)> {
    findings
        .iter()
        .filter(|f| f.action == Action::Block && f.severity >= Severity::High)
        .filter_map(|f| {
            let time = time_of(detectors, f.kind);
            (time > 0).then(|| {
                let q = Quarantine {
                    since_ms: now_ms,
                    until_ms: now_ms.saturating_add(time),
                    cause: f.kind,
                };
                (q, f.kind == FindingKind::CredentialStuffing)
            })
        })
        .max_by_key(|(q, _)| q.until_ms)
}

/// The finding of a request of a quarantined session or client address.
pub fn check(
    state: &SessionState,
    client_quarantine: Option<Quarantine>,
    client: &IpAddr,
    now_ms: u64,
) -> Option<Finding> {
    let client_quarantine = client_quarantine.filter(|q| now_ms < q.until_ms);
    let (q, scope) = match (state.quarantine(now_ms), client_quarantine) {
        (Some(q), _) => (q, "session"),
        (None, Some(q)) => (q, "client"),
        (None, None) => return None,
    };
    let subject = if scope == "session" {
        "this session".to_owned()
    } else {
        format!("client address {client}")
    };
    let remaining = q.until_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    let explanation = format!(
        "was refused because {subject} is quarantined for another {} after a blocked {} finding {} ago (quarantine {})",
        duration_text(remaining * 1000),
        q.cause.as_str(),
        duration_text(now_ms.saturating_sub(q.since_ms).div_ceil(1000).max(1) * 1000),
        duration_text(q.until_ms.saturating_sub(q.since_ms)),
    );
    let evidence = json!({
        "scope": scope,
        "cause": q.cause.as_str(),
        "sinceMs": q.since_ms,
        "untilMs": q.until_ms,
    });
    Some(Finding {
        kind: FindingKind::Quarantined,
        severity: Severity::High,
        action: Action::Block,
        block_status: 403,
        rule: None,
        explanation,
        evidence,
        retry_after_s: Some(remaining),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: FindingKind, severity: Severity, action: Action) -> Finding {
        Finding {
            kind,
            severity,
            action,
            block_status: 403,
            rule: None,
            explanation: String::new(),
            evidence: json!({}),
            retry_after_s: None,
        }
    }

    #[test]
    fn only_blocking_high_findings_with_a_time_quarantine() {
        let mut d = DetectorsConfig::all(Action::Block);
        // The defaults: on for enumeration and stuffing, off for the others.
        assert_eq!(time_of(&d, FindingKind::Enumeration), 900_000);
        assert_eq!(time_of(&d, FindingKind::CredentialStuffing), 900_000);
        assert_eq!(time_of(&d, FindingKind::ShapeDeviation), 0);
        assert_eq!(time_of(&d, FindingKind::UnlikelySequence), 0);
        d.enumeration.quarantine = Some(Duration::from_secs(600));
        d.credential_stuffing.quarantine = Some(Duration::from_secs(60));
        d.request_shape.quarantine = Some(Duration::from_secs(0));
        d.unlikely_sequence.quarantine = Some(Duration::from_secs(120));
        assert_eq!(time_of(&d, FindingKind::UnlikelySequence), 120_000);
        let now = 1_000_000;
        let high = |kind| finding(kind, Severity::High, Action::Block);
        assert_eq!(after(&[], &d, now), None);
        assert_eq!(
            after(
                &[finding(
                    FindingKind::Enumeration,
                    Severity::High,
                    Action::Log
                )],
                &d,
                now
            ),
            None,
            "a finding that only logs"
        );
        assert_eq!(
            after(
                &[finding(
                    FindingKind::Volume,
                    Severity::Medium,
                    Action::Block
                )],
                &d,
                now
            ),
            None,
            "medium severity"
        );
        assert_eq!(
            after(&[high(FindingKind::ShapeDeviation)], &d, now),
            None,
            "quarantine off"
        );
        let (q, client) = after(&[high(FindingKind::Enumeration)], &d, now).unwrap();
        assert_eq!(
            (q.until_ms, q.cause, client),
            (now + 600_000, FindingKind::Enumeration, false)
        );
        let (q, client) = after(&[high(FindingKind::CredentialStuffing)], &d, now).unwrap();
        assert_eq!((q.until_ms, client), (now + 60_000, true));
        // The longest applies.
        let both = [
            high(FindingKind::CredentialStuffing),
            high(FindingKind::Enumeration),
        ];
        assert_eq!(
            after(&both, &d, now).unwrap().0.cause,
            FindingKind::Enumeration
        );
    }

    #[test]
    fn quarantined_requests_are_refused_with_the_cause() {
        let mut state = SessionState::default();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(check(&state, None, &client, 5).is_none());
        let q = Quarantine {
            since_ms: 0,
            until_ms: 900_000,
            cause: FindingKind::Enumeration,
        };
        state.set_quarantine(q);
        let f = check(&state, None, &client, 60_000).unwrap();
        assert_eq!(
            (f.kind, f.action, f.block_status),
            (FindingKind::Quarantined, Action::Block, 403)
        );
        assert_eq!(
            f.explanation,
            "was refused because this session is quarantined for another 14 minutes after a blocked Enumeration finding 1 minute ago (quarantine 15 minutes)"
        );
        assert_eq!(f.retry_after_s, Some(840));
        let fresh = SessionState::default();
        let f = check(&fresh, Some(q), &client, 60_000).unwrap();
        assert!(
            f.explanation.contains("client address 203.0.113.7"),
            "{}",
            f.explanation
        );
        assert!(
            check(&fresh, Some(q), &client, 900_000).is_none(),
            "it ends"
        );
    }

    #[test]
    fn client_table_is_bounded_and_drops_expired_entries_first() {
        let mut t = ClientQuarantine::default();
        let q = |until_ms| Quarantine {
            since_ms: 0,
            until_ms,
            cause: FindingKind::CredentialStuffing,
        };
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
        for i in 0..10 {
            t.insert(ip(i), q(100), 0, 10);
        }
        t.insert(ip(10), q(100), 0, 10);
        assert_eq!((t.len(), t.untracked), (10, 1), "full: not tracked");
        assert!(t.get(&ip(10), 50).is_none());
        assert_eq!(t.get(&ip(3), 50), Some(q(100)));
        // Once the others expired, a new address takes their room.
        t.insert(ip(11), q(500), 200, 10);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&ip(11), 300), Some(q(500)));
        assert!(t.get(&ip(11), 500).is_none(), "it ends");
        // A longer quarantine extends; a shorter one does not cut it.
        t.insert(ip(11), q(400), 300, 10);
        assert_eq!(t.get(&ip(11), 450), Some(q(500)));
    }
}
