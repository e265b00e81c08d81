//! The enforcer of the demo: a local `ordo-enforcer` process standing in for the pod of the
//! Deployment the operator created (kwok runs that pod only on paper).
//!
//! It gets what the pod would get: the config the operator rendered into the ConfigMap
//! (with listen, admin and upstream addresses rewritten to loopback, and file paths pointed
//! at local copies of the ConfigMap's other keys) and a token for the enforcer's
//! ServiceAccount from the TokenRequest API with the report audience, so that its reports are
//! authenticated exactly as in a cluster. [`ConfigSync`] plays the kubelet's part of
//! refreshing a mounted ConfigMap: when the operator re-renders the config (a new mode, a new
//! rule) the local file is replaced atomically and the enforcer reloads it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use ordo_enforcer::config::EnforcerConfig;
use ordo_enforcer::report::REPORT_AUDIENCE;
use ordo_operator::desired::names::{CONFIG_KEY, OPENAPI_KEY, REPORT_CA_KEY};
use tokio::task::JoinHandle;

/// Where the local enforcer listens and what it forwards to.
#[derive(Debug, Clone)]
pub struct LocalAddrs {
    /// The proxy listener (what clients call).
    pub listen: SocketAddr,
    /// The admin listener (health, metrics, incidents, model).
    pub admin: SocketAddr,
    /// The app the enforcer forwards to, e.g. `http://127.0.0.1:41234`.
    pub upstream: String,
}

/// Where the local enforcer's files are.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    /// Directory for the copies of the ConfigMap's other keys.
    pub dir: PathBuf,
    /// The report token (what the projected token volume holds in a pod).
    pub token: PathBuf,
    /// The config file the enforcer runs with.
    pub config: PathBuf,
}

/// Asks the TokenRequest API for a token of `service_account` with the report audience, as
/// the kubelet does for the pod's projected token volume, and writes it to `path`.
pub async fn write_report_token(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![REPORT_AUDIENCE.to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!("requesting a token for ServiceAccount {namespace}/{service_account}")
        })?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("the TokenRequest answer has no token"))?;
    write_atomically(path, &token)
}

/// The ConfigMap's config made runnable here: addresses on loopback, and the files it
/// references (OpenAPI document, report CA, token) pointed at local copies in `dir`.
pub fn local_config(
    data: &BTreeMap<String, String>,
    addrs: &LocalAddrs,
    dir: &Path,
    token_file: &Path,
) -> anyhow::Result<String> {
    let yaml = data
        .get(CONFIG_KEY)
        .ok_or_else(|| anyhow!("the ConfigMap has no {CONFIG_KEY} key"))?;
    let mut config: EnforcerConfig =
        serde_yaml_ng::from_str(yaml).context("the rendered config does not parse")?;
    config.listen = addrs.listen;
    config.admin.listen = addrs.admin;
    config.upstream.url = addrs.upstream.clone();
    if let Some(open_api) = config.open_api.as_mut() {
        let doc = data
            .get(OPENAPI_KEY)
            .ok_or_else(|| anyhow!("the config names an OpenAPI document the ConfigMap lacks"))?;
        let path = dir.join(OPENAPI_KEY);
        write_atomically(&path, doc)?;
        open_api.path = path;
    }
    if let Some(report) = config.report.as_mut() {
        report.token_file = token_file.to_path_buf();
        if report.ca_file.is_some() {
            let ca = data
                .get(REPORT_CA_KEY)
                .ok_or_else(|| anyhow!("the config names a report CA the ConfigMap lacks"))?;
            let path = dir.join(REPORT_CA_KEY);
            write_atomically(&path, ca)?;
            report.ca_file = Some(path);
        }
        report.replica = Some("demo-enforcer-0".to_owned());
    }
    serde_yaml_ng::to_string(&config).context("serializing the local config")
}

/// Writes `text` to a temporary file next to `path` and renames it over `path`, so that a
/// reader never sees half a file (the enforcer's reload polls the file).
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Waits until the ConfigMap exists with a config key and returns its data.
pub async fn wait_for_config(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(map) = maps.get_opt(name).await?
            && let Some(data) = map.data
            && data.contains_key(CONFIG_KEY)
        {
            return Ok(data);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!(
                "ConfigMap {namespace}/{name} with {CONFIG_KEY} did not appear within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Keeps the local config file in step with the ConfigMap, like the kubelet refreshes a
/// mounted ConfigMap (but within a second instead of a minute).
pub struct ConfigSync {
    task: JoinHandle<()>,
    /// Incremented after each rewrite of the local file.
    pub generation: tokio::sync::watch::Receiver<u64>,
}

impl ConfigSync {
    /// Starts syncing; `initial` is the data already written to `files.config`.
    pub fn start(
        client: kube::Client,
        namespace: String,
        name: String,
        initial: BTreeMap<String, String>,
        addrs: LocalAddrs,
        files: LocalFiles,
    ) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let mut last = initial;
            let mut generation = 0u64;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let data = match maps.get_opt(&name).await {
                    Ok(Some(map)) => map.data.unwrap_or_default(),
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading the enforcer ConfigMap");
                        continue;
                    }
                };
                if data == last || !data.contains_key(CONFIG_KEY) {
                    continue;
                }
                match local_config(&data, &addrs, &files.dir, &files.token)
                    .and_then(|text| write_atomically(&files.config, &text))
                {
                    Ok(()) => {
                        last = data;
                        generation += 1;
                        let _ = tx.send(generation);
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "rewriting the local enforcer config")
                    }
                }
            }
        });
        Self {
            task,
            generation: rx,
        }
    }
}

impl Drop for ConfigSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}
