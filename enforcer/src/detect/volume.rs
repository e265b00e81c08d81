//! Volume: a session above the learned per-operation threshold in the sliding counting window
//! (scraping, automation): the current window's requests plus the previous window's weighted
//! by how much of it the sliding window still covers, so that crossing a boundary does not
//! double the allowance. Blocks with 429 and `Retry-After` until the window ends.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::detect::session_state::SessionState;
use crate::finding::{Finding, FindingKind, Severity};

use super::context::{Judged, finding};
use super::thresholds::volume_threshold;

pub fn check(j: &Judged<'_>, config: &DetectorConfig, state: &SessionState) -> Option<Finding> {
    let op = j.op?;
    let p = j.baselines.operation(op).volume?;
    let counts = state.sliding(j.window, op);
    let current = counts.requests.saturating_add(1);
    let count = j.sliding_count(current, counts.prev_requests);
    let threshold = volume_threshold(&p, config.sensitivity);
    if count <= threshold {
        return None;
    }
    let carried = count - current;
    let explanation = if carried == 0 {
        format!(
            "sent {count} requests to {} in the current {} window; 99% of sessions send at most {} (threshold {threshold})",
            j.template(),
            j.window_text(),
            p.p99
        )
    } else {
        format!(
            "sent {count} requests to {} in the last {} ({current} in the current window and {carried} of the {} before it, weighted by their overlap); 99% of sessions send at most {} per window (threshold {threshold})",
            j.template(),
            super::context::duration_text(j.window_ms),
            counts.prev_requests,
            p.p99
        )
    };
    let evidence = json!({
        "operation": j.template(),
        "requests": count,
        "currentWindow": current,
        "previousWindow": counts.prev_requests,
        "threshold": threshold,
        "p50": p.p50, "p90": p.p90, "p99": p.p99,
        "windows": p.windows,
    });
    let mut f = finding(
        FindingKind::Volume,
        Severity::Medium,
        config,
        explanation,
        evidence,
    );
    f.block_status = 429;
    f.retry_after_s = Some(j.seconds_to_window_end());
    Some(f)
}
