//! Status conditions: built fresh on every reconcile, with `lastTransitionTime` carried over
//! from the previous status while a condition's `status` does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const TARGET_RESOLVED: &str = "TargetResolved";
pub const ENFORCER_AVAILABLE: &str = "EnforcerAvailable";
pub const RULES_ACCEPTED: &str = "RulesAccepted";
pub const MODEL_MATURE: &str = "ModelMature";
/// The one condition of a SequenceRule.
pub const ACCEPTED: &str = "Accepted";

/// The longest condition message written (the API limits it to 32 KiB).
const MAX_MESSAGE: usize = 2048;

/// A desired condition before merging with the previous status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Builds the conditions list from `desired`, keeping `lastTransitionTime` of conditions whose
/// status is unchanged in `previous`.
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.ok { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            let mut message = d.message.clone();
            if message.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.clone(),
                message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Conditions whose status changed (or that are new) between `previous` and `current`.
pub fn transitions<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| {
            previous
                .iter()
                .find(|p| p.type_ == c.type_)
                .is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        .collect()
}

/// Whether the condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let first = merge(
            &[],
            &[Desired::new(READY, false, "Pending", "waiting")],
            Some(1),
            t0,
        );
        assert_eq!(first[0].last_transition_time, Time(t0));
        let same = merge(
            &first,
            &[Desired::new(READY, false, "StillPending", "still")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "StillPending");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Desired::new(READY, true, "Ready", "ok")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
        assert_eq!(transitions(&same, &flipped).len(), 1);
        assert!(transitions(&flipped, &flipped).is_empty());
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(3000);
        let conditions = merge(
            &[],
            &[Desired::new(READY, false, "X", long)],
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert!(conditions[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(conditions[0].message.ends_with('…'));
    }
}
