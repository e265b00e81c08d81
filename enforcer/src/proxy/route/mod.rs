//! The routing step before the decision: with several enforcer replicas (the `peers`
//! section), each session is decided by one of them, its *owner* (rendezvous hashing of the
//! session key over the ready replicas, [`ring`]), whatever replica the request reached. A
//! request for a session owned elsewhere is forwarded to the owner's internal listener
//! ([`forward`]), which decides, proxies to the upstream and answers through the forwarder.
//! Without `peers` this step is one branch. A forwarded request is never forwarded again (the
//! internal listener marks it), so there are no loops even while replicas disagree on the
//! members. docs/scale-out.md explains the design, its failure modes and its cost.
//!
//! Fail safe: when the owner cannot be reached the request is decided here, and a session
//! that may have been served elsewhere since the members changed starts over here with its
//! history marked lost (`SessionTable::forget_unless_seen_after`), so rules that need history
//! err toward not firing, as after an eviction.
//!
//! Replicas do not see a change of members at the same instant. Every message between
//! replicas names the view its sender routes by (a hash of the member list), a replica
//! announces each change of its view to the others before it routes by it, and a replica
//! that learns of a view other than its own treats the sessions that view gives to another
//! replica as possibly decided there too, until `hold` after the last sign of that view
//! ([`Router::observe`]). A replica that crashed and came back is taken back when it announces its first view.

mod auth;
mod facts;
mod forward;
mod ring;
mod seen;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::body::ProxyBody;
use super::state::Shared;
use crate::config::{PeersConfig, expand_env};
use crate::operation::canonical_target;
use crate::policy::CompiledPolicy;
pub use forward::serve_peers;
use ring::{View, Views, view_hash};
use seen::{Seen, SeenMacs};

/// Marks a request that came through the internal listener from another replica.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forwarded {
    /// Unix ms since which the forwarder knows the session may have been elsewhere (0: none).
    moved_since_ms: u64,
}

/// What the routing step did with a request.
pub(super) enum Routed {
    /// Decide it here.
    Local(Request<Incoming>),
    /// The owner (or the failure handling) answered it.
    Answered(http::Response<ProxyBody>),
}

