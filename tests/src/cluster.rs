//! A real local Kubernetes control plane for end-to-end tests, envtest-style.
//!
//! [`TestCluster::start`] runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler
//! and kwok (which plays the kubelet of one fake Node and makes its Pods Running and Ready)
//! on free loopback ports, with certificates, a service-account signing key and an admin
//! credential generated into a temporary directory. Binaries come from
//! `tests/cluster/build.sh` (see [`binaries`]).
//!
//! Every process and the directory go away when the cluster is dropped, and also when the
//! test process panics, aborts or is killed: see [`supervisor`].
//!
//! Tests in one binary share one control plane through [`shared`] and keep out of each
//! other's way with [`TestCluster::namespace`].
//!
//! [`TestCluster::start_with_options`] can add a real node (containerd and a kubelet that run
//! real containers from imported OCI archives): see [`node`].

pub mod binaries;
mod components;
pub mod dns;
mod kubeconfig;
pub mod node;
pub mod pki;
pub mod supervisor;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::OnceCell;

pub use binaries::K8S_VERSION;
pub use components::{KUBERNETES_SERVICE_IP, NODE_NAME, POD_CIDR, SERVICE_CIDR};
use components::{KWOK_NODE_ANNOTATION, Layout, Ports};
pub use node::{REAL_NODE_NAME, REAL_NODE_TAINT};
use supervisor::Supervisor;

/// How long the whole start may take; a cold start on a busy 2-core machine takes ~20-40 s.
const START_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a CRD may take to become Established.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// The field manager of everything the harness applies.
const FIELD_MANAGER: &str = "ordo-tests";
/// Starts tried when a picked port was taken by another process in the meantime.
const START_ATTEMPTS: u32 = 3;
/// How long the real node may take, after the control plane, to register Ready (containerd
/// start, image import, kubelet start).
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// What to start besides the control plane.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A real node (see [`node`]), when set.
    pub node: Option<NodeOptions>,
    /// Requests per second kube-controller-manager and kube-scheduler may send to the API
    /// server (`--kube-api-qps`; burst twice that). Their default, 20, makes the controllers
    /// the bottleneck when a benchmark creates a thousand Deployments at once; none keeps it.
    pub api_qps: Option<u32>,
}

/// The real node's binaries and the images to import into it.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `tests/cluster/build-node.sh`'s output ([`node::default_node_bin_dir`]).
    pub bin_dir: PathBuf,
    /// OCI archives (e.g. `target/images/ordo-enforcer.oci.tar` from `scripts/images`).
    pub images: Vec<PathBuf>,
}

/// One running control plane. Dropping it stops every component and removes its directory.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    supervisor: Mutex<Supervisor>,
    /// The real node's DNS responder, when there is a node.
    dns: Mutex<Option<dns::Dns>>,
    /// Held while the real node runs: see [`REAL_NODE_LOCK`].
    node_lock: Mutex<Option<std::fs::File>>,
}

/// One real node at a time per machine: kube-proxy programs the host's iptables (its
/// `KUBE-*` chains are global to the network namespace) and its cleanup removes them, so a
/// second node would fight over the same chains. Another cluster's node is waited for.
const REAL_NODE_LOCK: &str = "/run/lock/ordo-real-node.lock";

static SHARED: OnceCell<TestCluster> = OnceCell::const_new();

/// The control plane shared by all tests of this test binary, started on first use.
///
/// Each `#[tokio::test]` has its own runtime, so the cluster holds no client or task: call
/// [`TestCluster::client`] in each test. A `static` is never dropped; the components still
/// stop when the test binary exits (see [`supervisor`]).
pub async fn shared() -> anyhow::Result<&'static TestCluster> {
    SHARED.get_or_try_init(TestCluster::start).await
}

/// The root of the Cargo workspace (the repository), e.g. to find `crds/`.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

