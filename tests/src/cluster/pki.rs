//! The certificates and keys of one throw-away control plane, generated with rcgen.
//!
//! One CA signs the API server's serving certificate and one client certificate per
//! identity: the admin (group `system:masters`), kube-controller-manager and kube-scheduler
//! (the users their bootstrap RBAC roles are bound to) and the real node's kubelet. A second
//! CA, the front proxy's, signs the client certificate the API server presents to aggregated
//! API servers and webhooks that authenticate with request headers, as in a kubeadm cluster. A separate ECDSA key
//! pair signs service-account tokens. Private keys are written with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every credential file the components are started with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: CertFiles,
    pub apiserver_serving: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    /// The kubelet of the real node (`system:node:<name>` in `system:nodes`, as the Node
    /// authorizer and the NodeRestriction admission plugin expect); unused without one.
    pub node: CertFiles,
    /// The API server's client certificate towards kubelets (logs, exec), in
    /// `system:masters` as the kubelet's webhook authorizer must allow it everything.
    pub apiserver_kubelet_client: CertFiles,
    /// Trust anchor for request-header authentication (`--requestheader-client-ca-file`).
    pub front_proxy_ca: CertFiles,
    /// The API server's client certificate towards extension API servers.
    pub front_proxy_client: CertFiles,
    /// Signs service-account tokens (kube-apiserver, kube-controller-manager).
    pub service_account_key: PathBuf,
    /// Verifies service-account tokens (kube-apiserver).
    pub service_account_public_key: PathBuf,
}

/// Generates all credentials into `dir`. `service_ip` is the first address of the service
/// range: in-cluster clients reach the API server as `kubernetes.default.svc` on it.
pub fn generate(dir: &Path, service_ip: IpAddr) -> anyhow::Result<Credentials> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let (ca, issuer) = certificate_authority(dir, "ca", "ordo-test-ca")?;

    let serving_names = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        service_ip.to_string(),
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ];
    let apiserver_serving = leaf(
        dir,
        "apiserver",
        serving_names,
        name("kube-apiserver", None),
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    )?;
    let client = |file: &str, user: &str, group: Option<&str>| {
        leaf(
            dir,
            file,
            Vec::new(),
            name(user, group),
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )
    };
    let admin = client("admin", "ordo-admin", Some("system:masters"))?;
    let controller_manager = client("controller-manager", "system:kube-controller-manager", None)?;
    let scheduler = client("scheduler", "system:kube-scheduler", None)?;
    let node = client(
        "node",
        &format!("system:node:{}", super::node::REAL_NODE_NAME),
        Some("system:nodes"),
    )?;
    let apiserver_kubelet_client = client(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
    )?;

    let (front_proxy_ca, front_proxy_issuer) =
        certificate_authority(dir, "front-proxy-ca", "ordo-test-front-proxy-ca")?;
    let front_proxy_client = leaf(
        dir,
        "front-proxy-client",
        Vec::new(),
        name(FRONT_PROXY_CLIENT, None),
        ExtendedKeyUsagePurpose::ClientAuth,
        &front_proxy_issuer,
    )?;

    let sa_key = KeyPair::generate().context("generating the service-account key")?;
    let service_account_key = dir.join("sa.key");
    write_private(&service_account_key, &sa_key.serialize_pem())?;
    let service_account_public_key = dir.join("sa.pub");
    std::fs::write(&service_account_public_key, sa_key.public_key_pem())
        .with_context(|| format!("writing {}", service_account_public_key.display()))?;

    Ok(Credentials {
        ca,
        apiserver_serving,
        admin,
        controller_manager,
        scheduler,
        node,
        apiserver_kubelet_client,
        front_proxy_ca,
        front_proxy_client,
        service_account_key,
        service_account_public_key,
    })
}

/// The common name of the front-proxy client (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A self-signed CA, written as `<file>.crt`/`<file>.key`, and the issuer that signs with it.
fn certificate_authority(
    dir: &Path,
    file: &str,
    common_name: &str,
) -> anyhow::Result<(CertFiles, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().with_context(|| format!("generating the {file} key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("signing the {file} certificate"))?;
    let files = write_pair(dir, file, &cert.pem(), &key)?;
    Ok((files, Issuer::new(params, key)))
}

/// A subject with a common name (Kubernetes: the user) and an organisation (the group).
fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn leaf(
    dir: &Path,
    file: &str,
    subject_alt_names: Vec<String>,
    subject: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<CertFiles> {
    let key = KeyPair::generate().with_context(|| format!("generating the {file} key"))?;
    let mut params = CertificateParams::new(subject_alt_names)
        .with_context(|| format!("{file} certificate parameters"))?;
    params.distinguished_name = subject;
    // ECDSA keys only sign (TLS 1.2/1.3 handshakes); they never encipher.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the {file} certificate"))?;
    write_pair(dir, file, &cert.pem(), &key)
}

fn write_pair(dir: &Path, file: &str, cert_pem: &str, key: &KeyPair) -> anyhow::Result<CertFiles> {
    let cert = dir.join(format!("{file}.crt"));
    std::fs::write(&cert, cert_pem).with_context(|| format!("writing {}", cert.display()))?;
    let key_path = dir.join(format!("{file}.key"));
    write_private(&key_path, &key.serialize_pem())?;
    Ok(CertFiles {
        cert,
        key: key_path,
    })
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_credential_with_private_keys_locked_down() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let creds = generate(dir.path(), "10.96.0.1".parse().unwrap()).unwrap();
        for pair in [
            &creds.ca,
            &creds.apiserver_serving,
            &creds.admin,
            &creds.controller_manager,
            &creds.scheduler,
            &creds.node,
            &creds.apiserver_kubelet_client,
            &creds.front_proxy_ca,
            &creds.front_proxy_client,
        ] {
            let cert = std::fs::read_to_string(&pair.cert).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
            let key = std::fs::read_to_string(&pair.key).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
            let mode = pair.key.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", pair.key.display());
        }
        let public = std::fs::read_to_string(&creds.service_account_public_key).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        // Two runs never share a CA: each control plane trusts only its own.
        let other = tempfile::tempdir().unwrap();
        let creds2 = generate(other.path(), "10.96.0.1".parse().unwrap()).unwrap();
        assert_ne!(
            std::fs::read(&creds.ca.cert).unwrap(),
            std::fs::read(&creds2.ca.cert).unwrap()
        );
    }
}
