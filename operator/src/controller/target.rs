//! Resolution of `spec.target`: the Service and the port the enforcers stand in front of.

use std::collections::BTreeMap;

use super::cache::Caches;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::routing;
use crate::crd::{ApiProtection, Routing};
use crate::desired::status::TargetProblem;
use crate::error::Result;

/// The target Service and the port that is protected.
pub struct Target {
    pub service: Service,
    pub port: ServicePort,
}

/// Resolves `spec.target`; the inner `Err` says why it cannot be used.
pub fn resolve_target(
    caches: &Caches,
    namespace: &str,
    protection: &ApiProtection,
) -> Result<std::result::Result<Target, TargetProblem>> {
    let service_name = &protection.spec.target.service;
    let Some(service) = caches.service(namespace, service_name) else {
        return Ok(Err(TargetProblem::ServiceNotFound {
            service: service_name.clone(),
            namespace: namespace.to_owned(),
        }));
    };
    let service = Service::clone(&service);
    let recorded = routing::recorded_selector(&service)?.is_some();
    Ok(protected_port(protection, &service, recorded).map(|port| Target { service, port }))
}

/// The port of `service` that `protection` protects, or why there is none. `recorded`: the
/// Service carries a selector recorded by an earlier takeover.
fn protected_port(
    protection: &ApiProtection,
    service: &Service,
    recorded: bool,
) -> std::result::Result<ServicePort, TargetProblem> {
    let target = &protection.spec.target;
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port = ports.iter().find(|p| match &target.port {
        IntOrString::Int(n) => p.port == *n,
        IntOrString::String(port_name) => p.name.as_deref() == Some(port_name.as_str()),
    });
    let Some(port) = port.cloned() else {
        return Err(TargetProblem::PortNotFound {
            service: target.service.clone(),
            port: target.port.clone(),
            known: ports
                .iter()
                .map(|p| format!("{}({})", p.name.clone().unwrap_or_default(), p.port))
                .collect(),
        });
    };
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Err(TargetProblem::UnsupportedPort {
            port: target.port.clone(),
        });
    }
    if protection.spec.routing == Routing::Takeover {
        if ports.len() != 1 {
            return Err(TargetProblem::MultiPortService {
                service: target.service.clone(),
                ports: ports.len(),
            });
        }
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err(TargetProblem::UnsupportedService);
        }
        if !recorded && spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
            return Err(TargetProblem::NoSelector {
                service: target.service.clone(),
            });
        }
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApiProtectionSpec;

    fn protection(routing: &str, port: serde_json::Value) -> ApiProtection {
        let spec: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": {"service": "bank-api", "port": port},
            "routing": routing,
        }))
        .unwrap();
        ApiProtection::new("bank", spec)
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "bank-api"}, "spec": spec}))
            .unwrap()
    }

    fn two_ports() -> Service {
        service(serde_json::json!({
            "selector": {"app": "bank"},
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }))
    }

    #[test]
    fn the_port_is_found_by_number_or_name() {
        let by_name = protected_port(&protection("Alongside", "http".into()), &two_ports(), false);
        assert_eq!(by_name.unwrap().port, 80);
        let missing = protected_port(&protection("Alongside", 8080.into()), &two_ports(), false);
        assert_eq!(
            missing.unwrap_err(),
            TargetProblem::PortNotFound {
                service: "bank-api".into(),
                port: IntOrString::Int(8080),
                known: vec!["http(80)".into(), "dns(53)".into()],
            }
        );
        let udp = protected_port(&protection("Alongside", 53.into()), &two_ports(), false);
        assert_eq!(udp.unwrap_err().reason(), "UnsupportedPort");
    }

    #[test]
    fn takeover_needs_one_port_a_selector_and_no_external_name() {
        let takeover = protection("Takeover", 80.into());
        let multi = protected_port(&takeover, &two_ports(), false);
        assert_eq!(multi.unwrap_err().reason(), "MultiPortService");
        let bare = service(serde_json::json!({"ports": [{"port": 80}]}));
        let no_selector = protected_port(&takeover, &bare, false);
        assert_eq!(no_selector.unwrap_err().reason(), "NoSelector");
        // A Service this protection already took over has its selector in the annotation.
        assert!(protected_port(&takeover, &bare, true).is_ok());
        let external = service(serde_json::json!({
            "type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}],
        }));
        let external = protected_port(&takeover, &external, true);
        assert_eq!(external.unwrap_err(), TargetProblem::UnsupportedService);
    }
}
