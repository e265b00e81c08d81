//! The ApiProtection controller: watches ApiProtections (through `DeserializeGuard`, so one
//! malformed object cannot stop the watch), the objects they own, the SequenceRules that
//! point at them and their target Services, and reconciles each into running enforcers.
//!
//! This is the runtime half of the operator: it reads the cluster, asks the pure functions
//! of [`crate::desired`] what the objects and statuses should be, and writes them.
//!
//! - [`protection`]: the reconcile of one ApiProtection (`apply` / `cleanup`).
//! - [`target`]: resolution of `spec.target` to a Service port.
//! - [`rules`]: the SequenceRules of a protection, and the controller of rules without one.
//! - [`routing`]: how client traffic is pointed at the enforcers.
//! - [`backoff`]: how long a failing object waits before it is retried.
//! - [`triggers`]: which watch events wake the controllers (not their own status writes).
//! - [`cache`]: the watch stores a reconcile reads, and the writes it can skip.

pub mod backoff;
pub mod cache;
pub mod protection;
pub mod routing;
pub mod rules;
pub mod target;
pub mod triggers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::crd::{ApiProtection, SequenceRule};
use crate::desired::names::FIELD_MANAGER;
use crate::desired::render::ReportTarget;
use crate::metrics::Metrics;
use crate::reports::hub::ReportHub;
use crate::reports::state::ProtectionKey;
use backoff::Backoff;
use cache::{Caches, Writers};
use routing::RoutingStep;

/// Settings of the controller that come from the operator's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Enforcer image when a spec names none.
    pub enforcer_image: String,
    /// Where enforcers report to (none: reports disabled).
    pub report: Option<ReportTarget>,
    /// Fault injection for tests: exit the process after this routing step.
    pub exit_after: Option<RoutingStep>,
    /// Requeue period of a healthy object.
    pub resync: Duration,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Watch only this namespace (none: every namespace).
    pub namespace: Option<String>,
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<ReportHub>,
    /// Requeue delays of ApiProtections that keep failing.
    pub backoff: Backoff<ObjectRef<DeserializeGuard<ApiProtection>>>,
    /// The watch stores reconciles read, filled by the watches of [`run`].
    pub caches: Caches,
}