impl TestCluster {
    /// Starts a new control plane with the binaries from [`binaries::default_bin_dir`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&binaries::default_bin_dir()).await
    }

    /// Starts a new control plane with the binaries in `bin_dir`.
    ///
    /// Free ports are found by binding port 0 and releasing it, so another process can take
    /// one before a component binds it; such a start is retried on fresh ports.
    pub async fn start_with(bin_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_options(bin_dir, &Options::default()).await
    }

    /// Starts a new control plane with the binaries in `bin_dir`, and what `options` add.
    pub async fn start_with_options(bin_dir: &Path, options: &Options) -> anyhow::Result<Self> {
        let bin_dir = binaries::verify_bin_dir(bin_dir)?;
        if let Some(node) = &options.node {
            node::verify_node_bin_dir(&node.bin_dir)?;
        }
        let mut attempt = 1;
        loop {
            match Self::start_once(&bin_dir, options).await {
                Err(err) if attempt < START_ATTEMPTS && is_port_conflict(&err) => {
                    tracing::warn!(
                        attempt,
                        "a port was taken meanwhile; starting again: {err:#}"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(bin_dir: &Path, options: &Options) -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin_dir = bin_dir.to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("ordo-cluster-")
            .tempdir()
            .context("creating the cluster directory")?
            .keep();
        // From here on the reaper owns the directory: it is removed whatever happens.
        let supervisor = match Supervisor::start(&dir) {
            Ok(supervisor) => supervisor,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        let ports = Ports::pick().context("picking free loopback ports")?;
        let service_ip = KUBERNETES_SERVICE_IP
            .parse()
            .context("the kubernetes Service IP")?;
        let creds = pki::generate(&dir.join("pki"), service_ip)?;
        let server = ports.server();
        let layout = Layout {
            dir: dir.clone(),
            bin_dir: bin_dir.clone(),
            ports,
            apiserver_bind: if options.node.is_some() {
                "0.0.0.0"
            } else {
                "127.0.0.1"
            },
            api_qps: options.api_qps,
            admin_kubeconfig: dir.join("kubeconfig"),
            controller_manager_kubeconfig: dir.join("controller-manager.kubeconfig"),
            scheduler_kubeconfig: dir.join("scheduler.kubeconfig"),
            creds,
        };
        let ca = &layout.creds.ca.cert;
        kubeconfig::write(
            &layout.admin_kubeconfig,
            &server,
            ca,
            "ordo-admin",
            &layout.creds.admin,
        )?;
        kubeconfig::write(
            &layout.controller_manager_kubeconfig,
            &server,
            ca,
            "system:kube-controller-manager",
            &layout.creds.controller_manager,
        )?;
        kubeconfig::write(
            &layout.scheduler_kubeconfig,
            &server,
            ca,
            "system:kube-scheduler",
            &layout.creds.scheduler,
        )?;

        let cluster = Self {
            dir,
            bin_dir,
            kubeconfig: layout.admin_kubeconfig.clone(),
            server,
            supervisor: Mutex::new(supervisor),
            dns: Mutex::new(None),
            node_lock: Mutex::new(None),
        };
        let deadline = started + START_TIMEOUT;
        cluster.boot(&layout, deadline).await?;
        if let Some(node) = &options.node {
            cluster
                .boot_node(&layout, node, Instant::now() + NODE_TIMEOUT)
                .await?;
        }
        tracing::info!(
            dir = %cluster.dir.display(),
            server = %cluster.server,
            elapsed = ?started.elapsed(),
            "local control plane ready"
        );
        Ok(cluster)
    }

    /// Starts the components in dependency order and waits until each is serving.
    async fn boot(&self, layout: &Layout, deadline: Instant) -> anyhow::Result<()> {
        self.spawn("etcd", &components::etcd(layout), &[])?;
        let etcd_port = layout.ports.etcd_client;
        self.wait_for("etcd /health", "etcd", deadline, || async move {
            Ok(etcd_is_healthy(etcd_port).await.then_some(()))
        })
        .await?;

        self.spawn("kube-apiserver", &components::apiserver(layout), &[])?;
        let client = self.client().await?;
        self.wait_for("kube-apiserver /readyz", "kube-apiserver", deadline, || {
            let client = client.clone();
            async move {
                let request = http::Request::get("/readyz").body(Vec::new())?;
                Ok((client.request_text(request).await?.trim() == "ok").then_some(()))
            }
        })
        .await?;

        self.spawn(
            "kube-controller-manager",
            &components::controller_manager(layout),
            &[],
        )?;
        self.spawn("kube-scheduler", &components::scheduler(layout), &[])?;
        let kwok_home = layout.dir.join("kwok-home");
        std::fs::create_dir_all(&kwok_home).context("creating kwok's home directory")?;
        // kwok also reads ~/.kwok/kwok.yaml; an empty home keeps the machine's out.
        self.spawn("kwok", &components::kwok(layout), &[("HOME", &kwok_home)])?;

        register_fake_node(&client).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        self.wait_for("the kwok Node to become Ready", "kwok", deadline, || {
            let nodes = nodes.clone();
            async move { Ok(node_is_ready(&nodes.get(NODE_NAME).await?).then_some(())) }
        })
        .await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait_for(
            "the default ServiceAccount (kube-controller-manager)",
            "kube-controller-manager",
            deadline,
            || {
                let accounts = accounts.clone();
                async move { Ok(accounts.get_opt("default").await?.map(drop)) }
            },
        )
        .await?;
        for (component, port) in [
            ("kube-controller-manager", layout.ports.controller_manager),
            ("kube-scheduler", layout.ports.scheduler),
        ] {
            self.wait_for(
                &format!("{component} to serve"),
                component,
                deadline,
                || async move {
                    Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                        .map(drop))
                },
            )
            .await?;
        }
        Ok(())
    }

    fn spawn(&self, name: &str, args: &[String], envs: &[(&str, &Path)]) -> anyhow::Result<()> {
        self.spawn_program(name, &self.bin_dir.join(name), args, envs)
            .map(drop)
    }

    fn spawn_program(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
    ) -> anyhow::Result<u32> {
        let pid = self.supervisor.lock().spawn(name, program, args, envs)?;
        tracing::debug!(component = name, pid, "started");
        Ok(pid)
    }

    /// Starts containerd, imports the images, starts the kubelet and waits until its Node is
    /// Ready. The cleanup script is registered before anything it removes exists.
    async fn boot_node(
        &self,
        layout: &Layout,
        options: &NodeOptions,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let bin_dir = node::verify_node_bin_dir(&options.bin_dir)?;
        *self.node_lock.lock() = Some(lock_real_node(deadline).await?);
        let kubeconfig = layout.dir.join("node.kubeconfig");
        kubeconfig::write(
            &kubeconfig,
            &self.server,
            &layout.creds.ca.cert,
            &format!("system:node:{REAL_NODE_NAME}"),
            &layout.creds.node,
        )?;
        let l = node::NodeLayout::new(
            &layout.dir,
            &bin_dir,
            &layout.creds.ca.cert,
            &kubeconfig,
            &self.kubeconfig,
            layout.ports.apiserver,
        )?;
        self.supervisor
            .lock()
            .add_cleanup("node", &node::cleanup_script(&l))?;
        node::prepare(&l)?;
        let gateway: std::net::IpAddr =
            l.gateway().parse().context("the node's gateway address")?;
        *self.dns.lock() = Some(dns::Dns::start(
            std::net::SocketAddr::new(gateway, 53),
            self.kubeconfig.clone(),
        )?);
        let (program, args) = node::containerd_command(&l)?;
        let containerd = self.spawn_program("containerd", &program, &args, &[])?;
        let socket = l.socket();
        self.wait_for("containerd to serve", "containerd", deadline, || {
            let socket = socket.clone();
            async move {
                Ok(tokio::net::UnixStream::connect(&socket)
                    .await
                    .ok()
                    .map(drop))
            }
        })
        .await?;
        let mut archives = vec![bin_dir.join(node::PAUSE_ARCHIVE)];
        archives.extend(options.images.iter().cloned());
        let import_layout = l.clone();
        tokio::task::spawn_blocking(move || node::import_images(&import_layout, &archives))
            .await
            .context("importing the images")??;
        let (program, args) = node::kubelet_command(&l, containerd)?;
        self.spawn_program("kubelet", &program, &args, &[])?;
        let nodes: Api<Node> = Api::all(self.client().await?);
        self.wait_for("the real Node to become Ready", "kubelet", deadline, || {
            let nodes = nodes.clone();
            async move {
                Ok(nodes
                    .get_opt(REAL_NODE_NAME)
                    .await?
                    .filter(node_is_ready)
                    .map(drop))
            }
        })
        .await?;
        // In-cluster clients (the operator Pods) reach the API server as the `kubernetes`
        // Service: its endpoint is the gateway, where the API server's port is open to the
        // Pods (the reconciler is off, so the harness writes it).
        self.apply_kubernetes_endpoint(&l.gateway(), layout.ports.apiserver)
            .await?;
        // kube-proxy after the Node exists (it reads the node's addresses from it); healthy
        // once it has programmed the Services at least once.
        let (program, args) = node::kube_proxy_command(&l)?;
        self.spawn_program("kube-proxy", &program, &args, &[])?;
        let port = l.proxy_healthz_port;
        self.wait_for(
            "kube-proxy /healthz",
            "kube-proxy",
            deadline,
            || async move { Ok((http_status(port, "/healthz").await? == 200).then_some(())) },
        )
        .await
    }

    /// The EndpointSlice of the `kubernetes` Service: `address:port`.
    async fn apply_kubernetes_endpoint(&self, address: &str, port: u16) -> anyhow::Result<()> {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kubernetes-real-node",
                    "namespace": "default",
                    "labels": { "kubernetes.io/service-name": "kubernetes" },
                },
                "addressType": "IPv4",
                "endpoints": [{ "addresses": [address], "conditions": { "ready": true } }],
                "ports": [{ "name": "https", "port": port, "protocol": "TCP" }],
            }))
            .context("the kubernetes EndpointSlice")?;
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(self.client().await?, "default");
        slices
            .patch(
                "kubernetes-real-node",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&slice),
            )
            .await
            .context("applying the kubernetes Service's EndpointSlice")?;
        Ok(())
    }

    /// Polls `probe` until it yields a value, failing early when any component exits and,
    /// at the deadline, with the last probe error and the tail of `component`'s log.
    async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        component: &str,
        deadline: Instant,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let mut last_error = None;
        loop {
            self.supervisor
                .lock()
                .check_running()
                .with_context(|| format!("while waiting for {what}"))?;
            match probe().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(err) => last_error = Some(err),
            }
            if Instant::now() > deadline {
                let last = last_error.map_or_else(String::new, |e| format!(" (last error: {e:#})"));
                bail!(
                    "timed out waiting for {what}{last}; last lines of {component}'s log:\n{}",
                    self.log_tail(component, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The admin kubeconfig (user in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA certificate (PEM) that signed the API server's certificate and client certs.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("pki").join("ca.crt")
    }

    /// The API server URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The temporary directory holding certificates, data and `logs/<component>.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The real node's kubelet log file of the first run of `container` in `pod`.
    pub fn pod_log(&self, pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> PathBuf {
        let meta = &pod.metadata;
        self.dir
            .join("node/pod-logs")
            .join(format!(
                "{}_{}_{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
                meta.uid.as_deref().unwrap_or_default()
            ))
            .join(container)
            .join("0.log")
    }

    /// The path of a control-plane binary, e.g. `bin("kubectl")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `kubectl` with this cluster's admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// `(component, pid)` of every process of this control plane.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.supervisor.lock().pids()
    }

    /// The last `lines` lines of a component's log (e.g. for a failing test's message).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        self.supervisor.lock().log_tail(component, lines)
    }

    /// Fails with the component's log when any component has exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        self.supervisor.lock().check_running()
    }

    /// A new admin client. Make one per test: a client is bound to the runtime it was made in.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the admin kubeconfig")?;
        Client::try_from(config).context("building the admin client")
    }

    /// Creates a namespace named `<prefix>-<random>` and waits until its `default`
    /// ServiceAccount exists (so Pods can be created at once). One per test keeps tests apart.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", dns_label_prefix(prefix))),
                labels: Some([("ordo.dev/test".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .context("creating a test namespace")?;
        let name = created
            .metadata
            .name
            .ok_or_else(|| anyhow!("the API server returned a namespace without a name"))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the default ServiceAccount of namespace {name} did not appear; \
                     kube-controller-manager log:\n{}",
                    self.log_tail("kube-controller-manager", 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(name)
    }

    /// Applies every CustomResourceDefinition in the `*.yaml`/`*.yml` files of `dir`
    /// (server-side apply) and waits until each is Established.
    pub async fn install_crds(&self, dir: &Path) -> anyhow::Result<()> {
        let crds = read_crds(dir)?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for crd in &crds {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            api.patch(name, &params, &Patch::Apply(crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
        }
        for crd in &crds {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            tokio::time::timeout(
                CRD_TIMEOUT,
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not Established after {CRD_TIMEOUT:?}"))?
            .with_context(|| format!("watching CRD {name}"))?;
        }
        Ok(())
    }

    /// Stops every component and removes the directory now (dropping does the same).
    pub fn stop(self) {
        drop(self);
    }
}

/// Takes [`REAL_NODE_LOCK`], waiting until `deadline` while another cluster's node holds it.
/// The lock goes with the process (the kernel releases it), whatever way it ends.
async fn lock_real_node(deadline: Instant) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(REAL_NODE_LOCK)
        .with_context(|| format!("opening {REAL_NODE_LOCK}"))?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another local cluster's real node holds {REAL_NODE_LOCK}; only one may run at a time"
            ),
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {REAL_NODE_LOCK}"));
            }
        }
    }
}

