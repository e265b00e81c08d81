//! Incidents: the findings of one session (of one client address for credential
//! stuffing) within an inactivity window, with a deterministic plain-language summary.
//!
//! Bounded in bytes, not only in count: operations and explanations come partly from client
//! input (a 60 kB path segment, a schema error quoting a body value), so each is cut at
//! [`MAX_OPERATION_BYTES`] / [`MAX_EXPLANATION_BYTES`] with a `…(+N bytes)` marker. Session
//! keys are shown through [`session_label`] (credential values hashed).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::IncidentsConfig;
use crate::finding::{Finding, FindingKind, Severity};
use crate::session::session_label;
use crate::time::format_unix_ms;

/// Distinct (kind, rule, operation) groups kept per incident for its summary.
const MAX_GROUPS: usize = 16;
/// Operations listed per incident.
const MAX_OPERATIONS: usize = 32;
/// Longest operation name kept in an incident.
pub const MAX_OPERATION_BYTES: usize = 256;
/// Longest finding explanation kept in an incident.
pub const MAX_EXPLANATION_BYTES: usize = 512;

/// `text` cut to at most `max` bytes (at a character boundary) plus a `…(+N bytes)` marker
/// saying how much was cut.
pub fn truncate_marked(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…(+{} bytes)", &text[..end], text.len() - end))
}

#[derive(Debug, Clone)]
struct Group {
    kind: FindingKind,
    rule: Option<String>,
    operation: String,
    count: u64,
    first_ms: u64,
    last_ms: u64,
    explanation: String,
}

/// One incident as the admin API and reports show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    pub session: String,
    pub client: IpAddr,
    pub severity: Severity,
    pub kinds: BTreeSet<FindingKind>,
    pub operations: BTreeSet<String>,
    pub rules: BTreeSet<String>,
    /// Requests of the session while the incident was open.
    pub requests: u64,
    /// Requests that carried findings.
    pub flagged: u64,
    pub blocked: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub summary: String,
    /// The addresses of a credential-stuffing campaign (at most [`MAX_CAMPAIGN_CLIENTS`]; the
    /// summary counts them all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<IpAddr>,
    /// Findings of the campaign from addresses beyond `clients` (not told apart).
    #[serde(skip_serializing_if = "is_zero")]
    pub more_clients: u64,
    #[serde(skip)]
    pub first_seen_ms: u64,
    #[serde(skip)]
    pub last_seen_ms: u64,
    #[serde(skip)]
    groups: Vec<Group>,
}

/// Most addresses listed in a campaign incident.
pub const MAX_CAMPAIGN_CLIENTS: usize = 256;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The campaign a finding belongs to (a credential-stuffing finding made after the answer,
/// see `detect::distributed`): its findings from many addresses form one incident.
fn campaign_of(findings: &[Finding]) -> Option<&str> {
    findings
        .iter()
        .find_map(|f| f.evidence.get("campaign").and_then(|c| c.as_str()))
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn span(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if ms < 7_200_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} h", ms / 3_600_000)
    }
}

impl Incident {
    fn rebuild_summary(&mut self) {
        let mut s = String::with_capacity(256);
        // A credential-stuffing incident is keyed by the client address, not a session; a
        // campaign's by the campaign.
        if self.session.starts_with("campaign ") {
            let addresses = self.clients.len() as u64 + self.more_clients;
            let _ = write!(
                s,
                "Credential-stuffing campaign from {addresses} address{}: ",
                if addresses == 1 { "" } else { "es" }
            );
        } else if self.session.starts_with("client ") {
            let _ = write!(s, "Client {} ", self.client);
        } else {
            let _ = write!(s, "Session {} ({}) ", self.session, self.client);
        }
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                s.push_str("; it also ");
            }
            match g.kind {
                FindingKind::SequenceRule
                | FindingKind::RateLimit
                | FindingKind::SchemaViolation => {
                    let times = if g.count == 1 {
                        "once".to_owned()
                    } else {
                        format!("{} times", g.count)
                    };
                    let _ = write!(s, "sent {} {times}", g.operation);
                    if g.count > 1 {
                        let _ = write!(s, " in {}", span(g.last_ms - g.first_ms));
                    }
                    let _ = write!(s, " {}", g.explanation);
                }
                _ => {
                    s.push_str(&g.explanation);
                    if g.count > 1 {
                        let _ = write!(
                            s,
                            " ({} request{} in {})",
                            g.count,
                            plural(g.count),
                            span(g.last_ms - g.first_ms)
                        );
                    }
                }
            }
        }
        let was = |n: u64| if n == 1 { "was" } else { "were" };
        if self.blocked == 0 {
            s.push_str("; nothing was blocked.");
        } else if self.blocked == 1 && self.flagged == 1 {
            s.push_str("; the request was blocked.");
        } else if self.blocked >= self.flagged {
            let _ = write!(s, "; {} of the requests were blocked.", self.blocked);
        } else {
            let _ = write!(
                s,
                "; {} of the {} flagged requests {} blocked.",
                self.blocked,
                self.flagged,
                was(self.blocked)
            );
        }
        self.summary = s;
    }
}

