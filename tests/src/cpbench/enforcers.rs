//! Simulated enforcers: each sends, on its own schedule, what a real enforcer sends every
//! report interval — through the enforcer's own [`ReportClient`] (the same JSON, TLS, bearer
//! token and retry semantics as enforcer/src/report/client.rs) — with a model delta learned
//! from a small synthetic API, cumulative traffic and rule counters, and now and then an
//! incident. The token is a real projected-style ServiceAccount token of the protection's
//! enforcer account (TokenRequest, audience `ordo-report`), so the operator authenticates
//! every report exactly as in a cluster.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use ordo_enforcer::config::ReportConfig;
use ordo_enforcer::model::{LearnedModel, ModelCaps, SESSION_START};
use ordo_enforcer::report::{
    IncidentReport, REPORT_AUDIENCE, REPORT_PATH_PREFIX, ReportClient, ReportSource, RuleCounters,
    TrafficCounters,
};

/// Operations of the synthetic API each simulated enforcer learns.
const OPERATIONS: [&str; 12] = [
    "GET /api/v1/accounts/{var1}",
    "GET /api/v1/accounts/{var1}/balance",
    "GET /api/v1/accounts/{var1}/transactions",
    "POST /api/v1/transfer",
    "GET /api/v1/cards",
    "POST /api/v1/cards/{var1}/freeze",
    "GET /api/v1/profile",
    "PUT /api/v1/profile",
    "POST /api/v1/login",
    "POST /api/v1/logout",
    "GET /api/v1/statements/{var1}",
    "GET /api/v1/health",
];
/// Requests per operation in one report interval of one enforcer.
const REQUESTS_PER_OPERATION: u64 = 50;
/// Every this many rounds an enforcer reports a new incident (offset by its index, so that a
/// round carries incidents from a tenth of the enforcers).
const INCIDENT_EVERY: usize = 10;

/// One simulated enforcer: which protection it reports for and as which replica.
pub struct SimulatedEnforcer {
    pub namespace: String,
    pub protection: String,
    pub replica: String,
    index: usize,
    round: AtomicU64,
}

impl SimulatedEnforcer {
    pub fn new(index: usize, namespace: String, protection: String) -> Self {
        Self {
            replica: format!("{protection}-enforcer-sim-{index}"),
            namespace,
            protection,
            index,
            round: AtomicU64::new(0),
        }
    }

    fn rounds_so_far(&self) -> u64 {
        self.round.load(Ordering::Relaxed)
    }
}

impl ReportSource for SimulatedEnforcer {
    fn take_model_delta(&self) -> Option<Vec<u8>> {
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        Some(learned_delta(round).to_bytes())
    }

    fn changed_incidents(&self) -> Vec<IncidentReport> {
        let round = self.rounds_so_far();
        if (self.index + round as usize).is_multiple_of(INCIDENT_EVERY) {
            vec![incident(&self.replica, round)]
        } else {
            Vec::new()
        }
    }

    fn counters(&self) -> TrafficCounters {
        let requests = self.rounds_so_far() * REQUESTS_PER_OPERATION * OPERATIONS.len() as u64;
        TrafficCounters {
            requests,
            flagged: requests / 200,
            blocked: 0,
        }
    }

    fn rule_counters(&self) -> Vec<RuleCounters> {
        vec![RuleCounters {
            name: super::objects::rule_name(&self.protection),
            matches: self.rounds_so_far(),
            blocked: 0,
            last_match_ms: Some(now_ms()),
        }]
    }

