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
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{Instrument as _, field};

use super::cache::{AppliedVersion as _, Outcome};
use super::routing::{self, TakeoverState};
use super::rules::{RuleSet, load_rules, write_rule_statuses};
use super::target::{Target, resolve_target};
use super::{Context, backoff};
use crate::crd::{ApiProtection, ApiProtectionStatus, EnforcerCounts, ProtectionPhase, Routing};
use crate::desired::conditions::{self, Desired};
use crate::desired::names::{FIELD_MANAGER, FINALIZER, Names};
use crate::desired::render::{self, RenderInput, Rendered};
use crate::desired::resources::{self, DeploymentInput, EnforcerPorts};
use crate::desired::status::{
    Availability, ConfigProblem, DesiredStatus, Observed, Rollout, RoutingOutcome, desired_status,
};
use crate::desired::summary::{self, Maturity, ReportPart};
use crate::error::{Error, Result};
use crate::reports::propagation;
use crate::reports::state::{ProtectionKey, now_ms, truncate};

/// Requeues a failed object with a delay that grows with how often it failed in a row (see
/// [`super::backoff`]); a write conflict is retried soon without counting as a failure.
pub fn error_policy(
    guard: Arc<DeserializeGuard<ApiProtection>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_kind()])
        .inc();
    let delay = if error.is_conflict() {
        backoff::CONFLICT
    } else {
        ctx.backoff.failed(ObjectRef::from_obj(&*guard))
    };
    let name = guard.name_any();
    tracing::warn!(apiprotection = %name, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Longest one reconcile may take; its steps are idempotent, so the next one starts over.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let steps = finalizer(&api, FINALIZER, Arc::new(protection), |event| async move {
            match event {
                FinalizerEvent::Apply(p) => apply(&p, &ctx2).await,
                FinalizerEvent::Cleanup(p) => cleanup(&p, &ctx2).await,
            }
        });
        // One reconcile of an object runs at a time: a request the API server never answers
        // (the client waits minutes) would hold every later change of it back meanwhile.
        tokio::time::timeout(RECONCILE_TIMEOUT, steps)
        .await
        .map_err(|_| Error::Timeout(RECONCILE_TIMEOUT))?
        .map_err(|err| match err {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        })
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.succeeded(&ObjectRef::from_obj(&*guard));
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&["ApiProtection", outcome])
        .inc();
    result
}

/// The OpenAPI document `spec.openAPI` references, if any; the inner `Err` when it is missing.
async fn load_openapi(
    client: &kube::Client,
    namespace: &str,
    protection: &ApiProtection,
) -> Result<std::result::Result<Option<String>, ConfigProblem>> {
    let Some(open_api) = &protection.spec.open_api else {
        return Ok(Ok(None));
    };
    let reference = &open_api.config_map_ref;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(&reference.name).await? else {
        return Ok(Err(ConfigProblem::OpenApiDocumentMissing(format!(
            "spec.openAPI.configMapRef: ConfigMap {} does not exist",
            reference.name
        ))));
    };
    match cm.data.as_ref().and_then(|d| d.get(&reference.key)) {
        Some(doc) => Ok(Ok(Some(doc.clone()))),
        None => Ok(Err(ConfigProblem::OpenApiDocumentMissing(format!(
            "spec.openAPI.configMapRef: ConfigMap {} has no key {}",
            reference.name, reference.key
        )))),
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

/// Requeue of a protection whose target cannot be used (the watch on Services usually
/// triggers the next reconcile sooner).
const TARGET_RETRY: Duration = Duration::from_secs(30);
/// Requeue of a protection whose enforcer config cannot be rendered.
const CONFIG_RETRY: Duration = Duration::from_secs(60);

/// The reconcile of a live ApiProtection: reads what it depends on, rolls the enforcers out as
/// far as that allows, and writes the status [`desired_status`] decides.
async fn apply(protection: &ApiProtection, ctx: &Context) -> Result<Action> {
    let namespace = protection
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = protection.name_any();
    let names = Names::new(&namespace, &name, &protection.spec.target.service);
    let owner = owner_of(protection)?;
    let key = ProtectionKey { namespace, name };
    // Rules, Services and the owned objects are read from the watch stores (cache.rs).
    ctx.caches.ready().await?;
    let report = report_part(ctx, protection, &key).await;
    let rules = load_rules(
        &ctx.caches.rules,
        &key.namespace,
        &key.name,
        &protection.spec.session,
    );
    if !rules.unreadable.is_empty() {
        tracing::warn!(objects = ?rules.unreadable, "SequenceRules in the namespace could not be read");
    }
    let rollout = roll_out(ctx, protection, &names, &owner, &rules).await?;
    let observed = Observed {
        service: &names.service,
        mode: protection.spec.mode,
        replicas: protection.spec.enforcer.replicas,
        rules: rules.outcome(),
        report: report.as_ref(),
        rollout,
    };
    let DesiredStatus { conditions, phase } = desired_status(&observed);
    let (ready, requeue) = match &observed.rollout {
        Rollout::NoTarget(_) => (0, TARGET_RETRY),
        Rollout::ConfigFailed { .. } => (0, CONFIG_RETRY),
        Rollout::Applied { enforcers, .. } => (enforcers.ready, ctx.settings.resync),
    };
    ctx.metrics
        .note_ready_enforcers(&key.namespace, &key.name, ready);
    let status = StatusInput {
        phase,
        counts: EnforcerCounts {
            desired: protection.spec.enforcer.replicas,
            ready,
            reporting: 0,
        },
        report,
    };
    write_status(ctx, protection, &conditions, status).await?;
    write_rule_statuses(ctx, &key, &rules).await?;
    Ok(Action::requeue(requeue))
}

/// Longest a reconcile waits for the report state (a report being merged and persisted holds
/// it): the config and the routing must never wait behind report ingestion.
const REPORT_STATE_WAIT: Duration = Duration::from_secs(2);

/// The report-derived part of the status; none when the report state cannot be loaded or is
/// busy for longer than [`REPORT_STATE_WAIT`] (the status then keeps what was reported before).
async fn report_part(
    ctx: &Context,
    protection: &ApiProtection,
    key: &ProtectionKey,
) -> Option<ReportPart> {
    let protection_ref = summary::ProtectionRef {
        namespace: &key.namespace,
        name: &key.name,
    };
    let part = ctx.hub.with_state(key, |r| {
        summary::report_part(
            &protection_ref,
            &r.model,
            &r.state,
            maturity(protection),
            now_ms(),
            reporting_window(ctx),
        )
    });
    match tokio::time::timeout(REPORT_STATE_WAIT, part).await {
        Ok(Ok(part)) => Some(part),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "report state unavailable; keeping the reported status as it is");
            None
        }
        Err(_) => {
            tracing::info!("report state busy; keeping the reported status as it is");
            None
        }
    }
}

