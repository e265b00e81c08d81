//! Slow clients (docs/operations.md, "Slow clients"): many slow connections from one address
//! do not stop another address's requests, a trickling body is cut with 408, and under a
//! 1,024 file-descriptor limit a flood of the proxy port leaves the admin port's probes
//! answering. Loopback only: clients take their own source addresses in 127.0.0.0/8.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(to).await
}

/// The value of the series `name{labels}` in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn metrics_text(c: &TestClient, admin: SocketAddr) -> String {
    let answer = send(c, "GET", &format!("http://{admin}/metrics"), &[], "").await;
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// Polls the admin metrics until `done` holds, for at most `limit`; panics with the last text.
async fn wait_metrics(
    c: &TestClient,
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let text = metrics_text(c, admin).await;
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < limit,
            "waited {limit:?} for {what}; last metrics:\n{}",
            text.lines()
                .filter(|l| l.starts_with("ordo_client_limit")
                    || l.starts_with("ordo_connections")
                    || l.starts_with("ordo_requests_in_flight")
                    || l.starts_with("ordo_shed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn slow_connections_from_one_address_do_not_stop_another() {
    let up = start_upstream().await;
    // 16 permits in all: without the per-client caps, the slow address's 30 slow bodies
    // would hold every one of them and the other address would get 503.
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\n\
         limits: { maxConcurrentRequests: 16, maxConnectionsPerClient: 50, \
         maxConcurrentRequestsPerClient: 10, minBodyRate: 0, bodyReadTimeout: 60s, \
         headerReadTimeout: 60s }\n",
        up.addr,
    )
    .await;
    let c = client();
    let slow = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    // 30 requests whose bodies never come: 10 are admitted and hold their permits; 20 get
    // 429 (and their connections are closed).
    for _ in 0..30 {
        let mut s = connect_from(slow, e.proxy_addr).await.unwrap();
        let _ = s
            .write_all(b"POST /upload HTTP/1.1\r\nHost: bank\r\nContent-Length: 100000\r\n\r\nx")
            .await;
        held.push(s);
    }
    wait_metrics(
        &c,
        e.admin_addr,
        Duration::from_secs(20),
        "20 requests of the slow address refused and their connections closed",
        |t| {
            metric(
                t,
                "ordo_client_limit_refusals_total{reason=\"client_requests\"}",
            ) >= 20.0
                && metric(t, "ordo_connections") <= 10.0
        },
    )
    .await;
    // Then 60 connections that send half a request head: 40 fit under the address's 50.
    for _ in 0..60 {
        let mut s = connect_from(slow, e.proxy_addr).await.unwrap();
        let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: bank\r\n").await;
        held.push(s);
    }
    let text = wait_metrics(
        &c,
        e.admin_addr,
        Duration::from_secs(20),
        "20 connections of the slow address refused",
        |t| {
            metric(
                t,
                "ordo_client_limit_refusals_total{reason=\"client_connections\"}",
            ) >= 20.0
        },
    )
    .await;
    let refused = |reason: &str| {
        metric(
            &text,
            &format!("ordo_client_limit_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("client_requests"), 20.0);
    assert_eq!(refused("client_connections"), 20.0);
    assert_eq!(metric(&text, "ordo_connections"), 50.0);
    assert_eq!(metric(&text, "ordo_requests_in_flight"), 10.0);
    assert_eq!(metric(&text, "ordo_shed_total"), 0.0);

    // Another address is served at once, while the slow one still holds its requests.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
    let other = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    for i in 0..5 {
        let answer = send(
            &other,
            "GET",
            &format!("http://{}/accounts/{i}", e.proxy_addr),
            &[],
            "",
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    drop(held);
    e.shutdown().await;
}

#[tokio::test]
async fn a_connection_over_the_per_client_cap_is_told_and_closed() {
    let up = start_upstream().await;
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\n\
         limits: { maxConnectionsPerClient: 2, headerReadTimeout: 60s }\n",
        up.addr,
    )
    .await;
    let from = Ipv4Addr::new(127, 0, 0, 5);
    let _a = connect_from(from, e.proxy_addr).await.unwrap();
    let _b = connect_from(from, e.proxy_addr).await.unwrap();
    let mut third = connect_from(from, e.proxy_addr).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the refused connection was not closed");
    assert!(
        out.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    e.shutdown().await;
}

/// Sends a POST head announcing `len` bytes, then `chunk` bytes every `every` until the
/// answer comes; returns the answer's first bytes and when it came.
async fn trickle(
    addr: SocketAddr,
    path: &str,
    len: usize,
    chunk: usize,
    every: Duration,
    extra_headers: &str,
) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bank\r\nContent-Length: {len}\r\n{extra_headers}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < len {
            let n = chunk.min(len - sent);
            if write.write_all(&vec![b'7'; n]).await.is_err() {
                break;
            }
            sent += n;
            tokio::time::sleep(every).await;
        }
        write
    });
    let mut out = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut out))
        .await
        .expect("no answer within 30 s")
        .unwrap_or(0);
    let took = started.elapsed();
    writer.abort();
    (String::from_utf8_lossy(&out[..n]).into_owned(), took)
}

#[tokio::test]
async fn a_trickling_body_is_cut_with_408_and_a_steady_one_passes() {
    let up = start_upstream().await;
    // bodyReadTimeout is far away: the rate cuts the body, not the timeout.
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\", timeout: 120s }\n\
         limits: { minBodyRate: 1000, bodyRateGrace: 1s, bodyReadTimeout: 120s }\n",
        up.addr,
    )
    .await;
    // 10 bytes/s against 1000 bytes/s: streamed to the upstream (no check needs the body).
    let (answer, took) = trickle(
        e.proxy_addr,
        "/upload",
        100_000,
        1,
        Duration::from_millis(100),
        "",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("slower than 1000 bytes per second"),
        "{answer:?}"
    );
    // Expected after about the 1 s grace; 15 s is far below the 120 s timeouts.
    assert!(took < Duration::from_secs(15), "{took:?}");

    // About 10,000 bytes/s (ten times the minimum) for 1.5 s: forwarded whole.
    let (answer, _) = trickle(
        e.proxy_addr,
        "/upload",
        15_000,
        1_000,
        Duration::from_millis(100),
        "",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\"bodyLen\":15000"), "{answer:?}");

    let c = client();
    let text = metrics_text(&c, e.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "ordo_client_limit_refusals_total{reason=\"body_rate\"}"
        ),
        1.0
    );
    // A slow client is the client's fault, not the upstream's.
    for kind in ["refused", "reset", "timeout", "other"] {
        assert_eq!(
            metric(
                &text,
                &format!("ordo_upstream_errors_total{{kind=\"{kind}\"}}")
            ),
            0.0,
            "{kind}"
        );
    }
    e.shutdown().await;
}

