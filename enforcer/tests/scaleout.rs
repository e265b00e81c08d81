//! Several enforcer replicas with a static peer list (`peers`), each request sent to a
//! different replica as a round-robin front would: sequence rules and per-session limits
//! decide as one replica would, a forged forwarded request is refused, and a replica left out
//! of the set or stopped causes no false positive. docs/scale-out.md describes the design.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::runtime::RunningEnforcer;

const SECRET: &str = "a-test-secret-shared-by-replicas";
/// The session history's duration: also how long a replica that just started treats the
/// sessions it owns as possibly served elsewhere before (docs/scale-out.md).
const HISTORY: Duration = Duration::from_millis(1500);
/// Past this after a change, replicas decide as a single one would: the history's duration
/// after the hold (1 s with a static list: how long others may still route by the previous
/// view, `Router::hold`), and a margin.
const SETTLED: Duration = Duration::from_millis(1500 + 1000 + 300);

fn config(peers: Option<(SocketAddr, &[SocketAddr])>) -> String {
    let mut yaml = format!(
        r#"
upstream: {{ url: "http://{{upstream}}" }}
mode: Enforce
session:
  identifiers: [ {{ header: {{ name: X-Session }} }} ]
  history: {{ requests: 10, duration: {}ms }}
rules:
  - name: balance-before-transfer
    action: Block
    requires:
      operation: POST /api/v1/transferFunds
      after: [ "GET /api/v1/accounts/{{account_id}}/balance" ]
      within: {{ requests: 5, duration: 1s }}
rateLimits:
  - name: balances
    operation: GET /api/v1/accounts/{{account_id}}/balance
    requests: 4
    per: 1m
    action: Block
"#,
        HISTORY.as_millis()
    );
    if let Some((me, all)) = peers {
        let list: Vec<String> = all.iter().map(|a| format!("\"{a}\"")).collect();
        yaml.push_str(&format!(
            "peers:\n  listen: {me}\n  advertise: \"{me}\"\n  static: [{}]\n  secret: {SECRET}\n  suspectFor: 30s\n",
            list.join(", ")
        ));
    }
    yaml
}

/// A free loopback address for a replica's internal listener, which must be known before the
/// replica starts (the others list it). Taken below Linux's ephemeral range (32768-60999):
/// a port from `bind(0)` is free only until another test's `bind(0)` gets it too, which
/// happened in CI ("Address already in use"). Each process starts at its own offset.
fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    for _ in 0..10_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// `n` replicas knowing each other (or not, with `peers` false), ready once the start-up
/// horizon has passed.
async fn replicas(n: usize, peers: bool, upstream: SocketAddr) -> Vec<RunningEnforcer> {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
    let mut out = Vec::new();
    for me in &addrs {
        let yaml = config(peers.then_some((*me, addrs.as_slice())));
        out.push(start_enforcer(&yaml, upstream).await);
    }
    tokio::time::sleep(SETTLED).await;
    out
}

async fn status(c: &TestClient, e: &RunningEnforcer, method: &str, path: &str, s: &str) -> u16 {
    let url = format!("http://{}{path}", e.proxy_addr);
    send(c, method, &url, &[("x-session", s)], "{}")
        .await
        .status
}

fn forward_total(text: &str, result: &str) -> f64 {
    metric_value(text, &format!("ordo_forward_total{{result=\"{result}\"}}"))
}

