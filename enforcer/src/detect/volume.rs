//! Volume: a session above the learned per-operation threshold in the current window
//! (scraping, automation). Blocks with 429 and `Retry-After` until the window ends.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::detect::session_state::SessionState;
use crate::finding::{Finding, FindingKind, Severity};

use super::context::{Judged, finding};
use super::thresholds::volume_threshold;

pub fn check(j: &Judged<'_>, config: &DetectorConfig, state: &SessionState) -> Option<Finding> {
    let op = j.op?;
    let p = j.baselines.operation(op).volume?;
    let so_far = state
        .window(j.window)
        .and_then(|w| w.slot(op))
        .map_or(0, |s| u32::from(s.requests));
    let count = so_far.saturating_add(1);
    let threshold = volume_threshold(&p, config.sensitivity);
    if count <= threshold {
        return None;
    }
    let explanation = format!(
        "sent {count} requests to {} in the current {} window; 99% of sessions send at most {} (threshold {threshold})",
        j.template(),
        j.window_text(),
        p.p99
    );
    let evidence = json!({
        "operation": j.template(),
        "requests": count,
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
