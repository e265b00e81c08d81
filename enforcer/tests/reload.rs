//! Hot reload of the config file the way a mounted ConfigMap changes: the `..data` symlink
//! is swapped to a new directory. A valid file applies without dropping connections; an
//! invalid one is rejected (metric) and the old config stays.

#![allow(clippy::unwrap_used)] // Test helpers unwrap: a panic is the failure report.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ordo_enforcer::config::ConfigWatcher;
use ordo_enforcer::detect::session_state::SessionState;
use ordo_enforcer::detect::{Analyzer, LateFinding, NoopAnalyzer, RequestContext, ResponseSummary};
use ordo_enforcer::finding::Finding;
use ordo_enforcer::operation::Operation;
use ordo_enforcer::runtime::start;

const V1: &str = r#"
upstream: { url: "http://{upstream}" }
mode: Enforce
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
rules:
  - name: no-repeat
    action: Block
    maxRepeat: { operation: POST /api/v1/transferFunds, count: 1 }
"#;

/// Writes `content` as `<dir>/..<version>/enforcer.yaml` and points `..data` at it, like kubelet.
fn publish(dir: &Path, version: u32, content: &str) {
    let data = dir.join(format!("..2026_11_22_{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("enforcer.yaml"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("enforcer.yaml");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/enforcer.yaml", &link).unwrap();
    }
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..50 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn configmap_symlink_swap_reloads_good_and_rejects_bad() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = V1.replace("{upstream}", &up.addr.to_string());
    publish(dir.path(), 1, &v1);
    let path = dir.path().join("enforcer.yaml");
    let (watcher, config) = ConfigWatcher::load(&path).unwrap();
    let e = start(config, Some(watcher), Arc::new(NoopAnalyzer))
        .await
        .unwrap();
    let c = client();
    let h = [("x-forwarded-for", "1.1.1.1")];
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
        200
    );
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
        403
    );

    // Good change: allow 3 in a row. The keep-alive client keeps its connection.
    publish(dir.path(), 2, &v1.replace("count: 1", "count: 3"));
    let reloaded = wait_for(async || {
        metric_value(
            &metrics(&c, &e).await,
            "ordo_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    assert!(reloaded, "reload not applied");
    let rules = admin_json(&c, &e, "/v1/rules").await;
    assert_eq!(rules["rules"][0]["spec"]["maxRepeat"]["count"], 3);
    assert_eq!(rules["rules"][0]["matches"], 1, "counters survive a reload");
    // The history is kept: the next transfer is the 3rd in a row (allowed now), the 4th is not.
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
        200
    );
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
        403
    );

    // Bad change: rejected, counted, the previous config stays.
    publish(
        dir.path(),
        3,
        &v1.replace("POST /api/v1/transferFunds", "POST api/v1/transferFunds"),
    );
    let rejected = wait_for(async || {
        metric_value(
            &metrics(&c, &e).await,
            "ordo_config_reloads_total{result=\"failed\"}",
        ) == 1.0
    })
    .await;
    assert!(rejected, "invalid config not rejected");
    let rules = admin_json(&c, &e, "/v1/rules").await;
    assert_eq!(rules["rules"][0]["spec"]["maxRepeat"]["count"], 3);
    assert_eq!(get(&c, &e, "/api/v1/accounts", &h).await.status, 200);
    for _ in 0..3 {
        assert_eq!(
            post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
            200
        );
    }
    assert_eq!(
        post(&c, &e, "/api/v1/transferFunds", &h, "").await.status,
        403
    );
    e.shutdown().await;
}

#[tokio::test]
async fn reload_keeps_open_connections() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = V1.replace("{upstream}", &up.addr.to_string());
    publish(dir.path(), 1, &v1);
    let path = dir.path().join("enforcer.yaml");
    let (watcher, config) = ConfigWatcher::load(&path).unwrap();
    let e = start(config, Some(watcher), Arc::new(NoopAnalyzer))
        .await
        .unwrap();
    // One HTTP/1.1 connection, used before and after the reload.
    let stream = tokio::net::TcpStream::connect(e.proxy_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = || {
        http::Request::get("/api/v1/accounts")
            .header("host", "bank")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(sender.send_request(request()).await.unwrap().status(), 200);
    publish(dir.path(), 2, &v1.replace("mode: Enforce", "mode: Monitor"));
    let c = client();
    assert!(
        wait_for(async || metric_value(
            &metrics(&c, &e).await,
            "ordo_config_reloads_total{result=\"ok\"}"
        ) == 1.0)
        .await
    );
    assert_eq!(
        sender.send_request(request()).await.unwrap().status(),
        200,
        "same connection still served"
    );
    e.shutdown().await;
}

/// Records how many recent operations the analyzer was shown for `/slow`, when checking and
/// when learning.
#[derive(Default)]
struct RecentProbe {
    seen: parking_lot::Mutex<Vec<(&'static str, usize)>>,
}

impl Analyzer for RecentProbe {
    fn wants_body(&self, _op: &Operation) -> bool {
        false
    }
    fn inspect(&self, ctx: &RequestContext<'_>, _: &mut SessionState, _: &mut Vec<Finding>) {
        if ctx.operation.template.contains("slow") {
            self.seen.lock().push(("inspect", ctx.recent.len()));
        }
    }
    fn observe(
        &self,
        ctx: &RequestContext<'_>,
        _: &mut SessionState,
        _: &ResponseSummary,
        _: bool,
    ) -> Vec<LateFinding> {
        if ctx.operation.template.contains("slow") {
            self.seen.lock().push(("observe", ctx.recent.len()));
        }
        Vec::new()
    }
    fn model_view(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// A reload while a request waits for the upstream does not change the config that request
/// learns under: it learns with the history it was checked with.
#[tokio::test]
async fn a_request_learns_under_the_config_it_was_checked_under() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = format!(
        "upstream: {{ url: \"http://{}\" }}\nlisten: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nsession:\n  history: {{ duration: 10m }}\n",
        up.addr
    );
    publish(dir.path(), 1, &v1);
    let path = dir.path().join("enforcer.yaml");
    let probe = Arc::new(RecentProbe::default());
    let (watcher, config) = ConfigWatcher::load(&path).unwrap();
    let e = start(config, Some(watcher), probe.clone()).await.unwrap();
    let c = client();
    assert_eq!(get(&c, &e, "/api/v1/accounts", &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // `/slow` waits 5 s upstream; the history shrinks to 500 ms meanwhile, which would drop
    // the earlier request from a history filled again for learning.
    let slow = {
        let (c, addr) = (c.clone(), e.proxy_addr);
        tokio::spawn(async move {
            common::send(&c, "GET", &format!("http://{addr}/slow"), &[], "")
                .await
                .status
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(
        dir.path(),
        2,
        &v1.replace("duration: 10m", "duration: 500ms"),
    );
    let reloaded = wait_for(async || {
        metric_value(
            &metrics(&c, &e).await,
            "ordo_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    assert!(reloaded, "reload not applied");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(*probe.seen.lock(), [("inspect", 1), ("observe", 1)]);
    e.shutdown().await;
}