/// What `record` tells the request path.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: u32,
    pub id: String,
    pub created: bool,
    /// The session as the incident shows it (for logs).
    pub session: String,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u32,
    by_seq: HashMap<u32, Incident>,
    order: VecDeque<u32>,
    /// Grouping key (session, or `client:<ip>` for stuffing) → open incident.
    open: HashMap<String, u32>,
    dirty: BTreeSet<u32>,
    evicted: u64,
    /// A session's findings closer than this belong to one incident.
    window_ms: u64,
    /// Incidents kept (oldest evicted first).
    max_incidents: usize,
    /// Show session keys verbatim (`admin.revealSessionKeys`).
    reveal_session_keys: bool,
}

/// Bounded incident store (oldest evicted first).
#[derive(Debug)]
pub struct IncidentStore {
    inner: Mutex<Inner>,
}

impl IncidentStore {
    /// `reveal_session_keys` is `admin.revealSessionKeys`.
    pub fn new(config: &IncidentsConfig, reveal_session_keys: bool) -> Self {
        let store = Self {
            inner: Mutex::new(Inner::default()),
        };
        store.configure(config, reveal_session_keys);
        store
    }

    /// Applies the `incidents` section (at start and on reload); a smaller cap takes effect
    /// with the next new incident.
    pub fn configure(&self, config: &IncidentsConfig, reveal_session_keys: bool) {
        let mut inner = self.inner.lock();
        inner.window_ms = config.inactivity_window.as_millis_u64();
        inner.max_incidents = config.max_incidents;
        inner.reveal_session_keys = reveal_session_keys;
    }

