//! Outcomes read from responses, campaigns and quarantine, over real HTTP through the enforcer
//! (Enforce, every detector on Block) to a small upstream whose login answers a failure the
//! way many APIs do: 200 with `{"status":"fail",…}` (a success carries a token):
//!
//! - the enforcer learns what the login's answers look like and counts the failed ones as
//!   failures, not as successful traffic to learn from;
//! - stuffing from one address, every failure answered 200, is blocked as credential stuffing,
//!   and the address is then quarantined: another session from it is refused with a problem
//!   body that names the incident;
//! - a campaign of one try per address is one incident that lists its addresses once the
//!   tries settled; an honest user who mistyped and then logged in during it is not listed;
//!   and a member that comes back is refused (quarantine).
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{admin_json, client, enforcer_yaml, send};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::runtime::RunningEnforcer;
use tokio::net::TcpListener;

const PASSWORD: &str = "correct horse";

/// The upstream: `POST /login` answers 200 with a token or 200 with an error body; `GET
/// /books` a list.
async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let answer = if path == "/login" {
                        let login: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        if login["password"] == PASSWORD {
                            let user = login["username"].as_str().unwrap_or("");
                            format!(
                                r#"{{"status":"success","auth_token":"eyJhbGciOiJIUzI1NiJ9.{user}.c2lnbmF0dXJl"}}"#
                            )
                        } else {
                            r#"{"status":"fail","message":"Password is not correct for the given username."}"#
                                .to_owned()
                        }
                    } else {
                        r#"{"books":[{"title":"a"},{"title":"b"}]}"#.to_owned()
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(answer)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const CONFIG: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
clientAddress: { source: XForwardedFor, trustedHops: 1 }
session:
  identifiers: [ { header: { name: X-Session } }, { clientIp: {} } ]
learning: { minRequests: 300, minSessions: 60, journeyGap: 300ms }
detectors:
  shadowEndpoint: { action: Block }
  requestShape: { action: Block }
  unlikelySequence: { action: Block }
  volume: { action: Block }
  enumeration: { action: Block }
  credentialStuffing: { action: Block, quarantine: 10m }
"#;

/// The upstream, and an enforcer with [`CONFIG`] in front of it with its analyzer.
async fn start_protected() -> (RunningEnforcer, Arc<LearnedAnalyzer>) {
    let up = start_app().await;
    let config = parse_yaml(&enforcer_yaml(CONFIG, up)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let e = ordo_enforcer::runtime::start(config, None, Arc::clone(&analyzer) as _)
        .await
        .unwrap();
    (e, analyzer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_answered_200_are_failures_campaigns_are_one_incident_and_quarantined() {
    let (e, analyzer) = start_protected().await;
    let c = client();
    let call =
        |method: &'static str, path: &'static str, session: String, addr: String, body: String| {
            let c = c.clone();
            let url = format!("http://{}{path}", e.proxy_addr);
            async move {
                let mut headers = vec![("x-forwarded-for", addr.as_str())];
                if !session.is_empty() {
                    headers.push(("x-session", session.as_str()));
                }
                send(&c, method, &url, &headers, &body).await
            }
        };
    let login = |user: &str, password: &str| {
        serde_json::json!({ "username": user, "password": password }).to_string()
    };

    // Learning: 130 users log in (one in 13 mistypes first) and open the list.
    for u in 0..130 {
        let addr = format!("10.1.{}.{}", u / 200, u % 200 + 1);
        let user = format!("reader{u}");
        if u % 13 == 0 {
            let a = call(
                "POST",
                "/login",
                String::new(),
                addr.clone(),
                login(&user, "typo"),
            )
            .await;
            assert_eq!(a.status, 200);
        }
        let a = call(
            "POST",
            "/login",
            String::new(),
            addr.clone(),
            login(&user, PASSWORD),
        )
        .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let a = call("GET", "/books", user.clone(), addr.clone(), String::new()).await;
        assert_eq!(a.status, 200);
        let a = call("GET", "/books", user, addr, String::new()).await;
        assert_eq!(a.status, 200);
    }
    let model = analyzer.snapshot();
    assert!(model.requests >= 300 && model.sessions >= 60, "mature");
    let op = model
        .operation(model.op_index("POST /login").unwrap())
        .unwrap();
    assert!(op.is_auth_like());
    // Nearly every answer read: the first few arrive before the login is known to matter.
    assert!(op.outcomes.read >= 120, "{:?}", op.outcomes);
    assert!(op.outcomes.credential_answers >= 115, "{:?}", op.outcomes);
    assert!(
        (8..=10).contains(&op.outcomes.error_answers),
        "{:?}",
        op.outcomes
    );
    assert_eq!(op.failures(), op.outcomes.error_answers);
    // Of the ten mistypes, only those before 20 answers were read (the first two) could not be
    // told from a success yet; the other eight were not learned from.
    assert!(
        op.requests <= 132,
        "failed logins are no successful traffic: {} learned, {:?}",
        op.requests,
        op.outcomes
    );

    // The model view shows what the login's answers look like.
    let view = admin_json(&c, &e, "/v1/model").await;
    let login_view = view["analyzer"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ep| ep["operation"] == "POST /login")
        .unwrap_or_else(|| panic!("{view}"));
    assert_eq!(
        login_view["outcomes"]["grantsCredentials"], true,
        "{login_view}"
    );
    assert!(
        login_view["outcomes"]["errorAnswers"].as_u64().unwrap() >= 8,
        "{login_view}"
    );

    // Stuffing from one address: blocked as credential stuffing within a few tries.
    let stuffer = "198.51.100.7".to_owned();
    let mut blocked_at = None;
    for i in 0..12 {
        let a = call(
            "POST",
            "/login",
            String::new(),
            stuffer.clone(),
            login(&format!("victim{i}"), "123456"),
        )
        .await;
        if a.status == 403 {
            let problem = a.json();
            assert_eq!(problem["kind"], "CredentialStuffing", "{problem}");
            blocked_at = Some(i + 1);
            break;
        }
    }
    let blocked_at = blocked_at.expect("stuffing answered 200 is blocked");
    assert!(blocked_at <= 6, "blocked at try {blocked_at}");
    // Quarantined: any other request of the address, in another session, is refused.
    let a = call(
        "GET",
        "/books",
        "fresh-session".into(),
        stuffer.clone(),
        String::new(),
    )
    .await;
    assert_eq!(a.status, 403);
    let problem = a.json();
    assert_eq!(problem["kind"], "Quarantined", "{problem}");
    assert!(
        problem["incidentId"].as_str().unwrap().starts_with("inc-"),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("client address 198.51.100.7 is quarantined"),
        "{problem}"
    );

    // A campaign: 40 addresses, one try each. An honest user mistypes and logs in meanwhile.
    for i in 0..40u32 {
        let addr = format!("203.0.113.{}", i + 1);
        let a = call(
            "POST",
            "/login",
            String::new(),
            addr,
            login(&format!("reader{}", (i * 7) % 130), "Summer2024!"),
        )
        .await;
        assert_eq!(a.status, 200, "a single try is not refused");
        if i == 25 {
            // A user whose password no longer works fails once and carries on browsing.
            let locked_out = "10.9.0.3".to_owned();
            call(
                "POST",
                "/login",
                String::new(),
                locked_out.clone(),
                login("reader7", "my old password"),
            )
            .await;
            call("GET", "/books", String::new(), locked_out, String::new()).await;
        }
        if i == 20 {
            let honest = "10.9.0.1".to_owned();
            call(
                "POST",
                "/login",
                String::new(),
                honest.clone(),
                login("reader5", "typo"),
            )
            .await;
            let a = call(
                "POST",
                "/login",
                String::new(),
                honest,
                login("reader5", PASSWORD),
            )
            .await;
            assert_eq!(a.status, 200);
        }
    }
    // The tries settle (journeyGap); the next login attempt names the members.
    tokio::time::sleep(Duration::from_millis(400)).await;
    call(
        "POST",
        "/login",
        String::new(),
        "10.9.0.2".into(),
        login("reader6", PASSWORD),
    )
    .await;
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    let campaign = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["session"].as_str().unwrap_or("").starts_with("campaign "))
        .unwrap_or_else(|| panic!("a campaign incident: {incidents}"));
    let clients: Vec<&str> = campaign["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let members = (1..=40)
        .filter(|i| clients.contains(&format!("203.0.113.{i}").as_str()))
        .count();
    assert!(
        members >= 25,
        "{members} of 40 addresses listed: {campaign}"
    );
    assert!(
        !clients.contains(&"10.9.0.1"),
        "the honest user: {campaign}"
    );
    assert!(
        !clients.contains(&"10.9.0.3"),
        "the user who carried on: {campaign}"
    );
    let summary = campaign["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Credential-stuffing campaign from"),
        "{summary}"
    );
    assert!(summary.contains("learned failure rate"), "{summary}");
    // A member that comes back is refused.
    let member = clients
        .iter()
        .find(|c| c.starts_with("203.0.113."))
        .unwrap();
    let a = call(
        "GET",
        "/books",
        "member-session".into(),
        (*member).to_owned(),
        String::new(),
    )
    .await;
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["kind"], "Quarantined");
    e.shutdown().await;
}

/// A campaign whose pace dips after its surge was found is still one: its last tries, thinned
/// out by honest logins below the surge's bar (but at half of it or more), are named too
/// (`detect::distributed`, campaign in progress), and so is its very last try, after which no
/// login comes (the housekeeping's sweep, within about a second of settling). Without the
/// hysteresis the tail was never named (the surge had left the last 128 attempts); without
/// the sweep, not until another login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_pace_dips_is_named_to_its_last_try() {
    let (e, _) = start_protected().await;
    let c = client();
    let login_from = |addr: String, user: String, password: &'static str| {
        let c = c.clone();
        let url = format!("http://{}/login", e.proxy_addr);
        async move {
            let body = serde_json::json!({ "username": user, "password": password }).to_string();
            send(
                &c,
                "POST",
                &url,
                &[("x-forwarded-for", addr.as_str())],
                &body,
            )
            .await
        }
    };
    let books = |addr: String, session: String| {
        let c = c.clone();
        let url = format!("http://{}/books", e.proxy_addr);
        async move {
            let headers = [
                ("x-forwarded-for", addr.as_str()),
                ("x-session", session.as_str()),
            ];
            send(&c, "GET", &url, &headers, "").await
        }
    };
    // Learning: 130 users log in without a failure and open the list (a learned failure rate
    // near 0: the surge's bar is its floor, 10 failures in the last attempts).
    for u in 0..130 {
        let addr = format!("10.1.{}.{}", u / 200, u % 200 + 1);
        let a = login_from(addr.clone(), format!("reader{u}"), PASSWORD).await;
        assert_eq!(a.status, 200);
        for _ in 0..2 {
            assert_eq!(books(addr.clone(), format!("reader{u}")).await.status, 200);
        }
    }
    let mut honest = 0u32;
    let mut honest_login = || {
        honest += 1;
        login_from(
            format!("10.7.{}.{}", honest / 200, honest % 200 + 1),
            format!("reader{}", honest % 130),
            PASSWORD,
        )
    };
    // The campaign's surge: 15 addresses, one try each.
    for i in 0..15u32 {
        let a = login_from(
            format!("203.0.113.{}", i + 1),
            format!("reader{i}"),
            "Summer2024!",
        )
        .await;
        assert_eq!(a.status, 200, "a single try is not refused");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(honest_login().await.status, 200);
    // Honest logins push the surge out of the last 128 attempts; then the campaign goes on at
    // a pace under the surge's bar: 6 tries, 15 honest logins apart.
    for _ in 0..130 {
        assert_eq!(honest_login().await.status, 200);
    }
    let tail: Vec<String> = (0..6).map(|i| format!("203.0.114.{}", i + 1)).collect();
    for (i, addr) in tail.iter().enumerate() {
        let a = login_from(addr.clone(), format!("reader{}", 40 + i), "Summer2024!").await;
        assert_eq!(a.status, 200);
        for _ in 0..15 {
            assert_eq!(honest_login().await.status, 200);
        }
    }
    // No login after the last try: it settles (journeyGap, 300 ms) and the sweep names the
    // tail within a second or so.
    let started = std::time::Instant::now();
    let listed = loop {
        let incidents = admin_json(&c, &e, "/v1/incidents").await;
        let listed: Vec<String> = incidents
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["session"].as_str().unwrap_or("").starts_with("campaign "))
            .flat_map(|i| i["clients"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        if tail.iter().all(|a| listed.contains(a)) || started.elapsed() > Duration::from_secs(4) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = (1..=15)
        .filter(|i| listed.contains(&format!("203.0.113.{i}")))
        .count();
    assert!(
        first >= 10,
        "{first} of the surge's 15 addresses listed: {listed:?}"
    );
    let named: Vec<&String> = tail.iter().filter(|a| listed.contains(a)).collect();
    assert_eq!(
        named.len(),
        tail.len(),
        "the tail's addresses listed: {named:?} of {tail:?}, all: {listed:?}"
    );
    assert!(
        !listed.iter().any(|a| a.starts_with("10.")),
        "an honest user listed: {listed:?}"
    );
    e.shutdown().await;
}