/// The status code of `GET path` on `127.0.0.1:port` (plain HTTP/1.0).
async fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP status line: {text:?}"))
}

/// A component failed because a port picked for it was taken by someone else meanwhile.
fn is_port_conflict(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("address already in use") || text.contains("bind: address in use")
}

/// Reads every CRD document of the YAML files in `dir`, in file-name order.
fn read_crds(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading CRD directory {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml_ng::from_value(value)
                .with_context(|| format!("{} is not a CustomResourceDefinition", file.display()))?;
            if crd.metadata.name.is_none() {
                bail!("a CRD in {} has no metadata.name", file.display());
            }
            crds.push(crd);
        }
    }
    if crds.is_empty() {
        bail!("no CustomResourceDefinition found in {}", dir.display());
    }
    Ok(crds)
}

/// etcd's `/health` says `"health":"true"` once it serves (and has a leader). A plain
/// HTTP/1.0 exchange on loopback: etcd listens without TLS here.
async fn etcd_is_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(Ok(response)) => String::from_utf8_lossy(&response).contains(r#""health":"true""#),
        _ => false,
    }
}

/// Registers the fake Node; kwok manages it because of the annotation.
async fn register_fake_node(client: &Client) -> anyhow::Result<()> {
    let (key, value) = KWOK_NODE_ANNOTATION;
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {
                key: value,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
    }))
    .context("building the fake Node")?;
    Api::<Node>::all(client.clone())
        .patch(
            NODE_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .context("registering the fake Node")?;
    Ok(())
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Turns a test name into a valid namespace prefix (lowercase alphanumerics and `-`,
/// short enough for the random suffix).
fn dns_label_prefix(prefix: &str) -> String {
    let mut label: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    while label.ends_with('-') {
        label.pop();
    }
    let label = label.trim_start_matches('-');
    if label.is_empty() {
        "test".to_owned()
    } else {
        label.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_port_conflicts_are_retried() {
        let conflict = anyhow!(
            "etcd exited (exit status: 1); last lines:\nlisten tcp 127.0.0.1:2379: bind: address already in use"
        )
        .context("while waiting for etcd /health");
        assert!(is_port_conflict(&conflict));
        assert!(!is_port_conflict(&anyhow!(
            "kube-apiserver exited: invalid flag"
        )));
    }

    #[test]
    fn namespace_prefixes_are_valid_dns_labels() {
        assert_eq!(
            dns_label_prefix("deployment_becomes_Available"),
            "deployment-becomes-available"
        );
        assert_eq!(dns_label_prefix("__"), "test");
        assert_eq!(dns_label_prefix(&"x".repeat(100)).len(), 40);
        assert_eq!(dns_label_prefix("a::b::"), "a--b");
    }

    #[test]
    fn reads_multi_document_crd_files_and_rejects_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_crds(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no CustomResourceDefinition")
        );
        let crd = |name: &str| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                 metadata:\n  name: {name}\nspec:\n  group: test.ordo.dev\n  scope: Namespaced\n  \
                 names: {{plural: x, kind: X}}\n  versions: []\n"
            )
        };
        std::fs::write(
            dir.path().join("b.yaml"),
            format!(
                "---\n{}---\n{}",
                crd("b1.test.ordo.dev"),
                crd("b2.test.ordo.dev")
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("a.yml"), crd("a.test.ordo.dev")).unwrap();
        std::fs::write(dir.path().join("README.md"), "not yaml").unwrap();
        let names: Vec<String> = read_crds(dir.path())
            .unwrap()
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        assert_eq!(
            names,
            ["a.test.ordo.dev", "b1.test.ordo.dev", "b2.test.ordo.dev"]
        );
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