    /// Adds the findings of one request. `session` is the session key (shown through
    /// [`session_label`]), `op` the operation's display template.
    pub fn record(
        &self,
        session: &str,
        client: IpAddr,
        op: &str,
        findings: &[Finding],
        blocked: bool,
        now_ms: u64,
    ) -> Option<Recorded> {
        let mut inner = self.inner.lock();
        let (window_ms, max_incidents) = (inner.window_ms, inner.max_incidents);
        let session = session_label(session, inner.reveal_session_keys);
        let session = truncate_marked(&session, MAX_OPERATION_BYTES).into_owned();
        let op = truncate_marked(op, MAX_OPERATION_BYTES);
        let op = op.as_ref();
        let stuffing_only = !findings.is_empty()
            && findings
                .iter()
                .all(|f| f.kind == FindingKind::CredentialStuffing);
        let campaign = campaign_of(findings).filter(|_| stuffing_only);
        let key = if let Some(campaign) = campaign {
            format!("campaign:{campaign}")
        } else if stuffing_only {
            format!("client:{client}")
        } else {
            session.clone()
        };
        let open = inner.open.get(&key).copied().filter(|seq| {
            inner
                .by_seq
                .get(seq)
                .is_some_and(|i| now_ms.saturating_sub(i.last_seen_ms) <= window_ms)
        });
        let (seq, created) = match open {
            Some(seq) => (seq, false),
            None => {
                inner.next_seq = inner.next_seq.wrapping_add(1).max(1);
                let seq = inner.next_seq;
                let mut h = DefaultHasher::new();
                (seq, &key, now_ms).hash(&mut h);
                let incident = Incident {
                    id: format!("inc-{:016x}", h.finish()),
                    session: if let Some(campaign) = campaign {
                        format!("campaign {campaign}")
                    } else if stuffing_only {
                        format!("client {client}")
                    } else {
                        session.clone()
                    },
                    client,
                    severity: Severity::Low,
                    kinds: BTreeSet::new(),
                    operations: BTreeSet::new(),
                    rules: BTreeSet::new(),
                    requests: 0,
                    flagged: 0,
                    blocked: 0,
                    first_seen: format_unix_ms(now_ms),
                    last_seen: String::new(),
                    summary: String::new(),
                    clients: Vec::new(),
                    more_clients: 0,
                    first_seen_ms: now_ms,
                    last_seen_ms: now_ms,
                    groups: Vec::new(),
                };
                inner.by_seq.insert(seq, incident);
                inner.order.push_back(seq);
                inner.open.insert(key, seq);
                while inner.order.len() > max_incidents.max(1) {
                    if let Some(old) = inner.order.pop_front()
                        && let Some(gone) = inner.by_seq.remove(&old)
                    {
                        inner.evicted += 1;
                        inner.dirty.remove(&old);
                        let k = if let Some(c) = gone.session.strip_prefix("campaign ") {
                            format!("campaign:{c}")
                        } else if gone.session.starts_with("client ") {
                            format!("client:{}", gone.client)
                        } else {
                            gone.session
                        };
                        if inner.open.get(&k) == Some(&old) {
                            inner.open.remove(&k);
                        }
                    }
                }
                (seq, true)
            }
        };
        inner.dirty.insert(seq);
        let incident = inner.by_seq.get_mut(&seq)?;
        incident.requests += 1;
        incident.flagged += 1;
        if blocked {
            incident.blocked += 1;
        }
        if campaign.is_some() && !incident.clients.contains(&client) {
            if incident.clients.len() < MAX_CAMPAIGN_CLIENTS {
                incident.clients.push(client);
            } else {
                incident.more_clients += 1;
            }
        }
        incident.last_seen_ms = now_ms;
        incident.last_seen = format_unix_ms(now_ms);
        for f in findings {
            incident.severity = incident.severity.max(f.severity);
            incident.kinds.insert(f.kind);
            if incident.operations.len() < MAX_OPERATIONS {
                incident.operations.insert(op.to_owned());
            }
            if let Some(rule) = &f.rule
                && incident.rules.len() < MAX_OPERATIONS
            {
                incident.rules.insert(rule.clone());
            }
            let groups = incident.groups.len();
            match incident
                .groups
                .iter_mut()
                .find(|g| g.kind == f.kind && g.rule == f.rule && g.operation == op)
            {
                // The group keeps the first finding's explanation: it states the cause (the
                // unlikely step, the crossed threshold); later ones mostly repeat it ("repeated
                // X right after it was flagged") and the count says how often.
                Some(g) => {
                    g.count += 1;
                    g.last_ms = now_ms;
                }
                None if groups < MAX_GROUPS => incident.groups.push(Group {
                    kind: f.kind,
                    rule: f.rule.clone(),
                    operation: op.to_owned(),
                    count: 1,
                    first_ms: now_ms,
                    last_ms: now_ms,
                    explanation: truncate_marked(&f.explanation, MAX_EXPLANATION_BYTES)
                        .into_owned(),
                }),
                None => {}
            }
        }
        incident.rebuild_summary();
        Some(Recorded {
            seq,
            id: incident.id.clone(),
            created,
            session: incident.session.clone(),
        })
    }

    /// Counts an unflagged request of a session whose incident `seq` may still be open.
    /// Returns false when the incident closed (the caller forgets `seq`).
    pub fn note_request(&self, seq: u32, now_ms: u64) -> bool {
        let mut inner = self.inner.lock();
        let window_ms = inner.window_ms;
        let Some(incident) = inner.by_seq.get_mut(&seq) else {
            return false;
        };
        if now_ms.saturating_sub(incident.last_seen_ms) > window_ms {
            return false;
        }
        incident.requests += 1;
        inner.dirty.insert(seq);
        true
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Incident> {
        let inner = self.inner.lock();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|s| inner.by_seq.get(s).cloned())
            .collect()
    }

