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
use ordo_enforcer::config::{EnforcerConfig, Mode};
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

/// What a change to an ApiProtection or its rules should make the enforcer run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// `mode` of the enforcer config.
    pub mode: Mode,
    /// Rules (by name) that must be present (`true`) or absent (`false`).
    pub rules: Vec<(String, bool)>,
}

impl Expected {
    fn matches(&self, mode: Mode, rule_names: &[String]) -> bool {
        mode == self.mode
            && self
                .rules
                .iter()
                .all(|(name, present)| rule_names.contains(name) == *present)
    }
}

/// How far a change got, from the API server to the running enforcer, and when (time since
/// the change was made). A change that does not arrive says at which stage it stopped.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// The operator rendered it into the ConfigMap.
    pub rendered: Option<Duration>,
    /// The config sync (the kubelet's part) rewrote the enforcer's file.
    pub written: Option<Duration>,
    /// The enforcer's admin API shows it running.
    pub running: Option<Duration>,
    /// What the ConfigMap and the enforcer showed last.
    pub last_rendered: String,
    pub last_running: String,
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = |f: &mut std::fmt::Formatter<'_>, what: &str, at: Option<Duration>| match at {
            Some(at) => write!(f, "{what} after {:.2} s", at.as_secs_f64()),
            None => write!(f, "NOT {what}"),
        };
        stage(
            f,
            "rendered into the ConfigMap by the operator",
            self.rendered,
        )?;
        write!(f, "; ")?;
        stage(
            f,
            "written to the enforcer's file by the config sync",
            self.written,
        )?;
        write!(f, "; ")?;
        stage(f, "running in the enforcer", self.running)?;
        write!(
            f,
            " (ConfigMap: {}; enforcer: {})",
            self.last_rendered, self.last_running
        )
    }
}

/// The mode and rule names of a rendered config.
fn rendered_state(data: &BTreeMap<String, String>) -> anyhow::Result<(Mode, Vec<String>)> {
    let yaml = data
        .get(CONFIG_KEY)
        .ok_or_else(|| anyhow!("the ConfigMap has no {CONFIG_KEY} key"))?;
    let config: EnforcerConfig = serde_yaml_ng::from_str(yaml)?;
    Ok((
        config.mode,
        config.rules.into_iter().map(|r| r.name).collect(),
    ))
}

/// The mode and rule names the enforcer runs, from its admin API.
pub async fn running_state(admin: &str) -> anyhow::Result<(Mode, Vec<String>)> {
    let (status, model) = super::http::get(&format!("http://{admin}/v1/model"), None).await?;
    if status != 200 {
        return Err(anyhow!("GET /v1/model answered {status}: {model}"));
    }
    let model: serde_json::Value = serde_json::from_str(&model)?;
    let mode: Mode = serde_json::from_value(model["mode"].clone())?;
    let (status, rules) = super::http::get(&format!("http://{admin}/v1/rules"), None).await?;
    if status != 200 {
        return Err(anyhow!("GET /v1/rules answered {status}: {rules}"));
    }
    let rules: serde_json::Value = serde_json::from_str(&rules)?;
    let names = rules["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    Ok((mode, names))
}

/// Follows changes from the ConfigMap through the config sync to the running enforcer.
pub struct ChangeFollower {
    maps: Api<ConfigMap>,
    config_map: String,
    generation: tokio::sync::watch::Receiver<u64>,
    admin: String,
}

impl ChangeFollower {
    /// Follows ConfigMap `config_map` in `namespace`, `sync` and the enforcer at `admin`.
    pub fn new(
        client: &kube::Client,
        namespace: &str,
        config_map: &str,
        sync: &ConfigSync,
        admin: &str,
    ) -> Self {
        Self {
            maps: Api::namespaced(client.clone(), namespace),
            config_map: config_map.to_owned(),
            generation: sync.generation.clone(),
            admin: admin.to_owned(),
        }
    }

    /// The config sync's counter of rewrites; read it before making a change.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Follows a change made at `since` (when the sync's counter was `generation_before`)
    /// through its three stages until the enforcer runs it or `timeout` passes.
    pub async fn follow(
        &self,
        expected: &Expected,
        since: tokio::time::Instant,
        generation_before: u64,
        timeout: Duration,
    ) -> Arrival {
        let mut arrival = Arrival::default();
        loop {
            if arrival.rendered.is_none() {
                self.check_rendered(expected, since, &mut arrival).await;
            }
            if arrival.rendered.is_some()
                && arrival.written.is_none()
                && self.generation() != generation_before
            {
                arrival.written = Some(since.elapsed());
            }
            match running_state(&self.admin).await {
                Ok((mode, rules)) => {
                    arrival.last_running = format!("mode {mode:?}, rules {rules:?}");
                    if expected.matches(mode, &rules) {
                        let now = since.elapsed();
                        arrival.running = Some(now);
                        arrival.rendered.get_or_insert(now);
                        arrival.written.get_or_insert(now);
                        return arrival;
                    }
                }
                Err(err) => arrival.last_running = format!("{err:#}"),
            }
            if since.elapsed() > timeout {
                return arrival;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check_rendered(
        &self,
        expected: &Expected,
        since: tokio::time::Instant,
        arrival: &mut Arrival,
    ) {
        arrival.last_rendered = match self.maps.get_opt(&self.config_map).await {
            Ok(Some(map)) => match rendered_state(&map.data.unwrap_or_default()) {
                Ok((mode, rules)) => {
                    if expected.matches(mode, &rules) {
                        arrival.rendered = Some(since.elapsed());
                    }
                    format!("mode {mode:?}, rules {rules:?}")
                }
                Err(err) => format!("{err:#}"),
            },
            Ok(None) => "missing".into(),
            Err(err) => format!("{err:#}"),
        };
    }
}