    fn adopt_model(&self, merged: &[u8]) -> Result<(), String> {
        // A real enforcer decodes and adopts it; decoding is the part that can fail.
        LearnedModel::from_bytes(merged)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// What an enforcer learned in one interval: every operation, the usual journeys through
/// them, their statuses.
fn learned_delta(round: u64) -> LearnedModel {
    let mut model = LearnedModel::new(ModelCaps::default());
    let now = now_ms();
    let indices: Vec<u16> = OPERATIONS
        .iter()
        .filter_map(|op| model.op_index_or_insert(op, now))
        .collect();
    for &index in &indices {
        if let Some(stats) = model.operation_mut(index) {
            stats.requests += REQUESTS_PER_OPERATION;
            for i in 0..REQUESTS_PER_OPERATION {
                stats.record_status(if i % 25 == 0 { 404 } else { 200 });
            }
        }
    }
    // Sessions walk login → account → balance → transfer (and variations by round).
    let journey = [8usize, 0, 1, 3, 2, (4 + round as usize) % OPERATIONS.len()];
    let mut history = vec![SESSION_START];
    for &step in &journey {
        if let Some(&next) = indices.get(step) {
            for _ in 0..REQUESTS_PER_OPERATION / 5 {
                model.sequences.learn(&history, next, 8);
            }
            history.push(next);
        }
    }
    model.requests = REQUESTS_PER_OPERATION * OPERATIONS.len() as u64;
    model.sessions = REQUESTS_PER_OPERATION / 5;
    model.touch(now);
    model
}

fn incident(replica: &str, round: u64) -> IncidentReport {
    let now = now_ms();
    IncidentReport {
        id: format!("{replica}-{round}"),
        session: format!("sess:{replica}-{round}"),
        client: "10.0.0.1".into(),
        severity: "high".into(),
        kinds: vec!["sequence".into()],
        operations: vec!["POST /api/v1/transfer".into()],
        requests: 3,
        flagged: 3,
        blocked: 0,
        first_seen_ms: now.saturating_sub(5_000),
        last_seen_ms: now,
        summary: "POST /api/v1/transfer without GET /api/v1/accounts/{var1}/balance before it"
            .into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A token of the protection's enforcer ServiceAccount for the report audience, written to
/// `dir/<replica>.token` (the report client reads its token file before every report).
pub async fn token_file(
    client: &Client,
    enforcer: &SimulatedEnforcer,
    dir: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &enforcer.namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![REPORT_AUDIENCE.to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let account = ordo_operator::desired::names::enforcer_name(&enforcer.protection);
    let answer: TokenRequest = accounts
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {}/{account}", enforcer.namespace))?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("no token in the TokenRequest answer"))?;
    let path = dir.join(format!("{}.token", enforcer.replica));
    std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The report client of one simulated enforcer, as the operator renders it into the config.
pub fn report_client(
    operator_url: &str,
    ca_file: &Path,
    token_file: std::path::PathBuf,
    enforcer: &SimulatedEnforcer,
    interval: Duration,
) -> anyhow::Result<ReportClient> {
    Ok(ReportClient::new(ReportConfig {
        url: format!(
            "{operator_url}{REPORT_PATH_PREFIX}/{}/{}",
            enforcer.namespace, enforcer.protection
        ),
        token_file,
        ca_file: Some(ca_file.to_path_buf()),
        interval_seconds: interval.as_secs().max(1),
        timeout_seconds: 10,
        replica: Some(enforcer.replica.clone()),
    })?)
}

/// What one enforcer saw over the run.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub sent: u64,
    pub failed: u64,
    pub latencies: Vec<Duration>,
    pub last_error: Option<String>,
}

/// Sends `rounds` reports, the first at `start + offset`, then one every `interval`.
pub async fn run_schedule(
    mut client: ReportClient,
    enforcer: SimulatedEnforcer,
    start: Instant,
    offset: Duration,
    interval: Duration,
    rounds: u32,
) -> Outcome {
    let mut outcome = Outcome::default();
    for round in 0..rounds {
        let at = start + offset + interval * round;
        tokio::time::sleep_until(at.into()).await;
        let began = Instant::now();
        match client.report_once(&enforcer).await {
            Ok(()) => {
                outcome.sent += 1;
                outcome.latencies.push(began.elapsed());
            }
            Err(err) => {
                outcome.failed += 1;
                outcome.last_error = Some(err.to_string());
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_holds_every_operation_and_survives_the_codec() {
        let delta = learned_delta(3);
        let decoded = LearnedModel::from_bytes(&delta.to_bytes()).unwrap();
        assert_eq!(decoded.operations.len(), OPERATIONS.len());
        assert_eq!(
            decoded.requests,
            REQUESTS_PER_OPERATION * OPERATIONS.len() as u64
        );
    }

    #[test]
    fn a_tenth_of_the_enforcers_report_an_incident_each_round() {
        let reporting = (0..100)
            .map(|i| SimulatedEnforcer::new(i, "ns".into(), "api".into()))
            .filter(|e| !e.changed_incidents().is_empty())
            .count();
        assert_eq!(reporting, 100 / INCIDENT_EVERY);
    }
}
