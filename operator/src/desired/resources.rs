//! Builders of the objects an ApiProtection owns: pure functions from the desired state to
//! Kubernetes objects, applied by the reconciler with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, SleepAction, Sysctl,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{self, CONFIG_HASH_ANNOTATION, Names};
use crate::crd::ApiProtectionSpec;

/// Seconds a projected report token is valid (the kubelet refreshes it at 80%).
pub const REPORT_TOKEN_SECONDS: i64 = 3600;

/// User and group the enforcer runs as (the distroless "nonroot" user).
const NONROOT_ID: i64 = 65532;

/// Ports of the enforcer container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcerPorts {
    /// Name of the proxy container port: the Service's targetPort name when it is a name,
    /// so that a taken-over Service reaches the proxy without being edited.
    pub proxy_name: String,
    /// The proxy port number.
    pub proxy: u16,
    /// The admin port number (probes, metrics).
    pub admin: u16,
}

impl EnforcerPorts {
    /// Chooses the ports so that the target Service's `targetPort` reaches the proxy.
    pub fn for_target_port(target_port: &IntOrString) -> Self {
        let (proxy_name, proxy) = match target_port {
            IntOrString::Int(n) => ("proxy".to_owned(), u16::try_from(*n).unwrap_or(8080)),
            IntOrString::String(name) => (name.clone(), 8080),
        };
        let admin = if proxy == 9090 { 9091 } else { 9090 };
        Self {
            proxy_name,
            proxy,
            admin,
        }
    }
}

