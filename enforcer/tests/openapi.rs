//! The declared OpenAPI document: good requests pass, bad parameters and bodies are
//! rejected with problem details listing the violations; in Monitor they are only flagged.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn yaml(mode: &str) -> String {
    format!(
        "upstream: {{ url: \"http://{{upstream}}\" }}\nmode: {mode}\nopenAPI: {{ path: {FIXTURES}/bank-openapi.yaml }}\nsession:\n  identifiers: [ {{ header: {{ name: X-Session }} }} ]\n"
    )
}

#[tokio::test]
async fn good_and_bad_requests_against_the_schema() {
    let up = start_upstream().await;
    let e = start_enforcer(&yaml("Enforce"), up.addr).await;
    let c = client();
    let json = [("content-type", "application/json"), ("x-session", "u1")];
    let ok = post(
        &c,
        &e,
        "/api/v1/transferFunds",
        &json,
        r#"{"from": 1, "to": 2, "amount": 10.5, "memo": null}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(
        ok.json()["bodyLen"],
        50,
        "the buffered body is forwarded intact"
    );

    let bad = post(
        &c,
        &e,
        "/api/v1/transferFunds",
        &json,
        r#"{"from": "1", "to": 2, "amount": 0, "isAdmin": true}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.headers["content-type"], "application/problem+json");
    let p = bad.json();
    assert_eq!(p["kind"], "SchemaViolation");
    let errors: Vec<String> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("body /from:")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("body /amount:")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("isAdmin")), "{errors:?}");
    assert!(p["incidentId"].as_str().unwrap().starts_with("inc-"));

    let broken = post(&c, &e, "/api/v1/transferFunds", &json, r#"{"from": 1,"#).await;
    assert_eq!(broken.status, 400);
    assert_eq!(broken.json()["errors"][0], "body is not valid JSON");
    let missing = post(&c, &e, "/api/v1/transferFunds", &json, "").await;
    assert_eq!(
        missing.json()["errors"][0],
        "a JSON request body is required"
    );

    let h = [("x-session", "u2")];
    assert_eq!(
        get(&c, &e, "/api/v1/accounts/42/balance?currency=EUR", &h)
            .await
            .status,
        200
    );
    let p = get(&c, &e, "/api/v1/accounts/abc/balance?currency=XBT", &h).await;
    assert_eq!(p.status, 400);
    assert_eq!(p.json()["errors"].as_array().unwrap().len(), 2);
    // Only the valid requests reached the app.
    assert_eq!(up.seen.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Declared operations keep their declared names.
    let model = admin_json(&c, &e, "/v1/model").await;
    let ops: Vec<&str> = model["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["operation"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"GET /api/v1/accounts/{account_id}/balance"),
        "{ops:?}"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn monitor_mode_flags_schema_violations_but_forwards() {
    let up = start_upstream().await;
    let e = start_enforcer(&yaml("Monitor"), up.addr).await;
    let c = client();
    let json = [("content-type", "application/json"), ("x-session", "m")];
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &json, r#"{"from": 1}"#)
            .await
            .status,
        200
    );
    let incidents = admin_json(&c, &e, "/v1/incidents").await;
    assert_eq!(
        incidents[0]["kinds"],
        serde_json::json!(["SchemaViolation"])
    );
    assert!(
        incidents[0]["summary"]
            .as_str()
            .unwrap()
            .contains("violates the OpenAPI document"),
        "{}",
        incidents[0]["summary"]
    );
    e.shutdown().await;
}
