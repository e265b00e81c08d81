//! Response-side exposure over real HTTP through the enforcer (Enforce, the exposure detector
//! on Block, the others on Log so that only it decides) to a small shop upstream:
//!
//! - honest answers, in memory or streamed in many frames, reach the client byte for byte;
//! - an export of every customer's orders (hundreds of times the records its answers hold,
//!   streamed) is withheld: a problem body naming the finding, nothing of the data forwarded;
//! - an unauthenticated debug page that returns password hashes (a class no answer of the API
//!   ever carried) is withheld;
//! - the posture lists the operations that answer without credentials and those that return
//!   sensitive classes, and the model keeps no value;
//! - in `Monitor`, streamed (chunked) answers are scanned as they pass: an export of every
//!   customer's orders and an export carrying card numbers (a class no answer of the API ever
//!   carried) are reported once they ended, and reach the client byte for byte.
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::{admin_json, client, enforcer_yaml, send};
use futures::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::model::exposure::SensitiveClass;
use tokio::net::TcpListener;

fn order(id: usize, customer: usize) -> String {
    format!(r#"{{"orderId":{id},"customer":"shopper{customer:05}@example.net","total":12.5}}"#)
}

/// An export of `records` orders, as JSON text.
fn export(records: usize, first_customer: usize) -> String {
    let items: Vec<String> = (0..records)
        .map(|i| order(500_000 + i, first_customer + i / 9))
        .collect();
    format!(r#"{{"records":[{}]}}"#, items.join(","))
}

/// An export of `records` orders with the card each was paid with (a valid Luhn number).
fn export_with_cards(records: usize, first_customer: usize) -> String {
    let items: Vec<String> = (0..records)
        .map(|i| {
            format!(
                r#"{{"orderId":{},"customer":"shopper{:05}@example.net","paidWith":"4111 1111 1111 1111"}}"#,
                500_000 + i,
                first_customer + i
            )
        })
        .collect();
    format!(r#"{{"records":[{}]}}"#, items.join(","))
}

/// The body in frames of 4 KiB (chunked): it streams through the enforcer.
fn streamed(text: String) -> BoxBody<Bytes, Infallible> {
    let bytes = Bytes::from(text);
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
        .chunks(4096)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(stream::iter(frames)).boxed()
}

fn full(text: String) -> BoxBody<Bytes, Infallible> {
    Full::new(Bytes::from(text)).boxed()
}

fn answer(req: &Request<Incoming>) -> BoxBody<Bytes, Infallible> {
    let query = req.uri().query().unwrap_or("");
    let session = req
        .headers()
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let me: usize = session
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    match req.uri().path() {
        "/login" => full(
            r#"{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"}"#.to_owned(),
        ),
        "/orders" => {
            let items: Vec<String> = (0..10).map(|i| order(i, me)).collect();
            full(format!(r#"{{"items":[{}],"page":1}}"#, items.join(",")))
        }
        "/profile" => full(format!(
            r#"{{"name":"Shopper","email":"shopper{me:05}@example.net"}}"#
        )),
        "/orders/export" if query.contains("scope=all") => streamed(export(4000, 0)),
        "/orders/export" if query.contains("with=payment") => {
            streamed(export_with_cards(3 + me % 12, me))
        }
        "/orders/export" => streamed(export(3 + me % 12, me)),
        "/users/_debug" => full(
            r#"{"users":[{"username":"ann","password":"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"}]}"#
                .to_owned(),
        ),
        _ => full("{}".to_owned()),
    }
}

async fn start_shop() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let mut resp = Response::new(answer(&req));
                    *resp.status_mut() = StatusCode::OK;
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    async move { Ok::<_, Infallible>(resp) }
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
session:
  identifiers: [ { header: { name: X-Session } }, { clientIp: {} } ]
learning: { minRequests: 300, minSessions: 60 }
detectors:
  shadowEndpoint: { action: Log }
  requestShape: { action: Log }
  unlikelySequence: { action: Log }
  volume: { action: Log }
  enumeration: { action: Log }
  credentialStuffing: { action: Log }
  exposure: { action: Block }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_expose_more_than_learned_are_withheld() {
    let up = start_shop().await;
    let config = parse_yaml(&enforcer_yaml(CONFIG, up)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let e = ordo_enforcer::runtime::start(config, None, Arc::clone(&analyzer) as _)
        .await
        .unwrap();
    let c = client();
    let call = |path: &'static str, session: Option<String>| {
        let c = c.clone();
        let url = format!("http://{}{path}", e.proxy_addr);
        async move {
            let headers: Vec<(&str, &str)> = match &session {
                Some(s) => vec![("x-session", s.as_str())],
                None => Vec::new(),
            };
            send(&c, "GET", &url, &headers, "").await
        }
    };

    // Learning: 120 sessions log in (anonymously), list orders and read their profile; every
    // tenth exports its own orders (streamed).
    for s in 0..120 {
        assert_eq!(call("/login", None).await.status, 200);
        let session = Some(format!("learn-{s}"));
        assert_eq!(call("/orders", session.clone()).await.status, 200);
        assert_eq!(call("/profile", session.clone()).await.status, 200);
        if s % 10 == 0 {
            let own = call("/orders/export", session.clone()).await;
            assert_eq!(own.status, 200);
            assert_eq!(&own.body[..], export(3 + s % 12, s).as_bytes());
        }
    }
    let model = analyzer.snapshot();
    assert!(
        model.requests >= 300 && model.sessions >= 60,
        "mature: {} requests, {} sessions",
        model.requests,
        model.sessions
    );

    // After maturity: honest answers pass whole, the held (streamed) export included.
    let me = 7;
    let session = Some(format!("after-{me}"));
    let orders = call("/orders", session.clone()).await;
    assert_eq!(orders.status, 200);
    assert_eq!(orders.json()["items"].as_array().map(Vec::len), Some(10));
    let own = call("/orders/export", session.clone()).await;
    assert_eq!(own.status, 200, "{}", String::from_utf8_lossy(&own.body));
    assert_eq!(&own.body[..], export(3 + me % 12, me).as_bytes());

    // Every customer's orders: withheld, nothing of the data forwarded.
    let all = call("/orders/export?scope=all", session.clone()).await;
    assert_eq!(all.status, 403, "{}", String::from_utf8_lossy(&all.body));
    let problem = all.json();
    assert_eq!(problem["kind"], "Exposure", "{problem}");
    let text = String::from_utf8_lossy(&all.body);
    assert!(!text.contains("@example.net"), "no data forwarded: {text}");
    assert!(text.contains("records"), "the detail says why: {text}");

    // Password hashes from an unauthenticated debug page: withheld.
    let debug = call("/users/_debug", None).await;
    assert_eq!(
        debug.status,
        403,
        "{}",
        String::from_utf8_lossy(&debug.body)
    );
    let text = String::from_utf8_lossy(&debug.body);
    assert!(
        text.contains("passwords") && !text.contains("$2b$"),
        "{text}"
    );

    // The posture: login answers without credentials and returns tokens; the profile and the
    // orders return e-mail addresses to authenticated sessions only.
    let view = analyzer.view();
    let posture = |op: &str| {
        view.posture
            .iter()
            .find(|p| p.operation == op)
            .unwrap_or_else(|| panic!("{op} in {:?}", view.posture))
            .clone()
    };
    let login = posture("GET /login");
    assert!(login.unauthenticated() && login.sensitive_classes.contains_key("token"));
    let profile = posture("GET /profile");
    assert!(!profile.unauthenticated() && profile.sensitive_classes.contains_key("email"));
    // No value is kept: the model's bytes carry no e-mail address, token or hash.
    let json =
        String::from_utf8_lossy(&serde_json::to_vec(&analyzer.snapshot()).unwrap()).into_owned();
    for secret in ["@example.net", "eyJhbGciOiJIUzI1NiJ9", "$2b$"] {
        assert!(!json.contains(secret), "{secret} in the model");
    }
}

/// Finds an open incident of kind `Exposure` whose summary contains `needle`, asking the admin
/// API a bounded number of times: a streamed answer is judged when its last frame passes, which
/// the client may see a moment before the incident is recorded.
async fn exposure_incident(
    c: &common::TestClient,
    e: &ordo_enforcer::runtime::RunningEnforcer,
    needle: &str,
) -> serde_json::Value {
    for _ in 0..200 {
        let incidents = admin_json(c, e, "/v1/incidents").await;
        let found = incidents.as_array().and_then(|all| {
            all.iter()
                .find(|i| {
                    i["kinds"] == serde_json::json!(["Exposure"])
                        && i["summary"].as_str().is_some_and(|s| s.contains(needle))
                })
                .cloned()
        });
        if let Some(incident) = found {
            return incident;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let incidents = admin_json(c, e, "/v1/incidents").await;
    panic!("no Exposure incident with {needle:?}: {incidents}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_are_scanned_as_they_pass_in_monitor() {
    let up = start_shop().await;
    let yaml = CONFIG.replace("mode: Enforce", "mode: Monitor");
    let config = parse_yaml(&enforcer_yaml(&yaml, up)).unwrap();
    let analyzer = Arc::new(LearnedAnalyzer::new(
        &config.learning,
        &config.detectors,
        None,
    ));
    let e = ordo_enforcer::runtime::start(config, None, Arc::clone(&analyzer) as _)
        .await
        .unwrap();
    let c = client();
    let call = |path: &'static str, session: String| {
        let c = c.clone();
        let url = format!("http://{}{path}", e.proxy_addr);
        async move { send(&c, "GET", &url, &[("x-session", session.as_str())], "").await }
    };

    // Learning as in the test above; the exports stream (chunked) and are learned as they pass.
    for s in 0..120 {
        assert_eq!(call("/login", format!("learn-{s}")).await.status, 200);
        assert_eq!(call("/orders", format!("learn-{s}")).await.status, 200);
        assert_eq!(call("/profile", format!("learn-{s}")).await.status, 200);
        if s % 10 == 0 {
            let own = call("/orders/export", format!("learn-{s}")).await;
            assert_eq!(&own.body[..], export(3 + s % 12, s).as_bytes());
        }
    }
    let model = analyzer.snapshot();
    assert!(model.requests >= 300 && model.sessions >= 60);
    let exports = model
        .op_index("GET /orders/export")
        .and_then(|i| model.operation(i))
        .map(|s| s.exposure.clone())
        .unwrap();
    assert_eq!(exports.answers, 12, "every streamed export was scanned");
    assert_eq!(exports.authenticated_answers, 12, "and counted once");
    assert_eq!(exports.class_count(SensitiveClass::Email), 12);
    assert_eq!(exports.class_count(SensitiveClass::CardNumber), 0);

    // An honest export after maturity (3 + 7 % 12 records): relayed whole, nothing reported.
    let own = call("/orders/export", "after-7".to_owned()).await;
    assert_eq!(&own.body[..], export(10, 7).as_bytes());

    // Every customer's orders: relayed whole (Monitor), then reported with the full count
    // (the whole stream was scanned, not only a held prefix).
    let all = call("/orders/export?scope=all", "after-8".to_owned()).await;
    assert_eq!(all.status, 200);
    assert_eq!(&all.body[..], export(4000, 0).as_bytes());
    let incident = exposure_incident(&c, &e, "4000 records").await;
    let summary = incident["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("not withheld"), "{summary}");
    assert_eq!(incident["blocked"], 0, "{incident}");

    // An export of the usual size carrying card numbers, which no answer of the API carried.
    let cards = call("/orders/export?with=payment", "after-9".to_owned()).await;
    assert_eq!(cards.status, 200);
    assert_eq!(&cards.body[..], export_with_cards(12, 9).as_bytes());
    let incident = exposure_incident(&c, &e, "card numbers").await;
    assert_eq!(incident["blocked"], 0, "{incident}");

    // Only those two were reported (the honest export was not), and they taught nothing.
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    let exposures = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kinds"] == serde_json::json!(["Exposure"]))
        .count();
    assert_eq!(exposures, 2, "{incidents}");
    let model = analyzer.snapshot();
    let exports = model
        .op_index("GET /orders/export")
        .and_then(|i| model.operation(i))
        .map(|s| s.exposure.clone())
        .unwrap();
    assert_eq!(exports.answers, 13, "the honest export after maturity only");
    assert_eq!(exports.class_count(SensitiveClass::CardNumber), 0);
    e.shutdown().await;
}
