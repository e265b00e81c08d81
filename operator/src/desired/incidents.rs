//! One session's incident as a reader sees it, whichever enforcer replicas saw its requests.
//!
//! Behind a Service, kube-proxy spreads one session's requests over every enforcer replica, and
//! each replica groups what it saw into an incident of its own (its id is the replica's). Shown
//! as they were reported, one attack fills two or three of the status's few incident slots and
//! pushes other attacks out of view. So before the status picks which incidents to show, the
//! incidents of the same session whose active periods meet are merged into one: kinds and
//! operations joined, counters added up, the widest period, the highest severity.
//!
//! Two incidents of one session on the same replica are always apart by more than the
//! enforcer's inactivity window (15 min by default, enforcer/src/incident/mod.rs): far more than
//! [`MERGE_GAP_MS`], so they stay two.

use ordo_enforcer::report::IncidentReport;

/// Incidents of one session whose periods are at most this far apart are one incident.
pub const MERGE_GAP_MS: u64 = 60 * 1000;

/// The incidents of `all`, those of one session seen by several replicas merged (see the module
/// documentation). A merged incident keeps the id, session and client of its earliest part and
/// the summary of its most severe part, followed by how many replicas reported it.
pub fn merge_across_replicas(all: &[&IncidentReport]) -> Vec<IncidentReport> {
    let mut sorted: Vec<&IncidentReport> = all.to_vec();
    sorted.sort_by(|a, b| {
        a.session
            .cmp(&b.session)
            .then_with(|| a.first_seen_ms.cmp(&b.first_seen_ms))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut merged: Vec<(IncidentReport, Vec<&IncidentReport>)> = Vec::new();
    for incident in sorted {
        match merged.last_mut() {
            Some((into, parts)) if same_incident(into, incident) => {
                absorb(into, incident);
                parts.push(incident);
            }
            _ => merged.push(((*incident).clone(), vec![incident])),
        }
    }
    merged
        .into_iter()
        .map(|(mut incident, parts)| {
            if parts.len() > 1 {
                incident.summary = merged_summary(&parts);
            }
            incident
        })
        .collect()
}

/// Whether `next` (which starts no earlier) continues the merged incident `into`. Incidents
/// without a session label name nothing in common.
fn same_incident(into: &IncidentReport, next: &IncidentReport) -> bool {
    !into.session.is_empty()
        && into.session == next.session
        && next.first_seen_ms <= into.last_seen_ms.saturating_add(MERGE_GAP_MS)
}

fn absorb(into: &mut IncidentReport, part: &IncidentReport) {
    if part.severity_rank() > into.severity_rank() {
        into.severity.clone_from(&part.severity);
    }
    for kind in &part.kinds {
        if !into.kinds.contains(kind) {
            into.kinds.push(kind.clone());
        }
    }
    for operation in &part.operations {
        if !into.operations.contains(operation) {
            into.operations.push(operation.clone());
        }
    }
    into.requests = into.requests.saturating_add(part.requests);
    into.flagged = into.flagged.saturating_add(part.flagged);
    into.blocked = into.blocked.saturating_add(part.blocked);
    into.first_seen_ms = into.first_seen_ms.min(part.first_seen_ms);
    into.last_seen_ms = into.last_seen_ms.max(part.last_seen_ms);
}

/// The most severe part's summary (then the one with most requests flagged), and how many
/// replicas' parts the counters add up.
fn merged_summary(parts: &[&IncidentReport]) -> String {
    let lead = parts
        .iter()
        .max_by_key(|p| (p.severity_rank(), p.flagged, p.blocked))
        .map_or("", |p| p.summary.as_str());
    format!(
        "{lead} (Reported by {} enforcer replicas, each seeing part of the session's requests; \
         this one's summary is shown and the counts are their sum.)",
        parts.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: &str, session: &str, seen: (u64, u64), severity: &str) -> IncidentReport {
        IncidentReport {
            id: id.into(),
            session: session.into(),
            client: "10.0.0.9".into(),
            severity: severity.into(),
            kinds: vec![format!("kind-of-{id}")],
            operations: vec!["POST /transfers".into()],
            requests: 3,
            flagged: 2,
            blocked: 1,
            first_seen_ms: seen.0,
            last_seen_ms: seen.1,
            summary: format!("summary of {id}"),
        }
    }

    fn merged(parts: &[IncidentReport]) -> Vec<IncidentReport> {
        merge_across_replicas(&parts.iter().collect::<Vec<_>>())
    }

    #[test]
    fn one_session_on_two_replicas_is_one_incident() {
        let out = merged(&[
            part("inc-b", "jwt:sub=7", (5_000, 9_000), "high"),
            part("inc-a", "jwt:sub=7", (1_000, 6_000), "medium"),
        ]);
        assert_eq!(out.len(), 1);
        let one = &out[0];
        assert_eq!(one.id, "inc-a", "the earliest part names it");
        assert_eq!(one.severity, "high");
        assert_eq!((one.first_seen_ms, one.last_seen_ms), (1_000, 9_000));
        assert_eq!((one.requests, one.flagged, one.blocked), (6, 4, 2));
        assert_eq!(one.kinds, ["kind-of-inc-a", "kind-of-inc-b"]);
        assert_eq!(one.operations, ["POST /transfers"]);
        assert!(
            one.summary
                .starts_with("summary of inc-b (Reported by 2 enforcer replicas"),
            "{}",
            one.summary
        );
    }

    #[test]
    fn other_sessions_and_later_episodes_stay_apart() {
        let out = merged(&[
            part("inc-a", "jwt:sub=7", (1_000, 2_000), "high"),
            part("inc-b", "jwt:sub=8", (1_500, 2_500), "high"),
            // The same session again after a quiet period longer than the merge gap.
            part(
                "inc-c",
                "jwt:sub=7",
                (2_000 + MERGE_GAP_MS + 1, 90_000),
                "high",
            ),
        ]);
        let ids: Vec<&str> = out.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["inc-a", "inc-c", "inc-b"]);
        assert!(out.iter().all(|i| i.summary.starts_with("summary of")));
    }

    #[test]
    fn incidents_without_a_session_label_are_never_merged() {
        let out = merged(&[
            part("inc-a", "", (1_000, 2_000), "high"),
            part("inc-b", "", (1_000, 2_000), "high"),
        ]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn three_replicas_chain_into_one() {
        let out = merged(&[
            part("inc-a", "ip:10.0.0.9", (1_000, 2_000), "low"),
            part("inc-b", "ip:10.0.0.9", (2_500, 3_000), "critical"),
            part("inc-c", "ip:10.0.0.9", (2_900, 70_000), "medium"),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, "critical");
        assert!(
            out[0].summary.contains("Reported by 3 enforcer replicas"),
            "{}",
            out[0].summary
        );
    }
}
