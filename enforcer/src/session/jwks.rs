//! JWT verification keys published as a JWK Set (RFC 7517), read from a file or fetched over
//! HTTPS, and refreshed so that an identity provider can rotate them.
//!
//! The request path only reads: the current set sits behind an [`ArcSwap`] and a background
//! task replaces it. The task reads or fetches every `refreshInterval`; a failed or refused
//! read (unreachable, not JSON, over [`MAX_JWKS_BYTES`] or [`MAX_JWKS_KEYS`], no usable key)
//! keeps the last good set, is logged and counted (`ordo_jwks_refreshes_total{result}`), and
//! is retried with a backoff from 1 s up to the interval (at most a minute).
//!
//! A token whose `kid` is not in the set (or any token while the set is empty) asks for an
//! early refresh, and its request waits for it, at most [`EARLY_REFRESH_WAIT`], before it is
//! verified again against the refreshed set: a key published after the last fetch is accepted
//! on its first request (as Envoy's `jwt_authn` does). The refresh is single-flight: requests
//! arriving while one is in flight wait for that one, never start their own. A new one starts
//! at most once per [`EARLY_REFRESH_EVERY`], so that random `kid`s cannot make the enforcer
//! fetch in a loop; outside that, or when the fetch fails or is late, the token is judged with
//! the keys at hand (refused).
//!
//! Sources are shared by configuration: a policy reload with the same `jwks` section keeps the
//! keys already fetched instead of starting from an empty set (which would refuse every token
//! until the first fetch). The task ends when the last policy using the source is dropped.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::config::JwksConfig;

