//! What every detector reads when it judges one request.

use super::request::RequestContext;
use crate::config::{DetectorConfig, LearningConfig};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::{LearnedModel, OperationStats};

use super::baselines::Baselines;
use super::params::RequestParams;

/// One request as the detectors see it, with the model it is judged against.
pub struct Judged<'a> {
    pub ctx: &'a RequestContext<'a>,
    pub model: &'a LearnedModel,
    pub learning: &'a LearningConfig,
    /// The operation's index in the model, when the model knows it.
    pub op: Option<u16>,
    pub params: &'a RequestParams,
    /// Clock-aligned counting window (`now_ms / window_ms`).
    pub window: u64,
    pub window_ms: u64,
    /// Peer percentiles frozen for the current window.
    pub baselines: &'a Baselines,
}

impl<'a> Judged<'a> {
    pub fn template(&self) -> &str {
        &self.ctx.operation.template
    }

    pub fn op_stats(&self) -> Option<&'a OperationStats> {
        self.op.and_then(|i| self.model.operation(i))
    }

    /// Adjective form of the counting window, e.g. "10-minute".
    pub fn window_text(&self) -> String {
        let text = duration_text(self.window_ms);
        let singular = text.strip_suffix('s').unwrap_or(&text);
        singular.replace(' ', "-")
    }

    /// Milliseconds into the current window.
    pub fn into_window_ms(&self) -> u64 {
        self.ctx
            .now_ms
            .saturating_sub(self.window.saturating_mul(self.window_ms))
    }

    /// The two-bucket estimate of a count (see `session_state::Sliding`).
    pub fn sliding_count(&self, current: u32, previous: u32) -> u32 {
        super::session_state::Sliding::carried(
            current,
            previous,
            self.into_window_ms(),
            self.window_ms,
        )
    }

    /// Seconds until the current window ends (for `Retry-After`).
    pub fn seconds_to_window_end(&self) -> u64 {
        let end = (self.window + 1).saturating_mul(self.window_ms);
        end.saturating_sub(self.ctx.now_ms).div_ceil(1000).max(1)
    }
}

/// "10 minutes", "90 seconds", "1 hour".
pub fn duration_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (value, unit) = if secs.is_multiple_of(3600) && secs >= 3600 {
        (secs / 3600, "hour")
    } else if secs.is_multiple_of(60) && secs >= 60 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if value == 1 {
        format!("1 {unit}")
    } else {
        format!("{value} {unit}s")
    }
}

/// Percentage with at most one decimal, e.g. "99.5%", "0.4%".
pub fn percent(fraction: f64) -> String {
    let value = (fraction * 1000.0).round() / 10.0;
    if (value - value.round()).abs() < 1e-9 {
        format!("{}%", value.round() as i64)
    } else {
        format!("{value:.1}%")
    }
}

/// Builds a finding with the detector's configured action.
pub fn finding(
    kind: FindingKind,
    severity: Severity,
    config: &DetectorConfig,
    explanation: String,
    evidence: serde_json::Value,
) -> Finding {
    Finding {
        kind,
        severity,
        action: config.action,
        block_status: 403,
        rule: None,
        explanation,
        evidence,
        retry_after_s: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(duration_text(600_000), "10 minutes");
        assert_eq!(duration_text(3_600_000), "1 hour");
        assert_eq!(duration_text(90_000), "90 seconds");
        assert_eq!(percent(0.995), "99.5%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.004), "0.4%");
    }
}