/// Each session: a balance lookup on one replica, the transfer on the next. Returns the
/// transfer statuses.
async fn balance_then_transfer(
    c: &TestClient,
    es: &[RunningEnforcer],
    sessions: usize,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..sessions {
        let s = format!("honest-{i}");
        let a = &es[i % es.len()];
        let b = &es[(i + 1) % es.len()];
        assert_eq!(
            status(c, a, "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
        statuses.push(status(c, b, "POST", "/api/v1/transferFunds", &s).await);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_spread_over_replicas_is_decided_as_on_one() {
    let upstream = start_upstream().await;
    let c = client();
    let es = replicas(3, true, upstream.addr).await;

    // Honest: the required lookup happened on another replica than the transfer.
    let statuses = balance_then_transfer(&c, &es, 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // An attack is still one: a transfer without the lookup, whatever replica gets it.
    for (i, e) in es.iter().enumerate() {
        let s = format!("attacker-{i}");
        assert_eq!(
            status(&c, e, "POST", "/api/v1/transferFunds", &s).await,
            403
        );
    }
    // A per-session limit counts the session's requests on every replica: the fifth lookup
    // within the minute is refused, as on one replica (each replica alone saw at most two).
    let mut limited = Vec::new();
    for i in 0..5 {
        limited.push(status(&c, &es[i % 3], "GET", "/api/v1/accounts/7/balance", "busy").await);
    }
    assert_eq!(limited, [200, 200, 200, 200, 429]);

    // Every replica forwarded and received some; none answered from the wrong state.
    let mut forwarded = 0.0;
    for e in &es {
        let m = metrics(&c, e).await;
        forwarded += forward_total(&m, "forwarded");
        assert!(forward_total(&m, "received") > 0.0, "{m}");
        assert_eq!(forward_total(&m, "local_fallback"), 0.0);
    }
    assert!(forwarded >= 30.0, "{forwarded}");
    for e in es {
        e.shutdown().await;
    }
}

/// The same traffic without `peers`: what the routing prevents (the test's control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_the_same_traffic_refuses_honest_transfers() {
    let upstream = start_upstream().await;
    let c = client();
    let es = replicas(3, false, upstream.addr).await;
    let statuses = balance_then_transfer(&c, &es, 30).await;
    assert!(statuses.iter().all(|s| *s == 403), "{statuses:?}");
    for e in es {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_takes_only_authenticated_requests() {
    let upstream = start_upstream().await;
    let c = client();
    let es = replicas(2, true, upstream.addr).await;
    let router = es[0].shared.router.clone().unwrap();
    let internal = router.self_addr();
    let hits = upstream.seen.hits.load(std::sync::atomic::Ordering::SeqCst);
    let url = format!("http://{internal}/api/v1/transferFunds");
    // No header, a malformed one, one signed with another secret.
    let forged = "v1 1 127.0.0.1:1 0 ".to_owned() + &"ab".repeat(32);
    for headers in [
        vec![("x-session", "s")],
        vec![("x-session", "s"), ("x-ordo-peer-auth", "v1 garbage")],
        vec![("x-session", "s"), ("x-ordo-peer-auth", forged.as_str())],
    ] {
        assert_eq!(send(&c, "POST", &url, &headers, "{}").await.status, 401);
    }
    // Nothing reached the upstream, and the refusals are counted.
    assert_eq!(
        upstream.seen.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );
    let m = metrics(&c, &es[0]).await;
    assert_eq!(forward_total(&m, "unauthenticated"), 3.0);
    // A client sending the header to the public listener gains nothing: the request is routed
    // and decided as any other (no lookup before: refused).
    let url = format!("http://{}/api/v1/transferFunds", es[0].proxy_addr);
    let a = send(
        &c,
        "POST",
        &url,
        &[("x-session", "t"), ("x-ordo-peer-auth", &forged)],
        "{}",
    )
    .await;
    assert_eq!(a.status, 403);
    for e in es {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_and_crashing_replicas_cause_no_false_positive() {
    let upstream = start_upstream().await;
    let c = client();
    let mut es = replicas(3, true, upstream.addr).await;
    let members: Vec<SocketAddr> = es
        .iter()
        .map(|e| e.shared.router.as_ref().unwrap().self_addr())
        .collect();

    // Sessions look up their balance before the change...
    for i in 0..40 {
        let s = format!("honest-{i}");
        assert_eq!(
            status(&c, &es[i % 3], "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
    }
    // ... the third replica leaves the set (every replica's view; it still gets traffic from
    // the front, and forwards it) ...
    for e in &es {
        e.shared
            .router
            .as_ref()
            .unwrap()
            .set_members(members[..2].to_vec())
            .await;
    }
    // ... and they transfer, reaching any replica: no transfer refused, although the lookups
    // of a third of them are in the leaving replica's table only.
    for i in 0..40 {
        let s = format!("honest-{i}");
        assert_eq!(
            status(&c, &es[(i + 1) % 3], "POST", "/api/v1/transferFunds", &s).await,
            200,
            "{s}"
        );
    }
    // The second replica crashes; the others find out on their next forward to it.
    let crashed = es.remove(1);
    crashed.shutdown().await;
    for i in 0..40 {
        let s = format!("again-{i}");
        assert_eq!(
            status(&c, &es[i % 2], "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
        assert_eq!(
            status(&c, &es[(i + 1) % 2], "POST", "/api/v1/transferFunds", &s).await,
            200,
            "{s}"
        );
    }
    let fallbacks: f64 = {
        let mut n = 0.0;
        for e in &es {
            n += forward_total(&metrics(&c, e).await, "local_fallback");
        }
        n
    };
    assert!(
        fallbacks >= 1.0,
        "the crash was noticed by a failed forward"
    );
    assert_eq!(
        es[0].shared.router.as_ref().unwrap().members(),
        vec![members[0]]
    );
    // Once the horizon has passed, an attack is caught again by whichever replica gets it.
    tokio::time::sleep(SETTLED).await;
    for (i, e) in es.iter().enumerate() {
        let s = format!("attacker-{i}");
        assert_eq!(
            status(&c, e, "POST", "/api/v1/transferFunds", &s).await,
            403
        );
    }
    for e in es {
        e.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_discovered_by_dns() {
    let upstream = start_upstream().await;
    let c = client();
    let me = free_port();
    // `localhost` resolves to this replica's address (and maybe to ::1, where nothing listens:
    // left out after the first failed connection).
    let yaml = format!(
        "{}peers:\n  listen: {me}\n  advertise: \"{me}\"\n  dns: {{ name: localhost, port: {}, refreshInterval: 200ms }}\n  secret: {SECRET}\n",
        config(None),
        me.port()
    );
    let e = start_enforcer(&yaml, upstream.addr).await;
    let router = e.shared.router.clone().unwrap();
    // Before the first lookup the view is empty: requests are decided here.
    let mut found = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if router.members().contains(&me) {
            found = true;
            break;
        }
    }
    assert!(found, "{:?}", router.members());
    // Requests for sessions of an address where nothing listens are decided here, and the
    // address is left out.
    for i in 0..10 {
        let s = format!("dns-{i}");
        assert_eq!(
            status(&c, &e, "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
    }
    assert_eq!(router.members(), vec![me]);
    // Past the start-up horizon, the replica decides as a single one: honest transfers pass,
    // a transfer without the lookup is refused.
    tokio::time::sleep(SETTLED).await;
    for i in 0..10 {
        let s = format!("dns-later-{i}");
        assert_eq!(
            status(&c, &e, "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
        assert_eq!(
            status(&c, &e, "POST", "/api/v1/transferFunds", &s).await,
            200,
            "{s}"
        );
        let a = format!("dns-attacker-{i}");
        assert_eq!(
            status(&c, &e, "POST", "/api/v1/transferFunds", &a).await,
            403,
            "{a}"
        );
    }
    e.shutdown().await;
}

/// Sessions whose owner is `before` among `old` members and `after` among `new` ones.
fn sessions_moving(
    router: &ordo_enforcer::proxy::Router,
    old: &[SocketAddr],
    new: &[SocketAddr],
    before: SocketAddr,
    after: SocketAddr,
    n: usize,
) -> Vec<String> {
    // Rendezvous hashing gives each of the 3 old owners a third of the sessions, and half of
    // the leaving one's go to each remaining member: 1 in 6 candidates fits, so 20,000
    // candidates hold the `n` (at most 20) wanted except with a probability far below 1e-100.
    (0..20_000)
        .map(|i| format!("moving-{i}"))
        .filter(|s| {
            let key = format!("header:x-session={s}");
            router.owner_among(old, &key) == Some(before)
                && router.owner_among(new, &key) == Some(after)
        })
        .take(n)
        .collect()
}

/// One replica's view changes before the others' (a DNS refresh that comes later on some
/// replicas, a suspicion only one has): for a moment two replicas decide the same sessions.
/// The replica whose view is late must learn it and not decide from a history that lacks
/// what the other one saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_late_view_causes_no_false_positive() {
    let upstream = start_upstream().await;
    let c = client();
    let es = replicas(3, true, upstream.addr).await;
    let members: Vec<SocketAddr> = es
        .iter()
        .map(|e| e.shared.router.as_ref().unwrap().self_addr())
        .collect();
    let (a, b, third) = (members[0], members[1], members[2]);
    let router = es[1].shared.router.clone().unwrap();
    let moving = sessions_moving(&router, &members, &members[..2], third, a, 10);
    assert_eq!(moving.len(), 10);
    // Only the second replica sees the third leave; the first and the third are late.
    router.set_members(vec![a, b]).await;
    for s in &moving {
        // The lookup reaches the second replica, which forwards it to the session's owner in
        // its view (the first replica); the transfer reaches the third, which still owns the
        // session in its late view and decides it itself without the lookup in its table.
        assert_eq!(
            status(&c, &es[1], "GET", "/api/v1/accounts/7/balance", s).await,
            200
        );
        assert_eq!(
            status(&c, &es[2], "POST", "/api/v1/transferFunds", s).await,
            200,
            "{s}: refused on the replica whose view is late"
        );
    }
    for e in es {
        e.shutdown().await;
    }
}

/// A replica that joins routes by the new view from its start, while the others change one
/// after the other (DNS refreshes at different moments; here one changed, one not yet). The
/// one not yet changed never sends anything to the new replica, which must still learn that
/// it routes by the old view (it is told in reply to its first announcement) and contest the
/// sessions that view gives elsewhere for as long as the disagreement lasts, not only for
/// `hold` (1 s with a static list) after the last message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_replica_contests_sessions_while_another_still_routes_by_the_old_view() {
    let upstream = start_upstream().await;
    let c = client();
    let mut es = replicas(3, true, upstream.addr).await;
    let old: Vec<SocketAddr> = es
        .iter()
        .map(|e| e.shared.router.as_ref().unwrap().self_addr())
        .collect();
    let joined = free_port();
    let mut new = old.clone();
    new.push(joined);
    es.push(start_enforcer(&config(Some((joined, new.as_slice()))), upstream.addr).await);
    let router = es[0].shared.router.clone().unwrap();
    let moving = sessions_moving(&router, &old, &new, old[2], joined, 10);
    assert_eq!(moving.len(), 10);
    // Past the joined replica's start-up window and past `hold` after every message so far:
    // only a disagreement still known can make it contest the sessions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    router.set_members(new.clone()).await;
    // Past `hold` and one history after the first replica's announcement (which names the
    // old view as its previous one): that message alone no longer contests anything.
    tokio::time::sleep(HISTORY + Duration::from_millis(1500)).await;
    for s in &moving {
        // The lookup reaches the second replica (old view), which forwards it to the third,
        // the session's owner there; the transfer reaches the first (new view), which
        // forwards it to the joined replica, without the lookup in its table.
        assert_eq!(
            status(&c, &es[1], "GET", "/api/v1/accounts/7/balance", s).await,
            200
        );
        assert_eq!(
            status(&c, &es[0], "POST", "/api/v1/transferFunds", s).await,
            200,
            "{s}: refused by the joined replica"
        );
    }
    for e in es {
        e.shutdown().await;
    }
}

/// A replica that crashed and came back at the same address is taken back as soon as it
/// announces its first view (not after `suspectFor`, 30 s here), and the sessions that the others decided
/// while it was away cause no false positive on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_taken_back_without_waiting() {
    let upstream = start_upstream().await;
    let c = client();
    let mut es = replicas(3, true, upstream.addr).await;
    let members: Vec<SocketAddr> = es
        .iter()
        .map(|e| e.shared.router.as_ref().unwrap().self_addr())
        .collect();
    let third = members[2];
    let router = es[0].shared.router.clone().unwrap();
    let owned_by_third = sessions_moving(&router, &members, &members[..2], third, members[1], 10);
    let crashed = es.remove(2);
    crashed.shutdown().await;
    // The others find out on their next forward to it; the sessions' lookups are decided
    // by the second replica meanwhile.
    for s in &owned_by_third {
        assert_eq!(
            status(&c, &es[0], "GET", "/api/v1/accounts/7/balance", s).await,
            200
        );
    }
    assert!(!router.members().contains(&third));
    // It comes back at the same address with the same member list.
    let yaml = config(Some((third, members.as_slice())));
    es.push(start_enforcer(&yaml, upstream.addr).await);
    let mut sorted = members.clone();
    sorted.sort_unstable();
    // Bounded: 5 s here, where `suspectFor` would take 30 s.
    let mut back = false;
    for _ in 0..100 {
        if es
            .iter()
            .all(|e| e.shared.router.as_ref().unwrap().members() == sorted)
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let views: Vec<Vec<SocketAddr>> = es
        .iter()
        .map(|e| e.shared.router.as_ref().unwrap().members())
        .collect();
    assert!(back, "not taken back: {views:?}, want {sorted:?}");
    // Its sessions' transfers reach it: the lookups the second replica decided are not in
    // its table, and it must not refuse them.
    for s in &owned_by_third {
        assert_eq!(
            status(&c, &es[2], "POST", "/api/v1/transferFunds", s).await,
            200,
            "{s}"
        );
    }
    for e in es {
        e.shutdown().await;
    }
}

/// Reads one HTTP/1.1 request (head and a `content-length` body) from `stream`.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a full request");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(buf.len() < 65_536);
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + body_len {
            buf.truncate(end + 4 + body_len);
            return buf;
        }
    }
}

/// Sends raw bytes to `addr` and returns the answer's status code.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    std::str::from_utf8(&answer[9..12])
        .unwrap()
        .parse()
        .unwrap()
}

/// The MAC of a forwarded request covers its headers: a forwarded request captured on the
/// pod network and replayed with one header changed, added or removed is refused (401), the
/// same bytes unchanged are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_with_a_tampered_header_or_sent_again_is_refused() {
    let upstream = start_upstream().await;
    let c = client();
    // A replica whose only peer is this test, to capture what it forwards...
    let capture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = capture.local_addr().unwrap();
    let me = free_port();
    let forwarder = start_enforcer(&config(Some((me, &[me, fake]))), upstream.addr).await;
    // ... and a replica with the same secret to replay it to.
    let other = free_port();
    let owner = start_enforcer(&config(Some((other, &[other]))), upstream.addr).await;
    let router = forwarder.shared.router.clone().unwrap();
    let session = (0..1000)
        .map(|i| format!("captured-{i}"))
        .find(|s| router.owner_among(&[me, fake], &format!("header:x-session={s}")) == Some(fake))
        .unwrap();
    let captured = tokio::spawn(async move {
        loop {
            let (mut stream, _) = capture.accept().await.unwrap();
            // Announcements come first (no body, `x-ordo-peer-views`); the request after.
            let req = read_request(&mut stream).await;
            use tokio::io::AsyncWriteExt;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            if !String::from_utf8_lossy(&req).contains("x-ordo-peer-views") {
                return req;
            }
        }
    });
    let url = format!("http://{}/api/v1/accounts/7/balance", forwarder.proxy_addr);
    let sent = send(
        &c,
        "GET",
        &url,
        &[("x-session", session.as_str()), ("x-extra", "1")],
        "",
    )
    .await;
    assert_eq!(sent.status, 200);
    let captured = tokio::time::timeout(Duration::from_secs(10), captured)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(captured).unwrap();
    assert!(text.contains("x-ordo-peer-auth: v2 r "), "{text}");
    let tampered = [
        text.replace(&session, "someone-else"),
        text.replace("x-extra: 1", "x-extra: 2"),
        text.replace("x-extra: 1\r\n", ""),
        text.replacen("\r\n", "\r\nx-forwarded-for: 6.6.6.6\r\n", 1),
    ];
    for t in &tampered {
        assert_ne!(t, &text);
        assert_eq!(raw_status(other, t.as_bytes()).await, 401, "{t}");
    }
    // The request as captured is genuine: the owner decides it (the header's timestamp is
    // fresh for 30 s).
    assert_eq!(raw_status(other, text.as_bytes()).await, 200, "{text}");
    // Taken once: the same message again is a replay, and so is the message with a body
    // (outside the MAC: the body is streamed) while its header would still verify.
    assert!(!text.contains("content-length"), "{text}");
    let with_body = text.replacen("\r\n\r\n", "\r\ncontent-length: 5\r\n\r\nhello", 1);
    for again in [&text, &with_body] {
        assert_eq!(raw_status(other, again.as_bytes()).await, 401, "{again}");
    }
    let m = metrics(&c, &owner).await;
    assert_eq!(forward_total(&m, "unauthenticated"), 6.0);
    assert_eq!(forward_total(&m, "replayed"), 2.0);
    assert_eq!(forward_total(&m, "received"), 1.0);
    forwarder.shutdown().await;
    owner.shutdown().await;
}

/// Replicas with the learned analyzer, sessions by `X-Session` then the client address (from
/// `X-Forwarded-For`, one trusted hop): the anonymous requests of one address are one session,
/// owned by one replica, and a token session from that address usually by another.
async fn learning_replicas(
    n: usize,
    upstream: SocketAddr,
) -> Vec<(RunningEnforcer, Arc<LearnedAnalyzer>)> {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
    let mut out = Vec::new();
    for me in &addrs {
        out.push(learning_replica(*me, &addrs, upstream, MONITOR).await);
    }
    tokio::time::sleep(SETTLED).await;
    out
}

/// The mode and detectors of [`learning_replicas`].
const MONITOR: &str = "mode: Monitor\n";

/// One replica of [`learning_replicas`], `me` among `all` (no `peers` when `all` is empty),
/// with `settings` (mode, learning, detectors).
async fn learning_replica(
    me: SocketAddr,
    all: &[SocketAddr],
    upstream: SocketAddr,
    settings: &str,
) -> (RunningEnforcer, Arc<LearnedAnalyzer>) {
    let list: Vec<String> = all.iter().map(|a| format!("\"{a}\"")).collect();
    let mut yaml = format!(
        r#"
upstream: {{ url: "http://{{upstream}}" }}
{settings}
clientAddress: {{ source: XForwardedFor, trustedHops: 1 }}
session:
  identifiers: [ {{ header: {{ name: X-Session }} }}, {{ clientIp: {{}} }} ]
  history: {{ requests: 10, duration: {}ms }}
"#,
        HISTORY.as_millis(),
    );
    if !all.is_empty() {
        yaml.push_str(&format!(
            "peers:\n  listen: {me}\n  advertise: \"{me}\"\n  static: [{}]\n  secret: {SECRET}\n  suspectFor: 30s\n",
            list.join(", ")
        ));
    }
    let (e, analyzer) = start_learning(&yaml, upstream).await;
    (e, analyzer)
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// What an answer to an address's anonymous request showed it counts as given to the token
/// sessions from that address (`detect::shown`), whichever replica decides them: every replica
/// holds it as soon as the client has the answer, as one replica would (docs/scale-out.md,
/// "State keyed by the client address").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_address_was_shown_anonymously_is_known_to_every_replica() {
    let upstream = start_upstream().await;
    let c = client();
    let es = learning_replicas(3, upstream.addr).await;
    let address: std::net::IpAddr = "10.9.0.1".parse().unwrap();
    let other: std::net::IpAddr = "10.9.0.2".parse().unwrap();
    let mut shown = 0;
    for k in 0..12 {
        // Anonymous (no X-Session): the session of the address, through every replica in turn.
        let (e, _) = &es[k % es.len()];
        // The upstream answers the body's length: a value the answer showed the address.
        let path = (100 + k).to_string();
        let url = format!("http://{}/listing", e.proxy_addr);
        let body = "x".repeat(100 + k);
        let answer = send(&c, "POST", &url, &[("x-forwarded-for", "10.9.0.1")], &body).await;
        assert_eq!(answer.status, 200);
        let holders: Vec<bool> = es
            .iter()
            .map(|(_, a)| a.shown_to(address, &path, unix_ms()))
            .collect();
        if holders.iter().any(|h| *h) {
            shown += 1;
            assert!(
                holders.iter().all(|h| *h),
                "{path}: shown to the address on some replicas only, as soon as answered: {holders:?}"
            );
        }
        for (_, a) in &es {
            assert!(!a.shown_to(other, &path, unix_ms()), "another address");
        }
    }
    // The first answers of an operation are not read (its values are not known to matter yet).
    assert!(shown >= 6, "{shown} of 12 answers read");
    // Each replica answered some of them and told the two others.
    let mut received = 0.0;
    for (e, _) in &es {
        let text = metrics(&c, e).await;
        received += metric_value(&text, "ordo_peer_facts_total{result=\"received\"}");
        assert_eq!(
            metric_value(&text, "ordo_peer_facts_total{result=\"invalid\"}"),
            0.0
        );
    }
    assert_eq!(received, f64::from(shown) * 2.0);
}

/// Facts about an address are authenticated like every message between replicas, their
/// body too (its digest is in a header the MAC covers): captured and replayed with the body,
/// a header or the address changed, they are refused; as captured, they are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_about_an_address_with_a_tampered_body_are_refused() {
    let upstream = start_upstream().await;
    let c = client();
    let capture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = capture.local_addr().unwrap();
    let me = free_port();
    let (sender, _) = learning_replica(me, &[me, fake], upstream.addr, MONITOR).await;
    let other = free_port();
    let (receiver, analyzer) = learning_replica(other, &[other], upstream.addr, MONITOR).await;
    tokio::time::sleep(SETTLED).await;
    let router = sender.shared.router.clone().unwrap();
    let address = (1..250)
        .map(|i| format!("10.9.1.{i}"))
        .find(|a| router.owner_among(&[me, fake], &format!("ip:{a}")) == Some(me))
        .unwrap();
    let captured = tokio::spawn(async move {
        loop {
            let (mut stream, _) = capture.accept().await.unwrap();
            loop {
                let req = read_request(&mut stream).await;
                use tokio::io::AsyncWriteExt;
                stream
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
                if String::from_utf8_lossy(&req).contains("x-ordo-peer-auth: v2 s ") {
                    return req;
                }
                if String::from_utf8_lossy(&req).contains("x-ordo-peer-views") {
                    break;
                }
            }
        }
    });
    let url = format!("http://{}/listing", sender.proxy_addr);
    // The first answers of the operation are not read; one later is, and told to `fake`.
    for k in 0..6 {
        let body = "x".repeat(200 + k);
        let sent = send(&c, "POST", &url, &[("x-forwarded-for", &address)], &body).await;
        assert_eq!(sent.status, 200);
    }
    let captured = tokio::time::timeout(Duration::from_secs(10), captured)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(captured).unwrap();
    assert!(text.contains(&format!(" {address}:0 ")), "{text}");
    let tampered_body = text.replace("\"POST\"", "\"PUTS\"");
    let tampered = [
        text.replace(&format!(" {address}:0 "), " 10.9.9.9:0 "),
        text.replacen("\r\n", "\r\nx-extra: 1\r\n", 1),
    ];
    assert_ne!(tampered_body, text);
    assert_eq!(raw_status(other, tampered_body.as_bytes()).await, 400);
    for t in &tampered {
        assert_ne!(t, &text);
        assert_eq!(raw_status(other, t.as_bytes()).await, 401, "{t}");
    }
    let client: std::net::IpAddr = address.parse().unwrap();
    assert!(!analyzer.shown_to(client, "\"POST\"", unix_ms()));
    assert!(!analyzer.shown_to(client, "PUTS", unix_ms()));
    // As captured: taken, and what it says is known to the receiver.
    assert_eq!(raw_status(other, text.as_bytes()).await, 204, "{text}");
    assert!(analyzer.shown_to(client, "POST", unix_ms()));
    // Taken once: a copy sent again is refused (told again and again, a failed login would
    // quarantine an address).
    assert_eq!(raw_status(other, text.as_bytes()).await, 401, "{text}");
    let m = metrics(&c, &receiver).await;
    assert_eq!(forward_total(&m, "replayed"), 1.0);
    assert_eq!(
        metric_value(&m, "ordo_peer_facts_total{result=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "ordo_peer_facts_total{result=\"received\"}"),
        1.0
    );
    sender.shutdown().await;
    receiver.shutdown().await;
}

const PASSWORD: &str = "correct horse";

/// An upstream whose `POST /login` answers 200 with a token or 200 with `{"status":"fail"}`
/// (as enforcer/tests/outcomes.rs), and anything else a small list.
async fn start_login_app() -> SocketAddr {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let answer = if path == "/login" {
                            let login: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            if login["password"] == PASSWORD {
                                let user = login["username"].as_str().unwrap_or("");
                                format!(
                                    r#"{{"status":"success","auth_token":"eyJhbGciOiJIUzI1NiJ9.{user}.c2lnbmF0dXJl"}}"#
                                )
                            } else {
                                r#"{"status":"fail","message":"Password is not correct."}"#
                                    .to_owned()
                            }
                        } else {
                            r#"{"books":[{"title":"a"},{"title":"b"}]}"#.to_owned()
                        };
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(answer),
                        ));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const STUFFING: &str = r#"mode: Enforce
learning: { minRequests: 90, minSessions: 30, journeyGap: 300ms }
detectors:
  credentialStuffing: { action: Block, quarantine: 10m }
"#;

/// Learning traffic (130 users log in anonymously, one in 13 after a typo, and read a list in
/// their session), then stuffing from one address with a new session per try, each request to
/// the next of `es`; returns the try the stuffing was refused at (as credential stuffing) and
/// the statuses of a fresh session from the stuffer's address on each of `es` afterwards.
async fn stuffing_run(es: &[RunningEnforcer]) -> (Option<usize>, Vec<(u16, String)>) {
    let c = client();
    let mut next = 0usize;
    let mut call = |session: Option<String>, addr: &str, path: &str, body: String| {
        let e = &es[next % es.len()];
        next += 1;
        let c = c.clone();
        let url = format!("http://{}{path}", e.proxy_addr);
        let addr = addr.to_owned();
        let method = if body.is_empty() { "GET" } else { "POST" };
        async move {
            let mut headers = vec![("x-forwarded-for", addr.as_str())];
            if let Some(s) = &session {
                headers.push(("x-session", s.as_str()));
            }
            send(&c, method, &url, &headers, &body).await
        }
    };
    let login = |user: &str, password: &str| {
        serde_json::json!({ "username": user, "password": password }).to_string()
    };
    for u in 0..130 {
        let addr = format!("10.1.{}.{}", u / 200, u % 200 + 1);
        let user = format!("reader{u}");
        if u % 13 == 0 {
            let a = call(None, &addr, "/login", login(&user, "typo")).await;
            assert_eq!(a.status, 200);
        }
        let a = call(None, &addr, "/login", login(&user, PASSWORD)).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        for _ in 0..2 {
            let a = call(Some(user.clone()), &addr, "/books", String::new()).await;
            assert_eq!(a.status, 200);
        }
    }
    let stuffer = "198.51.100.7";
    let mut blocked_at = None;
    for i in 0..15 {
        let a = call(
            Some(format!("stuffer-{i}")),
            stuffer,
            "/login",
            login(&format!("victim{i}"), "123456"),
        )
        .await;
        if a.status == 403 {
            assert_eq!(a.json()["kind"], "CredentialStuffing");
            blocked_at = Some(i + 1);
            break;
        }
    }
    let mut fresh = Vec::new();
    for (i, e) in es.iter().enumerate() {
        for k in 0..3 {
            let url = format!("http://{}/books", e.proxy_addr);
            let session = format!("fresh-{i}-{k}");
            let a = send(
                &c,
                "GET",
                &url,
                &[
                    ("x-forwarded-for", stuffer),
                    ("x-session", session.as_str()),
                ],
                "",
            )
            .await;
            let kind = if a.status == 403 {
                a.json()["kind"].as_str().unwrap_or("").to_owned()
            } else {
                String::new()
            };
            fresh.push((a.status, kind));
        }
    }
    (blocked_at, fresh)
}

/// Authentication failures and the quarantine of a credential stuffer's address are the
/// address's, not a session's: a stuffer that opens a new session with every try (each owned
/// by some replica) is refused at the same try as by one replica, and once quarantined, a
/// fresh session from its address is refused by every replica, as by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuffer_spreading_its_tries_over_replicas_is_refused_as_by_one() {
    let upstream = start_login_app().await;
    let single = learning_replica(free_port(), &[], upstream, STUFFING).await;
    let (single_at, single_fresh) = stuffing_run(std::slice::from_ref(&single.0)).await;
    let single_at = single_at.expect("one replica refuses the stuffing");
    assert!(
        single_fresh
            .iter()
            .all(|(s, k)| *s == 403 && k == "Quarantined"),
        "{single_fresh:?}"
    );

    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let mut es = Vec::new();
    for me in &addrs {
        es.push(learning_replica(*me, &addrs, upstream, STUFFING).await.0);
    }
    tokio::time::sleep(SETTLED).await;
    let (scaled_at, scaled_fresh) = stuffing_run(&es).await;
    assert_eq!(
        scaled_at,
        Some(single_at),
        "refused at the same try as one replica"
    );
    assert!(
        scaled_fresh
            .iter()
            .all(|(s, k)| *s == 403 && k == "Quarantined"),
        "a fresh session from the address on every replica: {scaled_fresh:?}"
    );
}

/// [`STUFFING`] with a 10 s counting window (the shortest), so that a campaign can start in
/// a fresh one, and a journey gap that no campaign of the test outlasts.
const CAMPAIGN: &str = r#"mode: Enforce
learning: { minRequests: 90, minSessions: 30, journeyGap: 1s, volumeWindow: 10s }
detectors:
  credentialStuffing: { action: Block, quarantine: 10m }
"#;
/// The counting window of [`CAMPAIGN`].
const CAMPAIGN_WINDOW_MS: u64 = 10_000;
/// The addresses of a campaign, each trying two identities.
const CAMPAIGN_ADDRESSES: usize = 20;

fn campaign_address(i: usize) -> std::net::IpAddr {
    format!("203.0.113.{}", i + 1).parse().unwrap()
}

fn login_body(user: &str, password: &str) -> String {
    serde_json::json!({ "username": user, "password": password }).to_string()
}

/// A round-robin front: each request to the next replica of `es`.
struct Front<'a> {
    c: TestClient,
    es: &'a [(RunningEnforcer, Arc<LearnedAnalyzer>)],
    next: usize,
}

impl<'a> Front<'a> {
    fn new(es: &'a [(RunningEnforcer, Arc<LearnedAnalyzer>)]) -> Self {
        Self {
            c: client(),
            es,
            next: 0,
        }
    }

    /// The replica (index) that decides `session` (its key), with peers.
    fn owner(&self, session: &str) -> Option<usize> {
        let members: Vec<SocketAddr> = self
            .es
            .iter()
            .filter_map(|(e, _)| e.shared.router.as_ref().map(|r| r.self_addr()))
            .collect();
        let router = self.es.first()?.0.shared.router.as_ref()?;
        let owner = router.owner_among(&members, session)?;
        members.iter().position(|m| *m == owner)
    }

    /// The first of `candidates` whose session (`key` of it) another replica than `namer`
    /// decides (the first, with one replica).
    fn decided_elsewhere(
        &self,
        namer: Option<usize>,
        key: impl Fn(&str) -> String,
        candidates: impl Iterator<Item = String>,
    ) -> String {
        let mut candidates = candidates.peekable();
        let first = candidates.peek().cloned().unwrap();
        candidates
            .find(|c| namer.is_none() || self.owner(&key(c)) != namer)
            .unwrap_or(first)
    }

    /// A request from `addr` (its `X-Forwarded-For`), in session `session` or anonymous; a
    /// POST of `body`, a GET without one.
    async fn call(&mut self, session: Option<&str>, addr: &str, path: &str, body: &str) -> Answer {
        let (e, _) = &self.es[self.next % self.es.len()];
        self.next += 1;
        let url = format!("http://{}{path}", e.proxy_addr);
        let mut headers = vec![("x-forwarded-for", addr)];
        if let Some(s) = session {
            headers.push(("x-session", s));
        }
        let method = if body.is_empty() { "GET" } else { "POST" };
        send(&self.c, method, &url, &headers, body).await
    }
}

/// Learning traffic: 200 users log in anonymously (none fails: the learned failure rate stays
/// low on every replica, each of which learns from the logins it decides) and read a list
/// twice in their session.
async fn campaign_learning(front: &mut Front<'_>) {
    for u in 0..200 {
        let addr = format!("10.2.{}.{}", u / 200, u % 200 + 1);
        let user = format!("reader{u}");
        let a = front
            .call(None, &addr, "/login", &login_body(&user, PASSWORD))
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        for _ in 0..2 {
            let a = front.call(Some(&user), &addr, "/books", "").await;
            assert_eq!(a.status, 200);
        }
    }
}

/// What a campaign met.
#[derive(Debug)]
struct CampaignRun {
    /// The attempts refused (1-based) with the finding's kind.
    refused: Vec<(usize, String)>,
    /// Per replica, how many of the campaign's addresses it quarantines once the campaign
    /// settled and a login named its members.
    quarantined: Vec<usize>,
    /// The addresses named as campaign members, by every replica (sorted).
    named: Vec<String>,
}

/// A distributed credential-stuffing campaign: [`CAMPAIGN_ADDRESSES`] addresses, each trying
/// two identities (far below the per-address threshold), every try in a new session and to
/// the next replica; then the tries settle and an honest login names the members.
async fn campaign_phase(front: &mut Front<'_>) -> CampaignRun {
    // The login that names the members is decided by `namer` (with replicas): what the
    // honest users below did must reach it from the others.
    let namer = front.owner("ip:10.3.0.1");
    let mistyped = front.decided_elsewhere(
        namer,
        |s| format!("header:x-session={s}"),
        (0..32).map(|k| format!("retry-5-{k}")),
    );
    let carrying_on = front.decided_elsewhere(
        namer,
        |a| format!("ip:{a}"),
        (3..64).map(|k| format!("10.9.0.{k}")),
    );
    let next_login = front.decided_elsewhere(
        namer,
        |a| format!("ip:{a}"),
        (2..64).map(|k| format!("10.3.0.{k}")),
    );
    let mut refused = Vec::new();
    for i in 0..CAMPAIGN_ADDRESSES {
        let addr = campaign_address(i).to_string();
        for k in 0..2 {
            let victim = format!("victim{}", 2 * i + k);
            let session = format!("camp-{i}-{k}");
            let a = front
                .call(
                    Some(&session),
                    &addr,
                    "/login",
                    &login_body(&victim, "Summer2024!"),
                )
                .await;
            match a.status {
                200 => {}
                403 => refused.push((
                    2 * i + k + 1,
                    a.json()["kind"].as_str().unwrap_or("").to_owned(),
                )),
                s => panic!("try {}: {s}", 2 * i + k + 1),
            }
        }
        if i == 12 {
            // An honest user mistypes during the campaign and logs in right after (each try
            // a session of its own: a name typed again in one session is a value the session
            // gave before, which the lineage detector, learning alone on each replica here,
            // may log on one and not another; a logged request is not recorded).
            for (session, password) in [("typo-5", "typo"), (mistyped.as_str(), PASSWORD)] {
                let a = front
                    .call(
                        Some(session),
                        "10.9.0.1",
                        "/login",
                        &login_body("reader5", password),
                    )
                    .await;
                assert_eq!(a.status, 200);
            }
        }
        if i == 15 {
            // A user whose password no longer works fails once and carries on browsing.
            let a = front
                .call(
                    None,
                    &carrying_on,
                    "/login",
                    &login_body("reader7", "old one"),
                )
                .await;
            assert_eq!(a.status, 200);
            let a = front.call(None, &carrying_on, "/books", "").await;
            assert_eq!(a.status, 200);
        }
    }
    // The tries settle (journeyGap); the next login (a user from an address new to the API)
    // names the members, once: the next one, on another replica, names none again.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for (u, addr) in ["10.3.0.1", next_login.as_str()].into_iter().enumerate() {
        let user = format!("reader{u}");
        let a = front
            .call(None, addr, "/login", &login_body(&user, PASSWORD))
            .await;
        assert_eq!(a.status, 200, "an honest login during the campaign");
    }
    let mut named = Vec::new();
    for (e, _) in front.es {
        let incidents = admin_json(&front.c, e, "/v1/incidents").await;
        for i in incidents.as_array().unwrap() {
            if i["session"].as_str().unwrap_or("").starts_with("campaign ") {
                for c in i["clients"].as_array().unwrap() {
                    named.push(c.as_str().unwrap().to_owned());
                }
            }
        }
    }
    named.sort();
    let now = unix_ms();
    let quarantined = front
        .es
        .iter()
        .map(|(_, analyzer)| {
            (0..CAMPAIGN_ADDRESSES)
                .filter(|i| analyzer.quarantines(campaign_address(*i), now))
                .count()
        })
        .collect();
    CampaignRun {
        refused,
        quarantined,
        named,
    }
}

/// The API-wide authentication activity (the last attempts per login operation, failures per
/// identity) and a campaign's quarantines are shared like the facts of one address: a
/// campaign of many addresses, each trying two identities, every try to the next of 3
/// replicas, is refused from the same try as by one replica, and its members are then
/// quarantined on every replica, as on one (docs/scale-out.md, "State keyed by the client
/// address"). Each replica alone would see a third of the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_stuffing_campaign_over_replicas_is_found_as_by_one() {
    let upstream = start_login_app().await;
    let single = [learning_replica(free_port(), &[], upstream, CAMPAIGN).await];
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let mut scaled = Vec::new();
    for me in &addrs {
        scaled.push(learning_replica(*me, &addrs, upstream, CAMPAIGN).await);
    }
    tokio::time::sleep(SETTLED).await;
    let (mut one, mut three) = (Front::new(&single), Front::new(&scaled));
    tokio::join!(campaign_learning(&mut one), campaign_learning(&mut three));
    // Both campaigns in one fresh counting window: each replica then judges against the
    // failure rate of its whole model (frozen at the window's first login), and no window
    // ends during a campaign.
    let into = unix_ms() % CAMPAIGN_WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(CAMPAIGN_WINDOW_MS - into + 50)).await;
    let (one_run, three_run) = tokio::join!(campaign_phase(&mut one), campaign_phase(&mut three));
    eprintln!("one replica: {one_run:?}\nthree replicas: {three_run:?}");
    let first = |run: &CampaignRun| run.refused.first().cloned();
    let (at, kind) = first(&one_run).expect("one replica refuses the campaign");
    assert_eq!(kind, "CredentialStuffing", "{one_run:?}");
    assert_eq!(
        first(&three_run),
        Some((at, kind)),
        "refused from the same try as by one replica: {three_run:?}"
    );
    assert_eq!(
        three_run.refused, one_run.refused,
        "every try decided alike"
    );
    assert_eq!(one_run.quarantined, [CAMPAIGN_ADDRESSES], "{one_run:?}");
    let members: Vec<String> = (0..CAMPAIGN_ADDRESSES)
        .map(|i| campaign_address(i).to_string())
        .collect();
    assert!(
        one_run.named.len() == CAMPAIGN_ADDRESSES
            && one_run.named.iter().all(|a| members.contains(a)),
        "the campaign's addresses, not the honest users: {one_run:?}"
    );
    assert_eq!(
        three_run.named, one_run.named,
        "each member named once, by one of the replicas"
    );
    assert_eq!(
        three_run.quarantined, [CAMPAIGN_ADDRESSES; 3],
        "every member quarantined on every replica: {three_run:?}"
    );
    let mut skipped = 0.0;
    for (e, _) in &scaled {
        let m = metrics(&one.c, e).await;
        assert_eq!(
            metric_value(&m, "ordo_peer_facts_total{result=\"invalid\"}"),
            0.0
        );
        skipped += metric_value(&m, "ordo_peer_facts_total{result=\"skipped\"}");
    }
    eprintln!("attempts skipped by receivers (operation not learned there yet): {skipped}");
    drop((one, three));
    for (e, _) in single.into_iter().chain(scaled) {
        e.shutdown().await;
    }
}

/// Each session of `prefix`: a balance lookup on one replica, the transfer on the next;
/// the transfer statuses.
async fn journeys(c: &TestClient, es: &[&RunningEnforcer], prefix: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let s = format!("{prefix}-{i}");
        let (a, b) = (es[i % es.len()], es[(i + 1) % es.len()]);
        assert_eq!(
            status(c, a, "GET", "/api/v1/accounts/7/balance", &s).await,
            200
        );
        statuses.push(status(c, b, "POST", "/api/v1/transferFunds", &s).await);
    }
    statuses
}

/// A replica whose secret is read from `file`, `me` among `all`.
async fn with_secret_file(
    me: SocketAddr,
    all: &[SocketAddr],
    file: &std::path::Path,
    upstream: SocketAddr,
) -> RunningEnforcer {
    let yaml = config(Some((me, all))).replace(
        &format!("secret: {SECRET}"),
        &format!("secretFile: {}", file.display()),
    );
    start_enforcer(&yaml, upstream).await
}

/// The shared secret rotates without a restart, as a Secret is updated in place: every
/// replica's `secretFile` goes from the old secret to "old, then new" (the old one still
/// signs, both are accepted), to "new, then old" (the new one signs), to the new one alone.
/// No forwarded request is refused at any step, no honest transfer either (the change of the
/// signing secret moves sessions, as a change of members does); afterwards a replica with the
/// new secret alone is taken, one with the old secret alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_secret_rotates_without_a_restart() {
    const OLD: &str = "the-old-secret-of-the-replicas";
    const NEW: &str = "the-new-secret-of-the-replicas";
    let upstream = start_upstream().await;
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    let files = [dir.path().join("a"), dir.path().join("b")];
    let write = |text: &str| {
        for f in &files {
            // As the kubelet does: a new file renamed over the old one.
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, f).unwrap();
        }
    };
    write(OLD);
    let ea = with_secret_file(a, &[a, b], &files[0], upstream.addr).await;
    let eb = with_secret_file(b, &[a, b], &files[1], upstream.addr).await;
    tokio::time::sleep(SETTLED).await;
    let both = [&ea, &eb];
    let statuses = journeys(&c, &both, "before", 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for (step, text) in [
        ("accept-new", format!("{OLD}\n{NEW}\n")),
        ("sign-new", format!("{NEW}\n{OLD}\n")),
        ("new-only", format!("{NEW}\n")),
    ] {
        write(&text);
        // Read again within a second; a new signing key moves sessions: past the hold.
        tokio::time::sleep(SETTLED + Duration::from_secs(1)).await;
        let statuses = journeys(&c, &both, step, 10).await;
        assert!(statuses.iter().all(|s| *s == 200), "{step}: {statuses:?}");
    }
    for e in both {
        let m = metrics(&c, e).await;
        assert_eq!(forward_total(&m, "unauthenticated"), 0.0, "{m}");
        assert!(forward_total(&m, "received") > 0.0);
    }

    // A replica with the new secret alone forwards to `a`: taken. One with the old alone:
    // refused.
    let received = forward_total(&metrics(&c, &ea).await, "received");
    for (secret, accepted) in [(NEW, true), (OLD, false)] {
        let me = free_port();
        let yaml = config(Some((me, &[me, a]))).replace(SECRET, secret);
        let e = start_enforcer(&yaml, upstream.addr).await;
        let router = e.shared.router.clone().unwrap();
        let session = (0..1000)
            .map(|i| format!("newcomer-{secret}-{i}"))
            .find(|s| router.owner_among(&[me, a], &format!("header:x-session={s}")) == Some(a))
            .unwrap();
        let got = status(&c, &e, "GET", "/api/v1/accounts/7/balance", &session).await;
        let m = metrics(&c, &ea).await;
        if accepted {
            assert_eq!(got, 200);
            assert_eq!(forward_total(&m, "received"), received + 1.0);
        } else {
            // The request, and the view announcements it sent at start, refused.
            assert_ne!(got, 200);
            assert!(forward_total(&m, "unauthenticated") >= 1.0, "{m}");
        }
        e.shutdown().await;
    }
    ea.shutdown().await;
    eb.shutdown().await;
}

/// A reload of the config applies a new member list (`peers.static`) without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_member_list_applies_without_a_restart() {
    let upstream = start_upstream().await;
    let (a, b) = (free_port(), free_port());
    let other = start_enforcer(&config(Some((b, &[a, b]))), upstream.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enforcer.yaml");
    let write = |all: &[SocketAddr]| {
        let tmp = dir.path().join("enforcer.tmp");
        std::fs::write(&tmp, enforcer_yaml(&config(Some((a, all))), upstream.addr)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&[a, b]);
    let (watcher, loaded) = ordo_enforcer::config::ConfigWatcher::load(&path).unwrap();
    let e = ordo_enforcer::runtime::start(
        loaded,
        Some(watcher),
        Arc::new(ordo_enforcer::detect::NoopAnalyzer),
    )
    .await
    .unwrap();
    let router = e.shared.router.clone().unwrap();
    let mut sorted = vec![a, b];
    sorted.sort_unstable();
    assert_eq!(router.members(), sorted);
    write(&[a]);
    let mut members = router.members();
    for _ in 0..50 {
        if members == [a] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        members = router.members();
    }
    assert_eq!(members, [a], "the reloaded member list");
    e.shutdown().await;
    other.shutdown().await;
}