/// Why a router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{0}")]
    Config(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct RouteMetrics {
    forward: IntCounterVec,
    peers: IntGauge,
    view_changes: prometheus::IntCounter,
    forgotten: prometheus::IntCounter,
    disagreements: prometheus::IntCounter,
    facts: IntCounterVec,
    facts_wait: Histogram,
}

impl RouteMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let forward = IntCounterVec::new(
            Opts::new(
                "ordo_forward_total",
                "Requests by routing result: forwarded (to the owner), received (from a replica), \
                 local_fallback (owner unreachable, decided here), failed (owner failed after the \
                 request was sent), unauthenticated (refused on the internal listener), \
                 replayed (a message between replicas taken before: refused, and counted in \
                 unauthenticated too), \
                 replay_unchecked (taken without the replay check: as many messages as it \
                 remembers were taken lately)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(forward.clone()))?;
        for r in [
            "forwarded",
            "received",
            "local_fallback",
            "failed",
            "unauthenticated",
            "replayed",
            "replay_unchecked",
        ] {
            forward.with_label_values(&[r]);
        }
        let peers = IntGauge::new(
            "ordo_peers",
            "Replicas in this replica's current view (itself included when ready)",
        )?;
        registry.register(Box::new(peers.clone()))?;
        let view_changes = prometheus::IntCounter::new(
            "ordo_peer_view_changes_total",
            "Changes of the replica set sessions are spread over",
        )?;
        registry.register(Box::new(view_changes.clone()))?;
        let forgotten = prometheus::IntCounter::new(
            "ordo_sessions_moved_total",
            "Sessions that came to this replica after the replica set changed and started over \
             here with their history marked lost",
        )?;
        registry.register(Box::new(forgotten.clone()))?;
        let disagreements = prometheus::IntCounter::new(
            "ordo_peer_view_disagreements_total",
            "Messages from a replica routing by another member view than this one's (the \
             sessions that view gives to another replica start over here until they agree)",
        )?;
        registry.register(Box::new(disagreements.clone()))?;
        let facts = IntCounterVec::new(
            Opts::new(
                "ordo_peer_facts_total",
                "Facts about client addresses (what answers to their anonymous requests showed \
                 them, failed logins, quarantines, authentication attempts) by result: \
                 acknowledged and unacknowledged (messages sent to a replica), received, \
                 invalid (refused: body not the one authenticated), skipped (entries of a \
                 received message not taken: an operation not learned here, a time out of \
                 bounds)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(facts.clone()))?;
        for r in [
            "acknowledged",
            "unacknowledged",
            "received",
            "invalid",
            "skipped",
        ] {
            facts.with_label_values(&[r]);
        }
        // What sharing facts adds to the answer of the request that taught them (the answer
        // waits for every replica's acknowledgement, at most twice `connectTimeout`).
        let facts_wait = Histogram::with_opts(
            HistogramOpts::new(
                "ordo_peer_facts_wait_seconds",
                "Time an answer waited for the other replicas to acknowledge the facts its \
                 decision taught (only requests that taught some)",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
            ]),
        )?;
        registry.register(Box::new(facts_wait.clone()))?;
        Ok(Self {
            forward,
            peers,
            view_changes,
            forgotten,
            disagreements,
            facts,
            facts_wait,
        })
    }
}

/// Another replica's view, learned from what it sent: the sessions it gives to another
/// replica than this one may be decided there until `until_ms`.
struct Foreign {
    view: Arc<View>,
    until_ms: u64,
}

/// What a replica said it routes by.
struct Held {
    from: SocketAddr,
    view: u64,
    /// When it last said so (Unix ms).
    heard_ms: u64,
}

/// How long what a replica said it routes by counts without being said again: a
/// disagreement lasts a hold at most when DNS is consistent, and an announcement that never
/// arrived (retried for at most 5 s) must not contest sessions for good.
const HELD_FOR: Duration = Duration::from_secs(30);

/// Foreign views kept; when more differ at once, every session counts as contested.
const MAX_FOREIGN: usize = 8;
/// Members read from one announcement's list.
const MAX_ANNOUNCED: usize = 64;
/// The header of a view announcement: `<previous members>;<new members>`, comma-separated.
const PEER_VIEWS: &str = "x-ordo-peer-views";

/// The replicas a session may be routed to, and how.
pub struct Router {
    self_addr: SocketAddr,
    /// The shared secrets: the first signs, all are accepted (a rotation's overlap).
    /// Reloaded with the config and from `secretFile` (see [`Router::reconfigure`]).
    secrets: ArcSwap<Vec<Vec<u8>>>,
    /// The ownership hash's key, derived from the signing secret: a rotation changes it once,
    /// as a change of members changes owners (announced, the views versioned by it).
    ring_key: Mutex<(u64, u64)>,
    views: ArcSwap<Views>,
    /// Members from the config or the last DNS answer.
    discovered: Mutex<Vec<SocketAddr>>,
    /// Members left out after a failed connection, with the time they may be probed again.
    suspects: Mutex<Vec<(SocketAddr, Instant)>>,
    config: ArcSwap<PeersConfig>,
    /// Longest time a session's past matters to a decision (the session history's duration),
    /// updated from the policy.
    horizon_ms: std::sync::atomic::AtomicU64,
    pool: forward::Pool<Incoming>,
    /// The MACs of the messages taken lately: each is taken once ([`seen`]).
    seen: Mutex<SeenMacs>,
    /// Connections for facts about client addresses ([`facts`]).
    facts_pool: forward::Pool<http_body_util::Full<bytes::Bytes>>,
    metrics: RouteMetrics,
    /// Views other replicas route by that differ from this one's (at most [`MAX_FOREIGN`]).
    foreign: Mutex<Vec<Foreign>>,
    /// The view each replica that spoke to this one routes by now, as it last said (an
    /// announcement's new list, a forwarded request's view; at most [`MAX_ANNOUNCED`]). While
    /// one differs from this replica's, the disagreement is live: its sessions are contested
    /// without end, not only for `hold` after the message, since the replica that disagrees
    /// may send nothing here while it decides them (docs/scale-out.md).
    held: Mutex<Vec<Held>>,
    /// Whether some entry of `held` differs from this replica's view (kept by
    /// [`Router::refresh_disagreement`], read on the fast path).
    disagreeing: AtomicBool,
    /// Until when (Unix ms) every session counts as possibly decided elsewhere: a view was
    /// seen that this replica does not know.
    contest_all_until_ms: AtomicU64,
    /// From when (Unix ms) no foreign view matters any more: the fast path applies again.
    quiet_after_ms: AtomicU64,
    /// Wakes [`Router::maintain`]: a suspect, a replica to take back, a view to look up.
    wake: tokio::sync::Notify,
    /// Asks `maintain` for a DNS lookup before the refresh interval is up.
    lookup_now: AtomicBool,
    /// Serializes changes of the view (each announced before it takes effect).
    changing: tokio::sync::Mutex<()>,
    /// The last announcement, to send again to the replicas that did not acknowledge it.
    unacknowledged: Mutex<Option<Unacknowledged>>,
}

/// An announcement some replicas did not acknowledge (a slow replica, a lost connection).
struct Unacknowledged {
    previous: Vec<SocketAddr>,
    next: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    /// Sent again until then.
    until: Instant,
}

fn unix_ms() -> u64 {
    crate::time::now_ms()
}

/// The ownership hash's key for a signing secret: clients cannot choose session ids that all
/// land on one replica without it.
fn ring_key_of(secret: &[u8]) -> (u64, u64) {
    let digest = Sha256::new()
        .chain_update(b"ordo ring key\0")
        .chain_update(secret)
        .finalize();
    let word = |range: std::ops::Range<usize>| {
        digest
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    (word(0..8), word(8..16))
}

impl Router {
    /// A router for `config`, its metrics in `registry`; `horizon` is the session history's
    /// duration.
    pub fn new(
        config: &PeersConfig,
        registry: &Registry,
        horizon: Duration,
    ) -> Result<Self, RouterError> {
        let secrets = config.load_secrets().map_err(RouterError::Config)?;
        let self_addr: SocketAddr = expand_env(&config.advertise).parse().map_err(|_| {
            RouterError::Config(format!(
                "peers.advertise: {:?} is not ip:port",
                expand_env(&config.advertise)
            ))
        })?;
        let ring_key = ring_key_of(&secrets[0]);
        let members: Vec<SocketAddr> = config
            .r#static
            .iter()
            .filter_map(|p| expand_env(p).parse().ok())
            .collect();
        let view = View::new(
            ring_key,
            members.clone(),
            self_addr,
            Instant::now(),
            unix_ms(),
        );
        let metrics = RouteMetrics::new(registry)?;
        metrics
            .peers
            .set(i64::try_from(view.members.len()).unwrap_or(i64::MAX));
        Ok(Self {
            self_addr,
            secrets: ArcSwap::from_pointee(secrets),
            ring_key: Mutex::new(ring_key),
            views: ArcSwap::from_pointee(Views::first(view)),
            discovered: Mutex::new(members),
            suspects: Mutex::new(Vec::new()),
            config: ArcSwap::from_pointee(config.clone()),
            horizon_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(horizon.as_millis()).unwrap_or(u64::MAX),
            ),
            pool: forward::Pool::new(forward::MAX_IDLE_PER_PEER),
            facts_pool: forward::Pool::new(facts::MAX_IDLE),
            seen: Mutex::default(),
            metrics,
            foreign: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            disagreeing: AtomicBool::new(false),
            contest_all_until_ms: AtomicU64::new(0),
            quiet_after_ms: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            lookup_now: AtomicBool::new(false),
            changing: tokio::sync::Mutex::new(()),
            unacknowledged: Mutex::new(None),
        })
    }

    /// How long another replica may still route by a view after this one left it: with DNS,
    /// its next refresh (at most one interval; twice for one lookup that failed), and a
    /// second for the announcement, a suspicion or a restart to reach everyone (a static
    /// list changes only by those).
    fn hold(&self) -> Duration {
        let refresh = self
            .config
            .load()
            .dns
            .as_ref()
            .map_or(Duration::ZERO, |d| d.refresh_interval.std());
        refresh * 2 + Duration::from_secs(1)
    }

    /// The ownership hash's key now.
    fn ring_key(&self) -> (u64, u64) {
        *self.ring_key.lock()
    }

    /// The secret that signs what this replica sends.
    fn signing_secret(&self) -> Vec<u8> {
        self.secrets.load().first().cloned().unwrap_or_default()
    }

    /// The claims of an authentication header, when one of the accepted secrets signed it.
    fn verify(
        &self,
        value: &str,
        request: &auth::Signed<'_>,
    ) -> Option<(auth::PeerClaims, auth::Stamp)> {
        let now_ms = unix_ms();
        self.secrets
            .load()
            .iter()
            .find_map(|secret| auth::verify(secret, now_ms, value, request))
    }

    /// Whether the verified message `stamp` is taken for the first time (see [`seen`]): a
    /// message is taken once, when all of it that can be checked was (a facts message's body
    /// after its digest, so that a copy with another body cannot use up the genuine one).
    fn first_time(&self, stamp: auth::Stamp) -> bool {
        let seen = self.seen.lock().check(stamp.mac, stamp.at_ms, unix_ms());
        match seen {
            Seen::First => true,
            Seen::Again => {
                self.metrics.forward.with_label_values(&["replayed"]).inc();
                false
            }
            Seen::Unchecked => {
                self.metrics
                    .forward
                    .with_label_values(&["replay_unchecked"])
                    .inc();
                true
            }
        }
    }

    /// Applies a reloaded `peers` section: the secrets (a rotation), the static members or
    /// the DNS name, the timings. `listen` and `advertise` stay as started (a restart applies
    /// them). A new signing secret changes the ownership hash's key: the view is rebuilt and
    /// announced as for a change of members.
    pub async fn reconfigure(&self, config: &PeersConfig) {
        let current = self.config.load_full();
        let mut config = config.clone();
        config.listen = current.listen;
        config.advertise.clone_from(&current.advertise);
        match config.load_secrets() {
            Ok(secrets) => self.set_secrets(secrets),
            Err(e) => tracing::error!(error = %e, "peers: keeping the current secrets"),
        }
        let members: Vec<SocketAddr> = config
            .r#static
            .iter()
            .filter_map(|p| expand_env(p).parse().ok())
            .collect();
        let static_changed = config.r#static != current.r#static;
        let dns_changed = config.dns != current.dns;
        self.config.store(Arc::new(config));
        if static_changed && !members.is_empty() {
            *self.discovered.lock() = members;
        }
        if dns_changed {
            self.lookup_now.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
        self.apply().await;
    }

    /// Takes the secrets when they changed; a new signing secret changes the ring key.
    fn set_secrets(&self, secrets: Vec<Vec<u8>>) {
        if **self.secrets.load() == secrets {
            return;
        }
        let key = ring_key_of(&secrets[0]);
        self.secrets.store(Arc::new(secrets));
        let mut ring_key = self.ring_key.lock();
        if *ring_key != key {
            tracing::info!("peers: a new secret signs; sessions are spread with its key");
            *ring_key = key;
        }
        tracing::info!("peers: secrets reloaded");
    }

    /// Reads `secretFile` again (an updated Secret); applies what changed.
    async fn reload_secret_file(&self) {
        let config = self.config.load_full();
        if config.secret_file.is_none() {
            return;
        }
        match config.load_secrets() {
            Ok(secrets) if **self.secrets.load() != secrets => {
                self.set_secrets(secrets);
                self.apply().await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "peers: keeping the current secrets"),
        }
    }

    fn hold_ms(&self) -> u64 {
        u64::try_from(self.hold().as_millis()).unwrap_or(u64::MAX)
    }

    /// The owner of `session` (the session key) among `members`, as every replica computes it.
    pub fn owner_among(&self, members: &[SocketAddr], session: &str) -> Option<SocketAddr> {
        View::new(
            self.ring_key(),
            members.to_vec(),
            self.self_addr,
            Instant::now(),
            0,
        )
        .owner_addr(session)
    }

    fn horizon(&self) -> Duration {
        Duration::from_millis(self.horizon_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// This replica's address among the members.
    pub fn self_addr(&self) -> SocketAddr {
        self.self_addr
    }

    /// The members of the current view, sorted.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.views.load().current.members.clone()
    }

    /// Replaces the discovered members (what a DNS refresh does; tests call it for a static
    /// list that changes), and applies the change once the others were told.
    pub async fn set_members(&self, members: Vec<SocketAddr>) {
        *self.discovered.lock() = members;
        self.apply().await;
    }

    /// The discovered members minus the suspects, sorted.
    fn wanted_members(&self) -> Vec<SocketAddr> {
        let mut members = self.discovered.lock().clone();
        {
            let suspects = self.suspects.lock();
            members.retain(|m| !suspects.iter().any(|(s, _)| s == m));
        }
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Rebuilds the view from the discovered members minus the suspects, when it changed:
    /// the other replicas are told first (bounded by the connect timeout), so that none of
    /// them decides a session this replica now routes elsewhere without knowing it.
    async fn apply(&self) {
        let _one_at_a_time = self.changing.lock().await;
        let members = self.wanted_members();
        let views = self.views.load_full();
        if views.current.members == members && views.current.key == self.ring_key() {
            return;
        }
        self.announce(&views.current.members, &members).await;
        let next = View::new(
            self.ring_key(),
            members,
            self.self_addr,
            Instant::now(),
            unix_ms(),
        );
        tracing::info!(members = ?next.members, "enforcer replica set changed");
        self.metrics
            .peers
            .set(i64::try_from(next.members.len()).unwrap_or(i64::MAX));
        self.metrics.view_changes.inc();
        let window = self.horizon() + self.hold();
        self.views.store(Arc::new(views.then(next, window)));
        self.refresh_disagreement();
    }

    /// Tells every other replica of `previous` and `next` (suspects too, without waiting for
    /// them) that this one routes by `next` from now on; those that do not acknowledge are
    /// told again by `maintain` for the hold.
    async fn announce(&self, previous: &[SocketAddr], next: &[SocketAddr]) {
        let suspects: Vec<SocketAddr> = self.suspects.lock().iter().map(|(s, _)| *s).collect();
        let mut targets: Vec<SocketAddr> = previous
            .iter()
            .chain(next)
            .chain(&suspects)
            .copied()
            .filter(|m| *m != self.self_addr)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let peers = self.announce_to(previous, next, &targets, &suspects).await;
        *self.unacknowledged.lock() = (!peers.is_empty()).then(|| Unacknowledged {
            previous: previous.to_vec(),
            next: next.to_vec(),
            peers,
            until: Instant::now() + self.hold().max(Duration::from_secs(5)),
        });
    }

    /// Sends the last announcement again to those that did not acknowledge it.
    async fn announce_again(&self) {
        let Some(pending) = self.unacknowledged.lock().take() else {
            return;
        };
        if Instant::now() >= pending.until {
            return;
        }
        let peers = self
            .announce_to(&pending.previous, &pending.next, &pending.peers, &[])
            .await;
        let mut slot = self.unacknowledged.lock();
        if slot.is_none() && !peers.is_empty() {
            *slot = Some(Unacknowledged { peers, ..pending });
        }
    }

    /// Announces `previous` → `next` to `targets`; waits for all but `unwaited`, and returns
    /// those waited for that did not acknowledge.
    async fn announce_to(
        &self,
        previous: &[SocketAddr],
        next: &[SocketAddr],
        targets: &[SocketAddr],
        unwaited: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let list = |m: &[SocketAddr]| {
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let value = format!("{};{}", list(previous), list(next));
        let hash = view_hash(self.ring_key(), next);
        let mut waited = tokio::task::JoinSet::new();
        for peer in targets {
            let send = forward::send_view(
                self.signing_secret(),
                self.self_addr,
                hash,
                *peer,
                value.clone(),
                self.config.load().connect_timeout.std(),
            );
            if unwaited.contains(peer) {
                tokio::spawn(send);
            } else {
                waited.spawn(send);
            }
        }
        let mut missing = Vec::new();
        while let Some(done) = waited.join_next().await {
            if let Ok((peer, false)) = done {
                missing.push(peer);
            }
        }
        missing
    }

    /// Leaves `peer` out of the ring after a failed connection (applied by `maintain`, after
    /// the others were told; meanwhile its sessions are decided here, started over).
    fn suspect(&self, peer: SocketAddr) {
        {
            let mut suspects = self.suspects.lock();
            if suspects.iter().any(|(s, _)| *s == peer) {
                return;
            }
            suspects.push((peer, Instant::now() + self.config.load().suspect_for.std()));
        }
        // What it routes by no longer matters while it is left out: what it decided is
        // covered by the hold after this replica's own change.
        self.set_held(peer, None);
        tracing::warn!(%peer, "enforcer replica unreachable; its sessions are decided by the others");
        self.wake.notify_one();
    }

    /// What an authenticated message from the replica `from`, routing by the view `view`
    /// (and, for an announcement, its `previous` and `next` member lists), tells this one.
    /// A suspect that announces its first view (it restarted) is taken back; one that is only
    /// slow (it still forwards) waits for its probe after `suspectFor`, as before, so that a
    /// loaded replica does not make the view flap at each of its messages. A view other than this replica's means that the
    /// sessions it gives to another replica may be decided there: they start over here at
    /// every decision until `hold` after the last sign of that view (and once more after),
    /// and the DNS lookup that may bring this replica's view up to date is done now.
    fn observe(&self, from: SocketAddr, view: u64, announced: Option<[Vec<SocketAddr>; 2]>) {
        let mut wake = false;
        let restarted = announced
            .as_ref()
            .is_some_and(|[previous, _]| previous.is_empty());
        if restarted {
            let mut suspects = self.suspects.lock();
            if suspects.iter().any(|(s, _)| *s == from) {
                suspects.retain(|(s, _)| *s != from);
                tracing::info!(peer = %from, "enforcer replica back");
                wake = true;
            }
        }
        let views = self.views.load();
        let until_ms = unix_ms().saturating_add(self.hold_ms());
        let mut lists: Vec<Arc<View>> = Vec::new();
        let now_routes_by = announced
            .as_ref()
            .map_or(view, |[_, next]| view_hash(self.ring_key(), next));
        if let Some([previous, next]) = &announced
            && previous != next
            && now_routes_by != views.current.hash
        {
            // The sender changed to a view other than this one's: it is told which view this
            // replica routes by, so that it too contests what this one decides (a replica
            // that just started hears nothing otherwise from those not yet changed). A reply
            // repeats one list, and is not answered: no ping-pong.
            let members = views.current.members.clone();
            let lists = {
                let list = members
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                format!("{list};{list}")
            };
            tokio::spawn(forward::send_view(
                self.signing_secret(),
                self.self_addr,
                views.current.hash,
                from,
                lists,
                self.config.load().connect_timeout.std(),
            ));
        }
        match announced {
            Some(announced) => {
                for members in announced {
                    if !members.is_empty()
                        && view_hash(self.ring_key(), &members) != views.current.hash
                    {
                        lists.push(Arc::new(View::new(
                            self.ring_key(),
                            members,
                            self.self_addr,
                            Instant::now(),
                            0,
                        )));
                    }
                }
            }
            None if view == views.current.hash => {}
            None => {
                let known = views.find(view).cloned().or_else(|| {
                    self.foreign
                        .lock()
                        .iter()
                        .find(|f| f.view.hash == view)
                        .map(|f| Arc::clone(&f.view))
                });
                match known {
                    Some(v) => lists.push(v),
                    None => {
                        // A view this replica has never seen: anything may be decided
                        // elsewhere until it learns more.
                        self.contest_all_until_ms
                            .fetch_max(until_ms, Ordering::Relaxed);
                        self.quiet_after(until_ms);
                        self.metrics.disagreements.inc();
                        wake = true;
                    }
                }
            }
        }
        for v in lists {
            self.remember(v, until_ms);
            wake = true;
        }
        self.set_held(from, Some(now_routes_by));
        if wake {
            self.lookup_now.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Keeps a foreign view until `until_ms` (later, if it is already known).
    fn remember(&self, view: Arc<View>, until_ms: u64) {
        let mut foreign = self.foreign.lock();
        if let Some(f) = foreign.iter_mut().find(|f| f.view.hash == view.hash) {
            f.until_ms = f.until_ms.max(until_ms);
        } else {
            self.metrics.disagreements.inc();
            foreign.push(Foreign { view, until_ms });
            if foreign.len() > MAX_FOREIGN
                && let Some((i, _)) = foreign.iter().enumerate().min_by_key(|(_, f)| f.until_ms)
            {
                // Too many views at once to tell them apart: every session is contested
                // until the dropped one would have ended.
                let dropped = foreign.swap_remove(i);
                self.contest_all_until_ms
                    .fetch_max(dropped.until_ms, Ordering::Relaxed);
            }
        }
        drop(foreign);
        self.quiet_after(until_ms);
    }

    /// Records that `from` routes by the view `hash` now (`None`: no longer counts, e.g. it
    /// is suspected or left). The view it routed by before stays contested for `hold`.
    fn set_held(&self, from: SocketAddr, hash: Option<u64>) {
        let before = {
            let mut held = self.held.lock();
            let before = held.iter().find(|h| h.from == from).map(|h| h.view);
            held.retain(|h| h.from != from);
            if let Some(view) = hash
                && held.len() < MAX_ANNOUNCED
            {
                held.push(Held {
                    from,
                    view,
                    heard_ms: unix_ms(),
                });
            }
            before
        };
        if let Some(before) = before
            && Some(before) != hash
        {
            let until_ms = unix_ms().saturating_add(self.hold_ms());
            if let Some(f) = self
                .foreign
                .lock()
                .iter_mut()
                .find(|f| f.view.hash == before)
            {
                f.until_ms = f.until_ms.max(until_ms);
            }
            self.quiet_after(until_ms);
        }
        self.refresh_disagreement();
    }

    /// The views other replicas route by now that differ from this replica's.
    fn live_foreign(&self, current: u64) -> Vec<u64> {
        let oldest_ms = unix_ms().saturating_sub(self.held_for_ms());
        let mut live: Vec<u64> = self
            .held
            .lock()
            .iter()
            .filter(|h| h.heard_ms >= oldest_ms)
            .map(|h| h.view)
            .filter(|h| *h != current)
            .collect();
        live.sort_unstable();
        live.dedup();
        live
    }

    /// Updates `disagreeing`; when the last disagreement ends, every foreign view stays
    /// contested for `hold` from now (the others may still act on what they decided).
    fn refresh_disagreement(&self) {
        let live = !self.live_foreign(self.views.load().current.hash).is_empty();
        let was = self.disagreeing.swap(live, Ordering::Relaxed);
        if was && !live {
            let until_ms = unix_ms().saturating_add(self.hold_ms());
            for f in self.foreign.lock().iter_mut() {
                f.until_ms = f.until_ms.max(until_ms);
            }
            self.quiet_after(until_ms);
        }
    }

    fn held_for_ms(&self) -> u64 {
        u64::try_from((HELD_FOR + self.hold()).as_millis()).unwrap_or(u64::MAX)
    }

    fn quiet_after(&self, until_ms: u64) {
        let horizon_ms = self.horizon_ms.load(Ordering::Relaxed);
        self.quiet_after_ms
            .fetch_max(until_ms.saturating_add(horizon_ms), Ordering::Relaxed);
    }

    /// Until when (Unix ms) `session` may be decided by another replica according to what
    /// other replicas' messages showed (none when nothing says so).
    /// A view another replica routes by now counts as lasting until `hold` from now.
    fn contested_until(&self, session: &str, current: u64, now_ms: u64) -> Option<u64> {
        let horizon_ms = self.horizon_ms.load(Ordering::Relaxed);
        let live_until = now_ms.saturating_add(self.hold_ms());
        let all = self.contest_all_until_ms.load(Ordering::Relaxed);
        let mut until = (all != 0 && all.saturating_add(horizon_ms) > now_ms).then_some(all);
        let mut live = self.live_foreign(current);
        for f in self.foreign.lock().iter() {
            let is_live = live.contains(&f.view.hash);
            live.retain(|h| *h != f.view.hash);
            let f_until = if is_live { live_until } else { f.until_ms };
            if f_until.saturating_add(horizon_ms) > now_ms
                && f.view.owner_addr(session) != Some(self.self_addr)
            {
                until = until.max(Some(f_until));
            }
        }
        if !live.is_empty() {
            // Another replica routes by a view this one does not hold (more views than
            // `MAX_FOREIGN`): any session may be decided there.
            until = until.max(Some(live_until));
        }
        until
    }

    /// Keeps the view current: DNS refreshes (right away when another replica's view shows
    /// this one may be late), suspects probed again when their time is up (back in the ring
    /// only when they accept a connection, or as soon as they announce a first view), foreign
    /// views forgotten once they no longer matter. Announces the first view (so that a
    /// replica that crashed and came back is taken back at once). Runs until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = self
            .config
            .load()
            .dns
            .as_ref()
            .map_or(Duration::from_secs(1), |d| d.refresh_interval.std())
            .min(Duration::from_secs(1));
        // A DNS lookup asked for by another replica's view, at most this often.
        let min_lookup_gap = Duration::from_millis(200);
        let first = self.views.load().current.members.clone();
        self.announce(&[], &first).await;
        let mut next_dns = Instant::now();
        let mut last_lookup: Option<Instant> = None;
        let mut next_reannounce = Instant::now();
        let mut first_round = true;
        loop {
            if !first_round {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(tick) => {}
                    () = self.wake.notified() => {}
                }
            }
            first_round = false;
            self.reload_secret_file().await;
            let asked = self.lookup_now.swap(false, Ordering::Relaxed)
                && last_lookup.is_none_or(|at| at.elapsed() >= min_lookup_gap);
            let config = self.config.load_full();
            if let Some(dns) = &config.dns
                && (Instant::now() >= next_dns || asked)
            {
                next_dns = Instant::now() + dns.refresh_interval.std();
                last_lookup = Some(Instant::now());
                match tokio::net::lookup_host((dns.name.as_str(), dns.port)).await {
                    Ok(found) => {
                        let found: Vec<SocketAddr> = found.take(64).collect();
                        *self.discovered.lock() = found;
                    }
                    // Keep the last answer: a DNS hiccup must not reshuffle sessions.
                    Err(e) => tracing::warn!(name = %dns.name, error = %e, "peer lookup failed"),
                }
            }
            let due: Vec<SocketAddr> = {
                let now = Instant::now();
                self.suspects
                    .lock()
                    .iter()
                    .filter(|(_, at)| *at <= now)
                    .map(|(p, _)| *p)
                    .collect()
            };
            for peer in due {
                let reachable = tokio::time::timeout(
                    self.config.load().connect_timeout.std(),
                    tokio::net::TcpStream::connect(peer),
                )
                .await
                .is_ok_and(|c| c.is_ok());
                let mut suspects = self.suspects.lock();
                if reachable {
                    suspects.retain(|(s, _)| *s != peer);
                } else if let Some(entry) = suspects.iter_mut().find(|(s, _)| *s == peer) {
                    entry.1 = Instant::now() + self.config.load().suspect_for.std();
                }
            }
            let has_suspects = {
                // Suspects no longer discovered are forgotten.
                let discovered = self.discovered.lock().clone();
                let mut suspects = self.suspects.lock();
                suspects.retain(|(s, _)| discovered.contains(s));
                !suspects.is_empty()
            };
            {
                // A replica no longer among the members that has not spoken for `hold` has
                // left, and what no replica has said again for `HELD_FOR` is over: what they
                // routed by no longer counts (the hold after it still applies).
                let discovered = self.discovered.lock().clone();
                let now_ms = unix_ms();
                let gone: Vec<SocketAddr> = self
                    .held
                    .lock()
                    .iter()
                    .filter(|h| {
                        let silent_ms = now_ms.saturating_sub(h.heard_ms);
                        (!discovered.contains(&h.from) && silent_ms > self.hold_ms())
                            || silent_ms > self.held_for_ms()
                    })
                    .map(|h| h.from)
                    .collect();
                for from in gone {
                    self.set_held(from, None);
                }
                self.refresh_disagreement();
            }
            {
                let horizon_ms = self.horizon_ms.load(Ordering::Relaxed);
                let now_ms = unix_ms();
                let live = self.live_foreign(self.views.load().current.hash);
                self.foreign.lock().retain(|f| {
                    f.until_ms.saturating_add(horizon_ms) > now_ms || live.contains(&f.view.hash)
                });
            }
            self.apply().await;
            self.announce_again().await;
            // A suspect that is alive but was slow keeps deciding the sessions it owns in the
            // views of those that did not suspect it: it is told again, so that it keeps
            // treating them as contested while this replica routes them elsewhere.
            if has_suspects && Instant::now() >= next_reannounce {
                next_reannounce = Instant::now() + self.hold() / 2;
                let current = self.views.load().current.members.clone();
                self.announce(&current, &current).await;
            }
        }
    }

    fn forget_if_moved(&self, shared: &Shared, session: &str, since_unix_ms: u64) {
        let now_ms = unix_ms();
        let now_s = u32::try_from(shared.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
        // The moment in the table's clock (whole seconds since the process epoch), rounded up.
        let ago_s = u32::try_from(now_ms.saturating_sub(since_unix_ms) / 1000).unwrap_or(u32::MAX);
        let since_s = now_s.saturating_sub(ago_s);
        let hash = shared.sessions.key_hash(session);
        if shared
            .sessions
            .forget_unless_seen_after(hash, now_s, since_s)
        {
            self.metrics.forgotten.inc();
        }
    }
}

/// The session key of a request as the decision will compute it (none when the request will
/// be refused before any session state is read), under the request's policy and with its
/// client address. Like the decision, it waits for a JWKS refresh a token's new `kid` asks
/// for (bounded from `arrived`), so that the request is routed by the session it will have.
async fn session_key(
    policy: &CompiledPolicy,
    client: IpAddr,
    req: &Request<Incoming>,
    arrived: Instant,
) -> Option<String> {
    let config = &policy.config;
    let (_, query) = canonical_target(
        req.method(),
        req.version(),
        req.uri(),
        &config.paths,
        config.limits.max_query_parameters,
    )
    .ok()?;
    let mut session = String::with_capacity(48);
    policy
        .identifiers
        .identify_waiting(req.headers(), &query, client, &mut session, arrived)
        .await
        .ok()?;
    Some(session)
}

/// The routing step: `Local` without peers (one branch), for sessions owned here and for
/// forwarded requests; otherwise the owner's answer. `policy` is the one the request is
/// handled under, `client` its client address (both as the handler computed them), `arrived`
/// when the request came in.
pub(super) async fn route(
    shared: &Arc<Shared>,
    policy: &CompiledPolicy,
    peer: SocketAddr,
    client: IpAddr,
    req: Request<Incoming>,
    arrived: Instant,
) -> Routed {
    let Some(router) = shared.router.as_deref() else {
        return Routed::Local(req);
    };
    router
        .route(shared, policy, peer, client, req, arrived)
        .await
}

impl Router {
    async fn route(
        &self,
        shared: &Arc<Shared>,
        policy: &CompiledPolicy,
        peer: SocketAddr,
        client: IpAddr,
        req: Request<Incoming>,
        arrived: Instant,
    ) -> Routed {
        let views = self.views.load_full();
        let forwarded = req.extensions().get::<Forwarded>().copied();
        let now = Instant::now();
        let now_ms = unix_ms();
        let horizon = Duration::from_millis(policy.history_ms);
        let horizon_ms = u64::try_from(horizon.as_millis()).unwrap_or(u64::MAX);
        if self.horizon_ms.load(Ordering::Relaxed) != horizon_ms {
            self.horizon_ms.store(horizon_ms, Ordering::Relaxed);
        }
        let hold = self.hold();
        let settled = views.settled(now, horizon + hold);
        let quiet = now_ms >= self.quiet_after_ms.load(Ordering::Relaxed)
            && !self.disagreeing.load(Ordering::Relaxed);
        let hint = forwarded.map_or(0, |f| f.moved_since_ms);
        if settled && quiet && hint == 0 && (forwarded.is_some() || views.current.is_solo()) {
            return Routed::Local(req);
        }
        let Some(session) = session_key(policy, client, &req, arrived).await else {
            return Routed::Local(req);
        };
        let mut req = req;
        let owner = views.current.owner_addr(&session);
        if forwarded.is_none()
            && let Some(owner) = owner
            && owner != self.self_addr
        {
            let hint = if settled {
                None
            } else {
                views.moved_since(&session, owner, now, horizon, hold, false)
            };
            match self.forward(shared, policy, owner, peer, req, hint).await {
                forward::Outcome::Answered(resp) => return Routed::Answered(resp),
                forward::Outcome::Unreachable(back) => {
                    self.metrics
                        .forward
                        .with_label_values(&["local_fallback"])
                        .inc();
                    self.suspect(owner);
                    // Decided here: what this replica holds for the session may be from an
                    // earlier time it served it, and lack what the owner saw since.
                    self.forget_if_moved(shared, &session, now_ms);
                    // Rare (the owner is left out at once), and what traces a decision that
                    // another replica's history lacks (docs/scale-out.md).
                    let shown = crate::session::session_label(
                        &session,
                        policy.config.admin.reveal_session_keys,
                    );
                    tracing::info!(%owner, session = %shown, "owner unreachable: decided here, the session started over");
                    return Routed::Local(back);
                }
            }
        }
        // Decided here.
        let mut since = if settled {
            None
        } else {
            views.moved_since(&session, self.self_addr, now, horizon, hold, true)
        };
        since = since.max(Some(hint).filter(|ms| *ms != 0));
        if !quiet {
            since = since.max(self.contested_until(&session, views.current.hash, now_ms));
        }
        if forwarded.is_some() && owner != Some(self.self_addr) {
            // Forwarded by a replica whose view differs: the owner in this replica's view
            // decides the session too, until the views agree.
            since = since.max(Some(now_ms.saturating_add(self.hold_ms())));
        }
        if let Some(since) = since {
            self.forget_if_moved(shared, &session, since);
        }
        req.extensions_mut().remove::<Forwarded>();
        Routed::Local(req)
    }
}
