//! Names, labels and annotations of everything the operator creates, in one place so that
//! the reconciler, the report endpoint, the webhook and the tests agree.

use std::collections::BTreeMap;

/// Field manager of every server-side apply and the finalizer's owner.
pub const FIELD_MANAGER: &str = "ordo-operator";

/// Finalizer on ApiProtections: restores a taken-over Service before the object goes away.
pub const FINALIZER: &str = "ordo.dev/restore-routing";

/// Annotation on a taken-over Service: its original selector, as JSON.
pub const ORIGINAL_SELECTOR_ANNOTATION: &str = "ordo.dev/original-selector";

/// Annotation on a taken-over Service: its original `sessionAffinity` (and config), as JSON.
pub const ORIGINAL_AFFINITY_ANNOTATION: &str = "ordo.dev/original-session-affinity";

/// Annotation on a taken-over Service naming the ApiProtection that holds it.
pub const TAKEN_OVER_BY_ANNOTATION: &str = "ordo.dev/taken-over-by";

/// Pod template annotation: hash of the rendered config, so a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "ordo.dev/config-hash";

/// Label with the ApiProtection's name on every owned object and enforcer pod.
pub const PROTECTION_LABEL: &str = "ordo.dev/protection";

/// Audience of the enforcers' projected tokens (the report endpoint checks it).
pub const REPORT_AUDIENCE: &str = ordo_enforcer::report::REPORT_AUDIENCE;

/// Key of the enforcer config in its ConfigMap.
pub const CONFIG_KEY: &str = "enforcer.yaml";
/// Key of the copied OpenAPI document in the enforcer ConfigMap.
pub const OPENAPI_KEY: &str = "openapi.yaml";
/// Key of the report CA bundle in the enforcer ConfigMap.
pub const REPORT_CA_KEY: &str = "report-ca.crt";
/// Key of the merged model in the model ConfigMap's `binaryData`.
pub const MODEL_KEY: &str = "model";
/// Key of the aggregated report state (incidents, counters) in the model ConfigMap's `data`.
pub const REPORT_STATE_KEY: &str = "state.json";

/// Where the enforcer pod mounts its ConfigMap.
pub const CONFIG_MOUNT: &str = "/etc/ordo/config";
/// Where the enforcer pod mounts the JWT verification Secret.
pub const JWT_MOUNT: &str = "/etc/ordo/jwt";
/// Where the ConfigMap or Secret holding `spec.session.jwtVerification.jwks` is mounted (the
/// whole object, not a `subPath`, so that the kubelet updates the file and the enforcer reads
/// the new keys).
pub const JWKS_MOUNT: &str = "/etc/ordo/jwks";
/// Where the ConfigMap of `jwks.caConfigMapKeyRef` is mounted.
pub const JWKS_CA_MOUNT: &str = "/etc/ordo/jwks-ca";
/// Where the enforcer pod mounts the Secret of `spec.enforcer.scaleOut.secretRef`.
pub const PEERS_MOUNT: &str = "/etc/ordo/peers";
/// Name of the enforcer's internal port (requests forwarded between replicas).
pub const PEERS_PORT_NAME: &str = "peers";

/// The enforcer's internal port: 8444, or the next one the proxy and admin ports leave free.
pub fn peers_port(proxy: u16, admin: u16) -> u16 {
    (8444..)
        .find(|p| *p != proxy && *p != admin)
        .unwrap_or(8444)
}

/// Where the enforcer pod mounts its projected report token.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/ordo/report";
/// File name of the projected token.
pub const TOKEN_FILE: &str = "token";

/// Names derived from one ApiProtection and its target Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The ApiProtection's name.
    pub protection: String,
    /// Its namespace.
    pub namespace: String,
    /// The protected Service.
    pub service: String,
}

impl Names {
    pub fn new(namespace: &str, protection: &str, service: &str) -> Self {
        Self {
            protection: protection.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        }
    }

    /// ConfigMap with the rendered enforcer config; also the Deployment and ServiceAccount name.
    pub fn enforcer(&self) -> String {
        enforcer_name(&self.protection)
    }

    /// ConfigMap holding the merged model and report state.
    pub fn model(&self) -> String {
        model_config_map(&self.protection)
    }

    /// Service with the original selector (Takeover).
    pub fn origin_service(&self) -> String {
        format!("{}-origin", self.service)
    }

    /// Service in front of the enforcers (Alongside).
    pub fn protected_service(&self) -> String {
        format!("{}-protected", self.service)
    }

    /// Headless Service over the enforcer pods: how replicas find each other
    /// (`spec.enforcer.scaleOut`).
    pub fn peers_service(&self) -> String {
        peers_service_name(&self.protection)
    }

    /// Labels of everything owned, and of the enforcer pods.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        labels.insert("app.kubernetes.io/instance".into(), self.protection.clone());
        labels
    }

    /// Selector of the enforcer pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "ordo-enforcer".to_owned(),
            ),
            (PROTECTION_LABEL.to_owned(), self.protection.clone()),
        ])
    }
}

/// Name of the headless Service the enforcer replicas of an ApiProtection find each other by.
pub fn peers_service_name(protection: &str) -> String {
    format!("{}-peers", enforcer_name(protection))
}

/// Name of the enforcer ConfigMap, ServiceAccount and Deployment of an ApiProtection.
pub fn enforcer_name(protection: &str) -> String {
    format!("{protection}-enforcer")
}

/// Name of the model ConfigMap of an ApiProtection.
pub fn model_config_map(protection: &str) -> String {
    format!("{protection}-model")
}
