//! Housekeeping on the main runtime: config reloads, the session sweep, idle upstream
//! connections and the gauges.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::start::ReloadHook;
use crate::config::{ConfigWatcher, EnforcerConfig, ReloadOutcome};
use crate::detect::RequestScratch;
use crate::policy::compile;
use crate::proxy::Shared;

/// Reloads the config, expires idle sessions and refreshes gauges.
pub(super) async fn housekeeping(
    shared: Arc<Shared>,
    mut watcher: Option<ConfigWatcher>,
    on_reload: Option<ReloadHook>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_shard = 0;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(w) = watcher.as_mut() {
            match w.poll() {
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Loaded(config) => {
                    if apply_reload(&shared, *config)
                        && let Some(hook) = &on_reload
                    {
                        hook(&shared.policy.load().config);
                    }
                }
                ReloadOutcome::Rejected(e) => {
                    shared
                        .metrics
                        .config_reloads
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::error!(path = %w.path().display(), error = %e, "new config rejected; keeping the current one");
                }
            }
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(FOLD_PERIOD_S) {
            shared.analyzer.fold_templates(&shared.resolver);
        }
        sweep_campaigns(&shared).await;
        shared.upstream.evict_idle();
        sweep_sessions(&shared, &mut next_shard).await;
        shared.refresh_gauges();
    }
}

/// Names the members of a credential-stuffing campaign whose last tries no login came after
/// (`Analyzer::sweep_campaigns`), as a login would have, and tells the other replicas.
async fn sweep_campaigns(shared: &Shared) {
    let now_ms = crate::time::now_ms();
    let facts = RequestScratch::exporting(shared.router.is_some());
    for (operation, late) in shared.analyzer.sweep_campaigns(now_ms, &facts) {
        shared.record_late(&operation, std::slice::from_ref(&late), now_ms);
    }
    let facts = facts.take_facts();
    if let Some(router) = &shared.router
        && !facts.is_empty()
    {
        router.share_facts(facts).await;
    }
}

/// Seconds between checks for literal path names to fold into a parameter
/// (`Analyzer::fold_templates`).
const FOLD_PERIOD_S: u64 = 5;

/// Seconds over which housekeeping sweeps the whole session table once.
const SWEEP_PERIOD_S: usize = 10;

/// Sweeps the next tenth of the session table's shards (a full pass every
/// [`SWEEP_PERIOD_S`] ticks), yielding after each shard. Housekeeping shares its thread with
/// proxy worker 0: one sweep of 100,000 sessions at once held that worker for milliseconds, and
/// at a high request rate every request queued behind it paid for it in the latency tail.
async fn sweep_sessions(shared: &Shared, next_shard: &mut usize) {
    let shards = shared.sessions.shard_len();
    for _ in 0..shards.div_ceil(SWEEP_PERIOD_S) {
        let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        shared.sessions.sweep_shard(*next_shard % shards, now_s);
        *next_shard = (*next_shard + 1) % shards;
        tokio::task::yield_now().await;
    }
}

fn apply_reload(shared: &Shared, config: EnforcerConfig) -> bool {
    let current = shared.policy.load();
    let old = &current.config;
    if old.listen != config.listen
        || old.admin.listen != config.admin.listen
        || old.upstream != config.upstream
        || old.operations != config.operations
    {
        tracing::warn!(
            "listen, admin.listen, upstream and operations changes take effect after a restart"
        );
    }
    if old.limits.max_concurrent_requests != config.limits.max_concurrent_requests
        || old.limits.max_connections != config.limits.max_connections
        || old.admin.max_connections != config.admin.max_connections
    {
        tracing::warn!(
            "limits.maxConcurrentRequests, limits.maxConnections and admin.maxConnections changes take effect after a restart"
        );
    }
    let mut config = config;
    // The peers: the section itself, its listener and this replica's address stay as
    // started; the rest (secrets, members, timings) applies now (`Router::reconfigure`).
    match (&old.peers, &mut config.peers, &shared.router) {
        (Some(old_peers), Some(peers), Some(router)) => {
            if peers.listen != old_peers.listen || peers.advertise != old_peers.advertise {
                tracing::warn!(
                    "peers.listen and peers.advertise changes take effect after a restart"
                );
            }
            peers.listen = old_peers.listen;
            peers.advertise.clone_from(&old_peers.advertise);
            if old_peers != peers {
                let router = Arc::clone(router);
                let peers = peers.clone();
                tokio::spawn(async move { router.reconfigure(&peers).await });
            }
        }
        (None, None, _) => {}
        _ => {
            tracing::warn!("adding or removing the peers section takes effect after a restart");
            config.peers.clone_from(&old.peers);
        }
    }
    // Settings bound to listeners and the resolver stay as started.
    config.listen = old.listen;
    config.admin.listen = old.admin.listen;
    config.admin.max_connections = old.admin.max_connections;
    config.limits.max_connections = old.limits.max_connections;
    config.upstream = old.upstream.clone();
    config.operations = old.operations.clone();
    let max_sessions = config.session.max_sessions;
    let idle = config.session.idle_timeout.std();
    let incidents = config.incidents.clone();
    match compile(config, &shared.resolver, &shared.counters) {
        Ok(policy) => {
            shared.sessions.configure(max_sessions, idle);
            shared
                .incidents
                .configure(&incidents, policy.config.admin.reveal_session_keys);
            shared.analyzer.configure(&policy.config);
            shared
                .metrics
                .initialize_rules(policy.rules.iter().map(|rule| &*rule.name));
            shared.policy.store(Arc::new(policy));
            shared
                .metrics
                .config_reloads
                .with_label_values(&["ok"])
                .inc();
            tracing::info!("config reloaded");
            true
        }
        Err(e) => {
            shared
                .metrics
                .config_reloads
                .with_label_values(&["failed"])
                .inc();
            tracing::error!(error = %e, "new config rejected; keeping the current one");
            false
        }
    }
}
