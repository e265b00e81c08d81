//! kubeconfig files for the admin user and for each component's own identity.

use std::path::Path;

use anyhow::Context;

use super::pki::CertFiles;

/// Writes a kubeconfig with one cluster, one user and one current context. Certificates are
/// referenced by path: they live next to the kubeconfig in the cluster directory.
pub fn write(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &str,
    client: &CertFiles,
) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "ordo-test",
            "cluster": {
                "server": server,
                "certificate-authority": ca_cert,
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate": client.cert,
                "client-key": client.key,
            },
        }],
        "contexts": [{
            "name": "ordo-test",
            "context": { "cluster": "ordo-test", "user": user, "namespace": "default" },
        }],
        "current-context": "ordo-test",
        "preferences": {},
    });
    let yaml = serde_yaml_ng::to_string(&config).context("serialising the kubeconfig")?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let client = CertFiles {
            cert: dir.path().join("admin.crt"),
            key: dir.path().join("admin.key"),
        };
        write(
            &path,
            "https://127.0.0.1:6443",
            &dir.path().join("ca.crt"),
            "admin",
            &client,
        )
        .unwrap();
        let parsed = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("ordo-test"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.client_certificate.as_deref(),
            Some(client.cert.to_str().unwrap())
        );
    }
}
