//! JWT verification from a JWKS served over HTTPS on loopback (a CA and a server certificate
//! made by rcgen, trusted through `caFile`, or through the system trust store in a spawned
//! enforcer): RS256, RS384, RS512, PS256, ES256, ES384 and EdDSA tokens verify; a key rotation
//! refuses no honest request and a removed key's tokens are refused; a key published after the
//! last fetch is accepted on its first request (the request waits, bounded, for one shared
//! early fetch); an endpoint down at start; the rate limit of refreshes triggered by unknown
//! `kid`s; a huge or malformed document refused with the last good set kept; a JWKS file
//! re-read when it changes, in place or swapped the way the kubelet updates a mounted ConfigMap.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISSUER: &str = "https://idp.example/realms/shop";
const AUDIENCE: &str = "shop-api";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key with its public JWK.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn token_for(&self, sub: &str, iss: &str, aud: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(
            &header,
            &serde_json::json!({ "sub": sub, "exp": now() + 600, "iss": iss, "aud": aud }),
            &self.encoding,
        )
        .unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_for(sub, ISSUER, AUDIENCE)
    }
}

fn ec_key(kid: &str) -> SigningKey {
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    // Uncompressed point: 0x04 || x || y.
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    SigningKey {
        alg: Algorithm::ES256,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..]),
        }),
    }
}

/// A P-384 key, published without `alg` (its curve names ES384).
fn ec384_key(kid: &str) -> SigningKey {
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    // Uncompressed point: 0x04 || x || y, 48 bytes each.
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 97);
    SigningKey {
        alg: Algorithm::ES384,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-384", "use": "sig", "kid": kid,
            "x": B64.encode(&raw[1..49]), "y": B64.encode(&raw[49..]),
        }),
    }
}

fn ed_key(kid: &str) -> SigningKey {
    let pair = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    SigningKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
            "x": B64.encode(pair.public_key_raw()),
        }),
    }
}

/// The RSA fixture (ring cannot generate RSA keys), published with `alg: RS256`.
fn rsa_key(kid: &str) -> SigningKey {
    rsa_key_for(kid, Algorithm::RS256, Some("RS256"))
}

/// The RSA fixture signing with `alg`, published with `published` as its JWK `alg` (none: the
/// key may verify every RSA algorithm).
fn rsa_key_for(kid: &str, alg: Algorithm, published: Option<&str>) -> SigningKey {
    use x509_parser::prelude::FromDer as _;
    let public = std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&public).unwrap();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents).unwrap();
    let x509_parser::public_key::PublicKey::RSA(rsa) = spki.parsed().unwrap() else {
        panic!("not an RSA key");
    };
    let strip = |b: &[u8]| {
        let start = b.iter().position(|x| *x != 0).unwrap_or(0);
        B64.encode(&b[start..])
    };
    let private = std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap();
    let mut jwk = serde_json::json!({
        "kty": "RSA", "use": "sig", "kid": kid,
        "n": strip(rsa.modulus), "e": strip(rsa.exponent),
    });
    if let Some(published) = published {
        jwk["alg"] = published.into();
    }
    SigningKey {
        alg,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(&private).unwrap(),
        jwk,
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
        .to_string()
}

/// A JWKS endpoint over HTTPS: serves `document` at any path, `delay` after the request came,
/// and counts the fetches.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    delay: Arc<Mutex<Duration>>,
    fetches: Arc<AtomicUsize>,
    ca_file: tempfile::NamedTempFile,
    stop: Arc<AtomicBool>,
}

struct Pki {
    ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        tls: Arc::new(tls),
    }
}