    /// New and updated incidents since the previous call (for reports), oldest first.
    pub fn drain_updated(&self) -> Vec<Incident> {
        let mut inner = self.inner.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty
            .iter()
            .filter_map(|s| inner.by_seq.get(s).cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Duration};

    /// A store with a 15-minute inactivity window and room for 10 incidents.
    fn store() -> IncidentStore {
        IncidentStore::new(&CONFIG, false)
    }

    const CONFIG: IncidentsConfig = IncidentsConfig {
        inactivity_window: Duration::from_secs(900),
        max_incidents: 10,
    };

    fn finding() -> Finding {
        Finding {
            kind: FindingKind::SequenceRule,
            severity: Severity::High,
            action: Action::Block,
            block_status: 403,
            rule: Some("balance-before-transfer".into()),
            explanation: "without a preceding GET /api/v1/accounts/{account_id}/balance (within 10 requests and 10m), which rule balance-before-transfer requires".into(),
            evidence: serde_json::Value::Null,
            retry_after_s: None,
        }
    }

    #[test]
    fn groups_a_session_and_writes_the_summary() {
        let store = store();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let op = "POST /api/v1/transferFunds";
        let a = store
            .record("user:4411", ip, op, &[finding()], true, 1_000)
            .unwrap();
        let b = store
            .record("user:4411", ip, op, &[finding()], true, 21_000)
            .unwrap();
        let c = store
            .record("user:4411", ip, op, &[finding()], true, 41_000)
            .unwrap();
        assert!(a.created && !b.created && !c.created);
        assert_eq!(a.id, c.id);
        let list = store.list();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].summary,
            "Session user:4411 (10.0.0.7) sent POST /api/v1/transferFunds 3 times in 40 s without a preceding GET /api/v1/accounts/{account_id}/balance (within 10 requests and 10m), which rule balance-before-transfer requires; 3 of the requests were blocked."
        );
        // After the inactivity window a new incident starts.
        let d = store
            .record("user:4411", ip, op, &[finding()], false, 2_000_000)
            .unwrap();
        assert!(d.created);
        assert_eq!(store.drain_updated().len(), 2);
        assert!(store.drain_updated().is_empty());
    }

    #[test]
    fn the_summary_keeps_the_first_finding_of_a_group() {
        let store = store();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let op = "GET /api/v1/accounts/{account_id}/transactions";
        let cause = Finding {
            kind: FindingKind::UnlikelySequence,
            explanation: format!("called {op} right after GET /api/v1/profile"),
            rule: None,
            ..finding()
        };
        let repeat = Finding {
            explanation: format!("repeated {op} right after it was flagged as an unlikely step"),
            ..cause.clone()
        };
        store
            .record("user:1", ip, op, &[cause], true, 1_000)
            .unwrap();
        store
            .record("user:1", ip, op, &[repeat], true, 3_000)
            .unwrap();
        let summary = &store.list()[0].summary;
        assert_eq!(
            summary,
            "Session user:1 (10.0.0.7) called GET /api/v1/accounts/{account_id}/transactions right after GET /api/v1/profile (2 requests in 2 s); 2 of the requests were blocked."
        );
    }

    #[test]
    fn credential_session_keys_are_hashed_and_long_input_is_cut() {
        let store = store();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let long_op = format!("GET /{}", "a".repeat(60_000));
        let long = Finding {
            explanation: format!("called {long_op}"),
            ..finding()
        };
        store
            .record("cookie:sid=s3cr3t", ip, &long_op, &[long], false, 1)
            .unwrap();
        let incident = &store.list()[0];
        assert!(
            incident.session.starts_with("cookie:sid=#"),
            "{}",
            incident.session
        );
        let json = serde_json::to_string(incident).unwrap();
        assert!(!json.contains("s3cr3t"));
        assert!(
            json.len() < 4 * (MAX_OPERATION_BYTES + MAX_EXPLANATION_BYTES),
            "{}",
            json.len()
        );
        assert!(json.contains("…(+"), "{json}");
        store.configure(&CONFIG, true);
        store
            .record("cookie:sid=s3cr3t", ip, "GET /", &[finding()], false, 1)
            .unwrap();
        assert_eq!(store.list()[0].session, "cookie:sid=s3cr3t");
    }

    #[test]
    fn store_is_bounded() {
        let store = store();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for i in 0..100 {
            store
                .record(&format!("s{i}"), ip, "GET /", &[finding()], false, 1000)
                .unwrap();
        }
        assert_eq!(store.len(), 10);
        assert_eq!(store.evicted(), 90);
        assert_eq!(store.list()[0].session, "s99");
    }
}