/// Largest JWKS document accepted (identity providers publish a few kilobytes).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most keys accepted in one document.
pub const MAX_JWKS_KEYS: usize = 100;
/// Shortest time between two refreshes triggered by an unknown `kid`.
pub const EARLY_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Longest time a request waits for the early refresh its token asked for (a fetch answers in
/// milliseconds; a provider slower than this is not waited for on the request path).
pub const EARLY_REFRESH_WAIT: Duration = Duration::from_secs(2);
/// A fetch that has not completed by then fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait before retrying a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Refreshes by result, for the whole process (the metrics copy them: `runtime` owns them).
static REFRESH_OK: AtomicU64 = AtomicU64::new(0);
static REFRESH_UNCHANGED: AtomicU64 = AtomicU64::new(0);
static REFRESH_FAILED: AtomicU64 = AtomicU64::new(0);
/// Numbers every key set installed, so that a cache of verified tokens can tell which set
/// verified an entry (a token verified by a key since removed must not stay valid).
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Totals of refreshes by result: `ok` (a new set installed), `unchanged`, `failed`.
pub fn refresh_totals() -> [(&'static str, u64); 3] {
    [
        ("ok", REFRESH_OK.load(Ordering::Relaxed)),
        ("unchanged", REFRESH_UNCHANGED.load(Ordering::Relaxed)),
        ("failed", REFRESH_FAILED.load(Ordering::Relaxed)),
    ]
}

/// One usable key of a set.
pub struct JwkKey {
    pub kid: Option<String>,
    /// The algorithms a token signed with this key may name: the key's `alg`, or every
    /// algorithm of its type and curve when it has none.
    pub algorithms: &'static [Algorithm],
    pub key: DecodingKey,
}

/// The keys of one JWKS document.
pub struct KeySet {
    pub keys: Vec<JwkKey>,
    /// Identifies this set among all sets installed in the process (0: none yet).
    pub epoch: u64,
    /// Hash of the document the set was parsed from (an unchanged document is not parsed).
    digest: u64,
}

impl KeySet {
    fn empty() -> Self {
        Self {
            keys: Vec::new(),
            epoch: 0,
            digest: 0,
        }
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Every algorithm a JWKS key can be used with.
pub const JWKS_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The algorithms a key may verify, from its `alg` or else its `kty` and `crv`.
fn algorithms_of(jwk: &Jwk) -> Result<&'static [Algorithm], String> {
    let by_type: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            ref other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        // A shared secret has no place in a published key set.
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let Some(alg) = &jwk.common.key_algorithm else {
        return Ok(by_type);
    };
    let named: &'static [Algorithm] = match alg {
        KeyAlgorithm::RS256 => &[Algorithm::RS256],
        KeyAlgorithm::RS384 => &[Algorithm::RS384],
        KeyAlgorithm::RS512 => &[Algorithm::RS512],
        KeyAlgorithm::PS256 => &[Algorithm::PS256],
        KeyAlgorithm::PS384 => &[Algorithm::PS384],
        KeyAlgorithm::PS512 => &[Algorithm::PS512],
        KeyAlgorithm::ES256 => &[Algorithm::ES256],
        KeyAlgorithm::ES384 => &[Algorithm::ES384],
        KeyAlgorithm::EdDSA => &[Algorithm::EdDSA],
        other => return Err(format!("unsupported alg {other:?}")),
    };
    if !by_type.contains(&named[0]) {
        return Err(format!("alg {alg:?} does not match the key type"));
    }
    Ok(named)
}

/// Parses a JWKS document. Keys that cannot verify signatures here (encryption keys, other
/// curves, symmetric keys) are skipped; a document that is not a JWKS, is too large, has too
/// many keys or no usable key is refused.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<JwkKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "document of {} bytes exceeds the limit of {MAX_JWKS_BYTES}",
            bytes.len()
        ));
    }
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (a JSON object with \"keys\"): {e}"))?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "{} keys exceed the limit of {MAX_JWKS_KEYS}",
            doc.keys.len()
        ));
    }
    let mut keys = Vec::with_capacity(doc.keys.len());
    let mut skipped = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    return Err("an encryption key (use: enc)".into());
                }
                let algorithms = algorithms_of(&jwk)?;
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                Ok(JwkKey {
                    kid: jwk.common.key_id,
                    algorithms,
                    key,
                })
            });
        match parsed {
            Ok(k) => keys.push(k),
            Err(reason) => skipped.push(format!("keys[{i}]: {reason}")),
        }
    }
    if keys.is_empty() {
        return Err(if skipped.is_empty() {
            "no keys".into()
        } else {
            format!("no usable signing key ({})", skipped.join("; "))
        });
    }
    if !skipped.is_empty() {
        tracing::info!(skipped = %skipped.join("; "), "JWKS keys skipped");
    }
    Ok(keys)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Why a JWKS source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("session.jwtVerification.jwks.file: {path}: {message}")]
    File { path: String, message: String },
    #[error("session.jwtVerification.jwks.caFile: {path}: {message}")]
    Ca { path: String, message: String },
    #[error("session.jwtVerification.jwks: exactly one of file, uri must be set")]
    Source,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

enum Fetcher {
    File(std::path::PathBuf),
    Uri {
        uri: http::Uri,
        client: Box<HttpsClient>,
    },
}

impl Fetcher {
    fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Uri { uri, .. } => uri.to_string(),
        }
    }

    async fn fetch(&self) -> Result<Bytes, String> {
        match self {
            Self::File(path) => read_file(path),
            Self::Uri { uri, client } => {
                let request = http::Request::get(uri.clone())
                    .header(http::header::ACCEPT, "application/json")
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                let work = async {
                    let response = client.request(request).await.map_err(|e| {
                        use std::error::Error as _;
                        match e.source() {
                            Some(cause) => format!("{e}: {cause}"),
                            None => e.to_string(),
                        }
                    })?;
                    if !response.status().is_success() {
                        return Err(format!("answered {}", response.status()));
                    }
                    Limited::new(response.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .map_err(|e| {
                            if e.is::<http_body_util::LengthLimitError>() {
                                format!("document exceeds the limit of {MAX_JWKS_BYTES} bytes")
                            } else {
                                e.to_string()
                            }
                        })
                };
                tokio::time::timeout(FETCH_TIMEOUT, work)
                    .await
                    .map_err(|_| format!("no complete answer within {FETCH_TIMEOUT:?}"))?
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Bytes, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // One byte more than allowed, so that an oversized file is recognized without reading it all.
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "document exceeds the limit of {MAX_JWKS_BYTES} bytes"
        ));
    }
    Ok(Bytes::from(bytes))
}

