//! Each session identifier, JWT verification (HS256, RS256, ES256) with forged, expired
//! and unverifiable tokens, and the client address behind trusted proxies.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(alg: Algorithm, key: &EncodingKey, sub: &str, exp: u64) -> String {
    encode(
        &Header::new(alg),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        key,
    )
    .unwrap()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A maxRepeat rule that blocks the second request of a session: the session key decides
/// whether two requests count as one session.
const ONE_PER_SESSION: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
rules:
  - name: once
    action: Block
    maxRepeat: { operation: GET /api/me, count: 1 }
"#;

async fn session_of(c: &TestClient, e: &ordo_enforcer::runtime::RunningEnforcer) -> String {
    let incidents = admin_json(c, e, "/v1/incidents").await;
    incidents[0]["session"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_identifier_names_the_session() {
    let up = start_upstream().await;
    let c = client();
    let unsigned = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"whatever"),
        "4411",
        now() + 600,
    );
    let bearer = format!("Bearer {unsigned}");
    // (identifier YAML, request headers, query, expected session key). The values of
    // header, cookie and query identifiers are credentials: `admin.revealSessionKeys` shows
    // them here, `credential_session_keys_are_hashed_unless_revealed` checks the default.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "- jwtClaim: { claim: sub }",
            vec![("authorization", bearer.as_str())],
            "",
            "jwt:sub=4411",
        ),
        (
            "- header: { name: X-Session-Id }",
            vec![("x-session-id", "abc")],
            "",
            "header:x-session-id=abc",
        ),
        (
            "- cookie: { name: sid }",
            vec![("cookie", "theme=dark; sid=c00k")],
            "",
            "cookie:sid=c00k",
        ),
        (
            "- queryParam: { name: session }",
            vec![],
            "?session=q1&x=2",
            "query:session=q1",
        ),
        ("- clientIp: {}", vec![], "", "ip:127.0.0.1"),
    ];
    for (identifier, headers, query, expected) in cases {
        let yaml = ONE_PER_SESSION.replace(
            "mode: Enforce",
            &format!(
                "mode: Enforce\nadmin: {{ listen: 127.0.0.1:0, revealSessionKeys: true }}\nlisten: 127.0.0.1:0\nsession:\n  identifiers:\n    {identifier}\n    - clientIp: {{}}"
            ),
        );
        let e = start_enforcer(&yaml, up.addr).await;
        let path = format!("/api/me{query}");
        assert_eq!(
            get(&c, &e, &path, &headers).await.status,
            200,
            "{identifier}"
        );
        assert_eq!(
            get(&c, &e, &path, &headers).await.status,
            403,
            "{identifier}"
        );
        assert_eq!(session_of(&c, &e).await, expected, "{identifier}");
        e.shutdown().await;
    }
}

#[tokio::test]
async fn identifiers_are_tried_in_order() {
    let up = start_upstream().await;
    let c = client();
    let yaml = ONE_PER_SESSION.replace(
        "mode: Enforce",
        "mode: Enforce\nsession:\n  identifiers:\n    - header: { name: X-Session-Id }\n    - cookie: { name: sid }\n    - clientIp: {}",
    );
    let e = start_enforcer(&yaml, up.addr).await;
    // Different headers from one address are different sessions; the cookie is second choice.
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("x-session-id", "a"), ("cookie", "sid=z")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("x-session-id", "b"), ("cookie", "sid=z")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&c, &e, "/api/me", &[("cookie", "sid=z")]).await.status,
        200
    );
    assert_eq!(
        get(&c, &e, "/api/me", &[("cookie", "sid=z")]).await.status,
        403
    );
    let session = session_of(&c, &e).await;
    assert!(session.starts_with("cookie:sid=#"), "{session}");
    assert!(!session.contains("=z"), "{session}");
    e.shutdown().await;
}