#[tokio::test]
async fn a_trickling_body_that_a_check_buffers_is_cut_with_408() {
    let up = start_upstream().await;
    let openapi = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bank-openapi.yaml"
    );
    let e = start_enforcer(
        &format!(
            "upstream: {{ url: \"http://{{upstream}}\" }}\nmode: Enforce\n\
             openAPI: {{ path: {openapi} }}\n\
             limits: {{ minBodyRate: 1000, bodyRateGrace: 1s, bodyReadTimeout: 120s }}\n"
        ),
        up.addr,
    )
    .await;
    let (answer, took) = trickle(
        e.proxy_addr,
        "/api/v1/transferFunds",
        50_000,
        1,
        Duration::from_millis(100),
        "Content-Type: application/json\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    e.shutdown().await;
}

#[tokio::test]
async fn under_a_low_file_descriptor_limit_a_flooded_proxy_leaves_the_probes_answering() {
    const FLOOD: usize = 4000;
    // This process needs a descriptor per flooding connection.
    let own = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: u64 = own
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    if soft < 8192 {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), "--nofile=8192:"])
            .status()
            .expect("prlimit (util-linux) is needed to raise this test's descriptor limit");
        assert!(
            status.success(),
            "prlimit --nofile=8192: on the test process failed"
        );
    }
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("enforcer.yaml");
    // The header timeout is long so that the flood stays in place while the probes are asked.
    std::fs::write(
        &config,
        format!(
            "upstream: {{ url: \"http://{}\" }}\nlisten: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n\
             limits: {{ headerReadTimeout: 120s }}\n",
            up.addr
        ),
    )
    .unwrap();
    let child = std::process::Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_ordo-enforcer"))
        .arg("--config")
        .arg(&config)
        .args(["--workers", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the enforcer under prlimit");
    let mut child = Child(child);
    let fields = listening_line(child.0.stdout.take().unwrap());
    let proxy: SocketAddr = fields["proxy_addr"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = fields["admin_addr"].as_str().unwrap().parse().unwrap();
    // (1024 - 64 reserved - 64 admin connections) / 2: the proxy keeps out of the admin
    // listener's descriptors.
    assert_eq!(fields["max_connections"], 448, "{fields}");

    // 4,000 connections that send half a request head and wait, from 16 addresses (250 each,
    // under the per-client cap: it is the total cap that has to hold).
    let started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    let mut failed = 0;
    for batch in 0..FLOOD / 250 {
        let from = Ipv4Addr::new(127, 0, 1, u8::try_from(10 + batch).unwrap());
        let connects = (0..250).map(|_| async move {
            let mut s = tokio::time::timeout(Duration::from_secs(5), connect_from(from, proxy))
                .await
                .ok()?
                .ok()?;
            let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: bank\r\n").await;
            Some(s)
        });
        for s in futures::future::join_all(connects).await {
            match s {
                Some(s) => flood.push(s),
                None => failed += 1,
            }
        }
    }
    let flooded = started.elapsed();

    // The probes answer, within a bound far from the flood's 120 s header timeout.
    let c = client();
    for probe in ["/healthz", "/readyz"] {
        let asked = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            send(&c, "GET", &format!("http://{admin}{probe}"), &[], ""),
        )
        .await
        .unwrap_or_else(|_| panic!("{probe} did not answer within 10 s under the flood"));
        assert_eq!(answer.status, 200, "{probe}");
        println!("{probe}: 200 in {:?}", asked.elapsed());
    }
    // Connections still in the listen backlog are refused as they are accepted.
    let expected = (FLOOD - 448 - failed) as f64 * 0.9;
    let text = wait_metrics(
        &c,
        admin,
        Duration::from_secs(20),
        "the connections over the cap refused",
        |t| {
            metric(
                t,
                "ordo_client_limit_refusals_total{reason=\"connections\"}",
            ) >= expected
        },
    )
    .await;
    let refused = metric(
        &text,
        "ordo_client_limit_refusals_total{reason=\"connections\"}",
    );
    let open = metric(&text, "ordo_connections");
    println!(
        "{FLOOD} connections in {flooded:?} ({failed} not established): {open} open, {refused} refused over the cap"
    );
    assert!(open <= 448.0, "{open} connections open, over the cap");
    // The proxy itself still answers what it can: a refusal, told at once.
    let mut s = connect_from(Ipv4Addr::new(127, 0, 2, 1), proxy)
        .await
        .unwrap();
    let _ = s
        .write_all(b"GET /x HTTP/1.1\r\nHost: bank\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    drop(flood);
    // Once the flood is gone, the proxy serves again.
    let started = Instant::now();
    loop {
        let answer = send(&c, "GET", &format!("http://{proxy}/accounts/1"), &[], "").await;
        if answer.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the proxy still answers {} 20 s after the flood ended",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
}

/// Sends one request on a fresh HTTP/1.1 or HTTP/2 connection and returns the connection's
/// task, which ends when the server closes the connection, and the sender, which keeps the
/// client from closing it itself.
async fn one_request(
    addr: SocketAddr,
    http2: bool,
) -> (tokio::task::JoinHandle<()>, Box<dyn std::any::Any>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = || {
        let uri = if http2 {
            format!("http://{addr}/x")
        } else {
            "/x".to_owned()
        };
        http::Request::get(uri)
            .header("host", "bank")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    if http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
        (task, Box::new(sender))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
        (task, Box::new(sender))
    }
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_header_timeout() {
    let up = start_upstream().await;
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\nlimits: { idleTimeout: 60s, headerReadTimeout: 1s }\n",
        up.addr,
    )
    .await;
    // Between two requests, the wait for the next head is a header read: an idle HTTP/1.1
    // connection is held for headerReadTimeout, not idleTimeout.
    let (conn, _sender) = one_request(e.proxy_addr, false).await;
    let closed = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/1.1 connection was still open after 15 s"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn idle_http2_connections_get_the_header_timeout_when_connections_run_short() {
    let up = start_upstream().await;
    let config = "upstream: { url: \"http://{upstream}\" }\n\
                  limits: { idleTimeout: 60s, headerReadTimeout: 1s, maxConnections: MAX }\n";
    // Plenty of connections left: an idle HTTP/2 connection is kept for idleTimeout.
    let e = start_enforcer(&config.replace("MAX", "100"), up.addr).await;
    let (conn, _sender) = one_request(e.proxy_addr, true).await;
    let closed = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(
        closed.is_err(),
        "an idle HTTP/2 connection was closed before idleTimeout"
    );
    e.shutdown().await;
    // Half the cap in use (this one connection of 2): idle connections go after
    // headerReadTimeout.
    let e = start_enforcer(&config.replace("MAX", "2"), up.addr).await;
    let (conn, _sender) = one_request(e.proxy_addr, true).await;
    let closed = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection was kept under connection pressure"
    );
    e.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunk_is_a_client_error_not_an_upstream_one() {
    let up = start_upstream().await;
    let e = start_enforcer("upstream: { url: \"http://{upstream}\" }\n", up.addr).await;
    let mut s = TcpStream::connect(e.proxy_addr).await.unwrap();
    // A first chunk, then a chunk size that is not hexadecimal.
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: bank\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nxx\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let c = client();
    let text = metrics_text(&c, e.admin_addr).await;
    for kind in ["refused", "reset", "timeout", "other"] {
        assert_eq!(
            metric(
                &text,
                &format!("ordo_upstream_errors_total{{kind=\"{kind}\"}}")
            ),
            0.0,
            "{kind}"
        );
    }
    e.shutdown().await;
}
