//! The admin listener: open health and metrics endpoints, bearer-token protection of `/v1/*`
//! (loopback only without a token), readiness with the upstream check.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

#[tokio::test]
async fn token_protects_everything_but_health_and_metrics() {
    let up = start_upstream().await;
    let yaml = "upstream: { url: \"http://{upstream}\" }\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: s3cr3t }\n";
    let e = start_enforcer(yaml, up.addr).await;
    let c = client();
    let admin = |path: &str| format!("http://{}{path}", e.admin_addr);
    assert_eq!(
        send(&c, "GET", &admin("/healthz"), &[], "").await.status,
        200
    );
    assert_eq!(
        send(&c, "GET", &admin("/readyz"), &[], "").await.status,
        200
    );
    assert_eq!(
        send(&c, "GET", &admin("/readyz?upstream=true"), &[], "")
            .await
            .status,
        200
    );
    let metrics = send(&c, "GET", &admin("/metrics"), &[], "").await;
    assert_eq!(metrics.status, 200, "Prometheus scrapes without a token");
    for path in ["/v1/incidents", "/v1/model", "/v1/rules"] {
        assert_eq!(
            send(&c, "GET", &admin(path), &[], "").await.status,
            401,
            "{path}"
        );
        assert_eq!(
            send(
                &c,
                "GET",
                &admin(path),
                &[("authorization", "Bearer wrong")],
                ""
            )
            .await
            .status,
            401,
            "{path}"
        );
        assert_eq!(
            send(
                &c,
                "GET",
                &admin(path),
                &[("authorization", "Bearer s3cr3t")],
                ""
            )
            .await
            .status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        send(
            &c,
            "GET",
            &admin("/nope"),
            &[("authorization", "Bearer s3cr3t")],
            ""
        )
        .await
        .status,
        404
    );
    e.shutdown().await;
}

/// A local address that is not loopback (the one the default route leaves from), if any.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing; it only picks the route and source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn without_a_token_only_loopback_reads_v1() {
    let up = start_upstream().await;
    let yaml = "upstream: { url: \"http://{upstream}\" }\nlisten: 127.0.0.1:0\nadmin: { listen: 0.0.0.0:0 }\n";
    let e = start_enforcer(yaml, up.addr).await;
    let c = client();
    let port = e.admin_addr.port();
    for path in [
        "/v1/incidents",
        "/v1/model",
        "/v1/rules",
        "/metrics",
        "/healthz",
    ] {
        let url = format!("http://127.0.0.1:{port}{path}");
        assert_eq!(send(&c, "GET", &url, &[], "").await.status, 200, "{path}");
    }
    let Some(ip) = non_loopback_address() else {
        eprintln!("no non-loopback address on this host: only the loopback half ran");
        e.shutdown().await;
        return;
    };
    for path in ["/v1/incidents", "/v1/model", "/v1/rules"] {
        let url = format!("http://{ip}:{port}{path}");
        let a = send(&c, "GET", &url, &[("authorization", "Bearer guess")], "").await;
        assert_eq!(a.status, 403, "{path} from {ip}");
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        let url = format!("http://{ip}:{port}{path}");
        assert_eq!(send(&c, "GET", &url, &[], "").await.status, 200, "{path}");
    }
    e.shutdown().await;
}

#[tokio::test]
async fn token_file_is_read_and_checked() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let yaml = format!(
        "upstream: {{ url: \"http://{{upstream}}\" }}\nlisten: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0, tokenFile: {} }}\n",
        file.display()
    );
    let e = start_enforcer(&yaml, up.addr).await;
    let c = client();
    let url = format!("http://{}/v1/incidents", e.admin_addr);
    assert_eq!(
        send(&c, "GET", &url, &[], "").await.status,
        401,
        "loopback needs it too"
    );
    let good = [("authorization", "Bearer from-a-file")];
    assert_eq!(send(&c, "GET", &url, &good, "").await.status, 200);
    e.shutdown().await;
}

#[tokio::test]
async fn readiness_reports_an_unreachable_upstream() {
    let e = start_enforcer(
        "upstream: { url: \"http://{upstream}\" }\n",
        dead_address().await,
    )
    .await;
    let c = client();
    let url = format!("http://{}/readyz?upstream=true", e.admin_addr);
    assert_eq!(send(&c, "GET", &url, &[], "").await.status, 503);
    assert_eq!(
        send(
            &c,
            "GET",
            &format!("http://{}/readyz", e.admin_addr),
            &[],
            ""
        )
        .await
        .status,
        200
    );
    assert_eq!(get(&c, &e, "/x", &[]).await.status, 502);
    let m = metrics(&c, &e).await;
    assert!(
        m.contains("ordo_config_reloads_total{result=\"failed\"} 0"),
        "fixed label sets start at zero"
    );
    for family in [
        "ordo_requests_total",
        "ordo_added_latency_seconds",
        "ordo_sessions_tracked",
        "ordo_session_evictions_total",
        "ordo_config_reloads_total",
        "ordo_failure_policy_activations_total",
        "ordo_upstream_errors_total",
    ] {
        assert!(
            m.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }
    e.shutdown().await;
}