#[tokio::test]
async fn credential_session_keys_are_hashed_unless_revealed() {
    let up = start_upstream().await;
    let c = client();
    let identifiers = "mode: Enforce\nsession:\n  identifiers:\n    - header: { name: X-Api-Key }";
    let yaml = ONE_PER_SESSION.replace("mode: Enforce", identifiers);
    let e = start_enforcer(&yaml, up.addr).await;
    let key = [("x-api-key", "ak_live_secret_1")];
    assert_eq!(get(&c, &e, "/api/me", &key).await.status, 200);
    assert_eq!(get(&c, &e, "/api/me", &key).await.status, 403);
    let incidents = admin_json(&c, &e, "/v1/incidents").await.to_string();
    assert!(!incidents.contains("ak_live_secret_1"), "{incidents}");
    let session = session_of(&c, &e).await;
    assert!(session.starts_with("header:x-api-key=#"), "{session}");
    e.shutdown().await;
}

fn verified(keys: &str, on_invalid: &str) -> String {
    ONE_PER_SESSION.replace(
        "mode: Enforce",
        &format!(
            "mode: Enforce\nsession:\n  identifiers:\n    - jwtClaim: {{ claim: sub }}\n    - clientIp: {{}}\n  jwtVerification:\n    onInvalid: {on_invalid}\n    leeway: 5s\n    keys:\n{keys}"
        ),
    )
}

#[tokio::test]
async fn hs256_verification_rejects_forged_and_expired_tokens() {
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &verified(
            "      - { algorithm: HS256, secret: s3cret-key-for-tests }",
            "Reject",
        ),
        up.addr,
    )
    .await;
    let good = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"s3cret-key-for-tests"),
        "alice",
        now() + 600,
    );
    let forged = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed"),
        "alice",
        now() + 600,
    );
    let expired = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"s3cret-key-for-tests"),
        "alice",
        now() - 3600,
    );
    let r = get(
        &c,
        &e,
        "/api/me",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {expired}"))]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get(&c, &e, "/api/me", &[("authorization", "Bearer not.a.jwt")])
            .await
            .status,
        401
    );
    assert_eq!(
        up.seen.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "rejected tokens never reach the app"
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {good}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {good}"))]
        )
        .await
        .status,
        403
    );
    assert_eq!(session_of(&c, &e).await, "jwt:sub=alice");
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_invalid_tokens_total"), 3.0);
    e.shutdown().await;
}

/// Verified tokens are cached (a repeated token is not verified again), but never beyond their
/// expiry: a token that expires while cached is rejected on its next request.
#[tokio::test]
async fn cached_token_is_rejected_once_it_expires() {
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &verified(
            "      - { algorithm: HS256, secret: s3cret-key-for-tests }",
            "Reject",
        ),
        up.addr,
    )
    .await;
    // Valid for about 2 more seconds (exp 3 s ago, leeway 5 s).
    let short = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"s3cret-key-for-tests"),
        "bob",
        now() - 3,
    );
    let auth = format!("Bearer {short}");
    let first = get(&c, &e, "/api/me", &[("authorization", &auth)]).await;
    assert_eq!(first.status, 200);
    // Same session (second request of a one-request-per-session policy): 403, not 401.
    let second = get(&c, &e, "/api/me", &[("authorization", &auth)]).await;
    assert_eq!(second.status, 403);
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let late = get(&c, &e, "/api/me", &[("authorization", &auth)]).await;
    assert_eq!(
        late.status, 401,
        "an expired token is not served from the cache"
    );
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_invalid_tokens_total"), 1.0);
    e.shutdown().await;
}

#[tokio::test]
async fn forged_token_falls_through_to_the_next_identifier() {
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(
        &verified(
            "      - { algorithm: HS256, secret: s3cret-key-for-tests }",
            "FallThrough",
        ),
        up.addr,
    )
    .await;
    let forged = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed"),
        "victim",
        now() + 600,
    );
    let auth = format!("Bearer {forged}");
    assert_eq!(
        get(&c, &e, "/api/me", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&c, &e, "/api/me", &[("authorization", &auth)])
            .await
            .status,
        403
    );
    // The forged token did not name the session: the client address did.
    assert_eq!(session_of(&c, &e).await, "ip:127.0.0.1");
    // Ignored, but counted.
    let m = metrics(&c, &e).await;
    assert_eq!(metric_value(&m, "ordo_invalid_tokens_total"), 2.0, "{m}");
    e.shutdown().await;
}

