//! The real node's cluster DNS: the smallest responder that lets Pods resolve
//! `<service>.<namespace>.svc.cluster.local` to the Service's ClusterIP, as CoreDNS would.
//!
//! The operator hands the enforcers DNS names (`http://<service>-origin.<ns>.svc:<port>`,
//! `https://<release>-reports.<ns>.svc:443`), so without a resolver no Pod could reach a
//! Service by name. Running CoreDNS would need its image (no registry here) and a Go build;
//! this answers A queries from the API server instead, on UDP port 53 of the node's bridge
//! address (the kubelet's `clusterDNS`), which only the node's Pods and this machine reach.
//! A headless Service (`clusterIP: None`) resolves to the addresses of its ready endpoints, as
//! CoreDNS answers it (the enforcers find their peers by one: docs/scale-out.md).
//! Everything else is NXDOMAIN (the Pods talk to nothing outside this machine), and any other
//! query type for a Service name an empty answer, so that glibc's parallel A/AAAA lookup
//! settles on the A record.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};

/// The cluster domain the kubelet writes into the Pods' search path.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// How long an answer may be cached: Services come and go within a test.
const TTL_SECONDS: u32 = 5;
/// A query is at most this long (no EDNS); longer datagrams are dropped.
const MAX_QUERY: usize = 512;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;

/// A running responder; stops when dropped.
#[derive(Debug)]
pub struct Dns {
    stop: Arc<AtomicBool>,
}

impl Dns {
    /// Serves on `listen` (UDP), looking Services up with `client`'s credentials. The
    /// responder runs on a thread of its own with its own runtime, so that it outlives the
    /// runtime of the test that started the cluster.
    pub fn start(listen: SocketAddr, kubeconfig: std::path::PathBuf) -> anyhow::Result<Self> {
        let socket =
            UdpSocket::bind(listen).with_context(|| format!("binding the DNS port {listen}"))?;
        socket
            .set_nonblocking(true)
            .context("making the DNS socket non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("ordo-cluster-dns".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!("the DNS responder has no runtime: {err}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match client(&kubeconfig).await {
                        Ok(client) => serve(socket, client, stopping).await,
                        Err(err) => tracing::error!("the DNS responder has no client: {err:#}"),
                    }
                });
            })
            .context("starting the DNS responder's thread")?;
        Ok(Self { stop })
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading the kubeconfig of the DNS responder")?;
    Client::try_from(config).context("building the DNS responder's client")
}

async fn serve(socket: UdpSocket, client: Client, stop: Arc<AtomicBool>) {
    let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else {
        return;
    };
    let mut buffer = [0u8; MAX_QUERY];
    while !stop.load(Ordering::Relaxed) {
        // One query at a time is plenty for a handful of Pods; the timeout lets the loop
        // notice `stop`.
        let Ok(Ok((len, peer))) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buffer)).await
        else {
            continue;
        };
        let Some(query) = Query::parse(&buffer[..len]) else {
            if len >= 12 {
                let _ = socket
                    .send_to(&error_reply(&buffer[..len], RCODE_FORMERR), peer)
                    .await;
            }
            continue;
        };
        let address = match service_of(&query.name) {
            Some((service, namespace)) => lookup(&client, service, namespace).await,
            None => None,
        };
        let reply = query.reply(address);
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// `(service, namespace)` when `name` is `<service>.<namespace>.svc.cluster.local`.
fn service_of(name: &str) -> Option<(&str, &str)> {
    let name = name.trim_end_matches('.');
    let rest = name.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (service, namespace) = rest.split_once('.')?;
    (!service.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((service, namespace))
}

/// A headless Service answers with at most this many addresses (a reply stays well within
/// 512 bytes).
const MAX_ENDPOINTS: usize = 16;

/// The Service's ClusterIP, or the ready endpoints' addresses of a headless Service (possibly
/// none); `None` when it does not exist.
async fn lookup(client: &Client, service: &str, namespace: &str) -> Option<Vec<Ipv4Addr>> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let found = tokio::time::timeout(Duration::from_secs(2), services.get_opt(service))
        .await
        .ok()?
        .ok()??;
    let cluster_ip = found.spec?.cluster_ip?;
    if cluster_ip != "None" {
        return cluster_ip.parse().ok().map(|ip| vec![ip]);
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    let list = tokio::time::timeout(
        Duration::from_secs(2),
        slices.list(&ListParams::default().labels(&selector)),
    )
    .await
    .ok()?
    .ok()?;
    let mut addresses: Vec<Ipv4Addr> = list
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses.truncate(MAX_ENDPOINTS);
    Some(addresses)
}

/// One question of a standard query.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    id: u16,
    /// The RD bit of the query, echoed.
    recursion_desired: bool,
    /// Lower-case, dot-separated, without the root dot.
    name: String,
    qtype: u16,
    qclass: u16,
    /// The question section as received (echoed in the reply).
    question: Vec<u8>,
}

