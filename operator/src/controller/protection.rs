//! The reconcile of one ApiProtection: `apply` while it lives, `cleanup` when it is deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{Instrument as _, field};

use super::Context;
use super::routing::{self, TakeoverState};
use super::rules::{RuleSet, load_rules, write_rule_statuses};
use super::target::resolve_target;
use crate::crd::{ApiProtection, ApiProtectionStatus, EnforcerCounts, ProtectionPhase, Routing};
use crate::desired::conditions::{self, Desired};
use crate::desired::names::{FIELD_MANAGER, FINALIZER, Names};
use crate::desired::render::{self, RenderInput};
use crate::desired::resources::{self, DeploymentInput, EnforcerPorts};
use crate::desired::summary::{self, Maturity, ReportPart};
use crate::error::{Error, Result};
use crate::reports::state::{ProtectionKey, now_ms, truncate};

/// Requeues a failed object with a delay that grows with how often it failed lately.
pub fn error_policy(
    guard: Arc<DeserializeGuard<ApiProtection>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_kind()])
        .inc();
    let name = guard.name_any();
    tracing::warn!(apiprotection = %name, error = %error, "reconcile failed");
    match error {
        Error::Kube(kube::Error::Api(status)) if status.code == 409 => {
            Action::requeue(Duration::from_secs(1))
        }
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

/// Reconciles one ApiProtection.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<ApiProtection>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let started = Instant::now();
    let namespace = guard.namespace().unwrap_or_default();
    let name = guard.name_any();
    let span = tracing::info_span!("reconcile", apiprotection = %format!("{namespace}/{name}"), generation = field::Empty);
    let result = async {
        let protection = match &guard.0 {
            Ok(protection) => protection.clone(),
            Err(invalid) => {
                tracing::error!(error = %invalid.error, "ApiProtection cannot be read; fix the object");
                return Err(Error::InvalidObject(invalid.error.clone()));
            }
        };
        tracing::Span::current().record("generation", protection.metadata.generation.unwrap_or_default());
        let api: Api<ApiProtection> = Api::namespaced(ctx.client.clone(), &namespace);
        let ctx2 = Arc::clone(&ctx);
        finalizer(&api, FINALIZER, Arc::new(protection), |event| async move {
            match event {
                FinalizerEvent::Apply(p) => apply(&p, &ctx2).await,
                FinalizerEvent::Cleanup(p) => cleanup(&p, &ctx2).await,
            }
        })
        .await
        .map_err(|err| match err {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&["ApiProtection", outcome])
        .inc();
    result
}

async fn load_openapi(
    client: &kube::Client,
    namespace: &str,
    protection: &ApiProtection,
) -> Result<std::result::Result<Option<String>, String>> {
    let Some(open_api) = &protection.spec.open_api else {
        return Ok(Ok(None));
    };
    let reference = &open_api.config_map_ref;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(&reference.name).await? else {
        return Ok(Err(format!(
            "spec.openAPI.configMapRef: ConfigMap {} does not exist",
            reference.name
        )));
    };
    match cm.data.as_ref().and_then(|d| d.get(&reference.key)) {
        Some(doc) => Ok(Ok(Some(doc.clone()))),
        None => Ok(Err(format!(
            "spec.openAPI.configMapRef: ConfigMap {} has no key {}",
            reference.name, reference.key
        ))),
    }
}

fn owner_of(protection: &ApiProtection) -> Result<OwnerReference> {
    let uid = protection
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingField("metadata.uid"))?;
    Ok(resources::owner_reference(&protection.name_any(), &uid))
}

/// The reconcile of a live ApiProtection.
async fn apply(protection: &ApiProtection, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let namespace = protection
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = protection.name_any();
    let names = Names::new(&namespace, &name, &protection.spec.target.service);
    let owner = owner_of(protection)?;
    let key = ProtectionKey {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let report_part = match ctx
        .hub
        .with_state(&key, |r| {
            summary::report_part(
                &summary::ProtectionRef {
                    namespace: &namespace,
                    name: &name,
                },
                &r.model,
                &r.state,
                maturity(protection),
                now_ms(),
                reporting_window(ctx),
            )
        })
        .await
    {
        Ok(part) => Some(part),
        Err(err) => {
            tracing::warn!(error = %err, "report state unavailable; keeping the reported status as it is");
            None
        }
    };
    let mut desired = Vec::new();
    let mut status = StatusInput {
        phase: ProtectionPhase::Pending,
        counts: EnforcerCounts::default(),
        report: report_part,
    };
    status.counts.desired = protection.spec.enforcer.replicas;

    let rules = load_rules(client, &namespace, &name, &protection.spec.session).await?;
    let rules_ok = rules.verdicts.iter().all(|(_, v)| v.is_ok());
    let rejected: Vec<String> = rules
        .verdicts
        .iter()
        .filter_map(|(rule, v)| {
            v.as_ref()
                .err()
                .map(|e| format!("{}: {e}", rule.name_any()))
        })
        .collect();
    let rules_condition = if rules_ok {
        Desired::new(
            conditions::RULES_ACCEPTED,
            true,
            "AllAccepted",
            format!("{} rule(s) accepted", rules.accepted.len()),
        )
    } else {
        Desired::new(
            conditions::RULES_ACCEPTED,
            false,
            "RulesRejected",
            format!("rejected: {}", rejected.join("; ")),
        )
    };
    if !rules.unreadable.is_empty() {
        tracing::warn!(objects = ?rules.unreadable, "SequenceRules in the namespace could not be read");
    }

    let target = match resolve_target(client, &namespace, protection).await? {
        Ok(target) => target,
        Err((reason, message)) => {
            desired.push(Desired::new(
                conditions::TARGET_RESOLVED,
                false,
                reason.clone(),
                message.clone(),
            ));
            desired.push(Desired::new(
                conditions::ENFORCER_AVAILABLE,
                false,
                "TargetNotResolved",
                "no enforcers without a target",
            ));
            desired.push(rules_condition);
            desired.push(model_condition(&status.report));
            desired.push(Desired::new(conditions::READY, false, reason, message));
            write_status(ctx, protection, &desired, status).await?;
            write_rule_statuses(ctx, &key, &rules).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };
    desired.push(Desired::new(
        conditions::TARGET_RESOLVED,
        true,
        "Resolved",
        format!("Service {} port {}", names.service, target.port.port),
    ));

    let ports = EnforcerPorts::for_target_port(
        target
            .port
            .target_port
            .as_ref()
            .unwrap_or(&IntOrString::Int(target.port.port)),
    );
    let upstream_host = match protection.spec.routing {
        Routing::Takeover => names.origin_service(),
        Routing::Alongside => names.service.clone(),
    };
    let openapi = match load_openapi(client, &namespace, protection).await? {
        Ok(doc) => doc,
        Err(message) => {
            return config_failed(
                ctx,
                protection,
                desired,
                rules_condition,
                status,
                &rules,
                &key,
                "OpenAPIDocumentMissing",
                message,
            )
            .await;
        }
    };
    let rendered = render::render(RenderInput {
        namespace: &namespace,
        name: &name,
        spec: &protection.spec,
        upstream_url: format!(
            "http://{upstream_host}.{namespace}.svc:{}",
            target.port.port
        ),
        listen_port: ports.proxy,
        admin_port: ports.admin,
        rules: rules.accepted.clone(),
        openapi,
        report: ctx.settings.report.clone(),
    });
    let rendered = match rendered {
        Ok(rendered) => rendered,
        Err(errors) => {
            let message = render::join_errors(&errors);
            return config_failed(
                ctx,
                protection,
                desired,
                rules_condition,
                status,
                &rules,
                &key,
                "InvalidConfig",
                message,
            )
            .await;
        }
    };

    let apply_params = PatchParams::apply(FIELD_MANAGER).force();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    config_maps
        .patch(
            &names.enforcer(),
            &apply_params,
            &Patch::Apply(&resources::config_map(
                &names,
                &owner,
                rendered.data.clone(),
            )),
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    accounts
        .patch(
            &names.enforcer(),
            &apply_params,
            &Patch::Apply(&resources::service_account(&names, &owner)),
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = resources::deployment(
        &names,
        &owner,
        &DeploymentInput {
            spec: &protection.spec,
            ports: &ports,
            config_hash: &rendered.hash,
            default_image: &ctx.settings.enforcer_image,
        },
    );
    let deployment = deployments
        .patch(&names.enforcer(), &apply_params, &Patch::Apply(&deployment))
        .await?;
    let dstatus = deployment.status.clone().unwrap_or_default();
    let available = dstatus.available_replicas.unwrap_or(0);
    status.counts.ready = dstatus.ready_replicas.unwrap_or(0);
    let enforcer_ok = available > 0;
    desired.push(if enforcer_ok {
        Desired::new(
            conditions::ENFORCER_AVAILABLE,
            true,
            "Available",
            format!(
                "{available} of {} enforcer(s) available",
                protection.spec.enforcer.replicas
            ),
        )
    } else {
        Desired::new(
            conditions::ENFORCER_AVAILABLE,
            false,
            "NoneAvailable",
            "waiting for an enforcer pod to become available",
        )
    });

    let routed = match protection.spec.routing {
        Routing::Takeover => {
            let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
            routing::delete_ignoring_missing(&services, &names.protected_service()).await?;
            let ports_of_service = target
                .service
                .spec
                .as_ref()
                .and_then(|s| s.ports.clone())
                .unwrap_or_default();
            match routing::takeover(
                client,
                &names,
                &owner,
                &target.service,
                &ports_of_service,
                enforcer_ok,
                ctx.settings.exit_after,
            )
            .await
            {
                Ok(TakeoverState::Active) => Ok(format!(
                    "Service {} selects the enforcers; {} selects the app",
                    names.service,
                    names.origin_service()
                )),
                Ok(TakeoverState::WaitingForEnforcers) => Err((
                    "WaitingForEnforcers".to_owned(),
                    format!(
                        "Service {} keeps its selector until an enforcer is available",
                        names.service
                    ),
                )),
                Err(Error::Conflict(message)) => Err(("Conflict".to_owned(), message)),
                Err(err) => return Err(err),
            }
        }
        Routing::Alongside => {
            // Switching from Takeover: give the Service back first.
            routing::restore(client, &names).await?;
            routing::alongside(client, &names, &owner, &target.port).await?;
            Ok(format!(
                "Service {} selects the enforcers; {} is untouched",
                names.protected_service(),
                names.service
            ))
        }
    };
    desired.push(rules_condition);
    desired.push(model_condition(&status.report));
    let mature = status.report.as_ref().is_some_and(|r| r.mature);
    match &routed {
        Ok(message) if enforcer_ok => {
            desired.push(Desired::new(
                conditions::READY,
                true,
                "Protecting",
                message.clone(),
            ));
            status.phase = if protection.spec.mode == crate::crd::ProtectionMode::Learn || !mature {
                ProtectionPhase::Learning
            } else if status.counts.ready < status.counts.desired {
                ProtectionPhase::Degraded
            } else {
                ProtectionPhase::Protecting
            };
        }
        Ok(_) => desired.push(Desired::new(
            conditions::READY,
            false,
            "WaitingForEnforcers",
            "no enforcer is available yet",
        )),
        Err((reason, message)) => {
            desired.push(Desired::new(
                conditions::READY,
                false,
                reason.clone(),
                message.clone(),
            ));
            if reason == "Conflict" {
                status.phase = ProtectionPhase::Failed;
            }
        }
    }
    write_status(ctx, protection, &desired, status).await?;
    write_rule_statuses(ctx, &key, &rules).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

#[allow(clippy::too_many_arguments)]
async fn config_failed(
    ctx: &Context,
    protection: &ApiProtection,
    mut desired: Vec<Desired>,
    rules_condition: Desired,
    mut status: StatusInput,
    rules: &RuleSet,
    key: &ProtectionKey,
    reason: &str,
    message: String,
) -> Result<Action> {
    // The previous config (if any) keeps running: nothing is applied.
    desired.push(Desired::new(
        conditions::ENFORCER_AVAILABLE,
        false,
        reason,
        "the enforcer config could not be rendered; the previous one stays",
    ));
    desired.push(rules_condition);
    desired.push(model_condition(&status.report));
    desired.push(Desired::new(conditions::READY, false, reason, message));
    status.phase = ProtectionPhase::Failed;
    write_status(ctx, protection, &desired, status).await?;
    write_rule_statuses(ctx, key, rules).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn maturity(protection: &ApiProtection) -> Maturity {
    Maturity {
        min_requests: u64::try_from(protection.spec.learning.min_requests).unwrap_or(0),
        min_sessions: u64::try_from(protection.spec.learning.min_sessions).unwrap_or(0),
    }
}

fn reporting_window(ctx: &Context) -> Duration {
    let interval = ctx
        .settings
        .report
        .as_ref()
        .map_or(30, |r| r.interval_seconds);
    Duration::from_secs(interval.saturating_mul(3).max(30))
}

fn model_condition(report: &Option<ReportPart>) -> Desired {
    match report.as_ref().and_then(|r| r.model.as_ref()) {
        Some(model) if model.mature => Desired::new(
            conditions::MODEL_MATURE,
            true,
            "Mature",
            format!(
                "learned from {} requests in {} sessions",
                model.requests, model.sessions
            ),
        ),
        Some(model) => Desired::new(
            conditions::MODEL_MATURE,
            false,
            "Learning",
            format!(
                "learned from {} requests in {} sessions so far",
                model.requests, model.sessions
            ),
        ),
        None => Desired::new(
            conditions::MODEL_MATURE,
            false,
            "NoReports",
            "no enforcer has reported yet",
        ),
    }
}

struct StatusInput {
    phase: ProtectionPhase,
    counts: EnforcerCounts,
    report: Option<ReportPart>,
}

/// Writes the whole status with server-side apply (one field manager), and Events for
/// conditions that changed.
async fn write_status(
    ctx: &Context,
    protection: &ApiProtection,
    desired: &[Desired],
    input: StatusInput,
) -> Result<()> {
    let previous = protection.status.clone().unwrap_or_default();
    let generation = protection.metadata.generation;
    let conditions = conditions::merge(&previous.conditions, desired, generation, Timestamp::now());
    let mut counts = input.counts;
    let mut status = ApiProtectionStatus {
        observed_generation: generation,
        conditions,
        phase: Some(input.phase),
        enforcers: None,
        ..previous.clone()
    };
    match input.report {
        Some(report) => {
            counts.reporting = report.reporting;
            status.model = report.model;
            status.endpoints = report.endpoints;
            status.top_sequences = report.top_sequences;
            status.suggested_rules = report.suggested_rules;
            status.incidents = report.incidents;
            status.totals = report.totals;
        }
        None => counts.reporting = previous.enforcers.map_or(0, |e| e.reporting),
    }
    status.enforcers = Some(counts);
    if protection.status.as_ref() != Some(&status) {
        let api: Api<ApiProtection> = Api::namespaced(
            ctx.client.clone(),
            &protection.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "apiVersion": ApiProtection::api_version(&()),
            "kind": ApiProtection::kind(&()),
            "status": status,
        });
        api.patch_status(
            &protection.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    let reference = protection.object_ref(&());
    for changed in conditions::transitions(&previous.conditions, &status.conditions) {
        let event = Event {
            type_: if changed.status == "True" || changed.type_ == conditions::MODEL_MATURE {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: format!(
                "{}{}",
                changed.type_,
                if changed.status == "True" {
                    ""
                } else {
                    "False"
                }
            ),
            note: Some(truncate(
                &format!("{}: {}", changed.reason, changed.message),
                1000,
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "publishing an Event failed");
        }
    }
    Ok(())
}

/// Deletion: give a taken-over Service back first, then remove what the protection owns.
async fn cleanup(protection: &ApiProtection, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let namespace = protection
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = protection.name_any();
    let names = Names::new(&namespace, &name, &protection.spec.target.service);
    let restored = routing::restore(client, &names).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    routing::delete_ignoring_missing(&services, &names.protected_service()).await?;
    routing::delete_ignoring_missing(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &names.enforcer(),
    )
    .await?;
    routing::delete_ignoring_missing(
        &Api::<ServiceAccount>::namespaced(client.clone(), &namespace),
        &names.enforcer(),
    )
    .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    routing::delete_ignoring_missing(&config_maps, &names.enforcer()).await?;
    routing::delete_ignoring_missing(&config_maps, &names.model()).await?;
    ctx.hub.forget(&ProtectionKey { namespace, name });
    if restored {
        let event = Event {
            type_: EventType::Normal,
            reason: "ServiceRestored".into(),
            note: Some(format!(
                "Service {} selects the app pods again",
                names.service
            )),
            action: "Cleanup".into(),
            secondary: None,
        };
        if let Err(err) = ctx
            .recorder
            .publish(&event, &protection.object_ref(&()))
            .await
        {
            tracing::debug!(error = %err, "publishing the cleanup Event failed");
        }
    }
    Ok(Action::await_change())
}
