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
