//! The shipped example config loads and starts.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

use std::path::PathBuf;
use std::sync::Arc;

use ordo_enforcer::config::{Mode, load_file, parse_yaml};
use ordo_enforcer::detect::NoopAnalyzer;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/enforcer.yaml")
}

#[test]
fn example_config_loads_with_every_section() {
    let config = load_file(&example()).unwrap();
    assert_eq!(config.mode, Mode::Monitor);
    assert_eq!(config.rules.len(), 4);
    assert_eq!(config.rate_limits.len(), 1);
    assert_eq!(config.session.identifiers.len(), 3);
    assert!(config.session.jwt_verification.is_some());
}

#[tokio::test]
async fn example_config_starts_on_loopback() {
    let text = std::fs::read_to_string(example()).unwrap();
    let text = text
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:9090", "127.0.0.1:0")
        .replace(
            "/etc/ordo/jwt/secret",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem"),
        )
        .replace(
            "/etc/ordo/openapi/openapi.yaml",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/bank-openapi.yaml"
            ),
        )
        .replace("tokenFile: /etc/ordo/admin/token", "token: t0ken");
    let config = parse_yaml(&text).unwrap();
    let running = ordo_enforcer::runtime::start(config, None, Arc::new(NoopAnalyzer))
        .await
        .unwrap();
    running.shutdown().await;
}

#[test]
fn validation_errors_name_the_field() {
    let text = std::fs::read_to_string(example()).unwrap();
    let bad = text.replace("count: 1", "count: 0");
    let err = parse_yaml(&bad).unwrap_err().to_string();
    assert!(
        err.contains("rules[1].maxRepeat.count: must be between 1 and 63, got 0"),
        "{err}"
    );
}
