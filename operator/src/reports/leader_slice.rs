//! Routes enforcer reports to the leader only.
//!
//! Only the leader merges reports (a standby answers 503). Instead of letting a Service
//! spread reports over every replica, the chart creates a Service *without a selector* for
//! the report endpoint and the leader writes that Service's only EndpointSlice itself: its
//! own pod address and HTTPS port. The design choices, and why:
//!
//! - One writer, fenced by the Lease: only the replica that holds the Lease writes the slice,
//!   and a new leader simply overwrites it (server-side apply, forced), so there is no
//!   per-pod state (a label) that a dead leader could leave behind on its pod.
//! - A graceful hand-over empties the slice *before* the Lease is released, so the next
//!   leader's address is the only one ever published after it.
//! - A crashed leader's address stays in the slice until the next leader takes the Lease
//!   (at most the lease duration plus one retry period, ~17 s with the defaults); reports
//!   sent meanwhile fail to connect and the enforcers retry them (nothing is lost: an
//!   enforcer keeps unacknowledged data and resends it).
//! - The leader re-applies the slice periodically, so a manual edit is repaired.
//! - Least privilege: `get` on the one report Service (for the owner reference that lets the
//!   garbage collector delete the slice with the Service), `create` on EndpointSlices and
//!   `patch` on the one slice by name, in the operator's namespace only. No Pod writes.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Field manager of the slice (one manager, whichever replica leads).
const SLICE_MANAGER: &str = "ordo-operator-leader";

/// The `endpointslice.kubernetes.io/managed-by` value, so the EndpointSlice controller
/// never touches the slice.
pub const MANAGED_BY: &str = "ordo-operator";

/// Name of the Service port (and slice port) enforcers report to.
pub const PORT_NAME: &str = "https";

/// How often the leader re-applies its slice.
const REFRESH: Duration = Duration::from_secs(30);

/// How soon a failed publication is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The leader's address as the endpoint of the report Service.
#[derive(Debug, Clone)]
pub struct LeaderEndpoint {
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    service: String,
    address: IpAddr,
    port: u16,
    identity: String,
}

impl LeaderEndpoint {
    /// Publishes `address:port` behind the selector-less Service `service` of the namespace
    /// `namespace`; `identity` is this replica's Pod name (the slice's `targetRef`).
    pub fn new(
        client: &kube::Client,
        namespace: &str,
        service: &str,
        address: IpAddr,
        port: u16,
        identity: &str,
    ) -> Self {
        Self {
            services: Api::namespaced(client.clone(), namespace),
            slices: Api::namespaced(client.clone(), namespace),
            service: service.to_owned(),
            address,
            port,
            identity: identity.to_owned(),
        }
    }

    /// Name of the slice this operator writes for `service`.
    pub fn slice_name(service: &str) -> String {
        format!("{service}-leader")
    }

    /// Points the report Service at this replica.
    pub async fn publish(&self) -> Result<()> {
        self.apply(true).await
    }

    /// Removes this replica's address (graceful hand-over, while still holding the Lease).
    pub async fn withdraw(&self) -> Result<()> {
        self.apply(false).await
    }

    /// Publishes now and every [`REFRESH`] until `stop`; failures are logged and retried.
    pub async fn keep_published(&self, stop: CancellationToken) {
        loop {
            let pause = match self.publish().await {
                Ok(()) => {
                    tracing::debug!(service = %self.service, address = %self.address, port = self.port, "report Service points at this replica");
                    REFRESH
                }
                Err(err) => {
                    tracing::warn!(error = %err, service = %self.service, "publishing the leader endpoint failed");
                    RETRY
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn apply(&self, serving: bool) -> Result<()> {
        let service = self.services.get(&self.service).await?;
        let uid = service
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingField("metadata.uid"))?;
        let slice = slice(&SliceInput {
            service: &self.service,
            service_uid: &uid,
            namespace: &service.namespace().unwrap_or_default(),
            address: self.address,
            port: self.port,
            pod: &self.identity,
            serving,
        });
        let name = Self::slice_name(&self.service);
        self.slices
            .patch(
                &name,
                &PatchParams::apply(SLICE_MANAGER).force(),
                &Patch::Apply(&slice),
            )
            .await?;
        Ok(())
    }
}

/// What the slice is made of.
#[derive(Debug, Clone, Copy)]
pub struct SliceInput<'a> {
    pub service: &'a str,
    pub service_uid: &'a str,
    pub namespace: &'a str,
    pub address: IpAddr,
    pub port: u16,
    pub pod: &'a str,
    /// `false`: no endpoint at all (the leader is stepping down).
    pub serving: bool,
}

/// The EndpointSlice (server-side apply body) of the report Service.
pub fn slice(input: &SliceInput<'_>) -> Value {
    let address_type = if input.address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let endpoints: Vec<Value> = if input.serving {
        vec![json!({
            "addresses": [input.address.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "name": input.pod, "namespace": input.namespace},
        })]
    } else {
        Vec::new()
    };
    json!({
        "apiVersion": EndpointSlice::api_version(&()),
        "kind": EndpointSlice::kind(&()),
        "metadata": {
            "name": LeaderEndpoint::slice_name(input.service),
            "labels": {
                "kubernetes.io/service-name": input.service,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/managed-by": "ordo-operator",
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Service",
                "name": input.service,
                "uid": input.service_uid,
            }],
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{
            "name": PORT_NAME,
            "port": input.port,
            "protocol": "TCP",
            "appProtocol": "https",
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(address: &str, serving: bool) -> SliceInput<'static> {
        SliceInput {
            service: "ordo-reports",
            service_uid: "uid-1",
            namespace: "ordo-system",
            address: address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: 8443,
            pod: "ordo-7f9-abc",
            serving,
        }
    }

    #[test]
    fn the_slice_names_only_the_leader_and_belongs_to_the_service() {
        let value = slice(&input("10.1.2.3", true));
        let parsed: EndpointSlice = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.metadata.name.as_deref(), Some("ordo-reports-leader"));
        let labels = parsed.metadata.labels.unwrap_or_default();
        assert_eq!(labels["kubernetes.io/service-name"], "ordo-reports");
        assert_eq!(labels["endpointslice.kubernetes.io/managed-by"], MANAGED_BY);
        assert_eq!(parsed.address_type, "IPv4");
        let endpoints = parsed.endpoints.unwrap_or_default();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].addresses, vec!["10.1.2.3".to_owned()]);
        let conditions = endpoints[0].conditions.clone().unwrap_or_default();
        assert_eq!(conditions.ready, Some(true));
        let ports = parsed.ports.unwrap_or_default();
        assert_eq!(ports[0].port, Some(8443));
        assert_eq!(ports[0].name.as_deref(), Some(PORT_NAME));
        let owners = parsed.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners[0].kind, "Service");
        assert_eq!(owners[0].uid, "uid-1");
    }

    #[test]
    fn stepping_down_empties_the_slice_and_ipv6_is_typed() {
        let value = slice(&input("fd00::7", false));
        let parsed: EndpointSlice = serde_json::from_value(value).unwrap();
        assert!(parsed.endpoints.unwrap_or_default().is_empty());
        assert_eq!(parsed.address_type, "IPv6");
    }
}
