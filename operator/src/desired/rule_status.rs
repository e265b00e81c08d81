//! The desired status of a SequenceRule: its `Accepted` condition, its kind and the counters
//! the enforcers reported. Pure: the controller reads and writes, this decides.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use ordo_enforcer::report::protocol::RuleCounters;

use super::conditions::{self, Desired};
use crate::crd::{SequenceRule, SequenceRuleStatus};

/// Reason of `Accepted=False` when the named ApiProtection does not exist.
pub const PROTECTION_NOT_FOUND: &str = "ProtectionNotFound";

/// The desired `Accepted` condition of a rule whose ApiProtection is missing.
pub fn protection_not_found(rule: &SequenceRule) -> Desired {
    let namespace = rule.namespace().unwrap_or_default();
    Desired::new(
        conditions::ACCEPTED,
        false,
        PROTECTION_NOT_FOUND,
        format!(
            "spec.protectionRef.name: no ApiProtection {:?} in namespace {namespace:?}; the rule is not enforced until it exists",
            rule.spec.protection_ref.name
        ),
    )
}

/// The full status of `rule` for the `desired` acceptance, with the enforcers' counters when
/// known (else the previous ones are kept).
pub fn build(
    rule: &SequenceRule,
    desired: Desired,
    counts: Option<&RuleCounters>,
    now: Timestamp,
) -> SequenceRuleStatus {
    let previous = rule.status.clone().unwrap_or_default();
    let conditions = conditions::merge(
        &previous.conditions,
        &[desired],
        rule.metadata.generation,
        now,
    );
    SequenceRuleStatus {
        observed_generation: rule.metadata.generation,
        conditions,
        rule_kind: rule.spec.kind(),
        matches: counts.map_or(previous.matches, |c| {
            i64::try_from(c.matches).unwrap_or(i64::MAX)
        }),
        blocked: counts.map_or(previous.blocked, |c| {
            i64::try_from(c.blocked).unwrap_or(i64::MAX)
        }),
        last_match: counts
            .and_then(|c| c.last_match_ms)
            .and_then(|ms| Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok())
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
            .or(previous.last_match.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SequenceRuleSpec;

    fn rule(yaml: &str) -> SequenceRule {
        let spec: SequenceRuleSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut rule = SequenceRule::new("transfer-after-balance", spec);
        rule.metadata.namespace = Some("bank".into());
        rule.metadata.generation = Some(3);
        rule
    }

    const SPEC: &str = r#"
protectionRef:
  name: bank-apii
requires:
  operation: "POST /api/v1/transferFunds"
  after: ["GET /api/v1/accounts/{id}/balance"]
"#;

    #[test]
    fn a_missing_protection_is_named_in_the_condition() {
        let rule = rule(SPEC);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = build(&rule, protection_not_found(&rule), None, now);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions.len(), 1);
        let accepted = &status.conditions[0];
        assert_eq!(accepted.type_, conditions::ACCEPTED);
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.reason, PROTECTION_NOT_FOUND);
        assert!(
            accepted.message.contains("spec.protectionRef.name")
                && accepted.message.contains("\"bank-apii\"")
                && accepted.message.contains("\"bank\""),
            "{}",
            accepted.message
        );
        assert_eq!(accepted.observed_generation, Some(3));
    }

    #[test]
    fn counters_survive_and_the_transition_time_moves_when_accepted() {
        let mut rule = rule(SPEC);
        let then = Timestamp::from_second(1_800_000_000).unwrap();
        let mut orphan = build(&rule, protection_not_found(&rule), None, then);
        orphan.matches = 7;
        rule.status = Some(orphan.clone());
        // Same verdict later: nothing changes, so nothing is written.
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        assert_eq!(
            build(&rule, protection_not_found(&rule), None, later),
            orphan
        );
        // The ApiProtection appears: Accepted flips, its time moves, counters stay.
        let accepted = Desired::new(conditions::ACCEPTED, true, "Accepted", "rendered");
        let flipped = build(&rule, accepted, None, later);
        assert_eq!(flipped.conditions[0].status, "True");
        assert_eq!(flipped.conditions[0].last_transition_time.0, later);
        assert_eq!(flipped.matches, 7);
    }
}
