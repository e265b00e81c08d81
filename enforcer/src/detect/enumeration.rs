//! Enumeration (BOLA): a session touching many more distinct objects of an operation in the
//! current window than its peers — account ids in a path, phone numbers or e-mail addresses
//! in a lookup — and a session collecting many not-found answers on object lookups.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::detect::session_state::{SessionState, distinct_of, with_object};
use crate::finding::{Finding, FindingKind, Severity};

use super::context::{Judged, finding};
use super::thresholds::{object_threshold, peer_threshold};

/// Judges the request's objects. `unshown` are its object identifiers that the session did
/// not get from its token or an earlier answer (`lineage::unshown_objects`): only those count
/// as touched objects, here and in what sessions teach the baseline, so that a reader who
/// opens what listings showed them is not taken for one who guesses.
pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    state: &SessionState,
    unshown: &[u64],
) -> Option<Finding> {
    let op = j.op?;
    if j.params.object_ids.is_empty() {
        return None;
    }
    let counters = state.window(j.window);
    if let Some(objects) = j
        .baselines
        .operation(op)
        .objects
        .filter(|_| !unshown.is_empty())
    {
        let counts = state.sliding(j.window, op);
        let bits = unshown
            .iter()
            .fold(counts.objects, |bits, id| with_object(bits, *id));
        let current = distinct_of(bits);
        // Objects of the previous window not touched again in this one, weighted by overlap.
        let union = [
            bits[0] | counts.prev_objects[0],
            bits[1] | counts.prev_objects[1],
        ];
        let earlier = distinct_of(union).saturating_sub(current);
        let distinct = j.sliding_count(current, earlier);
        let p99 = objects.p99;
        let threshold = object_threshold(p99, config.sensitivity);
        if distinct > threshold {
            let carried = distinct - current;
            let explanation = if carried == 0 {
                format!(
                    "touched {distinct} distinct objects via {} in the current {} window; 99% of sessions touch at most {p99} (threshold {threshold})",
                    j.template(),
                    j.window_text()
                )
            } else {
                format!(
                    "touched {distinct} distinct objects via {} in the last {} ({current} in the current window and {carried} of the {earlier} others of the window before it, weighted by their overlap); 99% of sessions touch at most {p99} per window (threshold {threshold})",
                    j.template(),
                    super::context::duration_text(j.window_ms)
                )
            };
            let evidence = json!({
                "operation": j.template(),
                "distinctObjects": distinct,
                "currentWindow": current,
                "previousWindow": earlier,
                "threshold": threshold,
                "p99": p99,
                "windows": objects.windows,
            });
            return Some(finding(
                FindingKind::Enumeration,
                Severity::High,
                config,
                explanation,
                evidence,
            ));
        }
    }
    let not_found = counters.map_or(0, |w| u32::from(w.not_found));
    if not_found > 0 {
        // Peers only count once enough session windows saw not-found answers.
        let p99 = j.baselines.not_found.map_or(0, |p| p.p99);
        let threshold = peer_threshold(p99, config.sensitivity);
        if not_found >= threshold {
            let explanation = format!(
                "received {not_found} not-found answers on object lookups in the current {} window and asked {} again; sessions that get any receive at most {p99} (threshold {threshold})",
                j.window_text(),
                j.template()
            );
            let evidence = json!({
                "operation": j.template(),
                "notFound": not_found,
                "threshold": threshold,
                "p99": p99,
            });
            return Some(finding(
                FindingKind::Enumeration,
                Severity::High,
                config,
                explanation,
                evidence,
            ));
        }
    }
    None
}