/// Resolves the target, renders the config, applies the enforcers and routes traffic to them,
/// each step only when the one before succeeded.
async fn roll_out(
    ctx: &Context,
    protection: &ApiProtection,
    names: &Names,
    owner: &OwnerReference,
    rules: &RuleSet,
) -> Result<Rollout> {
    let target = match resolve_target(&ctx.caches, &names.namespace, protection)? {
        Ok(target) => target,
        Err(problem) => return Ok(Rollout::NoTarget(problem)),
    };
    let port = target.port.port;
    let ports = EnforcerPorts::for_target_port(
        target
            .port
            .target_port
            .as_ref()
            .unwrap_or(&IntOrString::Int(port)),
    );
    let rendered = match render_config(ctx, protection, names, &target, &ports, rules).await? {
        Ok(rendered) => rendered,
        // The previous config (if any) keeps running: nothing is applied.
        Err(problem) => return Ok(Rollout::ConfigFailed { port, problem }),
    };
    let enforcers = apply_enforcers(ctx, protection, names, owner, &ports, &rendered).await?;
    if let Some(revision) = &rendered.config.revision {
        let objects = std::iter::once(&protection.metadata)
            .chain(rules.verdicts.iter().map(|(rule, _)| &rule.metadata));
        let key = ProtectionKey {
            namespace: names.namespace.clone(),
            name: protection.name_any(),
        };
        ctx.hub
            .rendered(&key, revision, propagation::last_spec_write_ms(objects));
    }
    let routing = route(
        ctx,
        protection,
        names,
        owner,
        &target,
        enforcers.available > 0,
    )
    .await?;
    Ok(Rollout::Applied {
        port,
        enforcers,
        routing,
    })
}

/// Renders the enforcer config; the inner `Err` says why it cannot be.
async fn render_config(
    ctx: &Context,
    protection: &ApiProtection,
    names: &Names,
    target: &Target,
    ports: &EnforcerPorts,
    rules: &RuleSet,
) -> Result<std::result::Result<Rendered, ConfigProblem>> {
    let openapi = match load_openapi(&ctx.client, &names.namespace, protection).await? {
        Ok(doc) => doc,
        Err(problem) => return Ok(Err(problem)),
    };
    let upstream_host = match protection.spec.routing {
        Routing::Takeover => names.origin_service(),
        Routing::Alongside => names.service.clone(),
    };
    let rendered = render::render(RenderInput {
        namespace: &names.namespace,
        name: &names.protection,
        spec: &protection.spec,
        upstream_url: format!(
            "http://{upstream_host}.{}.svc:{}",
            names.namespace, target.port.port
        ),
        listen_port: ports.proxy,
        admin_port: ports.admin,
        rules: rules.accepted.clone(),
        openapi,
        report: ctx.settings.report.clone(),
    });
    Ok(rendered.map_err(|errors| ConfigProblem::InvalidConfig(render::join_errors(&errors))))
}

