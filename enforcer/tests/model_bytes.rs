//! What one learned operation costs in heap bytes, over real HTTP through the whole enforcer:
//! the workload of `scripts/bench`'s memory phase (bench/src/run.rs, `memory`): Learn mode
//! without OpenAPI, 400 distinct `GET /api/v2/<a>/<b>/items` operations, 25 requests each from
//! 200 sessions, answered with the benchmark upstream's ~1 KB JSON. A counting global
//! allocator gives the live heap bytes before and after, and the heap bytes of a copy of
//! each part of the model (printed: `--nocapture`; docs/benchmarks.md, "What changed
//! (learned model bytes)"). The bound, 14 KiB, fails at the size before issue #18's model
//! work: 30,791 heap bytes per operation (24.8 KB of RSS in the benchmark); 12,220 after.
#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::alloc::System;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cap::Cap;
use common::{client, send, start_learning};
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The system allocator, counting the bytes live at any time.
#[global_allocator]
static GLOBAL: Cap<System> = Cap::new(System, usize::MAX);

fn live() -> isize {
    GLOBAL.allocated() as isize
}

/// The benchmark upstream's answer (bench/src/upstream.rs, `response_body`).
fn response_body() -> Bytes {
    let transactions: Vec<serde_json::Value> = (0..5u32)
        .map(|i| {
            serde_json::json!({
                "id": format!("{}", 900_000_100 + i),
                "bookedAt": format!("2026-11-{:02}T09:{:02}:00Z", 10 + i, 10 + 7 * i),
                "amount": { "value": format!("-{}.{:02}", 12 + i * 7, (i * 13) % 100), "currency": "EUR" },
                "counterparty": "ACME Groceries Ltd",
                "category": "groceries"
            })
        })
        .collect();
    let doc = serde_json::json!({
        "accountId": "40000042",
        "iban": "GB33BUKB20201555555555",
        "name": "Everyday current account",
        "status": "active",
        "balance": { "available": "1520.33", "booked": "1498.10", "currency": "EUR" },
        "overdraftLimit": "500.00",
        "owner": { "customerId": "cust-0000042", "displayName": "A. Customer" },
        "transactions": transactions,
        "links": { "self": "/api/v1/accounts/40000042", "transactions": "/api/v1/accounts/40000042/transactions?page=1" }
    });
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = response_body();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The benchmark's enforcer config for this phase (bench/src/scenario.rs,
/// `enforcer_config_yaml`: Learn, sessions by header, every detector on).
const CONFIG: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Learn
failurePolicy: Open
limits: { maxConnectionsPerClient: 0, maxConcurrentRequestsPerClient: 0 }
session:
  identifiers: [ { header: { name: X-Session-Id } }, { clientIp: {} } ]
  idleTimeout: 30m
  maxSessions: 100000
  history: { requests: 10, duration: 10m }
detectors:
  shadowEndpoint: { action: Block }
  requestShape: { action: Log }
  unlikelySequence: { action: Log }
  volume: { action: Block }
  enumeration: { action: Block }
  credentialStuffing: { action: Block }
  identityLineage: { action: Log }
"#;

/// The benchmark's literal path segments (bench/src/loadgen.rs, `SEGMENT_WORDS`).
const WORDS: [&str; 20] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];

/// Request `k` of `ops` operations (bench/src/loadgen.rs, `DistinctOperationsSource`).
fn path_and_session(k: usize, side: usize) -> (String, String) {
    let ops = side * side;
    let op = k % ops;
    let (a, b) = (WORDS[op / side], WORDS[op % side]);
    let session = (k / ops) % 200;
    let page = 1 + (k / ops) % 5;
    (
        format!("/api/v2/{a}/{b}/items?page={page}&pageSize=20&sort=name"),
        format!("ops-{session}"),
    )
}

