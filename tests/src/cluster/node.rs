//! An opt-in real node next to kwok's fake one: containerd (with Debian's runc and CNI
//! plugins) and a kubelet, built by `tests/cluster/build-node.sh`, that run real containers
//! from OCI archives imported with `ctr` (the cluster never pulls from a registry).
//!
//! Everything the node creates is confined and removed with the cluster:
//! - containerd starts in a mount namespace of its own (`unshare --mount`), where tmpfs and
//!   bind mounts hide the host's `/run/containerd`, `/run/netns`, `/var/lib/cni` and
//!   `/var/log/containers`; the kubelet joins it (`nsenter`). The container mounts vanish
//!   with the namespace when its last process ends.
//! - containerd, the kubelet, the runc shims and every container live under one cgroup
//!   `/ordo-<id>` (the kubelet's `cgroupRoot`) in each v1 hierarchy; the cleanup script the
//!   reaper runs kills what is left in it and removes the cgroups and the CNI bridge.
//! - the node is tainted [`REAL_NODE_TAINT`], so only Pods that tolerate it (and select
//!   [`REAL_NODE_NAME`]) run there; the other tests' Pods stay on kwok's node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::binaries::K8S_VERSION;

/// The real node's name (its kubelet's client certificate is `system:node:<this>`).
pub const REAL_NODE_NAME: &str = "ordo-node-0";
/// The taint (`NoSchedule`) that keeps Pods off the real node unless they tolerate it.
pub const REAL_NODE_TAINT: (&str, &str) = ("ordo.dev/real-node", "true");
/// Every executable of the node, from `tests/cluster/build-node.sh`.
pub const NODE_BINARIES: [&str; 5] = [
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "kubelet",
    "kube-proxy",
];
/// The sandbox image's archive, next to the binaries.
pub const PAUSE_ARCHIVE: &str = "pause.oci.tar";
/// runc and the CNI plugins, from Debian's `runc` and `containernetworking-plugins`.
const RUNC: &str = "/usr/sbin/runc";
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// containerd's namespace for the CRI: images must be imported there.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The sandbox ("pause") image `build-node.sh` assembles.
pub fn sandbox_image() -> String {
    format!("localhost/ordo-node/pause:{K8S_VERSION}")
}

/// `$ORDO_NODE_BIN`, or `${ORDO_CACHE:-$HOME/.cache/ordo}/k8s-<version>/node/bin`.
pub fn default_node_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORDO_NODE_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let control_plane = super::binaries::default_bin_dir();
    control_plane
        .parent()
        .map_or_else(|| PathBuf::from("node/bin"), |p| p.join("node").join("bin"))
}

/// Checks the node's binaries, the sandbox archive and the Debian tools, and says how to get
/// what is missing.
pub fn verify_node_bin_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut missing: Vec<String> = NODE_BINARIES
        .iter()
        .filter(|name| !dir.join(name).is_file())
        .map(|name| dir.join(name).display().to_string())
        .collect();
    if !dir.join(PAUSE_ARCHIVE).is_file() {
        missing.push(dir.join(PAUSE_ARCHIVE).display().to_string());
    }
    for tool in [RUNC, &format!("{CNI_BIN_DIR}/bridge"), "/usr/bin/unshare"] {
        if !Path::new(tool).is_file() {
            missing.push(tool.to_owned());
        }
    }
    if !missing.is_empty() {
        bail!(
            "the real node is not built: {} missing. Run `tests/cluster/build-node.sh` \
             (it builds kubelet and containerd with Go and installs runc and the CNI plugins)",
            missing.join(", ")
        );
    }
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

