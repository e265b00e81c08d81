//! Command lines of the control-plane components, envtest-style: loopback only, free ports,
//! the credentials from [`super::pki`], no leader election, and every controller that
//! Deployments, ServiceAccounts, namespaces and garbage collection need.

use std::path::{Path, PathBuf};

use super::pki::Credentials;

/// The Service IP range; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The first address of [`SERVICE_CIDR`].
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// Pod IPs handed out by kwok (disjoint from the Service range).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The one fake Node that kwok manages.
pub const NODE_NAME: &str = "kwok-node-0";
/// kwok manages exactly the Nodes carrying this annotation.
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Loopback ports of one control plane.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

impl Ports {
    /// Picks distinct free ports: all listeners are held open until every port is chosen.
    pub fn pick() -> std::io::Result<Self> {
        let listeners = (0..5)
            .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            apiserver: ports[2],
            controller_manager: ports[3],
            scheduler: ports[4],
        })
    }

    /// The API server URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver)
    }
}

/// Everything the command lines refer to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub ports: Ports,
    /// Where the API server listens: loopback, or every address when a real node's Pods must
    /// reach it (the node's firewall rules then admit only loopback and the Pods' bridge).
    pub apiserver_bind: &'static str,
    /// `--kube-api-qps` of kube-controller-manager and kube-scheduler (none: their default).
    pub api_qps: Option<u32>,
    pub creds: Credentials,
    pub admin_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
}

fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> String {
    format!("--{name}={}", value.as_ref().to_string_lossy())
}

fn path(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

pub fn etcd(l: &Layout) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", l.ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", l.ports.etcd_peer);
    vec![
        flag("name", "ordo-test"),
        flag("data-dir", path(&l.dir.join("etcd"))),
        flag("listen-client-urls", &client),
        flag("advertise-client-urls", &client),
        flag("listen-peer-urls", &peer),
        flag("initial-advertise-peer-urls", &peer),
        flag("initial-cluster", format!("ordo-test={peer}")),
        // A throw-away store: durability is not worth an fsync per write in tests.
        flag("unsafe-no-fsync", "true"),
        flag("log-level", "warn"),
    ]
}

pub fn apiserver(l: &Layout) -> Vec<String> {
    let c = &l.creds;
    vec![
        flag(
            "etcd-servers",
            format!("http://127.0.0.1:{}", l.ports.etcd_client),
        ),
        flag("bind-address", l.apiserver_bind),
        flag("advertise-address", "127.0.0.1"),
        flag("secure-port", l.ports.apiserver.to_string()),
        flag("cert-dir", path(&l.dir.join("apiserver-certs"))),
        flag("tls-cert-file", path(&c.apiserver_serving.cert)),
        flag("tls-private-key-file", path(&c.apiserver_serving.key)),
        flag("client-ca-file", path(&c.ca.cert)),
        // Request-header authentication for aggregated APIs, and the CA bundle that
        // kube-controller-manager and kube-scheduler read for their delegated authentication.
        flag("requestheader-client-ca-file", path(&c.front_proxy_ca.cert)),
        flag(
            "requestheader-allowed-names",
            super::pki::FRONT_PROXY_CLIENT,
        ),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("proxy-client-cert-file", path(&c.front_proxy_client.cert)),
        flag("proxy-client-key-file", path(&c.front_proxy_client.key)),
        // For `kubectl logs`/`exec` on the real node (cluster::node); kwok's node has no kubelet.
        flag(
            "kubelet-client-certificate",
            path(&c.apiserver_kubelet_client.cert),
        ),
        flag("kubelet-client-key", path(&c.apiserver_kubelet_client.key)),
        flag("kubelet-preferred-address-types", "InternalIP"),
        flag("authorization-mode", "Node,RBAC"),
        // The defaults (NamespaceLifecycle, ServiceAccount, webhooks, PodSecurity, quotas, ...)
        // plus NodeRestriction, as in a production cluster.
        flag("enable-admission-plugins", "NodeRestriction"),
        flag("service-account-issuer", l.ports.server()),
        flag(
            "service-account-key-file",
            path(&c.service_account_public_key),
        ),
        flag(
            "service-account-signing-key-file",
            path(&c.service_account_key),
        ),
        flag("service-cluster-ip-range", SERVICE_CIDR),
        // The `kubernetes` Service cannot have a loopback endpoint (validation rejects it);
        // with a real node, the harness gives it the node's gateway (cluster::node).
        flag("endpoint-reconciler-type", "none"),
        flag("allow-privileged", "true"),
        flag("profiling", "false"),
    ]
}

/// `--kube-api-qps` and `--kube-api-burst` (twice the rate) when `l.api_qps` is set.
fn api_rate_flags(l: &Layout) -> Vec<String> {
    l.api_qps.map_or_else(Vec::new, |qps| {
        vec![
            flag("kube-api-qps", qps.to_string()),
            flag("kube-api-burst", qps.saturating_mul(2).to_string()),
        ]
    })
}