impl Query {
    fn parse(packet: &[u8]) -> Option<Self> {
        if packet.len() < 12 {
            return None;
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let flags = u16::from_be_bytes([packet[2], packet[3]]);
        let questions = u16::from_be_bytes([packet[4], packet[5]]);
        // A query (QR 0), standard opcode, exactly one question.
        if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || questions != 1 {
            return None;
        }
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*packet.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // No compression in a question, labels of at most 63 bytes.
            if len > 63 {
                return None;
            }
            let label = packet.get(at..at + len)?;
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
            at += len;
        }
        let fixed = packet.get(at..at + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        Some(Self {
            id,
            recursion_desired: flags & 0x0100 != 0,
            name: labels.join("."),
            qtype,
            qclass,
            question: packet[12..at + 4].to_vec(),
        })
    }

    /// The answer: the A records when asked for A and the Service has addresses, no record
    /// (NOERROR) for other types of a Service name, NXDOMAIN for anything else.
    fn reply(&self, addresses: Option<Vec<Ipv4Addr>>) -> Vec<u8> {
        let rcode = if addresses.is_some() {
            0
        } else {
            RCODE_NXDOMAIN
        };
        let answers = addresses
            .filter(|_| self.qtype == TYPE_A && self.qclass == CLASS_IN)
            .unwrap_or_default();
        let count = u16::try_from(answers.len()).unwrap_or(0);
        // QR, AA (we are the authority for the cluster domain), RA, RD echoed.
        let flags = 0x8400 | 0x0080 | (u16::from(self.recursion_desired) << 8) | rcode;
        let mut out = Vec::with_capacity(12 + self.question.len() + 16);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&self.question);
        for ip in answers.iter().take(usize::from(count)) {
            // The name as a pointer to the question's (offset 12).
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        out
    }
}

/// A header-only reply with `rcode` to a packet that could not be parsed as a query.
fn error_reply(packet: &[u8], rcode: u16) -> Vec<u8> {
    let mut out = packet[..12].to_vec();
    let flags = 0x8000 | rcode;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..12].fill(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            packet.push(u8::try_from(label.len()).unwrap());
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        packet
    }

    #[test]
    fn service_names_are_recognised_only_in_the_cluster_domain() {
        assert_eq!(
            service_of("ordo-reports.ns-1.svc.cluster.local"),
            Some(("ordo-reports", "ns-1"))
        );
        assert_eq!(
            service_of("bank.ns.svc.cluster.local."),
            Some(("bank", "ns"))
        );
        assert_eq!(service_of("bank.ns.svc"), None);
        assert_eq!(service_of("a.b.c.svc.cluster.local"), None);
        assert_eq!(service_of("example.com"), None);
    }

    #[test]
    fn an_a_query_gets_the_address_and_echoes_id_and_question() {
        let packet = query("Bank.NS.svc.cluster.local", TYPE_A);
        let parsed = Query::parse(&packet).unwrap();
        assert_eq!(parsed.name, "bank.ns.svc.cluster.local");
        let reply = parsed.reply(Some(vec![Ipv4Addr::new(10, 96, 0, 7)]));
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&reply[6..8], &[0, 1], "one answer");
        assert_eq!(&reply[12..packet.len()], &packet[12..]);
        assert_eq!(&reply[reply.len() - 4..], &[10, 96, 0, 7]);
    }

    #[test]
    fn other_types_get_no_record_and_unknown_names_nxdomain() {
        let parsed = Query::parse(&query("bank.ns.svc.cluster.local", 28)).unwrap();
        let reply = parsed.reply(Some(vec![Ipv4Addr::new(10, 96, 0, 7)]));
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(&reply[6..8], &[0, 0]);
        let parsed = Query::parse(&query("nothing.example.com", TYPE_A)).unwrap();
        let reply = parsed.reply(None);
        assert_eq!(reply[3] & 0x0f, 3);
        assert_eq!(&reply[6..8], &[0, 0]);
    }

    #[test]
    fn a_headless_service_gets_one_record_per_endpoint_or_none() {
        let parsed = Query::parse(&query("peers.ns.svc.cluster.local", TYPE_A)).unwrap();
        let reply = parsed.reply(Some(vec![
            Ipv4Addr::new(10, 88, 0, 4),
            Ipv4Addr::new(10, 88, 0, 5),
        ]));
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(&reply[6..8], &[0, 2], "two answers");
        assert_eq!(&reply[reply.len() - 20..reply.len() - 16], &[10, 88, 0, 4]);
        assert_eq!(&reply[reply.len() - 4..], &[10, 88, 0, 5]);
        let reply = parsed.reply(Some(Vec::new()));
        assert_eq!(
            reply[3] & 0x0f,
            0,
            "a Service without ready endpoints exists"
        );
        assert_eq!(&reply[6..8], &[0, 0]);
    }

    #[test]
    fn malformed_packets_are_not_queries() {
        assert_eq!(Query::parse(&[0; 5]), None);
        let mut truncated = query("bank.ns.svc.cluster.local", TYPE_A);
        truncated.truncate(20);
        assert_eq!(Query::parse(&truncated), None);
        let mut response = query("x.y", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(Query::parse(&response), None);
    }
}
