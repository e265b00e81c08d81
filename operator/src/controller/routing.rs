//! Routing of client traffic through the enforcers.
//!
//! `Takeover` keeps the Service's name and points it at the enforcers. The steps, in order,
//! each idempotent, so the operator may die between any two and converge on restart:
//!
//! 1. Find the original selector: the `ordo.dev/original-selector` annotation if this
//!    protection already took the Service over, else the Service's current selector.
//! 2. Server-side apply `<service>-origin` with that selector and the Service's ports (the
//!    enforcers' upstream). Re-applying it is harmless.
//! 3. Wait until the enforcer Deployment has an available replica: re-pointing before that
//!    would leave the Service selecting nothing ready.
//! 4. One merge patch, guarded by the Service's `resourceVersion`, that records the
//!    original selector and session affinity in annotations *and* replaces the selector
//!    with the enforcers' (removing the original keys) and sets `sessionAffinity: ClientIP`.
//!    The record and the change land together or not at all.
//!
//! A crash after step 2 leaves an unused origin Service and the original selector in place
//! (traffic flows as before); the next reconcile redoes 1-4. A crash after step 4 leaves
//! the annotation, from which step 1 reads the original selector.
//!
//! Restoring (the finalizer, on deletion or when switching to `Alongside`) is one merge patch
//! guarded by `resourceVersion` that puts the recorded selector and affinity back and removes
//! the annotations; then the origin Service is deleted. Traffic goes straight to the app pods
//! again before anything of the enforcers is removed.
//!
//! `Alongside` applies `<service>-protected` in front of the enforcers and never touches the
//! original Service; the upstream is the original Service itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::cache::{AppliedVersion as _, Caches};
use crate::desired::names::{
    Names, ORIGINAL_AFFINITY_ANNOTATION, ORIGINAL_SELECTOR_ANNOTATION, TAKEN_OVER_BY_ANNOTATION,
};
use crate::desired::resources;
use crate::error::{Error, Result};

/// A step after which a test may ask the operator to die (fault injection, see
/// `--exit-after-routing-step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingStep {
    /// `<service>-origin` was applied, the Service's selector not changed yet.
    OriginApplied,
}

/// Where a takeover stands after one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverState {
    /// The Service selects the enforcers.
    Active,
    /// The origin Service exists; the Service waits for an available enforcer.
    WaitingForEnforcers,
    /// Another ApiProtection has taken the Service over; nothing was changed.
    HeldByAnother(String),
}

/// The original session affinity of a Service, recorded before a takeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<serde_json::Value>,
}

/// Which protection, if any, has taken the Service over.
pub fn taken_over_by(service: &Service) -> Option<&str> {
    service
        .metadata
        .annotations
        .as_ref()?
        .get(TAKEN_OVER_BY_ANNOTATION)
        .map(String::as_str)
}

/// The selector recorded in the annotation, if any.
pub fn recorded_selector(service: &Service) -> Result<Option<BTreeMap<String, String>>> {
    let Some(text) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ORIGINAL_SELECTOR_ANNOTATION))
    else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|source| Error::RoutingAnnotation {
            annotation: ORIGINAL_SELECTOR_ANNOTATION,
            source,
        })
}

fn current_selector(service: &Service) -> BTreeMap<String, String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// Performs steps 1-4 of the takeover (see the module docs).
pub async fn takeover(
    client: &kube::Client,
    caches: &Caches,
    names: &Names,
    owner: &OwnerReference,
    service: &Service,
    enforcers_available: bool,
    exit_after: Option<RoutingStep>,
) -> Result<TakeoverState> {
    let services: Api<Service> = Api::namespaced(client.clone(), &names.namespace);
    if let Some(holder) = taken_over_by(service)
        && holder != names.protection
    {
        return Ok(TakeoverState::HeldByAnother(format!(
            "Service {} is already taken over by ApiProtection {holder}",
            names.service
        )));
    }
    // Step 1.
    let original = match recorded_selector(service)? {
        Some(selector) => selector,
        None => current_selector(service),
    };
    let enforcer_selector = names.selector();
    if original.is_empty() || original == enforcer_selector {
        return Err(Error::Target(format!(
            "Service {} has no selector of its own to take over (use routing: Alongside for Services without a selector)",
            names.service
        )));
    }
    // Step 2.
    let target_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let origin = resources::origin_service(names, owner, &original, &target_ports);
    let live = caches.service(&names.namespace, &names.origin_service());
    caches
        .apply(
            &services,
            &names.origin_service(),
            &origin,
            live.and_then(|s| s.applied_version()),
        )
        .await?;
    if exit_after == Some(RoutingStep::OriginApplied) {
        tracing::error!(step = ?RoutingStep::OriginApplied, "exiting on request (fault injection)");
        std::process::exit(75);
    }
    // Step 3.
    let already =
        recorded_selector(service)?.is_some() && current_selector(service) == enforcer_selector;
    if already {
        return Ok(TakeoverState::Active);
    }
    if !enforcers_available {
        return Ok(TakeoverState::WaitingForEnforcers);
    }
    // Step 4.
    let spec = service.spec.clone().unwrap_or_default();
    let affinity = OriginalAffinity {
        session_affinity: spec.session_affinity.clone(),
        session_affinity_config: spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| serde_json::to_value(c).ok()),
    };
    let mut selector_patch = serde_json::Map::new();
    for key in current_selector(service).keys() {
        selector_patch.insert(key.clone(), serde_json::Value::Null);
    }
    for (key, value) in &enforcer_selector {
        selector_patch.insert(key.clone(), json!(value));
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": service.metadata.resource_version,
            "annotations": {
                ORIGINAL_SELECTOR_ANNOTATION: serde_json::to_string(&original)?,
                ORIGINAL_AFFINITY_ANNOTATION: serde_json::to_string(&affinity)?,
                TAKEN_OVER_BY_ANNOTATION: names.protection,
            }
        },
        "spec": {
            "selector": selector_patch,
            "sessionAffinity": "ClientIP",
        }
    });
    services
        .patch(
            &names.service,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    tracing::info!(service = %names.service, "Service now selects the enforcers");
    Ok(TakeoverState::Active)
}