fn https_client(ca_file: Option<&Path>) -> Result<HttpsClient, JwksError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(errors = ?native.errors, "some system CA certificates could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |message: String| JwksError::Ca {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca_error(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("no certificate found".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Ca {
            path: String::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

struct Shared {
    set: ArcSwap<KeySet>,
    /// Wakes the refresh task: early refreshes, and the end of the source.
    wake: Arc<Notify>,
    early: Mutex<Early>,
    /// The last early refresh a completed read covered (read after it was asked for): requests
    /// waiting for ticket `n` wait until this is at least `n`.
    done: watch::Sender<u64>,
    what: String,
}

/// Early refreshes asked for.
struct Early {
    /// When the last one was started (none yet: the first may start at once).
    last: Option<Instant>,
    /// Tickets handed out: the `n`-th early refresh started is ticket `n`.
    asked: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The task holds only a weak reference: wake it so that it sees it is no longer needed.
        self.wake.notify_one();
    }
}

impl Shared {
    /// Installs a newly read document, or says why not (the current set stays).
    fn apply(&self, result: Result<Bytes, String>) -> bool {
        let outcome = result.and_then(|bytes| {
            let d = digest(&bytes);
            if self.set.load().digest == d && d != 0 {
                return Ok(None);
            }
            parse_jwks(&bytes).map(|keys| Some((keys, d)))
        });
        match outcome {
            Ok(None) => {
                REFRESH_UNCHANGED.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Some((keys, digest))) => {
                let epoch = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                tracing::info!(source = %self.what, keys = keys.len(), kids = ?kids, "JWKS installed");
                self.set.store(Arc::new(KeySet {
                    keys,
                    epoch,
                    digest,
                }));
                REFRESH_OK.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(reason) => {
                REFRESH_FAILED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    source = %self.what,
                    error = %reason,
                    kept_keys = self.set.load().keys.len(),
                    "JWKS refresh failed; keeping the last good key set"
                );
                false
            }
        }
    }
}

/// A refreshed JWKS. Cheap to clone; the refresh task ends with the last clone.
#[derive(Clone)]
pub struct JwksSource {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("source", &self.shared.what)
            .field("keys", &self.shared.set.load().keys.len())
            .finish()
    }
}

