//! Resolution of `spec.target`: the Service and the port the enforcers stand in front of.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;

use super::routing;
use crate::crd::{ApiProtection, Routing};
use crate::error::Result;

/// The target Service and the port that is protected.
pub struct Target {
    pub service: Service,
    pub port: ServicePort,
}

/// Resolves `spec.target`; `Err(reason, message)` when it cannot be used.
pub async fn resolve_target(
    client: &kube::Client,
    namespace: &str,
    protection: &ApiProtection,
) -> Result<std::result::Result<Target, (String, String)>> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let target = &protection.spec.target;
    let Some(service) = services.get_opt(&target.service).await? else {
        return Ok(Err((
            "ServiceNotFound".into(),
            format!(
                "Service {} does not exist in namespace {namespace}",
                target.service
            ),
        )));
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let port = ports.iter().find(|p| match &target.port {
        IntOrString::Int(n) => p.port == *n,
        IntOrString::String(port_name) => p.name.as_deref() == Some(port_name.as_str()),
    });
    let Some(port) = port.cloned() else {
        let known: Vec<String> = ports
            .iter()
            .map(|p| format!("{}({})", p.name.clone().unwrap_or_default(), p.port))
            .collect();
        return Ok(Err((
            "PortNotFound".into(),
            format!(
                "Service {} has no port {:?}; it has {}",
                target.service,
                target.port,
                known.join(", ")
            ),
        )));
    };
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Ok(Err((
            "UnsupportedPort".into(),
            format!("port {:?} is not TCP", target.port),
        )));
    }
    if protection.spec.routing == Routing::Takeover {
        if ports.len() != 1 {
            return Ok(Err((
                "MultiPortService".into(),
                format!(
                    "Takeover re-points the whole Service {} and it has {} ports; the enforcers serve one. Use routing: Alongside",
                    target.service,
                    ports.len()
                ),
            )));
        }
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return Ok(Err((
                "UnsupportedService".into(),
                "an ExternalName Service cannot be taken over".into(),
            )));
        }
        let recorded = routing::recorded_selector(&service)?.is_some();
        if !recorded && spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
            return Ok(Err((
                "NoSelector".into(),
                format!(
                    "Service {} has no selector to take over; use routing: Alongside",
                    target.service
                ),
            )));
        }
    }
    Ok(Ok(Target { service, port }))
}
