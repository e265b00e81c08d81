//! Secrets never leave the enforcer: a model learned from traffic full of planted credentials
//! (session cookies, API keys in headers and the query, card numbers, social security numbers,
//! bearer tokens, passwords in JSON bodies) is searched for them everywhere it goes — the
//! serialized model (decompressed), the report to the operator (its JSON and the model delta
//! it carries), `/v1/model`, `/v1/incidents` and `/v1/rules`.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::io::Read;
use std::sync::Arc;

use common::*;
use ordo_enforcer::report::{Report, ReportSource};
use ordo_enforcer::runtime::EnforcerSource;

/// Each planted secret, as sent. Shared by every session, so that no "seen in few sessions"
/// rule alone can be what keeps them out: the value classes and field names must.
const API_KEY: &str = "ak_live_7Hq2Zp9Lx4Wm";
const QUERY_KEY: &str = "qk9f3Jx72LmPz";
const CARD: &str = "4111111111111111";
const CARD_IN_TEXT: &str = "4000 0566 5566 5556";
const SSN: &str = "078-05-1120";
const PASSWORD: &str = "hunter2-Correct!";
const SHORT_PASSWORD: &str = "pw1234";
const TOKEN_FIELD: &str = "tkn-Zx81-aa";
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0NDExIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
const HEX_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015";
const CSRF: &str = "csrf-Q7w1";
const SIGNATURE: &str = "c2lnbmF0dXJlLXZhbHVlLTEyMw==";

/// The session cookie of session `i`: every session has its own.
fn cookie(i: usize) -> String {
    format!("s3ss-{i}-Kp2Zr8")
}

fn planted(sessions: usize) -> Vec<String> {
    let mut all: Vec<String> = [
        API_KEY,
        QUERY_KEY,
        CARD,
        CARD_IN_TEXT,
        SSN,
        PASSWORD,
        SHORT_PASSWORD,
        TOKEN_FIELD,
        JWT,
        HEX_SECRET,
        CSRF,
        SIGNATURE,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.extend((0..sessions).map(cookie));
    all
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// The secrets of `planted` that `text` contains.
fn leaked<'a>(text: &str, planted: &'a [String]) -> Vec<&'a str> {
    planted
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .map(String::as_str)
        .collect()
}

const CONFIG: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Monitor
session:
  identifiers:
    - cookie: { name: SESSIONID }
    - clientIp: {}
rules:
  - name: one-export
    action: Block
    maxRepeat: { operation: GET /api/export, count: 1 }
"#;

#[tokio::test]
async fn planted_secrets_appear_in_no_model_report_or_admin_answer() {
    let up = start_upstream().await;
    let (e, analyzer) = start_learning(CONFIG, up.addr).await;
    let c = client();
    let sessions = 12;
    for i in 0..sessions {
        let cookies = format!("SESSIONID={}; csrftoken={CSRF}; theme=dark", cookie(i));
        let bearer = format!("Bearer {JWT}");
        let headers = [
            ("cookie", cookies.as_str()),
            ("x-api-key", API_KEY),
            ("authorization", bearer.as_str()),
            ("x-signature", SIGNATURE),
            ("content-type", "application/json"),
        ];
        for _ in 0..3 {
            let body = serde_json::json!({
                "cardNumber": CARD,
                "ssn": SSN,
                "password": PASSWORD,
                "pwd": SHORT_PASSWORD,
                "token": TOKEN_FIELD,
                "currency": "EUR",
                "note": CARD_IN_TEXT,
                "reference": JWT,
                "checksum": HEX_SECRET,
                "payee": { "iban": "DE89370400440532013000", "name": "Rent" },
            });
            let path = format!("/api/payments?api_key={QUERY_KEY}&page=1");
            let r = post(&c, &e, &path, &headers, &body.to_string()).await;
            assert_eq!(r.status, 200);
            let r = get(&c, &e, "/api/accounts?format=short", &headers).await;
            assert_eq!(r.status, 200);
            // A social security number in the path must not become part of an operation name.
            let r = get(&c, &e, &format!("/api/people/{SSN}/profile"), &headers).await;
            assert_eq!(r.status, 200);
        }
        // Two exports in a row open an incident for the session (Monitor: nothing blocked).
        for _ in 0..2 {
            assert_eq!(get(&c, &e, "/api/export", &headers).await.status, 200);
        }
    }
    let mut planted = planted(sessions);
    planted.push("DE89370400440532013000".into());

    let model_json = gunzip(&analyzer.snapshot().to_bytes());
    assert!(
        model_json.contains("body.cardNumber") && model_json.contains("header.x-api-key"),
        "the model learned the parameters: {model_json}"
    );
    assert_eq!(leaked(&model_json, &planted), Vec::<&str>::new(), "model");
    assert!(
        model_json.contains("\"EUR\""),
        "a harmless value shared by many sessions stays readable: {model_json}"
    );

    let source = EnforcerSource::new(Arc::clone(&e.shared), Arc::clone(&analyzer));
    let delta = source.take_model_delta().unwrap();
    let incidents = source.changed_incidents();
    assert!(!incidents.is_empty(), "the exports opened incidents");
    let report = Report {
        replica: "r".into(),
        instance: "i".into(),
        sequence: 1,
        sent_at_ms: 0,
        model_delta: delta.clone(),
        incidents,
        counters: source.counters(),
        rules: source.rule_counters(),
        config: source.running_config(),
    };
    let report_json = serde_json::to_string(&report).unwrap();
    assert_eq!(leaked(&report_json, &planted), Vec::<&str>::new(), "report");
    assert_eq!(
        leaked(&gunzip(&delta), &planted),
        Vec::<&str>::new(),
        "report's model delta"
    );

    for path in ["/v1/model", "/v1/incidents", "/v1/rules"] {
        let body = admin_json(&c, &e, path).await.to_string();
        assert_eq!(leaked(&body, &planted), Vec::<&str>::new(), "{path}");
    }
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    assert!(
        incidents.as_array().is_some_and(|list| !list.is_empty()),
        "{incidents}"
    );
    e.shutdown().await;
}