/// Live sources by configuration, so that a reload with an unchanged `jwks` section reuses
/// the keys at hand.
static SOURCES: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl JwksSource {
    /// The source for `config`: a live one with the same configuration, or a new one. A new
    /// `file` source reads the file now (an unreadable or invalid file is a configuration
    /// error); a new `uri` source starts empty and fetches in the background.
    pub fn new(config: &JwksConfig) -> Result<Self, JwksError> {
        let id = format!("{config:?}");
        let mut sources = SOURCES.lock();
        sources.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = sources.get(&id).and_then(Weak::upgrade) {
            return Ok(Self { shared });
        }
        let fetcher = match (&config.file, &config.uri) {
            (Some(path), None) => Fetcher::File(path.clone()),
            (None, Some(uri)) => Fetcher::Uri {
                uri: uri.parse().map_err(|_| JwksError::Source)?,
                client: Box::new(https_client(config.ca_file.as_deref())?),
            },
            _ => return Err(JwksError::Source),
        };
        let mut initial = KeySet::empty();
        if let Fetcher::File(path) = &fetcher {
            let file_error = |message: String| JwksError::File {
                path: path.display().to_string(),
                message,
            };
            let bytes = read_file(path).map_err(file_error)?;
            let keys = parse_jwks(&bytes).map_err(file_error)?;
            initial = KeySet {
                keys,
                epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
                digest: digest(&bytes),
            };
        }
        let wait_first = matches!(fetcher, Fetcher::File(_));
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            set: ArcSwap::from_pointee(initial),
            wake: Arc::clone(&wake),
            early: Mutex::new(Early {
                last: None,
                asked: 0,
            }),
            done: watch::Sender::new(0),
            what: fetcher.describe(),
        });
        let task = refresh_loop(
            Arc::downgrade(&shared),
            wake,
            fetcher,
            config.refresh(),
            wait_first,
        );
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            // Compiled outside a runtime (a tool checking a config): a thread of its own.
            Err(_) => {
                let spawned =
                    std::thread::Builder::new()
                        .name("ordo-jwks".into())
                        .spawn(move || {
                            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                            {
                                rt.block_on(task);
                            }
                        });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the JWKS refresh thread");
                }
            }
        }
        sources.insert(id, Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    /// The current key set (lock-free).
    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.shared.set.load()
    }

    /// Asks for an early refresh (a token named a `kid` not in the set): the ticket of the
    /// refresh in flight if there is one, else of a new one if none was started within
    /// [`EARLY_REFRESH_EVERY`], else none. Never waits.
    pub fn request_refresh(&self) -> Option<u64> {
        let s = &self.shared;
        let mut early = s.early.lock();
        if early.asked > *s.done.borrow() {
            return Some(early.asked);
        }
        if early
            .last
            .is_some_and(|last| last.elapsed() < EARLY_REFRESH_EVERY)
        {
            return None;
        }
        early.last = Some(Instant::now());
        early.asked += 1;
        s.wake.notify_one();
        Some(early.asked)
    }

    /// Asks for an early refresh (see [`Self::request_refresh`]) and waits until a read that
    /// started after it completed, or until `deadline`. True when such a read completed (it
    /// may have failed: the caller looks at the set again); false when no refresh may start
    /// now or it is late.
    pub async fn refreshed(&self, deadline: tokio::time::Instant) -> bool {
        let Some(ticket) = self.request_refresh() else {
            return false;
        };
        let mut done = self.shared.done.subscribe();
        matches!(
            tokio::time::timeout_at(deadline, done.wait_for(|d| *d >= ticket)).await,
            Ok(Ok(_))
        )
    }
}

