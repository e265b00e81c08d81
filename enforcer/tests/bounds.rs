//! Bounded memory for everything keyed by client input: a path fuzzer and a flood of
//! distinct session ids through a real enforcer, with the caps asserted.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

/// xorshift: deterministic "random" paths.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn random_path(x: &mut u64) -> String {
    let depth = next(x) % 8 + 1;
    let mut p = String::new();
    for _ in 0..depth {
        let v = next(x);
        // Mix of names, numbers and tokens.
        match v % 3 {
            0 => p.push_str(&format!("/seg{}", v % 5000)),
            1 => p.push_str(&format!("/{}", v % 1_000_000)),
            _ => p.push_str(&format!("/{v:x}")),
        }
    }
    p
}

#[tokio::test]
async fn path_fuzzer_and_session_flood_stay_within_caps() {
    let up = start_upstream().await;
    let yaml = r#"
upstream: { url: "http://{upstream}" }
mode: Monitor
session:
  identifiers: [ { header: { name: X-Session } } ]
  maxSessions: 640
operations: { maxTemplates: 100, maxValuesPerPosition: 16 }
"#;
    let e = start_enforcer(yaml, up.addr).await;
    let resolver = &e.shared.resolver;
    // 100,000 random paths through the resolver the proxy uses.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..100_000 {
        let path = random_path(&mut x);
        let mut segments = Vec::new();
        resolver.resolve(&http::Method::GET, &path, &mut segments);
    }
    let stats = resolver.stats();
    assert!(stats.learned_templates <= 100, "{stats:?}");
    assert!(stats.tree_nodes <= stats.max_nodes, "{stats:?}");
    // 1,000,000 distinct session ids through the session table the proxy uses.
    let table = &e.shared.sessions;
    for i in 0..1_000_000u32 {
        let hash = table.key_hash(&format!("header:x-session=fuzz-{i}"));
        table
            .with_entry(hash, 0, |entry, _| entry.history.push(1, u64::from(i), 10))
            .unwrap();
    }
    assert!(table.count() <= 640, "{:?}", table.stats());
    assert!(table.stats().evicted >= 1_000_000 - 640);

    // And through the sockets: 2,000 requests with random paths and fresh sessions.
    let c = client();
    for i in 0..2_000u32 {
        let path = random_path(&mut x);
        let session = format!("net-{i}");
        let r = get(&c, &e, &path, &[("x-session", session.as_str())]).await;
        assert_eq!(r.status, 200);
    }
    let model = admin_json(&c, &e, "/v1/model").await;
    assert!(model["templating"]["learnedTemplates"].as_u64().unwrap() <= 100);
    assert!(
        model["operations"].as_array().unwrap().len() <= 100 + 8,
        "learned + overflow buckets"
    );
    assert!(model["sessions"]["sessions"].as_u64().unwrap() <= 640);
    let m = metrics(&c, &e).await;
    assert!(metric_value(&m, "ordo_sessions_tracked") <= 640.0);
    assert!(metric_value(&m, "ordo_session_evictions_total") >= 1_000_000.0 - 640.0);
    // Requests by operation use a bounded label set.
    let series = m
        .lines()
        .filter(|l| l.starts_with("ordo_requests_total{"))
        .count();
    assert!(series <= 110, "{series} request series");
    e.shutdown().await;
}

/// A path segment of `len` letters, different for each `i` (letters only, so that only its
/// length can make it a value).
fn long_segment(i: usize, len: usize) -> String {
    let mut s: String = (0..len)
        .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
        .collect();
    for (k, c) in format!("{i}").bytes().enumerate() {
        s.replace_range(k..=k, &char::from(b'a' + (c - b'0')).to_string());
    }
    s
}

/// The longest string anywhere in a JSON document.
fn longest_string(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len(),
        serde_json::Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| k.len().max(longest_string(v)))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn long_path_segments_stay_bounded_in_bytes() {
    use std::io::Read;

    let up = start_upstream().await;
    let yaml = r#"
upstream: { url: "http://{upstream}" }
mode: Monitor
session:
  identifiers: [ { header: { name: X-Session } } ]
learning: { minRequests: 20, minSessions: 2, minEndpointRequests: 3 }
rules:
  - name: no-second-download
    maxRepeat: { operation: "GET /download/{file}", count: 1 }
"#;
    let (e, analyzer) = start_learning(yaml, up.addr).await;
    let c = client();
    for i in 0..40 {
        let session = format!("warm-{}", i % 4);
        let r = get(&c, &e, "/api/items", &[("x-session", session.as_str())]).await;
        assert_eq!(r.status, 200);
    }
    // 600 requests with a 60 kB segment each (36 MB of path), from 50 sessions whose own
    // keys are long too; each second download in a session is flagged (an incident).
    let long_session = "k".repeat(4_000);
    for i in 0..600 {
        let segment = long_segment(i, 60_000);
        let path = if i % 2 == 0 {
            format!("/p{}/{segment}", i % 40)
        } else {
            format!("/download/{segment}")
        };
        let session = format!("{long_session}{}", i % 50);
        let r = get(&c, &e, &path, &[("x-session", session.as_str())]).await;
        assert_eq!(r.status, 200);
    }
    let stats = e.shared.resolver.stats();
    assert!(stats.tree_bytes <= 16 * 1024, "{stats:?}");
    assert!(stats.learned_templates <= 45, "{stats:?}");

    let admin = |path: &str| format!("http://{}{path}", e.admin_addr);
    for path in ["/v1/incidents", "/v1/model", "/v1/rules"] {
        let a = send(&c, "GET", &admin(path), &[], "").await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.body.len() < 1024 * 1024, "{path}: {} bytes", a.body.len());
        let json = a.json();
        assert!(
            longest_string(&json) <= 4096,
            "{path}: a string of {}",
            longest_string(&json)
        );
        if path == "/v1/incidents" {
            assert!(
                !json.as_array().unwrap().is_empty(),
                "the downloads were flagged"
            );
        }
    }
    let mut model = Vec::new();
    flate2::read::GzDecoder::new(analyzer.snapshot().to_bytes().as_slice())
        .read_to_end(&mut model)
        .unwrap();
    assert!(model.len() < 1024 * 1024, "model: {} bytes", model.len());
    let m = metrics(&c, &e).await;
    assert!(m.len() < 256 * 1024, "metrics: {} bytes", m.len());
    e.shutdown().await;
}
