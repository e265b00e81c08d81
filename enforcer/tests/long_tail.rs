//! The long tail of rare but legitimate operations and readable identifiers in paths, over
//! real HTTP through the enforcer (Enforce, every detector on Block) to a small upstream that
//! answers 404 for paths it does not have:
//!
//! - a rare operation (seen twice while learning) under a known resource is not refused after
//!   maturity, and is learned (discovered) from then on;
//! - a position keyed by readable names (`/books/v1/{title}`, 100 titles over many sessions)
//!   becomes a parameter, the titles learned as literals before that are folded into it, and a
//!   returning user's early title is not refused;
//! - a sibling with a different shape (`/books/v1/_debug?verbose=1`) stays a distinct endpoint;
//! - probes of paths that do not exist (unknown prefix, 404 answers) are still refused.
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{client, send, start_learning};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The books API: what it has answers 200, anything else 404.
fn route(method: &str, path: &str) -> u16 {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        ("GET", ["books", "v1"])
        | ("GET", ["books", "v1", _])
        | ("GET", ["users", "v1", _])
        | ("PUT", ["users", "v1", _, "password"]) => 200,
        _ => 404,
    }
}

async fn start_books(hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let status = route(req.method().as_str(), req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
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

/// A readable, letters-only name (digits would make it look like an id).
fn name(prefix: &str, i: usize) -> String {
    let a = char::from(b'a' + u8::try_from(i % 26).unwrap());
    let b = char::from(b'a' + u8::try_from(i / 26 % 26).unwrap());
    format!("{prefix}-{b}{a}")
}

const CONFIG: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
session:
  identifiers: [ { header: { name: X-Session } } ]
learning: { minRequests: 300, minSessions: 60 }
detectors:
  shadowEndpoint: { action: Block }
  requestShape: { action: Block }
  unlikelySequence: { action: Block }
  volume: { action: Block }
  enumeration: { action: Block }
  credentialStuffing: { action: Block }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_operations_and_readable_names_are_not_refused_and_probes_are() {
    let hits = Arc::new(AtomicUsize::new(0));
    let up = start_books(Arc::clone(&hits)).await;
    let (e, analyzer) = start_learning(CONFIG, up).await;
    let c = client();
    let call = |method: &'static str, path: String, session: String| {
        let c = c.clone();
        let url = format!("http://{}{path}", e.proxy_addr);
        async move {
            send(&c, method, &url, &[("x-session", session.as_str())], "")
                .await
                .status
        }
    };

    // Learning: 120 sessions, each opens the list, one of 100 titles and its user's page.
    // Two of them change their password; five use the debug page, which takes a parameter
    // the titles never do.
    for s in 0..120 {
        let session = format!("learn-{s}");
        let user = name("user", s % 40);
        assert_eq!(call("GET", "/books/v1".into(), session.clone()).await, 200);
        let title = name("title", s % 100);
        let path = format!("/books/v1/{title}");
        assert_eq!(call("GET", path, session.clone()).await, 200);
        let path = format!("/users/v1/{user}");
        assert_eq!(call("GET", path, session.clone()).await, 200);
        if s == 10 || s == 70 {
            let path = format!("/users/v1/{user}/password");
            assert_eq!(call("PUT", path, session.clone()).await, 200);
        }
        if s % 20 == 5 {
            let path = "/books/v1/_debug?verbose=1".to_owned();
            assert_eq!(call("GET", path, session.clone()).await, 200);
        }
    }
    let model = analyzer.snapshot();
    assert!(
        model.requests >= 300 && model.sessions >= 60,
        "mature: {} requests, {} sessions",
        model.requests,
        model.sessions
    );

    // Housekeeping folds the early titles into the parameter (every few seconds).
    let early = format!("GET /books/v1/{}", name("title", 0));
    let mut folded = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = analyzer.snapshot();
        if m.op_index(&early).is_none() && m.op_index("GET /books/v1/{var1}").is_some() {
            folded = true;
            break;
        }
    }
    assert!(
        folded,
        "the early literal title was folded into the parameter"
    );
    let m = analyzer.snapshot();
    let param = m
        .operation(m.op_index("GET /books/v1/{var1}").unwrap())
        .unwrap();
    assert_eq!(
        param.requests, 120,
        "every title request is counted under the parameter"
    );
    assert!(
        m.op_index("GET /books/v1/_debug").is_some(),
        "the debug page with its own parameter stays distinct"
    );

    // After maturity, in Enforce: a returning user opens a title learned as a literal early,
    // a new user a title never seen; both change their password (seen twice in learning).
    for (session, title) in [("back-1", name("title", 3)), ("new-1", name("title", 300))] {
        let user = name("user", 3);
        let s = session.to_owned();
        assert_eq!(call("GET", "/books/v1".into(), s.clone()).await, 200);
        assert_eq!(
            call("GET", format!("/books/v1/{title}"), s.clone()).await,
            200,
            "{session} opens {title}"
        );
        assert_eq!(
            call("GET", format!("/users/v1/{user}"), s.clone()).await,
            200
        );
        assert_eq!(
            call("PUT", format!("/users/v1/{user}/password"), s.clone()).await,
            200,
            "{session}: a rare operation under a known resource is not refused"
        );
    }
    let view = analyzer.view();
    let password = view
        .discovered
        .iter()
        .find(|d| d.operation == "PUT /users/v1/{var1}/password")
        .unwrap_or_else(|| panic!("discovered: {:?}", view.discovered));
    assert_eq!(password.requests, 4, "learned from then on");
    assert!(password.in_inventory && password.discovered_ms > 0);
    assert!(
        view.not_yet_judged
            .iter()
            .any(|n| n.operation == "PUT /users/v1/{var1}/password"
                && n.reasons.iter().any(|r| r.starts_with("unlikelySequence"))),
        "{:?}",
        view.not_yet_judged
    );

    // Probes are still refused: an unknown prefix at once; under a known resource, once the
    // application answered 404 to the session.
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(
        call("GET", "/actuator/env".into(), "probe-1".into()).await,
        403
    );
    assert_eq!(
        call("GET", "/books/v2/list".into(), "probe-2".into()).await,
        403
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "refused before the app"
    );
    let user = name("user", 5);
    let s = "probe-3".to_owned();
    assert_eq!(call("GET", "/books/v1".into(), s.clone()).await, 200);
    let title = name("title", 7);
    assert_eq!(
        call("GET", format!("/books/v1/{title}"), s.clone()).await,
        200
    );
    assert_eq!(
        call("GET", format!("/users/v1/{user}"), s.clone()).await,
        200
    );
    assert_eq!(
        call("GET", format!("/users/v1/{user}/keys"), s.clone()).await,
        404
    );
    assert_eq!(
        call("GET", format!("/users/v1/{user}/tokens"), s.clone()).await,
        403,
        "the session that got a 404 on an unknown path is refused the next one"
    );
    // What the prober reached taught the model nothing.
    let m = analyzer.snapshot();
    assert!(m.op_index("GET /users/v1/{var1}/keys").is_none());
    e.shutdown().await;
}