/// Applies the enforcers' ConfigMap, ServiceAccount and Deployment; returns how many of them
/// are available and ready.
async fn apply_enforcers(
    ctx: &Context,
    protection: &ApiProtection,
    names: &Names,
    owner: &OwnerReference,
    ports: &EnforcerPorts,
    rendered: &Rendered,
) -> Result<Availability> {
    let client = &ctx.client;
    let caches = &ctx.caches;
    let namespace = &names.namespace;
    let config_map = resources::config_map(names, owner, rendered.data.clone());
    caches
        .apply(
            &Api::<ConfigMap>::namespaced(client.clone(), namespace),
            &names.enforcer(),
            &config_map,
            caches.config_map_version(namespace, &names.enforcer()),
        )
        .await?;
    let account = resources::service_account(names, owner);
    caches
        .apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), namespace),
            &names.enforcer(),
            &account,
            caches.account_version(namespace, &names.enforcer()),
        )
        .await?;
    // The replicas find each other through a headless Service when sessions are spread over
    // them (docs/scale-out.md); without `scaleOut` it has no use.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let live_peers = caches.service(namespace, &names.peers_service());
    if protection.spec.enforcer.scale_out.is_some() {
        let peers = resources::peers_service(names, owner, ports);
        let live_version = live_peers.and_then(|s| s.applied_version());
        caches
            .apply(&services, &names.peers_service(), &peers, live_version)
            .await?;
    } else if live_peers.is_some() {
        routing::delete_ignoring_missing(&services, &names.peers_service()).await?;
    }
    let deployment = resources::deployment(
        names,
        owner,
        &DeploymentInput {
            spec: &protection.spec,
            ports,
            config_hash: &rendered.hash,
            default_image: &ctx.settings.enforcer_image,
        },
    );
    let live = caches.deployment(namespace, &names.enforcer());
    let live_version = live.as_ref().and_then(|d| d.applied_version());
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let status = match caches
        .apply(&deployments, &names.enforcer(), &deployment, live_version)
        .await?
    {
        Outcome::Written(written) => written.status,
        Outcome::Unchanged => live.and_then(|d| d.status.clone()),
    }
    .unwrap_or_default();
    Ok(Availability {
        available: status.available_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
    })
}

/// Points client traffic at the enforcers the way `spec.routing` says.
async fn route(
    ctx: &Context,
    protection: &ApiProtection,
    names: &Names,
    owner: &OwnerReference,
    target: &Target,
    enforcers_available: bool,
) -> Result<RoutingOutcome> {
    let client = &ctx.client;
    match protection.spec.routing {
        Routing::Takeover => {
            let services: Api<Service> = Api::namespaced(client.clone(), &names.namespace);
            if ctx
                .caches
                .service(&names.namespace, &names.protected_service())
                .is_some()
            {
                routing::delete_ignoring_missing(&services, &names.protected_service()).await?;
            }
            let state = routing::takeover(
                client,
                &ctx.caches,
                names,
                owner,
                &target.service,
                enforcers_available,
                ctx.settings.exit_after,
            )
            .await?;
            Ok(match state {
                TakeoverState::Active => RoutingOutcome::TakenOver {
                    service: names.service.clone(),
                    origin: names.origin_service(),
                },
                TakeoverState::WaitingForEnforcers => RoutingOutcome::WaitingForEnforcers {
                    service: names.service.clone(),
                },
                TakeoverState::HeldByAnother(message) => RoutingOutcome::Conflict(message),
            })
        }
        Routing::Alongside => {
            // Switching from Takeover: give the Service back first.
            if routing::restore_needed(&ctx.caches, names) {
                routing::restore(client, names).await?;
            }
            routing::alongside(client, &ctx.caches, names, owner, &target.port).await?;
            Ok(RoutingOutcome::Alongside {
                protected: names.protected_service(),
                service: names.service.clone(),
            })
        }
    }
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
            status.posture = report.posture;
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
    ctx.metrics.forget_protection(&namespace, &name);
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
    ctx.caches.forget(
        &namespace,
        &[
            names.enforcer(),
            names.peers_service(),
            names.protected_service(),
            names.origin_service(),
        ],
    );
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