pub fn controller_manager(l: &Layout) -> Vec<String> {
    let c = &l.creds;
    let kubeconfig = path(&l.controller_manager_kubeconfig);
    let mut args = vec![
        flag("kubeconfig", kubeconfig),
        flag("authentication-kubeconfig", kubeconfig),
        flag("authorization-kubeconfig", kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", l.ports.controller_manager.to_string()),
        flag("cert-dir", path(&l.dir.join("controller-manager-certs"))),
        flag("leader-elect", "false"),
        // All default controllers: deployment, replicaset, serviceaccount(-token), namespace,
        // garbage collector, endpoint(slice), node lifecycle, ...
        flag("controllers", "*"),
        flag("use-service-account-credentials", "true"),
        flag(
            "service-account-private-key-file",
            path(&c.service_account_key),
        ),
        flag("root-ca-file", path(&c.ca.cert)),
        flag("cluster-signing-cert-file", path(&c.ca.cert)),
        flag("cluster-signing-key-file", path(&c.ca.key)),
        flag("service-cluster-ip-range", SERVICE_CIDR),
        flag("profiling", "false"),
    ];
    args.extend(api_rate_flags(l));
    args
}

pub fn scheduler(l: &Layout) -> Vec<String> {
    let kubeconfig = path(&l.scheduler_kubeconfig);
    let mut args = vec![
        flag("kubeconfig", kubeconfig),
        flag("authentication-kubeconfig", kubeconfig),
        flag("authorization-kubeconfig", kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", l.ports.scheduler.to_string()),
        flag("cert-dir", path(&l.dir.join("scheduler-certs"))),
        flag("leader-elect", "false"),
        flag("profiling", "false"),
    ];
    args.extend(api_rate_flags(l));
    args
}

pub fn kwok(l: &Layout) -> Vec<String> {
    let (key, value) = KWOK_NODE_ANNOTATION;
    vec![
        flag("kubeconfig", path(&l.admin_kubeconfig)),
        flag(
            "config",
            path(&l.bin_dir.join(super::binaries::KWOK_STAGES)),
        ),
        flag("manage-all-nodes", "false"),
        flag(
            "manage-nodes-with-annotation-selector",
            format!("{key}={value}"),
        ),
        flag("cidr", POD_CIDR),
        flag("node-ip", "127.0.0.1"),
        flag("node-lease-duration-seconds", "40"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pki::CertFiles;

    fn layout() -> Layout {
        let pair = |n: &str| CertFiles {
            cert: PathBuf::from(format!("/d/{n}.crt")),
            key: PathBuf::from(format!("/d/{n}.key")),
        };
        Layout {
            dir: PathBuf::from("/d"),
            bin_dir: PathBuf::from("/bin-dir"),
            ports: Ports {
                etcd_client: 1001,
                etcd_peer: 1002,
                apiserver: 1003,
                controller_manager: 1004,
                scheduler: 1005,
            },
            apiserver_bind: "127.0.0.1",
            api_qps: None,
            creds: Credentials {
                ca: pair("ca"),
                apiserver_serving: pair("apiserver"),
                admin: pair("admin"),
                controller_manager: pair("controller-manager"),
                scheduler: pair("scheduler"),
                node: pair("node"),
                apiserver_kubelet_client: pair("apiserver-kubelet-client"),
                front_proxy_ca: pair("front-proxy-ca"),
                front_proxy_client: pair("front-proxy-client"),
                service_account_key: PathBuf::from("/d/sa.key"),
                service_account_public_key: PathBuf::from("/d/sa.pub"),
            },
            admin_kubeconfig: PathBuf::from("/d/kubeconfig"),
            controller_manager_kubeconfig: PathBuf::from("/d/cm.kubeconfig"),
            scheduler_kubeconfig: PathBuf::from("/d/s.kubeconfig"),
        }
    }

    #[test]
    fn every_listener_is_on_loopback_with_its_own_port() {
        let l = layout();
        let api = apiserver(&l);
        assert!(api.contains(&"--bind-address=127.0.0.1".to_owned()));
        assert!(api.contains(&"--secure-port=1003".to_owned()));
        assert!(api.contains(&"--etcd-servers=http://127.0.0.1:1001".to_owned()));
        assert!(api.contains(&"--authorization-mode=Node,RBAC".to_owned()));
        assert!(etcd(&l).contains(&"--listen-client-urls=http://127.0.0.1:1001".to_owned()));
        assert!(controller_manager(&l).contains(&"--secure-port=1004".to_owned()));
        assert!(scheduler(&l).contains(&"--secure-port=1005".to_owned()));
        assert!(kwok(&l).contains(
            &"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".to_owned()
        ));
    }

    #[test]
    fn the_api_rate_of_the_controllers_is_raised_only_when_asked() {
        let mut l = layout();
        assert!(
            !controller_manager(&l)
                .iter()
                .any(|a| a.starts_with("--kube-api-qps"))
        );
        l.api_qps = Some(200);
        for args in [controller_manager(&l), scheduler(&l)] {
            assert!(args.contains(&"--kube-api-qps=200".to_owned()), "{args:?}");
            assert!(
                args.contains(&"--kube-api-burst=400".to_owned()),
                "{args:?}"
            );
        }
    }

    #[test]
    fn picked_ports_are_distinct() {
        let p = Ports::pick().unwrap();
        let mut all = vec![
            p.etcd_client,
            p.etcd_peer,
            p.apiserver,
            p.controller_manager,
            p.scheduler,
        ];
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|&port| port != 0));
    }
}