async fn refresh_loop(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    fetcher: Fetcher,
    every: Duration,
    mut wait_first: bool,
) {
    let max_backoff = every.min(MAX_BACKOFF);
    let mut backoff = Duration::from_secs(1).min(max_backoff);
    let mut wait = every;
    loop {
        if wait_first {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
        wait_first = true;
        let Some(s) = shared.upgrade() else {
            return;
        };
        // The early refreshes asked for so far are answered by this read (it starts after
        // them); one asked for while it runs has woken `wake` and gets the next read.
        let covers = s.early.lock().asked;
        let result = fetcher.fetch().await;
        let applied = s.apply(result);
        s.done.send_if_modified(|done| {
            let newer = covers > *done;
            if newer {
                *done = covers;
            }
            newer
        });
        if applied {
            backoff = Duration::from_secs(1).min(max_backoff);
            wait = every;
        } else {
            wait = backoff;
            backoff = (backoff * 2).min(max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_typed_by_alg_or_kty() {
        let doc = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"OKP","crv":"Ed25519","kid":"d","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algorithms, &[Algorithm::ES256]);
        assert_eq!(keys[1].algorithms, &[Algorithm::EdDSA]);
    }

    const ED_KEY: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"d","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn a_reload_with_the_same_section_keeps_the_source_and_its_keys() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), ED_KEY).unwrap();
        let config = JwksConfig {
            file: Some(file.path().to_path_buf()),
            uri: None,
            ca_file: None,
            refresh_interval: None,
        };
        let first = JwksSource::new(&config).unwrap();
        let again = JwksSource::new(&config).unwrap();
        assert!(Arc::ptr_eq(&first.shared, &again.shared));
        assert_eq!(again.current().keys.len(), 1);
        let other = JwksSource::new(&JwksConfig {
            refresh_interval: Some(crate::config::Duration::from_secs(7)),
            ..config.clone()
        })
        .unwrap();
        assert!(!Arc::ptr_eq(&first.shared, &other.shared));
        // Once every policy using it is gone, a new one reads the file anew.
        let epoch = first.current().epoch;
        drop((first, again));
        assert!(JwksSource::new(&config).unwrap().current().epoch > epoch);
    }

    const EC_KEY: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn file_source(file: &tempfile::NamedTempFile) -> JwksSource {
        JwksSource::new(&JwksConfig {
            file: Some(file.path().to_path_buf()),
            uri: None,
            ca_file: None,
            refresh_interval: Some(crate::config::Duration::from_secs(3600)),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_early_refresh_is_awaited_and_then_rate_limited() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), ED_KEY).unwrap();
        let source = file_source(&file);
        assert!(!source.current().has_kid("e"));
        // A key published since the last read: the refresh that waits for it brings it.
        std::fs::write(file.path(), EC_KEY).unwrap();
        let deadline = tokio::time::Instant::now() + EARLY_REFRESH_WAIT;
        assert!(source.refreshed(deadline).await);
        assert!(source.current().has_kid("e"));
        // The next one within the interval neither starts a read nor waits.
        std::fs::write(file.path(), ED_KEY).unwrap();
        let asked = tokio::time::Instant::now();
        assert!(!source.refreshed(asked + EARLY_REFRESH_WAIT).await);
        assert!(asked.elapsed() < Duration::from_millis(100));
        assert_eq!(source.request_refresh(), None);
        assert!(source.current().has_kid("e"));
    }

    /// A source without a refresh task: its early refreshes stay in flight until the test
    /// completes them.
    fn detached() -> JwksSource {
        JwksSource {
            shared: Arc::new(Shared {
                set: ArcSwap::from_pointee(KeySet::empty()),
                wake: Arc::new(Notify::new()),
                early: Mutex::new(Early {
                    last: None,
                    asked: 0,
                }),
                done: watch::Sender::new(0),
                what: "test".into(),
            }),
        }
    }

    #[tokio::test]
    async fn requests_during_an_early_refresh_share_it_and_wait_a_bounded_time() {
        let source = detached();
        assert_eq!(source.request_refresh(), Some(1));
        // In flight: every request joins ticket 1 (never starts a second read).
        for _ in 0..100 {
            assert_eq!(source.request_refresh(), Some(1));
        }
        // A read that does not complete is waited for until the deadline only.
        let asked = tokio::time::Instant::now();
        assert!(!source.refreshed(asked + Duration::from_millis(200)).await);
        assert!(asked.elapsed() >= Duration::from_millis(200));
        assert!(asked.elapsed() < EARLY_REFRESH_WAIT);
        // Waiters of ticket 1 are released when the read answering it completes.
        let waiter = {
            let source = source.clone();
            tokio::spawn(async move {
                source
                    .refreshed(tokio::time::Instant::now() + EARLY_REFRESH_WAIT)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        source.shared.done.send_replace(1);
        assert!(waiter.await.unwrap());
        // Then none until EARLY_REFRESH_EVERY has passed since ticket 1 started.
        assert_eq!(source.request_refresh(), None);
        source.shared.early.lock().last = Instant::now().checked_sub(EARLY_REFRESH_EVERY);
        assert_eq!(source.request_refresh(), Some(2));
    }

    #[test]
    fn bad_documents_are_refused_with_the_reason() {
        assert!(parse_jwks(b"<html>").err().unwrap().contains("not a JWKS"));
        assert!(
            parse_jwks(br#"{"keys":[]}"#)
                .err()
                .unwrap()
                .contains("no keys")
        );
        let many = format!(
            "{{\"keys\":[{}]}}",
            vec!["{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"; MAX_JWKS_KEYS + 1].join(",")
        );
        assert!(
            parse_jwks(many.as_bytes())
                .err()
                .unwrap()
                .contains("exceed the limit")
        );
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(
            parse_jwks(&huge)
                .err()
                .unwrap()
                .contains("exceeds the limit")
        );
        let mismatch = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"ES256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(
            parse_jwks(mismatch)
                .err()
                .unwrap()
                .contains("does not match")
        );
    }
}