/// Runs the controller until `shutdown` is cancelled. `writers` fill `ctx.caches`.
pub async fn run(
    ctx: Arc<Context>,
    writers: Writers,
    reconcile_requests: tokio::sync::mpsc::Receiver<ProtectionKey>,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let scope = ctx.settings.namespace.as_deref();
    let wc = watcher::Config::default().any_semantic();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ordo-operator");
    // Each watch fills its store first, then passes on only the events that can change what
    // a reconcile does (triggers.rs).
    let (store, protection_writer) = reflector::store();
    let protections = triggers::protection_changes(
        watcher::watcher(
            scoped::<DeserializeGuard<ApiProtection>>(&client, scope),
            wc.clone(),
        )
        .default_backoff()
        .reflect(protection_writer),
    );
    let config_maps = triggers::without_model_config_maps(
        watcher::watcher(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, scope),
            owned.clone(),
        )
        .default_backoff()
        .map_ok(without_managed_fields)
        .reflect(writers.config_maps),
    );
    let accounts = watcher::watcher(
        scoped::<PartialObjectMeta<ServiceAccount>>(&client, scope),
        owned.clone(),
    )
    .default_backoff()
    .map_ok(without_managed_fields)
    .reflect(writers.accounts)
    .touched_objects();
    let deployments = triggers::deployment_changes(
        watcher::watcher(scoped::<Deployment>(&client, scope), owned)
            .default_backoff()
            .map_ok(without_managed_fields)
            .reflect(writers.deployments),
    );
    let rules = triggers::spec_changes(
        watcher::watcher(scoped::<DeserializeGuard<SequenceRule>>(&client, scope), wc)
            .default_backoff()
            .reflect(writers.rules),
    );
    let services = watcher::watcher(
        scoped::<Service>(&client, scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .map_ok(without_managed_fields)
    .reflect(writers.services)
    .touched_objects();
    // The echo of the controller's own apply is no news (cache.rs `is_own_write`).
    let config_maps = config_maps.try_filter(not_own_write::<ConfigMap, _>(&ctx));
    let accounts = accounts.try_filter(not_own_write::<ServiceAccount, _>(&ctx));
    let deployments = deployments.try_filter(not_own_write::<Deployment, _>(&ctx));
    let services = services.try_filter(not_own_write::<Service, _>(&ctx));
    let requests = tokio_stream_from(reconcile_requests).map(|key: ProtectionKey| {
        ObjectRef::<DeserializeGuard<ApiProtection>>::new(&key.name).within(&key.namespace)
    });
    let concurrency = ctx.settings.concurrency;
    let protections_stop = shutdown.clone();
    let service_store = store.clone();
    let protections = Controller::for_stream(protections, store)
        .owns_stream(config_maps)
        .owns_stream(accounts)
        .owns_stream(deployments)
        .watches_stream(rules, |rule: DeserializeGuard<SequenceRule>| {
            // A rule (valid or not) maps to the protection it names.
            let namespace = rule.namespace()?;
            let target = match &rule.0 {
                Ok(rule) => rule.spec.protection_ref.name.clone(),
                Err(_) => return None,
            };
            Some(ObjectRef::new(&target).within(&namespace))
        })
        .watches_stream(services, move |service: Service| {
            // The protection that owns it, and those whose target it is.
            let namespace = service.namespace().unwrap_or_default();
            let name = service.name_any();
            let owners = service
                .owner_references()
                .iter()
                .filter(|owner| owner.kind == "ApiProtection")
                .map(|owner| ObjectRef::new(&owner.name).within(&namespace))
                .collect::<Vec<_>>();
            let targeting = service_store
                .state()
                .into_iter()
                .filter_map(|p| match &p.0 {
                    Ok(p)
                        if p.namespace().as_deref() == Some(namespace.as_str())
                            && p.spec.target.service == name =>
                    {
                        Some(ObjectRef::new(&p.name_any()).within(&namespace))
                    }
                    _ => None,
                });
            owners.into_iter().chain(targeting).collect::<Vec<_>>()
        })
        .reconcile_on(requests)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { protections_stop.cancelled().await })
        .run(
            protection::reconcile,
            protection::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile loop reported an error");
            }
        });
    // Rules whose ApiProtection does not exist are never reconciled above.
    futures::join!(protections, rules::run(ctx, shutdown));
}

/// The event without the objects' `managedFields`, which no reconcile reads and which make up
/// most of a stored Deployment or Service.
fn without_managed_fields<K: kube::Resource>(event: watcher::Event<K>) -> watcher::Event<K> {
    event.modify(|object| object.meta_mut().managed_fields = None)
}

/// A `try_filter` predicate that drops the echoes of the controller's own applies of `K`.
fn not_own_write<K, O>(
    ctx: &Arc<Context>,
) -> impl FnMut(&O) -> futures::future::Ready<bool> + Send + 'static
where
    O: kube::Resource,
{
    let ctx = Arc::clone(ctx);
    move |object: &O| futures::future::ready(!ctx.caches.is_own_write::<K>(object))
}

/// An Api over one namespace, or over all of them.
pub(crate) fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The Event reporter of this operator instance.
pub fn reporter(instance: &str) -> Reporter {
    Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(instance.to_owned()),
    }
}

/// Conditions of an object as a map, for tests and logs.
pub fn condition_map(conditions: &[Condition]) -> BTreeMap<String, (String, String)> {
    conditions
        .iter()
        .map(|c| (c.type_.clone(), (c.status.clone(), c.reason.clone())))
        .collect()
}
