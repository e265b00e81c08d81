//! TLS for the operator's HTTPS server (webhook + reports): the serving certificate and key
//! are read from PEM files (a mounted Secret in a cluster) and reloaded when they change, so
//! that cert-manager or the chart can rotate them without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Errors loading the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("unsupported private key in {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("building the TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads a certificate chain and its private key from PEM files.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError::Pem {
            path: cert_path.to_path_buf(),
            message: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|err| TlsError::Pem {
        path: key_path.to_path_buf(),
        message: err.to_string(),
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|err| TlsError::Key {
            path: key_path.to_path_buf(),
            message: err.to_string(),
        })?;
    Ok(CertifiedKey::new(certs, signing_key))
}

/// A certificate resolver whose certificate can be swapped while connections are served.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ReloadingCert {
    /// Loads the files once; fails when they are not usable, so a bad start is loud.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        }))
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads the files and swaps the certificate in; on error the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// Polls the files every `every` and reloads when their content changed (a Secret
    /// volume swaps a `..data` symlink, so modification times alone are not reliable).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        every: Duration,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let this = Arc::clone(self);
        // Fingerprint now, not when the task first runs: a change in between must count.
        let mut last = this.fingerprint();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = this.fingerprint();
                if now == last {
                    continue;
                }
                match this.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %this.cert_path.display(), "serving certificate reloaded");
                        metrics.tls_reloads.with_label_values(&["ok"]).inc();
                        last = now;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "serving certificate not reloaded; keeping the previous one");
                        metrics.tls_reloads.with_label_values(&["error"]).inc();
                    }
                }
            }
        });
    }

    fn fingerprint(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&self.cert_path).ok()?,
            std::fs::read(&self.key_path).ok()?,
        ))
    }

    /// A rustls server config that serves whatever certificate is current (HTTP/1.1 only:
    /// the API server speaks HTTP/1.1 or h2 to webhooks, enforcers speak HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    #[tokio::test]
    async fn certificate_is_reloaded_when_the_files_change_and_kept_when_they_break() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = write_cert(dir.path(), "first.example");
        let cert =
            ReloadingCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        assert_eq!(cert.current().cert[0].as_ref(), first.as_slice());
        assert!(cert.server_config().is_ok());
        let metrics = Arc::new(Metrics::new().unwrap());
        let stop = CancellationToken::new();
        cert.spawn_watcher(
            Duration::from_millis(20),
            Arc::clone(&metrics),
            stop.clone(),
        );
        let second = write_cert(dir.path(), "second.example");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cert.current().cert[0].as_ref() != second.as_slice() {
            assert!(
                std::time::Instant::now() < deadline,
                "the new certificate was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        assert!(cert.reload().is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            cert.current().cert[0].as_ref(),
            second.as_slice(),
            "a broken file keeps the previous certificate"
        );
        assert!(metrics.tls_reloads.with_label_values(&["error"]).get() >= 1);
        stop.cancel();
    }
}
