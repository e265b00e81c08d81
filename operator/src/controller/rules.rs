//! The SequenceRules of an ApiProtection (read, rendered, their status written), and a small
//! controller for the rules that the ApiProtection controller never sees — those whose
//! `spec.protectionRef.name` names no ApiProtection (applied before it, a typo, or the
//! protection was deleted). Such a rule gets `Accepted=False, reason=ProtectionNotFound`; once
//! the ApiProtection exists its own reconcile lists the rules that name it and flips them to
//! `Accepted=True` (or `Invalid`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::triggers::spec_changes;
use super::{Context, scoped};
use crate::crd::{ApiProtection, SequenceRule, SequenceRuleStatus, SessionSpec};
use crate::desired::conditions::{self, Desired};
use crate::desired::names::FIELD_MANAGER;
use crate::desired::render;
use crate::desired::rule_status::{build, protection_not_found};
use crate::desired::status::RuleVerdicts;
use crate::error::{Error, Result};
use crate::reports::state::ProtectionKey;

/// How often a rule without its ApiProtection is checked again anyway (the watch on
/// ApiProtections normally triggers the check at once).
const ORPHAN_RESYNC: Duration = Duration::from_secs(300);

/// Accepted rules for the config and each rule's acceptance for its status.
pub struct RuleSet {
    pub accepted: Vec<ordo_enforcer::config::SequenceRuleConfig>,
    /// (rule, Ok or error message)
    pub verdicts: Vec<(SequenceRule, std::result::Result<(), String>)>,
    /// Names of objects in the namespace that could not be read at all.
    pub unreadable: Vec<String>,
}

impl RuleSet {
    /// How many rules were accepted and why the others were not.
    pub fn outcome(&self) -> RuleVerdicts {
        RuleVerdicts {
            accepted: self.accepted.len(),
            rejected: self
                .verdicts
                .iter()
                .filter_map(|(rule, verdict)| {
                    let why = verdict.as_ref().err()?;
                    Some(format!("{}: {why}", rule.name_any()))
                })
                .collect(),
        }
    }
}

/// The namespace's SequenceRules (from the watch store) that name `protection`, each rendered.
pub fn load_rules(
    rules: &Store<DeserializeGuard<SequenceRule>>,
    namespace: &str,
    protection: &str,
    session: &SessionSpec,
) -> RuleSet {
    let mut set = RuleSet {
        accepted: Vec::new(),
        verdicts: Vec::new(),
        unreadable: Vec::new(),
    };
    for guard in rules.state() {
        if guard.namespace().as_deref() != Some(namespace) {
            continue;
        }
        match &guard.0 {
            Ok(rule) if rule.spec.protection_ref.name == protection => {
                let name = rule.name_any();
                match render::rule_config(&name, &rule.spec)
                    .and_then(|config| render::rule_fits_history(&config, session).map(|()| config))
                {
                    Ok(config) => {
                        set.accepted.push(config);
                        set.verdicts.push((rule.clone(), Ok(())));
                    }
                    Err(errors) => set
                        .verdicts
                        .push((rule.clone(), Err(render::join_errors(&errors)))),
                }
            }
            Ok(_) => {}
            Err(invalid) => set.unreadable.push(format!(
                "{}: {}",
                invalid.metadata.name.clone().unwrap_or_default(),
                invalid.error
            )),
        }
    }
    set.verdicts.sort_by_key(|a| a.0.name_any());
    set
}

/// Writes each rule's status: Accepted (or why not), the rule kind and the counters reported
/// by the enforcers.
pub async fn write_rule_statuses(
    ctx: &Context,
    key: &ProtectionKey,
    rules: &RuleSet,
) -> Result<()> {
    let counters = ctx
        .hub
        .with_state(key, |r| r.state.rule_totals())
        .await
        .unwrap_or_default();
    let api: Api<SequenceRule> = Api::namespaced(ctx.client.clone(), &key.namespace);
    for (rule, verdict) in &rules.verdicts {
        let desired = match verdict {
            Ok(()) => Desired::new(
                conditions::ACCEPTED,
                true,
                "Accepted",
                format!("rendered into the config of ApiProtection {}", key.name),
            ),
            Err(message) => Desired::new(conditions::ACCEPTED, false, "Invalid", message.clone()),
        };
        let status = build(
            rule,
            desired,
            counters.get(&rule.name_any()),
            Timestamp::now(),
        );
        write(&api, rule, status).await?;
    }
    Ok(())
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
    // The store sees every event; only creations and spec changes trigger a check, not the
    // status writes of the ApiProtection controller (see triggers.rs).
    let (store, writer) = reflector::store();
    let triggers = spec_changes(
        watcher::watcher(rules, wc.clone())
            .default_backoff()
            .reflect(writer),
    );
    let controller = Controller::for_stream(triggers, store.clone());
    controller
        .watches_stream(
            // Creations and deletions only, not the ApiProtection controller's status writes.
            spec_changes(watcher::watcher(protections, wc).default_backoff()),
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