/// Owner reference to the ApiProtection (controller, blocks owner deletion).
pub fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        kind: "ApiProtection".into(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(names: &Names, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap with the rendered config and its companion files.
pub fn config_map(
    names: &Names,
    owner: &OwnerReference,
    data: BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: meta(names, names.enforcer(), owner),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The enforcers' ServiceAccount: it has no RBAC bindings, its only use is the projected
/// token the report endpoint authenticates.
pub fn service_account(names: &Names, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(names, names.enforcer(), owner),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Inputs of the Deployment that do not come from the spec.
#[derive(Debug, Clone)]
pub struct DeploymentInput<'a> {
    pub spec: &'a ApiProtectionSpec,
    pub ports: &'a EnforcerPorts,
    pub config_hash: &'a str,
    /// Image used when the spec names none (operator flag).
    pub default_image: &'a str,
}

/// The hardened enforcer Deployment.
pub fn deployment(
    names: &Names,
    owner: &OwnerReference,
    input: &DeploymentInput<'_>,
) -> Deployment {
    let spec = input.spec;
    let ports = input.ports;
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.enforcer(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "report-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(names::REPORT_AUDIENCE.into()),
                        expiration_seconds: Some(REPORT_TOKEN_SECONDS),
                        path: names::TOKEN_FILE.into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: names::CONFIG_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "report-token".into(),
            mount_path: names::TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let jwt = spec.session.jwt_verification.as_ref();
    let mut mount = |name: &str, path: &str, volume: Volume| {
        volumes.push(Volume {
            name: name.into(),
            ..volume
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    let secret_volume = |name: &str| Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.to_owned()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let config_map_volume = |name: &str| Volume {
        config_map: Some(ConfigMapVolumeSource {
            name: name.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    if let Some(secret) = jwt.and_then(|j| j.secret_ref.as_ref()) {
        mount("jwt-keys", names::JWT_MOUNT, secret_volume(&secret.name));
    }
    // The JWKS document as a whole volume (not a subPath), so that the kubelet replaces the
    // file when the object changes and the enforcer reads the new keys without a restart.
    if let Some(jwks) = jwt.and_then(|j| j.jwks.as_ref()) {
        if let Some(r) = &jwks.config_map_key_ref {
            mount("jwks", names::JWKS_MOUNT, config_map_volume(&r.name));
        } else if let Some(r) = &jwks.secret_key_ref {
            mount("jwks", names::JWKS_MOUNT, secret_volume(&r.name));
        }
        if let Some(r) = &jwks.ca_config_map_key_ref {
            mount("jwks-ca", names::JWKS_CA_MOUNT, config_map_volume(&r.name));
        }
    }
    let scale_out = spec.enforcer.scale_out.as_ref();
    if let Some(scale_out) = scale_out {
        mount(
            "peers-key",
            names::PEERS_MOUNT,
            secret_volume(&scale_out.secret_ref.name),
        );
    }
    let mut env = vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    let mut container_ports = vec![
        ContainerPort {
            name: Some(ports.proxy_name.clone()),
            container_port: i32::from(ports.proxy),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("admin".into()),
            container_port: i32::from(ports.admin),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
    ];
    if scale_out.is_some() {
        // The replica's address as the others reach it (`peers.advertise`).
        env.push(EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        container_ports.push(ContainerPort {
            name: Some(names::PEERS_PORT_NAME.into()),
            container_port: i32::from(names::peers_port(ports.proxy, ports.admin)),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "enforcer".into(),
        image: Some(
            spec.enforcer
                .image
                .clone()
                .unwrap_or_else(|| input.default_image.to_owned()),
        ),
        image_pull_policy: spec.enforcer.image_pull_policy.map(|p| format!("{p:?}")),
        args: Some(vec![
            "--config".into(),
            format!("{}/{}", names::CONFIG_MOUNT, names::CONFIG_KEY),
        ]),
        env: Some(env),
        ports: Some(container_ports),
        readiness_probe: Some(probe("/readyz", READINESS_PERIOD_SECONDS)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(
            spec.enforcer
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        // A deleted Pod stays in the Service's endpoints until every kube-proxy has seen the
        // change, and the enforcer stops accepting as soon as it gets SIGTERM: new connections
        // in between were refused (measured by tests/tests/e2e_node.rs). The kubelet's own
        // sleep (no shell in the image) keeps it serving while the endpoints catch up.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    // A non-root process may bind a port below 1024 only with this (namespaced, "safe") sysctl.
    let sysctls = (ports.proxy < 1024).then(|| {
        vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".into(),
            value: ports.proxy.to_string(),
        }]
    });
    let mut template_meta = ObjectMeta {
        labels: Some(names.labels()),
        ..ObjectMeta::default()
    };
    template_meta.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        input.config_hash.to_owned(),
    )]));
    Deployment {
        metadata: meta(names, names.enforcer(), owner),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.enforcer.replicas),
            selector: LabelSelector {
                match_labels: Some(names.selector()),
                ..LabelSelector::default()
            },
            // Never fewer ready enforcers than desired during a rollout: the Service they
            // sit behind must never select nothing.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(PodSpec {
                    service_account_name: Some(names.enforcer()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NONROOT_ID),
                        run_as_group: Some(NONROOT_ID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        sysctls,
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Seconds a terminating enforcer keeps serving before it gets SIGTERM (see the container's
/// `lifecycle`); well within the Pod's termination grace period. With one replica the
/// deleted Pod is the only endpoint until its replacement is Ready (start-up plus one
/// readiness period) and every kube-proxy has seen that: 5 s was measured to be too short
/// by tests/tests/e2e_node.rs (a replacement Ready after 5.8 s, 4 of 202 requests refused).
const PRE_STOP_SLEEP_SECONDS: i64 = 10;

/// The Pod's termination grace period: the pre-stop sleep, then up to the enforcer's default
/// `limits.shutdownGrace` (20 s) to finish in-flight requests, with room to spare.
const TERMINATION_GRACE_SECONDS: i64 = 40;

/// Readiness probe period: a replacement Pod takes traffic at most this long after it can.
const READINESS_PERIOD_SECONDS: i32 = 2;

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Copies ports of a Service for another Service (no node ports, no cluster-specific fields).
fn copy_ports(ports: &[ServicePort]) -> Vec<ServicePort> {
    ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            target_port: p.target_port.clone(),
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
            ..ServicePort::default()
        })
        .collect()
}

/// `<service>-origin`: the original selector and ports, so the enforcers reach the app pods.
pub fn origin_service(
    names: &Names,
    owner: &OwnerReference,
    selector: &BTreeMap<String, String>,
    ports: &[ServicePort],
) -> Service {
    Service {
        metadata: meta(names, names.origin_service(), owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(copy_ports(ports)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<name>-enforcer-peers`: the ready enforcer pods by DNS (headless, no not-ready
/// addresses), for the replicas to find each other (`spec.enforcer.scaleOut`).
pub fn peers_service(names: &Names, owner: &OwnerReference, ports: &EnforcerPorts) -> Service {
    let port = names::peers_port(ports.proxy, ports.admin);
    Service {
        metadata: meta(names, names.peers_service(), owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(false),
            selector: Some(names.selector()),
            ports: Some(vec![ServicePort {
                name: Some(names::PEERS_PORT_NAME.into()),
                port: i32::from(port),
                target_port: Some(IntOrString::String(names::PEERS_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<service>-protected` (Alongside): the enforcers behind the target Service's ports, with
/// client-IP affinity (see docs/operator.md).
pub fn protected_service(names: &Names, owner: &OwnerReference, ports: &[ServicePort]) -> Service {
    Service {
        metadata: meta(names, names.protected_service(), owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names.selector()),
            ports: Some(copy_ports(ports)),
            session_affinity: Some("ClientIP".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ApiProtectionSpec {
        serde_json::from_value(
            serde_json::json!({"target": {"service": "bank-api", "port": "http"}}),
        )
        .unwrap()
    }

    #[test]
    fn ports_follow_the_target_port() {
        assert_eq!(
            EnforcerPorts::for_target_port(&IntOrString::Int(8080)),
            EnforcerPorts {
                proxy_name: "proxy".into(),
                proxy: 8080,
                admin: 9090
            }
        );
        assert_eq!(
            EnforcerPorts::for_target_port(&IntOrString::Int(9090)).admin,
            9091
        );
        let named = EnforcerPorts::for_target_port(&IntOrString::String("web".into()));
        assert_eq!((named.proxy_name.as_str(), named.proxy), ("web", 8080));
    }

    /// The pod spec of an enforcer of `spec`.
    fn pod_of(spec: &ApiProtectionSpec) -> k8s_openapi::api::core::v1::PodSpec {
        let names = Names::new("bank", "bank-api", "bank-api");
        let owner = owner_reference("bank-api", "uid-1");
        let ports = EnforcerPorts::for_target_port(&IntOrString::Int(8080));
        deployment(
            &names,
            &owner,
            &DeploymentInput {
                spec,
                ports: &ports,
                config_hash: "abc",
                default_image: "img:1",
            },
        )
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
    }

    fn with_jwt(jwt: serde_json::Value) -> ApiProtectionSpec {
        serde_json::from_value(serde_json::json!({
            "target": {"service": "bank-api", "port": "http"},
            "session": {"identifiers": [{"jwtClaim": {"claim": "sub"}}], "jwtVerification": jwt},
        }))
        .unwrap()
    }

    /// (volume, mount path, read-only, source kind, source name) of the JWT volumes.
    fn jwt_mounts(
        pod: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Vec<(String, String, bool, &'static str, String)> {
        let volumes = pod.volumes.clone().unwrap();
        pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .filter(|m| m.name.starts_with("jw"))
            .map(|m| {
                let v = volumes.iter().find(|v| v.name == m.name).unwrap();
                let (kind, source) = match (&v.secret, &v.config_map) {
                    (Some(s), _) => ("secret", s.secret_name.clone().unwrap()),
                    (_, Some(c)) => ("configMap", c.name.clone()),
                    _ => ("other", String::new()),
                };
                (
                    m.name,
                    m.mount_path,
                    m.read_only == Some(true),
                    kind,
                    source,
                )
            })
            .collect()
    }

    #[test]
    fn jwks_sources_are_mounted_read_only() {
        let pod = pod_of(&with_jwt(serde_json::json!({
            "jwks": {"configMapKeyRef": {"name": "idp-keys", "key": "jwks.json"}}})));
        assert_eq!(
            jwt_mounts(&pod),
            vec![(
                "jwks".into(),
                "/etc/ordo/jwks".into(),
                true,
                "configMap",
                "idp-keys".into()
            )]
        );
        let pod = pod_of(&with_jwt(serde_json::json!({
            "jwks": {"secretKeyRef": {"name": "idp-secret", "key": "jwks.json"}}})));
        assert_eq!(
            jwt_mounts(&pod),
            vec![(
                "jwks".into(),
                "/etc/ordo/jwks".into(),
                true,
                "secret",
                "idp-secret".into()
            )]
        );
        let pod = pod_of(&with_jwt(serde_json::json!({
            "jwks": {"uri": "https://idp.example/certs", "caConfigMapKeyRef": {"name": "idp-ca", "key": "ca.crt"}}})));
        assert_eq!(
            jwt_mounts(&pod),
            vec![(
                "jwks-ca".into(),
                "/etc/ordo/jwks-ca".into(),
                true,
                "configMap",
                "idp-ca".into()
            )]
        );
        let pod = pod_of(&with_jwt(
            serde_json::json!({"jwks": {"uri": "https://idp.example/certs"}}),
        ));
        assert!(jwt_mounts(&pod).is_empty());
        let pod = pod_of(&with_jwt(serde_json::json!({
            "secretRef": {"name": "keys", "key": "pub.pem"}, "algorithms": ["RS256"]})));
        assert_eq!(
            jwt_mounts(&pod),
            vec![(
                "jwt-keys".into(),
                "/etc/ordo/jwt".into(),
                true,
                "secret",
                "keys".into()
            )]
        );
    }

    #[test]
    fn scale_out_mounts_the_key_and_opens_the_peers_port() {
        let plain = pod_of(&spec());
        let container = &plain.containers[0];
        assert!(
            !container
                .env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "POD_IP")
        );
        assert_eq!(container.ports.as_ref().unwrap().len(), 2);

        let spread: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": {"service": "bank-api", "port": "http"},
            "enforcer": {"scaleOut": {"secretRef": {"name": "bank-peers", "key": "key"}}},
        }))
        .unwrap();
        let pod = pod_of(&spread);
        let container = &pod.containers[0];
        let pod_ip = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "POD_IP")
            .unwrap();
        assert_eq!(
            pod_ip
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        let port = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("peers"))
            .unwrap();
        assert_eq!(port.container_port, 8444);
        let mount = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/etc/ordo/peers")
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("bank-peers")
        );

        let names = Names::new("bank", "bank-api", "bank-api");
        let owner = owner_reference("bank-api", "uid-1");
        // The peers port stays clear of a proxy that listens on 8444.
        let ports = EnforcerPorts::for_target_port(&IntOrString::Int(8444));
        let service = peers_service(&names, &owner, &ports);
        assert_eq!(
            service.metadata.name.as_deref(),
            Some("bank-api-enforcer-peers")
        );
        let spec = service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(false));
        assert_eq!(spec.selector, Some(names.selector()));
        assert_eq!(spec.ports.unwrap()[0].port, 8445);
    }

    #[test]
    fn deployment_is_hardened() {
        let names = Names::new("bank", "bank-api", "bank-api");
        let owner = owner_reference("bank-api", "uid-1");
        let ports = EnforcerPorts::for_target_port(&IntOrString::Int(80));
        let spec = spec();
        let d = deployment(
            &names,
            &owner,
            &DeploymentInput {
                spec: &spec,
                ports: &ports,
                config_hash: "abc",
                default_image: "img:1",
            },
        );
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.sysctls.unwrap()[0].value,
            "80",
            "a port below 1024 needs the unprivileged-port sysctl"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        let sc = c.security_context.clone().unwrap();
        assert_eq!(
            (
                sc.allow_privilege_escalation,
                sc.read_only_root_filesystem,
                sc.run_as_non_root
            ),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            sc.capabilities.unwrap().drop.unwrap(),
            vec!["ALL".to_owned()]
        );
        // Keeps serving while a deletion reaches every kube-proxy, within the grace period.
        let sleep = c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref();
        let grace = pod.termination_grace_period_seconds.unwrap();
        assert!(sleep.is_some_and(|s| s.seconds > 0 && s.seconds < grace));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        let token = pod
            .volumes
            .unwrap()
            .into_iter()
            .find_map(|v| v.projected)
            .unwrap()
            .sources
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some("ordo-report"));
        assert_eq!(token.expiration_seconds, Some(REPORT_TOKEN_SECONDS));
    }
}