impl JwksServer {
    /// Listens on `addr` (port 0: any) with a certificate of `pki`.
    async fn start_on(addr: SocketAddr, document: String, pki: Pki) -> Self {
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca_file, pki.ca_pem.as_bytes()).unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.tls);
        let (d, w, f, s) = (
            Arc::clone(&document),
            Arc::clone(&delay),
            Arc::clone(&fetches),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let (acceptor, d, w, f) = (
                    acceptor.clone(),
                    Arc::clone(&d),
                    Arc::clone(&w),
                    Arc::clone(&f),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().clone();
                        let delay = *w.lock();
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            resp.headers_mut().insert(
                                "content-type",
                                "application/jwk-set+json".parse().unwrap(),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            delay,
            fetches,
            ca_file,
            stop,
        }
    }

    async fn start(document: String) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), document, pki()).await
    }

    fn set(&self, document: String) {
        *self.document.lock() = document;
    }

    /// Answers every later fetch `delay` after it came.
    fn delay(&self, delay: Duration) {
        *self.delay.lock() = delay;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Waits until the enforcer has fetched `n` more times (so it has seen the document).
    async fn wait_fetches(&self, n: usize) {
        self.wait_total(self.fetches() + n).await;
    }

    /// Waits until the enforcer has fetched `target` times in all.
    async fn wait_total(&self, target: usize) {
        for _ in 0..200 {
            if self.fetches() >= target {
                // The fetch was answered; give the enforcer a moment to install the set.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the enforcer fetched the JWKS {} times, not {target}",
            self.fetches()
        );
    }

    fn uri(&self) -> String {
        format!("https://127.0.0.1:{}/realms/shop/certs", self.addr.port())
    }

    fn ca(&self) -> String {
        self.ca_file.path().display().to_string()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An enforcer verifying tokens against a JWKS (`source` is the YAML of `jwks`), refusing
/// invalid ones with 401.
fn config(source: &str) -> String {
    format!(
        r#"
upstream: {{ url: "http://{{upstream}}" }}
mode: Enforce
session:
  identifiers:
    - jwtClaim: {{ claim: sub }}
  jwtVerification:
    onInvalid: Reject
    issuer: {ISSUER}
    audience: {AUDIENCE}
    jwks: {source}
"#
    )
}

fn uri_source(server_uri: &str, ca: &str, refresh: &str) -> String {
    format!("{{ uri: \"{server_uri}\", caFile: \"{ca}\", refreshInterval: {refresh} }}")
}

async fn status(c: &TestClient, e: &ordo_enforcer::runtime::RunningEnforcer, token: &str) -> u16 {
    get(
        c,
        e,
        "/api/me",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .status
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_verify_against_a_fetched_jwks() {
    let (rsa, ec, ed, stranger) = (
        rsa_key("rsa-1"),
        ec_key("ec-1"),
        ed_key("ed-1"),
        ec_key("ec-1"),
    );
    let server = JwksServer::start(jwks(&[&rsa, &ec, &ed])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    for key in [&rsa, &ec, &ed] {
        assert_eq!(
            status(&c, &e, &key.token("alice")).await,
            200,
            "{:?}",
            key.alg
        );
    }
    // Same kid, another key: the signature does not verify.
    assert_eq!(status(&c, &e, &stranger.token("alice")).await, 401);
    // Issuer and audience are checked.
    assert_eq!(
        status(&c, &e, &ec.token_for("alice", "https://evil", AUDIENCE)).await,
        401
    );
    assert_eq!(
        status(&c, &e, &ec.token_for("alice", ISSUER, "other-api")).await,
        401
    );
    // A key used with another algorithm than its own (alg confusion) is refused.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(
        &header,
        &serde_json::json!({ "sub": "x", "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE }),
        &EncodingKey::from_secret(rsa.jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(status(&c, &e, &confused).await, 401);
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 3.0, "{m}");
    assert!(
        metric_value(&m, "ordo_jwks_refreshes_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn rs384_rs512_ps256_and_es384_tokens_verify_against_a_fetched_jwks() {
    let rs384 = rsa_key_for("rsa-384", Algorithm::RS384, Some("RS384"));
    let rs512 = rsa_key_for("rsa-512", Algorithm::RS512, Some("RS512"));
    let ps256 = rsa_key_for("rsa-ps256", Algorithm::PS256, Some("PS256"));
    // Without `alg` an RSA key verifies any RSA algorithm (Entra ID and Auth0 publish such keys).
    let unnamed = rsa_key_for("rsa-any", Algorithm::PS256, None);
    let es384 = ec384_key("ec-384");
    let server = JwksServer::start(jwks(&[&rs384, &rs512, &ps256, &unnamed, &es384])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    for key in [&rs384, &rs512, &ps256, &unnamed, &es384] {
        assert_eq!(
            status(&c, &e, &key.token("alice")).await,
            200,
            "{:?} ({})",
            key.alg,
            key.kid
        );
    }
    // A key published for one algorithm verifies no other, even of its own type: RS512 and
    // PS256 signatures by the very key published as RS384, and the reverse.
    for (alg, kid) in [
        (Algorithm::RS512, "rsa-384"),
        (Algorithm::PS256, "rsa-384"),
        (Algorithm::RS384, "rsa-ps256"),
        (Algorithm::RS256, "rsa-512"),
    ] {
        let other = rsa_key_for(kid, alg, None);
        assert_eq!(
            status(&c, &e, &other.token("mallory")).await,
            401,
            "{alg:?} under {kid}"
        );
    }
    // Same kid, another P-384 key: the signature does not verify.
    assert_eq!(
        status(&c, &e, &ec384_key("ec-384").token("mallory")).await,
        401
    );
    // Issuer and audience are checked for these algorithms too.
    assert_eq!(
        status(&c, &e, &ps256.token_for("alice", "https://evil", AUDIENCE)).await,
        401
    );
    assert_eq!(
        status(&c, &e, &es384.token_for("alice", ISSUER, "other-api")).await,
        401
    );
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 5.0, "{m}");
    e.shutdown().await;
}

#[tokio::test]
async fn rotation_refuses_no_honest_request_and_then_the_removed_key() {
    let (old, new) = (ec_key("2026-01"), rsa_key("2026-02"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1s")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;

    // An honest client sends requests all along, with a token from the key the provider
    // signs with at the time; distinct subjects so that every request is verified anew.
    let signing = Arc::new(Mutex::new(old.token("u0")));
    let refused = Arc::new(Mutex::new(Vec::<u16>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let honest = {
        let (signing, refused, sent, running) = (
            Arc::clone(&signing),
            Arc::clone(&refused),
            Arc::clone(&sent),
            Arc::clone(&running),
        );
        let (c, addr) = (c.clone(), e.proxy_addr);
        tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let token = signing.lock().clone();
                let a = send(
                    &c,
                    "GET",
                    &format!("http://{addr}/api/me"),
                    &[("authorization", &format!("Bearer {token}"))],
                    "",
                )
                .await;
                sent.fetch_add(1, Ordering::SeqCst);
                if a.status != 200 {
                    refused.lock().push(a.status);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1. The provider publishes the next key next to the current one, just after one of the
    // enforcer's fetches (the next periodic one is a second away), and signs with it at once:
    // the first token naming it is accepted, its request waiting for the early fetch it asks for.
    server.wait_fetches(1).await;
    server.set(jwks(&[&old, &new]));
    let fetched = server.fetches();
    let asked = Instant::now();
    assert_eq!(
        status(&c, &e, &new.token("n-first")).await,
        200,
        "the first token of a key published after the last fetch"
    );
    assert!(server.fetches() > fetched, "no early fetch");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // 2. It signs with the new key.
    for i in 0..5 {
        *signing.lock() = new.token(&format!("n{i}"));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let old_token = old.token("u-old");
    assert_eq!(
        status(&c, &e, &old_token).await,
        200,
        "old key still published"
    );
    // 3. It removes the old key.
    server.set(jwks(&[&new]));
    server.wait_fetches(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);
    honest.await.unwrap();
    assert!(
        sent.load(Ordering::SeqCst) > 20,
        "the honest client kept sending"
    );
    assert!(
        refused.lock().is_empty(),
        "honest requests refused: {:?}",
        refused.lock()
    );
    // A token of the removed key is refused, also one verified (and cached) before.
    assert_eq!(status(&c, &e, &old_token).await, 401);
    assert_eq!(status(&c, &e, &old.token("u-late")).await, 401);
    assert_eq!(status(&c, &e, &new.token("n-late")).await, 200);
    e.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_down_at_start_is_used_once_it_comes_up() {
    let key = ed_key("k1");
    let addr = dead_address().await;
    let pki = pki();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pki.ca_pem).unwrap();
    let up = start_upstream().await;
    let c = client();
    let uri = format!("https://127.0.0.1:{}/certs", addr.port());
    let e = start_enforcer(
        &config(&uri_source(&uri, &ca.path().display().to_string(), "1h")),
        up.addr,
    )
    .await;
    // Down: the enforcer runs, tokens cannot be verified.
    assert_eq!(status(&c, &e, &key.token("alice")).await, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&c, &e, &key.token("alice")).await, 401);
    // Up: retried with a backoff (1 s, 2 s, ...), then tokens verify.
    let server = JwksServer::start_on(addr, jwks(&[&key]), pki).await;
    let mut verified = false;
    for _ in 0..100 {
        if status(&c, &e, &key.token("alice")).await == 200 {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        verified,
        "tokens did not verify after the JWKS endpoint came up"
    );
    assert!(server.fetches() >= 1);
    let m = metrics(&c, &e).await;
    assert!(
        metric_value(&m, "ordo_jwks_refreshes_total{result=\"failed\"}") >= 1.0,
        "{m}"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn unknown_kids_trigger_one_early_refresh_per_interval() {
    let key = ec_key("known");
    let server = JwksServer::start(jwks(&[&key])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    assert_eq!(server.fetches(), 1);
    // A key published after the last fetch: the first token naming it makes the enforcer fetch
    // early, waits for that fetch and is verified against the new set.
    let next = rsa_key("next");
    server.set(jwks(&[&key, &next]));
    assert_eq!(status(&c, &e, &next.token("bob")).await, 200);
    assert_eq!(server.fetches(), 2);
    assert_eq!(status(&c, &e, &next.token("bob2")).await, 200);
    // Random kids: no further fetch within the interval, and no waiting.
    let before = server.fetches();
    let started = Instant::now();
    for i in 0..50 {
        let random = ec_key(&format!("random-{i}"));
        assert_eq!(status(&c, &e, &random.token("mallory")).await, 401);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused kids waited: {:?}",
        started.elapsed()
    );
    // Within the interval even a genuinely new key is judged with the keys at hand.
    let later = ed_key("later");
    server.set(jwks(&[&key, &next, &later]));
    assert_eq!(status(&c, &e, &later.token("carol")).await, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.fetches(),
        before,
        "random kids made the enforcer fetch"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn concurrent_tokens_of_a_new_key_share_one_early_fetch() {
    let key = ec_key("current");
    let server = JwksServer::start(jwks(&[&key])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    // Slow enough that the requests below all arrive while the one fetch is in flight.
    server.delay(Duration::from_millis(500));
    let next = ed_key("next");
    server.set(jwks(&[&key, &next]));
    let requests = (0..20).map(|i| {
        let (c, token) = (c.clone(), next.token(&format!("user-{i}")));
        let addr = e.proxy_addr;
        async move {
            send(
                &c,
                "GET",
                &format!("http://{addr}/api/me"),
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await
            .status
        }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(server.fetches(), 2, "one early fetch for all the requests");
    e.shutdown().await;
}

#[tokio::test]
async fn a_late_or_failing_early_fetch_is_waited_for_a_bounded_time() {
    let key = ec_key("current");
    let server = JwksServer::start(jwks(&[&key])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    // The endpoint answers after 4 s: the request waits 2 s (EARLY_REFRESH_WAIT) and is
    // refused; the fetch goes on, and once it completes the new key verifies.
    server.delay(Duration::from_secs(4));
    let next = ed_key("next");
    server.set(jwks(&[&key, &next]));
    let asked = Instant::now();
    assert_eq!(status(&c, &e, &next.token("bob")).await, 401);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
    // Tokens of known keys never wait meanwhile.
    let asked = Instant::now();
    assert_eq!(status(&c, &e, &key.token("alice")).await, 200);
    assert!(asked.elapsed() < Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&c, &e, &next.token("bob2")).await, 200);
    assert_eq!(server.fetches(), 2);
    e.shutdown().await;

    // A fetch that fails (a document that is not a JWKS) refuses the token at once.
    let server = JwksServer::start(jwks(&[&key])).await;
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1h")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    server.set("<html>502 Bad Gateway</html>".to_owned());
    let asked = Instant::now();
    assert_eq!(status(&c, &e, &next.token("bob")).await, 401);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(server.fetches(), 2);
    e.shutdown().await;
}

/// `jwks.uri` without `caFile`: the enforcer trusts the system's CA certificates, which it
/// loads with rustls-native-certs (enforcer/src/session/jwks.rs, `https_client`): the
/// platform's store, or the PEM file `SSL_CERT_FILE` names, as the images set it (Containerfile).
/// The enforcer runs as a process of its own so that the variable is its environment's, not
/// this multithreaded test's.
#[tokio::test]
async fn without_ca_file_the_system_trust_store_is_used() {
    let key = ec_key("sys-1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let up = start_upstream().await;
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("enforcer.yaml");
    std::fs::write(
        &config_path,
        enforcer_yaml(
            &config(&format!(
                "{{ uri: \"{}\", refreshInterval: 1h }}",
                server.uri()
            )),
            up.addr,
        ),
    )
    .unwrap();
    let spawn = |ssl_cert_file: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ordo-enforcer"));
        command
            .arg("--config")
            .arg(&config_path)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(file) = ssl_cert_file {
            command.env("SSL_CERT_FILE", file);
        }
        let mut child = Child(command.spawn().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let fields = follow_log(child.0.stdout.take().unwrap(), Some(Arc::clone(&log)));
        let proxy: SocketAddr = fields["proxy_addr"].as_str().unwrap().parse().unwrap();
        let admin: SocketAddr = fields["admin_addr"].as_str().unwrap().parse().unwrap();
        (child, proxy, admin, log)
    };
    let ask = |proxy: SocketAddr, token: String| {
        let c = c.clone();
        async move {
            send(
                &c,
                "GET",
                &format!("http://{proxy}/api/me"),
                &[("authorization", &format!("Bearer {token}"))],
                "",
            )
            .await
            .status
        }
    };
    let scrape = |admin: SocketAddr| {
        let c = c.clone();
        async move {
            let a = send(&c, "GET", &format!("http://{admin}/metrics"), &[], "").await;
            String::from_utf8(a.body.to_vec()).unwrap()
        }
    };

    // The test CA in the system trust store: fetched and used.
    let (trusted, proxy, admin, _) = spawn(Some(&server.ca()));
    server.wait_total(1).await;
    assert_eq!(ask(proxy, key.token("alice")).await, 200);
    let m = scrape(admin).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 1.0, "{m}");
    assert!(
        metric_value(&m, "ordo_jwks_refreshes_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    drop(trusted);

    // Without it (the platform's store, which does not hold this CA): the TLS handshake fails,
    // the set stays empty and tokens are refused.
    let (untrusted, proxy, admin, log) = spawn(None);
    assert_eq!(ask(proxy, key.token("alice")).await, 401);
    let m = scrape(admin).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 0.0, "{m}");
    assert!(
        metric_value(&m, "ordo_jwks_refreshes_total{result=\"failed\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "ordo_jwks_refreshes_total{result=\"ok\"}"),
        0.0,
        "{m}"
    );
    // The log is read by a thread of its own: give it a moment.
    let mut failure = None;
    for _ in 0..50 {
        failure = log
            .lock()
            .iter()
            .find(|l| l.contains("JWKS refresh failed"))
            .cloned();
        if failure.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failure = failure.unwrap_or_default();
    assert!(
        failure.to_lowercase().contains("certificate"),
        "the refresh did not fail on the certificate: {failure:?}"
    );
    drop(untrusted);
}

#[tokio::test]
async fn huge_or_malformed_documents_are_refused_and_the_last_good_set_kept() {
    let key = ec_key("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &config(&uri_source(&server.uri(), &server.ca(), "1s")),
        up.addr,
    )
    .await;
    server.wait_total(1).await;
    assert_eq!(status(&c, &e, &key.token("alice")).await, 200);
    let failed = |m: &str| metric_value(m, "ordo_jwks_refreshes_total{result=\"failed\"}");
    let before = failed(&metrics(&c, &e).await);
    let huge = format!(
        "{{\"keys\":[{}],\"padding\":\"{}\"}}",
        key.jwk,
        "x".repeat(2 << 20)
    );
    let too_many = jwks(&(0..150).map(|_| &key).collect::<Vec<_>>());
    for bad in [huge, "<html>502 Bad Gateway</html>".to_owned(), too_many] {
        server.set(bad);
        server.wait_fetches(1).await;
        // Distinct subjects: verified anew, not answered from the cache.
        assert_eq!(
            status(&c, &e, &key.token(&format!("a{}", server.fetches()))).await,
            200
        );
    }
    let m = metrics(&c, &e).await;
    assert!(failed(&m) >= before + 3.0, "{m}");
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 1.0, "{m}");
    e.shutdown().await;
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let (a, b) = (ec_key("a"), ed_key("b"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), jwks(&[&a])).unwrap();
    let up = start_upstream().await;
    let c = client();
    let source = format!(
        "{{ file: \"{}\", refreshInterval: 1s }}",
        file.path().display()
    );
    let e = start_enforcer(&config(&source), up.addr).await;
    assert_eq!(status(&c, &e, &a.token("alice")).await, 200);
    assert_eq!(status(&c, &e, &b.token("bob")).await, 401);
    std::fs::write(file.path(), jwks(&[&b])).unwrap();
    let mut switched = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if status(&c, &e, &b.token("bob")).await == 200 {
            switched = true;
            break;
        }
    }
    assert!(switched, "the changed file was not read again");
    assert_eq!(status(&c, &e, &a.token("alice2")).await, 401);
    // A broken file keeps the keys at hand.
    std::fs::write(file.path(), "{not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&c, &e, &b.token("bob2")).await, 200);
    e.shutdown().await;
}

/// A ConfigMap volume as the kubelet writes it: the data in a timestamped directory, `..data`
/// a symlink to it, and each key a symlink through `..data`. An update writes a new directory
/// and swaps `..data` with a rename, so the file's path never changes and the old file is
/// never modified.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    generation: usize,
}

impl ConfigMapVolume {
    const KEY: &str = "jwks.json";

    fn new(content: &str) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.update(content);
        std::os::unix::fs::symlink(
            format!("..data/{}", Self::KEY),
            volume.dir.path().join(Self::KEY),
        )
        .unwrap();
        volume
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(Self::KEY)
    }

    /// Atomically replaces the content the way the kubelet's atomic writer does.
    fn update(&mut self, content: &str) {
        let root = self.dir.path();
        self.generation += 1;
        let data = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        std::fs::create_dir(root.join(&data)).unwrap();
        std::fs::write(root.join(&data).join(Self::KEY), content).unwrap();
        let staged = root.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        let previous = std::fs::read_link(root.join("..data")).ok();
        std::fs::rename(&staged, root.join("..data")).unwrap();
        if let Some(previous) = previous {
            std::fs::remove_dir_all(root.join(previous)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_jwks_file_mounted_from_a_config_map_follows_a_key_rotation() {
    let (old, new) = (rsa_key("2026-01"), ec384_key("2026-02"));
    let mut volume = ConfigMapVolume::new(&jwks(&[&old]));
    let up = start_upstream().await;
    let c = client();
    let source = format!(
        "{{ file: \"{}\", refreshInterval: 1s }}",
        volume.path().display()
    );
    let e = start_enforcer(&config(&source), up.addr).await;
    assert_eq!(status(&c, &e, &old.token("alice")).await, 200);
    assert_eq!(status(&c, &e, &new.token("bob")).await, 401);

    // The identity provider publishes the next key next to the current one.
    volume.update(&jwks(&[&old, &new]));
    let mut added = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Tokens of the current key keep working all along.
        assert_eq!(status(&c, &e, &old.token("alice")).await, 200);
        if status(&c, &e, &new.token("bob")).await == 200 {
            added = true;
            break;
        }
    }
    assert!(
        added,
        "the key added through the ConfigMap was not picked up"
    );
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 2.0, "{m}");

    // Then retires the old one.
    volume.update(&jwks(&[&new]));
    let mut removed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status(&c, &e, &new.token("bob")).await, 200);
        if status(&c, &e, &old.token("alice")).await == 401 {
            removed = true;
            break;
        }
    }
    assert!(
        removed,
        "a key removed from the ConfigMap still verifies tokens"
    );
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_jwks_keys"), 1.0, "{m}");
    e.shutdown().await;
}

#[tokio::test]
async fn a_broken_jwks_file_or_an_http_uri_is_a_config_error_naming_the_field() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "{\"keys\": 3}").unwrap();
    let yaml = enforcer_yaml(
        &config(&format!("{{ file: \"{}\" }}", file.path().display())),
        "127.0.0.1:1".parse().unwrap(),
    );
    let cfg = ordo_enforcer::config::parse_yaml(&yaml).unwrap();
    let Err(err) =
        ordo_enforcer::runtime::start(cfg, None, Arc::new(ordo_enforcer::detect::NoopAnalyzer))
            .await
    else {
        panic!("an enforcer started with a broken JWKS file");
    };
    let err = err.to_string();
    assert!(err.contains("session.jwtVerification.jwks.file"), "{err}");
    assert!(err.contains("not a JWKS"), "{err}");
    let http = ordo_enforcer::config::parse_yaml(&enforcer_yaml(
        &config("{ uri: \"http://idp/certs\" }"),
        "127.0.0.1:1".parse().unwrap(),
    ))
    .unwrap_err()
    .to_string();
    assert!(http.contains("session.jwtVerification.jwks.uri"), "{http}");
}
