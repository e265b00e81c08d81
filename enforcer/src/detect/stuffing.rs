//! Credential stuffing: many authentication failures from one client address in the current
//! window, or failures across many distinct identities from one client. Which operations
//! authenticate is learned (requests carrying credential fields, or a notable share of
//! 401/403 answers), never taken from path names.

use serde_json::json;

use crate::config::DetectorConfig;
use crate::finding::{Finding, FindingKind, Severity};

use super::clients::ClientFailures;
use super::context::{Judged, finding};
use super::thresholds::{identity_threshold, peer_threshold};

pub fn is_auth_request(j: &Judged<'_>) -> bool {
    j.params.has_credentials || j.op_stats().is_some_and(|s| s.is_auth_like())
}

pub fn check(
    j: &Judged<'_>,
    config: &DetectorConfig,
    client: Option<ClientFailures>,
) -> Option<Finding> {
    if !is_auth_request(j) {
        return None;
    }
    let client = client?;
    // A peer distribution needs peers: until enough client windows saw failures, only the
    // floors apply (otherwise an attacker's own live window would raise its threshold).
    let failures_p99 = j.baselines.auth_failures.map_or(0, |p| p.p99);
    let failures_threshold = peer_threshold(failures_p99, config.sensitivity);
    let identities = client.distinct_identities();
    let identities_p99 = j.baselines.auth_identities.map_or(0, |p| p.p99);
    let identities_threshold = identity_threshold(identities_p99, config.sensitivity);
    let by_failures = client.failures >= failures_threshold;
    let by_identities = identities >= identities_threshold;
    if !by_failures && !by_identities {
        return None;
    }
    let explanation = if by_identities {
        format!(
            "failed authentication for {identities} distinct identities ({} failures) in the current {} window and tried {} again; clients that fail do so for at most {identities_p99} identities (threshold {identities_threshold})",
            client.failures,
            j.window_text(),
            j.template()
        )
    } else {
        format!(
            "failed authentication {} times in the current {} window and tried {} again; clients that fail do so at most {failures_p99} times (threshold {failures_threshold})",
            client.failures,
            j.window_text(),
            j.template()
        )
    };
    let evidence = json!({
        "operation": j.template(),
        "client": j.ctx.client.to_string(),
        "failures": client.failures,
        "distinctIdentities": identities,
        "failuresThreshold": failures_threshold,
        "identitiesThreshold": identities_threshold,
    });
    Some(finding(
        FindingKind::CredentialStuffing,
        Severity::High,
        config,
        explanation,
        evidence,
    ))
}