/// Where one node's files, cgroup and bridge are, and what it talks to.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    /// `<cluster dir>/node`.
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The cgroup (in every hierarchy) all of the node's processes live under.
    pub cgroup: String,
    /// The CNI bridge (at most 15 characters).
    pub bridge: String,
    /// The Pods' /24.
    pub pod_subnet: String,
    pub kubelet_port: u16,
    pub kubelet_healthz_port: u16,
    /// kube-proxy's health and metrics ports (loopback).
    pub proxy_healthz_port: u16,
    pub proxy_metrics_port: u16,
    pub ca_cert: PathBuf,
    /// The kubelet's credentials (`system:node:<name>`).
    pub kubeconfig: PathBuf,
    /// kube-proxy's credentials: it lists Services, EndpointSlices and Nodes cluster-wide.
    pub proxy_kubeconfig: PathBuf,
    /// The API server's port, which listens on every address when there is a node: the
    /// firewall rules of [`apiserver_rules`] admit only loopback and the bridge.
    pub apiserver_port: u16,
}

impl NodeLayout {
    /// A layout with a fresh id (cgroup, bridge) and subnet, and four free loopback ports.
    pub fn new(
        cluster_dir: &Path,
        bin_dir: &Path,
        ca_cert: &Path,
        kubeconfig: &Path,
        proxy_kubeconfig: &Path,
        apiserver_port: u16,
    ) -> anyhow::Result<Self> {
        let id: u32 = rand::random::<u32>() % 0x1_0000;
        let listeners = (0..4)
            .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("picking the kubelet's ports")?;
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
        Ok(Self {
            dir: cluster_dir.join("node"),
            bin_dir: bin_dir.to_path_buf(),
            cgroup: format!("ordo-{id:04x}"),
            bridge: format!("ordo{id:04x}"),
            pod_subnet: free_pod_subnet()?,
            kubelet_port: port(0)?,
            kubelet_healthz_port: port(1)?,
            proxy_healthz_port: port(2)?,
            proxy_metrics_port: port(3)?,
            ca_cert: ca_cert.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            proxy_kubeconfig: proxy_kubeconfig.to_path_buf(),
            apiserver_port,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bridge's address on the host: the Pods' gateway and the Node's InternalIP, where
    /// the kubelet listens (so the API server reaches it for logs and exec).
    pub fn gateway(&self) -> String {
        let network = self.pod_subnet.trim_end_matches(".0/24");
        format!("{network}.1")
    }

    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }
}

/// A 10.245.N.0/24 no interface of this machine is on (another cluster's node may be).
fn free_pod_subnet() -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("running `ip addr` (iproute2)")?;
    let taken = String::from_utf8_lossy(&output.stdout).into_owned();
    for _ in 0..64 {
        let n = rand::random::<u8>();
        if !taken.contains(&format!("10.245.{n}.")) {
            return Ok(format!("10.245.{n}.0/24"));
        }
    }
    bail!("no free 10.245.N.0/24 subnet for the node's Pods")
}

/// Creates the node's directories, configuration files and cgroups.
pub fn prepare(l: &NodeLayout) -> anyhow::Result<()> {
    // A Pod reaching another Pod of the same bridge through a ClusterIP gets the answer
    // bridged straight back: without the bridge netfilter hook, kube-proxy's translation is
    // not undone and the connection hangs.
    let hook = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::fs::read_to_string(hook).unwrap_or_default().trim() != "1" {
        bail!(
            "{hook} is not 1: run `modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1` \
             (kube-proxy needs it for Pod-to-Service traffic on one bridge)"
        );
    }
    for sub in [
        "containerd/root",
        "containerd/state",
        "containerd/opt",
        "cni/net.d",
        "cni/ipam",
        "kubelet",
        "pod-logs",
        "mounts/var-lib-cni",
        "mounts/var-log-containers",
    ] {
        let dir = l.path(sub);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write(&l.path("containerd.toml"), &containerd_config(l))?;
    write(&l.path("cni/net.d/10-ordo.conflist"), &cni_config(l))?;
    write(&l.path("kubelet.yaml"), &kubelet_config(l))?;
    write(&l.path("kube-proxy.yaml"), &kube_proxy_config(l))?;
    create_cgroups(&l.cgroup)?;
    create_bridge(l)?;
    for rule in apiserver_rules(l) {
        let mut args = vec!["-w".to_owned(), "-I".to_owned()];
        args.extend(rule);
        let output = Command::new("iptables")
            .args(&args)
            .output()
            .context("running iptables")?;
        if !output.status.success() {
            bail!(
                "iptables {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

/// `INPUT` rules (in insertion order, each inserted first) that let only loopback and the
/// node's bridge reach the API server's port: the API server listens on every address so
/// that the Pods reach it through the `kubernetes` Service, but nothing outside this machine
/// may. Tagged with the node's cgroup name, and deleted by [`cleanup_script`].
pub fn apiserver_rules(l: &NodeLayout) -> Vec<Vec<String>> {
    let port = l.apiserver_port.to_string();
    let rule = |extra: &[&str], target: &str| {
        let mut args: Vec<String> = ["INPUT", "-p", "tcp", "--dport", &port]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(
            ["-m", "comment", "--comment", &l.cgroup, "-j", target]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        args
    };
    vec![
        rule(&[], "DROP"),
        rule(&["-i", "lo"], "ACCEPT"),
        rule(&["-i", &l.bridge], "ACCEPT"),
    ]
}

/// The bridge with the gateway address, before the kubelet needs its node IP (the CNI
/// plugin finds and keeps it).
fn create_bridge(l: &NodeLayout) -> anyhow::Result<()> {
    let address = format!("{}/24", l.gateway());
    for args in [
        vec!["link", "add", "name", &l.bridge, "type", "bridge"],
        vec!["addr", "add", &address, "dev", &l.bridge],
        vec!["link", "set", &l.bridge, "up"],
    ] {
        let output = Command::new("ip")
            .args(&args)
            .output()
            .context("running ip (iproute2)")?;
        if !output.status.success() {
            bail!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The v1 hierarchies mounted under /sys/fs/cgroup (a link such as `cpu,cpuacct` is skipped:
/// its target is listed on its own).
fn cgroup_hierarchies() -> anyhow::Result<Vec<PathBuf>> {
    let mut hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .context("reading /sys/fs/cgroup")?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    hierarchies.sort();
    if !hierarchies.iter().any(|h| h.ends_with("pids")) {
        bail!("no cgroup v1 pids hierarchy at /sys/fs/cgroup/pids: the node needs cgroup v1");
    }
    Ok(hierarchies)
}

/// `/<cgroup>` and `/<cgroup>/node` in every hierarchy; cpuset ones need their cpus and mems
/// before a process may join.
fn create_cgroups(cgroup: &str) -> anyhow::Result<()> {
    for hierarchy in cgroup_hierarchies()? {
        let node = hierarchy.join(cgroup).join("node");
        std::fs::create_dir_all(&node).with_context(|| format!("creating {}", node.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                for dir in [hierarchy.join(cgroup), node.clone()] {
                    write(&dir.join(file), value.trim())?;
                }
            }
        }
    }
    Ok(())
}

fn containerd_config(l: &NodeLayout) -> String {
    let d = l.dir.display();
    format!(
        r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox}"
[plugins."io.containerd.cri.v1.runtime"]
  # Without CAP_SYS_RESOURCE (as in this project's sandboxes) nothing may lower its OOM
  # score below containerd's own, and runc fails on the sandboxes' -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{d}/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        socket = l.socket().display(),
        sandbox = sandbox_image(),
    )
}

/// A bridge with the gateway address on the host side, so the kubelet's probes reach the
/// Pods; no masquerading: the Pods talk to nothing outside this machine.
fn cni_config(l: &NodeLayout) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ordo-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": l.bridge,
                "isGateway": true,
                // The default route through the gateway: Service ClusterIPs (which kube-proxy
                // translates on the host) are not on the Pods' subnet.
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": l.pod_subnet }]],
                    "dataDir": l.path("cni/ipam"),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
    .to_string()
}

fn kubelet_config(l: &NodeLayout) -> String {
    let (taint_key, taint_value) = REAL_NODE_TAINT;
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // Kubernetes 1.35+ refuses cgroup v1 unless told otherwise; this machine has only v1.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{}", l.cgroup),
        "containerRuntimeEndpoint": format!("unix://{}", l.socket().display()),
        "address": l.gateway(),
        "port": l.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": l.kubelet_healthz_port,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": l.ca_cert },
        },
        "authorization": { "mode": "Webhook" },
        "podLogsDir": l.path("pod-logs"),
        "registerWithTaints": [{ "key": taint_key, "value": taint_value, "effect": "NoSchedule" }],
        "failSwapOn": false,
        // Its own OOM score: lowering it needs CAP_SYS_RESOURCE, which a sandbox may lack.
        "oomScoreAdj": 0,
        "maxPods": 20,
        // A shared development disk: evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "rotateCertificates": false,
        "resolvConf": "/etc/resolv.conf",
        // The harness's responder (super::dns) on the bridge address: Pods resolve Services
        // by name, as the operator's rendered URLs need.
        "clusterDNS": [l.gateway()],
        "clusterDomain": super::dns::CLUSTER_DOMAIN,
    })
    .to_string()
}

/// kube-proxy in iptables mode on the host's network namespace, where the Pods' bridge, the
/// API server (which calls webhooks through their Service) and the tests' clients are.
/// It touches no sysctl (conntrack limits and timeouts left as they are, no localhost
/// NodePorts) and serves NodePorts on the bridge address only.
fn kube_proxy_config(l: &NodeLayout) -> String {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": { "kubeconfig": l.proxy_kubeconfig },
        "hostnameOverride": REAL_NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": l.pod_subnet,
        "detectLocalMode": "ClusterCIDR",
        "bindAddress": l.gateway(),
        "healthzBindAddress": format!("127.0.0.1:{}", l.proxy_healthz_port),
        "metricsBindAddress": format!("127.0.0.1:{}", l.proxy_metrics_port),
        "nodePortAddresses": [format!("{}/32", l.gateway())],
        "iptables": {
            "localhostNodePorts": false,
            "masqueradeAll": false,
            "syncPeriod": "30s",
            "minSyncPeriod": "0s",
        },
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    })
    .to_string()
}

/// `sh -c` preamble that moves the shell into the node's cgroup (pids and every other
/// hierarchy), so that all its descendants are found and killed at cleanup.
fn join_cgroups(cgroup: &str) -> anyhow::Result<String> {
    let mut script = String::new();
    for hierarchy in cgroup_hierarchies()? {
        let procs = hierarchy.join(cgroup).join("node").join("cgroup.procs");
        let _ = writeln!(script, "echo $$ > '{}' || exit 1", procs.display());
    }
    Ok(script)
}

/// `unshare` + shell that sets up the private mounts and execs containerd.
pub fn containerd_command(l: &NodeLayout) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mounts = l.path("mounts");
    let mut script = join_cgroups(&l.cgroup)?;
    let _ = write!(
        script,
        "mkdir -p /run/containerd /run/netns /var/lib/cni /var/log/containers || exit 1\n\
         mount -t tmpfs ordo-node /run/containerd || exit 1\n\
         mount -t tmpfs ordo-node /run/netns || exit 1\n\
         mount --bind '{m}/var-lib-cni' /var/lib/cni || exit 1\n\
         mount --bind '{m}/var-log-containers' /var/log/containers || exit 1\n\
         PATH='{bin}':/usr/sbin:/usr/bin:/sbin:/bin exec '{bin}/containerd' --config '{config}'\n",
        m = mounts.display(),
        bin = l.bin_dir.display(),
        config = l.path("containerd.toml").display(),
    );
    let args = [
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
    ]
    .map(str::to_owned)
    .to_vec();
    Ok((PathBuf::from("unshare"), args))
}

/// `sh` that joins the node's cgroup and containerd's mount namespace, then execs the kubelet.
pub fn kubelet_command(
    l: &NodeLayout,
    containerd_pid: u32,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mut script = join_cgroups(&l.cgroup)?;
    let _ = writeln!(
        script,
        "exec nsenter --mount=/proc/{containerd_pid}/ns/mnt -- '{bin}/kubelet' \
         --config='{config}' --kubeconfig='{kubeconfig}' --root-dir='{root}' \
         --cert-dir='{root}/pki' --hostname-override={REAL_NODE_NAME} --node-ip={gateway} \
         --node-labels=type=real --v=2",
        bin = l.bin_dir.display(),
        config = l.path("kubelet.yaml").display(),
        kubeconfig = l.kubeconfig.display(),
        root = l.path("kubelet").display(),
        gateway = l.gateway(),
    );
    Ok((PathBuf::from("sh"), vec!["-c".to_owned(), script]))
}

/// `sh` that joins the node's cgroup and execs kube-proxy (in the host's namespaces).
pub fn kube_proxy_command(l: &NodeLayout) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let mut script = join_cgroups(&l.cgroup)?;
    let _ = writeln!(
        script,
        "exec '{bin}/kube-proxy' --config='{config}' --v=2",
        bin = l.bin_dir.display(),
        config = l.path("kube-proxy.yaml").display(),
    );
    Ok((PathBuf::from("sh"), vec!["-c".to_owned(), script]))
}

/// What the reaper runs once containerd, the kubelet and kube-proxy are stopped: kill the
/// shims and containers left in the node's cgroup, remove kube-proxy's iptables chains, the
/// cgroups and the bridge.
pub fn cleanup_script(l: &NodeLayout) -> String {
    format!(
        r#"cg='{cg}'
pids_root="/sys/fs/cgroup/pids/$cg"
i=0
while [ -d "$pids_root" ] && [ "$i" -lt 50 ]; do
    procs=$(find "$pids_root" -name cgroup.procs -exec cat {{}} + 2>/dev/null)
    [ -n "$procs" ] || break
    kill -KILL $procs 2>/dev/null
    sleep 0.1
    i=$((i + 1))
done
for h in /sys/fs/cgroup/*/; do
    [ -d "$h$cg" ] && find "$h$cg" -depth -type d -exec rmdir {{}} \; 2>/dev/null
done
'{bin}/kube-proxy' --cleanup --config='{proxy_config}' >/dev/null 2>&1
{firewall}ip link delete '{bridge}' 2>/dev/null
exit 0
"#,
        firewall = apiserver_rules(l)
            .iter()
            .map(|rule| format!("iptables -w -D {} 2>/dev/null\n", rule.join(" ")))
            .collect::<String>(),
        cg = l.cgroup,
        bridge = l.bridge,
        bin = l.bin_dir.display(),
        proxy_config = l.path("kube-proxy.yaml").display(),
    )
}

/// Imports OCI archives into containerd's CRI namespace; each keeps the name stored in it.
pub fn import_images(l: &NodeLayout, archives: &[PathBuf]) -> anyhow::Result<()> {
    for archive in archives {
        let output = Command::new(l.bin_dir.join("ctr"))
            .arg("--address")
            .arg(l.socket())
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .arg(archive)
            .output()
            .context("running ctr")?;
        if !output.status.success() {
            bail!(
                "ctr images import {} failed: {}{}",
                archive.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> NodeLayout {
        NodeLayout {
            dir: PathBuf::from("/c/node"),
            bin_dir: PathBuf::from("/bin-dir"),
            cgroup: "ordo-00ab".to_owned(),
            bridge: "ordo00ab".to_owned(),
            pod_subnet: "10.245.7.0/24".to_owned(),
            kubelet_port: 2001,
            kubelet_healthz_port: 2002,
            proxy_healthz_port: 2003,
            proxy_metrics_port: 2004,
            ca_cert: PathBuf::from("/c/pki/ca.crt"),
            kubeconfig: PathBuf::from("/c/node.kubeconfig"),
            proxy_kubeconfig: PathBuf::from("/c/admin.kubeconfig"),
            apiserver_port: 2005,
        }
    }

    #[test]
    fn kubelet_listens_on_the_bridge_under_the_node_cgroup_with_cgroup_v1_allowed() {
        let config: serde_json::Value = serde_json::from_str(&kubelet_config(&layout())).unwrap();
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupRoot"], "/ordo-00ab");
        assert_eq!(config["address"], "10.245.7.1");
        assert_eq!(config["port"], 2001);
        assert_eq!(config["readOnlyPort"], 0);
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///c/node/containerd.sock"
        );
        assert_eq!(config["registerWithTaints"][0]["key"], REAL_NODE_TAINT.0);
        assert_eq!(config["clusterDNS"][0], "10.245.7.1");
    }

    #[test]
    fn kube_proxy_programs_iptables_for_the_node_without_touching_sysctls() {
        let config: serde_json::Value =
            serde_json::from_str(&kube_proxy_config(&layout())).unwrap();
        assert_eq!(config["mode"], "iptables");
        assert_eq!(config["hostnameOverride"], REAL_NODE_NAME);
        assert_eq!(config["clusterCIDR"], "10.245.7.0/24");
        assert_eq!(config["iptables"]["localhostNodePorts"], false);
        assert_eq!(config["conntrack"]["maxPerCore"], 0);
        assert_eq!(config["healthzBindAddress"], "127.0.0.1:2003");
    }

    #[test]
    fn containerd_uses_the_local_sandbox_image_and_the_node_directories() {
        let config = containerd_config(&layout());
        assert!(config.contains(&format!("sandbox = \"{}\"", sandbox_image())));
        assert!(config.contains("root = \"/c/node/containerd/root\""));
        assert!(config.contains("conf_dir = \"/c/node/cni/net.d\""));
        assert!(config.contains("restrict_oom_score_adj = true"));
        let cni: serde_json::Value = serde_json::from_str(&cni_config(&layout())).unwrap();
        assert_eq!(cni["plugins"][0]["bridge"], "ordo00ab");
        assert_eq!(cni["plugins"][0]["ipMasq"], false);
        assert_eq!(cni["plugins"][0]["isDefaultGateway"], true);
        assert!(layout().bridge.len() <= 15);
    }

    #[test]
    fn cleanup_kills_the_cgroup_and_removes_the_bridge() {
        let script = cleanup_script(&layout());
        assert!(script.contains("cg='ordo-00ab'"));
        assert!(script.contains("kill -KILL"));
        assert!(script.contains("ip link delete 'ordo00ab'"));
        assert!(script.contains("kube-proxy' --cleanup"));
        for rule in apiserver_rules(&layout()) {
            assert!(script.contains(&format!("iptables -w -D {}", rule.join(" "))));
        }
    }

    #[test]
    fn only_loopback_and_the_bridge_reach_the_api_server() {
        let rules = apiserver_rules(&layout());
        // Each is inserted first: the last one ends up on top.
        assert_eq!(rules[0].last().unwrap(), "DROP");
        assert!(rules[1].contains(&"lo".to_owned()) && rules[1].last().unwrap() == "ACCEPT");
        assert!(rules[2].contains(&"ordo00ab".to_owned()));
        assert!(rules.iter().all(|r| r.contains(&"2005".to_owned())));
    }

    #[test]
    fn missing_node_binaries_name_the_build_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_node_bin_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tests/cluster/build-node.sh"), "{err}");
        assert!(err.contains("kubelet"), "{err}");
        assert!(err.contains(PAUSE_ARCHIVE), "{err}");
    }
}
