//! Several proxy workers: each a thread with its own runtime and listening socket on the same
//! address; they share sessions and policy, serve every connection and stop on shutdown.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use ordo_enforcer::config::parse_yaml;
use ordo_enforcer::detect::NoopAnalyzer;
use ordo_enforcer::runtime::{StartOptions, start_with_options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Threads named `ordo-proxy-*`, once the count settles on `expected` (a new thread names
/// itself when it starts; an ended one leaves the list when joined by the kernel).
async fn proxy_threads_settle(expected: usize) -> usize {
    let mut n = proxy_threads();
    for _ in 0..100 {
        if n == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = proxy_threads();
    }
    n
}

fn proxy_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("ordo-proxy-"))
        .count()
}

async fn one_request(addr: std::net::SocketAddr, i: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /w/{i} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_serve_on_one_address_and_stop_on_shutdown() {
    let up = start_upstream().await;
    let yaml = enforcer_yaml("upstream: { url: \"http://{upstream}\" }\n", up.addr);
    let e = start_with_options(
        parse_yaml(&yaml).unwrap(),
        Arc::new(NoopAnalyzer),
        StartOptions {
            config_watcher: None,
            on_reload: None,
            workers: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        proxy_threads_settle(2).await,
        2,
        "workers 1 and 2 run on threads of their own"
    );

    // Separate connections, so the kernel spreads them over the three listening sockets.
    let answers: Vec<_> = (0..48)
        .map(|i| tokio::spawn(one_request(e.proxy_addr, i)))
        .collect();
    for a in answers {
        let a = a.await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 48);

    let addr = e.proxy_addr;
    tokio::time::timeout(Duration::from_secs(10), e.shutdown())
        .await
        .expect("shutdown finishes");
    // Every worker stopped listening and its thread ended.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(proxy_threads_settle(0).await, 0);
}

#[tokio::test]
async fn a_taken_address_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = enforcer_yaml(
        &format!(
            "upstream: {{ url: \"http://{{upstream}}\" }}\nlisten: {}\nadmin:\n  listen: 127.0.0.1:0\n",
            taken.local_addr().unwrap()
        ),
        taken.local_addr().unwrap(),
    );
    let err = start_with_options(
        parse_yaml(&yaml).unwrap(),
        Arc::new(NoopAnalyzer),
        StartOptions {
            config_watcher: None,
            on_reload: None,
            workers: 2,
        },
    )
    .await
    .err()
    .expect("the address is taken");
    assert!(err.to_string().contains("cannot listen"), "{err}");
}
