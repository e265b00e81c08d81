//! SequenceRule status: the one status builder, and a small controller for the rules that the
//! ApiProtection controller never sees — those whose `spec.protectionRef.name` names no
//! ApiProtection (applied before it, a typo, or the protection was deleted). Such a rule gets
//! `Accepted=False, reason=ProtectionNotFound`; once the ApiProtection exists its own
//! reconcile lists the rules that name it and flips them to `Accepted=True` (or `Invalid`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use ordo_enforcer::report::protocol::RuleCounters;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::conditions::{self, Desired};
use crate::controller::{Context, scoped};
use crate::crd::{ApiProtection, SequenceRule, SequenceRuleStatus};
use crate::error::{Error, Result};
use crate::names::FIELD_MANAGER;

/// Reason of `Accepted=False` when the named ApiProtection does not exist.
pub const PROTECTION_NOT_FOUND: &str = "ProtectionNotFound";

/// How often a rule without its ApiProtection is checked again anyway (the watch on
/// ApiProtections normally triggers the check at once).
const ORPHAN_RESYNC: Duration = Duration::from_secs(300);

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

/// Writes `status` by server-side apply unless the rule already has it.
pub async fn write(
    api: &Api<SequenceRule>,
    rule: &SequenceRule,
    status: SequenceRuleStatus,
) -> Result<()> {
    if rule.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": SequenceRule::api_version(&()),
        "kind": SequenceRule::kind(&()),
        "status": status,
    });
    api.patch_status(
        &rule.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Runs the controller of rules without an ApiProtection until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let scope = ctx.settings.namespace.clone();
    let rules: Api<DeserializeGuard<SequenceRule>> = scoped(&client, scope.as_deref());
    let protections: Api<DeserializeGuard<ApiProtection>> = scoped(&client, scope.as_deref());
    let wc = watcher::Config::default().any_semantic();
    let controller = Controller::new(rules, wc.clone());
    let store = controller.store();
    controller
        .watches(
            protections,
            wc,
            move |protection: DeserializeGuard<ApiProtection>| {
                // An ApiProtection created or deleted: re-check the rules that name it.
                let namespace = protection.namespace().unwrap_or_default();
                let name = protection.name_any();
                store
                    .state()
                    .into_iter()
                    .filter_map(|rule| match &rule.0 {
                        Ok(r)
                            if r.namespace().as_deref() == Some(namespace.as_str())
                                && r.spec.protection_ref.name == name =>
                        {
                            Some(ObjectRef::new(&r.name_any()).within(&namespace))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "rule status loop reported an error");
            }
        })
        .await;
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SequenceRule>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    // Unreadable rules are reported on their ApiProtection's RulesAccepted condition.
    let Ok(rule) = &guard.0 else {
        return Ok(Action::await_change());
    };
    if rule.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = rule
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let protections: Api<ApiProtection> = Api::namespaced(ctx.client.clone(), &namespace);
    let exists = protections
        .get_opt(&rule.spec.protection_ref.name)
        .await?
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
    ctx.metrics
        .reconciles
        .with_label_values(&["SequenceRule", "ok"])
        .inc();
    if exists {
        // The ApiProtection's reconcile owns the status of the rules that name it.
        return Ok(Action::await_change());
    }
    let status = build(rule, protection_not_found(rule), None, Timestamp::now());
    let api: Api<SequenceRule> = Api::namespaced(ctx.client.clone(), &namespace);
    write(&api, rule, status).await?;
    Ok(Action::requeue(ORPHAN_RESYNC))
}

fn error_policy(
    _rule: Arc<DeserializeGuard<SequenceRule>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconciles
        .with_label_values(&["SequenceRule", "error"])
        .inc();
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[err.metric_kind()])
        .inc();
    tracing::warn!(error = %err, "writing a SequenceRule status failed");
    Action::requeue(Duration::from_secs(5))
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