/// With `withoutValidToken: ClientAddress`, a client without a valid token cannot pick its
/// session with a header of its own: every such request of one address shares one session.
#[tokio::test]
async fn unverified_requests_share_their_address_when_configured() {
    let up = start_upstream().await;
    let c = client();
    let yaml = ONE_PER_SESSION.replace(
        "mode: Enforce",
        "mode: Enforce\nsession:\n  identifiers:\n    - jwtClaim: { claim: sub }\n    - header: { name: X-Session }\n  withoutValidToken: ClientAddress\n  jwtVerification:\n    onInvalid: FallThrough\n    keys:\n      - { algorithm: HS256, secret: s3cret-key-for-tests }",
    );
    let e = start_enforcer(&yaml, up.addr).await;
    let forged = format!(
        "Bearer {}",
        token(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"guessed"),
            "victim",
            now() + 600
        )
    );
    // A fresh X-Session per request would have been a fresh session each time.
    let first = [("x-session", "a"), ("authorization", forged.as_str())];
    assert_eq!(get(&c, &e, "/api/me", &first).await.status, 200);
    assert_eq!(
        get(&c, &e, "/api/me", &[("x-session", "b")]).await.status,
        403
    );
    assert_eq!(session_of(&c, &e).await, "ip:127.0.0.1");
    // A valid token still names its own session.
    let valid = format!(
        "Bearer {}",
        token(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"s3cret-key-for-tests"),
            "4411",
            now() + 600
        )
    );
    let valid = [("authorization", valid.as_str())];
    assert_eq!(get(&c, &e, "/api/me", &valid).await.status, 200);
    e.shutdown().await;
}

#[tokio::test]
async fn two_authorization_fields_are_refused() {
    let up = start_upstream().await;
    let c = client();
    let e = start_enforcer(ONE_PER_SESSION, up.addr).await;
    let a = get(
        &c,
        &e,
        "/api/me",
        &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
    )
    .await;
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(up.seen.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    e.shutdown().await;
}

#[tokio::test]
async fn es256_and_rs256_verification() {
    let up = start_upstream().await;
    let c = client();
    let keys = format!(
        "      - {{ algorithm: ES256, file: {FIXTURES}/ec_public.pem }}\n      - {{ algorithm: RS256, file: {FIXTURES}/rsa_public.pem }}"
    );
    let e = start_enforcer(&verified(&keys, "Reject"), up.addr).await;
    let es_good = token(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap(),
        "es-user",
        now() + 600,
    );
    let es_forged = token(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem("ec_other_private.pem")).unwrap(),
        "es-user",
        now() + 600,
    );
    let rs_good = token(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap(),
        "rs-user",
        now() + 600,
    );
    // HS256 signed with the RSA public key bytes: the classic algorithm-confusion forgery.
    let confused = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem("rsa_public.pem")),
        "rs-user",
        now() + 600,
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {es_forged}"))]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {confused}"))]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {es_good}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {rs_good}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("authorization", &format!("Bearer {rs_good}"))]
        )
        .await
        .status,
        403
    );
    assert_eq!(session_of(&c, &e).await, "jwt:sub=rs-user");
    e.shutdown().await;
}

#[tokio::test]
async fn client_address_from_trusted_forwarded_for() {
    let up = start_upstream().await;
    let c = client();
    let yaml = ONE_PER_SESSION.replace(
        "mode: Enforce",
        "mode: Enforce\nclientAddress: { source: XForwardedFor, trustedHops: 1 }\nsession:\n  identifiers: [ { clientIp: {} } ]",
    );
    let e = start_enforcer(&yaml, up.addr).await;
    // The client forges the left entry; the trusted proxy appended the real address.
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(
            &c,
            &e,
            "/api/me",
            &[("x-forwarded-for", "7.7.7.7, 203.0.113.9")]
        )
        .await
        .status,
        403
    );
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    assert_eq!(incidents[0]["session"], "ip:203.0.113.9");
    assert_eq!(incidents[0]["client"], "203.0.113.9");
    // The upstream sees the chain with the enforcer's peer appended.
    let headers = up.seen.last_headers.lock().clone().unwrap();
    assert_eq!(
        headers["x-forwarded-for"],
        "6.6.6.6, 203.0.113.9, 127.0.0.1"
    );
    e.shutdown().await;
}