async fn drive(proxy: SocketAddr, side: usize, requests: usize) {
    let c = client();
    futures::stream::iter(0..requests)
        .map(|k| {
            let c = c.clone();
            async move {
                let (path, session) = path_and_session(k, side);
                let a = send(
                    &c,
                    "GET",
                    &format!("http://{proxy}{path}"),
                    &[
                        ("x-session-id", session.as_str()),
                        ("user-agent", "ordo-bench/1 (bank-app)"),
                    ],
                    "",
                )
                .await;
                assert_eq!(a.status, 200, "{path}");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_operation_costs_at_most_its_bound_in_heap_bytes() {
    let up = start_upstream().await;
    let (e, analyzer) = start_learning(CONFIG, up).await;
    // Same sessions before and after: only the operations differ.
    drive(e.proxy_addr, 1, 2000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live();
    let side = 20;
    let ops = side * side;
    drive(e.proxy_addr, side, ops * 25).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = live();
    let per_op = (after - before) / ops as isize;

    // The model's own share: a copy of it costs what it holds.
    let at = live();
    let model = analyzer.snapshot();
    let model_bytes = live() - at;
    let learned = model.operations.len();
    eprintln!("{}", breakdown(&model));
    drop(model);
    eprintln!(
        "model_bytes: {ops} operations ({learned} learned): {per_op} heap bytes per operation, \
         of which the model {} ({} -> {} bytes live)",
        model_bytes / learned.max(1) as isize,
        before,
        after
    );
    assert!(learned >= ops, "{learned} operations learned");
    assert!(
        per_op <= 14 * 1024,
        "{per_op} heap bytes per learned operation"
    );
    e.shutdown().await;
}

/// Heap bytes a copy of `value` allocates.
fn bytes_of<T: Clone>(value: &T) -> isize {
    let at = live();
    let copy = value.clone();
    let bytes = live() - at;
    drop(copy);
    bytes
}

/// Heap bytes per operation of each part of the model, for the report of the test.
fn breakdown(model: &ordo_enforcer::model::LearnedModel) -> String {
    let n = model.operations.len().max(1) as isize;
    let mut parts: Vec<(String, isize)> = Vec::new();
    let mut add = |name: &str, bytes: isize| {
        if let Some(p) = parts.iter_mut().find(|(n, _)| n == name) {
            p.1 += bytes;
        } else {
            parts.push((name.to_owned(), bytes));
        }
    };
    for op in &model.operations {
        add("operations (whole)", bytes_of(op));
        add("template", bytes_of(&op.template));
        add("status", bytes_of(&op.status));
        add("shape (whole)", bytes_of(&op.shape));
        for (name, p) in &op.shape.params {
            add("shape param name", bytes_of(name));
            add("shape param kinds", bytes_of(&p.kinds));
            add("shape param chars", bytes_of(&p.chars));
            add("shape param markers", bytes_of(&p.markers));
            add("shape param formats", bytes_of(&p.formats));
            add("shape param lengths", bytes_of(&p.lengths));
            add("shape param magnitudes", bytes_of(&p.magnitudes));
            add("shape param values", bytes_of(&p.values));
            add("shape param shown_values", bytes_of(&p.shown_values));
            add("shape param distinct", bytes_of(&p.distinct));
        }
        add("volume", bytes_of(&op.volume));
        add("objects", bytes_of(&op.objects));
        add("exposure", bytes_of(&op.exposure));
        add("lineage", bytes_of(&op.lineage));
    }
    add("headers (all ops)", bytes_of(&model.headers));
    add("sequences (all ops)", bytes_of(&model.sequences));
    let params: usize = model.operations.iter().map(|o| o.shape.params.len()).sum();
    use ordo_enforcer::model::{exposure, lineage, sequence, shape, sketch};
    use std::mem::size_of;
    eprintln!(
        "sizes: ParamProfile {} DistinctSketch {} NextCounts {} OriginCounts {} ExposureCounts {} OperationStats {} contexts {}",
        size_of::<shape::ParamProfile>(),
        size_of::<sketch::DistinctSketch>(),
        size_of::<sequence::NextCounts>(), // the view; a map slot is 32 bytes
        size_of::<lineage::OriginCounts>(),
        size_of::<exposure::ExposureCounts>(),
        size_of::<ordo_enforcer::model::OperationStats>(),
        model.sequences.len(),
    );
    eprintln!(
        "contexts with several next operations: {}",
        model
            .sequences
            .iter()
            .filter(|(_, c)| c.next_len() > 1)
            .count()
    );
    let mut out =
        format!("model breakdown, heap bytes per operation ({params} params over {n} operations):");
    for (name, bytes) in parts {
        out.push_str(&format!("\n  {name:<28} {:>7}", bytes / n));
    }
    out
}
