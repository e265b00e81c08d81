//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile or merge reports at the same time.
//!
//! The algorithm is client-go's: a candidate takes the Lease when it is free or when its
//! record has not changed for `lease_duration` as observed on the candidate's own clock (no
//! clock comparison between machines); every write is a replace with the observed
//! `resourceVersion`, so two candidates racing for the Lease cannot both win. The holder
//! renews every `retry_period` and gives up leadership when it could not renew within
//! `renew_deadline` (shorter than `lease_duration`, so it stops before anyone else may take
//! over). On graceful shutdown the holder releases the Lease for a fast hand-over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// How long a record must stay unchanged before another candidate may take the Lease.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts (acquire and renew).
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    timing: LeaseTiming,
    /// The last record seen (holder, renew time, resourceVersion) and when it was first seen.
    observed: Option<(ObservedRecord, Instant)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedRecord {
    holder: Option<String>,
    renew_time: Option<i64>,
    resource_version: Option<String>,
}

/// Result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease now.
    Leading,
    /// Another candidate holds it (or won a race).
    Following,
}

impl LeaderElector {
    /// A candidate for the Lease `lease_name` in the API's namespace.
    pub fn new(api: Api<Lease>, lease_name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Self {
            api,
            lease_name: lease_name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the Lease; `false` when `shutdown` came first.
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => return true,
                Ok(Attempt::Following) => {}
                Err(err) => {
                    tracing::warn!(error = %err, lease = %self.lease_name, "leader election attempt failed")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Renews the Lease until `shutdown` (then releases it and returns `true`) or until it
    /// could not be renewed within the renew deadline (returns `false`: leadership lost).
    pub async fn hold(&mut self, shutdown: &CancellationToken) -> bool {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.release().await;
                    return true;
                }
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
            // A request the API server never answers must not outlast the deadline: the
            // client's own timeout is minutes, and by then another replica leads.
            let left = self
                .timing
                .renew_deadline
                .saturating_sub(last_renew.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => last_renew = Instant::now(),
                Ok(Ok(Attempt::Following)) => {
                    tracing::error!(lease = %self.lease_name, "another replica took the Lease");
                    return false;
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, lease = %self.lease_name, "renewing the Lease failed");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease_name, "renewing the Lease got no answer before the renew deadline");
                }
            }
            if last_renew.elapsed() > self.timing.renew_deadline {
                tracing::error!(lease = %self.lease_name, "could not renew the Lease within the deadline");
                return false;
            }
        }
    }

    /// One step of the algorithm; see the module docs.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let lease_seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(lease_seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
                Err(err) => Err(err),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let we_hold = holder.as_deref() == Some(self.identity.as_str());
        if !we_hold && holder.is_some() && !self.observed_expired() {
            return Ok(Attempt::Following);
        }
        if !we_hold {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.lease_duration_seconds = Some(lease_seconds);
        spec.renew_time = Some(MicroTime(now));
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up (only when we still hold it) so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(err) = self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %err, lease = %self.lease_name, "releasing the Lease failed");
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.as_ref();
        let record = ObservedRecord {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.as_microsecond()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record);
        if changed {
            self.observed = Some((record, Instant::now()));
        }
    }

    /// Whether the observed record has not changed for a whole lease duration.
    fn observed_expired(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= self.timing.lease_duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that accepts connections and never answers.
    async fn silent_api() -> (Api<Lease>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        (Api::namespaced(client, "ordo"), silent)
    }

    #[tokio::test]
    async fn a_leader_whose_renewals_get_no_answer_steps_down_by_the_deadline() {
        let (api, silent) = silent_api().await;
        let timing = LeaseTiming {
            lease_duration: Duration::from_millis(900),
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(100),
        };
        let mut elector = LeaderElector::new(api, "ordo-leader", "me", timing);
        let started = Instant::now();
        let held = tokio::time::timeout(
            Duration::from_secs(10),
            elector.hold(&CancellationToken::new()),
        )
        .await;
        silent.abort();
        assert_eq!(held.ok(), Some(false), "leadership must be given up");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "gave up after {:?}, the renew deadline is {:?}",
            started.elapsed(),
            timing.renew_deadline
        );
    }
}
