//! The admin listener: open health endpoints, bearer-token protection of the rest,
//! readiness with the upstream check.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use common::*;

#[tokio::test]
async fn token_protects_everything_but_health() {
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
    for path in ["/metrics", "/v1/incidents", "/v1/model", "/v1/rules"] {
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