/// Restores a Service this protection took over and deletes `<service>-origin`. Does
/// nothing to a Service taken over by another protection or not at all.
pub async fn restore(client: &kube::Client, names: &Names) -> Result<bool> {
    let services: Api<Service> = Api::namespaced(client.clone(), &names.namespace);
    let mut restored = false;
    if let Some(service) = services.get_opt(&names.service).await?
        && taken_over_by(&service) == Some(names.protection.as_str())
    {
        let original = recorded_selector(&service)?.unwrap_or_default();
        if original.is_empty() {
            return Err(Error::Routing(format!(
                "Service {} has no recorded original selector; refusing to leave it selecting nothing",
                names.service
            )));
        }
        let affinity: OriginalAffinity = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ORIGINAL_AFFINITY_ANNOTATION))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(OriginalAffinity {
                session_affinity: None,
                session_affinity_config: None,
            });
        let mut selector_patch = serde_json::Map::new();
        for key in current_selector(&service).keys() {
            selector_patch.insert(key.clone(), serde_json::Value::Null);
        }
        for (key, value) in &original {
            selector_patch.insert(key.clone(), json!(value));
        }
        let affinity_value = affinity
            .session_affinity
            .clone()
            .unwrap_or_else(|| "None".into());
        let affinity_config = if affinity_value == "None" {
            serde_json::Value::Null
        } else {
            affinity
                .session_affinity_config
                .clone()
                .unwrap_or(serde_json::Value::Null)
        };
        let patch = json!({
            "metadata": {
                "resourceVersion": service.metadata.resource_version,
                "annotations": {
                    ORIGINAL_SELECTOR_ANNOTATION: null,
                    ORIGINAL_AFFINITY_ANNOTATION: null,
                    TAKEN_OVER_BY_ANNOTATION: null,
                }
            },
            "spec": {
                "selector": selector_patch,
                "sessionAffinity": affinity_value,
                "sessionAffinityConfig": affinity_config,
            }
        });
        services
            .patch(
                &names.service,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        tracing::info!(service = %names.service, "original selector restored");
        restored = true;
    }
    delete_ignoring_missing(&services, &names.origin_service()).await?;
    Ok(restored)
}

/// Applies `<service>-protected` (Alongside).
pub async fn alongside(
    client: &kube::Client,
    caches: &Caches,
    names: &Names,
    owner: &OwnerReference,
    target_port: &ServicePort,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), &names.namespace);
    let protected = resources::protected_service(names, owner, std::slice::from_ref(target_port));
    let live = caches.service(&names.namespace, &names.protected_service());
    caches
        .apply(
            &services,
            &names.protected_service(),
            &protected,
            live.and_then(|s| s.applied_version()),
        )
        .await?;
    Ok(())
}

/// Whether [`restore`] has anything to do, as far as the watch store shows: the Service is
/// taken over by this protection or its origin Service exists. A store that lags behind a
/// takeover is corrected by the Service's own watch event, which triggers another reconcile.
pub fn restore_needed(caches: &Caches, names: &Names) -> bool {
    let taken_over = caches
        .service(&names.namespace, &names.service)
        .is_some_and(|s| taken_over_by(&s) == Some(names.protection.as_str()));
    taken_over
        || caches
            .service(&names.namespace, &names.origin_service())
            .is_some()
}

/// Deletes an object, treating "not found" as done.
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}
